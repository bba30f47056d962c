//! Ingest: agents upload batches of signed reports over QUIC or, where QUIC does not get
//! through, over TLS on TCP; each report is verified, placed in a region, stored durably, and
//! only then acknowledged.
//!
//! Both transports carry the same frames (see `callwatch_proto::upload`): over QUIC one request
//! and one response per bidirectional stream, over TCP one after the other on the connection.
//! Both share one connection limit (overall and per address), one rate limiter and one request
//! handler ([`process_batch_attested`] for the reports). The sender's address is looked up in the region
//! table when the connection is accepted and goes no further: only the [`Region`] reaches the
//! store.

use crate::domain::{ReportKey, StoredReport, VerifiedReport};
use crate::geo::{Geo, Region};
use crate::store::{InsertOutcome, ReportStore};
use anyhow::{Context, Result};
use callwatch_proto::carry::CarryKey;
use callwatch_proto::pathtoken::NetPrefix;
use callwatch_proto::upload::{
    decode_frame_body, encode_frame, error_code, frame_len, QueuedReport, ReportStatus, Request,
    Response, MAX_BATCH, QUIC_SERVER_ALPNS,
};
use callwatch_proto::VerifyError;
use chrono::Utc;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

/// How far a report's start time may lie in the future (clock error on volunteers' machines).
pub const MAX_FUTURE: chrono::Duration = chrono::Duration::minutes(10);
/// How old a report may be when it arrives: 180 days. Agents queue while the collector is out of
/// reach, through long blocks, and volunteers carry reports out in files ([`crate::carry`]);
/// a report keeps its own start time however late it comes.
pub const MAX_AGE: chrono::Duration = chrono::Duration::days(180);

/// Ingest counters, by outcome and by rejection reason.
#[derive(Default)]
pub struct IngestStats {
    pub accepted: AtomicU64,
    pub duplicate: AtomicU64,
    pub batches: AtomicU64,
    pub connections_refused: AtomicU64,
    /// QUIC Retries sent: Initials from addresses not yet validated, answered statelessly.
    pub quic_retries: AtomicU64,
    /// QUIC handshakes that did not finish within [`QUIC_HANDSHAKE_TIMEOUT`].
    pub quic_handshake_timeouts: AtomicU64,
    /// Connections accepted over QUIC.
    pub connections_quic: AtomicU64,
    /// Connections accepted over TLS on TCP (agents whose QUIC did not get through).
    pub connections_tcp: AtomicU64,
    /// Reports or requests rejected, by reason.
    pub rejected: crate::counts::LabelCounts,
    /// Reflector attestations by result, and reports uploaded from another region.
    pub attest: crate::attest::AttestStats,
    /// Stored reports whose test was taken under reflector load (`reflector_loaded`): counted,
    /// their figures kept out of aggregates.
    pub reflector_loaded: AtomicU64,
    /// Stored reports attested in one region and uploaded from another ([`Filing`]).
    pub uploaded_elsewhere: AtomicU64,
    /// Stored reports filed under a hosting, cloud or VPN network ([`Filing`]).
    pub hosting: AtomicU64,
    /// The earliest test hour stored since the event detector last looked
    /// ([`crate::domain::events::Touched`]): a history uploaded late is read in full.
    pub touched: Arc<crate::domain::events::Touched>,
}

impl IngestStats {
    fn reject(&self, reason: &'static str) {
        self.rejected.add(reason);
    }

    /// Rejections so far, by reason label.
    pub fn rejected(&self) -> BTreeMap<&'static str, u64> {
        self.rejected.snapshot()
    }
}

pub struct IngestConfig {
    /// QUIC address.
    pub listen: SocketAddr,
    /// TLS-over-TCP address; `None`: no TCP listener.
    pub tcp: Option<SocketAddr>,
    /// The carry-out key agents may ask for ([`Request::SealKey`]); `None`: not offered.
    pub carry_key: Option<CarryKey>,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub store: Arc<dyn ReportStore>,
    pub geo: Arc<Geo>,
    pub max_connections: usize,
    /// Connections one source address may hold at once.
    pub max_connections_per_ip: usize,
    pub rate_limits: RateLimits,
    /// Reflector keys whose region attestations decide where a report is filed, and the
    /// networks marked as hosting.
    pub filer: crate::attest::Filer,
    /// The reflectors agents are told of ([`Request::Reflectors`]).
    pub reflectors: crate::reflector::registry::Directory,
    /// Where the collector's own reflector serves each platform ([`Request::Endpoints`]).
    pub endpoints: callwatch_proto::profile::Endpoints,
}

/// How long an upload stream may take to deliver its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TCP connection may take for its TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a QUIC connection may take for its handshake once its address is validated (it holds
/// a connection slot meanwhile): a few round trips take well under a second even on a bad
/// mobile path, so 10 s is generous for agents and short for a stalled handshake.
pub const QUIC_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TCP connection may sit idle between requests (QUIC's idle timeout is the same).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Ingest rate limits, keyed by the sender's network prefix (IPv4 /24, IPv6 /48: what one
/// subscriber or one small hoster commands, so a /64 full of fresh addresses is one sender) and
/// by agent key. Generous by default: an agent back from a week offline uploads a few hundred
/// queued reports at once, and many volunteers can share one carrier-grade NAT prefix.
/// A refused batch gets `BUSY` with the reason; the agent keeps it and retries with backoff.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    /// Upload requests (batches) one source prefix may burst.
    pub batches_per_prefix_burst: f64,
    /// Sustained upload requests per second per source prefix.
    pub batches_per_prefix_per_sec: f64,
    /// New reports one agent key may burst.
    pub reports_per_key_burst: f64,
    /// Sustained new reports per second per agent key.
    pub reports_per_key_per_sec: f64,
    /// Distinct agent keys whose reports one source prefix may upload per UTC day (agents
    /// rotate their key daily, so this bounds the volunteers one prefix can pass for). Reports
    /// of further keys are deferred: the agent keeps them and sends them again the next day.
    pub keys_per_prefix_per_day: usize,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            batches_per_prefix_burst: 200.0,
            batches_per_prefix_per_sec: 20.0,
            reports_per_key_burst: 2000.0,
            reports_per_key_per_sec: 1.0,
            keys_per_prefix_per_day: 256,
        }
    }
}

impl RateLimits {
    /// No limits (load tools, tests about something else).
    pub fn unlimited() -> Self {
        RateLimits {
            batches_per_prefix_burst: f64::INFINITY,
            batches_per_prefix_per_sec: f64::INFINITY,
            reports_per_key_burst: f64::INFINITY,
            reports_per_key_per_sec: f64::INFINITY,
            keys_per_prefix_per_day: usize::MAX,
        }
    }
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

/// Rejected or duplicate reports in a batch that cost the sending prefix one extra upload
/// token.
pub const REJECTS_PER_TOKEN: f64 = 8.0;

/// The distinct keys each source prefix uploaded for, this UTC day (in memory only; a restart
/// starts the count again).
#[derive(Default)]
struct KeysToday {
    day: i64,
    by_prefix: HashMap<NetPrefix, HashSet<[u8; 8]>>,
    /// Keys held over all prefixes, bounded by [`Limiter::MAX_KEYS_TODAY`].
    total: usize,
}

/// Token buckets per source prefix and per agent key, and the keys each prefix uploaded for
/// today, in memory only (addresses and prefixes are never stored or logged). Bounded: when a
/// bucket map grows past [`Limiter::MAX_ENTRIES`], buckets that have refilled completely
/// (indistinguishable from new ones) are forgotten.
pub struct Limiter {
    limits: RateLimits,
    by_prefix: Mutex<HashMap<NetPrefix, Bucket>>,
    by_key: Mutex<HashMap<[u8; 32], Bucket>>,
    keys_today: Mutex<KeysToday>,
}

impl Limiter {
    pub const MAX_ENTRIES: usize = 100_000;
    /// Keys remembered for today over all prefixes (about 50 MB at most); past it, reports of
    /// keys not yet seen today are deferred until the day turns.
    pub const MAX_KEYS_TODAY: usize = 1_000_000;

    pub fn new(limits: RateLimits) -> Self {
        Limiter {
            limits,
            by_prefix: Mutex::new(HashMap::new()),
            by_key: Mutex::new(HashMap::new()),
            keys_today: Mutex::new(KeysToday::default()),
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

    /// Takes one batch token for `ip`'s prefix; `Err` with the reason when it has none.
    pub fn admit_batch(&self, ip: IpAddr) -> Result<(), String> {
        let l = self.limits;
        if l.batches_per_prefix_burst.is_infinite() {
            return Ok(());
        }
        let mut m = self.by_prefix.lock().unwrap_or_else(|e| e.into_inner());
        let b = Self::refill(
            &mut m,
            NetPrefix::of(ip),
            l.batches_per_prefix_burst,
            l.batches_per_prefix_per_sec,
            std::time::Instant::now(),
        );
        if b.tokens < 1.0 {
            return Err(format!(
                "rate limited: more than {} uploads/s from this network (/24 or /48); retry \
                 later",
                l.batches_per_prefix_per_sec
            ));
        }
        b.tokens -= 1.0;
        Ok(())
    }

    /// Takes `tokens` more from `ip`'s prefix's bucket (it may go below zero: the prefix then
    /// waits).
    pub fn penalize_address(&self, ip: IpAddr, tokens: f64) {
        if self.limits.batches_per_prefix_burst.is_infinite() || tokens <= 0.0 {
            return;
        }
        let mut m = self.by_prefix.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = m.get_mut(&NetPrefix::of(ip)) {
            b.tokens -= tokens;
        }
    }

    /// Whether reports signed by `key` may be stored from `prefix` on `now`'s UTC day: yes if
    /// the prefix uploaded for this key today already, or has room for another key (which is
    /// then counted); `Err` with the reason, for a deferral, when it has none.
    pub fn key_from_prefix(
        &self,
        prefix: NetPrefix,
        key: &[u8; 32],
        now: chrono::DateTime<Utc>,
    ) -> Result<(), String> {
        let max = self.limits.keys_per_prefix_per_day;
        if max == usize::MAX {
            return Ok(());
        }
        let day = now.timestamp().div_euclid(86_400);
        let mut t = self.keys_today.lock().unwrap_or_else(|e| e.into_inner());
        if t.day != day {
            *t = KeysToday {
                day,
                ..KeysToday::default()
            };
        }
        let mut short = [0u8; 8];
        short.copy_from_slice(&key[..8]);
        let full = t.total >= Self::MAX_KEYS_TODAY;
        let keys = t.by_prefix.entry(prefix).or_default();
        if keys.contains(&short) {
            return Ok(());
        }
        if keys.len() >= max || full {
            return Err(format!(
                "this network (/24 or /48) already uploaded for {max} agent keys today, the \
                 most one network may; the report is kept and sent again after 00:00 UTC"
            ));
        }
        keys.insert(short);
        t.total += 1;
        Ok(())
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

/// Open connections per source address (an IPv6 /64 counts as one, [`subscriber`]). Held in
/// memory only while the connections are open;
/// never stored or logged.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// The address a connection limit counts: an IPv4 address, or an IPv6 address's /64 (one
/// subscriber's link gets a whole /64, so each of its addresses is not another sender).
pub fn subscriber(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
        v4 => v4,
    }
}

impl PerIp {
    fn try_take(&self, ip: IpAddr, max: usize) -> bool {
        let ip = subscriber(ip);
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }
    fn give_back(&self, ip: IpAddr) {
        let ip = subscriber(ip);
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
    /// Where the TLS-over-TCP listener is bound, if there is one.
    pub tcp_addr: Option<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
    tcp_task: Option<tokio::task::JoinHandle<()>>,
}

impl Ingest {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Stops accepting, closes connections and waits for the QUIC endpoint to go idle. TCP
    /// connections end with their listener's task (it owns them).
    pub async fn shutdown(&self) {
        self.task.abort();
        if let Some(t) = &self.tcp_task {
            t.abort();
        }
        self.endpoint
            .close(quinn::VarInt::from_u32(error_code::OK), b"shutting down");
        self.endpoint.wait_idle().await;
    }
}

fn tls_server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with ring")?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .context("collector certificate and key do not match")
}

/// The TLS config of the TCP listener: the QUIC certificate, TLS 1.3, and no ALPN selected
/// (agents offer `h2`/`http/1.1` as browsers do; see `callwatch_proto::upload`).
pub fn tcp_tls_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig> {
    tls_server_config(cert, key)
}

pub fn server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig> {
    let mut tls = tls_server_config(cert, key)?;
    tls.alpn_protocols = QUIC_SERVER_ALPNS.iter().map(|a| a.to_vec()).collect();
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

/// What both listeners share: the limits, the store and the region table.
struct Shared {
    store: Arc<dyn ReportStore>,
    stats: Arc<IngestStats>,
    geo: Arc<Geo>,
    limiter: Arc<Limiter>,
    /// Connections over both transports.
    connections: Arc<Semaphore>,
    per_ip: PerIp,
    max_per_ip: usize,
    carry_key: Option<CarryKey>,
    filer: crate::attest::Filer,
    reflectors: crate::reflector::registry::Directory,
    endpoints: callwatch_proto::profile::Endpoints,
}

/// A connection's place under the limits; gives it back when dropped.
struct Admitted {
    shared: Arc<Shared>,
    ip: IpAddr,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.shared.per_ip.give_back(self.ip);
    }
}

impl Shared {
    /// A place for a new connection from `ip`, or `None` (counted) at a limit.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            self.stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if !self.per_ip.try_take(ip, self.max_per_ip) {
            self.stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Admitted {
            shared: self.clone(),
            ip,
            _permit: permit,
        })
    }

    /// What a connection's requests know of their sender. The one place the sender's address is
    /// used: to find its region (and, in memory, for the rate limit).
    fn peer(&self, ip: IpAddr) -> Peer {
        Peer {
            ip,
            region: self.geo.lookup(ip),
            limiter: self.limiter.clone(),
        }
    }
}

/// Binds the QUIC endpoint (and the TCP listener, if configured) and starts accepting agents.
pub fn spawn_ingest(cfg: IngestConfig) -> Result<Ingest> {
    let tcp_listener = match cfg.tcp {
        None => None,
        Some(addr) => {
            let std_listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding TLS/TCP ingest on {addr}"))?;
            std_listener.set_nonblocking(true)?;
            Some(tokio::net::TcpListener::from_std(std_listener)?)
        }
    };
    let tcp_tls = tcp_tls_config(cfg.cert.clone(), cfg.key.clone_key())?;
    let server = server_config(cfg.cert, cfg.key)?;
    let endpoint = quinn::Endpoint::server(server, cfg.listen)
        .with_context(|| format!("binding QUIC ingest on {}", cfg.listen))?;
    let stats = Arc::new(IngestStats::default());
    let shared = Arc::new(Shared {
        store: cfg.store,
        stats: stats.clone(),
        geo: cfg.geo,
        limiter: Arc::new(Limiter::new(cfg.rate_limits)),
        connections: Arc::new(Semaphore::new(cfg.max_connections)),
        per_ip: PerIp::default(),
        max_per_ip: cfg.max_connections_per_ip,
        carry_key: cfg.carry_key,
        filer: cfg.filer,
        reflectors: cfg.reflectors,
        endpoints: cfg.endpoints,
    });
    let (ep, sh) = (endpoint.clone(), shared.clone());
    let task = tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            // An Initial from an address not yet validated gets a stateless Retry, always: it
            // holds no slot and no state, so spoofed Initials cannot fill the caps nor lock an
            // address out, and the collector sends no handshake flight to an address that did
            // not ask for one. It costs an agent one round trip per connection, and agents
            // connect a few times a day. Only an Initial carrying the Retry's token (proof that
            // its sender receives at its address) or a NEW_TOKEN from an earlier connection is
            // validated, and only then is a slot taken.
            if !incoming.remote_address_validated() {
                sh.stats.quic_retries.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = incoming.retry() {
                    // Not possible for an unvalidated address (quinn guarantees `may_retry`);
                    // dropped without an answer should it ever be.
                    e.into_incoming().ignore();
                }
                continue;
            }
            let ip = incoming.remote_address().ip();
            let Some(admitted) = sh.admit(ip) else {
                incoming.refuse();
                continue;
            };
            let peer = Arc::new(sh.peer(ip));
            tokio::spawn(async move {
                let connecting = match incoming.accept() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!("QUIC connection not accepted: {e}");
                        return;
                    }
                };
                // A validated sender that stalls its handshake holds its slot this long only.
                match tokio::time::timeout(QUIC_HANDSHAKE_TIMEOUT, connecting).await {
                    Ok(Ok(conn)) => {
                        admitted
                            .shared
                            .stats
                            .connections_quic
                            .fetch_add(1, Ordering::Relaxed);
                        serve_connection(conn, peer, admitted.shared.clone()).await;
                    }
                    Ok(Err(e)) => tracing::debug!("QUIC handshake failed: {e}"),
                    Err(_) => {
                        admitted
                            .shared
                            .stats
                            .quic_handshake_timeouts
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(admitted);
            });
        }
    });
    let tcp_addr = tcp_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let tcp_task = tcp_listener.map(|listener| {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tcp_tls));
        tokio::spawn(serve_tcp(listener, acceptor, shared))
    });
    Ok(Ingest {
        endpoint,
        stats,
        tcp_addr,
        task,
        tcp_task,
    })
}

/// What a connection's requests know of their sender: its region, and its address only for the
/// in-memory rate limit.
struct Peer {
    ip: IpAddr,
    region: Region,
    limiter: Arc<Limiter>,
}

async fn serve_connection(conn: quinn::Connection, peer: Arc<Peer>, shared: Arc<Shared>) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (peer, shared) = (peer.clone(), shared.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_stream(send, recv, &peer, &shared).await {
                tracing::debug!("upload stream ended: {e:#}");
            }
        });
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: &Peer,
    shared: &Shared,
) -> Result<()> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix)
        .await
        .context("reading frame length")?;
    let answer = answer_request(prefix, &mut recv, peer, shared).await?;
    if let Some(code) = answer.unread {
        let _ = recv.stop(quinn::VarInt::from_u32(code));
    }
    send.write_all(&encode_frame(&answer.response)?).await?;
    send.finish()?;
    // Let the peer read the answer before the stream is dropped.
    let _ = send.stopped().await;
    Ok(())
}

/// Accepts TLS-over-TCP agents until the task is aborted; the connections live in a `JoinSet`
/// owned here, so aborting the listener ends them too.
async fn serve_tcp(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (tcp, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like: back off a little instead of spinning on the error.
                tracing::warn!("TCP ingest: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ip = from.ip();
        let Some(admitted) = shared.admit(ip) else {
            drop(tcp);
            continue;
        };
        let (acceptor, peer) = (acceptor.clone(), shared.peer(ip));
        connections.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(Ok(tls)) =
                tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            admitted
                .shared
                .stats
                .connections_tcp
                .fetch_add(1, Ordering::Relaxed);
            if let Err(e) = serve_tcp_connection(tls, &peer, &admitted.shared).await {
                tracing::debug!("TCP upload connection ended: {e:#}");
            }
        });
    }
}

/// Request after request on one TLS connection, each answered before the next is read; ends at
/// the agent's close, after [`IDLE_TIMEOUT`] without a request, or after a request whose body
/// was not read (refused by its size or the rate limit: the byte stream is then out of step).
async fn serve_tcp_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut tls: S,
    peer: &Peer,
    shared: &Shared,
) -> Result<()> {
    loop {
        let mut prefix = [0u8; 4];
        match tokio::time::timeout(IDLE_TIMEOUT, tls.read_exact(&mut prefix)).await {
            Err(_) => break,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Ok(Err(e)) => return Err(e).context("reading frame length"),
            Ok(Ok(_)) => {}
        }
        let answer = answer_request(prefix, &mut tls, peer, shared).await?;
        tls.write_all(&encode_frame(&answer.response)?).await?;
        tls.flush().await?;
        if answer.unread.is_some() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
    Ok(())
}

/// The answer to one request, and whether its body was left unread (with the error code to
/// stop the stream with).
struct Answer {
    response: Response,
    unread: Option<u32>,
}

/// Reads one request whose length prefix was read, and answers it. The same for QUIC streams
/// and TCP connections: every request costs the address a rate token, well-formed or not; a
/// refused one is not even read.
async fn answer_request<R: AsyncRead + Unpin>(
    prefix: [u8; 4],
    recv: &mut R,
    peer: &Peer,
    shared: &Shared,
) -> Result<Answer> {
    let stats = &shared.stats;
    let len = match frame_len(prefix) {
        Err(e) => {
            stats.reject("frame_too_large");
            return Ok(Answer {
                response: Response::Error {
                    code: error_code::TOO_LARGE,
                    reason: e.to_string(),
                },
                unread: Some(error_code::TOO_LARGE),
            });
        }
        Ok(len) => len,
    };
    if let Err(reason) = peer.limiter.admit_batch(peer.ip) {
        stats.reject("rate_limited_network");
        return Ok(Answer {
            response: Response::Error {
                code: error_code::BUSY,
                reason,
            },
            unread: Some(error_code::BUSY),
        });
    }
    let mut body = vec![0u8; len];
    tokio::time::timeout(REQUEST_TIMEOUT, recv.read_exact(&mut body))
        .await
        .map_err(|_| {
            stats.reject("request_timeout");
            anyhow::anyhow!("request not complete within {REQUEST_TIMEOUT:?}")
        })?
        .context("reading frame")?;
    let response = match decode_frame_body::<Request>(&body) {
        Err(e) => {
            stats.reject("malformed_frame");
            Response::Error {
                code: error_code::PROTOCOL,
                reason: e.to_string(),
            }
        }
        Ok(Request::SealKey) => match shared.carry_key {
            Some(key) => Response::SealKey { key: key.0 },
            None => Response::Error {
                code: error_code::PROTOCOL,
                reason: "this collector offers no carry-out key".into(),
            },
        },
        Ok(Request::Reflectors) => Response::Reflectors {
            reflectors: shared.reflectors.list(),
        },
        Ok(Request::Endpoints) => Response::Endpoints(shared.endpoints.clone()),
        Ok(request @ (Request::Upload { .. } | Request::UploadWithTokens { .. })) => {
            let reports = match request.into_queued() {
                Some(Ok(reports)) => reports,
                Some(Err(reason)) => {
                    stats.reject("malformed_frame");
                    return Ok(Answer {
                        response: Response::Error {
                            code: error_code::PROTOCOL,
                            reason,
                        },
                        unread: None,
                    });
                }
                None => Vec::new(),
            };
            let arrival = crate::attest::Arrival::Upload(
                peer.region.clone(),
                callwatch_proto::pathtoken::NetPrefix::of(peer.ip),
            );
            let response = process_batch_attested(
                reports,
                arrival,
                &shared.filer,
                shared.store.clone(),
                stats,
                &peer.limiter,
            )
            .await;
            // Rejected reports (bad signatures above all) and re-sent ones cost verification
            // time an honest agent rarely makes the collector spend: the address pays extra.
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
    };
    Ok(Answer {
        response,
        unread: None,
    })
}

/// A batch not stored for a fault of the collector's own: the details (a store's host, port and
/// server text) go to the log under a random id, the agent gets the id; it keeps the batch.
fn internal_error(details: String) -> Response {
    let id = crate::fault::log_with_id(&details);
    Response::Error {
        code: error_code::INTERNAL,
        reason: format!(
            "internal error (id {id}): nothing stored, keep the batch and send it again later"
        ),
    }
}

/// Why a report whose start lies more than [`MAX_FUTURE`] ahead of the collector's clock `now` is
/// deferred, in words a volunteer can act on.
fn clock_ahead(started_at: chrono::DateTime<Utc>, now: chrono::DateTime<Utc>) -> String {
    let ahead = (started_at - now).num_seconds();
    let (n, unit) = match ahead {
        ..=5_399 => (ahead.div_euclid(60), "minute"),
        5_400..=172_799 => ((ahead + 1_800).div_euclid(3_600), "hour"),
        _ => ((ahead + 43_200).div_euclid(86_400), "day"),
    };
    let unit = if n == 1 {
        unit.to_string()
    } else {
        format!("{unit}s")
    };
    format!(
        "started_at {} is in the future, {n} {unit} ahead of the collector's clock ({}): this \
         machine's clock is probably wrong (turn on automatic time, NTP); the report is kept and \
         sent again, and accepted once the collector's clock has passed its start",
        started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        now.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// Verifies, stores and answers one batch. Each report is filed under its reflector-attested
/// region when the attestation is valid under `filer`'s keys, else under the upload's region
/// (unknown for a carried-out file), and marked as `filer` decides (see
/// [`crate::attest::Filer::file`]). Public for tests and load tools that bypass QUIC.
pub async fn process_batch_attested(
    reports: Vec<QueuedReport>,
    arrival: crate::attest::Arrival,
    filer: &crate::attest::Filer,
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
    let mut to_store: Vec<VerifiedReport> = Vec::new();
    for QueuedReport {
        report: signed,
        path_token,
    } in reports
    {
        // Keys per network and day, before the signature is checked (the costly part): a report
        // whose key the sending network has no room for today is deferred unverified, so minting
        // keys buys no verification work. Skipping the check cannot hurt anyone else: the quota
        // spent is the sender's own network's.
        if let (crate::attest::Arrival::Upload(_, prefix), Ok(key)) =
            (&arrival, <[u8; 32]>::try_from(signed.key.as_slice()))
        {
            if let Err(reason) = limiter.key_from_prefix(*prefix, &key, now) {
                stats.reject("keys_per_prefix");
                statuses.push(Some(ReportStatus::Deferred { reason }));
                continue;
            }
        }
        let verdict = signed.verify();
        // A schema newer than this release knows is deferred: the agent keeps the report for a
        // collector that knows it.
        let mut transient = matches!(verdict, Err(VerifyError::NewerSchema(_)));
        let verdict = verdict.map_err(|e| (e.label(), e.to_string()));
        let checked = verdict.and_then(|report| {
            if report.started_at > now + MAX_FUTURE {
                // The agent's clock is ahead: the report becomes acceptable once the collector's
                // clock passes it, so it is deferred (kept and sent again), never refused.
                transient = true;
                Err(("future_timestamp", clock_ahead(report.started_at, now)))
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
                statuses.push(Some(if transient {
                    ReportStatus::Deferred { reason }
                } else {
                    ReportStatus::Rejected { reason }
                }));
            }
            Ok(report) => {
                let mut agent = [0u8; 32];
                agent.copy_from_slice(&signed.key);
                let key = ReportKey {
                    agent,
                    id: report.id,
                };
                statuses.push(None);
                let (filed, filing) =
                    filer.file(&report, path_token.as_ref(), &arrival, now, &stats.attest);
                // Parsed once, here: the store takes the parse and its observations.
                to_store.push(VerifiedReport::new(
                    key,
                    StoredReport {
                        signed,
                        region: filed,
                        received_at_ms,
                        filing,
                    },
                    report,
                ));
            }
        }
    }
    // Per-key limit: a key with no room left defers the whole batch (nothing stored, the agent
    // retries later). Only newly stored reports are charged, so replaying someone's reports
    // (duplicates) cannot use up their allowance.
    for v in &to_store {
        if let Err(reason) = limiter.key_has_room(&v.key.agent) {
            stats.reject("rate_limited_key");
            return Response::Error {
                code: error_code::BUSY,
                reason,
            };
        }
    }
    if !to_store.is_empty() {
        // The batch comes back with its outcomes: what was stored is counted from it.
        let stored = tokio::task::spawn_blocking(move || {
            store.insert_batch(&to_store).map(|o| (o, to_store))
        })
        .await;
        let (outcomes, to_store) = match stored {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                return internal_error(format!("store failed, batch not acknowledged: {e}"))
            }
            Err(e) => return internal_error(format!("store task failed: {e}")),
        };
        let mut outcomes = outcomes.into_iter().zip(&to_store);
        for slot in statuses.iter_mut().filter(|s| s.is_none()) {
            *slot = Some(match outcomes.next() {
                Some((InsertOutcome::Inserted, v)) => {
                    limiter.charge_key(&v.key.agent, 1);
                    stats
                        .touched
                        .note(v.report.started_at.timestamp().div_euclid(3600));
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let count = |c: &AtomicU64, yes: bool| {
                        c.fetch_add(u64::from(yes), Ordering::Relaxed);
                    };
                    count(&stats.reflector_loaded, v.report.reflector_loaded);
                    count(
                        &stats.uploaded_elsewhere,
                        v.stored.filing.uploaded_elsewhere,
                    );
                    count(&stats.hosting, v.stored.filing.hosting);
                    ReportStatus::Accepted
                }
                Some((InsertOutcome::Duplicate, _)) => {
                    stats.duplicate.fetch_add(1, Ordering::Relaxed);
                    ReportStatus::Duplicate
                }
                None => return internal_error("store returned fewer outcomes than reports".into()),
            });
        }
    }
    let statuses: Vec<ReportStatus> = statuses.into_iter().flatten().collect();
    // One line per acknowledged batch, counts only: never an address or a key.
    let count = |f: fn(&ReportStatus) -> bool| statuses.iter().filter(|s| f(s)).count();
    tracing::info!(
        accepted = count(|s| matches!(s, ReportStatus::Accepted)),
        duplicate = count(|s| matches!(s, ReportStatus::Duplicate)),
        rejected = count(|s| matches!(s, ReportStatus::Rejected { .. })),
        deferred = count(|s| matches!(s, ReportStatus::Deferred { .. })),
        "batch acknowledged"
    );
    Response::Ack { statuses }
}

#[cfg(test)]
mod tests {
    use super::clock_ahead;
    use chrono::{Duration, TimeZone, Utc};

    /// Connection slots count an IPv6 /64 as one sender (each of its 2^64 addresses is not a
    /// new one), IPv4 addresses one by one, and IPv4-mapped IPv6 as IPv4.
    #[test]
    fn a_v6_64_is_one_subscriber() {
        use super::subscriber;
        use std::net::IpAddr;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(subscriber(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            subscriber(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(subscriber(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(subscriber(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(subscriber(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn a_clock_ahead_is_said_in_units_a_volunteer_reads() {
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 10, 0, 0).unwrap();
        for (ahead, says) in [
            (Duration::minutes(11), "11 minutes ahead"),
            (Duration::minutes(61), "61 minutes ahead"),
            (Duration::minutes(90), "2 hours ahead"),
            (Duration::hours(1) * 47, "47 hours ahead"),
            (Duration::days(1) * 2, "2 days ahead"),
            (Duration::days(400), "400 days ahead"),
        ] {
            let text = clock_ahead(now + ahead, now);
            assert!(text.contains(says), "{ahead}: {text}");
            assert!(text.contains("2026-11-30 10:00:00 UTC"), "{text}");
        }
    }
}
