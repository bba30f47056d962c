//! The whole system on one machine: a collector with embedded sled and its reflector, and several
//! agents on distinct loopback addresses that a generated region table places in different
//! countries and networks. Each agent runs its tests and uploads; the result is the aggregate by
//! region and platform, read back through the collector's HTTP API.

use crate::censors::stun_rule;
use crate::emulator::{ImpairmentConfig, Relay, RelayConfig, Route, RuleImpairment};
use crate::http;
use anyhow::{bail, Context, Result};
use callwatch_agent::config::{Config, ConfigFile};
use callwatch_agent::identity;
use callwatch_agent::queue::Queue;
use callwatch_agent::runner::{run_cycle, CycleOutcome};
use callwatch_collector::{serve, ServeConfig};
use callwatch_proto::Platform;
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// A pretend volunteer network: loopback address → (country, ASN, name).
pub const NETWORKS: [(Ipv4Addr, &str, u32, &str); 6] = [
    (Ipv4Addr::new(127, 0, 0, 2), "RU", 12389, "ROSTELECOM-AS"),
    (Ipv4Addr::new(127, 0, 0, 3), "RU", 8359, "MTS"),
    (Ipv4Addr::new(127, 0, 0, 4), "RU", 31213, "MEGAFON"),
    (Ipv4Addr::new(127, 0, 0, 5), "DE", 3320, "DTAG"),
    (Ipv4Addr::new(127, 0, 0, 6), "US", 7922, "COMCAST"),
    (Ipv4Addr::new(127, 0, 0, 7), "FI", 1759, "TELIA"),
];

#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Agents to run, 1..=6 (one per network in [`NETWORKS`]).
    pub agents: usize,
    /// Length of each call test.
    pub duration_secs: u32,
    /// Platforms each agent tests.
    pub platforms: Vec<Platform>,
    /// Keep the data here instead of a temporary folder that is removed at the end.
    pub keep: Option<PathBuf>,
    /// Put the Russian networks behind an emulated DPI box that drops 10 % of STUN-framed
    /// packets each way (a stand-in for a DPI box that keys on the STUN framing).
    pub dpi: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            agents: 4,
            duration_secs: 15,
            platforms: vec![Platform::Generic, Platform::Whatsapp, Platform::Telegram],
            keep: None,
            dpi: true,
        }
    }
}

pub struct DemoResult {
    /// The aggregate as the demo prints it.
    pub table: String,
    /// JSON from `/api/v1/aggregation?axis_x=asn&axis_y=platform`.
    pub by_asn: serde_json::Value,
    /// JSON from `/api/v1/aggregation?axis_x=country&axis_y=platform`.
    pub by_country: serde_json::Value,
    pub outcomes: Vec<CycleOutcome>,
}

/// Writes the ip2asn TSV that places each demo agent.
pub fn write_geo_table(path: &Path) -> Result<()> {
    let mut text = String::new();
    for (ip, cc, asn, name) in NETWORKS {
        let _ = writeln!(text, "{ip}\t{ip}\t{asn}\t{cc}\t{name}");
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub async fn run_demo(cfg: &DemoConfig) -> Result<DemoResult> {
    if !(1..=NETWORKS.len()).contains(&cfg.agents) {
        bail!("--agents must be 1..={}", NETWORKS.len());
    }
    let tmp;
    let root = match &cfg.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let geo = root.join("regions.tsv");
    write_geo_table(&geo)?;
    let mut sc = ServeConfig::new(root.join("collector"));
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    sc.listen = any;
    // Three reflector ports: generic tests, platform arms, control arms (free ports, so the demo
    // needs no privileges; a real collector listens on the profiles' own ports).
    sc.reflectors = vec![any, any, any];
    sc.http = any;
    sc.geo = Some(geo);
    // A local demo has one agent per network: publish every cell (a real collector needs k ≥ 3).
    sc.policy.min_agents = 1;
    let collector = serve(sc).await?;
    eprintln!(
        "collector: QUIC {}, reflector udp {:?}, HTTP {}  (pin {}…)",
        collector.quic_addr,
        collector.reflector.addrs,
        collector.http_addr,
        &collector.pin[..16]
    );
    let direct = collector.reflector.addrs.clone();
    // The DPI box: a relay in front of the same three ports with a rule on the STUN cookie.
    let dpi_relay = if cfg.dpi {
        let relay = Relay::start(RelayConfig {
            routes: direct
                .iter()
                .map(|&upstream| Route {
                    listen: any,
                    upstream,
                })
                .collect(),
            impairment: ImpairmentConfig {
                seed: 2025,
                rules: vec![stun_rule(RuleImpairment {
                    loss: 0.10,
                    ..RuleImpairment::default()
                })],
                ..ImpairmentConfig::default()
            },
            ..RelayConfig::default()
        })
        .await?;
        eprintln!(
            "DPI box: Russian networks reach the reflector through {:?}, which drops 10 % of \
             STUN-framed packets each way",
            relay.local_addrs()
        );
        Some(relay)
    } else {
        None
    };

    let mut tasks = Vec::new();
    for (i, (ip, cc, asn, name)) in NETWORKS.iter().take(cfg.agents).enumerate() {
        let dir = root.join(format!("agent-{}", i + 1));
        std::fs::create_dir_all(&dir)?;
        let ports: Vec<SocketAddr> = match (&dpi_relay, *cc) {
            (Some(relay), "RU") => relay.local_addrs().to_vec(),
            _ => direct.clone(),
        };
        let mut ac = Config::from_file(ConfigFile::new(
            collector.quic_addr.to_string(),
            collector.pin.clone(),
            Some(ports[0].to_string()),
        ))
        .map_err(|problems| anyhow::anyhow!("agent config: {}", problems.join("; ")))?;
        ac.test.reflector_key = Some(collector.reflector.seal_key);
        ac.test.platform_port = Some(ports[1].port());
        ac.test.control_port = Some(ports[2].port());
        ac.test.bind = Some(IpAddr::V4(*ip));
        ac.test.duration_secs = cfg.duration_secs;
        ac.platforms = cfg.platforms.clone();
        ac.key_file = dir.join("agent.key");
        ac.queue_dir = dir.join("queue");
        let key = identity::create_key(&ac.key_file, false)?;
        let queue = Queue::open(&ac.queue_dir)?;
        eprintln!("agent {} on {ip} ({cc}, AS{asn} {name}): testing…", i + 1);
        tasks.push(tokio::spawn(
            async move { run_cycle(&ac, &key, &queue).await },
        ));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        let outcome = t.await.context("agent task")??;
        if let Some(Err(e)) = &outcome.upload {
            bail!("an agent could not upload: {e}");
        }
        if !outcome.test_errors.is_empty() {
            bail!("an agent's test failed: {}", outcome.test_errors.join("; "));
        }
        outcomes.push(outcome);
    }

    let fetch = |q: &'static str| {
        let addr = collector.http_addr;
        async move {
            let (status, body) = http::get(addr, q).await?;
            if status != 200 {
                bail!("{q}: HTTP {status}: {body}");
            }
            Ok::<_, anyhow::Error>(serde_json::from_str::<serde_json::Value>(&body)?)
        }
    };
    let by_asn = fetch("/api/v1/aggregation?axis_x=asn&axis_y=platform").await?;
    let by_country = fetch("/api/v1/aggregation?axis_x=country&axis_y=platform").await?;
    let table = render(&by_country, &by_asn);
    if let Some(relay) = dpi_relay {
        relay.shutdown().await?;
    }
    collector.shutdown().await;
    Ok(DemoResult {
        table,
        by_asn,
        by_country,
        outcomes,
    })
}

fn render(by_country: &serde_json::Value, by_asn: &serde_json::Value) -> String {
    let mut out = String::new();
    let num = |v: &serde_json::Value, k: &str, scale: f64, digits: usize| {
        v[k]["median"]
            .as_f64()
            .map(|x| format!("{:.*}", digits, x * scale))
            .unwrap_or_else(|| "-".into())
    };
    let mut table = |title: &str, key: &str, data: &serde_json::Value| {
        let _ = writeln!(out, "\n{title}");
        let _ = writeln!(
            out,
            "{:<10} {:<9} {:>7} {:>6} {:>10} {:>9} {:>9} {:>12} {:>5} {:>15} {:>13}",
            key,
            "platform",
            "reports",
            "agents",
            "rtt med ms",
            "loss up%",
            "loss dn%",
            "jitter dn ms",
            "MOS",
            "differentiated",
            "inconclusive"
        );
        for c in data["result"].as_array().into_iter().flatten() {
            let region = match &c[key] {
                serde_json::Value::Number(n) => format!("AS{n}"),
                v => v.as_str().unwrap_or("-").to_string(),
            };
            // Shares of the judged tests; "n/a" where no test had a control arm to judge by.
            let judged = ["none", "inconclusive", "differentiated"]
                .iter()
                .filter_map(|k| c["verdicts"][k].as_u64())
                .sum::<u64>();
            let share = |k: &str| match (judged, c["verdicts"][k].as_u64()) {
                (0, _) | (_, None) => "n/a".to_string(),
                (j, Some(n)) => format!("{:.0} %", 100.0 * n as f64 / j as f64),
            };
            let _ = writeln!(
                out,
                "{:<10} {:<9} {:>7} {:>6} {:>10} {:>9} {:>9} {:>12} {:>5} {:>15} {:>13}",
                region,
                c["platform"].as_str().unwrap_or("-"),
                c["count"].to_string(),
                c["agents"].to_string(),
                num(c, "rtt_ms", 1.0, 3),
                num(c, "loss_up", 100.0, 2),
                num(c, "loss_down", 100.0, 2),
                num(c, "jitter_down_ms", 1.0, 3),
                num(c, "mos", 1.0, 2),
                share("differentiated"),
                share("inconclusive"),
            );
        }
    };
    table("By country and platform", "country", by_country);
    table("By network (ASN) and platform", "asn", by_asn);
    out
}
