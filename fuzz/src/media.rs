//! The media relay's SDP rewriting, on an offer or answer as a client sent it.

use std::net::SocketAddr;

use bytes::Bytes;
use onehop_node::relay::sdp::Sdp;

/// [`Sdp::parse`] and [`Sdp::rewrite`]: the first input byte says which streams get a relay
/// address (bit i for stream i, repeating every 8), the rest is the body.
///
/// Properties: the rewritten body parses again with as many streams; each stream given a
/// relay now asks for its media at the relay (RTP at the relay's port, RTCP at the next
/// one, same address); every other stream still asks for it where it did before.
pub fn sdp_rewrite(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let Some(sdp) = Sdp::parse(Bytes::copy_from_slice(body)) else {
        return;
    };
    let before = sdp.targets();
    assert_eq!(before.len(), sdp.media_count());
    let relay: Vec<Option<SocketAddr>> = (0..sdp.media_count())
        .map(|i| {
            (sel >> (i % 8) & 1 == 1).then(|| {
                let port = 40_000 + 2 * i as u16;
                if i % 3 == 2 {
                    SocketAddr::new("2001:db8::7".parse().unwrap(), port)
                } else {
                    SocketAddr::new([203, 0, 113, 7].into(), port)
                }
            })
        })
        .collect();
    let rewritten = sdp.rewrite(&relay);
    let again = Sdp::parse(rewritten.clone()).unwrap_or_else(|| {
        panic!(
            "the rewritten body does not parse:\n{}",
            String::from_utf8_lossy(&rewritten)
        )
    });
    assert_eq!(again.media_count(), sdp.media_count());
    let after = again.targets();
    for (i, ((old, new), r)) in before.iter().zip(&after).zip(&relay).enumerate() {
        match (old, r) {
            (Some(_), Some(addr)) => {
                let new = new.unwrap_or_else(|| panic!("stream {i} lost its target"));
                assert_eq!(new.rtp, Some(*addr), "stream {i}");
                assert_eq!(
                    new.rtcp,
                    Some(SocketAddr::new(addr.ip(), addr.port() + 1)),
                    "stream {i}"
                );
            }
            _ => assert_eq!(old, new, "stream {i} moved without a relay"),
        }
    }
}
