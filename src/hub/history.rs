//! History: pages of a room's messages, for `history` requests and for the
//! page a `join` carries.

use crate::protocol::{Checked, ErrorCode, Page, PageQuery, RoomRef, ServerFrame};
use crate::store::Store;

use super::outgoing::{Outgoing, To};
use super::rooms::{Room, Rooms};

/// Answers a `history` request: a page of a live room.
pub(super) fn history(
    store: &Store,
    rooms: &Rooms,
    out: &mut Outgoing,
    to: &To,
    room: &RoomRef,
    limit: Checked<u32>,
    query: Checked<PageQuery>,
) {
    let (limit, query) = match (limit, query) {
        (Ok(limit), Ok(query)) => (limit, query),
        (Err(message), _) | (_, Err(message)) => {
            return out.error(to, ErrorCode::BadRequest, message);
        }
    };
    let Some(live) = rooms.get(&room.key) else {
        return out.no_such_room(to, &room.typed);
    };
    match read_page(store, live, query, limit) {
        Ok(page) => out.reply(to, &ServerFrame::History(page)),
        Err(e) => out.storage_failed(to, "loading history", &e),
    }
}

/// Reads one page of a room's history.
pub(super) fn read_page(
    store: &Store,
    room: &Room,
    query: PageQuery,
    limit: u32,
) -> rusqlite::Result<Page> {
    let rows = store.page(room.id, &room.name, query, limit)?;
    Ok(Page {
        room: room.name.clone(),
        messages: rows.messages,
        has_older: rows.has_older,
        has_newer: rows.has_newer,
        total: room.total,
    })
}
