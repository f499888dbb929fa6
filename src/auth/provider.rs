//! The cryptography behind token checks: `ring`, plugged into
//! `jsonwebtoken` as its crypto provider.
//!
//! `jsonwebtoken` parses tokens and checks claims; the signature itself
//! is checked by whichever provider the process installs. This one uses
//! `ring`, the library rustls can use too, so the binary carries one
//! crypto stack. It verifies only (the server never signs a token), and
//! only the four algorithms `--auth-secret` and `--auth-public-key` can
//! name: HS256 (the HMAC check is constant time), RS256 (2048-bit keys or
//! larger), ES256 and EdDSA (Ed25519).

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{Error as SignatureError, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use ring::signature::{ECDSA_P256_SHA256_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

/// The provider: verification by `ring`, no signing, no JWK helpers.
static RING: CryptoProvider =
    CryptoProvider { signer_factory: no_signer, verifier_factory: verifier, key_utils: KeyUtils::new_unimplemented() };

/// Makes [`RING`] the process's provider. Called before the first check;
/// a second call changes nothing.
pub(super) fn install() {
    // Err only when a provider is installed already, which is this one.
    let _ = RING.install_default();
}

/// The key family an algorithm needs, for the four we accept.
pub(super) fn family_of(alg: Algorithm) -> Option<AlgorithmFamily> {
    match alg {
        Algorithm::HS256 => Some(AlgorithmFamily::Hmac),
        Algorithm::RS256 => Some(AlgorithmFamily::Rsa),
        Algorithm::ES256 => Some(AlgorithmFamily::Ec),
        Algorithm::EdDSA => Some(AlgorithmFamily::Ed),
        _ => None,
    }
}

fn no_signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Err(ErrorKind::UnsupportedAlgorithm.into())
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    // The algorithm must be the key's: a token cannot pick HS256 and have
    // a public key's bytes taken for its secret.
    if family_of(*alg) != Some(key.family()) {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    Ok(Box::new(RingVerifier { alg: *alg, key: key.clone() }))
}

/// One key, checking one algorithm's signatures.
struct RingVerifier {
    alg: Algorithm,
    key: DecodingKey,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> std::result::Result<(), SignatureError> {
        let key = self.key.try_get_as_bytes().map_err(SignatureError::from_source)?;
        let checked = match self.alg {
            Algorithm::HS256 => ring::hmac::verify(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), msg, signature),
            Algorithm::RS256 => UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key).verify(msg, signature),
            Algorithm::ES256 => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key).verify(msg, signature),
            Algorithm::EdDSA => UnparsedPublicKey::new(&ED25519, key).verify(msg, signature),
            _ => return Err(SignatureError::new()),
        };
        checked.map_err(|_| SignatureError::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}
