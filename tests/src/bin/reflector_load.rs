//! callwatch-reflector-load: how many concurrent 50 packets/s sessions the reflector serves on
//! one core, side by side with `irtt server` under the same load in the same run. Bounded,
//! loopback only; every child process is killed when it exits.
//!
//! Layout: the server under test (the real `callwatch-collector serve` binary, or
//! `irtt server`) is pinned to CPU 0; the load (this process, or the `irtt client` processes it
//! starts) to CPU 1. For each session count N:
//!
//! - callwatch: N UDP sockets, spread over source addresses 127.0.0.2.. (100 per address), each
//!   opens a session (`Open` → `Accept` with a cookie) and then sends a 172-byte probe every
//!   20 ms for D seconds; one 1 ms timer sends the probes of one of 20 groups per tick, so the
//!   sessions' send times are spread over the 20 ms period as independent agents' would be.
//!   After a grace second each session sends `Close` and reads the reflector's own count of
//!   what it received (`CloseAck`), which splits the loss into upstream and downstream.
//! - irtt: N `irtt client -i 20ms -d Ds -l 172 --fill=rand` processes, each with JSON output to
//!   a file; their `packets_sent`, `server_packets_received`, `packets_received` and per-packet
//!   RTTs are summed.
//!
//! With the hidden `--driver batched,single` each of the reflector's drivers runs in a collector
//! of its own (both pinned to the server core), one after the other at every session count, and
//! a last table gives each driver's figures as ratios to the first's.
//!
//! Server CPU is the server process's utime+stime (/proc/PID/stat) over the load window;
//! generator CPU is this process's own (callwatch) or its reaped children's (irtt clients,
//! handshakes and process start-up included), over the same window.

use anyhow::{bail, Context, Result};
use callwatch_proto::framing::neutral_session_id;
use callwatch_proto::probe::{Close, Cookie, Open, Packet, Probe};
use callwatch_reflector::{Driver, Limits};
use callwatch_tests::process::{start_collector, RunningCollector};
use clap::Parser;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// Probe interval: 50 packets/s.
const INTERVAL_MS: u16 = 20;
/// Probe size on the wire (UDP payload), the agent's generic voice size.
const SIZE: u16 = 172;
/// Send groups spread over one interval (one per 1 ms timer tick).
const GROUPS: usize = INTERVAL_MS as usize;
/// Sessions per loopback source address.
const PER_SOURCE: usize = 100;
/// Replies are awaited this long after the last probe.
const GRACE: Duration = Duration::from_secs(1);
/// Server CPU core and load-generator CPU core.
const SERVER_CPU: &str = "0";
const LOAD_CPU: &str = "1";

#[derive(Parser)]
#[command(
    name = "callwatch-reflector-load",
    about = "Concurrent 50 pps reflector sessions on one core: callwatch's reflector and irtt server side by side (loopback, bounded)."
)]
struct Cli {
    /// Session counts to run, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "50,200,500,1000")]
    sessions: Vec<usize>,
    /// Seconds each run sends for.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100))]
    secs: u64,
    /// Skip the irtt runs.
    #[arg(long)]
    no_irtt: bool,
    /// The reflector's drivers to run, comma separated (`batched`, `single`): one collector
    /// each, all pinned to the server core, run one after another at every session count, and
    /// compared as ratios to the first. Default: the collector's default driver only.
    #[arg(long = "driver", value_delimiter = ',', hide = true)]
    drivers: Vec<Driver>,
}

/// Kills (SIGKILL) and reaps its child processes when dropped: on return, error or panic.
#[derive(Default)]
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Row {
    server: String,
    sessions: usize,
    sent: u64,
    /// What the server said it received (CloseAck / irtt's server_packets_received).
    server_received: u64,
    received: u64,
    server_cpu_pct: f64,
    gen_cpu_pct: f64,
    window_s: f64,
    rtt_us: Vec<u32>,
    note: String,
}

impl Row {
    fn loss_pct(&self) -> f64 {
        pct(self.sent.saturating_sub(self.received), self.sent)
    }

    /// Packets the server received per second of its CPU: comparable even when the load
    /// generator could not offer the same rate to both servers. `None` without the server's
    /// count (no CloseAck came back in time).
    fn per_cpu_s(&self) -> Option<f64> {
        let cpu_s = self.server_cpu_pct / 100.0 * self.window_s;
        (cpu_s > 0.0 && self.server_received > 0).then(|| self.server_received as f64 / cpu_s)
    }

    /// An RTT quantile in ms (the RTTs sorted first).
    fn rtt_ms(&mut self, q: f64) -> Option<f64> {
        self.rtt_us.sort_unstable();
        quantile_ms(&self.rtt_us, q)
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn quantile_ms(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)] as f64 / 1000.0)
}

/// utime+stime and cutime+cstime of a process, in clock ticks (proc(5)).
fn cpu_ticks(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesised command name start with field 3 (state).
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 1..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime (14), stime (15), cutime (16), cstime (17): indices 10..=13 after skipping state.
    if f.len() < 14 {
        bail!("short /proc/{pid}/stat");
    }
    Ok((f[10] + f[11], f[12] + f[13]))
}

/// The kernel's UDP `RcvbufErrors` counter (/proc/net/snmp): datagrams dropped because a
/// receiving socket's buffer was full, on any socket of the machine.
fn udp_rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn taskset_all(cpu: &str, pid: u32) -> Result<()> {
    let out = Command::new("taskset")
        .args(["-a", "-cp", cpu, &pid.to_string()])
        .output()
        .context("running taskset (util-linux)")?;
    if !out.status.success() {
        bail!(
            "taskset -a -cp {cpu} {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn source_addr(i: usize) -> Ipv4Addr {
    let k = 2 + i / PER_SOURCE;
    Ipv4Addr::new(127, 0, (k / 256) as u8, (k % 256) as u8)
}

// ---------------------------------------------------------------------------------------------
// callwatch

struct Session {
    sock: Arc<UdpSocket>,
    id: u64,
    cookie: Cookie,
}

#[derive(Default)]
struct Received {
    replies: u64,
    rtt_us: Vec<u32>,
    close_ack: Option<u32>,
}

async fn open_session(i: usize, reflector: SocketAddr, duration_ms: u32) -> Result<Session> {
    let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V4(source_addr(i)), 0)).await?;
    sock.connect(reflector).await?;
    let id = neutral_session_id(rand::random());
    let open = Packet::Open(Open {
        session: id,
        interval_ms: INTERVAL_MS,
        size: SIZE,
        duration_ms,
    })
    .encode();
    let mut buf = [0u8; 2048];
    for _ in 0..8 {
        sock.send(&open).await?;
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Ok(n)) = tokio::time::timeout_at(until, sock.recv(&mut buf)).await {
            match Packet::decode(&buf[..n]) {
                Ok(Packet::Accept(a)) if a.session == id => {
                    if a.interval_ms > INTERVAL_MS {
                        bail!(
                            "the reflector granted only one probe per {} ms",
                            a.interval_ms
                        );
                    }
                    return Ok(Session {
                        sock: Arc::new(sock),
                        id,
                        cookie: a.cookie,
                    });
                }
                Ok(Packet::Reject(r)) if r.session == id => {
                    bail!("session {i} rejected: {:?}", r.reason)
                }
                _ => {}
            }
        }
    }
    bail!("session {i}: no Accept after 8 Opens")
}

async fn receive(
    sock: Arc<UdpSocket>,
    id: u64,
    total: u32,
    epoch: Instant,
    stop: tokio::time::Instant,
) -> Received {
    let mut out = Received {
        rtt_us: Vec::with_capacity(total as usize),
        ..Received::default()
    };
    let mut seen = vec![false; total as usize];
    let mut buf = [0u8; 2048];
    while let Ok(r) = tokio::time::timeout_at(stop, sock.recv(&mut buf)).await {
        let Ok(n) = r else { continue };
        match Packet::decode(&buf[..n]) {
            Ok(Packet::Reply(rep)) if rep.session == id => {
                if let Some(s) = seen.get_mut(rep.seq as usize) {
                    if !*s {
                        *s = true;
                        out.replies += 1;
                        let now = epoch.elapsed().as_micros() as u64;
                        out.rtt_us
                            .push(now.saturating_sub(rep.sent_us).min(u32::MAX as u64) as u32);
                    }
                }
            }
            Ok(Packet::CloseAck(a)) if a.session == id => {
                out.close_ack.get_or_insert(a.reflector_received);
            }
            _ => {}
        }
    }
    out
}

/// The collector's reflector figures from `/metrics`: sessions held, and datagrams not
/// answered by reason.
async fn reflector_metrics(http: SocketAddr) -> Result<(u64, Vec<(String, u64)>)> {
    let (status, body) = callwatch_tests::http::get(http, "/metrics").await?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    let mut sessions = None;
    let mut dropped = Vec::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        if name == "callwatch_reflector_sessions" {
            sessions = Some(value);
        } else if let Some(reason) = name
            .strip_prefix("callwatch_reflector_dropped_total{reason=\"")
            .and_then(|r| r.strip_suffix("\"}"))
        {
            dropped.push((reason.to_string(), value));
        }
    }
    Ok((
        sessions.context("no callwatch_reflector_sessions in /metrics")?,
        dropped,
    ))
}

/// Waits (bounded) until the reflector holds no session: a closed session's state is kept until
/// its cookie expires (so a repeated Close gets the same count), and a run must not start with
/// the previous run's sessions still taking room in the session table.
async fn wait_for_empty_table(http: SocketAddr) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let (held, _) = reflector_metrics(http).await?;
        if held == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the reflector still holds {held} sessions of the previous run after 180 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn callwatch_run(
    label: String,
    collector_pid: u32,
    reflector: SocketAddr,
    http: SocketAddr,
    n: usize,
    secs: u64,
    tck: f64,
) -> Result<Row> {
    wait_for_empty_table(http).await?;
    let (_, dropped0) = reflector_metrics(http).await?;
    let duration_ms = (secs * 1000) as u32 + 2000;
    // Open in waves of 100 so the Opens do not overrun the reflector's socket buffer.
    let mut sessions = Vec::with_capacity(n);
    for wave in (0..n).collect::<Vec<_>>().chunks(100) {
        let handles: Vec<_> = wave
            .iter()
            .map(|&i| tokio::spawn(open_session(i, reflector, duration_ms)))
            .collect();
        for h in handles {
            sessions.push(h.await??);
        }
    }
    let total = (secs * 1000 / INTERVAL_MS as u64) as u32;
    let epoch = Instant::now();
    let stop = tokio::time::Instant::now()
        + Duration::from_secs(secs)
        + GRACE
        + Duration::from_millis(800);
    let receivers: Vec<_> = sessions
        .iter()
        .map(|s| tokio::spawn(receive(s.sock.clone(), s.id, total, epoch, stop)))
        .collect();
    let groups: Vec<Vec<usize>> = (0..GROUPS)
        .map(|g| (g..n).step_by(GROUPS).collect())
        .collect();

    let server0 = cpu_ticks(collector_pid)?.0;
    let self0 = cpu_ticks(std::process::id())?.0;
    let rcvbuf0 = udp_rcvbuf_errors();
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut buf = Vec::with_capacity(SIZE as usize);
    let (mut sent, mut send_errors) = (0u64, 0u64);
    for t in 0..(total as usize * GROUPS) {
        tick.tick().await;
        let seq = (t / GROUPS) as u32;
        for &i in &groups[t % GROUPS] {
            let s = &sessions[i];
            buf.clear();
            Packet::Probe(Probe {
                session: s.id,
                cookie: s.cookie,
                seq,
                sent_us: epoch.elapsed().as_micros() as u64,
                len: SIZE,
            })
            .encode_into(&mut buf);
            match s.sock.try_send(&buf) {
                Ok(_) => sent += 1,
                Err(_) => send_errors += 1,
            }
        }
    }
    tokio::time::sleep(GRACE).await;
    let window = t0.elapsed().as_secs_f64();
    let server_ticks = cpu_ticks(collector_pid)?.0 - server0;
    let self_ticks = cpu_ticks(std::process::id())?.0 - self0;

    for _ in 0..2 {
        for s in &sessions {
            let close = Packet::Close(Close {
                session: s.id,
                cookie: s.cookie,
                packets_sent: total,
            })
            .encode();
            let _ = s.sock.send(&close).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut received, mut acked, mut server_received) = (0u64, 0usize, 0u64);
    let mut rtt_us = Vec::with_capacity(sent as usize);
    for r in receivers {
        let r = r.await?;
        received += r.replies;
        rtt_us.extend(r.rtt_us);
        if let Some(c) = r.close_ack {
            acked += 1;
            server_received += c as u64;
        }
    }
    let mut note = format!("{} socket-buffer drops; ", udp_rcvbuf_errors() - rcvbuf0);
    let (_, dropped1) = reflector_metrics(http).await?;
    for (reason, after) in dropped1 {
        let before = dropped0
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, v)| *v);
        if after > before {
            note.push_str(&format!(
                "reflector refused {} ({reason}); ",
                after - before
            ));
        }
    }
    if send_errors > 0 {
        note.push_str(&format!("{send_errors} sends failed; "));
    }
    if acked < n {
        note.push_str(&format!("{} sessions without CloseAck; ", n - acked));
    }
    Ok(Row {
        server: label,
        sessions: n,
        sent,
        server_received,
        received,
        server_cpu_pct: 100.0 * server_ticks as f64 / tck / window,
        gen_cpu_pct: 100.0 * self_ticks as f64 / tck / window,
        window_s: window,
        rtt_us,
        note,
    })
}

// ---------------------------------------------------------------------------------------------
// irtt

/// Starts `irtt server` pinned to the server core, output to a file (it logs every
/// connection; a pipe nobody reads would stall it). Returns its address.
fn start_irtt_server(dir: &Path, children: &mut Children) -> Result<(SocketAddr, u32)> {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let log = dir.join("irtt-server.log");
    // No session limit exists in irtt server; -d 0 (no maximum duration), -i 0 (no minimum
    // interval: its default 10 ms with a 5-packet burst drops the bunched sends of starved
    // clients, which would count against it), no HMAC — stated explicitly.
    let child = Command::new("taskset")
        .args(["-c", SERVER_CPU, "irtt", "server", "-b", &addr.to_string()])
        .args(["-d", "0", "-i", "0"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(Stdio::null())
        .spawn()
        .context("starting irtt server (apt-get install irtt)")?;
    // taskset execs irtt: the pid is the server's.
    let pid = child.id();
    children.0.push(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ListenerStart")
    {
        if Instant::now() > deadline {
            bail!("irtt server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((addr, pid))
}

fn irtt_run(
    server: SocketAddr,
    server_pid: u32,
    dir: &Path,
    n: usize,
    secs: u64,
    tck: f64,
) -> Result<Row> {
    let out_dir = dir.join(format!("irtt-{n}"));
    std::fs::create_dir_all(&out_dir)?;
    let (server0, _) = cpu_ticks(server_pid)?;
    let (_, children0) = cpu_ticks(std::process::id())?;
    let rcvbuf0 = udp_rcvbuf_errors();
    let t0 = Instant::now();
    let mut clients = Children::default();
    let mut files: Vec<PathBuf> = Vec::with_capacity(n);
    for i in 0..n {
        let file = out_dir.join(format!("{i}.json"));
        // Inherits this process's CPU (the load core).
        let child = Command::new("irtt")
            .args(["client", "-i", "20ms", "-d", &format!("{secs}s")])
            .args(["--fill=rand", "-l", &SIZE.to_string(), "-Q", "-o"])
            .arg(&file)
            .arg(format!("--local={}", source_addr(i)))
            .arg(server.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting irtt client")?;
        clients.0.push(child);
        files.push(file);
    }
    let started_in = t0.elapsed().as_secs_f64();
    // Bounded: a client still running well after its test is killed.
    let deadline = Instant::now() + Duration::from_secs(secs + 30);
    let mut failed = 0usize;
    for c in &mut clients.0 {
        loop {
            match c.try_wait()? {
                Some(status) => {
                    if !status.success() {
                        failed += 1;
                    }
                    break;
                }
                None if Instant::now() > deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    failed += 1;
                    break;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    let window = t0.elapsed().as_secs_f64();
    let server_ticks = cpu_ticks(server_pid)?.0 - server0;
    let client_ticks = cpu_ticks(std::process::id())?.1 - children0;
    let (mut sent, mut server_received, mut received) = (0u64, 0u64, 0u64);
    let mut rtt_us = Vec::new();
    for f in &files {
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes)?;
        let st = &v["stats"];
        sent += st["packets_sent"].as_u64().unwrap_or(0);
        server_received += st["server_packets_received"].as_u64().unwrap_or(0);
        received += st["packets_received"].as_u64().unwrap_or(0);
        if let Some(rts) = v["round_trips"].as_array() {
            for rt in rts {
                if rt["lost"] == "false" {
                    if let Some(ns) = rt["delay"]["rtt"].as_u64() {
                        rtt_us.push((ns / 1000).min(u32::MAX as u64) as u32);
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    let mut note = format!(
        "{} socket-buffer drops; clients started over {started_in:.1} s; ",
        udp_rcvbuf_errors() - rcvbuf0
    );
    if failed > 0 {
        note.push_str(&format!("{failed} clients failed; "));
    }
    Ok(Row {
        server: "irtt".into(),
        sessions: n,
        sent,
        server_received,
        received,
        server_cpu_pct: 100.0 * server_ticks as f64 / tck / window,
        gen_cpu_pct: 100.0 * client_ticks as f64 / tck / window,
        window_s: window,
        rtt_us,
        note,
    })
}

// ---------------------------------------------------------------------------------------------

fn print_row(r: &mut Row) {
    let mut q = |x: f64| {
        r.rtt_ms(x)
            .map(|v| format!("{v:.3}"))
            .unwrap_or_else(|| "-".into())
    };
    let (p50, p99) = (q(0.5), q(0.99));
    // Without the server's count (no CloseAck in time) the loss cannot be split.
    let (up, down) = if r.server_received == 0 && r.received > 0 {
        ("?".to_string(), "?".to_string())
    } else {
        (
            r.sent.saturating_sub(r.server_received).to_string(),
            r.server_received.saturating_sub(r.received).to_string(),
        )
    };
    let per_cpu_s = r
        .per_cpu_s()
        .map_or_else(|| "-".into(), |v| format!("{:.0}k", v / 1000.0));
    println!(
        "| {:9} | {:8} | {:8} | {:8} | {:7.3} | {:>5}/{:<5} | {:6.1} | {:>7} | {:6.1} | {:6.1} | {:>7} / {:>7} | {}",
        r.server,
        r.sessions,
        r.sent,
        r.received,
        r.loss_pct(),
        up,
        down,
        r.server_cpu_pct,
        per_cpu_s,
        r.gen_cpu_pct,
        r.window_s,
        p50,
        p99,
        r.note.trim_end_matches("; ")
    );
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.sessions.is_empty() || cli.sessions.iter().any(|&n| n == 0 || n > 20_000) {
        bail!("--sessions: counts between 1 and 20000");
    }
    let tck = clock_ticks_per_sec();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let tmp = tempfile::tempdir()?;
    let mut children = Children::default();
    let mut servers: Vec<RunningCollector> = Vec::new();
    // One collector per driver, each with its own data folder, all on the server core.
    let drivers = if cli.drivers.is_empty() {
        vec![None]
    } else {
        cli.drivers.iter().copied().map(Some).collect()
    };
    let mut collectors = Vec::new();
    for driver in drivers {
        let name = driver.map_or_else(|| "callwatch".to_string(), |d| format!("callwatch-{d}"));
        let (logs, data) = (
            tmp.path().join(&name).join("logs"),
            tmp.path().join(&name).join("data"),
        );
        std::fs::create_dir_all(&logs)?;
        std::fs::create_dir_all(&data)?;
        let flag = driver.map(|d| d.to_string());
        // Every session comes from 127.0.0.0/24, one prefix: its cap is lifted to the table's
        // size here (the tool measures capacity, not the per-prefix share).
        let per_prefix = Limits::default().max_sessions.to_string();
        let mut extra: Vec<&str> = vec!["--reflector-sessions-per-prefix", &per_prefix];
        if let Some(d) = flag.as_deref() {
            extra.extend(["--reflector-driver", d]);
        }
        let running = start_collector(&logs, &data, &extra);
        let (pid, reflector, http) = (running.child.id(), running.reflector, running.http);
        // Killed when dropped, with the other children.
        servers.push(running);
        taskset_all(SERVER_CPU, pid)?;
        collectors.push((name, pid, reflector, http));
    }
    let labels: Vec<String> = collectors.iter().map(|c| c.0.clone()).collect();
    let irtt = if cli.no_irtt {
        None
    } else {
        Some(start_irtt_server(tmp.path(), &mut children)?)
    };
    // This process (and so the irtt clients it starts) on the other core.
    taskset_all(LOAD_CPU, std::process::id())?;

    let limits = Limits::default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "reflector limits (reflector/src/core.rs Limits::default): min interval {} ms, \
         max probe {} B, max duration {} s, session table {} (global), burst 25 probes per \
         session; the per-prefix cap ({} by default) lifted to the table's size, as every \
         session comes from 127.0.0.0/24. Sessions spread {PER_SOURCE} per source address from \
         127.0.0.2.",
        limits.min_interval_ms,
        limits.max_size,
        limits.max_duration_ms / 1000,
        limits.max_sessions,
        limits.max_sessions_per_prefix
    );
    println!(
        "load: {INTERVAL_MS} ms interval (50 pps), {SIZE} B probes, {} s per run; server on CPU \
         {SERVER_CPU}, generator on CPU {LOAD_CPU}; {} CPUs; loadavg at start {}",
        cli.secs,
        cpus,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "CPU % is of one core over the window (callwatch: send time + {} s grace; irtt: first \
         client start to last exit). up/down = packets lost before/after the server's count.",
        GRACE.as_secs()
    );
    println!();
    println!(
        "| server    | sessions |     sent | received |  loss % | up  /down   | srv CPU% | pkt/CPU-s | gen CPU% | window s | RTT p50 / p99 ms  | notes"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for &n in &cli.sessions {
        for (name, pid, reflector, http) in &collectors {
            let mut row = rt.block_on(callwatch_run(
                name.clone(),
                *pid,
                *reflector,
                *http,
                n,
                cli.secs,
                tck,
            ))?;
            print_row(&mut row);
            rows.push(row);
            // Let sockets and the previous run's traffic settle.
            std::thread::sleep(Duration::from_secs(1));
        }
        if let Some((addr, pid)) = irtt {
            let mut row = irtt_run(addr, pid, tmp.path(), n, cli.secs, tck)?;
            print_row(&mut row);
            rows.push(row);
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    print_ratios(&mut rows, &labels);
    println!();
    for server in labels.iter().map(String::as_str).chain(["irtt"]) {
        let best = rows
            .iter()
            .filter(|r| r.server == server && r.loss_pct() < 0.1)
            .map(|r| r.sessions)
            .max();
        if rows.iter().any(|r| r.server == server) {
            match best {
                Some(n) => println!("{server}: largest N with < 0.1 % loss: {n}"),
                None => println!("{server}: no N with < 0.1 % loss"),
            }
        }
    }
    println!(
        "loadavg at end {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    drop(children);
    drop(servers);
    Ok(())
}

/// Each driver's row against the first driver's at the same session count, as ratios
/// (other / first): received per server CPU-second, loss, RTT p50 and p99.
fn print_ratios(rows: &mut [Row], labels: &[String]) {
    let Some((first, others)) = labels.split_first() else {
        return;
    };
    if others.is_empty() {
        return;
    }
    println!();
    println!("| sessions | drivers | received per CPU-s | loss % | RTT p50 | RTT p99 |");
    println!("|---|---|---|---|---|---|");
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    let counts: Vec<usize> = rows.iter().map(|r| r.sessions).collect();
    let mut seen = Vec::new();
    for n in counts {
        if seen.contains(&n) {
            continue;
        }
        seen.push(n);
        let Some(base) = rows
            .iter()
            .position(|r| r.sessions == n && r.server == *first)
        else {
            continue;
        };
        let (b_cpu, b_loss) = (rows[base].per_cpu_s(), rows[base].loss_pct());
        let (b50, b99) = (rows[base].rtt_ms(0.5), rows[base].rtt_ms(0.99));
        for other in others {
            let Some(o) = rows
                .iter_mut()
                .find(|r| r.sessions == n && r.server == *other)
            else {
                continue;
            };
            println!(
                "| {n} | {other} / {first} | {} | {:.3} / {:.3} | {} | {} |",
                ratio(o.per_cpu_s(), b_cpu),
                o.loss_pct(),
                b_loss,
                ratio(o.rtt_ms(0.5), b50),
                ratio(o.rtt_ms(0.99), b99),
            );
        }
    }
}
