//! The bounded front of the page port: accepts public HTTP connections with
//! timeouts and a cap (oldest dropped first), terminates TLS when asked,
//! bounds every request head, and relays each connection's bytes to
//! tiny_http on loopback.
//!
//! tiny_http starts a thread for every connection and reads headers with no
//! time or size limit, and a read timeout on its listening socket would end
//! its accept loop; so the public socket is accepted here instead. The front
//! reads just enough of each request to know where it ends (the blank line
//! after its head, then `Content-Length` bytes), holds a head back until it
//! is complete and within bounds, and answers one that is not itself. It
//! frames requests the way tiny_http does (lines end with CRLF; the first
//! `Content-Length`; any `Transfer-Encoding` means chunked) and refuses
//! what the two could read differently, so both always agree on where the
//! next request begins.
//!
//! tiny_http therefore sees every request come from 127.0.0.1. Who is really
//! behind a request matters for `/metrics` (loopback only by default), so
//! the front keeps [`Peers`]: for each relayed connection, the address of
//! its own socket to tiny_http (which tiny_http reports as the request's
//! remote address), and the client's. The front writes nothing into the
//! stream (tiny_http would not parse a PROXY line), and no header a client
//! can send (`X-Forwarded-For`) is believed.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::admission::{SocketLimits, SocketTable};
use crate::net::{Acceptor, Stream};
use crate::tls::TlsConfig;

/// How long the front waits on a client's bytes (or for room to send).
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP connections relayed at once; when full, the oldest is dropped.
const MAX_HTTP_CONNECTIONS: usize = 64;
/// Most bytes of one request head (request line and headers, blank line
/// included); a longer one gets 431 and the connection closes. Protects
/// memory: tiny_http would buffer an endless header line whole.
const MAX_HEAD: usize = 16 * 1024;
/// Most bytes of one request body; a longer one gets 413. The page takes no
/// bodies (every method but GET and HEAD is refused), so this only bounds
/// what a client can make the front relay per request.
const MAX_BODY: u64 = 16 * 1024;
/// Time allowed for one request, head and body, from its first byte; past
/// it the client gets 408 and the connection closes. Protects the
/// connection's thread (and a place among the 64) from a client that
/// trickles bytes just often enough to beat `SOCKET_TIMEOUT`. Over TLS it is
/// checked between TLS records, whose size rustls bounds.
const REQUEST_TIME: Duration = Duration::from_secs(10);
/// After refusing a request, how long and how much the front keeps reading
/// (and dropping) of what the client still sends before closing: a socket
/// closed with unread bytes sends a reset, which can destroy the refusal
/// before the client has read it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;

/// The public listener and its `http-accept` thread.
pub struct Front {
    acceptor: Acceptor,
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
        let peers = Peers::default();
        let relays = peers.clone();
        let table = SocketTable::new(SocketLimits {
            total: MAX_HTTP_CONNECTIONS,
            per_ip: MAX_HTTP_CONNECTIONS,
            handshaking: MAX_HTTP_CONNECTIONS,
        });
        let acceptor = Acceptor::start(listener, "http-accept", move |sock, peer| {
            // Never marked done: any HTTP connection may be dropped to make
            // room, oldest first.
            let Some(admitted) = table.admit(&sock, peer.ip()) else {
                return;
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
        })?;
        Ok(Front { acceptor, peers })
    }

    /// Who is behind each relayed connection.
    pub fn peers(&self) -> Peers {
        self.peers.clone()
    }

    /// Where the public listener listens.
    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr()
    }

    /// Stops accepting and frees the port.
    pub fn stop(self) {
        self.acceptor.stop();
    }
}

/// Copies the client's requests to tiny_http on this thread and tiny_http's
/// answers back on another, until either side ends or times out, or the
/// front refuses a request: then tiny_http answers the requests before it,
/// the front sends its refusal and the connection closes. `peers` knows
/// `client` is behind it meanwhile.
fn relay(
    sock: TcpStream,
    client: SocketAddr,
    backend: SocketAddr,
    tls: Option<&TlsConfig>,
    peers: &Peers,
) -> io::Result<()> {
    sock.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    let (mut from_client, mut to_client) = Stream::pair(sock, tls)?;
    let mut to_backend = TcpStream::connect(backend)?;
    let _entry = peers.enter(to_backend.local_addr()?, client);
    let mut from_backend = to_backend.try_clone()?;
    // From this thread to `http-back`: a refused request's answer, sent
    // after whatever tiny_http still says. Sent before this thread ends its
    // side of the backend socket, so it is waiting when `http-back` sees
    // tiny_http close.
    let (refusal_tx, refusal_rx) = crossbeam_channel::bounded::<Refusal>(1);
    let back = std::thread::Builder::new()
        .name("http-back".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let _ = io::copy(&mut from_backend, &mut to_client);
            // tiny_http has closed, or the client stopped reading: nothing
            // more goes either way (this also frees a tiny_http thread
            // blocked writing).
            let _ = from_backend.shutdown(Shutdown::Both);
            match refusal_rx.try_recv() {
                Ok(refusal) => {
                    let _ = to_client
                        .write_all(refusal.response().as_bytes())
                        .and_then(|()| to_client.flush());
                    to_client.shutdown(Shutdown::Write);
                }
                Err(_) => to_client.shutdown(Shutdown::Both),
            }
        })?;
    let refused = forward(&mut from_client, &mut to_backend);
    match refused {
        Some(refusal) => {
            log::debug!("http: refused a request: {}", refusal.status());
            let _ = refusal_tx.send(refusal);
            // tiny_http answers what it has, reads the end and closes.
            let _ = to_backend.shutdown(Shutdown::Write);
        }
        None => {
            let _ = to_backend.shutdown(Shutdown::Both);
        }
    }
    let _ = back.join();
    if refused.is_some() {
        linger(&mut from_client);
    }
    Ok(())
}

/// Relays the client's requests to tiny_http until either side ends. Some:
/// the front refuses the request under way; every complete request before
/// it has been relayed.
fn forward(from_client: &mut Stream, to_backend: &mut TcpStream) -> Option<Refusal> {
    let mut requests = Requests::default();
    let mut buf = vec![0; 8 * 1024];
    let mut out = Vec::new();
    loop {
        let wait = match requests.deadline {
            None => SOCKET_TIMEOUT,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Some(Refusal::TooSlow);
                }
                left.min(SOCKET_TIMEOUT)
            }
        };
        from_client.tcp().set_read_timeout(Some(wait)).ok()?;
        let n = match from_client.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e)
                if requests.deadline.is_some()
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                return Some(Refusal::TooSlow);
            }
            Err(_) => return None,
        };
        out.clear();
        let fed = requests.feed(&buf[..n], Instant::now(), &mut out);
        to_backend.write_all(&out).ok()?;
        if let Err(refusal) = fed {
            return Some(refusal);
        }
    }
}

/// Reads and drops what the client still sends, until it closes, `LINGER`
/// has passed or `LINGER_BYTES` have been read.
fn linger(from_client: &mut Stream) {
    let until = Instant::now() + LINGER;
    let mut buf = vec![0; 4 * 1024];
    let mut read = 0;
    while read < LINGER_BYTES {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || from_client.tcp().set_read_timeout(Some(left)).is_err() {
            return;
        }
        match from_client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => read += n,
        }
    }
}

/// Where a client's stream of requests stands.
#[derive(Debug, Default)]
struct Requests {
    /// The head under way, held back until its blank line (at most one
    /// byte over `MAX_HEAD`).
    head: Vec<u8>,
    /// Bytes of the current body still to come.
    body_left: u64,
    /// When the request under way must be complete; None between requests.
    deadline: Option<Instant>,
}

impl Requests {
    /// Takes the client's next bytes; appends to `out` what may go on to
    /// tiny_http: whole heads, and bodies as they come. An error refuses the
    /// request under way; `out` then holds the requests before it.
    fn feed(&mut self, mut input: &[u8], now: Instant, out: &mut Vec<u8>) -> Result<(), Refusal> {
        while !input.is_empty() {
            if self.deadline.is_none() {
                self.deadline = Some(now + REQUEST_TIME);
            }
            if self.body_left > 0 {
                let n = input
                    .len()
                    .min(usize::try_from(self.body_left).unwrap_or(usize::MAX));
                out.extend_from_slice(&input[..n]);
                input = &input[n..];
                self.body_left -= n as u64;
                if self.body_left == 0 {
                    self.deadline = None;
                }
                continue;
            }
            // One byte past the limit tells a full head from too long a one;
            // the blank line may have begun in an earlier read.
            let n = input.len().min(MAX_HEAD + 1 - self.head.len());
            let from = self.head.len().saturating_sub(3);
            self.head.extend_from_slice(&input[..n]);
            let Some(at) = find(&self.head[from..], b"\r\n\r\n") else {
                if self.head.len() > MAX_HEAD {
                    return Err(Refusal::HeadTooLarge);
                }
                input = &input[n..];
                continue;
            };
            let end = from + at + 4;
            if end > MAX_HEAD {
                return Err(Refusal::HeadTooLarge);
            }
            input = &input[n - (self.head.len() - end)..];
            self.head.truncate(end);
            self.body_left = body_length(&self.head)?;
            out.append(&mut self.head);
            if self.body_left == 0 {
                self.deadline = None;
            }
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The length of the body that follows this complete head, as tiny_http
/// will read it: lines end with CRLF, a header line is trimmed and split at
/// its first colon, and a body has the first `Content-Length`'s length.
/// What the two could disagree on is refused: a `Content-Length` that is not
/// plain digits, several that differ (RFC 9112 6.3: 400), and any
/// `Transfer-Encoding` (tiny_http would read a chunked body, whose end the
/// front does not look for).
fn body_length(head: &[u8]) -> Result<u64, Refusal> {
    // A head that is not ASCII is refused by tiny_http, which then closes;
    // replacement characters keep the lines and colons where they were.
    let head = String::from_utf8_lossy(head);
    let mut length = None;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.trim().split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Refusal::Chunked);
        }
        if !name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        let value = value.trim();
        let parsed = match value.bytes().all(|b| b.is_ascii_digit()) {
            true => value.parse::<u64>().ok(),
            false => None,
        };
        match (parsed, length) {
            (None, _) => return Err(Refusal::BadLength),
            (Some(n), Some(earlier)) if n != earlier => return Err(Refusal::BadLength),
            (Some(n), _) => length = Some(n),
        }
    }
    match length {
        Some(n) if n > MAX_BODY => Err(Refusal::BodyTooLarge),
        n => Ok(n.unwrap_or(0)),
    }
}

/// A request the front answers itself, closing the connection after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The head is over `MAX_HEAD`.
    HeadTooLarge,
    /// A `Content-Length` that is not a number, or several that differ.
    BadLength,
    /// A body over `MAX_BODY`.
    BodyTooLarge,
    /// A `Transfer-Encoding`.
    Chunked,
    /// The request took longer than `REQUEST_TIME`, or fell silent.
    TooSlow,
}

impl Refusal {
    fn status(self) -> &'static str {
        match self {
            Refusal::HeadTooLarge => "431 Request Header Fields Too Large",
            Refusal::BadLength => "400 Bad Request",
            Refusal::BodyTooLarge => "413 Content Too Large",
            Refusal::Chunked => "501 Not Implemented",
            Refusal::TooSlow => "408 Request Timeout",
        }
    }

    fn response(self) -> String {
        let body = match self {
            Refusal::HeadTooLarge => "The request's headers are over 16 KiB.\n",
            Refusal::BadLength => "The request's Content-Length is not one number.\n",
            Refusal::BodyTooLarge => "The request's body is over 16 KiB.\n",
            Refusal::Chunked => "Request bodies must come with a Content-Length.\n",
            Refusal::TooSlow => "The request did not arrive within 10 seconds.\n",
        };
        format!(
            "HTTP/1.1 {}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             X-Content-Type-Options: nosniff\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            self.status(),
            body.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` one read at a time; returns what went on to tiny_http
    /// and how it ended.
    fn feed(chunks: &[&[u8]]) -> (Vec<u8>, Result<(), Refusal>) {
        let mut requests = Requests::default();
        let mut out = Vec::new();
        for chunk in chunks {
            if let Err(refusal) = requests.feed(chunk, Instant::now(), &mut out) {
                return (out, Err(refusal));
            }
        }
        (out, Ok(()))
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn heads_are_held_back_until_their_blank_line() {
        let (out, end) = feed(&[b"GET / HTTP/1.1\r\nHost: x\r", b"\n\r", b"\n"]);
        assert_eq!((out.as_slice(), end), (GET, Ok(())));
        let (out, _) = feed(&[b"GET / HTTP/1.1\r\nHost: x\r\n"]);
        assert!(out.is_empty());
        // A bare LF ends nothing for tiny_http, so it ends nothing here.
        let (out, _) = feed(&[b"GET / HTTP/1.1\nHost: x\n\n"]);
        assert!(out.is_empty());
    }

    #[test]
    fn pipelined_requests_and_bodies_keep_their_bounds() {
        let post = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let all = [GET, post.as_slice(), GET].concat();
        let (out, end) = feed(&[&all]);
        assert_eq!((out, end), (all.clone(), Ok(())));
        // The same bytes split anywhere.
        for at in 0..all.len() {
            let (out, end) = feed(&[&all[..at], &all[at..]]);
            assert_eq!((out, end), (all.clone(), Ok(())), "split at {at}");
        }
        // Body bytes are not a head: a body of CRLFs is relayed as it comes.
        let (out, end) = feed(&[b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\n", b"\r\n\r\n"]);
        assert_eq!(end, Ok(()));
        assert!(out.ends_with(b"\r\n\r\n\r\n\r\n"));
    }

    #[test]
    fn a_head_over_the_limit_is_refused_after_the_requests_before_it() {
        let mut endless = b"GET / HTTP/1.1\r\nX-Endless: ".to_vec();
        endless.resize(MAX_HEAD + 100, b'a');
        let (out, end) = feed(&[GET, &endless]);
        assert_eq!((out.as_slice(), end), (GET, Err(Refusal::HeadTooLarge)));
        // Byte by byte, the refusal comes one byte past the limit.
        let mut requests = Requests::default();
        let mut out = Vec::new();
        let refused_at = endless
            .iter()
            .position(|b| requests.feed(&[*b], Instant::now(), &mut out).is_err());
        assert_eq!(refused_at, Some(MAX_HEAD));
        // A head of exactly the limit passes.
        let mut full = b"GET / HTTP/1.1\r\nX-Full: ".to_vec();
        full.resize(MAX_HEAD - 4, b'a');
        full.extend_from_slice(b"\r\n\r\n");
        assert_eq!(feed(&[&full]), (full.clone(), Ok(())));
        full.insert(20, b'a');
        assert_eq!(feed(&[&full]).1, Err(Refusal::HeadTooLarge));
    }

    #[test]
    fn lengths_tiny_http_could_read_otherwise_are_refused() {
        let head = |headers: &str| format!("POST / HTTP/1.1\r\n{headers}\r\n\r\n").into_bytes();
        let length = |headers: &str| body_length(&head(headers));
        assert_eq!(length("Host: x"), Ok(0));
        assert_eq!(length("content-length:  12 "), Ok(12));
        assert_eq!(length("Content-Length: 3\r\nContent-Length: 3"), Ok(3));
        assert_eq!(
            length("Content-Length: 3\r\nContent-Length: 30"),
            Err(Refusal::BadLength)
        );
        for bad in ["+3", "3, 3", "-1", "", "0x10", "99999999999999999999999"] {
            assert_eq!(
                length(&format!("Content-Length: {bad}")),
                Err(Refusal::BadLength),
                "{bad}"
            );
        }
        assert_eq!(length("Transfer-Encoding: chunked"), Err(Refusal::Chunked));
        assert_eq!(
            length(&format!("Content-Length: {}", MAX_BODY + 1)),
            Err(Refusal::BodyTooLarge)
        );
        // Not a header for tiny_http either: a bare LF does not end a line.
        assert_eq!(length("X-A: b\nContent-Length: 5"), Ok(0));
    }

    #[test]
    fn the_deadline_runs_from_a_request_s_first_byte_to_its_end() {
        let mut requests = Requests::default();
        let mut out = Vec::new();
        let start = Instant::now();
        requests.feed(b"GET", start, &mut out).unwrap();
        assert_eq!(requests.deadline, Some(start + REQUEST_TIME));
        requests
            .feed(b" / HTTP/1.1\r\n\r\n", start + REQUEST_TIME / 2, &mut out)
            .unwrap();
        assert_eq!(requests.deadline, None);
        let later = start + REQUEST_TIME * 3;
        requests
            .feed(
                b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nx",
                later,
                &mut out,
            )
            .unwrap();
        assert_eq!(
            requests.deadline,
            Some(later + REQUEST_TIME),
            "body under way"
        );
        requests.feed(b"y", later, &mut out).unwrap();
        assert_eq!(requests.deadline, None);
    }

    #[test]
    fn refusals_are_whole_http_responses() {
        for refusal in [
            Refusal::HeadTooLarge,
            Refusal::BadLength,
            Refusal::BodyTooLarge,
            Refusal::Chunked,
            Refusal::TooSlow,
        ] {
            let response = refusal.response();
            let (head, body) = response.split_once("\r\n\r\n").expect("a head");
            assert!(head.starts_with(&format!("HTTP/1.1 {}\r\n", refusal.status())));
            assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
            assert!(head.ends_with("Connection: close"));
        }
    }
}
