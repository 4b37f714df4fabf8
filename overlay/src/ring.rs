//! The hash circle: one consistent-hashing ring per role, a pure function of the
//! [`NetworkStatus`].
//!
//! # The contract
//!
//! Every daemon must build exactly the same rings from the same status, so the rules below are
//! part of the design and must not change:
//!
//! - There is one ring per role. Each member bearing role `R` places `V` points on `R`'s ring
//!   (default [`DEFAULT_POINTS`] = 1000). Point `i` (for `i` in `0..V`) sits at
//!   `xxh3_64(name + "#" + i)`, with `i` written in decimal: `node1#0` .. `node1#999`.
//! - A key sits at `xxh3_64(canonical key)` ([`position`]); the hash is
//!   `xxhash_rust::xxh3::xxh3_64` over the UTF-8 bytes.
//! - The owner of a key is the member of the first point at or after the key's position,
//!   wrapping around to the first point of the ring. Its replicas are the next *distinct*
//!   members clockwise ([`Ring::replicas_at`]).
//! - When two points collide (equal positions), the one of the member whose name sorts first
//!   (byte-wise ascending) comes first, so it owns the keys up to that position.
//! - Canonical keys: an address of record is `user@host` with the scheme, the password, the
//!   port, URI parameters and headers dropped and the host lower-cased; the user part is kept
//!   exactly as written since it is case-sensitive (RFC 3261 19.1.4). See [`canonical_aor`].
//!   A Call-ID is used as is. The lookup interface applies [`lookup_key`]: a key starting with
//!   `sip:` or `sips:` (any case) is canonicalised as an AOR, anything else is hashed as given.
//!
//! # Call order
//!
//! 1. When a new [`NetworkStatus`] is applied, build all rings once with
//!    [`Rings::from_status`] (with [`DEFAULT_POINTS`]) and swap them in (for example behind an
//!    `ArcSwap`); rings are immutable afterwards. A single ring can also be built directly with
//!    [`Ring::new`].
//! 2. Pick the role's ring with [`Rings::get`].
//! 3. Turn the request's key into a canonical key with [`lookup_key`] (or [`canonical_aor`] for
//!    an AOR taken from a SIP message), then into a position with [`position`].
//! 4. Ask [`Ring::owner_at`] for the owner, or [`Ring::replicas_at`] for the owner followed by
//!    its replicas. [`Ring::owner`] does steps 3 and 4 for an already canonical key.
//!
//! # Performance
//!
//! Points are stored as a struct of arrays (sorted positions, and the owning member's index
//! beside each) plus a prefix index: a table of start offsets keyed by the top bits of a
//! position (up to 16 bits, 2^16 + 1 entries). A lookup is one table read and a binary search
//! over the handful of points that share the key's prefix (about 15 with 1,000 members of
//! 1,000 points each). Building hashes the points without allocating per point, sorts them by
//! a counting pass on the prefix followed by small per-bucket sorts, and, in
//! [`Rings::from_status`], hashes and sorts every member once for all its roles.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use crate::status::{Member, NetworkStatus};

/// The number of points each member places on each ring of its roles, unless configured
/// otherwise.
pub const DEFAULT_POINTS: u32 = 1000;

/// The largest number of prefix bits used to index the points (a table of 2^16 + 1 offsets).
const MAX_INDEX_BITS: u32 = 16;

/// The position of a canonical key on the ring: `xxh3_64` of its UTF-8 bytes.
///
/// The key must already be canonical ([`lookup_key`], [`canonical_aor`]); this function hashes
/// exactly what it is given.
#[inline]
pub fn position(canonical: &str) -> u64 {
    xxh3_64(canonical.as_bytes())
}

/// The canonical key for a key given to the lookup interface.
///
/// When `key` starts with `sip:` or `sips:` (case-insensitive) it is canonicalised as an AOR
/// with [`canonical_aor`]; anything else (a Call-ID, which may well contain `@`, a number, a
/// bare `user@host`) is returned unchanged and hashed exactly as given. A `sip:` key that
/// cannot be parsed as an AOR (such as `sip:` alone) is also returned unchanged.
pub fn lookup_key(key: &str) -> Cow<'_, str> {
    let b = key.as_bytes();
    let is_sip = (b.len() >= 4 && b[..4].eq_ignore_ascii_case(b"sip:"))
        || (b.len() >= 5 && b[..5].eq_ignore_ascii_case(b"sips:"));
    if is_sip {
        if let Some(aor) = canonical_aor(key) {
            return Cow::Owned(aor);
        }
    }
    Cow::Borrowed(key)
}

/// The canonical form of an address of record: `user@host`, or just `host` when the URI has
/// no user part.
///
/// Accepts:
/// - `sip:` and `sips:` URIs (the scheme in any case), or `user@host` without a scheme, or a
///   bare `host[:port]`;
/// - a name-addr: an optional display name (quoted or not) followed by the URI in angle
///   brackets; anything after the closing `>` (header parameters such as `;tag=`) is ignored;
/// - IPv6 references such as `[2001:db8::1]:5060`: the brackets are kept, the port dropped.
///
/// Drops the scheme, a password (`user:password@`), the port, URI parameters (`;...` after
/// the host) and headers (`?...`). The host is lower-cased (ASCII); the user part is kept
/// exactly as written, including user parameters (`alice;day=tue@host`) and escapes, since it
/// is case-sensitive (RFC 3261 19.1.4).
///
/// Returns `None` for what is not a SIP AOR: an empty host or user, an unterminated `<`, or a
/// scheme other than `sip`/`sips` (such as `tel:`). Without a scheme, a password cannot be
/// given (`alice:pw@host` reads as an unknown scheme).
pub fn canonical_aor(uri: &str) -> Option<String> {
    let spec = addr_spec(uri.trim())?;
    let rest = strip_scheme(spec)?;
    let (user, hostport) = match rest.find('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            // A user part never contains ':', so the first one starts a password.
            let user = userinfo
                .split_once(':')
                .map_or(userinfo, |(u, _password)| u);
            if user.is_empty() {
                return None;
            }
            (Some(user), &rest[at + 1..])
        }
        None => (None, rest),
    };
    let host = if hostport.starts_with('[') {
        let end = hostport.find(']')?;
        &hostport[..=end]
    } else {
        let end = hostport.find([':', ';', '?']).unwrap_or(hostport.len());
        &hostport[..end]
    };
    let host_ok = !host.is_empty()
        && host != "[]"
        && !host
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '@'));
    if !host_ok {
        return None;
    }
    let mut out = String::with_capacity(user.map_or(0, |u| u.len() + 1) + host.len());
    if let Some(user) = user {
        out.push_str(user);
        out.push('@');
    }
    out.extend(host.chars().map(|c| c.to_ascii_lowercase()));
    Some(out)
}

/// The addr-spec inside a name-addr (`"Display" <sip:...>;params`), or the input itself when
/// it has no angle brackets.
fn addr_spec(s: &str) -> Option<&str> {
    let mut rest = s;
    let mut quoted = false;
    if let Some(after) = rest.strip_prefix('"') {
        // A quoted display name: skip to the closing quote, honouring backslash escapes.
        let mut escaped = false;
        let mut close = None;
        for (i, c) in after.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        rest = &after[close? + 1..];
        quoted = true;
    }
    match rest.find('<') {
        Some(lt) => {
            let inner = &rest[lt + 1..];
            let gt = inner.find('>')?;
            Some(inner[..gt].trim())
        }
        // A quoted display name must be followed by an angle-bracketed URI.
        None if quoted => None,
        None => Some(rest),
    }
}

/// Strips a `sip:`/`sips:` scheme. Returns the input unchanged when it has no scheme, and
/// `None` when it has another scheme.
fn strip_scheme(s: &str) -> Option<&str> {
    let Some(colon) = s.find(':') else {
        return Some(s);
    };
    let scheme = &s[..colon];
    if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        return Some(&s[colon + 1..]);
    }
    let at = s.find('@');
    let is_token = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !is_token || at.is_some_and(|at| at < colon) {
        // The colon is a port separator (after the user part) or inside an IPv6 reference.
        return Some(s);
    }
    // `host:port` without user or scheme, for example `example.com:5060`.
    let after = &s[colon + 1..];
    let port = &after[..after.find([';', '?']).unwrap_or(after.len())];
    let is_port = at.is_none() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    is_port.then_some(s)
}

/// A member placed on a ring.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RingMember {
    /// The member's unique name (certificate CN); its points are hashed from it.
    pub name: String,
    /// The member's address.
    pub ip: IpAddr,
}

/// The average number of points a chunk holds, aimed at when the ring is laid out.
const CHUNK_POINTS: usize = 64;

/// The largest number of bits used to pick a chunk (2^20 chunks).
const MAX_CHUNK_BITS: u32 = 20;

/// A slot that no member holds.
const FREE: u32 = u32::MAX;

/// The points whose positions share a prefix: sorted by position, then by member name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Chunk {
    positions: Vec<u64>,
    /// The slot of the member that placed each point.
    slots: Vec<u32>,
}

/// What a ring holds; shared by the rings of roles borne by exactly the same members.
#[derive(Debug, Clone)]
struct Core {
    /// Sorted by name, unique names.
    members: Vec<RingMember>,
    /// The members' addresses, sorted, for [`Ring::contains_ip`].
    ips: Vec<IpAddr>,
    /// `slots[i]` is the slot of `members[i]`: points name their member by slot, which stays
    /// the same while the member is on the ring, so that a change of members touches only
    /// the points of the members that changed.
    slots: Vec<u32>,
    /// The index in `members` of each slot's member ([`FREE`] for a slot nobody holds).
    by_slot: Vec<u32>,
    /// Slots nobody holds, for the next members to come.
    free: Vec<u32>,
    /// The points in `2^bits` chunks by the top bits of their positions. Unchanged chunks
    /// are shared with the ring this one was made from.
    chunks: Vec<Arc<Chunk>>,
    /// `64 - bits`: shifting a position right by this gives its chunk.
    shift: u32,
    /// Points on the ring.
    points: usize,
    /// Points each member places.
    per_member: u32,
}

/// The ring of one role: every member bearing the role, each with the same number of points.
///
/// Immutable once built; cheap to clone and share. A new ring for a changed membership is
/// made with [`Rings::update`], which touches the points of the members that changed only.
#[derive(Clone)]
pub struct Ring {
    role: String,
    core: Arc<Core>,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("role", &self.role)
            .field("members", &self.core.members.len())
            .field("points", &self.core.points)
            .finish_non_exhaustive()
    }
}

/// The number of bits that pick a chunk for `points` points: about [`CHUNK_POINTS`] points a
/// chunk, between 1 and [`MAX_CHUNK_BITS`].
fn chunk_bits(points: usize) -> u32 {
    let chunks = points.div_ceil(CHUNK_POINTS).max(1);
    let ceil_log2 = usize::BITS - (chunks - 1).leading_zeros();
    ceil_log2.clamp(1, MAX_CHUNK_BITS)
}

/// The positions of the `v` points of member `name`, point after point.
fn member_points(name: &str, v: u32) -> impl Iterator<Item = u64> + '_ {
    let mut buf = Vec::with_capacity(name.len() + 11);
    buf.extend_from_slice(name.as_bytes());
    buf.push(b'#');
    let base = buf.len();
    (0..v).map(move |i| {
        buf.truncate(base);
        push_decimal(&mut buf, i);
        xxh3_64(&buf)
    })
}

impl Core {
    /// Lays out `points` (sorted by position, then name) in chunks; slot `i` is member `i`.
    fn from_points(members: Vec<RingMember>, points: PointSet, per_member: u32) -> Core {
        let n = members.len();
        let chunks = chunked(&points.positions, &points.owners);
        let mut ips: Vec<IpAddr> = members.iter().map(|m| m.ip).collect();
        ips.sort_unstable();
        ips.dedup();
        Core {
            members,
            ips,
            slots: (0..n as u32).collect(),
            by_slot: (0..n as u32).collect(),
            free: Vec::new(),
            shift: 64 - chunks.1,
            chunks: chunks.0,
            points: points.positions.len(),
            per_member,
        }
    }

    fn member_of(&self, slot: u32) -> &RingMember {
        &self.members[self.by_slot[slot as usize] as usize]
    }

    /// Every point in ring order, as (position, slot).
    fn walk(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.chunks
            .iter()
            .flat_map(|c| c.positions.iter().copied().zip(c.slots.iter().copied()))
    }

    /// The core with the members `removed` gone, `added` placed and the addresses of
    /// `moved` changed; `None` when rebuilding it whole is cheaper.
    fn update(
        &self,
        removed: &[&str],
        added: &[(&str, IpAddr)],
        moved: &[(&str, IpAddr)],
    ) -> Option<Core> {
        if removed.len() + added.len() > (self.members.len() / 8).max(8) {
            return None;
        }
        let mut members: Vec<RingMember> = Vec::with_capacity(self.members.len() + added.len());
        let mut slots: Vec<u32> = Vec::with_capacity(members.capacity());
        let mut gone: Vec<u32> = Vec::with_capacity(removed.len());
        for (m, &slot) in self.members.iter().zip(&self.slots) {
            if removed.contains(&m.name.as_str()) {
                gone.push(slot);
                continue;
            }
            let ip = moved
                .iter()
                .find(|(n, _)| *n == m.name)
                .map_or(m.ip, |(_, ip)| *ip);
            members.push(RingMember {
                name: m.name.clone(),
                ip,
            });
            slots.push(slot);
        }
        if gone.len() != removed.len() {
            return None;
        }
        // Slots freed by this change are not handed out in it: a chunk tells the points of a
        // member that left from those of one that came by slot.
        let mut free = self.free.clone();
        let mut next = self.by_slot.len() as u32;
        let mut fresh: Vec<(u32, &str)> = Vec::with_capacity(added.len());
        for (name, ip) in added {
            let slot = free.pop().unwrap_or_else(|| {
                next += 1;
                next - 1
            });
            fresh.push((slot, name));
            let at = members.partition_point(|m| m.name.as_str() < *name);
            if members.get(at).is_some_and(|m| m.name == *name) {
                return None;
            }
            members.insert(
                at,
                RingMember {
                    name: name.to_string(),
                    ip: *ip,
                },
            );
            slots.insert(at, slot);
        }
        free.extend_from_slice(&gone);
        let mut by_slot = vec![FREE; next as usize];
        for (i, &slot) in slots.iter().enumerate() {
            by_slot[slot as usize] = i as u32;
        }
        let mut ips: Vec<IpAddr> = members.iter().map(|m| m.ip).collect();
        ips.sort_unstable();
        ips.dedup();

        // The points that change, by chunk.
        let v = self.per_member;
        let mut changes: Vec<(usize, u64, u32, bool)> =
            Vec::with_capacity((gone.len() + fresh.len()) * v as usize);
        for (name, &slot) in removed.iter().zip(&gone) {
            for pos in member_points(name, v) {
                changes.push(((pos >> self.shift) as usize, pos, slot, false));
            }
        }
        for &(slot, name) in &fresh {
            for pos in member_points(name, v) {
                changes.push(((pos >> self.shift) as usize, pos, slot, true));
            }
        }
        changes.sort_unstable_by_key(|c| c.0);
        let mut chunks = self.chunks.clone();
        let name_of = |slot: u32| members[by_slot[slot as usize] as usize].name.as_str();
        for group in changes.chunk_by(|a, b| a.0 == b.0) {
            let ci = group[0].0;
            let old = &chunks[ci];
            let mut c = Chunk {
                positions: Vec::with_capacity(old.positions.len() + group.len()),
                slots: Vec::with_capacity(old.positions.len() + group.len()),
            };
            for (&p, &s) in old.positions.iter().zip(&old.slots) {
                if !gone.contains(&s) {
                    c.positions.push(p);
                    c.slots.push(s);
                }
            }
            for &(_, pos, slot, add) in group {
                if !add {
                    continue;
                }
                let name = name_of(slot);
                let at = c
                    .positions
                    .iter()
                    .zip(&c.slots)
                    .position(|(&p, &s)| p > pos || (p == pos && name_of(s) > name))
                    .unwrap_or(c.positions.len());
                c.positions.insert(at, pos);
                c.slots.insert(at, slot);
            }
            chunks[ci] = Arc::new(c);
        }
        let points = members.len() * v as usize;
        let mut core = Core {
            members,
            ips,
            slots,
            by_slot,
            free,
            chunks,
            shift: self.shift,
            points,
            per_member: v,
        };
        // Grown or shrunk a lot since it was laid out: lay it out again.
        let per_chunk = points / core.chunks.len();
        if chunk_bits(points) != 64 - core.shift
            && !(CHUNK_POINTS / 4..=4 * CHUNK_POINTS).contains(&per_chunk)
        {
            let (positions, owners): (Vec<u64>, Vec<u32>) = core.walk().unzip();
            let (chunks, bits) = chunked(&positions, &owners);
            core.chunks = chunks;
            core.shift = 64 - bits;
        }
        Some(core)
    }
}

/// Splits sorted points into chunks by the top bits of their positions; returns the chunks
/// and the number of bits.
fn chunked(positions: &[u64], slots: &[u32]) -> (Vec<Arc<Chunk>>, u32) {
    let bits = chunk_bits(positions.len());
    let shift = 64 - bits;
    let empty = Arc::new(Chunk::default());
    let mut chunks = Vec::with_capacity(1 << bits);
    let mut at = 0;
    for c in 0..(1u64 << bits) {
        let end = at + positions[at..].partition_point(|&p| p >> shift == c);
        if end == at {
            chunks.push(empty.clone());
        } else {
            chunks.push(Arc::new(Chunk {
                positions: positions[at..end].to_vec(),
                slots: slots[at..end].to_vec(),
            }));
        }
        at = end;
    }
    (chunks, bits)
}

/// Inclusive position ranges sorted, with those that overlap or touch merged into one.
pub fn merge_ranges(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// A point of a ring: its chunk and its place in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct At {
    chunk: usize,
    i: usize,
}

impl Ring {
    /// Builds the ring of `role` from its members' names and addresses, each member placing
    /// `points_per_member` points.
    ///
    /// The order of `members` does not matter. Names should be unique; when a name is given
    /// twice, its first occurrence wins. With `points_per_member == 0` the ring has members but
    /// no points and owns no key.
    ///
    /// # Panics
    ///
    /// When the ring would hold more than `u32::MAX` points.
    pub fn new(
        role: &str,
        members: impl IntoIterator<Item = (String, IpAddr)>,
        points_per_member: u32,
    ) -> Ring {
        let mut members: Vec<RingMember> = members
            .into_iter()
            .map(|(name, ip)| RingMember { name, ip })
            .collect();
        // Stable, so that the first occurrence of a repeated name is kept.
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members.dedup_by(|later, first| later.name == first.name);
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        let points = PointSet::build(&names, points_per_member);
        Ring::from_parts(role.to_string(), members, points, points_per_member)
    }

    fn from_parts(role: String, members: Vec<RingMember>, points: PointSet, v: u32) -> Ring {
        Ring {
            role,
            core: Arc::new(Core::from_points(members, points, v)),
        }
    }

    /// The role this ring is for.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The number of members on the ring.
    pub fn len(&self) -> usize {
        self.core.members.len()
    }

    /// Whether the ring has no member.
    pub fn is_empty(&self) -> bool {
        self.core.members.is_empty()
    }

    /// The number of points on the ring (members times points per member).
    pub fn points(&self) -> usize {
        self.core.points
    }

    /// The members, sorted by name.
    pub fn members(&self) -> &[RingMember] {
        &self.core.members
    }

    /// Whether a member of this ring has address `ip`.
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        self.core.ips.binary_search(&ip).is_ok()
    }

    /// Whether `other` holds the very same points and members (shares them with this ring).
    pub fn shares_points_with(&self, other: &Ring) -> bool {
        Arc::ptr_eq(&self.core, &other.core)
    }

    /// The first point at or after `pos`, wrapping to the first point; `None` when the ring
    /// has no point.
    #[inline]
    fn point_at(&self, pos: u64) -> Option<At> {
        let core = &*self.core;
        if core.points == 0 {
            return None;
        }
        let chunk = (pos >> core.shift) as usize;
        let c = &core.chunks[chunk];
        let i = c.positions.partition_point(|&p| p < pos);
        if i < c.positions.len() {
            return Some(At { chunk, i });
        }
        Some(self.first_from(chunk + 1))
    }

    /// The first point of the first chunk from `chunk` on that has one, wrapping.
    fn first_from(&self, mut chunk: usize) -> At {
        let chunks = &self.core.chunks;
        for _ in 0..=chunks.len() {
            if chunk >= chunks.len() {
                chunk = 0;
            }
            if !chunks[chunk].positions.is_empty() {
                break;
            }
            chunk += 1;
        }
        At { chunk, i: 0 }
    }

    /// The point after `at`, wrapping.
    #[inline]
    fn next(&self, at: At) -> At {
        if at.i + 1 < self.core.chunks[at.chunk].positions.len() {
            At {
                chunk: at.chunk,
                i: at.i + 1,
            }
        } else {
            self.first_from(at.chunk + 1)
        }
    }

    /// The point before `at`, wrapping.
    fn prev(&self, at: At) -> At {
        if at.i > 0 {
            return At {
                chunk: at.chunk,
                i: at.i - 1,
            };
        }
        let chunks = &self.core.chunks;
        let mut chunk = at.chunk;
        for _ in 0..=chunks.len() {
            chunk = if chunk == 0 {
                chunks.len() - 1
            } else {
                chunk - 1
            };
            let n = chunks[chunk].positions.len();
            if n > 0 {
                return At { chunk, i: n - 1 };
            }
        }
        at
    }

    #[inline]
    fn slot(&self, at: At) -> u32 {
        self.core.chunks[at.chunk].slots[at.i]
    }

    #[inline]
    fn pos(&self, at: At) -> u64 {
        self.core.chunks[at.chunk].positions[at.i]
    }

    /// The owner of the key at position `pos`: the member of the first point at or after
    /// `pos`, wrapping around. `None` when the ring has no point.
    #[inline]
    pub fn owner_at(&self, pos: u64) -> Option<&RingMember> {
        self.point_at(pos)
            .map(|at| self.core.member_of(self.slot(at)))
    }

    /// The owner of a canonical key (see [`lookup_key`] and [`canonical_aor`]); the same as
    /// `owner_at(position(canonical_key))`.
    #[inline]
    pub fn owner(&self, canonical_key: &str) -> Option<&RingMember> {
        self.owner_at(position(canonical_key))
    }

    /// The owner of the key at `pos` followed by its replicas: the next distinct members
    /// clockwise. Yields at most `n` members and at most [`Ring::len`]; nothing when the ring
    /// has no point.
    ///
    /// Does not allocate for `n <= 8`.
    pub fn replicas_at(&self, pos: u64, n: usize) -> impl Iterator<Item = &RingMember> + '_ {
        let wanted = n.min(self.core.members.len());
        let (next, steps) = match self.point_at(pos) {
            Some(at) if wanted > 0 => (at, self.core.points),
            _ => (At { chunk: 0, i: 0 }, 0),
        };
        Replicas {
            ring: self,
            next,
            steps,
            wanted,
            seen: Seen::new(wanted, self.core.by_slot.len()),
        }
    }

    /// Each member's share of the keyspace, by member name: the fraction of all positions it
    /// owns. The shares sum to 1.0 (up to rounding) unless the ring has no point, in which case
    /// every share is 0.0.
    pub fn shares(&self) -> Vec<(String, f64)> {
        let core = &*self.core;
        let mut owned = vec![0u128; core.members.len()];
        let mut walk = core.walk();
        if let Some((first, first_slot)) = walk.next() {
            let mut prev = first;
            for (pos, slot) in walk {
                owned[core.by_slot[slot as usize] as usize] += u128::from(pos - prev);
                prev = pos;
            }
            // The first point owns the wrap-around arc (last, 2^64) + [0, first].
            owned[core.by_slot[first_slot as usize] as usize] +=
                (1u128 << 64) - u128::from(prev) + u128::from(first);
        }
        const SPACE: f64 = 18_446_744_073_709_551_616.0; // 2^64
        core.members
            .iter()
            .zip(owned)
            .map(|(m, o)| (m.name.clone(), o as f64 / SPACE))
            .collect()
    }

    /// The positions whose owner or replicas (the first `replicas` distinct members) may
    /// differ between `old` and `new`, as sorted, disjoint, inclusive `[first, last]`
    /// ranges; `None` when that is everything (or more than a few members changed).
    ///
    /// A key whose position is outside every range has the same replica set under both
    /// rings: for such a key, the points scanned until `replicas` distinct members are found
    /// are the same points of the same members in both. A range runs from a point of a member
    /// that came or went back to where `replicas` distinct members that stayed are found.
    pub fn changed_ranges(old: &Ring, new: &Ring, replicas: usize) -> Option<Vec<(u64, u64)>> {
        if Arc::ptr_eq(&old.core, &new.core) {
            return Some(Vec::new());
        }
        if old.core.per_member != new.core.per_member || replicas == 0 {
            return None;
        }
        let (a, b) = (old.members(), new.members());
        let (mut removed, mut added): (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x.name == y.name => {
                    i += 1;
                    j += 1;
                }
                (Some(x), Some(y)) if x.name < y.name => {
                    removed.push(&x.name);
                    i += 1;
                }
                (Some(x), None) => {
                    removed.push(&x.name);
                    i += 1;
                }
                (_, Some(y)) => {
                    added.push(&y.name);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        if removed.is_empty() && added.is_empty() {
            return Some(Vec::new());
        }
        let staying = b.len() - added.len();
        if staying < replicas || removed.len() + added.len() > (b.len() / 8).max(8) {
            return None;
        }
        let core = &*new.core;
        let mut newcomer = vec![false; core.by_slot.len()];
        for name in &added {
            if let Ok(i) = b.binary_search_by(|m| m.name.as_str().cmp(name)) {
                newcomer[core.slots[i] as usize] = true;
            }
        }
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut seen: Vec<u32> = Vec::with_capacity(replicas);
        for name in removed.iter().chain(&added) {
            for p in member_points(name, core.per_member) {
                // Back from the first point at or after p, over the points of members that
                // stayed, until `replicas` distinct ones are found.
                let start = new.point_at(p)?;
                let mut at = start;
                seen.clear();
                let mut steps = 0;
                let lo = loop {
                    at = new.prev(at);
                    steps += 1;
                    if steps > core.points {
                        return None;
                    }
                    let slot = new.slot(at);
                    if newcomer[slot as usize] || seen.contains(&slot) {
                        continue;
                    }
                    seen.push(slot);
                    if seen.len() == replicas {
                        break new.pos(at);
                    }
                };
                // Positions in (lo, p].
                if lo < p {
                    ranges.push((lo + 1, p));
                } else {
                    if lo < u64::MAX {
                        ranges.push((lo + 1, u64::MAX));
                    }
                    ranges.push((0, p));
                }
            }
        }
        Some(merge_ranges(ranges))
    }

    /// The points in ring order as (position, index of the member in [`Ring::members`]).
    pub fn point_list(&self) -> Vec<(u64, u32)> {
        self.core
            .walk()
            .map(|(p, s)| (p, self.core.by_slot[s as usize]))
            .collect()
    }
}

/// The iterator behind [`Ring::replicas_at`].
struct Replicas<'a> {
    ring: &'a Ring,
    /// The next point to look at.
    next: At,
    /// How many points may still be looked at (one full turn at most).
    steps: usize,
    /// How many members may still be yielded.
    wanted: usize,
    seen: Seen,
}

impl<'a> Iterator for Replicas<'a> {
    type Item = &'a RingMember;

    fn next(&mut self) -> Option<&'a RingMember> {
        if self.wanted == 0 {
            return None;
        }
        while self.steps > 0 {
            let slot = self.ring.slot(self.next);
            self.next = self.ring.next(self.next);
            self.steps -= 1;
            if self.seen.insert(slot) {
                self.wanted -= 1;
                return Some(self.ring.core.member_of(slot));
            }
        }
        self.wanted = 0;
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.wanted))
    }
}

/// The members already yielded by [`Replicas`].
enum Seen {
    /// Up to 8 members, without allocating.
    Inline { ids: [u32; 8], len: usize },
    /// One bit per member of the ring.
    Bitmap(Vec<u64>),
}

impl Seen {
    fn new(wanted: usize, members: usize) -> Seen {
        if wanted <= 8 {
            Seen::Inline {
                ids: [0; 8],
                len: 0,
            }
        } else {
            Seen::Bitmap(vec![0; members.div_ceil(64)])
        }
    }

    /// Records `id`; false when it was already recorded.
    #[inline]
    fn insert(&mut self, id: u32) -> bool {
        match self {
            Seen::Inline { ids, len } => {
                if ids[..*len].contains(&id) {
                    return false;
                }
                // Never full: at most `wanted <= 8` members are inserted.
                ids[*len] = id;
                *len += 1;
                true
            }
            Seen::Bitmap(bits) => {
                let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
                let fresh = bits[word] & bit == 0;
                bits[word] |= bit;
                fresh
            }
        }
    }
}

/// Sorted points with their prefix index.
struct PointSet {
    positions: Vec<u64>,
    owners: Vec<u32>,
    index: Vec<u32>,
    bits: u32,
}

/// The number of prefix bits for `points` points: about one point per bucket, between 1 and
/// [`MAX_INDEX_BITS`].
fn index_bits(points: usize) -> u32 {
    let ceil_log2 = usize::BITS - points.saturating_sub(1).leading_zeros();
    ceil_log2.clamp(1, MAX_INDEX_BITS)
}

/// Writes `n` in decimal to the end of `buf`.
#[inline]
fn push_decimal(buf: &mut Vec<u8>, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

/// Sorts a bucket's points by `(position, owner)`, the two slices in step.
fn sort_bucket(positions: &mut [u64], owners: &mut [u32]) {
    if positions.len() > 32 {
        // Unusually crowded: not worth an insertion sort.
        let mut pairs: Vec<(u64, u32)> = positions
            .iter()
            .copied()
            .zip(owners.iter().copied())
            .collect();
        pairs.sort_unstable();
        for ((p, o), (pos, owner)) in positions.iter_mut().zip(owners.iter_mut()).zip(pairs) {
            (*p, *o) = (pos, owner);
        }
        return;
    }
    for i in 1..positions.len() {
        let key = (positions[i], owners[i]);
        let mut j = i;
        while j > 0 && (positions[j - 1], owners[j - 1]) > key {
            positions[j] = positions[j - 1];
            owners[j] = owners[j - 1];
            j -= 1;
        }
        (positions[j], owners[j]) = key;
    }
}

impl PointSet {
    /// Hashes and sorts the points of `names` (sorted, unique), `v` points each; a point's
    /// owner is its member's index in `names`.
    fn build(names: &[&str], v: u32) -> PointSet {
        let total = names
            .len()
            .checked_mul(v as usize)
            .filter(|&t| t <= u32::MAX as usize)
            .expect("a ring holds at most u32::MAX points");
        let bits = index_bits(total);
        let shift = 64 - bits;
        let buckets = 1usize << bits;

        // Hash every point once, member after member, counting the points of each prefix on
        // the way. Point `k` belongs to member `k / v`.
        let mut hashes: Vec<u64> = Vec::with_capacity(total);
        let mut counts = vec![0u32; buckets + 1];
        let mut buf = Vec::with_capacity(80);
        for name in names {
            buf.clear();
            buf.extend_from_slice(name.as_bytes());
            buf.push(b'#');
            let base = buf.len();
            for i in 0..v {
                buf.truncate(base);
                push_decimal(&mut buf, i);
                let pos = xxh3_64(&buf);
                counts[(pos >> shift) as usize + 1] += 1;
                hashes.push(pos);
            }
        }

        // Counting sort on the prefix (stable, so members stay in name order within a
        // bucket); the prefix sums are the index.
        for b in 1..=buckets {
            counts[b] += counts[b - 1];
        }
        let index = counts;
        let mut cursor = index[..buckets].to_vec();
        let mut positions = vec![0u64; total];
        let mut owners = vec![0u32; total];
        if v > 0 {
            for (member, chunk) in hashes.chunks_exact(v as usize).enumerate() {
                for &pos in chunk {
                    let c = &mut cursor[(pos >> shift) as usize];
                    positions[*c as usize] = pos;
                    owners[*c as usize] = member as u32;
                    *c += 1;
                }
            }
        }
        drop(hashes);
        // Each bucket holds a handful of points: sort by position, then by member (name) index
        // so that collisions are broken by name.
        for b in 0..buckets {
            let (lo, hi) = (index[b] as usize, index[b + 1] as usize);
            if hi - lo > 1 {
                sort_bucket(&mut positions[lo..hi], &mut owners[lo..hi]);
            }
        }
        PointSet {
            positions,
            owners,
            index,
            bits,
        }
    }

    /// The points of the members for which `local[owner]` is not `u32::MAX`, renumbered to
    /// `local[owner]`. `local` must keep the members' order, so ties stay broken by name.
    fn filter(&self, local: &[u32], kept_members: usize) -> PointSet {
        if kept_members == local.len() {
            // Every member is kept, so `local` is the identity.
            return PointSet {
                positions: self.positions.clone(),
                owners: self.owners.clone(),
                index: self.index.clone(),
                bits: self.bits,
            };
        }
        let expected = self.positions.len() / local.len().max(1) * kept_members;
        let mut positions = Vec::with_capacity(expected);
        let mut owners = Vec::with_capacity(expected);
        for (&pos, &owner) in self.positions.iter().zip(&self.owners) {
            let l = local[owner as usize];
            if l != u32::MAX {
                positions.push(pos);
                owners.push(l);
            }
        }
        let bits = index_bits(positions.len());
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        let mut index = vec![0u32; buckets + 1];
        for &pos in &positions {
            index[(pos >> shift) as usize + 1] += 1;
        }
        for b in 1..=buckets {
            index[b] += index[b - 1];
        }
        PointSet {
            positions,
            owners,
            index,
            bits,
        }
    }
}

/// Every role's ring, built from a network status. Cloning shares the rings.
#[derive(Debug, Clone, Default)]
pub struct Rings {
    rings: BTreeMap<String, Arc<Ring>>,
}

/// How one role's ring changes between two statuses.
#[derive(Debug, Default, PartialEq, Eq)]
struct Change<'a> {
    removed: Vec<&'a str>,
    added: Vec<(&'a str, IpAddr)>,
    moved: Vec<(&'a str, IpAddr)>,
}

/// Records in `changes` what member `x` becoming `y` (either absent) does to each ring.
fn note<'a>(
    changes: &mut BTreeMap<&'a str, Change<'a>>,
    x: Option<&'a Member>,
    y: Option<&'a Member>,
) {
    let mut roles: Vec<&str> = x
        .iter()
        .chain(y.iter())
        .flat_map(|m| m.roles.iter().map(|r| r.as_str()))
        .collect();
    roles.sort_unstable();
    roles.dedup();
    for role in roles {
        let was = x.is_some_and(|m| m.has_role(role));
        let is = y.is_some_and(|m| m.has_role(role));
        let c = changes.entry(role).or_default();
        match (x, y) {
            (Some(x), _) if was && !is => c.removed.push(&x.name),
            (_, Some(y)) if is && !was => c.added.push((&y.name, y.ip)),
            (Some(x), Some(y)) if was && is && x.ip != y.ip => c.moved.push((&y.name, y.ip)),
            _ => {}
        }
    }
}

/// Whether the members are sorted by name with no name twice (as every published status is).
fn sorted_unique(members: &[Arc<Member>]) -> bool {
    members.windows(2).all(|w| w[0].name < w[1].name)
}

impl Rings {
    /// Builds one ring per role borne by any member of `status`, each member placing
    /// `points_per_member` points on the ring of each of its roles.
    ///
    /// Members of every kind are placed if they bear roles. A name that appears twice keeps
    /// its first entry. Each member's points are hashed and sorted once for all its roles,
    /// and roles borne by exactly the same members share one ring's points.
    ///
    /// # Panics
    ///
    /// When the members bearing roles would place more than `u32::MAX` points.
    pub fn from_status(status: &NetworkStatus, points_per_member: u32) -> Rings {
        let mut bearers: Vec<&Member> = status
            .members
            .iter()
            .map(|m| &**m)
            .filter(|m| !m.roles.is_empty())
            .collect();
        bearers.sort_by(|a, b| a.name.cmp(&b.name));
        bearers.dedup_by(|later, first| later.name == first.name);

        // Global member index (in name order) of every bearer of each role.
        let mut by_role: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, m) in bearers.iter().enumerate() {
            for role in &m.roles {
                let list = by_role.entry(role.as_str()).or_default();
                if list.last() != Some(&i) && !list.contains(&i) {
                    list.push(i);
                }
            }
        }

        let names: Vec<&str> = bearers.iter().map(|m| m.name.as_str()).collect();
        let all = PointSet::build(&names, points_per_member);

        let mut rings = BTreeMap::new();
        let mut everyone: Option<Arc<Core>> = None;
        let mut local = vec![u32::MAX; bearers.len()];
        for (role, idxs) in by_role {
            let members: Vec<RingMember> = idxs
                .iter()
                .map(|&g| RingMember {
                    name: bearers[g].name.clone(),
                    ip: bearers[g].ip,
                })
                .collect();
            let core = if idxs.len() == bearers.len() {
                everyone
                    .get_or_insert_with(|| {
                        Arc::new(Core::from_points(
                            members,
                            all.filter(&local, bearers.len()),
                            points_per_member,
                        ))
                    })
                    .clone()
            } else {
                local.fill(u32::MAX);
                for (l, &g) in idxs.iter().enumerate() {
                    local[g] = l as u32;
                }
                let points = all.filter(&local, idxs.len());
                Arc::new(Core::from_points(members, points, points_per_member))
            };
            rings.insert(
                role.to_string(),
                Arc::new(Ring {
                    role: role.to_string(),
                    core,
                }),
            );
        }
        Rings { rings }
    }

    /// The rings of `new`, made from these rings of `old` by touching only the points of the
    /// members that came, went or changed roles (a member whose address changed keeps its
    /// points); rings of roles nobody's change concerns are shared as they are. The result
    /// answers exactly as [`Rings::from_status`] of `new` would (it is rebuilt that way when
    /// many members changed, or when a list is not sorted by name).
    ///
    /// `self` must be the rings of `old` with the same `points_per_member`.
    pub fn update(
        &self,
        old: &NetworkStatus,
        new: &NetworkStatus,
        points_per_member: u32,
    ) -> Rings {
        if !sorted_unique(&old.members) || !sorted_unique(&new.members) {
            return Rings::from_status(new, points_per_member);
        }
        if self
            .rings
            .values()
            .any(|r| r.core.per_member != points_per_member)
        {
            return Rings::from_status(new, points_per_member);
        }
        let mut changes: BTreeMap<&str, Change> = BTreeMap::new();
        let (a, b) = (&old.members, &new.members);
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x.name == y.name => {
                    if !Arc::ptr_eq(x, y) && x != y {
                        note(&mut changes, Some(x), Some(y));
                    }
                    i += 1;
                    j += 1;
                }
                (Some(x), Some(y)) if x.name < y.name => {
                    note(&mut changes, Some(x), None);
                    i += 1;
                }
                (Some(x), None) => {
                    note(&mut changes, Some(x), None);
                    i += 1;
                }
                (_, Some(y)) => {
                    note(&mut changes, None, Some(y));
                    j += 1;
                }
                (None, None) => break,
            }
        }
        let mut rings = self.rings.clone();
        // Roles borne by the same members change the same way: one new core for all of them.
        let mut made: Vec<(*const Core, &Change, Arc<Core>)> = Vec::new();
        for (role, change) in &changes {
            if *change == Change::default() {
                continue;
            }
            let old_ring = self.rings.get(*role);
            let core = old_ring.and_then(|r| {
                let key = Arc::as_ptr(&r.core);
                if let Some((_, _, c)) = made.iter().find(|(k, ch, _)| *k == key && *ch == change) {
                    return Some(c.clone());
                }
                let core = Arc::new(r.core.update(
                    &change.removed,
                    &change.added,
                    &change.moved,
                )?);
                made.push((key, change, core.clone()));
                Some(core)
            });
            let ring = match core {
                Some(core) => Ring {
                    role: role.to_string(),
                    core,
                },
                None => Ring::new(
                    role,
                    new.with_role(role).map(|m| (m.name.clone(), m.ip)),
                    points_per_member,
                ),
            };
            if ring.is_empty() {
                rings.remove(*role);
            } else {
                rings.insert(role.to_string(), Arc::new(ring));
            }
        }
        Rings { rings }
    }

    /// The ring of `role`, if any member bears it.
    pub fn get(&self, role: &str) -> Option<&Ring> {
        self.rings.get(role).map(|r| r.as_ref())
    }

    /// The roles that have a ring, in ascending order.
    pub fn roles(&self) -> impl Iterator<Item = &str> + '_ {
        self.rings.keys().map(String::as_str)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Kind, Member, Role};
    use proptest::prelude::*;
    use std::fmt::Write as _;
    use std::net::Ipv4Addr;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 1, n))
    }

    fn ring_of(names: &[&str], v: u32) -> Ring {
        Ring::new(
            "registrar",
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), ip(i as u8 + 1))),
            v,
        )
    }

    /// The owner by a plain linear scan of all points, straight from the contract.
    fn reference_owner(ring: &Ring, pos: u64) -> Option<&str> {
        let mut points: Vec<(u64, &str)> = Vec::new();
        for m in ring.members() {
            for i in 0..ring.points() / ring.len() {
                points.push((position(&format!("{}#{}", m.name, i)), &m.name));
            }
        }
        points.sort();
        points
            .iter()
            .find(|(p, _)| *p >= pos)
            .or(points.first())
            .map(|(_, n)| *n)
    }

    #[test]
    fn empty_ring_owns_nothing() {
        let ring = ring_of(&[], DEFAULT_POINTS);
        assert!(ring.is_empty());
        assert_eq!(ring.len(), 0);
        assert!(ring.owner_at(42).is_none());
        assert!(ring.owner("alice@example.test").is_none());
        assert_eq!(ring.replicas_at(42, 3).count(), 0);
        assert!(ring.shares().is_empty());

        let pointless = ring_of(&["node1"], 0);
        assert_eq!(pointless.len(), 1);
        assert!(pointless.owner_at(42).is_none());
        assert_eq!(pointless.replicas_at(42, 3).count(), 0);
        assert_eq!(pointless.shares(), vec![("node1".to_string(), 0.0)]);
    }

    #[test]
    fn single_member_owns_everything() {
        for v in [1, 10, DEFAULT_POINTS] {
            let ring = ring_of(&["solo"], v);
            for pos in [0, 1, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
                assert_eq!(ring.owner_at(pos).unwrap().name, "solo");
                let reps: Vec<_> = ring.replicas_at(pos, 3).map(|m| &m.name).collect();
                assert_eq!(reps, ["solo"]);
            }
            assert_eq!(ring.shares(), vec![("solo".to_string(), 1.0)]);
        }
    }

    #[test]
    fn owner_is_first_point_at_or_after_and_wraps() {
        let ring = ring_of(&["a", "b", "c"], 1);
        let mut points: Vec<(u64, &str)> = ["a", "b", "c"]
            .iter()
            .map(|n| (position(&format!("{n}#0")), *n))
            .collect();
        points.sort();
        for &(p, n) in &points {
            assert_eq!(ring.owner_at(p).unwrap().name, n, "exactly at a point");
            assert_eq!(ring.owner_at(p - 1).unwrap().name, n, "just before a point");
        }
        // Just after a point: the next one.
        assert_eq!(ring.owner_at(points[0].0 + 1).unwrap().name, points[1].1);
        assert_eq!(ring.owner_at(points[1].0 + 1).unwrap().name, points[2].1);
        // After the last point: wraps to the first.
        assert_eq!(ring.owner_at(points[2].0 + 1).unwrap().name, points[0].1);
        assert_eq!(ring.owner_at(u64::MAX).unwrap().name, points[0].1);
        assert_eq!(ring.owner_at(0).unwrap().name, points[0].1);
        // Replicas go clockwise and wrap.
        let reps: Vec<_> = ring
            .replicas_at(points[2].0, 3)
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(reps, [points[2].1, points[0].1, points[1].1]);
    }

    #[test]
    fn owner_matches_a_linear_scan() {
        let ring = ring_of(&["node1", "node2", "node3", "node4", "node5"], 50);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            assert_eq!(
                ring.owner_at(x).map(|m| m.name.as_str()),
                reference_owner(&ring, x)
            );
        }
        for key in ["alice@example.test", "a84b4c76e66710@pc33.atlanta.com", ""] {
            assert_eq!(
                ring.owner(key).map(|m| m.name.as_str()),
                reference_owner(&ring, position(key))
            );
        }
    }

    #[test]
    fn replicas_are_distinct_ordered_and_bounded() {
        let names = ["node1", "node2", "node3", "node4", "node5"];
        let ring = ring_of(&names, 100);
        for pos in [0, 12345, u64::MAX / 3, u64::MAX] {
            for n in 0..=12 {
                let reps: Vec<_> = ring.replicas_at(pos, n).collect();
                assert_eq!(reps.len(), n.min(names.len()));
                if n > 0 {
                    assert_eq!(reps[0], ring.owner_at(pos).unwrap());
                }
                for (i, a) in reps.iter().enumerate() {
                    assert!(reps[i + 1..].iter().all(|b| b.name != a.name));
                }
                // A prefix of the longer list: the order does not depend on n.
                let all: Vec<_> = ring.replicas_at(pos, names.len()).collect();
                assert_eq!(reps[..], all[..reps.len()]);
            }
        }
        // Ordered: each replica is the member of the next point of a not yet seen member.
        let pos = 777;
        let points = ring.point_list();
        let start = points.partition_point(|p| p.0 < pos) % points.len();
        let mut expect = Vec::new();
        for k in 0..ring.points() {
            let m = &ring.members()[points[(start + k) % ring.points()].1 as usize];
            if !expect.contains(&m) {
                expect.push(m);
            }
        }
        assert_eq!(ring.replicas_at(pos, 5).collect::<Vec<_>>(), expect);
    }

    #[test]
    fn ties_are_broken_by_name() {
        // Collisions of xxh3_64 cannot be found by brute force here, so place the points by
        // hand: two members at the same positions.
        let members = vec![
            RingMember {
                name: "alpha".into(),
                ip: ip(1),
            },
            RingMember {
                name: "beta".into(),
                ip: ip(2),
            },
        ];
        // Members are in name order: alpha = 0, beta = 1. Give them the same two positions,
        // in the "wrong" order, and let the bucket sort order them.
        let mut sorted = [
            (100u64, 1u32),
            (100, 0),
            (u64::MAX - 5, 1),
            (u64::MAX - 5, 0),
        ];
        sorted.sort_unstable();
        let bits = index_bits(sorted.len());
        let mut index = vec![0u32; (1 << bits) + 1];
        for &(p, _) in &sorted {
            index[(p >> (64 - bits)) as usize + 1] += 1;
        }
        for b in 1..index.len() {
            index[b] += index[b - 1];
        }
        let ring = Ring::from_parts(
            "registrar".into(),
            members,
            PointSet {
                positions: sorted.iter().map(|p| p.0).collect(),
                owners: sorted.iter().map(|p| p.1).collect(),
                index,
                bits,
            },
            2,
        );
        assert_eq!(ring.owner_at(100).unwrap().name, "alpha");
        assert_eq!(ring.owner_at(50).unwrap().name, "alpha");
        assert_eq!(ring.owner_at(u64::MAX).unwrap().name, "alpha");
        let reps: Vec<_> = ring.replicas_at(100, 2).map(|m| m.name.as_str()).collect();
        assert_eq!(reps, ["alpha", "beta"]);
        let shares = ring.shares();
        assert_eq!(shares[0], ("alpha".to_string(), 1.0));
        assert_eq!(shares[1], ("beta".to_string(), 0.0));

        // And the real build sorts colliding positions by member index (name order).
        let names = ["zed", "amy"];
        let mut sorted_names = names;
        sorted_names.sort();
        let ps = PointSet::build(&sorted_names, 3);
        for w in ps.positions.windows(2).zip(ps.owners.windows(2)) {
            assert!(w.0[0] < w.0[1] || (w.0[0] == w.0[1] && w.1[0] < w.1[1]));
        }
    }

    #[test]
    fn input_order_and_duplicates_do_not_matter() {
        let a = Ring::new(
            "r",
            vec![
                ("b".into(), ip(2)),
                ("a".into(), ip(1)),
                ("b".into(), ip(9)),
            ],
            20,
        );
        let b = Ring::new("r", vec![("a".into(), ip(1)), ("b".into(), ip(2))], 20);
        assert_eq!(a.members(), b.members());
        assert_eq!(a.point_list(), b.point_list());
        assert!(a.contains_ip(ip(2)));
        assert!(!a.contains_ip(ip(9)));
    }

    #[test]
    fn shares_sum_to_one() {
        let ring = ring_of(&["node1", "node2", "node3"], DEFAULT_POINTS);
        let shares = ring.shares();
        assert_eq!(shares.len(), 3);
        let sum: f64 = shares.iter().map(|s| s.1).sum();
        assert!((sum - 1.0).abs() < 1e-9, "{sum}");
        for (_, s) in shares {
            assert!((s - 1.0 / 3.0).abs() < 0.05, "{s}");
        }
    }

    #[test]
    fn canonical_aor_table() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "sip:User@Example.COM:5060;transport=udp",
                Some("User@example.com"),
            ),
            ("sips:alice@example.com", Some("alice@example.com")),
            ("SIP:alice@EXAMPLE.com", Some("alice@example.com")),
            ("SiPs:Alice@Example.Com", Some("Alice@example.com")),
            ("<sip:alice@example.com>", Some("alice@example.com")),
            (" <sip:alice@Example.com:5061> ", Some("alice@example.com")),
            (
                "\"Alice Smith\" <sip:Alice@Example.com;transport=tcp>;tag=1928301774",
                Some("Alice@example.com"),
            ),
            ("\"A \\\"<x>\\\" B\" <sip:bob@b.test>", Some("bob@b.test")),
            ("Alice <sip:alice@example.com>", Some("alice@example.com")),
            ("alice@Example.com", Some("alice@example.com")),
            ("alice@example.com:5060", Some("alice@example.com")),
            (
                "sip:alice@example.com?subject=project",
                Some("alice@example.com"),
            ),
            (
                "sip:alice@example.com;maddr=239.255.255.1;ttl=15",
                Some("alice@example.com"),
            ),
            (
                "sip:alice;day=tuesday@Example.com",
                Some("alice;day=tuesday@example.com"),
            ),
            (
                "sip:+1-212-555-1212:1234@Gateway.com;user=phone",
                Some("+1-212-555-1212@gateway.com"),
            ),
            (
                "sip:alice:secretword@atlanta.com;transport=tcp",
                Some("alice@atlanta.com"),
            ),
            ("sip:%61lice@atlanta.com", Some("%61lice@atlanta.com")),
            (
                "sip:bob@[2001:DB8::1]:5060;transport=tcp",
                Some("bob@[2001:db8::1]"),
            ),
            ("sip:bob@[2001:db8::1]", Some("bob@[2001:db8::1]")),
            ("sip:[::1]:5060", Some("[::1]")),
            ("sip:bob@192.0.2.4:5060", Some("bob@192.0.2.4")),
            ("sip:example.com", Some("example.com")),
            ("sip:Example.COM:5060;transport=udp", Some("example.com")),
            ("sips:Example.com?x=y", Some("example.com")),
            ("example.com", Some("example.com")),
            ("Example.com:5060", Some("example.com")),
            ("", None),
            ("sip:", None),
            ("sip:@example.com", None),
            ("sip:alice@", None),
            ("sip:alice@:5060", None),
            ("sip:alice@[]", None),
            ("sip:alice@[::1", None),
            ("<sip:alice@example.com", None),
            ("\"Alice\" sip:alice@example.com", None),
            ("tel:+1-201-555-0123", None),
            ("mailto:alice@example.com", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                canonical_aor(input).as_deref(),
                *want,
                "canonical_aor({input:?})"
            );
        }
    }

    #[test]
    fn lookup_key_rule() {
        let call_id = "a84b4c76e66710@pc33.atlanta.com";
        assert!(matches!(lookup_key(call_id), Cow::Borrowed(k) if k == call_id));
        let call_id2 = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6@FOO.bar.com";
        assert_eq!(lookup_key(call_id2), call_id2);
        assert_eq!(lookup_key("Alice@Example.com"), "Alice@Example.com");
        assert_eq!(lookup_key("4930123456"), "4930123456");
        assert_eq!(
            lookup_key("sip:Alice@Example.com:5060"),
            "Alice@example.com"
        );
        assert_eq!(lookup_key("SIPS:Alice@Example.com"), "Alice@example.com");
        assert_eq!(
            lookup_key("Sip:alice@EXAMPLE.com;transport=tls"),
            "alice@example.com"
        );
        // Only a leading sip:/sips: triggers canonicalisation.
        assert_eq!(lookup_key("<sip:a@b.test>"), "<sip:a@b.test>");
        assert_eq!(lookup_key("sipx:a@B.test"), "sipx:a@B.test");
        // Not parseable as an AOR: hashed as given.
        assert_eq!(lookup_key("sip:"), "sip:");
        assert_eq!(lookup_key(""), "");
    }

    #[test]
    fn decimal_formatting() {
        for n in [0, 1, 9, 10, 99, 100, 999, 1000, 65535, u32::MAX] {
            let mut buf = b"x#".to_vec();
            push_decimal(&mut buf, n);
            assert_eq!(buf, format!("x#{n}").into_bytes());
        }
    }

    fn member(name: &str, kind: Kind, roles: &[&str], n: u8) -> Arc<Member> {
        Arc::new(Member {
            name: name.into(),
            kind,
            roles: roles.iter().map(|r| Role::new(r).unwrap()).collect(),
            endpoints: Vec::new(),
            since: 0,
            ip: ip(n),
        })
    }

    #[test]
    fn rings_from_status_match_ring_new() {
        let status = NetworkStatus {
            term: 1,
            version: 1,
            manager: "m1".into(),
            members: vec![
                member("node3", Kind::Node, &["registrar", "sip_proxy"], 3),
                member(
                    "node1",
                    Kind::Node,
                    &["media_relay", "registrar", "sip_proxy"],
                    1,
                ),
                member("node2", Kind::Node, &["registrar", "registrar"], 2),
                member("dns1", Kind::Dns, &[], 4),
                member("xcap1", Kind::Node, &["xcap"], 5),
                member("es1", Kind::Eventserver, &["sip_proxy"], 6),
            ],
        };
        let check = |status: &NetworkStatus, rings: &Rings| {
            for role in rings.roles() {
                let ring = rings.get(role).unwrap();
                assert_eq!(ring.role(), role);
                let direct = Ring::new(
                    role,
                    status
                        .with_role(role)
                        .map(|m| (m.name.clone(), m.ip))
                        .collect::<Vec<_>>(),
                    64,
                );
                assert_eq!(ring.members(), direct.members());
                assert_eq!(ring.point_list(), direct.point_list());
                assert_eq!(ring.core.shift, direct.core.shift);
                assert_eq!(ring.core.chunks, direct.core.chunks);
            }
        };
        let rings = Rings::from_status(&status, 64);
        let roles: Vec<_> = rings.roles().collect();
        assert_eq!(roles, ["media_relay", "registrar", "sip_proxy", "xcap"]);
        assert!(rings.get("dns").is_none());
        check(&status, &rings);

        // Roles borne by every member (built without filtering) beside one that is not.
        let all = NetworkStatus {
            members: vec![
                member("node1", Kind::Node, &["registrar", "sip_proxy"], 1),
                member(
                    "node2",
                    Kind::Node,
                    &["media_relay", "registrar", "sip_proxy"],
                    2,
                ),
                member("node3", Kind::Node, &["registrar", "sip_proxy"], 3),
            ],
            ..status.clone()
        };
        let all_rings = Rings::from_status(&all, 64);
        assert_eq!(all_rings.roles().count(), 3);
        check(&all, &all_rings);
        let reg = rings.get("registrar").unwrap();
        assert_eq!(reg.len(), 3);
        assert!(reg.contains_ip(ip(2)));
        assert!(!reg.contains_ip(ip(4)));
        assert_eq!(reg.points(), 3 * 64);
        assert_eq!(rings.get("sip_proxy").unwrap().len(), 3);
        assert!(Rings::from_status(&NetworkStatus::default(), 10)
            .roles()
            .next()
            .is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_replicas_never_repeat(
            names in prop::collection::btree_set("[a-z]{1,6}", 1..12),
            v in 1u32..40,
            pos: u64,
            n in 0usize..16,
        ) {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let ring = ring_of(&names, v);
            let reps: Vec<_> = ring.replicas_at(pos, n).collect();
            prop_assert_eq!(reps.len(), n.min(names.len()));
            for (i, a) in reps.iter().enumerate() {
                prop_assert!(reps[i + 1..].iter().all(|b| b.name != a.name));
            }
            prop_assert_eq!(ring.owner_at(pos), ring.replicas_at(pos, 1).next());
            prop_assert_eq!(
                ring.owner_at(pos).map(|m| m.name.as_str()),
                reference_owner(&ring, pos)
            );
        }

        #[test]
        fn prop_owner_is_first_replica(
            names in prop::collection::btree_set("node[0-9]{1,3}", 0..20),
            pos: u64,
        ) {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let ring = ring_of(&names, 100);
            prop_assert_eq!(ring.owner_at(pos), ring.replicas_at(pos, 1).next());
        }

        #[test]
        fn prop_joining_only_moves_keys_to_the_newcomer(
            names in prop::collection::btree_set("[a-z]{1,6}", 1..12),
            newcomer in "[A-Z]{1,6}",
            v in 1u32..60,
            positions in prop::collection::vec(any::<u64>(), 200),
        ) {
            let before: Vec<&str> = names.iter().map(String::as_str).collect();
            let mut after = before.clone();
            after.push(&newcomer);
            let (r0, r1) = (ring_of(&before, v), ring_of(&after, v));
            for pos in positions {
                let (o0, o1) = (r0.owner_at(pos).unwrap(), r1.owner_at(pos).unwrap());
                prop_assert!(o0.name == o1.name || o1.name == newcomer);
            }
        }

        #[test]
        fn prop_canonical_aor_is_idempotent(
            user in "[A-Za-z0-9+._-]{1,8}",
            host in "[A-Za-z0-9.-]{1,12}",
            port in proptest::option::of(1u16..),
        ) {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let uri = format!("sip:{user}@{host}{port};transport=udp");
            let canon = canonical_aor(&uri).unwrap();
            prop_assert_eq!(&canon, &format!("{user}@{}", host.to_ascii_lowercase()));
            let again = canonical_aor(&canon);
            prop_assert_eq!(again.as_deref(), Some(canon.as_str()));
            prop_assert_eq!(lookup_key(&uri), canon);
        }
    }

    // ---- Rings changed in place -------------------------------------------------------------

    const ROLES: [&str; 3] = ["media_relay", "registrar", "sip_proxy"];

    /// A status of the members `(name, role bits, ip)`, sorted by name.
    fn status_of(
        members: &std::collections::BTreeMap<String, (u8, u8)>,
        version: u64,
    ) -> NetworkStatus {
        NetworkStatus {
            term: 1,
            version,
            manager: "m1".into(),
            members: members
                .iter()
                .map(|(name, &(bits, n))| {
                    let roles: Vec<&str> = ROLES
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| bits & (1 << i) != 0)
                        .map(|(_, r)| *r)
                        .collect();
                    member(name, Kind::Node, &roles, n)
                })
                .collect(),
        }
    }

    /// The rings answer exactly as rings built from scratch from the same status.
    fn assert_same_rings(a: &Rings, b: &Rings) -> Result<(), TestCaseError> {
        prop_assert_eq!(a.roles().collect::<Vec<_>>(), b.roles().collect::<Vec<_>>());
        for role in a.roles() {
            let (x, y) = (a.get(role).unwrap(), b.get(role).unwrap());
            prop_assert_eq!(x.members(), y.members());
            prop_assert_eq!(x.points(), y.points());
            prop_assert_eq!(x.point_list(), y.point_list());
            prop_assert_eq!(x.core.ips.clone(), y.core.ips.clone());
            for pos in [0, 1, u64::MAX, u64::MAX / 3, 12345678901234567] {
                prop_assert_eq!(
                    x.replicas_at(pos, 3).collect::<Vec<_>>(),
                    y.replicas_at(pos, 3).collect::<Vec<_>>()
                );
            }
        }
        Ok(())
    }

    #[derive(Debug, Clone)]
    enum Op {
        Join(String, u8, u8),
        Leave(usize),
        Roles(usize, u8),
        Move(usize, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            ("[a-z]{1,5}", 0u8..8, 1u8..250).prop_map(|(n, r, i)| Op::Join(n, r, i)),
            any::<usize>().prop_map(Op::Leave),
            (any::<usize>(), 0u8..8).prop_map(|(i, r)| Op::Roles(i, r)),
            (any::<usize>(), 1u8..250).prop_map(|(i, n)| Op::Move(i, n)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Any sequence of joins, leaves, role and address changes, one or a few at a time:
        /// the rings changed in place are the rings built from scratch, every step.
        #[test]
        fn prop_rings_updated_in_place_are_the_rings_rebuilt(
            start in prop::collection::btree_map("[a-z]{1,5}", (0u8..8, 1u8..250), 0..30),
            steps in prop::collection::vec(prop::collection::vec(op(), 1..4), 1..12),
            v in 1u32..40,
        ) {
            let mut members = start;
            let mut version = 1;
            let mut held = status_of(&members, version);
            let mut rings = Rings::from_status(&held, v);
            assert_same_rings(&rings, &Rings::from_status(&held, v))?;
            for ops in steps {
                for op in ops {
                    let names: Vec<String> = members.keys().cloned().collect();
                    match op {
                        Op::Join(n, r, i) => {
                            members.insert(n, (r, i));
                        }
                        Op::Leave(i) if !names.is_empty() => {
                            members.remove(&names[i % names.len()]);
                        }
                        Op::Roles(i, r) if !names.is_empty() => {
                            members.get_mut(&names[i % names.len()]).unwrap().0 = r;
                        }
                        Op::Move(i, n) if !names.is_empty() => {
                            members.get_mut(&names[i % names.len()]).unwrap().1 = n;
                        }
                        _ => {}
                    }
                }
                version += 1;
                let next = status_of(&members, version);
                rings = rings.update(&held, &next, v);
                assert_same_rings(&rings, &Rings::from_status(&next, v))?;
                held = next;
            }
        }

        /// Every position whose replica set differs between the rings before and after a
        /// change lies in a range that `changed_ranges` gives.
        #[test]
        fn prop_changed_ranges_hold_every_key_whose_replicas_changed(
            names in prop::collection::btree_set("[a-z]{1,5}", 4..30),
            gone in prop::collection::vec(any::<usize>(), 0..3),
            come in prop::collection::btree_set("[A-Z]{1,5}", 0..3),
            replicas in 1usize..4,
            v in 1u32..30,
            positions in prop::collection::vec(any::<u64>(), 300),
        ) {
            let before: Vec<String> = names.iter().cloned().collect();
            let mut after = before.clone();
            for g in gone {
                if after.len() > 1 {
                    let i = g % after.len();
                    after.remove(i);
                }
            }
            after.extend(come.iter().cloned());
            let before_refs: Vec<&str> = before.iter().map(String::as_str).collect();
            let old = ring_of(&before_refs, v);
            // Made from the old one in place, as a node does.
            let mk = |names: &[String]| NetworkStatus {
                members: names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| member(n, Kind::Node, &["registrar"], i as u8 + 1))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .collect(),
                ..NetworkStatus::default()
            };
            let (mut s0, mut s1) = (mk(&before), mk(&after));
            s0.members.sort_by(|a, b| a.name.cmp(&b.name));
            s1.members.sort_by(|a, b| a.name.cmp(&b.name));
            let r0 = Rings::from_status(&s0, v);
            let r1 = r0.update(&s0, &s1, v);
            let (old, new) = (r0.get("registrar").unwrap_or(&old), r1.get("registrar").unwrap());
            let Some(ranges) = Ring::changed_ranges(old, new, replicas) else {
                return Ok(());
            };
            let inside = |p: u64| ranges.iter().any(|&(a, b)| a <= p && p <= b);
            let mut probes = positions;
            for (p, _) in old.point_list().into_iter().chain(new.point_list()) {
                probes.extend([p.wrapping_sub(1), p, p.wrapping_add(1)]);
            }
            for pos in probes {
                let a: Vec<&str> = old.replicas_at(pos, replicas).map(|m| m.name.as_str()).collect();
                let b: Vec<&str> = new.replicas_at(pos, replicas).map(|m| m.name.as_str()).collect();
                if a != b {
                    prop_assert!(inside(pos), "{pos} moved from {a:?} to {b:?} outside {ranges:?}");
                }
            }
            for w in ranges.windows(2) {
                prop_assert!(w[0].1 < w[1].0, "sorted and disjoint: {ranges:?}");
            }
        }
    }

    /// At 1,000 members x 100 points, one member joining replaces only the chunks its points
    /// fall in; every other chunk is shared with the ring before, and the roles borne by the
    /// same members share one set of points.
    #[test]
    fn a_one_member_change_touches_only_that_members_chunks() {
        let mut members: std::collections::BTreeMap<String, (u8, u8)> = (0..1000)
            .map(|i| (format!("node{i:04}"), (7u8, (i % 250) as u8 + 1)))
            .collect();
        let before = status_of(&members, 1);
        let r0 = Rings::from_status(&before, 100);
        let reg0 = r0.get("registrar").unwrap();
        assert!(reg0.shares_points_with(r0.get("sip_proxy").unwrap()));
        members.insert("node0500a".into(), (7, 9));
        let after = status_of(&members, 2);
        let r1 = r0.update(&before, &after, 100);
        let reg1 = r1.get("registrar").unwrap();
        assert!(reg1.shares_points_with(r1.get("media_relay").unwrap()));
        let replaced = reg0
            .core
            .chunks
            .iter()
            .zip(&reg1.core.chunks)
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .count();
        assert!(
            replaced > 0 && replaced <= 100,
            "{replaced} chunks replaced"
        );
        assert_eq!(reg0.core.chunks.len(), reg1.core.chunks.len());
        assert_eq!(
            reg1.point_list(),
            Rings::from_status(&after, 100)
                .get("registrar")
                .unwrap()
                .point_list()
        );
        // And the store re-plans a small part of the circle: about 2 arcs in 1,001 per point.
        let ranges = Ring::changed_ranges(reg0, reg1, 2).unwrap();
        let covered: f64 = ranges
            .iter()
            .map(|(a, b)| (b - a) as f64 + 1.0)
            .sum::<f64>()
            / 2f64.powi(64);
        assert!(covered > 0.0 && covered < 0.02, "{covered}");
    }

    // ---- Golden vectors -------------------------------------------------------------------

    const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/ring_golden.txt");

    fn golden_ring() -> Ring {
        ring_of(
            &["node1", "node2", "node3", "node4", "node5"],
            DEFAULT_POINTS,
        )
    }

    fn golden_hash_inputs() -> Vec<&'static str> {
        vec![
            "",
            "node1#0",
            "node1#999",
            "node5#0",
            "alice@example.test",
            "a84b4c76e66710@pc33.atlanta.com",
        ]
    }

    fn golden_aor_inputs() -> Vec<&'static str> {
        vec![
            "sip:alice@example.test",
            "sip:Alice@Example.TEST:5060;transport=udp",
            "sips:alice@EXAMPLE.test",
            "<sip:alice@example.test>",
            "\"Alice\" <sip:alice@Example.Test;transport=tcp>;tag=42",
            "alice@example.test",
            "sip:alice;day=tue@example.test?subject=hi",
            "sip:bob:secret@[2001:DB8::1]:5061",
            "sip:example.test",
            "tel:+1-201-555-0123",
        ]
    }

    fn golden_key_inputs() -> Vec<String> {
        let mut keys: Vec<String> = [
            "sip:alice@example.test",
            "SIP:alice@EXAMPLE.TEST",
            "sip:Alice@example.test",
            "sips:alice@example.test:5061;transport=tls",
            "sip:alice@example.test?subject=project",
            "alice@example.test",
            "Alice@example.test",
            "sip:bob@example.test",
            "sip:carol@example.test",
            "sip:+4930123456@example.test;user=phone",
            "sip:bob@[2001:DB8::1]:5060",
            "sip:example.test",
            "sip:alice;day=tue@example.test",
            "a84b4c76e66710@pc33.atlanta.com",
            "f81d4fae-7dec-11d0-a765-00a0c91e6bf6@foo.bar.com",
            "843817637684230@998sdasdh09",
            "1-2345@192.0.2.1",
            "abcdef0123456789",
            "0",
            "1",
            "42",
            "4930123456",
            "18446744073709551615",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for i in 0..15 {
            keys.push(format!("sip:user{i}@example.test"));
        }
        for i in 0..12 {
            keys.push(format!("call-{i:04}@host{}.example.test", i % 3));
        }
        keys
    }

    fn render_golden() -> String {
        let ring = golden_ring();
        let mut out = String::new();
        out.push_str(
            "# onehop ring golden vectors (overlay/src/ring.rs). Regenerate only if the contract\n\
             # changes, with: ONEHOP_BLESS=1 cargo test -p onehop-overlay --lib ring::tests::golden\n\
             #\n\
             # Hashing: xxh3_64 (XXH3, 64-bit, seed 0) over the UTF-8 bytes; positions are written\n\
             # as 16 lowercase hex digits. Fields are separated by one space; the last field is\n\
             # the rest of the line and may contain spaces or be empty.\n\
             #\n\
             # hash POSITION STRING\n\
             #     raw xxh3_64 of STRING.\n\
             # aor CANONICAL INPUT\n\
             #     canonical_aor(INPUT); CANONICAL is '-' when INPUT is not a SIP AOR.\n\
             # ring ROLE V\n\
             #     the ring the key vectors use: role ROLE, V points per member; point i of a\n\
             #     member sits at xxh3_64(NAME + \"#\" + i), i = 0..V-1 in decimal.\n\
             # member NAME IP\n\
             #     a member of that ring.\n\
             # key POSITION OWNER REPLICA1 REPLICA2 HASHED INPUT\n\
             #     INPUT as given to the lookup interface; HASHED = lookup_key(INPUT) (canonical\n\
             #     AOR when INPUT starts with sip: or sips:, otherwise INPUT itself); POSITION =\n\
             #     xxh3_64(HASHED); OWNER = member of the first point >= POSITION (wrapping);\n\
             #     REPLICA1, REPLICA2 = the next distinct members clockwise.\n\
             \n",
        );
        for s in golden_hash_inputs() {
            writeln!(out, "hash {:016x} {s}", position(s)).unwrap();
        }
        out.push('\n');
        for s in golden_aor_inputs() {
            let c = canonical_aor(s).unwrap_or_else(|| "-".into());
            writeln!(out, "aor {c} {s}").unwrap();
        }
        out.push('\n');
        writeln!(out, "ring {} {}", ring.role(), ring.points() / ring.len()).unwrap();
        for m in ring.members() {
            writeln!(out, "member {} {}", m.name, m.ip).unwrap();
        }
        out.push('\n');
        for input in golden_key_inputs() {
            let hashed = lookup_key(&input);
            assert!(
                !hashed.contains(' '),
                "HASHED field must not contain spaces"
            );
            let pos = position(&hashed);
            let reps: Vec<&str> = ring.replicas_at(pos, 3).map(|m| m.name.as_str()).collect();
            writeln!(out, "key {pos:016x} {} {hashed} {input}", reps.join(" ")).unwrap();
        }
        out
    }

    /// Splits off the first `n` space-separated fields; the rest of the line is the last.
    fn fields(line: &str, n: usize) -> (Vec<&str>, &str) {
        let mut rest = line;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let (f, r) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push(f);
            rest = r;
        }
        (out, rest)
    }

    /// Checks every vector of the golden file against this implementation (or, with
    /// `ONEHOP_BLESS=1`, writes the file).
    #[test]
    fn golden_vectors() {
        if std::env::var("ONEHOP_BLESS").as_deref() == Ok("1") {
            std::fs::create_dir_all(std::path::Path::new(GOLDEN).parent().unwrap()).unwrap();
            std::fs::write(GOLDEN, render_golden()).unwrap();
            eprintln!("wrote {GOLDEN}");
            return;
        }
        let text = std::fs::read_to_string(GOLDEN)
            .unwrap_or_else(|e| panic!("{GOLDEN}: {e} (bless with ONEHOP_BLESS=1)"));
        let mut ring_role = None;
        let mut ring_v = 0;
        let mut members = Vec::new();
        let mut keys = Vec::new();
        let (mut hashes, mut aors) = (0, 0);
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
            match kind {
                "hash" => {
                    let (f, s) = fields(rest, 1);
                    assert_eq!(format!("{:016x}", position(s)), f[0], "hash of {s:?}");
                    hashes += 1;
                }
                "aor" => {
                    let (f, input) = fields(rest, 1);
                    let got = canonical_aor(input).unwrap_or_else(|| "-".into());
                    assert_eq!(got, f[0], "canonical_aor({input:?})");
                    aors += 1;
                }
                "ring" => {
                    let (f, v) = fields(rest, 1);
                    ring_role = Some(f[0].to_string());
                    ring_v = v.parse().unwrap();
                }
                "member" => {
                    let (f, ip) = fields(rest, 1);
                    members.push((f[0].to_string(), ip.parse::<IpAddr>().unwrap()));
                }
                "key" => keys.push(rest),
                other => panic!("unknown golden line kind {other:?}"),
            }
        }
        let ring = Ring::new(&ring_role.expect("a ring line"), members, ring_v);
        for rest in &keys {
            let (f, input) = fields(rest, 5);
            let hashed = lookup_key(input);
            assert_eq!(hashed, f[4], "lookup_key({input:?})");
            let pos = position(&hashed);
            assert_eq!(format!("{pos:016x}"), f[0], "position of {input:?}");
            let reps: Vec<&str> = ring.replicas_at(pos, 3).map(|m| m.name.as_str()).collect();
            assert_eq!(reps, f[1..4], "owner and replicas of {input:?}");
            assert_eq!(ring.owner_at(pos).unwrap().name, f[1]);
        }
        assert!(
            hashes >= 3 && aors >= 5 && keys.len() >= 45,
            "golden file truncated?"
        );
    }
}
