//! Finding a message's Call-ID without parsing it, to pick the worker that owns its call
//! before the worker parses it. Every message of a call and every retransmission of a
//! transaction carries the same Call-ID, so they all meet in one worker.

/// The Call-ID of the message in `bytes`, trimmed, or `None` when no `Call-ID` (or compact
/// `i`) header is found in its header section. The name is matched case-insensitively; the
/// value is taken up to the end of its line (a folded Call-ID is cut at the fold, which is
/// the same for every copy of the message, so the shard stays the same).
pub fn call_id(bytes: &[u8]) -> Option<&[u8]> {
    let mut lines = bytes.split(|&b| b == b'\n');
    lines.next()?; // the start line
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None; // end of the header section
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = trim(&line[..colon]);
        if name.eq_ignore_ascii_case(b"call-id") || name.eq_ignore_ascii_case(b"i") {
            let value = trim(&line[colon + 1..]);
            return (!value.is_empty()).then_some(value);
        }
    }
    None
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::call_id;

    #[test]
    fn finds_long_and_compact_forms_in_any_case() {
        let long = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nCALL-ID:  abc@h \r\n\r\n";
        assert_eq!(call_id(long), Some(&b"abc@h"[..]));
        let compact =
            b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP h\r\ni:abc@h\r\n\r\nbody\r\nCall-ID: x\r\n";
        assert_eq!(call_id(compact), Some(&b"abc@h"[..]));
        let bare_lf = b"BYE sip:a@b SIP/2.0\nCall-Id: q1\n\n";
        assert_eq!(call_id(bare_lf), Some(&b"q1"[..]));
    }

    #[test]
    fn none_without_one_or_in_the_body() {
        assert_eq!(call_id(b""), None);
        assert_eq!(call_id(b"garbage"), None);
        assert_eq!(
            call_id(b"OPTIONS sip:a SIP/2.0\r\nTo: <sip:a>\r\n\r\nCall-ID: body\r\n"),
            None
        );
        assert_eq!(
            call_id(b"OPTIONS sip:a SIP/2.0\r\nCall-ID:   \r\n\r\n"),
            None
        );
        // A header whose name merely contains the letter i is not the compact form.
        assert_eq!(call_id(b"OPTIONS sip:a SIP/2.0\r\nXi: 1\r\n\r\n"), None);
    }
}
