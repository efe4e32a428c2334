//! Sending: checking a `send` against the hub's state, and the group
//! commit. Sends wait in the pending batch until the batch ends (or another
//! request needs everything before it stored); then they are stored in one
//! transaction and only after it acked and broadcast.

use std::time::Instant;

use crate::protocol::{
    ChatMessage, Checked, ClientMsgId, ErrorCode, NameKey, ServerFrame, mention_candidates,
    message_ts, now_ms,
};
use crate::store::{NewMessage, Store, Stored, UserId};
use crate::vocab::ConnId;

use super::FastMap;
use super::limits::{self, Limits};
use super::outgoing::{Outgoing, To, encode};
use super::reading::Reading;
use super::rooms::Rooms;
use super::sessions::Online;

/// A checked send waiting for the batch commit.
struct PendingSend {
    conn: ConnId,
    req: Option<String>,
    from: String,
    room: NameKey,
    message: NewMessage,
    /// The sender and when the rate limit counted this send, to take it
    /// back if the commit finds a retry.
    user: NameKey,
    counted_at: Instant,
    /// The keys of the users it mentions.
    mentioned: Vec<NameKey>,
    /// How far off the client's clock was, for the log, in seconds.
    skew: Option<i64>,
}

/// A repeat of a send that is still in the pending batch; acked with it.
struct PendingRepeat {
    conn: ConnId,
    req: Option<String>,
    index: usize,
}

/// Why a send would be refused, unless it turns out to be a retry.
enum Refusal {
    Error(ErrorCode, String),
    RateLimited(limits::Refusal),
}

/// The pending batch.
#[derive(Default)]
pub(super) struct Sends {
    pending: Vec<PendingSend>,
    /// Index into `pending` by sender and client id, to spot retries of a
    /// send that is not stored yet.
    pending_ids: FastMap<(NameKey, ClientMsgId), usize>,
    pending_repeats: Vec<PendingRepeat>,
    /// True while storage writes fail; errors are logged once per incident.
    storage_failing: bool,
}

impl Sends {
    /// Answers `send`: a new message joins the pending batch; a retry of a
    /// stored one is acked again with the original.
    ///
    /// A send that passes every check goes into the batch without looking
    /// for an original: the batch insert spots retries itself (see
    /// `Store::insert_messages`), which spares each new message a read of
    /// its own. A send that would be refused is first looked up, because a
    /// retry is acked whatever else is wrong with it.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        store: &Store,
        rooms: &Rooms,
        limits: &mut Limits,
        out: &mut Outgoing,
        req: Option<&str>,
        user: &Online,
        id: Checked<ClientMsgId>,
        text: Checked<String>,
        ts: Option<i64>,
    ) {
        let to = To {
            conn: user.conn,
            req,
        };
        let id = match id {
            Ok(id) => id,
            Err(message) => return out.error(&to, ErrorCode::InvalidMessage, message),
        };
        let pending_key = (user.key.clone(), id);
        if let Some(&index) = self.pending_ids.get(&pending_key) {
            self.pending_repeats.push(PendingRepeat {
                conn: user.conn,
                req: req.map(str::to_string),
                index,
            });
            return;
        }
        let (_, id) = pending_key;
        let now = Instant::now();
        let checked = match (rooms.room_of(&user.key), text) {
            (None, _) => Err(Refusal::Error(
                ErrorCode::NotInRoom,
                "Join a room before sending messages.".into(),
            )),
            (Some(_), Err(message)) => Err(Refusal::Error(ErrorCode::InvalidMessage, message)),
            (Some(room), Ok(text)) => match limits.send(&user.key, now) {
                Ok(()) => Ok((room, text)),
                Err(refusal) => Err(Refusal::RateLimited(refusal)),
            },
        };
        let (room_key, text) = match checked {
            Ok(checked) => checked,
            Err(refusal) => return self.refuse(store, out, &to, user, &id, refusal),
        };
        let (mentions, mentioned) = match mentions(store, &text) {
            Ok(found) => found,
            Err(e) => return out.storage_failed(&to, "looking up mentioned users", &e),
        };
        let received_at = now_ms();
        let (ts, skew) = message_ts(ts, received_at);
        let room = rooms
            .get(room_key)
            .expect("BUG: a user is only ever in a live room");
        self.pending_ids
            .insert((user.key.clone(), id.clone()), self.pending.len());
        self.pending.push(PendingSend {
            conn: user.conn,
            req: req.map(str::to_string),
            from: user.name.clone(),
            room: room_key.clone(),
            message: NewMessage {
                room_id: room.id,
                user_id: user.user_id,
                client_id: id.0,
                text,
                ts,
                received_at,
                mentions,
            },
            user: user.key.clone(),
            counted_at: now,
            mentioned,
            skew,
        });
    }

    /// Answers a send that failed a check: with the original's ack if it is
    /// a retry, else with the refusal.
    fn refuse(
        &mut self,
        store: &Store,
        out: &mut Outgoing,
        to: &To,
        user: &Online,
        id: &ClientMsgId,
        refusal: Refusal,
    ) {
        match store.find_sent(user.user_id, &id.0) {
            Ok(Some(sent)) => {
                let ack = ServerFrame::Ack {
                    id: id.0.clone(),
                    room: sent.room,
                    seq: sent.seq,
                    ts: sent.ts,
                };
                out.reply(to, &ack);
            }
            Ok(None) => match refusal {
                Refusal::Error(code, message) => out.error(to, code, message),
                Refusal::RateLimited(refusal) => {
                    log::warn!("{}: {} hit the message rate limit", user.conn, user.name);
                    out.rate_limited(to, refusal.message, refusal.wait);
                }
            },
            Err(e) => out.storage_failed(to, "checking for a repeated message", &e),
        }
    }

    /// Stores the pending batch in one transaction, then acks and broadcasts
    /// it; on failure every sender in the batch gets `storage_error`.
    pub fn commit(
        &mut self,
        store: &mut Store,
        rooms: &mut Rooms,
        reading: &mut Reading,
        limits: &mut Limits,
        out: &mut Outgoing,
    ) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        let repeats = std::mem::take(&mut self.pending_repeats);
        self.pending_ids.clear();
        let started = Instant::now();
        let stored = store.insert_messages(pending.iter().map(|p| &p.message));
        // Retries found by the insert stored nothing.
        let new = stored.as_ref().map_or(pending.len(), |stored| {
            stored
                .iter()
                .filter(|s| matches!(s, Stored::New(_)))
                .count()
        });
        out.metrics
            .committed(new, started.elapsed(), stored.is_ok());
        let stored = match stored {
            Ok(stored) => stored,
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
                for (conn, req) in failed {
                    out.reply(&To { conn, req }, &error);
                }
                return;
            }
        };
        if self.storage_failing {
            log::info!("storage: writes work again");
            self.storage_failing = false;
        }
        let mut acks = Vec::with_capacity(pending.len());
        for (p, stored) in pending.drain(..).zip(stored) {
            let seq = match stored {
                Stored::New(seq) => seq,
                Stored::Repeat(original) => {
                    // A retry of a message stored earlier: its original
                    // ack, nothing stored or broadcast, and the send not
                    // counted against the rate limit.
                    limits.refund_send(&p.user, p.counted_at);
                    let ack = ServerFrame::Ack {
                        id: p.message.client_id,
                        room: original.room,
                        seq: original.seq,
                        ts: original.ts,
                    };
                    let to = To {
                        conn: p.conn,
                        req: p.req.as_deref(),
                    };
                    out.reply(&to, &ack);
                    acks.push(ack);
                    continue;
                }
            };
            if let Some(seconds) = p.skew {
                log::warn!(
                    "{}: client clock is {seconds} s off; using the server's clock",
                    p.conn
                );
            }
            let room = rooms
                .get_mut(&p.room)
                .expect("BUG: deleting a room commits the pending batch first");
            room.total += 1;
            room.newest = seq;
            reading.committed(room, &p.user, &p.mentioned);
            let message = ChatMessage {
                room: room.name.clone(),
                seq,
                id: p.message.client_id,
                from: p.from,
                text: p.message.text,
                ts: p.message.ts,
                edited_at: None,
                deleted: false,
                mentions: p
                    .message
                    .mentions
                    .into_iter()
                    .map(|(_, name)| name)
                    .collect(),
            };
            let ack = ServerFrame::Ack {
                id: message.id.clone(),
                room: message.room.clone(),
                seq,
                ts: message.ts,
            };
            out.reply(
                &To {
                    conn: p.conn,
                    req: p.req.as_deref(),
                },
                &ack,
            );
            let frame = encode(&ServerFrame::Message(message));
            for conn in rooms.member_conns(&p.room) {
                out.frame(conn, frame.clone());
            }
            acks.push(ack);
        }
        // Emptied, its room is kept for the next batch: grown anew for each
        // batch, it took a few large allocations per batch, each of which
        // has malloc sweep its lists of small free chunks (the frames).
        self.pending = pending;
        for r in repeats {
            out.reply(
                &To {
                    conn: r.conn,
                    req: r.req.as_deref(),
                },
                &acks[r.index],
            );
        }
    }
}

/// The users a text mentions (see [`mention_candidates`]) that exist: their
/// ids and display names for the store, and their keys.
#[allow(clippy::type_complexity)]
fn mentions(store: &Store, text: &str) -> rusqlite::Result<(Vec<(UserId, String)>, Vec<NameKey>)> {
    let mut found = (Vec::new(), Vec::new());
    if !text.contains('@') {
        return Ok(found);
    }
    for key in mention_candidates(text) {
        if let Some(user) = store.find_user(&key)?
            && !found.0.iter().any(|(id, _)| *id == user.id)
        {
            found.0.push((user.id, user.name));
            found.1.push(key);
        }
    }
    Ok(found)
}
