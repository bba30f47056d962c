//! callwatch-load: bounded load tools for the collector, on loopback only.
//!
//! `ingest`: signed reports from many simulated agents over real QUIC to an in-process collector
//! with its sled store, per batch size; next to the raw Ed25519 verification rate of the same
//! machine in the same run (the physical ceiling of a verifying collector).
//!
//! `aggregate`: fills a store with synthetic reports (default one million) and times the
//! aggregation API over HTTP for typical queries.
//!
//! Both take `--store clickhouse --clickhouse-url http://127.0.0.1:8123` to run the same load
//! against the ClickHouse store (a fresh database per run, dropped afterwards unless named with
//! `--clickhouse-database`), so the two backends can be compared on the same machine and data.
//!
//! Every run is bounded by its report count; nothing leaves 127.0.0.1 (or the ClickHouse URL).

use anyhow::{Context, Result};
use callwatch_agent::upload::{exchange, pinned_client_config};
use callwatch_collector::domain::VerifiedReport;
use callwatch_collector::ingest::RateLimits;
use callwatch_collector::store::{ClickHouseStore, ReportStore, SledStore};
use callwatch_collector::{serve, serve_with_store, ServeConfig};
use callwatch_proto::upload::{ReportStatus, Response};
use callwatch_proto::{Platform, SignedReport};
use callwatch_tests::corpus;
use callwatch_tests::seed::synthetic_report;
use clap::{Parser, Subcommand};
use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "callwatch-load",
    about = "Bounded loopback load tools for the callwatch collector (ingest, aggregation)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which store a run uses.
#[derive(clap::Args, Clone, Debug)]
struct StoreOpts {
    /// sled (embedded) or clickhouse.
    #[arg(long, default_value = "sled", value_parser = ["sled", "clickhouse"])]
    store: String,
    /// ClickHouse HTTP address (with --store clickhouse); credentials from
    /// CALLWATCH_CLICKHOUSE_USER / CALLWATCH_CLICKHOUSE_PASSWORD.
    #[arg(long = "clickhouse-url", default_value = "http://127.0.0.1:8123")]
    clickhouse_url: String,
    /// Use (and keep) this ClickHouse database instead of a fresh one per run.
    #[arg(long = "clickhouse-database")]
    clickhouse_database: Option<String>,
}

impl StoreOpts {
    fn clickhouse(&self) -> bool {
        self.store == "clickhouse"
    }

    /// Opens the ClickHouse store for run `run`: the named database, or a fresh one.
    fn open_clickhouse(&self, run: usize) -> Result<(Arc<ClickHouseStore>, bool)> {
        let (db, keep) = match &self.clickhouse_database {
            Some(db) => (db.clone(), true),
            None => (
                format!("callwatch_load_{}_{run}", std::process::id()),
                false,
            ),
        };
        let access = callwatch_collector::store::clickhouse::Access {
            user: std::env::var("CALLWATCH_CLICKHOUSE_USER").ok(),
            password: std::env::var("CALLWATCH_CLICKHOUSE_PASSWORD").ok(),
            ca_file: None,
        };
        let store = ClickHouseStore::open(&self.clickhouse_url, &db, &access)
            .with_context(|| format!("opening ClickHouse at {}", self.clickhouse_url))?;
        Ok((Arc::new(store), keep))
    }
}

/// Bytes below `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    total
}

#[derive(Subcommand)]
enum Command {
    /// Upload signed reports from simulated agents over QUIC; report reports/s acknowledged
    /// durably and ack latency per batch size, next to the raw Ed25519 verify rate.
    Ingest {
        /// Reports per batch-size run.
        #[arg(long, default_value_t = 20_000)]
        reports: usize,
        /// Batch sizes to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
        batches: Vec<usize>,
        /// Simulated agents (distinct keys); each holds its own QUIC connection.
        #[arg(long, default_value_t = 64)]
        agents: usize,
        /// Uploads in flight at once (agents uploading concurrently).
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Open loop instead: agents upload on their own schedule, batches starting at random
        /// (Poisson) times with this total rate of reports per second, however long the
        /// collector takes to answer; latency counts from each batch's scheduled start, so a
        /// collector falling behind shows as latency, not as a slower sender.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        rate: Option<u32>,
        #[command(flatten)]
        store: StoreOpts,
    },
    /// Fill a store with synthetic reports, then time aggregation queries over HTTP.
    Aggregate {
        #[arg(long, default_value_t = 1_000_000)]
        reports: usize,
        /// Reuse (or keep) the store in this folder instead of a temporary one.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Timed repetitions of each query.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Reports per insert while filling (default: 256 for sled, 10000 for ClickHouse).
        #[arg(long = "fill-batch")]
        fill_batch: Option<usize>,
        /// Agents of the synthetic mix (2,000: the published one-million figures; at ten
        /// million, 3,721 make about 96 reports per agent and day, the default schedule's).
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        agents: u32,
        /// Load the reports from this corpus file of signed reports, writing it first if it
        /// does not exist (signing ten million reports takes minutes; the file keeps them). Its
        /// reports' times are those of when it was written; the queries' time windows follow.
        #[arg(long)]
        corpus: Option<PathBuf>,
        /// sled: close (compact) and reopen the store every this many reports while filling,
        /// so the fill's disk use stays bounded (a fill's log grows several KB per report, more
        /// as the store grows, against ~1.2 KB per report compacted). 0: never.
        #[arg(long = "compact-every", default_value_t = 0)]
        compact_every: usize,
        /// sled: forget the store's published roll-ups (and the day a pass last rolled up to)
        /// and build them again as of the mix's time, its last day left open: for a store a
        /// collector (or an earlier run) rolled up by the clock, days after the mix.
        #[arg(long = "rebuild-roll-ups")]
        rebuild_roll_ups: bool,
        /// sled: roll up the mix's last day too, as a collector would once that day has closed
        /// (a pass never moves back: after this the last day stays rolled up in this store).
        #[arg(long = "close-last-day")]
        close_last_day: bool,
        /// Before each timed query, upload this many new reports of the mix's last day (one
        /// per batch, untimed): the day in progress written while it is read, as a collector
        /// sees it (ten million reports over 28 days arrive at about 4 a second). They stay in
        /// the store.
        #[arg(long = "uploads-between", default_value_t = 0)]
        uploads_between: usize,
        /// ClickHouse: answer every query in SQL from the raw rows, without the aggregate
        /// mirror a collector keeps (`clickhouse-mirror.sled` in --data, synced before the
        /// queries and timed).
        #[arg(long = "sql-only")]
        sql_only: bool,
        #[command(flatten)]
        store: StoreOpts,
    },
    /// Fill a fresh store with synthetic reports (the mix of `aggregate`), close it cleanly,
    /// and print its size on disk per report, per tree for sled.
    StoreSize {
        #[arg(long, default_value_t = 100_000)]
        reports: usize,
        /// Keep the store in this folder (it must not exist) instead of a temporary one.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Reports per insert (default: 256 for sled, 10000 for ClickHouse).
        #[arg(long = "fill-batch")]
        fill_batch: Option<usize>,
        /// sled as earlier releases wrote it: records uncompressed, no compaction at close (the
        /// next open compacts it).
        #[arg(long)]
        baseline: bool,
        #[command(flatten)]
        store: StoreOpts,
    },
}

/// One agent's batch: (agent index, its reports).
type Batch = (usize, Vec<SignedReport>);

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// `n` reports signed by `agents` keys, round robin.
fn signed_reports(n: usize, agents: usize, id_base: u32) -> Vec<SignedReport> {
    let keys: Vec<SigningKey> = (0..agents)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            SigningKey::from_bytes(&seed)
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let now = chrono::Utc::now();
    (0..n)
        .map(|i| {
            let platform = Platform::ALL[1 + i % 3];
            let started = now - chrono::Duration::minutes(rng.gen_range(10..60 * 24 * 7));
            let r = synthetic_report(&mut rng, id_base + i as u32, platform, started, false);
            SignedReport::sign(&r, &keys[i % agents]).expect("a synthetic report serialises")
        })
        .collect()
}

/// Signatures verified per second on one core: bare Ed25519 (the ceiling), and the collector's
/// full check (signature, JSON parse, validation).
fn verify_rates(reports: &[SignedReport]) -> (f64, f64) {
    let t = Instant::now();
    for r in reports {
        r.verify_signature().expect("valid signature");
    }
    let bare = reports.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for r in reports {
        r.verify().expect("valid report");
    }
    let full = reports.len() as f64 / t.elapsed().as_secs_f64();
    (bare, full)
}

/// One upload: its acknowledged count, checked against its length.
async fn upload(conn: &quinn::Connection, batch: Vec<SignedReport>) -> Result<usize> {
    let n = batch.len();
    match exchange(conn, batch).await? {
        Response::Ack { statuses } => {
            anyhow::ensure!(statuses.len() == n, "short ack");
            Ok(statuses
                .iter()
                .filter(|s| matches!(s, ReportStatus::Accepted))
                .count())
        }
        Response::Error { code, reason } => anyhow::bail!("refused ({code}): {reason}"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

async fn ingest(
    reports: usize,
    batches: Vec<usize>,
    agents: usize,
    concurrency: usize,
    rate: Option<u32>,
    store: StoreOpts,
) -> Result<()> {
    let agents = agents.max(1);
    let concurrency = concurrency.clamp(1, agents);
    eprintln!("signing {reports} reports from {agents} agents per run…");
    let sample = signed_reports(reports.min(5000), agents, 0);
    let (bare, full) = verify_rates(&sample);
    println!("raw Ed25519 verify_strict (1 core): {bare:.0}/s; full report check (signature + JSON + validation, 1 core): {full:.0}/s");
    println!("store: {}", store.store);
    match rate {
        Some(r) => println!(
            "open loop: {agents} agents uploading on their own schedule, {r} reports/s offered \
             in all; latency from each batch's scheduled start"
        ),
        None => println!("closed loop: {concurrency} uploads in flight"),
    }
    println!(
        "{:>6} {:>9} {:>12} {:>10} {:>10} {:>10}",
        "batch", "reports", "reports/s", "p50 ms", "p99 ms", "max ms"
    );
    for (run, &batch) in batches.iter().enumerate() {
        let root = tempfile::tempdir()?;
        let any: SocketAddr = "127.0.0.1:0".parse()?;
        let mut cfg = ServeConfig::new(root.path().join("collector"));
        (cfg.listen, cfg.http, cfg.reflectors) = (any, any, vec![any]);
        cfg.rate_limits = RateLimits::unlimited();
        cfg.max_connections_per_ip = agents + 16;
        cfg.max_connections = agents + 16;
        let mut clickhouse = None;
        let collector = if store.clickhouse() {
            let (ch, keep) = store.open_clickhouse(run)?;
            clickhouse = Some((ch.clone(), keep));
            serve_with_store(cfg, ch).await?
        } else {
            serve(cfg).await?
        };
        let mut pin = [0u8; 32];
        hex::decode_to_slice(&collector.pin, &mut pin)?;
        let all = signed_reports(reports, agents, (run as u32 + 1) << 24);
        // Each agent's own reports, in batches.
        let per_agent: Vec<Vec<Vec<SignedReport>>> = (0..agents)
            .map(|a| {
                let mine: Vec<SignedReport> = all.iter().skip(a).step_by(agents).cloned().collect();
                mine.chunks(batch.max(1)).map(|c| c.to_vec()).collect()
            })
            .collect();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        ep.set_default_client_config(pinned_client_config(pin)?);
        let mut conns = Vec::with_capacity(agents);
        for _ in 0..agents {
            conns.push(
                ep.connect(collector.quic_addr, "localhost")?
                    .await
                    .context("connecting")?,
            );
        }
        let work: Arc<Mutex<Vec<Batch>>> = Arc::new(Mutex::new(
            per_agent
                .into_iter()
                .enumerate()
                .flat_map(|(a, bs)| bs.into_iter().map(move |b| (a, b)))
                .rev()
                .collect(),
        ));
        let conns = Arc::new(conns);
        let start = Instant::now();
        let mut tasks = Vec::new();
        if let Some(rate) = rate {
            // Batches in the order the agents take turns, each at its scheduled time.
            let mut rng = rand::rngs::StdRng::seed_from_u64(run as u64);
            let batches_per_s = f64::from(rate) / batch.max(1) as f64;
            let mut due = Duration::ZERO;
            let mut all: Vec<Batch> = work
                .lock()
                .map(|mut w| w.drain(..).rev().collect())
                .unwrap_or_default();
            // Agents take turns: each one's first batch, then each one's second, …
            let mut turn = vec![0usize; agents];
            let mut keyed: Vec<(usize, Batch)> = all
                .drain(..)
                .map(|(agent, b)| {
                    turn[agent] += 1;
                    (turn[agent], (agent, b))
                })
                .collect();
            keyed.sort_by_key(|(t, (agent, _))| (*t, *agent));
            for (_, (agent, b)) in keyed {
                let gap: f64 = -(1.0 - rng.gen::<f64>()).ln() / batches_per_s;
                due += Duration::from_secs_f64(gap);
                let conns = conns.clone();
                let at = start + due;
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    // An upload that fails (a collector past its capacity drops a request it
                    // could not read within its timeout) is counted, not fatal: the agent
                    // would keep the reports and send them again later.
                    match upload(&conns[agent], b).await {
                        Ok(acked) => Ok::<_, anyhow::Error>((acked, vec![at.elapsed()])),
                        Err(_) => Ok((0, Vec::new())),
                    }
                }));
            }
        } else {
            for _ in 0..concurrency {
                let (work, conns) = (work.clone(), conns.clone());
                tasks.push(tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut acked = 0usize;
                    loop {
                        let next = work.lock().map(|mut w| w.pop()).unwrap_or(None);
                        let Some((agent, batch)) = next else { break };
                        let t = Instant::now();
                        acked += upload(&conns[agent], batch).await?;
                        latencies.push(t.elapsed());
                    }
                    Ok::<_, anyhow::Error>((acked, latencies))
                }));
            }
        }
        let tasks_total = tasks.len();
        let mut latencies = Vec::new();
        let mut acked = 0;
        for t in tasks {
            let (a, l) = t.await??;
            acked += a;
            latencies.extend(l);
        }
        let elapsed = start.elapsed();
        latencies.sort();
        // Open loop: one task per batch, and a failed one has no latency.
        let failed = if rate.is_some() {
            tasks_total - latencies.len()
        } else {
            0
        };
        anyhow::ensure!(
            acked == reports || (rate.is_some() && failed > 0),
            "{acked} of {reports} acknowledged"
        );
        if failed > 0 {
            println!(
                "{failed} of {tasks_total} uploads failed (not acknowledged: {} reports), \
                 the collector past its capacity",
                reports - acked
            );
        }
        // Nothing acknowledged lost; a failed upload may have been stored before its answer
        // was lost, never more than was sent.
        let held = collector.store.len();
        anyhow::ensure!(
            held >= acked && held <= reports && (failed > 0 || held == reports),
            "store holds {held}, {acked} acknowledged"
        );
        println!(
            "{:>6} {:>9} {:>12.0} {:>10} {:>10} {:>10}",
            batch,
            reports,
            acked as f64 / elapsed.as_secs_f64(),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(percentile(&latencies, 1.0)),
        );
        for c in conns.iter() {
            c.close(0u32.into(), b"done");
        }
        ep.wait_idle().await;
        collector.shutdown().await;
        if let Some((ch, false)) = clickhouse {
            ch.drop_database()?;
        }
    }
    Ok(())
}

/// Where the reports of a fill come from, and how a sled fill keeps its disk use bounded.
struct FillOpts {
    agents: usize,
    corpus: Option<PathBuf>,
    compact_every: usize,
    rebuild_roll_ups: bool,
    close_last_day: bool,
    uploads_between: usize,
    sql_only: bool,
}

/// New reports of the mix's last day, uploaded between timed queries
/// (`--uploads-between`).
struct Uploads {
    mix: corpus::Mix,
    /// The mix's last day (days since the epoch).
    today: i64,
    per_query: usize,
    uploaded: usize,
}

impl Uploads {
    fn new(agents: usize, now_ms: i64, per_query: usize) -> Result<Uploads> {
        let mut mix = corpus::Mix::new(agents, now_ms)?;
        // Report numbers no fill uses (ids are the number's low 32 bits), apart for runs
        // started seconds apart, so that each run's reports are new.
        let secs = chrono::Utc::now().timestamp().rem_euclid(1_000_000) as usize;
        mix.skip_to(2_000_000_000 + secs * 1_000);
        Ok(Uploads {
            mix,
            today: now_ms.div_euclid(86_400_000),
            per_query,
            uploaded: 0,
        })
    }

    /// Uploads the next `per_query` reports of the last day, one per batch.
    fn upload(&mut self, store: &dyn ReportStore) -> Result<()> {
        let mut sent = 0;
        while sent < self.per_query {
            let r = self.mix.next_verified()?;
            if r.report
                .started_at
                .timestamp_millis()
                .div_euclid(86_400_000)
                == self.today
            {
                let out = store.insert_batch(std::slice::from_ref(&r))?;
                anyhow::ensure!(
                    out == [callwatch_collector::store::InsertOutcome::Inserted],
                    "an upload between queries was not new: {out:?}"
                );
                sent += 1;
            }
        }
        self.uploaded += sent;
        Ok(())
    }
}

/// The reports of a fill: the synthetic mix made on the fly, or read from a corpus file.
enum Source {
    Mix(Box<corpus::Mix>),
    Corpus(Box<corpus::Reader>),
}

impl Source {
    /// The mix as of now, or the corpus at `path` (written first if missing; it must hold at
    /// least `reports` of `agents` agents).
    fn open(opts: &FillOpts, reports: usize) -> Result<Source> {
        let Some(path) = &opts.corpus else {
            let now = chrono::Utc::now().timestamp_millis();
            return Ok(Source::Mix(Box::new(corpus::Mix::new(opts.agents, now)?)));
        };
        if !path.exists() {
            let header = corpus::CorpusHeader {
                reports,
                agents: opts.agents,
                now_ms: chrono::Utc::now().timestamp_millis(),
            };
            eprintln!(
                "writing the corpus {}: {reports} signed reports of {} agents",
                path.display(),
                opts.agents
            );
            let t = Instant::now();
            corpus::write(path, header, |n| {
                eprintln!(
                    "  {n} reports ({:.0}/s)",
                    n as f64 / t.elapsed().as_secs_f64()
                )
            })?;
            println!(
                "corpus: {reports} signed reports written in {:.1} s, {} bytes ({} per report)",
                t.elapsed().as_secs_f64(),
                file_bytes(path),
                file_bytes(path) / reports.max(1) as u64
            );
        }
        let r = corpus::Reader::open(path)?;
        anyhow::ensure!(
            r.header.reports >= reports && r.header.agents == opts.agents,
            "{} holds {} reports of {} agents; asked for {reports} of {}: name another file, or \
             remove this one to write it again",
            path.display(),
            r.header.reports,
            r.header.agents,
            opts.agents
        );
        let written = chrono::DateTime::from_timestamp_millis(r.header.now_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default();
        println!(
            "corpus {}: {} reports of {} agents, written {written}",
            path.display(),
            r.header.reports,
            r.header.agents
        );
        Ok(Source::Corpus(Box::new(r)))
    }

    /// The mix's "now": its reports started in the 28 days before it.
    fn now_ms(&self) -> i64 {
        match self {
            Source::Mix(m) => m.now_ms(),
            Source::Corpus(r) => r.header.now_ms,
        }
    }

    fn next(&mut self) -> Result<VerifiedReport> {
        match self {
            Source::Mix(m) => m.next_verified(),
            Source::Corpus(r) => r
                .next_verified()?
                .context("the corpus ended before the fill did"),
        }
    }

    /// Skips the first `n` reports (a store filled that far before).
    fn skip(&mut self, n: usize) -> Result<()> {
        match self {
            Source::Mix(m) => m.skip_to(n),
            Source::Corpus(r) => {
                for _ in 0..n {
                    r.next_signed()?;
                }
            }
        }
        Ok(())
    }
}

fn file_bytes(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

async fn aggregate(
    reports: usize,
    data: Option<PathBuf>,
    repeat: usize,
    fill_batch: Option<usize>,
    fill_opts: FillOpts,
    opts: StoreOpts,
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = data.unwrap_or_else(|| tmp.path().join("collector"));
    std::fs::create_dir_all(&dir)?;
    let fill_batch = fill_batch
        .unwrap_or(if opts.clickhouse() { 10_000 } else { 256 })
        .max(1);
    let mut source = Source::open(&fill_opts, reports)?;
    let now_ms = source.now_ms();
    let mut clickhouse = None;
    let mut sled = None;
    let store: Arc<dyn ReportStore> = if opts.clickhouse() {
        let (ch, keep) = opts.open_clickhouse(0)?;
        let have = ch.len();
        source.skip(have)?;
        let t = Instant::now();
        // The corpus's reports are all new: inserted without the per-batch duplicate check,
        // which at millions of rows costs more than the insert (see `insert_new`).
        fill_with(
            &mut |b| ch.insert_new(b).map_err(Into::into),
            have,
            reports,
            fill_batch,
            &mut source,
        )?;
        if have < reports {
            println!(
                "filled {} reports in {:.1} s ({:.0}/s, {fill_batch} per insert, no duplicate \
                 check)",
                reports - have,
                t.elapsed().as_secs_f64(),
                (reports - have) as f64 / t.elapsed().as_secs_f64()
            );
        }
        let ch = if fill_opts.sql_only {
            ch
        } else {
            // As a collector keeps it: synced before the queries (and by no clock meanwhile:
            // the roll-ups as of the mix's time, its last day open).
            let ch = Arc::into_inner(ch).context("the ClickHouse store is shared")?;
            let path = callwatch_collector::store::config::mirror_path(&dir);
            let ch = ch.with_mirror(
                &path,
                &callwatch_collector::domain::Policy::default(),
                std::time::Duration::from_secs(24 * 3600),
            )?;
            let t = Instant::now();
            let stats = ch
                .sync_mirror(now_ms)?
                .context("a mirror was just attached")?;
            println!(
                "aggregate mirror synced in {:.1} s: {} days read whole, {} appended to ({} \
                 observations), {} dropped; {} bytes on disk",
                t.elapsed().as_secs_f64(),
                stats.days,
                stats.appended,
                stats.observations,
                stats.dropped,
                dir_bytes(&path)
            );
            Arc::new(ch)
        };
        clickhouse = Some((ch.clone(), keep));
        ch
    } else {
        let path = callwatch_collector::store::config::sled_path(&dir);
        let t = Instant::now();
        let mut s = SledStore::open(&path)?;
        eprintln!(
            "opened the sled store ({} reports) in {:.1} s",
            s.len(),
            t.elapsed().as_secs_f64()
        );
        let have = s.len();
        source.skip(have)?;
        let t_fill = Instant::now();
        let mut at = have;
        let mut peak = dir_bytes(&path);
        while at < reports {
            let to = match fill_opts.compact_every {
                0 => reports,
                n => reports.min((at / n + 1) * n),
            };
            fill(&s, at, to, fill_batch, &mut source)?;
            at = to;
            peak = peak.max(dir_bytes(&path));
            if fill_opts.compact_every > 0 {
                let t = Instant::now();
                s.close()?;
                s = SledStore::open(&path)?;
                eprintln!(
                    "  compacted and reopened at {at} reports in {:.1} s: {} bytes on disk",
                    t.elapsed().as_secs_f64(),
                    dir_bytes(&path)
                );
            }
        }
        if have < reports {
            println!(
                "filled {} reports in {:.1} s ({:.0}/s, {fill_batch} per insert{}); the store \
                 took at most {peak} bytes on disk while filling",
                reports - have,
                t_fill.elapsed().as_secs_f64(),
                (reports - have) as f64 / t_fill.elapsed().as_secs_f64(),
                match fill_opts.compact_every {
                    0 => String::new(),
                    n => format!(", compacted every {n}, compactions included"),
                }
            );
        }
        let s = Arc::new(s);
        sled = Some(s.clone());
        s
    };
    if let Some(s) = &sled {
        // As a collector at the mix's time would: every day rolled up but the mix's last, which
        // is still open then (queries read it from its cells).
        if fill_opts.rebuild_roll_ups {
            s.drop_rollups()?;
        }
        let t = Instant::now();
        let today = now_ms.div_euclid(86_400_000) + i64::from(fill_opts.close_last_day);
        let stats = s.roll_up(
            callwatch_collector::domain::Policy::default().min_agents,
            today,
        )?;
        println!(
            "published roll-ups: {} (day, family)s and {} (month, family)s recomputed in {:.1} s{}; \
             {} (day, family)s of the mix's last day left open (the day in progress: read \
             from memory)",
            stats.days,
            stats.months,
            t.elapsed().as_secs_f64(),
            if stats.rebuilt { ", all rebuilt" } else { "" },
            s.rollups_behind()
        );
    }
    let n = store.len().max(1) as u64;
    match &clickhouse {
        Some((ch, _)) => {
            let (bytes, rows) = ch.disk_usage()?;
            println!(
                "ClickHouse {}: {bytes} bytes on disk for {rows} rows ({} bytes/report)",
                ch.server_version()?,
                bytes / n
            );
        }
        None => {
            let bytes = dir_bytes(&callwatch_collector::store::config::sled_path(&dir));
            println!("sled: {bytes} bytes on disk ({} bytes/report)", bytes / n);
        }
    }
    let mut uploads = match fill_opts.uploads_between {
        0 => None,
        n => Some(Uploads::new(fill_opts.agents, now_ms, n)?),
    };
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let mut cfg = ServeConfig::new(tmp.path().join("serve"));
    (cfg.listen, cfg.http, cfg.reflectors) = (any, any, vec![any]);
    // Rolled up above as of the mix's time; the collector's own passes go by the clock.
    cfg.roll_up_every = None;
    let collector = serve_with_store(cfg, store.clone()).await?;
    // The event detector's first pass over the whole history runs when the collector starts;
    // the events feed answers once it is done, so no timed query competes with it.
    // A request that outlasts the API's time limit, or finds the pass holding the events'
    // slot, is answered 503: asked again after the Retry-After the answer gives (at most 120
    // times).
    let t = Instant::now();
    let mut status = 503;
    for _ in 0..120 {
        let reply =
            callwatch_tests::http::request(collector.http_addr, "/api/v1/events", &[]).await?;
        status = reply.status;
        if status != 503 {
            break;
        }
        let wait = reply
            .header("retry-after")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(1)
            .clamp(1, 30);
        tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    }
    anyhow::ensure!(status == 200, "the events feed: {status}");
    println!(
        "the event detector's first pass: done {:.1} s after start (waited for, untimed)",
        t.elapsed().as_secs_f64()
    );
    println!(
        "aggregation API over HTTP, {} stored reports, {repeat} runs each",
        store.len()
    );
    println!(
        "{:>58} {:>9} {:>9} {:>7}",
        "query", "p50 ms", "max ms", "cells"
    );
    for q in [
        "axis_x=country&axis_y=platform",
        "axis_x=asn&axis_y=platform",
        "axis_x=day&axis_y=arm&country=RU&platform=whatsapp",
        "axis_x=hour&country=DE&since=SINCE30&until=UNTIL",
        "axis_x=day&axis_y=country&since=2020-01-01",
    ] {
        // The hour axis answers at most 31 days in one query: the mix's last 30.
        let since = chrono::DateTime::from_timestamp_millis(now_ms - 30 * 86_400_000)
            .context("the mix's time")?
            .format("%Y-%m-%d");
        // Until the day after the mix's last (a corpus read days after it was written).
        let until = chrono::DateTime::from_timestamp_millis(now_ms + 86_400_000)
            .context("the mix's time")?
            .format("%Y-%m-%d");
        let q = q
            .replace("SINCE30", &since.to_string())
            .replace("UNTIL", &until.to_string());
        let q = q.as_str();
        let mut times = Vec::new();
        let mut cells = 0;
        for _ in 0..repeat.max(1) {
            if let Some(u) = uploads.as_mut() {
                u.upload(store.as_ref())?;
            }
            let t = Instant::now();
            let (status, body) = callwatch_tests::http::get(
                collector.http_addr,
                &format!("/api/v1/aggregation?{q}"),
            )
            .await?;
            times.push(t.elapsed());
            anyhow::ensure!(status == 200, "{q}: {status} {body}");
            let v: serde_json::Value = serde_json::from_str(&body)?;
            cells = v["result"].as_array().map(|a| a.len()).unwrap_or(0);
        }
        times.sort();
        println!(
            "{q:>58} {:>9} {:>9} {cells:>7}",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 1.0))
        );
    }
    collector.shutdown().await;
    if let Some(sled) = sled {
        roll_up_against_hours(&sled, repeat, now_ms, uploads.as_mut())?;
    }
    if let Some(u) = &uploads {
        println!(
            "uploaded {} reports of the mix's last day, {} before each timed query (untimed)",
            u.uploaded, u.per_query
        );
    }
    if let Some((ch, _)) = &clickhouse {
        // What a collector's sync does each minute after uploads: the changed days again.
        let t = Instant::now();
        if let Some(stats) = ch.sync_mirror(now_ms)? {
            println!(
                "aggregate mirror synced again in {:.1} s: {} days read whole, {} appended to \
                 ({} observations)",
                t.elapsed().as_secs_f64(),
                stats.days,
                stats.appended,
                stats.observations
            );
        }
    }
    if let Some((ch, false)) = clickhouse {
        ch.drop_database()?;
    }
    Ok(())
}

/// Fills `store` from `have` to `reports` reports of `source` (positioned at `have`),
/// `fill_batch` per insert; prints the rate.
fn fill(
    store: &dyn ReportStore,
    have: usize,
    reports: usize,
    fill_batch: usize,
    source: &mut Source,
) -> Result<()> {
    fill_with(
        &mut |b| store.insert_batch(b).map(drop).map_err(Into::into),
        have,
        reports,
        fill_batch,
        source,
    )
}

/// [`fill`], each batch given to `insert`.
fn fill_with(
    insert: &mut dyn FnMut(&[VerifiedReport]) -> Result<()>,
    have: usize,
    reports: usize,
    fill_batch: usize,
    source: &mut Source,
) -> Result<()> {
    if have >= reports {
        return Ok(());
    }
    eprintln!("filling the store: {have} → {reports} reports");
    let t = Instant::now();
    let mut i = have;
    while i < reports {
        let n = (reports - i).min(fill_batch);
        let batch = (0..n).map(|_| source.next()).collect::<Result<Vec<_>>>()?;
        insert(&batch)?;
        i += n;
        if i % 50_000 < n {
            eprintln!(
                "  {i} reports ({:.0}/s)",
                (i - have) as f64 / t.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// In process, same store, same run: each query answered with the day roll-up (what the API
/// does) and from the hourly cells alone (the baseline), alternately; the answers must agree.
fn roll_up_against_hours(
    sled: &SledStore,
    repeat: usize,
    now: i64,
    mut uploads: Option<&mut Uploads>,
) -> Result<()> {
    use callwatch_collector::domain::{Axis, Filter, Policy};
    let week_ago = now - 7 * 86_400_000;
    let queries: [(&str, Vec<Axis>, Filter); 6] = [
        (
            "country x platform",
            vec![Axis::Country, Axis::Platform],
            Filter::default(),
        ),
        (
            "asn x platform",
            vec![Axis::Asn, Axis::Platform],
            Filter::default(),
        ),
        (
            "day x arm, RU whatsapp",
            vec![Axis::Day, Axis::Arm],
            Filter {
                country: Some("RU".into()),
                platform: Some(Platform::Whatsapp),
                ..Filter::default()
            },
        ),
        (
            "day x country",
            vec![Axis::Day, Axis::Country],
            Filter::default(),
        ),
        (
            "country x platform, last 7 days (partial edges)",
            vec![Axis::Country, Axis::Platform],
            Filter {
                since_ms: Some(week_ago),
                until_ms: Some(now),
                ..Filter::default()
            },
        ),
        (
            "hour, DE, last 30 days (days ms: hourly too)",
            vec![Axis::Hour],
            Filter {
                country: Some("DE".into()),
                since_ms: Some(now - 30 * 86_400_000),
                until_ms: Some(now + 86_400_000),
                ..Filter::default()
            },
        ),
    ];
    let policy = Policy::default();
    println!();
    println!(
        "in process, same store: the API's path (published roll-ups where current), day cells \
         (the previous path) and hourly cells only, {} runs each, p50",
        repeat.max(1)
    );
    println!(
        "{:>50} {:>10} {:>10} {:>10} {:>7} {:>6}",
        "query", "API ms", "days ms", "hourly ms", "ratio", "cells"
    );
    for (label, axes, filter) in queries {
        let (mut api, mut days, mut fine) = (Vec::new(), Vec::new(), Vec::new());
        let mut cells = 0;
        for _ in 0..repeat.max(1) {
            if let Some(u) = uploads.as_deref_mut() {
                u.upload(sled)?;
            }
            let t = Instant::now();
            let a = sled.aggregate(&axes, &filter, &policy)?;
            api.push(t.elapsed());
            let t = Instant::now();
            let b = sled.aggregate_days(&axes, &filter, &policy)?;
            days.push(t.elapsed());
            let t = Instant::now();
            let c = sled.aggregate_fine(&axes, &filter, &policy)?;
            fine.push(t.elapsed());
            anyhow::ensure!(a == b, "{label}: the roll-ups and the day cells disagree");
            anyhow::ensure!(
                b == c,
                "{label}: the day cells and the hourly cells disagree"
            );
            cells = a.len();
        }
        for v in [&mut api, &mut days, &mut fine] {
            v.sort();
        }
        let (a, d, f) = (
            percentile(&api, 0.5),
            percentile(&days, 0.5),
            percentile(&fine, 0.5),
        );
        println!(
            "{label:>50} {:>10} {:>10} {:>10} {:>7.1} {cells:>6}",
            ms(a),
            ms(d),
            ms(f),
            d.as_secs_f64() / a.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}

/// `store-size`: fills a fresh store, closes it, and prints what it takes on disk.
fn store_size(
    reports: usize,
    data: Option<PathBuf>,
    fill_batch: Option<usize>,
    baseline: bool,
    opts: StoreOpts,
) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let fill_batch = fill_batch
        .unwrap_or(if opts.clickhouse() { 10_000 } else { 256 })
        .max(1);
    // What the reports themselves are: the exact signed bytes (body, key, signature).
    let now = chrono::Utc::now().timestamp_millis();
    let sample = 2_000.min(reports.max(1));
    let mut mix = corpus::Mix::new(2000, now)?;
    let mut signed = 0;
    for _ in 0..sample {
        let s = mix.next_signed()?;
        signed += s.body.len() + s.key.len() + s.signature.len();
    }
    let mut source = Source::Mix(Box::new(corpus::Mix::new(2000, now)?));
    println!(
        "mix: {reports} synthetic reports, 2,000 agents, 10 countries × 4 networks, 5 platforms, \
         28 days; signed bytes {} per report (mean of {sample})",
        signed / sample
    );
    if opts.clickhouse() {
        let (ch, keep) = opts.open_clickhouse(0)?;
        let t = Instant::now();
        fill(ch.as_ref(), 0, reports, fill_batch, &mut source)?;
        let fill_secs = t.elapsed().as_secs_f64();
        ch.optimize()?;
        let (bytes, rows) = ch.disk_usage()?;
        println!(
            "ClickHouse {}: filled in {fill_secs:.1} s ({:.0}/s, {fill_batch} per insert); {bytes} \
             bytes on disk for {rows} rows: {} bytes/report",
            ch.server_version()?,
            reports as f64 / fill_secs,
            bytes / rows.max(1)
        );
        if !keep {
            ch.drop_database()?;
        }
        return Ok(());
    }
    let dir = match data {
        Some(d) => {
            anyhow::ensure!(
                !d.exists(),
                "{} exists; store-size fills a fresh store",
                d.display()
            );
            d
        }
        None => tmp.path().join("reports.sled"),
    };
    let store = SledStore::open(&dir)?;
    // The baseline: records as earlier releases wrote them, the store closed as they did.
    store.write_plain_records(baseline);
    let t = Instant::now();
    fill(&store, 0, reports, fill_batch, &mut source)?;
    let fill_secs = t.elapsed().as_secs_f64();
    let n = reports.max(1) as u64;
    if !baseline {
        // A serving collector keeps its published roll-ups of the closed days: counted here.
        let t = Instant::now();
        let today = chrono::Utc::now().timestamp_millis().div_euclid(86_400_000);
        let stats = store.roll_up(
            callwatch_collector::domain::Policy::default().min_agents,
            today,
        )?;
        println!(
            "published roll-ups of {} (day, family)s built in {:.1} s",
            stats.days,
            t.elapsed().as_secs_f64()
        );
    }
    // Every batch is flushed before it is acknowledged.
    let filled = dir_bytes(&dir);
    println!(
        "sled{}: filled in {fill_secs:.1} s ({:.0}/s, {fill_batch} per insert): {filled} bytes on \
         disk, {} bytes/report",
        if baseline {
            " (baseline: plain records, no compaction)"
        } else {
            ""
        },
        reports as f64 / fill_secs,
        filled / n
    );
    // What the trees hold (sled's overhead and its log's garbage aside).
    println!(
        "{:>12} {:>9} {:>12} {:>12} {:>14}",
        "tree", "entries", "key bytes", "value bytes", "bytes/report"
    );
    let mut live = 0;
    for t in store.tree_sizes()? {
        let b = t.key_bytes + t.value_bytes;
        live += b;
        println!(
            "{:>12} {:>9} {:>12} {:>12} {:>14.1}",
            t.name,
            t.entries,
            t.key_bytes,
            t.value_bytes,
            b as f64 / n as f64
        );
    }
    println!(
        "{:>12} {:>9} {:>12} {:>12} {:>14.1}",
        "all trees",
        "",
        "",
        "",
        live as f64 / n as f64
    );
    let t = Instant::now();
    if baseline {
        drop(store);
    } else {
        store.close()?;
    }
    let bytes = dir_bytes(&dir);
    println!(
        "closed in {:.1} s: {bytes} bytes on disk, {} bytes/report",
        t.elapsed().as_secs_f64(),
        bytes / n
    );
    let t = Instant::now();
    drop(SledStore::open(&dir)?);
    println!(
        "reopened in {:.1} s (a store not compacted at its close is at its open): {} bytes on disk",
        t.elapsed().as_secs_f64(),
        dir_bytes(&dir)
    );
    println!(
        "sled's overhead and log garbage after closing: {:.1} bytes/report",
        (bytes as f64 - live as f64) / n as f64
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    // The in-process collector's log, when asked for (RUST_LOG=debug, …).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let result = match Cli::parse().command {
        Command::Ingest {
            reports,
            batches,
            agents,
            concurrency,
            store,
            rate,
        } => ingest(reports, batches, agents, concurrency, rate, store).await,
        Command::Aggregate {
            reports,
            data,
            repeat,
            fill_batch,
            agents,
            corpus,
            compact_every,
            rebuild_roll_ups,
            close_last_day,
            uploads_between,
            sql_only,
            store,
        } => {
            let fill = FillOpts {
                agents: agents as usize,
                corpus,
                compact_every,
                rebuild_roll_ups,
                close_last_day,
                uploads_between,
                sql_only,
            };
            aggregate(reports, data, repeat, fill_batch, fill, store).await
        }
        Command::StoreSize {
            reports,
            data,
            fill_batch,
            baseline,
            store,
        } => store_size(reports, data, fill_batch, baseline, store),
    };
    if let Err(e) = result {
        eprintln!("callwatch-load: {e:#}");
        std::process::exit(1);
    }
}
