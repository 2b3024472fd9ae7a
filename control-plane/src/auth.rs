//! Access tokens: how they are made, hashed, and read off requests.
//!
//! Tokens are 256-bit random secrets shown once and stored by whoever holds
//! them (mode 0600 files); the replicated state keeps only their SHA-256.
//!
//! A desktop's token is derived, not stored: `flo_desk_<desktop>.<generation>.<mac>`,
//! the MAC an HMAC-SHA256 under the cluster secret. Any server checks it
//! without a write; it dies with its placement (a new generation, or the
//! desktop gone), so a desktop's credential expires with the desktop.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::types::TokenKind;

/// A fresh token; the prefix tells a person what kind of token they hold.
pub fn generate_token(kind: TokenKind) -> String {
    let prefix = match kind {
        TokenKind::Operator => "flo_op",
        TokenKind::NodeJoin => "flo_node",
        TokenKind::ServerJoin => "flo_server",
    };
    format!("{prefix}_{}", random_hex(32))
}

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    hex::encode(buffer)
}

pub fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares two secrets in time independent of where they differ.
pub fn secrets_equal(left: &str, right: &str) -> bool {
    let left = Sha256::digest(left.as_bytes());
    let right = Sha256::digest(right.as_bytes());
    left.iter()
        .zip(right.iter())
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

const DESKTOP_PREFIX: &str = "flo_desk_";

fn desktop_mac(cluster_secret: &str, desktop_id: &str, generation: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(cluster_secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(format!("flotilla desktop token v1\0{desktop_id}\0{generation}").as_bytes());
    mac
}

/// The token of one placement of a desktop.
pub fn desktop_token(cluster_secret: &str, desktop_id: &str, generation: u64) -> String {
    let mac = desktop_mac(cluster_secret, desktop_id, generation).finalize();
    format!(
        "{DESKTOP_PREFIX}{desktop_id}.{generation}.{}",
        hex::encode(mac.into_bytes())
    )
}

/// The desktop and generation a desktop token was made for, if its MAC is
/// right (checked in constant time). Whether that placement still exists
/// is for the caller to check against the state.
pub fn verify_desktop_token(cluster_secret: &str, token: &str) -> Option<(String, u64)> {
    let rest = token.strip_prefix(DESKTOP_PREFIX)?;
    let mut parts = rest.split('.');
    let (desktop_id, generation, mac) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || desktop_id.is_empty() || desktop_id.len() > 128 {
        return None;
    }
    let generation: u64 = generation.parse().ok()?;
    let mac = hex::decode(mac).ok()?;
    desktop_mac(cluster_secret, desktop_id, generation)
        .verify_slice(&mac)
        .ok()?;
    Some((desktop_id.to_owned(), generation))
}

/// Wraps a gRPC message with `authorization: Bearer <token>`.
pub fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// The token of an `authorization: Bearer <token>` value.
pub fn parse_bearer(value: &str) -> Option<&str> {
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    (!token.is_empty()).then_some(token)
}

pub fn bearer_from_metadata(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    metadata
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_bearer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_prefixed() {
        let first = generate_token(TokenKind::Operator);
        let second = generate_token(TokenKind::Operator);
        assert_ne!(first, second);
        assert!(first.starts_with("flo_op_"));
        assert_eq!(sha256_hex(&first).len(), 64);
    }

    #[test]
    fn desktop_tokens_verify_only_under_their_secret_and_placement() {
        let token = desktop_token("secret", "d-1", 42);
        assert!(token.starts_with("flo_desk_d-1.42."));
        assert_eq!(
            verify_desktop_token("secret", &token),
            Some(("d-1".to_owned(), 42))
        );
        assert_eq!(verify_desktop_token("other", &token), None);
        let moved = token.replace(".42.", ".43.");
        assert_eq!(verify_desktop_token("secret", &moved), None);
        for bad in [
            "",
            "flo_desk_",
            "flo_desk_d-1.42",
            "flo_desk_d-1.x.00",
            "flo_desk_d-1.42.zz",
            &format!("{token}.extra"),
            &token[..token.len() - 2],
        ] {
            assert_eq!(verify_desktop_token("secret", bad), None, "{bad}");
        }
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(parse_bearer("Bearer abc"), Some("abc"));
        assert_eq!(parse_bearer("Bearer "), None);
        assert_eq!(parse_bearer("Basic abc"), None);
        assert!(secrets_equal("a", "a"));
        assert!(!secrets_equal("a", "b"));
    }
}
