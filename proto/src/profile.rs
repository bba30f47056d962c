//! Platform profiles: for each [`Platform`], how its test's streams look — the platform arm's
//! framing and reflector ports, the neutral control port, packet sizes and intervals, the codec
//! the E-model scores — and, as data, what each profile is modelled on and where it falls short.
//!
//! A profile imitates the *shape* of a platform's call traffic as seen by a middlebox (header
//! bytes, ports, sizes, timing); it is not the platform's client and talks only to our reflector.
//! Every profile uses the same on-wire size table and timing — an assumption, see `voice()` — so
//! platform arms differ from one another, and from their controls, only in framing, preamble and
//! port. Each profile's `modelled_on` names the source of every statement it makes (a repository
//! and path, an RFC, a capture); what has no source is called an assumption in `limits`.
//!
//! ## What a real DPI engine calls each arm
//!
//! nDPI's `ndpiReader -i FILE.pcap` (Debian 12's libndpi-bin, nDPI 4.2.0) on a capture of each
//! arm of a whole simulated test (tests/tests/ndpi.rs, which measures this table and checks it
//! is the one here; why each platform arm gets its label: tests/ndpi/FINDINGS.md §2):
//!
//! | platform | arm | reflector port | nDPI 4.2 (`ndpiReader -i`) | confidence |
//! | --- | --- | --- | --- | --- |
//! | whatsapp | platform | 3478 | STUN.WhatsAppCall | DPI |
//! | whatsapp | control | 40400 | Unknown | Unknown |
//! | telegram | platform | 599 | Telegram | DPI |
//! | telegram | control | 40400 | Unknown | Unknown |
//! | signal | platform | 3478 | STUN.SignalVoip | DPI |
//! | signal | control | 40400 | Unknown | Unknown |
//! | max | platform | 50000 | RTP | DPI |
//! | max | control | 40400 | Unknown | Unknown |
//!
//! nDPI has no Max (nor, in 4.2, VK) protocol, so `RTP` is the most a Max arm can be.

use std::ops::RangeInclusive;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::framing::{mix64, Framing, Preamble, StunAttribute};
use crate::platform::{Platform, Role};
use crate::probe::{MAX_PROBE_LEN, MIN_PROBE_LEN};

/// The reflector port every control arm uses: outside every range in [`REPORTED_DPI_PORTS`] and
/// every platform arm's ports, and registered to no call service.
pub const CONTROL_PORT: u16 = 40400;

/// UDP destination ports that August 2025 reports say Russian DPI boxes single out for calls.
pub const REPORTED_DPI_PORTS: [RangeInclusive<u16>; 3] = [3478..=3478, 590..=1400, 50000..=50100];

/// One on-wire size and how often it occurs, relative to the other rows of its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SizeShare {
    /// UDP payload length in bytes, framing included: the same on both arms.
    pub wire_bytes: u16,
    pub weight: u16,
}

/// A stream's timing and packet sizes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamShape {
    pub interval_ms: u16,
    /// On-wire sizes with weights; [`StreamShape::wire_bytes`] draws from it per sequence number.
    pub sizes: Vec<SizeShare>,
}

impl StreamShape {
    /// The on-wire size of packet `seq`: a deterministic, weighted draw from [`Self::sizes`], so
    /// both arms of a test send the same size sequence without sharing a random generator.
    /// `None` only for a table whose weights sum to 0.
    pub fn wire_bytes(&self, seq: u32) -> Option<u16> {
        let total: u64 = self.sizes.iter().map(|s| u64::from(s.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut pick = mix64(u64::from(seq)) % total;
        for share in &self.sizes {
            let weight = u64::from(share.weight);
            if pick < weight {
                return Some(share.wire_bytes);
            }
            pick -= weight;
        }
        None
    }

    /// The weighted mean on-wire size, in bytes (0 for an empty table).
    pub fn mean_wire_bytes(&self) -> f64 {
        let total: f64 = self.sizes.iter().map(|s| f64::from(s.weight)).sum();
        if total == 0.0 {
            return 0.0;
        }
        self.sizes
            .iter()
            .map(|s| f64::from(s.wire_bytes) * f64::from(s.weight))
            .sum::<f64>()
            / total
    }
}

/// How one platform's test traffic looks. Data, not code: it round-trips through serde, so a
/// deployment can read profiles from a file (and must [`Profile::validate`] them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub platform: Platform,
    /// The platform arm's framing. Its per-test values (Telegram tags, RTP SSRC) are placeholders
    /// here: every test draws fresh ones ([`Framing::for_test`]).
    pub framing: Framing,
    /// What the platform arm sends before its first core packet, if anything: the platform's own
    /// call set-up message ([`Preamble`]), built per test from the arm's framing and seed.
    #[serde(default)]
    pub preamble: Option<Preamble>,
    /// Reflector UDP ports for the platform arm; the agent uses the first unless told otherwise,
    /// the reflector listens on all.
    pub ports: Vec<u16>,
    /// The control arm's reflector port ([`Framing::Raw`]); `None` for a single-arm profile.
    pub control_port: Option<u16>,
    /// The voice stream.
    pub voice: StreamShape,
    /// A video-like stream at a higher rate, if the profile has one.
    pub video: Option<StreamShape>,
    /// The codec the E-model scores, by its row name in the agent's codec table. "opus" for
    /// every profile here: all four messengers and WebRTC send Opus voice (WhatsApp also has
    /// Meta's MLow codec for poor links; the E-model has no figures for it, so it is scored as
    /// Opus). The probes carry no audio; the label only picks the E-model's codec constants.
    pub codec: String,
    /// What the platform arm imitates, and the sources for it.
    pub modelled_on: String,
    /// What it does not imitate, and what a result therefore cannot show.
    pub limits: String,
}

/// Why a profile cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProfileError {
    #[error("{platform} profile: {source}")]
    Framing {
        platform: Platform,
        #[source]
        source: crate::framing::FramingError,
    },
    #[error("{platform} profile: {reason}")]
    Invalid { platform: Platform, reason: String },
}

static RAW: Framing = Framing::Raw;

impl Profile {
    /// The framing an arm uses: the platform's for [`Role::Platform`], [`Framing::Raw`] for
    /// [`Role::Control`] if the profile has a control arm, `None` otherwise (the relay arm speaks
    /// plain STUN to the platform's own servers, not to our reflector).
    pub fn framing_for(&self, role: Role) -> Option<&Framing> {
        match role {
            Role::Platform => Some(&self.framing),
            Role::Control => self.control_port.map(|_| &RAW),
            Role::Relay | Role::RelayReference => None,
        }
    }

    /// The reflector port an arm sends to, as [`Profile::framing_for`].
    pub fn port_for(&self, role: Role) -> Option<u16> {
        match role {
            Role::Platform => self.ports.first().copied(),
            Role::Control => self.control_port,
            Role::Relay | Role::RelayReference => None,
        }
    }

    /// The core packet length that makes an arm's datagram exactly `wire_bytes` long, or `None`
    /// if the arm's framing cannot produce that length.
    pub fn core_len(&self, role: Role, wire_bytes: u16) -> Option<usize> {
        self.framing_for(role)?
            .core_len_for_wire(usize::from(wire_bytes))
    }

    /// Checks everything an agent and reflector rely on: a valid framing; ports present and the
    /// control port apart from them and from [`REPORTED_DPI_PORTS`]; every size reachable by both
    /// arms with a core of `MIN_PROBE_LEN..=MAX_PROBE_LEN` bytes; a non-zero interval.
    pub fn validate(&self) -> Result<(), ProfileError> {
        let platform = self.platform;
        let invalid = |reason: String| Err(ProfileError::Invalid { platform, reason });
        self.framing
            .validate()
            .map_err(|source| ProfileError::Framing { platform, source })?;
        if let Some(preamble) = &self.preamble {
            preamble
                .validate()
                .map_err(|source| ProfileError::Framing { platform, source })?;
            if preamble.datagram(&self.framing, 0, 0).is_none() {
                return invalid(format!(
                    "a {} preamble cannot go with the {} framing",
                    preamble.name(),
                    self.framing.name()
                ));
            }
        }
        if self.ports.is_empty() || self.ports.contains(&0) {
            return invalid("needs at least one non-zero platform port".into());
        }
        if let Some(port) = self.control_port {
            if port == 0 || self.ports.contains(&port) || in_reported_dpi_ports(port) {
                return invalid(format!(
                    "control port {port} must be non-zero, apart from the platform ports and \
                     outside 3478, 590-1400 and 50000-50100"
                ));
            }
        }
        if self.codec.is_empty() {
            return invalid("names no codec".into());
        }
        for (name, shape) in [("voice", Some(&self.voice)), ("video", self.video.as_ref())] {
            let Some(shape) = shape else { continue };
            if shape.interval_ms == 0 {
                return invalid(format!("{name} interval must be at least 1 ms"));
            }
            if shape.wire_bytes(0).is_none() {
                return invalid(format!("{name} size table has no weight"));
            }
            for share in &shape.sizes {
                for role in [Role::Platform, Role::Control] {
                    if self.framing_for(role).is_none() {
                        continue;
                    }
                    let fits = self
                        .core_len(role, share.wire_bytes)
                        .is_some_and(|c| (MIN_PROBE_LEN..=MAX_PROBE_LEN).contains(&c));
                    if !fits {
                        return invalid(format!(
                            "{name} size {} bytes cannot be sent on the {role} arm with a core \
                             of {MIN_PROBE_LEN}..={MAX_PROBE_LEN} bytes",
                            share.wire_bytes
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `port` is in one of the [`REPORTED_DPI_PORTS`] ranges.
pub fn in_reported_dpi_ports(port: u16) -> bool {
    REPORTED_DPI_PORTS.iter().any(|r| r.contains(&port))
}

/// The built-in profile for `platform`.
pub fn profile(platform: Platform) -> &'static Profile {
    let all = profiles();
    // `profiles()` holds one profile per platform in `Platform::ALL` order (a test checks it).
    let at = Platform::ALL
        .iter()
        .position(|p| *p == platform)
        .unwrap_or(0);
    &all[at]
}

/// Every built-in profile, in [`Platform::ALL`] order.
pub fn profiles() -> &'static [Profile] {
    static PROFILES: OnceLock<Vec<Profile>> = OnceLock::new();
    PROFILES.get_or_init(|| Platform::ALL.into_iter().map(build).collect())
}

/// Every UDP port a reflector must listen on to serve the built-in profiles, ascending.
pub fn reflector_ports() -> Vec<u16> {
    let mut ports: Vec<u16> = profiles()
        .iter()
        .flat_map(|p| p.ports.iter().copied().chain(p.control_port))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Where a reflector serves each platform's test: what a collector tells its agents about its
/// own reflector ([`crate::upload::Request::Endpoints`]). The reflector is at the collector's host
/// (the one the agent dialled); only the ports and the platforms are said.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// The platforms it serves, with the port each arm goes to.
    pub served: Vec<Served>,
    /// The platforms it cannot serve, with why (e.g. a port it could not bind).
    pub unavailable: Vec<Unavailable>,
}

/// One platform a reflector serves, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    pub platform: Platform,
    /// The platform arm's port (generic: its only arm's).
    pub platform_port: u16,
    /// The control arm's port; `None` for a single-arm profile.
    pub control_port: Option<u16>,
}

/// One platform a reflector cannot serve, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    pub platform: Platform,
    pub reason: String,
}

/// Most entries an [`Endpoints`] answer may hold (served and unavailable together).
pub const MAX_ENDPOINTS: usize = 64;
/// Longest reason an [`Unavailable`] entry may give, in bytes.
pub const MAX_REASON_LEN: usize = 300;

impl Endpoints {
    /// Every built-in profile at its own ports: what an agent assumes of a collector of an
    /// earlier release, which does not say.
    pub fn assumed() -> Endpoints {
        let ports = reflector_ports();
        Endpoints::from_ports(&ports, &[])
    }

    /// What a reflector listening on the `bound` ports serves, when binding `unbound` failed
    /// (each with why). A platform is served when one of its profile's ports and its control
    /// port are bound (the first bound one of its ports is the one given). Generic, whose own
    /// port is not bound, goes to the first bound port no profile uses (e.g. a reflector
    /// started on 3479 alone), so that a reflector on any port serves at least generic tests.
    pub fn from_ports(bound: &[u16], unbound: &[(u16, String)]) -> Endpoints {
        let why_not = |port: u16| match unbound.iter().find(|(p, _)| *p == port) {
            Some((_, why)) => format!("UDP port {port} could not be bound: {why}"),
            None => format!("the reflector does not listen on UDP port {port}"),
        };
        let used = reflector_ports();
        let mut out = Endpoints::default();
        for p in profiles() {
            let own = p.ports.iter().copied().find(|port| bound.contains(port));
            let platform_port = match own {
                Some(port) => Ok(port),
                None if p.platform == Platform::Generic => bound
                    .iter()
                    .copied()
                    .find(|port| !used.contains(port))
                    .ok_or_else(|| why_not(p.ports.first().copied().unwrap_or(0))),
                None => Err(why_not(p.ports.first().copied().unwrap_or(0))),
            };
            let control = match p.control_port {
                Some(port) if bound.contains(&port) => Ok(Some(port)),
                Some(port) => Err(why_not(port)),
                None => Ok(None),
            };
            match (platform_port, control) {
                (Ok(platform_port), Ok(control_port)) => out.served.push(Served {
                    platform: p.platform,
                    platform_port,
                    control_port,
                }),
                (Err(reason), _) | (_, Err(reason)) => out.unavailable.push(Unavailable {
                    platform: p.platform,
                    reason,
                }),
            }
        }
        out
    }

    /// Where `platform`'s test goes, or why it cannot run here.
    pub fn get(&self, platform: Platform) -> Result<&Served, String> {
        if let Some(s) = self.served.iter().find(|s| s.platform == platform) {
            return Ok(s);
        }
        Err(
            match self.unavailable.iter().find(|u| u.platform == platform) {
                Some(u) => u.reason.clone(),
                None => "the collector's reflector does not offer it".into(),
            },
        )
    }

    /// Whether an answer received from a collector is usable: bounded, ports non-zero, each
    /// platform at most once. What an agent checks before it keeps it.
    pub fn check(&self) -> Result<(), String> {
        if self.served.len() + self.unavailable.len() > MAX_ENDPOINTS {
            return Err(format!("more than {MAX_ENDPOINTS} entries"));
        }
        let mut seen = Vec::new();
        for s in &self.served {
            if s.platform_port == 0 || s.control_port == Some(0) {
                return Err(format!("{}: port 0", s.platform));
            }
            seen.push(s.platform);
        }
        for u in &self.unavailable {
            if u.reason.len() > MAX_REASON_LEN {
                return Err(format!(
                    "{}: a reason over {MAX_REASON_LEN} bytes",
                    u.platform
                ));
            }
            seen.push(u.platform);
        }
        let n = seen.len();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != n {
            return Err("a platform listed twice".into());
        }
        Ok(())
    }
}

/// Opus voice in 20 ms frames, as UDP payload sizes. An assumption, not a measurement: a
/// wideband Opus frame (roughly 60–110 bytes at 24–40 kbit/s VBR) plus an RTP header, an SRTP tag
/// and a relay header. The same for every platform, so that the arms of different platforms
/// differ only in framing, port and preamble; the per-platform figures that are published do not
/// fit a 20 ms stream (see each profile's `limits`). All multiples of 8, so every padded framing
/// reaches them, and at least 88 so the STUN framing's 40 bytes leave a 48-byte core.
fn voice() -> StreamShape {
    StreamShape {
        interval_ms: 20,
        sizes: shares(&[(88, 1), (104, 3), (120, 4), (136, 2)]),
    }
}

/// A video-like stream: 1000–1200-byte packets every 5 ms, about 1.8 Mbit/s — a mid-quality
/// video call's packetised frames, at the reflector's highest granted rate. An assumption too.
fn video() -> StreamShape {
    StreamShape {
        interval_ms: 5,
        sizes: shares(&[(1000, 1), (1100, 2), (1200, 1)]),
    }
}

fn shares(rows: &[(u16, u16)]) -> Vec<SizeShare> {
    rows.iter()
        .map(|&(wire_bytes, weight)| SizeShare { wire_bytes, weight })
        .collect()
}

/// libwebrtc's default RTP payload type for Opus 48000/2: webrtc `media/engine/
/// payload_type_mapper.cc` (its unit test expects 111 for Opus).
const OPUS_PAYLOAD_TYPE: u8 = 111;
/// RingRTC's Opus payload type: signalapp/webrtc `ringrtc/rffi/src/peer_connection.cc`,
/// `OPUS_PT = 102`.
const RINGRTC_OPUS_PAYLOAD_TYPE: u8 = 102;
/// How long a Signal TURN username is valid: one day (Signal-Server `TurnTokenGenerator`).
const SIGNAL_TURN_USERNAME_VALID_S: u32 = 86_400;
/// tgcalls repeats its reflector hello every 10 s once answered (`SendReflectorHello`).
const TELEGRAM_HELLO_REPEAT_MS: u32 = 10_000;

fn build(platform: Platform) -> Profile {
    let (framing, preamble, ports, control_port, modelled_on, limits) = match platform {
        Platform::Generic => (
            Framing::Rtp {
                payload_type: OPUS_PAYLOAD_TYPE,
                ssrc: 0x6361_6C6C,
            },
            None,
            vec![40401],
            None,
            "A WebRTC-style Opus audio stream with no platform in it, straight over UDP to a port no \
             call service uses (40401): an RTP v2 header (RFC 3550) with payload type 111, \
             libwebrtc's default for Opus (webrtc media/engine/payload_type_mapper.cc), an SSRC, \
             sequence number and timestamp drawn at random per test (RFC 3550 §5.1), the sequence \
             number +1 on every datagram and the timestamp +960 per 20 ms frame (48 kHz, RFC \
             7587), one packet per 20 ms frame; after the probe's fields, high-entropy bytes as an \
             SRTP payload has. It measures what any voice call would get from this network.",
            "A single arm: it shows call quality, never differentiation. The probe's fields follow \
             the RTP header in the clear (SRTP encrypts from there); there is no SRTP \
             authentication tag. No ICE/STUN checks, DTLS handshake or RTCP precede or accompany \
             the stream. Sizes and timing are an assumption (the shared 20 ms table).",
        ),
        Platform::Whatsapp => (
            Framing::Stun {
                message_type: 0x0800,
                attributes: vec![StunAttribute {
                    attr_type: 0x4000,
                    value: vec![0x00, 0x00, 0x00, 0x01],
                }],
                fingerprint: true,
            },
            None,
            vec![3478],
            Some(CONTROL_PORT),
            "WhatsApp's relay traffic: STUN-framed messages (RFC 8489 header with the 0x2112A442 \
             cookie) to a relay on UDP 3478, in WhatsApp's own dialect — message type 0x0800, an \
             attribute in the 0x4000 range, a closing FINGERPRINT — each probe riding in a DATA \
             attribute (0x0013). Sources: nDPI's STUN dissector names a 0x0800 message with a \
             body, or one carrying attribute 0x4000-0x4002, WhatsAppCall (ntop/nDPI \
             src/lib/protocols/stun.c, tag 4.2); nDPI's WhatsApp call captures show 0x0800-0x0802 \
             messages, 0x4000-range attributes and port 3478 (ntop/nDPI \
             tests/cfgs/default/pcap/stun_wa_call.pcapng and wa_voice.pcap; \
             tests/ndpi/FINDINGS.md §3); public reconstructions of the relay dialect (wacrg.org, \
             'WARP, STUN, and relay media transport') describe the same traits. After each \
             probe's fields come high-entropy bytes, as in WhatsApp's encrypted media. nDPI 4.2 \
             classifies the arm STUN.WhatsAppCall (tests/tests/ndpi.rs). The control arm sends \
             the same sizes and timing as bare probes to UDP 40400.",
            "Every probe is a STUN message, while WhatsApp uses STUN for the relay handshake and \
             keepalives and then sends media as its own RTP profile (first byte 0x90, payload \
             type 120, header-extension profile 0xDEBE in nDPI's stun_wa_call.pcapng). So the arm \
             shows how STUN-shaped call traffic on 3478 is treated, not how each WhatsApp media \
             packet is; a rule aimed at WhatsApp's RTP alone is not seen. No MESSAGE-INTEGRITY \
             (we hold no relay key), no allocate or relay token, no Meta relay address: a network \
             that picks WhatsApp out by destination address is not seen either. Sizes are an \
             assumption (the shared 20 ms table): the RTP datagrams in nDPI's capture are mostly \
             47-62 bytes (tests/ndpi/FINDINGS.md §3), below the 88 bytes the STUN framing needs \
             around a 48-byte core. nDPI 4.2 remembers a STUN sub-classification per address and \
             port (FINDINGS §2.7): a box like it that saw a Signal arm first at the same \
             reflector:3478 names this arm SignalVoip.",
        ),
        Platform::Telegram => (
            Framing::TelegramReflector {
                peer_tag: [
                    0xE7, 0x3A, 0x51, 0x9C, 0x02, 0xB8, 0x6F, 0x14, 0xD3, 0x47, 0xA0, 0x5E, 0x8B,
                    0x21, 0xC6, 0x79,
                ],
                sender_tag: 0x5A3C_9E01,
            },
            Some(Preamble::TelegramHello {
                repeat_ms: TELEGRAM_HELLO_REPEAT_MS,
            }),
            vec![599, 1400],
            Some(CONTROL_PORT),
            "Telegram's call reflectors as tgcalls, the call library of current Telegram apps, \
             speaks to them (TelegramMessenger/tgcalls tgcalls/v2/ReflectorPort.cpp). First a \
             40-byte hello (SendReflectorHello): the peer tag's first 12 bytes and the client's \
             own 4-byte tag, twelve 0xFF, FE FF FF FF, the u64 123 — sent before Open until \
             answered and then every 10 s (tgcalls: every 500 ms until answered, then every \
             10 s). Then data packets (SendTo): the 16-byte peer tag, a 4-byte sender tag, the \
             payload length (32-bit big-endian), the payload, zero padding to 4. Tags are drawn \
             fresh for each test. Port 599, tgcalls' default when the server names none \
             (PrepareAddress); the reflector also listens on 1400. tgcalls encrypts what it sends \
             (tests/ndpi/FINDINGS.md §3), so after each probe's fields come high-entropy bytes. \
             nDPI names a UDP flow to or from ports 500-600 whose first datagram is such a hello \
             Telegram (ntop/nDPI src/lib/protocols/telegram.c), and nDPI 4.2 names this arm \
             Telegram (tests/tests/ndpi.rs). No STUN cookie at offset 4, so a STUN rule does not \
             hit the arm. The control arm sends the same sizes and timing as bare probes to UDP \
             40400.",
            "The peer tag's first byte is kept in 0xC0-0xFE and no tag byte is 0xFF (a real tag is \
             any 16 bytes; one holding 0xFF hides the hello from nDPI). Our reflector answers the \
             hello with 40 bytes — the peer tag, twelve 0xFF, libtgvoip's self-info magic and the \
             query id: the start of the 64-byte answer of libtgvoip's test reflector \
             (telegramdesktop/libtgvoip tests/MockReflector.cpp), cut to the hello's length. \
             Telegram's own reflectors' answer is not published (tgcalls checks only the first 12 \
             bytes), so that shape is an assumption. The payload is the probe, not tgcalls' \
             encrypted packets: its fields are in the clear. On 1400, the profile's second port, \
             nDPI does not name the hello Telegram (its rule wants 500-600). Sizes and timing are \
             an assumption (the shared 20 ms table): tgcalls v2 packs 60 ms of Opus per packet \
             (tests/ndpi/FINDINGS.md §3), which the agent's fixed 20 ms voice interval cannot \
             follow. Telegram's reflector addresses are not used.",
        ),
        Platform::Signal => (
            Framing::TurnChannelDataRtp {
                channel: 0x4001,
                payload_type: RINGRTC_OPUS_PAYLOAD_TYPE,
                ssrc: 0x7369_676E,
            },
            Some(Preamble::TurnAllocate {
                realm: "signal.org".into(),
                username_valid_s: SIGNAL_TURN_USERNAME_VALID_S,
            }),
            vec![3478],
            Some(CONTROL_PORT),
            "Signal calls (RingRTC, built on libwebrtc) relayed through Signal's TURN servers on \
             UDP 3478. The arm opens with a TURN Allocate request as a client sends it after the \
             server's 401 (RFC 8656 §7.1), resent before each Open until answered: \
             REQUESTED-TRANSPORT UDP; USERNAME <expiry>:<number>, the form of Signal-Server's TURN \
             credentials, expiring a day ahead (signalapp/Signal-Server \
             service/src/main/java/org/whispersystems/textsecuregcm/auth/TurnTokenGenerator.java); \
             REALM signal.org, the realm of Signal's TURN servers in nDPI's capture (ntop/nDPI \
             tests/cfgs/default/pcap/stun_signal.pcapng); NONCE, MESSAGE-INTEGRITY, FINGERPRINT. \
             Then every packet is a TURN ChannelData message (RFC 8656 §12.4: channel 0x4001, \
             length, padding to 4) carrying RTP v2 with payload type 102, RingRTC's Opus number \
             (signalapp/webrtc ringrtc/rffi/src/peer_connection.cc, OPUS_PT = 102), an SSRC, \
             sequence number and timestamp drawn at random per test (RFC 3550 §5.1), the sequence \
             number +1 on every datagram and the timestamp +960 per 20 ms; after the probe's \
             fields, high-entropy bytes as in SRTP. nDPI names a STUN flow whose REALM holds \
             signal.org SignalVoip (ntop/nDPI src/lib/protocols/stun.c), and nDPI 4.2 names this \
             arm STUN.SignalVoip (tests/tests/ndpi.rs). The control arm sends the same sizes and \
             timing as bare probes to UDP 40400.",
            "Only the relayed path: a call that goes peer to peer sends SRTP straight over UDP \
             between ephemeral ports (the max profile's shape). Only the authenticated Allocate is \
             sent — no first Allocate and 401 before it, no CreatePermission or ChannelBind before \
             channel 0x4001 is used; its MESSAGE-INTEGRITY is random (we hold no key), and our \
             reflector answers with a success response of its own (XOR-RELAYED-ADDRESS and \
             XOR-MAPPED-ADDRESS both the client's address, LIFETIME 600 s, MESSAGE-INTEGRITY, \
             FINGERPRINT), allocating nothing. The RTP header has no header extension (RingRTC's \
             media in nDPI's capture starts 0x90, with one), the probe's fields follow it in the \
             clear, there is no RTCP, and our reflector answers with the same SSRC and channel. \
             Sizes and timing are an assumption (the shared 20 ms table): RingRTC sends Opus in \
             60 ms packets (ptime 60 in signalapp/webrtc ringrtc/rffi/src/peer_connection.cc), \
             which the agent's fixed 20 ms voice interval cannot follow. nDPI 4.2 remembers a \
             STUN sub-classification per address and port (tests/ndpi/FINDINGS.md §2.7): a box \
             like it that saw a WhatsApp arm first at the same reflector:3478 names this arm \
             WhatsAppCall. Signal's TURN addresses are not used.",
        ),
        Platform::Max => (
            Framing::Rtp {
                payload_type: OPUS_PAYLOAD_TYPE,
                ssrc: 0x6D61_7821,
            },
            None,
            vec![50000],
            Some(CONTROL_PORT),
            "Max (VK's messenger), whose press office says its calls use WebRTC and go peer to \
             peer where they can (as quoted by 360.ru; tests/ndpi/FINDINGS.md §2.4). Peer-to-peer \
             WebRTC media is SRTP straight over UDP: an RTP v2 header with payload type 111, \
             libwebrtc's default for Opus (webrtc media/engine/payload_type_mapper.cc), an SSRC, \
             sequence number and timestamp drawn at random per test (RFC 3550 §5.1), the sequence \
             number +1 on every datagram, handshake included, and the timestamp +960 per 20 ms \
             frame; after the probe's fields, high-entropy bytes as an SRTP payload has. The arm \
             sends that shape to UDP 50000, an ordinary ephemeral port inside the 50000-50100 \
             range that August 2025 reports are said to name (no source is cited here), so the \
             same arm shows whether that range is singled out. nDPI 4.2 names the arm RTP \
             (tests/tests/ndpi.rs). The control arm sends the same sizes and timing as bare \
             probes to UDP 40400.",
            "We know of no public description of Max's relays, ports or media dialect: this is the \
             generic WebRTC peer-to-peer shape (an assumption), not Max's own traffic, and a \
             network that spares or singles out Max by its server addresses cannot be seen. No \
             nDPI version has a Max protocol (nor, in 4.2, a VK one; FINDINGS §2.4), so RTP is the \
             most any arm can be classified as. A difference from the control says RTP-shaped \
             traffic or the 50000-50100 range is treated differently, not that Max is. No \
             ICE/STUN checks, DTLS or RTCP; the probe's fields follow the RTP header in the \
             clear; our reflector answers with the same SSRC. Sizes and timing are an assumption \
             (the shared 20 ms table).",
        ),
    };
    Profile {
        platform,
        framing,
        preamble,
        ports,
        control_port,
        voice: voice(),
        video: Some(video()),
        codec: "opus".into(),
        modelled_on: modelled_on.into(),
        limits: limits.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::{
        call_signature, detect, neutral_session_id, CallSignature, Preamble, STUN_MAGIC_COOKIE,
    };
    use crate::probe::{Packet, Probe, Reply};

    /// Both arms' datagrams for packet `seq` of a profile's voice stream, built from real probes.
    fn arms(p: &Profile, shape: &StreamShape, seq: u32) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        let wire = shape.wire_bytes(seq).expect("sizes");
        let core = |role| {
            let len = p.core_len(role, wire).expect("reachable") as u16;
            Packet::Probe(Probe {
                session: neutral_session_id(0xFEED_0000 + u64::from(seq)),
                cookie: [0x33; 16],
                seq,
                sent_us: u64::from(seq) * 20_000,
                len,
            })
            .encode()
        };
        let platform_core = core(Role::Platform);
        let mut platform = Vec::new();
        p.framing.wrap(&platform_core, &mut platform);
        let control_core = if p.control_port.is_some() {
            core(Role::Control)
        } else {
            Vec::new()
        };
        let mut control = Vec::new();
        if let Some(f) = p.framing_for(Role::Control) {
            f.wrap(&control_core, &mut control);
        }
        (platform_core, platform, control_core, control)
    }

    fn shapes(p: &Profile) -> Vec<&StreamShape> {
        std::iter::once(&p.voice).chain(p.video.as_ref()).collect()
    }

    #[test]
    fn one_valid_profile_per_platform() {
        assert_eq!(profiles().len(), Platform::ALL.len());
        for (p, platform) in profiles().iter().zip(Platform::ALL) {
            assert_eq!(p.platform, platform);
            assert_eq!(profile(platform).platform, platform);
            assert_eq!(p.validate(), Ok(()), "{platform}");
            assert_eq!(p.codec, "opus");
            assert!(!p.modelled_on.is_empty() && !p.limits.is_empty());
        }
        assert!(profile(Platform::Generic).control_port.is_none());
        for p in &profiles()[1..] {
            assert_eq!(p.control_port, Some(CONTROL_PORT), "{}", p.platform);
        }
    }

    #[test]
    fn platform_arms_are_detected_as_their_framing() {
        for p in profiles() {
            for shape in shapes(p) {
                for seq in 0..64 {
                    let (core, platform, _, _) = arms(p, shape, seq);
                    let (found, inner) = detect(&platform).expect("detected");
                    assert_eq!(found, p.framing, "{}", p.platform);
                    assert_eq!(inner, &core[..]);
                    assert_eq!(p.framing.unwrap(&platform), Ok(&core[..]));
                    assert_eq!(Some(platform.len()), shape.wire_bytes(seq).map(usize::from));
                }
            }
        }
    }

    #[test]
    fn control_arms_are_raw_signature_free_and_as_long_as_the_platform_arm() {
        for p in profiles().iter().filter(|p| p.control_port.is_some()) {
            for shape in shapes(p) {
                for seq in 0..64 {
                    let (_, platform, core, control) = arms(p, shape, seq);
                    assert_eq!(detect(&control), Some((Framing::Raw, &core[..])));
                    assert_eq!(call_signature(&control), None, "{}", p.platform);
                    assert_eq!(control.len(), platform.len());
                    assert!(matches!(Packet::decode(&control), Ok(Packet::Probe(_))));
                }
            }
        }
    }

    #[test]
    fn replies_are_framed_like_probes_and_no_longer() {
        for p in profiles() {
            let (core, platform, _, _) = arms(p, &p.voice, 3);
            let (framing, _) = detect(&platform).expect("detected");
            let reply = Packet::Reply(Reply {
                session: 1,
                seq: 3,
                sent_us: 60_000,
                reflector_rx_us: 1,
                reflector_tx_us: 2,
                reflector_received: 4,
                reflector_drops: 0,
                len: core.len() as u16,
            })
            .encode();
            let mut answer = Vec::new();
            framing.wrap(&reply, &mut answer);
            assert_eq!(answer.len(), platform.len(), "{}", p.platform);
        }
    }

    #[test]
    fn control_ports_avoid_the_reported_dpi_ports() {
        for p in profiles() {
            if let Some(port) = p.control_port {
                assert!(!in_reported_dpi_ports(port));
                assert!(!p.ports.contains(&port));
            }
        }
        assert!(in_reported_dpi_ports(3478) && in_reported_dpi_ports(599));
        assert!(in_reported_dpi_ports(1400) && in_reported_dpi_ports(50000));
        assert!(!in_reported_dpi_ports(CONTROL_PORT));
        let mut bad = profile(Platform::Whatsapp).clone();
        bad.control_port = Some(50050);
        assert!(matches!(bad.validate(), Err(ProfileError::Invalid { .. })));
    }

    #[test]
    fn platform_ports_are_the_documented_ones() {
        assert_eq!(profile(Platform::Whatsapp).ports, [3478]);
        assert_eq!(profile(Platform::Telegram).ports, [599, 1400]);
        assert_eq!(profile(Platform::Signal).ports, [3478]);
        assert_eq!(profile(Platform::Max).ports, [50000]);
        for platform in [Platform::Whatsapp, Platform::Telegram, Platform::Signal] {
            assert!(profile(platform)
                .ports
                .iter()
                .all(|&p| in_reported_dpi_ports(p)));
        }
        assert_eq!(reflector_ports(), [599, 1400, 3478, 40400, 40401, 50000]);
    }

    #[test]
    fn stun_cookie_hits_whatsapp_platform_arm_only() {
        let cookie = STUN_MAGIC_COOKIE.to_be_bytes();
        let wa = profile(Platform::Whatsapp);
        for seq in 0..64 {
            let (_, platform, _, control) = arms(wa, &wa.voice, seq);
            assert_eq!(&platform[4..8], &cookie);
            assert_ne!(&control[4..8], &cookie);
        }
        // Telegram's platform arm does not carry the cookie at offset 4: a STUN-cookie rule hits
        // WhatsApp but not Telegram.
        let tg = profile(Platform::Telegram);
        for shape in shapes(tg) {
            for seq in 0..64 {
                let (_, platform, _, _) = arms(tg, shape, seq);
                assert_ne!(&platform[4..8], &cookie);
                assert_ne!(call_signature(&platform), Some(CallSignature::StunCookie));
            }
        }
    }

    #[test]
    fn signatures_by_platform() {
        let sig = |platform| {
            let p = profile(platform);
            call_signature(&arms(p, &p.voice, 0).1)
        };
        assert_eq!(sig(Platform::Whatsapp), Some(CallSignature::StunCookie));
        assert_eq!(sig(Platform::Signal), Some(CallSignature::TurnChannelData));
        assert_eq!(sig(Platform::Max), Some(CallSignature::RtpOrRtcp));
        assert_eq!(sig(Platform::Generic), Some(CallSignature::RtpOrRtcp));
        assert_eq!(sig(Platform::Telegram), None);
    }

    #[test]
    fn size_draws_follow_the_weights_and_the_arms_agree() {
        let shape = voice();
        let mut counts = std::collections::BTreeMap::new();
        for seq in 0..10_000 {
            *counts.entry(shape.wire_bytes(seq).unwrap()).or_insert(0u32) += 1;
        }
        // Weights 1:3:4:2 of 10 000 draws, within a generous margin.
        for (bytes, want) in [(88, 1000), (104, 3000), (120, 4000), (136, 2000)] {
            let got = counts[&bytes];
            assert!(got.abs_diff(want) < 300, "{bytes}: {got}");
        }
        assert!((shape.mean_wire_bytes() - 115.2).abs() < 1e-9);
        let empty = StreamShape {
            interval_ms: 20,
            sizes: vec![],
        };
        assert_eq!(empty.wire_bytes(1), None);
        assert_eq!(empty.mean_wire_bytes(), 0.0);
    }

    #[test]
    fn voice_and_video_timing() {
        for p in profiles() {
            assert_eq!(p.voice.interval_ms, 20);
            let video = p.video.as_ref().expect("video variant");
            assert_eq!(video.interval_ms, 5);
            assert!(video.mean_wire_bytes() >= 1000.0);
        }
    }

    #[test]
    fn roles_map_to_framings_and_ports() {
        let wa = profile(Platform::Whatsapp);
        assert_eq!(wa.framing_for(Role::Control), Some(&Framing::Raw));
        assert_eq!(wa.port_for(Role::Control), Some(CONTROL_PORT));
        assert_eq!(wa.port_for(Role::Platform), Some(3478));
        assert_eq!(wa.framing_for(Role::Relay), None);
        let generic = profile(Platform::Generic);
        assert_eq!(generic.framing_for(Role::Control), None);
        assert_eq!(generic.port_for(Role::Control), None);
        assert_eq!(generic.core_len(Role::Platform, 100), Some(88));
    }

    #[test]
    fn unreachable_sizes_are_refused() {
        let mut p = profile(Platform::Whatsapp).clone();
        p.voice.sizes.push(SizeShare {
            wire_bytes: 86, // not a multiple of 4: STUN cannot reach it
            weight: 1,
        });
        assert!(matches!(p.validate(), Err(ProfileError::Invalid { .. })));
        let mut p = profile(Platform::Generic).clone();
        p.voice.sizes = vec![SizeShare {
            wire_bytes: 40, // core of 28 bytes: below MIN_PROBE_LEN
            weight: 1,
        }];
        assert!(p.validate().is_err());
        let mut p = profile(Platform::Telegram).clone();
        p.framing = Framing::TelegramReflector {
            peer_tag: [0; 16],
            sender_tag: 1,
        };
        assert!(matches!(p.validate(), Err(ProfileError::Framing { .. })));
    }

    #[test]
    fn profiles_round_trip_through_json() {
        for p in profiles() {
            let json = serde_json::to_string(p).unwrap();
            let back: Profile = serde_json::from_str(&json).unwrap();
            assert_eq!(&back, p);
        }
        // A profile file written before preambles existed reads as one without.
        let mut json = serde_json::to_value(profile(Platform::Max)).unwrap();
        json.as_object_mut().unwrap().remove("preamble");
        let back: Profile = serde_json::from_value(json).unwrap();
        assert_eq!(&back, profile(Platform::Max));
    }

    #[test]
    fn preambles_open_the_telegram_and_signal_arms_only() {
        assert_eq!(
            profile(Platform::Telegram).preamble,
            Some(Preamble::TelegramHello { repeat_ms: 10_000 })
        );
        let signal = profile(Platform::Signal);
        let Some(Preamble::TurnAllocate { realm, .. }) = &signal.preamble else {
            panic!("signal opens with a TURN Allocate")
        };
        assert_eq!(realm, "signal.org");
        assert_eq!(
            signal.framing,
            Framing::TurnChannelDataRtp {
                channel: 0x4001,
                payload_type: 102,
                ssrc: 0x7369_676E
            }
        );
        for platform in [Platform::Whatsapp, Platform::Max, Platform::Generic] {
            assert_eq!(profile(platform).preamble, None, "{platform}");
        }
        // The hello goes with a Telegram framing only.
        let mut bad = profile(Platform::Whatsapp).clone();
        bad.preamble = profile(Platform::Telegram).preamble.clone();
        assert!(matches!(bad.validate(), Err(ProfileError::Invalid { .. })));
        let mut bad = profile(Platform::Signal).clone();
        bad.preamble = Some(Preamble::TurnAllocate {
            realm: String::new(),
            username_valid_s: 1,
        });
        assert!(matches!(bad.validate(), Err(ProfileError::Framing { .. })));
        // Per test: a fresh tag, shared by the hello and the data packets.
        let tg = profile(Platform::Telegram);
        let (a, b) = (tg.framing.for_test(1), tg.framing.for_test(2));
        assert_ne!(a, b);
        let hello = tg.preamble.as_ref().unwrap().datagram(&a, 1, 0).unwrap();
        let mut data = Vec::new();
        a.wrap(&arms(tg, &tg.voice, 0).0, &mut data);
        assert_eq!(&hello[..12], &data[..12]);
        assert_eq!(
            &hello[12..16],
            &data[16..20],
            "the hello ends in the sender's tag"
        );
    }

    #[test]
    fn every_statement_names_a_source_or_says_it_is_an_assumption() {
        for p in profiles() {
            assert!(
                p.modelled_on.contains('/'),
                "{}: no source path",
                p.platform
            );
            assert!(p.limits.contains("assumption"), "{}", p.platform);
        }
    }

    #[test]
    fn endpoints_serve_what_is_bound_and_say_why_not() {
        // Every profile's port bound: every platform served at its own ports.
        let all = Endpoints::from_ports(&reflector_ports(), &[]);
        assert!(all.unavailable.is_empty(), "{all:?}");
        assert_eq!(all.served.len(), Platform::ALL.len());
        let wa = all.get(Platform::Whatsapp).unwrap();
        assert_eq!(
            (wa.platform_port, wa.control_port),
            (3478, Some(CONTROL_PORT))
        );
        assert_eq!(all.get(Platform::Telegram).unwrap().platform_port, 599);
        assert_eq!(all.get(Platform::Generic).unwrap().platform_port, 40401);
        assert_eq!(all.get(Platform::Generic).unwrap().control_port, None);
        assert_eq!(all, Endpoints::assumed());
        assert_eq!(all.check(), Ok(()));

        // 599 refused (no CAP_NET_BIND_SERVICE): Telegram falls back to its other port, 1400.
        let bound: Vec<u16> = reflector_ports()
            .into_iter()
            .filter(|p| *p != 599)
            .collect();
        let e = Endpoints::from_ports(&bound, &[(599, "permission denied".into())]);
        assert_eq!(e.get(Platform::Telegram).unwrap().platform_port, 1400);

        // 3478 taken: WhatsApp and Signal (both on 3478 alone) are unavailable, with the reason.
        let bound: Vec<u16> = reflector_ports()
            .into_iter()
            .filter(|p| *p != 3478)
            .collect();
        let e = Endpoints::from_ports(&bound, &[(3478, "address in use".into())]);
        for p in [Platform::Whatsapp, Platform::Signal] {
            let why = e.get(p).unwrap_err();
            assert_eq!(
                why, "UDP port 3478 could not be bound: address in use",
                "{p}"
            );
        }
        assert!(e.get(Platform::Max).is_ok());

        // No control port: no two-arm platform, however its own port stands.
        let bound: Vec<u16> = reflector_ports()
            .into_iter()
            .filter(|p| *p != CONTROL_PORT)
            .collect();
        let e = Endpoints::from_ports(&bound, &[]);
        assert_eq!(e.served.len(), 1, "{e:?}");
        assert_eq!(
            e.get(Platform::Max).unwrap_err(),
            "the reflector does not listen on UDP port 40400"
        );

        // A reflector on 3479 alone serves generic tests there, nothing else.
        let e = Endpoints::from_ports(&[3479], &[]);
        assert_eq!(e.get(Platform::Generic).unwrap().platform_port, 3479);
        assert_eq!(e.served.len(), 1);
        assert_eq!(e.unavailable.len(), Platform::ALL.len() - 1);
        // Nothing bound that no profile uses, and not 40401: generic is unavailable too.
        let e = Endpoints::from_ports(&[3478], &[]);
        assert!(e.served.is_empty(), "{e:?}");
    }

    #[test]
    fn endpoints_from_a_collector_are_checked() {
        let mut e = Endpoints::assumed();
        e.served[1].control_port = Some(0);
        assert!(e.check().unwrap_err().contains("port 0"));
        let mut e = Endpoints::assumed();
        let twice = e.served[0].clone();
        e.served.push(twice);
        assert_eq!(e.check().unwrap_err(), "a platform listed twice");
        let mut e = Endpoints::assumed();
        e.unavailable.push(Unavailable {
            platform: Platform::Max,
            reason: "x".repeat(MAX_REASON_LEN + 1),
        });
        assert!(e.check().is_err());
        let e = Endpoints {
            served: vec![e.served[0].clone(); MAX_ENDPOINTS + 1],
            unavailable: vec![],
        };
        assert!(e.check().unwrap_err().contains("entries"));
    }
}
