//! Encrypted connections: one rustls session per socket, used from two
//! threads, and the HTTPS front for the page.
//!
//! Parlor reads and writes each connection on separate threads, but a TLS
//! session is one state machine. [`Conn::Tls`] halves therefore share the
//! session behind a mutex held only for rustls calls and the socket writes of
//! whole records; the reader waits for bytes on its own socket clone without
//! holding it, so a quiet client never blocks the writer.
//!
//! tiny_http's own TLS support ties it to an old rustls, so the HTTP front
//! in `http` uses these sessions too.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::ServerConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// The certificate and key both listeners present.
#[derive(Clone)]
pub struct TlsConfig(Arc<rustls::ServerConfig>);

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfig")
    }
}

impl TlsConfig {
    /// Loads a PEM certificate chain and private key.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsConfig, Error> {
        let tls_error = |path: &Path, message: String| Error::Tls {
            path: path.to_path_buf(),
            message,
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| tls_error(cert, format!("cannot read a PEM certificate chain: {e}")))?;
        if certs.is_empty() {
            return Err(tls_error(cert, "it holds no certificate".into()));
        }
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| tls_error(key, format!("cannot read a PEM private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key_der))
            .map_err(|e| tls_error(key, format!("the key does not fit the certificate: {e}")))?;
        Ok(TlsConfig(Arc::new(config)))
    }

    /// Starts a TLS session on an accepted socket; the handshake happens
    /// on the first reads.
    pub fn accept(&self, sock: &TcpStream) -> io::Result<(Conn, Conn)> {
        let session = ServerConnection::new(self.0.clone()).map_err(io::Error::other)?;
        let shared = Arc::new(Mutex::new(session));
        let reader = Conn::Tls(TlsHalf {
            session: shared.clone(),
            sock: sock.try_clone()?,
            raw: Vec::new(),
        });
        let writer = Conn::Tls(TlsHalf {
            session: shared,
            sock: sock.try_clone()?,
            raw: Vec::new(),
        });
        Ok((reader, writer))
    }
}

/// One direction of a connection: plain TCP, or half of a TLS session.
pub enum Conn {
    /// Shared, so that a connection's outbox can send on the writer's socket
    /// without a descriptor of its own.
    Plain(Arc<TcpStream>),
    Tls(TlsHalf),
}

pub struct TlsHalf {
    session: Arc<Mutex<ServerConnection>>,
    sock: TcpStream,
    /// Ciphertext read from the socket (reader half only).
    raw: Vec<u8>,
}

impl Conn {
    /// The socket underneath, for timeouts.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(sock) => sock,
            Conn::Tls(half) => &half.sock,
        }
    }

    /// Ends the connection: a TLS session first says goodbye (close_notify).
    pub fn shutdown(&mut self, how: Shutdown) {
        if let Conn::Tls(half) = self {
            let mut session = half.lock();
            session.send_close_notify();
            let _ = flush_records(&mut session, &half.sock);
        }
        let _ = self.tcp().shutdown(how);
    }
}

impl TlsHalf {
    fn lock(&self) -> MutexGuard<'_, ServerConnection> {
        self.session
            .lock()
            .expect("BUG: no thread panics while holding a TLS session")
    }
}

fn flush_records(session: &mut ServerConnection, mut sock: &TcpStream) -> io::Result<()> {
    while session.wants_write() {
        retry_interrupted(|| session.write_tls(&mut sock))?;
    }
    Ok(())
}

/// Repeats a socket call that a signal interrupted. Linux fails a blocking
/// call on a socket with a timeout with EINTR even when the process was
/// only stopped and continued (signal(7)), and nothing was transferred.
pub fn retry_interrupted<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            done => return done,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let half = match self {
            Conn::Plain(sock) => return retry_interrupted(|| (&**sock).read(buf)),
            Conn::Tls(half) => half,
        };
        if half.raw.is_empty() {
            half.raw.resize(16 * 1024, 0);
        }
        loop {
            {
                let mut session = half.lock();
                match session.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                flush_records(&mut session, &half.sock)?;
            }
            // Wait for ciphertext without holding the session.
            let n = retry_interrupted(|| half.sock.read(&mut half.raw))?;
            let mut session = half.lock();
            let mut incoming = &half.raw[..n];
            loop {
                session.read_tls(&mut incoming)?;
                if let Err(e) = session.process_new_packets() {
                    // Tell the peer why (a TLS alert) before giving up.
                    let _ = flush_records(&mut session, &half.sock);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                if incoming.is_empty() {
                    break;
                }
            }
            flush_records(&mut session, &half.sock)?;
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(sock) => retry_interrupted(|| (&**sock).write(buf)),
            Conn::Tls(half) => {
                let mut session = half.lock();
                let n = session.writer().write(buf)?;
                flush_records(&mut session, &half.sock)?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(sock) => (&**sock).flush(),
            Conn::Tls(half) => {
                let mut session = half.lock();
                session.writer().flush()?;
                flush_records(&mut session, &half.sock)
            }
        }
    }
}

/// An address to connect to in order to wake a listener bound to `addr`.
pub fn wake_addr(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}
