//! The call-test engine: runs a test's streams against a reflector and turns what happened into
//! a [`CallReport`].
//!
//! [`call`] is the whole test as one sans-IO state machine (every arm, the count exchange, the
//! report and the verdict); [`session`] and [`stun`] are the state machines of one stream;
//! [`driver`] runs a [`call::CallTest`] over real sockets with precise pacing; the figures come
//! from [`crate::metrics`].

pub mod call;
pub mod driver;
pub mod session;
pub mod stun;

use call::{CallRandom, CallTest};
use callwatch_proto::framing::Framing;
use callwatch_proto::profile::profile;
use callwatch_proto::seal::ReflectorKey;
use callwatch_proto::{CallReport, Platform, Role};
use chrono::Utc;
use driver::Cancel;
use session::{Progress, SessionError, WireSizes};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Instant;

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
    /// A STUN/TURN server of the platform's own, measured with a few STUN Binding requests
    /// (role `relay`) beside the same requests to the reflector host (role `relay-reference`).
    pub relay_server: Option<SocketAddr>,
    /// The neutral STUN server the relay is judged against (an operator's coturn, say);
    /// default: the reflector host, on the control arm's port (the reflector's for `generic`).
    pub relay_reference: Option<SocketAddr>,
    /// Whether this reflector has answered this agent before. A test in which nothing answers
    /// is then a finding (a report, verdict `inconclusive`); otherwise it is a local error that
    /// names the address (a typo, a stopped reflector, a firewall at home).
    pub reached_before: bool,
    /// The reflector's sealing key (`reflector_key` in the config): with it the platform arm's
    /// cores are sealed, so a DPI box cannot tell its probes from the platform's payload;
    /// without it they travel bare (and the report says `probes_sealed: false`).
    pub reflector_key: Option<ReflectorKey>,
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
            relay_reference: None,
            reached_before: false,
            reflector_key: None,
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

    /// Where the relay's reference STUN requests go: the reflector host.
    fn relay_reference(&self) -> SocketAddr {
        if let Some(addr) = self.relay_reference {
            return addr;
        }
        let port = self
            .control_port
            .or(profile(self.platform).port_for(Role::Control))
            .unwrap_or(self.reflector.port());
        SocketAddr::new(self.reflector.ip(), port)
    }

    /// Where each reflector arm's probes go, as "platform 192.0.2.1:3478, control
    /// 192.0.2.1:40400": what a log line or an error names, never just the configured address.
    pub fn arm_addresses(&self) -> String {
        self.arms()
            .iter()
            .map(|(role, _, addr)| format!("{role} {addr}"))
            .collect::<Vec<_>>()
            .join(", ")
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
    #[error("nothing answered at {0}: no arm's handshake was answered (is the reflector running at that address, and is UDP to it allowed?)")]
    Unreachable(SocketAddr),
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

/// Runs one call test to completion (blocking; seconds long) and returns its unsigned report.
pub fn run_call_test(
    spec: &TestSpec,
    cancel: &Cancel,
    on_progress: impl FnMut(&[Progress]),
) -> Result<CallReport, TestError> {
    let epoch = Instant::now();
    let test = CallTest::new(
        spec,
        CallRandom::draw(&mut rand::thread_rng()),
        Utc::now(),
        0,
    )?;
    let sockets = test
        .arms()
        .iter()
        .map(|arm| bind_socket(spec.bind, arm.peer))
        .collect::<Result<Vec<_>, _>>()?;
    let test = driver::run(test, sockets, epoch, cancel, on_progress)?;
    if cancel.is_cancelled() {
        return Err(TestError::Cancelled);
    }
    test.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_platform_test_names_where_each_arm_goes_not_the_configured_port() {
        let mut spec = TestSpec::voice("192.0.2.1:3479".parse().unwrap(), 15_000);
        assert_eq!(spec.arm_addresses(), "platform 192.0.2.1:3479");
        spec.platform = Platform::Whatsapp;
        let p = profile(Platform::Whatsapp);
        let (platform, control) = (
            p.port_for(Role::Platform).unwrap(),
            p.port_for(Role::Control).unwrap(),
        );
        assert_eq!(
            spec.arm_addresses(),
            format!("platform 192.0.2.1:{platform}, control 192.0.2.1:{control}")
        );
        assert_ne!(
            platform, 3479,
            "the configured port is not where the platform arm goes"
        );
    }
}
