//! `serve`: the whole collector in one process — QUIC and TLS-over-TCP ingest, store, reflector
//! and HTTP API. The reflector is `callwatch-reflector`'s, started as the standalone one is
//! ([`callwatch_reflector::standalone::start`]), with the collector's region sources and its
//! carry-out key for path tokens.

use crate::cert;
use crate::geo::Geo;
use crate::http::{router, AppState};
use crate::ingest::{spawn_ingest, Ingest, IngestConfig};
use crate::store::{ReportStore, SledStore};
use anyhow::{Context, Result};
use callwatch_proto::profile::{reflector_ports, Endpoints};
use callwatch_reflector::{Bind, Driver, Limits, ReflectorHandle};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Data folder: certificate, key, pin and the store.
    pub data_dir: PathBuf,
    /// QUIC ingest address.
    pub listen: SocketAddr,
    /// TLS-over-TCP ingest address (the fallback for agents whose QUIC does not get through);
    /// `None`: the same address and port as `listen` (with port 0, a free port of its own).
    pub tcp: Option<SocketAddr>,
    /// Reflector UDP addresses (one socket each).
    pub reflectors: Vec<SocketAddr>,
    /// Whether every reflector address must be bound ([`Bind::Every`]: the operator named
    /// them) or the reflector goes on with those it can ([`Bind::WhatItCan`]: the default,
    /// every profile's ports, where a port below 1024 may be refused); agents are told which
    /// platforms it serves either way ([`Collector::endpoints`]).
    pub reflector_bind: Bind,
    /// HTTP API address.
    pub http: SocketAddr,
    /// Region source: ip2asn TSV or MaxMind DB (told from the content); without any source
    /// every sender is `ZZ`/AS0.
    pub geo: Option<PathBuf>,
    /// More region sources, looked up in order after `geo` for what it does not know.
    pub geo_files: Vec<PathBuf>,
    pub reflector_limits: Limits,
    /// How the reflector's threads receive and send (the default unless measuring).
    pub reflector_driver: Driver,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Upload rate limits per source address and per agent key.
    pub rate_limits: crate::ingest::RateLimits,
    /// How many days after a test's day its network prefix can still be tagged
    /// ([`crate::attest::TAG_KEY_DAYS`]; tests of historical fixtures raise it).
    pub tag_key_days: i64,
    /// Publication rules for aggregates (k threshold, per-agent cap).
    pub policy: crate::domain::Policy,
    /// Networks whose reports are marked `hosting` (default: the built-in list).
    pub hosting: crate::geo::hosting::HostingAsns,
    /// How often, at most, a request reruns the event detector when reports arrived since its
    /// last run (it also reruns every [`crate::events::REFRESH`] and when the hour changes).
    pub events_min_interval: std::time::Duration,
    /// How often the store's published roll-ups are brought up to date (at start, then every
    /// this long; [`ROLL_UP_EVERY`] by default). `None`: never (a benchmark that keeps them
    /// itself, as of its data's time).
    pub roll_up_every: Option<std::time::Duration>,
}

impl ServeConfig {
    /// Defaults for everything but the data folder: all on loopback with the usual ports.
    pub fn new(data_dir: PathBuf) -> Self {
        ServeConfig {
            data_dir,
            listen: "127.0.0.1:4433".parse().expect("literal address"),
            tcp: None,
            reflectors: profile_ports(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            reflector_bind: Bind::WhatItCan,
            http: "127.0.0.1:8080".parse().expect("literal address"),
            geo: None,
            geo_files: Vec::new(),
            reflector_limits: Limits::default(),
            reflector_driver: Driver::default(),
            max_connections: 1024,
            max_connections_per_ip: 16,
            rate_limits: crate::ingest::RateLimits::default(),
            tag_key_days: crate::attest::TAG_KEY_DAYS,
            policy: crate::domain::Policy::default(),
            hosting: Default::default(),
            events_min_interval: std::time::Duration::from_secs(10),
            roll_up_every: Some(ROLL_UP_EVERY),
        }
    }
}

/// A running collector.
pub struct Collector {
    pub quic_addr: SocketAddr,
    /// Where the TLS-over-TCP ingest listens.
    pub tcp_addr: SocketAddr,
    /// The carry-out key agents seal exported queues to (its public half).
    pub carry_key: callwatch_proto::carry::CarryKey,
    pub http_addr: SocketAddr,
    pub pin: String,
    pub reflector: ReflectorHandle,
    /// Which platforms the reflector serves, on which ports, and why not the others: what
    /// agents are told ([`callwatch_proto::upload::Request::Endpoints`]).
    pub endpoints: Endpoints,
    pub ingest: Ingest,
    pub store: Arc<dyn ReportStore>,
    http_task: tokio::task::JoinHandle<()>,
    events_task: tokio::task::JoinHandle<()>,
    /// `None` when `roll_up_every` is.
    rollup_task: Option<tokio::task::JoinHandle<()>>,
}

impl Collector {
    /// Stops every part; returns when the QUIC endpoint is idle.
    pub async fn shutdown(self) {
        self.reflector.shutdown();
        self.http_task.abort();
        self.events_task.abort();
        if let Some(t) = &self.rollup_task {
            t.abort();
        }
        self.ingest.shutdown().await;
    }
}

/// Starts the collector. Addresses with port 0 get a free port; the bound ones are in the result.
pub async fn serve(cfg: ServeConfig) -> Result<Collector> {
    callwatch_reflector::files::ensure_private_dir(&cfg.data_dir)?;
    let store: Arc<dyn ReportStore> = Arc::new(
        SledStore::open_with_policy(&crate::store::config::sled_path(&cfg.data_dir), &cfg.policy)
            .context("opening the report store")?,
    );
    serve_with_store(cfg, store).await
}

/// Starts the collector on a store the caller opened (another backend, or a wrapped one).
pub async fn serve_with_store(cfg: ServeConfig, store: Arc<dyn ReportStore>) -> Result<Collector> {
    let identity = cert::load_or_create(&cfg.data_dir)?;
    let geo = Arc::new(Geo::load(cfg.geo.iter().chain(&cfg.geo_files))?);
    // The reflector attests the region of the probes' address with the same region sources
    // (never the address itself); the collector accepts its own reflector's attestations and
    // the registered standalone reflectors' (followed as the registry changes). Path tokens
    // are sealed to the collector's carry-out key, which opens them at ingest.
    let carry = crate::carry::load_or_create(&cfg.data_dir)?;
    let (reflector, attest_pub) = callwatch_reflector::standalone::start(
        &cfg.data_dir,
        &cfg.reflectors,
        cfg.reflector_limits,
        cfg.reflector_driver,
        cfg.reflector_bind,
        geo.clone().region_lookup(),
        Some(carry.public()),
    )
    .await?;
    let endpoints = endpoints_of(&reflector);
    let attest_keys = crate::attest::AttestKeys::with_registry(attest_pub, &cfg.data_dir)?;
    // The address agents are told for the collector's own reflector: where generic tests go
    // (the first bound one when there are none).
    let own_addr: Vec<SocketAddr> = endpoints
        .get(callwatch_proto::Platform::Generic)
        .ok()
        .and_then(|g| reflector.addrs.iter().find(|a| a.port() == g.platform_port))
        .or(reflector.addrs.first())
        .copied()
        .into_iter()
        .collect();
    let directory = crate::reflector::registry::directory(
        &cfg.data_dir,
        &own_addr,
        reflector.seal_key,
        &attest_pub,
    );
    let ingest = spawn_ingest(IngestConfig {
        listen: cfg.listen,
        tcp: Some(cfg.tcp.unwrap_or(cfg.listen)),
        carry_key: Some(carry.public()),
        cert: identity.cert,
        key: identity.key,
        store: store.clone(),
        geo: geo.clone(),
        max_connections: cfg.max_connections,
        max_connections_per_ip: cfg.max_connections_per_ip,
        rate_limits: cfg.rate_limits,
        filer: crate::attest::Filer {
            keys: attest_keys,
            hosting: cfg.hosting.clone(),
            paths: Some(Arc::new(crate::attest::PathTokens::keeping(
                carry.clone(),
                cfg.tag_key_days,
            ))),
        },
        reflectors: directory,
        endpoints: endpoints.clone(),
    })?;
    let quic_addr = ingest.local_addr()?;
    let tcp_addr = ingest.tcp_addr.context("the TCP ingest listener")?;
    // A token file others can read, or a damaged one, stops the start (naming it) rather than
    // failing every full export later.
    crate::token::Tokens::load(&cfg.data_dir)?;
    let listener = tokio::net::TcpListener::bind(cfg.http)
        .await
        .with_context(|| format!("binding HTTP API on {}", cfg.http))?;
    let http_addr = listener.local_addr()?;
    let events = crate::events::EventsService {
        min_interval: cfg.events_min_interval,
        touched: Some(ingest.stats.touched.clone()),
        ..Default::default()
    };
    let events_task = spawn_events_refresh(events.clone(), store.clone(), cfg.policy);
    let rollup_task = cfg
        .roll_up_every
        .map(|every| spawn_roll_ups(store.clone(), cfg.policy, every));
    let app = router(AppState {
        store: store.clone(),
        ingest: Some(ingest.stats.clone()),
        reflector: Some(reflector.stats_source()),
        policy: cfg.policy,
        overview: Default::default(),
        jobs: Default::default(),
        data_dir: Some(cfg.data_dir.clone()),
        cursors: Default::default(),
        events: events.clone(),
        geo: Some(geo.clone()),
    });
    // Without TCP_NODELAY (axum's default), an answer's last partial segment may wait for the
    // client's delayed acknowledgement of the segments before it (not seen in our measurements,
    // but the setting axum's own documentation gives).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY on an API connection: {e}");
        }
    });
    let http_task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("HTTP API stopped: {e}");
        }
    });
    Ok(Collector {
        quic_addr,
        tcp_addr,
        carry_key: carry.public(),
        http_addr,
        pin: identity.pin,
        reflector,
        endpoints,
        ingest,
        store,
        http_task,
        events_task,
        rollup_task,
    })
}

/// Reruns the event detector every [`crate::events::REFRESH`], so that the gauge and the feed
/// move on with the hours even when nobody asks (a request refreshes too when reports arrived).
fn spawn_events_refresh(
    events: crate::events::EventsService,
    store: Arc<dyn ReportStore>,
    policy: crate::domain::Policy,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::events::REFRESH);
        loop {
            tick.tick().await;
            let (events, store) = (events.clone(), store.clone());
            let done =
                tokio::task::spawn_blocking(move || events.current(store.as_ref(), &policy, true))
                    .await;
            match done {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("event detection: {e}"),
                Err(e) => tracing::warn!("event detection task: {e}"),
            }
        }
    })
}

/// How often the store's published roll-ups are brought up to date ([`ReportStore::roll_up`]):
/// a day is recomputed at most this long after it closed or a late upload reached it (queries
/// read it from its day cells meanwhile, as exactly).
pub const ROLL_UP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Brings the store's roll-ups up to date at start and every `every`.
fn spawn_roll_ups(
    store: Arc<dyn ReportStore>,
    policy: crate::domain::Policy,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let store = store.clone();
            let now = chrono::Utc::now().timestamp_millis();
            match tokio::task::spawn_blocking(move || store.roll_up(&policy, now)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("bringing the roll-ups up to date: {e}"),
                Err(e) => tracing::warn!("roll-up task: {e}"),
            }
        }
    })
}

/// Every built-in profile's reflector port on `ip`: what `serve` listens on by default.
pub fn profile_ports(ip: IpAddr) -> Vec<SocketAddr> {
    reflector_ports()
        .into_iter()
        .map(|port| SocketAddr::new(ip, port))
        .collect()
}

/// What a running reflector serves, from the ports it bound and those it could not.
pub fn endpoints_of(reflector: &ReflectorHandle) -> Endpoints {
    let bound: Vec<u16> = reflector.addrs.iter().map(SocketAddr::port).collect();
    let unbound: Vec<(u16, String)> = reflector
        .unbound
        .iter()
        // A port bound on another address (e.g. IPv4 but not IPv6) is served.
        .filter(|(a, _)| !bound.contains(&a.port()))
        .map(|(a, why)| (a.port(), why.clone()))
        .collect();
    Endpoints::from_ports(&bound, &unbound)
}

/// The platforms `endpoints` serves, as "generic (udp 40401), whatsapp (udp 3478, control
/// 40400), …", or "nothing" (what `serve` prints once it is up).
pub fn describe_served(endpoints: &Endpoints) -> String {
    if endpoints.served.is_empty() {
        return "nothing".into();
    }
    endpoints
        .served
        .iter()
        .map(|s| match s.control_port {
            Some(c) => format!("{} (udp {}, control {c})", s.platform, s.platform_port),
            None => format!("{} (udp {})", s.platform, s.platform_port),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
