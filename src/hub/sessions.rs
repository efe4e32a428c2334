//! Sessions: every connection the hub knows, who is signed in on which,
//! `hello` (sign-in and resume), the deadline for saying hello, the grace
//! period a session outlives its connection by, and signing out.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::protocol::{
    Checked, ErrorCode, Limits as WireLimits, MAX_TEXT_CHARS, NameKey, PAGE_SIZES, ServerFrame,
    Username, join_code_matches, now_ms,
};
use crate::store::{Store, UserId};
use crate::vocab::{ConnId, close};

use super::FastMap;
use super::limits::{self, Bucket, Limits, Refusal};
use super::outgoing::{Outgoing, To};
use super::reading::Reading;
use super::rooms::Rooms;

/// Wrong join codes one connection may send before it is closed.
const MAX_WRONG_CODES: u32 = 3;

/// How long a new connection has to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection the hub knows.
struct Connection {
    peer: SocketAddr,
    /// The signed-in user's key once a hello succeeded.
    user: Option<NameKey>,
    /// What it may still ask before it signs in (then its user's budget
    /// counts).
    budget: Option<Bucket>,
    /// Wrong join codes it has sent.
    wrong_codes: u32,
}

/// A signed-in user.
pub(super) struct Online {
    pub key: NameKey,
    pub user_id: UserId,
    /// Display name: the casing first used.
    pub name: String,
    /// The connection their mail goes to (while `away_until` is set, the
    /// one that was lost).
    pub conn: ConnId,
    /// The resume token.
    session: String,
    /// Set when their connection was lost: the session ends then unless
    /// resumed.
    away_until: Option<Instant>,
}

/// Every connection and every signed-in user.
pub(super) struct Sessions {
    /// Most distinct users online at once.
    max_users: usize,
    /// Most users online at once from one address; None: no limit.
    max_users_per_ip: Option<usize>,
    /// What `hello` must carry to sign in under a new session; None: nothing.
    join_code: Option<String>,
    /// How long a session outlives a lost connection.
    grace: Duration,
    /// Sessions whose connection was lost, oldest first, with when they
    /// end. Entries of sessions resumed meanwhile are skipped.
    away_deadlines: VecDeque<(Instant, NameKey)>,
    conns: FastMap<ConnId, Connection>,
    /// Connections that have not said hello yet, oldest first, with their
    /// deadlines. Entries of connections that have since signed in or gone
    /// are skipped when they come up.
    hello_deadlines: VecDeque<(Instant, ConnId)>,
    online: FastMap<NameKey, Online>,
}

/// What a request's connection is, for the dispatch.
pub(super) enum Caller<'a> {
    /// The hub does not know the connection (it was closed meanwhile).
    Gone,
    Anonymous,
    SignedIn(&'a Online),
}

impl Sessions {
    pub fn new(
        max_users: usize,
        max_users_per_ip: Option<usize>,
        join_code: Option<String>,
        grace: Duration,
    ) -> Sessions {
        Sessions {
            max_users,
            max_users_per_ip,
            join_code,
            grace,
            away_deadlines: VecDeque::new(),
            conns: FastMap::default(),
            hello_deadlines: VecDeque::new(),
            online: FastMap::default(),
        }
    }

    /// A new connection: it has [`HELLO_TIMEOUT`] to sign in.
    pub fn connected(&mut self, conn: ConnId, peer: SocketAddr) {
        log::info!("{conn}: connected from {peer}");
        self.conns.insert(
            conn,
            Connection {
                peer,
                user: None,
                budget: None,
                wrong_codes: 0,
            },
        );
        self.hello_deadlines
            .push_back((Instant::now() + HELLO_TIMEOUT, conn));
    }

    pub fn knows(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    pub fn caller(&self, conn: ConnId) -> Caller<'_> {
        match self.conns.get(&conn) {
            None => Caller::Gone,
            Some(Connection { user: None, .. }) => Caller::Anonymous,
            Some(Connection {
                user: Some(user), ..
            }) => Caller::SignedIn(&self.online[user]),
        }
    }

    /// Spends from the request budget of a connection that has not signed
    /// in yet.
    pub fn charge(
        &mut self,
        conn: ConnId,
        settings: &limits::Settings,
        cost: u32,
        now: Instant,
    ) -> Result<(), Refusal> {
        let Some(connection) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        connection
            .budget
            .get_or_insert_with(|| Bucket::full(settings, now))
            .spend(settings, cost, now)
            .map_err(limits::over_budget)
    }

    /// How many distinct users are signed in.
    pub fn online_count(&self) -> usize {
        self.online.len()
    }

    /// Charges the request budget of a connection that has not signed in
    /// yet `units` after the fact (see `Bucket::owe`).
    pub fn owe(&mut self, conn: ConnId, settings: &limits::Settings, units: u32, now: Instant) {
        if let Some(connection) = self.conns.get_mut(&conn) {
            connection
                .budget
                .get_or_insert_with(|| Bucket::full(settings, now))
                .owe(settings, units, now);
        }
    }

    /// `user`'s live connection, if they are signed in and it is not lost.
    pub fn conn_of(&self, user: &NameKey) -> Option<ConnId> {
        self.online
            .get(user)
            .filter(|o| o.away_until.is_none())
            .map(|o| o.conn)
    }

    /// Every signed-in user with a live connection, and that connection.
    pub fn connected_users(&self) -> impl Iterator<Item = (&NameKey, ConnId)> + '_ {
        self.online
            .values()
            .filter(|o| o.away_until.is_none())
            .map(|o| (&o.key, o.conn))
    }

    /// When the first session waiting for its user ends.
    pub fn next_away_deadline(&mut self) -> Option<Instant> {
        while let Some((deadline, user)) = self.away_deadlines.front() {
            if self
                .online
                .get(user)
                .is_some_and(|o| o.away_until == Some(*deadline))
            {
                return Some(*deadline);
            }
            self.away_deadlines.pop_front();
        }
        None
    }

    /// Ends the sessions whose users did not come back in time.
    pub fn expire_away(
        &mut self,
        store: &Store,
        rooms: &mut Rooms,
        reading: &mut Reading,
        out: &mut Outgoing,
        now: Instant,
    ) {
        while let Some((deadline, _)) = self.away_deadlines.front() {
            if *deadline > now {
                break;
            }
            let (deadline, user) = self.away_deadlines.pop_front().expect("BUG: peeked");
            if self
                .online
                .get(&user)
                .is_some_and(|o| o.away_until == Some(deadline))
            {
                log::info!("{}'s session ended: they did not come back", user.as_str());
                self.sign_out(store, rooms, reading, out, &user);
            }
        }
    }

    /// The oldest hello deadline still pending.
    pub fn next_hello_deadline(&mut self) -> Option<Instant> {
        while let Some(&(deadline, conn)) = self.hello_deadlines.front() {
            if self.conns.get(&conn).is_some_and(|c| c.user.is_none()) {
                return Some(deadline);
            }
            self.hello_deadlines.pop_front();
        }
        None
    }

    /// Connections whose hello deadline has passed without a hello.
    pub fn expired_hellos(&mut self, now: Instant) -> Vec<ConnId> {
        let mut expired = Vec::new();
        while let Some(&(deadline, conn)) = self.hello_deadlines.front() {
            if deadline > now {
                break;
            }
            self.hello_deadlines.pop_front();
            if self.conns.get(&conn).is_some_and(|c| c.user.is_none()) {
                expired.push(conn);
            }
        }
        expired
    }

    /// Answers `hello`: a new sign-in, or the resume of a live session.
    #[allow(clippy::too_many_arguments)]
    pub fn hello(
        &mut self,
        store: &Store,
        rooms: &mut Rooms,
        reading: &mut Reading,
        limits: &mut Limits,
        out: &mut Outgoing,
        to: &To,
        username: Checked<Username>,
        resume: Option<String>,
        code: Option<String>,
    ) {
        let peer = self.conns[&to.conn].peer;
        let Username { name, key } = match username {
            Ok(username) => username,
            Err(message) => {
                log::info!("{}: login refused from {peer}: invalid username", to.conn);
                return out.error(to, ErrorCode::InvalidUsername, message);
            }
        };
        let resuming = self
            .online
            .get(&key)
            .is_some_and(|online| resume.as_deref() == Some(online.session.as_str()));
        // A live session's token is proof enough; anything else needs the
        // join code, before it learns anything (even who is online).
        if !resuming && !self.join_code_ok(store, rooms, reading, limits, out, to, code) {
            return;
        }
        if let Some(online) = self.online.get(&key)
            && !resuming
        {
            if online.away_until.is_none() {
                log::info!(
                    "{}: login refused from {peer}: {name} is already online",
                    to.conn
                );
                let message = format!("{} is already signed in. Choose another name.", online.name);
                return out.error(to, ErrorCode::UsernameTaken, message);
            }
            // A session waiting for a lost connection, and a sign-in without
            // its token: the old session ends, and this is a new one.
            self.sign_out(store, rooms, reading, out, &key);
        }
        if let Some(online) = self.online.get_mut(&key) {
            // Resume: the new connection takes over the session, its room and
            // its presence; the others in the room see no change.
            online.away_until = None;
            let old = std::mem::replace(&mut online.conn, to.conn);
            let (name, session) = (online.name.clone(), online.session.clone());
            if let Some(old_conn) = self.conns.get_mut(&old) {
                old_conn.user = None;
            }
            self.drop_conn(
                store,
                rooms,
                reading,
                out,
                old,
                close::REPLACED,
                "signed in again from another connection",
            );
            self.conns
                .get_mut(&to.conn)
                .expect("BUG: the caller checked the conn")
                .user = Some(key.clone());
            rooms.reconnect(&key, to.conn);
            log::info!(
                "{}: {name} resumed their session from {peer} (replacing {old})",
                to.conn
            );
            let room = rooms
                .room_of(&key)
                .and_then(|r| rooms.get(r))
                .map(|r| r.name.clone());
            return welcome(rooms, reading, limits, out, to, &key, name, session, room);
        }
        if self.online.len() >= self.max_users {
            log::warn!(
                "{}: login refused from {peer}: server full ({} users)",
                to.conn,
                self.max_users
            );
            return out.error(
                to,
                ErrorCode::ServerFull,
                format!(
                    "The server is full ({} people are online). Try again later.",
                    self.max_users
                ),
            );
        }
        if let Some(most) = self.max_users_per_ip {
            let here = self
                .online
                .values()
                .filter(|o| {
                    self.conns
                        .get(&o.conn)
                        .is_some_and(|c| c.peer.ip() == peer.ip())
                })
                .count();
            if here >= most {
                log::warn!(
                    "{}: login refused from {peer}: {here} users already signed in from there",
                    to.conn
                );
                let message = format!(
                    "{most} people from your address are already signed in, the most this \
                     server allows. Try again later."
                );
                return out.error(to, ErrorCode::ServerFull, message);
            }
        }
        match store.user_exists(&key) {
            Ok(true) => {}
            Ok(false) => {
                if let Err(refusal) = limits.new_user(peer.ip(), Instant::now()) {
                    log::warn!("{}: login refused from {peer}: too many new names", to.conn);
                    return out.rate_limited(to, refusal.message, refusal.wait);
                }
            }
            Err(e) => return out.storage_failed(to, "looking up a user", &e),
        }
        let user = match store.login_user(&name, now_ms()) {
            Ok(user) => user,
            Err(e) => return out.storage_failed(to, "recording a login", &e),
        };
        if let Err(e) = reading.signed_in(store, rooms, &key, user.id, &user.name) {
            return out.storage_failed(to, "reading read marks", &e);
        }
        let session = crate::random::token();
        self.online.insert(
            key.clone(),
            Online {
                key: key.clone(),
                user_id: user.id,
                name: user.name.clone(),
                conn: to.conn,
                session: session.clone(),
                away_until: None,
            },
        );
        self.conns
            .get_mut(&to.conn)
            .expect("BUG: the caller checked the conn")
            .user = Some(key.clone());
        log::info!("{}: {} signed in from {peer}", to.conn, user.name);
        welcome(
            rooms, reading, limits, out, to, &key, user.name, session, None,
        );
    }

    /// Checks `hello`'s join code, answering it when it is missing or
    /// wrong; after [`MAX_WRONG_CODES`] wrong ones the connection is closed.
    #[allow(clippy::too_many_arguments)]
    fn join_code_ok(
        &mut self,
        store: &Store,
        rooms: &mut Rooms,
        reading: &mut Reading,
        limits: &mut Limits,
        out: &mut Outgoing,
        to: &To,
        code: Option<String>,
    ) -> bool {
        let Some(expected) = &self.join_code else {
            return true;
        };
        let peer = self.conns[&to.conn].peer;
        let Some(sent) = code else {
            out.error(
                to,
                ErrorCode::JoinCodeRequired,
                "This chat needs a join code. Ask whoever runs it for the code or the link.",
            );
            return false;
        };
        let now = Instant::now();
        if let Err(refusal) = limits.may_try_join_code(peer.ip(), now) {
            log::warn!(
                "{}: join code refused from {peer}: too many wrong ones",
                to.conn
            );
            out.rate_limited(to, refusal.message, refusal.wait);
            return false;
        }
        if join_code_matches(&sent, expected) {
            return true;
        }
        limits.wrong_join_code(peer.ip(), now);
        log::warn!("{}: wrong join code from {peer}", to.conn);
        out.error(to, ErrorCode::BadJoinCode, "That join code is not right.");
        let connection = self
            .conns
            .get_mut(&to.conn)
            .expect("BUG: the caller checked the conn");
        connection.wrong_codes += 1;
        if connection.wrong_codes >= MAX_WRONG_CODES {
            self.drop_conn(
                store,
                rooms,
                reading,
                out,
                to.conn,
                close::POLICY,
                "too many wrong join codes",
            );
        }
        false
    }

    /// The connection's reader ended: forget it; its user's session waits
    /// for them (see [`Sessions::lost`]).
    pub fn disconnected(
        &mut self,
        store: &Store,
        rooms: &mut Rooms,
        reading: &mut Reading,
        out: &mut Outgoing,
        conn: ConnId,
    ) {
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        log::info!("{conn}: disconnected ({})", state.peer);
        out.forget(conn);
        if let Some(user) = state.user {
            self.lost(store, rooms, reading, out, &user);
        }
    }

    /// Ends a connection from the hub's side: closes it with a reason and
    /// forgets it; its user's session waits for them.
    #[allow(clippy::too_many_arguments)]
    pub fn drop_conn(
        &mut self,
        store: &Store,
        rooms: &mut Rooms,
        reading: &mut Reading,
        out: &mut Outgoing,
        conn: ConnId,
        code: u16,
        reason: &str,
    ) {
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        out.close(conn, code, reason);
        if let Some(user) = state.user {
            self.lost(store, rooms, reading, out, &user);
        }
    }

    /// A signed-in user's connection is gone without a `sign_out`: their
    /// session, room and presence stay for the grace period, for a `hello`
    /// with the resume token to take back; then it ends.
    fn lost(
        &mut self,
        store: &Store,
        rooms: &mut Rooms,
        reading: &mut Reading,
        out: &mut Outgoing,
        user: &NameKey,
    ) {
        if self.grace.is_zero() {
            return self.sign_out(store, rooms, reading, out, user);
        }
        let Some(online) = self.online.get_mut(user) else {
            return;
        };
        let until = Instant::now() + self.grace;
        online.away_until = Some(until);
        self.away_deadlines.push_back((until, user.clone()));
        log::info!(
            "{}'s connection was lost; their session waits {:?} for them",
            online.name,
            self.grace
        );
    }

    /// Answers `sign_out`: the session ends now and the connection is
    /// closed.
    pub fn sign_out_request(
        &mut self,
        store: &Store,
        rooms: &mut Rooms,
        reading: &mut Reading,
        out: &mut Outgoing,
        to: &To,
    ) {
        let Some(user) = self.conns.get_mut(&to.conn).and_then(|c| c.user.take()) else {
            return;
        };
        self.sign_out(store, rooms, reading, out, &user);
        out.reply(to, &ServerFrame::SignedOut);
        self.drop_conn(
            store,
            rooms,
            reading,
            out,
            to.conn,
            close::NORMAL,
            "signed out",
        );
    }

    fn sign_out(
        &mut self,
        store: &Store,
        rooms: &mut Rooms,
        reading: &mut Reading,
        out: &mut Outgoing,
        user: &NameKey,
    ) {
        let Some(online) = self.online.remove(user) else {
            return;
        };
        reading.signed_out(user);
        log::info!("{} signed out", online.name);
        if let Err(e) = store.touch_user(online.user_id, now_ms()) {
            out.metrics.storage_error();
            log::warn!(
                "storage: could not record when {} was last seen: {e}",
                online.name
            );
        }
        rooms.signed_out(user, out);
    }

    /// Closes every connection (at shutdown).
    pub fn close_all(&mut self, out: &mut Outgoing, code: u16, reason: &str) {
        for (conn, _) in self.conns.drain() {
            out.close(conn, code, reason);
        }
        self.online.clear();
    }

    /// Whether `user` is signed in (for tests of the hub).
    #[cfg(test)]
    pub fn is_online(&self, user: &str) -> bool {
        self.online.contains_key(&NameKey::of(user))
    }
}

#[allow(clippy::too_many_arguments)]
fn welcome(
    rooms: &Rooms,
    reading: &mut Reading,
    limits: &Limits,
    out: &mut Outgoing,
    to: &To,
    user: &NameKey,
    username: String,
    session: String,
    room: Option<String>,
) {
    let frame = ServerFrame::Welcome {
        username,
        session,
        room,
        rooms: reading.room_list(rooms, user),
        limits: WireLimits {
            max_text_chars: MAX_TEXT_CHARS,
            page_sizes: PAGE_SIZES,
            messages_per_second: limits.settings.messages_per_second,
            room_switches_per_minute: limits.settings.room_switches_per_minute,
            requests_per_second: limits.settings.requests_per_second,
            request_burst: limits.settings.request_burst,
            max_rooms: rooms.max_rooms(),
            room_changes_per_10_minutes: limits.settings.room_changes_per_10_minutes,
        },
    };
    out.reply(to, &frame);
    // From now on the socket is someone's: it is not dropped to make room.
    out.signed_in(to.conn);
}
