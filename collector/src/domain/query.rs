//! A query: the axes cells are grouped by ([`Axis`]), which fine cells it covers ([`Filter`]),
//! what publication must respect ([`Policy`]), which stored cells answer it ([`Plan`]), and the
//! merge of fine cells into published cells ([`query`], [`Grouper`]).

use super::cell::{
    CapKey, Cell, CellKey, CellState, Figure, PrefixCapKey, CAP_KEY_LEN, PREFIX_CAP_KEY_LEN,
};
#[cfg(any(test, feature = "test-util"))]
use super::cell::{FilingCounts, VerdictCounts};
use super::codes::country_code;
use super::observation::Observation;
use super::sketch::RELATIVE_ACCURACY;
use super::HOUR_MS;
use callwatch_proto::report::StreamKind;
use callwatch_proto::{Platform, Role};
use std::collections::BTreeMap;
#[cfg(any(test, feature = "test-util"))]
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

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

/// What a published aggregate must respect, so that no volunteer can be singled out and none
/// can swing a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// A cell is published only when at least this many distinct agents, and this many
    /// distinct network prefixes, stand behind it.
    pub min_agents: usize,
    /// One agent's reports count at most this many times per fine cell and day (the first to
    /// arrive).
    pub max_per_agent_per_day: usize,
    /// One network prefix's reports (those within their agent's cap) count at most this many
    /// times per fine cell and day (the first to arrive).
    pub max_per_prefix_per_day: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_agents: 3,
            max_per_agent_per_day: 24,
            // Ten agents' worth of the per-agent cap.
            max_per_prefix_per_day: 240,
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

    /// The same filter over whole UTC days (`since` down to its day's start, `until` up to the
    /// next day's): the range a store reads, as k and the atoms of publication are decided per
    /// day ([`Grouper`]). Without the hour axis this is also the range answered.
    pub fn whole_days(&self) -> Filter {
        const DAY_MS: i64 = 24 * HOUR_MS;
        Filter {
            since_ms: self
                .since_ms
                .map(|t| t.div_euclid(DAY_MS).saturating_mul(DAY_MS)),
            until_ms: self.until_ms.map(|t| {
                (t.div_euclid(DAY_MS) + i64::from(t.rem_euclid(DAY_MS) != 0)).saturating_mul(DAY_MS)
            }),
            ..self.clone()
        }
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

/// Merges fine cells, one at a time, into the cells a query asks for, publishing only unions
/// of *atoms* that each meet k, so that no difference of published cells singles anyone out.
///
/// A cell *meets k* when at least `min_agents` distinct agent keys and as many distinct network
/// prefixes stand behind it ([`CellState::meets`]). The unit of publication is the **block**:
/// one UTC day of one (country, ASN, platform, arm, kind). Within a day a volunteer is one key
/// and one prefix (keys rotate daily, prefix tags are keyed per test day), so k is decided per
/// block, never over a longer span. The atoms, fixed whatever the query:
///
/// - every block that meets k;
/// - per (day, country, platform, arm, kind), the union of its blocks that do not (the small
///   networks' *remainder*), if that union meets k; otherwise that data is published nowhere;
/// - for the hour axis, within each block that meets k: its hours that meet k, provided the
///   block's other hours together meet k too (or there are none); if they do not, none of the
///   block's hours is published (the block is then one atom, published only by day).
///
/// A query without the hour axis covers whole UTC days (its `since` and `until` are taken to
/// their days, [`Filter::whole_days`]) and merges blocks that meet k, plus remainders when it
/// neither groups nor filters by ASN (a remainder spans networks). A query with the hour axis
/// merges the published hours of its range. Every published cell is therefore a union of atoms
/// that each meet k, and so is the difference of any two: two queries an hour or a day apart, or
/// a country cell minus its published network cells, leave at least k agents on k prefixes or
/// nothing.
pub struct Grouper<'a> {
    axes: &'a [Axis],
    /// The query as asked (its hour bounds apply to the hour axis's cells).
    filter: &'a Filter,
    /// What is read: the query over whole days.
    read: Filter,
    /// Fine cells (hour axis) or blocks (day cells), by key.
    cells: BTreeMap<CellKey, CellState>,
}

impl<'a> Grouper<'a> {
    pub fn new(axes: &'a [Axis], filter: &'a Filter) -> Self {
        Grouper {
            axes,
            filter,
            read: filter.whole_days(),
            cells: BTreeMap::new(),
        }
    }

    fn hourly(&self) -> bool {
        self.axes.contains(&Axis::Hour)
    }

    /// Whether a fine cell with this key is part of what the query reads (check before decoding
    /// its state).
    pub fn wants(&self, key: &CellKey) -> bool {
        self.read.matches(key, self.axes)
    }

    /// Adds a fine (or day roll-up) cell; cells outside what the query reads are ignored.
    pub fn add(&mut self, key: &CellKey, state: &CellState) {
        if self.wants(key) {
            let at = if self.hourly() { *key } else { key.day_cell() };
            self.cells.entry(at).or_default().merge(state);
        }
    }

    /// The published cells: merges of atoms that each meet k (see the type's documentation).
    pub fn finish(self, policy: &Policy) -> Vec<Cell> {
        let k = policy.min_agents;
        let mut groups: BTreeMap<GroupKey, CellState> = BTreeMap::new();
        if self.hourly() {
            // Hours by block.
            let mut blocks: BTreeMap<CellKey, Vec<(CellKey, CellState)>> = BTreeMap::new();
            for (key, state) in self.cells {
                blocks.entry(key.day_cell()).or_default().push((key, state));
            }
            for hours in blocks.into_values() {
                let mut block = CellState::default();
                let mut rest = CellState::default();
                let mut rest_empty = true;
                for (_, s) in &hours {
                    block.merge(s);
                    if !s.meets(k) {
                        rest.merge(s);
                        rest_empty = false;
                    }
                }
                if !block.meets(k) || !(rest_empty || rest.meets(k)) {
                    continue;
                }
                for (key, s) in hours {
                    if s.meets(k) && self.filter.matches(&key, self.axes) {
                        groups
                            .entry(GroupKey::of(&key, self.axes))
                            .or_default()
                            .merge(&s);
                    }
                }
            }
        } else {
            let remainders_allowed = !self.axes.contains(&Axis::Asn) && self.filter.asn.is_none();
            // Blocks by (day, country, platform, arm, kind): the family a remainder is made of.
            let mut families: BTreeMap<CellKey, Vec<(CellKey, CellState)>> = BTreeMap::new();
            for (key, state) in self.cells {
                families
                    .entry(CellKey { asn: 0, ..key })
                    .or_default()
                    .push((key, state));
            }
            for blocks in families.into_values() {
                let mut rest = CellState::default();
                let mut rest_key = None;
                for (key, s) in blocks {
                    if s.meets(k) {
                        groups
                            .entry(GroupKey::of(&key, self.axes))
                            .or_default()
                            .merge(&s);
                    } else {
                        rest.merge(&s);
                        rest_key = Some(key);
                    }
                }
                if let (true, Some(key)) = (remainders_allowed && rest.meets(k), rest_key) {
                    // Without the ASN axis the group key does not depend on the block's ASN.
                    groups
                        .entry(GroupKey::of(&key, self.axes))
                        .or_default()
                        .merge(&rest);
                }
            }
        }
        groups
            .into_iter()
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
/// `min_agents` distinct agents and prefixes. `cells` may contain cells the filter excludes.
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

/// Applies the per-agent cap, then the prefix cap, to observations in arrival order, as the
/// store does at ingest: yields the ones that count. Every observation uses up one of its
/// agent's `max_per_agent_per_day` for its fine cell's day; of those within it, the first
/// `max_per_prefix_per_day` of each prefix count.
pub fn capped<'a>(
    observations: impl IntoIterator<Item = &'a Observation>,
    policy: &Policy,
) -> Vec<&'a Observation> {
    let mut seen: BTreeMap<[u8; CAP_KEY_LEN], usize> = BTreeMap::new();
    let mut by_prefix: BTreeMap<[u8; PREFIX_CAP_KEY_LEN], usize> = BTreeMap::new();
    observations
        .into_iter()
        .filter(|o| {
            let key = o.cell_key();
            let n = seen.entry(CapKey::bytes(&key, &o.agent)).or_default();
            *n += 1;
            if *n > policy.max_per_agent_per_day {
                return false;
            }
            let p = by_prefix
                .entry(PrefixCapKey::bytes(&key, &o.prefix()))
                .or_default();
            *p += 1;
            *p <= policy.max_per_prefix_per_day
        })
        .collect()
}

#[cfg(any(test, feature = "test-util"))]
/// The brute-force reference: the same cells as [`query`] over fine cells built from
/// `observations` (in arrival order), with exact order statistics instead of sketches.
pub fn exact(
    observations: &[Observation],
    axes: &[Axis],
    filter: &Filter,
    policy: &Policy,
) -> Vec<Cell> {
    const DAY_MS: i64 = 24 * HOUR_MS;
    let k = policy.min_agents.max(1);
    let agent = |o: &Observation| {
        let mut p = [0u8; 8];
        p.copy_from_slice(&o.agent[..8]);
        p
    };
    let meets = |members: &[&Observation]| {
        let agents: BTreeSet<[u8; 8]> = members.iter().map(|o| agent(o)).collect();
        let prefixes: BTreeSet<[u8; 8]> = members.iter().map(|o| o.prefix()).collect();
        agents.len() >= k && prefixes.len() >= k
    };
    let hourly = axes.contains(&Axis::Hour);
    // What is read: whole days of the range, the other filters as asked.
    let day_of = |t: i64| t.div_euclid(DAY_MS);
    let first_day = filter.since_ms.map(day_of);
    let end_day = filter
        .until_ms
        .map(|t| day_of(t) + i64::from(t.rem_euclid(DAY_MS) != 0));
    let read: Vec<&Observation> = capped(observations, policy)
        .into_iter()
        .filter(|o| {
            let day = day_of(o.started_at_ms);
            let key = o.cell_key();
            let unbounded = Filter {
                since_ms: None,
                until_ms: None,
                ..filter.clone()
            };
            unbounded.matches(&key, axes)
                && first_day.is_none_or(|d| day >= d)
                && end_day.is_none_or(|d| day < d)
        })
        .collect();
    // Blocks: (day, country, ASN, platform, arm, kind).
    type Block = (i64, [u8; 2], u32, Platform, Role, StreamKind);
    let mut blocks: BTreeMap<Block, Vec<&Observation>> = BTreeMap::new();
    for o in read {
        blocks
            .entry((
                day_of(o.started_at_ms),
                o.cell_key().country,
                o.asn,
                o.platform,
                o.arm,
                o.kind,
            ))
            .or_default()
            .push(o);
    }
    let mut groups: BTreeMap<GroupKey, Vec<&Observation>> = BTreeMap::new();
    if hourly {
        for members in blocks.values() {
            if !meets(members) {
                continue;
            }
            let mut hours: BTreeMap<i64, Vec<&Observation>> = BTreeMap::new();
            for o in members {
                hours
                    .entry(o.started_at_ms.div_euclid(HOUR_MS))
                    .or_default()
                    .push(o);
            }
            let rest: Vec<&Observation> = hours
                .values()
                .filter(|h| !meets(h))
                .flatten()
                .copied()
                .collect();
            if !rest.is_empty() && !meets(&rest) {
                continue;
            }
            for h in hours.values().filter(|h| meets(h)) {
                for o in h {
                    if filter.matches(&o.cell_key(), axes) {
                        groups
                            .entry(GroupKey::of(&o.cell_key(), axes))
                            .or_default()
                            .push(o);
                    }
                }
            }
        }
    } else {
        let remainders = !axes.contains(&Axis::Asn) && filter.asn.is_none();
        type Family = (i64, [u8; 2], Platform, Role, StreamKind);
        let mut rest: BTreeMap<Family, Vec<&Observation>> = BTreeMap::new();
        for ((day, country, _, platform, arm, kind), members) in &blocks {
            if meets(members) {
                for o in members {
                    groups
                        .entry(GroupKey::of(&o.cell_key(), axes))
                        .or_default()
                        .push(o);
                }
            } else {
                rest.entry((*day, *country, *platform, *arm, *kind))
                    .or_default()
                    .extend(members.iter().copied());
            }
        }
        if remainders {
            for members in rest.values().filter(|m| meets(m)) {
                for o in members {
                    groups
                        .entry(GroupKey::of(&o.cell_key(), axes))
                        .or_default()
                        .push(o);
                }
            }
        }
    }
    groups
        .into_iter()
        .map(|(key, members)| {
            let agents: BTreeSet<[u8; 8]> = members.iter().map(|o| agent(o)).collect();
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
            Cell::new(
                &key,
                members.len() as u64,
                agents.len() as u64,
                figures,
                verdicts,
                filing,
            )
        })
        .collect()
}

/// The sketches' relative error, as published with every answer.
pub fn relative_error() -> f64 {
    RELATIVE_ACCURACY
}
