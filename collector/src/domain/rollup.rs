//! Published roll-ups: what one UTC day of one *family* — (country, platform, arm, stream kind),
//! every ASN and subdivision — publishes, decided once and kept, so that a query over months
//! reads a few cells per family instead of every network's day.
//!
//! The unit of publication is the day block ([`super::Grouper`]): k is decided per (day,
//! country, ASN, platform, arm, kind), and a day's small networks form one remainder per (day,
//! country, platform, arm, kind). So a roll-up above the day cannot be a plain merge of day
//! cells; it must hold the day's *published atoms*, for one k:
//!
//! - a **day family** ([`Level::DayFamily`]): the merge of the family's blocks that meet k and of
//!   its remainder if that meets k — what a query without the ASN, region or hour axis (and
//!   without those filters) publishes of that family's day, whatever else it asks;
//! - a **day block** ([`Level::DayBlock`]): each block that meets k, on its own — what a query by
//!   ASN publishes of it (remainders span networks and are never published by ASN);
//! - a **month family** and a **month block** ([`Level::MonthFamily`], [`Level::MonthBlock`]):
//!   the merges of those over one calendar month (UTC), for queries without the day axis that
//!   cover the whole month.
//!
//! Merging is exact (counts, agent sets, verdicts and sketch bins add), so a query answered from
//! roll-ups publishes exactly what it publishes from day cells. Region and hour queries, and a k
//! other than the roll-ups', are answered from day and hourly cells as before. A store keeps
//! roll-ups exact under late uploads by marking the (day, family) of every counted observation
//! *dirty* in the transaction that stores it; a dirty day is read from its day cells until the
//! roll-up is recomputed ([`publish_day`]) and the mark removed.

use super::cell::{CellKey, CellState, CELL_KEY_LEN};
use super::codes::NO_SUBDIVISION;
use super::query::{meets_together, Axis, Filter};
use super::query::{Grouper, Policy};
use callwatch_proto::Platform;
use chrono::{Datelike, NaiveDate};
use std::collections::BTreeMap;

/// The kinds of roll-up cell, the first byte of a roll-up key ([`Level::key`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    DayFamily = 0,
    DayBlock = 1,
    MonthFamily = 2,
    MonthBlock = 3,
    /// A day's families of one (country, arm, kind) merged over platforms.
    DayCountry = 4,
    MonthCountry = 5,
    /// One hour of a family: the merge of its blocks' published hours.
    HourFamily = 6,
    /// One hour of a (country, arm, kind), over platforms.
    HourCountry = 7,
}

/// Length of a roll-up key: the level, then a [`CellKey`]'s bytes.
pub const ROLLUP_KEY_LEN: usize = 1 + CELL_KEY_LEN;

impl Level {
    const ALL: [Level; 8] = [
        Level::DayFamily,
        Level::DayBlock,
        Level::MonthFamily,
        Level::MonthBlock,
        Level::DayCountry,
        Level::MonthCountry,
        Level::HourFamily,
        Level::HourCountry,
    ];

    /// The key of a roll-up cell: the level, then the cell key (hour: the first hour of the day
    /// or month; subdivision unknown; ASN 0 for families). Period first after the level, so a
    /// level's day or month is a key range.
    pub fn key(self, cell: &CellKey) -> [u8; ROLLUP_KEY_LEN] {
        let mut k = [0u8; ROLLUP_KEY_LEN];
        k[0] = self as u8;
        k[1..].copy_from_slice(&cell.to_bytes());
        k
    }

    /// The first key of this level at `hour` (inclusive range bound).
    pub fn from_hour(self, hour: i64) -> [u8; 9] {
        let mut k = [0u8; 9];
        k[0] = self as u8;
        k[1..].copy_from_slice(&super::cell::ordered_i64(hour));
        k
    }

    /// A roll-up key's level and cell key; `None` for bytes no roll-up key has.
    pub fn parse(b: &[u8]) -> Option<(Level, CellKey)> {
        let level = *Level::ALL.get(usize::from(*b.first()?))?;
        Some((level, CellKey::from_bytes(b.get(1..)?)?))
    }

    /// The level of `scope` at a day (or its hours, `hourly`) or a month.
    pub fn of(scope: Scope, period: Period) -> Option<Level> {
        Some(match (scope, period) {
            (Scope::Block, Period::Day) => Level::DayBlock,
            (Scope::Block, Period::Month) => Level::MonthBlock,
            (Scope::Family, Period::Day) => Level::DayFamily,
            (Scope::Family, Period::Month) => Level::MonthFamily,
            (Scope::Family, Period::Hour) => Level::HourFamily,
            (Scope::Country, Period::Day) => Level::DayCountry,
            (Scope::Country, Period::Month) => Level::MonthCountry,
            (Scope::Country, Period::Hour) => Level::HourCountry,
            (Scope::Block, Period::Hour) => return None,
        })
    }
}

/// What a roll-up cell spans besides its period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One network's blocks that meet k (no remainder).
    Block,
    /// One (country, platform, arm, kind): blocks that meet k and the remainder if it does.
    Family,
    /// One (country, arm, kind): its families over every platform.
    Country,
}

impl Scope {
    /// The unit a cell of this scope is current for, with the hour set to 0 (so one unit across
    /// days): its family, or for the country scope its (country, arm, kind) under
    /// [`COUNTRY_PLATFORM`].
    pub fn unit(self, key: &CellKey) -> CellKey {
        let f = family_at(key, 0);
        match self {
            Scope::Country => CellKey {
                platform: COUNTRY_PLATFORM,
                ..f
            },
            Scope::Block | Scope::Family => f,
        }
    }
}

/// How long a roll-up cell lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
    Month,
}

/// The platform written into the keys of country-scope cells, which span every platform (a key
/// needs one; a query that reads them neither groups nor filters by platform).
pub const COUNTRY_PLATFORM: Platform = Platform::Generic;

/// The scope a query reads: blocks when it publishes by network, countries when it neither
/// groups nor filters by platform, families otherwise.
pub fn scope(axes: &[Axis], filter: &Filter) -> Scope {
    if by_network(axes, filter) {
        Scope::Block
    } else if axes.contains(&Axis::Platform) || filter.platform.is_some() {
        Scope::Family
    } else {
        Scope::Country
    }
}

/// The family a cell belongs to, on its day: (day, country, platform, arm, kind) as a
/// [`CellKey`] with the day's first hour, no subdivision and ASN 0. The unit a store marks
/// dirty and recomputes.
pub fn family(cell: &CellKey) -> CellKey {
    CellKey {
        asn: 0,
        ..cell.block()
    }
}

/// A day's block key (the family's with the block's ASN).
fn block(family: &CellKey, asn: u32) -> CellKey {
    CellKey { asn, ..*family }
}

/// The calendar month (UTC) of a day since the Unix epoch: its first day and the first day of
/// the next month. `None` outside the calendar chrono knows (no report's day).
pub fn month_of(day: i64) -> Option<(i64, i64)> {
    const CE_TO_EPOCH: i64 = 719_163;
    let ce = i32::try_from(day.checked_add(CE_TO_EPOCH)?).ok()?;
    let date = NaiveDate::from_num_days_from_ce_opt(ce)?;
    let first = date.with_day(1)?;
    let next = if first.month() == 12 {
        NaiveDate::from_ymd_opt(first.year().checked_add(1)?, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)?
    };
    let days = |d: NaiveDate| i64::from(d.num_days_from_ce()) - CE_TO_EPOCH;
    Some((days(first), days(next)))
}

/// What one family's day publishes for one k ([`publish_day`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DayPublished {
    /// The merge of its blocks that meet k and its remainder if that meets k; `None` when
    /// nothing is published.
    pub family: Option<CellState>,
    /// Its blocks that meet k, by ASN.
    pub blocks: BTreeMap<u32, CellState>,
}

/// Decides what a family's day publishes for k: `cells` are its day cells (every ASN and
/// subdivision of one (day, country, platform, arm, kind); others are an error of the caller
/// and are left out). The same decisions as [`super::Grouper`]'s for a query without the
/// region and hour axes.
pub fn publish_day(
    of: &CellKey,
    cells: impl IntoIterator<Item = (CellKey, CellState)>,
    k: usize,
) -> DayPublished {
    let mut blocks: BTreeMap<u32, Vec<CellState>> = BTreeMap::new();
    for (key, mut state) in cells {
        if family(&key) != *of {
            continue;
        }
        state.flagged.clear();
        blocks.entry(key.asn).or_default().push(state);
    }
    let mut out = DayPublished::default();
    let mut rest: Vec<CellState> = Vec::new();
    for (asn, parts) in blocks {
        if meets_together(parts.iter(), k) {
            out.blocks.insert(asn, merged(parts));
        } else {
            rest.extend(parts);
        }
    }
    let mut family: Option<CellState> = None;
    let mut add = |s: &CellState| match &mut family {
        Some(f) => f.merge(s),
        None => family = Some(s.clone()),
    };
    for s in out.blocks.values() {
        add(s);
    }
    if meets_together(rest.iter(), k) {
        add(&merged(rest));
    }
    out.family = family;
    out
}

/// The merge of `states` (empty when there are none).
fn merged(states: Vec<CellState>) -> CellState {
    let mut states = states.into_iter();
    let mut m = states.next().unwrap_or_default();
    for s in states {
        m.merge(&s);
    }
    m
}

/// The roll-up cells of one family's day, keyed as a store keeps them.
pub fn day_cells(of: &CellKey, published: DayPublished) -> Vec<([u8; ROLLUP_KEY_LEN], CellState)> {
    let mut out = Vec::with_capacity(published.blocks.len() + 1);
    if let Some(f) = published.family {
        out.push((Level::DayFamily.key(of), f));
    }
    for (asn, s) in published.blocks {
        out.push((Level::DayBlock.key(&block(of, asn)), s));
    }
    out
}

/// Whether roll-ups can answer a query: not regional, not by network and hour at once, and
/// asked with the k they were built for. Other queries read day and hourly cells.
pub fn answers(axes: &[Axis], filter: &Filter, k: usize, built_for: Option<usize>) -> bool {
    built_for == Some(k)
        && !filter.regional(axes)
        && !(axes.contains(&Axis::Hour) && by_network(axes, filter))
}

/// The published hours of a family's day, from its hourly cells (`cells`; others are left
/// out): what [`Grouper`] publishes of them for a query by hour, neither regional nor by
/// network, merged per hour.
pub fn publish_hours(
    of: &CellKey,
    cells: impl IntoIterator<Item = (CellKey, CellState)>,
    k: usize,
) -> BTreeMap<i64, CellState> {
    const HOUR_MS: i64 = 3_600_000;
    let axes = [Axis::Hour];
    // Its cells only (below), so the filter names what a query by hour would otherwise default
    // (the platform arm, voice) and the day.
    let filter = Filter {
        arm: Some(of.arm),
        kind: Some(of.kind),
        since_ms: Some(of.hour.saturating_mul(HOUR_MS)),
        until_ms: Some(of.hour.saturating_add(24).saturating_mul(HOUR_MS)),
        ..Filter::default()
    };
    let mut g = Grouper::new(&axes, &filter);
    for (key, state) in cells {
        if family(&key) == *of {
            g.add_owned(&key, state);
        }
    }
    let policy = Policy {
        min_agents: k,
        ..Policy::default()
    };
    g.finish_states(&policy)
        .into_iter()
        .filter_map(|(key, state)| Some((key.hour?, state)))
        .collect()
}

/// Whether a query publishes by network (the ASN axis or an ASN filter): it reads the block
/// levels; otherwise the family levels.
pub fn by_network(axes: &[Axis], filter: &Filter) -> bool {
    axes.contains(&Axis::Asn) || filter.asn.is_some()
}

/// The family (ASN 0, no subdivision) of a roll-up cell's key, at the day `day`.
pub fn family_at(key: &CellKey, day: i64) -> CellKey {
    CellKey {
        hour: day.saturating_mul(24),
        asn: 0,
        subdivision: NO_SUBDIVISION,
        ..*key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callwatch_proto::report::StreamKind;
    use callwatch_proto::{Platform, Role};

    #[test]
    fn months_are_calendar_months() {
        // 2026-11-30 is day 20,422 since the epoch; November has 30 days, December 31.
        let nov_30 = 20_422;
        assert_eq!(month_of(nov_30), Some((nov_30 - 29, nov_30 + 1)));
        assert_eq!(month_of(nov_30 + 1), Some((nov_30 + 1, nov_30 + 32)));
        // February of a leap year.
        let feb_1_2028 = NaiveDate::from_ymd_opt(2028, 2, 1)
            .map(|d| i64::from(d.num_days_from_ce()) - 719_163)
            .unwrap_or_default();
        assert_eq!(
            month_of(feb_1_2028 + 28),
            Some((feb_1_2028, feb_1_2028 + 29))
        );
        assert_eq!(month_of(0), Some((0, 31)));
        assert_eq!(month_of(i64::MAX), None);
    }

    #[test]
    fn keys_round_trip_and_order_by_level_then_period() {
        let key = CellKey {
            hour: 20_422 * 24,
            country: *b"RU",
            subdivision: NO_SUBDIVISION,
            asn: 12_389,
            platform: Platform::Whatsapp,
            arm: Role::Platform,
            kind: StreamKind::Voice,
        };
        for level in Level::ALL {
            assert_eq!(Level::parse(&level.key(&key)), Some((level, key)));
            assert!(level.key(&key)[..9] >= level.from_hour(key.hour)[..]);
            assert!(level.key(&key)[..9] < level.from_hour(key.hour + 1)[..]);
        }
        assert!(Level::DayBlock.key(&key)[..] < Level::MonthFamily.from_hour(i64::MIN)[..]);
        assert_eq!(Level::parse(&[9; ROLLUP_KEY_LEN]), None);
        assert_eq!(Level::parse(&[]), None);
        assert_eq!(Level::parse(&[0; 5]), None);
    }
}
