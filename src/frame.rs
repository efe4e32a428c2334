//! An encoded server frame: a complete, unmasked WebSocket text frame
//! (tungstenite writes the header), built once per event and shared by all
//! its recipients, so a broadcast costs one encoding however many read it.

use tungstenite::Bytes;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// A complete, unmasked WebSocket text frame (header and payload), shared:
/// a clone is a reference count, and building one copies the payload once.
#[derive(Clone)]
pub struct Frame(Bytes);

impl Frame {
    /// Frames a text message as one final frame, as a server sends it.
    pub fn text(payload: &str) -> Frame {
        let header = FrameHeader {
            is_final: true,
            opcode: OpCode::Data(Data::Text),
            ..FrameHeader::default()
        };
        let len = payload.len() as u64;
        let mut bytes = Vec::with_capacity(header.len(len) + payload.len());
        header
            .format(len, &mut bytes)
            .expect("BUG: writing to a Vec cannot fail");
        bytes.extend_from_slice(payload.as_bytes());
        Frame(Bytes::from(bytes))
    }

    /// The whole frame as it goes on the wire.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The text it carries.
    pub fn payload(&self) -> &str {
        // An unmasked server frame's header is 2, 4 or 10 bytes, by the
        // length byte (RFC 6455 5.2).
        let start = match self.0[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        std::str::from_utf8(&self.0[start..]).expect("BUG: a frame is made from a str")
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Frame").field(&self.payload()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tungstenite::protocol::{Role, WebSocket};

    /// What a client reads from these bytes, by tungstenite.
    fn read_as_client(bytes: Vec<u8>) -> Vec<String> {
        let mut ws = WebSocket::from_raw_socket(Cursor::new(bytes), Role::Client, None);
        let mut texts = Vec::new();
        while let Ok(message) = ws.read() {
            texts.push(message.into_text().unwrap().to_string());
        }
        texts
    }

    #[test]
    fn frames_of_every_length_class_read_back_as_sent() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 200_000] {
            let text: String = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let frame = Frame::text(&text);
            assert_eq!(frame.payload(), text);
            assert_eq!(read_as_client(frame.bytes().to_vec()), vec![text]);
        }
    }
}
