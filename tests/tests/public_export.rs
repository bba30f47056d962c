//! The public raw export cannot single anyone out, and the full one needs a researcher token
//! (issue #15 item 1). A real collector process on loopback with the default k = 3; the token
//! commands run as their own processes against its data folder while it serves.

use callwatch_agent::upload::{exchange, pinned_client_config};
use callwatch_proto::upload::{ReportStatus, Response};
use callwatch_proto::{Platform, SignedReport};
use callwatch_tests::http;
use callwatch_tests::process::{start_collector, RunningCollector};
use callwatch_tests::seed::synthetic_report;
use chrono::{Timelike, Utc};
use ed25519_dalek::SigningKey;
use rand::SeedableRng;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// Three agents test from AS12389 (a cell that meets k = 3), one from AS8359 (a cell under k).
/// A big network, 127.51.0.0/16: its agents upload from three /24s of it (k counts network
/// prefixes as well as keys); a small one, 127.52.0.0/16, with one agent.
const BIG: (Ipv4Addr, u32) = (Ipv4Addr::new(127, 51, 0, 0), 12389);
const BIG_END: Ipv4Addr = Ipv4Addr::new(127, 51, 255, 255);
const SMALL: (Ipv4Addr, u32) = (Ipv4Addr::new(127, 52, 1, 1), 8359);

fn collector_cli(args: &[&str], data: &Path) -> Output {
    Command::new(callwatch_tests::built_binary("callwatch-collector"))
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Uploads `reports` from `from` (the collector files them by that address).
async fn upload(c: &RunningCollector, from: Ipv4Addr, reports: Vec<SignedReport>) {
    let mut ep = quinn::Endpoint::client(SocketAddr::new(from.into(), 0)).unwrap();
    ep.set_default_client_config(pinned_client_config(c.pin).unwrap());
    let conn = ep.connect(c.quic, "localhost").unwrap().await.unwrap();
    let Response::Ack { statuses } = exchange(&conn, reports).await.unwrap() else {
        panic!("batch refused")
    };
    assert!(statuses.iter().all(|s| *s == ReportStatus::Accepted));
    conn.close(0u32.into(), b"done");
    ep.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_export_singles_no_one_out_and_the_full_one_needs_a_token() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let geo = root.path().join("regions.tsv");
    std::fs::write(
        &geo,
        format!(
            "{}\t{}\t{}\tRU\tBIG\n{}\t{}\t{}\tRU\tSMALL\n",
            BIG.0, BIG_END, BIG.1, SMALL.0, SMALL.0, SMALL.1
        ),
    )
    .unwrap();
    let c = start_collector(
        root.path(),
        &data,
        &["--geo", geo.to_str().unwrap(), "--min-agents", "3"],
    );

    // An older agent's start, to the nanosecond; all in one hour (so one day).
    let started = (Utc::now() - chrono::Duration::hours(2))
        .with_nanosecond(123_456_789)
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let mut signed = Vec::new();
    let keys: Vec<SigningKey> = (1..=4u8)
        .map(|i| SigningKey::from_bytes(&[i; 32]))
        .collect();
    for (i, key) in keys.iter().enumerate() {
        let r = synthetic_report(&mut rng, i as u32, Platform::Whatsapp, started, false);
        assert_eq!(r.started_at, started);
        signed.push(SignedReport::sign(&r, key).unwrap());
    }
    for (i, s) in signed[..3].iter().enumerate() {
        upload(&c, Ipv4Addr::new(127, 51, 1 + i as u8, 1), vec![s.clone()]).await;
    }
    upload(&c, SMALL.0, signed[3..].to_vec()).await;

    // The public export: no key, signature, signed body or fine time; the ASN only where its
    // cell is published.
    let (status, public) = http::get(c.http, "/api/v1/reports").await.unwrap();
    assert_eq!(status, 200, "{public}");
    assert_eq!(public.lines().count(), 4, "{public}");
    for s in &signed {
        for secret in [hex::encode(&s.key), hex::encode(&s.signature)] {
            assert!(!public.contains(&secret), "a key or signature in {public}");
        }
    }
    let minute = format!(":{:02}:", started.minute());
    let hour = started.format("%Y-%m-%dT%H:00:00Z").to_string();
    let mut asns = Vec::new();
    for line in public.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for field in ["key", "signature", "body", "received_at"] {
            assert!(v.get(field).is_none(), "{field} in {line}");
        }
        assert!(
            !line.contains("123456789") && !line.contains(".123"),
            "{line}"
        );
        assert_eq!(v["report"]["started_at"], hour.as_str(), "{line}");
        assert!(v["report"].get("attestation").is_none(), "{line}");
        assert_eq!(v["received_day"].as_str().unwrap().len(), 10, "{line}");
        assert_eq!(v["country"], "RU");
        assert!(v["report"]["streams"]
            .as_array()
            .is_some_and(|s| !s.is_empty()));
        // No time finer than the hour anywhere in the line.
        if minute != ":00:" {
            assert!(!line.contains(&minute), "{minute} in {line}");
        }
        asns.push(v["asn"].as_u64());
    }
    asns.sort();
    assert_eq!(
        asns,
        vec![None, Some(12389), Some(12389), Some(12389)],
        "the ASN under k is withheld: {public}"
    );
    assert!(!public.contains("8359"), "{public}");

    // Paging the public form with its opaque cursor: every report once.
    let mut seen = BTreeSet::new();
    let mut path = "/api/v1/reports?limit=1".to_string();
    for _ in 0..10 {
        let reply = http::request(c.http, &path, &[]).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        if reply.body.is_empty() {
            assert!(reply.header("x-next-cursor").is_none());
            break;
        }
        for line in reply.body.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(seen.insert(v["report"]["id"].as_str().unwrap().to_string()));
        }
        let cursor = reply.header("x-next-cursor").expect("a cursor").to_string();
        path = format!("/api/v1/reports?limit=1&cursor={cursor}");
    }
    assert_eq!(seen.len(), 4);
    let (status, body) = http::get(c.http, "/api/v1/reports?cursor=bm90LWEtY3Vyc29y")
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");

    // The full export: 401 without a token or with a wrong one, and nothing else.
    for headers in [
        vec![],
        vec![("Authorization", "Bearer cwt_0000")],
        vec![("Authorization", "Basic YTpi")],
    ] {
        let reply = http::request(c.http, "/api/v1/reports?full=true", &headers)
            .await
            .unwrap();
        assert_eq!(reply.status, 401, "{}", reply.body);
        assert!(
            reply
                .header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{}",
            reply.head
        );
        let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains("token") && error.contains("Bearer"),
            "{error}"
        );
        assert!(!reply.body.contains("signature\":"), "{}", reply.body);
    }

    // A token, issued by the CLI while the collector serves: the full export and `verify`.
    let out = collector_cli(&["token", "add", "alice"], &data);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    assert!(token.starts_with("cwt_"), "{token}");
    let file = data.join("tokens.json");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(
        !stored.contains(&token[4..]),
        "the plaintext token is stored"
    );
    let out = collector_cli(&["token", "list"], &data);
    assert!(out.status.success() && text(&out.stdout).contains("alice"));
    assert!(!text(&out.stdout).contains(&token[4..]));

    let (status, full) = http::get_bearer(c.http, "/api/v1/reports?full=true", &token)
        .await
        .unwrap();
    assert_eq!(status, 200, "{full}");
    assert_eq!(full.lines().count(), 4);
    for s in &signed {
        assert!(full.contains(&hex::encode(&s.key)) && full.contains(&hex::encode(&s.signature)));
    }
    assert!(full.contains("8359"), "the full export keeps every ASN");
    let verify = |name: &str, content: &str| {
        let f = root.path().join(name);
        std::fs::write(&f, content).unwrap();
        Command::new(callwatch_tests::built_binary("callwatch-collector"))
            .arg("verify")
            .arg(&f)
            .output()
            .unwrap()
    };
    let out = verify("full.ndjson", &full);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("4 valid, 0 invalid"));
    let out = verify("public.ndjson", &public);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("public, redacted export") && err.contains("researcher token"),
        "{err}"
    );

    // Bad input: a duplicate name, an unknown one; exit 1 with the reason, nothing changes.
    let out = collector_cli(&["token", "add", "alice"], &data);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    let out = collector_cli(&["token", "revoke", "mallory"], &data);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no token named \"mallory\""));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), stored);

    // Revoked while it serves: refused from the next request.
    let out = collector_cli(&["token", "revoke", "alice"], &data);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (status, body) = http::get_bearer(c.http, "/api/v1/reports?full=true", &token)
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");

    // A token file others may read is refused, naming it.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = collector_cli(&["token", "list"], &data);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&file.display().to_string()) && err.contains("644"),
        "{err}"
    );
    c.stop();
}
