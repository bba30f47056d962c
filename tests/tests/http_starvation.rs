//! Clients that hold HTTP requests open cannot starve the collector (#15 item 5): 600 clients
//! that ask for every report and never read the answer used to pin tokio's whole blocking pool,
//! so that aggregations stopped answering and uploads timed out. Now report pages take at most
//! `PAGE_JOBS` blocking threads (a page whose client takes nothing for `PAGE_WRITE_TIMEOUT`
//! stops), the rest are told 503 with `Retry-After`, and queries and uploads go on.

use callwatch_collector::http::{PAGE_JOBS, RETRY_AFTER_S};
use callwatch_tests::{http, seed};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_starve_neither_queries_nor_uploads() {
    let root = tempfile::tempdir().unwrap();
    let c = seed::collector(root.path()).await;
    // The seed four times over (fresh ids): enough bytes that a page outgrows every buffer
    // between the store and a client that does not read (the channel, hyper's, the sockets').
    let mut data = Vec::new();
    for copy in 0..4u8 {
        for (region, key, _, report) in seed::seed() {
            let mut r = report.clone();
            r.id.0[15] ^= copy;
            r.id.0[14] ^= 0x5a * (copy > 0) as u8;
            let signed = callwatch_proto::SignedReport::sign(&r, &key).unwrap();
            data.push((region, key, signed, r));
        }
    }
    let (first, later) = data.split_at(data.len() - 20);
    seed::upload(&c, first).await;
    let bytes: usize = first.iter().map(|s| s.2.body.len()).sum();
    assert!(bytes > 6 << 20, "{bytes} bytes in the store");

    let mut idle = Vec::new();
    for _ in 0..600 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(c.http_addr).await.unwrap();
        s.write_all(b"GET /api/v1/reports?limit=100000 HTTP/1.1\r\nHost: c\r\n\r\n")
            .await
            .unwrap();
        idle.push(s);
    }

    // Queries answer while the 600 hold their requests.
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(20),
        http::get(c.http_addr, "/api/v1/aggregation?axis_x=country"),
    )
    .await
    .expect("an aggregation answers while report pages are held")
    .unwrap();
    assert_eq!(status, 200, "{body}");

    // Uploads are stored.
    let (accepted, _) =
        tokio::time::timeout(Duration::from_secs(30), seed::upload_batches(&c, later, 10))
            .await
            .expect("uploads go on while report pages are held");
    assert_eq!(accepted, later.len());

    // Beyond the page slots, a client is told to come back (read from the last one).
    let last = idle.last_mut().unwrap();
    let mut head = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(20), last.read(&mut head))
        .await
        .expect("the last client gets its answer")
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(
        head.contains(&format!("retry-after: {RETRY_AFTER_S}")),
        "{head}"
    );
    const { assert!(PAGE_JOBS < 600) };
    drop(idle);
    c.shutdown().await;
}
