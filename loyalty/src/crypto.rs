//! The organizations' Telegram bot tokens at rest: sealed with AES-256-GCM under a key from the
//! environment (`TOKEN_KEYS`), so a dump of the database alone does not yield them.
//!
//! `TOKEN_KEYS` is a comma-separated list of `id:base64key` (32-byte keys, standard base64); the
//! first key seals, every listed key opens. A sealed token is stored as the key's id and
//! `nonce ‖ ciphertext ‖ tag` (a random 96-bit nonce per sealing); the organization's id is the
//! associated data, so a sealed token copied onto another organization's row does not open.

use std::fmt;
use std::str::FromStr;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

const NONCE_LEN: usize = 12;

/// The keys of `TOKEN_KEYS`, in order: the first seals, all open. Debug shows the ids only.
#[derive(Clone, Default)]
pub struct TokenKeys {
    keys: Vec<(String, Aes256Gcm)>,
}

/// A token as stored: which key sealed it, and `nonce ‖ ciphertext ‖ tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("TOKEN_KEYS is not set, so no bot token can be sealed or opened")]
    NoKeys,
    #[error("the bot token is sealed under key {0:?}, which TOKEN_KEYS does not hold")]
    UnknownKey(String),
    #[error(
        "the sealed bot token does not open under key {0:?} (altered, or another organization's)"
    )]
    Corrupt(String),
}

/// Why `TOKEN_KEYS` could not be read.
#[derive(Debug, thiserror::Error)]
#[error("TOKEN_KEYS: {0} (expected id:base64key[,id:base64key…] with 32-byte keys)")]
pub struct KeysError(String);

impl FromStr for TokenKeys {
    type Err = KeysError;

    fn from_str(text: &str) -> Result<Self, KeysError> {
        let mut keys: Vec<(String, Aes256Gcm)> = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, key) = entry
                .split_once(':')
                .ok_or_else(|| KeysError("an entry has no ':' between id and key".into()))?;
            let id = id.trim();
            let valid_id = (1..=32).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_id {
                return Err(KeysError(format!(
                    "key id {id:?} must be 1 to 32 letters, digits, '-' or '_'"
                )));
            }
            if keys.iter().any(|(known, _)| known == id) {
                return Err(KeysError(format!("key id {id:?} is listed twice")));
            }
            let bytes = STANDARD
                .decode(key.trim())
                .map_err(|_| KeysError(format!("key {id:?} is not base64")))?;
            let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| {
                KeysError(format!(
                    "key {id:?} is {} bytes, not 32 (openssl rand -base64 32)",
                    bytes.len()
                ))
            })?;
            keys.push((id.to_owned(), cipher));
        }
        Ok(Self { keys })
    }
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(id, _)| id))
            .finish()
    }
}

impl TokenKeys {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The id of the key that seals new tokens.
    pub fn current(&self) -> Option<&str> {
        self.keys.first().map(|(id, _)| id.as_str())
    }

    pub fn holds(&self, key_id: &str) -> bool {
        self.keys.iter().any(|(id, _)| id == key_id)
    }

    /// Seals `token` for organization `org_id` under the current key.
    pub fn seal(&self, org_id: i64, token: &str) -> Result<Sealed, SealError> {
        let (id, cipher) = self.keys.first().ok_or(SealError::NoKeys)?;
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = associated_data(org_id);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: token.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Corrupt(id.clone()))?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(Sealed {
            key_id: id.clone(),
            bytes,
        })
    }

    /// Opens a token sealed for organization `org_id`.
    pub fn open(&self, org_id: i64, sealed: &Sealed) -> Result<String, SealError> {
        if self.keys.is_empty() {
            return Err(SealError::NoKeys);
        }
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(id, _)| *id == sealed.key_id)
            .ok_or_else(|| SealError::UnknownKey(sealed.key_id.clone()))?;
        let corrupt = || SealError::Corrupt(sealed.key_id.clone());
        if sealed.bytes.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, body) = sealed.bytes.split_at(NONCE_LEN);
        let aad = associated_data(org_id);
        let plain = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .map_err(|_| corrupt())?;
        String::from_utf8(plain).map_err(|_| corrupt())
    }
}

fn associated_data(org_id: i64) -> Vec<u8> {
    format!("loyalty bot token of organization {org_id}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "a:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const KEY_B: &str = "b:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    fn keys(text: &str) -> TokenKeys {
        text.parse().expect("keys parse")
    }

    #[test]
    fn a_sealed_token_opens_only_for_its_organization_and_hides_its_text() {
        let keys = keys(KEY_A);
        let sealed = keys.seal(7, "123456:secret-secret-secret").expect("seals");
        assert_eq!(sealed.key_id, "a");
        assert!(
            !sealed.bytes.windows(6).any(|w| w == b"secret"),
            "ciphertext shows the token"
        );
        assert_eq!(
            keys.open(7, &sealed).expect("opens"),
            "123456:secret-secret-secret"
        );
        assert!(matches!(keys.open(8, &sealed), Err(SealError::Corrupt(_))));
        let mut altered = sealed.clone();
        altered.bytes[NONCE_LEN] ^= 1;
        assert!(matches!(keys.open(7, &altered), Err(SealError::Corrupt(_))));
    }

    #[test]
    fn the_first_key_seals_and_every_listed_key_opens() {
        let old = keys(KEY_A).seal(1, "1:old").expect("seals");
        let rotated = keys(&format!("{KEY_B},{KEY_A}"));
        assert_eq!(rotated.current(), Some("b"));
        assert_eq!(rotated.open(1, &old).expect("old key opens"), "1:old");
        assert_eq!(rotated.seal(1, "1:new").expect("seals").key_id, "b");
        assert!(matches!(
            keys(KEY_B).open(1, &old),
            Err(SealError::UnknownKey(id)) if id == "a"
        ));
        assert!(matches!(
            TokenKeys::default().seal(1, "x"),
            Err(SealError::NoKeys)
        ));
    }

    #[test]
    fn malformed_key_lists_are_refused() {
        assert!(keys("").is_empty());
        for bad in [
            "nokey",
            "a:not base64!",
            "a:AAAA",
            "bad id:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ] {
            assert!(bad.parse::<TokenKeys>().is_err(), "{bad} accepted");
        }
        assert!(format!("{KEY_A},{KEY_A}").parse::<TokenKeys>().is_err());
        assert_eq!(format!("{:?}", keys(KEY_A)), r#"["a"]"#);
    }
}
