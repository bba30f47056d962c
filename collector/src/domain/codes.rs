//! The one encoding of a fine cell's parts: the byte each platform, arm and stream kind has in
//! a [`super::CellKey`] and the same code in ClickHouse's columns, and the country code both
//! normalise to. Changing a code changes every stored cell key and ClickHouse row: codes are
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
}
