//! Reflector logic, sans I/O.
//!
//! Rules, in order of importance:
//! 1. Never amplify: every answer is at most as long as the datagram it answers (`Accept` and
//!    `Reject` are shorter than `Open`, a `Reply` is exactly as long as its `Probe`, `CloseAck`
//!    shorter than `Close`). Anything else gets no answer at all.
//! 2. No cookie, no reflection: an `Open` costs the reflector no state; it answers with a cookie
//!    that is an HMAC over the source address, the session id, the issue time and the granted
//!    limits. Only probes carrying a valid, unexpired cookie for *their* source address create
//!    state and get replies.
//! 3. Bounded: each session is capped in rate (token bucket at the granted interval), duration
//!    and packet size; the session table has a fixed capacity.
//! 4. A session's count can be asked for through another session (`CountQuery`), so that the
//!    agent learns how many probes of a censored arm arrived even when that arm's own answers
//!    cannot reach it. The query must carry a valid cookie for the asking session *and* for the
//!    session asked about (checked against the address that session's probes came from), costs
//!    the asking session a token, and its answer is shorter than the query.
//! 5. A plain STUN Binding request (RFC 8489) is answered with a Binding success response
//!    carrying XOR-MAPPED-ADDRESS, so the reflector host is the neutral reference for the
//!    platforms' own STUN/TURN servers; only requests at least as long as the response are
//!    answered (rule 1), and they create no state.
//! 6. A platform's preamble ([`framing::Preamble`]) is answered without state, as an `Open` is:
//!    a 40-byte Telegram reflector hello with a 40-byte answer ([`framing::telegram_hello_answer`]),
//!    a TURN Allocate request with an Allocate success response, only when that is no longer
//!    than the request (84 bytes for an IPv4 client, 108 for IPv6; the Signal arm's request is
//!    about 124). Neither is ever counted as malformed.
//! 7. An answer is dressed like its request: RTP answers carry the request's sequence number
//!    and timestamp, and a `Reply` carries its `Probe`'s padding bytes (the agent makes them
//!    high-entropy), so the reflector's direction looks like the agent's without a random draw.
//! 8. Inside a platform framing, a core may be *sealed* ([`callwatch_proto::seal`]): an `Open`
//!    envelope under the reflector's static key, answered under the key it carries, and every
//!    later packet from that address under a session key derived from the address (so the
//!    reflector still holds no state before a valid probe). A sealed answer is exactly as long
//!    as its request, like every other. Sealed Opens cost a Diffie–Hellman each and are bounded
//!    to [`SEALED_OPENS_PER_S`] a second. The control arm's bare cores stay bare.
//! 9. With an attestation key ([`Reflector::with_attestation`]), an `AttestQuery` on a session
//!    whose probes arrived (valid cookie, state held for that address) is answered with a signed
//!    [`Attestation`] of the region of the address the probes came from
//!    ([`callwatch_proto::attest`]): country, ASN, the unix hour and the report id, never the
//!    address. At most one a second per session, each also costing the session a token; the
//!    answer (112 bytes) is shorter than the query (128). Given the collector's key
//!    ([`Attester::with_collector_key`]), a query that asks for one (192 bytes) also gets a path
//!    token ([`callwatch_proto::pathtoken`]): the address's /24 or /48 sealed to the collector,
//!    its digest covered by the signature (168 bytes in all).
//! 10. A reply carries the reflector's own residence time and load: `reflector_rx_us` is when
//!     the kernel received the probe (the driver's [`Arrival`]), `reflector_tx_us` when the reply
//!     was made, and `reflector_drops` how many datagrams the kernel dropped on that socket since
//!     the session began. The agent removes the residence from every delay and marks a test taken
//!     under reflector load, so the reflector's queueing is never published as the network's.

use callwatch_proto::attest::Claim;
use callwatch_proto::framing::{self, Detected, Framing, PreambleMessage};
use callwatch_proto::framing::{
    STUN_ATTR_FINGERPRINT, STUN_ATTR_MESSAGE_INTEGRITY, STUN_BINDING_REQUEST, STUN_BINDING_SUCCESS,
};
use callwatch_proto::pathtoken::NetPrefix;
use callwatch_proto::probe::{
    Accept, AttestQuery, Attestation, Close, CloseAck, Cookie, CountQuery, CountReply, Open,
    Packet, Probe, Reject, RejectReason, Reply, SessionId, COOKIE_LEN, MAX_PROBE_LEN,
    MIN_PROBE_LEN, REPLY_HEADER_LEN,
};
use callwatch_proto::seal::{self, Direction, ReflectorKey, ReflectorSecret};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// What the reflector grants a session at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Smallest interval between probes (the rate cap).
    pub min_interval_ms: u16,
    /// Largest probe answered.
    pub max_size: u16,
    /// Longest session.
    pub max_duration_ms: u32,
    /// Most sessions held at once.
    pub max_sessions: usize,
    /// Most sessions held at once for sources in one network prefix (IPv4 /24, IPv6 /48): one
    /// source cannot fill the table and starve everyone else's probes (#15 item 6). An `Open`
    /// from a prefix at its cap is answered `Busy`, as for a full table; a first probe that
    /// would go past it is dropped ([`ReflectorStats::dropped_prefix_full`]).
    ///
    /// The default, 256, is 1/16 of the default table: a prefix may hold several volunteers
    /// behind one NAT (a campus, a carrier-grade NAT) and each call test holds 2–3 sessions (its
    /// arms) for up to its duration plus [`Limits::cookie_grace_ms`], so 256 leaves room for
    /// some 85 tests at once from one /24 — far more than volunteers run — while a flood needs
    /// sixteen prefixes whose addresses it owns (a session needs the cookie sent to its
    /// address, so spoofed sources create none) to fill the table.
    pub max_sessions_per_prefix: usize,
    /// How long a cookie (and a session's state) outlives the granted duration, for the agent's
    /// drain and `Close`.
    pub cookie_grace_ms: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_interval_ms: 5,
            max_size: MAX_PROBE_LEN as u16,
            max_duration_ms: 120_000,
            max_sessions: 4096,
            max_sessions_per_prefix: 256,
            cookie_grace_ms: COOKIE_GRACE_MS,
        }
    }
}

/// When and how a datagram arrived, as the driver knows it (rule 10).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Arrival {
    /// The kernel's receive time, µs on the reflector's clock (no later than the handling).
    pub rx_us: u64,
    /// Datagrams the kernel dropped on this socket so far (its receive queue was full).
    pub socket_drops: u32,
}

/// Counters, for logs and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReflectorStats {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub opens: u64,
    pub probes_reflected: u64,
    pub dropped_malformed: u64,
    pub dropped_bad_cookie: u64,
    pub dropped_rate: u64,
    pub dropped_expired: u64,
    pub dropped_table_full: u64,
    /// Opens answered `Busy` and first probes dropped because their source's prefix held
    /// [`Limits::max_sessions_per_prefix`] sessions already.
    pub dropped_prefix_full: u64,
    pub dropped_unexpected: u64,
    pub count_queries: u64,
    pub stun_bindings: u64,
    /// Preambles answered (Telegram hellos, TURN Allocate requests).
    pub preambles: u64,
    /// Sealed cores answered (rule 8).
    pub sealed: u64,
    /// Attestations signed (rule 9).
    pub attestations: u64,
}

/// Extra time a cookie stays valid past the granted duration, for the agent's drain and close
/// (the default of [`Limits::cookie_grace_ms`]).
const COOKIE_GRACE_MS: u32 = 10_000;
/// Tokens (probes) a session may burst above its granted rate; absorbs network bunching.
const BURST_PROBES: f64 = 25.0;

struct SessionState {
    expires_us: u64,
    interval_us: u64,
    tokens: f64,
    last_refill_us: u64,
    /// Distinct sequence numbers received; duplicates are answered but not counted twice.
    seen: Vec<u64>,
    received: u32,
    /// The socket's kernel drop count when the session's first probe arrived.
    drops_base: u32,
    /// When this session was last given an attestation (rule 9).
    last_attest_us: Option<u64>,
}

impl SessionState {
    /// Refills the token bucket at the granted rate (at most [`BURST_PROBES`]) and takes one
    /// token; `false` when there is none to take.
    fn take_token(&mut self, now_us: u64) -> bool {
        let elapsed = now_us.saturating_sub(self.last_refill_us);
        self.tokens = (self.tokens + elapsed as f64 / self.interval_us as f64).min(BURST_PROBES);
        self.last_refill_us = now_us;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    fn mark(&mut self, seq: u32) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        match self.seen.get_mut(word) {
            Some(w) if *w & (1 << bit) == 0 => {
                *w |= 1 << bit;
                self.received += 1;
                true
            }
            Some(_) => false,
            // Beyond the granted packet count: not counted (the rate cap bounds it anyway).
            None => false,
        }
    }
}

/// The reflector state machine.
pub struct Reflector {
    secret: [u8; 32],
    limits: Limits,
    sessions: HashMap<(SocketAddr, SessionId), SessionState>,
    /// Where each session's probes come from, for `CountQuery` (kept in step with `sessions`).
    addr_of: HashMap<SessionId, SocketAddr>,
    /// Sessions held per source prefix (kept in step with `sessions`; no zero entries).
    per_prefix: HashMap<NetPrefix, usize>,
    /// When a full table was last swept: a flood of Opens or new probes against a full table
    /// costs one sweep per [`FULL_SWEEP_EVERY_US`], not one each.
    last_full_sweep_us: Option<u64>,
    /// The static key of sealed cores (rule 8); `None`: only bare cores are answered.
    seal: Option<ReflectorSecret>,
    /// Its public id, advertised in every `Accept` (zeros without a key).
    seal_key_id: [u8; 4],
    /// The datagram being handled: when and on what socket state it arrived (rule 10).
    arrival: Arrival,
    open_tokens: f64,
    open_refill_us: u64,
    /// Rule 9: the attestation key and region lookup; `None`: no attestations.
    attester: Option<Attester>,
    stats: ReflectorStats,
}

/// The region of an address as the reflector attests it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttestedRegion {
    /// ISO 3166-1 alpha-2, upper case ASCII; `ZZ` unknown.
    pub country: [u8; 2],
    /// 0: unknown.
    pub asn: u32,
    /// The first-level subdivision's code within the country
    /// ([`callwatch_proto::attest::Subdivision`]); all zeros: unknown.
    pub subdivision: callwatch_proto::attest::Subdivision,
}

impl AttestedRegion {
    /// Country `ZZ`, AS0, no subdivision.
    pub const UNKNOWN: AttestedRegion = AttestedRegion {
        country: *b"ZZ",
        asn: 0,
        subdivision: [0; callwatch_proto::attest::SUBDIVISION_LEN],
    };

    /// A country and ASN without a subdivision.
    pub fn new(country: [u8; 2], asn: u32) -> Self {
        AttestedRegion {
            country,
            asn,
            ..Self::UNKNOWN
        }
    }
}

/// The region of an address as the reflector attests it. The collector passes its region lookup.
pub type RegionLookup = Box<dyn Fn(IpAddr) -> AttestedRegion + Send>;

/// What rule 9 needs: the Ed25519 key, the region lookup and the wall clock.
pub struct Attester {
    key: ed25519_dalek::SigningKey,
    lookup: RegionLookup,
    /// Unix time in µs at reflector time 0 (`now_us` is monotonic; the hour is wall time).
    unix_us_at_zero: i64,
    /// The collector's key path tokens are sealed to; `None`: no tokens.
    collector: Option<callwatch_proto::carry::CarryKey>,
}

impl Attester {
    /// `unix_us_at_zero`: unix time (µs) when the reflector's `now_us` was 0.
    pub fn new(key: ed25519_dalek::SigningKey, lookup: RegionLookup, unix_us_at_zero: i64) -> Self {
        Attester {
            key,
            lookup,
            unix_us_at_zero,
            collector: None,
        }
    }

    /// Also makes path tokens, sealed to this collector key (its carry-out key).
    pub fn with_collector_key(mut self, key: callwatch_proto::carry::CarryKey) -> Self {
        self.collector = Some(key);
        self
    }

    fn hour(&self, now_us: u64) -> u32 {
        let unix_us = i64::try_from(now_us)
            .unwrap_or(i64::MAX)
            .saturating_add(self.unix_us_at_zero);
        u32::try_from(unix_us.max(0) / 3_600_000_000).unwrap_or(u32::MAX)
    }
}

/// Least time between two attestations of one session (rule 9).
const ATTEST_EVERY_US: u64 = 1_000_000;

/// Sealed Opens (each costs an X25519 Diffie–Hellman) tried per second at most, and in a burst.
const SEALED_OPENS_PER_S: f64 = 2_000.0;
const SEALED_OPEN_BURST: f64 = 200.0;
/// What the per-address session key of sealed cores is derived from (with the address).
const SESSION_KEY_LABEL: &[u8] = b"callwatch seal v1 session key";

/// How often a full session table is swept for expired sessions, at most.
const FULL_SWEEP_EVERY_US: u64 = 100_000;

impl Reflector {
    /// `secret` keys the cookies; a fresh random one per process is fine (cookies then do not
    /// survive a restart, and agents simply open again).
    pub fn new(secret: [u8; 32], limits: Limits) -> Self {
        Reflector {
            secret,
            limits,
            sessions: HashMap::new(),
            addr_of: HashMap::new(),
            per_prefix: HashMap::new(),
            last_full_sweep_us: None,
            seal: None,
            seal_key_id: [0; 4],
            arrival: Arrival::default(),
            open_tokens: SEALED_OPEN_BURST,
            open_refill_us: 0,
            attester: None,
            stats: ReflectorStats::default(),
        }
    }

    /// Also answers sealed cores inside platform framings (rule 8), with this static key.
    pub fn with_seal(mut self, secret: ReflectorSecret) -> Self {
        self.seal_key_id = secret.public().id();
        self.seal = Some(secret);
        self
    }

    /// Also answers attestation queries (rule 9).
    pub fn with_attestation(mut self, attester: Attester) -> Self {
        self.attester = Some(attester);
        self
    }

    /// The public half of the attestation key, if there is one.
    pub fn attestation_key(&self) -> Option<ed25519_dalek::VerifyingKey> {
        self.attester.as_ref().map(|a| a.key.verifying_key())
    }

    /// The public half of the sealing key, if there is one.
    pub fn seal_key(&self) -> Option<ReflectorKey> {
        self.seal.as_ref().map(ReflectorSecret::public)
    }

    pub fn stats(&self) -> ReflectorStats {
        self.stats
    }

    pub fn active_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Handles one datagram from `src` at reflector time `now_us` (µs, monotonic) and returns
    /// the answer to send back to `src`, if any. The datagram is taken to have arrived at
    /// `now_us` too; a driver that knows better says so with [`Reflector::handle_arrival`].
    pub fn handle(&mut self, now_us: u64, src: SocketAddr, datagram: &[u8]) -> Option<Vec<u8>> {
        let arrival = Arrival {
            rx_us: now_us,
            socket_drops: 0,
        };
        self.handle_arrival(arrival, now_us, src, datagram)
    }

    /// [`Reflector::handle`] for a datagram that arrived at `arrival.rx_us` (the kernel's
    /// receive time, on the same clock as `now_us`) on a socket whose kernel had dropped
    /// `arrival.socket_drops` datagrams by then (rule 10).
    pub fn handle_arrival(
        &mut self,
        arrival: Arrival,
        now_us: u64,
        src: SocketAddr,
        datagram: &[u8],
    ) -> Option<Vec<u8>> {
        self.arrival = Arrival {
            rx_us: arrival.rx_us.min(now_us),
            ..arrival
        };
        self.stats.bytes_in += datagram.len() as u64;
        // Each arm arrives in its own framing (plain, STUN, ChannelData, RTP, …); the answer goes
        // back in the same one, so a DPI box sees the same shape both ways.
        let (framing, answer_core) = match framing::detect_any(datagram) {
            Some(Detected::Core(framing, core)) => {
                let decoded = Packet::decode(core);
                let bare = match decoded {
                    Ok(packet) => self.answer(now_us, src, packet, core),
                    Err(_) => None,
                };
                match bare {
                    Some(answer) => (framing, answer),
                    // A sealed payload can look like a bare core by chance (its first two
                    // bytes, about 1 in 7,000); without a bare answer it is tried sealed.
                    None if framing != Framing::Raw && self.seal.is_some() => {
                        (framing, self.answer_sealed(now_us, src, core)?)
                    }
                    None => {
                        if decoded.is_err() {
                            self.stats.dropped_malformed += 1;
                        }
                        return None;
                    }
                }
            }
            Some(Detected::Preamble(message)) => return self.on_preamble(src, datagram, message),
            None => {
                if let Some(answer) = stun_binding_success(datagram, src) {
                    self.stats.stun_bindings += 1;
                    self.stats.bytes_out += answer.len() as u64;
                    return Some(answer);
                }
                // Inside a platform framing, a payload that is no bare core may be a sealed one
                // (rule 8).
                match framing::detect_sealed(datagram).filter(|_| self.seal.is_some()) {
                    Some((framing, envelope)) => {
                        (framing, self.answer_sealed(now_us, src, envelope)?)
                    }
                    None => {
                        self.stats.dropped_malformed += 1;
                        return None;
                    }
                }
            }
        };
        let mut bytes = Vec::with_capacity(datagram.len());
        match framing::rtp_stamp(datagram) {
            Some(stamp) => framing.wrap_stamped(&answer_core, stamp, &mut bytes),
            None => framing.wrap(&answer_core, &mut bytes),
        }
        // Rule 1, enforced once more at the exit rather than trusted to every branch.
        if bytes.len() > datagram.len() {
            self.stats.dropped_unexpected += 1;
            return None;
        }
        self.stats.bytes_out += bytes.len() as u64;
        Some(bytes)
    }

    /// The answer to a bare `packet` (`core` is its encoding, padding included), encoded.
    fn answer(
        &mut self,
        now_us: u64,
        src: SocketAddr,
        packet: Packet,
        core: &[u8],
    ) -> Option<Vec<u8>> {
        let answer = match packet {
            Packet::Open(open) => Some(self.on_open(now_us, src, open)),
            Packet::Probe(probe) => self.on_probe(now_us, src, probe).map(Packet::Reply),
            Packet::Close(close) => self.on_close(now_us, src, close).map(Packet::CloseAck),
            Packet::CountQuery(q) => self.on_count_query(now_us, src, q).map(Packet::CountReply),
            Packet::AttestQuery(q) => self
                .on_attest_query(now_us, src, q)
                .map(Packet::Attestation),
            _ => {
                self.stats.dropped_unexpected += 1;
                None
            }
        }?;
        let mut answer_core = answer.encode();
        if let (Packet::Reply(_), Some(padding)) = (&answer, core.get(REPLY_HEADER_LEN..)) {
            // The probe's padding, echoed (rule 7); a reply is exactly as long as its probe.
            if answer_core.len() == core.len() {
                answer_core[REPLY_HEADER_LEN..].copy_from_slice(padding);
            }
        }
        Some(answer_core)
    }

    /// Rule 8: the answer to a sealed core, sealed, exactly as long as `envelope`.
    fn answer_sealed(&mut self, now_us: u64, src: SocketAddr, envelope: &[u8]) -> Option<Vec<u8>> {
        let key = self.session_key(src);
        let mut out = Vec::with_capacity(envelope.len());
        // A keyed envelope: a probe or a close of a session this address opened.
        if let Some((nonce, plain)) = seal::unseal(&key, Direction::Agent, envelope) {
            if let Ok((packet @ (Packet::Probe(_) | Packet::Close(_)), used)) =
                Packet::decode_prefix(&plain)
            {
                let answer = self.answer(now_us, src, packet, &plain[..used])?;
                let nonce = seal::answer_nonce(&key, &nonce);
                seal::seal(
                    &key,
                    Direction::Reflector,
                    nonce,
                    &answer,
                    envelope.len(),
                    &mut out,
                );
                self.stats.sealed += 1;
                return Some(out);
            }
        }
        // Otherwise an Open envelope, or nothing: each costs a Diffie–Hellman, so a budget
        // bounds how many are tried per second.
        if envelope.len() < seal::OPEN_ENVELOPE_MIN {
            self.stats.dropped_malformed += 1;
            return None;
        }
        if !self.take_open_token(now_us) {
            self.stats.dropped_rate += 1;
            return None;
        }
        let opened = self.seal.as_ref()?.open_envelope(envelope);
        let Some((k0, Ok((Packet::Open(open), _)))) =
            opened.map(|(k0, plain)| (k0, Packet::decode_prefix(&plain)))
        else {
            self.stats.dropped_malformed += 1;
            return None;
        };
        let answer = self.on_open(now_us, src, open);
        let mut payload = answer.encode();
        if let Packet::Accept(_) = answer {
            // The session key every later envelope from this address is sealed with.
            payload.extend_from_slice(&key);
        }
        let nonce = seal::answer_nonce(&k0, &[0; seal::NONCE_LEN]);
        seal::seal(
            &k0,
            Direction::Reflector,
            nonce,
            &payload,
            envelope.len(),
            &mut out,
        );
        self.stats.sealed += 1;
        Some(out)
    }

    /// The key of sealed sessions from `src`: derived, so that it costs no state to remember.
    fn session_key(&self, src: SocketAddr) -> [u8; seal::KEY_LEN] {
        self.mac(src, 0, SESSION_KEY_LABEL)
    }

    /// Takes one of the Diffie–Hellman tokens that bound sealed Opens (and garbage that might
    /// be one) to [`SEALED_OPENS_PER_S`].
    fn take_open_token(&mut self, now_us: u64) -> bool {
        let elapsed = now_us.saturating_sub(self.open_refill_us) as f64 / 1e6;
        self.open_tokens = (self.open_tokens + elapsed * SEALED_OPENS_PER_S).min(SEALED_OPEN_BURST);
        self.open_refill_us = now_us;
        if self.open_tokens < 1.0 {
            return false;
        }
        self.open_tokens -= 1.0;
        true
    }

    /// Rule 6: a preamble's answer, stateless and no longer than the preamble.
    fn on_preamble(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        message: PreambleMessage,
    ) -> Option<Vec<u8>> {
        let answer = match message {
            PreambleMessage::TelegramHello { peer_tag, query_id } => {
                Some(framing::telegram_hello_answer(&peer_tag, query_id))
            }
            PreambleMessage::TurnAllocate { transaction_id } => {
                // MESSAGE-INTEGRITY from the reflector's own key: it looks like one, proves
                // nothing, and needs no random draw.
                let tag = self.mac(src, 0, &transaction_id);
                let mut integrity = [0u8; 20];
                integrity.copy_from_slice(&tag[..20]);
                turn_allocate_success(datagram, src, &integrity)
            }
        };
        match answer {
            Some(answer) if answer.len() <= datagram.len() => {
                self.stats.preambles += 1;
                self.stats.bytes_out += answer.len() as u64;
                Some(answer)
            }
            _ => {
                self.stats.dropped_unexpected += 1;
                None
            }
        }
    }

    fn on_open(&mut self, now_us: u64, src: SocketAddr, open: Open) -> Packet {
        self.stats.opens += 1;
        if open.interval_ms == 0 || open.duration_ms == 0 || (open.size as usize) < MIN_PROBE_LEN {
            return Packet::Reject(Reject {
                session: open.session,
                reason: RejectReason::BadRequest,
            });
        }
        if self.table_full(now_us) {
            // Say so rather than accept a session whose probes would be dropped: a full table
            // must read as "reflector busy" to the agent, never as a blocked path.
            self.stats.dropped_table_full += 1;
            return Packet::Reject(Reject {
                session: open.session,
                reason: RejectReason::Busy,
            });
        }
        if self.prefix_full(now_us, src) {
            // The same answer: to the agent, this reflector has no room for it now.
            self.stats.dropped_prefix_full += 1;
            return Packet::Reject(Reject {
                session: open.session,
                reason: RejectReason::Busy,
            });
        }
        let interval_ms = open.interval_ms.max(self.limits.min_interval_ms);
        let size = open.size.min(self.limits.max_size);
        let duration_ms = open.duration_ms.min(self.limits.max_duration_ms);
        let issued_s = (now_us / 1_000_000) as u32;
        let cookie = self.cookie(src, open.session, issued_s, interval_ms, size, duration_ms);
        Packet::Accept(Accept {
            session: open.session,
            cookie,
            interval_ms,
            size,
            duration_ms,
            reflector_time_us: now_us,
            features: callwatch_proto::probe::FEATURE_LOAD
                | if self.attester.is_some() {
                    callwatch_proto::probe::FEATURE_SUBDIVISION
                } else {
                    0
                }
                | if self
                    .attester
                    .as_ref()
                    .is_some_and(|a| a.collector.is_some())
                {
                    callwatch_proto::probe::FEATURE_PATH_TOKEN
                } else {
                    0
                },
            seal_key_id: self.seal_key_id,
        })
    }

    fn on_probe(&mut self, now_us: u64, src: SocketAddr, probe: Probe) -> Option<Reply> {
        let key = (src, probe.session);
        if !self.sessions.contains_key(&key) {
            let Some(grant) = self.check_cookie(now_us, src, probe.session, &probe.cookie) else {
                self.stats.dropped_bad_cookie += 1;
                return None;
            };
            if self.table_full(now_us) {
                self.stats.dropped_table_full += 1;
                return None;
            }
            if self.prefix_full(now_us, src) {
                self.stats.dropped_prefix_full += 1;
                return None;
            }
            let max_packets = (grant.duration_ms as u64 / grant.interval_ms.max(1) as u64) + 64;
            self.sessions.insert(
                key,
                SessionState {
                    expires_us: grant.expires_us,
                    interval_us: grant.interval_ms as u64 * 1000,
                    tokens: BURST_PROBES,
                    last_refill_us: now_us,
                    seen: vec![0; max_packets.div_ceil(64) as usize],
                    received: 0,
                    drops_base: self.arrival.socket_drops,
                    last_attest_us: None,
                },
            );
            self.addr_of.insert(probe.session, src);
            *self.per_prefix.entry(NetPrefix::of(src.ip())).or_insert(0) += 1;
        }
        let max_size = self.limits.max_size as usize;
        let session = self.sessions.get_mut(&key)?;
        if now_us > session.expires_us {
            self.stats.dropped_expired += 1;
            return None;
        }
        if probe.len as usize > max_size {
            self.stats.dropped_rate += 1;
            return None;
        }
        if !session.take_token(now_us) {
            self.stats.dropped_rate += 1;
            return None;
        }
        session.mark(probe.seq);
        self.stats.probes_reflected += 1;
        Some(Reply {
            session: probe.session,
            seq: probe.seq,
            sent_us: probe.sent_us,
            reflector_rx_us: self.arrival.rx_us,
            reflector_tx_us: now_us,
            reflector_received: session.received,
            reflector_drops: u16::try_from(
                self.arrival.socket_drops.wrapping_sub(session.drops_base),
            )
            .unwrap_or(u16::MAX),
            len: probe.len,
        })
    }

    fn on_close(&mut self, now_us: u64, src: SocketAddr, close: Close) -> Option<CloseAck> {
        if self
            .check_cookie(now_us, src, close.session, &close.cookie)
            .is_none()
        {
            self.stats.dropped_bad_cookie += 1;
            return None;
        }
        // The state is kept until it expires so that a repeated Close (the ack was lost) gets
        // the same count; an unknown session simply received nothing.
        let received = self
            .sessions
            .get(&(src, close.session))
            .map_or(0, |s| s.received);
        Some(CloseAck {
            session: close.session,
            reflector_received: received,
        })
    }

    fn on_count_query(
        &mut self,
        now_us: u64,
        src: SocketAddr,
        q: CountQuery,
    ) -> Option<CountReply> {
        if self
            .check_cookie(now_us, src, q.session, &q.cookie)
            .is_none()
        {
            self.stats.dropped_bad_cookie += 1;
            return None;
        }
        // The asking session pays a token, as for a probe: queries cannot outrun its rate.
        if let Some(asker) = self.sessions.get_mut(&(src, q.session)) {
            if !asker.take_token(now_us) {
                self.stats.dropped_rate += 1;
                return None;
            }
        }
        let received = match self.addr_of.get(&q.target).copied() {
            // No probe of the target ever arrived (or its state expired): it received nothing
            // we know of. Its cookie cannot be checked without the address it was issued to,
            // and the answer reveals nothing beyond "no such session".
            None => 0,
            Some(target_src) => {
                if self
                    .check_cookie(now_us, target_src, q.target, &q.target_cookie)
                    .is_none()
                {
                    self.stats.dropped_bad_cookie += 1;
                    return None;
                }
                self.sessions
                    .get(&(target_src, q.target))
                    .map_or(0, |s| s.received)
            }
        };
        self.stats.count_queries += 1;
        Some(CountReply {
            session: q.session,
            target: q.target,
            reflector_received: received,
        })
    }

    /// Rule 9: a signed attestation of the region `src` is in, for a session whose probes came
    /// from `src`.
    fn on_attest_query(
        &mut self,
        now_us: u64,
        src: SocketAddr,
        q: AttestQuery,
    ) -> Option<Attestation> {
        if self.attester.is_none() {
            self.stats.dropped_unexpected += 1;
            return None;
        }
        if self
            .check_cookie(now_us, src, q.session, &q.cookie)
            .is_none()
        {
            self.stats.dropped_bad_cookie += 1;
            return None;
        }
        // Only a session whose probes arrived from this address: that is what is attested.
        let Some(session) = self.sessions.get_mut(&(src, q.session)) else {
            self.stats.dropped_unexpected += 1;
            return None;
        };
        let too_soon = session
            .last_attest_us
            .is_some_and(|t| now_us.saturating_sub(t) < ATTEST_EVERY_US);
        if too_soon || !session.take_token(now_us) {
            self.stats.dropped_rate += 1;
            return None;
        }
        session.last_attest_us = Some(now_us);
        let attester = self.attester.as_ref()?;
        let region = (attester.lookup)(src.ip());
        let (country, asn) = (region.country, region.asn);
        let country = if country.iter().all(u8::is_ascii_uppercase) {
            country
        } else {
            *b"ZZ"
        };
        // The subdivision only when asked and known: a code (not the empty, unknown one) of a
        // known country. Otherwise the answer signs none (the old kind), and the report needs
        // no newer schema.
        let subdivision = Some(region.subdivision).filter(|s| {
            q.with_subdivision
                && country != *b"ZZ"
                && callwatch_proto::attest::subdivision_code(&country, s)
                    .is_some_and(|code| !code.is_empty())
        });
        let hour = attester.hour(now_us);
        let token = match (q.with_token, attester.collector) {
            (true, Some(collector)) => {
                // The ephemeral secret: fresh per (address, session, report, moment) — an
                // attestation of a session is made at most once a second — derived from the
                // reflector's secret, so the core stays deterministic and draws no randomness.
                let mut h = <Sha256 as sha2::Digest>::new();
                use sha2::Digest as _;
                h.update(b"callwatch path token ephemeral");
                h.update(self.secret);
                h.update(src.to_string().as_bytes());
                h.update(q.session.to_be_bytes());
                h.update(q.report_id);
                h.update(now_us.to_be_bytes());
                let ephemeral: [u8; 32] = h.finalize().into();
                callwatch_proto::pathtoken::seal(
                    &collector,
                    callwatch_proto::pathtoken::NetPrefix::of(src.ip()),
                    &q.report_id,
                    hour,
                    ephemeral,
                )
            }
            _ => None,
        };
        let claim = Claim {
            report_id: q.report_id,
            country,
            asn,
            hour,
            subdivision,
            token_digest: token
                .as_ref()
                .map(|t| callwatch_proto::pathtoken::digest(t)),
        };
        let (key_id, signature) = claim.sign(&attester.key);
        self.stats.attestations += 1;
        Some(Attestation {
            session: q.session,
            report_id: q.report_id,
            country: claim.country,
            asn,
            hour: claim.hour,
            key_id,
            signature,
            token,
            subdivision,
        })
    }

    /// Whether the session table is full, after sweeping it if it was full and the last such
    /// sweep is at least [`FULL_SWEEP_EVERY_US`] old.
    fn table_full(&mut self, now_us: u64) -> bool {
        if self.sessions.len() < self.limits.max_sessions {
            return false;
        }
        let due = self
            .last_full_sweep_us
            .is_none_or(|t| now_us.saturating_sub(t) >= FULL_SWEEP_EVERY_US);
        if due {
            self.last_full_sweep_us = Some(now_us);
            self.sweep(now_us);
        }
        self.sessions.len() >= self.limits.max_sessions
    }

    /// Whether `src`'s prefix holds [`Limits::max_sessions_per_prefix`] sessions, after
    /// sweeping the table if the last sweep of a full table or prefix is at least
    /// [`FULL_SWEEP_EVERY_US`] old.
    fn prefix_full(&mut self, now_us: u64, src: SocketAddr) -> bool {
        let prefix = NetPrefix::of(src.ip());
        let held = |r: &Self| r.per_prefix.get(&prefix).copied().unwrap_or(0);
        if held(self) < self.limits.max_sessions_per_prefix {
            return false;
        }
        let due = self
            .last_full_sweep_us
            .is_none_or(|t| now_us.saturating_sub(t) >= FULL_SWEEP_EVERY_US);
        if due {
            self.last_full_sweep_us = Some(now_us);
            self.sweep(now_us);
        }
        held(self) >= self.limits.max_sessions_per_prefix
    }

    /// Sessions held for sources in `ip`'s prefix (IPv4 /24, IPv6 /48).
    pub fn prefix_sessions(&self, ip: IpAddr) -> usize {
        self.per_prefix
            .get(&NetPrefix::of(ip))
            .copied()
            .unwrap_or(0)
    }

    /// Drops sessions whose time is up; called when the table or a prefix is full, and now and
    /// then.
    pub fn sweep(&mut self, now_us: u64) {
        let per_prefix = &mut self.per_prefix;
        self.sessions.retain(|(src, _), s| {
            let keep = s.expires_us >= now_us;
            if !keep {
                let prefix = NetPrefix::of(src.ip());
                if let Some(n) = per_prefix.get_mut(&prefix) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        per_prefix.remove(&prefix);
                    }
                }
            }
            keep
        });
        let sessions = &self.sessions;
        self.addr_of
            .retain(|id, addr| sessions.contains_key(&(*addr, *id)));
    }

    fn cookie(
        &self,
        src: SocketAddr,
        session: SessionId,
        issued_s: u32,
        interval_ms: u16,
        size: u16,
        duration_ms: u32,
    ) -> Cookie {
        let mut out = [0u8; COOKIE_LEN];
        out[..4].copy_from_slice(&issued_s.to_be_bytes());
        out[4..6].copy_from_slice(&interval_ms.to_be_bytes());
        out[6..8].copy_from_slice(&size.to_be_bytes());
        // Duration in whole seconds, rounded up, fits 16 bits for any sane limit.
        let duration_s = duration_ms.div_ceil(1000).min(u16::MAX as u32) as u16;
        out[8..10].copy_from_slice(&duration_s.to_be_bytes());
        let tag = self.mac(src, session, &out[..10]);
        out[10..].copy_from_slice(&tag[..COOKIE_LEN - 10]);
        out
    }

    fn mac(&self, src: SocketAddr, session: SessionId, fields: &[u8]) -> [u8; 32] {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        match src {
            SocketAddr::V4(a) => mac.update(&a.ip().octets()),
            SocketAddr::V6(a) => mac.update(&a.ip().octets()),
        }
        mac.update(&src.port().to_be_bytes());
        mac.update(&session.to_be_bytes());
        mac.update(fields);
        mac.finalize().into_bytes().into()
    }

    fn check_cookie(
        &self,
        now_us: u64,
        src: SocketAddr,
        session: SessionId,
        cookie: &Cookie,
    ) -> Option<Grant> {
        let tag = self.mac(src, session, &cookie[..10]);
        // Constant-time comparison of the truncated tag.
        let diff = tag[..COOKIE_LEN - 10]
            .iter()
            .zip(&cookie[10..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return None;
        }
        let issued_s = u32::from_be_bytes([cookie[0], cookie[1], cookie[2], cookie[3]]) as u64;
        let interval_ms = u16::from_be_bytes([cookie[4], cookie[5]]);
        let duration_s = u16::from_be_bytes([cookie[8], cookie[9]]) as u64;
        let issued_us = issued_s * 1_000_000;
        // Issued at most one second in the future (clock granularity), never later.
        if issued_us > now_us + 1_000_000 {
            return None;
        }
        let expires_us = issued_us
            + (duration_s + 1) * 1_000_000
            + u64::from(self.limits.cookie_grace_ms) * 1000;
        if now_us > expires_us {
            return None;
        }
        Some(Grant {
            interval_ms,
            duration_ms: (duration_s * 1000) as u32,
            expires_us,
        })
    }
}

/// RFC 8489 §14.2 XOR-MAPPED-ADDRESS.
const STUN_ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// RFC 8656 §18.5 XOR-RELAYED-ADDRESS and §18.2 LIFETIME.
const STUN_ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
const STUN_ATTR_LIFETIME: u16 = 0x000D;
/// RFC 8656's default allocation lifetime, 10 minutes.
const TURN_DEFAULT_LIFETIME_S: u32 = 600;

/// The value of an XOR-MAPPED-ADDRESS (or XOR-RELAYED-ADDRESS) attribute for `addr`, given the
/// message's transaction id (RFC 8489 §14.2).
fn xor_address(addr: SocketAddr, transaction_id: &[u8]) -> Vec<u8> {
    let cookie = framing::STUN_MAGIC_COOKIE.to_be_bytes();
    let mut value = Vec::with_capacity(20);
    value.push(0);
    value.push(if addr.is_ipv4() { 0x01 } else { 0x02 });
    value.extend_from_slice(
        &(addr.port() ^ (framing::STUN_MAGIC_COOKIE >> 16) as u16).to_be_bytes(),
    );
    match addr.ip() {
        std::net::IpAddr::V4(ip) => {
            value.extend(ip.octets().iter().zip(cookie).map(|(a, b)| a ^ b));
        }
        std::net::IpAddr::V6(ip) => {
            // XORed with the magic cookie followed by the transaction id.
            let mask = cookie.iter().chain(transaction_id);
            value.extend(ip.octets().iter().zip(mask).map(|(a, b)| a ^ b));
        }
    }
    value
}

fn put_attribute(out: &mut Vec<u8>, attr_type: u16, value: &[u8]) {
    out.extend_from_slice(&attr_type.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (4 - value.len() % 4) % 4, 0);
}

/// A TURN Allocate success response (RFC 8656 §7.2) to `request`, a well-formed Allocate
/// request: XOR-RELAYED-ADDRESS and XOR-MAPPED-ADDRESS (both `src`: nothing is relayed),
/// LIFETIME 600 s, MESSAGE-INTEGRITY (`integrity`: no key is shared, so it only looks like one),
/// FINGERPRINT — 84 bytes for an IPv4 `src`, 108 for IPv6. `None` if `request` is no Allocate
/// request or is shorter than the response (rule 1).
pub fn turn_allocate_success(
    request: &[u8],
    src: SocketAddr,
    integrity: &[u8; 20],
) -> Option<Vec<u8>> {
    let transaction_id = request.get(8..20)?;
    if request.get(0..2)? != framing::STUN_ALLOCATE_REQUEST.to_be_bytes()
        || request.get(4..8)? != framing::STUN_MAGIC_COOKIE.to_be_bytes()
    {
        return None;
    }
    let address = xor_address(src, transaction_id);
    let mut out = Vec::with_capacity(framing::STUN_HEADER_LEN + 88);
    out.extend_from_slice(&framing::STUN_ALLOCATE_SUCCESS.to_be_bytes());
    out.extend_from_slice(&[0, 0]); // length, written below
    out.extend_from_slice(request.get(4..20)?);
    put_attribute(&mut out, STUN_ATTR_XOR_RELAYED_ADDRESS, &address);
    put_attribute(
        &mut out,
        STUN_ATTR_LIFETIME,
        &TURN_DEFAULT_LIFETIME_S.to_be_bytes(),
    );
    put_attribute(&mut out, STUN_ATTR_XOR_MAPPED_ADDRESS, &address);
    put_attribute(&mut out, STUN_ATTR_MESSAGE_INTEGRITY, integrity);
    let len = (out.len() + 8 - framing::STUN_HEADER_LEN) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    let crc = crc32(&out) ^ 0x5354_554E;
    put_attribute(&mut out, STUN_ATTR_FINGERPRINT, &crc.to_be_bytes());
    (out.len() <= request.len()).then_some(out)
}

/// CRC-32 (IEEE 802.3), as STUN's FINGERPRINT uses; bitwise, as answers are rare.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                0xEDB8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The Binding success response to `request` if it is a well-formed STUN Binding request no
/// shorter than the response (rule 1), else `None`. Attributes of the request are not
/// interpreted (a comprehension-required one we do not know would deserve a 420 error, which
/// we do not send: no answer is the conservative choice for a reflector).
pub fn stun_binding_success(request: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
    let be16 = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes(
            request.get(at..at + 2)?.try_into().ok()?,
        ))
    };
    if be16(0)? != STUN_BINDING_REQUEST
        || request.get(4..8)? != framing::STUN_MAGIC_COOKIE.to_be_bytes()
        || usize::from(be16(2)?) + framing::STUN_HEADER_LEN != request.len()
        || !request.len().is_multiple_of(4)
    {
        return None;
    }
    let value = xor_address(src, request.get(8..20)?);
    let mut out = Vec::with_capacity(framing::STUN_HEADER_LEN + 4 + value.len());
    out.extend_from_slice(&STUN_BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&((4 + value.len()) as u16).to_be_bytes());
    out.extend_from_slice(request.get(4..20)?);
    out.extend_from_slice(&STUN_ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(&value);
    (out.len() <= request.len()).then_some(out)
}

struct Grant {
    interval_ms: u16,
    duration_ms: u32,
    expires_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: u64 = 5_000_000_000;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn open(r: &mut Reflector, now: u64, src: SocketAddr, session: u64) -> Accept {
        let bytes = Packet::Open(Open {
            session,
            interval_ms: 20,
            size: 172,
            duration_ms: 10_000,
        })
        .encode();
        match Packet::decode(&r.handle(now, src, &bytes).unwrap()).unwrap() {
            Packet::Accept(a) => a,
            other => panic!("expected accept, got {other:?}"),
        }
    }

    fn probe(cookie: Cookie, session: u64, seq: u32, len: u16) -> Vec<u8> {
        Packet::Probe(Probe {
            session,
            cookie,
            seq,
            sent_us: 42,
            len,
        })
        .encode()
    }

    fn test_attester() -> Attester {
        let lookup: RegionLookup = Box::new(|ip: IpAddr| match ip {
            IpAddr::V4(v4) if v4.octets()[3] == 2 => AttestedRegion {
                country: *b"NL",
                asn: 1136,
                subdivision: *b"NH\0",
            },
            IpAddr::V4(v4) if v4.octets()[3] == 3 => AttestedRegion {
                // A lookup that returns no code: signed as unknown.
                subdivision: *b"n-h",
                ..AttestedRegion::new(*b"NL", 1136)
            },
            _ => AttestedRegion::UNKNOWN,
        });
        // Reflector time 0 is 2025-10-09T19:00:00Z (hour 488_888).
        Attester::new(
            ed25519_dalek::SigningKey::from_bytes(&[5; 32]),
            lookup,
            488_888 * 3_600_000_000,
        )
    }

    fn attest_query(cookie: Cookie, session: u64, report_id: [u8; 16]) -> Vec<u8> {
        Packet::AttestQuery(AttestQuery {
            session,
            cookie,
            report_id,
            with_token: false,
            with_subdivision: false,
        })
        .encode()
    }

    #[test]
    fn attests_the_probes_region_once_a_second_per_session_and_never_amplifies() {
        use callwatch_proto::attest::RegionAttestation;
        use callwatch_proto::ReportId;
        let mut r = Reflector::new([1; 32], Limits::default()).with_attestation(test_attester());
        let key = r.attestation_key().unwrap();
        let src = addr("127.0.0.2:5000");
        let a = open(&mut r, T0, src, 7);
        let q = attest_query(a.cookie, 7, [3; 16]);
        // No probe arrived yet: nothing to attest.
        assert!(r.handle(T0, src, &q).is_none());
        r.handle(T0, src, &probe(a.cookie, 7, 0, 172)).unwrap();
        let out = r.handle(T0 + 1_000, src, &q).unwrap();
        assert!(out.len() < q.len(), "the answer is shorter than the query");
        let Packet::Attestation(att) = Packet::decode(&out).unwrap() else {
            panic!("not an attestation")
        };
        assert_eq!(
            (&att.country, att.asn, att.hour, att.report_id),
            (b"NL", 1136, 488_888 + (T0 / 3_600_000_000) as u32, [3; 16])
        );
        let started = chrono::DateTime::from_timestamp(i64::from(att.hour) * 3600 + 5, 0).unwrap();
        let report = RegionAttestation::from_signed(
            &Claim {
                report_id: att.report_id,
                country: att.country,
                asn: att.asn,
                hour: att.hour,
                subdivision: None,
                token_digest: None,
            },
            &att.key_id,
            &att.signature,
        )
        .unwrap();
        assert_eq!(
            report.verify(ReportId([3; 16]), started, started, |_| Some(key)),
            Ok(())
        );
        // A second within the second is refused; after a second it is answered again.
        assert!(r.handle(T0 + 500_000, src, &q).is_none());
        assert!(r.handle(T0 + 1_002_000, src, &q).is_some());
        // A wrong cookie, or the right cookie from another address, gets nothing.
        assert!(r
            .handle(T0 + 3_000_000, src, &attest_query([0; 16], 7, [3; 16]))
            .is_none());
        assert!(r
            .handle(T0 + 3_000_000, addr("127.0.0.3:5000"), &q)
            .is_none());
        assert_eq!(r.stats().attestations, 2);
        // Without an attestation key, no answer at all.
        let mut plain = Reflector::new([1; 32], Limits::default());
        let a = open(&mut plain, T0, src, 7);
        plain.handle(T0, src, &probe(a.cookie, 7, 0, 172)).unwrap();
        assert!(plain
            .handle(T0 + 1_000, src, &attest_query(a.cookie, 7, [3; 16]))
            .is_none());
    }

    /// Asked with the subdivision kinds (advertised by every attesting reflector), a known
    /// subdivision is signed; when the lookup has none or gives no code, or when asked with the
    /// old kinds, none is, and the answer is the old kind.
    #[test]
    fn the_subdivision_is_signed_when_asked_and_the_old_query_gets_the_old_answer() {
        use callwatch_proto::attest::RegionAttestation;
        use callwatch_proto::carry::CarrySecret;
        use callwatch_proto::probe::{ATTESTATION_LEN, ATTESTATION_TOKEN_LEN, FEATURE_SUBDIVISION};
        use callwatch_proto::{pathtoken, ReportId};
        let collector = CarrySecret::from_bytes([4; 32]);
        let mut r = Reflector::new([1; 32], Limits::default())
            .with_attestation(test_attester().with_collector_key(collector.public()));
        let key = r.attestation_key().unwrap();
        let mut t = T0;
        for (src, want) in [
            ("127.0.0.2:5000", Some(*b"NH\0")),
            ("127.0.0.3:5000", None),
            ("127.0.0.4:5000", None),
        ] {
            let src = addr(src);
            let a = open(&mut r, t, src, 7);
            assert_ne!(a.features & FEATURE_SUBDIVISION, 0, "advertised");
            r.handle(t, src, &probe(a.cookie, 7, 0, 172)).unwrap();
            for with_token in [false, true] {
                t += 1_100_000;
                let q = Packet::AttestQuery(AttestQuery {
                    session: 7,
                    cookie: a.cookie,
                    report_id: [3; 16],
                    with_token,
                    with_subdivision: true,
                })
                .encode();
                let out = r
                    .handle(t, src, &q)
                    .unwrap_or_else(|| panic!("no attestation for {src}: {:?}", r.stats()));
                assert_eq!(
                    out.len(),
                    if with_token {
                        ATTESTATION_TOKEN_LEN
                    } else {
                        ATTESTATION_LEN
                    },
                    "the same length as the answer without a subdivision"
                );
                let Packet::Attestation(att) = Packet::decode(&out).unwrap() else {
                    panic!("not an attestation")
                };
                assert_eq!(att.subdivision, want, "{src}");
                assert_eq!(att.token.is_some(), with_token);
                let claim = Claim {
                    report_id: att.report_id,
                    country: att.country,
                    asn: att.asn,
                    hour: att.hour,
                    subdivision: att.subdivision,
                    token_digest: att.token.as_ref().map(|t| pathtoken::digest(t)),
                };
                let report =
                    RegionAttestation::from_signed(&claim, &att.key_id, &att.signature).unwrap();
                assert_eq!(
                    report.subdivision.as_deref(),
                    want.map(|_| "NL-NH"),
                    "{src}"
                );
                let started =
                    chrono::DateTime::from_timestamp(i64::from(att.hour) * 3600 + 5, 0).unwrap();
                assert_eq!(
                    report.verify(ReportId([3; 16]), started, started, |_| Some(key)),
                    Ok(())
                );
                // Without the subdivision (with one), the same signature does not verify.
                let bare = RegionAttestation::from_signed(
                    &Claim {
                        subdivision: match want {
                            Some(_) => None,
                            None => Some(*b"NH\0"),
                        },
                        ..claim
                    },
                    &att.key_id,
                    &att.signature,
                )
                .unwrap();
                assert!(bare
                    .verify(ReportId([3; 16]), started, started, |_| Some(key))
                    .is_err());
            }
            // The old query: the old answer, no subdivision.
            t += 1_100_000;
            let out = r
                .handle(t, src, &attest_query(a.cookie, 7, [3; 16]))
                .unwrap();
            let Packet::Attestation(att) = Packet::decode(&out).unwrap() else {
                panic!("not an attestation")
            };
            assert_eq!((att.subdivision, att.token), (None, None));
        }
        // A reflector without an attestation key does not advertise it.
        let mut plain = Reflector::new([1; 32], Limits::default());
        let a = open(&mut plain, T0, addr("127.0.0.2:5000"), 7);
        assert_eq!(a.features & FEATURE_SUBDIVISION, 0);
    }

    #[test]
    fn a_path_token_seals_the_probes_prefix_to_the_collector_under_the_signature() {
        use callwatch_proto::attest::RegionAttestation;
        use callwatch_proto::carry::CarrySecret;
        use callwatch_proto::pathtoken::{self, NetPrefix};
        use callwatch_proto::probe::FEATURE_PATH_TOKEN;
        use callwatch_proto::ReportId;
        let collector = CarrySecret::from_bytes([4; 32]);
        let mut r = Reflector::new([1; 32], Limits::default())
            .with_attestation(test_attester().with_collector_key(collector.public()));
        let key = r.attestation_key().unwrap();
        let src = addr("127.0.0.2:5000");
        let a = open(&mut r, T0, src, 7);
        assert_ne!(a.features & FEATURE_PATH_TOKEN, 0, "advertised");
        r.handle(T0, src, &probe(a.cookie, 7, 0, 172)).unwrap();
        let q = Packet::AttestQuery(AttestQuery {
            session: 7,
            cookie: a.cookie,
            report_id: [3; 16],
            with_token: true,
            with_subdivision: false,
        })
        .encode();
        let out = r.handle(T0 + 1_000, src, &q).unwrap();
        assert!(out.len() < q.len(), "the answer is shorter than the query");
        let Packet::Attestation(att) = Packet::decode(&out).unwrap() else {
            panic!("not an attestation")
        };
        let token = att.token.expect("a path token");
        assert_eq!(
            pathtoken::open(&collector, &token, &[3; 16], att.hour),
            Ok(NetPrefix::V4([127, 0, 0]))
        );
        // The signature covers the token's digest: with it the attestation verifies, without
        // it (or with another token's) it does not.
        let claim = Claim {
            report_id: att.report_id,
            country: att.country,
            asn: att.asn,
            hour: att.hour,
            subdivision: None,
            token_digest: Some(pathtoken::digest(&token)),
        };
        let started = chrono::DateTime::from_timestamp(i64::from(att.hour) * 3600 + 5, 0).unwrap();
        let check = |claim: &Claim| {
            RegionAttestation::from_signed(claim, &att.key_id, &att.signature)
                .unwrap()
                .verify(ReportId([3; 16]), started, started, |_| Some(key))
        };
        assert_eq!(check(&claim), Ok(()));
        assert!(check(&Claim {
            token_digest: None,
            ..claim
        })
        .is_err());
        assert!(check(&Claim {
            token_digest: Some([0; 16]),
            ..claim
        })
        .is_err());
        // The short query still gets the short answer, without a token.
        let out = r
            .handle(T0 + 2_000_000, src, &attest_query(a.cookie, 7, [3; 16]))
            .unwrap();
        let Packet::Attestation(att) = Packet::decode(&out).unwrap() else {
            panic!("not an attestation")
        };
        assert!(att.token.is_none());
        // Without the collector's key: not advertised, and a long query is answered without one.
        let mut plain =
            Reflector::new([1; 32], Limits::default()).with_attestation(test_attester());
        let a = open(&mut plain, T0, src, 7);
        assert_eq!(a.features & FEATURE_PATH_TOKEN, 0);
        plain.handle(T0, src, &probe(a.cookie, 7, 0, 172)).unwrap();
        let out = plain.handle(T0 + 1_000, src, &q).unwrap();
        let Packet::Attestation(att) = Packet::decode(&out).unwrap() else {
            panic!("not an attestation")
        };
        assert!(att.token.is_none());
    }

    #[test]
    fn counts_a_session_through_another_with_both_cookies_and_never_amplifies() {
        let mut r = Reflector::new([1; 32], Limits::default());
        let (pa, ca) = (addr("127.0.0.2:5000"), addr("127.0.0.2:5001"));
        let p = open(&mut r, T0, pa, 7);
        let c = open(&mut r, T0, ca, 8);
        for seq in 0..6u32 {
            r.handle(
                T0 + u64::from(seq) * 20_000,
                pa,
                &probe(p.cookie, 7, seq, 172),
            )
            .unwrap();
        }
        r.handle(T0, ca, &probe(c.cookie, 8, 0, 172)).unwrap();
        let query = |cookie, target_cookie| {
            Packet::CountQuery(CountQuery {
                session: 8,
                cookie,
                target: 7,
                target_cookie,
            })
            .encode()
        };
        let q = query(c.cookie, p.cookie);
        let out = r.handle(T0 + 200_000, ca, &q).unwrap();
        assert!(out.len() < q.len(), "the answer is shorter than the query");
        let Packet::CountReply(reply) = Packet::decode(&out).unwrap() else {
            panic!("not a count reply")
        };
        assert_eq!(
            (reply.session, reply.target, reply.reflector_received),
            (8, 7, 6)
        );
        // Without the target's secret, or from an address the asking cookie is not bound to,
        // nothing is answered.
        assert!(r
            .handle(T0 + 200_000, ca, &query(c.cookie, c.cookie))
            .is_none());
        assert!(r
            .handle(
                T0 + 200_000,
                addr("127.0.0.9:5001"),
                &query(c.cookie, p.cookie)
            )
            .is_none());
        assert_eq!(r.stats().count_queries, 1);
    }

    /// A STUN Binding request of `len` bytes (attributes zeroed), transaction id twelve 9s.
    fn binding_request(len: usize) -> Vec<u8> {
        let mut m = vec![0u8; len];
        m[0..2].copy_from_slice(&STUN_BINDING_REQUEST.to_be_bytes());
        m[2..4].copy_from_slice(&((len - 20) as u16).to_be_bytes());
        m[4..8].copy_from_slice(&framing::STUN_MAGIC_COOKIE.to_be_bytes());
        m[8..20].copy_from_slice(&[9; 12]);
        m
    }

    #[test]
    fn answers_stun_binding_requests_no_larger_than_they_are() {
        let mut r = Reflector::new([1; 32], Limits::default());
        let v4 = addr("127.0.0.2:5000");
        let out = r.handle(T0, v4, &binding_request(40)).unwrap();
        assert!(out.len() <= 40);
        assert_eq!(&out[0..2], &STUN_BINDING_SUCCESS.to_be_bytes());
        assert_eq!(&out[8..20], &[9; 12], "same transaction id");
        // XOR-MAPPED-ADDRESS decodes back to the sender.
        let port = u16::from_be_bytes([out[26], out[27]]) ^ 0x2112;
        assert_eq!(port, 5000);
        let ip: Vec<u8> = out[28..32]
            .iter()
            .zip(framing::STUN_MAGIC_COOKIE.to_be_bytes())
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(ip, vec![127, 0, 0, 2]);
        // An IPv6 answer (44 bytes) to a 40-byte request would amplify: no answer.
        assert!(r
            .handle(T0, addr("[::1]:5000"), &binding_request(40))
            .is_none());
        assert!(r
            .handle(T0, addr("[::1]:5000"), &binding_request(44))
            .is_some());
        // Not a Binding request (a success response, a bad length): nothing.
        let mut wrong = binding_request(40);
        wrong[0..2].copy_from_slice(&STUN_BINDING_SUCCESS.to_be_bytes());
        assert!(r.handle(T0, v4, &wrong).is_none());
        assert!(r.handle(T0, v4, &binding_request(40)[..36]).is_none());
        assert_eq!(r.stats().stun_bindings, 2);
    }

    #[test]
    fn a_full_table_rejects_opens_as_busy() {
        let limits = Limits {
            max_sessions: 1,
            ..Limits::default()
        };
        let mut r = Reflector::new([1; 32], limits);
        let a = addr("127.0.0.2:5000");
        let acc = open(&mut r, T0, a, 1);
        r.handle(T0, a, &probe(acc.cookie, 1, 0, 172)).unwrap();
        let open2 = Packet::Open(Open {
            session: 2,
            interval_ms: 20,
            size: 172,
            duration_ms: 10_000,
        })
        .encode();
        let out = r.handle(T0, addr("127.0.0.3:5000"), &open2).unwrap();
        assert!(matches!(
            Packet::decode(&out).unwrap(),
            Packet::Reject(Reject {
                reason: RejectReason::Busy,
                ..
            })
        ));
        // Once the session's time (10 s granted + 10 s grace, rounded up) is over, the table is
        // swept and the next Open is accepted.
        let later = T0 + 25_000_000;
        let out = r.handle(later, addr("127.0.0.3:5000"), &open2).unwrap();
        assert!(matches!(Packet::decode(&out).unwrap(), Packet::Accept(_)));
    }

    fn open_answer(r: &mut Reflector, now: u64, src: SocketAddr, session: u64) -> Packet {
        let bytes = Packet::Open(Open {
            session,
            interval_ms: 20,
            size: 172,
            duration_ms: 10_000,
        })
        .encode();
        Packet::decode(&r.handle(now, src, &bytes).unwrap()).unwrap()
    }

    fn is_busy(p: &Packet) -> bool {
        matches!(
            p,
            Packet::Reject(Reject {
                reason: RejectReason::Busy,
                ..
            })
        )
    }

    #[test]
    fn one_prefix_cannot_take_more_than_its_cap_and_others_still_get_sessions() {
        let limits = Limits {
            max_sessions: 10,
            max_sessions_per_prefix: 4,
            ..Limits::default()
        };
        let mut r = Reflector::new([1; 32], limits);
        // Several addresses and ports of one /24 (and an IPv4-mapped IPv6 one of it too).
        let flood: Vec<SocketAddr> = (0..6u16)
            .map(|i| addr(&format!("198.51.100.{}:{}", 10 + i, 4000 + i)))
            .chain([addr("[::ffff:198.51.100.99]:4100")])
            .collect();
        // Cookies are stateless: every Open is accepted while no session is held…
        let cookies: Vec<(SocketAddr, u64, Cookie)> = flood
            .iter()
            .enumerate()
            .map(|(i, &a)| (a, i as u64 + 1, open(&mut r, T0, a, i as u64 + 1).cookie))
            .collect();
        // …but only the cap's worth of first probes create one; the rest are dropped, counted.
        let answered = cookies
            .iter()
            .filter(|(a, s, c)| r.handle(T0, *a, &probe(*c, *s, 0, 172)).is_some())
            .count();
        assert_eq!(answered, 4);
        assert_eq!(r.active_sessions(), 4);
        assert_eq!(r.prefix_sessions(flood[0].ip()), 4);
        assert_eq!(r.stats().dropped_prefix_full, 3);
        // A held session keeps being answered.
        assert!(r
            .handle(T0 + 20_000, cookies[0].0, &probe(cookies[0].2, 1, 1, 172))
            .is_some());
        // The prefix at its cap: its Opens are answered Busy, as a full table's are.
        assert!(is_busy(&open_answer(&mut r, T0, flood[6], 50)));
        assert_eq!(r.stats().dropped_prefix_full, 4);
        // Another /24, and an IPv6 /48, still get sessions: the table fills up to its limit.
        let others: Vec<SocketAddr> = (0..3u16)
            .map(|i| addr(&format!("203.0.113.{}:5000", 1 + i)))
            .chain((0..3u16).map(|i| addr(&format!("[2001:db8:1:{i}::1]:6000"))))
            .collect();
        for (i, &a) in others.iter().enumerate() {
            let session = 100 + i as u64;
            let acc = open(&mut r, T0, a, session);
            assert!(r
                .handle(T0, a, &probe(acc.cookie, session, 0, 172))
                .is_some());
        }
        assert_eq!(r.active_sessions(), 10);
        assert_eq!(r.prefix_sessions(others[0].ip()), 3);
        assert_eq!(r.prefix_sessions(others[3].ip()), 3);
        assert_eq!(r.stats().dropped_table_full, 0);
    }

    #[test]
    fn one_source_flooding_opens_leaves_room_for_every_other_source() {
        // The issue's flood, at the default limits: one source opens as many sessions as it can
        // (before the cap, 4,096 in a row filled the table).
        let limits = Limits::default();
        let mut r = Reflector::new([1; 32], limits);
        let flooder = addr("192.0.2.7:9000");
        let mut busy = 0;
        for s in 0..limits.max_sessions as u64 {
            match open_answer(&mut r, T0, flooder, s) {
                Packet::Accept(acc) => {
                    let _ = r.handle(T0, flooder, &probe(acc.cookie, s, 0, 172));
                }
                p => busy += usize::from(is_busy(&p)),
            }
        }
        assert_eq!(r.active_sessions(), limits.max_sessions_per_prefix);
        assert_eq!(busy, limits.max_sessions - limits.max_sessions_per_prefix);
        // Every other source, one per /24, gets a session until the table is full.
        let room = limits.max_sessions - limits.max_sessions_per_prefix;
        for i in 0..room as u64 {
            let a = addr(&format!("10.{}.{}.1:7000", i / 256, i % 256));
            let acc = open(&mut r, T0, a, 1_000_000 + i);
            assert!(r
                .handle(T0, a, &probe(acc.cookie, 1_000_000 + i, 0, 172))
                .is_some());
        }
        assert_eq!(r.active_sessions(), limits.max_sessions);
        assert_eq!(r.stats().dropped_table_full, 0);
    }

    #[test]
    fn sweep_frees_a_prefix_count() {
        let limits = Limits {
            max_sessions_per_prefix: 2,
            ..Limits::default()
        };
        let mut r = Reflector::new([1; 32], limits);
        let a = addr("127.0.0.2:5000");
        for s in 1..=2 {
            let acc = open(&mut r, T0, a, s);
            r.handle(T0, a, &probe(acc.cookie, s, 0, 172)).unwrap();
        }
        assert!(is_busy(&open_answer(&mut r, T0 + 1, a, 3)));
        // After the sessions' time (10 s + 10 s grace, rounded up), an explicit sweep frees
        // the prefix's count…
        let later = T0 + 25_000_000;
        r.sweep(later);
        assert_eq!(r.prefix_sessions(a.ip()), 0);
        assert_eq!(r.active_sessions(), 0);
        let acc = open(&mut r, later, a, 3);
        r.handle(later, a, &probe(acc.cookie, 3, 0, 172)).unwrap();
        assert_eq!(r.prefix_sessions(a.ip()), 1);
        // …and so does the sweep a full prefix triggers on its own.
        let acc = open(&mut r, later, a, 4);
        r.handle(later, a, &probe(acc.cookie, 4, 0, 172)).unwrap();
        assert!(is_busy(&open_answer(&mut r, later, a, 5)));
        let much_later = later + 25_000_000;
        assert!(matches!(
            open_answer(&mut r, much_later, a, 5),
            Packet::Accept(_)
        ));
        assert_eq!(r.prefix_sessions(a.ip()), 0);
    }

    #[test]
    fn reflects_probes_with_a_valid_cookie_and_counts_them() {
        let mut r = Reflector::new([1; 32], Limits::default());
        let a = addr("127.0.0.2:5000");
        let acc = open(&mut r, T0, a, 9);
        for seq in 0..10u32 {
            let now = T0 + seq as u64 * 20_000;
            let out = r.handle(now, a, &probe(acc.cookie, 9, seq, 172)).unwrap();
            assert_eq!(out.len(), 172);
            let Packet::Reply(rep) = Packet::decode(&out).unwrap() else {
                panic!("not a reply")
            };
            assert_eq!(rep.seq, seq);
            assert_eq!(rep.sent_us, 42);
            assert_eq!(rep.reflector_received, seq + 1);
            assert_eq!(rep.reflector_rx_us, now);
        }
        // A duplicate is answered but not counted twice.
        let out = r
            .handle(T0 + 300_000, a, &probe(acc.cookie, 9, 3, 172))
            .unwrap();
        let Packet::Reply(rep) = Packet::decode(&out).unwrap() else {
            panic!()
        };
        assert_eq!(rep.reflector_received, 10);
        let close = Packet::Close(Close {
            session: 9,
            cookie: acc.cookie,
            packets_sent: 10,
        })
        .encode();
        let Packet::CloseAck(ack) =
            Packet::decode(&r.handle(T0 + 400_000, a, &close).unwrap()).unwrap()
        else {
            panic!()
        };
        assert_eq!(ack.reflector_received, 10);
    }

    #[test]
    fn ignores_probes_without_valid_cookie() {
        let mut r = Reflector::new([1; 32], Limits::default());
        let a = addr("127.0.0.2:5000");
        let acc = open(&mut r, T0, a, 9);
        // No cookie at all.
        assert!(r.handle(T0, a, &probe([0; 16], 9, 0, 172)).is_none());
        // Cookie for another address (another IP, and another port).
        assert!(r
            .handle(T0, addr("127.0.0.3:5000"), &probe(acc.cookie, 9, 0, 172))
            .is_none());
        assert!(r
            .handle(T0, addr("127.0.0.2:5001"), &probe(acc.cookie, 9, 0, 172))
            .is_none());
        // Cookie for another session id.
        assert!(r.handle(T0, a, &probe(acc.cookie, 10, 0, 172)).is_none());
        // Stale cookie: past duration + grace.
        let stale = T0 + 10_000_000 + u64::from(COOKIE_GRACE_MS) * 1000 + 3_000_000;
        assert!(r.handle(stale, a, &probe(acc.cookie, 9, 0, 172)).is_none());
        // Forged limits inside the cookie break the MAC.
        let mut forged = acc.cookie;
        forged[9] ^= 0xff;
        assert!(r.handle(T0, a, &probe(forged, 9, 0, 172)).is_none());
        assert_eq!(r.stats().probes_reflected, 0);
        assert_eq!(r.stats().dropped_bad_cookie, 6);
        assert_eq!(r.active_sessions(), 0, "no state for unproven sources");
    }

    #[test]
    fn caps_rate_and_size() {
        let limits = Limits {
            max_size: 200,
            ..Limits::default()
        };
        let mut r = Reflector::new([1; 32], limits);
        let a = addr("[::1]:7000");
        let acc = open(&mut r, T0, a, 1);
        assert!(r.handle(T0, a, &probe(acc.cookie, 1, 0, 400)).is_none());
        // A flood at one instant: only the burst allowance is answered.
        let answered = (0..1000)
            .filter(|&s| r.handle(T0, a, &probe(acc.cookie, 1, s, 100)).is_some())
            .count();
        assert_eq!(answered, BURST_PROBES as usize);
    }

    fn allocate(seed: u64) -> Vec<u8> {
        framing::Preamble::TurnAllocate {
            realm: "signal.org".into(),
            username_valid_s: 86_400,
        }
        .datagram(&framing::Framing::Raw, seed, 1_760_000_000)
        .unwrap()
    }

    fn hello(seed: u64) -> Vec<u8> {
        let f = callwatch_proto::profile::profile(callwatch_proto::Platform::Telegram)
            .framing
            .for_test(seed);
        framing::Preamble::TelegramHello { repeat_ms: 10_000 }
            .datagram(&f, seed, 0)
            .unwrap()
    }

    #[test]
    fn answers_a_telegram_hello_with_as_many_bytes_and_no_state() {
        let mut r = Reflector::new([1; 32], Limits::default());
        let a = addr("127.0.0.2:5000");
        let h = hello(3);
        let out = r.handle(T0, a, &h).unwrap();
        assert_eq!(out.len(), 40);
        assert_eq!(&out[..16], &h[..16], "the hello's tag");
        assert_eq!(&out[16..28], &[0xFF; 12]);
        assert_eq!(&out[32..], &123u64.to_be_bytes(), "the hello's query id");
        assert!(framing::Preamble::TelegramHello { repeat_ms: 10_000 }.is_answer(&h, &out));
        let s = r.stats();
        assert_eq!((s.preambles, s.dropped_malformed), (1, 0));
        assert_eq!(r.active_sessions(), 0);
        // Cut short or padded, it is no hello: unanswered, and counted as malformed.
        assert!(r.handle(T0, a, &h[..36]).is_none());
        let mut long = h.clone();
        long.extend([0; 24]);
        assert!(r.handle(T0, a, &long).is_none());
        assert_eq!(r.stats().dropped_malformed, 2);
        assert!(r.stats().bytes_out <= r.stats().bytes_in);
    }

    #[test]
    fn answers_a_turn_allocate_with_a_shorter_success_response() {
        let mut r = Reflector::new([1; 32], Limits::default());
        let request = allocate(9);
        for src in ["127.0.0.2:5000", "[::1]:5000"] {
            let src = addr(src);
            let out = r.handle(T0, src, &request).unwrap();
            assert!(
                out.len() <= request.len(),
                "{} > {}",
                out.len(),
                request.len()
            );
            assert_eq!(out.len(), if src.is_ipv4() { 84 } else { 108 });
            assert_eq!(&out[0..2], &framing::STUN_ALLOCATE_SUCCESS.to_be_bytes());
            assert_eq!(
                usize::from(u16::from_be_bytes([out[2], out[3]])) + 20,
                out.len()
            );
            assert_eq!(&out[4..20], &request[4..20], "cookie and transaction id");
            // The XOR-RELAYED-ADDRESS (first attribute) decodes back to the sender's port.
            assert_eq!(&out[20..22], &0x0016u16.to_be_bytes());
            assert_eq!(u16::from_be_bytes([out[26], out[27]]) ^ 0x2112, 5000);
            let fp = out.len() - 8;
            assert_eq!(&out[fp..fp + 4], &[0x80, 0x28, 0, 4]);
            let crc = crc32(&out[..fp]) ^ 0x5354_554E;
            assert_eq!(&out[fp + 4..], &crc.to_be_bytes());
            let p = framing::Preamble::TurnAllocate {
                realm: "signal.org".into(),
                username_valid_s: 1,
            };
            assert!(p.is_answer(&request, &out));
        }
        assert_eq!(r.stats().preambles, 2);
        assert_eq!(r.active_sessions(), 0);
        // A bare 20-byte Allocate (an attacker's) would get 84 bytes: no answer.
        let bare = &request[..20];
        let mut bare = bare.to_vec();
        bare[2..4].copy_from_slice(&[0, 0]);
        assert!(r.handle(T0, addr("127.0.0.2:5000"), &bare).is_none());
        assert_eq!(r.stats().dropped_unexpected, 1);
        assert_eq!(r.stats().dropped_malformed, 0);
        assert!(r.stats().bytes_out <= r.stats().bytes_in);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn answers_echo_the_rtp_stamp_and_the_probe_padding() {
        use framing::{Framing, RtpStamp};
        let mut r = Reflector::new([1; 32], Limits::default());
        let a = addr("127.0.0.2:5000");
        let f = Framing::TurnChannelDataRtp {
            channel: 0x4001,
            payload_type: 102,
            ssrc: 77,
        };
        let stamp = |seq| RtpStamp {
            seq,
            timestamp: 0xABCD_0000 + u32::from(seq),
        };
        let mut open = Vec::new();
        let core = Packet::Open(Open {
            session: 5,
            interval_ms: 20,
            size: 172,
            duration_ms: 10_000,
        })
        .encode();
        f.wrap_stamped(&core, stamp(0xFFFF), &mut open);
        let out = r.handle(T0, a, &open).unwrap();
        assert_eq!(framing::rtp_stamp(&out), Some(stamp(0xFFFF)));
        let Ok(Packet::Accept(acc)) = Packet::decode(f.unwrap(&out).unwrap()) else {
            panic!("no accept")
        };
        let mut core = probe(acc.cookie, 5, 0, 120);
        for (i, b) in core.iter_mut().enumerate().skip(38) {
            *b = i as u8 ^ 0x5A;
        }
        let mut request = Vec::new();
        f.wrap_stamped(&core, stamp(0), &mut request);
        let out = r.handle(T0 + 20_000, a, &request).unwrap();
        assert_eq!(out.len(), request.len());
        assert_eq!(framing::rtp_stamp(&out), Some(stamp(0)));
        let reply = f.unwrap(&out).unwrap();
        assert!(matches!(Packet::decode(reply), Ok(Packet::Reply(_))));
        assert_eq!(&reply[REPLY_HEADER_LEN..], &core[REPLY_HEADER_LEN..]);
    }

    /// Rule 9: a reply says when the kernel received its probe (not when the reflector got to
    /// it) and how many datagrams the kernel dropped since the session began.
    #[test]
    fn replies_carry_the_kernel_receive_time_and_the_drops_since_the_session_began() {
        let mut r = Reflector::new([1; 32], Limits::default());
        let a = addr("127.0.0.2:5000");
        let acc = open(&mut r, T0, a, 7);
        let reply = |r: &mut Reflector, seq: u32, rx: u64, now: u64, drops: u32| {
            let arrival = Arrival {
                rx_us: rx,
                socket_drops: drops,
            };
            let out = r.handle_arrival(arrival, now, a, &probe(acc.cookie, 7, seq, 120));
            match Packet::decode(&out.unwrap()).unwrap() {
                Packet::Reply(reply) => reply,
                other => panic!("{other:?}"),
            }
        };
        // The socket had dropped 40 before the session: none of them are its.
        let first = reply(&mut r, 0, T0 + 1_000, T0 + 1_050, 40);
        assert_eq!(
            (first.reflector_rx_us, first.reflector_tx_us),
            (T0 + 1_000, T0 + 1_050)
        );
        assert_eq!(first.reflector_drops, 0);
        // Held 200 ms (a stalled process): the reply says so, with 3 drops meanwhile.
        let held = reply(&mut r, 1, T0 + 21_000, T0 + 221_000, 43);
        assert_eq!(held.reflector_tx_us - held.reflector_rx_us, 200_000);
        assert_eq!(held.reflector_drops, 3);
        // A receive time after the handling is a driver fault: clamped, never negative.
        let odd = reply(&mut r, 2, T0 + 300_000, T0 + 250_000, 43);
        assert_eq!(odd.reflector_rx_us, odd.reflector_tx_us);
    }

    /// A sealed WhatsApp-framed session: Open under the static key, Accept bringing the session
    /// key, probes and close under it; every answer exactly as long as its request, and no
    /// cleartext core anywhere on the wire.
    #[test]
    fn answers_a_sealed_session_with_equal_lengths_and_no_cleartext() {
        let secret = ReflectorSecret::from_bytes([4; 32]);
        let key = secret.public();
        let mut r = Reflector::new([1; 32], Limits::default()).with_seal(secret);
        let f = callwatch_proto::profile::profile(callwatch_proto::Platform::Whatsapp)
            .framing
            .clone();
        let a = addr("127.0.0.5:6000");
        let session = 0x0102_0304_0506_0708u64;
        let open_core = Packet::Open(Open {
            session,
            interval_ms: 20,
            size: 120,
            duration_ms: 10_000,
        })
        .encode();
        let mut env = Vec::new();
        let k0 = seal::seal_open(&key, [9; 32], &open_core, 128, &mut env);
        let mut request = Vec::new();
        f.wrap(&env, &mut request);
        let out = r.handle(T0, a, &request).unwrap();
        assert_eq!(out.len(), request.len());
        let (_, plain) =
            seal::unseal(&k0, Direction::Reflector, f.unwrap_sealed(&out).unwrap()).unwrap();
        let (Packet::Accept(acc), used) = Packet::decode_prefix(&plain).unwrap() else {
            panic!("no accept")
        };
        let session_key: [u8; 32] = plain[used..used + 32].try_into().unwrap();
        for (seq, len) in [(0u32, 120usize), (1, 100), (2, 120)] {
            let core = probe(acc.cookie, session, seq, len as u16);
            let mut env = Vec::new();
            seal::seal(
                &session_key,
                Direction::Agent,
                [seq as u8; 8],
                &core,
                len + 8,
                &mut env,
            );
            let mut request = Vec::new();
            f.wrap(&env, &mut request);
            assert!(!request.windows(8).any(|w| w == session.to_be_bytes()));
            let out = r
                .handle(T0 + 20_000 * u64::from(seq + 1), a, &request)
                .unwrap();
            assert_eq!(out.len(), request.len());
            assert!(!out.windows(8).any(|w| w == session.to_be_bytes()));
            let (_, plain) = seal::unseal(
                &session_key,
                Direction::Reflector,
                f.unwrap_sealed(&out).unwrap(),
            )
            .unwrap();
            let Ok((Packet::Reply(reply), _)) = Packet::decode_prefix(&plain) else {
                panic!("no reply")
            };
            assert_eq!((reply.seq, reply.reflector_received), (seq, seq + 1));
        }
        let close = Packet::Close(Close {
            session,
            cookie: acc.cookie,
            packets_sent: 3,
        })
        .encode();
        let mut env = Vec::new();
        seal::seal(
            &session_key,
            Direction::Agent,
            [77; 8],
            &close,
            128,
            &mut env,
        );
        let mut request = Vec::new();
        f.wrap(&env, &mut request);
        let out = r.handle(T0 + 100_000, a, &request).unwrap();
        assert_eq!(out.len(), request.len());
        let (_, plain) = seal::unseal(
            &session_key,
            Direction::Reflector,
            f.unwrap_sealed(&out).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            Packet::decode_prefix(&plain),
            Ok((
                Packet::CloseAck(CloseAck {
                    reflector_received: 3,
                    ..
                }),
                _
            ))
        ));
        // The session key is the address's: another address cannot use it.
        let core = probe(acc.cookie, session, 3, 120);
        let mut env = Vec::new();
        seal::seal(&session_key, Direction::Agent, [3; 8], &core, 128, &mut env);
        let mut request = Vec::new();
        f.wrap(&env, &mut request);
        assert!(r
            .handle(T0 + 120_000, addr("127.0.0.6:6000"), &request)
            .is_none());
        assert_eq!(r.stats().sealed, 5);
    }

    /// Garbage inside a platform framing may be an Open envelope: each costs a Diffie–Hellman,
    /// and no more than the burst is tried at one instant.
    #[test]
    fn bounds_the_diffie_hellman_work_of_sealed_opens() {
        let mut r = Reflector::new([1; 32], Limits::default())
            .with_seal(ReflectorSecret::from_bytes([4; 32]));
        let f = callwatch_proto::profile::profile(callwatch_proto::Platform::Whatsapp)
            .framing
            .clone();
        let a = addr("127.0.0.5:6000");
        for i in 0..1_000u32 {
            let mut garbage = vec![0u8; 120];
            framing::keystream(u64::from(i), 0, &mut garbage);
            let mut request = Vec::new();
            f.wrap(&garbage, &mut request);
            assert!(r.handle(T0, a, &request).is_none());
        }
        let s = r.stats();
        assert_eq!(s.dropped_rate + s.dropped_malformed, 1_000);
        assert_eq!(s.dropped_malformed, SEALED_OPEN_BURST as u64);
        assert_eq!(s.bytes_out, 0);
    }

    /// Sends `d` and keeps the ledger a reflector's byte counters must match.
    fn send(
        r: &mut Reflector,
        ledger: &mut (u64, u64),
        now: u64,
        src: SocketAddr,
        d: &[u8],
    ) -> Option<Vec<u8>> {
        ledger.0 += d.len() as u64;
        let out = r.handle(now, src, d);
        ledger.1 += out.as_ref().map_or(0, |o| o.len() as u64);
        out
    }

    /// Every datagram is counted once, under what became of it: reflected, or dropped for its
    /// reason (malformed, bad cookie, rate or size, expired, unexpected), and every byte in and
    /// out.
    #[test]
    fn every_datagram_is_counted_under_what_became_of_it() {
        let limits = Limits {
            max_size: 200,
            ..Limits::default()
        };
        let mut r = Reflector::new([1; 32], limits);
        let mut io = (0, 0);
        let a = addr("127.0.0.2:5000");
        let open_bytes = Packet::Open(Open {
            session: 9,
            interval_ms: 20,
            size: 172,
            duration_ms: 10_000,
        })
        .encode();
        let accept = send(&mut r, &mut io, T0, a, &open_bytes).unwrap();
        let Ok(Packet::Accept(acc)) = Packet::decode(&accept) else {
            panic!("no accept")
        };
        // A probe of exactly the largest size is answered; one byte more is not.
        assert!(send(&mut r, &mut io, T0, a, &probe(acc.cookie, 9, 0, 200)).is_some());
        assert!(send(&mut r, &mut io, T0, a, &probe(acc.cookie, 9, 1, 201)).is_none());
        // 25 more at the same instant: 24 tokens are left of the burst of 25.
        let answered = (2..27)
            .filter(|&seq| send(&mut r, &mut io, T0, a, &probe(acc.cookie, 9, seq, 100)).is_some())
            .count();
        assert_eq!(answered, 24);
        // A count query costs the asking session a token, and it has none left.
        let count_query = |cookie, target_cookie| {
            Packet::CountQuery(CountQuery {
                session: 9,
                cookie,
                target: 9,
                target_cookie,
            })
            .encode()
        };
        let q = count_query(acc.cookie, acc.cookie);
        assert!(send(&mut r, &mut io, T0, a, &q).is_none());
        // Bad cookies: a probe, a close and a count query.
        assert!(send(&mut r, &mut io, T0, a, &probe([0; 16], 10, 0, 100)).is_none());
        let close = Packet::Close(Close {
            session: 9,
            cookie: [0; 16],
            packets_sent: 1,
        })
        .encode();
        assert!(send(&mut r, &mut io, T0, a, &close).is_none());
        assert!(send(&mut r, &mut io, T0, a, &count_query([0; 16], acc.cookie)).is_none());
        // A core packet one byte short does not decode: malformed.
        assert!(send(&mut r, &mut io, T0, a, &open_bytes[..open_bytes.len() - 1]).is_none());
        // A well-formed packet a reflector never receives (its own Accept): unexpected.
        assert!(send(&mut r, &mut io, T0, a, &accept).is_none());
        // A STUN Binding request of 40 bytes: answered, 32 bytes for an IPv4 source.
        assert_eq!(
            send(&mut r, &mut io, T0, a, &binding_request(40)).map(|b| b.len()),
            Some(32)
        );
        // The session's state lasts until issue + (10 s + 1 s) + 10 s of grace = T0 + 21 s:
        // a probe at that very µs is answered, one a µs later is expired.
        let end = T0 + 21_000_000;
        assert!(send(&mut r, &mut io, end, a, &probe(acc.cookie, 9, 27, 100)).is_some());
        assert!(send(&mut r, &mut io, end + 1, a, &probe(acc.cookie, 9, 28, 100)).is_none());
        assert_eq!(
            r.stats(),
            ReflectorStats {
                bytes_in: io.0,
                bytes_out: io.1,
                opens: 1,
                probes_reflected: 1 + 24 + 1,
                dropped_malformed: 1,
                dropped_bad_cookie: 3,
                dropped_rate: 3,
                dropped_expired: 1,
                dropped_unexpected: 1,
                stun_bindings: 1,
                ..ReflectorStats::default()
            }
        );
    }

    /// The token bucket refills at the granted interval: after the burst of 25 is spent, one
    /// token per 20 ms, half a token per 10 ms.
    #[test]
    fn a_session_regains_one_probe_per_granted_interval() {
        let mut r = Reflector::new([1; 32], Limits::default());
        let a = addr("127.0.0.2:5000");
        let acc = open(&mut r, T0, a, 3);
        let mut seq = 0;
        let mut answered = |r: &mut Reflector, now: u64| {
            seq += 1;
            r.handle(now, a, &probe(acc.cookie, 3, seq, 100)).is_some()
        };
        assert_eq!((0..26).filter(|_| answered(&mut r, T0)).count(), 25);
        // 20 ms later: exactly one token.
        assert!(answered(&mut r, T0 + 20_000));
        assert!(!answered(&mut r, T0 + 20_000));
        // 10 ms later half a token, 10 ms after that the other half.
        assert!(!answered(&mut r, T0 + 30_000));
        assert!(answered(&mut r, T0 + 40_000));
        assert!(!answered(&mut r, T0 + 40_000));
    }

    /// A session counts the distinct sequence numbers of its granted packets and a slack of 64:
    /// 1 s / 20 ms = 50, + 64 = 114 numbers, held in a bitmap of whole 64-bit words (128 bits).
    /// A number past the bitmap is answered but not counted.
    #[test]
    fn a_session_counts_the_numbers_of_its_granted_packets_and_a_slack_of_64() {
        let mut r = Reflector::new([1; 32], Limits::default());
        let a = addr("127.0.0.2:5000");
        let open_bytes = Packet::Open(Open {
            session: 4,
            interval_ms: 20,
            size: 172,
            duration_ms: 1_000,
        })
        .encode();
        let Ok(Packet::Accept(acc)) = Packet::decode(&r.handle(T0, a, &open_bytes).unwrap()) else {
            panic!("no accept")
        };
        let mut counted = |seq: u32, i: u64| {
            let out = r.handle(T0 + i * 20_000, a, &probe(acc.cookie, 4, seq, 100));
            match Packet::decode(&out.expect("answered")) {
                Ok(Packet::Reply(reply)) => reply.reflector_received,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(counted(113, 0), 1);
        assert_eq!(counted(127, 1), 2);
        assert_eq!(counted(128, 2), 2);
        assert_eq!(counted(10_000, 3), 2);
        assert_eq!(counted(0, 4), 3);
        // Granted 10 s: 500 + 64 = 564 numbers, nine words (576 bits).
        let acc = open(&mut r, T0, a, 6);
        let mut counted = |seq: u32, i: u64| {
            let out = r.handle(T0 + i * 20_000, a, &probe(acc.cookie, 6, seq, 100));
            match Packet::decode(&out.expect("answered")) {
                Ok(Packet::Reply(reply)) => reply.reflector_received,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(counted(575, 0), 1);
        assert_eq!(counted(576, 1), 1);
    }

    /// An Open with a zero interval, a zero duration or a probe size below the smallest probe is
    /// a bad request; the smallest probe size is accepted. Every Open is counted.
    #[test]
    fn opens_asking_for_nothing_or_for_too_small_probes_are_bad_requests() {
        let mut r = Reflector::new([1; 32], Limits::default());
        let a = addr("127.0.0.2:5000");
        let answer = |r: &mut Reflector, interval_ms, size, duration_ms| {
            let open = Packet::Open(Open {
                session: 1,
                interval_ms,
                size,
                duration_ms,
            })
            .encode();
            Packet::decode(&r.handle(T0, a, &open).unwrap()).unwrap()
        };
        let min = MIN_PROBE_LEN as u16;
        for (interval_ms, size, duration_ms) in
            [(0, 172, 10_000), (20, 172, 0), (20, min - 1, 10_000)]
        {
            assert!(
                matches!(
                    answer(&mut r, interval_ms, size, duration_ms),
                    Packet::Reject(Reject {
                        reason: RejectReason::BadRequest,
                        ..
                    })
                ),
                "{interval_ms} ms, {size} B, {duration_ms} ms"
            );
        }
        assert!(matches!(
            answer(&mut r, 20, min, 10_000),
            Packet::Accept(Accept { size, .. }) if size == min
        ));
        assert_eq!(r.stats().opens, 4);
    }

    /// A full table refuses Opens as busy and drops first probes, counting each; a table with
    /// room holds a new session (its first probe answered) whatever its size.
    #[test]
    fn a_full_table_counts_what_it_turned_away() {
        let limits = Limits {
            max_sessions: 2,
            ..Limits::default()
        };
        let mut r = Reflector::new([1; 32], limits);
        let (a, b, c) = (
            addr("127.0.0.2:5000"),
            addr("127.0.0.3:5000"),
            addr("127.0.0.4:5000"),
        );
        let (ka, kb, kc) = (
            open(&mut r, T0, a, 1),
            open(&mut r, T0, b, 2),
            open(&mut r, T0, c, 3),
        );
        assert!(r.handle(T0, a, &probe(ka.cookie, 1, 0, 100)).is_some());
        assert_eq!(r.active_sessions(), 1);
        assert!(r.handle(T0, b, &probe(kb.cookie, 2, 0, 100)).is_some());
        assert_eq!(r.active_sessions(), 2);
        assert!(r.handle(T0, c, &probe(kc.cookie, 3, 0, 100)).is_none());
        assert!(is_busy(&open_answer(&mut r, T0, c, 3)));
        assert_eq!(r.active_sessions(), 2);
        assert_eq!(r.stats().dropped_table_full, 2);
    }

    /// Rule 9's refusals, each counted: no attestation key (unexpected), a bad cookie, a
    /// session whose probes never arrived (unexpected), and a second query sooner than a second
    /// after the last answered one (rate); exactly a second later it is answered.
    #[test]
    fn attestation_refusals_are_counted_and_the_second_is_inclusive() {
        let src = addr("127.0.0.2:5000");
        let mut plain = Reflector::new([1; 32], Limits::default());
        let a = open(&mut plain, T0, src, 7);
        plain.handle(T0, src, &probe(a.cookie, 7, 0, 172)).unwrap();
        assert!(plain
            .handle(T0, src, &attest_query(a.cookie, 7, [3; 16]))
            .is_none());
        assert_eq!(plain.stats().dropped_unexpected, 1);

        let mut r = Reflector::new([1; 32], Limits::default()).with_attestation(test_attester());
        let a = open(&mut r, T0, src, 7);
        let q = attest_query(a.cookie, 7, [3; 16]);
        // No probe yet: no session to attest.
        assert!(r.handle(T0, src, &q).is_none());
        r.handle(T0, src, &probe(a.cookie, 7, 0, 172)).unwrap();
        assert!(r
            .handle(T0, src, &attest_query([0; 16], 7, [3; 16]))
            .is_none());
        assert!(r.handle(T0 + 1_000, src, &q).is_some());
        assert!(r.handle(T0 + 1_000_999, src, &q).is_none());
        assert!(r.handle(T0 + 1_001_000, src, &q).is_some());
        let s = r.stats();
        assert_eq!(
            (
                s.dropped_unexpected,
                s.dropped_bad_cookie,
                s.dropped_rate,
                s.attestations
            ),
            (1, 1, 1, 2)
        );
    }

    /// A count query whose target cookie does not match the address the target's probes came
    /// from is refused and counted as a bad cookie.
    #[test]
    fn a_count_query_with_a_wrong_target_cookie_is_a_bad_cookie() {
        let mut r = Reflector::new([1; 32], Limits::default());
        let (pa, ca) = (addr("127.0.0.2:5000"), addr("127.0.0.2:5001"));
        let p = open(&mut r, T0, pa, 7);
        let c = open(&mut r, T0, ca, 8);
        r.handle(T0, pa, &probe(p.cookie, 7, 0, 172)).unwrap();
        let q = Packet::CountQuery(CountQuery {
            session: 8,
            cookie: c.cookie,
            target: 7,
            target_cookie: c.cookie,
        })
        .encode();
        assert!(r.handle(T0, ca, &q).is_none());
        assert_eq!(
            (r.stats().dropped_bad_cookie, r.stats().count_queries),
            (1, 0)
        );
    }

    /// Rule 8's public half: the sealing key's, and none without one.
    #[test]
    fn the_seal_key_is_the_public_half_of_the_sealing_secret() {
        let secret = ReflectorSecret::from_bytes([4; 32]);
        let public = secret.public();
        assert!(Reflector::new([1; 32], Limits::default())
            .seal_key()
            .is_none());
        let r = Reflector::new([1; 32], Limits::default()).with_seal(secret);
        assert_eq!(r.seal_key().map(|k| k.0), Some(public.0));
    }

    /// Opens a sealed session from `a` (WhatsApp framing) and returns the session key the
    /// Accept brings.
    fn sealed_session_key(r: &mut Reflector, key: &ReflectorKey, a: SocketAddr) -> [u8; 32] {
        let f = callwatch_proto::profile::profile(callwatch_proto::Platform::Whatsapp)
            .framing
            .clone();
        let open_core = Packet::Open(Open {
            session: 5,
            interval_ms: 20,
            size: 120,
            duration_ms: 10_000,
        })
        .encode();
        let mut env = Vec::new();
        let k0 = seal::seal_open(key, [9; 32], &open_core, 128, &mut env);
        let mut request = Vec::new();
        f.wrap(&env, &mut request);
        let out = r.handle(T0, a, &request).unwrap();
        let (_, plain) =
            seal::unseal(&k0, Direction::Reflector, f.unwrap_sealed(&out).unwrap()).unwrap();
        let (Packet::Accept(_), used) = Packet::decode_prefix(&plain).unwrap() else {
            panic!("no accept")
        };
        plain[used..used + 32].try_into().unwrap()
    }

    /// Rule 8: the session key of sealed cores from an address is HMAC-SHA-256 under the
    /// reflector's secret of the address (IP octets, port), session id 0 and the label — so
    /// each address has its own, and the reflector remembers none.
    #[test]
    fn the_sealed_session_key_is_the_addresss_hmac() {
        let secret = ReflectorSecret::from_bytes([4; 32]);
        let key = secret.public();
        let mut r = Reflector::new([1; 32], Limits::default()).with_seal(secret);
        let expected = |ip: [u8; 4], port: u16| -> [u8; 32] {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[1; 32]).unwrap();
            mac.update(&ip);
            mac.update(&port.to_be_bytes());
            mac.update(&0u64.to_be_bytes());
            mac.update(b"callwatch seal v1 session key");
            mac.finalize().into_bytes().into()
        };
        let k5 = sealed_session_key(&mut r, &key, addr("127.0.0.5:6000"));
        let k6 = sealed_session_key(&mut r, &key, addr("127.0.0.6:6000"));
        assert_eq!(k5, expected([127, 0, 0, 5], 6000));
        assert_eq!(k6, expected([127, 0, 0, 6], 6000));
        assert_ne!(k5, k6);
    }

    /// A bare core in no framing is never tried as a sealed one, even by a sealing reflector:
    /// a probe with a bad cookie is a bad cookie, not a failed Open envelope.
    #[test]
    fn a_raw_core_is_never_tried_sealed() {
        let mut r = Reflector::new([1; 32], Limits::default())
            .with_seal(ReflectorSecret::from_bytes([4; 32]));
        let a = addr("127.0.0.2:5000");
        assert!(r.handle(T0, a, &probe([0; 16], 3, 0, 172)).is_none());
        let s = r.stats();
        assert_eq!(
            (s.dropped_bad_cookie, s.dropped_malformed, s.dropped_rate),
            (1, 0, 0)
        );
    }

    /// Payloads shorter than an Open envelope are malformed without a Diffie–Hellman; from
    /// exactly its length on, each is tried and costs one of the 200 in a burst, refilled at
    /// 2,000 a second (two per ms).
    #[test]
    fn only_payloads_as_long_as_an_open_envelope_cost_a_diffie_hellman() {
        let mut r = Reflector::new([1; 32], Limits::default())
            .with_seal(ReflectorSecret::from_bytes([4; 32]));
        let f = callwatch_proto::profile::profile(callwatch_proto::Platform::Whatsapp)
            .framing
            .clone();
        let a = addr("127.0.0.5:6000");
        let mut i = 0u64;
        let mut garbage = |r: &mut Reflector, now: u64, len: usize| {
            i += 1;
            let mut payload = vec![0u8; len];
            framing::keystream(i, 0, &mut payload);
            let mut request = Vec::new();
            f.wrap(&payload, &mut request);
            assert!(r.handle(now, a, &request).is_none());
            let s = r.stats();
            (s.dropped_malformed, s.dropped_rate)
        };
        for _ in 0..300 {
            garbage(&mut r, T0, seal::OPEN_ENVELOPE_MIN - 1);
        }
        assert_eq!(
            (r.stats().dropped_malformed, r.stats().dropped_rate),
            (300, 0)
        );
        for _ in 0..200 {
            garbage(&mut r, T0, seal::OPEN_ENVELOPE_MIN);
        }
        assert_eq!(garbage(&mut r, T0, seal::OPEN_ENVELOPE_MIN), (500, 1));
        // 1 ms later: two tokens.
        assert_eq!(
            garbage(&mut r, T0 + 1_000, seal::OPEN_ENVELOPE_MIN),
            (501, 1)
        );
        assert_eq!(
            garbage(&mut r, T0 + 1_000, seal::OPEN_ENVELOPE_MIN),
            (502, 1)
        );
        assert_eq!(
            garbage(&mut r, T0 + 1_000, seal::OPEN_ENVELOPE_MIN),
            (502, 2)
        );
    }

    /// A sweep leaves each prefix the count of its sessions still live, and forgets a prefix
    /// only when none is.
    #[test]
    fn a_sweep_leaves_a_prefix_the_count_of_its_live_sessions() {
        let mut r = Reflector::new([1; 32], Limits::default());
        let (a, b) = (addr("127.0.0.2:5000"), addr("127.0.0.3:5000"));
        // a's session is granted 1 s (state until T0 + 2 s + 10 s), b's 10 s (T0 + 21 s).
        let short = Packet::Open(Open {
            session: 1,
            interval_ms: 20,
            size: 172,
            duration_ms: 1_000,
        })
        .encode();
        let Ok(Packet::Accept(ka)) = Packet::decode(&r.handle(T0, a, &short).unwrap()) else {
            panic!("no accept")
        };
        r.handle(T0, a, &probe(ka.cookie, 1, 0, 172)).unwrap();
        let kb = open(&mut r, T0, b, 2);
        r.handle(T0, b, &probe(kb.cookie, 2, 0, 172)).unwrap();
        assert_eq!(r.prefix_sessions(a.ip()), 2);
        r.sweep(T0 + 15_000_000);
        assert_eq!((r.prefix_sessions(a.ip()), r.active_sessions()), (1, 1));
        r.sweep(T0 + 25_000_000);
        assert_eq!((r.prefix_sessions(a.ip()), r.active_sessions()), (0, 0));
    }

    /// Sweeps cost a pass over the table: an Open into a table and a prefix with room sweeps
    /// nothing, and a session past its time stays held until a sweep.
    #[test]
    fn a_table_with_room_is_not_swept() {
        let mut r = Reflector::new([1; 32], Limits::default());
        let a = addr("127.0.0.2:5000");
        let acc = open(&mut r, T0, a, 1);
        r.handle(T0, a, &probe(acc.cookie, 1, 0, 172)).unwrap();
        let later = T0 + 25_000_000;
        for (src, session) in [(addr("127.0.1.2:5000"), 2), (a, 3)] {
            assert!(matches!(
                open_answer(&mut r, later, src, session),
                Packet::Accept(_)
            ));
            assert_eq!(r.active_sessions(), 1);
        }
        r.sweep(later);
        assert_eq!(r.active_sessions(), 0);
    }

    /// Every byte of a cookie's 6-byte tag is checked, and differences in two bytes cannot
    /// cancel out.
    #[test]
    fn every_byte_of_the_cookie_tag_counts() {
        let mut r = Reflector::new([1; 32], Limits::default());
        let a = addr("127.0.0.2:5000");
        let acc = open(&mut r, T0, a, 9);
        let mut forged = Vec::new();
        for (i, mask) in [(10usize, 0x01u8), (15, 0x80)] {
            let mut c = acc.cookie;
            c[i] ^= mask;
            forged.push(c);
        }
        let mut c = acc.cookie;
        c[10] ^= 0x01;
        c[11] ^= 0x01;
        forged.push(c);
        for c in forged {
            assert!(r.handle(T0, a, &probe(c, 9, 0, 172)).is_none(), "{c:?}");
        }
        assert!(r.handle(T0, a, &probe(acc.cookie, 9, 0, 172)).is_some());
        assert_eq!(r.stats().dropped_bad_cookie, 3);
    }

    /// A cookie is good from one second before its issue (the clock's granularity) to issue +
    /// (granted seconds + 1) + the grace, both ends included: here 10 s granted and a grace of
    /// 2.5 s, so T0 − 1 s to T0 + 13.5 s.
    #[test]
    fn a_cookie_is_good_from_a_second_before_its_issue_to_its_end_inclusive() {
        let limits = Limits {
            cookie_grace_ms: 2_500,
            ..Limits::default()
        };
        let mut r = Reflector::new([1; 32], limits);
        let a = addr("127.0.0.2:5000");
        let acc = open(&mut r, T0, a, 9);
        let close = Packet::Close(Close {
            session: 9,
            cookie: acc.cookie,
            packets_sent: 0,
        })
        .encode();
        let end = T0 + 11_000_000 + 2_500_000;
        for (now, good) in [
            (T0 - 1_000_001, false),
            (T0 - 1_000_000, true),
            (end, true),
            (end + 1, false),
        ] {
            assert_eq!(
                r.handle(now, a, &close).is_some(),
                good,
                "at T0 + {}",
                now as i64 - T0 as i64
            );
        }
    }

    /// XOR-MAPPED-ADDRESS of an IPv6 source (RFC 8489 §14.2): the port XORed with the magic
    /// cookie's top 16 bits, the address with the magic cookie then the transaction id.
    #[test]
    fn an_ipv6_source_is_xored_with_the_cookie_and_the_transaction_id() {
        let mut r = Reflector::new([1; 32], Limits::default());
        let out = r
            .handle(T0, addr("[2001:db8::1]:5000"), &binding_request(44))
            .unwrap();
        assert_eq!(out.len(), 44);
        // A Binding success response whose length is its one attribute: 4 + 20 bytes.
        assert_eq!(&out[0..2], &STUN_BINDING_SUCCESS.to_be_bytes());
        assert_eq!(&out[2..4], &[0, 24]);
        // Type 0x0020, length 20; family 2; port 5000 ^ 0x2112 = 0x1388 ^ 0x2112 = 0x329A.
        assert_eq!(&out[20..28], &[0x00, 0x20, 0x00, 20, 0, 2, 0x32, 0x9A]);
        // 20 01 0d b8 0…0 01 XOR 21 12 a4 42, then twelve 09s.
        assert_eq!(
            &out[28..44],
            &[0x01, 0x13, 0xA9, 0xFA, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 0x08]
        );
    }

    /// `turn_allocate_success` answers only an Allocate request with the magic cookie: a wrong
    /// message type or a wrong cookie alone gets nothing.
    #[test]
    fn only_an_allocate_request_with_the_magic_cookie_gets_an_allocate_success() {
        let src = addr("127.0.0.2:5000");
        let request = allocate(1);
        assert!(turn_allocate_success(&request, src, &[7; 20]).is_some());
        let mut wrong_type = request.clone();
        wrong_type[0..2].copy_from_slice(&STUN_BINDING_REQUEST.to_be_bytes());
        assert!(turn_allocate_success(&wrong_type, src, &[7; 20]).is_none());
        let mut wrong_cookie = request;
        wrong_cookie[4] ^= 0xFF;
        assert!(turn_allocate_success(&wrong_cookie, src, &[7; 20]).is_none());
    }

    proptest! {
        /// Whatever arrives, the reflector never answers with more bytes than it received.
        #[test]
        fn never_amplifies(datagrams in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..1500), 1..50), with_cookie in any::<bool>()) {
            let mut r = Reflector::new([3; 32], Limits::default())
                .with_seal(ReflectorSecret::from_bytes([4; 32]))
                .with_attestation(test_attester());
            let a = addr("127.0.0.9:9");
            let mut cookie = [0; 16];
            if with_cookie {
                cookie = open(&mut r, T0, a, 77).cookie;
            }
            for (i, d) in datagrams.iter().enumerate() {
                let mut d = d.clone();
                // Make some of them well-formed probes so the reflecting branch is exercised.
                if i % 2 == 0 && d.len() >= MIN_PROBE_LEN && d.len() <= MAX_PROBE_LEN {
                    d = probe(cookie, 77, i as u32, d.len() as u16);
                }
                // And some preambles, whole or cut.
                if i % 5 == 1 {
                    let whole = if i % 2 == 0 { hello(i as u64) } else { allocate(i as u64) };
                    d = whole[..whole.len() - d.len().min(whole.len()) % 8].to_vec();
                }
                // And attestation queries, whole or cut (rule 9).
                if i % 7 == 3 {
                    let q = attest_query(cookie, 77, [i as u8; 16]);
                    d = q[..q.len() - d.len().min(q.len()) % 3].to_vec();
                }
                if let Some(out) = r.handle(T0 + i as u64, a, &d) {
                    prop_assert!(out.len() <= d.len());
                }
            }
            let s = r.stats();
            prop_assert!(s.bytes_out <= s.bytes_in);
        }
    }
}
