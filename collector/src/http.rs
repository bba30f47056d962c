//! The HTTP API: aggregates for researchers, health for operators.
//!
//! `GET /api/v1/aggregation?axis_x=…[&axis_y=…][&format=json|csv]`, `GET /api/v1/events`
//! (onsets and recoveries, JSON or CSV; `/api/v1/events.atom` as a feed), `GET /api/v1/reports`
//! (public and redacted; `?full=true` with a researcher token for the full, verifiable form) and
//! `GET /healthz`. Bad parameters get 400 with a message that names the parameter; a full export
//! without a valid token gets 401.

use crate::domain::{parse_kind, relative_error, Axis, Cell, Filter, Policy};
use crate::export::cells_csv;
use crate::ingest::IngestStats;
use crate::store::ReportStore;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use callwatch_proto::Role;
use callwatch_reflector::ReflectorStatsSource;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn ReportStore>,
    pub ingest: Option<Arc<IngestStats>>,
    pub reflector: Option<ReflectorStatsSource>,
    pub policy: Policy,
    /// The last [`Overview`] and when it was computed (one store pass per [`OVERVIEW_TTL`]).
    pub overview: Arc<std::sync::Mutex<Option<(std::time::Instant, Overview)>>>,
    /// The bounds on the store work requests may start.
    pub jobs: Jobs,
    /// The data folder whose token file ([`crate::token`]) admits full exports; `None`: no
    /// full export is ever given.
    pub data_dir: Option<std::path::PathBuf>,
    /// Seals the public export's page cursors.
    pub cursors: CursorKey,
    /// Onsets and recoveries ([`crate::events`]).
    pub events: crate::events::EventsService,
    /// The region sources, for the names of networks (`/api/v1/networks`); `None`: no names.
    pub geo: Option<Arc<crate::geo::Geo>>,
}

/// Seals and opens the public export's page cursors: where the next page starts (an arrival
/// time to the millisecond, which the public form never shows), encrypted and authenticated
/// with a key made when the collector starts. A client can neither read a cursor nor make one
/// (which would let it find a report's arrival time by bisection); a cursor from before a
/// restart is refused with a 400 that says to start again from `since`.
#[derive(Clone)]
pub struct CursorKey(chacha20poly1305::ChaCha20Poly1305);

impl Default for CursorKey {
    fn default() -> Self {
        use chacha20poly1305::aead::KeyInit;
        use rand::RngCore;
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        CursorKey(chacha20poly1305::ChaCha20Poly1305::new(&key.into()))
    }
}

impl CursorKey {
    /// The cursor of a page starting at `ms`: base64url of nonce, ciphertext and tag.
    pub fn seal(&self, ms: i64) -> String {
        use base64::Engine;
        use chacha20poly1305::aead::Aead;
        use rand::RngCore;
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        // Encrypting 8 bytes into a fresh vector cannot fail.
        out.extend(
            self.0
                .encrypt(&nonce.into(), &ms.to_be_bytes()[..])
                .unwrap_or_default(),
        );
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
    }

    /// The start of the page a cursor names, if this collector run sealed it.
    pub fn open(&self, cursor: &str) -> Option<i64> {
        use base64::Engine;
        use chacha20poly1305::aead::Aead;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()?;
        if raw.len() < 12 {
            return None;
        }
        let (nonce, sealed) = raw.split_at(12);
        let plain = self
            .0
            .decrypt(chacha20poly1305::Nonce::from_slice(nonce), sealed)
            .ok()?;
        Some(i64::from_be_bytes(plain.try_into().ok()?))
    }
}

/// How many blocking store reads the HTTP API runs at once: queries (aggregations and the
/// overview) and report pages get [`QUERY_JOBS`] and [`PAGE_JOBS`] of tokio's blocking
/// threads, never the whole pool, so that clients holding requests open cannot starve ingest's
/// store writes (which use the same pool), and pages cannot starve queries. A request that finds
/// its kind full for [`JOB_WAIT`] is answered 503 with `Retry-After`.
#[derive(Clone)]
pub struct Jobs {
    queries: Arc<tokio::sync::Semaphore>,
    pages: Arc<tokio::sync::Semaphore>,
    /// How long a query may take before its client is answered 503 ([`QUERY_TIME_LIMIT`]).
    pub time_limit: std::time::Duration,
}

/// Aggregations (and overviews) computed at once.
pub const QUERY_JOBS: usize = 4;
/// Report pages read at once.
pub const PAGE_JOBS: usize = 4;
/// How long a request waits for its kind's slot before it is answered 503.
pub const JOB_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// What a 503 tells the client to wait, in seconds (`Retry-After`).
pub const RETRY_AFTER_S: u64 = 5;
/// How long a query may run before its client is answered 503 (the read goes on to its end
/// and holds its slot meanwhile, so an expensive query pattern throttles itself).
pub const QUERY_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);
/// The longest range the hour axis covers in one query: 31 days, 744 hours per other-axis value.
pub const MAX_HOURLY_DAYS: i64 = 31;
/// The most cells one aggregation answers; a query with more is asked to narrow.
pub const MAX_CELLS: usize = 50_000;
/// How long a report page waits for its client to take the next lines before it stops (and
/// frees its slot): a client that does not read cannot hold one.
pub const PAGE_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            queries: Arc::new(tokio::sync::Semaphore::new(QUERY_JOBS)),
            pages: Arc::new(tokio::sync::Semaphore::new(PAGE_JOBS)),
            time_limit: QUERY_TIME_LIMIT,
        }
    }
}

impl Jobs {
    async fn slot(
        kind: &Arc<tokio::sync::Semaphore>,
        what: &str,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        match tokio::time::timeout(JOB_WAIT, kind.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ApiError::busy(what)),
        }
    }

    /// Runs the store read `read` (named `what` in the log) on the blocking pool in a query
    /// slot; a failed read or task is an internal error, and a read that outlasts
    /// [`Jobs::time_limit`] is answered 503 while it runs on, holding its slot, to its end.
    pub async fn query<T: Send + 'static>(
        &self,
        what: &str,
        read: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let slot = Jobs::slot(&self.queries, "queries").await?;
        let task = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            read()
        });
        match tokio::time::timeout(self.time_limit, task).await {
            Err(_) => {
                tracing::warn!(
                    "{what} took longer than {:?}; answered 503",
                    self.time_limit
                );
                Err(ApiError::too_long(self.time_limit))
            }
            Ok(joined) => joined
                .map_err(|e| ApiError::internal(format!("{what} task failed: {e}")))?
                .map_err(|e| ApiError::internal(format!("{what}: {e}"))),
        }
    }
}

/// How long an [`Overview`] is served before it is computed again.
pub const OVERVIEW_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// What the whole collector holds, said with every aggregation answer so that an empty or
/// sparse deployment explains itself. Global and unfiltered on purpose: a count of withheld
/// cells per filter would tell that a lone volunteer tests in some small network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Overview {
    /// Reports stored.
    pub reports: u64,
    /// Country × platform cells (voice, platform arm, all time) that have reports but fewer
    /// than k distinct agents or network prefixes, so no query publishes them.
    pub withheld_cells: u64,
}

impl Overview {
    /// Computes the overview from the store (two aggregations over everything).
    pub fn of(
        store: &dyn ReportStore,
        policy: &Policy,
    ) -> Result<Overview, crate::store::StoreError> {
        let everything = Policy {
            min_agents: 1,
            ..*policy
        };
        let cells = store.aggregate(
            &[Axis::Country, Axis::Platform],
            &Filter::default(),
            &everything,
        )?;
        // Below k in agents or in network prefixes (which cells do not publish).
        let published = store
            .aggregate(&[Axis::Country, Axis::Platform], &Filter::default(), policy)?
            .len();
        Ok(Overview {
            reports: store.len() as u64,
            withheld_cells: cells.len().saturating_sub(published) as u64,
        })
    }
}

/// The overview, from the cache while it is fresh.
async fn overview(state: &AppState) -> Result<Overview, ApiError> {
    if let Ok(cached) = state.overview.lock() {
        if let Some((at, o)) = *cached {
            if at.elapsed() < OVERVIEW_TTL {
                return Ok(o);
            }
        }
    }
    let (store, policy) = (state.store.clone(), state.policy);
    let o = state
        .jobs
        .query("overview", move || Overview::of(store.as_ref(), &policy))
        .await?;
    if let Ok(mut cached) = state.overview.lock() {
        *cached = Some((std::time::Instant::now(), o));
    }
    Ok(o)
}

/// The dashboard: one self-contained page (no external resources), served at `/`.
pub const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");
/// The API's OpenAPI 3 description, served at `/openapi.yaml`.
pub const OPENAPI_YAML: &str = include_str!("../assets/openapi.yaml");

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    DASHBOARD_HTML,
                )
            }),
        )
        .route(
            "/openapi.yaml",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
                    OPENAPI_YAML,
                )
            }),
        )
        .route("/api/v1/aggregation", get(aggregation))
        .route("/api/v1/reports", get(reports))
        .route("/api/v1/events", get(events))
        .route("/api/v1/events.atom", get(events_atom))
        .route("/api/v1/networks", get(networks))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// An error a client can act on, or a server fault.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    pub message: String,
}

/// What a 401 says in `WWW-Authenticate`.
pub const BEARER_CHALLENGE: &str = "Bearer realm=\"callwatch full export\"";

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
    /// A full export asked for without a valid researcher token: 401 with
    /// `WWW-Authenticate: Bearer`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
        }
    }
    /// Every slot for `what` is taken ([`Jobs`]): 503, try again after [`RETRY_AFTER_S`].
    fn busy(what: &str) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "busy: every slot for {what} is taken; try again in {RETRY_AFTER_S} s"
            ),
        }
    }
    /// A query that took longer than `limit`: 503, try again later or narrow it.
    fn too_long(limit: std::time::Duration) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "query too expensive: it took longer than {} s; narrow it (a shorter since/until \
                 range, a country or platform filter) or try again in {RETRY_AFTER_S} s",
                limit.as_secs_f64()
            ),
        }
    }
    /// A server fault: the details (a store's host, port and server text) go to the log under
    /// a random id; the client gets only "internal error" and the id to quote.
    fn internal(details: impl Into<String>) -> Self {
        let id = crate::fault::log_with_id(&format!("HTTP API: {}", details.into()));
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!(
                "internal error (id {id}): the collector's log has the details under that id"
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(BEARER_CHALLENGE),
            );
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(RETRY_AFTER_S),
            );
        }
        response
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AggregationQuery {
    pub axes: Vec<Axis>,
    pub filter: Filter,
    pub csv: bool,
}

/// A time bound: RFC 3339, or a day `YYYY-MM-DD` (its start, UTC).
pub fn parse_time_ms(name: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Ok(t.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{name}: {v:?} is neither RFC 3339 (2026-11-28T00:00:00Z) nor a day (2026-11-28)"
            ))
        })
}

/// Parses and checks the query string parameters; unknown parameters are errors too, so a typo
/// never silently returns unfiltered data.
pub fn parse_aggregation_query(
    params: &HashMap<String, String>,
) -> Result<AggregationQuery, ApiError> {
    const KNOWN: [&str; 11] = [
        "axis_x", "axis_y", "format", "country", "region", "asn", "platform", "arm", "kind",
        "since", "until",
    ];
    for k in params.keys() {
        if !KNOWN.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown parameter {k:?}; expected one of {}",
                KNOWN.join(", ")
            )));
        }
    }
    let mut filter = Filter::default();
    if let Some(c) = params.get("country") {
        if c.len() != 2 || !c.chars().all(|ch| ch.is_ascii_alphabetic()) {
            return Err(ApiError::bad_request(format!(
                "country: {c:?} is not a two-letter country code"
            )));
        }
        filter.country = Some(c.to_ascii_uppercase());
    }
    if let Some(r) = params.get("region") {
        let (cc, sub) = crate::domain::codes::parse_region(r)
            .map_err(|e| ApiError::bad_request(format!("region: {e}")))?;
        let region = crate::domain::codes::region_text(cc, sub);
        if let Some(c) = &filter.country {
            if !region.starts_with(c.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "region: {region} is not in country {c}"
                )));
            }
        }
        filter.region = Some(region);
    }
    if let Some(a) = params.get("asn") {
        let digits = a.strip_prefix("AS").unwrap_or(a);
        filter.asn = Some(
            digits
                .parse()
                .map_err(|_| ApiError::bad_request(format!("asn: {a:?} is not an AS number")))?,
        );
    }
    if let Some(p) = params.get("platform") {
        filter.platform = Some(
            p.parse()
                .map_err(|e| ApiError::bad_request(format!("platform: {e}")))?,
        );
    }
    if let Some(a) = params.get("arm") {
        filter.arm = Some(match a.as_str() {
            "platform" => Role::Platform,
            "control" => Role::Control,
            other => {
                return Err(ApiError::bad_request(format!(
                    "arm: {other:?} is not platform or control"
                )))
            }
        });
    }
    if let Some(k) = params.get("kind") {
        filter.kind = Some(parse_kind(k).map_err(|e| ApiError::bad_request(format!("kind: {e}")))?);
    }
    if let Some(v) = params.get("since") {
        filter.since_ms = Some(parse_time_ms("since", v)?);
    }
    if let Some(v) = params.get("until") {
        filter.until_ms = Some(parse_time_ms("until", v)?);
    }
    let axis = |name: &str| -> Result<Option<Axis>, ApiError> {
        params
            .get(name)
            .map(|v| {
                v.parse()
                    .map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
            })
            .transpose()
    };
    let axis_x = axis("axis_x")?.ok_or_else(|| {
        ApiError::bad_request(
            "axis_x: required (day, hour, country, region, asn, platform, arm, kind)",
        )
    })?;
    let mut axes = vec![axis_x];
    if let Some(y) = axis("axis_y")? {
        if y == axis_x {
            return Err(ApiError::bad_request("axis_y: must differ from axis_x"));
        }
        axes.push(y);
    }
    if axes.contains(&Axis::Hour) {
        let hours = match (filter.since_hour(), filter.until_hour()) {
            (Some(since), until) => {
                let until =
                    until.unwrap_or_else(|| chrono::Utc::now().timestamp().div_euclid(3600) + 1);
                Some(until.saturating_sub(since))
            }
            (None, _) => None,
        };
        if hours.is_none_or(|h| h > MAX_HOURLY_DAYS * 24) {
            return Err(ApiError::bad_request(format!(
                "the hour axis covers at most {MAX_HOURLY_DAYS} days in one query: give since \
                 (and until, default now) at most {MAX_HOURLY_DAYS} days apart, or use the day \
                 axis"
            )));
        }
    }
    let csv = match params.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format: {other:?} is not json or csv"
            )))
        }
    };
    Ok(AggregationQuery { axes, filter, csv })
}

#[derive(Serialize)]
pub struct AggregationBody<'a> {
    pub axis_x: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub axis_y: Option<&'a str>,
    /// The stream kind every cell covers (the `kind` filter, or voice by default); absent when
    /// `kind` is an axis, and each cell says its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// The k threshold cells were published under.
    pub min_agents: usize,
    /// The per-agent cap per fine cell and day the store applies.
    pub max_per_agent_per_day: usize,
    /// The quantile sketches' relative error.
    pub relative_error: f64,
    /// What the whole collector holds (global, unfiltered; refreshed once a minute).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overview: Option<Overview>,
    pub result: Vec<Cell>,
}

impl<'a> AggregationBody<'a> {
    pub fn new(axes: &'a [Axis], filter: &Filter, policy: &Policy, result: Vec<Cell>) -> Self {
        AggregationBody {
            axis_x: axes.first().map(|a| a.as_str()).unwrap_or("day"),
            axis_y: axes.get(1).map(|a| a.as_str()),
            kind: (!axes.contains(&Axis::Kind)).then(|| filter.kind_or_default().as_str()),
            min_agents: policy.min_agents,
            max_per_agent_per_day: policy.max_per_agent_per_day,
            relative_error: relative_error(),
            overview: None,
            result,
        }
    }
}

async fn aggregation(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let q = parse_aggregation_query(&params)?;
    let store = state.store.clone();
    let policy = state.policy;
    let (axes, filter) = (q.axes.clone(), q.filter.clone());
    let cells = state
        .jobs
        .query("aggregation", move || {
            store.aggregate(&axes, &filter, &policy)
        })
        .await?;
    if cells.len() > MAX_CELLS {
        return Err(ApiError::bad_request(format!(
            "the query gives {} cells, more than the {MAX_CELLS} one answer holds: narrow it (a \
             filter, a shorter range, or fewer axes)",
            cells.len()
        )));
    }
    if q.csv {
        return Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            cells_csv(&cells, &q.axes),
        )
            .into_response());
    }
    let mut body = AggregationBody::new(&q.axes, &q.filter, &state.policy, cells);
    body.overview = Some(overview(&state).await?);
    Ok(axum::Json(body).into_response())
}

/// Prometheus text exposition of the collector's counters.
pub fn render_metrics(state: &AppState) -> String {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    metric(
        "callwatch_build_info",
        "gauge",
        "The collector's version and the git commit it was built from (always 1).",
        &[(
            format!(
                "{{version=\"{}\",commit=\"{}\"}}",
                env!("CARGO_PKG_VERSION"),
                crate::GIT_COMMIT
            ),
            1,
        )],
    );
    metric(
        "callwatch_events_open",
        "gauge",
        "Onsets of differential treatment not yet recovered, by platform and scope (network: one \
         country's ASN; country: all its networks), as of the detector's last run.",
        &state.events.open_counts(),
    );
    metric(
        "callwatch_stored_reports",
        "gauge",
        "Reports in the store.",
        &[(String::new(), state.store.len() as u64)],
    );
    if let Some(i) = &state.ingest {
        metric(
            "callwatch_ingest_reports_total",
            "counter",
            "Reports received (over QUIC or TLS over TCP), by outcome.",
            &[
                ("{outcome=\"accepted\"}".into(), i.accepted.load(Relaxed)),
                ("{outcome=\"duplicate\"}".into(), i.duplicate.load(Relaxed)),
            ],
        );
        metric(
            "callwatch_ingest_rejected_total",
            "counter",
            "Reports or requests rejected, by reason.",
            &i.rejected.samples("reason"),
        );
        metric(
            "callwatch_attestations_total",
            "counter",
            "Reports' reflector attestations, by result (valid, absent, or why refused).",
            &i.attest.results.samples("result"),
        );
        metric(
            "callwatch_path_tokens_total",
            "counter",
            "Path tokens of valid attestations, by result (valid, none_made, absent, or why refused).",
            &i.attest.tokens.samples("result"),
        );
        metric(
            "callwatch_uploaded_elsewhere_total",
            "counter",
            "Stored reports attested in one region and uploaded from another (VPN, other network).",
            &[(String::new(), i.uploaded_elsewhere.load(Relaxed))],
        );
        metric(
            "callwatch_reports_hosting_total",
            "counter",
            "Stored reports filed under a hosting, cloud or VPN network (see serve --hosting-asns).",
            &[(String::new(), i.hosting.load(Relaxed))],
        );
        metric(
            "callwatch_reports_reflector_loaded_total",
            "counter",
            "Stored reports whose test was taken under reflector load (figures left out of aggregates).",
            &[(String::new(), i.reflector_loaded.load(Relaxed))],
        );
        metric(
            "callwatch_ingest_batches_total",
            "counter",
            "Upload batches received.",
            &[(String::new(), i.batches.load(Relaxed))],
        );
        metric(
            "callwatch_ingest_connections_refused_total",
            "counter",
            "Connections refused at the connection limit.",
            &[(String::new(), i.connections_refused.load(Relaxed))],
        );
        metric(
            "callwatch_ingest_quic_retries_total",
            "counter",
            "QUIC Retries sent to addresses not yet validated (no slot taken for them).",
            &[(String::new(), i.quic_retries.load(Relaxed))],
        );
        metric(
            "callwatch_ingest_quic_handshake_timeouts_total",
            "counter",
            "QUIC handshakes of validated addresses that did not finish in time.",
            &[(String::new(), i.quic_handshake_timeouts.load(Relaxed))],
        );
        metric(
            "callwatch_ingest_connections_total",
            "counter",
            "Agent connections accepted, by transport (tcp: their QUIC did not get through).",
            &[
                (
                    "{transport=\"quic\"}".into(),
                    i.connections_quic.load(Relaxed),
                ),
                (
                    "{transport=\"tcp\"}".into(),
                    i.connections_tcp.load(Relaxed),
                ),
            ],
        );
    }
    if let Some(r) = &state.reflector {
        let s = r.stats();
        metric(
            "callwatch_reflector_sessions",
            "gauge",
            "Reflector sessions held.",
            &[(String::new(), r.active_sessions() as u64)],
        );
        metric(
            "callwatch_reflector_probes_reflected_total",
            "counter",
            "Probes answered.",
            &[(String::new(), s.probes_reflected)],
        );
        metric(
            "callwatch_reflector_sealed_total",
            "counter",
            "Sealed platform-arm datagrams answered (probe cores masked to the reflector's key).",
            &[(String::new(), s.sealed)],
        );
        metric(
            "callwatch_reflector_bytes_total",
            "counter",
            "Reflector bytes by direction (out never exceeds in).",
            &[
                ("{direction=\"in\"}".into(), s.bytes_in),
                ("{direction=\"out\"}".into(), s.bytes_out),
            ],
        );
        metric(
            "callwatch_reflector_dropped_total",
            "counter",
            "Datagrams the reflector did not answer, by reason.",
            &[
                ("{reason=\"malformed\"}".into(), s.dropped_malformed),
                ("{reason=\"bad_cookie\"}".into(), s.dropped_bad_cookie),
                ("{reason=\"rate\"}".into(), s.dropped_rate),
                ("{reason=\"expired\"}".into(), s.dropped_expired),
                ("{reason=\"table_full\"}".into(), s.dropped_table_full),
                ("{reason=\"prefix_full\"}".into(), s.dropped_prefix_full),
                ("{reason=\"unexpected\"}".into(), s.dropped_unexpected),
            ],
        );
    }
    out
}

/// The parameters of `/api/v1/events`: `country`, `asn` (a number, `AS…`, or `all` for
/// country-wide series only), `platform`, `kind` (onset, recovery), `status` (open, ended),
/// `since`/`until` (when the change began; RFC 3339 or a day), `format` (json, csv). Unknown
/// parameters are errors.
pub fn parse_events_query(
    params: &HashMap<String, String>,
) -> Result<(crate::events::EventFilter, bool), ApiError> {
    use crate::domain::events::{EventKind, EventStatus};
    const KNOWN: [&str; 8] = [
        "country", "asn", "platform", "kind", "status", "since", "until", "format",
    ];
    for k in params.keys() {
        if !KNOWN.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown parameter {k:?}; expected one of {}",
                KNOWN.join(", ")
            )));
        }
    }
    let mut f = crate::events::EventFilter::default();
    // The aggregation's own parsing for what the two share.
    let mut shared: HashMap<String, String> = HashMap::new();
    shared.insert("axis_x".into(), "day".into());
    for name in ["country", "platform", "since", "until"] {
        if let Some(v) = params.get(name) {
            shared.insert(name.into(), v.clone());
        }
    }
    match params.get("asn").map(String::as_str) {
        Some("all") => f.country_wide = true,
        Some(a) => {
            shared.insert("asn".into(), a.into());
        }
        None => {}
    }
    let q = parse_aggregation_query(&shared)?;
    f.since_hour = q.filter.since_hour();
    f.until_hour = q.filter.until_hour();
    f.country = q.filter.country;
    f.asn = q.filter.asn;
    f.platform = q.filter.platform.map(|p| p.to_string());
    if let Some(k) = params.get("kind") {
        f.kind = Some(match k.as_str() {
            "onset" => EventKind::Onset,
            "recovery" => EventKind::Recovery,
            other => {
                return Err(ApiError::bad_request(format!(
                    "kind: {other:?} is not onset or recovery"
                )))
            }
        });
    }
    if let Some(st) = params.get("status") {
        f.status = Some(match st.as_str() {
            "open" => EventStatus::Open,
            "ended" => EventStatus::Ended,
            other => {
                return Err(ApiError::bad_request(format!(
                    "status: {other:?} is not open or ended"
                )))
            }
        });
    }
    let csv = match params.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format: {other:?} is not json or csv"
            )))
        }
    };
    Ok((f, csv))
}

/// The body of `/api/v1/events`.
#[derive(Serialize)]
pub struct EventsBody {
    /// The hour the detector last read up to (RFC 3339).
    pub computed: Option<String>,
    /// The k every event and share was published under.
    pub min_agents: usize,
    /// The detector's constants (docs/EVENTS.md).
    pub detector: DetectorBody,
    pub events: Vec<crate::events::PublishedEvent>,
}

/// The detector's constants as the API states them.
#[derive(Serialize)]
pub struct DetectorBody {
    pub method: &'static str,
    pub p0: f64,
    pub p1: f64,
    pub h_onset: f64,
    pub h_recovery: f64,
    pub support_drop: f64,
}

impl EventsBody {
    pub fn new(
        events: Vec<crate::events::PublishedEvent>,
        computed: Option<i64>,
        policy: &Policy,
        d: &crate::domain::events::Detector,
    ) -> Self {
        EventsBody {
            computed: computed.map(crate::domain::hour_string),
            min_agents: policy.min_agents,
            detector: DetectorBody {
                method: "two Bernoulli CUSUMs on hourly verdict counts (docs/EVENTS.md)",
                p0: d.p0,
                p1: d.p1,
                h_onset: d.h_onset,
                h_recovery: d.h_recovery,
                support_drop: d.support_drop,
            },
            events,
        }
    }
}

async fn current_events(
    state: &AppState,
) -> Result<(Vec<crate::events::PublishedEvent>, Option<i64>), ApiError> {
    let (service, store, policy) = (state.events.clone(), state.store.clone(), state.policy);
    state
        .jobs
        .query("events", move || {
            service.current(store.as_ref(), &policy, false)
        })
        .await
}

async fn events(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (filter, csv) = parse_events_query(&params)?;
    let (all, computed) = current_events(&state).await?;
    let events: Vec<_> = all.into_iter().filter(|e| filter.matches(e)).collect();
    if csv {
        return Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            crate::events::events_csv(&events),
        )
            .into_response());
    }
    Ok(axum::Json(EventsBody::new(
        events,
        computed,
        &state.policy,
        &state.events.detector,
    ))
    .into_response())
}

async fn events_atom(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (filter, csv) = parse_events_query(&params)?;
    if csv {
        return Err(ApiError::bad_request(
            "format: the feed is Atom; use /api/v1/events?format=csv for CSV",
        ));
    }
    let (all, computed) = current_events(&state).await?;
    let events: Vec<_> = all.into_iter().filter(|e| filter.matches(e)).collect();
    Ok((
        [(header::CONTENT_TYPE, "application/atom+xml; charset=utf-8")],
        crate::events::events_atom(&events, computed, ""),
    )
        .into_response())
}

/// The most AS numbers one `/api/v1/networks` request names.
pub const MAX_NETWORKS: usize = 200;

/// `asn=8359,12389` (up to [`MAX_NETWORKS`], `AS` prefixes allowed) → the AS numbers.
pub fn parse_networks_query(params: &HashMap<String, String>) -> Result<Vec<u32>, ApiError> {
    if let Some(k) = params.keys().find(|k| k.as_str() != "asn") {
        return Err(ApiError::bad_request(format!(
            "unknown parameter {k:?}; expected asn"
        )));
    }
    let list = params
        .get("asn")
        .ok_or_else(|| ApiError::bad_request("asn: required, e.g. asn=8359,12389"))?;
    let asns: Vec<u32> = list
        .split(',')
        .map(|a| {
            let digits = a.trim().strip_prefix("AS").unwrap_or(a.trim());
            digits
                .parse()
                .map_err(|_| ApiError::bad_request(format!("asn: {a:?} is not an AS number")))
        })
        .collect::<Result<_, _>>()?;
    if asns.len() > MAX_NETWORKS {
        return Err(ApiError::bad_request(format!(
            "asn: {} AS numbers; at most {MAX_NETWORKS} in one request",
            asns.len()
        )));
    }
    Ok(asns)
}

/// The names of networks, as the collector's region sources give them (public registry data:
/// an ip2asn table's description, a MaxMind ASN database's organization); those without a
/// name are left out.
async fn networks(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let asns = parse_networks_query(&params)?;
    let names: std::collections::BTreeMap<String, String> = asns
        .into_iter()
        .filter_map(|a| {
            let name = state.geo.as_ref()?.asn_name(a)?;
            Some((a.to_string(), name.to_string()))
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "networks": names })).into_response())
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_metrics(&state),
    )
        .into_response()
}

/// Most records one page of `/api/v1/reports` may hold.
pub const MAX_PAGE: usize = 100_000;

/// The parameters of `/api/v1/reports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportsQuery {
    /// Reports received at or after, Unix ms (the public form: floored to the UTC day).
    pub since: i64,
    pub limit: usize,
    /// The full form (needs a researcher token).
    pub full: bool,
    /// The public form's continuation, instead of `since`.
    pub cursor: Option<String>,
}

/// `since` (RFC 3339, a day `YYYY-MM-DD` or Unix milliseconds, inclusive; default: the
/// beginning), `limit`, `full` (`true`/`false`) and, for the public form, `cursor`. The public
/// form applies `since` at day resolution, so that it cannot find a report's arrival time.
pub fn parse_reports_query(params: &HashMap<String, String>) -> Result<ReportsQuery, ApiError> {
    const KNOWN: [&str; 4] = ["since", "limit", "full", "cursor"];
    for k in params.keys() {
        if !KNOWN.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown parameter {k:?}; expected one of {}",
                KNOWN.join(", ")
            )));
        }
    }
    let full = match params.get("full").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "full: {other:?} is not true or false"
            )))
        }
    };
    let since = match params.get("since") {
        None => i64::MIN,
        Some(v) => match v.parse::<i64>() {
            Ok(ms) => ms,
            Err(_) => parse_time_ms("since", v).map_err(|_| {
                ApiError::bad_request(format!(
                    "since: {v:?} is neither RFC 3339 (2026-11-28T00:00:00Z), a day (2026-11-28) \
                     nor Unix milliseconds"
                ))
            })?,
        },
    };
    let since = if full || since == i64::MIN {
        since
    } else {
        since - since.rem_euclid(86_400_000)
    };
    let limit = match params.get("limit") {
        None => 10_000,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("limit: {v:?} is not 1..={MAX_PAGE}")))?,
    };
    let cursor = params.get("cursor").cloned();
    if cursor.is_some() && (full || params.contains_key("since")) {
        return Err(ApiError::bad_request(
            "cursor: continues a public page by itself; give it without since and without full \
             (the full export continues with since = the last received_at + 1 ms)",
        ));
    }
    Ok(ReportsQuery {
        since,
        limit,
        full,
        cursor,
    })
}

/// The header a public page names the next page's cursor in.
pub const NEXT_CURSOR: &str = "x-next-cursor";

/// Raw reports as NDJSON, streamed as they are read: the public, redacted form
/// ([`crate::export::PublicRecord`]), or with `full=true` and a researcher token the full one
/// ([`crate::export::ExportRecord`]).
///
/// A full page holds `limit` records, extended to the end of the last record's millisecond:
/// continue with `since` = that `received_at` + 1 ms. A public page is cut the same way; its
/// `X-Next-Cursor` header names where the next starts (continue with `cursor=`, alone).
async fn reports(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut q = parse_reports_query(&params)?;
    if q.full {
        authorize(&state, &headers).await?;
    } else if let Some(c) = &q.cursor {
        q.since = state.cursors.open(c).ok_or_else(|| {
            ApiError::bad_request(
                "cursor: not one this collector gave (it may have restarted since): start again \
                 from since",
            )
        })?;
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(64);
    let store = state.store.clone();
    let slot = Jobs::slot(&state.jobs.pages, "report pages").await?;
    let runtime = tokio::runtime::Handle::current();
    let tx_err = tx.clone();
    // A client that went away, or takes nothing for PAGE_WRITE_TIMEOUT, stops the read.
    let send = move |line: String| {
        matches!(
            runtime.block_on(tokio::time::timeout(PAGE_WRITE_TIMEOUT, tx.send(Ok(line)))),
            Ok(Ok(()))
        )
    };
    let fail = move |e: crate::store::StoreError| {
        // The page is cut short (the client sees a broken transfer, never the details).
        let id = crate::fault::log_with_id(&format!("HTTP API: reading reports: {e}"));
        let _ = tx_err.blocking_send(Err(std::io::Error::other(format!(
            "internal error (id {id})"
        ))));
    };
    let mut response_headers = vec![(header::CONTENT_TYPE, "application/x-ndjson".to_string())];
    if q.full {
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            if let Err(e) =
                crate::export::page(store.as_ref(), q.since, q.limit, |r| send(r.to_line()))
            {
                fail(e);
            }
        });
    } else {
        let (plan_store, policy, since, limit) = (store.clone(), state.policy, q.since, q.limit);
        let plan = tokio::task::spawn_blocking(move || {
            crate::export::plan_public_page(plan_store.as_ref(), since, limit, &policy)
        })
        .await
        .map_err(|e| ApiError::internal(format!("report page task failed: {e}")))?
        .map_err(|e| ApiError::internal(format!("reading reports: {e}")))?;
        if let Some(page) = plan {
            response_headers.push((
                header::HeaderName::from_static(NEXT_CURSOR),
                state.cursors.seal(page.end),
            ));
            tokio::task::spawn_blocking(move || {
                let _slot = slot;
                let r = crate::export::emit_public_page(store.as_ref(), since, &page, |r| {
                    send(r.to_line())
                });
                if let Err(e) = r {
                    fail(e);
                }
            });
        }
    }
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut response = body.into_response();
    for (name, value) in response_headers {
        if let Ok(v) = header::HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    Ok(response)
}

/// Admits a full export: `Authorization: Bearer <token>` with a token of the data folder's
/// token file, read now (so a revocation applies to the next request). 401 otherwise.
async fn authorize(state: &AppState, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    const HOW: &str = "the full export (agent keys, signatures, signed bodies) needs a researcher \
         token from the collector's operator (callwatch-collector token add), sent as \
         `Authorization: Bearer <token>`; without one, leave out full=true for the public, \
         redacted export";
    let Some(presented) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
    else {
        return Err(ApiError::unauthorized(format!("no bearer token: {HOW}")));
    };
    let Some(data) = state.data_dir.clone() else {
        return Err(ApiError::unauthorized(format!(
            "this collector issues no tokens: {HOW}"
        )));
    };
    let valid = tokio::task::spawn_blocking(move || crate::token::is_valid(&data, &presented))
        .await
        .map_err(|e| ApiError::internal(format!("token check task failed: {e}")))?
        .map_err(|e| ApiError::internal(format!("checking a researcher token: {e:#}")))?;
    if valid {
        Ok(())
    } else {
        Err(ApiError::unauthorized(format!(
            "the bearer token is not valid (unknown or revoked): {HOW}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reports_query_errors_name_the_parameter() {
        let e = |p: &[(&str, &str)]| parse_reports_query(&params(p)).err().unwrap().message;
        assert!(e(&[("since", "yesterday")]).starts_with("since"));
        assert!(e(&[("limit", "0")]).starts_with("limit"));
        assert!(e(&[("limit", "x")]).starts_with("limit"));
        assert!(e(&[("page", "2")]).contains("page"));
        assert!(e(&[("full", "yes")]).starts_with("full"));
        assert!(e(&[("cursor", "x"), ("since", "0")]).starts_with("cursor"));
        assert!(e(&[("cursor", "x"), ("full", "true")]).starts_with("cursor"));
        let ok = |p: &[(&str, &str)]| parse_reports_query(&params(p)).ok().unwrap();
        let full = ok(&[("since", "1000"), ("limit", "5"), ("full", "true")]);
        assert_eq!((full.since, full.limit, full.full), (1000, 5, true));
        let full = ok(&[("since", "1970-01-01T00:00:01Z"), ("full", "true")]);
        assert_eq!(full.since, 1000);
        // The public form pages from the start of the day, never finer.
        let public = ok(&[("since", "2026-11-28T13:14:15.016Z")]);
        assert_eq!((public.since, public.full), (1_795_824_000_000, false));
        assert_eq!(ok(&[("since", "2026-11-28")]).since, 1_795_824_000_000);
        assert_eq!(ok(&[]).since, i64::MIN);
    }

    #[test]
    fn a_cursor_opens_only_where_it_was_sealed() {
        let (a, b) = (CursorKey::default(), CursorKey::default());
        let c = a.seal(1_795_824_123_456);
        assert!(!c.contains("1795824123456"));
        assert_eq!(a.open(&c), Some(1_795_824_123_456));
        assert_ne!(a.seal(5), a.seal(5), "a fresh nonce each time");
        assert_eq!(b.open(&c), None, "another run's key");
        let mut forged = c.into_bytes();
        forged[20] ^= 1;
        assert_eq!(a.open(&String::from_utf8_lossy(&forged)), None);
        assert_eq!(a.open("AAAA"), None);
    }

    /// The hour axis answers at most MAX_HOURLY_DAYS days: an unbounded or longer range is
    /// refused with what to do, a month is answered.
    #[test]
    fn the_hour_axis_covers_a_bounded_range() {
        let q = |p: &[(&str, &str)]| parse_aggregation_query(&params(p));
        let e = q(&[("axis_x", "hour")]).err().unwrap().message;
        assert!(e.contains("at most 31 days") && e.contains("since"), "{e}");
        let e = q(&[
            ("axis_x", "hour"),
            ("since", "2026-01-01"),
            ("until", "2026-02-02"),
        ])
        .err()
        .unwrap()
        .message;
        assert!(e.contains("at most 31 days"), "{e}");
        assert!(q(&[
            ("axis_x", "hour"),
            ("since", "2026-01-01"),
            ("until", "2026-02-01")
        ])
        .is_ok());
        let week_ago = (chrono::Utc::now() - chrono::Duration::days(7))
            .format("%Y-%m-%d")
            .to_string();
        assert!(q(&[
            ("axis_y", "hour"),
            ("axis_x", "country"),
            ("since", &week_ago)
        ])
        .is_ok());
        // Without the hour axis any range is fine.
        assert!(q(&[("axis_x", "day")]).is_ok());
    }

    /// A query that outlasts the time limit is answered 503 with Retry-After while the read goes
    /// on holding its slot, which it gives back when it ends.
    #[tokio::test]
    async fn a_query_over_its_time_limit_is_answered_503_and_holds_its_slot_until_it_ends() {
        let jobs = Jobs {
            time_limit: std::time::Duration::from_millis(50),
            ..Jobs::default()
        };
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let e = jobs
            .query("slow", move || {
                let _ = wait.recv();
                let _ = done_tx.send(());
                Ok(1)
            })
            .await
            .err()
            .unwrap();
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        assert_eq!(
            jobs.queries.available_permits(),
            QUERY_JOBS - 1,
            "the read holds its slot"
        );
        release.send(()).unwrap();
        done.await.unwrap();
        // Every slot comes back once the read has ended (awaited, not polled).
        let all = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            jobs.queries.acquire_many(QUERY_JOBS as u32),
        )
        .await;
        assert!(matches!(all, Ok(Ok(_))), "the slow read gave its slot back");
    }

    #[test]
    fn query_errors_name_the_parameter() {
        let e = |p: &[(&str, &str)]| parse_aggregation_query(&params(p)).err().unwrap().message;
        assert!(e(&[]).starts_with("axis_x"));
        assert!(e(&[("axis_x", "city")]).starts_with("axis_x"));
        assert!(e(&[("axis_x", "country"), ("axis_y", "country")]).starts_with("axis_y"));
        assert!(e(&[("axis_x", "country"), ("format", "xml")]).starts_with("format"));
        assert!(e(&[("axis_x", "country"), ("axsi_y", "asn")]).contains("axsi_y"));
        assert!(e(&[("axis_x", "day"), ("country", "Russia")]).starts_with("country"));
        assert!(e(&[("axis_x", "day"), ("asn", "x1")]).starts_with("asn"));
        assert!(e(&[("axis_x", "day"), ("platform", "icq")]).starts_with("platform"));
        assert!(e(&[("axis_x", "day"), ("until", "soon")]).starts_with("until"));
        assert!(e(&[("axis_x", "day"), ("kind", "audio")]).starts_with("kind"));
        assert!(e(&[("axis_x", "day"), ("region", "RU")]).starts_with("region"));
        assert!(e(&[("axis_x", "day"), ("region", "RU-MOSCOW")]).starts_with("region"));
        assert!(
            e(&[("axis_x", "day"), ("region", "RU-MOW"), ("country", "DE")])
                .starts_with("region: RU-MOW is not in country DE")
        );
        let q = parse_aggregation_query(&params(&[("axis_x", "region"), ("region", "ru-mow")]))
            .ok()
            .unwrap();
        assert_eq!(q.axes, vec![Axis::Region]);
        assert_eq!(q.filter.region.as_deref(), Some("RU-MOW"));
        assert!(
            e(&[("axis_x", "town")]).contains("region"),
            "the axes are listed"
        );
        assert!(
            e(&[("axis_x", "town")]).contains("kind"),
            "the axes are listed"
        );
        let q = parse_aggregation_query(&params(&[("axis_x", "kind"), ("kind", "video")]))
            .ok()
            .unwrap();
        assert_eq!(q.axes, vec![Axis::Kind]);
        assert_eq!(
            q.filter.kind,
            Some(callwatch_proto::report::StreamKind::Video)
        );
        let f = parse_aggregation_query(&params(&[
            ("axis_x", "day"),
            ("country", "ru"),
            ("asn", "AS12389"),
            ("since", "2026-11-01"),
        ]))
        .ok()
        .unwrap()
        .filter;
        assert_eq!(f.country.as_deref(), Some("RU"));
        assert_eq!(f.asn, Some(12389));
        assert_eq!(f.since_ms, Some(1_793_491_200_000)); // 2026-11-01T00:00:00Z
        let q = parse_aggregation_query(&params(&[
            ("axis_x", "country"),
            ("axis_y", "platform"),
            ("format", "csv"),
        ]))
        .ok()
        .unwrap();
        assert_eq!(q.axes, vec![Axis::Country, Axis::Platform]);
        assert!(q.csv);
    }

    #[tokio::test]
    async fn a_server_fault_says_internal_error_and_an_id_never_the_details() {
        let details = "ClickHouse at 10.0.0.5:8123: Code: 241. DB::Exception: Memory limit";
        let e = ApiError::internal(details);
        assert!(!e.message.contains("10.0.0.5") && !e.message.contains("Exception"));
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let text = json["error"].as_str().unwrap();
        assert!(text.starts_with("internal error (id "), "{text}");
        assert!(
            !text.contains("10.0.0.5") && !text.contains("8123"),
            "{text}"
        );
        // Two faults get two ids (the log tells them apart).
        let (a, b) = (
            ApiError::internal("x").message,
            ApiError::internal("x").message,
        );
        assert_ne!(a, b);
    }
}
