//! The vocabulary the hub, the post and the connections share: who a
//! connection is ([`ConnId`]), what the hub hears ([`Event`]), what it asks
//! of connections ([`Mail`]) and where that mail goes ([`MailSink`]), and
//! how much may be in flight between them ([`Slots`], [`Permit`]).
//!
//! A leaf module: it names no socket and no thread, so the hub can speak it
//! without touching either.

use std::net::SocketAddr;

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::frame::Frame;
use crate::protocol::{CheckedRequest, PageQuery};
use crate::store::RoomId;

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
    /// The user signed out.
    pub const NORMAL: u16 = 1000;
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
    /// A well-formed request, its stateless rules checked. Its permit is
    /// given back when the hub has handled it and drops the event.
    Request {
        conn: ConnId,
        request: CheckedRequest,
        permit: Permit,
    },
    /// A text frame that is not a valid request, or a binary frame.
    BadFrame {
        conn: ConnId,
        error: crate::protocol::BadRequest,
        #[expect(dead_code, reason = "held, not read: given back when dropped")]
        permit: Permit,
    },
    /// The connection's reader ended: the socket is gone.
    Disconnected { conn: ConnId },
    /// The post found the connection's outbox full: the client stopped
    /// reading.
    TooSlow { conn: ConnId },
    /// A history page asked for by `conn` was built off the hub thread
    /// ([`Mail::Page`]) and is about to be sent: its `bytes` are charged to
    /// whoever asked, as the hub charges for the replies it builds itself.
    /// Sent before the page, so it reaches the hub before any request the
    /// client makes once it has read the page.
    PageSent { conn: ConnId, bytes: usize },
    /// Commit what is pending, close every connection with 1001 and exit.
    Shutdown,
}

/// A bounded number of things in flight: a [`Slot`] is taken before each
/// is handed on, waiting while all are taken, and given back when the slot
/// is dropped, wherever that happens. So a thread that sends faster than
/// the others handle waits instead of piling up memory, and whoever ends up
/// holding a slot needs no code for it: the hub gives its slots back
/// without knowing they exist.
///
/// A counting semaphore (a count under a lock, and a condition variable to
/// wait on); std has none, and a bounded channel of tokens would cost a
/// connection more than a kilobyte where this costs a few dozen bytes.
#[derive(Clone)]
pub struct Slots(Arc<Shared>);

struct Shared {
    state: Mutex<Taken>,
    /// Signalled when a slot is given back while someone waits.
    given_back: Condvar,
    count: usize,
}

#[derive(Default)]
struct Taken {
    slots: usize,
    /// Threads waiting for a slot: giving one back wakes one of them, and
    /// costs no system call when there are none.
    waiting: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Taken> {
        // Held only to change two integers, so a panic cannot leave them
        // half changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Slots {
    /// `count` slots (at least one).
    pub fn new(count: usize) -> Slots {
        Slots(Arc::new(Shared {
            state: Mutex::default(),
            given_back: Condvar::new(),
            count: count.max(1),
        }))
    }

    /// Takes a slot, waiting until one is given back if all are taken.
    pub fn take(&self) -> Slot {
        let mut taken = self.0.lock();
        while taken.slots >= self.0.count {
            taken.waiting += 1;
            taken = self
                .0
                .given_back
                .wait(taken)
                .unwrap_or_else(PoisonError::into_inner);
            taken.waiting -= 1;
        }
        taken.slots += 1;
        Slot(self.0.clone())
    }

    /// Slots taken now.
    #[cfg(test)]
    pub fn taken(&self) -> usize {
        self.0.lock().slots
    }
}

/// One of a [`Slots`]' slots, given back when dropped.
///
/// A slot must never be left in a channel that outlives its receiver, or
/// it is given back only when the channel's last sender goes, and whoever
/// waits for it waits for ever: the channels that carry slots are unbounded
/// ones (crossbeam drops what an unbounded channel holds as soon as its
/// receiver is gone, a bounded one only with its last sender), bounded
/// instead by the slots they carry.
pub struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut taken = self.0.lock();
        taken.slots -= 1;
        let wake = taken.waiting > 0;
        drop(taken);
        if wake {
            self.0.given_back.notify_one();
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

/// What a request carries on its way to the hub: a slot of its connection's
/// (a connection has only a few requests in flight) and one of the hub
/// queue's (all connections together have a bounded number waiting).
/// Dropping the event that holds it gives both back.
#[derive(Debug)]
pub struct Permit {
    _conn: Slot,
    _hub: Slot,
}

impl Permit {
    /// Takes a slot of `conn`'s, then one of `hub`'s, waiting for each: a
    /// connection waits for its own requests before it competes with the
    /// others for the hub's queue.
    pub fn take(conn: &Slots, hub: &Slots) -> Permit {
        let conn = conn.take();
        Permit {
            _conn: conn,
            _hub: hub.take(),
        }
    }

    /// Gives the hub queue's slot back and keeps the connection's: for a
    /// request the hub has handled but whose answer is still being made
    /// elsewhere, which must keep counting against its connection only.
    pub fn into_conn_slot(self) -> Slot {
        self._conn
    }
}

/// A history page for the page builder to read and send, so that the hub
/// never spends its time reading and encoding one (a page can be megabytes).
/// The hub has checked the request and the room, and committed everything
/// acknowledged before it, so the page reflects all of that.
#[derive(Debug)]
pub struct PageJob {
    /// Who asked.
    pub conn: ConnId,
    /// The request's `req`, echoed in the reply.
    pub req: Option<String>,
    pub room_id: RoomId,
    /// The room's display name.
    pub room: String,
    pub query: PageQuery,
    pub limit: u32,
    /// A slot of the connection's, held until the page is sent: the request
    /// counts against the connection's requests in flight until then.
    #[expect(dead_code, reason = "held, not read: given back when dropped")]
    pub slot: Slot,
}

/// One thing the hub asks of a connection. A batch's mail is carried out in
/// order.
#[derive(Debug)]
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
    /// Build this history page and send it, after the frames said to its
    /// connection before it. Frames said after it may arrive first.
    Page(PageJob),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slots_are_let_out_until_all_are_taken_then_when_one_is_dropped() {
        let slots = Slots::new(3);
        let taken: Vec<Slot> = (0..3).map(|_| slots.take()).collect();
        assert_eq!(slots.taken(), 3);
        let (got_tx, got_rx) = crossbeam_channel::bounded(1);
        std::thread::scope(|s| {
            s.spawn(|| {
                let slot = slots.take();
                got_tx.send(()).unwrap();
                drop(slot);
            });
            assert!(
                got_rx.recv_timeout(Duration::from_millis(200)).is_err(),
                "a fourth slot was let out"
            );
            // Wherever it is dropped, a slot lets the next one out.
            std::thread::spawn(move || drop(taken)).join().unwrap();
            got_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the waiting slot was let out");
        });
        assert_eq!(slots.taken(), 0);
    }

    fn bad_frame(conn: u64, permit: Permit) -> Event {
        Event::BadFrame {
            conn: ConnId(conn),
            error: crate::protocol::BadRequest {
                req: None,
                message: "bad".into(),
            },
            permit,
        }
    }

    #[test]
    fn a_permit_holds_a_slot_of_its_connection_and_of_the_hub_until_its_event_is_dropped() {
        let hub = Slots::new(3);
        let (a, b) = (Slots::new(2), Slots::new(2));
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        for (n, conn) in [(1, &a), (1, &a), (2, &b)] {
            events_tx
                .send(bad_frame(n, Permit::take(conn, &hub)))
                .unwrap();
        }
        assert_eq!((a.taken(), b.taken(), hub.taken()), (2, 1, 3));
        // Handled: one of a's.
        drop(events_rx.recv().unwrap());
        assert_eq!((a.taken(), b.taken(), hub.taken()), (1, 1, 2));
        // Never handled, because the hub stopped: the channel's receiver
        // is dropped, and with it what it held, while senders remain.
        drop(events_rx);
        assert_eq!((a.taken(), b.taken(), hub.taken()), (0, 0, 0));
        drop(events_tx);
    }
}
