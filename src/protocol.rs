//! The wire protocol: every JSON frame a client may send or receive, and the
//! validation rules for the names and text inside them.
//!
//! Parsing and checking happen on the connection's reader thread: a text
//! frame becomes a [`Request`] (its shape checked), and [`Request::check`]
//! applies every rule that needs no state (name shapes, text length, control
//! characters, page sizes), as pure functions. The hub only ever sees
//! [`CheckedRequest`]s, and only decides what needs its state.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use unicode_security::{
    GeneralSecurityProfile, RestrictionLevel, RestrictionLevelDetection, skeleton,
};

/// Longest message text, in Unicode scalar values.
pub const MAX_TEXT_CHARS: usize = 4000;
/// Longest username, in Unicode scalar values.
pub const MAX_USERNAME_CHARS: usize = 32;
/// Longest room name, in Unicode scalar values.
pub const MAX_ROOM_CHARS: usize = 64;
/// Longest client message id, in Unicode scalar values.
pub const MAX_CLIENT_ID_CHARS: usize = 64;
/// Longest `req` correlation string a client may attach.
pub const MAX_REQ_CHARS: usize = 128;
/// The page sizes a history request may ask for; the first is the default.
pub const PAGE_SIZES: [u32; 4] = [50, 100, 200, 500];
/// Longest search query, in Unicode scalar values.
pub const MAX_QUERY_CHARS: usize = 200;
/// Most messages one search reply may hold; [`DEFAULT_SEARCH_LIMIT`] when
/// the request names none.
pub const MAX_SEARCH_LIMIT: u32 = 100;
/// Messages in a search reply when the request names no `limit`.
pub const DEFAULT_SEARCH_LIMIT: u32 = 50;
/// Largest WebSocket message (and frame) accepted; larger ones close the
/// connection with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// A client `ts` further than this from the server's clock is replaced.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// Milliseconds since the Unix epoch on the server's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A message's place in the global order: assigned at commit, strictly
/// increasing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Seq(pub i64);

/// The identity of a username or room name (see [`name_key`]): names that
/// differ only in case or in look-alike characters have the same key. Never
/// shown to people; the display name is kept beside it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NameKey(String);

impl NameKey {
    /// The key of a (trimmed) name.
    pub fn of(name: &str) -> NameKey {
        NameKey(name_key(name))
    }

    /// The folded text, as stored in the database.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A username that passed [`validate_username`], with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username {
    /// As typed, trimmed.
    pub name: String,
    /// Its identity.
    pub key: NameKey,
}

/// A new room's name that passed [`validate_room_name`], with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomName {
    /// As typed, trimmed.
    pub name: String,
    /// Its identity.
    pub key: NameKey,
}

/// A room named by a request, to be looked up by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRef {
    /// The identity looked up.
    pub key: NameKey,
    /// As typed, trimmed, for "there is no room named …".
    pub typed: String,
}

impl RoomRef {
    fn new(raw: &str) -> RoomRef {
        let typed = raw.trim().to_string();
        RoomRef {
            key: NameKey::of(&typed),
            typed,
        }
    }
}

/// A client's id for one of its messages, checked by [`validate_client_id`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientMsgId(pub String);

/// A frame's position in a room's `(ts, seq)` order, used as a page cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The message's `ts`.
    pub ts: i64,
    /// The message's `seq` (as on the wire: any number).
    pub seq: i64,
}

/// One client request as it arrives, shape-checked (the README's Protocol
/// section says what each means).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(missing_docs)] // The fields are the wire protocol's, documented there.
pub enum ClientFrame {
    /// Sign in, or resume a live session with its token.
    Hello {
        username: String,
        #[serde(default)]
        resume: Option<String>,
        #[serde(default)]
        code: Option<String>,
    },
    /// Create a room.
    CreateRoom { room: String },
    /// Delete a room.
    DeleteRoom { room: String },
    /// Enter a room (leaving the current one) with its newest page.
    Join {
        room: String,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Leave the current room.
    Leave,
    /// Send a message to the current room.
    Send {
        id: String,
        text: String,
        #[serde(default)]
        ts: Option<i64>,
    },
    /// Read a page of a room's history.
    History {
        room: String,
        #[serde(default)]
        limit: Option<u32>,
        #[serde(default)]
        before: Option<Cursor>,
        #[serde(default)]
        after: Option<Cursor>,
        #[serde(default)]
        since_seq: Option<i64>,
        #[serde(default)]
        around: Option<Cursor>,
    },
    /// Replace the text of one of your own messages.
    Edit { seq: i64, text: String },
    /// Erase one of your own messages.
    DeleteMessage { seq: i64 },
    /// Find messages in live rooms by their words.
    Search {
        query: String,
        #[serde(default)]
        room: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
        #[serde(default)]
        before_seq: Option<i64>,
    },
    /// Ask for a `pong`.
    Ping,
    /// End the session now: presence left, the resume token void.
    SignOut,
    /// The user has seen `room` up to `seq`.
    Read { room: String, seq: i64 },
    /// The user is typing in their room.
    Typing,
}

/// Every `type` a client may send.
const FRAME_TYPES: [&str; 14] = [
    "hello",
    "create_room",
    "delete_room",
    "join",
    "leave",
    "send",
    "history",
    "edit",
    "delete_message",
    "search",
    "ping",
    "sign_out",
    "read",
    "typing",
];

/// A client frame together with its optional `req` correlation string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The client's correlation string, echoed in the reply.
    pub req: Option<String>,
    /// The request itself.
    pub frame: ClientFrame,
}

/// Why a text frame could not be turned into a [`Request`]; answered with a
/// `bad_request` error that echoes `req` when it could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    /// The frame's `req`, when it could be read.
    pub req: Option<String>,
    /// What is wrong, for people.
    pub message: String,
}

/// Parses one text frame. Unknown extra fields are ignored, so clients may add
/// their own bookkeeping; missing or mistyped fields are errors.
pub fn parse_request(text: &str) -> Result<Request, BadRequest> {
    let bad = |req: Option<String>, message: String| BadRequest { req, message };
    let mut value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| bad(None, format!("The frame is not valid JSON: {e}.")))?;
    let Some(object) = value.as_object_mut() else {
        return Err(bad(None, "A frame must be a JSON object.".into()));
    };
    let req = match object.remove("req") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.chars().count() <= MAX_REQ_CHARS => Some(s),
        Some(_) => {
            return Err(bad(
                None,
                format!("\"req\" must be a string of at most {MAX_REQ_CHARS} characters."),
            ));
        }
    };
    let kind = match object.get("type") {
        Some(serde_json::Value::String(kind)) => kind.clone(),
        Some(_) => return Err(bad(req, "\"type\" must be a string.".into())),
        None => return Err(bad(req, "The frame has no \"type\".".into())),
    };
    if !FRAME_TYPES.contains(&kind.as_str()) {
        return Err(bad(req, format!("Unknown frame type \"{kind}\".")));
    }
    match serde_json::from_value::<ClientFrame>(value) {
        Ok(frame) => Ok(Request { req, frame }),
        Err(e) => Err(bad(req, format!("Invalid \"{kind}\" frame: {e}."))),
    }
}

/// The outcome of one stateless rule: the checked value, or the sentence
/// telling the client what is wrong. The hub answers an `Err` at the point
/// where the rule's check stood among its own, so the order of errors a
/// client sees does not depend on where a rule runs.
pub type Checked<T> = Result<T, String>;

/// Which slice of a room's history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageQuery {
    /// The newest page.
    Newest,
    /// The page just older than this message.
    Before(Cursor),
    /// The page just newer than this message.
    After(Cursor),
    /// Messages after this `seq`, in `seq` order.
    SinceSeq(i64),
    /// A page with this message in the middle.
    Around(Cursor),
}

/// A request with every stateless rule applied (see [`Request::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRequest {
    /// The client's correlation string, echoed in the reply.
    pub req: Option<String>,
    /// The request, its fields checked.
    pub frame: CheckedFrame,
}

/// A client frame whose fields have been checked: `Err` fields carry the
/// message of the error the hub sends, with the code named on each.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // The fields are [`ClientFrame`]'s, checked.
pub enum CheckedFrame {
    /// `invalid_username` on `Err`.
    Hello {
        username: Checked<Username>,
        resume: Option<String>,
        code: Option<String>,
    },
    /// `invalid_room_name` on `Err`.
    CreateRoom { room: Checked<RoomName> },
    /// Delete a room.
    DeleteRoom { room: RoomRef },
    /// `bad_request` on `Err`.
    Join { room: RoomRef, limit: Checked<u32> },
    /// Leave the current room.
    Leave,
    /// `invalid_message` on `Err`; `ts` is the client's clock, unchecked
    /// (see [`message_ts`]).
    Send {
        id: Checked<ClientMsgId>,
        text: Checked<String>,
        ts: Option<i64>,
    },
    /// `bad_request` on `Err`.
    History {
        room: RoomRef,
        limit: Checked<u32>,
        query: Checked<PageQuery>,
    },
    /// `invalid_message` on `Err`.
    Edit { seq: Seq, text: Checked<String> },
    /// Erase a message.
    DeleteMessage { seq: Seq },
    /// `bad_request` on `Err`; `room` None: every live room.
    Search {
        query: Checked<SearchQuery>,
        room: Option<RoomRef>,
        limit: Checked<u32>,
        before_seq: Option<Seq>,
    },
    /// Ask for a `pong`.
    Ping,
    /// End the session.
    SignOut,
    /// `bad_request` on `Err`.
    Read { room: RoomRef, seq: Checked<Seq> },
    /// The user is typing.
    Typing,
}

impl Request {
    /// Applies every rule that needs no server state.
    pub fn check(self) -> CheckedRequest {
        let frame = match self.frame {
            ClientFrame::Hello {
                username,
                resume,
                code,
            } => CheckedFrame::Hello {
                username: validate_username(&username).map(|name| Username {
                    key: NameKey::of(&name),
                    name,
                }),
                resume,
                code,
            },
            ClientFrame::CreateRoom { room } => CheckedFrame::CreateRoom {
                room: validate_room_name(&room).map(|name| RoomName {
                    key: NameKey::of(&name),
                    name,
                }),
            },
            ClientFrame::DeleteRoom { room } => CheckedFrame::DeleteRoom {
                room: RoomRef::new(&room),
            },
            ClientFrame::Join { room, limit } => CheckedFrame::Join {
                room: RoomRef::new(&room),
                limit: page_limit(limit),
            },
            ClientFrame::Leave => CheckedFrame::Leave,
            ClientFrame::Send { id, text, ts } => CheckedFrame::Send {
                id: validate_client_id(&id).map(|()| ClientMsgId(id)),
                text: validate_text(&text),
                ts,
            },
            ClientFrame::History {
                room,
                limit,
                before,
                after,
                since_seq,
                around,
            } => CheckedFrame::History {
                room: RoomRef::new(&room),
                limit: page_limit(limit),
                query: match (before, after, since_seq, around) {
                    (None, None, None, None) => Ok(PageQuery::Newest),
                    (Some(c), None, None, None) => Ok(PageQuery::Before(c)),
                    (None, Some(c), None, None) => Ok(PageQuery::After(c)),
                    (None, None, Some(s), None) => Ok(PageQuery::SinceSeq(s)),
                    (None, None, None, Some(c)) => Ok(PageQuery::Around(c)),
                    _ => Err(
                        "Use at most one of \"before\", \"after\", \"since_seq\" and \"around\"."
                            .into(),
                    ),
                },
            },
            ClientFrame::Edit { seq, text } => CheckedFrame::Edit {
                seq: Seq(seq),
                text: validate_text(&text),
            },
            ClientFrame::DeleteMessage { seq } => CheckedFrame::DeleteMessage { seq: Seq(seq) },
            ClientFrame::Search {
                query,
                room,
                limit,
                before_seq,
            } => CheckedFrame::Search {
                query: validate_query(&query),
                room: room.as_deref().map(RoomRef::new),
                limit: search_limit(limit),
                before_seq: before_seq.map(Seq),
            },
            ClientFrame::Ping => CheckedFrame::Ping,
            ClientFrame::SignOut => CheckedFrame::SignOut,
            ClientFrame::Typing => CheckedFrame::Typing,
            ClientFrame::Read { room, seq } => CheckedFrame::Read {
                room: RoomRef::new(&room),
                seq: if seq >= 0 {
                    Ok(Seq(seq))
                } else {
                    Err("\"seq\" must be 0 or more.".into())
                },
            },
        };
        CheckedRequest {
            req: self.req,
            frame,
        }
    }
}

/// A page size from a request: one of [`PAGE_SIZES`], the first by default.
fn page_limit(limit: Option<u32>) -> Checked<u32> {
    match limit {
        None => Ok(PAGE_SIZES[0]),
        Some(limit) if PAGE_SIZES.contains(&limit) => Ok(limit),
        Some(limit) => Err(format!(
            "A page holds 50, 100, 200 or 500 messages, not {limit}."
        )),
    }
}

/// A search reply's size from a request: 1 to [`MAX_SEARCH_LIMIT`],
/// [`DEFAULT_SEARCH_LIMIT`] by default.
fn search_limit(limit: Option<u32>) -> Checked<u32> {
    match limit {
        None => Ok(DEFAULT_SEARCH_LIMIT),
        Some(limit) if (1..=MAX_SEARCH_LIMIT).contains(&limit) => Ok(limit),
        Some(limit) => Err(format!(
            "A search returns 1 to {MAX_SEARCH_LIMIT} messages, not {limit}."
        )),
    }
}

/// A search query that passed [`validate_query`]: what the client sent,
/// to echo, and the words to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// As sent, echoed in the reply.
    pub sent: String,
    /// The words: runs of characters between white space and control
    /// characters, in order, none empty. Never search syntax: the store
    /// quotes each (see `store::search`).
    pub words: Vec<String>,
}

/// Checks a search query: 1–200 characters, not only white space. Splits
/// it into words at white space and control characters (a control
/// character is never part of a word, so none reaches the store).
pub fn validate_query(raw: &str) -> Checked<SearchQuery> {
    if raw.chars().count() > MAX_QUERY_CHARS {
        return Err(format!(
            "A search query may be at most {MAX_QUERY_CHARS} characters long."
        ));
    }
    let words: Vec<String> = raw
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|word| !word.is_empty())
        .map(str::to_string)
        .collect();
    if words.is_empty() {
        return Err("A search query needs at least one word.".into());
    }
    Ok(SearchQuery {
        sent: raw.to_string(),
        words,
    })
}

/// The timestamp a message is stored with: the client's `ts` when it is
/// within [`MAX_CLOCK_SKEW_MS`] of `now`, else `now`. Also returns how far
/// off a refused client clock was, in whole seconds, for the log.
pub fn message_ts(client: Option<i64>, now: i64) -> (i64, Option<i64>) {
    match client {
        // `abs_diff` cannot overflow, whatever the client sent.
        Some(ts) if ts.abs_diff(now) <= MAX_CLOCK_SKEW_MS.unsigned_abs() => (ts, None),
        Some(ts) => (now, Some(ts.saturating_sub(now) / 1000)),
        None => (now, None),
    }
}

/// Everything the server sends. Serialized once per event and shared between
/// all recipients.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(missing_docs)] // The fields are the wire protocol's, documented there.
pub enum ServerFrame {
    Welcome {
        username: String,
        session: String,
        room: Option<String>,
        rooms: Vec<RoomInfo>,
        limits: Limits,
    },
    Joined {
        room: String,
        members: Vec<String>,
        history: Page,
        /// The user's read mark in the room before this join.
        read_seq: Seq,
        /// The read marks of the room's members, by display name.
        read_by: BTreeMap<String, Seq>,
    },
    Left {
        room: String,
    },
    Ack {
        id: String,
        room: String,
        seq: Seq,
        ts: i64,
    },
    Message(ChatMessage),
    History(Page),
    Edited {
        room: String,
        seq: Seq,
        text: String,
        edited_at: i64,
    },
    MessageDeleted {
        room: String,
        seq: Seq,
    },
    SearchResults {
        query: String,
        room: Option<String>,
        messages: Vec<PageMessage>,
        has_more: bool,
    },
    Presence {
        room: String,
        user: String,
        state: PresenceState,
    },
    Rooms {
        rooms: Vec<RoomInfo>,
    },
    RoomDeleted {
        room: String,
    },
    /// A user's unread counts in one room.
    Unread {
        room: String,
        unread: u64,
        mentions: u64,
    },
    SignedOut,
    /// Someone in the room is typing.
    Typing {
        room: String,
        user: String,
    },
    /// Someone in the room has read it up to `seq`.
    ReadBy {
        room: String,
        user: String,
        seq: Seq,
    },
    Pong,
    Error {
        code: ErrorCode,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl ServerFrame {
    /// What a client is told when the database failed it (the details are
    /// logged, not sent).
    pub fn storage_error() -> ServerFrame {
        ServerFrame::error(
            ErrorCode::StorageError,
            "The server could not read or save data. Try again later.",
        )
    }

    /// An error frame without a retry hint.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerFrame {
        ServerFrame::Error {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// Encodes the frame, adding `req` (as `ref` on errors) when the request
    /// carried one.
    pub fn encode(&self, req: Option<&str>) -> String {
        let body = serde_json::to_string(self).expect("BUG: server frames always serialize");
        let key = if matches!(self, ServerFrame::Error { .. }) {
            "ref"
        } else {
            "req"
        };
        with_req(body, key, req)
    }
}

/// Adds `req` to an encoded frame as its first field, named `key`.
fn with_req(body: String, key: &str, req: Option<&str>) -> String {
    let Some(req) = req else {
        return body;
    };
    // Every server frame is an object with at least a "type", and none has
    // a field named "req" or "ref": the key goes first.
    let rest = body
        .strip_prefix('{')
        .expect("BUG: a server frame is a JSON object");
    let req = serde_json::to_string(req).expect("BUG: a string always serializes");
    format!("{{\"{key}\":{req},{rest}")
}

/// A room list encoded once for users whose counts differ: each room's
/// fields but the counts are JSON already, and [`RoomList::encode`] adds one
/// user's counts. Encodes exactly what `ServerFrame::Rooms` would.
pub struct RoomList {
    /// Each room's object up to its counts, in list order.
    rooms: Vec<String>,
}

impl RoomList {
    /// The template of `rooms` (their counts are ignored).
    pub fn new(rooms: &[RoomInfo]) -> RoomList {
        const COUNTS: &str = "\"unread\":0,\"mentions\":0}";
        let rooms = rooms
            .iter()
            .map(|room| {
                let mut json = serde_json::to_string(&RoomInfo {
                    unread: 0,
                    mentions: 0,
                    ..room.clone()
                })
                .expect("BUG: a room always serializes");
                debug_assert!(json.ends_with(COUNTS), "{json}");
                json.truncate(json.len() - COUNTS.len());
                json
            })
            .collect();
        RoomList { rooms }
    }

    /// The `rooms` frame with these (unread, mentions), one per room in
    /// list order.
    pub fn encode(&self, counts: impl Iterator<Item = (u64, u64)>, req: Option<&str>) -> String {
        use std::fmt::Write;
        let mut body =
            String::with_capacity(32 + self.rooms.iter().map(|r| r.len() + 32).sum::<usize>());
        body.push_str("{\"type\":\"rooms\",\"rooms\":[");
        for (i, (room, (unread, mentions))) in self.rooms.iter().zip(counts).enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(room);
            write!(body, "\"unread\":{unread},\"mentions\":{mentions}}}")
                .expect("BUG: writing to a String cannot fail");
        }
        body.push_str("]}");
        with_req(body, "req", req)
    }
}

/// One room's `unread` frames encoded but for the counts, for the pushes:
/// a busy server pushes each user about one per room every second (39,000
/// a second for 1,000 users in 50 rooms), and encoding each through serde,
/// with its own copy of the room's name, cost more than the counting.
/// Encodes exactly what `ServerFrame::Unread` would without a `req`.
#[derive(Debug, Clone)]
pub struct UnreadTemplate {
    /// `{"type":"unread","room":"…","unread":`
    head: String,
}

impl UnreadTemplate {
    /// Made from serde's own encoding, so the room's JSON string and the
    /// order of the fields are the frame's.
    pub fn new(room: &str) -> UnreadTemplate {
        const TAIL: &str = "0,\"mentions\":0}";
        let mut head = ServerFrame::Unread {
            room: room.to_string(),
            unread: 0,
            mentions: 0,
        }
        .encode(None);
        assert!(head.ends_with(TAIL), "BUG: unread frames changed: {head}");
        head.truncate(head.len() - TAIL.len());
        UnreadTemplate { head }
    }

    /// The frame with these counts, in `buf` (emptied first).
    pub fn encode(&self, unread: u64, mentions: u64, buf: &mut String) {
        let mut number = itoa::Buffer::new();
        buf.clear();
        buf.push_str(&self.head);
        buf.push_str(number.format(unread));
        buf.push_str(",\"mentions\":");
        buf.push_str(number.format(mentions));
        buf.push('}');
    }
}

/// One stored chat message, as broadcast and as listed in history pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// The room's display name.
    pub room: String,
    /// Its place in the global order.
    pub seq: Seq,
    /// The sender's client id for it.
    pub id: String,
    /// The sender's display name.
    pub from: String,
    /// The text, checked.
    pub text: String,
    /// When it was sent, in ms since the epoch.
    pub ts: i64,
    /// When its text was last edited, in ms since the epoch; None if never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<i64>,
    /// Whether its author deleted it: its text is then empty.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The users it mentions, by display name, each once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
}

/// One message inside a history page: the fields of a `message` frame,
/// `type` included, so clients can treat both the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageMessage(pub ChatMessage);

impl Serialize for PageMessage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let m = &self.0;
        let mut s = serializer.serialize_struct("message", 10)?;
        s.serialize_field("type", "message")?;
        s.serialize_field("room", &m.room)?;
        s.serialize_field("seq", &m.seq)?;
        s.serialize_field("id", &m.id)?;
        s.serialize_field("from", &m.from)?;
        s.serialize_field("text", &m.text)?;
        s.serialize_field("ts", &m.ts)?;
        if let Some(at) = m.edited_at {
            s.serialize_field("edited_at", &at)?;
        }
        if m.deleted {
            s.serialize_field("deleted", &true)?;
        }
        if !m.mentions.is_empty() {
            s.serialize_field("mentions", &m.mentions)?;
        }
        s.end()
    }
}

/// A page of a room's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page {
    /// The room's display name.
    pub room: String,
    /// Oldest first.
    pub messages: Vec<PageMessage>,
    /// Whether the room has older messages than these.
    pub has_older: bool,
    /// Whether the room has newer messages than these.
    pub has_newer: bool,
    /// How many messages the room holds.
    pub total: u64,
}

/// A room in a room list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomInfo {
    /// Display name.
    pub name: String,
    /// When it was created, in ms since the epoch.
    pub created_at: i64,
    /// Who created it; None for `general`.
    pub created_by: Option<String>,
    /// How many people are in it now.
    pub members: usize,
    /// Messages from others the user has not read (see `read`).
    pub unread: u64,
    /// How many of those mention the user.
    pub mentions: u64,
}

/// The limits a `welcome` tells the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[allow(missing_docs)] // Each is the constant or setting of the same name.
pub struct Limits {
    pub max_text_chars: usize,
    pub page_sizes: [u32; 4],
    pub messages_per_second: u32,
    pub room_switches_per_minute: u32,
    pub requests_per_second: u32,
    pub request_burst: u32,
    pub max_rooms: usize,
    pub room_changes_per_10_minutes: u32,
}

/// Whether someone came or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum PresenceState {
    Joined,
    Left,
}

/// The stable error codes of `error` frames (the README's Errors section
/// says when each is sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum ErrorCode {
    BadRequest,
    NotLoggedIn,
    InvalidUsername,
    UsernameTaken,
    ServerFull,
    InvalidRoomName,
    RoomExists,
    TooManyRooms,
    JoinCodeRequired,
    BadJoinCode,
    NoSuchRoom,
    NotInRoom,
    InvalidMessage,
    RateLimited,
    StorageError,
    Forbidden,
    NoSuchMessage,
}

/// Case folding for names.
///
/// Upper-casing first folds letters that have two lower-case forms or that
/// upper-case to several letters ("ß" and "SS", "ﬁ" and "FI"); Rust's
/// lower-casing then writes a final sigma as "ς", which is folded to "σ".
pub fn fold_case(name: &str) -> String {
    name.to_uppercase().to_lowercase().replace('ς', "σ")
}

/// The identity of a username or room name: names that differ only in case,
/// in compatibility forms (fullwidth, mathematical, ligatures: NFKC) or in
/// characters that look alike (the Unicode confusable skeleton of UTS #39,
/// which also drops invisible characters) have the same key.
pub fn name_key(name: &str) -> String {
    let compatible: String = name.nfkc().collect();
    skeleton(&fold_case(&compatible)).collect()
}

/// Characters that show nothing by themselves: white space, and what
/// Unicode calls default-ignorable (zero-width characters, bidi controls,
/// the soft hyphen, variation selectors, tag characters, fillers). The
/// confusable skeleton drops exactly the latter, so its table answers.
fn is_invisible(c: char) -> bool {
    let mut buf = [0u8; 4];
    c.is_whitespace() || skeleton(c.encode_utf8(&mut buf)).next().is_none()
}

/// Characters that show nothing or change how others show, which no name may
/// contain: format characters and the other default-ignorables (everything
/// [`is_invisible`] finds but white space), and combining grapheme joiners.
fn is_hidden(c: char) -> bool {
    !c.is_whitespace() && is_invisible(c)
}

/// Whether a name has something to see: a character that is not white
/// space, hidden, a combining mark, or a blank-looking symbol (the braille
/// blank).
fn has_visible_base(name: &str) -> bool {
    name.chars().any(|c| {
        !is_invisible(c) && !unicode_normalization::char::is_combining_mark(c) && c != '\u{2800}'
    })
}

/// Whether the letters of a name mix scripts in a way UTS #39 calls
/// confusable (Latin with Cyrillic, say). Latin with Han and Japanese kana,
/// or with Han and Hangul, is fine.
fn mixes_scripts(name: &str) -> bool {
    let letters: String = name.chars().filter(|c| c.is_alphanumeric()).collect();
    letters.detect_restriction_level() > RestrictionLevel::HighlyRestrictive
}

/// Checks a username: trimmed and in compatibility form (NFKC, so "ａｌｉｃｅ"
/// is "alice"), 1–32 characters, each a letter, a digit, `_`, `-` or `.`,
/// letters from scripts that do not mix confusably. Returns the name.
pub fn validate_username(raw: &str) -> Result<String, String> {
    let name: String = raw.trim().nfkc().collect();
    let len = name.chars().count();
    if len == 0 || len > MAX_USERNAME_CHARS {
        return Err(format!(
            "A username must be 1 to {MAX_USERNAME_CHARS} characters long."
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err("A username may contain only letters, digits, \"_\", \"-\" and \".\".".into());
    }
    if name
        .chars()
        .any(|c| c.is_alphanumeric() && !c.identifier_allowed())
    {
        return Err("A username may not contain letters that are easily taken for others.".into());
    }
    if mixes_scripts(&name) {
        return Err(
            "A username may not mix alphabets whose letters look alike (Latin and Cyrillic, say)."
                .into(),
        );
    }
    Ok(name)
}

/// Checks a room name: trimmed, 1–64 characters, no control, format or
/// other hidden characters, something visible, letters from scripts that
/// do not mix confusably. Returns the trimmed name.
pub fn validate_room_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    let len = name.chars().count();
    if len == 0 || len > MAX_ROOM_CHARS {
        return Err(format!(
            "A room name must be 1 to {MAX_ROOM_CHARS} characters long."
        ));
    }
    if name.chars().any(|c| c.is_control() || is_hidden(c)) {
        return Err(
            "A room name may not contain control characters or invisible characters.".into(),
        );
    }
    if !has_visible_base(name) {
        return Err("A room name needs at least one visible character.".into());
    }
    if mixes_scripts(name) {
        return Err(
            "A room name may not mix alphabets whose letters look alike (Latin and Cyrillic, say)."
                .into(),
        );
    }
    Ok(name.to_string())
}

/// Longest join code an operator may set.
pub const MAX_JOIN_CODE_CHARS: usize = 128;

/// Whether a join code the client sent is the server's, compared in time
/// that does not depend on where they first differ.
pub fn join_code_matches(sent: &str, code: &str) -> bool {
    let (a, b) = (sent.as_bytes(), code.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in b.iter().enumerate() {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ x);
    }
    diff == 0
}

/// Checks a client message id: 1–64 characters, no control characters.
pub fn validate_client_id(id: &str) -> Result<(), String> {
    let len = id.chars().count();
    if len == 0 || len > MAX_CLIENT_ID_CHARS {
        return Err(format!(
            "A message id must be 1 to {MAX_CLIENT_ID_CHARS} characters long."
        ));
    }
    if id.chars().any(char::is_control) {
        return Err("A message id may not contain control characters.".into());
    }
    Ok(())
}

/// Most distinct names one message may mention.
pub const MAX_MENTIONS: usize = 20;

/// The names a text may mention: each `@name` at a word boundary (the `@`
/// first or after a character that is not a letter, digit, `_`, `-`, `.` or
/// `@`), `name` being the longest run of username characters after it, and
/// also that run without trailing `.`, `-` or `_` ("@bob." means bob). Keys,
/// each once, at most [`MAX_MENTIONS`]; which are users is the caller's to
/// find out.
pub fn mention_candidates(text: &str) -> Vec<NameKey> {
    let username_char = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.');
    let mut keys: Vec<NameKey> = Vec::new();
    let mut previous: Option<char> = None;
    for (i, c) in text.char_indices() {
        let at_boundary = previous.is_none_or(|p| !username_char(p) && p != '@');
        previous = Some(c);
        if c != '@' || !at_boundary {
            continue;
        }
        let start = i + 1;
        let end = text[start..]
            .char_indices()
            .find(|&(_, c)| !username_char(c))
            .map_or(text.len(), |(j, _)| start + j);
        let run = &text[start..end];
        let trimmed = run.trim_end_matches(['.', '-', '_']);
        for name in [run, trimmed] {
            if name.is_empty() || name.chars().count() > MAX_USERNAME_CHARS {
                continue;
            }
            let key = NameKey::of(name);
            if !keys.contains(&key) {
                if keys.len() == MAX_MENTIONS {
                    return keys;
                }
                keys.push(key);
            }
        }
    }
    keys
}

/// Normalizes and checks message text: `\r\n` becomes `\n`; then 1–4000
/// characters, not only white space, and no control characters other than
/// `\n` and `\t`.
pub fn validate_text(raw: &str) -> Result<String, String> {
    let text = raw.replace("\r\n", "\n");
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(
            "Messages may not contain control characters other than line breaks and tabs.".into(),
        );
    }
    let len = text.chars().count();
    if len > MAX_TEXT_CHARS {
        return Err(format!(
            "A message may be at most {MAX_TEXT_CHARS} characters long."
        ));
    }
    if text.chars().all(is_invisible) {
        return Err("A message may not be empty or only white space.".into());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_frame() {
        let hello = parse_request(r#"{"type":"hello","username":"alice","req":"r1"}"#).unwrap();
        assert_eq!(hello.req.as_deref(), Some("r1"));
        assert_eq!(
            hello.frame,
            ClientFrame::Hello {
                username: "alice".into(),
                resume: None,
                code: None
            }
        );
        let send = parse_request(r#"{"type":"send","id":"c-1","text":"hi","ts":17}"#).unwrap();
        assert_eq!(
            send.frame,
            ClientFrame::Send {
                id: "c-1".into(),
                text: "hi".into(),
                ts: Some(17)
            }
        );
        let history = parse_request(
            r#"{"type":"history","room":"general","limit":100,"before":{"ts":5,"seq":9}}"#,
        )
        .unwrap();
        assert_eq!(
            history.frame,
            ClientFrame::History {
                room: "general".into(),
                limit: Some(100),
                before: Some(Cursor { ts: 5, seq: 9 }),
                after: None,
                since_seq: None,
                around: None
            }
        );
        assert_eq!(
            parse_request(r#"{"type":"leave","extra":1}"#)
                .unwrap()
                .frame,
            ClientFrame::Leave
        );
        assert_eq!(
            parse_request(r#"{"type":"ping"}"#).unwrap().frame,
            ClientFrame::Ping
        );
    }

    #[test]
    fn rejects_malformed_frames_with_a_reason_and_the_req() {
        let err = parse_request("not json").unwrap_err();
        assert!(err.message.contains("not valid JSON"));
        assert!(
            parse_request("[1,2]")
                .unwrap_err()
                .message
                .contains("object")
        );
        let err = parse_request(r#"{"type":"dance","req":"r9"}"#).unwrap_err();
        assert_eq!(err.req.as_deref(), Some("r9"));
        assert!(err.message.contains("Unknown frame type \"dance\""));
        let err = parse_request(r#"{"type":"join","req":"r2"}"#).unwrap_err();
        assert_eq!(err.req.as_deref(), Some("r2"));
        assert!(err.message.contains("room"), "{}", err.message);
        assert!(parse_request(r#"{"type":"send","id":"a","text":5}"#).is_err());
        assert!(parse_request(r#"{"username":"a"}"#).is_err());
        assert!(parse_request(r#"{"type":"ping","req":7}"#).is_err());
        assert!(parse_request(r#"{"type":"history","room":"g","limit":-1}"#).is_err());
    }

    #[test]
    fn encodes_frames_with_req_and_ref() {
        let pong = ServerFrame::Pong.encode(Some("p1"));
        assert_eq!(pong, r#"{"req":"p1","type":"pong"}"#);
        let quoted = ServerFrame::Pong.encode(Some("a\"b\\c"));
        let value: serde_json::Value = serde_json::from_str(&quoted).unwrap();
        assert_eq!(value["req"], "a\"b\\c");
        let error = ServerFrame::error(ErrorCode::NoSuchRoom, "No.").encode(Some("j1"));
        let value: serde_json::Value = serde_json::from_str(&error).unwrap();
        assert_eq!(value["type"], "error");
        assert_eq!(value["code"], "no_such_room");
        assert_eq!(value["ref"], "j1");
        assert!(value.get("retry_after_ms").is_none());
        let page = ServerFrame::History(Page {
            room: "general".into(),
            messages: vec![PageMessage(ChatMessage {
                room: "general".into(),
                seq: Seq(1),
                id: "c".into(),
                from: "a".into(),
                text: "t".into(),
                ts: 2,
                edited_at: None,
                deleted: false,
                mentions: vec!["Bob".into()],
            })],
            has_older: false,
            has_newer: true,
            total: 1,
        });
        let value: serde_json::Value = serde_json::from_str(&page.encode(None)).unwrap();
        assert_eq!(value["type"], "history");
        assert_eq!(value["messages"][0]["type"], "message");
        assert_eq!(value["messages"][0]["from"], "a");
        assert_eq!(value["has_newer"], true);
        assert_eq!(value["messages"][0]["mentions"], serde_json::json!(["Bob"]));
        let plain = ChatMessage {
            mentions: Vec::new(),
            ..match &page {
                ServerFrame::History(page) => page.messages[0].0.clone(),
                _ => unreachable!(),
            }
        };
        let value: serde_json::Value =
            serde_json::from_str(&ServerFrame::Message(plain).encode(None)).unwrap();
        assert!(value.get("mentions").is_none(), "{value}");
    }

    #[test]
    fn a_room_list_template_encodes_what_the_frame_would() {
        let room = |name: &str, by: Option<&str>, members, unread, mentions| RoomInfo {
            name: name.into(),
            created_at: 1_764_086_400_000,
            created_by: by.map(str::to_string),
            members,
            unread,
            mentions,
        };
        let rooms = vec![
            room("Design \"quoted\" ✓", Some("ali\\ce"), 3, 4, 1),
            room("general", None, 0, 0, 0),
            room("ops", Some("bob"), 12, 1_000, 999),
        ];
        let template = RoomList::new(&rooms);
        for req in [None, Some("r\"1")] {
            let counts = rooms.iter().map(|r| (r.unread, r.mentions));
            assert_eq!(
                template.encode(counts, req),
                ServerFrame::Rooms {
                    rooms: rooms.clone()
                }
                .encode(req)
            );
        }
        assert_eq!(
            RoomList::new(&[]).encode(std::iter::empty(), None),
            ServerFrame::Rooms { rooms: vec![] }.encode(None)
        );
    }

    #[test]
    fn an_unread_template_encodes_what_the_frame_would() {
        // Names no room may have too (control characters): the template
        // must not rely on validation to be right.
        let names = [
            "general",
            "Design \"quoted\"",
            "back\\slash\\",
            "tab\there\nnew line\r\u{0}\u{1}\u{1f}\u{7f}",
            "</script>&<'",
            "café ünïcödé",
            "日本語の部屋",
            "😀 party 👩‍👩‍👧‍👦",
            "\u{2028}\u{2029}\u{feff}",
            "",
        ];
        let counts = [
            (0, 0),
            (1, 0),
            (7, 3),
            (999, 999),
            (1_000, 10),
            (u64::MAX, u64::MAX),
        ];
        let mut buf = String::from("left over from the last frame");
        for name in names {
            let template = UnreadTemplate::new(name);
            for (unread, mentions) in counts {
                template.encode(unread, mentions, &mut buf);
                let frame = ServerFrame::Unread {
                    room: name.to_string(),
                    unread,
                    mentions,
                };
                assert_eq!(buf, frame.encode(None), "{name:?} {unread} {mentions}");
                let value: serde_json::Value = serde_json::from_str(&buf).unwrap();
                assert_eq!(value["room"], name);
                assert_eq!(value["unread"], unread);
            }
        }
    }

    #[test]
    fn mentions_are_at_signs_at_word_boundaries() {
        let names = |text: &str| -> Vec<String> {
            mention_candidates(text)
                .iter()
                .map(|k| k.as_str().to_string())
                .collect()
        };
        assert_eq!(names("@bob hi"), ["bob"]);
        assert_eq!(names("hi @Bob, and (@carol)"), ["bob", "carol"]);
        // Trailing punctuation: both the run and the run without it.
        assert_eq!(names("thanks @bob."), ["bob.", "bob"]);
        assert_eq!(names("@a_lice_"), ["a_lice_", "a_lice"]);
        // Not at a word boundary: e-mail addresses, doubled at signs.
        assert!(names("mail bob@example.org").is_empty());
        assert!(names("@@bob").is_empty());
        assert!(names("@ bob").is_empty());
        assert!(names("@").is_empty());
        // The same name twice, in other casing or look-alike letters, is one.
        assert_eq!(names("@bob @BOB @ｂｏｂ"), ["bob"]);
        // Bounded, however many a text names.
        let many: String = (0..100).map(|i| format!("@u{i} ")).collect();
        assert_eq!(names(&many).len(), MAX_MENTIONS);
        // A run longer than any username is no name.
        assert!(names(&format!("@{}", "x".repeat(40))).is_empty());
    }

    #[test]
    fn read_and_sign_out_are_checked() {
        let read = parse_request(r#"{"type":"read","room":" general ","seq":42}"#)
            .unwrap()
            .check();
        match read.frame {
            CheckedFrame::Read { room, seq } => {
                assert_eq!(room.typed, "general");
                assert_eq!(seq, Ok(Seq(42)));
            }
            other => panic!("{other:?}"),
        }
        let back = parse_request(r#"{"type":"read","room":"general","seq":-1}"#)
            .unwrap()
            .check();
        assert!(matches!(back.frame, CheckedFrame::Read { seq: Err(_), .. }));
        assert!(parse_request(r#"{"type":"read","room":"general"}"#).is_err());
        assert!(parse_request(r#"{"type":"read","room":"general","seq":"1"}"#).is_err());
        assert_eq!(
            parse_request(r#"{"type":"sign_out"}"#)
                .unwrap()
                .check()
                .frame,
            CheckedFrame::SignOut
        );
    }

    #[test]
    fn case_folding_matches_every_casing() {
        for (a, b) in [
            ("Alice", "ALICE"),
            ("AΣ", "aσ"),
            ("ΟΣ", "οσ"),
            ("Straße", "STRASSE"),
            ("ﬁle", "FILE"),
        ] {
            assert_eq!(fold_case(a), fold_case(b), "{a} / {b}");
        }
        assert_ne!(fold_case("alice"), fold_case("alicia"));
    }

    #[test]
    fn usernames() {
        assert_eq!(validate_username("  Alice_1.x-y ").unwrap(), "Alice_1.x-y");
        assert_eq!(validate_username("Jürgen").unwrap(), "Jürgen");
        assert!(validate_username("").is_err());
        assert!(validate_username("   ").is_err());
        assert!(validate_username("a b").is_err());
        assert!(validate_username("<script>").is_err());
        assert!(validate_username(&"x".repeat(32)).is_ok());
        assert!(validate_username(&"x".repeat(33)).is_err());
    }

    #[test]
    fn names_that_look_alike_have_one_key() {
        let alice = NameKey::of("alice");
        for look_alike in [
            "ALICE",
            "\u{430}lice",  // Cyrillic а
            "ａｌｉｃｅ",   // fullwidth
            "𝐚𝐥𝐢𝐜𝐞",        // mathematical bold
            "al\u{2160}ce", // Roman numeral one
            "\u{aa}lice",   // feminine ordinal
            "alice\u{200b}",
        ] {
            assert_eq!(NameKey::of(look_alike), alice, "{look_alike:?}");
        }
        assert_ne!(NameKey::of("alicia"), alice);
        let general = NameKey::of("general");
        for look_alike in ["gener\u{430}l", "general\u{200e}", "gen\u{ad}eral"] {
            assert_eq!(NameKey::of(look_alike), general, "{look_alike:?}");
        }
    }

    #[test]
    fn usernames_in_compatibility_form_and_one_script() {
        assert_eq!(validate_username("ａｌｉｃｅ").unwrap(), "alice");
        assert_eq!(validate_username("𝐚𝐥𝐢𝐜𝐞").unwrap(), "alice");
        assert_eq!(validate_username("\u{aa}lice").unwrap(), "alice");
        assert!(
            validate_username("\u{430}lice").is_err(),
            "Latin mixed with Cyrillic"
        );
        assert!(validate_username("alice\u{200b}").is_err());
        assert_eq!(validate_username("Юлия").unwrap(), "Юлия");
        assert_eq!(validate_username("田中taro").unwrap(), "田中taro");
    }

    #[test]
    fn room_names_with_hidden_characters_or_nothing_visible_are_refused() {
        for hidden in [
            "general\u{200b}",
            "general\u{200e}",
            "general\u{200f}",
            "general\u{2060}",
            "gen\u{ad}eral",
            "general\u{fe0f}",
            "general\u{e0041}",
            "\u{180e}",
        ] {
            assert!(validate_room_name(hidden).is_err(), "{hidden:?}");
        }
        for blank in ["\u{301}\u{302}", "\u{3164}", "\u{2800}", "\u{115f}"] {
            assert!(validate_room_name(blank).is_err(), "{blank:?}");
        }
        assert!(
            validate_room_name("gener\u{430}l").is_err(),
            "Latin mixed with Cyrillic"
        );
        assert_eq!(validate_room_name("Café ☕").unwrap(), "Café ☕");
        assert_eq!(validate_room_name("Проект").unwrap(), "Проект");
    }

    #[test]
    fn room_names() {
        assert_eq!(validate_room_name(" Design ").unwrap(), "Design");
        assert_eq!(
            validate_room_name("Ünïcode & more!").unwrap(),
            "Ünïcode & more!"
        );
        assert!(validate_room_name("").is_err());
        assert!(validate_room_name("bad\nname").is_err());
        assert!(validate_room_name("\u{200B}").is_err());
        assert!(validate_room_name("evil\u{202E}txt.exe").is_err());
        assert!(validate_room_name(&"r".repeat(64)).is_ok());
        assert!(validate_room_name(&"r".repeat(65)).is_err());
    }

    #[test]
    fn message_text() {
        assert_eq!(validate_text("a\r\nb\tc").unwrap(), "a\nb\tc");
        assert!(validate_text("").is_err());
        assert!(validate_text(" \n\t ").is_err());
        assert!(validate_text("\u{200B}\u{FEFF}").is_err());
        assert_eq!(validate_text("שלום \u{202B}x").unwrap(), "שלום \u{202B}x");
        assert!(validate_text("bell\u{7}").is_err());
        assert!(validate_text("lone\rcr").is_err());
        assert!(validate_text(&"é".repeat(4000)).is_ok());
        assert!(validate_text(&"é".repeat(4001)).is_err());
        assert_eq!(
            validate_text("<img src=x onerror=alert(1)>").unwrap(),
            "<img src=x onerror=alert(1)>"
        );
    }

    #[test]
    fn checking_a_request_applies_every_stateless_rule_and_keeps_the_message() {
        let check = |text: &str| parse_request(text).unwrap().check().frame;
        let CheckedFrame::Hello { username, .. } = check(r#"{"type":"hello","username":" Bob "}"#)
        else {
            panic!("not a hello");
        };
        let username = username.unwrap();
        assert_eq!(username.name, "Bob");
        assert_eq!(username.key, NameKey::of("BOB"));
        let CheckedFrame::Hello { username, .. } = check(r#"{"type":"hello","username":"a b"}"#)
        else {
            panic!("not a hello");
        };
        assert_eq!(username, Err(validate_username("a b").unwrap_err()));
        let CheckedFrame::Send { id, text, ts } =
            check(r#"{"type":"send","id":"","text":"a\r\nb","ts":5}"#)
        else {
            panic!("not a send");
        };
        assert!(id.is_err());
        assert_eq!(text, Ok("a\nb".into()));
        assert_eq!(ts, Some(5));
        assert_eq!(
            check(r#"{"type":"join","room":" Design ","limit":7}"#),
            CheckedFrame::Join {
                room: RoomRef {
                    key: NameKey::of("design"),
                    typed: "Design".into()
                },
                limit: Err("A page holds 50, 100, 200 or 500 messages, not 7.".into())
            }
        );
        let CheckedFrame::History { limit, query, .. } =
            check(r#"{"type":"history","room":"g","before":{"ts":1,"seq":2},"since_seq":3}"#)
        else {
            panic!("not a history");
        };
        assert_eq!(limit, Ok(50));
        assert!(query.unwrap_err().contains("at most one"));
        let CheckedFrame::CreateRoom { room } = check(r#"{"type":"create_room","room":"\u200b"}"#)
        else {
            panic!("not a create_room");
        };
        assert!(room.is_err());
    }

    #[test]
    fn search_queries_are_split_into_words_and_bounded() {
        let query = validate_query("  deploy\tplan \"now\"\u{0}x  ").unwrap();
        assert_eq!(query.words, ["deploy", "plan", "\"now\"", "x"]);
        assert_eq!(query.sent, "  deploy\tplan \"now\"\u{0}x  ");
        assert!(validate_query("").is_err());
        assert!(validate_query(" \n\t\u{7} ").is_err());
        assert!(validate_query(&"é".repeat(MAX_QUERY_CHARS)).is_ok());
        assert!(validate_query(&"é".repeat(MAX_QUERY_CHARS + 1)).is_err());
        let check = |text: &str| parse_request(text).unwrap().check().frame;
        let CheckedFrame::Search {
            room,
            limit,
            before_seq,
            ..
        } = check(r#"{"type":"search","query":"x","room":" Ops ","before_seq":9}"#)
        else {
            panic!("not a search");
        };
        assert_eq!(room.map(|r| r.typed), Some("Ops".to_string()));
        assert_eq!(limit, Ok(DEFAULT_SEARCH_LIMIT));
        assert_eq!(before_seq, Some(Seq(9)));
        for bad in [0, MAX_SEARCH_LIMIT + 1] {
            let CheckedFrame::Search { limit, .. } =
                check(&format!(r#"{{"type":"search","query":"x","limit":{bad}}}"#))
            else {
                panic!("not a search");
            };
            assert!(limit.is_err(), "{bad}");
        }
        assert_eq!(
            check(r#"{"type":"edit","seq":42,"text":"a\r\nb"}"#),
            CheckedFrame::Edit {
                seq: Seq(42),
                text: Ok("a\nb".into())
            }
        );
        assert_eq!(
            check(r#"{"type":"delete_message","seq":-3}"#),
            CheckedFrame::DeleteMessage { seq: Seq(-3) }
        );
    }

    #[test]
    fn unknown_types_are_told_apart_from_bad_fields_without_reading_serde_messages() {
        let err = parse_request(r#"{"type":"teleport"}"#).unwrap_err();
        assert_eq!(err.message, "Unknown frame type \"teleport\".");
        let err = parse_request(r#"{"type":"send","id":"x"}"#).unwrap_err();
        assert!(
            err.message.starts_with("Invalid \"send\" frame"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_client_clock_is_kept_within_five_minutes_and_never_overflows() {
        let now = 1_764_086_400_000;
        assert_eq!(message_ts(None, now), (now, None));
        assert_eq!(message_ts(Some(now - 1000), now), (now - 1000, None));
        assert_eq!(
            message_ts(Some(now + MAX_CLOCK_SKEW_MS), now),
            (now + MAX_CLOCK_SKEW_MS, None)
        );
        assert_eq!(
            message_ts(Some(now + MAX_CLOCK_SKEW_MS + 1), now),
            (now, Some(300))
        );
        for extreme in [i64::MIN, i64::MIN + now, i64::MAX, -1, 0] {
            let (ts, skew) = message_ts(Some(extreme), now);
            assert_eq!(ts, now, "{extreme}");
            assert!(skew.is_some(), "{extreme}");
        }
    }

    #[test]
    fn client_ids() {
        assert!(validate_client_id("c-1").is_ok());
        assert!(validate_client_id("").is_err());
        assert!(validate_client_id(&"i".repeat(65)).is_err());
    }
}
