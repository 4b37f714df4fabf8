//! Framing SIP messages on a stream transport (TCP, TLS): RFC 3261 section 18.3.
//!
//! # Call order
//!
//! 1. [`StreamFramer::new`] per connection (and [`StreamFramer::answer_oversized`] when
//!    messages over the cap should be answered 513 rather than close the connection).
//! 2. After each read, [`StreamFramer::feed`] the bytes read.
//! 3. Call [`StreamFramer::next_frame`] until it returns `Ok(None)`; parse each
//!    [`Frame::Message`] with [`super::parse::parse_bytes`]; answer a [`Frame::Ping`] (a
//!    double CRLF, RFC 5626 section 3.5.1) with a single CRLF if keep-alives are offered.
//! 4. Any `Err` is fatal for the connection: the stream cannot be resynchronised, close it.
//!    The error is sticky: later calls return it again.
//!
//! Every message must carry `Content-Length` (the body cannot be delimited otherwise). The
//! buffer is bounded: a message larger than [`Limits::max_message`], a header section longer
//! than that, or more buffered data than twice that, is an error, so a peer cannot make the
//! framer grow without bound.
//!
//! # Cost
//!
//! Framing is linear in the length of the stream, however it is cut into reads. The framer
//! remembers where its scan of the header section stopped and never looks at those bytes
//! again: each read is scanned once for line ends, and each header line once more, when it is
//! complete, for its name (to find `Content-Length`, which is therefore located once, while
//! the header section arrives). Bodies are not examined at all. [`StreamFramer::examined`]
//! counts the work, so tests can hold it to a bound (a header section dripped one byte at a
//! time costs the same as one read at once).

use bytes::{Buf, Bytes, BytesMut};

use super::headers::HeaderName;
use super::parse::Limits;

/// What the framer found in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The bytes of one complete message (header section and body).
    Message(Bytes),
    /// A CRLF CRLF keep-alive ping between messages (RFC 5626): answer with CRLF.
    Ping,
    /// The first `max_message + 1` bytes of a message whose header section is complete but
    /// whose `Content-Length` takes it over the cap (only with
    /// [`StreamFramer::answer_oversized`]): the parser answers it 513 (Message Too Large).
    /// The rest of the message is discarded as it arrives, and framing goes on after it.
    Oversized(Bytes),
}

/// Why a stream cannot be framed. Each is fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A message (or its header section, or the buffered data) exceeds the size cap.
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

/// Where the scan of the header section at the front of the buffer stands.
#[derive(Debug, Default)]
struct Scan {
    /// Bytes of the buffer already scanned for line ends (never scanned again).
    scanned: usize,
    /// Where the current, incomplete, header line starts.
    line_start: usize,
    /// The first `Content-Length` (or `l`) field seen, as it parsed.
    length: Option<Result<usize, FrameError>>,
}

/// Splits a byte stream into SIP messages, in time linear in the stream's length.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    max_message: usize,
    /// Whether messages over the cap become [`Frame::Oversized`] rather than an error.
    answer_oversized: bool,
    scan: Scan,
    /// The total length of the message whose header section has been found, and whether it
    /// is over the cap (passed on cut).
    pending: Option<(usize, bool)>,
    /// Bytes still to drop of an oversized message already passed on.
    discard: usize,
    /// Bytes looked at so far (see [`StreamFramer::examined`]).
    examined: u64,
    /// The error that broke the stream, returned again by every later call.
    failed: Option<FrameError>,
    /// How much of a CRLF CRLF ping the line ends between messages have matched (0 to 3).
    ping: u8,
}

impl StreamFramer {
    /// A framer enforcing `limits.max_message`.
    pub fn new(limits: &Limits) -> StreamFramer {
        StreamFramer {
            buf: BytesMut::new(),
            max_message: limits.max_message,
            answer_oversized: false,
            scan: Scan::default(),
            pending: None,
            discard: 0,
            examined: 0,
            failed: None,
            ping: 0,
        }
    }

    /// Messages whose header section is complete and within the cap but whose total length
    /// is over it are passed on cut, as [`Frame::Oversized`], so that they can be answered
    /// 513; their bodies are discarded as they arrive (never buffered) and the connection goes
    /// on. Without this, such a message is [`FrameError::TooLarge`].
    pub fn answer_oversized(mut self) -> StreamFramer {
        self.answer_oversized = true;
        self
    }

    /// The number of bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// How many bytes the framer has examined so far, counting each look at a byte: a
    /// measure of its work, which stays within a small multiple of the bytes fed however
    /// they are cut into reads.
    pub fn examined(&self) -> u64 {
        self.examined
    }

    /// Appends bytes read from the stream. Fails when the buffered data would exceed twice
    /// the message cap (call [`StreamFramer::next_frame`] after every feed).
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.discard > 0 {
            // The rest of an oversized message (the buffer is empty while discarding).
            let n = self.discard.min(data.len());
            data = &data[n..];
            self.discard -= n;
        }
        let limit = self.max_message.saturating_mul(2);
        if self.buf.len() + data.len() > limit {
            return Err(self.fail(FrameError::TooLarge { limit }));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.pending.is_none() {
            if self.scan.scanned == 0 {
                // Between messages: CR and LF bytes are keep-alives, and each CRLF CRLF among
                // them a ping. The match is carried across reads, so the pings found do not
                // depend on how the reads cut the stream.
                let mut i = 0;
                while let Some(&b) = self.buf.get(i).filter(|b| matches!(b, b'\r' | b'\n')) {
                    i += 1;
                    self.ping = match (self.ping, b) {
                        (2, b'\r') => 3,
                        (_, b'\r') => 1,
                        (1, b'\n') => 2,
                        (3, b'\n') => 4,
                        _ => 0,
                    };
                    if self.ping == 4 {
                        self.ping = 0;
                        self.examined += i as u64;
                        self.buf.advance(i);
                        self.release_if_empty();
                        return Ok(Some(Frame::Ping));
                    }
                }
                self.examined += (i + 1).min(self.buf.len()) as u64;
                self.buf.advance(i);
                if self.buf.is_empty() {
                    self.release_if_empty();
                    return Ok(None);
                }
                // A message starts: line ends before it were not a ping.
                self.ping = 0;
            }
            let Some(body_start) = self.scan_head() else {
                if self.buf.len() > self.max_message {
                    // A header section that never ends.
                    return Err(self.fail(FrameError::TooLarge {
                        limit: self.max_message,
                    }));
                }
                return Ok(None);
            };
            if body_start > self.max_message {
                // A header section over the cap is that, whatever else is wrong with it and
                // however the reads cut it (found whole in one read or not).
                return Err(self.fail(FrameError::TooLarge {
                    limit: self.max_message,
                }));
            }
            let length = match std::mem::take(&mut self.scan).length {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(self.fail(e)),
                None => return Err(self.fail(FrameError::MissingContentLength)),
            };
            let total = body_start.saturating_add(length);
            let over = total > self.max_message;
            if over && (!self.answer_oversized || body_start > self.max_message) {
                return Err(self.fail(FrameError::TooLarge {
                    limit: self.max_message,
                }));
            }
            self.pending = Some((total, over));
        }
        let Some((total, over)) = self.pending else {
            return Ok(None);
        };
        if over {
            // Pass on the first max_message + 1 bytes (the parser answers 513), drop the rest.
            let take = self.max_message.saturating_add(1).min(total);
            if self.buf.len() < take {
                return Ok(None);
            }
            let first = self.buf.split_to(take).freeze();
            let rest = total - take;
            let now = rest.min(self.buf.len());
            self.buf.advance(now);
            self.discard = rest - now;
            self.pending = None;
            self.release_if_empty();
            return Ok(Some(Frame::Oversized(first)));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        self.pending = None;
        let msg = self.buf.split_to(total).freeze();
        self.release_if_empty();
        Ok(Some(Frame::Message(msg)))
    }

    /// Scans the header section at the front of the buffer from where the last scan stopped;
    /// returns where the body starts once the blank line that ends the section is found
    /// (CRLF CRLF, or bare LFs). Notes the first `Content-Length` on the way.
    fn scan_head(&mut self) -> Option<usize> {
        let StreamFramer {
            buf,
            scan,
            examined,
            ..
        } = self;
        while let Some(off) = memchr::memchr(b'\n', &buf[scan.scanned..]) {
            let nl = scan.scanned + off;
            *examined += off as u64 + 1;
            scan.scanned = nl + 1;
            let start = std::mem::replace(&mut scan.line_start, nl + 1);
            let line = &buf[start..nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                return Some(nl + 1);
            }
            // The start line carries no header field.
            if start > 0 && scan.length.is_none() {
                scan.length = content_length(line, examined);
            }
        }
        *examined += (buf.len() - scan.scanned) as u64;
        scan.scanned = buf.len();
        None
    }

    fn fail(&mut self, e: FrameError) -> FrameError {
        self.failed = Some(e.clone());
        e
    }

    /// An idle connection keeps no buffer: what was split off may still share it.
    fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }
}

/// The value of one complete header line if it is `Content-Length` (or `l`), else `None`.
/// Adds the bytes it looks at to `examined`.
fn content_length(line: &[u8], examined: &mut u64) -> Option<Result<usize, FrameError>> {
    if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        // A continuation of the previous field.
        *examined += 1;
        return None;
    }
    let colon = line.iter().position(|&b| b == b':');
    *examined += colon.map_or(line.len(), |c| c + 1) as u64;
    let colon = colon?;
    let name = std::str::from_utf8(&line[..colon]).ok()?;
    if HeaderName::from_name(name.trim_end()) != HeaderName::ContentLength {
        return None;
    }
    let value = &line[colon + 1..];
    *examined += value.len() as u64;
    let Ok(value) = std::str::from_utf8(value) else {
        return Some(Err(FrameError::BadContentLength));
    };
    let v = value.trim();
    if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Err(FrameError::BadContentLength));
    }
    Some(v.parse().map_err(|_| FrameError::BadContentLength))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pad: usize) -> Vec<u8> {
        let mut m = b"OPTIONS sip:a@example.test SIP/2.0\r\n\
            Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK-1\r\n\
            Max-Forwards: 70\r\nFrom: <sip:b@example.test>;tag=1\r\nTo: <sip:a@example.test>\r\n\
            Call-ID: c1\r\nCSeq: 1 OPTIONS\r\n"
            .to_vec();
        if pad > 0 {
            m.extend_from_slice(b"X-Pad: ");
            m.extend(std::iter::repeat_n(b'p', pad));
            m.extend_from_slice(b"\r\n");
        }
        m.extend_from_slice(b"Content-Length: 4\r\n\r\nbody");
        m
    }

    fn all_frames(f: &mut StreamFramer) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(frame) = f.next_frame().unwrap() {
            out.push(frame);
        }
        out
    }

    /// A 64 KiB header section fed one byte at a time: the framer's work is linear (under
    /// 4 looks per byte), the same as for one read. The old rescanning framer looked at
    /// n^2 / 2 bytes here (2 GiB).
    #[test]
    fn a_header_dripped_a_byte_at_a_time_costs_linear_work() {
        let limits = Limits {
            max_message: 70_000,
            ..Limits::default()
        };
        let msg = options(64 * 1024);
        let n = msg.len() as u64;
        let mut drip = StreamFramer::new(&limits);
        let mut frames = Vec::new();
        for b in &msg {
            drip.feed(std::slice::from_ref(b)).unwrap();
            frames.extend(all_frames(&mut drip));
        }
        assert_eq!(frames, [Frame::Message(Bytes::from(msg.clone()))]);
        let mut once = StreamFramer::new(&limits);
        once.feed(&msg).unwrap();
        assert_eq!(all_frames(&mut once).len(), 1);
        println!(
            "framer: {n} bytes, examined {} dripped, {} at once",
            drip.examined(),
            once.examined()
        );
        assert!(drip.examined() < 4 * n, "{} for {n}", drip.examined());
        assert!(once.examined() < 4 * n);
        assert_eq!(drip.buffered(), 0);
    }

    /// Found by fuzzing (`sip_framer`): a header section over the cap, with no
    /// Content-Length, was refused as too large when it arrived in small reads but as
    /// missing its Content-Length when one read held it whole.
    #[test]
    fn a_header_section_over_the_cap_is_too_large_however_it_arrives() {
        let small = Limits {
            max_message: 300,
            ..Limits::default()
        };
        let text = String::from_utf8(options(250)).unwrap();
        let msg = text.replace("Content-Length: 4\r\n", "");
        assert!(msg.len() > 300 && msg.len() < 600, "{}", msg.len());
        for read in [1, 7, 300, msg.len()] {
            let mut f = StreamFramer::new(&small).answer_oversized();
            let mut got = Ok(None);
            for chunk in msg.as_bytes().chunks(read) {
                if f.feed(chunk).is_err() {
                    break;
                }
                got = f.next_frame();
                if got.is_err() {
                    break;
                }
            }
            assert_eq!(
                got,
                Err(FrameError::TooLarge { limit: 300 }),
                "reads of {read}"
            );
        }
    }

    #[test]
    fn pings_are_answered_and_lone_crlfs_skipped() {
        let mut f = StreamFramer::new(&Limits::default());
        // Ping, lone CRLF, message, ping, ping split across reads.
        let mut stream = b"\r\n\r\n\r\n".to_vec();
        stream.extend(options(0));
        stream.extend_from_slice(b"\r\n\r\n\r\n");
        f.feed(&stream).unwrap();
        assert_eq!(
            all_frames(&mut f),
            [
                Frame::Ping,
                Frame::Message(Bytes::from(options(0))),
                Frame::Ping
            ]
        );
        // The trailing lone CRLF and a ping split across reads: the first CRLF CRLF among
        // them is a ping, wherever the reads cut.
        f.feed(b"\r").unwrap();
        assert_eq!(f.next_frame(), Ok(None));
        f.feed(b"\n\r").unwrap();
        assert_eq!(f.next_frame(), Ok(Some(Frame::Ping)));
        assert_eq!(f.next_frame(), Ok(None));
        f.feed(b"\n\r\n").unwrap();
        assert_eq!(f.next_frame(), Ok(Some(Frame::Ping)));
        f.feed(b"\r\n").unwrap();
        assert_eq!(f.next_frame(), Ok(None), "a lone CRLF");
        assert_eq!(f.buffered(), 0);
    }

    /// Found by fuzzing (`sip_framer`): a ping after a stray LF (`LF CRLF CRLF`) was found
    /// when one read held it but lost when the reads cut it after four bytes, and two pings
    /// in one read counted as one. Every cut of such runs now gives the same pings.
    #[test]
    fn pings_do_not_depend_on_the_cuts() {
        for (run, pings) in [
            (&b"\n\r\n\r\n"[..], 1),
            (b"\r\n\r\n\r\n\r\n", 2),
            (b"\r\r\n\n\r\n\r\n", 1),
            (b"\r\n\r\r\n\r\n", 1),
        ] {
            for cut in 0..=run.len() {
                let mut f = StreamFramer::new(&Limits::default());
                f.feed(&run[..cut]).unwrap();
                let mut got = all_frames(&mut f);
                f.feed(&run[cut..]).unwrap();
                got.extend(all_frames(&mut f));
                f.feed(&options(0)).unwrap();
                got.extend(all_frames(&mut f));
                let mut want = vec![Frame::Ping; pings];
                want.push(Frame::Message(Bytes::from(options(0))));
                assert_eq!(got, want, "{run:?} cut at {cut}");
            }
        }
    }

    /// Every cut of a two-message stream with pings frames the same.
    #[test]
    fn frames_split_at_every_position() {
        let mut stream = b"\r\n\r\n".to_vec();
        stream.extend(options(10));
        stream.extend_from_slice(b"\r\n");
        stream.extend(options(0));
        for cut in 0..=stream.len() {
            let mut f = StreamFramer::new(&Limits::default());
            f.feed(&stream[..cut]).unwrap();
            let mut got = all_frames(&mut f);
            f.feed(&stream[cut..]).unwrap();
            got.extend(all_frames(&mut f));
            assert_eq!(
                got,
                [
                    Frame::Ping,
                    Frame::Message(Bytes::from(options(10))),
                    Frame::Message(Bytes::from(options(0)))
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversized_messages_are_cut_or_refused() {
        let small = Limits {
            max_message: 300,
            ..Limits::default()
        };
        let big = String::from_utf8(options(0)).unwrap().replace(
            "Content-Length: 4\r\n\r\nbody",
            "Content-Length: 1000\r\n\r\n",
        );
        let mut stream = big.clone().into_bytes();
        stream.extend(std::iter::repeat_n(b'x', 1000));
        stream.extend(options(0));
        // Answered: cut at max + 1 bytes, the rest dropped as it comes, then the next message.
        let mut f = StreamFramer::new(&small).answer_oversized();
        let mut got = Vec::new();
        for chunk in stream.chunks(7) {
            f.feed(chunk).unwrap();
            got.extend(all_frames(&mut f));
            assert!(f.buffered() <= 301 + 7);
        }
        assert_eq!(got.len(), 2, "{got:?}");
        match &got[0] {
            Frame::Oversized(b) => {
                assert_eq!(b.len(), 301);
                assert!(b.starts_with(big.as_bytes()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(got[1], Frame::Message(Bytes::from(options(0))));
        // Refused without answer_oversized, and the error sticks.
        let mut f = StreamFramer::new(&small);
        f.feed(&stream[..400]).unwrap();
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 300 }));
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 300 }));
        // A header section that never ends is refused at the cap, even when answering.
        let mut f = StreamFramer::new(&small).answer_oversized();
        f.feed(&options(400)[..301]).unwrap();
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 300 }));
    }
}
