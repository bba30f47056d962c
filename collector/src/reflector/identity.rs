//! The reflector's long-term key: the static X25519 key agents seal their platform arms to.
//!
//! Kept in the collector's data folder as `reflector.key` (32 random bytes, owner-only), with its
//! public half in `reflector.pub` (64 hex digits, what agents put in `reflector_key`). Made on
//! first start; a lost key file means a new key, which every agent must then be given.

use crate::cert::{ensure_private_dir, write_private};
use anyhow::{bail, Context, Result};
use callwatch_proto::seal::ReflectorSecret;
use sha2::{Digest, Sha256};
use std::fs;
use std::path::Path;

pub const KEY_FILE: &str = "reflector.key";
pub const PUB_FILE: &str = "reflector.pub";
const SEAL_LABEL: &[u8] = b"callwatch reflector seal key";

/// Loads the reflector key from `dir`, creating it (and `reflector.pub`) on first start.
pub fn load_or_create(dir: &Path) -> Result<ReflectorSecret> {
    ensure_private_dir(dir)?;
    let key_path = dir.join(KEY_FILE);
    if !key_path.exists() {
        let seed: [u8; 32] = rand::random();
        write_private(&key_path, &seed)?;
    }
    let seed = fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let Ok(seed) = <[u8; 32]>::try_from(seed.as_slice()) else {
        bail!(
            "{} holds {} bytes, not the 32 of a reflector key; remove it to make a new key \
             (agents will then need the new reflector.pub)",
            key_path.display(),
            seed.len()
        );
    };
    let secret = ReflectorSecret::from_bytes(
        Sha256::new()
            .chain_update(SEAL_LABEL)
            .chain_update(seed)
            .finalize()
            .into(),
    );
    let pub_path = dir.join(PUB_FILE);
    fs::write(&pub_path, format!("{}\n", secret.public()))
        .with_context(|| format!("writing {}", pub_path.display()))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_survives_restarts_is_owner_only_and_refuses_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = load_or_create(&data).unwrap().public();
        assert_eq!(load_or_create(&data).unwrap().public(), first);
        let mode = fs::metadata(data.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "reflector.key is owner-only");
        let published = fs::read_to_string(data.join(PUB_FILE)).unwrap();
        assert_eq!(published.trim(), first.to_hex());
        fs::write(data.join(KEY_FILE), b"short").unwrap();
        let err = load_or_create(&data).unwrap_err().to_string();
        assert!(
            err.contains("5 bytes") && err.contains("reflector.key"),
            "{err}"
        );
    }
}
