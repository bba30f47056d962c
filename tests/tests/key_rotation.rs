//! Key rotation end to end, with the real agent binary and a real collector: a report queued
//! under the old key while the collector is away is still uploaded, signed by the key that made
//! it; the next run rotates the due key (a new key file, owner-only), signs its own report with
//! the new key, and `status` says when the key was rotated. The two keys cannot be linked by
//! anything the collector stores but the volunteer's own choice of network.

use callwatch_reflector::{spawn_reflector, Limits};
use callwatch_tests::seed;
use ed25519_dalek::SigningKey;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

fn agent(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(callwatch_tests::built_binary("callwatch-agent"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// The public key of the agent key file at `path` (64 hex digits of the secret).
fn public_key(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret).unwrap();
    SigningKey::from_bytes(&secret)
        .verifying_key()
        .to_bytes()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_signs_new_reports_and_reports_queued_before_still_arrive() {
    let reflector = spawn_reflector(&["127.0.0.1:0".parse().unwrap()], Limits::default())
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let c = callwatch_collector::serve(seed::config(root.path(), "collector"))
        .await
        .unwrap();
    let dir = root.path().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    let nobody = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    callwatch_tests::process::init_agent(
        &config,
        &nobody.to_string(),
        &c.pin,
        &reflector.addrs[0].to_string(),
        &[("duration_secs = 15", "duration_secs = 1")],
        "rotate_key_every = \"2h\"\n",
    );
    let key_file = dir.join("agent.key");
    let old_key = public_key(&key_file);

    // 1. The collector is away: the test's report waits in the queue, signed by the old key.
    let config2 = config.clone();
    let out = tokio::task::spawn_blocking(move || agent(&["run", "--once"], &config2))
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(public_key(&key_file), old_key, "not due yet: the key stays");

    // 2. Three hours later (the key file's age is its modification time), with the collector
    //    back: the key is due.
    std::fs::File::options()
        .write(true)
        .open(&key_file)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3 * 3600))
        .unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&nobody.to_string(), &c.quic_addr.to_string());
    std::fs::write(&config, text).unwrap();
    let config2 = config.clone();
    let out = tokio::task::spawn_blocking(move || agent(&["run", "--once"], &config2))
        .await
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("signing key rotated"), "{log}");
    let new_key = public_key(&key_file);
    assert_ne!(new_key, old_key, "a new key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the new key is owner-only");

    // Both reports arrived, each under the key that signed it when it was made.
    let mut keys = Vec::new();
    c.store
        .for_each(&mut |r| {
            r.signed.verify().expect("stored reports verify");
            keys.push(r.signed.key.clone());
            Ok(())
        })
        .unwrap();
    keys.sort();
    let mut want = vec![old_key.clone(), new_key.clone()];
    want.sort();
    assert_eq!(
        keys, want,
        "one report per key: the queued one and the new one"
    );

    // `status` says when.
    let out = agent(&["status", "--json"], &config);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(v["key_rotated_at"].clone()).expect("key_rotated_at is set");
    assert!((chrono::Utc::now() - at).num_seconds().abs() < 600, "{at}");
    assert_eq!(v["queue_depth"], 0);
    c.shutdown().await;
}
