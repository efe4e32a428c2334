//! The bounded front of the page port: accepts public HTTP connections with
//! timeouts and a cap (oldest dropped first), terminates TLS when asked, and
//! relays each connection's bytes to tiny_http on loopback.
//!
//! tiny_http starts a thread for every connection and reads headers with no
//! time or size limit, and a read timeout on its listening socket would end
//! its accept loop; so the public socket is accepted here instead.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::admission::{SocketLimits, SocketTable};
use crate::net::{Stream, wake_listener};
use crate::tls::TlsConfig;

/// How long the front waits on a client's bytes (or for room to send).
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP connections relayed at once; when full, the oldest is dropped.
const MAX_HTTP_CONNECTIONS: usize = 64;

/// The public listener and its `http-accept` thread.
pub struct Front {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Front {
    /// Starts relaying connections accepted on `listener` to `backend`.
    pub fn start(
        listener: TcpListener,
        backend: SocketAddr,
        tls: Option<TlsConfig>,
    ) -> std::io::Result<Front> {
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = stopping.clone();
        let table = SocketTable::new(SocketLimits {
            total: MAX_HTTP_CONNECTIONS,
            per_ip: MAX_HTTP_CONNECTIONS,
            handshaking: MAX_HTTP_CONNECTIONS,
        });
        let thread = std::thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || {
                for sock in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(sock) = sock else {
                        // Out of file descriptors and the like: do not spin.
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    let Ok(peer) = sock.peer_addr() else { continue };
                    // Never marked done: any HTTP connection may be dropped
                    // to make room, oldest first.
                    let Some(admitted) = table.admit(&sock, peer.ip()) else {
                        continue;
                    };
                    let tls = tls.clone();
                    let spawned = std::thread::Builder::new()
                        .name("http-conn".into())
                        .stack_size(128 * 1024)
                        .spawn(move || {
                            if let Err(e) = relay(sock, backend, tls.as_ref()) {
                                log::debug!("http: connection from {peer} ended: {e}");
                            }
                            drop(admitted);
                        });
                    if spawned.is_err() {
                        log::error!("http: cannot start a connection thread");
                    }
                }
            })?;
        Ok(Front {
            addr,
            stopping,
            thread,
        })
    }

    /// Where the public listener listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and frees the port.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        wake_listener(self.addr);
        if self.thread.join().is_err() {
            log::error!("http-accept thread panicked");
        }
    }
}

/// Copies the client's bytes to tiny_http on this thread and tiny_http's
/// answers back on another, until either side ends or times out.
fn relay(sock: TcpStream, backend: SocketAddr, tls: Option<&TlsConfig>) -> std::io::Result<()> {
    sock.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    sock.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    let (mut from_client, mut to_client) = Stream::pair(sock, tls)?;
    let mut to_backend = TcpStream::connect(backend)?;
    let mut from_backend = to_backend.try_clone()?;
    let back = std::thread::Builder::new()
        .name("http-back".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let _ = std::io::copy(&mut from_backend, &mut to_client);
            to_client.shutdown(Shutdown::Both);
        })?;
    let _ = std::io::copy(&mut from_client, &mut to_backend);
    let _ = to_backend.shutdown(Shutdown::Both);
    let _ = back.join();
    Ok(())
}
