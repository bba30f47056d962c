//! The call-test engine: runs a test's streams against a reflector and turns what happened into
//! a [`CallReport`].
//!
//! [`session`] is the sans-IO state machine of one stream; [`driver`] runs sessions over real
//! sockets with precise pacing; the figures come from [`crate::metrics`].

pub mod driver;
pub mod session;
pub mod stun;

use crate::metrics::{stream_report, Codec, StreamRecord};
use crate::verdict::{judge, samples_of, VerdictConfig};
use callwatch_proto::framing::{neutral_session_id, Framing};
use callwatch_proto::profile::profile;
use callwatch_proto::report::SCHEMA_VERSION;
use callwatch_proto::{CallReport, Platform, ReportId, Role, Verdict};
use chrono::Utc;
use driver::{Arm, Cancel};
use session::{ArmSession, Progress, Session, SessionConfig, SessionError, WireSizes};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Instant;
use stun::{StunConfig, StunSession};

pub const AGENT_VERSION: &str = concat!("callwatch-agent/", env!("CARGO_PKG_VERSION"));

/// One call test to run.
#[derive(Clone, Debug, PartialEq)]
pub struct TestSpec {
    /// The reflector. For `generic` this address is tested as is; for a platform its host is
    /// used with the profile's ports (or the overrides below).
    pub reflector: SocketAddr,
    pub platform: Platform,
    pub duration_ms: u32,
    pub interval_ms: u16,
    /// Every probe this long on the wire (UDP payload, framing included), 48..=1400; `None`:
    /// the platform profile's size table (generic: 172 bytes, a 20 ms Opus frame).
    pub size: Option<u16>,
    /// Send the profile's video-like stream (its sizes and interval) instead of voice.
    pub video: bool,
    /// Reflector port for the platform arm instead of the profile's.
    pub platform_port: Option<u16>,
    /// Reflector port for the control arm instead of the profile's neutral one.
    pub control_port: Option<u16>,
    /// Local address to send from (default: any address of the reflector's family).
    pub bind: Option<IpAddr>,
    /// How long to wait for replies after the last probe.
    pub grace_ms: u32,
    /// A STUN/TURN server of the platform's own, measured as a third stream (role `relay`).
    pub relay_server: Option<SocketAddr>,
}

impl TestSpec {
    /// A 20 ms Opus-sized (172-byte) generic test of `duration_ms`.
    pub fn voice(reflector: SocketAddr, duration_ms: u32) -> Self {
        TestSpec {
            reflector,
            platform: Platform::Generic,
            duration_ms,
            interval_ms: 20,
            size: Some(172),
            video: false,
            platform_port: None,
            control_port: None,
            bind: None,
            grace_ms: 1000,
            relay_server: None,
        }
    }

    /// Checks the numbers before any packet leaves.
    pub fn validate(&self) -> Result<(), TestError> {
        use callwatch_proto::probe::{MAX_PROBE_LEN, MIN_PROBE_LEN};
        let bad = |m: String| Err(TestError::BadSpec(m));
        if let Some(size) = self.size {
            if !(MIN_PROBE_LEN..=MAX_PROBE_LEN).contains(&(size as usize)) {
                return bad(format!(
                    "size {size} bytes is outside {MIN_PROBE_LEN}..={MAX_PROBE_LEN}"
                ));
            }
            let framing = &profile(self.platform).framing;
            let core = session::core_len_at_most(framing, size);
            if framing.wire_len(usize::from(core)) + 3 < usize::from(size) {
                return bad(format!(
                    "size {size} bytes is too small for the {} framing",
                    framing.name()
                ));
            }
        }
        if !(5..=1000).contains(&self.interval_ms) {
            return bad(format!(
                "interval {} ms is outside 5..=1000",
                self.interval_ms
            ));
        }
        if self.duration_ms < self.interval_ms as u32 || self.duration_ms > 120_000 {
            return bad(format!(
                "duration {} ms must be at least one interval and at most 120 s",
                self.duration_ms
            ));
        }
        Ok(())
    }

    /// What this test will cost in data, both directions of every arm (platform, control,
    /// relay), IP and UDP headers included, sized by its largest probe: an upper estimate
    /// for the data budget.
    pub fn estimated_bytes(&self) -> u64 {
        let arms = self.arms().len() as u32 + u32::from(self.relay_server.is_some());
        let header = if self.reflector.is_ipv4() {
            crate::budget::IPV4_UDP_HEADER_BYTES
        } else {
            crate::budget::IPV6_UDP_HEADER_BYTES
        };
        crate::budget::estimate_test_bytes_with_headers(
            arms,
            u32::from(self.wire_sizes().max()),
            header,
            u32::from(self.interval()),
            self.duration_ms,
        )
    }

    /// The sizes every arm sends: the same on the wire on each arm.
    fn wire_sizes(&self) -> WireSizes {
        let p = profile(self.platform);
        match (self.size, self.video.then_some(p.video.as_ref()).flatten()) {
            (Some(n), _) => WireSizes::Fixed(n),
            (None, Some(video)) => WireSizes::Shape(video.clone()),
            (None, None) if self.platform == Platform::Generic => WireSizes::Fixed(172),
            (None, None) => WireSizes::Shape(p.voice.clone()),
        }
    }

    /// The interval between probes: the video shape's when testing video, else `interval_ms`.
    fn interval(&self) -> u16 {
        match profile(self.platform).video.as_ref() {
            Some(v) if self.video => v.interval_ms,
            _ => self.interval_ms,
        }
    }

    /// (role, framing, reflector address) of each reflector arm.
    fn arms(&self) -> Vec<(Role, Framing, SocketAddr)> {
        let p = profile(self.platform);
        if self.platform == Platform::Generic {
            return vec![(Role::Platform, p.framing.clone(), self.reflector)];
        }
        let ip = self.reflector.ip();
        let mut arms = vec![(
            Role::Platform,
            p.framing.clone(),
            SocketAddr::new(
                ip,
                self.platform_port
                    .or(p.port_for(Role::Platform))
                    .unwrap_or(self.reflector.port()),
            ),
        )];
        if let Some(port) = self.control_port.or(p.port_for(Role::Control)) {
            arms.push((Role::Control, Framing::Raw, SocketAddr::new(ip, port)));
        }
        arms
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("invalid test: {0}")]
    BadSpec(String),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Session(#[from] SessionError),
    #[error("the test was cancelled")]
    Cancelled,
}

fn bind_socket(bind: Option<IpAddr>, peer: SocketAddr) -> std::io::Result<UdpSocket> {
    let local = bind.unwrap_or(match peer {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))?;
    socket.connect(peer)?;
    Ok(socket)
}

/// The verdict of a test whose records include a platform and a control arm; `(None, None)`
/// without a control arm (a generic test).
pub fn verdict_of(
    records: &[(Role, StreamRecord)],
) -> (Option<Verdict>, Option<callwatch_proto::VerdictDetail>) {
    let arm = |role| records.iter().find(|(r, _)| *r == role).map(|(_, rec)| rec);
    match (arm(Role::Platform), arm(Role::Control)) {
        (Some(p), Some(c)) => {
            let (v, d) = judge(&samples_of(p), &samples_of(c), &VerdictConfig::default());
            (Some(v), Some(d))
        }
        _ => (None, None),
    }
}

/// Runs one call test to completion (blocking; seconds long) and returns its unsigned report.
pub fn run_call_test(
    spec: &TestSpec,
    cancel: &Cancel,
    on_progress: impl FnMut(&[Progress]),
) -> Result<CallReport, TestError> {
    spec.validate()?;
    let started_at = Utc::now();
    let epoch = Instant::now();
    let cfg = SessionConfig {
        interval_ms: spec.interval(),
        size: spec.wire_sizes().max(),
        duration_ms: spec.duration_ms,
        grace_ms: spec.grace_ms,
    };
    let sizes = spec.wire_sizes();
    let mut arms = Vec::new();
    for (role, framing, addr) in spec.arms() {
        // Every arm's session id keeps its bare packets free of a STUN look-alike header.
        let id = neutral_session_id(rand::random());
        let session = Session::new(id, cfg, 0).with_framing(framing, sizes.clone());
        arms.push((
            role,
            Arm {
                session: Box::new(session) as Box<dyn ArmSession>,
                socket: bind_socket(spec.bind, addr)?,
            },
        ));
    }
    if let Some(server) = spec.relay_server {
        let stun = StunSession::new(
            StunConfig {
                interval_ms: spec.interval(),
                duration_ms: spec.duration_ms,
                grace_ms: spec.grace_ms,
            },
            rand::random(),
        );
        arms.push((
            Role::Relay,
            Arm {
                session: Box::new(stun),
                socket: bind_socket(spec.bind, server)?,
            },
        ));
    }
    let (roles, arms): (Vec<Role>, Vec<Arm>) = arms.into_iter().unzip();
    let results = driver::run(arms, epoch, cancel, on_progress)?;
    if cancel.is_cancelled() {
        return Err(TestError::Cancelled);
    }
    let mut streams = Vec::new();
    let mut records = Vec::new();
    for (role, result) in roles.into_iter().zip(results) {
        let record = result?;
        let mut stream = stream_report(role, &record, Codec::Opus);
        if role == Role::Relay {
            // A STUN server gives no timestamps: one-way figures would be invented.
            stream.owd_ms = None;
            stream.jitter_ms = None;
            stream.ipdv_ms = None;
        }
        streams.push(stream);
        records.push((role, record));
    }
    let (verdict, verdict_detail) = verdict_of(&records);
    Ok(CallReport {
        schema: SCHEMA_VERSION,
        id: ReportId(rand::random()),
        agent_version: AGENT_VERSION.to_string(),
        platform: spec.platform,
        started_at,
        duration_ms: spec.duration_ms,
        interval_ms: spec.interval() as u32,
        payload_bytes: spec.wire_sizes().max() as u32,
        verdict,
        verdict_detail,
        streams,
    })
}
