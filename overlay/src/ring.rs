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

use xxhash_rust::xxh3::xxh3_64;

use crate::status::NetworkStatus;

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

/// The ring of one role: every member bearing the role, each with the same number of points.
///
/// Immutable once built; cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct Ring {
    role: String,
    /// Sorted by name, unique names; a point's owner is an index into this.
    members: Vec<RingMember>,
    /// The members' addresses, sorted, for [`Ring::contains_ip`].
    ips: Vec<IpAddr>,
    /// Point positions, ascending; equal positions ordered by member index (= by name).
    positions: Vec<u64>,
    /// `owners[i]` is the index in `members` of the member that placed point `i`.
    owners: Vec<u32>,
    /// `index[p]` is the first point whose top `bits` bits are `>= p`; `2^bits + 1` entries.
    index: Vec<u32>,
    /// `64 - bits`: shifting a position right by this gives its prefix.
    shift: u32,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("role", &self.role)
            .field("members", &self.members.len())
            .field("points", &self.positions.len())
            .finish_non_exhaustive()
    }
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
        Ring::from_parts(role.to_string(), members, points)
    }

    fn from_parts(role: String, members: Vec<RingMember>, points: PointSet) -> Ring {
        let mut ips: Vec<IpAddr> = members.iter().map(|m| m.ip).collect();
        ips.sort_unstable();
        ips.dedup();
        Ring {
            role,
            members,
            ips,
            positions: points.positions,
            owners: points.owners,
            index: points.index,
            shift: 64 - points.bits,
        }
    }

    /// The role this ring is for.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The number of members on the ring.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the ring has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The number of points on the ring (members times points per member).
    pub fn points(&self) -> usize {
        self.positions.len()
    }

    /// The members, sorted by name.
    pub fn members(&self) -> &[RingMember] {
        &self.members
    }

    /// Whether a member of this ring has address `ip`.
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        self.ips.binary_search(&ip).is_ok()
    }

    /// The index of the first point at or after `pos`, wrapping to the first point; `None` when
    /// the ring has no point.
    #[inline]
    fn point_at(&self, pos: u64) -> Option<usize> {
        if self.positions.is_empty() {
            return None;
        }
        let bucket = (pos >> self.shift) as usize;
        let lo = self.index[bucket] as usize;
        let hi = self.index[bucket + 1] as usize;
        // Every point before `lo` has a smaller prefix, every point from `hi` on a larger one,
        // so the answer is in `lo..=hi`.
        let i = lo + self.positions[lo..hi].partition_point(|&p| p < pos);
        Some(if i == self.positions.len() { 0 } else { i })
    }

    /// The owner of the key at position `pos`: the member of the first point at or after
    /// `pos`, wrapping around. `None` when the ring has no point.
    #[inline]
    pub fn owner_at(&self, pos: u64) -> Option<&RingMember> {
        self.point_at(pos)
            .map(|i| &self.members[self.owners[i] as usize])
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
        let wanted = n.min(self.members.len());
        let (next, steps) = match self.point_at(pos) {
            Some(i) if wanted > 0 => (i, self.positions.len()),
            _ => (0, 0),
        };
        Replicas {
            ring: self,
            next,
            steps,
            wanted,
            seen: Seen::new(wanted, self.members.len()),
        }
    }

    /// Each member's share of the keyspace, by member name: the fraction of all positions it
    /// owns. The shares sum to 1.0 (up to rounding) unless the ring has no point, in which case
    /// every share is 0.0.
    pub fn shares(&self) -> Vec<(String, f64)> {
        let mut owned = vec![0u128; self.members.len()];
        if let (Some(&first), Some(&last)) = (self.positions.first(), self.positions.last()) {
            // The first point owns the wrap-around arc (last, 2^64) + [0, first].
            owned[self.owners[0] as usize] += (1u128 << 64) - u128::from(last) + u128::from(first);
            for (w, &owner) in self.positions.windows(2).zip(&self.owners[1..]) {
                owned[owner as usize] += u128::from(w[1] - w[0]);
            }
        }
        const SPACE: f64 = 18_446_744_073_709_551_616.0; // 2^64
        self.members
            .iter()
            .zip(owned)
            .map(|(m, o)| (m.name.clone(), o as f64 / SPACE))
            .collect()
    }
}

/// The iterator behind [`Ring::replicas_at`].
struct Replicas<'a> {
    ring: &'a Ring,
    /// The next point to look at.
    next: usize,
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
            let owner = self.ring.owners[self.next];
            self.next += 1;
            if self.next == self.ring.positions.len() {
                self.next = 0;
            }
            self.steps -= 1;
            if self.seen.insert(owner) {
                self.wanted -= 1;
                return Some(&self.ring.members[owner as usize]);
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
    rings: BTreeMap<String, std::sync::Arc<Ring>>,
}

impl Rings {
    /// Builds one ring per role borne by any member of `status`, each member placing
    /// `points_per_member` points on the ring of each of its roles.
    ///
    /// Members of every kind are placed if they bear roles. A name that appears twice keeps
    /// its first entry. Each member's points are hashed and sorted once for all its roles.
    ///
    /// # Panics
    ///
    /// When the members bearing roles would place more than `u32::MAX` points.
    pub fn from_status(status: &NetworkStatus, points_per_member: u32) -> Rings {
        let mut bearers: Vec<_> = status
            .members
            .iter()
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
        let mut local = vec![u32::MAX; bearers.len()];
        for (role, idxs) in by_role {
            local.fill(u32::MAX);
            let mut members = Vec::with_capacity(idxs.len());
            for (l, &g) in idxs.iter().enumerate() {
                local[g] = l as u32;
                members.push(RingMember {
                    name: bearers[g].name.clone(),
                    ip: bearers[g].ip,
                });
            }
            let points = all.filter(&local, idxs.len());
            rings.insert(
                role.to_string(),
                std::sync::Arc::new(Ring::from_parts(role.to_string(), members, points)),
            );
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
        let start = ring.point_at(pos).unwrap();
        let mut expect = Vec::new();
        for k in 0..ring.points() {
            let m = &ring.members()[ring.owners[(start + k) % ring.points()] as usize];
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
        assert_eq!(a.positions, b.positions);
        assert_eq!(a.owners, b.owners);
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

    fn member(name: &str, kind: Kind, roles: &[&str], n: u8) -> Member {
        Member {
            name: name.into(),
            kind,
            roles: roles.iter().map(|r| Role::new(r).unwrap()).collect(),
            endpoints: Vec::new(),
            since: 0,
            ip: ip(n),
        }
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
                assert_eq!(ring.positions, direct.positions);
                assert_eq!(ring.owners, direct.owners);
                assert_eq!(ring.index, direct.index);
                assert_eq!(ring.shift, direct.shift);
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
