//! The aggregate mirror: ClickHouse's reports counted into cells on the collector's own disk,
//! so that queries are answered from pre-aggregated hour, day and month cells (the sled
//! store's cells, roll-ups and day in progress, [`SledStore`]) instead of from every raw row.
//!
//! # What it holds, and how it follows ClickHouse
//!
//! A [`SledStore`] in the collector's data folder that holds no report, only cells: each UTC
//! day's observations are read from ClickHouse — `FINAL`, so each report once, the copy that
//! arrived first — in order of arrival, and counted under the per-agent and prefix caps by
//! [`SledStore::replace_day`], exactly as the sled store counts at ingest. The mirror's note
//! keeps, per day, the stamp it mirrored: ClickHouse's row count and greatest arrival stamp
//! for that day (`GROUP BY intDiv(hour, 24)`, one scan of two narrow columns). A sync reads
//! the stamps and mirrors again every day whose stamp changed — a late upload, a copy from
//! another collector, a merge that collapsed duplicates — or that the note lacks, and drops
//! the days ClickHouse no longer has; then brings the roll-ups up to date. A day is taken out
//! of the note before it is replaced and written back after, so a sync cut off midway redoes it.
//!
//! A day whose rows changed in a way that kept both its count and its greatest arrival (one
//! insert and one merged duplicate of an *earlier* arrival between two syncs) is not seen;
//! every collector's own inserts carry a greater arrival than the rows before them, so this
//! needs another collector's clock to lag. Dropping the mirror's folder rebuilds it whole.
//!
//! # When queries use it
//!
//! Only for the policy it is built for (its caps; any k: the cells are k-free, the roll-ups for
//! the policy's k), and only once a sync under those caps has ever completed (the note says
//! so, across restarts); otherwise the store answers in SQL. A mirror kept from before a
//! restart answers as of then while the collector's first sync runs. The collector syncs it
//! at start and every minute (the roll-up task); a query finding this process's last sync
//! older than `refresh` syncs first unless a sync is already running. So answers include
//! uploads up to about a minute old, as the API's overview does. With a `refresh` of zero
//! every query syncs first (tests).

use super::client::{lit, Http};
use crate::domain::{day_string, Filing, Observation, Policy, FIGURE_COUNT};
use crate::geo::Region;
use crate::store::{SledStore, StoreError};
use callwatch_proto::report::VerdictRule;
use callwatch_proto::{Platform, Role, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What one day of ClickHouse looked like when it was mirrored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    rows: u64,
    last: u64,
}

/// The mirror's note: the caps its cells were counted under and each mirrored day's stamp.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Note {
    caps: (u32, u32),
    days: BTreeMap<i64, Stamp>,
    /// A sync under these caps has completed: every day is in the cells (a day being synced
    /// again is replaced whole, never missing).
    complete: bool,
    /// Reports mirrored per day (each once), for the store's count.
    reports: BTreeMap<i64, u64>,
}

/// What one sync did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Days read whole again (changed or new).
    pub days: usize,
    /// Days whose new rows were added to what the mirror held (only later arrivals changed).
    pub appended: usize,
    /// Days dropped (ClickHouse no longer has them).
    pub dropped: usize,
    /// Observations read.
    pub observations: u64,
}

/// See the module documentation.
pub struct Mirror {
    cells: SledStore,
    policy: Policy,
    refresh: Duration,
    /// Held by the sync in progress.
    syncing: Mutex<()>,
    /// When the last sync completed in this process.
    synced: Mutex<Option<Instant>>,
    /// A sync under the mirror's caps has completed, in this process or before.
    complete: std::sync::atomic::AtomicBool,
    /// Reports the mirror counted, as of its last completed sync.
    reports: std::sync::atomic::AtomicU64,
}

/// One stamp row.
#[derive(Deserialize)]
struct StampRow {
    day: i64,
    rows: u64,
    last: u64,
}

/// One report's columns, as the mirror reads them.
#[derive(Deserialize)]
struct DayRow {
    agent: String,
    started_at_ms: i64,
    country: String,
    subdivision: String,
    asn: u32,
    platform: u8,
    kind: u8,
    verdict: i8,
    rule: String,
    uploaded_elsewhere: u8,
    hosting: u8,
    prefix_tag: String,
    arm: Vec<u8>,
    rtt: Vec<Option<f64>>,
    jitter_up: Vec<Option<f64>>,
    jitter_down: Vec<Option<f64>>,
    loss: Vec<Option<f64>>,
    loss_up: Vec<Option<f64>>,
    loss_down: Vec<Option<f64>>,
    mos: Vec<Option<f64>>,
    stalls: Vec<Option<f64>>,
}

fn verdict_of(code: i8) -> Option<Verdict> {
    match code {
        0 => Some(Verdict::None),
        1 => Some(Verdict::Inconclusive),
        2 => Some(Verdict::Differentiated),
        _ => None,
    }
}

/// The rule as the report spells it; none when empty or unknown to this build.
fn rule_of(s: &str) -> Option<VerdictRule> {
    if s.is_empty() {
        return None;
    }
    serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
}

impl DayRow {
    /// One observation per arm (the columns are parallel arrays).
    fn observations(self, out: &mut Vec<Observation>) -> Result<(), StoreError> {
        use crate::domain::codes::{arm_of_code, kind_of_code, platform_of_code};
        let bad = |what: &str| StoreError::Backend(format!("ClickHouse answered {what}"));
        let mut agent = [0u8; 32];
        hex::decode_to_slice(&self.agent, &mut agent)
            .map_err(|_| bad("an agent key that is not 64 hex digits"))?;
        let platform: Platform =
            platform_of_code(self.platform).ok_or_else(|| bad("an unknown platform code"))?;
        let kind = kind_of_code(self.kind).ok_or_else(|| bad("an unknown stream kind"))?;
        let figures = [
            &self.rtt,
            &self.jitter_up,
            &self.jitter_down,
            &self.loss,
            &self.loss_up,
            &self.loss_down,
            &self.mos,
            &self.stalls,
        ];
        let n = self.arm.len();
        if figures.iter().any(|f| f.len() != n) {
            return Err(bad("figure arrays of unequal lengths"));
        }
        // Checked again: a code not of the row's country reads as unknown.
        let region = Region::new(&self.country, self.asn).with_subdivision(&self.subdivision);
        let filing = Filing {
            uploaded_elsewhere: self.uploaded_elsewhere != 0,
            hosting: self.hosting != 0,
            prefix_tag: (!self.prefix_tag.is_empty()).then(|| self.prefix_tag.clone()),
            ..Filing::default()
        };
        let (verdict, rule) = (verdict_of(self.verdict), rule_of(&self.rule));
        for (i, &code) in self.arm.iter().enumerate() {
            let arm: Role = arm_of_code(code).ok_or_else(|| bad("an unknown arm code"))?;
            let values: [Option<f64>; FIGURE_COUNT] = std::array::from_fn(|f| figures[f][i]);
            out.push(Observation {
                started_at_ms: self.started_at_ms,
                country: region.country.clone(),
                subdivision: region.subdivision.clone(),
                asn: region.asn,
                platform,
                arm,
                kind,
                agent,
                figures: values,
                verdict,
                rule,
                filing: filing.clone(),
            });
        }
        Ok(())
    }
}

impl Mirror {
    /// Opens (or creates) the mirror in `dir` for `policy`; `refresh` as in the module
    /// documentation.
    pub fn open(dir: &Path, policy: &Policy, refresh: Duration) -> Result<Mirror, StoreError> {
        let cells = SledStore::open_with_policy(dir, policy)?;
        let note = Self::note(&cells)?;
        let complete = note.complete && note.caps == (cells.cap(), cells.prefix_cap());
        Ok(Mirror {
            cells,
            policy: *policy,
            refresh,
            syncing: Mutex::new(()),
            synced: Mutex::new(None),
            complete: complete.into(),
            reports: note.reports.values().sum::<u64>().into(),
        })
    }

    /// The number of reports ClickHouse holds (each once), as of the mirror's last sync — once
    /// one has ever completed (after syncing first with a `refresh` of zero). Counting them in
    /// ClickHouse (`count()` with `FINAL`) reads every row's key: 5 s at ten million rows.
    pub fn count(&self, http: &Http, db: &str, now_ms: i64) -> Result<Option<u64>, StoreError> {
        if self.refresh.is_zero() {
            self.sync(http, db, now_ms)?;
        }
        Ok(self
            .complete
            .load(std::sync::atomic::Ordering::SeqCst)
            .then(|| self.reports.load(std::sync::atomic::Ordering::SeqCst)))
    }

    /// The note `cells` keep (empty when none, or one this build cannot read).
    fn note(cells: &SledStore) -> Result<Note, StoreError> {
        Ok(match cells.mirror_note()? {
            Some(b) => postcard::from_bytes(&b).unwrap_or_default(),
            None => Note::default(),
        })
    }

    /// The cells, for queries (see [`Mirror::usable`]).
    pub fn cells(&self) -> &SledStore {
        &self.cells
    }

    /// Whether queries under `policy` may be answered from the mirror now: under its caps, once
    /// a sync has ever completed (a mirror kept from before a restart answers as of then while
    /// the collector's first sync runs) — after syncing first when this process's last sync is
    /// older than `refresh` (or there was none) and no sync is running; always first with a
    /// `refresh` of zero.
    pub fn usable(
        &self,
        http: &Http,
        db: &str,
        policy: &Policy,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        if (policy.max_per_agent_per_day, policy.max_per_prefix_per_day)
            != (
                self.policy.max_per_agent_per_day,
                self.policy.max_per_prefix_per_day,
            )
        {
            return Ok(false);
        }
        if self.refresh.is_zero() {
            self.sync(http, db, now_ms)?;
            return Ok(true);
        }
        if !self.complete.load(std::sync::atomic::Ordering::SeqCst) {
            // Never built whole: SQL, while the collector's sync builds it.
            return Ok(false);
        }
        let last = *self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= self.refresh) {
            if let Ok(guard) = self.syncing.try_lock() {
                // The collector's sync is behind: this query brings the mirror up to date.
                drop(guard);
                self.sync(http, db, now_ms)?;
            }
        }
        Ok(true)
    }

    /// Brings the mirror up to date with ClickHouse (see the module documentation), then its
    /// roll-ups for the days before the one of `now_ms`. One sync at a time.
    pub fn sync(&self, http: &Http, db: &str, now_ms: i64) -> Result<SyncStats, StoreError> {
        let _one = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        let mut stats = SyncStats::default();
        let caps = (self.cells.cap(), self.cells.prefix_cap());
        let mut note = Self::note(&self.cells)?;
        if note.caps != caps {
            // Cells counted under other caps (the store emptied them at open): all again.
            note = Note {
                caps,
                ..Note::default()
            };
        }
        let mut stamps: BTreeMap<i64, Stamp> = BTreeMap::new();
        http.rows(
            &format!(
                "SELECT intDiv(hour, 24) AS day, count() AS rows, max(arrival) AS last \
                 FROM {db}.reports GROUP BY day"
            ),
            |r: StampRow| {
                stamps.insert(
                    r.day,
                    Stamp {
                        rows: r.rows,
                        last: r.last,
                    },
                );
                Ok(true)
            },
        )?;
        let save = |note: &Note| -> Result<(), StoreError> {
            let b = postcard::to_allocvec(note)
                .map_err(|e| StoreError::Backend(format!("encoding the mirror's note: {e}")))?;
            self.cells.set_mirror_note(&b)
        };
        let gone: Vec<i64> = note
            .days
            .keys()
            .filter(|d| !stamps.contains_key(d))
            .copied()
            .collect();
        for day in gone {
            note.days.remove(&day);
            note.reports.remove(&day);
            save(&note)?;
            self.cells.replace_day(day, &[])?;
            stats.dropped += 1;
        }
        for (&day, &stamp) in &stamps {
            let old = note.days.get(&day).copied();
            if old == Some(stamp) {
                continue;
            }
            if note.days.remove(&day).is_some() {
                save(&note)?;
            }
            // Rows that arrived after the day's last mirrored one, and nothing else changed:
            // counted after the others. Every read stops at the stamp's last arrival, so what
            // is mirrored is what the stamp describes.
            let appended = match old {
                Some(o) if stamp.rows > o.rows && stamp.last > o.last => {
                    let (reports, observations) =
                        self.read_day(http, db, day, Some(o.last), stamp.last)?;
                    if reports == stamp.rows - o.rows {
                        stats.observations += observations.len() as u64;
                        self.cells.append_day(day, &observations)?;
                        *note.reports.entry(day).or_default() += reports;
                        stats.appended += 1;
                        true
                    } else {
                        false
                    }
                }
                _ => false,
            };
            if !appended {
                let (reports, observations) = self.read_day(http, db, day, None, stamp.last)?;
                stats.observations += observations.len() as u64;
                self.cells.replace_day(day, &observations)?;
                note.reports.insert(day, reports);
                stats.days += 1;
            }
            note.days.insert(day, stamp);
            save(&note)?;
        }
        let today = now_ms.div_euclid(24 * 3_600_000);
        self.cells.roll_up(self.policy.min_agents, today)?;
        if !note.complete {
            note.complete = true;
            save(&note)?;
        }
        self.reports.store(
            note.reports.values().sum(),
            std::sync::atomic::Ordering::SeqCst,
        );
        self.complete
            .store(true, std::sync::atomic::Ordering::SeqCst);
        *self.synced.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        Ok(stats)
    }

    /// Day `day`'s reports that arrived after `after` (all when `None`) and not after `upto`,
    /// each once (the copy that arrived first), in order of arrival: how many, and their
    /// observations.
    fn read_day(
        &self,
        http: &Http,
        db: &str,
        day: i64,
        after: Option<u64>,
        upto: u64,
    ) -> Result<(u64, Vec<Observation>), StoreError> {
        let first = day.saturating_mul(24);
        let after = after.map_or(String::new(), |a| format!(" AND arrival > {a}"));
        let sql = format!(
            "SELECT agent, started_at_ms, country, subdivision, asn, platform, kind, verdict, \
             rule, uploaded_elsewhere, hosting, prefix_tag, arm, rtt, jitter_up, jitter_down, \
             loss, loss_up, loss_down, mos, stalls FROM {db}.reports FINAL \
             WHERE started_date = {date} AND hour >= {first} AND hour < {end} \
             AND arrival <= {upto}{after} ORDER BY arrival, id",
            date = lit(&day_string(day.max(0))),
            end = first.saturating_add(24),
        );
        let mut out = Vec::new();
        let mut reports = 0u64;
        http.rows(&sql, |row: DayRow| {
            reports += 1;
            row.observations(&mut out)?;
            Ok(true)
        })?;
        Ok((reports, out))
    }
}
