//! Signing and verifying call reports with Ed25519.
//!
//! The signed bytes are the report's compact JSON (`serde_json::to_vec` of [`CallReport`]), kept
//! verbatim forever: the collector stores and exports the exact bytes it received, so anyone can
//! check a record offline with any Ed25519 library: `verify(key, CONTEXT || body, signature)`.
//! JSON rather than a binary encoding because the signed record *is* the evidence: a researcher
//! can read it without our types, and optional fields can be added without breaking old
//! signatures. Nothing is ever re-encoded before verifying.

use crate::report::{CallReport, MAX_STREAMS};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Domain separation: a report signature can never be replayed as a signature over anything else.
pub const CONTEXT: &[u8] = b"callwatch-report-v1\0";
/// Largest report body accepted.
pub const MAX_BODY_LEN: usize = 16 * 1024 * MAX_STREAMS;

/// A report body with its agent key and signature, as uploaded, stored and exported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReport {
    /// The report's JSON bytes, exactly as signed.
    #[serde(with = "body_text")]
    pub body: Vec<u8>,
    /// The agent's Ed25519 public key.
    #[serde(with = "hex_bytes")]
    pub key: Vec<u8>,
    /// Ed25519 signature over `CONTEXT || body`.
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("report body of {0} bytes exceeds the {MAX_BODY_LEN}-byte limit")]
    TooLarge(usize),
    #[error("agent key must be 32 bytes, got {0}")]
    KeyLength(usize),
    #[error("signature must be 64 bytes, got {0}")]
    SignatureLength(usize),
    #[error("agent key is not a valid Ed25519 point")]
    BadKey,
    #[error("agent key is weak (small order); refused")]
    WeakKey,
    #[error("signature does not verify for this key and body")]
    BadSignature,
    #[error("report body is not a valid report: {0}")]
    Malformed(String),
    #[error("report is invalid: {0}")]
    Invalid(String),
}

impl VerifyError {
    /// A short stable label for counting rejections by reason.
    pub fn label(&self) -> &'static str {
        match self {
            VerifyError::TooLarge(_) => "too_large",
            VerifyError::KeyLength(_) | VerifyError::BadKey => "bad_key",
            VerifyError::WeakKey => "weak_key",
            VerifyError::SignatureLength(_) | VerifyError::BadSignature => "bad_signature",
            VerifyError::Malformed(_) => "malformed",
            VerifyError::Invalid(_) => "invalid",
        }
    }
}

impl SignedReport {
    /// Encodes `report` and signs it.
    pub fn sign(report: &CallReport, key: &SigningKey) -> Result<Self, serde_json::Error> {
        let body = serde_json::to_vec(report)?;
        let signature = key.sign(&signed_message(&body));
        Ok(SignedReport {
            body,
            key: key.verifying_key().to_bytes().to_vec(),
            signature: signature.to_bytes().to_vec(),
        })
    }

    /// Verifies the signature over the exact body bytes (strict: no malleable signatures, no weak
    /// keys), then parses and validates the report.
    pub fn verify(&self) -> Result<CallReport, VerifyError> {
        self.verify_signature()?;
        let report: CallReport = serde_json::from_slice(&self.body)
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        report.validate().map_err(VerifyError::Invalid)?;
        Ok(report)
    }

    /// Checks only the signature.
    pub fn verify_signature(&self) -> Result<(), VerifyError> {
        if self.body.len() > MAX_BODY_LEN {
            return Err(VerifyError::TooLarge(self.body.len()));
        }
        let key: [u8; 32] = self
            .key
            .as_slice()
            .try_into()
            .map_err(|_| VerifyError::KeyLength(self.key.len()))?;
        let sig: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| VerifyError::SignatureLength(self.signature.len()))?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| VerifyError::BadKey)?;
        if key.is_weak() {
            return Err(VerifyError::WeakKey);
        }
        key.verify_strict(&signed_message(&self.body), &Signature::from_bytes(&sig))
            .map_err(|_| VerifyError::BadSignature)
    }

    /// The agent key in hex, as it appears in exports.
    pub fn key_hex(&self) -> String {
        hex::encode(&self.key)
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + body.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(body);
    m
}

/// Hex in human-readable formats (JSON exports), raw bytes in binary ones (upload frames).
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(v))
        } else {
            s.serialize_bytes(v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            hex::decode(s).map_err(serde::de::Error::custom)
        } else {
            serde_bytes_vec(d)
        }
    }

    pub(super) fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_bytes(V)
    }
}

/// The body as a JSON string in human-readable formats (its exact text survives any JSON parser),
/// raw bytes in binary ones.
mod body_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let text = std::str::from_utf8(v).map_err(serde::ser::Error::custom)?;
            s.serialize_str(text)
        } else {
            s.serialize_bytes(v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            Ok(String::deserialize(d)?.into_bytes())
        } else {
            super::hex_bytes::serde_bytes_vec(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;
    use proptest::prelude::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn signed_report_verifies_and_round_trips() {
        let report = sample_report();
        let signed = SignedReport::sign(&report, &key(1)).unwrap();
        assert_eq!(signed.verify().unwrap(), report);
        // Through JSON (export) and postcard (upload) the exact bytes survive.
        let json = serde_json::to_string(&signed).unwrap();
        let back: SignedReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, signed);
        let bin = postcard::to_allocvec(&signed).unwrap();
        let back: SignedReport = postcard::from_bytes(&bin).unwrap();
        assert_eq!(back, signed);
        assert!(back.verify().is_ok());
    }

    #[test]
    fn tampering_is_detected() {
        let signed = SignedReport::sign(&sample_report(), &key(1)).unwrap();
        let mut t = signed.clone();
        let pos = t.body.len() / 2;
        t.body[pos] ^= 1;
        assert!(t.verify().is_err());
        let mut t = signed.clone();
        t.signature[3] ^= 0x40;
        assert_eq!(t.verify(), Err(VerifyError::BadSignature));
        // Key A's signature claimed by key B.
        let mut t = signed.clone();
        t.key = key(2).verifying_key().to_bytes().to_vec();
        assert_eq!(t.verify(), Err(VerifyError::BadSignature));
        let mut t = signed;
        t.signature.pop();
        assert_eq!(t.verify(), Err(VerifyError::SignatureLength(63)));
    }

    #[test]
    fn weak_keys_are_refused() {
        // The identity point (small order) encodes as 1 followed by zeros.
        let mut weak = vec![0u8; 32];
        weak[0] = 1;
        let signed = SignedReport {
            body: b"{}".to_vec(),
            key: weak,
            signature: vec![0; 64],
        };
        assert_eq!(signed.verify(), Err(VerifyError::WeakKey));
    }

    #[test]
    fn a_valid_signature_on_an_invalid_report_is_still_rejected() {
        let mut r = sample_report();
        r.streams[0].loss_down = Some(2.0);
        let signed = SignedReport::sign(&r, &key(1)).unwrap();
        assert!(matches!(signed.verify(), Err(VerifyError::Invalid(_))));
        let k = key(1);
        let body = b"not json".to_vec();
        let sig = k.sign(&signed_message(&body));
        let signed = SignedReport {
            body,
            key: k.verifying_key().to_bytes().to_vec(),
            signature: sig.to_bytes().to_vec(),
        };
        assert!(matches!(signed.verify(), Err(VerifyError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512),
                                key in proptest::collection::vec(any::<u8>(), 0..40),
                                sig in proptest::collection::vec(any::<u8>(), 0..70)) {
            let _ = SignedReport { body, key, signature: sig }.verify();
        }
    }
}
