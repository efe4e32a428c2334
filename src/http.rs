//! The HTTP side: tiny_http serving the embedded page (`GET /`) and a health
//! check (`GET /healthz`). The page learns the WebSocket port from a
//! placeholder filled in here, and its Content-Security-Policy allows only
//! its own inline script (by per-response nonce) and the WebSocket address.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use tiny_http::{Header, Method, Request, Response};

use crate::Error;
use crate::tls::{HttpsFront, TlsConfig};

/// The whole client, embedded at build time.
const PAGE: &str = include_str!("../index.html");
const NONCE_PLACEHOLDER: &str = "__PARLOR_NONCE__";
const WS_PORT_PLACEHOLDER: &str = "__PARLOR_WS_PORT__";

/// The running HTTP listener and its `http` thread.
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    /// The public address (the HTTPS front's when there is one).
    addr: SocketAddr,
    thread: JoinHandle<()>,
    front: Option<HttpsFront>,
}

impl HttpServer {
    /// Binds `addr` and starts serving; `ws_port` is where the page's
    /// WebSocket must connect.
    /// With `tls`, tiny_http listens on loopback behind an HTTPS front on
    /// `addr`.
    pub fn start(addr: &str, ws_port: u16, tls: Option<TlsConfig>) -> Result<HttpServer, Error> {
        let bind_error = |message: String| Error::Bind {
            addr: addr.to_string(),
            message,
        };
        let public = bind_with_timeouts(addr).map_err(|e| bind_error(e.to_string()))?;
        let (listener, front) = match tls {
            None => (public, None),
            Some(tls) => {
                let backend =
                    bind_with_timeouts("127.0.0.1:0").map_err(|e| bind_error(e.to_string()))?;
                let backend_addr = backend.local_addr()?;
                (backend, Some(HttpsFront::start(public, backend_addr, tls)?))
            }
        };
        let server = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| bind_error(e.to_string()))?;
        let bound = match &front {
            Some(front) => front.addr(),
            None => server
                .server_addr()
                .to_ip()
                .expect("BUG: bound to a TCP address, not a Unix socket"),
        };
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    respond(request, bound, ws_port);
                }
            })?;
        Ok(HttpServer {
            server,
            addr: bound,
            thread,
            front,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving; the listener closes when tiny_http's accept thread
    /// notices, which dropping the last handle triggers.
    pub fn stop(self) {
        if let Some(front) = self.front {
            front.stop();
        }
        self.server.unblock();
        if self.thread.join().is_err() {
            log::error!("http thread panicked");
        }
    }
}

/// How long the server waits on a client's bytes (or for room to send its
/// own). tiny_http starts a thread per connection and reads headers with no
/// limit of its own, so this is what frees a thread held by a client that
/// sends slowly or not at all.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds a listener whose accepted sockets inherit read and write timeouts
/// (Linux copies them from the listening socket on accept).
fn bind_with_timeouts(addr: &str) -> std::io::Result<std::net::TcpListener> {
    let addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the address resolves to nothing"))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    socket.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
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
