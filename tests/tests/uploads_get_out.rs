//! Uploads that get out (issue 19, part 4), on loopback with the real binaries: QUIC that never
//! answers falls back to TLS over TCP (and `status` says so), a refusal does not; a queue carried
//! out in a sealed file imports exactly once, a damaged line alone is rejected, and truncated,
//! garbage or wrongly addressed files are refused whole with nothing stored.
//!
//! The same fallback through a real nftables QUIC block in network namespaces is
//! `quic_block_lab.rs`.

use callwatch_agent::config::ConfigFile;
use callwatch_agent::queue::Queue;
use callwatch_agent::upload::{upload_queue, Transport, UploadError, UploadTarget};
use callwatch_collector::serve;
use callwatch_proto::{Platform, SignedReport};
use callwatch_tests::process::start_collector;
use callwatch_tests::{built_binary, open_collector_config};
use ed25519_dalek::SigningKey;
use rand::SeedableRng;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A loopback UDP port where a socket is bound but nothing ever reads: QUIC Initials sent there
/// vanish without an answer or an ICMP error, as behind a censor that drops them.
fn black_hole() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

/// An agent config in `dir` (queue, key and state beside it), 1 s tests.
fn agent_config(
    dir: &Path,
    quic: SocketAddr,
    tcp: Option<SocketAddr>,
    pin: &str,
    reflector: SocketAddr,
    seal_key: Option<String>,
) -> PathBuf {
    let mut cfg = ConfigFile::new(
        quic.to_string(),
        pin.to_string(),
        Some(reflector.to_string()),
    );
    cfg.collector_tcp = tcp.map(|a| a.to_string());
    cfg.collector_seal_key = seal_key;
    cfg.duration_secs = 1;
    cfg.key_file = dir.join("agent.key");
    cfg.queue_dir = dir.join("queue");
    cfg.state_file = dir.join("state.json");
    callwatch_agent::identity::create_key(&cfg.key_file, false).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(&path, cfg.to_toml()).unwrap();
    path
}

fn agent(args: &[&str], config: &Path) -> Output {
    Command::new(built_binary("callwatch-agent"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

fn collector(args: &[&str]) -> Output {
    Command::new(built_binary("callwatch-collector"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn status_json(config: &Path) -> serde_json::Value {
    let out = agent(&["status", "--json"], config);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_that_never_answers_falls_back_to_tcp_and_status_says_tcp() {
    let root = tempfile::tempdir().unwrap();
    let mut sc = open_collector_config(root.path(), "127.0.0.1:0".parse().unwrap());
    sc.tcp = Some("127.0.0.1:0".parse().unwrap());
    let c = serve(sc).await.unwrap();
    let (_hole, hole) = black_hole();
    let config = agent_config(
        root.path(),
        hole,
        Some(c.tcp_addr),
        &c.pin,
        c.reflector.addrs[0],
        None,
    );
    let before = status_json(&config);
    assert_eq!(before["upload_transport"], "unknown");
    let out = agent(&["status"], &config);
    assert!(text(&out.stdout).contains("upload transport: unknown"));

    let cfg2 = config.clone();
    let t = Instant::now();
    let out = tokio::task::spawn_blocking(move || agent(&["run", "--once"], &cfg2))
        .await
        .unwrap();
    let took = t.elapsed();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("trying TLS over TCP"), "{log}");
    eprintln!("run --once with QUIC black-holed: {took:?} (1 s test + 5 s QUIC timeout + TCP)");

    assert_eq!(c.store.len(), 1, "the report arrived");
    assert_eq!(c.ingest.stats.connections_tcp.load(Ordering::Relaxed), 1);
    assert_eq!(c.ingest.stats.connections_quic.load(Ordering::Relaxed), 0);
    let (code, metrics) = callwatch_tests::http::get(c.http_addr, "/metrics")
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("callwatch_ingest_connections_total{transport=\"tcp\"} 1"),
        "{metrics}"
    );

    let human = text(&agent(&["status"], &config).stdout);
    assert!(human.contains("upload transport: tcp"), "{human}");
    assert!(human.contains("QUIC did not get through"), "{human}");
    assert!(human.contains("last upload: ok at"), "{human}");
    let json = status_json(&config);
    assert_eq!(json["upload_transport"], "tcp", "{json}");
    assert!(json["upload_transport_at"].is_string(), "{json}");
    assert!(json["last_upload_ok"].is_string(), "{json}");
    assert_eq!(json["queue_depth"], 0);
    // The carry-out key came over the pinned TCP connection.
    assert_eq!(json["collector_seal_key"], c.carry_key.to_string());

    // The next pass goes over TCP first: QUIC failed minutes ago, so it is not tried (no
    // connect timeout on every pass through a network that blocks QUIC).
    let cfg3 = config.clone();
    let out = tokio::task::spawn_blocking(move || agent(&["run", "--once"], &cfg3))
        .await
        .unwrap();
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("over TLS on TCP to"), "{log}");
    assert!(log.contains("first"), "{log}");
    assert!(
        !log.contains("trying TLS over TCP"),
        "QUIC was tried first: {log}"
    );
    assert_eq!(c.store.len(), 2);
    assert_eq!(c.ingest.stats.connections_tcp.load(Ordering::Relaxed), 2);
    assert_eq!(c.ingest.stats.connections_quic.load(Ordering::Relaxed), 0);
    let json = status_json(&config);
    assert_eq!(json["upload_transport"], "tcp", "{json}");
    assert!(json["quic_failure"].is_string(), "the reason stays: {json}");
    c.shutdown().await;
}

fn signed_reports(n: u32, ages_days: &[i64]) -> Vec<SignedReport> {
    attested_reports(n, ages_days, None)
}

/// Like [`signed_reports`], the second report attested (RU, AS12389) by `reflector`'s key.
fn attested_reports(
    n: u32,
    ages_days: &[i64],
    reflector: Option<&SigningKey>,
) -> Vec<SignedReport> {
    use callwatch_proto::attest::{unix_hour, Claim, RegionAttestation};
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let key = SigningKey::from_bytes(&[19; 32]);
    (0..n)
        .map(|i| {
            let age = ages_days.get(i as usize).copied().unwrap_or(1);
            let started = chrono::Utc::now() - chrono::Duration::days(age);
            let mut r = callwatch_tests::seed::synthetic_report(
                &mut rng,
                1000 + i,
                Platform::Generic,
                started,
                false,
            );
            if let (1, Some(reflector)) = (i, reflector) {
                let claim = Claim {
                    report_id: r.id.0,
                    country: *b"RU",
                    asn: 12389,
                    hour: unix_hour(r.started_at),
                    subdivision: None,
                    token_digest: None,
                };
                let (id, sig) = claim.sign(reflector);
                r.attestation = Some(RegionAttestation::from_signed(&claim, &id, &sig).unwrap());
            }
            SignedReport::sign(&r, &key).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_over_quic_is_not_a_reason_to_fall_back() {
    let root = tempfile::tempdir().unwrap();
    let mut sc = open_collector_config(root.path(), "127.0.0.1:0".parse().unwrap());
    sc.tcp = Some("127.0.0.1:0".parse().unwrap());
    // No upload tokens at all: every request is refused (BUSY) by the collector itself.
    sc.rate_limits.batches_per_prefix_burst = 0.0;
    let c = serve(sc).await.unwrap();
    let queue = Queue::open(&root.path().join("queue")).unwrap();
    for r in signed_reports(2, &[]) {
        queue.push(&r).unwrap();
    }
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&c.pin, &mut pin).unwrap();
    let target = UploadTarget {
        tcp: Some(c.tcp_addr),
        ..UploadTarget::new(c.quic_addr, pin)
    };
    match upload_queue(&queue, &target).await {
        Err(UploadError::Refused(why)) => assert!(why.contains("rate limited"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(c.ingest.stats.connections_quic.load(Ordering::Relaxed), 1);
    assert_eq!(
        c.ingest.stats.connections_tcp.load(Ordering::Relaxed),
        0,
        "no fallback after a refusal"
    );
    assert_eq!(queue.len(), 2, "refused reports stay queued");
    c.shutdown().await;

    // The same collector with tokens: QUIC carries it, and says so.
    let root = tempfile::tempdir().unwrap();
    let mut sc = open_collector_config(root.path(), "127.0.0.1:0".parse().unwrap());
    sc.tcp = Some("127.0.0.1:0".parse().unwrap());
    let c = serve(sc).await.unwrap();
    hex::decode_to_slice(&c.pin, &mut pin).unwrap();
    let target = UploadTarget {
        tcp: Some(c.tcp_addr),
        fetch_seal_key: true,
        ..UploadTarget::new(c.quic_addr, pin)
    };
    let s = upload_queue(&queue, &target).await.unwrap();
    assert_eq!((s.accepted, s.transport), (2, Some(Transport::Quic)));
    assert_eq!(s.seal_key, Some(c.carry_key));
    assert_eq!(c.ingest.stats.connections_tcp.load(Ordering::Relaxed), 0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_transport_names_callwatch_and_agents_of_the_last_release_still_upload() {
    use callwatch_agent::upload::{
        connect_tcp, exchange, pinned_client_config_offering, request_tcp,
    };
    use callwatch_proto::upload::{error_code, Request, Response, ALPN, LEGACY_ALPN};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let root = tempfile::tempdir().unwrap();
    let mut sc = open_collector_config(root.path(), "127.0.0.1:0".parse().unwrap());
    sc.tcp = Some("127.0.0.1:0".parse().unwrap());
    let c = serve(sc).await.unwrap();
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&c.pin, &mut pin).unwrap();
    let reports = signed_reports(1, &[]);
    assert_eq!(ALPN, b"libp2p");
    // QUIC: today's ALPN and the last release's are taken (and uploads work); others are not.
    for (alpn, taken) in [(ALPN, true), (LEGACY_ALPN, true), (&b"h3"[..], false)] {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(pinned_client_config_offering(pin, &[alpn]).unwrap());
        let conn = ep.connect(c.quic_addr, "127.0.0.1").unwrap().await;
        let name = String::from_utf8_lossy(alpn).into_owned();
        match conn {
            Ok(conn) => {
                assert!(taken, "{name} was taken");
                let hd = conn
                    .handshake_data()
                    .unwrap()
                    .downcast::<quinn::crypto::rustls::HandshakeData>()
                    .unwrap();
                assert_eq!(hd.protocol.as_deref(), Some(alpn));
                let Response::Ack { statuses } = exchange(&conn, reports.clone()).await.unwrap()
                else {
                    panic!("{name}: no ack")
                };
                assert_eq!(statuses.len(), 1);
            }
            Err(e) => assert!(!taken, "{name} refused: {e}"),
        }
        ep.close(0u32.into(), b"");
    }
    // TLS over TCP: the collector selects no ALPN, whatever the server name; requests follow
    // each other on one connection.
    let mut tls = connect_tcp(
        c.tcp_addr,
        "collector.example.org",
        pin,
        None,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    assert_eq!(
        request_tcp(&mut tls, &Request::SealKey).await.unwrap(),
        Response::SealKey { key: c.carry_key.0 }
    );
    let Response::Ack { statuses } = request_tcp(
        &mut tls,
        &Request::Upload {
            reports: reports.clone(),
        },
    )
    .await
    .unwrap() else {
        panic!("no ack over TCP")
    };
    assert_eq!(
        statuses,
        vec![callwatch_proto::upload::ReportStatus::Duplicate]
    );
    // A frame over the limit is refused with a reason, then the connection ends.
    tls.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let mut prefix = [0u8; 4];
    tls.read_exact(&mut prefix).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
    tls.read_exact(&mut body).await.unwrap();
    let answer: Response = callwatch_proto::upload::decode_frame_body(&body).unwrap();
    assert!(
        matches!(answer, Response::Error { code, .. } if code == error_code::TOO_LARGE),
        "{answer:?}"
    );
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "the connection ended");
    // Another certificate than the pinned one: no connection.
    let wrong = connect_tcp(
        c.tcp_addr,
        "127.0.0.1",
        [7; 32],
        None,
        Duration::from_secs(5),
    )
    .await;
    assert!(wrong.is_err());
    assert_eq!(c.store.len(), 1);
    c.shutdown().await;
}

/// Starts and stops a collector on `data`, so that it has its keys and an empty store.
fn made_collector(logs: &Path, data: &Path) -> String {
    std::fs::create_dir_all(logs).unwrap();
    let c = start_collector(logs, data, &[]);
    c.stop();
    let key = std::fs::read_to_string(data.join("collector.seal.pub")).unwrap();
    key.trim().to_string()
}

/// The collector's stored reports (it must be stopped), as its ndjson export gives them.
fn stored(data: &Path) -> Vec<serde_json::Value> {
    let out = collector(&["export", "--data", data.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn import(data: &Path, file: &Path) -> Output {
    collector(&[
        "import",
        "--data",
        data.to_str().unwrap(),
        file.to_str().unwrap(),
    ])
}

/// An agent whose collector is out of reach, with `reports` queued and the collector's
/// carry-out key in its config; exports to `file`.
fn export(dir: &Path, seal_key: &str, reports: &[SignedReport], file: &Path) -> Output {
    std::fs::create_dir_all(dir).unwrap();
    let (_hole, hole) = black_hole();
    let config = agent_config(
        dir,
        hole,
        None,
        &"ab".repeat(32),
        hole,
        Some(seal_key.to_string()),
    );
    {
        let q = Queue::open(&dir.join("queue")).unwrap();
        for r in reports {
            q.push(r).unwrap();
        }
    }
    let mut args = vec!["export-queue", file.to_str().unwrap()];
    if file.exists() {
        args.push("--force");
    }
    agent(&args, &config)
}

#[test]
fn a_carried_out_queue_imports_exactly_once_and_a_damaged_line_alone_is_rejected() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("collector");
    let key = made_collector(&root.path().join("logs"), &data);
    // One report held 170 days (a long block), within the 180-day limit; one attested by the
    // collector's own reflector.
    let reflector = callwatch_reflector::identity::load_or_create_attestation(&data).unwrap();
    let reports = attested_reports(5, &[170, 2, 1, 1, 1], Some(&reflector));
    let file = root.path().join("carried.cwq");
    let agent_dir = root.path().join("agent");
    let out = export(&agent_dir, &key, &reports, &file);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("wrote 5 report(s)"), "{out:?}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "owner-only");
    let sealed = std::fs::read_to_string(&file).unwrap();
    assert_eq!(sealed.lines().count(), 6, "a header and five report lines");
    assert!(
        !sealed.to_lowercase().contains("callwatch"),
        "nothing in the clear"
    );
    assert_eq!(
        Queue::open(&agent_dir.join("queue")).unwrap().len(),
        5,
        "exporting removes nothing from the queue"
    );

    // A copy with line 3 (the second report) damaged: that line alone is rejected, by number.
    let mut lines: Vec<String> = sealed.lines().map(str::to_string).collect();
    let l = &mut lines[2];
    let flipped = if l.as_bytes()[10] == b'A' { "B" } else { "A" };
    l.replace_range(10..11, flipped);
    let damaged = root.path().join("damaged.cwq");
    std::fs::write(&damaged, lines.join("\n") + "\n").unwrap();
    let t = Instant::now();
    let out = import(&data, &damaged);
    eprintln!("import of 5 lines: {:?}", t.elapsed());
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}{}", text(&out.stderr));
    assert!(said.contains("line 3: rejected: does not open"), "{said}");
    for line in [2, 4, 5, 6] {
        assert!(said.contains(&format!("line {line}: accepted")), "{said}");
    }
    assert!(
        said.contains("4 accepted, 0 duplicate, 1 rejected"),
        "{said}"
    );

    // The whole file: the missing report now, the others are duplicates.
    let out = import(&data, &file);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("1 accepted, 4 duplicate, 0 rejected"),
        "{out:?}"
    );
    // Again: nothing new.
    let out = import(&data, &file);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("0 accepted, 5 duplicate, 0 rejected"),
        "{out:?}"
    );

    // Five reports, each once, with their own start times: the attested one under its
    // attested region, the others under unknown region (never the importer's address).
    let rows = stored(&data);
    assert_eq!(rows.len(), 5);
    // The export says how: `attested`, or `unknown` (carried without an attestation).
    let mut regions: Vec<(String, u64, String)> = rows
        .iter()
        .map(|r| {
            (
                r["country"].as_str().unwrap().to_string(),
                r["asn"].as_u64().unwrap(),
                r["region_source"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    regions.sort();
    let zz = ("ZZ".to_string(), 0, "unknown".to_string());
    assert_eq!(
        regions,
        vec![
            ("RU".to_string(), 12389, "attested".to_string()),
            zz.clone(),
            zz.clone(),
            zz.clone(),
            zz
        ]
    );
    assert!(rows
        .iter()
        .all(|r| r["uploaded_elsewhere"] == false && r["hosting"] == false));
    let oldest = rows
        .iter()
        .map(|r| {
            let body: serde_json::Value =
                serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
            chrono::DateTime::parse_from_rfc3339(body["started_at"].as_str().unwrap()).unwrap()
        })
        .min()
        .unwrap();
    assert!(chrono::Utc::now().signed_duration_since(oldest).num_days() >= 169);

    // The agent reaches the collector later: its queued copies are acknowledged as duplicates
    // and leave the queue; nothing is stored twice.
    let c = start_collector(&root.path().join("logs"), &data, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let queue = Queue::open(&agent_dir.join("queue")).unwrap();
    let s = rt
        .block_on(upload_queue(&queue, &UploadTarget::new(c.quic, c.pin)))
        .unwrap();
    assert_eq!((s.accepted, s.duplicate, s.remaining), (0, 5, 0));
    c.stop();
    assert_eq!(stored(&data).len(), 5);
}

#[test]
fn truncated_garbage_or_misaddressed_files_are_refused_whole_and_store_nothing() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("collector");
    let key = made_collector(&root.path().join("logs"), &data);
    let file = root.path().join("carried.cwq");
    let out = export(
        &root.path().join("agent"),
        &key,
        &signed_reports(3, &[]),
        &file,
    );
    assert!(out.status.success(), "{out:?}");
    let sealed = std::fs::read(&file).unwrap();
    let bad = root.path().join("bad.cwq");
    let last_line_start = sealed[..sealed.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap()
        + 1;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "cut mid-line",
            sealed[..sealed.len() - 20].to_vec(),
            "truncated: line 4 is cut short",
        ),
        (
            "last line missing",
            sealed[..last_line_start].to_vec(),
            "truncated: the header counts 3 reports, the file holds 2",
        ),
        ("empty", Vec::new(), "is empty"),
        (
            "garbage",
            (0..4000u32).map(|i| (i * 7919 % 251) as u8).collect(),
            "line 1 (the header)",
        ),
        (
            "a line too many",
            [sealed.clone(), sealed[last_line_start..].to_vec()].concat(),
            "more lines than the 3 reports",
        ),
    ];
    for (what, bytes, says) in cases {
        std::fs::write(&bad, bytes).unwrap();
        let out = import(&data, &bad);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{what}: {out:?}");
        assert!(err.contains(says), "{what}: {err}");
        assert!(
            err.contains("nothing imported") || !says.contains("truncated"),
            "{what}: {err}"
        );
        assert!(text(&out.stdout).is_empty(), "{what}: no line was ingested");
        assert_eq!(stored(&data).len(), 0, "{what}: the store is unchanged");
    }

    // Sealed to this collector, imported into another: it does not open there.
    let other = root.path().join("other");
    made_collector(&root.path().join("logs2"), &other);
    let out = import(&other, &file);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("does not open with this collector's carry-out key"),
        "{err}"
    );
    assert_eq!(stored(&other).len(), 0);
    // And it still imports where it belongs.
    let out = import(&data, &file);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stored(&data).len(), 3);
}

/// Without a carry-out key (none in the config, none sent yet) export says how to get one.
#[test]
fn export_without_a_known_key_says_where_to_find_it() {
    let root = tempfile::tempdir().unwrap();
    let (_hole, hole) = black_hole();
    let config = agent_config(root.path(), hole, None, &"ab".repeat(32), hole, None);
    let out = agent(&["export-queue", "x.cwq"], &config);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("collector_seal_key") && err.contains("collector.seal.pub"),
        "{err}"
    );
}

/// A collector of the last release knows no `UploadWithTokens`: it answers `PROTOCOL`, as its
/// frame decoder does for an unknown request. Played here by a TLS-over-TCP server with a real
/// collector certificate (the agent pins it) that answers exactly as that release did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tokens_fall_back_to_a_plain_upload_for_a_collector_that_knows_none() {
    use callwatch_proto::upload::{
        decode_frame_body, encode_frame, error_code, QueuedReport, ReportStatus, Request, Response,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let root = tempfile::tempdir().unwrap();
    let identity = callwatch_collector::cert::load_or_create(&root.path().join("old")).unwrap();
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&identity.pin, &mut pin).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut seen = Vec::new();
        loop {
            let mut prefix = [0u8; 4];
            if tls.read_exact(&mut prefix).await.is_err() {
                return seen;
            }
            let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
            tls.read_exact(&mut body).await.unwrap();
            let request: Request = decode_frame_body(&body).unwrap();
            let answer = match &request {
                Request::UploadWithTokens { .. } => Response::Error {
                    code: error_code::PROTOCOL,
                    reason: "unknown variant".into(),
                },
                Request::Upload { reports } => Response::Ack {
                    statuses: vec![ReportStatus::Accepted; reports.len()],
                },
                _ => Response::Error {
                    code: error_code::PROTOCOL,
                    reason: "not in this test".into(),
                },
            };
            seen.push(request);
            tls.write_all(&encode_frame(&answer).unwrap())
                .await
                .unwrap();
        }
    });
    let queue = Queue::open(&root.path().join("queue")).unwrap();
    for (i, report) in signed_reports(2, &[]).into_iter().enumerate() {
        queue
            .push_queued(&QueuedReport {
                report,
                path_token: (i == 0).then_some([9; 55]),
            })
            .unwrap();
    }
    let (_hole, quic) = black_hole();
    let mut target = UploadTarget::new(quic, pin);
    target.tcp = Some(tcp_addr);
    target.tcp_first = true;
    target.server_name = "localhost".into();
    target.connect_timeout = Duration::from_secs(5);
    let summary = upload_queue(&queue, &target).await.unwrap();
    assert_eq!(summary.accepted, 2, "{summary:?}");
    assert_eq!(queue.len(), 0, "acknowledged, so removed");
    drop(queue);
    let seen = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the agent closed its connection")
        .unwrap();
    // The tokens were offered once, refused, and the same reports went again without them
    // (then the agent asked for the reflector list, which this old collector refuses).
    let kinds: Vec<&str> = seen
        .iter()
        .map(|r| match r {
            Request::UploadWithTokens { .. } => "with-tokens",
            Request::Upload { .. } => "upload",
            Request::Reflectors => "reflectors",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["with-tokens", "upload", "reflectors"]);
    let (Request::UploadWithTokens { reports: a, tokens }, Request::Upload { reports: b }) =
        (&seen[0], &seen[1])
    else {
        unreachable!("checked above")
    };
    assert_eq!(a, b);
    assert_eq!((tokens[0].len(), tokens[1].len()), (55, 0));
}
