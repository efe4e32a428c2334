//! Socket helpers shared by both listeners: the plain-or-TLS [`Stream`] a
//! connection's two threads read and write, the retry of calls a signal
//! interrupted, waking a blocked `accept`, and the open-file check.
//!
//! A TLS session is one state machine, but Parlor reads and writes each
//! connection on separate threads. [`Stream::Tls`] halves therefore share the
//! session behind a mutex held only for rustls calls and the socket writes of
//! whole records; the reader waits for bytes on its own socket clone without
//! holding it, so a quiet client never blocks the writer.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard};
use std::thread::JoinHandle;

use rustls::ServerConnection;

use crate::tls::{Session, TlsConfig};

/// One direction of a connection: plain TCP, or half of a TLS session.
pub enum Stream {
    /// Shared, so that a connection's outbox can send on the writer's socket
    /// without a descriptor of its own.
    Plain(Arc<TcpStream>),
    /// Half of a TLS session; the other half is the connection's other
    /// thread.
    Tls(TlsHalf),
}

/// One thread's half of a TLS connection.
pub struct TlsHalf {
    session: Session,
    sock: TcpStream,
    /// Ciphertext read from the socket (reader half only).
    raw: Vec<u8>,
}

impl Stream {
    /// The reading and the writing half of an accepted socket, speaking TLS
    /// when `tls` is given (the handshake happens on the first reads).
    pub fn pair(sock: TcpStream, tls: Option<&TlsConfig>) -> io::Result<(Stream, Stream)> {
        let Some(tls) = tls else {
            return Ok((
                Stream::Plain(Arc::new(sock.try_clone()?)),
                Stream::Plain(Arc::new(sock)),
            ));
        };
        let session = tls.session()?;
        let reader = Stream::Tls(TlsHalf {
            session: session.clone(),
            sock: sock.try_clone()?,
            raw: Vec::new(),
        });
        let writer = Stream::Tls(TlsHalf {
            session,
            sock,
            raw: Vec::new(),
        });
        Ok((reader, writer))
    }

    /// The socket underneath, for timeouts.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(sock) => sock,
            Stream::Tls(half) => &half.sock,
        }
    }

    /// Ends the connection: a TLS session first says goodbye (close_notify).
    pub fn shutdown(&mut self, how: Shutdown) {
        if let Stream::Tls(half) = self {
            let mut session = half.session.lock();
            session.send_close_notify();
            let _ = flush_records(&mut session, &half.sock);
        }
        let _ = self.tcp().shutdown(how);
    }
}

fn flush_records(
    session: &mut MutexGuard<'_, ServerConnection>,
    mut sock: &TcpStream,
) -> io::Result<()> {
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

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let half = match self {
            Stream::Plain(sock) => return retry_interrupted(|| (&**sock).read(buf)),
            Stream::Tls(half) => half,
        };
        if half.raw.is_empty() {
            half.raw.resize(16 * 1024, 0);
        }
        loop {
            {
                let mut session = half.session.lock();
                match session.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                flush_records(&mut session, &half.sock)?;
            }
            // Wait for ciphertext without holding the session.
            let n = retry_interrupted(|| half.sock.read(&mut half.raw))?;
            let mut session = half.session.lock();
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

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(sock) => retry_interrupted(|| (&**sock).write(buf)),
            Stream::Tls(half) => {
                let mut session = half.session.lock();
                let n = session.writer().write(buf)?;
                flush_records(&mut session, &half.sock)?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(sock) => (&**sock).flush(),
            Stream::Tls(half) => {
                let mut session = half.session.lock();
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

/// Wakes a listener blocked in `accept` by connecting to it once, so its
/// thread sees that it should stop.
fn wake_listener(addr: SocketAddr) {
    let _ = TcpStream::connect_timeout(&wake_addr(addr), std::time::Duration::from_secs(1));
}

/// A thread accepting on a listener and handing each socket, with its peer,
/// to `admit`, until [`Acceptor::stop`].
pub struct Acceptor {
    addr: SocketAddr,
    /// Set by `stop`; the thread checks it after each accept.
    stopping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    name: &'static str,
}

impl Acceptor {
    /// Starts the thread `name` on a bound listener.
    pub fn start(
        listener: TcpListener,
        name: &'static str,
        mut admit: impl FnMut(TcpStream, SocketAddr) + Send + 'static,
    ) -> io::Result<Acceptor> {
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = stopping.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for sock in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let sock = match sock {
                        Ok(sock) => sock,
                        Err(e) => {
                            log::warn!("{name}: accept failed: {e}");
                            // Out of file descriptors and the like: do not
                            // spin.
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            continue;
                        }
                    };
                    if let Ok(peer) = sock.peer_addr() {
                        admit(sock, peer);
                    }
                }
            })?;
        Ok(Acceptor {
            addr,
            stopping,
            thread,
            name,
        })
    }

    /// Where the listener listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and frees the port. A blocked `accept` is woken by
    /// connecting to it once.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        wake_listener(self.addr);
        if self.thread.join().is_err() {
            log::error!("{} thread panicked", self.name);
        }
    }
}

/// File descriptors one WebSocket connection holds (the reader's socket
/// and the writer's clone, which its outbox shares).
const FILES_PER_CONNECTION: u64 = 2;

/// Logs a warning when the open-file limit cannot hold `connections`
/// WebSockets (plus the page's 64 connections and the database), since
/// accepting then fails at run time. Says nothing where the limit cannot be
/// read.
pub fn warn_if_few_files(connections: usize) {
    let Ok((soft, _hard)) = rlimit::Resource::NOFILE.get() else {
        return;
    };
    let needed = files_needed(connections);
    if soft < needed {
        log::warn!(
            "the open-file limit is {soft}, but {connections} WebSockets need about {needed}; \
             raise it (ulimit -n {needed}, or LimitNOFILE={needed} under systemd) \
             or lower --max-connections"
        );
    }
}

fn files_needed(connections: usize) -> u64 {
    connections as u64 * FILES_PER_CONNECTION + 2 * 64 + 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_readable_and_the_need_grows_with_connections() {
        let (soft, hard) = rlimit::Resource::NOFILE.get().expect("read RLIMIT_NOFILE");
        assert!(soft > 0 && soft <= hard);
        assert_eq!(files_needed(1000), 2160);
        assert!(files_needed(10) < files_needed(11));
    }

    #[test]
    fn an_unspecified_address_is_woken_on_loopback() {
        let woken = wake_addr("0.0.0.0:8080".parse().unwrap());
        assert_eq!(woken, "127.0.0.1:8080".parse().unwrap());
        let woken = wake_addr("[::]:8080".parse().unwrap());
        assert_eq!(woken, "[::1]:8080".parse().unwrap());
        let specific: SocketAddr = "192.168.1.5:80".parse().unwrap();
        assert_eq!(wake_addr(specific), specific);
    }
}
