//! History: pages of a room's messages, for `history` requests and for the
//! page a `join` carries.
//!
//! A `history` page is not built here: the hub checks the request and the
//! room, and hands the page builder ([`crate::pages`]) a
//! [`PageJob`](crate::vocab::PageJob) through its mail. A page can be
//! megabytes, and reading and encoding it on the hub's thread would stall
//! everyone else's messages meanwhile. A `join`'s page is built here, since
//! it must reach the client before the room's next message does, and is
//! bounded in bytes for that reason.

use crate::protocol::{Checked, ErrorCode, Page, PageQuery, RoomRef};
use crate::store::Store;
use crate::vocab::{PageJob, Permit};

use super::outgoing::{Outgoing, To};
use super::rooms::{Room, Rooms};

/// Answers a `history` request: a page of a live room, built by the page
/// builder, which holds the connection's slot of `permit` until it is sent.
pub(super) fn history(
    rooms: &Rooms,
    out: &mut Outgoing,
    to: &To,
    room: &RoomRef,
    limit: Checked<u32>,
    query: Checked<PageQuery>,
    permit: Permit,
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
    out.page(PageJob {
        conn: to.conn,
        req: to.req.map(str::to_string),
        room_id: live.id,
        room: live.name.clone(),
        query,
        limit,
        slot: permit.into_conn_slot(),
    });
}

/// Most bytes of message text in a `join`'s page: the hub reads and
/// encodes it on its own thread, so its size is bounded however large the
/// room's messages are (500 ordinary messages are about 100 KB; a room of
/// the largest ones shows its newest 32, and the rest come page by page
/// from the page builder).
pub(super) const JOIN_PAGE_BYTES: usize = 512 * 1024;

/// Reads the page a `join` carries: the newest, up to `limit` messages and
/// [`JOIN_PAGE_BYTES`] of text.
pub(super) fn join_page(store: &Store, room: &Room, limit: u32) -> rusqlite::Result<Page> {
    let rows = store.newest_page(room.id, &room.name, limit, JOIN_PAGE_BYTES)?;
    Ok(rows.into_page(room.name.clone(), room.total))
}
