//! Reflector attestations: where the path of a call test came from, signed by the reflector.
//!
//! During a test the reflector sees the address the probes come from. At the end of the test the
//! agent asks it, on the control session, for an attestation of that address's region
//! ([`crate::probe::AttestQuery`] → [`crate::probe::Attestation`]); the reflector looks up the
//! country and ASN and signs them with its Ed25519 attestation key, together with the unix hour
//! and the report's id. The address itself is never in it. The agent copies it into the report
//! ([`RegionAttestation`], the report's `attestation`), which it then signs as usual; the
//! collector checks it ([`RegionAttestation::verify`]) and files the report under the attested
//! region instead of the region of the address the upload came from.
//!
//! Signed bytes: [`CONTEXT`] ‖ key id (8) ‖ report id (16) ‖ country (2 ASCII) ‖ ASN (u32 BE) ‖
//! hour (u32 BE). The key id is the first 8 bytes of SHA-256 of the reflector's Ed25519 public key.
//! An attestation that also signs the first-level subdivision (ISO 3166-2, asked for by agents of
//! reflectors that advertise [`crate::probe::FEATURE_SUBDIVISION`]) is signed under
//! [`CONTEXT_SUBDIVISION`] with the subdivision's code after the hour ([`Subdivision`]: the part
//! after the hyphen, three bytes); one with a path token as well, under
//! [`CONTEXT_SUBDIVISION_WITH_TOKEN`], the token's digest last. Each form has its own context, so
//! no signature of one form verifies as another.
//!
//! Rules a verifier applies (the collector, see docs/DEPLOYMENT.md):
//! - the key id names a known reflector key and the signature verifies under it (strict);
//! - the report id is the report's own (an attestation cannot be moved to another report);
//! - the hour is the report's `started_at` hour or the next one (a test may end after an hour
//!   boundary, and agent and reflector clocks may differ by minutes); anything else is refused;
//! - the hour is no older than [`MAX_AGE_HOURS`] at verification time.

use crate::id::ReportId;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Domain separation: an attestation signature is never valid as any other signature.
pub const CONTEXT: &[u8] = b"callwatch-attestation-v1\0";
/// The context of an attestation that also signs a path token's digest
/// ([`crate::pathtoken`]): `CONTEXT_WITH_TOKEN` ‖ the v1 fields ‖ digest (16).
pub const CONTEXT_WITH_TOKEN: &[u8] = b"callwatch-attestation-v2\0";
/// The context of an attestation that signs the subdivision: `CONTEXT_SUBDIVISION` ‖ the v1
/// fields ‖ subdivision (3).
pub const CONTEXT_SUBDIVISION: &[u8] = b"callwatch-attestation-v3\0";
/// The context of an attestation that signs the subdivision and a path token's digest:
/// `CONTEXT_SUBDIVISION_WITH_TOKEN` ‖ the v1 fields ‖ subdivision (3) ‖ digest (16).
pub const CONTEXT_SUBDIVISION_WITH_TOKEN: &[u8] = b"callwatch-attestation-v4\0";
/// Bytes of a signed subdivision code.
pub const SUBDIVISION_LEN: usize = 3;
/// Bytes of a key id.
pub const KEY_ID_LEN: usize = 8;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// How old (in hours, at verification) an attestation may be: 180 days, the collector's
/// report age limit, so a report held through a long block keeps its attested region.
pub const MAX_AGE_HOURS: u32 = 180 * 24;

/// A reflector attestation key's id: the first 8 bytes of SHA-256 of its public key.
pub type KeyId = [u8; KEY_ID_LEN];

/// The key id of an Ed25519 public key.
pub fn key_id(public: &VerifyingKey) -> KeyId {
    let digest = Sha256::digest(public.as_bytes());
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

/// The unix hour of a time (whole hours since 1970, floored); 0 before 1970.
pub fn unix_hour(t: DateTime<Utc>) -> u32 {
    u32::try_from(t.timestamp().max(0) / 3600).unwrap_or(u32::MAX)
}

/// A first-level subdivision as an attestation signs it: the part of its ISO 3166-2 code after
/// the country and hyphen (`MOW` of `RU-MOW`, `75` of `FR-75`), one to three upper-case ASCII
/// letters or digits, left-aligned and padded with zero bytes. All zeros: the reflector does
/// not know the subdivision (its sources have none for the address).
pub type Subdivision = [u8; SUBDIVISION_LEN];

/// The signed form of ISO 3166-2 code `code` (`RU-MOW`) of a subdivision of `country`: `None`
/// when it is not `country`, a hyphen and one to three upper-case letters or digits. The empty
/// code is the unknown subdivision (all zeros).
pub fn subdivision_bytes(country: &[u8; 2], code: &str) -> Option<Subdivision> {
    if code.is_empty() {
        return Some([0; SUBDIVISION_LEN]);
    }
    let rest = code.strip_prefix(std::str::from_utf8(country).ok()?)?;
    let part = rest.strip_prefix('-')?;
    if part.is_empty()
        || part.len() > SUBDIVISION_LEN
        || !part
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return None;
    }
    let mut s = [0; SUBDIVISION_LEN];
    s[..part.len()].copy_from_slice(part.as_bytes());
    Some(s)
}

/// The ISO 3166-2 code (`RU-MOW`) of signed subdivision `s` of `country`; `Some("")` for the
/// unknown subdivision (all zeros); `None` when the bytes are no code (a zero before a letter,
/// other characters).
pub fn subdivision_code(country: &[u8; 2], s: &Subdivision) -> Option<String> {
    let len = s.iter().position(|&b| b == 0).unwrap_or(SUBDIVISION_LEN);
    let (part, pad) = s.split_at(len);
    if pad.iter().any(|&b| b != 0)
        || !part
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        || !country.iter().all(u8::is_ascii_uppercase)
    {
        return None;
    }
    if part.is_empty() {
        return Some(String::new());
    }
    Some(format!(
        "{}-{}",
        String::from_utf8_lossy(country),
        String::from_utf8_lossy(part)
    ))
}

/// What an attestation says, before or without its signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub report_id: [u8; 16],
    /// ISO 3166-1 alpha-2, upper case ASCII; `ZZ` when the reflector does not know.
    pub country: [u8; 2],
    pub asn: u32,
    /// Unix hour at the reflector when it signed.
    pub hour: u32,
    /// The first-level subdivision, when the attestation signs one (all zeros: signed as
    /// unknown); `None`: an attestation of country and ASN only (v1 and v2).
    pub subdivision: Option<Subdivision>,
    /// The digest of the path token made with it ([`crate::pathtoken::digest`]), if any.
    pub token_digest: Option<[u8; crate::pathtoken::DIGEST_LEN]>,
}

impl Claim {
    /// The bytes signed for this claim under the key with id `key_id`.
    pub fn signed_message(&self, key_id: &KeyId) -> Vec<u8> {
        let mut m = Vec::with_capacity(
            CONTEXT_SUBDIVISION_WITH_TOKEN.len() + KEY_ID_LEN + 16 + 2 + 4 + 4 + 3 + 16,
        );
        m.extend_from_slice(match (self.subdivision, self.token_digest) {
            (None, None) => CONTEXT,
            (None, Some(_)) => CONTEXT_WITH_TOKEN,
            (Some(_), None) => CONTEXT_SUBDIVISION,
            (Some(_), Some(_)) => CONTEXT_SUBDIVISION_WITH_TOKEN,
        });
        m.extend_from_slice(key_id);
        m.extend_from_slice(&self.report_id);
        m.extend_from_slice(&self.country);
        m.extend_from_slice(&self.asn.to_be_bytes());
        m.extend_from_slice(&self.hour.to_be_bytes());
        if let Some(s) = &self.subdivision {
            m.extend_from_slice(s);
        }
        if let Some(d) = &self.token_digest {
            m.extend_from_slice(d);
        }
        m
    }

    /// Signs the claim: the key id and the signature.
    pub fn sign(&self, key: &SigningKey) -> (KeyId, [u8; SIGNATURE_LEN]) {
        let id = key_id(&key.verifying_key());
        (id, key.sign(&self.signed_message(&id)).to_bytes())
    }
}

/// The attestation as the report carries it (`CallReport::attestation`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionAttestation {
    /// ISO 3166-1 alpha-2 of the probes' source address, `ZZ` when unknown.
    pub country: String,
    /// Autonomous system of the probes' source address, 0 when unknown.
    pub asn: u32,
    /// Unix hour at the reflector when it signed.
    pub hour: u32,
    /// The report this attestation was made for.
    pub report_id: ReportId,
    /// The reflector key's id, 16 hex digits.
    pub key_id: String,
    /// Ed25519 signature, 128 hex digits.
    pub signature: String,
    /// The first-level subdivision of the probes' source address, ISO 3166-2 (`RU-MOW`), when
    /// the reflector signed one; `""`: signed as unknown. Absent from attestations of
    /// reflectors that sign country and ASN only. Since report schema 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdivision: Option<String>,
    /// The digest of the path token the reflector made with it (32 hex digits), which the
    /// signature covers; the token itself travels beside the signed report, never in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_token_digest: Option<String>,
}

/// Why an attestation is refused; the label is what `/metrics` counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum AttestError {
    #[error("malformed attestation")]
    Malformed,
    #[error("attestation from an unknown reflector key")]
    UnknownKey,
    #[error("attestation signature does not verify")]
    BadSignature,
    #[error("attestation made for another report")]
    OtherReport,
    #[error("attestation hour is neither the report's start hour nor the next")]
    OtherHour,
    #[error("attestation older than {MAX_AGE_HOURS} hours")]
    Expired,
}

impl AttestError {
    /// A short stable label for counting refusals by reason.
    pub fn label(self) -> &'static str {
        match self {
            AttestError::Malformed => "malformed",
            AttestError::UnknownKey => "unknown_key",
            AttestError::BadSignature => "bad_signature",
            AttestError::OtherReport => "other_report",
            AttestError::OtherHour => "other_hour",
            AttestError::Expired => "expired",
        }
    }
}

impl RegionAttestation {
    /// The report's form of a signed claim; `None` when the country is not two ASCII letters or
    /// the subdivision is no code.
    pub fn from_signed(
        claim: &Claim,
        key_id: &KeyId,
        signature: &[u8; SIGNATURE_LEN],
    ) -> Option<Self> {
        if !claim.country.iter().all(u8::is_ascii_uppercase) {
            return None;
        }
        Some(RegionAttestation {
            country: String::from_utf8(claim.country.to_vec()).ok()?,
            asn: claim.asn,
            hour: claim.hour,
            report_id: ReportId(claim.report_id),
            key_id: hex::encode(key_id),
            signature: hex::encode(signature),
            subdivision: match &claim.subdivision {
                Some(s) => Some(subdivision_code(&claim.country, s)?),
                None => None,
            },
            path_token_digest: claim.token_digest.map(hex::encode),
        })
    }

    /// The signed path token digest, if the attestation has one (`Malformed` if unreadable).
    pub fn token_digest(&self) -> Result<Option<[u8; crate::pathtoken::DIGEST_LEN]>, AttestError> {
        self.path_token_digest
            .as_ref()
            .map(|h| {
                let mut d = [0u8; crate::pathtoken::DIGEST_LEN];
                hex::decode_to_slice(h, &mut d).map_err(|_| AttestError::Malformed)?;
                Ok(d)
            })
            .transpose()
    }

    /// The claim, key id and signature, or `Malformed`.
    fn parts(&self) -> Result<(Claim, KeyId, [u8; SIGNATURE_LEN]), AttestError> {
        let country: [u8; 2] = self
            .country
            .as_bytes()
            .try_into()
            .map_err(|_| AttestError::Malformed)?;
        if !country.iter().all(u8::is_ascii_uppercase) {
            return Err(AttestError::Malformed);
        }
        let mut key_id = [0u8; KEY_ID_LEN];
        hex::decode_to_slice(&self.key_id, &mut key_id).map_err(|_| AttestError::Malformed)?;
        let mut signature = [0u8; SIGNATURE_LEN];
        hex::decode_to_slice(&self.signature, &mut signature)
            .map_err(|_| AttestError::Malformed)?;
        let subdivision = self
            .subdivision
            .as_deref()
            .map(|code| subdivision_bytes(&country, code).ok_or(AttestError::Malformed))
            .transpose()?;
        let claim = Claim {
            report_id: self.report_id.0,
            country,
            asn: self.asn,
            hour: self.hour,
            subdivision,
            token_digest: self.token_digest()?,
        };
        Ok((claim, key_id, signature))
    }

    /// Checks the attestation for the report `report_id` started at `started_at`, at time `now`,
    /// against the known reflector keys (`key_of` finds a key by its id). Never panics.
    pub fn verify(
        &self,
        report_id: ReportId,
        started_at: DateTime<Utc>,
        now: DateTime<Utc>,
        key_of: impl Fn(&KeyId) -> Option<VerifyingKey>,
    ) -> Result<(), AttestError> {
        let (claim, key_id, signature) = self.parts()?;
        let key = key_of(&key_id).ok_or(AttestError::UnknownKey)?;
        if crate::attest::key_id(&key) != key_id || key.is_weak() {
            return Err(AttestError::UnknownKey);
        }
        key.verify_strict(
            &claim.signed_message(&key_id),
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| AttestError::BadSignature)?;
        if claim.report_id != report_id.0 {
            return Err(AttestError::OtherReport);
        }
        let start = unix_hour(started_at);
        if claim.hour != start && Some(claim.hour) != start.checked_add(1) {
            return Err(AttestError::OtherHour);
        }
        if unix_hour(now).saturating_sub(claim.hour) > MAX_AGE_HOURS {
            return Err(AttestError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn started() -> DateTime<Utc> {
        DateTime::from_timestamp(1_760_000_000, 0).unwrap_or_default()
    }

    fn attested(k: &SigningKey, report: [u8; 16], hour: u32) -> RegionAttestation {
        let claim = Claim {
            report_id: report,
            country: *b"NL",
            asn: 1136,
            hour,
            subdivision: None,
            token_digest: None,
        };
        let (id, sig) = claim.sign(k);
        RegionAttestation::from_signed(&claim, &id, &sig).unwrap()
    }

    fn known(k: &SigningKey) -> impl Fn(&KeyId) -> Option<VerifyingKey> + '_ {
        move |id| (key_id(&k.verifying_key()) == *id).then(|| k.verifying_key())
    }

    #[test]
    fn a_valid_attestation_verifies_and_each_fault_has_its_reason() {
        let k = key(1);
        let hour = unix_hour(started());
        let id = ReportId([3; 16]);
        let now = started();
        let a = attested(&k, id.0, hour);
        assert_eq!(a.verify(id, started(), now, known(&k)), Ok(()));
        // The next hour is fine (a test that ended after the hour turned), the one after is not.
        let next = attested(&k, id.0, hour + 1);
        assert_eq!(next.verify(id, started(), now, known(&k)), Ok(()));
        let later = attested(&k, id.0, hour + 2);
        assert_eq!(
            later.verify(id, started(), now, known(&k)),
            Err(AttestError::OtherHour)
        );
        let before = attested(&k, id.0, hour - 1);
        assert_eq!(
            before.verify(id, started(), now, known(&k)),
            Err(AttestError::OtherHour)
        );
        assert_eq!(
            a.verify(ReportId([4; 16]), started(), now, known(&k)),
            Err(AttestError::OtherReport)
        );
        let other = key(2);
        assert_eq!(
            a.verify(id, started(), now, known(&other)),
            Err(AttestError::UnknownKey)
        );
        let mut forged = a.clone();
        forged.asn = 1137;
        assert_eq!(
            forged.verify(id, started(), now, known(&k)),
            Err(AttestError::BadSignature)
        );
        let mut flipped = a.clone();
        let mut sig = hex::decode(&flipped.signature).unwrap();
        sig[5] ^= 1;
        flipped.signature = hex::encode(sig);
        assert_eq!(
            flipped.verify(id, started(), now, known(&k)),
            Err(AttestError::BadSignature)
        );
        let far = now + chrono::Duration::hours(i64::from(MAX_AGE_HOURS) + 2);
        assert_eq!(
            a.verify(id, started(), far, known(&k)),
            Err(AttestError::Expired)
        );
        let mut bad = a.clone();
        bad.country = "nl".into();
        assert_eq!(
            bad.verify(id, started(), now, known(&k)),
            Err(AttestError::Malformed)
        );
    }

    #[test]
    fn subdivision_codes_by_hand() {
        assert_eq!(subdivision_bytes(b"RU", "RU-MOW"), Some(*b"MOW"));
        assert_eq!(subdivision_bytes(b"FR", "FR-75"), Some(*b"75\0"));
        assert_eq!(subdivision_bytes(b"US", "US-CA"), Some(*b"CA\0"));
        assert_eq!(subdivision_bytes(b"RU", ""), Some([0; 3]));
        for bad in [
            "RU-", "RU-MOWX", "UA-MOW", "RU_MOW", "RU-mow", "RUMOW", "RU-M W", "MOW",
        ] {
            assert_eq!(subdivision_bytes(b"RU", bad), None, "{bad:?}");
        }
        assert_eq!(subdivision_code(b"RU", b"MOW").as_deref(), Some("RU-MOW"));
        assert_eq!(subdivision_code(b"FR", b"75\0").as_deref(), Some("FR-75"));
        assert_eq!(subdivision_code(b"FR", b"7\0\0").as_deref(), Some("FR-7"));
        assert_eq!(subdivision_code(b"RU", &[0; 3]).as_deref(), Some(""));
        for bad in [*b"\0MO", *b"M\0W", *b"mow", *b"M-W"] {
            assert_eq!(subdivision_code(b"RU", &bad), None, "{bad:?}");
        }
        assert_eq!(subdivision_code(b"zz", b"MOW"), None);
    }

    /// An attestation signing the subdivision verifies with it, and fails when the subdivision
    /// is changed, dropped or added: each of the four signed forms has its own context.
    #[test]
    fn a_signed_subdivision_verifies_and_cannot_be_changed_dropped_or_added() {
        let k = key(1);
        let hour = unix_hour(started());
        let id = ReportId([3; 16]);
        let now = started();
        for digest in [None, Some([5u8; crate::pathtoken::DIGEST_LEN])] {
            let claim = Claim {
                report_id: id.0,
                country: *b"RU",
                asn: 8359,
                hour,
                subdivision: Some(*b"MOW"),
                token_digest: digest,
            };
            let (kid, sig) = claim.sign(&k);
            let a = RegionAttestation::from_signed(&claim, &kid, &sig).unwrap();
            assert_eq!(a.subdivision.as_deref(), Some("RU-MOW"));
            assert_eq!(a.verify(id, started(), now, known(&k)), Ok(()));
            let json = serde_json::to_value(&a).unwrap();
            assert_eq!(json["subdivision"], "RU-MOW");
            let mut other = a.clone();
            other.subdivision = Some("RU-SPE".into());
            assert_eq!(
                other.verify(id, started(), now, known(&k)),
                Err(AttestError::BadSignature)
            );
            let mut unknown = a.clone();
            unknown.subdivision = Some(String::new());
            assert_eq!(
                unknown.verify(id, started(), now, known(&k)),
                Err(AttestError::BadSignature)
            );
            let mut dropped = a.clone();
            dropped.subdivision = None;
            assert_eq!(
                dropped.verify(id, started(), now, known(&k)),
                Err(AttestError::BadSignature),
                "the same fields without the subdivision are another context"
            );
            let mut foreign = a.clone();
            foreign.subdivision = Some("UA-30".into());
            assert_eq!(
                foreign.verify(id, started(), now, known(&k)),
                Err(AttestError::Malformed)
            );
            // Signed without a subdivision, it cannot be given one.
            let plain = Claim {
                subdivision: None,
                ..claim
            };
            let (kid, sig) = plain.sign(&k);
            let mut added = RegionAttestation::from_signed(&plain, &kid, &sig).unwrap();
            assert_eq!(added.verify(id, started(), now, known(&k)), Ok(()));
            added.subdivision = Some(String::new());
            assert_eq!(
                added.verify(id, started(), now, known(&k)),
                Err(AttestError::BadSignature)
            );
        }
        // The four contexts, as bytes: distinct, none a prefix of another's fields.
        let contexts = [
            CONTEXT,
            CONTEXT_WITH_TOKEN,
            CONTEXT_SUBDIVISION,
            CONTEXT_SUBDIVISION_WITH_TOKEN,
        ];
        for (i, a) in contexts.iter().enumerate() {
            for b in &contexts[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn the_report_field_round_trips_through_json() {
        let a = attested(&key(1), [9; 16], 7);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<RegionAttestation>(&json).unwrap(), a);
    }

    proptest! {
        #[test]
        fn verifying_any_fields_never_panics(
            country in ".{0,4}", key_hex in ".{0,20}", sig in ".{0,130}",
            asn in any::<u32>(), hour in any::<u32>(), id in any::<[u8; 16]>(),
            digest in proptest::option::of(".{0,34}"),
            subdivision in proptest::option::of("[A-Z]{0,2}-?[A-Z0-9]{0,4}"),
        ) {
            let a = RegionAttestation {
                country, asn, hour, report_id: ReportId(id), key_id: key_hex, signature: sig,
                subdivision, path_token_digest: digest,
            };
            let k = key(1);
            prop_assert!(a.verify(ReportId(id), started(), started(), known(&k)).is_err());
        }
    }
}
