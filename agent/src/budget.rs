//! How much data the agent may still spend: a volunteer's daily and monthly data budget.
//!
//! Volunteers on metered connections cap what callwatch uses. Before a test the daemon prices it
//! ([`estimate_test_bytes`]) and asks [`Budget::check`]; afterwards it [`record`](Budget::record)s
//! what was actually sent and received. The [`Budget`] is plain data the daemon persists.
//!
//! # Rules
//!
//! 1. Days and months are UTC: the daily count resets at 00:00 UTC, the monthly count at 00:00 UTC
//!    on the 1st.
//! 2. A test is refused if it would take either count past its limit; the monthly refusal is
//!    reported first, because it is the one that frees up last.
//! 3. A clock that steps back a day or less (an NTP correction across midnight) frees nothing:
//!    the counts stay with the later day. A clock that steps back further is taken to have been
//!    wrong before (set years ahead, then corrected): counting starts afresh from today, so the
//!    agent is not stalled until that far-off date. Such a jump frees at most one budget.

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// IPv4 (20) + UDP (8) header bytes on every packet.
pub const IPV4_UDP_HEADER_BYTES: u32 = 28;
/// IPv6 (40) + UDP (8) header bytes on every packet.
pub const IPV6_UDP_HEADER_BYTES: u32 = 48;

/// The volunteer's limits; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetConfig {
    pub per_day_bytes: Option<u64>,
    pub per_month_bytes: Option<u64>,
}

/// Which budget refused a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BudgetPeriod {
    Day,
    Month,
}

impl BudgetPeriod {
    fn adjective(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "daily",
            BudgetPeriod::Month => "monthly",
        }
    }

    fn config_key(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "budget_per_day",
            BudgetPeriod::Month => "budget_per_month",
        }
    }
}

/// Why a test may not run now; its `Display` is written for the volunteer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetRefusal {
    pub period: BudgetPeriod,
    pub used_bytes: u64,
    pub limit_bytes: u64,
    pub cost_bytes: u64,
    /// When the count that refused starts again from zero.
    pub resets_at: DateTime<Utc>,
}

impl fmt::Display for BudgetRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = unit_for(self.limit_bytes);
        write!(
            f,
            "{} data budget: {} used of {}; this test needs {}",
            self.period.adjective(),
            format_near(self.used_bytes, unit),
            format_near(self.limit_bytes, unit),
            format_near(self.cost_bytes, unit),
        )?;
        if self.cost_bytes > self.limit_bytes {
            write!(
                f,
                ", more than the whole budget; raise {} to run it",
                self.period.config_key()
            )
        } else {
            match self.period {
                BudgetPeriod::Day => {
                    write!(f, "; resets at {}", self.resets_at.format("%H:%M UTC"))
                }
                BudgetPeriod::Month => write!(
                    f,
                    "; resets on {}",
                    self.resets_at.format("%Y-%m-%d at %H:%M UTC")
                ),
            }
        }
    }
}

impl std::error::Error for BudgetRefusal {}

/// Bytes used in the current UTC day and month. Plain data; persist it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    config: BudgetConfig,
    /// The UTC day the counts were last added to; `None` before the first record.
    counted_on: Option<NaiveDate>,
    day_bytes: u64,
    month_bytes: u64,
}

impl Budget {
    pub fn new(config: BudgetConfig) -> Self {
        Budget {
            config,
            counted_on: None,
            day_bytes: 0,
            month_bytes: 0,
        }
    }

    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// Applies new limits (e.g. after loading persisted state), keeping the counts.
    pub fn set_config(&mut self, config: BudgetConfig) {
        self.config = config;
    }

    /// Bytes used `(today, this month)` as of `now`, counting resets.
    pub fn used(&self, now: DateTime<Utc>) -> (u64, u64) {
        let Some(counted_on) = self.counted_on else {
            return (0, 0);
        };
        let today = self.today(now);
        let day = if today == counted_on {
            self.day_bytes
        } else {
            0
        };
        let month = if month_of(today) == month_of(counted_on) {
            self.month_bytes
        } else {
            0
        };
        (day, month)
    }

    /// Whether a test costing `cost_bytes` fits both budgets at `now`.
    pub fn check(&self, now: DateTime<Utc>, cost_bytes: u64) -> Result<(), BudgetRefusal> {
        let (day_used, month_used) = self.used(now);
        let today = self.today(now);
        let refusal = |period, used_bytes, limit_bytes, resets_at| BudgetRefusal {
            period,
            used_bytes,
            limit_bytes,
            cost_bytes,
            resets_at,
        };
        if let Some(limit) = self.config.per_month_bytes {
            if month_used.saturating_add(cost_bytes) > limit {
                return Err(refusal(
                    BudgetPeriod::Month,
                    month_used,
                    limit,
                    next_month_start(today),
                ));
            }
        }
        if let Some(limit) = self.config.per_day_bytes {
            if day_used.saturating_add(cost_bytes) > limit {
                return Err(refusal(
                    BudgetPeriod::Day,
                    day_used,
                    limit,
                    next_day_start(today),
                ));
            }
        }
        Ok(())
    }

    /// Counts `bytes` spent at `now`.
    pub fn record(&mut self, now: DateTime<Utc>, bytes: u64) {
        let (day, month) = self.used(now);
        self.counted_on = Some(self.today(now));
        self.day_bytes = day.saturating_add(bytes);
        self.month_bytes = month.saturating_add(bytes);
    }

    /// The UTC day `now` counts towards: the counted day if the clock is at most a day behind
    /// it (rule 3), otherwise now's own date.
    fn today(&self, now: DateTime<Utc>) -> NaiveDate {
        let date = now.date_naive();
        match self.counted_on {
            Some(counted_on)
                if counted_on > date
                    && counted_on.signed_duration_since(date) <= TimeDelta::days(1) =>
            {
                counted_on
            }
            _ => date,
        }
    }
}

fn month_of(date: NaiveDate) -> (i32, u32) {
    (date.year(), date.month())
}

fn next_day_start(today: NaiveDate) -> DateTime<Utc> {
    today.succ_opt().map_or(DateTime::<Utc>::MAX_UTC, |d| {
        d.and_time(Default::default()).and_utc()
    })
}

fn next_month_start(today: NaiveDate) -> DateTime<Utc> {
    let (year, month) = match today.month() {
        12 => (today.year().saturating_add(1), 1),
        m => (today.year(), m + 1),
    };
    NaiveDate::from_ymd_opt(year, month, 1).map_or(DateTime::<Utc>::MAX_UTC, |d| {
        d.and_time(Default::default()).and_utc()
    })
}

/// Bytes on the wire for one test, both directions, IPv4: every arm sends a packet of
/// `packet_bytes` (UDP payload) every `interval_ms` for `duration_ms` and gets it echoed back.
/// Over IPv6 use [`estimate_test_bytes_with_headers`] with [`IPV6_UDP_HEADER_BYTES`] (48, not 28).
///
/// Counts packets rounded up, so it never falls short of what the engine sends; leaves out the
/// handful of session open/close packets and link-layer framing, which metered plans mostly do
/// not count either. A test of one arm, 10 s of 172-byte packets every 20 ms, is
/// 500 packets × 2 directions × (172 + 28) B = 200 000 B.
pub fn estimate_test_bytes(
    arms: u32,
    packet_bytes: u32,
    interval_ms: u32,
    duration_ms: u32,
) -> u64 {
    estimate_test_bytes_with_headers(
        arms,
        packet_bytes,
        IPV4_UDP_HEADER_BYTES,
        interval_ms,
        duration_ms,
    )
}

/// [`estimate_test_bytes`] with `header_bytes` of IP and UDP headers per packet. A zero
/// interval is taken as 1 ms; a result beyond `u64` is `u64::MAX`.
pub fn estimate_test_bytes_with_headers(
    arms: u32,
    packet_bytes: u32,
    header_bytes: u32,
    interval_ms: u32,
    duration_ms: u32,
) -> u64 {
    let packets_per_direction = u128::from(duration_ms.div_ceil(interval_ms.max(1)));
    let per_packet = u128::from(packet_bytes) + u128::from(header_bytes);
    let total = u128::from(arms) * packets_per_direction * 2 * per_packet;
    u64::try_from(total).unwrap_or(u64::MAX)
}

/// Decimal units, as data plans count: 1 MB = 1 000 000 B.
const UNITS: [(u64, &str); 7] = [
    (1, "B"),
    (1_000, "kB"),
    (1_000_000, "MB"),
    (1_000_000_000, "GB"),
    (1_000_000_000_000, "TB"),
    (1_000_000_000_000_000, "PB"),
    (1_000_000_000_000_000_000, "EB"),
];

/// `bytes` for a person: three significant digits in the largest unit that keeps the number at
/// least 1 (`172 B`, `9.8 MB`, `1.23 GB`).
pub fn format_bytes(bytes: u64) -> String {
    format_in(bytes, unit_for(bytes))
}

fn unit_for(bytes: u64) -> (u64, &'static str) {
    UNITS
        .iter()
        .rev()
        .find(|(scale, _)| bytes >= *scale)
        .copied()
        .unwrap_or(UNITS[0])
}

/// `bytes` in `unit` if that reads at least 0.1 of it ("0.5 MB" beside "10 MB"), else in its own.
fn format_near(bytes: u64, unit: (u64, &'static str)) -> String {
    if bytes == 0 || bytes.saturating_mul(10) >= unit.0 {
        format_in(bytes, unit)
    } else {
        format_bytes(bytes)
    }
}

fn format_in(bytes: u64, (scale, name): (u64, &str)) -> String {
    if scale <= 1 {
        return format!("{bytes} {name}");
    }
    let value = bytes as f64 / scale as f64;
    let decimals = if value > 0.0 {
        (2 - value.log10().floor() as i32).clamp(0, 12) as usize
    } else {
        0
    };
    let text = format!("{value:.decimals$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text} {name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    const VOICE_TEST: u64 = 200_000;

    #[test]
    fn estimates_count_both_directions_and_headers() {
        assert_eq!(estimate_test_bytes(1, 172, 20, 10_000), VOICE_TEST);
        assert_eq!(estimate_test_bytes(2, 172, 20, 10_000), 2 * VOICE_TEST);
        assert_eq!(
            estimate_test_bytes_with_headers(1, 172, IPV6_UDP_HEADER_BYTES, 20, 10_000),
            500 * 2 * 220
        );
        // 10 000 / 30 = 333.3: the 334th packet is counted.
        assert_eq!(estimate_test_bytes(1, 172, 30, 10_000), 334 * 2 * 200);
        assert_eq!(estimate_test_bytes(0, 172, 20, 10_000), 0);
        assert_eq!(estimate_test_bytes(1, 172, 0, 10), 10 * 2 * 200);
        assert_eq!(
            estimate_test_bytes(u32::MAX, u32::MAX, 1, u32::MAX),
            u64::MAX
        );
    }

    #[test]
    fn a_budget_smaller_than_two_tests_allows_one() {
        let now = at(2026, 3, 2, 9, 0);
        let mut b = Budget::new(BudgetConfig {
            per_day_bytes: Some(300_000),
            per_month_bytes: None,
        });
        assert_eq!(b.check(now, VOICE_TEST), Ok(()));
        b.record(now, VOICE_TEST);
        let later = now + TimeDelta::minutes(15);
        let refusal = b.check(later, VOICE_TEST).unwrap_err();
        assert_eq!(refusal.period, BudgetPeriod::Day);
        assert_eq!(refusal.resets_at, at(2026, 3, 3, 0, 0));
        assert_eq!(
            refusal.to_string(),
            "daily data budget: 200 kB used of 300 kB; this test needs 200 kB; \
             resets at 00:00 UTC"
        );
    }

    #[test]
    fn refusal_reads_as_the_volunteer_expects() {
        let now = at(2026, 3, 2, 9, 0);
        let mut b = Budget::new(BudgetConfig {
            per_day_bytes: Some(10_000_000),
            per_month_bytes: Some(1_000_000_000),
        });
        b.record(now, 9_800_000);
        assert_eq!(
            b.check(now, 500_000).unwrap_err().to_string(),
            "daily data budget: 9.8 MB used of 10 MB; this test needs 0.5 MB; resets at 00:00 UTC"
        );
        // Monthly, with the date it resets.
        b.set_config(BudgetConfig {
            per_day_bytes: None,
            per_month_bytes: Some(10_000_000),
        });
        assert_eq!(
            b.check(now, 250_000).unwrap_err().to_string(),
            "monthly data budget: 9.8 MB used of 10 MB; this test needs 0.25 MB; \
             resets on 2026-04-01 at 00:00 UTC"
        );
        b.set_config(BudgetConfig {
            per_day_bytes: Some(100_000),
            per_month_bytes: None,
        });
        let fresh = Budget::new(*b.config());
        assert_eq!(
            fresh.check(now, VOICE_TEST).unwrap_err().to_string(),
            "daily data budget: 0 kB used of 100 kB; this test needs 200 kB, more than the \
             whole budget; raise budget_per_day to run it"
        );
    }

    #[test]
    fn the_budget_that_frees_up_last_is_reported() {
        let now = at(2026, 3, 2, 9, 0);
        let mut b = Budget::new(BudgetConfig {
            per_day_bytes: Some(300_000),
            per_month_bytes: Some(300_000),
        });
        b.record(now, VOICE_TEST);
        let refusal = b.check(now, VOICE_TEST).unwrap_err();
        assert_eq!(refusal.period, BudgetPeriod::Month);
        assert_eq!(refusal.resets_at, at(2026, 4, 1, 0, 0));
    }

    #[test]
    fn a_new_day_resets_the_day_but_not_the_month() {
        let mut b = Budget::new(BudgetConfig {
            per_day_bytes: Some(300_000),
            per_month_bytes: Some(500_000),
        });
        b.record(at(2026, 3, 2, 23, 50), VOICE_TEST);
        assert_eq!(b.used(at(2026, 3, 2, 23, 59)), (VOICE_TEST, VOICE_TEST));
        assert!(b.check(at(2026, 3, 2, 23, 59), VOICE_TEST).is_err());
        let next_day = at(2026, 3, 3, 0, 0);
        assert_eq!(b.used(next_day), (0, VOICE_TEST));
        assert_eq!(b.check(next_day, VOICE_TEST), Ok(()));
        b.record(next_day, VOICE_TEST);
        assert_eq!(b.used(next_day), (VOICE_TEST, 2 * VOICE_TEST));
        // The month now binds even though today has room.
        let day_after = at(2026, 3, 4, 12, 0);
        assert_eq!(b.used(day_after), (0, 2 * VOICE_TEST));
        let refusal = b.check(day_after, VOICE_TEST).unwrap_err();
        assert_eq!(refusal.period, BudgetPeriod::Month);
    }

    #[test]
    fn a_new_month_resets_both() {
        let mut b = Budget::new(BudgetConfig {
            per_day_bytes: None,
            per_month_bytes: Some(300_000),
        });
        b.record(at(2026, 12, 31, 23, 59), VOICE_TEST);
        let refusal = b.check(at(2026, 12, 31, 23, 59), VOICE_TEST).unwrap_err();
        assert_eq!(refusal.resets_at, at(2027, 1, 1, 0, 0));
        assert_eq!(b.used(at(2027, 1, 1, 0, 0)), (0, 0));
        assert_eq!(b.check(at(2027, 1, 1, 0, 0), VOICE_TEST), Ok(()));
        // Jumping a month ahead within the same day-of-month still resets.
        b.record(at(2027, 1, 15, 8, 0), 5);
        assert_eq!(b.used(at(2027, 2, 15, 8, 0)), (0, 0));
    }

    #[test]
    fn a_clock_going_back_frees_no_budget_unless_it_was_far_ahead() {
        let mut b = Budget::new(BudgetConfig {
            per_day_bytes: Some(300_000),
            per_month_bytes: None,
        });
        b.record(at(2026, 4, 1, 0, 1), VOICE_TEST);
        // An NTP step back across midnight (and the month's end) keeps the counts.
        let stepped = at(2026, 3, 31, 23, 59);
        assert_eq!(b.used(stepped), (VOICE_TEST, VOICE_TEST));
        assert!(b.check(stepped, VOICE_TEST).is_err());
        b.record(stepped, 1);
        assert_eq!(
            b.used(at(2026, 4, 1, 0, 2)),
            (VOICE_TEST + 1, VOICE_TEST + 1)
        );
        // A clock that was years ahead, once corrected, does not stall the agent until then.
        let mut b = Budget::new(*b.config());
        b.record(at(2031, 6, 1, 0, 0), 300_000);
        assert_eq!(b.used(at(2026, 6, 1, 0, 0)), (0, 0));
    }

    #[test]
    fn unlimited_allows_everything() {
        let now = at(2026, 3, 2, 9, 0);
        let mut b = Budget::new(BudgetConfig::default());
        b.record(now, u64::MAX);
        b.record(now, u64::MAX);
        assert_eq!(b.used(now), (u64::MAX, u64::MAX));
        assert_eq!(b.check(now, u64::MAX), Ok(()));
    }

    #[test]
    fn bytes_format_for_people() {
        for (bytes, text) in [
            (0, "0 B"),
            (172, "172 B"),
            (999, "999 B"),
            (1_000, "1 kB"),
            (200_000, "200 kB"),
            (9_800_000, "9.8 MB"),
            (10_000_000, "10 MB"),
            (1_234_567_890, "1.23 GB"),
            (12_345_678, "12.3 MB"),
            (u64::MAX, "18.4 EB"),
        ] {
            assert_eq!(format_bytes(bytes), text);
        }
        assert_eq!(format_near(500_000, unit_for(10_000_000)), "0.5 MB");
        assert_eq!(format_near(1_500, unit_for(10_000_000)), "1.5 kB");
    }

    #[test]
    fn state_survives_a_json_round_trip() {
        let mut b = Budget::new(BudgetConfig {
            per_day_bytes: Some(1),
            per_month_bytes: None,
        });
        b.record(at(2026, 3, 2, 9, 0), 42);
        let back: Budget = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        assert_eq!(back, b);
    }

    fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
        prop_oneof![
            (DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MAX_UTC.timestamp())
                .prop_map(|s| DateTime::from_timestamp(s, 0).unwrap()),
            (1_700_000_000i64..1_800_000_000).prop_map(|s| DateTime::from_timestamp(s, 0).unwrap()),
        ]
    }

    proptest! {
        #[test]
        fn used_never_exceeds_what_was_recorded(
            day in proptest::option::of(any::<u64>()),
            month in proptest::option::of(any::<u64>()),
            records in proptest::collection::vec((any_time(), any::<u64>()), 0..40),
            probes in proptest::collection::vec((any_time(), any::<u64>()), 0..10),
        ) {
            let mut b = Budget::new(BudgetConfig { per_day_bytes: day, per_month_bytes: month });
            let mut total: u64 = 0;
            for (now, bytes) in records {
                b.record(now, bytes);
                total = total.saturating_add(bytes);
                let (d, m) = b.used(now);
                prop_assert!(d <= m && m <= total);
                prop_assert!(d >= bytes);
            }
            for (now, cost) in probes {
                let (d, m) = b.used(now);
                prop_assert!(d <= m && m <= total);
                match b.check(now, cost) {
                    Ok(()) => {
                        prop_assert!(day.is_none_or(|l| d.saturating_add(cost) <= l));
                        prop_assert!(month.is_none_or(|l| m.saturating_add(cost) <= l));
                    }
                    Err(refusal) => {
                        prop_assert!(refusal.resets_at > now || refusal.resets_at == DateTime::<Utc>::MAX_UTC);
                        prop_assert!(!refusal.to_string().is_empty());
                    }
                }
            }
        }

        #[test]
        fn a_record_is_counted_at_once(now in any_time(), bytes in any::<u64>()) {
            let mut b = Budget::new(BudgetConfig::default());
            b.record(now, bytes);
            prop_assert_eq!(b.used(now), (bytes, bytes));
        }

        #[test]
        fn estimates_never_panic(a in any::<u32>(), p in any::<u32>(), h in any::<u32>(), i in any::<u32>(), d in any::<u32>()) {
            let e = estimate_test_bytes_with_headers(a, p, h, i, d);
            prop_assert!(e >= estimate_test_bytes_with_headers(a, p, 0, i, d));
            let _ = format_bytes(e);
        }
    }
}
