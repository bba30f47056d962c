//! A report as the collector knows it once verified: the exact signed bytes, the [`Region`] it
//! is filed under and how that was decided ([`Filing`]), its arrival time, and — for storing —
//! its parse and observations ([`VerifiedReport`]). Never an address.

use super::observation::Observation;
use callwatch_proto::{CallReport, ReportId, SignedReport};
use serde::{Deserialize, Serialize};

/// Where a report came from, as coarse as the collector keeps it: the type the region lookup
/// (shared with the reflector, which attests regions) answers in.
pub use callwatch_reflector::geo::Region;

/// A stored record that no longer reads as what was verified when it was stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stored record {key} is corrupt: {what}")]
pub struct CorruptRecord {
    /// The agent key (hex) of the record.
    pub key: String,
    /// What is wrong with it.
    pub what: String,
}

/// A verified report as stored: the exact signed bytes, the region it is filed under, how that
/// region was decided, and when it arrived. Never an address. Kept as
/// [`StoredReport::to_bytes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredReport {
    pub signed: SignedReport,
    pub region: Region,
    /// Unix milliseconds when the collector received it.
    pub received_at_ms: i64,
    /// How `region` was decided, and what that tells about the volunteer's networks.
    pub filing: Filing,
}

/// The part of a [`StoredReport`] that sled stored before [`Filing`] existed.
#[derive(Serialize, Deserialize)]
struct StoredCore {
    signed: SignedReport,
    region: CoreRegion,
    received_at_ms: i64,
}

/// The region as the postcard part of a record holds it: country and ASN, the layout of every
/// release (postcard is not self-describing, so a field cannot be added here; the subdivision
/// is in the JSON part, [`Tail`]).
#[derive(Serialize, Deserialize)]
struct CoreRegion {
    country: String,
    asn: u32,
}

/// The JSON part of a record: the [`Filing`]'s fields and, when known, the region's
/// subdivision (records without it read as unknown).
#[derive(Serialize)]
struct Tail<'a> {
    #[serde(flatten)]
    filing: &'a Filing,
    #[serde(skip_serializing_if = "str::is_empty")]
    subdivision: &'a str,
}

impl StoredReport {
    /// The bytes sled keeps: postcard of the signed report, region (country and ASN) and
    /// arrival time (the layout of every earlier release), then the [`Filing`] as JSON, with the
    /// region's `subdivision` beside its fields when there is one. JSON because it is
    /// self-describing: fields added later read as their defaults from older records, and
    /// records from before it (nothing after the postcard part) as all-default, without
    /// subdivision.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let core = StoredCore {
            signed: self.signed.clone(),
            region: CoreRegion {
                country: self.region.country.clone(),
                asn: self.region.asn,
            },
            received_at_ms: self.received_at_ms,
        };
        let mut out = postcard::to_allocvec(&core).map_err(|e| e.to_string())?;
        let tail = Tail {
            filing: &self.filing,
            subdivision: &self.region.subdivision,
        };
        serde_json::to_writer(&mut out, &tail).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Reads [`StoredReport::to_bytes`], and records of earlier releases.
    pub fn from_bytes(b: &[u8]) -> Result<StoredReport, String> {
        let (core, rest) = postcard::take_from_bytes::<StoredCore>(b).map_err(|e| e.to_string())?;
        let mut region = Region::new(&core.region.country, core.region.asn);
        let filing = if rest.is_empty() {
            Filing::default()
        } else {
            let tail: serde_json::Value =
                serde_json::from_slice(rest).map_err(|e| format!("filing: {e}"))?;
            if let Some(s) = tail.get("subdivision").and_then(|s| s.as_str()) {
                // Checked again: a code that is not one of the country's reads as unknown.
                region = region.with_subdivision(s);
            }
            Filing::deserialize(tail).map_err(|e| format!("filing: {e}"))?
        };
        Ok(StoredReport {
            signed: core.signed,
            region,
            received_at_ms: core.received_at_ms,
            filing,
        })
    }
}

/// Where a stored report's region came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionSource {
    /// Stored before the collector recorded it.
    #[default]
    Unrecorded,
    /// A valid reflector attestation of the measured path (see [`crate::attest`]).
    Attested,
    /// The address the upload came from (no attestation, a refused one, or one of an unknown
    /// region).
    Upload,
    /// Neither: carried out in a file without a valid attestation (`ZZ`, AS0).
    Unknown,
}

impl RegionSource {
    /// As exports and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            RegionSource::Unrecorded => "unrecorded",
            RegionSource::Attested => "attested",
            RegionSource::Upload => "upload",
            RegionSource::Unknown => "unknown",
        }
    }

    /// The code ClickHouse stores (0 for rows from before the column).
    pub fn code(self) -> u8 {
        match self {
            RegionSource::Unrecorded => 0,
            RegionSource::Attested => 1,
            RegionSource::Upload => 2,
            RegionSource::Unknown => 3,
        }
    }

    /// The source of a [`RegionSource::code`]; unknown codes read as unrecorded.
    pub fn of_code(c: u8) -> RegionSource {
        [
            RegionSource::Attested,
            RegionSource::Upload,
            RegionSource::Unknown,
        ]
        .into_iter()
        .find(|s| s.code() == c)
        .unwrap_or_default()
    }
}

/// How a report was filed: decided at ingest, kept with it, counted in the aggregates and
/// exported, so researchers can see and exclude what they need to (docs/DEPLOYMENT.md, "Where a
/// report is filed"). All false / unrecorded for reports stored before it existed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Filing {
    pub source: RegionSource,
    /// The path was attested in one region and the upload came from another (known) one: a
    /// VPN or proxy, another network since the test, or the other address family.
    pub uploaded_elsewhere: bool,
    /// The network it is filed under is a hosting, cloud or VPN provider's
    /// ([`crate::geo::hosting`]): the test measured such a path, not a subscriber's line.
    pub hosting: bool,
    /// Where `prefix_tag` came from.
    pub prefix_from: PrefixFrom,
    /// The network prefix (IPv4 /24, IPv6 /48) the report counts under for Sybil accounting,
    /// as a keyed tag whose key lived one day in memory ([`crate::attest::PathTokens`]):
    /// 16 hex digits, never exported, never the prefix itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_tag: Option<String>,
}

/// Where a report's prefix tag came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrefixFrom {
    /// No tag: stored before tags, or carried out without a path token.
    #[default]
    None,
    /// The measured path's prefix, from the reflector's path token.
    Path,
    /// The upload address's prefix (no valid path token).
    Upload,
}

impl PrefixFrom {
    /// The code ClickHouse stores (0 for rows from before the column).
    pub fn code(self) -> u8 {
        match self {
            PrefixFrom::None => 0,
            PrefixFrom::Path => 1,
            PrefixFrom::Upload => 2,
        }
    }

    /// The source of a [`PrefixFrom::code`]; unknown codes read as none.
    pub fn of_code(c: u8) -> PrefixFrom {
        [PrefixFrom::Path, PrefixFrom::Upload]
            .into_iter()
            .find(|p| p.code() == c)
            .unwrap_or_default()
    }
}

/// A report as a store takes it: verified and parsed once (at ingest), with the observations
/// aggregation derives from it, so no backend parses the signed JSON again to write it.
#[derive(Clone, Debug)]
pub struct VerifiedReport {
    pub key: ReportKey,
    pub stored: StoredReport,
    /// The parsed body of `stored.signed`.
    pub report: CallReport,
    /// [`Observation::from_report`] of it.
    pub observations: Vec<Observation>,
}

impl VerifiedReport {
    /// A verified report and its parse (what ingest has in hand).
    pub fn new(key: ReportKey, stored: StoredReport, report: CallReport) -> Self {
        let observations = Observation::from_report(&stored, &report);
        VerifiedReport {
            key,
            stored,
            report,
            observations,
        }
    }

    /// From stored bytes (a copy between stores, a rebuild, a test fixture): parses the body,
    /// which was verified when it was first stored; one that no longer parses is corrupt. The
    /// key is the report's own (agent key, report id).
    pub fn parse(stored: StoredReport) -> Result<Self, CorruptRecord> {
        let report: CallReport =
            serde_json::from_slice(&stored.signed.body).map_err(|e| CorruptRecord {
                key: hex::encode(&stored.signed.key),
                what: format!("stored body no longer parses: {e}"),
            })?;
        let agent: [u8; 32] =
            stored
                .signed
                .key
                .as_slice()
                .try_into()
                .map_err(|_| CorruptRecord {
                    key: hex::encode(&stored.signed.key),
                    what: "agent key is not 32 bytes".into(),
                })?;
        let key = ReportKey {
            agent,
            id: report.id,
        };
        Ok(Self::new(key, stored, report))
    }
}

/// A report's identity for deduplication: the agent's key and the id it chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReportKey {
    pub agent: [u8; 32],
    pub id: ReportId,
}

impl ReportKey {
    pub fn to_bytes(&self) -> [u8; 48] {
        let mut k = [0u8; 48];
        k[..32].copy_from_slice(&self.agent);
        k[32..].copy_from_slice(&self.id.0);
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(filing: Filing) -> StoredReport {
        StoredReport {
            signed: SignedReport {
                body: br#"{"v":1}"#.to_vec(),
                key: vec![7; 32],
                signature: vec![9; 64],
            },
            region: Region::new("RU", 12389),
            received_at_ms: 1_764_288_000_123,
            filing,
        }
    }

    #[test]
    fn records_round_trip_and_records_of_earlier_releases_read_as_unrecorded() {
        let marked = stored(Filing {
            source: RegionSource::Attested,
            uploaded_elsewhere: true,
            hosting: true,
            ..Filing::default()
        });
        let bytes = marked.to_bytes().unwrap();
        assert_eq!(StoredReport::from_bytes(&bytes).unwrap(), marked);
        // A record written by an earlier release: postcard of the three fields, nothing after.
        let legacy = postcard::to_allocvec(&StoredCore {
            signed: marked.signed.clone(),
            region: CoreRegion {
                country: "RU".into(),
                asn: 12389,
            },
            received_at_ms: marked.received_at_ms,
        })
        .unwrap();
        assert_eq!(
            StoredReport::from_bytes(&legacy).unwrap(),
            stored(Filing::default())
        );
        // Fields a later release adds to the filing are ignored; missing ones are defaults.
        let mut later = legacy.clone();
        later.extend_from_slice(br#"{"source":"upload","future":[1,2]}"#);
        let read = StoredReport::from_bytes(&later).unwrap();
        assert_eq!(read.filing.source, RegionSource::Upload);
        assert!(!read.filing.hosting);
        assert_eq!(read.region, Region::new("RU", 12389), "no subdivision");
        // Damage is an error, never a panic or a silent default.
        let mut damaged = legacy;
        damaged.extend_from_slice(b"{not json");
        assert!(StoredReport::from_bytes(&damaged).is_err());
        assert!(StoredReport::from_bytes(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn the_subdivision_is_kept_in_the_json_part_and_older_records_read_without_it() {
        let mut r = stored(Filing {
            source: RegionSource::Upload,
            prefix_tag: Some("00112233aabbccdd".into()),
            ..Filing::default()
        });
        r.region = r.region.with_subdivision("RU-MOW");
        assert_eq!(r.region.subdivision, "RU-MOW");
        let bytes = r.to_bytes().unwrap();
        assert_eq!(StoredReport::from_bytes(&bytes).unwrap(), r);
        // The postcard part is the layout of every earlier release: a reader that knows only
        // it (country, ASN) still reads the record, and the JSON part is the filing's with one
        // more key.
        let (core, rest) = postcard::take_from_bytes::<StoredCore>(&bytes).unwrap();
        assert_eq!(
            (core.region.country.as_str(), core.region.asn),
            ("RU", 12389)
        );
        let tail: serde_json::Value = serde_json::from_slice(rest).unwrap();
        assert_eq!(tail["subdivision"], "RU-MOW");
        assert_eq!(tail["source"], "upload");
        // Without a subdivision the record is byte for byte what the previous release wrote.
        let mut plain = r.clone();
        plain.region.subdivision.clear();
        let old_layout = {
            let mut out = postcard::to_allocvec(&core).unwrap();
            serde_json::to_writer(&mut out, &plain.filing).unwrap();
            out
        };
        assert_eq!(plain.to_bytes().unwrap(), old_layout);
        // A subdivision of another country, or no code at all, reads as unknown.
        let mut other = postcard::to_allocvec(&core).unwrap();
        other.extend_from_slice(br#"{"source":"upload","subdivision":"DE-BE"}"#);
        assert_eq!(
            StoredReport::from_bytes(&other).unwrap().region.subdivision,
            ""
        );
        let mut junk = postcard::to_allocvec(&core).unwrap();
        junk.extend_from_slice(br#"{"subdivision":["RU-MOW"]}"#);
        assert_eq!(
            StoredReport::from_bytes(&junk).unwrap().region.subdivision,
            ""
        );
    }

    #[test]
    fn region_source_codes_and_names_are_one_to_one() {
        for s in [
            RegionSource::Unrecorded,
            RegionSource::Attested,
            RegionSource::Upload,
            RegionSource::Unknown,
        ] {
            assert_eq!(RegionSource::of_code(s.code()), s);
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(RegionSource::of_code(200), RegionSource::Unrecorded);
        for p in [PrefixFrom::None, PrefixFrom::Path, PrefixFrom::Upload] {
            assert_eq!(PrefixFrom::of_code(p.code()), p);
        }
        assert_eq!(PrefixFrom::of_code(200), PrefixFrom::None);
    }

    #[test]
    fn a_report_key_is_the_agent_key_then_the_report_id() {
        let key = ReportKey {
            agent: [0xee; 32],
            id: ReportId([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]),
        };
        let bytes = key.to_bytes();
        assert_eq!(bytes[..32], [0xee; 32]);
        assert_eq!(
            bytes[32..],
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
        );
    }
}
