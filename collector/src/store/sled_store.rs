//! The embedded default store: reports keyed by agent key ‖ report id, and an index by arrival
//! time (received ms ‖ report key) for paging exports, and the fine aggregate cells with their
//! per-agent cap counters (see [`crate::aggregate`]). All are written in one transaction.

use super::{InsertOutcome, ReportKey, ReportStore, StoreError, StoredReport};
use crate::aggregate::Axis;
use crate::aggregate::{
    ordered_i64, CapKey, Cell, CellKey, CellState, Filter, Grouper, Observation, Policy,
};
use callwatch_proto::CallReport;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

pub struct SledStore {
    db: sled::Db,
    reports: sled::Tree,
    by_time: sled::Tree,
    /// Fine aggregate cells: [`CellKey`] bytes → postcard [`CellState`].
    cells: sled::Tree,
    /// Per-agent cap counters: [`CapKey`] bytes → u32 BE.
    caps: sled::Tree,
    /// `cap` → the per-agent cap the cells were built with (u32 BE).
    meta: sled::Tree,
    cap: u32,
    dir: std::path::PathBuf,
    /// Serialises writes of the count file (concurrent batches would race on its temp file).
    count_lock: std::sync::Mutex<()>,
    flusher: GroupFlush,
}

/// Group commit: concurrent batches share one `fsync` instead of queueing one each.
///
/// A batch that finished writing asks for flush number `n`; any flush that *started* after that
/// request covers it. One caller flushes at a time; the others wait for a flush that started
/// after their request, or start the next one themselves.
#[derive(Default)]
struct GroupFlush {
    /// (requested, covered, a flush is running).
    state: std::sync::Mutex<(u64, u64, bool)>,
    done: std::sync::Condvar,
}

impl GroupFlush {
    fn flush(&self, db: &sled::Db) -> Result<(), StoreError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 += 1;
        let mine = st.0;
        loop {
            if st.1 >= mine {
                return Ok(());
            }
            if st.2 {
                st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // Everything requested so far was written before this flush starts.
            st.2 = true;
            let covers = st.0;
            drop(st);
            let result = db.flush();
            st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.2 = false;
            if result.is_ok() {
                st.1 = st.1.max(covers);
            }
            self.done.notify_all();
            result.map_err(backend)?;
        }
    }
}

/// Index key: arrival time (big-endian, offset so that order is numeric order) ‖ report key.
fn time_key(received_at_ms: i64, key: &ReportKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(56);
    k.extend_from_slice(&ordered_i64(received_at_ms));
    k.extend_from_slice(&key.to_bytes());
    k
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn corrupt(key: &[u8], what: impl fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: hex::encode(key),
        what: what.to_string(),
    }
}

/// The arms of a stored report that aggregation counts. A body that does not parse (it was
/// verified as a report before it was stored, so only a corrupt store gets here) is an error.
fn observations_of(key: &ReportKey, report: &StoredReport) -> Result<Vec<Observation>, StoreError> {
    let body: CallReport = serde_json::from_slice(&report.signed.body).map_err(|e| {
        corrupt(
            &key.to_bytes(),
            format!("stored body no longer parses: {e}"),
        )
    })?;
    Ok(Observation::from_report(report, &body))
}

fn decode_cell(k: &[u8], v: &[u8]) -> Result<(CellKey, CellState), StoreError> {
    let key = CellKey::from_bytes(k).ok_or_else(|| corrupt(k, "bad aggregate cell key"))?;
    let state = postcard::from_bytes(v).map_err(|e| corrupt(k, format!("aggregate cell: {e}")))?;
    Ok((key, state))
}

const CAP_KEY: &[u8] = b"cap";
/// File in the store folder holding the number of reports stored durably.
const COUNT_FILE: &str = "callwatch-count";

fn read_count(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(COUNT_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, keeping the per-agent cap its cells were built
    /// with (the default cap for a new store).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_inner(dir, None)
    }

    /// Opens (or creates) the store in `dir` with this per-agent cap; when the cells were built
    /// with another cap (or not at all), rebuilds them from the raw reports first.
    pub fn open_with_cap(dir: &Path, max_per_agent_per_day: usize) -> Result<Self, StoreError> {
        let cap = u32::try_from(max_per_agent_per_day).unwrap_or(u32::MAX);
        Self::open_inner(dir, Some(cap))
    }

    fn open_inner(dir: &Path, want_cap: Option<u32>) -> Result<Self, StoreError> {
        let damaged = |what: String| {
            StoreError::Backend(format!(
                "the store in {} is damaged ({what}); restore it from a backup, or move it \
                 aside to start empty",
                dir.display()
            ))
        };
        // sled panics on some kinds of damage instead of returning an error: contain it here,
        // at the one place a damaged file is first read, and say what happened.
        let opened = std::panic::catch_unwind(|| {
            sled::Config::new()
                .path(dir)
                // We flush explicitly before acknowledging; the periodic flush is a backstop.
                .flush_every_ms(Some(1000))
                .open()
        });
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(damaged(format!("opening: {e}"))),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unreadable".into());
                return Err(damaged(format!("sled could not read it: {what}")));
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        let (reports, by_time, cells, caps, meta) = (
            tree("reports")?,
            tree("by_time")?,
            tree("cells")?,
            tree("caps")?,
            tree("meta")?,
        );
        let built_with = match meta.get(CAP_KEY).map_err(backend)? {
            None => None,
            Some(v) => {
                Some(u32::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                    corrupt(CAP_KEY, "per-agent cap is not 4 bytes")
                })?))
            }
        };
        let default_cap = u32::try_from(Policy::default().max_per_agent_per_day).unwrap_or(24);
        let cap = want_cap.or(built_with).unwrap_or(default_cap);
        let store = SledStore {
            db,
            reports,
            by_time,
            cells,
            caps,
            meta,
            cap,
            dir: dir.to_path_buf(),
            count_lock: std::sync::Mutex::new(()),
            flusher: GroupFlush::default(),
        };
        // A truncated or emptied log looks to sled like a crash before those writes: it opens
        // without them. The count recorded beside the store after every durable batch tells.
        let recorded = read_count(dir);
        let found = store.reports.len() as u64;
        if found < recorded {
            return Err(damaged(format!(
                "it holds {found} reports but {recorded} were stored durably; its files were \
                 truncated or overwritten"
            )));
        }
        if built_with != Some(cap) {
            store.rebuild_cells()?;
        }
        Ok(store)
    }

    /// Records the number of durably stored reports beside the store (see `open`). Written
    /// after the flush, so it never exceeds what is durable; a crash before it is written only
    /// leaves it lower.
    fn record_count(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.count_lock.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.dir.as_path();
        let tmp = dir.join(format!("{COUNT_FILE}.tmp"));
        std::fs::write(&tmp, self.reports.len().to_string())
            .and_then(|()| std::fs::rename(&tmp, dir.join(COUNT_FILE)))
            .map_err(|e| StoreError::Backend(format!("recording the report count: {e}")))
    }

    /// The per-agent cap the cells apply.
    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// Rebuilds the aggregate cells from the raw reports, in order of arrival (the order the
    /// per-agent cap is applied in at ingest). Run at open when the cap changed or the store
    /// predates incremental aggregation.
    pub fn rebuild_cells(&self) -> Result<(), StoreError> {
        self.meta.remove(CAP_KEY).map_err(backend)?;
        self.cells.clear().map_err(backend)?;
        self.caps.clear().map_err(backend)?;
        let total = self.reports.len();
        if total > 0 {
            tracing::info!(
                reports = total,
                cap = self.cap,
                "rebuilding aggregate cells"
            );
        }
        let mut cells: BTreeMap<CellKey, CellState> = BTreeMap::new();
        let mut caps: BTreeMap<[u8; 48], u32> = BTreeMap::new();
        let mut done = 0usize;
        self.for_each_since(i64::MIN, &mut |stored| {
            let mut agent = [0u8; 32];
            if stored.signed.key.len() == 32 {
                agent.copy_from_slice(&stored.signed.key);
            }
            let body: CallReport = serde_json::from_slice(&stored.signed.body)
                .map_err(|e| corrupt(&agent, format!("stored body no longer parses: {e}")))?;
            for o in Observation::from_report(&stored, &body) {
                let key = o.cell_key();
                let n = caps.entry(CapKey::bytes(&key, &o.agent)).or_default();
                *n = n.saturating_add(1);
                if *n <= self.cap {
                    cells.entry(key).or_default().add(&o);
                }
            }
            done += 1;
            if done.is_multiple_of(100_000) {
                tracing::info!("rebuilt cells from {done} of {total} reports");
            }
            Ok(true)
        })?;
        let mut batch = sled::Batch::default();
        for (k, state) in &cells {
            let v = postcard::to_allocvec(state)
                .map_err(|e| StoreError::Backend(format!("encoding cell: {e}")))?;
            batch.insert(&k.to_bytes()[..], v);
        }
        self.cells.apply_batch(batch).map_err(backend)?;
        let mut batch = sled::Batch::default();
        for (k, n) in &caps {
            batch.insert(&k[..], &n.to_be_bytes()[..]);
        }
        self.caps.apply_batch(batch).map_err(backend)?;
        self.meta
            .insert(CAP_KEY, &self.cap.to_be_bytes()[..])
            .map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(())
    }
}

impl ReportStore for SledStore {
    fn insert_batch(
        &self,
        batch: &[(ReportKey, StoredReport)],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for (key, report) in batch {
            let value = postcard::to_allocvec(report)
                .map_err(|e| StoreError::Backend(format!("encoding report: {e}")))?;
            let observations = observations_of(key, report)?;
            // Insert-if-absent, the time index and the aggregate in one transaction: two
            // connections racing with the same report store and count it once, the index never
            // lacks a stored report, and the cells always agree with the raw reports.
            let id = key.to_bytes();
            let index = time_key(report.received_at_ms, key);
            let cap = self.cap;
            let result = (&self.reports, &self.by_time, &self.cells, &self.caps).transaction(
                |(reports, by_time, cells, caps)| {
                    if reports.get(id)?.is_some() {
                        return Ok(InsertOutcome::Duplicate);
                    }
                    reports.insert(&id[..], value.as_slice())?;
                    by_time.insert(index.as_slice(), &[][..])?;
                    for o in &observations {
                        let cell_key = o.cell_key();
                        let cap_key = CapKey::bytes(&cell_key, &o.agent);
                        let seen = match caps.get(cap_key)? {
                            Some(v) => v
                                .as_ref()
                                .try_into()
                                .map(u32::from_be_bytes)
                                .map_err(|_| abort("per-agent counter is not 4 bytes"))?,
                            None => 0,
                        };
                        caps.insert(&cap_key[..], &seen.saturating_add(1).to_be_bytes()[..])?;
                        if seen >= cap {
                            continue;
                        }
                        let k = cell_key.to_bytes();
                        let mut state: CellState = match cells.get(k)? {
                            Some(v) => postcard::from_bytes(&v)
                                .map_err(|e| abort(format!("aggregate cell: {e}")))?,
                            None => CellState::default(),
                        };
                        state.add(o);
                        let v = postcard::to_allocvec(&state)
                            .map_err(|e| abort(format!("encoding cell: {e}")))?;
                        cells.insert(&k[..], v)?;
                    }
                    Ok(InsertOutcome::Inserted)
                },
            );
            let outcome = match result {
                Ok(o) => o,
                Err(TransactionError::Storage(e)) => return Err(backend(e)),
                Err(TransactionError::Abort(what)) => return Err(corrupt(&id, what)),
            };
            outcomes.push(outcome);
        }
        // Durable before anyone is told: sled otherwise flushes on its own schedule. Also for a
        // batch of duplicates: another connection may have stored them a moment ago, not yet
        // flushed.
        self.flusher.flush(&self.db)?;
        if outcomes.contains(&InsertOutcome::Inserted) {
            // The batch is durable whatever happens here; a count that could not be recorded
            // only weakens the damage check at the next start.
            if let Err(e) = self.record_count() {
                tracing::warn!("{e}");
            }
        }
        Ok(outcomes)
    }

    fn for_each(
        &self,
        f: &mut dyn FnMut(StoredReport) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.reports.iter() {
            let (k, v) = item.map_err(backend)?;
            let report: StoredReport = postcard::from_bytes(&v).map_err(|e| corrupt(&k, e))?;
            f(report)?;
        }
        Ok(())
    }

    fn for_each_since(
        &self,
        since_ms: i64,
        f: &mut dyn FnMut(StoredReport) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.by_time.range(ordered_i64(since_ms)..) {
            let (k, _) = item.map_err(backend)?;
            let Some(report_key) = k.get(8..) else {
                return Err(corrupt(&k, "time index key too short"));
            };
            let v = self
                .reports
                .get(report_key)
                .map_err(backend)?
                .ok_or_else(|| corrupt(report_key, "indexed report is missing"))?;
            let report: StoredReport =
                postcard::from_bytes(&v).map_err(|e| corrupt(report_key, e))?;
            if !f(report)? {
                break;
            }
        }
        Ok(())
    }

    fn aggregate(
        &self,
        axes: &[Axis],
        filter: &Filter,
        policy: &Policy,
    ) -> Result<Vec<Cell>, StoreError> {
        let mut g = Grouper::new(axes, filter);
        let start = ordered_i64(filter.since_hour().unwrap_or(i64::MIN));
        let end = ordered_i64(filter.until_hour().unwrap_or(i64::MAX));
        for item in self.cells.range(start..end) {
            let (k, v) = item.map_err(backend)?;
            let key =
                CellKey::from_bytes(&k).ok_or_else(|| corrupt(&k, "bad aggregate cell key"))?;
            if g.wants(&key) {
                let (_, state) = decode_cell(&k, &v)?;
                g.add(&key, &state);
            }
        }
        Ok(g.finish(policy))
    }

    fn len(&self) -> usize {
        self.reports.len()
    }
}

fn abort(what: impl fmt::Display) -> ConflictableTransactionError<String> {
    ConflictableTransactionError::Abort(what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::Region;
    use callwatch_proto::{ReportId, SignedReport};

    fn item(agent: u8, id: u8) -> (ReportKey, StoredReport) {
        (
            ReportKey {
                agent: [agent; 32],
                id: ReportId([id; 16]),
            },
            StoredReport {
                signed: SignedReport {
                    body: {
                        let mut r = CallReport::example();
                        r.id = ReportId([id; 16]);
                        serde_json::to_vec(&r).unwrap()
                    },
                    key: vec![agent; 32],
                    signature: vec![0; 64],
                },
                region: Region::unknown(),
                received_at_ms: 1,
            },
        )
    }

    fn open_policy() -> Policy {
        Policy {
            min_agents: 1,
            ..Policy::default()
        }
    }

    #[test]
    fn deduplicates_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let out = s
                .insert_batch(&[item(1, 1), item(1, 2), item(1, 1)])
                .unwrap();
            assert_eq!(
                out,
                vec![
                    InsertOutcome::Inserted,
                    InsertOutcome::Inserted,
                    InsertOutcome::Duplicate
                ]
            );
            // Same id from another agent is a different report.
            assert_eq!(
                s.insert_batch(&[item(2, 1)]).unwrap(),
                vec![InsertOutcome::Inserted]
            );
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.len(), 3);
        let all = s
            .aggregate(&[Axis::Platform], &Filter::default(), &open_policy())
            .unwrap();
        assert_eq!(all[0].count, 3, "duplicates are not aggregated twice");
        assert_eq!(all[0].agents, 2);
        let mut in_order = vec![];
        s.for_each_since(i64::MIN, &mut |r| {
            in_order.push(r.signed.key[0]);
            Ok(true)
        })
        .unwrap();
        assert_eq!(in_order.len(), 3, "every stored report is indexed once");
        let mut seen = 0;
        s.for_each(&mut |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 3);
    }
}

#[cfg(test)]
mod cap_tests {
    use super::*;
    use crate::geo::Region;
    use callwatch_proto::{ReportId, SignedReport};

    fn item(agent: u8, id: u8, rtt: f64) -> (ReportKey, StoredReport) {
        let mut r = CallReport::example();
        r.id = ReportId([id; 16]);
        if let Some(s) = r.streams[0].rtt_ms.as_mut() {
            s.median = rtt;
        }
        (
            ReportKey {
                agent: [agent; 32],
                id: r.id,
            },
            StoredReport {
                signed: SignedReport {
                    body: serde_json::to_vec(&r).unwrap(),
                    key: vec![agent; 32],
                    signature: vec![0; 64],
                },
                region: Region {
                    country: "RU".into(),
                    asn: 12389,
                },
                received_at_ms: i64::from(id),
            },
        )
    }

    fn median(s: &SledStore) -> (u64, f64) {
        let policy = Policy {
            min_agents: 1,
            ..Policy::default()
        };
        let cells = s
            .aggregate(&[Axis::Country], &Filter::default(), &policy)
            .unwrap();
        let m = cells[0].rtt_ms.unwrap().median;
        // The sketch's estimate, snapped to the value it stands for (within 1 %).
        let snapped = [10.0, 12.0, 500.0]
            .into_iter()
            .find(|v: &f64| (m - v).abs() <= 0.01 * v)
            .unwrap_or(m);
        (cells[0].count, snapped)
    }

    #[test]
    fn concurrent_batches_share_flushes_and_all_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = std::sync::Arc::new(SledStore::open_with_cap(dir.path(), 1000).unwrap());
            let threads: Vec<_> = (0..8u8)
                .map(|t| {
                    let s = s.clone();
                    std::thread::spawn(move || {
                        for i in 0..20u8 {
                            let out = s.insert_batch(&[item(t + 1, i, 10.0)]).unwrap();
                            assert_eq!(out, vec![InsertOutcome::Inserted]);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let st = s.flusher.state.lock().unwrap();
            assert_eq!(st.0, 160, "every batch asked for a flush");
            assert!(st.1 >= 160, "and every one was covered");
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.len(), 160);
        assert_eq!(median(&s).0, 160);
    }

    #[test]
    fn the_cap_applies_at_ingest_and_a_new_cap_rebuilds_the_cells() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open_with_cap(dir.path(), 2).unwrap();
            s.insert_batch(&[item(1, 1, 10.0), item(2, 2, 12.0)])
                .unwrap();
            let flood: Vec<_> = (10..60).map(|i| item(9, i, 500.0)).collect();
            s.insert_batch(&flood).unwrap();
            // [10, 12, 500, 500]: the flooding agent counts twice; the median stays honest.
            assert_eq!(median(&s), (4, 12.0));
            assert_eq!(s.len(), 52, "capped reports are still stored");
        }
        {
            // Reopened with the cap it was built with: nothing rebuilt, same answer.
            let s = SledStore::open(dir.path()).unwrap();
            assert_eq!(s.cap(), 2);
            assert_eq!(median(&s), (4, 12.0));
        }
        // A stricter cap rebuilds from the raw reports, in arrival order.
        let s = SledStore::open_with_cap(dir.path(), 1).unwrap();
        assert_eq!(median(&s), (3, 12.0));
        let s2 = {
            drop(s);
            SledStore::open_with_cap(dir.path(), 100).unwrap()
        };
        assert_eq!(median(&s2), (52, 500.0), "uncapped, the flood decides");
    }
}
