//! QUIC ingest: agents upload batches of signed reports; each is verified, placed in a region,
//! stored durably, and only then acknowledged.
//!
//! One upload is one bidirectional stream carrying one request frame and one response frame (see
//! `callwatch_proto::upload`). The sender's address is looked up in the region table when the
//! connection is accepted and goes no further: only the [`Region`] reaches the store.

use crate::geo::{Geo, Region};
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
    pub geo: Arc<Geo>,
    pub max_connections: usize,
    /// Connections one source address may hold at once.
    pub max_connections_per_ip: usize,
    pub rate_limits: RateLimits,
}

/// How long an upload stream may take to deliver its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Ingest rate limits. Generous by default: an agent back from a week offline uploads a few
/// hundred queued reports at once, and many volunteers can share one carrier-grade NAT address.
/// A refused batch gets `BUSY` with the reason; the agent keeps it and retries with backoff.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    /// Upload requests (batches) one source address may burst.
    pub batches_per_address_burst: f64,
    /// Sustained upload requests per second per source address.
    pub batches_per_address_per_sec: f64,
    /// New reports one agent key may burst.
    pub reports_per_key_burst: f64,
    /// Sustained new reports per second per agent key.
    pub reports_per_key_per_sec: f64,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            batches_per_address_burst: 200.0,
            batches_per_address_per_sec: 20.0,
            reports_per_key_burst: 2000.0,
            reports_per_key_per_sec: 1.0,
        }
    }
}

impl RateLimits {
    /// No limits (load tools, tests about something else).
    pub fn unlimited() -> Self {
        RateLimits {
            batches_per_address_burst: f64::INFINITY,
            batches_per_address_per_sec: f64::INFINITY,
            reports_per_key_burst: f64::INFINITY,
            reports_per_key_per_sec: f64::INFINITY,
        }
    }
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

/// Rejected or duplicate reports in a batch that cost the sending address one extra upload
/// token.
pub const REJECTS_PER_TOKEN: f64 = 8.0;

/// Token buckets per source address and per agent key, in memory only (addresses are never
/// stored or logged). Bounded: when a map grows past [`Limiter::MAX_ENTRIES`], buckets that have
/// refilled completely (indistinguishable from new ones) are forgotten.
pub struct Limiter {
    limits: RateLimits,
    by_address: Mutex<HashMap<IpAddr, Bucket>>,
    by_key: Mutex<HashMap<[u8; 32], Bucket>>,
}

impl Limiter {
    pub const MAX_ENTRIES: usize = 100_000;

    pub fn new(limits: RateLimits) -> Self {
        Limiter {
            limits,
            by_address: Mutex::new(HashMap::new()),
            by_key: Mutex::new(HashMap::new()),
        }
    }

    fn refill<K: std::hash::Hash + Eq + Copy>(
        map: &mut HashMap<K, Bucket>,
        key: K,
        burst: f64,
        rate: f64,
        now: std::time::Instant,
    ) -> &mut Bucket {
        if map.len() >= Self::MAX_ENTRIES && !map.contains_key(&key) {
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = map.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        b
    }

    /// Takes one batch token for `ip`; `Err` with the reason when it has none.
    pub fn admit_batch(&self, ip: IpAddr) -> Result<(), String> {
        let l = self.limits;
        if l.batches_per_address_burst.is_infinite() {
            return Ok(());
        }
        let mut m = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        let b = Self::refill(
            &mut m,
            ip,
            l.batches_per_address_burst,
            l.batches_per_address_per_sec,
            std::time::Instant::now(),
        );
        if b.tokens < 1.0 {
            return Err(format!(
                "rate limited: more than {} uploads/s from this address; retry later",
                l.batches_per_address_per_sec
            ));
        }
        b.tokens -= 1.0;
        Ok(())
    }

    /// Takes `tokens` more from `ip`'s bucket (it may go below zero: the address then waits).
    pub fn penalize_address(&self, ip: IpAddr, tokens: f64) {
        if self.limits.batches_per_address_burst.is_infinite() || tokens <= 0.0 {
            return;
        }
        let mut m = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = m.get_mut(&ip) {
            b.tokens -= tokens;
        }
    }

    /// Whether `key` may store more reports now (it has at least one token left).
    pub fn key_has_room(&self, key: &[u8; 32]) -> Result<(), String> {
        let l = self.limits;
        if l.reports_per_key_burst.is_infinite() {
            return Ok(());
        }
        let mut m = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        let b = Self::refill(
            &mut m,
            *key,
            l.reports_per_key_burst,
            l.reports_per_key_per_sec,
            std::time::Instant::now(),
        );
        if b.tokens < 1.0 {
            return Err(format!(
                "rate limited: agent key {} stored more than {} reports recently; retry later",
                &hex::encode(key)[..16],
                l.reports_per_key_burst
            ));
        }
        Ok(())
    }

    /// Charges `n` newly stored reports to `key` (may go below zero by one batch).
    pub fn charge_key(&self, key: &[u8; 32], n: usize) {
        if self.limits.reports_per_key_burst.is_infinite() || n == 0 {
            return;
        }
        let mut m = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = m.get_mut(key) {
            b.tokens -= n as f64;
        }
    }
}

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
    let limiter = Arc::new(Limiter::new(cfg.rate_limits));
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
            let limiter = limiter.clone();
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    let peer = Peer {
                        ip,
                        region,
                        limiter,
                    };
                    serve_connection(conn, Arc::new(peer), store, st).await;
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

/// What a connection's streams know of their sender: its region, and its address only for the
/// in-memory rate limit.
struct Peer {
    ip: IpAddr,
    region: Region,
    limiter: Arc<Limiter>,
}

async fn serve_connection(
    conn: quinn::Connection,
    peer: Arc<Peer>,
    store: Arc<dyn ReportStore>,
    stats: Arc<IngestStats>,
) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (peer, store, stats) = (peer.clone(), store.clone(), stats.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_stream(send, recv, &peer, store, stats).await {
                tracing::debug!("upload stream ended: {e:#}");
            }
        });
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: &Peer,
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
        // Every request costs the address a token, well-formed or not; a refused one is not
        // even read.
        Ok(_) if let Err(reason) = peer.limiter.admit_batch(peer.ip) => {
            stats.reject("rate_limited_address");
            let _ = recv.stop(quinn::VarInt::from_u32(error_code::BUSY));
            Response::Error {
                code: error_code::BUSY,
                reason,
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
                    let response =
                        process_batch(reports, peer.region.clone(), store, &stats, &peer.limiter)
                            .await;
                    // Rejected reports (bad signatures above all) and re-sent ones cost
                    // verification time an honest agent rarely makes the collector spend: the
                    // address pays extra for them.
                    if let Response::Ack { statuses } = &response {
                        let costly = statuses
                            .iter()
                            .filter(|s| !matches!(s, ReportStatus::Accepted))
                            .count();
                        peer.limiter
                            .penalize_address(peer.ip, costly as f64 / REJECTS_PER_TOKEN);
                    }
                    response
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
    limiter: &Limiter,
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
    // Per-key limit: a key with no room left defers the whole batch (nothing stored, the agent
    // retries later). Only newly stored reports are charged, so replaying someone's reports
    // (duplicates) cannot use up their allowance.
    for (key, _) in &to_store {
        if let Err(reason) = limiter.key_has_room(&key.agent) {
            stats.reject("rate_limited_key");
            return Response::Error {
                code: error_code::BUSY,
                reason,
            };
        }
    }
    let keys: Vec<[u8; 32]> = to_store.iter().map(|(k, _)| k.agent).collect();
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
        for (key, outcome) in keys.iter().zip(&outcomes) {
            if *outcome == InsertOutcome::Inserted {
                limiter.charge_key(key, 1);
            }
        }
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
