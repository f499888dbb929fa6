//! Who a connection is: signed identities.
//!
//! A site's backend says who its users are by signing a JWT for each one
//! (HS256 with a shared secret, `--auth-secret`; or RS256, ES256 or EdDSA
//! with a private key whose public half the server has,
//! `--auth-public-key`). A browser cannot set headers on a WebSocket, so
//! the token comes as `?token=` on the handshake; other clients may send
//! `Authorization: Bearer`. [`Auth::verify`] checks it once, at the
//! handshake: a connection then outlives its token's `exp`.
//!
//! What is checked, and why:
//!
//! - the signature, with the algorithm the *configured key* implies, never
//!   the one the token names alone: an HS256 token "signed" with a public
//!   key's bytes as its secret is the classic forgery, and `none` is not
//!   an algorithm here at all;
//! - `exp` (required) and `nbf` (when present), with [`LEEWAY_S`] of
//!   leeway for clocks that differ a little;
//! - `sub` (required, not empty): the user's stable id;
//! - `iss` and `aud` when `--auth-issuer` and `--auth-audience` are set;
//! - `kid`: a token that names a key id is checked against that key only
//!   (keys are given ids as `KID=FILE`), which is how a key is rotated:
//!   configure the new one beside the old, then drop the old.
//!
//! Parsing and claim checks are `jsonwebtoken`'s; the signature check is
//! `ring`'s (`provider.rs`). An HS256 secret shorter than
//! [`MIN_SECRET_BYTES`] is refused at start: a short secret can be found
//! by brute force from any one token.

mod api_key;
pub mod bans;
mod pattern;
mod provider;

use std::collections::HashSet;
use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;

pub use api_key::{ApiKeys, MIN_KEY_BYTES};
pub use pattern::Patterns;

/// Seconds a token's `exp` and `nbf` may be off by.
pub const LEEWAY_S: u64 = 30;

/// The shortest HS256 secret accepted, in bytes (the hash's size).
pub const MIN_SECRET_BYTES: usize = 32;

/// A verified user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user's stable id (`sub`).
    pub sub: String,
    /// The display name (`name`, else `sub`).
    pub name: String,
    /// The rooms the user may join (`rooms`); `None`: every public room.
    pub rooms: Option<Patterns>,
    /// The rooms the user moderates (`moderate`).
    pub moderate: Patterns,
}

/// Why a token was refused: said to the client (never with the token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a JWT, or claims of the wrong shape.
    Malformed,
    /// The signature does not match any configured key.
    BadSignature,
    /// Signed with an algorithm no configured key uses (`none` included).
    WrongAlgorithm,
    /// Names a key id that is not configured.
    UnknownKey,
    /// Past its `exp`.
    Expired,
    /// Before its `nbf`.
    NotYetValid,
    /// Without `exp` or `sub` (or `iss` and `aud` when they are checked).
    MissingClaim,
    /// `iss` or `aud` is not the configured one.
    WrongIssuerOrAudience,
}

impl Refusal {
    /// The reason, for the client's error frame and close frame.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Malformed => "the token is not a valid JWT",
            Refusal::BadSignature => "the token's signature does not match",
            Refusal::WrongAlgorithm => "the token is signed with an algorithm this server does not accept",
            Refusal::UnknownKey => "the token names a key this server does not have",
            Refusal::Expired => "the token has expired",
            Refusal::NotYetValid => "the token is not valid yet",
            Refusal::MissingClaim => {
                "the token lacks a required claim (exp, sub, or the iss and aud this server expects)"
            }
            Refusal::WrongIssuerOrAudience => "the token is for another issuer or audience",
        }
    }
}

/// A configured key.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys tokens are checked against, and the claims required.
pub struct Auth {
    keys: Vec<Key>,
    issuer: Option<String>,
    audience: Option<String>,
}

/// The claims we read (`exp` and `nbf` are checked by `jsonwebtoken`).
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    moderate: Vec<String>,
}

impl Auth {
    /// The keys from the configuration: HS256 `secrets` (each with an
    /// optional key id), and PEM public key files (`[KID=]PATH`). `None`
    /// when there is no key at all (tokens are then not looked at). An
    /// error is one line for the operator.
    pub fn new(
        secrets: &[(Option<String>, Vec<u8>)],
        public_keys: &[String],
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Result<Option<Auth>, String> {
        provider::install();
        let mut keys = Vec::new();
        for (kid, secret) in secrets {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "--auth-secret: {} bytes is too short for HS256; use at least {MIN_SECRET_BYTES} random bytes",
                    secret.len()
                ));
            }
            let key = DecodingKey::from_secret(secret).map_err(|e| format!("--auth-secret: {e}"))?;
            keys.push(Key { kid: kid.clone(), alg: Algorithm::HS256, key });
        }
        for spec in public_keys {
            let (kid, path) = split_kid(spec);
            let (alg, key) = read_public_key(Path::new(path))?;
            keys.push(Key { kid, alg, key });
        }
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(Auth { keys, issuer, audience }))
    }

    /// The keys `--auth-secret`, `--auth-secret-file` and
    /// `--auth-public-key` give (a secret file's trailing newline is not
    /// part of the secret).
    pub fn from_config(config: &crate::Config) -> Result<Option<Auth>, String> {
        let mut secrets: Vec<(Option<String>, Vec<u8>)> = Vec::new();
        if let Some(secret) = &config.auth_secret {
            secrets.push((None, secret.as_bytes().to_vec()));
        }
        for spec in &config.auth_secret_files {
            let (kid, path) = split_kid(spec);
            let mut secret =
                std::fs::read(path).map_err(|e| format!("--auth-secret-file {path}: cannot read it: {e}"))?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            secrets.push((kid, secret));
        }
        Auth::new(&secrets, &config.auth_public_keys, config.auth_issuer.clone(), config.auth_audience.clone())
    }

    /// Checks `token`; the user it names, or why not.
    pub fn verify(&self, token: &str) -> Result<Identity, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| refusal(e.kind()))?;
        let named: Vec<&Key> = match &header.kid {
            Some(kid) => self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid.as_str())).collect(),
            None => self.keys.iter().collect(),
        };
        if named.is_empty() {
            return Err(Refusal::UnknownKey);
        }
        let mut refused = Refusal::WrongAlgorithm;
        for key in named.into_iter().filter(|k| k.alg == header.alg) {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation(key.alg)) {
                Ok(data) => return identity(data.claims),
                // Another key of the same algorithm may have signed it.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => refused = Refusal::BadSignature,
                // The signature held: the claims are what is wrong.
                Err(e) => return Err(refusal(e.kind())),
            }
        }
        Err(refused)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = LEEWAY_S;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.issuer {
            Some(iss) => {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            None => v.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        v
    }
}

/// `KID=PATH` → (Some(KID), PATH); a plain path has no key id.
pub fn split_kid(spec: &str) -> (Option<String>, &str) {
    match spec.split_once('=') {
        Some((kid, path)) if !kid.is_empty() && !kid.contains('/') => (Some(kid.to_string()), path),
        _ => (None, spec),
    }
}

/// A PEM public key file: an EC P-256 key (ES256), an Ed25519 key (EdDSA)
/// or an RSA key (RS256), told apart by what the file holds.
fn read_public_key(path: &Path) -> Result<(Algorithm, DecodingKey), String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("--auth-public-key {shown}: cannot read it: {e}"))?;
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((Algorithm::ES256, key));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        return Ok((Algorithm::EdDSA, key));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((Algorithm::RS256, key));
    }
    Err(format!("--auth-public-key {shown}: not a PEM public key (RSA, EC P-256 or Ed25519)"))
}

fn identity(claims: Claims) -> Result<Identity, Refusal> {
    let Claims { sub, name, rooms, moderate } = claims;
    let Some(sub) = sub.filter(|s| !s.is_empty()) else { return Err(Refusal::MissingClaim) };
    let name = name
        .as_deref()
        .and_then(crate::chat::protocol::clean_name)
        .or_else(|| crate::chat::protocol::clean_name(&sub))
        .unwrap_or_else(|| "user".to_string());
    Ok(Identity { sub, name, rooms: rooms.map(Patterns::new), moderate: Patterns::new(moderate) })
}

fn refusal(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::InvalidSignature => Refusal::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            Refusal::WrongAlgorithm
        }
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::MissingRequiredClaim(_) => Refusal::MissingClaim,
        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => Refusal::WrongIssuerOrAudience,
        _ => Refusal::Malformed,
    }
}

/// The families of the configured keys (for the log line at start).
pub fn describe(auth: &Auth) -> String {
    let families: HashSet<&str> = auth
        .keys
        .iter()
        .map(|k| match provider::family_of(k.alg) {
            Some(AlgorithmFamily::Hmac) => "HS256",
            Some(AlgorithmFamily::Rsa) => "RS256",
            Some(AlgorithmFamily::Ec) => "ES256",
            _ => "EdDSA",
        })
        .collect();
    let mut families: Vec<&str> = families.into_iter().collect();
    families.sort_unstable();
    format!("{} key(s): {}", auth.keys.len(), families.join(", "))
}

#[cfg(test)]
mod tests;
