//! The reflector's long-term key: the static X25519 key agents seal their platform arms to.
//!
//! Kept in the reflector's data folder (the collector's, when `serve` embeds the reflector) as `reflector.key` (32 random bytes, owner-only), with its
//! public half in `reflector.pub` (64 hex digits, what agents put in `reflector_key`). Made on
//! first start; a lost key file means a new key, which every agent must then be given.
//!
//! The reflector's Ed25519 attestation key (region attestations, [`callwatch_proto::attest`]) is
//! derived from the same seed under another label; its public half is in `reflector-attest.pub`
//! (64 hex digits), the key a collector needs to accept a standalone reflector's attestations.

use crate::files::{ensure_private_dir, write_private};
use anyhow::{bail, Context, Result};
use callwatch_proto::seal::ReflectorSecret;
use sha2::{Digest, Sha256};
use std::fs;
use std::path::Path;

pub const KEY_FILE: &str = "reflector.key";
pub const PUB_FILE: &str = "reflector.pub";
pub const ATTEST_PUB_FILE: &str = "reflector-attest.pub";
const SEAL_LABEL: &[u8] = b"callwatch reflector seal key";
const ATTEST_LABEL: &[u8] = b"callwatch reflector attest key";

/// Loads the reflector key from `dir`, creating it (and `reflector.pub`) on first start.
pub fn load_or_create(dir: &Path) -> Result<ReflectorSecret> {
    let seed = load_seed(dir)?;
    let secret = ReflectorSecret::from_bytes(derive(SEAL_LABEL, &seed));
    let pub_path = dir.join(PUB_FILE);
    fs::write(&pub_path, format!("{}\n", secret.public()))
        .with_context(|| format!("writing {}", pub_path.display()))?;
    Ok(secret)
}

/// The reflector's Ed25519 attestation key, from the same seed as [`load_or_create`] (created on
/// first start), with its public half written to `reflector-attest.pub`.
pub fn load_or_create_attestation(dir: &Path) -> Result<ed25519_dalek::SigningKey> {
    let seed = load_seed(dir)?;
    let key = ed25519_dalek::SigningKey::from_bytes(&derive(ATTEST_LABEL, &seed));
    let pub_path = dir.join(ATTEST_PUB_FILE);
    fs::write(
        &pub_path,
        format!("{}\n", hex::encode(key.verifying_key().as_bytes())),
    )
    .with_context(|| format!("writing {}", pub_path.display()))?;
    Ok(key)
}

fn derive(label: &[u8], seed: &[u8; 32]) -> [u8; 32] {
    Sha256::new()
        .chain_update(label)
        .chain_update(seed)
        .finalize()
        .into()
}

fn load_seed(dir: &Path) -> Result<[u8; 32]> {
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
    Ok(seed)
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
        // The attestation key: same seed, another key, published, stable.
        let attest = load_or_create_attestation(&data).unwrap().verifying_key();
        assert_ne!(hex::encode(attest.as_bytes()), first.to_hex());
        assert_eq!(
            load_or_create_attestation(&data).unwrap().verifying_key(),
            attest
        );
        let published = fs::read_to_string(data.join(ATTEST_PUB_FILE)).unwrap();
        assert_eq!(published.trim(), hex::encode(attest.as_bytes()));
        fs::write(data.join(KEY_FILE), b"short").unwrap();
        let err = load_or_create(&data).unwrap_err().to_string();
        assert!(
            err.contains("5 bytes") && err.contains("reflector.key"),
            "{err}"
        );
    }
}
