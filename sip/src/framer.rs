//! Framing SIP messages on a stream transport (TCP, TLS): RFC 3261 section 18.3.
//!
//! # Call order
//!
//! 1. [`StreamFramer::new`] per connection.
//! 2. After each read, [`StreamFramer::feed`] the bytes read.
//! 3. Call [`StreamFramer::next_frame`] until it returns `Ok(None)`; parse each
//!    [`Frame::Message`] with [`super::parse::parse_bytes`]; answer a [`Frame::Ping`] (a
//!    double CRLF, RFC 5626 section 4.4.1) with a single CRLF if keep-alives are offered.
//! 4. Any `Err` is fatal for the connection: the stream cannot be resynchronised, close it.
//!
//! Every message must carry `Content-Length` (the body cannot be delimited otherwise). The
//! buffer is bounded: a message larger than [`Limits::max_message`], or more buffered data than
//! twice that, is an error, so a peer cannot make the framer grow without bound.

use bytes::{Buf, Bytes, BytesMut};

use super::headers::HeaderName;
use super::parse::{find_head_end, Limits};

/// What the framer found in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The bytes of one complete message (header section and body).
    Message(Bytes),
    /// A CRLF CRLF keep-alive ping between messages (RFC 5626): answer with CRLF.
    Ping,
}

/// Why a stream cannot be framed. Each is fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A message (or the buffered data) exceeds the size cap.
    #[error("message exceeds {limit} bytes")]
    TooLarge {
        /// The cap that was exceeded.
        limit: usize,
    },
    /// A message without `Content-Length`.
    #[error("message on a stream without content-length")]
    MissingContentLength,
    /// A `Content-Length` that is not a number.
    #[error("malformed content-length")]
    BadContentLength,
}

/// Splits a byte stream into SIP messages.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    max_message: usize,
    /// The total length of the message whose header section has been found.
    pending: Option<usize>,
}

impl StreamFramer {
    /// A framer enforcing `limits.max_message`.
    pub fn new(limits: &Limits) -> StreamFramer {
        StreamFramer {
            buf: BytesMut::new(),
            max_message: limits.max_message,
            pending: None,
        }
    }

    /// The number of bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends bytes read from the stream. Fails when the buffered data would exceed twice
    /// the message cap (call [`StreamFramer::next_frame`] after every feed).
    pub fn feed(&mut self, data: &[u8]) -> Result<(), FrameError> {
        let limit = self.max_message.saturating_mul(2);
        if self.buf.len() + data.len() > limit {
            return Err(FrameError::TooLarge { limit });
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.pending.is_none() {
            // Between messages: CRLFs are keep-alives.
            let lead = self
                .buf
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .unwrap_or(self.buf.len());
            if lead > 0 {
                let ping = self.buf[..lead].windows(4).any(|w| w == b"\r\n\r\n");
                if !ping && lead == self.buf.len() && lead < 4 {
                    // Possibly the first half of a ping split across reads: keep it.
                    return Ok(None);
                }
                self.buf.advance(lead);
                if ping {
                    return Ok(Some(Frame::Ping));
                }
            }
            if self.buf.is_empty() {
                return Ok(None);
            }
            let Some((head_len, body_start)) = find_head_end(&self.buf) else {
                if self.buf.len() > self.max_message {
                    return Err(FrameError::TooLarge {
                        limit: self.max_message,
                    });
                }
                return Ok(None);
            };
            let body_len = content_length(&self.buf[..head_len])?;
            let total = body_start.saturating_add(body_len);
            if total > self.max_message {
                return Err(FrameError::TooLarge {
                    limit: self.max_message,
                });
            }
            self.pending = Some(total);
        }
        let Some(total) = self.pending else {
            return Ok(None);
        };
        if self.buf.len() < total {
            return Ok(None);
        }
        self.pending = None;
        Ok(Some(Frame::Message(self.buf.split_to(total).freeze())))
    }
}

/// Finds `Content-Length` (or `l`) in a header section without parsing the rest.
fn content_length(head: &[u8]) -> Result<usize, FrameError> {
    for line in head.split(|&b| b == b'\n').skip(1) {
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let Ok(name) = std::str::from_utf8(&line[..colon]) else {
            continue;
        };
        if HeaderName::from_name(name.trim_end()) != HeaderName::ContentLength {
            continue;
        }
        let value =
            std::str::from_utf8(&line[colon + 1..]).map_err(|_| FrameError::BadContentLength)?;
        let v = value.trim();
        if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FrameError::BadContentLength);
        }
        return v.parse().map_err(|_| FrameError::BadContentLength);
    }
    Err(FrameError::MissingContentLength)
}
