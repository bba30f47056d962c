//! QUIC blocked on a real kernel: an nftables rule on a router namespace drops QUIC version 1
//! Initial packets between a real agent and a real collector (`tests/lab/quic-block.sh`, in
//! namespaces cwquic-* of its own). The agent's first upload, with the path open, goes over
//! QUIC; the second, through the block, must arrive over TLS on TCP, and `status` must say tcp.
//!
//! Needs root and nftables, iproute2, jq (`.ci/run` installs them). Without root the test says
//! so loudly and does not pretend to have run.

use callwatch_tests::built_binary;
use std::path::Path;
use std::process::Command;

#[test]
fn with_quic_blocked_by_nftables_uploads_arrive_over_tcp() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        eprintln!(
            "NOT RUN: the QUIC-block lab needs root (network namespaces, nftables); \
             run `sudo tests/lab/quic-block.sh` by hand"
        );
        return;
    }
    let agent = built_binary("callwatch-agent");
    let collector = built_binary("callwatch-collector");
    assert_eq!(agent.parent(), collector.parent());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/quic-block.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--bin-dir")
        .arg(agent.parent().unwrap_or(Path::new(".")))
        .output()
        .expect("running the QUIC-block lab");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(out.status.success(), "the QUIC-block lab failed");
    for want in [
        "ok: status upload_transport = quic",
        "ok: status upload_transport = tcp",
        "ok: connections over tcp = 1",
        "ok: reports stored = 2",
        "QUIC Initial packet(s)",
    ] {
        assert!(stdout.contains(want), "{want:?} missing");
    }
    assert!(!stdout.contains("WRONG"));
}
