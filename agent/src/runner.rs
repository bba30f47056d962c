//! One agent cycle: run the configured tests, sign and queue each report, then upload the queue.

use crate::config::Config;
use crate::engine::driver::Cancel;
use crate::engine::{run_call_test, TestError, TestSpec};
use crate::queue::Queue;
use crate::state::AgentState;
use crate::upload::{upload_queue, UploadError, UploadSummary, UploadTarget};
use anyhow::{Context, Result};
use callwatch_proto::{CallReport, SignedReport};
use ed25519_dalek::SigningKey;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// What a cycle did.
#[derive(Debug, Default)]
pub struct CycleOutcome {
    pub reports: Vec<CallReport>,
    pub test_errors: Vec<String>,
    pub upload: Option<Result<UploadSummary, String>>,
    pub queued_after: usize,
}

pub fn resolve(what: &str, addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolving {what} address {addr}"))?
        .next()
        .with_context(|| format!("{what} address {addr} resolves to nothing"))
}

/// The test the config describes for one platform.
pub fn spec_for(cfg: &Config, platform: callwatch_proto::Platform) -> Result<TestSpec> {
    let mut spec = TestSpec::voice(
        resolve("reflector", &cfg.reflector)?,
        cfg.duration_secs * 1000,
    );
    spec.platform = platform;
    spec.interval_ms = cfg.interval_ms;
    spec.size = cfg.size;
    spec.bind = cfg.bind;
    spec.platform_port = cfg.platform_port;
    spec.control_port = cfg.control_port;
    spec.video = cfg.video;
    if let Some(server) = cfg.relay_servers.get(&platform).and_then(|s| s.first()) {
        spec.relay_server = Some(resolve("relay", server)?);
    }
    Ok(spec)
}

/// Runs every configured test once, queues the signed reports, and uploads the queue.
pub async fn run_cycle(cfg: &Config, key: &SigningKey, queue: &Queue) -> Result<CycleOutcome> {
    run_cycle_cancellable(cfg, key, queue, &Cancel::default()).await
}

/// [`run_cycle`], stopping a running test early when `cancel` fires, and recording what it did
/// in the config's state file.
pub async fn run_cycle_cancellable(
    cfg: &Config,
    key: &SigningKey,
    queue: &Queue,
    cancel: &Cancel,
) -> Result<CycleOutcome> {
    let mut state = AgentState::load(&cfg.state_path()).unwrap_or_default();
    let mut outcome = CycleOutcome::default();
    for platform in &cfg.platforms {
        let spec = spec_for(cfg, *platform)?;
        tracing::info!(platform = %platform, reflector = %spec.reflector, "starting test");
        let test_cancel = cancel.clone();
        let result =
            tokio::task::spawn_blocking(move || run_call_test(&spec, &test_cancel, |_| {}))
                .await
                .context("test thread")?;
        match result {
            Ok(report) => {
                let signed = SignedReport::sign(&report, key).context("encoding report")?;
                let dropped = queue.push_bounded(&signed, cfg.queue_cap)?;
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        cap = cfg.queue_cap,
                        total = queue.dropped_total(),
                        "queue full: dropped the oldest report(s)"
                    );
                }
                state.record_test(&report);
                let s = &report.streams[0];
                tracing::info!(
                    platform = %report.platform,
                    mos = s.mos.map(|m| format!("{m:.2}")).unwrap_or_else(|| "-".into()),
                    loss_up = format!("{:.4}", s.loss_up),
                    loss_down = format!("{:.4}", s.loss_down),
                    verdict = report.verdict.map(|v| v.as_str()).unwrap_or("-"),
                    "test done"
                );
                outcome.reports.push(report);
            }
            Err(TestError::Cancelled) => {
                tracing::info!("test abandoned: stopping");
                return Ok(outcome);
            }
            Err(e @ (TestError::Session(_) | TestError::Io(_))) => {
                tracing::warn!(platform = %platform, "test failed: {e}");
                outcome.test_errors.push(format!("{platform}: {e}"));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let target = UploadTarget {
        collector: resolve("collector", &cfg.collector)?,
        server_name: cfg.server_name.clone(),
        pin: cfg.pin_bytes().context("collector_pin")?,
        bind: cfg.bind,
        batch: cfg.upload_batch,
        connect_timeout: Duration::from_secs(5),
    };
    let upload = upload_queue(queue, &target).await;
    match &upload {
        Ok(s) => tracing::info!(
            accepted = s.accepted,
            duplicate = s.duplicate,
            rejected = s.rejected,
            queued = s.remaining,
            "upload ok"
        ),
        Err(e) => tracing::warn!(queued = queue.len(), "upload failed: {e}"),
    }
    let now = chrono::Utc::now();
    match &upload {
        Ok(_) => {
            state.last_upload_ok = Some(now);
            state.last_upload_error = None;
        }
        Err(e) => state.last_upload_error = Some((now, e.to_string())),
    }
    outcome.upload = Some(upload.map_err(|e: UploadError| e.to_string()));
    outcome.queued_after = queue.len();
    state.queue_depth = outcome.queued_after;
    state.queue_dropped_total = queue.dropped_total();
    if let Err(e) = state.save(&cfg.state_path()) {
        tracing::warn!("could not write the state file: {e:#}");
    }
    Ok(outcome)
}
