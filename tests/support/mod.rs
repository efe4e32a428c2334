//! Shared helpers for the integration tests: a server on port 0 with a
//! temporary database, the built `parlor` binary as a child process, and a
//! blocking WebSocket client that waits for frames with a timeout instead of
//! sleeping.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use parlor::net::retry_interrupted as retry;
pub use parlor::protocol::now_ms;
use parlor::{Config, Server};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// A stream whose calls are repeated when a signal interrupts them: Linux
/// fails a blocking call on a socket with a timeout with EINTR when the
/// process is stopped and continued, which is no reason to fail a test.
pub struct Retry<S>(pub S);

impl<S: std::io::Read> std::io::Read for Retry<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        retry(|| self.0.read(buf))
    }
}

impl<S: std::io::Write> std::io::Write for Retry<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        retry(|| self.0.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        retry(|| self.0.flush())
    }
}

/// How long a test waits for a frame before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// A fresh directory under the system's temporary directory, removed with
/// everything in it when dropped; `tag` names it, for whoever looks there
/// while a test runs.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("parlor-test-{tag}-"))
            .tempdir()
            .expect("create a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Where a test's database goes.
    pub fn db(&self) -> PathBuf {
        self.path().join("parlor.db")
    }
}

/// How the tests configure a server: both ports chosen by the system.
/// The test servers' configuration: the defaults, but with the request
/// budgets raised, since every test client comes from 127.0.0.1 and many
/// tests make more requests and names than a person would. The budgets
/// themselves are tested with their defaults (`protocol::budgets`).
fn config(db: &Path) -> Config {
    Config {
        http_addr: "127.0.0.1:0".into(),
        ws_addr: "127.0.0.1:0".into(),
        db_path: db.to_path_buf(),
        requests_per_second: 100_000,
        request_burst: 100_000,
        new_users_per_ip_per_hour: 100_000,
        ..Config::default()
    }
}

/// A server in this process with its own temporary database.
pub struct TestServer {
    pub server: Option<Server>,
    pub dir: TempDir,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_in(TempDir::new("server"), tweak)
    }

    /// A server on the database in `dir`, which the test may have prepared.
    pub fn start_in(dir: TempDir, tweak: impl FnOnce(&mut Config)) -> TestServer {
        Self::try_start_in(dir, tweak).expect("server starts")
    }

    /// A server on the database in `dir`, or the error that stopped it.
    pub fn try_start_in(
        dir: TempDir,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<TestServer, Box<dyn std::error::Error>> {
        let mut config = config(&dir.db());
        tweak(&mut config);
        let server = parlor::start(config)?;
        Ok(TestServer {
            server: Some(server),
            dir,
        })
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.server.as_ref().expect("running").ws_addr()
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.server.as_ref().expect("running").http_addr()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.ws_addr())
    }

    /// Connects and signs in as `name`.
    pub fn login(&self, name: &str) -> Client {
        let mut client = self.connect();
        let welcome = client.hello(name);
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client
    }

    /// Connects, signs in and joins `room`.
    pub fn login_in(&self, name: &str, room: &str) -> Client {
        let mut client = self.login(name);
        let joined = client.join(room);
        assert_eq!(joined["type"], "joined", "{joined}");
        client
    }

    /// The URL a person opens in a browser.
    pub fn url(&self) -> String {
        self.server.as_ref().expect("running").url()
    }

    /// Stops the server (keeping the database) and starts it again on the
    /// same file.
    pub fn restart(&mut self) {
        self.stop();
        let server = parlor::start(config(&self.dir.db())).expect("server restarts");
        self.server = Some(server);
    }

    /// Stops the server if it is running and starts it again on the same
    /// file and on these addresses (the ones it had), retrying the bind for
    /// up to 2 s while the old sockets are let go.
    pub fn restart_on(&mut self, http: SocketAddr, ws: SocketAddr) {
        self.stop();
        let mut config = config(&self.dir.db());
        config.http_addr = http.to_string();
        config.ws_addr = ws.to_string();
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match parlor::start(config.clone()) {
                Ok(server) => {
                    self.server = Some(server);
                    return;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("cannot restart on the same ports: {e}"),
            }
        }
    }

    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The built `parlor` binary.
pub const PARLOR: &str = env!("CARGO_BIN_EXE_parlor");

/// A `parlor` child process on ports chosen by the system, killed (if still
/// running) when dropped. Its stdout is closed once it has printed where it
/// listens: it logs to stderr, which goes nowhere.
pub struct Running {
    pub child: Child,
    pub ws: SocketAddr,
}

impl Running {
    /// Starts `parlor` on the database `db`, logging warnings only, with
    /// `extra` arguments after those, and waits for its start-up line.
    pub fn start(db: &Path, extra: &[&str]) -> Running {
        let mut child = Command::new(PARLOR)
            .args([
                "--http",
                "127.0.0.1:0",
                "--ws",
                "127.0.0.1:0",
                "--log-level",
                "warn",
                "--db",
            ])
            .arg(db)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start parlor");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the start-up line");
        let ws = line
            .split("ws://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok());
        match ws {
            Some(ws) => Running { child, ws },
            None => {
                let _ = child.kill();
                let status = child.wait().expect("reap");
                panic!("parlor {extra:?} did not start ({status}); it printed {line:?}")
            }
        }
    }

    /// SIGKILL: no shutdown, no checkpoint, whatever is in flight.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Sends the signal `name` (`TERM`, `STOP`, ...) with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed: {status}");
    }

    /// The exit status, once the process has exited; fails the test if that
    /// takes longer than `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                return exit;
            }
            assert!(
                Instant::now() < deadline,
                "parlor has not exited within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking WebSocket client speaking Parlor's JSON frames.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    /// Frames read while waiting for another one, in arrival order.
    pub backlog: Vec<Value>,
    next_id: u64,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        Client::over(stream, addr).expect("handshake")
    }

    /// Connects from a loopback address of its own (127.0.0.2 and up), as
    /// another machine would; Err if the server refused the WebSocket.
    pub fn connect_from(from: &str, addr: SocketAddr) -> Result<Client, String> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a socket");
        let from: SocketAddr = format!("{from}:0").parse().expect("an IPv4 address");
        socket
            .bind(&from.into())
            .expect("bind the client's address");
        socket.connect(&addr.into()).map_err(|e| e.to_string())?;
        Client::over(socket.into(), addr)
    }

    fn over(stream: TcpStream, addr: SocketAddr) -> Result<Client, String> {
        let (ws, _) =
            tungstenite::client(format!("ws://{addr}/"), stream).map_err(|e| e.to_string())?;
        // Short reads from here on, so waiting for a frame can time out; set
        // after the handshake, which a timeout would interrupt.
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set timeout");
        Ok(Client {
            ws,
            backlog: Vec::new(),
            next_id: 0,
        })
    }

    /// Whether the server has closed this socket (without waiting).
    pub fn is_closed(&mut self) -> bool {
        self.ws
            .get_ref()
            .set_nonblocking(true)
            .expect("non-blocking");
        let closed = match self.ws.read() {
            Ok(Message::Close(_)) => true,
            Ok(_) => false,
            Err(tungstenite::Error::Io(e)) => e.kind() != std::io::ErrorKind::WouldBlock,
            Err(_) => true,
        };
        self.ws
            .get_ref()
            .set_nonblocking(false)
            .expect("blocking again");
        closed
    }

    pub fn send_json(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .expect("send frame");
    }

    pub fn send_raw(&mut self, message: Message) {
        self.ws.send(message).expect("send frame");
    }

    /// Reads the next frame off the socket, or None on timeout.
    fn read_frame(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).expect("server sends JSON"));
                }
                Ok(Message::Close(frame)) => {
                    return Some(json!({
                        "type": "__close",
                        "code": frame.as_ref().map(|f| u16::from(f.code)),
                        "reason": frame.as_ref().map(|f| f.reason.to_string()),
                    }));
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
                Err(e) => {
                    return Some(json!({"type": "__closed", "error": e.to_string()}));
                }
            }
        }
    }

    /// Waits for the first frame (from the backlog or the socket) matching
    /// `pred`; frames that do not match are kept in the backlog.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.try_wait_for(WAIT, &pred)
            .unwrap_or_else(|| panic!("timed out waiting for {what}; backlog: {:?}", self.backlog))
    }

    pub fn try_wait_for(&mut self, wait: Duration, pred: &dyn Fn(&Value) -> bool) -> Option<Value> {
        if let Some(i) = self.backlog.iter().position(pred) {
            return Some(self.backlog.remove(i));
        }
        let deadline = Instant::now() + wait;
        while let Some(frame) = self.read_frame(deadline) {
            if pred(&frame) {
                return Some(frame);
            }
            let closed = frame["type"] == "__closed";
            self.backlog.push(frame);
            if closed {
                return None;
            }
        }
        None
    }

    /// Waits for a frame of this type.
    pub fn expect(&mut self, kind: &str) -> Value {
        self.wait_for(kind, |f| f["type"] == kind)
    }

    /// Sends a request with a fresh `req` and waits for the frame that
    /// echoes it (as `req`, or as `ref` on an error).
    pub fn request(&mut self, mut frame: Value) -> Value {
        self.next_id += 1;
        let req = format!("r{}", self.next_id);
        frame["req"] = json!(req);
        self.send_json(frame);
        self.wait_for(&format!("reply to {req}"), |f| {
            f["req"] == req || f["ref"] == req
        })
    }

    pub fn hello(&mut self, name: &str) -> Value {
        self.request(json!({"type": "hello", "username": name}))
    }

    /// Says hello until it is welcomed, tolerating the error `while_code`
    /// (the hub may not have processed an earlier disconnect yet).
    pub fn hello_retrying(&mut self, name: &str, while_code: &str) -> Value {
        for _ in 0..200 {
            let reply = self.hello(name);
            if reply["type"] == "welcome" {
                return reply;
            }
            assert_error(&reply, while_code);
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{name} was never welcomed");
    }

    pub fn join(&mut self, room: &str) -> Value {
        self.request(json!({"type": "join", "room": room}))
    }

    /// Sends a message now and returns the reply (an ack or an error).
    pub fn say(&mut self, id: &str, text: &str) -> Value {
        self.request(json!({"type": "send", "id": id, "text": text, "ts": now_ms()}))
    }

    /// Asserts that no frame matching `pred` arrives within `wait`.
    pub fn assert_none(&mut self, wait: Duration, what: &str, pred: impl Fn(&Value) -> bool) {
        if let Some(frame) = self.try_wait_for(wait, &pred) {
            panic!("unexpected {what}: {frame}");
        }
    }

    /// Drops everything received so far.
    pub fn clear(&mut self) {
        while self
            .try_wait_for(Duration::from_millis(50), &|_| false)
            .is_some()
        {}
        self.backlog.clear();
    }
}

/// Asserts an error frame with this code.
pub fn assert_error(frame: &Value, code: &str) {
    assert_eq!(frame["type"], "error", "expected error {code}, got {frame}");
    assert_eq!(frame["code"], code, "{frame}");
    assert!(
        frame["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {frame}"
    );
}
