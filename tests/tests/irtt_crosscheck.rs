//! Cross-check with irtt, a reference isochronous round-trip tester (Debian package `irtt`).
//!
//! The same emulator settings stand in front of an irtt server and of the callwatch reflector:
//! two DPI-style rules that impair only each tool's *data* packets (loss and delay up, loss and
//! delay down), with the same seed. A rule draws from its own random stream per direction, so the
//! k-th data packet meets the same fate whichever tool sent it, and both tools must report the
//! same up and down loss counts and RTT medians within 5 ms (a sixth of the 30 ms added).

use callwatch_agent::engine::driver::Cancel;
use callwatch_agent::engine::{run_call_test, TestSpec};
use callwatch_reflector::{spawn_reflector, Limits};
use callwatch_tests::emulator::{
    ByteMatch, DelayConfig, DirectionFilter, DpiRule, Fate, GroundTruth, ImpairmentConfig,
    PacketRecord, Relay, RelayConfig, Route, RuleImpairment,
};
use std::net::SocketAddr;
use std::process::Stdio;

const SEED: u64 = 2025;

/// Rule 0 impairs data going up, rule 1 data coming down; `up`/`down` are each tool's first bytes.
fn rules(up: Vec<u8>, down: Vec<u8>) -> Vec<DpiRule> {
    rules_at(0, up, down)
}

/// [`rules`] with the bytes matched at `offset`.
fn rules_at(offset: usize, up: Vec<u8>, down: Vec<u8>) -> Vec<DpiRule> {
    let rule = |name: &str, dir, bytes, loss, delay_ms, jitter_ms| DpiRule {
        name: name.into(),
        direction: dir,
        patterns: vec![ByteMatch::At { offset, bytes }],
        impairment: RuleImpairment {
            loss,
            delay: DelayConfig {
                delay_ms,
                jitter_ms,
                ..DelayConfig::default()
            },
            ..RuleImpairment::default()
        },
        ..DpiRule::default()
    };
    vec![
        rule("data-up", DirectionFilter::Up, up, 0.05, 20.0, 4.0),
        rule("data-down", DirectionFilter::Down, down, 0.10, 10.0, 2.0),
    ]
}

async fn relay_to(upstream: SocketAddr, rules: Vec<DpiRule>) -> Relay {
    Relay::start(RelayConfig {
        routes: vec![Route {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream,
        }],
        impairment: ImpairmentConfig {
            seed: SEED,
            rules,
            ..ImpairmentConfig::default()
        },
        ..RelayConfig::default()
    })
    .await
    .unwrap()
}

fn rule_drops(truth: &GroundTruth) -> (u64, u64) {
    (
        truth.rules[0].up.dropped_loss,
        truth.rules[1].down.dropped_loss,
    )
}

/// Data packets dropped among the first `up` probes and the first `down` replies.
fn prefix_drops(truth: &GroundTruth, up: usize, down: usize) -> (u64, u64) {
    let dropped = |log: &[PacketRecord], rule: usize, n: usize| {
        log.iter()
            .filter(|r| r.matched_rule == Some(rule))
            .take(n)
            .filter(|r| matches!(r.fate, Fate::Dropped(_)))
            .count() as u64
    };
    (
        dropped(&truth.up.log, 0, up),
        dropped(&truth.down.log, 1, down),
    )
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callwatch_and_irtt_agree_through_the_same_emulator() {
    assert!(
        std::process::Command::new("irtt")
            .arg("version")
            .output()
            .is_ok(),
        "irtt is not installed: apt-get install irtt (.ci/run does this)"
    );
    // irtt server on loopback, stopped when the test ends.
    let irtt_port = free_udp_port();
    let mut server = tokio::process::Command::new("irtt")
        .args(["server", "-b", &format!("127.0.0.1:{irtt_port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Wait for its listener line rather than sleeping.
    {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
        loop {
            let line = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
                .await
                .expect("irtt server did not start")
                .unwrap()
                .expect("irtt server exited");
            if line.contains("ListenerStart") {
                break;
            }
        }
        // Keep draining its log: a closed pipe would stop the server at its next line.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    }
    let reflector = spawn_reflector(&["127.0.0.1:0".parse().unwrap()], Limits::default())
        .await
        .unwrap();
    let irtt_relay = relay_to(
        format!("127.0.0.1:{irtt_port}").parse().unwrap(),
        rules(vec![0x14, 0xa7, 0x5b, 0x00], vec![0x14, 0xa7, 0x5b, 0x02]),
    )
    .await;
    // callwatch's generic test is RTP-framed: match the core packet's first bytes after the
    // 12-byte RTP header.
    let cw_relay = relay_to(reflector.addrs[0], rules_at(12, vec![1, 3], vec![1, 4])).await;

    // One tool after the other (on two cores, running both at once makes irtt skip late sends):
    // 10 s, 20 ms, 172-byte packets.
    let irtt_addr = irtt_relay.local_addrs()[0];
    let out = tempfile::tempdir().unwrap();
    let json_path = out.path().join("irtt.json");
    let irtt_output = tokio::process::Command::new("irtt")
        .args(["client", "-i", "20ms", "-d", "10s", "-l", "172", "-Q", "-o"])
        .arg(&json_path)
        .arg(irtt_addr.to_string())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        irtt_output.status.success(),
        "irtt client failed: {}",
        String::from_utf8_lossy(&irtt_output.stderr)
    );
    let spec = TestSpec::voice(cw_relay.local_addrs()[0], 10_000);
    let cw = tokio::task::spawn_blocking(move || run_call_test(&spec, &Cancel::default(), |_| {}))
        .await
        .unwrap()
        .unwrap();
    let irtt: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let stats = &irtt["stats"];

    let cw_truth = cw_relay.shutdown().await.unwrap().ground_truth;
    let irtt_truth = irtt_relay.shutdown().await.unwrap().ground_truth;
    drop(server);

    let s = &cw.streams[0];
    let irtt_sent = stats["packets_sent"].as_u64().unwrap();
    let irtt_server = stats["server_packets_received"].as_u64().unwrap();
    let irtt_received = stats["packets_received"].as_u64().unwrap();
    assert_eq!(s.packets_sent, 500);
    // irtt skips a send its timer is late for (15 of 500 seen with the two cores busy); the
    // loss counts below are compared over the packets it did send, so what matters is only
    // that it really ran: at least four fifths.
    assert!(irtt_sent >= 400, "irtt sent only {irtt_sent}");
    let cw_up = (s.packets_sent - s.packets_reflected.unwrap()) as u64;
    let cw_down = (s.packets_reflected.unwrap() - s.packets_received) as u64;
    let irtt_up = irtt_sent - irtt_server;
    let irtt_down = irtt_server - irtt_received;
    // Each tool equals the emulator's count of what it dropped.
    assert_eq!(
        (cw_up, cw_down),
        rule_drops(&cw_truth),
        "callwatch vs its emulator"
    );
    assert_eq!(
        (irtt_up, irtt_down),
        rule_drops(&irtt_truth),
        "irtt vs its emulator"
    );
    assert!(cw_up > 0 && cw_down > 0);
    // The k-th data packet met the same fate in both runs, so over the packets both tools sent
    // (and the replies both reflectors sent) their loss counts are the same.
    assert_eq!(
        prefix_drops(&cw_truth, irtt_sent as usize, irtt_server as usize),
        (irtt_up, irtt_down),
        "callwatch vs irtt over the first {irtt_sent} packets"
    );

    let cw_median = s.rtt_ms.unwrap().median;
    let irtt_median = stats["rtt"]["median"].as_f64().unwrap() / 1e6;
    // Both tools see the same added delay for the k-th packet, so their medians differ only by
    // each tool's own timestamping and scheduling: 0.1-0.5 ms on an idle machine, 1.28 ms once
    // on two busy cores. The bound comes from what is checked, not from that noise: the
    // emulator adds ADDED_MS to every round trip, and a tool that got it a sixth wrong (5 ms,
    // e.g. a systematic error of a 20 ms interval, or one direction's delay counted twice or
    // not at all) disagrees by more than the bound, while no scheduling delay on a loaded
    // machine moves a median of 500 round trips by that much.
    eprintln!("RTT medians: callwatch {cw_median:.3} ms, irtt {irtt_median:.3} ms");
    assert!(
        (cw_median - irtt_median).abs() <= ADDED_MS / 6.0,
        "RTT medians: callwatch {cw_median} ms, irtt {irtt_median} ms"
    );
    // And both near what the emulator added: 20 ms up + 10 ms down, each jittered
    // symmetrically, plus loopback and scheduling (above, never below); a 20 ms error either
    // way falls outside.
    for (tool, median) in [("callwatch", cw_median), ("irtt", irtt_median)] {
        assert!(
            (ADDED_MS - 5.0..ADDED_MS + 15.0).contains(&median),
            "{tool}: RTT median {median} ms for {ADDED_MS} ms added"
        );
    }
}

/// The mean round-trip delay the rules add to data packets: 20 ms up, 10 ms down.
const ADDED_MS: f64 = 30.0;
