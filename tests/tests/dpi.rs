//! A DPI box on a real path: the emulator's relay with a rule on the STUN magic cookie (10 % loss
//! each way) in front of a reflector listening on a platform port and a control port. WhatsApp
//! calls (STUN-framed) are singled out; Telegram calls (no cookie) and all control arms are not.

use callwatch_agent::engine::driver::Cancel;
use callwatch_agent::engine::{run_call_test, TestSpec};
use callwatch_proto::seal::ReflectorKey;
use callwatch_proto::{CallReport, Platform, Role, Verdict};
use callwatch_reflector::{spawn_reflector, Limits};
use callwatch_tests::censors::stun_rule;
use callwatch_tests::emulator::{ImpairmentConfig, Relay, RelayConfig, Route, RuleImpairment};
use std::net::SocketAddr;

async fn run(
    platform: Platform,
    platform_at: SocketAddr,
    control_at: SocketAddr,
    key: ReflectorKey,
) -> CallReport {
    let mut spec = TestSpec::voice(platform_at, 15_000);
    // Sealed, as an agent given the reflector's key sends: the DPI rule still sees the STUN
    // framing's cookie, never a probe header.
    spec.reflector_key = Some(key);
    spec.platform = platform;
    spec.size = None; // the profile's sizes
    spec.platform_port = Some(platform_at.port());
    spec.control_port = Some(control_at.port());
    tokio::task::spawn_blocking(move || run_call_test(&spec, &Cancel::default(), |_| {}).unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_is_differentiated_through_a_stun_rule_and_telegram_is_not() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let reflector = spawn_reflector(&[any, any], Limits::default())
        .await
        .unwrap();
    let relay = Relay::start(RelayConfig {
        routes: vec![
            Route {
                listen: any,
                upstream: reflector.addrs[0],
            },
            Route {
                listen: any,
                upstream: reflector.addrs[1],
            },
        ],
        impairment: ImpairmentConfig {
            seed: 99,
            rules: vec![stun_rule(RuleImpairment {
                loss: 0.10,
                ..RuleImpairment::default()
            })],
            ..ImpairmentConfig::default()
        },
        ..RelayConfig::default()
    })
    .await
    .unwrap();
    let (p, c) = (relay.local_addrs()[0], relay.local_addrs()[1]);
    let key = reflector.seal_key;
    let (whatsapp, telegram) = tokio::join!(
        run(Platform::Whatsapp, p, c, key),
        run(Platform::Telegram, p, c, key)
    );
    assert!(whatsapp.probes_sealed && telegram.probes_sealed);
    // Both platform arms (15 s at 20 ms each) went through the sealed path; the bare control
    // arms did not.
    let sealed = reflector.stats_source().stats().sealed;
    assert!((1_000..=1_600).contains(&sealed), "{sealed} sealed answers");
    let truth = relay.shutdown().await.unwrap().ground_truth;

    let stream = |r: &CallReport, role| r.streams.iter().find(|s| s.role == role).cloned().unwrap();
    let (wa_p, wa_c) = (
        stream(&whatsapp, Role::Platform),
        stream(&whatsapp, Role::Control),
    );
    assert_eq!(
        whatsapp.verdict,
        Some(Verdict::Differentiated),
        "{:?}",
        whatsapp.verdict_detail
    );
    // The reflector's final count arrives (by CloseAck, or asked for through the control arm),
    // so the loss is split, and both directions lose.
    let (up, down) = (wa_p.loss_up.unwrap(), wa_p.loss_down.unwrap());
    assert!(up > 0.03 && down > 0.03, "{up} {down}");
    assert_eq!(
        (wa_c.loss_up, wa_c.loss_down),
        (Some(0.0), Some(0.0)),
        "the control arm is clean"
    );
    // Exactly the rule's drops show up as the platform arm's losses.
    let rule = &truth.rules[0];
    let wa_lost_up = (wa_p.packets_sent - wa_p.packets_reflected.unwrap()) as u64;
    assert!(rule.up.dropped_loss >= wa_lost_up && wa_lost_up > 0);

    assert_eq!(
        telegram.verdict,
        Some(Verdict::None),
        "{:?}",
        telegram.verdict_detail
    );
    let tg_p = stream(&telegram, Role::Platform);
    assert_eq!((tg_p.loss_up, tg_p.loss_down), (Some(0.0), Some(0.0)));
    // Both arms of each test sent the same bytes on the wire.
    let tg_c = stream(&telegram, Role::Control);
    assert_eq!(
        tg_p.bitrate_kbps.unwrap().offered,
        tg_c.bitrate_kbps.unwrap().offered
    );
    assert_eq!(
        wa_p.bitrate_kbps.unwrap().offered,
        wa_c.bitrate_kbps.unwrap().offered
    );
    whatsapp.validate().unwrap();
    telegram.validate().unwrap();
}
