//! The ClickHouse store against a real server (`CALLWATCH_CLICKHOUSE_URL`, which `.ci/run`
//! starts on loopback): same aggregates as sled, two collectors on one database, an outage during
//! ingest, `migrate`, and a table made before the stream kind, rule and round-trip loss columns.
//!
//! Without `CALLWATCH_CLICKHOUSE_URL` these tests fail, unless `CALLWATCH_SKIP_CLICKHOUSE=1`
//! says to skip them (so CI can never skip them silently). Each test uses a fresh database and
//! drops it when it passes.

use callwatch_agent::queue::Queue;
use callwatch_agent::upload::{upload_queue, UploadTarget};
use callwatch_collector::domain::sketch::RELATIVE_ACCURACY;
use callwatch_collector::domain::FIGURES;
use callwatch_collector::domain::{
    Filing, PrefixFrom, RegionSource, ReportKey, StoredReport, VerifiedReport,
};
use callwatch_collector::store::clickhouse::schema::ADDED_COLUMNS;
use callwatch_collector::store::clickhouse::{Access, ClickHouseUrl};
use callwatch_collector::store::copy_reports;
use callwatch_collector::store::{ClickHouseStore, ReportStore, SledStore};
use callwatch_collector::{serve, serve_with_store, Collector, ServeConfig};
use callwatch_proto::precision;
use callwatch_proto::report::StreamKind;
use callwatch_tests::seed::{self, Seeded, REGIONS};
use callwatch_tests::{http, oracle};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use callwatch_tests::clickhouse_url;

fn credentials() -> Access {
    Access {
        user: std::env::var("CALLWATCH_CLICKHOUSE_USER").ok(),
        password: std::env::var("CALLWATCH_CLICKHOUSE_PASSWORD").ok(),
        ca_file: None,
    }
}

/// A database name no other test (or run) uses.
fn fresh_db(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "cwtest_{tag}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000
    )
}

fn open(url: &str, db: &str) -> Arc<ClickHouseStore> {
    Arc::new(ClickHouseStore::open(url, db, &credentials()).unwrap())
}

/// A collector config on loopback whose region table maps [`REGIONS`] (see `seed::config`),
/// with this per-agent cap and k.
fn config(root: &Path, name: &str, cap: usize, min_agents: usize) -> ServeConfig {
    let mut cfg = seed::config(root, name);
    cfg.policy.max_per_agent_per_day = cap;
    cfg.policy.min_agents = min_agents;
    cfg
}

async fn get_json(c: &Collector, query: &str) -> serde_json::Value {
    let (status, body) = http::get(c.http_addr, &format!("/api/v1/aggregation?{query}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{query}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Whether sled's published `s` for figure `name` is what its sketch may publish where
/// ClickHouse, which computes the exact value of the same rank, published `e`: that exact value
/// lies within half a rounding step of `e`, and the sketch answers within its relative error of
/// it, rounded to the same rule.
fn sketched_alike(name: &str, s: f64, e: f64) -> bool {
    let half = precision::of(name).map_or(0.0, |p| p.step() / 2.0);
    let (lo, _) = oracle::published_range(name, e - half, RELATIVE_ACCURACY);
    let (_, hi) = oracle::published_range(name, e + half, RELATIVE_ACCURACY);
    (lo..=hi).contains(&s)
}

/// Same cells, same counts, agents, verdicts and (rounded) shares; quantiles within the
/// sketch's 1 % and their rounding, every number to its published rule.
fn assert_same_cells(query: &str, sled: &serde_json::Value, ch: &serde_json::Value) {
    assert_same_cells_but(query, sled, ch, &[]);
}

/// [`assert_same_cells`], but for the fields and figures in `skip`.
fn assert_same_cells_but(
    query: &str,
    sled: &serde_json::Value,
    ch: &serde_json::Value,
    skip: &[&str],
) {
    let (a, b) = (
        sled["result"].as_array().unwrap(),
        ch["result"].as_array().unwrap(),
    );
    assert_eq!(a.len(), b.len(), "{query}: cell counts differ");
    // The seed's agents test twice a day at random minutes, so no hour of theirs has k = 3
    // agents: the hour axis publishes nothing, on both stores alike (the hand-written fixture of
    // aggregation.rs publishes an hour on both).
    assert!(
        !a.is_empty() || query.contains("axis_x=hour"),
        "{query}: no cells at all"
    );
    for (x, y) in a.iter().zip(b) {
        oracle::assert_published_precision(x);
        oracle::assert_published_precision(y);
        for field in [
            "day",
            "hour",
            "country",
            "region",
            "asn",
            "platform",
            "arm",
            "kind",
            "count",
            "agents",
            "verdicts",
            "differentiated_share",
            "blocked_share",
            "filing",
        ]
        .into_iter()
        .filter(|f| !skip.contains(f))
        {
            assert_eq!(x[field], y[field], "{query}: {field} differs\n{x}\n{y}");
        }
        for f in FIGURES.into_iter().filter(|f| !skip.contains(f)) {
            assert_eq!(x[f].is_null(), y[f].is_null(), "{query}: {f} presence");
            for q in ["p10", "median", "p90"] {
                if let (Some(s), Some(e)) = (x[f][q].as_f64(), y[f][q].as_f64()) {
                    // sled's sketch vs ClickHouse's exact value of the same rank.
                    assert!(
                        sketched_alike(f, s, e),
                        "{query}: {f}.{q} sled {s} vs clickhouse {e}\n{x}\n{y}"
                    );
                }
            }
        }
    }
}

const QUERIES: [&str; 10] = [
    "axis_x=country&axis_y=platform",
    "axis_x=asn",
    "axis_x=day&axis_y=arm",
    "axis_x=hour&country=RU&since=MONTH_AGO",
    "axis_x=platform&axis_y=arm&arm=control",
    "axis_x=country&platform=telegram&asn=12389",
    "axis_x=day&axis_y=country&since=SINCE&until=UNTIL",
    "axis_x=country&axis_y=kind",
    "axis_x=platform&kind=video",
    "axis_x=kind&axis_y=arm&country=RU&platform=whatsapp",
];

fn concrete(query: &str) -> String {
    let now = chrono::Utc::now();
    // Odd hour bounds: the cap counts whole days, the filter cuts hours.
    let since = (now - chrono::Duration::hours(4 * 24 + 7)).format("%Y-%m-%dT%H:00:00Z");
    let until = (now - chrono::Duration::hours(24 + 5)).format("%Y-%m-%dT%H:30:00Z");
    // The hour axis answers at most 31 days in one query.
    let month_ago = (now - chrono::Duration::days(30)).format("%Y-%m-%dT00:00:00Z");
    query
        .replace("MONTH_AGO", &month_ago.to_string())
        .replace("SINCE", &since.to_string())
        .replace("UNTIL", &until.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_and_clickhouse_give_the_same_aggregates() {
    let Some(url) = clickhouse_url() else { return };
    let db = fresh_db("same");
    let root = tempfile::tempdir().unwrap();
    let data = seed::seed();
    // Cap 1 per agent, cell and day: the seed has two per day, so the cap decides which count.
    let on_sled = serve(config(root.path(), "sled", 1, 3)).await.unwrap();
    let store = open(&url, &db);
    let on_ch = serve_with_store(config(root.path(), "ch", 1, 3), store.clone())
        .await
        .unwrap();
    let (a, _) = seed::upload_batches(&on_sled, &data, 100).await;
    let (b, _) = seed::upload_batches(&on_ch, &data, 100).await;
    assert_eq!((a, b), (data.len(), data.len()));
    assert_eq!(store.len(), data.len());
    for q in QUERIES {
        let q = concrete(q);
        let (x, y) = (get_json(&on_sled, &q).await, get_json(&on_ch, &q).await);
        assert_same_cells(&q, &x, &y);
    }
    // Brazil's Signal has two agents: below k on both.
    let v = get_json(&on_ch, "axis_x=country&axis_y=platform&country=BR").await;
    assert!(v["result"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["platform"] != "signal"));
    // The raw export pages through ClickHouse in arrival order, every report once: the public
    // form (whose ASNs come from ClickHouse's published cells) without a signature.
    let (status, body) = http::get(on_ch.http_addr, "/api/v1/reports?limit=5000")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("\"signature\""));
    let lines = body.lines().filter(|l| l.contains("\"report\"")).count();
    assert_eq!(lines, data.len());
    on_sled.shutdown().await;
    on_ch.shutdown().await;
    store.drop_database().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_on_one_clickhouse_count_every_report_once() {
    let Some(url) = clickhouse_url() else { return };
    let db = fresh_db("two");
    let root = tempfile::tempdir().unwrap();
    let data = seed::seed();
    // A answers in SQL; B from its aggregate mirror, synced before every query.
    let cfg_b = config(root.path(), "b", usize::MAX, 1);
    let store_a = open(&url, &db);
    let store_b = Arc::new(
        ClickHouseStore::open(&url, &db, &credentials())
            .unwrap()
            .with_mirror(&root.path().join("b-mirror"), &cfg_b.policy, Duration::ZERO)
            .unwrap(),
    );
    let a = serve_with_store(config(root.path(), "a", usize::MAX, 1), store_a.clone())
        .await
        .unwrap();
    let b = serve_with_store(cfg_b, store_b.clone()).await.unwrap();
    // Agents upload the first two thirds to A and the last two thirds to B at the same time:
    // the middle third reaches both, as after a lost acknowledgement and a retry elsewhere.
    let third = data.len() / 3;
    let (to_a, to_b) = (&data[..2 * third], &data[third..]);
    let ((acc_a, dup_a), (acc_b, dup_b)) = tokio::join!(
        seed::upload_batches(&a, to_a, 25),
        seed::upload_batches(&b, to_b, 25)
    );
    assert_eq!(acc_a + dup_a, to_a.len());
    assert_eq!(acc_b + dup_b, to_b.len());
    assert!(
        acc_a + acc_b >= data.len(),
        "every report was accepted at least once"
    );
    // Each agent resends everything to the other collector: all duplicates now.
    let (acc, dup) = seed::upload_batches(&b, to_a, 50).await;
    assert_eq!((acc, dup), (0, to_a.len()));
    // One platform arm per voice report (by default a query counts voice tests only).
    let expected_arms = data
        .iter()
        .filter(|s| s.3.stream_kind == StreamKind::Voice)
        .count();
    assert!(expected_arms < data.len(), "the seed has video tests");
    for (name, c, store) in [("A", &a, &store_a), ("B", &b, &store_b)] {
        assert_eq!(store.len(), data.len(), "{name}: stored reports");
        let v = get_json(c, "axis_x=platform").await;
        let total: u64 = v["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["count"].as_u64().unwrap())
            .sum();
        assert_eq!(
            total as usize, expected_arms,
            "{name}: platform arms counted"
        );
    }
    for q in QUERIES {
        let q = concrete(q);
        // The mirror's figures from sketches, SQL's exact: alike within the sketch's error.
        assert_same_cells(&q, &get_json(&b, &q).await, &get_json(&a, &q).await);
    }
    a.shutdown().await;
    b.shutdown().await;
    store_a.drop_database().unwrap();
}

/// A TCP proxy to ClickHouse that can be cut: while down it refuses every connection (accepts
/// and closes at once) and closes a kept connection at its next request, as a stopped server
/// would (the store's client keeps connections between requests).
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                if !flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if !flag.load(Ordering::SeqCst) {
                                // Down: a kept connection dies with the server, as it would.
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Proxy { addr, up, accepted }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_outage_during_ingest_loses_nothing() {
    let Some(url) = clickhouse_url() else { return };
    let db = fresh_db("outage");
    let parsed = ClickHouseUrl::parse(&url).unwrap();
    let upstream = std::net::ToSocketAddrs::to_socket_addrs(&(parsed.host.as_str(), parsed.port))
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(upstream);
    let root = tempfile::tempdir().unwrap();
    let store = open(&format!("http://{}", proxy.addr), &db);
    let c = serve_with_store(config(root.path(), "c", usize::MAX, 1), store.clone())
        .await
        .unwrap();
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&c.pin, &mut pin).unwrap();
    let target = UploadTarget {
        collector: c.quic_addr,
        tcp: None,
        server_name: "localhost".into(),
        pin,
        bind: None,
        batch: 10,
        connect_timeout: Duration::from_secs(5),
        fetch_seal_key: false,
        tcp_first: false,
        fetch_endpoints: false,
    };
    let data = seed::seed();
    let (first, second) = (&data[..30], &data[30..90]);
    let queue = Queue::open(&root.path().join("queue")).unwrap();
    for s in first {
        queue.push(&s.2).unwrap();
    }
    let summary = upload_queue(&queue, &target).await.unwrap();
    assert_eq!((summary.accepted, queue.len()), (30, 0));

    // ClickHouse goes away: the collector answers with an error, never an ack.
    proxy.up.store(false, Ordering::SeqCst);
    for s in second {
        queue.push(&s.2).unwrap();
    }
    let result = upload_queue(&queue, &target).await;
    assert!(
        result.is_err(),
        "no acknowledgement without ClickHouse: {result:?}"
    );
    assert_eq!(queue.len(), second.len(), "the agent keeps every report");
    let (status, _) = http::get(c.http_addr, "/api/v1/aggregation?axis_x=platform")
        .await
        .unwrap();
    assert_ne!(
        status, 200,
        "the API says it cannot answer rather than answering wrong"
    );

    // Back: the agent's next attempt delivers everything, once.
    proxy.up.store(true, Ordering::SeqCst);
    let summary = upload_queue(&queue, &target).await.unwrap();
    assert_eq!((summary.accepted, queue.len()), (second.len(), 0));
    // Resending the lot changes nothing.
    for s in first.iter().chain(second) {
        queue.push(&s.2).unwrap();
    }
    let summary = upload_queue(&queue, &target).await.unwrap();
    assert_eq!(
        (summary.accepted, summary.duplicate),
        (0, first.len() + second.len())
    );
    assert_eq!(store.len(), 90);
    let v = get_json(&c, "axis_x=platform").await;
    let total: u64 = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 90, "{v}");
    c.shutdown().await;
    store.drop_database().unwrap();
}

/// The seed as stored reports, with arrival times in upload order.
fn stored_seed(data: &[Seeded]) -> Vec<VerifiedReport> {
    data.iter()
        .enumerate()
        .map(|(i, (sender, key, signed, report))| {
            let (_, cc, asn) = REGIONS[*sender];
            VerifiedReport::new(
                ReportKey {
                    agent: key.verifying_key().to_bytes(),
                    id: report.id,
                },
                StoredReport {
                    signed: signed.clone(),
                    region: callwatch_collector::geo::Region {
                        country: cc.into(),
                        asn,
                        subdivision: String::new(),
                    },
                    // Batches of 50 share a millisecond, as at ingest.
                    received_at_ms: 1_700_000_000_000 + (i / 50) as i64,
                    // Varied marks, so the stores' filing counts are compared too.
                    filing: Filing {
                        source: RegionSource::of_code((i % 4) as u8),
                        uploaded_elsewhere: i % 3 == 0,
                        hosting: i % 5 == 1,
                        prefix_from: PrefixFrom::Upload,
                        // Shared by agents of many networks; 11 so that a day's first reports
                        // (at even positions, 14 per agent and platform) do not all share one:
                        // k counts prefixes too.
                        prefix_tag: (i % 2 == 0).then(|| format!("{:016x}", i % 11)),
                    },
                },
                report.clone(),
            )
        })
        .collect()
}

/// The prefix k and the prefix cap are the same in both stores: a party with 50 keys on 2
/// prefixes publishes nothing at k = 3 and, beside 3 honest agents on 3 other prefixes, counts
/// at most 2 × the prefix cap, in the order of arrival; also at other caps and k.
#[test]
fn clickhouse_applies_the_prefix_k_and_the_prefix_cap_like_sled() {
    use callwatch_collector::domain::{Axis, Filter, Policy};
    let Some(url) = clickhouse_url() else { return };
    let db = fresh_db("prefix");
    let root = tempfile::tempdir().unwrap();
    let (party, honest) = seed::sybil_reports();
    let ch = open(&url, &db);
    ch.insert_batch(&party).unwrap();
    let axes_list = [
        vec![Axis::Country],
        vec![Axis::Hour, Axis::Arm],
        vec![Axis::Asn, Axis::Platform],
    ];
    for (k, pcap, cap) in [(3, 10, 24), (2, 10, 24), (2, 7, 3), (3, 240, 24)] {
        let policy = Policy {
            min_agents: k,
            max_per_agent_per_day: cap,
            max_per_prefix_per_day: pcap,
        };
        let sled =
            SledStore::open_with_policy(&root.path().join(format!("s{k}-{pcap}-{cap}")), &policy)
                .unwrap();
        sled.insert_batch(&party).unwrap();
        for axes in &axes_list {
            let x = sled.aggregate(axes, &Filter::default(), &policy).unwrap();
            let y = ch.aggregate(axes, &Filter::default(), &policy).unwrap();
            assert_eq!(x.is_empty(), k == 3, "{axes:?} k {k}: {x:?}");
            let counts = |c: &[callwatch_collector::domain::Cell]| {
                c.iter().map(|c| (c.count, c.agents)).collect::<Vec<_>>()
            };
            assert_eq!(counts(&x), counts(&y), "{axes:?} k {k} caps {cap}/{pcap}");
        }
    }
    ch.insert_batch(&honest).unwrap();
    for (k, pcap, cap) in [(3, 10, 24), (3, 7, 3), (3, 240, 24), (4, 10, 24)] {
        let policy = Policy {
            min_agents: k,
            max_per_agent_per_day: cap,
            max_per_prefix_per_day: pcap,
        };
        let sled =
            SledStore::open_with_policy(&root.path().join(format!("h{k}-{pcap}-{cap}")), &policy)
                .unwrap();
        sled.insert_batch(&party).unwrap();
        sled.insert_batch(&honest).unwrap();
        for axes in &axes_list {
            let x = sled.aggregate(axes, &Filter::default(), &policy).unwrap();
            let y = ch.aggregate(axes, &Filter::default(), &policy).unwrap();
            let (a, b) = (
                serde_json::json!({ "result": x }),
                serde_json::json!({ "result": y }),
            );
            if k == 4 || axes.contains(&Axis::Hour) {
                // Five prefixes in all, but no hour has three honest ones.
                assert_eq!(x.len(), y.len(), "{axes:?}");
                continue;
            }
            assert_same_cells(&format!("{axes:?} k {k} caps {cap}/{pcap}"), &a, &b);
            // 6 honest reports, the party at most 2 prefixes × the prefix cap.
            let party_counted = x.iter().map(|c| c.count).sum::<u64>() - 6;
            assert_eq!(
                party_counted as usize,
                2 * pcap.min(25 * cap.min(20)),
                "{axes:?}"
            );
        }
    }
    ch.drop_database().unwrap();
}

/// The seed's stored reports with subdivisions: Russia's agents in Moscow, St Petersburg or
/// none by their key, Germany's all in Berlin; the other countries none.
fn with_subdivisions(stored: Vec<VerifiedReport>) -> Vec<VerifiedReport> {
    stored
        .into_iter()
        .map(|v| {
            let mut s = v.stored;
            let sub = match s.region.country.as_str() {
                "RU" => ["MOW", "MOW", "SPE", ""][usize::from(v.key.agent[0] % 4)],
                "DE" => "BE",
                _ => "",
            };
            s.region = s.region.with_subdivision(sub);
            VerifiedReport::parse(s).unwrap()
        })
        .collect()
}

/// Region cells (#17 item 3) are the same in both stores: the region atoms, by day and by
/// hour, with and without the network axis, filtered by region, at several k; and queries
/// that do not ask for regions are still the same in both.
#[test]
fn clickhouse_publishes_the_same_regions_as_sled() {
    use callwatch_collector::domain::{Axis, Filter, Policy};
    let Some(url) = clickhouse_url() else { return };
    let db = fresh_db("regions");
    let root = tempfile::tempdir().unwrap();
    let stored = with_subdivisions(stored_seed(&seed::seed()));
    let ch = open(&url, &db);
    for b in stored.chunks(200) {
        ch.insert_batch(b).unwrap();
    }
    let region = |r: &str| Filter {
        region: Some(r.into()),
        ..Filter::default()
    };
    let queries = [
        (vec![Axis::Region], Filter::default()),
        (vec![Axis::Region, Axis::Asn], Filter::default()),
        (vec![Axis::Region, Axis::Platform], Filter::default()),
        (vec![Axis::Day, Axis::Region], region("RU-MOW")),
        (vec![Axis::Platform], region("RU-SPE")),
        (vec![Axis::Asn], region("DE-BE")),
        (vec![Axis::Hour, Axis::Region], Filter::default()),
        (vec![Axis::Hour], region("RU-MOW")),
        (vec![Axis::Hour, Axis::Country], Filter::default()),
        (vec![Axis::Country, Axis::Platform], Filter::default()),
    ];
    let mut regional = 0;
    for k in [1, 2, 3] {
        let policy = Policy {
            min_agents: k,
            ..Policy::default()
        };
        let sled =
            SledStore::open_with_policy(&root.path().join(format!("k{k}")), &policy).unwrap();
        for b in stored.chunks(200) {
            sled.insert_batch(b).unwrap();
        }
        for (axes, filter) in &queries {
            let x = sled.aggregate(axes, filter, &policy).unwrap();
            let y = ch.aggregate(axes, filter, &policy).unwrap();
            regional += x.iter().filter(|c| c.region.is_some()).count();
            if x.is_empty() {
                assert!(y.is_empty(), "{axes:?} {filter:?} k {k}: {y:?}");
                continue;
            }
            let (a, b) = (
                serde_json::json!({ "result": x }),
                serde_json::json!({ "result": y }),
            );
            assert_same_cells(&format!("{axes:?} {filter:?} k {k}"), &a, &b);
        }
    }
    assert!(regional > 20, "only {regional} region cells");
    ch.drop_database().unwrap();
}

#[test]
fn migrate_from_sled_is_resumable_and_idempotent() {
    let Some(url) = clickhouse_url() else { return };
    let db = fresh_db("migrate");
    let root = tempfile::tempdir().unwrap();
    let data = seed::seed();
    let sled_dir = root.path().join("collector").join("reports.sled");
    {
        let sled = SledStore::open_with_cap(&sled_dir, 1).unwrap();
        for b in stored_seed(&data).chunks(50) {
            sled.insert_batch(b).unwrap();
        }
    }
    let sled = SledStore::open(&sled_dir).unwrap();
    let ch = open(&url, &db);
    // Interrupted after the third batch.
    let mut batches = 0;
    let part = copy_reports(&sled, ch.as_ref(), 100, |_| {
        batches += 1;
        batches < 3
    })
    .unwrap();
    assert_eq!((part.inserted, part.present), (300, 0));
    assert_eq!(ch.len(), 300);
    // Resumed: the rest arrives, what was there is skipped.
    let rest = copy_reports(&sled, ch.as_ref(), 100, |_| true).unwrap();
    assert_eq!(
        (rest.read, rest.inserted, rest.present),
        (data.len(), data.len() - 300, 300)
    );
    // Again: nothing new.
    let again = copy_reports(&sled, ch.as_ref(), 100, |_| true).unwrap();
    assert_eq!((again.inserted, again.present), (0, data.len()));
    assert_eq!(ch.len(), data.len());
    // The copy is faithful: same bytes, same arrival times, same aggregates (cap 1, k 3).
    let mut from_sled = Vec::new();
    sled.for_each_since(i64::MIN, &mut |r| {
        from_sled.push(r);
        Ok(true)
    })
    .unwrap();
    let mut from_ch = Vec::new();
    ch.for_each_since(i64::MIN, &mut |r| {
        from_ch.push(r);
        Ok(true)
    })
    .unwrap();
    let sort = |v: &mut Vec<StoredReport>| {
        v.sort_by(|a, b| {
            (a.received_at_ms, &a.signed.key, &a.signed.body).cmp(&(
                b.received_at_ms,
                &b.signed.key,
                &b.signed.body,
            ))
        })
    };
    sort(&mut from_sled);
    sort(&mut from_ch);
    assert!(from_sled == from_ch, "reports differ after the copy");
    assert!(from_ch.iter().all(|r| r.signed.verify().is_ok()));
    let policy = callwatch_collector::domain::Policy {
        min_agents: 3,
        max_per_agent_per_day: 1,
        ..callwatch_collector::domain::Policy::default()
    };
    use callwatch_collector::domain::{Axis, Filter};
    for axes in [
        vec![Axis::Country, Axis::Platform],
        vec![Axis::Day, Axis::Arm],
        vec![Axis::Asn],
    ] {
        let x = serde_json::json!({"result": sled.aggregate(&axes, &Filter::default(), &policy).unwrap()});
        let y = serde_json::json!({"result": ch.aggregate(&axes, &Filter::default(), &policy).unwrap()});
        assert_same_cells(&format!("{axes:?}"), &x, &y);
    }
    drop(sled);
    // The command line does the same, and says how far it got.
    let out = std::process::Command::new(callwatch_tests::built_binary("callwatch-collector"))
        .args(["migrate", "--from"])
        .arg(root.path().join("collector"))
        .args(["--to", &format!("{}/{db}", url.trim_end_matches('/'))])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("0 copied, {} already there", data.len())),
        "{stderr}"
    );
    // export reads the ClickHouse store as it reads sled: every report once, and aggregates.
    let export = |args: &[&str]| {
        let out = std::process::Command::new(callwatch_tests::built_binary("callwatch-collector"))
            .args(["export", "--data"])
            .arg(root.path())
            .args(["--store", "clickhouse", "--clickhouse-url", &url])
            .args(["--clickhouse-database", &db])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(export(&[]).lines().count(), data.len());
    let csv = export(&["--format", "csv", "--axis-x", "country"]);
    assert!(csv.starts_with("country,count,agents,"), "{csv}");
    assert!(csv.contains("\nRU,"), "{csv}");
    ch.drop_database().unwrap();
}

/// The HTTPS server and the CA file its certificate chains to (`.ci/run` starts ClickHouse with
/// an HTTPS port and a self-signed certificate), or `None` when the caller asked to skip.
fn clickhouse_https() -> Option<(String, PathBuf)> {
    clickhouse_url()?;
    match (
        std::env::var("CALLWATCH_CLICKHOUSE_HTTPS_URL"),
        std::env::var("CALLWATCH_CLICKHOUSE_CA_FILE"),
    ) {
        (Ok(u), Ok(ca)) if !u.is_empty() && !ca.is_empty() => Some((u, ca.into())),
        _ => panic!(
            "CALLWATCH_CLICKHOUSE_HTTPS_URL and CALLWATCH_CLICKHOUSE_CA_FILE are not set: the TLS \
             test needs ClickHouse's HTTPS port and the CA file of its certificate (.ci/run \
             starts one); set CALLWATCH_SKIP_CLICKHOUSE=1 to skip the ClickHouse tests"
        ),
    }
}

#[test]
fn https_with_the_operators_ca_stores_and_a_strange_certificate_is_refused() {
    let Some((url, ca)) = clickhouse_https() else {
        return;
    };
    let db = fresh_db("tls");
    let trusted = Access {
        ca_file: Some(ca),
        ..credentials()
    };
    let store = ClickHouseStore::open(&url, &db, &trusted).unwrap();
    let data = seed::seed();
    let batch = stored_seed(&data[..40]);
    store.insert_batch(&batch).unwrap();
    assert_eq!(store.len(), 40, "every report stored over TLS");
    let mut read = 0;
    store
        .for_each(&mut |r| {
            assert!(batch.iter().any(|v| v.stored.signed == r.signed));
            read += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(read, 40, "and read back exactly");

    // Mozilla's roots do not vouch for a self-signed certificate: refused, and said why.
    let e = ClickHouseStore::open(&url, &db, &credentials())
        .err()
        .expect("an unknown issuer is refused")
        .to_string();
    assert!(e.contains("ClickHouse at localhost:"), "{e}");
    assert!(
        e.to_lowercase().contains("certificate") || e.contains("UnknownIssuer"),
        "{e}"
    );
    // Plain HTTP to the TLS port is an error, not a hang.
    let plain = url.replacen("https://", "http://", 1);
    assert!(ClickHouseStore::open(&plain, &db, &credentials()).is_err());
    store.drop_database().unwrap();
}

#[test]
fn the_client_keeps_its_connections() {
    let Some(url) = clickhouse_url() else { return };
    let parsed = ClickHouseUrl::parse(&url).unwrap();
    let upstream = std::net::ToSocketAddrs::to_socket_addrs(&(parsed.host.as_str(), parsed.port))
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(upstream);
    let db = fresh_db("keep");
    let store = open(&format!("http://{}", proxy.addr), &db);
    let opened_with = proxy.accepted.load(Ordering::SeqCst);
    let data = seed::seed();
    for chunk in stored_seed(&data[..50]).chunks(5) {
        store.insert_batch(chunk).unwrap();
        assert!(store.len() > 0);
    }
    let used = proxy.accepted.load(Ordering::SeqCst);
    // 10 batches × (dedup query, insert, count) = 30 requests, one after another: a client that
    // kept no connection (as the hand-written one did) would have opened 30 more.
    assert!(
        used <= opened_with + 2,
        "{used} connections for 30 sequential requests after {opened_with} at open"
    );
    assert!(
        opened_with <= 2,
        "{opened_with} connections for the migration at open"
    );
    store.drop_database().unwrap();
}

/// Runs one statement on the server (with `curl`, which `.ci/run` installs); panics on failure.
fn sql(url: &str, statement: &str) -> String {
    let Access { user, password, .. } = credentials();
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-fsS", "--data-binary", statement]);
    if user.is_some() || password.is_some() {
        cmd.arg("-u").arg(format!(
            "{}:{}",
            user.as_deref().unwrap_or("default"),
            password.as_deref().unwrap_or("")
        ));
    }
    let out = cmd
        .arg(format!("{}/", url.trim_end_matches('/')))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{statement}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_table_from_before_the_stream_kind_gains_its_columns_and_reads_old_rows_from_their_bodies() {
    let Some(url) = clickhouse_url() else { return };
    let db = fresh_db("oldtable");
    let root = tempfile::tempdir().unwrap();
    let data = seed::seed();
    let stored = stored_seed(&data);
    let sled = SledStore::open_with_cap(&root.path().join("sled"), 24).unwrap();
    for b in stored.chunks(50) {
        sled.insert_batch(b).unwrap();
    }
    {
        let ch = open(&url, &db);
        for b in stored.chunks(50) {
            ch.insert_batch(b).unwrap();
        }
    }
    // The table as collectors before the stream kind made it: rows without kind, rule or loss
    // (nor the filing columns, which came later still).
    for (column, ..) in ADDED_COLUMNS {
        sql(
            &url,
            &format!("ALTER TABLE {db}.reports DROP COLUMN {column}"),
        );
    }
    let columns = |db: &str| {
        sql(
            &url,
            &format!(
                "SELECT name FROM system.columns WHERE database = '{db}' AND table = 'reports' \
                 FORMAT TabSeparated"
            ),
        )
    };
    assert!(!columns(&db).lines().any(|c| c == "kind"));
    // Opened by this build: the columns are added, and old rows read theirs from the signed body.
    let ch = open(&url, &db);
    let now = columns(&db);
    for (column, ..) in ADDED_COLUMNS {
        assert!(now.lines().any(|c| c == column), "{column} missing: {now}");
    }
    assert_eq!(ch.len(), data.len());
    // Rows from before the filing columns read as unrecorded, unmarked, without a prefix tag.
    let mut old_rows = 0;
    ch.for_each(&mut |r| {
        assert_eq!(r.filing, Filing::default());
        old_rows += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(old_rows, data.len());
    let policy = callwatch_collector::domain::Policy {
        min_agents: 3,
        max_per_agent_per_day: 24,
        ..callwatch_collector::domain::Policy::default()
    };
    use callwatch_collector::domain::{Axis, Filter};
    let video = Filter {
        kind: Some(StreamKind::Video),
        ..Filter::default()
    };
    let mut blocked = 0;
    for (axes, filter) in [
        (vec![Axis::Country, Axis::Platform], Filter::default()),
        (vec![Axis::Country, Axis::Kind], Filter::default()),
        (vec![Axis::Platform, Axis::Arm], video.clone()),
        (vec![Axis::Day, Axis::Asn], Filter::default()),
    ] {
        let x = sled.aggregate(&axes, &filter, &policy).unwrap();
        let y = ch.aggregate(&axes, &filter, &policy).unwrap();
        blocked += y.iter().map(|c| c.verdicts.blocked).sum::<u64>();
        // Old rows have no round-trip loss (null, one per arm): the figure is missing.
        assert!(y.iter().all(|c| c.loss.is_none()));
        let (x, y) = (
            serde_json::json!({ "result": x }),
            serde_json::json!({ "result": y }),
        );
        // Old rows' filing reads as unrecorded and unmarked (checked above), unlike sled's.
        assert_same_cells_but(&format!("{axes:?} {filter:?}"), &x, &y, &["loss", "filing"]);
    }
    assert!(
        blocked > 0,
        "old rows' blocked calls are counted from their bodies"
    );
    let by_kind = ch
        .aggregate(&[Axis::Kind], &Filter::default(), &policy)
        .unwrap();
    let kinds: Vec<_> = by_kind.iter().map(|c| c.kind.as_deref()).collect();
    assert_eq!(kinds, [Some("voice"), Some("video")]);
    // New rows in the old table carry their own values.
    let newer: Vec<_> = data[..50]
        .iter()
        .map(|(sender, key, _, report)| {
            let mut r = report.clone();
            r.id.0[15] ^= 0xff;
            let signed = callwatch_proto::SignedReport::sign(&r, key).unwrap();
            (*sender, key.clone(), signed, r)
        })
        .collect();
    ch.insert_batch(&stored_seed(&newer)).unwrap();
    let axes = [Axis::Country];
    let y = ch.aggregate(&axes, &Filter::default(), &policy).unwrap();
    assert!(y.iter().any(|c| c.loss.is_some()));
    drop(sled);
    ch.drop_database().unwrap();
}

/// The client tries every address a name resolves to: in a mount namespace of its own, the
/// name `cwtest-db` resolves to `::1` first (where nothing listens) and then to 127.0.0.1 (where
/// ClickHouse does); `callwatch-collector migrate` to `http://cwtest-db:PORT/db` still gets
/// through. A client that used the first address only (as the hand-written one did) fails.
#[test]
fn the_client_tries_every_address_a_name_resolves_to() {
    let Some(url) = clickhouse_url() else { return };
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        callwatch_tests::cannot_run_here(
            callwatch_tests::SKIP_ROOT,
            "the_client_tries_every_address_a_name_resolves_to needs root (a mount namespace \
             with its own /etc/hosts)",
        );
        return;
    }
    let parsed = ClickHouseUrl::parse(&url).unwrap();
    assert!(
        TcpStream::connect(("::1", parsed.port)).is_err(),
        "ClickHouse must not listen on [::1]:{} for this test to mean anything",
        parsed.port
    );
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "::1 cwtest-db\n127.0.0.1 cwtest-db\n").unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    drop(SledStore::open(&callwatch_collector::store::config::sled_path(&data)).unwrap());
    let db = fresh_db("addrs");
    let to = format!("http://cwtest-db:{}/{db}", parsed.port);
    let script = format!(
        "mount --bind '{}' /etc/hosts && exec '{}' migrate --from '{}' --to '{to}'",
        hosts.display(),
        callwatch_tests::built_binary("callwatch-collector").display(),
        data.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("copying 0 reports"), "{stderr}");
    // It really reached the server: the database exists now.
    let dbs = sql(&url, "SHOW DATABASES");
    assert!(dbs.lines().any(|l| l == db), "{dbs}");
    sql(&url, &format!("DROP DATABASE {db}"));
}

/// The events' evidence is the same from both stores: per hour, country, ASN and platform, the
/// judged and differentiated tests after the caps, the agents and prefixes, and the
/// differentiated tests per agent and prefix; under a tight cap and under the default.
#[test]
fn clickhouse_gives_the_events_the_same_evidence_as_sled() {
    use callwatch_collector::domain::events::EvidenceBook;
    use callwatch_collector::domain::Policy;
    let Some(url) = clickhouse_url() else { return };
    let db = fresh_db("evidence");
    let root = tempfile::tempdir().unwrap();
    let data = stored_seed(&seed::seed());
    let ch = open(&url, &db);
    ch.insert_batch(&data).unwrap();
    let mut differentiated = 0;
    for (cap, pcap) in [(24, 240), (1, 2)] {
        let policy = Policy {
            max_per_agent_per_day: cap,
            max_per_prefix_per_day: pcap,
            ..Policy::default()
        };
        let sled =
            SledStore::open_with_policy(&root.path().join(format!("{cap}")), &policy).unwrap();
        sled.insert_batch(&data).unwrap();
        let (mut a, mut b) = (EvidenceBook::default(), EvidenceBook::default());
        sled.evidence(0, i64::MAX / 2, &policy, &mut a).unwrap();
        // Beyond ClickHouse's dates too: read as up to its last one.
        ch.evidence(0, i64::MAX / 2, &policy, &mut b).unwrap();
        assert!(!a.series.is_empty());
        assert_eq!(a.series, b.series, "cap {cap}, prefix cap {pcap}");
        differentiated = a
            .series
            .values()
            .flat_map(|h| h.values())
            .map(|e| e.differentiated)
            .sum::<u64>()
            .max(differentiated);
        // A window reads only its hours.
        let first = a.first_hour().unwrap();
        let (mut c, mut d) = (EvidenceBook::default(), EvidenceBook::default());
        sled.evidence(first + 30, first + 60, &policy, &mut c)
            .unwrap();
        ch.evidence(first + 30, first + 60, &policy, &mut d)
            .unwrap();
        assert_eq!(c.series, d.series);
        assert!(c
            .series
            .values()
            .flat_map(|h| h.keys())
            .all(|h| (first + 30..first + 60).contains(h)));
    }
    assert!(differentiated > 0, "the seed has differentiated tests");
    ch.drop_database().unwrap();
}

/// The aggregate mirror (`store/clickhouse/mirror.rs`) answers every query, and the events'
/// evidence, exactly as a sled store that ingested the same reports in the same order — with
/// regions, both caps binding, k 1 to 3, before and after roll-ups — and follows ClickHouse: a
/// late upload into a closed day, a second copy of a report that arrived later (counted once,
/// the first copy's figures), a restart (nothing read again), and a query under other caps
/// (answered in SQL).
#[test]
fn the_mirror_answers_as_sled_and_follows_late_uploads_copies_and_restarts() {
    use callwatch_collector::domain::events::EvidenceBook;
    use callwatch_collector::domain::{Axis, Filter, Policy};
    use callwatch_collector::store::clickhouse::schema::COLUMNS;
    let Some(url) = clickhouse_url() else { return };
    let db = fresh_db("mirror");
    let root = tempfile::tempdir().unwrap();
    let stored = with_subdivisions(stored_seed(&seed::seed()));
    // The seed has two reports per agent, platform and day: a cap of one counts the first to
    // arrive, and the prefix cap binds where agents share a tag.
    let policy = Policy {
        min_agents: 2,
        max_per_agent_per_day: 1,
        max_per_prefix_per_day: 2,
    };
    let mirror_dir = root.path().join("mirror");
    let open_mirrored = || {
        ClickHouseStore::open(&url, &db, &credentials())
            .unwrap()
            .with_mirror(&mirror_dir, &policy, Duration::ZERO)
            .unwrap()
    };
    let ch = open_mirrored();
    let sled = SledStore::open_with_policy(&root.path().join("sled"), &policy).unwrap();
    // The last tenth held back: uploaded late, into days the rest has closed.
    let (early, late) = stored.split_at(stored.len() * 9 / 10);
    for b in early.chunks(100) {
        ch.insert_batch(b).unwrap();
        sled.insert_batch(b).unwrap();
    }
    let queries = [
        (vec![Axis::Country, Axis::Platform], Filter::default()),
        (vec![Axis::Asn, Axis::Platform], Filter::default()),
        (vec![Axis::Day, Axis::Arm], Filter::default()),
        (vec![Axis::Day, Axis::Country], Filter::default()),
        (vec![Axis::Hour, Axis::Country], Filter::default()),
        (vec![Axis::Region, Axis::Platform], Filter::default()),
        (
            vec![Axis::Hour],
            Filter {
                region: Some("RU-MOW".into()),
                ..Filter::default()
            },
        ),
        (vec![Axis::Day, Axis::Kind], Filter::default()),
    ];
    let same = |ch: &ClickHouseStore, what: &str| {
        let mut published = 0;
        for k in [1, 2, 3] {
            let p = Policy {
                min_agents: k,
                ..policy
            };
            for (axes, filter) in &queries {
                let x = sled.aggregate(axes, filter, &p).unwrap();
                let y = ch.aggregate(axes, filter, &p).unwrap();
                // As published (each figure to its rounding rule): ClickHouse 18.16 reads some
                // inserted floats one unit in the last place off, which the rounding absorbs.
                let as_published =
                    |c: &[callwatch_collector::domain::Cell]| serde_json::to_value(c).unwrap();
                if as_published(&x) != as_published(&y) {
                    let first = x.iter().zip(&y).position(|(a, b)| a != b);
                    panic!(
                        "{what}: {axes:?} {filter:?} k {k}: {} cells against {}, first \
                         differing {:?} / {:?}",
                        x.len(),
                        y.len(),
                        first.map(|i| &x[i]),
                        first.map(|i| &y[i])
                    );
                }
                published += x.len();
            }
        }
        let (mut a, mut b) = (EvidenceBook::default(), EvidenceBook::default());
        sled.evidence(0, i64::MAX / 2, &policy, &mut a).unwrap();
        ch.evidence(0, i64::MAX / 2, &policy, &mut b).unwrap();
        assert!(!a.series.is_empty());
        assert_eq!(a.series, b.series, "{what}: evidence");
        assert!(published > 50, "{what}: only {published} cells");
    };
    same(&ch, "first sync");
    // Roll-ups as of a day after the data: every day read from them.
    let last_ms = stored
        .iter()
        .map(|v| v.report.started_at.timestamp_millis())
        .max()
        .unwrap();
    let after = last_ms + 2 * 86_400_000;
    sled.roll_up(policy.min_agents, after.div_euclid(86_400_000))
        .unwrap();
    ch.sync_mirror(after).unwrap();
    same(&ch, "rolled up");
    // Late uploads into closed, rolled-up days.
    for b in late.chunks(100) {
        ch.insert_batch(b).unwrap();
        sled.insert_batch(b).unwrap();
    }
    let stats = ch.sync_mirror(after).unwrap().unwrap();
    // Only later arrivals changed: each day's new rows added to what it held.
    assert!(stats.appended > 0 && stats.days == 0, "{stats:?}");
    sled.roll_up(policy.min_agents, after.div_euclid(86_400_000))
        .unwrap();
    same(&ch, "late uploads");
    // A second copy of the first report, arriving later with other figures (as another
    // collector would store it): ClickHouse keeps the first copy, and the mirror counts that.
    let names: Vec<String> = COLUMNS
        .iter()
        .map(|(n, _)| n.to_string())
        .chain(ADDED_COLUMNS.iter().map(|(n, _, _)| n.to_string()))
        .collect();
    let copied: Vec<String> = names
        .iter()
        .map(|n| match n.as_str() {
            "arrival" => "arrival + 1000000000".to_string(),
            "ver" => "ver - 1000000000".to_string(),
            "rtt" => "arrayMap(x -> 9999.0, rtt)".to_string(),
            _ => n.clone(),
        })
        .collect();
    let first = &stored[0];
    sql(
        &url,
        &format!(
            "INSERT INTO {db}.reports ({}) SELECT {} FROM {db}.reports WHERE agent = '{}' \
             AND id = '{}'",
            names.join(", "),
            copied.join(", "),
            hex::encode(first.key.agent),
            hex::encode(first.key.id.0),
        ),
    );
    let stats = ch.sync_mirror(after).unwrap().unwrap();
    // One more row, but no new report: the day is read whole again, not appended to.
    assert_eq!(
        (stats.days, stats.appended),
        (1, 0),
        "the copy's day is read again: {stats:?}"
    );
    same(&ch, "a later copy");
    // Each report counted once, the later copy too.
    assert_eq!(ch.len(), stored.len());
    // A restart: the note says every day is mirrored, and how many reports.
    drop(ch);
    let ch = open_mirrored();
    let stats = ch.sync_mirror(after).unwrap().unwrap();
    assert_eq!((stats.days, stats.observations), (0, 0), "{stats:?}");
    same(&ch, "after a restart");
    assert_eq!(ch.len(), stored.len());
    // Other caps: answered in SQL (exact order statistics), counts as sled's under those caps.
    let other = Policy {
        max_per_agent_per_day: 2,
        ..policy
    };
    let sled2 = SledStore::open_with_policy(&root.path().join("sled2"), &other).unwrap();
    for b in stored.chunks(100) {
        sled2.insert_batch(b).unwrap();
    }
    let axes = [Axis::Country, Axis::Platform];
    let x = sled2.aggregate(&axes, &Filter::default(), &other).unwrap();
    let y = ch.aggregate(&axes, &Filter::default(), &other).unwrap();
    let counts = |c: &[callwatch_collector::domain::Cell]| {
        c.iter().map(|c| (c.count, c.agents)).collect::<Vec<_>>()
    };
    assert_eq!(counts(&x), counts(&y));
    ch.drop_database().unwrap();
}

/// When a collector's queries read its mirror: never before a sync has completed (SQL answers
/// meanwhile), then as of its last sync until the next (a minute in a collector) or until it is
/// older than the refresh; after a restart the first query syncs when no sync runs.
#[test]
fn a_mirror_answers_once_built_and_as_of_its_last_sync() {
    use callwatch_collector::domain::{Axis, Filter, Policy};
    let Some(url) = clickhouse_url() else { return };
    let db = fresh_db("mirrorage");
    let root = tempfile::tempdir().unwrap();
    let stored = stored_seed(&seed::seed());
    let policy = Policy {
        min_agents: 1,
        ..Policy::default()
    };
    let dir = root.path().join("mirror");
    let open_mirrored = || {
        ClickHouseStore::open(&url, &db, &credentials())
            .unwrap()
            .with_mirror(&dir, &policy, Duration::from_secs(3600))
            .unwrap()
    };
    let total = |ch: &ClickHouseStore| -> u64 {
        ch.aggregate(&[Axis::Country], &Filter::default(), &policy)
            .unwrap()
            .iter()
            .map(|c| c.count)
            .sum()
    };
    let (first, second) = stored.split_at(stored.len() / 2);
    let ch = open_mirrored();
    ch.insert_batch(first).unwrap();
    // Never synced: SQL, which sees the rows (and counts them).
    let half = total(&ch);
    assert!(half > 0);
    assert_eq!(ch.len(), first.len());
    ch.sync_mirror(chrono::Utc::now().timestamp_millis())
        .unwrap();
    assert_eq!(total(&ch), half);
    ch.insert_batch(&second[..10]).unwrap();
    // Synced a moment ago: the mirror as of then, its count too.
    assert_eq!(total(&ch), half);
    assert_eq!(ch.len(), first.len());
    ch.sync_mirror(chrono::Utc::now().timestamp_millis())
        .unwrap();
    let more = total(&ch);
    assert!(more > half, "{more} {half}");
    assert_eq!(ch.len(), first.len() + 10);
    // Stopped; reports arrive meanwhile (at other collectors); started again: the first query
    // finds no sync of this process and none running, and syncs (only the changed days).
    drop(ch);
    open(&url, &db).insert_batch(&second[10..]).unwrap();
    let ch = open_mirrored();
    let all = total(&ch);
    assert!(all > more, "{all} {more}");
    let again = ch
        .sync_mirror(chrono::Utc::now().timestamp_millis())
        .unwrap()
        .unwrap();
    assert_eq!(again.days, 0, "the query synced: {again:?}");
    assert_eq!(ch.len(), stored.len());
    // Which SQL agrees with (a store without a mirror).
    assert_eq!(total(&open(&url, &db)), all);
    ch.drop_database().unwrap();
}

/// A bulk load without the pre-insert check (`insert_new`, the load tool's fill) stores a
/// report given twice twice, and it still counts once: the same count and aggregates as a
/// store that was given each report once.
#[test]
fn a_bulk_load_without_the_duplicate_check_still_counts_each_report_once() {
    use callwatch_collector::domain::{Axis, Filter, Policy};
    let Some(url) = clickhouse_url() else { return };
    let (db, db2) = (fresh_db("bulk"), fresh_db("bulk2"));
    let data = stored_seed(&seed::seed());
    let (ch, once) = (open(&url, &db), open(&url, &db2));
    ch.insert_new(&data[..100]).unwrap();
    ch.insert_new(&data[50..]).unwrap();
    once.insert_batch(&data).unwrap();
    let rows = sql(&url, &format!("SELECT count() FROM {db}.reports"));
    assert_eq!(rows.trim(), (data.len() + 50).to_string(), "stored twice");
    assert_eq!(ch.len(), data.len());
    let policy = Policy::default();
    for axes in [
        vec![Axis::Country, Axis::Platform],
        vec![Axis::Day, Axis::Arm],
    ] {
        let x = ch.aggregate(&axes, &Filter::default(), &policy).unwrap();
        let y = once.aggregate(&axes, &Filter::default(), &policy).unwrap();
        assert!(!x.is_empty());
        assert_eq!(x, y, "{axes:?}");
    }
    ch.drop_database().unwrap();
    once.drop_database().unwrap();
}
