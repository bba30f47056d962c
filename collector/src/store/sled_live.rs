//! The day in progress, published from memory: what its families publish for the roll-ups' k
//! ([`rollup::publish_day`]), computed from an in-memory copy of its day cells that every write
//! keeps current, and recomputed for a family only after a write to it; and, for queries by
//! hour, each family's published hours ([`rollup::publish_hours`]), read from its hourly cells
//! when a query first needs them after a write to it.
//!
//! Without it a query reads the open day's day cells from sled — every one, decoded and merged
//! into blocks and families at every query, since the day's families are always dirty — and at
//! ten million reports that one day costs as much as the month before it. The answers are the
//! same: the copy is exact (a writer changes it, under its lock, in the same critical section as
//! the transaction that changes the day cells, and a day is loaded under that lock too), and
//! what is published from it is what the next roll-up pass will write for the day.
//!
//! Which days a query reads from here: those at or after the roll-up boundary (`meta`/`rollb`)
//! among the last [`LIVE_DAYS`] of the store. None of them is in a month cell's mask (masks hold
//! only days before the boundary), so a query adds them to month cells as it would a dirty day;
//! a month cell whose mask holds one (a pass moved the boundary past it while the query ran) is
//! treated as stale.

use super::{backend, corrupt, decode_cell, hour_ranges, scan, SledStore, StoreError};
use crate::domain::rollup::{self, DayPublished, Period, Scope};
use crate::domain::{CellKey, CellState, Grouper};
use std::collections::{BTreeMap, BTreeSet};

/// Days kept in memory at most: the day in progress, and the next one (a report whose clock is
/// ahead, or the minutes after midnight before the next pass).
pub(super) const LIVE_DAYS: i64 = 2;

/// The live days' day cells and what their families publish.
#[derive(Default)]
pub(super) struct Live {
    days: BTreeMap<i64, LiveDay>,
}

#[derive(Default)]
struct LiveDay {
    /// The day's day cells as the `days` tree holds them (without the events' flags, which
    /// nothing published shows).
    cells: BTreeMap<CellKey, CellState>,
    /// What each family publishes for `k`; a family written since it was computed is absent.
    published: BTreeMap<CellKey, DayPublished>,
    /// Each family's published hours for `k`, for the families queries by hour asked for; a
    /// family written since is absent.
    hours: BTreeMap<CellKey, BTreeMap<i64, CellState>>,
    k: usize,
}

impl Live {
    /// After a committed write: the new states of the day cells it wrote (keys and values as
    /// the `days` tree holds them). Days not in memory are left alone.
    pub(super) fn written<K: AsRef<[u8]>>(
        &mut self,
        cells: impl IntoIterator<Item = (K, CellState)>,
    ) {
        for (kb, mut state) in cells {
            let Some(key) = CellKey::from_bytes(kb.as_ref()) else {
                // Cannot happen (the writer made the key); if it did, a day of the copy could
                // miss it: forget them all.
                self.clear();
                return;
            };
            if let Some(day) = self.days.get_mut(&key.day()) {
                state.flagged.clear();
                let f = rollup::family(&key);
                day.published.remove(&f);
                day.hours.remove(&f);
                day.cells.insert(key, state);
            }
        }
    }

    /// Forgets one day (its cells were replaced whole).
    pub(super) fn forget_day(&mut self, day: i64) {
        self.days.remove(&day);
    }

    /// Forgets every day (the day cells were rebuilt, or the roll-ups dropped).
    pub(super) fn clear(&mut self) {
        self.days.clear();
    }
}

impl SledStore {
    /// The live days, under their lock. A holder that panicked (a query, or the writer in its
    /// transaction) leaves a copy that may be half updated: it is forgotten, and the lock used
    /// again — the copy is only a cache of the day cells, and a write outage for a failed query
    /// would be far worse.
    pub(super) fn live(&self) -> Result<std::sync::MutexGuard<'_, Live>, StoreError> {
        Ok(self.live.lock().unwrap_or_else(|poisoned| {
            self.live.clear_poison();
            let mut live = poisoned.into_inner();
            live.clear();
            live
        }))
    }

    /// Forgets the live days: for whoever rewrites day cells other than through a group write.
    pub(super) fn forget_live(&self) -> Result<(), StoreError> {
        self.live()?.clear();
        Ok(())
    }

    /// The days of `[from, to)` a query reads from memory: at or after the roll-up `boundary`,
    /// and among the last [`LIVE_DAYS`] before `end` (the day after the store's last).
    pub(super) fn live_days(from: i64, to: i64, end: i64, boundary: Option<i64>) -> (i64, i64) {
        match boundary {
            Some(b) => (from.max(b).max(end.saturating_sub(LIVE_DAYS)), to),
            None => (to, to),
        }
    }

    /// The live day `day` under `live`'s lock, loaded from its day cells first if it is not
    /// in memory, its memos cleared if they were for another k.
    fn live_day<'l>(
        &self,
        live: &'l mut Live,
        day: i64,
        k: usize,
    ) -> Result<&'l mut LiveDay, StoreError> {
        if !live.days.contains_key(&day) {
            // Loaded under the lock a writer holds through its transaction: no write falls
            // between this read and the copy's first update.
            let mut cells = BTreeMap::new();
            let hours = (
                day.saturating_mul(24),
                day.saturating_add(1).saturating_mul(24),
            );
            for item in scan(&self.days, hour_ranges(&[], hours, 24, None)) {
                let (kb, v) = item.map_err(backend)?;
                let (key, mut state) = decode_cell(&kb, &v)?;
                state.flagged.clear();
                cells.insert(key, state);
            }
            while live.days.len() as i64 >= LIVE_DAYS {
                live.days.pop_first();
            }
            live.days.insert(
                day,
                LiveDay {
                    cells,
                    ..LiveDay::default()
                },
            );
        }
        let d = live
            .days
            .get_mut(&day)
            .ok_or_else(|| corrupt(b"live", "a live day vanished under its lock"))?;
        if d.k != k {
            d.published.clear();
            d.hours.clear();
            d.k = k;
        }
        Ok(d)
    }

    /// Adds what `day`'s units of `scope` publish for `k` to a query, by day or (`period`) by
    /// hour, from memory. Every unit: no month cell holds a live day.
    pub(super) fn add_live(
        &self,
        g: &mut Grouper<'_>,
        day: i64,
        scope: Scope,
        period: Period,
        k: usize,
    ) -> Result<(), StoreError> {
        if period == Period::Hour && scope == Scope::Block {
            return Err(StoreError::Backend("no roll-up by network and hour".into()));
        }
        let mut live = self.live()?;
        let d = self.live_day(&mut live, day, k)?;
        if period == Period::Hour {
            return self.add_live_hours(g, d, day, k);
        }
        // Only the families the query reads (the writer waits while this runs); by network,
        // every family (a family key has no network to match the query's).
        let reads = |f: &CellKey| scope == Scope::Block || g.wants(f);
        let mut behind: BTreeMap<CellKey, Vec<(CellKey, CellState)>> = BTreeMap::new();
        for (key, state) in &d.cells {
            let f = rollup::family(key);
            if !d.published.contains_key(&f) && reads(&f) {
                behind.entry(f).or_default().push((*key, state.clone()));
            }
        }
        for (f, cells) in behind {
            let published = rollup::publish_day(&f, cells, k);
            d.published.insert(f, published);
        }
        for (f, p) in &d.published {
            match scope {
                Scope::Block => {
                    for (asn, state) in &p.blocks {
                        let key = CellKey { asn: *asn, ..*f };
                        if g.wants(&key) {
                            g.add_published_ref(&key, state);
                        }
                    }
                }
                // A country's cells are its families merged: the same to the query.
                Scope::Family | Scope::Country => {
                    if let Some(state) = &p.family {
                        if g.wants(f) {
                            g.add_published_ref(f, state);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// [`SledStore::add_live`] by hour: the published hours of the families the query reads
    /// ([`rollup::publish_hours`]), those not in memory read from their hourly cells (under the
    /// lock, so no write commits meanwhile) — only the query's countries'. Not by network:
    /// roll-ups do not answer those.
    fn add_live_hours(
        &self,
        g: &mut Grouper<'_>,
        d: &mut LiveDay,
        day: i64,
        k: usize,
    ) -> Result<(), StoreError> {
        let wanted: BTreeSet<CellKey> = d
            .cells
            .keys()
            .map(rollup::family)
            .filter(|f| g.wants(f))
            .collect();
        let behind: BTreeSet<CellKey> = wanted
            .iter()
            .filter(|f| !d.hours.contains_key(*f))
            .copied()
            .collect();
        if !behind.is_empty() {
            let countries: BTreeSet<[u8; 2]> = behind.iter().map(|f| f.country).collect();
            let hours = (
                day.saturating_mul(24),
                day.saturating_add(1).saturating_mul(24),
            );
            let mut cells: BTreeMap<CellKey, Vec<(CellKey, CellState)>> = BTreeMap::new();
            for cc in countries {
                for item in scan(&self.cells, hour_ranges(&[], hours, 1, Some(cc))) {
                    let (kb, v) = item.map_err(backend)?;
                    let key =
                        CellKey::from_bytes(&kb).ok_or_else(|| corrupt(&kb, "bad cell key"))?;
                    let f = rollup::family(&key);
                    if behind.contains(&f) {
                        cells.entry(f).or_default().push(decode_cell(&kb, &v)?);
                    }
                }
            }
            for f in behind {
                let published = rollup::publish_hours(&f, cells.remove(&f).unwrap_or_default(), k);
                d.hours.insert(f, published);
            }
        }
        for f in &wanted {
            for (hour, state) in d.hours.get(f).into_iter().flatten() {
                g.add_published_ref(&CellKey { hour: *hour, ..*f }, state);
            }
        }
        Ok(())
    }
}
