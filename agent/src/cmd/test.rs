//! `test`: one call test now, its result printed (nothing is uploaded).

use anyhow::Result;
use callwatch_agent::engine::driver::Cancel;
use callwatch_agent::engine::session::Progress;
use callwatch_agent::engine::{run_call_test, TestError, TestSpec};
use callwatch_agent::report_text;
use callwatch_agent::settings::TestSettings;
use callwatch_proto::Platform;
use std::io::IsTerminal;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Platform whose call traffic to imitate: generic (one arm), or whatsapp, telegram,
    /// signal, max (a platform arm framed like its calls on its ports, plus a control arm of
    /// neutral bytes on port 40400, and a verdict comparing them).
    #[arg(long, default_value = "generic")]
    pub platform: Platform,
    /// Also ask this STUN/TURN server of the platform's 10 STUN Binding requests (role
    /// relay), beside the same requests to the reflector host (role relay-reference).
    #[arg(long = "relay", value_name = "HOST:PORT")]
    pub relay: Option<String>,
    // The settings a config holds for every test, as flags.
    #[command(flatten)]
    pub settings: TestSettings,
    /// Print exactly one JSON object (the report) on stdout: the report itself, every figure at
    /// full precision, byte for byte the body `run` would sign (not a rounded view).
    #[arg(long)]
    pub json: bool,
}

/// The test these flags describe (the same builder `run` uses for the config's settings).
pub fn spec(args: &Args) -> Result<TestSpec> {
    args.settings.spec(args.platform, args.relay.as_deref())
}

pub fn run(args: Args) -> Result<ExitCode> {
    super::init_logging(None);
    let spec = spec(&args)?;
    // A live line (packets, loss, RTT) on stderr, only for a person at a terminal; pipes and
    // `--json` get the result alone, on stdout.
    let interactive = !args.json && std::io::stderr().is_terminal();
    // The spec's numbers are checked as the test starts, before any packet leaves.
    let report = match run_call_test(&spec, &Cancel::default(), |p| {
        if let (true, Some(p)) = (interactive, p.first()) {
            eprint!("\r{}   ", progress_line(p));
            let _ = std::io::Write::flush(&mut std::io::stderr());
        }
    }) {
        Ok(r) => r,
        // The reflector's fault, as `run --once` counts it: the same exit code.
        Err(e @ (TestError::Unreachable(_) | TestError::Session(_))) => {
            if interactive {
                eprintln!();
            }
            eprintln!("callwatch-agent: {e}");
            return Ok(ExitCode::from(super::exit::TEST_FAILED));
        }
        Err(e) => return Err(e.into()),
    };
    if interactive {
        eprintln!();
    }
    if args.json {
        // The report as signed reports carry it (`SignedReport::sign` writes the same JSON):
        // evidence, so never rounded. The text summary is the rounded, human view.
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report_text::summary(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of live progress: a bar of packets sent, replies so far, loss so far, last RTT.
fn progress_line(p: &Progress) -> String {
    const WIDTH: usize = 24;
    let done = (p.sent as usize * WIDTH)
        .checked_div(p.total as usize)
        .unwrap_or(0)
        .min(WIDTH);
    // Only probes whose reply is overdue count: one in flight is not lost (yet).
    let loss = if p.due > 0 {
        format!("{:.1}%", 100.0 * f64::from(p.overdue) / f64::from(p.due))
    } else {
        "-".into()
    };
    format!(
        "[{}{}] {}/{} sent, {} back, loss {}, rtt {}",
        "#".repeat(done),
        " ".repeat(WIDTH - done),
        p.sent,
        p.total,
        p.received,
        loss,
        p.last_rtt_ms
            .map(|r| format!("{r:.2} ms"))
            .unwrap_or_else(|| "-".into())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_counts_only_overdue_probes_as_lost() {
        // 50 sent, 40 back: 10 in flight, of which 2 overdue among the 30 due.
        let p = Progress {
            sent: 50,
            total: 750,
            received: 40,
            last_rtt_ms: Some(12.345),
            due: 30,
            overdue: 2,
        };
        let line = progress_line(&p);
        assert!(line.contains("loss 6.7%"), "{line}");
        assert!(
            line.contains("50/750 sent, 40 back") && line.contains("rtt 12.35 ms"),
            "{line}"
        );
        let start = Progress {
            sent: 10,
            total: 750,
            ..Progress::default()
        };
        assert!(progress_line(&start).contains("loss -"), "nothing due yet");
    }
}
