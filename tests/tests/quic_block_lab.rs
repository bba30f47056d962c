//! QUIC blocked on a real kernel: an nftables rule on a router namespace drops QUIC version 1
//! Initial packets between a real agent and a real collector (`tests/lab/quic-block.sh`, in
//! namespaces cwquic-* of its own). The agent's first upload, with the path open, goes over
//! QUIC; the second, through the block, must arrive over TLS on TCP, and `status` must say tcp.
//!
//! Needs root and nftables, iproute2, jq (`.ci/run` installs them). Without root the test
//! fails, unless `CALLWATCH_SKIP_ROOT=1` says to skip it (then it says so loudly).

use callwatch_tests::run_lab_script;

#[test]
fn with_quic_blocked_by_nftables_uploads_arrive_over_tcp() {
    let Some(stdout) = run_lab_script("quic-block.sh", &[]) else {
        return;
    };
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
