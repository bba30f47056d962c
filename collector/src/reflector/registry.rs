//! Standalone reflectors registered with a collector: `DATA/reflectors.json` (owner-only,
//! replaced atomically on every change).
//!
//! An operator runs reflectors elsewhere (`callwatch-reflector`), each with its own key,
//! and registers each one here by name with its attestation key (`reflector-attest.pub`), and
//! optionally its address and sealing key (`reflector.pub`) for agents. Ingest and import accept
//! region attestations signed by the collector's own reflector key and by every registered key
//! that is not revoked ([`crate::attest::AttestKeys::load`]); agents learn the same list
//! ([`directory`]). A revoked entry stays in the file (its key can never be registered again)
//! so its history is kept and its key stays refused.

use anyhow::{bail, Context, Result};
use callwatch_proto::seal::ReflectorKey;
use callwatch_proto::upload::ReflectorInfo;
use callwatch_reflector::files::ensure_private_dir;
use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// The registry's file in the collector's data folder.
pub const FILE: &str = "reflectors.json";
/// The name the collector's own reflector goes by in the list agents get; not registrable.
pub const OWN_NAME: &str = callwatch_proto::upload::OWN_REFLECTOR;
/// Most entries (revoked ones included) a registry holds.
pub const MAX_ENTRIES: usize = 200;

/// One registered reflector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    /// Ed25519 attestation key, 64 hex digits.
    pub attest_key: String,
    /// `host:port` (UDP) agents reach it at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// X25519 sealing key, 64 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_key: Option<String>,
    pub added_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Entry {
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }

    /// The attestation key (checked when the entry was added and when the file is read).
    pub fn verifying_key(&self) -> Result<VerifyingKey> {
        parse_attest_key(&self.attest_key)
    }

    /// What agents are told about it.
    pub fn info(&self) -> Result<ReflectorInfo> {
        Ok(ReflectorInfo {
            name: self.name.clone(),
            address: self.address.clone(),
            seal_key: match &self.seal_key {
                Some(k) => Some(parse_seal_key(k)?.0),
                None => None,
            },
            attest_key: self.verifying_key()?.to_bytes(),
        })
    }
}

/// The registry file's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    pub reflectors: Vec<Entry>,
}

/// What to register.
#[derive(Clone, Debug, Default)]
pub struct NewReflector {
    pub name: String,
    pub attest_key: String,
    pub address: Option<String>,
    pub seal_key: Option<String>,
}

/// The path of the registry in `data`.
pub fn path(data: &Path) -> PathBuf {
    data.join(FILE)
}

/// An Ed25519 attestation key from its 64 hex digits (a `reflector-attest.pub` file's content).
pub fn parse_attest_key(s: &str) -> Result<VerifyingKey> {
    let s = s.trim();
    if s.len() != 64 {
        bail!(
            "expected the 64 hex digits of the reflector's attestation key (its \
             reflector-attest.pub file), got {} characters",
            s.len()
        );
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(s, &mut bytes).map_err(|e| anyhow::anyhow!("not hex: {e}"))?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| anyhow::anyhow!("not an Ed25519 public key (not a curve point)"))?;
    if key.is_weak() {
        bail!("not a usable Ed25519 public key (a small-order point)");
    }
    Ok(key)
}

/// An X25519 sealing key from its 64 hex digits (a `reflector.pub` file's content).
pub fn parse_seal_key(s: &str) -> Result<ReflectorKey> {
    s.parse::<ReflectorKey>()
        .map_err(|e| anyhow::anyhow!("seal key: {e}"))
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        bail!("reflector name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'");
    }
    if name == OWN_NAME {
        bail!("reflector name {OWN_NAME:?} is the collector's own reflector; choose another");
    }
    Ok(())
}

fn check_address(addr: &str) -> Result<()> {
    let bad = || {
        anyhow::anyhow!("address {addr:?}: expected HOST:PORT (e.g. reflector.example.org:3479)")
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty()
        || port == 0
        || host.len() > 253
        || host.chars().any(|c| c.is_whitespace() || c == '/')
    {
        return Err(bad());
    }
    Ok(())
}

impl Registry {
    /// Reads the registry in `data`; a missing file is an empty registry.
    pub fn load(data: &Path) -> Result<Registry> {
        let path = path(data);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Registry::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let reg: Registry = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a reflector registry", path.display()))?;
        for e in &reg.reflectors {
            e.verifying_key()
                .with_context(|| format!("{}: reflector {:?}", path.display(), e.name))?;
        }
        Ok(reg)
    }

    /// Writes the registry to `data` atomically (a temporary file, owner-only, synced, then
    /// renamed over the old one).
    pub fn save(&self, data: &Path) -> Result<()> {
        ensure_private_dir(data)?;
        let mut text = serde_json::to_vec_pretty(self)?;
        text.push(b'\n');
        callwatch_reflector::files::replace_private(&path(data), &text)
    }

    /// The entries that are not revoked.
    pub fn active(&self) -> impl Iterator<Item = &Entry> {
        self.reflectors.iter().filter(|e| e.is_active())
    }

    /// Adds a reflector; refuses a bad key, name or address, a name used before (revoked ones
    /// included) and a key registered before. Changes nothing on error.
    pub fn add(&mut self, new: NewReflector, now: DateTime<Utc>) -> Result<&Entry> {
        check_name(&new.name)?;
        let key = parse_attest_key(&new.attest_key)
            .with_context(|| format!("attestation key {:?}", new.attest_key.trim()))?;
        let seal_key = match &new.seal_key {
            Some(k) => Some(parse_seal_key(k)?.to_hex()),
            None => None,
        };
        if let Some(a) = &new.address {
            check_address(a)?;
        }
        if let Some(e) = self.reflectors.iter().find(|e| e.name == new.name) {
            match e.revoked_at {
                None => bail!("a reflector named {:?} is already registered", new.name),
                Some(t) => bail!(
                    "the name {:?} belonged to a reflector revoked at {}; names are not reused, \
                     choose another",
                    new.name,
                    t.to_rfc3339()
                ),
            }
        }
        let hex_key = hex::encode(key.as_bytes());
        if let Some(e) = self.reflectors.iter().find(|e| e.attest_key == hex_key) {
            match e.revoked_at {
                None => bail!("this attestation key is already registered as {:?}", e.name),
                Some(_) => bail!(
                    "this attestation key was revoked (as {:?}) and cannot be registered again; \
                     give the reflector a new key (a new reflector.key)",
                    e.name
                ),
            }
        }
        if self.reflectors.len() >= MAX_ENTRIES {
            bail!("the registry is full ({MAX_ENTRIES} entries)");
        }
        self.reflectors.push(Entry {
            name: new.name,
            attest_key: hex_key,
            address: new.address,
            seal_key,
            added_at: now,
            revoked_at: None,
        });
        Ok(self.reflectors.last().expect("just pushed"))
    }

    /// Revokes the reflector `name`: its attestations are refused from now on. Changes nothing
    /// on error (unknown name, already revoked).
    pub fn revoke(&mut self, name: &str, now: DateTime<Utc>) -> Result<&Entry> {
        let names: Vec<&str> = self.active().map(|e| e.name.as_str()).collect();
        let known = if names.is_empty() {
            "none is registered".to_string()
        } else {
            format!("registered: {}", names.join(", "))
        };
        let Some(e) = self.reflectors.iter_mut().find(|e| e.name == name) else {
            bail!("no reflector named {name:?} ({known})");
        };
        if let Some(t) = e.revoked_at {
            bail!(
                "reflector {name:?} was already revoked at {}",
                t.to_rfc3339()
            );
        }
        e.revoked_at = Some(now);
        Ok(e)
    }
}

/// `reflector add`: registers a reflector in `data`'s registry. Nothing changes on error.
pub fn add(data: &Path, new: NewReflector) -> Result<Entry> {
    let mut reg = Registry::load(data)?;
    let entry = reg.add(new, Utc::now())?.clone();
    reg.save(data)?;
    Ok(entry)
}

/// `reflector revoke`: revokes `name` in `data`'s registry. Nothing changes on error.
pub fn revoke(data: &Path, name: &str) -> Result<Entry> {
    let mut reg = Registry::load(data)?;
    let entry = reg.revoke(name, Utc::now())?.clone();
    reg.save(data)?;
    Ok(entry)
}

/// `reflector list` as text: one line per reflector, revoked ones marked.
pub fn render(reg: &Registry) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if reg.reflectors.is_empty() {
        out.push_str("no standalone reflectors registered\n");
    }
    for e in &reg.reflectors {
        let _ = write!(
            out,
            "{}  attest {}  address {}  seal {}  added {}",
            e.name,
            e.attest_key,
            e.address.as_deref().unwrap_or("-"),
            e.seal_key.as_deref().unwrap_or("-"),
            e.added_at.format("%Y-%m-%d %H:%M UTC"),
        );
        match e.revoked_at {
            Some(t) => {
                let _ = writeln!(out, "  REVOKED {}", t.format("%Y-%m-%d %H:%M UTC"));
            }
            None => out.push('\n'),
        }
    }
    out
}

/// What a collector tells agents about its reflectors: its own (`own`, when it runs one) and
/// every registered one that is not revoked, read from the registry on each call so that
/// `reflector add`/`revoke` take effect without a restart.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    pub own: Option<ReflectorInfo>,
    /// The collector's data folder (holding the registry); `None`: no registry.
    pub data: Option<PathBuf>,
}

impl Directory {
    /// The list, own first; a registry that cannot be read is logged and left out.
    pub fn list(&self) -> Vec<ReflectorInfo> {
        let mut out: Vec<ReflectorInfo> = self.own.iter().cloned().collect();
        if let Some(data) = &self.data {
            match Registry::load(data) {
                Ok(reg) => out.extend(reg.active().filter_map(|e| e.info().ok())),
                Err(e) => tracing::warn!("reflector list for agents: {e:#}"),
            }
        }
        out.truncate(callwatch_proto::upload::MAX_REFLECTORS);
        out
    }
}

/// The directory of a collector with data folder `data` whose own reflector listens on
/// `addrs` with sealing key `seal` and attestation key `attest`. An unspecified bound address
/// (0.0.0.0) is not an address agents can use: the own entry then has none (agents use their
/// configured reflector).
pub fn directory(
    data: &Path,
    addrs: &[std::net::SocketAddr],
    seal: ReflectorKey,
    attest: &VerifyingKey,
) -> Directory {
    Directory {
        own: Some(ReflectorInfo {
            name: OWN_NAME.into(),
            address: addrs
                .first()
                .filter(|a| !a.ip().is_unspecified())
                .map(|a| a.to_string()),
            seal_key: Some(seal.0),
            attest_key: attest.to_bytes(),
        }),
        data: Some(data.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use std::os::unix::fs::PermissionsExt;

    fn key(n: u8) -> String {
        hex::encode(SigningKey::from_bytes(&[n; 32]).verifying_key().as_bytes())
    }

    fn new(name: &str, n: u8) -> NewReflector {
        NewReflector {
            name: name.into(),
            attest_key: key(n),
            ..Default::default()
        }
    }

    #[test]
    fn add_revoke_list_and_refusals_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert!(Registry::load(&data).unwrap().reflectors.is_empty());
        let e = add(
            &data,
            NewReflector {
                address: Some("192.0.2.7:3479".into()),
                ..new("tallinn-1", 1)
            },
        )
        .unwrap();
        assert!(e.is_active());
        let mode = fs::metadata(path(&data)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "reflectors.json is owner-only");
        let before = fs::read(path(&data)).unwrap();
        for (bad, want) in [
            (new("tallinn-1", 2), "already registered"),
            (new("riga", 1), "already registered as \"tallinn-1\""),
            (new("collector", 3), "collector's own"),
            (new("has space", 3), "letters, digits"),
            (
                NewReflector {
                    attest_key: "abc".into(),
                    ..new("x", 0)
                },
                "64 hex digits",
            ),
            (
                NewReflector {
                    attest_key: "zz".repeat(32),
                    ..new("x", 0)
                },
                "not hex",
            ),
            (
                NewReflector {
                    // A small-order point (the identity).
                    attest_key: format!("01{}", "00".repeat(31)),
                    ..new("x", 0)
                },
                "small-order",
            ),
            (
                NewReflector {
                    address: Some("no-port".into()),
                    ..new("x", 4)
                },
                "HOST:PORT",
            ),
            (
                NewReflector {
                    seal_key: Some("00".repeat(32)),
                    ..new("x", 4)
                },
                "low-order",
            ),
        ] {
            let err = format!("{:#}", add(&data, bad).unwrap_err());
            assert!(err.contains(want), "{err} (wanted {want})");
        }
        let err = revoke(&data, "nobody").unwrap_err().to_string();
        assert!(err.contains("no reflector named \"nobody\""), "{err}");
        assert!(err.contains("tallinn-1"), "{err}");
        assert_eq!(fs::read(path(&data)).unwrap(), before, "nothing changed");

        revoke(&data, "tallinn-1").unwrap();
        let reg = Registry::load(&data).unwrap();
        assert_eq!(reg.active().count(), 0);
        assert!(render(&reg).contains("REVOKED"));
        let err = revoke(&data, "tallinn-1").unwrap_err().to_string();
        assert!(err.contains("already revoked"), "{err}");
        let err = add(&data, new("tallinn-2", 1)).unwrap_err().to_string();
        assert!(err.contains("was revoked"), "{err}");
        let err = add(&data, new("tallinn-1", 5)).unwrap_err().to_string();
        assert!(err.contains("not reused"), "{err}");
        // The directory lists only what is not revoked, own first.
        add(&data, new("riga", 6)).unwrap();
        let own = SigningKey::from_bytes(&[9; 32]).verifying_key();
        let d = directory(
            &data,
            &["0.0.0.0:3479".parse().unwrap()],
            ReflectorKey([7; 32]),
            &own,
        );
        let names: Vec<_> = d.list().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["collector", "riga"]);
        assert_eq!(d.list()[0].address, None);
    }
}
