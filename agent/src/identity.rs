//! The agent's signing identity: an Ed25519 key in a file only its owner can read.

use anyhow::{bail, Context, Result};
use ed25519_dalek::SigningKey;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Creates a new key at `path` (mode 0600). Refuses to replace an existing key unless `force`:
/// a new key unlinks every past report from the agent's future ones.
pub fn create_key(path: &Path, force: bool) -> Result<SigningKey> {
    if path.exists() && !force {
        bail!(
            "{} already holds a signing key; pass --force to replace it (reports signed with \
             the new key cannot be linked to the old ones)",
            path.display()
        );
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let key = SigningKey::from_bytes(&rand::random());
    // Never a moment with a readable key or a half-written one.
    let text = format!("{}\n", hex::encode(key.to_bytes()));
    callwatch_reflector::files::replace_private(path, text.as_bytes())?;
    Ok(key)
}

/// How old the key at `path` is, from its file's modification time (set when it was written;
/// the key is never rewritten in place). A time in the future counts as new.
pub fn key_age(path: &Path, now: SystemTime) -> Result<Duration> {
    let modified = fs::metadata(path)
        .and_then(|m| m.modified())
        .with_context(|| format!("reading the age of {}", path.display()))?;
    Ok(now.duration_since(modified).unwrap_or(Duration::ZERO))
}

/// The rotation period `t` falls in: periods are aligned to the Unix epoch, so a period of a
/// day (the default) turns at 00:00 UTC and an hour's at the full hour. Every agent's key then
/// covers whole UTC days, as the collector counts agents per day: a volunteer is one key in any
/// day's cells, never two.
pub fn rotation_slot(t: SystemTime, period: Duration) -> u64 {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    secs / period.as_secs().max(1)
}

/// Replaces the key at `path` with a new one (atomically, mode 0600) if it was made in an
/// earlier rotation period than `now`'s ([`rotation_slot`]); returns the new key, or `None` if
/// the old one belongs to the current period.
///
/// Rotation unlinks the agent's past reports from its future ones at the collector: good for
/// a volunteer who may be identified by a long history, at the cost of the per-agent
/// continuity (per-agent caps, distinct-agent counts) the collector relies on, which is why it
/// counts agents and caps them per UTC day.
pub fn rotate_if_due(path: &Path, period: Duration, now: SystemTime) -> Result<Option<SigningKey>> {
    let made = now
        .checked_sub(key_age(path, now)?)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    if rotation_slot(made, period) == rotation_slot(now, period) {
        return Ok(None);
    }
    create_key(path, true).map(Some)
}

/// Key rotation as the config asks (`rotate_key_every`), the one place it is done: if the key
/// at `cfg.key_file` is due, replaces it, logs its public half and records the time in `state`.
/// Returns the new key, or `None` if rotation is off or not due.
pub fn rotate_as_configured(
    cfg: &crate::config::Config,
    state: &crate::state::SharedState,
) -> Result<Option<SigningKey>> {
    let Some(period) = cfg.rotate_key_every else {
        return Ok(None);
    };
    let Some(new) = rotate_if_due(&cfg.key_file, period, SystemTime::now())? else {
        return Ok(None);
    };
    tracing::info!(
        key = %hex::encode(new.verifying_key().to_bytes()),
        "signing key rotated (a new rotate_key_every period began); reports from now on cannot \
         be linked to earlier ones"
    );
    state.update(|s| s.key_rotated_at = Some(chrono::Utc::now()));
    Ok(Some(new))
}

/// Loads the key at `path`, refusing one that others can read.
pub fn load_key(path: &Path) -> Result<SigningKey> {
    let meta = fs::metadata(path).with_context(|| {
        format!(
            "reading signing key {} (create one with `callwatch-agent init`)",
            path.display()
        )
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "signing key {} is readable by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        );
    }
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes).with_context(|| {
        format!(
            "{} does not hold a 64-hex-digit Ed25519 key",
            path.display()
        )
    })?;
    Ok(SigningKey::from_bytes(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_private_and_not_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        let k1 = create_key(&path, false).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_key(&path).unwrap().to_bytes(), k1.to_bytes());
        let err = create_key(&path, false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        assert_eq!(load_key(&path).unwrap().to_bytes(), k1.to_bytes());
        let k2 = create_key(&path, true).unwrap();
        assert_ne!(k1.to_bytes(), k2.to_bytes());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_key(&path)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
    }

    #[test]
    fn a_key_is_replaced_when_its_period_turns_atomically_and_stays_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        let old = create_key(&path, false).unwrap();
        let day = Duration::from_secs(86_400);
        let at = |s: &str| SystemTime::from(chrono::DateTime::parse_from_rfc3339(s).unwrap());
        // Made a minute before midnight UTC.
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(at("2026-03-01T23:59:00Z"))
            .unwrap();
        // Still the same UTC day: kept.
        let kept = rotate_if_due(&path, day, at("2026-03-01T23:59:59Z")).unwrap();
        assert!(kept.is_none());
        assert_eq!(load_key(&path).unwrap().to_bytes(), old.to_bytes());
        // One second after midnight (the key is only 61 s old): the day turned, replaced.
        let new = rotate_if_due(&path, day, at("2026-03-02T00:00:01Z"))
            .unwrap()
            .unwrap();
        assert_ne!(new.to_bytes(), old.to_bytes());
        assert_eq!(load_key(&path).unwrap().to_bytes(), new.to_bytes());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Written whole through a temporary file renamed over: none left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("agent.key")]);
        // The new key belongs to the period it was made in.
        let made = SystemTime::now() - key_age(&path, SystemTime::now()).unwrap();
        assert!(rotate_if_due(&path, day, made).unwrap().is_none());
        // Hour periods turn at the full hour, 30-day ones on the epoch's 30-day grid.
        let hour = Duration::from_secs(3600);
        assert_eq!(
            rotation_slot(at("2026-03-01T10:59:59Z"), hour) + 1,
            rotation_slot(at("2026-03-01T11:00:00Z"), hour)
        );
        assert_eq!(
            rotation_slot(at("2026-03-01T00:00:00Z"), 30 * day),
            rotation_slot(at("2026-03-01T23:00:00Z"), 30 * day)
        );
    }
}
