//! The upload protocol between an agent and a collector, over QUIC or over TLS on TCP.
//!
//! Over QUIC each upload is one bidirectional stream: the agent writes one [`Request`] frame and
//! finishes its side; the collector answers with one [`Response`] frame, sent only after every
//! accepted report in the batch is durably stored. Over TLS on TCP (the fallback when QUIC does
//! not get through) the same frames follow each other on one connection: request, response,
//! request, response. A frame is a 4-byte big-endian length followed by that many bytes of
//! postcard. Frames over [`MAX_FRAME_LEN`] are refused before they are read.
//!
//! ## What a censor's classifier sees
//!
//! The certificate pin is the only authentication; names are only labels, chosen so that lists
//! of server names and ALPN values do not single the upload out:
//!
//! - **Server name (SNI)**: the collector's own host name as the agent's config gives it (an
//!   address gives none), never a fixed callwatch name.
//! - **QUIC ALPN** [`ALPN`] = `libp2p`. QUIC requires an ALPN. Not `h3`: this is not HTTP/3, and
//!   a prober speaking HTTP/3 to the collector would find that out at once. `libp2p` is the most
//!   widely deployed QUIC protocol that is not HTTP (IPFS, Ethereum and Filecoin nodes, residential
//!   peers talking to hosted nodes on arbitrary ports, with self-signed certificates, as here);
//!   listing it blocks those networks too.
//! - **TLS-on-TCP ALPN**: the agent offers [`TCP_ALPN_OFFER`] (`h2`, `http/1.1`), the offer
//!   browsers, curl and most HTTP libraries make; the collector selects none (a TLS 1.3 server's
//!   choice travels encrypted, so an observer sees only the common offer, and the collector never
//!   claims a protocol it does not speak).
//! - **Compatibility**: collectors also accept [`LEGACY_ALPN`] (`callwatch/1`) on QUIC, so agents
//!   of the previous release keep uploading; it goes in the release after this one.

use crate::pathtoken::{PathToken, PATH_TOKEN_LEN};
use crate::sign::SignedReport;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use thiserror::Error;

/// The QUIC application protocol name agents offer (see the module text for why this one).
pub const ALPN: &[u8] = b"libp2p";
/// The QUIC application protocol name of agents before this release; collectors accept it for
/// one more release.
pub const LEGACY_ALPN: &[u8] = b"callwatch/1";
/// Every ALPN a collector accepts on QUIC, preferred first.
pub const QUIC_SERVER_ALPNS: [&[u8]; 2] = [ALPN, LEGACY_ALPN];
/// What agents offer on TLS over TCP; the collector selects none of them.
pub const TCP_ALPN_OFFER: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// Largest frame either side will read.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;
/// Most reports in one batch.
pub const MAX_BATCH: usize = 256;

/// QUIC application error codes used when closing a connection or resetting a stream.
pub mod error_code {
    pub const OK: u32 = 0;
    pub const PROTOCOL: u32 = 1;
    pub const TOO_LARGE: u32 = 2;
    pub const BUSY: u32 = 3;
    pub const INTERNAL: u32 = 4;
}

/// What an agent sends on an upload stream. New variants go at the end (postcard numbers them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Upload {
        reports: Vec<SignedReport>,
    },
    /// Asks for the collector's carry-out key (X25519 public key), which agents seal exported
    /// queue files to (`crate::carry`). Answered with [`Response::SealKey`]; collectors of the
    /// previous release answer `Error` (`PROTOCOL`).
    SealKey,
    /// Asks which reflectors the collector vouches for (its own and the registered standalone
    /// ones that are not revoked). Answered with [`Response::Reflectors`]; collectors of earlier
    /// releases answer `Error` (`PROTOCOL`).
    Reflectors,
    /// [`Request::Upload`] with each report's path token beside it (`tokens[i]` belongs to
    /// `reports[i]`; empty: none). Answered like `Upload`; collectors of earlier releases
    /// answer `Error` (`PROTOCOL`), and the agent then sends the batch as `Upload`, without
    /// its tokens.
    UploadWithTokens {
        reports: Vec<SignedReport>,
        tokens: Vec<Vec<u8>>,
    },
    /// Asks where the collector's own reflector serves each platform's test (ports, and which
    /// platforms it cannot serve). Answered with [`Response::Endpoints`]; collectors of earlier
    /// releases answer `Error` (`PROTOCOL`), and the agent then assumes every profile's own ports.
    Endpoints,
}

impl Request {
    /// The request that uploads `batch`: `UploadWithTokens` when `with_tokens` and some report
    /// has a token, else `Upload` (the request every collector knows).
    pub fn upload<'a>(
        batch: impl IntoIterator<Item = &'a QueuedReport>,
        with_tokens: bool,
    ) -> Request {
        let (reports, tokens): (Vec<SignedReport>, Vec<Vec<u8>>) = batch
            .into_iter()
            .map(|q| {
                let token = q.path_token.filter(|_| with_tokens);
                (
                    q.report.clone(),
                    token.map_or_else(Vec::new, |t| t.to_vec()),
                )
            })
            .unzip();
        if tokens.iter().all(Vec::is_empty) {
            Request::Upload { reports }
        } else {
            Request::UploadWithTokens { reports, tokens }
        }
    }

    /// The reports of an upload request with their tokens; `None` for other requests. A token
    /// list that does not match the reports (count, or a token not [`PATH_TOKEN_LEN`] bytes) is
    /// an error naming it.
    pub fn into_queued(self) -> Option<Result<Vec<QueuedReport>, String>> {
        match self {
            Request::Upload { reports } => Some(Ok(reports
                .into_iter()
                .map(|report| QueuedReport {
                    report,
                    path_token: None,
                })
                .collect())),
            Request::UploadWithTokens { reports, tokens } => {
                if tokens.len() != reports.len() {
                    return Some(Err(format!(
                        "{} path tokens for {} reports",
                        tokens.len(),
                        reports.len()
                    )));
                }
                let mut out = Vec::with_capacity(reports.len());
                for (i, (report, token)) in reports.into_iter().zip(tokens).enumerate() {
                    let path_token = match token.len() {
                        0 => None,
                        PATH_TOKEN_LEN => token.try_into().ok(),
                        n => {
                            return Some(Err(format!(
                                "path token {i} is {n} bytes, not {PATH_TOKEN_LEN}"
                            )))
                        }
                    };
                    out.push(QueuedReport { report, path_token });
                }
                Some(Ok(out))
            }
            _ => None,
        }
    }
}

/// A signed report as an agent queues, uploads and carries it out: with the path token its
/// reflector made ([`crate::pathtoken`]) beside it, never inside the signed body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedReport {
    pub report: SignedReport,
    pub path_token: Option<PathToken>,
}

impl QueuedReport {
    /// A report without a token.
    pub fn bare(report: SignedReport) -> Self {
        QueuedReport {
            report,
            path_token: None,
        }
    }

    /// Postcard of the signed report, then the token's bytes if there is one: a queue entry or
    /// carry-out line of an earlier release (the report alone) reads as one without a token.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FrameError> {
        let mut out =
            postcard::to_allocvec(&self.report).map_err(|e| FrameError::Encode(e.to_string()))?;
        if let Some(t) = &self.path_token {
            out.extend_from_slice(t);
        }
        Ok(out)
    }

    /// Reads [`QueuedReport::to_bytes`]; anything after the report but a whole token is an
    /// error.
    pub fn from_bytes(b: &[u8]) -> Result<Self, FrameError> {
        let (report, rest) = postcard::take_from_bytes::<SignedReport>(b)
            .map_err(|e| FrameError::Decode(e.to_string()))?;
        let path_token = match rest.len() {
            0 => None,
            PATH_TOKEN_LEN => rest.try_into().ok(),
            n => {
                return Err(FrameError::Decode(format!(
                    "{n} bytes after the report (a path token is {PATH_TOKEN_LEN})"
                )))
            }
        };
        Ok(QueuedReport { report, path_token })
    }
}

/// What the collector answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// One status per report, in the order sent.
    Ack { statuses: Vec<ReportStatus> },
    /// The whole request was refused; nothing in it was stored.
    Error { code: u32, reason: String },
    /// The collector's carry-out key, answering [`Request::SealKey`]; authenticated by the
    /// pinned connection it arrives on.
    SealKey { key: [u8; 32] },
    /// The reflectors the collector vouches for, answering [`Request::Reflectors`]; authenticated
    /// by the pinned connection it arrives on. At most [`MAX_REFLECTORS`] entries.
    Reflectors { reflectors: Vec<ReflectorInfo> },
    /// Where the collector's own reflector serves each platform, answering
    /// [`Request::Endpoints`]; authenticated by the pinned connection it arrives on.
    Endpoints(crate::profile::Endpoints),
}

/// The name the collector's own reflector goes by in [`Response::Reflectors`] (a standalone
/// reflector cannot be registered under it).
pub const OWN_REFLECTOR: &str = "collector";

/// Most reflectors in one [`Response::Reflectors`].
pub const MAX_REFLECTORS: usize = 256;

/// One reflector a collector vouches for: where it is, the key agents seal their platform arms
/// to, and the key its region attestations are signed with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReflectorInfo {
    /// The operator's name for it (the collector's own: `collector`).
    pub name: String,
    /// `host:port` on UDP; `None`: not given (the collector's own: the agent's configured
    /// reflector).
    pub address: Option<String>,
    /// Its X25519 sealing key (`reflector.pub`), if known.
    pub seal_key: Option<[u8; 32]>,
    /// Its Ed25519 attestation key (`reflector-attest.pub`).
    pub attest_key: [u8; 32],
}

/// The collector's answer for one report. `Accepted` and `Duplicate` both mean "stored durably,
/// delete it from your queue"; `Rejected` means "this will never be accepted"; `Deferred` means
/// "not stored: keep it, a newer collector will take it" (a report schema newer than the
/// collector knows). Variants are only ever appended (postcard encodes the index).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReportStatus {
    Accepted,
    Duplicate,
    Rejected { reason: String },
    Deferred { reason: String },
}

impl ReportStatus {
    /// Whether the agent keeps the report. Besides `Deferred`, two refusals of collectors of
    /// earlier releases are kept, never deleted: a schema it does not know (a reason that
    /// begins `"report is invalid: schema N is not supported"`) and a start time ahead of its
    /// clock (`"started_at … is in the future (collector time …)"`), both deferred today.
    pub fn keeps_report(&self) -> bool {
        match self {
            ReportStatus::Deferred { .. } => true,
            // An earlier collector's refusal of a start time ahead of its clock, which a later
            // one defers: the report becomes acceptable once the clocks pass it.
            ReportStatus::Rejected { reason }
                if reason.starts_with("started_at ")
                    && reason.contains(" is in the future (collector time ") =>
            {
                true
            }
            ReportStatus::Rejected { reason } => reason
                .strip_prefix("report is invalid: schema ")
                .is_some_and(|r| r.contains(" is not supported")),
            ReportStatus::Accepted | ReportStatus::Duplicate => false,
        }
    }
}

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    #[error("frame does not decode: {0}")]
    Decode(String),
    #[error("frame does not encode: {0}")]
    Encode(String),
}

/// Encodes a message as one frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out =
        postcard::to_extend(msg, vec![0u8; 4]).map_err(|e| FrameError::Encode(e.to_string()))?;
    let body_len = out.len() - 4;
    if body_len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(body_len));
    }
    out[..4].copy_from_slice(&(body_len as u32).to_be_bytes());
    Ok(out)
}

/// Reads the length prefix, refusing frames over the limit before any body is read.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        Err(FrameError::TooLarge(len))
    } else {
        Ok(len)
    }
}

/// Decodes a frame body (without its length prefix). Never panics.
pub fn decode_frame_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) =
        postcard::take_from_bytes(body).map_err(|e| FrameError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Decode(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Decodes a whole frame (length prefix included), checking the prefix matches.
pub fn decode_frame<T: DeserializeOwned>(frame: &[u8]) -> Result<T, FrameError> {
    let prefix: [u8; 4] = frame
        .get(..4)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| FrameError::Decode("frame shorter than its length prefix".into()))?;
    let len = frame_len(prefix)?;
    let body = &frame[4..];
    if body.len() != len {
        return Err(FrameError::Decode(format!(
            "length prefix says {len} bytes, frame has {}",
            body.len()
        )));
    }
    decode_frame_body(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip() {
        let req = Request::Upload {
            reports: vec![SignedReport {
                body: b"{\"a\":1}".to_vec(),
                key: vec![1; 32],
                signature: vec![2; 64],
            }],
        };
        let frame = encode_frame(&req).unwrap();
        assert_eq!(decode_frame::<Request>(&frame).unwrap(), req);
        let resp = Response::Ack {
            statuses: vec![
                ReportStatus::Accepted,
                ReportStatus::Duplicate,
                ReportStatus::Rejected {
                    reason: "bad signature".into(),
                },
            ],
        };
        let frame = encode_frame(&resp).unwrap();
        assert_eq!(decode_frame::<Response>(&frame).unwrap(), resp);
        let msg = Request::SealKey;
        assert_eq!(
            decode_frame::<Request>(&encode_frame(&msg).unwrap()).unwrap(),
            msg
        );
        let key = Response::SealKey { key: [7; 32] };
        assert_eq!(
            decode_frame::<Response>(&encode_frame(&key).unwrap()).unwrap(),
            key
        );
        let list = Response::Reflectors {
            reflectors: vec![ReflectorInfo {
                name: "tallinn-1".into(),
                address: Some("reflector.example.org:3479".into()),
                seal_key: Some([8; 32]),
                attest_key: [9; 32],
            }],
        };
        assert_eq!(
            decode_frame::<Response>(&encode_frame(&list).unwrap()).unwrap(),
            list
        );
        // Variant numbers of the new request and answer follow the old ones.
        assert_eq!(
            postcard::to_allocvec(&Request::Reflectors).unwrap(),
            vec![2]
        );
    }

    #[test]
    fn old_frames_still_decode_and_the_new_request_is_a_new_variant() {
        // An upload of the previous release (variant 0, no reports) decodes as before; the new
        // request is variant 1, which an old collector refuses as a malformed frame.
        assert_eq!(
            decode_frame_body::<Request>(&[0, 0]).unwrap(),
            Request::Upload { reports: vec![] }
        );
        assert_eq!(postcard::to_allocvec(&Request::SealKey).unwrap(), vec![1]);
    }

    #[test]
    fn path_tokens_travel_beside_reports_and_bad_token_lists_are_named() {
        let report = |n: u8| SignedReport {
            body: vec![n; 10],
            key: vec![1; 32],
            signature: vec![2; 64],
        };
        let batch = vec![
            QueuedReport {
                report: report(1),
                path_token: Some([5; PATH_TOKEN_LEN]),
            },
            QueuedReport::bare(report(2)),
        ];
        let req = Request::upload(&batch, true);
        assert!(matches!(req, Request::UploadWithTokens { .. }));
        // Tokens left out on request (a collector that knows none): the same reports, bare.
        let Request::Upload { reports } = Request::upload(&batch, false) else {
            panic!("tokens were sent")
        };
        assert_eq!(reports, vec![report(1), report(2)]);
        let back: Request = decode_frame(&encode_frame(&req).unwrap()).unwrap();
        assert_eq!(back.into_queued(), Some(Ok(batch.clone())));
        // No token at all: the request every collector knows.
        let bare = vec![QueuedReport::bare(report(3))];
        assert!(matches!(
            Request::upload(&bare, true),
            Request::Upload { .. }
        ));
        // Mismatched lists are refused with what is wrong.
        let short = Request::UploadWithTokens {
            reports: vec![report(1), report(2)],
            tokens: vec![vec![]],
        };
        assert_eq!(
            short.into_queued(),
            Some(Err("1 path tokens for 2 reports".into()))
        );
        let odd = Request::UploadWithTokens {
            reports: vec![report(1)],
            tokens: vec![vec![0; 54]],
        };
        assert!(matches!(odd.into_queued(), Some(Err(e)) if e.contains("54 bytes")));
        assert_eq!(Request::SealKey.into_queued(), None);
        // Queue entries: the report alone reads as one without a token; junk after it is an
        // error, not a silently dropped token.
        for q in &batch {
            assert_eq!(
                &QueuedReport::from_bytes(&q.to_bytes().unwrap()).unwrap(),
                q
            );
        }
        let mut junk = batch[1].to_bytes().unwrap();
        junk.extend_from_slice(&[1, 2, 3]);
        assert!(QueuedReport::from_bytes(&junk).is_err());
    }

    #[test]
    fn oversized_prefix_is_refused_before_reading() {
        assert!(matches!(
            frame_len(((MAX_FRAME_LEN + 1) as u32).to_be_bytes()),
            Err(FrameError::TooLarge(_))
        ));
        assert_eq!(frame_len(10u32.to_be_bytes()).unwrap(), 10);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_frame::<Request>(&bytes);
            let _ = decode_frame_body::<Response>(&bytes);
        }
    }
}
