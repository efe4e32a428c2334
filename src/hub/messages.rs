//! Sending: checking a `send` against the hub's state, and the group
//! commit. Sends wait in the pending batch until the batch ends (or another
//! request needs everything before it stored); then they are stored in one
//! transaction and only after it acked and broadcast.

use std::collections::HashMap;
use std::time::Instant;

use crate::protocol::{
    ChatMessage, Checked, ClientMsgId, ErrorCode, NameKey, ServerFrame, message_ts, now_ms,
};
use crate::store::{NewMessage, Store};
use crate::vocab::ConnId;

use super::limits::Limits;
use super::outgoing::{Outgoing, To, encode};
use super::rooms::Rooms;
use super::sessions::Online;

/// A checked send waiting for the batch commit.
struct PendingSend {
    conn: ConnId,
    req: Option<String>,
    from: String,
    room: NameKey,
    message: NewMessage,
}

/// A repeat of a send that is still in the pending batch; acked with it.
struct PendingRepeat {
    conn: ConnId,
    req: Option<String>,
    index: usize,
}

/// The pending batch.
#[derive(Default)]
pub(super) struct Sends {
    pending: Vec<PendingSend>,
    /// Index into `pending` by sender and client id, to spot retries of a
    /// send that is not stored yet.
    pending_ids: HashMap<(NameKey, ClientMsgId), usize>,
    pending_repeats: Vec<PendingRepeat>,
    /// True while storage writes fail; errors are logged once per incident.
    storage_failing: bool,
}

impl Sends {
    /// Answers `send`: a retry of a stored message is acked again at once;
    /// a new message joins the pending batch.
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
        // A repeated id is a retry: answer with the original ack whatever the
        // text, and store nothing.
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
        match store.find_sent(user.user_id, &id.0) {
            Ok(Some(sent)) => {
                let ack = ServerFrame::Ack {
                    id: id.0,
                    room: sent.room,
                    seq: sent.seq,
                    ts: sent.ts,
                };
                return out.reply(&to, &ack);
            }
            Ok(None) => {}
            Err(e) => return out.storage_failed(&to, "checking for a repeated message", &e),
        }
        let Some(room_key) = rooms.room_of(&user.key) else {
            return out.error(
                &to,
                ErrorCode::NotInRoom,
                "Join a room before sending messages.",
            );
        };
        let text = match text {
            Ok(text) => text,
            Err(message) => return out.error(&to, ErrorCode::InvalidMessage, message),
        };
        if let Err(refusal) = limits.send(&user.key, Instant::now()) {
            log::warn!("{}: {} hit the message rate limit", user.conn, user.name);
            return out.rate_limited(&to, refusal.message, refusal.wait);
        }
        let now = now_ms();
        let (ts, skew) = message_ts(ts, now);
        if let Some(seconds) = skew {
            log::warn!(
                "{}: client clock is {seconds} s off; using the server's clock",
                user.conn
            );
        }
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
                received_at: now,
            },
        });
    }

    /// Stores the pending batch in one transaction, then acks and broadcasts
    /// it; on failure every sender in the batch gets `storage_error`.
    pub fn commit(&mut self, store: &mut Store, rooms: &mut Rooms, out: &mut Outgoing) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let repeats = std::mem::take(&mut self.pending_repeats);
        self.pending_ids.clear();
        let started = Instant::now();
        let stored = store.insert_messages(pending.iter().map(|p| &p.message));
        out.metrics
            .committed(pending.len(), started.elapsed(), stored.is_ok());
        let seqs = match stored {
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
        for (p, seq) in pending.into_iter().zip(seqs) {
            let room = rooms
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
