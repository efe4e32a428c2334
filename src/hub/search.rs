//! Search: the newest messages of live rooms that contain every word of a
//! query, a page at a time.

use crate::protocol::{Checked, ErrorCode, RoomRef, SearchQuery, Seq, ServerFrame};
use crate::store::Store;

use super::outgoing::{Outgoing, To};
use super::rooms::Rooms;

/// Answers `search`: in one live room if it names one, else in all.
#[allow(clippy::too_many_arguments)]
pub(super) fn search(
    store: &Store,
    rooms: &Rooms,
    out: &mut Outgoing,
    to: &To,
    query: Checked<SearchQuery>,
    room: Option<RoomRef>,
    limit: Checked<u32>,
    before: Option<Seq>,
) {
    let (query, limit) = match (query, limit) {
        (Ok(query), Ok(limit)) => (query, limit),
        (Err(message), _) | (_, Err(message)) => {
            return out.error(to, ErrorCode::BadRequest, message);
        }
    };
    let room = match &room {
        None => None,
        Some(named) => match rooms.get(&named.key) {
            Some(live) => Some(live),
            None => return out.no_such_room(to, &named.typed),
        },
    };
    match store.search(&query.words, room.map(|r| r.id), before, limit) {
        Ok(rows) => out.reply(
            to,
            &ServerFrame::SearchResults {
                query: query.sent,
                room: room.map(|r| r.name.clone()),
                messages: rows.messages,
                has_more: rows.has_more,
            },
        ),
        Err(e) => out.storage_failed(to, "searching", &e),
    }
}
