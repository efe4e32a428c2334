//! Reading: each signed-in user's read marks and unread counts per room,
//! `read`, the `unread` frames pushed when counts change, telling a room
//! who has read it how far (`read_by`), and saving the marks.
//!
//! Counting is lazy so that a message costs the same however many people
//! are signed in: a user's count in a room is what the store counted at a
//! base point, plus the room's messages since, minus the user's own since.
//! A commit only bumps the sender's own count and the mentioned users'
//! mention counts, and a deletion the counts of those who had not read the
//! message; the pushes compare every user's counts with what they were
//! last sent, at most once per [`PUSH_EVERY`] per user.
//!
//! Pushes are the hub's most frequent work after the messages themselves
//! (at 1,000 users in 50 busy rooms, about 39,000 `unread` frames a
//! second), so a user's counts are kept in a `Vec` by room slot rather than
//! a map, a push looks up only the users it is due for, and each frame is
//! encoded from its room's
//! [`UnreadTemplate`](crate::protocol::UnreadTemplate).

use std::time::{Duration, Instant};

use crate::frame::Frame;
use crate::protocol::{NameKey, RoomInfo, Seq, ServerFrame};
use crate::store::{MAX_UNREAD, ReadMark, RoomId, Store, UserId};
use crate::vocab::ConnId;

use super::FastMap;
use super::outgoing::{Outgoing, To, encode};
use super::rooms::{Room, Rooms};

/// The first push after a quiet while waits this long, so one batch's
/// messages (and the next few) go out as one count per room.
const PUSH_DELAY: Duration = Duration::from_millis(100);

/// Most often one user is pushed counts: a busy server costs each user at
/// most one `unread` frame per room this often.
pub(super) const PUSH_EVERY: Duration = Duration::from_secs(1);

/// A user's own share of up to half a second added to [`PUSH_EVERY`], so
/// that users pushed together once are pushed at different moments after:
/// on a busy server every user's counts change all the time, and pushing
/// them all in one batch would hold that batch's messages up.
fn spread(user: UserId) -> Duration {
    let hash = (user.0 as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    Duration::from_millis(hash >> 55)
}

/// Longest a moved read mark waits to be saved.
const SAVE_DELAY: Duration = Duration::from_secs(1);

/// Most often a room is told how far one user has read it.
pub(super) const SEEN_EVERY: Duration = Duration::from_secs(1);

/// One user's counts in one room.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    /// Read up to here.
    mark: Seq,
    /// Unread messages from others counted by the store at the base point.
    base_unread: u64,
    /// The room's message total at the base point.
    base_total: u64,
    /// The user's own messages in the room since the base point.
    own: u64,
    /// Messages from others after the mark deleted since the base point:
    /// counted in `base_unread` or in the room's total, and unread no more.
    deleted: u64,
    /// Unread messages that mention the user.
    mentions: u64,
    /// The counts last sent, None when never.
    sent: Option<(u64, u64)>,
}

impl Counts {
    /// Counts taken by the store now.
    fn based(mark: Seq, room: &Room, unread: u64, mentions: u64) -> Counts {
        Counts {
            mark,
            base_unread: unread,
            base_total: room.total,
            own: 0,
            deleted: 0,
            mentions,
            sent: None,
        }
    }

    /// (unread, mentions) now, each at most [`MAX_UNREAD`].
    fn now(&self, room: &Room) -> (u64, u64) {
        let since = room.total.saturating_sub(self.base_total);
        (
            (self.base_unread + since)
                .saturating_sub(self.own + self.deleted)
                .min(MAX_UNREAD),
            self.mentions.min(MAX_UNREAD),
        )
    }
}

/// A signed-in user's counts.
struct Reader {
    user_id: UserId,
    /// Display name.
    name: String,
    /// When the rooms were last told how far this user read.
    seen_at: Option<Instant>,
    /// By room slot ([`Room::slot`]). A slot past the end, or reset when
    /// its room was deleted, is a room created after the user signed in,
    /// so its base is all zeros.
    rooms: Vec<Counts>,
    /// When the user may be pushed counts again.
    next_push: Instant,
    /// [`Reading::changes`] when this user's counts were last compared
    /// with what they were sent: nothing changed while it is the same.
    compared_at: u64,
}

impl Reader {
    fn counts(&mut self, room: &Room) -> &mut Counts {
        if self.rooms.len() <= room.slot {
            self.rooms.resize(room.slot + 1, Counts::default());
        }
        &mut self.rooms[room.slot]
    }

    /// (unread, mentions) in `room` now.
    fn now(&self, room: &Room) -> (u64, u64) {
        self.rooms
            .get(room.slot)
            .copied()
            .unwrap_or_default()
            .now(room)
    }
}

/// Every signed-in user's read marks and counts.
#[derive(Default)]
pub(super) struct Reading {
    readers: FastMap<NameKey, Reader>,
    /// Marks moved and not yet saved.
    unsaved: FastMap<(UserId, RoomId), Seq>,
    /// When `unsaved` is due to be saved.
    pub save_due: Option<Instant>,
    /// When counts may have changed for someone; pushes are due.
    pub push_due: Option<Instant>,
    /// Marks moved that the rooms have not been told of yet, by user and
    /// room: only the newest of each is told.
    unseen: FastMap<(NameKey, RoomId), Seq>,
    /// When `unseen` is due to be told.
    pub seen_due: Option<Instant>,
    /// Messages committed and deleted since start-up: a push skips the
    /// users whose counts were compared since the last one.
    changes: u64,
    /// The `unread` frame being pushed, a buffer kept for the next.
    frame: String,
}

impl Reading {
    /// A user signed in: their marks and counts in every live room, from
    /// the store.
    pub fn signed_in(
        &mut self,
        store: &Store,
        rooms: &Rooms,
        user: &NameKey,
        user_id: UserId,
        name: &str,
    ) -> rusqlite::Result<()> {
        let mut marks: FastMap<RoomId, Seq> = store.read_marks(user_id)?.into_iter().collect();
        for (&(id, room), &seq) in &self.unsaved {
            if id == user_id {
                let mark = marks.entry(room).or_default();
                *mark = (*mark).max(seq);
            }
        }
        let mut counts = Vec::new();
        for room in rooms.iter() {
            let mark = marks.get(&room.id).copied().unwrap_or_default();
            let (unread, mentions) = if mark >= room.newest {
                (0, 0)
            } else {
                store.unread(user_id, room.id, mark)?
            };
            if counts.len() <= room.slot {
                counts.resize(room.slot + 1, Counts::default());
            }
            counts[room.slot] = Counts::based(mark, room, unread, mentions);
        }
        self.readers.insert(
            user.clone(),
            Reader {
                user_id,
                name: name.to_string(),
                seen_at: None,
                rooms: counts,
                next_push: Instant::now(),
                compared_at: self.changes,
            },
        );
        Ok(())
    }

    /// A user signed out: nothing more is counted for them in memory.
    pub fn signed_out(&mut self, user: &NameKey) {
        self.readers.remove(user);
        self.unseen.retain(|(key, _), _| key != user);
    }

    /// `user`'s read mark in `room`.
    pub fn mark(&self, user: &NameKey, room: &Room) -> Seq {
        self.readers
            .get(user)
            .and_then(|r| r.rooms.get(room.slot))
            .map(|c| c.mark)
            .unwrap_or_default()
    }

    /// The room list for `user`'s `welcome`: the counts they start from.
    pub fn room_list(&mut self, rooms: &Rooms, user: &NameKey) -> Vec<RoomInfo> {
        let mut reader = self.readers.get_mut(user);
        rooms.infos(|room| match reader.as_deref_mut() {
            Some(reader) => {
                let counts = reader.counts(room);
                let now = counts.now(room);
                counts.sent = Some(now);
                now
            }
            None => (0, 0),
        })
    }

    /// `user`'s (unread, mentions) by room, for a room list. A change is
    /// also pushed as an `unread` frame when a room list carried it first,
    /// so clients need only follow `unread` frames.
    pub fn counts(&self, user: &NameKey) -> impl Fn(&Room) -> (u64, u64) + '_ {
        let reader = self.readers.get(user);
        move |room| reader.map_or((0, 0), |reader| reader.now(room))
    }

    /// A message from `sender` was committed in `room`, mentioning
    /// `mentioned`; `room.total` already counts it.
    pub fn committed(&mut self, room: &Room, sender: &NameKey, mentioned: &[NameKey]) {
        if let Some(reader) = self.readers.get_mut(sender) {
            reader.counts(room).own += 1;
        }
        for user in mentioned {
            if user != sender
                && let Some(reader) = self.readers.get_mut(user)
            {
                reader.counts(room).mentions += 1;
            }
        }
        self.changed();
    }

    /// Message `seq` from `author` in `room` was deleted; it mentioned
    /// `mentioned`. It no longer counts for those who had not read it. A
    /// count at the store's cap stays there: the user is at least that far
    /// behind, and one fewer would say less than they have to read.
    pub fn message_deleted(&mut self, room: &Room, seq: Seq, author: UserId, mentioned: &[UserId]) {
        for reader in self.readers.values_mut() {
            if reader.user_id == author {
                continue;
            }
            let was_mentioned = mentioned.contains(&reader.user_id);
            let counts = reader.counts(room);
            if seq <= counts.mark {
                continue;
            }
            let before = (counts.deleted, counts.mentions);
            if counts.base_unread < MAX_UNREAD {
                counts.deleted += 1;
            }
            if was_mentioned && counts.mentions < MAX_UNREAD {
                counts.mentions = counts.mentions.saturating_sub(1);
            }
            if (counts.deleted, counts.mentions) != before {
                // Pushed even if the counts are back at what was last
                // pushed: a room list may have carried them higher since
                // (room lists do not count as pushes).
                counts.sent = None;
            }
        }
        self.changed();
    }

    /// Makes a push due now for every user, however recently pushed.
    #[cfg(test)]
    pub fn push_everyone_now(&mut self) {
        let now = Instant::now();
        self.push_due = Some(now);
        for reader in self.readers.values_mut() {
            reader.next_push = now;
        }
    }

    /// Counts may have changed for anyone: pushes are due soon.
    fn changed(&mut self) {
        self.changes += 1;
        self.push_due
            .get_or_insert_with(|| Instant::now() + PUSH_DELAY);
    }

    /// Answers `read`: the mark moves forward (never back, never past the
    /// room's newest message) and the user gets their new counts.
    pub fn read(
        &mut self,
        store: &Store,
        out: &mut Outgoing,
        to: &To,
        user: &NameKey,
        room: &Room,
        seq: Seq,
    ) {
        let Some(reader) = self.readers.get_mut(user) else {
            return;
        };
        let (user_id, seen_at) = (reader.user_id, reader.seen_at);
        let counts = reader.counts(room);
        let mark = seq.min(room.newest);
        if mark > counts.mark {
            let (unread, mentions) = if mark == room.newest {
                (0, 0)
            } else {
                match store.unread(user_id, room.id, mark) {
                    Ok(counts) => counts,
                    Err(e) => return out.storage_failed(to, "counting unread messages", &e),
                }
            };
            let sent = counts.sent;
            *counts = Counts {
                sent,
                ..Counts::based(mark, room, unread, mentions)
            };
            let unsaved = self.unsaved.entry((user_id, room.id)).or_default();
            *unsaved = (*unsaved).max(mark);
            let now = Instant::now();
            self.save_due.get_or_insert(now + SAVE_DELAY);
            // The room hears of it now, or once this user's last news is
            // a second old.
            self.unseen.insert((user.clone(), room.id), mark);
            let when = seen_at.map_or(now, |at| (at + SEEN_EVERY).max(now));
            self.seen_due = Some(self.seen_due.map_or(when, |due| due.min(when)));
        }
        let (unread, mentions) = counts.now(room);
        counts.sent = Some((unread, mentions));
        out.reply(
            to,
            &ServerFrame::Unread {
                room: room.name.clone(),
                unread,
                mentions,
            },
        );
    }

    /// Pushes changed counts to every signed-in user who may be pushed now,
    /// for each room they are not in. `conn_of` gives a user's connection
    /// (None while their session waits for them to come back); it is asked
    /// only about the users due, as a push runs after nearly every batch on
    /// a busy server and most users are not due then.
    pub fn push(
        &mut self,
        rooms: &Rooms,
        conn_of: impl Fn(&NameKey) -> Option<ConnId>,
        out: &mut Outgoing,
        now: Instant,
    ) {
        let Reading {
            readers,
            push_due,
            changes,
            frame,
            ..
        } = self;
        *push_due = None;
        for (user, reader) in readers.iter_mut() {
            if reader.compared_at == *changes {
                continue;
            }
            if reader.next_push > now {
                // Pushed recently: later.
                let next = reader.next_push;
                *push_due = Some(push_due.map_or(next, |due| due.min(next)));
                continue;
            }
            // Checked after the times, so that only the users due are looked
            // up; one whose connection is lost may thus cost the hub one
            // wake-up for nothing.
            let Some(conn) = conn_of(user) else {
                continue;
            };
            reader.compared_at = *changes;
            let here = rooms
                .room_of(user)
                .and_then(|key| rooms.get(key))
                .map(|r| r.slot);
            let mut pushed = false;
            for room in rooms.iter() {
                if Some(room.slot) == here {
                    continue;
                }
                let counts = reader.counts(room);
                let now_counts = counts.now(room);
                if counts.sent == Some(now_counts) {
                    continue;
                }
                counts.sent = Some(now_counts);
                pushed = true;
                let (unread, mentions) = now_counts;
                // From the room's template: a busy server pushes tens of
                // thousands of these a second.
                room.unread.encode(unread, mentions, frame);
                out.frame(conn, Frame::text(frame));
            }
            if pushed {
                reader.next_push = now + PUSH_EVERY + spread(reader.user_id);
            }
        }
    }

    /// Tells each room's members (but the reader) how far users whose
    /// marks moved have read it, at most once per [`SEEN_EVERY`] per user.
    pub fn tell_seen(&mut self, rooms: &Rooms, out: &mut Outgoing, now: Instant) {
        self.seen_due = None;
        let mut later: Option<Instant> = None;
        let readers = &mut self.readers;
        let mut told: Vec<NameKey> = Vec::new();
        self.unseen.retain(|(user, room_id), seq| {
            let Some(reader) = readers.get(user) else {
                return false;
            };
            if let Some(at) = reader.seen_at
                && at + SEEN_EVERY > now
                && !told.contains(user)
            {
                let when = at + SEEN_EVERY;
                later = Some(later.map_or(when, |l| l.min(when)));
                return true;
            }
            if let Some(room) = rooms.by_id(*room_id) {
                let frame = encode(&ServerFrame::ReadBy {
                    room: room.name.clone(),
                    user: reader.name.clone(),
                    seq: *seq,
                });
                for conn in room.conns_except(user) {
                    out.frame(conn, frame.clone());
                }
            }
            told.push(user.clone());
            false
        });
        for user in told {
            if let Some(reader) = readers.get_mut(&user) {
                reader.seen_at = Some(now);
            }
        }
        self.seen_due = later;
    }

    /// Saves the marks moved since the last save; on failure they are kept
    /// for the next try.
    pub fn save(&mut self, store: &mut Store, out: &mut Outgoing) {
        self.save_due = None;
        if self.unsaved.is_empty() {
            return;
        }
        let marks: Vec<ReadMark> = self
            .unsaved
            .iter()
            .map(|(&(user, room), &seq)| ReadMark { user, room, seq })
            .collect();
        match store.save_read_marks(&marks) {
            Ok(()) => self.unsaved.clear(),
            Err(e) => {
                out.metrics.storage_error();
                log::warn!("storage: could not save {} read mark(s): {e}", marks.len());
                self.save_due = Some(Instant::now() + SAVE_DELAY);
            }
        }
    }

    /// A room was deleted: forget everyone's counts in it, so that a room
    /// given its slot next starts from zeros.
    pub fn room_deleted(&mut self, room: &Room) {
        for reader in self.readers.values_mut() {
            if let Some(counts) = reader.rooms.get_mut(room.slot) {
                *counts = Counts::default();
            }
        }
    }
}
