//! The whole call test as one sans-IO state machine: every arm (platform, control, the
//! platform's relay and its neutral reference), their handshakes, closes and the count exchange,
//! the report and the verdict.
//!
//! It is shaped like `quinn-proto`'s `Connection` and str0m's `Rtc`: the caller feeds it
//! `(arm, now, datagram)` with [`CallTest::handle_datagram`], drains
//! [`CallTest::poll_transmit`] (which says which arm's socket each datagram leaves by), sleeps
//! until [`CallTest::poll_timeout`], and repeats until [`CallTest::is_done`]; then
//! [`CallTest::finish`] gives the report. It reads no clock, opens no socket and draws no random
//! number: time comes in as `now_us` (µs on the caller's monotonic clock), randomness as
//! [`CallRandom`]. The real driver ([`super::driver`]) and the simulator in `tests/` run this
//! same code.
//!
//! Rules:
//! 1. Every arm runs its own session ([`Session`] towards the reflector, [`StunSession`]
//!    towards a STUN server) from the same start.
//! 2. **Count exchange.** When every arm is done and the platform arm was accepted but its
//!    `CloseAck` never came back, the test asks the reflector for the platform session's count
//!    through the control arm (`CountQuery`, authenticated by both sessions' cookies), every
//!    [`COUNT_QUERY_RETRY_US`] at most [`COUNT_QUERY_ATTEMPTS`] times. Without any final count
//!    the loss split is reported unknown, never guessed.
//! 3. **Attestation.** After the count exchange, the test asks the reflector, through the
//!    control arm's session (`AttestQuery`, authenticated by its cookie), for a signed
//!    attestation of the region its probes came from ([`callwatch_proto::attest`]) (a test
//!    with one arm only, the generic test, asks on that arm), every
//!    [`ATTEST_RETRY_US`] at most [`ATTEST_ATTEMPTS`] times, and puts it in the report. No
//!    answer (a reflector without an attestation key, a lost datagram): a report without one.
//! 4. **Every test that reached the reference is a report.** An arm whose handshake went
//!    unanswered is `blocked`, one whose replies stopped for good is `dark` from that moment, a
//!    refused one `refused`; the verdict (see [`crate::verdict::judge_call`]) turns that into a
//!    finding. Only a test in which nothing answered at all, against a reflector never reached
//!    before, is an error ([`TestError::Unreachable`]): it names the address to check; if the
//!    reflector refused an arm, the error says it is busy ([`SessionError::Rejected`]), never
//!    that the path is blocked.

use super::session::{ArmSession, Progress, Session, SessionConfig, SessionError};
use super::stun::{StunConfig, StunSession};
use super::{TestError, TestSpec, AGENT_VERSION};
use crate::metrics::{stream_report, Codec, StreamRecord};
use crate::verdict::{judge_call, ArmEvidence, CallEvidence, VerdictConfig};
use callwatch_proto::attest::{Claim, RegionAttestation};
use callwatch_proto::framing::{neutral_session_id, Framing};
use callwatch_proto::pathtoken::{self, PathToken};
use callwatch_proto::probe::{AttestQuery, CountQuery, Packet, RejectReason};
use callwatch_proto::probe::{FEATURE_PATH_TOKEN, FEATURE_SUBDIVISION};
use callwatch_proto::profile::profile;
use callwatch_proto::report::{StreamKind, StreamOutcome, VerdictRule, SCHEMA_VERSION};
use callwatch_proto::{CallReport, ReportId, Role, StreamReport, Verdict};
use chrono::{DateTime, Utc};
use std::net::SocketAddr;

/// STUN Binding requests sent to the platform's relay, and to its reference, per test.
pub const RELAY_REQUESTS: u32 = 10;
pub const COUNT_QUERY_RETRY_US: u64 = 200_000;
pub const COUNT_QUERY_ATTEMPTS: u32 = 5;
/// Attestation queries: a lost query is retried soon; a lost answer is answered again only a
/// second later (the reflector attests a session at most once a second), which the last attempt
/// reaches. A reflector that never answers costs a test at most 1.4 s.
pub const ATTEST_RETRY_US: u64 = 350_000;
pub const ATTEST_ATTEMPTS: u32 = 4;
const _: () = assert!(
    (ATTEST_ATTEMPTS as u64 - 1) * ATTEST_RETRY_US > 1_000_000,
    "the last attempt comes after the reflector's 1 s"
);
/// A silence that lasts to the end of a stream and is at least this long makes it `dark`.
pub const DARK_MIN_US: u64 = 1_000_000;
/// ... and holds at least this many probes (so a long interval does not make one loss a cut).
pub const DARK_MIN_PROBES: usize = 5;

/// The randomness a call test needs, drawn by the caller (so the simulator can seed it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallRandom {
    pub report_id: [u8; 16],
    /// Session ids of the platform and control arms (made STUN-free by `neutral_session_id`).
    pub session_ids: [u64; 2],
    /// Transaction-id tags of the relay and its reference.
    pub stun_tags: [[u8; 8]; 2],
    /// Per-test seeds of the platform and control arms' wire dress (`Session::dressed`): the
    /// framing's tags and SSRC, RTP starts, high-entropy padding, the preamble's random fields.
    pub wire_seeds: [u64; 2],
    /// The platform arm's secret for sealing (its ephemeral keys and nonces).
    pub seal_seed: [u8; 32],
}

impl CallRandom {
    pub fn draw(rng: &mut impl rand::Rng) -> CallRandom {
        CallRandom {
            report_id: rng.gen(),
            session_ids: [rng.gen(), rng.gen()],
            stun_tags: [rng.gen(), rng.gen()],
            wire_seeds: [rng.gen(), rng.gen()],
            seal_seed: rng.gen(),
        }
    }

    /// Deterministic randomness from one seed, for simulations and tests.
    pub fn from_seed(seed: u64) -> CallRandom {
        use rand::SeedableRng;
        CallRandom::draw(&mut rand::rngs::StdRng::seed_from_u64(seed))
    }
}

/// One datagram to send on one arm's socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub arm: usize,
    pub datagram: Vec<u8>,
}

/// What the driver needs to know of an arm: its role and where its socket is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmPlan {
    pub role: Role,
    pub peer: SocketAddr,
}

enum Engine {
    Reflector(Session),
    Stun(StunSession),
}

impl Engine {
    fn arm(&mut self) -> &mut dyn ArmSession {
        match self {
            Engine::Reflector(s) => s,
            Engine::Stun(s) => s,
        }
    }

    fn arm_ref(&self) -> &dyn ArmSession {
        match self {
            Engine::Reflector(s) => s,
            Engine::Stun(s) => s,
        }
    }
}

struct CallArm {
    plan: ArmPlan,
    engine: Engine,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CountExchange {
    /// Not started (waits until every arm is done).
    Pending,
    Asking {
        attempts: u32,
        next_us: u64,
    },
    Done,
}

/// One call test, sans I/O.
pub struct CallTest {
    spec: TestSpec,
    arms: Vec<CallArm>,
    started_at: DateTime<Utc>,
    report_id: ReportId,
    count: CountExchange,
    /// The attestation exchange (rule 3), after the count exchange.
    attest: CountExchange,
    attestation: Option<RegionAttestation>,
    /// The path token that came with the attestation (rule 3), for the report's envelope.
    path_token: Option<PathToken>,
    /// Whether the platform arm's cores are sealed to the reflector's key.
    sealed: bool,
}

impl CallTest {
    /// Plans the test's arms from `spec`. `now_us` is the caller's clock at the start;
    /// `started_at` the wall-clock time written into the report.
    pub fn new(
        spec: &TestSpec,
        random: CallRandom,
        started_at: DateTime<Utc>,
        now_us: u64,
    ) -> Result<CallTest, TestError> {
        spec.validate()?;
        let cfg = SessionConfig {
            interval_ms: spec.interval(),
            size: spec.wire_sizes().max(),
            duration_ms: spec.duration_ms,
            grace_ms: spec.grace_ms,
        };
        let mut arms = Vec::new();
        let mut sealed = false;
        for (i, (role, framing, peer)) in spec.arms().into_iter().enumerate() {
            // Every arm's session id keeps its bare packets free of a STUN look-alike header.
            let id = neutral_session_id(random.session_ids[i.min(1)]);
            // Each arm dressed for this test: fresh tags, SSRC and RTP starts, random padding, and
            // the platform's preamble (if its profile has one) on the platform arm.
            let preamble = profile(spec.platform).preamble.as_ref();
            // Only a platform arm in its platform's framing is sealed: it must look like the
            // platform's payload. The control arm stays bare and neutral (docs/DETECTION.md).
            let seal = match (role, &framing) {
                (Role::Platform, f) if *f != Framing::Raw => spec.reflector_key,
                _ => None,
            };
            // Both arms send the same bytes: every arm after the first sends the lengths the
            // first (platform) arm actually puts on the wire, which its framing and seal may
            // round (a padded framing, the smallest core).
            let sizes = match arms.first().map(|a: &CallArm| &a.engine) {
                Some(Engine::Reflector(first)) => {
                    spec.wire_sizes().map(|w| first.actual_wire_len(w))
                }
                _ => spec.wire_sizes(),
            };
            let mut session = Session::new(id, cfg, now_us).with_framing(framing, sizes);
            if let Some(key) = seal {
                session = session.sealed(key, random.seal_seed);
                sealed = true;
            }
            let session = session.dressed(
                random.wire_seeds[i.min(1)],
                preamble.filter(|_| role == Role::Platform),
                u64::try_from(started_at.timestamp()).unwrap_or(0),
            );
            arms.push(CallArm {
                plan: ArmPlan { role, peer },
                engine: Engine::Reflector(session),
            });
        }
        if let Some(server) = spec.relay_server {
            // A handful of requests spread over the test: polite to a third party's server.
            let stun = StunConfig {
                interval_ms: (spec.duration_ms / RELAY_REQUESTS).clamp(1, u32::from(u16::MAX))
                    as u16,
                duration_ms: spec.duration_ms,
                grace_ms: spec.grace_ms,
            };
            let reference = spec.relay_reference();
            for (i, (role, peer)) in [(Role::Relay, server), (Role::RelayReference, reference)]
                .into_iter()
                .enumerate()
            {
                arms.push(CallArm {
                    plan: ArmPlan { role, peer },
                    engine: Engine::Stun(StunSession::new(stun, random.stun_tags[i])),
                });
            }
        }
        Ok(CallTest {
            spec: spec.clone(),
            arms,
            started_at,
            report_id: ReportId(random.report_id),
            count: CountExchange::Pending,
            attest: CountExchange::Pending,
            attestation: None,
            path_token: None,
            sealed,
        })
    }

    /// The arms, in the index order `handle_datagram` and `Transmit::arm` use.
    pub fn arms(&self) -> Vec<ArmPlan> {
        self.arms.iter().map(|a| a.plan).collect()
    }

    fn index_of(&self, role: Role) -> Option<usize> {
        self.arms.iter().position(|a| a.plan.role == role)
    }

    fn reflector_session(&self, role: Role) -> Option<&Session> {
        match &self.arms.get(self.index_of(role)?)?.engine {
            Engine::Reflector(s) => Some(s),
            Engine::Stun(_) => None,
        }
    }

    /// Takes in one datagram that arrived on `arm`'s socket at `now_us`. Anything unexpected is
    /// ignored (and never panics).
    pub fn handle_datagram(&mut self, arm: usize, now_us: u64, datagram: &[u8]) {
        if let CountExchange::Asking { .. } = self.count {
            if Some(arm) == self.index_of(Role::Control) && self.take_count_reply(datagram) {
                return;
            }
        }
        if let CountExchange::Asking { .. } = self.attest {
            if Some(arm) == self.attest_arm() && self.take_attestation(datagram) {
                return;
            }
        }
        if let Some(a) = self.arms.get_mut(arm) {
            a.engine.arm().handle_datagram(now_us, datagram);
        }
    }

    /// A `CountReply` for the platform session, asked through the control session.
    fn take_count_reply(&mut self, datagram: &[u8]) -> bool {
        let (Some(p), Some(c)) = (self.index_of(Role::Platform), self.index_of(Role::Control))
        else {
            return false;
        };
        let Engine::Reflector(control) = &self.arms[c].engine else {
            return false;
        };
        let Ok(core) = control.framing().unwrap(datagram) else {
            return false;
        };
        let control_id = control.id();
        let Engine::Reflector(platform) = &mut self.arms[p].engine else {
            return false;
        };
        match Packet::decode(core) {
            Ok(Packet::CountReply(r)) if r.session == control_id && r.target == platform.id() => {
                platform.set_final_count(r.reflector_received);
                self.count = CountExchange::Done;
                true
            }
            _ => false,
        }
    }

    /// The arm the attestation is asked on: the control arm, or a test's only (unsealed) arm.
    fn attest_arm(&self) -> Option<usize> {
        self.index_of(Role::Control).or_else(|| {
            self.index_of(Role::Platform)
                .filter(|_| !self.sealed && self.arms.len() == 1)
        })
    }

    /// An `Attestation` for the control session and this report (rule 3).
    fn take_attestation(&mut self, datagram: &[u8]) -> bool {
        let Some(Engine::Reflector(control)) = self
            .attest_arm()
            .and_then(|c| self.arms.get(c))
            .map(|a| &a.engine)
        else {
            return false;
        };
        let Ok(core) = control.framing().unwrap(datagram) else {
            return false;
        };
        match Packet::decode(core) {
            Ok(Packet::Attestation(a))
                if a.session == control.id() && a.report_id == self.report_id.0 =>
            {
                let claim = Claim {
                    report_id: a.report_id,
                    country: a.country,
                    asn: a.asn,
                    hour: a.hour,
                    subdivision: a.subdivision,
                    token_digest: a.token.as_ref().map(|t| pathtoken::digest(t)),
                };
                // Not checked here (the agent may not know the key): the collector checks it.
                // The token (sealed to the collector, unreadable here) goes beside the signed
                // report, never in it.
                self.attestation = RegionAttestation::from_signed(&claim, &a.key_id, &a.signature);
                self.path_token = a.token;
                self.attest = CountExchange::Done;
                true
            }
            _ => false,
        }
    }

    /// The attestation query to send, if that exchange is under way and one is due.
    fn attest_query(&mut self, now_us: u64) -> Option<Transmit> {
        if self.count != CountExchange::Done {
            return None;
        }
        if self.attest == CountExchange::Pending {
            let has_cookie = self
                .attest_arm()
                .and_then(|a| match &self.arms.get(a)?.engine {
                    Engine::Reflector(s) => s.cookie(),
                    Engine::Stun(_) => None,
                })
                .is_some();
            self.attest = if has_cookie {
                CountExchange::Asking {
                    attempts: 0,
                    next_us: now_us,
                }
            } else {
                CountExchange::Done
            };
        }
        let CountExchange::Asking { attempts, next_us } = self.attest else {
            return None;
        };
        if now_us < next_us {
            return None;
        }
        if attempts >= ATTEST_ATTEMPTS {
            self.attest = CountExchange::Done;
            return None;
        }
        self.attest = CountExchange::Asking {
            attempts: attempts + 1,
            next_us: now_us + ATTEST_RETRY_US,
        };
        let report_id = self.report_id.0;
        let arm = self.attest_arm()?;
        let Engine::Reflector(control) = &mut self.arms.get_mut(arm)?.engine else {
            return None;
        };
        let query = Packet::AttestQuery(AttestQuery {
            session: control.id(),
            cookie: control.cookie()?,
            report_id,
            with_token: control.reflector_features() & FEATURE_PATH_TOKEN != 0,
            // Only a reflector that says it signs subdivisions is asked for one: an older one
            // would drop the unknown query kind and the report would go unattested.
            with_subdivision: control.reflector_features() & FEATURE_SUBDIVISION != 0,
        });
        let datagram = control.frame(now_us, query);
        Some(Transmit { arm, datagram })
    }

    /// The count query to send, if the exchange is under way and one is due.
    fn count_query(&mut self, now_us: u64) -> Option<Transmit> {
        if self.count == CountExchange::Pending {
            if !self.arms.iter().all(|a| a.engine.arm_ref().is_done()) {
                return None;
            }
            let needed = self
                .reflector_session(Role::Platform)
                .is_some_and(|p| p.cookie().is_some() && !p.has_final_count())
                && self
                    .reflector_session(Role::Control)
                    .is_some_and(|c| c.cookie().is_some());
            self.count = if needed {
                CountExchange::Asking {
                    attempts: 0,
                    next_us: now_us,
                }
            } else {
                CountExchange::Done
            };
        }
        let CountExchange::Asking { attempts, next_us } = self.count else {
            return None;
        };
        if now_us < next_us {
            return None;
        }
        if attempts >= COUNT_QUERY_ATTEMPTS {
            self.count = CountExchange::Done;
            return None;
        }
        self.count = CountExchange::Asking {
            attempts: attempts + 1,
            next_us: now_us + COUNT_QUERY_RETRY_US,
        };
        let platform = self.reflector_session(Role::Platform)?;
        let (target, target_cookie) = (platform.id(), platform.cookie()?);
        let arm = self.index_of(Role::Control)?;
        let Engine::Reflector(control) = &mut self.arms.get_mut(arm)?.engine else {
            return None;
        };
        let query = Packet::CountQuery(CountQuery {
            session: control.id(),
            cookie: control.cookie()?,
            target,
            target_cookie,
        });
        // Framed and padded like the control arm's own packets (no zero-padding fingerprint).
        let datagram = control.frame(now_us, query);
        Some(Transmit { arm, datagram })
    }

    /// The next datagram due at `now_us`, if any; also advances time-driven state. Call until it
    /// returns `None`.
    pub fn poll_transmit(&mut self, now_us: u64) -> Option<Transmit> {
        for (arm, a) in self.arms.iter_mut().enumerate() {
            if let Some(datagram) = a.engine.arm().poll_transmit(now_us) {
                return Some(Transmit { arm, datagram });
            }
        }
        if let Some(t) = self.count_query(now_us) {
            return Some(t);
        }
        self.attest_query(now_us)
    }

    /// When `poll_transmit` next needs calling; `None` once the test is done.
    pub fn poll_timeout(&self) -> Option<u64> {
        let arms = self
            .arms
            .iter()
            .filter_map(|a| a.engine.arm_ref().poll_timeout())
            .min();
        let exchange = match (self.count, self.attest) {
            (CountExchange::Asking { next_us, .. }, _) => Some(next_us),
            // Pending after the count: due at once (the next poll starts it).
            (CountExchange::Done, CountExchange::Pending) => Some(0),
            (CountExchange::Done, CountExchange::Asking { next_us, .. }) => Some(next_us),
            _ => None,
        };
        match (arms, exchange) {
            (Some(a), Some(e)) => Some(a.min(e)),
            (a, e) => a.or(e),
        }
    }

    pub fn is_done(&self) -> bool {
        self.count == CountExchange::Done && self.attest == CountExchange::Done
    }

    /// Live counts per arm, for a progress display.
    pub fn progress(&self) -> Vec<Progress> {
        self.arms
            .iter()
            .map(|a| a.engine.arm_ref().progress())
            .collect()
    }

    /// Why the sealed platform arm could not be answered, when a reflector session told us its
    /// sealing key is not the one the agent sealed to (or that it has none).
    fn seal_key_mismatch(&self) -> Option<String> {
        let ours = self.spec.reflector_key.filter(|_| self.sealed)?;
        let theirs = self.arms.iter().find_map(|a| match &a.engine {
            Engine::Reflector(s) => s.advertised_seal_key_id(),
            Engine::Stun(_) => None,
        })?;
        (theirs != ours.id()).then(|| {
            if theirs == [0; 4] {
                "The reflector has no sealing key, so it could not answer the sealed platform arm; remove reflector_key from the config or update the reflector.".to_string()
            } else {
                format!(
                    "The reflector's sealing key (id {}) is not the configured reflector_key (id {}), so it could not answer the sealed platform arm; set reflector_key to its reflector.pub.",
                    hex::encode(theirs),
                    hex::encode(ours.id())
                )
            }
        })
    }

    /// The report, once done (or abandoned: then whatever was measured so far).
    pub fn finish(self) -> Result<CallReport, TestError> {
        self.finish_with_records().0
    }

    /// [`finish`](Self::finish), and each arm's record (for tests and oracles that need the
    /// packet detail behind the figures).
    pub fn finish_with_records(self) -> (Result<CallReport, TestError>, Vec<(Role, StreamRecord)>) {
        let interval_us = u64::from(self.spec.interval()) * 1000;
        let key_mismatch = self.seal_key_mismatch();
        let results: Vec<ArmResult> = self
            .arms
            .into_iter()
            .map(|arm| ArmResult::of(arm, interval_us))
            .collect();
        let nothing_answered = results.iter().all(|r| {
            r.outcome == StreamOutcome::Blocked || r.record.probes.iter().all(|p| p.reply.is_none())
        });
        // A refusal is an answer: the reflector is there and busy, which is no blocked path.
        let refused = results.iter().find_map(|r| r.refusal);
        let report = if let (true, false, Some(reason)) =
            (nothing_answered, self.spec.reached_before, refused)
        {
            Err(TestError::Session(SessionError::Rejected(reason)))
        } else if nothing_answered && !self.spec.reached_before {
            Err(TestError::Unreachable(self.spec.reflector))
        } else {
            let arm = |role: Role| {
                results
                    .iter()
                    .find(|r| r.role == role)
                    .map(ArmResult::evidence)
            };
            let (verdict, verdict_detail) = match (arm(Role::Platform), arm(Role::Control)) {
                (Some(platform), Some(control)) => {
                    let call = CallEvidence {
                        platform,
                        control,
                        relay: arm(Role::Relay),
                        relay_reference: arm(Role::RelayReference),
                    };
                    let (v, mut d) = judge_call(&call, &VerdictConfig::default());
                    match key_mismatch {
                        // The sealed arm could not be answered whatever the network did: say
                        // so rather than report the silence as a block.
                        Some(reason) => {
                            d.rule = Some(VerdictRule::ReflectorKeyMismatch);
                            d.reason = reason;
                            (Some(Verdict::Inconclusive), Some(d))
                        }
                        None => (Some(v), Some(d)),
                    }
                }
                _ => (None, None),
            };
            let streams: Vec<StreamReport> = results.iter().map(ArmResult::stream).collect();
            Ok(CallReport {
                schema: SCHEMA_VERSION,
                id: self.report_id,
                agent_version: AGENT_VERSION.to_string(),
                platform: self.spec.platform,
                started_at: self.started_at,
                duration_ms: self.spec.duration_ms,
                interval_ms: u32::from(self.spec.interval()),
                payload_bytes: u32::from(self.spec.wire_sizes().max()),
                verdict,
                verdict_detail,
                stream_kind: if self.spec.video {
                    StreamKind::Video
                } else {
                    StreamKind::Voice
                },
                // The arms the verdict judges (the relay arms talk to STUN servers, not to
                // our reflector): loaded if either was, from the figures already made.
                reflector_loaded: streams
                    .iter()
                    .filter(|s| matches!(s.role, Role::Platform | Role::Control))
                    .any(crate::metrics::reflector_loaded),
                streams,
                probes_sealed: self.sealed,
                attestation: self.attestation,
                path_token: self.path_token,
            })
        };
        // The lowest schema its keys need: a collector of an older release stores every report
        // that carries no newer key (an attested subdivision needs 2).
        let report = report.map(|mut r| {
            r.schema = r.lowest_schema();
            r
        });
        let records = results.into_iter().map(|r| (r.role, r.record)).collect();
        (report, records)
    }
}

/// What one arm came to: its record and what became of it.
struct ArmResult {
    role: Role,
    record: StreamRecord,
    outcome: StreamOutcome,
    /// With `outcome = refused`: why the reflector refused it.
    refusal: Option<RejectReason>,
    /// With `outcome = dark`: when its final silence began (agent clock, µs).
    dark_from_us: Option<u64>,
}

impl ArmResult {
    fn of(arm: CallArm, interval_us: u64) -> ArmResult {
        let role = arm.plan.role;
        let refusal = match &arm.engine {
            Engine::Reflector(s) => match s.error() {
                Some(SessionError::Rejected(reason)) => Some(*reason),
                _ => None,
            },
            Engine::Stun(_) => None,
        };
        let (record, outcome) = match arm.engine {
            Engine::Reflector(s) => match s.error().cloned() {
                Some(SessionError::Rejected(_)) => (empty(interval_us), StreamOutcome::Refused),
                Some(SessionError::NoAnswer) => (empty(interval_us), StreamOutcome::Blocked),
                None => match s.finish() {
                    Ok(rec) => (rec, StreamOutcome::Measured),
                    Err(_) => (empty(interval_us), StreamOutcome::Blocked),
                },
            },
            Engine::Stun(s) => {
                let rec = Box::new(s).finish().unwrap_or_else(|_| empty(interval_us));
                let answered = rec.probes.iter().any(|p| p.reply.is_some());
                let outcome = if answered || rec.probes.is_empty() {
                    StreamOutcome::Measured
                } else {
                    StreamOutcome::Blocked
                };
                (rec, outcome)
            }
        };
        let dark_from_us = match (outcome, role) {
            (StreamOutcome::Measured, Role::Platform | Role::Control) => dark_from_us(&record),
            _ => None,
        };
        ArmResult {
            role,
            outcome: if dark_from_us.is_some() {
                StreamOutcome::Dark
            } else {
                outcome
            },
            record,
            refusal,
            dark_from_us,
        }
    }

    fn evidence(&self) -> ArmEvidence<'_> {
        ArmEvidence {
            record: &self.record,
            outcome: self.outcome,
            dark_from_us: self.dark_from_us,
        }
    }

    /// The arm's figures as the report carries them.
    fn stream(&self) -> StreamReport {
        let mut stream = stream_report(self.role, &self.record, Codec::Opus);
        stream.outcome = self.outcome;
        stream.dark_from_ms = self.dark_from_us.and_then(|t| {
            let start = self.record.probes.first()?.scheduled_us;
            u32::try_from(t.saturating_sub(start) / 1000).ok()
        });
        if matches!(self.role, Role::Relay | Role::RelayReference) {
            // A STUN server gives no timestamps: one-way figures would be invented.
            stream.owd_ms = None;
            stream.jitter_ms = None;
            stream.jitter_p95_ms = None;
            stream.jitter_final_ms = None;
            stream.ipdv_ms = None;
        }
        stream
    }
}

fn empty(interval_us: u64) -> StreamRecord {
    StreamRecord {
        interval_us,
        ..StreamRecord::default()
    }
}

/// When a stream went dark for good: the send time (agent clock, µs) of the first probe of a
/// silence that lasted to the end, at least [`DARK_MIN_US`] and [`DARK_MIN_PROBES`] long; its
/// first probe's send time when nothing ever came back. `None` for a stream that answered to
/// the end, or sent nothing.
pub fn dark_from_us(record: &StreamRecord) -> Option<u64> {
    let last_answered = record.probes.iter().rposition(|p| p.reply.is_some());
    let first_silent = last_answered.map_or(0, |i| i + 1);
    let silent = record.probes.get(first_silent..)?;
    let (first, last) = (silent.first()?, silent.last()?);
    let span_us = last.scheduled_us.saturating_sub(first.scheduled_us) + record.interval_us;
    (silent.len() >= DARK_MIN_PROBES && span_us >= DARK_MIN_US).then_some(first.sent_us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{ProbeRecord, ReplyRecord};

    fn rec(answered: &[bool]) -> StreamRecord {
        StreamRecord {
            interval_us: 20_000,
            probes: answered
                .iter()
                .enumerate()
                .map(|(i, &a)| ProbeRecord {
                    seq: i as u32,
                    scheduled_us: 20_000 * i as u64,
                    sent_us: 20_000 * i as u64 + 3,
                    len: 100,
                    reply: a.then_some(ReplyRecord {
                        reflector_rx_us: 0,
                        reflector_tx_us: 0,
                        received_us: 20_000 * i as u64 + 1_000,
                    }),
                })
                .collect(),
            ..StreamRecord::default()
        }
    }

    #[test]
    fn a_long_trailing_silence_is_dark_from_its_first_probe() {
        let mut a = vec![true; 100];
        a.extend(vec![false; 50]); // exactly 1 s
        assert_eq!(dark_from_us(&rec(&a)), Some(100 * 20_000 + 3));
        // Nothing ever answered: dark from the first probe.
        assert_eq!(dark_from_us(&rec(&[false; 60])), Some(3));
    }

    #[test]
    fn short_gaps_and_answered_ends_are_not_dark() {
        let mut a = vec![true; 100];
        a.extend(vec![false; 49]);
        assert_eq!(dark_from_us(&rec(&a)), None);
        let mut a = vec![false; 200];
        a.push(true);
        assert_eq!(dark_from_us(&rec(&a)), None);
        assert_eq!(dark_from_us(&rec(&[])), None);
    }
}
