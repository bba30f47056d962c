//! Uploading queued reports to the collector over QUIC, with the collector's certificate pinned.

use crate::queue::Queue;
use anyhow::{anyhow, Context, Result};
use callwatch_proto::upload::{
    decode_frame_body, encode_frame, frame_len, ReportStatus, Request, Response, ALPN,
};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Accepts exactly the certificate whose SHA-256 is the pin; handshake signatures are still
/// checked by rustls, so only the holder of that certificate's key can answer.
#[derive(Debug)]
struct PinnedCert {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
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

/// A QUIC client config that trusts only the pinned collector certificate.
pub fn pinned_client_config(pin: [u8; 32]) -> Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with ring")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCert { pin, provider }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).context("QUIC TLS config")?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Where and how to upload.
#[derive(Clone, Debug)]
pub struct UploadTarget {
    pub collector: SocketAddr,
    pub server_name: String,
    pub pin: [u8; 32],
    /// Local address to upload from.
    pub bind: Option<IpAddr>,
    pub batch: usize,
    pub connect_timeout: Duration,
}

/// What one upload pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadSummary {
    pub accepted: usize,
    pub duplicate: usize,
    pub rejected: usize,
    /// Still queued when the pass ended.
    pub remaining: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The collector could not be reached or the connection broke; everything stays queued.
    #[error("collector unreachable: {0:#}")]
    Unreachable(anyhow::Error),
    /// The collector answered with an error for a whole batch; it stays queued.
    #[error("collector refused the batch: {0}")]
    Refused(String),
    #[error("{0:#}")]
    Local(anyhow::Error),
}

/// Uploads the whole queue, batch by batch. A report is removed only after the collector
/// acknowledged it (accepted or duplicate: stored; rejected: it never will be — its reason is
/// logged). On any error the unacknowledged reports stay queued.
pub async fn upload_queue(
    queue: &Queue,
    target: &UploadTarget,
) -> Result<UploadSummary, UploadError> {
    let mut summary = UploadSummary {
        remaining: queue.len(),
        ..Default::default()
    };
    if queue.is_empty() {
        return Ok(summary);
    }
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
    endpoint
        .set_default_client_config(pinned_client_config(target.pin).map_err(UploadError::Local)?);
    let result = upload_with(&endpoint, queue, target, &mut summary).await;
    endpoint.close(0u32.into(), b"done");
    // Give the close a moment to reach the collector; not needed for correctness.
    let _ = tokio::time::timeout(Duration::from_millis(200), endpoint.wait_idle()).await;
    summary.remaining = queue.len();
    result.map(|_| summary)
}

async fn upload_with(
    endpoint: &quinn::Endpoint,
    queue: &Queue,
    target: &UploadTarget,
    summary: &mut UploadSummary,
) -> Result<(), UploadError> {
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
    loop {
        let batch = queue.oldest(target.batch).map_err(UploadError::Local)?;
        if batch.is_empty() {
            return Ok(());
        }
        let reports: Vec<_> = batch.iter().map(|(_, r)| r.clone()).collect();
        let response = tokio::time::timeout(Duration::from_secs(60), exchange(&conn, reports))
            .await
            .map_err(|_| UploadError::Unreachable(anyhow!("no acknowledgement within 60 s")))?
            .map_err(UploadError::Unreachable)?;
        let statuses = match response {
            Response::Ack { statuses } => statuses,
            Response::Error { code, reason } => {
                return Err(UploadError::Refused(format!("code {code}: {reason}")))
            }
        };
        if statuses.len() != batch.len() {
            return Err(UploadError::Refused(format!(
                "{} statuses for {} reports; nothing removed",
                statuses.len(),
                batch.len()
            )));
        }
        for ((id, _), status) in batch.iter().zip(&statuses) {
            match status {
                ReportStatus::Accepted => summary.accepted += 1,
                ReportStatus::Duplicate => summary.duplicate += 1,
                ReportStatus::Rejected { reason } => {
                    summary.rejected += 1;
                    tracing::warn!("collector rejected queued report {id}: {reason}");
                }
            }
        }
        let ids: Vec<u64> = batch.iter().map(|(id, _)| *id).collect();
        queue.remove(&ids).map_err(UploadError::Local)?;
    }
}

/// One request/response exchange on a new stream of `conn` (public for tests and load tools).
pub async fn exchange(
    conn: &quinn::Connection,
    reports: Vec<callwatch_proto::SignedReport>,
) -> Result<Response> {
    let (mut send, mut recv) = conn.open_bi().await.context("opening upload stream")?;
    send.write_all(&encode_frame(&Request::Upload { reports })?)
        .await
        .context("sending batch")?;
    send.finish().context("finishing batch")?;
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
