//! JSON-RPC framing: OVSDB sends JSON objects back to back on a stream, with no length prefix
//! and no delimiter. [`Framer`] takes bytes as they arrive and yields each complete message,
//! however reads split or join them (two replies in one read, one reply over many reads),
//! scanning every byte once.

use serde_json::Value;
use thiserror::Error;

/// The largest message accepted (an initial monitor reply of a big Northbound database is a
/// few MiB; this bounds what a broken or hostile peer can make us buffer).
pub const DEFAULT_MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// The stream does not carry valid JSON-RPC messages.
#[derive(Debug, Error)]
pub enum FrameError {
    /// Something other than a JSON object where a message should start.
    #[error("expected a JSON object to start a message, found byte {0:#04x}")]
    NotAnObject(u8),
    /// A message larger than the limit.
    #[error("a message is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// A complete object that is not valid JSON.
    #[error("a message is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Splits a byte stream into JSON messages.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    max: usize,
}

impl Default for Framer {
    fn default() -> Framer {
        Framer::new(DEFAULT_MAX_MESSAGE)
    }
}

impl Framer {
    /// A framer refusing messages over `max` bytes.
    pub fn new(max: usize) -> Framer {
        Framer {
            buf: Vec::new(),
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            max,
        }
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet a complete message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, if the bytes pushed so far hold one.
    pub fn next_message(&mut self) -> Result<Option<Value>, FrameError> {
        // Whitespace between messages.
        if self.depth == 0 && self.scanned == 0 {
            let start = self
                .buf
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(self.buf.len());
            self.buf.drain(..start);
        }
        while self.scanned < self.buf.len() {
            let b = self.buf[self.scanned];
            self.scanned += 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        let end = self.scanned;
                        let value = serde_json::from_slice(&self.buf[..end]);
                        self.buf.drain(..end);
                        self.scanned = 0;
                        return Ok(Some(value?));
                    }
                }
                _ if self.depth == 0 => return Err(FrameError::NotAnObject(b)),
                _ => {}
            }
        }
        if self.buf.len() > self.max {
            return Err(FrameError::TooLarge { limit: self.max });
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn drain(f: &mut Framer) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(v) = f.next_message().expect("valid stream") {
            out.push(v);
        }
        out
    }

    #[test]
    fn two_messages_in_one_read_are_both_delivered() {
        let mut f = Framer::default();
        f.push(br#"{"id":1,"result":[],"error":null}{"id":2,"result":{},"error":null}"#);
        let got = drain(&mut f);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1]["id"], json!(2));
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn a_message_split_over_many_reads_is_delivered_once_complete() {
        let text = br#" {"method":"echo","params":["a}\"{b"],"id":"echo"}"#;
        let mut f = Framer::default();
        let mut got = Vec::new();
        for chunk in text.chunks(3) {
            f.push(chunk);
            got.extend(drain(&mut f));
        }
        assert_eq!(
            got,
            vec![json!({"method":"echo","params":["a}\"{b"],"id":"echo"})]
        );
    }

    #[test]
    fn braces_and_escapes_inside_strings_do_not_end_a_message() {
        let mut f = Framer::default();
        f.push(br#"{"a":"\\","b":"]}"}  {"c":1}"#);
        assert_eq!(
            drain(&mut f),
            vec![json!({"a":"\\","b":"]}"}), json!({"c":1})]
        );
    }

    #[test]
    fn garbage_between_messages_is_an_error_not_a_hang() {
        let mut f = Framer::default();
        f.push(b"x{}");
        assert!(matches!(
            f.next_message(),
            Err(FrameError::NotAnObject(b'x'))
        ));
    }

    #[test]
    fn an_unterminated_message_over_the_limit_is_refused() {
        let mut f = Framer::new(16);
        f.push(br#"{"a":"0123456789abcdef"#);
        assert!(matches!(
            f.next_message(),
            Err(FrameError::TooLarge { limit: 16 })
        ));
    }
}
