//! Path tokens: the network prefix a call test's probes came from, sealed by the reflector to the
//! collector.
//!
//! Counting volunteers by network prefix (IPv4 /24, IPv6 /48) rather than by key is what makes
//! one party with many keys visible. The prefix that matters is the measured path's, which only
//! the reflector sees; the upload address may be a VPN exit or a carrier NAT shared by many.
//! So with a region attestation ([`crate::attest`]) the reflector also makes a token: the
//! prefix, encrypted to the collector's X25519 key (its carry-out key,
//! [`crate::carry::CarryKey`]) under an ephemeral key, bound to the report id and hour. The
//! attestation's signature covers the token's digest, so an agent can neither forge a token
//! (anyone can encrypt to a public key, only the reflector can sign) nor move one to another
//! report. The agent cannot read it; it travels beside the signed report, never inside it
//! ([`crate::upload::QueuedReport`]), so exports — which carry signed bodies — never contain
//! it. Only the collector opens it, at ingest, and keeps no prefix.
//!
//! Layout, [`PATH_TOKEN_LEN`] bytes: ephemeral X25519 public key (32) ‖ ChaCha20-Poly1305 of the
//! 7-byte prefix (family: 4 or 6; then the /24's 3 bytes and 3 zero bytes, or the /48's 6 bytes)
//! with its 16-byte tag. Key: SHA-256(`"callwatch path token v1"` ‖ X25519 shared secret ‖
//! ephemeral public ‖ collector public); nonce 0 (the key is never used twice); associated data:
//! report id (16) ‖ hour (u32 BE).

use crate::carry_key::{CarryKey, CarrySecret};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use curve25519_dalek::montgomery::MontgomeryPoint;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use thiserror::Error;

const PLAIN_LEN: usize = 7;
const TAG_LEN: usize = 16;
/// Bytes of a path token.
pub const PATH_TOKEN_LEN: usize = 32 + PLAIN_LEN + TAG_LEN;
/// Bytes of a token's digest as an attestation signs it.
pub const DIGEST_LEN: usize = 16;
const KEY_LABEL: &[u8] = b"callwatch path token v1";

/// A sealed path token.
pub type PathToken = [u8; PATH_TOKEN_LEN];

/// A network prefix as Sybil accounting counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NetPrefix {
    /// An IPv4 /24.
    V4([u8; 3]),
    /// An IPv6 /48.
    V6([u8; 6]),
}

impl NetPrefix {
    /// The prefix an address belongs to; IPv4-mapped IPv6 addresses count as IPv4.
    pub fn of(ip: IpAddr) -> NetPrefix {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                NetPrefix::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                NetPrefix::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
            }
        }
    }

    fn to_plain(self) -> [u8; PLAIN_LEN] {
        let mut p = [0u8; PLAIN_LEN];
        match self {
            NetPrefix::V4(b) => {
                p[0] = 4;
                p[1..4].copy_from_slice(&b);
            }
            NetPrefix::V6(b) => {
                p[0] = 6;
                p[1..7].copy_from_slice(&b);
            }
        }
        p
    }

    fn from_plain(p: &[u8]) -> Option<NetPrefix> {
        match p {
            [4, a, b, c, 0, 0, 0] => Some(NetPrefix::V4([*a, *b, *c])),
            [6, rest @ ..] => Some(NetPrefix::V6(rest.try_into().ok()?)),
            _ => None,
        }
    }

    /// Bytes that name the prefix (family, then its bytes), for keyed hashing.
    pub fn bytes(self) -> [u8; PLAIN_LEN] {
        self.to_plain()
    }
}

/// Why a token does not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error("path token is not {PATH_TOKEN_LEN} bytes")]
    Length,
    #[error("path token does not open with this collector's key for this report and hour")]
    DoesNotOpen,
    #[error("path token holds no network prefix")]
    NotAPrefix,
}

impl TokenError {
    /// A short stable label for counting by reason.
    pub fn label(self) -> &'static str {
        match self {
            TokenError::Length => "malformed",
            TokenError::DoesNotOpen => "does_not_open",
            TokenError::NotAPrefix => "not_a_prefix",
        }
    }
}

fn cipher(shared: MontgomeryPoint, ephemeral: &[u8; 32], to: &CarryKey) -> ChaCha20Poly1305 {
    let mut h = Sha256::new();
    h.update(KEY_LABEL);
    h.update(shared.to_bytes());
    h.update(ephemeral);
    h.update(to.0);
    ChaCha20Poly1305::new(&h.finalize())
}

fn aad(report_id: &[u8; 16], hour: u32) -> [u8; 20] {
    let mut a = [0u8; 20];
    a[..16].copy_from_slice(report_id);
    a[16..].copy_from_slice(&hour.to_be_bytes());
    a
}

/// Seals `prefix` to the collector key `to` for the report `report_id` attested in `hour`, with
/// the caller's fresh random `ephemeral` secret (never use one twice). `None` only if the
/// cipher failed, which ChaCha20-Poly1305 does not for 7 bytes.
pub fn seal(
    to: &CarryKey,
    prefix: NetPrefix,
    report_id: &[u8; 16],
    hour: u32,
    ephemeral: [u8; 32],
) -> Option<PathToken> {
    let e = MontgomeryPoint::mul_base_clamped(ephemeral).to_bytes();
    let shared = MontgomeryPoint(to.0).mul_clamped(ephemeral);
    let sealed = cipher(shared, &e, to)
        .encrypt(
            &Default::default(),
            Payload {
                msg: &prefix.to_plain(),
                aad: &aad(report_id, hour),
            },
        )
        .ok()?;
    let mut token = [0u8; PATH_TOKEN_LEN];
    token[..32].copy_from_slice(&e);
    token
        .get_mut(32..)?
        .copy_from_slice(sealed.get(..PLAIN_LEN + TAG_LEN)?);
    Some(token)
}

/// Opens a token with the collector's secret key, for the report and hour its attestation
/// names. Never panics.
pub fn open(
    secret: &CarrySecret,
    token: &[u8],
    report_id: &[u8; 16],
    hour: u32,
) -> Result<NetPrefix, TokenError> {
    if token.len() != PATH_TOKEN_LEN {
        return Err(TokenError::Length);
    }
    let (e, sealed) = token.split_at(32);
    let e: [u8; 32] = e.try_into().map_err(|_| TokenError::Length)?;
    let shared = MontgomeryPoint(e).mul_clamped(secret.to_bytes());
    if shared.to_bytes() == [0u8; 32] {
        // A low-order ephemeral key: every collector would derive the same key.
        return Err(TokenError::DoesNotOpen);
    }
    let plain = cipher(shared, &e, &secret.public())
        .decrypt(
            &Default::default(),
            Payload {
                msg: sealed,
                aad: &aad(report_id, hour),
            },
        )
        .map_err(|_| TokenError::DoesNotOpen)?;
    NetPrefix::from_plain(&plain).ok_or(TokenError::NotAPrefix)
}

/// The digest of a token an attestation signs: the first 16 bytes of its SHA-256.
pub fn digest(token: &[u8]) -> [u8; DIGEST_LEN] {
    let d = Sha256::digest(token);
    let mut out = [0u8; DIGEST_LEN];
    out.copy_from_slice(&d[..DIGEST_LEN]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn collector() -> CarrySecret {
        CarrySecret::from_bytes([9; 32])
    }

    #[test]
    fn a_token_opens_for_its_collector_report_and_hour_only() {
        let c = collector();
        let ip: IpAddr = "203.0.113.77".parse().unwrap();
        let prefix = NetPrefix::of(ip);
        assert_eq!(prefix, NetPrefix::V4([203, 0, 113]));
        let t = seal(&c.public(), prefix, &[1; 16], 490_000, [5; 32]).unwrap();
        assert_eq!(open(&c, &t, &[1; 16], 490_000), Ok(prefix));
        // Nothing of the address shows in the token.
        assert!(!t.windows(3).any(|w| w == [203, 0, 113]));
        assert_eq!(
            open(&c, &t, &[2; 16], 490_000),
            Err(TokenError::DoesNotOpen)
        );
        assert_eq!(
            open(&c, &t, &[1; 16], 490_001),
            Err(TokenError::DoesNotOpen)
        );
        let other = CarrySecret::from_bytes([8; 32]);
        assert_eq!(
            open(&other, &t, &[1; 16], 490_000),
            Err(TokenError::DoesNotOpen)
        );
        assert_eq!(
            open(&c, &t[1..], &[1; 16], 490_000),
            Err(TokenError::Length)
        );
        let mut flipped = t;
        flipped[40] ^= 1;
        assert_eq!(
            open(&c, &flipped, &[1; 16], 490_000),
            Err(TokenError::DoesNotOpen)
        );
        // A fresh ephemeral key gives another token for the same prefix: tokens do not link.
        let again = seal(&c.public(), prefix, &[1; 16], 490_000, [6; 32]).unwrap();
        assert_ne!(t, again);
        assert_ne!(digest(&t), digest(&again));
    }

    #[test]
    fn prefixes_are_a_slash_24_and_a_slash_48_and_mapped_addresses_count_as_ipv4() {
        let v6: IpAddr = "2001:db8:abcd:12::1".parse().unwrap();
        assert_eq!(
            NetPrefix::of(v6),
            NetPrefix::V6([0x20, 0x01, 0x0d, 0xb8, 0xab, 0xcd])
        );
        let same48: IpAddr = "2001:db8:abcd:ffff::9".parse().unwrap();
        assert_eq!(NetPrefix::of(v6), NetPrefix::of(same48));
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert_eq!(NetPrefix::of(mapped), NetPrefix::V4([198, 51, 100]));
        let c = collector();
        let t = seal(&c.public(), NetPrefix::of(v6), &[0; 16], 1, [3; 32]).unwrap();
        assert_eq!(open(&c, &t, &[0; 16], 1), Ok(NetPrefix::of(v6)));
    }

    #[test]
    fn a_low_order_ephemeral_key_does_not_open() {
        let mut t = [0u8; PATH_TOKEN_LEN];
        // The all-zero point: X25519 with it is zero for every secret.
        t[32..].fill(7);
        assert_eq!(
            open(&collector(), &t, &[0; 16], 0),
            Err(TokenError::DoesNotOpen)
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80), hour: u32) {
            let _ = open(&collector(), &bytes, &[0; 16], hour);
        }
    }
}
