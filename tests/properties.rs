//! Property tests of the wire protocol and of message ids: `parse_request`
//! never panics and always echoes a readable `req`, every well-formed frame
//! round-trips, the validators accept exactly what the rules allow, and —
//! against a real server — sending one id any number of times, across
//! reconnects, stores one message.
//!
//! Case counts are kept moderate so the file runs in seconds in a debug
//! build; `PROPTEST_CASES=N` sets them for a longer hunt (except for the
//! server test, which starts a server per case and always runs 16).

mod support;

use std::fmt::Write as _;

use parlor::protocol::{
    ClientFrame, Cursor, MAX_CLIENT_ID_CHARS, MAX_CLOCK_SKEW_MS, MAX_QUERY_CHARS, MAX_REQ_CHARS,
    MAX_ROOM_CHARS, MAX_TEXT_CHARS, MAX_USERNAME_CHARS, Request, Seq, message_ts, parse_request,
    validate_client_id, validate_query, validate_room_name, validate_text, validate_username,
};
use parlor::store::{NewMessage, RoomId, Store};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Value, json};
use support::{Client, TestServer, now_ms};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;
use unicode_security::{GeneralSecurityProfile, RestrictionLevel, RestrictionLevelDetection};

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

/// Field names of client frames, so generated objects often hit real fields
/// with the wrong kind of value.
const FIELD_NAMES: [&str; 16] = [
    "type",
    "req",
    "username",
    "resume",
    "room",
    "limit",
    "id",
    "text",
    "ts",
    "before",
    "after",
    "since_seq",
    "seq",
    "around",
    "query",
    "before_seq",
];

/// Characters that sit on the edges of the rules: white space the trims
/// know about (and some they do not), control characters, combining and
/// invisible marks, case-changing letters, JSON and HTML punctuation.
const TRICKY: [char; 34] = [
    'a', 'Z', '0', '_', '-', '.', 'é', 'ß', 'Σ', 'σ', 'İ', '日', '🎉', '\u{301}', ' ', '\t', '\n',
    '\r', '\u{0}', '\u{7}', '\u{1b}', '\u{7f}', '\u{85}', '\u{a0}', '\u{2028}', '\u{200b}',
    '\u{202e}', '\u{feff}', '\u{3000}', '<', '"', '\\', '/', '&',
];

/// `cases` cases, unless `PROPTEST_CASES` asks for another number. Failing
/// inputs are saved beside this file, in `properties.proptest-regressions`,
/// and tried first on the next run.
fn config(cases: u32) -> ProptestConfig {
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        ProptestConfig::default().cases
    } else {
        cases
    };
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Generators

/// Any JSON value, nested a few levels, with object keys that are often the
/// protocol's own field names.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        select(FRAME_TYPES.to_vec()).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((key(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(FIELD_NAMES.to_vec()).prop_map(String::from),
        1 => any::<String>(),
    ]
}

/// An object shaped like a client frame: a `type` that is usually real, and
/// real field names with arbitrary values.
fn frame_like_json() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        4 => select(FRAME_TYPES.to_vec()).prop_map(Value::from),
        1 => any_json(),
    ];
    (option::of(kind), vec((key(), any_json()), 0..6)).prop_map(|(kind, fields)| {
        let mut object: serde_json::Map<String, Value> = fields.into_iter().collect();
        if let Some(kind) = kind {
            object.insert("type".into(), kind);
        }
        Value::Object(object)
    })
}

/// Text that is almost JSON: the punctuation and escapes of the grammar,
/// including surrogate escapes and numbers out of range.
fn json_ish_text() -> impl Strategy<Value = String> {
    let token = select(vec![
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"",
        "\"type\"",
        "\"req\"",
        "\"send\"",
        "\"hello\"",
        "null",
        "true",
        "-",
        "0",
        "1e999",
        "18446744073709551616",
        "-9223372036854775809",
        "0.5",
        "\\",
        "\\u",
        "\\ud800",
        "\\udc00",
        "\\u0000",
        " ",
        "\n",
        "é",
    ]);
    vec(token, 0..40).prop_map(|tokens| tokens.concat())
}

fn tricky_string(max: usize) -> impl Strategy<Value = String> {
    vec(select(TRICKY.to_vec()), 0..=max).prop_map(String::from_iter)
}

/// A run of one character just around `limit`, wrapped in white space or
/// other edge characters.
fn near_limit(limit: usize) -> impl Strategy<Value = String> {
    (
        select(vec!['x', 'é', '日', '🎉', '\u{301}', ' ']),
        limit - 2..=limit + 2,
        tricky_string(2),
        tricky_string(2),
    )
        .prop_map(|(c, n, before, after)| format!("{before}{}{after}", c.to_string().repeat(n)))
}

/// Raw input for the validators: anything, edge characters, lengths at the
/// limits, and runs of line endings.
fn validator_input() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        tricky_string(80),
        near_limit(MAX_USERNAME_CHARS),
        near_limit(MAX_ROOM_CHARS),
        near_limit(MAX_CLIENT_ID_CHARS),
        near_limit(MAX_TEXT_CHARS),
        vec(select(vec!["a", "\r\n", "\r", "\n", " ", "\t"]), 0..40).prop_map(|p| p.concat()),
        (1usize..4, 0usize..3).prop_map(|(crlf, extra)| {
            // 4000 characters once each "\r\n" has become "\n".
            "y".repeat(MAX_TEXT_CHARS - crlf + extra) + &"\r\n".repeat(crlf)
        }),
    ]
}

fn printable_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('a', 'z'),
        2 => any::<char>().prop_map(|c| if c.is_control() { '?' } else { c }),
        1 => select(vec!['<', '>', '"', '\\', '&', '🎉', '日', '\u{a0}']),
    ]
}

/// Message text the server must accept: printable characters, white space,
/// tabs and both kinds of line ending, with at least one visible character.
fn valid_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        6 => printable_char().prop_map(String::from),
        1 => select(vec![" ", "\n", "\t", "\r\n"]).prop_map(String::from),
    ];
    let short = (
        vec(piece, 0..120),
        prop::char::range('!', '~'),
        any::<usize>(),
    )
        .prop_map(|(pieces, visible, at)| {
            let mut pieces = pieces;
            pieces.insert(at % (pieces.len() + 1), visible.to_string());
            pieces.concat()
        });
    let long = (printable_char(), MAX_TEXT_CHARS - 5..=MAX_TEXT_CHARS).prop_map(|(c, n)| {
        let c = if is_invisible(c) { '.' } else { c };
        c.to_string().repeat(n)
    });
    prop_oneof![9 => short, 1 => long]
}

/// A client message id the server must accept: 1–64 characters, none of
/// them control characters.
fn valid_client_id() -> impl Strategy<Value = String> {
    vec(printable_char(), 1..=MAX_CLIENT_ID_CHARS).prop_map(String::from_iter)
}

/// Strings for frame fields: `parse_request` checks shapes, not contents,
/// so any string must survive; valid-looking ones are mixed in.
fn field_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        tricky_string(20),
        valid_text(),
        Just(String::new()),
    ]
}

fn any_cursor() -> impl Strategy<Value = Cursor> {
    (any::<i64>(), any::<i64>()).prop_map(|(ts, seq)| Cursor { ts, seq })
}

fn any_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (
            field_string(),
            option::of(field_string()),
            option::of(field_string())
        )
            .prop_map(|(username, resume, code)| ClientFrame::Hello {
                username,
                resume,
                code
            }),
        field_string().prop_map(|room| ClientFrame::CreateRoom { room }),
        field_string().prop_map(|room| ClientFrame::DeleteRoom { room }),
        (field_string(), option::of(any::<u32>()))
            .prop_map(|(room, limit)| ClientFrame::Join { room, limit }),
        Just(ClientFrame::Leave),
        (field_string(), field_string(), option::of(any::<i64>()))
            .prop_map(|(id, text, ts)| ClientFrame::Send { id, text, ts }),
        (
            field_string(),
            option::of(any::<u32>()),
            option::of(any_cursor()),
            option::of(any_cursor()),
            option::of(any::<i64>()),
            option::of(any_cursor()),
        )
            .prop_map(|(room, limit, before, after, since_seq, around)| {
                ClientFrame::History {
                    room,
                    limit,
                    before,
                    after,
                    since_seq,
                    around,
                }
            }),
        (any::<i64>(), field_string()).prop_map(|(seq, text)| ClientFrame::Edit { seq, text }),
        any::<i64>().prop_map(|seq| ClientFrame::DeleteMessage { seq }),
        (
            field_string(),
            option::of(field_string()),
            option::of(any::<u32>()),
            option::of(any::<i64>()),
        )
            .prop_map(|(query, room, limit, before_seq)| ClientFrame::Search {
                query,
                room,
                limit,
                before_seq,
            }),
        Just(ClientFrame::Ping),
        Just(ClientFrame::SignOut),
        Just(ClientFrame::Typing),
        (field_string(), any::<i64>()).prop_map(|(room, seq)| ClientFrame::Read { room, seq }),
    ]
}

/// How a request's `req` is written.
#[derive(Debug, Clone)]
enum ReqField {
    Absent,
    Null,
    Text(String),
}

fn any_req_field() -> impl Strategy<Value = ReqField> {
    prop_oneof![
        Just(ReqField::Absent),
        Just(ReqField::Null),
        vec(any::<char>(), 0..=MAX_REQ_CHARS).prop_map(|c| ReqField::Text(String::from_iter(c))),
    ]
}

/// The free choices of a hand-written encoding: key order, white space,
/// `null` or omission for absent options, `\u` escapes for non-ASCII.
#[derive(Debug, Clone)]
struct Style {
    ascii_only: bool,
    /// Per field: write an absent option as `null` rather than leaving it out.
    nulls: Vec<bool>,
    /// Per field: its sort key.
    order: Vec<u8>,
    /// White space to draw from between tokens.
    spaces: Vec<&'static str>,
}

fn any_style() -> impl Strategy<Value = Style> {
    (
        any::<bool>(),
        vec(any::<bool>(), 16),
        vec(any::<u8>(), 16),
        vec(select(vec!["", "", " ", "\n", "\t", "\r\n  "]), 1..16),
    )
        .prop_map(|(ascii_only, nulls, order, spaces)| Style {
            ascii_only,
            nulls,
            order,
            spaces,
        })
}

// ---------------------------------------------------------------------------
// A hand-written JSON encoder, independent of serde, for the round trip.

/// Writes `s` as a JSON string. With `ascii_only`, every non-ASCII character
/// becomes `\u` escapes (surrogate pairs above U+FFFF), and `/` is `\/`.
fn json_string(s: &str, ascii_only: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '/' if ascii_only => out.push_str("\\/"),
            c if (c as u32) < 0x20 || (ascii_only && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04X}").expect("BUG: writing to a String cannot fail");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Encodes a request by hand. Optional fields that are `None` are left out
/// or written as `null` as the style says; `extras` are unknown fields the
/// server must ignore.
fn encode_request(
    req: &ReqField,
    frame: &ClientFrame,
    extras: &[(String, Value)],
    style: &Style,
) -> String {
    let s = |text: &str| json_string(text, style.ascii_only);
    let cursor = |c: &Cursor| format!("{{\"ts\":{},\"seq\":{}}}", c.ts, c.seq);
    let (kind, fields): (&str, Vec<(&str, Option<String>)>) = match frame {
        ClientFrame::Hello {
            username,
            resume,
            code,
        } => (
            "hello",
            vec![
                ("username", Some(s(username))),
                ("resume", resume.as_deref().map(s)),
                ("code", code.as_deref().map(s)),
            ],
        ),
        ClientFrame::CreateRoom { room } => ("create_room", vec![("room", Some(s(room)))]),
        ClientFrame::DeleteRoom { room } => ("delete_room", vec![("room", Some(s(room)))]),
        ClientFrame::Join { room, limit } => (
            "join",
            vec![
                ("room", Some(s(room))),
                ("limit", limit.map(|l| l.to_string())),
            ],
        ),
        ClientFrame::Leave => ("leave", vec![]),
        ClientFrame::Send { id, text, ts } => (
            "send",
            vec![
                ("id", Some(s(id))),
                ("text", Some(s(text))),
                ("ts", ts.map(|t| t.to_string())),
            ],
        ),
        ClientFrame::History {
            room,
            limit,
            before,
            after,
            since_seq,
            around,
        } => (
            "history",
            vec![
                ("room", Some(s(room))),
                ("limit", limit.map(|l| l.to_string())),
                ("before", before.as_ref().map(cursor)),
                ("after", after.as_ref().map(cursor)),
                ("since_seq", since_seq.map(|n| n.to_string())),
                ("around", around.as_ref().map(cursor)),
            ],
        ),
        ClientFrame::Edit { seq, text } => (
            "edit",
            vec![("seq", Some(seq.to_string())), ("text", Some(s(text)))],
        ),
        ClientFrame::DeleteMessage { seq } => {
            ("delete_message", vec![("seq", Some(seq.to_string()))])
        }
        ClientFrame::Search {
            query,
            room,
            limit,
            before_seq,
        } => (
            "search",
            vec![
                ("query", Some(s(query))),
                ("room", room.as_deref().map(s)),
                ("limit", limit.map(|l| l.to_string())),
                ("before_seq", before_seq.map(|n| n.to_string())),
            ],
        ),
        ClientFrame::Ping => ("ping", vec![]),
        ClientFrame::SignOut => ("sign_out", vec![]),
        ClientFrame::Typing => ("typing", vec![]),
        ClientFrame::Read { room, seq } => (
            "read",
            vec![("room", Some(s(room))), ("seq", Some(seq.to_string()))],
        ),
    };
    let mut members: Vec<(String, String)> = vec![(s("type"), s(kind))];
    let optional = fields.into_iter().chain(std::iter::once((
        "req",
        match req {
            ReqField::Absent | ReqField::Null => None,
            ReqField::Text(text) => Some(s(text)),
        },
    )));
    for (i, (name, value)) in optional.enumerate() {
        let null_req = name == "req" && matches!(req, ReqField::Null);
        match value {
            Some(value) => members.push((s(name), value)),
            None if null_req || style.nulls[i] => members.push((s(name), "null".into())),
            None => {}
        }
    }
    for (name, value) in extras {
        members.push((s(name), value.to_string()));
    }
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by_key(|&i| (style.order[i % style.order.len()], i));
    let space = |i: usize| style.spaces[i % style.spaces.len()];
    let mut out = String::from("{");
    for (n, &i) in order.iter().enumerate() {
        let (name, value) = &members[i];
        if n > 0 {
            out.push(',');
        }
        write!(
            out,
            "{}{name}{}:{}{value}",
            space(3 * n),
            space(3 * n + 1),
            space(3 * n + 2)
        )
        .expect("BUG: writing to a String cannot fail");
    }
    out.push_str(space(order.len() * 3));
    out.push('}');
    out
}

// ---------------------------------------------------------------------------
// What parse_request must say about a frame it is given.

/// Checks `parse_request(text)` against what the protocol promises for any
/// input: invalid JSON and non-objects are refused without a `req`; a `req`
/// that is a string of at most 128 characters is echoed whatever else is
/// wrong; any other `req` is refused; a missing, mistyped or unknown `type`
/// is refused; and only objects with a known `type` are accepted.
fn check_parse(text: &str) -> Result<(), TestCaseError> {
    let result = parse_request(text);
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        let error = result.expect_err("text that is not JSON was accepted");
        prop_assert_eq!(error.req, None);
        prop_assert!(
            error.message.contains("not valid JSON"),
            "{}",
            error.message
        );
        return Ok(());
    };
    let Some(object) = value.as_object() else {
        let error = result.expect_err("a JSON value that is not an object was accepted");
        prop_assert_eq!(error.req, None);
        return Ok(());
    };
    let (readable, expected_req) = match object.get("req") {
        None | Some(Value::Null) => (true, None),
        Some(Value::String(req)) if req.chars().count() <= MAX_REQ_CHARS => {
            (true, Some(req.clone()))
        }
        Some(_) => (false, None),
    };
    let kind = object.get("type").and_then(Value::as_str);
    match result {
        Ok(request) => {
            prop_assert!(readable, "a bad req was accepted: {}", text);
            prop_assert_eq!(request.req, expected_req);
            prop_assert!(
                kind.is_some_and(|k| FRAME_TYPES.contains(&k)),
                "accepted a frame of type {:?}",
                object.get("type")
            );
        }
        Err(error) => {
            prop_assert_eq!(error.req, expected_req);
            prop_assert!(!error.message.is_empty());
            if let Some(kind) = kind.filter(|k| readable && !FRAME_TYPES.contains(k)) {
                prop_assert!(
                    error.message.contains("Unknown frame type"),
                    "type {:?}: {}",
                    kind,
                    error.message
                );
            }
        }
    }
    Ok(())
}

/// A change to a frame's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize),
    Insert(usize, u8),
    Replace(usize, u8),
    Truncate(usize),
    /// Copies a range of the frame to another place.
    Splice(usize, usize, usize),
}

fn any_mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![select(b"{}[]:,\"\\ 0-eunlt".to_vec()), any::<u8>(),];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), byte.clone()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<usize>(), byte).prop_map(|(at, b)| Mutation::Replace(at, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(from, len, to)| Mutation::Splice(from, len, to)),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for m in mutations {
        let n = bytes.len();
        let at = |i: usize| if n == 0 { 0 } else { i % n };
        match *m {
            Mutation::Delete(i) if n > 0 => {
                bytes.remove(at(i));
            }
            Mutation::Insert(i, b) => bytes.insert(i % (n + 1), b),
            Mutation::Replace(i, b) if n > 0 => bytes[at(i)] = b,
            Mutation::Truncate(i) => bytes.truncate(i % (n + 1)),
            Mutation::Splice(from, len, to) if n > 0 => {
                let from = at(from);
                let piece = bytes[from..(from + len % 16).min(n)].to_vec();
                let to = to % (n + 1);
                bytes.splice(to..to, piece);
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A change to a frame's JSON value.
#[derive(Debug, Clone)]
enum ValueMutation {
    Remove(usize),
    Set(String, Value),
    /// Gives the frame another, real, type with its fields unchanged.
    Retype(&'static str),
}

fn any_value_mutation() -> impl Strategy<Value = ValueMutation> {
    prop_oneof![
        any::<usize>().prop_map(ValueMutation::Remove),
        (key(), any_json()).prop_map(|(k, v)| ValueMutation::Set(k, v)),
        select(FRAME_TYPES.to_vec()).prop_map(ValueMutation::Retype),
    ]
}

// ---------------------------------------------------------------------------
// (a) parse_request never panics, and says the right thing about req and type.

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn any_string_is_parsed_without_panicking(text in any::<String>()) {
        check_parse(&text)?;
    }

    #[test]
    fn almost_json_is_parsed_without_panicking(text in json_ish_text()) {
        check_parse(&text)?;
    }

    #[test]
    fn any_json_value_is_parsed_without_panicking(value in prop_oneof![any_json(), frame_like_json()]) {
        check_parse(&value.to_string())?;
    }

    #[test]
    fn byte_mutations_of_valid_frames_are_parsed_without_panicking(
        req in any_req_field(),
        frame in any_frame(),
        style in any_style(),
        mutations in vec(any_mutation(), 1..6),
    ) {
        let text = encode_request(&req, &frame, &[], &style);
        check_parse(&mutate(&text, &mutations))?;
    }

    #[test]
    fn field_mutations_of_valid_frames_are_parsed_without_panicking(
        req in any_req_field(),
        frame in any_frame(),
        style in any_style(),
        mutations in vec(any_value_mutation(), 1..4),
    ) {
        let text = encode_request(&req, &frame, &[], &style);
        let mut value: Value = serde_json::from_str(&text).expect("the encoder writes JSON");
        let object = value.as_object_mut().expect("the encoder writes an object");
        for m in mutations {
            match m {
                ValueMutation::Remove(i) => {
                    if let Some(k) = object.keys().nth(i % object.len().max(1)).cloned() {
                        object.remove(&k);
                    }
                }
                ValueMutation::Set(k, v) => {
                    object.insert(k, v);
                }
                ValueMutation::Retype(kind) => {
                    object.insert("type".into(), kind.into());
                }
            }
        }
        check_parse(&value.to_string())?;
    }
}

#[test]
fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
    let depth = 100_000;
    for text in [
        "[".repeat(depth),
        "{\"a\":".repeat(depth),
        format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        format!(
            "{{\"type\":\"send\",\"id\":\"x\",\"text\":\"y\",\"extra\":{}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        ),
    ] {
        let error = parse_request(&text).expect_err("nesting this deep is refused");
        assert_eq!(error.req, None);
    }
}

// ---------------------------------------------------------------------------
// (b) Every well-formed frame, written by hand in any legal way, parses back
// to the frame it was written from.

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn every_valid_frame_round_trips(
        req in any_req_field(),
        frame in any_frame(),
        extras in vec(("x-[a-z]{0,8}", any_json()), 0..3),
        style in any_style(),
    ) {
        let text = encode_request(&req, &frame, &extras, &style);
        let expected_req = match &req {
            ReqField::Text(text) => Some(text.clone()),
            ReqField::Absent | ReqField::Null => None,
        };
        match parse_request(&text) {
            Ok(parsed) => prop_assert_eq!(parsed, Request { req: expected_req, frame }),
            Err(error) => {
                return Err(TestCaseError::fail(format!("{text} refused: {}", error.message)));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// (c) The validators: never panic, accept exactly what the rules allow, and
// accepting an accepted value again changes nothing.

/// Whether `name` (already trimmed) breaks a username rule.
fn username_rule_broken(name: &str) -> bool {
    let len = name.chars().count();
    len == 0
        || len > MAX_USERNAME_CHARS
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        || name
            .chars()
            .any(|c| c.is_alphanumeric() && !c.identifier_allowed())
        || mixes_scripts(name)
}

/// Whether the letters of `name` mix scripts beyond UTS #39's "highly
/// restrictive" level (Latin with Cyrillic, say).
fn mixes_scripts(name: &str) -> bool {
    let letters: String = name.chars().filter(|c| c.is_alphanumeric()).collect();
    letters.detect_restriction_level() > RestrictionLevel::HighlyRestrictive
}

/// Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties),
/// written out independently of the server's source for it.
fn is_default_ignorable(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}'..='\u{1160}' | '\u{17B4}'..='\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}' | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

/// Whether `name` (already trimmed) breaks a room name rule.
fn room_rule_broken(name: &str) -> bool {
    let len = name.chars().count();
    len == 0
        || len > MAX_ROOM_CHARS
        || name
            .chars()
            .any(|c| c.is_control() || is_default_ignorable(c))
        || name
            .chars()
            .all(|c| is_invisible(c) || is_combining_mark(c) || c == '\u{2800}')
        || mixes_scripts(name)
}

/// Characters that show nothing: white space and the default-ignorables.
fn is_invisible(c: char) -> bool {
    c.is_whitespace() || is_default_ignorable(c)
}

/// Whether `text`, already normalized (`\r\n` made `\n`), breaks a
/// message text rule.
fn text_rule_broken(text: &str) -> bool {
    let len = text.chars().count();
    len > MAX_TEXT_CHARS
        || text.chars().all(is_invisible)
        || text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn usernames_follow_the_rules(raw in validator_input()) {
        match validate_username(&raw) {
            Ok(name) => {
                let compatible: String = raw.trim().nfkc().collect();
                prop_assert_eq!(&name, &compatible, "the only changes are trimming and NFKC");
                prop_assert!(!username_rule_broken(&name), "accepted {:?}", name);
                prop_assert_eq!(validate_username(&name), Ok(name.clone()), "idempotent");
            }
            Err(message) => {
                let compatible: String = raw.trim().nfkc().collect();
                prop_assert!(username_rule_broken(&compatible), "refused {:?}: {}", raw, message);
                prop_assert!(!message.is_empty());
            }
        }
    }

    #[test]
    fn room_names_follow_the_rules(raw in validator_input()) {
        match validate_room_name(&raw) {
            Ok(name) => {
                prop_assert_eq!(&name, raw.trim(), "the only change is trimming");
                prop_assert!(!room_rule_broken(&name), "accepted {:?}", name);
                prop_assert_eq!(name.trim(), name.as_str(), "stored names carry no outer space");
                prop_assert_eq!(validate_room_name(&name), Ok(name.clone()), "idempotent");
            }
            Err(message) => {
                prop_assert!(room_rule_broken(raw.trim()), "refused {:?}: {}", raw, message);
                prop_assert!(!message.is_empty());
            }
        }
    }

    #[test]
    fn message_text_follows_the_rules(raw in prop_oneof![validator_input(), valid_text()]) {
        let normalized = raw.replace("\r\n", "\n");
        match validate_text(&raw) {
            Ok(text) => {
                prop_assert_eq!(&text, &normalized, "the only change is \\r\\n to \\n");
                prop_assert!(!text.contains('\r'), "no carriage return survives");
                let len = text.chars().count();
                prop_assert!((1..=MAX_TEXT_CHARS).contains(&len), "{} characters", len);
                prop_assert!(!text_rule_broken(&text), "accepted {:?}", text);
                prop_assert_eq!(validate_text(&text), Ok(text.clone()), "idempotent");
            }
            Err(message) => {
                prop_assert!(text_rule_broken(&normalized), "refused {:?}: {}", raw, message);
                prop_assert!(!message.is_empty());
            }
        }
    }

    #[test]
    fn generated_valid_text_and_ids_are_accepted(text in valid_text(), id in valid_client_id()) {
        // The generators the server test below relies on.
        prop_assert!(validate_text(&text).is_ok(), "{:?}", text);
        prop_assert!(validate_client_id(&id).is_ok(), "{:?}", id);
    }

    #[test]
    fn client_ids_follow_the_rules(raw in validator_input()) {
        let len = raw.chars().count();
        let broken = len == 0 || len > MAX_CLIENT_ID_CHARS || raw.chars().any(char::is_control);
        prop_assert_eq!(validate_client_id(&raw).is_err(), broken, "{:?}", raw);
    }
}

// ---------------------------------------------------------------------------
// Search queries: whatever a person types, the store answers without an
// error (user input is never search syntax).

/// Pieces of FTS5's query syntax, and text around them.
fn query_piece() -> impl Strategy<Value = String> {
    let syntax = select(vec![
        "\"", "\"\"", "*", "NEAR", "NEAR(", "NEAR/2", "OR", "AND", "NOT", "-", "+", "(", ")", ":",
        "text:", "{text}:", "^", "{", "}", ",", "'", "\\", "\u{0}", "\u{301}", "\u{e000}", "é",
        "日本", "deploy", "plan", "a", "0", " ", "\t", "\n",
    ])
    .prop_map(String::from);
    prop_oneof![3 => syntax, 1 => any::<String>(), 1 => tricky_string(6)]
}

fn any_query() -> impl Strategy<Value = String> {
    prop_oneof![
        vec(query_piece(), 0..12).prop_map(|pieces| pieces.concat()),
        any::<String>(),
        near_limit(MAX_QUERY_CHARS),
    ]
}

thread_local! {
    /// A database with a few messages that queries can match, shared by the
    /// cases of one thread.
    static SEARCH_STORE: (support::TempDir, Store) = {
        let dir = support::TempDir::new("search-props");
        let mut store = Store::open(&dir.path().join("s.db")).expect("a new database opens");
        let user = store.login_user("ann", 1).expect("ann signs in");
        let texts = [
            "deploy plan NEAR the OR gate",
            "\"quoted\" text: with (parentheses) and * stars",
            "e-mail don't -minus +plus ^caret {braces}",
            "Café 日本 \u{e000} private",
        ];
        let batch: Vec<NewMessage> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| NewMessage {
                room_id: RoomId(1),
                user_id: user.id,
                client_id: format!("c{i}"),
                text: text.to_string(),
                ts: i as i64,
                received_at: i as i64,
                mentions: Vec::new(),
            })
            .collect();
        store.insert_messages(&batch).expect("the messages are stored");
        store.index_for_search(u64::MAX).expect("the messages are indexed");
        (dir, store)
    };
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn any_query_is_refused_as_a_bad_request_or_answered_without_an_error(raw in any_query()) {
        match validate_query(&raw) {
            Ok(query) => {
                prop_assert!(raw.chars().count() <= MAX_QUERY_CHARS);
                prop_assert!(!query.words.is_empty());
                SEARCH_STORE.with(|(_, store)| {
                    for room in [None, Some(RoomId(1))] {
                        let found = store.search(&query.words, room, None, 5);
                        prop_assert!(found.is_ok(), "{:?}: {:?}", raw, found);
                    }
                    Ok(())
                })?;
            }
            Err(message) => {
                let len = raw.chars().count();
                let blank = raw.chars().all(|c| c.is_whitespace() || c.is_control());
                prop_assert!(len > MAX_QUERY_CHARS || blank, "refused {:?}: {}", raw, message);
            }
        }
    }

    #[test]
    fn the_store_answers_any_words_without_an_error(words in vec(query_piece(), 0..8)) {
        SEARCH_STORE.with(|(_, store)| {
            let found = store.search(&words, None, Some(Seq(3)), 5);
            prop_assert!(found.is_ok(), "{:?}: {:?}", words, found);
            Ok(())
        })?;
    }
}

// ---------------------------------------------------------------------------
// (d) A real server: however often one id is sent, with whatever texts,
// across dropped sockets and reconnects, it is stored once and every ack is
// the same.

/// One send of the shared id, and what the client does around it.
#[derive(Debug, Clone)]
struct Retry {
    /// Text sent while the first send may not have been stored yet; must be
    /// valid, or the retry would rightly be refused.
    valid_text: String,
    /// Text sent once an ack proves the message is stored: anything at all,
    /// since a repeat's text is ignored.
    any_text: String,
    /// Wait for this send's reply before going on.
    wait_for_reply: bool,
    /// After sending, drop the socket without a close frame (its reply may
    /// be lost) and sign in again: `Some(true)` with the session's resume
    /// token, `Some(false)` with a plain hello.
    reconnect: Option<bool>,
}

fn any_retry() -> impl Strategy<Value = Retry> {
    (
        valid_text(),
        prop_oneof![any::<String>(), tricky_string(40), Just(String::new())],
        any::<bool>(),
        option::weighted(0.3, any::<bool>()),
    )
        .prop_map(|(valid_text, any_text, wait_for_reply, reconnect)| Retry {
            valid_text,
            any_text,
            wait_for_reply,
            reconnect,
        })
}

const RETRIER: &str = "retrier";

/// Signs in (resuming `session` when given), joins `general` unless the
/// resumed session is still in it, and returns the session token.
fn sign_in(server: &TestServer, session: Option<&str>) -> (Client, String) {
    let mut client = server.connect();
    let welcome = match session {
        Some(token) => {
            client.request(json!({"type": "hello", "username": RETRIER, "resume": token}))
        }
        None => client.hello_retrying(RETRIER, "username_taken"),
    };
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    if welcome["room"].is_null() {
        let joined = client.join("general");
        assert_eq!(joined["type"], "joined", "{joined}");
    }
    let session = welcome["session"]
        .as_str()
        .expect("a session token")
        .to_string();
    (client, session)
}

fn frames_about<'a>(
    frames: &'a [Value],
    kind: &'a str,
    id: &'a str,
) -> impl Iterator<Item = &'a Value> {
    frames
        .iter()
        .filter(move |f| f["type"] == kind && f["id"] == id)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 16,
        max_shrink_iters: 64,
        ..config(16)
    })]

    #[test]
    fn retries_of_one_id_store_one_message(
        id in valid_client_id(),
        retries in vec(any_retry(), 0..19),
        last_text in valid_text(),
    ) {
        // Reconnecting without resume rejoins the room each time; lift the
        // switch limit so that is never refused. The send limit stays at its
        // default: retries must not count against it.
        let server = TestServer::start_with(|c| c.room_switches_per_minute = 1000);
        let (mut client, mut session) = sign_in(&server, None);
        // Everything read off every socket, and the replies waited for.
        let mut seen: Vec<Value> = Vec::new();
        // Texts sent before any ack: the stored one is one of these.
        let mut candidates: Vec<String> = Vec::new();
        let mut acked = false;
        let last = Retry {
            valid_text: last_text,
            any_text: String::new(),
            wait_for_reply: true,
            reconnect: None,
        };
        for (n, retry) in retries.iter().chain(std::iter::once(&last)).enumerate() {
            let text = if acked { &retry.any_text } else { &retry.valid_text };
            if !acked {
                candidates.push(validate_text(text).expect("the generator makes valid text"));
            }
            let frame = json!({"type": "send", "id": id, "text": text, "ts": now_ms(), "req": format!("s{n}")});
            if retry.wait_for_reply {
                client.send_json(frame);
                let req = format!("s{n}");
                let reply = client.wait_for("the send's reply", |f| f["req"] == req || f["ref"] == req);
                prop_assert_eq!(&reply["type"], "ack", "send #{} of {:?}: {}", n, id, reply);
                seen.push(reply);
                acked = true;
            } else {
                client.send_json(frame);
            }
            if let Some(resume) = retry.reconnect {
                seen.append(&mut client.backlog);
                drop(client);
                let token = resume.then_some(session.as_str());
                (client, session) = sign_in(&server, token);
            }
        }
        seen.append(&mut client.backlog);

        // Each ack echoes its own send's req; everything else must match.
        let acks: Vec<Value> = frames_about(&seen, "ack", &id)
            .map(|ack| {
                let mut ack = ack.clone();
                ack.as_object_mut().expect("an object").remove("req");
                ack
            })
            .collect();
        prop_assert!(!acks.is_empty());
        for ack in &acks {
            prop_assert_eq!(ack, &acks[0], "every ack of one id is the same");
        }
        let seq = &acks[0]["seq"];
        for message in frames_about(&seen, "message", &id) {
            prop_assert_eq!(&message["seq"], seq, "{}", message);
        }
        prop_assert!(
            frames_about(&seen, "message", &id).count() <= 1,
            "one message broadcast at most: {:?}",
            seen
        );

        let page = client.request(json!({"type": "history", "room": "general", "limit": 50}));
        prop_assert_eq!(&page["type"], "history", "{}", page);
        prop_assert_eq!(&page["total"], 1, "{}", page);
        let messages = page["messages"].as_array().expect("messages");
        prop_assert_eq!(messages.len(), 1, "{}", page);
        let stored = &messages[0];
        prop_assert_eq!(&stored["id"], &json!(id));
        prop_assert_eq!(&stored["from"], RETRIER);
        prop_assert_eq!(&stored["seq"], seq);
        prop_assert_eq!(&stored["ts"], &acks[0]["ts"]);
        let text = stored["text"].as_str().expect("text");
        prop_assert!(
            candidates.iter().any(|c| c == text),
            "stored {:?}, which was not sent before the first ack ({:?})",
            text,
            candidates
        );
    }
}

proptest! {
    #![proptest_config(config(4096))]

    /// Whatever clock a client claims, the stored time is within five
    /// minutes of the server's, and nothing overflows (the extremes of i64
    /// included, which the generator favours).
    #[test]
    fn any_client_clock_gives_a_time_near_the_servers(
        client in prop_oneof![
            any::<i64>(),
            Just(i64::MIN),
            Just(i64::MAX),
            (-MAX_CLOCK_SKEW_MS * 2..MAX_CLOCK_SKEW_MS * 2).prop_map(|d| 1_764_086_400_000 + d),
        ],
        now in prop_oneof![Just(1_764_086_400_000i64), any::<i64>()],
    ) {
        let (ts, skew) = message_ts(Some(client), now);
        prop_assert!(ts.abs_diff(now) <= MAX_CLOCK_SKEW_MS as u64, "{} from {}", ts, now);
        prop_assert_eq!(skew.is_none(), ts == client);
    }
}
