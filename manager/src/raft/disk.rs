//! Low level on-disk helpers shared by the log store and the state machine:
//! checksummed record framing, bincode encoding with a decode limit and
//! crash-safe whole-file replacement (temp file, fsync, rename, fsync dir).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Upper bound of a single decoded record (and of a frame's declared length).
pub const MAX_RECORD: usize = 16 * 1024 * 1024;

/// Frame header: `u32` little endian payload length, then `u32` little endian CRC-32 of the payload.
pub const FRAME_HEADER: usize = 8;

fn decode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 16 * 1024 * 1024 }>()
}

/// Serialize with bincode's standard configuration (serde API).
pub fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bincode encode: {e}")))
}

/// Deserialize with bincode's standard configuration limited to [`MAX_RECORD`] bytes.
/// Trailing bytes are rejected.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(bytes, decode_config())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bincode decode: {e}")))?;
    if used != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bincode decode: {} trailing bytes", bytes.len() - used),
        ));
    }
    Ok(value)
}

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32 (IEEE 802.3, reflected, as used by zlib/gzip).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Append one framed record (`len`, `crc`, payload) to `out`.
pub fn push_frame(out: &mut Vec<u8>, payload: &[u8]) -> io::Result<()> {
    if payload.len() > MAX_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("record of {} bytes exceeds {MAX_RECORD}", payload.len()),
        ));
    }
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Outcome of reading the frame that starts at some offset of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete record with a valid checksum; `next` is the offset after it.
    Ok { payload: &'a [u8], next: usize },
    /// Clean end of the buffer.
    End,
    /// Header or payload cut short (crash in the middle of a write).
    Torn,
    /// Impossible length or checksum mismatch.
    Corrupt(String),
}

/// Parse the frame starting at `pos` of `buf`.
pub fn read_frame(buf: &[u8], pos: usize) -> Frame<'_> {
    let rest = &buf[pos.min(buf.len())..];
    if rest.is_empty() {
        return Frame::End;
    }
    if rest.len() < FRAME_HEADER {
        return Frame::Torn;
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len > MAX_RECORD {
        return Frame::Corrupt(format!("record length {len} exceeds {MAX_RECORD}"));
    }
    if rest.len() < FRAME_HEADER + len {
        return Frame::Torn;
    }
    let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
    if crc32(payload) != crc {
        return Frame::Corrupt("checksum mismatch".to_string());
    }
    Frame::Ok {
        payload,
        next: pos + FRAME_HEADER + len,
    }
}

/// fsync a directory so that a rename / create / unlink inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Durably replace `dir/name` with a single framed record holding `payload`.
///
/// Writes `name.tmp`, fsyncs it, renames it over `name` and fsyncs the directory, so that after a
/// crash the file holds either the old or the new content, never a mix.
pub fn write_atomic(dir: &Path, name: &str, payload: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(payload.len() + FRAME_HEADER);
    push_frame(&mut buf, payload)?;
    replace_file(dir, name, &buf)
}

/// Durably replace `dir/name` with the raw bytes `content` (see [`write_atomic`]).
pub fn replace_file(dir: &Path, name: &str, content: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Read a file written by [`write_atomic`]. `Ok(None)` when it does not exist; an
/// `InvalidData` error when its content is damaged (it is replaced atomically, so this means real
/// corruption, which must not be silently ignored).
pub fn read_atomic(dir: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    let buf = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match read_frame(&buf, 0) {
        Frame::Ok { payload, next } if next == buf.len() => Ok(Some(payload.to_vec())),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is damaged: {other:?}", path.display()),
        )),
    }
}

/// Remove a `name.tmp` left behind by a crash during [`write_atomic`].
pub fn remove_stale_tmp(dir: &Path, name: &str) -> io::Result<()> {
    match fs::remove_file(dir.join(format!("{name}.tmp"))) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Run blocking file IO off the async runtime threads.
pub async fn blocking<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("blocking IO task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_vector() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn frames_detect_torn_and_corrupt() {
        let mut buf = Vec::new();
        push_frame(&mut buf, b"hello").unwrap();
        push_frame(&mut buf, b"world!").unwrap();
        let Frame::Ok { payload, next } = read_frame(&buf, 0) else {
            panic!("first frame")
        };
        assert_eq!(payload, b"hello");
        let Frame::Ok { payload, next: end } = read_frame(&buf, next) else {
            panic!("second frame")
        };
        assert_eq!(payload, b"world!");
        assert_eq!(read_frame(&buf, end), Frame::End);
        for cut in next + 1..end {
            assert_eq!(read_frame(&buf[..cut], next), Frame::Torn, "cut at {cut}");
        }
        let mut bad = buf.clone();
        bad[end - 1] ^= 0x55;
        assert!(matches!(read_frame(&bad, next), Frame::Corrupt(_)));
        let mut huge = buf.clone();
        huge[next..next + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read_frame(&huge, next), Frame::Corrupt(_)));
    }

    #[test]
    fn atomic_roundtrip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_atomic(dir.path(), "x").unwrap(), None);
        write_atomic(dir.path(), "x", b"one").unwrap();
        write_atomic(dir.path(), "x", b"two").unwrap();
        assert_eq!(
            read_atomic(dir.path(), "x").unwrap().as_deref(),
            Some(&b"two"[..])
        );
        assert!(!dir.path().join("x.tmp").exists());
        let path = dir.path().join("x");
        let mut raw = fs::read(&path).unwrap();
        raw.pop();
        fs::write(&path, &raw).unwrap();
        assert!(read_atomic(dir.path(), "x").is_err());
    }

    #[test]
    fn decode_rejects_trailing_bytes() {
        let mut bytes = encode(&(1u64, "a".to_string())).unwrap();
        assert_eq!(
            decode::<(u64, String)>(&bytes).unwrap(),
            (1, "a".to_string())
        );
        bytes.push(0);
        assert!(decode::<(u64, String)>(&bytes).is_err());
    }
}
