//! Access tokens: how they are made, hashed, and read off requests.
//!
//! Tokens are 256-bit random secrets shown once and stored by whoever holds
//! them (mode 0600 files); the replicated state keeps only their SHA-256.

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
    fn bearer_parsing() {
        assert_eq!(parse_bearer("Bearer abc"), Some("abc"));
        assert_eq!(parse_bearer("Bearer "), None);
        assert_eq!(parse_bearer("Basic abc"), None);
        assert!(secrets_equal("a", "a"));
        assert!(!secrets_equal("a", "b"));
    }
}
