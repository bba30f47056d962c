//! `callwatch-collector`: the operator's program.

use anyhow::{Context, Result};
use callwatch_collector::{serve, ServeConfig};
use clap::{Parser, Subcommand};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "callwatch-collector",
    version = callwatch_collector::VERSION,
    about = "Receives signed call-quality reports from callwatch agents, stores and aggregates them, and runs the UDP reflector agents test against.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector: QUIC and TLS-over-TCP ingest, reflector and HTTP API.
    ///
    /// On first start a self-signed certificate is made in DIR and its SHA-256 fingerprint is
    /// printed and written to DIR/collector.pin; give it to agents with
    /// `callwatch-agent init --pin`. A carry-out key is made too (DIR/collector.seal.key,
    /// owner-only); its public half is printed and written to DIR/collector.seal.pub, and agents
    /// learn it with their first upload (see `import`).
    ///
    /// Agents upload over QUIC and fall back to TLS over TCP where QUIC does not get through:
    /// both listen by default on the same port number (--tcp moves TCP, e.g. to 443). Reports
    /// up to 180 days old are accepted (queued through a long block, or carried out).
    ///
    /// Example:
    ///   callwatch-collector serve --data /var/lib/callwatch --listen 0.0.0.0:4433 \
    ///       --reflector-ip 0.0.0.0 --http 127.0.0.1:8080 \
    ///       --geo GeoLite2-Country.mmdb --geo GeoLite2-ASN.mmdb
    #[command(verbatim_doc_comment)]
    Serve {
        /// Data folder (created owner-only if missing).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// QUIC address agents upload to.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4433")]
        listen: SocketAddr,
        /// TLS-over-TCP address agents fall back to when QUIC fails (default: the --listen
        /// address and port, on TCP). Same certificate, same frames, same rules.
        #[arg(long, value_name = "ADDR")]
        tcp: Option<SocketAddr>,
        /// The reflector listens on every platform profile's UDP port at this address (599,
        /// 1400, 3478, 40400, 40401, 50000), going on without those it cannot bind (ports below
        /// 1024 need CAP_NET_BIND_SERVICE); it says which platforms that leaves unavailable,
        /// and agents are told which it serves.
        #[arg(long = "reflector-ip", value_name = "IP", default_value = "127.0.0.1")]
        reflector_ip: IpAddr,
        /// Instead of --reflector-ip: exactly these UDP addresses (repeat for several), each
        /// of which must bind. Agents are told the platforms whose ports are among them.
        #[arg(
            long = "reflector",
            value_name = "ADDR",
            conflicts_with = "reflector_ip"
        )]
        reflectors: Vec<SocketAddr>,
        /// HTTP API address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// Region source, repeatable: a MaxMind DB (GeoLite2-Country/-City/-ASN, DB-IP lite) or
        /// an ip2asn TSV table, told apart by content. Country and ASN each come from the first
        /// source that knows them; the region (first subdivision, RU-MOW) from a City database
        /// that knows it in that country. Without any every sender is country ZZ, AS0.
        #[arg(long, value_name = "FILE")]
        geo: Vec<PathBuf>,
        /// Publish an aggregate cell only from the UTC days on which at least K distinct agents
        /// on K distinct network prefixes stood behind it.
        #[arg(long = "min-agents", default_value_t = 3, value_name = "K")]
        min_agents: usize,
        /// Count one agent's reports at most N times per cell and day.
        #[arg(long = "max-per-agent-day", default_value_t = 24, value_name = "N")]
        max_per_agent_day: usize,
        /// Count one network prefix's reports at most N times per cell and day.
        #[arg(long = "max-per-prefix-day", default_value_t = 240, value_name = "N")]
        max_per_prefix_day: usize,
        /// Hosting, cloud and VPN networks to mark (reports filed under them are flagged
        /// `hosting`, so researchers can leave them out): a file changing the built-in list,
        /// one AS number per line (`64500` or `AS64500` adds, `-64500` takes a built-in one
        /// out, `#` comments).
        #[arg(long = "hosting-asns", value_name = "FILE")]
        hosting_asns: Option<PathBuf>,
        /// Rerun the onset detector (GET /api/v1/events) for a request at most once per this
        /// many seconds when reports arrived since its last run; it also reruns each new hour,
        /// and every 5 minutes unless it ran within this many seconds (at most 150).
        #[arg(
            long = "events-min-interval",
            default_value_t = 10,
            value_name = "SECONDS"
        )]
        events_min_interval: u64,
        /// Check the options and the files they name (region sources, the hosting list, the
        /// store's config and password file), print `options ok` and exit 0 — or name what is
        /// wrong and exit 1 (64 for an unknown or malformed option) — without opening the store,
        /// binding a port or touching the data folder. The Debian package's postinst runs it
        /// before restarting an upgraded collector.
        #[arg(long)]
        check: bool,
        /// How the reflector receives and sends: `batched` (recvmmsg/sendmmsg) or `single`
        /// (one recvmsg/sendto per datagram). For measuring one against the other
        /// (callwatch-reflector-load); hidden, the default is the one to run.
        #[arg(long = "reflector-driver", value_name = "DRIVER", hide = true)]
        reflector_driver: Option<callwatch_reflector::Driver>,
        /// Most reflector sessions held at once for one source prefix (IPv4 /24, IPv6 /48).
        /// For load tools that open many sessions from loopback
        /// (callwatch-reflector-load); hidden, the default is the one to run.
        #[arg(long = "reflector-sessions-per-prefix", value_name = "N", hide = true)]
        reflector_sessions_per_prefix: Option<usize>,
        #[command(flatten)]
        store: callwatch_collector::store::config::StoreArgs,
    },
    /// Export from a stopped collector's store: raw signed reports (ndjson) or aggregates.
    ///
    /// ndjson: the full export, one report per line with its exact signed body, agent key,
    /// signature and arrival to the millisecond (check them with `verify`) — what the HTTP API
    /// gives only with a researcher token (see `token`); json/csv: the aggregate by --axis-x
    /// [and --axis-y], as the HTTP API gives it.
    ///
    /// --events: the onsets and recoveries of differential treatment (json or csv; the
    /// detector run over the whole store now, as GET /api/v1/events answers; --country,
    /// --asn, --platform, --since and --until filter them, --since/--until by when the change
    /// began).
    ///
    /// Examples:
    ///   callwatch-collector export --data /var/lib/callwatch > reports.ndjson
    ///   callwatch-collector export --data /var/lib/callwatch --format csv --axis-x asn --axis-y platform
    ///   callwatch-collector export --data /var/lib/callwatch --events --format csv
    #[command(verbatim_doc_comment)]
    Export {
        /// The stopped collector's data folder (with the default sled store).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[command(flatten)]
        store: callwatch_collector::store::config::StoreArgs,
        #[arg(long, value_enum, default_value = "ndjson")]
        format: ExportFormat,
        /// Export the events (onsets and recoveries) instead of reports or cells; with json
        /// (the default for --events) or csv.
        #[arg(long)]
        events: bool,
        /// With json/csv: day, hour, country, region, asn, platform, arm or kind.
        #[arg(long = "axis-x", default_value = "country")]
        axis_x: String,
        /// With json/csv: a second axis (the same choices as --axis-x, not the same one).
        #[arg(long = "axis-y", value_name = "AXIS")]
        axis_y: Option<String>,
        /// With ndjson: only reports received at or after this time. With json/csv: only tests
        /// started at or after it. RFC 3339 or a day (2026-11-28).
        #[arg(long)]
        since: Option<String>,
        /// With json/csv: only tests started before this time (RFC 3339 or a day).
        #[arg(long)]
        until: Option<String>,
        /// With json/csv: only this country (two letters).
        #[arg(long)]
        country: Option<String>,
        /// With json/csv: only this region, an ISO 3166-2 subdivision code (RU-MOW).
        #[arg(long)]
        region: Option<String>,
        /// With json/csv: only this AS number.
        #[arg(long)]
        asn: Option<String>,
        /// With json/csv: only this platform.
        #[arg(long)]
        platform: Option<String>,
        /// With json/csv: only this arm (platform or control); by default platform arms, unless
        /// arm is an axis.
        #[arg(long)]
        arm: Option<String>,
        /// With json/csv: only this stream kind (voice or video); by default voice, unless kind
        /// is an axis.
        #[arg(long)]
        kind: Option<String>,
        /// With json/csv: the k threshold (see `serve --min-agents`).
        #[arg(long = "min-agents", default_value_t = 3, value_name = "K")]
        min_agents: usize,
    },
    /// Copy a stopped collector's sled store into ClickHouse, in batches, with progress on
    /// stderr. Resumable and idempotent: re-running copies only what is missing.
    ///
    /// Credentials come from CALLWATCH_CLICKHOUSE_USER and CALLWATCH_CLICKHOUSE_PASSWORD.
    ///
    /// Example:
    ///   callwatch-collector migrate --from /var/lib/callwatch --to clickhouse://10.0.0.5:8123/callwatch
    #[command(verbatim_doc_comment)]
    Migrate {
        /// The collector's data folder (holding reports.sled).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// clickhouse://host:8123/db, http://host:8123/db or https://host:8443/db (database
        /// "callwatch" if none).
        #[arg(long, value_name = "URL")]
        to: String,
        /// PEM file of the certificate authorities to trust for an https:// URL [default:
        /// Mozilla's roots].
        #[arg(long = "clickhouse-ca-file", value_name = "FILE")]
        clickhouse_ca_file: Option<PathBuf>,
        /// Reports per insert.
        #[arg(long, default_value_t = 5000, value_name = "N")]
        batch: usize,
    },
    /// Import a carry-out file (`callwatch-agent export-queue`) into a stopped collector's store.
    ///
    /// The file is opened with DIR/collector.seal.key; each report is verified and stored by the
    /// same rules as an upload (signature, schema, at most 180 days old, one copy per report:
    /// a report uploaded or imported before counts as a duplicate). A report is filed under the
    /// region its reflector attested (when the attestation is valid under this collector's
    /// reflector key or a registered standalone reflector's, see `reflector`), else under
    /// unknown region (ZZ, AS0), never under the importer's address.
    /// One result per line, then a summary; a damaged line is rejected alone, with its line
    /// number and why. A file sealed to another collector, truncated, or not a carry-out file is
    /// refused as a whole and nothing is stored. Exit 0 when no line was rejected, 1 otherwise.
    ///
    /// Example:
    ///   callwatch-collector import --data /var/lib/callwatch carried.cwq
    #[command(verbatim_doc_comment)]
    Import {
        /// The stopped collector's data folder (its carry-out key and, by default, its store).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[command(flatten)]
        store: callwatch_collector::store::config::StoreArgs,
        /// Hosting, cloud and VPN networks to mark (reports filed under them are flagged
        /// `hosting`, so researchers can leave them out): a file changing the built-in list,
        /// one AS number per line (`64500` or `AS64500` adds, `-64500` takes a built-in one
        /// out, `#` comments).
        #[arg(long = "hosting-asns", value_name = "FILE")]
        hosting_asns: Option<PathBuf>,
        /// The carry-out file.
        file: PathBuf,
    },
    /// Run a standalone reflector only: no ingest, no store, no HTTP API.
    ///
    /// The same as the `callwatch-reflector` binary (same options, same code), kept for
    /// existing deployments; new ones can install that binary alone.
    ///
    /// For reflectors in other places than the collector. Its own key is made in DIR on first
    /// start (DIR/reflector.key, owner-only); the public halves are printed and written to
    /// DIR/reflector.pub (the sealing key agents need) and DIR/reflector-attest.pub (the
    /// attestation key the collector needs). Register it on the collector with
    /// `callwatch-collector reflector add`. It signs the region (country, ASN) its probes come
    /// from, looked up in the --geo sources; without any it attests ZZ/AS0. Stops on SIGTERM or
    /// Ctrl-C.
    ///
    /// Example:
    ///   callwatch-collector reflect --data /var/lib/callwatch-reflector \
    ///       --reflector 0.0.0.0:3479 --geo GeoLite2-Country.mmdb --geo GeoLite2-ASN.mmdb
    #[command(verbatim_doc_comment)]
    Reflect(callwatch_reflector::standalone::ReflectArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// Example:
    ///   callwatch-collector completions bash > /etc/bash_completion.d/callwatch-collector
    #[command(verbatim_doc_comment)]
    Completions {
        /// The shell to complete in.
        #[arg(value_name = "SHELL")]
        shell: callwatch_reflector::term::Shell,
    },
    /// Write the man pages (callwatch-collector.1 and one per command) into DIR.
    ///
    /// Example:
    ///   callwatch-collector manpages /usr/local/share/man/man1 && man callwatch-collector
    #[command(verbatim_doc_comment)]
    Manpages {
        /// The folder to write the pages into (made if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Register, revoke and list standalone reflectors (DIR/reflectors.json, owner-only).
    ///
    /// The collector accepts region attestations signed by its own reflector and by every
    /// registered reflector that is not revoked, and tells agents about them with their uploads.
    /// Changes take effect on a running collector at its next report (no restart).
    #[command(subcommand)]
    Reflector(ReflectorCommand),
    /// Issue, list and revoke researcher tokens for the full raw export (DIR/tokens.json,
    /// owner-only, holding only each token's SHA-256).
    ///
    /// /api/v1/reports is public and redacted: no agent keys, signatures or signed bodies,
    /// times to the hour, the ASN only where its aggregate cell has at least k agents. The full
    /// form (/api/v1/reports?full=true), which `verify` can check, needs
    /// `Authorization: Bearer <token>` with a token issued here. Changes apply to a running
    /// collector from its next request (no restart).
    ///
    /// Examples:
    ///   callwatch-collector token add --data /var/lib/callwatch alice-uni-example
    ///   callwatch-collector token list --data /var/lib/callwatch
    ///   callwatch-collector token revoke --data /var/lib/callwatch alice-uni-example
    #[command(subcommand, verbatim_doc_comment)]
    Token(TokenCommand),
    /// Check every signature in a full ndjson export, offline. Exit 0 when all verify, 1 otherwise.
    ///
    /// The full export is `export` (the operator's) or the HTTP API's
    /// /api/v1/reports?full=true with a researcher token. The public /api/v1/reports is
    /// redacted (no keys, signatures or signed bodies): verify refuses it, saying so.
    ///
    /// Examples:
    ///   callwatch-collector export --data /var/lib/callwatch > full.ndjson
    ///   callwatch-collector verify full.ndjson
    /// or, from a running collector, with a researcher token (see `token add`):
    ///   curl -H "Authorization: Bearer $TOKEN" \
    ///       'http://127.0.0.1:8080/api/v1/reports?full=true&limit=100000' > full.ndjson
    #[command(verbatim_doc_comment)]
    Verify {
        /// The export file ("-" for standard input).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a researcher token named NAME and print it, once: only its SHA-256 is kept.
    ///
    /// Give the token to the researcher over a private channel; they send it as
    /// `Authorization: Bearer <token>` with /api/v1/reports?full=true. Names are unique among
    /// the tokens in effect. A running collector honours it at once (no restart).
    ///
    /// Example:
    ///   callwatch-collector token add --data /var/lib/callwatch alice-uni-example
    #[command(verbatim_doc_comment)]
    Add {
        /// The collector's data folder.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Who holds it: 1 to 64 letters, digits, '-', '_', '.' or '@'.
        name: String,
    },
    /// List the tokens in effect: names and the day each was issued (never a token).
    ///
    /// Example:
    ///   callwatch-collector token list --data /var/lib/callwatch
    #[command(verbatim_doc_comment)]
    List {
        /// The collector's data folder.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
    /// Revoke the token named NAME: a running collector refuses it (401) from its next request.
    ///
    /// Example:
    ///   callwatch-collector token revoke --data /var/lib/callwatch alice-uni-example
    #[command(verbatim_doc_comment)]
    Revoke {
        /// The collector's data folder.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        name: String,
    },
}

#[derive(Subcommand)]
enum ReflectorCommand {
    /// Register a standalone reflector by NAME with its attestation key.
    ///
    /// Example:
    ///   callwatch-collector reflector add --data /var/lib/callwatch tallinn-1 \
    ///       "$(cat reflector-attest.pub)" --address reflector.example.org:3479 \
    ///       --seal-key "$(cat reflector.pub)"
    #[command(verbatim_doc_comment)]
    Add {
        /// The collector's data folder.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// A name of 1 to 64 letters, digits, '-', '_' or '.' (never reused, even once revoked).
        name: String,
        /// Its attestation key: the 64 hex digits of its reflector-attest.pub.
        attest_pubkey: String,
        /// Where agents reach it (UDP).
        #[arg(long, value_name = "HOST:PORT")]
        address: Option<String>,
        /// Its sealing key for agents: the 64 hex digits of its reflector.pub.
        #[arg(long = "seal-key", value_name = "HEX")]
        seal_key: Option<String>,
    },
    /// Revoke a registered reflector: its attestations are refused from now on (`unknown_key`).
    Revoke {
        /// The collector's data folder.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        name: String,
    },
    /// List the registered reflectors, revoked ones marked.
    List {
        /// The collector's data folder.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The registry as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Ndjson,
    Json,
    Csv,
}

#[tokio::main]
async fn main() {
    // Everything the collector creates — its store (sled makes its own files), the report count,
    // certificate, key, exports written by redirection excepted — is for its owner only.
    #[cfg(unix)]
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    callwatch_reflector::term::init_logging();
    let cli: Cli = callwatch_reflector::term::parse_or_exit();
    if !matches!(cli.command, Command::Serve { .. } | Command::Reflect(_)) {
        callwatch_reflector::term::end_quietly_on_closed_pipe();
    }
    if let Err(e) = run(cli).await {
        eprintln!("callwatch-collector: {e:#}");
        std::process::exit(1);
    }
}

/// The hosting networks to mark: the built-in list, changed by `file` when given.
fn hosting_list(
    file: Option<&std::path::Path>,
) -> Result<callwatch_collector::geo::hosting::HostingAsns> {
    Ok(match file {
        Some(f) => callwatch_collector::geo::hosting::HostingAsns::load(f)?,
        None => Default::default(),
    })
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            data,
            listen,
            tcp,
            reflector_ip,
            reflectors,
            http,
            geo,
            min_agents,
            max_per_agent_day,
            max_per_prefix_day,
            hosting_asns,
            events_min_interval,
            check,
            reflector_driver,
            reflector_sessions_per_prefix,
            store,
        } => {
            let mut cfg = ServeConfig::new(data);
            cfg.events_min_interval = std::time::Duration::from_secs(events_min_interval);
            cfg.hosting = hosting_list(hosting_asns.as_deref())?;
            cfg.reflector_driver = reflector_driver.unwrap_or_default();
            if let Some(n) = reflector_sessions_per_prefix {
                cfg.reflector_limits.max_sessions_per_prefix = n;
            }
            cfg.policy.min_agents = min_agents;
            cfg.policy.max_per_agent_per_day = max_per_agent_day;
            cfg.policy.max_per_prefix_per_day = max_per_prefix_day;
            cfg.listen = listen;
            cfg.tcp = tcp;
            if reflectors.is_empty() {
                cfg.reflectors = callwatch_collector::serve::profile_ports(reflector_ip);
            } else {
                cfg.reflectors = reflectors;
                cfg.reflector_bind = callwatch_reflector::Bind::Every;
            }
            cfg.http = http;
            cfg.geo_files = geo;
            if check {
                callwatch_collector::geo::Geo::load(cfg.geo.iter().chain(&cfg.geo_files))?;
                store.resolve()?;
                println!("options ok");
                return Ok(());
            }
            let mirror = Some((cfg.data_dir.as_path(), &cfg.policy));
            let collector =
                match callwatch_collector::store::config::open_for_serve(&store, mirror)? {
                    None => serve(cfg).await?,
                    Some(store) => callwatch_collector::serve_with_store(cfg, store).await?,
                };
            // Before anything is announced: whoever reads these lines may stop it at once.
            // While the store opens (a mirror's first sync can take minutes) SIGTERM still
            // takes its default action and ends it at once, as a crash would.
            let stop = callwatch_reflector::term::Stop::install()?;
            println!(
                "collector pin (SHA-256 of its certificate): {}",
                collector.pin
            );
            println!(
                "reflector key (agents' reflector_key; also in reflector.pub): {}",
                collector.reflector.seal_key
            );
            println!("QUIC ingest on {}", collector.quic_addr);
            println!("TLS/TCP ingest on {}", collector.tcp_addr);
            println!(
                "carry-out key (agents' collector_seal_key; also in collector.seal.pub): {}",
                collector.carry_key
            );
            for a in &collector.reflector.addrs {
                println!("reflector on udp {a}");
            }
            println!(
                "reflector serves: {}",
                callwatch_collector::serve::describe_served(&collector.endpoints)
            );
            for u in &collector.endpoints.unavailable {
                tracing::warn!(
                    "{} tests are unavailable (agents are told): {}",
                    u.platform,
                    u.reason
                );
            }
            println!(
                "HTTP API on http://{}/api/v1/aggregation",
                collector.http_addr
            );
            let signal = stop.wait().await;
            tracing::info!("{signal} received: shutting down");
            collector.shutdown().await;
            Ok(())
        }
        Command::Export {
            data,
            store,
            format,
            events,
            axis_x,
            axis_y,
            since,
            until,
            country,
            region,
            asn,
            platform,
            arm,
            kind,
            min_agents,
        } => {
            if events {
                let mut query: HashMap<String, String> = HashMap::new();
                for (name, value) in [
                    ("since", since),
                    ("until", until),
                    ("country", country),
                    ("asn", asn),
                    ("platform", platform),
                ] {
                    if let Some(v) = value {
                        query.insert(name.into(), v);
                    }
                }
                if arm.is_some() || kind.is_some() || axis_y.is_some() {
                    anyhow::bail!(
                        "--events takes --country, --asn, --platform, --since and --until; \
                         --arm, --kind and --axis-y are for cells"
                    );
                }
                return export_events(&data, &store, format, &query, min_agents);
            }
            let mut query: HashMap<String, String> = HashMap::new();
            query.insert("axis_x".into(), axis_x);
            for (name, value) in [
                ("axis_y", axis_y),
                ("since", since.clone()),
                ("until", until),
                ("country", country),
                ("region", region),
                ("asn", asn),
                ("platform", platform),
                ("arm", arm),
                ("kind", kind),
            ] {
                if let Some(v) = value {
                    query.insert(name.into(), v);
                }
            }
            export(&data, &store, format, &query, since.as_deref(), min_agents)
        }
        Command::Migrate {
            from,
            to,
            clickhouse_ca_file,
            batch,
        } => {
            tokio::task::spawn_blocking(move || {
                callwatch_collector::store::config::migrate(&from, &to, clickhouse_ca_file, batch)
                    .map(drop)
            })
            .await?
        }
        Command::Import {
            data,
            store,
            hosting_asns,
            file,
        } => {
            let hosting = hosting_list(hosting_asns.as_deref())?;
            let summary =
                callwatch_collector::carry::import_command(&data, &store, &hosting, &file).await?;
            if summary.rejected > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Reflect(args) => callwatch_reflector::standalone::run(args).await,
        Command::Completions { shell } => {
            callwatch_reflector::term::print_completions::<Cli>(shell);
            Ok(())
        }
        Command::Manpages { dir } => {
            for page in callwatch_reflector::term::write_manpages::<Cli>(&dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?
            {
                println!("wrote {}", page.display());
            }
            Ok(())
        }
        Command::Reflector(cmd) => reflector_command(cmd),
        Command::Token(cmd) => token_command(cmd),
        Command::Verify { file } => {
            let input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(&file)
                        .with_context(|| format!("opening {}", file.display()))?,
                ))
            };
            let summary = callwatch_collector::export::verify_export(input)?;
            for (line, reason) in &summary.invalid {
                eprintln!("line {line}: {reason}");
            }
            println!("{} valid, {} invalid", summary.valid, summary.invalid.len());
            if !summary.invalid.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn export(
    data: &std::path::Path,
    store_args: &callwatch_collector::store::config::StoreArgs,
    format: ExportFormat,
    query: &HashMap<String, String>,
    since: Option<&str>,
    min_agents: usize,
) -> Result<()> {
    use callwatch_collector::domain::Policy;
    use callwatch_collector::export::cells_csv;
    use callwatch_collector::http::{parse_aggregation_query, parse_time_ms, AggregationBody};
    use callwatch_collector::store::ReportStore;
    use std::io::Write;
    // Check the arguments before touching the store.
    let aggregate_query = match format {
        ExportFormat::Ndjson => None,
        ExportFormat::Json | ExportFormat::Csv => {
            Some(parse_aggregation_query(query).map_err(|e| anyhow::anyhow!("--{}", e.message))?)
        }
    };
    let since_ms = match (format, since) {
        (ExportFormat::Ndjson, Some(s)) => {
            parse_time_ms("since", s).map_err(|e| anyhow::anyhow!("--{}", e.message))?
        }
        _ => i64::MIN,
    };
    let (store, cap): (std::sync::Arc<dyn ReportStore>, usize) =
        match callwatch_collector::store::config::open_for_serve(store_args, None)? {
            Some(clickhouse) => (clickhouse, Policy::default().max_per_agent_per_day),
            None => {
                let sled = callwatch_collector::store::config::open_stopped_sled(data)?;
                let cap = sled.cap() as usize;
                (std::sync::Arc::new(sled), cap)
            }
        };
    let store = store.as_ref();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match aggregate_query {
        None => {
            let mut n = 0usize;
            let mut failed = None;
            callwatch_collector::export::page(store, since_ms, usize::MAX, |r| {
                n += 1;
                match out.write_all(r.to_line().as_bytes()) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
            out.flush()?;
            eprintln!("exported {n} reports");
        }
        Some(q) => {
            let policy = Policy {
                min_agents,
                max_per_agent_per_day: cap,
                ..Policy::default()
            };
            let cells = store.aggregate(&q.axes, &q.filter, &policy)?;
            eprintln!("exported {} cells", cells.len());
            if matches!(format, ExportFormat::Csv) {
                out.write_all(cells_csv(&cells, &q.axes).as_bytes())?;
            } else {
                serde_json::to_writer_pretty(
                    &mut out,
                    &AggregationBody::new(&q.axes, &q.filter, &policy, cells),
                )?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
    }
    Ok(())
}

/// `export --events`: the detector run over the whole store now.
fn export_events(
    data: &std::path::Path,
    store_args: &callwatch_collector::store::config::StoreArgs,
    format: ExportFormat,
    query: &HashMap<String, String>,
    min_agents: usize,
) -> Result<()> {
    use callwatch_collector::domain::Policy;
    use callwatch_collector::events;
    use callwatch_collector::http::{parse_events_query, EventsBody};
    use std::io::Write;
    // Check the arguments before touching the store.
    let (filter, _) = parse_events_query(query).map_err(|e| anyhow::anyhow!("--{}", e.message))?;
    let (store, cap): (
        std::sync::Arc<dyn callwatch_collector::store::ReportStore>,
        usize,
    ) = match callwatch_collector::store::config::open_for_serve(store_args, None)? {
        Some(clickhouse) => (clickhouse, Policy::default().max_per_agent_per_day),
        None => {
            let sled = callwatch_collector::store::config::open_stopped_sled(data)?;
            let cap = sled.cap() as usize;
            (std::sync::Arc::new(sled), cap)
        }
    };
    let policy = Policy {
        min_agents,
        max_per_agent_per_day: cap,
        ..Policy::default()
    };
    let now = events::now_hour();
    let all = events::compute(store.as_ref(), &policy, now)?;
    let chosen: Vec<_> = all.into_iter().filter(|e| filter.matches(e)).collect();
    eprintln!("exported {} events", chosen.len());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if matches!(format, ExportFormat::Csv) {
        out.write_all(events::events_csv(&chosen).as_bytes())?;
    } else {
        let detector = callwatch_collector::domain::events::Detector::default();
        serde_json::to_writer_pretty(
            &mut out,
            &EventsBody::new(chosen, Some(now), &policy, &detector),
        )?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn token_command(cmd: TokenCommand) -> Result<()> {
    use callwatch_collector::token;
    match cmd {
        TokenCommand::Add { data, name } => {
            let t = token::add(&data, &name)?;
            eprintln!(
                "issued researcher token {name:?}; it is shown only this once (only its SHA-256 \
                 is kept in {}). Send it as `Authorization: Bearer <token>` with \
                 /api/v1/reports?full=true:",
                token::path(&data).display()
            );
            println!("{t}");
        }
        TokenCommand::List { data } => print!("{}", token::Tokens::load(&data)?.render()),
        TokenCommand::Revoke { data, name } => {
            let gone = token::revoke(&data, &name)?;
            println!(
                "revoked researcher token {:?} (issued {}): refused from the next request",
                gone.name, gone.created
            );
        }
    }
    Ok(())
}

fn reflector_command(cmd: ReflectorCommand) -> Result<()> {
    use callwatch_collector::reflector::registry;
    match cmd {
        ReflectorCommand::Add {
            data,
            name,
            attest_pubkey,
            address,
            seal_key,
        } => {
            let e = registry::add(
                &data,
                registry::NewReflector {
                    name,
                    attest_key: attest_pubkey,
                    address,
                    seal_key,
                },
            )?;
            println!(
                "registered reflector {} (attestation key {})",
                e.name, e.attest_key
            );
        }
        ReflectorCommand::Revoke { data, name } => {
            let e = registry::revoke(&data, &name)?;
            println!(
                "revoked reflector {}: its attestations are refused from now on",
                e.name
            );
        }
        ReflectorCommand::List { data, json } => {
            let reg = registry::Registry::load(&data)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reg)?);
            } else {
                print!("{}", registry::render(&reg));
            }
        }
    }
    Ok(())
}
