//! Helpers shared by the unit tests and the criterion benches (public so
//! that `benches/` can reach it; not part of the server's API).

/// A masked client frame whose first byte (FIN, RSV bits, opcode) is
/// `first`, with the masking key of RFC 6455 §5.7's example, as a browser
/// would send it: 7-, 16- or 64-bit length as the payload needs.
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    f
}

/// A JWT `header.claims.signature`, signed by `sign` over the first two
/// parts: tokens for tests and benches, made by hand so that what signs
/// them is not the code that checks them.
pub fn jwt(header: &str, claims: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    use data_encoding::BASE64URL_NOPAD;
    let message =
        format!("{}.{}", BASE64URL_NOPAD.encode(header.as_bytes()), BASE64URL_NOPAD.encode(claims.as_bytes()));
    let signature = sign(message.as_bytes());
    format!("{message}.{}", BASE64URL_NOPAD.encode(&signature))
}

/// HS256 signatures with `secret`.
pub fn hs256_signer(secret: &[u8]) -> impl Fn(&[u8]) -> Vec<u8> + use<> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    move |msg| ring::hmac::sign(&key, msg).as_ref().to_vec()
}

/// Signs a token's first two parts.
pub type Signer = Box<dyn Fn(&[u8]) -> Vec<u8>>;

/// A fresh ES256 (P-256) key pair: the public key as PEM, and a signer.
pub fn es256_key() -> Result<(String, Signer), ring::error::Unspecified> {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| ring::error::Unspecified)?;
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING }
    let prefix =
        b"\x30\x59\x30\x13\x06\x07\x2a\x86\x48\xce\x3d\x02\x01\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07\x03\x42\x00";
    let pem = public_key_pem(prefix, pair.public_key().as_ref());
    let sign = move |msg: &[u8]| pair.sign(&rng, msg).map(|s| s.as_ref().to_vec()).unwrap_or_default();
    Ok((pem, Box::new(sign)))
}

/// A fresh Ed25519 key pair: the public key as PEM, and a signer.
pub fn ed25519_key() -> Result<(String, Signer), ring::error::Unspecified> {
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| ring::error::Unspecified)?;
    // SEQUENCE { SEQUENCE { id-Ed25519 }, BIT STRING }
    let pem = public_key_pem(b"\x30\x2a\x30\x05\x06\x03\x2b\x65\x70\x03\x21\x00", pair.public_key().as_ref());
    Ok((pem, Box::new(move |msg: &[u8]| pair.sign(msg).as_ref().to_vec())))
}

/// A SubjectPublicKeyInfo as PEM: `prefix` (its DER up to the key's bits),
/// then the raw public key.
fn public_key_pem(prefix: &[u8], key: &[u8]) -> String {
    let body = data_encoding::BASE64.encode(&[prefix, key].concat());
    let lines: Vec<&str> = body.as_bytes().chunks(64).filter_map(|c| std::str::from_utf8(c).ok()).collect();
    format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
}
