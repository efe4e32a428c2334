//! The HTTP side: the page with its security headers and the WebSocket port
//! filled in, the health check, refusals for everything else, and the
//! bounds on request heads.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

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
    let server = TestServer::start_with(|c| c.public_hosts = vec!["chat.example.org".into()]);
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
    // A hostile Host header cannot inject into the policy: it gets no page.
    let (status, hostile, _) = fetch(server.http_addr(), "GET", "/", "x; script-src *");
    assert_eq!(status, 421);
    assert!(!hostile.iter().any(|(k, _)| k == "content-security-policy"));
}

#[test]
fn the_page_under_a_name_parlor_does_not_answer_to_gets_421() {
    // On all interfaces, as on a LAN: a rebinding site's name points at
    // this address, and the browser sends that name.
    let server = TestServer::start_with(|c| {
        c.http_addr = "0.0.0.0:0".into();
        c.ws_addr = "0.0.0.0:0".into();
        c.public_hosts = vec!["chat.lan".into()];
    });
    let addr = format!("127.0.0.1:{}", server.http_addr().port())
        .parse()
        .unwrap();
    let (status, headers, body) = fetch(addr, "GET", "/", "rebind.attacker.example:8080");
    assert_eq!(status, 421);
    assert_eq!(
        header(&headers, "content-type"),
        "text/plain; charset=utf-8"
    );
    assert_eq!(
        body,
        "Parlor does not answer to the name rebind.attacker.example; \
         if that is its name, start it with --public-host rebind.attacker.example\n"
    );
    assert_eq!(
        fetch(addr, "GET", "/healthz", "rebind.attacker.example").0,
        421
    );
    for host in [
        "127.0.0.1:8080",
        "192.168.1.5:8080",
        "[::1]:8080",
        "localhost:8080",
        "chat.lan:8080",
        "CHAT.LAN.",
    ] {
        assert_eq!(fetch(addr, "GET", "/", host).0, 200, "{host}");
    }
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

/// Reads everything until the server closes (a reset after its answer
/// counts as closing), failing the test if that takes longer than `within`.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    stream.set_read_timeout(Some(within)).expect("set timeout");
    let started = Instant::now();
    let mut raw = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match Retry(&mut *stream).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("not closed within {within:?} ({e}); read {raw:?}"),
        }
        assert!(started.elapsed() < within, "not closed within {within:?}");
    }
    String::from_utf8_lossy(&raw).into_owned()
}

/// The status codes of the responses in `raw`, in order.
fn statuses(raw: &str) -> Vec<u16> {
    raw.match_indices("HTTP/1.")
        .filter_map(|(i, _)| raw[i..].split(' ').nth(1)?.parse().ok())
        .collect()
}

#[test]
fn an_endless_header_gets_431_and_the_connection_closes() {
    let server = TestServer::start();
    let mut stream = TcpStream::connect(server.http_addr()).expect("connect");
    let mut writer = stream.try_clone().expect("clone");
    // Up to 64 MiB of one header line, written until the server stops
    // taking it.
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Endless: ");
        let chunk = vec![b'a'; 64 * 1024];
        (0..1024)
            .take_while(|_| writer.write_all(&chunk).is_ok())
            .count()
            * chunk.len()
    });
    let answer = read_until_closed(&mut stream, Duration::from_secs(10));
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer:?}"
    );
    assert!(answer.ends_with("The request's headers are over 16 KiB.\n"));
    drop(stream);
    let sent = sender.join().expect("the sender ends");
    assert!(sent < 64 << 20, "the server read all {sent} bytes");
}

#[test]
fn keep_alive_requests_are_each_bounded_and_answered_in_order() {
    let server = TestServer::start();
    let mut stream = TcpStream::connect(server.http_addr()).expect("connect");
    let get = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let post = "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\r\nbody";
    let big = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    // Written in one go: the requests arrive together, and the over-long
    // head after them is answered after theirs.
    stream
        .write_all(format!("{get}{post}{get}{big}").as_bytes())
        .expect("send");
    let answer = read_until_closed(&mut stream, Duration::from_secs(10));
    assert_eq!(statuses(&answer), [200, 405, 200, 431], "{answer}");
}

#[test]
fn request_bodies_whose_end_is_unclear_are_refused() {
    let server = TestServer::start();
    let send = |request: &str| {
        let mut stream = TcpStream::connect(server.http_addr()).expect("connect");
        stream.write_all(request.as_bytes()).expect("send");
        statuses(&read_until_closed(&mut stream, Duration::from_secs(10)))
    };
    assert_eq!(
        send(
            "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nbody"
        ),
        [400]
    );
    assert_eq!(
        send("POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4, 40\r\n\r\nbody"),
        [400]
    );
    assert_eq!(
        send(
            "POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"
        ),
        [501]
    );
    assert_eq!(
        send("POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n\r\n"),
        [413]
    );
    // The same length twice is one length.
    assert_eq!(
        send(
            "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody"
        ),
        [405]
    );
}

#[test]
fn a_head_trickled_in_gets_408_within_the_request_deadline() {
    let server = TestServer::start();
    let mut stream = TcpStream::connect(server.http_addr()).expect("connect");
    let mut writer = stream.try_clone().expect("clone");
    // A byte every 200 ms never lets the 5 s silence timeout fire.
    let started = Instant::now();
    let trickle = std::thread::spawn(move || {
        let head = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
        let mut bytes = head.iter().chain(std::iter::repeat(&b'a'));
        while started.elapsed() < Duration::from_secs(30)
            && writer.write_all(&[*bytes.next().expect("endless")]).is_ok()
        {
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let answer = read_until_closed(&mut stream, Duration::from_secs(20));
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(took < Duration::from_secs(15), "closed after {took:?}");
    drop(stream);
    trickle.join().expect("the trickle ends");
}
