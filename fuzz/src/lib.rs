//! The fuzz targets of onehop: one function per input path that hostile peers reach, each
//! asserting properties beyond "does not panic". The libFuzzer entries in `fuzz_targets/`
//! call these; `tests/replay.rs` runs the kept corpus through them on a stable toolchain.
//!
//! # Layout
//! - [`sip`]: the SIP parser and typed headers, the stream framer, the proxy engine.
//! - [`wire`]: the overlay's length-prefixed bincode frames and messages.
//! - [`dns`]: the DNS answer path for a raw request.
//! - [`media`]: the media relay's SDP rewriting.
//! - [`lookup`]: the lookup interface's request lines.
//! - [`config`]: loading the daemons' TOML configuration with command-line overrides.
//! - [`alloc`]: a counting allocator, so that targets can bound what a decode allocates.
//! - [`seeds`]: the seed corpus, as code (written to `corpus/` by the replay test).

pub mod alloc;
pub mod config;
pub mod dns;
pub mod lookup;
pub mod media;
pub mod seeds;
pub mod sip;
pub mod wire;

pub use config::config_toml;
pub use dns::dns_answer;
pub use lookup::lookup_line;
pub use media::sdp_rewrite;
pub use sip::{sip_engine, sip_framer, sip_headers, sip_parse};
pub use wire::wire_frame;

/// Every target by name, as the replay test and the seed writer see them.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("sip_parse", sip_parse),
    ("sip_headers", sip_headers),
    ("sip_framer", sip_framer),
    ("sip_engine", sip_engine),
    ("wire_frame", wire_frame),
    ("dns_answer", dns_answer),
    ("sdp_rewrite", sdp_rewrite),
    ("lookup_line", lookup_line),
    ("config_toml", config_toml),
];

/// Reads a fuzz input as a sequence of fields.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Cursor<'a> {
        Cursor { data }
    }

    /// The next byte, if any.
    pub fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    /// The next `u16` (little-endian), if two bytes are left.
    pub fn u16(&mut self) -> Option<u16> {
        let lo = self.byte()?;
        let hi = self.byte()?;
        Some(u16::from_le_bytes([lo, hi]))
    }

    /// The next `n` bytes, or fewer when the input ends.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// What is left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}

/// Records `(ctrl, payload)` as [`Cursor`]-based targets read them: a control byte, a
/// little-endian `u16` length, the payload. Used by the seed writer.
pub fn record(out: &mut Vec<u8>, ctrl: u8, payload: &[u8]) {
    out.push(ctrl);
    out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    out.extend_from_slice(payload);
}
