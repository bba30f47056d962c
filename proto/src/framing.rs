//! Platform framings: how a callwatch core packet is dressed to look like one platform's call
//! traffic on the wire, and how a reflector recognises the dress and answers in the same one.
//!
//! A test's *platform arm* wraps every core packet ([`crate::probe::Packet`]) in its platform's
//! [`Framing`] and sends it to the platform's ports; the *control arm* sends the same core packets,
//! equally long on the wire, as [`Framing::Raw`] to a neutral port (see [`Framing::Raw`]). Some
//! platforms open their call with a message of their own that carries no core packet — tgcalls'
//! reflector hello, a TURN Allocate — which a platform arm sends first ([`Preamble`]). A framing
//! mimics the *shape* of a platform's traffic — the header bytes a DPI box can key on — it is not
//! the platform's protocol: nothing here is encrypted, authenticated or understood by the
//! platform's servers.
//!
//! Per-test values (Telegram tags, RTP SSRC, sequence and timestamp starts, the high-entropy
//! padding that stands in for an encrypted payload) come from a seed the caller draws
//! ([`Framing::for_test`], [`keystream`], [`Preamble::datagram`]): this module draws no random
//! number and reads no clock.
//!
//! Rules the formats below keep, in order of importance:
//! 1. **No amplification.** The bytes a framing adds depend only on the core packet's length
//!    ([`Framing::overhead`]) and never shrink as it grows, so a reply framed like its request is
//!    never longer than the request. [`detect`] accepts only datagrams whose length is exactly what
//!    the detected framing would produce for the core inside. A preamble's answer is built no
//!    longer than the preamble ([`telegram_hello_answer`]; the reflector checks its TURN answer).
//! 2. **Unambiguous detection.** The first byte sorts every datagram into at most one framing, in
//!    the manner of RFC 7983's demultiplexing: `0x01` followed by a kind byte `1..=17` is a bare
//!    core packet; any other first byte `0x00..=0x3F` is STUN; `0x40..=0x7F` is TURN ChannelData;
//!    `0x80..=0xBF` is RTP; `0xC0..=0xFF` is a Telegram-reflector peer tag. Framings whose own
//!    bytes would cross these lines are refused by [`Framing::validate`].
//! 3. **Bad input is an error, never a panic.** Every byte string is either detected or refused.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::probe::{MAX_PROBE_LEN, VERSION};

/// RFC 8489 §6: the magic cookie every STUN message carries at bytes 4..8.
pub const STUN_MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length of a STUN message header.
pub const STUN_HEADER_LEN: usize = 20;
/// STUN Binding Indication (RFC 8489).
pub const STUN_BINDING_INDICATION: u16 = 0x0011;
/// TURN Send Indication (RFC 8656).
pub const STUN_SEND_INDICATION: u16 = 0x0016;
/// TURN Data Indication (RFC 8656).
pub const STUN_DATA_INDICATION: u16 = 0x0017;
/// The DATA attribute (RFC 8656) that carries the core packet in a [`Framing::Stun`] message.
pub const STUN_ATTR_DATA: u16 = 0x0013;
/// The FINGERPRINT attribute (RFC 8489 §14.7): CRC-32 of the message XOR 0x5354554E.
pub const STUN_ATTR_FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// Length of the fixed RTP header (RFC 3550) this module writes: no CSRCs, no extension.
pub const RTP_HEADER_LEN: usize = 12;
/// Length of a TURN ChannelData header (RFC 8656 §12.4).
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;
/// Peer tag, sender tag and length before the payload of a Telegram-reflector datagram.
pub const TELEGRAM_HEADER_LEN: usize = 24;
/// Most bytes a framing may add: a [`MAX_PROBE_LEN`] core plus this fits a 1500-byte MTU with
/// IPv6 (40) and UDP (8) headers.
pub const MAX_OVERHEAD: usize = 1500 - 40 - 8 - MAX_PROBE_LEN;

/// Kind bytes a core packet may carry (see `probe`): Open = 1 … CountReply = 9, the attestation
/// queries and answers 10 … 17. As STUN message types, `0x0101..=0x0111` are responses (Binding
/// success 0x0101, error 0x0111, TURN successes) that a reflector never receives and no
/// platform framing sends ([`Framing::validate`] refuses them).
const CORE_KINDS: std::ops::RangeInclusive<u8> = 1..=17;

// Rule 2 relies on the core's version byte sorting into the STUN class and not crossing into
// ChannelData's; a future version byte must keep that true.
const _: () = assert!(VERSION < 0x40);

/// One extra STUN attribute a platform's messages carry, as data: written before the DATA
/// attribute, padded to 4 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StunAttribute {
    #[serde(rename = "type")]
    pub attr_type: u16,
    pub value: Vec<u8>,
}

/// How a core packet is carried on the wire. See the module docs for the rules every variant keeps.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Framing {
    /// The core packet as is. This is the control arm's framing, on a neutral port.
    ///
    /// Why the control is the bare core rather than a scrambled or fully random datagram:
    /// 1. Wehe's control differs from the original *only* in the signature under test. Both arms
    ///    carry the same core packet with the same kind of padding — high-entropy bytes from the
    ///    arm's seed (the agent fills every core's padding, see `probe::Packet::fields_len`), as
    ///    an SRTP payload is — so the control differs from the platform arm in framing and port
    ///    alone, not in payload entropy.
    /// 2. It needs no key, so any reflector decodes it, and it costs no bytes, so the control core
    ///    is simply padded up to the platform arm's on-wire length.
    /// 3. The core carries no platform signature: its first two bytes stay `0x01` and the kind (not
    ///    ChannelData, RTP or a Telegram hello), and with a session id from [`neutral_session_id`]
    ///    bytes 4..8 are never the STUN cookie and bytes 2..4 never a valid STUN length.
    ///    [`call_signature`] checks exactly this. A *fully* random control is not an option: nDPI
    ///    4.2 takes about one flow in ten of random datagrams for RTP (tests/ndpi/FINDINGS.md §4),
    ///    while a control with its first two bytes in the clear stayed Unknown in 400 of 400.
    ///
    /// Its limit: `0x01` lies in RFC 7983's STUN range (0..=3). A DPI rule keyed on the first byte
    /// alone would hit both arms alike and hide a difference (a missed `differentiated`, never a
    /// false one).
    Raw,
    /// A STUN message (RFC 8489): a 20-byte header with `message_type`, the length of the
    /// attributes, the magic cookie and a 12-byte transaction id derived from the core bytes
    /// (random-looking, deterministic); then `attributes` in order, then the core in a DATA
    /// attribute (0x0013), each padded to 4 bytes; then a FINGERPRINT if `fingerprint`.
    Stun {
        message_type: u16,
        #[serde(default)]
        attributes: Vec<StunAttribute>,
        #[serde(default)]
        fingerprint: bool,
    },
    /// A TURN ChannelData message (RFC 8656 §12.4): channel number (0x4000..=0x7FFF), length of
    /// the core, the core, zero padding to 4 bytes.
    TurnChannelData { channel: u16 },
    /// An RTP v2 packet (RFC 3550): 12-byte header (no padding, extension or CSRCs, marker 0),
    /// then the core as payload. The sequence number and timestamp are the caller's
    /// ([`Framing::wrap_stamped`]: the agent starts both at random, adds 1 to the sequence number
    /// per datagram and advances the timestamp per frame on a 48 kHz clock, Opus' RTP clock); a
    /// reflector echoes the request's ([`rtp_stamp`]). [`Framing::wrap`] alone derives them from
    /// the core: a probe's `seq` (low 16 bits) and send time, 0 for other core packets.
    Rtp { payload_type: u8, ssrc: u32 },
    /// TURN ChannelData carrying RTP: how libwebrtc sends media through a TURN relay once a
    /// channel is bound. ChannelData header, then [`Framing::Rtp`]'s header and the core.
    TurnChannelDataRtp {
        channel: u16,
        payload_type: u8,
        ssrc: u32,
    },
    /// A data packet to a Telegram call reflector as tgcalls' `ReflectorPort` writes it: the
    /// 16-byte peer tag, a 4-byte sender tag, the payload length (32-bit big-endian), the payload,
    /// zero padding to 4 bytes. `peer_tag[0]` must be `0xC0..=0xFF` so detection stays unambiguous
    /// (a real tag is any 16 bytes); `sender_tag` must be non-zero, as tgcalls requires.
    TelegramReflector { peer_tag: [u8; 16], sender_tag: u32 },
}

/// The RTP header fields that change from datagram to datagram: sequence number and timestamp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RtpStamp {
    pub seq: u16,
    pub timestamp: u32,
}

impl RtpStamp {
    /// A stream's random start (RFC 3550 §5.1: both "SHOULD be random"), from the caller's seed.
    pub fn start(seed: u64) -> RtpStamp {
        let mut b = [0u8; 6];
        keystream(seed, NONCE_RTP_START, &mut b);
        RtpStamp {
            seq: u16::from_be_bytes([b[0], b[1]]),
            timestamp: u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
        }
    }
}

/// A message of a platform's own call set-up that its arm sends before its first core packet.
/// It carries no core packet; a reflector answers it without state and never with more bytes
/// than it carries (see [`detect_any`]). Data, as [`Framing`] is: a profile names its preamble.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Preamble {
    /// tgcalls' reflector hello (`ReflectorPort::SendReflectorHello` in TelegramMessenger/tgcalls
    /// `tgcalls/v2/ReflectorPort.cpp`): the peer tag's first 12 bytes and the sender's own 4-byte
    /// tag, twelve 0xFF, `FE FF FF FF`, the u64 123 big-endian — 40 bytes. Needs a
    /// [`Framing::TelegramReflector`] for its tags. tgcalls sends it when the port opens, every
    /// 500 ms until the reflector answers, then every 10 s; the arm sends it before each `Open`
    /// until it is answered, then every `repeat_ms`.
    TelegramHello { repeat_ms: u32 },
    /// A TURN Allocate request (RFC 8656 §7.1) as a client sends it once the server's 401 named
    /// the realm: REQUESTED-TRANSPORT (UDP), USERNAME `<expiry>:<number>` (expiry =
    /// `unix_time_s + username_valid_s`, number a non-negative 31-bit integer, as Signal-Server's
    /// `TurnTokenGenerator` makes its TURN usernames), REALM `realm`, NONCE (16 hex digits),
    /// MESSAGE-INTEGRITY (20 bytes; we hold no key, so they are random), FINGERPRINT. Sent
    /// before each `Open` until answered, with the same transaction id each time, as a STUN
    /// retransmission is (RFC 8489 §6.2.1).
    TurnAllocate {
        realm: String,
        username_valid_s: u32,
    },
}

/// A preamble message recognised in a datagram: what a reflector needs to answer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PreambleMessage {
    /// A 40-byte Telegram reflector hello (see [`Preamble::TelegramHello`]).
    TelegramHello { peer_tag: [u8; 16], query_id: u64 },
    /// A well-formed STUN/TURN Allocate request (type 0x0003) with no core packet in it.
    TurnAllocate { transaction_id: [u8; 12] },
}

/// What a datagram is to a reflector: a core packet in a framing, or a preamble message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detected<'a> {
    /// As [`detect`] returns it.
    Core(Framing, &'a [u8]),
    Preamble(PreambleMessage),
}

/// Why a datagram could not be unwrapped, or a framing is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FramingError {
    #[error("datagram is in no callwatch framing: {0}")]
    Unrecognised(&'static str),
    #[error("expected {expected} framing, but the datagram is {found}")]
    WrongFraming {
        expected: &'static str,
        found: &'static str,
    },
    #[error("{framing} datagram with a different {field} than this framing's")]
    WrongParameters {
        framing: &'static str,
        field: &'static str,
    },
    #[error("invalid {framing} framing: {reason}")]
    Invalid {
        framing: &'static str,
        reason: &'static str,
    },
}

/// A byte pattern by which a DPI box could recognise call traffic; see [`call_signature`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallSignature {
    /// 0x2112A442 at bytes 4..8.
    StunCookie,
    /// A classic (RFC 3489) STUN header: first two bits 0, length field = datagram length − 20,
    /// a multiple of 4.
    StunHeader,
    /// First byte 0x40..=0x7F, a TURN ChannelData channel number.
    TurnChannelData,
    /// First byte 0x80..=0xBF, RTP or RTCP version 2.
    RtpOrRtcp,
    /// Twelve 0xFF bytes at 16..28: a Telegram reflector's special packet.
    TelegramSpecial,
}

impl Framing {
    /// Short name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Framing::Raw => "raw",
            Framing::Stun { .. } => "stun",
            Framing::TurnChannelData { .. } => "turn-channel-data",
            Framing::Rtp { .. } => "rtp",
            Framing::TurnChannelDataRtp { .. } => "turn-channel-data-rtp",
            Framing::TelegramReflector { .. } => "telegram-reflector",
        }
    }

    /// Bytes this framing adds to a core packet of `core_len` bytes: a fixed header plus, for
    /// padded framings, 0..=3 bytes of padding. Depends on nothing but `core_len`.
    pub fn overhead(&self, core_len: usize) -> usize {
        self.fixed_overhead() + if self.pads() { pad4(core_len) } else { 0 }
    }

    /// Length on the wire of a core packet of `core_len` bytes in this framing.
    pub fn wire_len(&self, core_len: usize) -> usize {
        core_len + self.overhead(core_len)
    }

    /// The longest core packet whose framed length is exactly `wire_len`, or `None` if no core
    /// length gives it (too short, or not a multiple of 4 for a padded framing). Use it to size
    /// the core so that both arms of a test have the same on-wire length.
    pub fn core_len_for_wire(&self, wire_len: usize) -> Option<usize> {
        let core_len = wire_len.checked_sub(self.fixed_overhead())?;
        (self.wire_len(core_len) == wire_len).then_some(core_len)
    }

    /// Checks that this framing keeps the module's rules: detection stays unambiguous and the
    /// overhead stays within [`MAX_OVERHEAD`]. [`detect`] only ever returns valid framings;
    /// one read from a config file must be validated before use, as [`Framing::wrap`] writes
    /// whatever it is given.
    pub fn validate(&self) -> Result<(), FramingError> {
        let invalid = |reason| {
            Err(FramingError::Invalid {
                framing: self.name(),
                reason,
            })
        };
        match self {
            Framing::Raw => {}
            Framing::Stun {
                message_type,
                attributes,
                ..
            } => {
                if message_type & 0xC000 != 0 {
                    return invalid("a STUN message type has its first two bits 0");
                }
                if is_core_prefix(&message_type.to_be_bytes()) {
                    return invalid("message types 0x0101..=0x0111 look like a bare core packet");
                }
                for attr in attributes {
                    if attr.attr_type == STUN_ATTR_DATA || attr.attr_type == STUN_ATTR_FINGERPRINT {
                        return invalid("DATA and FINGERPRINT are written by the framing itself");
                    }
                    if attr.value.len() > MAX_OVERHEAD {
                        return invalid("an extra attribute is longer than the overhead allows");
                    }
                }
            }
            Framing::TurnChannelData { channel } => {
                if !(0x4000..=0x7FFF).contains(channel) {
                    return invalid("channel numbers are 0x4000..=0x7FFF");
                }
            }
            Framing::Rtp { payload_type, .. } => {
                if !valid_rtp_payload_type(*payload_type) {
                    return invalid("payload type must be 0..=127 and outside 64..=95 (RTCP)");
                }
            }
            Framing::TurnChannelDataRtp {
                channel,
                payload_type,
                ..
            } => {
                if !(0x4000..=0x7FFF).contains(channel) {
                    return invalid("channel numbers are 0x4000..=0x7FFF");
                }
                if !valid_rtp_payload_type(*payload_type) {
                    return invalid("payload type must be 0..=127 and outside 64..=95 (RTCP)");
                }
            }
            Framing::TelegramReflector {
                peer_tag,
                sender_tag,
            } => {
                if peer_tag[0] < 0xC0 {
                    return invalid("the peer tag's first byte must be 0xC0..=0xFF");
                }
                if *sender_tag == 0 {
                    return invalid("the sender tag must be non-zero");
                }
            }
        }
        if self.fixed_overhead() + 3 > MAX_OVERHEAD {
            return invalid("overhead exceeds MAX_OVERHEAD");
        }
        Ok(())
    }

    /// This framing with its per-test values drawn from `seed` (a random number the caller drew):
    /// a Telegram peer tag and sender tag, an RTP SSRC. Other framings have none and come back
    /// as they are. Valid whenever `self` is.
    ///
    /// The peer tag keeps what nDPI and our detection need (tests/ndpi/FINDINGS.md §2.1): no
    /// 0xFF byte (nDPI takes the *first* 0xFF for the start of the hello's twelve, so a tag
    /// holding one hides the hello — 6 % of uniformly random tags, real ones included), the first
    /// byte in 0xC0..=0xFE (rule 2), never the STUN cookie at bytes 4..8. The sender tag (tgcalls'
    /// random own tag, which is also the hello's last four tag bytes) is non-zero, without 0xFF.
    pub fn for_test(&self, seed: u64) -> Framing {
        match self {
            Framing::TelegramReflector { .. } => {
                let mut b = [0u8; 20];
                keystream(seed, NONCE_TAGS, &mut b);
                let no_ff = |x: u8| x % 0xFF;
                let mut peer_tag = [0u8; 16];
                for (t, x) in peer_tag.iter_mut().zip(b) {
                    *t = no_ff(x);
                }
                peer_tag[0] = 0xC0 + b[0] % 0x3F;
                if peer_tag[4..8] == STUN_MAGIC_COOKIE.to_be_bytes() {
                    peer_tag[4] ^= 0x01;
                }
                let mut own = [no_ff(b[16]), no_ff(b[17]), no_ff(b[18]), no_ff(b[19])];
                if own == [0; 4] {
                    own[3] = 1;
                }
                Framing::TelegramReflector {
                    peer_tag,
                    sender_tag: u32::from_be_bytes(own),
                }
            }
            Framing::Rtp { payload_type, .. } => Framing::Rtp {
                payload_type: *payload_type,
                ssrc: random_ssrc(seed),
            },
            Framing::TurnChannelDataRtp {
                channel,
                payload_type,
                ..
            } => Framing::TurnChannelDataRtp {
                channel: *channel,
                payload_type: *payload_type,
                ssrc: random_ssrc(seed),
            },
            other => other.clone(),
        }
    }

    /// Whether this framing writes an RTP header (and so wants an [`RtpStamp`] per datagram).
    pub fn has_rtp(&self) -> bool {
        matches!(
            self,
            Framing::Rtp { .. } | Framing::TurnChannelDataRtp { .. }
        )
    }

    /// Appends `core` framed this way to `out`. Writes exactly [`Framing::wire_len`]`(core.len())`
    /// bytes. `core` is a callwatch core packet (at most [`MAX_PROBE_LEN`] bytes). An RTP header's
    /// sequence number and timestamp are derived from the core (see [`Framing::Rtp`]).
    pub fn wrap(&self, core: &[u8], out: &mut Vec<u8>) {
        self.wrap_inner(core, None, out);
    }

    /// [`Framing::wrap`] with the RTP header's sequence number and timestamp given by the caller;
    /// framings without RTP ignore `stamp`. The length written is the same as `wrap`'s.
    pub fn wrap_stamped(&self, core: &[u8], stamp: RtpStamp, out: &mut Vec<u8>) {
        self.wrap_inner(core, Some(stamp), out);
    }

    fn wrap_inner(&self, core: &[u8], stamp: Option<RtpStamp>, out: &mut Vec<u8>) {
        out.reserve(self.wire_len(core.len()));
        match self {
            Framing::Raw => out.extend_from_slice(core),
            Framing::Stun {
                message_type,
                attributes,
                fingerprint,
            } => {
                let start = out.len();
                let body_len = self.wire_len(core.len()) - STUN_HEADER_LEN;
                put_u16(out, *message_type);
                put_u16(out, len_u16(body_len));
                put_u32(out, STUN_MAGIC_COOKIE);
                out.extend_from_slice(&transaction_id(core));
                for attr in attributes {
                    put_stun_attribute(out, attr.attr_type, &attr.value);
                }
                put_stun_attribute(out, STUN_ATTR_DATA, core);
                if *fingerprint {
                    let crc = crc32(&out[start..]) ^ FINGERPRINT_XOR;
                    put_u16(out, STUN_ATTR_FINGERPRINT);
                    put_u16(out, 4);
                    put_u32(out, crc);
                }
            }
            Framing::TurnChannelData { channel } => {
                put_u16(out, *channel);
                put_u16(out, len_u16(core.len()));
                out.extend_from_slice(core);
                put_zeros(out, pad4(core.len()));
            }
            Framing::Rtp { payload_type, ssrc } => put_rtp(out, *payload_type, *ssrc, core, stamp),
            Framing::TurnChannelDataRtp {
                channel,
                payload_type,
                ssrc,
            } => {
                put_u16(out, *channel);
                put_u16(out, len_u16(RTP_HEADER_LEN + core.len()));
                put_rtp(out, *payload_type, *ssrc, core, stamp);
                put_zeros(out, pad4(core.len()));
            }
            Framing::TelegramReflector {
                peer_tag,
                sender_tag,
            } => {
                out.extend_from_slice(peer_tag);
                put_u32(out, *sender_tag);
                put_u32(out, u32::try_from(core.len()).unwrap_or(u32::MAX));
                out.extend_from_slice(core);
                put_zeros(out, pad4(core.len()));
            }
        }
    }

    /// The core packet inside `datagram`, if it is in exactly this framing (same type, channel,
    /// payload type, SSRC, tags and attributes).
    pub fn unwrap<'a>(&self, datagram: &'a [u8]) -> Result<&'a [u8], FramingError> {
        self.unwrap_with(datagram, true)
    }

    /// The payload inside `datagram` if it is in exactly this framing, whether or not it is a
    /// bare core packet (a sealed core, see [`detect_sealed`]). For [`Framing::Raw`] it is
    /// [`Framing::unwrap`].
    pub fn unwrap_sealed<'a>(&self, datagram: &'a [u8]) -> Result<&'a [u8], FramingError> {
        self.unwrap_with(datagram, false)
    }

    fn unwrap_with<'a>(
        &self,
        datagram: &'a [u8],
        core_only: bool,
    ) -> Result<&'a [u8], FramingError> {
        let (found, core) = parse_with(datagram, core_only)?;
        if found == *self {
            return Ok(core);
        }
        if found.name() != self.name() {
            return Err(FramingError::WrongFraming {
                expected: self.name(),
                found: found.name(),
            });
        }
        Err(FramingError::WrongParameters {
            framing: self.name(),
            field: differing_field(self, &found),
        })
    }

    fn fixed_overhead(&self) -> usize {
        match self {
            Framing::Raw => 0,
            Framing::Stun {
                attributes,
                fingerprint,
                ..
            } => {
                let extras: usize = attributes
                    .iter()
                    .map(|a| 4 + a.value.len() + pad4(a.value.len()))
                    .sum();
                STUN_HEADER_LEN + extras + 4 + if *fingerprint { 8 } else { 0 }
            }
            Framing::TurnChannelData { .. } => CHANNEL_DATA_HEADER_LEN,
            Framing::Rtp { .. } => RTP_HEADER_LEN,
            Framing::TurnChannelDataRtp { .. } => CHANNEL_DATA_HEADER_LEN + RTP_HEADER_LEN,
            Framing::TelegramReflector { .. } => TELEGRAM_HEADER_LEN,
        }
    }

    /// Whether the core is padded to a multiple of 4 (the fixed headers all are multiples of 4).
    fn pads(&self) -> bool {
        !matches!(self, Framing::Raw | Framing::Rtp { .. })
    }
}

/// Recognises the framing of a datagram and returns it with the core packet inside, or `None` if
/// it is in no framing this module writes. The returned framing is valid ([`Framing::validate`]),
/// and `framing.wire_len(core.len()) == datagram.len()`: a reflector that answers with
/// `framing.wrap(reply_core)` never sends more than it received when the reply core is no longer
/// than the request core.
pub fn detect(datagram: &[u8]) -> Option<(Framing, &[u8])> {
    parse(datagram).ok()
}

/// The smallest payload [`detect_sealed`] accepts: a keyed envelope's nonce and a core's version
/// and kind.
const SEALED_MIN_LEN: usize = crate::seal::NONCE_LEN + 2;

/// Like [`detect`], for a platform framing whose payload may be a sealed core ([`crate::seal`]):
/// the payload is not required to be a bare core packet. Never gives [`Framing::Raw`]; the same
/// length rules hold (an answer framed alike and no longer inside is no longer on the wire).
pub fn detect_sealed(datagram: &[u8]) -> Option<(Framing, &[u8])> {
    parse_with(datagram, false).ok()
}

/// Recognises everything a reflector answers: a core packet in a framing (exactly as [`detect`]),
/// or a preamble message ([`Preamble`]) — a 40-byte Telegram reflector hello, or a well-formed
/// STUN Allocate request without a core packet. `None` for anything else.
pub fn detect_any(datagram: &[u8]) -> Option<Detected<'_>> {
    match parse(datagram) {
        Ok((framing, core)) => Some(Detected::Core(framing, core)),
        Err(_) => parse_preamble(datagram).map(Detected::Preamble),
    }
}

/// The RTP sequence number and timestamp of an RTP datagram, or of the RTP packet inside a TURN
/// ChannelData message; `None` for anything else. A reflector answers with the request's, so
/// each direction of a stream counts up as the agent's does.
pub fn rtp_stamp(datagram: &[u8]) -> Option<RtpStamp> {
    let rtp = match *datagram.first()? {
        0x80..=0xBF => datagram,
        0x40..=0x7F => datagram.get(CHANNEL_DATA_HEADER_LEN..)?,
        _ => return None,
    };
    if !(0x80..=0xBF).contains(rtp.first()?) || rtp.len() < RTP_HEADER_LEN {
        return None;
    }
    Some(RtpStamp {
        seq: be16(rtp, 2)?,
        timestamp: be32(rtp, 4)?,
    })
}

/// Fills `out` with bytes derived from `seed` and `nonce` (a splitmix64 stream): high-entropy,
/// random-looking and reproducible. It stands in for encrypted bytes; it is no cipher and hides
/// nothing. Nonces from 2^62 up are this module's own (tags, SSRC, RTP start, preambles); the
/// agent numbers its datagrams' padding from 0.
pub fn keystream(seed: u64, nonce: u64, out: &mut [u8]) {
    let mut state = mix64(seed ^ mix64(nonce));
    for chunk in out.chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let word = mix64(state).to_be_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

const NONCE_TAGS: u64 = 1 << 62;
const NONCE_SSRC: u64 = (1 << 62) + 1;
const NONCE_RTP_START: u64 = (1 << 62) + 2;
const NONCE_PREAMBLE: u64 = (1 << 62) + 3;

fn random_ssrc(seed: u64) -> u32 {
    let mut b = [0u8; 4];
    keystream(seed, NONCE_SSRC, &mut b);
    u32::from_be_bytes(b).max(1)
}

/// The 12 0xFF bytes after the peer tag that mark a Telegram reflector's special packet.
const TELEGRAM_SPECIAL: [u8; 12] = [0xFF; 12];
/// The 4 bytes after them in a hello (libtgvoip's "public endpoints request", -2 as an i32).
const TELEGRAM_HELLO_KIND: [u8; 4] = [0xFE, 0xFF, 0xFF, 0xFF];
/// Length of a Telegram reflector hello, and the most its answer may be.
pub const TELEGRAM_HELLO_LEN: usize = 40;
/// The query id tgcalls v2 puts in every hello.
pub const TELEGRAM_HELLO_QUERY_ID: u64 = 123;
/// The magic of libtgvoip's reflector self-info answer (`UdpReflectorSelfInfo.magic`).
const TELEGRAM_SELF_INFO_MAGIC: u32 = 0xC015_72C7;
/// STUN/TURN Allocate request (RFC 8656) and its success and error responses.
pub const STUN_ALLOCATE_REQUEST: u16 = 0x0003;
pub const STUN_ALLOCATE_SUCCESS: u16 = 0x0103;
pub const STUN_ALLOCATE_ERROR: u16 = 0x0113;
const STUN_ATTR_USERNAME: u16 = 0x0006;
/// RFC 8489 §14.5 MESSAGE-INTEGRITY.
pub const STUN_ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
/// RFC 8489 Binding request, success and error response types: what the relay arms send and
/// the reflector answers.
pub const STUN_BINDING_REQUEST: u16 = 0x0001;
pub const STUN_BINDING_SUCCESS: u16 = 0x0101;
pub const STUN_BINDING_ERROR: u16 = 0x0111;
/// RFC 8489 §14.14 SOFTWARE (comprehension-optional): the relay arms name the tool with it.
pub const STUN_ATTR_SOFTWARE: u16 = 0x8022;
const STUN_ATTR_REALM: u16 = 0x0014;
const STUN_ATTR_NONCE: u16 = 0x0015;
const STUN_ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;

/// A reflector's answer to a Telegram hello: the hello's peer tag, twelve 0xFF, the magic
/// 0xC01572C7 (little-endian, as libtgvoip's packed struct lies in memory) and the hello's query
/// id — 40 bytes, never more than the hello. This is the start of the 64-byte "self info" that
/// libtgvoip's test reflector answers with (telegramdesktop/libtgvoip `tests/MockReflector.cpp`,
/// `UdpReflectorSelfInfo`), without its date and the client's address, which would make it
/// longer than the hello; tgcalls only checks that an answer starts with its tag's first 12
/// bytes. The real reflectors' answer is not published.
pub fn telegram_hello_answer(peer_tag: &[u8; 16], query_id: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(TELEGRAM_HELLO_LEN);
    out.extend_from_slice(peer_tag);
    out.extend_from_slice(&TELEGRAM_SPECIAL);
    out.extend_from_slice(&TELEGRAM_SELF_INFO_MAGIC.to_le_bytes());
    out.extend_from_slice(&query_id.to_be_bytes());
    out
}

impl Preamble {
    /// Short name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Preamble::TelegramHello { .. } => "telegram-hello",
            Preamble::TurnAllocate { .. } => "turn-allocate",
        }
    }

    /// Checks what [`Preamble::datagram`] relies on: a hello repeated at least every 1 s apart;
    /// a realm of 1..=127 bytes (RFC 8489 §14.9: under 128 characters).
    pub fn validate(&self) -> Result<(), FramingError> {
        let invalid = |reason| {
            Err(FramingError::Invalid {
                framing: self.name(),
                reason,
            })
        };
        match self {
            Preamble::TelegramHello { repeat_ms } if *repeat_ms < 1000 => {
                invalid("the hello is repeated at most once a second")
            }
            Preamble::TurnAllocate { realm, .. } if realm.is_empty() || realm.len() > 127 => {
                invalid("the realm is 1..=127 bytes")
            }
            _ => Ok(()),
        }
    }

    /// How often the arm repeats the preamble once it was answered, in µs; `None`: never.
    pub fn repeat_us(&self) -> Option<u64> {
        match self {
            Preamble::TelegramHello { repeat_ms } => Some(u64::from(*repeat_ms) * 1000),
            Preamble::TurnAllocate { .. } => None,
        }
    }

    /// The preamble datagram of one arm. `framing` is the arm's per-test framing (the hello takes
    /// its tags); `seed` the arm's random seed (transaction id, username number, nonce,
    /// integrity bytes); `unix_time_s` the caller's wall-clock time (the TURN username's expiry).
    /// `None` if the preamble needs a framing the arm does not have, or is invalid.
    pub fn datagram(&self, framing: &Framing, seed: u64, unix_time_s: u64) -> Option<Vec<u8>> {
        self.validate().ok()?;
        match self {
            Preamble::TelegramHello { .. } => {
                let Framing::TelegramReflector {
                    peer_tag,
                    sender_tag,
                } = framing
                else {
                    return None;
                };
                let mut out = Vec::with_capacity(TELEGRAM_HELLO_LEN);
                out.extend_from_slice(&peer_tag[..12]);
                out.extend_from_slice(&sender_tag.to_be_bytes());
                out.extend_from_slice(&TELEGRAM_SPECIAL);
                out.extend_from_slice(&TELEGRAM_HELLO_KIND);
                out.extend_from_slice(&TELEGRAM_HELLO_QUERY_ID.to_be_bytes());
                Some(out)
            }
            Preamble::TurnAllocate {
                realm,
                username_valid_s,
            } => {
                let mut r = [0u8; 12 + 4 + 8 + 20];
                keystream(seed, NONCE_PREAMBLE, &mut r);
                let (txid, rest) = r.split_at(12);
                let (number, rest) = rest.split_at(4);
                let (nonce, integrity) = rest.split_at(8);
                let number = u32::from_be_bytes(number.try_into().ok()?) & 0x7FFF_FFFF;
                let expiry = unix_time_s.saturating_add(u64::from(*username_valid_s));
                let username = format!("{expiry}:{number}");
                let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
                let mut out = Vec::with_capacity(128);
                put_u16(&mut out, STUN_ALLOCATE_REQUEST);
                put_u16(&mut out, 0); // length, written below
                put_u32(&mut out, STUN_MAGIC_COOKIE);
                out.extend_from_slice(txid);
                // REQUESTED-TRANSPORT: protocol 17 (UDP), then three reserved bytes.
                put_stun_attribute(&mut out, STUN_ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
                put_stun_attribute(&mut out, STUN_ATTR_USERNAME, username.as_bytes());
                put_stun_attribute(&mut out, STUN_ATTR_REALM, realm.as_bytes());
                put_stun_attribute(&mut out, STUN_ATTR_NONCE, nonce.as_bytes());
                put_stun_attribute(&mut out, STUN_ATTR_MESSAGE_INTEGRITY, integrity);
                // The length counts the FINGERPRINT that follows (RFC 8489 §14.7).
                let len = len_u16(out.len() + 8 - STUN_HEADER_LEN);
                out[2..4].copy_from_slice(&len.to_be_bytes());
                let crc = crc32(&out) ^ FINGERPRINT_XOR;
                put_u16(&mut out, STUN_ATTR_FINGERPRINT);
                put_u16(&mut out, 4);
                put_u32(&mut out, crc);
                Some(out)
            }
        }
    }

    /// Whether `datagram` answers the preamble `sent` (as [`Preamble::datagram`] built it): for a
    /// hello, anything starting with the first 12 bytes of its tag and then, after 4 more, twelve
    /// 0xFF (tgcalls' own test is the 12-byte prefix); for an Allocate, a STUN success or error
    /// response with its transaction id.
    pub fn is_answer(&self, sent: &[u8], datagram: &[u8]) -> bool {
        match self {
            Preamble::TelegramHello { .. } => {
                sent.get(..12)
                    .is_some_and(|tag| datagram.get(..12) == Some(tag))
                    && datagram.get(16..28) == Some(&TELEGRAM_SPECIAL[..])
            }
            Preamble::TurnAllocate { .. } => {
                matches!(
                    be16(datagram, 0),
                    Some(STUN_ALLOCATE_SUCCESS | STUN_ALLOCATE_ERROR)
                ) && be32(datagram, 4) == Some(STUN_MAGIC_COOKIE)
                    && sent.get(8..20).is_some()
                    && datagram.get(8..20) == sent.get(8..20)
            }
        }
    }
}

/// A preamble message in `d`, if it is one (see [`detect_any`]).
fn parse_preamble(d: &[u8]) -> Option<PreambleMessage> {
    match *d.first()? {
        0xC0..=0xFF => {
            if d.len() != TELEGRAM_HELLO_LEN
                || d.get(16..28)? != TELEGRAM_SPECIAL
                || d.get(28..32)? != TELEGRAM_HELLO_KIND
            {
                return None;
            }
            Some(PreambleMessage::TelegramHello {
                peer_tag: d.get(..16)?.try_into().ok()?,
                query_id: be64(d, 32)?,
            })
        }
        0x00..=0x3F => {
            if be16(d, 0)? != STUN_ALLOCATE_REQUEST
                || be32(d, 4)? != STUN_MAGIC_COOKIE
                || usize::from(be16(d, 2)?) + STUN_HEADER_LEN != d.len()
                || !d.len().is_multiple_of(4)
            {
                return None;
            }
            // Every attribute must lie within the message.
            let mut pos = STUN_HEADER_LEN;
            while pos < d.len() {
                let len = usize::from(be16(d, pos + 2)?);
                pos = pos.checked_add(4 + len + pad4(len))?;
            }
            (pos == d.len()).then_some(())?;
            Some(PreambleMessage::TurnAllocate {
                transaction_id: d.get(8..20)?.try_into().ok()?,
            })
        }
        _ => None,
    }
}

/// Turns a random session id into one whose bare core packets carry no STUN signature.
///
/// Every core packet carries the session id at bytes 2..10, so its first two bytes land where a
/// STUN header keeps its length field and the next four where it keeps the magic cookie. This
/// makes the former never a multiple of 4 (so never a valid STUN length) and the latter never
/// 0x2112A442, at the cost of under two bits of randomness. Use it for every arm's session id.
///
/// It also keeps packet byte 2 (the id's first byte) off 0x02: nDPI 4.2's Skype heuristic
/// (ntop/nDPI `src/lib/protocols/skype.c`) takes a UDP flow whose first packets have 0x02 there
/// and repeat bytes 7..11 — as every core packet of one session does — for Skype/Teams, which
/// made about one control arm in 256 `Skype_Teams` (measured by tests/tests/ndpi.rs).
pub fn neutral_session_id(random: u64) -> u64 {
    let mut b = random.to_be_bytes();
    if b[0] == 0x02 {
        b[0] = 0x03;
    }
    if b[1] & 0x03 == 0 {
        b[1] |= 0x01;
    }
    if b[2..6] == STUN_MAGIC_COOKIE.to_be_bytes() {
        b[5] ^= 0x01;
    }
    u64::from_be_bytes(b)
}

/// The first byte pattern in `datagram` by which a DPI box could take it for call traffic, or
/// `None`. The control arm must always give `None`. Telegram's reflector data packets give `None`
/// too, as they have no fixed bytes (only their port and shape betray them); its hello
/// ([`Preamble::TelegramHello`]) gives [`CallSignature::TelegramSpecial`].
pub fn call_signature(datagram: &[u8]) -> Option<CallSignature> {
    if datagram.get(4..8) == Some(&STUN_MAGIC_COOKIE.to_be_bytes()[..]) {
        return Some(CallSignature::StunCookie);
    }
    let first = *datagram.first()?;
    match first {
        0x40..=0x7F => return Some(CallSignature::TurnChannelData),
        0x80..=0xBF => return Some(CallSignature::RtpOrRtcp),
        _ => {}
    }
    if let Some(len) = be16(datagram, 2) {
        let len = usize::from(len);
        if first < 0x40 && len % 4 == 0 && len + STUN_HEADER_LEN == datagram.len() {
            return Some(CallSignature::StunHeader);
        }
    }
    if datagram
        .get(16..28)
        .is_some_and(|b| b.iter().all(|&x| x == 0xFF))
    {
        return Some(CallSignature::TelegramSpecial);
    }
    None
}

/// A 64-bit mixing function (splitmix64's finaliser): deterministic, random-looking output for
/// transaction ids here and size draws in `profile`.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn parse(d: &[u8]) -> Result<(Framing, &[u8]), FramingError> {
    parse_with(d, true)
}

/// [`parse`]; with `core_only` false, the payload inside a platform framing may be anything
/// (a sealed core, see [`crate::seal`]), so long as it is at least a nonce long.
fn parse_with(d: &[u8], core_only: bool) -> Result<(Framing, &[u8]), FramingError> {
    let first = *d
        .first()
        .ok_or(FramingError::Unrecognised("empty datagram"))?;
    let (framing, core) = match first {
        0x00..=0x3F if is_core_prefix(d) => (Framing::Raw, d),
        0x00..=0x3F => parse_stun(d)?,
        0x40..=0x7F => parse_channel_data(d)?,
        0x80..=0xBF => {
            let (payload_type, ssrc, core) = parse_rtp(d)?;
            (Framing::Rtp { payload_type, ssrc }, core)
        }
        0xC0..=0xFF => parse_telegram(d)?,
    };
    let sealed_payload = !core_only && framing != Framing::Raw && core.len() >= SEALED_MIN_LEN;
    if !sealed_payload && !is_core_prefix(core) {
        return Err(FramingError::Unrecognised(
            "the payload is not a callwatch packet",
        ));
    }
    framing
        .validate()
        .map_err(|_| FramingError::Unrecognised("framing parameters outside callwatch's"))?;
    // Rule 1, checked rather than assumed: each parser below demands exact lengths.
    if framing.wire_len(core.len()) != d.len() {
        return Err(FramingError::Unrecognised(
            "length does not match the framing",
        ));
    }
    Ok((framing, core))
}

fn parse_stun(d: &[u8]) -> Result<(Framing, &[u8]), FramingError> {
    use FramingError::Unrecognised;
    if d.len() < STUN_HEADER_LEN {
        return Err(Unrecognised("shorter than a STUN header"));
    }
    let message_type = be16(d, 0).ok_or(Unrecognised("short"))?;
    let body_len = usize::from(be16(d, 2).ok_or(Unrecognised("short"))?);
    if body_len % 4 != 0 || body_len + STUN_HEADER_LEN != d.len() {
        return Err(Unrecognised(
            "STUN length field does not match the datagram",
        ));
    }
    if be32(d, 4) != Some(STUN_MAGIC_COOKIE) {
        return Err(Unrecognised("no STUN magic cookie"));
    }
    let mut attrs: Vec<(u16, usize, &[u8])> = Vec::new();
    let mut pos = STUN_HEADER_LEN;
    while pos < d.len() {
        let attr_type = be16(d, pos).ok_or(Unrecognised("truncated STUN attribute"))?;
        let len = usize::from(be16(d, pos + 2).ok_or(Unrecognised("truncated STUN attribute"))?);
        let value = d
            .get(pos + 4..pos + 4 + len)
            .ok_or(Unrecognised("STUN attribute overruns the message"))?;
        attrs.push((attr_type, pos, value));
        pos += 4 + len + pad4(len);
    }
    if pos != d.len() {
        return Err(Unrecognised("STUN attribute padding overruns the message"));
    }
    let mut fingerprint = false;
    if let Some(&(STUN_ATTR_FINGERPRINT, at, value)) = attrs.last() {
        let crc = crc32(&d[..at]) ^ FINGERPRINT_XOR;
        if value != crc.to_be_bytes() {
            return Err(Unrecognised("STUN FINGERPRINT does not match"));
        }
        fingerprint = true;
        attrs.pop();
    }
    let Some((STUN_ATTR_DATA, _, core)) = attrs.pop() else {
        return Err(Unrecognised("no DATA attribute where callwatch puts it"));
    };
    let attributes = attrs
        .into_iter()
        .map(|(attr_type, _, value)| StunAttribute {
            attr_type,
            value: value.to_vec(),
        })
        .collect();
    Ok((
        Framing::Stun {
            message_type,
            attributes,
            fingerprint,
        },
        core,
    ))
}

fn parse_channel_data(d: &[u8]) -> Result<(Framing, &[u8]), FramingError> {
    use FramingError::Unrecognised;
    let channel = be16(d, 0).ok_or(Unrecognised("shorter than a ChannelData header"))?;
    let len = usize::from(be16(d, 2).ok_or(Unrecognised("shorter than a ChannelData header"))?);
    if d.len() != CHANNEL_DATA_HEADER_LEN + len + pad4(len) {
        return Err(Unrecognised(
            "ChannelData length does not match the datagram",
        ));
    }
    let payload = &d[CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + len];
    match payload.first() {
        Some(0x80..=0xBF) => {
            let (payload_type, ssrc, core) = parse_rtp(payload)?;
            Ok((
                Framing::TurnChannelDataRtp {
                    channel,
                    payload_type,
                    ssrc,
                },
                core,
            ))
        }
        _ => Ok((Framing::TurnChannelData { channel }, payload)),
    }
}

fn parse_rtp(d: &[u8]) -> Result<(u8, u32, &[u8]), FramingError> {
    use FramingError::Unrecognised;
    if d.len() < RTP_HEADER_LEN {
        return Err(Unrecognised("shorter than an RTP header"));
    }
    // Version 2 with no padding, extension or CSRCs: the only RTP header `wrap` writes.
    if d[0] != 0x80 {
        return Err(Unrecognised("RTP header with padding, extension or CSRCs"));
    }
    let ssrc = be32(d, 8).ok_or(Unrecognised("shorter than an RTP header"))?;
    Ok((d[1] & 0x7F, ssrc, &d[RTP_HEADER_LEN..]))
}

fn parse_telegram(d: &[u8]) -> Result<(Framing, &[u8]), FramingError> {
    use FramingError::Unrecognised;
    let short = Unrecognised("shorter than a Telegram reflector header");
    let peer_tag: [u8; 16] = d.get(..16).and_then(|b| b.try_into().ok()).ok_or(short)?;
    let sender_tag = be32(d, 16).ok_or(short)?;
    let len = be32(d, 20).ok_or(short)?;
    let len = usize::try_from(len).map_err(|_| Unrecognised("length does not fit"))?;
    let core = d
        .get(TELEGRAM_HEADER_LEN..TELEGRAM_HEADER_LEN.saturating_add(len))
        .ok_or(Unrecognised("Telegram length overruns the datagram"))?;
    Ok((
        Framing::TelegramReflector {
            peer_tag,
            sender_tag,
        },
        core,
    ))
}

/// Names the first parameter in which two framings of the same kind differ.
fn differing_field(want: &Framing, got: &Framing) -> &'static str {
    match (want, got) {
        (
            Framing::Stun {
                message_type: a, ..
            },
            Framing::Stun {
                message_type: b, ..
            },
        ) if a != b => "message type",
        (Framing::Stun { fingerprint: a, .. }, Framing::Stun { fingerprint: b, .. }) if a != b => {
            "fingerprint"
        }
        (Framing::Stun { .. }, _) => "attributes",
        (
            Framing::TelegramReflector { peer_tag: a, .. },
            Framing::TelegramReflector { peer_tag: b, .. },
        ) if a != b => "peer tag",
        (Framing::TelegramReflector { .. }, _) => "sender tag",
        (Framing::TurnChannelData { .. }, _) => "channel",
        (
            Framing::TurnChannelDataRtp { channel: a, .. },
            Framing::TurnChannelDataRtp { channel: b, .. },
        ) if a != b => "channel",
        (
            Framing::Rtp {
                payload_type: a, ..
            },
            Framing::Rtp {
                payload_type: b, ..
            },
        )
        | (
            Framing::TurnChannelDataRtp {
                payload_type: a, ..
            },
            Framing::TurnChannelDataRtp {
                payload_type: b, ..
            },
        ) if a != b => "payload type",
        _ => "SSRC",
    }
}

/// Whether `b` starts like a callwatch core packet: the version byte, then a known kind.
fn is_core_prefix(b: &[u8]) -> bool {
    matches!(b, [v, kind, ..] if *v == VERSION && CORE_KINDS.contains(kind))
}

fn valid_rtp_payload_type(pt: u8) -> bool {
    pt <= 127 && !(64..=95).contains(&pt)
}

/// Bytes of zero padding that bring `len` to a multiple of 4.
fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

fn len_u16(len: usize) -> u16 {
    // Cores are at most MAX_PROBE_LEN bytes; a longer one gets a wrong length, never a panic.
    u16::try_from(len).unwrap_or(u16::MAX)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_zeros(out: &mut Vec<u8>, n: usize) {
    out.resize(out.len() + n, 0);
}

fn put_stun_attribute(out: &mut Vec<u8>, attr_type: u16, value: &[u8]) {
    put_u16(out, attr_type);
    put_u16(out, len_u16(value.len()));
    out.extend_from_slice(value);
    put_zeros(out, pad4(value.len()));
}

fn put_rtp(out: &mut Vec<u8>, payload_type: u8, ssrc: u32, core: &[u8], stamp: Option<RtpStamp>) {
    let (seq, timestamp) = match stamp {
        Some(s) => (s.seq, s.timestamp),
        None => rtp_seq_timestamp(core),
    };
    out.push(0x80);
    out.push(payload_type & 0x7F);
    put_u16(out, seq);
    put_u32(out, timestamp);
    put_u32(out, ssrc);
    out.extend_from_slice(core);
}

/// RTP sequence number and 48 kHz timestamp for a core packet: from a probe its `seq` and
/// `sent_us`, from a reply its `seq` and `reflector_tx_us` (the reflector's send time, as a real
/// far end stamps its own stream); 0 for the session's control packets.
fn rtp_seq_timestamp(core: &[u8]) -> (u16, u32) {
    // Offsets from probe.rs: Probe = version, kind, session(8), cookie(16), seq(4), sent_us(8);
    // Reply = version, kind, session(8), seq(4), sent_us(8), rx_us(8), tx_us(8), received(4).
    const KIND_PROBE: u8 = 3;
    const KIND_REPLY: u8 = 4;
    let (seq_at, time_at) = match core.get(1) {
        Some(&KIND_PROBE) => (26, 30),
        Some(&KIND_REPLY) => (10, 30),
        _ => return (0, 0),
    };
    let seq = be32(core, seq_at).unwrap_or(0);
    let us = be64(core, time_at).unwrap_or(0);
    let ticks_48khz = us / 1000 * 48 + us % 1000 * 48 / 1000;
    (seq as u16, ticks_48khz as u32)
}

/// A random-looking, deterministic STUN transaction id: a hash of the core packet.
fn transaction_id(core: &[u8]) -> [u8; 12] {
    // FNV-1a over the core, then mixed: the core's seq and timestamps make it differ per packet.
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in core {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    let a = mix64(h);
    let b = mix64(a);
    let mut id = [0u8; 12];
    id[..8].copy_from_slice(&a.to_be_bytes());
    id[8..].copy_from_slice(&b.to_be_bytes()[..4]);
    id
}

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), as STUN's FINGERPRINT uses.
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{
        Accept, Close, CloseAck, Open, Packet, Probe, Reject, RejectReason, Reply, MIN_PROBE_LEN,
    };
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn probe(session: u64, seq: u32, sent_us: u64, len: u16) -> Vec<u8> {
        Packet::Probe(Probe {
            session,
            cookie: [0x5A; 16],
            seq,
            sent_us,
            len,
        })
        .encode()
    }

    fn every_packet_kind(session: u64) -> Vec<Vec<u8>> {
        let cookie = [7u8; 16];
        [
            Packet::Open(Open {
                session,
                interval_ms: 20,
                size: 120,
                duration_ms: 10_000,
            }),
            Packet::Accept(Accept {
                session,
                cookie,
                interval_ms: 20,
                size: 120,
                duration_ms: 10_000,
                reflector_time_us: 99,
                features: 0,
                seal_key_id: [0; 4],
            }),
            Packet::Reject(Reject {
                session,
                reason: RejectReason::Busy,
            }),
            Packet::Probe(Probe {
                session,
                cookie,
                seq: 5,
                sent_us: 1_000_000,
                len: 120,
            }),
            Packet::Reply(Reply {
                session,
                seq: 5,
                sent_us: 1_000_000,
                reflector_rx_us: 2,
                reflector_tx_us: 3,
                reflector_received: 1,
                reflector_drops: 0,
                len: 120,
            }),
            Packet::Close(Close {
                session,
                cookie,
                packets_sent: 9,
            }),
            Packet::CloseAck(CloseAck {
                session,
                reflector_received: 9,
            }),
        ]
        .iter()
        .map(Packet::encode)
        .collect()
    }

    fn samples() -> Vec<Framing> {
        vec![
            Framing::Raw,
            Framing::Stun {
                message_type: STUN_BINDING_INDICATION,
                attributes: vec![],
                fingerprint: false,
            },
            Framing::Stun {
                message_type: 0x0800,
                attributes: vec![StunAttribute {
                    attr_type: 0x4000,
                    value: vec![1, 2, 3],
                }],
                fingerprint: true,
            },
            Framing::TurnChannelData { channel: 0x4001 },
            Framing::Rtp {
                payload_type: 111,
                ssrc: 0xDEAD_BEEF,
            },
            Framing::TurnChannelDataRtp {
                channel: 0x4FFF,
                payload_type: 111,
                ssrc: 1,
            },
            Framing::TelegramReflector {
                peer_tag: [0xC3; 16],
                sender_tag: 0x0102_0304,
            },
        ]
    }

    fn arb_framing() -> impl Strategy<Value = Framing> {
        let attr = (any::<u16>(), vec(any::<u8>(), 0..8))
            .prop_map(|(attr_type, value)| StunAttribute { attr_type, value });
        let pt = (0u8..=127).prop_filter("not RTCP", |pt| !(64..=95).contains(pt));
        prop_oneof![
            Just(Framing::Raw),
            (0u16..0x4000, vec(attr, 0..3), any::<bool>()).prop_map(
                |(message_type, attributes, fingerprint)| Framing::Stun {
                    message_type,
                    attributes,
                    fingerprint
                }
            ),
            (0x4000u16..=0x7FFF).prop_map(|channel| Framing::TurnChannelData { channel }),
            (pt.clone(), any::<u32>())
                .prop_map(|(payload_type, ssrc)| Framing::Rtp { payload_type, ssrc }),
            (0x4000u16..=0x7FFF, pt, any::<u32>()).prop_map(|(channel, payload_type, ssrc)| {
                Framing::TurnChannelDataRtp {
                    channel,
                    payload_type,
                    ssrc,
                }
            }),
            (any::<[u8; 16]>(), 1u32..).prop_map(|(mut peer_tag, sender_tag)| {
                peer_tag[0] |= 0xC0;
                Framing::TelegramReflector {
                    peer_tag,
                    sender_tag,
                }
            }),
        ]
        .prop_filter("valid", |f| f.validate().is_ok())
    }

    /// Any byte string that starts like a core packet, of core-packet lengths.
    fn arb_core() -> impl Strategy<Value = Vec<u8>> {
        (1u8..=7, vec(any::<u8>(), 14..=MAX_PROBE_LEN - 2)).prop_map(|(kind, rest)| {
            let mut core = vec![VERSION, kind];
            core.extend(rest);
            core
        })
    }

    fn wrapped(f: &Framing, core: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        f.wrap(core, &mut out);
        out
    }

    proptest! {
        #[test]
        fn wrap_is_detected_and_unwraps_exactly(f in arb_framing(), core in arb_core()) {
            let bytes = wrapped(&f, &core);
            prop_assert_eq!(bytes.len(), core.len() + f.overhead(core.len()));
            let (found, inner) = detect(&bytes).expect("detected");
            prop_assert_eq!(&found, &f);
            prop_assert_eq!(inner, &core[..]);
            prop_assert_eq!(f.unwrap(&bytes).expect("unwraps"), &core[..]);
        }

        #[test]
        fn reply_length_depends_only_on_core_length(
            f in arb_framing(), a in arb_core(), b_seed in any::<u64>(), shorter in 0usize..64,
        ) {
            // Same length, different bytes: same wire length.
            let mut b = a.clone();
            for (i, x) in b.iter_mut().enumerate().skip(2) {
                *x ^= mix64(b_seed ^ i as u64) as u8;
            }
            prop_assert_eq!(wrapped(&f, &a).len(), wrapped(&f, &b).len());
            // A shorter answer is never longer on the wire.
            let short = &a[..a.len().saturating_sub(shorter).max(2)];
            prop_assert!(wrapped(&f, short).len() <= wrapped(&f, &a).len());
            prop_assert_eq!(f.core_len_for_wire(f.wire_len(a.len())).map(|c| f.wire_len(c)),
                Some(f.wire_len(a.len())));
        }

        #[test]
        fn garbage_never_panics(bytes in vec(any::<u8>(), 0..1600)) {
            let _ = detect(&bytes);
            let _ = detect_any(&bytes);
            let _ = rtp_stamp(&bytes);
            let _ = call_signature(&bytes);
            for f in samples() {
                let _ = f.unwrap(&bytes);
            }
        }

        #[test]
        fn detect_any_agrees_with_detect(f in arb_framing(), core in arb_core(), seed in any::<u64>()) {
            let f = f.for_test(seed);
            prop_assert_eq!(f.validate(), Ok(()));
            let bytes = wrapped(&f, &core);
            prop_assert_eq!(detect_any(&bytes), Some(Detected::Core(f.clone(), &core[..])));
            // A stamped wrap is as long, detected the same way, and carries its stamp.
            let stamp = RtpStamp::start(seed);
            let mut stamped = Vec::new();
            f.wrap_stamped(&core, stamp, &mut stamped);
            prop_assert_eq!(stamped.len(), bytes.len());
            prop_assert_eq!(detect(&stamped), Some((f.clone(), &core[..])));
            prop_assert_eq!(rtp_stamp(&stamped), f.has_rtp().then_some(stamp));
        }

        #[test]
        fn per_test_telegram_tags_keep_ndpi_and_detection_rules(seed in any::<u64>()) {
            let f = Framing::TelegramReflector { peer_tag: [0xC3; 16], sender_tag: 1 }.for_test(seed);
            let Framing::TelegramReflector { peer_tag, sender_tag } = f.clone() else {
                panic!("not telegram")
            };
            prop_assert!((0xC0..=0xFE).contains(&peer_tag[0]));
            prop_assert!(!peer_tag.contains(&0xFF));
            prop_assert!(!sender_tag.to_be_bytes().contains(&0xFF));
            prop_assert_ne!(sender_tag, 0);
            prop_assert_ne!(&peer_tag[4..8], &STUN_MAGIC_COOKIE.to_be_bytes()[..]);
            prop_assert_eq!(f.validate(), Ok(()));
            // The hello: the first 0xFF byte starts exactly twelve (nDPI's telegram.c rule).
            let hello = Preamble::TelegramHello { repeat_ms: 10_000 }
                .datagram(&f, seed, 0)
                .expect("hello");
            prop_assert_eq!(hello.len(), TELEGRAM_HELLO_LEN);
            let first_ff = hello.iter().position(|&b| b == 0xFF);
            prop_assert_eq!(first_ff, Some(16));
            prop_assert_eq!(hello[28], 0xFE);
            prop_assert_eq!(
                detect_any(&hello),
                Some(Detected::Preamble(PreambleMessage::TelegramHello {
                    peer_tag: hello[..16].try_into().unwrap(),
                    query_id: TELEGRAM_HELLO_QUERY_ID,
                }))
            );
            prop_assert_eq!(detect(&hello), None);
        }

        #[test]
        fn anything_detected_is_never_amplified(
            f in arb_framing(), core in arb_core(), flips in vec((any::<usize>(), any::<u8>()), 0..4),
            cut in 0usize..8,
        ) {
            let mut bytes = wrapped(&f, &core);
            for (at, x) in flips {
                let n = bytes.len();
                bytes[at % n] ^= x;
            }
            bytes.truncate(bytes.len() - cut.min(bytes.len()));
            if let Some((found, inner)) = detect(&bytes) {
                prop_assert!(found.validate().is_ok());
                prop_assert_eq!(found.wire_len(inner.len()), bytes.len());
                prop_assert_eq!(wrapped(&found, inner).len(), bytes.len());
            }
        }

        #[test]
        fn neutral_sessions_give_signature_free_raw_packets(random in any::<u64>(), seq in any::<u32>(),
            sent_us in any::<u64>(), len in (MIN_PROBE_LEN as u16)..=(MAX_PROBE_LEN as u16)) {
            let session = neutral_session_id(random);
            prop_assert_ne!(&session.to_be_bytes()[2..6], &STUN_MAGIC_COOKIE.to_be_bytes()[..]);
            prop_assert_ne!((session >> 48) % 4, 0);
            prop_assert_ne!(session >> 56, 0x02);
            for core in every_packet_kind(session).into_iter().chain([probe(session, seq, sent_us, len)]) {
                prop_assert_eq!(call_signature(&core), None);
                prop_assert_eq!(detect(&core).map(|(f, _)| f), Some(Framing::Raw));
            }
        }
    }

    #[test]
    fn every_core_packet_kind_is_raw() {
        for core in every_packet_kind(neutral_session_id(42)) {
            let (f, inner) = detect(&core).expect("raw core detected");
            assert_eq!(f, Framing::Raw);
            assert_eq!(inner, &core[..]);
        }
    }

    #[test]
    fn every_core_packet_kind_survives_every_framing() {
        for f in samples() {
            for core in every_packet_kind(7) {
                let bytes = wrapped(&f, &core);
                assert_eq!(detect(&bytes), Some((f.clone(), &core[..])), "{}", f.name());
            }
        }
    }

    #[test]
    fn signatures_of_each_framing() {
        let core = probe(neutral_session_id(1), 1, 2, 100);
        let sig = |f: &Framing| call_signature(&wrapped(f, &core));
        let s = samples();
        assert_eq!(sig(&s[0]), None);
        assert_eq!(sig(&s[1]), Some(CallSignature::StunCookie));
        assert_eq!(sig(&s[2]), Some(CallSignature::StunCookie));
        assert_eq!(sig(&s[3]), Some(CallSignature::TurnChannelData));
        assert_eq!(sig(&s[4]), Some(CallSignature::RtpOrRtcp));
        assert_eq!(sig(&s[5]), Some(CallSignature::TurnChannelData));
        assert_eq!(sig(&s[6]), None);
        let mut hello = vec![0xC3; 16];
        hello.extend([0xFF; 12]);
        hello.extend([0xFE, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 123]);
        assert_eq!(call_signature(&hello), Some(CallSignature::TelegramSpecial));
    }

    #[test]
    fn rtp_header_carries_the_probe_sequence_and_time() {
        let f = Framing::Rtp {
            payload_type: 111,
            ssrc: 0x0102_0304,
        };
        let bytes = wrapped(&f, &probe(9, 0x0001_0203, 20_000, 80));
        assert_eq!(bytes[0], 0x80);
        assert_eq!(bytes[1], 111);
        assert_eq!(&bytes[2..4], &0x0203u16.to_be_bytes());
        assert_eq!(&bytes[4..8], &960u32.to_be_bytes()); // 20 ms at 48 kHz
        assert_eq!(&bytes[8..12], &[1, 2, 3, 4]);
        let reply = Packet::Reply(Reply {
            session: 9,
            seq: 77,
            sent_us: 20_000,
            reflector_rx_us: 1,
            reflector_tx_us: 40_000,
            reflector_received: 1,
            reflector_drops: 0,
            len: 80,
        })
        .encode();
        let bytes = wrapped(&f, &reply);
        assert_eq!(&bytes[2..4], &77u16.to_be_bytes());
        assert_eq!(&bytes[4..8], &1920u32.to_be_bytes());
    }

    #[test]
    fn stun_layout_is_rfc_8489() {
        let f = &samples()[2];
        let core = probe(3, 4, 5, 61); // odd length: DATA gets 3 bytes of padding
        let bytes = wrapped(f, &core);
        assert_eq!(&bytes[0..2], &[0x08, 0x00]);
        assert_eq!(usize::from(be16(&bytes, 2).unwrap()), bytes.len() - 20);
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(be32(&bytes, 4), Some(STUN_MAGIC_COOKIE));
        // 0x4000 with 3 bytes and one byte of padding, then DATA.
        assert_eq!(&bytes[20..28], &[0x40, 0x00, 0x00, 0x03, 1, 2, 3, 0]);
        assert_eq!(&bytes[28..32], &[0x00, 0x13, 0x00, 61]);
        let fp_at = bytes.len() - 8;
        assert_eq!(&bytes[fp_at..fp_at + 4], &[0x80, 0x28, 0x00, 0x04]);
        let crc = crc32(&bytes[..fp_at]) ^ FINGERPRINT_XOR;
        assert_eq!(&bytes[fp_at + 4..], &crc.to_be_bytes());
        // A corrupted fingerprint is refused.
        let mut bad = bytes.clone();
        bad[fp_at + 7] ^= 1;
        assert!(detect(&bad).is_none());
        // Transaction ids differ per packet.
        let other = wrapped(f, &probe(3, 5, 5, 61));
        assert_ne!(&bytes[8..20], &other[8..20]);
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn telegram_layout_is_tgcalls_reflector_port() {
        let f = &samples()[6];
        let core = probe(3, 4, 5, 50);
        let bytes = wrapped(f, &core);
        assert_eq!(&bytes[..16], &[0xC3; 16]);
        assert_eq!(&bytes[16..20], &[1, 2, 3, 4]);
        assert_eq!(&bytes[20..24], &50u32.to_be_bytes());
        assert_eq!(&bytes[24..74], &core[..]);
        assert_eq!(&bytes[74..], &[0, 0]);
        assert_ne!(be32(&bytes, 4), Some(STUN_MAGIC_COOKIE));
    }

    #[test]
    fn unwrap_names_what_differs() {
        let s = samples();
        let core = probe(3, 4, 5, 64);
        let rtp = wrapped(&s[4], &core);
        assert_eq!(
            s[1].unwrap(&rtp),
            Err(FramingError::WrongFraming {
                expected: "stun",
                found: "rtp"
            })
        );
        let other_ssrc = Framing::Rtp {
            payload_type: 111,
            ssrc: 2,
        };
        assert_eq!(
            other_ssrc.unwrap(&rtp),
            Err(FramingError::WrongParameters {
                framing: "rtp",
                field: "SSRC"
            })
        );
        let plain_stun = wrapped(&s[1], &core);
        assert!(matches!(
            s[2].unwrap(&plain_stun),
            Err(FramingError::WrongParameters { .. })
        ));
        assert!(matches!(
            Framing::Raw.unwrap(&[]),
            Err(FramingError::Unrecognised(_))
        ));
    }

    #[test]
    fn invalid_framings_are_refused() {
        let bad = [
            Framing::Stun {
                message_type: 0x0103,
                attributes: vec![],
                fingerprint: false,
            },
            Framing::Stun {
                message_type: 0x4001,
                attributes: vec![],
                fingerprint: false,
            },
            Framing::Stun {
                message_type: 0x0011,
                attributes: vec![StunAttribute {
                    attr_type: STUN_ATTR_DATA,
                    value: vec![],
                }],
                fingerprint: false,
            },
            Framing::Stun {
                message_type: 0x0011,
                attributes: vec![StunAttribute {
                    attr_type: 0x4000,
                    value: vec![0; 40],
                }],
                fingerprint: true,
            },
            Framing::TurnChannelData { channel: 0x3FFF },
            Framing::TurnChannelDataRtp {
                channel: 0x8000,
                payload_type: 111,
                ssrc: 0,
            },
            Framing::Rtp {
                payload_type: 72,
                ssrc: 0,
            },
            Framing::Rtp {
                payload_type: 128,
                ssrc: 0,
            },
            Framing::TelegramReflector {
                peer_tag: [0x01; 16],
                sender_tag: 1,
            },
            Framing::TelegramReflector {
                peer_tag: [0xFF; 16],
                sender_tag: 0,
            },
        ];
        for f in bad {
            assert!(
                matches!(f.validate(), Err(FramingError::Invalid { .. })),
                "{f:?}"
            );
        }
        for f in samples() {
            assert_eq!(f.validate(), Ok(()), "{f:?}");
        }
    }

    #[test]
    fn foreign_traffic_is_not_detected() {
        // A STUN Binding request from an ICE agent: cookie, no DATA attribute.
        let mut binding = vec![0x00, 0x01, 0x00, 0x00];
        binding.extend(STUN_MAGIC_COOKIE.to_be_bytes());
        binding.extend([9; 12]);
        assert_eq!(detect(&binding), None);
        // RTP carrying something that is not a callwatch packet.
        let mut rtp = vec![0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        rtp.extend([0xAB; 100]);
        assert_eq!(detect(&rtp), None);
        // A QUIC-like long header.
        assert_eq!(detect(&[0xC3; 1200]), None);
    }

    #[test]
    fn core_len_for_wire_matches_padding() {
        let stun = &samples()[2];
        let fixed = stun.overhead(64);
        assert_eq!(stun.core_len_for_wire(64 + fixed), Some(64));
        assert_eq!(stun.core_len_for_wire(65 + fixed), None);
        assert_eq!(stun.core_len_for_wire(3), None);
        assert_eq!(Framing::Raw.core_len_for_wire(100), Some(100));
        let rtp = &samples()[4];
        assert_eq!(rtp.core_len_for_wire(101), Some(89));
    }

    #[test]
    fn framings_round_trip_through_json() {
        for f in samples() {
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(serde_json::from_str::<Framing>(&json).unwrap(), f, "{json}");
        }
        let f: Framing =
            serde_json::from_str(r#"{"kind":"stun","message_type":17}"#).expect("defaults");
        assert_eq!(f, samples()[1]);
    }

    #[test]
    fn overhead_fits_the_mtu_budget() {
        for f in samples() {
            assert!(
                f.overhead(MAX_PROBE_LEN - 1) <= MAX_OVERHEAD,
                "{}",
                f.name()
            );
        }
    }

    #[test]
    fn telegram_hello_is_tgcalls_layout_and_its_answer_no_longer() {
        let f = Framing::TelegramReflector {
            peer_tag: [0xC3; 16],
            sender_tag: 0x0102_0304,
        };
        let p = Preamble::TelegramHello { repeat_ms: 10_000 };
        let hello = p.datagram(&f, 1, 0).unwrap();
        assert_eq!(&hello[..12], &[0xC3; 12]);
        assert_eq!(
            &hello[12..16],
            &[1, 2, 3, 4],
            "the sender's own tag ends the hello's tag"
        );
        assert_eq!(&hello[16..28], &[0xFF; 12]);
        assert_eq!(&hello[28..32], &[0xFE, 0xFF, 0xFF, 0xFF]);
        assert_eq!(&hello[32..], &123u64.to_be_bytes());
        assert_eq!(call_signature(&hello), Some(CallSignature::TelegramSpecial));
        let Some(Detected::Preamble(PreambleMessage::TelegramHello { peer_tag, query_id })) =
            detect_any(&hello)
        else {
            panic!("hello not detected")
        };
        let answer = telegram_hello_answer(&peer_tag, query_id);
        assert_eq!(answer.len(), hello.len());
        assert_eq!(&answer[..16], &hello[..16]);
        assert_eq!(&answer[28..32], &[0xC7, 0x72, 0x15, 0xC0]);
        assert!(p.is_answer(&hello, &answer));
        // Another call's answer, a data packet, or the hello cut short: not an answer / no hello.
        let mut other = answer.clone();
        other[3] ^= 1;
        assert!(!p.is_answer(&hello, &other));
        assert!(!p.is_answer(&hello, &wrapped(&f, &probe(1, 2, 3, 60))));
        assert_eq!(detect_any(&hello[..36]), None);
        let mut longer = hello.clone();
        longer.extend([0; 4]);
        assert_eq!(detect_any(&longer), None);
        // No hello without a Telegram framing.
        assert_eq!(p.datagram(&Framing::Raw, 1, 0), None);
    }

    #[test]
    fn turn_allocate_carries_the_realm_and_a_valid_fingerprint() {
        let p = Preamble::TurnAllocate {
            realm: "signal.org".into(),
            username_valid_s: 86_400,
        };
        let a = p.datagram(&Framing::Raw, 77, 1_760_000_000).unwrap();
        let b = p.datagram(&Framing::Raw, 77, 1_760_000_000).unwrap();
        assert_eq!(a, b, "same seed, same datagram: a retransmission");
        assert_ne!(a, p.datagram(&Framing::Raw, 78, 1_760_000_000).unwrap());
        assert_eq!(be16(&a, 0), Some(STUN_ALLOCATE_REQUEST));
        assert_eq!(usize::from(be16(&a, 2).unwrap()) + 20, a.len());
        assert_eq!(be32(&a, 4), Some(STUN_MAGIC_COOKIE));
        assert_eq!(call_signature(&a), Some(CallSignature::StunCookie));
        // Walk the attributes.
        let mut attrs = Vec::new();
        let mut pos = 20;
        while pos < a.len() {
            let t = be16(&a, pos).unwrap();
            let n = usize::from(be16(&a, pos + 2).unwrap());
            attrs.push((t, a[pos + 4..pos + 4 + n].to_vec(), pos));
            pos += 4 + n + pad4(n);
        }
        let types: Vec<u16> = attrs.iter().map(|x| x.0).collect();
        assert_eq!(types, [0x0019, 0x0006, 0x0014, 0x0015, 0x0008, 0x8028]);
        assert_eq!(attrs[0].1, [17, 0, 0, 0]);
        let user = String::from_utf8(attrs[1].1.clone()).unwrap();
        let (expiry, number) = user.split_once(':').unwrap();
        assert_eq!(expiry, "1760086400");
        assert!(number.parse::<u32>().unwrap() <= 0x7FFF_FFFF);
        assert_eq!(attrs[2].1, b"signal.org");
        assert_eq!(attrs[3].1.len(), 16);
        assert_eq!(attrs[4].1.len(), 20);
        let fp_at = attrs[5].2;
        let crc = crc32(&a[..fp_at]) ^ FINGERPRINT_XOR;
        assert_eq!(attrs[5].1, crc.to_be_bytes());
        // A preamble, not a core packet.
        assert_eq!(detect(&a), None);
        let Some(Detected::Preamble(PreambleMessage::TurnAllocate { transaction_id })) =
            detect_any(&a)
        else {
            panic!("allocate not detected")
        };
        assert_eq!(&transaction_id[..], &a[8..20]);
        // Its answers: a success or error response with its transaction id.
        let mut ok = vec![0x01, 0x03, 0, 0];
        ok.extend(STUN_MAGIC_COOKIE.to_be_bytes());
        ok.extend(&a[8..20]);
        assert!(p.is_answer(&a, &ok));
        ok[19] ^= 1;
        assert!(!p.is_answer(&a, &ok));
        // Truncated or with an overrunning attribute: not an Allocate.
        assert_eq!(detect_any(&a[..a.len() - 4]), None);
        let mut bad = a.clone();
        bad[22..24].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(detect_any(&bad), None);
        // Invalid preambles build nothing.
        let empty = Preamble::TurnAllocate {
            realm: String::new(),
            username_valid_s: 0,
        };
        assert!(empty.validate().is_err());
        assert_eq!(empty.datagram(&Framing::Raw, 1, 0), None);
    }

    #[test]
    fn stamped_rtp_carries_the_callers_sequence_and_time() {
        let f = Framing::TurnChannelDataRtp {
            channel: 0x4001,
            payload_type: 102,
            ssrc: 9,
        }
        .for_test(5);
        let Framing::TurnChannelDataRtp { ssrc, .. } = f else {
            panic!()
        };
        assert_ne!(ssrc, 9, "a fresh SSRC per test");
        let stamp = RtpStamp {
            seq: 0xFFFF,
            timestamp: 0xDEAD_BEEF,
        };
        let mut out = Vec::new();
        f.wrap_stamped(&probe(1, 2, 3, 61), stamp, &mut out);
        assert_eq!(&out[4..6], &[0x80, 102]);
        assert_eq!(&out[6..8], &[0xFF, 0xFF]);
        assert_eq!(&out[8..12], &0xDEAD_BEEFu32.to_be_bytes());
        assert_eq!(rtp_stamp(&out), Some(stamp));
        assert_eq!(rtp_stamp(&probe(1, 2, 3, 61)), None);
        assert_ne!(RtpStamp::start(1), RtpStamp::start(2));
        // Framings without RTP are unchanged by a seed.
        assert_eq!(samples()[2].for_test(5), samples()[2]);
    }

    #[test]
    fn keystream_is_reproducible_and_differs_by_seed_and_nonce() {
        let ks = |seed, nonce| {
            let mut b = [0u8; 37];
            keystream(seed, nonce, &mut b);
            b
        };
        assert_eq!(ks(1, 2), ks(1, 2));
        assert_ne!(ks(1, 2), ks(1, 3));
        assert_ne!(ks(1, 2), ks(2, 2));
        // Roughly uniform: every byte value shows up in 64 KiB.
        let mut seen = [false; 256];
        let mut b = vec![0u8; 65_536];
        keystream(7, 0, &mut b);
        for x in b {
            seen[usize::from(x)] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
