//! Sub-national regions end to end (#17 item 3): a real collector (`serve`) looks up upload
//! addresses in a GeoLite2-City fixture written by the MaxMind DB writer (with the seed's ip2asn
//! table after it for the ASN), and publishes region cells only under k: a region is published
//! when k agents on k network prefixes stand behind it and its network-day's other regions
//! together meet k too. Agents of one network (RU, AS12389) upload from their own /24s, placed
//! by the City database in Moscow, St Petersburg, Krasnodar or Tatarstan (three agents behind
//! one /24 there), or nowhere in particular. The API's region cells (JSON, CSV, the `region`
//! filter) equal the test oracle's, the full export carries each report's subdivision and no
//! address, and `callwatch-collector export` answers the same region queries from the stopped
//! collector's store after it has been turned back into what the previous release left (cells
//! without the subdivision, records without the filing), which it rebuilds at open.

use callwatch_collector::export::ExportRecord;
use callwatch_proto::{Platform, SignedReport};
use callwatch_reflector::geo::mmdb_writer::{city_record, MmdbWriter};
use callwatch_tests::http;
use callwatch_tests::oracle::{self, Input, Query};
use callwatch_tests::seed::{self, agent_addr, Seeded};
use ed25519_dalek::SigningKey;
use rand::SeedableRng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Network 0 of the seed's table: RU, AS12389 (its agents upload from 127.101.x.1).
const NET: usize = 0;

/// Agent keys by the first byte of their public key (which decides the /24 an agent uploads
/// from, [`agent_addr`]): for each `(first, count)` of `wanted`, `count` keys starting with
/// `first`.
fn keys(wanted: &[(u8, usize)]) -> BTreeMap<u8, Vec<SigningKey>> {
    let mut out: BTreeMap<u8, Vec<SigningKey>> = BTreeMap::new();
    for n in 0u32.. {
        let mut seed = [0x5a; 32];
        seed[..4].copy_from_slice(&n.to_be_bytes());
        let key = SigningKey::from_bytes(&seed);
        let first = key.verifying_key().to_bytes()[0];
        if let Some((_, count)) = wanted.iter().find(|(f, _)| *f == first) {
            let have = out.entry(first).or_default();
            if have.len() < *count {
                have.push(key);
            }
        }
        if wanted
            .iter()
            .all(|(f, c)| out.get(f).is_some_and(|k| k.len() == *c))
        {
            break;
        }
    }
    out
}

/// Two WhatsApp reports of `key`, started yesterday at 10:xx UTC.
fn reports(key: &SigningKey, ids: &mut u32) -> Vec<Seeded> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(*ids));
    let yesterday = chrono::Utc::now()
        .date_naive()
        .pred_opt()
        .unwrap()
        .and_hms_opt(10, 0, 0)
        .unwrap()
        .and_utc();
    (0..2)
        .map(|i| {
            *ids += 1;
            let started = yesterday + chrono::Duration::minutes(i64::from(*ids % 50) + i);
            let r = seed::synthetic_report(&mut rng, *ids, Platform::Whatsapp, started, false);
            let signed = SignedReport::sign(&r, key).unwrap();
            (NET, key.clone(), signed, r)
        })
        .collect()
}

/// The API's cells of a query, keyed by their values on `axes`.
async fn api(
    c: &callwatch_collector::Collector,
    query: &str,
    axes: &[&str],
) -> BTreeMap<Vec<String>, Value> {
    let (status, body) = http::get(c.http_addr, &format!("/api/v1/aggregation?{query}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{query}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|cell| {
            oracle::assert_published_precision(cell);
            let key = axes
                .iter()
                .map(|a| match &cell[*a] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            (key, cell.clone())
        })
        .collect()
}

/// The API's cells equal the oracle's: the same cells, counts, agents and verdicts.
fn assert_same(
    query: &str,
    api: &BTreeMap<Vec<String>, Value>,
    want: &BTreeMap<Vec<String>, Value>,
) {
    assert_eq!(
        api.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{query}: published cells differ"
    );
    for (key, w) in want {
        for k in ["count", "agents", "verdicts"] {
            assert_eq!(api[key][k], w[k], "{query} {key:?} {k}");
        }
    }
}

/// (region, agents) of a region query's cells.
fn regions(cells: &BTreeMap<Vec<String>, Value>) -> Vec<(String, u64)> {
    cells
        .values()
        .map(|c| {
            (
                c["region"].as_str().unwrap_or_default().to_string(),
                c["agents"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_cells_meet_k_and_filter_from_a_city_database() {
    let root = tempfile::tempdir().unwrap();
    // Who is where: first key byte → (subdivision code in the City database, agents). Byte 41:
    // three agents behind one /24; bytes 51 and 52: addresses the City database does not
    // know (the ip2asn table still places them in RU, AS12389).
    let places: [(u8, &str, usize); 11] = [
        (11, "MOW", 1),
        (12, "MOW", 1),
        (13, "MOW", 1),
        (21, "SPE", 1),
        (22, "SPE", 1),
        (23, "SPE", 1),
        (31, "KDA", 1),
        (32, "KDA", 1),
        (33, "KDA", 1),
        (41, "TA", 3),
        (51, "", 1),
    ];
    let mut wanted: Vec<(u8, usize)> = places.iter().map(|(f, _, n)| (*f, *n)).collect();
    wanted.push((52, 1));
    let keys = keys(&wanted);
    let mut city = MmdbWriter::new("GeoLite2-City");
    for (first, sub, _) in places.iter().filter(|p| !p.1.is_empty()) {
        let ip = IpAddr::V4(agent_addr(NET, *first));
        city = city.insert((ip, 24), city_record("RU", &[*sub, "ZZZZ"]));
    }
    let city_db = root.path().join("GeoLite2-City.mmdb");
    city.write(&city_db).unwrap();
    let mut cfg = seed::config(root.path(), "collector");
    // The City database first (country and subdivision), the seed's table after it (the ASN).
    let table = cfg.geo.replace(city_db).unwrap();
    cfg.geo_files.push(table);
    let c = callwatch_collector::serve(cfg).await.unwrap();

    let subdivision_of = |first: u8| -> String {
        places
            .iter()
            .find(|p| p.0 == first && !p.1.is_empty())
            .map(|p| format!("RU-{}", p.1))
            .unwrap_or_default()
    };
    let mut ids = 0u32;
    let mut sent: Vec<Seeded> = Vec::new();
    let upload = |who: &[u8], ids: &mut u32| -> Vec<Seeded> {
        who.iter()
            .flat_map(|f| keys[f].iter())
            .flat_map(|k| reports(k, ids))
            .collect()
    };
    // The oracle's view of what was sent: the region each agent's address is in, its /24 as
    // its prefix.
    let query = |axes: Vec<&'static str>, region: Option<&'static str>| Query {
        axes,
        region,
        min_agents: 3,
        max_per_agent_per_day: 24,
        max_per_prefix_per_day: Some(240),
        ..Query::default()
    };
    let check = |sent: &[Seeded], q: &Query, api: &BTreeMap<Vec<String>, Value>, label: &str| {
        let subs: Vec<String> = sent
            .iter()
            .map(|s| subdivision_of(s.1.verifying_key().to_bytes()[0]))
            .collect();
        let tags: Vec<String> = sent
            .iter()
            .map(|s| format!("{:016x}", s.1.verifying_key().to_bytes()[0]))
            .collect();
        let inputs: Vec<Input<'_>> = sent
            .iter()
            .zip(subs.iter().zip(&tags))
            .map(|((_, _, signed, report), (sub, tag))| Input {
                country: "RU",
                subdivision: sub,
                asn: 12389,
                agent: &signed.key,
                report,
                prefix_tag: Some(tag),
            })
            .collect();
        assert_same(label, api, &oracle::cells(&inputs, q));
    };

    // Phase 1: three agents in Moscow, three in St Petersburg, one in Krasnodar.
    let first = upload(&[11, 12, 13, 21, 22, 23, 31], &mut ids);
    let (accepted, _) = seed::upload_batches(&c, &first, 50).await;
    assert_eq!(accepted, first.len());
    sent.extend(first);
    let country = api(&c, "axis_x=country", &["country"]).await;
    assert_eq!(country[&vec!["RU".to_string()]]["agents"], 7);
    // No region: the country minus its regions would be Krasnodar's one agent.
    let by_region = api(&c, "axis_x=region", &["region"]).await;
    assert!(by_region.is_empty(), "{by_region:?}");
    check(
        &sent,
        &query(vec!["region"], None),
        &by_region,
        "phase 1 region",
    );
    let mow = api(&c, "axis_x=platform&region=RU-MOW", &["platform"]).await;
    assert!(mow.is_empty(), "{mow:?}");

    // Phase 2: two more in Krasnodar, three in Tatarstan behind one /24, two the City
    // database does not place.
    let second = upload(&[32, 33, 41, 51, 52], &mut ids);
    let (accepted, _) = seed::upload_batches(&c, &second, 50).await;
    assert_eq!(accepted, second.len());
    sent.extend(second);
    let by_region = api(&c, "axis_x=region", &["region"]).await;
    assert_eq!(
        regions(&by_region),
        vec![
            ("RU-KDA".to_string(), 3),
            ("RU-MOW".to_string(), 3),
            ("RU-SPE".to_string(), 3)
        ],
        "Tatarstan's three agents are one prefix; the unplaced two are below k (with \
         Tatarstan they are the rest, which meets k)"
    );
    check(&sent, &query(vec!["region"], None), &by_region, "region");
    let country = api(&c, "axis_x=country", &["country"]).await;
    assert_eq!(country[&vec!["RU".to_string()]]["agents"], 14);
    for (q, axes, region) in [
        ("axis_x=region&axis_y=asn", vec!["region", "asn"], None),
        ("axis_x=asn&region=RU-MOW", vec!["asn"], Some("RU-MOW")),
        (
            "axis_x=platform&region=ru-spe",
            vec!["platform"],
            Some("RU-SPE"),
        ),
        (
            "axis_x=platform&region=RU-TA",
            vec!["platform"],
            Some("RU-TA"),
        ),
        ("axis_x=region&axis_y=arm", vec!["region", "arm"], None),
    ] {
        let got = api(&c, q, &axes).await;
        check(&sent, &query(axes.clone(), region), &got, q);
        match region {
            Some("RU-TA") => assert!(got.is_empty(), "{q}: {got:?}"),
            _ => assert!(!got.is_empty(), "{q}"),
        }
    }
    let mow = api(&c, "axis_x=platform&region=RU-MOW", &["platform"]).await;
    assert_eq!(mow.len(), 1);
    assert_eq!(mow.values().next().unwrap()["agents"], 3);
    // By hour (the reports started within one hour): the same regions.
    let since = chrono::Utc::now().date_naive().pred_opt().unwrap();
    let hourly = api(
        &c,
        &format!("axis_x=hour&axis_y=region&since={since}"),
        &["hour", "region"],
    )
    .await;
    assert_eq!(hourly.len(), 3, "{hourly:?}");
    // CSV: the region column, the same cells.
    let (status, csv) = http::get(c.http_addr, "/api/v1/aggregation?axis_x=region&format=csv")
        .await
        .unwrap();
    assert_eq!(status, 200, "{csv}");
    assert!(csv.starts_with("region,count,agents,"), "{csv}");
    let rows: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(rows, ["RU-KDA", "RU-MOW", "RU-SPE"]);
    assert_eq!(oracle::assert_csv_precision(&csv), 3);
    // A region that is no ISO 3166-2 code, or not in the country asked for, is refused.
    for bad in ["region=RU", "region=RU-MOSCOW", "region=RU-MOW&country=DE"] {
        let (status, body) = http::get(
            c.http_addr,
            &format!("/api/v1/aggregation?axis_x=day&{bad}"),
        )
        .await
        .unwrap();
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("region"), "{body}");
    }

    // The full export: each report's subdivision as filed, and no address.
    let token = callwatch_collector::token::add(&root.path().join("collector"), "regions").unwrap();
    let (status, body) = http::get_bearer(
        c.http_addr,
        "/api/v1/reports?full=true&since=0&limit=1000",
        &token,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(!body.contains("127.101."), "no address in the export");
    let records: Vec<ExportRecord> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), sent.len());
    for r in &records {
        let first = hex::decode(&r.key).unwrap()[0];
        assert_eq!(r.subdivision, subdivision_of(first), "{}", r.key);
        assert_eq!((r.country.as_str(), r.asn), ("RU", 12389));
    }
    // The public export gives no subdivision.
    let (_, public) = http::get(c.http_addr, "/api/v1/reports?limit=1000")
        .await
        .unwrap();
    assert!(!public.contains("subdivision") && !public.contains("RU-MOW"));
    c.shutdown().await;

    // The store as the previous release left it: cells under keys without the subdivision
    // (format 4), and the unplaced agents' reports as records of the releases before the
    // filing (the postcard part alone). Reopened, the cells are rebuilt from the reports.
    {
        #[derive(serde::Serialize)]
        struct OldRegion {
            country: String,
            asn: u32,
        }
        #[derive(serde::Serialize)]
        struct OldRecord {
            signed: SignedReport,
            region: OldRegion,
            received_at_ms: i64,
        }
        let path = callwatch_collector::store::config::sled_path(&root.path().join("collector"));
        // The aborted HTTP task lets go of the store a moment after `shutdown` returns.
        let mut tries = 0;
        let db = loop {
            match sled::open(&path) {
                Ok(db) => break db,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the store stays locked: {e}"),
            }
        };
        for name in ["cells", "days"] {
            let tree = db.open_tree(name).unwrap();
            let old: Vec<(Vec<u8>, sled::IVec)> = tree
                .iter()
                .map(|e| {
                    let (k, v) = e.unwrap();
                    assert_eq!(k.len(), 20);
                    let mut k = k.to_vec();
                    k.drain(10..13);
                    (k, v)
                })
                .collect();
            tree.clear().unwrap();
            for (k, v) in old {
                tree.insert(k, v).unwrap();
            }
        }
        db.open_tree("meta")
            .unwrap()
            .insert("cells", &[4u8][..])
            .unwrap();
        // Records are compressed (with the dictionaries kept in `meta` as `dict` ‖ id); the
        // previous release wrote them plain, which is what goes back.
        let dicts = callwatch_collector::store::compress::Dictionaries::default();
        for e in db.open_tree("meta").unwrap().scan_prefix(b"dict") {
            let (k, v) = e.unwrap();
            let id = u32::from_be_bytes(k[4..8].try_into().unwrap());
            dicts.add(id, &v).unwrap();
        }
        let reports = db.open_tree("reports").unwrap();
        let mut legacy = 0;
        for e in reports.iter() {
            let (k, v) = e.unwrap();
            let plain = dicts.decompress(&k[..32], &v).unwrap();
            let stored = callwatch_collector::domain::StoredReport::from_bytes(&plain).unwrap();
            if stored.region.subdivision.is_empty() {
                let old = OldRecord {
                    signed: stored.signed,
                    region: OldRegion {
                        country: stored.region.country,
                        asn: stored.region.asn,
                    },
                    received_at_ms: stored.received_at_ms,
                };
                reports
                    .insert(k, postcard::to_allocvec(&old).unwrap())
                    .unwrap();
                legacy += 1;
            }
        }
        assert_eq!(legacy, 4, "the two unplaced agents' reports");
        db.flush().unwrap();
    }

    // `export` on the stopped collector's store: the same region cells, and the filter.
    let export = |args: &[&str]| {
        let out = std::process::Command::new(callwatch_tests::built_binary("callwatch-collector"))
            .args(["export", "--data"])
            .arg(root.path().join("collector"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // Every record reads, the rewritten ones as unknown.
    let ndjson = export(&[]);
    assert_eq!(ndjson.lines().count(), sent.len());
    for line in ndjson.lines() {
        let r: ExportRecord = serde_json::from_str(line).unwrap();
        let first = hex::decode(&r.key).unwrap()[0];
        assert_eq!(r.subdivision, subdivision_of(first));
    }
    let csv = export(&["--format", "csv", "--axis-x", "region"]);
    let rows: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(rows, ["RU-KDA", "RU-MOW", "RU-SPE"], "{csv}");
    let json: Value = serde_json::from_str(&export(&[
        "--format", "json", "--axis-x", "platform", "--region", "RU-SPE",
    ]))
    .unwrap();
    let cells = json["result"].as_array().unwrap();
    assert_eq!(cells.len(), 1, "{json}");
    assert_eq!(
        (cells[0]["agents"].as_u64(), cells[0]["count"].as_u64()),
        (Some(3), Some(6))
    );
}
