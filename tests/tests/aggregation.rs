//! The aggregation API against an independent recomputation: seeded reports from 5 countries ×
//! 4 platforms × 7 days (both arms, 4 agents per country) go through the real QUIC ingest path
//! of a real collector; every query's published cells equal the cells `callwatch_tests::oracle`
//! recomputes from the raw reports with code of its own (no collector type, filter, cap or
//! grouping) — counts, distinct agents and verdicts (with the blocked calls and the tests
//! without a reference among them) and the shares (rounded to their published rule) exactly,
//! p10/median/p90 within the sketch's stated relative error rounded to their rule, every number
//! with no more decimals than its rule — and cells with fewer than k agents are absent. Video-like tests never reach a voice
//! cell: the voice cells equal a recomputation from the voice reports alone. A small fixture
//! with its expected cells written out by hand checks the oracle itself.

use callwatch_collector::domain::sketch::RELATIVE_ACCURACY;
use callwatch_proto::precision::Precision;
use callwatch_proto::report::{StreamKind, VerdictRule};
use callwatch_proto::{CallReport, Platform, Role, SignedReport, Verdict};
use callwatch_tests::http;
use callwatch_tests::oracle::{self, Input, Query};
use callwatch_tests::seed::{
    self, collector, seed, upload, upload_batches, Seeded, REGIONS, VIDEO_MOS_MAX,
};
use serde_json::Value;
use std::collections::BTreeMap;

/// Whether `api`, the published value of figure `name`, is what the sketch may answer for
/// `exact` (within its relative error) rounded to the figure's published rule: at most the
/// sketch's error plus half a rounding step away, and on the rule's grid.
fn close(name: &str, api: f64, exact: f64) -> bool {
    let (lo, hi) = oracle::published_range(name, exact, RELATIVE_ACCURACY);
    (lo..=hi).contains(&api)
}

/// The oracle's inputs for seeded reports, in the order given.
fn inputs<'a>(reports: impl Iterator<Item = &'a Seeded>) -> Vec<Input<'a>> {
    reports
        .map(|(sender, _, signed, report)| {
            let (_, country, asn) = REGIONS[*sender];
            Input {
                country,
                subdivision: "",
                asn,
                agent: &signed.key,
                report,
                prefix_tag: None,
            }
        })
        .collect()
}

/// The seed in the order the collector received it: the networks one after another, within one
/// each agent's reports in seed order, the agents in order of first appearance
/// ([`upload_batches`]).
fn arrival_order(seed: &[Seeded]) -> Vec<&Seeded> {
    let first = |key: &[u8; 32]| {
        seed.iter()
            .position(|s| s.1.verifying_key().to_bytes() == *key)
            .unwrap_or(0)
    };
    let mut out: Vec<&Seeded> = seed.iter().collect();
    out.sort_by_cached_key(|s| (s.0, first(&s.1.verifying_key().to_bytes())));
    out
}

/// The API's cells of `query` keyed by their axis values, in `axes` order.
async fn api_cells(
    c: &callwatch_collector::Collector,
    query: &str,
    axes: &[&str],
) -> BTreeMap<Vec<String>, Value> {
    let (status, body) = http::get(c.http_addr, &format!("/api/v1/aggregation?{query}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{query}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let cells = v["result"].as_array().expect("a result array").clone();
    for cell in &cells {
        oracle::assert_published_precision(cell);
    }
    let n = cells.len();
    let map: BTreeMap<Vec<String>, Value> = cells
        .into_iter()
        .map(|cell| {
            let key = axes
                .iter()
                .map(|a| match &cell[*a] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            (key, cell)
        })
        .collect();
    assert_eq!(map.len(), n, "{query}: two cells with the same axis values");
    map
}

/// Every published cell equals the oracle's: the same cells, counts, agents, verdicts and
/// (rounded) shares exactly, figures within the sketch's relative error rounded to their rule.
/// Returns the number of figures compared.
fn assert_cells_equal(
    query: &str,
    api: &BTreeMap<Vec<String>, Value>,
    want: &BTreeMap<Vec<String>, Value>,
) -> usize {
    assert_eq!(
        api.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{query}: published cells differ"
    );
    let mut compared = 0;
    for (key, w) in want {
        let g = &api[key];
        for k in ["count", "agents", "verdicts"] {
            assert_eq!(g[k], w[k], "{query} {key:?} {k}: {g} vs {w}");
        }
        for k in ["differentiated_share", "blocked_share"] {
            // Both rounded to the shares' rule from the same quotient: equal, or a slip.
            assert_eq!(g[k], w[k], "{query} {key:?} {k}");
        }
        for f in oracle::FIGURES {
            for stat in ["p10", "median", "p90"] {
                match (g[f][stat].as_f64(), w[f][stat].as_f64()) {
                    (Some(a), Some(e)) => {
                        assert!(close(f, a, e), "{query} {key:?} {f}.{stat}: {a} vs {e}")
                    }
                    (None, None) => {}
                    other => panic!("{query} {key:?} {f}.{stat}: {other:?}"),
                }
                compared += 1;
            }
        }
    }
    compared
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_cells_equal_an_independent_recomputation_within_the_sketch_error() {
    let root = tempfile::tempdir().unwrap();
    let c = collector(root.path()).await;
    let seed = seed();
    assert!(seed.len() > 1000);
    upload(&c, &seed).await;
    assert_eq!(c.store.len(), seed.len());
    let arrived = arrival_order(&seed);
    let all = inputs(arrived.iter().copied());
    let k3 = Query {
        min_agents: 3,
        max_per_agent_per_day: 24,
        max_per_prefix_per_day: Some(240),
        ..Query::default()
    };
    let q = |axes: &[&'static str], f: &dyn Fn(&mut Query)| {
        let mut q = Query {
            axes: axes.to_vec(),
            ..k3.clone()
        };
        f(&mut q);
        q
    };
    // The hour axis answers at most 31 days per query: the last 30 (the seed's 7 days).
    let month_ago = (chrono::Utc::now() - chrono::Duration::days(30)).date_naive();
    let month_ago_ms = month_ago
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis();
    let hourly: &'static str =
        Box::leak(format!("axis_x=hour&country=ru&asn=AS12389&since={month_ago}").into_boxed_str());
    let queries: Vec<(&str, Query)> = vec![
        (
            "axis_x=country&axis_y=platform",
            q(&["country", "platform"], &|_| {}),
        ),
        (
            "axis_x=asn&axis_y=platform",
            q(&["asn", "platform"], &|_| {}),
        ),
        (
            "axis_x=day&axis_y=country&platform=whatsapp",
            q(&["day", "country"], &|q| {
                q.platform = Some(Platform::Whatsapp)
            }),
        ),
        (
            "axis_x=day&axis_y=arm&country=RU&platform=telegram",
            q(&["day", "arm"], &|q| {
                (q.country, q.platform) = (Some("RU"), Some(Platform::Telegram))
            }),
        ),
        (
            hourly,
            q(&["hour"], &|q| {
                (q.country, q.asn, q.since_ms) = (Some("ru"), Some(12389), Some(month_ago_ms))
            }),
        ),
        (
            "axis_x=platform&axis_y=arm&arm=control",
            q(&["platform", "arm"], &|q| q.arm = Some(Role::Control)),
        ),
        (
            "axis_x=country&since=2020-01-01&until=2100-01-01",
            q(&["country"], &|q| {
                (q.since_ms, q.until_ms) = (Some(1_577_836_800_000), Some(4_102_444_800_000))
            }),
        ),
        (
            "axis_x=country&axis_y=kind",
            q(&["country", "kind"], &|_| {}),
        ),
        (
            "axis_x=kind&axis_y=arm&platform=whatsapp",
            q(&["kind", "arm"], &|q| q.platform = Some(Platform::Whatsapp)),
        ),
        (
            "axis_x=day&axis_y=platform&kind=video",
            q(&["day", "platform"], &|q| q.kind = Some(StreamKind::Video)),
        ),
        (
            "axis_x=asn&axis_y=arm&platform=whatsapp&country=RU",
            q(&["asn", "arm"], &|q| {
                (q.platform, q.country) = (Some(Platform::Whatsapp), Some("RU"))
            }),
        ),
    ];
    let mut compared = 0;
    for (url, query) in &queries {
        let api = api_cells(&c, url, &query.axes).await;
        let want = oracle::cells(&all, query);
        assert!(!want.is_empty(), "{url}: the seed covers the query");
        compared += assert_cells_equal(url, &api, &want);
    }
    assert!(compared > 1000, "compared {compared} figures");
    // The same answers once the collector's published roll-ups hold the closed days (the
    // seed's earlier days; today's stay dirty and are read from their cells).
    let store = c.store.clone();
    let now = chrono::Utc::now().timestamp_millis();
    tokio::task::spawn_blocking(move || {
        store.roll_up(&callwatch_collector::domain::Policy::default(), now)
    })
    .await
    .unwrap()
    .unwrap();
    let mut rolled = 0;
    for (url, query) in &queries {
        let api = api_cells(&c, url, &query.axes).await;
        rolled += assert_cells_equal(url, &api, &oracle::cells(&all, query));
    }
    assert_eq!(
        rolled, compared,
        "the same figures compared, from the roll-ups"
    );
    let (_, body) = http::get(c.http_addr, "/api/v1/aggregation?axis_x=country")
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["min_agents"], 3);
    assert_eq!(v["relative_error"], RELATIVE_ACCURACY);
    // The overview: global, whatever the filter. Withheld: the country × platform cells the
    // oracle finds with reports but fewer than 3 agents (Brazil's Signal, in the seed).
    let all_cells = oracle::cells(
        &all,
        &Query {
            axes: vec!["country", "platform"],
            min_agents: 1,
            ..k3.clone()
        },
    );
    let withheld = all_cells
        .values()
        .filter(|c| c["agents"].as_u64().unwrap() < 3)
        .count();
    assert!(withheld >= 1, "the seed has a cell below k");
    let want = serde_json::json!({"reports": seed.len(), "withheld_cells": withheld});
    assert_eq!(v["overview"], want, "{v}");
    for q in [
        "axis_x=day&country=BR&platform=signal",
        "axis_x=asn&country=DE&kind=video",
    ] {
        let (_, body) = http::get(c.http_addr, &format!("/api/v1/aggregation?{q}"))
            .await
            .unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["overview"], want, "{q}: the same global overview");
    }

    // Video-like tests never land in a voice cell: by default the cells equal a recomputation
    // from the voice reports alone (the seed's video tests, MOS below 1.4 and heavy loss, share
    // countries, networks, platforms and days with voice tests).
    let voice = inputs(
        arrived
            .iter()
            .copied()
            .filter(|s| s.3.stream_kind == StreamKind::Voice),
    );
    assert!(voice.len() < all.len(), "the seed has video tests");
    for (url, query) in [
        (
            "axis_x=country&axis_y=platform",
            q(&["country", "platform"], &|_| {}),
        ),
        (
            "axis_x=day&axis_y=arm&country=RU&platform=whatsapp",
            q(&["day", "arm"], &|q| {
                (q.country, q.platform) = (Some("RU"), Some(Platform::Whatsapp))
            }),
        ),
        (
            "axis_x=asn&kind=voice",
            q(&["asn"], &|q| q.kind = Some(StreamKind::Voice)),
        ),
    ] {
        let api = api_cells(&c, url, &query.axes).await;
        // The oracle given only voice reports, and told nothing about kinds.
        let want = oracle::cells(
            &voice,
            &Query {
                kind: None,
                ..query
            },
        );
        assert_cells_equal(url, &api, &want);
    }
    // The video cells stand apart, with their own MOS.
    let (_, body) = http::get(c.http_addr, "/api/v1/aggregation?axis_x=country&kind=video")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kind"], "video");
    let video = v["result"].as_array().unwrap();
    let countries: Vec<&str> = video
        .iter()
        .map(|c| c["country"].as_str().unwrap())
        .collect();
    assert_eq!(countries, ["DE", "RU"], "{v}");
    for cell in video {
        assert_eq!(cell["count"], 4 * 2 * 7, "{cell}");
        let (_, most) = oracle::published_range("mos", VIDEO_MOS_MAX, RELATIVE_ACCURACY);
        assert!(cell["mos"]["p90"].as_f64().unwrap() <= most, "{cell}");
    }
    let (_, body) = http::get(c.http_addr, "/api/v1/aggregation?axis_x=kind&country=DE")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v.get("kind").is_none(),
        "kind is an axis: each cell says its own"
    );
    let kinds: Vec<&str> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["voice", "video"]);

    // Blocked calls beside the differentiated share; tests without a reference apart.
    let (_, body) = http::get(
        c.http_addr,
        "/api/v1/aggregation?axis_x=country&axis_y=platform",
    )
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cell = |cc: &str, p: &str| {
        v["result"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["country"] == cc && c["platform"] == p)
            .unwrap_or_else(|| panic!("{cc}/{p} missing: {v}"))
            .clone()
    };
    let ru_wa = cell("RU", "whatsapp");
    // 2 networks × 4 agents × 3 days of blocked calls (cut on one of them), one per day.
    assert_eq!(ru_wa["verdicts"]["blocked"], 24, "{ru_wa}");
    let judged = ["none", "inconclusive", "differentiated"]
        .iter()
        .map(|k| ru_wa["verdicts"][k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(
        ru_wa["blocked_share"].as_f64(),
        Precision::Fraction.round(24.0 / judged as f64),
        "the share rounded to 0.0001"
    );
    assert!(ru_wa["differentiated_share"].as_f64() > ru_wa["blocked_share"].as_f64());
    let de_tg = cell("DE", "telegram");
    assert_eq!(de_tg["verdicts"]["no_reference"], 8, "{de_tg}");
    assert_eq!(
        de_tg["verdicts"]["blocked"], 0,
        "no reference is not blocking"
    );
    assert_eq!(de_tg["blocked_share"], 0.0);
    assert!(cell("RU", "generic")["blocked_share"].is_null());
    // A blocked arm measured nothing: it counts, but adds no figure (loss 0 of 0 is no loss).
    let url = "axis_x=country&country=RU&platform=whatsapp";
    let query = q(&["country"], &|q| {
        (q.country, q.platform) = (Some("RU"), Some(Platform::Whatsapp))
    });
    let api = api_cells(&c, url, &query.axes).await;
    let measured = inputs(
        arrived
            .iter()
            .copied()
            .filter(|s| s.3.stream_kind == StreamKind::Voice && s.3.streams[0].packets_sent > 0),
    );
    let want = oracle::cells(&measured, &query);
    let (g, w) = (
        &api[&vec!["RU".to_string()]],
        &want[&vec!["RU".to_string()]],
    );
    assert_eq!(
        g["count"].as_u64().unwrap(),
        w["count"].as_u64().unwrap() + 24
    );
    for f in ["loss", "rtt_ms", "mos"] {
        assert!(
            close(
                f,
                g[f]["p10"].as_f64().unwrap(),
                w[f]["p10"].as_f64().unwrap()
            ),
            "{f}: {g} vs {w}"
        );
    }

    // The cell below k is absent, though its reports are stored.
    let (_, body) = http::get(
        c.http_addr,
        "/api/v1/aggregation?axis_x=country&axis_y=platform&country=BR",
    )
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let platforms: Vec<&str> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["platform"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["generic", "whatsapp", "telegram"], "{v}");

    // Russia's throttled platforms show it; the control arm does not.
    let (_, body) = http::get(
        c.http_addr,
        "/api/v1/aggregation?axis_x=arm&country=RU&platform=whatsapp",
    )
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (platform_arm, control_arm) = (&v["result"][0], &v["result"][1]);
    assert_eq!(platform_arm["arm"], "platform");
    assert!(platform_arm["differentiated_share"].as_f64().unwrap() > 0.3);
    assert!(
        platform_arm["loss_up"]["p90"].as_f64().unwrap()
            > control_arm["loss_up"]["p90"].as_f64().unwrap()
    );

    // CSV carries the same cells.
    let (status, csv) = http::get(
        c.http_addr,
        "/api/v1/aggregation?axis_x=country&axis_y=platform&format=csv",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(csv.starts_with("country,platform,count,agents,rtt_ms_p10,rtt_ms_median,rtt_ms_p90,"));
    assert!(csv.lines().next().unwrap().ends_with(
        ",loss_p90,loss_up_p10,loss_up_median,loss_up_p90,loss_down_p10,loss_down_median,\
         loss_down_p90,mos_p10,mos_median,mos_p90,stalls_p10,stalls_median,stalls_p90,\
         verdict_none,verdict_inconclusive,verdict_differentiated,verdict_blocked,\
         verdict_no_reference,differentiated_share,blocked_share,uploaded_elsewhere,hosting"
    ));
    assert_eq!(csv.lines().count(), 1 + 5 * 4 - 1);
    // Every figure and share to its rule, as in the JSON.
    assert_eq!(oracle::assert_csv_precision(&csv), 5 * 4 - 1);
    let (_, csv) = http::get(
        c.http_addr,
        "/api/v1/aggregation?axis_x=country&axis_y=kind&platform=whatsapp&format=csv",
    )
    .await
    .unwrap();
    assert!(csv.starts_with("country,kind,count,"), "{csv}");
    assert!(csv.contains("\nRU,video,28,4,"), "{csv}");

    // Bad parameters: 400 naming the parameter, nothing else changes.
    for (q, name) in [
        ("axis_x=city", "axis_x"),
        ("axis_x=day&arm=relay", "arm"),
        ("axis_x=day&since=yesterday", "since"),
        ("axis_x=day&axis_y=day", "axis_y"),
        ("axis_x=day&colour=red", "colour"),
        ("axis_x=day&kind=audio", "kind"),
    ] {
        let (status, body) = http::get(c.http_addr, &format!("/api/v1/aggregation?{q}"))
            .await
            .unwrap();
        assert_eq!(status, 400, "{q}");
        assert!(body.contains(name), "{q}: {body}");
    }
    c.shutdown().await;
}

/// A cell written out by hand: its axis values and the fields it must have.
type HandCell = (Vec<&'static str>, Value);

/// One report of the hand-written fixture: agent `agent` (sender 0, RU AS12389, unless
/// `sender`), WhatsApp voice, started at `at` (UTC), platform arm (rtt, loss up, loss down) and
/// control arm rtt, the verdict and its rule.
#[allow(clippy::too_many_arguments)]
fn fixture_report(
    sender: usize,
    agent: u8,
    id: u8,
    at: &str,
    platform: (f64, f64, f64),
    control_rtt: f64,
    verdict: Verdict,
    rule: Option<VerdictRule>,
) -> Seeded {
    let key = ed25519_dalek::SigningKey::from_bytes(&[100 + agent; 32]);
    let mut r = CallReport::example();
    r.id.0 = [id; 16];
    r.platform = Platform::Whatsapp;
    r.started_at = at.parse().unwrap();
    let mut p = r.streams[0].clone();
    let (rtt, up, down) = platform;
    p.rtt_ms.as_mut().unwrap().median = rtt;
    (p.loss_up, p.loss_down) = (Some(up), Some(down));
    p.loss = Some(1.0 - (1.0 - up) * (1.0 - down));
    let mut c = r.streams[0].clone();
    c.role = Role::Control;
    c.rtt_ms.as_mut().unwrap().median = control_rtt;
    (c.loss_up, c.loss_down, c.loss) = (Some(0.0), Some(0.0), Some(0.0));
    r.streams = vec![p, c];
    r.verdict = Some(verdict);
    r.verdict_detail = rule.map(seed::detail);
    let signed = SignedReport::sign(&r, &key).unwrap();
    (sender, key, signed, r)
}

/// Expected cells written out by hand from the fixture below (no code computes them): the API
/// must publish exactly these (figures within the sketch's error), and the oracle must compute
/// exactly these.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fixture_gives_the_cells_written_out_by_hand() {
    let root = tempfile::tempdir().unwrap();
    let mut cfg = seed::config(root.path(), "c");
    (cfg.policy.min_agents, cfg.policy.max_per_agent_per_day) = (2, 2);
    let c = callwatch_collector::serve(cfg).await.unwrap();
    check_hand_fixture(&c).await;
    c.shutdown().await;
}

/// The same fixture and cells on the ClickHouse store, whose SQL applies the cap, the UTC day
/// and the hour bounds its own way (`CALLWATCH_CLICKHOUSE_URL`, as in tests/tests/clickhouse.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clickhouse_store_gives_the_same_hand_written_cells() {
    let Some(url) = callwatch_tests::clickhouse_url() else {
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let db = format!("cwtest_hand_{}_{nanos}", std::process::id());
    let access = callwatch_collector::store::clickhouse::Access {
        user: std::env::var("CALLWATCH_CLICKHOUSE_USER").ok(),
        password: std::env::var("CALLWATCH_CLICKHOUSE_PASSWORD").ok(),
        ca_file: None,
    };
    let store = std::sync::Arc::new(
        callwatch_collector::store::ClickHouseStore::open(&url, &db, &access).unwrap(),
    );
    let root = tempfile::tempdir().unwrap();
    let mut cfg = seed::config(root.path(), "c");
    (cfg.policy.min_agents, cfg.policy.max_per_agent_per_day) = (2, 2);
    let c = callwatch_collector::serve_with_store(cfg, store.clone())
        .await
        .unwrap();
    check_hand_fixture(&c).await;
    c.shutdown().await;
    store.drop_database().unwrap();
}

/// Uploads the hand-written fixture to `c` (k = 2, a cap of 2 per day) and checks its cells.
async fn check_hand_fixture(c: &callwatch_collector::Collector) {
    use Verdict::{Differentiated as D, Inconclusive as I, None as N};
    let fixture = vec![
        // Agent 1 tests four times on 2 Nov; with a cap of 2 per day only the first two count
        // (the last two, rtt 1000 and 90 % loss, would show in every figure if they did).
        fixture_report(
            0,
            1,
            1,
            "2026-11-02T10:15:00Z",
            (100.0, 0.10, 0.00),
            50.0,
            D,
            None,
        ),
        fixture_report(
            0,
            1,
            2,
            "2026-11-02T11:00:00Z",
            (110.0, 0.05, 0.01),
            51.0,
            D,
            None,
        ),
        fixture_report(
            0,
            1,
            3,
            "2026-11-02T12:00:00Z",
            (1000.0, 0.9, 0.9),
            500.0,
            N,
            None,
        ),
        fixture_report(
            0,
            1,
            4,
            "2026-11-02T13:00:00Z",
            (1000.0, 0.9, 0.9),
            500.0,
            N,
            None,
        ),
        // Agent 2: a call cut mid-way (differentiated, blocked).
        fixture_report(
            0,
            2,
            5,
            "2026-11-02T10:40:00Z",
            (120.0, 0.20, 0.02),
            52.0,
            D,
            Some(VerdictRule::Cut),
        ),
        // Agent 3, either side of midnight UTC: loss down, not up, on the first.
        fixture_report(
            0,
            3,
            6,
            "2026-11-02T23:30:00Z",
            (80.0, 0.00, 0.30),
            40.0,
            N,
            None,
        ),
        fixture_report(
            0,
            3,
            7,
            "2026-11-03T00:10:00Z",
            (90.0, 0.00, 0.00),
            45.0,
            I,
            Some(VerdictRule::NoReference),
        ),
        // A lone agent in Germany: below k = 2 wherever it lands.
        fixture_report(
            2,
            4,
            8,
            "2026-11-05T09:00:00Z",
            (30.0, 0.00, 0.00),
            30.0,
            N,
            None,
        ),
    ];
    let (accepted, _) = upload_batches(c, &fixture, 100).await;
    assert_eq!(accepted, fixture.len());

    let ms = |t: &str| {
        t.parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
            .timestamp_millis()
    };
    let fig = |p10: f64, median: f64, p90: f64| serde_json::json!({"p10": p10, "median": median, "p90": p90});
    let verdicts = |none: u64, inc: u64, diff: u64, blocked: u64, noref: u64| {
        serde_json::json!({"none": none, "inconclusive": inc, "differentiated": diff,
                           "blocked": blocked, "no_reference": noref})
    };
    let k2 = Query {
        min_agents: 2,
        max_per_agent_per_day: 2,
        platform: Some(Platform::Whatsapp),
        ..Query::default()
    };
    let by_hand: Vec<(&str, Query, Vec<HandCell>)> = vec![
        (
            // 2 Nov, platform arms: agent 1 at 10:15 and 11:00, agent 2, agent 3 at 23:30.
            // rtt [80 100 110 120]: ranks ⌊0.1·3⌋=0, ⌊0.5·3⌋=1, ⌊0.9·3⌋=2. 3 Nov has one agent.
            "axis_x=day&platform=whatsapp",
            Query { axes: vec!["day"], ..k2.clone() },
            vec![(
                vec!["2026-11-02"],
                serde_json::json!({
                    "count": 4, "agents": 3,
                    "rtt_ms": fig(80.0, 100.0, 110.0),
                    "loss_up": fig(0.0, 0.05, 0.10),
                    "loss_down": fig(0.0, 0.01, 0.02),
                    "verdicts": verdicts(1, 0, 3, 1, 0),
                    "differentiated_share": 0.75, "blocked_share": 0.25,
                }),
            )],
        ),
        (
            // 10:00-12:00 on 2 Nov: hour 10 has agents 1 and 2; hour 11 agent 1 alone.
            // rtt [100 120]: every rank ⌊q·1⌋ is 0.
            "axis_x=hour&country=RU&platform=whatsapp&since=2026-11-02T10:00:00Z&until=2026-11-02T12:00:00Z",
            Query {
                axes: vec!["hour"],
                country: Some("RU"),
                since_ms: Some(ms("2026-11-02T10:00:00Z")),
                until_ms: Some(ms("2026-11-02T12:00:00Z")),
                ..k2.clone()
            },
            vec![(
                vec!["2026-11-02T10:00:00Z"],
                serde_json::json!({
                    "count": 2, "agents": 2,
                    "rtt_ms": fig(100.0, 100.0, 100.0),
                    "loss_up": fig(0.10, 0.10, 0.10),
                    "loss_down": fig(0.0, 0.0, 0.0),
                    "verdicts": verdicts(0, 0, 2, 1, 0),
                    "differentiated_share": 1.0, "blocked_share": 0.5,
                }),
            )],
        ),
        (
            // Both arms in Russia, all days. k is met per day: 2 Nov has agents 1, 2 and 3;
            // 3 Nov only agent 3, so its test (rtt 90, inconclusive, no reference) counts
            // nowhere, though over both days three agents stand behind the cell. Four tests
            // count per arm (agent 1's last two of 2 Nov do not): platform rtt [80 100 110
            // 120], loss up [0 .05 .10 .20], loss down [0 .01 .02 .30], control rtt [40 50 51
            // 52]: ranks 0, 1, 2.
            "axis_x=arm&country=RU&platform=whatsapp",
            Query { axes: vec!["arm"], country: Some("RU"), ..k2.clone() },
            vec![
                (
                    vec!["platform"],
                    serde_json::json!({
                        "count": 4, "agents": 3,
                        "rtt_ms": fig(80.0, 100.0, 110.0),
                        "loss_up": fig(0.0, 0.05, 0.10),
                        "loss_down": fig(0.0, 0.01, 0.02),
                        "verdicts": verdicts(1, 0, 3, 1, 0),
                        "differentiated_share": 0.75, "blocked_share": 0.25,
                    }),
                ),
                (
                    vec!["control"],
                    serde_json::json!({
                        "count": 4, "agents": 3,
                        "rtt_ms": fig(40.0, 50.0, 51.0),
                        "loss_up": fig(0.0, 0.0, 0.0),
                        "loss_down": fig(0.0, 0.0, 0.0),
                        "verdicts": verdicts(1, 0, 3, 1, 0),
                        "differentiated_share": 0.75, "blocked_share": 0.25,
                    }),
                ),
            ],
        ),
        // Germany: one agent, below k: nothing.
        (
            "axis_x=country&country=DE&platform=whatsapp",
            Query { axes: vec!["country"], country: Some("DE"), ..k2.clone() },
            vec![],
        ),
    ];
    let all = inputs(fixture.iter());
    for (url, query, cells) in by_hand {
        let api = api_cells(c, url, &query.axes).await;
        let computed = oracle::cells(&all, &query);
        let keys = |m: &BTreeMap<Vec<String>, Value>| m.keys().cloned().collect::<Vec<_>>();
        let mut hand_keys: Vec<Vec<String>> = cells
            .iter()
            .map(|(k, _)| k.iter().map(|s| s.to_string()).collect())
            .collect();
        hand_keys.sort();
        assert_eq!(keys(&api), hand_keys, "{url}: the API's cells");
        assert_eq!(keys(&computed), hand_keys, "{url}: the oracle's cells");
        for (key, want) in cells {
            let key: Vec<String> = key.iter().map(|s| s.to_string()).collect();
            for (field, value) in want.as_object().unwrap() {
                let (g, o) = (&api[&key][field], &computed[&key][field]);
                assert_eq!(o, value, "{url} {key:?} {field}: the oracle");
                if field.ends_with("_ms") || field.starts_with("loss") {
                    for stat in ["p10", "median", "p90"] {
                        let (a, e) = (g[stat].as_f64().unwrap(), value[stat].as_f64().unwrap());
                        assert!(
                            close(field, a, e),
                            "{url} {key:?} {field}.{stat}: API {a}, by hand {e}"
                        );
                    }
                } else {
                    assert_eq!(g, value, "{url} {key:?} {field}: the API");
                }
            }
        }
    }
}
