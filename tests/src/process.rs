//! The collector as a real process: started from the built binary, its addresses read from what
//! it prints, stopped with SIGTERM or killed with SIGKILL.
//!
//! Test fixtures: they panic (with the failing step) instead of returning errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running collector process and what it printed on start.
pub struct RunningCollector {
    pub child: Child,
    pub pin: [u8; 32],
    pub quic: SocketAddr,
    /// The TLS-over-TCP ingest address.
    pub tcp: SocketAddr,
    pub reflector: SocketAddr,
    pub http: SocketAddr,
    /// Its standard output and error, in files (read them after it stopped).
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// `callwatch-collector serve --data DATA` on free loopback ports (QUIC, reflector, HTTP), not
/// yet started.
pub fn serve_command(data: &Path) -> Command {
    let mut cmd = Command::new(crate::built_binary("callwatch-collector"));
    cmd.args(["serve", "--data"]).arg(data).args([
        "--listen",
        "127.0.0.1:0",
        "--reflector",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ]);
    cmd
}

/// Starts `callwatch-collector serve --data DATA` on free loopback ports, with `extra` arguments
/// appended, logging at info level into `logs/stdout.log` and `logs/stderr.log`; returns once it
/// printed its addresses (it exiting first fails the test, with its error output).
pub fn start_collector(logs: &Path, data: &Path, extra: &[&str]) -> RunningCollector {
    start_collector_logging(logs, data, extra, "info")
}

/// [`start_collector`] with `RUST_LOG=rust_log` (`debug` turns on every crate's debug lines).
pub fn start_collector_logging(
    logs: &Path,
    data: &Path,
    extra: &[&str],
    rust_log: &str,
) -> RunningCollector {
    let mut cmd = serve_command(data);
    cmd.args(extra).env("RUST_LOG", rust_log);
    start_serve(cmd, logs)
}

/// Starts `cmd` (a `callwatch-collector serve` command, with every argument it needs; logging
/// at info level unless it sets `RUST_LOG`) as [`start_collector`] does.
pub fn start_serve(mut cmd: Command, logs: &Path) -> RunningCollector {
    let (stdout, stderr) = (logs.join("stdout.log"), logs.join("stderr.log"));
    if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
        cmd.env("RUST_LOG", "info");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("creating stdout.log"))
        .stderr(std::fs::File::create(&stderr).expect("creating stderr.log"))
        .spawn()
        .expect("starting the collector");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = std::fs::read_to_string(&stdout).unwrap_or_default();
        if out.contains("HTTP API on") {
            let after = |prefix: &str| -> String {
                let line = out
                    .lines()
                    .find(|l| l.starts_with(prefix))
                    .unwrap_or_else(|| panic!("no {prefix:?} line in {out}"));
                line[prefix.len()..].trim().to_string()
            };
            let mut pin = [0u8; 32];
            hex::decode_to_slice(
                after("collector pin (SHA-256 of its certificate):"),
                &mut pin,
            )
            .expect("the pin is hex");
            let http = after("HTTP API on http://");
            return RunningCollector {
                child,
                pin,
                quic: after("QUIC ingest on").parse().expect("QUIC address"),
                tcp: after("TLS/TCP ingest on").parse().expect("TCP address"),
                reflector: after("reflector on udp")
                    .parse()
                    .expect("reflector address"),
                http: http
                    .trim_end_matches("/api/v1/aggregation")
                    .parse()
                    .expect("HTTP address"),
                stdout,
                stderr,
            };
        }
        if let Some(status) = child.try_wait().expect("polling the collector") {
            panic!(
                "the collector exited ({status}) before it was up: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "the collector did not start");
        // Polling its output file: the process gives no other signal that it is up.
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl RunningCollector {
    /// SIGTERM, as an operator's service manager stops it; waits for the exit (at most 30 s).
    pub fn stop(mut self) {
        signal(&self.child, "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().expect("polling").is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the collector did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no chance to flush or close anything; waits for the exit.
    pub fn kill(&mut self) {
        signal(&self.child, "KILL");
        let _ = self.child.wait();
    }
}

/// A test that fails before it stops its collector still leaves no process behind.
impl Drop for RunningCollector {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{sig} failed");
}

/// A running standalone reflector (`callwatch-reflector`, or its alias `callwatch-collector
/// reflect`) and what it printed on start.
pub struct RunningReflector {
    pub child: Child,
    pub addr: SocketAddr,
    /// Its sealing key (hex, `reflector.pub`).
    pub seal_key: String,
    /// Its attestation key (hex, `reflector-attest.pub`).
    pub attest_key: String,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// Starts `callwatch-collector reflect --data DATA --reflector 127.0.0.1:0` with `extra`
/// arguments appended, output in `logs/reflector.stdout.log` and `logs/reflector.stderr.log`;
/// returns once it printed its address (it exiting first fails the test).
pub fn start_reflector(logs: &Path, data: &Path, extra: &[&str]) -> RunningReflector {
    let mut cmd = Command::new(crate::built_binary("callwatch-collector"));
    cmd.arg("reflect");
    start_reflector_command(cmd, logs, data, extra)
}

/// [`start_reflector`] with the `callwatch-reflector` binary:
/// `callwatch-reflector --data DATA --reflector 127.0.0.1:0 EXTRA…`.
pub fn start_reflector_binary(logs: &Path, data: &Path, extra: &[&str]) -> RunningReflector {
    let cmd = Command::new(crate::built_binary("callwatch-reflector"));
    start_reflector_command(cmd, logs, data, extra)
}

fn start_reflector_command(
    mut cmd: Command,
    logs: &Path,
    data: &Path,
    extra: &[&str],
) -> RunningReflector {
    let (stdout, stderr) = (
        logs.join("reflector.stdout.log"),
        logs.join("reflector.stderr.log"),
    );
    let mut child = cmd
        .arg("--data")
        .arg(data)
        .args(["--reflector", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("creating the reflector's stdout log"))
        .stderr(std::fs::File::create(&stderr).expect("creating the reflector's stderr log"))
        .spawn()
        .expect("starting the reflector");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = std::fs::read_to_string(&stdout).unwrap_or_default();
        if out.contains("reflector on udp") {
            let after = |prefix: &str| -> String {
                let line = out
                    .lines()
                    .find(|l| l.starts_with(prefix))
                    .unwrap_or_else(|| panic!("no {prefix:?} line in {out}"));
                line.rsplit(' ').next().unwrap_or_default().to_string()
            };
            return RunningReflector {
                child,
                addr: after("reflector on udp")
                    .parse()
                    .expect("reflector address"),
                seal_key: after("reflector key"),
                attest_key: after("attestation key"),
                stdout,
                stderr,
            };
        }
        if let Some(status) = child.try_wait().expect("polling the reflector") {
            panic!(
                "the reflector exited ({status}) before it was up: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "the reflector did not start");
        // Polling its output file: the process gives no other signal that it is up.
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl RunningReflector {
    /// SIGTERM; waits for the exit (at most 30 s) and returns its status.
    pub fn stop(self) -> std::process::ExitStatus {
        self.stop_within(Duration::from_secs(30))
            .expect("the reflector did not stop on SIGTERM")
    }

    /// SIGTERM, then awaits the exit for at most `limit`: its status, or `None` when it was
    /// still running then (it is killed and reaped).
    pub fn stop_within(self, limit: Duration) -> Option<std::process::ExitStatus> {
        signal(&self.child, "TERM");
        await_exit(self.child, limit)
    }
}

/// Awaits `child`'s exit (a thread blocked in `wait`, not polling) for at most `limit`: its
/// status, or `None` when it was still running then (it is killed and reaped).
pub fn await_exit(mut child: Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(limit) {
        Ok(status) => {
            let _ = waiter.join();
            Some(status.expect("waiting for the child"))
        }
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = waiter.join();
            None
        }
    }
}

/// `callwatch-agent init --config CONFIG --collector COLLECTOR --pin PIN --reflector REFLECTOR
/// --platform generic` (the init failing fails the test), then the written text edited: each (from, to) in `edits`
/// replaced (a `from` not in the text fails the test), and `append` added at the end. Returns
/// the config file's text as written.
pub fn init_agent(
    config: &Path,
    collector: &str,
    pin: &str,
    reflector: &str,
    edits: &[(&str, &str)],
    append: &str,
) -> String {
    let out = Command::new(crate::built_binary("callwatch-agent"))
        .args(["init", "--accept-risks", "--config"])
        .arg(config)
        .args([
            "--collector",
            collector,
            "--pin",
            pin,
            "--reflector",
            reflector,
            // The reflector is on a free port, not every profile's: generic tests only.
            "--platform",
            "generic",
        ])
        .output()
        .expect("running callwatch-agent init");
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut text = std::fs::read_to_string(config).expect("the config init wrote");
    for (from, to) in edits {
        assert!(text.contains(from), "{from} not in\n{text}");
        text = text.replace(from, to);
    }
    text.push_str(append);
    std::fs::write(config, &text).expect("writing the edited config");
    text
}
