//! Secrets the cluster must keep but never show: an imported repository's
//! upstream credential. Sealed with XChaCha20-Poly1305 under a key derived
//! from the cluster secret (each server can open it, the log and snapshots
//! hold only ciphertext), a fresh random nonce per seal, the purpose bound
//! in as associated data so a sealed value cannot be replayed elsewhere.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

const NONCE_BYTES: usize = 24;

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the sealed value is not hex or too short")]
    Malformed,
    #[error("the sealed value does not open under this cluster's secret (tampered, or sealed for something else)")]
    Forged,
    #[error("the opened value is not UTF-8")]
    NotText,
}

fn cipher(cluster_secret: &str) -> XChaCha20Poly1305 {
    let key = Sha256::digest(format!("flotilla seal v1\0{cluster_secret}").as_bytes());
    XChaCha20Poly1305::new(&key)
}

/// `secret` sealed for `purpose` (e.g. `upstream:demo/app`), as hex.
pub fn seal(cluster_secret: &str, purpose: &str, secret: &str) -> String {
    let mut nonce = [0u8; NONCE_BYTES];
    rand::rng().fill_bytes(&mut nonce);
    let sealed = cipher(cluster_secret)
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: secret.as_bytes(),
                aad: purpose.as_bytes(),
            },
        )
        .expect("encryption of an in-memory buffer cannot fail");
    let mut out = nonce.to_vec();
    out.extend(sealed);
    hex::encode(out)
}

/// The secret `sealed` holds, if it was sealed for `purpose` under this
/// cluster's secret.
pub fn open(cluster_secret: &str, purpose: &str, sealed: &str) -> Result<String, SealError> {
    let bytes = hex::decode(sealed).map_err(|_| SealError::Malformed)?;
    if bytes.len() < NONCE_BYTES + 16 {
        return Err(SealError::Malformed);
    }
    let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
    let plain = cipher(cluster_secret)
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: purpose.as_bytes(),
            },
        )
        .map_err(|_| SealError::Forged)?;
    String::from_utf8(plain).map_err(|_| SealError::NotText)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_under_their_secret_and_purpose() {
        let sealed = seal("cluster", "upstream:p/r", "token-123");
        assert!(!sealed.contains("token-123"));
        assert_ne!(
            sealed,
            seal("cluster", "upstream:p/r", "token-123"),
            "fresh nonce"
        );
        assert_eq!(
            open("cluster", "upstream:p/r", &sealed).unwrap(),
            "token-123"
        );
        assert!(matches!(
            open("other", "upstream:p/r", &sealed),
            Err(SealError::Forged)
        ));
        assert!(matches!(
            open("cluster", "upstream:p/x", &sealed),
            Err(SealError::Forged)
        ));
        assert!(matches!(
            open("cluster", "upstream:p/r", "zz"),
            Err(SealError::Malformed)
        ));
        let mut tampered = sealed.into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(matches!(
            open("cluster", "upstream:p/r", &tampered),
            Err(SealError::Forged)
        ));
    }
}
