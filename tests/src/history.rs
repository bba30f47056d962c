//! Simulated histories for the event detector (`callwatch_collector::domain::events`): network
//! months of hourly test counts under null models and restrictions with known onsets and
//! recoveries, and the detector's false events, delays and onset-hour errors over them
//! (`callwatch-events`, docs/EVENTS.md).
//!
//! Each simulated network has agents, each on its own network prefix, each testing a number of
//! times an hour while it is active; every test is found `differentiated` with a probability
//! the model sets for that agent and hour. The detector reads exactly what the store's fine
//! cells give it: per hour, the tests judged and found differentiated, and the distinct agents
//! and prefixes behind each.

use callwatch_collector::domain::events::{Detector, Event, EventKind, HourEvidence, SeriesKey};
use callwatch_proto::Platform;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// Hours in a simulated network month.
pub const MONTH_HOURS: i64 = 30 * 24;

/// The verdict's published upper bound on its false-positive rate (docs/DETECTION.md: the 95 %
/// Clopper–Pearson upper bound of every null model is ≤ 1 %): the null models' rate, five
/// times the verdict's α.
pub const NULL_RATE: f64 = 0.01;

/// What a network month looks like.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// Agents on it (each on its own prefix).
    pub agents: usize,
    /// Tests an active agent runs per hour.
    pub tests_per_hour: u32,
    /// Chance an agent is active in a given hour (agents come and go in runs: an active agent
    /// stays active with probability `1 - 1/run`, an inactive one stays inactive likewise).
    pub availability: f64,
    /// Mean length of an agent's active or inactive run, hours.
    pub run_hours: f64,
    /// Whole days without any data, chosen at random (outages, the collector down).
    pub gap_days: u32,
    /// The null's per-test rate of `differentiated`.
    pub null: NullModel,
    /// Agents that find every test differentiated whatever the network does (broken home
    /// routers): never enough for an event while fewer than k.
    pub broken_agents: usize,
    /// A restriction, if any.
    pub restriction: Option<Restriction>,
}

/// How `differentiated` arises without differential treatment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NullModel {
    /// Every test independently at [`NULL_RATE`].
    Bernoulli,
    /// The rate varies hour to hour (network-wide bad hours): each hour's rate drawn from a
    /// Beta distribution with mean [`NULL_RATE`] and this concentration (α + β; smaller is
    /// burstier).
    Overdispersed(f64),
    /// Bernoulli at [`NULL_RATE`], but each hour with probability `.0` the whole network's
    /// rate is `.1` for that hour (a route flap on the platform's port, a bad reflector hour).
    BadHours(f64, f64),
}

/// A restriction switched on at a known hour.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Restriction {
    pub onset: i64,
    /// `None`: it never ends within the month.
    pub end: Option<i64>,
    /// Share of the network's agents it hits (their prefixes).
    pub share_of_agents: f64,
    /// A hit agent's per-test rate of `differentiated` while it holds (a full block ≈ 1; a
    /// partial throttle that the verdict catches in most tests lower).
    pub rate: f64,
}

/// What one simulated month held, and what the detector said of it.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub truth: Option<Restriction>,
    pub hours: BTreeMap<i64, HourEvidence>,
}

fn beta(rng: &mut ChaCha8Rng, mean: f64, concentration: f64) -> f64 {
    // Beta(a, b) from two Gamma draws (Marsaglia–Tsang, with the a < 1 boost).
    fn gamma(rng: &mut ChaCha8Rng, a: f64) -> f64 {
        if a < 1.0 {
            let u: f64 = rng.gen::<f64>().max(f64::MIN_POSITIVE);
            return gamma(rng, a + 1.0) * u.powf(1.0 / a);
        }
        let d = a - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x: f64 = normal(rng);
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u: f64 = rng.gen();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }
    fn normal(rng: &mut ChaCha8Rng) -> f64 {
        let u1: f64 = rng.gen::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.gen();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    let a = mean * concentration;
    let b = (1.0 - mean) * concentration;
    let x = gamma(rng, a);
    let y = gamma(rng, b);
    if x + y > 0.0 {
        x / (x + y)
    } else {
        0.0
    }
}

/// One simulated network month (hours `0..MONTH_HOURS`), seeded.
pub fn simulate(net: &Network, seed: u64) -> BTreeMap<i64, HourEvidence> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let total = net.agents + net.broken_agents;
    let hit: Vec<bool> = (0..total)
        .map(|i| {
            i < net.agents
                && net
                    .restriction
                    .is_some_and(|r| (i as f64) < r.share_of_agents * net.agents as f64)
        })
        .collect();
    let gaps: Vec<i64> = (0..net.gap_days)
        .map(|_| rng.gen_range(0..MONTH_HOURS / 24))
        .collect();
    // A two-state chain per agent: active runs last `run_hours` on average, and the share of
    // hours active is `availability`.
    let a = net.availability.clamp(0.0, 1.0);
    let p_off = if a >= 1.0 {
        0.0
    } else {
        1.0 / net.run_hours.max(1.0)
    };
    let p_on = if a >= 1.0 {
        1.0
    } else {
        (p_off * a / (1.0 - a)).min(1.0)
    };
    let mut active: Vec<bool> = (0..total).map(|_| rng.gen_bool(a)).collect();
    let mut out = BTreeMap::new();
    for hour in 0..MONTH_HOURS {
        // Each agent's run continues or flips; flips keep the long-run availability.
        for on in active.iter_mut() {
            let p_flip = if *on { p_off } else { p_on };
            if rng.gen_bool(p_flip) {
                *on = !*on;
            }
        }
        if gaps.contains(&(hour / 24)) {
            continue;
        }
        let null_rate = match net.null {
            NullModel::Bernoulli => NULL_RATE,
            NullModel::Overdispersed(c) => beta(&mut rng, NULL_RATE, c),
            NullModel::BadHours(p, rate) => {
                if rng.gen_bool(p) {
                    rate
                } else {
                    NULL_RATE
                }
            }
        };
        let restricted = net
            .restriction
            .is_some_and(|r| hour >= r.onset && r.end.is_none_or(|e| hour < e));
        let mut e = HourEvidence::default();
        for i in 0..total {
            if !active[i] {
                continue;
            }
            // Agents rotate keys daily and prefix tags are keyed per day: one volunteer is a
            // new agent and a new prefix each day, as the collector sees them. The collector
            // draws its tag key at random, so a prefix's tag orders independently of its
            // agent's key: the two are scrambled apart (never the same bytes).
            let id = ((i as u64 + 1) << 32 | (hour / 24) as u64).to_be_bytes();
            let tag = scramble(seed, u64::from_be_bytes(id)).to_be_bytes();
            let rate = if i >= net.agents {
                1.0
            } else if restricted && hit[i] {
                net.restriction.map(|r| r.rate).unwrap_or(0.0)
            } else {
                null_rate
            };
            for _ in 0..net.tests_per_hour {
                e.judged += 1;
                e.agents.insert(id);
                e.prefixes.insert(tag);
                if rng.gen_bool(rate.clamp(0.0, 1.0)) {
                    e.differentiated += 1;
                    *e.flags.entry((id, tag)).or_default() += 1;
                }
            }
        }
        if e.judged > 0 {
            out.insert(hour, e);
        }
    }
    out
}

/// A prefix tag for an agent's id: splitmix64's finaliser over the id and the seed, so tags
/// order independently of the agents' ids (as the collector's keyed tags do).
fn scramble(seed: u64, id: u64) -> u64 {
    let mut x = id ^ seed.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Simulates one month and runs the detector over it.
pub fn run(net: &Network, detector: &Detector, seed: u64) -> Outcome {
    let hours = simulate(net, seed);
    let series = SeriesKey::new("RU", Some(64500), Platform::Whatsapp);
    let events = detector.detect(series, &hours, MONTH_HOURS);
    Outcome {
        events,
        truth: net.restriction,
        hours,
    }
}

/// What the detector did over many months of one scenario.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    pub months: usize,
    /// Onsets with no restriction under way (none, or before its onset, or after its end
    /// without an open onset to end).
    pub false_onsets: usize,
    /// Recoveries while the restriction still held.
    pub false_recoveries: usize,
    /// Restrictions whose onset was found (an onset at or after it, before its end).
    pub onsets_found: usize,
    pub restrictions: usize,
    /// Hours from the true onset to the end of the hour in which the detector declared it.
    pub delays: Vec<i64>,
    /// The estimated onset hour minus the true one.
    pub errors: Vec<i64>,
    /// How often the true onset hour lay in the support interval.
    pub covered: usize,
    /// Ended restrictions whose recovery was found, and the delays and errors of those.
    pub recoveries_found: usize,
    pub ended: usize,
    pub recovery_delays: Vec<i64>,
    pub recovery_errors: Vec<i64>,
    /// Months a restriction held for (restricted network-months, for false recoveries).
    pub restricted_months: f64,
}

impl Tally {
    /// Scores one month's events against its truth.
    pub fn add(&mut self, o: &Outcome) {
        self.months += 1;
        let Some(r) = o.truth else {
            self.false_onsets += o
                .events
                .iter()
                .filter(|e| e.kind == EventKind::Onset)
                .count();
            return;
        };
        self.restrictions += 1;
        let end = r.end.unwrap_or(MONTH_HOURS);
        self.restricted_months += (end - r.onset) as f64 / MONTH_HOURS as f64;
        let mut found_onset = false;
        let mut found_recovery = false;
        let mut open = false;
        for e in &o.events {
            match e.kind {
                EventKind::Onset => {
                    let during = e.detected >= r.onset && e.detected < end;
                    // An onset declared after the end (a lagging detector) still counts as
                    // finding this restriction when the change began before its end.
                    let of_this = during || (e.detected >= end && e.began < end);
                    if of_this && !found_onset {
                        found_onset = true;
                        self.onsets_found += 1;
                        // Declared once hour `detected` has been read: at its end at the latest.
                        self.delays.push(e.detected + 1 - r.onset);
                        self.errors.push(e.began - r.onset);
                        if e.began_lo <= r.onset && r.onset <= e.began_hi {
                            self.covered += 1;
                        }
                    } else if !of_this || found_onset && e.detected < end {
                        self.false_onsets += 1;
                    }
                    open = true;
                }
                EventKind::Recovery => {
                    if e.detected < end {
                        self.false_recoveries += 1;
                    } else if r.end.is_some() && open && !found_recovery {
                        found_recovery = true;
                        self.recoveries_found += 1;
                        self.recovery_delays.push(e.detected + 1 - end);
                        self.recovery_errors.push(e.began - end);
                    }
                    open = false;
                }
            }
        }
        if r.end.is_some() {
            self.ended += 1;
        }
    }
}

/// The value at quantile `q` (nearest rank) of `v`, or `None` when empty.
pub fn quantile(v: &[i64], q: f64) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    Some(s[i])
}

/// A null network of `agents` agents testing `tests_per_hour` times an hour.
pub fn null_network(agents: usize, tests_per_hour: u32, null: NullModel) -> Network {
    Network {
        agents,
        tests_per_hour,
        availability: 0.8,
        run_hours: 12.0,
        gap_days: 2,
        null,
        broken_agents: 0,
        restriction: None,
    }
}

/// The scenarios docs/EVENTS.md reports, by name.
pub fn scenarios() -> Vec<(&'static str, Network)> {
    let restricted = |agents: usize, share: f64, rate: f64, end: Option<i64>| Network {
        restriction: Some(Restriction {
            onset: 10 * 24 + 7,
            end,
            share_of_agents: share,
            rate,
        }),
        availability: 1.0,
        gap_days: 0,
        ..null_network(agents, 1, NullModel::Bernoulli)
    };
    vec![
        (
            "null: 3 agents, hourly",
            null_network(3, 1, NullModel::Bernoulli),
        ),
        (
            "null: 10 agents, 4 tests an hour",
            null_network(10, 4, NullModel::Bernoulli),
        ),
        (
            "null: 30 agents, 4 tests an hour",
            null_network(30, 4, NullModel::Bernoulli),
        ),
        (
            "null: 10 agents, rate varying by hour (Beta, mean 1 %, concentration 50)",
            null_network(10, 4, NullModel::Overdispersed(50.0)),
        ),
        (
            "null: 10 agents, one hour in 100 at 30 %",
            null_network(10, 4, NullModel::BadHours(0.01, 0.3)),
        ),
        (
            "null: 10 agents, rate varying by hour (Beta, mean 1 %, concentration 2)",
            null_network(10, 4, NullModel::Overdispersed(2.0)),
        ),
        (
            "null: 10 agents and 2 broken ones (k − 1)",
            Network {
                broken_agents: 2,
                ..null_network(10, 4, NullModel::Bernoulli)
            },
        ),
        (
            "full block, 3 agents hourly, ends after 10 days",
            restricted(3, 1.0, 0.99, Some(20 * 24 + 7)),
        ),
        (
            "full block, 10 agents hourly, never ends",
            restricted(10, 1.0, 0.99, None),
        ),
        (
            "throttle caught in 60 % of tests, 6 agents hourly, ends after 10 days",
            restricted(6, 1.0, 0.6, Some(20 * 24 + 7)),
        ),
        (
            "half the agents blocked (6 of 12), hourly, ends after 10 days",
            restricted(12, 0.5, 0.99, Some(20 * 24 + 7)),
        ),
        (
            "weak: caught in 30 % of tests, 10 agents hourly, never ends",
            restricted(10, 1.0, 0.3, None),
        ),
    ]
}

/// One scenario's tally over `months` seeded months.
pub fn tally(net: &Network, detector: &Detector, months: usize, seed: u64) -> Tally {
    let mut t = Tally::default();
    for m in 0..months as u64 {
        t.add(&run(net, detector, seed.wrapping_add(m)));
    }
    t
}

fn hours(v: Option<i64>) -> String {
    v.map(|h| h.to_string()).unwrap_or_else(|| "–".into())
}

/// The table of docs/EVENTS.md: one line per scenario of [`scenarios`] (only those whose name
/// contains one of `only`, when it is not empty).
pub fn table(detector: &Detector, months: usize, seed: u64, only: &[&str]) -> String {
    let mut out = String::from(
        "| scenario | months | false onsets per 100 months | onsets found | delay h (median / p90 / max) | onset-hour error h (median / p90 of abs) | true hour in interval | false recoveries per 100 restricted months | recoveries found | recovery delay h (median / p90) |\n\
         |---|---:|---:|---:|---|---|---:|---:|---:|---|\n",
    );
    for (name, net) in scenarios() {
        if !only.is_empty() && !only.iter().any(|o| name.contains(o)) {
            continue;
        }
        let t = tally(&net, detector, months, seed);
        let per100 = |n: usize, m: f64| format!("{:.2}", 100.0 * n as f64 / m.max(1e-9));
        let abs: Vec<i64> = t.errors.iter().map(|e| e.abs()).collect();
        let restricted = t.restrictions > 0;
        let line = if restricted {
            format!(
                "| {name} | {} | {} | {} of {} | {} / {} / {} | {} / {} | {} of {} | {} | {} | {} |\n",
                t.months,
                per100(t.false_onsets, t.months as f64),
                t.onsets_found,
                t.restrictions,
                hours(quantile(&t.delays, 0.5)),
                hours(quantile(&t.delays, 0.9)),
                hours(quantile(&t.delays, 1.0)),
                hours(quantile(&abs, 0.5)),
                hours(quantile(&abs, 0.9)),
                t.covered,
                t.onsets_found,
                per100(t.false_recoveries, t.restricted_months),
                if t.ended > 0 {
                    format!("{} of {}", t.recoveries_found, t.ended)
                } else {
                    "–".into()
                },
                if t.ended > 0 {
                    format!(
                        "{} / {}",
                        hours(quantile(&t.recovery_delays, 0.5)),
                        hours(quantile(&t.recovery_delays, 0.9))
                    )
                } else {
                    "–".into()
                },
            )
        } else {
            format!(
                "| {name} | {} | {} | – | – | – | – | – | – | – |\n",
                t.months,
                per100(t.false_onsets, t.months as f64),
            )
        };
        out.push_str(&line);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Signed histories through a real collector.

use callwatch_collector::{Collector, ServeConfig};
use callwatch_proto::{CallReport, SignedReport, Verdict};
use ed25519_dalek::SigningKey;
use std::net::{Ipv4Addr, SocketAddr};

/// One simulated network of a signed history.
#[derive(Clone, Debug, PartialEq)]
pub struct NetSpec {
    pub country: &'static str,
    pub asn: u32,
    pub platform: Platform,
    pub agents: usize,
    pub tests_per_hour: u32,
    /// Hours from the history's first hour.
    pub restriction: Option<Restriction>,
    /// Minutes the clocks of its odd-numbered agents are off (reports then land in the
    /// neighbouring hour now and then).
    pub skew_minutes: i64,
}

/// A history: networks, days, the first day (days since the epoch), a seed.
#[derive(Clone, Debug, PartialEq)]
pub struct HistorySpec {
    pub networks: Vec<NetSpec>,
    pub days: i64,
    pub first_day: i64,
    pub seed: u64,
    /// Share of hours an agent is online (in runs of about 12 hours; 1: always).
    pub availability: f64,
}

/// A report of a history: its network, agent, key, and the signed report.
pub type HistoryReport = (usize, usize, SigningKey, SignedReport);

/// The address agent `agent` of network `net` uploads from: 127.(101 + net).agent.1, a /24 of
/// its own in its network's /16.
pub fn history_addr(net: usize, agent: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 101 + net as u8, agent as u8, 1)
}

/// Every report of a history, each agent signing with a key of the day (as agents rotate
/// daily), in time order. A test of a hit agent during its network's restriction is found
/// differentiated with the restriction's rate (its platform arm losing 30 %), any other test
/// with [`NULL_RATE`].
pub fn signed_history(spec: &HistorySpec) -> Vec<HistoryReport> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut out = Vec::new();
    let mut id = 0u32;
    let base = chrono::DateTime::<chrono::Utc>::from_timestamp(spec.first_day * 86_400, 0)
        .unwrap_or_default();
    // Agents come and go: runs of about 12 hours online, `availability` of the hours in all.
    let a = spec.availability.clamp(0.0, 1.0);
    let (p_off, p_on) = if a >= 1.0 {
        (0.0, 1.0)
    } else {
        (1.0 / 12.0, (a / (1.0 - a) / 12.0).min(1.0))
    };
    let mut online: Vec<Vec<bool>> = spec
        .networks
        .iter()
        .map(|net| (0..net.agents).map(|_| rng.gen_bool(a)).collect())
        .collect();
    for hour in 0..spec.days * 24 {
        for on in online.iter_mut().flatten() {
            if rng.gen_bool(if *on { p_off } else { p_on }) {
                *on = !*on;
            }
        }
        for (n, net) in spec.networks.iter().enumerate() {
            let restricted = net
                .restriction
                .filter(|r| hour >= r.onset && r.end.is_none_or(|e| hour < e));
            for (a, _) in online[n].iter().enumerate().filter(|(_, on)| **on) {
                let day = hour / 24;
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&spec.seed.to_be_bytes());
                seed[8..16].copy_from_slice(&(n as u64).to_be_bytes());
                seed[16..24].copy_from_slice(&(a as u64).to_be_bytes());
                seed[24..].copy_from_slice(&day.to_be_bytes());
                let key = SigningKey::from_bytes(&seed);
                let hit = restricted.filter(|r| (a as f64) < r.share_of_agents * net.agents as f64);
                for t in 0..net.tests_per_hour {
                    id += 1;
                    let minute = i64::from(t) * 60 / i64::from(net.tests_per_hour.max(1))
                        + rng.gen_range(0..5);
                    let skew = if a % 2 == 1 { net.skew_minutes } else { 0 };
                    let started = base + chrono::Duration::minutes(hour * 60 + minute + skew);
                    let rate = hit.map(|r| r.rate).unwrap_or(NULL_RATE);
                    let flagged = rng.gen_bool(rate);
                    let mut r: CallReport = crate::seed::synthetic_report(
                        &mut rng,
                        id,
                        net.platform,
                        started,
                        hit.is_some(),
                    );
                    r.verdict = Some(if flagged {
                        Verdict::Differentiated
                    } else {
                        Verdict::None
                    });
                    let Ok(signed) = SignedReport::sign(&r, &key) else {
                        continue;
                    };
                    out.push((n, a, key.clone(), signed));
                }
            }
        }
    }
    out
}

/// The name a history's region table gives a network (as ip2asn tables carry registry names).
pub fn network_name(asn: u32) -> String {
    match asn {
        12389 => "ROSTELECOM-AS".into(),
        8359 => "MTS".into(),
        3320 => "DTAG".into(),
        58224 => "TCI".into(),
        a => format!("NETWORK-{a}"),
    }
}

/// A collector config for a history: every network's /16 mapped to its country, ASN and name.
pub fn history_config(root: &std::path::Path, spec: &HistorySpec) -> ServeConfig {
    let _ = std::fs::create_dir_all(root);
    let geo = root.join("regions.tsv");
    let table: String = spec
        .networks
        .iter()
        .enumerate()
        .map(|(n, net)| {
            let b = 101 + n;
            format!(
                "127.{b}.0.0\t127.{b}.255.255\t{}\t{}\t{}\n",
                net.asn,
                net.country,
                network_name(net.asn)
            )
        })
        .collect();
    let _ = std::fs::write(&geo, table);
    let any: SocketAddr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let mut cfg = ServeConfig::new(root.join("collector"));
    (cfg.listen, cfg.http, cfg.reflectors) = (any, any, vec![any]);
    cfg.geo = Some(geo);
    // The history lies days to weeks back, uploaded at once: tagged as if each report had
    // arrived on its day.
    cfg.tag_key_days = 400;
    cfg.events_min_interval = std::time::Duration::ZERO;
    cfg
}

/// Uploads a history, each agent from its own /24 ([`history_addr`]), in batches of 200;
/// returns how many were accepted (duplicates or refusals fail the test).
pub async fn upload_history(c: &Collector, reports: &[HistoryReport]) -> usize {
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&c.pin, &mut pin).expect("the collector's pin is hex");
    let mut by_agent: BTreeMap<(usize, usize), Vec<SignedReport>> = BTreeMap::new();
    for (n, a, _, s) in reports {
        by_agent.entry((*n, *a)).or_default().push(s.clone());
    }
    let mut accepted = 0;
    for ((n, a), mine) in by_agent {
        let (ok, dup) = crate::seed::upload_from(c, pin, history_addr(n, a), mine, 200).await;
        assert_eq!(dup, 0, "a history has no duplicates");
        accepted += ok;
    }
    accepted
}
