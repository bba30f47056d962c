//! The reflector as a program: its keys from its data folder, region attestations from its
//! region sources, on its UDP addresses, until SIGTERM or Ctrl-C.
//!
//! One implementation for every way it runs: the `callwatch-reflector` binary and the
//! collector's `reflect` subcommand both parse [`ReflectArgs`] and call [`run`]; the collector's
//! `serve` embeds the same reflector through [`start`] (with its own region sources and its
//! carry-out key).

use crate::geo::Geo;
use crate::term::Stop;
use crate::{spawn_reflector_with, Bind, Driver, Limits, ReflectorHandle, RegionLookup};
use anyhow::{Context, Result};
use callwatch_proto::carry::CarryKey;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The reflector with its long-term keys from `data` (`reflector.key`, made on first start;
/// public halves written to `reflector.pub` and `reflector-attest.pub`, see
/// [`crate::identity`]), signing region attestations looked up with `lookup`, with path tokens
/// sealed to `collector` when given. Returns it with its attestation key's public half.
pub async fn start(
    data: &Path,
    addrs: &[SocketAddr],
    limits: Limits,
    driver: Driver,
    bind: Bind,
    lookup: RegionLookup,
    collector: Option<CarryKey>,
) -> Result<(ReflectorHandle, ed25519_dalek::VerifyingKey)> {
    let seal = crate::identity::load_or_create(data)?;
    let attest_key = crate::identity::load_or_create_attestation(data)?;
    let attest_pub = attest_key.verifying_key();
    let reflector = spawn_reflector_with(
        addrs,
        limits,
        seal,
        Some((attest_key, lookup, collector)),
        driver,
        bind,
    )
    .await
    .context("starting the reflector")?;
    Ok((reflector, attest_pub))
}

/// A standalone reflector: nothing else runs beside it (no ingest, no store, no HTTP).
#[derive(Clone, Debug)]
pub struct ReflectConfig {
    /// Its own data folder: `reflector.key` and the public halves.
    pub data_dir: PathBuf,
    /// UDP addresses (one socket each).
    pub reflectors: Vec<SocketAddr>,
    /// Region sources for its attestations (ip2asn TSV or MaxMind DB files, see [`Geo`]).
    pub geo_files: Vec<PathBuf>,
    pub limits: Limits,
    /// The collector's carry-out key (its `collector.seal.pub`): path tokens are sealed to it.
    /// `None`: attestations without path tokens.
    pub collector_key: Option<CarryKey>,
}

/// A running standalone reflector.
pub struct StandaloneReflector {
    pub reflector: ReflectorHandle,
    /// Its attestation key's public half (what `reflector add` on the collector needs).
    pub attest_key: ed25519_dalek::VerifyingKey,
}

/// Starts a standalone reflector (see [`ReflectConfig`]).
pub async fn reflect(cfg: ReflectConfig) -> Result<StandaloneReflector> {
    crate::files::ensure_private_dir(&cfg.data_dir)?;
    let geo = Arc::new(Geo::load(cfg.geo_files.iter())?);
    let (reflector, attest_key) = start(
        &cfg.data_dir,
        &cfg.reflectors,
        cfg.limits,
        Driver::default(),
        Bind::Every,
        geo.region_lookup(),
        cfg.collector_key,
    )
    .await?;
    Ok(StandaloneReflector {
        reflector,
        attest_key,
    })
}

/// The standalone reflector's options: `callwatch-reflector` and `callwatch-collector reflect`
/// take exactly these.
#[derive(Clone, Debug, clap::Args)]
pub struct ReflectArgs {
    /// The reflector's own data folder (created owner-only if missing): its key
    /// (reflector.key) and the public halves (reflector.pub, reflector-attest.pub).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// UDP address to reflect on; repeat for several ports (e.g. one per platform profile).
    #[arg(
        long = "reflector",
        visible_alias = "listen",
        value_name = "ADDR",
        required = true
    )]
    pub reflectors: Vec<SocketAddr>,
    /// Region source, repeatable: a MaxMind DB (GeoLite2-Country/-City/-ASN, DB-IP lite) or an
    /// ip2asn TSV table, told apart by content (as `callwatch-collector serve --geo`). Without
    /// any, every probe is attested as country ZZ, AS0.
    #[arg(long, value_name = "FILE")]
    pub geo: Vec<PathBuf>,
    /// The collector's carry-out key (64 hex digits, its collector.seal.pub): with it the
    /// reflector also seals each test's network prefix (/24, /48) to the collector, for its
    /// Sybil accounting; the agent cannot read it and it is never exported. Without it,
    /// attestations carry no prefix.
    #[arg(long = "collector-key", value_name = "HEX")]
    pub collector_key: Option<CarryKey>,
}

/// Runs a standalone reflector until SIGTERM or SIGINT (Ctrl-C), then stops its threads and
/// returns. Prints its keys and addresses on standard output once it is up.
pub async fn run(args: ReflectArgs) -> Result<()> {
    // Before anything is printed: whoever reads "reflector on udp" may signal at once, and the
    // signal must find the handler (not the default action, which kills the process).
    let stop = Stop::install()?;
    let r = reflect(ReflectConfig {
        data_dir: args.data,
        reflectors: args.reflectors,
        geo_files: args.geo,
        limits: Limits::default(),
        collector_key: args.collector_key,
    })
    .await?;
    println!(
        "reflector key (agents' reflector_key; also in reflector.pub): {}",
        r.reflector.seal_key
    );
    println!(
        "attestation key (for `reflector add` on the collector; also in reflector-attest.pub): {}",
        hex::encode(r.attest_key.as_bytes())
    );
    for a in &r.reflector.addrs {
        println!("reflector on udp {a}");
    }
    let signal = stop.wait().await;
    tracing::info!("{signal} received: shutting down");
    r.reflector.shutdown();
    Ok(())
}
