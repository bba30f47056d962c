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

use super::{backend, corrupt, hour_ranges, scan, SledStore, StoreError};
use crate::domain::rollup;
use crate::domain::{CapKey, CellKey, CellState, Observation, PrefixCapKey};
use sled::transaction::{TransactionError, Transactional};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A note of the mirror's own, kept in the store's `meta` (which compaction copies).
const MIRROR_NOTE: &[u8] = b"mirror";

/// What [`SledStore::replace_day`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplacedDay {
    /// Observations counted (within both caps).
    pub counted: u64,
    /// Observations over a cap (stored elsewhere, not aggregated).
    pub capped: u64,
    /// Hourly cells the day now has.
    pub cells: usize,
}

impl SledStore {
    /// Replaces the cells of UTC day `day` (days since the epoch) by those of `observations`,
    /// which must be that day's, in order of arrival; an observation of another day is an
    /// error and changes nothing. See the module documentation.
    pub fn replace_day(
        &self,
        day: i64,
        observations: impl IntoIterator<Item = Observation>,
    ) -> Result<ReplacedDay, StoreError> {
        let (cap, prefix_cap) = (self.cap, self.prefix_cap);
        let mut agent_counts: HashMap<[u8; crate::domain::CAP_KEY_LEN], u32> = HashMap::new();
        let mut prefix_counts: HashMap<[u8; crate::domain::PREFIX_CAP_KEY_LEN], u32> =
            HashMap::new();
        let mut hourly: BTreeMap<CellKey, CellState> = BTreeMap::new();
        let mut daily: BTreeMap<CellKey, CellState> = BTreeMap::new();
        let mut families: BTreeSet<CellKey> = BTreeSet::new();
        let mut done = ReplacedDay::default();
        for o in observations {
            let key = o.cell_key();
            if key.day() != day {
                return Err(StoreError::Backend(format!(
                    "an observation of hour {} given for day {day}",
                    key.hour
                )));
            }
            // The caps in the order of arrival, as `write_chunk` counts them.
            let seen = agent_counts
                .entry(CapKey::bytes(&key, &o.agent))
                .or_default();
            *seen = seen.saturating_add(1);
            if *seen > cap {
                done.capped += 1;
                continue;
            }
            let seen = prefix_counts
                .entry(PrefixCapKey::bytes(&key, &o.prefix()))
                .or_default();
            *seen = seen.saturating_add(1);
            if *seen > prefix_cap {
                done.capped += 1;
                continue;
            }
            hourly.entry(key).or_default().add(&o);
            daily.entry(key.day_cell()).or_default().add(&o);
            families.insert(rollup::family(&key));
            done.counted += 1;
        }
        done.cells = hourly.len();
        let hours = (
            day.saturating_mul(24),
            day.saturating_add(1).saturating_mul(24),
        );
        // The day's old keys: removed unless written again; their families marked too.
        let old_keys = |tree: &sled::Tree, step: i64| -> Result<Vec<sled::IVec>, StoreError> {
            scan(tree, hour_ranges(&[], hours, step, None))
                .map(|item| item.map(|(k, _)| k).map_err(backend))
                .collect()
        };
        let old_cells = old_keys(&self.cells, 1)?;
        let old_days = old_keys(&self.days, 24)?;
        for k in &old_days {
            let key = CellKey::from_bytes(k).ok_or_else(|| corrupt(k, "bad day cell key"))?;
            families.insert(rollup::family(&key));
        }
        let encode = |cells: &BTreeMap<CellKey, CellState>| -> Result<Vec<_>, StoreError> {
            cells
                .iter()
                .map(|(k, s)| {
                    postcard::to_allocvec(s)
                        .map(|v| (k.to_bytes(), v))
                        .map_err(|e| StoreError::Backend(format!("encoding cell: {e}")))
                })
                .collect()
        };
        let (new_cells, new_days) = (encode(&hourly)?, encode(&daily)?);
        let mark = self.db.generate_id().map_err(backend)?.to_be_bytes();
        // Under the live lock, as a group write: no query loads the day between the commit
        // and the copy forgetting it.
        let mut live = self.live()?;
        let result = (&self.cells, &self.days, &self.dirty).transaction(|(cells, days, dirty)| {
            for (tree, old, new) in [
                (cells, &old_cells, &new_cells),
                (days, &old_days, &new_days),
            ] {
                for k in old {
                    tree.remove(k)?;
                }
                for (k, v) in new {
                    tree.insert(&k[..], v.as_slice())?;
                }
            }
            for f in &families {
                dirty.insert(&f.to_bytes()[..], &mark[..])?;
            }
            Ok::<_, sled::transaction::ConflictableTransactionError<String>>(())
        });
        live.forget_day(day);
        drop(live);
        result.map_err(|e| match e {
            TransactionError::Storage(e) => backend(e),
            TransactionError::Abort(what) => StoreError::Backend(what),
        })?;
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
            let done = mirror.replace_day(d, observations_of(&reports, d)).unwrap();
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
        mirror
            .replace_day(first, obs[..obs.len() / 10].to_vec())
            .unwrap();
        mirror.roll_up(policy.min_agents, last).unwrap();
        assert_ne!(answers(&mirror, &policy), answers(&ingested, &policy));
        mirror.replace_day(first, obs).unwrap();
        mirror.roll_up(policy.min_agents, last).unwrap();
        assert_eq!(answers(&mirror, &policy), answers(&ingested, &policy));
        // The live (last) day, read from memory by a query, then replaced: the copy follows.
        let before = answers(&mirror, &policy);
        mirror.replace_day(last, Vec::new()).unwrap();
        let emptied = answers(&mirror, &policy);
        assert_ne!(before, emptied);
        mirror
            .replace_day(last, observations_of(&reports, last))
            .unwrap();
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
            .replace_day(d0, observations_of(&reports, d0))
            .unwrap();
        let before = answers(&mirror, &policy);
        let all: Vec<_> = reports
            .iter()
            .flat_map(|r| r.observations.iter().cloned())
            .collect();
        assert!(all.iter().any(|o| o.cell_key().day() != d0));
        let e = mirror.replace_day(d0, all).unwrap_err().to_string();
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
