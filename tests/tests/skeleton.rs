//! End-to-end tests of the walking skeleton over real sockets on loopback: agent → reflector,
//! agent → collector (QUIC), collector → HTTP aggregate.

use callwatch_agent::config::{Config, ConfigFile};
use callwatch_agent::engine::driver::Cancel;
use callwatch_agent::engine::{run_call_test, TestSpec};
use callwatch_agent::identity;
use callwatch_agent::queue::Queue;
use callwatch_agent::runner::run_cycle;
use callwatch_agent::upload::{upload_queue, UploadError, UploadTarget};
use callwatch_collector::domain::StoredReport;
use callwatch_collector::domain::{Axis, Cell, Filter, Policy};
use callwatch_collector::store::{InsertOutcome, ReportStore, SledStore, StoreError};
use callwatch_collector::{serve, serve_with_store, ServeConfig};
use callwatch_proto::probe::{Open, Packet, Probe, ACCEPT_LEN};
use callwatch_proto::{CallReport, ReportId, SignedReport};
use callwatch_reflector::{spawn_reflector, Limits};
use callwatch_tests::http;
use ed25519_dalek::SigningKey;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A distinctive address, so that finding its bytes anywhere means it leaked.
const AGENT_IP: [u8; 4] = [127, 77, 33, 99];

fn agent_ip() -> IpAddr {
    IpAddr::from(AGENT_IP)
}

fn collector_config(root: &Path) -> ServeConfig {
    let geo = root.join("regions.tsv");
    std::fs::write(
        &geo,
        "127.77.33.0\t127.77.33.255\t12389\tRU\tROSTELECOM-AS\n",
    )
    .unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut sc = ServeConfig::new(root.join("collector"));
    sc.listen = any;
    sc.reflectors = vec![any];
    sc.http = any;
    sc.geo = Some(geo);
    // One agent per cell here: publish every cell, and count every report (these tests are
    // about each report counting exactly once, not about the per-agent cap).
    sc.policy.min_agents = 1;
    sc.policy.max_per_agent_per_day = usize::MAX;
    sc.policy.max_per_prefix_per_day = usize::MAX;
    sc
}

fn agent_config(root: &Path, c: &callwatch_collector::Collector) -> Config {
    let mut ac = Config::from_file(ConfigFile::new(
        c.quic_addr.to_string(),
        c.pin.clone(),
        Some(c.reflector.addrs[0].to_string()),
    ))
    .unwrap();
    ac.test.bind = Some(agent_ip());
    ac.test.duration_secs = 1;
    ac.key_file = root.join("agent.key");
    ac.queue_dir = root.join("queue");
    ac
}

fn target(c: &callwatch_collector::Collector, batch: usize) -> UploadTarget {
    UploadTarget {
        collector: c.quic_addr,
        tcp: None,
        server_name: "localhost".into(),
        pin: {
            let mut p = [0u8; 32];
            hex::decode_to_slice(&c.pin, &mut p).unwrap();
            p
        },
        bind: Some(agent_ip()),
        batch,
        connect_timeout: Duration::from_secs(5),
        fetch_seal_key: false,
        tcp_first: false,
        fetch_endpoints: false,
    }
}

/// True if `needle` occurs in any file below `dir`.
fn tree_contains(dir: &Path, needle: &[u8]) -> Option<String> {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if let Some(hit) = tree_contains(&path, needle) {
                return Some(hit);
            }
        } else {
            let bytes = std::fs::read(&path).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                return Some(path.display().to_string());
            }
        }
    }
    None
}

/// One real call test's report, to sign variants of.
fn real_report(reflector: SocketAddr) -> CallReport {
    let mut spec = TestSpec::voice(reflector, 400);
    spec.grace_ms = 200;
    run_call_test(&spec, &Cancel::default(), |_| {}).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_test_uploads_and_aggregates_by_region_without_storing_the_address() {
    let root = tempfile::tempdir().unwrap();
    let collector = serve(collector_config(root.path())).await.unwrap();
    let ac = agent_config(root.path(), &collector);
    let key = identity::create_key(&ac.key_file, false).unwrap();
    let queue = Queue::open(&ac.queue_dir).unwrap();

    let outcome = run_cycle(&ac, &key, &queue).await.unwrap();
    assert!(outcome.test_errors.is_empty(), "{:?}", outcome.test_errors);
    let summary = outcome.upload.unwrap().unwrap();
    assert_eq!(summary.accepted, 1);
    assert_eq!(queue.len(), 0, "acknowledged report left the queue");
    let report = &outcome.reports[0];
    let s = &report.streams[0];
    assert_eq!(s.packets_sent, 50);
    assert_eq!(s.packets_received, 50, "clean loopback loses nothing");
    assert_eq!(s.packets_reflected, Some(50));
    assert!(s.mos.unwrap() > 4.0);
    // What left the machine starts on the hour; the local record keeps the exact start.
    let mut stored = Vec::new();
    collector
        .store
        .for_each(&mut |r| {
            stored.push(r.signed.verify().unwrap());
            Ok(())
        })
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].started_at,
        callwatch_proto::report::coarse_start(report.started_at)
    );
    assert_eq!(stored[0].started_at.timestamp() % 3600, 0);
    assert_eq!(stored[0].started_at.timestamp_subsec_nanos(), 0);

    let (status, body) = http::get(
        collector.http_addr,
        "/api/v1/aggregation?axis_x=country&axis_y=platform",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cells = v["result"].as_array().unwrap();
    assert_eq!(cells.len(), 1, "{v}");
    assert_eq!(cells[0]["country"], "RU");
    assert_eq!(cells[0]["platform"], "generic");
    assert_eq!(cells[0]["count"], 1);
    assert_eq!(cells[0]["agents"], 1);
    let (_, csv) = http::get(
        collector.http_addr,
        "/api/v1/aggregation?axis_x=asn&format=csv",
    )
    .await
    .unwrap();
    assert!(
        csv.lines().nth(1).unwrap().starts_with("12389,1,1,"),
        "{csv}"
    );
    let (status, body) = http::get(collector.http_addr, "/api/v1/aggregation?axis_x=town")
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("axis_x"), "{body}");

    collector.shutdown().await;
    let data = root.path().join("collector");
    let text = agent_ip().to_string();
    assert_eq!(
        tree_contains(&data, text.as_bytes()),
        None,
        "address as text"
    );
    assert_eq!(tree_contains(&data, &AGENT_IP), None, "address as bytes");
    assert!(!body.contains(&text) && !csv.contains(&text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_resent_reports_are_rejected_or_counted_once() {
    let root = tempfile::tempdir().unwrap();
    let collector = serve(collector_config(root.path())).await.unwrap();
    let report = real_report(collector.reflector.addrs[0]);
    let key_a = SigningKey::from_bytes(&[1; 32]);
    let key_b = SigningKey::from_bytes(&[2; 32]);
    let good = SignedReport::sign(&report, &key_a).unwrap();
    let mut broken = good.clone();
    broken.signature[10] ^= 1;
    let mut claims_b = good.clone();
    claims_b.key = key_b.verifying_key().to_bytes().to_vec();

    let queue = Queue::open(&root.path().join("queue")).unwrap();
    for r in [&good, &broken, &good, &claims_b] {
        queue.push(r).unwrap();
    }
    let summary = upload_queue(&queue, &target(&collector, 10)).await.unwrap();
    assert_eq!(
        (summary.accepted, summary.duplicate, summary.rejected),
        (1, 1, 2)
    );
    assert_eq!(queue.len(), 0);
    // Re-sent in a later connection: still a duplicate.
    queue.push(&good).unwrap();
    let summary = upload_queue(&queue, &target(&collector, 10)).await.unwrap();
    assert_eq!(summary.duplicate, 1);
    assert_eq!(
        collector.ingest.stats.rejected().get("bad_signature"),
        Some(&2)
    );
    assert_eq!(collector.store.len(), 1);

    let (_, body) = http::get(collector.http_addr, "/api/v1/aggregation?axis_x=platform")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"][0]["count"], 1, "{v}");
    // The operator sees the same in /metrics.
    let (status, metrics) = http::get(collector.http_addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for line in [
        "callwatch_ingest_reports_total{outcome=\"accepted\"} 1",
        "callwatch_ingest_reports_total{outcome=\"duplicate\"} 2",
        "callwatch_ingest_rejected_total{reason=\"bad_signature\"} 2",
        "callwatch_stored_reports 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    collector.shutdown().await;
}

/// A sled store that reports each batch and holds the `block_at`-th one until released.
struct GatedStore {
    inner: SledStore,
    block_at: usize,
    calls: AtomicUsize,
    /// (batch number, finished?) on entry and on completion of each batch.
    events: tokio::sync::mpsc::UnboundedSender<(usize, bool)>,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl ReportStore for GatedStore {
    fn insert_batch(
        &self,
        batch: &[callwatch_collector::domain::VerifiedReport],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.events.send((n, false));
        if n == self.block_at {
            let _ = self.release.lock().unwrap().recv();
        }
        let result = self.inner.insert_batch(batch);
        let _ = self.events.send((n, true));
        result
    }
    fn for_each(
        &self,
        f: &mut dyn FnMut(StoredReport) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.for_each(f)
    }
    fn for_each_since(
        &self,
        since_ms: i64,
        f: &mut dyn FnMut(StoredReport) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.for_each_since(since_ms, f)
    }
    fn aggregate(
        &self,
        axes: &[Axis],
        filter: &Filter,
        policy: &Policy,
    ) -> Result<Vec<Cell>, StoreError> {
        self.inner.aggregate(axes, filter, policy)
    }
    fn evidence(
        &self,
        from: i64,
        to: i64,
        policy: &callwatch_collector::domain::Policy,
        book: &mut callwatch_collector::domain::events::EvidenceBook,
    ) -> Result<(), StoreError> {
        self.inner.evidence(from, to, policy, book)
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_stopping_mid_upload_loses_nothing_acknowledged() {
    let root = tempfile::tempdir().unwrap();
    let cfg = collector_config(root.path());
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let store = Arc::new(GatedStore {
        inner: SledStore::open_with_policy(&cfg.data_dir.join("reports.sled"), &cfg.policy)
            .unwrap(),
        block_at: 4,
        calls: AtomicUsize::new(0),
        events: events_tx,
        release: Mutex::new(release_rx),
    });
    let collector = serve_with_store(cfg.clone(), store.clone()).await.unwrap();

    // 50 distinct signed reports, uploaded 5 per batch.
    let base = real_report(collector.reflector.addrs[0]);
    let key = SigningKey::from_bytes(&[3; 32]);
    let queue = Arc::new(Queue::open(&root.path().join("queue")).unwrap());
    let mut ids = Vec::new();
    for i in 0..50u8 {
        let mut r = base.clone();
        r.id = ReportId([i; 16]);
        ids.push(r.id);
        queue.push(&SignedReport::sign(&r, &key).unwrap()).unwrap();
    }
    let upload = {
        let (queue, target) = (queue.clone(), target(&collector, 5));
        tokio::spawn(async move { upload_queue(&queue, &target).await })
    };
    // Wait until the fourth batch is inside the store, then stop the collector under it.
    while events.recv().await != Some((4, false)) {}
    collector.shutdown().await;
    let result = upload.await.unwrap();
    assert!(
        matches!(result, Err(UploadError::Unreachable(_))),
        "{result:?}"
    );
    // Three batches acknowledged and removed; the rest, unacknowledged, still queued.
    assert_eq!(queue.len(), 35);
    assert_eq!(store.len(), 15, "every acknowledged report is stored");
    // The held batch now completes: stored, though its acknowledgement never left.
    release_tx.send(()).unwrap();
    while events.recv().await != Some((4, true)) {}
    assert_eq!(store.len(), 20);

    // The collector comes back; the agent uploads again.
    let collector = serve_with_store(cfg, store.clone()).await.unwrap();
    let summary = upload_queue(&queue, &target(&collector, 5)).await.unwrap();
    assert_eq!((summary.accepted, summary.duplicate), (30, 5));
    assert_eq!(queue.len(), 0);
    assert_eq!(store.len(), 50, "every report stored exactly once");
    let (_, body) = http::get(collector.http_addr, "/api/v1/aggregation?axis_x=platform")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"][0]["count"], 50);
    collector.shutdown().await;
}

#[tokio::test]
async fn reflector_ignores_probes_without_a_valid_cookie_and_never_amplifies() {
    let reflector = spawn_reflector(&["127.0.0.1:0".parse().unwrap()], Limits::default())
        .await
        .unwrap();
    let addr = reflector.addrs[0];
    let agent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    agent.connect(addr).await.unwrap();
    let other = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    other.connect(addr).await.unwrap();

    let probe = |cookie, seq, len| {
        Packet::Probe(Probe {
            session: 7,
            cookie,
            seq,
            sent_us: 1,
            len,
        })
        .encode()
    };
    // Garbage and cookie-less probes first.
    for seq in 0..20 {
        agent.send(&probe([seq as u8; 16], seq, 200)).await.unwrap();
    }
    agent.send(b"hello").await.unwrap();
    agent.send(&[0u8; 1400]).await.unwrap();
    // Then a proper open: the first thing to come back must be its (shorter) accept.
    let open = Packet::Open(Open {
        session: 7,
        interval_ms: 20,
        size: 200,
        duration_ms: 5_000,
    })
    .encode();
    agent.send(&open).await.unwrap();
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), agent.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, ACCEPT_LEN);
    let Packet::Accept(accept) = Packet::decode(&buf[..n]).unwrap() else {
        panic!("first answer is not the accept")
    };
    // The cookie is bound to the agent's address: another socket cannot use it.
    other.send(&probe(accept.cookie, 0, 100)).await.unwrap();
    // The agent can, and each reply is exactly as long as its probe.
    for (seq, len) in [(0u32, 100u16), (1, 48), (2, 200)] {
        agent.send(&probe(accept.cookie, seq, len)).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), agent.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, len as usize);
        assert!(matches!(Packet::decode(&buf[..n]).unwrap(), Packet::Reply(r) if r.seq == seq));
    }
    let stats = reflector.stats();
    assert_eq!(stats.probes_reflected, 3);
    assert_eq!(
        stats.dropped_bad_cookie, 21,
        "20 cookie-less + 1 from another address"
    );
    assert!(stats.bytes_out <= stats.bytes_in);
    assert_eq!(stats.bytes_out, (ACCEPT_LEN + 100 + 48 + 200) as u64);
}
