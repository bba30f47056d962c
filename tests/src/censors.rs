//! The censor catalogue: every way of restricting calls we test the verdict against, and the
//! null models that must never give `differentiated`, each as data for the emulator, with the
//! verdict it should get. `tests/lab/censor-lab.sh` holds the same catalogue as nftables rules
//! for a real kernel.
//!
//! A model is built per platform profile ([`Target`]): the platform arm's port, the control
//! arm's, the byte signature of the platform's framing, where our handshake sits inside it, and
//! the call's rate. [`simulate`] runs one whole `CallTest` through it; [`table`] counts verdicts
//! over many seeds with 95 % Clopper–Pearson intervals (the `callwatch-detection` command).

use crate::emulator::{
    Bursts, ByteMatch, DelayConfig, DirectionFilter, DpiRule, ImpairmentConfig, LossModel,
    PathConfig, PolicerConfig, PortRange, PortSide, RuleImpairment,
};
use crate::sim::simulate_call;
use anyhow::{anyhow, Result};
use callwatch_agent::engine::TestSpec;
use callwatch_agent::stats::clopper_pearson;
use callwatch_proto::framing::{call_signature, CallSignature, STUN_MAGIC_COOKIE};
use callwatch_proto::probe::{Open, Packet};
use callwatch_proto::profile::profile;
use callwatch_proto::{CallReport, Platform, Role, Verdict};
use std::net::SocketAddr;

/// The agent's default test length: the table is made at it.
pub const TEST_MS: u32 = 15_000;
/// Where the simulated platform relay (a STUN server of the platform's) listens.
pub const RELAY_PORT: u16 = 3479;
/// The platforms with a control arm, i.e. a verdict.
pub const PLATFORMS: [Platform; 4] = [
    Platform::Whatsapp,
    Platform::Telegram,
    Platform::Signal,
    Platform::Max,
];

/// What a censor model should give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// `differentiated` (a restriction the test must find).
    Differentiated,
    /// Anything but `differentiated` (a null model: the network treats both arms alike).
    NotDifferentiated,
}

impl Expect {
    pub fn as_str(self) -> &'static str {
        match self {
            Expect::Differentiated => "differentiated",
            Expect::NotDifferentiated => "never differentiated",
        }
    }
}

/// What a model needs to know of a platform profile.
#[derive(Clone, Debug)]
pub struct Target {
    pub platform: Platform,
    pub platform_port: u16,
    pub control_port: u16,
    /// A byte pattern of the platform framing that a DPI box could key on, if it has one.
    pub signature: Option<ByteMatch>,
    /// Offset of our `Open` inside the platform framing (the handshake a censor may single out).
    pub handshake_offset: Option<usize>,
    /// The voice call's UDP payload rate, kbit/s, one direction.
    pub call_kbps: f64,
}

impl Target {
    pub fn of(platform: Platform) -> Result<Target> {
        let p = profile(platform);
        let platform_port = p
            .port_for(Role::Platform)
            .ok_or_else(|| anyhow!("{platform} has no platform port"))?;
        let control_port = p
            .port_for(Role::Control)
            .ok_or_else(|| anyhow!("{platform} has no control arm"))?;
        let open = Packet::Open(Open {
            session: 0x0123_4567_89ab_cdef,
            interval_ms: 20,
            size: 172,
            duration_ms: TEST_MS,
        })
        .encode();
        let mut framed = Vec::new();
        p.framing.wrap(&open, &mut framed);
        let handshake_offset = framed.windows(open.len()).position(|w| w == open);
        let signature = call_signature(&framed).map(|s| match s {
            CallSignature::StunCookie | CallSignature::StunHeader => ByteMatch::At {
                offset: 4,
                bytes: STUN_MAGIC_COOKIE.to_be_bytes().to_vec(),
            },
            CallSignature::TurnChannelData => ByteMatch::At {
                offset: 0,
                bytes: framed[..2].to_vec(),
            },
            CallSignature::RtpOrRtcp => ByteMatch::At {
                offset: 0,
                bytes: framed[..1].to_vec(),
            },
            CallSignature::TelegramSpecial => ByteMatch::At {
                offset: 16,
                bytes: vec![0xFF; 12],
            },
        });
        let call_kbps = p.voice.mean_wire_bytes() * 8.0 / f64::from(p.voice.interval_ms);
        Ok(Target {
            platform,
            platform_port,
            control_port,
            signature,
            handshake_offset,
            call_kbps,
        })
    }
}

/// A model as the emulator takes it: the base path for all traffic, and the rules.
pub type Network = (PathConfig, Vec<DpiRule>);

/// One censor or null model.
pub struct Censor {
    pub name: &'static str,
    pub what: &'static str,
    pub expect: Expect,
    /// The test measures the platform's relay (and its reference) too.
    pub relay: bool,
    /// The base path for all traffic and the rules, for one platform; `None` where the model
    /// does not apply to that platform (say, no byte signature to match).
    pub build: fn(&Target) -> Option<Network>,
}

/// A rule on the STUN magic cookie (bytes 4..8), both directions, with `impairment`: an assumed
/// DPI signature (no published source names the rules behind the August 2025 restrictions). It
/// hits the STUN-framed arms (WhatsApp's framing, the TURN Allocate that opens Signal's arm) and
/// never a control arm.
pub fn stun_rule(impairment: RuleImpairment) -> DpiRule {
    DpiRule {
        name: "stun-cookie".into(),
        direction: DirectionFilter::Both,
        patterns: vec![ByteMatch::stun_cookie()],
        impairment,
        ..DpiRule::default()
    }
}

fn port_rule(port: u16, direction: DirectionFilter, impairment: RuleImpairment) -> DpiRule {
    DpiRule {
        name: format!("port-{port}"),
        direction,
        ports: vec![PortRange {
            first: port,
            last: port,
        }],
        // Up: the reflector's port is the destination; down: the source.
        port_side: match direction {
            DirectionFilter::Up => PortSide::Dst,
            DirectionFilter::Down => PortSide::Src,
            DirectionFilter::Both => PortSide::Either,
        },
        impairment,
        ..DpiRule::default()
    }
}

/// [`port_rule`] switched on `from_ms` into the test (a censor that starts mid-call).
fn port_rule_from(
    port: u16,
    direction: DirectionFilter,
    impairment: RuleImpairment,
    from_ms: u64,
) -> DpiRule {
    DpiRule {
        active_from_ms: from_ms,
        ..port_rule(port, direction, impairment)
    }
}

fn loss(p: f64) -> RuleImpairment {
    RuleImpairment {
        loss: p,
        ..RuleImpairment::default()
    }
}

fn only(rules: Vec<DpiRule>) -> Option<Network> {
    Some((PathConfig::default(), rules))
}

fn shared(path: PathConfig) -> Option<Network> {
    Some((path, Vec::new()))
}

/// Gilbert bursts of mean length 4 and ≈ 4.8 % stationary loss per direction.
const BURSTS: Bursts = Bursts {
    p_good_to_bad: 0.0125,
    p_bad_to_good: 0.25,
};

/// The catalogue, restrictions first, then the null models.
pub fn catalogue() -> Vec<Censor> {
    use DirectionFilter::{Both, Down, Up};
    use Expect::{Differentiated as D, NotDifferentiated as N};
    vec![
        Censor {
            name: "full-block",
            what: "every packet to and from the platform port dropped (calls impossible)",
            expect: D,
            relay: false,
            build: |t| only(vec![port_rule(t.platform_port, Both, loss(1.0))]),
        },
        Censor {
            name: "handshake-block",
            what: "only the call set-up dropped: the first 20 datagrams to the platform port \
                   (as the lab's nftables model does); media after them would pass",
            expect: D,
            relay: false,
            build: |t| {
                // Not our Open's bytes: sealed, a censor cannot see them. What it can do is
                // what the lab does, drop the start of every flow to the platform's port.
                let mut r = port_rule(t.platform_port, Up, loss(1.0));
                r.first_packets = HANDSHAKE_PACKETS;
                only(vec![r])
            },
        },
        Censor {
            name: "cut-at-5s",
            what: "the call works, then everything on the platform port is dropped from 5 s",
            expect: D,
            relay: false,
            build: |t| {
                only(vec![port_rule_from(
                    t.platform_port,
                    Both,
                    loss(1.0),
                    5_000,
                )])
            },
        },
        Censor {
            name: "onset-20pct-at-5s",
            what: "20 % loss each way on the platform port from 5 s on",
            expect: D,
            relay: false,
            build: |t| {
                only(vec![port_rule_from(
                    t.platform_port,
                    Both,
                    loss(0.2),
                    5_000,
                )])
            },
        },
        Censor {
            name: "loss-5pct",
            what: "5 % round-trip loss on the platform port (2.5 % each way, independent)",
            expect: D,
            relay: false,
            build: |t| only(vec![port_rule(t.platform_port, Both, loss(0.025))]),
        },
        Censor {
            name: "bursty-loss",
            what: "Gilbert bursts on the platform port: ≈ 4.8 % each way in bursts of 4",
            expect: D,
            relay: false,
            build: |t| {
                only(vec![port_rule(
                    t.platform_port,
                    Both,
                    RuleImpairment {
                        bursts: Some(BURSTS),
                        ..RuleImpairment::default()
                    },
                )])
            },
        },
        Censor {
            name: "policer-half-rate",
            what: "the platform port policed to half the call's rate, upstream",
            expect: D,
            relay: false,
            build: |t| {
                only(vec![port_rule(
                    t.platform_port,
                    Up,
                    RuleImpairment {
                        policer: Some(PolicerConfig::new(t.call_kbps / 2.0)),
                        ..RuleImpairment::default()
                    },
                )])
            },
        },
        Censor {
            name: "shaping-queue",
            what: "a shaper's queue: +20 ± 5 ms each way on the platform port from 5 s on",
            expect: D,
            relay: false,
            build: |t| {
                only(vec![port_rule_from(
                    t.platform_port,
                    Both,
                    RuleImpairment {
                        delay: DelayConfig {
                            delay_ms: 20.0,
                            jitter_ms: 5.0,
                            ..DelayConfig::default()
                        },
                        ..RuleImpairment::default()
                    },
                    5_000,
                )])
            },
        },
        Censor {
            name: "downstream-only",
            what: "replies from the platform port dropped from 5 s on; probes pass",
            expect: D,
            relay: false,
            build: |t| {
                only(vec![port_rule_from(
                    t.platform_port,
                    Down,
                    loss(1.0),
                    5_000,
                )])
            },
        },
        Censor {
            name: "upstream-only",
            what: "10 % of the probes to the platform port dropped; replies pass",
            expect: D,
            relay: false,
            build: |t| only(vec![port_rule(t.platform_port, Up, loss(0.10))]),
        },
        Censor {
            name: "payload-match",
            what: "the platform framing's bytes matched on any port, 20 % dropped each way",
            expect: D,
            relay: false,
            build: |t| {
                only(vec![DpiRule {
                    name: "signature".into(),
                    direction: Both,
                    patterns: vec![t.signature.clone()?],
                    impairment: loss(0.2),
                    ..DpiRule::default()
                }])
            },
        },
        Censor {
            name: "relay-address-block",
            what: "the platform's own STUN/TURN server unreachable; our reflector reachable",
            expect: D,
            relay: true,
            build: |_| only(vec![port_rule(RELAY_PORT, Both, loss(1.0))]),
        },
        Censor {
            name: "throttle-after-bytes",
            what: "the platform flow policed to a quarter of the call's rate after 40 kB",
            expect: D,
            relay: false,
            build: |t| {
                only(vec![DpiRule {
                    after_bytes: 40_000,
                    ..port_rule(
                        t.platform_port,
                        Up,
                        RuleImpairment {
                            policer: Some(PolicerConfig::new(t.call_kbps / 4.0)),
                            ..RuleImpairment::default()
                        },
                    )
                }])
            },
        },
        Censor {
            name: "null-shared-loss",
            what: "null: 5 % round-trip loss on all traffic",
            expect: N,
            relay: false,
            build: |_| {
                shared(PathConfig {
                    loss: LossModel::Bernoulli { loss: 0.025 },
                    ..PathConfig::default()
                })
            },
        },
        Censor {
            name: "null-shared-bursts",
            what: "null: Gilbert bursts (≈ 4.8 % in bursts of 4) on all traffic",
            expect: N,
            relay: false,
            build: |_| {
                shared(PathConfig {
                    loss: LossModel::GilbertElliott {
                        p_good_to_bad: BURSTS.p_good_to_bad,
                        p_bad_to_good: BURSTS.p_bad_to_good,
                        loss_in_bad: 1.0,
                        loss_in_good: 0.0,
                    },
                    ..PathConfig::default()
                })
            },
        },
        Censor {
            name: "null-cross-traffic",
            what: "null: cross-traffic bursts — shared Gilbert loss and 20 ± 15 ms queueing",
            expect: N,
            relay: false,
            build: |_| {
                shared(PathConfig {
                    loss: LossModel::GilbertElliott {
                        p_good_to_bad: BURSTS.p_good_to_bad,
                        p_bad_to_good: BURSTS.p_bad_to_good,
                        loss_in_bad: 1.0,
                        loss_in_good: 0.0,
                    },
                    delay: DelayConfig {
                        delay_ms: 20.0,
                        jitter_ms: 15.0,
                        ..DelayConfig::default()
                    },
                    ..PathConfig::default()
                })
            },
        },
        Censor {
            name: "null-port-3ms",
            what: "null: the platform port's path is 3 ms longer (1.5 ms each way)",
            expect: N,
            relay: false,
            build: |t| {
                only(vec![port_rule(
                    t.platform_port,
                    Both,
                    RuleImpairment {
                        delay: DelayConfig::fixed(1.5),
                        ..RuleImpairment::default()
                    },
                )])
            },
        },
        Censor {
            name: "aware-exempts-probes",
            what: "a censor that knows callwatch: the platform framing's bytes dropped 20 %, \
                   except packets with a cleartext callwatch probe header (version byte 1 where \
                   the core starts). Sealed probes show no header, so the censor hits them like \
                   the platform's own calls and is found; bare probes (an agent without the \
                   reflector's key) would be exempted and judged `none`",
            expect: D,
            relay: false,
            build: |t| {
                // Every callwatch core packet starts with its version byte, 1, at the same offset
                // inside the framing; the censor exempts those and hits the rest of the framing.
                let exempt = DpiRule {
                    name: "exempt-callwatch".into(),
                    direction: Both,
                    patterns: vec![ByteMatch::At {
                        offset: t.handshake_offset?,
                        bytes: vec![1],
                    }],
                    ..DpiRule::default()
                };
                only(vec![
                    exempt,
                    DpiRule {
                        name: "signature".into(),
                        direction: Both,
                        patterns: vec![t.signature.clone()?],
                        impairment: loss(0.2),
                        ..DpiRule::default()
                    },
                ])
            },
        },
        Censor {
            name: "aware-degrades-both",
            what: "a censor that recognises callwatch and degrades both arms alike (20 % loss): \
                   the measurement's blind spot, never a finding",
            expect: N,
            relay: false,
            build: |t| {
                only(vec![
                    port_rule(t.platform_port, Both, loss(0.2)),
                    port_rule(t.control_port, Both, loss(0.2)),
                ])
            },
        },
    ]
}

/// One simulated test of `platform` through `censor` by an agent that seals its platform arm
/// (as every agent given the reflector's key does); `None` where the model does not apply.
pub fn simulate(platform: Platform, censor: &Censor, seed: u64) -> Result<Option<CallReport>> {
    simulate_sealed(platform, censor, seed, true)
}

/// [`simulate`], with the platform arm's cores sealed or bare.
pub fn simulate_sealed(
    platform: Platform,
    censor: &Censor,
    seed: u64,
    sealed: bool,
) -> Result<Option<CallReport>> {
    let target = Target::of(platform)?;
    let Some((path, rules)) = (censor.build)(&target) else {
        return Ok(None);
    };
    let mut spec = TestSpec::voice(SocketAddr::from(([127, 0, 0, 1], 40401)), TEST_MS);
    spec.platform = platform;
    spec.size = None;
    spec.reached_before = true;
    // Agents set up as the docs say know the reflector's key: their platform arms are sealed.
    spec.reflector_key = sealed.then(crate::sim::sim_reflector_key);
    if censor.relay {
        spec.relay_server = Some(SocketAddr::from(([127, 0, 0, 9], RELAY_PORT)));
    }
    let cfg = ImpairmentConfig {
        seed,
        up: path.clone(),
        down: path,
        rules,
        log_limit: 0,
    };
    let run = simulate_call(&spec, cfg, 7_000_000_000, seed)?;
    run.report.map(Some).map_err(|e| anyhow!("{e}"))
}

/// Datagrams the `handshake-block` model drops at the start of a flow (the lab's
/// `CWLAB_HANDSHAKE_N`): more than a test's Opens and preambles.
pub const HANDSHAKE_PACKETS: u64 = 20;

/// Verdict counts of one (censor, platform) row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Row {
    pub none: u32,
    pub inconclusive: u32,
    pub differentiated: u32,
}

impl Row {
    pub fn tests(&self) -> u32 {
        self.none + self.inconclusive + self.differentiated
    }

    /// The differentiated share and its 95 % Clopper–Pearson interval.
    pub fn differentiated_ci(&self) -> (f64, f64, f64) {
        let n = u64::from(self.tests());
        let k = u64::from(self.differentiated);
        let (lo, hi) = clopper_pearson(k, n, 0.95);
        (k as f64 / n.max(1) as f64, lo, hi)
    }

    /// Whether the row meets its target: power ≥ 95 %, or a false-positive rate whose 95 %
    /// upper bound is ≤ 1 %.
    pub fn meets(&self, expect: Expect) -> bool {
        let (share, _, hi) = self.differentiated_ci();
        match expect {
            Expect::Differentiated => share >= 0.95,
            Expect::NotDifferentiated => hi <= 0.01,
        }
    }
}

/// Counts `n` seeded tests of `platform` through `censor`; `None` where it does not apply.
pub fn tally(platform: Platform, censor: &Censor, n: u32, seed0: u64) -> Result<Option<Row>> {
    let mut row = Row::default();
    for i in 0..n {
        let Some(report) = simulate(platform, censor, seed0 + u64::from(i))? else {
            return Ok(None);
        };
        match report.verdict {
            Some(Verdict::Differentiated) => row.differentiated += 1,
            Some(Verdict::Inconclusive) => row.inconclusive += 1,
            _ => row.none += 1,
        }
    }
    Ok(Some(row))
}

/// The models the issue sets a power target for (≥ 95 %; 100 % for the blocks). The other
/// restrictions have their power measured and published, without a target.
pub const POWER_TARGETS: [&str; 7] = [
    "full-block",
    "handshake-block",
    "cut-at-5s",
    "loss-5pct",
    "policer-half-rate",
    "relay-address-block",
    "onset-20pct-at-5s",
];

/// The table's header.
pub const TABLE_HEADER: &str = "| model | expected | platform | tests | differentiated (95 % CI) \
     | inconclusive | none | target met |\n|---|---|---|---:|---:|---:|---:|---|\n";

/// One line of the table: `n` tests of `PLATFORMS`-style platform `j` through catalogue model
/// `i` (the seeds depend on both indices, so a line can be recomputed on its own); `None`
/// where the model does not apply to the platform.
pub fn table_line(i: usize, j: usize, platform: Platform, n: u32) -> Result<Option<String>> {
    let catalogue = catalogue();
    let censor = catalogue
        .get(i)
        .ok_or_else(|| anyhow!("no model {i} in the catalogue"))?;
    let seed0 = 1_000_000 * i as u64 + 100_000 * j as u64;
    let Some(row) = tally(platform, censor, n, seed0)? else {
        return Ok(None);
    };
    let (share, lo, hi) = row.differentiated_ci();
    let pct = |x: u32| {
        format!(
            "{:.1} %",
            100.0 * f64::from(x) / f64::from(row.tests().max(1))
        )
    };
    let target = match censor.expect {
        Expect::Differentiated if !POWER_TARGETS.contains(&censor.name) => "no target",
        _ if row.meets(censor.expect) => "yes",
        _ => "**no**",
    };
    Ok(Some(format!(
        "| {} | {} | {platform} | {} | {:.1} % ({:.1}–{:.1} %) | {} | {} | {target} |\n",
        censor.name,
        censor.expect.as_str(),
        row.tests(),
        100.0 * share,
        100.0 * lo,
        100.0 * hi,
        pct(row.inconclusive),
        pct(row.none),
    )))
}

/// The detection table over the catalogue and `platforms`, `n` tests a row, as Markdown;
/// `progress` hears each row as it is done.
pub fn table(n: u32, platforms: &[Platform], mut progress: impl FnMut(&str)) -> Result<String> {
    let mut out = String::from(TABLE_HEADER);
    for i in 0..catalogue().len() {
        for (j, &platform) in platforms.iter().enumerate() {
            if let Some(line) = table_line(i, j, platform, n)? {
                progress(&line);
                out.push_str(&line);
            }
        }
    }
    Ok(out)
}
