//! The HTTP side: the page with its security headers and the WebSocket port
//! filled in, the health check, and refusals for everything else.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::{Retry, TestServer};

/// Sends one HTTP/1.0 request and returns (status, headers, body).
fn fetch(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .expect("a blank line ends the headers");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

#[test]
fn the_page_is_served_with_a_strict_policy_naming_the_websocket() {
    let server = TestServer::start();
    let port = server.ws_addr().port();
    let (status, headers, body) = fetch(server.http_addr(), "GET", "/", "chat.example.org:8080");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
    assert_eq!(header(&headers, "referrer-policy"), "no-referrer");
    let csp = header(&headers, "content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(
        csp.contains(&format!("connect-src ws://chat.example.org:{port}")),
        "{csp}"
    );
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    assert!(nonce.len() >= 16);
    assert!(
        body.contains(&format!("nonce=\"{nonce}\"")),
        "the script carries the nonce"
    );
    assert!(
        body.contains(&format!("content=\"{port}\"")),
        "the page learns the WebSocket port"
    );
    assert!(!body.contains("__PARLOR_"), "every placeholder is filled");

    // A fresh nonce per response.
    let (_, again, _) = fetch(server.http_addr(), "GET", "/", "127.0.0.1");
    assert_ne!(header(&again, "content-security-policy"), csp);
    // A hostile Host header cannot inject into the policy.
    let (_, hostile, _) = fetch(server.http_addr(), "GET", "/", "x; script-src *");
    assert!(!header(&hostile, "content-security-policy").contains("script-src *"));
}

#[test]
fn health_check_404_and_405() {
    let server = TestServer::start();
    let (status, headers, body) = fetch(server.http_addr(), "GET", "/healthz", "localhost");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), "application/json");
    assert_eq!(body, r#"{"status":"ok"}"#);
    assert_eq!(
        fetch(server.http_addr(), "GET", "/nope", "localhost").0,
        404
    );
    assert_eq!(
        fetch(
            server.http_addr(),
            "GET",
            "/index.html/../../etc/passwd",
            "localhost"
        )
        .0,
        404
    );
    assert_eq!(fetch(server.http_addr(), "POST", "/", "localhost").0, 405);
    assert_eq!(
        fetch(server.http_addr(), "DELETE", "/healthz", "localhost").0,
        405
    );
}

#[test]
fn the_page_keeps_being_served_after_the_listener_sat_idle() {
    let server = TestServer::start();
    assert_eq!(fetch(server.http_addr(), "GET", "/", "localhost").0, 200);
    // Longer than every socket timeout of the HTTP side: a connection that
    // sends nothing is closed once the server's read timeout fires, and the
    // listener has been idle at least as long since it accepted it.
    let mut idle = TcpStream::connect(server.http_addr()).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set timeout");
    match Retry(&mut idle).read_to_end(&mut Vec::new()) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server did not close an idle connection within 30 s: {e}"),
    }
    assert_eq!(fetch(server.http_addr(), "GET", "/", "localhost").0, 200);
    assert_eq!(
        fetch(server.http_addr(), "GET", "/healthz", "localhost").0,
        200
    );
}
