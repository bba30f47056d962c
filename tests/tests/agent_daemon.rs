//! The agent as a volunteer leaves it running: stopping cleanly on SIGTERM, a bounded queue
//! while the collector is away, and `status` telling them so.

use callwatch_reflector::{spawn_reflector, Limits, ReflectorHandle};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An agent config pointing at `reflector` and at a collector address where nothing listens,
/// with `edits` (from, to) applied to the text `init` wrote.
fn agent_config(dir: &Path, reflector: &ReflectorHandle, edits: &[(&str, &str)]) -> PathBuf {
    let nobody = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.join("agent.toml");
    callwatch_tests::process::init_agent(
        &config,
        &nobody.to_string(),
        &"ef".repeat(32),
        &reflector.addrs[0].to_string(),
        edits,
        "",
    );
    config
}

async fn reflector() -> ReflectorHandle {
    spawn_reflector(&["127.0.0.1:0".parse().unwrap()], Limits::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_test_stops_the_agent_cleanly_and_quickly() {
    let r = reflector().await;
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(dir.path(), &r, &[]);
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains(&format!("duration_secs = {TEST_SECS}")),
        "init's test length changed"
    );
    let config2 = config.clone();
    let (code, elapsed, rest) = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(callwatch_tests::built_binary("callwatch-agent"))
            .args(["run", "--every", "1", "--config"])
            .arg(&config2)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        // Wait for the test (TEST_SECS long) to start, then stop the agent.
        for line in lines.by_ref() {
            if line.unwrap().contains("starting test") {
                break;
            }
        }
        let t = Instant::now();
        let kill = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        // What it logged after the signal, up to its exit (stderr closes then).
        let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
        let status = child.wait().unwrap();
        (status.code(), t.elapsed(), rest)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{rest:#?}");
    // The running test was abandoned, not waited for: an ordering, not a stopwatch. The
    // agent said it was stopping, and the test neither finished nor left a report.
    assert!(
        rest.iter().any(|l| l.contains("stopping")),
        "no \"stopping\" after the signal: {rest:#?}"
    );
    assert!(
        !rest.iter().any(|l| l.contains("test done")),
        "the test ran to its end: {rest:#?}"
    );
    let status = Command::new(callwatch_tests::built_binary("callwatch-agent"))
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["queue_depth"], 0, "{v}");
    assert_eq!(v["recent_tests"].as_array().map(Vec::len), Some(0), "{v}");
    // And quickly: an agent that let the test run out would exit about TEST_SECS after it
    // logged "starting test"; half of that is a bound no scheduling delay on a loaded machine
    // comes near (stopping takes milliseconds when idle), and the doc's "within a few seconds".
    assert!(
        elapsed < Duration::from_secs(TEST_SECS / 2),
        "took {elapsed:?}"
    );
}

/// The length of the test `init` configures (`duration_secs`), which SIGTERM interrupts.
const TEST_SECS: u64 = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_oldest_and_status_says_so() {
    let r = reflector().await;
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(
        dir.path(),
        &r,
        &[
            ("queue_cap = 10000", "queue_cap = 2"),
            ("duration_secs = 15", "duration_secs = 1"),
        ],
    );
    let config2 = config.clone();
    let logs = tokio::task::spawn_blocking(move || {
        let mut logs = String::new();
        for _ in 0..3 {
            let out = Command::new(callwatch_tests::built_binary("callwatch-agent"))
                .args(["run", "--once", "--config"])
                .arg(&config2)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "collector away");
            logs.push_str(&String::from_utf8_lossy(&out.stderr));
        }
        logs
    })
    .await
    .unwrap();
    assert!(
        logs.contains("queue full: dropped the oldest report(s)"),
        "{logs}"
    );
    let status = Command::new(callwatch_tests::built_binary("callwatch-agent"))
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(status.status.success());
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["queue_depth"], 2);
    assert_eq!(v["queue_dropped_total"], 1);
    assert_eq!(v["recent_tests"].as_array().unwrap().len(), 3);
    assert!(v["last_upload_error"][1]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    let text = Command::new(callwatch_tests::built_binary("callwatch-agent"))
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("1 oldest report(s) dropped"), "{text}");
    assert!(text.contains("last upload FAILED"), "{text}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("state.json"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}
