//! The report schema evolves additively: a collector accepts every schema it knows, and a report
//! in a newer schema is deferred — not stored, and kept by the agent for a collector that knows
//! it — never rejected and deleted. Real collector (QUIC on loopback, sled), real agent queue.

use callwatch_agent::queue::Queue;
use callwatch_agent::upload::{upload_queue, UploadTarget};
use callwatch_collector::serve;
use callwatch_proto::report::SCHEMA_VERSION;
use callwatch_proto::SignedReport;
use callwatch_tests::{http, seed};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_kept_by_the_agent_and_never_stored() {
    let root = tempfile::tempdir().unwrap();
    let c = serve(seed::config(root.path(), "c")).await.unwrap();
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&c.pin, &mut pin).unwrap();
    let target = UploadTarget {
        collector: c.quic_addr,
        tcp: None,
        server_name: "localhost".into(),
        pin,
        bind: None,
        batch: 4,
        connect_timeout: Duration::from_secs(5),
        fetch_seal_key: false,
        tcp_first: false,
        fetch_endpoints: false,
    };
    let data = seed::seed();
    let queue = Queue::open(&root.path().join("queue")).unwrap();
    // Ten reports of today's schema around two of the next one: one that this release could
    // parse (only the number is new), one whose fields it could not (a figure became a string).
    let newer = |(_, key, _, report): &seed::Seeded, odd: bool| {
        let mut r = report.clone();
        r.schema = SCHEMA_VERSION + 1;
        let signed = SignedReport::sign(&r, key).unwrap();
        if !odd {
            return signed;
        }
        let mut body: serde_json::Value = serde_json::from_slice(&signed.body).unwrap();
        body["interval_ms"] = serde_json::json!("twenty");
        SignedReport::sign_body(serde_json::to_vec(&body).unwrap(), key)
    };
    let mut kept = Vec::new();
    for (i, s) in data[..10].iter().enumerate() {
        queue.push(&s.2).unwrap();
        if i == 1 || i == 6 {
            let signed = newer(&data[20 + i], i == 6);
            queue.push(&signed).unwrap();
            kept.push(signed);
        }
    }
    let summary = upload_queue(&queue, &target).await.unwrap();
    assert_eq!(
        (summary.accepted, summary.rejected, summary.deferred),
        (10, 0, 2),
        "{summary:?}"
    );
    assert_eq!(queue.len(), 2, "the agent keeps both newer reports");
    let left: Vec<SignedReport> = queue
        .oldest(10)
        .unwrap()
        .into_iter()
        .map(|(_, q)| q.report)
        .collect();
    assert_eq!(left, kept, "exactly the newer ones, unchanged");
    assert_eq!(c.store.len(), 10, "nothing of a newer schema is stored");

    // Another pass offers them again and keeps them again: nothing is lost, the pass ends.
    let again = upload_queue(&queue, &target).await.unwrap();
    assert_eq!((again.accepted, again.deferred), (0, 2), "{again:?}");
    assert_eq!(queue.len(), 2);

    let (status, metrics) = http::get(c.http_addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("callwatch_ingest_rejected_total{reason=\"newer_schema\"} 4")),
        "four deferrals counted by reason:\n{metrics}"
    );
    c.shutdown().await;
}

/// A volunteer whose clock runs ahead loses nothing: a report that starts more than ten minutes
/// ahead of the collector's clock is deferred with the skew in words, kept by the agent, and
/// accepted by a later pass once the collector's clock has passed its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_from_a_clock_ahead_is_kept_and_accepted_once_time_catches_up() {
    let root = tempfile::tempdir().unwrap();
    let c = serve(seed::config(root.path(), "c")).await.unwrap();
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&c.pin, &mut pin).unwrap();
    let target = UploadTarget {
        batch: 4,
        ..UploadTarget::new(c.quic_addr, pin)
    };
    let data = seed::seed();
    let queue = Queue::open(&root.path().join("queue")).unwrap();
    let (_, key, _, report) = &data[0];
    let mut ahead = report.clone();
    // Two seconds past what the collector allows: deferred now, acceptable two seconds on.
    ahead.started_at = chrono::Utc::now() + chrono::Duration::seconds(10 * 60 + 2);
    let signed = SignedReport::sign(&ahead, key).unwrap();
    queue.push(&signed).unwrap();
    let first = upload_queue(&queue, &target).await.unwrap();
    assert_eq!((first.accepted, first.deferred), (0, 1), "{first:?}");
    assert_eq!(queue.len(), 1, "kept");
    assert_eq!(c.store.len(), 0);
    // The collector's clock passes the limit within seconds: a pass then stores it (bounded:
    // each pass is a real upload, at most 40 of them half a second apart).
    let mut accepted = None;
    for pass in 0..40 {
        let s = upload_queue(&queue, &target).await.unwrap();
        if s.accepted == 1 {
            accepted = Some(pass);
            break;
        }
        assert_eq!(s.deferred, 1, "{s:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        accepted.is_some(),
        "accepted once the clocks passed its start"
    );
    assert_eq!(queue.len(), 0);
    assert_eq!(c.store.len(), 1);
    c.shutdown().await;
}
