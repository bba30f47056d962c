//! A MaxMind DB file as a region source: country from `country.iso_code` (else
//! `registered_country.iso_code`), ASN from `autonomous_system_number`, the first subdivision
//! from `subdivisions[0].iso_code` (City databases; only with `country.iso_code`). One reader serves
//! GeoLite2-Country, -City and -ASN and the DB-IP lite files alike: each field is read when the
//! record has it.

use super::GeoError;
use maxminddb::{path, MaxMindDbError, Reader};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

/// What one MaxMind DB knows of an address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Found {
    /// Two upper-case letters.
    pub country: Option<String>,
    /// Never 0.
    pub asn: Option<u32>,
    /// `subdivisions[0].iso_code` as the file has it (`MOW`), only when `country` is the record's
    /// own `country.iso_code`; checked by [`super::Region::with_subdivision`].
    pub subdivision: Option<String>,
}

/// The most network names one database gives (GeoLite2-ASN names about 80,000 networks).
pub(super) const MAX_NAMES: usize = 500_000;

/// A verified MaxMind DB, held in memory.
#[derive(Debug)]
pub(super) struct MmdbSource {
    origin: String,
    reader: Reader<Vec<u8>>,
    /// Set after the first failed lookup has been logged (once is enough to tell the operator).
    warned: AtomicBool,
}

impl MmdbSource {
    /// Opens `bytes` and checks the whole file (search tree, separator, every record the tree
    /// points to), so that a corrupt file fails here, at startup, not at a lookup.
    pub(super) fn new(bytes: Vec<u8>, origin: &str) -> Result<Self, GeoError> {
        let err = |what: String| GeoError::File {
            path: origin.to_string(),
            what,
        };
        let reader = Reader::from_source(bytes)
            .map_err(|e| err(format!("not a readable MaxMind DB: {e}")))?;
        reader
            .verify()
            .map_err(|e| err(format!("corrupt MaxMind DB: {e}")))?;
        Ok(MmdbSource {
            origin: origin.to_string(),
            reader,
            warned: AtomicBool::new(false),
        })
    }

    /// The file, as named in errors.
    pub(super) fn origin(&self) -> &str {
        &self.origin
    }

    /// What the file is, for the startup log.
    pub(super) fn describe(&self) -> String {
        let m = self.reader.metadata();
        let built = chrono::DateTime::from_timestamp(i64::try_from(m.build_epoch).unwrap_or(0), 0)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_else(|| m.build_epoch.to_string());
        format!(
            "MaxMind DB {:?}, IPv{} tree of {} nodes, built {built}",
            m.database_type, m.ip_version, m.node_count
        )
    }

    /// Country, ASN and first subdivision of `ip`, each when the database has it. `ip` is never
    /// IPv4-mapped IPv6 (the caller turned those into IPv4).
    pub(super) fn lookup(&self, ip: IpAddr) -> Found {
        if ip.is_ipv6() && self.reader.metadata().ip_version == 4 {
            return Found::default();
        }
        let found = match self.reader.lookup(ip) {
            Ok(found) => found,
            Err(e) => {
                self.warn(&e);
                return Found::default();
            }
        };
        if !found.has_data() {
            return Found::default();
        }
        let field = |p: &[maxminddb::PathElement<'_>]| -> Option<String> {
            match found.decode_path::<String>(p) {
                Ok(v) => v,
                Err(e) => {
                    self.warn(&e);
                    None
                }
            }
        };
        let own = field(&path!["country", "iso_code"]).and_then(|c| super::country_code(&c));
        let subdivision = own
            .as_ref()
            .and_then(|_| field(&path!["subdivisions", 0, "iso_code"]));
        let country = own.or_else(|| {
            field(&path!["registered_country", "iso_code"]).and_then(|c| super::country_code(&c))
        });
        let asn = match found.decode_path::<u32>(&path!["autonomous_system_number"]) {
            Ok(asn) => asn.filter(|&a| a != 0),
            Err(e) => {
                self.warn(&e);
                None
            }
        };
        Found {
            country,
            asn,
            subdivision,
        }
    }

    /// The network names of an ASN database (`autonomous_system_organization` by
    /// `autonomous_system_number`, every network read once at load; at most [`MAX_NAMES`]);
    /// nothing for other databases (Country, City), which name no network.
    pub(super) fn asn_names(&self) -> std::collections::BTreeMap<u32, String> {
        let mut names = std::collections::BTreeMap::new();
        if !self.reader.metadata().database_type.contains("ASN") {
            return names;
        }
        let Ok(networks) = self.reader.networks(Default::default()) else {
            return names;
        };
        for item in networks {
            let Ok(found) = item else { continue };
            let asn = found
                .decode_path::<u32>(&path!["autonomous_system_number"])
                .ok()
                .flatten();
            let org = found
                .decode_path::<String>(&path!["autonomous_system_organization"])
                .ok()
                .flatten();
            if let (Some(asn), Some(org)) = (asn.filter(|&a| a != 0), org) {
                names.entry(asn).or_insert(org);
                if names.len() >= MAX_NAMES {
                    break;
                }
            }
        }
        names
    }

    /// Logs a failed lookup once per file. The message is the decoder's (an offset and a field
    /// path), never the address.
    fn warn(&self, e: &MaxMindDbError) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "region lookup in {} failed ({e}); such senders count as unknown",
                self.origin
            );
        }
    }
}
