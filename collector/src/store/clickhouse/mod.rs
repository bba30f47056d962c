//! The ClickHouse store: for deployments that outgrow one machine — many collectors, one
//! ClickHouse (or cluster) behind them, no replication of our own.
//!
//! # Wire
//!
//! Only ClickHouse's HTTP interface (port 8123) and the formats every release since 2018 shares:
//! `JSONEachRow` for inserts and results, `TabSeparated` for single values, plain SQL without
//! window functions. Tested against Debian's `clickhouse-server` 18.16.1; nothing used here was
//! removed since. The client ([`client`]) is `ureq`, a maintained blocking HTTP client, with
//! kept connections, HTTP basic authentication, and TLS (rustls, ring) for `https://` URLs.
//!
//! | module | owns |
//! |---|---|
//! | [`client`] | the URL, credentials and CA file ([`Access`]), the HTTP client, SQL literals |
//! | [`schema`] | the `reports` columns and the migration at open |
//! | [`rows`] | a report as a row and back |
//! | [`queries`] | the aggregation SQL and the cells it answers |
//! | [`mirror`] | the aggregate mirror: ClickHouse's days counted into sled cells on the collector's disk |
//! | this module | [`ClickHouseStore`]: insert, dedup, paging, the [`ReportStore`] adapter |
//!
//! # Tables
//!
//! `reports`: one row per stored report — the exact signed body, the signature, the agent key
//! (hex), the report id (hex), arrival time, region, the stream kind (`kind`: 0 voice, 1 video),
//! the verdict and the rule that decided it (`rule`, as the report spells it; empty when none),
//! and per aggregated arm (platform, control) the figures aggregation uses, as parallel arrays
//! (`arm`, `rtt`, …, `Nullable(Float64)` where a report may lack a figure). Engine
//! `ReplacingMergeTree(ver)`, `PARTITION BY toYYYYMM(started_date)` (the test's UTC start day,
//! from the signed body, so the same report always lands in the same partition),
//! `ORDER BY (started_date, agent, id)`: ReplacingMergeTree collapses rows with equal sorting
//! key, so the sorting key must be the report's identity — the agent key and report id, with the
//! test's UTC day first, which every copy of a report shares (it comes from the signed body), so
//! that one day is one range of the primary key (tables made before are sorted by `(agent, id)`
//! and work the same, each day's read scanning its month). `ver` is
//! `u64::MAX − received_at_ms`, so of two copies the *earliest arrival* survives — the copy the
//! per-agent cap counts, as in sled. Aggregation queries filter by partition (month) and read a
//! few narrow columns; the sorting key does not serve them, but a column store scans those fast.
//!
//! `kind`, `rule` and `loss` (the round-trip loss per arm) came later ([`ADDED_COLUMNS`]): opening
//! a table made before them adds them (`ALTER TABLE … ADD COLUMN`, cheap: no data is rewritten),
//! with defaults that rows stored before read from their own signed body — `kind` is video only
//! where the body says `"stream_kind":"video"`, `rule` is the body's rule — so old rows
//! aggregate as the sled store's rebuild from the same bodies does. `loss` of old rows is null
//! (one array element per arm), so their round-trip loss is missing from the `loss` figure.
//! `region_source`, `uploaded_elsewhere` and `hosting` (the report's [`Filing`]) came after them:
//! rows stored before read as 0 (unrecorded, not marked), as sled's records from before do.
//! `subdivision` (the region's ISO 3166-2 code, `RU-MOW`, empty when unknown) came last: rows
//! stored before read as empty, unknown, as sled's records from before do.
//!
//! # Deduplication across collectors
//!
//! Every read uses `FINAL` (exact, deterministic, needs no extra state): two collectors storing
//! the same report (an agent retried at the other one after a lost acknowledgement) write two
//! rows, which merges collapse eventually and `FINAL` collapses at once. argMax/GROUP BY on the
//! report key would do the same but needs the whole row set grouped in memory for every query;
//! an insert deduplication token is per block, not per report, and only on replicated tables.
//! Before inserting, `insert_batch` asks which keys already exist so the agent hears
//! `Duplicate`; two collectors racing with the same report may both answer `Inserted`, but the
//! data still counts once.
//!
//! # Durability
//!
//! `insert_batch` sends one `INSERT … FORMAT JSONEachRow` per batch and returns only after
//! ClickHouse answered 200: the collector acknowledges to agents only then. On a cluster, set
//! `insert_quorum` in the collector user's profile so that 200 means written on that many
//! replicas (see docs/DEPLOYMENT.md).
//!
//! # Aggregation
//!
//! A collector (`serve`) answers queries and the events' evidence from its aggregate mirror
//! ([`mirror`]): each UTC day of `reports` read once (`FINAL`, in order of arrival) and counted
//! into the sled store's cells, roll-ups and day in progress, read again when the day's row
//! count or greatest arrival changes, synced every minute — so a query costs what it costs on
//! sled, not a scan of every row. Queries under other caps than the collector's, and stores
//! opened without a mirror (`export`, the load tool's `--sql-only`), are answered in SQL:
//!
//! [`ReportStore::aggregate`] is one SQL query with the sled backend's semantics
//! (see [`crate::domain`]): fine cells (UTC hour, country, subdivision, ASN, platform, arm,
//! kind), the atoms of publication of [`crate::domain::Grouper`], region atoms included; the
//! per-agent cap per (UTC day, country, ASN, platform, arm, kind, agent) in order of arrival —
//! without window functions: `groupArray` of (received_at_ms, position in batch, id, …) per cap
//! group, sorted and sliced to the cap, then `ARRAY JOIN`ed; the hour bounds of the filter are
//! applied after the cap, which counts whole days; then the prefix cap the same way, per (UTC
//! day, country, ASN, platform, arm, kind, prefix) over what the agent cap kept; the k threshold
//! on distinct 8-byte agent prefixes and on distinct network prefixes (`uniqExact`; a report
//! without a prefix tag counts as the prefix of its agent key, as in
//! [`crate::domain::prefix_of`]); exact order statistics at rank ⌊q·(n−1)⌋ (`arraySort` and
//! index), where sled answers from sketches within 1 % of the same rank. The caps come from the
//! query's policy, so changing them needs no rebuild.

pub mod client;
pub mod mirror;
pub mod queries;
pub mod rows;
pub mod schema;

pub use client::{check_identifier, Access, ClickHouseUrl};

use super::{InsertOutcome, ReportStore, SledStore, StoreError};
use crate::domain::events::EvidenceBook;
use crate::domain::{Axis, Cell, Filter, Policy, StoredReport, VerifiedReport};
use client::{lit, Http};
use queries::AggRow;
use rows::{ReadRow, Row};
use serde::Deserialize;
use std::io::Read;

const HOUR_MS: i64 = 3_600_000;
/// Rows per page when streaming reports out (`for_each`, `for_each_since`).
const PAGE: usize = 5000;

/// Reports in ClickHouse; see the module documentation.
///
/// Arrival order (the order the per-agent cap counts in) is the `arrival` stamp: microseconds,
/// at least `received_at_ms`·1000 and strictly increasing per store instance, so batches that
/// arrive in the same millisecond keep the order they were stored in, as in sled.
pub struct ClickHouseStore {
    http: Http,
    db: String,
    last_arrival: std::sync::atomic::AtomicU64,
    /// The aggregate mirror queries are answered from, when the collector keeps one
    /// ([`mirror`]).
    mirror: Option<mirror::Mirror>,
}

impl ClickHouseStore {
    /// Connects to the server at `url` (`http://host:port` or `clickhouse://host:port/db`; a
    /// database in the URL must agree with `database`), creates the database and table when
    /// missing, and checks an existing table has the expected columns. Idempotent.
    pub fn open(url: &str, database: &str, access: &Access) -> Result<Self, StoreError> {
        let parsed = ClickHouseUrl::parse(url).map_err(StoreError::Backend)?;
        if let Some(db) = &parsed.database {
            if db != database {
                return Err(StoreError::Backend(format!(
                    "the URL names database {db:?} but the database is {database:?}"
                )));
            }
        }
        check_identifier(database).map_err(StoreError::Backend)?;
        let store = ClickHouseStore {
            http: Http::new(&parsed, access)?,
            db: database.to_string(),
            last_arrival: std::sync::atomic::AtomicU64::new(0),
            mirror: None,
        };
        schema::migrate(&store.http, &store.db)?;
        Ok(store)
    }

    /// Answers queries under `policy`'s caps from an aggregate mirror in `dir` (created when
    /// missing; see [`mirror`]), synced when a query finds it older than `refresh` and by
    /// every [`ReportStore::roll_up`].
    pub fn with_mirror(
        mut self,
        dir: &std::path::Path,
        policy: &Policy,
        refresh: std::time::Duration,
    ) -> Result<Self, StoreError> {
        self.mirror = Some(mirror::Mirror::open(dir, policy, refresh)?);
        Ok(self)
    }

    /// The mirror, if any.
    pub fn mirror(&self) -> Option<&mirror::Mirror> {
        self.mirror.as_ref()
    }

    /// Brings the mirror (if any) up to date now.
    pub fn sync_mirror(&self, now_ms: i64) -> Result<Option<mirror::SyncStats>, StoreError> {
        self.mirror
            .as_ref()
            .map(|m| m.sync(&self.http, &self.db, now_ms))
            .transpose()
    }

    /// The mirror, when it may answer a query under `policy` now ([`mirror::Mirror::usable`]).
    fn mirror_for(&self, policy: &Policy) -> Result<Option<&SledStore>, StoreError> {
        let Some(m) = &self.mirror else {
            return Ok(None);
        };
        let now = chrono::Utc::now().timestamp_millis();
        Ok(m.usable(&self.http, &self.db, policy, now)?
            .then(|| m.cells()))
    }

    /// The next arrival stamp: at least `received_at_ms`·1000, above every earlier one.
    fn next_arrival(&self, received_at_ms: i64) -> u64 {
        use std::sync::atomic::Ordering;
        let floor = u64::try_from(received_at_ms)
            .unwrap_or(0)
            .saturating_mul(1000);
        let mut next = floor;
        // fetch_update's closure is retried on contention; `next` ends as the stored value.
        let _ = self
            .last_arrival
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                next = floor.max(last.saturating_add(1));
                Some(next)
            });
        next
    }

    /// The database this store writes to.
    pub fn database(&self) -> &str {
        &self.db
    }

    /// Drops this store's database with everything in it (for tests and tear-down).
    pub fn drop_database(&self) -> Result<(), StoreError> {
        self.http
            .text(&format!("DROP DATABASE IF EXISTS {}", self.db))
            .map(drop)
    }

    /// Merges the `reports` table's parts now (`OPTIMIZE … FINAL`), as its background merges
    /// would in time: for a settled size figure.
    pub fn optimize(&self) -> Result<(), StoreError> {
        self.http
            .text(&format!("OPTIMIZE TABLE {}.reports FINAL", self.db))
            .map(drop)
    }

    /// Bytes the `reports` table takes on disk (active parts, compressed), and its row count
    /// before deduplication.
    pub fn disk_usage(&self) -> Result<(u64, u64), StoreError> {
        let text = self.http.text(&format!(
            "SELECT sum(bytes_on_disk), sum(rows) FROM system.parts WHERE active AND \
             database = {} AND table = 'reports' FORMAT TabSeparated",
            lit(&self.db)
        ))?;
        let mut it = text
            .split_whitespace()
            .map(|v| v.parse::<u64>().unwrap_or(0));
        Ok((it.next().unwrap_or(0), it.next().unwrap_or(0)))
    }

    /// The server's version string (`SELECT version()`).
    pub fn server_version(&self) -> Result<String, StoreError> {
        Ok(self.http.text("SELECT version()")?.trim().to_string())
    }

    /// Which of these keys are stored already (any copy counts; no FINAL needed). Asks in
    /// chunks, so a query stays well below ClickHouse's default `max_query_size` (256 KiB).
    fn existing(
        &self,
        rows: &[Row<'_>],
    ) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
        let mut found = std::collections::HashSet::new();
        for chunk in rows.chunks(1000) {
            found.extend(self.existing_chunk(chunk)?);
        }
        Ok(found)
    }

    fn existing_chunk(
        &self,
        rows: &[Row<'_>],
    ) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
        let mut found = std::collections::HashSet::new();
        if rows.is_empty() {
            return Ok(found);
        }
        let mut agents: Vec<&str> = rows.iter().map(|r| r.agent.as_str()).collect();
        agents.sort_unstable();
        agents.dedup();
        let mut dates: Vec<&str> = rows.iter().map(|r| r.started_date.as_str()).collect();
        dates.sort_unstable();
        dates.dedup();
        let list = |v: &[&str]| v.iter().map(|s| lit(s)).collect::<Vec<_>>().join(",");
        let pairs: Vec<String> = rows
            .iter()
            .map(|r| format!("({},{})", lit(&r.agent), lit(&r.id)))
            .collect();
        let sql = format!(
            "SELECT DISTINCT agent, id FROM {}.reports WHERE started_date IN ({}) \
             AND agent IN ({}) AND (agent, id) IN ({})",
            self.db,
            list(&dates),
            list(&agents),
            pairs.join(",")
        );
        #[derive(Deserialize)]
        struct K {
            agent: String,
            id: String,
        }
        self.http.rows(&sql, |k: K| {
            found.insert((k.agent, k.id));
            Ok(true)
        })?;
        Ok(found)
    }

    /// Pages through `reports FINAL` (rows matching `where_`) in key order or, with `by_time`,
    /// arrival order, each page starting after the last row of the one before.
    fn pages(
        &self,
        where_: &str,
        by_time: bool,
        f: &mut dyn FnMut(StoredReport) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let cols = "agent, id, received_at_ms, arrival, country, asn, body, signature, key, \
                    region_source, uploaded_elsewhere, hosting, prefix_from, prefix_tag, \
                    subdivision";
        let mut after: Option<String> = None;
        loop {
            let mut cond = where_.to_string();
            if let Some(a) = &after {
                cond = format!("({cond}) AND {a}");
            }
            let order = if by_time {
                "received_at_ms, arrival, agent, id"
            } else {
                "agent, id"
            };
            let sql = format!(
                "SELECT {cols} FROM {}.reports FINAL WHERE {cond} ORDER BY {order} LIMIT {PAGE}",
                self.db
            );
            let mut n = 0usize;
            let mut last: Option<(i64, u64, String, String)> = None;
            let mut stop = false;
            self.http.rows(&sql, |row: ReadRow| {
                n += 1;
                last = Some((
                    row.received_at_ms,
                    row.arrival,
                    row.agent.clone(),
                    row.id.clone(),
                ));
                let go = f(row.into_stored()?)?;
                stop = !go;
                Ok(go)
            })?;
            if stop || n < PAGE {
                return Ok(());
            }
            let Some((t, s, a, i)) = last else {
                return Ok(());
            };
            let (a, i) = (lit(&a), lit(&i));
            after = Some(if by_time {
                format!(
                    "(received_at_ms > {t} OR (received_at_ms = {t} AND (arrival > {s} OR \
                     (arrival = {s} AND (agent > {a} OR (agent = {a} AND id > {i}))))))"
                )
            } else {
                format!("(agent > {a} OR (agent = {a} AND id > {i}))")
            });
        }
    }
}

impl ClickHouseStore {
    /// Inserts `batch` without asking which of its reports are stored already: for a bulk load
    /// of reports known to be new (the load tool's fill). The pre-insert check reads the
    /// month's `agent` and `id` columns for every thousand reports, which at millions of rows
    /// dominates the insert. A report stored already is stored again and still counts once
    /// (every read is `FINAL`; the first arrival is kept).
    pub fn insert_new(&self, batch: &[VerifiedReport]) -> Result<(), StoreError> {
        self.insert_rows(&self.rows(batch)?, std::collections::HashSet::new())
            .map(drop)
    }

    /// The rows of `batch`, each with its arrival stamp.
    fn rows<'b>(&self, batch: &'b [VerifiedReport]) -> Result<Vec<Row<'b>>, StoreError> {
        batch
            .iter()
            .map(|v| Row::of(v, self.next_arrival(v.stored.received_at_ms)))
            .collect()
    }

    /// Inserts the rows whose keys are not in `known` (nor earlier among `rows`), in one
    /// `INSERT`; each row's outcome.
    fn insert_rows(
        &self,
        rows: &[Row<'_>],
        mut known: std::collections::HashSet<(String, String)>,
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(rows.len());
        let mut body = Vec::with_capacity(rows.len() * 2048);
        for row in rows {
            // A key already stored, or earlier in this batch, is a duplicate.
            if known.insert((row.agent.clone(), row.id.clone())) {
                serde_json::to_writer(&mut body, row)
                    .map_err(|e| StoreError::Backend(format!("encoding a row: {e}")))?;
                body.push(b'\n');
                outcomes.push(InsertOutcome::Inserted);
            } else {
                outcomes.push(InsertOutcome::Duplicate);
            }
        }
        if !body.is_empty() {
            let query = format!("INSERT INTO {}.reports FORMAT JSONEachRow", self.db);
            let mut answer = self.http.post(&[("query", &query)], &body)?;
            // Read to the end: the 200 and the whole answer are the durability point.
            let mut rest = Vec::new();
            answer
                .read_to_end(&mut rest)
                .map_err(|e| self.http.err(format!("reading the insert's answer: {e}")))?;
            if !rest.is_empty() {
                return Err(self.http.err(format!(
                    "insert answered {}",
                    String::from_utf8_lossy(&rest).trim()
                )));
            }
        }
        Ok(outcomes)
    }
}

impl ReportStore for ClickHouseStore {
    fn insert_batch(&self, batch: &[VerifiedReport]) -> Result<Vec<InsertOutcome>, StoreError> {
        let rows = self.rows(batch)?;
        let known = self.existing(&rows)?;
        self.insert_rows(&rows, known)
    }

    fn for_each(
        &self,
        f: &mut dyn FnMut(StoredReport) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.pages("1", false, &mut |r| f(r).map(|()| true))
    }

    fn for_each_since(
        &self,
        since_ms: i64,
        f: &mut dyn FnMut(StoredReport) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.pages(&format!("received_at_ms >= {since_ms}"), true, f)
    }

    fn aggregate(
        &self,
        axes: &[Axis],
        filter: &Filter,
        policy: &Policy,
    ) -> Result<Vec<Cell>, StoreError> {
        if let Some(cells) = self.mirror_for(policy)? {
            return cells.aggregate(axes, filter, policy);
        }
        let sql = queries::aggregate_sql(&self.db, axes, filter, policy);
        let mut cells = Vec::new();
        self.http.rows(&sql, |row: AggRow| {
            cells.push(row.into_cell()?);
            Ok(true)
        })?;
        cells.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(cells.into_iter().map(|(_, c)| c).collect())
    }

    fn evidence(
        &self,
        from: i64,
        to: i64,
        policy: &Policy,
        book: &mut EvidenceBook,
    ) -> Result<(), StoreError> {
        if let Some(cells) = self.mirror_for(policy)? {
            return cells.evidence(from, to, policy, book);
        }
        let sql = queries::evidence_sql(&self.db, from, to, policy);
        self.http.rows(&sql, |row: queries::EvidenceRow| {
            let (key, ev) = row.into_evidence()?;
            book.add(&key, ev);
            Ok(true)
        })
    }

    fn roll_up(&self, _policy: &Policy, now_ms: i64) -> Result<(), StoreError> {
        let t = std::time::Instant::now();
        if let Some(stats) = self.sync_mirror(now_ms)? {
            if stats != mirror::SyncStats::default() {
                tracing::info!(
                    days = stats.days,
                    appended = stats.appended,
                    dropped = stats.dropped,
                    observations = stats.observations,
                    seconds = t.elapsed().as_secs_f64(),
                    "aggregate mirror brought up to date with ClickHouse"
                );
            }
        }
        Ok(())
    }

    fn len(&self) -> usize {
        if let Some(m) = &self.mirror {
            let now = chrono::Utc::now().timestamp_millis();
            match m.count(&self.http, &self.db, now) {
                Ok(Some(n)) => return usize::try_from(n).unwrap_or(usize::MAX),
                Ok(None) => {}
                Err(e) => tracing::warn!("counting reports from the aggregate mirror: {e}"),
            }
        }
        match self
            .http
            .text(&format!("SELECT count() FROM {}.reports FINAL", self.db))
        {
            Ok(s) => s.trim().parse().unwrap_or(0),
            Err(e) => {
                tracing::warn!("counting reports: {e}");
                0
            }
        }
    }
}
