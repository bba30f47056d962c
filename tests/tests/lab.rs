//! The censor lab on a real kernel, a few models once: nftables rules in network namespaces of
//! our own between a real agent and a real reflector (`tests/lab/censor-lab.sh`, which also
//! runs the whole catalogue on demand). The script exits non-zero when any test's verdict
//! differs from the model's expected one.
//!
//! Needs root and nftables, iproute2, jq (`.ci/run` installs them). Without root the test
//! fails, unless `CALLWATCH_SKIP_ROOT=1` says to skip it (then it says so loudly).

use callwatch_tests::run_lab_script;

#[test]
fn a_real_kernel_censor_lab_gives_the_expected_verdicts() {
    let models = [
        "full-block",
        "downstream-only",
        "relay-address-block",
        "both-loss-5",
    ];
    let mut args = vec!["--tests", "1"];
    args.extend(models);
    let Some(stdout) = run_lab_script("censor-lab.sh", &args) else {
        return;
    };
    // Each model ran its test and agreed (the summary's last column, "1/1").
    for model in models {
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with(model))
            .unwrap_or_else(|| panic!("no summary line for {model}"));
        assert!(line.trim_end().ends_with("1/1"), "{line}");
    }
}
