//! The QUIC upload protocol between an agent and a collector.
//!
//! ALPN [`ALPN`]. Each upload is one bidirectional QUIC stream: the agent writes one [`Request`]
//! frame and finishes its side; the collector answers with one [`Response`] frame, sent only after
//! every accepted report in the batch is durably stored. A frame is a 4-byte big-endian length
//! followed by that many bytes of postcard. Frames over [`MAX_FRAME_LEN`] are refused before they
//! are read.

use crate::sign::SignedReport;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use thiserror::Error;

/// QUIC application protocol name; a peer that does not offer it cannot connect.
pub const ALPN: &[u8] = b"callwatch/1";
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

/// What an agent sends on an upload stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Upload { reports: Vec<SignedReport> },
}

/// What the collector answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// One status per report, in the order sent.
    Ack { statuses: Vec<ReportStatus> },
    /// The whole request was refused; nothing in it was stored.
    Error { code: u32, reason: String },
}

/// The collector's answer for one report. `Accepted` and `Duplicate` both mean "stored durably,
/// delete it from your queue"; `Rejected` means "this will never be accepted".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReportStatus {
    Accepted,
    Duplicate,
    Rejected { reason: String },
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
