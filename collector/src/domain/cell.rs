//! Fine cells and what they hold: the [`CellKey`] (UTC hour, country, subdivision, ASN,
//! platform, arm, stream kind) with its ordered byte encoding, the per-agent cap's key, the mergeable [`CellState`]
//! (counts, agents, verdicts, filing marks, one sketch per figure) and the published [`Cell`].

use super::codes::{
    arm_code, arm_of_code, kind_code, kind_of_code, platform_code, platform_of_code, region_text,
    subdivision_is_valid, NO_SUBDIVISION,
};
use super::keyset::KeySet;
use super::observation::{Finding, Observation, FIGURE_COUNT};
use super::query::{Axis, GroupKey};
use super::report::Filing;
use super::sketch::Sketch;
use callwatch_proto::precision::{self, Precision, Rounded};
use callwatch_proto::report::{StreamKind, VerdictRule};
use callwatch_proto::{Platform, Role, Verdict};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;

/// The finest cell: one UTC hour of one (country, subdivision, ASN, platform, arm, stream kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CellKey {
    /// Hours since the Unix epoch (UTC).
    pub hour: i64,
    pub country: [u8; 2],
    /// The first-level subdivision of `country` (see [`super::codes::subdivision_code`]);
    /// [`NO_SUBDIVISION`] when unknown.
    pub subdivision: [u8; 3],
    pub asn: u32,
    pub platform: Platform,
    pub arm: Role,
    pub kind: StreamKind,
}

/// Length of an encoded [`CellKey`]. (Stores made before the stream kind was part of the key
/// used 16 bytes, and before the subdivision 17; the sled store rebuilds such cells at open.)
pub const CELL_KEY_LEN: usize = 20;

/// Big-endian with the sign bit flipped, so byte order is numeric order.
pub fn ordered_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

fn from_ordered_i64(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

impl CellKey {
    /// Hour first, so a time range is a key range.
    pub fn to_bytes(&self) -> [u8; CELL_KEY_LEN] {
        let mut k = [0u8; CELL_KEY_LEN];
        k[..8].copy_from_slice(&ordered_i64(self.hour));
        k[8..10].copy_from_slice(&self.country);
        k[10..13].copy_from_slice(&self.subdivision);
        k[13..17].copy_from_slice(&self.asn.to_be_bytes());
        k[17] = platform_code(self.platform);
        k[18] = arm_code(self.arm);
        k[19] = kind_code(self.kind);
        k
    }

    pub fn from_bytes(b: &[u8]) -> Option<CellKey> {
        if b.len() != CELL_KEY_LEN {
            return None;
        }
        let hour = from_ordered_i64(b[..8].try_into().ok()?);
        let country = [b[8], b[9]];
        if !country.iter().all(u8::is_ascii_uppercase) {
            return None;
        }
        let subdivision: [u8; 3] = b[10..13].try_into().ok()?;
        if !subdivision_is_valid(&subdivision) {
            return None;
        }
        let asn = u32::from_be_bytes(b[13..17].try_into().ok()?);
        let platform = platform_of_code(b[17])?;
        let arm = arm_of_code(b[18])?;
        let kind = kind_of_code(b[19])?;
        Some(CellKey {
            hour,
            country,
            subdivision,
            asn,
            platform,
            arm,
            kind,
        })
    }

    /// Days since the Unix epoch (UTC).
    pub fn day(&self) -> i64 {
        self.hour.div_euclid(24)
    }

    /// The first hour of this cell's UTC day; saturating, so the hours a stored key can hold
    /// at the ends of `i64` (none a report makes) never overflow.
    fn first_hour_of_day(&self) -> i64 {
        self.day().saturating_mul(24)
    }

    /// The day roll-up cell this fine cell adds to: the same key with the hour set to the
    /// first hour of its UTC day.
    pub fn day_cell(&self) -> CellKey {
        CellKey {
            hour: self.first_hour_of_day(),
            ..*self
        }
    }

    /// The unit of publication this cell belongs to ([`super::Grouper`]): its UTC day of its
    /// (country, ASN, platform, arm, kind), all subdivisions together.
    pub fn block(&self) -> CellKey {
        CellKey {
            hour: self.first_hour_of_day(),
            subdivision: NO_SUBDIVISION,
            ..*self
        }
    }

    /// Its region as the API shows it: `RU-MOW`, or `RU` when the subdivision is unknown.
    pub fn region_text(&self) -> String {
        region_text(self.country, self.subdivision)
    }

    /// The (country, ASN, platform, arm, kind) bytes the caps count per (with the day): the
    /// subdivision is not among them, so the caps are what they were before subdivisions.
    fn cap_fields(&self) -> [u8; CAP_FIELDS_LEN] {
        let mut k = [0u8; CAP_FIELDS_LEN];
        k[..2].copy_from_slice(&self.country);
        k[2..6].copy_from_slice(&self.asn.to_be_bytes());
        k[6] = platform_code(self.platform);
        k[7] = arm_code(self.arm);
        k[8] = kind_code(self.kind);
        k
    }

    pub fn country_str(&self) -> &str {
        // Constructed only from ASCII letters (see country_code/from_bytes).
        std::str::from_utf8(&self.country).unwrap_or("ZZ")
    }
}

/// Bytes of the (country, ASN, platform, arm, kind) part of a cap key.
const CAP_FIELDS_LEN: usize = 9;

/// Length of a [`CapKey`].
pub const CAP_KEY_LEN: usize = 8 + CAP_FIELDS_LEN + 32;

/// The per-agent cap's counter key: (UTC day, country, ASN, platform, arm, kind, agent key).
/// Not the subdivision: the cap counts per network and day, wherever in the country.
pub struct CapKey;

impl CapKey {
    pub fn bytes(cell: &CellKey, agent: &[u8; 32]) -> [u8; CAP_KEY_LEN] {
        let mut k = [0u8; CAP_KEY_LEN];
        k[..8].copy_from_slice(&ordered_i64(cell.day()));
        k[8..8 + CAP_FIELDS_LEN].copy_from_slice(&cell.cap_fields());
        k[8 + CAP_FIELDS_LEN..].copy_from_slice(agent);
        k
    }
}

/// Length of a [`PrefixCapKey`].
pub const PREFIX_CAP_KEY_LEN: usize = 8 + CAP_FIELDS_LEN + 8;

/// The prefix cap's counter key: (UTC day, country, ASN, platform, arm, kind, prefix tag).
pub struct PrefixCapKey;

impl PrefixCapKey {
    pub fn bytes(cell: &CellKey, prefix: &[u8; 8]) -> [u8; PREFIX_CAP_KEY_LEN] {
        let mut k = [0u8; PREFIX_CAP_KEY_LEN];
        k[..8].copy_from_slice(&ordered_i64(cell.day()));
        k[8..8 + CAP_FIELDS_LEN].copy_from_slice(&cell.cap_fields());
        k[8 + CAP_FIELDS_LEN..].copy_from_slice(prefix);
        k
    }
}

/// Counts per verdict, and two findings among them.
///
/// `blocked` counts the differentiated tests whose rule says the platform could not hold a call
/// at all ([`BLOCKED_RULES`]); `no_reference` the inconclusive tests whose control arm gave
/// nothing to compare with ([`NO_REFERENCE_RULES`]). Both are subsets of the verdict counts, not
/// added to them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictCounts {
    pub none: u64,
    pub inconclusive: u64,
    pub differentiated: u64,
    /// Differentiated tests that were blocked calls (a subset of `differentiated`).
    #[serde(default)]
    pub blocked: u64,
    /// Inconclusive tests without a working control arm (a subset of `inconclusive`).
    #[serde(default)]
    pub no_reference: u64,
}

impl VerdictCounts {
    pub(super) fn add(&mut self, v: Verdict, rule: Option<VerdictRule>) {
        match v {
            Verdict::None => self.none = self.none.saturating_add(1),
            Verdict::Inconclusive => self.inconclusive = self.inconclusive.saturating_add(1),
            Verdict::Differentiated => self.differentiated = self.differentiated.saturating_add(1),
        }
        match Finding::of(Some(v), rule) {
            Some(Finding::Blocked) => self.blocked = self.blocked.saturating_add(1),
            Some(Finding::NoReference) => self.no_reference = self.no_reference.saturating_add(1),
            None => {}
        }
    }

    fn merge(&mut self, o: &VerdictCounts) {
        // Saturating: counts read back from a damaged store must not overflow.
        self.none = self.none.saturating_add(o.none);
        self.inconclusive = self.inconclusive.saturating_add(o.inconclusive);
        self.differentiated = self.differentiated.saturating_add(o.differentiated);
        self.blocked = self.blocked.saturating_add(o.blocked);
        self.no_reference = self.no_reference.saturating_add(o.no_reference);
    }

    /// Tests with a verdict.
    pub fn judged(&self) -> u64 {
        self.none
            .saturating_add(self.inconclusive)
            .saturating_add(self.differentiated)
    }

    /// Share of judged tests found differentiated; `None` when none was judged.
    pub fn differentiated_share(&self) -> Option<f64> {
        let judged = self.judged();
        (judged > 0).then(|| self.differentiated as f64 / judged as f64)
    }

    /// Share of judged tests that were blocked calls; `None` when none was judged.
    pub fn blocked_share(&self) -> Option<f64> {
        let judged = self.judged();
        // `blocked` is a subset of the judged tests; a damaged store must still give a share.
        (judged > 0).then(|| self.blocked.min(judged) as f64 / judged as f64)
    }
}

/// What a cell knows: mergeable, so any set of fine cells combines into a coarser one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CellState {
    /// Reports (arms) counted.
    pub count: u64,
    /// Distinct agents, by the first 8 bytes of their key.
    pub agents: KeySet,
    pub verdicts: VerdictCounts,
    /// One sketch per [`FIGURES`] entry.
    pub figures: [Sketch; FIGURE_COUNT],
    /// Of `count`, how many were filed in a way researchers may want to exclude.
    pub filing: FilingCounts,
    /// Distinct network prefixes (8-byte prefix tags, see [`super::observation::prefix_of`]).
    pub prefixes: KeySet,
    /// Tests found differentiated, per (agent, network prefix) — 8 bytes each, as in `agents`
    /// and `prefixes`: the evidence of events ([`super::events`]), which discount the most
    /// flagging agents and prefixes of each day.
    pub flagged: BTreeMap<([u8; 8], [u8; 8]), u64>,
}

/// Counts of a cell's reports (arms) by how they were filed ([`Filing`]). Subsets of the cell's
/// `count`, not added to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilingCounts {
    /// Attested in this cell's region, uploaded from another: volunteers behind a VPN or proxy,
    /// or who moved network before uploading.
    pub uploaded_elsewhere: u64,
    /// Filed under a hosting, cloud or VPN provider's network: not a subscriber's line.
    pub hosting: u64,
}

impl FilingCounts {
    pub(super) fn add(&mut self, f: &Filing) {
        self.uploaded_elsewhere = self
            .uploaded_elsewhere
            .saturating_add(u64::from(f.uploaded_elsewhere));
        self.hosting = self.hosting.saturating_add(u64::from(f.hosting));
    }

    pub fn merge(&mut self, o: &FilingCounts) {
        self.uploaded_elsewhere = self.uploaded_elsewhere.saturating_add(o.uploaded_elsewhere);
        self.hosting = self.hosting.saturating_add(o.hosting);
    }
}

impl CellState {
    /// Whether at least `k` distinct agent keys and `k` distinct network prefixes stand behind
    /// it (`k` at least 1).
    pub fn meets(&self, k: usize) -> bool {
        let k = k.max(1);
        self.agents.len() >= k && self.prefixes.len() >= k
    }

    pub fn add(&mut self, o: &Observation) {
        self.count = self.count.saturating_add(1);
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&o.agent[..8]);
        self.agents.insert(prefix);
        self.prefixes.insert(o.prefix());
        if let Some(v) = o.verdict {
            self.verdicts.add(v, o.rule);
            if v == Verdict::Differentiated {
                let n = self.flagged.entry((prefix, o.prefix())).or_default();
                *n = n.saturating_add(1);
            }
        }
        self.filing.add(&o.filing);
        for (sketch, value) in self.figures.iter_mut().zip(o.figures) {
            if let Some(v) = value {
                sketch.add(v);
            }
        }
    }

    pub fn merge(&mut self, other: &CellState) {
        for (pair, n) in &other.flagged {
            let mine = self.flagged.entry(*pair).or_default();
            *mine = mine.saturating_add(*n);
        }
        self.merge_unflagged(other);
    }

    /// Decodes a postcard-encoded state without its `flagged` map (left empty, and not read,
    /// so not checked): for queries, whose cells never show the flags, and which otherwise
    /// built each cell's map only to drop it.
    pub fn decode_unflagged(bytes: &[u8]) -> Result<CellState, postcard::Error> {
        // The fields in their order (postcard writes them one after another, nothing between),
        // the key sets and sketches read by hand ([`KeySet::take_from_postcard`],
        // [`Sketch::take_from_postcard`]): the same bytes accepted as `Deserialize`, faster.
        let (count, rest): (u64, _) = postcard::take_from_bytes(bytes)?;
        let (agents, rest) = KeySet::take_from_postcard(rest)?;
        let (verdicts, mut rest): (VerdictCounts, _) = postcard::take_from_bytes(rest)?;
        let mut figures: [Sketch; FIGURE_COUNT] = Default::default();
        for f in &mut figures {
            (*f, rest) = Sketch::take_from_postcard(rest)?;
        }
        let (filing, rest): (FilingCounts, _) = postcard::take_from_bytes(rest)?;
        let (prefixes, flags) = KeySet::take_from_postcard(rest)?;
        // The flags follow (an empty map is one byte): a state cut where they start is as
        // damaged here as for a whole decode.
        if flags.is_empty() {
            return Err(postcard::Error::DeserializeUnexpectedEnd);
        }
        Ok(CellState {
            count,
            agents,
            verdicts,
            figures,
            filing,
            prefixes,
            flagged: BTreeMap::new(),
        })
    }

    /// A copy of everything but `flagged` (left empty).
    pub fn clone_unflagged(&self) -> CellState {
        CellState {
            count: self.count,
            agents: self.agents.clone(),
            verdicts: self.verdicts,
            figures: self.figures.clone(),
            filing: self.filing,
            prefixes: self.prefixes.clone(),
            flagged: BTreeMap::new(),
        }
    }

    /// [`CellState::merge`] of everything but `flagged` (left as it is): what a query's cells
    /// need, which never show the per-(agent, prefix) flags.
    pub fn merge_unflagged(&mut self, other: &CellState) {
        self.count = self.count.saturating_add(other.count);
        self.agents.union_with(&other.agents);
        self.prefixes.union_with(&other.prefixes);
        self.verdicts.merge(&other.verdicts);
        self.filing.merge(&other.filing);
        for (a, b) in self.figures.iter_mut().zip(other.figures.iter()) {
            a.merge(b);
        }
    }
}

/// p10, median and p90 of one figure in a cell, at full precision: a [`Cell`] rounds them to
/// their rule ([`super::FIGURE_PRECISION`]) only as it is serialized.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figure {
    pub p10: f64,
    pub median: f64,
    pub p90: f64,
}

impl Figure {
    pub(super) fn of_sketch(s: &Sketch) -> Option<Figure> {
        let [p10, median, p90] = s.quantiles([0.1, 0.5, 0.9])?;
        Some(Figure { p10, median, p90 })
    }

    /// Exact order statistics at rank ⌊q·(n−1)⌋, the rank the sketch estimates.
    #[cfg(any(test, feature = "test-util"))]
    pub(super) fn of_values(mut v: Vec<f64>) -> Option<Figure> {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((q * (v.len() - 1) as f64).floor() as usize).min(v.len() - 1)];
        Some(Figure {
            p10: at(0.1),
            median: at(0.5),
            p90: at(0.9),
        })
    }
}

/// `f` as the API publishes it: p10, median and p90 each rounded to `p`, or `null`.
fn figure_rounded<S: Serializer>(
    f: &Option<Figure>,
    p: Precision,
    s: S,
) -> Result<S::Ok, S::Error> {
    let Some(f) = f else {
        return s.serialize_none();
    };
    let mut st = s.serialize_struct("Figure", 3)?;
    st.serialize_field("p10", &Rounded(f.p10, p))?;
    st.serialize_field("median", &Rounded(f.median, p))?;
    st.serialize_field("p90", &Rounded(f.p90, p))?;
    st.end()
}

fn millis<S: Serializer>(f: &Option<Figure>, s: S) -> Result<S::Ok, S::Error> {
    figure_rounded(f, Precision::Millis, s)
}

fn fraction<S: Serializer>(f: &Option<Figure>, s: S) -> Result<S::Ok, S::Error> {
    figure_rounded(f, Precision::Fraction, s)
}

fn mos<S: Serializer>(f: &Option<Figure>, s: S) -> Result<S::Ok, S::Error> {
    figure_rounded(f, Precision::Mos, s)
}

fn count<S: Serializer>(f: &Option<Figure>, s: S) -> Result<S::Ok, S::Error> {
    figure_rounded(f, Precision::Count, s)
}

/// One published cell of a query. It holds its figures and shares at full precision and
/// serializes each rounded to its rule in [`callwatch_proto::precision`]; the CSV
/// ([`crate::export::cells_csv`]) rounds them the same way.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cell {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hour: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// The region: an ISO 3166-2 subdivision code (`RU-MOW`), or the country alone (`RU`) for
    /// the country's tests whose subdivision is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Reports (arms) in the cell after the per-agent cap.
    pub count: u64,
    /// Distinct agents behind them.
    pub agents: u64,
    #[serde(serialize_with = "millis")]
    pub rtt_ms: Option<Figure>,
    #[serde(serialize_with = "millis")]
    pub jitter_up_ms: Option<Figure>,
    #[serde(serialize_with = "millis")]
    pub jitter_down_ms: Option<Figure>,
    /// Round-trip loss.
    #[serde(serialize_with = "fraction")]
    pub loss: Option<Figure>,
    #[serde(serialize_with = "fraction")]
    pub loss_up: Option<Figure>,
    #[serde(serialize_with = "fraction")]
    pub loss_down: Option<Figure>,
    #[serde(serialize_with = "mos")]
    pub mos: Option<Figure>,
    #[serde(serialize_with = "count")]
    pub stalls: Option<Figure>,
    pub verdicts: VerdictCounts,
    /// Share of the cell's judged tests that found the platform differentiated; `null` when none
    /// had a verdict (generic tests have no control arm).
    #[serde(serialize_with = "precision::fraction")]
    pub differentiated_share: Option<f64>,
    /// Share of the cell's judged tests that were blocked calls (the platform could not hold a
    /// call at all; see [`BLOCKED_RULES`]); `null` when none had a verdict.
    #[serde(serialize_with = "precision::fraction")]
    pub blocked_share: Option<f64>,
    /// Of `count`, those uploaded from another region than the attested one, and those filed
    /// under a hosting or VPN network.
    pub filing: FilingCounts,
}

impl Cell {
    /// A cell with these axis values and figures, and the verdict counts and shares of
    /// `verdicts`.
    pub fn new(
        key: &GroupKey,
        count: u64,
        agents: u64,
        figures: [Option<Figure>; FIGURE_COUNT],
        verdicts: VerdictCounts,
        filing: FilingCounts,
    ) -> Cell {
        let [rtt_ms, jitter_up_ms, jitter_down_ms, loss, loss_up, loss_down, mos, stalls] = figures;
        Cell {
            day: key.day.map(day_string),
            hour: key.hour.map(hour_string),
            country: key
                .country
                .map(|c| String::from_utf8_lossy(&c).into_owned()),
            region: key.region.map(|(c, s)| region_text(c, s)),
            asn: key.asn,
            platform: key.platform.map(|p| p.to_string()),
            arm: key.arm.map(|a| a.to_string()),
            kind: key.kind.map(|k| k.to_string()),
            count,
            agents,
            rtt_ms,
            jitter_up_ms,
            jitter_down_ms,
            loss,
            loss_up,
            loss_down,
            mos,
            stalls,
            verdicts,
            differentiated_share: verdicts.differentiated_share(),
            blocked_share: verdicts.blocked_share(),
            filing,
        }
    }

    /// The cell's value on `axis`, as the API and the CSV show it.
    pub fn axis_text(&self, axis: Axis) -> String {
        match axis {
            Axis::Day => self.day.clone().unwrap_or_default(),
            Axis::Hour => self.hour.clone().unwrap_or_default(),
            Axis::Country => self.country.clone().unwrap_or_default(),
            Axis::Region => self.region.clone().unwrap_or_default(),
            Axis::Asn => self.asn.map(|x| x.to_string()).unwrap_or_default(),
            Axis::Platform => self.platform.clone().unwrap_or_default(),
            Axis::Arm => self.arm.clone().unwrap_or_default(),
            Axis::Kind => self.kind.clone().unwrap_or_default(),
        }
    }

    /// The figures, in [`FIGURES`] order.
    pub fn figures(&self) -> [Option<Figure>; FIGURE_COUNT] {
        [
            self.rtt_ms,
            self.jitter_up_ms,
            self.jitter_down_ms,
            self.loss,
            self.loss_up,
            self.loss_down,
            self.mos,
            self.stalls,
        ]
    }
}

/// A day (days since the Unix epoch) as `YYYY-MM-DD`, as cells show it.
pub fn day_string(day: i64) -> String {
    DateTime::<Utc>::from_timestamp(day.saturating_mul(86_400), 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// An hour (hours since the Unix epoch) as RFC 3339 `YYYY-MM-DDTHH:00:00Z`, as cells show it.
pub fn hour_string(hour: i64) -> String {
    DateTime::<Utc>::from_timestamp(hour.saturating_mul(3600), 0)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}
