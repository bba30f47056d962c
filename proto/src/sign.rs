//! Signing and verifying call reports with Ed25519.
//!
//! The signed bytes are the report's compact JSON (`serde_json::to_vec` of [`CallReport`]), kept
//! verbatim forever: the collector stores and exports the exact bytes it received, so anyone can
//! check a record offline with any Ed25519 library: `verify(key, CONTEXT || body, signature)`.
//! JSON rather than a binary encoding because the signed record *is* the evidence: a researcher
//! can read it without our types, and optional fields can be added without breaking old
//! signatures. Nothing is ever re-encoded before verifying.

use crate::report::{CallReport, MAX_STREAMS, OLDEST_SCHEMA, SCHEMA_VERSION};
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
    /// Not UTF-8 (JSON is UTF-8; a body that is not could not be exported as text).
    #[error("report body is not UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    /// A key the declared schema does not define, anywhere in the body: refused, because a
    /// collector stores and republishes a body verbatim ([`crate::schema`]).
    #[error("report body has a field its schema does not define: {0}")]
    UnknownField(String),
    #[error("report field {field} is {len} bytes long; at most {max}")]
    TooLong {
        field: String,
        len: usize,
        max: usize,
    },
    #[error("report field {field} has {count} items; at most {max}")]
    TooMany {
        field: String,
        count: usize,
        max: usize,
    },
    #[error("report is invalid: {0}")]
    Invalid(String),
    /// Signed well, in a schema newer than this release knows: not judged, to be taken by a
    /// collector that knows it (agents keep such a report; see [`crate::upload::ReportStatus`]).
    #[error("report schema {0} is newer than this collector knows ({SCHEMA_VERSION}); kept for a newer collector")]
    NewerSchema(u32),
}

impl From<crate::schema::SchemaError> for VerifyError {
    fn from(e: crate::schema::SchemaError) -> Self {
        use crate::schema::SchemaError as S;
        match e {
            S::Malformed(m) => VerifyError::Malformed(m),
            S::UnknownField(f) => VerifyError::UnknownField(f),
            S::TooLong { field, len, max } => VerifyError::TooLong { field, len, max },
            S::TooMany { field, count, max } => VerifyError::TooMany { field, count, max },
        }
    }
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
            VerifyError::NotUtf8(_) => "not_utf8",
            VerifyError::UnknownField(_) => "unknown_field",
            VerifyError::TooLong { .. } | VerifyError::TooMany { .. } => "field_too_large",
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

/// Why [`SignedReport::sign`] made no signature.
#[derive(Debug, Error)]
pub enum SignError {
    #[error("report does not encode: {0}")]
    Encode(#[from] serde_json::Error),
    /// The encoded report breaks a rule of [`crate::schema`] (a field the schema does not define,
    /// a string or an array over its limit): a collector would refuse it, so it is not signed.
    #[error("report would be refused: {0}")]
    Schema(VerifyError),
}

impl SignedReport {
    /// Encodes `report`, checks the encoding against the keys and size limits a collector of
    /// this release applies ([`crate::schema`]), and signs it: an agent never signs a field the
    /// schema does not know. The report's values are not judged here
    /// ([`CallReport::validate`] is the collector's).
    pub fn sign(report: &CallReport, key: &SigningKey) -> Result<Self, SignError> {
        let body = serde_json::to_vec(report)?;
        let value: serde_json::Value = serde_json::from_slice(&body)?;
        // The keys of the schema the report declares; a number outside what this release knows
        // (tests write them) is checked against the nearest it knows, which the struct writes.
        let schema = report.schema.clamp(OLDEST_SCHEMA, SCHEMA_VERSION);
        crate::schema::check(&value, schema).map_err(|e| SignError::Schema(e.into()))?;
        Ok(Self::sign_body(body, key))
    }

    /// Signs `body` as it is, unchecked (a body this release does not write itself: a newer
    /// schema's, a test's or a fuzzer's).
    pub fn sign_body(body: Vec<u8>, key: &SigningKey) -> Self {
        let signature = key.sign(&signed_message(&body));
        SignedReport {
            body,
            key: key.verifying_key().to_bytes().to_vec(),
            signature: signature.to_bytes().to_vec(),
        }
    }

    /// Verifies the signature over the exact body bytes (strict: no malleable signatures, no weak
    /// keys), then checks the body and parses and validates the report, in this order:
    /// - the body is UTF-8 ([`VerifyError::NotUtf8`]) and one JSON object
    ///   ([`VerifyError::Malformed`]);
    /// - a body in a schema newer than [`SCHEMA_VERSION`] is not looked at further (its fields
    ///   may mean what this release cannot know, and it may have fields this release does not):
    ///   [`VerifyError::NewerSchema`], deferred, never refused;
    /// - every key, at any depth, is one the declared schema defines
    ///   ([`VerifyError::UnknownField`], naming its path), and strings and arrays are within
    ///   their limits ([`VerifyError::TooLong`], [`VerifyError::TooMany`]); see [`crate::schema`];
    /// - the report parses ([`VerifyError::Malformed`]) and validates ([`VerifyError::Invalid`],
    ///   which also refuses a schema older than any this release accepts).
    pub fn verify(&self) -> Result<CallReport, VerifyError> {
        self.verify_signature()?;
        let text =
            std::str::from_utf8(&self.body).map_err(|e| VerifyError::NotUtf8(e.valid_up_to()))?;
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| VerifyError::Malformed(e.to_string()))?;
        let declared = value
            .as_object()
            .and_then(|o| o.get("schema"))
            .and_then(serde_json::Value::as_u64)
            .and_then(|s| u32::try_from(s).ok());
        match declared {
            Some(schema) if schema > SCHEMA_VERSION => {
                return Err(VerifyError::NewerSchema(schema))
            }
            Some(schema) if schema >= OLDEST_SCHEMA => crate::schema::check(&value, schema)?,
            // No schema, or one older than any this release knows: refused below, by the parse
            // or by `validate`, but never on a shape other than an object.
            _ if !value.is_object() => {
                return Err(VerifyError::Malformed(
                    "a report body is a JSON object".into(),
                ))
            }
            _ => {}
        }
        let report = serde_json::from_str::<CallReport>(text)
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

    /// A report body as JSON, edited, signed by a valid key.
    fn signed_with(edit: impl FnOnce(&mut serde_json::Value)) -> SignedReport {
        let mut v = serde_json::to_value(crate::schema::tests::full_report()).unwrap();
        edit(&mut v);
        SignedReport::sign_body(serde_json::to_vec(&v).unwrap(), &key(3))
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path_at_any_depth() {
        let full = crate::schema::tests::full_report();
        let signed = SignedReport::sign(&full, &key(3)).unwrap();
        assert_eq!(signed.verify().unwrap(), full);
        let top = signed_with(|v| v["hostname"] = "volunteer-laptop".into());
        let err = top.verify().unwrap_err();
        assert_eq!(err, VerifyError::UnknownField("hostname".into()));
        assert_eq!(err.label(), "unknown_field");
        assert!(err.to_string().contains("hostname"), "{err}");
        let nested = signed_with(|v| v["streams"][0]["hostname"] = "volunteer-laptop".into());
        assert_eq!(
            nested.verify(),
            Err(VerifyError::UnknownField("streams[0].hostname".into()))
        );
        for (edit, path) in [
            (
                &(|v: &mut serde_json::Value| v["verdict_detail"]["local_ip"] = "10.1.2.3".into())
                    as &dyn Fn(&mut serde_json::Value),
                "verdict_detail.local_ip",
            ),
            (
                &|v: &mut serde_json::Value| v["attestation"]["x"] = 1.into(),
                "attestation.x",
            ),
            (
                &|v: &mut serde_json::Value| {
                    v["streams"][0]["owd_ms"]["up"]["formula"] = "=HYPERLINK(\"x\")".into()
                },
                "streams[0].owd_ms.up.formula",
            ),
        ] {
            let s = signed_with(edit);
            assert_eq!(s.verify(), Err(VerifyError::UnknownField(path.into())));
        }
    }

    #[test]
    fn markup_in_a_known_string_is_data_but_sizes_are_bounded() {
        let script = "<script>alert(1)</script> =HYPERLINK(\"http://x\")";
        let s = signed_with(|v| v["verdict_detail"]["reason"] = script.into());
        assert_eq!(s.verify().unwrap().verdict_detail.unwrap().reason, script);
        let max = crate::schema::MAX_SENTENCE_LEN;
        let s = signed_with(|v| {
            v["verdict_detail"]["reason"] = format!("{script}{}", "x".repeat(max)).into()
        });
        let err = s.verify().unwrap_err();
        assert!(
            matches!(&err, VerifyError::TooLong { field, max: m, .. }
                if field == "verdict_detail.reason" && *m == max),
            "{err}"
        );
        assert_eq!(err.label(), "field_too_large");
        assert!(err.to_string().contains("verdict_detail.reason"), "{err}");
        let s = signed_with(|v| v["agent_version"] = "a".repeat(65).into());
        assert!(
            matches!(s.verify(), Err(VerifyError::TooLong { field, .. }) if field == "agent_version")
        );
        let s = signed_with(|v| {
            let one = v["streams"][0].clone();
            v["streams"] = serde_json::Value::Array(vec![one; MAX_STREAMS + 1]);
        });
        let err = s.verify().unwrap_err();
        assert!(
            matches!(&err, VerifyError::TooMany { field, count: 5, .. } if field == "streams"),
            "{err}"
        );
    }

    #[test]
    fn a_body_that_is_not_utf8_is_refused_without_panic() {
        let good = serde_json::to_vec(&sample_report()).unwrap();
        // Inside a field a lenient parse would skip, and inside a known string.
        let mut in_unknown = b"{\"x\":\"\xff\xfe\",".to_vec();
        in_unknown.extend_from_slice(&good[1..]);
        let name = b"callwatch-agent/test";
        let at = good.windows(name.len()).position(|w| w == name).unwrap();
        let mut in_known = good.clone();
        in_known[at + name.len() - 1] = 0xc3;
        for body in [in_unknown, in_known] {
            let s = SignedReport::sign_body(body, &key(3));
            let err = s.verify().unwrap_err();
            assert!(matches!(err, VerifyError::NotUtf8(_)), "{err}");
            assert_eq!(err.label(), "not_utf8");
        }
    }

    #[test]
    fn a_newer_schema_with_fields_this_release_does_not_know_is_still_deferred() {
        let s = signed_with(|v| {
            v["schema"] = (SCHEMA_VERSION + 1).into();
            v["hostname_hash"] = "ab".into();
            v["streams"][0]["quic_rtt_ms"] = 1.into();
            v["verdict_detail"]["reason"] = "x".repeat(10_000).into();
        });
        assert_eq!(
            s.verify(),
            Err(VerifyError::NewerSchema(SCHEMA_VERSION + 1))
        );
        // The same body in the current schema is refused for its first unknown key.
        let s = signed_with(|v| {
            v["hostname_hash"] = "ab".into();
            v["streams"][0]["quic_rtt_ms"] = 1.into();
        });
        assert_eq!(
            s.verify(),
            Err(VerifyError::UnknownField("hostname_hash".into()))
        );
    }

    #[test]
    fn sign_refuses_what_verify_would_refuse() {
        let mut r = sample_report();
        r.agent_version = "callwatch-agent/".repeat(10);
        let err = SignedReport::sign(&r, &key(3)).unwrap_err();
        assert!(
            matches!(&err, SignError::Schema(VerifyError::TooLong { field, .. }) if field == "agent_version"),
            "{err}"
        );
        let mut r = sample_report();
        r.verdict_detail = crate::schema::tests::full_report().verdict_detail;
        r.verdict_detail.as_mut().unwrap().method = "m".repeat(crate::schema::MAX_SENTENCE_LEN + 1);
        assert!(SignedReport::sign(&r, &key(3)).is_err());
        // What this release writes signs and verifies, in every schema it knows.
        for schema in crate::report::OLDEST_SCHEMA..=SCHEMA_VERSION {
            let mut r = crate::schema::tests::full_report();
            if schema < 2 {
                // Schema 1 has no attested subdivision.
                if let Some(a) = &mut r.attestation {
                    a.subdivision = None;
                }
            }
            r.schema = schema;
            let s = SignedReport::sign(&r, &key(3)).unwrap();
            assert_eq!(s.verify().unwrap(), r);
        }
    }

    #[test]
    fn the_signature_is_over_the_context_then_the_body_and_nothing_else() {
        let k = key(4);
        let body = br#"{"schema":1}"#.to_vec();
        let s = SignedReport::sign_body(body.clone(), &k);
        assert_eq!(s.body, body);
        assert_eq!(s.key, k.verifying_key().to_bytes().to_vec());
        // Checked with the Ed25519 library alone, the context spelled out here rather than
        // read from `CONTEXT`: what anyone verifying an export does.
        let mut message = b"callwatch-report-v1\0".to_vec();
        message.extend_from_slice(&body);
        let public: [u8; 32] = s.key.clone().try_into().unwrap();
        let public = VerifyingKey::from_bytes(&public).unwrap();
        let signature: [u8; 64] = s.signature.clone().try_into().unwrap();
        let signature = Signature::from_bytes(&signature);
        assert!(public.verify_strict(&message, &signature).is_ok());
        assert!(public.verify_strict(&body, &signature).is_err());
        assert_eq!(s.verify_signature(), Ok(()));
        // A body signed by the library alone over the same message verifies here.
        let by_hand = SignedReport {
            body: body.clone(),
            key: s.key.clone(),
            signature: k.sign(&message).to_bytes().to_vec(),
        };
        assert_eq!(by_hand.verify_signature(), Ok(()));
        let without_context = SignedReport {
            signature: k.sign(&body).to_bytes().to_vec(),
            ..by_hand
        };
        assert_eq!(
            without_context.verify_signature(),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn a_body_of_exactly_the_limit_is_checked_and_one_byte_more_is_too_large() {
        // 16 KiB per stream, 4 streams at most: 16 * 1024 * 4 bytes.
        assert_eq!(MAX_BODY_LEN, 65_536);
        let k = key(6);
        let at_limit = SignedReport::sign_body(vec![b' '; 65_536], &k);
        assert_eq!(at_limit.verify_signature(), Ok(()));
        let over = SignedReport::sign_body(vec![b' '; 65_537], &k);
        let err = over.verify_signature().unwrap_err();
        assert_eq!(err, VerifyError::TooLarge(65_537));
        assert_eq!(err.label(), "too_large");
    }

    #[test]
    fn the_key_is_exported_as_lower_case_hex() {
        let s = SignedReport {
            body: b"{}".to_vec(),
            key: vec![0x00, 0x0f, 0xa0, 0xff],
            signature: vec![],
        };
        assert_eq!(s.key_hex(), "000fa0ff");
        // The same in a JSON export, where the signature is hex too.
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["key"], "000fa0ff");
        assert_eq!(json["signature"], "");
        assert_eq!(json["body"], "{}");
    }

    /// A binary format that hands a deserializer owned bytes (`visit_byte_buf`), or a number
    /// where bytes belong (`wrong`).
    struct OwnedBytes {
        bytes: Vec<u8>,
        wrong: bool,
    }

    impl<'de> serde::Deserializer<'de> for OwnedBytes {
        type Error = serde::de::value::Error;
        fn is_human_readable(&self) -> bool {
            false
        }
        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            v: V,
        ) -> Result<V::Value, Self::Error> {
            if self.wrong {
                v.visit_u64(7)
            } else {
                v.visit_byte_buf(self.bytes)
            }
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map struct
            enum identifier ignored_any
        }
    }

    #[test]
    fn binary_formats_giving_owned_bytes_read_them_and_anything_else_is_refused() {
        let owned = |bytes: &[u8]| OwnedBytes {
            bytes: bytes.to_vec(),
            wrong: false,
        };
        assert_eq!(
            hex_bytes::deserialize(owned(&[1, 2, 0xff])),
            Ok(vec![1, 2, 0xff])
        );
        assert_eq!(body_text::deserialize(owned(b"{}")), Ok(b"{}".to_vec()));
        let err = hex_bytes::deserialize(OwnedBytes {
            bytes: vec![],
            wrong: true,
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "invalid type: integer `7`, expected bytes");
    }

    #[test]
    fn a_report_written_as_a_json_array_is_refused_though_it_would_parse() {
        // The fields of `CallReport` in declaration order up to `streams` (the rest default):
        // the sequence form a derived `Deserialize` also reads.
        let report = sample_report();
        let object = serde_json::to_value(&report).unwrap();
        let fields = [
            "schema",
            "id",
            "agent_version",
            "platform",
            "started_at",
            "duration_ms",
            "interval_ms",
            "payload_bytes",
            "verdict",
            "verdict_detail",
            "stream_kind",
            "streams",
        ];
        let array: Vec<serde_json::Value> = fields
            .iter()
            .map(|f| object.get(*f).cloned().unwrap_or(serde_json::Value::Null))
            .collect();
        let body = serde_json::to_vec(&array).unwrap();
        assert!(serde_json::from_slice::<CallReport>(&body).is_ok());
        let signed = SignedReport::sign_body(body, &key(7));
        assert_eq!(
            signed.verify(),
            Err(VerifyError::Malformed(
                "a report body is a JSON object".into()
            ))
        );
    }
}
