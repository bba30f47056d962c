//! The collector's carry key pair (X25519). Carry-out files ([`crate::carry`]) and path tokens
//! ([`crate::pathtoken`]) are both sealed to its public half; only the collector holds the
//! secret. A module of its own so that neither format depends on the other.

use curve25519_dalek::montgomery::MontgomeryPoint;
use std::fmt;
use std::str::FromStr;

/// Length of an X25519 key.
pub const KEY_LEN: usize = 32;
/// A collector's public carry-out key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CarryKey(pub [u8; KEY_LEN]);

impl fmt::Display for CarryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for CarryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CarryKey({self})")
    }
}

impl FromStr for CarryKey {
    type Err = String;

    /// 64 hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; KEY_LEN];
        hex::decode_to_slice(s.trim(), &mut out)
            .map_err(|_| "expected 64 hex digits (an X25519 public key)".to_string())?;
        Ok(CarryKey(out))
    }
}

/// A collector's secret carry-out key. Its `Debug` shows only the public half.
#[derive(Clone)]
pub struct CarrySecret([u8; KEY_LEN]);

impl CarrySecret {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        CarrySecret(bytes)
    }

    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0
    }

    pub fn public(&self) -> CarryKey {
        CarryKey(MontgomeryPoint::mul_base_clamped(self.0).to_bytes())
    }
}

impl fmt::Debug for CarrySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CarrySecret(public {})", self.public())
    }
}
