//! Raw export for researchers: the HTTP API's NDJSON pages, the `export` command on a stopped
//! store, and offline verification of every signature.

use callwatch_agent::engine::driver::Cancel;
use callwatch_agent::engine::{run_call_test, TestSpec};
use callwatch_agent::queue::Queue;
use callwatch_agent::upload::{upload_queue, UploadTarget};
use callwatch_collector::export::{verify_export, ExportRecord};
use callwatch_collector::{serve, ServeConfig};
use callwatch_proto::{ReportId, SignedReport};
use callwatch_tests::http;
use ed25519_dalek::SigningKey;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_export_pages_verify_offline_and_hold_no_address() {
    let root = tempfile::tempdir().unwrap();
    let geo = root.path().join("regions.tsv");
    std::fs::write(&geo, "127.88.1.0\t127.88.1.255\t8359\tRU\tMTS\n").unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut cfg = ServeConfig::new(root.path().join("collector"));
    (cfg.listen, cfg.http, cfg.reflectors, cfg.geo) = (any, any, vec![any], Some(geo));
    cfg.policy.min_agents = 1;
    let collector = serve(cfg).await.unwrap();

    let mut spec = TestSpec::voice(collector.reflector.addrs[0], 400);
    spec.grace_ms = 200;
    let base =
        tokio::task::spawn_blocking(move || run_call_test(&spec, &Cancel::default(), |_| {}))
            .await
            .unwrap()
            .unwrap();
    let queue = Queue::open(&root.path().join("queue")).unwrap();
    let key = SigningKey::from_bytes(&[9; 32]);
    for i in 0..25u8 {
        let mut r = base.clone();
        r.id = ReportId([i; 16]);
        queue.push(&SignedReport::sign(&r, &key).unwrap()).unwrap();
    }
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&collector.pin, &mut pin).unwrap();
    let target = UploadTarget {
        collector: collector.quic_addr,
        tcp: None,
        server_name: "localhost".into(),
        pin,
        bind: Some("127.88.1.7".parse().unwrap()),
        batch: 4, // several batches, so several arrival milliseconds
        connect_timeout: Duration::from_secs(5),
        fetch_seal_key: false,
        tcp_first: false,
        fetch_endpoints: false,
    };
    assert_eq!(upload_queue(&queue, &target).await.unwrap().accepted, 25);
    // The full export needs a researcher token.
    let token = callwatch_collector::token::add(&root.path().join("collector"), "export").unwrap();

    // Page through with a small limit: every report exactly once.
    let mut since = String::from("0");
    let mut seen = std::collections::BTreeSet::new();
    let mut all_lines = String::new();
    for _page in 0..30 {
        let (status, body) = http::get_bearer(
            collector.http_addr,
            &format!("/api/v1/reports?full=true&since={since}&limit=3"),
            &token,
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
        if body.is_empty() {
            break;
        }
        let records: Vec<ExportRecord> = body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for r in &records {
            let report: callwatch_proto::CallReport = serde_json::from_str(&r.body).unwrap();
            assert!(
                seen.insert(report.id),
                "report {} repeated across pages",
                report.id
            );
            assert_eq!((r.country.as_str(), r.asn), ("RU", 8359));
        }
        let last = chrono::DateTime::parse_from_rfc3339(&records.last().unwrap().received_at)
            .unwrap()
            .timestamp_millis();
        since = (last + 1).to_string();
        all_lines.push_str(&body);
    }
    assert_eq!(seen.len(), 25);
    assert!(
        !all_lines.contains("127.88.1.7"),
        "an address leaked into the export"
    );
    let (status, body) = http::get(collector.http_addr, "/api/v1/reports?limit=none")
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("limit"));

    // Offline: all verify; a tampered line is named.
    let summary = verify_export(all_lines.as_bytes()).unwrap();
    assert_eq!((summary.valid, summary.invalid.len()), (25, 0));
    let tampered = all_lines.replacen(
        "\\\"platform\\\":\\\"generic\\\"",
        "\\\"platform\\\":\\\"signal\\\"",
        1,
    );
    assert_ne!(tampered, all_lines);
    let summary = verify_export(tampered.as_bytes()).unwrap();
    assert_eq!(summary.valid, 24);
    assert_eq!(summary.invalid[0].0, 1);

    // The command line, on the stopped store.
    collector.shutdown().await;
    let out = Command::new(callwatch_tests::built_binary("callwatch-collector"))
        .args(["export", "--data"])
        .arg(root.path().join("collector"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 25);
    let file = root.path().join("export.ndjson");
    std::fs::write(&file, &out.stdout).unwrap();
    let verify = Command::new(callwatch_tests::built_binary("callwatch-collector"))
        .arg("verify")
        .arg(&file)
        .output()
        .unwrap();
    assert!(verify.status.success());
    assert!(String::from_utf8_lossy(&verify.stdout).contains("25 valid, 0 invalid"));
    std::fs::write(&file, tampered).unwrap();
    let verify = Command::new(callwatch_tests::built_binary("callwatch-collector"))
        .arg("verify")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(1));
    let csv = Command::new(callwatch_tests::built_binary("callwatch-collector"))
        .args([
            "export",
            "--format",
            "csv",
            "--axis-x",
            "asn",
            "--min-agents",
            "1",
            "--data",
        ])
        .arg(root.path().join("collector"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&csv.stdout).contains("\n8359,24,1,"),
        "capped at 24 a day"
    );
    // With the default k = 3, a cell behind one agent is not published.
    let csv = Command::new(callwatch_tests::built_binary("callwatch-collector"))
        .args(["export", "--format", "csv", "--axis-x", "asn", "--data"])
        .arg(root.path().join("collector"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&csv.stdout).lines().count(),
        1,
        "header only"
    );
}
