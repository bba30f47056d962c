//! What aggregation takes from a report: one [`Observation`] per platform and control arm, the
//! figures it aggregates ([`FIGURES`]) and what a verdict's rule adds ([`Finding`]).

use super::cell::CellKey;
use super::codes::{country_code, subdivision_code};
use super::report::{Filing, StoredReport};
use super::HOUR_MS;
use callwatch_proto::precision::Precision;
use callwatch_proto::report::{StreamKind, StreamOutcome, VerdictRule};
use callwatch_proto::{CallReport, Platform, Role, Verdict};

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

/// The precision each of [`FIGURES`] is published to (its rule in
/// [`callwatch_proto::precision::FIELDS`]; a test holds the two together).
pub const FIGURE_PRECISION: [Precision; FIGURE_COUNT] = [
    Precision::Millis,
    Precision::Millis,
    Precision::Millis,
    Precision::Fraction,
    Precision::Fraction,
    Precision::Fraction,
    Precision::Mos,
    Precision::Count,
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
    /// The region's ISO 3166-2 subdivision (`RU-MOW`), empty when unknown.
    pub subdivision: String,
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
    /// How the report was filed (see [`super::Filing`]).
    pub filing: Filing,
}

/// The network prefix an observation counts under for the prefix k and the prefix cap: its
/// report's 8-byte prefix tag ([`Filing::prefix_tag`]), or — for a report without one (carried
/// in a file, or stored before tags) — the first 8 bytes of its agent key, so that such a report
/// is its own prefix and the prefix rules reduce to the key rules for it.
pub fn prefix_of(filing: &Filing, agent: &[u8; 32]) -> [u8; 8] {
    let mut out = [0u8; 8];
    match filing.prefix_tag.as_deref().map(hex::decode) {
        Some(Ok(tag)) if tag.len() == 8 => out.copy_from_slice(&tag),
        _ => out.copy_from_slice(&agent[..8]),
    }
    out
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
                    subdivision: stored.region.subdivision.clone(),
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

    /// The network prefix it counts under ([`prefix_of`]).
    pub fn prefix(&self) -> [u8; 8] {
        prefix_of(&self.filing, &self.agent)
    }

    /// The fine cell this observation belongs to.
    pub fn cell_key(&self) -> CellKey {
        CellKey {
            hour: self.started_at_ms.div_euclid(HOUR_MS),
            country: country_code(&self.country),
            subdivision: subdivision_code(&self.country, &self.subdivision),
            asn: self.asn,
            platform: self.platform,
            arm: self.arm,
            kind: self.kind,
        }
    }
}
