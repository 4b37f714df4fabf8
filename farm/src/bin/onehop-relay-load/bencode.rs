//! Just enough bencode for rtpengine's ng control protocol: dictionaries of byte strings (and
//! lists and integers, read and skipped) in, dictionaries of byte strings out.

use std::collections::BTreeMap;

/// A bencoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A byte string.
    Bytes(Vec<u8>),
    /// An integer.
    Int(i64),
    /// A list.
    List(Vec<Value>),
    /// A dictionary (keys are byte strings).
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl Value {
    /// The string under `key` of a dictionary, as UTF-8 (lossy).
    pub fn text(&self, key: &str) -> Option<String> {
        match self {
            Value::Dict(d) => match d.get(key.as_bytes()) {
                Some(Value::Bytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Encodes a dictionary of strings (keys sorted, as bencode wants).
pub fn dict(entries: &[(&str, &str)]) -> Vec<u8> {
    let sorted: BTreeMap<&str, &str> = entries.iter().copied().collect();
    let mut out = b"d".to_vec();
    for (k, v) in sorted {
        for s in [k, v] {
            out.extend_from_slice(s.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(s.as_bytes());
        }
    }
    out.push(b'e');
    out
}

/// Decodes one value that fills `input` entirely.
pub fn decode(input: &[u8]) -> Result<Value, String> {
    let (v, rest) = value(input, 0)?;
    if rest.is_empty() {
        Ok(v)
    } else {
        Err(format!("{} bytes after the value", rest.len()))
    }
}

/// Deepest nesting accepted (the input is a peer's; no recursion without a bound).
const MAX_DEPTH: usize = 16;

fn value(input: &[u8], depth: usize) -> Result<(Value, &[u8]), String> {
    if depth > MAX_DEPTH {
        return Err("nested too deep".into());
    }
    match input.first() {
        None => Err("truncated".into()),
        Some(b'i') => {
            let end = find(input, b'e')?;
            let n = std::str::from_utf8(&input[1..end])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("bad integer")?;
            Ok((Value::Int(n), &input[end + 1..]))
        }
        Some(b'l') => {
            let mut rest = &input[1..];
            let mut items = Vec::new();
            while rest.first() != Some(&b'e') {
                let (v, r) = value(rest, depth + 1)?;
                items.push(v);
                rest = r;
            }
            Ok((Value::List(items), &rest[1..]))
        }
        Some(b'd') => {
            let mut rest = &input[1..];
            let mut d = BTreeMap::new();
            while rest.first() != Some(&b'e') {
                let (k, r) = string(rest)?;
                let (v, r) = value(r, depth + 1)?;
                d.insert(k.to_vec(), v);
                rest = r;
            }
            Ok((Value::Dict(d), &rest[1..]))
        }
        Some(_) => {
            let (s, rest) = string(input)?;
            Ok((Value::Bytes(s.to_vec()), rest))
        }
    }
}

fn string(input: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let colon = find(input, b':')?;
    let len: usize = std::str::from_utf8(&input[..colon])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("bad string length")?;
    let body = &input[colon + 1..];
    if body.len() < len {
        return Err("string runs past the end".into());
    }
    Ok((&body[..len], &body[len..]))
}

fn find(input: &[u8], b: u8) -> Result<usize, String> {
    input
        .iter()
        .position(|&c| c == b)
        .ok_or_else(|| format!("no '{}'", b as char))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_dict_and_reads_rtpengine_answers() {
        let enc = dict(&[("command", "offer"), ("call-id", "c1")]);
        assert_eq!(enc, b"d7:call-id2:c17:command5:offere".to_vec());
        let v = decode(&enc).unwrap();
        assert_eq!(v.text("command").as_deref(), Some("offer"));
        let answer = b"d3:sdp5:v=0\r\n6:result2:ok4:timei3e8:warningsl1:aee";
        let v = decode(answer).unwrap();
        assert_eq!(v.text("result").as_deref(), Some("ok"));
        assert_eq!(v.text("sdp").as_deref(), Some("v=0\r\n"));
        assert_eq!(v.text("nothing"), None);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"d",
            b"d3:ab",
            b"5:abc",
            b"ixe",
            b"d1:a1:be trailing",
            b"l",
            &[b'l'; 40][..],
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
