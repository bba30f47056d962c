//! Region lookup: the sender's address → (country, ASN). The address goes no further than here.
//!
//! Reads the public-domain ip2asn TSV format (`range_start range_end AS_number country_code
//! AS_description`, tab-separated, IPv4 and IPv6 ranges in one or separate files). Unknown
//! addresses map to country `ZZ`, AS0.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;

/// Where a report came from, as coarse as the collector keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Region {
    /// ISO 3166-1 alpha-2, upper case; `ZZ` when unknown.
    pub country: String,
    /// Autonomous system number; 0 when unknown.
    pub asn: u32,
}

impl Region {
    pub fn unknown() -> Self {
        Region {
            country: "ZZ".into(),
            asn: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot read region table {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {what}")]
    Line {
        path: String,
        line: usize,
        what: String,
    },
}

#[derive(Clone, Debug)]
struct Range {
    start: u128,
    end: u128,
    region: Region,
}

/// A region table, sorted by range start.
#[derive(Clone, Debug, Default)]
pub struct GeoTable {
    ranges: Vec<Range>,
}

fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6),
        },
    }
}

impl GeoTable {
    /// An empty table: every address is unknown.
    pub fn empty() -> Self {
        GeoTable::default()
    }

    pub fn load(path: &Path) -> Result<Self, GeoError> {
        let text = std::fs::read_to_string(path).map_err(|source| GeoError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses ip2asn TSV text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, GeoError> {
        let mut ranges = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let err = |what: String| GeoError::Line {
                path: origin.to_string(),
                line: i + 1,
                what,
            };
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let cols: Vec<&str> = line.split('\t').collect();
            if cols.len() < 4 {
                return Err(err(format!(
                    "expected at least 4 tab-separated columns (range_start range_end AS_number \
                     country_code [AS_description]), found {}",
                    cols.len()
                )));
            }
            let parse_ip = |s: &str| -> Result<IpAddr, GeoError> {
                s.trim()
                    .parse()
                    .map_err(|_| err(format!("{s:?} is not an IP address")))
            };
            let (start, end) = (parse_ip(cols[0])?, parse_ip(cols[1])?);
            if start.is_ipv4() != end.is_ipv4() {
                return Err(err("range mixes IPv4 and IPv6".into()));
            }
            let (start, end) = (key(start), key(end));
            if start > end {
                return Err(err("range_start is after range_end".into()));
            }
            let asn: u32 = cols[2]
                .trim()
                .trim_start_matches("AS")
                .parse()
                .map_err(|_| err(format!("AS number {:?} is not a number", cols[2])))?;
            let cc = cols[3].trim();
            let country = if cc.len() == 2 && cc.chars().all(|c| c.is_ascii_alphabetic()) {
                cc.to_ascii_uppercase()
            } else if cc.eq_ignore_ascii_case("none") || cc.is_empty() {
                "ZZ".to_string()
            } else {
                return Err(err(format!(
                    "country code {cc:?} is not two letters (or None)"
                )));
            };
            ranges.push(Range {
                start,
                end,
                region: Region { country, asn },
            });
        }
        ranges.sort_by_key(|r| r.start);
        for w in ranges.windows(2) {
            if w[1].start <= w[0].end {
                return Err(GeoError::Line {
                    path: origin.to_string(),
                    line: 0,
                    what: format!(
                        "ranges overlap (AS{} and AS{}); a region table must not overlap",
                        w[0].region.asn, w[1].region.asn
                    ),
                });
            }
        }
        Ok(GeoTable { ranges })
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The region of `ip`; unknown when no range holds it.
    pub fn lookup(&self, ip: IpAddr) -> Region {
        let k = key(ip);
        let idx = self.ranges.partition_point(|r| r.start <= k);
        match idx.checked_sub(1).map(|i| &self.ranges[i]) {
            Some(r) if k <= r.end => r.region.clone(),
            _ => Region::unknown(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "1.0.0.0\t1.0.0.255\t13335\tUS\tCLOUDFLARENET\n\
                         5.3.0.0\t5.3.255.255\t12389\tRU\tROSTELECOM-AS\n\
                         2a02:6b8::\t2a02:6b8:ffff:ffff:ffff:ffff:ffff:ffff\t13238\tRU\tYANDEX\n\
                         10.0.0.0\t10.255.255.255\t0\tNone\tNot routed\n";

    #[test]
    fn looks_up_v4_v6_and_unknown() {
        let t = GeoTable::parse(TABLE, "t").unwrap();
        assert_eq!(
            t.lookup("5.3.7.9".parse().unwrap()),
            Region {
                country: "RU".into(),
                asn: 12389
            }
        );
        assert_eq!(t.lookup("2a02:6b8::1".parse().unwrap()).asn, 13238);
        assert_eq!(t.lookup("::ffff:5.3.0.1".parse().unwrap()).asn, 12389);
        assert_eq!(t.lookup("9.9.9.9".parse().unwrap()), Region::unknown());
        assert_eq!(t.lookup("1.0.1.0".parse().unwrap()), Region::unknown());
        assert_eq!(t.lookup("10.1.1.1".parse().unwrap()).country, "ZZ");
    }

    #[test]
    fn bad_lines_name_their_line() {
        let e = GeoTable::parse(
            "1.0.0.0\t1.0.0.255\t13335\tUS\tX\nnot-an-ip\t1.1.1.1\t1\tUS\tX\n",
            "geo.tsv",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("geo.tsv:2:"), "{e}");
        let e = GeoTable::parse("1.0.0.9\t1.0.0.1\t1\tUS\tX\n", "g")
            .unwrap_err()
            .to_string();
        assert!(e.contains("after"), "{e}");
        let e = GeoTable::parse("1.0.0.0\t1.0.0.9\tASx\tUS\tX\n", "g")
            .unwrap_err()
            .to_string();
        assert!(e.contains("AS number"), "{e}");
        assert!(GeoTable::parse(
            "1.0.0.0\t1.0.0.9\t1\tUS\tX\n1.0.0.5\t1.0.0.20\t2\tUS\tY\n",
            "g"
        )
        .is_err());
    }
}
