//! One stream of a call test as a sans-IO state machine.
//!
//! The session is told the time (`now_us`, microseconds on the agent's monotonic clock) and the
//! datagrams that arrived; it answers what to send and when it next wants to be woken. It never
//! touches a socket or a clock, so tests drive it with a simulated clock and a scripted network.
//!
//! Rules:
//! 1. Open: send `Open` every [`OPEN_RETRY_US`] until `Accept` (or `Reject`), at most
//!    [`OPEN_ATTEMPTS`] times.
//! 2. Stream: probe `i` is due at `start + i·interval` — an absolute schedule, so a late send
//!    never shifts the ones after it. Late sends go out at once and their lateness is recorded.
//! 3. Drain: after the last probe, replies are accepted for `grace`; later ones count as `late`.
//! 4. Close: send `Close` until `CloseAck` (the reflector's final count of what it received),
//!    at most [`CLOSE_ATTEMPTS`] times; without it the largest running count seen is used.
//! 5. Dress ([`Session::dressed`]): a platform arm that has a [`Preamble`] sends it before each
//!    `Open` until it is answered, and again every repeat interval if the preamble has one, for
//!    as long as the session runs. Every datagram's core padding is high-entropy bytes from the
//!    arm's seed; an RTP framing counts its sequence number up by one on every datagram
//!    (handshake included) from a random start and its timestamp up per frame on a 48 kHz clock.
//! 6. Seal ([`Session::sealed`]): a platform arm that knows the reflector's key sends every core
//!    sealed ([`callwatch_proto::seal`]): the `Open` to the reflector's static key, everything
//!    after it to the session key its `Accept` brings. Every envelope but a probe is as long as
//!    the stream's longest probe, so neither content nor size tells a handshake from a voice
//!    frame.

use crate::metrics::{ProbeRecord, ReplyRecord, StreamRecord};
use callwatch_proto::framing::{keystream, Framing, Preamble, RtpStamp};
use callwatch_proto::probe::{Close, Cookie, Open, Packet, Probe, RejectReason, SessionId};
use callwatch_proto::probe::{FEATURE_LOAD, MAX_PROBE_LEN, MIN_PROBE_LEN};
use callwatch_proto::profile::StreamShape;
use callwatch_proto::seal::{self, Direction, ReflectorKey};
use thiserror::Error;

pub const OPEN_RETRY_US: u64 = 250_000;
pub const OPEN_ATTEMPTS: u32 = 8;
pub const CLOSE_RETRY_US: u64 = 200_000;
pub const CLOSE_ATTEMPTS: u32 = 5;

/// What a stream asks of the reflector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    pub interval_ms: u16,
    /// Size of the core probe packet; its framing (see [`Session::with_framing`]) adds to it.
    pub size: u16,
    pub duration_ms: u32,
    /// How long replies are awaited after the last probe.
    pub grace_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    #[error("the reflector did not answer {OPEN_ATTEMPTS} session requests (is it running, and is UDP to it allowed?)")]
    NoAnswer,
    #[error("{}", rejected_text(*.0))]
    Rejected(RejectReason),
}

/// What a refusal means, in words a volunteer acts on: a busy reflector is no blocked path.
fn rejected_text(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::Busy => {
            "the reflector is busy: it holds as many test sessions as it takes (from everyone, or \
             from your network); this says nothing about your connection, try again in a few \
             minutes"
        }
        RejectReason::RateLimited => {
            "the reflector is busy: it refused the session as over its rate limit; this says \
             nothing about your connection, try again in a few minutes"
        }
        RejectReason::BadRequest => {
            "the reflector refused the session as malformed (is this agent much older or newer \
             than the reflector?)"
        }
        RejectReason::Other => "the reflector refused the session",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Opening { attempts: u32, next_us: u64 },
    Streaming,
    Draining { until_us: u64 },
    Closing { attempts: u32, next_us: u64 },
    Done,
}

/// Live counts, for a progress display.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Progress {
    pub sent: u32,
    pub total: u32,
    pub received: u32,
    pub last_rtt_ms: Option<f64>,
    /// Probes sent at least [`PROGRESS_OVERDUE_US`] before the latest one: those whose reply
    /// is due by now.
    pub due: u32,
    /// Of the `due` probes, those still unanswered: the loss so far. A probe still in flight
    /// is not lost yet.
    pub overdue: u32,
}

/// How long a probe may go unanswered before a progress display counts it lost (the final
/// figures wait for the whole grace period instead).
pub const PROGRESS_OVERDUE_US: u64 = 1_000_000;

/// (`due`, `overdue`) of [`Progress`] for these probes, in sending order.
pub fn due_and_overdue(probes: &[crate::metrics::ProbeRecord]) -> (u32, u32) {
    let Some(last) = probes.last().map(|p| p.sent_us) else {
        return (0, 0);
    };
    probes
        .iter()
        .take_while(|p| last.saturating_sub(p.sent_us) >= PROGRESS_OVERDUE_US)
        .fold((0, 0), |(due, overdue), p| {
            (due + 1, overdue + u32::from(p.reply.is_none()))
        })
}

/// What the driver needs of any stream's state machine (a reflector session, a STUN arm).
pub trait ArmSession: Send {
    /// The next datagram due at `now_us`, if any; also advances time-driven state.
    fn poll_transmit(&mut self, now_us: u64) -> Option<Vec<u8>>;
    /// When `poll_transmit` next needs calling; `None` once done.
    fn poll_timeout(&self) -> Option<u64>;
    fn handle_datagram(&mut self, now_us: u64, datagram: &[u8]);
    fn is_done(&self) -> bool;
    fn progress(&self) -> Progress;
    /// The record of the stream, once done.
    fn finish(self: Box<Self>) -> Result<StreamRecord, SessionError>;
}

impl ArmSession for Session {
    fn poll_transmit(&mut self, now_us: u64) -> Option<Vec<u8>> {
        Session::poll_transmit(self, now_us)
    }
    fn poll_timeout(&self) -> Option<u64> {
        Session::poll_timeout(self)
    }
    fn handle_datagram(&mut self, now_us: u64, datagram: &[u8]) {
        Session::handle_datagram(self, now_us, datagram)
    }
    fn is_done(&self) -> bool {
        Session::is_done(self)
    }
    fn progress(&self) -> Progress {
        Session::progress(self)
    }
    fn finish(self: Box<Self>) -> Result<StreamRecord, SessionError> {
        Session::finish(*self)
    }
}

/// The on-wire size (UDP payload) of each probe.
#[derive(Clone, Debug, PartialEq)]
pub enum WireSizes {
    /// Every probe this long.
    Fixed(u16),
    /// Drawn per sequence number from a profile's size table (the same on every arm).
    Shape(StreamShape),
}

impl WireSizes {
    fn wire_bytes(&self, seq: u32) -> u16 {
        match self {
            WireSizes::Fixed(n) => *n,
            WireSizes::Shape(s) => s.wire_bytes(seq).unwrap_or(MIN_PROBE_LEN as u16),
        }
    }

    /// The same table with every size `f(size)` (weights and draws unchanged).
    pub fn map(&self, f: impl Fn(u16) -> u16) -> WireSizes {
        match self {
            WireSizes::Fixed(n) => WireSizes::Fixed(f(*n)),
            WireSizes::Shape(s) => {
                let mut shape = s.clone();
                for share in &mut shape.sizes {
                    share.wire_bytes = f(share.wire_bytes);
                }
                WireSizes::Shape(shape)
            }
        }
    }

    /// The largest size any probe will have.
    pub fn max(&self) -> u16 {
        match self {
            WireSizes::Fixed(n) => *n,
            WireSizes::Shape(s) => s.sizes.iter().map(|x| x.wire_bytes).max().unwrap_or(0),
        }
    }
}

/// The longest core packet that, framed, is at most `wire` bytes (padded framings cannot hit
/// every length exactly), kept within the core packet's limits.
pub fn core_len_at_most(framing: &Framing, wire: u16) -> u16 {
    let wire = usize::from(wire);
    (0..4)
        .filter_map(|less| framing.core_len_for_wire(wire.checked_sub(less)?))
        .next()
        .unwrap_or(MIN_PROBE_LEN)
        .clamp(MIN_PROBE_LEN, MAX_PROBE_LEN) as u16
}

/// A preamble and its state: see rule 5.
struct PreambleState {
    preamble: Preamble,
    datagram: Vec<u8>,
    answered: bool,
    /// The `Open` attempt it was last sent before.
    sent_before_attempt: Option<u32>,
    last_sent_us: Option<u64>,
}

pub struct Session {
    id: SessionId,
    cfg: SessionConfig,
    framing: Framing,
    sizes: WireSizes,
    phase: Phase,
    cookie: Cookie,
    start_us: u64,
    interval_us: u64,
    count: u32,
    size: u16,
    record: StreamRecord,
    max_running: Option<u32>,
    final_count: Option<u32>,
    received: u32,
    last_rtt_ms: Option<f64>,
    error: Option<SessionError>,
    accepted: bool,
    created_us: u64,
    /// The arm's seed for padding bytes, once [`Session::dressed`]; `None`: zero padding.
    wire_seed: Option<u64>,
    /// The RTP stream's random start, for RTP framings once dressed.
    rtp_start: Option<RtpStamp>,
    /// Framed datagrams sent so far (RTP sequence offset, padding nonce).
    datagrams: u32,
    /// Boxed: most arms have none, and the session lives in an enum beside a smaller one.
    preamble: Option<Box<PreambleState>>,
    /// Sealing of the cores (rule 6), once [`Session::sealed`]; boxed like the preamble.
    seal: Option<Box<SealState>>,
    /// What the reflector's `Accept` said its replies carry ([`FEATURE_LOAD`]).
    reflector_features: u8,
    /// The id of the sealing key the reflector's `Accept` advertised.
    reflector_seal_key_id: Option<[u8; 4]>,
}

/// Rule 6: the keys and counters of a sealed session.
struct SealState {
    reflector: ReflectorKey,
    /// The caller's secret for this session's ephemeral keys and nonces.
    seed: [u8; seal::KEY_LEN],
    /// The answer key of every `Open` sent (an `Accept` may answer any of them).
    open_keys: Vec<[u8; seal::KEY_LEN]>,
    /// The session key, from the `Accept`.
    key: Option<[u8; seal::KEY_LEN]>,
    /// Envelopes sealed so far (the nonce and ephemeral-key counter).
    sealed: u64,
}

impl SealState {
    /// `core` (the encoding of `packet`) as a sealed envelope `len` bytes long at least.
    fn envelope(&mut self, packet: &Packet, core: &[u8], len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len.max(seal::OPEN_ENVELOPE_MIN));
        self.sealed += 1;
        match (packet, self.key) {
            (Packet::Open(_), _) => {
                let ephemeral = seal::derive(&self.seed, true, self.sealed);
                let k0 = seal::seal_open(&self.reflector, ephemeral, core, len, &mut out);
                self.open_keys.push(k0);
            }
            (_, Some(key)) => {
                let mut nonce = [0u8; seal::NONCE_LEN];
                nonce.copy_from_slice(
                    &seal::derive(&self.seed, false, self.sealed)[..seal::NONCE_LEN],
                );
                seal::seal(&key, Direction::Agent, nonce, core, len, &mut out);
            }
            // Nothing but an Open is sent before the Accept brought the key.
            (_, None) => {}
        }
        out
    }

    /// The plaintext of a sealed answer to session `id`, taking the session key from its
    /// `Accept`; `None` if it is not one.
    fn open(&mut self, id: SessionId, envelope: &[u8]) -> Option<Vec<u8>> {
        if let Some(key) = self.key {
            return seal::unseal(&key, Direction::Reflector, envelope).map(|(_, p)| p);
        }
        for k0 in self.open_keys.iter().rev() {
            let (_, plain) = seal::unseal(k0, Direction::Reflector, envelope)?;
            match Packet::decode_prefix(&plain) {
                Ok((Packet::Accept(a), used)) if a.session == id => {
                    let key = plain.get(used..used + seal::KEY_LEN)?;
                    self.key = key.try_into().ok();
                    return Some(plain);
                }
                Ok((Packet::Reject(r), _)) if r.session == id => return Some(plain),
                _ => {}
            }
        }
        None
    }
}

impl Session {
    pub fn new(id: SessionId, cfg: SessionConfig, now_us: u64) -> Session {
        Session {
            id,
            cfg,
            framing: Framing::Raw,
            sizes: WireSizes::Fixed(cfg.size),
            phase: Phase::Opening {
                attempts: 0,
                next_us: now_us,
            },
            cookie: [0; 16],
            start_us: 0,
            interval_us: cfg.interval_ms as u64 * 1000,
            count: 0,
            size: cfg.size,
            record: StreamRecord {
                interval_us: cfg.interval_ms as u64 * 1000,
                ..StreamRecord::default()
            },
            max_running: None,
            final_count: None,
            received: 0,
            last_rtt_ms: None,
            error: None,
            accepted: false,
            created_us: now_us,
            wire_seed: None,
            rtp_start: None,
            datagrams: 0,
            preamble: None,
            seal: None,
            reflector_features: 0,
            reflector_seal_key_id: None,
        }
    }

    /// Sends every packet of this session in `framing` (and expects replies in it), each probe
    /// `sizes` long on the wire, framing included.
    pub fn with_framing(mut self, framing: Framing, sizes: WireSizes) -> Self {
        self.cfg.size = core_len_at_most(&framing, sizes.max());
        self.size = self.cfg.size;
        self.framing = framing;
        self.sizes = sizes;
        self
    }

    /// Seals every core of this session to `reflector`'s key (rule 6), after
    /// [`Session::with_framing`]; `seed` is the caller's fresh secret for its ephemeral keys and
    /// nonces. Each probe stays as long on the wire as the profile says: the nonce comes out of
    /// the core's padding.
    pub fn sealed(mut self, reflector: ReflectorKey, seed: [u8; seal::KEY_LEN]) -> Self {
        self.seal = Some(Box::new(SealState {
            reflector,
            seed,
            open_keys: Vec::new(),
            key: None,
            sealed: 0,
        }));
        self.cfg.size = self.core_len_for(self.sizes.max());
        self.size = self.cfg.size;
        self
    }

    /// Whether the cores are sealed.
    pub fn is_sealed(&self) -> bool {
        self.seal.is_some()
    }

    /// The id of the sealing key the reflector advertised when it accepted this session
    /// (zeros: it has none), once accepted.
    pub fn advertised_seal_key_id(&self) -> Option<[u8; 4]> {
        self.reflector_seal_key_id
    }

    /// The longest core that, sealed (if it is) and framed, is at most `wire` bytes.
    fn core_len_for(&self, wire: u16) -> u16 {
        let framed = core_len_at_most(&self.framing, wire);
        match self.seal {
            Some(_) => framed
                .saturating_sub(seal::KEYED_OVERHEAD as u16)
                .max(MIN_PROBE_LEN as u16),
            None => framed,
        }
    }

    /// How long on the wire a probe meant to be `nominal` bytes is in this session's framing
    /// (and seal): a padded framing or the smallest core cannot hit every length. Another arm
    /// sent these lengths sends the same bytes as this one.
    pub fn actual_wire_len(&self, nominal: u16) -> u16 {
        let core = self.core_len_for(nominal).min(self.size);
        u16::try_from(self.wire_len_of(core)).unwrap_or(u16::MAX)
    }

    /// Length on the wire of a probe whose core is `core_len` bytes.
    fn wire_len_of(&self, core_len: u16) -> usize {
        let sealed = match self.seal {
            Some(_) => usize::from(core_len) + seal::KEYED_OVERHEAD,
            None => usize::from(core_len),
        };
        self.framing.wire_len(sealed)
    }

    /// Dresses the session for one test (rule 5), after [`Session::with_framing`]: the framing's
    /// per-test values and the padding and RTP starts come from `seed` (the caller's random
    /// number), and `preamble`, if any, is built from the dressed framing, `seed` and
    /// `unix_time_s` (the caller's wall clock, for a TURN username's expiry). A preamble the
    /// framing cannot carry is left out.
    pub fn dressed(mut self, seed: u64, preamble: Option<&Preamble>, unix_time_s: u64) -> Self {
        self.framing = self.framing.for_test(seed);
        self.wire_seed = Some(seed);
        self.rtp_start = self.framing.has_rtp().then(|| RtpStamp::start(seed));
        self.preamble = preamble.and_then(|p| {
            Some(Box::new(PreambleState {
                preamble: p.clone(),
                datagram: p.datagram(&self.framing, seed, unix_time_s)?,
                answered: false,
                sent_before_attempt: None,
                last_sent_us: None,
            }))
        });
        self
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The reflector's cookie, once it accepted the session (the session's secret, with which
    /// its count can be asked for through another session).
    /// What the reflector's `Accept` said it offers (`Accept::features`; 0 before one).
    pub fn reflector_features(&self) -> u8 {
        self.reflector_features
    }

    pub fn cookie(&self) -> Option<Cookie> {
        self.accepted.then_some(self.cookie)
    }

    /// Whether the reflector's final count (`CloseAck`, or a `CountReply` given to
    /// [`set_final_count`](Self::set_final_count)) has arrived.
    pub fn has_final_count(&self) -> bool {
        self.final_count.is_some()
    }

    /// The reflector's final count, learnt through another session's `CountQuery`.
    pub fn set_final_count(&mut self, received: u32) {
        self.final_count = Some(received);
    }

    /// The error that ended the session, if one did (no answer, refused).
    pub fn error(&self) -> Option<&SessionError> {
        self.error.as_ref()
    }

    /// The framing this session's packets travel in.
    pub fn framing(&self) -> &Framing {
        &self.framing
    }

    /// `packet` as this session puts it on the wire: its padding filled like every other
    /// packet's, in the session's framing. Also for packets the session does not send itself
    /// (the count query a call test sends through the control arm's session).
    pub fn frame(&mut self, now_us: u64, packet: Packet) -> Vec<u8> {
        let mut core = packet.encode();
        if let Some(seed) = self.wire_seed {
            let fields = packet.fields_len().min(core.len());
            keystream(seed, u64::from(self.datagrams), &mut core[fields..]);
        }
        if let Some(seal) = self.seal.as_mut() {
            // Every envelope as long as the stream's longest probe (an Open at least as long as
            // its key and core): sizes say nothing about the packet kind.
            let probe_len = usize::from(self.size) + seal::KEYED_OVERHEAD;
            let len = match packet {
                Packet::Probe(_) => core.len() + seal::KEYED_OVERHEAD,
                _ => probe_len,
            };
            core = seal.envelope(&packet, &core, len);
        }
        let mut out = Vec::with_capacity(self.framing.wire_len(core.len()));
        match self.rtp_start {
            Some(start) => {
                // One frame of the stream's interval per step, on RTP's 48 kHz clock for Opus.
                let frame_us = self.interval_us.max(1);
                let frames = now_us.saturating_sub(self.created_us) / frame_us;
                let ticks = frames.wrapping_mul(frame_us * 48 / 1000);
                let stamp = RtpStamp {
                    seq: start.seq.wrapping_add(self.datagrams as u16),
                    timestamp: start.timestamp.wrapping_add(ticks as u32),
                };
                self.framing.wrap_stamped(&core, stamp, &mut out);
            }
            None => self.framing.wrap(&core, &mut out),
        }
        self.datagrams = self.datagrams.wrapping_add(1);
        out
    }

    /// The preamble, if one is due at `now_us` (rule 5).
    fn due_preamble(&mut self, now_us: u64) -> Option<Vec<u8>> {
        let p = self.preamble.as_mut()?;
        let before_open = match self.phase {
            Phase::Done => return None,
            Phase::Opening { attempts, next_us } => {
                now_us >= next_us
                    && attempts < OPEN_ATTEMPTS
                    && p.sent_before_attempt != Some(attempts)
                    && (!p.answered || attempts == 0)
            }
            _ => false,
        };
        let repeat = match (p.preamble.repeat_us(), p.last_sent_us) {
            (Some(every), Some(last)) => now_us >= last.saturating_add(every),
            _ => false,
        };
        if !before_open && !repeat {
            return None;
        }
        if let Phase::Opening { attempts, .. } = self.phase {
            p.sent_before_attempt = Some(attempts);
        }
        p.last_sent_us = Some(now_us);
        Some(p.datagram.clone())
    }

    /// When the preamble is next repeated, if it is.
    fn preamble_repeat_us(&self) -> Option<u64> {
        let p = self.preamble.as_ref()?;
        Some(p.last_sent_us?.saturating_add(p.preamble.repeat_us()?))
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub fn progress(&self) -> Progress {
        let (due, overdue) = due_and_overdue(&self.record.probes);
        Progress {
            sent: self.record.probes.len() as u32,
            total: self
                .count
                .max((self.cfg.duration_ms as u64 * 1000 / self.interval_us.max(1)) as u32),
            received: self.received,
            last_rtt_ms: self.last_rtt_ms,
            due,
            overdue,
        }
    }

    /// When the session next needs [`poll_transmit`](Self::poll_transmit) to be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        let phase = match self.phase {
            Phase::Opening { next_us, .. } | Phase::Closing { next_us, .. } => Some(next_us),
            Phase::Streaming => Some(self.due_us(self.record.probes.len() as u32)),
            Phase::Draining { until_us } => Some(until_us),
            Phase::Done => None,
        }?;
        Some(self.preamble_repeat_us().map_or(phase, |t| t.min(phase)))
    }

    fn due_us(&self, seq: u32) -> u64 {
        self.start_us + seq as u64 * self.interval_us
    }

    /// Advances time-driven state and returns the next datagram due at `now_us`, if any.
    /// Call repeatedly until it returns `None`.
    pub fn poll_transmit(&mut self, now_us: u64) -> Option<Vec<u8>> {
        if let Some(preamble) = self.due_preamble(now_us) {
            return Some(preamble);
        }
        match self.phase {
            Phase::Opening { attempts, next_us } => {
                if now_us < next_us {
                    return None;
                }
                if attempts >= OPEN_ATTEMPTS {
                    self.error = Some(SessionError::NoAnswer);
                    self.phase = Phase::Done;
                    return None;
                }
                self.phase = Phase::Opening {
                    attempts: attempts + 1,
                    next_us: now_us + OPEN_RETRY_US,
                };
                let open = Packet::Open(Open {
                    session: self.id,
                    interval_ms: self.cfg.interval_ms,
                    size: self.cfg.size,
                    duration_ms: self.cfg.duration_ms,
                });
                Some(self.frame(now_us, open))
            }
            Phase::Streaming => {
                let seq = self.record.probes.len() as u32;
                let due = self.due_us(seq);
                if now_us < due {
                    return None;
                }
                let core_len = self.core_len_for(self.sizes.wire_bytes(seq)).min(self.size);
                self.record.probes.push(ProbeRecord {
                    seq,
                    scheduled_us: due,
                    sent_us: now_us,
                    len: self.wire_len_of(core_len) as u16,
                    reply: None,
                });
                if seq + 1 >= self.count {
                    self.phase = Phase::Draining {
                        until_us: self.due_us(seq) + self.cfg.grace_ms as u64 * 1000,
                    };
                }
                let probe = Packet::Probe(Probe {
                    session: self.id,
                    cookie: self.cookie,
                    seq,
                    sent_us: now_us,
                    len: core_len,
                });
                Some(self.frame(now_us, probe))
            }
            Phase::Draining { until_us } => {
                if now_us < until_us {
                    return None;
                }
                self.phase = Phase::Closing {
                    attempts: 0,
                    next_us: now_us,
                };
                self.poll_transmit(now_us)
            }
            Phase::Closing { attempts, next_us } => {
                if now_us < next_us {
                    return None;
                }
                if attempts >= CLOSE_ATTEMPTS {
                    self.phase = Phase::Done;
                    return None;
                }
                self.phase = Phase::Closing {
                    attempts: attempts + 1,
                    next_us: now_us + CLOSE_RETRY_US,
                };
                let close = Packet::Close(Close {
                    session: self.id,
                    cookie: self.cookie,
                    packets_sent: self.record.probes.len() as u32,
                });
                Some(self.frame(now_us, close))
            }
            Phase::Done => None,
        }
    }

    /// Takes in one datagram that arrived at `now_us`. Anything not for this session, or not
    /// expected now, is ignored.
    pub fn handle_datagram(&mut self, now_us: u64, datagram: &[u8]) {
        if let Some(p) = self.preamble.as_mut() {
            if p.preamble.is_answer(&p.datagram, datagram) {
                p.answered = true;
                return;
            }
        }
        let unwrapped = match self.seal {
            Some(_) => self.framing.unwrap_sealed(datagram),
            None => self.framing.unwrap(datagram),
        };
        let Ok(body) = unwrapped else {
            return;
        };
        let id = self.id;
        let decoded = match self.seal.as_mut() {
            None => Packet::decode(body),
            Some(seal) => match seal.open(id, body) {
                Some(plain) => Packet::decode_prefix(&plain).map(|(p, _)| p),
                None => return,
            },
        };
        let Ok(packet) = decoded else {
            return;
        };
        match packet {
            Packet::Accept(a) if a.session == self.id => {
                if let Phase::Opening { .. } = self.phase {
                    self.cookie = a.cookie;
                    self.accepted = true;
                    self.reflector_features = a.features;
                    self.reflector_seal_key_id = Some(a.seal_key_id);
                    // The reflector's grant bounds the stream: never faster, larger or longer.
                    self.interval_us = self.interval_us.max(a.interval_ms as u64 * 1000);
                    self.record.interval_us = self.interval_us;
                    self.size = self.size.min(a.size);
                    let duration_us = (self.cfg.duration_ms.min(a.duration_ms)) as u64 * 1000;
                    self.count = (duration_us / self.interval_us.max(1)).max(1) as u32;
                    self.start_us = now_us;
                    self.phase = Phase::Streaming;
                }
            }
            Packet::Reject(r) if r.session == self.id => {
                if let Phase::Opening { .. } = self.phase {
                    self.error = Some(SessionError::Rejected(r.reason));
                    self.phase = Phase::Done;
                }
            }
            Packet::Reply(r) if r.session == self.id => {
                let Some(probe) = self.record.probes.get_mut(r.seq as usize) else {
                    return; // a reply to a probe never sent: forged or corrupt
                };
                if r.sent_us != probe.sent_us {
                    return; // not our timestamp: not a reply to our probe
                }
                self.max_running = Some(
                    self.max_running
                        .map_or(r.reflector_received, |m| m.max(r.reflector_received)),
                );
                if self.reflector_features & FEATURE_LOAD != 0 {
                    self.record.reflector_drops = self
                        .record
                        .reflector_drops
                        .max(u32::from(r.reflector_drops));
                }
                let in_time = matches!(self.phase, Phase::Streaming | Phase::Draining { .. });
                if probe.reply.is_some() {
                    self.record.duplicates += 1;
                } else if !in_time {
                    self.record.late += 1;
                } else {
                    probe.reply = Some(ReplyRecord {
                        reflector_rx_us: r.reflector_rx_us,
                        reflector_tx_us: r.reflector_tx_us,
                        received_us: now_us,
                    });
                    let hold = r.reflector_tx_us.saturating_sub(r.reflector_rx_us);
                    self.last_rtt_ms = Some(
                        now_us.saturating_sub(probe.sent_us).saturating_sub(hold) as f64 / 1e3,
                    );
                    self.received += 1;
                    self.record.arrival_order.push(r.seq);
                }
            }
            Packet::CloseAck(a) if a.session == self.id => {
                if let Phase::Closing { .. } = self.phase {
                    self.final_count = Some(a.reflector_received);
                    self.phase = Phase::Done;
                }
            }
            _ => {}
        }
    }

    /// The record of everything sent and received, once the session is done (or abandoned).
    pub fn finish(mut self) -> Result<StreamRecord, SessionError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if matches!(self.phase, Phase::Opening { .. }) {
            return Err(SessionError::NoAnswer);
        }
        // The reflector's own count never falls below what it answered; trust the larger. A
        // running count alone is no final count: probes sent after the last reply are unknown.
        self.record.reflector_received = self
            .final_count
            .map(|f| self.max_running.map_or(f, |m| f.max(m)));
        Ok(self.record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_in_flight_are_not_overdue() {
        use crate::metrics::{ProbeRecord, ReplyRecord};
        let probe = |sent_us: u64, answered: bool| ProbeRecord {
            seq: 0,
            scheduled_us: sent_us,
            sent_us,
            len: 100,
            reply: answered.then_some(ReplyRecord {
                reflector_rx_us: 0,
                reflector_tx_us: 0,
                received_us: sent_us + 10_000,
            }),
        };
        assert_eq!(due_and_overdue(&[]), (0, 0));
        // Sent at 0, 0.5 s, 1 s, 2 s (the latest): the first three are due by 2 s only if
        // sent at least 1 s before it — 0, 0.5 and 1 s are; 2 s is in flight.
        let probes = [
            probe(0, true),
            probe(500_000, false),
            probe(1_000_000, false),
            probe(2_000_000, false),
        ];
        assert_eq!(due_and_overdue(&probes), (3, 2));
    }
    use callwatch_proto::probe::{Accept, CloseAck, Reply};

    fn cfg() -> SessionConfig {
        SessionConfig {
            interval_ms: 20,
            size: 172,
            duration_ms: 200,
            grace_ms: 100,
        }
    }

    fn accept(id: u64) -> Vec<u8> {
        Packet::Accept(Accept {
            session: id,
            cookie: [5; 16],
            interval_ms: 20,
            size: 1400,
            duration_ms: 60_000,
            reflector_time_us: 0,
            features: 0,
            seal_key_id: [0; 4],
        })
        .encode()
    }

    #[test]
    fn follows_an_absolute_schedule_and_records_replies() {
        let mut s = Session::new(1, cfg(), 1_000);
        let open = s.poll_transmit(1_000).unwrap();
        assert!(matches!(Packet::decode(&open).unwrap(), Packet::Open(_)));
        assert!(s.poll_transmit(1_001).is_none());
        s.handle_datagram(2_000, &accept(1));
        assert_eq!(s.poll_timeout(), Some(2_000));
        // The driver oversleeps the second probe by 7 ms: the third is still due on schedule.
        let mut sent = vec![];
        for now in [2_000u64, 29_000, 42_000, 62_000] {
            while let Some(d) = s.poll_transmit(now) {
                sent.push((now, Packet::decode(&d).unwrap()));
            }
        }
        let seqs: Vec<u32> = sent
            .iter()
            .map(|(_, p)| match p {
                Packet::Probe(p) => p.seq,
                _ => 999,
            })
            .collect();
        assert_eq!(seqs, vec![0, 1, 2, 3]);
        assert_eq!(s.poll_timeout(), Some(2_000 + 4 * 20_000));
        // Reply to probe 1, then a duplicate of it.
        let Packet::Probe(p1) = sent[1].1 else {
            panic!()
        };
        let reply = Packet::Reply(Reply {
            session: 1,
            seq: 1,
            sent_us: p1.sent_us,
            reflector_rx_us: 500,
            reflector_tx_us: 510,
            reflector_received: 2,
            reflector_drops: 0,
            len: 172,
        })
        .encode();
        s.handle_datagram(40_000, &reply);
        s.handle_datagram(41_000, &reply);
        // Finish the stream.
        let mut now = 62_000;
        while !matches!(s.phase, Phase::Closing { .. }) {
            now += 1_000;
            while s.poll_transmit(now).is_some() {}
        }
        s.handle_datagram(
            now,
            &Packet::CloseAck(CloseAck {
                session: 1,
                reflector_received: 9,
            })
            .encode(),
        );
        assert!(s.is_done());
        // A reply after the drain counts as late... but it was a duplicate of seq 1 here.
        let rec = s.finish().unwrap();
        assert_eq!(rec.probes.len(), 10);
        assert_eq!(rec.probes[1].scheduled_us, 22_000);
        assert_eq!(rec.probes[1].sent_us, 29_000);
        assert_eq!(rec.probes[2].scheduled_us, 42_000);
        assert_eq!(rec.probes[1].reply.unwrap().received_us, 40_000);
        assert_eq!(rec.duplicates, 1);
        assert_eq!(rec.arrival_order, vec![1]);
        assert_eq!(rec.reflector_received, Some(9));
    }

    #[test]
    fn gives_up_without_answer() {
        let mut s = Session::new(1, cfg(), 0);
        let mut now = 0;
        let mut opens = 0;
        while !s.is_done() {
            while s.poll_transmit(now).is_some() {
                opens += 1;
            }
            now = s.poll_timeout().unwrap_or(now);
        }
        assert_eq!(opens, OPEN_ATTEMPTS);
        assert_eq!(s.finish().unwrap_err(), SessionError::NoAnswer);
    }

    #[test]
    fn ignores_replies_for_other_sessions_and_forged_timestamps() {
        let mut s = Session::new(1, cfg(), 0);
        s.poll_transmit(0);
        s.handle_datagram(0, &accept(2)); // another session's accept
        assert!(matches!(s.phase, Phase::Opening { .. }));
        s.handle_datagram(0, &accept(1));
        let d = s.poll_transmit(0).unwrap();
        let Packet::Probe(p) = Packet::decode(&d).unwrap() else {
            panic!()
        };
        let forged = Packet::Reply(Reply {
            session: 1,
            seq: 0,
            sent_us: p.sent_us + 1,
            reflector_rx_us: 0,
            reflector_tx_us: 0,
            reflector_received: 1,
            reflector_drops: 0,
            len: 172,
        })
        .encode();
        s.handle_datagram(10, &forged);
        s.handle_datagram(10, b"garbage");
        assert_eq!(s.progress().received, 0);
    }

    /// Reflector drops are read only from a reflector whose `Accept` says its replies carry
    /// them: an older one echoes probe padding in those bytes.
    #[test]
    fn reflector_drops_count_only_when_the_reflector_says_it_sends_them() {
        for features in [0, FEATURE_LOAD] {
            let mut s = Session::new(1, cfg(), 0);
            s.poll_transmit(0);
            let mut acc = accept(1);
            acc[42] = features;
            s.handle_datagram(0, &acc);
            let d = s.poll_transmit(0).unwrap();
            let Packet::Probe(p) = Packet::decode(&d).unwrap() else {
                panic!()
            };
            let reply = Packet::Reply(Reply {
                session: 1,
                seq: 0,
                sent_us: p.sent_us,
                reflector_rx_us: 100,
                reflector_tx_us: 150,
                reflector_received: 1,
                reflector_drops: 0x5A5A, // what padding could look like
                len: 172,
            })
            .encode();
            s.handle_datagram(1_000, &reply);
            assert_eq!(s.progress().received, 1);
            let drops = s.record.reflector_drops;
            assert_eq!(drops, if features == 0 { 0 } else { 0x5A5A }, "{features}");
        }
    }

    fn accept_framed(framing: &Framing, id: u64) -> Vec<u8> {
        let mut out = Vec::new();
        framing.wrap(&accept(id), &mut out);
        out
    }

    #[test]
    fn a_telegram_arm_says_hello_before_each_open_until_answered_then_every_10_s() {
        use callwatch_proto::framing::{detect_any, telegram_hello_answer, Detected};
        use callwatch_proto::framing::{PreambleMessage, TELEGRAM_HELLO_LEN};
        let p = callwatch_proto::profile::profile(callwatch_proto::Platform::Telegram);
        let mut s = Session::new(1, cfg(), 0)
            .with_framing(p.framing.clone(), WireSizes::Fixed(120))
            .dressed(42, p.preamble.as_ref(), 1_760_000_000);
        assert_ne!(s.framing(), &p.framing, "fresh tags per test");
        let hello = s.poll_transmit(0).unwrap();
        assert_eq!(hello.len(), TELEGRAM_HELLO_LEN);
        let Some(Detected::Preamble(PreambleMessage::TelegramHello { peer_tag, query_id })) =
            detect_any(&hello)
        else {
            panic!("first datagram is not a hello")
        };
        let open = s.poll_transmit(0).unwrap();
        assert!(matches!(
            Packet::decode(s.framing().unwrap(&open).unwrap()),
            Ok(Packet::Open(_))
        ));
        assert_eq!(s.poll_transmit(0), None);
        // Unanswered: the retry is preceded by the hello again.
        assert_eq!(s.poll_transmit(OPEN_RETRY_US).as_ref(), Some(&hello));
        assert!(s.poll_transmit(OPEN_RETRY_US).is_some());
        // Answered: the next retry goes without it.
        s.handle_datagram(
            OPEN_RETRY_US + 1,
            &telegram_hello_answer(&peer_tag, query_id),
        );
        let retry = s.poll_transmit(2 * OPEN_RETRY_US).unwrap();
        assert_ne!(retry, hello);
        let framing = s.framing().clone();
        s.handle_datagram(2 * OPEN_RETRY_US, &accept_framed(&framing, 1));
        assert!(matches!(s.phase, Phase::Streaming));
        // Over a 25 s stream: the first hello, then one every 10 s, until the session is done.
        let mut long = cfg();
        long.duration_ms = 25_000;
        let mut s = Session::new(1, long, 0)
            .with_framing(p.framing.clone(), WireSizes::Fixed(120))
            .dressed(42, p.preamble.as_ref(), 0);
        let mut hellos = vec![];
        let mut now = 0;
        while !s.is_done() && now < 40_000_000 {
            while let Some(d) = s.poll_transmit(now) {
                if d == hello {
                    hellos.push(now);
                } else if let Ok(Packet::Open(_)) =
                    Packet::decode(framing.unwrap(&d).unwrap_or(&[]))
                {
                    s.handle_datagram(now, &telegram_hello_answer(&peer_tag, query_id));
                    s.handle_datagram(now, &accept_framed(&framing, 1));
                }
            }
            now = s.poll_timeout().unwrap_or(now + 1).max(now + 1);
        }
        assert_eq!(hellos, [0, 10_000_000, 20_000_000]);
    }

    #[test]
    fn an_rtp_arm_counts_every_datagram_from_a_random_start() {
        use callwatch_proto::framing::rtp_stamp;
        let framing = Framing::Rtp {
            payload_type: 111,
            ssrc: 7,
        };
        let mut s = Session::new(3, cfg(), 1_000)
            .with_framing(framing, WireSizes::Fixed(100))
            .dressed(9, None, 0);
        let open = s.poll_transmit(1_000).unwrap();
        let retry = s.poll_transmit(1_000 + OPEN_RETRY_US).unwrap();
        let framed = s.framing().clone();
        s.handle_datagram(300_000, &accept_framed(&framed, 3));
        let mut sent = vec![open, retry];
        let mut now = 300_000;
        while !s.is_done() {
            while let Some(d) = s.poll_transmit(now) {
                sent.push(d);
            }
            now = s.poll_timeout().unwrap_or(now);
            if matches!(s.phase, Phase::Closing { attempts: 1, .. }) {
                break;
            }
        }
        let stamps: Vec<_> = sent.iter().map(|d| rtp_stamp(d).unwrap()).collect();
        let ssrcs: Vec<_> = sent.iter().map(|d| &d[8..12]).collect();
        assert!(ssrcs.iter().all(|x| *x == ssrcs[0]));
        assert_ne!(ssrcs[0], &7u32.to_be_bytes(), "a per-test SSRC");
        for w in stamps.windows(2) {
            assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "+1 per datagram");
        }
        // Probes 20 ms apart: 960 ticks apart.
        let probes: Vec<_> = stamps[2..stamps.len() - 1].to_vec();
        for w in probes.windows(2) {
            assert_eq!(w[1].timestamp.wrapping_sub(w[0].timestamp), 960);
        }
        assert_ne!(stamps[0], RtpStamp::default());
        // The padding after each probe's fields is high-entropy, and the probe still decodes.
        let core = framed.unwrap(&sent[3]).unwrap();
        let Ok(Packet::Probe(p)) = Packet::decode(core) else {
            panic!("not a probe")
        };
        assert_eq!(usize::from(p.len), core.len());
        let padding = &core[callwatch_proto::probe::PROBE_HEADER_LEN..];
        assert!(padding.iter().filter(|&&b| b == 0).count() < padding.len() / 8);
    }
}
