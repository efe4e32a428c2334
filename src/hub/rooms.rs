//! Rooms: the live rooms, who is in which, presence, and the room list
//! every signed-in client is sent when rooms or member counts change.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::frame::Frame;
use crate::protocol::{
    Checked, ErrorCode, NameKey, Page, PresenceState, RoomInfo, RoomList, RoomName, RoomRef, Seq,
    ServerFrame, UnreadTemplate, now_ms,
};
use crate::store::{RoomId, Store};
use crate::vocab::ConnId;

use super::FastMap;
use super::history::join_page;
use super::limits::Limits;
use super::outgoing::{Outgoing, To, encode};
use super::reading::Reading;
use super::sessions::Online;

/// Longest a member count change waits to be sent in a room list.
pub(super) const ROOMS_COALESCE: Duration = Duration::from_millis(100);

/// Someone in a room.
struct Member {
    /// Display name.
    name: String,
    /// Where their mail goes (changes when they resume their session).
    conn: ConnId,
}

/// A live room.
pub(super) struct Room {
    pub id: RoomId,
    /// Display name, as created.
    pub name: String,
    created_at: i64,
    created_by: Option<String>,
    /// The users present, by key.
    members: BTreeMap<NameKey, Member>,
    /// Messages stored in the room, for pages' `total`.
    pub total: u64,
    /// Its newest message's seq; 0 when it has none.
    pub newest: Seq,
    /// A small number no other live room has, below the number of live
    /// rooms when it was made: where each user's counts in this room are
    /// kept (see `Reading`). A deleted room's slot is given to the next.
    pub slot: usize,
    /// Its `unread` frames but for the counts.
    pub unread: UnreadTemplate,
}

impl Room {
    /// Where the members get their mail, but `except`.
    pub fn conns_except<'a>(&'a self, except: &'a NameKey) -> impl Iterator<Item = ConnId> + 'a {
        self.members
            .iter()
            .filter(move |(key, _)| *key != except)
            .map(|(_, m)| m.conn)
    }
}

/// The live rooms and who is in them.
pub(super) struct Rooms {
    rooms: BTreeMap<NameKey, Room>,
    /// Most live rooms: every room is in every room list and welcome.
    max_rooms: usize,
    /// The room each signed-in user is in, if any, by user key.
    whereabouts: FastMap<NameKey, NameKey>,
    /// The room each user was in when their last session ended: going back
    /// there is not a room switch.
    left_behind: FastMap<NameKey, NameKey>,
    /// When the room list is due, after a member count changed.
    pub list_due: Option<Instant>,
}

impl Rooms {
    /// The live rooms from the store, all empty.
    pub fn load(store: &Store, max_rooms: usize) -> rusqlite::Result<Rooms> {
        let rooms = store
            .live_rooms()?
            .into_iter()
            .enumerate()
            .map(|(slot, r)| {
                let room = Room {
                    id: r.id,
                    unread: UnreadTemplate::new(&r.name),
                    name: r.name,
                    created_at: r.created_at,
                    created_by: r.created_by,
                    members: BTreeMap::new(),
                    total: r.message_count,
                    newest: r.newest,
                    slot,
                };
                (NameKey::of(&room.name), room)
            })
            .collect();
        Ok(Rooms {
            rooms,
            max_rooms,
            whereabouts: FastMap::default(),
            left_behind: FastMap::default(),
            list_due: None,
        })
    }

    /// Most live rooms.
    pub fn max_rooms(&self) -> usize {
        self.max_rooms
    }

    /// Every live room.
    pub fn iter(&self) -> impl Iterator<Item = &Room> {
        self.rooms.values()
    }

    pub fn get(&self, key: &NameKey) -> Option<&Room> {
        self.rooms.get(key)
    }

    pub fn get_mut(&mut self, key: &NameKey) -> Option<&mut Room> {
        self.rooms.get_mut(key)
    }

    /// The lowest slot no live room has.
    fn free_slot(&self) -> usize {
        let mut taken = vec![false; self.rooms.len()];
        for room in self.rooms.values() {
            if let Some(taken) = taken.get_mut(room.slot) {
                *taken = true;
            }
        }
        // With n live rooms, one of the slots 0..=n is free.
        taken
            .iter()
            .position(|taken| !taken)
            .unwrap_or(self.rooms.len())
    }

    /// The live room with this id.
    pub fn by_id(&self, id: RoomId) -> Option<&Room> {
        self.rooms.values().find(|r| r.id == id)
    }

    /// Relays `typing` to the others in `user`'s room; nothing when they
    /// are in none.
    pub fn typing(&self, out: &mut Outgoing, user: &Online) {
        let Some(room) = self.room_of(&user.key).and_then(|key| self.rooms.get(key)) else {
            return;
        };
        let frame = encode(&ServerFrame::Typing {
            room: room.name.clone(),
            user: user.name.clone(),
        });
        for conn in room.conns_except(&user.key) {
            out.frame(conn, frame.clone());
        }
    }

    /// The key of the room `user` is in.
    pub fn room_of(&self, user: &NameKey) -> Option<&NameKey> {
        self.whereabouts.get(user)
    }

    /// Where the members of room `key` get their mail.
    pub fn member_conns(&self, key: &NameKey) -> impl Iterator<Item = ConnId> + '_ {
        self.rooms
            .get(key)
            .into_iter()
            .flat_map(|r| r.members.values().map(|m| m.conn))
    }

    /// A resumed session: `user`'s mail now goes to `conn`.
    pub fn reconnect(&mut self, user: &NameKey, conn: ConnId) {
        if let Some(room) = self.whereabouts.get(user)
            && let Some(member) = self
                .rooms
                .get_mut(room)
                .and_then(|r| r.members.get_mut(user))
        {
            member.conn = conn;
        }
    }

    /// A member count changed: the room list goes out within
    /// [`ROOMS_COALESCE`]. A burst of joins (every page reconnecting after a
    /// restart) thus costs each client a few lists rather than one per join;
    /// presence itself is never delayed.
    fn changed(&mut self) {
        self.list_due
            .get_or_insert_with(|| Instant::now() + ROOMS_COALESCE);
    }

    /// The room list, sorted by name, with one user's (unread, mentions)
    /// in each room as `counts` gives them.
    pub fn infos(&self, mut counts: impl FnMut(&Room) -> (u64, u64)) -> Vec<RoomInfo> {
        self.sorted()
            .into_iter()
            .map(|r| {
                let (unread, mentions) = counts(r);
                RoomInfo {
                    name: r.name.clone(),
                    created_at: r.created_at,
                    created_by: r.created_by.clone(),
                    members: r.members.len(),
                    unread,
                    mentions,
                }
            })
            .collect()
    }

    /// The live rooms in list order: by display name.
    fn sorted(&self) -> Vec<&Room> {
        let mut rooms: Vec<&Room> = self.rooms.values().collect();
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        rooms
    }

    /// Sends the room list to every signed-in user (`online`), each with
    /// their own counts; `requester` gets its copy with its `req`.
    pub fn send_list<'a>(
        &mut self,
        online: impl Iterator<Item = (&'a NameKey, ConnId)>,
        reading: &mut Reading,
        out: &mut Outgoing,
        requester: Option<&To>,
    ) {
        self.list_due = None;
        // Encoded once but for the counts: a list goes to everyone at once.
        let template = RoomList::new(&self.infos(|_| (0, 0)));
        let order = self.sorted();
        for (user, conn) in online {
            let req = requester.filter(|to| to.conn == conn).and_then(|to| to.req);
            let counts_in = reading.counts(user);
            let counts = order.iter().map(|room| counts_in(room));
            out.frame(conn, Frame::text(&template.encode(counts, req)));
        }
    }

    /// Answers `create_room`.
    pub fn create(
        &mut self,
        store: &Store,
        limits: &mut Limits,
        out: &mut Outgoing,
        to: &To,
        user: &Online,
        room: Checked<RoomName>,
    ) -> bool {
        let RoomName { name, key } = match room {
            Ok(room) => room,
            Err(message) => {
                out.error(to, ErrorCode::InvalidRoomName, message);
                return false;
            }
        };
        if let Some(room) = self.rooms.get(&key) {
            let message = format!("A room named {} already exists.", room.name);
            out.error(to, ErrorCode::RoomExists, message);
            return false;
        }
        if self.rooms.len() >= self.max_rooms {
            let message = format!(
                "This server has {} rooms, the most it allows. Delete one first.",
                self.max_rooms
            );
            out.error(to, ErrorCode::TooManyRooms, message);
            return false;
        }
        if let Err(refusal) = limits.room_change(&user.key, Instant::now()) {
            log::warn!("{}: {} hit the room creation limit", to.conn, user.name);
            out.rate_limited(to, refusal.message, refusal.wait);
            return false;
        }
        let now = now_ms();
        let id = match store.create_room(&name, user.user_id, now) {
            Ok(id) => id,
            Err(e) => {
                out.storage_failed(to, "creating a room", &e);
                return false;
            }
        };
        log::info!("{}: {} created room {name}", to.conn, user.name);
        let slot = self.free_slot();
        self.rooms.insert(
            key,
            Room {
                id,
                unread: UnreadTemplate::new(&name),
                name,
                created_at: now,
                created_by: Some(user.name.clone()),
                members: BTreeMap::new(),
                total: 0,
                newest: Seq(0),
                slot,
            },
        );
        true
    }

    /// Answers `delete_room`; true when the room is gone (the caller then
    /// sends the new room list).
    #[allow(clippy::too_many_arguments)]
    pub fn delete(
        &mut self,
        store: &Store,
        reading: &mut Reading,
        limits: &mut Limits,
        out: &mut Outgoing,
        to: &To,
        user: &Online,
        room: &RoomRef,
    ) -> bool {
        let Some(live) = self.rooms.get(&room.key) else {
            out.no_such_room(to, &room.typed);
            return false;
        };
        if let Err(refusal) = limits.room_change(&user.key, Instant::now()) {
            log::warn!("{}: {} hit the room deletion limit", to.conn, user.name);
            out.rate_limited(to, refusal.message, refusal.wait);
            return false;
        }
        if let Err(e) = store.delete_room(live.id, now_ms()) {
            out.storage_failed(to, "deleting a room", &e);
            return false;
        }
        let live = self.rooms.remove(&room.key).expect("BUG: looked up above");
        reading.room_deleted(&live);
        log::info!("{}: {} deleted room {}", to.conn, user.name, live.name);
        let deleted = encode(&ServerFrame::RoomDeleted {
            room: live.name.clone(),
        });
        for (member, Member { conn, .. }) in live.members {
            self.whereabouts.remove(&member);
            out.frame(conn, deleted.clone());
        }
        true
    }

    /// Answers `join`: leaves the current room first unless it is the same
    /// one, which changes nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &mut self,
        store: &Store,
        reading: &Reading,
        limits: &mut Limits,
        out: &mut Outgoing,
        to: &To,
        user: &Online,
        room: &RoomRef,
        limit: Checked<u32>,
    ) {
        let limit = match limit {
            Ok(limit) => limit,
            Err(message) => return out.error(to, ErrorCode::BadRequest, message),
        };
        let key = &room.key;
        let Some(live) = self.rooms.get(key) else {
            return out.no_such_room(to, &room.typed);
        };
        let history = match join_page(store, live, limit) {
            Ok(page) => page,
            Err(e) => return out.storage_failed(to, "loading history", &e),
        };
        let read_seq = reading.mark(&user.key, live);
        if self.whereabouts.get(&user.key) == Some(key) {
            return out.reply(to, &self.joined_frame(key, history, read_seq, reading));
        }
        // Going back to the room a lost connection was in is no switch.
        let back = self.left_behind.get(&user.key) == Some(key);
        if !back && let Err(refusal) = limits.switch(&user.key, Instant::now()) {
            log::warn!("{}: {} hit the room switch rate limit", to.conn, user.name);
            return out.rate_limited(to, refusal.message, refusal.wait);
        }
        self.left_behind.remove(&user.key);
        if let Some(previous) = self.whereabouts.get(&user.key).cloned() {
            self.remove_member(&user.key, &previous, out);
        }
        self.whereabouts.insert(user.key.clone(), key.clone());
        let live = self.rooms.get_mut(key).expect("BUG: looked up above");
        live.members.insert(
            user.key.clone(),
            Member {
                name: user.name.clone(),
                conn: user.conn,
            },
        );
        log::info!("{}: {} joined {}", user.conn, user.name, live.name);
        let presence = encode(&ServerFrame::Presence {
            room: live.name.clone(),
            user: user.name.clone(),
            state: PresenceState::Joined,
        });
        // The others also hear how far the newcomer has read the room, so
        // their pages know whom a message has been seen by.
        let seen = encode(&ServerFrame::ReadBy {
            room: live.name.clone(),
            user: user.name.clone(),
            seq: read_seq,
        });
        let others: Vec<ConnId> = self.member_conns(key).filter(|c| *c != user.conn).collect();
        out.reply(to, &self.joined_frame(key, history, read_seq, reading));
        for other in others {
            out.frame(other, presence.clone());
            out.frame(other, seen.clone());
        }
        self.changed();
    }

    fn joined_frame(
        &self,
        key: &NameKey,
        history: Page,
        read_seq: Seq,
        reading: &Reading,
    ) -> ServerFrame {
        let room = &self.rooms[key];
        ServerFrame::Joined {
            room: room.name.clone(),
            members: room.members.values().map(|m| m.name.clone()).collect(),
            history,
            read_seq,
            read_by: room
                .members
                .iter()
                .map(|(user, m)| (m.name.clone(), reading.mark(user, room)))
                .collect(),
        }
    }

    /// Answers `leave`.
    pub fn leave(&mut self, out: &mut Outgoing, to: &To, user: &NameKey) {
        let Some(key) = self.whereabouts.get(user).cloned() else {
            return out.error(to, ErrorCode::NotInRoom, "You are not in a room.");
        };
        let name = self.rooms[&key].name.clone();
        self.remove_member(user, &key, out);
        self.whereabouts.remove(user);
        out.reply(to, &ServerFrame::Left { room: name });
        self.changed();
    }

    /// `user`'s session ended: they leave their room, if any, and may come
    /// back to it later without it counting as a switch.
    pub fn signed_out(&mut self, user: &NameKey, out: &mut Outgoing) {
        if let Some(room) = self.whereabouts.remove(user) {
            self.remove_member(user, &room, out);
            self.left_behind.insert(user.clone(), room);
            self.changed();
        }
    }

    /// Takes `user` out of room `key` and tells the members left behind.
    fn remove_member(&mut self, user: &NameKey, key: &NameKey, out: &mut Outgoing) {
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        let Some(member) = room.members.remove(user) else {
            return;
        };
        log::info!("{} left {}", member.name, room.name);
        let presence = encode(&ServerFrame::Presence {
            room: room.name.clone(),
            user: member.name,
            state: PresenceState::Left,
        });
        for conn in self.member_conns(key) {
            out.frame(conn, presence.clone());
        }
    }
}
