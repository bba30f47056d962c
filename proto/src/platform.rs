//! Names shared by every part: which platform a test imitates, which arm a stream is, and the verdict.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The messaging platform whose call traffic a test imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Plain RTP/Opus-shaped traffic with no platform signature; a single arm.
    Generic,
    Whatsapp,
    Telegram,
    Signal,
    /// The state-promoted Russian messenger "Max".
    Max,
}

impl Platform {
    pub const ALL: [Platform; 5] = [
        Platform::Generic,
        Platform::Whatsapp,
        Platform::Telegram,
        Platform::Signal,
        Platform::Max,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Generic => "generic",
            Platform::Whatsapp => "whatsapp",
            Platform::Telegram => "telegram",
            Platform::Signal => "signal",
            Platform::Max => "max",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a platform name that is not one of [`Platform::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown platform {0:?}; expected one of generic, whatsapp, telegram, signal, max")]
pub struct UnknownPlatform(pub String);

impl FromStr for Platform {
    type Err = UnknownPlatform;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPlatform(s.to_string()))
    }
}

/// Which arm of a test a stream belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Framed like the platform's call traffic, on the platform's ports.
    Platform,
    /// Same timing and sizes as the platform arm, with neutral bytes on a neutral port.
    Control,
    /// STUN Binding requests to the platform's own relay infrastructure.
    Relay,
    /// The same STUN Binding requests to a neutral server of ours (the reflector host): the
    /// relay's reference, so an unreachable relay can be told from an unreachable network.
    #[serde(rename = "relay-reference")]
    RelayReference,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Platform => "platform",
            Role::Control => "control",
            Role::Relay => "relay",
            Role::RelayReference => "relay-reference",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a test found the platform arm treated worse than its control arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    None,
    Inconclusive,
    Differentiated,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::None => "none",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Differentiated => "differentiated",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_names_round_trip() {
        for p in Platform::ALL {
            assert_eq!(p.as_str().parse::<Platform>().unwrap(), p);
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        assert!("skype".parse::<Platform>().is_err());
    }
}
