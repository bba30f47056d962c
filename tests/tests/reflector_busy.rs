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
