//! One connection's TLS: rustls's unbuffered state machine over our buffers.
//!
//! rustls's unbuffered API ([`UnbufferedServerConnection`]) owns no I/O
//! buffers: each call gets the ciphertext we read and says what it wants
//! next, as a [`ConnectionState`]:
//!
//! | state | what we do |
//! |---|---|
//! | `ReadTraffic` | copy each decrypted record out, into the caller's buffer |
//! | `EncodeTlsData` | append a handshake record to `outgoing` |
//! | `TransmitTlsData` | write `outgoing` to the socket |
//! | `BlockedHandshake` | the rest of a record is still on the wire: read more |
//! | `WriteTraffic` | the handshake is done and all input used: encrypt output |
//! | `PeerClosed`, `Closed` | the client sent close_notify: end of input |
//!
//! Reading: the socket is read into a ciphertext buffer that all
//! connections share (this thread's, as large as the reactor's read
//! buffer), every whole record in it is processed, and the plaintext goes
//! to the caller's buffer, which is then handled exactly as a plain
//! connection's bytes are. Plaintext is never larger than its ciphertext,
//! so what one read gives always fits. Only a record cut in two by the
//! read stays behind, in `incoming`, until its rest arrives.
//!
//! Writing: the output queue's slices are gathered into records of up to
//! 16 KiB, so the frames one turn queued share one record and leave in one
//! `send` (corking). They are encrypted into this thread's buffer and
//! written at once; only what the kernel does not take stays, in
//! `outgoing`, and counts toward `--max-pending` with the queue.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus};

pub use crate::conn::Received;
use crate::outbuf::{Flushed, OutQueue};

/// The most plaintext one TLS record carries (RFC 8446 §5.1).
const RECORD: usize = 16 * 1024;

/// Ciphertext bytes one record may add on top of its plaintext: the
/// 5-byte header, the content-type byte and the AEAD tag (TLS 1.3), or an
/// explicit nonce and tag (TLS 1.2); 64 leaves room for either.
const RECORD_OVERHEAD: usize = 64;

/// Records encrypted before each write while flushing a large backlog:
/// 64 KiB of plaintext per `send`, like the reactor's read buffer.
const RECORDS_PER_WRITE: usize = 4;

thread_local! {
    /// Ciphertext just read, shared by every connection of this thread
    /// (the reactor's): a connection keeps only an unfinished record.
    static CIPHER_IN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Records just encrypted, shared likewise: a connection keeps only
    /// what the kernel did not take.
    static CIPHER_OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Where several queued chunks are gathered into one record's plaintext.
    static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A connection's TLS state.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// The start of a record whose rest is still on the wire (empty, and
    /// unallocated, between records).
    incoming: Vec<u8>,
    /// Ciphertext the kernel has not taken yet (empty when it keeps up).
    outgoing: Vec<u8>,
    /// No application data has been exchanged yet.
    handshaking: bool,
    /// Nothing was ever read: the first bytes decide whether this is a TLS
    /// client at all (see [`looks_like_http`]).
    fresh: bool,
    /// The last read emptied the socket (see [`TlsSession::drained`]).
    drained: bool,
    /// The client sent close_notify: its input has ended.
    peer_closed: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.handshaking)
            .field("incoming", &self.incoming.len())
            .field("outgoing", &self.outgoing.len())
            .finish()
    }
}

/// What a session reads from and writes to: the client's TCP socket, or
/// bytes in memory (the fuzz target).
pub trait Wire: Read + Write {
    /// Shuts the write side (after the one plain-text answer to a client
    /// that spoke plain HTTP).
    fn shut_write(&mut self);
}

impl Wire for TcpStream {
    fn shut_write(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// What processing one read's records gave.
struct Processed {
    /// Ciphertext bytes used up (whole records).
    used: usize,
    /// Plaintext bytes written to the caller's buffer.
    plain: usize,
}

impl TlsSession {
    /// A server session waiting for its ClientHello.
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            handshaking: true,
            fresh: true,
            drained: false,
            peer_closed: false,
        })
    }

    /// The handshake is not finished: reading from this connection costs
    /// key exchanges and signatures (bounded per turn by the reactor).
    pub fn is_handshaking(&self) -> bool {
        self.handshaking
    }

    /// Whether the last [`TlsSession::receive`] that gave data also emptied
    /// the socket: the reactor's "a short read means drained" for TLS,
    /// where the plaintext's length says nothing about the socket's.
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// Ciphertext waiting for the kernel.
    pub fn pending(&self) -> usize {
        self.outgoing.len()
    }

    /// Reads ciphertext until some plaintext comes out of it, the socket
    /// is drained, or the client is done; the plaintext goes to the start
    /// of `plain`. Handshake records rustls answers with are written to the
    /// socket right away.
    pub fn receive(&mut self, socket: &mut impl Wire, plain: &mut [u8]) -> Received {
        CIPHER_IN.with_borrow_mut(|cipher| {
            // As large as `plain`: the plaintext of whatever fits in it
            // fits in `plain` too.
            if cipher.len() < plain.len() {
                cipher.resize(plain.len(), 0);
            }
            let cap = plain.len().min(cipher.len());
            let mut filled = self.incoming.len();
            if let Some(dst) = cipher.get_mut(..filled) {
                dst.copy_from_slice(&self.incoming);
            }
            self.incoming = Vec::new();
            loop {
                let mut eof = false;
                let mut drained = false;
                // After processing, only an unfinished record is left, so
                // there is room unless a record claims more than TLS allows.
                let room = cipher.get_mut(filled..cap).filter(|room| !room.is_empty());
                match room.map(|room| socket.read(room)) {
                    Some(Ok(0)) => eof = true,
                    Some(Ok(n)) => {
                        filled += n;
                        drained = filled < cap;
                    }
                    Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => drained = true,
                    Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Some(Err(e)) => return Received::Gone(e),
                    None => return Received::Gone(invalid("TLS record too large")),
                }
                let input = cipher.get_mut(..filled).unwrap_or_default();
                if self.fresh && !input.is_empty() {
                    self.fresh = false;
                    if looks_like_http(input) {
                        answer_plain_http(socket);
                        return Received::Gone(invalid("plain HTTP on the TLS port"));
                    }
                }
                let done = match self.process(input, plain, socket) {
                    Ok(done) => done,
                    // rustls may have an alert ready, but after an error it
                    // must not be called again: the connection just closes.
                    Err(e) => return Received::Gone(e),
                };
                // rustls never says it used more than it was given; were it
                // to, the extra is ignored rather than indexed past.
                let used = done.used.min(filled);
                cipher.copy_within(used..filled, 0);
                filled -= used;
                if done.plain > 0 || eof || self.peer_closed || drained {
                    // Keep the unfinished record for the next read.
                    self.incoming = cipher.get(..filled).unwrap_or_default().to_vec();
                    self.drained = drained;
                }
                if done.plain > 0 {
                    return Received::Data(done.plain);
                }
                if eof || self.peer_closed {
                    return Received::Eof;
                }
                if drained {
                    return Received::Drained;
                }
            }
        })
    }

    /// Hands rustls every whole record in `input`; copies out the
    /// plaintext; encodes and sends its handshake answers.
    fn process(&mut self, input: &mut [u8], plain: &mut [u8], socket: &mut impl Wire) -> io::Result<Processed> {
        let mut used = 0;
        let mut got = 0;
        loop {
            let rest = input.get_mut(used..).unwrap_or_default();
            let UnbufferedStatus { mut discard, state } = self.conn.process_tls_records(rest);
            match state.map_err(|e| invalid(&e.to_string()))? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    self.handshaking = false;
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(|e| invalid(&e.to_string()))?;
                        discard += record.discard;
                        let n = record.payload.len();
                        let dst = plain.get_mut(got..got + n).ok_or_else(|| invalid("TLS plaintext overflow"))?;
                        dst.copy_from_slice(record.payload);
                        got += n;
                    }
                }
                ConnectionState::EncodeTlsData(mut encoder) => {
                    let start = self.outgoing.len();
                    let mut room = RECORD;
                    loop {
                        self.outgoing.resize(start + room, 0);
                        match encoder.encode(self.outgoing.get_mut(start..).unwrap_or_default()) {
                            Ok(n) => {
                                self.outgoing.truncate(start + n);
                                break;
                            }
                            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                                room = required_size;
                            }
                            Err(e) => return Err(invalid(&e.to_string())),
                        }
                    }
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // What the kernel refuses stays in `outgoing`, for the
                    // flush that WRITABLE brings; rustls only needs to
                    // know it will not be encoded twice.
                    write_outgoing(&mut self.outgoing, socket)?;
                    transmit.done();
                }
                ConnectionState::WriteTraffic(_) => {
                    self.handshaking = false;
                    used += discard;
                    break;
                }
                ConnectionState::BlockedHandshake => {
                    used += discard;
                    break;
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.peer_closed = true;
                    used += discard;
                    break;
                }
                // Early data is off (`max_early_data_size` is 0), and
                // future states are not ours to guess.
                _ => return Err(invalid("unexpected TLS state")),
            }
            used += discard;
        }
        Ok(Processed { used, plain: got })
    }

    /// Encrypts the queued output into records and writes them: one
    /// `send` per turn for what one turn queued, as on a plain connection.
    pub fn flush(&mut self, out: &mut OutQueue, socket: &mut impl Wire) -> io::Result<Flushed> {
        loop {
            if write_outgoing(&mut self.outgoing, socket)? == Flushed::Partial {
                return Ok(Flushed::Partial);
            }
            if out.is_empty() {
                return Ok(Flushed::All);
            }
            CIPHER_OUT.with_borrow_mut(|cipher| -> io::Result<()> {
                let size = RECORDS_PER_WRITE * (RECORD + RECORD_OVERHEAD);
                if cipher.len() < size {
                    cipher.resize(size, 0);
                }
                let made = self.encrypt(out, cipher)?;
                let records = cipher.get(..made).unwrap_or_default();
                let written = write_some(socket, records)?;
                // The rest waits for WRITABLE, in `outgoing`.
                self.outgoing.extend_from_slice(records.get(written..).unwrap_or_default());
                Ok(())
            })?;
        }
    }

    /// Encrypts up to [`RECORDS_PER_WRITE`] records of queued output into
    /// `cipher`; returns the ciphertext's length.
    fn encrypt(&mut self, out: &mut OutQueue, cipher: &mut [u8]) -> io::Result<usize> {
        let mut made = 0;
        // rustls is given the input it has not finished with (the part of
        // a record, or of a handshake message, still arriving), never an
        // empty buffer in its place: it may hold positions inside it.
        let TlsSession { conn, incoming, .. } = self;
        let UnbufferedStatus { discard, state } = conn.process_tls_records(incoming);
        if discard > 0 {
            // Whole records are always taken when read; nothing can be
            // left to discard here, and a library that says otherwise is
            // not one to go on with.
            return Err(invalid("TLS state out of step"));
        }
        let mut traffic = match state.map_err(|e| invalid(&e.to_string()))? {
            ConnectionState::WriteTraffic(traffic) => traffic,
            // A handshake message of ours to send first (a key update).
            ConnectionState::EncodeTlsData(mut encoder) => {
                let n = encoder.encode(cipher).map_err(|e| invalid(&e.to_string()))?;
                return Ok(n);
            }
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                return Ok(0);
            }
            // Output before the handshake ended, or after close_notify:
            // nothing may be sent; the connection is finished.
            _ => return Err(invalid("TLS cannot send now")),
        };
        GATHER.with_borrow_mut(|gather| {
            for _ in 0..RECORDS_PER_WRITE {
                // A record's plaintext: straight from the first chunk when it
                // fills the record (one frame, or a large one), else the
                // queue's first chunks gathered, so small frames share it.
                let want = out.len().min(RECORD);
                if want == 0 {
                    break;
                }
                let front = out.front();
                let plain = if front.len() >= want {
                    front.get(..want).unwrap_or_default()
                } else {
                    if gather.len() < RECORD {
                        gather.resize(RECORD, 0);
                    }
                    let n = out.copy_front(gather.get_mut(..want).unwrap_or_default());
                    gather.get(..n).unwrap_or_default()
                };
                let n = plain.len();
                let room = cipher.get_mut(made..).unwrap_or_default();
                match traffic.encrypt(plain, room) {
                    Ok(written) => {
                        made += written;
                        out.advance(n);
                    }
                    Err(EncryptError::InsufficientSize(_)) => break,
                    Err(e) => return Err(invalid(&e.to_string())),
                }
            }
            Ok(made)
        })
    }

    /// Tells the client, best effort, that nothing more comes
    /// (close_notify), before the write side is shut.
    pub fn close_notify(&mut self, socket: &mut impl Wire) {
        if self.handshaking || !self.outgoing.is_empty() {
            return;
        }
        let mut alert = [0u8; RECORD_OVERHEAD];
        let TlsSession { conn, incoming, .. } = self;
        let UnbufferedStatus { state, .. } = conn.process_tls_records(incoming);
        if let Ok(ConnectionState::WriteTraffic(mut traffic)) = state
            && let Ok(n) = traffic.queue_close_notify(&mut alert)
        {
            let _ = socket.write(alert.get(..n).unwrap_or_default());
        }
    }
}

/// Writes `outgoing`; keeps what the kernel does not take.
fn write_outgoing(outgoing: &mut Vec<u8>, socket: &mut impl Wire) -> io::Result<Flushed> {
    if outgoing.is_empty() {
        return Ok(Flushed::All);
    }
    let written = write_some(socket, outgoing)?;
    if written == outgoing.len() {
        *outgoing = Vec::new();
        Ok(Flushed::All)
    } else {
        outgoing.drain(..written);
        Ok(Flushed::Partial)
    }
}

/// Writes as much of `bytes` as the socket takes; 0 when it would block.
fn write_some(socket: &mut impl Wire, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match socket.write(bytes.get(written..).unwrap_or_default()) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Whether a connection's first bytes are a plain HTTP request (a method
/// in capitals) rather than a TLS record (whose first byte is 0x16, a
/// handshake, for a ClientHello).
fn looks_like_http(first: &[u8]) -> bool {
    first.first().is_some_and(|b| b.is_ascii_uppercase())
}

/// The one plain-text answer a TLS port gives: a client that spoke plain
/// HTTP to it learns what to use instead, then the connection closes.
fn answer_plain_http(socket: &mut impl Wire) {
    let response = crate::response::closing_text(400, "", "This port speaks TLS: use https:// (or wss://).");
    let _ = socket.write(response.as_bytes());
    socket.shut_write();
}

/// A TLS failure as the I/O error the reactor logs (at debug level) before
/// it closes that connection alone.
fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

#[cfg(test)]
mod tests {
    //! A real handshake on loopback between a session and a rustls client,
    //! then the records a flush writes, read raw off the client's socket.
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    use mio::{Events, Interest, Poll, Token};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore};

    use super::*;
    use crate::outbuf::Chunk;

    struct Pair {
        session: TlsSession,
        server: TcpStream,
        client: ClientConnection,
        socket: TcpStream,
        poll: Poll,
    }

    fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let der: CertificateDer<'static> = made.cert.der().clone();
        let key = PrivateKeyDer::try_from(made.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// Connects and completes the handshake, each side driven by readiness.
    fn connected() -> Pair {
        let (server_config, client_config) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        socket.set_nonblocking(true).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let (mut server, mut socket) = (TcpStream::from_std(server), TcpStream::from_std(socket));
        let poll = Poll::new().unwrap();
        poll.registry().register(&mut server, Token(0), Interest::READABLE).unwrap();
        poll.registry().register(&mut socket, Token(1), Interest::READABLE).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut pair = Pair {
            session: TlsSession::new(server_config).unwrap(),
            server,
            client: ClientConnection::new(client_config, name).unwrap(),
            socket,
            poll,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut plain = vec![0u8; 64 * 1024];
        while pair.client.is_handshaking() || pair.session.is_handshaking() {
            assert!(Instant::now() < deadline, "handshake timed out");
            while pair.client.wants_write() {
                pair.client.write_tls(&mut pair.socket).unwrap();
            }
            match pair.session.receive(&mut pair.server, &mut plain) {
                Received::Drained => {}
                other => panic!("unexpected {other:?}"),
            }
            pair.client_reads();
            pair.wait();
        }
        // The session ticket the server sends after the handshake.
        pair.wait();
        pair.client_reads();
        pair
    }

    impl Pair {
        /// Waits (bounded) for either socket to become readable.
        fn wait(&mut self) {
            let mut events = Events::with_capacity(4);
            self.poll.poll(&mut events, Some(Duration::from_millis(200))).unwrap();
        }

        /// What the client's socket holds, raw.
        fn raw(&mut self) -> Vec<u8> {
            let mut bytes = Vec::new();
            let mut buf = [0u8; 65536];
            loop {
                match self.socket.read(&mut buf) {
                    Ok(0) => return bytes,
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return bytes,
                    Err(e) => panic!("{e}"),
                }
            }
        }

        /// Feeds the client whatever arrived; returns the plaintext.
        fn decrypt(&mut self, raw: &[u8]) -> Vec<u8> {
            let mut rest = raw;
            let mut plain = Vec::new();
            while !rest.is_empty() {
                self.client.read_tls(&mut rest).unwrap();
                self.client.process_new_packets().unwrap();
                // Taken as it comes: rustls buffers only so much plaintext.
                let _ = self.client.reader().read_to_end(&mut plain);
            }
            plain
        }

        fn client_reads(&mut self) -> Vec<u8> {
            let raw = self.raw();
            self.decrypt(&raw)
        }
    }

    /// The TLS records in `raw`: (content type, length) of each.
    fn records(mut raw: &[u8]) -> Vec<(u8, usize)> {
        let mut out = Vec::new();
        while raw.len() >= 5 {
            let len = usize::from(u16::from_be_bytes([raw[3], raw[4]]));
            out.push((raw[0], len));
            raw = &raw[5 + len..];
        }
        assert!(raw.is_empty(), "records end on a record boundary");
        out
    }

    #[test]
    fn frames_queued_in_one_turn_share_one_record() {
        let mut pair = connected();
        let mut out = OutQueue::new();
        let mut expected = Vec::new();
        for i in 0..10u8 {
            let frame = vec![b'a' + i; 100];
            expected.extend_from_slice(&frame);
            out.push(Chunk::Owned(frame));
        }
        assert_eq!(pair.session.flush(&mut out, &mut pair.server).unwrap(), Flushed::All);
        assert!(out.is_empty());
        pair.wait();
        let raw = pair.raw();
        let found = records(&raw);
        assert_eq!(found.len(), 1, "ten frames, one record: {found:?}");
        assert_eq!(found[0].0, 0x17, "application data");
        assert_eq!(pair.decrypt(&raw), expected);
    }

    #[test]
    fn a_large_backlog_goes_in_full_records_and_what_the_kernel_refuses_waits_in_order() {
        let mut pair = connected();
        let mut out = OutQueue::new();
        let mut expected = Vec::new();
        // 4 MiB: far more than loopback's socket buffers take at once.
        for i in 0..64u32 {
            let chunk: Vec<u8> = (0..65536u32).map(|j| (i.wrapping_mul(31) ^ j) as u8).collect();
            expected.extend_from_slice(&chunk);
            out.push(Chunk::Owned(chunk));
        }
        let mut got = Vec::new();
        let mut records_seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut stalled = false;
        loop {
            assert!(Instant::now() < deadline, "backlog never drained");
            let before = out.len() + pair.session.pending();
            let flushed = pair.session.flush(&mut out, &mut pair.server).unwrap();
            let after = out.len() + pair.session.pending();
            assert!(after <= before, "the backlog only shrinks");
            if flushed == Flushed::Partial {
                stalled = true;
                assert!(after > 0);
            }
            pair.wait();
            let raw = pair.raw();
            // Raw bytes cut at any point: parse records from what is whole.
            records_seen.extend_from_slice(&raw);
            got.extend(pair.decrypt(&raw));
            if flushed == Flushed::All && got.len() == expected.len() {
                break;
            }
        }
        assert!(stalled, "the kernel refused part of 4 MiB at least once");
        assert!(got == expected, "every byte, in order");
        let sizes = records(&records_seen);
        let full = sizes.iter().filter(|(_, len)| *len > RECORD).count();
        assert!(full >= sizes.len() - 1, "records are full but for the last: {}", sizes.len());
    }
}
