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
use callwatch_collector::export::ExportRecord;
use callwatch_collector::reflector::identity::load_or_create_attestation;
use callwatch_collector::store::{Filing, RegionSource, StoredReport};
use callwatch_collector::{serve, ServeConfig};
use callwatch_proto::attest::{Claim, RegionAttestation};
use callwatch_proto::{CallReport, ReportId, SignedReport};
use callwatch_tests::http;
use ed25519_dalek::SigningKey;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const TESTED_FROM: [u8; 4] = [127, 0, 0, 2];
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
    };
    let (key_id, sig) = claim.sign(key);
    RegionAttestation::from_signed(&claim, &key_id, &sig).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_is_filed_where_it_was_tested_not_where_it_was_uploaded() {
    let root = tempfile::tempdir().unwrap();
    let geo = root.path().join("regions.tsv");
    std::fs::write(
        &geo,
        "127.0.0.2\t127.0.0.2\t12389\tRU\tROSTELECOM-AS\n\
         127.0.0.3\t127.0.0.3\t60781\tNL\tLEASEWEB-NL\n",
    )
    .unwrap();
    let data = root.path().join("collector");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut sc = ServeConfig::new(data.clone());
    sc.listen = any;
    sc.reflectors = vec![any];
    sc.http = any;
    sc.geo = Some(geo);
    sc.policy.min_agents = 1;
    let collector = serve(sc).await.unwrap();

    // A real call test from 127.0.0.2 (blocking: run off the runtime's workers).
    let mut spec = TestSpec::voice(collector.reflector.addrs[0], 400);
    spec.grace_ms = 200;
    spec.bind = Some(IpAddr::from(TESTED_FROM));
    let report = tokio::task::spawn_blocking(move || {
        run_call_test(&spec, &Cancel::default(), |_| {}).unwrap()
    })
    .await
    .unwrap();
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

    let agent = SigningKey::from_bytes(&[1; 32]);
    let queue = Queue::open(&root.path().join("queue")).unwrap();
    for r in [&report, &forged, &moved, &foreign, &bare] {
        queue.push(&SignedReport::sign(r, &agent).unwrap()).unwrap();
    }
    let mut target = UploadTarget::new(collector.quic_addr, {
        let mut p = [0u8; 32];
        hex::decode_to_slice(&collector.pin, &mut p).unwrap();
        p
    });
    target.tcp = None;
    target.server_name = "localhost".into();
    target.bind = Some(IpAddr::from(UPLOADED_FROM));
    target.connect_timeout = Duration::from_secs(5);
    let summary = upload_queue(&queue, &target).await.unwrap();
    assert_eq!(summary.accepted, 5, "{summary:?}");

    let mut filed = BTreeMap::new();
    collector
        .store
        .for_each(&mut |s: StoredReport| {
            let r: CallReport = serde_json::from_slice(&s.signed.body).unwrap();
            filed.insert(
                r.id.0[0],
                (s.region.country.clone(), s.region.asn, s.filing),
            );
            Ok(())
        })
        .unwrap();
    // Attested in Russia, uploaded from a Dutch hosting network: filed under Russia, marked as
    // uploaded elsewhere, not as a hosting path (the path measured was Rostelecom's).
    assert_eq!(
        filed[&report.id.0[0]],
        (
            "RU".to_string(),
            12389,
            Filing {
                source: RegionSource::Attested,
                uploaded_elsewhere: true,
                hosting: false,
            }
        )
    );
    // The rest are filed by the upload's address, a hosting network (AS60781, LeaseWeb, is on
    // the built-in list): marked so.
    let by_upload = (
        "NL".to_string(),
        60781,
        Filing {
            source: RegionSource::Upload,
            uploaded_elsewhere: false,
            hosting: true,
        },
    );
    for id in [0xa1, 0xa2, 0xa3, 0xa4] {
        assert_eq!(
            filed[&id], by_upload,
            "report {id:#x} is filed by its upload address"
        );
    }

    // The raw export says how each report was filed.
    let (status, raw) = http::get(collector.http_addr, "/api/v1/reports?limit=10")
        .await
        .unwrap();
    assert_eq!(status, 200, "{raw}");
    let mut exported = BTreeMap::new();
    for line in raw.lines().filter(|l| !l.trim().is_empty()) {
        let rec: ExportRecord = serde_json::from_str(line).unwrap();
        let body: CallReport = serde_json::from_str(&rec.body).unwrap();
        exported.insert(
            body.id.0[0],
            (rec.region_source, rec.uploaded_elsewhere, rec.hosting),
        );
    }
    assert_eq!(
        exported[&report.id.0[0]],
        ("attested".to_string(), true, false)
    );
    assert_eq!(exported[&0xa4], ("upload".to_string(), false, true));
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
    assert_eq!(cell("RU")["filing"]["uploaded_elsewhere"], 1, "{cells}");
    assert_eq!(cell("RU")["filing"]["hosting"], 0, "{cells}");
    assert_eq!(cell("NL")["filing"]["uploaded_elsewhere"], 0, "{cells}");
    assert_eq!(cell("NL")["filing"]["hosting"], 4, "{cells}");

    let (status, metrics) = http::get(collector.http_addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for line in [
        "callwatch_attestations_total{result=\"valid\"} 1",
        "callwatch_attestations_total{result=\"bad_signature\"} 1",
        "callwatch_attestations_total{result=\"other_report\"} 1",
        "callwatch_attestations_total{result=\"unknown_key\"} 1",
        "callwatch_attestations_total{result=\"absent\"} 1",
        "callwatch_uploaded_elsewhere_total 1",
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
