//! What the agent has been doing, for `callwatch-agent status`.
//!
//! The running agent holds its queue's database lock, so it also writes this small JSON file
//! (atomically: a temporary file renamed over) after every test and upload; `status` reads it
//! without disturbing the agent.

use crate::budget::{Budget, BudgetConfig};
use crate::schedule::Scheduler;
use anyhow::{Context, Result};
use callwatch_proto::CallReport;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How long after QUIC failed to get through upload passes go over TLS on TCP first; then QUIC
/// is tried first again (a block may have been lifted, or the agent moved).
pub const QUIC_RETRY_AFTER: chrono::Duration = chrono::Duration::hours(6);

/// Which transport reaches the collector, as far as the agent knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkingTransport {
    /// Nothing has reached the collector yet.
    #[default]
    Unknown,
    /// QUIC (the usual way).
    Quic,
    /// TLS over TCP: QUIC did not get through.
    Tcp,
}

impl std::fmt::Display for WorkingTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkingTransport::Unknown => "unknown",
            WorkingTransport::Quic => "quic",
            WorkingTransport::Tcp => "tcp",
        })
    }
}

/// How many recent tests `status` shows.
pub const RECENT_TESTS: usize = 10;

/// One test's headline figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestSummary {
    pub at: DateTime<Utc>,
    pub platform: String,
    /// `None` where the split was unknown.
    pub loss_up: Option<f64>,
    pub loss_down: Option<f64>,
    pub rtt_median_ms: Option<f64>,
    pub mos: Option<f64>,
    pub verdict: Option<String>,
}

impl TestSummary {
    pub fn of(report: &CallReport) -> Option<TestSummary> {
        let s = report.streams.first()?;
        Some(TestSummary {
            at: report.started_at,
            platform: report.platform.to_string(),
            loss_up: s.loss_up,
            loss_down: s.loss_down,
            rtt_median_ms: s.rtt_ms.map(|r| r.median),
            mos: s.mos,
            verdict: report.verdict.map(|v| v.to_string()),
        })
    }
}

/// Everything `status` shows, and what the daemon must remember across restarts (its schedule
/// and the data it used).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentState {
    /// Newest first.
    pub recent_tests: Vec<TestSummary>,
    pub queue_depth: usize,
    /// Reports dropped because the queue was full (oldest first), ever.
    pub queue_dropped_total: u64,
    pub last_upload_ok: Option<DateTime<Utc>>,
    /// When and why the last upload failed, if it failed after the last success.
    pub last_upload_error: Option<(DateTime<Utc>, String)>,
    pub next_test_at: Option<DateTime<Utc>>,
    /// Why the last due test did not run (e.g. the data budget), if it did not.
    pub last_skip: Option<(DateTime<Utc>, String)>,
    pub data_used_today_bytes: u64,
    pub data_used_month_bytes: u64,
    pub data_budget_day_bytes: Option<u64>,
    pub data_budget_month_bytes: Option<u64>,
    /// Tests completed (and queued) over the agent's life.
    pub tests_total: u64,
    /// Upload attempts that failed in a row since the last success.
    pub upload_failures: u32,
    /// When the uploader tries again after a failure.
    pub next_upload_retry_at: Option<DateTime<Utc>>,
    /// When the signing key was last replaced by rotation.
    pub key_rotated_at: Option<DateTime<Utc>>,
    /// The daemon's schedule (next due time, whose turn), kept so a restart resumes it. One
    /// this release cannot read (a platform it does not know) is dropped with a warning, and
    /// the daemon makes a new one; the rest of the state is kept.
    #[serde(deserialize_with = "scheduler_or_none")]
    pub scheduler: Option<Scheduler>,
    /// Data used today and this month, kept so a restart does not forget it.
    pub budget: Option<Budget>,
    /// Reflector addresses (`IP:port`) that have answered this agent: a test in which nothing
    /// answers is then a finding (a report) rather than a local error. A new address in the
    /// config starts unknown.
    pub reflectors_reached: std::collections::BTreeSet<String>,
    /// The transport that last reached the collector (`quic`, `tcp`, or `unknown`).
    pub upload_transport: WorkingTransport,
    /// When it last did.
    pub upload_transport_at: Option<DateTime<Utc>>,
    /// Why QUIC did not get through, when the last pass went over TCP.
    pub quic_failure: Option<String>,
    /// When QUIC last failed to get through: for [`QUIC_RETRY_AFTER`] after it, passes go over
    /// TCP first (a network that blocks QUIC costs no connect timeout on every pass).
    pub quic_failed_at: Option<DateTime<Utc>>,
    /// The collector's carry-out key (hex), as it sent it over the pinned upload channel.
    pub collector_seal_key: Option<String>,
    /// The reflectors the collector vouches for (its own and registered standalone ones), as it
    /// last listed them after an upload. Shown in `status`; the agent does not (yet) choose
    /// among them.
    pub collector_reflectors: Vec<KnownReflector>,
    /// When that list was received.
    pub collector_reflectors_at: Option<DateTime<Utc>>,
    /// Where the collector's own reflector serves each platform, as it last said (a config
    /// with no `reflector` tests there); `None`: not asked yet.
    pub collector_endpoints: Option<callwatch_proto::profile::Endpoints>,
    /// When that was received.
    pub collector_endpoints_at: Option<DateTime<Utc>>,
}

/// A saved schedule, or `None` (logged) if it cannot be read: losing the schedule costs one
/// randomly placed first test, losing the whole state file would cost the data used.
fn scheduler_or_none<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Scheduler>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    match serde_json::from_value(value) {
        Ok(scheduler) => Ok(scheduler),
        Err(e) => {
            tracing::warn!("the saved schedule cannot be read ({e}); starting a new one");
            Ok(None)
        }
    }
}

/// A reflector the collector told the agent of.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KnownReflector {
    pub name: String,
    /// `host:port` (UDP); `None`: not given (the collector's own: the configured `reflector`).
    pub address: Option<String>,
    /// Its sealing key (hex), what `reflector_key` in the config would hold.
    pub seal_key: Option<String>,
    /// Its attestation key (hex).
    pub attest_key: String,
}

impl From<&callwatch_proto::upload::ReflectorInfo> for KnownReflector {
    fn from(r: &callwatch_proto::upload::ReflectorInfo) -> Self {
        KnownReflector {
            name: r.name.clone(),
            address: r.address.clone(),
            seal_key: r.seal_key.map(hex::encode),
            attest_key: hex::encode(r.attest_key),
        }
    }
}

/// The state shared by the daemon's test loop and uploader: every change is saved at once.
pub struct SharedState {
    path: PathBuf,
    inner: Mutex<AgentState>,
}

impl SharedState {
    /// Loads the state file at `path`; an unreadable one is logged and replaced by a fresh state
    /// (the queue, not this file, holds the reports).
    pub fn load(path: &Path) -> SharedState {
        let state = AgentState::load(path).unwrap_or_else(|e| {
            tracing::warn!("{e:#}; starting with a fresh state file");
            AgentState::default()
        });
        SharedState {
            path: path.to_path_buf(),
            inner: Mutex::new(state),
        }
    }

    /// Applies `f` to the state and saves it (a failed save is logged, not fatal).
    pub fn update<R>(&self, f: impl FnOnce(&mut AgentState) -> R) -> R {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut guard);
        if let Err(e) = guard.save(&self.path) {
            tracing::warn!("could not write the state file: {e:#}");
        }
        r
    }

    /// `f` of the state as it is now, without copying it or saving it.
    pub fn read<R>(&self, f: impl FnOnce(&AgentState) -> R) -> R {
        f(&self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A copy of the state as it is now.
    pub fn snapshot(&self) -> AgentState {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl AgentState {
    /// What the collector said about its own reflector (ports per platform, sealing key), if it
    /// has said where it serves.
    pub fn learned(&self) -> Option<crate::config::Learned> {
        let endpoints = self.collector_endpoints.clone()?;
        let seal_key = self
            .collector_reflectors
            .iter()
            .find(|r| r.name == callwatch_proto::upload::OWN_REFLECTOR)
            .and_then(|r| r.seal_key.as_deref())
            .and_then(|k| k.parse().ok());
        Some(crate::config::Learned {
            endpoints,
            seal_key,
        })
    }

    /// Keeps what an upload pass learned of the collector's reflector, logging a change of the
    /// platforms it serves (once, not on every refresh).
    pub fn record_endpoints(
        &mut self,
        endpoints: callwatch_proto::profile::Endpoints,
        now: DateTime<Utc>,
    ) {
        if self.collector_endpoints.as_ref() != Some(&endpoints) {
            let served: Vec<String> = endpoints
                .served
                .iter()
                .map(|s| s.platform.to_string())
                .collect();
            tracing::info!(
                "the collector's reflector serves {}",
                if served.is_empty() {
                    "nothing".into()
                } else {
                    served.join(", ")
                }
            );
            for u in &endpoints.unavailable {
                tracing::info!("{} cannot be tested there: {}", u.platform, u.reason);
            }
        }
        self.collector_endpoints = Some(endpoints);
        self.collector_endpoints_at = Some(now);
    }

    /// Sets the data-used figures from the persisted budget as of `now` (counts reset at UTC
    /// midnight and on the 1st, even if the agent has not run since).
    pub fn refresh_data_used(&mut self, now: DateTime<Utc>) {
        if let Some(b) = &self.budget {
            let (day, month) = b.used(now);
            self.data_used_today_bytes = day;
            self.data_used_month_bytes = month;
            self.data_budget_day_bytes = b.config().per_day_bytes;
            self.data_budget_month_bytes = b.config().per_month_bytes;
        }
    }

    /// The persisted data budget under the config's limits (which may have changed since it
    /// was saved); a fresh one if none was saved. Every check and charge goes through here.
    pub fn budget_under(&mut self, config: BudgetConfig) -> &mut Budget {
        let budget = self.budget.get_or_insert_with(|| Budget::new(config));
        budget.set_config(config);
        budget
    }

    /// Whether the next pass should go over TCP first: QUIC failed less than
    /// [`QUIC_RETRY_AFTER`] ago and TCP got through since.
    pub fn tcp_first(&self, now: DateTime<Utc>) -> bool {
        self.upload_transport == WorkingTransport::Tcp
            && self
                .quic_failed_at
                .is_some_and(|t| now.signed_duration_since(t) < QUIC_RETRY_AFTER)
    }

    /// Records which transport a successful upload pass used and what it learned.
    pub fn record_transport(&mut self, summary: &crate::upload::UploadSummary, now: DateTime<Utc>) {
        use crate::upload::Transport;
        match summary.transport {
            Some(Transport::Quic) => {
                self.upload_transport = WorkingTransport::Quic;
                self.upload_transport_at = Some(now);
                self.quic_failure = None;
            }
            Some(Transport::Tcp) => {
                self.upload_transport = WorkingTransport::Tcp;
                self.upload_transport_at = Some(now);
                // A pass that went over TCP first never tried QUIC: what it last said stands.
                if let Some(e) = &summary.quic_error {
                    self.quic_failure = Some(e.clone());
                    self.quic_failed_at = Some(now);
                }
            }
            None => {}
        }
        if let Some(key) = summary.seal_key {
            self.collector_seal_key = Some(key.to_string());
        }
        if let Some(list) = &summary.reflectors {
            self.collector_reflectors = list.iter().map(KnownReflector::from).collect();
            self.collector_reflectors_at = Some(now);
        }
        if let Some(endpoints) = &summary.endpoints {
            self.record_endpoints(endpoints.clone(), now);
        }
    }

    /// Adds a finished test to the recent ones (newest first) and the total.
    pub fn record_test(&mut self, report: &CallReport) {
        self.tests_total += 1;
        if let Some(s) = TestSummary::of(report) {
            self.recent_tests.insert(0, s);
            self.recent_tests.truncate(RECENT_TESTS);
        }
    }

    /// Reads the state file; a missing file is a fresh agent.
    pub fn load(path: &Path) -> Result<AgentState> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a callwatch agent state file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the state file atomically, readable only by its owner.
    pub fn save(&self, path: &Path) -> Result<()> {
        callwatch_reflector::files::replace_private(path, &serde_json::to_vec_pretty(self)?)
    }

    /// The state as a volunteer reads it.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let when = |t: &DateTime<Utc>| t.format("%Y-%m-%d %H:%M UTC").to_string();
        let _ = writeln!(out, "queue: {} report(s) waiting", self.queue_depth);
        if self.queue_dropped_total > 0 {
            let _ = writeln!(
                out,
                "queue full: {} oldest report(s) dropped so far",
                self.queue_dropped_total
            );
        }
        match (&self.last_upload_ok, &self.last_upload_error) {
            (ok, Some((at, why))) => {
                let _ = writeln!(out, "last upload FAILED at {}: {why}", when(at));
                if let Some(retry) = &self.next_upload_retry_at {
                    let _ = writeln!(out, "  next try: {}", when(retry));
                }
                if let Some(ok) = ok {
                    let _ = writeln!(out, "  last successful upload: {}", when(ok));
                }
            }
            (Some(at), None) => {
                let _ = writeln!(out, "last upload: ok at {}", when(at));
            }
            (None, None) => {
                let _ = writeln!(out, "last upload: none yet");
            }
        }
        match (self.upload_transport, &self.upload_transport_at) {
            (WorkingTransport::Unknown, _) | (_, None) => {
                let _ = writeln!(
                    out,
                    "upload transport: unknown (nothing has reached the collector yet)"
                );
            }
            (WorkingTransport::Quic, Some(at)) => {
                let _ = writeln!(
                    out,
                    "upload transport: quic (last reached the collector {})",
                    when(at)
                );
            }
            (WorkingTransport::Tcp, Some(at)) => {
                let _ = writeln!(
                    out,
                    "upload transport: tcp (TLS over TCP; last reached the collector {})",
                    when(at)
                );
                if let Some(why) = &self.quic_failure {
                    let _ = writeln!(out, "  QUIC did not get through: {why}");
                }
            }
        }
        match &self.next_test_at {
            Some(at) => {
                let _ = writeln!(out, "next test: {}", when(at));
            }
            None => {
                let _ = writeln!(out, "next test: not scheduled (agent not running?)");
            }
        }
        if let Some((at, why)) = &self.last_skip {
            let _ = writeln!(out, "last skipped test: {} — {why}", when(at));
        }
        let mb = crate::budget::format_bytes;
        let limit = |l: Option<u64>| {
            l.map(|b| format!(" of {}", mb(b)))
                .unwrap_or_else(|| " (no limit)".into())
        };
        let _ = writeln!(
            out,
            "data used: {}{} today, {}{} this month",
            mb(self.data_used_today_bytes),
            limit(self.data_budget_day_bytes),
            mb(self.data_used_month_bytes),
            limit(self.data_budget_month_bytes)
        );
        if let Some(at) = &self.collector_reflectors_at {
            let _ = writeln!(
                out,
                "reflectors the collector vouches for (as of {}):",
                when(at)
            );
            for r in &self.collector_reflectors {
                let _ = writeln!(
                    out,
                    "  {}  {}  seal key {}",
                    r.name,
                    r.address.as_deref().unwrap_or("(the configured reflector)"),
                    r.seal_key.as_deref().unwrap_or("-"),
                );
            }
        }
        if let (Some(e), Some(at)) = (&self.collector_endpoints, &self.collector_endpoints_at) {
            let _ = writeln!(
                out,
                "the collector's reflector serves (as of {}):",
                when(at)
            );
            for s in &e.served {
                let _ = match s.control_port {
                    Some(c) => writeln!(
                        out,
                        "  {:<9} platform arm udp {}, control arm udp {c}",
                        s.platform.as_str(),
                        s.platform_port
                    ),
                    None => writeln!(out, "  {:<9} udp {}", s.platform.as_str(), s.platform_port),
                };
            }
            for u in &e.unavailable {
                let _ = writeln!(
                    out,
                    "  {:<9} unavailable: {}",
                    u.platform.as_str(),
                    u.reason
                );
            }
        }
        if self.recent_tests.is_empty() {
            let _ = writeln!(out, "no tests yet");
        } else {
            let _ = writeln!(out, "recent tests ({} in all):", self.tests_total);
        }
        for t in &self.recent_tests {
            let _ = writeln!(
                out,
                "  {}  {:<9} loss {:>6} up {:>6} down  rtt {:>8}  MOS {:>4}  verdict {}",
                when(&t.at),
                t.platform,
                crate::report_text::percent(t.loss_up),
                crate::report_text::percent(t.loss_down),
                t.rtt_median_ms
                    .map(|r| format!("{r:.1} ms"))
                    .unwrap_or_else(|| "-".into()),
                t.mos
                    .map(|m| format!("{m:.2}"))
                    .unwrap_or_else(|| "-".into()),
                t.verdict.as_deref().unwrap_or("-"),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_goes_first_for_six_hours_after_quic_failed_then_quic_again() {
        use crate::upload::{Transport, UploadSummary};
        let t0 = Utc::now();
        let mut s = AgentState::default();
        assert!(!s.tcp_first(t0), "nothing known: QUIC first");
        let over_tcp = UploadSummary {
            transport: Some(Transport::Tcp),
            quic_error: Some("no answer within 5s".into()),
            ..UploadSummary::default()
        };
        s.record_transport(&over_tcp, t0);
        assert!(s.tcp_first(t0 + chrono::Duration::hours(5)));
        // A TCP-first pass (no QUIC error) keeps the failure's time: QUIC is retried on time.
        let tcp_only = UploadSummary {
            transport: Some(Transport::Tcp),
            ..UploadSummary::default()
        };
        s.record_transport(&tcp_only, t0 + chrono::Duration::hours(5));
        assert!(s.quic_failure.is_some());
        assert!(!s.tcp_first(t0 + QUIC_RETRY_AFTER));
        // QUIC got through (within the window): QUIC first from then on.
        s.record_transport(&over_tcp, t0);
        let over_quic = UploadSummary {
            transport: Some(Transport::Quic),
            ..UploadSummary::default()
        };
        s.record_transport(&over_quic, t0 + chrono::Duration::hours(1));
        assert!(!s.tcp_first(t0 + chrono::Duration::hours(1)));
    }

    #[test]
    fn state_round_trips_through_its_file_and_renders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(AgentState::load(&path).unwrap(), AgentState::default());
        let mut s = AgentState {
            queue_depth: 3,
            queue_dropped_total: 2,
            last_upload_error: Some((Utc::now(), "collector unreachable".into())),
            upload_transport: WorkingTransport::Tcp,
            upload_transport_at: Some(Utc::now()),
            quic_failure: Some("no answer within 5s".into()),
            ..AgentState::default()
        };
        s.recent_tests.push(TestSummary {
            at: Utc::now(),
            platform: "whatsapp".into(),
            loss_up: Some(0.1),
            loss_down: Some(0.0),
            rtt_median_ms: Some(42.0),
            mos: Some(3.9),
            verdict: Some("differentiated".into()),
        });
        s.save(&path).unwrap();
        assert_eq!(AgentState::load(&path).unwrap(), s);
        let text = s.render();
        for want in [
            "3 report(s) waiting",
            "2 oldest",
            "FAILED",
            "differentiated",
            "whatsapp",
            "upload transport: tcp",
            "QUIC did not get through: no answer within 5s",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["upload_transport"], "tcp");
        let fresh = serde_json::to_value(AgentState::default()).unwrap();
        assert_eq!(fresh["upload_transport"], "unknown");
        assert!(AgentState::default()
            .render()
            .contains("upload transport: unknown"));
        // A state file of the previous release (no transport fields) still loads.
        std::fs::write(&path, r#"{"queue_depth": 2}"#).unwrap();
        assert_eq!(AgentState::load(&path).unwrap().queue_depth, 2);
        std::fs::write(&path, "garbage").unwrap();
        assert!(AgentState::load(&path).is_err());
    }

    #[test]
    fn an_unreadable_schedule_is_dropped_and_the_rest_kept() {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        let config = crate::schedule::ScheduleConfig {
            interval: std::time::Duration::from_secs(900),
            spread: 0.5,
            quiet_hours: None,
            utc_offset_minutes: 0,
            platforms: vec![callwatch_proto::Platform::Whatsapp],
            allow_short_interval: false,
        };
        let s = AgentState {
            tests_total: 7,
            scheduler: Some(Scheduler::new(config, Utc::now(), &mut rng)),
            ..AgentState::default()
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"whatsapp\""), "{json}");
        let back: AgentState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        // A platform this release does not know: the schedule goes, the count stays.
        let odd: AgentState =
            serde_json::from_str(&json.replace("\"whatsapp\"", "\"skype\"")).unwrap();
        assert_eq!(odd.scheduler, None);
        assert_eq!(odd.tests_total, 7);
    }
}
