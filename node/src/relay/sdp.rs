//! SDP offers and answers (RFC 8866, formerly RFC 4566): just what relaying media needs.
//!
//! [`Sdp::parse`] finds the session-level `c=` line, every `m=` line with its port, transport
//! and media-level `c=`, and `a=rtcp` (RFC 3605). [`Sdp::targets`] says, per `m=` line, where
//! that side wants its media; [`Sdp::rewrite`] puts the relay's addresses in their place.
//! Every other line is kept byte for byte, with its own line ending (`\r\n` or a bare `\n`).
//!
//! What is left alone: a stream with port 0 (rejected or disabled), a stream over TCP (a UDP
//! relay cannot carry it), and a stream whose connection address is unspecified (`0.0.0.0`,
//! the old way of putting a call on hold). A body that is not SDP as described below
//! (`v=0` first, `x=value` lines, `IN IP4|IP6` connection data, numeric ports), or that uses
//! what a relay cannot serve (multicast connection addresses, port counts `49170/2`), is
//! reported as malformed: the caller then leaves the body untouched.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Most `m=` lines in a body we will parse.
pub const MAX_MEDIA: usize = 64;

/// Where one side of a stream wants its media, as its SDP says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Endpoint {
    /// RTP: the connection address and the `m=` port. `None` when the address is not an IP
    /// address (a host name): the relay then learns it from the first packet only.
    pub rtp: Option<SocketAddr>,
    /// RTCP: from `a=rtcp` when present, else the RTP port + 1 on the same address.
    pub rtcp: Option<SocketAddr>,
}

/// A connection address (`c=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addr {
    /// An IP address.
    Ip(IpAddr),
    /// A host name (allowed by the grammar, rare in practice).
    Name,
}

#[derive(Debug, Clone)]
struct Conn {
    line: usize,
    addr: Addr,
}

#[derive(Debug, Clone)]
struct Media {
    /// Index of the `m=` line.
    line: usize,
    /// Byte range of the port in that line.
    port_at: Range<usize>,
    port: u16,
    /// Not a TCP-based transport.
    udp: bool,
    conn: Option<Conn>,
    /// `a=rtcp:PORT [IN IP4 ADDR]`: line, port, whether it carries an address, the address.
    rtcp: Option<(usize, u16, bool, Option<Addr>)>,
    /// The last line of the section's head where a `c=` may be inserted after (`m=`, `i=`).
    head_end: usize,
}

/// A parsed SDP body (owning its bytes).
#[derive(Debug, Clone)]
pub struct Sdp {
    body: Bytes,
    /// Each line: the text (without its ending) and its ending.
    lines: Vec<(Range<usize>, Range<usize>)>,
    session_conn: Option<Conn>,
    media: Vec<Media>,
}

fn text<'a>(body: &'a [u8], r: &Range<usize>) -> Option<&'a str> {
    std::str::from_utf8(&body[r.clone()]).ok()
}

/// `IN IP4 ADDR` (or `IP6`); `None` when malformed or multicast.
fn parse_conn(value: &str) -> Option<Addr> {
    let mut it = value.split_ascii_whitespace();
    let (net, kind, addr) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || net != "IN" || addr.contains('/') {
        return None;
    }
    match kind {
        "IP4" | "IP6" => {}
        _ => return None,
    }
    match addr.parse::<IpAddr>() {
        Ok(ip) if ip.is_multicast() => None,
        Ok(ip) if (kind == "IP4") != ip.is_ipv4() => None,
        Ok(ip) => Some(Addr::Ip(ip)),
        Err(_)
            if addr
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') =>
        {
            Some(Addr::Name)
        }
        Err(_) => None,
    }
}

impl Sdp {
    /// Parses `body`; `None` when it is not SDP this module can rewrite (see the module
    /// documentation).
    pub fn parse(body: Bytes) -> Option<Sdp> {
        let mut lines = Vec::new();
        let mut start = 0;
        let b = &body[..];
        while start < b.len() {
            let (end, next) = match memchr::memchr(b'\n', &b[start..]) {
                Some(i) => (start + i, start + i + 1),
                None => (b.len(), b.len()),
            };
            let text_end = if end > start && b[end - 1] == b'\r' {
                end - 1
            } else {
                end
            };
            lines.push((start..text_end, text_end..next));
            start = next;
        }
        let mut sdp = Sdp {
            body,
            lines,
            session_conn: None,
            media: Vec::new(),
        };
        sdp.scan()?;
        Some(sdp)
    }

    fn scan(&mut self) -> Option<()> {
        let b = &self.body[..];
        let mut first = true;
        for (i, (r, _)) in self.lines.iter().enumerate() {
            let line = &b[r.clone()];
            if line.is_empty() {
                continue;
            }
            if line.len() < 2 || !line[0].is_ascii_lowercase() || line[1] != b'=' {
                return None;
            }
            if first {
                if line != b"v=0" {
                    return None;
                }
                first = false;
                continue;
            }
            match line[0] {
                b'm' => {
                    if self.media.len() >= MAX_MEDIA {
                        return None;
                    }
                    let t = text(b, r)?;
                    let mut parts = t[2..].split(' ');
                    let _kind = parts.next().filter(|s| !s.is_empty())?;
                    let port_text = parts.next()?;
                    let proto = parts.next().filter(|s| !s.is_empty())?;
                    parts.next().filter(|s| !s.is_empty())?; // at least one format
                    if port_text.is_empty() || !port_text.bytes().all(|c| c.is_ascii_digit()) {
                        return None; // includes port counts (`49170/2`)
                    }
                    let port: u16 = port_text.parse().ok()?;
                    let port_start = r.start + 2 + t[2..].find(' ')? + 1;
                    self.media.push(Media {
                        line: i,
                        port_at: port_start..port_start + port_text.len(),
                        port,
                        udp: !proto.to_ascii_uppercase().contains("TCP"),
                        conn: None,
                        rtcp: None,
                        head_end: i,
                    });
                }
                b'c' => {
                    let addr = parse_conn(text(b, r)?.get(2..)?)?;
                    let conn = Conn { line: i, addr };
                    match self.media.last_mut() {
                        Some(m) => {
                            if m.conn.is_some() {
                                return None;
                            }
                            m.conn = Some(conn);
                        }
                        None => {
                            if self.session_conn.is_some() {
                                return None;
                            }
                            self.session_conn = Some(conn);
                        }
                    }
                }
                b'i' => {
                    if let Some(m) = self.media.last_mut() {
                        if m.head_end + 1 == i {
                            m.head_end = i;
                        }
                    }
                }
                b'a' => {
                    let Some(m) = self.media.last_mut() else {
                        continue;
                    };
                    let t = text(b, r).unwrap_or("");
                    let Some(value) = t.strip_prefix("a=rtcp:") else {
                        continue;
                    };
                    let mut parts = value.splitn(2, ' ');
                    let port: u16 = parts.next()?.trim().parse().ok()?;
                    let (has_addr, addr) = match parts.next() {
                        Some(rest) => (true, Some(parse_conn(rest)?)),
                        None => (false, None),
                    };
                    if m.rtcp.is_some() {
                        return None;
                    }
                    m.rtcp = Some((i, port, has_addr, addr));
                }
                _ => {}
            }
        }
        if first {
            return None;
        }
        // Every stream in use needs a connection address.
        for m in &self.media {
            if m.port != 0 && m.conn.is_none() && self.session_conn.is_none() {
                return None;
            }
        }
        Some(())
    }

    /// The number of `m=` lines.
    pub fn media_count(&self) -> usize {
        self.media.len()
    }

    fn conn_of<'a>(&'a self, m: &'a Media) -> Option<&'a Conn> {
        m.conn.as_ref().or(self.session_conn.as_ref())
    }

    /// Per `m=` line: where this side wants that stream's media, or `None` when the stream is
    /// not to be relayed (port 0, TCP, connection address unspecified).
    pub fn targets(&self) -> Vec<Option<Endpoint>> {
        self.media
            .iter()
            .map(|m| {
                if m.port == 0 || !m.udp {
                    return None;
                }
                let ip = match self.conn_of(m)?.addr {
                    Addr::Ip(ip) if ip.is_unspecified() => return None,
                    Addr::Ip(ip) => Some(ip),
                    Addr::Name => None,
                };
                let rtp = ip.map(|ip| SocketAddr::new(ip, m.port));
                let rtcp = match m.rtcp {
                    Some((_, port, _, Some(Addr::Ip(a)))) => Some(SocketAddr::new(a, port)),
                    Some((_, _, _, Some(Addr::Name))) => None,
                    Some((_, port, _, None)) => ip.map(|ip| SocketAddr::new(ip, port)),
                    None => ip.map(|ip| SocketAddr::new(ip, m.port.wrapping_add(1))),
                };
                Some(Endpoint { rtp, rtcp })
            })
            .collect()
    }

    /// Whether any stream is to be relayed.
    pub fn has_targets(&self) -> bool {
        self.targets().iter().any(Option::is_some)
    }

    /// The body with stream `i` pointed at `relay[i]` (its RTP address; RTCP is the next
    /// port) wherever `relay[i]` is `Some` and the stream is relayable. Unchanged when `relay`
    /// does not have one entry per `m=` line or names nothing.
    pub fn rewrite(&self, relay: &[Option<SocketAddr>]) -> Bytes {
        if relay.len() != self.media.len() {
            return self.body.clone();
        }
        let targets = self.targets();
        let relayed: Vec<Option<SocketAddr>> = relay
            .iter()
            .zip(&targets)
            .map(|(r, t)| r.filter(|_| t.is_some()))
            .collect();
        if relayed.iter().all(Option::is_none) {
            return self.body.clone();
        }
        let b = &self.body[..];
        // Replacement text per line index, and lines to insert after a line index.
        let mut replace: Vec<Option<Vec<u8>>> = vec![None; self.lines.len()];
        let mut insert: Vec<(usize, Vec<u8>)> = Vec::new();
        let conn_line = |ip: IpAddr| -> Vec<u8> {
            let kind = if ip.is_ipv4() { "IP4" } else { "IP6" };
            format!("c=IN {kind} {ip}").into_bytes()
        };
        let mut session_used = false;
        for (m, r) in self.media.iter().zip(&relayed) {
            let Some(addr) = r else {
                continue;
            };
            let (text_range, _) = &self.lines[m.line];
            let mut line = b[text_range.start..m.port_at.start].to_vec();
            line.extend_from_slice(addr.port().to_string().as_bytes());
            line.extend_from_slice(&b[m.port_at.end..text_range.end]);
            replace[m.line] = Some(line);
            match &m.conn {
                Some(c) => replace[c.line] = Some(conn_line(addr.ip())),
                None => session_used = true,
            }
            if let Some((l, _, has_addr, _)) = m.rtcp {
                let rtcp_port = addr.port().wrapping_add(1);
                let line = if has_addr {
                    let kind = if addr.ip().is_ipv4() { "IP4" } else { "IP6" };
                    format!("a=rtcp:{rtcp_port} IN {kind} {}", addr.ip())
                } else {
                    format!("a=rtcp:{rtcp_port}")
                };
                replace[l] = Some(line.into_bytes());
            }
        }
        if session_used {
            if let (Some(c), Some(ip)) = (&self.session_conn, relayed.iter().flatten().next()) {
                // Streams in use that keep their own address need the old one of their own.
                let old = b[self.lines[c.line].0.clone()].to_vec();
                for (m, r) in self.media.iter().zip(&relayed) {
                    if r.is_none() && m.port != 0 && m.conn.is_none() {
                        insert.push((m.head_end, old.clone()));
                    }
                }
                // The session-level address serves the relayed streams that rely on it.
                let first_relying = self
                    .media
                    .iter()
                    .zip(&relayed)
                    .find(|(m, r)| r.is_some() && m.conn.is_none())
                    .and_then(|(_, r)| *r)
                    .unwrap_or(*ip);
                replace[c.line] = Some(conn_line(first_relying.ip()));
                // Relayed streams relying on it whose relay address differs get their own.
                for (m, r) in self.media.iter().zip(&relayed) {
                    if let Some(addr) = r {
                        if m.conn.is_none() && addr.ip() != first_relying.ip() {
                            insert.push((m.head_end, conn_line(addr.ip())));
                        }
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(b.len() + 64);
        for (i, (t, end)) in self.lines.iter().enumerate() {
            match &replace[i] {
                Some(new) => out.extend_from_slice(new),
                None => out.extend_from_slice(&b[t.clone()]),
            }
            out.extend_from_slice(&b[end.clone()]);
            for (_, line) in insert.iter().filter(|(after, _)| *after == i) {
                let ending = &b[end.clone()];
                if ending.ends_with(b"\n") {
                    out.extend_from_slice(line);
                    out.extend_from_slice(ending);
                } else {
                    // The body's last line, with no line end or a lone CR (no LF follows):
                    // end it with CRLF and leave the inserted line, now the last, as it was.
                    if ending.is_empty() {
                        out.push(b'\r');
                    }
                    out.push(b'\n');
                    out.extend_from_slice(line);
                }
            }
        }
        Bytes::from(out)
    }
}

/// Whether a `Content-Type` value names SDP (`application/sdp`, any case, any parameters).
pub fn is_sdp_type(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const OFFER: &str = "v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 198.51.100.10\r\n\
s=-\r\n\
c=IN IP4 198.51.100.10\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=sendrecv\r\n";

    /// Found by fuzzing (`sdp_rewrite`): two streams relying on the session-level address,
    /// relayed at different addresses, both got the first one's address.
    #[test]
    fn streams_sharing_the_session_address_can_go_to_different_relays() {
        let offer = "v=0\r\nc=IN IP4 198.51.100.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\n\
                     m=video 49180 RTP/AVP 31\r\ni=camera\r\na=rtcp:49190\r\n";
        let sdp = Sdp::parse(Bytes::from_static(offer.as_bytes())).unwrap();
        let relay = [
            Some(sa("192.0.2.21:40000")),
            Some(sa("[2001:db8::7]:40002")),
        ];
        let out = sdp.rewrite(&relay);
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(
            text,
            "v=0\r\nc=IN IP4 192.0.2.21\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n\
             m=video 40002 RTP/AVP 31\r\ni=camera\r\nc=IN IP6 2001:db8::7\r\na=rtcp:40003\r\n"
        );
        let again = Sdp::parse(out).unwrap();
        assert_eq!(
            again.targets(),
            vec![
                Some(Endpoint {
                    rtp: Some(sa("192.0.2.21:40000")),
                    rtcp: Some(sa("192.0.2.21:40001")),
                }),
                Some(Endpoint {
                    rtp: Some(sa("[2001:db8::7]:40002")),
                    rtcp: Some(sa("[2001:db8::7]:40003")),
                }),
            ]
        );
    }

    /// Found by fuzzing (`sdp_rewrite`): a body whose last line ends in a lone CR got a line
    /// inserted after it with CR alone between them, which is no line end: the inserted
    /// `c=` merged into the `m=` line and the stream went to the relay's address.
    #[test]
    fn a_line_inserted_after_a_last_line_ending_in_cr_is_a_line_of_its_own() {
        let offer = "v=0\r\nc=IN IP4 198.51.100.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\n\
                     m=video 57312 RTP/AVP 31\r";
        let sdp = Sdp::parse(Bytes::from_static(offer.as_bytes())).unwrap();
        let out = sdp.rewrite(&[Some(sa("192.0.2.21:40000")), None]);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "v=0\r\nc=IN IP4 192.0.2.21\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n\
             m=video 57312 RTP/AVP 31\r\nc=IN IP4 198.51.100.10"
        );
        let again = Sdp::parse(out).unwrap();
        assert_eq!(again.targets()[1], sdp.targets()[1]);
    }

    #[test]
    fn offer_points_at_the_relay_and_keeps_the_rest() {
        let sdp = Sdp::parse(Bytes::from_static(OFFER.as_bytes())).unwrap();
        assert_eq!(
            sdp.targets(),
            vec![Some(Endpoint {
                rtp: Some(sa("198.51.100.10:49170")),
                rtcp: Some(sa("198.51.100.10:49171")),
            })]
        );
        let out = sdp.rewrite(&[Some(sa("192.0.2.21:40002"))]);
        let want = OFFER
            .replace("c=IN IP4 198.51.100.10", "c=IN IP4 192.0.2.21")
            .replace("m=audio 49170", "m=audio 40002");
        assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        // The origin line is not connection data: it stays.
        assert!(want.contains("o=alice 2890844526 2890844526 IN IP4 198.51.100.10\r\n"));
    }

    #[test]
    fn answer_with_media_level_addresses_and_several_streams() {
        let answer = "v=0\r\no=bob 1 1 IN IP4 203.0.113.5\r\ns=-\r\nt=0 0\r\n\
m=audio 3456 RTP/AVP 0\r\nc=IN IP4 203.0.113.5\r\na=rtcp:3460\r\n\
m=video 3470 RTP/AVP 96\r\ni=camera\r\nc=IN IP4 203.0.113.6\r\na=rtpmap:96 H264/90000\r\n";
        let sdp = Sdp::parse(Bytes::from(answer)).unwrap();
        assert_eq!(sdp.media_count(), 2);
        let t = sdp.targets();
        assert_eq!(t[0].unwrap().rtp, Some(sa("203.0.113.5:3456")));
        assert_eq!(t[0].unwrap().rtcp, Some(sa("203.0.113.5:3460")));
        assert_eq!(t[1].unwrap().rtp, Some(sa("203.0.113.6:3470")));
        assert_eq!(t[1].unwrap().rtcp, Some(sa("203.0.113.6:3471")));
        let out = sdp.rewrite(&[Some(sa("192.0.2.21:40010")), Some(sa("192.0.2.21:40014"))]);
        let want = answer
            .replace("m=audio 3456", "m=audio 40010")
            .replace(
                "c=IN IP4 203.0.113.5\r\na=rtcp:3460",
                "c=IN IP4 192.0.2.21\r\na=rtcp:40011",
            )
            .replace("m=video 3470", "m=video 40014")
            .replace("c=IN IP4 203.0.113.6", "c=IN IP4 192.0.2.21");
        assert_eq!(std::str::from_utf8(&out).unwrap(), want);
    }

    #[test]
    fn session_and_media_level_addresses_mixed() {
        // Audio relies on the session address, video has its own.
        let body = "v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\n\
m=audio 5000 RTP/AVP 0\nm=video 5002 RTP/AVP 96\nc=IN IP4 10.0.0.2\n";
        let sdp = Sdp::parse(Bytes::from(body)).unwrap();
        let out = sdp.rewrite(&[Some(sa("192.0.2.1:40000")), Some(sa("192.0.2.1:40004"))]);
        let want = "v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n\
m=audio 40000 RTP/AVP 0\nm=video 40004 RTP/AVP 96\nc=IN IP4 192.0.2.1\n";
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            want,
            "bare LF endings kept"
        );
    }

    #[test]
    fn port_zero_and_tcp_streams_are_left_alone() {
        let body = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 5000 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\nm=message 7394 TCP/MSRP *\r\n\
a=path:msrp://10.0.0.1:7394/s;tcp\r\n";
        let sdp = Sdp::parse(Bytes::from(body)).unwrap();
        let t = sdp.targets();
        assert!(t[0].is_some());
        assert_eq!(t[1], None, "port 0: rejected stream");
        assert_eq!(t[2], None, "TCP cannot be relayed over UDP");
        // Even if asked to, the rewriter touches only relayable streams.
        let out = sdp.rewrite(&[
            Some(sa("192.0.2.1:40000")),
            Some(sa("192.0.2.1:40004")),
            Some(sa("192.0.2.1:40008")),
        ]);
        let want = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\nm=message 7394 TCP/MSRP *\r\n\
c=IN IP4 10.0.0.1\r\na=path:msrp://10.0.0.1:7394/s;tcp\r\n";
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            want,
            "the TCP stream keeps the old address through a media-level c= of its own"
        );
    }

    #[test]
    fn hold_with_an_unspecified_address_is_not_relayed() {
        let body = "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
m=audio 5000 RTP/AVP 0\r\na=sendonly\r\n";
        let sdp = Sdp::parse(Bytes::from(body)).unwrap();
        assert_eq!(sdp.targets(), vec![None]);
        assert!(!sdp.has_targets());
        assert_eq!(
            &sdp.rewrite(&[Some(sa("192.0.2.1:40000"))])[..],
            body.as_bytes()
        );
    }

    #[test]
    fn rtcp_attribute_with_an_address_and_ipv6() {
        let body = "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=-\r\nt=0 0\r\n\
m=audio 6000 RTP/AVP 0\r\nc=IN IP6 2001:db8::1\r\na=rtcp:6001 IN IP6 2001:db8::2\r\n";
        let sdp = Sdp::parse(Bytes::from(body)).unwrap();
        let t = sdp.targets()[0].unwrap();
        assert_eq!(t.rtp, Some(sa("[2001:db8::1]:6000")));
        assert_eq!(t.rtcp, Some(sa("[2001:db8::2]:6001")));
        let out = sdp.rewrite(&[Some(sa("192.0.2.1:40000"))]);
        let s = std::str::from_utf8(&out).unwrap();
        assert!(
            s.contains("\r\nc=IN IP4 192.0.2.1\r\na=rtcp:40001 IN IP4 192.0.2.1\r\n"),
            "{s}"
        );
    }

    #[test]
    fn host_names_are_relayed_without_a_known_address() {
        let body =
            "v=0\r\ns=-\r\nc=IN IP4 phone.example.test\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";
        let sdp = Sdp::parse(Bytes::from(body)).unwrap();
        assert_eq!(
            sdp.targets(),
            vec![Some(Endpoint {
                rtp: None,
                rtcp: None
            })]
        );
        let out = sdp.rewrite(&[Some(sa("192.0.2.1:40000"))]);
        assert!(std::str::from_utf8(&out)
            .unwrap()
            .contains("c=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"));
    }

    #[test]
    fn no_trailing_newline_and_unchanged_when_nothing_relayed() {
        let body = "v=0\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0";
        let sdp = Sdp::parse(Bytes::from(body)).unwrap();
        assert_eq!(&sdp.rewrite(&[None])[..], body.as_bytes());
        assert_eq!(
            &sdp.rewrite(&[])[..],
            body.as_bytes(),
            "wrong length: unchanged"
        );
        let out = sdp.rewrite(&[Some(sa("192.0.2.1:40000"))]);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "v=0\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0"
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for bad in [
            "",
            "hello",
            "v=1\r\nm=audio 5000 RTP/AVP 0\r\n",
            "s=-\r\nv=0\r\n",
            "v=0\r\nm=audio 5000 RTP/AVP 0\r\n", // no address at all
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 70000 RTP/AVP 0\r\n", // port out of range
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 5000/2 RTP/AVP 0\r\n", // port count
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio five RTP/AVP 0\r\n",
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 5000\r\n",
            "v=0\r\nc=IN IP4 224.2.1.1/127\r\nm=audio 5000 RTP/AVP 0\r\n", // multicast
            "v=0\r\nc=IN IP4 10.0.0.1\r\nc=IN IP4 10.0.0.2\r\n",
            "v=0\r\nc=IN IP6 10.0.0.1\r\nm=audio 5000 RTP/AVP 0\r\n",
            "v=0\r\nc=XX IP4 10.0.0.1\r\nm=audio 5000 RTP/AVP 0\r\n",
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 5000 RTP/AVP 0\r\na=rtcp:x\r\n",
            "v=0\r\nc=IN IP4 10.0.0.1\r\nM=audio 5000 RTP/AVP 0\r\n",
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 5000 RTP/AVP 0\r\nnot a line\r\n",
        ] {
            assert!(Sdp::parse(Bytes::from(bad)).is_none(), "accepted {bad:?}");
        }
        // Arbitrary bytes never panic.
        for seed in 0..2000u32 {
            let mut x = seed.wrapping_mul(2654435761);
            let mut body = OFFER.as_bytes().to_vec();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let at = x as usize % body.len();
                body[at] = (x >> 8) as u8;
            }
            if let Some(sdp) = Sdp::parse(Bytes::from(body)) {
                let relay = vec![Some(sa("192.0.2.1:40000")); sdp.media_count()];
                let _ = sdp.rewrite(&relay);
            }
        }
    }

    #[test]
    fn content_type() {
        assert!(is_sdp_type("application/sdp"));
        assert!(is_sdp_type("Application/SDP ; charset=utf-8"));
        assert!(!is_sdp_type("multipart/mixed;boundary=x"));
    }
}
