//! Reflector-attested region on loopback: a region table places 127.0.0.2 in Russia and
//! 127.0.0.3 in the Netherlands; the agent tests from the first and uploads from the second.
//! The report is filed under the tested-from region (its reflector attestation), counted as
//! uploaded elsewhere; forged, misplaced and foreign attestations are refused with their reason
//! and those reports are filed by the upload address (a hosting network's, so marked). Stored
//! reports, the raw export and the aggregates say how each report was filed. No address is
//! stored.

use callwatch_agent::engine::driver::Cancel;
use callwatch_agent::engine::{run_call_test, TestSpec};
use callwatch_agent::queue::Queue;
use callwatch_agent::upload::{upload_queue, UploadTarget};
use callwatch_collector::domain::{PrefixFrom, RegionSource, StoredReport};
use callwatch_collector::export::ExportRecord;
use callwatch_collector::serve;
use callwatch_proto::attest::{Claim, RegionAttestation};
use callwatch_proto::pathtoken::{self, PathToken};
use callwatch_proto::upload::QueuedReport;
use callwatch_proto::{CallReport, ReportId, SignedReport};
use callwatch_reflector::identity::load_or_create_attestation;
use callwatch_tests::http;
use ed25519_dalek::SigningKey;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

// Another /24 than the upload's, so the path's prefix tag and the upload's differ.
const TESTED_FROM: [u8; 4] = [127, 0, 1, 2];
const UPLOADED_FROM: [u8; 4] = [127, 0, 0, 3];

/// The same report under another id, its attestation replaced by `attestation`.
fn variant(report: &CallReport, id: u8, attestation: Option<RegionAttestation>) -> CallReport {
    let mut r = report.clone();
    r.id = ReportId([id; 16]);
    r.attestation = attestation;
    r
}

fn signed_for(key: &SigningKey, id: ReportId, like: &RegionAttestation) -> RegionAttestation {
    let claim = Claim {
        report_id: id.0,
        country: *b"RU",
        asn: like.asn,
        hour: like.hour,
        subdivision: None,
        token_digest: None,
    };
    let (key_id, sig) = claim.sign(key);
    RegionAttestation::from_signed(&claim, &key_id, &sig).unwrap()
}

/// As [`signed_for`], signing the digest of `token` too.
fn signed_with_token(
    key: &SigningKey,
    id: ReportId,
    like: &RegionAttestation,
    token: &PathToken,
) -> RegionAttestation {
    let claim = Claim {
        report_id: id.0,
        country: *b"RU",
        asn: like.asn,
        hour: like.hour,
        subdivision: None,
        token_digest: Some(pathtoken::digest(token)),
    };
    let (key_id, sig) = claim.sign(key);
    RegionAttestation::from_signed(&claim, &key_id, &sig).unwrap()
}

/// A real call test from [`TESTED_FROM`] to the collector's reflector (blocking: run off the
/// runtime's workers).
async fn call_test_from_tested(collector: &callwatch_collector::Collector) -> CallReport {
    let mut spec = TestSpec::voice(collector.reflector.addrs[0], 400);
    spec.grace_ms = 200;
    spec.bind = Some(IpAddr::from(TESTED_FROM));
    let report = tokio::task::spawn_blocking(move || {
        run_call_test(&spec, &Cancel::default(), |_| {}).unwrap()
    })
    .await
    .unwrap();
    report
}

/// QUIC uploads to `collector` from [`UPLOADED_FROM`].
fn upload_target(collector: &callwatch_collector::Collector) -> UploadTarget {
    let mut target = UploadTarget::new(collector.quic_addr, {
        let mut p = [0u8; 32];
        hex::decode_to_slice(&collector.pin, &mut p).unwrap();
        p
    });
    target.tcp = None;
    target.server_name = "localhost".into();
    target.bind = Some(IpAddr::from(UPLOADED_FROM));
    target.connect_timeout = Duration::from_secs(5);
    target
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_is_filed_where_it_was_tested_not_where_it_was_uploaded() {
    let root = tempfile::tempdir().unwrap();
    let geo = root.path().join("regions.tsv");
    std::fs::write(
        &geo,
        "127.0.1.2\t127.0.1.2\t12389\tRU\tROSTELECOM-AS\n\
         127.0.0.3\t127.0.0.3\t60781\tNL\tLEASEWEB-NL\n",
    )
    .unwrap();
    let data = root.path().join("collector");
    let mut sc =
        callwatch_tests::open_collector_config(root.path(), "127.0.0.1:0".parse().unwrap());
    sc.geo = Some(geo);
    let collector = serve(sc).await.unwrap();

    let report = call_test_from_tested(&collector).await;
    let attestation = report.attestation.clone().expect("the reflector attested");
    assert_eq!(
        (attestation.country.as_str(), attestation.asn),
        ("RU", 12389)
    );
    assert_eq!(attestation.report_id, report.id);

    // Variants: a flipped signature bit, an attestation made for another report, one signed by
    // a key the collector does not know.
    let own = load_or_create_attestation(&data).unwrap();
    let mut flipped = attestation.clone();
    let mut sig = hex::decode(&flipped.signature).unwrap();
    sig[3] ^= 0x10;
    flipped.signature = hex::encode(sig);
    let forged = variant(&report, 0xa1, Some(flipped));
    let moved = variant(
        &report,
        0xa2,
        Some(signed_for(&own, ReportId([0xee; 16]), &attestation)),
    );
    let stranger = SigningKey::from_bytes(&[0x33; 32]);
    let foreign = variant(
        &report,
        0xa3,
        Some(signed_for(&stranger, ReportId([0xa3; 16]), &attestation)),
    );
    let bare = variant(&report, 0xa4, None);
    // The serving collector's reflector sealed the path's prefix to the collector's key and
    // signed the token's digest; the token travels beside the report, not in it.
    let token = report.path_token.expect("the reflector made a path token");
    assert!(attestation.path_token_digest.is_some());
    let body = serde_json::to_string(&report).unwrap();
    assert!(
        !body.contains(&hex::encode(token)),
        "the token is never in the signed body"
    );
    // Valid attestations (signed by the collector's own reflector key) with a token that is not
    // the one they signed, and with the signed one that was never sealed to this collector.
    let swapped = variant(
        &report,
        0xa5,
        Some(signed_with_token(
            &own,
            ReportId([0xa5; 16]),
            &attestation,
            &[1; 55],
        )),
    );
    let unsealed = variant(
        &report,
        0xa6,
        Some(signed_with_token(
            &own,
            ReportId([0xa6; 16]),
            &attestation,
            &[2; 55],
        )),
    );

    let agent = SigningKey::from_bytes(&[1; 32]);
    let queue = Queue::open(&root.path().join("queue")).unwrap();
    for (r, path_token) in [
        (&report, Some(token)),
        (&forged, None),
        (&moved, None),
        (&foreign, None),
        (&bare, None),
        (&swapped, Some([3; 55])),
        (&unsealed, Some([2; 55])),
    ] {
        queue
            .push_queued(&QueuedReport {
                report: SignedReport::sign(r, &agent).unwrap(),
                path_token,
            })
            .unwrap();
    }
    let target = upload_target(&collector);
    let summary = upload_queue(&queue, &target).await.unwrap();
    assert_eq!(summary.accepted, 7, "{summary:?}");

    let mut filed = BTreeMap::new();
    collector
        .store
        .for_each(&mut |s: StoredReport| {
            let r: CallReport = serde_json::from_slice(&s.signed.body).unwrap();
            filed.insert(r.id.0, (s.region.country.clone(), s.region.asn, s.filing));
            Ok(())
        })
        .unwrap();
    // Attested in Russia, uploaded from a Dutch hosting network: filed under Russia, marked as
    // uploaded elsewhere, not as a hosting path (the path measured was Rostelecom's); counted
    // under the path's prefix, from its token.
    let (cc, asn, real) = filed[&report.id.0].clone();
    assert_eq!((cc.as_str(), asn), ("RU", 12389));
    assert_eq!(
        (
            real.source,
            real.uploaded_elsewhere,
            real.hosting,
            real.prefix_from
        ),
        (RegionSource::Attested, true, false, PrefixFrom::Path)
    );
    let path_tag = real.prefix_tag.clone().expect("a prefix tag");
    // The rest are filed by the upload's address, a hosting network (AS60781, LeaseWeb, is on
    // the built-in list): marked so, and counted under the upload's prefix (another /24).
    let upload_tag = filed[&[0xa4; 16]]
        .2
        .prefix_tag
        .clone()
        .expect("a prefix tag");
    assert_ne!(path_tag, upload_tag);
    assert_eq!(path_tag.len(), 16);
    for id in [0xa1, 0xa2, 0xa3, 0xa4] {
        let (cc, asn, f) = &filed[&[id; 16]];
        assert_eq!((cc.as_str(), *asn), ("NL", 60781), "report {id:#x}");
        assert_eq!(
            (f.source, f.uploaded_elsewhere, f.hosting, f.prefix_from),
            (RegionSource::Upload, false, true, PrefixFrom::Upload),
            "report {id:#x} is filed by its upload address"
        );
        assert_eq!(f.prefix_tag.as_ref(), Some(&upload_tag));
    }
    // Valid attestations whose token is not the signed one, or does not open: the region is
    // attested, the prefix the upload's.
    for id in [0xa5, 0xa6] {
        let (cc, _, f) = &filed[&[id; 16]];
        assert_eq!(cc, "RU");
        assert_eq!(f.prefix_from, PrefixFrom::Upload, "report {id:#x}");
        assert_eq!(f.prefix_tag.as_ref(), Some(&upload_tag));
    }

    // The raw export says how each report was filed (the full one: a researcher token).
    let token = callwatch_collector::token::add(&data, "attested").unwrap();
    let (status, raw) = http::get_bearer(
        collector.http_addr,
        "/api/v1/reports?full=true&limit=10",
        &token,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{raw}");
    assert!(
        !raw.contains("prefix") && !raw.contains(&path_tag) && !raw.contains(&upload_tag),
        "prefix tags are never exported"
    );
    let mut exported = BTreeMap::new();
    for line in raw.lines().filter(|l| !l.trim().is_empty()) {
        let rec: ExportRecord = serde_json::from_str(line).unwrap();
        let body: CallReport = serde_json::from_str(&rec.body).unwrap();
        exported.insert(
            body.id.0,
            (rec.region_source, rec.uploaded_elsewhere, rec.hosting),
        );
    }
    assert_eq!(
        exported[&report.id.0],
        ("attested".to_string(), true, false)
    );
    assert_eq!(exported[&[0xa4; 16]], ("upload".to_string(), false, true));
    // The aggregates count both marks per cell.
    let (status, cells) = http::get(
        collector.http_addr,
        "/api/v1/aggregation?axis_x=country&platform=generic",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{cells}");
    let cells: serde_json::Value = serde_json::from_str(&cells).unwrap();
    let cell = |cc: &str| {
        cells["result"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["country"] == cc)
            .unwrap_or_else(|| panic!("no {cc} cell in {cells}"))
            .clone()
    };
    assert_eq!(cell("RU")["filing"]["uploaded_elsewhere"], 3, "{cells}");
    assert_eq!(cell("RU")["filing"]["hosting"], 0, "{cells}");
    assert_eq!(cell("NL")["filing"]["uploaded_elsewhere"], 0, "{cells}");
    assert_eq!(cell("NL")["filing"]["hosting"], 4, "{cells}");

    let (status, metrics) = http::get(collector.http_addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for line in [
        "callwatch_attestations_total{result=\"valid\"} 3",
        "callwatch_attestations_total{result=\"bad_signature\"} 1",
        "callwatch_attestations_total{result=\"other_report\"} 1",
        "callwatch_attestations_total{result=\"unknown_key\"} 1",
        "callwatch_attestations_total{result=\"absent\"} 1",
        "callwatch_uploaded_elsewhere_total 3",
        "callwatch_path_tokens_total{result=\"valid\"} 1",
        "callwatch_path_tokens_total{result=\"other_token\"} 1",
        "callwatch_path_tokens_total{result=\"does_not_open\"} 1",
        "callwatch_reports_hosting_total 4",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    // Neither address reaches the store.
    for ip in [TESTED_FROM, UPLOADED_FROM] {
        let text = IpAddr::from(ip).to_string();
        collector
            .store
            .for_each(&mut |s: StoredReport| {
                let body = String::from_utf8_lossy(&s.signed.body).to_string();
                assert!(!body.contains(&text), "{text} in a stored report");
                Ok(())
            })
            .unwrap();
    }
    collector.shutdown().await;
}

/// The attested subdivision (#17 item 3): a City database places the tested-from /24 in St
/// Petersburg and the upload's in Moscow, both in the same network (AS12389). A real call test
/// gets the subdivision signed by the collector's reflector (report schema 2), and the report
/// is filed under St Petersburg, where its path was measured — not under the upload's Moscow,
/// which is where an attestation without a subdivision (an older reflector's) files it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attested_subdivision_files_the_report_where_it_was_tested() {
    use callwatch_reflector::geo::mmdb_writer::{city_record, MmdbWriter};
    let root = tempfile::tempdir().unwrap();
    let city_db = root.path().join("GeoLite2-City.mmdb");
    MmdbWriter::new("GeoLite2-City")
        .insert((IpAddr::from(TESTED_FROM), 24), city_record("RU", &["SPE"]))
        .insert(
            (IpAddr::from(UPLOADED_FROM), 24),
            city_record("RU", &["MOW"]),
        )
        .write(&city_db)
        .unwrap();
    let table = root.path().join("asns.tsv");
    std::fs::write(&table, "127.0.0.0\t127.0.1.255\t12389\tRU\tROSTELECOM-AS\n").unwrap();
    let data = root.path().join("collector");
    let mut sc =
        callwatch_tests::open_collector_config(root.path(), "127.0.0.1:0".parse().unwrap());
    // The City database first (country and subdivision), the table after it (the ASN).
    sc.geo = Some(city_db);
    sc.geo_files.push(table);
    let collector = serve(sc).await.unwrap();

    let report = call_test_from_tested(&collector).await;
    let attestation = report.attestation.clone().expect("the reflector attested");
    assert_eq!(
        (
            attestation.country.as_str(),
            attestation.asn,
            attestation.subdivision.as_deref()
        ),
        ("RU", 12389, Some("RU-SPE"))
    );
    assert_eq!(report.schema, 2, "an attested subdivision needs schema 2");
    // The same test as an older reflector would have attested it: no subdivision.
    let own = load_or_create_attestation(&data).unwrap();
    let mut older = variant(
        &report,
        0xb1,
        Some(signed_for(&own, ReportId([0xb1; 16]), &attestation)),
    );
    older.schema = 1;
    assert_eq!(older.attestation.as_ref().unwrap().subdivision, None);

    let agent = SigningKey::from_bytes(&[2; 32]);
    let queue = Queue::open(&root.path().join("queue")).unwrap();
    for r in [&report, &older] {
        queue
            .push_queued(&QueuedReport {
                report: SignedReport::sign(r, &agent).unwrap(),
                path_token: r.path_token,
            })
            .unwrap();
    }
    let target = upload_target(&collector);
    let summary = upload_queue(&queue, &target).await.unwrap();
    assert_eq!((summary.accepted, summary.rejected), (2, 0), "{summary:?}");

    let mut filed = BTreeMap::new();
    collector
        .store
        .for_each(&mut |s: StoredReport| {
            let r: CallReport = serde_json::from_slice(&s.signed.body).unwrap();
            filed.insert(r.id.0, (s.region.subdivision.clone(), s.filing.source));
            Ok(())
        })
        .unwrap();
    assert_eq!(
        filed[&report.id.0],
        ("RU-SPE".to_string(), RegionSource::Attested),
        "filed where it was tested"
    );
    assert_eq!(
        filed[&[0xb1; 16]],
        ("RU-MOW".to_string(), RegionSource::Attested),
        "without a signed subdivision: the upload's, from the attested network"
    );
    collector.shutdown().await;
}
