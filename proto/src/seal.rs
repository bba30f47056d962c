//! Sealed cores: the probe protocol inside a platform framing, masked so that a DPI box without
//! the reflector's key cannot tell it from the platform's own encrypted payload.
//!
//! A censor that knows callwatch could otherwise read the cleartext probe header (version, kind,
//! session id, cookie, sequence number) inside every platform-framed datagram and exempt the
//! measurement from its degradation, or degrade only it. Sealed, a platform arm's datagram is the
//! platform's header bytes followed by bytes that look uniformly random, of the sizes the
//! profile gives, in both directions; whitelisting it means whitelisting the platform.
//!
//! What this is, and what it is not: a *mask* keyed by a secret the censor does not hold, not an
//! authenticated channel. Authentication stays where it was: the reflector's cookie (an HMAC over
//! the agent's address and session) inside the sealed core, and the agent's check that a reply
//! echoes its own send time. A forged or corrupted envelope decodes to garbage and is dropped
//! like any malformed packet.
//!
//! ## Keys
//! - The reflector holds a static X25519 key ([`ReflectorSecret`]); agents know its public half
//!   ([`ReflectorKey`], 64 hex digits in their config) the way they know the collector's pin.
//! - **Open envelope** (agent → reflector): `E ‖ mask(K0, agent, 0)(Open ‖ zeros)`, where `E` is
//!   a fresh ephemeral X25519 public key (its unused top bit random, so all 256 bits vary) and
//!   `K0 = SHA-256(label ‖ X25519(e, R) ‖ E ‖ R)`. At least [`OPEN_ENVELOPE_MIN`] bytes.
//! - **Keyed envelope** (everything else): `N ‖ mask(K, direction, N)(core ‖ zeros)` with an
//!   8-byte nonce `N` that never repeats under one key and direction. The reflector answers an
//!   Open with its Accept (or Reject) under `K0`, and the Accept carries the *session key* `K`
//!   that every later packet of that source address uses. The reflector derives `K` from its
//!   secret and the agent's address, so it holds no state before the first valid probe (the
//!   stateless-cookie rule).
//! - The mask is SHA-256 in counter mode: block `i` is `SHA-256(K ‖ N ‖ direction ‖ i)` (45
//!   bytes: one compression per 32 bytes of mask).
//!
//! Sizes: the padding after a core is masked zeros, so an envelope can be made as long as the
//! profile's packets; a reply envelope is exactly as long as the envelope it answers (the
//! reflector never amplifies), and an Accept fits in its Open's envelope.
//!
//! This module reads no clock and draws no random number: ephemeral secrets and nonces come
//! from the caller.

use crate::probe::OPEN_LEN;
use curve25519_dalek::montgomery::MontgomeryPoint;
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// Length of a key (X25519 public or secret, a session key).
pub const KEY_LEN: usize = 32;
/// Length of a keyed envelope's nonce.
pub const NONCE_LEN: usize = 8;
/// Bytes a keyed envelope adds to its core.
pub const KEYED_OVERHEAD: usize = NONCE_LEN;
/// The smallest Open envelope: the ephemeral key and the Open core.
pub const OPEN_ENVELOPE_MIN: usize = KEY_LEN + OPEN_LEN;

const OPEN_KEY_LABEL: &[u8] = b"callwatch seal v1 open key";
const SESSION_NONCE_LABEL: &[u8] = b"callwatch seal v1 nonce";
const EPHEMERAL_LABEL: &[u8] = b"callwatch seal v1 ephemeral";

/// Who masked a keyed envelope: the two directions never share a mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Direction {
    Agent = 0,
    Reflector = 1,
}

/// A reflector's public sealing key, as agents pin it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReflectorKey(pub [u8; KEY_LEN]);

/// Why a reflector key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("expected the 64 hex digits of the reflector's key (its reflector.pub file), got {0} characters")]
    Length(usize),
    #[error("not hex: {0}")]
    Hex(String),
    #[error("not a usable X25519 public key (a low-order point)")]
    LowOrder,
}

impl ReflectorKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short public name of the key: the first 4 bytes of its SHA-256, which reflectors
    /// advertise in every `Accept` so that an agent holding another key can tell.
    pub fn id(&self) -> [u8; 4] {
        let d: [u8; 32] = Sha256::digest(self.0).into();
        [d[0], d[1], d[2], d[3]]
    }
}

impl fmt::Debug for ReflectorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReflectorKey({})", self.to_hex())
    }
}

impl fmt::Display for ReflectorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for ReflectorKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let s = s.trim();
        if s.len() != 2 * KEY_LEN {
            return Err(KeyError::Length(s.len()));
        }
        let mut key = [0u8; KEY_LEN];
        hex::decode_to_slice(s, &mut key).map_err(|e| KeyError::Hex(e.to_string()))?;
        // A low-order point would make every shared secret predictable; refuse it up front.
        if MontgomeryPoint(key).mul_clamped([0x11; KEY_LEN]).0 == [0u8; KEY_LEN] {
            return Err(KeyError::LowOrder);
        }
        Ok(ReflectorKey(key))
    }
}

/// A reflector's static sealing secret (32 random bytes, clamped when used).
#[derive(Clone)]
pub struct ReflectorSecret([u8; KEY_LEN]);

impl fmt::Debug for ReflectorSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReflectorSecret(..)")
    }
}

impl ReflectorSecret {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        ReflectorSecret(bytes)
    }

    pub fn public(&self) -> ReflectorKey {
        ReflectorKey(MontgomeryPoint::mul_base_clamped(self.0).to_bytes())
    }

    /// The Open core inside an Open envelope and the key `K0` its answer is sealed with, or
    /// `None` when `envelope` is too short or its ephemeral key is a low-order point. Any other
    /// byte string "opens" to garbage that the caller's decoder refuses.
    pub fn open_envelope(&self, envelope: &[u8]) -> Option<([u8; KEY_LEN], Vec<u8>)> {
        if envelope.len() < OPEN_ENVELOPE_MIN {
            return None;
        }
        let mut eph = [0u8; KEY_LEN];
        eph.copy_from_slice(&envelope[..KEY_LEN]);
        eph[KEY_LEN - 1] &= 0x7F;
        let shared = MontgomeryPoint(eph).mul_clamped(self.0).to_bytes();
        if shared == [0u8; KEY_LEN] {
            return None;
        }
        let k0 = open_key(&shared, &eph, &self.public().0);
        let mut plain = envelope[KEY_LEN..].to_vec();
        apply_mask(&k0, Direction::Agent, &[0; NONCE_LEN], &mut plain);
        Some((k0, plain))
    }
}

fn open_key(shared: &[u8; KEY_LEN], eph: &[u8; KEY_LEN], reflector: &[u8; KEY_LEN]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(OPEN_KEY_LABEL);
    h.update(shared);
    h.update(eph);
    h.update(reflector);
    h.finalize().into()
}

/// XORs `buf` with the mask of `(key, direction, nonce)`.
pub fn apply_mask(
    key: &[u8; KEY_LEN],
    direction: Direction,
    nonce: &[u8; NONCE_LEN],
    buf: &mut [u8],
) {
    let mut input = [0u8; KEY_LEN + NONCE_LEN + 1 + 4];
    input[..KEY_LEN].copy_from_slice(key);
    input[KEY_LEN..KEY_LEN + NONCE_LEN].copy_from_slice(nonce);
    input[KEY_LEN + NONCE_LEN] = direction as u8;
    for (i, chunk) in buf.chunks_mut(32).enumerate() {
        input[KEY_LEN + NONCE_LEN + 1..].copy_from_slice(&(i as u32).to_be_bytes());
        let block: [u8; 32] = Sha256::digest(input).into();
        for (b, m) in chunk.iter_mut().zip(block) {
            *b ^= m;
        }
    }
}

/// Appends the Open envelope of `open_core` to `out`, `len` bytes long (at least
/// [`OPEN_ENVELOPE_MIN`]), and returns `K0`, the key the reflector's answer is sealed with.
/// `ephemeral` is the caller's fresh random secret for this envelope.
pub fn seal_open(
    reflector: &ReflectorKey,
    ephemeral: [u8; KEY_LEN],
    open_core: &[u8],
    len: usize,
    out: &mut Vec<u8>,
) -> [u8; KEY_LEN] {
    let eph = MontgomeryPoint::mul_base_clamped(ephemeral).to_bytes();
    let shared = MontgomeryPoint(reflector.0)
        .mul_clamped(ephemeral)
        .to_bytes();
    let k0 = open_key(&shared, &eph, &reflector.0);
    let mut wire_eph = eph;
    // The encoding's top bit is always 0; set it from the secret so that it varies too (the
    // reflector clears it, as RFC 7748 requires of every receiver).
    let spare_bit = Sha256::digest([EPHEMERAL_LABEL, &ephemeral[..]].concat())[0] & 0x80;
    wire_eph[KEY_LEN - 1] |= spare_bit;
    out.extend_from_slice(&wire_eph);
    let start = out.len();
    out.extend_from_slice(open_core);
    let body = len
        .max(OPEN_ENVELOPE_MIN)
        .saturating_sub(KEY_LEN)
        .max(open_core.len());
    out.resize(start + body, 0);
    apply_mask(&k0, Direction::Agent, &[0; NONCE_LEN], &mut out[start..]);
    k0
}

/// Appends the keyed envelope of `core` to `out`: the nonce and the masked core padded with
/// masked zeros to `len` bytes in all (never shorter than the core and its nonce).
pub fn seal(
    key: &[u8; KEY_LEN],
    direction: Direction,
    nonce: [u8; NONCE_LEN],
    core: &[u8],
    len: usize,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&nonce);
    let start = out.len();
    out.extend_from_slice(core);
    out.resize(start + len.saturating_sub(NONCE_LEN).max(core.len()), 0);
    apply_mask(key, direction, &nonce, &mut out[start..]);
}

/// The plaintext inside a keyed envelope (core and padding), and its nonce; `None` when it is
/// too short to hold a nonce. Whether the plaintext is a packet is the decoder's to say.
pub fn unseal(
    key: &[u8; KEY_LEN],
    direction: Direction,
    envelope: &[u8],
) -> Option<([u8; NONCE_LEN], Vec<u8>)> {
    let nonce: [u8; NONCE_LEN] = envelope.get(..NONCE_LEN)?.try_into().ok()?;
    let mut plain = envelope[NONCE_LEN..].to_vec();
    apply_mask(key, direction, &nonce, &mut plain);
    Some((nonce, plain))
}

/// A per-datagram value derived from a sender's secret `seed`: the `n`th nonce, or the `n`th
/// ephemeral secret (distinct labels, so the two never coincide).
pub fn derive(seed: &[u8; KEY_LEN], ephemeral: bool, n: u64) -> [u8; KEY_LEN] {
    let mut h = Sha256::new();
    h.update(if ephemeral {
        EPHEMERAL_LABEL
    } else {
        SESSION_NONCE_LABEL
    });
    h.update(seed);
    h.update(n.to_be_bytes());
    h.finalize().into()
}

/// The nonce of the reflector's answer to an envelope with nonce `request`: unique per request,
/// random-looking, and drawn without a random number generator.
pub fn answer_nonce(key: &[u8; KEY_LEN], request: &[u8; NONCE_LEN]) -> [u8; NONCE_LEN] {
    let mut h = Sha256::new();
    h.update(SESSION_NONCE_LABEL);
    h.update(key);
    h.update(request);
    let d: [u8; 32] = h.finalize().into();
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(&d[..NONCE_LEN]);
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{Open, Packet};

    fn unhex(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).unwrap();
        out
    }

    #[test]
    fn x25519_matches_rfc7748_section_6_1() {
        let alice = unhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let bob_public = unhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        assert_eq!(
            ReflectorSecret::from_bytes(alice).public().to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        assert_eq!(
            hex::encode(MontgomeryPoint(bob_public).mul_clamped(alice).to_bytes()),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        );
    }

    #[test]
    fn an_open_envelope_opens_only_with_the_reflectors_secret() {
        let secret = ReflectorSecret::from_bytes([7; 32]);
        let open = Packet::Open(Open {
            session: 0x1122_3344_5566_7788,
            interval_ms: 20,
            size: 120,
            duration_ms: 15_000,
        })
        .encode();
        let mut env = Vec::new();
        let k0 = seal_open(&secret.public(), [9; 32], &open, 130, &mut env);
        assert_eq!(env.len(), 130);
        // Nothing of the cleartext core shows.
        assert!(env.windows(8).all(|w| w != &open[2..10]));
        let (k, plain) = secret.open_envelope(&env).unwrap();
        assert_eq!(k, k0);
        assert_eq!(&plain[..open.len()], &open[..]);
        assert!(plain[open.len()..].iter().all(|&b| b == 0));
        let other = ReflectorSecret::from_bytes([8; 32]);
        let (_, garbage) = other.open_envelope(&env).unwrap();
        assert_ne!(&garbage[..open.len()], &open[..]);
    }

    #[test]
    fn keyed_envelopes_round_trip_and_never_repeat_a_mask() {
        let key = [3u8; 32];
        let core = [0x01, 0x03, 0, 0, 0, 0, 0, 0, 0, 1];
        let (mut a, mut b) = (Vec::new(), Vec::new());
        seal(&key, Direction::Agent, [1; 8], &core, 40, &mut a);
        seal(&key, Direction::Agent, [2; 8], &core, 40, &mut b);
        assert_eq!(a.len(), 40);
        assert_ne!(a[8..], b[8..], "another nonce, another mask");
        let (nonce, plain) = unseal(&key, Direction::Agent, &a).unwrap();
        assert_eq!(nonce, [1; 8]);
        assert_eq!(&plain[..core.len()], &core);
        let (_, wrong_direction) = unseal(&key, Direction::Reflector, &a).unwrap();
        assert_ne!(&wrong_direction[..core.len()], &core);
        assert!(unseal(&key, Direction::Agent, &a[..7]).is_none());
    }

    #[test]
    fn reflector_keys_parse_with_clear_errors() {
        let key = ReflectorSecret::from_bytes([5; 32]).public();
        assert_eq!(key.to_hex().parse::<ReflectorKey>(), Ok(key));
        assert_eq!("abc".parse::<ReflectorKey>(), Err(KeyError::Length(3)));
        assert!(matches!(
            "zz".repeat(32).parse::<ReflectorKey>(),
            Err(KeyError::Hex(_))
        ));
        assert_eq!(
            "00".repeat(32).parse::<ReflectorKey>(),
            Err(KeyError::LowOrder)
        );
    }

    #[test]
    fn masked_bytes_look_uniform() {
        // A crude check that the mask has no gross bias: over 64 KiB of masked zeros every byte
        // value appears within 5 sigma of its expectation (256 per value).
        let mut buf = vec![0u8; 65_536];
        apply_mask(&[1; 32], Direction::Agent, &[0; 8], &mut buf);
        let mut counts = [0u32; 256];
        for b in buf {
            counts[b as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (176..=336).contains(&c)),
            "{counts:?}"
        );
    }
}
