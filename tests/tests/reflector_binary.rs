//! The `callwatch-reflector` binary on loopback: a real agent call test against it is answered
//! in full (sealed platform arm, control arm, a region attestation under its key); a key file
//! written before loads as it always did; SIGTERM stops it at once with exit 0; bad arguments
//! are refused naming the flag.

use callwatch_proto::platform::Role;
use callwatch_proto::CallReport;
use callwatch_tests::process::start_reflector_binary;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A `reflector.key` holding 32 bytes of 7, and the public halves it has always given:
/// X25519 of SHA-256("callwatch reflector seal key" ‖ seed) and Ed25519 of SHA-256("callwatch
/// reflector attest key" ‖ seed), computed independently of callwatch (Python's
/// `cryptography`), so a key file made by any earlier version is read the same way.
const SEED: [u8; 32] = [7; 32];
const SEAL_PUB: &str = "867c7e86e90308a5827bfbaa57ddbbdc7d573110eade510bc4badcae76fa4e73";
const ATTEST_PUB: &str = "cd75bf1564a075e5b0d8a627617d3e0bf875e6e295499beb957ce464eb128247";

fn reflector(args: &[&str]) -> Output {
    Command::new(callwatch_tests::built_binary("callwatch-reflector"))
        .args(args)
        .output()
        .expect("running callwatch-reflector")
}

#[test]
fn an_agents_call_test_is_answered_and_sigterm_stops_it_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("reflector");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(data.join("reflector.key"), SEED).unwrap();
    let r = start_reflector_binary(dir.path(), &data, &[]);
    assert_eq!(
        (r.seal_key.as_str(), r.attest_key.as_str()),
        (SEAL_PUB, ATTEST_PUB)
    );
    for (file, key) in [
        ("reflector.pub", SEAL_PUB),
        ("reflector-attest.pub", ATTEST_PUB),
    ] {
        let written = std::fs::read_to_string(data.join(file)).unwrap();
        assert_eq!(written.trim(), key, "{file}");
    }

    // A WhatsApp-shaped test: its platform arm sealed to the printed key, its control arm
    // beside it, both on the reflector's one port.
    let port = r.addr.port().to_string();
    let out = Command::new(callwatch_tests::built_binary("callwatch-agent"))
        .args([
            "test",
            "--platform",
            "whatsapp",
            "--duration",
            "1",
            "--json",
        ])
        .args(["--reflector", &r.addr.to_string()])
        .args(["--platform-port", &port, "--control-port", &port])
        .args(["--reflector-key", &r.seal_key])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: CallReport = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.probes_sealed);
    let roles: Vec<Role> = report.streams.iter().map(|s| s.role).collect();
    assert_eq!(roles, [Role::Platform, Role::Control]);
    for s in &report.streams {
        assert!(
            s.packets_sent >= 40,
            "{:?}: {} sent",
            s.role,
            s.packets_sent
        );
        // Loopback loses nothing: every probe reflected and every reply back.
        assert_eq!(
            (s.packets_reflected, s.packets_received),
            (Some(s.packets_sent), s.packets_sent),
            "{:?}",
            s.role
        );
        assert_eq!(
            (s.loss_up, s.loss_down),
            (Some(0.0), Some(0.0)),
            "{:?}",
            s.role
        );
        let rtt = s.rtt_ms.as_ref().expect("round trip times");
        assert!(rtt.min >= 0.0 && rtt.max < 1000.0, "{rtt:?}");
        assert!(s.jitter_ms.is_some(), "{:?}: jitter", s.role);
    }
    // Attested by the key file's attestation key: ZZ/AS0 without region sources.
    let attestation = report.attestation.as_ref().expect("an attestation");
    assert_eq!((attestation.country.as_str(), attestation.asn), ("ZZ", 0));
    let mut key = [0u8; 32];
    hex::decode_to_slice(ATTEST_PUB, &mut key).unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key).unwrap();
    attestation
        .verify(report.id, report.started_at, chrono::Utc::now(), |_| {
            Some(key)
        })
        .expect("signed with the key file's attestation key");

    // SIGTERM: it exits 0 at once (awaited, at most 5 s).
    let (stdout, stderr) = (r.stdout.clone(), r.stderr.clone());
    let asked = Instant::now();
    let status = r
        .stop_within(Duration::from_secs(5))
        .expect("callwatch-reflector did not stop within 5 s of SIGTERM");
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    println!("stopped {:?} after SIGTERM", asked.elapsed());
    // It printed what an operator needs, and its key file was left as it was.
    let printed = std::fs::read_to_string(stdout).unwrap();
    assert!(
        printed.contains(&format!(
            "reflector key (agents' reflector_key; also in reflector.pub): {SEAL_PUB}"
        )),
        "{printed}"
    );
    assert_eq!(std::fs::read(data.join("reflector.key")).unwrap(), SEED);
}

#[test]
fn bad_arguments_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("r");
    let data = data.to_str().unwrap();
    for (args, flag) in [
        (
            vec!["--data", data, "--reflector", "not-an-address"],
            "--reflector",
        ),
        (vec!["--reflector", "127.0.0.1:0"], "--data"),
        (vec!["--data", data], "--reflector"),
        (
            vec![
                "--data",
                data,
                "--reflector",
                "127.0.0.1:0",
                "--collector-key",
                "zz",
            ],
            "--collector-key",
        ),
        (
            vec![
                "--data",
                data,
                "--reflector",
                "127.0.0.1:0",
                "--colector-key",
                "ab",
            ],
            "--colector-key",
        ),
    ] {
        let out = reflector(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: wanted {flag:?} in {err}");
    }
    // An address it cannot bind: exit 1, the address named…
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let out = reflector(&["--data", data, "--reflector", &taken]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("callwatch-reflector: starting the reflector: UDP")
            && err.contains(&taken)
            && err.contains("another program listens"),
        "{err}"
    );
    // … and a region source that is not one: exit 1, the file named.
    let bogus = dir.path().join("regions.tsv");
    std::fs::write(&bogus, "not a table\n").unwrap();
    let out = reflector(&[
        "--data",
        data,
        "--reflector",
        "127.0.0.1:0",
        "--geo",
        bogus.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("regions.tsv"), "{err}");
}

#[test]
fn help_teaches_with_examples() {
    let out = reflector(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "--data <DIR>",
        "--reflector <ADDR>",
        "--geo <FILE>",
        "--collector-key <HEX>",
        "Examples:",
        "callwatch-reflector --data /var/lib/callwatch-reflector --reflector 0.0.0.0:3479",
        "callwatch-collector reflector add",
        "callwatch-collector reflect",
    ] {
        assert!(help.contains(want), "wanted {want:?} in {help}");
    }
}
