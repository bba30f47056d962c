//! Onsets and recoveries of differential treatment, per (country, ASN, platform) and per
//! (country, platform): "where, since when, and is it over?".
//!
//! # The evidence
//!
//! Each test of a platform ends with a verdict that compares the platform arm with the control
//! arm of the same test (`differentiated`, `inconclusive`, `none`). Where a network treats the
//! two arms alike, a test is found `differentiated` with probability at most α = 0.2 % (the
//! verdict's bound; docs/DETECTION.md measures ≤ 1 % as the 95 % upper bound of every null model
//! of its catalogue). A restriction makes most tests of the platform `differentiated` (a blocked
//! call is one too). The detector reads, per series and UTC hour, the fine cells' platform-arm
//! counts after the per-agent and per-prefix caps ([`HourEvidence`]): tests judged, found
//! differentiated, blocked calls among them, and the distinct agents and network prefixes behind
//! each, so every event rests on the same cells the aggregates publish.
//!
//! # The method: two Bernoulli CUSUMs
//!
//! Each judged test adds its log-likelihood ratio of "differentiated with probability
//! [`Detector::p1`]" against "with probability [`Detector::p0`]" (the null's bound):
//! `ln(p1/p0)` for a differentiated test, `ln((1−p1)/(1−p0))` for any other. An hour adds the
//! sum of its tests; an hour without tests adds nothing (a gap is no evidence either way).
//!
//! - **Onset.** `S ← max(0, S + llr)`. An onset is declared at the first hour where `S ≥
//!   h_onset` *and* the tests since `S` last stood at 0 were found differentiated for at least
//!   `k` distinct agents on `k` distinct network prefixes (the publication threshold: one
//!   volunteer's broken router, or k−1 of them, never makes an event).
//! - **Recovery**, while an onset is open: `R ← max(0, R − llr)`, declared at `R ≥ h_recovery`
//!   with at least `k` distinct agents on `k` prefixes judged since `R` last stood at 0.
//!
//! **When it began.** The hour a change began is the maximum-likelihood change point of the
//! statistic that fired: the first hour of the run that reached the threshold (`L(τ) =
//! Σ_{t=τ}^{now} llr_t` is largest there). Its interval is every hour τ, back to
//! [`Detector::lookback_hours`], whose `L(τ)` lies within [`Detector::support_drop`] (natural
//! log units) of the largest: a likelihood support interval. Hours without tests lie on a
//! plateau of `L`, so a gap before an onset widens the interval across the gap: the data cannot
//! say when within a gap it began.
//!
//! **Calibration.** `p0`, `p1` and the thresholds are fixed here and measured by
//! `callwatch-events` (tests/src/bin): false onsets per 100 null network-months under several
//! null models, false recoveries under sustained restrictions, and the detection delay and
//! onset-hour error of simulated restrictions (docs/EVENTS.md).

use super::cell::{CellKey, CellState};
use super::codes::country_code;
use callwatch_proto::{Platform, Role};
use std::collections::{BTreeMap, BTreeSet};

/// A series the detector watches: a platform in a country, on one network or on all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub country: [u8; 2],
    /// `None`: every network of the country together.
    pub asn: Option<u32>,
    pub platform: Platform,
}

impl SeriesKey {
    pub fn country_str(&self) -> &str {
        // Constructed only from ASCII letters (country_code).
        std::str::from_utf8(&self.country).unwrap_or("ZZ")
    }

    /// Whether a series is watched at all: platforms with a control arm, in a known country.
    pub fn watched(&self) -> bool {
        self.platform != Platform::Generic && &self.country != b"ZZ"
    }

    /// The series of a country and platform, on one network or on all.
    pub fn new(country: &str, asn: Option<u32>, platform: Platform) -> SeriesKey {
        SeriesKey {
            country: country_code(country),
            asn,
            platform,
        }
    }
}

/// What one hour of one series says: the platform arms of its tests, after the caps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HourEvidence {
    /// Tests with a verdict.
    pub judged: u64,
    /// Of them, found differentiated.
    pub differentiated: u64,
    /// Of those, blocked calls.
    pub blocked: u64,
    /// Distinct agents (8-byte key prefixes) and network prefixes behind the judged tests.
    pub agents: BTreeSet<[u8; 8]>,
    pub prefixes: BTreeSet<[u8; 8]>,
    /// Differentiated tests per (agent, prefix).
    pub flags: BTreeMap<([u8; 8], [u8; 8]), u64>,
}

impl HourEvidence {
    /// The evidence of one fine cell (its platform arm; other arms give nothing).
    pub fn of_cell(key: &CellKey, state: &CellState) -> HourEvidence {
        if key.arm != Role::Platform {
            return HourEvidence::default();
        }
        let v = &state.verdicts;
        HourEvidence {
            judged: v.judged(),
            differentiated: v.differentiated.min(v.judged()),
            blocked: v.blocked.min(v.differentiated),
            agents: state.agents.iter().collect(),
            prefixes: state.prefixes.iter().collect(),
            flags: state.flagged.clone(),
        }
    }

    pub fn merge(&mut self, o: &HourEvidence) {
        self.judged = self.judged.saturating_add(o.judged);
        self.differentiated = self.differentiated.saturating_add(o.differentiated);
        self.blocked = self.blocked.saturating_add(o.blocked);
        self.agents.extend(o.agents.iter().copied());
        self.prefixes.extend(o.prefixes.iter().copied());
        for (pair, n) in &o.flags {
            let mine = self.flags.entry(*pair).or_default();
            *mine = mine.saturating_add(*n);
        }
    }
}

/// Every watched series' hours, from fine cells: each (country, ASN, platform) and each
/// (country, platform), hour by hour. Cells of unwatched series (generic, country ZZ) and
/// control arms are skipped.
#[derive(Clone, Debug, Default)]
pub struct EvidenceBook {
    pub series: BTreeMap<SeriesKey, BTreeMap<i64, HourEvidence>>,
}

impl EvidenceBook {
    pub fn add_cell(&mut self, key: &CellKey, state: &CellState) {
        if key.arm == Role::Platform {
            self.add(key, HourEvidence::of_cell(key, state));
        }
    }

    /// Adds one network's hour (the key's hour, country, ASN and platform; its arm and kind
    /// are not read) to its network's series and its country's.
    pub fn add(&mut self, key: &CellKey, ev: HourEvidence) {
        if ev.judged == 0 {
            return;
        }
        let network = SeriesKey {
            country: key.country,
            asn: Some(key.asn),
            platform: key.platform,
        };
        if !network.watched() {
            return;
        }
        let country = SeriesKey {
            asn: None,
            ..network
        };
        for s in [network, country] {
            self.series
                .entry(s)
                .or_default()
                .entry(key.hour)
                .or_default()
                .merge(&ev);
        }
    }

    /// Drops every hour at or after `hour` (before the cells from it are read again).
    pub fn forget_from(&mut self, hour: i64) {
        for hours in self.series.values_mut() {
            hours.split_off(&hour);
        }
        self.series.retain(|_, h| !h.is_empty());
    }

    /// The first hour any series has.
    pub fn first_hour(&self) -> Option<i64> {
        self.series
            .values()
            .filter_map(|h| h.keys().next().copied())
            .min()
    }
}

/// The earliest test hour of the reports stored since it was last taken: where the event
/// detector must read again (a volunteer's queue uploaded after days offline, a carried file, a
/// backfill). Shared by ingest, which notes, and the detector, which takes.
#[derive(Debug)]
pub struct Touched(std::sync::atomic::AtomicI64);

impl Default for Touched {
    fn default() -> Self {
        Touched(std::sync::atomic::AtomicI64::new(i64::MAX))
    }
}

impl Touched {
    /// A report of this test hour was stored.
    pub fn note(&self, hour: i64) {
        self.0.fetch_min(hour, std::sync::atomic::Ordering::Relaxed);
    }

    /// The earliest hour noted since the last take, if any; starts afresh.
    pub fn take(&self) -> Option<i64> {
        let h = self.0.swap(i64::MAX, std::sync::atomic::Ordering::Relaxed);
        (h != i64::MAX).then_some(h)
    }
}

/// Onset or recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventKind {
    Onset,
    Recovery,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Onset => "onset",
            EventKind::Recovery => "recovery",
        }
    }
}

/// Whether the differential treatment an event belongs to still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventStatus {
    /// An onset without a recovery yet.
    Open,
    /// An onset that recovered, or a recovery.
    Ended,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Open => "open",
            EventStatus::Ended => "ended",
        }
    }
}

/// Shares of judged tests over a stretch of hours.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Shares {
    pub judged: u64,
    /// Distinct agents and network prefixes behind the judged tests.
    pub agents: usize,
    pub prefixes: usize,
    /// `None` when no test was judged.
    pub differentiated: Option<f64>,
    pub blocked: Option<f64>,
}

/// One detected change.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub series: SeriesKey,
    pub kind: EventKind,
    /// The hour the change began (hours since the epoch): the maximum-likelihood change point.
    pub began: i64,
    /// Its support interval, first and last hour (inclusive).
    pub began_lo: i64,
    pub began_hi: i64,
    /// The hour the detector declared it (the last hour it read then).
    pub detected: i64,
    /// Distinct agents and network prefixes behind it: for an onset those found differentiated
    /// since the change began, for a recovery those judged.
    pub agents: usize,
    pub prefixes: usize,
    /// Before: the `lookback` hours before `began_lo` (not before the previous change); after:
    /// from `began` to the next change or the end of the data.
    pub before: Shares,
    pub after: Shares,
    pub status: EventStatus,
    /// For an onset that ended, the hour its recovery began.
    pub ended: Option<i64>,
    /// The hours `before` and `after` cover: `[before_from, began_lo)` and `[began, after_to)`.
    pub before_from: i64,
    pub after_to: i64,
}

/// The detector's constants (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detector {
    /// The null's bound on a test's chance of being found differentiated.
    pub p0: f64,
    /// The rate a restriction is expected to reach at least.
    pub p1: f64,
    pub h_onset: f64,
    pub h_recovery: f64,
    /// Distinct agents and prefixes an event needs (the publication k).
    pub k: usize,
    /// The support interval's drop from the largest log-likelihood.
    pub support_drop: f64,
    /// How far back an interval and a "before" reach.
    pub lookback_hours: i64,
    /// The most one hour adds to either statistic (either way): a change needs at least
    /// `h / max_hour` hours of evidence, so a single bad hour never makes an event.
    pub max_hour: f64,
}

impl Default for Detector {
    fn default() -> Self {
        Detector {
            p0: 0.01,
            p1: 0.25,
            h_onset: 9.5,
            h_recovery: 12.0,
            k: 3,
            support_drop: 3.0,
            lookback_hours: 7 * 24,
            max_hour: 4.0,
        }
    }
}

/// Per-hour CUSUM increment of an onset statistic.
#[derive(Clone, Copy, Debug)]
struct Llr {
    flagged: f64,
    clean: f64,
}

impl Llr {
    fn of(d: &Detector) -> Llr {
        Llr {
            flagged: (d.p1 / d.p0).ln(),
            clean: ((1.0 - d.p1) / (1.0 - d.p0)).ln(),
        }
    }

    fn hour(&self, e: &Robust) -> f64 {
        let clean = e.judged.saturating_sub(e.differentiated);
        e.differentiated as f64 * self.flagged + clean as f64 * self.clean
    }
}

/// An hour's evidence without the differentiated tests of its day's `k − 1` most flagging
/// agents and `k − 1` most flagging prefixes so far (counted from the day's first hour up to
/// this one, so the detector stays causal). Keys rotate daily and prefix tags are keyed per
/// day, so a volunteer is one agent and one prefix within a day: no `k − 1` volunteers (broken
/// routers, a Sybil on a few prefixes) ever move the statistic, whatever they upload.
#[derive(Clone, Debug, Default)]
struct Robust {
    judged: u64,
    differentiated: u64,
    agents: BTreeSet<[u8; 8]>,
    prefixes: BTreeSet<[u8; 8]>,
}

/// The day's discount in one hour, from the day's differentiated tests so far per (agent,
/// prefix): which prefixes, then which agents, are left out.
///
/// Prefixes first: the `n` with the most so far that day, equals by tag. Then agents: the `n`
/// with the most so far that day; among equals, the fewest of them outside the prefixes just
/// chosen, then by key. A volunteer is one agent on one prefix within a day, so when volunteers
/// flag alike the discount takes the agents of the prefixes it took: `k − 1` volunteers' tests,
/// whichever they are. Ordering the two lists each by its own keys instead (the earlier rule)
/// took an agent and a prefix of *different* volunteers as often as not, because the
/// collector's per-day tag key is drawn at random: up to `2 (k − 1)` volunteers went, and how
/// many depended on the run (a 3-agent network's block went unseen until its volunteers' counts
/// drifted apart). Ties are never broken by this hour's own outcome, which would bias the
/// hour's share.
fn discounted(
    day: &BTreeMap<([u8; 8], [u8; 8]), u64>,
    n: usize,
) -> (BTreeSet<[u8; 8]>, BTreeSet<[u8; 8]>) {
    let mut by_prefix: BTreeMap<[u8; 8], u64> = BTreeMap::new();
    let mut by_agent: BTreeMap<[u8; 8], u64> = BTreeMap::new();
    for (&(a, p), &f) in day {
        *by_prefix.entry(p).or_default() += f;
        *by_agent.entry(a).or_default() += f;
    }
    let mut prefixes: Vec<([u8; 8], u64)> = by_prefix.into_iter().collect();
    prefixes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let tp: BTreeSet<[u8; 8]> = prefixes.into_iter().take(n).map(|p| p.0).collect();
    let mut outside: BTreeMap<[u8; 8], u64> = BTreeMap::new();
    for (&(a, p), &f) in day {
        if !tp.contains(&p) {
            *outside.entry(a).or_default() += f;
        }
    }
    let mut agents: Vec<([u8; 8], u64, u64)> = by_agent
        .into_iter()
        .map(|(a, f)| (a, f, outside.get(&a).copied().unwrap_or(0)))
        .collect();
    agents.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
    let ta = agents.into_iter().take(n).map(|a| a.0).collect();
    (ta, tp)
}

fn robust_hours(hours: &BTreeMap<i64, HourEvidence>, end: i64, k: usize) -> BTreeMap<i64, Robust> {
    let discount = k.saturating_sub(1);
    let mut day = None;
    let mut so_far: BTreeMap<([u8; 8], [u8; 8]), u64> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (&hour, e) in hours.range(..end) {
        let d = hour.div_euclid(24);
        if day != Some(d) {
            day = Some(d);
            so_far.clear();
        }
        for (&pair, &n) in &e.flags {
            let f = so_far.entry(pair).or_default();
            *f = f.saturating_add(n);
        }
        let (ta, tp) = discounted(&so_far, discount);
        let mut r = Robust {
            agents: e.agents.clone(),
            prefixes: e.prefixes.clone(),
            ..Robust::default()
        };
        let mut removed = 0u64;
        for (&(a, p), &n) in &e.flags {
            if ta.contains(&a) || tp.contains(&p) {
                removed = removed.saturating_add(n);
            }
        }
        r.judged = e.judged.saturating_sub(removed);
        r.differentiated = e.differentiated.saturating_sub(removed).min(r.judged);
        out.insert(hour, r);
    }
    out
}

/// A CUSUM run: its statistic, the hour its current positive run began, and what the run has
/// seen.
#[derive(Default)]
struct Run {
    s: f64,
    start: Option<i64>,
    agents: BTreeSet<[u8; 8]>,
    prefixes: BTreeSet<[u8; 8]>,
}

impl Run {
    /// Adds an hour's increment; `agents`/`prefixes` are what the run counts as support.
    fn step(
        &mut self,
        hour: i64,
        inc: f64,
        agents: &BTreeSet<[u8; 8]>,
        prefixes: &BTreeSet<[u8; 8]>,
    ) {
        let next = self.s + inc;
        if next <= 0.0 {
            *self = Run::default();
            return;
        }
        if self.start.is_none() {
            self.start = Some(hour);
        }
        self.s = next;
        self.agents.extend(agents.iter().copied());
        self.prefixes.extend(prefixes.iter().copied());
    }

    fn supported(&self, k: usize) -> bool {
        let k = k.max(1);
        self.agents.len() >= k && self.prefixes.len() >= k
    }
}

impl Detector {
    /// Every onset and recovery in one series whose hours are `hours`, read up to (not
    /// including) `end`.
    pub fn detect(
        &self,
        series: SeriesKey,
        hours: &BTreeMap<i64, HourEvidence>,
        end: i64,
    ) -> Vec<Event> {
        let llr = Llr::of(self);
        let robust = robust_hours(hours, end, self.k);
        let mut events: Vec<Event> = Vec::new();
        let mut onset = Run::default();
        let mut recovery = Run::default();
        let mut open = false;
        for (&hour, e) in &robust {
            let inc = llr.hour(e).clamp(-self.max_hour, self.max_hour);
            if !open {
                let raw = &hours[&hour];
                let agents: BTreeSet<[u8; 8]> = raw.flags.keys().map(|(a, _)| *a).collect();
                let prefixes: BTreeSet<[u8; 8]> = raw.flags.keys().map(|(_, p)| *p).collect();
                onset.step(hour, inc, &agents, &prefixes);
                if onset.s >= self.h_onset && onset.supported(self.k) {
                    let began = onset.start.unwrap_or(hour);
                    events.push(self.event(
                        series,
                        EventKind::Onset,
                        hours,
                        &robust,
                        began,
                        hour,
                        &onset,
                        1.0,
                        &events,
                    ));
                    open = true;
                    onset = Run::default();
                    recovery = Run::default();
                }
            } else {
                // Flagged tests count against a recovery; the judged agents support it.
                recovery.step(hour, -inc, &e.agents, &e.prefixes);
                if recovery.s >= self.h_recovery && recovery.supported(self.k) {
                    let began = recovery.start.unwrap_or(hour);
                    events.push(self.event(
                        series,
                        EventKind::Recovery,
                        hours,
                        &robust,
                        began,
                        hour,
                        &recovery,
                        -1.0,
                        &events,
                    ));
                    open = false;
                    onset = Run::default();
                    recovery = Run::default();
                }
            }
        }
        // Close the episodes: an onset followed by a recovery ended when the recovery began.
        let n = events.len();
        for i in 0..n {
            let next_began = events.get(i + 1).map(|e| e.began);
            let e = &mut events[i];
            e.after_to = next_began.unwrap_or(end);
            e.after = shares(hours, e.began, e.after_to);
            match e.kind {
                EventKind::Onset => {
                    e.ended = next_began;
                    e.status = if next_began.is_some() {
                        EventStatus::Ended
                    } else {
                        EventStatus::Open
                    };
                }
                EventKind::Recovery => e.status = EventStatus::Ended,
            }
        }
        events
    }

    /// The event a run declared at `detected`: its change point and interval (`sign` 1 for an
    /// onset statistic, −1 for a recovery's), support and the shares before.
    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        series: SeriesKey,
        kind: EventKind,
        hours: &BTreeMap<i64, HourEvidence>,
        robust: &BTreeMap<i64, Robust>,
        began: i64,
        detected: i64,
        run: &Run,
        sign: f64,
        earlier: &[Event],
    ) -> Event {
        let llr = Llr::of(self);
        let floor = earlier
            .last()
            .map(|e| e.began.saturating_add(1))
            .unwrap_or(i64::MIN)
            .max(detected.saturating_sub(self.lookback_hours));
        // L(τ) = Σ_{t=τ}^{detected} sign·llr_t, for every hour τ with data back to `floor`.
        let mut l = 0.0;
        let mut points: Vec<(i64, f64)> = Vec::new();
        for (&hour, e) in robust.range(floor..=detected).rev() {
            l += (sign * llr.hour(e)).clamp(-self.max_hour, self.max_hour);
            points.push((hour, l));
        }
        let best = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let (mut lo, mut hi) = (began, began);
        for &(hour, value) in &points {
            if value >= best - self.support_drop {
                lo = lo.min(hour);
                hi = hi.max(hour);
            }
        }
        // A change first seen at an hour with data may have begun anywhere in the gap before
        // it: the interval reaches back to just after the previous hour with data (not before
        // `floor`). Before the series' first hour nothing is claimed.
        if let Some((&prev, _)) = hours.range(..lo).next_back() {
            lo = prev.saturating_add(1).max(floor).min(lo);
        }
        let before_to = lo;
        let before_from = earlier
            .last()
            .map(|e| e.began)
            .unwrap_or(i64::MIN)
            .max(before_to.saturating_sub(self.lookback_hours));
        Event {
            series,
            kind,
            began,
            began_lo: lo,
            began_hi: hi,
            detected,
            agents: run.agents.len(),
            prefixes: run.prefixes.len(),
            before: shares(hours, before_from, before_to),
            after: Shares::default(),
            status: EventStatus::Open,
            ended: None,
            before_from,
            after_to: detected + 1,
        }
    }

    /// Every watched series' events, series by series.
    pub fn detect_all(&self, book: &EvidenceBook, end: i64) -> Vec<Event> {
        book.series
            .iter()
            .flat_map(|(s, hours)| self.detect(*s, hours, end))
            .collect()
    }
}

/// The shares of judged tests over hours `[from, to)`.
pub fn shares(hours: &BTreeMap<i64, HourEvidence>, from: i64, to: i64) -> Shares {
    if from >= to {
        return Shares::default();
    }
    let (mut judged, mut diff, mut blocked) = (0u64, 0u64, 0u64);
    let mut agents = BTreeSet::new();
    let mut prefixes = BTreeSet::new();
    for e in hours.range(from..to).map(|(_, e)| e) {
        judged = judged.saturating_add(e.judged);
        diff = diff.saturating_add(e.differentiated);
        blocked = blocked.saturating_add(e.blocked);
        agents.extend(e.agents.iter().copied());
        prefixes.extend(e.prefixes.iter().copied());
    }
    let share = |x: u64| (judged > 0).then(|| x.min(judged) as f64 / judged as f64);
    Shares {
        judged,
        agents: agents.len(),
        prefixes: prefixes.len(),
        differentiated: share(diff),
        blocked: share(blocked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::{Just, Strategy};

    fn series() -> SeriesKey {
        SeriesKey::new("RU", Some(12389), Platform::Whatsapp)
    }

    /// An hour in which each of `agents` ran `tests` tests and those of `flagged` were all
    /// found differentiated (`blocked` of those as blocked calls).
    fn hour(agents: &[u8], flagged: &[u8], tests: u64) -> HourEvidence {
        let mut e = HourEvidence::default();
        for &a in agents {
            e.judged += tests;
            e.agents.insert([a; 8]);
            e.prefixes.insert([a; 8]);
            if flagged.contains(&a) {
                e.differentiated += tests;
                e.flags.insert(([a; 8], [a; 8]), tests);
            }
        }
        e
    }

    fn run(hours: &[(std::ops::Range<i64>, HourEvidence)]) -> BTreeMap<i64, HourEvidence> {
        let mut m = BTreeMap::new();
        for (r, e) in hours {
            for h in r.clone() {
                m.insert(h, e.clone());
            }
        }
        m
    }

    #[test]
    fn the_increments_are_the_log_likelihood_ratios() {
        let d = Detector::default();
        let l = Llr::of(&d);
        assert!((l.flagged - (0.25f64 / 0.01).ln()).abs() < 1e-12);
        assert!((l.clean - (0.75f64 / 0.99).ln()).abs() < 1e-12);
        let r = Robust {
            judged: 10,
            differentiated: 2,
            ..Robust::default()
        };
        assert!((l.hour(&r) - (2.0 * l.flagged + 8.0 * l.clean)).abs() < 1e-12);
    }

    #[test]
    fn a_block_of_five_agents_is_an_onset_at_its_hour_and_its_end_a_recovery() {
        let all = [1, 2, 3, 4, 5];
        let hours = run(&[
            (0..48, hour(&all, &[], 2)),
            (48..100, hour(&all, &all, 2)),
            (100..200, hour(&all, &[], 2)),
        ]);
        let ev = Detector::default().detect(series(), &hours, 200);
        assert_eq!(ev.len(), 2, "{ev:#?}");
        let (on, rec) = (&ev[0], &ev[1]);
        assert_eq!(
            (on.kind, on.began, on.status),
            (EventKind::Onset, 48, EventStatus::Ended)
        );
        assert!(on.began_lo <= 48 && on.began_hi >= 48);
        // Declared within 3 hours: at most 4 (the hour cap) per hour, 9.5 to reach.
        assert!(on.detected <= 50, "{on:?}");
        assert_eq!(on.ended, Some(rec.began));
        assert_eq!(
            (rec.kind, rec.began, rec.status),
            (EventKind::Recovery, 100, EventStatus::Ended)
        );
        assert!(rec.detected > 100 && rec.detected < 130, "{rec:?}");
        // Shares before and after, over the hours they name.
        assert_eq!(on.before.differentiated, Some(0.0));
        assert_eq!(on.after.differentiated, Some(1.0));
        assert_eq!(on.after.judged, 52 * 10);
        assert_eq!((on.after_to, rec.after_to), (100, 200));
        assert_eq!(rec.after.differentiated, Some(0.0));
        assert!(on.agents >= 3 && on.prefixes >= 3);
        // Read only up to hour 60, the onset is still open.
        let ev = Detector::default().detect(series(), &hours, 60);
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].status, ev[0].ended), (EventStatus::Open, None));
    }

    #[test]
    fn the_days_most_flagging_k_minus_one_agents_are_discounted() {
        // Two agents flag every test all week: nothing. A third flags one test, once: nothing.
        let mut hours = run(&[(0..168, hour(&[1, 2, 3, 4], &[1, 2], 4))]);
        hours.insert(100, hour(&[1, 2, 3, 4], &[1, 2, 3], 1));
        assert!(Detector::default().detect(series(), &hours, 168).is_empty());
        let robust = robust_hours(&hours, 168, 3);
        assert!(robust.values().all(|r| r.differentiated <= 1), "{robust:?}");
        // With k = 2 only one is discounted: the other makes the onset.
        let d = Detector {
            k: 2,
            ..Detector::default()
        };
        assert!(!d.detect(series(), &hours, 168).is_empty());
        // The day's counts start again at midnight: in hour 24 the discounted ones are the
        // new day's.
        let mut hours = BTreeMap::new();
        hours.insert(23, hour(&[1, 2, 3], &[1, 2], 5));
        hours.insert(24, hour(&[1, 2, 3], &[3], 1));
        let robust = robust_hours(&hours, 48, 3);
        assert_eq!(robust[&23].differentiated, 0);
        assert_eq!(robust[&24].differentiated, 0, "agent 3 tops the new day");
        assert_eq!(robust[&24].judged, 2);
    }

    #[test]
    fn the_discount_counts_each_agents_flags_not_its_key_order() {
        // Agents 5 and 6 flag every test all day; agent 1 (the smallest key) flags once. The
        // two discounted are 5 and 6 (the most flags), so agent 1's flag counts and 5's and 6's
        // never do: nothing reaches an onset.
        let mut hours = run(&[(0..24, hour(&[1, 2, 3, 5, 6], &[5, 6], 4))]);
        hours.insert(10, hour(&[1, 2, 3, 5, 6], &[1, 5, 6], 1));
        let robust = robust_hours(&hours, 24, 3);
        assert_eq!(robust[&10].differentiated, 1, "{:?}", robust[&10]);
        assert_eq!(robust[&11].differentiated, 0);
        assert!(Detector::default().detect(series(), &hours, 24).is_empty());
        // Prefixes are discounted by their own counts: one prefix (7) under three agents' keys
        // flagging, beside clean agents, is one prefix's worth.
        let mut e = hour(&[1, 2, 3, 4], &[], 2);
        for a in [11u8, 12, 13] {
            e.judged += 2;
            e.differentiated += 2;
            e.agents.insert([a; 8]);
            e.prefixes.insert([7; 8]);
            e.flags.insert(([a; 8], [7; 8]), 2);
        }
        let hours: BTreeMap<i64, HourEvidence> = (0..48).map(|h| (h, e.clone())).collect();
        let robust = robust_hours(&hours, 48, 3);
        assert!(robust.values().all(|r| r.differentiated == 0), "{robust:?}");
        assert!(Detector::default().detect(series(), &hours, 48).is_empty());
        // The two most flagging prefixes (8 and 9, twelve flags each) are discounted, not the
        // two smallest (1, with one flag, and 8).
        let mut e = HourEvidence::default();
        for (agent, prefix, n) in [(21u8, 1u8, 1u64), (31, 8, 4), (32, 8, 4), (33, 8, 4)]
            .into_iter()
            .chain([(41u8, 9u8, 4u64), (42, 9, 4), (43, 9, 4)])
        {
            e.judged += n;
            e.differentiated += n;
            e.agents.insert([agent; 8]);
            e.prefixes.insert([prefix; 8]);
            e.flags.insert(([agent; 8], [prefix; 8]), n);
        }
        let robust = robust_hours(&BTreeMap::from([(0, e)]), 1, 3);
        assert_eq!(robust[&0].differentiated, 1, "{:?}", robust[&0]);
    }

    /// An hour of volunteers `(agent, prefix tag, flagged)`, one test each.
    fn volunteers(v: &[(u8, u8, bool)]) -> HourEvidence {
        let mut e = HourEvidence::default();
        for &(a, t, flagged) in v {
            e.judged += 1;
            e.agents.insert([a; 8]);
            e.prefixes.insert([t; 8]);
            if flagged {
                e.differentiated += 1;
                e.flags.insert(([a; 8], [t; 8]), 1);
            }
        }
        e
    }

    #[test]
    fn the_discount_takes_whole_volunteers_whatever_order_the_tags_fall_in() {
        // Three blocked volunteers, one test an hour each. Whatever order the day's random tag
        // key puts their tags in, k − 1 = 2 volunteers are discounted and the third one's flag
        // counts every hour: the block is declared in its third hour (3 × ln 25 ≥ 9.5). Ordering
        // agents and prefixes each by its own key took agents 1 and 2 and, with tags running
        // against keys, the prefixes of 3 and 2: nothing was left, nothing was declared.
        for tags in [
            [7, 8, 9],
            [7, 9, 8],
            [8, 7, 9],
            [8, 9, 7],
            [9, 7, 8],
            [9, 8, 7],
        ] {
            let e = volunteers(&[(1, tags[0], true), (2, tags[1], true), (3, tags[2], true)]);
            let hours: BTreeMap<i64, HourEvidence> = (0..24).map(|h| (h, e.clone())).collect();
            let robust = robust_hours(&hours, 24, 3);
            assert!(
                robust
                    .values()
                    .all(|r| (r.judged, r.differentiated) == (1, 1)),
                "{tags:?}: {robust:?}"
            );
            let ev = Detector::default().detect(series(), &hours, 24);
            assert_eq!(ev.len(), 1, "{tags:?}: {ev:?}");
            assert_eq!((ev[0].began, ev[0].detected), (0, 2), "{tags:?}");
        }
    }

    #[test]
    fn a_key_flagging_from_many_prefixes_is_discounted_by_its_own_count() {
        // One key uploads a flagged test from each of six prefixes every hour (a Sybil hopping
        // networks, or a volunteer's VPN), beside three volunteers, two of whom flagged once at
        // midnight. The prefix discount takes two of the key's six prefixes (two flags a day
        // each by 01:00); the agent discount takes the key itself, by its count over all of them
        // (six an hour), and one of the two that flagged once: nothing is left. Choosing agents
        // by their flags outside the discounted prefixes alone would take the two that flagged
        // once, and leave the key's four other flags every hour.
        let mut e = volunteers(&[(1, 1, false), (2, 2, false), (3, 3, false)]);
        for t in 11u8..17 {
            e.judged += 1;
            e.differentiated += 1;
            e.agents.insert([9; 8]);
            e.prefixes.insert([t; 8]);
            e.flags.insert(([9; 8], [t; 8]), 1);
        }
        let mut hours: BTreeMap<i64, HourEvidence> = (0..48).map(|h| (h, e.clone())).collect();
        let mut midnight = e.clone();
        for a in [1u8, 2] {
            midnight.differentiated += 1;
            midnight.flags.insert(([a; 8], [a; 8]), 1);
        }
        hours.insert(0, midnight.clone());
        hours.insert(24, midnight);
        let robust = robust_hours(&hours, 48, 3);
        assert!(robust.values().all(|r| r.differentiated == 0), "{robust:?}");
        assert_eq!((robust[&1].judged, robust[&0].judged), (3, 1));
        assert!(Detector::default().detect(series(), &hours, 48).is_empty());
    }

    proptest::proptest! {
        /// Volunteers on their own prefixes, flagging at random through a day, under any
        /// pairing of tags with keys: the agents discounted are exactly those on the prefixes
        /// discounted, so at most k − 1 volunteers' tests are left out of any hour.
        #[test]
        fn with_one_prefix_per_agent_the_discount_is_k_minus_one_volunteers(
            flags in proptest::collection::vec(proptest::collection::vec(proptest::bool::ANY, 6), 1..24),
            tags in Just((0u8..6).collect::<Vec<u8>>()).prop_shuffle(),
        ) {
            let mut so_far = BTreeMap::new();
            for hour in &flags {
                for (i, &f) in hour.iter().enumerate() {
                    if f {
                        *so_far.entry(([i as u8 + 1; 8], [tags[i] + 101; 8])).or_insert(0u64) += 1;
                    }
                }
                let (ta, tp) = discounted(&so_far, 2);
                let on: BTreeSet<[u8; 8]> = so_far
                    .keys()
                    .filter(|(_, p)| tp.contains(p))
                    .map(|(a, _)| *a)
                    .collect();
                proptest::prop_assert_eq!(&ta, &on, "{:?}", so_far);
                proptest::prop_assert!(ta.len() <= 2 && tp.len() <= 2);
            }
        }
    }

    #[test]
    fn intervals_are_where_the_log_likelihood_is_within_3_of_its_peak() {
        // Five agents, one test each an hour; all flagged from 48 to 100. Robust: 3 flagged
        // (two discounted) = 9.66, capped at 4 an hour; clean hours 5 × ln(0.75/0.99) = −1.388.
        let all = [1, 2, 3, 4, 5];
        let hours = run(&[
            (0..48, hour(&all, &[], 1)),
            (48..100, hour(&all, &all, 1)),
            (100..200, hour(&all, &[], 1)),
        ]);
        let ev = Detector::default().detect(series(), &hours, 200);
        assert_eq!(ev.len(), 2, "{ev:#?}");
        // Onset: 4 + 4 + 4 ≥ 9.5 at hour 50; L(48) = 12, L(47) = 10.6, L(46) = 9.2 ≥ 9,
        // L(45) = 7.8 < 9, L(49) = 8 < 9.
        let on = &ev[0];
        assert_eq!((on.began, on.detected), (48, 50));
        assert_eq!((on.began_lo, on.began_hi), (46, 48), "{on:?}");
        // Recovery: 9 clean hours make 12.5 ≥ 12 at hour 108; L(100) = 12.5, L(101) = 11.1,
        // L(102) = 9.7 ≥ 9.5, L(103) = 8.3 < 9.5, and hour 99 (flagged, −4) gives 8.5.
        let rec = &ev[1];
        assert_eq!((rec.began, rec.detected), (100, 108));
        assert_eq!((rec.began_lo, rec.began_hi), (100, 102), "{rec:?}");
    }

    #[test]
    fn a_recovery_needs_k_agents_on_k_prefixes_tested() {
        let all = [1, 2, 3, 4, 5];
        let blocked = run(&[(0..24, hour(&all, &[], 2)), (24..48, hour(&all, &all, 2))]);
        // Afterwards only two agents test, cleanly, for days: the onset stays open.
        let mut hours = blocked.clone();
        hours.extend(run(&[(48..200, hour(&[1, 2], &[], 4))]));
        let ev = Detector::default().detect(series(), &hours, 200);
        assert_eq!(ev.len(), 1, "{ev:#?}");
        assert_eq!(ev[0].status, EventStatus::Open);
        // Three agents, but on one prefix: still open.
        let mut one_prefix = HourEvidence::default();
        for a in [1u8, 2, 3] {
            one_prefix.judged += 4;
            one_prefix.agents.insert([a; 8]);
            one_prefix.prefixes.insert([9; 8]);
        }
        let mut hours = blocked.clone();
        hours.extend((48..200).map(|h| (h, one_prefix.clone())));
        let ev = Detector::default().detect(series(), &hours, 200);
        assert_eq!((ev.len(), ev[0].status), (1, EventStatus::Open), "{ev:#?}");
        // Three agents on three prefixes: recovered.
        let mut hours = blocked;
        hours.extend(run(&[(48..200, hour(&[1, 2, 3], &[], 4))]));
        let ev = Detector::default().detect(series(), &hours, 200);
        assert_eq!(ev.len(), 2, "{ev:#?}");
        assert_eq!((ev[1].kind, ev[1].began), (EventKind::Recovery, 48));
    }

    #[test]
    fn every_series_of_a_book_is_read_and_shares_of_nothing_are_unknown() {
        use crate::domain::cell::CellKey;
        use callwatch_proto::report::StreamKind;
        let all = [1, 2, 3, 4, 5];
        let mut book = EvidenceBook::default();
        for h in 0..60 {
            let flagged: &[u8] = if h >= 30 { &all } else { &[] };
            let key = CellKey {
                hour: h,
                country: *b"IR",
                subdivision: crate::domain::codes::NO_SUBDIVISION,
                asn: 58224,
                platform: Platform::Signal,
                arm: Role::Platform,
                kind: StreamKind::Voice,
            };
            book.add(&key, hour(&all, flagged, 2));
        }
        let ev = Detector::default().detect_all(&book, 60);
        // The network's onset and its country's.
        assert_eq!(ev.len(), 2, "{ev:#?}");
        assert!(ev.iter().any(|e| e.series.asn.is_none()));
        assert!(ev.iter().all(|e| e.began == 30));
        // No test in a stretch: its shares are unknown, never 0/0.
        let hours = &book.series[&SeriesKey::new("IR", Some(58224), Platform::Signal)];
        let none = shares(hours, 100, 110);
        assert_eq!(
            (none.judged, none.differentiated, none.blocked),
            (0, None, None)
        );
        assert_eq!(shares(hours, 30, 60).differentiated, Some(1.0));
    }

    #[test]
    fn kinds_and_statuses_say_what_the_api_says() {
        assert_eq!(
            [EventKind::Onset.as_str(), EventKind::Recovery.as_str()],
            ["onset", "recovery"]
        );
        assert_eq!(
            [EventStatus::Open.as_str(), EventStatus::Ended.as_str()],
            ["open", "ended"]
        );
    }

    #[test]
    fn one_bad_hour_never_makes_an_event() {
        // Everyone flags for one hour: capped at 4, below 9.5.
        let all = [1, 2, 3, 4, 5, 6, 7, 8];
        let hours = run(&[
            (0..50, hour(&all, &[], 4)),
            (50..51, hour(&all, &all, 4)),
            (51..100, hour(&all, &[], 4)),
        ]);
        assert!(Detector::default().detect(series(), &hours, 100).is_empty());
    }

    #[test]
    fn gaps_widen_the_interval_and_fewer_than_k_never_raise() {
        let all = [1, 2, 3, 4, 5];
        let hours = run(&[(0..50, hour(&all, &[], 2)), (60..80, hour(&all, &all, 2))]);
        let ev = Detector::default().detect(series(), &hours, 80);
        assert_eq!(ev.len(), 1);
        // Back across the gap to hour 50, and one hour further: hour 49's ten clean tests
        // lower the likelihood of a change from 49 by 10 × 0.278 = 2.78, within the support
        // interval's 3.
        assert_eq!((ev[0].began, ev[0].began_lo, ev[0].began_hi), (60, 49, 60));
        // The first hour of a series: nothing before it is claimed.
        let hours = run(&[(10..30, hour(&all, &all, 2))]);
        let ev = Detector::default().detect(series(), &hours, 30);
        assert_eq!((ev[0].began, ev[0].began_lo), (10, 10));
        // Two agents, however strong.
        let hours = run(&[(0..100, hour(&[1, 2], &[1, 2], 10))]);
        assert!(Detector::default().detect(series(), &hours, 100).is_empty());
    }

    #[test]
    fn evidence_books_key_networks_and_countries_and_forget_from_an_hour() {
        use crate::domain::cell::CellKey;
        use callwatch_proto::report::StreamKind;
        let key = |asn: u32, arm: Role, platform: Platform| CellKey {
            hour: 7,
            country: *b"RU",
            subdivision: crate::domain::codes::NO_SUBDIVISION,
            asn,
            platform,
            arm,
            kind: StreamKind::Voice,
        };
        let mut book = EvidenceBook::default();
        let e = hour(&[1, 2], &[1], 3);
        book.add(&key(1, Role::Platform, Platform::Whatsapp), e.clone());
        book.add(
            &key(2, Role::Platform, Platform::Whatsapp),
            hour(&[3], &[], 1),
        );
        // Unwatched: generic, and nothing judged.
        book.add(&key(1, Role::Platform, Platform::Generic), e.clone());
        book.add(
            &key(1, Role::Platform, Platform::Telegram),
            HourEvidence::default(),
        );
        assert_eq!(book.series.len(), 3, "two networks and their country");
        let country = &book.series[&SeriesKey::new("RU", None, Platform::Whatsapp)][&7];
        assert_eq!((country.judged, country.differentiated), (7, 3));
        assert_eq!(country.agents.len(), 3);
        assert_eq!(book.first_hour(), Some(7));
        book.forget_from(7);
        assert!(book.series.is_empty());
        // Control arms give no evidence.
        let mut book = EvidenceBook::default();
        book.add_cell(
            &key(1, Role::Control, Platform::Whatsapp),
            &CellState::default(),
        );
        assert!(book.series.is_empty());
    }

    #[test]
    fn a_cells_platform_arm_is_its_evidence_and_its_control_arm_none() {
        use crate::domain::cell::{CellKey, CellState};
        use crate::domain::observation::Observation;
        use crate::domain::report::Filing;
        use callwatch_proto::report::StreamKind;
        use callwatch_proto::Verdict;
        let obs = |agent: u8, verdict: Verdict| Observation {
            started_at_ms: 7 * 3_600_000,
            country: "RU".into(),
            subdivision: String::new(),
            asn: 8359,
            platform: Platform::Telegram,
            arm: Role::Platform,
            kind: StreamKind::Voice,
            agent: [agent; 32],
            figures: [None; crate::domain::FIGURE_COUNT],
            verdict: Some(verdict),
            rule: None,
            filing: Filing::default(),
        };
        let mut state = CellState::default();
        state.add(&obs(1, Verdict::Differentiated));
        state.add(&obs(1, Verdict::Differentiated));
        state.add(&obs(2, Verdict::None));
        state.add(&obs(3, Verdict::Inconclusive));
        let key = obs(1, Verdict::None).cell_key();
        let e = HourEvidence::of_cell(&key, &state);
        assert_eq!((e.judged, e.differentiated, e.blocked), (4, 2, 0));
        assert_eq!((e.agents.len(), e.prefixes.len()), (3, 3));
        // Agent 1, on its own prefix (no tag: its key's first bytes), twice.
        assert_eq!(
            e.flags.into_iter().collect::<Vec<_>>(),
            vec![(([1; 8], [1; 8]), 2)]
        );
        let control = CellKey {
            arm: Role::Control,
            ..key
        };
        assert_eq!(
            HourEvidence::of_cell(&control, &state),
            HourEvidence::default()
        );
        let mut book = EvidenceBook::default();
        book.add_cell(&control, &state);
        assert!(book.series.is_empty(), "control arms give no evidence");
        book.add_cell(&key, &state);
        let network = SeriesKey::new("RU", Some(8359), Platform::Telegram);
        assert_eq!(network.country_str(), "RU");
        assert_eq!(book.series[&network][&7].differentiated, 2);
        assert_eq!(
            book.series[&SeriesKey::new("RU", None, Platform::Telegram)][&7].judged,
            4
        );
    }

    #[test]
    fn touched_keeps_the_earliest_hour_until_taken() {
        let t = Touched::default();
        assert_eq!(t.take(), None);
        t.note(50);
        t.note(20);
        t.note(70);
        assert_eq!(t.take(), Some(20));
        assert_eq!(t.take(), None);
    }
}
