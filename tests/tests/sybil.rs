//! Sybil resistance of the aggregate (#15 item 3), on a real sled store: one party with few
//! network prefixes and as many agent keys as it likes. A cell needs k distinct keys *and* k
//! distinct prefixes, and one prefix's reports count at most `max_per_prefix_per_day` times per
//! (UTC day, country, ASN, platform, arm, kind), so a party on P < k prefixes publishes nothing
//! alone, and beside honest agents its counted reports in a day's cell are at most
//! P × `max_per_prefix_per_day` — the bound RELIABILITY.md states.

use callwatch_collector::domain::{exact, Axis, Filter, Policy};
use callwatch_collector::store::{ReportStore, SledStore};
use callwatch_tests::seed::sybil_reports;

/// Queries a party might hope to see its cells in.
fn queries() -> Vec<(Vec<Axis>, Filter)> {
    vec![
        (vec![Axis::Country], Filter::default()),
        (vec![Axis::Asn, Axis::Platform], Filter::default()),
        (vec![Axis::Day], Filter::default()),
        (vec![Axis::Hour], Filter::default()),
        (vec![], Filter::default()),
    ]
}

#[test]
fn a_party_on_fewer_than_k_prefixes_publishes_nothing_and_moves_a_day_cell_at_most_its_bound() {
    let policy = Policy {
        min_agents: 3,
        max_per_agent_per_day: 24,
        max_per_prefix_per_day: 10,
    };
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open_with_policy(dir.path(), &policy).unwrap();
    // The party: 50 keys on 2 prefixes, 20 reports per key in one hour, all RTT 900 ms.
    let (party, honest) = sybil_reports();
    store.insert_batch(&party).unwrap();
    assert_eq!(store.len(), 1000, "everything is stored");
    for (axes, filter) in queries() {
        let cells = store.aggregate(&axes, &filter, &policy).unwrap();
        assert!(
            cells.is_empty(),
            "{axes:?}: the party alone published {cells:?}"
        );
        // It is the prefix count that withholds it: with k = 2, its two prefixes publish.
        let k2 = Policy {
            min_agents: 2,
            ..policy
        };
        assert!(!store.aggregate(&axes, &filter, &k2).unwrap().is_empty());
    }
    // Three honest agents on three other networks, two reports each, RTT 20 ms.
    store.insert_batch(&honest).unwrap();
    let observations: Vec<_> = party
        .iter()
        .chain(&honest)
        .flat_map(|v| v.observations.clone())
        .collect();
    let cells = store
        .aggregate(&[Axis::Country], &Filter::default(), &policy)
        .unwrap();
    assert_eq!(cells.len(), 1);
    let cell = &cells[0];
    // The day cell: 6 honest reports and at most 2 prefixes × 10 of the party's 1000.
    let honest_counted = 6;
    let party_counted = cell.count - honest_counted;
    assert_eq!(party_counted, 2 * policy.max_per_prefix_per_day as u64);
    let share = party_counted as f64 / cell.count as f64;
    let bound = (10.0 * 2.0) / (10.0 * 2.0 + honest_counted as f64);
    assert!(share <= bound + 1e-12, "{share} > {bound}");
    // The brute-force reference agrees, and without the prefix cap the party would count
    // 50 keys × 24.
    let want = exact(&observations, &[Axis::Country], &Filter::default(), &policy);
    assert_eq!((want[0].count, want[0].agents), (cell.count, cell.agents));
    let uncapped = Policy {
        max_per_prefix_per_day: usize::MAX,
        ..policy
    };
    let flooded = exact(
        &observations,
        &[Axis::Country],
        &Filter::default(),
        &uncapped,
    );
    assert_eq!(flooded[0].count, honest_counted + 50 * 20);
    // The median stays honest only because of the cap: 20 party values against 6 honest
    // ones would still swing it, which is why the bound is stated as a share, not a promise
    // about medians.
    assert!(cell.rtt_ms.unwrap().p10 < 25.0);
}
