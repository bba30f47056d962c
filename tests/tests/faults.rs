//! Faults at the collector: killed with SIGKILL in the middle of a large upload, and damaged
//! store files. Real collector processes on loopback, real sled files.

use callwatch_agent::upload::{exchange, pinned_client_config};
use callwatch_proto::upload::{ReportStatus, Response};
use callwatch_proto::{Platform, SignedReport};
use callwatch_tests::http;
use callwatch_tests::process::{start_collector, RunningCollector};
use callwatch_tests::seed::synthetic_report;
use ed25519_dalek::SigningKey;
use rand::SeedableRng;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

/// Every report counts: one agent may send thousands here.
const OPEN: [&str; 6] = [
    "--min-agents",
    "1",
    "--max-per-agent-day",
    "100000",
    "--max-per-prefix-day",
    "100000",
];

fn reports(n: usize) -> Vec<SignedReport> {
    let keys: Vec<SigningKey> = (1..=4u8)
        .map(|i| SigningKey::from_bytes(&[i; 32]))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let now = chrono::Utc::now() - chrono::Duration::hours(1);
    (0..n)
        .map(|i| {
            let platform = Platform::ALL[1 + i % 3];
            let r = synthetic_report(&mut rng, i as u32, platform, now, false);
            SignedReport::sign(&r, &keys[i % keys.len()]).unwrap()
        })
        .collect()
}

fn report_id(s: &SignedReport) -> String {
    let v: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
    format!("{}/{}", hex::encode(&s.key), v["id"].as_str().unwrap())
}

async fn connect(c: &RunningCollector) -> (quinn::Endpoint, quinn::Connection) {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(pinned_client_config(c.pin).unwrap());
    let conn = ep.connect(c.quic, "localhost").unwrap().await.unwrap();
    (ep, conn)
}

/// Every stored report, by "key/id", from the full raw export (with a researcher `token`).
async fn stored_ids(http_addr: SocketAddr, token: &str) -> Vec<String> {
    let (status, body) =
        http::get_bearer(http_addr, "/api/v1/reports?full=true&limit=100000", token)
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    body.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let report: serde_json::Value =
                serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
            format!(
                "{}/{}",
                v["key"].as_str().unwrap(),
                report["id"].as_str().unwrap()
            )
        })
        .collect()
}

/// The sum of report counts over all platform-arm cells.
async fn aggregated(http_addr: SocketAddr) -> u64 {
    let (status, body) = http::get(http_addr, "/api/v1/aggregation?axis_x=platform")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["count"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_large_upload_keeps_every_acknowledged_report_once() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let all = reports(3000);
    let mut c = start_collector(root.path(), &data, &OPEN);
    let (_ep, conn) = connect(&c).await;

    // Upload in batches of 50 on 4 streams at once; SIGKILL once 1000 are acknowledged.
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<String>>();
    let batches: Vec<Vec<SignedReport>> = all.chunks(50).map(|c| c.to_vec()).collect();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(batches));
    let mut uploaders = Vec::new();
    for _ in 0..4 {
        let (queue, conn, acked_tx) = (queue.clone(), conn.clone(), acked_tx.clone());
        uploaders.push(tokio::spawn(async move {
            loop {
                let Some(batch) = queue.lock().unwrap().pop() else {
                    return;
                };
                let ids: Vec<String> = batch.iter().map(report_id).collect();
                match exchange(&conn, batch).await {
                    Ok(Response::Ack { statuses }) => {
                        assert!(statuses.iter().all(|s| *s == ReportStatus::Accepted));
                        let _ = acked_tx.send(ids);
                    }
                    // The collector is gone mid-exchange: not acknowledged.
                    Ok(
                        Response::Error { .. }
                        | Response::SealKey { .. }
                        | Response::Reflectors { .. }
                        | Response::Endpoints(_),
                    )
                    | Err(_) => return,
                }
            }
        }));
    }
    drop(acked_tx);
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut killed = None;
    while let Some(ids) = acked_rx.recv().await {
        acked.extend(ids);
        if acked.len() >= 1000 && killed.is_none() {
            killed = Some(acked.len());
            c.kill();
        }
    }
    for u in uploaders {
        u.await.unwrap();
    }
    let killed_at = killed.expect("the upload reached 1000 acknowledged reports");
    assert!(
        acked.len() < all.len(),
        "the kill came before the end of the upload"
    );

    // Restarted on the same files: every acknowledged report is there, each once, and the
    // aggregate counts each stored report once.
    let c = start_collector(root.path(), &data, &OPEN);
    let token = callwatch_collector::token::add(&data, "faults").unwrap();
    let stored = stored_ids(c.http, &token).await;
    let unique: BTreeSet<String> = stored.iter().cloned().collect();
    assert_eq!(unique.len(), stored.len(), "a report stored twice");
    let lost: Vec<&String> = acked.difference(&unique).collect();
    assert!(lost.is_empty(), "{} acknowledged reports lost", lost.len());
    assert_eq!(aggregated(c.http).await, stored.len() as u64);
    eprintln!(
        "killed after {killed_at} acks; {} acknowledged in all, {} stored",
        acked.len(),
        stored.len()
    );

    // The agent sends everything again: what was stored is a duplicate, the rest is accepted,
    // and nothing is counted twice.
    let (_ep, conn) = connect(&c).await;
    let mut duplicates = 0;
    for batch in all.chunks(100) {
        let Response::Ack { statuses } = exchange(&conn, batch.to_vec()).await.unwrap() else {
            panic!("refused")
        };
        duplicates += statuses
            .iter()
            .filter(|s| **s == ReportStatus::Duplicate)
            .count();
    }
    assert_eq!(duplicates, stored.len());
    assert_eq!(stored_ids(c.http, &token).await.len(), all.len());
    assert_eq!(aggregated(c.http).await, all.len() as u64);
    c.stop();
}

/// Damage done to a store file.
type Harm = Box<dyn Fn(&Path)>;

/// Runs `callwatch-collector export` on `data`; returns (exit code, stderr).
/// Runs `export` on a store; a run that does not end within a minute is killed and fails the
/// test (a store reader that loops forever on damage is the failure this guards against).
fn export(data: &Path) -> (Option<i32>, String) {
    let child = Command::new(callwatch_tests::built_binary("callwatch-collector"))
        .args(["export", "--data"])
        .arg(data)
        // The read-through at open declares the store damaged after this long without progress.
        .env("CALLWATCH_STORE_STALL_SECS", "5")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(out) => {
            let out = out.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("export did not finish within 60 s on {}", data.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_store_files_give_a_clear_error_not_a_panic_or_silent_loss() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let c = start_collector(root.path(), &data, &OPEN);
    let (ep, conn) = connect(&c).await;
    for batch in reports(600).chunks(100) {
        assert!(matches!(
            exchange(&conn, batch.to_vec()).await.unwrap(),
            Response::Ack { .. }
        ));
    }
    conn.close(0u32.into(), b"done");
    ep.wait_idle().await;
    c.stop();
    let (code, err) = export(&data);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("exported 600 reports"), "{err}");

    let db = data.join("reports.sled").join("db");
    let len = std::fs::metadata(&db).unwrap().len();
    // 8 KiB overwritten at these fractions of the log: sled 0.34 loops forever on some of
    // them when asked for `Tree::len` (an iterator that yields the same error again and again);
    // the store reads everything once at open, stops at the first error, and watches for
    // stalls.
    let overwrite = |at: u64| -> Harm {
        Box::new(move |f: &Path| {
            use std::io::{Seek, SeekFrom, Write};
            let mut file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
            file.seek(SeekFrom::Start(at)).unwrap();
            file.write_all(&[0xA5; 8192]).unwrap();
        })
    };
    let damage: [(&str, Harm); 7] = [
        ("overwritten at 5 %", overwrite(len / 20)),
        ("overwritten at 10 %", overwrite(len / 10)),
        ("overwritten at 33 %", overwrite(len / 3)),
        ("overwritten at 60 %", overwrite(len * 6 / 10)),
        ("overwritten at 90 %", overwrite(len * 9 / 10)),
        (
            "truncated to half",
            Box::new(move |f: &Path| {
                let file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
                file.set_len(len / 2).unwrap();
            }),
        ),
        (
            "emptied",
            Box::new(|f: &Path| std::fs::write(f, b"").unwrap()),
        ),
    ];
    for (what, harm) in damage {
        let copy = root.path().join(format!("copy-{}", what.replace(' ', "-")));
        let status = Command::new("cp")
            .arg("-r")
            .arg(&data)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(status.success());
        harm(&copy.join("reports.sled").join("db"));
        let (code, err) = export(&copy);
        let last = err.lines().last().unwrap_or_default();
        if code == Some(0) {
            // sled may read past damage it can prove harmless; then nothing may be missing.
            assert!(err.contains("exported 600 reports"), "{what}: {err}");
        } else {
            assert_eq!(
                code,
                Some(1),
                "{what}: a panic is not an error message: {err}"
            );
            assert!(
                last.contains("damaged") || last.contains("corrupt"),
                "{what}: {last}"
            );
        }
        eprintln!("{what}: exit {code:?}: {last}");
    }
}
