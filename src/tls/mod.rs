//! TLS: `https://` and `wss://` from the one binary, on the one reactor.
//!
//! With `--tls-cert` and `--tls-key` every connection on `--bind` starts
//! with a TLS handshake (rustls, TLS 1.3 and 1.2, ALPN `http/1.1`). The
//! layer sits between the socket and the connection's buffers, inside
//! `crate::conn` (the only code that touches a client's socket):
//!
//! ```text
//!  socket ──read──► ciphertext (one buffer for all, this thread's) ──rustls──► plaintext ──► HTTP / WebSocket
//!  socket ◄─write── ciphertext ◄──rustls── the output queue's slices, gathered into records
//! ```
//!
//! - [`session::TlsSession`] is one connection's TLS state. It uses rustls's
//!   *unbuffered* API: rustls reads and writes only the buffers we lend it,
//!   so an idle connection keeps no TLS buffers at all: the bytes of a
//!   record split across reads, or of a write the kernel refused, are kept
//!   only until they go.
//! - [`Certificates`] (this file) loads the certificate chain and key into
//!   the `ServerConfig` new connections share, and loads them again on
//!   SIGHUP: connections already open keep the configuration they started
//!   with; a bad new pair is refused and the old one kept.
//!
//! - [`redirect`] decides what the plain-HTTP listener (`--redirect-bind`)
//!   answers: a 308 to `https://`, or an ACME challenge file.
//!
//! The crypto provider is *ring*, which the JWT verification
//! (`auth/provider.rs`) and the API keys' hashing already use: one crypto
//! library in the binary. Handshakes are the expensive part (an ECDSA
//! P-256 signature is cheap, an RSA-2048 one about ten times dearer, all on
//! the reactor's thread), so the reactor bounds how
//! many it advances per loop turn (`server/read.rs`), and clients that come
//! back resume with a ticket instead of a full handshake.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub mod redirect;
pub mod session;

pub use session::TlsSession;

/// The TLS settings new connections get, and the files they came from.
pub struct Certificates {
    cert_path: String,
    key_path: String,
    config: Arc<ServerConfig>,
}

impl Certificates {
    /// Loads `--tls-cert` and `--tls-key`. The error is one line that names
    /// the file and what is wrong with it.
    pub fn load(cert_path: &str, key_path: &str) -> Result<Certificates, String> {
        let config = server_config(cert_path, key_path)?;
        Ok(Certificates { cert_path: cert_path.to_string(), key_path: key_path.to_string(), config })
    }

    /// Loads the files again (SIGHUP). On success new connections use the
    /// new pair; on failure nothing changes and the error says why.
    pub fn reload(&mut self) -> Result<(), String> {
        self.config = server_config(&self.cert_path, &self.key_path)?;
        Ok(())
    }

    /// A new connection's TLS state, server side.
    pub fn session(&self) -> Result<TlsSession, rustls::Error> {
        TlsSession::new(Arc::clone(&self.config))
    }
}

/// Reads the PEM files and builds the server configuration.
fn server_config(cert_path: &str, key_path: &str) -> Result<Arc<ServerConfig>, String> {
    let chain = read_chain(cert_path)?;
    let key = read_key(key_path)?;
    configure(chain, key, cert_path, key_path)
}

/// The server configuration for a certificate and key given as PEM text
/// (the fuzz target's; the server reads files).
pub fn config_from_pem(cert: &[u8], key: &[u8]) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| e.to_string())?;
    configure(chain, key, "(PEM)", "(PEM)")
}

/// Our TLS settings around a chain and its key.
fn configure(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: &str,
    key_path: &str,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth();
    // rustls checks here that the key belongs to the chain's first certificate.
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("--tls-key {key_path} does not match the certificate in --tls-cert {cert_path}")
        }
        e => format!("--tls-cert {cert_path} / --tls-key {key_path}: {e}"),
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Resumption by ticket: a client that comes back skips the key
    // exchange and the signature. The ticket key lives in memory (a
    // restart or a reload makes old tickets void, and clients then do one
    // full handshake). One TLS 1.3 ticket per handshake is enough for a
    // browser's next visit, and each one costs an encryption.
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS tickets: {e}"))?;
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// The certificate chain, leaf first.
fn read_chain(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    readable(path, "--tls-cert")?;
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {path}: not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err(format!("--tls-cert {path}: no certificate in it (expected -----BEGIN CERTIFICATE-----)"));
    }
    Ok(chain)
}

/// The private key (PKCS#8, PKCS#1 or SEC1, in PEM).
fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    readable(path, "--tls-key")?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("--tls-key {path}: no private key in it (expected -----BEGIN PRIVATE KEY-----)")
        }
        e => format!("--tls-key {path}: not a PEM private key: {e}"),
    })
}

/// Says which file cannot be read, and why, in the words of the OS.
fn readable(path: &str, flag: &str) -> Result<(), String> {
    std::fs::File::open(Path::new(path)).map(drop).map_err(|e| format!("{flag} {path}: cannot read it: {e}"))
}
