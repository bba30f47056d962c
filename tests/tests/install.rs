//! The volunteer's install script, run for real (as root, as CI runs): it creates the service
//! user, a config and an owner-only key that belong to that user, and the hardened unit.
//!
//! Needs root: without it the test fails, unless `CALLWATCH_SKIP_ROOT=1` says to skip it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

#[test]
fn install_script_creates_user_private_key_and_hardened_unit() {
    if euid() != 0 {
        callwatch_tests::cannot_run_here(
            callwatch_tests::SKIP_ROOT,
            "the install script needs root (it creates a system user; CI runs as root)",
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    // The service user must be able to reach its state folder inside the temporary folder.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = root.path().join("state");
    let units = root.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/install-agent.sh");
    let run = |extra: &[&str]| {
        Command::new("sh")
            .arg(&script)
            .args([
                "--collector",
                "collector.example:4433",
                "--pin",
                &"12".repeat(32),
            ])
            .arg("--bin")
            .arg(callwatch_tests::built_binary("callwatch-agent"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--unit-dir")
            .arg(&units)
            .arg("--no-start")
            .arg("--accept-risks")
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uid = |name: &str| {
        let out = Command::new("id").args(["-u", name]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    let callwatch = uid("callwatch");
    assert_ne!(callwatch, 0);
    for (file, mode) in [("agent.key", 0o600), ("agent.toml", 0o600)] {
        let meta = std::fs::metadata(state.join(file)).unwrap();
        assert_eq!(meta.uid(), callwatch, "{file} belongs to the service user");
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file} mode");
    }
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let unit = std::fs::read_to_string(units.join("callwatch-agent.service")).unwrap();
    for line in [
        "User=callwatch",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    assert!(unit.contains(&format!("--config {}/agent.toml", state.display())));
    // Run again: the key is kept unless --force.
    let key = std::fs::read(state.join("agent.key")).unwrap();
    assert!(!run(&[]).status.success());
    assert_eq!(std::fs::read(state.join("agent.key")).unwrap(), key);
    assert!(run(&["--force"]).status.success());
    assert_ne!(std::fs::read(state.join("agent.key")).unwrap(), key);
    // Missing arguments are named.
    let out = Command::new("sh").arg(&script).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--collector"));
}

fn euid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
