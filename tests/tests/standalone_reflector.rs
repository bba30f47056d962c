//! Standalone reflectors on loopback, with the real binary: `callwatch-collector reflect` runs a
//! reflector with a key of its own; `callwatch-collector reflector add` registers it with a
//! running collector, whose ingest then files reports attested by it under the attested region
//! and tells agents about it; after `reflector revoke` its attestations are refused
//! (`unknown_key`) and such reports are filed by their upload address. Bad registry input is
//! refused with a clear error and changes nothing.

use callwatch_agent::engine::driver::Cancel;
use callwatch_agent::engine::{run_call_test, TestSpec};
use callwatch_agent::queue::Queue;
use callwatch_agent::state::AgentState;
use callwatch_agent::upload::{upload_queue, UploadSummary, UploadTarget};
use callwatch_collector::domain::{PrefixFrom, StoredReport};
use callwatch_collector::{serve, Collector};
use callwatch_proto::upload::QueuedReport;
use callwatch_proto::{CallReport, SignedReport};
use callwatch_tests::http;
use callwatch_tests::process::start_reflector;
use ed25519_dalek::SigningKey;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const TESTED_FROM: [u8; 4] = [127, 0, 0, 2];
const UPLOADED_FROM: [u8; 4] = [127, 0, 0, 3];

fn cli(args: &[&str]) -> Output {
    Command::new(callwatch_tests::built_binary("callwatch-collector"))
        .args(args)
        .output()
        .expect("running callwatch-collector")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn failed(out: &Output, want: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(want), "wanted {want:?} in {err}");
}

/// A real call test from 127.0.0.2 against `reflector`.
async fn call_test(reflector: SocketAddr) -> CallReport {
    let mut spec = TestSpec::voice(reflector, 400);
    spec.grace_ms = 200;
    spec.bind = Some(IpAddr::from(TESTED_FROM));
    tokio::task::spawn_blocking(move || run_call_test(&spec, &Cancel::default(), |_| {}).unwrap())
        .await
        .unwrap()
}

/// A real call test from 127.0.0.2 against `reflector`, signed, uploaded from 127.0.0.3.
async fn test_and_upload(
    collector: &Collector,
    reflector: SocketAddr,
    queue_dir: &Path,
) -> (CallReport, UploadSummary) {
    let report = call_test(reflector).await;
    let queue = Queue::open(queue_dir).unwrap();
    let agent = SigningKey::from_bytes(&[1; 32]);
    queue
        .push_queued(&QueuedReport {
            report: SignedReport::sign(&report, &agent).unwrap(),
            path_token: report.path_token,
        })
        .unwrap();
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&collector.pin, &mut pin).unwrap();
    let mut target = UploadTarget::new(collector.quic_addr, pin);
    target.tcp = None;
    target.server_name = "localhost".into();
    target.bind = Some(IpAddr::from(UPLOADED_FROM));
    target.connect_timeout = Duration::from_secs(5);
    let summary = upload_queue(&queue, &target).await.unwrap();
    assert_eq!(summary.accepted, 1, "{summary:?}");
    (report, summary)
}

/// The stored copy of `report`.
fn stored_copy(collector: &Collector, report: &CallReport) -> StoredReport {
    let mut found = None;
    collector
        .store
        .for_each(&mut |s: StoredReport| {
            let r: CallReport = serde_json::from_slice(&s.signed.body).unwrap();
            if r.id == report.id {
                found = Some(s);
            }
            Ok(())
        })
        .unwrap();
    found.expect("the report is stored")
}

fn filed(collector: &Collector, report: &CallReport) -> (String, u32) {
    let region = stored_copy(collector, report).region;
    (region.country, region.asn)
}

/// Where the stored copy of `report` took its prefix tag from (and that it has one).
fn prefix_from(collector: &Collector, report: &CallReport) -> PrefixFrom {
    let filing = stored_copy(collector, report).filing;
    assert!(filing.prefix_tag.is_some(), "a tag where there is a prefix");
    filing.prefix_from
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_standalone_reflector_attests_until_it_is_revoked() {
    let root = tempfile::tempdir().unwrap();
    let geo = root.path().join("regions.tsv");
    std::fs::write(
        &geo,
        "127.0.0.2\t127.0.0.2\t12389\tRU\tROSTELECOM-AS\n\
         127.0.0.3\t127.0.0.3\t60781\tNL\tLEASEWEB-NL\n",
    )
    .unwrap();
    let geo_arg = geo.to_str().unwrap();
    let reflector_data = root.path().join("reflector");
    // The collector's carry-out key, made before it starts, so the standalone reflector can
    // seal path tokens to it (`reflect --collector-key`, what an operator copies from
    // collector.seal.pub).
    let data = root.path().join("collector");
    std::fs::create_dir_all(&data).unwrap();
    let carry = callwatch_collector::carry::load_or_create(&data)
        .unwrap()
        .public()
        .to_string();
    let reflector = start_reflector(
        root.path(),
        &reflector_data,
        &["--geo", geo_arg, "--collector-key", &carry],
    );
    // Its keys are its own, owner-only, and published in its data folder.
    assert_eq!(
        std::fs::read_to_string(reflector_data.join("reflector-attest.pub"))
            .unwrap()
            .trim(),
        reflector.attest_key
    );
    assert_eq!(
        std::fs::read_to_string(reflector_data.join("reflector.pub"))
            .unwrap()
            .trim(),
        reflector.seal_key
    );

    let mut sc =
        callwatch_tests::open_collector_config(root.path(), "127.0.0.1:0".parse().unwrap());
    sc.geo = Some(geo.clone());
    let collector = serve(sc).await.unwrap();
    let data_arg = data.to_str().unwrap();
    let address = reflector.addr.to_string();

    // Registered while the collector runs: no restart needed.
    let out = ok(&cli(&[
        "reflector",
        "add",
        "--data",
        data_arg,
        "tallinn-1",
        &reflector.attest_key,
        "--address",
        &address,
        "--seal-key",
        &reflector.seal_key,
    ]));
    assert!(out.contains("registered reflector tallinn-1"), "{out}");
    let listed = ok(&cli(&["reflector", "list", "--data", data_arg, "--json"]));
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["reflectors"][0]["name"], "tallinn-1");

    let (report, summary) =
        test_and_upload(&collector, reflector.addr, &root.path().join("q1")).await;
    let attestation = report.attestation.clone().expect("the reflector attested");
    assert_eq!(
        (attestation.country.as_str(), attestation.asn),
        ("RU", 12389)
    );
    assert_eq!(
        filed(&collector, &report),
        ("RU".into(), 12389),
        "filed where it was tested"
    );
    // The standalone reflector's path token opened with the collector's key: counted under the
    // path's prefix, not the upload's.
    assert!(report.path_token.is_some());
    assert_eq!(prefix_from(&collector, &report), PrefixFrom::Path);
    // The agent learned the registered reflector with its upload and keeps it in its state.
    let list = summary.reflectors.clone().expect("a reflector list");
    let names: Vec<&str> = list.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["collector", "tallinn-1"]);
    assert_eq!(list[1].address.as_deref(), Some(address.as_str()));
    assert_eq!(
        list[1].seal_key.map(hex::encode),
        Some(reflector.seal_key.clone())
    );
    let state_file = root.path().join("agent-state.json");
    let mut state = AgentState::default();
    state.record_transport(&summary, chrono::Utc::now());
    state.save(&state_file).unwrap();
    let state = AgentState::load(&state_file).unwrap();
    assert_eq!(state.collector_reflectors[1].name, "tallinn-1");
    let shown = state.render();
    assert!(
        shown.contains("tallinn-1") && shown.contains(&address),
        "{shown}"
    );

    // A carried-out file is imported with the same keys as ingest (`AttestKeys::load`, what
    // `callwatch-collector import` uses): filed under the standalone reflector's attestation.
    let carried = call_test(reflector.addr).await;
    let file = root.path().join("carried.cwq");
    let mut sealer = callwatch_proto::carry::Sealer::new(&collector.carry_key, [3; 32], 1).unwrap();
    let agent = SigningKey::from_bytes(&[1; 32]);
    let line = sealer
        .line(&QueuedReport {
            report: SignedReport::sign(&carried, &agent).unwrap(),
            path_token: carried.path_token,
        })
        .unwrap();
    std::fs::write(&file, format!("{}{line}", sealer.header())).unwrap();
    let summary = callwatch_collector::carry::import(
        &file,
        &callwatch_collector::carry::load(&data).unwrap(),
        &callwatch_collector::attest::Filer {
            keys: callwatch_collector::attest::AttestKeys::load(&data).unwrap(),
            hosting: Default::default(),
            paths: Some(std::sync::Arc::new(
                callwatch_collector::attest::PathTokens::new(
                    callwatch_collector::carry::load(&data).unwrap(),
                ),
            )),
        },
        collector.store.clone(),
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(summary.rejected, 0);
    assert_eq!(filed(&collector, &carried), ("RU".into(), 12389));
    // Carried out, with its path token beside it: still the path's prefix.
    assert_eq!(prefix_from(&collector, &carried), PrefixFrom::Path);

    // Revoked: the same kind of report is refused as unknown_key and filed by upload address.
    let out = ok(&cli(&[
        "reflector",
        "revoke",
        "--data",
        data_arg,
        "tallinn-1",
    ]));
    assert!(out.contains("revoked reflector tallinn-1"), "{out}");
    let (report, summary) =
        test_and_upload(&collector, reflector.addr, &root.path().join("q2")).await;
    assert!(report.attestation.is_some(), "the reflector still attests");
    assert_eq!(filed(&collector, &report), ("NL".into(), 60781));
    let names: Vec<String> = summary
        .reflectors
        .expect("a reflector list")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["collector"], "a revoked reflector is not offered");

    let (status, metrics) = http::get(collector.http_addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for line in [
        "callwatch_attestations_total{result=\"valid\"} 1",
        "callwatch_attestations_total{result=\"unknown_key\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    collector.shutdown().await;
    let status = reflector.stop();
    assert!(
        status.success(),
        "the reflector stops cleanly on SIGTERM: {status}"
    );
}

#[test]
fn bad_registry_input_is_refused_clearly_and_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("collector");
    let data_arg = data.to_str().unwrap();
    let registry = data.join("reflectors.json");
    let good = hex::encode(SigningKey::from_bytes(&[5; 32]).verifying_key().as_bytes());
    let other = hex::encode(SigningKey::from_bytes(&[6; 32]).verifying_key().as_bytes());

    // A bad key on an empty registry: no file appears.
    failed(
        &cli(&["reflector", "add", "--data", data_arg, "riga", "12ab"]),
        "64 hex digits",
    );
    assert!(!registry.exists());
    ok(&cli(&[
        "reflector",
        "add",
        "--data",
        data_arg,
        "riga",
        &good,
    ]));
    let before = std::fs::read(&registry).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&registry).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the registry is owner-only");

    failed(
        &cli(&[
            "reflector",
            "add",
            "--data",
            data_arg,
            "vilnius",
            &"g".repeat(64),
        ]),
        "not hex",
    );
    failed(
        &cli(&["reflector", "add", "--data", data_arg, "riga", &other]),
        "already registered",
    );
    failed(
        &cli(&["reflector", "add", "--data", data_arg, "vilnius", &good]),
        "already registered as \"riga\"",
    );
    failed(
        &cli(&[
            "reflector",
            "add",
            "--data",
            data_arg,
            "vilnius",
            &other,
            "--seal-key",
            "beef",
        ]),
        "64 hex digits",
    );
    failed(
        &cli(&["reflector", "revoke", "--data", data_arg, "oslo"]),
        "no reflector named \"oslo\" (registered: riga)",
    );
    assert_eq!(std::fs::read(&registry).unwrap(), before, "nothing changed");
    let listed = ok(&cli(&["reflector", "list", "--data", data_arg]));
    assert!(listed.starts_with("riga  attest "), "{listed}");
    assert!(!listed.contains("REVOKED"), "{listed}");
}
