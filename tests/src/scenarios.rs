//! Network scenarios as data, shared by the simulated-clock tests and the real-socket tests, and
//! the ground-truth figures the agent's report is checked against.

use crate::emulator::{DelayConfig, LossModel, PathConfig, PolicerConfig};
use crate::sim::ProbeTruth;

/// One impaired path (up = agent → reflector, down = reflector → agent).
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    /// Probe size on the wire.
    pub size: u16,
    pub up: PathConfig,
    pub down: PathConfig,
}

/// The scenarios of issue 3. Delay, jitter and reordering are put on the *down* path: replies
/// then leave the reflector in probe order, so the emulator's log pairs each reply with its probe
/// exactly and per-packet ground truth stays exact.
pub fn scenarios() -> Vec<Scenario> {
    let path = |f: &dyn Fn(&mut PathConfig)| {
        let mut p = PathConfig::default();
        f(&mut p);
        p
    };
    vec![
        Scenario {
            name: "clean",
            size: 172,
            up: PathConfig::default(),
            down: PathConfig::default(),
        },
        Scenario {
            name: "bernoulli-5up-10down",
            size: 172,
            up: path(&|p| p.loss = LossModel::bernoulli(0.05)),
            down: path(&|p| p.loss = LossModel::bernoulli(0.10)),
        },
        Scenario {
            name: "bursty-mean-burst-4",
            size: 172,
            up: PathConfig::default(),
            down: path(&|p| {
                p.loss = LossModel::from_burst(0.06, 4.0).expect("valid burst parameters")
            }),
        },
        Scenario {
            name: "delay-30ms-jitter-10ms",
            size: 172,
            up: PathConfig::default(),
            down: path(&|p| {
                p.delay = DelayConfig {
                    delay_ms: 30.0,
                    jitter_ms: 10.0,
                    ..DelayConfig::default()
                }
            }),
        },
        Scenario {
            // Jitter must spread wider than the 20 ms interval for packets to overtake.
            name: "reordering",
            size: 172,
            up: PathConfig::default(),
            down: path(&|p| {
                p.delay = DelayConfig {
                    delay_ms: 30.0,
                    jitter_ms: 25.0,
                    ..DelayConfig::default()
                };
                p.reorder = true;
            }),
        },
        Scenario {
            name: "duplication-5pct",
            size: 172,
            up: path(&|p| p.duplicate = 0.05),
            down: path(&|p| p.duplicate = 0.05),
        },
        Scenario {
            // 400-byte probes every 20 ms are 160 kbit/s of UDP payload; the policer keeps 130.
            name: "policer-130kbps",
            size: 400,
            up: path(&|p| p.policer = Some(PolicerConfig::new(130.0))),
            down: PathConfig::default(),
        },
    ]
}

/// Figures derived from the emulator's log alone.
#[derive(Clone, Debug, PartialEq)]
pub struct Expected {
    pub sent: u32,
    pub reflected: u32,
    pub received: u32,
    pub loss_up: f64,
    pub loss_down: f64,
    /// Median of the delay the emulator added to each round trip that completed, ms.
    pub added_rtt_median_ms: f64,
    /// RFC 3550 jitter of the down delays the emulator added, over completed round trips in
    /// sequence order, ms.
    pub jitter_down_ms: f64,
    /// The mean of the running estimate over the call (after each packet but the first), ms.
    pub jitter_down_mean_ms: f64,
    /// Runs of consecutive round-trip losses, and the longest.
    pub loss_runs: u32,
    pub longest_run: u32,
}

/// RFC 3550 §6.4.1 interarrival jitter over transit times (µs), in ms. Written here again, on
/// purpose, independently of the agent's implementation.
pub fn rfc3550_jitter_ms(transits_us: &[f64]) -> f64 {
    rfc3550_running_ms(transits_us)
        .last()
        .copied()
        .unwrap_or(0.0)
}

/// The running RFC 3550 estimate after each packet but the first, in ms.
pub fn rfc3550_running_ms(transits_us: &[f64]) -> Vec<f64> {
    let mut j = 0.0;
    let mut out = Vec::new();
    for w in transits_us.windows(2) {
        let d = (w[1] - w[0]).abs();
        j += (d - j) / 16.0;
        out.push(j / 1000.0);
    }
    out
}

/// Valid for scenarios without up-direction duplication or reordering (true of all but
/// `duplication-5pct`, whose duplicates are checked separately).
pub fn expected(truth: &ProbeTruth) -> Expected {
    let mut down = truth.down_delay_us.iter();
    // Per probe: (up delay, down delay) if the round trip completed.
    let mut round_trips: Vec<Option<(u64, u64)>> = Vec::new();
    for up in &truth.up_delay_us {
        match up {
            None => round_trips.push(None),
            Some(u) => match down.next().copied().flatten() {
                Some(d) => round_trips.push(Some((*u, d))),
                None => round_trips.push(None),
            },
        }
    }
    let reflected = (truth.probes - truth.probes_dropped) as u32;
    let received = round_trips.iter().flatten().count() as u32;
    let mut added: Vec<f64> = round_trips
        .iter()
        .flatten()
        .map(|(u, d)| (u + d) as f64 / 1000.0)
        .collect();
    added.sort_by(f64::total_cmp);
    let median = if added.is_empty() {
        0.0
    } else if added.len() % 2 == 1 {
        added[added.len() / 2]
    } else {
        (added[added.len() / 2 - 1] + added[added.len() / 2]) / 2.0
    };
    let down_transits: Vec<f64> = round_trips
        .iter()
        .flatten()
        .map(|(_, d)| *d as f64)
        .collect();
    let (mut runs, mut longest, mut current) = (0u32, 0u32, 0u32);
    for rt in &round_trips {
        if rt.is_none() {
            current += 1;
            if current == 1 {
                runs += 1;
            }
            longest = longest.max(current);
        } else {
            current = 0;
        }
    }
    let sent = truth.probes as u32;
    Expected {
        sent,
        reflected,
        received,
        loss_up: truth.probes_dropped as f64 / sent.max(1) as f64,
        loss_down: (reflected - received) as f64 / reflected.max(1) as f64,
        added_rtt_median_ms: median,
        jitter_down_ms: rfc3550_jitter_ms(&down_transits),
        jitter_down_mean_ms: {
            let running = rfc3550_running_ms(&down_transits);
            running.iter().sum::<f64>() / running.len().max(1) as f64
        },
        loss_runs: runs,
        longest_run: longest,
    }
}
