//! The vocabulary the hub, the post and the connections share: who a
//! connection is ([`ConnId`]), what the hub hears ([`Event`]), what it asks
//! of connections ([`Mail`]) and where that mail goes ([`MailSink`]).
//!
//! A leaf module: it names no socket and no thread, so the hub can speak it
//! without touching either.

use std::net::SocketAddr;

use crate::frame::Frame;
use crate::protocol::CheckedRequest;

/// A connection's number, unique for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn {}", self.0)
    }
}

/// WebSocket close codes the hub asks connections to send.
pub mod close {
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// No hello in time, or the client fell too far behind.
    pub const POLICY: u16 = 1008;
    /// The session was resumed by another connection.
    pub const REPLACED: u16 = 4001;
}

/// Everything the hub hears about, from connection threads and the post.
#[derive(Debug)]
pub enum Event {
    /// A WebSocket handshake completed; mail to `conn` reaches it from now
    /// on.
    Connected { conn: ConnId, peer: SocketAddr },
    /// A well-formed request, its stateless rules checked.
    Request {
        conn: ConnId,
        request: CheckedRequest,
    },
    /// A text frame that is not a valid request, or a binary frame.
    BadFrame {
        conn: ConnId,
        error: crate::protocol::BadRequest,
    },
    /// The connection's reader ended: the socket is gone.
    Disconnected { conn: ConnId },
    /// The post found the connection's outbox full: the client stopped
    /// reading.
    TooSlow { conn: ConnId },
    /// Commit what is pending, close every connection with 1001 and exit.
    Shutdown,
}

/// One thing the hub asks of a connection. A batch's mail is carried out in
/// order.
#[derive(Debug, Clone)]
pub enum Mail {
    /// Send this frame.
    Frame(ConnId, Frame),
    /// Send what is queued, then close with this code and reason. The hub
    /// has forgotten the connection: nothing more goes to it.
    Close {
        conn: ConnId,
        code: u16,
        reason: String,
    },
    /// The connection's reader has ended and the hub has forgotten it:
    /// stop its writer without a close frame.
    Forget(ConnId),
    /// The connection's user has been welcomed: its socket is in use and
    /// must not be dropped to make room for newcomers.
    SignedIn(ConnId),
}

/// Where the hub hands each batch's mail: the post thread when running, a
/// `Vec` in the hub's tests.
pub trait MailSink {
    /// Takes one batch's mail, in order. May block while the previous batch
    /// is still being delivered.
    fn post(&mut self, mail: Vec<Mail>);
}

impl MailSink for Vec<Mail> {
    fn post(&mut self, mail: Vec<Mail>) {
        self.extend(mail);
    }
}
