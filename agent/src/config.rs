//! The agent's TOML configuration: what to test, where to upload, and where to keep things.
//!
//! [`ConfigFile`] is the file as a volunteer writes it: its keys, durations, times and budgets as
//! text. [`Config::from_file`] turns it into the typed [`Config`] the agent runs on, in one pass
//! that reports every mistake with its key, all at once, before anything runs. Nothing parses a
//! setting again after that; [`Config::to_file`] writes the typed values back in the same forms.

use callwatch_proto::carry::CarryKey;
use callwatch_proto::seal::ReflectorKey;
use callwatch_proto::Platform;
use chrono::NaiveTime;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::budget::BudgetConfig;
use crate::engine::TestSpec;
use crate::schedule::{ScheduleConfig, MAX_INTERVAL, MIN_INTERVAL};
use crate::settings::{TestSettings, DEFAULT_DURATION_SECS, DEFAULT_INTERVAL_MS};

/// Mean time between test starts when `interval` is unset: 15 minutes.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Shortest `rotate_key_every`.
pub const MIN_KEY_ROTATION: Duration = Duration::from_secs(3600);
/// `rotate_key_every` when unset: a new key every UTC day, the period the collector counts
/// agents and caps their weight over.
pub const DEFAULT_KEY_ROTATION: Duration = Duration::from_secs(86_400);
/// The `rotate_key_every` value that turns rotation off.
pub const NEVER: &str = "never";

/// The config file as written: every key it may hold, with the forms the file uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
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
    /// Reflector UDP address, `host:port`, for every test (each platform's arms go to its
    /// profile's ports on that host). Unset: the collector's own reflector, at the collector's
    /// host, on the ports the collector says it serves each platform on (asked before the first
    /// test and after every upload, kept in the state file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reflector: Option<String>,
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
    /// Replace the signing key with a new one every period of this length (aligned to UTC,
    /// e.g. `"1d"` turns at 00:00 UTC), or `"never"`; unset: every day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_key_every: Option<String>,
}

fn default_interval() -> String {
    format_duration(DEFAULT_INTERVAL)
}
fn default_spread() -> f64 {
    0.5
}
fn default_utc_offset() -> String {
    format_utc_offset(0)
}
fn default_log_level() -> String {
    LogLevel::Info.as_str().into()
}
fn default_platforms() -> Vec<Platform> {
    vec![Platform::Generic]
}
fn default_duration_secs() -> u32 {
    DEFAULT_DURATION_SECS
}
fn default_interval_ms() -> u16 {
    DEFAULT_INTERVAL_MS
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

impl ConfigFile {
    /// A file with defaults for everything but the addresses and pin (what `init` writes).
    pub fn new(collector: String, collector_pin: String, reflector: Option<String>) -> Self {
        ConfigFile {
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

    /// The TOML text of this file, with a comment header.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).unwrap_or_default();
        format!("# callwatch agent configuration (see `callwatch-agent --help`)\n{body}")
    }
}

/// What the collector said about its own reflector, for a config that names none: where it
/// serves each platform, and its sealing key (from its list of reflectors).
#[derive(Clone, Debug, PartialEq)]
pub struct Learned {
    pub endpoints: callwatch_proto::profile::Endpoints,
    pub seal_key: Option<ReflectorKey>,
}

/// The agent's settings, typed: what [`ConfigFile`] says, checked and parsed once.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Collector QUIC address, `host:port` (resolved when an upload starts).
    pub collector: String,
    /// Collector TLS-over-TCP address; `None`: `collector`'s.
    pub collector_tcp: Option<String>,
    /// SHA-256 fingerprint of the collector's certificate.
    pub collector_pin: [u8; 32],
    /// The collector's carry-out key; `None`: the one it sent (in the state file).
    pub collector_seal_key: Option<CarryKey>,
    /// TLS server name as written (empty: unset); see [`Config::tls_server_name`].
    pub server_name: String,
    /// What every test is (reflector, length, sizes, ports, the reflector's key): the same
    /// settings the `test` command takes as flags. Its `reflector` is empty when the file names
    /// none ([`Config::reflector_from_collector`]; a file's `reflector` must be `host:port`).
    pub test: TestSettings,
    /// Platforms tested in turn; never empty in a loaded config.
    pub platforms: Vec<Platform>,
    /// Each platform's own STUN/TURN servers (`host:port`); the first is asked.
    pub relay_servers: BTreeMap<Platform, Vec<String>>,
    pub key_file: PathBuf,
    pub queue_dir: PathBuf,
    pub upload_batch: usize,
    pub queue_cap: usize,
    pub state_file: PathBuf,
    /// Mean time between test starts.
    pub interval: Duration,
    /// Random jitter of each gap as a fraction of `interval`, 0..=1.
    pub spread: f64,
    /// Local `(start, end)` with no tests; `start > end` wraps midnight.
    pub quiet_hours: Option<(NaiveTime, NaiveTime)>,
    /// The volunteer's offset from UTC, in minutes east.
    pub utc_offset_minutes: i32,
    /// The data budget.
    pub budget: BudgetConfig,
    pub log_level: LogLevel,
    /// The period after which the signing key is replaced (aligned to UTC); `None`: never.
    pub rotate_key_every: Option<Duration>,
}

/// A log level as the config names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The level `name` names (case and spaces aside; `warning` is `warn`), if any.
    pub fn from_name(name: &str) -> Option<LogLevel> {
        match name.trim().to_ascii_lowercase().as_str() {
            "error" => Some(LogLevel::Error),
            "warn" | "warning" => Some(LogLevel::Warn),
            "info" => Some(LogLevel::Info),
            "debug" => Some(LogLevel::Debug),
            "trace" => Some(LogLevel::Trace),
            _ => None,
        }
    }

    /// Its name, as a tracing filter takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
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

/// `d` as `parse_duration` reads it: whole seconds in the largest unit that divides them.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (scale, unit) = [(7 * 86_400, "w"), (86_400, "d"), (3600, "h"), (60, "m")]
        .into_iter()
        .find(|(scale, _)| secs > 0 && secs.is_multiple_of(*scale))
        .unwrap_or((1, "s"));
    format!("{}{unit}", secs / scale)
}

/// `bytes` as `parse_bytes` reads it back exactly: in the largest unit that divides it.
pub fn format_byte_count(bytes: u64) -> String {
    const UNITS: [(u64, &str); 8] = [
        (1 << 40, "TiB"),
        (1_000_000_000_000, "TB"),
        (1 << 30, "GiB"),
        (1_000_000_000, "GB"),
        (1 << 20, "MiB"),
        (1_000_000, "MB"),
        (1 << 10, "KiB"),
        (1_000, "kB"),
    ];
    match UNITS
        .into_iter()
        .find(|(scale, _)| bytes > 0 && bytes.is_multiple_of(*scale))
    {
        Some((scale, unit)) => format!("{}{unit}", bytes / scale),
        None => format!("{bytes}B"),
    }
}

/// `"HH:MM-HH:MM"`.
fn format_quiet_hours((start, end): (NaiveTime, NaiveTime)) -> String {
    format!("{}-{}", start.format("%H:%M"), end.format("%H:%M"))
}

/// `"+03:00"`, `"-05:30"`.
fn format_utc_offset(minutes: i32) -> String {
    let sign = if minutes < 0 { '-' } else { '+' };
    let m = minutes.unsigned_abs();
    format!("{sign}{:02}:{:02}", m / 60, m % 60)
}

/// All the problems found in a config file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {}", problems.join("; "))]
pub struct ConfigError {
    pub path: String,
    pub problems: Vec<String>,
}

/// `text`, the value of `key`, parsed by `parse`; on failure the problem is noted in `problems`
/// as `key = "text": why` and the answer is `None`.
fn parse_key<T>(
    problems: &mut Vec<String>,
    key: &str,
    text: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    match parse(text) {
        Ok(v) => Some(v),
        Err(why) => {
            problems.push(format!("{key} = {text:?}: {why}"));
            None
        }
    }
}

/// Notes a problem unless `v` is `host:port` with a host and a port above 0.
fn check_host_port(problems: &mut Vec<String>, key: &str, v: &str) {
    match v.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok_and(|x| x > 0) => {}
        _ => problems.push(format!("{key} = {v:?}: expected host:port")),
    }
}

impl Config {
    /// A config with defaults for everything but the addresses and pin.
    pub fn new(collector: String, collector_pin: [u8; 32], reflector: String) -> Self {
        Config {
            collector,
            collector_tcp: None,
            collector_pin,
            collector_seal_key: None,
            server_name: String::new(),
            test: TestSettings::new(reflector),
            platforms: default_platforms(),
            relay_servers: BTreeMap::new(),
            key_file: default_key_file(),
            queue_dir: default_queue_dir(),
            upload_batch: default_upload_batch(),
            queue_cap: default_queue_cap(),
            state_file: default_state_file(),
            interval: DEFAULT_INTERVAL,
            spread: default_spread(),
            quiet_hours: None,
            utc_offset_minutes: 0,
            budget: BudgetConfig::default(),
            log_level: LogLevel::Info,
            rotate_key_every: Some(DEFAULT_KEY_ROTATION),
        }
    }

    /// The typed config `file` describes, or every problem in it, each naming its key. This is
    /// the only place a setting's text is parsed.
    pub fn from_file(file: ConfigFile) -> Result<Config, Vec<String>> {
        let mut p = Vec::new();
        check_host_port(&mut p, "collector", &file.collector);
        if let Some(tcp) = &file.collector_tcp {
            check_host_port(&mut p, "collector_tcp", tcp);
        }
        // An optional key whose value does not parse is `None` here, but it is a problem too,
        // so no config is made from these values (see below).
        let collector_seal_key = file.collector_seal_key.as_deref().and_then(|key| {
            parse_key(&mut p, "collector_seal_key", key, |k| k.parse::<CarryKey>())
        });
        if let Some(reflector) = &file.reflector {
            check_host_port(&mut p, "reflector", reflector);
        }
        let reflector_key = file.reflector_key.as_deref().and_then(|key| {
            parse_key(&mut p, "reflector_key", key, |k| {
                k.parse::<ReflectorKey>().map_err(|e| e.to_string())
            })
        });
        let collector_pin = parse_key(&mut p, "collector_pin", &file.collector_pin, |pin| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(pin, &mut out).map_err(|_| {
                "expected the 64 hex digits of the collector's SHA-256 fingerprint (its \
                 collector.pin file)"
                    .to_string()
            })?;
            Ok(out)
        });
        if file.platforms.is_empty() {
            p.push("platforms: name at least one platform".into());
        }
        if !(1..=120).contains(&file.duration_secs) {
            p.push(format!(
                "duration_secs = {}: expected 1..=120",
                file.duration_secs
            ));
        }
        if !(5..=1000).contains(&file.interval_ms) {
            p.push(format!(
                "interval_ms = {}: expected 5..=1000",
                file.interval_ms
            ));
        }
        if let Some(size) = file.size.filter(|s| !(48..=1400).contains(s)) {
            p.push(format!("size = {size}: expected 48..=1400 bytes"));
        }
        if !(1..=callwatch_proto::upload::MAX_BATCH).contains(&file.upload_batch) {
            p.push(format!(
                "upload_batch = {}: expected 1..={}",
                file.upload_batch,
                callwatch_proto::upload::MAX_BATCH
            ));
        }
        for (platform, servers) in &file.relay_servers {
            for server in servers {
                check_host_port(&mut p, &format!("relay_servers.{platform}"), server);
            }
        }
        if let Some(reference) = &file.relay_reference {
            check_host_port(&mut p, "relay_reference", reference);
        }
        if file.queue_cap == 0 {
            p.push("queue_cap = 0: keep at least one report".into());
        }
        let interval = parse_key(
            &mut p,
            "interval",
            &file.interval,
            |t| match parse_duration(t)? {
                d if (MIN_INTERVAL..=MAX_INTERVAL).contains(&d) => Ok(d),
                _ => Err("expected 1m (one minute) to 7d".into()),
            },
        );
        if !(0.0..=1.0).contains(&file.spread) {
            p.push(format!(
                "spread = {}: expected a fraction of the interval, 0 to 1",
                file.spread
            ));
        }
        let quiet_hours = file
            .quiet_hours
            .as_deref()
            .and_then(|q| parse_key(&mut p, "quiet_hours", q, parse_quiet_hours));
        let utc_offset_minutes =
            parse_key(&mut p, "utc_offset", &file.utc_offset, parse_utc_offset);
        let per_day_bytes = file
            .budget_per_day
            .as_deref()
            .and_then(|b| parse_key(&mut p, "budget_per_day", b, parse_bytes));
        let per_month_bytes = file
            .budget_per_month
            .as_deref()
            .and_then(|b| parse_key(&mut p, "budget_per_month", b, parse_bytes));
        let log_level = parse_key(&mut p, "log_level", &file.log_level, |l| {
            LogLevel::from_name(l)
                .ok_or_else(|| "expected error, warn, info, debug or trace".to_string())
        });
        let rotate_key_every = match file.rotate_key_every.as_deref() {
            None => Some(DEFAULT_KEY_ROTATION),
            Some(r) if r.trim() == NEVER => None,
            Some(r) => parse_key(&mut p, "rotate_key_every", r, |t| {
                match parse_duration(t)
                    .map_err(|e| format!("{e}, or \"{NEVER}\" to keep one key"))?
                {
                    d if d >= MIN_KEY_ROTATION => Ok(d),
                    _ => Err(format!("expected at least 1h, or \"{NEVER}\"")),
                }
            }),
        };
        // Each `None` among the required values noted its problem above.
        let (Some(collector_pin), Some(interval), Some(utc_offset_minutes), Some(log_level)) =
            (collector_pin, interval, utc_offset_minutes, log_level)
        else {
            return Err(p);
        };
        if !p.is_empty() {
            return Err(p);
        }
        Ok(Config {
            collector: file.collector,
            collector_tcp: file.collector_tcp,
            collector_pin,
            collector_seal_key,
            server_name: file.server_name,
            test: TestSettings {
                reflector: file.reflector.unwrap_or_default(),
                platform_port: file.platform_port,
                control_port: file.control_port,
                video: file.video,
                relay_reference: file.relay_reference,
                duration_secs: file.duration_secs,
                interval_ms: file.interval_ms,
                size: file.size,
                bind: file.bind,
                reflector_key,
            },
            platforms: file.platforms,
            relay_servers: file.relay_servers,
            key_file: file.key_file,
            queue_dir: file.queue_dir,
            upload_batch: file.upload_batch,
            queue_cap: file.queue_cap,
            state_file: file.state_file,
            interval,
            spread: file.spread,
            quiet_hours,
            utc_offset_minutes,
            budget: BudgetConfig {
                per_day_bytes,
                per_month_bytes,
            },
            log_level,
            rotate_key_every,
        })
    }

    /// The file that loads back as this config (`from_file(to_file())` gives it again).
    pub fn to_file(&self) -> ConfigFile {
        ConfigFile {
            collector: self.collector.clone(),
            collector_tcp: self.collector_tcp.clone(),
            collector_pin: hex::encode(self.collector_pin),
            collector_seal_key: self.collector_seal_key.map(|k| k.to_string()),
            server_name: self.server_name.clone(),
            reflector: (!self.reflector_from_collector()).then(|| self.test.reflector.clone()),
            reflector_key: self.test.reflector_key.map(|k| k.to_hex()),
            platforms: self.platforms.clone(),
            duration_secs: self.test.duration_secs,
            interval_ms: self.test.interval_ms,
            size: self.test.size,
            relay_servers: self.relay_servers.clone(),
            relay_reference: self.test.relay_reference.clone(),
            video: self.test.video,
            platform_port: self.test.platform_port,
            control_port: self.test.control_port,
            bind: self.test.bind,
            key_file: self.key_file.clone(),
            queue_dir: self.queue_dir.clone(),
            upload_batch: self.upload_batch,
            queue_cap: self.queue_cap,
            state_file: self.state_file.clone(),
            interval: format_duration(self.interval),
            spread: self.spread,
            quiet_hours: self.quiet_hours.map(format_quiet_hours),
            utc_offset: format_utc_offset(self.utc_offset_minutes),
            budget_per_day: self.budget.per_day_bytes.map(format_byte_count),
            budget_per_month: self.budget.per_month_bytes.map(format_byte_count),
            log_level: self.log_level.as_str().into(),
            rotate_key_every: match self.rotate_key_every {
                Some(DEFAULT_KEY_ROTATION) => None,
                Some(d) => Some(format_duration(d)),
                None => Some(NEVER.into()),
            },
        }
    }

    /// The test of `platform` this config describes: [`TestSettings::spec`] with the platform's
    /// first relay server, if it has one.
    pub fn spec(&self, platform: Platform) -> anyhow::Result<TestSpec> {
        self.spec_with(platform, None)
    }

    /// [`Config::spec`], where a config that names no reflector tests against the collector's
    /// own: at the collector's host, on the ports `learned` says it serves `platform` on (the
    /// config's `platform_port`/`control_port` still win), sealed to its key unless the config
    /// gives one. An error says why the test cannot run: no ports learned yet, or the
    /// collector's reflector cannot serve this platform.
    pub fn spec_with(
        &self,
        platform: Platform,
        learned: Option<&Learned>,
    ) -> anyhow::Result<TestSpec> {
        let relay = self
            .relay_servers
            .get(&platform)
            .and_then(|s| s.first())
            .map(String::as_str);
        if !self.reflector_from_collector() {
            return self.test.spec(platform, relay);
        }
        let host = self.collector_host();
        let Some(learned) = learned else {
            anyhow::bail!(
                "no reflector known yet: the collector at {} has not said where its reflector \
                 serves (it is asked before the first test and after every upload; or set \
                 `reflector` in the config)",
                self.collector
            );
        };
        let served = learned.endpoints.get(platform).map_err(|why| {
            anyhow::anyhow!("the collector's reflector at {host} cannot serve {platform}: {why}")
        })?;
        let mut settings = self.test.clone();
        settings.reflector = format!("{host}:{}", served.platform_port);
        settings.platform_port = settings.platform_port.or(Some(served.platform_port));
        settings.control_port = settings.control_port.or(served.control_port);
        settings.reflector_key = settings.reflector_key.or(learned.seal_key);
        settings.spec(platform, relay)
    }

    /// The file names no reflector: tests go to the collector's own, where it says it serves
    /// each platform ([`Config::spec_with`]).
    pub fn reflector_from_collector(&self) -> bool {
        self.test.reflector.is_empty()
    }

    /// The collector's host as written in `collector` (an IPv6 address keeps its brackets),
    /// where its own reflector is.
    pub fn collector_host(&self) -> &str {
        self.collector
            .rsplit_once(':')
            .map_or(self.collector.as_str(), |(h, _)| h)
    }

    /// The schedule this config describes. `every` (the `run --every` test/demo override)
    /// replaces `interval` and may be shorter than the usual minimum of one minute.
    pub fn schedule_config(&self, every: Option<Duration>) -> ScheduleConfig {
        ScheduleConfig {
            interval: every.unwrap_or(self.interval),
            spread: self.spread,
            quiet_hours: self.quiet_hours,
            utc_offset_minutes: self.utc_offset_minutes,
            platforms: self.platforms.clone(),
            allow_short_interval: every.is_some(),
        }
    }

    /// Reads `path` and makes the typed config of it; relative paths inside are resolved
    /// against its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            path: path.display().to_string(),
            problems,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(vec![e.to_string()]))?;
        let file: ConfigFile = toml::from_str(&text).map_err(|e| fail(vec![e.to_string()]))?;
        let mut cfg = Config::from_file(file).map_err(fail)?;
        // Absolute, so that paths derived from these (the state file beside the queue) do not
        // depend on the working directory or get the folder twice.
        let base = path.parent().unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        cfg.key_file = base.join(&cfg.key_file);
        cfg.queue_dir = base.join(&cfg.queue_dir);
        cfg.state_file = base.join(&cfg.state_file);
        Ok(cfg)
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

    /// The TOML text of this config, with a comment header.
    pub fn to_toml(&self) -> String {
        self.to_file().to_toml()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> ConfigFile {
        ConfigFile::new(
            "127.0.0.1:4433".into(),
            "ab".repeat(32),
            Some("127.0.0.1:3479".into()),
        )
    }

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
        let text = format!(
            "{}\n[relay_servers]\nwhatsapp = [\"127.0.0.1:3478\"]\ntelegram = [\"nohost\"]\n",
            file().to_toml().replace("video = false", "video = true")
        );
        std::fs::write(&path, text).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("relay_servers.telegram"), "{e}");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"nohost\"", "\"127.0.0.1:3479\"");
        std::fs::write(&path, text).unwrap();
        let cfg = Config::load(&path).unwrap();
        assert!(cfg.test.video);
        assert_eq!(
            cfg.relay_servers[&Platform::Whatsapp],
            vec!["127.0.0.1:3478".to_string()]
        );
        // The platform's first relay server is its test's relay arm; others have none.
        let spec = cfg.spec(Platform::Whatsapp).unwrap();
        assert_eq!(spec.relay_server, Some("127.0.0.1:3478".parse().unwrap()));
        assert_eq!(cfg.spec(Platform::Signal).unwrap().relay_server, None);
    }

    #[test]
    fn the_example_config_documents_keys_that_load() {
        let text = include_str!("../../packaging/agent.example.toml");
        let file: ConfigFile = toml::from_str(text).unwrap();
        let cfg = Config::from_file(file.clone()).unwrap();
        assert_eq!(cfg.platforms, Platform::ALL);
        // Every key the config knows appears in the example, set or commented out.
        let written = toml::to_string(&ConfigFile {
            size: Some(172),
            bind: Some("192.0.2.10".parse().unwrap()),
            platform_port: Some(1),
            control_port: Some(2),
            quiet_hours: Some("23:00-07:00".into()),
            budget_per_day: Some("50MB".into()),
            budget_per_month: Some("1GB".into()),
            rotate_key_every: Some("30d".into()),
            ..file
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
        let base = file().to_toml();
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
            cfg.budget,
            BudgetConfig {
                per_day_bytes: Some(50_000_000),
                per_month_bytes: Some(1 << 30)
            }
        );
        assert_eq!(cfg.rotate_key_every, Some(Duration::from_secs(30 * 86_400)));

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

    /// Rotation is on by default (a new key every UTC day), `"never"` turns it off, and both
    /// survive a round trip through the file.
    #[test]
    fn keys_rotate_daily_unless_told_never() {
        let cfg = Config::from_file(file()).unwrap();
        assert_eq!(cfg.rotate_key_every, Some(DEFAULT_KEY_ROTATION));
        assert_eq!(
            cfg.to_file().rotate_key_every,
            None,
            "the default is not written"
        );
        let never = Config::from_file(ConfigFile {
            rotate_key_every: Some("never".into()),
            ..file()
        })
        .unwrap();
        assert_eq!(never.rotate_key_every, None);
        assert_eq!(Config::from_file(never.to_file()).unwrap(), never);
        let weekly = Config::from_file(ConfigFile {
            rotate_key_every: Some("1w".into()),
            ..file()
        })
        .unwrap();
        assert_eq!(
            weekly.rotate_key_every,
            Some(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(Config::from_file(weekly.to_file()).unwrap(), weekly);
        let e = Config::from_file(ConfigFile {
            rotate_key_every: Some("nope".into()),
            ..file()
        })
        .unwrap_err();
        assert!(e[0].contains("\"never\""), "{e:?}");
    }

    /// The typed conversion: every key that parses is named when it does not, each once, and
    /// a good file's typed values are exactly what it says.
    #[test]
    fn every_parsed_key_is_named_and_good_values_are_exact() {
        let bad = ConfigFile {
            collector: "nohost".into(),
            collector_tcp: Some("tcp-nohost".into()),
            collector_pin: "xyz".into(),
            collector_seal_key: Some("seal".into()),
            reflector: Some("reflector-nohost".into()),
            reflector_key: Some("refkey".into()),
            platforms: vec![],
            duration_secs: 0,
            interval_ms: 1,
            size: Some(20),
            upload_batch: 0,
            relay_servers: [(Platform::Signal, vec!["relay-nohost".into()])].into(),
            relay_reference: Some("reference-nohost".into()),
            queue_cap: 0,
            interval: "15".into(),
            spread: 2.0,
            quiet_hours: Some("7:00".into()),
            utc_offset: "+15:00".into(),
            budget_per_day: Some("0MB".into()),
            budget_per_month: Some("lots".into()),
            log_level: "loud".into(),
            rotate_key_every: Some("1m".into()),
            ..file()
        };
        let problems = Config::from_file(bad).unwrap_err();
        let keys = [
            "collector = ",
            "collector_tcp = ",
            "collector_seal_key = ",
            "reflector = ",
            "reflector_key = ",
            "collector_pin = ",
            "platforms:",
            "duration_secs = ",
            "interval_ms = ",
            "size = ",
            "upload_batch = ",
            "relay_servers.signal = ",
            "relay_reference = ",
            "queue_cap = ",
            "interval = ",
            "spread = ",
            "quiet_hours = ",
            "utc_offset = ",
            "budget_per_day = ",
            "budget_per_month = ",
            "log_level = ",
            "rotate_key_every = ",
        ];
        assert_eq!(problems.len(), keys.len(), "{problems:#?}");
        for (problem, key) in problems.iter().zip(keys) {
            assert!(problem.starts_with(key), "{key}: {problem}");
        }

        let key: ReflectorKey = "cd".repeat(32).parse().unwrap();
        let good = ConfigFile {
            collector_tcp: Some("127.0.0.1:443".into()),
            collector_pin: "AB".repeat(32),
            collector_seal_key: Some("12".repeat(32)),
            reflector_key: Some(key.to_hex()),
            platforms: vec![Platform::Whatsapp, Platform::Generic],
            duration_secs: 12,
            interval_ms: 30,
            size: Some(200),
            relay_reference: Some("127.0.0.1:3478".into()),
            video: true,
            platform_port: Some(3478),
            control_port: Some(40401),
            bind: Some("127.0.0.1".parse().unwrap()),
            interval: "90s".into(),
            spread: 0.25,
            quiet_hours: Some("22:30-06:45".into()),
            utc_offset: "-05:30".into(),
            budget_per_day: Some("1.5 GB".into()),
            budget_per_month: Some("2KiB".into()),
            log_level: "Warning".into(),
            rotate_key_every: Some("2w".into()),
            ..file()
        };
        let cfg = Config::from_file(good).unwrap();
        let hm = |h, m| NaiveTime::from_hms_opt(h, m, 0).unwrap();
        assert_eq!(
            cfg,
            Config {
                collector_tcp: Some("127.0.0.1:443".into()),
                collector_seal_key: Some(CarryKey([0x12; 32])),
                test: TestSettings {
                    reflector_key: Some(key),
                    duration_secs: 12,
                    interval_ms: 30,
                    size: Some(200),
                    relay_reference: Some("127.0.0.1:3478".into()),
                    video: true,
                    platform_port: Some(3478),
                    control_port: Some(40401),
                    bind: Some("127.0.0.1".parse().unwrap()),
                    ..TestSettings::new("127.0.0.1:3479".into())
                },
                platforms: vec![Platform::Whatsapp, Platform::Generic],
                interval: Duration::from_secs(90),
                spread: 0.25,
                quiet_hours: Some((hm(22, 30), hm(6, 45))),
                utc_offset_minutes: -330,
                budget: BudgetConfig {
                    per_day_bytes: Some(1_500_000_000),
                    per_month_bytes: Some(2048),
                },
                log_level: LogLevel::Warn,
                rotate_key_every: Some(Duration::from_secs(14 * 86_400)),
                ..Config::new("127.0.0.1:4433".into(), [0xab; 32], "127.0.0.1:3479".into())
            }
        );
        // Written back, it loads as the same config.
        let written: ConfigFile = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(written.interval, "90s");
        assert_eq!(written.budget_per_day.as_deref(), Some("1500MB"));
        assert_eq!(written.utc_offset, "-05:30");
        assert_eq!(Config::from_file(written).unwrap(), cfg);
        // A default config is what `init` writes, typed.
        assert_eq!(
            Config::from_file(file()).unwrap(),
            Config::new("127.0.0.1:4433".into(), [0xab; 32], "127.0.0.1:3479".into())
        );
        assert_eq!(
            Config::new("127.0.0.1:4433".into(), [0xab; 32], "127.0.0.1:3479".into()).to_file(),
            file()
        );
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
        // What is written reads back exactly.
        for bytes in [
            1,
            999,
            1000,
            2048,
            50_000_000,
            1 << 30,
            1_500_000_000,
            10u64.pow(18),
        ] {
            assert_eq!(parse_bytes(&format_byte_count(bytes)), Ok(bytes), "{bytes}");
        }
        for secs in [1, 59, 60, 90, 3600, 5400, 86_400, 30 * 86_400, 14 * 86_400] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{secs}");
        }
        assert_eq!(format_duration(Duration::from_secs(900)), "15m");
        assert_eq!(format_duration(Duration::from_secs(14 * 86_400)), "2w");
        for minutes in [-720, -330, 0, 180, 345, 840] {
            assert_eq!(parse_utc_offset(&format_utc_offset(minutes)), Ok(minutes));
        }
        assert_eq!(format_utc_offset(0), "+00:00");
    }

    #[test]
    fn upload_keys_default_to_the_collector_and_are_checked() {
        let mut cfg = Config::new(
            "collector.example.org:443".into(),
            [0xab; 32],
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
        let mut file = cfg.to_file();
        file.collector_tcp = Some("nohost".into());
        file.collector_seal_key = Some("xyz".into());
        let e = Config::from_file(file).unwrap_err().join("; ");
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
        let cfg = Config::new("127.0.0.1:4433".into(), [0xab; 32], "127.0.0.1:3479".into());
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
        assert_eq!(back.collector_pin, [0xab; 32]);
    }

    #[test]
    fn a_config_without_a_reflector_tests_where_the_collector_says() {
        use callwatch_proto::profile::Endpoints;
        let file = ConfigFile {
            platforms: Platform::ALL.to_vec(),
            ..ConfigFile::new("127.0.0.9:4433".into(), "ab".repeat(32), None)
        };
        let text = file.to_toml();
        assert!(
            !text.contains("reflector ="),
            "no reflector written:\n{text}"
        );
        let cfg = Config::from_file(toml::from_str(&text).unwrap()).unwrap();
        assert!(cfg.reflector_from_collector());
        assert_eq!(
            cfg.to_file().reflector,
            None,
            "it stays unset when written back"
        );
        // Before the collector said anything: a clear error naming it.
        let err = cfg
            .spec_with(Platform::Whatsapp, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no reflector known yet") && err.contains("127.0.0.9:4433"),
            "{err}"
        );
        // 3478 could not be bound at the collector: WhatsApp cannot run, with the reason;
        // Telegram goes to the collector's host on the ports it said.
        let bound: Vec<u16> = callwatch_proto::profile::reflector_ports()
            .into_iter()
            .filter(|p| *p != 3478)
            .collect();
        let seal: ReflectorKey = "11".repeat(32).parse().unwrap();
        let learned = Learned {
            endpoints: Endpoints::from_ports(&bound, &[(3478, "address in use".into())]),
            seal_key: Some(seal),
        };
        let err = cfg
            .spec_with(Platform::Whatsapp, Some(&learned))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot serve whatsapp") && err.contains("3478"),
            "{err}"
        );
        let tg = cfg.spec_with(Platform::Telegram, Some(&learned)).unwrap();
        assert_eq!(tg.reflector, "127.0.0.9:599".parse().unwrap());
        assert_eq!(
            tg.arm_addresses(),
            "platform 127.0.0.9:599, control 127.0.0.9:40400"
        );
        assert_eq!(
            tg.reflector_key,
            Some(seal),
            "sealed to the collector's reflector key"
        );
        let generic = cfg.spec_with(Platform::Generic, Some(&learned)).unwrap();
        assert_eq!(generic.arm_addresses(), "platform 127.0.0.9:40401");
        // The config's own ports and key still win over what was learned.
        let mut own = cfg.clone();
        own.test.control_port = Some(40999);
        own.test.reflector_key = Some("22".repeat(32).parse().unwrap());
        let tg = own.spec_with(Platform::Telegram, Some(&learned)).unwrap();
        assert_eq!(
            tg.arm_addresses(),
            "platform 127.0.0.9:599, control 127.0.0.9:40999"
        );
        assert_ne!(tg.reflector_key, Some(seal));
        // A config that names a reflector ignores what was learned.
        let named = Config::new("127.0.0.9:4433".into(), [0xab; 32], "127.0.0.8:3479".into());
        let spec = named.spec_with(Platform::Generic, Some(&learned)).unwrap();
        assert_eq!(spec.reflector, "127.0.0.8:3479".parse().unwrap());
        // An IPv6 collector keeps its brackets.
        let v6 = Config {
            collector: "[::1]:4433".into(),
            ..cfg
        };
        let spec = v6.spec_with(Platform::Generic, Some(&learned)).unwrap();
        assert_eq!(spec.reflector, "[::1]:40401".parse().unwrap());
    }
}
