//! callwatch-agent-cost: what one call test costs the volunteer's machine, side by side with
//! `irtt client` doing the same test, and what the agent daemon costs between tests. Loopback
//! only, bounded; every child process is waited for or killed.
//!
//! - **A test**: `callwatch-agent test --platform generic --duration D --interval-ms 20 --size
//!   172 --json` against a standalone `callwatch-reflector`, and `irtt client -i 20ms -d Ds -l
//!   172 --fill=rand` against `irtt server`, alternately, `--runs` times each. Each process's
//!   CPU (user + system) and peak RSS come from `wait4`'s rusage, the whole process from exec to
//!   exit; the timer error from each tool's own output (the agent's `timer` figures, irtt's
//!   `timer_error` statistics: how late each send was against its schedule).
//! - **Idle**: `callwatch-agent run` testing every minute (`--idle-minutes`; 2-s tests, no
//!   spread), sampled from /proc for the interval less 20 s (40 s for one minute) after its
//!   first test and upload, before the second: CPU over the window
//!   (clock ticks: 10 ms resolution), resident memory at its end (VmRSS, split into anonymous
//!   memory and file-backed pages of the binary and its libraries).
//!
//! Prints a table per run, the medians and the agent's CPU as a ratio of irtt's.

use anyhow::{bail, Context, Result};
use callwatch_tests::process::{init_agent, start_collector, start_reflector_binary};
use clap::Parser;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "callwatch-agent-cost",
    about = "CPU, memory and timer error of one agent call test beside irtt client's (loopback, bounded), and of the idle agent daemon."
)]
struct Cli {
    /// Runs of each tool, alternating.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: u32,
    /// Test length in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=120))]
    duration: u32,
    /// Skip the idle daemon's measurement (about 2 minutes with `--idle-minutes 1`).
    #[arg(long)]
    no_idle: bool,
    /// The idle daemon's test interval, minutes: it is sampled for all of it but 20 s, so a
    /// longer one includes the wake-ups the daemon makes between tests (one a minute).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=15))]
    idle_minutes: u64,
    /// Skip irtt (then no ratio to it is printed).
    #[arg(long)]
    no_irtt: bool,
    /// Another `callwatch-agent` binary (e.g. an earlier build) to run the same test with,
    /// alternately, for a side-by-side ratio.
    #[arg(long, value_name = "PATH")]
    baseline_agent: Option<std::path::PathBuf>,
}

/// What one finished process cost.
#[derive(Clone, Copy, Debug)]
struct Cost {
    cpu_s: f64,
    max_rss_kib: i64,
}

/// Waits for `child` and returns its rusage (the child alone: `wait4` on its pid).
fn wait_cost(child: &mut Child) -> Result<(std::process::ExitStatus, Cost)> {
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    use std::os::unix::process::ExitStatusExt;
    Ok((
        std::process::ExitStatus::from_raw(status),
        Cost {
            cpu_s: secs(usage.ru_utime) + secs(usage.ru_stime),
            max_rss_kib: usage.ru_maxrss,
        },
    ))
}

/// One test's figures.
#[derive(Clone, Copy, Debug)]
struct Run {
    cost: Cost,
    /// Mean and 99th percentile of how late sends were, µs (irtt: its mean and max, it has no
    /// percentile).
    timer_mean_us: f64,
    timer_tail_us: f64,
    late_sends: u64,
    sent: u64,
    received: u64,
}

fn agent_run(agent: &Path, reflector: &str, duration: u32) -> Result<Run> {
    let mut child = Command::new(agent)
        .args(["test", "--platform", "generic", "--reflector", reflector])
        .args(["--duration", &duration.to_string()])
        .args(["--interval-ms", "20", "--size", "172", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting callwatch-agent test")?;
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        std::io::Read::read_to_string(&mut stdout, &mut out)?;
    }
    let (status, cost) = wait_cost(&mut child)?;
    if !status.success() {
        bail!("callwatch-agent test failed: {status}");
    }
    let report: serde_json::Value = serde_json::from_str(&out).context("the agent's JSON")?;
    let s = &report["streams"][0];
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    Ok(Run {
        cost,
        timer_mean_us: num(&s["timer"]["mean_error_us"]),
        timer_tail_us: num(&s["timer"]["p99_error_us"]),
        late_sends: s["timer"]["late_sends"].as_u64().unwrap_or(0),
        sent: s["packets_sent"].as_u64().unwrap_or(0),
        received: s["packets_received"].as_u64().unwrap_or(0),
    })
}

fn irtt_run(server: &str, duration: u32, dir: &Path, n: u32) -> Result<Run> {
    let out = dir.join(format!("irtt-{n}.json"));
    let mut child = Command::new("irtt")
        .args(["client", "-Q", "-i", "20ms", "-l", "172", "--fill=rand"])
        .args(["-d", &format!("{duration}s"), "-o"])
        .arg(&out)
        .arg(server)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting irtt client (apt-get install irtt)")?;
    let (status, cost) = wait_cost(&mut child)?;
    if !status.success() {
        bail!("irtt client failed: {status}");
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    let s = &v["stats"];
    let ns = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN) / 1000.0;
    Ok(Run {
        cost,
        timer_mean_us: ns(&s["timer_error"]["mean"]),
        timer_tail_us: ns(&s["timer_error"]["max"]),
        late_sends: s["timer_misses"].as_u64().unwrap_or(0),
        sent: s["packets_sent"].as_u64().unwrap_or(0),
        received: s["packets_received"].as_u64().unwrap_or(0),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn print_runs(name: &str, runs: &[Run]) {
    for (i, r) in runs.iter().enumerate() {
        println!(
            "| {name} | {} | {:.3} | {:.1} | {:.1} / {:.1} | {} | {} / {} |",
            i + 1,
            r.cost.cpu_s,
            r.cost.max_rss_kib as f64 / 1024.0,
            r.timer_mean_us,
            r.timer_tail_us,
            r.late_sends,
            r.received,
            r.sent
        );
    }
}

/// utime + stime of `pid` in seconds (proc(5); clock ticks of 1/100 s on Linux).
fn proc_cpu_s(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the command: state (0), …, utime (11), stime (12).
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((tick(11) + tick(12)) / hz.max(1.0))
}

fn proc_status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// How much of the interval between the daemon's first and second test is not sampled (the
/// first test's upload settling, and a margin before the second).
const IDLE_MARGIN: Duration = Duration::from_secs(20);

fn idle(root: &Path, minutes: u64) -> Result<()> {
    let logs = root.join("collector-logs");
    std::fs::create_dir_all(&logs)?;
    let collector = start_collector(&logs, &root.join("collector"), &[]);
    let config = root.join("agent.toml");
    let interval = format!("interval = \"{minutes}m\"");
    init_agent(
        &config,
        &collector.quic.to_string(),
        &hex::encode(collector.pin),
        &collector.reflector.to_string(),
        &[
            ("interval = \"15m\"", interval.as_str()),
            ("spread = 0.5", "spread = 0.0"),
            ("duration_secs = 15", "duration_secs = 2"),
        ],
        "",
    );
    let state = root.join("state.json");
    let mut agent = Command::new(callwatch_tests::built_binary("callwatch-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting callwatch-agent run")?;
    let pid = agent.id();
    // Its first test (within the interval) and upload, as the state file records them.
    let first_within = Duration::from_secs(minutes * 60 + 30);
    let started = Instant::now();
    let tests_at_start = loop {
        let text = std::fs::read_to_string(&state).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if v["tests_total"].as_u64().unwrap_or(0) >= 1 && v["last_upload_ok"].is_string() {
            break v["tests_total"].as_u64().unwrap_or(0);
        }
        if started.elapsed() > first_within {
            let _ = agent.kill();
            let _ = agent.wait();
            bail!(
                "the daemon did not test and upload within {} s",
                first_within.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Settle: the upload's connection closes.
    std::thread::sleep(Duration::from_secs(2));
    let (cpu0, t0) = (proc_cpu_s(pid)?, Instant::now());
    let rss0 = proc_status_kib(pid, "VmRSS:")?;
    std::thread::sleep(Duration::from_secs(minutes * 60) - IDLE_MARGIN);
    let (cpu1, t1) = (proc_cpu_s(pid)?, Instant::now());
    let rss = proc_status_kib(pid, "VmRSS:")?;
    let anon = proc_status_kib(pid, "RssAnon:")?;
    let file = proc_status_kib(pid, "RssFile:")?;
    let hwm = proc_status_kib(pid, "VmHWM:")?;
    let text = std::fs::read_to_string(&state).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let tested_within = v["tests_total"].as_u64().unwrap_or(0) != tests_at_start;
    let _ = agent.kill();
    let _ = agent.wait();
    collector.stop();
    let window = (t1 - t0).as_secs_f64();
    println!();
    println!(
        "idle daemon ({}): CPU {:.3} s over {:.0} s = {:.3} % of a core; RSS {:.1} MiB ({:.1} MiB anonymous, {:.1} MiB file-backed: the binary's and libraries' pages; {:.1} MiB at the window's start), peak {:.1} MiB",
        if tested_within {
            "a test ran within the window: not idle, rerun"
        } else {
            "between its first and second test"
        },
        cpu1 - cpu0,
        window,
        100.0 * (cpu1 - cpu0) / window,
        rss as f64 / 1024.0,
        anon as f64 / 1024.0,
        file as f64 / 1024.0,
        rss0 as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = tempfile::tempdir()?;
    let logs = root.path().join("reflector-logs");
    std::fs::create_dir_all(&logs)?;
    let reflector = start_reflector_binary(&logs, &root.path().join("reflector"), &[]);
    let reflector_addr = reflector.addr.to_string();
    let mut irtt_server = None;
    let irtt_addr = "127.0.0.1:29112";
    if !cli.no_irtt {
        let child = Command::new("irtt")
            .args(["server", "-b", irtt_addr, "-d", "0", "-i", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting irtt server (apt-get install irtt)")?;
        irtt_server = Some(child);
        // irtt's handshake retries until the server is up; give it a moment anyway.
        std::thread::sleep(Duration::from_millis(300));
    }
    let agent_bin = callwatch_tests::built_binary("callwatch-agent");
    let (mut agent, mut irtt, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..cli.runs {
        eprintln!("run {}/{}", n + 1, cli.runs);
        agent.push(agent_run(&agent_bin, &reflector_addr, cli.duration)?);
        if let Some(b) = &cli.baseline_agent {
            baseline.push(agent_run(b, &reflector_addr, cli.duration)?);
        }
        if !cli.no_irtt {
            irtt.push(irtt_run(irtt_addr, cli.duration, root.path(), n)?);
        }
    }
    if let Some(mut s) = irtt_server {
        let _ = s.kill();
        let _ = s.wait();
    }
    reflector.stop();
    println!(
        "{}-s test, 50 packets/s, 172 bytes, loopback; CPU = user + system of the whole process",
        cli.duration
    );
    println!();
    println!(
        "| tool | run | CPU s | peak RSS MiB | timer error mean / tail µs | late sends | received / sent |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    print_runs("callwatch-agent test", &agent);
    print_runs("baseline agent", &baseline);
    print_runs("irtt client", &irtt);
    let med = |runs: &[Run], f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    println!();
    let a_cpu = med(&agent, |r| r.cost.cpu_s);
    println!(
        "median: agent CPU {a_cpu:.3} s, peak RSS {:.1} MiB, timer error mean {:.1} µs (p99 {:.1} µs)",
        med(&agent, |r| r.cost.max_rss_kib as f64) / 1024.0,
        med(&agent, |r| r.timer_mean_us),
        med(&agent, |r| r.timer_tail_us),
    );
    if !irtt.is_empty() {
        let i_cpu = med(&irtt, |r| r.cost.cpu_s);
        println!(
            "median: irtt  CPU {i_cpu:.3} s, peak RSS {:.1} MiB, timer error mean {:.1} µs (max {:.1} µs)",
            med(&irtt, |r| r.cost.max_rss_kib as f64) / 1024.0,
            med(&irtt, |r| r.timer_mean_us),
            med(&irtt, |r| r.timer_tail_us),
        );
        println!("agent CPU / irtt CPU (medians): {:.2}", a_cpu / i_cpu);
    }
    if !baseline.is_empty() {
        let b_cpu = med(&baseline, |r| r.cost.cpu_s);
        println!(
            "median: baseline agent CPU {b_cpu:.3} s, timer error mean {:.1} µs (p99 {:.1} µs)",
            med(&baseline, |r| r.timer_mean_us),
            med(&baseline, |r| r.timer_tail_us),
        );
        println!(
            "agent CPU / baseline agent CPU (medians): {:.2}",
            a_cpu / b_cpu
        );
    }
    if !cli.no_idle {
        idle(root.path(), cli.idle_minutes)?;
    }
    Ok(())
}
