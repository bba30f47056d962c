//! The agent's TOML configuration: what to test, where to upload, and where to keep things.
//!
//! Every mistake is reported with its key, all at once, before anything runs.

use callwatch_proto::seal::ReflectorKey;
use callwatch_proto::Platform;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::budget::BudgetConfig;
use crate::schedule::{ScheduleConfig, MAX_INTERVAL, MIN_INTERVAL};
use chrono::NaiveTime;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Collector QUIC address, `host:port`.
    pub collector: String,
    /// Collector TLS-over-TCP address, `host:port`, the fallback when QUIC does not get through;
    /// unset: the same host and port as `collector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector_tcp: Option<String>,
    /// SHA-256 fingerprint of the collector's certificate (64 hex digits).
    pub collector_pin: String,
    /// The collector's carry-out key (64 hex digits, its `collector.seal.pub`), which
    /// `export-queue` seals files to; unset: the key the collector sent over the pinned upload
    /// channel (kept in the state file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector_seal_key: Option<String>,
    /// TLS server name (SNI) to present; unset: the collector's host name (none for an
    /// address). Only the pin is checked. The old default `callwatch-collector` counts as unset.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_name: String,
    /// Reflector UDP address, `host:port`.
    pub reflector: String,
    /// The reflector's key (64 hex digits, its `reflector.pub`): seals the platform arm's probes
    /// so that a DPI box cannot tell them from the platform's payload. Unset: they travel bare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reflector_key: Option<String>,
    /// Platforms to test, in turn.
    #[serde(default = "default_platforms")]
    pub platforms: Vec<Platform>,
    /// Length of one test.
    #[serde(default = "default_duration_secs")]
    pub duration_secs: u32,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u16,
    /// Every probe this long on the wire (UDP payload); unset: the platform profile's sizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u16>,
    /// STUN/TURN servers of each platform's own, measured as a third stream (role `relay`);
    /// the first listed for a platform is used. E.g. `[relay_servers] whatsapp = ["host:3478"]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub relay_servers: BTreeMap<Platform, Vec<String>>,
    /// The neutral STUN server the relays are judged against; unset: the reflector host (which
    /// answers STUN Binding requests). E.g. `relay_reference = "stun.example.org:3478"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_reference: Option<String>,
    /// Test with each profile's video-like stream (about 1.8 Mbit/s) instead of voice.
    #[serde(default)]
    pub video: bool,
    /// Reflector port for platform arms instead of each profile's own (e.g. 3478).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_port: Option<u16>,
    /// Reflector port for control arms instead of the neutral 40400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_port: Option<u16>,
    /// Local address to test and upload from (default: chosen by the system).
    #[serde(default)]
    pub bind: Option<IpAddr>,
    /// Signing key file; relative paths are relative to the config file.
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// Folder of the store-and-forward queue; relative to the config file.
    #[serde(default = "default_queue_dir")]
    pub queue_dir: PathBuf,
    /// Reports per upload batch.
    #[serde(default = "default_upload_batch")]
    pub upload_batch: usize,
    /// Most reports kept waiting for upload; beyond it the oldest are dropped (and counted).
    #[serde(default = "default_queue_cap")]
    pub queue_cap: usize,
    /// Where the agent records what it did, for `status`; relative to the config file.
    #[serde(default = "default_state_file")]
    pub state_file: PathBuf,
    /// Mean time between test starts, e.g. `"15m"` (1 minute to 7 days).
    #[serde(default = "default_interval")]
    pub interval: String,
    /// Random jitter of each gap as a fraction of `interval`, 0..=1.
    #[serde(default = "default_spread")]
    pub spread: f64,
    /// Local wall-clock hours with no tests, `"HH:MM-HH:MM"` (may wrap midnight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<String>,
    /// The volunteer's offset from UTC for `quiet_hours`, `"+03:00"` / `"-05:30"`.
    #[serde(default = "default_utc_offset")]
    pub utc_offset: String,
    /// Most data tests may use per UTC day, e.g. `"50MB"`; unset: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_per_day: Option<String>,
    /// Most data tests may use per UTC month, e.g. `"1GB"`; unset: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_per_month: Option<String>,
    /// Log level: error, warn, info, debug or trace (`RUST_LOG` overrides).
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Replace the signing key with a new one when it is older than this, e.g. `"30d"`;
    /// unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_key_every: Option<String>,
}

fn default_interval() -> String {
    "15m".into()
}
fn default_spread() -> f64 {
    0.5
}
fn default_utc_offset() -> String {
    "+00:00".into()
}
fn default_log_level() -> String {
    "info".into()
}

/// Parses a duration such as `"90s"`, `"15m"`, `"6h"`, `"30d"`, `"2w"` (one number, one unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| "expected a number and a unit (s, m, h, d, w), e.g. \"15m\"".to_string())?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a whole number before the unit, e.g. \"15m\"".to_string())?;
    let scale = match unit.trim() {
        "s" | "sec" | "secs" => 1,
        "m" | "min" | "mins" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 7 * 86_400,
        other => return Err(format!("unknown unit {other:?}: use s, m, h, d or w")),
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| "too long".to_string())
}

/// Parses a byte count such as `"50MB"`, `"1.5 GB"`, `"1GiB"`, `"500kB"` or `"200000"`
/// (decimal units as data plans count them; binary `KiB`/`MiB`/`GiB`/`TiB` too).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| "expected a number of bytes with a unit, e.g. \"50MB\"".to_string())?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        other => {
            return Err(format!(
                "unknown unit {other:?}: use B, kB, MB, GB, TB or KiB..TiB"
            ))
        }
    };
    let bytes = (n * scale).round();
    if !bytes.is_finite() || !(1.0..=1e18).contains(&bytes) {
        return Err("expected at least 1 byte and at most 1 EB".into());
    }
    // In range 1..=1e18 checked above: the cast cannot truncate.
    Ok(bytes as u64)
}

/// Parses `"HH:MM-HH:MM"`.
fn parse_quiet_hours(text: &str) -> Result<(NaiveTime, NaiveTime), String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| "expected \"HH:MM-HH:MM\", e.g. \"23:00-07:00\"".to_string())?;
    let time = |s: &str| {
        NaiveTime::parse_from_str(s.trim(), "%H:%M")
            .map_err(|_| format!("{:?} is not a time HH:MM", s.trim()))
    };
    let (start, end) = (time(a)?, time(b)?);
    if start == end {
        return Err(
            "start and end are the same; leave quiet_hours unset to test around the clock".into(),
        );
    }
    Ok((start, end))
}

/// Parses `"+03:00"`, `"-05:30"`, `"+3"`, `"UTC"` into minutes east of UTC.
fn parse_utc_offset(text: &str) -> Result<i32, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("utc") || t.eq_ignore_ascii_case("z") {
        return Ok(0);
    }
    let bad = || "expected an offset from UTC such as \"+03:00\" or \"-05:30\"".to_string();
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    // Digits only: no second sign ("+-5:30"), and at most two digits, so nothing overflows.
    let digits = |s: &str| !s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || !digits(m) {
        return Err(bad());
    }
    let h: i32 = h.parse().map_err(|_| bad())?;
    let m: i32 = m.parse().map_err(|_| bad())?;
    if !(0..60).contains(&m) {
        return Err(bad());
    }
    let minutes = sign * (h * 60 + m);
    if !crate::schedule::UTC_OFFSET_MINUTES.contains(&minutes) {
        return Err("expected -12:00 to +14:00".into());
    }
    Ok(minutes)
}

/// The server name agents of earlier releases wrote into their configs; read as unset, since
/// a censor's list can name it.
pub const LEGACY_SERVER_NAME: &str = "callwatch-collector";
fn default_platforms() -> Vec<Platform> {
    vec![Platform::Generic]
}
/// 15 s: the verdict needs 12 one-second windows of both arms (see `verdict`, rule 3).
fn default_duration_secs() -> u32 {
    15
}
fn default_interval_ms() -> u16 {
    20
}
fn default_key_file() -> PathBuf {
    "agent.key".into()
}
fn default_queue_dir() -> PathBuf {
    "queue".into()
}
fn default_upload_batch() -> usize {
    64
}
fn default_queue_cap() -> usize {
    10_000
}
fn default_state_file() -> PathBuf {
    "state.json".into()
}

/// The log level name, normalised, if it is one of error, warn, info, debug, trace.
pub fn log_level_name(level: &str) -> Option<&'static str> {
    match level.trim().to_ascii_lowercase().as_str() {
        "error" => Some("error"),
        "warn" | "warning" => Some("warn"),
        "info" => Some("info"),
        "debug" => Some("debug"),
        "trace" => Some("trace"),
        _ => None,
    }
}

/// All the problems found in a config file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {}", problems.join("; "))]
pub struct ConfigError {
    pub path: String,
    pub problems: Vec<String>,
}

impl Config {
    /// A config with defaults for everything but the addresses and pin.
    pub fn new(collector: String, collector_pin: String, reflector: String) -> Self {
        Config {
            collector,
            collector_pin,
            collector_tcp: None,
            collector_seal_key: None,
            server_name: String::new(),
            reflector,
            reflector_key: None,
            platforms: default_platforms(),
            duration_secs: default_duration_secs(),
            interval_ms: default_interval_ms(),
            size: None,
            relay_servers: BTreeMap::new(),
            relay_reference: None,
            video: false,
            platform_port: None,
            control_port: None,
            bind: None,
            key_file: default_key_file(),
            queue_dir: default_queue_dir(),
            upload_batch: default_upload_batch(),
            queue_cap: default_queue_cap(),
            state_file: default_state_file(),
            interval: default_interval(),
            spread: default_spread(),
            quiet_hours: None,
            utc_offset: default_utc_offset(),
            budget_per_day: None,
            budget_per_month: None,
            log_level: default_log_level(),
            rotate_key_every: None,
        }
    }

    /// The schedule this config describes. `every` (the `run --every` test/demo override)
    /// replaces `interval` and may be shorter than the usual minimum of one minute.
    /// Call on a validated config; a bad value falls back to its default.
    pub fn schedule_config(&self, every: Option<Duration>) -> ScheduleConfig {
        let interval = every
            .or_else(|| parse_duration(&self.interval).ok())
            .unwrap_or(Duration::from_secs(900));
        ScheduleConfig {
            interval,
            spread: self.spread,
            quiet_hours: self
                .quiet_hours
                .as_deref()
                .and_then(|q| parse_quiet_hours(q).ok()),
            utc_offset_minutes: parse_utc_offset(&self.utc_offset).unwrap_or(0),
            platforms: self.platforms.iter().map(|p| p.to_string()).collect(),
            allow_short_interval: every.is_some(),
        }
    }

    /// The data budget this config describes (validated config; bad values mean unlimited).
    pub fn budget_config(&self) -> BudgetConfig {
        BudgetConfig {
            per_day_bytes: self
                .budget_per_day
                .as_deref()
                .and_then(|b| parse_bytes(b).ok()),
            per_month_bytes: self
                .budget_per_month
                .as_deref()
                .and_then(|b| parse_bytes(b).ok()),
        }
    }

    /// How old the signing key may get before it is replaced; `None`: never.
    pub fn key_rotation(&self) -> Option<Duration> {
        self.rotate_key_every
            .as_deref()
            .and_then(|r| parse_duration(r).ok())
    }

    /// Reads and validates `path`; relative paths inside are resolved against its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            path: path.display().to_string(),
            problems,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(vec![e.to_string()]))?;
        let mut cfg: Config = toml::from_str(&text).map_err(|e| fail(vec![e.to_string()]))?;
        cfg.validate().map_err(fail)?;
        // Absolute, so that paths derived from these (the state file beside the queue) do not
        // depend on the working directory or get the folder twice.
        let base = path.parent().unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        cfg.key_file = base.join(&cfg.key_file);
        cfg.queue_dir = base.join(&cfg.queue_dir);
        cfg.state_file = base.join(&cfg.state_file);
        Ok(cfg)
    }

    /// Every problem, each naming its key.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut p = Vec::new();
        let host_port = |key: &str, v: &str, p: &mut Vec<String>| match v.rsplit_once(':') {
            Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok_and(|x| x > 0) => {}
            _ => p.push(format!("{key} = {v:?}: expected host:port")),
        };
        host_port("collector", &self.collector, &mut p);
        if let Some(tcp) = &self.collector_tcp {
            host_port("collector_tcp", tcp, &mut p);
        }
        if let Some(key) = &self.collector_seal_key {
            if let Err(e) = key.parse::<callwatch_proto::carry::CarryKey>() {
                p.push(format!("collector_seal_key = {key:?}: {e}"));
            }
        }
        host_port("reflector", &self.reflector, &mut p);
        if let Some(key) = &self.reflector_key {
            if let Err(e) = key.parse::<ReflectorKey>() {
                p.push(format!("reflector_key = {key:?}: {e}"));
            }
        }
        if self.collector_pin.len() != 64 || hex::decode(&self.collector_pin).is_err() {
            p.push(format!(
                "collector_pin = {:?}: expected the 64 hex digits of the collector's \
                 SHA-256 fingerprint (its collector.pin file)",
                self.collector_pin
            ));
        }
        if self.platforms.is_empty() {
            p.push("platforms: name at least one platform".into());
        }
        if !(1..=120).contains(&self.duration_secs) {
            p.push(format!(
                "duration_secs = {}: expected 1..=120",
                self.duration_secs
            ));
        }
        if !(5..=1000).contains(&self.interval_ms) {
            p.push(format!(
                "interval_ms = {}: expected 5..=1000",
                self.interval_ms
            ));
        }
        if let Some(size) = self.size.filter(|s| !(48..=1400).contains(s)) {
            p.push(format!("size = {size}: expected 48..=1400 bytes"));
        }
        if !(1..=callwatch_proto::upload::MAX_BATCH).contains(&self.upload_batch) {
            p.push(format!(
                "upload_batch = {}: expected 1..={}",
                self.upload_batch,
                callwatch_proto::upload::MAX_BATCH
            ));
        }
        for (platform, servers) in &self.relay_servers {
            for server in servers {
                host_port(&format!("relay_servers.{platform}"), server, &mut p);
            }
        }
        if let Some(reference) = &self.relay_reference {
            host_port("relay_reference", reference, &mut p);
        }
        if self.queue_cap == 0 {
            p.push("queue_cap = 0: keep at least one report".into());
        }
        match parse_duration(&self.interval) {
            Ok(d) if (MIN_INTERVAL..=MAX_INTERVAL).contains(&d) => {}
            Ok(_) => p.push(format!(
                "interval = {:?}: expected 1m (one minute) to 7d",
                self.interval
            )),
            Err(e) => p.push(format!("interval = {:?}: {e}", self.interval)),
        }
        if !(0.0..=1.0).contains(&self.spread) {
            p.push(format!(
                "spread = {}: expected a fraction of the interval, 0 to 1",
                self.spread
            ));
        }
        if let Some(q) = &self.quiet_hours {
            if let Err(e) = parse_quiet_hours(q) {
                p.push(format!("quiet_hours = {q:?}: {e}"));
            }
        }
        if let Err(e) = parse_utc_offset(&self.utc_offset) {
            p.push(format!("utc_offset = {:?}: {e}", self.utc_offset));
        }
        for (key, value) in [
            ("budget_per_day", &self.budget_per_day),
            ("budget_per_month", &self.budget_per_month),
        ] {
            if let Some(v) = value {
                if let Err(e) = parse_bytes(v) {
                    p.push(format!("{key} = {v:?}: {e}"));
                }
            }
        }
        if log_level_name(&self.log_level).is_none() {
            p.push(format!(
                "log_level = {:?}: expected error, warn, info, debug or trace",
                self.log_level
            ));
        }
        if let Some(r) = &self.rotate_key_every {
            match parse_duration(r) {
                Ok(d) if d >= Duration::from_secs(3600) => {}
                Ok(_) => p.push(format!("rotate_key_every = {r:?}: expected at least 1h")),
                Err(e) => p.push(format!("rotate_key_every = {r:?}: {e}")),
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(p)
        }
    }

    /// The state file; a relative one (a config built in code) lives beside the queue folder.
    pub fn state_path(&self) -> PathBuf {
        if self.state_file.is_absolute() {
            return self.state_file.clone();
        }
        self.queue_dir
            .parent()
            .unwrap_or(Path::new("."))
            .join(&self.state_file)
    }

    /// The server name to present: `server_name`, else the collector's host name; an address
    /// (no SNI is sent for one) when the host is an address.
    pub fn tls_server_name(&self) -> String {
        if !self.server_name.is_empty() && self.server_name != LEGACY_SERVER_NAME {
            return self.server_name.clone();
        }
        let host = self
            .collector
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&self.collector);
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    }

    pub fn pin_bytes(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.collector_pin, &mut out).ok()?;
        Some(out)
    }

    /// The TOML text of this config, with a comment header.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).unwrap_or_default();
        format!("# callwatch agent configuration (see `callwatch-agent --help`)\n{body}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_mistake_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "collector = \"nohost\"\ncollector_pin = \"abc\"\nreflector = \"127.0.0.1:3479\"\nsize = 20\n",
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err();
        assert_eq!(e.problems.len(), 3, "{e}");
        let text = e.to_string();
        for key in ["collector =", "collector_pin", "size = 20"] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
        std::fs::write(&path, "colector = \"x\"\n").unwrap();
        assert!(Config::load(&path)
            .unwrap_err()
            .to_string()
            .contains("colector"));
    }

    #[test]
    fn relay_servers_per_platform_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let base = Config::new(
            "127.0.0.1:4433".into(),
            "ab".repeat(32),
            "127.0.0.1:3479".into(),
        );
        let text = format!(
            "{}\n[relay_servers]\nwhatsapp = [\"127.0.0.1:3478\"]\ntelegram = [\"nohost\"]\n",
            base.to_toml().replace("video = false", "video = true")
        );
        std::fs::write(&path, text).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("relay_servers.telegram"), "{e}");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"nohost\"", "\"127.0.0.1:3479\"");
        std::fs::write(&path, text).unwrap();
        let cfg = Config::load(&path).unwrap();
        assert!(cfg.video);
        assert_eq!(
            cfg.relay_servers[&Platform::Whatsapp],
            vec!["127.0.0.1:3478".to_string()]
        );
    }

    #[test]
    fn the_example_config_documents_keys_that_load() {
        let text = include_str!("../../packaging/agent.example.toml");
        let cfg: Config = toml::from_str(text).unwrap();
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.platforms.len(), 3);
        // Every key the config knows appears in the example, set or commented out.
        let written = toml::to_string(&Config {
            size: Some(172),
            bind: Some("192.0.2.10".parse().unwrap()),
            platform_port: Some(1),
            control_port: Some(2),
            quiet_hours: Some("23:00-07:00".into()),
            budget_per_day: Some("50MB".into()),
            budget_per_month: Some("1GB".into()),
            rotate_key_every: Some("30d".into()),
            ..cfg
        })
        .unwrap();
        for line in written.lines().filter(|l| l.contains(" = ")) {
            let key = line.split(" = ").next().unwrap();
            assert!(text.contains(&format!("{key} = ")), "{key} not documented");
        }
    }

    #[test]
    fn schedule_budget_and_rotation_keys_are_parsed_and_each_mistake_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let base = Config::new(
            "127.0.0.1:4433".into(),
            "ab".repeat(32),
            "127.0.0.1:3479".into(),
        )
        .to_toml();
        let good = format!(
            "{base}\nquiet_hours = \"23:00-07:00\"\nbudget_per_day = \"50MB\"\n\
             budget_per_month = \"1GiB\"\nrotate_key_every = \"30d\"\n"
        )
        .replace("interval = \"15m\"", "interval = \"2h\"")
        .replace("utc_offset = \"+00:00\"", "utc_offset = \"+03:30\"");
        std::fs::write(&path, &good).unwrap();
        let cfg = Config::load(&path).unwrap();
        let sc = cfg.schedule_config(None);
        assert_eq!(sc.interval, Duration::from_secs(7200));
        assert_eq!(sc.utc_offset_minutes, 210);
        assert_eq!(
            sc.quiet_hours,
            Some((
                NaiveTime::from_hms_opt(23, 0, 0).unwrap(),
                NaiveTime::from_hms_opt(7, 0, 0).unwrap()
            ))
        );
        assert!(sc.validate().is_ok());
        let short = cfg.schedule_config(Some(Duration::from_secs(2)));
        assert_eq!(short.interval, Duration::from_secs(2));
        assert!(short.validate().is_ok(), "--every may go below a minute");
        assert_eq!(
            cfg.budget_config(),
            BudgetConfig {
                per_day_bytes: Some(50_000_000),
                per_month_bytes: Some(1 << 30)
            }
        );
        assert_eq!(cfg.key_rotation(), Some(Duration::from_secs(30 * 86_400)));

        let bad = good
            .replace("\"23:00-07:00\"", "\"23:00-25:00\"")
            .replace("\"50MB\"", "\"fifty\"")
            .replace("\"2h\"", "\"10s\"")
            .replace("\"30d\"", "\"30y\"")
            .replace("log_level = \"info\"", "log_level = \"loud\"");
        std::fs::write(&path, bad).unwrap();
        let e = Config::load(&path).unwrap_err();
        assert_eq!(e.problems.len(), 5, "{e}");
        for key in [
            "quiet_hours = ",
            "budget_per_day = ",
            "interval = ",
            "rotate_key_every = ",
            "log_level = ",
        ] {
            assert!(e.to_string().contains(key), "{key} missing from {e}");
        }
    }

    #[test]
    fn byte_and_duration_units() {
        assert_eq!(parse_bytes("50MB"), Ok(50_000_000));
        assert_eq!(parse_bytes("1.5 GB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("2KiB"), Ok(2048));
        assert_eq!(parse_bytes("200000"), Ok(200_000));
        assert!(parse_bytes("0MB").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("m").is_err());
        assert_eq!(parse_utc_offset("-05:30"), Ok(-330));
        assert!(parse_utc_offset("+15:00").is_err());
        // Found by review of the agent_config fuzz target (fuzz/findings, F3).
        assert!(parse_utc_offset("+99999999").is_err());
        assert!(parse_utc_offset("+71582788").is_err());
        assert!(parse_utc_offset("+-5:30").is_err());
        assert_eq!(parse_utc_offset("+3"), Ok(180));
    }

    #[test]
    fn upload_keys_default_to_the_collector_and_are_checked() {
        let mut cfg = Config::new(
            "collector.example.org:443".into(),
            "ab".repeat(32),
            "127.0.0.1:3479".into(),
        );
        assert_eq!(cfg.tls_server_name(), "collector.example.org");
        cfg.server_name = LEGACY_SERVER_NAME.into();
        assert_eq!(
            cfg.tls_server_name(),
            "collector.example.org",
            "old default"
        );
        cfg.server_name = "cdn.example.net".into();
        assert_eq!(cfg.tls_server_name(), "cdn.example.net");
        cfg.server_name.clear();
        cfg.collector = "[2001:db8::1]:4433".into();
        assert_eq!(cfg.tls_server_name(), "2001:db8::1", "an address: no SNI");
        assert!(
            !cfg.to_toml().contains("server_name"),
            "unset is not written"
        );
        cfg.collector_tcp = Some("nohost".into());
        cfg.collector_seal_key = Some("xyz".into());
        let e = cfg.validate().unwrap_err().join("; ");
        assert!(
            e.contains("collector_tcp") && e.contains("collector_seal_key"),
            "{e}"
        );
        let text = include_str!("../../packaging/agent.example.toml");
        for key in [
            "collector_tcp = ",
            "collector_seal_key = ",
            "server_name = ",
        ] {
            assert!(text.contains(key), "{key} not documented");
        }
        assert!(!text.contains(LEGACY_SERVER_NAME));
    }

    #[test]
    fn round_trips_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let cfg = Config::new(
            "127.0.0.1:4433".into(),
            "ab".repeat(32),
            "127.0.0.1:3479".into(),
        );
        std::fs::write(&path, cfg.to_toml()).unwrap();
        let back = Config::load(&path).unwrap();
        assert_eq!(back.key_file, dir.path().join("agent.key"));
        assert_eq!(back.state_path(), dir.path().join("state.json"));
        // A config given by a relative path: the state file is still beside it, once.
        let local = tempfile::tempdir_in(".").unwrap();
        let cwd = std::env::current_dir().unwrap();
        let rel = match local.path().strip_prefix(&cwd) {
            Ok(r) => r.join("agent.toml"),
            Err(_) => local.path().join("agent.toml"),
        };
        assert!(rel.is_relative(), "{}", rel.display());
        std::fs::write(&rel, cfg.to_toml()).unwrap();
        assert_eq!(
            Config::load(&rel).unwrap().state_path(),
            std::path::absolute(local.path())
                .unwrap()
                .join("state.json")
        );
        assert_eq!(back.collector, cfg.collector);
        assert_eq!(back.pin_bytes(), Some([0xab; 32]));
    }
}
