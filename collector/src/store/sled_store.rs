//! The embedded default store: reports keyed by agent key ‖ report id, and an index by arrival
//! time (received ms ‖ report key) for paging exports, and the fine aggregate cells with their
//! per-agent and prefix cap counters and their day roll-up (see [`crate::domain`]). All are written in one
//! transaction, which also marks the (day, family)s whose published roll-ups
//! ([`crate::domain::rollup`], kept by `sled_rollups.rs`) are now behind.
//!
//! Records are compressed ([`super::compress`]: zstd, with a dictionary trained on the store's
//! first reports and kept in `meta`); records of earlier releases are read as they are. A clean
//! [`SledStore::close`] compacts the store (a fresh copy takes its place), and so does an open
//! that finds sled's log mostly superseded pages.

use super::compress::{self, Dictionaries};
use super::group::GroupCommit;
use super::{InsertOutcome, ReportStore, StoreError};
use crate::domain::events::EvidenceBook;
use crate::domain::rollup;
use crate::domain::Axis;
use crate::domain::{
    ordered_i64, CapKey, Cell, CellKey, CellState, Filter, Grouper, Observation, Plan, Policy,
    PrefixCapKey, CAP_KEY_LEN, CELL_KEY_LEN, PREFIX_CAP_KEY_LEN,
};
use crate::domain::{ReportKey, StoredReport, VerifiedReport};
#[cfg(test)]
use callwatch_proto::CallReport;
use callwatch_proto::Role;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;

#[path = "sled_live.rs"]
mod live;
#[path = "sled_mirror.rs"]
mod mirror;
pub use mirror::ReplacedDay;
#[path = "sled_rollups.rs"]
mod rollups;
pub use rollups::RollUpStats;

pub struct SledStore {
    db: sled::Db,
    reports: sled::Tree,
    by_time: sled::Tree,
    /// Fine aggregate cells: [`CellKey`] bytes → postcard [`CellState`].
    cells: sled::Tree,
    /// Per-agent cap counters: [`CapKey`] bytes → u32 BE.
    caps: sled::Tree,
    /// Prefix cap counters: [`PrefixCapKey`] bytes → u32 BE (reports within their agent's cap
    /// only).
    prefix_caps: sled::Tree,
    /// Day roll-up: [`CellKey::day_cell`] bytes → postcard [`CellState`], the merge of that
    /// day's fine cells.
    days: sled::Tree,
    /// Published roll-ups ([`crate::domain::rollup`]): [`Level::key`] bytes → postcard
    /// [`CellState`], for the k under `meta`/`rollk`.
    rollups: sled::Tree,
    /// The (day, family)s whose roll-ups are behind their day cells: [`rollup::family`] key
    /// bytes → the id (u64 BE, [`sled::Db::generate_id`]) of the last write that marked it.
    /// Written in the transaction that counts an observation of that family's day.
    dirty: sled::Tree,
    /// `cap` → the per-agent cap the cells were built with (u32 BE); `pcap` → the prefix cap
    /// they were built with (u32 BE); `days` → present once the
    /// day roll-up agrees with the fine cells; `cells` → the layout of the cells, caps and
    /// day roll-up ([`CELL_FORMAT`]).
    meta: sled::Tree,
    cap: u32,
    prefix_cap: u32,
    dir: std::path::PathBuf,
    /// Reports in the `reports` tree, counted at open and kept since (sled's own `len` scans
    /// the whole tree, and loops forever on a read error).
    count: std::sync::atomic::AtomicU64,
    /// The count last written to the count file; serialises writes of it (concurrent batches
    /// would race on its temp file) and keeps it from going backwards.
    recorded: std::sync::Mutex<u64>,
    /// Concurrent batches are written in groups: one transaction and one flush each.
    writer: GroupCommit<Vec<Prepared>, Result<Vec<InsertOutcome>, StoreError>>,
    /// The zstd dictionaries records are compressed with ([`super::compress`]), kept under
    /// `meta`/`dict` ‖ id.
    dicts: Dictionaries,
    /// Held while a dictionary is trained (once per store, see [`TRAIN_AFTER`]); true once
    /// training failed, so that it is tried again at the next open, not at every batch.
    training: std::sync::Mutex<bool>,
    /// Records written uncompressed ([`SledStore::write_plain_records`]).
    plain: std::sync::atomic::AtomicBool,
    /// Held while roll-ups are recomputed ([`SledStore::roll_up`]): one at a time.
    rolling: std::sync::Mutex<()>,
    /// The day in progress in memory ([`live`]); held by the writer from its transaction to its
    /// update of the copy.
    live: std::sync::Mutex<live::Live>,
}

/// What one tree of the store holds: entries and the bytes of their keys and values (sled's
/// own overhead and its log's garbage not counted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeSize {
    pub name: &'static str,
    pub entries: u64,
    pub key_bytes: u64,
    pub value_bytes: u64,
}

/// One report ready to write: everything computed outside the group's write (compression,
/// above all), so that the one writer at a time does only the transaction.
struct Prepared {
    id: [u8; 48],
    index: Vec<u8>,
    value: Vec<u8>,
    observations: Vec<Observation>,
}

/// Reports per sled transaction when a group is written: a bound on what one transaction
/// holds in memory; a larger group takes several, and one flush.
const TX_REPORTS: usize = 1024;

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

fn decode_cell(k: &[u8], v: &[u8]) -> Result<(CellKey, CellState), StoreError> {
    let key = CellKey::from_bytes(k).ok_or_else(|| corrupt(k, "bad aggregate cell key"))?;
    let state = postcard::from_bytes(v).map_err(|e| corrupt(k, format!("aggregate cell: {e}")))?;
    Ok((key, state))
}

/// A cell's or day/hour roll-up's state for a query, without its flags
/// ([`CellState::decode_unflagged`]).
fn decode_query_cell(k: &[u8], v: &[u8]) -> Result<CellState, StoreError> {
    CellState::decode_unflagged(v).map_err(|e| corrupt(k, format!("aggregate cell: {e}")))
}

/// A cell's whole state ([`decode_cell`] without the key).
fn whole_cell(k: &[u8], v: &[u8]) -> Result<CellState, StoreError> {
    decode_cell(k, v).map(|(_, state)| state)
}

const CAP_KEY: &[u8] = b"cap";
const PREFIX_CAP_KEY: &[u8] = b"pcap";
const DAYS_KEY: &[u8] = b"days";
const CELLS_KEY: &[u8] = b"cells";
/// `meta` key of the roll-ups' layout and k: the format byte, then k (u64 BE); absent while there are none.
const ROLLUP_K_KEY: &[u8] = b"rollk";
/// Dirty (day, family)s recomputed per pass of [`SledStore::roll_up`]: a bound on its memory.
const ROLL_CHUNK: usize = 4_096;
/// Prefix of the `meta` keys holding record dictionaries: `dict` ‖ id (u32 BE) → raw
/// dictionary.
const DICT_KEY: &[u8] = b"dict";
/// Reports stored (compressed without a dictionary) before one is trained on them.
pub const TRAIN_AFTER: u64 = 1_000;
/// Records a dictionary is trained on: the first ones in key order (spread over agents).
const TRAIN_SAMPLES: usize = 2_000;
/// The layout of the aggregate trees this build writes, kept under `meta`/`cells`.
///
/// Absent (format 1): a store from before the stream kind and the blocked counts — 16-byte cell
/// keys without the kind, 48-byte cap keys, cell states with 7 figures and 3 verdict counts.
/// Postcard is not self-describing, so such cells cannot be read as the current ones (a serde
/// default does not help); nor would converting them be exact, since they never counted blocked
/// calls. The store rebuilds them from the raw signed reports at open instead, as after a change
/// of the per-agent cap. Format 2: [`CellKey`] with the stream kind (17 bytes), [`CapKey`] with
/// it (49 bytes), [`CellState`] with the round-trip loss sketch and the blocked and
/// no-reference counts. Format 3: [`CellState`] with the filing counts
/// ([`crate::domain::FilingCounts`]). Format 4: [`CellState`] with the distinct network
/// prefixes, and the prefix cap's counters (`prefix_caps`). Format 5: [`CellKey`] with the
/// region's subdivision (20 bytes; cap keys unchanged, the caps do not count per subdivision).
/// Format 6: [`CellState`] with the differentiated tests per agent and prefix (the events'
/// evidence). Since record compression, a sketch of one value keeps its min = max once
/// ([`crate::domain::sketch`]); older format-6 cells read unchanged, so that is no new format.
pub const CELL_FORMAT: u8 = 6;
/// File in the store folder holding the number of reports stored durably.
const COUNT_FILE: &str = "callwatch-count";

fn read_count(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(COUNT_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The trees of the store, in the order [`open_and_read_all`] returns them.
const TREES: [&str; 9] = [
    "reports",
    "by_time",
    "cells",
    "caps",
    "days",
    "meta",
    "prefix_caps",
    "rollups",
    "dirty",
];

/// A store opened and read through.
struct Opened {
    db: sled::Db,
    trees: [sled::Tree; 9],
    /// Entries in the `reports` tree.
    reports: u64,
    /// Bytes of all keys and values.
    live: u64,
}

/// How long reading the store at open may go without progress before it counts as damaged;
/// `CALLWATCH_STORE_STALL_SECS` overrides the default of 60 s (a slow disk, a huge log).
fn stall_limit() -> std::time::Duration {
    let secs = std::env::var("CALLWATCH_STORE_STALL_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(60);
    std::time::Duration::from_secs(secs)
}

/// Opens the store and reads every entry of every tree once, on a thread of its own, watched.
///
/// sled 0.34 does not always fail cleanly on damaged files: some damage makes it panic, and a
/// page overwritten in the middle of the log can make a read retry forever at full CPU (seen in
/// `Tree::len` → `PageCache::get` → `Log::read`). Reading everything at open turns both into a
/// clear error before the store is used: a panic is caught, and when neither the open nor the
/// read-through makes progress for `stall`, the store is declared damaged. The stuck thread
/// cannot be stopped; it spins until the process exits, which the caller does on this error.
/// Once every page has been read successfully, later reads of the same pages do not hit it.
fn open_and_read_all(dir: &Path, stall: std::time::Duration) -> Result<Opened, String> {
    use std::sync::atomic::Ordering;
    let dir = dir.to_path_buf();
    watched(stall, move |seen| {
        let db = open_db(&dir)?;
        seen.fetch_add(1, Ordering::Relaxed);
        let mut trees = Vec::with_capacity(TREES.len());
        let mut reports = 0u64;
        let mut live = 0u64;
        for name in TREES {
            let tree = db
                .open_tree(name)
                .map_err(|e| format!("opening tree {name}: {e}"))?;
            let mut n = 0u64;
            for item in tree.iter() {
                let (k, v) = item.map_err(|e| format!("reading tree {name}: {e}"))?;
                live += (k.len() + v.len()) as u64;
                n += 1;
                seen.fetch_add(1, Ordering::Relaxed);
            }
            if name == "reports" {
                reports = n;
            }
            trees.push(tree);
        }
        let trees: [sled::Tree; 9] = trees
            .try_into()
            .map_err(|_| "internal: tree count".to_string())?;
        Ok(Opened {
            db,
            trees,
            reports,
            live,
        })
    })
}

/// The copy a compaction writes (`<dir>.compacting`) and where the store waits while the copy
/// takes its place (`<dir>.old`).
fn compaction_paths(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let with = |suffix: &str| {
        let mut s = dir.as_os_str().to_owned();
        s.push(suffix);
        std::path::PathBuf::from(s)
    };
    (with(".compacting"), with(".old"))
}

/// Whether `dir` holds a store, or held one that an interrupted compaction moved aside (the next
/// open puts it back, see [`recover_compaction`]).
pub fn store_exists(dir: &Path) -> bool {
    dir.exists() || compaction_paths(dir).1.exists()
}

/// Refuses a folder that holds files but no sled database: opening it would create a store
/// among them, and a compaction at open replaces the whole folder, which would delete them (a
/// data folder given where its store folder was meant, say).
fn refuse_foreign(dir: &Path) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // Missing: a new store is made. Unreadable: sled's own open says why.
        Err(_) => return Ok(()),
    };
    let names: Vec<std::ffi::OsString> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    // sled makes `blobs` first, then `conf` and `db`: an open stopped between them left a
    // store, not a foreign folder.
    if names.is_empty()
        || names
            .iter()
            .any(|n| n == "db" || n == "conf" || n == "blobs")
    {
        return Ok(());
    }
    Err(StoreError::Backend(format!(
        "{} is not a store: it holds {} other file(s) and no sled database (a store is a folder \
         of its own, such as a data folder's reports.sled); nothing was changed",
        dir.display(),
        names.len()
    )))
}

/// Finishes or undoes a compaction ([`SledStore::close`]) a crash interrupted: with the store
/// moved aside and the copy not yet in its place, the store goes back (it is complete, the
/// copy may not be); with both in place, the old one is removed; a copy left over is removed.
pub fn recover_compaction(dir: &Path) -> std::io::Result<()> {
    let (compacting, old) = compaction_paths(dir);
    if old.exists() {
        if dir.exists() {
            std::fs::remove_dir_all(&old)?;
        } else {
            std::fs::rename(&old, dir)?;
        }
    }
    if compacting.exists() {
        std::fs::remove_dir_all(&compacting)?;
    }
    Ok(())
}

/// A store is compacted at open when its folder is over [`COMPACT_RATIO`] times its live
/// entries' bytes (a fresh copy is about 2.5 times) and over `COMPACT_OVER` bytes.
const COMPACT_OVER: u64 = 64 << 20;
const COMPACT_RATIO: u64 = 4;

/// Bytes of the files below `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            total += match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            };
        }
    }
    total
}

/// Entries per batch when copying a tree ([`SledStore::copy_into`]).
const COPY_BATCH: usize = 20_000;

/// sled's configuration for the store in `dir`.
fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        // We flush explicitly before acknowledging; the periodic flush is a backstop.
        .flush_every_ms(Some(1000))
}

/// Opens sled in `dir`. sled's file lock outlives a dropped store for a moment while its
/// background writes finish ("could not acquire lock" when a store is reopened at once, as
/// tests do and a quick restart may): that is retried for up to 2 s.
fn open_db(dir: &Path) -> Result<sled::Db, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let opened = sled_config(dir).open();
        match opened {
            Ok(db) => return Ok(db),
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(format!("opening: {e}")),
        }
    }
}

/// Runs `work` on a thread of its own and returns its result; gives up with an error when the
/// counter it is handed stays still for `stall` — ten times that before it first moves, since
/// sled's own recovery at open reads the whole log without telling. A panic in `work` is an
/// error too.
fn watched<T: Send + 'static>(
    stall: std::time::Duration,
    work: impl FnOnce(&std::sync::atomic::AtomicU64) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let progress = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let seen = progress.clone();
    let spawned = std::thread::Builder::new()
        .name("store-open".into())
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&seen)))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unreadable".into());
                    Err(format!("sled could not read it: {what}"))
                });
            // The receiver is gone only when the watcher already gave up.
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Err(format!("cannot start a thread to read it: {e}"));
    }
    let tick = stall.min(std::time::Duration::from_millis(250));
    let (mut last, mut still_since) = (0u64, std::time::Instant::now());
    loop {
        match rx.recv_timeout(tick) {
            Ok(result) => return result,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err("the thread reading it stopped without an answer".into())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = progress.load(Ordering::Relaxed);
        if now != last {
            (last, still_since) = (now, std::time::Instant::now());
        } else if still_since.elapsed() >= if now == 0 { stall * 10 } else { stall } {
            return Err(format!(
                "sled made no progress reading it for {:.1} s after {now} entries; it loops on \
                 damaged pages",
                stall.as_secs_f64()
            ));
        }
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, keeping the per-agent and prefix caps its cells
    /// were built with (the default caps for a new store).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_inner(dir, None, None, true)
    }

    /// Opens (or creates) the store in `dir` with this per-agent cap (and the prefix cap its
    /// cells were built with); when the cells were built with another cap (or not at all),
    /// rebuilds them from the raw reports first.
    pub fn open_with_cap(dir: &Path, max_per_agent_per_day: usize) -> Result<Self, StoreError> {
        let cap = u32::try_from(max_per_agent_per_day).unwrap_or(u32::MAX);
        Self::open_inner(dir, Some(cap), None, true)
    }

    /// Opens (or creates) the store in `dir` with the per-agent and prefix caps of `policy`;
    /// when the cells were built with other caps (or not at all), rebuilds them from the raw
    /// reports first.
    pub fn open_with_policy(dir: &Path, policy: &Policy) -> Result<Self, StoreError> {
        let cap = u32::try_from(policy.max_per_agent_per_day).unwrap_or(u32::MAX);
        let pcap = u32::try_from(policy.max_per_prefix_per_day).unwrap_or(u32::MAX);
        Self::open_inner(dir, Some(cap), Some(pcap), true)
    }

    fn open_inner(
        dir: &Path,
        want_cap: Option<u32>,
        want_prefix_cap: Option<u32>,
        compact: bool,
    ) -> Result<Self, StoreError> {
        let damaged = |what: String| {
            StoreError::Backend(format!(
                "the store in {} is damaged ({what}); restore it from a backup, or move it \
                 aside to start empty",
                dir.display()
            ))
        };
        let Opened {
            db,
            trees: [reports, by_time, cells, caps, days, meta, prefix_caps, rollups, dirty],
            reports: found,
            live,
        } = {
            refuse_foreign(dir)?;
            recover_compaction(dir).map_err(|e| {
                StoreError::Backend(format!(
                    "finishing an interrupted compaction of the store in {}: {e}",
                    dir.display()
                ))
            })?;
            open_and_read_all(dir, stall_limit()).map_err(|e| {
                if e.contains("could not acquire lock") {
                    // Not damage: another process (or store) holds it.
                    StoreError::Backend(format!(
                        "the store in {} is open in another process (a collector already \
                         running on this data folder?): stop that one first ({e})",
                        dir.display()
                    ))
                } else {
                    damaged(e)
                }
            })?
        };
        let built_with = match meta.get(CAP_KEY).map_err(backend)? {
            None => None,
            Some(v) => {
                Some(u32::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                    corrupt(CAP_KEY, "per-agent cap is not 4 bytes")
                })?))
            }
        };
        let prefix_built_with = match meta.get(PREFIX_CAP_KEY).map_err(backend)? {
            None => None,
            Some(v) => {
                Some(u32::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                    corrupt(PREFIX_CAP_KEY, "prefix cap is not 4 bytes")
                })?))
            }
        };
        let default_cap = u32::try_from(Policy::default().max_per_agent_per_day).unwrap_or(24);
        let default_prefix_cap =
            u32::try_from(Policy::default().max_per_prefix_per_day).unwrap_or(240);
        let cap = want_cap.or(built_with).unwrap_or(default_cap);
        let prefix_cap = want_prefix_cap
            .or(prefix_built_with)
            .unwrap_or(default_prefix_cap);
        let store = SledStore {
            db,
            reports,
            by_time,
            cells,
            caps,
            prefix_caps,
            days,
            rollups,
            dirty,
            meta,
            cap,
            prefix_cap,
            rolling: std::sync::Mutex::new(()),
            live: std::sync::Mutex::new(live::Live::default()),
            dir: dir.to_path_buf(),
            count: std::sync::atomic::AtomicU64::new(found),
            recorded: std::sync::Mutex::new(0),
            writer: GroupCommit::default(),
            dicts: Dictionaries::default(),
            training: std::sync::Mutex::new(false),
            plain: std::sync::atomic::AtomicBool::new(false),
        };
        for item in store.meta.scan_prefix(DICT_KEY) {
            let (k, v) = item.map_err(backend)?;
            let id = k
                .get(DICT_KEY.len()..)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
                .filter(|id| *id > 0)
                .ok_or_else(|| corrupt(&k, "bad dictionary key"))?;
            store.dicts.add(id, &v).map_err(|e| corrupt(&k, e))?;
        }
        // A truncated or emptied log looks to sled like a crash before those writes: it opens
        // without them. The count recorded beside the store after every durable batch tells.
        let recorded = read_count(dir);
        if found < recorded {
            return Err(damaged(format!(
                "it holds {found} reports but {recorded} were stored durably; its files were \
                 truncated or overwritten"
            )));
        }
        let format = store.meta.get(CELLS_KEY).map_err(backend)?;
        let current_format = format.as_deref() == Some(&[CELL_FORMAT][..]);
        if built_with != Some(cap) || prefix_built_with != Some(prefix_cap) || !current_format {
            if built_with.is_some() && !current_format {
                tracing::info!(
                    from = format
                        .as_deref()
                        .and_then(|f| f.first().copied())
                        .unwrap_or(1),
                    to = CELL_FORMAT,
                    "the aggregate cells have an older layout; rebuilding them from the reports"
                );
            }
            store.rebuild_cells()?;
        } else if store.meta.get(DAYS_KEY).map_err(backend)?.is_none() {
            // A store from before the day roll-up.
            store.rebuild_days()?;
        }
        store.train_if_due()?;
        let on_disk = dir_bytes(dir);
        if compact && on_disk > COMPACT_OVER && on_disk / COMPACT_RATIO > live {
            // A store never closed cleanly (a service stops within seconds), or of an earlier
            // release: compacted now, before anything uses it.
            tracing::info!(
                on_disk,
                live,
                "the store's log is mostly superseded pages; compacting it"
            );
            if let Err(e) = store.close() {
                // The store is as it was (or is put back at the reopen): used uncompacted.
                tracing::warn!("compacting the store failed, opening it as it is: {e}");
            }
            return Self::open_inner(dir, want_cap, want_prefix_cap, false);
        }
        Ok(store)
    }

    /// Writes records uncompressed, as releases before compression did: for tests of stores
    /// those releases wrote, and the size benchmark's baseline.
    #[doc(hidden)]
    pub fn write_plain_records(&self, on: bool) {
        self.plain.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Trains the records' dictionary once enough reports are stored without one (a new store
    /// after [`TRAIN_AFTER`] reports, or one written by an earlier release at its first open),
    /// keeps it in the store, durably, and compresses records with it from then on. Records
    /// compressed before, or never, stay as they are and read as before.
    fn train_if_due(&self) -> Result<(), StoreError> {
        if self.dicts.current() != 0
            || (self.len() as u64) < TRAIN_AFTER
            || self.plain.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(());
        }
        // One batch trains; the others go on compressing without a dictionary meanwhile.
        let Ok(mut failed) = self.training.try_lock() else {
            return Ok(());
        };
        if self.dicts.current() != 0 || *failed {
            return Ok(());
        }
        let mut samples = Vec::with_capacity(TRAIN_SAMPLES);
        for item in self.reports.iter().take(TRAIN_SAMPLES) {
            let (k, v) = item.map_err(backend)?;
            let agent = k.get(..32).unwrap_or_default();
            let plain = self
                .dicts
                .decompress(agent, &v)
                .map_err(|e| corrupt(&k, e))?;
            // Trained on what is compressed.
            samples.push(compress::payload(agent, &plain).1.into_owned());
        }
        let dict = match compress::train(&samples) {
            Ok(d) => d,
            Err(e) => {
                // Records compress without one; try again at the next open.
                tracing::warn!("{e}");
                *failed = true;
                return Ok(());
            }
        };
        let id = 1u32;
        let mut key = DICT_KEY.to_vec();
        key.extend_from_slice(&id.to_be_bytes());
        self.meta.insert(key, dict.as_slice()).map_err(backend)?;
        // Durable before any record names it.
        self.db.flush().map_err(backend)?;
        self.dicts
            .add(id, &dict)
            .map_err(|e| StoreError::Backend(format!("the trained dictionary: {e}")))?;
        tracing::info!(
            bytes = dict.len(),
            samples = samples.len(),
            "trained the records' dictionary"
        );
        Ok(())
    }

    /// A record as stored, read back: decompressed, parsed.
    fn read_record(&self, key: &[u8], stored: &[u8]) -> Result<StoredReport, StoreError> {
        let agent = key.get(..32).unwrap_or_default();
        let plain = self
            .dicts
            .decompress(agent, stored)
            .map_err(|e| corrupt(key, e))?;
        StoredReport::from_bytes(&plain).map_err(|e| corrupt(key, e))
    }

    /// Records `durable`, a number of reports known to be flushed, beside the store (see
    /// `open`). The caller takes it before its flush starts: every report counted by then was
    /// committed before that flush, so it never exceeds what is durable; a crash before it is
    /// written only leaves it lower.
    fn record_count(&self, durable: u64) -> Result<(), StoreError> {
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        if durable <= *recorded {
            return Ok(());
        }
        let dir = self.dir.as_path();
        let tmp = dir.join(format!("{COUNT_FILE}.tmp"));
        std::fs::write(&tmp, durable.to_string())
            .and_then(|()| std::fs::rename(&tmp, dir.join(COUNT_FILE)))
            .map_err(|e| StoreError::Backend(format!("recording the report count: {e}")))?;
        *recorded = durable;
        Ok(())
    }

    /// Closes the store cleanly and compacts it: everything written is flushed, then copied
    /// into a fresh sled database beside it (`<dir>.compacting`, records compressed with the
    /// newest dictionary), which takes the store's place. sled's log keeps superseded versions
    /// of pages until a segment is half garbage, so a filled store is several times its live
    /// entries; the copy is not. Crash-safe: the store is replaced by two renames only once the
    /// copy is flushed and read back, and [`recover_compaction`] at the next open finishes or
    /// undoes an interrupted swap; an error leaves the store as it was.
    pub fn close(self) -> Result<(), StoreError> {
        self.db.flush().map_err(backend)?;
        let dir = self.dir.clone();
        let (compacting, old) = compaction_paths(&dir);
        let io = |what: &str, e: std::io::Error| {
            StoreError::Backend(format!("compacting the store: {what}: {e}"))
        };
        if compacting.exists() {
            std::fs::remove_dir_all(&compacting).map_err(|e| io("removing a stale copy", e))?;
        }
        let copied = self.copy_into(&compacting).and_then(|()| {
            // Every report is flushed: the count is durable.
            let count = self.count.load(std::sync::atomic::Ordering::SeqCst);
            std::fs::File::create(compacting.join(COUNT_FILE))
                .and_then(|mut f| {
                    use std::io::Write;
                    f.write_all(count.to_string().as_bytes())?;
                    f.sync_all()
                })
                .map_err(|e| io("recording the count", e))
        });
        if let Err(e) = copied {
            let _ = std::fs::remove_dir_all(&compacting);
            return Err(e);
        }
        drop(self);
        std::fs::rename(&dir, &old).map_err(|e| io("moving the store aside", e))?;
        std::fs::rename(&compacting, &dir).map_err(|e| io("moving the copy in", e))?;
        if let Some(parent) = dir.parent() {
            // The renames durable (a crash before leaves one of the two, see recover_compaction).
            let _ = std::fs::File::open(parent).and_then(|f| f.sync_all());
        }
        if let Err(e) = std::fs::remove_dir_all(&old) {
            // sled's background thread may still write there; the next open removes it.
            tracing::warn!("removing {}: {e}", old.display());
        }
        Ok(())
    }

    /// Copies every tree into a fresh sled database in `target` (which must not exist yet),
    /// flushed: the same entries without the garbage of sled's log.
    pub fn copy_into(&self, target: &Path) -> Result<(), StoreError> {
        let fresh = sled_config(target)
            .create_new(true)
            .open()
            .map_err(backend)?;
        let trees = self.named_trees();
        let mut copied = Vec::with_capacity(trees.len());
        for (name, tree) in trees {
            let to = fresh.open_tree(name).map_err(backend)?;
            let mut batch = sled::Batch::default();
            let mut n = 0usize;
            let current = self.dicts.current();
            for item in tree.iter() {
                let (k, mut v) = item.map_err(backend)?;
                if name == "reports" && compress::dictionary_of(&v) != Some(current) {
                    // Compressed again with the newest dictionary: the same record.
                    let agent = k.get(..32).unwrap_or_default();
                    let plain = self
                        .dicts
                        .decompress(agent, &v)
                        .map_err(|e| corrupt(&k, e))?;
                    v = self
                        .dicts
                        .compress(agent, &plain)
                        .map_err(|e| corrupt(&k, e))?
                        .into();
                }
                batch.insert(k, v);
                n += 1;
                if n.is_multiple_of(COPY_BATCH) {
                    to.apply_batch(std::mem::take(&mut batch))
                        .map_err(backend)?;
                }
            }
            to.apply_batch(batch).map_err(backend)?;
            copied.push((name, to, n));
        }
        fresh.flush().map_err(backend)?;
        // Read back before it replaces anything: every entry is there.
        for (name, to, n) in copied {
            let mut m = 0usize;
            for item in to.iter() {
                item.map_err(backend)?;
                m += 1;
            }
            if m != n {
                return Err(StoreError::Backend(format!(
                    "the copy of tree {name} holds {m} entries, not {n}"
                )));
            }
        }
        Ok(())
    }

    /// Every tree of the store under its name in sled.
    fn named_trees(&self) -> [(&'static str, &sled::Tree); 9] {
        [
            ("reports", &self.reports),
            ("by_time", &self.by_time),
            ("cells", &self.cells),
            ("caps", &self.caps),
            ("prefix_caps", &self.prefix_caps),
            ("days", &self.days),
            ("meta", &self.meta),
            ("rollups", &self.rollups),
            ("dirty", &self.dirty),
        ]
    }

    /// Entries and bytes of keys and values per tree (for sizing; reads every tree once).
    pub fn tree_sizes(&self) -> Result<Vec<TreeSize>, StoreError> {
        let trees = self.named_trees();
        let mut out = Vec::with_capacity(trees.len());
        for (name, tree) in trees {
            let mut size = TreeSize {
                name,
                ..TreeSize::default()
            };
            for item in tree.iter() {
                let (k, v) = item.map_err(backend)?;
                size.entries += 1;
                size.key_bytes += k.len() as u64;
                size.value_bytes += v.len() as u64;
            }
            out.push(size);
        }
        Ok(out)
    }

    /// The per-agent cap the cells apply.
    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// The prefix cap the cells apply.
    pub fn prefix_cap(&self) -> u32 {
        self.prefix_cap
    }

    /// Rebuilds the aggregate cells from the raw reports, in order of arrival (the order the
    /// caps are applied in at ingest). Run at open when a cap changed, the store
    /// predates incremental aggregation, or its cells have an older layout ([`CELL_FORMAT`]).
    pub fn rebuild_cells(&self) -> Result<(), StoreError> {
        self.meta.remove(CAP_KEY).map_err(backend)?;
        self.meta.remove(PREFIX_CAP_KEY).map_err(backend)?;
        self.meta.remove(DAYS_KEY).map_err(backend)?;
        self.meta.remove(CELLS_KEY).map_err(backend)?;
        self.cells.clear().map_err(backend)?;
        self.caps.clear().map_err(backend)?;
        self.prefix_caps.clear().map_err(backend)?;
        let total = self.len();
        if total > 0 {
            tracing::info!(
                reports = total,
                cap = self.cap,
                prefix_cap = self.prefix_cap,
                "rebuilding aggregate cells"
            );
        }
        let mut cells: BTreeMap<CellKey, CellState> = BTreeMap::new();
        let mut caps: BTreeMap<[u8; CAP_KEY_LEN], u32> = BTreeMap::new();
        let mut prefix_caps: BTreeMap<[u8; PREFIX_CAP_KEY_LEN], u32> = BTreeMap::new();
        let mut done = 0usize;
        self.for_each_since(i64::MIN, &mut |stored| {
            for o in VerifiedReport::parse(stored)?.observations {
                let key = o.cell_key();
                let n = caps.entry(CapKey::bytes(&key, &o.agent)).or_default();
                *n = n.saturating_add(1);
                if *n > self.cap {
                    continue;
                }
                let p = prefix_caps
                    .entry(PrefixCapKey::bytes(&key, &o.prefix()))
                    .or_default();
                *p = p.saturating_add(1);
                if *p <= self.prefix_cap {
                    cells.entry(key).or_default().add(&o);
                }
            }
            done += 1;
            if done.is_multiple_of(100_000) {
                tracing::info!("rebuilt cells from {done} of {total} reports");
            }
            Ok(true)
        })?;
        write_cells(&self.cells, &cells)?;
        let mut batch = sled::Batch::default();
        for (k, n) in &caps {
            batch.insert(&k[..], &n.to_be_bytes()[..]);
        }
        self.caps.apply_batch(batch).map_err(backend)?;
        let mut batch = sled::Batch::default();
        for (k, n) in &prefix_caps {
            batch.insert(&k[..], &n.to_be_bytes()[..]);
        }
        self.prefix_caps.apply_batch(batch).map_err(backend)?;
        self.meta
            .insert(CAP_KEY, &self.cap.to_be_bytes()[..])
            .map_err(backend)?;
        self.meta
            .insert(PREFIX_CAP_KEY, &self.prefix_cap.to_be_bytes()[..])
            .map_err(backend)?;
        self.meta
            .insert(CELLS_KEY, &[CELL_FORMAT][..])
            .map_err(backend)?;
        self.db.flush().map_err(backend)?;
        self.rebuild_days()
    }

    /// Rebuilds the day roll-up from the fine cells (each day cell is the merge of its day's
    /// fine cells), then marks it current.
    pub fn rebuild_days(&self) -> Result<(), StoreError> {
        self.drop_rollups()?;
        // No day is loaded into memory while its cells are rebuilt, and none is kept after.
        let mut live = self.live()?;
        live.clear();
        self.meta.remove(DAYS_KEY).map_err(backend)?;
        self.days.clear().map_err(backend)?;
        let mut days: BTreeMap<CellKey, CellState> = BTreeMap::new();
        for item in self.cells.iter() {
            let (k, v) = item.map_err(backend)?;
            let (key, state) = decode_cell(&k, &v)?;
            days.entry(key.day_cell()).or_default().merge(&state);
        }
        write_cells(&self.days, &days)?;
        self.meta.insert(DAYS_KEY, &[1u8][..]).map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    /// Aggregates from the day (and, at partial days, fine) cells, without the published
    /// roll-ups: what queries read before them, the baseline the benchmark compares with.
    pub fn aggregate_days(
        &self,
        axes: &[Axis],
        filter: &Filter,
        policy: &Policy,
    ) -> Result<Vec<Cell>, StoreError> {
        self.aggregate_by(Plan::of(axes, &filter.whole_days()), axes, filter, policy)
    }

    /// Aggregates from the fine cells alone, without the day roll-up: the reference the roll-up
    /// is tested against.
    pub fn aggregate_fine(
        &self,
        axes: &[Axis],
        filter: &Filter,
        policy: &Policy,
    ) -> Result<Vec<Cell>, StoreError> {
        // Every key of the range, not one country's key ranges, and every cell decoded whole
        // (flags too): the tests' reference shares no reading shortcut with what it checks.
        let mut g = Grouper::new(axes, filter);
        let plan = Plan::hourly(&filter.whole_days());
        for range in plan.fine.into_iter().flatten() {
            merge_range(&self.cells, &mut g, range, 1, None, whole_cell)?;
        }
        Ok(g.finish(policy))
    }

    /// Merges the cells `plan` names into the query's cells.
    fn aggregate_by(
        &self,
        plan: Plan,
        axes: &[Axis],
        filter: &Filter,
        policy: &Policy,
    ) -> Result<Vec<Cell>, StoreError> {
        let mut g = Grouper::new(axes, filter);
        let country = g.country_key();
        for range in plan.fine.into_iter().flatten() {
            merge_range(&self.cells, &mut g, range, 1, country, decode_query_cell)?;
        }
        if let Some(range) = plan.days {
            merge_range(&self.days, &mut g, range, 24, country, decode_query_cell)?;
        }
        Ok(g.finish(policy))
    }
}

/// Writes cells into an emptied tree in one batch.
fn write_cells(tree: &sled::Tree, cells: &BTreeMap<CellKey, CellState>) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    for (k, state) in cells {
        let v = postcard::to_allocvec(state)
            .map_err(|e| StoreError::Backend(format!("encoding cell: {e}")))?;
        batch.insert(&k.to_bytes()[..], v);
    }
    tree.apply_batch(batch).map_err(backend)
}

/// At most this many key ranges for one scan of [`hour_ranges`]; more is read as one range.
const MAX_KEY_RANGES: i64 = 1 << 16;

/// The key ranges of a tree whose keys are `lead` (a roll-up level's byte, or nothing), an hour
/// ([`ordered_i64`]) and a country, that cover the hours `[from, to)`: one range, or — for a
/// query of one `country` — one range per key hour holding that country's keys only, so a
/// query of one country does not read every other's. Keys sit only at hours that are multiples
/// of `step` (1 for hourly keys, 24 for day keys).
pub(super) fn hour_ranges(
    lead: &[u8],
    (from, to): (i64, i64),
    step: i64,
    country: Option<[u8; 2]>,
) -> Vec<std::ops::Range<Vec<u8>>> {
    let key = |h: i64, tail: &[u8]| {
        let mut k = Vec::with_capacity(lead.len() + 8 + tail.len());
        k.extend_from_slice(lead);
        k.extend_from_slice(&ordered_i64(h));
        k.extend_from_slice(tail);
        k
    };
    let step = step.max(1);
    let first = from.div_euclid(step).saturating_mul(step);
    let first = if first < from {
        first.saturating_add(step)
    } else {
        first
    };
    match country {
        Some(cc) if from < to && to.saturating_sub(first) / step < MAX_KEY_RANGES => {
            let next = u16::from_be_bytes(cc).checked_add(1);
            (first..to)
                .step_by(step as usize)
                .map(|h| {
                    let end = match next {
                        Some(n) => key(h, &n.to_be_bytes()),
                        None => key(h.saturating_add(1), &[]),
                    };
                    key(h, &cc)..end
                })
                .collect()
        }
        _ => vec![key(from, &[])..key(to, &[])],
    }
}

/// The entries of `tree` in `ranges`, in order.
pub(super) fn scan(
    tree: &sled::Tree,
    ranges: Vec<std::ops::Range<Vec<u8>>>,
) -> impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + '_ {
    ranges.into_iter().flat_map(move |r| tree.range(r))
}

/// Adds the cells of `tree` (keys every `step` hours) whose hour lies in `[from, to)` to a
/// query, reading only `country`'s keys when one is given.
fn merge_range(
    tree: &sled::Tree,
    g: &mut Grouper<'_>,
    range: (i64, i64),
    step: i64,
    country: Option<[u8; 2]>,
    decode: fn(&[u8], &[u8]) -> Result<CellState, StoreError>,
) -> Result<(), StoreError> {
    for item in scan(tree, hour_ranges(&[], range, step, country)) {
        let (k, v) = item.map_err(backend)?;
        let key = CellKey::from_bytes(&k).ok_or_else(|| corrupt(&k, "bad aggregate cell key"))?;
        if g.wants(&key) {
            g.add_owned(&key, decode(&k, &v)?);
        }
    }
    Ok(())
}

/// A counter (u32 BE) of a group's transaction: read from the tree once, then kept in `map`
/// until the transaction writes it back.
fn counter<'m, const N: usize>(
    map: &'m mut HashMap<[u8; N], u32>,
    tree: &sled::transaction::TransactionalTree,
    key: [u8; N],
    what: &'static str,
) -> Result<&'m mut u32, ConflictableTransactionError<String>> {
    match map.entry(key) {
        Entry::Occupied(e) => Ok(e.into_mut()),
        Entry::Vacant(e) => {
            let n = match tree.get(key)? {
                Some(v) => v
                    .as_ref()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| abort(format!("{what} (key {})", hex::encode(key))))?,
                None => 0,
            };
            Ok(e.insert(n))
        }
    }
}

/// A cell of a group's transaction: read and decoded once, merged in memory, written back
/// once by the transaction.
fn cell<'m>(
    map: &'m mut HashMap<[u8; CELL_KEY_LEN], CellState>,
    tree: &sled::transaction::TransactionalTree,
    key: [u8; CELL_KEY_LEN],
) -> Result<&'m mut CellState, ConflictableTransactionError<String>> {
    match map.entry(key) {
        Entry::Occupied(e) => Ok(e.into_mut()),
        Entry::Vacant(e) => {
            let state = match tree.get(key)? {
                Some(v) => postcard::from_bytes(&v)
                    .map_err(|e| abort(format!("aggregate cell {}: {e}", hex::encode(key))))?,
                None => CellState::default(),
            };
            Ok(e.insert(state))
        }
    }
}

/// The trees a counting transaction reads and writes: cells, per-agent counters, day cells,
/// prefix counters.
pub(super) type CountTrees<'t> = (
    &'t sled::transaction::TransactionalTree,
    &'t sled::transaction::TransactionalTree,
    &'t sled::transaction::TransactionalTree,
    &'t sled::transaction::TransactionalTree,
);

/// What one transaction counts: observations under the per-agent and prefix caps, in the
/// order given, merged into their hourly and day cells (each counter and cell read from its
/// tree once, kept here, written back once by [`Tally::write`]).
#[derive(Default)]
pub(super) struct Tally {
    agent_counts: HashMap<[u8; CAP_KEY_LEN], u32>,
    prefix_counts: HashMap<[u8; PREFIX_CAP_KEY_LEN], u32>,
    hourly: HashMap<[u8; CELL_KEY_LEN], CellState>,
    /// The day cells written, as they now are.
    pub(super) daily: HashMap<[u8; CELL_KEY_LEN], CellState>,
    families: HashSet<[u8; CELL_KEY_LEN]>,
}

impl Tally {
    /// Counts `o` if its agent and its prefix are within their caps for its cell's day; whether
    /// it counted.
    pub(super) fn count(
        &mut self,
        o: &Observation,
        (cap, prefix_cap): (u32, u32),
        (cells, caps, days, pcaps): CountTrees<'_>,
    ) -> Result<bool, ConflictableTransactionError<String>> {
        let cell_key = o.cell_key();
        let seen = counter(
            &mut self.agent_counts,
            caps,
            CapKey::bytes(&cell_key, &o.agent),
            "per-agent counter is not 4 bytes",
        )?;
        let before = *seen;
        *seen = before.saturating_add(1);
        if before >= cap {
            return Ok(false);
        }
        // The prefix cap, over the reports within their agent's cap.
        let seen = counter(
            &mut self.prefix_counts,
            pcaps,
            PrefixCapKey::bytes(&cell_key, &o.prefix()),
            "prefix counter is not 4 bytes",
        )?;
        let before = *seen;
        *seen = before.saturating_add(1);
        if before >= prefix_cap {
            return Ok(false);
        }
        cell(&mut self.hourly, cells, cell_key.to_bytes())?.add(o);
        cell(&mut self.daily, days, cell_key.day_cell().to_bytes())?.add(o);
        self.families.insert(rollup::family(&cell_key).to_bytes());
        Ok(true)
    }

    /// Writes the counters and cells back, and marks the families counted into dirty.
    pub(super) fn write(
        &self,
        (cells, caps, days, pcaps): CountTrees<'_>,
        dirty: &sled::transaction::TransactionalTree,
        mark: &[u8],
    ) -> Result<(), ConflictableTransactionError<String>> {
        for (k, n) in &self.agent_counts {
            caps.insert(&k[..], &n.to_be_bytes()[..])?;
        }
        for (k, n) in &self.prefix_counts {
            pcaps.insert(&k[..], &n.to_be_bytes()[..])?;
        }
        for f in &self.families {
            dirty.insert(&f[..], mark)?;
        }
        for (tree, states) in [(cells, &self.hourly), (days, &self.daily)] {
            for (k, state) in states {
                let v = postcard::to_allocvec(state)
                    .map_err(|e| abort(format!("encoding cell: {e}")))?;
                tree.insert(&k[..], v)?;
            }
        }
        Ok(())
    }
}

impl SledStore {
    /// Writes a group of batches (the leader's work, see [`GroupCommit`]): in transactions of
    /// about [`TX_REPORTS`] reports, each report inserted if absent with its time index, its
    /// observations counted under the per-agent and prefix caps and merged into their hourly
    /// and day cells — all in arrival order, exactly as one transaction per report would — and
    /// then one flush for the whole group: nothing is acknowledged before it is durable. One
    /// result per batch.
    fn write_group(
        &self,
        group: Vec<Vec<Prepared>>,
    ) -> Vec<Result<Vec<InsertOutcome>, StoreError>> {
        let mut results: Vec<Result<Vec<InsertOutcome>, StoreError>> =
            Vec::with_capacity(group.len());
        let mut start = 0;
        while start < group.len() {
            let mut end = start;
            let mut reports = 0;
            while end < group.len() && (end == start || reports + group[end].len() <= TX_REPORTS) {
                reports += group[end].len();
                end += 1;
            }
            let chunk = &group[start..end];
            match self.write_chunk(chunk) {
                Ok(outcomes) => {
                    let inserted = outcomes
                        .iter()
                        .flatten()
                        .filter(|o| **o == InsertOutcome::Inserted)
                        .count();
                    self.count
                        .fetch_add(inserted as u64, std::sync::atomic::Ordering::SeqCst);
                    results.extend(outcomes.into_iter().map(Ok));
                }
                Err(e) => results.extend(chunk.iter().map(|_| Err(e.clone()))),
            }
            start = end;
        }
        // Taken before the flush: every report counted is covered by it.
        let durable = self.count.load(std::sync::atomic::Ordering::SeqCst);
        // Durable before anyone is told: sled otherwise flushes on its own schedule. Also for a
        // group of duplicates only: nothing here says an earlier write was flushed.
        if let Err(e) = self.db.flush() {
            let e = backend(e);
            return results.into_iter().map(|_| Err(e.clone())).collect();
        }
        if results.iter().any(|r| {
            r.as_ref()
                .is_ok_and(|o| o.contains(&InsertOutcome::Inserted))
        }) {
            // The group is durable whatever happens here; a count that could not be recorded
            // only weakens the damage check at the next start.
            if let Err(e) = self.record_count(durable) {
                tracing::warn!("{e}");
            }
        }
        results
    }

    /// One transaction over `chunk`'s batches; the outcomes per batch.
    fn write_chunk(&self, chunk: &[Vec<Prepared>]) -> Result<Vec<Vec<InsertOutcome>>, StoreError> {
        let (cap, prefix_cap) = (self.cap, self.prefix_cap);
        let trees = (
            &self.reports,
            &self.by_time,
            &self.cells,
            &self.caps,
            &self.days,
            &self.prefix_caps,
            &self.dirty,
        );
        // What marks this chunk's (day, family)s dirty: unique across restarts, so a roll-up
        // pass that read an older mark never clears this one.
        let mark = self.db.generate_id().map_err(backend)?.to_be_bytes();
        // Insert-if-absent, the time index and the aggregate in one transaction: two writers
        // racing with the same report store and count it once, the index never lacks a stored
        // report, and the cells always agree with the raw reports (and the roll-ups know which
        // days they are behind on).
        // Held until the day in progress in memory has this chunk's day cells too.
        let mut live = self.live()?;
        let result = trees.transaction(|(reports, by_time, cells, caps, days, pcaps, dirty)| {
            let mut ids: HashSet<[u8; 48]> = HashSet::new();
            let mut tally = Tally::default();
            let mut outcomes = Vec::with_capacity(chunk.len());
            for batch in chunk {
                let mut batch_outcomes = Vec::with_capacity(batch.len());
                for p in batch {
                    if !ids.insert(p.id) || reports.get(p.id)?.is_some() {
                        batch_outcomes.push(InsertOutcome::Duplicate);
                        continue;
                    }
                    reports.insert(&p.id[..], p.value.as_slice())?;
                    by_time.insert(p.index.as_slice(), &[][..])?;
                    for o in &p.observations {
                        tally.count(o, (cap, prefix_cap), (cells, caps, days, pcaps))?;
                    }
                    batch_outcomes.push(InsertOutcome::Inserted);
                }
                outcomes.push(batch_outcomes);
            }
            tally.write((cells, caps, days, pcaps), dirty, &mark)?;
            Ok((outcomes, tally.daily))
        });
        let result = result.map(|(outcomes, daily)| {
            live.written(daily);
            outcomes
        });
        drop(live);
        result.map_err(|e| match e {
            TransactionError::Storage(e) => backend(e),
            TransactionError::Abort(what) => StoreError::Backend(format!(
                "a group of {} batches not stored: {what}",
                chunk.len()
            )),
        })
    }
}

impl ReportStore for SledStore {
    fn insert_batch(&self, batch: &[VerifiedReport]) -> Result<Vec<InsertOutcome>, StoreError> {
        // Compressed here, in the caller's thread: batches compress side by side, and the
        // group's writer only writes.
        let mut prepared = Vec::with_capacity(batch.len());
        for VerifiedReport {
            key,
            stored: report,
            observations,
            ..
        } in batch
        {
            let value = report
                .to_bytes()
                .and_then(|plain| {
                    if self.plain.load(std::sync::atomic::Ordering::SeqCst) {
                        Ok(plain)
                    } else {
                        self.dicts.compress(&key.agent, &plain)
                    }
                })
                .map_err(|e| StoreError::Backend(format!("encoding report: {e}")))?;
            prepared.push(Prepared {
                id: key.to_bytes(),
                index: time_key(report.received_at_ms, key),
                value,
                observations: observations.clone(),
            });
        }
        let outcomes = self
            .writer
            .submit(prepared, |group| self.write_group(group))
            .unwrap_or_else(|| {
                Err(StoreError::Backend(
                    "the store's writer failed while writing this batch; nothing acknowledged"
                        .into(),
                ))
            })?;
        if outcomes.contains(&InsertOutcome::Inserted) {
            // After the acknowledgement is safe: a failure here costs compression, not reports.
            if let Err(e) = self.train_if_due() {
                tracing::warn!("training the records' dictionary: {e}");
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
            let report = self.read_record(&k, &v)?;
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
            let report = self.read_record(report_key, &v)?;
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
        if rollup::answers(axes, filter, policy.min_agents, self.rollup_k()?) {
            return self.aggregate_rolled(axes, filter, policy);
        }
        // Whole days are read: k and the atoms of publication are decided per day.
        self.aggregate_days(axes, filter, policy)
    }

    fn roll_up(&self, policy: &Policy, now_ms: i64) -> Result<(), StoreError> {
        let t = std::time::Instant::now();
        let today = now_ms.div_euclid(24 * 3_600_000);
        let stats = SledStore::roll_up(self, policy.min_agents, today)?;
        if stats.days > 0 {
            tracing::info!(
                days = stats.days,
                months = stats.months,
                rebuilt = stats.rebuilt,
                seconds = t.elapsed().as_secs_f64(),
                "published roll-ups brought up to date"
            );
        }
        Ok(())
    }

    fn evidence(
        &self,
        from: i64,
        to: i64,
        _policy: &Policy,
        book: &mut EvidenceBook,
    ) -> Result<(), StoreError> {
        // The fine cells were capped at ingest under the store's own policy.
        for item in self.cells.range(ordered_i64(from)..ordered_i64(to)) {
            let (k, v) = item.map_err(backend)?;
            let key =
                CellKey::from_bytes(&k).ok_or_else(|| corrupt(&k, "bad aggregate cell key"))?;
            if key.arm == Role::Platform {
                let (_, state) = decode_cell(&k, &v)?;
                book.add_cell(&key, &state);
            }
        }
        Ok(())
    }

    fn len(&self) -> usize {
        usize::try_from(self.count.load(std::sync::atomic::Ordering::SeqCst)).unwrap_or(usize::MAX)
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

    #[test]
    fn a_store_open_elsewhere_is_said_to_be_in_use_not_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let first = SledStore::open(dir.path()).unwrap();
        let Err(e) = SledStore::open(dir.path()) else {
            panic!("opened twice");
        };
        let e = e.to_string();
        assert!(e.contains("open in another process"), "{e}");
        assert!(!e.contains("damaged") && !e.contains("backup"), "{e}");
        drop(first);
    }

    #[test]
    fn a_folder_of_other_files_is_refused_as_a_store_and_left_as_it_was() {
        let data = tempfile::tempdir().unwrap();
        let store = crate::store::config::sled_path(data.path());
        SledStore::open(&store).unwrap().close().unwrap();
        std::fs::write(data.path().join("agent.key"), b"keep me").unwrap();
        let before: std::collections::BTreeSet<_> = std::fs::read_dir(data.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let Err(e) = SledStore::open(data.path()) else {
            panic!("a data folder opened as a store");
        };
        let e = e.to_string();
        assert!(
            e.contains("is not a store") && e.contains("nothing was changed"),
            "{e}"
        );
        let after: std::collections::BTreeSet<_> = std::fs::read_dir(data.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(before, after, "nothing created or removed");
        assert_eq!(
            std::fs::read(data.path().join("agent.key")).unwrap(),
            b"keep me"
        );
        // The store itself, and an empty or missing folder, still open.
        SledStore::open(&store).unwrap();
        let empty = tempfile::tempdir().unwrap();
        SledStore::open(empty.path()).unwrap();
        SledStore::open(&empty.path().join("new")).unwrap();
    }

    #[test]
    fn a_country_scan_reads_that_country_and_all_of_it() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let countries: [[u8; 2]; 5] = [*b"AA", *b"RU", *b"RV", [0xFF, 0xFE], [0xFF, 0xFF]];
        // Day keys (every 24 hours) and hourly ones, each with a tail after the country.
        let mut all = Vec::new();
        for h in (-48..72).step_by(6) {
            for cc in countries {
                let mut k = vec![7u8];
                k.extend_from_slice(&ordered_i64(h));
                k.extend_from_slice(&cc);
                k.extend_from_slice(&[0, 1, 2]);
                tree.insert(&k, &[][..]).unwrap();
                all.push((h, cc, k));
            }
        }
        for cc in countries {
            for (range, step) in [
                ((-48, 72), 24),
                ((-47, 25), 24),
                ((-30, 31), 6),
                ((1, 1), 1),
            ] {
                let got: Vec<Vec<u8>> = scan(&tree, hour_ranges(&[7], range, step, Some(cc)))
                    .map(|i| i.unwrap().0.to_vec())
                    .collect();
                let want: Vec<Vec<u8>> = all
                    .iter()
                    .filter(|(h, c, _)| {
                        *c == cc && range.0 <= *h && *h < range.1 && h.rem_euclid(step) == 0
                    })
                    .map(|(_, _, k)| k.clone())
                    .collect();
                assert_eq!(got, want, "{cc:?} {range:?} step {step}");
            }
        }
        // Without a country, or with too many hours to step through: one range, every country.
        let every =
            |country| scan(&tree, hour_ranges(&[7], (i64::MIN, i64::MAX), 24, country)).count();
        assert_eq!(every(None), all.len());
        assert_eq!(every(Some(*b"RU")), all.len());
    }

    fn item(agent: u8, id: u8) -> VerifiedReport {
        VerifiedReport::parse(StoredReport {
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
            filing: Default::default(),
        })
        .unwrap()
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

    #[test]
    fn the_prefix_cap_is_applied_at_ingest_and_a_new_one_rebuilds_the_cells() {
        let tagged = |agent: u8, id: u8, tag: u8| {
            let mut stored = item(agent, id).stored;
            stored.filing.prefix_tag = Some(hex::encode([tag; 8]));
            VerifiedReport::parse(stored).unwrap()
        };
        // Six keys behind one prefix, two reports each; one agent on another network.
        let mut items = Vec::new();
        for id in 0..2 {
            for agent in 1..=6 {
                items.push(tagged(agent, 10 * id + agent, 0xaa));
            }
        }
        items.push(tagged(7, 99, 0xbb));
        let observations: Vec<Observation> =
            items.iter().flat_map(|v| v.observations.clone()).collect();
        let policy = |pcap: usize| Policy {
            min_agents: 1,
            max_per_prefix_per_day: pcap,
            ..Policy::default()
        };
        let counted = |s: &SledStore, pcap: usize| {
            let got = s
                .aggregate(&[Axis::Platform], &Filter::default(), &policy(pcap))
                .unwrap();
            let want = crate::domain::exact(
                &observations,
                &[Axis::Platform],
                &Filter::default(),
                &policy(pcap),
            );
            assert_eq!(
                (got[0].count, got[0].agents),
                (want[0].count, want[0].agents)
            );
            got[0].count
        };
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open_with_policy(dir.path(), &policy(4)).unwrap();
            s.insert_batch(&items).unwrap();
            assert_eq!(
                counted(&s, 4),
                4 + 1,
                "the prefix's first four, and the other"
            );
            assert!(!s.prefix_caps.is_empty());
        }
        // Reopened with the cap it was built with: nothing rebuilt, same cells.
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.prefix_cap(), 4);
        assert_eq!(counted(&s, 4), 5);
        drop(s);
        // A new prefix cap rebuilds the cells from the reports, in order of arrival.
        let s = SledStore::open_with_policy(dir.path(), &policy(100)).unwrap();
        assert_eq!(s.prefix_cap(), 100);
        assert_eq!(counted(&s, 100), 12 + 1);
        assert_eq!(
            s.meta.get(PREFIX_CAP_KEY).unwrap().as_deref(),
            Some(&100u32.to_be_bytes()[..])
        );
    }

    /// A store the previous release wrote ([`CELL_FORMAT`] 3: cells without the prefix set, no
    /// prefix counters, no prefix cap recorded) is rebuilt from its reports at open, and then
    /// answers as a store built by this one; nothing acknowledged is lost.
    #[test]
    fn a_format_3_store_is_rebuilt_with_prefixes_at_open() {
        let items: Vec<VerifiedReport> = (0..40u8)
            .map(|i| {
                let mut stored = item(i % 5 + 1, i).stored;
                stored.filing.prefix_tag = Some(hex::encode([i % 2; 8]));
                // Arrival order is what a rebuild replays (reports of one millisecond go in
                // key order).
                stored.received_at_ms = i64::from(i);
                VerifiedReport::parse(stored).unwrap()
            })
            .collect();
        let p = Policy {
            min_agents: 2,
            max_per_agent_per_day: 24,
            max_per_prefix_per_day: 3,
        };
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = SledStore::open_with_policy(fresh_dir.path(), &p).unwrap();
        fresh.insert_batch(&items).unwrap();
        let want = fresh
            .aggregate(&[Axis::Platform], &Filter::default(), &p)
            .unwrap();
        assert_eq!(want[0].count, 6, "two prefixes, three each");
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open_with_policy(dir.path(), &p).unwrap();
            s.insert_batch(&items).unwrap();
            // As format 3 wrote it: the same states without the prefix set and the flagged map
            // after it (postcard writes fields in order, those last), uncapped by prefix.
            let strip = |tree: &sled::Tree| {
                for e in tree.iter() {
                    let (k, v) = e.unwrap();
                    let mut state: CellState = postcard::from_bytes(&v).unwrap();
                    state.prefixes.clear();
                    state.flagged.clear();
                    let mut old = postcard::to_allocvec(&state).unwrap();
                    for _ in 0..2 {
                        assert_eq!(old.pop(), Some(0), "an empty set or map is one byte");
                    }
                    tree.insert(k, old).unwrap();
                }
            };
            strip(&s.cells);
            strip(&s.days);
            s.prefix_caps.clear().unwrap();
            s.meta.remove(PREFIX_CAP_KEY).unwrap();
            s.meta.insert(CELLS_KEY, &[3u8][..]).unwrap();
            s.db.flush().unwrap();
            let (k, v) = s.cells.iter().next().unwrap().unwrap();
            assert!(
                decode_cell(&k, &v).is_err(),
                "old cells do not read as new ones"
            );
        }
        let s = SledStore::open_with_cap(dir.path(), 24).unwrap();
        assert_eq!(s.len(), items.len());
        assert_eq!(s.prefix_cap(), 240, "a store without one gets the default");
        drop(s);
        let s = SledStore::open_with_policy(dir.path(), &p).unwrap();
        assert_eq!(
            s.meta.get(CELLS_KEY).unwrap().as_deref(),
            Some(&[CELL_FORMAT][..])
        );
        assert_eq!(
            s.aggregate(&[Axis::Platform], &Filter::default(), &p)
                .unwrap(),
            want
        );
    }

    /// A store the previous release wrote ([`CELL_FORMAT`] 4: 17-byte cell keys without the
    /// subdivision) is rebuilt from its reports at open, and its reports' subdivisions (kept in
    /// their records) then group and filter; reports stored without one are unknown.
    #[test]
    fn a_format_4_store_is_rebuilt_with_subdivisions_at_open() {
        let items: Vec<VerifiedReport> = (0..12u8)
            .map(|i| {
                let mut stored = item(i % 6 + 1, i).stored;
                stored.region = Region::new("RU", 12389);
                if i % 6 < 3 {
                    stored.region = stored.region.with_subdivision("MOW");
                }
                stored.received_at_ms = i64::from(i);
                VerifiedReport::parse(stored).unwrap()
            })
            .collect();
        let p = Policy {
            min_agents: 3,
            ..Policy::default()
        };
        let by_region = [Axis::Region];
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open_with_policy(dir.path(), &p).unwrap();
            s.insert_batch(&items).unwrap();
            // As format 4 wrote them: the same cells under keys without the subdivision.
            for tree in [&s.cells, &s.days] {
                let old: Vec<(Vec<u8>, Vec<u8>)> = tree
                    .iter()
                    .map(|e| {
                        let (k, v) = e.unwrap();
                        let mut k = k.to_vec();
                        k.drain(10..13);
                        (k, v.to_vec())
                    })
                    .collect();
                tree.clear().unwrap();
                for (k, v) in old {
                    tree.insert(k, v).unwrap();
                }
            }
            s.meta.insert(CELLS_KEY, &[4u8][..]).unwrap();
            s.db.flush().unwrap();
            let (k, v) = s.cells.iter().next().unwrap().unwrap();
            assert!(
                decode_cell(&k, &v).is_err(),
                "old keys do not read as new ones"
            );
        }
        let s = SledStore::open_with_policy(dir.path(), &p).unwrap();
        assert_eq!(
            s.meta.get(CELLS_KEY).unwrap().as_deref(),
            Some(&[CELL_FORMAT][..])
        );
        assert!(s
            .cells
            .iter()
            .all(|e| e.unwrap().0.len() == crate::domain::CELL_KEY_LEN));
        let cells = s.aggregate(&by_region, &Filter::default(), &p).unwrap();
        let got: Vec<(String, u64, u64)> = cells
            .iter()
            .map(|c| (c.region.clone().unwrap(), c.agents, c.count))
            .collect();
        assert_eq!(
            got,
            vec![("RU".into(), 3, 6), ("RU-MOW".into(), 3, 6)],
            "the unknown subdivision is published as the country alone"
        );
        let mow = Filter {
            region: Some("RU-MOW".into()),
            ..Filter::default()
        };
        let cells = s.aggregate(&[Axis::Country], &mow, &p).unwrap();
        assert_eq!((cells.len(), cells[0].count), (1, 6));
        // Without the region the country is whole, as before.
        let cells = s
            .aggregate(&[Axis::Country], &Filter::default(), &p)
            .unwrap();
        assert_eq!((cells[0].agents, cells[0].count), (6, 12));
    }

    /// Reports a collector stored before unknown fields were refused at ingest (#15 item 7)
    /// still read back, export and copy (`migrate`): only what comes in (ingest, `import`) is
    /// held to the strict schema, never what is already stored.
    #[test]
    fn reports_stored_with_unknown_fields_still_read_export_and_copy() {
        let mut body = serde_json::to_value(CallReport::example()).unwrap();
        body["hostname"] = "volunteer-laptop".into();
        body["streams"][0]["local_addr"] = "10.0.0.2".into();
        let key = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
        let signed = SignedReport::sign_body(serde_json::to_vec(&body).unwrap(), &key);
        assert!(matches!(
            signed.verify(),
            Err(callwatch_proto::VerifyError::UnknownField(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let old = VerifiedReport::parse(StoredReport {
                signed: signed.clone(),
                region: Region::unknown(),
                received_at_ms: 1,
                filing: Default::default(),
            })
            .unwrap();
            assert_eq!(
                s.insert_batch(&[old]).unwrap(),
                vec![InsertOutcome::Inserted]
            );
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.len(), 1);
        let mut exported = vec![];
        crate::export::page(&s, i64::MIN, 10, |r| {
            exported.push(r);
            true
        })
        .unwrap();
        assert_eq!(exported.len(), 1);
        assert_eq!(
            exported[0].to_signed().unwrap(),
            signed,
            "exported as stored"
        );
        let to = tempfile::tempdir().unwrap();
        let copy = SledStore::open(to.path()).unwrap();
        let done = crate::store::copy::copy_reports(&s, &copy, 8, |_| true).unwrap();
        assert_eq!((done.read, done.inserted), (1, 1));
    }
}

/// A report as the store receives it, from agent key `[agent; 32]` (unsigned: the store does
/// not check signatures).
#[cfg(test)]
fn stored(
    agent: u8,
    r: &CallReport,
    (country, asn): (&str, u32),
    received_at_ms: i64,
) -> VerifiedReport {
    VerifiedReport::parse(StoredReport {
        signed: callwatch_proto::SignedReport {
            body: serde_json::to_vec(r).unwrap(),
            key: vec![agent; 32],
            signature: vec![0; 64],
        },
        region: crate::geo::Region {
            country: country.into(),
            asn,
            subdivision: String::new(),
        },
        received_at_ms,
        filing: Default::default(),
    })
    .unwrap()
}

#[cfg(test)]
mod cap_tests {
    use super::*;
    use callwatch_proto::ReportId;
    use std::sync::Arc;

    fn item(agent: u8, id: u8, rtt: f64) -> VerifiedReport {
        let mut r = CallReport::example();
        r.id = ReportId([id; 16]);
        if let Some(s) = r.streams[0].rtt_ms.as_mut() {
            s.median = rtt;
        }
        stored(agent, &r, ("RU", 12389), i64::from(id))
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

    /// A report from `agent` with `id`, arriving at `at` ms; on the shared network prefix
    /// (one prefix tag for several agents) or on the agent's own.
    fn arrival(agent: u8, id: u16, at: i64, shared_prefix: bool) -> VerifiedReport {
        let mut r = CallReport::example();
        r.id = ReportId([
            id as u8,
            (id >> 8) as u8,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ]);
        let mut v = stored(agent, &r, ("RU", 12389), at);
        if shared_prefix {
            v.stored.filing.prefix_tag = Some("0102030405060708".into());
            v = VerifiedReport::parse(v.stored).unwrap();
        }
        v
    }

    /// Every entry of `tree`, as bytes.
    fn snapshot(tree: &sled::Tree) -> Vec<(Vec<u8>, Vec<u8>)> {
        tree.iter()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    /// Submits `batches` so that they queue behind a held writer in this order, then lets
    /// them be written: one group. Their outcomes, in order.
    fn one_group(s: &Arc<SledStore>, batches: Vec<Vec<VerifiedReport>>) -> Vec<Vec<InsertOutcome>> {
        let groups = s.writer.groups();
        let hold = s.writer.hold();
        let mut threads = Vec::new();
        for (n, batch) in batches.into_iter().enumerate() {
            let s2 = s.clone();
            threads.push(std::thread::spawn(move || s2.insert_batch(&batch).unwrap()));
            while s.writer.queued() < n + 1 {
                std::thread::yield_now();
            }
        }
        drop(hold);
        let outcomes = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(
            s.writer.groups(),
            groups + 1,
            "the batches were written as one group"
        );
        outcomes
    }

    #[test]
    fn a_group_writes_the_cells_and_caps_a_rebuild_from_the_raw_reports_computes() {
        use InsertOutcome::{Duplicate as D, Inserted as I};
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy {
            max_per_agent_per_day: 3,
            max_per_prefix_per_day: 5,
            ..Policy::default()
        };
        let s = Arc::new(SledStore::open_with_policy(dir.path(), &policy).unwrap());
        // Arrival order is submission order: the caps count in it.
        let mut at = 0;
        let mut next = |agent, id, shared| {
            at += 1;
            arrival(agent, id, at, shared)
        };
        let batches = vec![
            // Agent 1: five reports, two over its cap of 3; id 1 again in the same batch.
            [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 1)]
                .map(|(agent, id)| next(agent, id, true))
                .to_vec(),
            // Agent 2 on the same prefix: three more, the prefix cap of 5 reached at its second;
            // agent 1's id 3 again, from the batch before.
            [(2, 1), (2, 2), (2, 3), (1, 3)]
                .map(|(agent, id)| next(agent, id, true))
                .to_vec(),
            // Agent 3 on the same prefix: all past the prefix cap.
            (1..=4).map(|id| next(3, id, true)).collect::<Vec<_>>(),
            // Agent 5 on its own prefix.
            (1..=2).map(|id| next(5, id, false)).collect(),
        ];
        let outcomes = one_group(&s, batches);
        assert_eq!(
            outcomes,
            vec![
                vec![I, I, I, I, I, D],
                vec![I, I, I, D],
                vec![I; 4],
                vec![I; 2]
            ]
        );
        assert_eq!(s.len(), 14);
        // Counted as the caps say: agent 1's three, agent 2's two (prefix cap 5), agent 5's two.
        assert_eq!(median(&s).0, 7);
        let written: Vec<_> = [&s.cells, &s.caps, &s.prefix_caps, &s.days]
            .into_iter()
            .map(snapshot)
            .collect();
        // The rebuild recomputes all four from the stored reports in arrival order, with code
        // of its own (one report at a time, no group).
        s.rebuild_cells().unwrap();
        let rebuilt: Vec<_> = [&s.cells, &s.caps, &s.prefix_caps, &s.days]
            .into_iter()
            .map(snapshot)
            .collect();
        assert_eq!(written, rebuilt);
    }

    #[test]
    fn a_group_larger_than_one_transaction_finds_duplicates_across_its_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy {
            max_per_agent_per_day: 10_000,
            max_per_prefix_per_day: 10_000,
            ..Policy::default()
        };
        let s = Arc::new(SledStore::open_with_policy(dir.path(), &policy).unwrap());
        let first: Vec<_> = (0..700)
            .map(|id| arrival(1, id, i64::from(id), false))
            .collect();
        // The second batch repeats the first's last 10 reports: two transactions (700 + 700 is
        // over TX_REPORTS), the second finds them stored by the first.
        let second: Vec<_> = (690..1390)
            .map(|id| arrival(1, id, i64::from(id) + 1_000, false))
            .collect();
        let outcomes = one_group(&s, vec![first, second]);
        assert!(outcomes[0].iter().all(|o| *o == InsertOutcome::Inserted));
        let dups = outcomes[1]
            .iter()
            .filter(|o| **o == InsertOutcome::Duplicate)
            .count();
        assert_eq!((dups, outcomes[1].len()), (10, 700));
        assert_eq!(s.len(), 1390);
        drop(outcomes);
        let s = Arc::try_unwrap(s).ok().unwrap();
        drop(s);
        let s = SledStore::open_with_policy(dir.path(), &policy).unwrap();
        assert_eq!(s.len(), 1390, "all durable and counted once");
        assert_eq!(median(&s).0, 1390);
    }

    #[test]
    fn concurrent_batches_are_all_stored_once() {
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
            let groups = s.writer.groups();
            assert!(
                (1..=160).contains(&groups),
                "{groups} groups for 160 batches"
            );
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

#[cfg(test)]
pub(super) mod rollup_tests {
    use super::*;
    use callwatch_proto::{Platform, ReportId, Role};
    use chrono::{TimeZone, Utc};

    /// Report `i`: one of 5 agents, 3 networks, 2 platforms, at hour `i * 7 % 150` after a
    /// midnight, so 150 hours (6¼ days) are covered unevenly.
    pub(crate) fn item(i: u32) -> VerifiedReport {
        let agent = (i % 5) as u8 + 1;
        let mut r = CallReport::example();
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        r.id = ReportId(id);
        r.platform = [Platform::Whatsapp, Platform::Telegram][(i % 2) as usize];
        let midnight = Utc.with_ymd_and_hms(2025, 8, 10, 0, 0, 0).unwrap();
        r.started_at = midnight
            + chrono::Duration::hours(i64::from(i * 7 % 150))
            + chrono::Duration::minutes(i64::from(i % 60));
        for s in &mut r.streams {
            if let Some(rtt) = s.rtt_ms.as_mut() {
                rtt.median = 20.0 + f64::from(i % 97);
            }
            s.loss_up = Some(f64::from(i % 13) / 100.0);
        }
        let region = [("RU", 12389), ("RU", 8359), ("KZ", 9198)][(i % 3) as usize];
        stored(agent, &r, region, i64::from(i))
    }

    fn queries() -> Vec<(Vec<Axis>, Filter)> {
        let hour = |h: i64| {
            Some(
                Utc.with_ymd_and_hms(2025, 8, 10, 0, 0, 0)
                    .unwrap()
                    .timestamp_millis()
                    + h * 3_600_000,
            )
        };
        let mut out = Vec::new();
        for axes in [
            vec![Axis::Country, Axis::Platform],
            vec![Axis::Day, Axis::Asn],
            vec![Axis::Day, Axis::Arm],
            vec![Axis::Hour],
            vec![],
        ] {
            for (since, until) in [
                (None, None),
                (hour(0), hour(48)),
                (hour(5), hour(100)),
                (hour(30), hour(40)),
                (hour(-30), hour(200)),
                (hour(23), None),
                (None, hour(73)),
            ] {
                out.push((
                    axes.clone(),
                    Filter {
                        since_ms: since,
                        until_ms: until,
                        ..Filter::default()
                    },
                ));
            }
        }
        out.push((
            vec![Axis::Day],
            Filter {
                country: Some("RU".into()),
                platform: Some(Platform::Telegram),
                arm: Some(Role::Control),
                since_ms: hour(20),
                ..Filter::default()
            },
        ));
        out
    }

    fn policy() -> Policy {
        Policy {
            min_agents: 2,
            max_per_agent_per_day: 3,
            ..Policy::default()
        }
    }

    /// Randomized: reports on a few shared prefix tags (and some without one), both caps small,
    /// k 1 to 3: every query's cells from the store (its own ingest-time caps, roll-up and
    /// fine cells) equal the brute-force reference's from the raw observations, in counts,
    /// agents and verdicts.
    #[test]
    fn cells_equal_the_reference_with_shared_prefixes_and_both_caps() {
        use rand::{Rng, SeedableRng};
        for seed in 0..3u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let p = Policy {
                min_agents: rng.gen_range(1..4),
                max_per_agent_per_day: rng.gen_range(1..4),
                max_per_prefix_per_day: rng.gen_range(1..6),
            };
            let items: Vec<VerifiedReport> = (0..300)
                .map(|i| {
                    let mut stored = item(i).stored;
                    let tag: u8 = rng.gen_range(0..5);
                    stored.filing.prefix_tag = (tag > 0).then(|| hex::encode([tag; 8]));
                    VerifiedReport::parse(stored).unwrap()
                })
                .collect();
            let dir = tempfile::tempdir().unwrap();
            let s = SledStore::open_with_policy(dir.path(), &p).unwrap();
            s.insert_batch(&items).unwrap();
            let observations: Vec<Observation> =
                items.iter().flat_map(|v| v.observations.clone()).collect();
            let mut published = 0;
            for (axes, filter) in queries() {
                let got = s.aggregate(&axes, &filter, &p).unwrap();
                let want = crate::domain::exact(&observations, &axes, &filter, &p);
                let key = |c: &Cell| {
                    (
                        c.day.clone(),
                        c.hour.clone(),
                        c.country.clone(),
                        c.asn,
                        c.arm.clone(),
                        c.count,
                        c.agents,
                        c.verdicts,
                    )
                };
                assert_eq!(
                    got.iter().map(key).collect::<Vec<_>>(),
                    want.iter().map(key).collect::<Vec<_>>(),
                    "seed {seed} {p:?} {axes:?} {filter:?}"
                );
                published += got.len();
            }
            assert!(published > 0, "seed {seed}: something is published");
        }
    }

    #[test]
    fn plans_read_whole_days_from_the_roll_up_and_edges_from_hours() {
        let f = |since: Option<i64>, until: Option<i64>| Filter {
            since_ms: since.map(|h| h * 3_600_000),
            until_ms: until.map(|h| h * 3_600_000),
            ..Filter::default()
        };
        let plan = Plan::of(&[Axis::Country], &f(Some(5), Some(100)));
        assert_eq!(plan.fine, [Some((5, 24)), Some((96, 100))]);
        assert_eq!(plan.days, Some((24, 96)));
        let plan = Plan::of(&[Axis::Country], &f(Some(24), Some(48)));
        assert_eq!(plan.fine, [None, None]);
        assert_eq!(plan.days, Some((24, 48)));
        let plan = Plan::of(&[Axis::Country], &f(None, None));
        assert_eq!(plan.days, Some((i64::MIN, i64::MAX)));
        // Less than a whole day, or an hour axis: hours only.
        let plan = Plan::of(&[Axis::Country], &f(Some(30), Some(40)));
        assert_eq!((plan.fine, plan.days), ([Some((30, 40)), None], None));
        let plan = Plan::of(&[Axis::Hour], &f(Some(0), Some(48)));
        assert_eq!((plan.fine, plan.days), ([Some((0, 48)), None], None));
        // Negative hours (before 1970) split on UTC days too.
        let plan = Plan::of(&[], &f(Some(-50), Some(-1)));
        assert_eq!(plan.fine, [Some((-50, -48)), Some((-24, -1))]);
        assert_eq!(plan.days, Some((-48, -24)));
        let plan = Plan::of(&[], &f(Some(-30), Some(-1)));
        assert_eq!((plan.fine, plan.days), ([Some((-30, -1)), None], None));
    }

    #[test]
    fn the_day_roll_up_answers_exactly_as_the_hourly_cells_do() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open_with_cap(dir.path(), 3).unwrap();
        let all: Vec<_> = (0..600).map(item).collect();
        for batch in all.chunks(37) {
            s.insert_batch(batch).unwrap();
        }
        assert!(
            s.days.len() * 10 < s.cells.len() * 3,
            "the roll-up is coarser"
        );
        let mut nonempty = 0;
        for (axes, filter) in queries() {
            let fine = s.aggregate_fine(&axes, &filter, &policy()).unwrap();
            let rolled = s.aggregate(&axes, &filter, &policy()).unwrap();
            assert_eq!(rolled, fine, "axes {axes:?}, filter {filter:?}");
            nonempty += usize::from(!fine.is_empty());
        }
        assert!(nonempty >= 25, "the queries cover data: {nonempty} of 36");

        // A store from before the roll-up (no day cells, no mark) gets them at open; a new cap
        // rebuilds them with the fine cells.
        s.days.clear().unwrap();
        s.meta.remove(DAYS_KEY).unwrap();
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        assert!(!s.days.is_empty());
        for (axes, filter) in queries() {
            let fine = s.aggregate_fine(&axes, &filter, &policy()).unwrap();
            assert_eq!(s.aggregate(&axes, &filter, &policy()).unwrap(), fine);
        }
        drop(s);
        let s = SledStore::open_with_cap(dir.path(), 1).unwrap();
        let p = Policy {
            max_per_agent_per_day: 1,
            ..policy()
        };
        for (axes, filter) in queries() {
            let fine = s.aggregate_fine(&axes, &filter, &p).unwrap();
            assert_eq!(s.aggregate(&axes, &filter, &p).unwrap(), fine);
        }
    }
}

#[cfg(test)]
mod watchdog_tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    #[test]
    fn a_reader_that_stops_making_progress_is_given_up_on() {
        // Ten times the limit (2 s) before the first progress: moving at 0.5 s (2.5 limits, so
        // a watcher without that allowance gives up first, "after 0 entries") is in time, with
        // 1.5 s to spare for a loaded machine's scheduling.
        let stall = Duration::from_millis(200);
        let start = std::time::Instant::now();
        let r: Result<(), String> = watched(stall, |seen| {
            std::thread::sleep(Duration::from_millis(500));
            seen.fetch_add(5, Ordering::Relaxed);
            // Stuck for good, as sled is on some damaged pages.
            loop {
                std::thread::park();
            }
        });
        let e = r.unwrap_err();
        assert!(
            e.contains("no progress") && e.contains("after 5 entries"),
            "{e}"
        );
        // Never before the stuck reader had been still for the limit (load only delays this).
        assert!(start.elapsed() >= Duration::from_millis(500) + stall);
    }

    #[test]
    fn a_slow_reader_that_keeps_progressing_is_waited_for() {
        // 2 s of steady progress (50 ms steps) against a 2 s stall limit, then a 0.6 s pause
        // (more than two of the watcher's 250 ms looks without progress), then done. A watcher
        // that timed the whole read instead of the stillness since the last progress gives up
        // in that pause; one that works waits, with 1.4 s to spare before the pause would be a
        // stall, and a step would have to be 40 times late to look like one.
        let r = watched(Duration::from_secs(2), |seen| {
            for _ in 0..40 {
                std::thread::sleep(Duration::from_millis(50));
                seen.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(600));
            Ok(42)
        });
        assert_eq!(r, Ok(42));
        let p: Result<(), String> = watched(Duration::from_secs(5), |_| panic!("boom"));
        assert!(p.unwrap_err().contains("boom"));
    }

    #[test]
    fn a_log_overwritten_in_the_middle_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let items: Vec<_> = (0..200).map(rollup_tests::item).collect();
            s.insert_batch(&items).unwrap();
        }
        let db = dir.path().join("db");
        let len = std::fs::metadata(&db).unwrap().len();
        let mut errors = 0;
        for tenth in 1..10 {
            let copy = tempfile::tempdir().unwrap();
            for f in ["conf", "db", COUNT_FILE] {
                std::fs::copy(dir.path().join(f), copy.path().join(f)).unwrap();
            }
            {
                use std::io::{Seek, SeekFrom, Write};
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(copy.path().join("db"))
                    .unwrap();
                f.seek(SeekFrom::Start(len * tenth / 10)).unwrap();
                f.write_all(&[0xA5; 8192]).unwrap();
            }
            // Opened apart and bounded: a hang fails the test instead of stalling it.
            let (tx, rx) = std::sync::mpsc::channel();
            let path = copy.path().to_path_buf();
            std::thread::spawn(move || {
                let _ = tx.send(SledStore::open(&path).map(|s| s.len()));
            });
            let opened = rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("at {tenth}/10 opening hung"));
            match opened {
                // Damage sled can prove harmless: then nothing may be missing.
                Ok(n) => assert_eq!(n, 200, "at {tenth}/10"),
                Err(e) => {
                    assert!(e.to_string().contains("damaged"), "{e}");
                    errors += 1;
                }
            }
        }
        assert!(errors > 0, "some overwrite hits live data");
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;
    use crate::domain::sketch::Sketch;
    use crate::domain::{Axis, CELL_KEY_LEN, FIGURES};
    use callwatch_proto::report::{ArmComparison, StreamKind, VerdictRule};
    use callwatch_proto::{Platform, ReportId, Role, Verdict, VerdictDetail};
    use chrono::{TimeZone, Utc};
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeSet;

    /// `VerdictCounts` as stores before [`CELL_FORMAT`] 2 encoded it (commit 512b813).
    #[derive(Default, Serialize, Deserialize)]
    struct LegacyVerdicts {
        none: u64,
        inconclusive: u64,
        differentiated: u64,
    }

    /// `CellState` as stores before [`CELL_FORMAT`] 2 encoded it: 7 figures (no round-trip
    /// loss), 3 verdict counts.
    #[derive(Default, Serialize, Deserialize)]
    struct LegacyCell {
        count: u64,
        agents: BTreeSet<[u8; 8]>,
        verdicts: LegacyVerdicts,
        figures: [Sketch; 7],
    }

    impl LegacyCell {
        fn add(&mut self, o: &Observation) {
            self.count += 1;
            self.agents.insert(o.agent[..8].try_into().unwrap());
            match o.verdict {
                Some(Verdict::None) => self.verdicts.none += 1,
                Some(Verdict::Inconclusive) => self.verdicts.inconclusive += 1,
                Some(Verdict::Differentiated) => self.verdicts.differentiated += 1,
                None => {}
            }
            // The old figures: FIGURES without `loss` (index 3).
            let old = [0, 1, 2, 4, 5, 6, 7];
            for (sketch, i) in self.figures.iter_mut().zip(old) {
                if let Some(v) = o.figures[i] {
                    sketch.add(v);
                }
            }
        }
    }

    fn comparison() -> ArmComparison {
        ArmComparison {
            platform_median: 0.0,
            control_median: 0.0,
            p_value: 1.0,
            effect: 0.0,
            significant: false,
        }
    }

    /// Report `i`: a mix of what a store holds after this change — voice and video tests,
    /// blocked calls, tests without a reference — and report bodies from before it (no
    /// `stream_kind`, no `loss`, no rule).
    fn item(i: u32) -> VerifiedReport {
        let agent = (i % 4) as u8 + 1;
        let mut r = CallReport::example();
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        r.id = ReportId(id);
        r.platform = Platform::Telegram;
        r.started_at = Utc.with_ymd_and_hms(2025, 8, 10, 0, 0, 0).unwrap()
            + chrono::Duration::hours(i64::from(i / 3 % 50));
        let mut control = r.streams[0].clone();
        control.role = Role::Control;
        r.streams.push(control);
        for s in &mut r.streams {
            if let Some(rtt) = s.rtt_ms.as_mut() {
                rtt.median = 20.0 + f64::from(i % 31);
            }
            s.mos = Some(4.4 - f64::from(i % 7) / 10.0);
        }
        let (verdict, rule) = match i % 6 {
            0 => (Verdict::Differentiated, Some(VerdictRule::Blocked)),
            1 => (Verdict::Inconclusive, Some(VerdictRule::NoReference)),
            2 => (Verdict::Differentiated, Some(VerdictRule::Loss)),
            _ => (Verdict::None, Some(VerdictRule::NotWorse)),
        };
        r.verdict = Some(verdict);
        r.verdict_detail = Some(VerdictDetail {
            method: "test".into(),
            window_ms: 1000,
            windows: 10,
            loss: comparison(),
            delay: comparison(),
            jitter: comparison(),
            reason: "test".into(),
            rule,
            onset: None,
            relay: None,
        });
        if i.is_multiple_of(5) {
            r.stream_kind = StreamKind::Video;
            for s in &mut r.streams {
                s.mos = Some(1.5);
            }
        }
        let mut body = serde_json::to_value(&r).unwrap();
        if i % 5 == 1 {
            // Made before the stream kind, the round-trip loss and the rule existed.
            let m = body.as_object_mut().unwrap();
            m.remove("stream_kind");
            m.remove("verdict_detail");
            for s in m["streams"].as_array_mut().unwrap() {
                s.as_object_mut().unwrap().remove("loss");
            }
        }
        let body = serde_json::to_vec(&body).unwrap();
        assert!(serde_json::from_slice::<CallReport>(&body)
            .unwrap()
            .validate()
            .is_ok());
        let mut stored = stored(agent, &r, ("RU", 12389), i64::from(i)).stored;
        stored.signed.body = body;
        VerifiedReport::parse(stored).unwrap()
    }

    /// Rewrites a store's aggregate trees as a collector before [`CELL_FORMAT`] 2 wrote them,
    /// from its reports: 16-byte cell keys, 48-byte cap keys, [`LegacyCell`] states, and no
    /// format mark.
    fn make_legacy(s: &SledStore) {
        let mut cells: BTreeMap<Vec<u8>, LegacyCell> = BTreeMap::new();
        let mut days: BTreeMap<Vec<u8>, LegacyCell> = BTreeMap::new();
        let mut caps: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
        s.for_each_since(i64::MIN, &mut |stored| {
            let body: CallReport = serde_json::from_slice(&stored.signed.body).unwrap();
            for o in Observation::from_report(&stored, &body) {
                let key = o.cell_key();
                let fine = key.to_bytes();
                let mut cap = ordered_i64(key.day()).to_vec();
                cap.extend_from_slice(&fine[8..16]);
                cap.extend_from_slice(&o.agent);
                let n = caps.entry(cap).or_default();
                *n += 1;
                if *n <= s.cap {
                    cells.entry(fine[..16].to_vec()).or_default().add(&o);
                    days.entry(key.day_cell().to_bytes()[..16].to_vec())
                        .or_default()
                        .add(&o);
                }
            }
            Ok(true)
        })
        .unwrap();
        s.cells.clear().unwrap();
        s.days.clear().unwrap();
        s.caps.clear().unwrap();
        for (tree, map) in [(&s.cells, &cells), (&s.days, &days)] {
            for (k, v) in map {
                tree.insert(&k[..], postcard::to_allocvec(v).unwrap())
                    .unwrap();
            }
        }
        for (k, n) in &caps {
            s.caps.insert(&k[..], &n.to_be_bytes()[..]).unwrap();
        }
        s.meta.remove(CELLS_KEY).unwrap();
        s.db.flush().unwrap();
    }

    fn queries() -> Vec<(Vec<Axis>, Filter)> {
        let mut out = Vec::new();
        for axes in [
            vec![Axis::Country],
            vec![Axis::Day, Axis::Arm],
            vec![Axis::Hour, Axis::Kind],
            vec![Axis::Kind, Axis::Arm],
            vec![],
        ] {
            out.push((axes.clone(), Filter::default()));
            out.push((
                axes,
                Filter {
                    kind: Some(StreamKind::Video),
                    ..Filter::default()
                },
            ));
        }
        out
    }

    fn policy() -> Policy {
        Policy {
            min_agents: 1,
            max_per_agent_per_day: 3,
            ..Policy::default()
        }
    }

    #[test]
    fn a_store_from_before_the_stream_kind_opens_and_answers_like_a_new_one() {
        let items: Vec<_> = (0..240).map(item).collect();
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = SledStore::open_with_cap(fresh_dir.path(), 3).unwrap();
        fresh.insert_batch(&items).unwrap();

        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open_with_cap(dir.path(), 3).unwrap();
            s.insert_batch(&items).unwrap();
            make_legacy(&s);
            // What is on disk now is the old layout: neither its keys nor its states read as
            // the current ones.
            let (k, v) = s.cells.iter().next().unwrap().unwrap();
            assert_eq!(k.len(), 16);
            assert!(CellKey::from_bytes(&k).is_none());
            assert!(decode_cell(&k, &v).is_err());
            assert!(postcard::from_bytes::<LegacyCell>(&v).is_ok());
            assert!(s.caps.iter().all(|e| e.unwrap().0.len() == 48));
            assert_eq!(
                s.meta.get(CAP_KEY).unwrap().as_deref(),
                Some(&3u32.to_be_bytes()[..])
            );
            assert!(s.meta.get(DAYS_KEY).unwrap().is_some());
        }
        // Opened by this build: the cells are rebuilt from the reports, in the new layout.
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.cap(), 3, "the cap it was built with is kept");
        assert_eq!(s.len(), items.len());
        assert_eq!(
            s.meta.get(CELLS_KEY).unwrap().as_deref(),
            Some(&[CELL_FORMAT][..])
        );
        assert!(s.cells.iter().all(|e| e.unwrap().0.len() == CELL_KEY_LEN));
        assert!(s.days.iter().all(|e| e.unwrap().0.len() == CELL_KEY_LEN));
        assert!(s.caps.iter().all(|e| e.unwrap().0.len() == CAP_KEY_LEN));
        let mut blocked = 0;
        for (axes, filter) in queries() {
            let want = fresh.aggregate(&axes, &filter, &policy()).unwrap();
            assert!(!want.is_empty(), "{axes:?} {filter:?}");
            assert_eq!(s.aggregate(&axes, &filter, &policy()).unwrap(), want);
            assert_eq!(s.aggregate_fine(&axes, &filter, &policy()).unwrap(), want);
            blocked += want.iter().map(|c| c.verdicts.blocked).sum::<u64>();
        }
        assert!(blocked > 0, "blocked calls in old reports are counted too");
        // Old bodies (no stream_kind) are voice; the video tests are apart.
        let by_kind = s
            .aggregate(&[Axis::Kind], &Filter::default(), &policy())
            .unwrap();
        assert_eq!(by_kind.len(), 2);
        assert_eq!(by_kind[0].kind.as_deref(), Some("voice"));
        assert_eq!(by_kind[1].kind.as_deref(), Some("video"));
        assert_eq!(by_kind[1].mos.unwrap().p90, 1.5);
        assert!(
            by_kind[0].mos.unwrap().p10 > 3.5,
            "no video MOS among voice"
        );
        assert!(by_kind[0].loss.is_some() && FIGURES[3] == "loss");
        drop(s);
        // Reopened: nothing to rebuild, same answers.
        let s = SledStore::open(dir.path()).unwrap();
        for (axes, filter) in queries() {
            let want = fresh.aggregate(&axes, &filter, &policy()).unwrap();
            assert_eq!(s.aggregate(&axes, &filter, &policy()).unwrap(), want);
        }
    }
}

/// Records compressed with a dictionary trained on the store's reports, stores of earlier
/// releases (plain records) read side by side, and compaction at a clean close.
#[cfg(test)]
mod compression_tests {
    use super::*;
    use callwatch_proto::SignedReport;

    /// Report `i` of the roll-up tests, signed with a key and signature as random as real
    /// ones (the store keeps them exactly; they compress not at all).
    fn item(i: u32) -> VerifiedReport {
        let mut stored = super::rollup_tests::item(i).stored;
        use crate::store::compress::tests::noise;
        stored.signed = SignedReport {
            key: noise(i % 7 + 1, 32),
            signature: noise(i + 100, 64),
            body: stored.signed.body,
        };
        VerifiedReport::parse(stored).unwrap()
    }

    /// Every stored report, by key order and by arrival, as read back.
    fn read_all(s: &SledStore) -> (Vec<StoredReport>, Vec<StoredReport>) {
        let mut by_key = vec![];
        s.for_each(&mut |r| {
            by_key.push(r);
            Ok(())
        })
        .unwrap();
        let mut by_time = vec![];
        s.for_each_since(i64::MIN, &mut |r| {
            by_time.push(r);
            Ok(true)
        })
        .unwrap();
        (by_key, by_time)
    }

    /// The reports read back are the ones stored, to the byte: the signed body, key and
    /// signature (what a researcher verifies), region, arrival and filing.
    fn assert_exact(s: &SledStore, items: &[VerifiedReport]) {
        let (by_key, by_time) = read_all(s);
        assert_eq!(by_time.len(), items.len());
        let mut want: Vec<&StoredReport> = items.iter().map(|v| &v.stored).collect();
        want.sort_by_key(|r| r.received_at_ms);
        for (got, want) in by_time.iter().zip(&want) {
            assert_eq!(got.signed.body, want.signed.body);
            assert_eq!(got.signed.key, want.signed.key);
            assert_eq!(got.signed.signature, want.signed.signature);
            assert_eq!(got, *want);
        }
        let mut by_key_sorted = by_key.clone();
        by_key_sorted.sort_by_key(|r| r.received_at_ms);
        assert_eq!(by_key_sorted, by_time);
    }

    fn policy() -> Policy {
        Policy {
            min_agents: 1,
            ..Policy::default()
        }
    }

    fn cells(s: &SledStore) -> Vec<Cell> {
        s.aggregate(&[Axis::Platform, Axis::Day], &Filter::default(), &policy())
            .unwrap()
    }

    #[test]
    fn signed_bytes_come_back_exactly_before_and_after_the_dictionary_and_compaction() {
        let n = TRAIN_AFTER as u32 + 300;
        let items: Vec<VerifiedReport> = (0..n).map(item).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reports.sled");
        let want_cells;
        {
            let s = SledStore::open(&path).unwrap();
            for chunk in items.chunks(100) {
                s.insert_batch(chunk).unwrap();
            }
            assert_eq!(s.dicts.current(), 1, "a dictionary was trained");
            let mut with = 0;
            for e in s.reports.iter() {
                let (_, v) = e.unwrap();
                assert!(
                    compress::dictionary_of(&v).is_some(),
                    "every record compressed"
                );
                with += usize::from(compress::dictionary_of(&v) == Some(1));
            }
            assert!(
                with >= 300 && with < items.len(),
                "{with} with the dictionary"
            );
            assert_exact(&s, &items);
            want_cells = cells(&s);
            s.close().unwrap();
        }
        let (compacting, old) = compaction_paths(&path);
        assert!(!compacting.exists() && !old.exists());
        let s = SledStore::open(&path).unwrap();
        assert_eq!(s.len(), items.len());
        for e in s.reports.iter() {
            let (_, v) = e.unwrap();
            assert_eq!(
                compress::dictionary_of(&v),
                Some(1),
                "compaction compresses every record with the dictionary"
            );
        }
        assert_exact(&s, &items);
        assert_eq!(cells(&s), want_cells);
        // Still deduplicates, and takes more.
        assert_eq!(
            s.insert_batch(&[item(0), item(n)]).unwrap(),
            vec![InsertOutcome::Duplicate, InsertOutcome::Inserted]
        );
    }

    /// A store as earlier releases wrote it (records uncompressed, no dictionary) opens,
    /// reads exactly, trains its dictionary at open, stores new reports compressed beside the
    /// old ones, answers as a store built by this release, and is compressed whole by a
    /// compaction.
    #[test]
    fn a_store_with_plain_records_reads_beside_compressed_ones() {
        let old_items: Vec<VerifiedReport> = (0..TRAIN_AFTER as u32 + 50).map(item).collect();
        let new_items: Vec<VerifiedReport> = (TRAIN_AFTER as u32 + 50..TRAIN_AFTER as u32 + 150)
            .map(item)
            .collect();
        let all: Vec<VerifiedReport> = old_items.iter().chain(&new_items).cloned().collect();
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.write_plain_records(true);
            for chunk in old_items.chunks(200) {
                s.insert_batch(chunk).unwrap();
            }
            // The records are what earlier releases wrote: StoredReport::to_bytes.
            for v in &old_items {
                let got = s.reports.get(v.key.to_bytes()).unwrap().unwrap();
                assert_eq!(&got[..], &v.stored.to_bytes().unwrap()[..]);
            }
            assert_eq!(s.dicts.current(), 0);
            assert!(s.meta.scan_prefix(DICT_KEY).next().is_none());
        }
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = SledStore::open(fresh_dir.path()).unwrap();
        fresh.insert_batch(&all).unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.dicts.current(), 1, "trained at open");
        assert_exact(&s, &old_items);
        s.insert_batch(&new_items).unwrap();
        let plain = s
            .reports
            .iter()
            .filter(|e| compress::dictionary_of(&e.as_ref().unwrap().1).is_none())
            .count();
        assert_eq!(plain, old_items.len(), "old records stay as they were");
        assert_exact(&s, &all);
        assert_eq!(cells(&s), cells(&fresh));
        s.close().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        assert!(s
            .reports
            .iter()
            .all(|e| compress::dictionary_of(&e.unwrap().1) == Some(1)));
        assert_exact(&s, &all);
        assert_eq!(cells(&s), cells(&fresh));
    }

    /// A crash during a compaction's swap leaves the store as it was or as compacted, never
    /// without it: the next open finishes or undoes the swap.
    #[test]
    fn an_interrupted_compaction_is_finished_or_undone_at_open() {
        let items: Vec<VerifiedReport> = (0..40).map(item).collect();
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("reports.sled");
        {
            let s = SledStore::open(&path).unwrap();
            s.insert_batch(&items).unwrap();
        }
        let (compacting, old) = compaction_paths(&path);
        let copy_dir = |from: &Path, to: &Path| {
            std::fs::create_dir_all(to).unwrap();
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    std::fs::create_dir_all(to.join(e.file_name())).unwrap();
                } else {
                    std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
                }
            }
        };
        // A copy half written (garbage), the store in place: the copy is removed.
        std::fs::create_dir_all(&compacting).unwrap();
        std::fs::write(compacting.join("db"), b"half a copy").unwrap();
        // Moved aside, the copy not yet in place: the store comes back.
        std::fs::rename(&path, &old).unwrap();
        assert!(store_exists(&path), "a store moved aside is still there");
        {
            let s = SledStore::open(&path).unwrap();
            assert_exact(&s, &items);
            s.close().unwrap();
        }
        assert!(!compacting.exists() && !old.exists());
        // Both in place, the old not yet removed: it is removed.
        copy_dir(&path, &old);
        let s = SledStore::open(&path).unwrap();
        assert!(!old.exists());
        assert_exact(&s, &items);
    }
}
