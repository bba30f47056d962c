//! One agent cycle: run the configured tests, sign and queue each report, then upload the queue.

use crate::budget::BudgetConfig;
use crate::config::{Config, Learned};
use crate::engine::driver::Cancel;
use crate::engine::{run_call_test, TestError, TestSpec};
use crate::queue::Queue;
use crate::settings::resolve;
use crate::state::{AgentState, SharedState};
use crate::upload::{upload_queue, UploadError, UploadSummary, UploadTarget};
use anyhow::{Context, Result};
use callwatch_proto::{CallReport, Platform, SignedReport};
use ed25519_dalek::SigningKey;
use std::time::Duration;

/// What one due test came to.
#[derive(Debug)]
pub enum TestOutcome {
    /// Ran, signed and queued.
    Done(Box<CallReport>),
    /// Could not run (reflector unreachable, a socket error); why.
    Failed(String),
    /// Ran, but its report could not be queued (e.g. the disk is full); why. The report is lost;
    /// what the queue held before is kept.
    NotQueued(String),
    /// Stopped early because the agent is stopping.
    Cancelled,
}

/// What a cycle did.
#[derive(Debug, Default)]
pub struct CycleOutcome {
    pub reports: Vec<CallReport>,
    pub test_errors: Vec<String>,
    /// Reports made but not queued (e.g. the disk is full), with why.
    pub queue_errors: Vec<String>,
    /// Tests not run, with why (e.g. the data budget).
    pub skipped: Vec<String>,
    pub upload: Option<Result<UploadSummary, UploadError>>,
    pub queued_after: usize,
}

/// Runs every configured test once, queues the signed reports, and uploads the queue.
pub async fn run_cycle(cfg: &Config, key: &SigningKey, queue: &Queue) -> Result<CycleOutcome> {
    run_cycle_cancellable(cfg, key, queue, &Cancel::default()).await
}

/// The data a test will cost (upper estimate, both directions of every arm) and its spec.
pub fn price(
    cfg: &Config,
    learned: Option<&Learned>,
    platform: Platform,
) -> Result<(TestSpec, u64)> {
    let spec = cfg.spec_with(platform, learned)?;
    let cost = spec.estimated_bytes();
    Ok((spec, cost))
}

/// Bytes a finished test actually put on the wire, both directions, IP/UDP headers included:
/// probes sent plus replies received (late and duplicate ones too), at the nominal size.
pub fn actual_bytes(report: &CallReport, ipv6: bool) -> u64 {
    let header = if ipv6 {
        crate::budget::IPV6_UDP_HEADER_BYTES
    } else {
        crate::budget::IPV4_UDP_HEADER_BYTES
    };
    let per_packet = u64::from(report.payload_bytes) + u64::from(header);
    report
        .streams
        .iter()
        .map(|s| {
            let packets = u64::from(s.packets_sent)
                + u64::from(s.packets_received)
                + u64::from(s.duplicates)
                + u64::from(s.late);
            packets.saturating_mul(per_packet)
        })
        .fold(0u64, u64::saturating_add)
}

/// If the budget in `state` has no room for a test costing `cost` now, records the skip (why,
/// in `last_skip`), logs it and returns the reason.
pub fn refuse_over_budget(
    state: &SharedState,
    platform: Platform,
    cost: u64,
    budget: BudgetConfig,
) -> Option<String> {
    let now = chrono::Utc::now();
    state.update(|s| {
        let refusal = s.budget_under(budget).check(now, cost).err()?;
        let why = refusal.to_string();
        tracing::info!(platform = %platform, "test skipped: {why}");
        s.last_skip = Some((now, why.clone()));
        s.refresh_data_used(now);
        Some(why)
    })
}

/// Runs one test (on a blocking thread), signs and queues its report, charges what it used to
/// the budget and records it in `state`. One test at a time: the caller awaits this.
pub async fn run_one_test(
    cfg: &Config,
    key: &SigningKey,
    queue: &Queue,
    state: &SharedState,
    spec: TestSpec,
    cancel: &Cancel,
) -> Result<TestOutcome> {
    let mut spec = spec;
    let platform = spec.platform;
    let ipv6 = spec.reflector.is_ipv6();
    let reflector = spec.reflector.to_string();
    spec.reached_before = state.snapshot().reflectors_reached.contains(&reflector);
    let reached_before = spec.reached_before;
    tracing::info!(platform = %platform, arms = %spec.arm_addresses(), "starting test");
    let test_cancel = cancel.clone();
    let result = tokio::task::spawn_blocking(move || run_call_test(&spec, &test_cancel, |_| {}))
        .await
        .context("test thread")?;
    let report = match result {
        Ok(report) => report,
        Err(TestError::Cancelled) => {
            tracing::info!(platform = %platform, "test abandoned: stopping");
            return Ok(TestOutcome::Cancelled);
        }
        Err(e @ (TestError::Session(_) | TestError::Io(_) | TestError::Unreachable(_))) => {
            tracing::warn!(platform = %platform, "test failed: {e}");
            return Ok(TestOutcome::Failed(format!("{platform}: {e}")));
        }
        Err(e) => return Err(e.into()),
    };
    let answered = report.streams.iter().any(|s| {
        matches!(
            s.role,
            callwatch_proto::Role::Platform | callwatch_proto::Role::Control
        ) && s.packets_received > 0
    });
    if answered && !reached_before {
        state.update(|s| s.reflectors_reached.insert(reflector.clone()));
    }
    // What leaves the machine starts on the hour (`coarse_start`); the local record (status)
    // keeps the exact time.
    let outgoing = CallReport {
        started_at: callwatch_proto::report::coarse_start(report.started_at),
        ..report.clone()
    };
    let signed = SignedReport::sign(&outgoing, key).context("encoding report")?;
    // The path token (sealed to the collector) goes beside the signed report, never in it.
    let queued = callwatch_proto::upload::QueuedReport {
        report: signed,
        path_token: report.path_token,
    };
    let dropped = match queue.push_bounded(&queued, cfg.queue_cap) {
        Ok(dropped) => dropped,
        Err(e) => {
            let why = if crate::queue::is_disk_full(&e) {
                format!(
                    "no space left on device (queue {}: {e:#}); this test's report is lost, \
                     reports queued before are kept",
                    cfg.queue_dir.display()
                )
            } else {
                format!("{e:#} (queue {})", cfg.queue_dir.display())
            };
            tracing::error!(platform = %platform, "cannot queue the report: {why}");
            return Ok(TestOutcome::NotQueued(format!(
                "{platform}: cannot queue the report: {why}"
            )));
        }
    };
    if dropped > 0 {
        tracing::warn!(
            dropped,
            cap = cfg.queue_cap,
            total = queue.dropped_total(),
            "queue full: dropped the oldest report(s)"
        );
    }
    let used = actual_bytes(&report, ipv6);
    let now = chrono::Utc::now();
    state.update(|s| {
        s.record_test(&report);
        s.budget_under(cfg.budget).record(now, used);
        s.refresh_data_used(now);
        s.queue_depth = queue.len();
        s.queue_dropped_total = queue.dropped_total();
    });
    let s = &report.streams[0];
    tracing::info!(
        platform = %report.platform,
        // Displayed (`%`), so numbers show as numbers, not quoted strings.
        mos = %s.mos.map(crate::report_text::mos).unwrap_or_else(|| "-".into()),
        loss_up = %crate::report_text::percent(s.loss_up),
        loss_down = %crate::report_text::percent(s.loss_down),
        rtt_ms = %s.rtt_ms.map(|r| crate::report_text::millis(r.median)).unwrap_or_else(|| "-".into()),
        verdict = report.verdict.map(|v| v.as_str()).unwrap_or("-"),
        data = %crate::budget::format_bytes(used),
        "test done"
    );
    Ok(TestOutcome::Done(Box::new(report)))
}

/// Where the config says to upload: QUIC to `collector`, TLS over TCP to `collector_tcp` (by
/// default the same host and port).
pub fn upload_target(cfg: &Config) -> Result<UploadTarget> {
    let tcp = match &cfg.collector_tcp {
        Some(tcp) => resolve("collector_tcp", tcp)?,
        None => resolve("collector", &cfg.collector)?,
    };
    Ok(UploadTarget {
        collector: resolve("collector", &cfg.collector)?,
        tcp: Some(tcp),
        server_name: cfg.tls_server_name(),
        pin: cfg.collector_pin,
        bind: cfg.test.bind,
        batch: cfg.upload_batch,
        connect_timeout: Duration::from_secs(5),
        fetch_seal_key: false,
        tcp_first: false,
        fetch_endpoints: false,
    })
}

/// What the collector said about its own reflector, for a config that names none (`None` for
/// one that does): as kept in the state file, or, before the first test, asked for now over the
/// pinned connection. An error: the collector could not be asked (nothing can be tested yet).
pub async fn learn_reflector(
    cfg: &Config,
    state: &SharedState,
) -> Result<Option<Learned>, UploadError> {
    if !cfg.reflector_from_collector() {
        return Ok(None);
    }
    if let Some(learned) = state.read(AgentState::learned) {
        return Ok(Some(learned));
    }
    let target = UploadTarget {
        tcp_first: state.read(|s| s.tcp_first(chrono::Utc::now())),
        ..upload_target(cfg).map_err(UploadError::Unreachable)?
    };
    tracing::info!(
        collector = %cfg.collector,
        "asking the collector where its reflector serves each platform"
    );
    let summary = crate::upload::ask_collector(&target).await?;
    let now = chrono::Utc::now();
    match state.update(|s| {
        s.record_transport(&summary, now);
        s.learned()
    }) {
        Some(learned) => Ok(Some(learned)),
        None => Err(UploadError::Refused(format!(
            "the collector at {} did not say where its reflector serves",
            cfg.collector
        ))),
    }
}

/// One pass over the queue; records the result and logs a success (one line; nothing to upload
/// is a success without a line). The caller logs a failure, with what it will do next.
pub async fn upload_and_record(
    cfg: &Config,
    queue: &Queue,
    state: &SharedState,
) -> Result<UploadSummary, UploadError> {
    let known = state.snapshot();
    // The carry-out key is asked for until the agent has one (config or state).
    let want_key = cfg.collector_seal_key.is_none() && known.collector_seal_key.is_none();
    let upload = match upload_target(cfg) {
        Ok(target) => {
            let target = UploadTarget {
                fetch_seal_key: want_key,
                tcp_first: known.tcp_first(chrono::Utc::now()),
                fetch_endpoints: cfg.reflector_from_collector(),
                ..target
            };
            upload_queue(queue, &target).await
        }
        Err(e) => Err(UploadError::Unreachable(e)),
    };
    match &upload {
        Ok(s) if s.accepted + s.duplicate + s.rejected > 0 => tracing::info!(
            accepted = s.accepted,
            duplicate = s.duplicate,
            rejected = s.rejected,
            queued = s.remaining,
            "upload ok: {} report(s)",
            s.accepted + s.duplicate + s.rejected
        ),
        Ok(_) | Err(_) => {}
    }
    let now = chrono::Utc::now();
    state.update(|s| {
        match &upload {
            Ok(summary) => {
                s.last_upload_ok = Some(now);
                s.last_upload_error = None;
                s.upload_failures = 0;
                s.next_upload_retry_at = None;
                s.record_transport(summary, now);
            }
            Err(e) => {
                s.last_upload_error = Some((now, e.to_string()));
                s.upload_failures = s.upload_failures.saturating_add(1);
            }
        }
        s.queue_depth = queue.len();
        s.queue_dropped_total = queue.dropped_total();
    });
    upload
}

/// [`run_cycle`], stopping a running test early when `cancel` fires, and recording what it did
/// in the config's state file. Each test is priced against the data budget first and skipped
/// (with its reason in the state file) if it would exceed it.
pub async fn run_cycle_cancellable(
    cfg: &Config,
    key: &SigningKey,
    queue: &Queue,
    cancel: &Cancel,
) -> Result<CycleOutcome> {
    let state = SharedState::load(&cfg.state_path());
    let mut outcome = CycleOutcome::default();
    let learned = match learn_reflector(cfg, &state).await {
        Ok(learned) => learned,
        Err(e) => {
            // Nothing can be tested before the collector says where; the queue stays as it is.
            let why = format!("no test run: {e}");
            tracing::warn!("{why}");
            outcome.test_errors.push(why);
            outcome.upload = Some(Err(e));
            outcome.queued_after = queue.len();
            return Ok(outcome);
        }
    };
    for platform in &cfg.platforms {
        let (spec, cost) = match price(cfg, learned.as_ref(), *platform) {
            Ok(priced) => priced,
            // The collector's reflector cannot serve this platform (said and logged when
            // learned): the others still run.
            Err(e) if cfg.reflector_from_collector() => {
                tracing::info!(platform = %platform, "test skipped: {e:#}");
                outcome.skipped.push(format!("{platform}: {e:#}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(why) = refuse_over_budget(&state, *platform, cost, cfg.budget) {
            outcome.skipped.push(format!("{platform}: {why}"));
            continue;
        }
        match run_one_test(cfg, key, queue, &state, spec, cancel).await? {
            TestOutcome::Done(report) => outcome.reports.push(*report),
            TestOutcome::Failed(why) => outcome.test_errors.push(why),
            TestOutcome::NotQueued(why) => outcome.queue_errors.push(why),
            TestOutcome::Cancelled => return Ok(outcome),
        }
    }
    let upload = upload_and_record(cfg, queue, &state).await;
    if let Err(e) = &upload {
        tracing::warn!(queued = queue.len(), "upload failed: {e}");
    }
    outcome.upload = Some(upload);
    outcome.queued_after = queue.len();
    Ok(outcome)
}
