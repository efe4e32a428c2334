//! Requests and responses: tiny_http serving the embedded page (`GET /`),
//! a health check (`GET /healthz`) and, when asked for, the metrics
//! (`GET /metrics`) on loopback, behind the bounded relay in `front`. The
//! page learns the WebSocket port from a placeholder filled in here, and its
//! Content-Security-Policy allows only its own inline script (by
//! per-response nonce) and the WebSocket address. Only requests for a host
//! name Parlor answers to are served (see `admission::HostPolicy`).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Request, Response};

use crate::admission::HostPolicy;
use crate::error::Error;
use crate::front::{Front, Peers};
use crate::metrics::{self, Metrics, ScrapeAccess};
use crate::tls::TlsConfig;

/// The whole client, embedded at build time.
const PAGE: &str = include_str!("../index.html");
const NONCE_PLACEHOLDER: &str = "__PARLOR_NONCE__";
const WS_PORT_PLACEHOLDER: &str = "__PARLOR_WS_PORT__";

/// What the page server needs besides its fixed text: the WebSocket port
/// the page names, and the metrics it counts into and may show.
pub struct Site {
    /// Where the page's WebSocket must connect.
    pub ws_port: u16,
    /// Counts every response by status, and is what `/metrics` shows.
    pub metrics: Metrics,
    /// Who may read `/metrics`; None: it is not served (404).
    pub scrape: Option<ScrapeAccess>,
    /// The host names requests may be for.
    pub hosts: HostPolicy,
}

/// The running HTTP side: the public front, and tiny_http behind it on
/// loopback with its `http` thread.
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    thread: JoinHandle<()>,
    front: Front,
}

impl HttpServer {
    /// Binds `addr` and starts serving `site`. With `tls` the front speaks
    /// HTTPS.
    pub fn start(addr: &str, site: Site, tls: Option<TlsConfig>) -> Result<HttpServer, Error> {
        let bind_error = |source: std::io::Error| Error::Bind {
            addr: addr.to_string(),
            source,
        };
        let public = TcpListener::bind(addr).map_err(bind_error)?;
        // tiny_http's error is a boxed `dyn Error`; keep its text.
        let server = tiny_http::Server::http("127.0.0.1:0")
            .map_err(|e| bind_error(std::io::Error::other(e.to_string())))?;
        let backend = server
            .server_addr()
            .to_ip()
            .expect("BUG: bound to a TCP address, not a Unix socket");
        let front = Front::start(public, backend, tls)?;
        let public_addr = front.addr();
        let peers = front.peers();
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    respond(request, public_addr, &site, &peers);
                }
            })?;
        Ok(HttpServer {
            server,
            thread,
            front,
        })
    }

    /// Where the page is served (the front's public address).
    pub fn addr(&self) -> SocketAddr {
        self.front.addr()
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

fn respond(request: Request, bound: SocketAddr, site: &Site, peers: &Peers) {
    let host = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Host"))
        .map(|h| h.value.as_str());
    // The query string is the page's business (a join code link: `/?code=`).
    let path = request.url().split('?').next().unwrap_or_default();
    let response = match (request.method(), path) {
        _ if !site.hosts.allows(host) => {
            log::warn!("http: refused a request for host {host:?}; name it with --public-host");
            Response::from_string(HostPolicy::refusal(host))
                .with_status_code(421)
                .with_header(header("Content-Type", "text/plain; charset=utf-8"))
        }
        (Method::Get | Method::Head, "/") => {
            let host = request_host(&request).unwrap_or_else(|| bound.ip().to_string());
            page(&host, site.ws_port)
        }
        (Method::Get | Method::Head, "/healthz") => Response::from_string(r#"{"status":"ok"}"#)
            .with_header(header("Content-Type", "application/json")),
        (Method::Get | Method::Head, "/metrics") if site.scrape.is_some() => {
            let client = request.remote_addr().and_then(|relay| peers.client(*relay));
            scrape(site, client)
        }
        (Method::Get | Method::Head, _) => Response::from_string("Not found\n")
            .with_status_code(404)
            .with_header(header("Content-Type", "text/plain; charset=utf-8")),
        _ => Response::from_string("Method not allowed\n")
            .with_status_code(405)
            .with_header(header("Allow", "GET, HEAD"))
            .with_header(header("Content-Type", "text/plain; charset=utf-8")),
    };
    site.metrics.http_response(response.status_code().0);
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

/// `/metrics` for `client` (None: a connection the front did not relay, or
/// one already ended): the metrics if its address may see them, else 403.
fn scrape(site: &Site, client: Option<SocketAddr>) -> Response<std::io::Cursor<Vec<u8>>> {
    let allowed = site.scrape.as_ref().zip(client);
    if allowed.is_some_and(|(access, client)| access.allows(client.ip())) {
        return Response::from_string(site.metrics.encode())
            .with_header(header("Content-Type", metrics::CONTENT_TYPE))
            .with_header(header("Cache-Control", "no-store"));
    }
    log::debug!("http: refused /metrics to {client:?}");
    Response::from_string("Forbidden: see --metrics-from\n")
        .with_status_code(403)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
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
