//! What a real DPI engine makes of each arm: nDPI's `ndpiReader` (Debian's `libndpi-bin`, nDPI
//! 4.2 in Debian 12) classifies a capture of every platform's platform arm and control arm.
//!
//! The datagrams are the real ones: the agent's sans-IO `CallTest` (the code the UDP driver runs)
//! against the collector's reflector core, on a loss-free simulated path with 1 ms each way
//! (`callwatch_tests::sim::simulate_call_observed`, which hands out each datagram as sent). Each arm's datagrams, both directions, go into a pcap of their own
//! (Ethernet/IPv4/UDP between 127.0.0.1 ports, as `tcpdump -i lo` writes them; one file per arm
//! because nDPI 4.2 carries a STUN sub-classification from one flow to another on the same
//! address and port, tests/ndpi/FINDINGS.md §2.7), and `ndpiReader -i FILE -v 2` classifies it.
//!
//! Expected: WhatsApp's platform arm `STUN.WhatsAppCall`, Telegram's `Telegram`, Signal's
//! `STUN.SignalVoip`, Max's `RTP` (nDPI has no Max protocol; RTP is the most it can say), every
//! control arm `Unknown`. Run with `--nocapture` for the table that `proto/src/profile.rs`'s
//! module documentation carries (the test checks the two agree when nDPI is 4.2).
//!
//! Without `ndpiReader` on the PATH (or in `CALLWATCH_NDPI_READER`) the test fails, unless
//! `CALLWATCH_SKIP_NDPI=1` says to skip it; .ci/run installs it.

use callwatch_agent::engine::call::{CallRandom, CallTest};
use callwatch_agent::engine::TestSpec;
use callwatch_proto::profile::profile;
use callwatch_proto::{Platform, Role};
use callwatch_tests::emulator::{DelayConfig, ImpairmentConfig, PathConfig};
use callwatch_tests::sim::simulate_call_observed;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Long enough for Telegram's hello to be repeated once (every 10 s).
const TEST_MS: u32 = 12_000;
/// The capture's wall-clock start, seconds since the epoch.
const EPOCH_S: u64 = 1_760_000_000;
/// The reflector's clock at the test's start, as the UDP reflector's runs (a 1000 s epoch,
/// reflector/src/udp.rs). Not 0: the cookie's first bytes are the issue second, and
/// with it 0 every `Accept` would read, to nDPI 4.2's uTP rule (bittorrent.c: version 1, kind
/// ≤ 2, a big-endian "window" ≤ 65565 at bytes 12..16), as BitTorrent — which a real reflector
/// gives only for cookies issued in 2 seconds out of every 65536 (≈ 18 h).
const REFLECTOR_CLOCK_US: u64 = 1_000_000_000 + 3_600_000_000;

/// One datagram on the wire.
struct Wire {
    at_us: u64,
    arm: usize,
    /// Agent to reflector.
    up: bool,
    bytes: Vec<u8>,
}

/// The agent's UDP port for arm `i` of a test: ephemeral-looking, and no protocol's default
/// port in nDPI (so no port-based guess can name a flow).
fn agent_port(i: usize) -> u16 {
    47_310 + i as u16
}

/// Every datagram of one whole `platform` test, both directions, in time order; and each arm's
/// role and reflector port.
fn capture(platform: Platform, seed: u64) -> (Vec<Wire>, Vec<(Role, u16)>) {
    let mut spec = TestSpec::voice(SocketAddr::from(([127, 0, 0, 1], 40401)), TEST_MS);
    spec.platform = platform;
    spec.size = None; // the profile's sizes
                      // Sealed, as a configured agent sends (the classification must hold for what goes out).
    spec.reflector_key = Some(callwatch_tests::sim::sim_reflector_key());
    // A loss-free path of 1 ms each way.
    let path = PathConfig {
        delay: DelayConfig::fixed(1.0),
        ..PathConfig::default()
    };
    let cfg = ImpairmentConfig {
        seed,
        up: path.clone(),
        down: path,
        ..ImpairmentConfig::default()
    };
    let mut wire = Vec::new();
    let run = simulate_call_observed(&spec, cfg, REFLECTOR_CLOCK_US, seed, &mut |e| {
        wire.push(Wire {
            at_us: e.at_us,
            arm: e.arm,
            up: e.up,
            bytes: e.bytes.to_vec(),
        })
    })
    .unwrap();
    run.report.unwrap();
    let arms: Vec<(Role, u16)> = run
        .records
        .iter()
        .map(|(role, _)| *role)
        .zip(test_ports(&spec))
        .collect();
    wire.sort_by_key(|w| (w.at_us, !w.up));
    (wire, arms)
}

/// The reflector port of each arm of `spec`, in the test's arm order.
fn test_ports(spec: &TestSpec) -> Vec<u16> {
    CallTest::new(
        spec,
        CallRandom::from_seed(0),
        chrono::DateTime::UNIX_EPOCH,
        0,
    )
    .map(|t| t.arms().iter().map(|a| a.peer.port()).collect())
    .unwrap_or_default()
}

/// A pcap (DLT_EN10MB, like `tcpdump -i lo`) of `arm`'s datagrams between 127.0.0.1 ports.
fn write_pcap(path: &Path, wire: &[Wire], arm: usize, reflector_port: u16) {
    let mut out = Vec::new();
    for x in [0xA1B2_C3D4u32.to_le_bytes().as_slice(), &2u16.to_le_bytes()] {
        out.extend_from_slice(x);
    }
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    out.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    out.extend_from_slice(&65_535u32.to_le_bytes()); // snaplen
    out.extend_from_slice(&1u32.to_le_bytes()); // Ethernet
    for w in wire.iter().filter(|w| w.arm == arm) {
        let (src, dst) = if w.up {
            (agent_port(arm), reflector_port)
        } else {
            (reflector_port, agent_port(arm))
        };
        let frame = ethernet_ipv4_udp(src, dst, &w.bytes);
        let t_us = EPOCH_S * 1_000_000 + w.at_us;
        out.extend_from_slice(&((t_us / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((t_us % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    std::fs::write(path, out).unwrap();
}

fn ethernet_ipv4_udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut f = vec![0u8; 12]; // loopback "MAC" addresses, as on lo
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_start = f.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]); // id, DF, TTL, UDP, checksum 0
    f.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
    let sum = f[ip_start..].chunks(2).fold(0u32, |acc, w| {
        acc + u32::from(u16::from_be_bytes([w[0], w[1]]))
    });
    let sum = (sum & 0xFFFF) + (sum >> 16);
    let sum = !((sum & 0xFFFF) + (sum >> 16)) as u16;
    f[ip_start + 10..ip_start + 12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&src_port.to_be_bytes());
    f.extend_from_slice(&dst_port.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum
    f.extend_from_slice(payload);
    f
}

/// `ndpiReader`, if installed.
fn ndpi_reader() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CALLWATCH_NDPI_READER") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join("ndpiReader"))
        .find(|p| p.is_file())
}

/// nDPI's version, as `ndpiReader -h` prints it ("4.2.0").
fn ndpi_version(reader: &Path) -> String {
    let out = Command::new(reader).arg("-h").output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.split("nDPI ")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()
        })
        .unwrap_or("?")
        .to_string()
}

/// One flow as `ndpiReader -v 2` lists it: its two ends and the protocol it names.
#[derive(Debug)]
struct Flow {
    ends: String,
    protocol: String,
    confidence: String,
}

/// Runs `ndpiReader -i pcap -v 2` and reads its flow lines, e.g.
/// `1  UDP 127.0.0.1:47310 <-> 127.0.0.1:599 [proto: 185/Telegram][...][Confidence: DPI]...`.
fn classify(reader: &Path, pcap: &Path) -> Vec<Flow> {
    let out = Command::new(reader)
        .arg("-i")
        .arg(pcap)
        .args(["-v", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ndpiReader failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.next()?.parse::<u32>().ok()?;
            (words.next()? == "UDP").then_some(())?;
            let ends = line
                .split('[')
                .next()?
                .split("UDP")
                .nth(1)?
                .trim()
                .to_string();
            let field = |name: &str| {
                let at = line.find(&format!("[{name}: "))? + name.len() + 3;
                Some(line[at..].split(']').next()?.to_string())
            };
            let protocol = field("proto")?;
            // "185/Telegram", "78.45/STUN.WhatsAppCall", "0/Unknown": the name after the ids.
            let protocol = protocol
                .split_once('/')
                .map_or(protocol.clone(), |p| p.1.to_string());
            Some(Flow {
                ends,
                protocol,
                confidence: field("Confidence").unwrap_or_else(|| "-".into()),
            })
        })
        .collect()
}

/// What each arm must be classified as.
fn expected(platform: Platform, role: Role) -> &'static str {
    match (platform, role) {
        (_, Role::Control) => "Unknown",
        (Platform::Whatsapp, _) => "STUN.WhatsAppCall",
        (Platform::Telegram, _) => "Telegram",
        (Platform::Signal, _) => "STUN.SignalVoip",
        (Platform::Max, _) => "RTP",
        _ => "-",
    }
}

/// The table as `proto/src/profile.rs` documents it.
const TABLE_HEADER: &str =
    "| platform | arm | reflector port | nDPI 4.2 (`ndpiReader -i`) | confidence |";

#[test]
fn ndpi_classifies_each_platform_arm_as_its_platform_and_every_control_arm_unknown() {
    let Some(reader) = ndpi_reader() else {
        callwatch_tests::cannot_run_here(
            "CALLWATCH_SKIP_NDPI",
            "ndpiReader is not installed (Debian: apt-get install libndpi-bin, or set \
             CALLWATCH_NDPI_READER); no arm was classified",
        );
        return;
    };
    let version = ndpi_version(&reader);
    let dir = tempfile::tempdir().unwrap();
    // CALLWATCH_NDPI_KEEP=DIR keeps the captures there, to look at them.
    let keep = std::env::var_os("CALLWATCH_NDPI_KEEP").map(PathBuf::from);
    let dir_path = keep.clone().unwrap_or_else(|| dir.path().to_path_buf());
    std::fs::create_dir_all(&dir_path).unwrap();
    let mut table = format!("{TABLE_HEADER}\n| --- | --- | --- | --- | --- |\n");
    // CALLWATCH_NDPI_SEEDS=N classifies N tests per platform (default 3).
    let seeds: u64 = std::env::var("CALLWATCH_NDPI_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let mut failures = Vec::new();
    for (i, platform) in [
        Platform::Whatsapp,
        Platform::Telegram,
        Platform::Signal,
        Platform::Max,
    ]
    .into_iter()
    .enumerate()
    {
        // Several seeds: per-test tags, SSRCs and padding differ, the classification must not.
        for seed in (0..seeds).map(|s| 1 + s + 1000 * i as u64) {
            let (wire, arms) = capture(platform, seed);
            for (arm, (role, port)) in arms.iter().enumerate() {
                let pcap = dir_path.join(format!("{platform}-{role}-{seed}.pcap"));
                write_pcap(&pcap, &wire, arm, *port);
                let flows = classify(&reader, &pcap);
                let want = expected(platform, *role);
                let got: Vec<&str> = flows.iter().map(|f| f.protocol.as_str()).collect();
                let ends = format!("127.0.0.1:{} <-> 127.0.0.1:{port}", agent_port(arm));
                if got != [want] || flows[0].ends != ends {
                    failures.push(format!(
                        "{platform} {role} arm (port {port}, seed {seed}): nDPI {version} says \
                         {flows:?}, expected one flow, {want}"
                    ));
                }
                if seed == 1 + 1000 * i as u64 {
                    let conf = flows.first().map_or("-", |f| f.confidence.as_str());
                    println!("{platform:9} {role:8} {port:6} {got:?} ({conf})");
                    table.push_str(&format!(
                        "| {platform} | {role} | {port} | {} | {conf} |\n",
                        got.first().copied().unwrap_or("(no flow)")
                    ));
                }
            }
        }
    }
    println!("nDPI {version}, {}:\n\n{table}", reader.display());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The documented table is this test's, when the nDPI is the reference one.
    if version.starts_with("4.2") {
        let doc = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/src/profile.rs"),
        )
        .unwrap();
        let doc: String = doc
            .lines()
            .filter_map(|l| l.strip_prefix("//! "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            doc.contains(&table),
            "proto/src/profile.rs's module docs do not carry the measured table:\n{table}"
        );
    } else {
        eprintln!("nDPI {version} is not the reference 4.2: the documented table was not checked");
    }
}

#[test]
fn pcap_frames_are_well_formed() {
    let f = ethernet_ipv4_udp(1, 2, &[9; 10]);
    assert_eq!(f.len(), 14 + 20 + 8 + 10);
    // The IPv4 header checksums to zero.
    let sum = f[14..34].chunks(2).fold(0u32, |acc, w| {
        acc + u32::from(u16::from_be_bytes([w[0], w[1]]))
    });
    assert_eq!((sum & 0xFFFF) + (sum >> 16), 0xFFFF);
    // Every arm of a platform test sends, and the first datagram of Telegram's platform arm is
    // its hello.
    let (wire, arms) = capture(Platform::Telegram, 1);
    assert_eq!(arms[0], (Role::Platform, 599));
    let first = wire.iter().find(|w| w.arm == 0).unwrap();
    assert_eq!(first.bytes.len(), 40);
    assert_eq!(&first.bytes[16..28], &[0xFF; 12]);
    assert_eq!(profile(Platform::Telegram).ports[0], 599);
}
