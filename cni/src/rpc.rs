//! A small, synchronous HTTP/1.1 client over a unix socket: one request per connection
//! (`Connection: close`), a deadline on every read and write. Enough for the agent's protocol and
//! nothing more, so the plugin starts fast and stays small.

use std::{
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use thiserror::Error;

/// How long the agent may take to answer: longer than its allocation wait (30 s by default)
/// plus the interface work.
pub const READ_TIMEOUT: Duration = Duration::from_mins(2);
/// How long writing the request may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response we read.
const MAX_RESPONSE_BYTES: u64 = 1 << 20;

/// A failed exchange with the agent.
#[derive(Debug, Error)]
pub enum RpcError {
    /// The socket could not be reached.
    #[error("connecting to the agent at {socket}: {source}")]
    Connect {
        /// The socket path.
        socket: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error("{op} {path} on {socket}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The request path.
        path: String,
        /// The socket path.
        socket: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The answer is not HTTP/1.1 as expected.
    #[error("the agent's answer to {path} is malformed: {reason}")]
    Malformed {
        /// The request path.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl RpcError {
    /// Whether the socket does not exist or nobody listens on it.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RpcError::Connect { source, .. }
            if matches!(source.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused))
    }
}

/// An HTTP response: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

/// `POST path` with a JSON `body` to the agent on `socket`.
pub fn post(socket: &Path, path: &str, body: &[u8]) -> Result<Response, RpcError> {
    let socket_s = socket.display().to_string();
    let io_err = |op: &'static str| {
        let path = path.to_owned();
        let socket = socket_s.clone();
        move |source| RpcError::Io {
            op,
            path,
            socket,
            source,
        }
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| RpcError::Connect {
        socket: socket_s.clone(),
        source,
    })?;
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
        .map_err(io_err("configuring"))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: dummy\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .and_then(|()| stream.flush())
        .map_err(io_err("sending"))?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut raw)
        .map_err(io_err("reading the answer to"))?;
    parse_response(&raw).map_err(|reason| RpcError::Malformed {
        path: path.to_owned(),
        reason,
    })
}

/// Parses a whole HTTP/1.1 response (read to EOF).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8")?;
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = content_length {
        rest.get(..len)
            .ok_or_else(|| format!("body shorter than Content-Length {len}"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk size line without CRLF")?;
        let size_str = std::str::from_utf8(&data[..eol]).map_err(|_| "chunk size is not UTF-8")?;
        let size_hex = size_str.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_hex, 16).map_err(|_| format!("chunk size {size_hex:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or("a chunk shorter than its size")?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or("a chunk without its CRLF")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_with_content_length_is_read() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").expect("parses");
        assert_eq!((r.status, r.body.as_slice()), (200, b"{}".as_slice()));
    }

    #[test]
    fn a_chunked_response_is_reassembled() {
        let r = parse_response(
            b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .expect("parses");
        assert_eq!((r.status, r.body.as_slice()), (500, b"abcde".as_slice()));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(parse_response(b"hello").is_err());
        assert!(parse_response(b"SMTP 200\r\n\r\n").is_err());
    }
}
