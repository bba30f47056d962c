//! One address to configure (#16 item 1): `serve` listens on every profile's reflector port it
//! can bind and says which platforms that leaves unavailable; an agent given only the
//! collector's address and pin learns where each platform's test goes, tests every platform
//! the reflector serves and skips, with the reason, those it cannot.
//!
//! Real binaries on a loopback address of their own (127.0.0.91), so that the profiles' fixed
//! ports (599, 1400, 3478, 40400, 40401, 50000) collide with no other test.

use callwatch_tests::built_binary;
use callwatch_tests::process::{start_serve, RunningCollector};
use std::process::Command;

const IP: &str = "127.0.0.91";

fn serve(dir: &std::path::Path) -> RunningCollector {
    let mut cmd = Command::new(built_binary("callwatch-collector"));
    cmd.args(["serve", "--data"]).arg(dir.join("data")).args([
        "--listen",
        &format!("{IP}:0"),
        "--http",
        &format!("{IP}:0"),
        "--reflector-ip",
        IP,
    ]);
    start_serve(cmd, dir)
}

/// Kills the collector when the test fails while it runs: its fixed ports would otherwise stay
/// taken for the next run.
struct KillOnDrop(Option<RunningCollector>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            c.kill();
        }
    }
}

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(built_binary("callwatch-agent"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("running callwatch-agent")
}

/// `callwatch-agent init` with the collector's address and pin only (the init failing fails the
/// test).
fn init_with_collector_only(config: &str, collector: &str, pin: &str) {
    let init = agent(&[
        "init",
        "--accept-risks",
        "--config",
        config,
        "--collector",
        collector,
        "--pin",
        pin,
    ]);
    assert!(init.status.success(), "{init:?}");
}

#[test]
fn an_agent_with_only_the_collector_tests_every_platform_the_reflector_serves() {
    let dir = tempfile::tempdir().unwrap();
    // Another program holds 3478, where WhatsApp and Signal calls go.
    let _taken = std::net::UdpSocket::bind(format!("{IP}:3478")).unwrap();
    let mut guard = KillOnDrop(Some(serve(dir.path())));
    let collector = guard.0.as_ref().unwrap();
    let out = std::fs::read_to_string(&collector.stdout).unwrap();
    assert!(
        out.contains(
            "reflector serves: generic (udp 40401), telegram (udp 599, control 40400), \
             max (udp 50000, control 40400)"
        ),
        "{out}"
    );
    for port in [599, 1400, 40400, 40401, 50000] {
        assert!(
            out.contains(&format!("reflector on udp {IP}:{port}\n")),
            "{out}"
        );
    }
    let err = std::fs::read_to_string(&collector.stderr).unwrap();
    for platform in ["whatsapp", "signal"] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("{platform} tests are unavailable")))
            .unwrap_or_else(|| panic!("no warning for {platform} in {err}"));
        assert!(
            line.contains("UDP port 3478 could not be bound")
                && line.contains("another program listens"),
            "{line}"
        );
    }

    // `init` with the collector's address and pin only: every platform, no reflector.
    let config = dir.path().join("agent.toml");
    let cfg = config.to_str().unwrap();
    init_with_collector_only(
        cfg,
        &collector.quic.to_string(),
        &hex::encode(collector.pin),
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let flat: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(
        flat.contains(r#"platforms=["generic","whatsapp","telegram","signal","max",]"#),
        "{text}"
    );
    assert!(!text.contains("reflector ="), "{text}");
    std::fs::write(
        &config,
        text.replace("duration_secs = 15", "duration_secs = 2"),
    )
    .unwrap();

    let run = agent(&["run", "--config", cfg, "--once"]);
    let log = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{log}");
    assert!(
        log.contains("the collector's reflector serves generic, telegram, max"),
        "{log}"
    );
    for platform in ["whatsapp", "signal"] {
        assert!(
            log.lines()
                .any(|l| l.contains("test skipped") && l.contains(platform) && l.contains("3478")),
            "{platform} skipped with its reason: {log}"
        );
    }
    // Each test went to the collector's host, on the ports it said.
    for arms in [
        format!("platform {IP}:40401"),
        format!("platform {IP}:599, control {IP}:40400"),
        format!("platform {IP}:50000, control {IP}:40400"),
    ] {
        assert!(log.contains(&arms), "{arms} in {log}");
    }

    let status = agent(&["status", "--config", cfg, "--json"]);
    assert!(status.status.success(), "{status:?}");
    let state: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let mut tested: Vec<&str> = state["recent_tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["platform"].as_str().unwrap())
        .collect();
    tested.sort_unstable();
    assert_eq!(tested, ["generic", "max", "telegram"], "{state}");
    assert_eq!(state["queue_depth"], 0, "every report uploaded: {state}");
    let served = state["collector_endpoints"]["served"].as_array().unwrap();
    assert_eq!(served.len(), 3, "{state}");
    // The reflector's sealing key came over the pinned connection too (no reflector_key in
    // the config): the platform arms were sealed to it (Config::spec_with's unit test).
    let own = state["collector_reflectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "collector")
        .cloned()
        .unwrap_or_default();
    assert_eq!(own["seal_key"].as_str().map(str::len), Some(64), "{state}");
    let text = agent(&["status", "--config", cfg]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("whatsapp  unavailable: UDP port 3478 could not be bound"),
        "{text}"
    );
    guard.0.take().unwrap().stop();
}

#[test]
fn without_a_collector_to_ask_nothing_is_tested_and_the_run_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let cfg = config.to_str().unwrap();
    // Nothing listens there (port 9 on an address of this test's own).
    init_with_collector_only(cfg, "127.0.0.92:9", &"ab".repeat(32));
    let run = agent(&["run", "--config", cfg, "--once"]);
    let log = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "collector unreachable: {log}");
    assert!(
        log.contains("no test run") && log.contains("127.0.0.92:9"),
        "{log}"
    );
    let status = agent(&["status", "--config", cfg, "--json"]);
    let state: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(state["tests_total"], 0, "{state}");
}

/// Without the right to bind below 1024 (as an unprivileged user: the test drops to `nobody`
/// when it runs as root), `serve` goes on without port 599, says why and what to do, and serves
/// Telegram on its other port, 1400.
#[test]
fn without_cap_net_bind_service_telegram_moves_to_1400_and_the_log_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let root = real_uid() == 0;
    let mut cmd = if root {
        // The folders must be the unprivileged user's to write.
        for d in [dir.path(), data.as_path()] {
            std::fs::create_dir_all(d).unwrap();
            let status = Command::new("chown")
                .args(["nobody:nogroup"])
                .arg(d)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(built_binary("callwatch-collector"));
        c
    } else {
        Command::new(built_binary("callwatch-collector"))
    };
    let ip = "127.0.0.94";
    cmd.args(["serve", "--data"]).arg(&data).args([
        "--listen",
        &format!("{ip}:0"),
        "--http",
        &format!("{ip}:0"),
        "--reflector-ip",
        ip,
    ]);
    let mut guard = KillOnDrop(Some(start_serve(cmd, dir.path())));
    let collector = guard.0.as_ref().unwrap();
    let out = std::fs::read_to_string(&collector.stdout).unwrap();
    assert!(
        out.contains("telegram (udp 1400, control 40400)"),
        "Telegram on its other port: {out}"
    );
    assert!(
        !out.contains(&format!("reflector on udp {ip}:599\n")),
        "{out}"
    );
    let err = std::fs::read_to_string(&collector.stderr).unwrap();
    assert!(
        err.lines().any(|l| l.contains(&format!("UDP {ip}:599"))
            && l.contains("ports below 1024 need CAP_NET_BIND_SERVICE or root")),
        "{err}"
    );
    guard.0.take().unwrap().stop();
}

/// The real user id (`id -u`).
fn real_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The README's table of ports is the profiles' and `serve`'s: every reflector port a profile
/// uses has its row naming the platforms that use it, and no other reflector port is listed.
#[test]
fn the_readme_lists_every_port_and_what_uses_it() {
    use callwatch_proto::profile::{reflector_ports, Endpoints};
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let rows: Vec<(u16, String, String)> = readme
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            match cells.as_slice() {
                [port, proto, what] => {
                    Some((port.parse().ok()?, proto.to_string(), what.to_lowercase()))
                }
                _ => None,
            }
        })
        .collect();
    let mut listed: Vec<u16> = rows
        .iter()
        .filter(|(_, proto, what)| proto == "UDP" && what.starts_with("reflector"))
        .map(|(port, _, _)| *port)
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, reflector_ports(), "the README's reflector ports");
    let row = |port: u16| {
        rows.iter()
            .find(|(p, proto, _)| *p == port && proto == "UDP")
            .map(|(_, _, what)| what.clone())
            .unwrap_or_default()
    };
    for s in Endpoints::assumed().served {
        let name = s.platform.as_str();
        assert!(
            row(s.platform_port).contains(name),
            "{name} on {}",
            s.platform_port
        );
        if let Some(c) = s.control_port {
            assert!(
                row(c).contains("control arm of every platform"),
                "control {c}"
            );
        }
    }
    for p in callwatch_proto::profile::profiles() {
        for port in &p.ports {
            assert!(
                row(*port).contains(p.platform.as_str()),
                "{} on {port}",
                p.platform
            );
        }
    }
    let defaults = callwatch_collector::ServeConfig::new("unused".into());
    for (port, proto) in [
        (defaults.listen.port(), "UDP (QUIC)"),
        (defaults.listen.port(), "TCP (TLS)"),
        (defaults.http.port(), "TCP (HTTP)"),
    ] {
        assert!(
            rows.iter().any(|(p, pr, _)| *p == port && pr == proto),
            "{port} {proto}"
        );
    }
}
