//! A query: the axes cells are grouped by ([`Axis`]), which fine cells it covers ([`Filter`]),
//! what publication must respect ([`Policy`]), which stored cells answer it ([`Plan`]), and the
//! merge of fine cells into published cells ([`query`], [`Grouper`]).

use super::cell::{
    CapKey, Cell, CellKey, CellState, Figure, PrefixCapKey, CAP_KEY_LEN, PREFIX_CAP_KEY_LEN,
};
#[cfg(any(test, feature = "test-util"))]
use super::cell::{FilingCounts, VerdictCounts};
use super::codes::{country_code, parse_region};
use super::keyset::KeySet;
use super::observation::Observation;
use super::sketch::RELATIVE_ACCURACY;
use super::HOUR_MS;
use callwatch_proto::report::StreamKind;
use callwatch_proto::{Platform, Role};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// A dimension cells can be grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Axis {
    Day,
    Hour,
    Country,
    /// The first-level subdivision (`RU-MOW`; the country alone, `RU`, where it is unknown).
    Region,
    Asn,
    Platform,
    Arm,
    /// The stream kind: voice or video-like.
    Kind,
}

impl Axis {
    pub const ALL: [Axis; 8] = [
        Axis::Day,
        Axis::Hour,
        Axis::Country,
        Axis::Region,
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
            Axis::Region => "region",
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
                    "unknown axis {s:?}; expected one of day, hour, country, region, asn, \
                     platform, arm, kind"
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
    /// Only this first-level subdivision, an ISO 3166-2 code (`RU-MOW`; see
    /// [`super::codes::parse_region`]). A code that does not parse matches nothing.
    pub region: Option<String>,
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

    /// The one country every cell the query reads belongs to (its country, or its region's),
    /// as cell keys spell it: what lets a store read that country's key ranges only. `None` when
    /// the query reads several countries (or a region that does not parse, which matches
    /// nothing anyway).
    pub fn country_key(&self) -> Option<[u8; 2]> {
        match (&self.country, self.region.as_deref().map(parse_region)) {
            (Some(c), _) => Some(country_code(c)),
            (None, Some(Ok((c, _)))) => Some(c),
            (None, _) => None,
        }
    }

    /// The stream kind a query covers when `kind` is not one of its axes: the filter's, or
    /// voice.
    pub fn kind_or_default(&self) -> StreamKind {
        self.kind.unwrap_or(StreamKind::Voice)
    }

    /// Whether the query is regional: grouped or filtered by region. Regional queries publish
    /// only the region atoms of [`Grouper`].
    pub fn regional(&self, axes: &[Axis]) -> bool {
        axes.contains(&Axis::Region) || self.region.is_some()
    }

    /// Whether a fine cell's subdivision is the filter's region (or there is none). Not part of
    /// [`Filter::matches`]: what is read is every subdivision of the region's country, as a
    /// block's other subdivisions decide whether its regions are published.
    pub fn matches_region(&self, k: &CellKey) -> bool {
        match &self.region {
            None => true,
            Some(r) => parse_region(r).is_ok_and(|(c, s)| c == k.country && s == k.subdivision),
        }
    }

    /// Whether a fine cell is covered, given the query's axes (for the default arm and kind),
    /// its subdivision aside ([`Filter::matches_region`]): a region filter reads its country.
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
            && self
                .region
                .as_ref()
                .is_none_or(|r| parse_region(r).is_ok_and(|(c, _)| c == k.country))
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
            h.div_euclid(24)
                .saturating_mul(24)
                .saturating_add(24 * i64::from(h.rem_euclid(24) != 0))
        });
        let day_to = until.map_or(i64::MAX, |h| h.div_euclid(24).saturating_mul(24));
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
    /// Country and subdivision ([`super::codes::NO_SUBDIVISION`] when unknown).
    pub region: Option<([u8; 2], [u8; 3])>,
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
            region: has(Axis::Region).then_some((k.country, k.subdivision)),
            asn: has(Axis::Asn).then_some(k.asn),
            platform: has(Axis::Platform).then_some(k.platform),
            arm: has(Axis::Arm).then_some(k.arm),
            kind: has(Axis::Kind).then_some(k.kind),
        }
    }
}

/// How a set of cells of one block (or one remainder) divides by subdivision: the
/// subdivisions that meet k on their own, when the others together meet k too or there are none
/// (`Some`: each of those is a *region atom*, and the others together one more atom, of no one
/// region); otherwise `None` (the whole set is one atom, of no one region). A set whose cells all
/// have one subdivision is that subdivision's atom when it meets k.
pub fn region_atoms(parts: &BTreeMap<[u8; 3], CellState>, k: usize) -> Option<BTreeSet<[u8; 3]>> {
    let mut rest = CellState::default();
    let mut rest_empty = true;
    let mut atoms = BTreeSet::new();
    for (sub, s) in parts {
        if s.meets(k) {
            atoms.insert(*sub);
        } else {
            rest.merge(s);
            rest_empty = false;
        }
    }
    (rest_empty || rest.meets(k)).then_some(atoms)
}

/// Merges fine cells, one at a time, into the cells a query asks for, publishing only unions
/// of *atoms* that each meet k, so that no difference of published cells singles anyone out.
///
/// A cell *meets k* when at least `min_agents` distinct agent keys and as many distinct network
/// prefixes stand behind it ([`CellState::meets`]). The unit of publication is the **block**:
/// one UTC day of one (country, ASN, platform, arm, kind), all its subdivisions together. Within
/// a day a volunteer is one key and one prefix (keys rotate daily, prefix tags are keyed per
/// test day), so k is decided per block, never over a longer span. The atoms, fixed whatever the
/// query:
///
/// - every block that meets k;
/// - per (day, country, platform, arm, kind), the union of its blocks that do not (the small
///   networks' *remainder*), if that union meets k; otherwise that data is published nowhere;
/// - **regions** ([`region_atoms`]): within each block that meets k, and within each remainder
///   that does, its subdivisions that meet k, provided its other subdivisions together meet k
///   too (then one more atom, of no one region) or there are none; if they do not, the block (or
///   remainder) stays one atom and none of its regions is published. Tests whose subdivision is
///   unknown are a subdivision of their own here (published as the country alone, `RU`);
/// - for the hour axis, within each region atom of a block that meets k (the whole block, when
///   no subdivision is known): its hours that meet k, provided the atom's other hours together
///   meet k too (or there are none); if they do not, none of its hours is published.
///
/// A query without the hour axis covers whole UTC days (its `since` and `until` are taken to
/// their days, [`Filter::whole_days`]) and merges blocks that meet k, plus remainders when it
/// neither groups nor filters by ASN (a remainder spans networks). A *regional* query (grouped or
/// filtered by region, [`Filter::regional`]) merges the region atoms instead, each under its
/// region: so a region cell without the ASN axis is its region's atoms of the blocks that meet k
/// and of the remainder, and with the ASN axis only those of blocks. A query with the hour axis
/// merges the published hours of its range (of region atoms only, when regional; remainders
/// never have hours). Every published cell is therefore a union of atoms that each meet k, and
/// since each level only divides the atoms of the one above, so is the difference of any two:
/// two queries an hour or a day apart, a country cell minus its published network or region
/// cells, a region minus its networks, leave at least k agents on k prefixes or nothing.
pub struct Grouper<'a> {
    axes: &'a [Axis],
    /// The query as asked (its hour bounds apply to the hour axis's cells, its region to the
    /// region atoms).
    filter: &'a Filter,
    /// What is read: the query over whole days, every subdivision of its country.
    read: Filter,
    /// Fine cells (hour axis) or day cells, by key (with their subdivision).
    cells: BTreeMap<CellKey, CellState>,
    /// Cells already published (roll-ups, [`super::rollup`]), by the group they go to.
    published: BTreeMap<GroupKey, CellState>,
}

impl<'a> Grouper<'a> {
    pub fn new(axes: &'a [Axis], filter: &'a Filter) -> Self {
        Grouper {
            axes,
            filter,
            read: filter.whole_days(),
            cells: BTreeMap::new(),
            published: BTreeMap::new(),
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

    /// The one country the query reads, if it reads one ([`Filter::country_key`]).
    pub fn country_key(&self) -> Option<[u8; 2]> {
        self.read.country_key()
    }

    /// Adds a fine (or day roll-up) cell; cells outside what the query reads are ignored.
    pub fn add(&mut self, key: &CellKey, state: &CellState) {
        if self.wants(key) {
            self.add_owned(key, state.clone_unflagged());
        }
    }

    /// [`Grouper::add`] for a state the caller no longer needs (a cell just decoded): kept as
    /// it is when it is the first at its place, not copied. Its per-(agent, prefix) flags are
    /// dropped: they are the events' evidence, and no published cell shows them.
    pub fn add_owned(&mut self, key: &CellKey, mut state: CellState) {
        if !self.wants(key) {
            return;
        }
        state.flagged.clear();
        let at = if self.hourly() { *key } else { key.day_cell() };
        absorb(&mut self.cells, at, state);
    }

    /// Adds a cell that is already a union of atoms that meet k — a roll-up of
    /// [`super::rollup`] — straight to its group, if the query reads it (its key's hour is its
    /// hour, or the first of its day or month).
    pub fn add_published(&mut self, key: &CellKey, mut state: CellState) {
        if !self.wants_published(key) {
            return;
        }
        state.flagged.clear();
        absorb(&mut self.published, GroupKey::of(key, self.axes), state);
    }

    /// [`Grouper::add_published`] for a state the caller keeps: copied only when it is the
    /// first at its group.
    pub fn add_published_ref(&mut self, key: &CellKey, state: &CellState) {
        if !self.wants_published(key) {
            return;
        }
        match self.published.entry(GroupKey::of(key, self.axes)) {
            std::collections::btree_map::Entry::Occupied(mut m) => {
                m.get_mut().merge_unflagged(state)
            }
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(state.clone_unflagged());
            }
        }
    }

    /// Whether a published cell at `key` goes into the query: an hour cell only within the
    /// query's hours; a day or month cell read over whole days like the day cells.
    fn wants_published(&self, key: &CellKey) -> bool {
        if self.hourly() {
            self.filter.matches(key, self.axes)
        } else {
            self.wants(key)
        }
    }

    /// The published cells: merges of atoms that each meet k (see the type's documentation).
    pub fn finish(self, policy: &Policy) -> Vec<Cell> {
        self.finish_states(policy)
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

    /// [`Grouper::finish`] before the cells are made: each group's merged state.
    pub fn finish_states(self, policy: &Policy) -> BTreeMap<GroupKey, CellState> {
        let k = policy.min_agents;
        let regional = self.filter.regional(self.axes);
        let hourly = self.hourly();
        let mut groups: BTreeMap<GroupKey, CellState> = self.published;
        let mut publish =
            |key: &CellKey, s: CellState| absorb(&mut groups, GroupKey::of(key, self.axes), s);
        // Cells by block, then by subdivision.
        type Parts = BTreeMap<[u8; 3], Vec<(CellKey, CellState)>>;
        let mut blocks: BTreeMap<CellKey, Parts> = BTreeMap::new();
        for (key, state) in self.cells {
            blocks
                .entry(key.block())
                .or_default()
                .entry(key.subdivision)
                .or_default()
                .push((key, state));
        }
        let merged = |cells: Vec<(CellKey, CellState)>| {
            let mut cells = cells.into_iter();
            let mut m = cells.next().map(|c| c.1).unwrap_or_default();
            for (_, s) in cells {
                m.merge(&s);
            }
            m
        };
        if hourly {
            for parts in blocks.into_values() {
                // Who stands behind each subdivision's day (all k asks of it).
                let by_sub: BTreeMap<[u8; 3], CellState> = parts
                    .iter()
                    .map(|(sub, c)| (*sub, support(c.iter().map(|(_, s)| s))))
                    .collect();
                if !meets_together(by_sub.values(), k) {
                    continue;
                }
                // The block's atoms: each region atom, and the rest as one (`None`).
                let atoms = region_atoms(&by_sub, k).unwrap_or_default();
                let mut units: BTreeMap<Option<[u8; 3]>, Vec<(CellKey, CellState)>> =
                    BTreeMap::new();
                for (sub, cells) in parts {
                    units
                        .entry(atoms.contains(&sub).then_some(sub))
                        .or_default()
                        .extend(cells);
                }
                for (unit, cells) in units {
                    if regional && unit.is_none() {
                        continue;
                    }
                    // The unit's hours, its subdivisions together.
                    let mut hours: BTreeMap<i64, (CellKey, CellState)> = BTreeMap::new();
                    for (key, s) in cells {
                        hours
                            .entry(key.hour)
                            .or_insert_with(|| (key, CellState::default()))
                            .1
                            .merge(&s);
                    }
                    let mut rest = CellState::default();
                    let mut rest_empty = true;
                    for (_, s) in hours.values() {
                        if !s.meets(k) {
                            rest.merge(s);
                            rest_empty = false;
                        }
                    }
                    if !(rest_empty || rest.meets(k)) {
                        continue;
                    }
                    for (key, s) in hours.into_values() {
                        if s.meets(k)
                            && self.filter.matches(&key, self.axes)
                            && self.filter.matches_region(&key)
                        {
                            publish(&key, s);
                        }
                    }
                }
            }
        } else {
            let remainders_allowed = !self.axes.contains(&Axis::Asn) && self.filter.asn.is_none();
            // Blocks by (day, country, platform, arm, kind): the family a remainder is made of.
            let mut families: BTreeMap<CellKey, Vec<Parts>> = BTreeMap::new();
            for (key, parts) in blocks {
                families
                    .entry(CellKey { asn: 0, ..key })
                    .or_default()
                    .push(parts);
            }
            // Publishes a block or a remainder that meets k: whole, or its region atoms.
            let mut publish_atoms = |mut parts: BTreeMap<[u8; 3], (CellKey, CellState)>| {
                if !regional {
                    for (key, s) in parts.into_values() {
                        publish(&key, s);
                    }
                    return;
                }
                let by_sub = parts
                    .iter()
                    .map(|(sub, (_, s))| (*sub, support([s].into_iter())))
                    .collect();
                for sub in region_atoms(&by_sub, k).unwrap_or_default() {
                    if let Some((key, s)) = parts.remove(&sub) {
                        if self.filter.matches_region(&key) {
                            publish(&key, s);
                        }
                    }
                }
            };
            for blocks in families.into_values() {
                // The remainder's cells by subdivision (a key of one of its blocks for each:
                // without the ASN axis the group key does not depend on the block's ASN).
                let mut rest: BTreeMap<[u8; 3], (CellKey, CellState)> = BTreeMap::new();
                for parts in blocks {
                    let parts: BTreeMap<[u8; 3], (CellKey, CellState)> = parts
                        .into_iter()
                        .filter_map(|(sub, cells)| {
                            let key = cells.first()?.0;
                            Some((sub, (key, merged(cells))))
                        })
                        .collect();
                    if meets_together(parts.values().map(|(_, s)| s), k) {
                        publish_atoms(parts);
                    } else {
                        for (sub, (key, s)) in parts {
                            rest.entry(sub)
                                .and_modify(|(_, m)| m.merge(&s))
                                .or_insert((key, s));
                        }
                    }
                }
                if remainders_allowed && meets_together(rest.values().map(|(_, s)| s), k) {
                    publish_atoms(rest);
                }
            }
        }
        groups
    }
}

/// Who stands behind `states` together: a state holding only the union of their agents and
/// prefixes (what [`CellState::meets`] and [`region_atoms`] read), without merging their
/// figures.
fn support<'s>(states: impl Iterator<Item = &'s CellState>) -> CellState {
    let mut m = CellState::default();
    for s in states {
        m.agents.union_with(&s.agents);
        m.prefixes.union_with(&s.prefixes);
    }
    m
}

/// Whether `states` merged would meet k ([`CellState::meets`]), without merging them.
pub(super) fn meets_together<'s>(
    states: impl Iterator<Item = &'s CellState> + Clone,
    k: usize,
) -> bool {
    let k = k.max(1);
    reaches(states.clone().map(|s| &s.agents), k) && reaches(states.map(|s| &s.prefixes), k)
}

/// Whether the union of `sets` has at least `k` keys, stopping as soon as it does.
fn reaches<'s>(sets: impl Iterator<Item = &'s KeySet>, k: usize) -> bool {
    let mut union = KeySet::new();
    for set in sets {
        if set.len() >= k {
            return true;
        }
        union.union_with(set);
        if union.len() >= k {
            return true;
        }
    }
    false
}

/// Merges `state` into `map`'s cell at `key`, or puts it there (not copied) if it is the first;
/// flags are not merged (a query's states carry none, see [`Grouper::add_owned`]).
fn absorb<K: Ord>(map: &mut BTreeMap<K, CellState>, key: K, state: CellState) {
    map.entry(key)
        .and_modify(|m| m.merge_unflagged(&state))
        .or_insert(state);
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
    let agent = |o: &Observation| {
        let mut p = [0u8; 8];
        p.copy_from_slice(&o.agent[..8]);
        p
    };
    exact_members(observations, axes, filter, policy)
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

#[cfg(any(test, feature = "test-util"))]
/// The observations behind each cell [`exact`] publishes (after the caps), by the cell's axis
/// values: what differencing tests compare.
pub fn exact_members<'a>(
    observations: &'a [Observation],
    axes: &[Axis],
    filter: &Filter,
    policy: &Policy,
) -> BTreeMap<GroupKey, Vec<&'a Observation>> {
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
    let regional = filter.regional(axes);
    type Members<'o> = Vec<&'o Observation>;
    type Meets<'m> = &'m dyn Fn(&[&Observation]) -> bool;
    // The atoms of a block or remainder by region: `Some(sub)` for each subdivision that meets
    // k when the others together meet k or are none, `None` for those others (or for all).
    fn by_region<'o>(
        members: &[&'o Observation],
        meets: Meets<'_>,
    ) -> Vec<(Option<[u8; 3]>, Members<'o>)> {
        let mut subs: BTreeMap<[u8; 3], Members<'o>> = BTreeMap::new();
        for o in members {
            subs.entry(o.cell_key().subdivision).or_default().push(*o);
        }
        let rest: Members<'o> = subs
            .values()
            .filter(|m| !meets(m))
            .flatten()
            .copied()
            .collect();
        if !rest.is_empty() && !meets(&rest) {
            return vec![(None, members.to_vec())];
        }
        let mut out: Vec<(Option<[u8; 3]>, Members<'o>)> = subs
            .into_iter()
            .filter(|(_, m)| meets(m))
            .map(|(sub, m)| (Some(sub), m))
            .collect();
        if !rest.is_empty() {
            out.push((None, rest));
        }
        out
    }
    fn publish<'o>(
        o: &'o Observation,
        axes: &[Axis],
        groups: &mut BTreeMap<GroupKey, Members<'o>>,
    ) {
        groups
            .entry(GroupKey::of(&o.cell_key(), axes))
            .or_default()
            .push(o);
    }
    // A block or a remainder that meets k: whole, or its region atoms when regional.
    let publish_atoms = |members: &[&'a Observation],
                         groups: &mut BTreeMap<GroupKey, Members<'a>>| {
        if !regional {
            for o in members {
                publish(o, axes, groups);
            }
            return;
        }
        for (region, unit) in by_region(members, &meets) {
            if region.is_some() {
                for o in unit {
                    if filter.matches_region(&o.cell_key()) {
                        publish(o, axes, groups);
                    }
                }
            }
        }
    };
    let mut groups: BTreeMap<GroupKey, Members<'a>> = BTreeMap::new();
    if hourly {
        for members in blocks.values() {
            if !meets(members) {
                continue;
            }
            for (region, unit) in by_region(members, &meets) {
                if regional && region.is_none() {
                    continue;
                }
                let mut hours: BTreeMap<i64, Vec<&Observation>> = BTreeMap::new();
                for o in unit {
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
                        let key = o.cell_key();
                        if filter.matches(&key, axes) && filter.matches_region(&key) {
                            publish(o, axes, &mut groups);
                        }
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
                publish_atoms(members, &mut groups);
            } else {
                rest.entry((*day, *country, *platform, *arm, *kind))
                    .or_default()
                    .extend(members.iter().copied());
            }
        }
        if remainders {
            for members in rest.values().filter(|m| meets(m)) {
                publish_atoms(members, &mut groups);
            }
        }
    }
    groups
}

/// The sketches' relative error, as published with every answer.
pub fn relative_error() -> f64 {
    RELATIVE_ACCURACY
}
