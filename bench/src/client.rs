//! One benchmark WebSocket client connection, split like the server's: the
//! reading side is a tungstenite `WebSocket` whose writes go nowhere once
//! the handshake is done, and every write (requests, sends, pongs) goes
//! through one [`Writer`] behind a mutex, so the scheduler thread and the
//! connection's reader thread can both send without interleaving frames.
//! A connection may come from a loopback address of its own (127.0.0.2 and
//! up), as another machine would, and may read at a set pace.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parlor::net::retry_interrupted;
use serde_json::{Value, json};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Bytes, Message, Utf8Bytes, WebSocket};

/// How long the synchronous phases (log-in, history requests) wait for a
/// reply before giving up.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
}

/// A socket whose calls are repeated when a signal interrupts them: Linux
/// fails a blocking call on a socket with a timeout with EINTR even when the
/// process was only stopped and continued (signal(7)), and tungstenite
/// treats that as a broken connection.
struct Socket(TcpStream);

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        retry_interrupted(|| self.0.read(buf))
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        retry_interrupted(|| self.0.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The socket as the reading `WebSocket` sees it: writes reach the socket
/// only during the handshake; afterwards the [`Writer`] sends everything,
/// and tungstenite's automatic pong replies are dropped here (the reader
/// sends its own through the writer).
pub struct ReadHalf {
    stream: Socket,
    discard_writes: bool,
    pace: Option<Pace>,
}

/// A reading speed: after each read of n bytes, no read for n /
/// `bytes_per_s` seconds, so a pause of the sender is never made up with a
/// burst.
struct Pace {
    bytes_per_s: u64,
    next: Instant,
    read: u64,
}

/// Bytes one paced read takes at most, so the pace is even.
const PACED_CHUNK: usize = 4096;

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(pace) = &mut self.pace else {
            return self.stream.read(buf);
        };
        std::thread::sleep(pace.next.saturating_duration_since(Instant::now()));
        let n = buf.len().min(PACED_CHUNK);
        let got = self.stream.read(&mut buf[..n])?;
        pace.read += got as u64;
        pace.next = Instant::now() + Duration::from_secs_f64(got as f64 / pace.bytes_per_s as f64);
        Ok(got)
    }
}

impl Write for ReadHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.discard_writes {
            Ok(buf.len())
        } else {
            self.stream.write(buf)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.discard_writes {
            Ok(())
        } else {
            self.stream.flush()
        }
    }
}

/// The only thing that writes to a connection's socket after the handshake.
pub struct Writer {
    ctx: WebSocketContext,
    stream: Socket,
}

impl Writer {
    /// Writes one text frame and flushes it to the socket.
    pub fn text(&mut self, text: String) -> tungstenite::Result<()> {
        self.ctx
            .write(&mut self.stream, Message::Text(Utf8Bytes::from(text)))?;
        self.ctx.flush(&mut self.stream)
    }

    pub fn pong(&mut self, payload: Bytes) -> tungstenite::Result<()> {
        self.ctx.write(&mut self.stream, Message::Pong(payload))?;
        self.ctx.flush(&mut self.stream)
    }
}

/// A shared handle on a connection's writer.
pub type SharedWriter = Arc<Mutex<Writer>>;

/// Writes a text frame through a shared writer.
pub fn write_text(writer: &SharedWriter, text: String) -> Result<(), String> {
    writer
        .lock()
        .map_err(|_| "a writer panicked".to_string())?
        .text(text)
        .map_err(|e| e.to_string())
}

/// Ends a connection from our side: both directions of the socket, so a
/// reader blocked on it wakes up.
pub fn hang_up(writer: &SharedWriter) {
    if let Ok(w) = writer.lock() {
        let _ = w.stream.0.shutdown(Shutdown::Both);
    }
}

/// What one read produced.
pub enum Frame {
    Text(Utf8Bytes),
    Closed(String),
}

pub struct Conn {
    pub ws: WebSocket<ReadHalf>,
    pub writer: SharedWriter,
    next_req: u64,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        Conn::over(stream, addr, REPLY_TIMEOUT)
    }

    /// Connects from the local address `from` (on Linux any 127.x.y.z is
    /// this machine), as a client on another machine would, so limits per
    /// address apply to it; the handshake may take `handshake_timeout`.
    pub fn connect_from(
        addr: SocketAddr,
        from: IpAddr,
        handshake_timeout: Duration,
    ) -> Result<Conn, String> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .map_err(|e| format!("socket: {e}"))?;
        socket
            .bind(&SocketAddr::new(from, 0).into())
            .map_err(|e| format!("bind {from}: {e}"))?;
        socket
            .connect(&addr.into())
            .map_err(|e| format!("connect {addr} from {from}: {e}"))?;
        Conn::over(socket.into(), addr, handshake_timeout)
    }

    fn over(
        stream: TcpStream,
        addr: SocketAddr,
        handshake_timeout: Duration,
    ) -> Result<Conn, String> {
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(handshake_timeout)))
            .map_err(|e| format!("socket setup: {e}"))?;
        let write_stream = stream
            .try_clone()
            .map_err(|e| format!("socket clone: {e}"))?;
        let read_half = ReadHalf {
            stream: Socket(stream),
            discard_writes: false,
            pace: None,
        };
        let (mut ws, _) = tungstenite::client::client_with_config(
            format!("ws://{addr}/"),
            read_half,
            Some(ws_config()),
        )
        .map_err(|e| format!("WebSocket handshake with {addr}: {e}"))?;
        ws.get_mut().discard_writes = true;
        ws.get_ref()
            .stream
            .0
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| format!("socket setup: {e}"))?;
        let writer = Writer {
            ctx: WebSocketContext::new(Role::Client, Some(ws_config())),
            stream: Socket(write_stream),
        };
        Ok(Conn {
            ws,
            writer: Arc::new(Mutex::new(writer)),
            next_req: 0,
        })
    }

    /// A second handle on the socket, to end the connection from another
    /// thread (`shutdown`) while this one may be blocked on it.
    pub fn socket(&self) -> io::Result<TcpStream> {
        self.ws.get_ref().stream.0.try_clone()
    }

    /// From now on reads take in at most `bytes_per_s`, as over a slow
    /// link: what the server sends waits in its buffers meanwhile. A read
    /// then returns only once a whole frame is in, however long that takes
    /// (shut the socket down to end it sooner).
    pub fn pace_reads(&mut self, bytes_per_s: u64) {
        self.ws.get_mut().pace = Some(Pace {
            bytes_per_s: bytes_per_s.max(1),
            next: Instant::now(),
            read: 0,
        });
    }

    /// Bytes read since [`Conn::pace_reads`], frames not yet complete
    /// included.
    pub fn paced_bytes(&self) -> u64 {
        self.ws.get_ref().pace.as_ref().map_or(0, |p| p.read)
    }

    /// Sets how long one read may block (None: forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.ws.get_ref().stream.0.set_read_timeout(timeout)
    }

    /// Reads the next text frame, answering pings on the way. A timeout is
    /// reported as `Ok(None)`.
    pub fn read(&mut self) -> Result<Option<Frame>, String> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => return Ok(Some(Frame::Text(text))),
                Ok(Message::Ping(payload)) => {
                    if let Ok(mut w) = self.writer.lock() {
                        let _ = w.pong(payload);
                    }
                }
                Ok(Message::Close(frame)) => {
                    let why = match frame {
                        Some(f) => format!("close {} {:?}", u16::from(f.code), f.reason.as_str()),
                        None => "close without a code".into(),
                    };
                    return Ok(Some(Frame::Closed(why)));
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(Some(Frame::Closed("closed".into())));
                }
                Err(e) => return Ok(Some(Frame::Closed(format!("error: {e}")))),
            }
        }
    }

    /// Sends a Parlor request with a fresh `req` and waits for the frame
    /// echoing it. Returns the reply and the time its frame was fully read
    /// (before parsing it, so parsing a large page is not counted).
    pub fn request(&mut self, mut frame: Value) -> Result<(Value, Instant), String> {
        self.next_req += 1;
        let req = format!("r{}", self.next_req);
        frame["req"] = json!(req);
        write_text(&self.writer, frame.to_string())?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let text = match self.read()? {
                Some(Frame::Text(text)) => text,
                Some(Frame::Closed(why)) => return Err(format!("connection ended: {why}")),
                None if Instant::now() < deadline => continue,
                None => return Err(format!("no reply to {frame} within {REPLY_TIMEOUT:?}")),
            };
            let at = Instant::now();
            // Only replies carry our req; skip the broadcasts cheaply.
            if !text.contains(&format!("\"{req}\"")) {
                continue;
            }
            let value: Value =
                serde_json::from_str(&text).map_err(|e| format!("server sent bad JSON: {e}"))?;
            if value["req"] == req.as_str() || value["ref"] == req.as_str() {
                return Ok((value, at));
            }
        }
    }

    /// Like [`Conn::request`], but an `error` reply is an `Err`.
    pub fn expect(&mut self, frame: Value, kind: &str) -> Result<(Value, Instant), String> {
        let (reply, at) = self.request(frame)?;
        if reply["type"] == kind {
            Ok((reply, at))
        } else {
            Err(format!("expected {kind}, got {reply}"))
        }
    }
}
