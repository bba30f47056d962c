//! The HTTP side of the ClickHouse store: where the server is ([`ClickHouseUrl`]), how to reach
//! it ([`Access`]) and the client ([`Http`]) — `ureq`, a maintained blocking HTTP client: kept
//! connections (a pool per store), every address a name resolves to tried in turn, TLS through
//! rustls with ring (Mozilla's roots, or the operator's CA file) where the URL says `https://`.
//! Blocking, because the [`crate::store::ReportStore`] trait is (the collector calls it from
//! `spawn_blocking`). Also the SQL string literal ([`lit`]), the one way values enter SQL here.

use crate::store::StoreError;
use base64::Engine as _;
use serde::Deserialize;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::Duration;

/// Where a ClickHouse server is: from `http://host:port[/db]`, `https://host:port[/db]` or
/// `clickhouse://host:port/db` (plain HTTP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClickHouseUrl {
    pub host: String,
    pub port: u16,
    /// Whether the server is reached over TLS (`https://`).
    pub tls: bool,
    /// The database named in the path (`clickhouse://host:8123/db`), if any.
    pub database: Option<String>,
}

impl ClickHouseUrl {
    /// Parses `http://host[:port][/db]`, `clickhouse://host[:port][/db]` (port 8123 by default)
    /// or `https://host[:port][/db]` (port 8443 by default).
    pub fn parse(url: &str) -> Result<ClickHouseUrl, String> {
        let (rest, tls) = if let Some(r) = url.strip_prefix("http://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("clickhouse://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("https://") {
            (r, true)
        } else {
            return Err(format!(
                "{url:?}: expected http://host:port, https://host:port or \
                 clickhouse://host:port/database"
            ));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(format!(
                "{url:?}: credentials do not belong in the URL; use CALLWATCH_CLICKHOUSE_USER \
                 and CALLWATCH_CLICKHOUSE_PASSWORD or a password file"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            ),
            _ => (authority, if tls { 8443 } else { 8123 }),
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        let path = path.trim_end_matches('/');
        let database = if path.is_empty() {
            None
        } else {
            check_identifier(path).map_err(|e| format!("{url:?}: {e}"))?;
            Some(path.to_string())
        };
        Ok(ClickHouseUrl {
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port,
            tls,
            database,
        })
    }
}

/// A database name must be a plain identifier (it is spliced into SQL).
pub fn check_identifier(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "database name {name:?} must be letters, digits and _ (not starting with a digit)"
        ))
    }
}

/// Who the store is to ClickHouse, and whom it trusts.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// ClickHouse user (ClickHouse's `default` when only a password is given).
    pub user: Option<String>,
    pub password: Option<String>,
    /// PEM file of the certificate authorities an `https://` server's certificate must chain
    /// to (Mozilla's roots when `None`).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for Access {
    // Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// ClickHouse's HTTP interface, over one pool of kept connections.
#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
    /// `http(s)://host:port/`.
    base: String,
    /// `host:port`, as errors name the server.
    shown: String,
    /// `Authorization` header value.
    auth: Option<String>,
}

/// How long a connection attempt to one address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer (head, then body) may take: a cold aggregation over a year can be slow.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

impl Http {
    /// A client for the server at `url`.
    pub fn new(url: &ClickHouseUrl, access: &Access) -> Result<Http, StoreError> {
        let host = if url.host.contains(':') {
            format!("[{}]", url.host)
        } else {
            url.host.clone()
        };
        let shown = format!("{host}:{}", url.port);
        let scheme = if url.tls { "https" } else { "http" };
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(ANSWER_TIMEOUT))
            .timeout_recv_body(Some(ANSWER_TIMEOUT))
            .timeout_send_body(Some(ANSWER_TIMEOUT))
            .max_idle_connections_per_host(8)
            .user_agent(concat!("callwatch-collector/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &access.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                StoreError::Backend(format!("reading the CA file {}: {e}", path.display()))
            })?;
            let mut roots = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => roots.push(c),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(StoreError::Backend(format!(
                            "the CA file {} is not PEM: {e}",
                            path.display()
                        )))
                    }
                }
            }
            if roots.is_empty() {
                return Err(StoreError::Backend(format!(
                    "the CA file {} holds no certificate",
                    path.display()
                )));
            }
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                    .build(),
            );
        }
        let auth = match (&access.user, &access.password) {
            (None, None) => None,
            (u, p) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    u.as_deref().unwrap_or("default"),
                    p.as_deref().unwrap_or("")
                ))
            )),
        };
        Ok(Http {
            agent: config.build().into(),
            base: format!("{scheme}://{shown}/"),
            shown,
            auth,
        })
    }

    /// A backend error naming the server.
    pub fn err(&self, what: impl std::fmt::Display) -> StoreError {
        StoreError::Backend(format!("ClickHouse at {}: {what}", self.shown))
    }

    /// POSTs `body` with URL parameters `params`; returns the response body (streaming) when
    /// the status is 200, the server's message as an error otherwise.
    pub fn post(
        &self,
        params: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Box<dyn BufRead>, StoreError> {
        let mut req = self
            .agent
            .post(&self.base)
            .header("Content-Type", "text/plain; charset=utf-8");
        for (k, v) in params {
            req = req.query(*k, *v);
        }
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let answer = req.send(body).map_err(|e| self.err(e))?;
        let status = answer.status().as_u16();
        let reader = answer.into_body().into_reader();
        if status != 200 {
            let mut text = String::new();
            let _ = reader.take(4096).read_to_string(&mut text);
            return Err(self.err(format!("HTTP {status}: {}", text.trim())));
        }
        Ok(Box::new(BufReader::with_capacity(64 * 1024, reader)))
    }

    /// Runs a statement and returns the whole answer as text.
    pub fn text(&self, sql: &str) -> Result<String, StoreError> {
        let mut r = self.post(&[("wait_end_of_query", "1")], sql.as_bytes())?;
        let mut s = String::new();
        r.read_to_string(&mut s)
            .map_err(|e| self.err(format!("reading the answer: {e}")))?;
        Ok(s)
    }

    /// Runs a query (`… FORMAT JSONEachRow` appended) and parses each row, until `f` returns
    /// `Ok(false)` or the rows run out.
    pub fn rows<T: for<'de> Deserialize<'de>>(
        &self,
        sql: &str,
        mut f: impl FnMut(T) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let sql = format!("{sql} FORMAT JSONEachRow");
        let r = self.post(
            &[("output_format_json_quote_64bit_integers", "0")],
            sql.as_bytes(),
        )?;
        for line in r.lines() {
            let line = line.map_err(|e| self.err(format!("reading rows: {e}")))?;
            if line.is_empty() {
                continue;
            }
            let row: T = serde_json::from_str(&line).map_err(|e| {
                let shown: String = line.chars().take(300).collect();
                self.err(format!("unexpected row ({e}): {shown}"))
            })?;
            if !f(row)? {
                break;
            }
        }
        Ok(())
    }
}

/// A SQL string literal.
pub fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_credentials_are_refused() {
        let u = ClickHouseUrl::parse("clickhouse://db.example:9123/callwatch").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.tls, u.database.as_deref()),
            ("db.example", 9123, false, Some("callwatch"))
        );
        let u = ClickHouseUrl::parse("http://127.0.0.1:8123/").unwrap();
        assert_eq!((u.port, u.tls, u.database), (8123, false, None));
        assert_eq!(ClickHouseUrl::parse("http://h").unwrap().port, 8123);
        let u = ClickHouseUrl::parse("https://h/db").unwrap();
        assert_eq!(
            (u.port, u.tls, u.database.as_deref()),
            (8443, true, Some("db"))
        );
        let u = ClickHouseUrl::parse("http://[::1]:8123").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8123));
        assert!(ClickHouseUrl::parse("http://u:p@h:8123").is_err());
        assert!(ClickHouseUrl::parse("http://h:8123/bad-name").is_err());
        assert!(ClickHouseUrl::parse("http://h:99999").is_err());
        assert!(ClickHouseUrl::parse("ftp://h").is_err());
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(lit("a'b\\"), "'a\\'b\\\\'");
        assert_eq!(lit(""), "''");
    }

    #[test]
    fn a_bad_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let url = ClickHouseUrl::parse("https://127.0.0.1:1").unwrap();
        let missing = dir.path().join("missing.pem");
        let access = |p: &std::path::Path| Access {
            ca_file: Some(p.to_path_buf()),
            ..Access::default()
        };
        let e = Http::new(&url, &access(&missing))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = Http::new(&url, &access(&empty)).err().unwrap().to_string();
        assert!(e.contains("holds no certificate"), "{e}");
    }

    #[test]
    fn credentials_are_sent_as_basic_auth_and_never_shown() {
        let url = ClickHouseUrl::parse("http://127.0.0.1:1").unwrap();
        let access = Access {
            user: Some("callwatch".into()),
            password: Some("s3cret".into()),
            ca_file: None,
        };
        let http = Http::new(&url, &access).unwrap();
        // base64("callwatch:s3cret"), RFC 4648.
        assert_eq!(http.auth.as_deref(), Some("Basic Y2FsbHdhdGNoOnMzY3JldA=="));
        assert!(!format!("{access:?}").contains("s3cret"));
        let only_password = Access {
            password: Some("p".into()),
            ..Access::default()
        };
        let http = Http::new(&url, &only_password).unwrap();
        // base64("default:p")
        assert_eq!(http.auth.as_deref(), Some("Basic ZGVmYXVsdDpw"));
    }
}
