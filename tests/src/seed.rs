//! Seeded data for tests of aggregation and the dashboard: signed reports from 6 networks in 5
//! countries × 4 platforms × 7 days, both arms, 4 agents per network (only 2 for Brazil's
//! Signal, so that cell stays below k), uploaded through a real collector's QUIC ingest from the
//! network's own loopback address. After those, the findings a collector must keep apart
//! ([`extra`]): video-like tests (whose poor MOS must never reach a voice cell), blocked calls,
//! tests without a working control arm, and reports whose loss direction split is unknown.
//!
//! Test fixtures: they panic (with the failing step) instead of returning errors.

use callwatch_agent::upload::{exchange, pinned_client_config};
use callwatch_collector::{serve, Collector, ServeConfig};
use callwatch_proto::report::{
    ArmComparison, Stalls, Stats, StreamKind, StreamOutcome, UpDown, VerdictRule,
};
use callwatch_proto::upload::{ReportStatus, Response};
use callwatch_proto::{
    CallReport, Platform, ReportId, Role, SignedReport, StreamReport, Verdict, VerdictDetail,
};
use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use std::net::{Ipv4Addr, SocketAddr};

/// One seeded report: its sender (index into [`REGIONS`]), agent key, signed form and content.
pub type Seeded = (usize, SigningKey, SignedReport, CallReport);

/// Sender address → region. One country has two networks.
pub const REGIONS: [(Ipv4Addr, &str, u32); 6] = [
    (Ipv4Addr::new(127, 0, 1, 1), "RU", 12389),
    (Ipv4Addr::new(127, 0, 1, 2), "RU", 8359),
    (Ipv4Addr::new(127, 0, 1, 3), "DE", 3320),
    (Ipv4Addr::new(127, 0, 1, 4), "IR", 58224),
    (Ipv4Addr::new(127, 0, 1, 5), "TR", 9121),
    (Ipv4Addr::new(127, 0, 1, 6), "BR", 28573),
];
pub const PLATFORMS: [Platform; 4] = [
    Platform::Whatsapp,
    Platform::Telegram,
    Platform::Signal,
    Platform::Generic,
];

fn stream(rng: &mut impl Rng, role: Role, bad: bool) -> callwatch_proto::StreamReport {
    let mut s = CallReport::example().streams.remove(0);
    s.role = role;
    let rtt = rng.gen_range(5.0..400.0) * if bad { 1.5 } else { 1.0 };
    s.rtt_ms = Some(Stats {
        min: rtt * 0.8,
        mean: rtt,
        median: rtt,
        p95: rtt * 1.2,
        p99: rtt * 1.3,
        max: rtt * 1.5,
    });
    s.loss_up = Some(if rng.gen_bool(0.3) {
        0.0
    } else {
        rng.gen_range(0.0..if bad { 0.4 } else { 0.05 })
    });
    s.loss_down = Some(rng.gen_range(0.0..0.1));
    // The round trip, from the two directions (draws nothing: the values above stay the same).
    s.loss = s
        .loss_up
        .zip(s.loss_down)
        .map(|(up, down)| 1.0 - (1.0 - up) * (1.0 - down));
    s.jitter_ms = Some(UpDown {
        up: rng.gen_range(0.1..30.0),
        down: rng.gen_range(0.1..30.0),
    });
    s.mos = rng.gen_bool(0.95).then(|| rng.gen_range(1.0..4.5));
    s.stalls = Some(Stalls {
        count: rng.gen_range(0..20),
        longest_ms: 100.0,
    });
    s
}

/// A plausible report with random figures (not a measurement): both arms unless generic, a
/// verdict mostly `differentiated` when `degraded`, whose platform arm is then worse.
pub fn synthetic_report(
    rng: &mut impl Rng,
    id: u32,
    platform: Platform,
    started_at: chrono::DateTime<chrono::Utc>,
    degraded: bool,
) -> CallReport {
    let mut r = CallReport::example();
    r.id = ReportId([0; 16]);
    r.id.0[..4].copy_from_slice(&id.to_be_bytes());
    r.platform = platform;
    r.started_at = started_at;
    r.streams = vec![stream(rng, Role::Platform, degraded)];
    if platform != Platform::Generic {
        r.streams.push(stream(rng, Role::Control, false));
        r.verdict = Some(match rng.gen_range(0..10) {
            0..=1 => Verdict::Inconclusive,
            2..=6 if degraded => Verdict::Differentiated,
            _ => Verdict::None,
        });
    }
    r
}

/// The whole seed, in upload order (deterministic values, start times in the 7 days before
/// today UTC).
pub fn seed() -> Vec<Seeded> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(20251128);
    let today = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let mut out = Vec::new();
    let mut id = 0u32;
    for (sender, _) in REGIONS.iter().enumerate() {
        for agent in 0..4u8 {
            let key = agent_key(sender, agent);
            for (p, platform) in PLATFORMS.iter().enumerate() {
                // Below k: in Brazil only two agents test Signal.
                if sender == 5 && *platform == Platform::Signal && agent >= 2 {
                    continue;
                }
                for day in 1..=7i64 {
                    for _ in 0..2 {
                        id += 1;
                        let started = today - chrono::Duration::days(day)
                            + chrono::Duration::minutes(rng.gen_range(0..24 * 60));
                        let degraded = sender < 2 && p < 2; // Russia throttles two platforms
                        let r = synthetic_report(&mut rng, id, *platform, started, degraded);
                        let signed = SignedReport::sign(&r, &key).unwrap();
                        out.push((sender, key.clone(), signed, r));
                    }
                }
            }
        }
    }
    out.extend(extra(id, today));
    out
}

/// The agent key of `agent` (0..4) on network `sender`, as [`seed`] uses.
fn agent_key(sender: usize, agent: u8) -> SigningKey {
    SigningKey::from_bytes(&[sender as u8 * 16 + agent + 1; 32])
}

/// A verdict detail whose only news is its rule (the comparisons found nothing).
pub fn detail(rule: VerdictRule) -> VerdictDetail {
    let none = ArmComparison {
        platform_median: 0.0,
        control_median: 0.0,
        p_value: 1.0,
        effect: 0.0,
        significant: false,
    };
    VerdictDetail {
        method: "seed".into(),
        window_ms: 1000,
        windows: 0,
        loss: none,
        delay: none,
        jitter: none,
        reason: format!("seeded: {rule}"),
        rule: Some(rule),
        onset: None,
        relay: None,
    }
}

/// A stream that measured nothing: its handshake went unanswered (as the agent reports it: no
/// probe sent, round-trip loss 0 of 0, every other figure null).
fn blocked_stream(role: Role) -> StreamReport {
    let mut s = CallReport::example().streams.remove(0);
    s.role = role;
    s.outcome = StreamOutcome::Blocked;
    (s.packets_sent, s.packets_reflected, s.packets_received) = (0, None, 0);
    (s.loss, s.loss_up, s.loss_down) = (Some(0.0), None, None);
    (s.rtt_ms, s.jitter_ms, s.stalls) = (None, None, None);
    (s.r_factor, s.mos) = (None, None);
    s
}

/// Sender of each [`extra`] video test, blocked call and no-reference test.
pub const VIDEO_SENDERS: [usize; 2] = [0, 2];
/// Most MOS a seeded video test has (voice tests have 1.0..4.5).
pub const VIDEO_MOS_MAX: f64 = 1.4;

/// The findings after the main seed, ids from `id` on (own generator, so the main seed does not
/// change with them):
/// - video-like tests from Russia (AS12389) and Germany, WhatsApp and Telegram, 4 agents, one a
///   day: MOS 1.0..1.4, heavy loss — they must never move a voice cell;
/// - blocked calls in Russia (both networks), WhatsApp: verdict differentiated, rule `blocked`
///   (every other one `cut`), the platform arm measured nothing;
/// - tests without a reference in Germany, Telegram: inconclusive, rule `no-reference`, the
///   control arm measured nothing;
/// - Turkish Signal tests whose reflector count never came: `loss_up`/`loss_down` null, the
///   round-trip loss known.
pub fn extra(mut id: u32, today: chrono::DateTime<chrono::Utc>) -> Vec<Seeded> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(20251129);
    let mut out = Vec::new();
    let mut push = |sender: usize, agent: u8, r: CallReport| {
        let key = agent_key(sender, agent);
        assert!(r.validate().is_ok(), "{:?}", r.validate());
        let signed = SignedReport::sign(&r, &key).unwrap();
        out.push((sender, key, signed, r));
    };
    let at = |rng: &mut rand::rngs::StdRng, day: i64| {
        today - chrono::Duration::days(day) + chrono::Duration::minutes(rng.gen_range(0..24 * 60))
    };
    for sender in VIDEO_SENDERS {
        for agent in 0..4u8 {
            for platform in [Platform::Whatsapp, Platform::Telegram] {
                for day in 1..=7i64 {
                    id += 1;
                    let started = at(&mut rng, day);
                    let mut r = synthetic_report(&mut rng, id, platform, started, false);
                    r.stream_kind = StreamKind::Video;
                    r.payload_bytes = 1200;
                    for s in &mut r.streams {
                        s.mos = Some(rng.gen_range(1.0..VIDEO_MOS_MAX));
                        s.loss_up = Some(rng.gen_range(0.2..0.5));
                        s.loss = s
                            .loss_up
                            .zip(s.loss_down)
                            .map(|(up, down)| 1.0 - (1.0 - up) * (1.0 - down));
                    }
                    push(sender, agent, r);
                }
            }
        }
    }
    for sender in [0, 1] {
        for agent in 0..4u8 {
            for day in 1..=3i64 {
                id += 1;
                let started = at(&mut rng, day);
                let mut r = synthetic_report(&mut rng, id, Platform::Whatsapp, started, true);
                r.streams[0] = blocked_stream(Role::Platform);
                let rule = if day == 2 {
                    VerdictRule::Cut
                } else {
                    VerdictRule::Blocked
                };
                r.verdict = Some(Verdict::Differentiated);
                r.verdict_detail = Some(detail(rule));
                push(sender, agent, r);
            }
        }
    }
    for agent in 0..4u8 {
        for day in 1..=2i64 {
            id += 1;
            let started = at(&mut rng, day);
            let mut r = synthetic_report(&mut rng, id, Platform::Telegram, started, false);
            r.streams[1] = blocked_stream(Role::Control);
            r.verdict = Some(Verdict::Inconclusive);
            r.verdict_detail = Some(detail(VerdictRule::NoReference));
            push(2, agent, r);
        }
    }
    for agent in 0..4u8 {
        id += 1;
        let started = at(&mut rng, 1);
        let mut r = synthetic_report(&mut rng, id, Platform::Signal, started, false);
        for s in &mut r.streams {
            (s.loss_up, s.loss_down, s.packets_reflected) = (None, None, None);
        }
        push(4, agent, r);
    }
    out
}

/// A collector config on loopback (free ports) keeping its data in `root/name`, whose region
/// table (written to `root/regions.tsv`) maps [`REGIONS`]; default policy (k = 3).
pub fn config(root: &std::path::Path, name: &str) -> ServeConfig {
    std::fs::create_dir_all(root).unwrap();
    let geo = root.join("regions.tsv");
    let table: String = REGIONS
        .iter()
        .enumerate()
        .map(|(sender, (ip, cc, asn))| {
            // The network's own address, and the /16 its agents upload from.
            let [_, b, ..] = agent_addr(sender, 0).octets();
            format!(
                "{ip}\t{ip}\t{asn}\t{cc}\tAS{asn}\n127.{b}.0.0\t127.{b}.255.255\t{asn}\t{cc}\tAS{asn}\n"
            )
        })
        .collect();
    std::fs::write(&geo, table).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut cfg = ServeConfig::new(root.join(name));
    (cfg.listen, cfg.http, cfg.reflectors) = (any, any, vec![any]);
    cfg.geo = Some(geo);
    // The fixtures' tests lie days to weeks back, uploaded at once: tagged as if each had
    // arrived on its day (a live collector tags reports later than a week with one shared tag).
    cfg.tag_key_days = 400;
    cfg
}

/// A running collector with [`config`] and the sled store.
pub async fn collector(root: &std::path::Path) -> Collector {
    serve(config(root, "collector")).await.unwrap()
}

/// The address agent key byte `key0` on network `sender` uploads from: a /24 of its own in the
/// network's /16 (127.101.0.0/16 for the first network), so that every agent counts as its own
/// network prefix, as volunteers on different lines do (k counts prefixes too).
pub fn agent_addr(sender: usize, key0: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 101 + sender as u8, key0, 1)
}

/// Uploads the seed, each agent's reports from its own /24 in its network ([`agent_addr`]),
/// in batches of 100; every report must be accepted.
pub async fn upload(c: &Collector, seed: &[Seeded]) {
    let (accepted, duplicate) = upload_batches(c, seed, 100).await;
    assert_eq!(
        (accepted, duplicate),
        (seed.len(), 0),
        "every report is new"
    );
}

/// Uploads reports, each agent's from its own /24 in its network ([`agent_addr`]), the
/// networks one after another and within one the agents in order of first appearance, in
/// batches of `batch`; returns (accepted, duplicate). Any other answer fails the test.
pub async fn upload_batches(c: &Collector, reports: &[Seeded], batch: usize) -> (usize, usize) {
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&c.pin, &mut pin).unwrap();
    let (mut accepted, mut duplicate) = (0, 0);
    for sender in 0..REGIONS.len() {
        let mut agents: Vec<u8> = Vec::new();
        for s in reports.iter().filter(|s| s.0 == sender) {
            let key0 = s.1.verifying_key().to_bytes()[0];
            if !agents.contains(&key0) {
                agents.push(key0);
            }
        }
        for key0 in agents {
            let mine: Vec<SignedReport> = reports
                .iter()
                .filter(|s| s.0 == sender && s.1.verifying_key().to_bytes()[0] == key0)
                .map(|s| s.2.clone())
                .collect();
            let (a, d) = upload_from(c, pin, agent_addr(sender, key0), mine, batch).await;
            accepted += a;
            duplicate += d;
        }
    }
    (accepted, duplicate)
}

/// Uploads `mine` from `ip` over one connection, in batches of `batch`; returns (accepted,
/// duplicate). Any other answer fails the test.
pub async fn upload_from(
    c: &Collector,
    pin: [u8; 32],
    ip: Ipv4Addr,
    mine: Vec<SignedReport>,
    batch: usize,
) -> (usize, usize) {
    let (mut accepted, mut duplicate) = (0, 0);
    {
        let mut ep = quinn::Endpoint::client(SocketAddr::new(ip.into(), 0)).unwrap();
        ep.set_default_client_config(pinned_client_config(pin).unwrap());
        let conn = ep.connect(c.quic_addr, "localhost").unwrap().await.unwrap();
        for b in mine.chunks(batch) {
            let Response::Ack { statuses } = exchange(&conn, b.to_vec()).await.unwrap() else {
                panic!("batch refused")
            };
            for s in statuses {
                match s {
                    ReportStatus::Accepted => accepted += 1,
                    ReportStatus::Duplicate => duplicate += 1,
                    other => panic!("unexpected status {other:?}"),
                }
            }
        }
        conn.close(0u32.into(), b"done");
        ep.wait_idle().await;
    }
    (accepted, duplicate)
}

/// A WhatsApp voice report (both arms) by `key`, stored as filed in RU AS12389 under prefix tag
/// `tag` (8 bytes of it), started `minute` minutes after 2026-11-20T00:00Z, its platform arm's
/// RTT `rtt`: for tests that insert into a store directly, with the prefix a report counts under
/// chosen.
pub fn tagged_report(
    key: &SigningKey,
    id: u32,
    tag: u8,
    minute: i64,
    rtt: f64,
) -> callwatch_collector::domain::VerifiedReport {
    use callwatch_collector::domain::{
        Filing, PrefixFrom, RegionSource, ReportKey, StoredReport, VerifiedReport,
    };
    use chrono::TimeZone;
    let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(id));
    let started = chrono::Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap()
        + chrono::Duration::minutes(minute);
    let mut r = synthetic_report(&mut rng, id, Platform::Whatsapp, started, false);
    if let Some(s) = r.streams[0].rtt_ms.as_mut() {
        s.median = rtt;
    }
    let signed = SignedReport::sign(&r, key).unwrap();
    VerifiedReport::new(
        ReportKey {
            agent: key.verifying_key().to_bytes(),
            id: r.id,
        },
        StoredReport {
            signed,
            region: callwatch_collector::geo::Region {
                country: "RU".into(),
                asn: 12389,
                subdivision: String::new(),
            },
            received_at_ms: 1_800_000_000_000 + i64::from(id),
            filing: Filing {
                source: RegionSource::Attested,
                prefix_from: PrefixFrom::Path,
                prefix_tag: Some(hex::encode([tag; 8])),
                ..Filing::default()
            },
        },
        r,
    )
}

/// The Sybil scenario of tests/tests/sybil.rs: one party with 50 keys on 2 prefix tags (0xf0,
/// 0xf1), 20 reports per key at 03:xx, RTT 900 ms (`party`); three honest agents on three other
/// prefixes, two reports each at 00:xx and 01:xx, RTT 20 ms (`honest`). Keys from
/// [`sybil_key`].
pub fn sybil_reports() -> (
    Vec<callwatch_collector::domain::VerifiedReport>,
    Vec<callwatch_collector::domain::VerifiedReport>,
) {
    let mut id = 0;
    let mut party = Vec::new();
    for k in 0..50u32 {
        for _ in 0..20 {
            id += 1;
            party.push(tagged_report(
                &sybil_key(1000 + k),
                id,
                0xf0 + (k % 2) as u8,
                180,
                900.0,
            ));
        }
    }
    let mut honest = Vec::new();
    for h in 0..3u32 {
        for n in 0..2 {
            id += 1;
            honest.push(tagged_report(
                &sybil_key(h),
                id,
                0x10 + h as u8,
                60 * i64::from(n),
                20.0,
            ));
        }
    }
    (party, honest)
}

/// Key number `n` of [`sybil_reports`].
pub fn sybil_key(n: u32) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&n.to_be_bytes());
    seed[31] = 0x5b;
    SigningKey::from_bytes(&seed)
}
