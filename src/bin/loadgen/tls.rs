//! `wss://`: a connection's socket with rustls between it and everything above.
//!
//! [`Socket`] is what the upgrade and tungstenite read and write: a plain `TcpStream`, or
//! one with a rustls `ClientConnection` on it. Reads give plaintext, and report
//! `WouldBlock` only once the TCP socket did and no plaintext is left, so the
//! edge-triggered rule (read until `WouldBlock`) holds through TLS. Writes hand plaintext
//! to rustls and send the records it makes; records the kernel does not take wait inside
//! rustls, and `flush` reports `WouldBlock` until they are out, so the writable edge brings
//! the connection back for them. The handshake needs no stage of its own: rustls holds the
//! upgrade request until it finishes, and each read and write moves it on.
//!
//! The suites are offered in a browser's order, AES-128-GCM first. One `ClientConfig`
//! serves every connection of a run, so its session store lets a
//! reconnecting client resume with a ticket, as browsers do; `--tls-no-resume` turns that
//! off to measure full handshakes.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A connection's socket, with TLS when the URL was `wss://`.
pub struct Socket {
    pub tcp: TcpStream,
    tls: Option<Box<ClientConnection>>,
}

impl Socket {
    /// `tcp`, with a TLS client on it when `tls` says so.
    pub fn new(tcp: TcpStream, tls: Option<&Tls>) -> io::Result<Socket> {
        let tls = match tls {
            Some(t) => {
                Some(Box::new(ClientConnection::new(t.config.clone(), t.name.clone()).map_err(io::Error::other)?))
            }
            None => None,
        };
        Ok(Socket { tcp, tls })
    }

    /// Whether it speaks TLS (a short read of plaintext then says nothing about the socket).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Sends the records rustls has ready; `WouldBlock` when the kernel takes no more.
    fn send_records(tcp: &mut TcpStream, tls: &mut ClientConnection) -> io::Result<()> {
        while tls.wants_write() {
            match tls.write_tls(tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return self.tcp.read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                // Plaintext, or (0) the server's close_notify.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // EOF without close_notify: tungstenite tells a missing close frame apart.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            match tls.read_tls(&mut self.tcp) {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            tls.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            // Handshake answers (and the request rustls held for the handshake) go now.
            match Socket::send_records(&mut self.tcp, tls) {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return self.tcp.write(buf);
        };
        let n = tls.writer().write(buf)?;
        match Socket::send_records(&mut self.tcp, tls) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            // Taken by rustls: what the kernel refused goes with the next flush.
            _ => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.tls.as_deref_mut() {
            Some(tls) => Socket::send_records(&mut self.tcp, tls),
            None => self.tcp.flush(),
        }
    }
}

/// The TLS settings every connection of a run shares.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish()
    }
}

impl Tls {
    /// For the URL's `host` (a name or an address, without the port); trusting `ca` (PEM) if given, any certificate otherwise.
    /// `resume`: keep sessions and resume with tickets.
    pub fn new(host: &str, ca: Option<&str>, resume: bool) -> Result<Tls, String> {
        // The suites in a browser's order (Chrome's and Firefox's offer AES-128-GCM first),
        // so the server negotiates what it would with them.
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites.sort_by_key(|s| !is_aes_128(s.suite()));
        let provider = Arc::new(provider);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut config = match ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("--tls-ca {path}: {e}"))? {
                    roots.add(cert.map_err(|e| format!("--tls-ca {path}: {e}"))?).map_err(|e| e.to_string())?;
                }
                let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| e.to_string())?;
                builder.with_webpki_verifier(verifier).with_no_client_auth()
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if !resume {
            config.resumption = Resumption::disabled();
        }
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("TLS server name {host:?}: {e}"))?;
        Ok(Tls { config: Arc::new(config), name })
    }
}

/// Whether a suite uses AES-128-GCM.
fn is_aes_128(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as S;
    matches!(
        suite,
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

/// Accepts the server's certificate whatever it is, but still checks the handshake's
/// signatures. loadgen only talks to a server on this machine, to measure it; it protects
/// nothing, and a benchmark's certificate is usually self-signed (`--tls-ca` checks it).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
