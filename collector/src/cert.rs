//! The collector's TLS identity: a self-signed certificate made on first start and kept in the
//! data folder, and its SHA-256 fingerprint that agents pin.

use anyhow::{Context, Result};
use callwatch_reflector::files::{ensure_private_dir, write_private};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::Path;

pub const CERT_FILE: &str = "collector.crt.der";
pub const KEY_FILE: &str = "collector.key.der";
pub const PIN_FILE: &str = "collector.pin";
/// Names a new self-signed certificate is valid for; agents that pin ignore the name. No
/// callwatch name: a prober fetching the certificate should not read what the server is for.
/// (Certificates made before keep their names: a new one would change the pin.)
pub const SERVER_NAMES: [&str; 1] = ["localhost"];

pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    /// Lower-case hex SHA-256 of the certificate's DER bytes.
    pub pin: String,
}

/// SHA-256 fingerprint of a certificate, as agents pin it.
pub fn fingerprint(cert: &[u8]) -> String {
    hex::encode(Sha256::digest(cert))
}

/// Loads the identity from `dir`, creating it on first start.
pub fn load_or_create(dir: &Path) -> Result<Identity> {
    ensure_private_dir(dir)?;
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if !cert_path.exists() || !key_path.exists() {
        if cert_path.exists() != key_path.exists() {
            anyhow::bail!(
                "{} has only one of {CERT_FILE} and {KEY_FILE}; remove the other to make a new \
                 identity (agents will then need the new pin)",
                dir.display()
            );
        }
        let names: Vec<String> = SERVER_NAMES.iter().map(|s| s.to_string()).collect();
        let made = rcgen::generate_simple_self_signed(names).context("generating certificate")?;
        write_private(&key_path, &made.key_pair.serialize_der())?;
        write_private(&cert_path, made.cert.der())?;
    }
    let cert = fs::read(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
    let key = fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let pin = fingerprint(&cert);
    let pin_path = dir.join(PIN_FILE);
    fs::write(&pin_path, format!("{pin}\n"))
        .with_context(|| format!("writing {}", pin_path.display()))?;
    Ok(Identity {
        cert: CertificateDer::from(cert),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        pin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn identity_is_created_once_with_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let a = load_or_create(&data).unwrap();
        let b = load_or_create(&data).unwrap();
        assert_eq!(a.pin, b.pin);
        assert_eq!(a.pin.len(), 64);
        let mode = fs::metadata(data.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let pin = fs::read_to_string(data.join(PIN_FILE)).unwrap();
        assert_eq!(pin.trim(), a.pin);
    }
}
