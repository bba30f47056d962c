//! A censor that knows callwatch: sealed platform arms (`TestSpec::reflector_key`) carry no
//! cleartext probe header and keep the profile's sizes, so a DPI box that recognises the
//! measurement cannot exempt it without exempting the platform — while bare arms can be.

use callwatch_agent::engine::call::CallRandom;
use callwatch_agent::engine::TestSpec;
use callwatch_proto::framing::neutral_session_id;
use callwatch_proto::{Platform, Role, Verdict};
use callwatch_tests::censors::{catalogue, simulate_sealed, Target};
use callwatch_tests::emulator::ImpairmentConfig;
use callwatch_tests::sim::{sim_reflector_key, simulate_call_observed};
use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;

const PLATFORMS: [Platform; 4] = [
    Platform::Whatsapp,
    Platform::Telegram,
    Platform::Signal,
    Platform::Max,
];

#[test]
fn a_censor_that_exempts_callwatch_probes_cannot_exempt_sealed_ones() {
    let censor = catalogue()
        .into_iter()
        .find(|c| c.name == "aware-exempts-probes")
        .unwrap();
    // Telegram's framing has no byte signature for the censor to key on (no such row).
    for platform in [Platform::Whatsapp, Platform::Signal, Platform::Max] {
        let (mut sealed, mut bare) = (0, 0);
        for seed in 0..10 {
            let verdict = |s| {
                simulate_sealed(platform, &censor, 500 + seed, s)
                    .unwrap()
                    .unwrap()
                    .verdict
            };
            sealed += u32::from(verdict(true) == Some(Verdict::Differentiated));
            bare += u32::from(verdict(false) == Some(Verdict::Differentiated));
        }
        // 20 % loss on the platform arm only: found every time once sealed, never when bare
        // (the censor then drops only the platform's traffic that is not ours).
        assert_eq!((sealed, bare), (10, 0), "{platform}");
    }
}

/// The platform arm's datagrams, both ways, of one clean 8 s test.
fn capture(platform: Platform, sealed: bool) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, bool) {
    let mut spec = TestSpec::voice(SocketAddr::from(([127, 0, 0, 1], 40401)), 8_000);
    spec.platform = platform;
    spec.size = None;
    spec.reflector_key = sealed.then(sim_reflector_key);
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let platform_arm = 0; // the platform arm is the first
    let run = simulate_call_observed(&spec, ImpairmentConfig::default(), 1_000, 77, &mut |e| {
        if e.arm == platform_arm {
            if e.up { &mut up } else { &mut down }.push(e.bytes.to_vec());
        }
    })
    .unwrap();
    let report = run.report.unwrap();
    let platform_stream = report
        .streams
        .iter()
        .find(|s| s.role == Role::Platform)
        .unwrap();
    assert_eq!(
        platform_stream.loss,
        Some(0.0),
        "{platform} sealed={sealed}"
    );
    assert_eq!(report.verdict, Some(Verdict::None));
    (up, down, report.probes_sealed)
}

#[test]
fn sealed_arms_show_no_probe_header_and_keep_the_profiles_sizes() {
    let session = neutral_session_id(CallRandom::from_seed(77).session_ids[0]).to_be_bytes();
    for platform in PLATFORMS {
        let offset = Target::of(platform).unwrap().handshake_offset.unwrap();
        let (bare_up, _, bare_flag) = capture(platform, false);
        let (up, down, sealed_flag) = capture(platform, true);
        assert!(sealed_flag && !bare_flag);
        // Bare, every packet carries the session id; sealed, none does, either way.
        assert!(
            bare_up
                .iter()
                .filter(|d| d.windows(8).any(|w| w == session))
                .count()
                > 200
        );
        for d in up.iter().chain(&down) {
            assert!(
                !d.windows(8).any(|w| w == session),
                "{platform}: cleartext id"
            );
        }
        // Where the bare core starts, the bare packets repeat their version, kind and session
        // id; the sealed ones vary at every such offset like an encrypted payload.
        let distinct = |packets: &[Vec<u8>], at: usize| {
            packets
                .iter()
                .filter_map(|d| d.get(at))
                .collect::<HashSet<_>>()
                .len()
        };
        for at in offset..offset + 10 {
            // (Bare: one value per packet kind — Open, Probe, Close — and the preamble's.)
            assert!(distinct(&bare_up, at) <= 5, "{platform}: bare byte {at}");
            assert!(distinct(&up, at) >= 150, "{platform}: sealed byte {at}");
        }
        // Sizes: the voice frames are as long as bare ones (the nonce comes out of the
        // padding), and no datagram has a length of its own but the Open's envelope and the
        // preamble a platform opens with.
        let lengths = |p: &[Vec<u8>]| p.iter().map(Vec::len).collect::<BTreeSet<_>>();
        let (bare_lengths, sealed_lengths) = (lengths(&bare_up), lengths(&up));
        let extra: Vec<_> = sealed_lengths.difference(&bare_lengths).collect();
        assert!(
            extra.len() <= 1,
            "{platform}: lengths {extra:?} only when sealed"
        );
        assert_eq!(
            up.len(),
            bare_up.len(),
            "{platform}: as many datagrams sealed as bare"
        );
        // Every answer is as long as some request (the reflector never amplifies).
        let max_up = up.iter().map(Vec::len).max().unwrap();
        assert!(down.iter().all(|d| d.len() <= max_up));
    }
}

/// An agent holding a stale key (the collector made a new one): the reflector cannot open its
/// sealed arm, which goes unanswered while the control arm works — exactly what a block looks
/// like. The reflector's Accept on the control arm names its key, so the report says the key
/// is wrong instead of reporting a block.
#[test]
fn a_stale_reflector_key_is_named_never_reported_as_a_block() {
    use callwatch_proto::report::VerdictRule;
    use callwatch_proto::seal::ReflectorSecret;
    let mut spec = TestSpec::voice(SocketAddr::from(([127, 0, 0, 1], 40401)), 8_000);
    spec.platform = Platform::Whatsapp;
    spec.size = None;
    spec.reached_before = true;
    spec.reflector_key = Some(ReflectorSecret::from_bytes([0x42; 32]).public());
    let run =
        simulate_call_observed(&spec, ImpairmentConfig::default(), 1_000, 5, &mut |_| {}).unwrap();
    let report = run.report.unwrap();
    let platform = report
        .streams
        .iter()
        .find(|s| s.role == Role::Platform)
        .unwrap();
    assert_eq!(
        platform.packets_received, 0,
        "the sealed arm went unanswered"
    );
    assert_eq!(report.verdict, Some(Verdict::Inconclusive));
    let detail = report.verdict_detail.unwrap();
    assert_eq!(detail.rule, Some(VerdictRule::ReflectorKeyMismatch));
    assert!(detail.reason.contains("reflector_key"), "{}", detail.reason);
}
