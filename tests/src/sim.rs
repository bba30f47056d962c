//! Whole call tests under a simulated clock: the agent's real sans-IO `CallTest` (the same code
//! the UDP driver runs), the collector's real reflector core and the emulator's impairment
//! model, stepped event by event with no sockets and no waiting. Deterministic: the same inputs
//! and seed give the same figures.
//!
//! Also the ground-truth bookkeeping shared with the real-socket scenarios: "marker" DPI rules that
//! impair nothing but tag each probe (up) and reply (down) in the model's log, so the figures the
//! agent reports can be compared with what the emulator did to exactly those packets.

use crate::emulator::{
    ByteMatch, Direction, DirectionFilter, DpiRule, Fate, GroundTruth, Impairment,
    ImpairmentConfig, UdpPorts,
};
use anyhow::{anyhow, Result};
use callwatch_agent::engine::call::{CallRandom, CallTest};
use callwatch_agent::engine::{TestError, TestSpec};
use callwatch_agent::metrics::StreamRecord;
use callwatch_proto::seal::{ReflectorKey, ReflectorSecret};
use callwatch_proto::{CallReport, Role};
use callwatch_reflector::{stun_binding_success, Attester, Limits, Reflector};
use chrono::DateTime;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

/// Name of the marker rule that tags probes (agent → reflector).
pub const PROBE_MARKER: &str = "marker-probe";
/// Name of the marker rule that tags replies (reflector → agent).
pub const REPLY_MARKER: &str = "marker-reply";

/// Two rules that match bare callwatch probes and replies by their first two bytes (version 1,
/// kind) and impair nothing. Append them after any real rule: the first matching rule wins.
pub fn marker_rules() -> Vec<DpiRule> {
    marker_rules_at(0)
}

/// [`marker_rules`] for probes inside a framing whose header is `offset` bytes long (12 for the
/// RTP framing of `generic` tests).
pub fn marker_rules_at(offset: usize) -> Vec<DpiRule> {
    let rule = |name: &str, dir, kind: u8| DpiRule {
        name: name.into(),
        direction: dir,
        patterns: vec![ByteMatch::At {
            offset,
            bytes: vec![1, kind],
        }],
        ..DpiRule::default()
    };
    vec![
        rule(PROBE_MARKER, DirectionFilter::Up, 3),
        rule(REPLY_MARKER, DirectionFilter::Down, 4),
    ]
}

/// What the emulator did to the probes and replies of a run, from the marker-tagged log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeTruth {
    /// Probes that entered the emulator.
    pub probes: u64,
    pub probes_dropped: u64,
    /// Extra copies of probes the emulator made.
    pub probes_duplicated: u64,
    pub replies: u64,
    pub replies_dropped: u64,
    pub replies_duplicated: u64,
    /// Delay added to each probe, in the order probes were sent (`None`: dropped). First copy.
    pub up_delay_us: Vec<Option<u64>>,
    /// Delay added to each reply, in the order replies entered the emulator. First copy.
    pub down_delay_us: Vec<Option<u64>>,
}

impl ProbeTruth {
    pub fn from_ground_truth(truth: &GroundTruth, rules: &[DpiRule]) -> Result<ProbeTruth> {
        let index = |name: &str| {
            rules
                .iter()
                .position(|r| r.name == name)
                .ok_or_else(|| anyhow!("no rule named {name}"))
        };
        let (probe_rule, reply_rule) = (index(PROBE_MARKER)?, index(REPLY_MARKER)?);
        if truth.up.log_omitted > 0 || truth.down.log_omitted > 0 {
            return Err(anyhow!("the emulator log is truncated; raise log_limit"));
        }
        let mut t = ProbeTruth::default();
        for (log, rule, up) in [
            (&truth.up.log, probe_rule, true),
            (&truth.down.log, reply_rule, false),
        ] {
            for rec in log.iter().filter(|r| r.matched_rule == Some(rule)) {
                let (count, dropped, duplicated, delays) = if up {
                    (
                        &mut t.probes,
                        &mut t.probes_dropped,
                        &mut t.probes_duplicated,
                        &mut t.up_delay_us,
                    )
                } else {
                    (
                        &mut t.replies,
                        &mut t.replies_dropped,
                        &mut t.replies_duplicated,
                        &mut t.down_delay_us,
                    )
                };
                *count += 1;
                match &rec.fate {
                    Fate::Dropped(_) => {
                        *dropped += 1;
                        delays.push(None);
                    }
                    Fate::Delivered { delays_us } => {
                        *duplicated += delays_us.len().saturating_sub(1) as u64;
                        delays.push(delays_us.first().copied());
                    }
                }
            }
        }
        Ok(t)
    }
}

/// A whole simulated call test: the report (or the local error the agent would give) and what
/// the emulator did.
pub struct CallRun {
    pub report: Result<CallReport, TestError>,
    /// Each arm's record, in `CallTest::arms` order, for oracles that need packet detail.
    pub records: Vec<(Role, StreamRecord)>,
    pub truth: GroundTruth,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    at_us: u64,
    order: u64,
    arm: usize,
    up: bool,
    bytes: Vec<u8>,
}

/// One datagram as it leaves its sender in a simulation (before any impairment).
#[derive(Clone, Copy, Debug)]
pub struct WireEvent<'a> {
    /// Simulated time, µs since the start of the test.
    pub at_us: u64,
    pub arm: usize,
    /// Agent to reflector (or relay).
    pub up: bool,
    pub bytes: &'a [u8],
}

/// The agent's port for arm `i` in a simulation.
pub fn agent_port(i: usize) -> u16 {
    40_000 + i as u16
}

/// The simulated reflector's static sealing secret (fixed: simulations are reproducible).
fn sim_reflector_secret() -> ReflectorSecret {
    ReflectorSecret::from_bytes([0x5e; 32])
}

/// The simulated reflector's attestation key (fixed, like its sealing secret).
pub fn sim_attestation_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[0xa7; 32])
}

/// The key a simulated agent seals its platform arm to (`TestSpec::reflector_key`).
pub fn sim_reflector_key() -> ReflectorKey {
    sim_reflector_secret().public()
}

/// Runs one call test — the agent's real `CallTest`, every arm, handshakes, closes, the count
/// exchange, report and verdict — through `impairment`, against the collector's real reflector
/// core. Datagrams to the reflector host go to the reflector; datagrams to `spec.relay_server`
/// go to a STUN server that answers Binding requests as any would (the reflector's own
/// responder stands in for it). The reflector answers sealed platform arms to
/// [`sim_reflector_key`] as well as bare ones. The reflector's clock runs `reflector_offset_us` ahead of the
/// agent's, as unsynchronised clocks do.
pub fn simulate_call(
    spec: &TestSpec,
    impairment: ImpairmentConfig,
    reflector_offset_us: u64,
    seed: u64,
) -> Result<CallRun> {
    simulate_call_observed(spec, impairment, reflector_offset_us, seed, &mut |_| {})
}

/// [`simulate_call`], telling `observe` of every datagram as its sender sends it (a capture
/// point at each end, before the network).
pub fn simulate_call_observed(
    spec: &TestSpec,
    impairment: ImpairmentConfig,
    reflector_offset_us: u64,
    seed: u64,
    observe: &mut dyn FnMut(WireEvent<'_>),
) -> Result<CallRun> {
    let mut model = Impairment::new(impairment).map_err(|e| anyhow!("impairment: {e}"))?;
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&seed.to_be_bytes());
    let started_at = DateTime::from_timestamp(1_760_000_000, 0).unwrap_or_default();
    // The simulated reflector attests every address as ZZ/AS0, on the agent's wall clock.
    let attester = Attester::new(
        sim_attestation_key(),
        Box::new(|_| callwatch_reflector::AttestedRegion::UNKNOWN),
        started_at.timestamp_micros() - i64::try_from(reflector_offset_us).unwrap_or(0),
    );
    let mut reflector = Reflector::new(secret, Limits::default())
        .with_seal(sim_reflector_secret())
        .with_attestation(attester);
    let mut test = CallTest::new(spec, CallRandom::from_seed(seed), started_at, 0)
        .map_err(|e| anyhow!("{e}"))?;
    let arms = test.arms();
    let mut queue: BinaryHeap<Reverse<Event>> = BinaryHeap::new();
    let mut order = 0u64;
    let mut now = 0u64;
    let mut push = |queue: &mut BinaryHeap<Reverse<Event>>,
                    arm,
                    up,
                    deliveries: Vec<crate::emulator::Delivery>| {
        for d in deliveries {
            order += 1;
            queue.push(Reverse(Event {
                at_us: d.at.as_micros() as u64,
                order,
                arm,
                up,
                bytes: d.bytes,
            }));
        }
    };
    // Bounded: a test ends by itself within its duration plus retries; this cap only guards
    // against a bug turning into an endless loop.
    for _step in 0..50_000_000u64 {
        while let Some(t) = test.poll_transmit(now) {
            observe(WireEvent {
                at_us: now,
                arm: t.arm,
                up: true,
                bytes: &t.datagram,
            });
            let ports = UdpPorts {
                src: agent_port(t.arm),
                dst: arms[t.arm].peer.port(),
            };
            let out = model.on_datagram(
                Duration::from_micros(now),
                Direction::Up,
                &t.datagram,
                ports,
            );
            push(&mut queue, t.arm, true, out);
        }
        if test.is_done() {
            let (report, records) = test.finish_with_records();
            return Ok(CallRun {
                report,
                records,
                truth: model.ground_truth(),
            });
        }
        let next_timer = test.poll_timeout();
        let next_event = queue.peek().map(|Reverse(e)| e.at_us);
        now = match (next_timer, next_event) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).ok_or_else(|| anyhow!("simulation stalled"))?,
        }
        .max(now);
        while queue.peek().is_some_and(|Reverse(e)| e.at_us <= now) {
            let Some(Reverse(ev)) = queue.pop() else {
                break;
            };
            if !ev.up {
                test.handle_datagram(ev.arm, now, &ev.bytes);
                continue;
            }
            let src = SocketAddr::from(([127, 0, 0, 1], agent_port(ev.arm)));
            let peer = arms[ev.arm].peer;
            let answer = if Some(peer) == spec.relay_server {
                stun_binding_success(&ev.bytes, src)
            } else {
                reflector.handle(now + reflector_offset_us, src, &ev.bytes)
            };
            if let Some(reply) = answer {
                observe(WireEvent {
                    at_us: now,
                    arm: ev.arm,
                    up: false,
                    bytes: &reply,
                });
                let ports = UdpPorts {
                    src: peer.port(),
                    dst: agent_port(ev.arm),
                };
                let out =
                    model.on_datagram(Duration::from_micros(now), Direction::Down, &reply, ports);
                push(&mut queue, ev.arm, false, out);
            }
        }
    }
    Err(anyhow!("simulation did not finish"))
}
