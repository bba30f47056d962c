//! The Debian packages (`packaging/build-debs.sh`), installed for real into a throw-away root:
//! `dpkg --root=DIR --force-script-chrootless` with a dpkg database made here, so the
//! maintainer scripts run with `DPKG_ROOT=DIR` and must make users and folders under it. The
//! packages are built from the binaries this test build uses (`--bin-dir`), not a second,
//! release build.
//!
//! One test walks the packages' life: install (files, modes, conffiles, users, the signing
//! key), the units (`systemd-analyze verify` and `security --offline`), each unit's ExecStart
//! run by hand as its user (the collector with its port 599 passed by socket activation, as
//! `callwatch-collector.socket` does, and the agent uploading a Telegram test through it),
//! an upgrade over a version-bumped repack (config and keys byte-identical), an upgrade with a
//! config the new version rejects (the key named, the package still installed), remove (state
//! kept), reinstall (nothing replaced), purge (state gone), and at the end that nothing on
//! this machine changed.
//!
//! Needs root (dpkg, chown, setpriv, a mount namespace) and dpkg-deb, objdump, strip,
//! systemd-analyze, systemd-socket-activate, setpriv and unshare (`.ci/run` installs what is
//! missing): without root the test fails unless `CALLWATCH_SKIP_ROOT=1`, without a tool unless
//! `CALLWATCH_SKIP_PACKAGES=1`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

/// Set to 1 to skip this test deliberately where a tool it needs is missing.
const SKIP_PACKAGES: &str = "CALLWATCH_SKIP_PACKAGES";

const TOOLS: [&str; 9] = [
    "dpkg",
    "dpkg-deb",
    "objdump",
    "strip",
    "systemd-analyze",
    "systemd-socket-activate",
    "setpriv",
    "unshare",
    "useradd",
];

#[test]
fn packages_install_run_upgrade_and_purge_in_a_throwaway_root() {
    if euid() != 0 {
        callwatch_tests::cannot_run_here(
            callwatch_tests::SKIP_ROOT,
            "the package test needs root (dpkg, chown, setpriv, a mount namespace; CI runs as root)",
        );
        return;
    }
    let missing: Vec<&str> = TOOLS.into_iter().filter(|t| !on_path(t)).collect();
    if !missing.is_empty() {
        callwatch_tests::cannot_run_here(
            SKIP_PACKAGES,
            &format!(
                "the package test needs {} (.ci/run installs them)",
                missing.join(", ")
            ),
        );
        return;
    }
    let host_before = host_state();
    let started = std::time::Instant::now();
    let phase = |what: &str| eprintln!("{:>6.1} s  {what}", started.elapsed().as_secs_f64());

    // --- Build: three versions of the same binaries, as a release and two repacks. ----------
    let agent_bin = callwatch_tests::built_binary("callwatch-agent");
    let collector_bin = callwatch_tests::built_binary("callwatch-collector");
    let bin_dir = agent_bin.parent().expect("the binaries' folder");
    assert_eq!(collector_bin.parent(), Some(bin_dir));
    let work = tempfile::tempdir().unwrap();
    let build = |version: &str| -> Vec<PathBuf> {
        let out = work.path().join(format!("debs-{version}"));
        let built = ok(Command::new("sh")
            .arg(workspace().join("packaging/build-debs.sh"))
            .args(["--version", version, "--out"])
            .arg(&out)
            .arg("--bin-dir")
            .arg(bin_dir)
            // Seconds, not the default xz's half a minute, for unoptimised binaries.
            .env("DPKG_DEB_COMPRESSOR_TYPE", "gzip")
            .env("DPKG_DEB_COMPRESSOR_LEVEL", "1"));
        let debs: Vec<PathBuf> = stdout(&built).lines().map(PathBuf::from).collect();
        assert_eq!(debs.len(), 2, "two packages: {debs:?}");
        debs
    };
    let (v1, v2, v3) = ("0.1.0~pkgtest1", "0.1.0~pkgtest2", "0.1.0~pkgtest3");
    let debs_v1 = build(v1);
    // The upgrades: the same packages with only their version raised (no second build).
    let repack = |debs: &[PathBuf], version: &str| -> Vec<PathBuf> {
        let out = work.path().join(format!("debs-{version}"));
        std::fs::create_dir_all(&out).unwrap();
        debs.iter()
            .map(|deb| {
                let tree = work.path().join("repack");
                let _ = std::fs::remove_dir_all(&tree);
                ok(Command::new("dpkg-deb")
                    .arg("--raw-extract")
                    .arg(deb)
                    .arg(&tree));
                let control = tree.join("DEBIAN/control");
                let text = read(&control);
                let old = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Version: "))
                    .expect("a Version field")
                    .to_string();
                std::fs::write(
                    &control,
                    text.replace(
                        &format!("Version: {old}\n"),
                        &format!("Version: {version}\n"),
                    ),
                )
                .unwrap();
                let name = deb
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .replace(&old, version);
                let repacked = out.join(name);
                ok(Command::new("dpkg-deb")
                    .args(["--root-owner-group", "-Zgzip", "-z1", "--build"])
                    .arg(&tree)
                    .arg(&repacked));
                repacked
            })
            .collect()
    };
    let debs_v2 = repack(&debs_v1, v2);
    let debs_v3 = repack(&debs_v1, v3);
    for deb in &debs_v1 {
        let fields = stdout(&ok(Command::new("dpkg-deb").arg("--field").arg(deb)));
        assert!(fields.contains(&format!("Version: {v1}")), "{fields}");
        assert!(fields.contains("libc6 (>= 2."), "libc6 versioned: {fields}");
        assert!(fields.contains("passwd"), "useradd's package: {fields}");
    }

    phase("built");
    // --- Install into a throw-away root. -----------------------------------------------------
    let root = Root::new(work.path().join("root"), &debs_v1);
    let r = root.path.clone();
    let install = root.dpkg(&["--install"], &debs_v1);
    assert!(install.status.success(), "{}", both(&install));
    for pkg in ["callwatch-agent", "callwatch-collector"] {
        assert_eq!(root.status(pkg), format!("install ok installed {v1}"));
    }
    assert!(
        stderr(&install).contains("installed, not started"),
        "the agent says it waits for its config: {}",
        both(&install)
    );

    // Files and modes.
    for (path, mode) in [
        ("usr/bin/callwatch-agent", 0o755),
        ("usr/bin/callwatch-collector", 0o755),
        ("lib/systemd/system/callwatch-agent.service", 0o644),
        ("lib/systemd/system/callwatch-collector.service", 0o644),
        ("lib/systemd/system/callwatch-collector.socket", 0o644),
        ("etc/callwatch/agent.toml", 0o644),
        ("etc/default/callwatch-collector", 0o644),
        ("usr/share/man/man1/callwatch-agent.1.gz", 0o644),
        ("usr/share/man/man1/callwatch-agent-run.1.gz", 0o644),
        (
            "usr/share/man/man1/callwatch-agent-check-config.1.gz",
            0o644,
        ),
        ("usr/share/man/man1/callwatch-collector.1.gz", 0o644),
        ("usr/share/man/man1/callwatch-collector-serve.1.gz", 0o644),
        (
            "usr/share/bash-completion/completions/callwatch-agent",
            0o644,
        ),
        (
            "usr/share/bash-completion/completions/callwatch-collector",
            0o644,
        ),
        ("usr/share/zsh/vendor-completions/_callwatch-agent", 0o644),
        (
            "usr/share/zsh/vendor-completions/_callwatch-collector",
            0o644,
        ),
        (
            "usr/share/fish/vendor_completions.d/callwatch-agent.fish",
            0o644,
        ),
        (
            "usr/share/fish/vendor_completions.d/callwatch-collector.fish",
            0o644,
        ),
    ] {
        let meta = std::fs::metadata(r.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{path} mode");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{path} belongs to root");
    }
    let page = stdout(&ok(Command::new("gzip")
        .arg("-dc")
        .arg(r.join("usr/share/man/man1/callwatch-collector-serve.1.gz"))));
    assert!(
        page.contains(".TH callwatch\\-collector\\-serve")
            || page.contains(".TH callwatch-collector-serve"),
        "a man page: {}",
        &page[..page.len().min(300)]
    );
    assert!(
        page.contains("reflector\\-ip"),
        "serve's page has its options"
    );
    let bash = r.join("usr/share/bash-completion/completions/callwatch-agent");
    ok(Command::new("bash").arg("-n").arg(&bash));
    assert!(read(&bash).contains("check-config"));
    assert!(
        read(&r.join("usr/share/zsh/vendor-completions/_callwatch-collector"))
            .starts_with("#compdef callwatch-collector")
    );
    assert!(
        read(&r.join("usr/share/fish/vendor_completions.d/callwatch-agent.fish"))
            .contains("complete -c callwatch-agent")
    );
    let conffiles = |pkg: &str| root.query(pkg, "${Conffiles}");
    assert!(conffiles("callwatch-agent").contains("/etc/callwatch/agent.toml"));
    assert!(conffiles("callwatch-collector").contains("/etc/default/callwatch-collector"));

    // The agent's config: every key of agent.example.toml, commented, but the three paths of
    // the packaged layout.
    let agent_toml = read(&r.join("etc/callwatch/agent.toml"));
    let set_keys: Vec<&str> = agent_toml
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
        .filter(|k| !k.starts_with('#'))
        .collect();
    assert_eq!(set_keys, ["key_file", "queue_dir", "state_file"]);
    for line in read(&workspace().join("packaging/agent.example.toml")).lines() {
        if let Some((key, _)) = line.split_once(" = ") {
            let key = key.trim_start_matches("# ");
            if !set_keys.contains(&key) {
                assert!(
                    agent_toml.contains(&format!("\n# {key} = ")),
                    "{key} is commented in /etc/callwatch/agent.toml"
                );
            }
        }
    }
    assert!(
        agent_toml.contains("Before you run a callwatch agent"),
        "the notice"
    );
    // The collector's options file: every option of `serve`, commented.
    let defaults = read(&r.join("etc/default/callwatch-collector"));
    let help = stdout(&ok(Command::new(&collector_bin).args(["serve", "--help"])));
    let options: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches([',', '.', ')', ':', '`']))
        .filter(|w| !["--help", "--data", "--once", "--pin"].contains(w))
        .collect();
    assert!(options.contains(&"--reflector-ip"), "{options:?}");
    for option in options {
        assert!(
            defaults.contains(&format!("# {option} ")),
            "{option} is described in /etc/default/callwatch-collector"
        );
    }

    // Users, folders, the key: owner-only, in the throw-away root's accounts.
    let agent_user = root.account("callwatch");
    let collector_user = root.account("callwatch-collector");
    for (user, home) in [
        (&agent_user, "/var/lib/callwatch"),
        (&collector_user, "/var/lib/callwatch-collector"),
    ] {
        assert!(user.uid > 0 && user.uid < 1000, "a system user: {user:?}");
        assert_eq!(user.home, home);
        assert_eq!(user.shell, "/usr/sbin/nologin");
        let meta = std::fs::metadata(r.join(&home[1..])).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{home}");
        assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid), "{home}");
    }
    assert_ne!(agent_user.uid, collector_user.uid, "a user of its own each");
    let key_path = r.join("var/lib/callwatch/agent.key");
    let key = std::fs::read(&key_path).unwrap();
    let meta = std::fs::metadata(&key_path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), agent_user.uid);
    assert_eq!(key.len(), 65, "64 hex digits and a newline");
    assert!(key[..64].iter().all(u8::is_ascii_hexdigit) && key[64] == b'\n');

    phase("installed and checked");
    // --- Units. ----------------------------------------------------------------------------
    // `verify` with the root's units and the host's own (targets, …) beside them, in a folder
    // no package owns; man pages looked up in the root (Documentation=man:…).
    let host_units = r.join("usr/lib/systemd");
    std::fs::create_dir_all(&host_units).unwrap();
    ok(Command::new("cp")
        .args(["-a", "/lib/systemd/system"])
        .arg(&host_units));
    let verify = ok(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .args([
            "callwatch-agent.service",
            "callwatch-collector.service",
            "callwatch-collector.socket",
        ])
        .env("MANPATH", r.join("usr/share/man")));
    assert_eq!(stderr(&verify), "", "systemd-analyze verify says nothing");
    std::fs::remove_dir_all(&host_units).unwrap();
    let exposure = |unit: &str| -> f64 {
        let out = ok(Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(format!("--root={}", r.display()))
            .arg(unit));
        let text = stdout(&out);
        let line = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("no rating: {text}"));
        line.split(": ")
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("rating in {line}"))
    };
    let (agent_rating, collector_rating) = (
        exposure("callwatch-agent.service"),
        exposure("callwatch-collector.service"),
    );
    eprintln!("exposure: agent {agent_rating}, collector {collector_rating}");
    assert!(
        agent_rating <= 1.4,
        "the agent's unit as before: {agent_rating}"
    );
    assert!(
        collector_rating <= agent_rating,
        "the collector's unit is at least as tight as the agent's: {collector_rating}"
    );
    let collector_unit = unit_file(&r, "callwatch-collector.service");
    for (key, value) in [
        ("User", "callwatch-collector"),
        ("StateDirectory", "callwatch-collector"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
    ] {
        assert_eq!(
            collector_unit.get(key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }
    let socket_unit = unit_file(&r, "callwatch-collector.socket");
    let listen = socket_unit["ListenDatagram"].clone();
    assert_eq!(listen, "0.0.0.0:599");
    let agent_unit = unit_file(&r, "callwatch-agent.service");
    assert_eq!(
        agent_unit["ExecStart"],
        "/usr/bin/callwatch-agent run --config /etc/callwatch/agent.toml"
    );

    phase("units checked");
    // --- Each ExecStart by hand, as its user, on a loopback address of its own. -------------
    // Inside a mount namespace where the root's /var/lib is /var/lib (the paths in the unit
    // and the config are the installed ones); binaries and /etc are the root's by path.
    let pid = std::process::id();
    let ip = format!("127.83.{}.{}", (pid >> 8) & 0xff, (pid & 0xff).max(1));
    let exec_start = |unit: &BTreeMap<String, String>, env: &[(&str, String)]| -> Vec<String> {
        let line = &unit["ExecStart"];
        let mut words = Vec::new();
        for word in line.split_whitespace() {
            if let Some(var) = word.strip_prefix('$') {
                let value = env
                    .iter()
                    .find(|(k, _)| *k == var)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                words.extend(value.split_whitespace().map(String::from));
            } else if word.starts_with('/') && !word.starts_with("/var/lib/") {
                words.push(format!("{}{word}", r.display()));
            } else {
                words.push(word.to_string());
            }
        }
        words
    };
    // The options file as installed binds every address; here the test's loopback address.
    assert!(defaults
        .contains("\nCALLWATCH_COLLECTOR_OPTS=\"--listen 0.0.0.0:4433 --reflector-ip 0.0.0.0\"\n"));
    // systemd-socket-activate binds the socket as root (as systemd does for the .socket unit)
    // and execs the rest once a datagram arrives, with LISTEN_FDS/LISTEN_PID set.
    let start_collector =
        |socket_addr: &str, reflector_ip: &str| -> (Spawned, std::net::SocketAddr) {
            let opts = format!("--listen {ip}:0 --http {ip}:0 --reflector-ip {reflector_ip}");
            let serve = exec_start(&collector_unit, &[("CALLWATCH_COLLECTOR_OPTS", opts)]);
            let mut cmd = in_namespace(&r, &[]);
            cmd.args([
                "systemd-socket-activate",
                "--datagram",
                "--listen",
                socket_addr,
            ]);
            cmd.args(setpriv(&collector_user)).args(&serve);
            let mut collector = Spawned::start(cmd, "collector");
            collector.wait_for("Listening on");
            let poke = std::net::UdpSocket::bind(format!("{ip}:0")).unwrap();
            poke.send_to(b"start", socket_addr).unwrap();
            let up = collector.wait_for("HTTP API on http://");
            let http = up
                .trim_start_matches("HTTP API on http://")
                .trim_end_matches("/api/v1/aggregation")
                .parse()
                .unwrap();
            (collector, http)
        };
    let socket_addr = listen.replace("0.0.0.0", &ip);
    let (mut collector, http) = start_collector(&socket_addr, &ip);
    collector.expect_line("passed by systemd (socket activation)");
    let lines = collector.lines.join("\n");
    assert!(
        lines.contains(&format!("reflector on udp {ip}:599")),
        "the passed socket serves: {lines}"
    );
    assert!(lines.contains("telegram (udp 599"), "{lines}");
    let status = read(Path::new(&format!("/proc/{}/status", collector.child.id())));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    assert_eq!(
        field("Uid:"),
        collector_user.uid.to_string(),
        "runs as its user"
    );
    assert_eq!(
        field("CapEff:"),
        "0000000000000000",
        "without any capability"
    );
    let metrics = get(http, "/metrics");
    assert!(metrics.contains("callwatch_build_info{"), "{metrics}");
    let pin = read(&r.join("var/lib/callwatch-collector/collector.pin"));
    let quic = collector
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("QUIC ingest on "))
        .expect("the QUIC address")
        .trim()
        .to_string();

    // The agent: the volunteer sets the two required keys (and, for a short test, one
    // platform and two seconds), then its ExecStart runs once.
    let configured = agent_toml
        .replace(
            "# collector = \"collector.example.org:4433\"",
            &format!("collector = \"{quic}\""),
        )
        .replace(
            &format!("# collector_pin = \"{}\"", "0".repeat(64)),
            &format!("collector_pin = \"{}\"", pin.trim()),
        )
        .replace(
            "# platforms = [\"generic\", \"whatsapp\", \"telegram\", \"signal\", \"max\"]",
            "platforms = [\"telegram\"]",
        )
        .replace("# duration_secs = 15", "duration_secs = 2");
    assert_ne!(configured, agent_toml);
    std::fs::write(r.join("etc/callwatch/agent.toml"), &configured).unwrap();
    let check = ok(Command::new(r.join("usr/bin/callwatch-agent"))
        .args(["check-config", "--config"])
        .arg(r.join("etc/callwatch/agent.toml")));
    assert!(stdout(&check).ends_with(": ok\n"));
    let mut run = exec_start(&agent_unit, &[]);
    run.push("--once".into());
    let once = in_namespace(&r, &setpriv(&agent_user))
        .args(&run)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        once.status.code(),
        Some(0),
        "run --once uploaded: {}",
        both(&once)
    );
    let metrics = get(http, "/metrics");
    assert!(
        metrics.contains("callwatch_ingest_reports_total{outcome=\"accepted\"} 1"),
        "the agent's Telegram report arrived: {metrics}"
    );
    let state_json = in_namespace(&r, &setpriv(&agent_user))
        .arg(r.join("usr/bin/callwatch-agent"))
        .args(["status", "--json", "--config"])
        .arg(r.join("etc/callwatch/agent.toml"))
        .output()
        .unwrap();
    assert!(state_json.status.success(), "{}", both(&state_json));
    for (file, mode) in [("state.json", 0o600), ("agent.key", 0o600)] {
        let meta = std::fs::metadata(r.join("var/lib/callwatch").join(file)).unwrap();
        assert_eq!(meta.uid(), agent_user.uid, "{file}");
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    collector.stop();
    // A socket on another address than the reflector's is named and not served; without it the
    // unprivileged service cannot bind 599 and Telegram's arm moves to 1400, as agents are told.
    let other_ip = format!("127.84.{}.{}", (pid >> 8) & 0xff, (pid & 0xff).max(1));
    let (mut collector, _) = start_collector(&socket_addr, &other_ip);
    collector.expect_line(&format!(
        "systemd passed a socket on UDP {socket_addr}, which is none of the reflector's addresses"
    ));
    collector.expect_line(&format!("cannot listen on UDP {other_ip}:599"));
    assert!(
        collector.lines.join("\n").contains("telegram (udp 1400"),
        "{}",
        collector.lines.join("\n")
    );
    collector.stop();
    for file in [
        "collector.pin",
        "collector.key.der",
        "reflector.key",
        "collector.seal.key",
    ] {
        let meta = std::fs::metadata(r.join("var/lib/callwatch-collector").join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(meta.uid(), collector_user.uid, "{file}");
        if file.ends_with(".key") || file.ends_with(".key.der") {
            assert_eq!(meta.permissions().mode() & 0o077, 0, "{file} owner-only");
        }
    }

    phase("ExecStarts ran");
    // --- Upgrade over a repack: config and keys byte-identical. ------------------------------
    let mut defaults_edited = defaults.clone();
    defaults_edited.push_str("# the operator's note\n");
    std::fs::write(r.join("etc/default/callwatch-collector"), &defaults_edited).unwrap();
    let kept = [
        "etc/callwatch/agent.toml",
        "etc/default/callwatch-collector",
        "var/lib/callwatch/agent.key",
        "var/lib/callwatch/state.json",
        "var/lib/callwatch-collector/collector.key.der",
        "var/lib/callwatch-collector/collector.pin",
        "var/lib/callwatch-collector/reflector.key",
        "var/lib/callwatch-collector/collector.seal.key",
    ];
    let snapshot = |paths: &[&str]| -> Vec<(Vec<u8>, u32, u32)> {
        paths
            .iter()
            .map(|p| {
                let path = r.join(p);
                let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{p}: {e}"));
                (std::fs::read(&path).unwrap(), meta.mode(), meta.uid())
            })
            .collect()
    };
    let before = snapshot(&kept);
    let upgrade = root.dpkg(&["--install"], &debs_v2);
    assert!(upgrade.status.success(), "{}", both(&upgrade));
    for pkg in ["callwatch-agent", "callwatch-collector"] {
        assert_eq!(root.status(pkg), format!("install ok installed {v2}"));
    }
    assert!(
        snapshot(&kept) == before,
        "the upgrade kept config, keys and state as they were"
    );
    assert!(!stderr(&upgrade).contains("rejects"), "{}", both(&upgrade));

    // --- An upgrade with a config the new version rejects. -----------------------------------
    let mut bad = configured.clone();
    bad.push_str("retired_setting = true\n");
    std::fs::write(r.join("etc/callwatch/agent.toml"), &bad).unwrap();
    // And the collector's options: one it does not know, one with a bad value.
    let defaults_path = r.join("etc/default/callwatch-collector");
    let defaults = read(&defaults_path);
    let bad_defaults = format!(
        "{defaults}\nCALLWATCH_COLLECTOR_OPTS=\"--listen 0.0.0.0:4433 --min-agents many\"\n"
    );
    std::fs::write(&defaults_path, &bad_defaults).unwrap();
    let upgrade = root.dpkg(&["--install"], &debs_v3);
    assert!(upgrade.status.success(), "{}", both(&upgrade));
    let said = stderr(&upgrade);
    assert!(
        said.contains("this version rejects /etc/callwatch/agent.toml"),
        "{said}"
    );
    assert!(said.contains("retired_setting"), "names the key: {said}");
    assert!(said.contains("NOT restarted"), "{said}");
    assert!(
        said.contains("this version rejects the options in /etc/default/callwatch-collector")
            && said.contains("--min-agents")
            && said.contains("the collector was NOT restarted"),
        "{said}"
    );
    assert_eq!(
        read(&defaults_path),
        bad_defaults,
        "the options as they were"
    );
    std::fs::write(&defaults_path, &defaults).unwrap();
    assert_eq!(
        root.status("callwatch-agent"),
        format!("install ok installed {v3}")
    );
    assert_eq!(
        read(&r.join("etc/callwatch/agent.toml")),
        bad,
        "the config as it was"
    );
    assert_eq!(std::fs::read(&key_path).unwrap(), key, "the key as it was");
    std::fs::write(r.join("etc/callwatch/agent.toml"), &configured).unwrap();

    phase("upgrades done");
    // --- Remove: state and conffiles kept; reinstall replaces nothing. ---------------------
    let pkgs = ["callwatch-agent", "callwatch-collector"];
    let remove = root.dpkg(&["--remove"], &pkgs.map(PathBuf::from));
    assert!(remove.status.success(), "{}", both(&remove));
    for pkg in pkgs {
        assert_eq!(root.status(pkg), format!("deinstall ok config-files {v3}"));
    }
    for gone in [
        "usr/bin/callwatch-agent",
        "usr/bin/callwatch-collector",
        "lib/systemd/system/callwatch-collector.service",
        "usr/share/man/man1/callwatch-agent.1.gz",
    ] {
        assert!(!r.join(gone).exists(), "{gone} removed");
    }
    let state_files = [
        "etc/callwatch/agent.toml",
        "etc/default/callwatch-collector",
        "var/lib/callwatch/agent.key",
        "var/lib/callwatch-collector/collector.key.der",
        "var/lib/callwatch-collector/reflector.key",
    ];
    let before = snapshot(&state_files);
    let reinstall = root.dpkg(&["--install"], &debs_v3);
    assert!(reinstall.status.success(), "{}", both(&reinstall));
    assert!(
        snapshot(&state_files) == before,
        "a reinstall replaced nothing"
    );
    assert_eq!(
        root.account("callwatch").uid,
        agent_user.uid,
        "the same user"
    );
    assert_eq!(
        read(&r.join("etc/passwd")).lines().count(),
        3,
        "root and the two service users, no second account"
    );
    assert!(root
        .dpkg(&["--remove"], &pkgs.map(PathBuf::from))
        .status
        .success());

    // --- Purge: state and conffiles gone, and only now. ------------------------------------
    let purge = root.dpkg(&["--purge"], &pkgs.map(PathBuf::from));
    assert!(purge.status.success(), "{}", both(&purge));
    for gone in [
        "etc/callwatch",
        "etc/default/callwatch-collector",
        "var/lib/callwatch",
        "var/lib/callwatch-collector",
    ] {
        assert!(!r.join(gone).exists(), "{gone} purged");
    }
    for pkg in pkgs {
        let status = root.query(pkg, "${db:Status-Abbrev}");
        assert!(matches!(status.trim(), "" | "un"), "{pkg} purged: {status}");
    }

    phase("removed and purged");
    // --- Nothing on this machine changed. ----------------------------------------------------
    assert!(
        host_state() == host_before,
        "the host's files changed: {:?} → {:?}",
        host_before,
        host_state()
    );
}

/// The throw-away root: a dpkg database, the packages' dependencies marked installed (at the
/// host's versions: the binaries run with the host's libraries), and account files.
struct Root {
    path: PathBuf,
}

/// An account from the root's passwd.
#[derive(Debug)]
struct Account {
    uid: u32,
    gid: u32,
    home: String,
    shell: String,
}

impl Root {
    fn new(path: PathBuf, debs: &[PathBuf]) -> Root {
        for dir in [
            "etc",
            "var/lib/dpkg/info",
            "var/lib/dpkg/updates",
            "var/lib/dpkg/triggers",
            "var/log",
        ] {
            std::fs::create_dir_all(path.join(dir)).unwrap();
        }
        // The service users must reach their folders inside the temporary folder.
        for dir in [path.parent().unwrap(), &path] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for (file, text, mode) in [
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
            ("etc/group", "root:x:0:\n", 0o644),
            ("etc/shadow", "root:*:20000:0:99999:7:::\n", 0o640),
            ("etc/gshadow", "root:*::\n", 0o640),
            ("var/lib/dpkg/available", "", 0o644),
        ] {
            std::fs::write(path.join(file), text).unwrap();
            std::fs::set_permissions(path.join(file), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        let mut status = String::new();
        let mut deps: Vec<String> = Vec::new();
        for deb in debs {
            let depends = stdout(&ok(Command::new("dpkg-deb")
                .args(["--field"])
                .arg(deb)
                .arg("Depends")));
            for dep in depends.split(',') {
                let name = dep.split_whitespace().next().unwrap_or("").to_string();
                if !name.is_empty() && !deps.contains(&name) {
                    deps.push(name);
                }
            }
        }
        for name in deps {
            let host = stdout(&ok(Command::new("dpkg-query").args([
                "-W",
                "-f",
                "${Architecture} ${Version}",
                &name,
            ])));
            let (arch, version) = host.split_once(' ').expect("architecture and version");
            status.push_str(&format!(
                "Package: {name}\nStatus: install ok installed\nPriority: optional\n\
                 Maintainer: the host\nArchitecture: {arch}\nVersion: {version}\n\
                 Description: stands in for the host's {name}\n\n"
            ));
            std::fs::write(path.join(format!("var/lib/dpkg/info/{name}.list")), "").unwrap();
        }
        std::fs::write(path.join("var/lib/dpkg/status"), status).unwrap();
        Root { path }
    }

    /// `dpkg --root=ROOT` with maintainer scripts run outside a chroot (DPKG_ROOT set).
    fn dpkg(&self, action: &[&str], args: &[PathBuf]) -> Output {
        Command::new("dpkg")
            .arg(format!("--root={}", self.path.display()))
            .arg("--force-script-chrootless")
            .arg(format!(
                "--log={}",
                self.path.join("var/log/dpkg.log").display()
            ))
            .args(action)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn query(&self, pkg: &str, format: &str) -> String {
        let out = Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                self.path.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f", format, pkg])
            .output()
            .unwrap();
        stdout(&out)
    }

    /// `Status Version` of `pkg` in the root's database.
    fn status(&self, pkg: &str) -> String {
        self.query(pkg, "${Status} ${Version}")
    }

    fn account(&self, name: &str) -> Account {
        let passwd = read(&self.path.join("etc/passwd"));
        let line = passwd
            .lines()
            .find(|l| l.split(':').next() == Some(name))
            .unwrap_or_else(|| panic!("no user {name} in the root's passwd: {passwd}"));
        let f: Vec<&str> = line.split(':').collect();
        let group = read(&self.path.join("etc/group"));
        assert!(
            group
                .lines()
                .any(|l| l.starts_with(&format!("{name}:x:{}:", f[3]))),
            "group {name} with gid {}: {group}",
            f[3]
        );
        Account {
            uid: f[2].parse().unwrap(),
            gid: f[3].parse().unwrap(),
            home: f[5].to_string(),
            shell: f[6].to_string(),
        }
    }
}

/// A command run in a mount namespace of its own in which the root's /var/lib is mounted on
/// /var/lib (this machine's mounts are not changed); `then` is the command's start.
fn in_namespace(root: &Path, then: &[String]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount --bind \"$1\" /var/lib && shift && exec \"$@\"")
        .arg("sh")
        .arg(root.join("var/lib"))
        .args(then);
    cmd
}

/// `setpriv` to the unit's user, its group only, no way back to privileges (NoNewPrivileges).
fn setpriv(user: &Account) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={}", user.uid),
        format!("--regid={}", user.gid),
        "--clear-groups".into(),
        "--no-new-privs".into(),
        "--".into(),
    ]
}

/// A process whose output lines arrive on a channel as it prints them; killed when dropped.
struct Spawned {
    child: Child,
    what: &'static str,
    rx: mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl Spawned {
    fn start(mut cmd: Command, what: &'static str) -> Spawned {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the {what}: {e}"));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        for pipe in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Spawned {
            child,
            what,
            rx,
            lines: Vec::new(),
        }
    }

    /// The first line (from now on) that contains `text`; fails if the process ends first or
    /// prints nothing of the kind within a minute.
    fn wait_for(&mut self, text: &str) -> String {
        loop {
            match self.rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    self.lines.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "the {} printed no {text:?} ({e}): {}",
                    self.what,
                    self.lines.join("\n")
                ),
            }
        }
    }

    /// The line containing `text`, printed already or awaited ([`Spawned::wait_for`]): standard
    /// error and output arrive through two threads, so their order is not kept.
    fn expect_line(&mut self, text: &str) -> String {
        match self.lines.iter().find(|l| l.contains(text)) {
            Some(line) => line.clone(),
            None => self.wait_for(text),
        }
    }

    /// SIGTERM, as systemd stops it; it must exit 0.
    fn stop(mut self) {
        ok(Command::new("kill").args(["-TERM", &self.child.id().to_string()]));
        let status = self.child.wait().unwrap();
        self.lines.extend(self.rx.try_iter());
        assert!(
            status.success(),
            "the {} stopped with {status}: {}",
            self.what,
            self.lines.join("\n")
        );
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the packages would change if they escaped the root: account files and the dpkg
/// database (by content), and every path they install or make (by presence and time).
fn host_state() -> Vec<(String, String)> {
    let mut state = Vec::new();
    for file in [
        "/etc/passwd",
        "/etc/group",
        "/etc/shadow",
        "/etc/gshadow",
        "/var/lib/dpkg/status",
    ] {
        let bytes = std::fs::read(file).unwrap_or_default();
        state.push((
            file.to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    for path in [
        "/etc/callwatch",
        "/etc/default/callwatch-collector",
        "/usr/bin/callwatch-agent",
        "/usr/bin/callwatch-collector",
        "/lib/systemd/system/callwatch-agent.service",
        "/lib/systemd/system/callwatch-collector.service",
        "/lib/systemd/system/callwatch-collector.socket",
        "/usr/share/man/man1/callwatch-agent.1.gz",
        "/usr/share/bash-completion/completions/callwatch-agent",
        "/var/lib/callwatch",
        "/var/lib/callwatch-collector",
        "/var/lib/dpkg/info/callwatch-agent.list",
        "/var/lib/dpkg/info/callwatch-collector.list",
        "/etc/systemd/system/multi-user.target.wants/callwatch-agent.service",
        "/etc/systemd/system/multi-user.target.wants/callwatch-collector.service",
        "/etc/systemd/system/sockets.target.wants/callwatch-collector.socket",
    ] {
        let seen = std::fs::symlink_metadata(path)
            .map(|m| {
                format!(
                    "{:?} {:o} {}",
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.mode(),
                    m.uid()
                )
            })
            .unwrap_or_else(|_| "absent".into());
        state.push((path.to_string(), seen));
    }
    state
}

/// `[Service]`/`[Socket]`/`[Unit]` keys of an installed unit (the last value of each key).
fn unit_file(root: &Path, name: &str) -> BTreeMap<String, String> {
    read(&root.join("lib/systemd/system").join(name))
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, body) = rt.block_on(callwatch_tests::http::get(addr, path)).unwrap();
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `cmd`, which must succeed.
fn ok(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", both(&out));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn both(out: &Output) -> String {
    format!("{}\n{}\n{}", out.status, stdout(out), stderr(out))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn euid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
