//! The censor lab on a real kernel, a few models once: nftables rules in network namespaces of
//! our own between a real agent and a real reflector (`tests/lab/censor-lab.sh`, which also
//! runs the whole catalogue on demand). The script exits non-zero when any test's verdict
//! differs from the model's expected one.
//!
//! Needs root and nftables, iproute2, jq (`.ci/run` installs them). Without root the test says
//! so loudly and does not pretend to have run the lab.

use callwatch_tests::built_binary;
use std::path::Path;
use std::process::Command;

#[test]
fn a_real_kernel_censor_lab_gives_the_expected_verdicts() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        eprintln!(
            "NOT RUN: the censor lab needs root (network namespaces, nftables); \
             run `sudo tests/lab/censor-lab.sh full-block downstream-only both-loss-5` by hand"
        );
        return;
    }
    let agent = built_binary("callwatch-agent");
    let collector = built_binary("callwatch-collector");
    assert_eq!(agent.parent(), collector.parent());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/censor-lab.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["--tests", "1", "--bin-dir"])
        .arg(agent.parent().unwrap_or(Path::new(".")))
        .args([
            "full-block",
            "downstream-only",
            "relay-address-block",
            "both-loss-5",
        ])
        .output()
        .expect("running the censor lab");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(out.status.success(), "the lab disagreed or failed");
    // Each model ran its test and agreed (the summary's last column, "1/1").
    for model in [
        "full-block",
        "downstream-only",
        "relay-address-block",
        "both-loss-5",
    ] {
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with(model))
            .unwrap_or_else(|| panic!("no summary line for {model}"));
        assert!(line.trim_end().ends_with("1/1"), "{line}");
    }
}
