//! The sender's address is used to find its region and kept nowhere: the real collector binary,
//! with MaxMind DB region files, receives signed reports from two loopback addresses; the
//! aggregate shows their regions, and neither address (as text or as its four bytes) is in the
//! data folder, the collector's output, the HTTP API's answers or any export. The collector's
//! output (at info level, and at debug level with every crate's debug lines) holds no agent's
//! public key either (the stored reports and the exports must: they are how a report is
//! verified).

use callwatch_agent::engine::driver::Cancel;
use callwatch_agent::engine::{run_call_test, TestSpec};
use callwatch_agent::queue::Queue;
use callwatch_agent::upload::{upload_queue, UploadTarget};
use callwatch_collector::geo::mmdb_writer::{asn_record, country_record, MmdbWriter};
use callwatch_collector::geo::{Geo, Region};
use callwatch_proto::{ReportId, SignedReport};
use callwatch_tests::http;
use callwatch_tests::process::start_collector_logging;
use ed25519_dalek::SigningKey;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The senders: address → (country, ASN, organisation).
const SENDERS: [(Ipv4Addr, &str, u32, &str); 2] = [
    (Ipv4Addr::new(127, 0, 0, 2), "RU", 12389, "ROSTELECOM-AS"),
    (Ipv4Addr::new(127, 0, 0, 3), "DE", 3320, "DTAG"),
];

/// Reports each sender uploads.
const REPORTS_EACH: u8 = 3;

/// Every form of a sender's address that must not be found anywhere.
fn forbidden() -> Vec<(String, Vec<u8>)> {
    let mut f = Vec::new();
    for (ip, ..) in SENDERS {
        f.push((format!("text {ip}"), ip.to_string().into_bytes()));
        f.push((format!("bytes of {ip}"), ip.octets().to_vec()));
    }
    f
}

fn assert_clean(what: &str, bytes: &[u8]) {
    for (name, needle) in forbidden() {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
            "{name} found in {what}"
        );
    }
}

/// Every form of the senders' agent keys that must not be in a log: hex (whole, or its first 8
/// bytes), and its first bytes as Rust prints a byte slice.
fn forbidden_in_logs() -> Vec<(String, Vec<u8>)> {
    let mut f = Vec::new();
    for n in 0..SENDERS.len() {
        let public = agent_key(n).verifying_key().to_bytes();
        let hex = hex::encode(public);
        f.push((format!("agent key {n} (hex)"), hex.clone().into_bytes()));
        f.push((format!("agent key {n} (hex prefix)"), hex[..16].into()));
        let upper = hex.to_uppercase();
        f.push((format!("agent key {n} (HEX prefix)"), upper[..16].into()));
        let debug = format!("{:?}", &public[..]);
        f.push((
            format!("agent key {n} (debug)"),
            debug[..debug.len() / 4].into(),
        ));
    }
    f
}

/// A log: no sender address, no agent key.
fn assert_clean_log(what: &str, bytes: &[u8]) {
    assert_clean(what, bytes);
    for (name, needle) in forbidden_in_logs() {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
            "{name} found in {what}"
        );
    }
}

/// The key the `n`th sender signs with.
fn agent_key(n: usize) -> SigningKey {
    SigningKey::from_bytes(&[40 + n as u8; 32])
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn write_fixtures(root: &Path) -> (PathBuf, PathBuf) {
    let (country, asn) = (
        root.join("GeoLite2-Country.mmdb"),
        root.join("GeoLite2-ASN.mmdb"),
    );
    let (mut c, mut a) = (
        MmdbWriter::new("GeoLite2-Country"),
        MmdbWriter::new("GeoLite2-ASN"),
    );
    for (ip, cc, asn, org) in SENDERS {
        c = c.insert((IpAddr::V4(ip), 32), country_record(cc));
        a = a.insert((IpAddr::V4(ip), 32), asn_record(asn, org));
    }
    c.write(&country).unwrap();
    a.write(&asn).unwrap();
    // The fixtures say what the test expects, read the way the collector reads them.
    let geo = Geo::load([&country, &asn]).unwrap();
    for (ip, cc, asn, _) in SENDERS {
        let want = Region {
            country: cc.into(),
            asn,
            subdivision: String::new(),
        };
        assert_eq!(geo.lookup(IpAddr::V4(ip)), want);
    }
    (country, asn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mmdb_regions_reach_the_aggregate_and_no_address_is_kept() {
    regions_kept_addresses_and_keys_not("info").await;
}

/// Debug level turns on every crate's debug lines (QUIC, TLS, the store): none may name a
/// sender's address or key either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_debug_level_the_logs_hold_no_address_and_no_agent_key() {
    regions_kept_addresses_and_keys_not("debug").await;
}

async fn regions_kept_addresses_and_keys_not(rust_log: &str) {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let data = root.join("data");
    let (country, asn) = write_fixtures(root);
    let (country, asn) = (country.display().to_string(), asn.display().to_string());
    let c = start_collector_logging(
        root,
        &data,
        &["--min-agents", "1", "--geo", &country, "--geo", &asn],
        rust_log,
    );

    for (n, (ip, ..)) in SENDERS.into_iter().enumerate() {
        // A real test against the reflector, from the sender's address, then uploads from it.
        let mut spec = TestSpec::voice(c.reflector, 300);
        spec.grace_ms = 200;
        spec.bind = Some(IpAddr::V4(ip));
        let base =
            tokio::task::spawn_blocking(move || run_call_test(&spec, &Cancel::default(), |_| {}))
                .await
                .unwrap()
                .unwrap();
        let queue = Queue::open(&root.join(format!("queue-{n}"))).unwrap();
        let key = agent_key(n);
        for i in 0..REPORTS_EACH {
            let mut r = base.clone();
            r.id = ReportId([n as u8 * 16 + i + 1; 16]);
            queue.push(&SignedReport::sign(&r, &key).unwrap()).unwrap();
        }
        let target = UploadTarget {
            collector: c.quic,
            tcp: None,
            server_name: "localhost".into(),
            pin: c.pin,
            bind: Some(IpAddr::V4(ip)),
            batch: 2,
            connect_timeout: Duration::from_secs(5),
            fetch_seal_key: false,
            tcp_first: false,
            fetch_endpoints: false,
        };
        let summary = upload_queue(&queue, &target).await.unwrap();
        assert_eq!(summary.accepted, usize::from(REPORTS_EACH), "{summary:?}");
    }

    // The aggregate by country and ASN: each sender's reports under its own region.
    let (status, body) = http::get(c.http, "/api/v1/aggregation?axis_x=country&axis_y=asn")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_clean("the aggregation API's answer", body.as_bytes());
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cells = v["result"].as_array().unwrap();
    for (_, cc, asn, _) in SENDERS {
        let cell = cells
            .iter()
            .find(|c| c["country"] == cc && c["asn"] == asn)
            .unwrap_or_else(|| panic!("no {cc}/AS{asn} cell in {body}"));
        assert_eq!(cell["count"], u64::from(REPORTS_EACH), "{body}");
        assert_eq!(cell["agents"], 1, "{body}");
    }
    assert_eq!(cells.len(), SENDERS.len(), "no other region: {body}");
    let (status, body) = http::get(c.http, "/api/v1/reports?since=0&limit=100")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body.lines().count(),
        SENDERS.len() * usize::from(REPORTS_EACH)
    );
    assert_clean("the reports API's answer", body.as_bytes());
    let (_, metrics) = http::get(c.http, "/metrics").await.unwrap();
    assert_clean("the metrics", metrics.as_bytes());

    c.stop();

    // Everything the collector wrote or printed.
    let mut files = Vec::new();
    files_under(&data, &mut files);
    assert!(
        files.iter().any(|f| f.to_string_lossy().contains("sled")),
        "the store is in the data folder: {files:?}"
    );
    let mut bytes_seen = 0;
    for f in &files {
        // Owner-only: nobody else on the machine can read the store or the keys.
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(f).unwrap().permissions());
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", f.display());
        let bytes = std::fs::read(f).unwrap();
        bytes_seen += bytes.len();
        assert_clean(&f.display().to_string(), &bytes);
    }
    assert!(bytes_seen > 0);
    let stdout = std::fs::read(root.join("stdout.log")).unwrap();
    let stderr = std::fs::read(root.join("stderr.log")).unwrap();
    assert!(
        String::from_utf8_lossy(&stderr).contains("GeoLite2-ASN"),
        "the region sources are logged at info level: {}",
        String::from_utf8_lossy(&stderr)
    );
    // Each acknowledged batch is logged at info, as counts (and the check below finds no
    // address or key in those lines either).
    assert!(
        String::from_utf8_lossy(&stderr)
            .lines()
            .any(|l| l.contains("batch acknowledged") && l.contains("accepted=")),
        "accepted batches are logged: {}",
        String::from_utf8_lossy(&stderr)
    );
    // The level took: debug lines are there to search.
    if rust_log == "debug" {
        let debug_lines = String::from_utf8_lossy(&stderr)
            .lines()
            .filter(|l| l.contains("DEBUG"))
            .count();
        assert!(debug_lines > 0, "no debug line at RUST_LOG=debug");
        eprintln!("{debug_lines} debug lines searched");
    }
    // The check does see addresses where there are some: the collector prints its own.
    assert!(String::from_utf8_lossy(&stdout).contains("127.0.0.1"));
    // And it does see keys where there are some: the collector prints its own reflector's.
    let reflector_key = std::fs::read_to_string(data.join("reflector.pub")).unwrap();
    let printed = String::from_utf8_lossy(&stdout);
    assert!(printed.contains(reflector_key.trim()), "{printed}");
    assert_clean_log("the collector's stdout", &stdout);
    assert_clean_log("the collector's stderr", &stderr);

    // Every export format of the stopped store.
    let mut exports = vec![vec!["--format", "ndjson"]];
    for format in ["json", "csv"] {
        for (x, y) in [
            ("country", Some("asn")),
            ("asn", None),
            ("day", Some("platform")),
        ] {
            let mut args = vec!["--format", format, "--axis-x", x, "--min-agents", "1"];
            if let Some(y) = y {
                args.extend(["--axis-y", y]);
            }
            exports.push(args);
        }
    }
    for args in exports {
        let out = Command::new(callwatch_tests::built_binary("callwatch-collector"))
            .args(["export", "--data"])
            .arg(&data)
            .args(&args)
            .env("RUST_LOG", rust_log)
            .output()
            .unwrap();
        let what = format!("export {}", args.join(" "));
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        if args.contains(&"ndjson") {
            // The raw export carries each agent's key (it is how a record is verified): the
            // form the logs are searched for is the form a key takes.
            for n in 0..SENDERS.len() {
                let public = hex::encode(agent_key(n).verifying_key().to_bytes());
                assert!(text.contains(&public), "{what}: no agent key {n}");
            }
        }
        if args.contains(&"asn") || args.contains(&"ndjson") {
            assert!(
                text.contains("12389") && text.contains("3320"),
                "{what}: {text}"
            );
        }
        assert_clean(&format!("{what} (stdout)"), &out.stdout);
        assert_clean_log(&format!("{what} (stderr)"), &out.stderr);
    }
}

#[test]
fn a_corrupt_region_database_stops_the_collector_at_startup_with_its_name() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let (country, _) = write_fixtures(root);
    let mut bytes = std::fs::read(&country).unwrap();
    bytes[..3].copy_from_slice(&[0xff, 0xff, 0xf0]);
    std::fs::write(&country, &bytes).unwrap();
    let out = Command::new(callwatch_tests::built_binary("callwatch-collector"))
        .args(["serve", "--data"])
        .arg(root.join("data"))
        .args(["--listen", "127.0.0.1:0", "--reflector", "127.0.0.1:0"])
        .args(["--http", "127.0.0.1:0", "--geo"])
        .arg(&country)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("GeoLite2-Country.mmdb"), "{stderr}");
    assert!(stderr.contains("corrupt MaxMind DB"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
