//! Fuzzes the frame decoder and the validators with arbitrary bytes. The
//! server only ever hands them valid UTF-8 (tungstenite closes a text frame
//! that is not with 1007), so valid input is used as it is and anything else
//! after lossy decoding. Besides not panicking, each call must keep the
//! promises the hub relies on; a broken one is reported as a crash.

#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use parlor::protocol::{
    MAX_REQ_CHARS, MAX_ROOM_CHARS, MAX_TEXT_CHARS, MAX_USERNAME_CHARS, parse_request,
    validate_client_id, validate_room_name, validate_text, validate_username,
};

fuzz_target!(|data: &[u8]| {
    let text = match std::str::from_utf8(data) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(data),
    };

    match parse_request(&text) {
        Ok(request) => {
            assert!(
                request
                    .req
                    .is_none_or(|r| r.chars().count() <= MAX_REQ_CHARS)
            );
        }
        Err(error) => assert!(!error.message.is_empty()),
    }

    if let Ok(name) = validate_username(&text) {
        let len = name.chars().count();
        assert!((1..=MAX_USERNAME_CHARS).contains(&len));
        assert_eq!(name, text.trim());
        assert_eq!(validate_username(&name), Ok(name.clone()));
    }
    if let Ok(room) = validate_room_name(&text) {
        let len = room.chars().count();
        assert!((1..=MAX_ROOM_CHARS).contains(&len));
        assert!(!room.chars().any(char::is_control));
        assert_eq!(validate_room_name(&room), Ok(room.clone()));
    }
    if let Ok(message) = validate_text(&text) {
        let len = message.chars().count();
        assert!((1..=MAX_TEXT_CHARS).contains(&len));
        assert!(!message.trim().is_empty());
        assert!(
            !message
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
        );
        assert_eq!(message, text.replace("\r\n", "\n"));
        assert_eq!(validate_text(&message), Ok(message.clone()));
    }
    let _ = validate_client_id(&text);
});
