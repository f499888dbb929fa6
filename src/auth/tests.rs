//! Tokens made by hand (base64url, HMAC or signatures from `ring`), so
//! what signs them here is not the code under test.

use data_encoding::BASE64URL_NOPAD;

use super::*;
use crate::testutil::{ed25519_key, es256_key, hs256_signer as hs256, jwt as token};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn hs(claims: &str) -> String {
    token(r#"{"alg":"HS256","typ":"JWT"}"#, claims, hs256(SECRET))
}

fn valid_claims() -> String {
    format!(r#"{{"sub":"u-1","name":"Alice","exp":{}}}"#, now() + 600)
}

fn with_secret() -> Auth {
    Auth::new(&[(None, SECRET.to_vec())], &[], None, None).unwrap().unwrap()
}

/// `pem` written to a file of its own (tests run in parallel: one name
/// per call); its path.
fn pem_file(name: &str, pem: &str) -> String {
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("chatroom-auth-{}-{n}-{name}.pem", std::process::id()));
    std::fs::write(&path, pem).unwrap();
    path.display().to_string()
}

/// An ES256 key pair: its public key as a PEM file, and a signer.
fn es256() -> (String, impl Fn(&[u8]) -> Vec<u8>) {
    let (pem, sign) = es256_key().unwrap();
    (pem_file("es256", &pem), sign)
}

/// An Ed25519 key pair: its public key as a PEM file, and a signer.
fn ed25519() -> (String, impl Fn(&[u8]) -> Vec<u8>) {
    let (pem, sign) = ed25519_key().unwrap();
    (pem_file("ed25519", &pem), sign)
}

#[test]
fn a_signed_token_names_its_user() {
    let auth = with_secret();
    let id = auth.verify(&hs(&valid_claims())).unwrap();
    assert_eq!((id.sub.as_str(), id.name.as_str(), id.rooms), ("u-1", "Alice", None));
    let claims = format!(r#"{{"sub":"bob","exp":{},"rooms":["team-*"],"moderate":["team-a"]}}"#, now() + 60);
    let id = auth.verify(&hs(&claims)).unwrap();
    assert_eq!(id.name, "bob", "no name claim: the sub");
    assert!(id.rooms.as_ref().is_some_and(|r| r.matches("team-b") && !r.matches("lobby")));
    assert!(id.moderate.matches("team-a") && !id.moderate.matches("team-b"));
}

#[test]
fn forged_or_algorithm_swapped_tokens_are_refused() {
    let auth = with_secret();
    let forged = token(r#"{"alg":"HS256"}"#, &valid_claims(), hs256(b"another secret, 32 bytes or more!"));
    assert_eq!(auth.verify(&forged), Err(Refusal::BadSignature));
    // `none`: no signature at all.
    let none = format!(
        "{}.{}.",
        BASE64URL_NOPAD.encode(br#"{"alg":"none"}"#),
        BASE64URL_NOPAD.encode(valid_claims().as_bytes())
    );
    assert!(matches!(auth.verify(&none), Err(Refusal::Malformed | Refusal::WrongAlgorithm)));
    // A token of another algorithm than the key's.
    let (_, sign) = es256();
    let es = token(r#"{"alg":"ES256"}"#, &valid_claims(), sign);
    assert_eq!(auth.verify(&es), Err(Refusal::WrongAlgorithm));
    assert_eq!(auth.verify("not a token"), Err(Refusal::Malformed));
    let tampered = hs(&valid_claims()).replacen('.', ".e", 1);
    assert!(auth.verify(&tampered).is_err());
}

/// The classic confusion: an HS256 token whose "secret" is the public
/// key the server holds, sent to a server that has only that public key.
#[test]
fn a_public_key_is_never_taken_for_an_hmac_secret() {
    let (path, sign) = es256();
    let auth = Auth::new(&[], std::slice::from_ref(&path), None, None).unwrap().unwrap();
    assert!(auth.verify(&token(r#"{"alg":"ES256"}"#, &valid_claims(), sign)).is_ok());
    let public = std::fs::read(&path).unwrap();
    let confused = token(r#"{"alg":"HS256"}"#, &valid_claims(), hs256(&public));
    assert_eq!(auth.verify(&confused), Err(Refusal::WrongAlgorithm));
}

#[test]
fn ed25519_keys_verify_and_are_told_apart_from_ec_ones() {
    let (ed_path, ed_sign) = ed25519();
    let (es_path, es_sign) = es256();
    let auth = Auth::new(&[], &[ed_path, es_path], None, None).unwrap().unwrap();
    assert!(auth.verify(&token(r#"{"alg":"EdDSA"}"#, &valid_claims(), ed_sign)).is_ok());
    assert!(auth.verify(&token(r#"{"alg":"ES256"}"#, &valid_claims(), es_sign)).is_ok());
    assert_eq!(describe(&auth), "2 key(s): ES256, EdDSA");
}

#[test]
fn time_claims_hold_within_the_leeway() {
    let auth = with_secret();
    let at = |exp: u64| hs(&format!(r#"{{"sub":"u","exp":{exp}}}"#));
    assert_eq!(auth.verify(&at(now() - LEEWAY_S - 60)), Err(Refusal::Expired));
    assert!(auth.verify(&at(now() - 5)).is_ok(), "within the leeway");
    let early = hs(&format!(r#"{{"sub":"u","exp":{},"nbf":{}}}"#, now() + 600, now() + LEEWAY_S + 60));
    assert_eq!(auth.verify(&early), Err(Refusal::NotYetValid));
    let started = hs(&format!(r#"{{"sub":"u","exp":{},"nbf":{}}}"#, now() + 600, now() - 1));
    assert!(auth.verify(&started).is_ok());
}

#[test]
fn exp_and_sub_are_required() {
    let auth = with_secret();
    assert_eq!(auth.verify(&hs(r#"{"sub":"u"}"#)), Err(Refusal::MissingClaim));
    assert_eq!(auth.verify(&hs(&format!(r#"{{"exp":{}}}"#, now() + 60))), Err(Refusal::MissingClaim));
    assert_eq!(auth.verify(&hs(&format!(r#"{{"sub":"","exp":{}}}"#, now() + 60))), Err(Refusal::MissingClaim));
}

#[test]
fn issuer_and_audience_are_checked_when_set() {
    let auth = Auth::new(&[(None, SECRET.to_vec())], &[], Some("site".into()), Some("chat".into())).unwrap().unwrap();
    let claims = |iss: &str, aud: &str| format!(r#"{{"sub":"u","exp":{},"iss":"{iss}","aud":"{aud}"}}"#, now() + 60);
    assert!(auth.verify(&hs(&claims("site", "chat"))).is_ok());
    assert_eq!(auth.verify(&hs(&claims("other", "chat"))), Err(Refusal::WrongIssuerOrAudience));
    assert_eq!(auth.verify(&hs(&claims("site", "other"))), Err(Refusal::WrongIssuerOrAudience));
    assert_eq!(auth.verify(&hs(&valid_claims())), Err(Refusal::MissingClaim), "no iss at all");
    // Without --auth-audience a token's aud is not held against it.
    assert!(with_secret().verify(&hs(&claims("any", "any"))).is_ok());
}

#[test]
fn a_key_id_picks_its_key() {
    let new_secret = b"a newer secret of thirty-two bytes!!".to_vec();
    let auth =
        Auth::new(&[(Some("old".into()), SECRET.to_vec()), (Some("new".into()), new_secret.clone())], &[], None, None)
            .unwrap()
            .unwrap();
    let signed = |kid: &str, secret: &[u8]| {
        token(&format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#), &valid_claims(), hs256(secret))
    };
    assert!(auth.verify(&signed("new", &new_secret)).is_ok());
    assert!(auth.verify(&signed("old", SECRET)).is_ok());
    assert_eq!(auth.verify(&signed("new", SECRET)), Err(Refusal::BadSignature));
    assert_eq!(auth.verify(&signed("gone", SECRET)), Err(Refusal::UnknownKey));
    // Without a kid, every key is tried.
    assert!(auth.verify(&token(r#"{"alg":"HS256"}"#, &valid_claims(), hs256(&new_secret))).is_ok());
}

#[test]
fn weak_or_unreadable_keys_stop_the_start() {
    let short = Auth::new(&[(None, b"too short".to_vec())], &[], None, None).err().unwrap();
    assert!(short.contains("too short for HS256"), "{short}");
    let missing = Auth::new(&[], &["/nonexistent/key.pem".to_string()], None, None).err().unwrap();
    assert!(missing.contains("cannot read it"), "{missing}");
    let path = std::env::temp_dir().join(format!("chatroom-auth-{}-junk.pem", std::process::id()));
    std::fs::write(&path, "junk").unwrap();
    let junk = Auth::new(&[], &[path.display().to_string()], None, None).err().unwrap();
    assert!(junk.contains("not a PEM public key"), "{junk}");
    assert!(Auth::new(&[], &[], None, None).unwrap().is_none(), "no key: no checks");
    assert_eq!(split_kid("k1=/etc/key.pem"), (Some("k1".to_string()), "/etc/key.pem"));
    assert_eq!(split_kid("/etc/a=b.pem"), (None, "/etc/a=b.pem"));
}
