//! Device credentials: generated with a CSPRNG, shown once, stored only as a
//! SHA-256 hash. A 256-bit random secret needs no slow password hash: there
//! is nothing to brute-force from the hash.

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

/// The stored form of a credential.
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
}
