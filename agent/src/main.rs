//! `callwatch-agent`: the volunteer's program. This file is the command line and nothing else:
//! each command lives in its own module under `cmd/`.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "callwatch-agent",
    version = callwatch_agent::VERSION,
    about = "Measures what voice calls sound like from your network and reports it, signed, to a callwatch collector.",
    after_help = "Quick start:\n  callwatch-agent init --config ~/.config/callwatch/agent.toml \\\n      --collector collector.example.org:4433 --pin <64 hex digits>\n  callwatch-agent test --reflector collector.example.org:40401 --platform whatsapp\n  callwatch-agent run --config ~/.config/callwatch/agent.toml --once\n\n\
Exit codes: 0 done; 1 an error (said on stderr); 2 collector unreachable or refusing (reports\n\
  stay queued); 3 a test could not run (reflector unreachable or refusing); 4 wrong pin, or\n\
  the connection is being intercepted (reports stay queued); 64 a wrong command line."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a config file and a new signing key (owner-only) next to it, after you agree to
    /// the notice below (on a terminal, or with --accept-risks).
    #[command(after_help = cmd::init::NOTICE)]
    Init(cmd::init::Args),
    /// Run one call test now and print the result (nothing is uploaded).
    ///
    /// Sends an isochronous stream shaped like a voice call (a 172-byte packet every 20 ms by
    /// default) to the reflector, which echoes each one, and reports loss per direction, round
    /// trip time, jitter and an E-model MOS.
    Test(cmd::test::Args),
    /// Run tests on the configured schedule, sign and queue the reports, and upload them.
    ///
    /// Without --once this is the daemon: one test at a time, the configured platforms in turn,
    /// at `interval` with random `spread`, never in `quiet_hours`, never beyond the data
    /// budget (a skipped test and why show in `status`). Reports wait in the queue until the
    /// collector acknowledges them; failed uploads are retried with exponential backoff.
    /// SIGTERM/SIGINT stop it within a few seconds (exit 0).
    ///
    /// Exit codes with --once: 0 all uploaded; 2 the collector could not be reached or refused
    /// the upload (reports stay queued for next time); 4 the collector's certificate is not the
    /// pinned one (wrong pin, or the connection is being intercepted; reports stay queued); 3 a
    /// test could not run (reflector unreachable) — what was queued was still uploaded; 1 the
    /// queue could not be opened or a report could not be queued (a full disk is logged as "cannot open the queue: no space
    /// left on device" or "cannot queue the report: no space left on device") or any other
    /// error.
    Run(cmd::run::Args),
    /// Write the queued reports to FILE, sealed to the collector, for carrying past a block.
    ///
    /// FILE (owner-only) can be opened only with the collector's carry-out key and says nothing
    /// in the clear; the collector's operator imports it with `callwatch-collector import`.
    /// The reports stay queued: they leave only when the collector acknowledges them, at the
    /// next upload that gets through (imported ones are then acknowledged as duplicates), so
    /// nothing is lost and nothing is stored twice. The key is the config's collector_seal_key
    /// or the one the collector sent with an upload. Stop a running agent first (it holds the
    /// queue).
    ///
    /// Example:
    ///   callwatch-agent export-queue --config ~/.config/callwatch/agent.toml /media/usb/carried.cwq
    #[command(verbatim_doc_comment, name = "export-queue")]
    ExportQueue(cmd::export_queue::Args),
    /// Show what the agent has been doing: recent tests, queue, uploads (and over which
    /// transport, quic or tcp), data used.
    Status(cmd::status::Args),
    /// Check a config file as `run` reads it, and nothing else (no key, queue or state file is
    /// opened): exit 0 with `PATH: ok`, or 1 with every problem, each naming its key.
    ///
    /// The Debian package's postinst runs it with the new binary before restarting the agent
    /// on an upgrade.
    #[command(name = "check-config")]
    CheckConfig(cmd::check_config::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// Example:
    ///   callwatch-agent completions bash > ~/.local/share/bash-completion/completions/callwatch-agent
    #[command(verbatim_doc_comment)]
    Completions {
        /// The shell to complete in.
        #[arg(value_name = "SHELL")]
        shell: callwatch_reflector::term::Shell,
    },
    /// Write the man pages (callwatch-agent.1 and one per command) into DIR.
    ///
    /// Example:
    ///   callwatch-agent manpages ~/.local/share/man/man1 && man callwatch-agent
    #[command(verbatim_doc_comment)]
    Manpages {
        /// The folder to write the pages into (made if missing).
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli: Cli = callwatch_reflector::term::parse_or_exit();
    let result = match cli.command {
        Command::Init(a) => cmd::init::run(a),
        Command::Test(a) => cmd::test::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::ExportQueue(a) => cmd::export_queue::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::CheckConfig(a) => cmd::check_config::run(a),
        Command::Completions { shell } => {
            callwatch_reflector::term::print_completions::<Cli>(shell);
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpages { dir } => callwatch_reflector::term::write_manpages::<Cli>(&dir)
            .map(|pages| {
                for page in pages {
                    println!("wrote {}", page.display());
                }
                ExitCode::SUCCESS
            })
            .map_err(|e| anyhow::anyhow!("writing man pages into {}: {e}", dir.display())),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("callwatch-agent: {e:#}");
            ExitCode::from(cmd::exit::ERROR)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callwatch_agent::config::{Config, ConfigFile};
    use callwatch_proto::Platform;

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from([&["callwatch-agent"], args].concat())
            .unwrap()
            .command
    }

    /// The `test` command's flags and the config's keys are the same settings, built into a
    /// spec by the same code: the same values make the same test.
    #[test]
    fn cli_and_config_build_the_same_spec() {
        let key = "cd".repeat(32);
        let Command::Test(args) = parse(&[
            "test",
            "--reflector",
            "127.0.0.1:40401",
            "--platform",
            "whatsapp",
            "--platform-port",
            "3478",
            "--control-port",
            "40400",
            "--video",
            "--relay",
            "127.0.0.1:3478",
            "--relay-reference",
            "127.0.0.1:3479",
            "--duration",
            "12",
            "--interval-ms",
            "30",
            "--size",
            "300",
            "--bind",
            "127.0.0.1",
            "--reflector-key",
            &key,
        ]) else {
            panic!("not the test command");
        };
        let file = ConfigFile {
            platforms: vec![Platform::Whatsapp],
            platform_port: Some(3478),
            control_port: Some(40400),
            video: true,
            relay_servers: [(Platform::Whatsapp, vec!["127.0.0.1:3478".into()])].into(),
            relay_reference: Some("127.0.0.1:3479".into()),
            duration_secs: 12,
            interval_ms: 30,
            size: Some(300),
            bind: Some("127.0.0.1".parse().unwrap()),
            reflector_key: Some(key.clone()),
            ..ConfigFile::new(
                "127.0.0.1:4433".into(),
                "ab".repeat(32),
                Some("127.0.0.1:40401".into()),
            )
        };
        let cfg = Config::from_file(file).unwrap();
        assert_eq!(args.settings, cfg.test);
        assert_eq!(
            cmd::test::spec(&args).unwrap(),
            cfg.spec(Platform::Whatsapp).unwrap()
        );

        // Nothing given: the config's defaults are the flags' defaults.
        let Command::Test(args) = parse(&["test", "--reflector", "127.0.0.1:40401"]) else {
            panic!("not the test command");
        };
        let cfg = Config::new(
            "127.0.0.1:4433".into(),
            [0xab; 32],
            "127.0.0.1:40401".into(),
        );
        assert_eq!(args.settings, cfg.test);
        assert_eq!(
            cmd::test::spec(&args).unwrap(),
            cfg.spec(Platform::Generic).unwrap()
        );
    }

    #[test]
    fn relay_reference_needs_relay() {
        let e = Cli::try_parse_from([
            "callwatch-agent",
            "test",
            "--reflector",
            "127.0.0.1:1",
            "--relay-reference",
            "127.0.0.1:2",
        ]);
        assert!(e.is_err());
    }
}
