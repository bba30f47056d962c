//! Owner-only files and folders: where callwatch keeps secret keys.
//!
//! The reflector's key file ([`crate::identity`]) and the collector's certificate key and
//! carry-out key are written with these, so that every secret file is made one way (created new
//! with mode 0600, synced; its folder created with mode 0700). They live in this crate because
//! it is the lowest one that keeps a secret file, and the collector depends on it anyway;
//! `callwatch-proto` does no I/O.

use anyhow::{Context, Result};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to a new file readable only by its owner (mode 0600), synced to disk. Fails if
/// the file exists (a key is never overwritten by accident).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Replaces `path` with `bytes` atomically, owner-only: written to a new `path.tmp` (mode 0600,
/// a stale one removed first), synced, then renamed over `path` — never a moment with a readable
/// or half-written file. For files rewritten in place (the agent's key on rotation, its state).
pub fn replace_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    write_private(&tmp, bytes)?;
    fs::rename(&tmp, path).with_context(|| format!("installing {}", path.display()))
}

/// Creates `dir` (owner-only) if it does not exist.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_file_is_owner_only_in_an_owner_only_folder_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        ensure_private_dir(&data).unwrap();
        let mode = fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let key = data.join("secret");
        write_private(&key, b"one").unwrap();
        let mode = fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = write_private(&key, b"two").unwrap_err();
        assert!(format!("{err:#}").contains("creating"), "{err:#}");
        assert_eq!(fs::read(&key).unwrap(), b"one");
    }

    #[test]
    fn a_replaced_private_file_is_whole_owner_only_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        fs::write(&state, "old, world-readable").unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(dir.path().join("state.tmp"), "a stale temporary").unwrap();
        replace_private(&state, b"new").unwrap();
        assert_eq!(fs::read(&state).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!dir.path().join("state.tmp").exists());
    }
}
