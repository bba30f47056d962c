//! Onsets and recoveries (#17): the detector's published figures (docs/EVENTS.md) and a signed
//! history through a real collector — its API (JSON, CSV, Atom, filters), its gauge and
//! `export --events` on the stopped store.

use callwatch_collector::domain::events::Detector;
use callwatch_collector::serve;
use callwatch_proto::Platform;
use callwatch_tests::history::{
    history_config, quantile, scenarios, signed_history, table, tally, upload_history, HistorySpec,
    NetSpec, Restriction,
};
use callwatch_tests::http;
use std::process::Command;

const DOC: &str = include_str!("../../docs/EVENTS.md");

/// The table's lines for these scenarios, regenerated with the command the document names
/// (the same seeds and months), must stand in docs/EVENTS.md verbatim.
#[test]
fn the_events_table_stands_in_the_docs() {
    let months = 400;
    // The header, a null, the k − 1 broken agents, the smallest network under a full block.
    let wanted = [
        "null: 3 agents, hourly",
        "null: 10 agents and 2 broken ones",
        "full block, 3 agents hourly",
    ];
    let full = table(&Detector::default(), months, 1, &wanted);
    let lines: Vec<&str> = full.lines().collect();
    for wanted in wanted {
        let line = lines
            .iter()
            .find(|l| l.contains(wanted))
            .unwrap_or_else(|| panic!("no line for {wanted}"));
        assert!(
            DOC.lines().any(|d| d == *line),
            "docs/EVENTS.md does not hold this line of `callwatch-events --months {months}`:\n{line}"
        );
    }
    assert!(DOC.contains(lines[0]), "the table's header changed");
}

/// The published bound — at most 1 false onset per 100 null network-months — asserted at the
/// bound itself over 200 further months of each null model (other seeds than the table's): at
/// a true rate of 1 per 100 months, 200 months give Poisson(2) false onsets, and P(X ≥ 7) <
/// 0.5 %, so more than 6 refutes the bound at 99.5 %. And the detection delay of the smallest
/// network the docs target (3 agents testing hourly, a full block): its median at most 3 hours.
#[test]
fn null_months_stay_within_the_published_false_event_bound_and_blocks_are_found_within_3_hours() {
    let d = Detector::default();
    for (name, net) in scenarios() {
        let months = if net.restriction.is_none() { 200 } else { 50 };
        let t = tally(&net, &d, months, 1_000_001);
        if net.restriction.is_none() {
            assert!(
                t.false_onsets <= 6,
                "{name}: {} false onsets in 200 null months",
                t.false_onsets
            );
        } else {
            assert_eq!(
                t.onsets_found, t.restrictions,
                "{name}: a restriction missed"
            );
        }
        if name.starts_with("full block, 3 agents") {
            assert!(quantile(&t.delays, 0.5).unwrap() <= 3, "{name}: {:?}", t);
        }
    }
}

/// The detector's rules on hand-made series: one volunteer (or k − 1) never makes an event;
/// a gap before an onset widens its interval across the gap.
#[test]
fn k_minus_one_agents_never_make_an_event_and_a_gap_widens_the_interval() {
    use callwatch_collector::domain::events::{EventKind, HourEvidence, SeriesKey};
    use std::collections::BTreeMap;
    let series = SeriesKey::new("RU", Some(1), Platform::Whatsapp);
    let hour = |agents: &[u8], flagged: &[u8]| {
        let mut e = HourEvidence::default();
        for &a in agents {
            e.judged += 4;
            e.agents.insert([a; 8]);
            e.prefixes.insert([a; 8]);
            if flagged.contains(&a) {
                e.differentiated += 4;
                e.flags.insert(([a; 8], [a; 8]), 4);
            }
        }
        e
    };
    let d = Detector::default();
    // Two agents flag every test for a week, three others never: no event.
    let mut hours = BTreeMap::new();
    for h in 0..7 * 24 {
        hours.insert(h, hour(&[1, 2, 3, 4, 5], &[1, 2]));
    }
    assert!(d.detect(series, &hours, 7 * 24).is_empty());
    // A third flags from hour 100: an onset, at hour 100, with three agents behind it.
    for h in 100..7 * 24 {
        hours.insert(h, hour(&[1, 2, 3, 4, 5], &[1, 2, 3]));
    }
    let ev = d.detect(series, &hours, 7 * 24);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0].kind, ev[0].began), (EventKind::Onset, 100));
    assert!(ev[0].agents >= 3 && ev[0].prefixes >= 3);
    // All five blocked from hour 60, after 10 hours without data: the interval covers the gap.
    let mut hours = BTreeMap::new();
    for h in 0..50 {
        hours.insert(h, hour(&[1, 2, 3, 4, 5], &[]));
    }
    for h in 60..80 {
        hours.insert(h, hour(&[1, 2, 3, 4, 5], &[1, 2, 3, 4, 5]));
    }
    let ev = d.detect(series, &hours, 80);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].began, 60);
    assert_eq!((ev[0].began_lo, ev[0].began_hi), (50, 60), "{:?}", ev[0]);
    // Fewer than k agents in all: nothing, however strong.
    let mut hours = BTreeMap::new();
    for h in 0..100 {
        hours.insert(h, hour(&[1, 2], &[1, 2]));
    }
    assert!(d.detect(series, &hours, 100).is_empty());
}

fn value(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_history_through_a_collector_gives_its_onset_and_recovery_and_nothing_else() {
    let root = tempfile::tempdir().unwrap();
    let first_day = chrono::Utc::now().timestamp().div_euclid(86_400) - 5;
    let spec = HistorySpec {
        networks: vec![
            // Blocked from hour 30 to hour 60 of the history.
            NetSpec {
                country: "RU",
                asn: 12389,
                platform: Platform::Whatsapp,
                agents: 4,
                tests_per_hour: 1,
                restriction: Some(Restriction {
                    onset: 30,
                    end: Some(60),
                    share_of_agents: 1.0,
                    rate: 0.95,
                }),
                skew_minutes: 0,
            },
            NetSpec {
                country: "RU",
                asn: 8359,
                platform: Platform::Whatsapp,
                agents: 4,
                tests_per_hour: 1,
                restriction: None,
                skew_minutes: 0,
            },
            // Nothing happens, and two of its agents' clocks are 40 minutes fast.
            NetSpec {
                country: "DE",
                asn: 3320,
                platform: Platform::Whatsapp,
                agents: 4,
                tests_per_hour: 1,
                restriction: None,
                skew_minutes: 40,
            },
        ],
        days: 4,
        first_day,
        seed: 17,
        availability: 1.0,
    };
    let reports = signed_history(&spec);
    assert_eq!(reports.len(), 3 * 4 * 96);
    let collector = serve(history_config(root.path(), &spec)).await.unwrap();
    assert_eq!(upload_history(&collector, &reports).await, reports.len());
    let h0 = first_day * 24;
    let hour_text = |h: i64| callwatch_collector::domain::hour_string(h0 + h);

    let (status, body) = http::get(collector.http_addr, "/api/v1/events")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let v = value(&body);
    let events = v["events"].as_array().unwrap();
    // The network's onset and recovery, and its country's (the other RU network is clean):
    // nothing for DE, nothing for RU AS8359.
    let of = |asn: Option<u64>, kind: &str| {
        events
            .iter()
            .find(|e| e["asn"].as_u64() == asn && e["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} for {asn:?} in {body}"))
    };
    assert_eq!(events.len(), 4, "{body}");
    for asn in [Some(12389), None] {
        let onset = of(asn, "onset");
        assert_eq!(onset["country"], "RU");
        assert_eq!(onset["platform"], "whatsapp");
        assert_eq!(onset["status"], "ended");
        // The hour it began, within an hour (the day's discount can hide the first hour when
        // only k − 1 agents flagged in it), and inside its interval.
        let began = onset["began"].as_str().unwrap();
        assert!(
            (&*hour_text(29)..=&*hour_text(31)).contains(&began),
            "{onset}"
        );
        let [lo, hi] = [&onset["began_interval"][0], &onset["began_interval"][1]];
        assert!(lo.as_str() <= Some(&*hour_text(30)) && hi.as_str() >= Some(&*hour_text(30)));
        // Declared within 6 hours of the onset (by the end of hour 35): the slowest of the 400
        // simulated full blocks of docs/EVENTS.md (3 hours in the median).
        assert!(
            onset["detected"].as_str() <= Some(&*hour_text(35)),
            "{onset}"
        );
        assert!(onset["agents"].as_u64() >= Some(3));
        assert_eq!(onset["ended"], of(asn, "recovery")["began"]);
        let after = onset["after"]["differentiated_share"].as_f64().unwrap();
        let before = onset["before"]["differentiated_share"].as_f64().unwrap();
        // The country's series: half its tests are the blocked network's.
        let floor = if asn.is_some() { 0.8 } else { 0.4 };
        assert!(after > floor && before < 0.1, "{onset}");
        let recovery = of(asn, "recovery");
        let began = recovery["began"].as_str().unwrap();
        assert!(
            (&*hour_text(59)..=&*hour_text(62)).contains(&began),
            "{recovery}"
        );
        // The evidence is a query the API answers.
        let (status, cells) = http::get(collector.http_addr, onset["evidence"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(status, 200, "{cells}");
    }
    // Filters.
    for (query, n) in [
        ("?country=DE", 0),
        ("?country=RU&asn=12389", 2),
        ("?asn=all", 2),
        ("?kind=onset", 2),
        ("?status=open", 0),
        ("?status=ended&platform=whatsapp", 4),
    ] {
        let (status, body) = http::get(collector.http_addr, &format!("/api/v1/events{query}"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(
            value(&body)["events"].as_array().unwrap().len(),
            n,
            "{query}"
        );
    }
    for bad in [
        "?status=closed",
        "?colour=red",
        "?since=yesterday",
        "?asn=x",
    ] {
        let (status, body) = http::get(collector.http_addr, &format!("/api/v1/events{bad}"))
            .await
            .unwrap();
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // CSV and Atom say the same.
    let (_, csv) = http::get(collector.http_addr, "/api/v1/events?format=csv")
        .await
        .unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    let (status, atom) = http::get(collector.http_addr, "/api/v1/events.atom")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(atom.matches("<entry>").count(), 4, "{atom}");
    for e in events {
        let id = e["id"].as_str().unwrap();
        assert!(csv.contains(id) && atom.contains(&format!("urn:callwatch:event:{id}")));
    }
    // No open onset: the gauge says 0 (none listed).
    let (_, metrics) = http::get(collector.http_addr, "/metrics").await.unwrap();
    assert!(metrics.contains("# TYPE callwatch_events_open gauge"));
    assert!(!metrics.contains("callwatch_events_open{"), "{metrics}");

    // The same events from the stopped store.
    collector.shutdown().await;
    let out = Command::new(callwatch_tests::built_binary("callwatch-collector"))
        .args(["export", "--events", "--format", "csv", "--data"])
        .arg(root.path().join("collector"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported = String::from_utf8(out.stdout).unwrap();
    assert_eq!(exported.lines().count(), 5, "{exported}");
    for e in events {
        assert!(exported.contains(e["id"].as_str().unwrap()), "{exported}");
    }
}

/// A history uploaded late (two weeks back, after the collector's detector first ran on an empty
/// store) is read in full: its onset is dated where it began, not where the detector's recent
/// window starts; and an open onset shows in the gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_history_is_read_in_full_and_an_open_onset_is_counted_by_the_gauge() {
    let root = tempfile::tempdir().unwrap();
    let first_day = chrono::Utc::now().timestamp().div_euclid(86_400) - 15;
    let spec = HistorySpec {
        networks: vec![NetSpec {
            country: "IR",
            asn: 58224,
            platform: Platform::Telegram,
            agents: 3,
            tests_per_hour: 1,
            restriction: Some(Restriction {
                onset: 20,
                end: None,
                share_of_agents: 1.0,
                rate: 1.0,
            }),
            skew_minutes: 0,
        }],
        days: 14,
        first_day,
        seed: 5,
        availability: 1.0,
    };
    let reports = signed_history(&spec);
    let collector = serve(history_config(root.path(), &spec)).await.unwrap();
    assert_eq!(upload_history(&collector, &reports).await, reports.len());
    let (_, body) = http::get(collector.http_addr, "/api/v1/events?status=open")
        .await
        .unwrap();
    assert_eq!(
        value(&body)["events"].as_array().unwrap().len(),
        2,
        "{body}"
    );
    let (_, metrics) = http::get(collector.http_addr, "/metrics").await.unwrap();
    for scope in ["network", "country"] {
        let line = format!("callwatch_events_open{{platform=\"telegram\",scope=\"{scope}\"}} 1");
        assert!(metrics.contains(&line), "{line} not in {metrics}");
    }
    collector.shutdown().await;
}
