//! The one encoding of a fine cell's parts: the byte each platform, arm and stream kind has in
//! a [`super::CellKey`] and the same code in ClickHouse's columns, and the country and
//! subdivision codes both normalise to. Changing a code changes every stored cell key and ClickHouse row: codes are
//! only ever added.

use callwatch_proto::report::StreamKind;
use callwatch_proto::{Platform, Role};

/// A country as cells key it: two ASCII letters, upper case; `ZZ` for anything else.
pub fn country_code(c: &str) -> [u8; 2] {
    match c.as_bytes() {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            [a.to_ascii_uppercase(), b.to_ascii_uppercase()]
        }
        _ => *b"ZZ",
    }
}

/// [`country_code`] as text.
pub fn country_text(c: &str) -> String {
    country_code(c).iter().map(|b| char::from(*b)).collect()
}

/// A cell's subdivision when it has none (unknown, or before subdivisions were kept).
pub const NO_SUBDIVISION: [u8; 3] = [0; 3];

/// The subdivision of a region as cells key it: the part of its ISO 3166-2 code after the
/// hyphen (`RU-MOW` → `MOW`), zero-padded to 3 bytes; [`NO_SUBDIVISION`] when `subdivision` is
/// empty, not a valid code, or of another country than `country`.
pub fn subdivision_code(country: &str, subdivision: &str) -> [u8; 3] {
    let cc = country_text(country);
    match callwatch_reflector::geo::subdivision_code(&cc, subdivision) {
        Some(code) => {
            let mut out = NO_SUBDIVISION;
            for (o, b) in out.iter_mut().zip(code.bytes().skip(3)) {
                *o = b;
            }
            out
        }
        None => NO_SUBDIVISION,
    }
}

/// Whether 3 bytes are a cell's subdivision: [`NO_SUBDIVISION`], or one to three upper-case
/// ASCII letters or digits padded with zero bytes.
pub fn subdivision_is_valid(s: &[u8; 3]) -> bool {
    let len = s.iter().position(|&b| b == 0).unwrap_or(3);
    s[..len]
        .iter()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && s[len..].iter().all(|&b| b == 0)
}

/// A region as the API and exports show it: the ISO 3166-2 code (`RU-MOW`), or the country alone
/// (`RU`) when the subdivision is unknown. (ISO 3166-2 codes always have the hyphen, so the two
/// never collide.)
pub fn region_text(country: [u8; 2], subdivision: [u8; 3]) -> String {
    let mut s: String = country.iter().map(|&b| char::from(b)).collect();
    let len = subdivision.iter().position(|&b| b == 0).unwrap_or(3);
    if len > 0 {
        s.push('-');
        s.extend(subdivision[..len].iter().map(|&b| char::from(b)));
    }
    s
}

/// Parses a region filter: an ISO 3166-2 subdivision code, `CC-XXX` (one to three letters or
/// digits after the hyphen, any case), into its country and cell subdivision.
pub fn parse_region(s: &str) -> Result<([u8; 2], [u8; 3]), String> {
    let bad = || {
        format!(
            "{s:?} is not an ISO 3166-2 subdivision code (a country, a hyphen and one to three \
             letters or digits, e.g. RU-MOW)"
        )
    };
    let (cc, _) = s.split_once('-').ok_or_else(bad)?;
    let country = country_code(cc);
    if &country == b"ZZ" {
        return Err(bad());
    }
    match subdivision_code(cc, s) {
        NO_SUBDIVISION => Err(bad()),
        sub => Ok((country, sub)),
    }
}

/// The platform's code.
pub fn platform_code(p: Platform) -> u8 {
    match p {
        Platform::Generic => 0,
        Platform::Whatsapp => 1,
        Platform::Telegram => 2,
        Platform::Signal => 3,
        Platform::Max => 4,
    }
}

/// The platform of a [`platform_code`].
pub fn platform_of_code(code: u8) -> Option<Platform> {
    Platform::ALL
        .into_iter()
        .find(|p| platform_code(*p) == code)
}

const ROLES: [Role; 4] = [
    Role::Platform,
    Role::Control,
    Role::Relay,
    Role::RelayReference,
];

/// The arm's (stream role's) code.
pub fn arm_code(r: Role) -> u8 {
    match r {
        Role::Platform => 0,
        Role::Control => 1,
        Role::Relay => 2,
        Role::RelayReference => 3,
    }
}

/// The arm of an [`arm_code`].
pub fn arm_of_code(code: u8) -> Option<Role> {
    ROLES.into_iter().find(|r| arm_code(*r) == code)
}

/// The stream kind's code.
pub fn kind_code(k: StreamKind) -> u8 {
    match k {
        StreamKind::Voice => 0,
        StreamKind::Video => 1,
    }
}

/// The stream kind of a [`kind_code`].
pub fn kind_of_code(code: u8) -> Option<StreamKind> {
    [StreamKind::Voice, StreamKind::Video]
        .into_iter()
        .find(|k| kind_code(*k) == code)
}

/// Parses a stream kind as the API and the reports spell it (`voice`, `video`).
pub fn parse_kind(s: &str) -> Result<StreamKind, String> {
    [StreamKind::Voice, StreamKind::Video]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| format!("{s:?} is not voice or video"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_and_no_two_share_one() {
        let mut seen = std::collections::BTreeSet::new();
        for p in Platform::ALL {
            assert_eq!(platform_of_code(platform_code(p)), Some(p));
            assert!(seen.insert(platform_code(p)));
        }
        seen.clear();
        for r in ROLES {
            assert_eq!(arm_of_code(arm_code(r)), Some(r));
            assert!(seen.insert(arm_code(r)));
        }
        for k in [StreamKind::Voice, StreamKind::Video] {
            assert_eq!(kind_of_code(kind_code(k)), Some(k));
            assert_eq!(parse_kind(k.as_str()), Ok(k));
        }
        assert_eq!(kind_code(StreamKind::Video), 1);
        assert_eq!(platform_of_code(200), None);
        assert_eq!(arm_of_code(9), None);
        assert_eq!(kind_of_code(2), None);
        assert_eq!(country_text("ru"), "RU");
        assert_eq!(country_text("R1"), "ZZ");
        assert_eq!(country_text("RUS"), "ZZ");
        assert!(parse_kind("audio").is_err());
    }

    #[test]
    fn subdivisions_encode_in_three_bytes_and_read_back() {
        assert_eq!(&subdivision_code("RU", "RU-MOW"), b"MOW");
        assert_eq!(&subdivision_code("ru", "RU-mow"), b"MOW");
        assert_eq!(subdivision_code("US", "US-CA"), *b"CA\0");
        assert_eq!(subdivision_code("RU", "DE-BE"), NO_SUBDIVISION);
        assert_eq!(subdivision_code("RU", ""), NO_SUBDIVISION);
        assert_eq!(subdivision_code("ZZ", "ZZ-MOW"), NO_SUBDIVISION);
        assert_eq!(region_text(*b"RU", *b"MOW"), "RU-MOW");
        assert_eq!(region_text(*b"US", *b"CA\0"), "US-CA");
        assert_eq!(region_text(*b"RU", NO_SUBDIVISION), "RU");
        for ok in [*b"MOW", *b"CA\0", *b"7\0\0", NO_SUBDIVISION] {
            assert!(subdivision_is_valid(&ok), "{ok:?}");
        }
        for bad in [*b"mow", *b"C\0A", *b"\0AB", *b"M-W", [0xff, 0, 0]] {
            assert!(!subdivision_is_valid(&bad), "{bad:?}");
        }
        assert_eq!(parse_region("RU-MOW"), Ok((*b"RU", *b"MOW")));
        assert_eq!(parse_region("us-ca"), Ok((*b"US", *b"CA\0")));
        for bad in [
            "RU", "RU-", "RU-MOWX", "ZZ-MOW", "R-MOW", "", "RU MOW", "RU-M W",
        ] {
            assert!(parse_region(bad).is_err(), "{bad:?}");
        }
    }
}
