//! Pre-encoded answers: the fast path of [`answer_bytes`](crate::answer::answer_bytes).
//!
//! When a [`Zone`] is built, every answer that does not vary between queries is encoded to
//! wire bytes once, into a [`FastZone`] that lives (and is swapped) with the zone snapshot:
//!
//! - for every name of the zone and every type it holds: the answer, authority and
//!   additional sections (A, AAAA, SOA, NS with the addresses of its targets);
//! - for every apex: its SOA record as the authority section of a negative answer (NXDOMAIN
//!   and NODATA), relocatable under any question name below the apex (its pointers move by
//!   the question's extra length);
//! - for every SRV RRset answered as a random slice (the proxies', the event servers'): each
//!   SRV record and the address records of each target, encoded once; an answer is a random
//!   slice of them assembled by concatenation. The same is done for the SRV records that a
//!   NAPTR answer carries in its additional section.
//!
//! Every name in these blocks is compressed only against the question name at offset 12
//! (whose length the block was encoded for), never against another block, so any
//! concatenation of blocks stays valid. A query is answered by copying: the header (the
//! request's ID, RD and CD copied), the question as the client sent it (its case kept,
//! RFC 4343), the blocks, and an OPT record when the request had one.
//!
//! What is not pre-encoded goes to the slow path (hickory's encoder, `crate::answer`), which
//! stays the reference for every behaviour: ANY, zone transfers, other classes and opcodes,
//! EDNS versions above 0, requests with several questions or other records, options hickory
//! parses (NSID, DAU, client subnet), and every response that would not fit the client's size
//! (the slow path trims it and sets TC), but one: when not even the tightest encoding of the
//! whole response could fit (every compressible name a 2-byte pointer), the slow path would
//! drop the additional section, and so does the fast path (a NAPTR answer with its SRV slices
//! over UDP without EDNS). Names under the ENUM suffixes are answered here too, from the
//! [`EnumTable`](crate::enum_data::EnumTable) the zone shares.
//!
//! # Same answers as the slow path
//! The fast path answers only when its response fits the size limit, and hickory's encoding
//! of the same records is never larger (it compresses against every earlier name, this only
//! against the question), so both answer whole, untruncated responses. When the question has
//! upper-case letters, hickory cannot compress against it (its name compression compares bytes):
//! the limit is then checked against the uncompressed size. SRV slices use the same random
//! draws in the same order as the slow path (`slice_order`), so with the same random source
//! both give the same records; `dns/tests/fast.rs` checks every query shape against the slow path.

use std::collections::HashMap;

use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use rand::seq::SliceRandom;
use rand::Rng;

use crate::zone::{Node, Zone};

mod respond;
pub(crate) use respond::answer;

/// Bytes of a DNS header.
const HEADER: usize = 12;
/// Most bytes the pre-encoded answers of one zone may take; names past it are answered by
/// the slow path (a farm with very many provisioned domains and proxies).
pub const MAX_FAST_BYTES: usize = 64 << 20;
/// Most records in one fast response: hickory stops compressing past 120 names, and the
/// fast path must never be smaller than hickory's encoding by compressing more.
const MAX_RECORDS: usize = 100;

const T_NAPTR: u16 = 35;
const T_OPT: u16 = 41;
const T_IXFR: u16 = 251;
const T_AXFR: u16 = 252;
const T_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
/// EDNS option codes hickory parses into types (and may refuse): left to the slow path.
const PARSED_OPTIONS: [u16; 3] = [3, 5, 8];

/// A random slice of at most `k` of `len` records, in random order: the indexes. The slow
/// path draws its slices with this too, so both draw the same from the same random source.
pub(crate) fn slice_order<R: Rng + ?Sized>(len: usize, k: usize, rng: &mut R) -> Vec<usize> {
    let mut out: Vec<usize> = if len <= k {
        (0..len).collect()
    } else {
        rand::seq::index::sample(rng, len, k).into_vec()
    };
    out.shuffle(rng);
    out
}

/// The lowercase wire form of `name` (labels and the root's zero byte).
pub(crate) fn wire(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

/// Encoded records: a section or part of one.
#[derive(Debug, Clone, Default)]
pub(crate) struct Block {
    bytes: Vec<u8>,
    /// Offsets in `bytes` of the compression pointers into the question name (relocated by
    /// the difference of lengths when the block is used under a longer question name).
    ptrs: Vec<u16>,
    /// Bytes that name compression saved: `bytes.len() + saved` is the length with every
    /// name in full (the bound for mixed-case questions).
    saved: usize,
    /// Bytes more that a compressor finding every name earlier in the message could save
    /// (each compressible name down to a pointer): `bytes.len() - squeezable` bounds from
    /// below what hickory's encoder can make of the block.
    squeezable: usize,
    records: u16,
}

/// Writes records compressed against one question name placed at offset 12.
struct Writer<'q> {
    /// The question name, lowercase wire form.
    question: &'q [u8],
    /// Offsets in `question` where a label starts.
    starts: Vec<usize>,
}

impl<'q> Writer<'q> {
    fn new(question: &'q [u8]) -> Writer<'q> {
        let mut starts = Vec::new();
        let mut i = 0;
        while i < question.len() && question[i] != 0 {
            starts.push(i);
            i += 1 + question[i] as usize;
        }
        starts.push(i);
        Writer { question, starts }
    }

    /// Writes `name` (lowercase wire form), ending in a pointer to the longest suffix of the
    /// question it ends with when `compress`.
    fn name(&self, b: &mut Block, name: &[u8], compress: bool) {
        let before = b.bytes.len();
        self.write_name(b, name, compress);
        let written = b.bytes.len() - before;
        b.saved += name.len() - written;
        if compress {
            b.squeezable += written.saturating_sub(2);
        }
    }

    fn write_name(&self, b: &mut Block, name: &[u8], compress: bool) {
        let mut i = 0;
        loop {
            if compress {
                let rest = &name[i..];
                if rest.len() <= self.question.len() {
                    let j = self.question.len() - rest.len();
                    if self.starts.contains(&j) && &self.question[j..] == rest {
                        if j + 1 == self.question.len() {
                            // The root: one zero byte is shorter than a pointer.
                            b.bytes.push(0);
                            return;
                        }
                        b.ptrs.push(b.bytes.len() as u16);
                        let ptr = 0xc000 | (HEADER + j) as u16;
                        b.bytes.extend_from_slice(&ptr.to_be_bytes());
                        return;
                    }
                }
            }
            let len = name[i] as usize;
            b.bytes.extend_from_slice(&name[i..=i + len]);
            if len == 0 {
                return;
            }
            i += 1 + len;
        }
    }

    /// Writes one record; `None` for record data the fast path does not encode.
    fn record(&self, b: &mut Block, r: &Record) -> Option<()> {
        let rtype = u16::from(r.record_type());
        self.name(b, &wire(&r.name), true);
        b.bytes.extend_from_slice(&rtype.to_be_bytes());
        b.bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
        b.bytes.extend_from_slice(&r.ttl.to_be_bytes());
        let len_at = b.bytes.len();
        b.bytes.extend_from_slice(&[0, 0]);
        let start = b.bytes.len();
        match &r.data {
            RData::A(a) => b.bytes.extend_from_slice(&a.0.octets()),
            RData::AAAA(a) => b.bytes.extend_from_slice(&a.0.octets()),
            RData::NS(ns) => self.name(b, &wire(&ns.0), true),
            RData::SOA(soa) => {
                self.name(b, &wire(&soa.mname), true);
                self.name(b, &wire(&soa.rname), true);
                for v in [soa.serial, soa.refresh as u32, soa.retry as u32] {
                    b.bytes.extend_from_slice(&v.to_be_bytes());
                }
                for v in [soa.expire as u32, soa.minimum] {
                    b.bytes.extend_from_slice(&v.to_be_bytes());
                }
            }
            RData::SRV(srv) => {
                for v in [srv.priority, srv.weight, srv.port] {
                    b.bytes.extend_from_slice(&v.to_be_bytes());
                }
                // RFC 2782: the target is never compressed (nor by hickory).
                self.name(b, &wire(&srv.target), false);
            }
            RData::NAPTR(n) => {
                b.bytes.extend_from_slice(&n.order.to_be_bytes());
                b.bytes.extend_from_slice(&n.preference.to_be_bytes());
                for s in [&n.flags, &n.services, &n.regexp] {
                    let len = u8::try_from(s.len()).ok()?;
                    b.bytes.push(len);
                    b.bytes.extend_from_slice(s);
                }
                self.name(b, &wire(&n.replacement), false);
            }
            _ => return None,
        }
        let rdlen = u16::try_from(b.bytes.len() - start).ok()?;
        b.bytes[len_at..len_at + 2].copy_from_slice(&rdlen.to_be_bytes());
        b.records += 1;
        Some(())
    }

    fn block<'r>(&self, records: impl IntoIterator<Item = &'r Record>) -> Option<Block> {
        let mut b = Block::default();
        for r in records {
            self.record(&mut b, r)?;
        }
        Some(b)
    }
}

/// A fixed answer: the three sections.
#[derive(Debug, Clone)]
struct Fixed {
    an: Block,
    ar: Block,
}

/// One SRV RRset answered as a random slice, encoded for one question name.
#[derive(Debug, Clone)]
struct SrvSlices {
    /// Each SRV record, and the index in `hosts` of its target.
    records: Vec<(Block, usize)>,
}

/// How one type at one name is answered.
#[derive(Debug, Clone)]
enum Answer {
    Fixed(Fixed),
    /// A random slice of the records; additional: their targets' addresses (`hosts`).
    Srv {
        set: SrvSlices,
        hosts: Vec<Block>,
    },
    /// Every NAPTR record; additional: for each in order, a slice of the SRV set it points to
    /// (if the zone holds one) and the addresses of their targets.
    Naptr {
        an: Block,
        targets: Vec<SrvSlices>,
        hosts: Vec<Block>,
    },
}

#[derive(Debug, Clone)]
struct FastName {
    /// Index of the name's apex in [`FastZone::apexes`].
    apex: usize,
    answers: Vec<(u16, Answer)>,
}

#[derive(Debug, Clone)]
struct FastApex {
    /// The apex's name, lowercase wire form.
    name: Vec<u8>,
    /// Its SOA as an authority section, encoded with the apex itself as the question.
    soa: Block,
    enum_suffix: bool,
}

/// The pre-encoded answers of one zone (see the module documentation).
#[derive(Clone, Default)]
pub struct FastZone {
    names: HashMap<Box<[u8]>, FastName>,
    apexes: Vec<FastApex>,
    apex_index: HashMap<Box<[u8]>, usize>,
    srv_slice: usize,
    ttl: u32,
    bytes: usize,
}

impl std::fmt::Debug for FastZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastZone")
            .field("names", &self.names.len())
            .field("apexes", &self.apexes.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// The address records (A, then AAAA) of `host` in `zone`.
fn host_records<'z>(zone: &'z Zone, host: &Name) -> impl Iterator<Item = &'z Record> {
    let node = zone.node(&LowerName::new(host));
    [RecordType::A, RecordType::AAAA]
        .into_iter()
        .filter_map(move |t| node.and_then(|n| n.set(t)))
        .flat_map(|s| s.records.iter())
}

/// Interns hosts (SRV targets) and encodes their addresses for one question.
struct Hosts<'w, 'q> {
    w: &'w Writer<'q>,
    index: HashMap<Vec<u8>, usize>,
    blocks: Vec<Block>,
}

impl Hosts<'_, '_> {
    fn of(&mut self, zone: &Zone, host: &Name) -> Option<usize> {
        let key = wire(host);
        if let Some(i) = self.index.get(&key) {
            return Some(*i);
        }
        let block = self.w.block(host_records(zone, host))?;
        self.blocks.push(block);
        self.index.insert(key, self.blocks.len() - 1);
        Some(self.blocks.len() - 1)
    }
}

fn srv_slices(
    zone: &Zone,
    w: &Writer<'_>,
    hosts: &mut Hosts<'_, '_>,
    records: &[Record],
) -> Option<SrvSlices> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let RData::SRV(srv) = &r.data else {
            return None;
        };
        let host = hosts.of(zone, &srv.target)?;
        out.push((w.block([r])?, host));
    }
    Some(SrvSlices { records: out })
}

fn encode_name(zone: &Zone, name: &LowerName, node: &Node) -> Option<FastName> {
    let qwire = wire(name);
    let w = Writer::new(&qwire);
    let mut answers = Vec::with_capacity(node.sets.len());
    for set in &node.sets {
        let rtype = u16::from(set.rtype);
        let answer = match set.rtype {
            RecordType::SRV if set.sliced => {
                let mut hosts = Hosts {
                    w: &w,
                    index: HashMap::new(),
                    blocks: Vec::new(),
                };
                let set = srv_slices(zone, &w, &mut hosts, &set.records)?;
                Answer::Srv {
                    set,
                    hosts: hosts.blocks,
                }
            }
            RecordType::NAPTR => {
                let mut hosts = Hosts {
                    w: &w,
                    index: HashMap::new(),
                    blocks: Vec::new(),
                };
                let mut targets = Vec::new();
                for r in &set.records {
                    let RData::NAPTR(naptr) = &r.data else {
                        return None;
                    };
                    if !naptr.flags.eq_ignore_ascii_case(b"s") {
                        continue;
                    }
                    let target = zone
                        .node(&LowerName::new(&naptr.replacement))
                        .and_then(|n| n.set(RecordType::SRV));
                    match target {
                        Some(t) if t.sliced => {
                            targets.push(srv_slices(zone, &w, &mut hosts, &t.records)?)
                        }
                        Some(_) => return None,
                        None => {}
                    }
                }
                Answer::Naptr {
                    an: w.block(&set.records)?,
                    targets,
                    hosts: hosts.blocks,
                }
            }
            RecordType::SRV => return None,
            _ => {
                let an = w.block(&set.records)?;
                let mut ar = Block::default();
                if set.rtype == RecordType::NS {
                    let mut seen: Vec<&Name> = Vec::new();
                    for r in &set.records {
                        if let RData::NS(ns) = &r.data {
                            if !seen.contains(&&ns.0) {
                                seen.push(&ns.0);
                                for a in host_records(zone, &ns.0) {
                                    w.record(&mut ar, a)?;
                                }
                            }
                        }
                    }
                }
                Answer::Fixed(Fixed { an, ar })
            }
        };
        answers.push((rtype, answer));
    }
    Some(FastName {
        apex: node.apex.min(zone.apexes.len().saturating_sub(1)),
        answers,
    })
}

fn block_size(b: &Block) -> usize {
    b.bytes.len() + b.ptrs.len() * 2 + 16
}

fn name_size(n: &FastName) -> usize {
    let slices = |s: &SrvSlices| s.records.iter().map(|(b, _)| block_size(b)).sum::<usize>();
    let hosts = |h: &[Block]| h.iter().map(block_size).sum::<usize>();
    64 + n
        .answers
        .iter()
        .map(|(_, a)| match a {
            Answer::Fixed(f) => block_size(&f.an) + block_size(&f.ar),
            Answer::Srv { set, hosts: h } => slices(set) + hosts(h),
            Answer::Naptr {
                an,
                targets,
                hosts: h,
            } => block_size(an) + targets.iter().map(slices).sum::<usize>() + hosts(h),
        })
        .sum::<usize>()
}

impl FastZone {
    /// Encodes the answers of `zone` (every name of the configured domain first, then the
    /// provisioned domains', until [`MAX_FAST_BYTES`]).
    pub(crate) fn build(zone: &Zone) -> FastZone {
        let mut fz = FastZone {
            srv_slice: zone.srv_slice,
            ttl: zone.ttl(),
            ..FastZone::default()
        };
        for apex in &zone.apexes {
            let name = wire(&apex.name);
            let w = Writer::new(&name);
            let Some(soa) = w.block([&apex.soa]) else {
                // Without every apex the NXDOMAIN answers could be wrong: no fast path.
                return FastZone::default();
            };
            fz.apex_index
                .insert(name.clone().into_boxed_slice(), fz.apexes.len());
            fz.apexes.push(FastApex {
                name,
                soa,
                enum_suffix: apex.enum_suffix,
            });
        }
        let mut names: Vec<(&LowerName, &Node)> = zone.nodes.iter().collect();
        // The configured domain's names first, so a budget cut leaves them fast.
        names.sort_by_key(|(_, n)| n.apex);
        for (name, node) in names {
            if let Some(fast) = encode_name(zone, name, node) {
                let size = name_size(&fast);
                if fz.bytes + size > MAX_FAST_BYTES {
                    break;
                }
                fz.bytes += size;
                fz.names.insert(wire(name).into_boxed_slice(), fast);
            }
        }
        fz
    }

    /// How many names are answered from pre-encoded bytes.
    pub fn names(&self) -> usize {
        self.names.len()
    }

    /// About how many bytes the pre-encoded answers take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compress_against_the_longest_suffix_of_the_question() {
        let q = wire(&Name::from_ascii("_sip._udp.example.test.").unwrap());
        let w = Writer::new(&q);
        let mut b = Block::default();
        w.name(
            &mut b,
            &wire(&Name::from_ascii("node1.example.test.").unwrap()),
            true,
        );
        assert_eq!(b.bytes, [&[5u8][..], b"node1", &[0xc0, 12 + 10]].concat());
        assert_eq!(b.ptrs, vec![6]);
        assert_eq!(b.bytes.len() + b.saved, 20);
        let mut b = Block::default();
        w.name(&mut b, &q, true);
        assert_eq!(b.bytes, vec![0xc0, 12]);
        let mut b = Block::default();
        w.name(
            &mut b,
            &wire(&Name::from_ascii("other.invalid.").unwrap()),
            true,
        );
        assert_eq!(b.bytes, wire(&Name::from_ascii("other.invalid.").unwrap()));
        assert!(b.ptrs.is_empty());
    }
}
