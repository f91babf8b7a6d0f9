//! Device credentials and API tokens: generated with a CSPRNG, shown once,
//! stored only as a SHA-256 hash. A 256-bit random secret needs no slow
//! password hash: there is nothing to brute-force from the hash.
//!
//! A device credential (`lsd_<secret>`) opens only `AgentService`; an API
//! token (`lst_<id>_<secret>`, see `domain::access`) every other service,
//! as far as its role and fleets allow.

use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

const PREFIX: &str = "lsd_";

/// A new device credential and the hash to store for it.
pub fn new_device_credential() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{PREFIX}{}", hex::encode(bytes));
    let hash = hash_credential(&secret);
    (secret, hash)
}

/// A new API token: its public id, the token to show once
/// (`lst_<id>_<secret>`), and the hash to store (of the whole token).
pub fn new_api_token() -> (crate::domain::TokenId, String, String) {
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    let id_hex = hex::encode(id);
    let token = format!(
        "{}{id_hex}_{}",
        crate::domain::access::TOKEN_PREFIX,
        hex::encode(secret)
    );
    let hash = hash_credential(&token);
    let id = crate::domain::TokenId::new(id_hex).expect("hex digits are a valid token id");
    (id, token, hash)
}

/// The stored form of a credential or API token.
pub fn hash_credential(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` matches `stored_hash`, comparing in constant time.
pub fn verify_credential(secret: &str, stored_hash: &str) -> bool {
    let candidate = hash_credential(secret);
    candidate.len() == stored_hash.len()
        && candidate
            .bytes()
            .zip(stored_hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_verify_against_their_hash_only() {
        let (secret, hash) = new_device_credential();
        assert!(secret.starts_with(PREFIX) && secret.len() == PREFIX.len() + 64);
        assert!(verify_credential(&secret, &hash));
        assert!(!verify_credential(&format!("{secret}x"), &hash));
        let (other, _) = new_device_credential();
        assert_ne!(secret, other);
        assert!(!verify_credential(&other, &hash));
        assert!(!verify_credential(&secret, ""));
    }

    #[test]
    fn api_tokens_carry_their_id_and_verify_against_their_hash_only() {
        let (id, token, hash) = new_api_token();
        let (parsed, secret) = crate::domain::split_token(&token).unwrap();
        assert_eq!(parsed, id);
        assert_eq!((id.as_str().len(), secret.len()), (12, 64));
        assert!(!hash.contains(secret), "the hash is not the secret");
        assert!(verify_credential(&token, &hash));
        assert!(!verify_credential(secret, &hash));
        let (other_id, other, _) = new_api_token();
        assert_ne!((other_id, other), (id, token));
    }
}
