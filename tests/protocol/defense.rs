//! Parlor under hostile or broken clients: foreign origins, slow HTTP
//! clients, WebSocket protocol violations, a client that stops reading, and
//! database file permissions. Floods, which measure the whole process, are
//! in `tests/floods.rs`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::{Bytes, Message};

use crate::support::{Client, Retry, TempDir, TestServer, now_ms};
use parlor::Config;

/// Attempts a WebSocket handshake with this Origin; Ok(()) if upgraded,
/// Err(status) if refused.
fn handshake_with_origin(server: &TestServer, origin: &str) -> Result<(), u16> {
    handshake(server, None, origin)
}

/// Attempts a WebSocket handshake with this Origin and this `Host` header
/// (None: the address connected to).
fn handshake(server: &TestServer, host: Option<&str>, origin: &str) -> Result<(), u16> {
    let addr = server.ws_addr();
    let mut request = format!("ws://{addr}/").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", origin.parse().unwrap());
    if let Some(host) = host {
        request.headers_mut().insert("Host", host.parse().unwrap());
    }
    let stream = TcpStream::connect(addr).unwrap();
    match tungstenite::client(request, stream) {
        Ok(_) => Ok(()),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

#[test]
fn browsers_from_other_origins_are_refused_with_403() {
    let server = TestServer::start();
    let page = server.http_addr().port();
    assert_eq!(
        handshake_with_origin(&server, "http://evil.example"),
        Err(403)
    );
    let lookalike = format!("http://127.0.0.1:{page}.evil.example");
    assert_eq!(handshake_with_origin(&server, &lookalike), Err(403));
    assert_eq!(
        handshake_with_origin(&server, "http://127.0.0.1:1"),
        Err(403)
    );
    for own in [
        format!("http://127.0.0.1:{page}"),
        format!("http://localhost:{page}"),
        format!("http://[::1]:{page}"),
    ] {
        assert_eq!(handshake_with_origin(&server, &own), Ok(()), "{own}");
    }
}

#[test]
fn allow_origin_adds_exact_origins() {
    let server =
        TestServer::start_with(|c| c.allow_origins = vec!["https://chat.example.org".into()]);
    assert_eq!(
        handshake_with_origin(&server, "https://chat.example.org"),
        Ok(())
    );
    assert_eq!(
        handshake_with_origin(&server, "https://chat.example.org.evil"),
        Err(403)
    );
}

#[test]
fn websockets_for_names_parlor_does_not_answer_to_get_421() {
    // On all interfaces, where a page's origin only has to match the host
    // the WebSocket was asked for: a rebinding site's name matches itself.
    let server = TestServer::start_with(|c| {
        c.http_addr = "0.0.0.0:0".into();
        c.ws_addr = "0.0.0.0:0".into();
        c.public_hosts = vec!["chat.lan".into()];
    });
    let (page, ws) = (server.http_addr().port(), server.ws_addr().port());
    let rebound = format!("rebind.attacker.example:{ws}");
    let attacker = format!("http://rebind.attacker.example:{page}");
    assert_eq!(handshake(&server, Some(&rebound), &attacker), Err(421));
    for (host, origin) in [
        (format!("chat.lan:{ws}"), format!("http://chat.lan:{page}")),
        (
            format!("192.168.1.5:{ws}"),
            format!("http://192.168.1.5:{page}"),
        ),
        (
            format!("localhost:{ws}"),
            format!("http://localhost:{page}"),
        ),
        (format!("[::1]:{ws}"), format!("http://[::1]:{page}")),
    ] {
        assert_eq!(handshake(&server, Some(&host), &origin), Ok(()), "{host}");
    }
    // A client that is not a browser sends a Host as well, and is held to it.
    let mut request = format!("ws://127.0.0.1:{ws}/")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Host", "rebind.attacker.example".parse().unwrap());
    let stream = TcpStream::connect(server.ws_addr()).unwrap();
    match tungstenite::client(request, stream) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            assert_eq!(response.status().as_u16(), 421);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
            assert!(
                body.contains("--public-host rebind.attacker.example"),
                "{body}"
            );
        }
        other => panic!("not refused: {:?}", other.map(|_| ())),
    }

    // Names given with --allow-origin are answered too (behind a proxy).
    let proxied =
        TestServer::start_with(|c| c.allow_origins = vec!["https://chat.example.org".into()]);
    assert_eq!(
        handshake(
            &proxied,
            Some("chat.example.org"),
            "https://chat.example.org"
        ),
        Ok(())
    );
    assert_eq!(
        handshake(
            &proxied,
            Some("rebind.attacker.example"),
            "https://chat.example.org"
        ),
        Err(421)
    );
}

#[test]
fn slow_http_clients_cannot_hold_the_page_hostage() {
    let server = TestServer::start();
    let addr = server.http_addr();
    let mut half_sent: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    let mut huge = TcpStream::connect(addr).unwrap();
    huge.write_all(b"GET / HTTP/1.1\r\nX-Huge: ").unwrap();
    let _ = huge.write_all(&vec![b'a'; 1024 * 1024]);

    let mut page = TcpStream::connect(addr).unwrap();
    page.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    page.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.0 200"),
        "{}",
        &body[..body.len().min(80)]
    );
    // And it came while stalled requests were still held (the oldest may
    // have been let go to make room), not once the server had given up on
    // all of them after its 10 s for a request head.
    let still_held = half_sent.iter_mut().any(|stalled| {
        stalled.set_nonblocking(true).unwrap();
        let held = matches!(
            stalled.read(&mut [0u8; 1]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        );
        stalled.set_nonblocking(false).unwrap();
        held
    });
    assert!(
        still_held,
        "the page came only after every stalled request was dropped"
    );

    // The server lets go of clients that stall, instead of keeping a thread
    // for each of them for ever: also the newest.
    let stalled = half_sent.last_mut().expect("200 of them");
    stalled
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = [0u8; 256];
    let closed = match Retry(stalled).read(&mut buf) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "a stalled request was never dropped");
}

fn wait_close(client: &mut Client) -> serde_json::Value {
    client.wait_for("close", |f| {
        f["type"] == "__close" || f["type"] == "__closed"
    })
}

#[test]
fn protocol_violations_close_with_the_right_code_and_others_carry_on() {
    let server = TestServer::start();
    let mut bystander = server.login_in("bystander", "general");

    let mut bad_utf8 = server.login("u1");
    bad_utf8.send_raw(Message::Frame(Frame::message(
        Bytes::from_static(&[0xff, 0xfe, 0x22]),
        OpCode::Data(Data::Text),
        true,
    )));
    assert_eq!(wait_close(&mut bad_utf8)["code"], 1007);

    let mut reserved_bits = server.login("u2");
    let mut frame = Frame::message(Bytes::from_static(b"{}"), OpCode::Data(Data::Text), true);
    frame.header_mut().rsv1 = true;
    reserved_bits.send_raw(Message::Frame(frame));
    assert_eq!(wait_close(&mut reserved_bits)["code"], 1002);

    let mut fragmented = server.login("u3");
    let chunk = Bytes::from(vec![b' '; 20 * 1024]);
    fragmented.send_raw(Message::Frame(Frame::message(
        chunk.clone(),
        OpCode::Data(Data::Text),
        false,
    )));
    for _ in 0..4 {
        fragmented.send_raw(Message::Frame(Frame::message(
            chunk.clone(),
            OpCode::Data(Data::Continue),
            false,
        )));
    }
    assert_eq!(wait_close(&mut fragmented)["code"], 1009);

    assert_eq!(bystander.say("ok", "unaffected")["type"], "ack");
}

#[test]
fn a_client_that_stops_reading_is_cut_off_without_slowing_the_sender() {
    // The stuck client's session ends as it is cut off, not after a grace
    // period for its page to come back.
    let server = TestServer::start_with(|c| {
        c.messages_per_second = 1_000_000;
        c.presence_grace = Duration::ZERO;
    });
    let stuck = server.login_in("stuck", "general");
    let mut sender = server.login_in("sender", "general");
    sender.clear();
    let text = "x".repeat(4000);
    let mut sent_at = std::collections::HashMap::new();
    let mut worst = Duration::ZERO;
    let mut stuck_left = false;
    let (total, window) = (10_000, 64);
    let mut acked = 0;
    let mut next = 0;
    while acked < total {
        while next < total && next - acked < window {
            sender.send_json(
                json!({"type": "send", "id": format!("m{next}"), "text": text, "ts": now_ms()}),
            );
            sent_at.insert(format!("m{next}"), Instant::now());
            next += 1;
        }
        let frame = sender.wait_for("ack", |f| {
            f["type"] == "ack" || f["type"] == "error" || f["type"] == "presence"
        });
        match frame["type"].as_str() {
            Some("ack") => {
                worst = worst.max(sent_at[frame["id"].as_str().unwrap()].elapsed());
                acked += 1;
            }
            Some("presence") => {
                assert_eq!(
                    (frame["user"].as_str(), frame["state"].as_str()),
                    (Some("stuck"), Some("left"))
                );
                stuck_left = true;
            }
            _ => panic!("{frame}"),
        }
        // Drop the echoes of our own messages as we go.
        sender.backlog.retain(|f| f["type"] != "message");
    }
    assert!(stuck_left, "the stuck client was never disconnected");
    assert!(worst < Duration::from_secs(1), "an ack took {worst:?}");
    drop(stuck);
}

#[cfg(unix)]
#[test]
fn database_files_are_private_even_if_they_were_not() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("perms");
    let db = dir.db();
    std::fs::write(&db, b"").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut server = TestServer::start_in(dir, |_| {});
    let mut client = Client::connect(server.ws_addr());
    client.hello("alice");
    client.join("general");
    client.say("m", "written to the WAL");
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", db.display());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{path}");
    }
    server.stop();
}

/// How a connection that broke the protocol before saying hello ended: the
/// close frame's code, or None when the connection ended without one.
fn close_code_before_hello(server: &TestServer, frame: Frame) -> Option<u16> {
    let mut client = Client::connect(server.ws_addr());
    // The frame may be refused before it is all read; the close is what
    // counts, whatever became of the rest.
    let _ = client.ws.send(Message::Frame(frame));
    let end = wait_close(&mut client);
    end["code"].as_u64().map(|c| c as u16)
}

#[test]
fn every_close_code_arrives_every_time() {
    let server = TestServer::start();
    let tries = 40;
    let count = |make: &dyn Fn() -> Frame, code: u16| {
        (0..tries)
            .filter(|_| close_code_before_hello(&server, make()) == Some(code))
            .count()
    };
    let bad_utf8 = || {
        Frame::message(
            Bytes::from_static(&[0xff, 0xfe, 0x22]),
            OpCode::Data(Data::Text),
            true,
        )
    };
    let reserved_opcode = || {
        let mut frame = Frame::message(Bytes::from_static(b"{}"), OpCode::Data(Data::Text), true);
        frame.header_mut().opcode = OpCode::Data(Data::Reserved(3));
        frame
    };
    let oversized = || {
        Frame::message(
            Bytes::from(vec![b' '; 65 * 1024]),
            OpCode::Data(Data::Text),
            true,
        )
    };
    let counts = [
        count(&bad_utf8, 1007),
        count(&reserved_opcode, 1002),
        count(&oversized, 1009),
    ];
    assert_eq!(
        counts, [tries; 3],
        "closes with 1007, 1002, 1009 out of {tries}"
    );
}

/// Case 5 of a crowd of idle sockets: two addresses hold every WebSocket the
/// server allows (28 each, the per-address cap), handshaken but never saying
/// hello, and reopen any that is closed. A person from a third address must
/// still get in.
#[test]
fn idle_handshaken_sockets_from_two_addresses_cannot_keep_a_person_out() {
    // Each round's person leaves for good: their seat is free at once.
    let server = TestServer::start_with(|c| c.presence_grace = Duration::ZERO);
    let addr = server.ws_addr();
    let per_ip = Config::default().max_users * 2 + 8;
    let mut crowds: Vec<(&str, Vec<Client>)> = vec![("127.0.0.2", vec![]), ("127.0.0.3", vec![])];
    let mut welcomed = 0;
    for round in 0..25 {
        // The crowds top themselves up to their cap.
        for (ip, sockets) in &mut crowds {
            sockets.retain_mut(|s| !s.is_closed());
            while sockets.len() < per_ip {
                match Client::connect_from(ip, addr) {
                    Ok(socket) => sockets.push(socket),
                    Err(_) => break,
                }
            }
        }
        let Ok(mut person) = Client::connect_from("127.0.0.4", addr) else {
            continue;
        };
        if person.hello(&format!("person{round}"))["type"] == "welcome" {
            welcomed += 1;
        }
    }
    assert!(welcomed >= 24, "a person got in {welcomed} times in 25");
}
