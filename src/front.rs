//! The bounded front of the page port: accepts public HTTP connections with
//! timeouts and a cap (oldest dropped first), terminates TLS when asked, and
//! relays each connection's bytes to tiny_http on loopback.
//!
//! tiny_http starts a thread for every connection and reads headers with no
//! time or size limit, and a read timeout on its listening socket would end
//! its accept loop; so the public socket is accepted here instead.
//!
//! tiny_http therefore sees every request come from 127.0.0.1. Who is really
//! behind a request matters for `/metrics` (loopback only by default), so
//! the front keeps [`Peers`]: for each relayed connection, the address of
//! its own socket to tiny_http (which tiny_http reports as the request's
//! remote address), and the client's. The front writes nothing into the
//! stream (tiny_http would not parse a PROXY line), and no header a client
//! can send (`X-Forwarded-For`) is believed.

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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
    peers: Peers,
}

/// The client behind each relayed connection, by the local address of the
/// relay's socket to tiny_http. An entry is made after connecting to
/// tiny_http and before the first byte is relayed, so tiny_http cannot have
/// read a request on that connection before its entry exists; it is removed
/// when the relay ends (see [`PeerEntry`]). So the table holds at most one
/// entry per relay thread: it is bounded by the front's connection cap.
///
/// A connection missing from the table is unknown: one that reached
/// tiny_http's loopback port without the front (another local process), or
/// whose relay has already ended and whose reply could go nowhere anyway.
/// Callers treat unknown as not allowed. Ports are not reused while an
/// entry lives: the relay's socket holds its port until the entry is gone.
#[derive(Clone, Default)]
pub struct Peers(Arc<Mutex<HashMap<SocketAddr, SocketAddr>>>);

impl Peers {
    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, SocketAddr>> {
        self.0
            .lock()
            .expect("BUG: no thread panics while holding the peers table")
    }

    /// The client behind the connection tiny_http saw coming from `relay`.
    pub fn client(&self, relay: SocketAddr) -> Option<SocketAddr> {
        self.lock().get(&relay).copied()
    }

    /// Records `client` behind `relay` until the entry is dropped.
    fn enter(&self, relay: SocketAddr, client: SocketAddr) -> PeerEntry {
        self.lock().insert(relay, client);
        PeerEntry {
            peers: self.clone(),
            relay,
        }
    }
}

/// A relayed connection's entry in [`Peers`], removed on drop.
struct PeerEntry {
    peers: Peers,
    relay: SocketAddr,
}

impl Drop for PeerEntry {
    fn drop(&mut self) {
        self.peers.lock().remove(&self.relay);
    }
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
        let peers = Peers::default();
        let relays = peers.clone();
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
                    let (tls, peers) = (tls.clone(), relays.clone());
                    let spawned = std::thread::Builder::new()
                        .name("http-conn".into())
                        .stack_size(128 * 1024)
                        .spawn(move || {
                            if let Err(e) = relay(sock, peer, backend, tls.as_ref(), &peers) {
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
            peers,
        })
    }

    /// Who is behind each relayed connection.
    pub fn peers(&self) -> Peers {
        self.peers.clone()
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
/// answers back on another, until either side ends or times out; `peers`
/// knows `client` is behind it meanwhile.
fn relay(
    sock: TcpStream,
    client: SocketAddr,
    backend: SocketAddr,
    tls: Option<&TlsConfig>,
    peers: &Peers,
) -> std::io::Result<()> {
    sock.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    sock.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    let (mut from_client, mut to_client) = Stream::pair(sock, tls)?;
    let mut to_backend = TcpStream::connect(backend)?;
    let _entry = peers.enter(to_backend.local_addr()?, client);
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
