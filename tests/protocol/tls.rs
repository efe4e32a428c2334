//! Encrypted connections: with --tls-cert/--tls-key the page is served over
//! HTTPS and people chat over WSS; a certificate made at run time stands in
//! for a real one.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use crate::support::{Retry, TempDir, TestServer, now_ms};

type TlsStream = StreamOwned<ClientConnection, Retry<TcpStream>>;

struct Secure {
    server: TestServer,
    client_config: Arc<ClientConfig>,
}

fn secure_server(dir: &TempDir) -> Secure {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let server = TestServer::start_with(|c| c.tls = Some((cert, key)));
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(certified.cert.der().to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Secure {
        server,
        client_config: Arc::new(client_config),
    }
}

fn tls_connect(config: &Arc<ClientConfig>, addr: std::net::SocketAddr) -> TlsStream {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    StreamOwned::new(
        ClientConnection::new(config.clone(), name).unwrap(),
        Retry(sock),
    )
}

fn ws_connect(secure: &Secure) -> WebSocket<TlsStream> {
    let addr = secure.server.ws_addr();
    let stream = tls_connect(&secure.client_config, addr);
    let url = format!("wss://localhost:{}/", addr.port());
    tungstenite::client(url, stream).expect("WSS handshake").0
}

fn next(ws: &mut WebSocket<TlsStream>, kind: &str) -> Value {
    loop {
        if let Message::Text(text) = ws.read().expect("read a frame") {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == kind {
                return frame;
            }
        }
    }
}

fn send(ws: &mut WebSocket<TlsStream>, frame: Value) {
    ws.send(Message::text(frame.to_string())).unwrap();
}

#[test]
fn people_chat_over_wss() {
    let dir = TempDir::new("tls-chat");
    let secure = secure_server(&dir);
    let mut alice = ws_connect(&secure);
    let mut bob = ws_connect(&secure);
    for (ws, name) in [(&mut alice, "alice"), (&mut bob, "bob")] {
        send(ws, json!({"type": "hello", "username": name}));
        assert_eq!(next(ws, "welcome")["username"], name);
        send(ws, json!({"type": "join", "room": "general"}));
        next(ws, "joined");
    }
    // The longest message allowed, in two-byte characters.
    let text = "é".repeat(4000);
    send(
        &mut alice,
        json!({"type": "send", "id": "s1", "text": text, "ts": now_ms()}),
    );
    assert_eq!(next(&mut alice, "ack")["id"], "s1");
    let message = next(&mut bob, "message");
    assert_eq!(message["text"], text);
    assert_eq!(message["from"], "alice");
}

#[test]
fn the_page_is_served_over_https_and_plain_http_is_not_spoken() {
    let dir = TempDir::new("tls-page");
    let secure = secure_server(&dir);
    let addr = secure.server.http_addr();
    let mut stream = tls_connect(&secure.client_config, addr);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "{}",
        &response[..response.len().min(200)]
    );
    assert!(response.contains(&format!(
        "wss://localhost:{}",
        secure.server.ws_addr().port()
    )));

    // A plain-text request gets no page.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("<html"),
        "plain HTTP served the page"
    );
}

#[test]
fn a_bad_certificate_file_stops_start_up_with_a_clear_error() {
    let dir = TempDir::new("tls-bad");
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let key = dir.path().join("missing-key.pem");
    let err = TestServer::try_start_in(dir, |c| c.tls = Some((cert, key)))
        .err()
        .expect("start-up fails")
        .to_string();
    assert!(err.contains("cert.pem"), "{err}");
}

#[test]
fn an_over_long_header_over_https_gets_431() {
    let dir = TempDir::new("tls-long-head");
    let secure = secure_server(&dir);
    let mut stream = tls_connect(&secure.client_config, secure.server.http_addr());
    // The bound holds on the decrypted bytes: 40 KiB of one header.
    let head = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Long: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 431 "),
        "{}",
        &response[..response.len().min(200)]
    );
}
