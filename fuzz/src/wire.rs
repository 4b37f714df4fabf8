//! The overlay's wire: length-prefixed bincode frames read from a stream, decoded as each
//! message type a daemon reads from its peers.

use onehop_overlay::provision::{self, FarmReply, FarmRequest, PushBatch, PushReply};
use onehop_overlay::status::NetworkStatus;
use onehop_overlay::wire::{
    decode_body, encode_frame, read_frame, ClientMsg, ServerMsg, MAX_FRAME,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::alloc::peak_of;

/// The most a decode may allocate at once. serde preallocates a sequence for at most 1 MiB
/// of elements (its `size_hint::cautious`) whatever length the input claims, and a
/// `NetworkStatus` nests two sequences (the members, then each member's roles and
/// endpoints): a 28-byte body claiming huge lengths at both levels holds 2 MiB at once (kept
/// in `regressions/wire_frame`; the bound was twice the frame cap, 11 bytes short of it). So:
/// the frame cap per nesting level, and one more for the decoded values.
const DECODE_ALLOC_CAP: usize = 3 * MAX_FRAME;

/// Decodes with `decode`, checks the allocation bound, and for a message that decodes checks
/// that it encodes and decodes back to the same bytes.
fn check<T: Serialize + DeserializeOwned>(
    body: &[u8],
    decode: fn(&[u8]) -> Result<T, String>,
    encode: fn(&T) -> Vec<u8>,
) {
    let (decoded, peak) = peak_of(|| decode(body));
    assert!(
        peak <= DECODE_ALLOC_CAP,
        "decoding {} bytes allocated {peak} bytes at once",
        body.len()
    );
    if let Ok(msg) = decoded {
        let first = encode(&msg);
        let back = decode(&first).expect("our own encoding decodes");
        assert_eq!(encode(&back), first, "the encoding is not stable");
    }
}

fn framed<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    decode_body(b).map_err(|e| e.to_string())
}

fn unframed<T: Serialize>(v: &T) -> Vec<u8> {
    encode_frame(v)[4..].to_vec()
}

/// Frames read from a stream with [`read_frame`] (the cap checked before allocating) and
/// each body decoded as the message type the first byte names: `ClientMsg` (what an event
/// server reads), `ServerMsg` (what members read), `NetworkStatus`, and the provisioning
/// messages (`PushBatch`, `PushReply`, `FarmRequest`, `FarmReply`).
///
/// Properties: reading a frame allocates no more than the cap (plus the length read); a
/// decode allocates at most twice the cap however large the lengths inside claim to be; a
/// message that decodes encodes back to bytes that decode and encode again the same.
pub fn wire_frame(data: &[u8]) {
    let Some((&kind, mut stream)) = data.split_first() else {
        return;
    };
    for _ in 0..16 {
        let (frame, peak) =
            peak_of(|| futures::executor::block_on(read_frame(&mut stream, MAX_FRAME)));
        assert!(peak <= MAX_FRAME + 1024, "reading a frame allocated {peak}");
        let body = match frame {
            Ok(Some(body)) => body,
            Ok(None) | Err(_) => return,
        };
        match kind % 7 {
            0 => check::<ClientMsg>(&body, framed, unframed),
            1 => check::<ServerMsg>(&body, framed, unframed),
            2 => check::<NetworkStatus>(&body, framed, unframed),
            3 => check::<PushBatch>(&body, provision::decode, provision::encode),
            4 => check::<PushReply>(&body, provision::decode, provision::encode),
            5 => check::<FarmRequest>(&body, provision::decode, provision::encode),
            _ => check::<FarmReply>(&body, provision::decode, provision::encode),
        }
    }
}
