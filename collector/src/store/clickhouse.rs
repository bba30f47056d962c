//! The ClickHouse store: for deployments that outgrow one machine — many collectors, one
//! ClickHouse (or cluster) behind them, no replication of our own.
//!
//! # Wire
//!
//! Only ClickHouse's HTTP interface (port 8123) and the formats every release since 2018 shares:
//! `JSONEachRow` for inserts and results, `TabSeparated` for single values, plain SQL without
//! window functions. Tested against Debian's `clickhouse-server` 18.16.1; nothing used here was
//! removed since. The client is a small blocking HTTP/1.1 client on `std::net` (one connection
//! per request, `Connection: close`, HTTP basic authentication): the [`ReportStore`] trait is
//! synchronous (the collector calls it from `spawn_blocking`), ClickHouse's HTTP interface needs
//! nothing more, and it adds no dependency. It speaks plain HTTP only; reach a TLS-only server
//! through a local TLS proxy (or a ClickHouse node on the same host).
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
//! `ORDER BY (agent, id)`: ReplacingMergeTree collapses rows with equal sorting key, so the
//! sorting key must be the report's identity. `ver` is
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
//! [`ReportStore::aggregate`] is one SQL query with the sled backend's semantics
//! (see [`crate::domain`]): fine cells (UTC hour, country, ASN, platform, arm, kind); the
//! per-agent cap per (UTC day, country, ASN, platform, arm, kind, agent) in order of arrival —
//! without window functions: `groupArray` of (received_at_ms, position in batch, id, …) per cap
//! group, sorted and sliced to the cap, then `ARRAY JOIN`ed; the hour bounds of the filter are
//! applied after the cap, which counts whole days; the k threshold on distinct 8-byte agent
//! prefixes (`uniqExact`); exact order statistics at rank ⌊q·(n−1)⌋ (`arraySort` and index),
//! where sled answers from sketches within 1 % of the same rank. The cap comes from the query's
//! policy, so changing it needs no rebuild.

use super::{InsertOutcome, ReportStore, StoreError};
use crate::domain::codes::{
    arm_code, arm_of_code, country_text, kind_code, kind_of_code, platform_code, platform_of_code,
};
use crate::domain::day_string;
use crate::domain::{
    Axis, Cell, Figure, FilingCounts, Filter, GroupKey, Policy, VerdictCounts, BLOCKED_RULES,
    FIGURE_COUNT, NO_REFERENCE_RULES,
};
use crate::domain::{Filing, PrefixFrom, RegionSource, StoredReport, VerifiedReport};
use crate::geo::Region;
use callwatch_proto::report::{StreamKind, VerdictRule};
use callwatch_proto::{Role, SignedReport, Verdict};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

const HOUR_MS: i64 = 3_600_000;
/// Rows per page when streaming reports out (`for_each`, `for_each_since`).
const PAGE: usize = 5000;

/// Where a ClickHouse server is: from `http://host:port[/]` or `clickhouse://host:port/db`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClickHouseUrl {
    pub host: String,
    pub port: u16,
    /// The database named in the path (`clickhouse://host:8123/db`), if any.
    pub database: Option<String>,
}

impl ClickHouseUrl {
    /// Parses `http://host[:port][/db]` or `clickhouse://host[:port][/db]` (port 8123 by
    /// default). `https://` is refused: this client speaks plain HTTP only.
    pub fn parse(url: &str) -> Result<ClickHouseUrl, String> {
        let rest = if let Some(r) = url.strip_prefix("http://") {
            r
        } else if let Some(r) = url.strip_prefix("clickhouse://") {
            r
        } else if url.starts_with("https://") {
            return Err(format!(
                "{url:?}: TLS is not supported by the built-in client; reach ClickHouse over \
                 plain HTTP on a private network or through a local TLS proxy"
            ));
        } else {
            return Err(format!(
                "{url:?}: expected http://host:port or clickhouse://host:port/database"
            ));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(format!(
                "{url:?}: credentials do not belong in the URL; use CALLWATCH_CLICKHOUSE_USER \
                 and CALLWATCH_CLICKHOUSE_PASSWORD or a password file"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            ),
            _ => (authority, 8123),
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        let path = path.trim_end_matches('/');
        let database = if path.is_empty() {
            None
        } else {
            check_identifier(path).map_err(|e| format!("{url:?}: {e}"))?;
            Some(path.to_string())
        };
        Ok(ClickHouseUrl {
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port,
            database,
        })
    }
}

/// A database name must be a plain identifier (it is spliced into SQL).
pub fn check_identifier(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "database name {name:?} must be letters, digits and _ (not starting with a digit)"
        ))
    }
}

/// The minimal blocking HTTP/1.1 client ClickHouse's HTTP interface needs.
#[derive(Clone)]
struct Http {
    host: String,
    port: u16,
    /// `Authorization` header value.
    auth: Option<String>,
    timeout: Duration,
}

impl Http {
    fn err(&self, what: impl std::fmt::Display) -> StoreError {
        StoreError::Backend(format!("ClickHouse at {}:{}: {what}", self.host, self.port))
    }

    /// POSTs `body` with URL parameters `params`; returns the response body (streaming) when
    /// the status is 200, the server's message as an error otherwise.
    fn post(&self, params: &[(&str, &str)], body: &[u8]) -> Result<Box<dyn BufRead>, StoreError> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| self.err(format!("resolving: {e}")))?
            .next()
            .ok_or_else(|| self.err("resolves to no address"))?;
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| self.err(format!("connecting: {e}")))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
            .map_err(|e| self.err(e))?;
        let _ = stream.set_nodelay(true);
        let mut target = String::from("/?");
        for (i, (k, v)) in params.iter().enumerate() {
            if i > 0 {
                target.push('&');
            }
            target.push_str(k);
            target.push('=');
            percent_encode(v, &mut target);
        }
        let mut head = format!(
            "POST {target} HTTP/1.1\r\nHost: {}:{}\r\nContent-Length: {}\r\n\
             Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n",
            self.host,
            self.port,
            body.len()
        );
        if let Some(a) = &self.auth {
            let _ = write!(head, "Authorization: {a}\r\n");
        }
        head.push_str("\r\n");
        let mut w = std::io::BufWriter::with_capacity(64 * 1024, &stream);
        w.write_all(head.as_bytes())
            .and_then(|()| w.write_all(body))
            .and_then(|()| w.flush())
            .map_err(|e| self.err(format!("sending: {e}")))?;
        drop(w);
        let mut r = BufReader::with_capacity(64 * 1024, stream);
        let mut line = String::new();
        r.read_line(&mut line)
            .map_err(|e| self.err(format!("reading the answer: {e}")))?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.err(format!("not an HTTP answer: {:?}", line.trim_end())))?;
        let mut chunked = false;
        let mut length: Option<u64> = None;
        loop {
            line.clear();
            r.read_line(&mut line)
                .map_err(|e| self.err(format!("reading headers: {e}")))?;
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("transfer-encoding")
                    && value.eq_ignore_ascii_case("chunked")
                {
                    chunked = true;
                } else if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().ok();
                }
            }
        }
        let body: Box<dyn BufRead> = if chunked {
            Box::new(BufReader::new(Chunked {
                inner: r,
                left: 0,
                done: false,
            }))
        } else if let Some(n) = length {
            Box::new(r.take(n))
        } else {
            Box::new(r)
        };
        if status != 200 {
            let mut text = String::new();
            let _ = body.take(4096).read_to_string(&mut text);
            return Err(self.err(format!("HTTP {status}: {}", text.trim())));
        }
        Ok(body)
    }

    /// Runs a statement and returns the whole answer as text.
    fn text(&self, sql: &str) -> Result<String, StoreError> {
        let mut r = self.post(&[("wait_end_of_query", "1")], sql.as_bytes())?;
        let mut s = String::new();
        r.read_to_string(&mut s)
            .map_err(|e| self.err(format!("reading the answer: {e}")))?;
        Ok(s)
    }

    /// Runs a query (`… FORMAT JSONEachRow` appended) and parses each row.
    fn rows<T: for<'de> Deserialize<'de>>(
        &self,
        sql: &str,
        mut f: impl FnMut(T) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let sql = format!("{sql} FORMAT JSONEachRow");
        let r = self.post(
            &[("output_format_json_quote_64bit_integers", "0")],
            sql.as_bytes(),
        )?;
        for line in r.lines() {
            let line = line.map_err(|e| self.err(format!("reading rows: {e}")))?;
            if line.is_empty() {
                continue;
            }
            let row: T = serde_json::from_str(&line).map_err(|e| {
                let shown: String = line.chars().take(300).collect();
                self.err(format!("unexpected row ({e}): {shown}"))
            })?;
            if !f(row)? {
                break;
            }
        }
        Ok(())
    }
}

/// Decodes `Transfer-Encoding: chunked`.
struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = u64::from_str_radix(size, 16).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad chunk size {:?}", line.trim()),
                )
            })?;
            if self.left == 0 {
                // Trailers, then the blank line.
                loop {
                    line.clear();
                    if self.inner.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        if self.left == 0 {
            let mut crlf = String::new();
            self.inner.read_line(&mut crlf)?;
        }
        Ok(n)
    }
}

fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(T[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A SQL string literal.
fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn verdict_code(v: Option<Verdict>) -> i8 {
    match v {
        None => -1,
        Some(Verdict::None) => 0,
        Some(Verdict::Inconclusive) => 1,
        Some(Verdict::Differentiated) => 2,
    }
}

/// The columns of `reports`, in order, with their types (checked at open).
const COLUMNS: [(&str, &str); 24] = [
    ("agent", "String"),
    ("id", "String"),
    ("ver", "UInt64"),
    ("received_at_ms", "Int64"),
    ("arrival", "UInt64"),
    ("started_at_ms", "Int64"),
    ("started_date", "Date"),
    ("hour", "Int64"),
    ("country", "String"),
    ("cc", "FixedString(2)"),
    ("asn", "UInt32"),
    ("platform", "UInt8"),
    ("verdict", "Int8"),
    ("body", "String"),
    ("signature", "String"),
    ("arm", "Array(UInt8)"),
    ("rtt", "Array(Nullable(Float64))"),
    ("jitter_up", "Array(Nullable(Float64))"),
    ("jitter_down", "Array(Nullable(Float64))"),
    ("loss_up", "Array(Nullable(Float64))"),
    ("loss_down", "Array(Nullable(Float64))"),
    ("mos", "Array(Nullable(Float64))"),
    ("stalls", "Array(Nullable(Float64))"),
    ("key", "String"),
];

/// Columns added to `reports` after [`COLUMNS`]: (name, type, default for rows stored before
/// the column existed). The defaults read old rows' signed bodies (see the module
/// documentation); every insert sets the columns itself.
const ADDED_COLUMNS: [(&str, &str, &str); 8] = [
    (
        "kind",
        "UInt8",
        "if(visitParamExtractString(body, 'stream_kind') = 'video', 1, 0)",
    ),
    ("rule", "String", "visitParamExtractString(body, 'rule')"),
    (
        "loss",
        "Array(Nullable(Float64))",
        "arrayMap(x -> CAST(NULL, 'Nullable(Float64)'), arm)",
    ),
    ("region_source", "UInt8", "0"),
    ("uploaded_elsewhere", "UInt8", "0"),
    ("hosting", "UInt8", "0"),
    ("prefix_from", "UInt8", "0"),
    ("prefix_tag", "String", "''"),
];

/// The figure columns, in [`crate::domain::FIGURES`] order.
const FIGURE_COLUMNS: [&str; FIGURE_COUNT] = [
    "rtt",
    "jitter_up",
    "jitter_down",
    "loss",
    "loss_up",
    "loss_down",
    "mos",
    "stalls",
];

/// `rule IN (…)` of these rules, as the reports spell them.
fn rule_list(rules: &[VerdictRule]) -> String {
    let names: Vec<String> = rules.iter().map(|r| lit(r.as_str())).collect();
    names.join(", ")
}

/// One row of `reports` as inserted.
#[derive(Serialize)]
struct Row<'a> {
    agent: String,
    id: String,
    ver: u64,
    received_at_ms: i64,
    /// Arrival stamp: µs, strictly increasing per store instance (see [`ClickHouseStore`]).
    arrival: u64,
    started_at_ms: i64,
    started_date: String,
    hour: i64,
    country: &'a str,
    cc: String,
    asn: u32,
    platform: u8,
    verdict: i8,
    body: &'a str,
    signature: String,
    arm: Vec<u8>,
    rtt: Vec<Option<f64>>,
    jitter_up: Vec<Option<f64>>,
    jitter_down: Vec<Option<f64>>,
    loss_up: Vec<Option<f64>>,
    loss_down: Vec<Option<f64>>,
    mos: Vec<Option<f64>>,
    stalls: Vec<Option<f64>>,
    /// The signed report's key field (hex); equal to `agent` for every verified report.
    key: String,
    /// [`kind_code`] of the report's stream kind.
    kind: u8,
    /// The verdict's rule as the report spells it; empty when it has none.
    rule: &'static str,
    /// Round-trip loss per arm.
    loss: Vec<Option<f64>>,
    /// [`RegionSource::code`] of the report's filing.
    region_source: u8,
    uploaded_elsewhere: u8,
    hosting: u8,
    /// [`PrefixFrom::code`] of the report's filing.
    prefix_from: u8,
    /// The keyed prefix tag, empty when none (never exported).
    prefix_tag: String,
}

/// One report as read back.
#[derive(Deserialize)]
struct ReadRow {
    agent: String,
    id: String,
    received_at_ms: i64,
    arrival: u64,
    country: String,
    asn: u32,
    body: String,
    signature: String,
    key: String,
    region_source: u8,
    uploaded_elsewhere: u8,
    hosting: u8,
    prefix_from: u8,
    prefix_tag: String,
}

impl ReadRow {
    fn into_stored(self) -> Result<StoredReport, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt {
            key: format!("{}{}", self.agent, self.id),
            what,
        };
        Ok(StoredReport {
            signed: SignedReport {
                body: self.body.into_bytes(),
                key: hex::decode(&self.key).map_err(|e| corrupt(format!("key: {e}")))?,
                signature: hex::decode(&self.signature)
                    .map_err(|e| corrupt(format!("signature: {e}")))?,
            },
            region: Region {
                country: self.country,
                asn: self.asn,
            },
            received_at_ms: self.received_at_ms,
            filing: Filing {
                source: RegionSource::of_code(self.region_source),
                uploaded_elsewhere: self.uploaded_elsewhere != 0,
                hosting: self.hosting != 0,
                prefix_from: PrefixFrom::of_code(self.prefix_from),
                prefix_tag: (!self.prefix_tag.is_empty()).then_some(self.prefix_tag),
            },
        })
    }
}

/// Reports in ClickHouse; see the module documentation.
///
/// Arrival order (the order the per-agent cap counts in) is the `arrival` stamp: microseconds,
/// at least `received_at_ms`·1000 and strictly increasing per store instance, so batches that
/// arrive in the same millisecond keep the order they were stored in, as in sled.
pub struct ClickHouseStore {
    http: Http,
    db: String,
    last_arrival: std::sync::atomic::AtomicU64,
}

impl ClickHouseStore {
    /// Connects to the server at `url` (`http://host:port` or `clickhouse://host:port/db`; a
    /// database in the URL must agree with `database`), creates the database and table when
    /// missing, and checks an existing table has the expected columns. Idempotent.
    pub fn open(
        url: &str,
        database: &str,
        user: Option<&str>,
        password: Option<&str>,
    ) -> Result<Self, StoreError> {
        let parsed = ClickHouseUrl::parse(url).map_err(StoreError::Backend)?;
        if let Some(db) = &parsed.database {
            if db != database {
                return Err(StoreError::Backend(format!(
                    "the URL names database {db:?} but the database is {database:?}"
                )));
            }
        }
        check_identifier(database).map_err(StoreError::Backend)?;
        let auth = match (user, password) {
            (None, None) => None,
            (u, p) => Some(format!(
                "Basic {}",
                base64(format!("{}:{}", u.unwrap_or("default"), p.unwrap_or("")).as_bytes())
            )),
        };
        let store = ClickHouseStore {
            http: Http {
                host: parsed.host,
                port: parsed.port,
                auth,
                timeout: Duration::from_secs(300),
            },
            db: database.to_string(),
            last_arrival: std::sync::atomic::AtomicU64::new(0),
        };
        store.migrate()?;
        Ok(store)
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

    fn migrate(&self) -> Result<(), StoreError> {
        let db = &self.db;
        self.http
            .text(&format!("CREATE DATABASE IF NOT EXISTS {db}"))?;
        let columns: Vec<String> = COLUMNS
            .iter()
            .map(|(name, ty)| format!("{name} {ty}"))
            .chain(
                ADDED_COLUMNS
                    .iter()
                    .map(|(name, ty, default)| format!("{name} {ty} DEFAULT {default}")),
            )
            .collect();
        self.http.text(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.reports ({}) \
             ENGINE = ReplacingMergeTree(ver) PARTITION BY toYYYYMM(started_date) \
             ORDER BY (agent, id)",
            columns.join(", ")
        ))?;
        let columns = || -> Result<Vec<(String, String)>, StoreError> {
            let text = self.http.text(&format!(
                "SELECT name, type FROM system.columns WHERE database = {} AND \
                 table = 'reports' FORMAT TabSeparated",
                lit(db)
            ))?;
            Ok(text
                .lines()
                .filter_map(|l| l.split_once('\t'))
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect())
        };
        let has = |found: &[(String, String)], (name, ty): (&str, &str)| {
            found.iter().any(|(n, t)| n == name && t == ty)
        };
        let lacking = |found: &[(String, String)],
                       wanted: &mut dyn Iterator<Item = (&str, &str)>| {
            let missing: Vec<String> = wanted
                .filter(|c| !has(found, *c))
                .map(|(n, t)| format!("{n} {t}"))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(StoreError::Backend(format!(
                    "table {db}.reports exists but lacks columns {}; it was made by another \
                     program or version — use another database",
                    missing.join(", ")
                )))
            }
        };
        let mut found = columns()?;
        lacking(&found, &mut COLUMNS.iter().copied())?;
        // A table from before the added columns gets them. ClickHouse 18 has no
        // `ADD COLUMN IF NOT EXISTS`: another collector may add one at the same moment, so a
        // failure counts only if the column is still missing afterwards.
        let mut added_any = false;
        for (name, ty, default) in ADDED_COLUMNS {
            if found.iter().any(|(n, _)| n == name) {
                continue;
            }
            let alter =
                format!("ALTER TABLE {db}.reports ADD COLUMN {name} {ty} DEFAULT {default}");
            if let Err(e) = self.http.text(&alter) {
                tracing::debug!("adding column {name}: {e}");
            }
            added_any = true;
        }
        if added_any {
            found = columns()?;
            tracing::info!("table {db}.reports: added the columns it lacked");
        }
        lacking(&found, &mut ADDED_COLUMNS.iter().map(|(n, t, _)| (*n, *t)))?;
        Ok(())
    }

    /// The row of a verified report: its parse and observations as ingest made them (the body
    /// is not parsed again).
    fn row(v: &VerifiedReport, arrival: u64) -> Result<Row<'_>, StoreError> {
        let (key, report, body, obs) = (&v.key, &v.stored, &v.report, &v.observations);
        let corrupt = |what: String| StoreError::Corrupt {
            key: hex::encode(key.to_bytes()),
            what,
        };
        // Verified bodies are JSON, so UTF-8; the check costs a scan, not a parse.
        let body_text = std::str::from_utf8(&report.signed.body)
            .map_err(|e| corrupt(format!("body is not UTF-8: {e}")))?;
        let started_at_ms = body.started_at.timestamp_millis();
        let hour = started_at_ms.div_euclid(HOUR_MS);
        let figure = |i: usize| obs.iter().map(|o| o.figures[i]).collect::<Vec<_>>();
        Ok(Row {
            agent: hex::encode(key.agent),
            id: hex::encode(key.id.0),
            ver: u64::MAX - arrival,
            received_at_ms: report.received_at_ms,
            arrival,
            started_at_ms,
            started_date: day_string(hour.div_euclid(24)),
            hour,
            country: &report.region.country,
            cc: country_text(&report.region.country),
            asn: report.region.asn,
            platform: platform_code(body.platform),
            verdict: verdict_code(body.verdict),
            body: body_text,
            signature: hex::encode(&report.signed.signature),
            arm: obs.iter().map(|o| arm_code(o.arm)).collect(),
            rtt: figure(0),
            jitter_up: figure(1),
            jitter_down: figure(2),
            loss: figure(3),
            loss_up: figure(4),
            loss_down: figure(5),
            mos: figure(6),
            stalls: figure(7),
            key: hex::encode(&report.signed.key),
            kind: kind_code(body.stream_kind),
            rule: body
                .verdict_detail
                .as_ref()
                .and_then(|d| d.rule)
                .map_or("", VerdictRule::as_str),
            region_source: report.filing.source.code(),
            uploaded_elsewhere: u8::from(report.filing.uploaded_elsewhere),
            hosting: u8::from(report.filing.hosting),
            prefix_from: report.filing.prefix_from.code(),
            prefix_tag: report.filing.prefix_tag.clone().unwrap_or_default(),
        })
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
                    region_source, uploaded_elsewhere, hosting, prefix_from, prefix_tag";
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

    /// The aggregation query for these axes, filter and policy (see the module documentation).
    fn aggregate_sql(&self, axes: &[Axis], filter: &Filter, policy: &Policy) -> String {
        let has = |a: Axis| axes.contains(&a);
        // Before the cap: conditions on the cap key's own fields (country, ASN, platform, kind,
        // arm) and on whole days (the cap counts whole days).
        let mut pre: Vec<String> = Vec::new();
        // Voice and video never share a cell: one kind unless `kind` is an axis.
        match filter.kind {
            Some(k) => pre.push(format!("kind = {}", kind_code(k))),
            None if !has(Axis::Kind) => {
                pre.push(format!("kind = {}", kind_code(StreamKind::Voice)))
            }
            None => {}
        }
        if let Some(c) = &filter.country {
            pre.push(format!("cc = {}", lit(&country_text(c))));
        }
        if let Some(a) = filter.asn {
            pre.push(format!("asn = {a}"));
        }
        if let Some(p) = filter.platform {
            pre.push(format!("platform = {}", platform_code(p)));
        }
        let since_hour = filter.since_hour();
        let until_hour = filter.until_hour();
        if let Some(h) = since_hour {
            let day = h.div_euclid(24);
            pre.push(format!("hour >= {}", day.saturating_mul(24)));
            pre.push(format!("started_date >= {}", lit(&day_string(day.max(0)))));
        }
        if let Some(h) = until_hour {
            let day = h.div_euclid(24) + i64::from(h.rem_euclid(24) != 0);
            pre.push(format!("hour < {}", day.saturating_mul(24)));
            pre.push(format!("started_date < {}", lit(&day_string(day.max(0)))));
        }
        let mut arm_pre = Vec::new();
        match filter.arm {
            Some(a) => arm_pre.push(format!("a_arm = {}", arm_code(a))),
            None if !has(Axis::Arm) => {
                arm_pre.push(format!("a_arm = {}", arm_code(Role::Platform)))
            }
            None => {}
        }
        let where_pre = if pre.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", pre.join(" AND "))
        };
        let where_arm = if arm_pre.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", arm_pre.join(" AND "))
        };
        let figs: Vec<String> = FIGURE_COLUMNS
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} AS f{i}"))
            .collect();
        let f_list: Vec<String> = (0..FIGURE_COUNT).map(|i| format!("f{i}")).collect();
        // What the verdict's rule adds ([`crate::domain::Finding`]): 1 a blocked call, 2 a
        // test without a reference, 0 neither.
        let finding = format!(
            "multiIf(verdict = {diff} AND rule IN ({blocked}), 1, \
             verdict = {inc} AND rule IN ({noref}), 2, 0)",
            diff = verdict_code(Some(Verdict::Differentiated)),
            inc = verdict_code(Some(Verdict::Inconclusive)),
            blocked = rule_list(&BLOCKED_RULES),
            noref = rule_list(&NO_REFERENCE_RULES),
        );
        // One row per observation (report arm) that the query may cover.
        let inner = format!(
            "SELECT agent, id, arrival, hour, cc, asn, platform, kind, verdict, finding, \
             a_arm, {f}, uploaded_elsewhere, hosting FROM (SELECT agent, id, arrival, hour, cc, \
             asn, platform, kind, verdict, {finding} AS finding, arm, {fc}, uploaded_elsewhere, \
             hosting FROM {db}.reports FINAL {where_pre}) ARRAY JOIN arm AS a_arm, {figs} \
             {where_arm}",
            f = f_list.join(", "),
            fc = FIGURE_COLUMNS.join(", "),
            db = self.db,
            figs = figs.join(", "),
        );
        // Observation fields carried through the cap, as tuple elements:
        // 1 arrival, 2 id, 3 finding, 4 hour, 5 verdict, 6.. the figures, then the two filing
        // marks.
        let tuple = format!(
            "(arrival, id, finding, hour, verdict, {}, uploaded_elsewhere, hosting)",
            f_list.join(", ")
        );
        let ue = FIGURE_COUNT + 6;
        let ho = FIGURE_COUNT + 7;
        let cap = policy.max_per_agent_per_day;
        let kept = if cap >= u32::MAX as usize {
            format!("groupArray({tuple})")
        } else {
            format!("arraySlice(arraySort(x -> (x.1, x.2), groupArray({tuple})), 1, {cap})")
        };
        let capped = format!(
            "SELECT agent, cc, asn, platform, kind, a_arm, {kept} AS kept FROM ({inner}) \
             GROUP BY intDiv(hour, 24), cc, asn, platform, kind, a_arm, agent"
        );
        // After the cap: the hour bounds, the grouping, the k threshold.
        let mut post = Vec::new();
        if let Some(h) = since_hour {
            post.push(format!("k.4 >= {h}"));
        }
        if let Some(h) = until_hour {
            post.push(format!("k.4 < {h}"));
        }
        let where_post = if post.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", post.join(" AND "))
        };
        let mut group: Vec<&str> = Vec::new();
        let mut select: Vec<String> = Vec::new();
        for (axis, expr, name) in [
            (Axis::Day, "intDiv(k.4, 24)", "g_day"),
            (Axis::Hour, "k.4", "g_hour"),
            (Axis::Country, "cc", "g_cc"),
            (Axis::Asn, "asn", "g_asn"),
            (Axis::Platform, "platform", "g_platform"),
            (Axis::Arm, "a_arm", "g_arm"),
            (Axis::Kind, "kind", "g_kind"),
        ] {
            if has(axis) {
                select.push(format!("{expr} AS {name}"));
                group.push(name);
            }
        }
        let mut quantiles = Vec::new();
        let mut counts = Vec::new();
        for i in 0..FIGURE_COUNT {
            let s = format!("arraySort(groupArray(k.{}))", i + 6);
            select.push(format!("{s} AS s{i}"));
            counts.push(format!("length(s{i})"));
            let at = |q: &str| {
                format!("s{i}[toUInt64(floor({q} * greatest(toInt64(length(s{i})) - 1, 0))) + 1]")
            };
            quantiles.push(format!("[{}, {}, {}]", at("0.1"), at("0.5"), at("0.9")));
        }
        let min_agents = policy.min_agents.max(1);
        let group_by = if group.is_empty() {
            // One cell over everything; `GROUP BY` nothing still needs a row only when there is
            // data, which the HAVING below ensures (count() > 0).
            String::new()
        } else {
            format!("GROUP BY {}", group.join(", "))
        };
        let mut outer_cols: Vec<String> = group.iter().map(|g| g.to_string()).collect();
        outer_cols.extend([
            "cnt".into(),
            "agents".into(),
            "v_none".into(),
            "v_inc".into(),
            "v_diff".into(),
            "v_blocked".into(),
            "v_noref".into(),
            "f_ue".into(),
            "f_host".into(),
            format!("[{}] AS n", counts.join(", ")),
            format!("[{}] AS q", quantiles.join(", ")),
        ]);
        format!(
            "SELECT {outer} FROM (SELECT {sel}, count() AS cnt, \
             uniqExact(substring(agent, 1, 16)) AS agents, countIf(k.5 = 0) AS v_none, \
             countIf(k.5 = 1) AS v_inc, countIf(k.5 = 2) AS v_diff, \
             countIf(k.3 = 1) AS v_blocked, countIf(k.3 = 2) AS v_noref, \
             countIf(k.{ue} = 1) AS f_ue, countIf(k.{ho} = 1) AS f_host \
             FROM ({capped}) ARRAY JOIN kept AS k {where_post} {group_by} \
             HAVING cnt > 0 AND agents >= {min_agents})",
            outer = outer_cols.join(", "),
            sel = select.join(", "),
        )
    }
}

/// How far a [`copy_reports`] run got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyProgress {
    /// Reports read from the source.
    pub read: usize,
    /// Reports the destination stored for the first time.
    pub inserted: usize,
    /// Reports the destination already held (an earlier, interrupted run, or another source).
    pub present: usize,
}

/// Copies every report of `from` into `to` in arrival order, `batch` at a time, keeping each
/// report's signed bytes, region and arrival time. Resumable and idempotent without any state of
/// its own: the destination deduplicates by report key, so re-running after an interruption
/// skips what is there and copies the rest. `progress` is called after each batch; returning
/// `false` stops the copy (as an interruption would).
pub fn copy_reports(
    from: &dyn ReportStore,
    to: &dyn ReportStore,
    batch: usize,
    mut progress: impl FnMut(&CopyProgress) -> bool,
) -> Result<CopyProgress, StoreError> {
    let batch = batch.max(1);
    let mut done = CopyProgress::default();
    let mut pending: Vec<VerifiedReport> = Vec::with_capacity(batch);
    let mut flush =
        |pending: &mut Vec<VerifiedReport>, done: &mut CopyProgress| -> Result<bool, StoreError> {
            if pending.is_empty() {
                return Ok(true);
            }
            for outcome in to.insert_batch(pending)? {
                match outcome {
                    InsertOutcome::Inserted => done.inserted += 1,
                    InsertOutcome::Duplicate => done.present += 1,
                }
            }
            pending.clear();
            Ok(progress(done))
        };
    let mut stopped = false;
    from.for_each_since(i64::MIN, &mut |stored| {
        pending.push(VerifiedReport::parse(stored)?);
        done.read += 1;
        if pending.len() >= batch && !flush(&mut pending, &mut done)? {
            stopped = true;
            return Ok(false);
        }
        Ok(true)
    })?;
    if !stopped {
        flush(&mut pending, &mut done)?;
    }
    Ok(done)
}

/// One aggregated cell as ClickHouse answers it.
#[derive(Deserialize)]
struct AggRow {
    g_day: Option<i64>,
    g_hour: Option<i64>,
    g_cc: Option<String>,
    g_asn: Option<u32>,
    g_platform: Option<u8>,
    g_arm: Option<u8>,
    g_kind: Option<u8>,
    cnt: u64,
    agents: u64,
    v_none: u64,
    v_inc: u64,
    v_diff: u64,
    v_blocked: u64,
    f_ue: u64,
    f_host: u64,
    v_noref: u64,
    n: Vec<u64>,
    q: Vec<Vec<f64>>,
}

impl AggRow {
    /// The published cell, and its axis values (the order the sled store publishes cells in).
    fn into_cell(self) -> Result<(GroupKey, Cell), StoreError> {
        let bad = |what: &str| StoreError::Backend(format!("ClickHouse answered {what}"));
        let platform = match self.g_platform {
            Some(c) => Some(platform_of_code(c).ok_or_else(|| bad("an unknown platform code"))?),
            None => None,
        };
        let arm = match self.g_arm {
            Some(c) => Some(arm_of_code(c).ok_or_else(|| bad("an unknown arm code"))?),
            None => None,
        };
        let kind = match self.g_kind {
            Some(c) => Some(kind_of_code(c).ok_or_else(|| bad("an unknown stream kind"))?),
            None => None,
        };
        let country = match &self.g_cc {
            Some(c) => Some(
                <[u8; 2]>::try_from(c.as_bytes()).map_err(|_| bad("a country code not 2 bytes"))?,
            ),
            None => None,
        };
        if self.n.len() != FIGURE_COUNT
            || self.q.len() != FIGURE_COUNT
            || self.q.iter().any(|q| q.len() != 3)
        {
            return Err(bad("a malformed cell"));
        }
        let figures: [Option<Figure>; FIGURE_COUNT] = std::array::from_fn(|i| {
            (self.n[i] > 0).then(|| Figure {
                p10: self.q[i][0],
                median: self.q[i][1],
                p90: self.q[i][2],
            })
        });
        let verdicts = VerdictCounts {
            none: self.v_none,
            inconclusive: self.v_inc,
            differentiated: self.v_diff,
            blocked: self.v_blocked,
            no_reference: self.v_noref,
        };
        let key = GroupKey {
            day: self.g_day,
            hour: self.g_hour,
            country,
            asn: self.g_asn,
            platform,
            arm,
            kind,
        };
        let filing = FilingCounts {
            uploaded_elsewhere: self.f_ue,
            hosting: self.f_host,
        };
        let cell = Cell::new(&key, self.cnt, self.agents, figures, verdicts, filing);
        Ok((key, cell))
    }
}

impl ReportStore for ClickHouseStore {
    fn insert_batch(&self, batch: &[VerifiedReport]) -> Result<Vec<InsertOutcome>, StoreError> {
        let mut rows = Vec::with_capacity(batch.len());
        for v in batch {
            rows.push(Self::row(v, self.next_arrival(v.stored.received_at_ms))?);
        }
        let mut known = self.existing(&rows)?;
        let mut outcomes = Vec::with_capacity(rows.len());
        let mut body = Vec::with_capacity(rows.len() * 2048);
        for row in &rows {
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
        let sql = self.aggregate_sql(axes, filter, policy);
        let mut cells = Vec::new();
        self.http.rows(&sql, |row: AggRow| {
            cells.push(row.into_cell()?);
            Ok(true)
        })?;
        cells.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(cells.into_iter().map(|(_, c)| c).collect())
    }

    fn len(&self) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_credentials_are_refused() {
        let u = ClickHouseUrl::parse("clickhouse://db.example:9123/callwatch").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.database.as_deref()),
            ("db.example", 9123, Some("callwatch"))
        );
        let u = ClickHouseUrl::parse("http://127.0.0.1:8123/").unwrap();
        assert_eq!((u.port, u.database), (8123, None));
        assert_eq!(ClickHouseUrl::parse("http://h").unwrap().port, 8123);
        assert!(ClickHouseUrl::parse("https://h:8443").is_err());
        assert!(ClickHouseUrl::parse("http://u:p@h:8123").is_err());
        assert!(ClickHouseUrl::parse("http://h:8123/bad-name").is_err());
        assert!(ClickHouseUrl::parse("ftp://h").is_err());
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn chunked_bodies_decode() {
        let raw = b"4\r\nWiki\r\n6\r\npedia \r\n0\r\n\r\n";
        let mut out = String::new();
        Chunked {
            inner: &raw[..],
            left: 0,
            done: false,
        }
        .read_to_string(&mut out)
        .unwrap();
        assert_eq!(out, "Wikipedia ");
        assert_eq!(lit("a'b\\"), "'a\\'b\\\\'");
    }
}
