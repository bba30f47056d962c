//! Aggregation of reports into cells by time, region, platform and arm, in the manner of OONI's
//! aggregation API (`axis_x`, `axis_y`).
//!
//! # Kept incrementally
//!
//! Every stored report adds one [`Observation`] per arm (platform, control) to exactly one *fine
//! cell*, keyed by [`CellKey`] = (UTC hour, country, ASN, platform, arm, stream kind). A fine
//! cell's [`CellState`] holds the report count, the distinct agents (8-byte key prefixes), the
//! verdict counts (with the blocked and no-reference tests among them, see [`VerdictCounts`]) and
//! one mergeable quantile [`Sketch`] per figure ([`FIGURES`]: RTT, jitter up/down, round-trip
//! loss, loss up/down, MOS, stall count). The store updates the fine cell in the same
//! transaction that stores the report, so the aggregate never disagrees with the raw data. A
//! query merges the fine cells its filter covers into the cells its axes ask for ([`query`]);
//! merging is exact for counts, agent sets and verdicts, and the quantiles are within
//! [`RELATIVE_ACCURACY`] of the exact value of the same rank. The sled store also keeps a day
//! roll-up of the fine cells and reads whole days from it when a query has no hour axis
//! ([`Plan`]); the answer is the same, from 24× fewer cells.
//!
//! # Voice and video never mix
//!
//! The stream kind (voice, or video-like) is part of every cell key, so no cell, fine or
//! merged, ever holds both: a video test's MOS or loss cannot move a voice cell. A query counts
//! voice tests only unless `kind` is one of its axes (one cell per kind) or its filter names a
//! kind ([`Filter::kind`]), as it counts platform arms only unless told otherwise. Reports made
//! before the stream kind existed are voice.
//!
//! # Robustness
//!
//! - **Per-agent cap.** One agent's reports count at most `max_per_agent_per_day` times per fine
//!   cell's day — (UTC day, country, ASN, platform, arm, kind) — in order of arrival; the rest
//!   are stored (they are evidence) but not aggregated. The store decides this at ingest
//!   ([`CapKey`]); changing the cap rebuilds the cells from the raw reports.
//! - **k threshold.** A queried cell is published only when at least `min_agents` distinct agents
//!   stand behind it.
//!
//! [`exact`] is the brute-force reference: the same rules over raw observations with exact order
//! statistics. Tests compare the two.

use crate::sketch::{Sketch, RELATIVE_ACCURACY};
use crate::store::{Filing, StoredReport};
use callwatch_proto::report::{StreamKind, StreamOutcome, VerdictRule};
use callwatch_proto::{CallReport, Platform, Role, Verdict};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

const HOUR_MS: i64 = 3_600_000;

/// A dimension cells can be grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Axis {
    Day,
    Hour,
    Country,
    Asn,
    Platform,
    Arm,
    /// The stream kind: voice or video-like.
    Kind,
}

impl Axis {
    pub const ALL: [Axis; 7] = [
        Axis::Day,
        Axis::Hour,
        Axis::Country,
        Axis::Asn,
        Axis::Platform,
        Axis::Arm,
        Axis::Kind,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Axis::Day => "day",
            Axis::Hour => "hour",
            Axis::Country => "country",
            Axis::Asn => "asn",
            Axis::Platform => "platform",
            Axis::Arm => "arm",
            Axis::Kind => "kind",
        }
    }
}

impl fmt::Display for Axis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Axis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Axis::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown axis {s:?}; expected one of day, hour, country, asn, platform, arm, \
                     kind"
                )
            })
    }
}

/// The figures aggregated per cell, in the order of [`CellState::figures`] and of the CSV.
/// `loss` is the round-trip loss (always known for a stream that sent probes); `loss_up` and
/// `loss_down` only where the reflector's count told the direction apart.
pub const FIGURES: [&str; FIGURE_COUNT] = [
    "rtt_ms",
    "jitter_up_ms",
    "jitter_down_ms",
    "loss",
    "loss_up",
    "loss_down",
    "mos",
    "stalls",
];

/// How many figures a cell aggregates.
pub const FIGURE_COUNT: usize = 8;

/// Verdict rules that mean the platform could not hold a call at all: its handshake went
/// unanswered, it went dark mid-call, or its own servers did not answer — each while the control
/// arm (or the neutral reference) worked. Counted as `blocked`.
pub const BLOCKED_RULES: [VerdictRule; 3] = [
    VerdictRule::Blocked,
    VerdictRule::Cut,
    VerdictRule::PlatformServersUnreachable,
];

/// Verdict rules of an inconclusive test whose control arm gave nothing to compare with. Counted
/// as `no_reference`, never as platform blocking.
pub const NO_REFERENCE_RULES: [VerdictRule; 3] = [
    VerdictRule::NoReference,
    VerdictRule::NothingAnswered,
    VerdictRule::ReflectorBusy,
];

/// What a test's verdict and rule say beyond the verdict itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    /// A differentiated test whose rule is one of [`BLOCKED_RULES`].
    Blocked,
    /// An inconclusive test whose rule is one of [`NO_REFERENCE_RULES`].
    NoReference,
}

impl Finding {
    /// The finding of a test with this verdict and rule, if any. A rule that disagrees with the
    /// verdict (a `blocked` rule on a test not judged differentiated) is no finding.
    pub fn of(verdict: Option<Verdict>, rule: Option<VerdictRule>) -> Option<Finding> {
        let rule = rule?;
        match verdict? {
            Verdict::Differentiated if BLOCKED_RULES.contains(&rule) => Some(Finding::Blocked),
            Verdict::Inconclusive if NO_REFERENCE_RULES.contains(&rule) => {
                Some(Finding::NoReference)
            }
            _ => None,
        }
    }
}

/// The figures of one arm of one report that aggregation uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// When the test started, Unix ms.
    pub started_at_ms: i64,
    pub country: String,
    pub asn: u32,
    pub platform: Platform,
    pub arm: Role,
    /// Voice or video-like: cells never mix the two.
    pub kind: StreamKind,
    /// Agent public key.
    pub agent: [u8; 32],
    /// In [`FIGURES`] order; `None` where the report has no such figure.
    pub figures: [Option<f64>; FIGURE_COUNT],
    /// The test's verdict, when it had a control arm.
    pub verdict: Option<Verdict>,
    /// The rule that decided the verdict (absent in older reports).
    pub rule: Option<VerdictRule>,
    /// How the report was filed (see [`crate::store::Filing`]).
    pub filing: Filing,
}

impl Observation {
    /// One observation per platform and control arm of a verified report (relay streams are not
    /// aggregated).
    ///
    /// A stream that measured nothing — blocked (its handshake went unanswered), refused by the
    /// reflector, or that sent no probe — adds no figure: its arm and the test's verdict count,
    /// but a loss of 0 of 0 probes, say, is no measurement. A figure the report leaves `null`
    /// (`loss_up` and `loss_down` when the direction split is unknown) is simply not added.
    pub fn from_report(stored: &StoredReport, report: &CallReport) -> Vec<Observation> {
        let mut agent = [0u8; 32];
        if stored.signed.key.len() == 32 {
            agent.copy_from_slice(&stored.signed.key);
        }
        let rule = report.verdict_detail.as_ref().and_then(|d| d.rule);
        report
            .streams
            .iter()
            .filter(|s| matches!(s.role, Role::Platform | Role::Control))
            .map(|s| {
                // A test taken under reflector load measured the reflector, not the network:
                // it counts (as the inconclusive it is), its figures do not.
                let measured = s.packets_sent > 0
                    && !report.reflector_loaded
                    && !matches!(s.outcome, StreamOutcome::Blocked | StreamOutcome::Refused);
                let figures = [
                    s.rtt_ms.map(|r| r.median),
                    s.jitter_ms.map(|j| j.up),
                    s.jitter_ms.map(|j| j.down),
                    s.loss,
                    s.loss_up,
                    s.loss_down,
                    s.mos,
                    s.stalls.map(|st| f64::from(st.count)),
                ];
                Observation {
                    started_at_ms: report.started_at.timestamp_millis(),
                    country: stored.region.country.clone(),
                    asn: stored.region.asn,
                    platform: report.platform,
                    arm: s.role,
                    kind: report.stream_kind,
                    agent,
                    figures: if measured {
                        figures
                    } else {
                        [None; FIGURE_COUNT]
                    },
                    verdict: report.verdict,
                    rule,
                    filing: stored.filing.clone(),
                }
            })
            .collect()
    }

    /// The fine cell this observation belongs to.
    pub fn cell_key(&self) -> CellKey {
        CellKey {
            hour: self.started_at_ms.div_euclid(HOUR_MS),
            country: country_code(&self.country),
            asn: self.asn,
            platform: self.platform,
            arm: self.arm,
            kind: self.kind,
        }
    }
}

fn country_code(c: &str) -> [u8; 2] {
    match c.as_bytes() {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            [a.to_ascii_uppercase(), b.to_ascii_uppercase()]
        }
        _ => *b"ZZ",
    }
}

fn platform_byte(p: Platform) -> u8 {
    match p {
        Platform::Generic => 0,
        Platform::Whatsapp => 1,
        Platform::Telegram => 2,
        Platform::Signal => 3,
        Platform::Max => 4,
    }
}

fn arm_byte(r: Role) -> u8 {
    match r {
        Role::Platform => 0,
        Role::Control => 1,
        Role::Relay => 2,
        Role::RelayReference => 3,
    }
}

/// The stream kind's byte in a cell key (and its code in ClickHouse).
pub fn kind_byte(k: StreamKind) -> u8 {
    match k {
        StreamKind::Voice => 0,
        StreamKind::Video => 1,
    }
}

/// The stream kind of a [`kind_byte`].
pub fn kind_of_byte(b: u8) -> Option<StreamKind> {
    [StreamKind::Voice, StreamKind::Video]
        .into_iter()
        .find(|k| kind_byte(*k) == b)
}

/// Parses a stream kind as the API and the reports spell it (`voice`, `video`).
pub fn parse_kind(s: &str) -> Result<StreamKind, String> {
    [StreamKind::Voice, StreamKind::Video]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| format!("{s:?} is not voice or video"))
}

/// The finest cell: one UTC hour of one (country, ASN, platform, arm, stream kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CellKey {
    /// Hours since the Unix epoch (UTC).
    pub hour: i64,
    pub country: [u8; 2],
    pub asn: u32,
    pub platform: Platform,
    pub arm: Role,
    pub kind: StreamKind,
}

/// Length of an encoded [`CellKey`]. (Stores made before the stream kind was part of the key
/// used 16 bytes, without the last; the sled store rebuilds such cells at open.)
pub const CELL_KEY_LEN: usize = 17;

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
        k[10..14].copy_from_slice(&self.asn.to_be_bytes());
        k[14] = platform_byte(self.platform);
        k[15] = arm_byte(self.arm);
        k[16] = kind_byte(self.kind);
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
        let asn = u32::from_be_bytes(b[10..14].try_into().ok()?);
        let platform = *Platform::ALL.iter().find(|p| platform_byte(**p) == b[14])?;
        let arm = [
            Role::Platform,
            Role::Control,
            Role::Relay,
            Role::RelayReference,
        ]
        .into_iter()
        .find(|r| arm_byte(*r) == b[15])?;
        let kind = kind_of_byte(b[16])?;
        Some(CellKey {
            hour,
            country,
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

    /// The day roll-up cell this fine cell adds to: the same key with the hour set to the
    /// first hour of its UTC day.
    pub fn day_cell(&self) -> CellKey {
        CellKey {
            hour: self.day() * 24,
            ..*self
        }
    }

    pub fn country_str(&self) -> &str {
        // Constructed only from ASCII letters (see country_code/from_bytes).
        std::str::from_utf8(&self.country).unwrap_or("ZZ")
    }
}

/// Length of a [`CapKey`].
pub const CAP_KEY_LEN: usize = 8 + (CELL_KEY_LEN - 8) + 32;

/// The per-agent cap's counter key: (UTC day, country, ASN, platform, arm, kind, agent key).
pub struct CapKey;

impl CapKey {
    pub fn bytes(cell: &CellKey, agent: &[u8; 32]) -> [u8; CAP_KEY_LEN] {
        let mut k = [0u8; CAP_KEY_LEN];
        let fine = cell.to_bytes();
        k[..8].copy_from_slice(&ordered_i64(cell.day()));
        k[8..CELL_KEY_LEN].copy_from_slice(&fine[8..]);
        k[CELL_KEY_LEN..].copy_from_slice(agent);
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
    fn add(&mut self, v: Verdict, rule: Option<VerdictRule>) {
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
    pub agents: BTreeSet<[u8; 8]>,
    pub verdicts: VerdictCounts,
    /// One sketch per [`FIGURES`] entry.
    pub figures: [Sketch; FIGURE_COUNT],
    /// Of `count`, how many were filed in a way researchers may want to exclude.
    pub filing: FilingCounts,
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
    fn add(&mut self, f: &Filing) {
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
    pub fn add(&mut self, o: &Observation) {
        self.count = self.count.saturating_add(1);
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&o.agent[..8]);
        self.agents.insert(prefix);
        if let Some(v) = o.verdict {
            self.verdicts.add(v, o.rule);
        }
        self.filing.add(&o.filing);
        for (sketch, value) in self.figures.iter_mut().zip(o.figures) {
            if let Some(v) = value {
                sketch.add(v);
            }
        }
    }

    pub fn merge(&mut self, other: &CellState) {
        self.count = self.count.saturating_add(other.count);
        self.agents.extend(other.agents.iter().copied());
        self.verdicts.merge(&other.verdicts);
        self.filing.merge(&other.filing);
        for (a, b) in self.figures.iter_mut().zip(other.figures.iter()) {
            a.merge(b);
        }
    }
}

/// p10, median and p90 of one figure in a cell.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Figure {
    pub p10: f64,
    pub median: f64,
    pub p90: f64,
}

impl Figure {
    fn of_sketch(s: &Sketch) -> Option<Figure> {
        Some(Figure {
            p10: s.quantile(0.1)?,
            median: s.quantile(0.5)?,
            p90: s.quantile(0.9)?,
        })
    }

    /// Exact order statistics at rank ⌊q·(n−1)⌋, the rank the sketch estimates.
    fn of_values(mut v: Vec<f64>) -> Option<Figure> {
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

/// One published cell of a query.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cell {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hour: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
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
    pub rtt_ms: Option<Figure>,
    pub jitter_up_ms: Option<Figure>,
    pub jitter_down_ms: Option<Figure>,
    /// Round-trip loss.
    pub loss: Option<Figure>,
    pub loss_up: Option<Figure>,
    pub loss_down: Option<Figure>,
    pub mos: Option<Figure>,
    pub stalls: Option<Figure>,
    pub verdicts: VerdictCounts,
    /// Share of the cell's judged tests that found the platform differentiated; `null` when none
    /// had a verdict (generic tests have no control arm).
    pub differentiated_share: Option<f64>,
    /// Share of the cell's judged tests that were blocked calls (the platform could not hold a
    /// call at all; see [`BLOCKED_RULES`]); `null` when none had a verdict.
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

    fn axis_text(&self, axis: Axis) -> String {
        match axis {
            Axis::Day => self.day.clone().unwrap_or_default(),
            Axis::Hour => self.hour.clone().unwrap_or_default(),
            Axis::Country => self.country.clone().unwrap_or_default(),
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

/// What a published aggregate must respect, so that no volunteer can be singled out and none
/// can swing a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// A cell is published only when at least this many distinct agents stand behind it.
    pub min_agents: usize,
    /// One agent's reports count at most this many times per fine cell and day (the first to
    /// arrive).
    pub max_per_agent_per_day: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_agents: 3,
            max_per_agent_per_day: 24,
        }
    }
}

/// Which observations a query covers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub country: Option<String>,
    pub asn: Option<u32>,
    pub platform: Option<Platform>,
    /// Only this arm; when `None` and `arm` is not an axis, only platform arms count.
    pub arm: Option<Role>,
    /// Only this stream kind; when `None` and `kind` is not an axis, only voice tests count.
    pub kind: Option<StreamKind>,
    /// Tests started at or after, Unix ms (applied at hour resolution: rounded down to the hour).
    pub since_ms: Option<i64>,
    /// Tests started before, Unix ms (applied at hour resolution: rounded up to the hour).
    pub until_ms: Option<i64>,
}

impl Filter {
    /// First hour covered.
    pub fn since_hour(&self) -> Option<i64> {
        self.since_ms.map(|t| t.div_euclid(HOUR_MS))
    }

    /// First hour not covered.
    pub fn until_hour(&self) -> Option<i64> {
        self.until_ms
            .map(|t| t.div_euclid(HOUR_MS) + i64::from(t.rem_euclid(HOUR_MS) != 0))
    }

    /// The stream kind a query covers when `kind` is not one of its axes: the filter's, or
    /// voice.
    pub fn kind_or_default(&self) -> StreamKind {
        self.kind.unwrap_or(StreamKind::Voice)
    }

    /// Whether a fine cell is covered, given the query's axes (for the default arm and kind).
    pub fn matches(&self, k: &CellKey, axes: &[Axis]) -> bool {
        let arm_ok = match self.arm {
            Some(a) => a == k.arm,
            None => axes.contains(&Axis::Arm) || k.arm == Role::Platform,
        };
        let kind_ok = match self.kind {
            Some(kind) => kind == k.kind,
            None => axes.contains(&Axis::Kind) || k.kind == StreamKind::Voice,
        };
        arm_ok
            && kind_ok
            && self
                .country
                .as_ref()
                .is_none_or(|c| country_code(c) == k.country)
            && self.asn.is_none_or(|a| a == k.asn)
            && self.platform.is_none_or(|p| p == k.platform)
            && self.since_hour().is_none_or(|h| k.hour >= h)
            && self.until_hour().is_none_or(|h| k.hour < h)
    }
}

/// Which cells answer a query over `[since_hour, until_hour)` (`None`: unbounded).
///
/// Besides the fine (hourly) cells the store keeps day roll-up cells, each the exact merge of
/// one UTC day's 24 fine cells of a (country, ASN, platform, arm), updated in the same
/// transaction. A query that does not group by hour reads the whole days in its range from the
/// roll-up (24 times fewer cells) and only the partial days at its edges from the fine cells.
/// Merging is exact (counts, agent sets, verdicts and sketch bins add), so the answer is the
/// same either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Hour ranges `[from, to)` read from fine cells.
    pub fine: [Option<(i64, i64)>; 2],
    /// Hour range `[from, to)`, on day boundaries, read from day cells.
    pub days: Option<(i64, i64)>,
}

impl Plan {
    /// Every cell of the query's range from fine cells (the reference the roll-up is tested
    /// against, and the plan when no whole day is covered).
    pub fn hourly(filter: &Filter) -> Plan {
        let all = (
            filter.since_hour().unwrap_or(i64::MIN),
            filter.until_hour().unwrap_or(i64::MAX),
        );
        Plan {
            fine: [Some(all), None],
            days: None,
        }
    }

    /// Splits a query's hour range into whole days and the partial days at its edges. With an
    /// hour axis every cell must be hourly, so everything is read from fine cells.
    pub fn of(axes: &[Axis], filter: &Filter) -> Plan {
        let since = filter.since_hour();
        let until = filter.until_hour();
        let all = (since.unwrap_or(i64::MIN), until.unwrap_or(i64::MAX));
        if axes.contains(&Axis::Hour) {
            return Plan::hourly(filter);
        }
        // First whole day at or after `since`; end of the last whole day before `until`.
        let day_from = since.map_or(i64::MIN, |h| {
            h.div_euclid(24) * 24 + 24 * i64::from(h.rem_euclid(24) != 0)
        });
        let day_to = until.map_or(i64::MAX, |h| h.div_euclid(24) * 24);
        if day_from >= day_to {
            return Plan::hourly(filter);
        }
        let nonempty = |(a, b): (i64, i64)| (a < b).then_some((a, b));
        Plan {
            fine: [nonempty((all.0, day_from)), nonempty((day_to, all.1))],
            days: Some((day_from, day_to)),
        }
    }
}

/// The value of each asked-for axis; `None` for axes not asked for. Cells are published in this
/// order (the ClickHouse store sorts its answer the same way).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    pub day: Option<i64>,
    pub hour: Option<i64>,
    pub country: Option<[u8; 2]>,
    pub asn: Option<u32>,
    pub platform: Option<Platform>,
    pub arm: Option<Role>,
    pub kind: Option<StreamKind>,
}

impl GroupKey {
    fn of(k: &CellKey, axes: &[Axis]) -> GroupKey {
        let has = |a: Axis| axes.contains(&a);
        GroupKey {
            day: has(Axis::Day).then(|| k.day()),
            hour: has(Axis::Hour).then_some(k.hour),
            country: has(Axis::Country).then_some(k.country),
            asn: has(Axis::Asn).then_some(k.asn),
            platform: has(Axis::Platform).then_some(k.platform),
            arm: has(Axis::Arm).then_some(k.arm),
            kind: has(Axis::Kind).then_some(k.kind),
        }
    }
}

/// Merges fine cells, one at a time, into the cells a query asks for.
pub struct Grouper<'a> {
    axes: &'a [Axis],
    filter: &'a Filter,
    groups: BTreeMap<GroupKey, CellState>,
}

impl<'a> Grouper<'a> {
    pub fn new(axes: &'a [Axis], filter: &'a Filter) -> Self {
        Grouper {
            axes,
            filter,
            groups: BTreeMap::new(),
        }
    }

    /// Whether a fine cell with this key is part of the query (check before decoding its state).
    pub fn wants(&self, key: &CellKey) -> bool {
        self.filter.matches(key, self.axes)
    }

    /// Adds a fine cell; cells the filter excludes are ignored.
    pub fn add(&mut self, key: &CellKey, state: &CellState) {
        if self.wants(key) {
            self.groups
                .entry(GroupKey::of(key, self.axes))
                .or_default()
                .merge(state);
        }
    }

    /// The published cells: those with at least `min_agents` distinct agents.
    pub fn finish(self, policy: &Policy) -> Vec<Cell> {
        self.groups
            .into_iter()
            .filter(|(_, s)| s.agents.len() >= policy.min_agents.max(1))
            .map(|(key, s)| {
                let figures = std::array::from_fn(|i| Figure::of_sketch(&s.figures[i]));
                Cell::new(
                    &key,
                    s.count,
                    s.agents.len() as u64,
                    figures,
                    s.verdicts,
                    s.filing,
                )
            })
            .collect()
    }
}

/// Merges fine cells into the cells a query asks for, and publishes those with at least
/// `min_agents` distinct agents. `cells` may contain cells the filter excludes.
pub fn query(
    cells: impl IntoIterator<Item = (CellKey, CellState)>,
    axes: &[Axis],
    filter: &Filter,
    policy: &Policy,
) -> Vec<Cell> {
    let mut g = Grouper::new(axes, filter);
    for (key, state) in cells {
        g.add(&key, &state);
    }
    g.finish(policy)
}

/// Applies the per-agent cap to observations in arrival order, as the store does at ingest:
/// yields the ones that count.
pub fn capped<'a>(
    observations: impl IntoIterator<Item = &'a Observation>,
    max_per_agent_per_day: usize,
) -> Vec<&'a Observation> {
    let mut seen: BTreeMap<[u8; CAP_KEY_LEN], usize> = BTreeMap::new();
    observations
        .into_iter()
        .filter(|o| {
            let n = seen
                .entry(CapKey::bytes(&o.cell_key(), &o.agent))
                .or_default();
            *n += 1;
            *n <= max_per_agent_per_day
        })
        .collect()
}

/// The brute-force reference: the same cells as [`query`] over fine cells built from
/// `observations` (in arrival order), with exact order statistics instead of sketches.
pub fn exact(
    observations: &[Observation],
    axes: &[Axis],
    filter: &Filter,
    policy: &Policy,
) -> Vec<Cell> {
    let mut groups: BTreeMap<GroupKey, Vec<&Observation>> = BTreeMap::new();
    for o in capped(observations, policy.max_per_agent_per_day) {
        let key = o.cell_key();
        if filter.matches(&key, axes) {
            groups.entry(GroupKey::of(&key, axes)).or_default().push(o);
        }
    }
    groups
        .into_iter()
        .filter_map(|(key, members)| {
            let agents: BTreeSet<[u8; 8]> = members
                .iter()
                .map(|o| {
                    let mut p = [0u8; 8];
                    p.copy_from_slice(&o.agent[..8]);
                    p
                })
                .collect();
            if agents.len() < policy.min_agents.max(1) {
                return None;
            }
            let figures = std::array::from_fn(|i| {
                Figure::of_values(members.iter().filter_map(|o| o.figures[i]).collect())
            });
            let mut verdicts = VerdictCounts::default();
            let mut filing = FilingCounts::default();
            for o in &members {
                if let Some(v) = o.verdict {
                    verdicts.add(v, o.rule);
                }
                filing.add(&o.filing);
            }
            Some(Cell::new(
                &key,
                members.len() as u64,
                agents.len() as u64,
                figures,
                verdicts,
                filing,
            ))
        })
        .collect()
}

/// The sketches' relative error, as published with every answer.
pub fn relative_error() -> f64 {
    RELATIVE_ACCURACY
}

/// CSV columns, in order: the axes asked for, `count,agents`, `<figure>_p10,_median,_p90` per
/// figure in [`FIGURES`] order, then the verdict counts (`verdict_none`, `verdict_inconclusive`,
/// `verdict_differentiated`, `verdict_blocked`, `verdict_no_reference`) and the shares
/// (`differentiated_share`, `blocked_share`), then the filing counts (`uploaded_elsewhere`,
/// `hosting`).
pub fn to_csv(cells: &[Cell], axes: &[Axis]) -> String {
    let mut header: Vec<String> = axes.iter().map(|a| a.as_str().to_string()).collect();
    header.extend(["count".into(), "agents".into()]);
    for f in FIGURES {
        header.extend([
            format!("{f}_p10"),
            format!("{f}_median"),
            format!("{f}_p90"),
        ]);
    }
    header.extend([
        "verdict_none".into(),
        "verdict_inconclusive".into(),
        "verdict_differentiated".into(),
        "verdict_blocked".into(),
        "verdict_no_reference".into(),
        "differentiated_share".into(),
        "blocked_share".into(),
        "uploaded_elsewhere".into(),
        "hosting".into(),
    ]);
    let mut out = header.join(",");
    out.push('\n');
    let num = |x: f64| format!("{x:.5}");
    for c in cells {
        let mut row: Vec<String> = axes.iter().map(|a| c.axis_text(*a)).collect();
        row.extend([c.count.to_string(), c.agents.to_string()]);
        for f in c.figures() {
            match f {
                Some(f) => row.extend([num(f.p10), num(f.median), num(f.p90)]),
                None => row.extend([String::new(), String::new(), String::new()]),
            }
        }
        row.extend([
            c.verdicts.none.to_string(),
            c.verdicts.inconclusive.to_string(),
            c.verdicts.differentiated.to_string(),
            c.verdicts.blocked.to_string(),
            c.verdicts.no_reference.to_string(),
            c.differentiated_share.map(num).unwrap_or_default(),
            c.blocked_share.map(num).unwrap_or_default(),
            c.filing.uploaded_elsewhere.to_string(),
            c.filing.hosting.to_string(),
        ]);
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_764_288_000_000; // 2025-11-28T00:00:00Z

    fn obs(country: &str, platform: Platform, agent: u8, rtt: f64, loss: f64) -> Observation {
        Observation {
            started_at_ms: T0,
            country: country.into(),
            asn: if country == "RU" { 12389 } else { 3320 },
            platform,
            arm: Role::Platform,
            kind: StreamKind::Voice,
            agent: [agent; 32],
            figures: [
                Some(rtt),
                Some(1.0),
                Some(2.0),
                Some(loss),
                Some(loss),
                Some(0.0),
                Some(4.0),
                Some(0.0),
            ],
            verdict: (platform != Platform::Generic).then_some(Verdict::None),
            rule: None,
            filing: Filing::default(),
        }
    }

    fn fine_cells(o: &[Observation], policy: &Policy) -> Vec<(CellKey, CellState)> {
        let mut cells: BTreeMap<CellKey, CellState> = BTreeMap::new();
        for x in capped(o, policy.max_per_agent_per_day) {
            cells.entry(x.cell_key()).or_default().add(x);
        }
        cells.into_iter().collect()
    }

    fn both(o: &[Observation], axes: &[Axis], f: &Filter, p: &Policy) -> Vec<Cell> {
        let sketched = query(fine_cells(o, p), axes, f, p);
        let exact = exact(o, axes, f, p);
        assert_eq!(sketched.len(), exact.len());
        for (s, e) in sketched.iter().zip(&exact) {
            assert_eq!(
                (s.count, s.agents, s.verdicts, s.filing),
                (e.count, e.agents, e.verdicts, e.filing)
            );
            for (a, b) in s.figures().iter().zip(e.figures()) {
                match (a, b) {
                    (Some(a), Some(b)) => {
                        for (x, y) in [(a.p10, b.p10), (a.median, b.median), (a.p90, b.p90)] {
                            assert!((x - y).abs() <= RELATIVE_ACCURACY * y.abs() + 1e-9);
                        }
                    }
                    (None, None) => {}
                    other => panic!("figure presence differs: {other:?}"),
                }
            }
        }
        exact
    }

    #[test]
    fn groups_by_two_axes() {
        let o = vec![
            obs("RU", Platform::Whatsapp, 1, 10.0, 0.1),
            obs("RU", Platform::Whatsapp, 2, 30.0, 0.3),
            obs("RU", Platform::Whatsapp, 2, 20.0, 0.2),
            obs("DE", Platform::Whatsapp, 3, 5.0, 0.0),
            obs("RU", Platform::Generic, 1, 7.0, 0.0),
        ];
        let open = Policy {
            min_agents: 1,
            ..Policy::default()
        };
        let axes = [Axis::Country, Axis::Platform];
        let cells = both(&o, &axes, &Filter::default(), &open);
        assert_eq!(cells.len(), 3);
        let ru_wa = cells
            .iter()
            .find(|c| {
                c.country.as_deref() == Some("RU") && c.platform.as_deref() == Some("whatsapp")
            })
            .unwrap();
        assert_eq!(ru_wa.count, 3);
        assert_eq!(ru_wa.agents, 2);
        assert_eq!(ru_wa.rtt_ms.unwrap().median, 20.0);
        assert_eq!(ru_wa.differentiated_share, Some(0.0));
        assert_eq!(ru_wa.asn, None);
        let csv = to_csv(&cells, &axes);
        assert!(csv.starts_with("country,platform,count,agents,rtt_ms_p10,rtt_ms_median,"));
        assert!(csv.contains("RU,whatsapp,3,2,10.00000,20.00000,20.00000,"));
    }

    #[test]
    fn arms_are_separate_and_default_to_platform() {
        let mut o = vec![obs("RU", Platform::Telegram, 1, 10.0, 0.0)];
        let mut control = obs("RU", Platform::Telegram, 1, 50.0, 0.0);
        control.arm = Role::Control;
        o.push(control);
        let open = Policy {
            min_agents: 1,
            ..Policy::default()
        };
        let only_platform = both(&o, &[Axis::Country], &Filter::default(), &open);
        assert_eq!(only_platform[0].count, 1);
        assert_eq!(only_platform[0].rtt_ms.unwrap().median, 10.0);
        let by_arm = both(&o, &[Axis::Arm], &Filter::default(), &open);
        assert_eq!(by_arm.len(), 2);
        assert_eq!(by_arm[1].arm.as_deref(), Some("control"));
        let control_only = Filter {
            arm: Some(Role::Control),
            ..Filter::default()
        };
        assert_eq!(
            both(&o, &[Axis::Country], &control_only, &open)[0]
                .rtt_ms
                .unwrap()
                .median,
            50.0
        );
    }

    #[test]
    fn hour_and_day_axes_and_hour_resolution_bounds() {
        let mut a = obs("RU", Platform::Signal, 1, 10.0, 0.0);
        let mut b = a.clone();
        b.started_at_ms = T0 + 25 * HOUR_MS + 5;
        a.started_at_ms = T0 + 30 * 60_000;
        let o = vec![a, b];
        let open = Policy {
            min_agents: 1,
            ..Policy::default()
        };
        let hours = both(&o, &[Axis::Hour], &Filter::default(), &open);
        assert_eq!(hours[0].hour.as_deref(), Some("2025-11-28T00:00:00Z"));
        assert_eq!(hours[1].hour.as_deref(), Some("2025-11-29T01:00:00Z"));
        let days = both(&o, &[Axis::Day], &Filter::default(), &open);
        assert_eq!(days[1].day.as_deref(), Some("2025-11-29"));
        let late = Filter {
            since_ms: Some(T0 + 45 * 60_000), // rounded down to T0's hour: still covers `a`
            ..Filter::default()
        };
        assert_eq!(both(&o, &[Axis::Day], &late, &open).len(), 2);
        let early = Filter {
            until_ms: Some(T0 + 10 * 60_000), // rounded up: covers the first hour
            ..Filter::default()
        };
        assert_eq!(both(&o, &[Axis::Day], &early, &open).len(), 1);
    }

    #[test]
    fn cells_below_k_agents_are_not_published_and_filters_apply() {
        let o = vec![
            obs("RU", Platform::Whatsapp, 1, 10.0, 0.0),
            obs("RU", Platform::Whatsapp, 2, 11.0, 0.0),
            obs("RU", Platform::Whatsapp, 3, 12.0, 0.0),
            obs("DE", Platform::Whatsapp, 4, 5.0, 0.0),
            obs("DE", Platform::Whatsapp, 4, 6.0, 0.0),
        ];
        let cells = both(&o, &[Axis::Country], &Filter::default(), &Policy::default());
        assert_eq!(cells.len(), 1, "DE has one agent behind it");
        assert_eq!(cells[0].country.as_deref(), Some("RU"));
        let only_de = Filter {
            country: Some("de".into()),
            ..Filter::default()
        };
        let open = Policy {
            min_agents: 1,
            ..Policy::default()
        };
        assert_eq!(both(&o, &[Axis::Platform], &only_de, &open)[0].count, 2);
        let later = Filter {
            since_ms: Some(T0 + HOUR_MS),
            ..Filter::default()
        };
        assert!(both(&o, &[Axis::Platform], &later, &open).is_empty());
    }

    #[test]
    fn one_agent_flooding_a_cell_moves_it_no_more_than_its_capped_weight() {
        let mut o = Vec::new();
        for (agent, rtt) in [(1, 10.0), (2, 12.0), (3, 14.0)] {
            for _ in 0..2 {
                o.push(obs("RU", Platform::Telegram, agent, rtt, 0.0));
            }
        }
        for _ in 0..1000 {
            o.push(obs("RU", Platform::Telegram, 66, 500.0, 1.0));
        }
        let policy = Policy {
            min_agents: 3,
            max_per_agent_per_day: 2,
        };
        let cells = both(&o, &[Axis::Country], &Filter::default(), &policy);
        // Mallory counts twice, like each honest agent: [10,10,12,12,14,14,500,500];
        // the median (rank ⌊0.5·7⌋ = 3) stays an honest value.
        assert_eq!(cells[0].count, 8);
        assert_eq!(cells[0].rtt_ms.unwrap().median, 12.0);
        assert_eq!(cells[0].loss_up.unwrap().p90, 1.0);
        let uncapped = Policy {
            max_per_agent_per_day: usize::MAX,
            ..policy
        };
        let flooded = both(&o, &[Axis::Country], &Filter::default(), &uncapped);
        assert_eq!(
            flooded[0].rtt_ms.unwrap().median,
            500.0,
            "without the cap, one agent decides"
        );
    }

    #[test]
    fn counts_from_a_damaged_store_saturate_instead_of_overflowing() {
        // Found by the sketch_and_cells fuzz target (fuzz/findings, F1 and F2).
        let mut huge = CellState {
            count: u64::MAX - 1,
            verdicts: VerdictCounts {
                none: u64::MAX,
                inconclusive: 0,
                differentiated: u64::MAX,
                blocked: u64::MAX,
                no_reference: 3,
            },
            ..CellState::default()
        };
        let other = huge.clone();
        huge.merge(&other);
        assert_eq!(huge.count, u64::MAX);
        assert_eq!(huge.verdicts.differentiated_share(), Some(1.0));
        assert_eq!(huge.verdicts.blocked_share(), Some(1.0));
        assert_eq!(huge.verdicts.no_reference, 6);
        // More blocked than judged (only a damaged store holds that): still a share.
        let odd = VerdictCounts {
            none: 1,
            blocked: 5,
            ..VerdictCounts::default()
        };
        assert_eq!(odd.blocked_share(), Some(1.0));
    }

    #[test]
    fn keys_round_trip_and_garbage_is_refused() {
        let k = obs("RU", Platform::Max, 9, 1.0, 0.0).cell_key();
        assert_eq!(CellKey::from_bytes(&k.to_bytes()), Some(k));
        assert_eq!(CellKey::from_bytes(&[0u8; 3]), None);
        let mut bad = k.to_bytes();
        bad[14] = 99;
        assert_eq!(CellKey::from_bytes(&bad), None);
        let mut bad = k.to_bytes();
        bad[16] = 7;
        assert_eq!(CellKey::from_bytes(&bad), None, "unknown stream kind");
        // A key as stores made before the stream kind wrote it (16 bytes) is not read as a
        // current one: the sled store rebuilds such cells at open.
        assert_eq!(CellKey::from_bytes(&k.to_bytes()[..16]), None);
        let mut video = obs("RU", Platform::Max, 9, 1.0, 0.0);
        video.kind = StreamKind::Video;
        let v = video.cell_key();
        assert_eq!(CellKey::from_bytes(&v.to_bytes()), Some(v));
        assert_ne!(v.to_bytes(), k.to_bytes());
        assert_ne!(
            CapKey::bytes(&v, &video.agent),
            CapKey::bytes(&k, &video.agent),
            "the per-agent cap counts voice and video apart"
        );
        assert!("city".parse::<Axis>().is_err());
        assert_eq!("arm".parse::<Axis>(), Ok(Axis::Arm));
        assert_eq!("kind".parse::<Axis>(), Ok(Axis::Kind));
        assert_eq!(parse_kind("video"), Ok(StreamKind::Video));
        assert!(parse_kind("audio").is_err());
    }

    /// A video-like test of the same country, network, platform and hour: worse MOS, more loss.
    fn video(agent: u8) -> Observation {
        let mut o = obs("RU", Platform::Telegram, agent, 300.0, 0.5);
        o.kind = StreamKind::Video;
        o.figures[6] = Some(1.2); // MOS
        o
    }

    #[test]
    fn video_tests_never_land_in_a_voice_cell() {
        let mut o = Vec::new();
        for agent in 1..=3 {
            o.push(obs("RU", Platform::Telegram, agent, 10.0, 0.0));
            o.push(video(agent));
            o.push(video(agent + 10));
        }
        let open = Policy {
            min_agents: 1,
            ..Policy::default()
        };
        // By default a query counts voice only: the video tests move nothing.
        for axes in [vec![Axis::Country], vec![Axis::Platform, Axis::Arm], vec![]] {
            let cells = both(&o, &axes, &Filter::default(), &open);
            assert_eq!(cells.len(), 1, "{axes:?}");
            let c = &cells[0];
            assert_eq!((c.count, c.agents), (3, 3), "{axes:?}");
            let mos = c.mos.unwrap();
            assert_eq!((mos.p10, mos.median, mos.p90), (4.0, 4.0, 4.0), "{axes:?}");
            assert_eq!(c.rtt_ms.unwrap().p90, 10.0, "{axes:?}");
            assert_eq!(c.kind, None, "kind is not an axis here");
        }
        // With kind as an axis, one cell per kind, each pure.
        let by_kind = both(&o, &[Axis::Country, Axis::Kind], &Filter::default(), &open);
        assert_eq!(by_kind.len(), 2);
        assert_eq!(by_kind[0].kind.as_deref(), Some("voice"));
        assert_eq!(by_kind[0].mos.unwrap().p10, 4.0);
        assert_eq!(by_kind[1].kind.as_deref(), Some("video"));
        assert_eq!((by_kind[1].count, by_kind[1].agents), (6, 6));
        assert_eq!(by_kind[1].mos.unwrap().p90, 1.2);
        // A kind filter picks one.
        let only_video = Filter {
            kind: Some(StreamKind::Video),
            ..Filter::default()
        };
        let v = both(&o, &[Axis::Country], &only_video, &open);
        assert_eq!(v[0].count, 6);
        assert_eq!(v[0].mos.unwrap().median, 1.2);
        // The fine cells themselves never mix.
        let fine = fine_cells(&o, &open);
        assert_eq!(fine.len(), 2);
        assert!(fine
            .iter()
            .all(|(k, s)| s.count == if k.kind == StreamKind::Voice { 3 } else { 6 }));
        let csv = to_csv(&by_kind, &[Axis::Country, Axis::Kind]);
        assert!(csv.starts_with("country,kind,count,agents,"), "{csv}");
        assert!(csv.contains("\nRU,video,6,6,"), "{csv}");
    }

    #[test]
    fn blocked_calls_and_missing_references_are_counted_apart() {
        use VerdictRule as R;
        let tests = [
            (Verdict::Differentiated, Some(R::Blocked)),
            (Verdict::Differentiated, Some(R::Cut)),
            (Verdict::Differentiated, Some(R::PlatformServersUnreachable)),
            (Verdict::Differentiated, Some(R::Loss)),
            (Verdict::Differentiated, None),
            (Verdict::Inconclusive, Some(R::NoReference)),
            (Verdict::Inconclusive, Some(R::NothingAnswered)),
            (Verdict::Inconclusive, Some(R::ReflectorBusy)),
            (Verdict::Inconclusive, Some(R::TooLittleData)),
            (Verdict::None, Some(R::NotWorse)),
            // A rule that disagrees with its verdict is no finding.
            (Verdict::None, Some(R::Blocked)),
            (Verdict::Differentiated, Some(R::NoReference)),
        ];
        let o: Vec<Observation> = tests
            .iter()
            .enumerate()
            .map(|(i, (v, rule))| {
                let mut x = obs("RU", Platform::Whatsapp, i as u8, 10.0, 0.0);
                (x.verdict, x.rule) = (Some(*v), *rule);
                x
            })
            .collect();
        let open = Policy {
            min_agents: 1,
            ..Policy::default()
        };
        let cells = both(&o, &[Axis::Country], &Filter::default(), &open);
        let c = &cells[0];
        assert_eq!(
            c.verdicts,
            VerdictCounts {
                none: 2,
                inconclusive: 4,
                differentiated: 6,
                blocked: 3,
                no_reference: 3,
            }
        );
        assert_eq!(c.differentiated_share, Some(6.0 / 12.0));
        assert_eq!(c.blocked_share, Some(3.0 / 12.0));
        let json = serde_json::to_value(c).unwrap();
        assert_eq!(json["verdicts"]["blocked"], 3);
        assert_eq!(json["verdicts"]["no_reference"], 3);
        assert_eq!(json["blocked_share"], 0.25);
        let csv = to_csv(&cells, &[Axis::Country]);
        let (head, row) = csv.trim_end().split_once('\n').unwrap();
        assert!(
            head.ends_with(
                ",verdict_none,verdict_inconclusive,verdict_differentiated,verdict_blocked,\
                 verdict_no_reference,differentiated_share,blocked_share,uploaded_elsewhere,\
                 hosting"
            ),
            "{head}"
        );
        assert!(row.ends_with(",2,4,6,3,3,0.50000,0.25000,0,0"), "{row}");
        // No verdicts (generic tests): no shares.
        let generic = vec![obs("RU", Platform::Generic, 1, 10.0, 0.0)];
        let g = both(&generic, &[Axis::Country], &Filter::default(), &open);
        assert_eq!(
            (g[0].differentiated_share, g[0].blocked_share),
            (None, None)
        );
        // Old cells' JSON (before `blocked` and `no_reference`) still reads.
        let old: VerdictCounts =
            serde_json::from_str(r#"{"none":1,"inconclusive":2,"differentiated":3}"#).unwrap();
        assert_eq!(
            (old.blocked, old.no_reference, old.blocked_share()),
            (0, 0, Some(0.0))
        );
    }

    fn stored_report() -> StoredReport {
        StoredReport {
            signed: callwatch_proto::SignedReport {
                body: Vec::new(),
                key: vec![5; 32],
                signature: Vec::new(),
            },
            region: crate::geo::Region {
                country: "ru".into(),
                asn: 12389,
            },
            received_at_ms: 0,
            filing: Default::default(),
        }
    }

    fn comparison() -> callwatch_proto::report::ArmComparison {
        callwatch_proto::report::ArmComparison {
            platform_median: 0.0,
            control_median: 0.0,
            p_value: 1.0,
            effect: 0.0,
            significant: false,
        }
    }

    #[test]
    fn cells_count_how_their_reports_were_filed_after_the_cap() {
        let mark = |mut o: Observation, uploaded_elsewhere: bool, hosting: bool| {
            o.filing = Filing {
                source: crate::store::RegionSource::Attested,
                uploaded_elsewhere,
                hosting,
                ..Filing::default()
            };
            o
        };
        let o = vec![
            mark(obs("RU", Platform::Whatsapp, 1, 10.0, 0.1), true, false),
            mark(obs("RU", Platform::Whatsapp, 2, 30.0, 0.3), true, true),
            mark(obs("RU", Platform::Whatsapp, 3, 20.0, 0.2), false, false),
            // Over agent 1's cap of 1: not counted, marks included.
            mark(obs("RU", Platform::Whatsapp, 1, 20.0, 0.2), true, true),
            mark(obs("DE", Platform::Whatsapp, 3, 5.0, 0.0), false, true),
        ];
        let policy = Policy {
            min_agents: 1,
            max_per_agent_per_day: 1,
        };
        let cells = both(&o, &[Axis::Country], &Filter::default(), &policy);
        let of = |cc: &str| {
            cells
                .iter()
                .find(|c| c.country.as_deref() == Some(cc))
                .unwrap()
                .filing
        };
        assert_eq!(
            of("RU"),
            FilingCounts {
                uploaded_elsewhere: 2,
                hosting: 1
            }
        );
        assert_eq!(
            of("DE"),
            FilingCounts {
                uploaded_elsewhere: 0,
                hosting: 1
            }
        );
        let csv = to_csv(&cells, &[Axis::Country]);
        assert!(csv
            .lines()
            .next()
            .unwrap()
            .ends_with(",uploaded_elsewhere,hosting"));
        assert!(
            csv.lines()
                .any(|l| l.starts_with("RU,3,3,") && l.ends_with(",2,1")),
            "{csv}"
        );
    }

    #[test]
    fn a_test_taken_under_reflector_load_counts_but_gives_no_figures() {
        let mut r = CallReport::example();
        let fine = Observation::from_report(&stored_report(), &r);
        assert!(fine[0].figures.iter().any(Option::is_some));
        r.reflector_loaded = true;
        let loaded = Observation::from_report(&stored_report(), &r);
        assert_eq!(loaded.len(), fine.len(), "still counted");
        assert!(loaded.iter().all(|o| o.figures.iter().all(Option::is_none)));
    }

    #[test]
    fn reports_give_their_kind_and_rule_and_only_measured_figures() {
        use callwatch_proto::report::VerdictDetail;
        // A blocked call: the platform handshake went unanswered, the control arm worked.
        let mut r = CallReport::example();
        r.platform = Platform::Whatsapp;
        r.stream_kind = StreamKind::Video;
        r.verdict = Some(Verdict::Differentiated);
        r.verdict_detail = Some(VerdictDetail {
            method: "test".into(),
            window_ms: 1000,
            windows: 0,
            loss: comparison(),
            delay: comparison(),
            jitter: comparison(),
            reason: "blocked".into(),
            rule: Some(VerdictRule::Blocked),
            onset: None,
            relay: None,
        });
        let control = r.streams[0].clone();
        let platform = &mut r.streams[0];
        platform.outcome = StreamOutcome::Blocked;
        (platform.packets_sent, platform.packets_reflected) = (0, None);
        platform.packets_received = 0;
        (platform.loss, platform.loss_up, platform.loss_down) = (Some(0.0), None, None);
        (platform.rtt_ms, platform.jitter_ms, platform.mos) = (None, None, None);
        let mut control = control;
        control.role = Role::Control;
        // The reflector's count never came: the split is unknown, the round trip is not.
        (control.loss_up, control.loss_down) = (None, None);
        r.streams.push(control);
        assert!(r.validate().is_ok(), "{:?}", r.validate());
        let o = Observation::from_report(&stored_report(), &r);
        assert_eq!(o.len(), 2);
        for x in &o {
            assert_eq!(x.kind, StreamKind::Video);
            assert_eq!(x.rule, Some(VerdictRule::Blocked));
            assert_eq!(x.cell_key().kind, StreamKind::Video);
            assert_eq!(x.cell_key().country, *b"RU");
        }
        assert_eq!(o[0].arm, Role::Platform);
        assert_eq!(
            o[0].figures, [None; FIGURE_COUNT],
            "a blocked arm measured nothing"
        );
        assert_eq!(o[1].figures[3], Some(0.02), "round-trip loss");
        assert_eq!((o[1].figures[4], o[1].figures[5]), (None, None));
        assert_eq!(o[1].figures[0], Some(11.5));
        let mut cell = CellState::default();
        o.iter().for_each(|x| cell.add(x));
        assert_eq!(
            (cell.verdicts.blocked, cell.verdicts.differentiated),
            (2, 2)
        );
        assert_eq!(cell.figures[3].count(), 1, "only the control arm's loss");
        assert!(cell.figures[4].is_empty() && cell.figures[5].is_empty());
        // A report from before the stream kind and the rule existed: voice, no finding.
        let old: CallReport = serde_json::from_value({
            let mut v = serde_json::to_value(CallReport::example()).unwrap();
            let m = v.as_object_mut().unwrap();
            m.remove("stream_kind");
            m.remove("verdict_detail");
            v
        })
        .unwrap();
        let o = Observation::from_report(&stored_report(), &old);
        assert_eq!((o[0].kind, o[0].rule), (StreamKind::Voice, None));
    }

    proptest::proptest! {
        /// Merging two cells equals aggregating their reports together.
        #[test]
        fn merging_cells_equals_aggregating_their_reports(
            a in proptest::collection::vec((0u8..5, 0.0f64..2000.0, 0.0f64..1.0), 0..60),
            b in proptest::collection::vec((0u8..5, 0.0f64..2000.0, 0.0f64..1.0), 0..60),
        ) {
            let make = |v: &[(u8, f64, f64)]| -> Vec<Observation> {
                v.iter().map(|(agent, rtt, loss)| {
                    obs("RU", Platform::Whatsapp, *agent, *rtt, *loss)
                }).collect()
            };
            let (oa, ob) = (make(&a), make(&b));
            let mut sa = CellState::default();
            oa.iter().for_each(|o| sa.add(o));
            let mut sb = CellState::default();
            ob.iter().for_each(|o| sb.add(o));
            let mut together = CellState::default();
            oa.iter().chain(&ob).for_each(|o| together.add(o));
            let mut merged = sa.clone();
            merged.merge(&sb);
            proptest::prop_assert_eq!(&merged, &together);
            let mut other_way = sb;
            other_way.merge(&sa);
            proptest::prop_assert_eq!(&other_way, &together);
        }
    }
}
