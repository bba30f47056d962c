//! How well the differentiation verdict works: simulated call tests (simulated clock, the
//! agent's real `CallTest` and verdict, the reflector's real core, the emulator's model) through
//! scenarios that impair all traffic alike or only the platform's, counted over many seeds.

use crate::emulator::{
    ByteMatch, DelayConfig, DirectionFilter, DpiRule, ImpairmentConfig, LossModel, PathConfig,
    PolicerConfig, RuleImpairment,
};
use crate::sim::simulate_call;
use anyhow::{anyhow, Result};
use callwatch_agent::engine::TestSpec;
use callwatch_proto::profile::profile;
use callwatch_proto::{CallReport, Platform, Role, Verdict, VerdictDetail};
use std::net::SocketAddr;

/// A network, as data: a base path for all traffic plus rules that single some out.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub base: PathConfig,
    pub rules: Vec<DpiRule>,
    /// Send the profile's video-like stream instead of voice.
    pub video: bool,
}

/// A rule on the STUN magic cookie (bytes 4..8), both directions: an assumed DPI signature (no
/// published source names the rules behind the August 2025 restrictions). It hits the WhatsApp profile's platform arm and nothing else we send.
pub fn stun_rule(impairment: RuleImpairment) -> DpiRule {
    DpiRule {
        name: "stun-cookie".into(),
        direction: DirectionFilter::Both,
        patterns: vec![ByteMatch::stun_cookie()],
        impairment,
        ..DpiRule::default()
    }
}

impl Scenario {
    pub fn clean() -> Self {
        Scenario {
            name: "clean path".into(),
            base: PathConfig::default(),
            rules: vec![],
            video: false,
        }
    }

    /// Everything impaired alike: 5 % loss and 10 ms ± 10 ms delay each way.
    pub fn all_impaired() -> Self {
        Scenario {
            name: "all traffic: 5 % loss, 10 ± 10 ms delay each way".into(),
            base: PathConfig {
                loss: LossModel::bernoulli(0.05),
                delay: DelayConfig {
                    delay_ms: 10.0,
                    jitter_ms: 10.0,
                    ..DelayConfig::default()
                },
                ..PathConfig::default()
            },
            rules: vec![],
            video: false,
        }
    }

    /// Platform-only loss `loss` per direction (STUN-cookie rule).
    pub fn platform_loss(loss: f64) -> Self {
        Scenario {
            name: format!("platform only: {:.0} % loss each way", loss * 100.0),
            base: PathConfig::default(),
            rules: vec![stun_rule(RuleImpairment {
                loss,
                ..RuleImpairment::default()
            })],
            video: false,
        }
    }

    /// Platform-only added delay variation: 20 ± 20 ms (uniform) each way.
    pub fn platform_jitter() -> Self {
        Scenario {
            name: "platform only: +20 ± 20 ms delay each way".into(),
            base: PathConfig::default(),
            rules: vec![stun_rule(RuleImpairment {
                delay: DelayConfig {
                    delay_ms: 20.0,
                    jitter_ms: 20.0,
                    ..DelayConfig::default()
                },
                ..RuleImpairment::default()
            })],
            video: false,
        }
    }

    /// Platform-only policing to `kbps`, on the voice or the video stream.
    pub fn platform_policer(kbps: f64, video: bool) -> Self {
        Scenario {
            name: format!(
                "platform only: policed to {kbps:.0} kbit/s ({} stream)",
                if video { "video" } else { "voice" }
            ),
            base: PathConfig::default(),
            rules: vec![stun_rule(RuleImpairment {
                policer: Some(PolicerConfig::new(kbps)),
                ..RuleImpairment::default()
            })],
            video,
        }
    }
}

/// The agent's default test length, at which the detection table is made.
pub const TEST_MS: u32 = 15_000;

/// One simulated test of `platform` through `scenario`, [`TEST_MS`] long: the whole `CallTest`
/// (handshakes, both arms, close, count exchange, report, verdict), as the agent runs it.
pub fn simulate_report(platform: Platform, scenario: &Scenario, seed: u64) -> Result<CallReport> {
    let p = profile(platform);
    if p.port_for(Role::Control).is_none() {
        return Err(anyhow!("{platform} has no control arm"));
    }
    let mut spec = TestSpec::voice(SocketAddr::from(([127, 0, 0, 1], 40401)), TEST_MS);
    spec.platform = platform;
    spec.size = None;
    spec.video = scenario.video;
    spec.reached_before = true;
    let cfg = ImpairmentConfig {
        seed,
        up: scenario.base.clone(),
        down: scenario.base.clone(),
        rules: scenario.rules.clone(),
        log_limit: 0,
    };
    simulate_call(&spec, cfg, 7_000_000_000, seed)?
        .report
        .map_err(|e| anyhow!("{e}"))
}

/// [`simulate_report`]'s verdict and its detail.
pub fn simulate_test(
    platform: Platform,
    scenario: &Scenario,
    seed: u64,
) -> Result<(Verdict, VerdictDetail)> {
    let report = simulate_report(platform, scenario, seed)?;
    match (report.verdict, report.verdict_detail) {
        (Some(v), Some(d)) => Ok((v, d)),
        _ => Err(anyhow!("a {platform} test gave no verdict")),
    }
}

/// Verdict counts over `n` seeds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub none: u32,
    pub inconclusive: u32,
    pub differentiated: u32,
}

impl Tally {
    pub fn total(&self) -> u32 {
        self.none + self.inconclusive + self.differentiated
    }
    pub fn differentiated_rate(&self) -> f64 {
        self.differentiated as f64 / self.total().max(1) as f64
    }
}

pub fn tally(platform: Platform, scenario: &Scenario, n: u32, seed0: u64) -> Result<Tally> {
    let mut t = Tally::default();
    for i in 0..n {
        match simulate_test(platform, scenario, seed0 + u64::from(i))?.0 {
            Verdict::None => t.none += 1,
            Verdict::Inconclusive => t.inconclusive += 1,
            Verdict::Differentiated => t.differentiated += 1,
        }
    }
    Ok(t)
}

/// The scenarios of the detection table, in order.
pub fn table_scenarios() -> Vec<Scenario> {
    let mut v = vec![Scenario::clean(), Scenario::all_impaired()];
    for loss in [0.02, 0.05, 0.10, 0.20] {
        v.push(Scenario::platform_loss(loss));
    }
    v.push(Scenario::platform_jitter());
    v.push(Scenario::platform_policer(130.0, false));
    v.push(Scenario::platform_policer(130.0, true));
    v
}

/// The markdown table of verdict rates for the WhatsApp profile over `n` tests per scenario.
pub fn markdown_table(n: u32) -> Result<String> {
    let mut out = String::from(
        "| scenario (WhatsApp profile, 10 s tests) | tests | differentiated | inconclusive | none |\n|---|---:|---:|---:|---:|\n",
    );
    for (i, s) in table_scenarios().iter().enumerate() {
        let t = tally(Platform::Whatsapp, s, n, 1_000 * i as u64)?;
        let pct = |x: u32| format!("{:.1} %", 100.0 * x as f64 / t.total().max(1) as f64);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            s.name,
            t.total(),
            pct(t.differentiated),
            pct(t.inconclusive),
            pct(t.none)
        ));
    }
    Ok(out)
}
