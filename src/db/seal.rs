//! Sealing secrets kept in the shared database (OAuth tokens): XChaCha20-Poly1305 with a key
//! derived (SHA-256, domain-separated) from `database_secret`. The database holds only the
//! nonce and the ciphertext; without the secret it cannot be read, and a row altered in the
//! database fails to open (authenticated encryption). The name of the row is bound as
//! associated data, so a sealed value cannot be moved to another credential.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::Digest as _;

const NONCE_LEN: usize = 24;

/// A sealing key derived from the configured secret.
#[derive(Clone)]
pub struct SealKey(chacha20poly1305::Key);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(***)")
    }
}

impl SealKey {
    pub fn derive(secret: &str) -> SealKey {
        let mut h = sha2::Sha256::new();
        h.update(b"ccproxy database seal v1\0");
        h.update(secret.as_bytes());
        SealKey(h.finalize())
    }

    /// Nonce followed by the ciphertext of `plain`, bound to `name`.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new(&self.0);
        let nonce: [u8; NONCE_LEN] = rand::random();
        let nonce = XNonce::from(nonce);
        let mut out = nonce.to_vec();
        // Encryption with a fresh nonce and an in-memory buffer cannot fail.
        if let Ok(ct) = cipher.encrypt(
            &nonce,
            Payload {
                msg: plain,
                aad: name.as_bytes(),
            },
        ) {
            out.extend(ct);
        }
        out
    }

    /// The plaintext, or `None` when the value was not sealed with this key for `name`.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new(&self.0);
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: name.as_bytes(),
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let k = SealKey::derive("s3cret");
        let s = k.seal("server_oauth", b"refresh-token");
        assert!(!s.windows(13).any(|w| w == b"refresh-token"));
        assert_eq!(
            k.open("server_oauth", &s).as_deref(),
            Some(&b"refresh-token"[..])
        );
        assert_eq!(k.open("other", &s), None);
        assert_eq!(SealKey::derive("other").open("server_oauth", &s), None);
        let mut bad = s.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(k.open("server_oauth", &bad), None);
    }
}
