//! Edits and deletions: an author replacing or erasing the text of one of
//! their own messages. Each is stored (its own transaction) before anyone
//! hears of it; then every member of the message's room is told, and the
//! author gets the same frame as the reply, wherever they are.
//!
//! Both spend the author's message budget. A message is only ever edited
//! after it is stored and acked: any request but a send commits the
//! pending batch first, and its acks go out before the reply to the edit.

use std::time::Instant;

use crate::protocol::{Checked, ErrorCode, NameKey, Seq, ServerFrame, now_ms};
use crate::store::Store;

use super::limits::Limits;
use super::outgoing::{Outgoing, To, encode};
use super::reading::Reading;
use super::rooms::Rooms;
use super::sessions::Online;

/// Answers `edit`.
#[allow(clippy::too_many_arguments)]
pub(super) fn edit(
    store: &mut Store,
    rooms: &Rooms,
    limits: &mut Limits,
    out: &mut Outgoing,
    to: &To,
    user: &Online,
    seq: Seq,
    text: Checked<String>,
) {
    let Some(room) = own_message(store, rooms, out, to, user, seq, "edit") else {
        return;
    };
    let text = match text {
        Ok(text) => text,
        Err(message) => return out.error(to, ErrorCode::InvalidMessage, message),
    };
    if !spend(limits, out, to, user) {
        return;
    }
    let edited_at = now_ms();
    match store.edit_message(seq, &text, edited_at) {
        Ok(true) => {
            let frame = ServerFrame::Edited {
                room: room.name,
                seq,
                text,
                edited_at,
            };
            tell_room(rooms, out, to, &room.key, &frame);
        }
        Ok(false) => no_such_message(out, to, seq),
        Err(e) => out.storage_failed(to, "editing a message", &e),
    }
}

/// Answers `delete_message`. The message stops counting as unread (and as
/// a mention) for those who had not read it.
#[allow(clippy::too_many_arguments)]
pub(super) fn delete(
    store: &mut Store,
    rooms: &Rooms,
    reading: &mut Reading,
    limits: &mut Limits,
    out: &mut Outgoing,
    to: &To,
    user: &Online,
    seq: Seq,
) {
    let Some(room) = own_message(store, rooms, out, to, user, seq, "delete") else {
        return;
    };
    if !spend(limits, out, to, user) {
        return;
    }
    match store.delete_message(seq, now_ms()) {
        Ok(Some(mentioned)) => {
            if let Some(live) = rooms.get(&room.key) {
                reading.message_deleted(live, seq, user.user_id, &mentioned);
            }
            let frame = ServerFrame::MessageDeleted {
                room: room.name,
                seq,
            };
            tell_room(rooms, out, to, &room.key, &frame);
        }
        Ok(None) => no_such_message(out, to, seq),
        Err(e) => out.storage_failed(to, "deleting a message", &e),
    }
}

/// The live room a message is in.
struct MessageRoom {
    key: NameKey,
    /// Its display name.
    name: String,
}

/// The live room of message `seq`, if `user` wrote it and it is not
/// deleted; else the requester is told why not.
fn own_message(
    store: &Store,
    rooms: &Rooms,
    out: &mut Outgoing,
    to: &To,
    user: &Online,
    seq: Seq,
    verb: &str,
) -> Option<MessageRoom> {
    let record = match store.message(seq) {
        Ok(record) => record,
        Err(e) => {
            out.storage_failed(to, "looking up a message", &e);
            return None;
        }
    };
    let Some(record) = record.filter(|r| !r.deleted && !r.room_deleted) else {
        no_such_message(out, to, seq);
        return None;
    };
    // Rooms are kept by the key of their name; the id tells a room from
    // an earlier, deleted one of the same name.
    let key = NameKey::of(&record.room);
    let Some(room) = rooms.get(&key).filter(|room| room.id == record.room_id) else {
        no_such_message(out, to, seq);
        return None;
    };
    if record.author != user.user_id {
        out.error(
            to,
            ErrorCode::Forbidden,
            format!("Only its author may {verb} a message."),
        );
        return None;
    }
    Some(MessageRoom {
        name: room.name.clone(),
        key,
    })
}

fn no_such_message(out: &mut Outgoing, to: &To, seq: Seq) {
    out.error(
        to,
        ErrorCode::NoSuchMessage,
        format!("There is no message {} in a live room.", seq.0),
    );
}

/// Spends one message of the user's budget, or tells them to wait.
fn spend(limits: &mut Limits, out: &mut Outgoing, to: &To, user: &Online) -> bool {
    match limits.send(&user.key, Instant::now()) {
        Ok(()) => true,
        Err(refusal) => {
            log::warn!("{}: {} hit the message rate limit", user.conn, user.name);
            out.rate_limited(to, refusal.message, refusal.wait);
            false
        }
    }
}

/// `frame` to every member of room `key`; the requester gets it as the
/// reply, with its `req`, whether it is in the room or not.
fn tell_room(rooms: &Rooms, out: &mut Outgoing, to: &To, key: &NameKey, frame: &ServerFrame) {
    let shared = encode(frame);
    for conn in rooms.member_conns(key) {
        if conn != to.conn {
            out.frame(conn, shared.clone());
        }
    }
    out.reply(to, frame);
}
