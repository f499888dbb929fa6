//! API keys: how a site's backend proves itself to the server API
//! (`--api-key`, `--api-key-file`).
//!
//! A key is a shared secret sent as `Authorization: Bearer KEY`. We keep
//! only each key's SHA-256 and compare digests in constant time: the time
//! a wrong key takes to refuse tells nothing about how much of it was
//! right, nor (digests being all one length) how long the right key is.
//! Every configured key is compared, whatever the first one said, so
//! several keys can be live at once while one is rotated.
//!
//! A user's JWT travels in the same header; it is told apart by not being a
//! key (see `server/backend.rs`).

use ring::digest::{SHA256, digest};

/// An API key shorter than this is refused at start: a key is a password
/// for everything the API can do.
pub const MIN_KEY_BYTES: usize = 16;

/// The configured keys, as digests.
#[derive(Debug)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    /// Keys given inline; `Err` names a key too short (by its position,
    /// never its text).
    pub fn new(keys: &[String]) -> Result<ApiKeys, String> {
        let mut digests = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            if key.len() < MIN_KEY_BYTES {
                return Err(format!("API key {} is {} bytes: give at least {MIN_KEY_BYTES}", i + 1, key.len()));
            }
            digests.push(sha256(key.as_bytes()));
        }
        Ok(ApiKeys { digests })
    }

    /// The keys `--api-key` and `--api-key-file` give (one key per
    /// non-empty line of a file); `None` when there are none (the server
    /// API is off).
    pub fn from_config(config: &crate::Config) -> Result<Option<ApiKeys>, String> {
        let mut keys = config.api_keys.clone();
        for path in &config.api_key_files {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("--api-key-file {path}: cannot read it: {e}"))?;
            keys.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string));
        }
        if keys.is_empty() {
            return Ok(None);
        }
        ApiKeys::new(&keys).map(Some)
    }

    /// Whether `given` is one of the keys, in time that does not depend on
    /// which bytes of it match.
    pub fn check(&self, given: &str) -> bool {
        let given = sha256(given.as_bytes());
        let mut found = false;
        for key in &self.digests {
            let diff = key.iter().zip(given.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            found |= diff == 0;
        }
        found
    }

    /// How many keys are configured (for the start-up log line).
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Whether none is (never true of a value `from_config` returned).
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_opens_and_nothing_else_does() {
        let keys = ApiKeys::new(&["first-key-0123456789".into(), "second-key-0123456789".into()]).unwrap();
        assert!(keys.check("first-key-0123456789"));
        assert!(keys.check("second-key-0123456789"));
        for wrong in ["", "first-key-012345678", "first-key-01234567890", "FIRST-KEY-0123456789", "x"] {
            assert!(!keys.check(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn a_short_key_is_refused_without_being_shown() {
        let err = ApiKeys::new(&["long-enough-key-0123".into(), "short".into()]).unwrap_err();
        assert!(err.contains("API key 2 is 5 bytes") && !err.contains("short"), "{err}");
    }
}
