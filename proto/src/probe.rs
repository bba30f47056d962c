//! The UDP probe protocol between an agent and a reflector, version 1.
//!
//! A session runs: `Open` → `Accept` (or `Reject`) → many `Probe` → `Reply` → `Close` → `CloseAck`.
//! When one arm's `CloseAck` cannot come back (a censor drops that arm's replies), the agent asks
//! for that session's count through another arm's session: `CountQuery` → `CountReply`, the query
//! authenticated by both sessions' cookies.
//! The reflector's `Accept` carries a stateless cookie bound to the agent's address; every later
//! packet from the agent carries it, so the reflector answers only addresses that proved they
//! receive. Every answer is at most as long as the packet it answers ([`Reply`] is exactly as long
//! as its [`Probe`]), so a reflector can never amplify.
//!
//! All integers are big-endian. Every packet starts with the version byte and a kind byte.
//! Timestamps are microseconds on the sender's own clock; only differences on one clock, and the
//! minimum-filtered offset between clocks, are ever used (see the agent's metrics).

use thiserror::Error;

/// The protocol version carried in the first byte of every packet.
pub const VERSION: u8 = 1;
/// Length of an `Open` packet; padded so that `Accept` and `Reject` are shorter.
pub const OPEN_LEN: usize = 64;
pub const ACCEPT_LEN: usize = 48;
pub const REJECT_LEN: usize = 16;
pub const CLOSE_LEN: usize = 48;
pub const CLOSE_ACK_LEN: usize = 24;
/// Length of a `CountQuery`; padded so that `CountReply` is shorter.
pub const COUNT_QUERY_LEN: usize = 64;
pub const COUNT_REPLY_LEN: usize = 24;
/// Length of an `AttestQuery`; padded so that its `Attestation` is shorter.
pub const ATTEST_QUERY_LEN: usize = 128;
pub const ATTESTATION_LEN: usize = 112;
/// Length of an `AttestQuery` that asks for a path token too ([`crate::pathtoken`]); padded so
/// that its answer, with the token, is shorter.
pub const ATTEST_TOKEN_QUERY_LEN: usize = 192;
/// Length of an `Attestation` with a path token.
pub const ATTESTATION_TOKEN_LEN: usize = 168;
/// Bytes of a probe before its padding.
pub const PROBE_HEADER_LEN: usize = 38;
/// Bytes of a reply before its padding.
pub const REPLY_HEADER_LEN: usize = 44;
/// The smallest probe: a reply (same length) must fit its header.
pub const MIN_PROBE_LEN: usize = 48;
/// The largest probe: fits a 1500-byte MTU with IPv6 and UDP headers and a platform framing.
pub const MAX_PROBE_LEN: usize = 1400;
/// Length of the cookie a reflector hands out.
pub const COOKIE_LEN: usize = 16;

const KIND_OPEN: u8 = 1;
const KIND_ACCEPT: u8 = 2;
const KIND_PROBE: u8 = 3;
const KIND_REPLY: u8 = 4;
const KIND_CLOSE: u8 = 5;
const KIND_REJECT: u8 = 6;
const KIND_CLOSE_ACK: u8 = 7;
const KIND_COUNT_QUERY: u8 = 8;
const KIND_COUNT_REPLY: u8 = 9;
const KIND_ATTEST_QUERY: u8 = 10;
const KIND_ATTESTATION: u8 = 11;
const KIND_ATTEST_TOKEN_QUERY: u8 = 12;
const KIND_ATTESTATION_TOKEN: u8 = 13;
// The same four, asking for and carrying the signed subdivision ([`FEATURE_SUBDIVISION`]).
const KIND_ATTEST_QUERY_SUBDIVISION: u8 = 14;
const KIND_ATTESTATION_SUBDIVISION: u8 = 15;
const KIND_ATTEST_TOKEN_QUERY_SUBDIVISION: u8 = 16;
const KIND_ATTESTATION_TOKEN_SUBDIVISION: u8 = 17;

/// The agent's session identifier, chosen at random per session (and per arm).
pub type SessionId = u64;
/// A reflector cookie; opaque to the agent.
pub type Cookie = [u8; COOKIE_LEN];

/// Why a packet could not be decoded. Decoding never panics; every input maps to a packet or this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("empty packet")]
    Empty,
    #[error("unsupported probe protocol version {0} (this build speaks {VERSION})")]
    Version(u8),
    #[error("unknown packet kind {0}")]
    Kind(u8),
    #[error("{kind} packet of {len} bytes, expected {expected}")]
    Length {
        kind: &'static str,
        len: usize,
        expected: &'static str,
    },
}

/// The agent asks for a session with these parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    pub session: SessionId,
    pub interval_ms: u16,
    pub size: u16,
    pub duration_ms: u32,
}

/// The reflector grants a session: the cookie and the limits it will enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accept {
    pub session: SessionId,
    pub cookie: Cookie,
    /// Smallest interval between probes the reflector will answer at.
    pub interval_ms: u16,
    /// Largest probe the reflector will answer.
    pub size: u16,
    /// How long the session may run.
    pub duration_ms: u32,
    pub reflector_time_us: u64,
    /// What this reflector's replies carry beyond version 1's ([`FEATURE_LOAD`]); 0 from
    /// reflectors that predate the field (it was padding, always zero).
    pub features: u8,
    /// The first 4 bytes of SHA-256 of the reflector's sealing key
    /// ([`crate::seal::ReflectorKey::id`]); zeros from a reflector without one. An agent whose
    /// configured key has another id knows its sealed arm cannot be answered, and says so
    /// instead of reporting the silence as a block.
    pub seal_key_id: [u8; 4],
}

/// [`Accept::features`]: replies carry the kernel's receive time (so `reflector_tx_us −
/// reflector_rx_us` is the reflector's residence time) and [`Reply::reflector_drops`]. Without
/// it an agent ignores the bytes where `reflector_drops` sits (an older reflector echoes probe
/// padding there).
pub const FEATURE_LOAD: u8 = 1;
/// [`Accept::features`]: this reflector makes path tokens ([`crate::pathtoken`]) with its
/// attestations, so an agent asks with the longer query ([`AttestQuery::with_token`]).
pub const FEATURE_PATH_TOKEN: u8 = 2;
/// [`Accept::features`]: this reflector signs the first-level subdivision in its attestations
/// when asked ([`AttestQuery::with_subdivision`]); an agent asks only a reflector that says so
/// (an older one would drop the unknown query kind, and the agent would get no attestation).
pub const FEATURE_SUBDIVISION: u8 = 4;

/// Why a reflector refused an `Open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    Busy = 1,
    BadRequest = 2,
    RateLimited = 3,
    Other = 255,
}

impl RejectReason {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => RejectReason::Busy,
            2 => RejectReason::BadRequest,
            3 => RejectReason::RateLimited,
            _ => RejectReason::Other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub session: SessionId,
    pub reason: RejectReason,
}

/// One probe of the isochronous stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub session: SessionId,
    pub cookie: Cookie,
    pub seq: u32,
    /// Agent clock, microseconds.
    pub sent_us: u64,
    /// Total length on the wire, padding included.
    pub len: u16,
}

/// The reflector's echo of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub session: SessionId,
    pub seq: u32,
    /// The probe's `sent_us`, echoed.
    pub sent_us: u64,
    /// Reflector clock when the probe arrived.
    pub reflector_rx_us: u64,
    /// Reflector clock when the reply left.
    pub reflector_tx_us: u64,
    /// Probes the reflector has received in this session so far, this one included.
    pub reflector_received: u32,
    /// Datagrams the reflector's kernel dropped on this socket (receive queue full) since the
    /// session began, saturating: a loaded reflector, not a lossy network.
    pub reflector_drops: u16,
    /// Total length on the wire; always the probe's length.
    pub len: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub session: SessionId,
    pub cookie: Cookie,
    pub packets_sent: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseAck {
    pub session: SessionId,
    /// Final count of distinct probes the reflector received in this session.
    pub reflector_received: u32,
}

/// Asks, on one session (`session`, `cookie`: the arm that still gets answers), for another
/// session's count of received probes (`target`, `target_cookie`: the arm whose own `CloseAck`
/// cannot come back). Knowing both cookies proves the asker receives at both addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountQuery {
    pub session: SessionId,
    pub cookie: Cookie,
    pub target: SessionId,
    pub target_cookie: Cookie,
}

/// The reflector's count for `target`; `reflector_received` is 0 when it holds no state for it
/// (no probe of that session ever arrived).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountReply {
    pub session: SessionId,
    pub target: SessionId,
    pub reflector_received: u32,
}

/// Asks, on a session (`session`, `cookie`), for the reflector's signed attestation of the
/// region this session's probes come from, for the report `report_id` (see [`crate::attest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttestQuery {
    pub session: SessionId,
    pub cookie: Cookie,
    pub report_id: [u8; 16],
    /// Asks for a path token too (a longer query, kind 12, so its longer answer does not
    /// amplify); reflectors that make none answer it without one.
    pub with_token: bool,
    /// Asks for the subdivision to be signed too (kinds 14 and 16, same lengths as 10 and 12;
    /// only to a reflector advertising [`FEATURE_SUBDIVISION`]).
    pub with_subdivision: bool,
}

/// The reflector's answer to an [`AttestQuery`]: the claim and its Ed25519 signature. No address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attestation {
    pub session: SessionId,
    pub report_id: [u8; 16],
    pub country: [u8; 2],
    pub asn: u32,
    pub hour: u32,
    pub key_id: [u8; crate::attest::KEY_ID_LEN],
    pub signature: [u8; crate::attest::SIGNATURE_LEN],
    /// The path token the signature covers the digest of (kind 13), if the reflector made one.
    pub token: Option<crate::pathtoken::PathToken>,
    /// The subdivision the signature covers (kinds 15 and 17, in what was padding of kinds 11
    /// and 13, so the lengths stay), if the query asked for it and the reflector knows one.
    pub subdivision: Option<crate::attest::Subdivision>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet {
    Open(Open),
    Accept(Accept),
    Reject(Reject),
    Probe(Probe),
    Reply(Reply),
    Close(Close),
    CloseAck(CloseAck),
    CountQuery(CountQuery),
    CountReply(CountReply),
    AttestQuery(AttestQuery),
    Attestation(Attestation),
}

impl Packet {
    /// Encodes the packet, padding as the format requires.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.wire_len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded packet to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        match self {
            Packet::Open(p) => {
                out.extend_from_slice(&[VERSION, KIND_OPEN]);
                out.extend_from_slice(&p.session.to_be_bytes());
                out.extend_from_slice(&p.interval_ms.to_be_bytes());
                out.extend_from_slice(&p.size.to_be_bytes());
                out.extend_from_slice(&p.duration_ms.to_be_bytes());
            }
            Packet::Accept(p) => {
                out.extend_from_slice(&[VERSION, KIND_ACCEPT]);
                out.extend_from_slice(&p.session.to_be_bytes());
                out.extend_from_slice(&p.cookie);
                out.extend_from_slice(&p.interval_ms.to_be_bytes());
                out.extend_from_slice(&p.size.to_be_bytes());
                out.extend_from_slice(&p.duration_ms.to_be_bytes());
                out.extend_from_slice(&p.reflector_time_us.to_be_bytes());
                out.push(p.features);
                out.extend_from_slice(&p.seal_key_id);
            }
            Packet::Reject(p) => {
                out.extend_from_slice(&[VERSION, KIND_REJECT]);
                out.extend_from_slice(&p.session.to_be_bytes());
                out.push(p.reason as u8);
            }
            Packet::Probe(p) => {
                out.extend_from_slice(&[VERSION, KIND_PROBE]);
                out.extend_from_slice(&p.session.to_be_bytes());
                out.extend_from_slice(&p.cookie);
                out.extend_from_slice(&p.seq.to_be_bytes());
                out.extend_from_slice(&p.sent_us.to_be_bytes());
            }
            Packet::Reply(p) => {
                out.extend_from_slice(&[VERSION, KIND_REPLY]);
                out.extend_from_slice(&p.session.to_be_bytes());
                out.extend_from_slice(&p.seq.to_be_bytes());
                out.extend_from_slice(&p.sent_us.to_be_bytes());
                out.extend_from_slice(&p.reflector_rx_us.to_be_bytes());
                out.extend_from_slice(&p.reflector_tx_us.to_be_bytes());
                out.extend_from_slice(&p.reflector_received.to_be_bytes());
                out.extend_from_slice(&p.reflector_drops.to_be_bytes());
            }
            Packet::Close(p) => {
                out.extend_from_slice(&[VERSION, KIND_CLOSE]);
                out.extend_from_slice(&p.session.to_be_bytes());
                out.extend_from_slice(&p.cookie);
                out.extend_from_slice(&p.packets_sent.to_be_bytes());
            }
            Packet::CloseAck(p) => {
                out.extend_from_slice(&[VERSION, KIND_CLOSE_ACK]);
                out.extend_from_slice(&p.session.to_be_bytes());
                out.extend_from_slice(&p.reflector_received.to_be_bytes());
            }
            Packet::CountQuery(p) => {
                out.extend_from_slice(&[VERSION, KIND_COUNT_QUERY]);
                out.extend_from_slice(&p.session.to_be_bytes());
                out.extend_from_slice(&p.cookie);
                out.extend_from_slice(&p.target.to_be_bytes());
                out.extend_from_slice(&p.target_cookie);
            }
            Packet::CountReply(p) => {
                out.extend_from_slice(&[VERSION, KIND_COUNT_REPLY]);
                out.extend_from_slice(&p.session.to_be_bytes());
                out.extend_from_slice(&p.target.to_be_bytes());
                out.extend_from_slice(&p.reflector_received.to_be_bytes());
            }
            Packet::AttestQuery(p) => {
                let kind = match (p.with_token, p.with_subdivision) {
                    (false, false) => KIND_ATTEST_QUERY,
                    (true, false) => KIND_ATTEST_TOKEN_QUERY,
                    (false, true) => KIND_ATTEST_QUERY_SUBDIVISION,
                    (true, true) => KIND_ATTEST_TOKEN_QUERY_SUBDIVISION,
                };
                out.extend_from_slice(&[VERSION, kind]);
                out.extend_from_slice(&p.session.to_be_bytes());
                out.extend_from_slice(&p.cookie);
                out.extend_from_slice(&p.report_id);
            }
            Packet::Attestation(p) => {
                let kind = match (p.token.is_some(), p.subdivision.is_some()) {
                    (false, false) => KIND_ATTESTATION,
                    (true, false) => KIND_ATTESTATION_TOKEN,
                    (false, true) => KIND_ATTESTATION_SUBDIVISION,
                    (true, true) => KIND_ATTESTATION_TOKEN_SUBDIVISION,
                };
                out.extend_from_slice(&[VERSION, kind]);
                out.extend_from_slice(&p.session.to_be_bytes());
                out.extend_from_slice(&p.report_id);
                out.extend_from_slice(&p.country);
                out.extend_from_slice(&p.asn.to_be_bytes());
                out.extend_from_slice(&p.hour.to_be_bytes());
                out.extend_from_slice(&p.key_id);
                out.extend_from_slice(&p.signature);
                if let Some(t) = &p.token {
                    out.extend_from_slice(t);
                }
                if let Some(s) = &p.subdivision {
                    out.extend_from_slice(s);
                }
            }
        }
        out.resize(start + self.wire_len(), 0);
    }

    /// Bytes of the encoded packet that hold its fields; the rest, up to [`Packet::wire_len`], is
    /// padding that [`Packet::decode`] never reads. `encode` writes zeros there; a sender may
    /// overwrite them with anything (the agent writes high-entropy bytes, like an SRTP payload).
    pub fn fields_len(&self) -> usize {
        match self {
            Packet::Open(_) => 2 + 8 + 2 + 2 + 4,
            Packet::Accept(_) => 2 + 8 + COOKIE_LEN + 2 + 2 + 4 + 8 + 1 + 4,
            Packet::Reject(_) => 2 + 8 + 1,
            Packet::Probe(_) => PROBE_HEADER_LEN,
            Packet::Reply(_) => REPLY_HEADER_LEN,
            Packet::Close(_) => 2 + 8 + COOKIE_LEN + 4,
            Packet::CloseAck(_) => 2 + 8 + 4,
            Packet::CountQuery(_) => 2 + 8 + COOKIE_LEN + 8 + COOKIE_LEN,
            Packet::CountReply(_) => 2 + 8 + 8 + 4,
            Packet::AttestQuery(_) => 2 + 8 + COOKIE_LEN + 16,
            Packet::Attestation(a) => {
                2 + 8
                    + 16
                    + 2
                    + 4
                    + 4
                    + crate::attest::KEY_ID_LEN
                    + crate::attest::SIGNATURE_LEN
                    + a.token.map_or(0, |t| t.len())
                    + a.subdivision.map_or(0, |s| s.len())
            }
        }
    }

    /// Length of the encoded packet.
    pub fn wire_len(&self) -> usize {
        match self {
            Packet::Open(_) => OPEN_LEN,
            Packet::Accept(_) => ACCEPT_LEN,
            Packet::Reject(_) => REJECT_LEN,
            Packet::Probe(p) => clamp_probe_len(p.len),
            Packet::Reply(p) => clamp_probe_len(p.len),
            Packet::Close(_) => CLOSE_LEN,
            Packet::CloseAck(_) => CLOSE_ACK_LEN,
            Packet::CountQuery(_) => COUNT_QUERY_LEN,
            Packet::CountReply(_) => COUNT_REPLY_LEN,
            Packet::AttestQuery(q) if q.with_token => ATTEST_TOKEN_QUERY_LEN,
            Packet::AttestQuery(_) => ATTEST_QUERY_LEN,
            Packet::Attestation(a) if a.token.is_some() => ATTESTATION_TOKEN_LEN,
            Packet::Attestation(_) => ATTESTATION_LEN,
        }
    }

    /// Decodes the packet at the start of `buf`, ignoring what follows a fixed-length packet
    /// (a sealed envelope pads its core to the profile's sizes, see [`crate::seal`]); a probe or
    /// reply takes all of `buf`. Returns the packet and the bytes it took. Never panics.
    pub fn decode_prefix(buf: &[u8]) -> Result<(Packet, usize), DecodeError> {
        let fixed = match buf.get(1).copied() {
            Some(KIND_OPEN) => Some(OPEN_LEN),
            Some(KIND_ACCEPT) => Some(ACCEPT_LEN),
            Some(KIND_REJECT) => Some(REJECT_LEN),
            Some(KIND_CLOSE) => Some(CLOSE_LEN),
            Some(KIND_CLOSE_ACK) => Some(CLOSE_ACK_LEN),
            Some(KIND_COUNT_QUERY) => Some(COUNT_QUERY_LEN),
            Some(KIND_COUNT_REPLY) => Some(COUNT_REPLY_LEN),
            Some(KIND_ATTEST_QUERY | KIND_ATTEST_QUERY_SUBDIVISION) => Some(ATTEST_QUERY_LEN),
            Some(KIND_ATTESTATION | KIND_ATTESTATION_SUBDIVISION) => Some(ATTESTATION_LEN),
            Some(KIND_ATTEST_TOKEN_QUERY | KIND_ATTEST_TOKEN_QUERY_SUBDIVISION) => {
                Some(ATTEST_TOKEN_QUERY_LEN)
            }
            Some(KIND_ATTESTATION_TOKEN | KIND_ATTESTATION_TOKEN_SUBDIVISION) => {
                Some(ATTESTATION_TOKEN_LEN)
            }
            _ => None,
        };
        let take = fixed.map_or(buf.len(), |n| n.min(buf.len()));
        Ok((Packet::decode(&buf[..take])?, take))
    }

    /// Decodes one packet. Never panics; any byte string yields a packet or a [`DecodeError`].
    pub fn decode(buf: &[u8]) -> Result<Packet, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        let version = r.u8().ok_or(DecodeError::Empty)?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let kind = r.u8().ok_or(DecodeError::Kind(0))?;
        let len = buf.len();
        let exact = |name: &'static str, want: usize, expected: &'static str| {
            if len == want {
                Ok(())
            } else {
                Err(DecodeError::Length {
                    kind: name,
                    len,
                    expected,
                })
            }
        };
        let probe_sized = |name: &'static str| {
            if (MIN_PROBE_LEN..=MAX_PROBE_LEN).contains(&len) {
                Ok(())
            } else {
                Err(DecodeError::Length {
                    kind: name,
                    len,
                    expected: "48..=1400",
                })
            }
        };
        // Every field read below is within the length checked just before it, so the
        // `Reader` calls cannot fail; they still return `Option` and are mapped, never unwrapped.
        let short = DecodeError::Length {
            kind: "packet",
            len,
            expected: "longer",
        };
        Ok(match kind {
            KIND_OPEN => {
                exact("open", OPEN_LEN, "64")?;
                Packet::Open(Open {
                    session: r.u64().ok_or(short)?,
                    interval_ms: r.u16().ok_or(short)?,
                    size: r.u16().ok_or(short)?,
                    duration_ms: r.u32().ok_or(short)?,
                })
            }
            KIND_ACCEPT => {
                exact("accept", ACCEPT_LEN, "48")?;
                Packet::Accept(Accept {
                    session: r.u64().ok_or(short)?,
                    cookie: r.cookie().ok_or(short)?,
                    interval_ms: r.u16().ok_or(short)?,
                    size: r.u16().ok_or(short)?,
                    duration_ms: r.u32().ok_or(short)?,
                    reflector_time_us: r.u64().ok_or(short)?,
                    features: r.u8().ok_or(short)?,
                    seal_key_id: r.take::<4>().ok_or(short)?,
                })
            }
            KIND_REJECT => {
                exact("reject", REJECT_LEN, "16")?;
                Packet::Reject(Reject {
                    session: r.u64().ok_or(short)?,
                    reason: RejectReason::from_u8(r.u8().ok_or(short)?),
                })
            }
            KIND_PROBE => {
                probe_sized("probe")?;
                Packet::Probe(Probe {
                    session: r.u64().ok_or(short)?,
                    cookie: r.cookie().ok_or(short)?,
                    seq: r.u32().ok_or(short)?,
                    sent_us: r.u64().ok_or(short)?,
                    len: len as u16,
                })
            }
            KIND_REPLY => {
                probe_sized("reply")?;
                Packet::Reply(Reply {
                    session: r.u64().ok_or(short)?,
                    seq: r.u32().ok_or(short)?,
                    sent_us: r.u64().ok_or(short)?,
                    reflector_rx_us: r.u64().ok_or(short)?,
                    reflector_tx_us: r.u64().ok_or(short)?,
                    reflector_received: r.u32().ok_or(short)?,
                    reflector_drops: r.u16().ok_or(short)?,
                    len: len as u16,
                })
            }
            KIND_CLOSE => {
                exact("close", CLOSE_LEN, "48")?;
                Packet::Close(Close {
                    session: r.u64().ok_or(short)?,
                    cookie: r.cookie().ok_or(short)?,
                    packets_sent: r.u32().ok_or(short)?,
                })
            }
            KIND_CLOSE_ACK => {
                exact("close-ack", CLOSE_ACK_LEN, "24")?;
                Packet::CloseAck(CloseAck {
                    session: r.u64().ok_or(short)?,
                    reflector_received: r.u32().ok_or(short)?,
                })
            }
            KIND_COUNT_QUERY => {
                exact("count-query", COUNT_QUERY_LEN, "64")?;
                Packet::CountQuery(CountQuery {
                    session: r.u64().ok_or(short)?,
                    cookie: r.cookie().ok_or(short)?,
                    target: r.u64().ok_or(short)?,
                    target_cookie: r.cookie().ok_or(short)?,
                })
            }
            KIND_COUNT_REPLY => {
                exact("count-reply", COUNT_REPLY_LEN, "24")?;
                Packet::CountReply(CountReply {
                    session: r.u64().ok_or(short)?,
                    target: r.u64().ok_or(short)?,
                    reflector_received: r.u32().ok_or(short)?,
                })
            }
            KIND_ATTEST_QUERY
            | KIND_ATTEST_TOKEN_QUERY
            | KIND_ATTEST_QUERY_SUBDIVISION
            | KIND_ATTEST_TOKEN_QUERY_SUBDIVISION => {
                let with_token = matches!(
                    kind,
                    KIND_ATTEST_TOKEN_QUERY | KIND_ATTEST_TOKEN_QUERY_SUBDIVISION
                );
                let (name, want, text) = if with_token {
                    ("attest-token-query", ATTEST_TOKEN_QUERY_LEN, "192")
                } else {
                    ("attest-query", ATTEST_QUERY_LEN, "128")
                };
                exact(name, want, text)?;
                Packet::AttestQuery(AttestQuery {
                    session: r.u64().ok_or(short)?,
                    cookie: r.cookie().ok_or(short)?,
                    report_id: r.take().ok_or(short)?,
                    with_token,
                    with_subdivision: kind >= KIND_ATTEST_QUERY_SUBDIVISION,
                })
            }
            KIND_ATTESTATION
            | KIND_ATTESTATION_TOKEN
            | KIND_ATTESTATION_SUBDIVISION
            | KIND_ATTESTATION_TOKEN_SUBDIVISION => {
                let with_token = matches!(
                    kind,
                    KIND_ATTESTATION_TOKEN | KIND_ATTESTATION_TOKEN_SUBDIVISION
                );
                let with_subdivision = matches!(
                    kind,
                    KIND_ATTESTATION_SUBDIVISION | KIND_ATTESTATION_TOKEN_SUBDIVISION
                );
                let (name, want, text) = if with_token {
                    ("attestation-token", ATTESTATION_TOKEN_LEN, "168")
                } else {
                    ("attestation", ATTESTATION_LEN, "112")
                };
                exact(name, want, text)?;
                Packet::Attestation(Attestation {
                    session: r.u64().ok_or(short)?,
                    report_id: r.take().ok_or(short)?,
                    country: r.take().ok_or(short)?,
                    asn: r.u32().ok_or(short)?,
                    hour: r.u32().ok_or(short)?,
                    key_id: r.take().ok_or(short)?,
                    signature: r.take().ok_or(short)?,
                    token: if with_token {
                        Some(r.take().ok_or(short)?)
                    } else {
                        None
                    },
                    subdivision: if with_subdivision {
                        Some(r.take().ok_or(short)?)
                    } else {
                        None
                    },
                })
            }
            other => return Err(DecodeError::Kind(other)),
        })
    }
}

fn clamp_probe_len(len: u16) -> usize {
    (len as usize).clamp(MIN_PROBE_LEN, MAX_PROBE_LEN)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let bytes = self.buf.get(self.pos..self.pos.checked_add(N)?)?;
        self.pos += N;
        bytes.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_be_bytes)
    }
    fn cookie(&mut self) -> Option<Cookie> {
        self.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_packet() -> impl Strategy<Value = Packet> {
        let cookie = any::<[u8; COOKIE_LEN]>();
        let len = (MIN_PROBE_LEN as u16)..=(MAX_PROBE_LEN as u16);
        prop_oneof![
            (any::<u64>(), any::<u16>(), any::<u16>(), any::<u32>()).prop_map(
                |(session, interval_ms, size, duration_ms)| Packet::Open(Open {
                    session,
                    interval_ms,
                    size,
                    duration_ms
                })
            ),
            (
                any::<u64>(),
                cookie,
                any::<u16>(),
                any::<u16>(),
                any::<u32>(),
                any::<u64>()
            )
                .prop_map(|(session, cookie, interval_ms, size, duration_ms, t)| {
                    Packet::Accept(Accept {
                        session,
                        cookie,
                        interval_ms,
                        size,
                        duration_ms,
                        reflector_time_us: t,
                        features: 0,
                        seal_key_id: [0; 4],
                    })
                }),
            (
                any::<u64>(),
                cookie,
                any::<u32>(),
                any::<u64>(),
                len.clone()
            )
                .prop_map(|(session, cookie, seq, sent_us, len)| Packet::Probe(
                    Probe {
                        session,
                        cookie,
                        seq,
                        sent_us,
                        len
                    }
                )),
            (
                any::<u64>(),
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                len
            )
                .prop_map(|(session, seq, sent_us, rx, tx, n, len)| Packet::Reply(
                    Reply {
                        session,
                        seq,
                        sent_us,
                        reflector_rx_us: rx,
                        reflector_tx_us: tx,
                        reflector_received: n,
                        reflector_drops: 0,
                        len
                    }
                )),
            (any::<u64>(), cookie, any::<u32>()).prop_map(|(session, cookie, packets_sent)| {
                Packet::Close(Close {
                    session,
                    cookie,
                    packets_sent,
                })
            }),
            (any::<u64>(), any::<u32>()).prop_map(|(session, n)| Packet::CloseAck(CloseAck {
                session,
                reflector_received: n
            })),
            (
                any::<u64>(),
                cookie,
                any::<u64>(),
                any::<[u8; COOKIE_LEN]>()
            )
                .prop_map(|(session, cookie, target, target_cookie)| {
                    Packet::CountQuery(CountQuery {
                        session,
                        cookie,
                        target,
                        target_cookie,
                    })
                }),
            (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(session, target, n)| {
                Packet::CountReply(CountReply {
                    session,
                    target,
                    reflector_received: n,
                })
            }),
            (
                any::<u64>(),
                cookie,
                any::<[u8; 16]>(),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(
                    |(session, cookie, report_id, with_token, with_subdivision)| {
                        Packet::AttestQuery(AttestQuery {
                            session,
                            cookie,
                            report_id,
                            with_token,
                            with_subdivision,
                        })
                    }
                ),
            (
                any::<u64>(),
                any::<[u8; 16]>(),
                any::<[u8; 2]>(),
                any::<u32>(),
                any::<u32>(),
                any::<[u8; 8]>(),
                proptest::collection::vec(any::<u8>(), 64),
                proptest::option::of(proptest::collection::vec(
                    any::<u8>(),
                    crate::pathtoken::PATH_TOKEN_LEN
                )),
                proptest::option::of(any::<[u8; 3]>()),
            )
                .prop_map(
                    |(session, report_id, country, asn, hour, key_id, sig, token, subdivision)| {
                        let mut signature = [0u8; 64];
                        signature.copy_from_slice(&sig);
                        Packet::Attestation(Attestation {
                            session,
                            report_id,
                            country,
                            asn,
                            hour,
                            key_id,
                            signature,
                            token: token.map(|t| {
                                let mut a = [0u8; crate::pathtoken::PATH_TOKEN_LEN];
                                a.copy_from_slice(&t);
                                a
                            }),
                            subdivision,
                        })
                    }
                ),
            any::<u64>().prop_map(|session| Packet::Reject(Reject {
                session,
                reason: RejectReason::Busy
            })),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(p in arb_packet()) {
            let bytes = p.encode();
            prop_assert_eq!(bytes.len(), p.wire_len());
            prop_assert_eq!(Packet::decode(&bytes).unwrap(), p);
        }

        #[test]
        fn padding_after_the_fields_is_never_read(p in arb_packet(), fill in any::<u8>()) {
            let mut bytes = p.encode();
            let fields = p.fields_len();
            prop_assert!(fields <= bytes.len());
            prop_assert!(bytes[fields..].iter().all(|&b| b == 0));
            for b in &mut bytes[fields..] {
                *b = fill;
            }
            prop_assert_eq!(Packet::decode(&bytes).unwrap(), p);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = Packet::decode(&bytes);
        }

        #[test]
        fn truncated_packets_are_errors(p in arb_packet(), cut in 1usize..64) {
            let bytes = p.encode();
            let cut = cut.min(bytes.len());
            let short = &bytes[..bytes.len() - cut];
            // Probes and replies are variable length: a shorter one may still be valid if long enough.
            match p {
                Packet::Probe(_) | Packet::Reply(_) if short.len() >= MIN_PROBE_LEN => {}
                _ => prop_assert!(Packet::decode(short).is_err()),
            }
        }
    }

    #[test]
    fn answers_are_never_longer_than_requests() {
        const { assert!(ACCEPT_LEN <= OPEN_LEN) };
        const { assert!(REJECT_LEN <= OPEN_LEN) };
        const { assert!(CLOSE_ACK_LEN <= CLOSE_LEN) };
        const { assert!(COUNT_REPLY_LEN <= COUNT_QUERY_LEN) };
        const { assert!(ATTESTATION_LEN <= ATTEST_QUERY_LEN) };
        const { assert!(ATTESTATION_TOKEN_LEN <= ATTEST_TOKEN_QUERY_LEN) };
        const { assert!(REPLY_HEADER_LEN <= MIN_PROBE_LEN) };
        const { assert!(PROBE_HEADER_LEN <= MIN_PROBE_LEN) };
    }

    #[test]
    fn wrong_version_is_named() {
        let mut bytes = Packet::CloseAck(CloseAck {
            session: 1,
            reflector_received: 2,
        })
        .encode();
        bytes[0] = 9;
        assert_eq!(Packet::decode(&bytes), Err(DecodeError::Version(9)));
        assert_eq!(Packet::decode(&[]), Err(DecodeError::Empty));
    }
}
