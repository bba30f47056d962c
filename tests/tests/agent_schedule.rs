//! The agent's daemon (`run`) against a real collector and reflector on loopback: reports made
//! while the collector is away all arrive once it is back; a SIGKILL in the middle of an upload
//! loses nothing and stores nothing twice; the data budget stops a test and `status` says why.
//!
//! Every wait polls a state file or the collector's store against a deadline.

use callwatch_collector::domain::StoredReport;
use callwatch_collector::store::{InsertOutcome, ReportStore, SledStore, StoreError};
use callwatch_collector::{serve, serve_with_store};
use callwatch_proto::CallReport;
use callwatch_reflector::{spawn_reflector, Limits, ReflectorHandle};
use callwatch_tests::open_collector_config;
use std::collections::BTreeSet;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn agent_bin() -> PathBuf {
    callwatch_tests::built_binary("callwatch-agent")
}

async fn reflector() -> ReflectorHandle {
    spawn_reflector(&["127.0.0.1:0".parse().unwrap()], Limits::default())
        .await
        .unwrap()
}

/// A free UDP port on loopback (free when this returns; nothing else in the test binds it).
fn free_udp_addr() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `init` a config for `collector`/`pin`/`reflector`, then apply `edits` and `extra` lines.
fn agent_config(
    dir: &Path,
    collector: SocketAddr,
    pin: &str,
    reflector: SocketAddr,
    edits: &[(&str, &str)],
    extra: &str,
) -> PathBuf {
    let config = dir.join("agent.toml");
    let out = Command::new(agent_bin())
        .args(["init", "--accept-risks", "--force", "--config"])
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
    let mut text = std::fs::read_to_string(&config).unwrap();
    for (from, to) in [
        ("duration_secs = 15", "duration_secs = 1"),
        ("spread = 0.5", "spread = 0.0"),
    ]
    .iter()
    .chain(edits)
    {
        assert!(text.contains(from), "{from} not in\n{text}");
        text = text.replace(from, to);
    }
    text.push_str(extra);
    std::fs::write(&config, text).unwrap();
    config
}

/// Rewrites `key = ...` lines of a config.
fn set_keys(config: &Path, keys: &[(&str, &str)]) {
    let text = std::fs::read_to_string(config).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            for (k, v) in keys {
                if l.starts_with(&format!("{k} = ")) {
                    return format!("{k} = {v}");
                }
            }
            l.to_string()
        })
        .collect();
    std::fs::write(config, text.join("\n") + "\n").unwrap();
}

/// A running `run` daemon whose stderr is collected.
struct Agent {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Agent {
    fn start(config: &Path, args: &[&str]) -> Agent {
        let mut child = Command::new(agent_bin())
            .args(["run", "--config"])
            .arg(config)
            .args(args)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Agent { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, and the exit code (bounded wait).
    fn stop(mut self) -> (Option<i32>, String) {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                let until = Instant::now() + Duration::from_secs(2);
                while Instant::now() < until && !self.log().contains("stopping") {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return (status.code(), self.log());
            }
            assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status(config: &Path) -> serde_json::Value {
    let out = Command::new(agent_bin())
        .args(["status", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls `f` every 100 ms until it returns `Some`, failing after `secs` with `what`.
async fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (rows in the store, distinct report ids among them).
fn stored(store: &dyn ReportStore) -> (usize, BTreeSet<String>) {
    let mut rows = 0;
    let mut ids = BTreeSet::new();
    store
        .for_each(&mut |r| {
            rows += 1;
            let report: CallReport = serde_json::from_slice(&r.signed.body).unwrap();
            ids.insert(format!("{:?}", report.id));
            Ok(())
        })
        .unwrap();
    (rows, ids)
}

fn queue_len(dir: &Path) -> usize {
    callwatch_agent::queue::Queue::open(&dir.join("queue"))
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_made_while_the_collector_is_away_all_arrive_once() {
    let r = reflector().await;
    let root = tempfile::tempdir().unwrap();
    let listen = free_udp_addr();
    // Start the collector once for its certificate (and pin), then take it away.
    let first = serve(open_collector_config(root.path(), listen))
        .await
        .unwrap();
    let pin = first.pin.clone();
    first.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(dir.path(), listen, &pin, r.addrs[0], &[], "");
    let agent = Agent::start(&config, &["--every", "2", "--retry-max", "1"]);
    // Several schedule periods with the collector down: tests go on, uploads fail.
    let made_offline = wait_for(60, "three tests with the collector away", || {
        let s = status(&config);
        (s["tests_total"].as_u64()? >= 3 && s["last_upload_error"].is_array())
            .then(|| s["tests_total"].as_u64().unwrap())
    })
    .await;
    // The log reaches us through a reader thread on the agent's stderr, so it can trail the
    // status file that said the upload failed: awaited, not read once.
    wait_for(10, "the agent to log the failed upload", || {
        agent.log().contains("upload failed").then_some(())
    })
    .await;

    let collector = serve(open_collector_config(root.path(), listen))
        .await
        .unwrap();
    assert_eq!(collector.pin, pin, "same certificate after the restart");
    let store = collector.store.clone();
    wait_for(60, "the backlog to arrive", || {
        let s = status(&config);
        (store.len() >= made_offline as usize
            && s["queue_depth"] == 0
            && s["last_upload_error"].is_null())
        .then_some(())
    })
    .await;
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("upload ok"), "{log}");

    let made = status(&config)["tests_total"].as_u64().unwrap() as usize;
    let left = queue_len(dir.path());
    let (rows, ids) = stored(collector.store.as_ref());
    assert_eq!(rows, ids.len(), "a report stored twice");
    assert!(rows >= made_offline as usize);
    assert_eq!(
        rows + left,
        made,
        "every report made is stored or still queued"
    );
    collector.shutdown().await;
}

/// Stores each batch, then (on the `block_at`th batch) holds the acknowledgement until
/// released: the collector has the reports, the agent does not know it.
struct AckHoldingStore {
    inner: SledStore,
    calls: Mutex<usize>,
    block_at: usize,
    stored: Mutex<std::sync::mpsc::Sender<usize>>,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl ReportStore for AckHoldingStore {
    fn insert_batch(
        &self,
        batch: &[callwatch_collector::domain::VerifiedReport],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        let result = self.inner.insert_batch(batch);
        let n = {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            *calls
        };
        if n == self.block_at {
            let _ = self.stored.lock().unwrap().send(n);
            let _ = self.release.lock().unwrap().recv();
        }
        result
    }
    fn for_each(
        &self,
        f: &mut dyn FnMut(StoredReport) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.for_each(f)
    }
    fn aggregate(
        &self,
        axes: &[callwatch_collector::domain::Axis],
        filter: &callwatch_collector::domain::Filter,
        policy: &callwatch_collector::domain::Policy,
    ) -> Result<Vec<callwatch_collector::domain::Cell>, StoreError> {
        self.inner.aggregate(axes, filter, policy)
    }
    fn for_each_since(
        &self,
        since_ms: i64,
        f: &mut dyn FnMut(StoredReport) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.for_each_since(since_ms, f)
    }
    fn evidence(
        &self,
        from: i64,
        to: i64,
        policy: &callwatch_collector::domain::Policy,
        book: &mut callwatch_collector::domain::events::EvidenceBook,
    ) -> Result<(), StoreError> {
        self.inner.evidence(from, to, policy, book)
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_an_upload_loses_nothing_and_stores_nothing_twice() {
    let r = reflector().await;
    let root = tempfile::tempdir().unwrap();
    let cfg = open_collector_config(root.path(), "127.0.0.1:0".parse().unwrap());
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    let (stored_tx, stored_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let store = Arc::new(AckHoldingStore {
        inner: SledStore::open(&cfg.data_dir.join("reports.sled")).unwrap(),
        calls: Mutex::new(0),
        block_at: 1,
        stored: Mutex::new(stored_tx),
        release: Mutex::new(release_rx),
    });
    let collector = serve_with_store(cfg, store.clone()).await.unwrap();

    // Three reports made while no collector answers.
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(
        dir.path(),
        free_udp_addr(),
        &"ab".repeat(32),
        r.addrs[0],
        &[],
        "",
    );
    let path = config.clone();
    tokio::task::spawn_blocking(move || {
        for _ in 0..3 {
            let out = Command::new(agent_bin())
                .args(["run", "--once", "--config"])
                .arg(&path)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{out:?}");
        }
    })
    .await
    .unwrap();
    assert_eq!(queue_len(dir.path()), 3);

    // Point the agent at the collector, one report per batch, no test for an hour.
    set_keys(
        &config,
        &[
            ("collector", &format!("\"{}\"", collector.quic_addr)),
            ("collector_pin", &format!("\"{}\"", collector.pin)),
            ("upload_batch", "1"),
        ],
    );
    let agent = Agent::start(&config, &["--every", "3600"]);
    // The collector has stored the first report; its acknowledgement is held back.
    let batch = tokio::task::spawn_blocking(move || {
        stored_rx.recv_timeout(Duration::from_secs(30)).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(batch, 1);
    assert_eq!(store.len(), 1);
    agent.sigkill();
    assert_eq!(
        queue_len(dir.path()),
        3,
        "unacknowledged: the stored report is still queued"
    );
    release_tx.send(()).unwrap();

    let agent = Agent::start(&config, &["--every", "3600"]);
    wait_for(30, "the queue to empty", || {
        let s = status(&config);
        (s["queue_depth"] == 0 && s["last_upload_ok"].is_string()).then_some(())
    })
    .await;
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("duplicate=1"),
        "the re-sent report was recognised: {log}"
    );
    let (rows, ids) = stored(store.as_ref());
    assert_eq!((rows, ids.len()), (3, 3), "none lost, none twice");
    assert_eq!(queue_len(dir.path()), 0);
    collector.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_smaller_than_two_tests_stops_the_second_and_status_says_why() {
    let r = reflector().await;
    let dir = tempfile::tempdir().unwrap();
    // A 1 s generic test: 50 probes each way of 172 + 28 bytes = 20 kB. Room for one.
    let config = agent_config(
        dir.path(),
        free_udp_addr(),
        &"ab".repeat(32),
        r.addrs[0],
        &[],
        "budget_per_day = \"30kB\"\n",
    );
    let agent = Agent::start(&config, &["--every", "1", "--retry-max", "60"]);
    let s = wait_for(60, "a test skipped for the budget", || {
        let s = status(&config);
        s["last_skip"].is_array().then_some(s)
    })
    .await;
    let (code, log) = agent.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(s["tests_total"], 1, "{s}");
    let why = s["last_skip"][1].as_str().unwrap();
    assert!(why.contains("daily data budget"), "{why}");
    assert!(why.contains("30 kB"), "{why}");
    assert!(log.contains("test skipped: daily data budget"), "{log}");
    let used = s["data_used_today_bytes"].as_u64().unwrap();
    assert!((15_000..=30_000).contains(&used), "{used}");
    assert_eq!(s["data_budget_day_bytes"], 30_000);
    let text = Command::new(agent_bin())
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("last skipped test"), "{text}");
    assert!(text.contains("daily data budget"), "{text}");

    // A restart remembers what was used: still no second test.
    let first_skip = s["last_skip"][0].as_str().unwrap().to_string();
    let agent = Agent::start(&config, &["--every", "1", "--retry-max", "60"]);
    let s = wait_for(60, "another skip after the restart", || {
        let s = status(&config);
        (s["last_skip"][0].as_str()? != first_skip).then_some(s)
    })
    .await;
    agent.stop();
    assert_eq!(s["tests_total"], 1, "budget forgotten on restart: {s}");
}
