//! The call-test engine under a simulated clock: every issue-3 scenario, exact figures.
//!
//! The agent's real session state machine and metrics, the collector's real reflector core, and
//! the emulator's model run event by event; the reflector's clock is set 5 000 s ahead of the
//! agent's to show the figures do not depend on synchronised clocks.

use callwatch_agent::engine::TestSpec;
use callwatch_proto::StreamReport;
use callwatch_tests::emulator::ImpairmentConfig;
use callwatch_tests::scenarios::{expected, rfc3550_jitter_ms, scenarios, Scenario};
use callwatch_tests::sim::{marker_rules_at, simulate_call, ProbeTruth};
use std::net::SocketAddr;

/// A generic (single-arm, RTP-framed) test of `duration_ms` with `size`-byte probes.
fn spec(size: u16, duration_ms: u32) -> TestSpec {
    let mut spec = TestSpec::voice(SocketAddr::from(([127, 0, 0, 1], 3479)), duration_ms);
    spec.size = Some(size);
    spec
}

/// The RTP header in front of every generic probe.
const RTP: usize = 12;

const OFFSET_US: u64 = 5_000_000_000;

fn run(
    s: &Scenario,
    seed: u64,
) -> (
    StreamReport,
    ProbeTruth,
    callwatch_agent::metrics::StreamRecord,
) {
    let rules = marker_rules_at(RTP);
    let cfg = ImpairmentConfig {
        seed,
        up: s.up.clone(),
        down: s.down.clone(),
        rules: rules.clone(),
        ..ImpairmentConfig::default()
    };
    let mut out = simulate_call(&spec(s.size, 10_000), cfg, OFFSET_US, seed).unwrap();
    let report = out.report.unwrap();
    let record = out.records.remove(0).1;
    let truth = ProbeTruth::from_ground_truth(&out.truth, &rules).unwrap();
    (report.streams[0].clone(), truth, record)
}

fn scenario(name: &str) -> Scenario {
    scenarios().into_iter().find(|s| s.name == name).unwrap()
}

#[test]
fn every_scenario_matches_ground_truth_exactly() {
    for s in scenarios() {
        let (r, truth, _) = run(&s, 7);
        let e = expected(&truth);
        let name = s.name;
        assert_eq!(r.packets_sent, 500, "{name}");
        assert_eq!(r.packets_sent, e.sent, "{name}");
        if name == "duplication-5pct" {
            // Duplicated probes are counted once by the reflector; every extra reply copy that
            // arrives is a duplicate at the agent.
            assert_eq!(r.packets_reflected, Some(500), "{name}");
            let copies = truth.replies - truth.replies_dropped + truth.replies_duplicated;
            assert_eq!(
                r.duplicates as u64,
                copies - r.packets_received as u64,
                "{name}"
            );
            assert!(r.duplicates > 20, "{name}: {}", r.duplicates);
            continue;
        }
        assert_eq!(r.packets_reflected, Some(e.reflected), "{name}");
        assert_eq!(r.packets_received, e.received, "{name}");
        assert_eq!(r.loss_up, Some(e.loss_up), "{name}");
        assert_eq!(r.loss_down, Some(e.loss_down), "{name}");
        // Simulated transit is exactly the added delay: RTT median is the added median.
        let rtt = r.rtt_ms.unwrap();
        assert!(
            (rtt.median - e.added_rtt_median_ms).abs() < 1e-9,
            "{name}: {rtt:?} vs {e:?}"
        );
        // The published jitter is the mean of the running estimate over the call; the final
        // value (what RTP receivers report) is kept beside it under its own name.
        let j = r.jitter_ms.unwrap();
        assert!(
            (j.down - e.jitter_down_mean_ms).abs() < 1e-9,
            "{name}: {j:?} vs {e:?}"
        );
        let last = r.jitter_final_ms.unwrap();
        assert!(
            (last.down - e.jitter_down_ms).abs() < 1e-9,
            "{name}: {last:?} vs {e:?}"
        );
        assert_eq!(j.up, 0.0, "{name}: nothing delays the up path");
        let b = r.burst.unwrap();
        assert_eq!(b.count, e.loss_runs, "{name}");
        assert_eq!(b.max_len, e.longest_run, "{name}");
    }
}

#[test]
fn impairments_show_in_the_figures_they_should() {
    let (clean, _, _) = run(&scenario("clean"), 1);
    assert_eq!((clean.loss_up, clean.loss_down), (Some(0.0), Some(0.0)));
    assert_eq!(clean.rtt_ms.unwrap().max, 0.0);

    let (b, t, _) = run(&scenario("bernoulli-5up-10down"), 1);
    let (up, down) = (b.loss_up.unwrap(), b.loss_down.unwrap());
    assert!((0.02..0.09).contains(&up), "{up}");
    assert!((0.06..0.15).contains(&down), "{down}");
    assert_eq!(t.probes_dropped as u32, 500 - b.packets_reflected.unwrap());

    // Bursty loss: long runs and a burst ratio well above random loss's 1.
    let (bursty, _, _) = run(&scenario("bursty-mean-burst-4"), 1);
    let burst = bursty.burst.unwrap();
    assert!(burst.mean_len > 2.5, "{burst:?}");
    assert!(burst.burst_ratio > 2.0, "{burst:?}");
    assert!(b.burst.unwrap().burst_ratio < 1.5, "{:?}", b.burst);

    // Reordering: counted per RFC 4737 from the arrival order the simulation produced.
    let (reo, _, record) = run(&scenario("reordering"), 1);
    let mut next_exp = 0;
    let mut reordered = 0;
    for &seq in &record.arrival_order {
        if seq < next_exp {
            reordered += 1;
        } else {
            next_exp = seq + 1;
        }
    }
    assert_eq!(reo.reordered, reordered);
    assert!(reo.reordered > 50, "{}", reo.reordered);
    let (fifo, _, _) = run(&scenario("delay-30ms-jitter-10ms"), 1);
    assert_eq!(fifo.reordered, 0, "jitter without reordering keeps order");
    assert!(fifo.jitter_ms.unwrap().down > 1.0);

    // Policing 160 kbit/s of probes to 130: about a fifth lost upstream, all upstream.
    let (pol, _, _) = run(&scenario("policer-130kbps"), 1);
    let up = pol.loss_up.unwrap();
    assert!((0.12..0.25).contains(&up), "{up}");
    assert_eq!(pol.loss_down, Some(0.0));
    let offered = pol.bitrate_kbps.unwrap().offered;
    assert!((offered - 160.0).abs() < 1.0, "{offered}");
}

#[test]
fn mos_is_lower_on_every_impaired_path_and_ordered_by_severity() {
    let mos = |name: &str| run(&scenario(name), 3).0.mos.unwrap();
    let clean = mos("clean");
    assert!(clean > 4.3, "{clean}");
    let mut by_name = vec![];
    for s in scenarios().iter().filter(|s| s.name != "clean") {
        let m = mos(s.name);
        if s.name == "duplication-5pct" {
            // A duplicate costs a listener nothing: the first copy plays, the second is dropped.
            assert_eq!(m, clean, "duplicates alone must not change MOS");
        } else {
            assert!(m < clean, "{}: {m} not below clean {clean}", s.name);
        }
        by_name.push((s.name, m));
    }
    let get = |n: &str| by_name.iter().find(|(k, _)| *k == n).unwrap().1;
    // ~15 % round-trip loss hurts more than 6 % bursty loss or 30 ms of delay with jitter.
    assert!(get("bernoulli-5up-10down") < get("bursty-mean-burst-4"));
    assert!(get("bernoulli-5up-10down") < get("delay-30ms-jitter-10ms"));
    assert!(get("duplication-5pct") > get("policer-130kbps"));
    // Wider jitter (the reordering path) discards more behind the 60 ms buffer than narrower.
    assert!(get("reordering") < get("delay-30ms-jitter-10ms"));
}

#[test]
fn simulation_is_deterministic() {
    let s = scenario("bursty-mean-burst-4");
    assert_eq!(run(&s, 11).0, run(&s, 11).0);
    assert_ne!(run(&s, 11).0, run(&s, 12).0);
}

#[test]
fn clock_offset_does_not_change_the_figures() {
    let s = scenario("delay-30ms-jitter-10ms");
    let cfg = ImpairmentConfig {
        seed: 5,
        up: s.up.clone(),
        down: s.down.clone(),
        rules: marker_rules_at(RTP),
        ..ImpairmentConfig::default()
    };
    let report = |offset| {
        let out = simulate_call(&spec(172, 4_000), cfg.clone(), offset, 5).unwrap();
        out.report.unwrap().streams[0].clone()
    };
    let (a, b) = (report(0), report(987_654_321_000));
    assert_eq!(a.jitter_ms, b.jitter_ms);
    assert_eq!(a.rtt_ms, b.rtt_ms);
    assert_eq!(
        a.owd_ms.as_ref().unwrap().down,
        b.owd_ms.as_ref().unwrap().down
    );
    // The jitter helper agrees with itself on a hand-made series (sanity of the oracle).
    assert_eq!(rfc3550_jitter_ms(&[0.0, 16_000.0]), 1.0);
}
