//! The agent when its disk is full: the queue folder and the state file on a 2 MiB tmpfs that a
//! filler file has filled to the last byte.
//!
//! - `run --once` says so in one clear line ("no space left on device"), exits 1, and does not
//!   panic;
//! - once space is freed, the queue opens, holds every report it had acknowledged as queued
//!   before (nothing corrupt), and each of them reaches the collector exactly once.
//!
//! Needs `mount -t tmpfs` (root, or CAP_SYS_ADMIN); without it the test fails, unless
//! `CALLWATCH_SKIP_ROOT=1` says to skip it.

use callwatch_agent::queue::Queue;
use callwatch_collector::serve;
use callwatch_proto::CallReport;
use callwatch_reflector::{spawn_reflector, Limits};
use callwatch_tests::open_collector_config;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A small tmpfs, unmounted (lazily, so an open file cannot keep it) when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes a filler file until the file system refuses with ENOSPC; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
                break;
            }
        }
    }
    // Any byte left over (a partial last chunk) goes too.
    while f.write(&[0u8]).is_ok_and(|n| n == 1) {}
    let _ = f.sync_all();
    path
}

fn agent_bin() -> PathBuf {
    callwatch_tests::built_binary("callwatch-agent")
}

/// An agent config (in `dir`) for the collector and reflector, 1 s tests, its queue folder and
/// state file under `disk`.
fn agent_config(
    dir: &Path,
    collector: SocketAddr,
    pin: &str,
    reflector: SocketAddr,
    disk: &Path,
) -> PathBuf {
    let config = dir.join("agent.toml");
    let out = Command::new(agent_bin())
        .args(["init", "--accept-risks", "--config"])
        .arg(&config)
        .args(["--collector", &collector.to_string(), "--pin", pin])
        .args([
            "--reflector",
            &reflector.to_string(),
            "--platform",
            "generic",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&config).unwrap();
    let keys = [
        ("duration_secs", "1".to_string()),
        ("spread", "0.0".to_string()),
        ("queue_dir", format!("{:?}", disk.join("queue"))),
        ("state_file", format!("{:?}", disk.join("state.json"))),
    ];
    let mut found = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            for (k, v) in &keys {
                if l.starts_with(&format!("{k} = ")) {
                    found += 1;
                    return format!("{k} = {v}");
                }
            }
            l.to_string()
        })
        .collect();
    assert_eq!(found, keys.len(), "keys missing from\n{text}");
    std::fs::write(&config, lines.join("\n") + "\n").unwrap();
    config
}

fn run_once(config: &Path) -> Output {
    Command::new(agent_bin())
        .args(["run", "--once", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

/// Report ids in the queue (the agent must not be running: it holds the queue's lock).
fn queued_ids(queue_dir: &Path) -> (BTreeSet<String>, usize) {
    let q = Queue::open(queue_dir).unwrap();
    let ids = q
        .oldest(100_000)
        .unwrap()
        .iter()
        .map(|(_, r)| report_id(&r.report.body))
        .collect();
    (ids, q.corrupt_len())
}

fn report_id(body: &[u8]) -> String {
    let report: CallReport = serde_json::from_slice(body).unwrap();
    format!("{:?}", report.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_clearly_and_corrupts_nothing_queued() {
    let disk = match Tmpfs::mount("2m") {
        Ok(d) => d,
        Err(e) => {
            callwatch_tests::cannot_run_here(
                callwatch_tests::SKIP_ROOT,
                &format!("cannot mount a tmpfs ({e}); the disk-full test needs root"),
            );
            return;
        }
    };
    let reflector = spawn_reflector(&["127.0.0.1:0".parse().unwrap()], Limits::default())
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let listen = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // The collector once for its certificate (and pin), then away until the end.
    let first = serve(open_collector_config(root.path(), listen))
        .await
        .unwrap();
    let pin = first.pin.clone();
    first.shutdown().await;
    let home = tempfile::tempdir().unwrap();
    let config = agent_config(home.path(), listen, &pin, reflector.addrs[0], disk.path());
    let queue_dir = disk.path().join("queue");

    // One report queued while there is room (the collector is away: exit 2, kept queued).
    // One, not more: sled's second open preallocates room in its log file, and a queue with
    // room inside its own file keeps working on a full disk (correctly, but then nothing here
    // would meet the full disk).
    let config2 = config.clone();
    let out = tokio::task::spawn_blocking(move || run_once(&config2))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // The agent acknowledged it as queued (opening the queue here would be sled's second open).
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("queued=1"),
        "{out:?}"
    );

    // The disk fills up: `run --once` says so in one clear line, exits 1, does not panic.
    // (sled writes when it opens the queue, so that is where it stops, before any test; with
    // room left in sled's file the push would fail later, with "cannot queue the report".)
    let filler = fill(disk.path());
    let config2 = config.clone();
    let out = tokio::task::spawn_blocking(move || run_once(&config2))
        .await
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!("run --once on a full disk ({:?}):\n{log}", out.status);
    assert!(!log.contains("panicked"), "the agent panicked:\n{log}");
    assert!(
        log.contains("cannot open the queue: no space left on device")
            || log.contains("cannot queue the report: no space left on device"),
        "no clear disk-full line:\n{log}"
    );
    assert_eq!(out.status.code(), Some(1), "{log}");

    // Space again: the queue opens clean and still holds the acknowledged report.
    std::fs::remove_file(&filler).unwrap();
    let (before, corrupt) = queued_ids(&queue_dir);
    assert_eq!(corrupt, 0, "corrupt queue entries after the disk was full");
    assert_eq!(
        before.len(),
        1,
        "the acknowledged report was lost: {before:?}"
    );

    // The collector is back: one more cycle uploads everything, each report once.
    let collector = serve(open_collector_config(root.path(), listen))
        .await
        .unwrap();
    let config2 = config.clone();
    let out = tokio::task::spawn_blocking(move || run_once(&config2))
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows = 0;
    let mut stored = BTreeSet::new();
    collector
        .store
        .for_each(&mut |r| {
            rows += 1;
            stored.insert(report_id(&r.signed.body));
            Ok(())
        })
        .unwrap();
    assert_eq!((rows, stored.len()), (2, 2), "each report stored once");
    assert!(
        before.is_subset(&stored),
        "acknowledged reports missing at the collector: {before:?} vs {stored:?}"
    );
    assert_eq!(queued_ids(&queue_dir).0.len(), 0, "the queue was emptied");
    collector.shutdown().await;
}
