//! Choosing and opening the store: `serve --store sled|clickhouse`, `--clickhouse-url`,
//! `--clickhouse-database`, `--clickhouse-password-file`, `--clickhouse-ca-file`, or a `--config FILE` with a `[store]`
//! table; and `migrate`, which copies a sled store into ClickHouse.
//!
//! Credentials never come from the command line: the user from `CALLWATCH_CLICKHOUSE_USER` (or
//! `store.user`), the password from `CALLWATCH_CLICKHOUSE_PASSWORD` or a file
//! (`--clickhouse-password-file`, `store.password_file`). Command-line flags override the file.
//!
//! ```toml
//! [store]
//! kind = "clickhouse"              # or "sled" (the default)
//! url = "http://10.0.0.5:8123"     # http://host:port or clickhouse://host:port/db
//! database = "callwatch"           # default "callwatch"
//! user = "callwatch"               # default: ClickHouse's "default" user
//! password_file = "/etc/callwatch/clickhouse.password"
//! ca_file = "/etc/callwatch/clickhouse-ca.pem"   # for https:// with a private CA
//! ```

use super::clickhouse::{Access, ClickHouseStore, ClickHouseUrl};
use super::copy::{copy_reports, CopyProgress};
use super::{ReportStore, SledStore};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

/// Environment variable holding the ClickHouse user.
pub const USER_ENV: &str = "CALLWATCH_CLICKHOUSE_USER";
/// Environment variable holding the ClickHouse password.
pub const PASSWORD_ENV: &str = "CALLWATCH_CLICKHOUSE_PASSWORD";
/// The database used when none is given.
pub const DEFAULT_DATABASE: &str = "callwatch";

/// Which backend stores the reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// Embedded, in the data folder (the default).
    Sled,
    /// A ClickHouse server or cluster (many collectors, one database).
    Clickhouse,
}

/// The store flags of `serve`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct StoreArgs {
    /// TOML file with a [store] table (kind, url, database, user, password_file, ca_file);
    /// flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where reports are stored [default: sled].
    #[arg(long, value_enum, value_name = "KIND")]
    pub store: Option<StoreKind>,
    /// ClickHouse HTTP address: http://host:8123, https://host:8443 or
    /// clickhouse://host:8123/db.
    #[arg(long = "clickhouse-url", value_name = "URL")]
    pub clickhouse_url: Option<String>,
    /// ClickHouse database (created when missing) [default: callwatch].
    #[arg(long = "clickhouse-database", value_name = "DB")]
    pub clickhouse_database: Option<String>,
    /// File holding the ClickHouse password (or set CALLWATCH_CLICKHOUSE_PASSWORD; the user
    /// comes from CALLWATCH_CLICKHOUSE_USER).
    #[arg(long = "clickhouse-password-file", value_name = "FILE")]
    pub clickhouse_password_file: Option<PathBuf>,
    /// PEM file of the certificate authorities to trust for an https:// ClickHouse URL
    /// [default: Mozilla's roots].
    #[arg(long = "clickhouse-ca-file", value_name = "FILE")]
    pub clickhouse_ca_file: Option<PathBuf>,
}

/// A resolved store choice. Its `Debug` never shows the password ([`Access`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreChoice {
    Sled,
    ClickHouse {
        url: String,
        database: String,
        access: Access,
    },
}

/// The `[store]` table of a config file, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileStore {
    pub kind: Option<StoreKind>,
    pub url: Option<String>,
    pub database: Option<String>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

/// Parses a config file's text; every bad value is reported with its key, all at once.
pub fn parse_config(text: &str) -> Result<FileStore> {
    let table: toml::Table = text.parse().map_err(|e| anyhow!("not valid TOML: {e}"))?;
    let mut errors = Vec::new();
    let mut out = FileStore::default();
    for (key, value) in &table {
        if key != "store" {
            errors.push(format!("{key}: unknown setting (expected a [store] table)"));
            continue;
        }
        let Some(store) = value.as_table() else {
            errors.push("store: must be a table ([store])".into());
            continue;
        };
        for (k, v) in store {
            let name = format!("store.{k}");
            let Some(s) = v.as_str() else {
                errors.push(format!("{name}: must be a string, got {}", v.type_str()));
                continue;
            };
            match k.as_str() {
                "kind" => match s {
                    "sled" => out.kind = Some(StoreKind::Sled),
                    "clickhouse" => out.kind = Some(StoreKind::Clickhouse),
                    _ => errors.push(format!(
                        "{name}: {s:?} is not a store kind; expected \"sled\" or \"clickhouse\""
                    )),
                },
                "url" => match ClickHouseUrl::parse(s) {
                    Ok(_) => out.url = Some(s.to_string()),
                    Err(e) => errors.push(format!("{name}: {e}")),
                },
                "database" => match super::clickhouse::check_identifier(s) {
                    Ok(()) => out.database = Some(s.to_string()),
                    Err(e) => errors.push(format!("{name}: {e}")),
                },
                "user" if !s.is_empty() => out.user = Some(s.to_string()),
                "user" => errors.push(format!("{name}: must not be empty")),
                "password_file" if !s.is_empty() => out.password_file = Some(s.into()),
                "password_file" => errors.push(format!("{name}: must not be empty")),
                "ca_file" if !s.is_empty() => out.ca_file = Some(s.into()),
                "ca_file" => errors.push(format!("{name}: must not be empty")),
                "password" => errors.push(format!(
                    "{name}: passwords do not belong in the config file; use password_file or \
                     {PASSWORD_ENV}"
                )),
                _ => errors.push(format!(
                    "{name}: unknown setting (expected kind, url, database, user, password_file, \
                     ca_file)"
                )),
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        bail!("{}", errors.join("; "))
    }
}

fn read_password(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the ClickHouse password file {}", path.display()))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

impl StoreArgs {
    /// Merges the flags, the config file and the environment into one choice.
    pub fn resolve(&self) -> Result<StoreChoice> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                parse_config(&text).with_context(|| format!("in {}", path.display()))?
            }
            None => FileStore::default(),
        };
        let kind = self.store.or(file.kind).unwrap_or(StoreKind::Sled);
        if kind == StoreKind::Sled {
            return Ok(StoreChoice::Sled);
        }
        let url = self.clickhouse_url.clone().or(file.url).ok_or_else(|| {
            anyhow!("--clickhouse-url (or store.url) is required with the clickhouse store")
        })?;
        let parsed = ClickHouseUrl::parse(&url).map_err(|e| anyhow!("--clickhouse-url: {e}"))?;
        let database = self
            .clickhouse_database
            .clone()
            .or(parsed.database)
            .or(file.database)
            .unwrap_or_else(|| DEFAULT_DATABASE.into());
        super::clickhouse::check_identifier(&database)
            .map_err(|e| anyhow!("--clickhouse-database: {e}"))?;
        let user = std::env::var(USER_ENV)
            .ok()
            .filter(|u| !u.is_empty())
            .or(file.user);
        let password = match std::env::var(PASSWORD_ENV) {
            Ok(p) => Some(p),
            Err(_) => match self
                .clickhouse_password_file
                .as_ref()
                .or(file.password_file.as_ref())
            {
                Some(path) => Some(read_password(path)?),
                None => None,
            },
        };
        let ca_file = self.clickhouse_ca_file.clone().or(file.ca_file);
        Ok(StoreChoice::ClickHouse {
            url,
            database,
            access: Access {
                user,
                password,
                ca_file,
            },
        })
    }
}

impl StoreChoice {
    /// Opens the ClickHouse store of this choice (`None` for sled, which `serve` opens itself).
    pub fn open_clickhouse(&self) -> Result<Option<ClickHouseStore>> {
        match self {
            StoreChoice::Sled => Ok(None),
            StoreChoice::ClickHouse {
                url,
                database,
                access,
            } => {
                let store = ClickHouseStore::open(url, database, access)
                    .with_context(|| format!("opening ClickHouse database {database} at {url}"))?;
                Ok(Some(store))
            }
        }
    }
}

/// The sled store's folder inside a collector's data folder: the one place its name is written.
pub fn sled_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("reports.sled")
}

/// Opens the sled store in `data_dir` for a command that works on it while no collector runs
/// (`migrate`, `import`, `export`): a missing store or a running collector's lock is said so.
pub fn open_stopped_sled(data_dir: &Path) -> Result<SledStore> {
    let path = sled_path(data_dir);
    if !super::sled_store::store_exists(&path) {
        bail!("{} holds no collector store", data_dir.display());
    }
    SledStore::open(&path).map_err(|e| {
        let e = e.to_string();
        if e.contains("lock") {
            anyhow!("{e} (is a collector still running on this folder? stop it first)")
        } else {
            anyhow!(e)
        }
    })
}

/// `callwatch-collector migrate`: copies the sled store in `data_dir` into ClickHouse at `to`
/// (`clickhouse://host:8123/db`, `http://host:8123/db` or `https://…`, trusting `ca_file`
/// when given; database `callwatch` when the URL
/// names none), `batch` reports per insert, with progress on stderr. Resumable and idempotent
/// (see [`copy_reports`]). Returns what the run did.
pub fn migrate(
    data_dir: &Path,
    to: &str,
    ca_file: Option<PathBuf>,
    batch: usize,
) -> Result<CopyProgress> {
    let path = sled_path(data_dir);
    let parsed = ClickHouseUrl::parse(to).map_err(|e| anyhow!("--to: {e}"))?;
    let database = parsed
        .database
        .clone()
        .unwrap_or_else(|| DEFAULT_DATABASE.into());
    let choice = StoreChoice::ClickHouse {
        url: to.to_string(),
        database: database.clone(),
        access: Access {
            user: std::env::var(USER_ENV).ok().filter(|u| !u.is_empty()),
            password: std::env::var(PASSWORD_ENV).ok(),
            ca_file,
        },
    };
    let sled = open_stopped_sled(data_dir)?;
    let ch = choice
        .open_clickhouse()?
        .ok_or_else(|| anyhow!("not a ClickHouse URL"))?;
    let total = sled.len();
    eprintln!(
        "copying {total} reports from {} to ClickHouse database {database} at {}:{}",
        path.display(),
        parsed.host,
        parsed.port
    );
    let started = std::time::Instant::now();
    let done = copy_reports(&sled, &ch, batch, |p| {
        eprintln!(
            "  {} of {total} read: {} copied, {} already there ({:.0}/s)",
            p.read,
            p.inserted,
            p.present,
            p.read as f64 / started.elapsed().as_secs_f64().max(1e-3)
        );
        true
    })?;
    eprintln!(
        "done: {} read, {} copied, {} already there",
        done.read, done.inserted, done.present
    );
    Ok(done)
}

/// The ClickHouse store's aggregate mirror inside a collector's data folder
/// ([`super::clickhouse::mirror`]).
pub fn mirror_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("clickhouse-mirror.sled")
}

/// How old the aggregate mirror may be before a query syncs it itself: twice the collector's
/// own sync interval, so queries sync only when that task is not keeping up.
pub const MIRROR_REFRESH: std::time::Duration = std::time::Duration::from_secs(120);

/// Opens the store `serve` should use when it is not sled (a helper for `main`). With
/// `mirror` (the data folder and the collector's policy) a ClickHouse store answers queries
/// from its aggregate mirror in that folder ([`mirror_path`]).
pub fn open_for_serve(
    args: &StoreArgs,
    mirror: Option<(&Path, &crate::domain::Policy)>,
) -> Result<Option<std::sync::Arc<dyn ReportStore>>> {
    let choice = args.resolve()?;
    let Some(store) = choice.open_clickhouse()? else {
        return Ok(None);
    };
    let store = match mirror {
        Some((data_dir, policy)) => {
            // Before anything is created inside it: the data folder is owner-only.
            callwatch_reflector::files::ensure_private_dir(data_dir)?;
            let path = mirror_path(data_dir);
            store
                .with_mirror(&path, policy, MIRROR_REFRESH)
                .with_context(|| format!("opening the aggregate mirror {}", path.display()))?
        }
        None => store,
    };
    Ok(Some(std::sync::Arc::new(store)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_parse_and_every_bad_value_is_named() {
        let ok = parse_config(
            "[store]\nkind = \"clickhouse\"\nurl = \"http://10.0.0.5:8123\"\n\
             database = \"cw\"\nuser = \"u\"\npassword_file = \"/p\"\nca_file = \"/ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(ok.kind, Some(StoreKind::Clickhouse));
        assert_eq!(ok.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(ok.database.as_deref(), Some("cw"));
        let e = parse_config(
            "colour = 1\n[store]\nkind = \"mysql\"\nurl = \"ftp://x\"\ndatabase = \"a-b\"\n\
             password = \"hunter2\"\nport = \"1\"\nuser = 3\n",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "colour:",
            "store.kind:",
            "store.url:",
            "store.database:",
            "store.password:",
            "store.port:",
            "store.user:",
        ] {
            assert!(e.contains(key), "{key} missing in {e}");
        }
        assert!(!e.contains("hunter2"), "the password is never echoed: {e}");
    }

    #[test]
    fn flags_override_the_file_and_sled_is_the_default() {
        assert_eq!(StoreArgs::default().resolve().unwrap(), StoreChoice::Sled);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[store]\nkind = \"clickhouse\"\nurl = \"http://a:1\"\ndatabase = \"x\"\n",
        )
        .unwrap();
        let args = StoreArgs {
            config: Some(file),
            clickhouse_database: Some("y".into()),
            ..StoreArgs::default()
        };
        match args.resolve().unwrap() {
            StoreChoice::ClickHouse { url, database, .. } => {
                assert_eq!((url.as_str(), database.as_str()), ("http://a:1", "y"))
            }
            other => panic!("{other:?}"),
        }
        let none = StoreArgs {
            store: Some(StoreKind::Clickhouse),
            ..StoreArgs::default()
        };
        assert!(none
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("--clickhouse-url"));
    }
}
