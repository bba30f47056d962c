//! When the agent runs its next call test: a sans-IO scheduler.
//!
//! The daemon owns the clock and the randomness and hands both in; this module only decides.
//! The [`Scheduler`] is plain data the daemon persists (as JSON, beside its other state) so a
//! restart neither forgets the rotation nor fires a test the moment it comes back.
//!
//! # Rules
//!
//! 1. **One test at a time.** The daemon calls [`Scheduler::poll`] only when no test is running;
//!    a poll hands out at most one test and moves the next due time past `now`. Gaps are measured
//!    start to start.
//! 2. **Catch up without a burst.** However many slots a sleep or an outage swallowed, a late poll
//!    hands out ONE test and schedules the next one gap after `now`, not after the missed slot.
//! 3. **Never in quiet hours.** A due time that falls inside quiet hours moves to the end of the
//!    quiet period plus a random part of one interval (at most the open window, so it cannot
//!    land in the next quiet period). Agents sharing quiet hours thus resume at the same density
//!    as in steady state, not in a pulse at the hour. A poll made inside quiet hours (a laptop
//!    woken at 03:00 with a test overdue) defers the same way instead of running.
//! 4. **Platforms in turn.** Round robin over `platforms`. A turn that is skipped
//!    ([`Scheduler::skip`], e.g. over budget) passes to the next platform rather than being
//!    retried, so one expensive platform cannot starve the others.
//! 5. **Clock going back.** If `now` is earlier than the last time handed in, the due time moves
//!    back by the same amount: the wait that was left is kept, so the jump neither stalls the
//!    agent for its length nor releases a burst. A due time further out than any schedule could
//!    produce (a corrupt state file, a config whose interval shrank) is rescheduled from `now`.
//!
//! # Gaps
//!
//! Each gap is `interval × (1 + spread × (u − ½))` with `u` uniform in `[0, 1)`: uniform over
//! `interval × (1 ± spread/2)`, with mean exactly `interval`, so agents started together drift
//! apart instead of pulsing. The first test after [`Scheduler::new`] comes at
//! `now + u × interval`, so a fleet started at one instant is spread over one interval at once.
//!
//! # Use
//!
//! When idle, the daemon asks [`Scheduler::peek`] whose turn is due, prices that test against its
//! data budget, then either [`poll`](Scheduler::poll)s and runs it or [`skip`](Scheduler::skip)s
//! it. It sleeps until [`next_due`](Scheduler::next_due), waking at least every minute or so.

use callwatch_proto::Platform;
use chrono::{DateTime, NaiveTime, TimeDelta, Timelike, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::ops::RangeInclusive;
use std::time::Duration;

/// Shortest interval allowed: a 10 s test every minute is already a lot for a volunteer.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);
/// Longest interval allowed.
pub const MAX_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Offsets from UTC in use on Earth: UTC−12:00 to UTC+14:00.
pub const UTC_OFFSET_MINUTES: RangeInclusive<i32> = -720..=840;

/// How often and when the agent tests, as the volunteer configured it.
///
/// Values that fail [`validate`](Self::validate) are clamped into range by the scheduler rather
/// than trusted, so no input makes it panic or spin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    /// Mean time from the start of one test to the start of the next.
    pub interval: Duration,
    /// Random jitter of each gap as a fraction of `interval`, `0..=1`: each gap is uniform in
    /// `interval × (1 ± spread/2)`. 0 means exactly `interval`.
    pub spread: f64,
    /// `(start, end)` local wall-clock times during which no test starts; `start` is inclusive,
    /// `end` exclusive. `start > end` wraps midnight (23:00–07:00).
    pub quiet_hours: Option<(NaiveTime, NaiveTime)>,
    /// The volunteer's offset from UTC in minutes (60 for UTC+1), used for quiet hours only.
    /// Fixed: the agent does not follow daylight-saving changes.
    pub utc_offset_minutes: i32,
    /// Platforms tested in turn.
    pub platforms: Vec<Platform>,
    /// Test/demo override (`run --every`): `interval` may be as short as one second instead
    /// of [`MIN_INTERVAL`].
    #[serde(default)]
    pub allow_short_interval: bool,
}

impl ScheduleConfig {
    /// Every problem in the config, each naming its key, or `Ok` if there are none.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut p = Vec::new();
        if !(self.min_interval()..=MAX_INTERVAL).contains(&self.interval) {
            p.push(format!(
                "interval = {} s: expected {} s (1 minute) to {} s (7 days)",
                self.interval.as_secs_f64(),
                MIN_INTERVAL.as_secs(),
                MAX_INTERVAL.as_secs()
            ));
        }
        if !(0.0..=1.0).contains(&self.spread) {
            p.push(format!(
                "spread = {}: expected a fraction of the interval, 0 to 1",
                self.spread
            ));
        }
        if let Some((start, end)) = self.quiet_hours {
            if start == end {
                p.push(format!(
                    "quiet_hours = {}–{}: start and end are the same; leave quiet_hours unset \
                     to test around the clock",
                    start.format("%H:%M"),
                    end.format("%H:%M")
                ));
            }
            if start.nanosecond() >= 1_000_000_000 || end.nanosecond() >= 1_000_000_000 {
                p.push("quiet_hours: a leap second (:60) is not a usable start or end".into());
            }
        }
        if !UTC_OFFSET_MINUTES.contains(&self.utc_offset_minutes) {
            p.push(format!(
                "utc_offset_minutes = {}: expected {}..={} (UTC−12:00 to UTC+14:00)",
                self.utc_offset_minutes,
                UTC_OFFSET_MINUTES.start(),
                UTC_OFFSET_MINUTES.end()
            ));
        }
        if self.platforms.is_empty() {
            p.push("platforms: name at least one platform".into());
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(p)
        }
    }

    /// Whether `at` falls inside quiet hours (rule 3).
    pub fn is_quiet(&self, at: DateTime<Utc>) -> bool {
        let Some((start, end)) = self.quiet() else {
            return false;
        };
        let Some(local) = at.naive_utc().checked_add_signed(self.offset()) else {
            return false;
        };
        let time = local.time();
        if start < end {
            start <= time && time < end
        } else {
            time >= start || time < end
        }
    }

    /// The shortest interval allowed: [`MIN_INTERVAL`], or one second with
    /// `allow_short_interval`.
    fn min_interval(&self) -> Duration {
        if self.allow_short_interval {
            Duration::from_secs(1)
        } else {
            MIN_INTERVAL
        }
    }

    /// The interval in milliseconds, clamped to `min_interval()..=MAX_INTERVAL`.
    fn interval_ms(&self) -> i64 {
        // Both bounds are a few hundred million ms: the cast cannot truncate.
        self.interval
            .clamp(self.min_interval(), MAX_INTERVAL)
            .as_millis() as i64
    }

    fn spread(&self) -> f64 {
        if self.spread.is_finite() {
            self.spread.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    fn offset(&self) -> TimeDelta {
        let minutes = self
            .utc_offset_minutes
            .clamp(*UTC_OFFSET_MINUTES.start(), *UTC_OFFSET_MINUTES.end());
        TimeDelta::minutes(i64::from(minutes))
    }

    /// Quiet hours as used: none if start equals end, leap seconds folded into their second.
    fn quiet(&self) -> Option<(NaiveTime, NaiveTime)> {
        let fold = |t: NaiveTime| {
            if t.nanosecond() >= 1_000_000_000 {
                t.with_nanosecond(999_999_999).unwrap_or(t)
            } else {
                t
            }
        };
        let (start, end) = self.quiet_hours?;
        let (start, end) = (fold(start), fold(end));
        (start != end).then_some((start, end))
    }

    /// Longest gap rule 1 can produce.
    fn max_gap(&self) -> TimeDelta {
        millis((self.interval_ms() as f64 * (1.0 + self.spread() / 2.0)).ceil())
    }

    /// One gap between test starts (see the module doc).
    fn gap(&self, rng: &mut impl Rng) -> TimeDelta {
        let u: f64 = rng.gen();
        millis((self.interval_ms() as f64 * (1.0 + self.spread() * (u - 0.5))).round())
    }

    /// The first due time at or after `at` that is outside quiet hours (rule 3).
    fn outside_quiet(&self, at: DateTime<Utc>, rng: &mut impl Rng) -> DateTime<Utc> {
        if !self.is_quiet(at) {
            return at;
        }
        let (Some((start, end)), Some(end_at)) = (self.quiet(), self.quiet_end_after(at)) else {
            return at;
        };
        let mut open = start.signed_duration_since(end);
        if open <= TimeDelta::zero() {
            open += TimeDelta::days(1);
        }
        let window_ms = (self.interval_ms() as f64).min(open.num_milliseconds() as f64);
        let u: f64 = rng.gen();
        // Strictly inside the open window even if u × window rounds up to the window.
        let extra_ms = (u * window_ms).floor().min(window_ms - 1.0).max(0.0);
        add(end_at, millis(extra_ms))
    }

    /// When the quiet period containing `at` ends.
    fn quiet_end_after(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (_, end) = self.quiet()?;
        let local = at.naive_utc().checked_add_signed(self.offset())?;
        let mut end_local = local.date().and_time(end);
        if end_local <= local {
            end_local = end_local.checked_add_signed(TimeDelta::days(1))?;
        }
        Some(end_local.checked_sub_signed(self.offset())?.and_utc())
    }

    /// The next due time for a test started (or skipped) at `now`: rules 1–3.
    fn schedule_from(&self, now: DateTime<Utc>, rng: &mut impl Rng) -> DateTime<Utc> {
        self.outside_quiet(add(now, self.gap(rng)), rng)
    }
}

/// A test to run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub platform: Platform,
}

/// The agent's test schedule: what is due when, and whose turn it is. Plain data; persist it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scheduler {
    config: ScheduleConfig,
    next_due: DateTime<Utc>,
    /// The latest `now` handed in, to notice the clock going back (rule 5).
    last_seen: DateTime<Utc>,
    /// Index into `config.platforms` of the next turn (rule 4).
    turn: usize,
}

impl Scheduler {
    /// A fresh schedule: the first test at `now` plus a random fraction of one interval (moved
    /// out of quiet hours), so a fleet started together is spread out from the start.
    pub fn new(config: ScheduleConfig, now: DateTime<Utc>, rng: &mut impl Rng) -> Self {
        let u: f64 = rng.gen();
        let first = add(now, millis((u * config.interval_ms() as f64).floor()));
        let next_due = config.outside_quiet(first, rng);
        Scheduler {
            config,
            next_due,
            last_seen: now,
            turn: 0,
        }
    }

    pub fn config(&self) -> &ScheduleConfig {
        &self.config
    }

    /// When the next test is due, as of the last call. The daemon should sleep until then but
    /// wake at least every minute or so and [`poll`](Self::poll): a suspended machine or a stepped
    /// wall clock makes a timer's idea of "then" wrong, and poll corrects for both.
    pub fn next_due(&self) -> DateTime<Utc> {
        self.next_due
    }

    /// The platform [`poll`](Self::poll) would hand out at `now`, without taking the turn: lets
    /// the daemon price the test and choose between `poll` and [`skip`](Self::skip).
    pub fn peek(&self, now: DateTime<Utc>) -> Option<Platform> {
        let due = if now < self.last_seen {
            sub(self.next_due, self.last_seen.signed_duration_since(now))
        } else {
            self.next_due
        };
        if now < due || self.config.is_quiet(now) {
            return None;
        }
        let turn = self.turn.checked_rem(self.config.platforms.len())?;
        self.config.platforms.get(turn).copied()
    }

    /// Hands out the test that is due at `now`, if any, and schedules the next one. Call only
    /// when no test is running (rule 1).
    pub fn poll(&mut self, now: DateTime<Utc>, rng: &mut impl Rng) -> Option<Due> {
        self.settle(now, rng);
        if now < self.next_due {
            return None;
        }
        if self.config.is_quiet(now) {
            self.next_due = self.config.outside_quiet(now, rng);
            return None;
        }
        let platform = self.take_turn()?;
        self.next_due = self.config.schedule_from(now, rng);
        Some(Due { platform })
    }

    /// The test due now will not run (e.g. over budget): call instead of [`poll`](Self::poll).
    /// The turn passes to the next platform and the next test is scheduled one gap from `now`,
    /// as if this one had run. Called when nothing is due, it skips the next test.
    pub fn skip(&mut self, now: DateTime<Utc>, rng: &mut impl Rng) {
        self.settle(now, rng);
        let _ = self.take_turn();
        self.next_due = self.config.schedule_from(now, rng);
    }

    /// Applies a new config (e.g. after loading persisted state), keeping the rotation. The next
    /// test comes no later than one new gap from `now`, and not in the new quiet hours.
    pub fn reconfigure(&mut self, config: ScheduleConfig, now: DateTime<Utc>, rng: &mut impl Rng) {
        self.config = config;
        self.settle(now, rng);
        if self.next_due > add(now, self.config.max_gap()) {
            self.next_due = self.config.schedule_from(now, rng);
        } else {
            self.next_due = self.config.outside_quiet(self.next_due, rng);
        }
    }

    /// Rule 5: follows the clock back, and replaces a due time no schedule could have produced.
    fn settle(&mut self, now: DateTime<Utc>, rng: &mut impl Rng) {
        if now < self.last_seen {
            self.next_due = sub(self.next_due, self.last_seen.signed_duration_since(now));
        }
        self.last_seen = now;
        // A gap, then at most a day of quiet hours, then at most an interval of spreading.
        let horizon = self.config.max_gap()
            + TimeDelta::days(1)
            + TimeDelta::milliseconds(self.config.interval_ms());
        if self.next_due > add(now, horizon) {
            self.next_due = self.config.schedule_from(now, rng);
        }
    }

    /// The platform whose turn it is, passing the turn on; `None` if there are no platforms.
    fn take_turn(&mut self) -> Option<Platform> {
        let platforms = &self.config.platforms;
        let turn = self.turn.checked_rem(platforms.len())?;
        self.turn = (turn + 1) % platforms.len();
        platforms.get(turn).copied()
    }
}

/// A whole number of milliseconds (fractions dropped), saturating; NaN is zero.
fn millis(ms: f64) -> TimeDelta {
    // `as` saturates; the result is then within TimeDelta's ±i64::MAX ms except i64::MIN.
    TimeDelta::try_milliseconds(ms as i64).unwrap_or(TimeDelta::MAX)
}

fn add(t: DateTime<Utc>, d: TimeDelta) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(if d < TimeDelta::zero() {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

fn sub(t: DateTime<Utc>, d: TimeDelta) -> DateTime<Utc> {
    t.checked_sub_signed(d).unwrap_or(if d < TimeDelta::zero() {
        DateTime::<Utc>::MAX_UTC
    } else {
        DateTime::<Utc>::MIN_UTC
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const MINUTE: TimeDelta = TimeDelta::minutes(1);

    fn config(spread: f64) -> ScheduleConfig {
        ScheduleConfig {
            interval: Duration::from_secs(15 * 60),
            spread,
            quiet_hours: None,
            utc_offset_minutes: 0,
            platforms: vec![Platform::Whatsapp, Platform::Signal, Platform::Generic],
            allow_short_interval: false,
        }
    }

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn hm(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap()
    }

    fn secs(d: TimeDelta) -> f64 {
        d.num_milliseconds() as f64 / 1000.0
    }

    /// Polls every `step` from `from` up to `until`, returning when each test was handed out.
    fn run(
        s: &mut Scheduler,
        rng: &mut StdRng,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        step: TimeDelta,
    ) -> Vec<(DateTime<Utc>, Platform)> {
        let mut out = Vec::new();
        let mut now = from;
        while now < until {
            if let Some(due) = s.poll(now, rng) {
                assert!(s.next_due() > now, "rule 1: next due after now");
                out.push((now, due.platform));
            }
            now += step;
        }
        out
    }

    #[test]
    fn validate_names_every_bad_key() {
        let bad = ScheduleConfig {
            interval: Duration::from_secs(10),
            spread: 1.5,
            quiet_hours: Some((hm(7, 0), hm(7, 0))),
            utc_offset_minutes: 2000,
            platforms: vec![],
            allow_short_interval: false,
        };
        let problems = bad.validate().unwrap_err();
        assert_eq!(problems.len(), 5, "{problems:?}");
        for key in [
            "interval",
            "spread",
            "quiet_hours",
            "utc_offset_minutes",
            "platforms",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(key)),
                "{key}: {problems:?}"
            );
        }
        assert_eq!(config(0.5).validate(), Ok(()));
    }

    #[test]
    fn a_fleet_started_together_spreads_over_one_interval() {
        let now = at(2026, 3, 2, 12, 0);
        let interval = TimeDelta::minutes(15);
        let mut buckets = [0u32; 10];
        for seed in 0..1000 {
            let s = Scheduler::new(config(0.5), now, &mut StdRng::seed_from_u64(seed));
            let offset = s.next_due().signed_duration_since(now);
            assert!(offset >= TimeDelta::zero() && offset < interval, "{offset}");
            let bucket = (offset.num_milliseconds() * 10 / interval.num_milliseconds()) as usize;
            buckets[bucket] += 1;
        }
        // Uniform expectation is 100 a bucket; a pulse would put hundreds in one.
        assert!(buckets.iter().all(|&n| n <= 200), "{buckets:?}");
        assert!(buckets.iter().all(|&n| n >= 50), "{buckets:?}");
    }

    #[test]
    fn steady_state_gaps_stay_within_the_spread() {
        let spread = 0.4;
        let mut rng = StdRng::seed_from_u64(1);
        let now = at(2026, 3, 2, 0, 0);
        let mut s = Scheduler::new(config(spread), now, &mut rng);
        let (lo, hi) = (
            15.0 * 60.0 * (1.0 - spread / 2.0),
            15.0 * 60.0 * (1.0 + spread / 2.0),
        );
        let mut t = s.next_due();
        let (mut min, mut max, mut sum) = (f64::MAX, 0.0f64, 0.0);
        for _ in 0..2000 {
            assert!(s.poll(t, &mut rng).is_some());
            let gap = secs(s.next_due().signed_duration_since(t));
            assert!((lo..=hi).contains(&gap), "{gap} not in {lo}..={hi}");
            (min, max, sum) = (min.min(gap), max.max(gap), sum + gap);
            t = s.next_due();
        }
        // Gaps really are jittered across the range, with the interval as their mean.
        assert!(min < lo + 30.0 && max > hi - 30.0, "{min} {max}");
        assert!((sum / 2000.0 - 900.0).abs() < 10.0, "mean {}", sum / 2000.0);

        // Polled second by second, tests come one at a time at those gaps.
        let starts = run(
            &mut s,
            &mut rng,
            t,
            t + TimeDelta::hours(6),
            TimeDelta::seconds(1),
        );
        for pair in starts.windows(2) {
            let gap = secs(pair[1].0.signed_duration_since(pair[0].0));
            assert!(gap >= lo && gap <= hi + 1.0, "{gap}");
        }
    }

    #[test]
    fn catch_up_after_a_long_sleep_is_one_test_then_a_normal_gap() {
        let mut rng = StdRng::seed_from_u64(2);
        let start = at(2026, 3, 2, 8, 0);
        let mut s = Scheduler::new(config(0.5), start, &mut rng);
        let before = run(&mut s, &mut rng, start, start + TimeDelta::hours(1), MINUTE);
        assert!(!before.is_empty());
        // The laptop sleeps ten hours: forty slots missed.
        let wake = before.last().unwrap().0 + TimeDelta::hours(10);
        let after = run(
            &mut s,
            &mut rng,
            wake,
            wake + TimeDelta::hours(1),
            TimeDelta::seconds(1),
        );
        assert_eq!(after[0].0, wake, "one test as soon as it wakes");
        let gap = secs(after[1].0.signed_duration_since(after[0].0));
        assert!((675.0..=1126.0).contains(&gap), "then a normal gap: {gap}");
        assert!(after.len() <= 6, "no burst: {}", after.len());
    }

    #[test]
    fn quiet_hours_are_never_violated_over_a_week() {
        for (offset, quiet, seed) in [
            (0, (hm(23, 0), hm(7, 0)), 3),
            (60, (hm(23, 0), hm(7, 0)), 4),
            (-330, (hm(23, 0), hm(7, 0)), 5),
            (120, (hm(12, 0), hm(13, 30)), 6),
        ] {
            let mut cfg = config(0.5);
            cfg.quiet_hours = Some(quiet);
            cfg.utc_offset_minutes = offset;
            let local = |t: DateTime<Utc>| (t + TimeDelta::minutes(offset.into())).time();
            for sleepy in [false, true] {
                let mut rng = StdRng::seed_from_u64(seed);
                let start = at(2026, 3, 2, 0, 0);
                let mut s = Scheduler::new(cfg.clone(), start, &mut rng);
                let mut now = start;
                let mut tests = Vec::new();
                for minute in 0..7 * 24 * 60 {
                    // The sleepy laptop now and then sleeps for up to ten hours.
                    if sleepy && minute % 997 == 0 {
                        now += TimeDelta::minutes(rng.gen_range(0..600));
                    }
                    if s.poll(now, &mut rng).is_some() {
                        let time = local(now);
                        let inside = if quiet.0 < quiet.1 {
                            quiet.0 <= time && time < quiet.1
                        } else {
                            time >= quiet.0 || time < quiet.1
                        };
                        assert!(!inside, "test at local {time} inside {quiet:?}");
                        assert!(!cfg.is_quiet(now));
                        tests.push(now);
                    }
                    assert!(!cfg.is_quiet(s.next_due()), "due {} is quiet", s.next_due());
                    now += MINUTE;
                }
                assert!(tests.len() > 200, "{}", tests.len());
                if !sleepy {
                    // Every day the first test after quiet hours comes within one interval (and
                    // the minute it takes to poll) of their end.
                    let resumed = tests
                        .iter()
                        .filter(|t| {
                            let time = local(**t);
                            time >= quiet.1 && time <= quiet.1 + TimeDelta::minutes(16)
                        })
                        .count();
                    assert!(resumed >= 7, "{quiet:?}: {resumed}");
                }
            }
        }
    }

    #[test]
    fn a_due_time_in_quiet_hours_moves_to_their_end_plus_spread() {
        let mut cfg = config(0.5);
        cfg.quiet_hours = Some((hm(23, 0), hm(7, 0)));
        let mut rng = StdRng::seed_from_u64(7);
        let s = Scheduler::new(cfg, at(2026, 3, 2, 23, 0), &mut rng);
        let seven = at(2026, 3, 3, 7, 0);
        assert!(s.next_due() >= seven && s.next_due() < seven + TimeDelta::minutes(15));
        // Started inside quiet hours, likewise.
        let s = Scheduler::new(s.config().clone(), at(2026, 3, 3, 2, 0), &mut rng);
        assert!(s.next_due() >= seven && s.next_due() < seven + TimeDelta::minutes(15));
    }

    #[test]
    fn platforms_take_turns_and_a_skip_passes_the_turn() {
        let mut rng = StdRng::seed_from_u64(8);
        let start = at(2026, 3, 2, 9, 0);
        let mut s = Scheduler::new(config(0.5), start, &mut rng);
        let names: Vec<Platform> =
            run(&mut s, &mut rng, start, start + TimeDelta::hours(3), MINUTE)
                .into_iter()
                .map(|(_, p)| p)
                .collect();
        assert!(names.len() >= 9);
        for (i, name) in names.iter().enumerate() {
            assert_eq!(name, &config(0.5).platforms[i % 3]);
        }
        let now = s.next_due();
        let next = s.peek(now).unwrap();
        assert_eq!(s.peek(now - TimeDelta::seconds(1)), None, "not due yet");
        s.skip(now, &mut rng);
        assert!(s.next_due() > now);
        let after = s.poll(s.next_due(), &mut rng).unwrap().platform;
        let platforms = &config(0.5).platforms;
        let i = platforms.iter().position(|p| *p == next).unwrap();
        assert_eq!(after, platforms[(i + 1) % 3]);
    }

    #[test]
    fn peek_agrees_with_poll() {
        let mut cfg = config(0.5);
        cfg.quiet_hours = Some((hm(23, 0), hm(7, 0)));
        let mut rng = StdRng::seed_from_u64(9);
        let start = at(2026, 3, 2, 20, 0);
        let mut s = Scheduler::new(cfg, start, &mut rng);
        let mut now = start;
        for i in 0..3000 {
            if i == 1500 {
                now -= TimeDelta::hours(5);
            }
            let peeked = s.peek(now);
            assert_eq!(peeked, s.poll(now, &mut rng).map(|d| d.platform), "{now}");
            now += MINUTE;
        }
    }

    #[test]
    fn clock_going_back_neither_bursts_nor_stalls() {
        for (back, seed) in [
            (TimeDelta::seconds(5), 10),
            (TimeDelta::hours(5), 11),
            (TimeDelta::days(400), 12),
        ] {
            let mut rng = StdRng::seed_from_u64(seed);
            let start = at(2026, 3, 2, 9, 0);
            let mut s = Scheduler::new(config(0.5), start, &mut rng);
            let before = run(&mut s, &mut rng, start, start + TimeDelta::hours(2), MINUTE);
            let last = before.last().unwrap().0;
            // The clock steps back a minute after a test.
            let jumped = last + MINUTE - back;
            let after = run(
                &mut s,
                &mut rng,
                jumped,
                jumped + TimeDelta::hours(1),
                TimeDelta::seconds(1),
            );
            // The wait left before the jump is kept: at most the longest gap less that minute.
            let waited = after[0].0.signed_duration_since(jumped);
            assert!(
                waited <= TimeDelta::seconds(1125) - MINUTE,
                "{back}: stalled {waited}"
            );
            for pair in after.windows(2) {
                let gap = pair[1].0.signed_duration_since(pair[0].0);
                assert!(gap >= TimeDelta::seconds(675), "{back}: burst {after:?}");
            }
        }
    }

    #[test]
    fn restored_state_with_a_far_due_time_is_rescheduled() {
        let mut rng = StdRng::seed_from_u64(13);
        let now = at(2026, 3, 2, 9, 0);
        let mut daily = config(0.0);
        daily.interval = Duration::from_secs(24 * 3600);
        let mut s = Scheduler::new(daily, now, &mut rng);
        s.poll(s.next_due(), &mut rng).unwrap();
        let t = s.next_due() - TimeDelta::hours(23);
        s.reconfigure(config(0.5), t, &mut rng);
        assert!(
            s.next_due() <= t + TimeDelta::seconds(1125),
            "{}",
            s.next_due()
        );
        // A corrupt state file: due in ten years.
        let mut s = Scheduler::new(config(0.5), now, &mut rng);
        s.next_due = now + TimeDelta::days(3650);
        let found = run(&mut s, &mut rng, now, now + TimeDelta::hours(1), MINUTE);
        assert!(!found.is_empty());
    }

    #[test]
    fn state_survives_a_json_round_trip() {
        let mut cfg = config(0.3);
        cfg.quiet_hours = Some((hm(22, 30), hm(6, 45)));
        cfg.utc_offset_minutes = -300;
        let mut rng = StdRng::seed_from_u64(14);
        let start = at(2026, 3, 2, 9, 0);
        let mut s = Scheduler::new(cfg, start, &mut rng);
        run(&mut s, &mut rng, start, start + TimeDelta::hours(1), MINUTE);
        let json = serde_json::to_string(&s).unwrap();
        let mut back: Scheduler = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        let until = start + TimeDelta::days(2);
        let from = start + TimeDelta::hours(1);
        let a = run(&mut s, &mut StdRng::seed_from_u64(15), from, until, MINUTE);
        let b = run(
            &mut back,
            &mut StdRng::seed_from_u64(15),
            from,
            until,
            MINUTE,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn no_platforms_never_hands_out_a_test() {
        let mut cfg = config(0.5);
        cfg.platforms.clear();
        let mut rng = StdRng::seed_from_u64(16);
        let start = at(2026, 3, 2, 9, 0);
        let mut s = Scheduler::new(cfg, start, &mut rng);
        assert!(run(&mut s, &mut rng, start, start + TimeDelta::hours(2), MINUTE).is_empty());
        s.skip(start, &mut rng);
    }

    fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
        prop_oneof![
            // Anywhere chrono can represent.
            (DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MAX_UTC.timestamp())
                .prop_map(|s| DateTime::from_timestamp(s, 0).unwrap()),
            // Around now, where ordinary bugs live.
            (1_700_000_000i64..1_900_000_000).prop_map(|s| DateTime::from_timestamp(s, 0).unwrap()),
        ]
    }

    fn any_config() -> impl Strategy<Value = ScheduleConfig> {
        (
            (0u64..=u64::MAX, 0u32..1_000_000_000),
            prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -2.0f64..3.0],
            proptest::option::of((0u32..86_400, 0u32..86_400, 0u32..2_000_000_000)),
            any::<i32>(),
            proptest::collection::vec(proptest::sample::select(Platform::ALL.to_vec()), 0..4),
        )
            .prop_map(|((s, n), spread, quiet, offset, platforms)| {
                let t = |secs: u32, nanos: u32| {
                    NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)
                        .unwrap_or(NaiveTime::MIN)
                };
                ScheduleConfig {
                    interval: Duration::new(s, n),
                    spread,
                    quiet_hours: quiet.map(|(a, b, n)| (t(a, n), t(b, 0))),
                    utc_offset_minutes: offset,
                    platforms,
                    allow_short_interval: false,
                }
            })
    }

    #[derive(Clone, Debug)]
    enum Op {
        Poll(i64),
        Skip(i64),
        Reconfigure(i64),
        Jump(DateTime<Utc>),
    }

    fn any_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (-100_000i64..1_000_000).prop_map(Op::Poll),
            1 => (0i64..100_000).prop_map(Op::Skip),
            1 => (0i64..100_000).prop_map(Op::Reconfigure),
            1 => any_time().prop_map(Op::Jump),
        ]
    }

    proptest! {
        #[test]
        fn never_panics_and_never_tests_in_quiet_hours(
            cfg in any_config(),
            other in any_config(),
            start in any_time(),
            ops in proptest::collection::vec(any_op(), 0..60),
            seed in any::<u64>(),
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut s = Scheduler::new(cfg, start, &mut rng);
            let mut now = start;
            for op in ops {
                match op {
                    Op::Poll(step) => {
                        now = add(now, TimeDelta::seconds(step));
                        let peeked = s.peek(now);
                        let due = s.poll(now, &mut rng);
                        prop_assert_eq!(peeked, due.as_ref().map(|d| d.platform));
                        if due.is_some() {
                            prop_assert!(!s.config().is_quiet(now));
                        }
                    }
                    Op::Skip(step) => {
                        now = add(now, TimeDelta::seconds(step));
                        s.skip(now, &mut rng);
                    }
                    Op::Reconfigure(step) => {
                        now = add(now, TimeDelta::seconds(step));
                        s.reconfigure(other.clone(), now, &mut rng);
                    }
                    Op::Jump(t) => now = t,
                }
                let _ = s.next_due();
            }
        }

        #[test]
        fn moving_forward_tests_are_at_least_a_short_gap_apart(
            cfg in any_config(),
            start in 1_700_000_000i64..1_900_000_000,
            steps in proptest::collection::vec(0i64..100_000, 1..200),
            seed in any::<u64>(),
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut now = DateTime::from_timestamp(start, 0).unwrap();
            let mut s = Scheduler::new(cfg.clone(), now, &mut rng);
            let min_gap = (cfg.interval_ms() as f64 * (1.0 - cfg.spread() / 2.0)).floor() as i64;
            let mut last: Option<DateTime<Utc>> = None;
            for step in steps {
                now += TimeDelta::seconds(step);
                if s.poll(now, &mut rng).is_some() {
                    prop_assert!(!cfg.is_quiet(now));
                    prop_assert!(s.next_due() > now);
                    if let Some(last) = last {
                        prop_assert!(now.signed_duration_since(last).num_milliseconds() >= min_gap);
                    }
                    last = Some(now);
                }
            }
        }
    }
}
