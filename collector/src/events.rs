//! Events as the collector publishes them: the detector of [`crate::domain::events`] run over
//! the store's evidence, kept fresh as reports arrive, under the aggregates' privacy rules.
//!
//! - **Fresh.** [`EventsCache::refresh`] reads every hour of evidence once, then on each
//!   refresh only the last [`RELOAD_HOURS`] (where late uploads and carried files land), and the
//!   whole history again once a day; the detector reruns over the whole history each time (it
//!   reads counts only: a year of a thousand series is milliseconds). `serve` refreshes every
//!   [`REFRESH`].
//! - **Private.** An event needs `k` distinct agents on `k` distinct prefixes behind it (the
//!   detector's own rule, with the collector's k); a share before or after is published only
//!   where `k` agents on `k` prefixes were judged in its hours, and an effect only from
//!   aggregate cells the public API publishes; times are whole hours, like the hour axis.
//! - **Traceable.** Each event names the aggregate query of the cells behind it
//!   ([`PublishedEvent::evidence`]): the hourly platform and control cells of its series around
//!   the change.

use crate::domain::events::{
    shares, Detector, Event, EventKind, EventStatus, EvidenceBook, Shares, Touched,
};
use crate::domain::{hour_string, Axis, Filter, Policy};
use crate::store::{ReportStore, StoreError};
use callwatch_proto::precision::{self, Precision};
use callwatch_proto::Role;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// How often `serve` reruns the detector.
pub const REFRESH: std::time::Duration = std::time::Duration::from_secs(300);
/// How many recent hours each refresh reads again.
pub const RELOAD_HOURS: i64 = 8 * 24;
/// How often the whole history is read again (late carried files older than
/// [`RELOAD_HOURS`]).
pub const FULL_RELOAD_HOURS: i64 = 24;

const HOUR_MS: i64 = 3_600_000;

/// Shares of one stretch as published: `null` where fewer than k agents on k prefixes stood
/// behind it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PublishedShares {
    /// First hour and the hour after the last (RFC 3339).
    pub from: String,
    pub to: String,
    /// Tests judged in it; `null` with the shares.
    pub tests: Option<u64>,
    #[serde(serialize_with = "precision::fraction")]
    pub differentiated_share: Option<f64>,
    #[serde(serialize_with = "precision::fraction")]
    pub blocked_share: Option<f64>,
}

impl PublishedShares {
    fn of(s: &Shares, from: i64, to: i64, k: usize) -> PublishedShares {
        let shown = s.agents >= k.max(1) && s.prefixes >= k.max(1);
        PublishedShares {
            from: hour_string(from),
            to: hour_string(to),
            tests: shown.then_some(s.judged),
            differentiated_share: s.differentiated.filter(|_| shown),
            blocked_share: s.blocked.filter(|_| shown),
        }
    }
}

/// What changed in the figures: the platform arm's median minus the control arm's, before and
/// after, from published day cells (`null` where a cell is not published).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Effect {
    /// Whole UTC days, first and the day after the last, of each side.
    pub before_days: [String; 2],
    pub after_days: [String; 2],
    #[serde(serialize_with = "precision::fraction")]
    pub loss_before: Option<f64>,
    #[serde(serialize_with = "precision::fraction")]
    pub loss_after: Option<f64>,
    #[serde(serialize_with = "millis")]
    pub rtt_ms_before: Option<f64>,
    #[serde(serialize_with = "millis")]
    pub rtt_ms_after: Option<f64>,
}

fn millis<S: serde::Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    precision::serialize_option(v, Precision::Millis, s)
}

/// One event as the API, the feed and the export show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PublishedEvent {
    /// Stable while the change's series, kind and hour stay the same (16 hex digits).
    pub id: String,
    pub country: String,
    /// `null`: every network of the country together.
    pub asn: Option<u32>,
    pub platform: String,
    /// `onset` or `recovery`.
    pub kind: &'static str,
    /// `open` (an onset not recovered) or `ended`.
    pub status: &'static str,
    /// The hour the change began (maximum likelihood), and its support interval (first and
    /// last hour it may have begun).
    pub began: String,
    pub began_interval: [String; 2],
    /// The hour the detector had read up to when it declared the change.
    pub detected: String,
    /// For an onset that ended: the hour its recovery began.
    pub ended: Option<String>,
    /// Distinct agents and network prefixes behind it (for an onset, those found
    /// differentiated since it began; for a recovery, those tested since).
    pub agents: usize,
    pub prefixes: usize,
    pub before: PublishedShares,
    pub after: PublishedShares,
    pub effect: Effect,
    /// The aggregate query whose cells the event rests on.
    pub evidence: String,
    #[serde(skip)]
    pub began_hour: i64,
    #[serde(skip)]
    pub detected_hour: i64,
}

impl PublishedEvent {
    /// `(country, asn or "", platform)` text, as feeds and logs say it.
    pub fn series_text(&self) -> String {
        match self.asn {
            Some(a) => format!("{} in {} AS{a}", self.platform, self.country),
            None => format!("{} in {} (all networks)", self.platform, self.country),
        }
    }
}

/// The detector's state between refreshes, and its last answer.
#[derive(Default)]
pub struct EventsCache {
    book: EvidenceBook,
    /// The hour of the last whole-history read.
    full_at: Option<i64>,
    /// The hour of the last refresh, and the events it published.
    pub computed: Option<i64>,
    pub events: Vec<PublishedEvent>,
    /// The store's report count at the last refresh, and when it ran.
    stored: usize,
    at: Option<std::time::Instant>,
}

/// The events of a running collector: one cache, refreshed in the background every
/// [`REFRESH`] (unless a refresh finished within `min_interval`, at most half of that) and by a
/// request when reports arrived since, at most once per `min_interval`.
#[derive(Clone)]
pub struct EventsService {
    pub cache: std::sync::Arc<std::sync::Mutex<EventsCache>>,
    pub detector: Detector,
    pub min_interval: std::time::Duration,
    /// Where ingest notes the test hours it stores (`None`: only the last days are read again
    /// between the daily full reads).
    pub touched: Option<std::sync::Arc<Touched>>,
}

impl Default for EventsService {
    fn default() -> Self {
        EventsService {
            cache: Default::default(),
            detector: Detector::default(),
            min_interval: std::time::Duration::from_secs(10),
            touched: None,
        }
    }
}

impl EventsService {
    /// The current events and the hour they were computed at, refreshing first when the hour
    /// moved on, when the last refresh is older than `min_interval` and reports arrived since,
    /// or (`force`, the background's ticks) when it is older than `min_interval` or half of
    /// [`REFRESH`], whichever is shorter. So a forced refresh that queued behind one just
    /// finished — the background's first tick behind the first request's at start — does not
    /// read and detect everything again, and a long `min_interval` still leaves the background
    /// its run every [`REFRESH`]. Blocking: runs store reads.
    pub fn current(
        &self,
        store: &dyn ReportStore,
        policy: &Policy,
        force: bool,
    ) -> Result<(Vec<PublishedEvent>, Option<i64>), StoreError> {
        let mut c = self
            .cache
            .lock()
            .map_err(|_| StoreError::Backend("the events cache was poisoned".into()))?;
        let now = now_hour();
        let last = c.computed.zip(c.at.map(|at| at.elapsed()));
        if self.stale(last, now, force, || store.len() != c.stored) {
            c.refresh(store, policy, &self.detector, now, self.touched.as_deref())?;
        }
        Ok((c.events.clone(), c.computed))
    }

    /// Whether the cache needs a refresh, given the hour of its last refresh and that refresh's
    /// age (`None`: never refreshed), the current hour, whether the caller forces it, and
    /// whether reports arrived since (asked only when it matters).
    fn stale(
        &self,
        last: Option<(i64, std::time::Duration)>,
        now_hour: i64,
        force: bool,
        reports_arrived: impl FnOnce() -> bool,
    ) -> bool {
        match last {
            Some((hour, age)) => {
                hour != now_hour
                    || (force && age >= self.min_interval.min(REFRESH / 2))
                    || (age >= self.min_interval && reports_arrived())
            }
            None => true,
        }
    }

    /// Open onsets by scope (`network`, `country`) and platform, for the gauge.
    pub fn open_counts(&self) -> Vec<(String, u64)> {
        let Ok(c) = self.cache.lock() else {
            return Vec::new();
        };
        let mut counts: std::collections::BTreeMap<(String, &str), u64> = Default::default();
        for e in c.events.iter().filter(|e| e.status == "open") {
            let scope = if e.asn.is_some() {
                "network"
            } else {
                "country"
            };
            *counts.entry((e.platform.clone(), scope)).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|((p, scope), n)| (format!("{{platform=\"{p}\",scope=\"{scope}\"}}"), n))
            .collect()
    }
}

impl EventsCache {
    /// Reads what changed since the last refresh and reruns the detector up to `now_hour`
    /// (included).
    pub fn refresh(
        &mut self,
        store: &dyn ReportStore,
        policy: &Policy,
        detector: &Detector,
        now_hour: i64,
        touched: Option<&Touched>,
    ) -> Result<(), StoreError> {
        // Counted before reading: a report stored while this refresh reads makes the next
        // request refresh again.
        let stored = store.len();
        let end = now_hour.saturating_add(2);
        let full = self
            .full_at
            .is_none_or(|at| now_hour.saturating_sub(at) >= FULL_RELOAD_HOURS);
        if full {
            // Everything is read: what was noted so far is in it.
            if let Some(t) = touched {
                t.take();
            }
            let mut book = EvidenceBook::default();
            store.evidence(0, end, policy, &mut book)?;
            self.book = book;
            self.full_at = Some(now_hour);
        } else {
            // The last days, and back to the earliest hour stored since the last refresh.
            let from = now_hour
                .saturating_sub(RELOAD_HOURS)
                .min(touched.and_then(Touched::take).unwrap_or(i64::MAX));
            let mut fresh = EvidenceBook::default();
            store.evidence(from, end, policy, &mut fresh)?;
            self.book.forget_from(from);
            for (s, hours) in fresh.series {
                self.book.series.entry(s).or_default().extend(hours);
            }
        }
        let detector = Detector {
            k: policy.min_agents.max(1),
            ..*detector
        };
        let events = detector.detect_all(&self.book, now_hour.saturating_add(1));
        self.events = events
            .iter()
            .map(|e| publish(store, policy, &self.book, e))
            .collect::<Result<_, _>>()?;
        self.events
            .sort_by(|a, b| (b.began_hour, &a.id).cmp(&(a.began_hour, &b.id)));
        self.computed = Some(now_hour);
        self.stored = stored;
        self.at = Some(std::time::Instant::now());
        Ok(())
    }
}

/// The events of a store, computed once (for `export --events`).
pub fn compute(
    store: &dyn ReportStore,
    policy: &Policy,
    now_hour: i64,
) -> Result<Vec<PublishedEvent>, StoreError> {
    let mut cache = EventsCache::default();
    cache.refresh(store, policy, &Detector::default(), now_hour, None)?;
    Ok(cache.events)
}

/// The current hour (hours since the epoch, UTC).
pub fn now_hour() -> i64 {
    chrono::Utc::now().timestamp().div_euclid(3600)
}

fn event_id(e: &Event) -> String {
    let mut h = Sha256::new();
    h.update(e.series.country);
    h.update(e.series.asn.map(|a| a.to_be_bytes()).unwrap_or([0xff; 4]));
    h.update([e.series.platform as u8, e.kind as u8]);
    h.update(e.began.to_be_bytes());
    hex::encode(&h.finalize()[..8])
}

fn publish(
    store: &dyn ReportStore,
    policy: &Policy,
    book: &EvidenceBook,
    e: &Event,
) -> Result<PublishedEvent, StoreError> {
    let k = policy.min_agents.max(1);
    let hours = book.series.get(&e.series);
    let before = hours
        .map(|h| shares(h, e.before_from, e.began_lo))
        .unwrap_or_default();
    let after = hours
        .map(|h| shares(h, e.began, e.after_to))
        .unwrap_or_default();
    let effect = effect(store, policy, e)?;
    let platform = e.series.platform.to_string();
    let mut evidence = format!(
        "/api/v1/aggregation?axis_x=hour&axis_y=arm&country={}&platform={platform}",
        e.series.country_str()
    );
    if let Some(a) = e.series.asn {
        evidence.push_str(&format!("&asn={a}"));
    }
    // The hour axis answers at most 31 days: from a day before the interval to the detection
    // (and a day after), within that.
    let from = e.began_lo.saturating_sub(24);
    let to = e.detected.saturating_add(25).min(from + 31 * 24);
    evidence.push_str(&format!(
        "&since={}&until={}",
        hour_string(from),
        hour_string(to)
    ));
    Ok(PublishedEvent {
        id: event_id(e),
        country: e.series.country_str().to_string(),
        asn: e.series.asn,
        platform,
        kind: e.kind.as_str(),
        status: e.status.as_str(),
        began: hour_string(e.began),
        began_interval: [hour_string(e.began_lo), hour_string(e.began_hi)],
        detected: hour_string(e.detected),
        ended: e.ended.map(hour_string),
        agents: e.agents,
        prefixes: e.prefixes,
        before: PublishedShares::of(&before, e.before_from, e.began_lo, k),
        after: PublishedShares::of(&after, e.began, e.after_to, k),
        effect,
        evidence,
        began_hour: e.began,
        detected_hour: e.detected,
    })
}

/// Platform minus control medians of loss and RTT over whole days before the change's interval
/// and from its day to the end of the episode, from the published aggregate.
fn effect(store: &dyn ReportStore, policy: &Policy, e: &Event) -> Result<Effect, StoreError> {
    let day = |h: i64| h.div_euclid(24);
    let before = (day(e.before_from.max(e.began_lo - 7 * 24)), day(e.began_lo));
    let after = (day(e.began), day(e.after_to.saturating_sub(1)) + 1);
    let diff = |(from, to): (i64, i64)| -> Result<(Option<f64>, Option<f64>), StoreError> {
        if from >= to {
            return Ok((None, None));
        }
        let filter = Filter {
            country: Some(e.series.country_str().to_string()),
            asn: e.series.asn,
            platform: Some(e.series.platform),
            since_ms: Some(from.saturating_mul(24 * HOUR_MS)),
            until_ms: Some(to.saturating_mul(24 * HOUR_MS)),
            ..Filter::default()
        };
        let cells = store.aggregate(&[Axis::Arm], &filter, policy)?;
        let arm = |r: Role| cells.iter().find(|c| c.arm.as_deref() == Some(r.as_str()));
        let (Some(p), Some(c)) = (arm(Role::Platform), arm(Role::Control)) else {
            return Ok((None, None));
        };
        let d = |a: Option<crate::domain::Figure>, b: Option<crate::domain::Figure>| {
            Some(a?.median - b?.median)
        };
        Ok((d(p.loss, c.loss), d(p.rtt_ms, c.rtt_ms)))
    };
    let (loss_before, rtt_ms_before) = diff(before)?;
    let (loss_after, rtt_ms_after) = diff(after)?;
    let days = |(a, b): (i64, i64)| [crate::domain::day_string(a), crate::domain::day_string(b)];
    Ok(Effect {
        before_days: days(before),
        after_days: days(after),
        loss_before,
        loss_after,
        rtt_ms_before,
        rtt_ms_after,
    })
}

/// Which events a query asks for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventFilter {
    pub country: Option<String>,
    pub asn: Option<u32>,
    /// Only country-wide series (`asn=all`).
    pub country_wide: bool,
    pub platform: Option<String>,
    pub kind: Option<EventKind>,
    pub status: Option<EventStatus>,
    /// Changes that began at or after / before these hours.
    pub since_hour: Option<i64>,
    pub until_hour: Option<i64>,
}

impl EventFilter {
    pub fn matches(&self, e: &PublishedEvent) -> bool {
        self.country.as_ref().is_none_or(|c| *c == e.country)
            && self.asn.is_none_or(|a| e.asn == Some(a))
            && (!self.country_wide || e.asn.is_none())
            && self.platform.as_ref().is_none_or(|p| *p == e.platform)
            && self.kind.is_none_or(|k| k.as_str() == e.kind)
            && self.status.is_none_or(|s| s.as_str() == e.status)
            && self.since_hour.is_none_or(|h| e.began_hour >= h)
            && self.until_hour.is_none_or(|h| e.began_hour < h)
    }
}

/// The CSV of events: one line each, the columns of the JSON flattened.
pub fn events_csv(events: &[PublishedEvent]) -> String {
    let mut out = String::from(
        "id,country,asn,platform,kind,status,began,began_from,began_to,detected,ended,agents,\
         prefixes,before_from,before_to,before_tests,before_differentiated_share,\
         before_blocked_share,after_from,after_to,after_tests,after_differentiated_share,\
         after_blocked_share,loss_effect_before,loss_effect_after,rtt_ms_effect_before,\
         rtt_ms_effect_after,evidence\n",
    );
    let opt = |v: Option<f64>, p: Precision| v.map(|x| p.text(x)).unwrap_or_default();
    for e in events {
        let cols: Vec<String> = vec![
            e.id.clone(),
            e.country.clone(),
            e.asn.map(|a| a.to_string()).unwrap_or_default(),
            e.platform.clone(),
            e.kind.into(),
            e.status.into(),
            e.began.clone(),
            e.began_interval[0].clone(),
            e.began_interval[1].clone(),
            e.detected.clone(),
            e.ended.clone().unwrap_or_default(),
            e.agents.to_string(),
            e.prefixes.to_string(),
            e.before.from.clone(),
            e.before.to.clone(),
            e.before.tests.map(|t| t.to_string()).unwrap_or_default(),
            opt(e.before.differentiated_share, Precision::Fraction),
            opt(e.before.blocked_share, Precision::Fraction),
            e.after.from.clone(),
            e.after.to.clone(),
            e.after.tests.map(|t| t.to_string()).unwrap_or_default(),
            opt(e.after.differentiated_share, Precision::Fraction),
            opt(e.after.blocked_share, Precision::Fraction),
            opt(e.effect.loss_before, Precision::Fraction),
            opt(e.effect.loss_after, Precision::Fraction),
            opt(e.effect.rtt_ms_before, Precision::Millis),
            opt(e.effect.rtt_ms_after, Precision::Millis),
            format!("\"{}\"", e.evidence),
        ];
        out.push_str(&cols.join(","));
        out.push('\n');
    }
    out
}

/// The Atom feed of events (RFC 4287), newest change first.
pub fn events_atom(events: &[PublishedEvent], computed: Option<i64>, base: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let updated = computed.map(hour_string).unwrap_or_else(|| hour_string(0));
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">\n\
         <title>callwatch: onsets and recoveries of differential treatment</title>\n\
         <id>urn:callwatch:events</id>\n<updated>{updated}</updated>\n\
         <link rel=\"self\" href=\"{}/api/v1/events.atom\"/>\n",
        esc(base)
    );
    for e in events {
        let what = match e.kind {
            "onset" => "Onset of differential treatment",
            _ => "Recovery",
        };
        let share = |s: &PublishedShares| {
            s.differentiated_share
                .map(|x| format!("{:.1} %", x * 100.0))
                .unwrap_or_else(|| "not published (below k)".into())
        };
        let summary = format!(
            "{what}: {} since {} (between {} and {}), detected {}; {} agents on {} network \
             prefixes; tests found differentiated {} before, {} after; status {}.",
            e.series_text(),
            e.began,
            e.began_interval[0],
            e.began_interval[1],
            e.detected,
            e.agents,
            e.prefixes,
            share(&e.before),
            share(&e.after),
            e.status
        );
        out.push_str(&format!(
            "<entry>\n<id>urn:callwatch:event:{}</id>\n<title>{}: {}</title>\n\
             <updated>{}</updated>\n<link href=\"{}{}\"/>\n<summary>{}</summary>\n</entry>\n",
            e.id,
            esc(what),
            esc(&e.series_text()),
            e.detected,
            esc(base),
            esc(&e.evidence),
            esc(&summary)
        ));
    }
    out.push_str("</feed>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    /// A forced refresh reruns the detector unless one finished within `min_interval` (at most
    /// half of [`REFRESH`]).
    #[test]
    fn a_forced_refresh_behind_a_fresh_one_does_not_run_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let policy = Policy::default();
        let at = |s: &EventsService| s.cache.lock().unwrap().at;
        let service = EventsService {
            min_interval: std::time::Duration::from_secs(3600),
            ..EventsService::default()
        };
        // (The hour turning between the two calls is a reason to refresh: then once more.)
        let computed = |s: &EventsService| s.cache.lock().unwrap().computed;
        let mut again = None;
        for _ in 0..3 {
            service.current(&store, &policy, true).unwrap();
            let (first, hour) = (at(&service), computed(&service));
            service.current(&store, &policy, true).unwrap();
            if computed(&service) == hour {
                again = Some((first, at(&service)));
                break;
            }
        }
        let (first, second) = again.expect("two calls within one hour");
        assert!(first.is_some());
        assert_eq!(second, first, "refreshed again at once");
        // A refresh as old as a background tick's period: a request with no new report still
        // finds it current (the minimum interval is an hour), the background's tick does not.
        let long_ago = std::time::Instant::now().checked_sub(REFRESH);
        if let Some(long_ago) = long_ago {
            service.cache.lock().unwrap().at = Some(long_ago);
            let hour = computed(&service);
            service.current(&store, &policy, false).unwrap();
            // (Unless the hour turned in between, which refreshes.)
            if computed(&service) == hour {
                assert_eq!(at(&service), Some(long_ago), "a request refreshed");
            }
            service.current(&store, &policy, true).unwrap();
            assert!(
                at(&service) > Some(long_ago),
                "the background's tick did not refresh"
            );
        }
        // Without a minimum interval, forced means every time.
        let eager = EventsService {
            min_interval: std::time::Duration::ZERO,
            ..EventsService::default()
        };
        eager.current(&store, &policy, true).unwrap();
        let first = at(&eager).expect("refreshed");
        eager.current(&store, &policy, true).unwrap();
        assert!(at(&eager) > Some(first), "a forced refresh ran");
    }

    /// The rule itself, at given ages (the test above can move a refresh back in time only on
    /// a host up for longer than a tick's period, `Instant` counting from boot).
    #[test]
    fn a_refresh_is_stale_by_the_hour_the_tick_or_new_reports_after_the_interval() {
        let secs = std::time::Duration::from_secs;
        let hourly = EventsService {
            min_interval: secs(3600),
            ..EventsService::default()
        };
        let unasked = || -> bool { panic!("reports asked about where they do not matter") };
        // Never refreshed, or the hour moved on: stale whatever else holds.
        assert!(hourly.stale(None, 7, false, unasked));
        assert!(hourly.stale(Some((6, secs(0))), 7, false, unasked));
        // The background's tick: a refresh half a period old is stale, one just younger not,
        // whatever the minimum interval (here an hour) says.
        assert!(hourly.stale(Some((7, REFRESH / 2)), 7, true, || false));
        assert!(hourly.stale(Some((7, REFRESH)), 7, true, || false));
        assert!(!hourly.stale(Some((7, REFRESH / 2 - secs(1))), 7, true, || false));
        // A request: only after the minimum interval, and only when reports arrived.
        assert!(!hourly.stale(Some((7, REFRESH)), 7, false, || true));
        assert!(hourly.stale(Some((7, secs(3600))), 7, false, || true));
        assert!(!hourly.stale(Some((7, secs(3600))), 7, false, || false));
        // A short minimum interval bounds the tick's wait too.
        let brisk = EventsService {
            min_interval: secs(10),
            ..EventsService::default()
        };
        assert!(!brisk.stale(Some((7, secs(9))), 7, true, || true));
        assert!(!brisk.stale(Some((7, secs(9))), 7, false, || true));
        assert!(brisk.stale(Some((7, secs(10))), 7, true, || false));
        assert!(brisk.stale(Some((7, secs(10))), 7, false, || true));
    }
}
