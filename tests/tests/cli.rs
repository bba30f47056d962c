//! The command lines as a volunteer and an operator use them: the real binaries, run as
//! processes (cargo builds them for the workspace's tests).

use callwatch_reflector::{spawn_reflector, Limits};
use callwatch_tests::process::serve_command;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_json_prints_exactly_one_report_object() {
    let reflector = spawn_reflector(&["127.0.0.1:0".parse().unwrap()], Limits::default())
        .await
        .unwrap();
    let addr = reflector.addrs[0].to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(callwatch_tests::built_binary("callwatch-agent"))
            .args(["test", "--reflector", &addr, "--duration", "1", "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut values = serde_json::Deserializer::from_str(&stdout).into_iter::<serde_json::Value>();
    let v = values.next().unwrap().unwrap();
    assert!(
        values.next().is_none(),
        "more than one JSON value on stdout"
    );
    for key in [
        "schema",
        "id",
        "platform",
        "started_at",
        "duration_ms",
        "verdict",
        "streams",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["platform"], "generic");
    assert!(v["verdict"].is_null());
    chrono::DateTime::parse_from_rfc3339(v["started_at"].as_str().unwrap()).unwrap();
    let s = &v["streams"][0];
    assert_eq!(s["role"], "platform");
    assert_eq!(s["packets_sent"], 50);
    for key in [
        "packets_reflected",
        "packets_received",
        "loss_up",
        "loss_down",
        "r_factor",
        "mos",
    ] {
        assert!(s.get(key).is_some(), "missing streams[0].{key}");
    }
    for key in ["min", "median", "p95", "max"] {
        assert!(s["rtt_ms"][key].is_number(), "rtt_ms.{key}");
    }
    assert!(s["jitter_ms"]["up"].is_number() && s["jitter_ms"]["down"].is_number());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_test_runs_both_arms_and_the_video_profile_on_request() {
    let any = "127.0.0.1:0".parse().unwrap();
    let reflector = spawn_reflector(&[any, any], Limits::default())
        .await
        .unwrap();
    let (p, c) = (reflector.addrs[0], reflector.addrs[1]);
    let key = reflector.seal_key.to_hex();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(callwatch_tests::built_binary("callwatch-agent"))
            .args([
                "test",
                "--platform",
                "whatsapp",
                "--video",
                "--duration",
                "1",
                "--json",
            ])
            .args(["--reflector", &p.to_string()])
            .args(["--platform-port", &p.port().to_string()])
            .args(["--control-port", &c.port().to_string()])
            .args(["--reflector-key", &key])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["platform"], "whatsapp");
    assert_eq!(v["probes_sealed"], true);
    assert_eq!(v["interval_ms"], 5, "the video stream's interval");
    assert_eq!(v["payload_bytes"], 1200);
    let roles: Vec<&str> = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["platform", "control"]);
    assert_eq!(v["streams"][0]["packets_sent"], 200);
    assert_eq!(v["streams"][0]["packets_received"], 200);
    // One second is too short to judge: the verdict says so rather than guessing.
    assert_eq!(v["verdict"], "inconclusive");
    assert!(v["verdict_detail"]["reason"]
        .as_str()
        .unwrap()
        .contains("windows"));
    let offered = |i: usize| v["streams"][i]["bitrate_kbps"]["offered"].as_f64().unwrap();
    assert!(
        offered(0) > 1500.0 && offered(0) == offered(1),
        "{} {}",
        offered(0),
        offered(1)
    );
}

#[test]
fn bad_arguments_are_named_and_change_nothing() {
    let out = Command::new(callwatch_tests::built_binary("callwatch-agent"))
        .args(["test", "--reflector", "127.0.0.1:9", "--size", "10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("size 10"));
    let out = Command::new(callwatch_tests::built_binary("callwatch-agent"))
        .args(["test", "--reflector", "127.0.0.1:9", "--platform", "skype"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "clap usage error (EX_USAGE)");
    assert!(String::from_utf8_lossy(&out.stderr).contains("skype"));
}

#[test]
fn a_config_with_three_mistakes_reports_all_three_with_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let init = Command::new(callwatch_tests::built_binary("callwatch-agent"))
        .args(["init", "--accept-risks", "--config"])
        .arg(&config)
        .args(["--collector", "127.0.0.1:4433", "--pin", &"ab".repeat(32)])
        .output()
        .unwrap();
    assert!(init.status.success());
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("interval = \"15m\"", "interval = \"10s\"")
        .replace("queue_cap = 10000", "queue_cap = 0")
        + "budget_per_day = \"plenty\"\n";
    std::fs::write(&config, text).unwrap();
    let out = Command::new(callwatch_tests::built_binary("callwatch-agent"))
        .args(["run", "--once", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "interval = \"10s\"",
        "queue_cap = 0",
        "budget_per_day = \"plenty\"",
    ] {
        assert!(stderr.contains(key), "{key} missing from {stderr}");
    }
    assert_eq!(stderr.matches("; ").count(), 2, "three problems: {stderr}");
    assert!(!dir.path().join("queue").exists(), "nothing ran");
}

/// `check-config` (what the Debian package's postinst runs with a new binary before restarting
/// the agent) reads the config as `run` does and opens nothing else: `PATH: ok` and exit 0, or
/// exit 1 with every bad key named.
#[test]
fn check_config_names_each_bad_key_and_opens_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let agent = callwatch_tests::built_binary("callwatch-agent");
    let init = Command::new(&agent)
        .args(["init", "--accept-risks", "--config"])
        .arg(&config)
        .args(["--collector", "127.0.0.1:4433", "--pin", &"ab".repeat(32)])
        .output()
        .unwrap();
    assert!(init.status.success());
    let check = || {
        Command::new(&agent)
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = check();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}: ok\n", config.display())
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}retired_setting = 1\n")).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("retired_setting"));
    std::fs::write(
        &config,
        text.replace("interval = \"15m\"", "interval = \"10s\""),
    )
    .unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("interval = \"10s\""));
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["agent.key", "agent.toml"], "no queue, no state file");
}

#[test]
fn init_writes_a_private_key_and_refuses_to_replace_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let init = |force: bool| {
        let mut c = Command::new(callwatch_tests::built_binary("callwatch-agent"));
        c.args(["init", "--accept-risks", "--config"]).arg(&config);
        c.args(["--collector", "127.0.0.1:4433", "--pin", &"ab".repeat(32)]);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    let first = init(false);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let key = dir.path().join("agent.key");
    let before = std::fs::read(&key).unwrap();
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let second = init(false);
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("--force"));
    assert_eq!(std::fs::read(&key).unwrap(), before, "key unchanged");
    assert!(init(true).status.success());
    assert_ne!(std::fs::read(&key).unwrap(), before);
    let text = std::fs::read_to_string(&config).unwrap();
    // No reflector: the agent asks the collector where its reflector serves each platform.
    assert!(!text.contains("reflector ="), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_keeps_reports_queued_when_the_collector_is_away() {
    let reflector = spawn_reflector(&["127.0.0.1:0".parse().unwrap()], Limits::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    // A collector address where nothing listens.
    let nobody = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let reflector_addr = reflector.addrs[0].to_string();
    let config2 = config.clone();
    let out = tokio::task::spawn_blocking(move || {
        callwatch_tests::process::init_agent(
            &config2,
            &nobody.to_string(),
            &"cd".repeat(32),
            &reflector_addr,
            &[("duration_secs = 15", "duration_secs = 1")],
            "",
        );
        Command::new(callwatch_tests::built_binary("callwatch-agent"))
            .args(["run", "--once", "--config"])
            .arg(&config2)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("upload failed"), "{stderr}");
    let queue = callwatch_agent::queue::Queue::open(&dir.path().join("queue")).unwrap();
    assert_eq!(queue.len(), 1, "the report waits for the collector");
}

#[test]
fn serve_prints_and_writes_its_pin() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = serve_command(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let pin = first.rsplit(' ').next().unwrap().to_string();
    assert_eq!(pin.len(), 64, "{first}");
    let written = std::fs::read_to_string(data.join("collector.pin")).unwrap();
    assert_eq!(written.trim(), pin);
    let mode = std::fs::metadata(data.join("collector.key.der"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The reflector's sealing key: printed, published, its secret owner-only.
    let key = second.rsplit(' ').next().unwrap();
    assert!(
        second.contains("reflector key") && key.len() == 64,
        "{second}"
    );
    let published = std::fs::read_to_string(data.join("reflector.pub")).unwrap();
    assert_eq!(published.trim(), key);
    let mode = std::fs::metadata(data.join("reflector.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// SIGTERM the moment the first line arrives (a service manager or script that starts it and
/// stops it at once): the collector was still printing its addresses and had not yet installed
/// its handler, so the signal's default action killed it. Now it is caught before the first
/// line, the rest is printed and the collector shuts down cleanly (exit 0). Several rounds:
/// with the handler installed after the last line this failed in most of them.
#[test]
fn sigterm_as_soon_as_the_collector_speaks_stops_it_cleanly() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = serve_command(&dir.path().join("data"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert!(first.starts_with("collector pin"), "{first}");
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: kill(2) with a child's pid (not yet waited for, so not reused) and a signal.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "round {round}: {status}\n{first}{rest}\n{err}"
        );
        assert!(rest.contains("HTTP API on"), "round {round}: {rest}");
        assert!(err.contains("SIGTERM received"), "round {round}: {err}");
    }
}

#[test]
fn a_bad_reflector_key_is_named_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let out = Command::new(callwatch_tests::built_binary("callwatch-agent"))
        .args(["init", "--accept-risks", "--config"])
        .arg(&config)
        .args(["--collector", "127.0.0.1:4433", "--pin", &"ab".repeat(32)])
        .args(["--reflector-key", "not-a-key"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--reflector-key") && err.contains("64 hex digits"),
        "{err}"
    );
    assert!(!config.exists() && !dir.path().join("agent.key").exists());
    // A good one lands in the config.
    let key = "11".repeat(32);
    let out = Command::new(callwatch_tests::built_binary("callwatch-agent"))
        .args(["init", "--accept-risks", "--config"])
        .arg(&config)
        .args(["--collector", "127.0.0.1:4433", "--pin", &"ab".repeat(32)])
        .args(["--reflector-key", &key])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains(&format!("reflector_key = \"{key}\"")),
        "{text}"
    );
}

#[test]
fn a_bad_hosting_network_list_stops_serve_with_its_line_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let list = dir.path().join("hosting.txt");
    std::fs::write(&list, "# ours\nAS64500\nhetzner\n").unwrap();
    let out = serve_command(&data)
        .arg("--hosting-asns")
        .arg(&list)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hosting.txt") && err.contains("line 3") && err.contains("hetzner"),
        "{err}"
    );
    assert!(!data.exists(), "nothing made before the list was read");
}

/// Logs go to files and the journal without colour codes: stderr is no terminal here, and the
/// collector, run as a service would be, writes plain text at info.
#[test]
fn collector_logs_carry_no_colour_codes_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let c = callwatch_tests::process::start_collector(dir.path(), &dir.path().join("data"), &[]);
    let stderr = c.stderr.clone();
    c.stop();
    let log = std::fs::read_to_string(stderr).unwrap();
    assert!(log.contains("INFO"), "the collector logged at info: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log file: {log:?}"
    );
}

/// `callwatch-collector verify FILE | head -0`: the reader goes away before the summary is
/// written; the command ends quietly (the pipe's signal, as any filter), never with a panic.
#[test]
fn a_closed_pipe_ends_verify_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("empty.ndjson");
    std::fs::write(&file, "").unwrap();
    let mut child =
        std::process::Command::new(callwatch_tests::built_binary("callwatch-collector"))
            .arg("verify")
            .arg(&file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    // Close the read end before the child writes (as `head -0` does).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
    // Either the write met the closed pipe (SIGPIPE) or the child won the race and wrote first.
    assert!(
        out.status.signal() == Some(SIGPIPE) || out.status.success(),
        "{:?}: {stderr}",
        out.status
    );
}

/// SIGPIPE's number on Linux (the tests crate does not link libc).
const SIGPIPE: i32 = 13;

/// A collector that shows another certificate than the pinned one is not "unreachable": `run
/// --once` says "wrong pin, or the connection is being intercepted", names the collector, exits
/// 4, and keeps the report queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_is_said_so_with_its_own_exit_code_and_nothing_is_lost() {
    let reflector = spawn_reflector(&["127.0.0.1:0".parse().unwrap()], Limits::default())
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let c = callwatch_collector::serve(callwatch_tests::seed::config(root.path(), "c"))
        .await
        .unwrap();
    assert_ne!(c.pin, "ab".repeat(32));
    let dir = root.path().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    let (collector, tcp, reflector_addr) = (
        c.quic_addr.to_string(),
        c.tcp_addr.to_string(),
        reflector.addrs[0].to_string(),
    );
    let config2 = config.clone();
    let out = tokio::task::spawn_blocking(move || {
        // Both transports: QUIC and TLS over TCP show the same (unpinned) certificate.
        callwatch_tests::process::init_agent(
            &config2,
            &collector,
            &"ab".repeat(32),
            &reflector_addr,
            &[("duration_secs = 15", "duration_secs = 1")],
            &format!("collector_tcp = \"{tcp}\"\n"),
        );
        Command::new(callwatch_tests::built_binary("callwatch-agent"))
            .args(["run", "--once", "--config"])
            .arg(&config2)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("wrong pin, or the connection is being intercepted")
            && stderr.contains(&c.quic_addr.to_string()),
        "{stderr}"
    );
    let queue = callwatch_agent::queue::Queue::open(&dir.join("queue")).unwrap();
    assert_eq!(queue.len(), 1, "the report stays queued");
    assert_eq!(c.store.len(), 0);
    c.shutdown().await;
}

/// `test` against a reflector that does not answer exits 3, as `run --once` does for the same
/// failure, and names the address.
#[test]
fn test_against_a_silent_reflector_exits_3_naming_it() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let out = Command::new(callwatch_tests::built_binary("callwatch-agent"))
        .args(["test", "--reflector", &addr, "--duration", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&addr), "the address is named: {stderr}");
}

/// The subcommands `--help` lists for `bin` (without `help`).
fn subcommands(bin: &str) -> Vec<String> {
    let out = Command::new(callwatch_tests::built_binary(bin))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A command's name is indented two spaces; its wrapped description further.
        .filter(|l| !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Every `--help` of the three programs teaches: examples stand on lines of their own (not
/// squashed into one paragraph), and every flag has a description.
#[test]
fn every_help_has_its_examples_on_their_own_lines_and_every_flag_described() {
    let mut pages = 0;
    for bin in [
        "callwatch-agent",
        "callwatch-collector",
        "callwatch-reflector",
    ] {
        let mut commands: Vec<Vec<String>> = vec![vec![]];
        for sub in subcommands(bin) {
            commands.push(vec![sub]);
        }
        for args in commands {
            let out = Command::new(callwatch_tests::built_binary(bin))
                .args(&args)
                .arg("--help")
                .output()
                .unwrap();
            assert!(out.status.success(), "{bin} {args:?} --help");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let page = format!("{bin} {} --help", args.join(" "));
            pages += 1;
            let lines: Vec<&str> = text.lines().collect();
            let mut in_options = false;
            for (i, line) in lines.iter().enumerate() {
                if !line.is_empty() && !line.starts_with(' ') {
                    in_options = *line == "Options:";
                }
                if line.trim_start().starts_with("Example") {
                    assert!(
                        !line.contains("callwatch-"),
                        "{page}: an example squashed into its heading: {line:?}"
                    );
                    // A command follows within two lines (one may say what it does).
                    let follows = lines.iter().skip(i + 1).take(2).any(|n| {
                        let n = n.trim_start();
                        n.starts_with("callwatch-") || n.starts_with("sudo ")
                    });
                    assert!(follows, "{page}: no example on the lines after {line:?}");
                }
                assert!(
                    !line.contains("\\ --"),
                    "{page}: a continued example squashed into one line: {line:?}"
                );
                // An option ("  -x, --flag <V>" or "      --flag") must be followed by its
                // description, indented further (long help puts it on the next line).
                let t = line.trim_start();
                let is_option = in_options
                    && (t.starts_with("--") || (t.starts_with('-') && t.len() > 1))
                    && line.starts_with("  ")
                    && !line.starts_with("          ");
                if is_option {
                    // On the same line after two spaces (short help), or on the next (long help).
                    let inline = t.split("  ").skip(1).any(|part| !part.trim().is_empty());
                    let described = inline
                        || lines
                            .get(i + 1)
                            .is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
                    assert!(described, "{page}: {t:?} has no description");
                }
            }
        }
    }
    assert!(pages >= 12, "only {pages} help pages");
}

/// `init` says what running an agent means before it writes anything, and goes on only when the
/// volunteer agrees: on a terminal by answering `yes`, in a script with `--accept-risks`; with
/// neither, nothing is written and it says how to agree (exit 64).
#[test]
fn init_shows_the_notice_and_writes_nothing_without_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let agent = callwatch_tests::built_binary("callwatch-agent");
    let pin = "ab".repeat(32);
    let config_text = config.to_str().unwrap();
    let args = [
        "init",
        "--config",
        config_text,
        "--collector",
        "127.0.0.1:4433",
        "--pin",
        &pin,
    ];
    let nothing_written = || !config.exists() && !dir.path().join("agent.key").exists();
    // No terminal, no flag.
    let out = Command::new(&agent)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("Before you run a callwatch agent") && err.contains("--accept-risks"),
        "{err}"
    );
    assert!(nothing_written());
    // On a terminal (`script` gives it one): "no" writes nothing, "yes" goes on.
    let on_terminal = |answer: &str| {
        let line = format!("{} {}", agent.display(), args.join(" "));
        let mut child = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script(1), from util-linux");
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    };
    let out = on_terminal("no");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("Type yes to go on") && text.contains("nothing written"),
        "{text}"
    );
    assert!(nothing_written());
    let out = on_terminal("yes");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(config.exists(), "{text}");
    // The notice is in --help too.
    let help = Command::new(&agent)
        .args(["init", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Before you run a callwatch agent"));
}

/// `--version` says the version and the git commit the binary was built from (#21 item 4):
/// the workspace's HEAD when built from a git checkout, as CI and developers do.
#[test]
fn version_names_the_release_and_the_commit() {
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .expect("the tests run in a git checkout");
    for program in ["callwatch-agent", "callwatch-collector"] {
        let out = Command::new(callwatch_tests::built_binary(program))
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{program} {} (commit {head})", env!("CARGO_PKG_VERSION"))
        );
    }
}

/// Man pages and shell completions come from the same clap definitions as `--help` (#21 item
/// 3): `manpages DIR` writes a page per program and command that `man` renders with the
/// options `--help` lists, and the bash completion script is valid bash that offers the
/// commands.
#[test]
fn man_pages_and_completions_come_from_the_command_line_definitions() {
    let dir = tempfile::tempdir().unwrap();
    for (program, command, option) in [
        ("callwatch-agent", "run", "--once"),
        ("callwatch-collector", "serve", "--min-agents"),
    ] {
        let out = Command::new(callwatch_tests::built_binary(program))
            .args(["manpages".as_ref(), dir.path().as_os_str()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let page = dir.path().join(format!("{program}-{command}.1"));
        let text = std::fs::read_to_string(&page).unwrap();
        assert!(
            text.contains(&format!(".TH {program}-{command} 1")),
            "{text}"
        );
        assert!(
            text.contains(&option.replace('-', "\\-")),
            "{option} in {text}"
        );
        assert!(dir.path().join(format!("{program}.1")).exists());

        let out = Command::new(callwatch_tests::built_binary(program))
            .args(["completions", "bash"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let script = dir.path().join(format!("{program}.bash"));
        std::fs::write(&script, &out.stdout).unwrap();
        let check = Command::new("bash")
            .arg("-n")
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains(command) && script.contains(option),
            "{script}"
        );
    }
    // A shell it does not know is a usage error.
    let out = Command::new(callwatch_tests::built_binary("callwatch-agent"))
        .args(["completions", "nosh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
