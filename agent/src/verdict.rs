//! The differentiation verdict: is the platform arm treated worse than its control arm?
//!
//! A test runs two arms at once against one reflector: the *platform arm* (framed like the
//! platform's call traffic) and the *control arm* (same timing and sizes, neutral bytes, neutral
//! port). A network that treats both alike gives two samples of one process, however bad that
//! process is; a network that singles out the platform gives a platform arm that is worse. The
//! verdict separates the two per test, with a stated false-positive rate.
//!
//! # Rules
//!
//! [`judge_call`] first applies the outcome rules C1–C5 (busy reflector, no reference, blocked,
//! cut, platform servers unreachable; see its docs). Then, for two arms that both answered:
//!
//! 1. **Windows.** Both arms are cut into windows of `window_ms` (500 ms) by send time, on one grid
//!    starting at the earliest probe of either arm. A window counts for an arm when it holds at
//!    least half the probes it should (`window / interval`, or the arm's median per-window count if
//!    that is smaller), so a ragged last window with a probe or two does not become a data point.
//!    Only windows that count for *both* arms are compared (`VerdictDetail::windows`).
//! 2. **Metrics.** Per compared window and arm: probes lost and sent, the median RTT of the
//!    replies (ms; needs ≥ 1 reply), and the RTT variation, the mean |ΔRTT| between consecutive
//!    replies in send order (ms; RFC 5481 IPDV on the round trip, what a jitter buffer must
//!    absorb; needs ≥ 2 replies).
//! 3. **Too little data → `inconclusive`.** Fewer than `min_windows` compared windows (12).
//!    The paired tests below cannot reach Holm's first step (α/4 = 0.0005) with fewer: with n
//!    windows all worse, the exact signed-rank p is 2⁻ⁿ, and 2⁻¹¹ = 0.00049 is the first below.
//! 4. **Nothing back** on either arm is decided by the outcome rules; here it stays
//!    `inconclusive` with the reason.
//! 5. **Tests**, each one-sided ("the platform arm is worse") and exact (`crate::stats`):
//!    - *loss*: two tests that must both hold (an intersection-union test, valid when either
//!      is): an exact test over every probe stratified by window (the exact conditional
//!      Cochran–Mantel–Haenszel test; conditioning on each window's total loss removes bursts
//!      that hit both arms' interleaved probes at once), and the exact Wilcoxon signed-rank test
//!      on per-window loss differences, which holds where losses come in bursts within one arm
//!      (there the per-probe test alone flagged 8 % of 4,000 null tests);
//!    - *delay* and *RTT variation*: exact Wilcoxon signed-rank on the per-window platform −
//!      control differences. Pairing by window cancels congestion that hits both arms alike;
//!    - *onset*: the largest standardised CUSUM of the per-window delay differences over split
//!      points (a split at 0 included), calibrated by flipping arm labels within windows (all
//!      2ⁿ flips up to 16 windows), so the scan itself does not inflate false positives.
//!
//!    The four p-values are Holm-adjusted (`ArmComparison::p_value`, `Onset::p_value`). The
//!    effect is the pooled loss difference (platform − control) or the mean paired difference.
//! 6. **`differentiated`** when some test has the platform arm worse with adjusted p < `alpha`
//!    *and* an effect ≥ that metric's floor (`ArmComparison::significant`). Never on one of the
//!    two alone.
//! 7. **`inconclusive`** when, for some metric, the platform arm is worse by an effect ≥ its
//!    floor that is not significant (suggestive, not established). Also when both arms are
//!    **degraded alike** — both median per-window losses ≥ `degraded_loss` (5 %) or both median
//!    RTT variations ≥ `degraded_jitter_ms` (30 ms) — without a significant difference of a size
//!    that matters: such a path hides what it does to one kind of traffic.
//! 8. **`none`** otherwise: the platform arm was not worse by a significant, meaningful amount.
//!    This includes a significant difference *smaller* than its floor (two arms on different
//!    ports differ by microseconds on real paths; that is not differentiation), and a control
//!    arm that was significantly *worse*. The reason says which.
//!
//! # Defaults and why
//!
//! - `alpha = 0.002`, one-sided, Holm over 4 tests: where both arms are exchangeable within
//!   each window (a network that treats them alike), P(`differentiated`) ≤ 0.2 % per test, since
//!   each test is exact under that null and Holm bounds the family-wise error; the floors only
//!   remove verdicts. 0.2 % rather than 1 % so that a published false-positive rate from 1,000
//!   tests has a 95 % Clopper–Pearson upper bound ≤ 1 % (that needs ≤ 3 false positives).
//! - `loss_floor = 0.01` (1 point): by G.113/G.107, G.711 with PLC (Bpl = 25.1) loses
//!   95·1/(1+25.1) ≈ 3.6 R points at 1 % random loss, a small but audible cost; less is noise.
//! - `delay_floor_ms = 5`: a shaper's queue shows first as added delay; a few ms is what two flows
//!   of one path can differ by (ECMP, load balancers), so less is no evidence of intent.
//! - `jitter_floor_ms = 3`: a jitter buffer holds roughly 2–4 times the RTT variation, so 3 ms
//!   more of it costs ≈ 10 ms of mouth-to-ear delay; less is within path-to-path spread.
//! - `window_ms = 500`: a 15 s test gives 30 windows, so a degradation that starts a third of
//!   the way in still leaves 20 windows after it — enough for the paired tests to reach α
//!   after Holm (2⁻²⁰); with 1 s windows it left 10 (4·2⁻¹⁰ > α), and the simulated
//!   onset and shaping-queue censors were never found. 25 probes a window still give a median.
//! - `min_windows = 12` (6 s): see rule 3; the agent's default test is 15 s.
//!
//! # Limits
//!
//! The two arms use different ports, so a per-flow path difference (ECMP hashing one arm onto a
//! congested link) looks like differentiation; repeating the test with fresh ports tells the two
//! apart. The exactness of each test rests on the arms being exchangeable within a window; a
//! censor that degrades both arms (it recognises the measurement) is caught by no comparison.

use std::collections::BTreeMap;

use crate::stats;
use callwatch_proto::report::{ArmComparison, Onset, StreamOutcome, VerdictRule};
use callwatch_proto::{Verdict, VerdictDetail};

/// One probe of one arm: when it was sent (agent clock, µs) and its round-trip time if it came
/// back in time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PacketSample {
    pub sent_us: u64,
    pub rtt_us: Option<u64>,
}

/// All probes of one arm, and the nominal interval they were sent at (µs; 0 if unknown).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArmSamples {
    pub interval_us: u64,
    pub packets: Vec<PacketSample>,
}

/// Parameters of the verdict; the module docs justify the defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VerdictConfig {
    /// Length of the windows each arm is cut into (rule 1).
    pub window_ms: u32,
    /// Family-wise significance level over the three metrics (one-sided, Holm).
    pub alpha: f64,
    /// Smallest difference in mean per-window loss fraction that counts (0.01 = one point).
    pub loss_floor: f64,
    /// Smallest difference in mean per-window median RTT that counts.
    pub delay_floor_ms: f64,
    /// Smallest difference in mean per-window RTT variation (mean |ΔRTT|) that counts.
    pub jitter_floor_ms: f64,
    /// Fewest windows with probes of both arms for any verdict but `inconclusive` (rule 3).
    pub min_windows: u32,
    /// Median per-window loss fraction at which an arm counts as degraded (rule 7).
    pub degraded_loss: f64,
    /// Median per-window RTT variation at which an arm counts as degraded (rule 7).
    pub degraded_jitter_ms: f64,
}

impl Default for VerdictConfig {
    fn default() -> Self {
        VerdictConfig {
            window_ms: 500,
            alpha: 0.002,
            loss_floor: 0.01,
            delay_floor_ms: 5.0,
            jitter_floor_ms: 3.0,
            min_windows: 12,
            degraded_loss: 0.05,
            degraded_jitter_ms: 30.0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

// The agent's one percentile definition (metrics::stats): the verdict's medians are the
// report's.
use crate::metrics::stats::{mean, median};

// ---------------------------------------------------------------------------------------------
// Windows and series
// ---------------------------------------------------------------------------------------------

/// The probes of one arm in one window.
#[derive(Debug, Default)]
struct Window {
    sent: usize,
    /// RTTs of the replies in ms, in send order.
    rtts_ms: Vec<f64>,
}

/// One arm's probes by window index on the grid `origin + k·window_us`.
fn windows_of(arm: &ArmSamples, origin: u64, window_us: u64) -> BTreeMap<u64, Window> {
    let mut packets = arm.packets.clone();
    packets.sort_by_key(|p| p.sent_us);
    let mut windows: BTreeMap<u64, Window> = BTreeMap::new();
    for p in packets {
        let w = windows
            .entry(p.sent_us.saturating_sub(origin) / window_us)
            .or_default();
        w.sent += 1;
        if let Some(rtt) = p.rtt_us {
            w.rtts_ms.push(rtt as f64 / 1e3);
        }
    }
    windows
}

/// Fewest probes a window of this arm must hold to count (rule 1).
fn min_probes(arm: &ArmSamples, windows: &BTreeMap<u64, Window>, window_us: u64) -> usize {
    let mut counts: Vec<usize> = windows.values().map(|w| w.sent).collect();
    counts.sort_unstable();
    let typical = counts.get(counts.len() / 2).copied().unwrap_or(1);
    let nominal = match window_us.checked_div(arm.interval_us) {
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => typical,
    };
    nominal.min(typical).max(1).div_ceil(2)
}

/// Per-window series of one arm over the compared windows (index k is the k-th compared
/// window of both arms).
#[derive(Debug, Default)]
struct Series {
    /// (lost, sent) per window.
    counts: Vec<(usize, usize)>,
    loss: Vec<f64>,
    /// Median RTT of the window's replies; `None` without replies.
    delay_ms: Vec<Option<f64>>,
    /// Mean |ΔRTT| between consecutive replies; `None` with fewer than two.
    jitter_ms: Vec<Option<f64>>,
    sent: usize,
    received: usize,
    /// Compared windows with at least one reply.
    windows_with_replies: usize,
}

impl Series {
    fn push(&mut self, w: &Window) {
        let got = w.rtts_ms.len().min(w.sent);
        self.sent += w.sent;
        self.received += got;
        self.counts.push((w.sent - got, w.sent));
        self.loss.push(1.0 - got as f64 / w.sent.max(1) as f64);
        let delay = median(&w.rtts_ms);
        self.windows_with_replies += usize::from(delay.is_some());
        self.delay_ms.push(delay);
        self.jitter_ms.push((w.rtts_ms.len() >= 2).then(|| {
            let sum: f64 = w.rtts_ms.windows(2).map(|x| (x[1] - x[0]).abs()).sum();
            sum / (w.rtts_ms.len() - 1) as f64
        }));
    }
}

/// The windows that count for both arms (rule 1), as their starts in µs after the grid's origin,
/// and both arms' series over them.
fn aligned_series(
    platform: &ArmSamples,
    control: &ArmSamples,
    window_us: u64,
) -> (Vec<u64>, Series, Series) {
    let origin = platform
        .packets
        .iter()
        .chain(&control.packets)
        .map(|p| p.sent_us)
        .min()
        .unwrap_or(0);
    let pw = windows_of(platform, origin, window_us);
    let cw = windows_of(control, origin, window_us);
    let (pmin, cmin) = (
        min_probes(platform, &pw, window_us),
        min_probes(control, &cw, window_us),
    );
    let (mut starts_us, mut ps, mut cs) = (Vec::new(), Series::default(), Series::default());
    for (k, p) in &pw {
        if let Some(c) = cw.get(k) {
            if p.sent >= pmin && c.sent >= cmin {
                starts_us.push(k * window_us);
                ps.push(p);
                cs.push(c);
            }
        }
    }
    (starts_us, ps, cs)
}

// ---------------------------------------------------------------------------------------------
// The verdict
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Metric {
    Loss,
    Delay,
    Jitter,
    /// Delay worse on the platform arm from some window on (the onset scan).
    Onset,
}

impl Metric {
    const ALL: [Metric; 4] = [Metric::Loss, Metric::Delay, Metric::Jitter, Metric::Onset];

    fn floor(self, cfg: &VerdictConfig) -> f64 {
        match self {
            Metric::Loss => cfg.loss_floor,
            Metric::Delay | Metric::Onset => cfg.delay_floor_ms,
            Metric::Jitter => cfg.jitter_floor_ms,
        }
    }

    /// The arm's per-window values of the metric, windows without a value left out.
    fn series(self, s: &Series) -> Vec<f64> {
        match self {
            Metric::Loss => s.loss.clone(),
            Metric::Delay | Metric::Onset => s.delay_ms.iter().flatten().copied().collect(),
            Metric::Jitter => s.jitter_ms.iter().flatten().copied().collect(),
        }
    }

    fn rule(self) -> VerdictRule {
        match self {
            Metric::Loss => VerdictRule::Loss,
            Metric::Delay => VerdictRule::Delay,
            Metric::Jitter => VerdictRule::Jitter,
            Metric::Onset => VerdictRule::Onset,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Metric::Loss => "loss",
            Metric::Delay => "delay",
            Metric::Jitter => "RTT variation",
            Metric::Onset => "delay from a point in the test on",
        }
    }

    /// A value of the metric, for a sentence.
    fn value(self, v: f64) -> String {
        match self {
            Metric::Loss => format!("{:.1} %", v * 100.0),
            Metric::Delay | Metric::Jitter | Metric::Onset => format!("{v:.1} ms"),
        }
    }

    /// A difference of two values of the metric, for a sentence.
    fn amount(self, d: f64) -> String {
        match self {
            Metric::Loss => format!("{:.1} percentage points", d * 100.0),
            Metric::Delay | Metric::Jitter | Metric::Onset => format!("{d:.1} ms"),
        }
    }

    /// "<amount> more <what>", for a sentence.
    fn more(self, d: f64) -> String {
        let what = match self {
            Metric::Loss => "loss",
            Metric::Delay => "delay (median RTT)",
            Metric::Jitter => "RTT variation (mean |ΔRTT|)",
            Metric::Onset => "delay (median RTT) from the onset on",
        };
        format!("{} more {what}", self.amount(d))
    }
}

/// One metric judged: the reported comparison plus what the rules need.
#[derive(Clone, Copy, Debug)]
struct Judged {
    metric: Metric,
    cmp: ArmComparison,
    /// Platform arm worse at `alpha` after Holm (one-sided).
    sig: bool,
    /// Effect (platform − control) at least the metric's floor.
    big: bool,
    /// Control arm worse at `alpha` (one-sided, Bonferroni over the family): for the reason.
    control_worse: bool,
}

impl Judged {
    fn medians(&self) -> String {
        format!(
            "{} vs {} median per window",
            self.metric.value(self.cmp.platform_median),
            self.metric.value(self.cmp.control_median)
        )
    }
}

/// Per compared window, platform minus control, where both arms have a value.
fn paired(p: &[Option<f64>], c: &[Option<f64>]) -> Vec<f64> {
    p.iter()
        .zip(c)
        .filter_map(|(a, b)| Some((*a)? - (*b)?))
        .filter(|d| d.is_finite())
        .collect()
}

/// The onset scan's seed: fixed, so a verdict is a function of the data (the scan is exact
/// up to [`stats::SCAN_EXACT_MAX_N`] windows and Monte Carlo beyond).
const ONSET_SEED: u64 = 0x0c0a_11ed;
/// Monte Carlo sign flips of the onset scan past the exact size.
const ONSET_SAMPLES: usize = 20_000;
/// Fewest windows after an onset (a shorter tail is noise, not an onset).
const ONSET_MIN_TAIL: usize = 3;

/// One-sided p-values (platform worse, control worse) and the effect of each metric, then
/// Holm over the family.
fn judge_metrics(
    starts_us: &[u64],
    p: &Series,
    c: &Series,
    cfg: &VerdictConfig,
) -> ([Judged; 4], Option<Onset>) {
    let strata: Vec<stats::Stratum> = p
        .counts
        .iter()
        .zip(&c.counts)
        .map(|(&(pl, pn), &(cl, cn))| (pl as u64, pn as u64, cl as u64, cn as u64))
        .collect();
    let swapped: Vec<stats::Stratum> = strata.iter().map(|&(a, b, c, d)| (c, d, a, b)).collect();
    let pooled = |s: &Series| {
        let (lost, sent) = s
            .counts
            .iter()
            .fold((0, 0), |a, &(l, n)| (a.0 + l, a.1 + n));
        lost as f64 / sent.max(1) as f64
    };
    let some = |v: &[f64]| v.iter().map(|&x| Some(x)).collect::<Vec<_>>();
    let loss = paired(&some(&p.loss), &some(&c.loss));
    let delay = paired(&p.delay_ms, &c.delay_ms);
    let jitter = paired(&p.jitter_ms, &c.jitter_ms);
    let negate = |v: &[f64]| v.iter().map(|x| -x).collect::<Vec<_>>();
    let scan = stats::sign_flip_max_scan(&delay, ONSET_MIN_TAIL, ONSET_SAMPLES, ONSET_SEED);
    let onset_effect = mean(delay.get(scan.split..).unwrap_or(&[])).unwrap_or(0.0);
    // (p worse, p control worse, effect) per metric, in Metric::ALL order.
    let raw = [
        // Both must hold (an intersection-union test, valid when either is): the stratified
        // test uses every probe but assumes probes exchangeable within a window; the paired
        // windows hold when losses come in bursts within one arm (Gilbert loss per flow).
        (
            stats::stratified_exact_greater(&strata)
                .max(stats::wilcoxon_signed_rank_exact_greater(&loss)),
            stats::stratified_exact_greater(&swapped)
                .max(stats::wilcoxon_signed_rank_exact_greater(&negate(&loss))),
            pooled(p) - pooled(c),
        ),
        (
            stats::wilcoxon_signed_rank_exact_greater(&delay),
            stats::wilcoxon_signed_rank_exact_greater(&negate(&delay)),
            mean(&delay).unwrap_or(0.0),
        ),
        (
            stats::wilcoxon_signed_rank_exact_greater(&jitter),
            stats::wilcoxon_signed_rank_exact_greater(&negate(&jitter)),
            mean(&jitter).unwrap_or(0.0),
        ),
        (scan.p_value, 1.0, onset_effect),
    ];
    let adjusted = stats::holm(&raw.map(|r| r.0));
    let family = raw.len() as f64;
    let judged = std::array::from_fn(|i| {
        let metric = Metric::ALL[i];
        let (a, b) = (metric.series(p), metric.series(c));
        let (_, p_control, effect) = raw[i];
        let effect = if effect.is_finite() { effect } else { 0.0 };
        let finite = |x: Option<f64>| x.filter(|v| v.is_finite()).unwrap_or(0.0);
        let p_value = adjusted
            .get(i)
            .copied()
            .filter(|v| v.is_finite())
            .unwrap_or(1.0);
        let sig = p_value < cfg.alpha;
        let big = effect >= metric.floor(cfg);
        Judged {
            metric,
            cmp: ArmComparison {
                platform_median: finite(median(&a)),
                control_median: finite(median(&b)),
                p_value,
                effect,
                significant: sig && big,
            },
            sig,
            big,
            control_worse: family * p_control < cfg.alpha,
        }
    });
    // Where the scan put the onset: published when it ran on enough windows and found a delay
    // increase that matters (≥ the delay floor), else it would only describe noise.
    let onset = (delay.len() > ONSET_MIN_TAIL && onset_effect >= cfg.delay_floor_ms).then(|| {
        // Windows with a paired delay, in order: map the split back to its window's start.
        let starts: Vec<u64> = p
            .delay_ms
            .iter()
            .zip(&c.delay_ms)
            .zip(starts_us)
            .filter(|((a, b), _)| a.is_some() && b.is_some())
            .map(|(_, &t)| t)
            .collect();
        let at_us = starts.get(scan.split).copied().unwrap_or(0);
        Onset {
            at_ms: u32::try_from(at_us / 1000).unwrap_or(u32::MAX),
            p_value: adjusted[3],
            effect: onset_effect,
        }
    });
    (judged, onset)
}

/// Judges one test from its two arms; the module docs give the rules.
pub fn judge(
    platform: &ArmSamples,
    control: &ArmSamples,
    cfg: &VerdictConfig,
) -> (Verdict, VerdictDetail) {
    let window_us = u64::from(cfg.window_ms.max(1)) * 1000;
    let (starts_us, p, c) = aligned_series(platform, control, window_us);
    let windows = u32::try_from(p.loss.len()).unwrap_or(u32::MAX);
    let (judged, onset) = judge_metrics(&starts_us, &p, &c, cfg);
    let (verdict, rule, reason) = decide(&judged, &p, &c, windows, cfg);
    let [loss, delay, jitter, _] = judged;
    let detail = VerdictDetail {
        method: format!(
            "one-sided, platform worse: loss by an exact test stratified by {} ms window over \
             every probe; median rtt and mean |drtt| per window by exact wilcoxon signed-rank \
             on paired windows; a delay onset scan calibrated by sign flips within windows; \
             holm over 4 at alpha {}; effects: pooled loss difference, mean paired difference; \
             floors {} loss, {} ms delay, {} ms jitter; at least {} windows",
            cfg.window_ms,
            cfg.alpha,
            cfg.loss_floor,
            cfg.delay_floor_ms,
            cfg.jitter_floor_ms,
            cfg.min_windows
        ),
        window_ms: cfg.window_ms,
        windows,
        loss: loss.cmp,
        delay: delay.cmp,
        jitter: jitter.cmp,
        reason,
        rule: Some(rule),
        onset,
        relay: None,
    };
    (verdict, detail)
}

/// Rules 3–8, in order.
fn decide(
    judged: &[Judged; 4],
    p: &Series,
    c: &Series,
    windows: u32,
    cfg: &VerdictConfig,
) -> (Verdict, VerdictRule, String) {
    let min_windows = cfg.min_windows.max(1);
    if windows < min_windows {
        return (
            Verdict::Inconclusive,
            VerdictRule::TooLittleData,
            format!(
                "Only {windows} windows of {} ms held probes of both arms and at least \
                 {min_windows} are needed, so the test was too short to judge.",
                cfg.window_ms
            ),
        );
    }
    if p.received == 0 && c.received == 0 {
        return (
            Verdict::Inconclusive,
            VerdictRule::NothingAnswered,
            "Neither arm got a single probe back, so the reflector was unreachable for all \
             traffic and there is nothing to compare."
                .into(),
        );
    }
    if p.received == 0 {
        return if c.windows_with_replies >= min_windows as usize {
            (
                Verdict::Differentiated,
                VerdictRule::Blocked,
                format!(
                    "The platform arm got none of its {} probes back while the control arm got \
                     {} of {} back, so the platform's traffic was blocked.",
                    p.sent, c.received, c.sent
                ),
            )
        } else {
            (
                Verdict::Inconclusive,
                VerdictRule::TooLittleData,
                format!(
                    "The platform arm got nothing back but the control arm got replies in only {} \
                     of {windows} windows, too little to tell blocking from an outage.",
                    c.windows_with_replies
                ),
            )
        };
    }
    if c.received == 0 {
        return (
            Verdict::Inconclusive,
            VerdictRule::NoReference,
            "The control arm got nothing back while the platform arm did, so there is no \
             reference to judge the platform arm against."
                .into(),
        );
    }
    let strongest = |f: &dyn Fn(&Judged) -> bool| {
        judged
            .iter()
            .filter(|j| f(j))
            .min_by(|a, b| a.cmp.p_value.total_cmp(&b.cmp.p_value))
            .copied()
    };
    if let Some(j) = strongest(&|j| j.cmp.significant) {
        let also: Vec<&str> = judged
            .iter()
            .filter(|o| o.cmp.significant && o.metric != j.metric)
            .map(|o| o.metric.name())
            .collect();
        let also = if also.is_empty() {
            String::new()
        } else {
            format!(", and was worse on {} too", also.join(" and "))
        };
        return (
            Verdict::Differentiated,
            j.metric.rule(),
            format!(
                "The platform arm had {} than its control ({}, p = {:.1e} after Holm over 4 \
                 tests){also}.",
                j.metric.more(j.cmp.effect),
                j.medians(),
                j.cmp.p_value
            ),
        );
    }
    if let Some(j) = strongest(&|j| j.big && !j.sig) {
        return (
            Verdict::Inconclusive,
            VerdictRule::Suggestive,
            format!(
                "The platform arm had {} than its control ({}), but over {windows} windows that \
                 is not significant (p = {:.3} after Holm, below {} needed).",
                j.metric.more(j.cmp.effect),
                j.medians(),
                j.cmp.p_value,
                cfg.alpha
            ),
        );
    }
    let [loss, _, jitter, _] = judged;
    let lossy = loss.cmp.platform_median >= cfg.degraded_loss
        && loss.cmp.control_median >= cfg.degraded_loss;
    let jittery = jitter.cmp.platform_median >= cfg.degraded_jitter_ms
        && jitter.cmp.control_median >= cfg.degraded_jitter_ms;
    if lossy || jittery {
        let what = if lossy { loss } else { jitter };
        return (
            Verdict::Inconclusive,
            VerdictRule::DegradedAlike,
            format!(
                "Both arms were degraded alike ({} {}), and a path this bad for all traffic can \
                 hide what it does to the platform's, so neither verdict can be given.",
                what.metric.name(),
                what.medians()
            ),
        );
    }
    if let Some(j) = strongest(&|j| j.sig && !j.big) {
        // A real difference too small to matter to a call (two paths of slightly different
        // length, a framing the kernel handles a few µs slower): not differentiation, and
        // calling it inconclusive would flood clean networks with inconclusive verdicts.
        return (
            Verdict::None,
            VerdictRule::NotWorse,
            format!(
                "The platform arm had significantly more {} than its control (p = {:.1e}) but \
                 only by {}, less than the floor of {} that matters to a call.",
                j.metric.name(),
                j.cmp.p_value,
                j.metric.amount(j.cmp.effect),
                j.metric.amount(j.metric.floor(cfg))
            ),
        );
    }
    let control_worse = judged.iter().any(|j| j.control_worse);
    (
        Verdict::None,
        VerdictRule::NotWorse,
        format!(
            "Over {windows} windows the platform arm was not worse than its control by a \
             significant and meaningful amount in loss, delay or RTT variation{}.",
            if control_worse {
                " (the control arm was significantly worse instead)"
            } else {
                ""
            }
        ),
    )
}

/// One arm of a call test as the verdict sees it: what it recorded and what became of it.
#[derive(Clone, Copy, Debug)]
pub struct ArmEvidence<'a> {
    pub record: &'a crate::metrics::StreamRecord,
    pub outcome: StreamOutcome,
    /// With `outcome = dark`: when the final silence began (agent clock, µs).
    pub dark_from_us: Option<u64>,
}

/// Everything a call test measured, for [`judge_call`].
#[derive(Clone, Copy, Debug)]
pub struct CallEvidence<'a> {
    pub platform: ArmEvidence<'a>,
    pub control: ArmEvidence<'a>,
    pub relay: Option<ArmEvidence<'a>>,
    pub relay_reference: Option<ArmEvidence<'a>>,
}

/// Fewest replies the control arm must get after the platform arm went dark for the silence to
/// be the platform's alone (rule C2).
pub const CUT_MIN_CONTROL_REPLIES: usize = 5;

/// Judges a whole call test. Before the statistics of [`judge`], the outcomes of the arms
/// decide, in this order (a blocked call is the finding, not an error):
///
/// - C1. Either arm refused by the reflector (busy, rate limit) → `inconclusive`
///   ([`VerdictRule::ReflectorBusy`]): a loaded reflector says nothing about the network.
/// - C2. Control arm blocked or silent throughout → `inconclusive`: with the platform silent too,
///   [`VerdictRule::NothingAnswered`]; otherwise [`VerdictRule::NoReference`]. Never `none`,
///   never counted as platform blocking.
/// - C3. Platform handshake unanswered, or answered but no probe ever came back, while the
///   control arm got replies → `differentiated` ([`VerdictRule::Blocked`]).
/// - C4. Platform arm dark from t (at least `DARK_MIN_US` of silence to the end) while the
///   control arm answered at least half its probes sent after t, and at least
///   [`CUT_MIN_CONTROL_REPLIES`] → `differentiated` ([`VerdictRule::Cut`]). A control arm that
///   went dark too is an outage of the path, judged by the statistics below.
/// - C5. The platform's relay answered none of its STUN requests while the reference on the
///   reflector host answered at least half of its own → `differentiated`
///   ([`VerdictRule::PlatformServersUnreachable`]).
/// - Otherwise the statistics of [`judge`] (rules 1–8).
pub fn judge_call(call: &CallEvidence<'_>, cfg: &VerdictConfig) -> (Verdict, VerdictDetail) {
    let (p, c) = (&call.platform, &call.control);
    let (verdict, mut detail) = judge(&samples_of(p.record), &samples_of(c.record), cfg);
    let relay = relay_comparison(call);
    detail.relay = relay;
    let replies =
        |a: &ArmEvidence<'_>| a.record.probes.iter().filter(|x| x.reply.is_some()).count();
    let (p_got, c_got) = (replies(p), replies(c));
    let mut decide = |v: Verdict, rule: VerdictRule, reason: String| {
        detail.rule = Some(rule);
        detail.reason = reason;
        (v, detail.clone())
    };
    if p.outcome == StreamOutcome::Refused || c.outcome == StreamOutcome::Refused {
        return decide(
            Verdict::Inconclusive,
            VerdictRule::ReflectorBusy,
            "The reflector was busy: it refused a session (it is at capacity, for everyone or for this network, or rate-limiting), which says nothing about the network."
                .into(),
        );
    }
    if c.outcome == StreamOutcome::Blocked || c_got == 0 {
        return if p_got == 0 {
            decide(
                Verdict::Inconclusive,
                VerdictRule::NothingAnswered,
                "Neither arm got an answer from the reflector, so the path to it was down for all traffic and there is nothing to compare."
                    .into(),
            )
        } else {
            decide(
                Verdict::Inconclusive,
                VerdictRule::NoReference,
                "The control arm got no answer while the platform arm did, so there is no reference to judge the platform arm against."
                    .into(),
            )
        };
    }
    if p_got == 0 {
        let how = if p.outcome == StreamOutcome::Blocked {
            "The platform arm's handshake went unanswered".to_string()
        } else {
            format!(
                "The platform arm's handshake was answered but none of its {} probes came back",
                p.record.probes.len()
            )
        };
        return decide(
            Verdict::Differentiated,
            VerdictRule::Blocked,
            format!(
                "{how} while the control arm got {c_got} of {} back: the platform's traffic was blocked.",
                c.record.probes.len()
            ),
        );
    }
    if let (StreamOutcome::Dark, Some(t)) = (p.outcome, p.dark_from_us) {
        let after: Vec<_> = c.record.probes.iter().filter(|x| x.sent_us >= t).collect();
        let answered = after.iter().filter(|x| x.reply.is_some()).count();
        if answered >= CUT_MIN_CONTROL_REPLIES && 2 * answered >= after.len() {
            let start = p.record.probes.first().map_or(t, |x| x.sent_us);
            return decide(
                Verdict::Differentiated,
                VerdictRule::Cut,
                format!(
                    "The platform arm went dark {:.1} s into the call and never recovered, while the control arm kept answering ({answered} of its {} probes after that): the platform's call was cut.",
                    t.saturating_sub(start) as f64 / 1e6,
                    after.len()
                ),
            );
        }
    }
    // Past the rules a loaded reflector cannot fake (no answers at all, a cut), the statistics
    // would read the reflector's load as the network's.
    let loaded = [p, c]
        .into_iter()
        .find_map(|arm| crate::metrics::record_loaded(arm.record));
    if let Some((drops, residence)) = loaded {
        return decide(
            Verdict::Inconclusive,
            VerdictRule::ReflectorLoaded,
            format!(
                "The reflector was loaded during the test (its kernel dropped {} datagrams; it held 1 % of replies {residence:.1} ms or longer, the bound is {} ms), so what the arms measured describes the reflector, not the network.",
                drops,
                crate::metrics::LOADED_RESIDENCE_P99_MS
            ),
        );
    }
    if let Some(r) = relay {
        if r.relay_answered == 0
            && r.reference_sent > 0
            && 2 * r.reference_answered >= r.reference_sent
        {
            return decide(
                Verdict::Differentiated,
                VerdictRule::PlatformServersUnreachable,
                format!(
                    "The platform's own server answered none of {} STUN requests while our reference server answered {} of {}: the platform servers are unreachable.",
                    r.relay_sent, r.reference_answered, r.reference_sent
                ),
            );
        }
    }
    (verdict, detail)
}

/// The relay and its reference as counts of STUN requests sent and answered.
fn relay_comparison(call: &CallEvidence<'_>) -> Option<callwatch_proto::report::RelayComparison> {
    let counts = |a: &ArmEvidence<'_>| {
        let sent = a.record.probes.len();
        let answered = a.record.probes.iter().filter(|x| x.reply.is_some()).count();
        (sent, answered)
    };
    let (rs, ra) = counts(call.relay.as_ref()?);
    let (fs, fa) = counts(call.relay_reference.as_ref()?);
    let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
    Some(callwatch_proto::report::RelayComparison {
        relay_sent: n(rs),
        relay_answered: n(ra),
        reference_sent: n(fs),
        reference_answered: n(fa),
        p_value: crate::stats::fisher_exact_greater(
            (rs - ra) as u64,
            rs as u64,
            (fs - fa) as u64,
            fs as u64,
        ),
    })
}

/// The samples the verdict needs from one arm's record: send time and round-trip time (with the
/// reflector's hold time removed) of each probe.
pub fn samples_of(rec: &crate::metrics::StreamRecord) -> ArmSamples {
    ArmSamples {
        interval_us: rec.interval_us,
        packets: rec
            .probes
            .iter()
            .map(|p| PacketSample {
                sent_us: p.sent_us,
                rtt_us: p.reply.map(|r| {
                    let hold = r.reflector_tx_us.saturating_sub(r.reflector_rx_us);
                    r.received_us.saturating_sub(p.sent_us).saturating_sub(hold)
                }),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A probe's fate: `None` lost, `Some(ms)` its RTT.
    type Fate<'a> = &'a mut dyn FnMut(&mut StdRng, usize) -> Option<f64>;

    /// Probes in a default (15 s) test at 20 ms.
    const PROBES: usize = 750;

    /// `n` probes every 20 ms (15 s = 750 probes), fates drawn from `fate(rng, probe index)`.
    fn arm_with(rng: &mut StdRng, n: usize, fate: Fate) -> ArmSamples {
        ArmSamples {
            interval_us: 20_000,
            packets: (0..n)
                .map(|i| PacketSample {
                    sent_us: 1_000_000 + i as u64 * 20_000,
                    rtt_us: fate(rng, i).map(|ms| (ms.max(0.0) * 1e3) as u64),
                })
                .collect(),
        }
    }

    /// The shared process of the simulations: Bernoulli `loss`, RTT 40 ms ± `jitter_ms`
    /// (uniform).
    fn arm(rng: &mut StdRng, n: usize, loss: f64, jitter_ms: f64) -> ArmSamples {
        impaired(rng, n, loss, jitter_ms, 0.0, 0.0)
    }

    /// The shared process plus platform-only extra loss and extra ± jitter (uniform,
    /// zero-mean).
    fn impaired(
        rng: &mut StdRng,
        n: usize,
        loss: f64,
        jitter_ms: f64,
        extra_loss: f64,
        extra_jitter_ms: f64,
    ) -> ArmSamples {
        arm_with(rng, n, &mut |rng, _| {
            let lost = rng.gen::<f64>() < loss;
            let lost_extra = rng.gen::<f64>() < extra_loss;
            let rtt = 40.0
                + rng.gen_range(-1.0..=1.0) * jitter_ms
                + rng.gen_range(-1.0..=1.0) * extra_jitter_ms;
            (!lost && !lost_extra).then_some(rtt)
        })
    }

    #[test]
    fn identical_arms_are_none() {
        let cfg = VerdictConfig::default();
        let clean = |seed| arm(&mut StdRng::seed_from_u64(seed), PROBES, 0.0, 1.0);
        let (v, d) = judge(&clean(2), &clean(2), &cfg);
        assert_eq!(v, Verdict::None, "{}", d.reason);
        assert_eq!(d.windows, 30);
        assert_eq!(d.loss.p_value, 1.0, "all windows lossless: ties only");
        assert_eq!(d.loss.effect, 0.0);
        // Two independent draws of one clean process, too.
        let (v, d) = judge(&clean(3), &clean(4), &cfg);
        assert_eq!(v, Verdict::None, "{}", d.reason);
    }

    #[test]
    fn platform_only_loss_or_jitter_is_differentiated() {
        let mut rng = StdRng::seed_from_u64(1);
        let cfg = VerdictConfig::default();
        // 10 % extra random loss over 10 s.
        let lossy = impaired(&mut rng, PROBES, 0.0, 5.0, 0.10, 0.0);
        let (v, d) = judge(&lossy, &arm(&mut rng, PROBES, 0.0, 5.0), &cfg);
        assert_eq!(v, Verdict::Differentiated, "{d:?}");
        assert!(d.loss.significant && d.loss.effect > 0.05, "{d:?}");
        assert!(d.reason.contains("loss"), "{}", d.reason);
        // 20 ms extra jitter (zero-mean: the median RTT does not move, the variation does).
        let jittery = impaired(&mut rng, PROBES, 0.0, 5.0, 0.0, 20.0);
        let (v, d) = judge(&jittery, &arm(&mut rng, PROBES, 0.0, 5.0), &cfg);
        assert_eq!(v, Verdict::Differentiated, "{d:?}");
        assert!(d.jitter.significant && !d.delay.significant, "{d:?}");
        // 20 ms of added queueing delay (a shaper's queue).
        let delayed = arm_with(&mut rng, PROBES, &mut |rng, _| {
            Some(60.0 + rng.gen_range(-5.0..=5.0))
        });
        let (v, d) = judge(&delayed, &arm(&mut rng, PROBES, 0.0, 5.0), &cfg);
        assert_eq!(v, Verdict::Differentiated, "{d:?}");
        assert!(d.delay.significant && (d.delay.effect - 20.0).abs() < 1.0);
        // Platform-only loss on top of a lossy path is still found.
        let lossy = impaired(&mut rng, PROBES, 0.05, 5.0, 0.20, 0.0);
        let (v, d) = judge(&lossy, &arm(&mut rng, PROBES, 0.05, 5.0), &cfg);
        assert_eq!(v, Verdict::Differentiated, "{d:?}");
    }

    #[test]
    fn control_worse_is_not_differentiation() {
        let mut rng = StdRng::seed_from_u64(5);
        let cfg = VerdictConfig::default();
        let bad_control = impaired(&mut rng, PROBES, 0.0, 1.0, 0.03, 0.0);
        let (v, d) = judge(&arm(&mut rng, PROBES, 0.0, 1.0), &bad_control, &cfg);
        assert_eq!(v, Verdict::None, "{}", d.reason);
        assert!(d.loss.effect < 0.0 && !d.loss.significant);
        assert!(d.reason.contains("control arm was significantly worse"));
    }

    #[test]
    fn a_significant_difference_below_its_floor_is_none_unless_the_path_is_degraded() {
        let cfg = VerdictConfig::default();
        let mut rng = StdRng::seed_from_u64(6);
        // The platform arm's path is 2 ms longer: significant over 10 windows, below the 5 ms
        // floor.
        let longer = |rng: &mut StdRng, loss: f64| {
            arm_with(rng, PROBES, &mut |rng, _| {
                (rng.gen::<f64>() >= loss).then(|| 42.0 + rng.gen_range(-1.0..=1.0))
            })
        };
        let (v, d) = judge(
            &longer(&mut rng, 0.0),
            &arm(&mut rng, PROBES, 0.0, 1.0),
            &cfg,
        );
        assert_eq!(v, Verdict::None, "{}", d.reason);
        assert!(d.delay.p_value < cfg.alpha && !d.delay.significant, "{d:?}");
        assert!(d.reason.contains("less than the floor"), "{}", d.reason);
        // The same on a path that loses 10 % of everything: still degraded alike.
        let (v, d) = judge(
            &longer(&mut rng, 0.10),
            &arm(&mut rng, PROBES, 0.10, 1.0),
            &cfg,
        );
        assert_eq!(v, Verdict::Inconclusive, "{}", d.reason);
    }

    #[test]
    fn alike_degradation_is_not_differentiated() {
        let cfg = VerdictConfig::default();
        let mut counts = [0; 3];
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (v, d) = judge(
                &arm(&mut rng, PROBES, 0.10, 5.0),
                &arm(&mut rng, PROBES, 0.10, 5.0),
                &cfg,
            );
            assert_ne!(v, Verdict::Differentiated, "seed {seed}: {d:?}");
            counts[v as usize] += 1;
        }
        // Both arms lose 10 %: "degraded alike" or "a difference ≥ 1 point, not significant";
        // never `none`, which would claim more than such a path lets the test see.
        assert_eq!(counts[Verdict::None as usize], 0, "{counts:?}");
        let mut rng = StdRng::seed_from_u64(9);
        let (v, d) = judge(
            &arm(&mut rng, PROBES, 0.0, 60.0),
            &arm(&mut rng, PROBES, 0.0, 60.0),
            &cfg,
        );
        assert_ne!(v, Verdict::Differentiated, "{d:?}");
    }

    #[test]
    fn blocking_nothing_back_and_short_tests() {
        let mut rng = StdRng::seed_from_u64(3);
        let cfg = VerdictConfig::default();
        let blocked = arm(&mut rng, PROBES, 1.0, 0.0);
        let clean = arm(&mut rng, PROBES, 0.0, 1.0);
        let (v, d) = judge(&blocked, &clean, &cfg);
        assert_eq!(v, Verdict::Differentiated, "{}", d.reason);
        assert!(d.reason.contains("blocked"), "{}", d.reason);
        assert!(d.loss.significant && d.loss.effect == 1.0, "{d:?}");
        assert_eq!((d.loss.platform_median, d.loss.control_median), (1.0, 0.0));
        assert_eq!(d.delay.platform_median, 0.0, "no replies: 0, not NaN");
        // Both blocked, or only the control: nothing to judge against.
        let (v, d) = judge(&blocked, &arm(&mut rng, PROBES, 1.0, 0.0), &cfg);
        assert_eq!(v, Verdict::Inconclusive, "{}", d.reason);
        let (v, d) = judge(&clean, &blocked, &cfg);
        assert_eq!(v, Verdict::Inconclusive, "{}", d.reason);
        // Blocked platform against a control that got back only a few replies: an outage.
        let mostly_out = arm_with(&mut rng, PROBES, &mut |_, i| (i < 100).then_some(40.0));
        let (v, d) = judge(&blocked, &mostly_out, &cfg);
        assert_eq!(v, Verdict::Inconclusive, "{}", d.reason);
        // 4 windows (2 s): too short, whatever the data.
        let (v, d) = judge(
            &arm(&mut rng, 100, 0.5, 1.0),
            &arm(&mut rng, 100, 0.0, 1.0),
            &cfg,
        );
        assert_eq!(v, Verdict::Inconclusive, "{}", d.reason);
        assert_eq!(d.windows, 4);
        let (v, _) = judge(&blocked, &arm(&mut rng, 100, 0.0, 1.0), &cfg);
        assert_eq!(v, Verdict::Inconclusive);
        let (v, d) = judge(&ArmSamples::default(), &ArmSamples::default(), &cfg);
        assert_eq!(v, Verdict::Inconclusive);
        assert_eq!(d.windows, 0);
        let (v, _) = judge(&clean, &ArmSamples::default(), &cfg);
        assert_eq!(v, Verdict::Inconclusive);
    }

    #[test]
    fn windows_are_aligned_and_ragged_ends_dropped() {
        let cfg = VerdictConfig::default();
        let mut rng = StdRng::seed_from_u64(11);
        // 15.04 s: the 31st window would hold 2 probes of 25 — not a data point.
        let a = arm(&mut rng, PROBES + 2, 0.0, 1.0);
        let b = arm(&mut rng, PROBES + 2, 0.0, 1.0);
        assert_eq!(judge(&a, &b, &cfg).1.windows, 30);
        // The control arm starts 9.5 s late: only the 5.5 shared seconds are compared.
        let mut late = arm(&mut rng, PROBES, 0.0, 1.0);
        for p in &mut late.packets {
            p.sent_us += 9_500_000;
        }
        let (v, d) = judge(&a, &late, &cfg);
        assert_eq!((v, d.windows), (Verdict::Inconclusive, 11));
        // Order of the probes does not matter.
        let mut shuffled = a.clone();
        shuffled.packets.reverse();
        assert_eq!(judge(&shuffled, &b, &cfg), judge(&a, &b, &cfg));
        // An unknown interval falls back on the arms' own per-window counts.
        let mut unknown = a.clone();
        unknown.interval_us = 0;
        assert_eq!(judge(&unknown, &b, &cfg).1.windows, 30);
    }

    #[test]
    fn the_typical_window_is_the_median_count_not_the_smallest() {
        // 777 probes every 20 ms = 31 windows of 25 and a 32nd of 2. With an even number of
        // windows the smallest count (2) sits at index 0 of the sorted counts and the median (25)
        // at index 16: the bar is half of 25, rounded up, so the 32nd window does not count.
        let mut rng = StdRng::seed_from_u64(12);
        let a = arm(&mut rng, PROBES + 27, 0.0, 1.0);
        let windows = windows_of(&a, 1_000_000, 500_000);
        assert_eq!(windows.len(), 32);
        assert_eq!((windows[&0].sent, windows[&31].sent), (25, 2));
        assert_eq!(min_probes(&a, &windows, 500_000), 13);
        let mut unknown = a.clone();
        unknown.interval_us = 0;
        assert_eq!(min_probes(&unknown, &windows, 500_000), 13);
        let b = arm(&mut rng, PROBES + 27, 0.0, 1.0);
        let cfg = VerdictConfig::default();
        assert_eq!(judge(&a, &b, &cfg).1.windows, 31);
        assert_eq!(judge(&unknown, &b, &cfg).1.windows, 31);
    }

    #[test]
    fn rtt_variation_is_the_mean_absolute_step_between_consecutive_replies() {
        // Platform RTTs alternate 40, 44, 40, … ms: each window's 25 replies make 24 steps of
        // 4 ms, so its variation is 24·4 / 24 = 4 ms; the control's constant 40 ms gives 0.
        let mut rng = StdRng::seed_from_u64(13);
        let platform = arm_with(&mut rng, PROBES, &mut |_, i| {
            Some(if i % 2 == 0 { 40.0 } else { 44.0 })
        });
        let control = arm_with(&mut rng, PROBES, &mut |_, _| Some(40.0));
        let (v, d) = judge(&platform, &control, &VerdictConfig::default());
        assert_eq!(
            (
                d.jitter.platform_median,
                d.jitter.control_median,
                d.jitter.effect
            ),
            (4.0, 0.0, 4.0),
            "{d:?}"
        );
        // 4 ms in all 30 windows is above the 3 ms floor and significant (p = 2⁻³⁰ before Holm).
        assert_eq!(v, Verdict::Differentiated, "{}", d.reason);
        assert_eq!(d.rule, Some(VerdictRule::Jitter));
    }

    #[test]
    fn the_onset_is_placed_at_its_window_start() {
        // The platform arm's RTT goes from 40 to 80 ms at probe 250 = 5 s into the test (window
        // 10 of 500 ms); the control stays at 40 ms. Paired delay differences: 0 in windows
        // 0–9, 40 in 10–29. T_k = Σ_{i≥k} d_i / √(30 − k) is 800/√(30 − k) up to k = 10 and
        // 40·√(30 − k) after, largest at k = 10 (800/√20 ≈ 178.9, against 174.6 at k = 9 and
        // 174.4 at k = 11): the onset is window 10, which starts 10 · 500 ms after the first probe.
        let mut rng = StdRng::seed_from_u64(14);
        let platform = arm_with(&mut rng, PROBES, &mut |_, i| {
            Some(if i < 250 { 40.0 } else { 80.0 })
        });
        let control = arm_with(&mut rng, PROBES, &mut |_, _| Some(40.0));
        let (v, d) = judge(&platform, &control, &VerdictConfig::default());
        assert_eq!(v, Verdict::Differentiated, "{}", d.reason);
        let onset = d.onset.expect("a 40 ms step is an onset");
        assert_eq!((onset.at_ms, onset.effect), (5000, 40.0), "{onset:?}");
        // The mean paired delay difference over all 30 windows: 20 · 40 / 30.
        assert!((d.delay.effect - 800.0 / 30.0).abs() < 1e-9, "{d:?}");
        // A window without replies on one arm has no paired delay: the scan runs over the 29
        // windows left (9 zeros, then 20 × 40 ms), puts the split at index 9, and that index
        // maps back to window 10, not to window 9.
        let gap = arm_with(&mut rng, PROBES, &mut |_, i| match i {
            50..75 => None,
            0..250 => Some(40.0),
            _ => Some(80.0),
        });
        let (v, d) = judge(&gap, &control, &VerdictConfig::default());
        assert_eq!(v, Verdict::Differentiated, "{}", d.reason);
        let onset = d.onset.expect("a 40 ms step is an onset");
        assert_eq!((onset.at_ms, onset.effect), (5000, 40.0), "{onset:?}");
        // An onset needs more than 3 paired windows: 3 windows of 40 ms more get none, 4 get one
        // at the first window.
        let short = |rng: &mut StdRng, n: usize, ms: f64| arm_with(rng, n, &mut |_, _| Some(ms));
        let cfg = VerdictConfig {
            min_windows: 1,
            ..VerdictConfig::default()
        };
        let (_, d) = judge(&short(&mut rng, 75, 80.0), &short(&mut rng, 75, 40.0), &cfg);
        assert_eq!((d.windows, d.onset), (3, None));
        let (_, d) = judge(
            &short(&mut rng, 100, 80.0),
            &short(&mut rng, 100, 40.0),
            &cfg,
        );
        let onset = d.onset.expect("4 windows of 40 ms more");
        assert_eq!((d.windows, onset.at_ms, onset.effect), (4, 0, 40.0));
    }

    #[test]
    fn the_blocked_reason_counts_the_compared_probes() {
        // The platform arm loses everything; the control arm loses every tenth probe, 75 of its
        // 750 (30 full windows, all compared).
        let mut rng = StdRng::seed_from_u64(15);
        let blocked = arm_with(&mut rng, PROBES, &mut |_, _| None);
        let control = arm_with(&mut rng, PROBES, &mut |_, i| (i % 10 != 0).then_some(40.0));
        let (v, d) = judge(&blocked, &control, &VerdictConfig::default());
        assert_eq!(
            (v, d.rule),
            (Verdict::Differentiated, Some(VerdictRule::Blocked))
        );
        assert!(
            d.reason
                .contains("none of its 750 probes back while the control arm got 675 of 750 back"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn reasons_name_the_metric_and_give_its_figures() {
        let cfg = VerdictConfig::default();
        let mut rng = StdRng::seed_from_u64(16);
        let clean = |rng: &mut StdRng, ms: f64| arm_with(rng, PROBES, &mut |_, _| Some(ms));
        // The platform arm loses every fifth probe, 5 of each window's 25 (20 %); the control
        // none. Pooled: 150 of 750 against 0 of 750, 20 points.
        let lossy = arm_with(&mut rng, PROBES, &mut |_, i| (i % 5 != 0).then_some(40.0));
        let (v, d) = judge(&lossy, &clean(&mut rng, 40.0), &cfg);
        assert_eq!(
            (v, d.rule),
            (Verdict::Differentiated, Some(VerdictRule::Loss))
        );
        assert!(
            d.reason.starts_with(
                "The platform arm had 20.0 percentage points more loss than its control \
                 (20.0 % vs 0.0 % median per window, p = "
            ),
            "{}",
            d.reason
        );
        // Holm runs over the four p-values (loss, delay, RTT variation, onset).
        assert!(
            d.reason.ends_with(" after Holm over 4 tests)."),
            "{}",
            d.reason
        );
        // RTT 40 ms for 5 s, then 80 ms (see the_onset_is_placed_at_its_window_start): the delay
        // test is the strongest (p = 2⁻²⁰ before Holm), the onset scan is significant too.
        // Median per window: 80 ms of 20 windows and 40 ms of 10, against 40 ms.
        let step = arm_with(&mut rng, PROBES, &mut |_, i| {
            Some(if i < 250 { 40.0 } else { 80.0 })
        });
        let (v, d) = judge(&step, &clean(&mut rng, 40.0), &cfg);
        assert_eq!(
            (v, d.rule),
            (Verdict::Differentiated, Some(VerdictRule::Delay))
        );
        assert!(
            d.reason.starts_with(
                "The platform arm had 26.7 ms more delay (median RTT) than its control \
                 (80.0 ms vs 40.0 ms median per window, p = "
            ),
            "{}",
            d.reason
        );
        assert!(
            d.reason
                .ends_with("), and was worse on delay from a point in the test on too."),
            "{}",
            d.reason
        );
        // Both arms lose every tenth probe: 3 of 25 in even windows, 2 of 25 in odd ones, a
        // median of (12 % + 8 %) / 2 = 10 % each, no difference at all.
        let tenth =
            |rng: &mut StdRng| arm_with(rng, PROBES, &mut |_, i| (i % 10 != 0).then_some(40.0));
        let (v, d) = judge(&tenth(&mut rng), &tenth(&mut rng), &cfg);
        assert_eq!(
            (v, d.rule),
            (Verdict::Inconclusive, Some(VerdictRule::DegradedAlike))
        );
        assert!(
            d.reason.starts_with(
                "Both arms were degraded alike (loss 10.0 % vs 10.0 % median per window)"
            ),
            "{}",
            d.reason
        );
        // A path 2 ms longer in every window: significant, below the 5 ms floor.
        let (v, d) = judge(&clean(&mut rng, 42.0), &clean(&mut rng, 40.0), &cfg);
        assert_eq!((v, d.rule), (Verdict::None, Some(VerdictRule::NotWorse)));
        assert!(
            d.reason.starts_with(
                "The platform arm had significantly more delay than its control (p = "
            ),
            "{}",
            d.reason
        );
        assert!(
            d.reason.ends_with(
                " but only by 2.0 ms, less than the floor of 5.0 ms that matters to a call."
            ),
            "{}",
            d.reason
        );
    }

    #[test]
    fn significance_is_strictly_below_alpha() {
        // 30 windows, every paired RTT variation difference 4 ms (see
        // rtt_variation_is_the_mean_absolute_step_between_consecutive_replies): the exact
        // signed-rank p is 2⁻³⁰ (one arrangement of 2³⁰ signs), and Holm multiplies the smallest
        // of four by 4, so the adjusted p is 2⁻²⁸ exactly.
        let alternating = |rng: &mut StdRng| {
            arm_with(rng, PROBES, &mut |_, i| {
                Some(if i % 2 == 0 { 40.0 } else { 44.0 })
            })
        };
        let steady = |rng: &mut StdRng| arm_with(rng, PROBES, &mut |_, _| Some(40.0));
        let mut rng = StdRng::seed_from_u64(17);
        let (p, c) = (alternating(&mut rng), steady(&mut rng));
        let at = 2f64.powi(-28);
        let (v, d) = judge(&p, &c, &VerdictConfig::default());
        assert_eq!((v, d.jitter.p_value), (Verdict::Differentiated, at));
        // At alpha = p the difference is not significant: 4 ms ≥ the floor, so suggestive.
        let cfg = VerdictConfig {
            alpha: at,
            ..VerdictConfig::default()
        };
        let (v, d) = judge(&p, &c, &cfg);
        assert_eq!(
            (v, d.rule),
            (Verdict::Inconclusive, Some(VerdictRule::Suggestive))
        );
        assert!(!d.jitter.significant, "{d:?}");
        // The other way round the control arm is the worse one, at p = 2⁻³⁰ one-sided, which the
        // reason reports when 4 · p (Bonferroni over the four tests) is below alpha.
        let (v, d) = judge(&c, &p, &VerdictConfig::default());
        assert_eq!(v, Verdict::None, "{}", d.reason);
        assert!(
            d.reason
                .ends_with("RTT variation (the control arm was significantly worse instead)."),
            "{}",
            d.reason
        );
        let cfg = VerdictConfig {
            alpha: 4.0 * 2f64.powi(-30),
            ..VerdictConfig::default()
        };
        let (v, d) = judge(&c, &p, &cfg);
        assert_eq!(v, Verdict::None, "{}", d.reason);
        assert_eq!(
            d.reason,
            "Over 30 windows the platform arm was not worse than its control by a significant \
             and meaningful amount in loss, delay or RTT variation."
        );
    }

    #[test]
    fn degraded_alike_needs_both_arms_degraded() {
        let cfg = VerdictConfig::default();
        let mut rng = StdRng::seed_from_u64(18);
        // RTTs alternating 40 and 100 ms: a variation of 60 ms, twice the 30 ms bar.
        let jumpy = |rng: &mut StdRng| {
            arm_with(rng, PROBES, &mut |_, i| {
                Some(if i % 2 == 0 { 40.0 } else { 100.0 })
            })
        };
        let steady = |rng: &mut StdRng| arm_with(rng, PROBES, &mut |_, _| Some(40.0));
        let (v, d) = judge(&jumpy(&mut rng), &jumpy(&mut rng), &cfg);
        assert_eq!(
            (v, d.rule),
            (Verdict::Inconclusive, Some(VerdictRule::DegradedAlike))
        );
        assert!(
            d.reason.starts_with(
                "Both arms were degraded alike (RTT variation 60.0 ms vs 60.0 ms median per window)"
            ),
            "{}",
            d.reason
        );
        // Only the control arm degraded (variation, or 8–12 % loss): the platform arm is not
        // worse, and that is `none`, not "degraded alike".
        let (v, d) = judge(&steady(&mut rng), &jumpy(&mut rng), &cfg);
        assert_eq!((v, d.rule), (Verdict::None, Some(VerdictRule::NotWorse)));
        let lossy = arm_with(&mut rng, PROBES, &mut |_, i| (i % 10 != 0).then_some(40.0));
        let (v, d) = judge(&steady(&mut rng), &lossy, &cfg);
        assert_eq!((v, d.rule), (Verdict::None, Some(VerdictRule::NotWorse)));
    }

    #[test]
    fn twelve_windows_are_enough_to_judge() {
        // 300 probes = 12 windows, the platform arm 40 ms slower in each: the exact signed-rank
        // p of 12 equal differences is 2⁻¹², as is the exact onset scan's (only the unflipped
        // series reaches its maximum); Holm makes them 4 · 2⁻¹² ≈ 0.00098 < 0.002.
        let mut rng = StdRng::seed_from_u64(19);
        let slow = arm_with(&mut rng, 300, &mut |_, _| Some(80.0));
        let fast = arm_with(&mut rng, 300, &mut |_, _| Some(40.0));
        let (v, d) = judge(&slow, &fast, &VerdictConfig::default());
        assert_eq!(
            (v, d.windows),
            (Verdict::Differentiated, 12),
            "{}",
            d.reason
        );
        assert_eq!(d.delay.p_value, 4.0 * 2f64.powi(-12));
        // One window fewer is too little data.
        let (v, d) = judge(
            &arm_with(&mut rng, 275, &mut |_, _| Some(80.0)),
            &arm_with(&mut rng, 275, &mut |_, _| Some(40.0)),
            &VerdictConfig::default(),
        );
        assert_eq!(
            (v, d.windows, d.rule),
            (Verdict::Inconclusive, 11, Some(VerdictRule::TooLittleData))
        );
    }

    #[test]
    fn nothing_back_on_both_arms_or_on_the_control_are_told_apart() {
        let cfg = VerdictConfig::default();
        let mut rng = StdRng::seed_from_u64(20);
        let dead = |rng: &mut StdRng| arm_with(rng, PROBES, &mut |_, _| None);
        let live = |rng: &mut StdRng| arm_with(rng, PROBES, &mut |_, _| Some(40.0));
        let (v, d) = judge(&dead(&mut rng), &dead(&mut rng), &cfg);
        assert_eq!(
            (v, d.rule),
            (Verdict::Inconclusive, Some(VerdictRule::NothingAnswered))
        );
        let (v, d) = judge(&live(&mut rng), &dead(&mut rng), &cfg);
        assert_eq!(
            (v, d.rule),
            (Verdict::Inconclusive, Some(VerdictRule::NoReference))
        );
    }

    /// A record of `n` probes every 20 ms, those for which `answered(i)` holds answered after
    /// 40 ms.
    fn record(n: usize, answered: impl Fn(usize) -> bool) -> crate::metrics::StreamRecord {
        crate::metrics::StreamRecord {
            interval_us: 20_000,
            probes: (0..n)
                .map(|i| {
                    let sent_us = 1_000_000 + i as u64 * 20_000;
                    crate::metrics::ProbeRecord {
                        seq: i as u32,
                        scheduled_us: sent_us,
                        sent_us,
                        len: 172,
                        reply: answered(i).then_some(crate::metrics::ReplyRecord {
                            reflector_rx_us: 0,
                            reflector_tx_us: 0,
                            received_us: sent_us + 40_000,
                        }),
                    }
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_refused_session_on_either_arm_is_a_busy_reflector() {
        let clean = record(PROBES, |_| true);
        let arm = |outcome| ArmEvidence {
            record: &clean,
            outcome,
            dark_from_us: None,
        };
        let call = |p, c| CallEvidence {
            platform: arm(p),
            control: arm(c),
            relay: None,
            relay_reference: None,
        };
        let cfg = VerdictConfig::default();
        let (v, d) = judge_call(
            &call(StreamOutcome::Measured, StreamOutcome::Measured),
            &cfg,
        );
        assert_eq!((v, d.rule), (Verdict::None, Some(VerdictRule::NotWorse)));
        for (p, c) in [
            (StreamOutcome::Refused, StreamOutcome::Measured),
            (StreamOutcome::Measured, StreamOutcome::Refused),
        ] {
            let (v, d) = judge_call(&call(p, c), &cfg);
            assert_eq!(
                (v, d.rule),
                (Verdict::Inconclusive, Some(VerdictRule::ReflectorBusy)),
                "{p:?} {c:?}"
            );
        }
    }

    /// One arm's evidence, not dark.
    fn evidence(record: &crate::metrics::StreamRecord, outcome: StreamOutcome) -> ArmEvidence<'_> {
        ArmEvidence {
            record,
            outcome,
            dark_from_us: None,
        }
    }

    /// A call of two arms, and a relay with its reference if given.
    fn call<'a>(
        platform: ArmEvidence<'a>,
        control: ArmEvidence<'a>,
        relay: Option<(ArmEvidence<'a>, ArmEvidence<'a>)>,
    ) -> CallEvidence<'a> {
        CallEvidence {
            platform,
            control,
            relay: relay.map(|r| r.0),
            relay_reference: relay.map(|r| r.1),
        }
    }

    #[test]
    fn judge_call_outcome_rules_in_order() {
        let cfg = VerdictConfig::default();
        let clean = record(PROBES, |_| true);
        let dead = record(PROBES, |_| false);
        let judged = |p, c| judge_call(&call(p, c, None), &cfg);
        use StreamOutcome::{Blocked, Dark, Measured};
        // C2: a control arm blocked (even with replies on record) or silent is no reference.
        for control in [evidence(&clean, Blocked), evidence(&dead, Measured)] {
            let (v, d) = judged(evidence(&clean, Measured), control);
            assert_eq!(
                (v, d.rule),
                (Verdict::Inconclusive, Some(VerdictRule::NoReference))
            );
            let (v, d) = judged(evidence(&dead, Measured), control);
            assert_eq!(
                (v, d.rule),
                (Verdict::Inconclusive, Some(VerdictRule::NothingAnswered))
            );
        }
        // C3: the platform arm got nothing back, its handshake unanswered or not.
        let (v, d) = judged(evidence(&dead, Blocked), evidence(&clean, Measured));
        assert_eq!(
            (v, d.rule),
            (Verdict::Differentiated, Some(VerdictRule::Blocked))
        );
        assert_eq!(
            d.reason,
            "The platform arm's handshake went unanswered while the control arm got 750 of 750 \
             back: the platform's traffic was blocked."
        );
        let (_, d) = judged(evidence(&dead, Measured), evidence(&clean, Measured));
        assert_eq!(d.rule, Some(VerdictRule::Blocked));
        assert_eq!(
            d.reason,
            "The platform arm's handshake was answered but none of its 750 probes came back \
             while the control arm got 750 of 750 back: the platform's traffic was blocked."
        );
        // C4: dark from probe k on (sent at 1 s + k · 20 ms), against a control arm that answered
        // `control(i)` of its probes.
        let cut = |k: usize, control: &dyn Fn(usize) -> bool| {
            let p = record(PROBES, |i| i < k);
            let c = record(PROBES, control);
            let platform = ArmEvidence {
                record: &p,
                outcome: Dark,
                dark_from_us: Some(1_000_000 + k as u64 * 20_000),
            };
            let (_, d) = judge_call(&call(platform, evidence(&c, Measured), None), &cfg);
            (d.rule, d.reason)
        };
        let (rule, reason) = cut(500, &|_| true);
        assert_eq!(rule, Some(VerdictRule::Cut));
        assert_eq!(
            reason,
            "The platform arm went dark 10.0 s into the call and never recovered, while the \
             control arm kept answering (250 of its 250 probes after that): the platform's call \
             was cut."
        );
        // Exactly half of the probes after t, and exactly 5: a cut; 4 of 8, or 5 of 20: not.
        assert_eq!(
            cut(740, &|i| i < 740 || i % 2 == 0).0,
            Some(VerdictRule::Cut)
        );
        assert_ne!(
            cut(742, &|i| i < 742 || i % 2 == 0).0,
            Some(VerdictRule::Cut)
        );
        assert_ne!(cut(730, &|i| i < 735).0, Some(VerdictRule::Cut));
    }

    #[test]
    fn platform_servers_unreachable_needs_a_reference_that_answered_half() {
        let cfg = VerdictConfig::default();
        let clean = record(PROBES, |_| true);
        // 10 STUN requests each: the relay answered `relay`, the reference `reference` of them.
        let judged = |relay: usize, reference: (usize, usize)| {
            let r = record(10, |i| i < relay);
            let f = record(reference.0, |i| i < reference.1);
            let measured = |record| evidence(record, StreamOutcome::Measured);
            judge_call(
                &call(
                    measured(&clean),
                    measured(&clean),
                    Some((measured(&r), measured(&f))),
                ),
                &cfg,
            )
        };
        let (v, d) = judged(0, (10, 5));
        assert_eq!(
            (v, d.rule),
            (
                Verdict::Differentiated,
                Some(VerdictRule::PlatformServersUnreachable)
            )
        );
        assert_eq!(
            d.reason,
            "The platform's own server answered none of 10 STUN requests while our reference \
             server answered 5 of 10: the platform servers are unreachable."
        );
        // A reference that answered fewer than half, a relay that answered one, no reference
        // requests at all: the statistics decide (two identical clean arms: none).
        for (relay, reference) in [(0, (10, 4)), (1, (10, 10)), (0, (0, 0))] {
            let (v, d) = judged(relay, reference);
            assert_eq!(
                (v, d.rule),
                (Verdict::None, Some(VerdictRule::NotWorse)),
                "{relay} {reference:?}"
            );
        }
        // The comparison is reported either way: 8 of 10 lost against 2 of 10, one-sided Fisher
        // P(X ≥ 8) for X ~ Hypergeom(20 requests, 10 lost, 10 drawn) =
        // (C(10,8)·C(10,2) + C(10,9)·C(10,1) + C(10,10)) / C(20,10) = 2126 / 184756.
        let (_, d) = judged(2, (10, 8));
        let r = d.relay.expect("a relay and its reference");
        assert_eq!(
            (
                r.relay_sent,
                r.relay_answered,
                r.reference_sent,
                r.reference_answered
            ),
            (10, 2, 10, 8)
        );
        assert!((r.p_value - 2126.0 / 184_756.0).abs() < 1e-12, "{r:?}");
    }

    /// The 95 % Clopper–Pearson upper bound of a rate measured over `n` tests.
    fn upper_bound(rate: f64, n: u64) -> f64 {
        crate::stats::clopper_pearson((rate * n as f64).round() as u64, n, 0.95).1
    }

    /// Differentiated fraction of `tests` seeded tests from two arm generators.
    fn flagged_rate(
        tests: u64,
        seed0: u64,
        mut gen: impl FnMut(&mut StdRng, u64) -> (ArmSamples, ArmSamples),
    ) -> f64 {
        let cfg = VerdictConfig::default();
        let mut flagged = 0;
        for i in 0..tests {
            let mut rng = StdRng::seed_from_u64(seed0 + i);
            let (p, c) = gen(&mut rng, i);
            if judge(&p, &c, &cfg).0 == Verdict::Differentiated {
                flagged += 1;
            }
        }
        flagged as f64 / tests as f64
    }

    #[test]
    fn false_positive_rate_is_at_most_one_percent() {
        // 1000 10 s tests, both arms from one process: 0 %, 2 % or 10 % Bernoulli loss,
        // RTT 40 ± 5 ms. Observed: 0 of 1000 (0.0 %).
        let rate = flagged_rate(1000, 42, |rng, i| {
            let loss = [0.0, 0.02, 0.10][i as usize % 3];
            (arm(rng, PROBES, loss, 5.0), arm(rng, PROBES, loss, 5.0))
        });
        let upper = upper_bound(rate, 1000);
        eprintln!("false-positive rate, shared Bernoulli loss: {rate} (upper bound {upper:.4})");
        assert!(upper <= 0.01, "{rate}, upper bound {upper}");
    }

    #[test]
    fn false_positive_rate_stays_low_on_harder_shared_processes() {
        // Where a window-level test could go wrong: rare loss (ties everywhere), bursty loss in
        // each arm of its own (Gilbert p = 0.02, q = 0.3: 6 % loss in bursts of 3.3 probes), shared congestion that
        // changes every second (0–20 % loss, 0–30 ms queue), heavy jitter that makes all three
        // metrics noisy, and the shortest test that may be judged (12 windows). 1000 tests each.
        // Observed over 1000 tests each (500 ms windows, α = 0.2 %): 0.5 % loss 0, per-arm
        // Gilbert 0.1 %, shared congestion 0, 3 % loss ± 40 ms 0.3 % (the highest: there the
        // floors do not screen out chance differences and α is all that is left), 10 % loss
        // ± 40 ms 0, 12 windows 0. (With the per-probe loss test alone, per-arm Gilbert gave
        // 8 %: hence the paired-window guard.)
        let gilbert = |rng: &mut StdRng| {
            let mut lost = false;
            arm_with(rng, PROBES, &mut move |rng, _| {
                lost = if lost {
                    rng.gen::<f64>() >= 0.3
                } else {
                    rng.gen::<f64>() < 0.02
                };
                (!lost).then(|| 40.0 + rng.gen_range(-5.0..=5.0))
            })
        };
        type Gen = Box<dyn Fn(&mut StdRng) -> (ArmSamples, ArmSamples)>;
        let cases: [(&str, Gen); 6] = [
            (
                "0.5 % loss",
                Box::new(|rng| (arm(rng, PROBES, 0.005, 5.0), arm(rng, PROBES, 0.005, 5.0))),
            ),
            ("gilbert", Box::new(move |rng| (gilbert(rng), gilbert(rng)))),
            (
                "shared congestion",
                Box::new(|rng| {
                    let level: Vec<(f64, f64)> = (0..15)
                        .map(|_| (rng.gen_range(0.0..0.2), rng.gen_range(0.0..30.0)))
                        .collect();
                    let mut fate = |rng: &mut StdRng, i: usize| {
                        let (loss, queue) = level[(i / 50).min(14)];
                        (rng.gen::<f64>() >= loss).then(|| 40.0 + queue + rng.gen_range(-5.0..=5.0))
                    };
                    (
                        arm_with(rng, PROBES, &mut fate),
                        arm_with(rng, PROBES, &mut fate),
                    )
                }),
            ),
            (
                "3 % loss, ±40 ms",
                Box::new(|rng| (arm(rng, PROBES, 0.03, 40.0), arm(rng, PROBES, 0.03, 40.0))),
            ),
            (
                "10 % loss, ±40 ms",
                Box::new(|rng| (arm(rng, PROBES, 0.10, 40.0), arm(rng, PROBES, 0.10, 40.0))),
            ),
            (
                "12 windows (6 s), 5 % loss",
                Box::new(|rng| (arm(rng, 300, 0.05, 5.0), arm(rng, 300, 0.05, 5.0))),
            ),
        ];
        // The published claim: the 95 % Clopper–Pearson upper bound of each rate is ≤ 1 %.
        let n = 1000;
        for (k, (name, gen)) in cases.iter().enumerate() {
            let rate = flagged_rate(n, 10_000 * k as u64 + 7, |rng, _| gen(rng));
            let upper = upper_bound(rate, n);
            eprintln!("false-positive rate, {name}: {rate} (upper 95 % bound {upper:.4})");
            assert!(upper <= 0.01, "{name}: {rate}, upper bound {upper}");
        }
    }

    #[test]
    fn power_over_fifteen_second_tests() {
        // Platform-only impairment on top of a shared process, 1000 tests each.
        // Observed differentiated fractions over RTT 40 ± 5 ms and no shared loss (500 ms
        // windows): extra loss 1 % → 4 %, 2 % → 69.5 %, 3 % → 97.7 %, 5 % → 100 %, 10 % and
        // 20 % → 100 %; ± 20 ms extra (zero-mean) jitter → 100 %. On a lossy path: +5 % over 2 %
        // shared loss → 79.6 %, +10 % over 10 % → 87.2 % (the rest mostly `inconclusive`, not
        // `none`). The published target is ≥ 95 % at 5 % platform-only loss.
        let power = |shared_loss: f64, extra_loss: f64, extra_jitter: f64, seed0| {
            flagged_rate(1000, seed0, |rng, _| {
                (
                    impaired(rng, PROBES, shared_loss, 5.0, extra_loss, extra_jitter),
                    arm(rng, PROBES, shared_loss, 5.0),
                )
            })
        };
        let loss: Vec<f64> = [0.01, 0.02, 0.03, 0.05, 0.10, 0.20]
            .iter()
            .zip(1..)
            .map(|(&l, k)| power(0.0, l, 0.0, 100_000 * k))
            .collect();
        let jitter = power(0.0, 0.0, 20.0, 900_000);
        let on_lossy = [
            power(0.02, 0.05, 0.0, 1_000_000),
            power(0.10, 0.10, 0.0, 1_100_000),
        ];
        eprintln!(
            "power: loss 1/2/3/5/10/20 % = {loss:?}, ±20 ms jitter = {jitter}, \
             +5 % over 2 % / +10 % over 10 % = {on_lossy:?}"
        );
        // At the published bound, less three binomial standard errors of 1000 tests.
        let margin = 3.0 * (0.95f64 * 0.05 / 1000.0).sqrt();
        assert!(loss[3..].iter().all(|&r| r >= 0.95 - margin), "{loss:?}");
        assert!(jitter >= 0.95 - margin, "{jitter}");
        assert!(
            loss[1] < loss[2] && loss[2] < loss[3],
            "power grows with loss: {loss:?}"
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_figures_are_finite(
            a in proptest::collection::vec(
                (proptest::prelude::any::<u64>(), proptest::option::of(proptest::prelude::any::<u64>())),
                0..200,
            ),
            b in proptest::collection::vec(
                (0u64..20_000_000, proptest::option::of(0u64..5_000_000)),
                0..600,
            ),
            interval in proptest::prelude::any::<u64>(),
            window_ms in proptest::prelude::any::<u32>(),
        ) {
            let to = |v: Vec<(u64, Option<u64>)>| ArmSamples {
                interval_us: interval,
                packets: v.into_iter().map(|(s, r)| PacketSample { sent_us: s, rtt_us: r }).collect(),
            };
            for cfg in [VerdictConfig::default(), VerdictConfig { window_ms, min_windows: 0, ..VerdictConfig::default() }] {
                for (p, c) in [(to(a.clone()), to(b.clone())), (to(b.clone()), to(a.clone())), (to(b.clone()), to(b.clone()))] {
                    let (_, d) = judge(&p, &c, &cfg);
                    for m in [d.loss, d.delay, d.jitter] {
                        proptest::prop_assert!((0.0..=1.0).contains(&m.p_value));
                        proptest::prop_assert!(m.effect.is_finite());
                        proptest::prop_assert!(m.platform_median.is_finite() && m.control_median.is_finite());
                    }
                    proptest::prop_assert!(!d.reason.is_empty());
                    // The texts a collector bounds (#15 item 7), with at least twice the room.
                    let max = callwatch_proto::schema::MAX_SENTENCE_LEN / 2;
                    proptest::prop_assert!(d.reason.len() <= max, "{}", d.reason);
                    proptest::prop_assert!(d.method.len() <= max, "{}", d.method);
                }
            }
        }
    }
}
