//! The hub: the one thread that owns the [`Store`], the rooms, presence,
//! sessions and rate limits, fed by a single crossbeam channel of [`Event`]s.
//!
//! Sends are group-committed: the hub drains whatever is waiting on its
//! channel, stores all sends of that batch in one transaction, and only then
//! acks and broadcasts them. Any other request first commits the pending
//! batch, so every reply reflects everything acknowledged before it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::Config;
use crate::outbox::{Frame, Outbox};
use crate::post::{self, Mail, Post};
use crate::protocol::{
    BadRequest, ChatMessage, ClientFrame, Cursor, ErrorCode, Limits, MAX_TEXT_CHARS, PAGE_SIZES,
    Page, PresenceState, Request, RoomInfo, ServerFrame, fold_case, validate_client_id,
    validate_room_name, validate_text, validate_username,
};
use crate::store::{NewMessage, PageQuery, Store};

/// A connection's number, unique for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn {}", self.0)
    }
}

/// How long a new connection has to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A client `ts` further than this from the server's clock is replaced.
const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;
/// Most events handled before the pending sends are committed.
const MAX_BATCH: usize = 1024;
/// Longest a member count change waits to be sent in a room list.
const ROOMS_COALESCE: Duration = Duration::from_millis(100);

/// Close codes the hub asks connections to send.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    /// The session was resumed by another connection.
    pub const REPLACED: u16 = 4001;
}

/// Everything the hub hears about.
pub enum Event {
    /// A WebSocket handshake completed. `outbox` carries frames to the
    /// client; `commands_tx` asks the writer thread to close, and dropping
    /// it ends the writer.
    Connected {
        conn: ConnId,
        peer: SocketAddr,
        outbox: Outbox,
        commands_tx: Sender<Command>,
    },
    /// A well-formed request.
    Request { conn: ConnId, request: Request },
    /// A text frame that is not a valid request, or a binary frame.
    BadFrame { conn: ConnId, error: BadRequest },
    /// The connection's reader ended: the socket is gone.
    Disconnected { conn: ConnId },
    /// The post found the connection's outbox full: the client stopped
    /// reading.
    TooSlow { conn: ConnId },
    /// Commit what is pending, close every connection with 1001 and exit.
    Shutdown,
}

/// What the hub asks of a connection's writer besides sending frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send a close frame with this code and reason, then stop.
    Close { code: u16, reason: String },
}

struct Conn {
    peer: SocketAddr,
    outbox: Outbox,
    commands_tx: Sender<Command>,
    /// The folded username once a hello succeeded.
    user: Option<String>,
}

struct Online {
    user_id: i64,
    name: String,
    conn: ConnId,
    session: String,
    /// The folded name of the room the user is in.
    room: Option<String>,
}

struct Room {
    id: i64,
    name: String,
    created_at: i64,
    created_by: Option<String>,
    /// Display names of the users present, keyed by folded name.
    members: BTreeMap<String, String>,
    total: u64,
}

/// Sliding-window rate limits of one user. Kept by username, not by
/// connection, so reconnecting does not reset them.
#[derive(Default)]
struct Rate {
    sends: VecDeque<Instant>,
    switches: VecDeque<Instant>,
}

/// A validated send waiting for the batch commit.
struct PendingSend {
    conn: ConnId,
    req: Option<String>,
    from: String,
    room: String,
    message: NewMessage,
}

/// A repeat of a send that is still in the pending batch; acked with it.
struct PendingRepeat {
    conn: ConnId,
    req: Option<String>,
    index: usize,
}

pub struct Hub {
    store: Store,
    max_users: usize,
    messages_per_second: u32,
    room_switches_per_minute: u32,
    conns: HashMap<ConnId, Conn>,
    /// Connections that have not said hello yet, oldest first, with their
    /// deadlines. Entries of connections that have since logged in or gone
    /// are skipped when they come up.
    hello_deadlines: VecDeque<(Instant, ConnId)>,
    online: HashMap<String, Online>,
    /// Live rooms by folded name.
    rooms: BTreeMap<String, Room>,
    rates: HashMap<String, Rate>,
    pending: Vec<PendingSend>,
    pending_ids: HashMap<(String, String), usize>,
    pending_repeats: Vec<PendingRepeat>,
    /// True while storage writes fail; errors are logged once per incident.
    storage_failing: bool,
    /// When the room list is due, after a member count changed.
    rooms_due: Option<Instant>,
    /// What this batch asks of connections, for the post.
    mail: Vec<Mail>,
    /// The post thread, while [`Hub::run`] runs.
    post: Option<Post>,
}

/// Who a reply goes to and what it echoes.
struct To<'a> {
    conn: ConnId,
    req: Option<&'a str>,
}

impl Hub {
    pub fn new(store: Store, config: &Config) -> rusqlite::Result<Hub> {
        let rooms = store
            .live_rooms()?
            .into_iter()
            .map(|r| {
                let room = Room {
                    id: r.id,
                    name: r.name,
                    created_at: r.created_at,
                    created_by: r.created_by,
                    members: BTreeMap::new(),
                    total: r.message_count,
                };
                (fold_case(&room.name), room)
            })
            .collect();
        Ok(Hub {
            store,
            max_users: config.max_users,
            messages_per_second: config.messages_per_second,
            room_switches_per_minute: config.room_switches_per_minute,
            conns: HashMap::new(),
            hello_deadlines: VecDeque::new(),
            online: HashMap::new(),
            rooms,
            rates: HashMap::new(),
            pending: Vec::new(),
            pending_ids: HashMap::new(),
            pending_repeats: Vec::new(),
            storage_failing: false,
            rooms_due: None,
            mail: Vec::new(),
            post: None,
        })
    }

    /// Runs until [`Event::Shutdown`], with `post` carrying out each batch's
    /// mail; stops it before returning. (The post holds a sender of
    /// `events_rx`, so the channel stays open while the hub runs.)
    pub fn run(mut self, events_rx: Receiver<Event>, post: Post) {
        self.post = Some(post);
        loop {
            // Block until an event arrives or the oldest hello deadline
            // passes; an idle hub sleeps.
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
            self.expire_hellos(Instant::now());
            let mut running = first.is_none_or(|event| self.handle(event));
            let mut handled = 1;
            while running && handled < MAX_BATCH {
                match events_rx.try_recv() {
                    Ok(event) => running = self.handle(event),
                    Err(_) => break,
                }
                handled += 1;
            }
            self.end_batch();
            if !running {
                self.close_all(close::GOING_AWAY, "server shutting down");
                break;
            }
        }
        self.end_batch();
        if let Some(post) = self.post.take() {
            post.stop();
        }
    }

    /// After each batch of events: commit the pending sends, send the room
    /// list if it is due, and hand the batch's mail to the post.
    fn end_batch(&mut self) {
        self.commit_pending();
        if self.rooms_due.is_some_and(|due| due <= Instant::now()) {
            self.broadcast_rooms(None);
        }
        self.send_mail();
    }

    fn send_mail(&mut self) {
        while !self.mail.is_empty() {
            let mail = std::mem::take(&mut self.mail);
            match &self.post {
                Some(post) => post.send(mail),
                // Without a post thread (tests drive the hub by hand), the
                // hub delivers itself.
                None => {
                    for conn in post::deliver(mail) {
                        self.handle(Event::TooSlow { conn });
                    }
                }
            }
        }
    }

    /// A member count changed: the room list goes out within
    /// [`ROOMS_COALESCE`]. A burst of joins (every page reconnecting after a
    /// restart) thus costs each client a few lists rather than one per join;
    /// presence itself is never delayed.
    fn rooms_changed(&mut self) {
        self.rooms_due
            .get_or_insert_with(|| Instant::now() + ROOMS_COALESCE);
    }

    /// Handles one event; false means shut down.
    fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Connected {
                conn,
                peer,
                outbox,
                commands_tx,
            } => {
                log::info!("{conn}: connected from {peer}");
                self.conns.insert(
                    conn,
                    Conn {
                        peer,
                        outbox,
                        commands_tx,
                        user: None,
                    },
                );
                self.hello_deadlines
                    .push_back((Instant::now() + HELLO_TIMEOUT, conn));
            }
            Event::Request { conn, request } => {
                if !matches!(request.frame, ClientFrame::Send { .. } | ClientFrame::Ping) {
                    self.commit_pending();
                }
                self.request(conn, request);
            }
            Event::BadFrame { conn, error } => {
                let to = To {
                    conn,
                    req: error.req.as_deref(),
                };
                self.error(&to, ErrorCode::BadRequest, error.message.clone());
            }
            Event::Disconnected { conn } => self.disconnected(conn),
            Event::TooSlow { conn } => {
                if self.conns.contains_key(&conn) {
                    log::warn!("{conn}: outbox full (client too slow); disconnecting it");
                    self.drop_conn(conn, close::POLICY, "too far behind; reconnect to catch up");
                }
            }
            Event::Shutdown => return false,
        }
        true
    }

    /// The earliest of the oldest hello deadline and the room list's.
    fn next_deadline(&mut self) -> Option<Instant> {
        let mut hello = None;
        while let Some(&(deadline, conn)) = self.hello_deadlines.front() {
            if self.conns.get(&conn).is_some_and(|c| c.user.is_none()) {
                hello = Some(deadline);
                break;
            }
            self.hello_deadlines.pop_front();
        }
        match (hello, self.rooms_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn expire_hellos(&mut self, now: Instant) {
        while let Some(&(deadline, conn)) = self.hello_deadlines.front() {
            if deadline > now {
                break;
            }
            self.hello_deadlines.pop_front();
            if self.conns.get(&conn).is_some_and(|c| c.user.is_none()) {
                log::info!("{conn}: no hello within {HELLO_TIMEOUT:?}; closing");
                self.drop_conn(conn, close::POLICY, "no hello within 10 seconds");
            }
        }
    }

    fn request(&mut self, conn: ConnId, request: Request) {
        let Request { req, frame } = request;
        let to = To {
            conn,
            req: req.as_deref(),
        };
        let Some(state) = self.conns.get(&conn) else {
            return;
        };
        let user = state.user.clone();
        match (frame, user) {
            (ClientFrame::Hello { username, resume }, None) => self.hello(&to, &username, resume),
            (ClientFrame::Hello { .. }, Some(user)) => {
                let name = self.online[&user].name.clone();
                self.error(
                    &to,
                    ErrorCode::BadRequest,
                    format!("This connection is already signed in as {name}."),
                );
            }
            (ClientFrame::Ping, _) => self.reply(&to, &ServerFrame::Pong),
            (_, None) => self.error(
                &to,
                ErrorCode::NotLoggedIn,
                "Say hello with a username first.",
            ),
            (ClientFrame::CreateRoom { room }, Some(user)) => self.create_room(&to, &user, &room),
            (ClientFrame::DeleteRoom { room }, Some(user)) => self.delete_room(&to, &user, &room),
            (ClientFrame::Join { room, limit }, Some(user)) => self.join(&to, &user, &room, limit),
            (ClientFrame::Leave, Some(user)) => self.leave(&to, &user),
            (ClientFrame::Send { id, text, ts }, Some(user)) => {
                self.send(req.clone(), conn, &user, id, &text, ts)
            }
            (
                ClientFrame::History {
                    room,
                    limit,
                    before,
                    after,
                    since_seq,
                },
                Some(_),
            ) => self.history(&to, &room, limit, before, after, since_seq),
        }
    }

    fn hello(&mut self, to: &To, username: &str, resume: Option<String>) {
        let peer = self.conns[&to.conn].peer;
        let name = match validate_username(username) {
            Ok(name) => name,
            Err(message) => {
                log::info!("{}: login refused from {peer}: invalid username", to.conn);
                return self.error(to, ErrorCode::InvalidUsername, message);
            }
        };
        let key = fold_case(&name);
        if let Some(online) = self.online.get(&key)
            && resume.as_deref() != Some(online.session.as_str())
        {
            log::info!(
                "{}: login refused from {peer}: {name} is already online",
                to.conn
            );
            let message = format!("{} is already signed in. Choose another name.", online.name);
            return self.error(to, ErrorCode::UsernameTaken, message);
        }
        if let Some(online) = self.online.get_mut(&key) {
            // Resume: the new connection takes over the session, its room and
            // its presence; the others in the room see no change.
            let old = std::mem::replace(&mut online.conn, to.conn);
            let (name, session, room) = (
                online.name.clone(),
                online.session.clone(),
                online.room.clone(),
            );
            if let Some(old_conn) = self.conns.get_mut(&old) {
                old_conn.user = None;
            }
            self.drop_conn(
                old,
                close::REPLACED,
                "signed in again from another connection",
            );
            self.conns
                .get_mut(&to.conn)
                .expect("BUG: caller checked the conn")
                .user = Some(key);
            log::info!(
                "{}: {name} resumed their session from {peer} (replacing {old})",
                to.conn
            );
            let room = room.map(|r| self.rooms[&r].name.clone());
            return self.welcome(to, name, session, room);
        }
        if self.online.len() >= self.max_users {
            log::warn!(
                "{}: login refused from {peer}: server full ({} users)",
                to.conn,
                self.max_users
            );
            return self.error(
                to,
                ErrorCode::ServerFull,
                format!(
                    "The server is full ({} people are online). Try again later.",
                    self.max_users
                ),
            );
        }
        let user = match self.store.login_user(&name, crate::now_ms()) {
            Ok(user) => user,
            Err(e) => return self.storage_failed(to, "recording a login", &e),
        };
        let session = crate::random::token();
        self.online.insert(
            key.clone(),
            Online {
                user_id: user.id,
                name: user.name.clone(),
                conn: to.conn,
                session: session.clone(),
                room: None,
            },
        );
        self.conns
            .get_mut(&to.conn)
            .expect("BUG: caller checked the conn")
            .user = Some(key);
        log::info!("{}: {} signed in from {peer}", to.conn, user.name);
        self.welcome(to, user.name, session, None);
    }

    fn welcome(&mut self, to: &To, username: String, session: String, room: Option<String>) {
        let frame = ServerFrame::Welcome {
            username,
            session,
            room,
            rooms: self.room_infos(),
            limits: Limits {
                max_text_chars: MAX_TEXT_CHARS,
                page_sizes: PAGE_SIZES,
                messages_per_second: self.messages_per_second,
                room_switches_per_minute: self.room_switches_per_minute,
            },
        };
        self.reply(to, &frame);
    }

    fn create_room(&mut self, to: &To, user: &str, raw: &str) {
        let name = match validate_room_name(raw) {
            Ok(name) => name,
            Err(message) => return self.error(to, ErrorCode::InvalidRoomName, message),
        };
        let key = fold_case(&name);
        if let Some(room) = self.rooms.get(&key) {
            let message = format!("A room named {} already exists.", room.name);
            return self.error(to, ErrorCode::RoomExists, message);
        }
        let online = &self.online[user];
        let now = crate::now_ms();
        let id = match self.store.create_room(&name, online.user_id, now) {
            Ok(id) => id,
            Err(e) => return self.storage_failed(to, "creating a room", &e),
        };
        log::info!("{}: {} created room {name}", to.conn, online.name);
        self.rooms.insert(
            key,
            Room {
                id,
                name,
                created_at: now,
                created_by: Some(online.name.clone()),
                members: BTreeMap::new(),
                total: 0,
            },
        );
        self.broadcast_rooms(Some(to));
    }

    fn delete_room(&mut self, to: &To, user: &str, raw: &str) {
        let key = fold_case(raw.trim());
        let Some(room) = self.rooms.get(&key) else {
            return self.no_such_room(to, raw);
        };
        if let Err(e) = self.store.delete_room(room.id, crate::now_ms()) {
            return self.storage_failed(to, "deleting a room", &e);
        }
        let room = self.rooms.remove(&key).expect("BUG: looked up above");
        log::info!(
            "{}: {} deleted room {}",
            to.conn,
            self.online[user].name,
            room.name
        );
        let deleted = encode(&ServerFrame::RoomDeleted {
            room: room.name.clone(),
        });
        for member in room.members.keys() {
            let online = self
                .online
                .get_mut(member)
                .expect("BUG: members are online");
            online.room = None;
            let conn = online.conn;
            self.deliver(conn, deleted.clone());
        }
        self.broadcast_rooms(Some(to));
    }

    fn join(&mut self, to: &To, user: &str, raw: &str, limit: Option<u32>) {
        let Some(limit) = self.page_limit(to, limit) else {
            return;
        };
        let key = fold_case(raw.trim());
        let Some(room) = self.rooms.get(&key) else {
            return self.no_such_room(to, raw);
        };
        let history = match self.read_page(room, PageQuery::Newest, limit) {
            Ok(page) => page,
            Err(e) => return self.storage_failed(to, "loading history", &e),
        };
        let current = self.online[user].room.clone();
        if current.as_deref() != Some(key.as_str()) {
            let now = Instant::now();
            let rate = self.rates.entry(user.to_string()).or_default();
            if let Some(wait) = over_limit(
                &mut rate.switches,
                now,
                Duration::from_secs(60),
                self.room_switches_per_minute,
            ) {
                let name = &self.online[user].name;
                log::warn!("{}: {name} hit the room switch rate limit", to.conn);
                let message = format!(
                    "You can switch rooms at most {} times a minute. Try again in {} s.",
                    self.room_switches_per_minute,
                    wait.as_secs() + 1
                );
                return self.rate_limited(to, message, wait);
            }
            if let Some(previous) = current {
                self.remove_member(user, &previous);
            }
            let online = self.online.get_mut(user).expect("BUG: caller is online");
            online.room = Some(key.clone());
            let (name, conn) = (online.name.clone(), online.conn);
            let room = self.rooms.get_mut(&key).expect("BUG: looked up above");
            room.members.insert(user.to_string(), name.clone());
            log::info!("{conn}: {name} joined {}", room.name);
            let presence = encode(&ServerFrame::Presence {
                room: room.name.clone(),
                user: name,
                state: PresenceState::Joined,
            });
            let others: Vec<ConnId> = self.member_conns(&key).filter(|c| *c != conn).collect();
            self.reply(to, &self.joined_frame(&key, history));
            for other in others {
                self.deliver(other, presence.clone());
            }
            self.rooms_changed();
        } else {
            self.reply(to, &self.joined_frame(&key, history));
        }
    }

    fn joined_frame(&self, key: &str, history: Page) -> ServerFrame {
        let room = &self.rooms[key];
        ServerFrame::Joined {
            room: room.name.clone(),
            members: room.members.values().cloned().collect(),
            history,
        }
    }

    fn leave(&mut self, to: &To, user: &str) {
        let Some(key) = self.online[user].room.clone() else {
            return self.error(to, ErrorCode::NotInRoom, "You are not in a room.");
        };
        let name = self.rooms[&key].name.clone();
        self.remove_member(user, &key);
        self.online
            .get_mut(user)
            .expect("BUG: caller is online")
            .room = None;
        self.reply(to, &ServerFrame::Left { room: name });
        self.rooms_changed();
    }

    /// Takes `user` out of room `key` and tells the members left behind.
    fn remove_member(&mut self, user: &str, key: &str) {
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        let Some(name) = room.members.remove(user) else {
            return;
        };
        log::info!("{name} left {}", room.name);
        let presence = encode(&ServerFrame::Presence {
            room: room.name.clone(),
            user: name,
            state: PresenceState::Left,
        });
        let members: Vec<ConnId> = self.member_conns(key).collect();
        for conn in members {
            self.deliver(conn, presence.clone());
        }
    }

    fn send(
        &mut self,
        req: Option<String>,
        conn: ConnId,
        user: &str,
        id: String,
        raw_text: &str,
        ts: Option<i64>,
    ) {
        let to = To {
            conn,
            req: req.as_deref(),
        };
        if let Err(message) = validate_client_id(&id) {
            return self.error(&to, ErrorCode::InvalidMessage, message);
        }
        let online = &self.online[user];
        let user_id = online.user_id;
        // A repeated id is a retry: answer with the original ack whatever the
        // text, and store nothing.
        if let Some(&index) = self.pending_ids.get(&(user.to_string(), id.clone())) {
            self.pending_repeats
                .push(PendingRepeat { conn, req, index });
            return;
        }
        match self.store.find_sent(user_id, &id) {
            Ok(Some(sent)) => {
                let ack = ServerFrame::Ack {
                    id,
                    room: sent.room,
                    seq: sent.seq,
                    ts: sent.ts,
                };
                return self.reply(&to, &ack);
            }
            Ok(None) => {}
            Err(e) => return self.storage_failed(&to, "checking for a repeated message", &e),
        }
        let Some(room_key) = online.room.clone() else {
            return self.error(
                &to,
                ErrorCode::NotInRoom,
                "Join a room before sending messages.",
            );
        };
        let text = match validate_text(raw_text) {
            Ok(text) => text,
            Err(message) => return self.error(&to, ErrorCode::InvalidMessage, message),
        };
        let rate = self.rates.entry(user.to_string()).or_default();
        if let Some(wait) = over_limit(
            &mut rate.sends,
            Instant::now(),
            Duration::from_secs(1),
            self.messages_per_second,
        ) {
            log::warn!(
                "{conn}: {} hit the message rate limit",
                self.online[user].name
            );
            let message = format!(
                "You are sending too fast (at most {} messages a second). Wait a moment.",
                self.messages_per_second
            );
            return self.rate_limited(&to, message, wait);
        }
        let now = crate::now_ms();
        let ts = match ts {
            Some(ts) if (ts - now).abs() <= MAX_CLOCK_SKEW_MS => ts,
            Some(ts) => {
                log::warn!(
                    "{conn}: client clock is {} s off; using the server's clock",
                    (ts - now) / 1000
                );
                now
            }
            None => now,
        };
        let online = &self.online[user];
        let room = &self.rooms[&room_key];
        self.pending_ids
            .insert((user.to_string(), id.clone()), self.pending.len());
        self.pending.push(PendingSend {
            conn,
            req,
            from: online.name.clone(),
            room: room_key,
            message: NewMessage {
                room_id: room.id,
                user_id,
                client_id: id,
                text,
                ts,
                received_at: now,
            },
        });
    }

    /// Stores the pending batch in one transaction, then acks and broadcasts
    /// it; on failure every sender in the batch gets `storage_error`.
    fn commit_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let repeats = std::mem::take(&mut self.pending_repeats);
        self.pending_ids.clear();
        let seqs = match self
            .store
            .insert_messages(pending.iter().map(|p| &p.message))
        {
            Ok(seqs) => seqs,
            Err(e) => {
                if !self.storage_failing {
                    log::error!(
                        "storage: could not store {} message(s): {e}; senders get storage_error",
                        pending.len()
                    );
                    self.storage_failing = true;
                }
                let error = ServerFrame::error(
                    ErrorCode::StorageError,
                    "Your message could not be saved. Try again later.",
                );
                let failed = pending
                    .iter()
                    .map(|p| (p.conn, p.req.as_deref()))
                    .chain(repeats.iter().map(|r| (r.conn, r.req.as_deref())));
                for (conn, req) in failed.collect::<Vec<_>>() {
                    self.reply(&To { conn, req }, &error);
                }
                return;
            }
        };
        if self.storage_failing {
            log::info!("storage: writes work again");
            self.storage_failing = false;
        }
        let mut acks = Vec::with_capacity(pending.len());
        for (p, seq) in pending.into_iter().zip(seqs) {
            let room = self
                .rooms
                .get_mut(&p.room)
                .expect("BUG: deleting a room commits the pending batch first");
            room.total += 1;
            let message = ChatMessage {
                room: room.name.clone(),
                seq,
                id: p.message.client_id,
                from: p.from,
                text: p.message.text,
                ts: p.message.ts,
            };
            let ack = ServerFrame::Ack {
                id: message.id.clone(),
                room: message.room.clone(),
                seq,
                ts: message.ts,
            };
            self.reply(
                &To {
                    conn: p.conn,
                    req: p.req.as_deref(),
                },
                &ack,
            );
            let frame = encode(&ServerFrame::Message(message));
            let members: Vec<ConnId> = self.member_conns(&p.room).collect();
            for conn in members {
                self.deliver(conn, frame.clone());
            }
            acks.push(ack);
        }
        for r in repeats {
            self.reply(
                &To {
                    conn: r.conn,
                    req: r.req.as_deref(),
                },
                &acks[r.index],
            );
        }
    }

    fn history(
        &mut self,
        to: &To,
        raw: &str,
        limit: Option<u32>,
        before: Option<Cursor>,
        after: Option<Cursor>,
        since_seq: Option<i64>,
    ) {
        let Some(limit) = self.page_limit(to, limit) else {
            return;
        };
        let query = match (before, after, since_seq) {
            (None, None, None) => PageQuery::Newest,
            (Some(c), None, None) => PageQuery::Before(c),
            (None, Some(c), None) => PageQuery::After(c),
            (None, None, Some(s)) => PageQuery::SinceSeq(s),
            _ => {
                return self.error(
                    to,
                    ErrorCode::BadRequest,
                    "Use at most one of \"before\", \"after\" and \"since_seq\".",
                );
            }
        };
        let Some(room) = self.rooms.get(&fold_case(raw.trim())) else {
            return self.no_such_room(to, raw);
        };
        match self.read_page(room, query, limit) {
            Ok(page) => self.reply(to, &ServerFrame::History(page)),
            Err(e) => self.storage_failed(to, "loading history", &e),
        }
    }

    fn read_page(&self, room: &Room, query: PageQuery, limit: u32) -> rusqlite::Result<Page> {
        let rows = self.store.page(room.id, &room.name, query, limit)?;
        Ok(Page {
            room: room.name.clone(),
            messages: rows.messages,
            has_older: rows.has_older,
            has_newer: rows.has_newer,
            total: room.total,
        })
    }

    fn page_limit(&mut self, to: &To, limit: Option<u32>) -> Option<u32> {
        match limit {
            None => Some(PAGE_SIZES[0]),
            Some(limit) if PAGE_SIZES.contains(&limit) => Some(limit),
            Some(limit) => {
                self.error(
                    to,
                    ErrorCode::BadRequest,
                    format!("A page holds 50, 100, 200 or 500 messages, not {limit}."),
                );
                None
            }
        }
    }

    fn disconnected(&mut self, conn: ConnId) {
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        log::info!("{conn}: disconnected ({})", state.peer);
        if let Some(user) = state.user {
            self.sign_out(&user);
        }
    }

    /// Ends a connection from the hub's side: asks its writer to close with
    /// a reason and forgets it, signing its user out.
    fn drop_conn(&mut self, conn: ConnId, code: u16, reason: &str) {
        let Some(mut state) = self.conns.remove(&conn) else {
            return;
        };
        let user = state.user.take();
        self.mail.push(close_mail(conn, state, code, reason));
        if let Some(user) = user {
            self.sign_out(&user);
        }
    }

    fn sign_out(&mut self, user: &str) {
        let Some(online) = self.online.remove(user) else {
            return;
        };
        log::info!("{} signed out", online.name);
        if let Err(e) = self.store.touch_user(online.user_id, crate::now_ms()) {
            log::warn!(
                "storage: could not record when {} was last seen: {e}",
                online.name
            );
        }
        if let Some(room) = online.room {
            self.remove_member(user, &room);
            self.rooms_changed();
        }
    }

    fn close_all(&mut self, code: u16, reason: &str) {
        for (conn, state) in self.conns.drain() {
            self.mail.push(close_mail(conn, state, code, reason));
        }
        self.online.clear();
    }

    fn room_infos(&self) -> Vec<RoomInfo> {
        let mut rooms: Vec<RoomInfo> = self
            .rooms
            .values()
            .map(|r| RoomInfo {
                name: r.name.clone(),
                created_at: r.created_at,
                created_by: r.created_by.clone(),
                members: r.members.len(),
            })
            .collect();
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        rooms
    }

    /// Sends the room list to every signed-in connection; `requester` gets
    /// its copy with its `req`.
    fn broadcast_rooms(&mut self, requester: Option<&To>) {
        self.rooms_due = None;
        let frame = ServerFrame::Rooms {
            rooms: self.room_infos(),
        };
        let shared = encode(&frame);
        let targets: Vec<ConnId> = self.online.values().map(|o| o.conn).collect();
        for conn in targets {
            match requester {
                Some(to) if to.conn == conn => self.reply(to, &frame),
                _ => self.deliver(conn, shared.clone()),
            }
        }
    }

    fn member_conns(&self, room: &str) -> impl Iterator<Item = ConnId> + '_ {
        self.rooms
            .get(room)
            .into_iter()
            .flat_map(|r| r.members.keys())
            .filter_map(|user| self.online.get(user).map(|o| o.conn))
    }

    fn reply(&mut self, to: &To, frame: &ServerFrame) {
        let text = frame.encode(to.req);
        self.deliver(to.conn, Frame::text(&text));
    }

    fn error(&mut self, to: &To, code: ErrorCode, message: impl Into<String>) {
        self.reply(to, &ServerFrame::error(code, message));
    }

    fn no_such_room(&mut self, to: &To, raw: &str) {
        let message = format!("There is no room named {}.", raw.trim());
        self.error(to, ErrorCode::NoSuchRoom, message);
    }

    fn rate_limited(&mut self, to: &To, message: String, wait: Duration) {
        let frame = ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message,
            retry_after_ms: Some(wait.as_millis().max(1) as u64),
        };
        self.reply(to, &frame);
    }

    fn storage_failed(&mut self, to: &To, what: &str, e: &rusqlite::Error) {
        log::error!("storage: {what} failed for {}: {e}", to.conn);
        self.error(
            to,
            ErrorCode::StorageError,
            "The server could not read or save data. Try again later.",
        );
    }

    /// Sends a frame to a connection with the batch's mail. (A connection
    /// whose outbox is full has fallen too far behind: the post reports it
    /// and it is closed, so it can reconnect and catch up instead of holding
    /// everyone else up.)
    fn deliver(&mut self, conn: ConnId, frame: Frame) {
        if let Some(state) = self.conns.get(&conn) {
            self.mail
                .push(Mail::Frame(conn, state.outbox.clone(), frame));
        }
    }
}

/// Records an attempt in a sliding window and says how long to wait if the
/// attempt is over the limit (the attempt is then not recorded).
fn over_limit(
    window: &mut VecDeque<Instant>,
    now: Instant,
    span: Duration,
    limit: u32,
) -> Option<Duration> {
    while window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= span)
    {
        window.pop_front();
    }
    if window.len() >= limit as usize {
        let oldest = window.front().map_or(now, |t| *t);
        return Some(span - now.duration_since(oldest));
    }
    window.push_back(now);
    None
}

/// Mail that closes a connection the hub has forgotten.
fn close_mail(conn: ConnId, state: Conn, code: u16, reason: &str) -> Mail {
    Mail::Close {
        conn,
        outbox: state.outbox,
        commands_tx: state.commands_tx,
        command: Command::Close {
            code,
            reason: reason.to_string(),
        },
    }
}

fn encode(frame: &ServerFrame) -> Frame {
    Frame::text(&frame.encode(None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse_request;
    use crate::store::tests::temp_store;
    use serde_json::{Value, json};

    /// A hub driven by hand: events in, frames out, no threads or sockets.
    struct Harness {
        hub: Hub,
        _dir: crate::store::tests::tempdir::TempDir,
        outboxes: HashMap<u64, Outbox>,
    }

    impl Harness {
        fn new() -> Harness {
            let (dir, store) = temp_store();
            let config = Config {
                messages_per_second: 1000,
                ..Config::default()
            };
            Harness {
                hub: Hub::new(store, &config).unwrap(),
                _dir: dir,
                outboxes: HashMap::new(),
            }
        }

        fn connect(&mut self, n: u64) {
            let (outbox, _woken) = Outbox::new(None);
            let (commands_tx, _) = crossbeam_channel::unbounded();
            self.hub.handle(Event::Connected {
                conn: ConnId(n),
                peer: "127.0.0.1:1".parse().unwrap(),
                outbox: outbox.clone(),
                commands_tx,
            });
            self.outboxes.insert(n, outbox);
        }

        /// Hands a request to the hub without committing, as when more
        /// events are waiting on its channel.
        fn queue(&mut self, n: u64, frame: Value) {
            let request = parse_request(&frame.to_string()).unwrap();
            assert!(self.hub.handle(Event::Request {
                conn: ConnId(n),
                request
            }));
        }

        /// Hands a request over and ends the batch.
        fn request(&mut self, n: u64, frame: Value) {
            self.queue(n, frame);
            self.hub.end_batch();
        }

        fn frames(&mut self, n: u64) -> Vec<Value> {
            let outbox = &self.outboxes[&n];
            let mut frames = Vec::new();
            while let Some((frame, _)) = outbox.next(false) {
                outbox.written();
                frames.push(serde_json::from_str(frame.payload()).unwrap());
            }
            frames
        }

        fn sign_in(&mut self, n: u64, name: &str) {
            self.connect(n);
            self.request(n, json!({"type": "hello", "username": name}));
            self.request(n, json!({"type": "join", "room": "general"}));
            self.frames(n);
        }
    }

    fn send(id: &str, text: &str) -> Value {
        json!({"type": "send", "id": id, "text": text, "ts": crate::now_ms()})
    }

    #[test]
    fn a_client_that_stops_reading_is_dropped_and_the_room_sees_it_leave() {
        let mut h = Harness::new();
        h.sign_in(1, "alice");
        h.sign_in(2, "carol");
        h.sign_in(3, "bob");
        h.frames(1);
        h.frames(2);
        // Bob reads nothing while the others talk.
        let per_sender = crate::outbox::OUTBOX_FRAMES / 2 + 1;
        let mut seen_by_alice = Vec::new();
        for n in 0..per_sender {
            for sender in [1, 2] {
                h.request(sender, send(&format!("m{n}"), "hello"));
            }
            seen_by_alice.extend(h.frames(1));
            h.frames(2);
        }
        assert!(
            seen_by_alice
                .iter()
                .any(|f| f["type"] == "presence" && f["user"] == "bob" && f["state"] == "left"),
            "alice never saw bob leave"
        );
        assert!(h.hub.online.contains_key("alice"));
        assert!(!h.hub.online.contains_key("bob"), "bob is still signed in");
        assert!(!h.hub.conns.contains_key(&ConnId(3)));
        // What bob had not read is dropped, not kept.
        assert_eq!(h.outboxes[&3].queued(), 0);
        h.request(1, send("after", "still chatting"));
        let alice = h.frames(1);
        assert!(
            alice
                .iter()
                .any(|f| f["type"] == "ack" && f["id"] == "after"),
            "{alice:?}"
        );
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
        assert!(h.frames(1).is_empty(), "nothing is acked before the commit");
        assert!(h.frames(2).is_empty());
        h.hub.end_batch();
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
    fn member_count_changes_are_sent_as_one_room_list() {
        let mut h = Harness::new();
        h.connect(1);
        h.request(1, json!({"type": "hello", "username": "watcher"}));
        h.frames(1);
        for (n, name) in [(2, "a"), (3, "b"), (4, "c")] {
            h.sign_in(n, name);
        }
        assert!(h.frames(1).is_empty(), "the list waits for its deadline");
        let due = h.hub.rooms_due.expect("a list is due");
        assert!(due <= Instant::now() + ROOMS_COALESCE);
        // The deadline passes (the run loop wakes for it).
        h.hub.rooms_due = Some(Instant::now());
        h.hub.end_batch();
        let lists = h.frames(1);
        assert_eq!(lists.len(), 1, "{lists:?}");
        assert_eq!(lists[0]["type"], "rooms");
        assert_eq!(lists[0]["rooms"][0]["members"], 3);
        assert_eq!(h.hub.rooms_due, None);
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
        h.hub.end_batch();
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
}
