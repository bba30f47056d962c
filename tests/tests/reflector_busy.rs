//! #15 item 6: one source prefix cannot fill the reflector's session table, and an agent the
//! reflector turns away hears that it is busy — never that its path is blocked. Over real UDP
//! sockets on loopback: 127.0.0.0/24 is one prefix, 127.0.1.0/24 another.

use callwatch_agent::engine::driver::Cancel;
use callwatch_agent::engine::{run_call_test, TestError, TestSpec};
use callwatch_proto::probe::{Open, Packet, Probe};
use callwatch_reflector::{spawn_reflector, Limits};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

/// Opens a 20 s session from a fresh socket on `local` and sends its first probe: the session
/// then holds a place in the reflector's table. Returns the socket (the session lives on).
fn hold_session(reflector: SocketAddr, local: IpAddr, session: u64) -> UdpSocket {
    let sock = UdpSocket::bind((local, 0)).unwrap();
    sock.connect(reflector).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let open = Packet::Open(Open {
        session,
        interval_ms: 20,
        size: 172,
        duration_ms: 20_000,
    });
    sock.send(&open.encode()).unwrap();
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf).unwrap();
    let Packet::Accept(acc) = Packet::decode(&buf[..n]).unwrap() else {
        panic!("the reflector did not accept session {session}");
    };
    let probe = Packet::Probe(Probe {
        session,
        cookie: acc.cookie,
        seq: 0,
        sent_us: 1,
        len: 172,
    });
    sock.send(&probe.encode()).unwrap();
    let n = sock.recv(&mut buf).unwrap();
    assert!(matches!(Packet::decode(&buf[..n]), Ok(Packet::Reply(_))));
    sock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_at_its_cap_hears_busy_and_another_prefix_is_still_served() {
    let limits = Limits {
        max_sessions_per_prefix: 3,
        ..Limits::default()
    };
    let reflector = spawn_reflector(&["127.0.0.1:0".parse().unwrap()], limits)
        .await
        .unwrap();
    let target = reflector.addrs[0];
    // One prefix takes every place it may have (three addresses of 127.0.0.0/24).
    let held: Vec<UdpSocket> = (0..3u8)
        .map(|i| hold_session(target, IpAddr::from([127, 0, 0, 1 + i]), 100 + u64::from(i)))
        .collect();

    // An agent in that prefix: the test fails, saying the reflector is busy.
    let mut spec = TestSpec::voice(target, 1_000);
    spec.grace_ms = 200;
    spec.bind = Some(IpAddr::from([127, 0, 0, 9]));
    let s = spec.clone();
    let err = tokio::task::spawn_blocking(move || run_call_test(&s, &Cancel::default(), |_| {}))
        .await
        .unwrap()
        .expect_err("a prefix at its cap is refused");
    assert!(matches!(err, TestError::Session(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("reflector is busy"), "{text}");
    assert!(
        !text.contains("UDP") && !text.contains("blocked") && !text.contains("answer"),
        "a busy reflector must not read as a blocked path: {text}"
    );

    // An agent in another prefix is served while the first is at its cap.
    spec.bind = Some(IpAddr::from([127, 0, 1, 1]));
    let report =
        tokio::task::spawn_blocking(move || run_call_test(&spec, &Cancel::default(), |_| {}))
            .await
            .unwrap()
            .expect("another prefix gets a session");
    assert!(report.streams[0].packets_received > 0);
    let stats = reflector.stats();
    assert!(stats.dropped_prefix_full >= 1, "{stats:?}");
    assert_eq!(stats.dropped_table_full, 0);
    drop(held);
    reflector.shutdown();
}

/// An agent that reached this reflector before gets a report, not an error: inconclusive, rule
/// `reflector-busy`, and its summary says the reflector was busy — never that a path is blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_test_refused_as_busy_is_inconclusive_and_says_so() {
    use callwatch_proto::report::{StreamOutcome, VerdictRule};
    use callwatch_proto::{Platform, Verdict};
    let limits = Limits {
        max_sessions_per_prefix: 1,
        ..Limits::default()
    };
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let reflector = spawn_reflector(&[any, any], limits).await.unwrap();
    let held = hold_session(reflector.addrs[0], IpAddr::from([127, 0, 0, 2]), 7);
    let mut spec = callwatch_tests::platform_spec_on(&reflector.addrs, Platform::Whatsapp, 1_000);
    spec.bind = Some(IpAddr::from([127, 0, 0, 9]));
    spec.reached_before = true;
    let report =
        tokio::task::spawn_blocking(move || run_call_test(&spec, &Cancel::default(), |_| {}))
            .await
            .unwrap()
            .expect("a reflector reached before: a report");
    assert_eq!(report.verdict, Some(Verdict::Inconclusive));
    let detail = report.verdict_detail.as_ref().unwrap();
    assert_eq!(detail.rule, Some(VerdictRule::ReflectorBusy));
    assert!(detail.reason.contains("busy"), "{}", detail.reason);
    assert!(report
        .streams
        .iter()
        .any(|s| s.outcome == StreamOutcome::Refused));
    let text = callwatch_agent::report_text::summary(&report);
    assert!(text.contains("the reflector was busy"), "{text}");
    assert!(!text.contains("blocked"), "{text}");
    drop(held);
    reflector.shutdown();
}
