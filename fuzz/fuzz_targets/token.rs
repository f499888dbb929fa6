//! Fuzz target: a connection token (`?token=` or `Authorization: Bearer`),
//! as `auth::Auth::verify` checks it at the chat handshake.
//!
//! The bytes are a would-be JWT checked against an HS256 secret, an ES256
//! key and an Ed25519 key at once. Whatever they hold, the check must not
//! panic, and must refuse: a token the fuzzer made up cannot carry a valid
//! signature under keys it never saw, so an accepted one is a forgery.
//! The same bytes also go in as the claims of a token we sign ourselves
//! (HS256): a signed token with arbitrary claims must never panic either,
//! and when accepted, its user has a non-empty `sub` and a clean name.
#![no_main]

use std::sync::OnceLock;

use chatroom::auth::Auth;
use chatroom::testutil::{ed25519_key, es256_key, hs256_signer, jwt};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret!";

fn auth() -> &'static Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| {
        let dir = std::env::temp_dir();
        let mut keys = Vec::new();
        for (name, pem) in [("es256", es256_key().map(|k| k.0)), ("ed25519", ed25519_key().map(|k| k.0))] {
            let path = dir.join(format!("chatroom-fuzz-token-{}-{name}.pem", std::process::id()));
            std::fs::write(&path, pem.expect("ring makes a key")).expect("a temporary file");
            keys.push(path.display().to_string());
        }
        Auth::new(&[(None, SECRET.to_vec())], &keys, None, None).expect("keys load").expect("keys given")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    assert!(auth().verify(text).is_err(), "a made-up token was accepted: {text:?}");
    let signed = jwt(r#"{"alg":"HS256","typ":"JWT"}"#, text, hs256_signer(SECRET));
    if let Ok(user) = auth().verify(&signed) {
        assert!(!user.sub.is_empty(), "accepted without a sub: {text:?}");
        assert_eq!(chatroom::chat::protocol::clean_name(&user.name).as_deref(), Some(user.name.as_str()));
    }
});
