//! The documentation's commands work as written. Every fenced code block of README.md and
//! docs/*.md that holds commands is either run here, on loopback, with the workspace's built
//! binaries first on PATH, or announced by a comment on the line before its fence:
//!
//! - `<!-- covered-by: tests/tests/FILE.rs::test_name … -->` — one or more tests that run what
//!   the block does where this test cannot (root, systemd, /usr/local, ClickHouse, the long
//!   demo); each must exist and be a test. Text after a `;` is a note for the reader.
//! - `<!-- not-run: why -->` — nothing runs it (a mutation-testing session of an hour); at most
//!   [`NOT_RUN_MAX`] blocks may say so, each with a reason.
//!
//! A block with neither fails the test, with its file and line, as does any command of a run
//! block that exits non-zero: a renamed or removed flag is a usage error (exit 64), so the
//! documentation breaks the build when it stops matching the code.
//!
//! Which blocks hold commands: those tagged `sh`, `bash`, `shell` or `console` (of a `console`
//! block only the `$ ` lines), and untagged ones whose first command starts (after any
//! `VAR=value`) with a word of [`COMMAND_WORDS`]; untagged diagrams and other languages
//! (`toml`) are not commands. Blocks are found by their content on every run: no line numbers
//! are kept here.
//!
//! How a run block runs: each command (lines joined at a trailing `\`) by `bash` in a folder of
//! its own (`HOME` there too, so `~/…` stays inside), after the placeholder substitutions of
//! [`Stage::substitutions`], a table of literal replacements. The collector is the README's own
//! `callwatch-collector serve` block, started first because the volunteers' section comes before
//! the operators'; its printed addresses, pin and keys stand in for `collector.example.org` and
//! the `<64 hex digits>`. Daemons (`serve`, `reflect`, the standalone reflector, `run` without
//! `--once`) are started, awaited until they print that they are up, stopped with SIGTERM and
//! must exit 0. `cargo install --path DIR` only checks that DIR is a crate of the workspace.

use callwatch_agent::config::ConfigFile;
use callwatch_agent::queue::Queue;
use callwatch_collector::geo::mmdb_writer::{asn_record, country_record, MmdbWriter};
use callwatch_proto::{Platform, SignedReport};
use callwatch_tests::process::{await_exit, start_reflector_binary};
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Blocks that may say `not-run`; raising it is a decision a reviewer sees.
const NOT_RUN_MAX: usize = 2;

/// Info strings of blocks that are commands.
const SHELL_INFO: [&str; 4] = ["sh", "bash", "shell", "console"];

/// The first words that make an untagged block a block of commands.
const COMMAND_WORDS: [&str; 9] = [
    "callwatch-agent",
    "callwatch-collector",
    "callwatch-reflector",
    "callwatch-demo",
    "cargo",
    "curl",
    "sudo",
    "export",
    "bash",
];

/// The programs a run block may call (anything else needs a marker).
const RUNNABLE: [&str; 4] = [
    "callwatch-agent",
    "callwatch-collector",
    "callwatch-reflector",
    "curl",
];

/// How long one command may take (a call test is 15 s by default), and a daemon to come up or
/// stop.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);
const DAEMON_LIMIT: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the workspace folder")
}

/// README.md and every docs/*.md, in a fixed order.
fn documents() -> Vec<PathBuf> {
    let root = workspace();
    let mut out = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("the docs folder")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    out.extend(docs);
    out
}

/// A fenced code block: where its fence is, its info string, its lines and the line before it.
#[derive(Debug, Clone)]
struct Block {
    /// `file:line` of the opening fence.
    at: String,
    info: String,
    body: Vec<String>,
    before: String,
}

fn fenced_blocks(name: &str, text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(info) = lines[i].trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let start = i;
        let mut body = Vec::new();
        i += 1;
        while i < lines.len() && lines[i].trim() != "```" {
            body.push(lines[i].to_string());
            i += 1;
        }
        out.push(Block {
            at: format!("{name}:{}", start + 1),
            info: info.trim().to_string(),
            body,
            before: if start > 0 {
                lines[start - 1].trim().to_string()
            } else {
                String::new()
            },
        });
        i += 1; // the closing fence
    }
    out
}

/// The block's commands: lines joined at a trailing `\`, blank and `#` lines left out; of a
/// `console` block only the lines after a `$ ` prompt.
fn commands(block: &Block) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in &block.body {
        let line = if block.info == "console" && current.is_empty() {
            match line.trim_start().strip_prefix("$ ") {
                Some(l) => l,
                None => continue,
            }
        } else {
            line.as_str()
        };
        if current.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with('#')) {
            continue;
        }
        match line.trim_end().strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim());
                current.push(' ');
            }
            None => {
                current.push_str(line.trim());
                out.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// The words of a command after any leading `VAR=value` assignments.
fn program_words(command: &str) -> Vec<&str> {
    command
        .split_whitespace()
        .skip_while(|w| {
            w.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            })
        })
        .collect()
}

fn is_command_block(block: &Block) -> bool {
    if SHELL_INFO.contains(&block.info.as_str()) {
        return true;
    }
    if !block.info.is_empty() {
        return false;
    }
    commands(block).first().is_some_and(|c| {
        program_words(c)
            .first()
            .is_some_and(|w| COMMAND_WORDS.contains(w))
    })
}

/// What the line before a block says about it.
#[derive(Debug, PartialEq)]
enum Marker {
    None,
    CoveredBy(Vec<String>),
    NotRun(String),
}

fn marker(line: &str) -> Marker {
    let Some(inner) = line
        .strip_prefix("<!--")
        .and_then(|l| l.strip_suffix("-->"))
        .map(str::trim)
    else {
        return Marker::None;
    };
    if let Some(names) = inner.strip_prefix("covered-by:") {
        let names = names.split(';').next().unwrap_or_default();
        return Marker::CoveredBy(names.split_whitespace().map(String::from).collect());
    }
    match inner.strip_prefix("not-run:") {
        Some(why) => Marker::NotRun(why.trim().to_string()),
        None => Marker::None,
    }
}

/// What is wrong with a `covered-by` name (`tests/tests/FILE.rs::fn_name`), if anything.
fn covering_problem(name: &str) -> Option<String> {
    let Some((file, test)) = name.split_once("::") else {
        return Some(format!("{name:?}: expected tests/tests/FILE.rs::test_name"));
    };
    if !file.starts_with("tests/tests/") || !file.ends_with(".rs") {
        return Some(format!(
            "{name:?}: the file is not a test file (tests/tests/*.rs)"
        ));
    }
    let Ok(source) = std::fs::read_to_string(workspace().join(file)) else {
        return Some(format!("{name:?}: no file {file}"));
    };
    let lines: Vec<&str> = source.lines().collect();
    let Some(at) = lines.iter().position(|l| {
        let l = l.trim_start();
        l.starts_with(&format!("fn {test}(")) || l.starts_with(&format!("async fn {test}("))
    }) else {
        return Some(format!("{name:?}: {file} defines no fn {test}"));
    };
    let attributes = &lines[at.saturating_sub(3)..at];
    if !attributes
        .iter()
        .any(|l| l.contains("#[test]") || l.contains("#[tokio::test"))
    {
        return Some(format!("{name:?}: fn {test} in {file} is not a test"));
    }
    None
}

/// One command block's fate, or what is wrong with it.
#[derive(Debug, PartialEq)]
enum Fate {
    Run,
    Covered,
    NotRun,
}

fn fate(block: &Block) -> Result<Fate, String> {
    match marker(&block.before) {
        Marker::None => Ok(Fate::Run),
        Marker::CoveredBy(names) if names.is_empty() => {
            Err("a covered-by marker that names no test".into())
        }
        Marker::CoveredBy(names) => {
            let problems: Vec<String> = names.iter().filter_map(|n| covering_problem(n)).collect();
            match problems.is_empty() {
                true => Ok(Fate::Covered),
                false => Err(problems.join("; ")),
            }
        }
        Marker::NotRun(why) if why.len() < 30 => Err(format!("not-run {why:?}: say why")),
        Marker::NotRun(_) => Ok(Fate::NotRun),
    }
}

/// Where the documented collector runs: its reflector binds every profile's fixed port there,
/// an address of this test's own (reflector_endpoints.rs has 127.0.0.91).
const SERVE_IP: &str = "127.0.0.93";

/// Replaces every `0.0.0.0:PORT` by `127.0.0.1:0`: what a server binds on every interface here
/// binds a free loopback port.
fn any_to_loopback(command: &str) -> String {
    let mut out = String::new();
    let mut rest = command;
    while let Some(at) = rest.find("0.0.0.0:") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "0.0.0.0:".len()..];
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        out.push_str("127.0.0.1:0");
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// What a placeholder left in a command after the substitutions looks like.
const PLACEHOLDERS: [&str; 4] = ["collector.example.org", "hex digit", "<the ", "<its "];

/// The collector the blocks talk to, as it printed itself.
struct Collector {
    child: Option<Child>,
    stderr: PathBuf,
    /// Its command as the README has it (after the substitutions), to know it again.
    command: String,
    data: PathBuf,
    pin: String,
    reflector_key: String,
    carry_key: String,
    quic: String,
    http: String,
    /// Documented reflector port → the address it got here, in the serve command's order.
    reflectors: BTreeMap<u16, String>,
}

/// One substitution: `from` as documented becomes `to` here, in commands whose words start with
/// `only_in` (all when empty), for the reason `why` (shown when a command fails).
struct Rule {
    from: String,
    to: String,
    only_in: &'static str,
    why: &'static str,
}

/// Everything a run block runs with.
struct Stage {
    dir: PathBuf,
    cwd: PathBuf,
    home: PathBuf,
    root: PathBuf,
    logs: PathBuf,
    path: String,
    collector: Option<Collector>,
    /// Commands run so far (names the log files).
    runs: usize,
    /// `export VAR=value` lines of the block being run.
    exports: Vec<(String, String)>,
}

impl Stage {
    fn new(dir: &Path) -> Stage {
        let [cwd, home, root, logs] = ["work", "home", "root", "logs"].map(|d| dir.join(d));
        for d in [&cwd, &home, &root, &logs] {
            std::fs::create_dir_all(d).expect("creating the test's folders");
        }
        let bin = callwatch_tests::built_binary("callwatch-agent");
        let bin = bin.parent().expect("the binaries' folder").to_path_buf();
        for b in ["callwatch-collector", "callwatch-reflector"] {
            assert_eq!(
                callwatch_tests::built_binary(b).parent(),
                Some(bin.as_path())
            );
        }
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Stage {
            dir: dir.to_path_buf(),
            cwd,
            home,
            root,
            logs,
            path,
            collector: None,
            runs: 0,
            exports: Vec::new(),
        }
    }

    /// The placeholder substitutions, literal, applied in order, each everywhere in the
    /// commands it is for; then every `0.0.0.0:PORT` becomes `127.0.0.1:0`.
    fn substitutions(&self) -> Vec<Rule> {
        let all = "";
        let mut table = vec![
            Rule {
                from: "/var/lib/".into(),
                to: format!("{}/var/lib/", self.root.display()),
                only_in: all,
                why: "data folders stay inside the test's folder",
            },
            Rule {
                from: "--http 127.0.0.1:8080".into(),
                to: "--http 127.0.0.1:0".into(),
                only_in: all,
                why: "a collector a block starts takes a free port",
            },
            Rule {
                from: "curl ".into(),
                to: "curl --fail --silent --show-error ".into(),
                only_in: "curl",
                why: "an HTTP error (a 400 for a renamed parameter) fails the command",
            },
            Rule {
                from: "--listen 0.0.0.0:4433".into(),
                to: format!("--listen {SERVE_IP}:0"),
                only_in: "callwatch-collector serve",
                why: "agents test at the collector's host: the same address as its reflector",
            },
            Rule {
                from: "--reflector-ip 0.0.0.0".into(),
                to: format!("--reflector-ip {SERVE_IP}"),
                only_in: "callwatch-collector serve",
                why: "every profile's fixed ports, on a loopback address no other test uses",
            },
            Rule {
                from: "callwatch-agent init ".into(),
                to: "callwatch-agent init --accept-risks --platform generic --platform whatsapp "
                    .into(),
                only_in: "callwatch-agent init",
                why: "no terminal answers the notice here; a single-arm and a two-arm platform \
                      test what all five do, in 30 s not 75",
            },
        ];
        let Some(c) = &self.collector else {
            return table;
        };
        // The platform test goes to the profile's ports on the reflector host: here they are
        // the ports the collector got for them.
        let port = |p: u16| {
            c.reflectors
                .get(&p)
                .and_then(|a| a.rsplit(':').next())
                .unwrap_or("0")
                .to_string()
        };
        table.push(Rule {
            from: "test --reflector".into(),
            to: "test --duration 2 --reflector".into(),
            only_in: "callwatch-agent test",
            why: "a 2 s test says as much about the flags as a 15 s one",
        });
        table.push(Rule {
            from: "--platform whatsapp".into(),
            to: format!(
                "--platform whatsapp --platform-port {} --control-port {}",
                port(3478),
                port(40400)
            ),
            only_in: "callwatch-agent test",
            why: "the profile's ports 3478 and 40400 are where the collector got them",
        });
        for (p, addr) in &c.reflectors {
            table.push(Rule {
                from: format!("collector.example.org:{p}"),
                to: addr.clone(),
                only_in: all,
                why: "the collector's reflector on that port",
            });
        }
        let pin = format!("--pin {}", c.pin);
        let key = format!("--reflector-key {}", c.reflector_key);
        for (from, to, why) in [
            ("collector.example.org:4433", &c.quic, "its QUIC port"),
            ("127.0.0.1:8080", &c.http, "its HTTP API"),
            ("<the collector's 64-hex-digit pin>", &c.pin, "its pin"),
            ("--pin <64 hex digits>", &pin, "its pin"),
            (
                "<its reflector.pub, 64 hex digits>",
                &c.reflector_key,
                "its key",
            ),
            ("--reflector-key <64 hex digits>", &key, "its key"),
        ] {
            table.push(Rule {
                from: from.into(),
                to: to.clone(),
                only_in: all,
                why,
            });
        }
        table
    }

    /// The substitutions that apply to `command`, as `from → to (why)` lines.
    fn explain(&self, command: &str) -> String {
        let program = program_words(command).join(" ");
        self.substitutions()
            .iter()
            .filter(|r| program.starts_with(r.only_in) && command.contains(&r.from))
            .map(|r| format!("\n    substituted {:?} → {:?} ({})", r.from, r.to, r.why))
            .collect()
    }

    fn substitute(&self, command: &str) -> String {
        let mut out = command.to_string();
        let program = program_words(command).join(" ");
        for rule in self.substitutions() {
            if program.starts_with(rule.only_in) {
                out = out.replace(&rule.from, &rule.to);
            }
        }
        any_to_loopback(&out)
    }

    /// `bash -c SCRIPT` in the stage's folder, its output in log files named after `tag`.
    fn spawn(&mut self, script: &str, tag: &str) -> (Child, PathBuf, PathBuf) {
        self.runs += 1;
        let (out, err) = (
            self.logs.join(format!("{:03}-{tag}.out", self.runs)),
            self.logs.join(format!("{:03}-{tag}.err", self.runs)),
        );
        let child = Command::new("bash")
            .args(["-c", script])
            .current_dir(&self.cwd)
            .env("PATH", &self.path)
            .env("HOME", &self.home)
            .env_remove("RUST_LOG")
            .envs(self.exports.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("a log file"))
            .stderr(std::fs::File::create(&err).expect("a log file"))
            .spawn()
            .expect("running bash");
        (child, out, err)
    }

    /// Starts a daemon and returns it once `ready` appeared in its stdout or stderr.
    fn start_daemon(
        &mut self,
        command: &str,
        ready: &str,
    ) -> Result<(Child, PathBuf, PathBuf), String> {
        let (mut child, out, err) = self.spawn(&format!("exec {command}"), "daemon");
        let deadline = Instant::now() + DAEMON_LIMIT;
        loop {
            let said = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
            if said(&out).contains(ready) || said(&err).contains(ready) {
                return Ok((child, out, err));
            }
            if let Some(status) = child.try_wait().expect("polling a daemon") {
                return Err(format!(
                    "exited ({status}) before it was up: {}",
                    said(&err)
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "did not say {ready:?} within {DAEMON_LIMIT:?}: {}",
                    said(&err)
                ));
            }
            // Polling its output: a daemon gives no other sign that it is up.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then its exit awaited: it must be 0.
    fn stop_daemon(child: Child, err: &Path) -> Result<(), String> {
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed");
        match await_exit(child, DAEMON_LIMIT) {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(format!(
                "stopped with {s} on SIGTERM: {}",
                std::fs::read_to_string(err).unwrap_or_default()
            )),
            None => Err(format!("did not stop within {DAEMON_LIMIT:?} of SIGTERM")),
        }
    }

    /// Starts the collector from a documented `serve` command and keeps it running.
    fn start_collector(&mut self, documented: &str) {
        let command = self.substitute(documented);
        let (child, out, stderr) = self
            .start_daemon(&command, "HTTP API on")
            .unwrap_or_else(|e| panic!("the documented collector ({command}): {e}"));
        let printed = std::fs::read_to_string(out).expect("its output");
        let after = |prefix: &str| -> Vec<String> {
            printed
                .lines()
                .filter_map(|l| l.strip_prefix(prefix))
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
                .collect()
        };
        let one = |prefix: &str| {
            after(prefix)
                .pop()
                .unwrap_or_else(|| panic!("no {prefix:?} in {printed}"))
        };
        // The reflector's addresses as printed, by port: every profile's (`--reflector-ip`),
        // or the documented `--reflector` ports in order (each given a free one here).
        let words: Vec<&str> = documented.split_whitespace().collect();
        let documented_ports: Vec<u16> = words
            .windows(2)
            .filter(|w| w[0] == "--reflector")
            .map(|w| {
                w[1].rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("a documented port")
            })
            .collect();
        let bound = after("reflector on udp");
        let reflectors: BTreeMap<u16, String> = if documented_ports.is_empty() {
            bound
                .iter()
                .map(|a| {
                    (
                        a.rsplit(':')
                            .next()
                            .and_then(|p| p.parse().ok())
                            .unwrap_or(0),
                        a.clone(),
                    )
                })
                .collect()
        } else {
            assert_eq!(documented_ports.len(), bound.len(), "{printed}");
            documented_ports.into_iter().zip(bound).collect()
        };
        let data = words
            .windows(2)
            .find(|w| w[0] == "--data")
            .map(|w| PathBuf::from(self.substitute(w[1])))
            .expect("the serve command names its --data");
        self.collector = Some(Collector {
            child: Some(child),
            stderr,
            command,
            pin: one("collector pin"),
            reflector_key: one("reflector key"),
            carry_key: one("carry-out key"),
            quic: one("QUIC ingest on"),
            http: one("HTTP API on http://")
                .trim_end_matches("/api/v1/aggregation")
                .to_string(),
            reflectors,
            data,
        });
    }

    /// Stops the collector (the commands that read its store need it stopped).
    fn stop_collector(&mut self) -> Result<(), String> {
        let Some(c) = self.collector.as_mut() else {
            return Ok(());
        };
        match c.child.take() {
            Some(child) => {
                Self::stop_daemon(child, &c.stderr).map_err(|e| format!("the collector {e}"))
            }
            None => Ok(()),
        }
    }

    /// Runs one documented command, as the reader would, after the substitutions.
    fn run(&mut self, documented: &str) -> Result<(), String> {
        let command = self.substitute(documented);
        if let Some(p) = PLACEHOLDERS.iter().find(|p| command.contains(*p)) {
            return Err(format!(
                "{p:?} has no stand-in here (not one of the collector's ports or keys): {command}"
            ));
        }
        let words = program_words(&command);
        let program = words.first().copied().unwrap_or_default();
        let arg = |i: usize| words.get(i).copied().unwrap_or_default();
        if program == "cargo" && arg(1) == "install" && arg(2) == "--path" {
            let krate = workspace().join(arg(3)).join("Cargo.toml");
            return match krate.is_file() {
                true => Ok(()),
                false => Err(format!("{} is no crate of the workspace", arg(3))),
            };
        }
        if program == "export" {
            for assignment in &words[1..] {
                let (k, v) = assignment
                    .split_once('=')
                    .ok_or_else(|| format!("export {assignment:?}: not VAR=value"))?;
                self.exports.push((k.into(), v.into()));
            }
            return Ok(());
        }
        if !RUNNABLE.contains(&program) {
            return Err(format!(
                "{program:?} cannot run in a loopback test: run what it does elsewhere and \
                 name that test in <!-- covered-by: … --> on the line before the block"
            ));
        }
        let daemon = match (program, arg(1)) {
            ("callwatch-collector", "serve") => Some("HTTP API on"),
            ("callwatch-collector", "reflect") => Some("reflector on udp"),
            ("callwatch-reflector", a) if !matches!(a, "-h" | "--help" | "-V" | "--version") => {
                Some("reflector on udp")
            }
            ("callwatch-agent", "run") if !words.contains(&"--once") => Some("agent running"),
            _ => None,
        };
        if let Some(c) = &self.collector {
            if c.command == command {
                return match c.child.is_some() {
                    true => Ok(()),
                    false => Err("the collector was stopped before its own block".into()),
                };
            }
            // export, import and migrate read the store: the collector must be stopped first.
            let data = format!("--data {}", c.data.display());
            let reads_store = matches!(arg(1), "export" | "import" | "migrate");
            if program == "callwatch-collector" && reads_store && command.contains(&data) {
                self.stop_collector()?;
            }
        }
        match daemon {
            Some(ready) => {
                let (child, _, err) = self.start_daemon(&command, ready)?;
                Self::stop_daemon(child, &err)
            }
            None => {
                let (child, _, err) = self.spawn(&format!("set -o pipefail\n{command}"), "run");
                let said = || std::fs::read_to_string(&err).unwrap_or_default();
                match await_exit(child, COMMAND_LIMIT) {
                    Some(s) if s.success() => Ok(()),
                    Some(s) => Err(format!("{s}: {}", said())),
                    None => Err(format!("still running after {COMMAND_LIMIT:?}: {}", said())),
                }
            }
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if let Some(child) = self.collector.as_mut().and_then(|c| c.child.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Checks every command block of one document: problems as `file:line: what`, and how many
/// blocks were run, covered and not run.
fn check_document(
    name: &str,
    text: &str,
    stage: &mut Stage,
) -> (Vec<String>, [usize; 3], Vec<String>) {
    let (mut problems, mut counts, mut ran) = (Vec::new(), [0; 3], Vec::new());
    for block in fenced_blocks(name, text) {
        if !is_command_block(&block) {
            continue;
        }
        match fate(&block) {
            Err(e) => problems.push(format!("{}: {e}", block.at)),
            Ok(Fate::Covered) => counts[1] += 1,
            Ok(Fate::NotRun) => counts[2] += 1,
            Ok(Fate::Run) => {
                counts[0] += 1;
                stage.exports.clear();
                for command in commands(&block) {
                    if let Err(e) = stage.run(&command) {
                        let why = stage.explain(&command);
                        problems.push(format!("{}: `{command}`: {e}{why}", block.at));
                        break;
                    }
                    ran.push(stage.substitute(&command));
                }
            }
        }
    }
    (problems, counts, ran)
}

/// The files the documented commands take as given, in the folder they run in: region files,
/// the standalone reflector's public keys (its block is run on the same data folder), the
/// collector's carry-out key and a queue carried out to it.
fn prepare_files(stage: &mut Stage) {
    let cwd = stage.cwd.clone();
    std::fs::write(
        cwd.join("ip2asn-combined.tsv"),
        "127.0.0.0\t127.255.255.255\t3320\tDE\tDTAG\n",
    )
    .expect("writing the ip2asn file");
    let lo = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0));
    MmdbWriter::new("GeoLite2-Country")
        .insert((lo, 8), country_record("DE"))
        .write(&cwd.join("GeoLite2-Country.mmdb"))
        .expect("writing the country database");
    MmdbWriter::new("GeoLite2-ASN")
        .insert((lo, 8), asn_record(3320, "DTAG"))
        .write(&cwd.join("GeoLite2-ASN.mmdb"))
        .expect("writing the ASN database");
    let data = stage.root.join("var/lib/callwatch-reflector");
    start_reflector_binary(&stage.logs, &data, &[]).stop();
    for f in ["reflector.pub", "reflector-attest.pub"] {
        std::fs::copy(data.join(f), cwd.join(f)).expect("copying the reflector's keys");
    }
}

/// After the collector is up: its carry-out key, and `carried.cwq`, a queue an agent exported
/// for it.
fn prepare_carried(stage: &mut Stage) {
    let c = stage.collector.as_ref().expect("the collector");
    std::fs::copy(
        c.data.join("collector.seal.pub"),
        stage.cwd.join("collector.seal.pub"),
    )
    .expect("copying the carry-out key");
    let dir = stage.dir.join("carrier");
    std::fs::create_dir_all(&dir).expect("the carrier's folder");
    let mut cfg = ConfigFile::new(c.quic.clone(), c.pin.clone(), Some(c.quic.clone()));
    cfg.collector_seal_key = Some(c.carry_key.clone());
    cfg.key_file = dir.join("agent.key");
    cfg.queue_dir = dir.join("queue");
    cfg.state_file = dir.join("state.json");
    let key = callwatch_agent::identity::create_key(&cfg.key_file, false).expect("a key");
    let config = dir.join("agent.toml");
    std::fs::write(&config, cfg.to_toml()).expect("writing the carrier's config");
    {
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let started = chrono::Utc::now() - chrono::Duration::hours(3);
        let report =
            callwatch_tests::seed::synthetic_report(&mut rng, 1, Platform::Generic, started, false);
        let q = Queue::open(&cfg.queue_dir).expect("the carrier's queue");
        q.push(&SignedReport::sign(&report, &key).expect("signing"))
            .expect("queueing");
    }
    let out = Command::new(callwatch_tests::built_binary("callwatch-agent"))
        .args(["export-queue", "--config"])
        .arg(&config)
        .arg(stage.cwd.join("carried.cwq"))
        .output()
        .expect("running export-queue");
    assert!(
        out.status.success(),
        "export-queue: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_documented_command_runs_or_names_its_test() {
    let docs: Vec<(String, String)> = documents()
        .into_iter()
        .map(|p| {
            let name = p
                .strip_prefix(workspace())
                .expect("inside the workspace")
                .display()
                .to_string();
            (name, std::fs::read_to_string(&p).expect("readable"))
        })
        .collect();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut stage = Stage::new(dir.path());
    // Timed from here: building the binaries (Stage::new) is not the documentation's doing.
    let started = Instant::now();
    prepare_files(&mut stage);

    // The collector: the one documented `serve` block that runs.
    let serves: Vec<String> = docs
        .iter()
        .flat_map(|(name, text)| fenced_blocks(name, text))
        .filter(|b| is_command_block(b) && fate(b) == Ok(Fate::Run))
        .flat_map(|b| commands(&b))
        .filter(|c| program_words(c).starts_with(&["callwatch-collector", "serve"]))
        .collect();
    assert_eq!(serves.len(), 1, "one runnable serve command: {serves:?}");
    stage.start_collector(&serves[0]);
    prepare_carried(&mut stage);

    let (mut problems, mut summary, mut not_run) = (Vec::new(), Vec::new(), 0);
    for (name, text) in &docs {
        let (p, [run, covered, skipped], ran) = check_document(name, text, &mut stage);
        problems.extend(p);
        not_run += skipped;
        summary.push(format!(
            "{name}: {} command blocks: {run} run, {covered} covered by a test, {skipped} not run",
            run + covered + skipped
        ));
        for c in ran {
            summary.push(format!("    ran: {c}"));
        }
    }
    if let Err(e) = stage.stop_collector() {
        problems.push(e);
    }
    eprintln!(
        "{}\n(in {:.1} s)",
        summary.join("\n"),
        started.elapsed().as_secs_f64()
    );
    if not_run > NOT_RUN_MAX {
        problems.push(format!(
            "{not_run} blocks say not-run, at most {NOT_RUN_MAX} may: run them or name their test"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The documented flow did what it says: the volunteer's `run --once` uploaded a report per
    // platform (generic and whatsapp, `init`'s substitution above), at the collector's own
    // reflector (its ports learned from the collector), which the researcher's page and the
    // operator's export hold (and `verify` checked): the public page as parsed reports without a
    // signature, the export as signed bodies (JSON strings).
    for (file, quote) in [("page.ndjson", "\""), ("all.ndjson", "\\\"")] {
        let text = std::fs::read_to_string(stage.cwd.join(file)).unwrap_or_default();
        assert_eq!(text.lines().count(), 2, "{file}: {text}");
        assert_eq!(
            file == "all.ndjson",
            text.contains("\"signature\""),
            "{file}: {text}"
        );
        for platform in ["generic", "whatsapp"] {
            let needle = format!("{quote}platform{quote}:{quote}{platform}{quote}");
            assert!(text.contains(&needle), "{platform} in {file}: {text}");
        }
    }
}

#[test]
fn a_renamed_flag_an_unmarked_block_and_a_wrong_test_name_fail() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut stage = Stage::new(dir.path());
    let check = |stage: &mut Stage, md: &str| check_document("SYNTHETIC.md", md, stage);

    // A block as it should be: it runs.
    let (p, counts, _) = check(
        &mut stage,
        "text\n\n```sh\ncallwatch-agent --version\n```\n",
    );
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(counts, [1, 0, 0]);
    // A flag the program does not have: exit 64, named with the block's line.
    let md = "# t\n\n```sh\ncallwatch-collector verify --no-such-flag all.ndjson\n```\n";
    let (p, _, _) = check(&mut stage, md);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("SYNTHETIC.md:3: "), "{p:?}");
    assert!(p[0].contains("--no-such-flag"), "{p:?}");
    // The same in an untagged block, continued over two lines.
    let md = "```\ncallwatch-agent init --config a.toml \\\n    --colector x:1 --pin 00\n```\n";
    let (p, _, _) = check(&mut stage, md);
    assert_eq!(p.len(), 1, "{p:?}");
    // A command this test cannot run, without a marker: refused, not run.
    let (p, _, _) = check(&mut stage, "```bash\nsudo true\n```\n");
    assert!(p.len() == 1 && p[0].contains("covered-by"), "{p:?}");
    // Markers: a real test covers; a missing file, function or non-test does not.
    let real = "<!-- covered-by: tests/tests/doc_commands.rs::every_documented_command_runs_or_names_its_test -->";
    let (p, counts, _) = check(&mut stage, &format!("{real}\n```sh\nsudo true\n```\n"));
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(counts, [0, 1, 0]);
    for bad in [
        "<!-- covered-by: tests/tests/doc_commands.rs::no_such_test -->",
        "<!-- covered-by: tests/tests/nowhere.rs::every_documented_command_runs_or_names_its_test -->",
        "<!-- covered-by: tests/tests/doc_commands.rs::workspace -->",
        "<!-- covered-by: -->",
        "<!-- not-run: later -->",
    ] {
        let (p, _, _) = check(&mut stage, &format!("{bad}\n```sh\nsudo true\n```\n"));
        assert_eq!(p.len(), 1, "{bad}: {p:?}");
    }
    // A marker counts only on the line right before the fence.
    let (p, _, _) = check(&mut stage, &format!("{real}\n\n```sh\nsudo true\n```\n"));
    assert_eq!(p.len(), 1, "{p:?}");
    // Not commands: diagrams, other languages, a console block's output lines.
    let md = "```\n  agents ──► collector\n```\n```toml\nkind = \"sled\"\n```\n\
              ```console\n$ callwatch-agent --version\ncallwatch-agent 0.1.0\n```\n";
    let (p, counts, ran) = check(&mut stage, md);
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(counts, [1, 0, 0]);
    assert_eq!(ran, ["callwatch-agent --version"]);
    // A placeholder with no stand-in (no collector here) fails instead of being run.
    let md = "```sh\ncallwatch-agent test --reflector collector.example.org:3479\n```\n";
    let (p, _, _) = check(&mut stage, md);
    assert!(p.len() == 1 && p[0].contains("stand-in"), "{p:?}");
}

#[test]
fn the_substitutions_are_literal() {
    assert_eq!(
        any_to_loopback("--listen 0.0.0.0:4433 --reflector 0.0.0.0:599 x"),
        "--listen 127.0.0.1:0 --reflector 127.0.0.1:0 x"
    );
    let block = fenced_blocks(
        "X.md",
        "```\nA=1 B=2 \\\n  callwatch-collector migrate --from d # note\n# alone\n\n```",
    )
    .remove(0);
    assert!(is_command_block(&block));
    assert_eq!(
        commands(&block),
        ["A=1 B=2 callwatch-collector migrate --from d # note"]
    );
    assert_eq!(
        program_words(&commands(&block)[0])[..2],
        ["callwatch-collector", "migrate"]
    );
}
