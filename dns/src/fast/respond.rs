//! Answering one request from a [`FastZone`]: reading the request (only the shape the fast
//! path answers) and assembling the response from the pre-encoded blocks.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use rand::Rng;

use super::{
    slice_order, Answer, Block, FastApex, FastZone, SrvSlices, CLASS_IN, HEADER, MAX_RECORDS,
    PARSED_OPTIONS, T_ANY, T_AXFR, T_IXFR, T_NAPTR, T_OPT,
};
use crate::answer::{AnswerOptions, EnumResult, Transport};
use crate::enum_data::{EnumLookup, E2U_SIP, MAX_DIGITS, NAPTR_ORDER, NAPTR_PREFERENCE};
use crate::zone::Zone;

/// A request the fast path can read: standard query, one question of class IN, nothing
/// else but an optional OPT record of EDNS version 0 with options hickory keeps as bytes.
struct Query<'a> {
    raw: &'a [u8],
    /// The question name, lowercase wire form.
    key: [u8; 255],
    key_len: usize,
    labels: usize,
    mixed_case: bool,
    qtype: u16,
    /// The client's EDNS payload size, when it sent an OPT record.
    edns: Option<u16>,
}

impl Query<'_> {
    fn key(&self) -> &[u8] {
        &self.key[..self.key_len]
    }

    fn question_end(&self) -> usize {
        HEADER + self.key_len + 4
    }
}

fn be16(raw: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*raw.get(at)?, *raw.get(at + 1)?]))
}

fn parse(raw: &[u8]) -> Option<Query<'_>> {
    if raw.len() < HEADER + 5 {
        return None;
    }
    // QR clear, opcode QUERY; one question, no answer or authority, at most one additional.
    if raw[2] & 0xf8 != 0 || be16(raw, 4)? != 1 || be16(raw, 6)? != 0 || be16(raw, 8)? != 0 {
        return None;
    }
    let additionals = be16(raw, 10)?;
    let mut q = Query {
        raw,
        key: [0; 255],
        key_len: 0,
        labels: 0,
        mixed_case: false,
        qtype: 0,
        edns: None,
    };
    let mut at = HEADER;
    loop {
        let len = *raw.get(at)? as usize;
        if len > 63 || q.key_len + 1 + len > 255 {
            return None;
        }
        let label = raw.get(at + 1..at + 1 + len)?;
        q.key[q.key_len] = len as u8;
        for (i, c) in label.iter().enumerate() {
            let lower = c.to_ascii_lowercase();
            q.mixed_case |= lower != *c;
            q.key[q.key_len + 1 + i] = lower;
        }
        q.key_len += 1 + len;
        at += 1 + len;
        if len == 0 {
            break;
        }
        q.labels += 1;
    }
    q.qtype = be16(raw, at)?;
    if be16(raw, at + 2)? != CLASS_IN {
        return None;
    }
    at += 4;
    match additionals {
        0 => {}
        1 => {
            // OPT: root owner, type 41, class = payload size, TTL = extended rcode 0,
            // version 0 and flags, then the options, filling the record exactly.
            if *raw.get(at)? != 0 || be16(raw, at + 1)? != T_OPT {
                return None;
            }
            q.edns = Some(be16(raw, at + 3)?);
            if *raw.get(at + 5)? != 0 || *raw.get(at + 6)? != 0 {
                return None;
            }
            let rdlen = be16(raw, at + 9)? as usize;
            at += 11;
            let end = at + rdlen;
            while at < end {
                let code = be16(raw, at)?;
                let len = be16(raw, at + 2)? as usize;
                if PARSED_OPTIONS.contains(&code) {
                    return None;
                }
                at += 4 + len;
            }
            if at != end {
                return None;
            }
        }
        _ => return None,
    }
    (at == raw.len()).then_some(q)
}

/// What a fast response was, for the metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastOutcome {
    pub(crate) qtype: RecordType,
    pub(crate) rcode: ResponseCode,
    pub(crate) enum_result: Option<EnumResult>,
}

/// A response being assembled.
struct Out<'o> {
    buf: &'o mut Vec<u8>,
    /// Length with every name in full (`full` of the blocks).
    full: usize,
    /// The least length any encoder could give the records (see [`Block::squeezable`]).
    min: usize,
    counts: [u16; 3],
    /// Length and `full` length once the answer section is written.
    answer_end: Option<(usize, usize)>,
    /// The delta added to the blocks' pointers.
    delta: u16,
}

impl Out<'_> {
    fn end_answers(&mut self) {
        self.answer_end = Some((self.buf.len(), self.full));
    }

    fn push(&mut self, section: usize, b: &Block) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&b.bytes);
        if self.delta != 0 {
            for p in &b.ptrs {
                let p = at + *p as usize;
                let v = u16::from_be_bytes([self.buf[p], self.buf[p + 1]]) + self.delta;
                self.buf[p..p + 2].copy_from_slice(&v.to_be_bytes());
            }
        }
        self.full += b.bytes.len() + b.saved;
        self.min += b.bytes.len() - b.squeezable;
        self.counts[section] += b.records;
    }

    /// A random slice of `set` into `section`; with `interleave`, each SRV record is
    /// followed by its target's addresses (the first time that host appears), as the slow
    /// path orders a NAPTR answer's additional section; otherwise the hosts are returned.
    fn slices<R: Rng + ?Sized>(
        &mut self,
        set: &SrvSlices,
        k: usize,
        rng: &mut R,
        hosts: &[Block],
        seen: &mut Vec<usize>,
        interleave: bool,
    ) {
        for i in slice_order(set.records.len(), k, rng) {
            let (block, host) = &set.records[i];
            self.push(if interleave { 2 } else { 0 }, block);
            if !seen.contains(host) {
                seen.push(*host);
                if interleave {
                    self.push(2, &hosts[*host]);
                }
            }
        }
    }
}

/// Answers `raw` from the pre-encoded answers into `out` (cleared first); `None` when the
/// slow path must answer (see the module documentation).
pub(crate) fn answer<R: Rng + ?Sized>(
    zone: &Zone,
    raw: &[u8],
    transport: Transport,
    opts: &AnswerOptions,
    rng: &mut R,
    out: &mut Vec<u8>,
) -> Option<FastOutcome> {
    let fz = &zone.fast;
    if fz.apexes.is_empty() {
        return None;
    }
    let q = parse(raw)?;
    if matches!(q.qtype, T_OPT | T_AXFR | T_IXFR) {
        return None;
    }
    let limit = match transport {
        Transport::Tcp => u16::MAX as usize,
        Transport::Udp => match q.edns {
            Some(p) => p.clamp(512, opts.max_udp_payload.max(512)) as usize,
            None => 512,
        },
    };
    out.clear();
    out.extend_from_slice(&raw[..q.question_end()]);
    let mut o = Out {
        buf: out,
        full: HEADER + q.key_len + 4,
        min: HEADER + q.key_len + 4,
        counts: [0; 3],
        answer_end: None,
        delta: 0,
    };
    let mut aa = true;
    let mut enum_result = None;
    let rcode = match fz.names.get(q.key()) {
        Some(name) => {
            if q.qtype == T_ANY {
                return None;
            }
            match name.answers.iter().find(|(t, _)| *t == q.qtype) {
                Some((_, answer)) => {
                    answer_with(&mut o, answer, fz.srv_slice, rng);
                    ResponseCode::NoError
                }
                None => {
                    negative(&mut o, fz.apexes.get(name.apex)?, q.key_len);
                    ResponseCode::NoError
                }
            }
        }
        None => match apex_of(fz, q.key()) {
            None => {
                aa = false;
                ResponseCode::Refused
            }
            Some(apex) if apex.enum_suffix => {
                let (rcode, result) = enum_answer(&mut o, zone, apex, &q);
                aa = result != EnumResult::NotListed;
                enum_result = Some(result);
                rcode
            }
            Some(apex) => {
                if q.qtype == T_ANY {
                    return None;
                }
                negative(&mut o, apex, q.key_len);
                ResponseCode::NXDomain
            }
        },
    };
    let records = o.counts.iter().map(|c| *c as usize).sum::<usize>();
    let opt = if q.edns.is_some() { 11 } else { 0 };
    let mut size = if q.mixed_case { o.full } else { o.buf.len() };
    if size + opt > limit {
        // The slow path drops the additional section first. When not even the tightest
        // encoding of the whole response fits, hickory's does not either: drop it here.
        match o.answer_end {
            Some((len, full)) if o.counts[1] == 0 && o.min + opt > limit => {
                o.buf.truncate(len);
                o.full = full;
                o.counts[2] = 0;
                size = if q.mixed_case { o.full } else { o.buf.len() };
            }
            _ => return None,
        }
    }
    if records > MAX_RECORDS || size + opt > limit {
        return None;
    }
    let mut counts = o.counts;
    if q.edns.is_some() {
        o.buf.push(0);
        o.buf.extend_from_slice(&T_OPT.to_be_bytes());
        o.buf
            .extend_from_slice(&opts.max_udp_payload.max(512).to_be_bytes());
        o.buf.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        counts[2] += 1;
    }
    let buf = o.buf;
    buf[2] = 0x80 | if aa { 0x04 } else { 0 } | (q.raw[2] & 0x01);
    buf[3] = (q.raw[3] & 0x10) | (rcode.low() & 0x0f);
    for (i, c) in counts.iter().enumerate() {
        buf[6 + 2 * i..8 + 2 * i].copy_from_slice(&c.to_be_bytes());
    }
    Some(FastOutcome {
        qtype: RecordType::from(q.qtype),
        rcode,
        enum_result,
    })
}

/// The apex `key` is under (the longest), for a name the zone does not hold.
fn apex_of<'f>(fz: &'f FastZone, key: &[u8]) -> Option<&'f FastApex> {
    let mut i = 0;
    while i < key.len() {
        if let Some(a) = fz.apex_index.get(&key[i..]) {
            return fz.apexes.get(*a);
        }
        i += 1 + key[i] as usize;
    }
    None
}

/// The SOA of `apex` in the authority section, under a question of `key_len` bytes.
fn negative(o: &mut Out<'_>, apex: &FastApex, key_len: usize) {
    o.delta = (key_len - apex.name.len()) as u16;
    o.push(1, &apex.soa);
    o.delta = 0;
}

fn answer_with<R: Rng + ?Sized>(o: &mut Out<'_>, answer: &Answer, k: usize, rng: &mut R) {
    match answer {
        Answer::Fixed(f) => {
            o.push(0, &f.an);
            o.end_answers();
            o.push(2, &f.ar);
        }
        Answer::Srv { set, hosts } => {
            let mut seen = Vec::new();
            o.slices(set, k, rng, hosts, &mut seen, false);
            o.end_answers();
            for h in seen {
                o.push(2, &hosts[h]);
            }
        }
        Answer::Naptr { an, targets, hosts } => {
            o.push(0, an);
            o.end_answers();
            let mut seen = Vec::new();
            for t in targets {
                o.slices(t, k, rng, hosts, &mut seen, true);
            }
        }
    }
}

/// A name under an ENUM suffix (see `crate::enum_data`).
fn enum_answer(
    o: &mut Out<'_>,
    zone: &Zone,
    apex: &FastApex,
    q: &Query<'_>,
) -> (ResponseCode, EnumResult) {
    let below = q.labels.saturating_sub(count_labels(&apex.name));
    let mut digits = [0u8; MAX_DIGITS];
    let mut ok = below > 0 && below <= MAX_DIGITS;
    let key = q.key();
    let mut at = 0;
    // The first label is the last digit.
    for i in 0..below {
        if !ok {
            break;
        }
        match key.get(at..at + 2) {
            Some([1, d]) if d.is_ascii_digit() => digits[below - 1 - i] = *d,
            _ => ok = false,
        }
        at += 1 + key[at] as usize;
    }
    let found = if ok {
        zone.numbers.lookup(&digits[..below])
    } else if zone.numbers.is_listed() {
        EnumLookup::Absent
    } else {
        EnumLookup::NotListed
    };
    let (rcode, result) = match found {
        EnumLookup::NotListed => return (ResponseCode::ServFail, EnumResult::NotListed),
        EnumLookup::Absent => (ResponseCode::NXDomain, EnumResult::NxDomain),
        EnumLookup::NonTerminal => (ResponseCode::NoError, EnumResult::NoData),
        EnumLookup::Routed(regexp) if matches!(q.qtype, T_NAPTR | T_ANY) => {
            enum_record(o, zone.fast.ttl, &regexp, q.key_len);
            return (ResponseCode::NoError, EnumResult::Record);
        }
        EnumLookup::Routed(_) => (ResponseCode::NoError, EnumResult::NoData),
    };
    negative(o, apex, q.key_len);
    (rcode, result)
}

/// The NAPTR `E2U+sip` record of a routed number, owned by the question name.
fn enum_record(o: &mut Out<'_>, ttl: u32, regexp: &[u8], key_len: usize) {
    let Ok(re_len) = u8::try_from(regexp.len()) else {
        return;
    };
    let b = &mut *o.buf;
    let start = b.len();
    b.extend_from_slice(&[0xc0, HEADER as u8]);
    b.extend_from_slice(&T_NAPTR.to_be_bytes());
    b.extend_from_slice(&CLASS_IN.to_be_bytes());
    b.extend_from_slice(&ttl.to_be_bytes());
    let rdlen = 4 + 2 + 1 + E2U_SIP.len() + 1 + regexp.len() + 1;
    b.extend_from_slice(&(rdlen as u16).to_be_bytes());
    b.extend_from_slice(&NAPTR_ORDER.to_be_bytes());
    b.extend_from_slice(&NAPTR_PREFERENCE.to_be_bytes());
    b.extend_from_slice(&[1, b'u', E2U_SIP.len() as u8]);
    b.extend_from_slice(E2U_SIP);
    b.push(re_len);
    b.extend_from_slice(regexp);
    b.push(0);
    // Hickory writes the owner in full when the question has upper-case letters.
    o.full += b.len() - start - 2 + key_len;
    o.counts[0] += 1;
}

fn count_labels(wire: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < wire.len() && wire[i] != 0 {
        n += 1;
        i += 1 + wire[i] as usize;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_outside_the_fast_shape_are_not_parsed() {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&[1, b'A', 0, 0, 1, 0, 1]);
        let p = parse(&q).expect("a plain query");
        assert_eq!(p.key(), &[1, b'a', 0]);
        assert!(p.mixed_case);
        let mut response = q.clone();
        response[2] |= 0x80;
        assert!(parse(&response).is_none());
        let mut two = q.clone();
        two[5] = 2;
        assert!(parse(&two).is_none());
        let mut trailing = q.clone();
        trailing.push(0);
        assert!(parse(&trailing).is_none());
        let mut chaos = q.clone();
        chaos[q.len() - 1] = 3;
        assert!(parse(&chaos).is_none());
        let mut pointer = q.clone();
        pointer[12] = 0xc0;
        assert!(parse(&pointer).is_none());
    }
}
