//! The WebSocket side: the accept loop, the handshake, and each connection's
//! reader and writer threads.
//!
//! tungstenite's `WebSocket` is one `&mut` state machine, so it cannot be read
//! on one thread while written on another. Each connection therefore has two:
//! the reader owns a `WebSocket` over [`ReadHalf`], whose writes go nowhere,
//! and forwards pings and closes to the writer; the writer owns a server-role
//! `WebSocketContext` over a clone of the socket for its control frames. The
//! hub's frames arrive through the connection's [`Outbox`]: the post sends
//! them at once while the socket takes them and otherwise queues them for
//! the writer; only one of the two writes at any time.
//!
//! The reader parses and checks every text frame (see `protocol`) before the
//! hub sees it, so that work is spread over the connections' threads. It
//! hands on at most [`IN_FLIGHT`] things at a time (requests the hub has not
//! handled, pongs the writer has not sent) and stops reading until one is
//! done: a client that sends faster than it is answered is held back by TCP,
//! not queued in the server's memory, and slows only itself.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use tungstenite::error::ProtocolError;
use tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response};
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Bytes, Message, WebSocket};

use crate::admission::{Admitted, HostPolicy, OriginPolicy, SocketLimits, SocketTable};
use crate::metrics::Metrics;
use crate::net::{Acceptor, Stream};
use crate::outbox::{Outbox, Pool};
use crate::post::{CloseRequest, Route, Routes};
use crate::protocol::{BadRequest, MAX_FRAME_BYTES, parse_request};
use crate::tls::TlsConfig;
use crate::vocab::{ConnId, Event, Permit, Slot, Slots};

/// Time allowed for the opening HTTP handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After this long without hearing from a client the server pings it.
const PING_AFTER: Duration = Duration::from_secs(15);
/// A client that sends nothing (not even a pong) for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A write blocked this long means the client stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// What one connection may have in flight at once: requests the hub has not
/// yet handled, pongs and echoes its writer has not yet sent. Its reader
/// stops reading while all are out. Enough for a page's few requests to
/// overlap; few enough that a flood costs the server almost nothing to hold.
const IN_FLIGHT: usize = 8;
/// Queued frames are written in runs of about this many bytes (one TLS
/// record).
const WRITE_RUN: usize = 16 * 1024;
/// Connection threads need little stack: frames live on the heap.
const CONN_STACK: usize = 256 * 1024;

fn ws_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// What a connection's data messages are for.
#[derive(Clone)]
pub enum Handler {
    /// Parlor itself: parse and check each text frame and hand it to the
    /// hub, which hears of every connection (`Connected`/`Disconnected`);
    /// the hub's mail reaches the connection through its route.
    Hub {
        /// To the hub: one sender per connection thread; the hub's receiver
        /// ends when the hub does.
        hub_tx: Sender<Event>,
        /// The hub queue's slots, shared by every connection: a request
        /// takes one (see [`Permit`]) before it is sent on `hub_tx`.
        hub_slots: Slots,
        /// Where this connection's route is added for the post.
        routes: Routes,
        /// Counts the connection as open while its reader runs.
        metrics: Metrics,
        /// The bytes all outboxes may queue together; this connection's
        /// outbox counts its queue there.
        outboxes: Pool,
    },
    /// Conformance testing: send every message straight back, through the
    /// same reader and writer threads.
    Echo,
}

/// How the listener treats its connections.
pub struct Settings {
    /// Where messages go.
    pub handler: Handler,
    /// Speak WSS instead of WS.
    pub tls: Option<TlsConfig>,
    /// Which browser origins may connect.
    pub origins: OriginPolicy,
    /// Which `Host` names are answered.
    pub hosts: HostPolicy,
    /// Caps on open sockets.
    pub limits: SocketLimits,
    /// Largest message (and frame) accepted; larger ones close with 1009.
    pub max_message: usize,
}

impl Settings {
    /// Parlor's own settings: frames go to the hub, at most 64 KiB.
    #[allow(clippy::too_many_arguments)] // One per part a chat connection uses.
    pub fn chat(
        hub_tx: Sender<Event>,
        hub_slots: Slots,
        routes: Routes,
        outboxes: Pool,
        tls: Option<TlsConfig>,
        origins: OriginPolicy,
        hosts: HostPolicy,
        limits: SocketLimits,
        metrics: Metrics,
    ) -> Settings {
        Settings {
            handler: Handler::Hub {
                hub_tx,
                hub_slots,
                routes,
                outboxes,
                metrics,
            },
            tls,
            origins,
            hosts,
            limits,
            max_message: MAX_FRAME_BYTES,
        }
    }
}

/// The running accept loop.
pub struct Listener(Acceptor);

impl Listener {
    /// Starts the `ws-accept` thread on a bound listener.
    pub fn start(listener: TcpListener, settings: Settings) -> io::Result<Listener> {
        let table = SocketTable::new(settings.limits);
        let settings = Arc::new(settings);
        let acceptor = Acceptor::start(listener, "ws-accept", move |stream, peer| {
            accept(stream, peer, &settings, &table)
        })?;
        Ok(Listener(acceptor))
    }

    /// Where the listener listens.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// Stops accepting and frees the port.
    pub fn stop(self) {
        self.0.stop();
    }
}

/// Admits an accepted socket and starts its `conn-N-rx` thread.
fn accept(stream: TcpStream, peer: SocketAddr, settings: &Arc<Settings>, table: &SocketTable) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let Some(admitted) = table.admit(&stream, peer.ip()) else {
        log::warn!("ws: refused a connection from {peer}: too many open sockets");
        return;
    };
    let conn = ConnId(NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let settings = settings.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("conn-{}-rx", conn.0))
        .stack_size(CONN_STACK)
        .spawn(move || {
            // A connection's errors end only that connection; they are
            // logged here, once.
            match serve(conn, stream, peer, admitted, &settings) {
                Ok(()) => {}
                Err(SetupError::Socket(e)) => log::warn!("{conn}: socket setup failed: {e}"),
                Err(SetupError::Handshake(e)) => {
                    log::info!("{conn}: WebSocket handshake from {peer} failed: {e}")
                }
                Err(SetupError::Writer(e)) => {
                    log::error!("{conn}: cannot start its writer: {e}")
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("{conn}: cannot start its thread: {e}");
    }
}

/// The socket as the reader's `WebSocket` sees it: reads come from the
/// socket; writes reach it only during the handshake and are discarded after,
/// because the writer thread sends every reply (pongs and closes included).
struct ReadHalf {
    stream: Stream,
    discard_writes: bool,
    /// While set, reads fail once it passes, however slowly bytes trickle in.
    deadline: Option<Instant>,
}

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.tcp().set_read_timeout(Some(left))?;
        }
        self.stream.read(buf)
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

/// The handshake callback, before any upgrade: refuses a `Host` name Parlor
/// does not answer to with 421 (DNS rebinding), and browsers from origins
/// not allowed with 403.
struct HandshakeCheck<'a> {
    conn: ConnId,
    peer: SocketAddr,
    origins: &'a OriginPolicy,
    hosts: &'a HostPolicy,
}

impl Callback for HandshakeCheck<'_> {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
        // A Host header that is not text is no name Parlor answers to.
        let host = request
            .headers()
            .get("host")
            .map(|value| value.to_str().unwrap_or(""));
        if !self.hosts.allows(host) {
            log::warn!(
                "{}: refused a WebSocket from {} for host {host:?}; name it with --public-host",
                self.conn,
                self.peer
            );
            let mut refusal = ErrorResponse::new(Some(HostPolicy::refusal(host)));
            *refusal.status_mut() = tungstenite::http::StatusCode::MISDIRECTED_REQUEST;
            return Err(refusal);
        }
        let origin = header("origin");
        if self.origins.allows(origin, header("host")) {
            return Ok(response);
        }
        log::warn!(
            "{}: refused a WebSocket from {} with origin {origin:?}",
            self.conn,
            self.peer
        );
        let mut refusal = ErrorResponse::new(Some("This origin may not connect.\n".into()));
        *refusal.status_mut() = tungstenite::http::StatusCode::FORBIDDEN;
        Err(refusal)
    }
}

/// What the reader asks of its writer. A pong or an echo holds one of the
/// connection's slots until it is on the socket.
enum Control {
    Pong(Bytes, Slot),
    Ping,
    /// Conformance mode: send this message back.
    Echo(Message, Slot),
    /// Send this close frame (a reply to the client's, or the reason for
    /// ending the connection) and stop.
    Close(Option<CloseFrame>),
}

fn close_frame(code: CloseCode, reason: &str) -> Option<CloseFrame> {
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}

/// Why a connection ended before its reader loop began. It ends only that
/// connection; its thread logs it once.
#[derive(Debug)]
enum SetupError {
    /// Timeouts, Nagle or the TLS session could not be set up on the socket.
    Socket(io::Error),
    /// The opening handshake failed or did not finish in time (tungstenite's
    /// words; it also covers a refused Origin).
    Handshake(String),
    /// The writer thread could not be started.
    Writer(io::Error),
}

/// Runs a connection: the handshake, then the reader loop on this thread
/// and the writer on a `conn-N-tx` thread. Returns when the reader ends;
/// the writer ends the connection.
fn serve(
    conn: ConnId,
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    settings: &Settings,
) -> Result<(), SetupError> {
    stream
        .set_write_timeout(Some(WRITE_TIMEOUT))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(SetupError::Socket)?;
    let (stream, write_stream) =
        Stream::pair(stream, settings.tls.as_ref()).map_err(SetupError::Socket)?;
    let read_half = ReadHalf {
        stream,
        discard_writes: false,
        deadline: Some(Instant::now() + HANDSHAKE_TIMEOUT),
    };
    let check = HandshakeCheck {
        conn,
        peer,
        origins: &settings.origins,
        hosts: &settings.hosts,
    };
    let config = ws_config(settings.max_message);
    let mut ws = tungstenite::accept_hdr_with_config(read_half, check, Some(config))
        .map_err(|e| SetupError::Handshake(e.to_string()))?;
    // A chat socket stays evictable until its user is welcomed (the post
    // marks it then); an echo socket is in use for good once handshaken.
    let signed_in = admitted.signed_in_handle();
    if matches!(settings.handler, Handler::Echo) {
        admitted.handshake_done();
    }
    let half = ws.get_mut();
    half.discard_writes = true;
    half.deadline = None;
    half.stream
        .tcp()
        .set_read_timeout(Some(PING_AFTER))
        .map_err(SetupError::Socket)?;

    // The outbox: the post writes to a plain socket directly while it keeps
    // up, and the writer thread writes whatever had to wait.
    let direct = match &write_stream {
        Stream::Plain(sock) => Some(sock.clone()),
        Stream::Tls(_) => None,
    };
    let pool = match &settings.handler {
        Handler::Hub { outboxes, .. } => outboxes.clone(),
        // Nothing is ever pushed to an echoing connection's outbox.
        Handler::Echo => Pool::new(0),
    };
    let (outbox, woken) = Outbox::new(direct, &pool);
    // From the post (which holds the sender in the connection's route) to
    // the writer: close after the queue. The route being forgotten drops
    // the sender, which ends the writer without a close frame.
    let (close_tx, close_rx) = crossbeam_channel::unbounded();
    // The reader's requests (pong, ping, echo, close) to the writer. Holds at
    // most IN_FLIGHT pongs and echoes (each holds a slot), a ping per
    // PING_AFTER of silence until IDLE_TIMEOUT, and one close, after which
    // the reader ends. Unbounded, so that the slots it holds are given back
    // as soon as the writer ends (see `Slot`). Dropping the sender (the
    // reader ended) ends the writer.
    let (control_tx, control_rx) = crossbeam_channel::unbounded();
    // This connection's slots: requests to the hub, pongs and echoes to the
    // writer.
    let slots = Slots::new(IN_FLIGHT);
    let outbox_w = outbox.clone();
    let writer = std::thread::Builder::new()
        .name(format!("conn-{}-tx", conn.0))
        .stack_size(CONN_STACK)
        .spawn(move || {
            write_loop(
                conn,
                write_stream,
                config,
                outbox_w,
                woken,
                close_rx,
                control_rx,
            )
        })
        .map_err(SetupError::Writer)?;
    drop(writer);
    match &settings.handler {
        Handler::Hub {
            hub_tx,
            routes,
            metrics,
            ..
        } => {
            let _open = metrics.websocket_opened();
            // The route first: mail the hub sends once it hears of the
            // connection must find it.
            routes.add(
                conn,
                Route {
                    outbox,
                    close_tx,
                    signed_in,
                },
            );
            if hub_tx.send(Event::Connected { conn, peer }).is_err() {
                // The hub has stopped: the server is shutting down. The
                // close goes to the writer before its route (and so its
                // close channel) is dropped, so the 1001 is what it sees.
                let _ = control_tx.send(Control::Close(close_frame(
                    CloseCode::Away,
                    "server shutting down",
                )));
                routes.remove(conn);
                return Ok(());
            }
            read_loop(conn, &mut ws, &settings.handler, &control_tx, &slots);
            // The writer owns the end of the connection: it sends any close
            // frame and then shuts the socket down.
            let _ = hub_tx.send(Event::Disconnected { conn });
        }
        Handler::Echo => {
            read_loop(conn, &mut ws, &settings.handler, &control_tx, &slots);
            drop((outbox, close_tx));
        }
    }
    Ok(())
}

fn read_loop(
    conn: ConnId,
    ws: &mut WebSocket<ReadHalf>,
    handler: &Handler,
    control_tx: &Sender<Control>,
    slots: &Slots,
) {
    let mut last_heard = Instant::now();
    let close = |code, reason| {
        let _ = control_tx.send(Control::Close(close_frame(code, reason)));
    };
    loop {
        let message = match ws.read() {
            Ok(message) => message,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if last_heard.elapsed() >= IDLE_TIMEOUT {
                    log::info!("{conn}: silent for {IDLE_TIMEOUT:?}; closing");
                    return close(CloseCode::Policy, "idle for too long");
                }
                let _ = control_tx.send(Control::Ping);
                continue;
            }
            Err(e) => {
                match e {
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
                    | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                    }
                    tungstenite::Error::Capacity(_) => {
                        log::warn!("{conn}: message over the size limit; closing");
                        close(CloseCode::Size, "message too big");
                    }
                    tungstenite::Error::Utf8(_) => {
                        log::warn!("{conn}: invalid UTF-8 in a text frame; closing");
                        close(CloseCode::Invalid, "invalid UTF-8");
                    }
                    tungstenite::Error::Protocol(p) => {
                        log::info!("{conn}: WebSocket protocol error: {p}");
                        close(CloseCode::Protocol, "protocol error");
                    }
                    other => log::debug!("{conn}: read ended: {other}"),
                }
                return;
            }
        };
        last_heard = Instant::now();
        let event = match (message, handler) {
            (Message::Ping(payload), _) => {
                // Waits while IN_FLIGHT pongs and requests are out: a client
                // that floods pings is read no faster than it is answered.
                let _ = control_tx.send(Control::Pong(payload, slots.take()));
                continue;
            }
            (Message::Pong(_) | Message::Frame(_), _) => continue,
            // tungstenite has already replaced a close code that may not be
            // sent with 1002; echoing the frame completes the handshake.
            (Message::Close(frame), _) => {
                let _ = control_tx.send(Control::Close(frame));
                return;
            }
            (message, Handler::Echo) => {
                let _ = control_tx.send(Control::Echo(message, slots.take()));
                continue;
            }
            (Message::Text(text), Handler::Hub { hub_slots, .. }) => {
                let request = parse_request(&text).map(|request| request.check());
                // Waits while this connection has IN_FLIGHT things out, then
                // while the hub's queue is full.
                let permit = Permit::take(slots, hub_slots);
                match request {
                    Ok(request) => Event::Request {
                        conn,
                        request,
                        permit,
                    },
                    Err(error) => Event::BadFrame {
                        conn,
                        error,
                        permit,
                    },
                }
            }
            (Message::Binary(_), Handler::Hub { hub_slots, .. }) => Event::BadFrame {
                conn,
                error: BadRequest {
                    req: None,
                    message: "Binary frames are not supported; send JSON text frames.".into(),
                },
                permit: Permit::take(slots, hub_slots),
            },
        };
        if let Handler::Hub { hub_tx, .. } = handler
            && hub_tx.send(event).is_err()
        {
            return close(CloseCode::Away, "server shutting down");
        }
    }
}

/// The only code that writes to a connection's socket once it is open,
/// besides the post's direct sends (see [`Outbox`]): frames that had to
/// wait, and the connection's control frames.
fn write_loop(
    conn: ConnId,
    mut stream: Stream,
    config: WebSocketConfig,
    outbox: Outbox,
    woken: Receiver<()>,
    close_rx: Receiver<CloseRequest>,
    control_rx: Receiver<Control>,
) {
    let mut ctx = WebSocketContext::new(Role::Server, Some(config));
    let result = (|| -> tungstenite::Result<()> {
        loop {
            select! {
                // `woken` never disconnects: this thread holds the outbox.
                recv(woken) -> _ => {}
                recv(close_rx) -> request => {
                    // The post has closed the outbox; what it queued before
                    // goes out first (at least the rest of a frame already
                    // begun, so the close frame does not land inside it).
                    outbox.claim();
                    write_queued(&outbox, &mut stream, true)?;
                    let frame = match request {
                        Ok(CloseRequest { code, reason }) => close_frame(code.into(), &reason),
                        // The hub forgot this connection because its reader
                        // ended. A reader that ends on a protocol error
                        // queues its close (1002, 1007, 1009, ...) before the
                        // hub hears of the end, so it is waiting here; but
                        // `select!` picks at random among ready channels and
                        // may wake on this one first.
                        Err(_) => reader_close(&control_rx),
                    };
                    return close_with(&mut ctx, &mut stream, frame);
                },
                recv(control_rx) -> control => {
                    // Queued frames first, keeping the socket: a frame may
                    // be partly on the wire already.
                    outbox.claim();
                    write_queued(&outbox, &mut stream, true)?;
                    // A pong's or an echo's slot is given back once it is
                    // on the socket, after the flush.
                    let _slot = match control {
                        Ok(Control::Pong(payload, slot)) => {
                            ctx.write(&mut stream, Message::Pong(payload))?;
                            Some(slot)
                        }
                        Ok(Control::Ping) => {
                            ctx.write(&mut stream, Message::Ping(Bytes::new()))?;
                            None
                        }
                        Ok(Control::Echo(message, slot)) => {
                            ctx.write(&mut stream, message)?;
                            Some(slot)
                        }
                        Ok(Control::Close(frame)) => return close_with(&mut ctx, &mut stream, frame),
                        // The reader is gone; the hub forgets it next.
                        Err(_) => return close_with(&mut ctx, &mut stream, None),
                    };
                    ctx.flush(&mut stream)?;
                },
            }
            write_queued(&outbox, &mut stream, false)?;
        }
    })();
    outbox.close(true);
    match result {
        Ok(()) | Err(tungstenite::Error::ConnectionClosed) => {}
        Err(e) => log::debug!("{conn}: write ended: {e}"),
    }
    stream.shutdown(Shutdown::Both);
}

/// The close frame the reader asked for, if it asked for one; any pongs or
/// pings queued before it no longer matter.
fn reader_close(control_rx: &Receiver<Control>) -> Option<CloseFrame> {
    control_rx.try_iter().find_map(|control| match control {
        Control::Close(frame) => Some(frame),
        _ => None,
    })?
}

/// Writes out the outbox's queue. Once it is empty the socket is released
/// to direct sends again, unless `keep_claim` (the writer has a control
/// frame of its own to send next).
fn write_queued(outbox: &Outbox, stream: &mut Stream, keep_claim: bool) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let run = outbox.next_run(WRITE_RUN, keep_claim);
        if run.is_empty() {
            return stream.flush();
        }
        buf.clear();
        for (frame, from) in &run {
            buf.extend_from_slice(&frame.bytes()[*from..]);
        }
        stream.write_all(&buf)?;
        outbox.written_n(run.len());
    }
}

/// Sends a close frame (when there is one) and half-closes the socket so the
/// client sees the end of the stream.
fn close_with(
    ctx: &mut WebSocketContext,
    stream: &mut Stream,
    frame: Option<CloseFrame>,
) -> tungstenite::Result<()> {
    match ctx.close(stream, frame) {
        Ok(()) | Err(tungstenite::Error::ConnectionClosed) => {}
        Err(e) => return Err(e),
    }
    stream.shutdown(Shutdown::Write);
    Ok(())
}
