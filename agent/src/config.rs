//! The agent's TOML configuration: what to test, where to upload, and where to keep things.
//!
//! Every mistake is reported with its key, all at once, before anything runs.

use callwatch_proto::Platform;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Collector QUIC address, `host:port`.
    pub collector: String,
    /// SHA-256 fingerprint of the collector's certificate (64 hex digits).
    pub collector_pin: String,
    /// TLS server name to present (the pin is what is checked).
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Reflector UDP address, `host:port`.
    pub reflector: String,
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
}

fn default_server_name() -> String {
    "callwatch-collector".into()
}
fn default_platforms() -> Vec<Platform> {
    vec![Platform::Generic]
}
fn default_duration_secs() -> u32 {
    10
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
            server_name: default_server_name(),
            reflector,
            platforms: default_platforms(),
            duration_secs: default_duration_secs(),
            interval_ms: default_interval_ms(),
            size: None,
            relay_servers: BTreeMap::new(),
            video: false,
            platform_port: None,
            control_port: None,
            bind: None,
            key_file: default_key_file(),
            queue_dir: default_queue_dir(),
            upload_batch: default_upload_batch(),
            queue_cap: default_queue_cap(),
            state_file: default_state_file(),
        }
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
        let base = path.parent().unwrap_or(Path::new("."));
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
        host_port("reflector", &self.reflector, &mut p);
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
        if self.queue_cap == 0 {
            p.push("queue_cap = 0: keep at least one report".into());
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
            ..cfg
        })
        .unwrap();
        for line in written.lines().filter(|l| l.contains(" = ")) {
            let key = line.split(" = ").next().unwrap();
            assert!(text.contains(&format!("{key} = ")), "{key} not documented");
        }
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
        assert_eq!(back.collector, cfg.collector);
        assert_eq!(back.pin_bytes(), Some([0xab; 32]));
    }
}
