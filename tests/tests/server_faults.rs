//! A fault of the collector's own (its store failing) says "internal error" with an id, to the
//! agent over QUIC and to an HTTP client alike, and never the store's host, port or server text
//! (#15 item 5); the agent keeps the batch. The store is a stand-in that fails: the test is about
//! what is said around it.

use callwatch_agent::queue::Queue;
use callwatch_agent::upload::{upload_queue, UploadError, UploadTarget};
use callwatch_collector::domain::{Axis, Cell, Filter, Policy, StoredReport, VerifiedReport};
use callwatch_collector::serve_with_store;
use callwatch_collector::store::{InsertOutcome, ReportStore, StoreError};
use callwatch_tests::{http, seed};
use std::sync::Arc;

/// What a ClickHouse store's error would carry: its address and the server's own words.
const SECRET: &str = "http://10.0.0.5:8123: Code: 241. DB::Exception: Memory limit exceeded";

struct FailingStore;

impl ReportStore for FailingStore {
    fn insert_batch(&self, _: &[VerifiedReport]) -> Result<Vec<InsertOutcome>, StoreError> {
        Err(StoreError::Backend(SECRET.into()))
    }
    fn for_each(
        &self,
        _: &mut dyn FnMut(StoredReport) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        Err(StoreError::Backend(SECRET.into()))
    }
    fn for_each_since(
        &self,
        _: i64,
        _: &mut dyn FnMut(StoredReport) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        Err(StoreError::Backend(SECRET.into()))
    }
    fn aggregate(&self, _: &[Axis], _: &Filter, _: &Policy) -> Result<Vec<Cell>, StoreError> {
        Err(StoreError::Backend(SECRET.into()))
    }
    fn evidence(
        &self,
        _: i64,
        _: i64,
        _: &Policy,
        _: &mut callwatch_collector::domain::events::EvidenceBook,
    ) -> Result<(), StoreError> {
        Err(StoreError::Backend(SECRET.into()))
    }
    fn len(&self) -> usize {
        0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_says_internal_error_with_an_id_and_nothing_of_itself() {
    let root = tempfile::tempdir().unwrap();
    let cfg = seed::config(root.path(), "collector");
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    let c = serve_with_store(cfg, Arc::new(FailingStore)).await.unwrap();
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&c.pin, &mut pin).unwrap();

    // The agent: its batch is refused as a whole, with an id, and stays queued.
    let queue = Queue::open(&root.path().join("queue")).unwrap();
    queue.push(&seed::seed()[0].2).unwrap();
    let err = upload_queue(&queue, &UploadTarget::new(c.quic_addr, pin))
        .await
        .unwrap_err();
    let UploadError::Refused(text) = &err else {
        panic!("a refusal: {err}")
    };
    assert!(text.contains("internal error (id "), "{text}");
    assert!(
        !text.contains("10.0.0.5") && !text.contains("Exception"),
        "{text}"
    );
    assert_eq!(queue.len(), 1, "the batch is kept");

    // An HTTP client: a 500 that says the same.
    let (status, body) = http::get(c.http_addr, "/api/v1/aggregation?axis_x=country")
        .await
        .unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("internal error (id "), "{body}");
    let clean = |body: &str| {
        !body.contains("10.0.0.5") && !body.contains("8123") && !body.contains("Exception")
    };
    assert!(clean(&body), "{body}");
    // The raw page streams: its transfer is cut short, and nothing of the store is in it.
    if let Ok((_, body)) = http::get(c.http_addr, "/api/v1/reports?limit=1").await {
        assert!(clean(&body), "{body}");
    }
    c.shutdown().await;
}
