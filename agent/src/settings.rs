//! What every call test is, as the volunteer gave it: the `test` command's flags, or the
//! config's keys ([`crate::config::Config::test`]). [`TestSettings::spec`] is the one builder of
//! an [`engine::TestSpec`](crate::engine::TestSpec) from them; both `test` and `run` use it.
//!
//! The doc comments below are the `test` command's `--help` as well.

use crate::engine::TestSpec;
use anyhow::{Context, Result};
use callwatch_proto::seal::ReflectorKey;
use callwatch_proto::Platform;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Test length when none is given (the `--duration` flag, the `duration_secs` key): 15 s, the
/// length the verdict's windows and thresholds are chosen for (see `verdict`, its parameters).
pub const DEFAULT_DURATION_SECS: u32 = 15;
/// Interval between probes when none is given (`--interval-ms`, `interval_ms`).
pub const DEFAULT_INTERVAL_MS: u16 = 20;

/// The settings of a call test that do not change from one test to the next.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct TestSettings {
    /// Reflector UDP address, host:port.
    #[arg(long, value_name = "HOST:PORT")]
    pub reflector: String,
    /// Reflector port for the platform arm (default: the platform's own, e.g. 3478).
    #[arg(long = "platform-port", value_name = "PORT")]
    pub platform_port: Option<u16>,
    /// Reflector port for the control arm (default: 40400).
    #[arg(long = "control-port", value_name = "PORT")]
    pub control_port: Option<u16>,
    /// Send the profile's video-like stream (1000-1200 B every 5 ms, ~1.8 Mbit/s per arm)
    /// instead of voice.
    #[arg(long)]
    pub video: bool,
    /// The neutral STUN server the relay is judged against (default: the reflector host).
    #[arg(long = "relay-reference", value_name = "HOST:PORT", requires = "relay")]
    pub relay_reference: Option<String>,
    /// Test length in seconds (1..=120). A verdict needs at least 12 s of both arms.
    #[arg(long = "duration", default_value_t = DEFAULT_DURATION_SECS, value_name = "SECS")]
    pub duration_secs: u32,
    /// Interval between packets (5..=1000).
    #[arg(long = "interval-ms", default_value_t = DEFAULT_INTERVAL_MS, value_name = "MS")]
    pub interval_ms: u16,
    /// Every packet this long on the wire, UDP payload (48..=1400). Default: the platform
    /// profile's Opus-like sizes (generic: 172 bytes).
    #[arg(long, value_name = "BYTES")]
    pub size: Option<u16>,
    /// Local address to send from.
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<IpAddr>,
    /// The reflector's key (64 hex digits, its reflector.pub): seals the platform arm's
    /// probes so that a DPI box cannot tell them from the platform's payload.
    #[arg(long = "reflector-key", value_name = "HEX")]
    pub reflector_key: Option<ReflectorKey>,
}

impl TestSettings {
    /// Voice tests of the default length and interval against `reflector`, nothing else set.
    pub fn new(reflector: String) -> Self {
        TestSettings {
            reflector,
            platform_port: None,
            control_port: None,
            video: false,
            relay_reference: None,
            duration_secs: DEFAULT_DURATION_SECS,
            interval_ms: DEFAULT_INTERVAL_MS,
            size: None,
            bind: None,
            reflector_key: None,
        }
    }

    /// The test of `platform` these settings describe, with a relay arm asking `relay`
    /// (`host:port`) when one is given. Names are resolved now; the numbers are checked when
    /// the test starts (`CallTest::new`), once.
    pub fn spec(&self, platform: Platform, relay: Option<&str>) -> Result<TestSpec> {
        let reflector = resolve("reflector", &self.reflector)?;
        let relay_server = relay.map(|r| resolve("relay", r)).transpose()?;
        let relay_reference = self
            .relay_reference
            .as_deref()
            .map(|r| resolve("relay reference", r))
            .transpose()?;
        Ok(TestSpec {
            platform,
            interval_ms: self.interval_ms,
            size: self.size,
            bind: self.bind,
            platform_port: self.platform_port,
            control_port: self.control_port,
            relay_server,
            relay_reference,
            video: self.video,
            reflector_key: self.reflector_key,
            ..TestSpec::voice(reflector, self.duration_secs.saturating_mul(1000))
        })
    }
}

/// The first address `addr` (`host:port`) resolves to; errors name `what` and `addr`.
pub fn resolve(what: &str, addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolving {what} address {addr}"))?
        .next()
        .with_context(|| format!("{what} address {addr} resolves to nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_reaches_the_spec() {
        let key: ReflectorKey = "cd".repeat(32).parse().unwrap();
        let settings = TestSettings {
            platform_port: Some(3478),
            control_port: Some(40401),
            video: true,
            relay_reference: Some("127.0.0.1:3479".into()),
            duration_secs: 7,
            interval_ms: 30,
            size: Some(200),
            bind: Some("127.0.0.1".parse().unwrap()),
            reflector_key: Some(key),
            ..TestSettings::new("127.0.0.1:40400".into())
        };
        let spec = settings
            .spec(Platform::Whatsapp, Some("127.0.0.2:3478"))
            .unwrap();
        assert_eq!(
            spec,
            TestSpec {
                reflector: "127.0.0.1:40400".parse().unwrap(),
                platform: Platform::Whatsapp,
                duration_ms: 7000,
                interval_ms: 30,
                size: Some(200),
                video: true,
                platform_port: Some(3478),
                control_port: Some(40401),
                bind: Some("127.0.0.1".parse().unwrap()),
                grace_ms: 1000,
                relay_server: Some("127.0.0.2:3478".parse().unwrap()),
                relay_reference: Some("127.0.0.1:3479".parse().unwrap()),
                reached_before: false,
                reflector_key: Some(key),
            }
        );
        // Unset: the profile's sizes, no relay.
        let plain = TestSettings::new("127.0.0.1:40400".into())
            .spec(Platform::Generic, None)
            .unwrap();
        assert_eq!(plain.size, None);
        assert_eq!(plain.relay_server, None);
        assert_eq!(plain.duration_ms, 15_000);
        let e = TestSettings::new("nohost".into())
            .spec(Platform::Generic, None)
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("reflector address nohost"),
            "{e:#}"
        );
    }
}
