//! What the store holds: keys, versions and entries (values or tombstones).

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A key of the store: a role (whose ring places it) and a canonical key on that ring (for
/// the registrar, the canonical AOR).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StoreKey {
    /// The role whose ring places the key.
    pub role: String,
    /// The canonical key (hashed as given).
    pub key: String,
}

impl StoreKey {
    /// A key of `role`.
    pub fn new(role: impl Into<String>, key: impl Into<String>) -> StoreKey {
        StoreKey {
            role: role.into(),
            key: key.into(),
        }
    }

    /// Where the key sits on its role's ring.
    pub fn position(&self) -> u64 {
        onehop_overlay::ring::position(&self.key)
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.key)
    }
}

/// The version of an entry. Replicas and transfers merge by keeping the higher version, so
/// every holder ends up with the same entry whatever the order of arrival.
///
/// Versions are assigned by the owner when it applies a write: `stamp` is the larger of its
/// clock (milliseconds since the Unix epoch) and the stamp held plus one, so the versions of
/// one key only grow, across owners too, as long as the new owner holds (or fetched) the
/// previous version. `origin` (a hash of the writer's name) orders two writes that got the
/// same stamp from two nodes that both thought they owned the key.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Version {
    /// Milliseconds since the Unix epoch, bumped to stay above the previous version.
    pub stamp: u64,
    /// Who wrote it (hash of the member name); breaks ties.
    pub origin: u64,
}

impl Version {
    /// The version a writer called `origin` gives a write at `now_ms` over `held`.
    pub fn next(held: Option<Version>, now_ms: u64, origin: u64) -> Version {
        let stamp = match held {
            Some(h) => now_ms.max(h.stamp.saturating_add(1)),
            None => now_ms,
        };
        Version { stamp, origin }
    }
}

/// A value with its expiry and version, or a tombstone (`value: None`) left by a remove.
///
/// A tombstone is kept until its own `expires_at_ms`, which is at least the expiry of the
/// value it replaced, so a late transfer of that (older) value cannot bring it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The value; `None` for a tombstone.
    #[serde(with = "opt_bytes")]
    pub value: Option<Bytes>,
    /// When the entry expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// Its version.
    pub version: Version,
}

impl Entry {
    /// Whether the entry has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms
    }

    /// The value, if this is a value (not a tombstone) that has not expired at `now_ms`.
    pub fn live_value(&self, now_ms: u64) -> Option<&Bytes> {
        self.value.as_ref().filter(|_| !self.is_expired(now_ms))
    }

    /// Roughly how many bytes the entry takes on the wire (for batch sizes).
    pub fn wire_size(&self) -> usize {
        self.value.as_ref().map_or(0, Bytes::len) + 32
    }
}

/// A key with its entry, as replicated and transferred.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The key.
    pub key: StoreKey,
    /// The entry.
    pub entry: Entry,
}

/// `Option<Bytes>` as serde bytes (one length and the raw bytes in bincode, not a sequence of
/// integers).
pub(crate) mod opt_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::raw_bytes::{Buf, Raw};

    pub fn serialize<S: Serializer>(v: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&Raw(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
        Ok(Option::<Buf>::deserialize(d)?.map(|b| Bytes::from(b.0)))
    }
}

/// `Bytes` as serde bytes.
pub(crate) mod raw_bytes {
    use bytes::Bytes;
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) struct Raw<'a>(pub(super) &'a [u8]);

    impl Serialize for Raw<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    pub(super) struct Buf(pub(super) Vec<u8>);

    impl<'de> Deserialize<'de> for Buf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Buf;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Buf, E> {
                    Ok(Buf(v.to_vec()))
                }
                fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Buf, E> {
                    Ok(Buf(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Buf, A::Error> {
                    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                    while let Some(b) = seq.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(Buf(out))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }

    pub fn serialize<S: Serializer>(v: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        Ok(Bytes::from(Buf::deserialize(d)?.0))
    }
}
