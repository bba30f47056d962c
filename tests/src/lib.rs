//! callwatch-tests: end-to-end tests of the whole system, the local demo deployment, and the
//! tools tests use (a minimal HTTP client; the network impairment emulator).
//!
//! Nothing here ships in a release binary of the agent or the collector.

pub mod censors;
pub mod corpus;
pub mod demo;
pub mod emulator;
pub mod history;
pub mod http;
pub mod oracle;
pub mod process;
pub mod scenarios;
pub mod seed;
pub mod sim;

/// The variable that lets tests needing root (network namespaces, nftables, `mount -t tmpfs`,
/// creating a system user) be skipped deliberately: `CALLWATCH_SKIP_ROOT=1`.
pub const SKIP_ROOT: &str = "CALLWATCH_SKIP_ROOT";

/// The ClickHouse server the ClickHouse tests use (`CALLWATCH_CLICKHOUSE_URL`, which `.ci/run`
/// starts on loopback), or `None` when `CALLWATCH_SKIP_CLICKHOUSE=1` says to skip them; without
/// either, the test fails (so CI can never skip them silently).
pub fn clickhouse_url() -> Option<String> {
    match std::env::var("CALLWATCH_CLICKHOUSE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var("CALLWATCH_SKIP_CLICKHOUSE").as_deref() == Ok("1") => {
            eprintln!("CALLWATCH_SKIP_CLICKHOUSE=1: skipping a ClickHouse test");
            None
        }
        _ => panic!(
            "CALLWATCH_CLICKHOUSE_URL is not set: this test needs a ClickHouse server \
             (.ci/run starts one on loopback, e.g. CALLWATCH_CLICKHOUSE_URL=http://127.0.0.1:8123); \
             set CALLWATCH_SKIP_CLICKHOUSE=1 to skip the ClickHouse tests deliberately"
        ),
    }
}

/// A test that cannot run here (`why`) fails, unless the environment variable `skip_var` is `1`:
/// then it says loudly that it skipped and returns, and the caller returns without asserting.
/// No test passes silently for want of root or a tool; CI (root, tools installed) sets no skip
/// variable, so there it must run.
pub fn cannot_run_here(skip_var: &str, why: &str) {
    if std::env::var(skip_var).as_deref() == Ok("1") {
        eprintln!("SKIPPED ({skip_var}=1): {why}");
        return;
    }
    panic!("{why}; set {skip_var}=1 to skip this test deliberately");
}

/// Path of a workspace binary (`callwatch-agent`, `callwatch-collector`), built first if needed.
///
/// `cargo test --workspace` does not build other packages' binaries for this crate's tests, so
/// on a fresh checkout they would be missing, and after a change they could be stale. The first
/// call per binary in a test process runs `cargo build` for it with the same cargo, profile and
/// target folder (a no-op when it is up to date); later calls reuse the path.
pub fn built_binary(name: &str) -> std::path::PathBuf {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static BUILT: Mutex<Option<HashMap<String, std::path::PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let mut profile_dir = std::env::current_exe().unwrap_or_default();
    profile_dir.pop(); // the test binary
    if profile_dir.ends_with("deps") {
        profile_dir.pop();
    }
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let target_dir = profile_dir
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let package = match name {
        "callwatch-agent" | "callwatch-collector" | "callwatch-reflector" => name,
        _ => "callwatch-tests",
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "--package",
        package,
        "--bin",
        name,
        "--target-dir",
    ])
    .arg(&target_dir)
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo to build a test binary");
    assert!(status.success(), "cargo could not build {name}");
    let path = profile_dir.join(name);
    built.insert(name.to_string(), path.clone());
    path
}

/// A collector config for agent tests: data in `root/collector`, QUIC on `listen`, the reflector
/// and HTTP on free loopback ports, every cell published (k = 1) and no per-agent cap.
pub fn open_collector_config(
    root: &std::path::Path,
    listen: std::net::SocketAddr,
) -> callwatch_collector::ServeConfig {
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("a literal address");
    let mut sc = callwatch_collector::ServeConfig::new(root.join("collector"));
    sc.listen = listen;
    sc.reflectors = vec![any];
    sc.http = any;
    sc.policy.min_agents = 1;
    sc.policy.max_per_agent_per_day = usize::MAX;
    sc.policy.max_per_prefix_per_day = usize::MAX;
    sc
}

/// A test of `platform` against a reflector listening on `addrs` (two ports at least): the
/// platform arm on the first, the control arm on the second, the profile's sizes, a short grace.
pub fn platform_spec_on(
    addrs: &[std::net::SocketAddr],
    platform: callwatch_proto::Platform,
    duration_ms: u32,
) -> callwatch_agent::engine::TestSpec {
    let first = addrs
        .first()
        .copied()
        .unwrap_or_else(|| ([127, 0, 0, 1], 0).into());
    let mut spec = callwatch_agent::engine::TestSpec::voice(first, duration_ms);
    spec.platform = platform;
    spec.size = None;
    spec.platform_port = Some(first.port());
    spec.control_port = addrs.get(1).map(|a| a.port());
    spec.grace_ms = 300;
    spec
}

/// A reflector on two free loopback ports (for [`platform_spec_on`]: platform arm on the first,
/// control arm on the second), with default limits.
pub async fn spawn_two_port_reflector() -> callwatch_reflector::ReflectorHandle {
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("a literal address");
    callwatch_reflector::spawn_reflector(&[any, any], callwatch_reflector::Limits::default())
        .await
        .expect("binding a reflector on loopback")
}

/// Runs the lab script `tests/lab/SCRIPT` as root with `--bin-dir` set to the built binaries'
/// folder, then `args`; prints its output and returns its standard output, failing the test if
/// it exits non-zero. Without root the labs cannot run (network namespaces, nftables): the test
/// fails, or with `CALLWATCH_SKIP_ROOT=1` ([`SKIP_ROOT`]) this returns `None` after a loud
/// "SKIPPED" saying how to run it by hand.
pub fn run_lab_script(script: &str, args: &[&str]) -> Option<String> {
    use std::process::Command;
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        cannot_run_here(
            SKIP_ROOT,
            &format!(
                "tests/lab/{script} needs root (network namespaces, nftables); \
                 run `sudo tests/lab/{script} {}` by hand",
                args.join(" ")
            ),
        );
        return None;
    }
    let agent = built_binary("callwatch-agent");
    let collector = built_binary("callwatch-collector");
    assert_eq!(agent.parent(), collector.parent());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("lab")
        .join(script);
    let out = Command::new("bash")
        .arg(&path)
        .arg("--bin-dir")
        .arg(agent.parent().unwrap_or(std::path::Path::new(".")))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tests/lab/{script} failed");
    Some(stdout)
}
