//! The reflector's clock is the measurement: a collector process stopped for 200 ms in the middle
//! of a call test (SIGSTOP, then SIGCONT) is measured as the reflector's own residence time and
//! marks the test as taken under reflector load; it is never published as network delay or loss.

use callwatch_agent::engine::driver::Cancel;
use callwatch_agent::engine::{run_call_test, TestSpec};
use callwatch_proto::report::VerdictRule;
use callwatch_proto::{CallReport, Platform, Role, StreamReport, Verdict};
use callwatch_tests::process::start_collector;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

fn stream(r: &CallReport, role: Role) -> &StreamReport {
    r.streams.iter().find(|s| s.role == role).unwrap()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

#[test]
fn a_stalled_reflector_is_marked_and_its_stall_is_not_network_delay() {
    let dir = tempfile::tempdir().unwrap();
    let (logs, data) = (dir.path().join("logs"), dir.path().join("data"));
    std::fs::create_dir_all(&logs).unwrap();
    let mut collector = start_collector(&logs, &data, &["--reflector", "127.0.0.1:0"]);
    let printed = std::fs::read_to_string(&collector.stdout).unwrap();
    let ports: Vec<SocketAddr> = printed
        .lines()
        .filter_map(|l| l.strip_prefix("reflector on udp "))
        .map(|a| a.trim().parse().unwrap())
        .collect();
    assert_eq!(ports.len(), 2, "{printed}");
    let key = std::fs::read_to_string(data.join("reflector.pub")).unwrap();
    let mut spec = TestSpec::voice(ports[0], 8_000);
    spec.platform = Platform::Whatsapp;
    spec.size = None;
    spec.platform_port = Some(ports[0].port());
    spec.control_port = Some(ports[1].port());
    spec.reflector_key = Some(key.trim().parse().unwrap());

    // At idle: not marked, and the reflector holds a probe for well under a millisecond.
    let idle = run_call_test(&spec, &Cancel::default(), |_| {}).unwrap();
    assert!(!idle.reflector_loaded, "{:?}", idle.verdict_detail);
    assert_eq!(
        idle.verdict,
        Some(Verdict::None),
        "{:?}",
        idle.verdict_detail
    );
    let residence = stream(&idle, Role::Platform)
        .reflector_residence_ms
        .unwrap();
    // Well under a millisecond idle; the bound is a quarter of the 20 ms residence that marks
    // a reflector loaded, far from what a loaded machine's scheduling adds to a median, and
    // far below what a wrong clock or unit would give.
    assert!(residence.median < 5.0, "idle residence {residence:?}");

    // Stopped for 200 ms three seconds in (from a thread of its own: the progress callback runs
    // on the agent's sender thread, which must keep its rhythm).
    let pid = collector.child.id();
    let mut stall = None;
    let stalled = run_call_test(&spec, &Cancel::default(), |progress| {
        if stall.is_none() && progress.first().is_some_and(|p| p.sent >= 150) {
            stall = Some(std::thread::spawn(move || {
                signal(pid, "STOP");
                std::thread::sleep(Duration::from_millis(200));
                signal(pid, "CONT");
            }));
        }
    })
    .unwrap();
    stall.expect("the test ran 3 s").join().unwrap();
    collector.kill();

    assert!(stalled.reflector_loaded);
    assert_eq!(stalled.verdict, Some(Verdict::Inconclusive));
    let detail = stalled.verdict_detail.as_ref().unwrap();
    assert_eq!(
        detail.rule,
        Some(VerdictRule::ReflectorLoaded),
        "{}",
        detail.reason
    );
    for role in [Role::Platform, Role::Control] {
        let s = stream(&stalled, role);
        // The stall is the reflector's residence time ...
        let held = s.reflector_residence_ms.unwrap();
        assert!(held.max >= 150.0, "{role:?}: residence {held:?}");
        // ... and neither delay nor loss: the probes waited in the reflector's socket buffer.
        let rtt = s.rtt_ms.unwrap();
        // Half the 200 ms stall: an RTT that carried it would be above, scheduling noise on a
        // loopback round trip stays far below.
        assert!(rtt.max < 100.0, "{role:?}: rtt {rtt:?} carries the stall");
        assert_eq!(s.loss, Some(0.0), "{role:?}");
    }
}

/// A report taken under reflector load is stored and counted in /metrics (that its figures stay
/// out of the aggregates is `domain::tests::a_test_taken_under_reflector_load_...`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_test_is_stored_and_counted_in_metrics() {
    use callwatch_agent::upload::{exchange, pinned_client_config};
    use callwatch_proto::upload::{ReportStatus, Response};
    use callwatch_proto::SignedReport;
    let dir = tempfile::tempdir().unwrap();
    let c = callwatch_tests::seed::collector(dir.path()).await;
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&c.pin, &mut pin).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(pinned_client_config(pin).unwrap());
    let conn = ep.connect(c.quic_addr, "localhost").unwrap().await.unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let mut report = CallReport::example();
    report.started_at = chrono::Utc::now();
    report.reflector_loaded = true;
    let signed = SignedReport::sign(&report, &key).unwrap();
    let Response::Ack { statuses } = exchange(&conn, vec![signed]).await.unwrap() else {
        panic!("refused")
    };
    assert_eq!(statuses, vec![ReportStatus::Accepted]);
    let (_, metrics) = callwatch_tests::http::get(c.http_addr, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("callwatch_reports_reflector_loaded_total 1"),
        "{metrics}"
    );
    let stored = c.store.len();
    assert_eq!(stored, 1);
    c.shutdown().await;
}
