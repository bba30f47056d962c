//! QUIC ingest: agents upload batches of signed reports; each is verified, placed in a region,
//! stored durably, and only then acknowledged.
//!
//! One upload is one bidirectional stream carrying one request frame and one response frame (see
//! `callwatch_proto::upload`). The sender's address is looked up in the region table when the
//! connection is accepted and goes no further: only the [`Region`] reaches the store.

use crate::geo::{GeoTable, Region};
use crate::store::{InsertOutcome, ReportKey, ReportStore, StoredReport};
use anyhow::{Context, Result};
use callwatch_proto::upload::{
    decode_frame_body, encode_frame, error_code, frame_len, ReportStatus, Request, Response, ALPN,
    MAX_BATCH,
};
use callwatch_proto::SignedReport;
use chrono::Utc;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// How far a report's start time may lie in the future (clock error on volunteers' machines).
pub const MAX_FUTURE: chrono::Duration = chrono::Duration::minutes(10);
/// How old a report may be when it arrives (agents queue while the collector is away).
pub const MAX_AGE: chrono::Duration = chrono::Duration::days(30);

/// Ingest counters, by outcome and by rejection reason.
#[derive(Default)]
pub struct IngestStats {
    pub accepted: AtomicU64,
    pub duplicate: AtomicU64,
    pub batches: AtomicU64,
    pub connections_refused: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
}

impl IngestStats {
    fn reject(&self, reason: &'static str) {
        let mut m = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(reason).or_default() += 1;
    }

    /// Rejections so far, by reason label.
    pub fn rejected(&self) -> BTreeMap<&'static str, u64> {
        self.rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

pub struct IngestConfig {
    pub listen: SocketAddr,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub store: Arc<dyn ReportStore>,
    pub geo: Arc<GeoTable>,
    pub max_connections: usize,
    /// Connections one source address may hold at once.
    pub max_connections_per_ip: usize,
}

/// How long an upload stream may take to deliver its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Open connections per source address. Held in memory only while the connections are open;
/// never stored or logged.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

impl PerIp {
    fn try_take(&self, ip: IpAddr, max: usize) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }
    fn give_back(&self, ip: IpAddr) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

pub struct Ingest {
    pub endpoint: quinn::Endpoint,
    pub stats: Arc<IngestStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Ingest {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Stops accepting, closes connections and waits for the endpoint to go idle.
    pub async fn shutdown(&self) {
        self.task.abort();
        self.endpoint
            .close(quinn::VarInt::from_u32(error_code::OK), b"shutting down");
        self.endpoint.wait_idle().await;
    }
}

pub fn server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with ring")?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .context("collector certificate and key do not match")?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).context("QUIC TLS config")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(8u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(
            Duration::from_secs(30).try_into().context("idle timeout")?,
        ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Binds the QUIC endpoint and starts accepting agents.
pub fn spawn_ingest(cfg: IngestConfig) -> Result<Ingest> {
    let server = server_config(cfg.cert, cfg.key)?;
    let endpoint = quinn::Endpoint::server(server, cfg.listen)
        .with_context(|| format!("binding QUIC ingest on {}", cfg.listen))?;
    let stats = Arc::new(IngestStats::default());
    let limit = Arc::new(Semaphore::new(cfg.max_connections));
    let per_ip = Arc::new(PerIp::default());
    let max_per_ip = cfg.max_connections_per_ip;
    let (ep, st, store, geo) = (endpoint.clone(), stats.clone(), cfg.store, cfg.geo);
    let task = tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let ip = incoming.remote_address().ip();
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                st.connections_refused.fetch_add(1, Ordering::Relaxed);
                incoming.refuse();
                continue;
            };
            if !per_ip.try_take(ip, max_per_ip) {
                st.connections_refused.fetch_add(1, Ordering::Relaxed);
                incoming.refuse();
                continue;
            }
            // The one place the sender's address is used: to find its region.
            let region = geo.lookup(ip);
            let (store, st, per_ip) = (store.clone(), st.clone(), per_ip.clone());
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    serve_connection(conn, region, store, st).await;
                }
                per_ip.give_back(ip);
                drop(permit);
            });
        }
    });
    Ok(Ingest {
        endpoint,
        stats,
        task,
    })
}

async fn serve_connection(
    conn: quinn::Connection,
    region: Region,
    store: Arc<dyn ReportStore>,
    stats: Arc<IngestStats>,
) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (region, store, stats) = (region.clone(), store.clone(), stats.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_stream(send, recv, region, store, stats).await {
                tracing::debug!("upload stream ended: {e:#}");
            }
        });
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    region: Region,
    store: Arc<dyn ReportStore>,
    stats: Arc<IngestStats>,
) -> Result<()> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix)
        .await
        .context("reading frame length")?;
    let response = match frame_len(prefix) {
        Err(e) => {
            stats.reject("frame_too_large");
            let _ = recv.stop(quinn::VarInt::from_u32(error_code::TOO_LARGE));
            Response::Error {
                code: error_code::TOO_LARGE,
                reason: e.to_string(),
            }
        }
        Ok(len) => {
            let mut body = vec![0u8; len];
            tokio::time::timeout(REQUEST_TIMEOUT, recv.read_exact(&mut body))
                .await
                .map_err(|_| {
                    stats.reject("request_timeout");
                    anyhow::anyhow!("request not complete within {REQUEST_TIMEOUT:?}")
                })?
                .context("reading frame")?;
            match decode_frame_body::<Request>(&body) {
                Err(e) => {
                    stats.reject("malformed_frame");
                    Response::Error {
                        code: error_code::PROTOCOL,
                        reason: e.to_string(),
                    }
                }
                Ok(Request::Upload { reports }) => {
                    process_batch(reports, region, store, &stats).await
                }
            }
        }
    };
    send.write_all(&encode_frame(&response)?).await?;
    send.finish()?;
    // Let the peer read the answer before the stream is dropped.
    let _ = send.stopped().await;
    Ok(())
}

/// Verifies, stores and answers one batch. Public for tests and load tools that bypass QUIC.
pub async fn process_batch(
    reports: Vec<SignedReport>,
    region: Region,
    store: Arc<dyn ReportStore>,
    stats: &IngestStats,
) -> Response {
    stats.batches.fetch_add(1, Ordering::Relaxed);
    if reports.len() > MAX_BATCH {
        stats.reject("batch_too_large");
        return Response::Error {
            code: error_code::TOO_LARGE,
            reason: format!("batch of {} reports exceeds {MAX_BATCH}", reports.len()),
        };
    }
    let now = Utc::now();
    let received_at_ms = now.timestamp_millis();
    let mut statuses: Vec<Option<ReportStatus>> = Vec::with_capacity(reports.len());
    let mut to_store = Vec::new();
    for signed in reports {
        let verdict = signed.verify().map_err(|e| (e.label(), e.to_string()));
        let checked = verdict.and_then(|report| {
            if report.started_at > now + MAX_FUTURE {
                Err((
                    "future_timestamp",
                    format!(
                        "started_at {} is in the future (collector time {now})",
                        report.started_at
                    ),
                ))
            } else if report.started_at < now - MAX_AGE {
                Err((
                    "too_old",
                    format!(
                        "started_at {} is older than {} days",
                        report.started_at,
                        MAX_AGE.num_days()
                    ),
                ))
            } else {
                Ok(report)
            }
        });
        match checked {
            Err((label, reason)) => {
                stats.reject(label);
                statuses.push(Some(ReportStatus::Rejected { reason }));
            }
            Ok(report) => {
                let mut agent = [0u8; 32];
                agent.copy_from_slice(&signed.key);
                let key = ReportKey {
                    agent,
                    id: report.id,
                };
                statuses.push(None);
                to_store.push((
                    key,
                    StoredReport {
                        signed,
                        region: region.clone(),
                        received_at_ms,
                    },
                ));
            }
        }
    }
    if !to_store.is_empty() {
        let outcomes =
            match tokio::task::spawn_blocking(move || store.insert_batch(&to_store)).await {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => {
                    tracing::error!("store failed, batch not acknowledged: {e}");
                    return Response::Error {
                        code: error_code::INTERNAL,
                        reason: format!("collector store failed: {e}"),
                    };
                }
                Err(e) => {
                    return Response::Error {
                        code: error_code::INTERNAL,
                        reason: format!("store task failed: {e}"),
                    }
                }
            };
        let mut outcomes = outcomes.into_iter();
        for slot in statuses.iter_mut().filter(|s| s.is_none()) {
            *slot = Some(match outcomes.next() {
                Some(InsertOutcome::Inserted) => {
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    ReportStatus::Accepted
                }
                Some(InsertOutcome::Duplicate) => {
                    stats.duplicate.fetch_add(1, Ordering::Relaxed);
                    ReportStatus::Duplicate
                }
                None => {
                    return Response::Error {
                        code: error_code::INTERNAL,
                        reason: "store returned fewer outcomes than reports".into(),
                    }
                }
            });
        }
    }
    Response::Ack {
        statuses: statuses.into_iter().flatten().collect(),
    }
}
