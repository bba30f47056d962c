//! The aggregation API against a brute-force recomputation: seeded reports from 5 countries ×
//! 4 platforms × 7 days (both arms, 4 agents per country) go through the real QUIC ingest path
//! of a real collector; every query's published cells equal the exact figures recomputed from the
//! raw reports — counts, distinct agents and verdicts (with the blocked calls and the tests
//! without a reference among them) exactly, p10/median/p90 within the sketch's stated relative
//! error — and cells with fewer than k agents are absent. Video-like tests never reach a voice
//! cell: the voice cells equal a recomputation from the voice reports alone.

use callwatch_collector::domain::sketch::RELATIVE_ACCURACY;
use callwatch_collector::domain::StoredReport;
use callwatch_collector::domain::{exact, Observation, Policy, FIGURES};
use callwatch_collector::geo::Region;
use callwatch_collector::http::{parse_aggregation_query, AggregationQuery};
use callwatch_proto::report::StreamKind;
use callwatch_tests::http;
use callwatch_tests::seed::{collector, seed, upload, Seeded, REGIONS, VIDEO_MOS_MAX};
use std::collections::HashMap;

/// `q` as the API parses it.
fn parsed_query(q: &str) -> AggregationQuery {
    let params: HashMap<String, String> = q
        .split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    parse_aggregation_query(&params).unwrap()
}

fn close(api: f64, exact: f64) -> bool {
    (api - exact).abs() <= RELATIVE_ACCURACY * exact.abs() + 1e-9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_cells_equal_a_brute_force_recomputation_within_the_sketch_error() {
    let root = tempfile::tempdir().unwrap();
    let c = collector(root.path()).await;
    let seed = seed();
    assert!(seed.len() > 1000);
    upload(&c, &seed).await;
    assert_eq!(c.store.len(), seed.len());

    // The brute force: observations straight from the raw reports, in upload order (the
    // collector receives each network's reports in seed order).
    let observations_of = |reports: &mut dyn Iterator<Item = &Seeded>| -> Vec<Observation> {
        reports
            .flat_map(|(sender, _, signed, report)| {
                let (_, cc, asn) = REGIONS[*sender];
                let stored = StoredReport {
                    signed: signed.clone(),
                    region: Region {
                        country: cc.into(),
                        asn,
                    },
                    received_at_ms: 0,
                    filing: Default::default(),
                };
                Observation::from_report(&stored, report)
            })
            .collect()
    };
    let observations = observations_of(&mut seed.iter());
    let policy = Policy::default();
    let queries = [
        "axis_x=country&axis_y=platform",
        "axis_x=asn&axis_y=platform",
        "axis_x=day&axis_y=country&platform=whatsapp",
        "axis_x=day&axis_y=arm&country=RU&platform=telegram",
        "axis_x=hour&country=ru&asn=AS12389",
        "axis_x=platform&axis_y=arm&arm=control",
        "axis_x=country&since=2020-01-01&until=2100-01-01",
        "axis_x=country&axis_y=kind",
        "axis_x=kind&axis_y=arm&platform=whatsapp",
        "axis_x=day&axis_y=platform&kind=video",
        "axis_x=asn&axis_y=arm&platform=whatsapp&country=RU",
    ];
    let mut compared = 0;
    for q in queries {
        let (status, body) = http::get(c.http_addr, &format!("/api/v1/aggregation?{q}"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{q}: {body}");
        let api: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(api["min_agents"], 3);
        assert_eq!(api["relative_error"], RELATIVE_ACCURACY);
        let parsed = parsed_query(q);
        let want = exact(&observations, &parsed.axes, &parsed.filter, &policy);
        let got = api["result"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{q}: published cells differ");
        assert!(!want.is_empty(), "{q}: seed covers the query");
        for (g, w) in got.iter().zip(&want) {
            let w = serde_json::to_value(w).unwrap();
            for axis in ["day", "hour", "country", "asn", "platform", "arm", "kind"] {
                assert_eq!(g.get(axis), w.get(axis), "{q}: cell order/keys");
            }
            for k in [
                "count",
                "agents",
                "verdicts",
                "differentiated_share",
                "blocked_share",
                "filing",
            ] {
                assert_eq!(g[k], w[k], "{q} {k}: {g} vs {w}");
            }
            for f in FIGURES {
                for stat in ["p10", "median", "p90"] {
                    let (a, e) = (g[f][stat].as_f64(), w[f][stat].as_f64());
                    match (a, e) {
                        (Some(a), Some(e)) => assert!(close(a, e), "{q} {f}.{stat}: {a} vs {e}"),
                        (None, None) => {}
                        other => panic!("{q} {f}.{stat}: {other:?}"),
                    }
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > 1000, "compared {compared} figures");

    // Video-like tests never land in a voice cell: by default the cells equal a recomputation
    // from the voice reports alone (the seed's video tests, MOS below 1.4 and heavy loss, share
    // countries, networks, platforms and days with voice tests).
    let voice = observations_of(&mut seed.iter().filter(|s| s.3.stream_kind == StreamKind::Voice));
    assert!(voice.len() < observations.len(), "the seed has video tests");
    for q in [
        "axis_x=country&axis_y=platform",
        "axis_x=day&axis_y=arm&country=RU&platform=whatsapp",
        "axis_x=asn&kind=voice",
    ] {
        let (_, body) = http::get(c.http_addr, &format!("/api/v1/aggregation?{q}"))
            .await
            .unwrap();
        let api: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(api["kind"], "voice", "{q}: the body says what it covers");
        let parsed = parsed_query(q);
        let want = exact(&voice, &parsed.axes, &parsed.filter, &policy);
        let got = api["result"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{q}");
        for (g, w) in got.iter().zip(&want) {
            let w = serde_json::to_value(w).unwrap();
            assert_eq!(
                (&g["count"], &g["agents"]),
                (&w["count"], &w["agents"]),
                "{q}"
            );
            for stat in ["p10", "median", "p90"] {
                let (a, e) = (
                    g["mos"][stat].as_f64().unwrap(),
                    w["mos"][stat].as_f64().unwrap(),
                );
                assert!(close(a, e), "{q}: mos.{stat} {a} vs voice-only {e}");
            }
        }
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
        assert!(cell["mos"]["p90"].as_f64().unwrap() <= VIDEO_MOS_MAX * (1.0 + RELATIVE_ACCURACY));
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
        ru_wa["blocked_share"].as_f64().unwrap(),
        24.0 / judged as f64
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
    let (_, body) = http::get(
        c.http_addr,
        "/api/v1/aggregation?axis_x=country&country=RU&platform=whatsapp",
    )
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let want =
        exact(
            &observations_of(&mut seed.iter().filter(|s| {
                s.3.stream_kind == StreamKind::Voice && s.3.streams[0].packets_sent > 0
            })),
            &[callwatch_collector::domain::Axis::Country],
            &callwatch_collector::domain::Filter {
                country: Some("RU".into()),
                platform: Some(callwatch_proto::Platform::Whatsapp),
                ..Default::default()
            },
            &policy,
        );
    let w = serde_json::to_value(&want[0]).unwrap();
    assert_eq!(
        v["result"][0]["count"].as_u64().unwrap(),
        w["count"].as_u64().unwrap() + 24
    );
    for f in ["loss", "rtt_ms", "mos"] {
        assert!(
            close(
                v["result"][0][f]["p10"].as_f64().unwrap(),
                w[f]["p10"].as_f64().unwrap()
            ),
            "{f}: {v} vs {w}"
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
