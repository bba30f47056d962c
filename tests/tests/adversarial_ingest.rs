//! Ingest under hostile input: each attack is rejected or bounded with a reason counted, and
//! honest agents are served meanwhile.

use callwatch_agent::engine::driver::Cancel;
use callwatch_agent::engine::{run_call_test, TestSpec};
use callwatch_agent::queue::Queue;
use callwatch_agent::upload::{exchange, pinned_client_config, upload_queue, UploadTarget};
use callwatch_collector::{serve, Collector, ServeConfig};
use callwatch_proto::upload::{error_code, ReportStatus, Response, MAX_BATCH, MAX_FRAME_LEN};
use callwatch_proto::{CallReport, ReportId, SignedReport};
use ed25519_dalek::SigningKey;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

async fn collector(root: &std::path::Path) -> Collector {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut cfg = ServeConfig::new(root.join("collector"));
    (cfg.listen, cfg.http, cfg.reflectors) = (any, any, vec![any]);
    cfg.max_connections_per_ip = 8;
    serve(cfg).await.unwrap()
}

fn pin(c: &Collector) -> [u8; 32] {
    let mut p = [0u8; 32];
    hex::decode_to_slice(&c.pin, &mut p).unwrap();
    p
}

async fn connect(
    c: &Collector,
    from: &str,
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let mut ep = quinn::Endpoint::client(format!("{from}:0").parse().unwrap()).unwrap();
    ep.set_default_client_config(pinned_client_config(pin(c)).unwrap());
    let conn = ep
        .connect(c.quic_addr, "localhost")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok((ep, conn))
}

async fn sample(c: &Collector) -> CallReport {
    let mut spec = TestSpec::voice(c.reflector.addrs[0], 200);
    spec.grace_ms = 100;
    tokio::task::spawn_blocking(move || run_call_test(&spec, &Cancel::default(), |_| {}))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_from_the_far_future_are_deferred_and_from_the_far_past_refused() {
    let root = tempfile::tempdir().unwrap();
    let c = collector(root.path()).await;
    let base = sample(&c).await;
    let key = SigningKey::from_bytes(&[4; 32]);
    let mut future = base.clone();
    future.id = ReportId([1; 16]);
    future.started_at = chrono::Utc::now() + chrono::Duration::days(1);
    let mut old = base.clone();
    old.id = ReportId([2; 16]);
    old.started_at = chrono::Utc::now() - chrono::Duration::days(181);
    // Held through a long block (or carried out): within the 180-day limit, kept as it is.
    let mut held = base.clone();
    held.id = ReportId([3; 16]);
    held.started_at = chrono::Utc::now() - chrono::Duration::days(170);
    let (_ep, conn) = connect(&c, "127.0.0.1").await.unwrap();
    let reports = [future, old, base, held.clone()]
        .iter()
        .map(|r| SignedReport::sign(r, &key).unwrap())
        .collect();
    let Response::Ack { statuses } = exchange(&conn, reports).await.unwrap() else {
        panic!("expected an ack")
    };
    // A start ahead of the collector's clock is deferred (the agent keeps the report and sends
    // it again), with the skew in words; one too old is refused for good.
    let ReportStatus::Deferred { reason } = &statuses[0] else {
        panic!("the future report is deferred: {statuses:?}")
    };
    assert!(
        reason.contains("is in the future, 24 hours ahead of the collector's clock")
            && reason.contains("this machine's clock is probably wrong")
            && reason.contains("kept and sent again"),
        "{reason}"
    );
    assert!(statuses[0].keeps_report());
    let ReportStatus::Rejected { reason } = &statuses[1] else {
        panic!("the old report is refused: {statuses:?}")
    };
    assert!(reason.contains("older than 180 days"), "{reason}");
    assert!(!statuses[1].keeps_report());
    for s in &statuses[2..] {
        assert!(matches!(s, ReportStatus::Accepted));
    }
    let rejected = c.ingest.stats.rejected();
    assert_eq!(rejected.get("future_timestamp"), Some(&1));
    assert_eq!(rejected.get("too_old"), Some(&1));
    assert_eq!(c.store.len(), 2);
    // Stored with its own start time, not the arrival time.
    let mut stored_held = None;
    c.store
        .for_each_since(i64::MIN, &mut |r| {
            let report = r.signed.verify().unwrap();
            if report.id == held.id {
                stored_held = Some(report.started_at);
            }
            Ok(true)
        })
        .unwrap();
    let at = stored_held.expect("the held report is stored");
    assert!((at - held.started_at).num_seconds().abs() < 1, "{at}");
    c.shutdown().await;
}

/// Every string of a JSON value with its path, for measuring a real report against the limits.
fn strings(v: &serde_json::Value, at: &str, out: &mut Vec<(String, usize)>) {
    match v {
        serde_json::Value::String(s) => out.push((at.to_string(), s.len())),
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                strings(v, &format!("{at}[{i}]"), out);
            }
        }
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let p = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                strings(v, &p, out);
            }
        }
        _ => {}
    }
}

/// RELIABILITY.md, "Forged, replayed or out-of-window reports are refused" (#15 item 7): a
/// report signed by a valid key but carrying a field its schema does not define (a hostname,
/// at the top or inside a stream) is refused with the field's path, counted in `/metrics` as
/// `unknown_field`, and nothing of it is stored; the honest report beside it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_report_with_a_field_its_schema_does_not_define_is_refused_and_counted() {
    let root = tempfile::tempdir().unwrap();
    let c = collector(root.path()).await;
    let base = sample(&c).await;
    let key = SigningKey::from_bytes(&[8; 32]);
    let honest = SignedReport::sign(&base, &key).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&honest.body).unwrap();
    // What the agent really writes, against the limits of `callwatch_proto::schema`.
    let mut measured = Vec::new();
    strings(&body, "", &mut measured);
    eprintln!(
        "a real report: {} bytes; strings {measured:?}",
        honest.body.len()
    );
    let with = |id: u8, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = body.clone();
        v["id"] = ReportId([id; 16]).to_string().into();
        edit(&mut v);
        SignedReport::sign_body(serde_json::to_vec(&v).unwrap(), &key)
    };
    let top = with(9, &|v| v["hostname"] = "volunteer-laptop.local".into());
    let nested = with(10, &|v| {
        v["streams"][0]["hostname"] = "volunteer-laptop.local".into()
    });
    let (_ep, conn) = connect(&c, "127.0.0.1").await.unwrap();
    let Response::Ack { statuses } = exchange(&conn, vec![top, nested, honest.clone()])
        .await
        .unwrap()
    else {
        panic!("expected an ack")
    };
    for (status, path) in statuses.iter().zip(["hostname", "streams[0].hostname"]) {
        let ReportStatus::Rejected { reason } = status else {
            panic!("refused: {statuses:?}")
        };
        assert!(
            reason.contains("a field its schema does not define") && reason.ends_with(path),
            "{reason}"
        );
        assert!(!status.keeps_report(), "refused for good: {reason}");
    }
    assert_eq!(statuses[2], ReportStatus::Accepted);
    assert_eq!(c.ingest.stats.rejected().get("unknown_field"), Some(&2));
    let (_, metrics) = callwatch_tests::http::get(c.http_addr, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("callwatch_ingest_rejected_total{reason=\"unknown_field\"} 2"),
        "{metrics}"
    );
    // Only the honest report is stored, as signed.
    assert_eq!(c.store.len(), 1);
    c.store
        .for_each_since(i64::MIN, &mut |r| {
            assert_eq!(r.signed, honest);
            Ok(true)
        })
        .unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_batches_frames_and_garbage_are_refused_and_the_connection_still_serves() {
    let root = tempfile::tempdir().unwrap();
    let c = collector(root.path()).await;
    let base = sample(&c).await;
    let key = SigningKey::from_bytes(&[5; 32]);
    let (_ep, conn) = connect(&c, "127.0.0.1").await.unwrap();

    let too_many: Vec<_> = (0..=MAX_BATCH)
        .map(|i| {
            let mut r = base.clone();
            r.id = ReportId([(i % 256) as u8; 16]);
            SignedReport::sign(&r, &key).unwrap()
        })
        .collect();
    match exchange(&conn, too_many).await.unwrap() {
        Response::Error { code, .. } => assert_eq!(code, error_code::TOO_LARGE),
        other => panic!("{other:?}"),
    }

    // A length prefix over the limit: refused before anything is read.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes())
        .await
        .unwrap();
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
    recv.read_exact(&mut body).await.unwrap();
    let resp: Response = callwatch_proto::upload::decode_frame_body(&body).unwrap();
    assert!(matches!(resp, Response::Error { code, .. } if code == error_code::TOO_LARGE));

    // Garbage inside a well-sized frame.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&8u32.to_be_bytes()).await.unwrap();
    send.write_all(&[0xff; 8]).await.unwrap();
    send.finish().unwrap();
    recv.read_exact(&mut prefix).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
    recv.read_exact(&mut body).await.unwrap();
    let resp: Response = callwatch_proto::upload::decode_frame_body(&body).unwrap();
    assert!(matches!(resp, Response::Error { code, .. } if code == error_code::PROTOCOL));

    // Nothing of it was stored, and the same connection still takes an honest upload.
    assert_eq!(c.store.len(), 0);
    let honest = vec![SignedReport::sign(&base, &key).unwrap()];
    assert!(matches!(
        exchange(&conn, honest).await.unwrap(),
        Response::Ack { .. }
    ));
    assert_eq!(c.store.len(), 1);
    let rejected = c.ingest.stats.rejected();
    for reason in ["batch_too_large", "frame_too_large", "malformed_frame"] {
        assert_eq!(rejected.get(reason), Some(&1), "{reason}: {rejected:?}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_source_are_capped_and_honest_agents_still_upload() {
    let root = tempfile::tempdir().unwrap();
    let c = collector(root.path()).await;
    let base = sample(&c).await;
    // The attacker opens 30 connections from one address and sends nothing.
    let mut idle = Vec::new();
    let mut refused = 0;
    for _ in 0..30 {
        match connect(&c, "127.0.0.66").await {
            Ok(pair) => idle.push(pair),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(idle.len(), 8, "the per-address cap");
    assert_eq!(refused, 22);
    assert_eq!(
        c.ingest.stats.connections_refused.load(Ordering::Relaxed),
        22
    );
    // An honest agent elsewhere is served while those are held open.
    let queue = Queue::open(&root.path().join("queue")).unwrap();
    queue
        .push(&SignedReport::sign(&base, &SigningKey::from_bytes(&[6; 32])).unwrap())
        .unwrap();
    let target = UploadTarget {
        collector: c.quic_addr,
        tcp: None,
        server_name: "localhost".into(),
        pin: pin(&c),
        bind: Some("127.0.0.2".parse().unwrap()),
        batch: 10,
        connect_timeout: Duration::from_secs(5),
        fetch_seal_key: false,
        tcp_first: false,
        fetch_endpoints: false,
    };
    assert_eq!(upload_queue(&queue, &target).await.unwrap().accepted, 1);
    drop(idle);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_per_key_and_per_network_defer_with_a_reason_and_replays_cannot_drain_a_key() {
    let root = tempfile::tempdir().unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut cfg = ServeConfig::new(root.path().join("collector"));
    (cfg.listen, cfg.http, cfg.reflectors) = (any, any, vec![any]);
    // Tight limits that do not refill within the test.
    cfg.rate_limits = callwatch_collector::ingest::RateLimits {
        batches_per_prefix_burst: 6.0,
        batches_per_prefix_per_sec: 1e-6,
        reports_per_key_burst: 10.0,
        reports_per_key_per_sec: 1e-6,
        ..Default::default()
    };
    let c = serve(cfg).await.unwrap();
    let base = sample(&c).await;
    let signed = |key: &SigningKey, id: u8| {
        let mut r = base.clone();
        r.id = ReportId([id; 16]);
        SignedReport::sign(&r, key).unwrap()
    };
    let busy = |resp: Response| match resp {
        Response::Error { code, reason } if code == error_code::BUSY => reason,
        other => panic!("expected BUSY, got {other:?}"),
    };

    // Key A stores its allowance of 10, then the 11th new report is deferred, not rejected.
    let a = SigningKey::from_bytes(&[21; 32]);
    let (_ea, conn_a) = connect(&c, "127.0.2.1").await.unwrap();
    let first: Vec<_> = (0..10).map(|i| signed(&a, i)).collect();
    assert!(matches!(
        exchange(&conn_a, first).await.unwrap(),
        Response::Ack { .. }
    ));
    let reason = busy(exchange(&conn_a, vec![signed(&a, 10)]).await.unwrap());
    assert!(reason.contains("agent key"), "{reason}");
    assert_eq!(c.store.len(), 10);

    // Someone replaying key B's stored report from elsewhere cannot use up B's allowance:
    // duplicates are not charged.
    let b = SigningKey::from_bytes(&[22; 32]);
    let (_eb, conn_b) = connect(&c, "127.0.3.1").await.unwrap();
    assert!(matches!(
        exchange(&conn_b, vec![signed(&b, 0)]).await.unwrap(),
        Response::Ack { .. }
    ));
    let (_em, conn_m) = connect(&c, "127.0.4.1").await.unwrap();
    for _ in 0..5 {
        let Response::Ack { statuses } = exchange(&conn_m, vec![signed(&b, 0)]).await.unwrap()
        else {
            panic!("replays are answered")
        };
        assert_eq!(
            statuses,
            vec![callwatch_proto::upload::ReportStatus::Duplicate]
        );
    }
    // The replaying network pays instead (buckets are per /24): each request costs a token and
    // each duplicate 1/8 more, so 5 requests used 5.625 of its 6 and the next is deferred for
    // the network, from any of its addresses.
    let (_em2, conn_m2) = connect(&c, "127.0.4.99").await.unwrap();
    let reason = busy(exchange(&conn_m2, vec![signed(&b, 0)]).await.unwrap());
    assert!(reason.contains("from this network"), "{reason}");
    // B still has room for 9 more new reports.
    let more: Vec<_> = (1..10).map(|i| signed(&b, i)).collect();
    let Response::Ack { statuses } = exchange(&conn_b, more).await.unwrap() else {
        panic!("B's own reports are accepted")
    };
    assert!(statuses
        .iter()
        .all(|s| *s == callwatch_proto::upload::ReportStatus::Accepted));
    assert_eq!(c.store.len(), 20);

    let rejected = c.ingest.stats.rejected();
    assert_eq!(rejected.get("rate_limited_key"), Some(&1));
    assert_eq!(rejected.get("rate_limited_network"), Some(&1));
    let (_, metrics) = callwatch_tests::http::get(c.http_addr, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("reason=\"rate_limited_key\"} 1"),
        "{metrics}"
    );
    // The build it is.
    let build = format!(
        "callwatch_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        callwatch_collector::GIT_COMMIT
    );
    assert!(metrics.contains(&build), "{metrics}");
    c.shutdown().await;
}

/// RELIABILITY.md, "One attacker cannot starve honest agents": a batch refused as `BUSY` stays
/// in the agent's queue, whole, and is sent again when there is room (here: another collector
/// without the limit); only what was acknowledged leaves the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_deferred_as_busy_stays_queued_and_arrives_later_once() {
    let root = tempfile::tempdir().unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let config = |dir: &str, limits| {
        let mut cfg = ServeConfig::new(root.path().join(dir));
        (cfg.listen, cfg.http, cfg.reflectors) = (any, any, vec![any]);
        cfg.rate_limits = limits;
        cfg
    };
    let tight = callwatch_collector::ingest::RateLimits {
        batches_per_prefix_burst: 100.0,
        batches_per_prefix_per_sec: 1e-6,
        reports_per_key_burst: 1.0,
        reports_per_key_per_sec: 1e-6,
        ..Default::default()
    };
    let c = serve(config("tight", tight)).await.unwrap();
    let base = sample(&c).await;
    let key = SigningKey::from_bytes(&[31; 32]);
    let queue = Queue::open(&root.path().join("queue")).unwrap();
    for i in 0..5u8 {
        let mut r = base.clone();
        r.id = ReportId([100 + i; 16]);
        queue.push(&SignedReport::sign(&r, &key).unwrap()).unwrap();
    }
    let target = |c: &Collector| UploadTarget {
        collector: c.quic_addr,
        tcp: None,
        server_name: "localhost".into(),
        pin: pin(c),
        bind: Some("127.0.0.2".parse().unwrap()),
        batch: 2,
        connect_timeout: Duration::from_secs(5),
        fetch_seal_key: false,
        tcp_first: false,
        fetch_endpoints: false,
    };
    // Five new reports in batches of two against an allowance of one: the first batch is
    // admitted (a batch needs a token and is then charged in full), the next is deferred.
    let refused = upload_queue(&queue, &target(&c)).await.unwrap_err();
    assert!(
        refused.to_string().contains("agent key"),
        "not BUSY for the key: {refused}"
    );
    assert_eq!(c.store.len(), 2);
    assert_eq!(
        queue.len(),
        3,
        "only the acknowledged batch may leave the queue"
    );
    c.shutdown().await;
    // Room again: the three still queued arrive, and nothing else.
    let c = serve(config(
        "roomy",
        callwatch_collector::ingest::RateLimits::default(),
    ))
    .await
    .unwrap();
    assert_eq!(upload_queue(&queue, &target(&c)).await.unwrap().accepted, 3);
    assert_eq!(queue.len(), 0);
    assert_eq!(c.store.len(), 3);
    c.shutdown().await;
}

/// Captures `n` QUIC Initials, each of a fresh connection attempt (its own destination
/// connection id, a real ClientHello inside), as a quinn client sends them — to a plain socket
/// that never answers, so none of them can complete a handshake wherever it is replayed.
async fn captured_initials(c: &Collector, n: usize) -> Vec<Vec<u8>> {
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(pinned_client_config(pin(c)).unwrap());
    let connecting: Vec<_> = (0..n)
        .map(|_| ep.connect(sink_addr, "localhost").unwrap())
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut initials = Vec::new();
    let mut buf = vec![0u8; 2048];
    // Bounded: a retransmission of one attempt is read at most a few times.
    for _ in 0..n * 4 {
        if initials.len() == n {
            break;
        }
        let len = tokio::time::timeout(Duration::from_secs(5), sink.recv(&mut buf))
            .await
            .expect("the client's Initials arrive")
            .unwrap();
        let d = &buf[..len];
        // Long header, type Initial (RFC 9000 §17.2.2); the destination id names the attempt.
        assert_eq!(d[0] & 0xF0, 0xC0, "not an Initial");
        let dcid_len = usize::from(d[5]);
        if seen.insert(d[6..6 + dcid_len].to_vec()) {
            initials.push(d.to_vec());
        }
    }
    assert_eq!(initials.len(), n);
    drop(connecting);
    ep.close(0u32.into(), b"");
    initials
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initials_that_never_finish_a_handshake_lock_no_address_out() {
    let root = tempfile::tempdir().unwrap();
    let c = collector(root.path()).await;
    let base = sample(&c).await;
    // 32 handshakes started from one address (four times its cap of 8) and never finished;
    // with spoofed sources this is all a flood can do.
    let initials = captured_initials(&c, 32).await;
    let attacker = tokio::net::UdpSocket::bind("127.0.0.77:0").await.unwrap();
    for d in &initials {
        attacker.send_to(d, c.quic_addr).await.unwrap();
    }
    // Each is answered with a Retry (long header, type 3) and nothing else: no slot, no state.
    let mut buf = vec![0u8; 2048];
    for i in 0..initials.len() {
        let (len, from) =
            tokio::time::timeout(Duration::from_secs(5), attacker.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no answer to Initial {i}"))
                .unwrap();
        assert_eq!(from, c.quic_addr);
        assert_eq!(buf[0] & 0xF0, 0xF0, "answer {i} ({len} B) is not a Retry");
    }
    assert_eq!(c.ingest.stats.quic_retries.load(Ordering::Relaxed), 32);
    assert_eq!(
        c.ingest.stats.connections_refused.load(Ordering::Relaxed),
        0
    );

    // An honest agent from the same address uploads at once.
    let queue = Queue::open(&root.path().join("queue")).unwrap();
    queue
        .push(&SignedReport::sign(&base, &SigningKey::from_bytes(&[7; 32])).unwrap())
        .unwrap();
    let target = UploadTarget {
        collector: c.quic_addr,
        tcp: None,
        server_name: "localhost".into(),
        pin: pin(&c),
        bind: Some("127.0.0.77".parse().unwrap()),
        batch: 10,
        connect_timeout: Duration::from_secs(5),
        fetch_seal_key: false,
        tcp_first: false,
        fetch_endpoints: false,
    };
    let started = std::time::Instant::now();
    assert_eq!(upload_queue(&queue, &target).await.unwrap().accepted, 1);
    let took = started.elapsed();
    eprintln!("honest upload from the flooded address took {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(
        c.ingest.stats.connections_refused.load(Ordering::Relaxed),
        0
    );
    // Its own connection was retried too, then validated.
    assert!(c.ingest.stats.quic_retries.load(Ordering::Relaxed) >= 33);
    // Nothing from the attacker got through to a handshake.
    assert_eq!(
        c.ingest
            .stats
            .quic_handshake_timeouts
            .load(Ordering::Relaxed),
        0
    );
    c.shutdown().await;
}

/// A validated address that stalls its handshake holds its slot for `QUIC_HANDSHAKE_TIMEOUT`
/// only: a relay passes the collector's Retry to a real client, then nothing more, so the
/// client's token is valid (a slot is taken) and its handshake can never finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validated_handshake_that_stalls_gives_its_slot_back_after_the_timeout() {
    use callwatch_collector::ingest::QUIC_HANDSHAKE_TIMEOUT;
    use std::sync::Arc;
    let root = tempfile::tempdir().unwrap();
    let c = collector(root.path()).await;
    let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.88:0").await.unwrap());
    back.connect(c.quic_addr).await.unwrap();
    let (client_tx, mut client_rx) = tokio::sync::mpsc::channel::<SocketAddr>(1);
    let up = {
        let (front, back) = (front.clone(), back.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut told = false;
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                if !told {
                    told = client_tx.send(from).await.is_ok();
                }
                let _ = back.send(&buf[..n]).await;
            }
        })
    };
    let down = {
        let (front, back) = (front.clone(), back.clone());
        tokio::spawn(async move {
            let Some(client) = client_rx.recv().await else {
                return;
            };
            let mut buf = vec![0u8; 2048];
            // The first answer is the Retry: passed on. Everything after it is dropped.
            if let Ok(n) = back.recv(&mut buf).await {
                let _ = front.send_to(&buf[..n], client).await;
            }
            while back.recv(&mut buf).await.is_ok() {}
        })
    };
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(pinned_client_config(pin(&c)).unwrap());
    let connecting = ep
        .connect(front.local_addr().unwrap(), "localhost")
        .unwrap();
    let stalled = tokio::spawn(connecting);
    let started = std::time::Instant::now();
    // Bounded wait for the timeout to be counted (polled: a counter has no event to await).
    let limit = QUIC_HANDSHAKE_TIMEOUT + Duration::from_secs(5);
    while c
        .ingest
        .stats
        .quic_handshake_timeouts
        .load(Ordering::Relaxed)
        == 0
    {
        assert!(
            started.elapsed() < limit,
            "no handshake timeout after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    eprintln!("stalled handshake dropped after {took:?}");
    assert!(
        took >= QUIC_HANDSHAKE_TIMEOUT - Duration::from_secs(1),
        "{took:?}"
    );
    assert_eq!(c.ingest.stats.quic_retries.load(Ordering::Relaxed), 1);
    assert_eq!(c.ingest.stats.connections_quic.load(Ordering::Relaxed), 0);
    // Its slot is back: the address holds its full cap of 8 again, and no more.
    let mut held = Vec::new();
    for _ in 0..9 {
        if let Ok(pair) = connect(&c, "127.0.0.88").await {
            held.push(pair);
        }
    }
    assert_eq!(held.len(), 8);
    stalled.abort();
    up.abort();
    down.abort();
    ep.close(0u32.into(), b"");
    c.shutdown().await;
}

/// One network cannot pass for many volunteers by minting keys: a prefix (/24 here) uploads for
/// at most `keys_per_prefix_per_day` distinct keys a day; the next key's reports are deferred
/// (kept by the agent, with the reason), a key already counted today goes on, and another prefix
/// — 127.0.9.0/24 against 127.0.8.0/24 — has its own room. Fresh addresses in the same /24 do
/// not help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_uploads_for_a_bounded_number_of_keys_a_day() {
    let root = tempfile::tempdir().unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut cfg = ServeConfig::new(root.path().join("collector"));
    (cfg.listen, cfg.http, cfg.reflectors) = (any, any, vec![any]);
    cfg.rate_limits.keys_per_prefix_per_day = 3;
    let c = serve(cfg).await.unwrap();
    let base = sample(&c).await;
    let signed = |key: u8, id: u8| {
        let mut r = base.clone();
        r.id = ReportId([id; 16]);
        SignedReport::sign(&r, &SigningKey::from_bytes(&[key; 32])).unwrap()
    };
    let statuses = |from: &'static str, reports: Vec<SignedReport>| {
        let c = &c;
        async move {
            let (_ep, conn) = connect(c, from).await.unwrap();
            match exchange(&conn, reports).await.unwrap() {
                Response::Ack { statuses } => statuses,
                other => panic!("expected an ack, got {other:?}"),
            }
        }
    };
    // Three keys from one address, a fourth and fifth from other addresses of the same /24.
    let first = statuses("127.0.8.1", vec![signed(1, 1), signed(2, 2), signed(3, 3)]).await;
    assert!(
        first.iter().all(|s| matches!(s, ReportStatus::Accepted)),
        "{first:?}"
    );
    let more = statuses("127.0.8.2", vec![signed(4, 4), signed(1, 5)]).await;
    let ReportStatus::Deferred { reason } = &more[0] else {
        panic!("a fourth key from the /24 is deferred: {more:?}")
    };
    assert!(
        reason.contains("already uploaded for 3 agent keys today")
            && reason.contains("kept and sent again after 00:00 UTC"),
        "{reason}"
    );
    assert!(more[0].keeps_report());
    assert!(
        matches!(more[1], ReportStatus::Accepted),
        "key 1 was counted today: {more:?}"
    );
    let again = statuses("127.0.8.200", vec![signed(5, 6)]).await;
    assert!(
        matches!(again[0], ReportStatus::Deferred { .. }),
        "{again:?}"
    );
    // Another /24 has its own room.
    let other = statuses("127.0.9.1", vec![signed(4, 7), signed(5, 8)]).await;
    assert!(
        other.iter().all(|s| matches!(s, ReportStatus::Accepted)),
        "{other:?}"
    );
    assert_eq!(c.ingest.stats.rejected().get("keys_per_prefix"), Some(&2));
    assert_eq!(c.store.len(), 6, "exactly the accepted reports are stored");
    c.shutdown().await;
}
