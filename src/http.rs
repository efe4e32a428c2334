//! The HTTP side: tiny_http serving the embedded page (`GET /`) and a health
//! check (`GET /healthz`), behind a front that bounds slow clients and speaks
//! TLS when asked. The page learns the WebSocket port from a
//! placeholder filled in here, and its Content-Security-Policy allows only
//! its own inline script (by per-response nonce) and the WebSocket address.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tiny_http::{Header, Method, Request, Response};

use crate::Error;
use crate::admission::{SocketLimits, SocketTable};
use crate::tls::{Conn, TlsConfig, wake_addr};

/// The whole client, embedded at build time.
const PAGE: &str = include_str!("../index.html");
const NONCE_PLACEHOLDER: &str = "__PARLOR_NONCE__";
const WS_PORT_PLACEHOLDER: &str = "__PARLOR_WS_PORT__";

/// The running HTTP side: the public front, and tiny_http behind it on
/// loopback with its `http` thread.
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    thread: JoinHandle<()>,
    front: Front,
}

impl HttpServer {
    /// Binds `addr` and starts serving; `ws_port` is where the page's
    /// WebSocket must connect. With `tls` the front speaks HTTPS.
    pub fn start(addr: &str, ws_port: u16, tls: Option<TlsConfig>) -> Result<HttpServer, Error> {
        let bind_error = |message: String| Error::Bind {
            addr: addr.to_string(),
            message,
        };
        let public = TcpListener::bind(addr).map_err(|e| bind_error(e.to_string()))?;
        let server =
            tiny_http::Server::http("127.0.0.1:0").map_err(|e| bind_error(e.to_string()))?;
        let backend = server
            .server_addr()
            .to_ip()
            .expect("BUG: bound to a TCP address, not a Unix socket");
        let front = Front::start(public, backend, tls)?;
        let public_addr = front.addr;
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    respond(request, public_addr, ws_port);
                }
            })?;
        Ok(HttpServer {
            server,
            thread,
            front,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.front.addr
    }

    /// Stops serving: the front stops accepting and frees the port, then
    /// tiny_http stops.
    pub fn stop(self) {
        self.front.stop();
        self.server.unblock();
        if self.thread.join().is_err() {
            log::error!("http thread panicked");
        }
    }
}

/// How long the front waits on a client's bytes (or for room to send).
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP connections relayed at once; when full, the oldest is dropped.
const MAX_HTTP_CONNECTIONS: usize = 64;

/// The public listener. tiny_http starts a thread for every connection and
/// reads headers with no time or size limit, and a read timeout on its
/// listening socket would end its accept loop; so the public socket is
/// accepted here, with timeouts and a cap (oldest connection dropped first),
/// and its bytes relayed to tiny_http on loopback, decrypted first when TLS
/// is on.
struct Front {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Front {
    fn start(
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

    fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1));
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
    let (mut from_client, mut to_client) = match tls {
        Some(tls) => tls.accept(&sock)?,
        None => (
            Conn::Plain(Arc::new(sock.try_clone()?)),
            Conn::Plain(Arc::new(sock)),
        ),
    };
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

fn respond(request: Request, bound: SocketAddr, ws_port: u16) {
    let response = match (request.method(), request.url()) {
        (Method::Get | Method::Head, "/") => {
            let host = request_host(&request).unwrap_or_else(|| bound.ip().to_string());
            page(&host, ws_port)
        }
        (Method::Get | Method::Head, "/healthz") => Response::from_string(r#"{"status":"ok"}"#)
            .with_header(header("Content-Type", "application/json")),
        (Method::Get | Method::Head, _) => Response::from_string("Not found\n")
            .with_status_code(404)
            .with_header(header("Content-Type", "text/plain; charset=utf-8")),
        _ => Response::from_string("Method not allowed\n")
            .with_status_code(405)
            .with_header(header("Allow", "GET, HEAD"))
            .with_header(header("Content-Type", "text/plain; charset=utf-8")),
    };
    let response = response
        .with_header(header("X-Content-Type-Options", "nosniff"))
        .with_header(header("Referrer-Policy", "no-referrer"));
    if let Err(e) = request.respond(response) {
        log::debug!("http: could not send a response: {e}");
    }
}

fn page(host: &str, ws_port: u16) -> Response<std::io::Cursor<Vec<u8>>> {
    let nonce = crate::random::token();
    let body = PAGE
        .replace(NONCE_PLACEHOLDER, &nonce)
        .replace(WS_PORT_PLACEHOLDER, &ws_port.to_string());
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         img-src 'self' data:; connect-src ws://{host}:{ws_port} wss://{host}:{ws_port}; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    Response::from_string(body)
        .with_header(header("Content-Type", "text/html; charset=utf-8"))
        .with_header(header("Content-Security-Policy", &csp))
        .with_header(header("Cache-Control", "no-store"))
}

/// The host name the browser used to reach us, from the `Host` header, if it
/// is a plain host name or IP literal (it goes into a header we send).
fn request_host(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Host"))?
        .value
        .as_str();
    host_name(value).map(str::to_string)
}

fn host_name(host_header: &str) -> Option<&str> {
    let name = if host_header.starts_with('[') {
        &host_header[..=host_header.find(']')?]
    } else {
        host_header.split(':').next()?
    };
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    ok.then_some(name)
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("BUG: header names and values here are ASCII without newlines")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_from_host_headers() {
        assert_eq!(host_name("127.0.0.1:8080"), Some("127.0.0.1"));
        assert_eq!(host_name("chat.example.org"), Some("chat.example.org"));
        assert_eq!(host_name("[::1]:8080"), Some("[::1]"));
        assert_eq!(host_name("evil.example; script-src *"), None);
        assert_eq!(host_name(""), None);
        assert_eq!(host_name("[::1"), None);
    }

    #[test]
    fn the_page_has_its_placeholders() {
        assert!(PAGE.contains(NONCE_PLACEHOLDER));
        assert!(PAGE.contains(WS_PORT_PLACEHOLDER));
    }
}
