//! Networks that are not subscribers' lines: hosting, cloud and VPN providers.
//!
//! A call test whose measured path is filed under one of these networks measured a VPN exit or a
//! rented server, not what a subscriber of the country gets; a report is marked (`hosting`, see
//! [`crate::domain::Filing`]) so researchers can leave it out. The built-in list ([`BUILT_IN`])
//! names large hosting and cloud networks and networks where commercial VPNs keep many exits;
//! it is a starting point, not a classification of the Internet. An operator adds to it, or
//! takes entries out, with a file (`serve --hosting-asns FILE`, [`HostingAsns::load`]).

use std::collections::BTreeSet;
use std::path::Path;

/// The built-in hosting, cloud and VPN networks: (ASN, holder).
pub const BUILT_IN: &[(u32, &str)] = &[
    (8075, "Microsoft (Azure)"),
    (9009, "M247 (many VPN exits)"),
    (9123, "TimeWeb"),
    (12876, "Scaleway"),
    (13335, "Cloudflare (WARP)"),
    (14061, "DigitalOcean"),
    (14618, "Amazon (AWS)"),
    (16276, "OVH"),
    (16509, "Amazon (AWS)"),
    (20473, "Vultr (Choopa)"),
    (24940, "Hetzner Online"),
    (31898, "Oracle Cloud"),
    (36352, "ColoCrossing"),
    (39351, "31173 Services (Mullvad VPN)"),
    (45102, "Alibaba Cloud"),
    (49505, "Selectel"),
    (51167, "Contabo"),
    (60068, "Datacamp / CDN77 (many VPN exits)"),
    (60781, "LeaseWeb Netherlands"),
    (62240, "Clouvider"),
    (63949, "Akamai Connected Cloud (Linode)"),
    (132203, "Tencent Cloud"),
    (136787, "TEFINCOM (NordVPN)"),
    (197540, "netcup"),
    (200350, "Yandex.Cloud"),
    (212238, "Datacamp (many VPN exits)"),
    (396982, "Google Cloud"),
];

/// The set of hosting ASNs a collector marks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostingAsns(BTreeSet<u32>);

impl Default for HostingAsns {
    /// The built-in list.
    fn default() -> Self {
        HostingAsns(BUILT_IN.iter().map(|(asn, _)| *asn).collect())
    }
}

impl HostingAsns {
    pub fn contains(&self, asn: u32) -> bool {
        asn != 0 && self.0.contains(&asn)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The built-in list changed by `text`: one entry per line, `ASN` or `AS<number>` to add a
    /// network, `-ASN` to take a built-in one out; `#` starts a comment; blank lines are
    /// skipped. Any other line is an error naming its line number, and nothing is applied.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut set = HostingAsns::default();
        for (i, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let (remove, number) = match entry.strip_prefix('-') {
                Some(rest) => (true, rest.trim()),
                None => (false, entry),
            };
            let digits = number
                .strip_prefix("AS")
                .or_else(|| number.strip_prefix("as"))
                .unwrap_or(number);
            let asn: u32 = digits.parse().ok().filter(|a| *a != 0).ok_or_else(|| {
                format!(
                    "line {}: {entry:?} is not an AS number (write 64500, AS64500, or \
                         -64500 to take a built-in network out)",
                    i + 1
                )
            })?;
            if remove {
                set.0.remove(&asn);
            } else {
                set.0.insert(asn);
            }
        }
        Ok(set)
    }

    /// [`HostingAsns::parse`] of a file; errors name the file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("reading the hosting-network list {}: {e}", path.display())
        })?;
        HostingAsns::parse(&text)
            .map_err(|e| anyhow::anyhow!("hosting-network list {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_list_marks_hosting_networks_and_never_as0() {
        let h = HostingAsns::default();
        assert!(h.contains(16509) && h.contains(24940) && h.contains(136787));
        assert!(!h.contains(12389), "Rostelecom is a subscriber network");
        assert!(!h.contains(0));
        assert_eq!(
            h.len(),
            BUILT_IN.len(),
            "no duplicates in the built-in list"
        );
    }

    #[test]
    fn a_file_adds_and_removes_and_bad_lines_are_named() {
        let h = HostingAsns::parse("# ours\nAS64500\n64501 # lab\n\n-24940\n").unwrap();
        assert!(h.contains(64500) && h.contains(64501));
        assert!(!h.contains(24940));
        assert!(h.contains(16509));
        let e = HostingAsns::parse("64500\nhetzner\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("hetzner"), "{e}");
        assert!(HostingAsns::parse("AS0").is_err());
        assert!(HostingAsns::parse("-").is_err());
    }
}
