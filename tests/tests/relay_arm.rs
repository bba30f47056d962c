//! The relay-path arm against a real STUN/TURN server: Debian's coturn, on loopback, started by
//! the test and stopped when it ends.

use callwatch_agent::engine::call::RELAY_REQUESTS;
use callwatch_agent::engine::driver::Cancel;
use callwatch_agent::engine::{run_call_test, TestSpec};
use callwatch_proto::report::{StreamOutcome, VerdictRule};
use callwatch_proto::{Platform, Role, Verdict};
use callwatch_reflector::{spawn_reflector, Limits};
use callwatch_tests::{platform_spec_on, spawn_two_port_reflector};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Coturn(Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts coturn and returns once it answers a Binding request.
fn start_coturn(dir: &std::path::Path) -> (Coturn, SocketAddr) {
    let port = free_udp_port();
    let child = Command::new("turnserver")
        .args([
            "-n",
            "--listening-ip=127.0.0.1",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
        ])
        .args(["--no-auth", "--log-file=stdout", "--simple-log"])
        .arg(format!("--listening-port={port}"))
        .arg(format!(
            "--pidfile={}",
            dir.join("turnserver.pid").display()
        ))
        .arg(format!("--db={}", dir.join("turndb").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("coturn is not installed: apt-get install coturn (.ci/run does this)");
    let guard = Coturn(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut request = vec![0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    request.extend_from_slice(&[7; 12]);
    // Bounded: 50 tries × 200 ms.
    for _ in 0..50 {
        probe.send_to(&request, addr).unwrap();
        let mut buf = [0u8; 1024];
        if let Ok((n, _)) = probe.recv_from(&mut buf) {
            if n >= 20 && buf[..2] == [1, 1] {
                return (guard, addr);
            }
        }
    }
    panic!("coturn did not answer on {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_arm_measures_a_real_coturn_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let (_coturn, stun) = start_coturn(dir.path());
    let reflector = spawn_reflector(&["127.0.0.1:0".parse().unwrap()], Limits::default())
        .await
        .unwrap();
    let mut spec = TestSpec::voice(reflector.addrs[0], 2_000);
    spec.relay_server = Some(stun);
    let report = tokio::task::spawn_blocking(move || {
        run_call_test(&spec, &Cancel::default(), |_| {}).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(report.streams.len(), 3);
    let find = |role| report.streams.iter().find(|s| s.role == role).unwrap();
    let relay = find(Role::Relay);
    // A few requests per test, never a voice-rate stream to a third party's server.
    assert_eq!(relay.packets_sent, RELAY_REQUESTS);
    assert_eq!(
        relay.packets_received, RELAY_REQUESTS,
        "clean loopback loses nothing"
    );
    assert_eq!(relay.loss, Some(0.0));
    assert_eq!(
        (relay.packets_reflected, relay.loss_up, relay.loss_down),
        (None, None, None),
        "a STUN server keeps no count, so the split is unknown"
    );
    let rtt = relay.rtt_ms.unwrap();
    assert!(rtt.min > 0.0 && rtt.median < 5.0, "{rtt:?}");
    assert!(
        relay.jitter_ms.is_none() && relay.owd_ms.is_none(),
        "no invented one-way figures"
    );
    // The reflector host answers the same requests: the neutral reference.
    let reference = find(Role::RelayReference);
    assert_eq!(reference.packets_received, RELAY_REQUESTS);
    report.validate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_relay_with_a_reachable_reference_is_differentiated() {
    let reflector = spawn_two_port_reflector().await;
    // A bound socket that never answers stands in for a relay the network blackholes.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut spec = platform_spec_on(&reflector.addrs, Platform::Whatsapp, 2_000);
    spec.relay_server = Some(silent.local_addr().unwrap());
    let report = tokio::task::spawn_blocking(move || {
        run_call_test(&spec, &Cancel::default(), |_| {}).unwrap()
    })
    .await
    .unwrap();
    report.validate().unwrap();
    let find = |role| report.streams.iter().find(|s| s.role == role).unwrap();
    let relay = find(Role::Relay);
    assert_eq!(relay.packets_received, 0);
    assert_eq!(relay.outcome, StreamOutcome::Blocked);
    assert_eq!(relay.loss, Some(1.0));
    assert!(relay.mos.is_none());
    assert_eq!(find(Role::RelayReference).packets_received, RELAY_REQUESTS);
    assert_eq!(find(Role::Platform).packets_received, 100);
    assert_eq!(report.verdict, Some(Verdict::Differentiated));
    let detail = report.verdict_detail.unwrap();
    assert_eq!(detail.rule, Some(VerdictRule::PlatformServersUnreachable));
    let relay = detail.relay.unwrap();
    assert_eq!(
        (relay.relay_answered, relay.reference_answered),
        (0, RELAY_REQUESTS)
    );
    assert!(relay.p_value < 1e-4, "{relay:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_coturn_can_be_the_relays_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (_coturn, stun) = start_coturn(dir.path());
    let reflector = spawn_two_port_reflector().await;
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut spec = platform_spec_on(&reflector.addrs, Platform::Whatsapp, 2_000);
    spec.relay_server = Some(silent.local_addr().unwrap());
    spec.relay_reference = Some(stun);
    let report = tokio::task::spawn_blocking(move || {
        run_call_test(&spec, &Cancel::default(), |_| {}).unwrap()
    })
    .await
    .unwrap();
    let reference = report
        .streams
        .iter()
        .find(|s| s.role == Role::RelayReference)
        .unwrap();
    assert_eq!(
        reference.packets_received, RELAY_REQUESTS,
        "coturn answered"
    );
    // coturn, not the reflector host (the default reference), answered them.
    assert_eq!(reflector.stats().stun_bindings, 0);
    assert_eq!(
        report.verdict_detail.unwrap().rule,
        Some(VerdictRule::PlatformServersUnreachable)
    );
}
