//! A reflector that stops answering: a local error the first time (nothing was ever reached: a
//! typo, a stopped reflector, a home firewall), a report once the agent has reached it before
//! (a network that now blocks all of it is itself a finding).

use callwatch_agent::config::Config;
use callwatch_agent::engine::driver::Cancel;
use callwatch_agent::queue::Queue;
use callwatch_agent::runner::{run_one_test, TestOutcome};
use callwatch_agent::state::SharedState;
use callwatch_proto::report::VerdictRule;
use callwatch_proto::{Platform, Verdict};
use callwatch_tests::spawn_two_port_reflector;
use std::net::UdpSocket;

fn config(reflector: &str, platform_port: u16, control_port: u16) -> Config {
    let mut cfg = Config::new("127.0.0.1:1".into(), [0; 32], reflector.into());
    cfg.platforms = vec![Platform::Whatsapp];
    cfg.test.duration_secs = 1;
    cfg.test.platform_port = Some(platform_port);
    cfg.test.control_port = Some(control_port);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_is_a_local_error_until_the_reflector_has_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(&dir.path().join("queue")).unwrap();
    let state = SharedState::load(&dir.path().join("state.json"));
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);

    // Two bound sockets that never answer: a reflector address nothing listens behind.
    let (silent_p, silent_c) = (
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        UdpSocket::bind("127.0.0.1:0").unwrap(),
    );
    let cfg = config(
        "127.0.0.1:40401",
        silent_p.local_addr().unwrap().port(),
        silent_c.local_addr().unwrap().port(),
    );
    let mut spec = cfg.spec(Platform::Whatsapp).unwrap();
    spec.grace_ms = 200;
    let outcome = run_one_test(&cfg, &key, &queue, &state, spec.clone(), &Cancel::default())
        .await
        .unwrap();
    match outcome {
        TestOutcome::Failed(why) => assert!(why.contains("127.0.0.1:40401"), "{why}"),
        other => panic!("expected a local failure naming the address, got {other:?}"),
    }
    assert_eq!(
        queue.len(),
        0,
        "nothing is uploaded for a reflector never reached"
    );

    // A real reflector on the same two ports' stand-ins answers once...
    let reflector = spawn_two_port_reflector().await;
    let live = config(
        &reflector.addrs[0].to_string(),
        reflector.addrs[0].port(),
        reflector.addrs[1].port(),
    );
    let mut live_spec = live.spec(Platform::Whatsapp).unwrap();
    live_spec.grace_ms = 200;
    let outcome = run_one_test(
        &live,
        &key,
        &queue,
        &state,
        live_spec.clone(),
        &Cancel::default(),
    )
    .await
    .unwrap();
    assert!(matches!(outcome, TestOutcome::Done(_)), "{outcome:?}");
    assert!(state
        .snapshot()
        .reflectors_reached
        .contains(&reflector.addrs[0].to_string()));

    // ...then goes silent: its sockets closed and the ports taken by sockets that never answer
    // (binding succeeds only once the reflector's socket is gone; bounded).
    let addrs = reflector.addrs.clone();
    drop(reflector);
    let mut silent = Vec::new();
    for addr in addrs {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let socket = loop {
            match UdpSocket::bind(addr) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("the reflector's port {addr} was not released: {e}")
                }
                Err(_) => tokio::task::yield_now().await,
            }
        };
        silent.push(socket);
    }
    let outcome = run_one_test(&live, &key, &queue, &state, live_spec, &Cancel::default())
        .await
        .unwrap();
    let TestOutcome::Done(report) = outcome else {
        panic!("expected a report, got {outcome:?}");
    };
    assert_eq!(report.verdict, Some(Verdict::Inconclusive));
    assert_eq!(
        report.verdict_detail.unwrap().rule,
        Some(VerdictRule::NothingAnswered)
    );
    assert_eq!(queue.len(), 2, "both reports are queued for upload");
}
