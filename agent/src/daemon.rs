//! `callwatch-agent run`: the daemon a volunteer leaves running.
//!
//! Two loops share the queue and the state file:
//!
//! - the **test loop** asks the [`Scheduler`] what is due, prices it against the data budget,
//!   runs it (one at a time, platforms in turn) or skips it with a reason, and sleeps until the
//!   next due time (waking at least every [`MAX_NAP`] to notice a suspend or a clock step);
//! - the **uploader** empties the queue in batches after each test and, after a failure, on a
//!   timer with exponential backoff and full jitter ([`Backoff`]).
//!
//! The schedule and the data used are saved in the state file after every change, so a restart
//! resumes them. A stop signal cancels a running test (its packets are simply abandoned; the
//! queue holds only whole, signed reports) and an upload in flight (a report leaves the queue
//! only once acknowledged), and the daemon returns.

use crate::backoff::Backoff;
use crate::config::Config;
use crate::engine::driver::Cancel;
use crate::identity;
use crate::memory::IdleMemory;
use crate::queue::Queue;
use crate::runner::{
    learn_reflector, price, refuse_over_budget, run_one_test, upload_and_record, TestOutcome,
};
use crate::schedule::Scheduler;
use crate::state::SharedState;
use anyhow::Result;
use chrono::Utc;
use ed25519_dalek::SigningKey;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Longest the test loop sleeps without looking at the clock again.
pub const MAX_NAP: Duration = Duration::from_secs(60);

/// How the daemon runs beyond what the config says.
#[derive(Clone, Debug, Default)]
pub struct DaemonOptions {
    /// Test/demo override of the config's `interval` (may be below one minute).
    pub every: Option<Duration>,
    /// Upload retry timing.
    pub backoff: Backoff,
}

/// Runs tests on schedule and uploads their reports until `stop` resolves; then returns
/// `Ok(())` promptly.
pub async fn run_daemon(
    cfg: Arc<Config>,
    key: SigningKey,
    queue: Arc<Queue>,
    options: DaemonOptions,
    stop: impl Future<Output = ()>,
) -> Result<()> {
    // Before anything else maps more (see `memory`).
    let idle = IdleMemory::at_start();
    tracing::debug!(bytes = idle.bytes(), "file pages given back between tests");
    let state = Arc::new(SharedState::load(&cfg.state_path()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let kick = Arc::new(Notify::new());
    // Upload whatever a previous run left queued straight away.
    kick.notify_one();
    let uploader = tokio::spawn(uploader(
        cfg.clone(),
        queue.clone(),
        state.clone(),
        kick.clone(),
        options.backoff.clone(),
        stop_rx.clone(),
        idle.clone(),
    ));
    let cancel = Cancel::default();
    let tests = test_loop(
        TestLoop {
            cfg: &cfg,
            queue: &queue,
            state: &state,
            kick: &kick,
            options: &options,
            cancel: &cancel,
            idle: &idle,
        },
        key,
    );
    tokio::pin!(stop);
    let result = tokio::select! {
        r = tests => r,
        _ = &mut stop => {
            cancel.cancel();
            tracing::info!("stopping");
            Ok(())
        }
    };
    let _ = stop_tx.send(true);
    // The uploader stops at its next await; an upload in flight is dropped (its reports stay
    // queued until acknowledged), so this is quick.
    let _ = tokio::time::timeout(Duration::from_secs(2), uploader).await;
    state.update(|s| s.next_test_at = None);
    result
}

/// What the test loop works with, borrowed from `run_daemon`.
struct TestLoop<'a> {
    cfg: &'a Config,
    queue: &'a Queue,
    state: &'a SharedState,
    /// Wakes the uploader after a test.
    kick: &'a Notify,
    options: &'a DaemonOptions,
    cancel: &'a Cancel,
    idle: &'a IdleMemory,
}

async fn test_loop(ctx: TestLoop<'_>, mut key: SigningKey) -> Result<()> {
    let TestLoop {
        cfg,
        queue,
        state,
        kick,
        options,
        cancel,
        idle,
    } = ctx;
    let mut rng = rand::thread_rng();
    let schedule_config = cfg.schedule_config(options.every);
    let now = Utc::now();
    let mut scheduler = match state.snapshot().scheduler {
        Some(mut s) => {
            s.reconfigure(schedule_config, now, &mut rng);
            s
        }
        None => Scheduler::new(schedule_config, now, &mut rng),
    };
    let save = |scheduler: &Scheduler| {
        state.update(|s| {
            s.next_test_at = Some(scheduler.next_due());
            s.scheduler = Some(scheduler.clone());
            s.refresh_data_used(Utc::now());
        })
    };
    save(&scheduler);
    tracing::info!(next_test_at = %scheduler.next_due().format("%Y-%m-%d %H:%M:%S UTC"), "agent running");
    loop {
        match identity::rotate_as_configured(cfg, state) {
            Ok(Some(new)) => key = new,
            Ok(None) => {}
            Err(e) => tracing::warn!("key rotation failed, keeping the current key: {e:#}"),
        }
        let now = Utc::now();
        let run = match scheduler.peek(now) {
            Some(platform) => match learn_reflector(cfg, state)
                .await
                .map_err(anyhow::Error::from)
                .and_then(|learned| price(cfg, learned.as_ref(), platform))
            {
                Ok((spec, cost)) => {
                    if refuse_over_budget(state, platform, cost, cfg.budget).is_some() {
                        scheduler.skip(now, &mut rng);
                        None
                    } else {
                        let _ = scheduler.poll(now, &mut rng);
                        Some(spec)
                    }
                }
                Err(e) => {
                    tracing::warn!(platform = %platform, "test skipped: {e:#}");
                    state.update(|s| s.last_skip = Some((now, format!("{e:#}"))));
                    scheduler.skip(now, &mut rng);
                    None
                }
            },
            // Not due, or due in quiet hours: poll settles the schedule (defers out of quiet
            // hours, follows the clock back) and hands nothing out.
            None => {
                let _ = scheduler.poll(now, &mut rng);
                None
            }
        };
        save(&scheduler);
        if let Some(spec) = run {
            match run_one_test(cfg, &key, queue, state, spec, cancel).await? {
                TestOutcome::Done(_) => kick.notify_one(),
                TestOutcome::Failed(why) => state
                    .update(|s| s.last_skip = Some((Utc::now(), format!("test failed: {why}")))),
                // Logged already; the daemon goes on (space may be freed before the next test).
                TestOutcome::NotQueued(why) => {
                    state.update(|s| s.last_skip = Some((Utc::now(), why)))
                }
                TestOutcome::Cancelled => return Ok(()),
            }
            save(&scheduler);
            continue;
        }
        let wait = (scheduler.next_due() - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(MAX_NAP);
        // Before every nap (after a test, and after each of the wake-ups between tests, which
        // run code the last release gave back): measured, an idle daemon that released only
        // after tests and uploads grew from 3.5 to 5.1 MiB over its next 160 s. Not before the
        // short naps just ahead of a test.
        if wait >= Duration::from_secs(1) {
            idle.release();
        }
        tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
    }
}

async fn uploader(
    cfg: Arc<Config>,
    queue: Arc<Queue>,
    state: Arc<SharedState>,
    kick: Arc<Notify>,
    mut backoff: Backoff,
    mut stop: watch::Receiver<bool>,
    idle: IdleMemory,
) {
    loop {
        // Wait for a new report (or the start), or for the retry timer after a failure.
        let retry = state.snapshot().next_upload_retry_at;
        let wait = async {
            match retry {
                Some(at) if backoff.failures() > 0 => {
                    let d = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                    tokio::time::sleep(d).await
                }
                _ => kick.notified().await,
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = stop.changed() => return,
        }
        if queue.is_empty() {
            continue;
        }
        let pass = upload_and_record(&cfg, &queue, &state);
        let result = tokio::select! {
            r = pass => r,
            _ = stop.changed() => return,
        };
        idle.release();
        match result {
            Ok(_) => backoff.succeed(),
            Err(e) => {
                let delay = match &e {
                    crate::upload::UploadError::WrongPin(_) => {
                        backoff.fail_long(&mut rand::thread_rng())
                    }
                    _ => backoff.fail(&mut rand::thread_rng()),
                };
                let at = Utc::now()
                    + chrono::TimeDelta::from_std(delay).unwrap_or(chrono::TimeDelta::zero());
                tracing::warn!(
                    queued = queue.len(),
                    failures = backoff.failures(),
                    "upload failed: {e}; next try in {:.0} s",
                    delay.as_secs_f64()
                );
                state.update(|s| s.next_upload_retry_at = Some(at));
            }
        }
    }
}
