//! The hub: the one thread that owns the [`Store`] and all chat state, fed
//! by a single channel of [`Event`]s. It never touches a socket: what it has
//! to say goes out as [`Mail`](crate::vocab::Mail) through the
//! [`MailSink`] it is handed.
//!
//! Sends are group-committed: the hub drains whatever is waiting on its
//! channel, stores all sends of that batch in one transaction, and only then
//! acks and broadcasts them. Any other request first commits the pending
//! batch, so every reply reflects everything acknowledged before it. A batch
//! ends after [`MAX_BATCH`] events, or sooner once its mail is large
//! ([`BATCH_BYTES`]).
//!
//! The channel is never long: each request carries a permit
//! ([`Permit`](crate::vocab::Permit)), taken by its connection before it is
//! sent, which the hub gives back just by dropping the event once handled.
//!
//! Each job keeps its state in a type of its own, in a file of its own:
//! [`sessions`] (connections, sign-in, resume, the grace period),
//! [`rooms`] (rooms, presence, the room list), [`messages`] (sends and the
//! commit), [`reading`] (read marks and unread counts), [`history`] (pages),
//! [`edits`] (editing and deleting one's own messages), [`search`] (and
//! when stored messages are indexed for it), [`limits`] (rate limits), and
//! [`outgoing`] (the batch's mail). A handler is given the parts it needs.
//!
//! After a batch that edited or deleted text, once its mail is handed over,
//! the store checkpoints the WAL so the old text leaves the disk
//! (`Store::scrub_erased`). Also after the mail, about once a second, the
//! messages stored meanwhile are indexed for search in a transaction of
//! their own (`search::Indexing`); a search indexes what waits first.

mod edits;
mod history;
mod limits;
mod messages;
mod outgoing;
mod reading;
mod rooms;
mod search;
mod sessions;

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::metrics::Metrics;
use crate::protocol::{CheckedFrame, CheckedRequest, ErrorCode, ServerFrame};
use crate::store::Store;
use crate::vocab::{ConnId, Event, MailSink, Permit, close};

use limits::Limits;
use messages::Sends;
use outgoing::{Outgoing, To};
use reading::Reading;
use rooms::Rooms;
use search::Indexing;
use sessions::{Caller, HELLO_TIMEOUT, Sessions};

/// The hub's hash maps: foldhash instead of std's SipHash, which took 3-5 %
/// of the hub's time at 2,500 messages a second (every request looks up its
/// connection, user and budget; every send its room and pending ids; every
/// push its users).
///
/// Safe against keys chosen to collide: connection, user and room ids are
/// the server's own counters, but usernames, room names, client message ids
/// and IP addresses are chosen by clients. foldhash's `RandomState` is
/// seeded anew per process (from address-space layout, the clock and a heap
/// address) and per map, and no map's order or hashes are ever shown to a
/// client, so colliding keys would have to be found from timings alone.
/// What they could gain is bounded too: the maps keyed by what clients
/// choose hold at most the users online, the addresses tracked
/// (`MAX_TRACKED_ADDRESSES`) or one batch's sends, or grow only with new
/// names, which are limited per address; the worst is lookups as slow as a
/// scan of one such map.
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Most events handled before the pending sends are committed.
const MAX_BATCH: usize = 1024;

pub use limits::Settings as LimitSettings;

/// Bytes of frames a batch may address (each counted whole for each
/// recipient) before the hub stops taking events and ends it. A batch's mail
/// waits for the post and then for the outboxes, so this bounds what the
/// hub holds between them, and what one connection's outbox is handed at
/// once (beyond the replies to one request and the batch's commit), however
/// many large pages are asked for at once. Ordinary chat never comes near
/// it: acks and broadcasts are made at the commit, after the events.
const BATCH_BYTES: usize = 1 << 20;

/// What the hub is told at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Most distinct users online at once.
    pub max_users: usize,
    /// Most users online at once from one IP address; None: no limit.
    pub max_users_per_ip: Option<usize>,
    /// Most live rooms.
    pub max_rooms: usize,
    /// What `hello` must carry to sign in; None: nothing.
    pub join_code: Option<String>,
    /// How long a session outlives a lost connection (zero: not at all).
    pub presence_grace: Duration,
    /// Rate limits and budgets per user.
    pub limits: LimitSettings,
    /// Where the hub counts commits, sign-ins, refusals and storage errors.
    pub metrics: Metrics,
}

/// The hub's state; [`Hub::run`] is its thread.
pub struct Hub {
    store: Store,
    sessions: Sessions,
    rooms: Rooms,
    sends: Sends,
    reading: Reading,
    limits: Limits,
    indexing: Indexing,
    /// What this batch says to connections, handed to the sink at its end.
    out: Outgoing,
    /// Whether clearing erased text out of the WAL failed after the last
    /// batch (logged once per incident).
    scrub_failing: bool,
}

impl Hub {
    /// Loads the live rooms from `store`.
    pub fn new(store: Store, settings: &Settings) -> rusqlite::Result<Hub> {
        Ok(Hub {
            rooms: Rooms::load(&store, settings.max_rooms)?,
            indexing: Indexing::new(&store, Instant::now()),
            store,
            sessions: Sessions::new(
                settings.max_users,
                settings.max_users_per_ip,
                settings.join_code.clone(),
                settings.presence_grace,
            ),
            sends: Sends::default(),
            reading: Reading::default(),
            limits: Limits::new(settings.limits.clone(), settings.metrics.clone()),
            out: Outgoing::new(settings.metrics.clone()),
            scrub_failing: false,
        })
    }

    /// Runs until [`Event::Shutdown`] (or until every sender of `events_rx`
    /// is gone), handing each batch's mail to `sink`.
    pub fn run(mut self, events_rx: Receiver<Event>, sink: &mut impl MailSink) {
        loop {
            // Block until an event arrives or the next deadline passes; an
            // idle hub sleeps.
            let first = match self.next_deadline() {
                Some(deadline) => match events_rx.recv_deadline(deadline) {
                    Ok(event) => Some(event),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match events_rx.recv() {
                    Ok(event) => Some(event),
                    Err(_) => break,
                },
            };
            let now = Instant::now();
            self.expire_hellos(now);
            self.sessions.expire_away(
                &self.store,
                &mut self.rooms,
                &mut self.reading,
                &mut self.out,
                now,
            );
            let mut running = first.is_none_or(|event| self.handle(event));
            let mut handled = 1;
            while running && handled < MAX_BATCH && self.out.bytes < BATCH_BYTES {
                match events_rx.try_recv() {
                    Ok(event) => running = self.handle(event),
                    Err(_) => break,
                }
                handled += 1;
            }
            self.end_batch(sink);
            if !running {
                self.sessions
                    .close_all(&mut self.out, close::GOING_AWAY, "server shutting down");
                break;
            }
        }
        self.end_batch(sink);
        self.reading.save(&mut self.store, &mut self.out);
    }

    /// After each batch of events: commit the pending sends, send the room
    /// list, unread counts and read marks that are due, and hand the batch's
    /// mail to the sink; then clear erased text out of the WAL and index
    /// stored messages for search, when due.
    fn end_batch(&mut self, sink: &mut impl MailSink) {
        self.commit();
        let now = Instant::now();
        self.indexing.schedule(&self.store, now);
        if self.rooms.list_due.is_some_and(|due| due <= now) {
            self.send_room_list(None);
        }
        if self.reading.push_due.is_some_and(|due| due <= now) {
            let sessions = &self.sessions;
            self.reading.push(
                &self.rooms,
                |user| sessions.conn_of(user),
                &mut self.out,
                now,
            );
        }
        if self.reading.seen_due.is_some_and(|due| due <= now) {
            self.reading.tell_seen(&self.rooms, &mut self.out, now);
        }
        if self.reading.save_due.is_some_and(|due| due <= now) {
            self.reading.save(&mut self.store, &mut self.out);
        }
        self.out
            .metrics
            .set_users_signed_in(self.sessions.online_count());
        if !self.out.mail.is_empty() {
            sink.post(self.out.take());
        }
        // After the mail is handed over, so that no reply waits for it.
        match self.store.scrub_erased() {
            Err(e) if !self.scrub_failing => {
                log::error!(
                    "storage: cannot clear erased text out of the WAL: {e}; trying after every batch"
                );
                self.out.metrics.storage_error();
                self.scrub_failing = true;
            }
            Err(_) => {}
            Ok(_) => self.scrub_failing = false,
        }
        // Also after the mail, and in a transaction of its own: no ack
        // waits for the index.
        self.indexing
            .step(&mut self.store, &self.out.metrics, Instant::now());
    }

    /// Stores the pending sends, then acks and broadcasts them.
    fn commit(&mut self) {
        self.sends.commit(
            &mut self.store,
            &mut self.rooms,
            &mut self.reading,
            &mut self.limits,
            &mut self.out,
        );
    }

    /// The earliest of the deadlines the hub wakes for: the oldest hello's,
    /// the first lost session's, the room list's, the unread pushes', the
    /// read marks' save and the next indexing step.
    fn next_deadline(&mut self) -> Option<Instant> {
        [
            self.sessions.next_hello_deadline(),
            self.sessions.next_away_deadline(),
            self.rooms.list_due,
            self.reading.push_due,
            self.reading.seen_due,
            self.reading.save_due,
            self.indexing.due,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn expire_hellos(&mut self, now: Instant) {
        for conn in self.sessions.expired_hellos(now) {
            log::info!("{conn}: no hello within {HELLO_TIMEOUT:?}; closing");
            self.drop_conn(conn, close::POLICY, "no hello within 10 seconds");
        }
    }

    fn drop_conn(&mut self, conn: ConnId, code: u16, reason: &str) {
        self.sessions.drop_conn(
            &self.store,
            &mut self.rooms,
            &mut self.reading,
            &mut self.out,
            conn,
            code,
            reason,
        );
    }

    /// Sends the room list to everyone signed in; `requester` gets its copy
    /// with its `req`.
    fn send_room_list(&mut self, requester: Option<&To>) {
        self.rooms.send_list(
            self.sessions.connected_users(),
            &mut self.reading,
            &mut self.out,
            requester,
        );
    }

    /// Handles one event; false means shut down.
    fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Connected { conn, peer } => self.sessions.connected(conn, peer),
            // The event's permit is given back at the end of this call (a
            // `history` request's once its page is sent).
            Event::Request {
                conn,
                request,
                permit,
            } => {
                if !matches!(
                    request.frame,
                    CheckedFrame::Send { .. } | CheckedFrame::Ping
                ) {
                    self.commit();
                }
                let before = self.out.bytes;
                self.request(conn, request, permit);
                let said = self.out.bytes.saturating_sub(before);
                self.charge_for_bytes(conn, said);
            }
            Event::BadFrame { conn, error, .. } => {
                let to = To {
                    conn,
                    req: error.req.as_deref(),
                };
                self.out
                    .error(&to, ErrorCode::BadRequest, error.message.clone());
            }
            Event::Disconnected { conn } => self.sessions.disconnected(
                &self.store,
                &mut self.rooms,
                &mut self.reading,
                &mut self.out,
                conn,
            ),
            Event::TooSlow { conn } => {
                if self.sessions.knows(conn) {
                    log::warn!("{conn}: outbox full (client too slow); disconnecting it");
                    self.out.metrics.too_slow();
                    self.drop_conn(conn, close::POLICY, "too far behind; reconnect to catch up");
                }
            }
            Event::PageSent { conn, bytes } => self.charge_for_bytes(conn, bytes),
            Event::Shutdown => return false,
        }
        true
    }

    /// Charges the request budget of `conn`'s user (or of `conn`, before it
    /// signs in) for `bytes` of replies, after the fact: a page of large
    /// messages costs more than one of small ones, which its request could
    /// not know. The budget may go below zero; the next request then waits.
    fn charge_for_bytes(&mut self, conn: ConnId, bytes: usize) {
        let units = u32::try_from(bytes / limits::REPLY_BYTES_PER_UNIT).unwrap_or(u32::MAX);
        if units == 0 {
            return;
        }
        let now = Instant::now();
        match self.sessions.caller(conn) {
            Caller::Gone => {}
            Caller::Anonymous => self.sessions.owe(conn, &self.limits.settings, units, now),
            Caller::SignedIn(user) => {
                let user = user.key.clone();
                self.limits.owe(&user, units, now);
            }
        }
    }

    /// Dispatches a request by what it is and who sent it.
    /// `permit` is given back when this returns, except a `history`
    /// request's, which its page holds until it is sent.
    fn request(&mut self, conn: ConnId, request: CheckedRequest, permit: Permit) {
        let CheckedRequest { req, frame } = request;
        let to = To {
            conn,
            req: req.as_deref(),
        };
        let out = &mut self.out;
        // Every request is paid for first, by its user, or by its
        // connection before it signs in; over budget, nothing is done.
        let cost = limits::cost(&frame);
        let now = Instant::now();
        let paid = match self.sessions.caller(conn) {
            Caller::Gone => return,
            Caller::Anonymous => self.sessions.charge(conn, &self.limits.settings, cost, now),
            Caller::SignedIn(user) => self.limits.request(&user.key, cost, now),
        };
        if let Err(refusal) = paid {
            // `typing` has no reply: over budget, it is dropped.
            if matches!(frame, CheckedFrame::Typing) {
                return;
            }
            return out.rate_limited(&to, refusal.message, refusal.wait);
        }
        let user = match (self.sessions.caller(conn), frame) {
            (Caller::Gone, _) => return,
            (
                Caller::Anonymous,
                CheckedFrame::Hello {
                    username,
                    resume,
                    code,
                },
            ) => {
                return self.sessions.hello(
                    &self.store,
                    &mut self.rooms,
                    &mut self.reading,
                    &mut self.limits,
                    out,
                    &to,
                    username,
                    resume,
                    code,
                );
            }
            (Caller::SignedIn(user), CheckedFrame::Hello { .. }) => {
                let message = format!("This connection is already signed in as {}.", user.name);
                return out.error(&to, ErrorCode::BadRequest, message);
            }
            (_, CheckedFrame::Ping) => return out.reply(&to, &ServerFrame::Pong),
            // No reply, whoever sends it.
            (Caller::Anonymous, CheckedFrame::Typing) => return,
            (Caller::Anonymous, _) => {
                return out.error(
                    &to,
                    ErrorCode::NotLoggedIn,
                    "Say hello with a username first.",
                );
            }
            (Caller::SignedIn(_), CheckedFrame::SignOut) => {
                return self.sessions.sign_out_request(
                    &self.store,
                    &mut self.rooms,
                    &mut self.reading,
                    out,
                    &to,
                );
            }
            (Caller::SignedIn(user), frame) => (user, frame),
        };
        let (user, frame) = user;
        match frame {
            CheckedFrame::Typing => {
                if self.limits.typing(&user.key, now) {
                    self.rooms.typing(out, user);
                }
            }
            CheckedFrame::Read { room, seq } => {
                let seq = match seq {
                    Ok(seq) => seq,
                    Err(message) => return out.error(&to, ErrorCode::BadRequest, message),
                };
                match self.rooms.get(&room.key) {
                    Some(live) => self
                        .reading
                        .read(&self.store, out, &to, &user.key, live, seq),
                    None => out.no_such_room(&to, &room.typed),
                }
            }
            CheckedFrame::CreateRoom { room } => {
                if self
                    .rooms
                    .create(&self.store, &mut self.limits, out, &to, user, room)
                {
                    self.rooms.send_list(
                        self.sessions.connected_users(),
                        &mut self.reading,
                        out,
                        Some(&to),
                    );
                }
            }
            CheckedFrame::DeleteRoom { room } => {
                if self.rooms.delete(
                    &self.store,
                    &mut self.reading,
                    &mut self.limits,
                    out,
                    &to,
                    user,
                    &room,
                ) {
                    self.rooms.send_list(
                        self.sessions.connected_users(),
                        &mut self.reading,
                        out,
                        Some(&to),
                    );
                }
            }
            CheckedFrame::Join { room, limit } => self.rooms.join(
                &self.store,
                &self.reading,
                &mut self.limits,
                out,
                &to,
                user,
                &room,
                limit,
            ),
            CheckedFrame::Leave => self.rooms.leave(out, &to, &user.key),
            CheckedFrame::Send { id, text, ts } => self.sends.send(
                &self.store,
                &self.rooms,
                &mut self.limits,
                out,
                to.req,
                user,
                id,
                text,
                ts,
            ),
            CheckedFrame::History { room, limit, query } => {
                history::history(&self.rooms, out, &to, &room, limit, query, permit)
            }
            CheckedFrame::Edit { seq, text } => edits::edit(
                &mut self.store,
                &self.rooms,
                &mut self.limits,
                out,
                &to,
                user,
                seq,
                text,
            ),
            CheckedFrame::DeleteMessage { seq } => edits::delete(
                &mut self.store,
                &self.rooms,
                &mut self.reading,
                &mut self.limits,
                out,
                &to,
                user,
                seq,
            ),
            CheckedFrame::Search {
                query,
                room,
                limit,
                before_seq,
            } => search::search(
                &mut self.store,
                &mut self.indexing,
                &self.rooms,
                &mut self.limits,
                out,
                &to,
                user,
                query,
                room,
                limit,
                before_seq,
            ),
            CheckedFrame::Hello { .. } | CheckedFrame::Ping | CheckedFrame::SignOut => {
                unreachable!("BUG: answered above")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{NameKey, now_ms, parse_request};
    use crate::store::tests::temp_store;
    use crate::vocab::{Mail, Permit, Slots};
    use serde_json::{Value, json};
    use std::collections::HashMap;

    /// A hub driven by hand: events in, mail out, no threads or sockets.
    struct Harness {
        hub: Hub,
        _dir: tempfile::TempDir,
        /// The page builder's store: pages are built as soon as a batch
        /// hands them over.
        reader: Store,
        /// The sink: every batch's mail.
        mail: Vec<Mail>,
        /// What each connection has been sent and not yet read, and whether
        /// it was closed.
        inboxes: HashMap<u64, Vec<Value>>,
        closed: HashMap<u64, u16>,
        /// Every request's permit: each is handled, and its permit given
        /// back, before the next is queued.
        slots: (Slots, Slots),
    }

    impl Harness {
        fn new() -> Harness {
            Harness::with_rate(1000)
        }

        fn with_rate(messages_per_second: u32) -> Harness {
            let (dir, store) = temp_store();
            Harness::with_store(dir, store, messages_per_second)
        }

        fn with_store(dir: tempfile::TempDir, store: Store, messages_per_second: u32) -> Harness {
            let settings = Settings {
                max_users: 10,
                max_users_per_ip: None,
                max_rooms: 100,
                join_code: None,
                presence_grace: Duration::ZERO,
                limits: LimitSettings {
                    messages_per_second,
                    room_switches_per_minute: 5,
                    requests_per_second: 1000,
                    request_burst: 1000,
                    room_changes_per_10_minutes: 10,
                    new_users_per_ip_per_hour: 1000,
                },
                metrics: Metrics::default(),
            };
            Harness {
                hub: Hub::new(store, &settings).unwrap(),
                reader: Store::reader(&dir.path().join("t.db")).unwrap(),
                _dir: dir,
                mail: Vec::new(),
                inboxes: HashMap::new(),
                closed: HashMap::new(),
                slots: (Slots::new(1), Slots::new(1)),
            }
        }

        fn connect(&mut self, n: u64) {
            self.hub.handle(Event::Connected {
                conn: ConnId(n),
                peer: "127.0.0.1:1".parse().unwrap(),
            });
        }

        /// Hands a request to the hub without committing, as when more
        /// events are waiting on its channel.
        fn queue(&mut self, n: u64, frame: Value) {
            let request = parse_request(&frame.to_string()).unwrap().check();
            let permit = Permit::take(&self.slots.0, &self.slots.1);
            assert!(self.hub.handle(Event::Request {
                conn: ConnId(n),
                request,
                permit,
            }));
        }

        fn end_batch(&mut self) {
            self.hub.end_batch(&mut self.mail);
            for mail in self.mail.drain(..) {
                match mail {
                    Mail::Frame(conn, frame) => self
                        .inboxes
                        .entry(conn.0)
                        .or_default()
                        .push(serde_json::from_str(frame.payload()).unwrap()),
                    Mail::Close { conn, code, .. } => {
                        self.closed.insert(conn.0, code);
                    }
                    Mail::SignedIn(_) => {}
                    Mail::Forget(conn) => {
                        self.closed.insert(conn.0, 0);
                    }
                    Mail::Page(job) => {
                        let frame = crate::pages::build(&self.reader, &job, &Metrics::default());
                        let bytes = frame.bytes().len();
                        self.hub.handle(Event::PageSent {
                            conn: job.conn,
                            bytes,
                        });
                        self.inboxes
                            .entry(job.conn.0)
                            .or_default()
                            .push(serde_json::from_str(frame.payload()).unwrap());
                    }
                }
            }
        }

        /// Hands a request over and ends the batch.
        fn request(&mut self, n: u64, frame: Value) {
            self.queue(n, frame);
            self.end_batch();
        }

        fn frames(&mut self, n: u64) -> Vec<Value> {
            self.inboxes.remove(&n).unwrap_or_default()
        }

        fn sign_in(&mut self, n: u64, name: &str) {
            self.connect(n);
            self.request(n, json!({"type": "hello", "username": name}));
            self.request(n, json!({"type": "join", "room": "general"}));
            self.frames(n);
        }

        /// alice (connection 1) in general, bob (connection 2) in Design,
        /// which he made; no room list due, every frame so far read.
        fn alice_and_bob_in_design() -> Harness {
            let mut h = Harness::new();
            h.sign_in(1, "alice");
            h.connect(2);
            h.request(2, json!({"type": "hello", "username": "bob"}));
            h.request(2, json!({"type": "create_room", "room": "Design"}));
            h.request(2, json!({"type": "join", "room": "Design"}));
            h.hub.rooms.list_due = None;
            h.frames(1);
            h.frames(2);
            h
        }
    }

    fn send(id: &str, text: &str) -> Value {
        json!({"type": "send", "id": id, "text": text, "ts": now_ms()})
    }

    #[test]
    fn a_client_too_slow_to_read_is_dropped_and_the_room_sees_it_leave() {
        let mut h = Harness::new();
        h.sign_in(1, "alice");
        h.sign_in(2, "carol");
        h.sign_in(3, "bob");
        h.frames(1);
        h.frames(2);
        h.request(1, send("before", "hello"));
        h.frames(1);
        // The post found bob's outbox full.
        assert!(h.hub.handle(Event::TooSlow { conn: ConnId(3) }));
        h.end_batch();
        assert_eq!(h.closed.get(&3), Some(&close::POLICY));
        let alice = h.frames(1);
        assert!(
            alice
                .iter()
                .any(|f| f["type"] == "presence" && f["user"] == "bob" && f["state"] == "left"),
            "alice never saw bob leave: {alice:?}"
        );
        assert!(h.hub.sessions.is_online("alice"));
        assert!(!h.hub.sessions.is_online("bob"), "bob is still signed in");
        assert!(!h.hub.sessions.knows(ConnId(3)));
        h.frames(3);
        h.request(1, send("after", "still chatting"));
        let alice = h.frames(1);
        assert!(
            alice
                .iter()
                .any(|f| f["type"] == "ack" && f["id"] == "after"),
            "{alice:?}"
        );
        assert!(h.frames(3).is_empty(), "a dropped client gets nothing more");
    }

    #[test]
    fn a_batch_is_acked_only_after_its_commit() {
        let mut h = Harness::new();
        h.sign_in(1, "alice");
        h.sign_in(2, "bob");
        h.frames(1);
        h.queue(1, send("a", "one"));
        h.queue(2, send("b", "two"));
        h.queue(1, send("a", "one again"));
        assert!(
            h.hub.out.mail.is_empty(),
            "nothing is acked before the commit"
        );
        h.end_batch();
        let alice: Vec<String> = h
            .frames(1)
            .iter()
            .map(|f| format!("{}:{}", f["type"], f["id"]))
            .collect();
        assert_eq!(
            alice,
            [
                r#""ack":"a""#,
                r#""message":"a""#,
                r#""message":"b""#,
                r#""ack":"a""#
            ]
        );
        let bob = h.frames(2);
        assert_eq!(bob.iter().filter(|f| f["type"] == "message").count(), 2);
    }

    #[test]
    fn a_history_page_is_left_to_the_page_builder_holding_its_connections_slot() {
        let mut h = Harness::new();
        h.sign_in(1, "alice");
        h.request(1, send("a", "before the page"));
        h.frames(1);
        h.queue(
            1,
            json!({"type": "history", "room": "general", "limit": 50, "req": "p"}),
        );
        // Handed over as a job, not read here; the hub queue's slot is back,
        // the connection's is held by the job.
        assert!(
            matches!(h.hub.out.mail.as_slice(), [Mail::Page(job)] if job.req.as_deref() == Some("p"))
        );
        assert_eq!((h.slots.0.taken(), h.slots.1.taken()), (1, 0));
        h.end_batch();
        assert_eq!((h.slots.0.taken(), h.slots.1.taken()), (0, 0));
        let page = h.frames(1).pop().expect("the page");
        assert_eq!(page["req"], "p");
        assert_eq!(page["messages"][0]["text"], "before the page");
        assert_eq!(page["total"], 1);
        // A room that is not there is answered by the hub.
        h.request(1, json!({"type": "history", "room": "nowhere", "req": "q"}));
        let reply = h.frames(1).pop().unwrap();
        assert_eq!(
            (reply["code"].as_str(), reply["ref"].as_str()),
            (Some("no_such_room"), Some("q"))
        );
    }

    /// Each batch's mail, as the hub handed it over.
    #[derive(Default)]
    struct Batches(Vec<Vec<Mail>>);

    impl MailSink for Batches {
        fn post(&mut self, mail: Vec<Mail>) {
            self.0.push(mail);
        }
    }

    #[test]
    fn a_batch_ends_once_its_mail_passes_its_bytes() {
        let mut h = Harness::new();
        h.sign_in(1, "alice");
        let text = "\u{1F600}".repeat(crate::protocol::MAX_TEXT_CHARS);
        for n in 0..100 {
            h.queue(1, send(&format!("m{n}"), &text));
        }
        h.end_batch();
        h.frames(1);
        // The room list alice's join made due is not what this is about: on a
        // slow machine it would fall due within the first batch.
        h.hub.rooms.list_due = None;
        // Six join pages of the largest messages (each as large as a join's
        // page may be, about 0.5 MB) asked for at once (re-joining the room
        // alice is in), and a ping.
        let (conn_slots, hub_slots) = (Slots::new(8), Slots::new(8));
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let request = |frame: Value| {
            let request = parse_request(&frame.to_string()).unwrap().check();
            let permit = Permit::take(&conn_slots, &hub_slots);
            events_tx
                .send(Event::Request {
                    conn: ConnId(1),
                    request,
                    permit,
                })
                .unwrap();
        };
        let pages = 6;
        for _ in 0..pages {
            request(json!({"type": "join", "room": "general", "limit": 100}));
        }
        request(json!({"type": "ping"}));
        events_tx.send(Event::Shutdown).unwrap();
        let mut batches = Batches::default();
        let Harness { hub, _dir, .. } = h;
        hub.run(events_rx, &mut batches);
        let frames: Vec<Vec<(String, usize)>> = batches
            .0
            .iter()
            .map(|batch| {
                batch
                    .iter()
                    .map(|mail| match mail {
                        Mail::Frame(_, frame) => {
                            let value: Value = serde_json::from_str(frame.payload()).unwrap();
                            let kind = value["type"].as_str().unwrap().to_string();
                            (kind, frame.bytes().len())
                        }
                        Mail::Close { code, .. } => (format!("close {code}"), 0),
                        other => panic!("{other:?}"),
                    })
                    .collect()
            })
            .collect();
        let kinds: Vec<&str> = frames.iter().flatten().map(|(k, _)| k.as_str()).collect();
        let mut expected = vec!["joined"; pages];
        expected.extend(["pong", "close 1001"]);
        assert_eq!(kinds, expected);
        // Every batch but the last with pages ended as soon as its bytes
        // passed the bound, not before and not later.
        let with_pages: Vec<&Vec<(String, usize)>> = frames
            .iter()
            .filter(|b| b.iter().any(|(k, _)| k == "joined"))
            .collect();
        assert!(with_pages.len() >= 2, "{} batches", with_pages.len());
        for (n, batch) in with_pages.iter().enumerate() {
            let bytes: usize = batch.iter().map(|(_, b)| b).sum();
            let last = batch.last().unwrap().1;
            assert!(
                bytes - last < BATCH_BYTES,
                "batch {n} went on past its bytes"
            );
            if n + 1 < with_pages.len() {
                assert!(
                    bytes >= BATCH_BYTES,
                    "batch {n} ended early at {bytes} bytes"
                );
            }
        }
        assert_eq!((conn_slots.taken(), hub_slots.taken()), (0, 0));
    }

    #[test]
    fn a_retry_of_a_stored_message_gets_the_original_ack_and_nothing_else() {
        let mut h = Harness::with_rate(2);
        h.sign_in(1, "alice");
        h.sign_in(2, "bob");
        h.frames(1);
        h.request(1, send("a", "first"));
        let original = h.frames(1).remove(0);
        assert_eq!(original["type"], "ack");
        h.frames(2);
        // The page resends it (its ack was lost), with other text even.
        h.request(1, send("a", "edited on the way"));
        let alice = h.frames(1);
        assert_eq!(alice.len(), 1, "{alice:?}");
        assert_eq!(alice[0], original);
        assert!(h.frames(2).is_empty(), "a retry was broadcast");
        // It did not count against the limit of 2 a second: one more fits.
        h.request(1, send("b", "second"));
        assert_eq!(h.frames(1)[0]["type"], "ack");
        // Out of the room, a retry is still acked; a new send is refused.
        h.request(1, json!({"type": "leave"}));
        h.frames(1);
        h.request(1, send("a", "again"));
        assert_eq!(h.frames(1), [original]);
        h.request(1, send("c", "new"));
        assert_eq!(h.frames(1)[0]["code"], "not_in_room");
        h.request(2, json!({"type": "history", "room": "general"}));
        let page = h.frames(2).pop().expect("a history page");
        assert_eq!(page["total"], 2, "{page}");
    }

    #[test]
    fn member_count_changes_are_sent_as_one_room_list() {
        let mut h = Harness::new();
        h.connect(1);
        h.request(1, json!({"type": "hello", "username": "watcher"}));
        h.frames(1);
        for (n, name) in [(2, "a"), (3, "b"), (4, "c")] {
            h.sign_in(n, name);
        }
        assert!(h.frames(1).is_empty(), "the list waits for its deadline");
        let due = h.hub.rooms.list_due.expect("a list is due");
        assert!(due <= Instant::now() + rooms::ROOMS_COALESCE);
        // The deadline passes (the run loop wakes for it).
        h.hub.rooms.list_due = Some(Instant::now());
        h.end_batch();
        let lists = h.frames(1);
        assert_eq!(lists.len(), 1, "{lists:?}");
        assert_eq!(lists[0]["type"], "rooms");
        assert_eq!(lists[0]["rooms"][0]["members"], 3);
        assert_eq!(h.hub.rooms.list_due, None);
    }

    #[test]
    fn unread_counts_are_pushed_once_per_room_however_many_messages() {
        let mut h = Harness::alice_and_bob_in_design();
        for n in 0..3 {
            h.request(2, send(&format!("d{n}"), "in Design, @alice"));
        }
        let unread = |frames: Vec<Value>| -> Vec<Value> {
            frames
                .into_iter()
                .filter(|f| f["type"] == "unread")
                .collect()
        };
        assert!(unread(h.frames(1)).is_empty(), "pushed before its delay");
        let due = h.hub.reading.push_due.expect("a push is due");
        assert!(due > Instant::now() - Duration::from_secs(1));
        // The delay passes (the run loop wakes for it).
        h.hub.reading.push_due = Some(Instant::now());
        h.end_batch();
        let pushed = unread(h.frames(1));
        assert_eq!(
            pushed,
            [json!({"type": "unread", "room": "Design", "unread": 3, "mentions": 3})]
        );
        // Bob is in Design: he is told nothing about it.
        assert!(unread(h.frames(2)).is_empty());
        // More messages right after: alice was pushed just now, so these
        // wait for her next turn, still due.
        h.request(2, send("d3", "more"));
        h.hub.reading.push_due = Some(Instant::now());
        h.end_batch();
        assert!(
            unread(h.frames(1)).is_empty(),
            "pushed twice within a second"
        );
        assert!(h.hub.reading.push_due.is_some(), "the change was forgotten");
        // Reading it all: the reply carries the new counts.
        h.request(
            1,
            json!({"type": "read", "room": "Design", "seq": 1_000_000}),
        );
        assert_eq!(
            unread(h.frames(1)),
            [json!({"type": "unread", "room": "Design", "unread": 0, "mentions": 0})]
        );
    }

    #[test]
    fn a_deleted_message_stops_counting_for_those_who_had_not_read_it() {
        let mut h = Harness::alice_and_bob_in_design();
        // Bob says something; its seq.
        let say = |h: &mut Harness, id: &str, text: &str| -> i64 {
            h.request(2, send(id, text));
            let ack = h.frames(2).into_iter().find(|f| f["type"] == "ack");
            ack.expect("acked")["seq"].as_i64().unwrap()
        };
        let seqs: Vec<i64> = [("d0", "@alice look"), ("d1", "plain"), ("d2", "plain")]
            .into_iter()
            .map(|(id, text)| say(&mut h, id, text))
            .collect();
        // Pushed now, whenever alice was last pushed.
        let pushed = |h: &mut Harness| -> Vec<Value> {
            h.hub.reading.push_everyone_now();
            h.end_batch();
            h.frames(1)
                .into_iter()
                .filter(|f| f["type"] == "unread")
                .collect()
        };
        let counts = |unread: u64, mentions: u64| {
            [json!({"type": "unread", "room": "Design", "unread": unread, "mentions": mentions})]
        };
        assert_eq!(pushed(&mut h), counts(3, 1));
        // A fourth comes; a room list shows it before her next push does.
        let fourth = say(&mut h, "d3", "plain");
        h.hub.send_room_list(None);
        h.end_batch();
        let list = h.frames(1);
        let listed = list.iter().find(|f| f["type"] == "rooms").expect("a list");
        let design = listed["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "Design");
        assert_eq!(design.expect("listed")["unread"], 4, "{listed}");
        // Taken back: the count is what was last pushed, but not what she
        // was last shown, so it is pushed again.
        h.request(2, json!({"type": "delete_message", "seq": fourth}));
        assert_eq!(pushed(&mut h), counts(3, 1));
        // The one naming her goes, and her mention with it.
        h.request(2, json!({"type": "delete_message", "seq": seqs[0]}));
        assert_eq!(pushed(&mut h), counts(2, 0));
        // She reads d1; its deletion then changes nothing for her.
        h.request(1, json!({"type": "read", "room": "Design", "seq": seqs[1]}));
        assert_eq!(
            h.frames(1)
                .into_iter()
                .filter(|f| f["type"] == "unread")
                .collect::<Vec<_>>(),
            counts(1, 0)
        );
        h.request(2, json!({"type": "delete_message", "seq": seqs[1]}));
        assert!(pushed(&mut h).is_empty(), "counts moved for a read message");
        h.request(2, json!({"type": "delete_message", "seq": seqs[2]}));
        assert_eq!(pushed(&mut h), counts(0, 0));
        // Bob's own messages were never unread for him, deleted or not.
        h.request(2, json!({"type": "join", "room": "general"}));
        let list = h.hub.reading.room_list(&h.hub.rooms, &NameKey::of("bob"));
        let design = list.iter().find(|r| r.name == "Design").expect("listed");
        assert_eq!((design.unread, design.mentions), (0, 0));
    }

    #[test]
    fn a_room_made_after_one_is_deleted_starts_from_zero_counts() {
        let mut h = Harness::new();
        h.sign_in(1, "alice");
        h.connect(2);
        h.request(2, json!({"type": "hello", "username": "bob"}));
        // All in one batch, so that alice is pushed nothing in between,
        // however slow the machine.
        h.queue(2, json!({"type": "create_room", "room": "Design"}));
        let design = h
            .hub
            .rooms
            .get(&NameKey::of("Design"))
            .expect("created")
            .slot;
        h.queue(2, json!({"type": "join", "room": "Design"}));
        for n in 0..2 {
            h.queue(2, send(&format!("d{n}"), "@alice look"));
        }
        h.queue(2, json!({"type": "delete_room", "room": "Design"}));
        h.queue(2, json!({"type": "create_room", "room": "Ops"}));
        h.queue(2, json!({"type": "join", "room": "Ops"}));
        // Ops keeps its counts where Design kept its own.
        let ops = h.hub.rooms.get(&NameKey::of("Ops")).expect("created").slot;
        assert_eq!(ops, design, "Ops did not take Design's slot");
        h.queue(2, send("o1", "in Ops"));
        h.end_batch();
        h.hub.reading.push_due = Some(Instant::now());
        h.end_batch();
        let pushed: Vec<Value> = h
            .frames(1)
            .into_iter()
            .filter(|f| f["type"] == "unread")
            .collect();
        assert_eq!(
            pushed,
            [json!({"type": "unread", "room": "Ops", "unread": 1, "mentions": 0})]
        );
    }

    #[test]
    fn a_resumed_session_gets_the_room_mail_on_its_new_connection() {
        let mut h = Harness::new();
        h.sign_in(1, "alice");
        h.connect(9);
        h.request(9, json!({"type": "hello", "username": "zed"}));
        let session = h.frames(9)[0]["session"].as_str().unwrap().to_string();
        h.request(9, json!({"type": "join", "room": "general"}));
        h.frames(9);
        h.frames(1);
        // zed's page reconnects with its token.
        h.connect(3);
        h.request(
            3,
            json!({"type": "hello", "username": "zed", "resume": session}),
        );
        assert_eq!(h.closed.get(&9), Some(&close::REPLACED));
        let welcome = h.frames(3);
        assert_eq!(welcome[0]["type"], "welcome");
        assert_eq!(welcome[0]["room"], "general");
        assert!(h.frames(1).is_empty(), "alice saw zed come or go");
        h.request(1, send("m", "to everyone"));
        assert!(h.frames(3).iter().any(|f| f["type"] == "message"));
        assert!(h.frames(9).is_empty());
    }

    #[test]
    fn a_search_finds_a_message_the_moment_it_is_acked() {
        let mut h = Harness::new();
        h.sign_in(1, "alice");
        h.request(1, send("a", "meet at the lighthouse"));
        assert_eq!(h.frames(1)[0]["type"], "ack");
        // The commit left the index to a step about a second later.
        assert!(h.hub.indexing.due.is_some());
        h.request(1, json!({"type": "search", "query": "lighthouse"}));
        let results = h.frames(1).pop().expect("search results");
        assert_eq!(results["type"], "search_results", "{results}");
        assert_eq!(results["messages"][0]["text"], "meet at the lighthouse");
        // The search indexed it: no step is left to do.
        assert!(!h.hub.store.search_behind());
        assert_eq!(h.hub.indexing.due, None);
    }

    #[test]
    fn a_backlog_is_indexed_a_slice_per_batch() {
        let (dir, mut store) = temp_store();
        let user = store.login_user("ann", 1).unwrap();
        let count = 2 * search::INDEX_SLICE + 1;
        let batch: Vec<crate::store::NewMessage> = (0..count)
            .map(|i| crate::store::NewMessage {
                room_id: crate::store::RoomId(1),
                user_id: user.id,
                client_id: format!("c{i}"),
                text: format!("backlog {i}"),
                ts: 1,
                received_at: 1,
                mentions: Vec::new(),
            })
            .collect();
        store.insert_messages(&batch).unwrap();
        let mut h = Harness::with_store(dir, store, 1000);
        // Due from the start, and again at once after each slice, until
        // nothing waits: the run loop wakes for it between batches.
        let mut steps = 0;
        while h.hub.indexing.due.is_some() {
            assert!(
                h.hub
                    .next_deadline()
                    .is_some_and(|due| due <= Instant::now())
            );
            h.end_batch();
            steps += 1;
            assert!(steps <= 3, "more steps than slices");
        }
        assert_eq!(steps, 3);
        assert!(!h.hub.store.search_behind());
    }

    #[test]
    fn a_full_disk_fails_the_batch_keeps_reads_working_and_recovers() {
        let mut h = Harness::new();
        h.sign_in(1, "alice");
        h.request(1, send("ok", "stored before the disk filled"));
        h.frames(1);
        let pages: i64 = h.hub.store.conn_page_count();
        h.hub.store.set_max_pages(pages).unwrap();
        let big = "x".repeat(4000);
        for n in 0..3 {
            h.queue(1, send(&format!("full{n}"), &big));
        }
        h.end_batch();
        let frames = h.frames(1);
        assert_eq!(frames.len(), 3, "{frames:?}");
        for f in &frames {
            assert_eq!(f["code"], "storage_error", "{f}");
        }
        // Reads keep working and show nothing of the failed batch.
        h.request(1, json!({"type": "history", "room": "general"}));
        let page = h.frames(1).pop().unwrap();
        assert_eq!(page["total"], 1);
        assert_eq!(page["messages"].as_array().unwrap().len(), 1);
        // Space comes back: the same ids go through.
        h.hub.store.set_max_pages(1_000_000).unwrap();
        h.request(1, send("full0", &big));
        let frames = h.frames(1);
        assert_eq!(frames[0]["type"], "ack", "{frames:?}");
    }

    #[test]
    fn a_search_while_the_disk_is_full_answers_from_the_index_and_it_catches_up_later() {
        let mut h = Harness::new();
        h.sign_in(1, "alice");
        // One commit, and words enough that their index takes more pages
        // than the file has free. Its step is a second away.
        for m in 0..20 {
            let words: Vec<String> = (0..400).map(|n| format!("w{m}x{n}")).collect();
            let text = format!("driftwood {}", words.join(" "));
            h.queue(1, send(&format!("m{m}"), &text));
        }
        h.end_batch();
        assert_eq!(h.frames(1).len(), 20 * 2, "acks and messages");
        let pages: i64 = h.hub.store.conn_page_count();
        h.hub.store.set_max_pages(pages).unwrap();
        let search = json!({"type": "search", "query": "driftwood"});
        h.request(1, search.clone());
        let results = h.frames(1).pop().expect("search results");
        assert_eq!(results["type"], "search_results", "{results}");
        assert_eq!(
            results["messages"],
            json!([]),
            "the index could not be written"
        );
        assert!(h.hub.store.search_behind());
        h.hub.store.set_max_pages(1_000_000).unwrap();
        h.request(1, search);
        let results = h.frames(1).pop().expect("search results");
        assert_eq!(results["messages"].as_array().map(Vec::len), Some(20));
    }
}
