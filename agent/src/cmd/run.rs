//! `run`: the scheduled daemon, or with `--once` one cycle of every configured test and an
//! upload.

use anyhow::Result;
use callwatch_agent::backoff::{Backoff, DEFAULT_BASE};
use callwatch_agent::config::Config;
use callwatch_agent::daemon::{run_daemon, DaemonOptions};
use callwatch_agent::engine::driver::Cancel;
use callwatch_agent::queue::{is_disk_full, Queue};
use callwatch_agent::state::SharedState;
use callwatch_agent::upload::UploadError;
use callwatch_agent::{identity, runner};
use callwatch_reflector::term::Stop;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The agent's config file (written by `init`).
    #[arg(long, value_name = "PATH")]
    config: PathBuf,
    /// Run every configured platform's test once (budget permitting), upload, and exit.
    #[arg(long)]
    once: bool,
    /// Test/demo override: seconds between tests instead of the config's `interval`;
    /// unlike `interval` it may be below one minute.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    every: Option<u64>,
    /// Longest wait between upload retries, in seconds (default 900; the first waits at
    /// most 5 s, each next one up to twice as long, randomised).
    #[arg(long = "retry-max", value_name = "SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u64).range(1..))]
    retry_max: u64,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let cfg = Config::load(&args.config)?;
    super::init_logging(Some(cfg.log_level));
    // A key past its age is replaced before anything is signed with it (the daemon checks
    // again before each test).
    if cfg.rotate_key_every.is_some() {
        identity::rotate_as_configured(&cfg, &SharedState::load(&cfg.state_path()))?;
    }
    let key = identity::load_key(&cfg.key_file)?;
    let queue = match Queue::open(&cfg.queue_dir) {
        Ok(q) => q,
        Err(e) if is_disk_full(&e) => {
            // sled writes when it opens; a full disk stops it before any test runs.
            tracing::error!(
                "cannot open the queue: no space left on device ({e:#}); nothing was tested, \
                 reports queued before are kept"
            );
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e),
    };
    let rt = tokio::runtime::Runtime::new()?;
    let code = rt.block_on(async {
        // Before anything runs or is announced: a signal with no handler yet would kill the
        // agent mid-write instead of stopping it cleanly.
        let stop = Stop::install();
        if !args.once {
            let options = DaemonOptions {
                every: args.every.map(Duration::from_secs),
                backoff: Backoff::new(DEFAULT_BASE, Duration::from_secs(args.retry_max)),
            };
            let stop = async {
                match stop {
                    Ok(stop) => tracing::info!("{} received", stop.wait().await),
                    Err(e) => {
                        tracing::warn!("cannot watch for signals: {e:#}");
                        std::future::pending::<()>().await
                    }
                }
            };
            run_daemon(Arc::new(cfg), key, Arc::new(queue), options, stop).await?;
            return Ok::<_, anyhow::Error>(ExitCode::SUCCESS);
        }
        let cancel = Cancel::default();
        let stop = stop?.wait();
        tokio::pin!(stop);
        let outcome = tokio::select! {
            o = runner::run_cycle_cancellable(&cfg, &key, &queue, &cancel) => o?,
            s = &mut stop => {
                // Stop a running test at once; everything queued is already on disk.
                cancel.cancel();
                tracing::info!("{s}: stopping");
                return Ok(ExitCode::SUCCESS);
            }
        };
        let code = match &outcome.upload {
            _ if !outcome.queue_errors.is_empty() => super::exit::ERROR,
            Some(Err(UploadError::WrongPin(_))) => super::exit::WRONG_PIN,
            Some(Err(_)) => super::exit::COLLECTOR_UNREACHABLE,
            _ if !outcome.test_errors.is_empty() => super::exit::TEST_FAILED,
            _ => super::exit::OK,
        };
        Ok(ExitCode::from(code))
    });
    // A test thread sees the cancel within milliseconds; don't wait on it for long.
    rt.shutdown_timeout(Duration::from_secs(2));
    code
}
