//! Whole days written from outside: the cells of a store that holds no reports, kept as a
//! mirror of another store's aggregate (the ClickHouse store's, see
//! `store/clickhouse/mirror.rs`).
//!
//! [`SledStore::replace_day`] counts one UTC day's observations — given in order of arrival —
//! under the per-agent and prefix caps exactly as a group write does (same counters, same
//! order, same cells), and puts the resulting hourly and day cells in place of the day's old
//! ones in one transaction, marking every family the day had or now has dirty, so the next
//! roll-up pass recomputes what they publish. The day in progress in memory forgets the day.
//! Everything a query reads then follows: the roll-ups, the live day, the plans.

use super::{backend, corrupt, hour_ranges, scan, SledStore, StoreError, Tally};
use crate::domain::rollup;
use crate::domain::{ordered_i64, CellKey, Observation};
use sled::transaction::{TransactionError, Transactional};
use std::collections::BTreeSet;

/// A note of the mirror's own, kept in the store's `meta` (which compaction copies).
const MIRROR_NOTE: &[u8] = b"mirror";

/// What [`SledStore::replace_day`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplacedDay {
    /// Observations counted (within both caps).
    pub counted: u64,
    /// Observations over a cap (stored elsewhere, not aggregated).
    pub capped: u64,
}

impl SledStore {
    /// Replaces the cells of UTC day `day` (days since the epoch) by those of `observations`,
    /// which must be that day's, in order of arrival; an observation of another day is an
    /// error and changes nothing. See the module documentation.
    pub fn replace_day(
        &self,
        day: i64,
        observations: &[Observation],
    ) -> Result<ReplacedDay, StoreError> {
        self.write_day(day, observations, true)
    }

    /// Adds `observations` of UTC day `day`, which arrived after every observation the day's
    /// cells hold, in order of arrival: counted under the caps after those, as a group write
    /// would count them.
    pub fn append_day(
        &self,
        day: i64,
        observations: &[Observation],
    ) -> Result<ReplacedDay, StoreError> {
        self.write_day(day, observations, false)
    }

    fn write_day(
        &self,
        day: i64,
        observations: &[Observation],
        replace: bool,
    ) -> Result<ReplacedDay, StoreError> {
        if let Some(o) = observations.iter().find(|o| o.cell_key().day() != day) {
            return Err(StoreError::Backend(format!(
                "an observation of hour {} given for day {day}",
                o.cell_key().hour
            )));
        }
        let hours = (
            day.saturating_mul(24),
            day.saturating_add(1).saturating_mul(24),
        );
        // The day's old keys, when replacing: removed in the transaction (a key written
        // again is written after its removal); their families marked dirty too.
        let (mut old_cells, mut old_days, mut old_caps) = (Vec::new(), Vec::new(), Vec::new());
        let mut old_families: BTreeSet<CellKey> = BTreeSet::new();
        if replace {
            let keys = |tree: &sled::Tree, step: i64| -> Result<Vec<sled::IVec>, StoreError> {
                scan(tree, hour_ranges(&[], hours, step, None))
                    .map(|item| item.map(|(k, _)| k).map_err(backend))
                    .collect()
            };
            old_cells = keys(&self.cells, 1)?;
            old_days = keys(&self.days, 24)?;
            for k in &old_days {
                let key = CellKey::from_bytes(k).ok_or_else(|| corrupt(k, "bad day cell key"))?;
                old_families.insert(rollup::family(&key));
            }
            // Counter keys begin with the day.
            let prefix = ordered_i64(day);
            for tree in [&self.caps, &self.prefix_caps] {
                let mut keys = Vec::new();
                for item in tree.scan_prefix(prefix) {
                    keys.push(item.map_err(backend)?.0);
                }
                old_caps.push(keys);
            }
        }
        let (cap, prefix_cap) = (self.cap, self.prefix_cap);
        let mark = self.db.generate_id().map_err(backend)?.to_be_bytes();
        // Under the live lock, as a group write: no query loads the day between the commit
        // and the copy's update.
        let mut live = self.live()?;
        let trees = (
            &self.cells,
            &self.caps,
            &self.days,
            &self.prefix_caps,
            &self.dirty,
        );
        let result = trees.transaction(|(cells, caps, days, pcaps, dirty)| {
            for k in &old_cells {
                cells.remove(k)?;
            }
            for k in &old_days {
                days.remove(k)?;
            }
            for (tree, keys) in [caps, pcaps].into_iter().zip(&old_caps) {
                for k in keys {
                    tree.remove(k)?;
                }
            }
            for f in &old_families {
                dirty.insert(&f.to_bytes()[..], &mark[..])?;
            }
            let mut tally = Tally::default();
            let mut done = ReplacedDay::default();
            for o in observations {
                if tally.count(o, (cap, prefix_cap), (cells, caps, days, pcaps))? {
                    done.counted += 1;
                } else {
                    done.capped += 1;
                }
            }
            tally.write((cells, caps, days, pcaps), dirty, &mark)?;
            Ok((done, tally.daily))
        });
        let done = match result {
            Ok((done, daily)) => {
                if replace {
                    live.forget_day(day);
                } else {
                    live.written(daily);
                }
                done
            }
            Err(e) => {
                return Err(match e {
                    TransactionError::Storage(e) => backend(e),
                    TransactionError::Abort(what) => StoreError::Backend(what),
                })
            }
        };
        drop(live);
        self.db.flush().map_err(backend)?;
        Ok(done)
    }

    /// The mirror's note (what it last mirrored), if any.
    pub fn mirror_note(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .meta
            .get(MIRROR_NOTE)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    /// Replaces the mirror's note, durably.
    pub fn set_mirror_note(&self, note: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(MIRROR_NOTE, note).map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::rollup_tests::item;
    use super::*;
    use crate::domain::{Axis, Filter, Policy, VerifiedReport};
    use crate::store::ReportStore;

    fn policy_for(k: usize, cap: usize, prefix_cap: usize) -> Policy {
        Policy {
            min_agents: k,
            max_per_agent_per_day: cap,
            max_per_prefix_per_day: prefix_cap,
        }
    }

    /// `n` reports of the roll-up tests' mix (5 agents, 3 networks, 2 platforms over six
    /// days), every `share`-th on one prefix tag shared by all agents, in order of arrival.
    fn arrival_reports(n: u32, share: u32) -> Vec<VerifiedReport> {
        (0..n)
            .map(|i| {
                let mut v = item(i);
                if i % share == 0 {
                    v.stored.filing.prefix_tag = Some("0a0b0c0d0e0f1011".into());
                    v = VerifiedReport::parse(v.stored).unwrap();
                }
                v
            })
            .collect()
    }

    /// The observations of `reports` of day `day`, in their order (of arrival).
    fn observations_of(reports: &[VerifiedReport], day: i64) -> Vec<Observation> {
        reports
            .iter()
            .flat_map(|r| r.observations.iter().cloned())
            .filter(|o| o.cell_key().day() == day)
            .collect()
    }

    fn all_queries() -> Vec<(Vec<Axis>, Filter)> {
        vec![
            (vec![Axis::Country, Axis::Platform], Filter::default()),
            (vec![Axis::Asn, Axis::Platform], Filter::default()),
            (vec![Axis::Day, Axis::Arm], Filter::default()),
            (vec![Axis::Hour, Axis::Country], Filter::default()),
            (vec![Axis::Region], Filter::default()),
            (vec![Axis::Day, Axis::Kind], Filter::default()),
        ]
    }

    fn answers(s: &SledStore, p: &Policy) -> Vec<Vec<crate::domain::Cell>> {
        all_queries()
            .iter()
            .map(|(axes, f)| s.aggregate(axes, f, p).unwrap())
            .collect()
    }

    /// Days replaced from observations answer every query as a store that ingested the same
    /// reports in the same order — before and after roll-ups, with both caps binding, and
    /// after a day is replaced again with more (a late upload) or with nothing.
    #[test]
    fn replaced_days_answer_as_ingested_ones() {
        let policy = policy_for(2, 3, 7);
        let reports = arrival_reports(900, 5);
        let days: BTreeSet<i64> = reports
            .iter()
            .flat_map(|r| r.observations.iter().map(|o| o.cell_key().day()))
            .collect();
        assert!(days.len() >= 3, "the mix spans days");
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ingested = SledStore::open_with_policy(a.path(), &policy).unwrap();
        for chunk in reports.chunks(37) {
            ingested.insert_batch(chunk).unwrap();
        }
        let mirror = SledStore::open_with_policy(b.path(), &policy).unwrap();
        let mut capped = 0;
        for &d in &days {
            let done = mirror
                .replace_day(d, &observations_of(&reports, d))
                .unwrap();
            capped += done.capped;
        }
        assert!(capped > 0, "the caps bind in this mix");
        assert_eq!(answers(&mirror, &policy), answers(&ingested, &policy));
        let last = *days.last().unwrap();
        for s in [&ingested, &mirror] {
            s.roll_up(policy.min_agents, last).unwrap();
        }
        assert_eq!(answers(&mirror, &policy), answers(&ingested, &policy));
        // A day replaced again with its first tenth (the caps bind later in the day), then
        // whole again: the roll-ups follow.
        let first = *days.first().unwrap();
        let obs = observations_of(&reports, first);
        mirror.replace_day(first, &obs[..obs.len() / 10]).unwrap();
        mirror.roll_up(policy.min_agents, last).unwrap();
        assert_ne!(answers(&mirror, &policy), answers(&ingested, &policy));
        mirror.replace_day(first, &obs).unwrap();
        mirror.roll_up(policy.min_agents, last).unwrap();
        assert_eq!(answers(&mirror, &policy), answers(&ingested, &policy));
        // The live (last) day, read from memory by a query, then replaced: the copy follows.
        let before = answers(&mirror, &policy);
        mirror.replace_day(last, &[]).unwrap();
        let emptied = answers(&mirror, &policy);
        assert_ne!(before, emptied);
        mirror
            .replace_day(last, &observations_of(&reports, last))
            .unwrap();
        assert_eq!(answers(&mirror, &policy), answers(&ingested, &policy));
        // Every day as its first third, then the rest appended (the caps go on counting from
        // the counters the replacement wrote): as ingested, the live day included.
        for &d in &days {
            let obs = observations_of(&reports, d);
            mirror.replace_day(d, &obs[..obs.len() / 3]).unwrap();
            let done = mirror.append_day(d, &obs[obs.len() / 3..]).unwrap();
            assert!(done.capped > 0, "the caps bind in the appended part too");
        }
        mirror.roll_up(policy.min_agents, last).unwrap();
        assert_eq!(answers(&mirror, &policy), answers(&ingested, &policy));
    }

    #[test]
    fn an_observation_of_another_day_is_refused_and_changes_nothing() {
        let policy = policy_for(2, 24, 240);
        let reports = arrival_reports(200, 3);
        let dir = tempfile::tempdir().unwrap();
        let mirror = SledStore::open_with_policy(dir.path(), &policy).unwrap();
        let d0 = reports[0].observations[0].cell_key().day();
        mirror
            .replace_day(d0, &observations_of(&reports, d0))
            .unwrap();
        let before = answers(&mirror, &policy);
        let all: Vec<_> = reports
            .iter()
            .flat_map(|r| r.observations.iter().cloned())
            .collect();
        assert!(all.iter().any(|o| o.cell_key().day() != d0));
        let e = mirror.replace_day(d0, &all).unwrap_err().to_string();
        assert!(e.contains("given for day"), "{e}");
        assert_eq!(answers(&mirror, &policy), before);
    }

    #[test]
    fn the_note_survives_a_clean_close() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.mirror_note().unwrap(), None);
        s.set_mirror_note(b"abc").unwrap();
        s.close().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.mirror_note().unwrap().as_deref(), Some(&b"abc"[..]));
    }
}
