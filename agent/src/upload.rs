//! Uploading queued reports to the collector, with the collector's certificate pinned: over
//! QUIC, and over TLS on TCP when QUIC does not get through.
//!
//! The fallback rule: QUIC is tried first. If it fails for any reason that is not an answer
//! from the collector — no answer within the connect timeout, no route, a handshake that never
//! completes, a certificate other than the pinned one, a connection lost midway (UDP blocked or
//! QUIC throttled) — the rest of the queue goes over TLS on TCP to the same pinned collector,
//! with the same frames and the same acknowledgement rule. A refusal (the collector answered,
//! authenticated by the pin, with an error) is not a reason to fall back: it stays the answer.

use crate::queue::Queue;
use anyhow::{anyhow, Context, Result};
use callwatch_proto::carry::CarryKey;
use callwatch_proto::profile::Endpoints;
use callwatch_proto::upload::{
    decode_frame_body, encode_frame, error_code, frame_len, ReflectorInfo, ReportStatus, Request,
    Response, ALPN, TCP_ALPN_OFFER,
};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Set by the pinned-certificate check when the peer showed another certificate: an upload
/// whose every transport failed with it set is [`UploadError::WrongPin`], whatever words the
/// TLS and QUIC stacks wrap the refusal in.
type OtherCertSeen = Arc<AtomicBool>;

/// Accepts exactly the certificate whose SHA-256 is the pin; handshake signatures are still
/// checked by rustls, so only the holder of that certificate's key can answer.
#[derive(Debug)]
struct PinnedCert {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    other_seen: OtherCertSeen,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            self.other_seen.store(true, Ordering::Relaxed);
            Err(rustls::Error::General(format!(
                "collector certificate fingerprint {} does not match the pinned {}",
                hex::encode(got),
                hex::encode(self.pin)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls client config that trusts only the pinned collector certificate, offering `alpn`.
fn pinned_tls(
    pin: [u8; 32],
    alpn: &[&[u8]],
    other_seen: OtherCertSeen,
) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with ring")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCert {
            pin,
            provider,
            other_seen,
        }))
        .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(tls)
}

/// A QUIC client config that trusts only the pinned collector certificate.
pub fn pinned_client_config(pin: [u8; 32]) -> Result<quinn::ClientConfig> {
    pinned_client_config_offering(pin, &[ALPN])
}

/// [`pinned_client_config`] offering other ALPN values (tests: agents of older releases, or
/// peers that speak something else).
pub fn pinned_client_config_offering(pin: [u8; 32], alpn: &[&[u8]]) -> Result<quinn::ClientConfig> {
    quic_config(pin, alpn, OtherCertSeen::default())
}

fn quic_config(
    pin: [u8; 32],
    alpn: &[&[u8]],
    other_seen: OtherCertSeen,
) -> Result<quinn::ClientConfig> {
    let tls = pinned_tls(pin, alpn, other_seen)?;
    let crypto = QuicClientConfig::try_from(tls).context("QUIC TLS config")?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A TLS-over-TCP connector that trusts only the pinned collector certificate and offers the
/// ALPN list browsers offer (`callwatch_proto::upload::TCP_ALPN_OFFER`).
pub fn pinned_tcp_connector(pin: [u8; 32]) -> Result<tokio_rustls::TlsConnector> {
    tcp_connector(pin, OtherCertSeen::default())
}

fn tcp_connector(pin: [u8; 32], other_seen: OtherCertSeen) -> Result<tokio_rustls::TlsConnector> {
    Ok(tokio_rustls::TlsConnector::from(Arc::new(pinned_tls(
        pin,
        &TCP_ALPN_OFFER,
        other_seen,
    )?)))
}

/// A TLS-over-TCP connection to the collector.
pub type TcpConn = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Connects over TCP from `bind` (if given) to `addr` and completes the pinned TLS handshake,
/// all within `timeout`.
pub async fn connect_tcp(
    addr: SocketAddr,
    server_name: &str,
    pin: [u8; 32],
    bind: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpConn> {
    connect_tcp_with(pinned_tcp_connector(pin)?, addr, server_name, bind, timeout).await
}

/// [`connect_tcp`] through `connector`.
async fn connect_tcp_with(
    connector: tokio_rustls::TlsConnector,
    addr: SocketAddr,
    server_name: &str,
    bind: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpConn> {
    let name = ServerName::try_from(server_name.to_string())
        .with_context(|| format!("server name {server_name:?}"))?;
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .context("making a TCP socket")?;
    if let Some(ip) = bind {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding TCP client on {ip}"))?;
    }
    let connect = async {
        let tcp = socket
            .connect(addr)
            .await
            .with_context(|| format!("TCP connection to {addr}"))?;
        let _ = tcp.set_nodelay(true);
        connector
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {addr}"))
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| anyhow!("no TLS connection to {addr} within {timeout:?}"))?
}

/// Which transport carried an upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Quic,
    Tcp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        })
    }
}

/// Where and how to upload.
#[derive(Clone, Debug)]
pub struct UploadTarget {
    /// The collector's QUIC address.
    pub collector: SocketAddr,
    /// Its TLS-over-TCP address, tried when QUIC does not get through; `None`: QUIC only.
    pub tcp: Option<SocketAddr>,
    /// TLS server name (SNI; an address sends none). Only the pin is checked.
    pub server_name: String,
    pub pin: [u8; 32],
    /// Local address to upload from.
    pub bind: Option<IpAddr>,
    pub batch: usize,
    pub connect_timeout: Duration,
    /// Ask the collector for its carry-out key (on a pass that has reports to upload).
    pub fetch_seal_key: bool,
    /// Try TLS over TCP first, QUIC only if TCP does not get through (QUIC failed recently:
    /// see [`crate::state::AgentState::tcp_first`]).
    pub tcp_first: bool,
    /// Ask where the collector's reflector serves each platform once the queue is uploaded
    /// (an agent whose config names no reflector learns, and refreshes, its ports so).
    pub fetch_endpoints: bool,
}

impl UploadTarget {
    /// QUIC and TCP at the same address, no key fetching, 64-report batches, 5 s to connect.
    pub fn new(collector: SocketAddr, pin: [u8; 32]) -> Self {
        UploadTarget {
            collector,
            tcp: Some(collector),
            server_name: collector.ip().to_string(),
            pin,
            bind: None,
            batch: 64,
            connect_timeout: Duration::from_secs(5),
            fetch_seal_key: false,
            tcp_first: false,
            fetch_endpoints: false,
        }
    }
}

/// What one upload pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadSummary {
    pub accepted: usize,
    pub duplicate: usize,
    pub rejected: usize,
    /// Kept in the queue for a newer collector: their report schema is newer than this
    /// collector knows ([`ReportStatus::keeps_report`]).
    pub deferred: usize,
    /// Still queued when the pass ended.
    pub remaining: usize,
    /// The transport that reached the collector; `None` when there was nothing to do.
    pub transport: Option<Transport>,
    /// Why QUIC was given up for TCP in this pass, if it was.
    pub quic_error: Option<String>,
    /// The collector's carry-out key, if asked for and given.
    pub seal_key: Option<CarryKey>,
    /// The reflectors the collector vouches for, asked after the queue was uploaded; `None`
    /// when not given (an earlier collector, or the question went unanswered).
    pub reflectors: Option<Vec<ReflectorInfo>>,
    /// Where the collector's reflector serves each platform, when asked
    /// ([`UploadTarget::fetch_endpoints`]); an earlier collector, which does not say, is
    /// assumed to serve every profile at its own ports. `None`: unanswered or unusable.
    pub endpoints: Option<Endpoints>,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The collector could not be reached or the connection broke; everything stays queued.
    #[error("collector unreachable: {0:#}")]
    Unreachable(anyhow::Error),
    /// The collector answered with an error for a whole batch; it stays queued.
    #[error("collector refused the batch: {0}")]
    Refused(String),
    /// Every transport reached something that showed another certificate than the pinned one:
    /// a wrong pin, or someone in between. Everything stays queued.
    #[error("wrong pin, or the connection is being intercepted: {0}")]
    WrongPin(String),
    #[error("{0:#}")]
    Local(anyhow::Error),
}

/// Uploads the whole queue, batch by batch, over QUIC or else TLS over TCP (see the module
/// text). A report is removed only after the collector acknowledged it (accepted or duplicate:
/// stored; rejected: it never will be — its reason is logged). On any error the unacknowledged
/// reports stay queued.
pub async fn upload_queue(
    queue: &Queue,
    target: &UploadTarget,
) -> Result<UploadSummary, UploadError> {
    transfer(Some(queue), target).await
}

/// Connects to the collector as an upload does (the same transports, pin and fallback) and only
/// asks it where its reflector serves each platform (and which reflectors it vouches for),
/// uploading nothing: what an agent whose config names no reflector does before its first test.
pub async fn ask_collector(target: &UploadTarget) -> Result<UploadSummary, UploadError> {
    let target = UploadTarget {
        fetch_endpoints: true,
        fetch_seal_key: false,
        ..target.clone()
    };
    transfer(None, &target).await
}

/// [`upload_queue`], or with no queue [`ask_collector`].
async fn transfer(
    queue: Option<&Queue>,
    target: &UploadTarget,
) -> Result<UploadSummary, UploadError> {
    let remaining = || queue.map_or(0, Queue::len);
    let mut summary = UploadSummary {
        remaining: remaining(),
        ..Default::default()
    };
    if queue.is_some_and(Queue::is_empty) {
        return Ok(summary);
    }
    // QUIC first, TLS on TCP when it does not get through; the other way round for a while
    // after QUIC failed (the caller's `tcp_first`).
    let order: &[Transport] = match target.tcp {
        None => &[Transport::Quic],
        Some(tcp) if target.tcp_first => {
            tracing::info!(
                "QUIC did not get through recently; uploading over TLS on TCP to {tcp} first"
            );
            &[Transport::Tcp, Transport::Quic]
        }
        Some(_) => &[Transport::Quic, Transport::Tcp],
    };
    let label = |t: Transport| match t {
        Transport::Quic => "QUIC",
        Transport::Tcp => "TLS/TCP",
    };
    let mut failures = Vec::new();
    let mut result = Ok(());
    for (i, &transport) in order.iter().enumerate() {
        let other_seen = OtherCertSeen::default();
        let tried = match (transport, target.tcp) {
            (Transport::Tcp, Some(tcp)) => {
                upload_tcp(queue, target, tcp, &mut summary, other_seen.clone()).await
            }
            _ => upload_quic(queue, target, &mut summary, other_seen.clone()).await,
        };
        match tried {
            Ok(()) => {
                summary.transport = Some(transport);
                result = Ok(());
                break;
            }
            Err(UploadError::Unreachable(e)) => {
                if transport == Transport::Quic {
                    summary.quic_error = Some(format!("{e:#}"));
                    if let (0, Some(tcp)) = (i, target.tcp) {
                        tracing::info!(
                            "QUIC to {} did not get through ({e:#}); trying TLS over TCP to {tcp}",
                            target.collector
                        );
                    }
                }
                failures.push((transport, e, other_seen.load(Ordering::Relaxed)));
                result = Err(());
            }
            // An answer from the collector (a refusal) is not a reason to try the other way.
            Err(e) => {
                summary.remaining = remaining();
                return Err(e);
            }
        }
    }
    // Something answered on every transport tried, and each time with another certificate.
    if !failures.is_empty() && failures.iter().all(|(_, _, other)| *other) {
        summary.remaining = remaining();
        let seen: Vec<String> = failures
            .iter()
            .map(|(t, e, _)| format!("over {}: {e:#}", label(*t)))
            .collect();
        return Err(UploadError::WrongPin(format!(
            "the collector at {} showed a certificate other than the pinned one ({}); check \
             collector_pin against the operator's, and the network path",
            target.collector,
            seen.join("; ")
        )));
    }
    let result = result.map_err(|()| {
        UploadError::Unreachable(match failures.len() {
            1 => failures.remove(0).1,
            _ => anyhow!(
                "{}",
                failures
                    .iter()
                    .map(|(t, e, _)| format!("over {}: {e:#}", label(*t)))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        })
    });
    summary.remaining = remaining();
    result.map(|_| summary)
}

async fn upload_quic(
    queue: Option<&Queue>,
    target: &UploadTarget,
    summary: &mut UploadSummary,
    other_seen: OtherCertSeen,
) -> Result<(), UploadError> {
    let local = SocketAddr::new(
        target.bind.unwrap_or(match target.collector {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }),
        0,
    );
    let mut endpoint = quinn::Endpoint::client(local)
        .with_context(|| format!("binding QUIC client on {local}"))
        .map_err(UploadError::Local)?;
    endpoint.set_default_client_config(
        quic_config(target.pin, &[ALPN], other_seen).map_err(UploadError::Local)?,
    );
    let result = async {
        let connecting = endpoint
            .connect(target.collector, &target.server_name)
            .map_err(|e| UploadError::Unreachable(anyhow!(e)))?;
        let conn = tokio::time::timeout(target.connect_timeout, connecting)
            .await
            .map_err(|_| {
                UploadError::Unreachable(anyhow!(
                    "no answer from {} within {:?}",
                    target.collector,
                    target.connect_timeout
                ))
            })?
            .map_err(|e| UploadError::Unreachable(anyhow!(e)))?;
        drain(&mut Conn::Quic(conn), queue, target, summary).await
    }
    .await;
    endpoint.close(0u32.into(), b"done");
    // Give the close a moment to reach the collector; not needed for correctness.
    let _ = tokio::time::timeout(Duration::from_millis(200), endpoint.wait_idle()).await;
    result
}

async fn upload_tcp(
    queue: Option<&Queue>,
    target: &UploadTarget,
    addr: SocketAddr,
    summary: &mut UploadSummary,
    other_seen: OtherCertSeen,
) -> Result<(), UploadError> {
    let connector = tcp_connector(target.pin, other_seen).map_err(UploadError::Local)?;
    let stream = connect_tcp_with(
        connector,
        addr,
        &target.server_name,
        target.bind,
        target.connect_timeout,
    )
    .await
    .map_err(UploadError::Unreachable)?;
    let mut conn = Conn::Tcp(Box::new(stream));
    let result = drain(&mut conn, queue, target, summary).await;
    if let Conn::Tcp(mut s) = conn {
        let _ = tokio::time::timeout(Duration::from_millis(200), s.shutdown()).await;
    }
    result
}

/// A connection to the collector over either transport.
enum Conn {
    Quic(quinn::Connection),
    Tcp(Box<TcpConn>),
}

impl Conn {
    async fn request(&mut self, req: &Request) -> Result<Response> {
        match self {
            Conn::Quic(c) => request(c, req).await,
            Conn::Tcp(s) => request_tcp(s.as_mut(), req).await,
        }
    }
}

/// The longest one request may wait for its answer (the collector answers after its store is
/// durable).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the reflector list may take once the queue is uploaded.
const REFLECTORS_TIMEOUT: Duration = Duration::from_secs(5);

/// One question asked after the queue is uploaded, best effort: the upload already succeeded, so
/// a failure (an earlier collector answers `Error`, no answer in [`REFLECTORS_TIMEOUT`]) is only
/// logged, naming `what` was asked, and the answer is `None`; an `Error` answer is returned
/// (the caller may read it).
async fn ask_best_effort(conn: &mut Conn, req: &Request, what: &str) -> Option<Response> {
    match tokio::time::timeout(REFLECTORS_TIMEOUT, conn.request(req)).await {
        Ok(Ok(answer)) => Some(answer),
        Ok(Err(e)) => {
            tracing::debug!("asking for {what}: {e:#}");
            None
        }
        Err(_) => {
            tracing::debug!("no {what} within {REFLECTORS_TIMEOUT:?}");
            None
        }
    }
}

/// Which reflectors the collector vouches for.
async fn ask_reflectors(conn: &mut Conn) -> Option<Vec<ReflectorInfo>> {
    match ask_best_effort(conn, &Request::Reflectors, "the reflector list").await? {
        Response::Reflectors { mut reflectors } => {
            reflectors.truncate(callwatch_proto::upload::MAX_REFLECTORS);
            Some(reflectors)
        }
        other => {
            tracing::debug!("the collector gave no reflector list: {other:?}");
            None
        }
    }
}

/// Where the collector's reflector serves each platform. A collector of an earlier release
/// answers `Error` (`PROTOCOL`) and is assumed to serve every profile at its own ports; an
/// answer that fails [`Endpoints::check`] is logged and dropped.
async fn ask_endpoints(conn: &mut Conn) -> Option<Endpoints> {
    match ask_best_effort(conn, &Request::Endpoints, "the reflector ports").await? {
        Response::Endpoints(e) => match e.check() {
            Ok(()) => Some(e),
            Err(why) => {
                tracing::warn!("the collector's list of reflector ports is unusable: {why}");
                None
            }
        },
        Response::Error { code, .. } if code == error_code::PROTOCOL => {
            tracing::debug!(
                "the collector does not say where its reflector serves (an earlier release); \
                 assuming every profile's own ports"
            );
            Some(Endpoints::assumed())
        }
        other => {
            tracing::debug!("the collector gave no reflector ports: {other:?}");
            None
        }
    }
}

/// What is asked once the queue is uploaded (or, with no queue, instead): the reflector list,
/// and the reflector ports when `target` wants them.
async fn ask_after_upload(conn: &mut Conn, target: &UploadTarget, summary: &mut UploadSummary) {
    summary.reflectors = ask_reflectors(conn).await;
    if target.fetch_endpoints {
        summary.endpoints = ask_endpoints(conn).await;
    }
}

/// Sends an upload request and waits for its answer.
async fn ask_ack(conn: &mut Conn, req: &Request) -> Result<Response, UploadError> {
    tokio::time::timeout(ANSWER_TIMEOUT, conn.request(req))
        .await
        .map_err(|_| UploadError::Unreachable(anyhow!("no acknowledgement within 60 s")))?
        .map_err(UploadError::Unreachable)
}

/// Fetches the carry-out key if asked, then uploads the queue batch by batch on `conn`.
async fn drain(
    conn: &mut Conn,
    queue: Option<&Queue>,
    target: &UploadTarget,
    summary: &mut UploadSummary,
) -> Result<(), UploadError> {
    if target.fetch_seal_key {
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, conn.request(&Request::SealKey))
            .await
            .map_err(|_| UploadError::Unreachable(anyhow!("no answer within 60 s")))?
            .map_err(UploadError::Unreachable)?;
        match answer {
            Response::SealKey { key } => summary.seal_key = Some(CarryKey(key)),
            other => tracing::debug!("the collector gave no carry-out key: {other:?}"),
        }
    }
    let Some(queue) = queue else {
        ask_after_upload(conn, target, summary).await;
        return Ok(());
    };
    let mut tokens_refused = false;
    // Entries up to here were answered in this pass (removed, or kept as deferred).
    let mut answered: Option<u64> = None;
    loop {
        let batch = queue
            .oldest_after(answered, target.batch)
            .map_err(UploadError::Local)?;
        if batch.is_empty() {
            ask_after_upload(conn, target, summary).await;
            return Ok(());
        }
        let queued = || batch.iter().map(|(_, q)| q);
        let req = Request::upload(queued(), !tokens_refused);
        let mut response = ask_ack(conn, &req).await?;
        if matches!(req, Request::UploadWithTokens { .. })
            && matches!(response, Response::Error { code, .. } if code == error_code::PROTOCOL)
        {
            // A collector of an earlier release does not know the request with path tokens:
            // the same reports without them (they then count by the upload's address).
            tracing::info!("the collector takes no path tokens; uploading without them");
            tokens_refused = true;
            response = ask_ack(conn, &Request::upload(queued(), false)).await?;
        }
        let statuses = match response {
            Response::Ack { statuses } => statuses,
            Response::Error { code, reason } => {
                return Err(UploadError::Refused(format!("code {code}: {reason}")))
            }
            Response::SealKey { .. } | Response::Reflectors { .. } | Response::Endpoints(_) => {
                return Err(UploadError::Refused(
                    "a key or a list where an acknowledgement was due; nothing removed".into(),
                ))
            }
        };
        if statuses.len() != batch.len() {
            return Err(UploadError::Refused(format!(
                "{} statuses for {} reports; nothing removed",
                statuses.len(),
                batch.len()
            )));
        }
        let mut done = Vec::with_capacity(batch.len());
        for ((id, _), status) in batch.iter().zip(&statuses) {
            if status.keeps_report() {
                summary.deferred += 1;
                tracing::warn!(
                    "queued report {id} kept, to be sent again: {}",
                    match status {
                        ReportStatus::Deferred { reason } | ReportStatus::Rejected { reason } =>
                            reason.as_str(),
                        _ => "",
                    }
                );
                continue;
            }
            match status {
                ReportStatus::Accepted => summary.accepted += 1,
                ReportStatus::Duplicate => summary.duplicate += 1,
                ReportStatus::Rejected { reason } => {
                    summary.rejected += 1;
                    tracing::warn!("collector rejected queued report {id}: {reason}");
                }
                ReportStatus::Deferred { .. } => {}
            }
            done.push(*id);
        }
        answered = batch.last().map(|(id, _)| *id).or(answered);
        queue.remove(&done).map_err(UploadError::Local)?;
    }
}

/// One request/response exchange on a new stream of `conn` (public for tests and load tools).
pub async fn request(conn: &quinn::Connection, req: &Request) -> Result<Response> {
    let (mut send, mut recv) = conn.open_bi().await.context("opening upload stream")?;
    send.write_all(&encode_frame(req)?)
        .await
        .context("sending request")?;
    send.finish().context("finishing request")?;
    read_response(&mut recv).await
}

/// One upload of `reports` on a new stream of `conn` (public for tests and load tools).
pub async fn exchange(
    conn: &quinn::Connection,
    reports: Vec<callwatch_proto::SignedReport>,
) -> Result<Response> {
    request(conn, &Request::Upload { reports }).await
}

/// One request/response exchange on a TLS-over-TCP connection (requests follow each other on
/// it; public for tests).
pub async fn request_tcp<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    req: &Request,
) -> Result<Response> {
    stream
        .write_all(&encode_frame(req)?)
        .await
        .context("sending request")?;
    stream.flush().await.context("sending request")?;
    read_response(stream).await
}

async fn read_response<R: AsyncRead + Unpin>(recv: &mut R) -> Result<Response> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix)
        .await
        .context("reading acknowledgement")?;
    let len = frame_len(prefix)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .context("reading acknowledgement")?;
    Ok(decode_frame_body(&body)?)
}
