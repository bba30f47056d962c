//! A blocked call is the finding: censors that block, cut and hide direction, run through the
//! whole `CallTest` under a simulated clock (the same code the agent runs over sockets), with the
//! report each must give.

use callwatch_agent::engine::{TestError, TestSpec};
use callwatch_proto::report::{StreamOutcome, VerdictRule};
use callwatch_proto::{CallReport, Platform, Role, SignedReport, StreamReport, Verdict};
use callwatch_tests::emulator::{
    ByteMatch, DirectionFilter, DpiRule, ImpairmentConfig, PortRange, PortSide, RuleImpairment,
};
use callwatch_tests::sim::simulate_call;
use std::net::SocketAddr;

/// WhatsApp's platform arm goes to the reflector's 3478, its control arm to 40400.
const PLATFORM_PORT: u16 = 3478;
const CONTROL_PORT: u16 = 40400;

fn spec(reached_before: bool) -> TestSpec {
    let mut spec = TestSpec::voice(SocketAddr::from(([127, 0, 0, 1], 40401)), 10_000);
    spec.platform = Platform::Whatsapp;
    spec.size = None;
    spec.reached_before = reached_before;
    spec
}

/// Drops every datagram to (up) or from (down) `port` from `from_ms` on.
fn drop_port(port: u16, direction: DirectionFilter, from_ms: u64) -> DpiRule {
    DpiRule {
        name: format!("drop-{port}"),
        direction,
        ports: vec![PortRange::new(port, port).unwrap()],
        port_side: match direction {
            DirectionFilter::Down => PortSide::Src,
            DirectionFilter::Up => PortSide::Dst,
            _ => PortSide::Either,
        },
        impairment: RuleImpairment {
            loss: 1.0,
            ..RuleImpairment::default()
        },
        active_from_ms: from_ms,
        ..DpiRule::default()
    }
}

fn run(spec: &TestSpec, rules: Vec<DpiRule>, seed: u64) -> Result<CallReport, TestError> {
    let cfg = ImpairmentConfig {
        seed,
        rules,
        ..ImpairmentConfig::default()
    };
    simulate_call(spec, cfg, 3_000_000_000, seed)
        .unwrap()
        .report
}

fn stream(r: &CallReport, role: Role) -> &StreamReport {
    r.streams.iter().find(|s| s.role == role).unwrap()
}

/// The report is what an agent would upload: it validates, signs and verifies.
fn uploadable(r: &CallReport) {
    r.validate().unwrap();
    if let Some(d) = &r.verdict_detail {
        assert!(
            !d.reason.contains("  "),
            "a reason reads as one sentence: {:?}",
            d.reason
        );
    }
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let signed = SignedReport::sign(r, &key).unwrap();
    assert_eq!(&signed.verify().unwrap(), r);
}

#[test]
fn a_fully_blocked_platform_is_a_differentiated_report() {
    let r = run(
        &spec(false),
        vec![drop_port(PLATFORM_PORT, DirectionFilter::Both, 0)],
        1,
    )
    .unwrap();
    uploadable(&r);
    assert_eq!(r.verdict, Some(Verdict::Differentiated));
    let d = r.verdict_detail.as_ref().unwrap();
    assert_eq!(d.rule, Some(VerdictRule::Blocked), "{}", d.reason);
    let p = stream(&r, Role::Platform);
    assert_eq!(p.outcome, StreamOutcome::Blocked);
    assert_eq!((p.packets_sent, p.packets_received), (0, 0));
    // Nothing of the platform's was measured: no made-up split.
    assert_eq!((p.loss_up, p.loss_down), (None, None));
    assert_eq!(stream(&r, Role::Control).outcome, StreamOutcome::Measured);
}

#[test]
fn a_call_cut_at_five_seconds_is_differentiated_with_the_time() {
    let r = run(
        &spec(false),
        vec![drop_port(PLATFORM_PORT, DirectionFilter::Both, 5_000)],
        2,
    )
    .unwrap();
    uploadable(&r);
    assert_eq!(r.verdict, Some(Verdict::Differentiated));
    assert_eq!(
        r.verdict_detail.as_ref().unwrap().rule,
        Some(VerdictRule::Cut)
    );
    let p = stream(&r, Role::Platform);
    assert_eq!(p.outcome, StreamOutcome::Dark);
    // The stream starts after its handshake (≈ 0 ms simulated); the cut is at 5 s of run time.
    let at = p.dark_from_ms.unwrap();
    assert!((4_900..=5_100).contains(&at), "{at}");
}

#[test]
fn a_downstream_only_block_is_reported_downstream() {
    // Replies from the platform port dropped from 4 s on; probes still arrive. The platform's
    // own CloseAck cannot come back, so the count comes through the control session.
    let r = run(
        &spec(false),
        vec![drop_port(PLATFORM_PORT, DirectionFilter::Down, 4_000)],
        3,
    )
    .unwrap();
    uploadable(&r);
    let p = stream(&r, Role::Platform);
    assert_eq!(
        p.packets_reflected,
        Some(p.packets_sent),
        "every probe arrived"
    );
    assert_eq!(p.loss_up, Some(0.0));
    let down = p.loss_down.unwrap();
    assert!((0.55..0.65).contains(&down), "{down}");
    assert_eq!(r.verdict, Some(Verdict::Differentiated));
}

#[test]
fn without_close_or_count_exchange_the_direction_is_unknown() {
    // As above, and the control arm's CountQuery (bare, kind 8) is dropped too: no final count
    // reaches the agent, so the split must be unknown, not all upstream.
    let mut count_query = drop_port(CONTROL_PORT, DirectionFilter::Up, 0);
    count_query.patterns = vec![ByteMatch::At {
        offset: 0,
        bytes: vec![1, 8],
    }];
    let r = run(
        &spec(false),
        vec![
            drop_port(PLATFORM_PORT, DirectionFilter::Down, 4_000),
            count_query,
        ],
        4,
    )
    .unwrap();
    uploadable(&r);
    let p = stream(&r, Role::Platform);
    assert_eq!(
        (p.loss_up, p.loss_down, p.packets_reflected),
        (None, None, None)
    );
    let loss = p.loss.unwrap();
    assert!((0.55..0.65).contains(&loss), "{loss}");
    // The control arm's own CloseAck still came back.
    assert_eq!(stream(&r, Role::Control).loss_up, Some(0.0));
}

#[test]
fn a_dark_control_arm_is_inconclusive_never_none() {
    let r = run(
        &spec(false),
        vec![drop_port(CONTROL_PORT, DirectionFilter::Both, 0)],
        5,
    )
    .unwrap();
    uploadable(&r);
    assert_eq!(r.verdict, Some(Verdict::Inconclusive));
    assert_eq!(
        r.verdict_detail.as_ref().unwrap().rule,
        Some(VerdictRule::NoReference)
    );
}

#[test]
fn nothing_answering_is_an_error_for_a_new_reflector_and_a_report_for_a_known_one() {
    let all = vec![
        drop_port(PLATFORM_PORT, DirectionFilter::Both, 0),
        drop_port(CONTROL_PORT, DirectionFilter::Both, 0),
    ];
    match run(&spec(false), all.clone(), 6) {
        Err(TestError::Unreachable(addr)) => {
            assert_eq!(addr, spec(false).reflector);
            assert!(TestError::Unreachable(addr)
                .to_string()
                .contains("127.0.0.1:40401"));
        }
        other => panic!("expected a local error naming the address, got {other:?}"),
    }
    let r = run(&spec(true), all, 6).unwrap();
    uploadable(&r);
    assert_eq!(r.verdict, Some(Verdict::Inconclusive));
    assert_eq!(
        r.verdict_detail.as_ref().unwrap().rule,
        Some(VerdictRule::NothingAnswered)
    );
}

#[test]
fn dropping_the_platform_replies_throughout_is_blocked_with_every_probe_reflected() {
    // Handshake answered? No: the Accept is a reply too. Probes never leave. This is the
    // harshest downstream censor, and still a report.
    let r = run(
        &spec(false),
        vec![drop_port(PLATFORM_PORT, DirectionFilter::Down, 0)],
        7,
    )
    .unwrap();
    uploadable(&r);
    assert_eq!(r.verdict, Some(Verdict::Differentiated));
    assert_eq!(
        r.verdict_detail.as_ref().unwrap().rule,
        Some(VerdictRule::Blocked)
    );
}
