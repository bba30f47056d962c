//! The attestation exchange of the real `CallTest` against the real reflector core, under a
//! simulated clock: a test ends with the reflector's signed attestation in its report, and a
//! test whose attestations are all dropped still ends with a report, without one, after the
//! bounded retries.

use callwatch_agent::engine::call::ATTEST_ATTEMPTS;
use callwatch_agent::engine::TestSpec;
use callwatch_proto::attest::unix_hour;
use callwatch_tests::emulator::dpi::{ByteMatch, DirectionFilter, DpiRule, RuleImpairment};
use callwatch_tests::emulator::ImpairmentConfig;
use callwatch_tests::sim::{sim_attestation_key, simulate_call_observed, WireEvent};
use std::net::SocketAddr;

/// The RTP header in front of every generic probe.
const RTP: usize = 12;
/// The probe protocol's Attestation kind byte, after its version byte: the simulated reflector
/// knows no subdivision (it attests every address as ZZ/AS0), so it answers with the kind
/// without one (11)…
const ATTESTATION: [u8; 2] = [1, 11];
/// … to the query that asks for one (14), which the agent sends because every attesting
/// reflector advertises that it signs subdivisions.
const ATTEST_QUERY: [u8; 2] = [1, 14];

fn spec() -> TestSpec {
    let mut spec = TestSpec::voice(SocketAddr::from(([127, 0, 0, 1], 3479)), 2_000);
    spec.grace_ms = 200;
    spec
}

/// Runs the simulated test and counts attestation queries the agent sent.
fn run(cfg: ImpairmentConfig) -> (callwatch_proto::CallReport, usize) {
    let mut queries = 0;
    let out = simulate_call_observed(&spec(), cfg, 7_000_000_000, 3, &mut |e: WireEvent<'_>| {
        if e.up && e.bytes.get(RTP..RTP + 2) == Some(&ATTEST_QUERY[..]) {
            queries += 1;
        }
    })
    .unwrap();
    (out.report.unwrap(), queries)
}

#[test]
fn a_simulated_test_carries_the_reflectors_attestation() {
    let (report, queries) = run(ImpairmentConfig::default());
    assert_eq!(queries, 1);
    let a = report.attestation.clone().expect("attested");
    assert_eq!((a.country.as_str(), a.asn), ("ZZ", 0));
    assert_eq!(a.hour, unix_hour(report.started_at));
    let key = sim_attestation_key().verifying_key();
    assert_eq!(
        a.verify(report.id, report.started_at, report.started_at, |_| Some(
            key
        )),
        Ok(())
    );
}

#[test]
fn dropped_attestations_leave_a_report_without_one() {
    let drop_attestations = DpiRule {
        name: "attestation".into(),
        direction: DirectionFilter::Down,
        patterns: vec![ByteMatch::At {
            offset: RTP,
            bytes: ATTESTATION.to_vec(),
        }],
        impairment: RuleImpairment {
            loss: 1.0,
            ..RuleImpairment::default()
        },
        ..DpiRule::default()
    };
    let cfg = ImpairmentConfig {
        rules: vec![drop_attestations],
        ..ImpairmentConfig::default()
    };
    let (report, queries) = run(cfg);
    assert_eq!(queries, ATTEST_ATTEMPTS as usize, "bounded retries");
    assert!(report.attestation.is_none());
    assert_eq!(
        report.streams[0].packets_sent, 100,
        "the measurement is whole"
    );
}
