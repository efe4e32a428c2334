//! What one batch says to connections: replies, broadcasts and closes, kept
//! in order as [`Mail`] until the batch ends and the hub hands it to its
//! sink; and what the hub tells the operator, as [`Metrics`], since every
//! handler is given this.

use std::time::Duration;

use crate::frame::Frame;
use crate::metrics::Metrics;
use crate::protocol::{ErrorCode, ServerFrame};
use crate::vocab::{ConnId, Mail, PageJob};

/// Who a reply goes to and what it echoes.
pub(super) struct To<'a> {
    pub conn: ConnId,
    pub req: Option<&'a str>,
}

/// The batch's mail, in the order it was said.
pub(super) struct Outgoing {
    pub mail: Vec<Mail>,
    /// The server's metrics.
    pub metrics: Metrics,
    /// Bytes of the frames in `mail`, each counted whole for each recipient,
    /// as the outboxes count them.
    pub bytes: usize,
}

impl Outgoing {
    pub fn new(metrics: Metrics) -> Outgoing {
        Outgoing {
            mail: Vec::new(),
            metrics,
            bytes: 0,
        }
    }

    /// A frame already encoded for several recipients.
    pub fn frame(&mut self, conn: ConnId, frame: Frame) {
        self.bytes += frame.bytes().len();
        self.mail.push(Mail::Frame(conn, frame));
    }

    /// The batch's mail, leaving none.
    pub fn take(&mut self) -> Vec<Mail> {
        self.bytes = 0;
        std::mem::take(&mut self.mail)
    }

    /// A direct reply, echoing the request's `req`.
    pub fn reply(&mut self, to: &To, frame: &ServerFrame) {
        let text = frame.encode(to.req);
        self.frame(to.conn, Frame::text(&text));
    }

    pub fn error(&mut self, to: &To, code: ErrorCode, message: impl Into<String>) {
        self.reply(to, &ServerFrame::error(code, message));
    }

    pub fn no_such_room(&mut self, to: &To, typed: &str) {
        let message = format!("There is no room named {typed}.");
        self.error(to, ErrorCode::NoSuchRoom, message);
    }

    pub fn rate_limited(&mut self, to: &To, message: String, wait: Duration) {
        let frame = ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message,
            // Rounded up: after this long, the request goes through.
            retry_after_ms: Some(wait.as_nanos().div_ceil(1_000_000).max(1) as u64),
        };
        self.reply(to, &frame);
    }

    /// Logs a failed storage call and tells the requester.
    pub fn storage_failed(&mut self, to: &To, what: &str, e: &rusqlite::Error) {
        log::error!("storage: {what} failed for {}: {e}", to.conn);
        self.metrics.storage_error();
        self.reply(to, &ServerFrame::storage_error());
    }

    /// Closes a connection the hub has forgotten.
    pub fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        self.mail.push(Mail::Close {
            conn,
            code,
            reason: reason.to_string(),
        });
    }

    /// Marks a connection as signed in (see `Mail::SignedIn`).
    pub fn signed_in(&mut self, conn: ConnId) {
        self.mail.push(Mail::SignedIn(conn));
    }

    /// A history page for the page builder to read and send.
    pub fn page(&mut self, job: PageJob) {
        self.mail.push(Mail::Page(job));
    }

    /// Stops the writer of a connection whose reader has ended.
    pub fn forget(&mut self, conn: ConnId) {
        self.mail.push(Mail::Forget(conn));
    }
}

/// Encodes a frame once for many recipients (no `req`).
pub(super) fn encode(frame: &ServerFrame) -> Frame {
    Frame::text(&frame.encode(None))
}
