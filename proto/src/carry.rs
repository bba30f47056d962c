//! Carry-out files: an agent's queued signed reports, sealed to the collector's carry-out key, for
//! a volunteer to carry past a block on a USB stick or through any channel that still works.
//!
//! Carrying such a file is itself evidence of volunteering, so nothing in it is in the clear:
//! no magic string, no collector name, no agent key. It is lines of base64, one header and then
//! one line per report, so that a damaged line costs only that report and can be named.
//!
//! ## Format (version 1)
//!
//! - Keys: the collector holds a static X25519 secret `c` (its carry-out key; the public half `C`
//!   is published as `collector.seal.pub` and sent to agents over the pinned upload channel).
//!   Each file gets a fresh ephemeral secret `e` with public half `E`. The file key is
//!   `K = SHA-256(label ‖ X25519(e, C) ‖ E ‖ C)`; an all-zero shared secret (a low-order `C`)
//!   is refused.
//! - Line 1, the header: `base64(E ‖ seal(K, 0, header-aad, magic ‖ count))`, where `count` is the
//!   number of report lines as a big-endian u64.
//! - Lines 2 ..= count+1: `base64(seal(K, i, report-aad, postcard(SignedReport) ‖ token))` for
//!   the `i`-th report, `i` from 1, where `token` is the report's path token
//!   ([`crate::pathtoken`], 55 bytes) or nothing (files of the first release never have one).
//! - `seal(K, i, aad, m)` is ChaCha20-Poly1305 with the 12-byte nonce `0⁴ ‖ i` (big-endian u64):
//!   one key per file, one nonce per line, never reused.
//! - Every line ends in `\n`.
//!
//! What a reader can tell: a file whose header opens with its key was sealed to it (a file for
//! another collector, or garbage, fails there, as a whole); a file with fewer complete lines than
//! its header counts was truncated (refused as a whole, before anything is stored); a report line
//! that does not open or decode was damaged (that line alone is refused). The reports inside are
//! still signed by their agents; the seal adds secrecy in transit, not authority.
//!
//! This module reads no clock and draws no random number: the ephemeral secret comes from the
//! caller.

pub use crate::carry_key::{CarryKey, CarrySecret, KEY_LEN};
use crate::upload::{QueuedReport, MAX_FRAME_LEN};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use curve25519_dalek::montgomery::MontgomeryPoint;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Most reports one file may hold (a full agent queue is 10,000 by default).
pub const MAX_REPORTS: u64 = 1_000_000;
/// Longest report line, in base64 characters (a report no longer than an upload frame).
pub const MAX_LINE_LEN: usize = (MAX_FRAME_LEN + TAG_LEN).div_ceil(3) * 4;

const TAG_LEN: usize = 16;
const MAGIC: &[u8] = b"callwatch carry-out v1";
const KEY_LABEL: &[u8] = b"callwatch carry-out v1 key";
const HEADER_AAD: &[u8] = b"callwatch carry-out v1 header";
const REPORT_AAD: &[u8] = b"callwatch carry-out v1 report";

/// Why a file as a whole cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CarryError {
    #[error("the first line is not a carry-out header (not base64, or too short)")]
    NotAHeader,
    #[error(
        "the header does not open with this collector's carry-out key: the file was sealed to \
         another collector, or it is damaged or not a carry-out file"
    )]
    WrongKey,
    #[error("the header claims {0} reports, more than the {MAX_REPORTS} a file may hold")]
    TooMany(u64),
    #[error("the carry-out key is not usable (a low-order point)")]
    WeakKey,
}

/// Why one report line cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LineError {
    #[error("line longer than {MAX_LINE_LEN} characters")]
    TooLong,
    #[error("not base64")]
    NotBase64,
    #[error("does not open (damaged, or moved from another place in the file)")]
    DoesNotOpen,
    #[error("opens, but holds no signed report: {0}")]
    NotAReport(String),
}

fn nonce(i: u64) -> chacha20poly1305::Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_be_bytes());
    n.into()
}

fn file_cipher(
    shared: MontgomeryPoint,
    e: &CarryKey,
    c: &CarryKey,
) -> Result<ChaCha20Poly1305, CarryError> {
    let shared = shared.to_bytes();
    if shared == [0u8; KEY_LEN] {
        return Err(CarryError::WeakKey);
    }
    let key: [u8; 32] = Sha256::new()
        .chain_update(KEY_LABEL)
        .chain_update(shared)
        .chain_update(e.0)
        .chain_update(c.0)
        .finalize()
        .into();
    Ok(ChaCha20Poly1305::new(&key.into()))
}

/// Seals one file's lines, in order: [`Sealer::header`] first, then one [`Sealer::line`] per
/// report, exactly as many as the header counts.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    ephemeral: CarryKey,
    count: u64,
    next: u64,
}

impl Sealer {
    /// A sealer for `count` reports to `to`, with the caller's fresh random `ephemeral` secret
    /// (never use one twice).
    pub fn new(to: &CarryKey, ephemeral: [u8; KEY_LEN], count: u64) -> Result<Sealer, CarryError> {
        if count > MAX_REPORTS {
            return Err(CarryError::TooMany(count));
        }
        let e = CarryKey(MontgomeryPoint::mul_base_clamped(ephemeral).to_bytes());
        let shared = MontgomeryPoint(to.0).mul_clamped(ephemeral);
        Ok(Sealer {
            cipher: file_cipher(shared, &e, to)?,
            ephemeral: e,
            count,
            next: 1,
        })
    }

    /// The header line (with its `\n`).
    pub fn header(&self) -> String {
        let mut plain = MAGIC.to_vec();
        plain.extend_from_slice(&self.count.to_be_bytes());
        let mut bytes = self.ephemeral.0.to_vec();
        bytes.extend(self.seal(0, HEADER_AAD, &plain));
        format!("{}\n", B64.encode(bytes))
    }

    /// The next report's line (with its `\n`); `None` once `count` lines were made.
    pub fn line(&mut self, report: &QueuedReport) -> Option<String> {
        if self.next > self.count {
            return None;
        }
        let plain = report.to_bytes().ok()?;
        let sealed = self.seal(self.next, REPORT_AAD, &plain);
        self.next += 1;
        Some(format!("{}\n", B64.encode(sealed)))
    }

    fn seal(&self, i: u64, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        // ChaCha20-Poly1305 fails only for messages beyond 256 GiB; ours are at most a few MiB.
        self.cipher
            .encrypt(&nonce(i), Payload { msg: plain, aad })
            .unwrap_or_default()
    }
}

/// Opens one file's lines with the collector's secret.
pub struct Opener {
    cipher: ChaCha20Poly1305,
    count: u64,
}

impl Opener {
    /// Opens the header line (with or without its `\n`).
    pub fn new(secret: &CarrySecret, header: &str) -> Result<Opener, CarryError> {
        let header = header.trim_end_matches(['\n', '\r']);
        if header.len() > 1024 {
            return Err(CarryError::NotAHeader);
        }
        let bytes = B64.decode(header).map_err(|_| CarryError::NotAHeader)?;
        if bytes.len() < KEY_LEN + TAG_LEN {
            return Err(CarryError::NotAHeader);
        }
        let (e, sealed) = bytes.split_at(KEY_LEN);
        let e = CarryKey(e.try_into().map_err(|_| CarryError::NotAHeader)?);
        let shared = MontgomeryPoint(e.0).mul_clamped(secret.to_bytes());
        let cipher = file_cipher(shared, &e, &secret.public())?;
        let plain = cipher
            .decrypt(
                &nonce(0),
                Payload {
                    msg: sealed,
                    aad: HEADER_AAD,
                },
            )
            .map_err(|_| CarryError::WrongKey)?;
        let count = plain
            .strip_prefix(MAGIC)
            .and_then(|c| <[u8; 8]>::try_from(c).ok())
            .map(u64::from_be_bytes)
            .ok_or(CarryError::WrongKey)?;
        if count > MAX_REPORTS {
            return Err(CarryError::TooMany(count));
        }
        Ok(Opener { cipher, count })
    }

    /// How many report lines the header promises.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Opens the `i`-th report line (from 1; with or without its `\n`).
    pub fn line(&self, i: u64, line: &str) -> Result<QueuedReport, LineError> {
        let line = line.trim_end_matches(['\n', '\r']);
        if line.len() > MAX_LINE_LEN {
            return Err(LineError::TooLong);
        }
        let sealed = B64.decode(line).map_err(|_| LineError::NotBase64)?;
        let plain = self
            .cipher
            .decrypt(
                &nonce(i),
                Payload {
                    msg: &sealed,
                    aad: REPORT_AAD,
                },
            )
            .map_err(|_| LineError::DoesNotOpen)?;
        QueuedReport::from_bytes(&plain).map_err(|e| LineError::NotAReport(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Odd ones with a path token beside them, even ones without.
    fn report(n: u8) -> QueuedReport {
        QueuedReport {
            report: crate::SignedReport {
                body: vec![n; 40],
                key: vec![1; 32],
                signature: vec![2; 64],
            },
            path_token: (n % 2 == 1).then_some([n; crate::pathtoken::PATH_TOKEN_LEN]),
        }
    }

    fn file(secret: &CarrySecret, eph: u8, n: u8) -> Vec<String> {
        let mut s = Sealer::new(&secret.public(), [eph; 32], u64::from(n)).unwrap();
        let mut lines = vec![s.header()];
        for i in 0..n {
            lines.push(s.line(&report(i)).unwrap());
        }
        assert!(s.line(&report(0)).is_none(), "no more lines than counted");
        lines
    }

    #[test]
    fn a_file_opens_with_its_collectors_key_only() {
        let secret = CarrySecret::from_bytes([9; 32]);
        let lines = file(&secret, 3, 4);
        let text = lines.concat();
        assert!(!text.contains("callwatch"), "nothing in the clear");
        let o = Opener::new(&secret, &lines[0]).unwrap();
        assert_eq!(o.count(), 4);
        for (i, line) in lines[1..].iter().enumerate() {
            assert_eq!(o.line(i as u64 + 1, line).unwrap(), report(i as u8));
        }
        // Another collector's key opens nothing.
        let other = CarrySecret::from_bytes([10; 32]);
        assert_eq!(
            Opener::new(&other, &lines[0]).err(),
            Some(CarryError::WrongKey)
        );
        // Lines are bound to their place.
        assert_eq!(o.line(2, &lines[1]), Err(LineError::DoesNotOpen));
        // A fresh ephemeral key: different bytes for the same reports.
        assert_ne!(file(&secret, 4, 4)[1], lines[1]);
    }

    #[test]
    fn damage_is_named_per_line() {
        let secret = CarrySecret::from_bytes([9; 32]);
        let lines = file(&secret, 3, 2);
        let o = Opener::new(&secret, &lines[0]).unwrap();
        let mut flipped = lines[1].clone().into_bytes();
        flipped[5] = if flipped[5] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(o.line(1, &flipped), Err(LineError::DoesNotOpen));
        assert_eq!(o.line(1, "!!!"), Err(LineError::NotBase64));
        assert_eq!(o.line(2, &lines[2]).unwrap(), report(1));
        assert_eq!(
            Opener::new(&secret, "hello").err(),
            Some(CarryError::NotAHeader)
        );
        assert_eq!(
            Opener::new(&secret, &lines[1]).err(),
            Some(CarryError::WrongKey),
            "a report line is no header"
        );
    }

    #[test]
    fn keys_print_and_parse_and_low_order_keys_are_refused() {
        let secret = CarrySecret::from_bytes([9; 32]);
        let k = secret.public();
        assert_eq!(k.to_string().parse::<CarryKey>().unwrap(), k);
        assert!("abc".parse::<CarryKey>().is_err());
        assert!(!format!("{secret:?}").contains(&hex::encode([9u8; 32])));
        // The identity point: every shared secret is zero.
        assert_eq!(
            Sealer::new(&CarryKey([0; 32]), [1; 32], 1).err(),
            Some(CarryError::WeakKey)
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(header in ".{0,200}", line in ".{0,300}") {
            let secret = CarrySecret::from_bytes([9; 32]);
            let _ = Opener::new(&secret, &header);
            let o = Opener::new(&secret, &file(&secret, 1, 1)[0]).unwrap();
            let _ = o.line(1, &line);
        }
    }
}
