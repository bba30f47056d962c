//! Which region a report is filed under: its reflector attestation when valid, else the region of
//! the address the upload came from.
//!
//! A report's `attestation` ([`callwatch_proto::attest`]) is accepted when it is signed by a
//! known reflector key ([`AttestKeys`]: the collector's own reflector, and any standalone
//! reflector keys it is given), made for this report, in the report's start hour or the next,
//! and no older than [`MAX_AGE_HOURS`](callwatch_proto::attest::MAX_AGE_HOURS). A refused one is
//! counted by reason and the report is filed as if it had none. Only the region is ever kept:
//! the collector never sees the probes' address, and forgets the upload's after the lookup.

use crate::geo::Region;
use callwatch_proto::attest::{key_id, KeyId};
use callwatch_proto::CallReport;
use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The reflector attestation keys a collector accepts, by key id.
#[derive(Clone, Debug, Default)]
pub struct AttestKeys {
    keys: HashMap<KeyId, VerifyingKey>,
}

impl AttestKeys {
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        AttestKeys {
            keys: keys.into_iter().map(|k| (key_id(&k), k)).collect(),
        }
    }

    pub fn get(&self, id: &KeyId) -> Option<VerifyingKey> {
        self.keys.get(id).copied()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Attestation counters for `/metrics`.
#[derive(Default)]
pub struct AttestStats {
    /// By result: `valid`, `absent`, or a refusal reason ([`AttestError::label`](callwatch_proto::attest::AttestError::label)).
    results: Mutex<BTreeMap<&'static str, u64>>,
    /// Reports with a valid attestation whose upload came from another (known) region.
    pub uploaded_elsewhere: AtomicU64,
}

impl AttestStats {
    fn count(&self, result: &'static str) {
        let mut m = self.results.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(result).or_default() += 1;
    }

    /// Attestations so far, by result.
    pub fn results(&self) -> BTreeMap<&'static str, u64> {
        self.results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Where `report` is filed: the attested region if its attestation is valid, else `upload` (the
/// region of the upload's address; [`Region::unknown`] for a carried-out file). Counts the
/// result, and a valid attestation whose region differs from a known upload region.
pub fn file_region(
    report: &CallReport,
    upload: &Region,
    keys: &AttestKeys,
    now: DateTime<Utc>,
    stats: &AttestStats,
) -> Region {
    let Some(a) = &report.attestation else {
        stats.count("absent");
        return upload.clone();
    };
    match a.verify(report.id, report.started_at, now, |id| keys.get(id)) {
        Ok(()) => {
            stats.count("valid");
            let attested = Region {
                country: a.country.clone(),
                asn: a.asn,
            };
            if *upload != Region::unknown() && attested != *upload {
                stats.uploaded_elsewhere.fetch_add(1, Ordering::Relaxed);
            }
            attested
        }
        Err(e) => {
            stats.count(e.label());
            upload.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callwatch_proto::attest::{unix_hour, Claim, RegionAttestation};
    use ed25519_dalek::SigningKey;

    fn attested(report: &CallReport, key: &SigningKey, report_id: [u8; 16]) -> CallReport {
        let claim = Claim {
            report_id,
            country: *b"RU",
            asn: 12389,
            hour: unix_hour(report.started_at),
        };
        let (id, sig) = claim.sign(key);
        let mut r = report.clone();
        r.attestation = RegionAttestation::from_signed(&claim, &id, &sig);
        r
    }

    #[test]
    fn files_under_a_valid_attestation_and_falls_back_with_a_reason() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let keys = AttestKeys::new([key.verifying_key()]);
        let stats = AttestStats::default();
        let report = CallReport::example();
        let now = report.started_at;
        let upload = Region {
            country: "NL".into(),
            asn: 60781,
        };
        let good = attested(&report, &key, report.id.0);
        let filed = file_region(&good, &upload, &keys, now, &stats);
        assert_eq!((filed.country.as_str(), filed.asn), ("RU", 12389));
        assert_eq!(stats.uploaded_elsewhere.load(Ordering::Relaxed), 1);
        let other = attested(&report, &key, [0xee; 16]);
        assert_eq!(file_region(&other, &upload, &keys, now, &stats), upload);
        let stranger = attested(&report, &SigningKey::from_bytes(&[2; 32]), report.id.0);
        assert_eq!(file_region(&stranger, &upload, &keys, now, &stats), upload);
        assert_eq!(file_region(&report, &upload, &keys, now, &stats), upload);
        let results = stats.results();
        assert_eq!(results.get("valid"), Some(&1));
        assert_eq!(results.get("other_report"), Some(&1));
        assert_eq!(results.get("unknown_key"), Some(&1));
        assert_eq!(results.get("absent"), Some(&1));
    }
}
