//! Researcher tokens for the full raw export: `DATA/tokens.json` (owner-only, replaced
//! atomically on every change).
//!
//! The public `/api/v1/reports` is redacted ([`crate::export::PublicRecord`]); the full one
//! (agent keys, signatures, exact signed bodies, arrival to the millisecond) answers only a
//! request that carries `Authorization: Bearer <token>` with a token the operator issued
//! (`callwatch-collector token add NAME`). A token is 32 random bytes, shown once as
//! `cwt_` and 64 hex digits; the file keeps only its SHA-256, its name and the day it was made.
//! Revoking removes the entry. The HTTP API reads the file on every full-export request (one
//! small read), so an addition or a revocation applies from the next request, without a restart.

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The token file in the collector's data folder.
pub const FILE: &str = "tokens.json";
/// What every token starts with (so a leaked one is recognisable in a scan).
pub const PREFIX: &str = "cwt_";
/// Most tokens a file may hold.
pub const MAX_TOKENS: usize = 1000;

/// One issued token, as the file keeps it: never the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    /// SHA-256 of the token's text, 64 hex digits.
    pub sha256: String,
    /// The UTC day it was issued, `YYYY-MM-DD`.
    pub created: String,
}

/// The token file's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    pub tokens: Vec<TokenEntry>,
}

/// The path of the token file in `data`.
pub fn path(data: &Path) -> PathBuf {
    data.join(FILE)
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if !ok {
        bail!("token name {name:?}: use 1 to 64 letters, digits, '-', '_', '.' or '@'");
    }
    Ok(())
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality of two digests in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    /// Reads the token file in `data`; a missing file holds no token. A file others may read
    /// or write, or one that is not a token file, is an error naming it.
    pub fn load(data: &Path) -> Result<Tokens> {
        let path = path(data);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tokens::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{} has mode {mode:03o}: others may read or change the researcher tokens; \
                 it must be owner-only (chmod 600 {})",
                path.display(),
                path.display()
            );
        }
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let tokens: Tokens = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not a token file (damaged? restore it from a backup, or remove it and \
                 issue the tokens again)",
                path.display()
            )
        })?;
        for t in &tokens.tokens {
            let ok = t.sha256.len() == 64 && t.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok || check_name(&t.name).is_err() {
                bail!(
                    "{} is damaged: the entry {:?} is not a name and a SHA-256",
                    path.display(),
                    t.name
                );
            }
        }
        Ok(tokens)
    }

    /// Writes the file to `data` atomically (a temporary file, owner-only, synced, then renamed
    /// over the old one).
    pub fn save(&self, data: &Path) -> Result<()> {
        callwatch_reflector::files::ensure_private_dir(data)?;
        let mut text = serde_json::to_vec_pretty(self)?;
        text.push(b'\n');
        callwatch_reflector::files::replace_private(&path(data), &text)
    }

    /// Issues a token named `name` (unique among the file's names) and returns it: the only
    /// time it is ever seen. Changes nothing on error.
    pub fn add(&mut self, name: &str, now: DateTime<Utc>) -> Result<String> {
        check_name(name)?;
        if self.tokens.iter().any(|t| t.name == name) {
            bail!(
                "a token named {name:?} already exists; choose another name, or revoke it first \
                 (callwatch-collector token revoke)"
            );
        }
        if self.tokens.len() >= MAX_TOKENS {
            bail!("the token file is full ({MAX_TOKENS} tokens); revoke some first");
        }
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let token = format!("{PREFIX}{}", hex::encode(secret));
        self.tokens.push(TokenEntry {
            name: name.to_string(),
            sha256: hex::encode(digest(&token)),
            created: now.format("%Y-%m-%d").to_string(),
        });
        Ok(token)
    }

    /// Removes the token named `name`; an unknown name is an error that lists the known ones.
    pub fn revoke(&mut self, name: &str) -> Result<TokenEntry> {
        match self.tokens.iter().position(|t| t.name == name) {
            Some(i) => Ok(self.tokens.remove(i)),
            None => {
                let known: Vec<&str> = self.tokens.iter().map(|t| t.name.as_str()).collect();
                bail!(
                    "no token named {name:?} (known: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )
            }
        }
    }

    /// The name of the token `presented` is, if it is one of the file's. Every entry is
    /// compared, in constant time each, whatever matches.
    pub fn check(&self, presented: &str) -> Option<&str> {
        let d = digest(presented);
        let mut found = None;
        for t in &self.tokens {
            let mut stored = [0u8; 32];
            if hex::decode_to_slice(&t.sha256, &mut stored).is_ok() && same(&d, &stored) {
                found = Some(t.name.as_str());
            }
        }
        found
    }

    /// The list `token list` prints: name and day issued, one a line.
    pub fn render(&self) -> String {
        if self.tokens.is_empty() {
            return "no researcher tokens (issue one with `callwatch-collector token add`)\n"
                .into();
        }
        let mut out = String::from("NAME\tCREATED\n");
        for t in &self.tokens {
            out.push_str(&format!("{}\t{}\n", t.name, t.created));
        }
        out
    }
}

/// `token add`: issues a token in `data` and returns it.
pub fn add(data: &Path, name: &str) -> Result<String> {
    let mut tokens = Tokens::load(data)?;
    let token = tokens.add(name, Utc::now())?;
    tokens.save(data)?;
    Ok(token)
}

/// `token revoke`: removes the token named `name` from `data`.
pub fn revoke(data: &Path, name: &str) -> Result<TokenEntry> {
    let mut tokens = Tokens::load(data)?;
    let gone = tokens.revoke(name)?;
    tokens.save(data)?;
    Ok(gone)
}

/// Whether `presented` (an `Authorization: Bearer` value) is a token issued in `data` and not
/// revoked: reads the file now, so changes apply at once.
pub fn is_valid(data: &Path, presented: &str) -> Result<bool> {
    Ok(Tokens::load(data)?.check(presented).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_kept_only_as_its_hash_and_stops_working_when_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let token = add(&data, "alice").unwrap();
        assert!(token.starts_with(PREFIX) && token.len() == PREFIX.len() + 64);
        let text = fs::read_to_string(path(&data)).unwrap();
        assert!(!text.contains(&token[PREFIX.len()..]), "{text}");
        assert!(text.contains(&hex::encode(digest(&token))));
        let mode = fs::metadata(path(&data)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(is_valid(&data, &token).unwrap());
        assert!(!is_valid(&data, "cwt_00").unwrap());
        let other = add(&data, "bob").unwrap();
        assert_ne!(token, other);
        assert_eq!(
            Tokens::load(&data).unwrap().check(&other),
            Some("bob"),
            "each token is told apart"
        );
        let e = add(&data, "alice").unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        revoke(&data, "alice").unwrap();
        assert!(!is_valid(&data, &token).unwrap());
        assert!(is_valid(&data, &other).unwrap());
        let e = revoke(&data, "carol").unwrap_err().to_string();
        assert!(
            e.contains("no token named \"carol\"") && e.contains("bob"),
            "{e}"
        );
        let e = add(&data, "a b").unwrap_err().to_string();
        assert!(e.contains("token name"), "{e}");
        let list = Tokens::load(&data).unwrap().render();
        assert!(list.contains("bob\t") && !list.contains("alice"), "{list}");
    }

    #[test]
    fn a_token_file_others_can_read_or_that_is_damaged_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        add(&data, "alice").unwrap();
        let file = path(&data);
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let e = format!("{:#}", Tokens::load(&data).unwrap_err());
        assert!(
            e.contains(&file.display().to_string()) && e.contains("644") && e.contains("chmod"),
            "{e}"
        );
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&file, "{\"tokens\": [").unwrap();
        let e = format!("{:#}", Tokens::load(&data).unwrap_err());
        assert!(
            e.contains(&file.display().to_string()) && e.contains("not a token file"),
            "{e}"
        );
        assert!(
            is_valid(&data, "cwt_x").is_err(),
            "never open on a bad file"
        );
    }
}
