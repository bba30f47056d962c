//! The aggregation API against a brute-force recomputation: seeded reports from 5 countries ×
//! 4 platforms × 7 days (both arms, 4 agents per country) go through the real QUIC ingest path
//! of a real collector; every query's published cells equal the exact figures recomputed from the
//! raw reports — counts, distinct agents and verdicts exactly, p10/median/p90 within the sketch's
//! stated relative error — and cells with fewer than k agents are absent.

use callwatch_collector::aggregate::{exact, Observation, Policy, FIGURES};
use callwatch_collector::geo::Region;
use callwatch_collector::http::parse_aggregation_query;
use callwatch_collector::sketch::RELATIVE_ACCURACY;
use callwatch_collector::store::StoredReport;
use callwatch_tests::http;
use callwatch_tests::seed::{collector, seed, upload, REGIONS};
use std::collections::HashMap;

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

    // The brute force: observations straight from the raw reports, in upload order.
    let observations: Vec<Observation> = seed
        .iter()
        .flat_map(|(sender, _, signed, report)| {
            let (_, cc, asn) = REGIONS[*sender];
            let stored = StoredReport {
                signed: signed.clone(),
                region: Region {
                    country: cc.into(),
                    asn,
                },
                received_at_ms: 0,
            };
            Observation::from_report(&stored, report)
        })
        .collect();
    let policy = Policy::default();
    let queries = [
        "axis_x=country&axis_y=platform",
        "axis_x=asn&axis_y=platform",
        "axis_x=day&axis_y=country&platform=whatsapp",
        "axis_x=day&axis_y=arm&country=RU&platform=telegram",
        "axis_x=hour&country=ru&asn=AS12389",
        "axis_x=platform&axis_y=arm&arm=control",
        "axis_x=country&since=2020-01-01&until=2100-01-01",
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
        let params: HashMap<String, String> = q
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        let parsed = parse_aggregation_query(&params).unwrap();
        let want = exact(&observations, &parsed.axes, &parsed.filter, &policy);
        let got = api["result"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{q}: published cells differ");
        assert!(!want.is_empty(), "{q}: seed covers the query");
        for (g, w) in got.iter().zip(&want) {
            let w = serde_json::to_value(w).unwrap();
            for axis in ["day", "hour", "country", "asn", "platform", "arm"] {
                assert_eq!(g.get(axis), w.get(axis), "{q}: cell order/keys");
            }
            for k in ["count", "agents", "verdicts", "differentiated_share"] {
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
    assert_eq!(csv.lines().count(), 1 + 5 * 4 - 1);

    // Bad parameters: 400 naming the parameter, nothing else changes.
    for (q, name) in [
        ("axis_x=city", "axis_x"),
        ("axis_x=day&arm=relay", "arm"),
        ("axis_x=day&since=yesterday", "since"),
        ("axis_x=day&axis_y=day", "axis_y"),
        ("axis_x=day&colour=red", "colour"),
    ] {
        let (status, body) = http::get(c.http_addr, &format!("/api/v1/aggregation?{q}"))
            .await
            .unwrap();
        assert_eq!(status, 400, "{q}");
        assert!(body.contains(name), "{q}: {body}");
    }
    c.shutdown().await;
}
