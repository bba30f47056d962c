//! Signing and verifying call reports with Ed25519.
//!
//! The signed bytes are the report's compact JSON (`serde_json::to_vec` of [`CallReport`]), kept
//! verbatim forever: the collector stores and exports the exact bytes it received, so anyone can
//! check a record offline with any Ed25519 library: `verify(key, CONTEXT || body, signature)`.
//! JSON rather than a binary encoding because the signed record *is* the evidence: a researcher
//! can read it without our types, and optional fields can be added without breaking old
//! signatures. Nothing is ever re-encoded before verifying.

use crate::report::{CallReport, MAX_STREAMS, SCHEMA_VERSION};
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
    /// Signed well, in a schema newer than this release knows: not judged, to be taken by a
    /// collector that knows it (agents keep such a report; see [`crate::upload::ReportStatus`]).
    #[error("report schema {0} is newer than this collector knows ({SCHEMA_VERSION}); kept for a newer collector")]
    NewerSchema(u32),
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
            VerifyError::NewerSchema(_) => "newer_schema",
        }
    }
}

/// The `schema` a report body declares, without parsing the rest (`None`: no such number).
pub fn schema_of(body: &[u8]) -> Option<u32> {
    // A JSON object only (a derived struct would also read `[n]`); looked at only when a body
    // is not a report this release can judge, so the generic parse costs nothing in the
    // common case.
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    u32::try_from(object.get("schema")?.as_u64()?).ok()
}

impl SignedReport {
    /// Encodes `report` and signs it.
    pub fn sign(report: &CallReport, key: &SigningKey) -> Result<Self, serde_json::Error> {
        Ok(Self::sign_body(serde_json::to_vec(report)?, key))
    }

    /// Signs `body` as it is (a body this release does not write itself: a newer schema's, a
    /// fuzzer's).
    pub fn sign_body(body: Vec<u8>, key: &SigningKey) -> Self {
        let signature = key.sign(&signed_message(&body));
        SignedReport {
            body,
            key: key.verifying_key().to_bytes().to_vec(),
            signature: signature.to_bytes().to_vec(),
        }
    }

    /// Verifies the signature over the exact body bytes (strict: no malleable signatures, no weak
    /// keys), then parses and validates the report. A body in a schema newer than
    /// [`SCHEMA_VERSION`] is not parsed (its fields may mean what this release cannot know):
    /// [`VerifyError::NewerSchema`].
    pub fn verify(&self) -> Result<CallReport, VerifyError> {
        self.verify_signature()?;
        // One parse in the common case; the schema alone is looked at only when the body is not
        // a report this release can judge.
        match serde_json::from_slice::<CallReport>(&self.body) {
            Ok(report) if report.schema > SCHEMA_VERSION => {
                Err(VerifyError::NewerSchema(report.schema))
            }
            Ok(report) => {
                report.validate().map_err(VerifyError::Invalid)?;
                Ok(report)
            }
            Err(e) => match schema_of(&self.body) {
                Some(schema) if schema > SCHEMA_VERSION => Err(VerifyError::NewerSchema(schema)),
                _ => Err(VerifyError::Malformed(e.to_string())),
            },
        }
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

    #[test]
    fn a_newer_schema_is_deferred_an_unknown_old_one_invalid() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let mut r = sample_report();
        r.schema = SCHEMA_VERSION + 1;
        let signed = SignedReport::sign(&r, &key).unwrap();
        assert_eq!(
            signed.verify(),
            Err(VerifyError::NewerSchema(SCHEMA_VERSION + 1))
        );
        assert_eq!(VerifyError::NewerSchema(2).label(), "newer_schema");
        // A newer body this release cannot even parse is still a newer schema, not malformed.
        let mut body: serde_json::Value = serde_json::from_slice(&signed.body).unwrap();
        body["streams"] = serde_json::json!("moved elsewhere in schema 2");
        let odd = SignedReport::sign_body(serde_json::to_vec(&body).unwrap(), &key);
        assert_eq!(
            odd.verify(),
            Err(VerifyError::NewerSchema(SCHEMA_VERSION + 1))
        );
        // ...but only with a valid signature: a forged body is still a bad signature.
        let forged = SignedReport {
            body: odd.body.clone(),
            ..signed.clone()
        };
        assert_eq!(forged.verify(), Err(VerifyError::BadSignature));
        // Schema 0 was never written: invalid, as is a body with no schema that does not parse.
        r.schema = 0;
        let zero = SignedReport::sign(&r, &key).unwrap();
        assert!(matches!(zero.verify(), Err(VerifyError::Invalid(e)) if e.contains("schema 0")));
        let junk = SignedReport::sign_body(b"{\"streams\":1}".to_vec(), &key);
        assert!(matches!(junk.verify(), Err(VerifyError::Malformed(_))));
        assert_eq!(schema_of(b"{\"schema\":7,\"x\":[]}"), Some(7));
        assert_eq!(schema_of(b"[1]"), None);
    }

    #[test]
    fn agents_keep_what_a_collector_defers_and_what_an_older_one_calls_an_unknown_schema() {
        use crate::upload::ReportStatus as S;
        assert!(S::Deferred { reason: "x".into() }.keeps_report());
        // What a collector of an earlier release says of schema 2 (VerifyError::Invalid).
        let old = VerifyError::Invalid("schema 2 is not supported (expected 1)".into());
        assert!(S::Rejected {
            reason: old.to_string()
        }
        .keeps_report());
        assert!(!S::Rejected {
            reason: "report is invalid: 0 streams".into()
        }
        .keeps_report());
        assert!(!S::Rejected {
            reason: "signature does not verify".into()
        }
        .keeps_report());
        assert!(!S::Accepted.keeps_report());
        assert!(!S::Duplicate.keeps_report());
        // What a collector of an earlier release said of a start ahead of its clock (word for
        // word): kept, for the clocks pass it; a report too old is gone for good.
        assert!(S::Rejected {
            reason: "started_at 2026-12-01 10:00:00 UTC is in the future (collector time \
                     2026-11-30 10:00:00 UTC)"
                .into()
        }
        .keeps_report());
        assert!(!S::Rejected {
            reason: "started_at 2026-01-01 10:00:00 UTC is older than 180 days".into()
        }
        .keeps_report());
    }
}
