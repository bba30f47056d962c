//! Which region a report is filed under: its reflector attestation when valid, else the region of
//! the address the upload came from.
//!
//! A report's `attestation` ([`callwatch_proto::attest`]) is accepted when it is signed by a
//! known reflector key ([`AttestKeys`]: the collector's own reflector, and any standalone
//! reflector keys it is given), made for this report, in the report's start hour or the next,
//! and no older than [`MAX_AGE_HOURS`](callwatch_proto::attest::MAX_AGE_HOURS). A refused one is
//! counted by reason and the report is filed as if it had none. Only the region is ever kept:
//! the collector never sees the probes' address, and forgets the upload's after the lookup.

use crate::counts::LabelCounts;
use crate::domain::{Filing, PrefixFrom, RegionSource};
use crate::geo::hosting::HostingAsns;
use crate::geo::Region;
use callwatch_proto::attest::RegionAttestation;
use callwatch_proto::attest::{key_id, KeyId};
use callwatch_proto::carry::CarrySecret;
use callwatch_proto::pathtoken::{self, NetPrefix, PathToken};
use callwatch_proto::CallReport;
use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The reflector attestation keys a collector accepts, by key id: fixed ones (its own
/// reflector's) and, when loaded from a data folder, the registered standalone reflectors'
/// ([`crate::reflector::registry`]) that are not revoked. The registry is re-read whenever its
/// file changes (checked on each lookup: one `stat`), so `reflector add`/`revoke` take effect
/// on a running collector at the next report.
#[derive(Clone, Debug, Default)]
pub struct AttestKeys {
    keys: HashMap<KeyId, VerifyingKey>,
    registry: Option<Arc<Registered>>,
}

/// The registered keys, cached with the registry file's identity when read.
#[derive(Debug)]
struct Registered {
    data: PathBuf,
    cache: Mutex<(Option<FileStamp>, HashMap<KeyId, VerifyingKey>)>,
}

/// What tells one version of the registry file from another (it is replaced by rename).
type FileStamp = (u64, u64, Option<std::time::SystemTime>, u64);

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.modified().ok(), m.len()))
}

fn registered_keys(data: &std::path::Path) -> anyhow::Result<HashMap<KeyId, VerifyingKey>> {
    let reg = crate::reflector::registry::Registry::load(data)?;
    let mut keys = HashMap::new();
    for e in reg.active() {
        let k = e.verifying_key()?;
        keys.insert(key_id(&k), k);
    }
    Ok(keys)
}

impl Registered {
    /// The current registered key `id`, re-reading the registry if its file changed. A file
    /// that cannot be read keeps the last good keys (logged once per change).
    fn get(&self, id: &KeyId) -> Option<VerifyingKey> {
        let path = crate::reflector::registry::path(&self.data);
        let now = stamp(&path);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 != now {
            match registered_keys(&self.data) {
                Ok(keys) => cache.1 = keys,
                Err(e) => tracing::warn!("keeping the last good reflector registry: {e:#}"),
            }
            cache.0 = now;
        }
        cache.1.get(id).copied()
    }
}

impl AttestKeys {
    /// Exactly these keys, nothing registered.
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        AttestKeys {
            keys: keys.into_iter().map(|k| (key_id(&k), k)).collect(),
            registry: None,
        }
    }

    /// The keys a collector with data folder `data` accepts: its own reflector's (derived from
    /// `reflector.key`, made if missing) and the registered, non-revoked standalone reflectors'
    /// (`reflectors.json`, followed as it changes). What `serve` and `import` both use. A
    /// registry that cannot be read is an error here (at start), not later.
    pub fn load(data: &std::path::Path) -> anyhow::Result<Self> {
        let own = callwatch_reflector::identity::load_or_create_attestation(data)?;
        Self::with_registry(own.verifying_key(), data)
    }

    /// `own` and the registry in `data` (see [`AttestKeys::load`]).
    pub fn with_registry(own: VerifyingKey, data: &std::path::Path) -> anyhow::Result<Self> {
        let path = crate::reflector::registry::path(data);
        let first = stamp(&path);
        let keys = registered_keys(data)?;
        Ok(AttestKeys {
            registry: Some(Arc::new(Registered {
                data: data.to_path_buf(),
                cache: Mutex::new((first, keys)),
            })),
            ..Self::new([own])
        })
    }

    pub fn get(&self, id: &KeyId) -> Option<VerifyingKey> {
        self.keys
            .get(id)
            .copied()
            .or_else(|| self.registry.as_ref().and_then(|r| r.get(id)))
    }
}

/// What decides where a report is filed: the attestation keys a collector accepts, the
/// networks it marks as hosting, and the key path tokens are opened with ([`Filer::file`]).
#[derive(Clone, Debug, Default)]
pub struct Filer {
    pub keys: AttestKeys,
    pub hosting: HostingAsns,
    /// Opens path tokens and keys the prefix tags; `None`: tokens are not opened (every
    /// report's prefix tag then comes from its upload address).
    pub paths: Option<Arc<PathTokens>>,
}

/// Where a batch of reports came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Uploaded from an address in this region and network prefix (the address itself is
    /// forgotten after the lookup; the prefix is only ever kept as a keyed tag).
    Upload(Region, NetPrefix),
    /// Carried out in a file (`import`): no address at all.
    Carried,
}

/// Path tokens on the collector's side ([`callwatch_proto::pathtoken`]): the carry-out secret
/// opens them, and the network prefix they hold is kept only as a tag — the first 8 bytes of
/// HMAC-SHA-256 under a key made at random for the UTC day the report's test *started*, held in
/// memory only and destroyed [`TAG_KEY_DAYS`] days after that day by default (or when the
/// collector restarts). Reports of one day from one prefix share a tag whenever they arrive within that
/// window, so a day cell's prefixes can be counted (Sybil accounting): one prefix cannot pass for
/// several by uploading a day's reports over several days. Reports that arrive later all get
/// [`LATE_TAG`]: in a day cell they count as one prefix together and share one prefix's cap.
/// After the window no one, the operator included, can tell which prefix a tag stood for.
pub struct PathTokens {
    secret: CarrySecret,
    day_keys: Mutex<BTreeMap<i64, [u8; 32]>>,
    key_days: i64,
}

/// How many days after a test's UTC day its prefix can still be tagged, and the day's key lives
/// (in memory): an agent that uploads every cycle is well inside it, and so is one whose uploads
/// were blocked for most of a week; one back after a longer outage is not. The trade-off: while
/// a day's key lives, whoever reads the collector's memory can tell which prefix that day's tags
/// stand for.
pub const TAG_KEY_DAYS: i64 = 7;

/// The tag of every report whose test started more than [`TAG_KEY_DAYS`] days before it arrived.
pub const LATE_TAG: [u8; 8] = [0; 8];

impl std::fmt::Debug for PathTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PathTokens")
    }
}

impl PathTokens {
    pub fn new(secret: CarrySecret) -> Self {
        Self::keeping(secret, TAG_KEY_DAYS)
    }

    /// Day keys kept `key_days` days after their day instead of [`TAG_KEY_DAYS`] (tests of
    /// historical fixtures).
    pub fn keeping(secret: CarrySecret, key_days: i64) -> Self {
        PathTokens {
            secret,
            day_keys: Mutex::new(BTreeMap::new()),
            key_days,
        }
    }

    /// The tag of `prefix` for a test that started at `started`, arriving at `now`: under the
    /// key of the test's UTC day, or [`LATE_TAG`] if that day's key is gone. Keys of days more
    /// than the kept days ([`TAG_KEY_DAYS`]) before `now`'s are destroyed here.
    pub fn tag(&self, prefix: NetPrefix, started: DateTime<Utc>, now: DateTime<Utc>) -> [u8; 8] {
        use hmac::{Hmac, Mac};
        let today = now.timestamp().div_euclid(86_400);
        // A test may start a little ahead of the collector's clock (ingest defers more than a
        // few minutes): at most tomorrow.
        let day = started.timestamp().div_euclid(86_400).min(today + 1);
        let key = {
            let mut keys = self.day_keys.lock().unwrap_or_else(|e| e.into_inner());
            // Destroyed, not kept: `retain` drops (and so forgets) every older key.
            keys.retain(|d, _| *d >= today - self.key_days);
            if day < today - self.key_days {
                return LATE_TAG;
            }
            *keys.entry(day).or_insert_with(rand::random)
        };
        let mut tag = [0u8; 8];
        // HMAC takes a key of any length: a 32-byte one cannot be refused.
        if let Ok(mut mac) = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key) {
            mac.update(&prefix.bytes());
            tag.copy_from_slice(&mac.finalize().into_bytes()[..8]);
        }
        tag
    }
}

impl Filer {
    /// Where a report that arrived as `arrival`, with `token` beside it, is filed, and how:
    /// - the region: the attested one if its attestation is valid and of a known region, else
    ///   the upload's ([`Region::unknown`] for a carried-out file). The subdivision: the attested
    ///   one when the attestation signs it (reflectors of this release, when their sources know
    ///   it); else, for an upload from the attested country and network, the upload's; else
    ///   none;
    /// - the marks: uploaded from another known region than the attested one; filed under a
    ///   network in `hosting`;
    /// - the prefix tag: from the path token when the valid attestation signed it and it opens
    ///   (the measured path's prefix), else from the upload address (none for a carried file).
    ///
    /// The attestation is checked once; its result and the token's are counted in `stats`.
    pub fn file(
        &self,
        report: &CallReport,
        token: Option<&PathToken>,
        arrival: &Arrival,
        now: DateTime<Utc>,
        stats: &AttestStats,
    ) -> (Region, Filing) {
        let valid = self.valid_attestation(report, now, stats);
        let attested = valid
            .map(|a| {
                Region::new(&a.country, a.asn)
                    .with_subdivision(a.subdivision.as_deref().unwrap_or_default())
            })
            // A valid attestation of an unknown region (the reflector's sources did not know
            // the probes' address, or a relay stood in for it) decides nothing.
            .filter(|r| *r != Region::unknown());
        if valid.is_some() {
            stats.results.add(if attested.is_some() {
                "valid"
            } else {
                "valid_unknown_region"
            });
        }
        let (region, source, uploaded_elsewhere) = match (attested, arrival) {
            (Some(a), Arrival::Upload(upload, _)) => {
                let same = a.country == upload.country && a.asn == upload.asn;
                let elsewhere = *upload != Region::unknown() && !same;
                // An attestation without a subdivision: the upload's, when it came from the
                // attested country and network, else none.
                let a = match same && a.subdivision.is_empty() {
                    true => a.with_subdivision(&upload.subdivision),
                    false => a,
                };
                (a, RegionSource::Attested, elsewhere)
            }
            (Some(a), Arrival::Carried) => (a, RegionSource::Attested, false),
            (None, Arrival::Upload(upload, _)) => (upload.clone(), RegionSource::Upload, false),
            (None, Arrival::Carried) => (Region::unknown(), RegionSource::Unknown, false),
        };
        let mut filing = Filing {
            source,
            uploaded_elsewhere,
            hosting: self.hosting.contains(region.asn),
            ..Filing::default()
        };
        let prefix = match (
            valid.and_then(|a| self.path_prefix(a, report, token, stats)),
            arrival,
        ) {
            (Some(p), _) => Some((p, PrefixFrom::Path)),
            (None, Arrival::Upload(_, p)) => Some((*p, PrefixFrom::Upload)),
            (None, Arrival::Carried) => None,
        };
        if let (Some(paths), Some((p, from))) = (&self.paths, prefix) {
            filing.prefix_from = from;
            filing.prefix_tag = Some(hex::encode(paths.tag(p, report.started_at, now)));
        }
        (region, filing)
    }

    /// The report's attestation if it is valid under these keys (made for this report, in its
    /// hour, not expired); when not, counted as `absent` or why it was refused.
    fn valid_attestation<'a>(
        &self,
        report: &'a CallReport,
        now: DateTime<Utc>,
        stats: &AttestStats,
    ) -> Option<&'a RegionAttestation> {
        let Some(a) = &report.attestation else {
            stats.results.add("absent");
            return None;
        };
        match a.verify(report.id, report.started_at, now, |id| self.keys.get(id)) {
            Ok(()) => Some(a),
            Err(e) => {
                stats.results.add(e.label());
                None
            }
        }
    }

    /// The prefix in `token`, if the (valid) attestation `a` signed the token's digest and the
    /// token opens; counted by result.
    fn path_prefix(
        &self,
        a: &RegionAttestation,
        report: &CallReport,
        token: Option<&PathToken>,
        stats: &AttestStats,
    ) -> Option<NetPrefix> {
        let result = match (a.token_digest(), token, &self.paths) {
            (Ok(None), _, _) => Err("none_made"),
            (Err(_), _, _) => Err("malformed"),
            (Ok(Some(_)), None, _) => Err("absent"),
            (Ok(Some(_)), Some(_), None) => Err("not_opened"),
            (Ok(Some(d)), Some(t), Some(paths)) => {
                if pathtoken::digest(t) != d {
                    Err("other_token")
                } else {
                    pathtoken::open(&paths.secret, t, &report.id.0, a.hour).map_err(|e| e.label())
                }
            }
        };
        stats.tokens.add(match result {
            Ok(_) => "valid",
            Err(label) => label,
        });
        result.ok()
    }
}

/// Attestation counters for `/metrics`.
#[derive(Default)]
pub struct AttestStats {
    /// By result: `valid`, `absent`, or a refusal reason ([`AttestError::label`](callwatch_proto::attest::AttestError::label)).
    pub results: LabelCounts,
    /// Path tokens of valid attestations, by result: `valid`, `none_made` (the reflector made
    /// none), `absent` (signed but not sent), `other_token`, `does_not_open`, ….
    pub tokens: LabelCounts,
}

impl AttestStats {
    /// Attestations so far, by result.
    pub fn results(&self) -> BTreeMap<&'static str, u64> {
        self.results.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callwatch_proto::attest::{unix_hour, Claim, RegionAttestation};
    use ed25519_dalek::SigningKey;

    fn attested(report: &CallReport, key: &SigningKey, report_id: [u8; 16]) -> CallReport {
        attested_in(report, key, report_id, None)
    }

    /// Attested in RU, AS12389, with subdivision `subdivision` signed when given.
    fn attested_in(
        report: &CallReport,
        key: &SigningKey,
        report_id: [u8; 16],
        subdivision: Option<[u8; 3]>,
    ) -> CallReport {
        let claim = Claim {
            report_id,
            country: *b"RU",
            asn: 12389,
            hour: unix_hour(report.started_at),
            subdivision,
            token_digest: None,
        };
        let (id, sig) = claim.sign(key);
        let mut r = report.clone();
        r.attestation = RegionAttestation::from_signed(&claim, &id, &sig);
        r
    }

    /// One prefix has one tag per test day however late (within the window) its reports
    /// arrive; another prefix, or another day, another tag; past the window every report shares
    /// the late tag, and the old day's key is gone for good.
    #[test]
    fn a_prefix_has_one_tag_per_test_day_whenever_it_arrives() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let paths = PathTokens::new(CarrySecret::from_bytes([9; 32]));
        let a = NetPrefix::V4([198, 51, 100]);
        let b = NetPrefix::V4([203, 0, 113]);
        let monday = t("2026-03-02T10:00:00Z");
        let same_day = paths.tag(a, monday, t("2026-03-02T11:00:00Z"));
        assert_eq!(paths.tag(a, monday, t("2026-03-03T09:00:00Z")), same_day);
        assert_eq!(paths.tag(a, monday, t("2026-03-09T23:59:00Z")), same_day);
        assert_ne!(paths.tag(b, monday, t("2026-03-02T11:00:00Z")), same_day);
        let tuesday = t("2026-03-03T10:00:00Z");
        assert_ne!(paths.tag(a, tuesday, t("2026-03-03T11:00:00Z")), same_day);
        // Eight days after Monday its key is destroyed: late reports share one tag, whatever
        // their prefix.
        assert_eq!(paths.tag(a, monday, t("2026-03-10T00:00:00Z")), LATE_TAG);
        assert_eq!(paths.tag(b, monday, t("2026-03-10T00:00:00Z")), LATE_TAG);
        let keys = paths.day_keys.lock().unwrap();
        assert!(!keys.contains_key(&monday.timestamp().div_euclid(86_400)));
    }

    #[test]
    fn registered_keys_are_followed_as_the_registry_changes() {
        use crate::reflector::registry::{add, revoke, NewReflector};
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let keys = AttestKeys::load(&data).unwrap();
        let own = callwatch_reflector::identity::load_or_create_attestation(&data).unwrap();
        assert!(keys.get(&key_id(&own.verifying_key())).is_some());
        let standalone = SigningKey::from_bytes(&[4; 32]).verifying_key();
        let id = key_id(&standalone);
        assert!(keys.get(&id).is_none(), "unknown before it is registered");
        add(
            &data,
            NewReflector {
                name: "riga".into(),
                attest_key: hex::encode(standalone.as_bytes()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(keys.get(&id), Some(standalone), "registered: known at once");
        assert!(AttestKeys::load(&data).unwrap().get(&id).is_some());
        revoke(&data, "riga").unwrap();
        assert!(keys.get(&id).is_none(), "revoked: unknown at once");
        // A damaged registry refuses to start, and a running collector keeps the last good one.
        std::fs::write(crate::reflector::registry::path(&data), b"{").unwrap();
        assert!(AttestKeys::load(&data).is_err());
        assert!(keys.get(&key_id(&own.verifying_key())).is_some());
    }

    /// A filer knowing one reflector key, its counters, and an example report.
    fn filing_fixture() -> (SigningKey, Filer, AttestStats, CallReport) {
        let key = SigningKey::from_bytes(&[1; 32]);
        let filer = Filer {
            keys: AttestKeys::new([key.verifying_key()]),
            ..Filer::default()
        };
        (key, filer, AttestStats::default(), CallReport::example())
    }

    /// An upload from network `asn` of country `cc`, placed in Moscow, from 203.0.113.0/24.
    fn uploaded_from_moscow(cc: &str, asn: u32) -> Arrival {
        Arrival::Upload(
            Region::new(cc, asn).with_subdivision("MOW"),
            NetPrefix::V4([203, 0, 113]),
        )
    }

    /// An attestation without a subdivision (an older reflector's, or one whose sources know
    /// none): the attested report takes the upload's when the upload came from the attested
    /// country and network, none otherwise; an unattested one the upload's; a carried one none.
    #[test]
    fn the_subdivision_comes_from_the_upload_only_within_the_attested_network() {
        let (key, filer, stats, report) = filing_fixture();
        let now = report.started_at;
        let good = attested(&report, &key, report.id.0);
        let (same, filing) =
            filer.file(&good, None, &uploaded_from_moscow("RU", 12389), now, &stats);
        assert_eq!(same.subdivision, "RU-MOW");
        assert_eq!(filing.source, RegionSource::Attested);
        assert!(!filing.uploaded_elsewhere);
        let (other_net, filing) =
            filer.file(&good, None, &uploaded_from_moscow("RU", 8359), now, &stats);
        assert_eq!((other_net.asn, other_net.subdivision.as_str()), (12389, ""));
        assert!(filing.uploaded_elsewhere);
        let (unattested, filing) = filer.file(
            &report,
            None,
            &uploaded_from_moscow("RU", 8359),
            now,
            &stats,
        );
        assert_eq!(unattested.subdivision, "RU-MOW");
        assert_eq!(filing.source, RegionSource::Upload);
        let (carried, _) = filer.file(&good, None, &Arrival::Carried, now, &stats);
        assert_eq!((carried.asn, carried.subdivision.as_str()), (12389, ""));
    }

    /// A signed subdivision decides, whatever the upload's: from the same network, from
    /// another, and for a carried file; one the signature does not cover is refused with
    /// the attestation (the report is filed by its upload).
    #[test]
    fn a_signed_subdivision_is_the_reports_wherever_it_was_uploaded_from() {
        let (key, filer, stats, report) = filing_fixture();
        let now = report.started_at;
        let signed = attested_in(&report, &key, report.id.0, Some(*b"SPE"));
        for arrival in [
            uploaded_from_moscow("RU", 12389),
            uploaded_from_moscow("RU", 8359),
            Arrival::Carried,
        ] {
            let (region, filing) = filer.file(&signed, None, &arrival, now, &stats);
            assert_eq!(
                (
                    region.country.as_str(),
                    region.asn,
                    region.subdivision.as_str()
                ),
                ("RU", 12389, "RU-SPE"),
                "{arrival:?}"
            );
            assert_eq!(filing.source, RegionSource::Attested);
        }
        let mut moved = signed.clone();
        if let Some(a) = &mut moved.attestation {
            a.subdivision = Some("RU-MOW".into());
        }
        let (region, filing) =
            filer.file(&moved, None, &uploaded_from_moscow("RU", 8359), now, &stats);
        assert_eq!((region.asn, filing.source), (8359, RegionSource::Upload));
        assert_eq!(stats.results().get("bad_signature"), Some(&1));
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
            subdivision: String::new(),
        };
        let filer = Filer {
            keys,
            ..Filer::default()
        };
        let from_upload = Arrival::Upload(upload.clone(), NetPrefix::V4([203, 0, 113]));
        let file = |r: &CallReport, carried: bool| {
            let arrival = if carried {
                &Arrival::Carried
            } else {
                &from_upload
            };
            filer.file(r, None, arrival, now, &stats)
        };
        let good = attested(&report, &key, report.id.0);
        let (filed, filing) = file(&good, false);
        assert_eq!((filed.country.as_str(), filed.asn), ("RU", 12389));
        assert_eq!(
            filing,
            Filing {
                source: RegionSource::Attested,
                uploaded_elsewhere: true,
                hosting: false,
                ..Filing::default()
            },
            "attested in RU, uploaded from a Dutch hosting network: marked as uploaded elsewhere"
        );
        // Refused or absent attestations: the upload's region, marked as a hosting network
        // (AS60781 is LeaseWeb's), with the upload as the source.
        let fell_back = (
            upload.clone(),
            Filing {
                source: RegionSource::Upload,
                uploaded_elsewhere: false,
                hosting: true,
                ..Filing::default()
            },
        );
        let other = attested(&report, &key, [0xee; 16]);
        assert_eq!(file(&other, false), fell_back);
        let stranger = attested(&report, &SigningKey::from_bytes(&[2; 32]), report.id.0);
        assert_eq!(file(&stranger, false), fell_back);
        assert_eq!(file(&report, false), fell_back);
        // The same upload from the same network, carried out in a file: the source says so.
        let carried = file(&good, true);
        assert_eq!(carried.1.source, RegionSource::Attested);
        assert!(
            !carried.1.uploaded_elsewhere,
            "no upload region to differ from"
        );
        let carried = file(&report, true);
        assert_eq!(
            carried,
            (
                Region::unknown(),
                Filing {
                    source: RegionSource::Unknown,
                    ..Filing::default()
                }
            )
        );
        let results = stats.results();
        assert_eq!(results.get("valid"), Some(&2));
        assert_eq!(results.get("other_report"), Some(&1));
        assert_eq!(results.get("unknown_key"), Some(&1));
        assert_eq!(results.get("absent"), Some(&2));
    }

    /// A valid attestation of an unknown region (ZZ, AS0: the reflector's sources did not know
    /// the address, or a relay stood in for it) decides nothing: the upload address files it.
    #[test]
    fn an_attestation_of_an_unknown_region_leaves_the_upload_address_to_decide() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let keys = AttestKeys::new([key.verifying_key()]);
        let stats = AttestStats::default();
        let report = CallReport::example();
        let claim = Claim {
            report_id: report.id.0,
            country: *b"ZZ",
            asn: 0,
            hour: unix_hour(report.started_at),
            subdivision: None,
            token_digest: None,
        };
        let (id, sig) = claim.sign(&key);
        let mut r = report.clone();
        r.attestation = RegionAttestation::from_signed(&claim, &id, &sig);
        let upload = Region {
            country: "RU".into(),
            asn: 8359,
            subdivision: String::new(),
        };
        let filer = Filer {
            keys,
            ..Filer::default()
        };
        let arrival = Arrival::Upload(upload.clone(), NetPrefix::V4([198, 51, 100]));
        let (filed, filing) = filer.file(&r, None, &arrival, report.started_at, &stats);
        assert_eq!(filed, upload);
        assert_eq!(filing.source, RegionSource::Upload);
        assert_eq!(stats.results().get("valid_unknown_region"), Some(&1));
        assert!(!filing.uploaded_elsewhere);
    }
}
