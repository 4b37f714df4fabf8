//! The zone: every record this server answers with, built from one network status.
//!
//! [`Zone::from_status`] is a pure function of the status and a [`ZoneConfig`]; the server
//! holds the result in an `ArcSwap` and replaces it whole when a newer status arrives, so
//! readers never block and never see half a zone.
//!
//! # Contents (DOMAIN is the configured domain)
//!
//! | owner | type | from |
//! |---|---|---|
//! | DOMAIN | SOA | serial from the status (see [`serial_of`]) |
//! | DOMAIN | NS | every live `dns` member, `NAME.DOMAIN` |
//! | DOMAIN | NAPTR | one per transport offered (`SIPS+D2T` 50, `SIP+D2T` 90, `SIP+D2U` 100, as in RFC 3263's example) |
//! | `_sip._udp`, `_sip._tcp`, `_sips._tcp` .DOMAIN | SRV | every live `sip_proxy` member (answers carry a random slice of at most K) |
//! | `_eventserver._udp.DOMAIN` | SRV | every live event server, for bootstrap |
//! | `NAME.DOMAIN` | A / AAAA | every live member, its address |
//! | each ENUM suffix (`e164.arpa`) | SOA, NS | as DOMAIN's, mailbox `hostmaster.DOMAIN` |
//! | `0.0.1.0.5.5.5.1.e164.arpa` | NAPTR | `100 10 "u" "E2U+sip" "!^.*$!URI!" .` for each routed number (from the [`EnumTable`], not the status) |
//!
//! The SRV names of the transports offered always exist (NODATA, not NXDOMAIN, while no proxy
//! is live), and so do the empty non-terminals `_udp.DOMAIN` and `_tcp.DOMAIN`.
//!
//! # Provisioned domains
//!
//! [`Zone::build`] also makes the server authoritative for every provisioned domain P the
//! managers hold (the farm's SIP domains): P gets its own SOA (same serial), NS, the NAPTR
//! records and the three SRV names, with exactly the records of DOMAIN. Their targets stay
//! the members' names under DOMAIN (`NAME.DOMAIN`, whose addresses DOMAIN holds and the
//! additional section carries): P has no member host names and no `_eventserver._udp`, so one
//! member address lives in one place. All apexes share one name table; each name knows its
//! apex (the longest apex it is under), so answering a name costs one lookup whatever the
//! number of domains, and a name under no apex costs one lookup per label.
//!
//! # ENUM
//!
//! For each ENUM suffix configured (`e164.arpa` by default) the zone holds one more apex,
//! with its SOA (the same serial, `hostmaster.DOMAIN` as its mailbox) and NS (the live DNS
//! members), built like the provisioned domains' apexes. The names under it are not in the
//! name table: they are answered from the [`EnumTable`] the zone shares with the ENUM follower
//! ([`Zone::with_numbers`]), which changes in place between two zones (see
//! `crate::enum_data`). A provisioned domain at or under an ENUM suffix is not served (the
//! ENUM tree is the suffix's alone), nor is a suffix that is the configured domain or holds
//! it, or a suffix at or under another one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, NAPTR, NS, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use onehop_overlay::status::{Kind, Member, NetworkStatus, Role};

use crate::config::{parse_domain, parse_enum_suffixes, Config, Transports};
use crate::enum_data::EnumTable;
use crate::fast::FastZone;

/// Port of the event servers' QUIC endpoint when a member announces none.
pub const EVENTSERVER_PORT: u16 = 8000;

/// SRV priority of every record: one tier; the random slice does the spreading.
pub const SRV_PRIORITY: u16 = 10;
/// SRV weight of every record (equal weights; non-zero so RFC 2782 weighted choice works).
pub const SRV_WEIGHT: u16 = 10;

/// What [`Zone::from_status`] needs besides the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The apex, an absolute lowercase name.
    pub domain: Name,
    /// TTL of every record and the SOA minimum.
    pub ttl: u32,
    /// Most SRV records in one answer (K).
    pub srv_slice: usize,
    /// Transports published.
    pub transports: Transports,
    /// SRV port for `_sip._udp`/`_sip._tcp` when a proxy announces no `sip` endpoint.
    pub sip_port: u16,
    /// SRV port for `_sips._tcp` when a proxy announces no `sips` endpoint.
    pub sips_port: u16,
    /// The ENUM suffixes (absolute, lowercase): an apex each, whose names are the routed
    /// numbers'. Empty: no ENUM.
    pub enum_suffixes: Vec<Name>,
}

impl ZoneConfig {
    /// A zone configuration for `domain` with the defaults of [`Config`].
    pub fn new(domain: &str) -> Result<ZoneConfig, String> {
        Ok(ZoneConfig {
            domain: parse_domain(domain)?,
            ttl: 5,
            srv_slice: 4,
            transports: Transports::default(),
            sip_port: 5060,
            sips_port: 5061,
            enum_suffixes: vec![parse_domain(crate::config::DEFAULT_ENUM_SUFFIX)?],
        })
    }

    /// The zone configuration of a (validated) daemon configuration.
    pub fn from_config(cfg: &Config) -> Result<ZoneConfig, String> {
        let domain = parse_domain(&cfg.domain)?;
        Ok(ZoneConfig {
            enum_suffixes: parse_enum_suffixes(&domain, &cfg.enum_suffixes)?,
            domain,
            ttl: cfg.ttl,
            srv_slice: cfg.srv_slice.max(1),
            transports: cfg.transports,
            sip_port: cfg.sip_port,
            sips_port: cfg.sips_port,
        })
    }
}

/// The zone serial for a status: `(term << 20) + version`, modulo 2^32.
///
/// Every status a server applies supersedes the one it held (a greater `(term, version)`), so
/// the serial grows with each one in RFC 1982 serial-number arithmetic as long as one step
/// advances by less than 2^31 (fewer than 2048 terms at once): a new term always lands above
/// every version of the previous terms as long as a term publishes fewer than 2^20 statuses.
/// Secondaries are not used (every server builds its zone from the status itself), so the
/// serial is for humans and monitoring: equal serials mean equal zones.
pub fn serial_of(term: u64, version: u64) -> u32 {
    (term.wrapping_shl(20).wrapping_add(version) & 0xffff_ffff) as u32
}

/// One RRset and how it is answered.
#[derive(Debug, Clone)]
pub(crate) struct RrSet {
    pub(crate) rtype: RecordType,
    pub(crate) records: Vec<Record>,
    /// Answer a random slice of at most K records (SRV of proxies and event servers).
    pub(crate) sliced: bool,
}

/// The RRsets at one owner name (empty for an empty non-terminal).
#[derive(Debug, Clone, Default)]
pub(crate) struct Node {
    pub(crate) sets: Vec<RrSet>,
    /// Index in [`Zone::apexes`] of the apex the name is under (the longest one).
    pub(crate) apex: usize,
}

/// One apex served: the configured domain, a provisioned one, or an ENUM suffix.
#[derive(Debug, Clone)]
pub(crate) struct Apex {
    pub(crate) name: LowerName,
    pub(crate) soa: Record,
    /// An ENUM suffix: the names under it are the numbers'.
    pub(crate) enum_suffix: bool,
}

impl Node {
    pub(crate) fn set(&self, rtype: RecordType) -> Option<&RrSet> {
        self.sets.iter().find(|s| s.rtype == rtype)
    }

    fn push(&mut self, record: Record, sliced: bool) {
        let rtype = record.record_type();
        match self.sets.iter_mut().find(|s| s.rtype == rtype) {
            Some(set) => set.records.push(record),
            None => self.sets.push(RrSet {
                rtype,
                records: vec![record],
                sliced,
            }),
        }
    }
}

/// An immutable snapshot of everything answered: the configured domain's zone and those of
/// the provisioned domains.
#[derive(Debug, Clone)]
pub struct Zone {
    pub(crate) origin: LowerName,
    pub(crate) soa: Record,
    /// Every apex served; the configured domain first.
    pub(crate) apexes: Vec<Apex>,
    apex_index: HashMap<LowerName, usize>,
    pub(crate) nodes: HashMap<LowerName, Node>,
    pub(crate) srv_slice: usize,
    ttl: u32,
    /// Indexes in `apexes` of the ENUM suffixes.
    enum_apexes: Vec<usize>,
    /// The routed numbers, answered under the ENUM suffixes.
    pub(crate) numbers: Arc<EnumTable>,
    term: u64,
    version: u64,
    members: usize,
    /// The answers pre-encoded from this snapshot (see `crate::fast`).
    pub(crate) fast: FastZone,
}

/// The host name of a member: `NAME.DOMAIN`, lowercase.
pub fn host_name(member: &str, domain: &Name) -> Option<Name> {
    let label = member.to_ascii_lowercase();
    Name::from_labels([label.as_bytes()])
        .and_then(|n| n.append_domain(domain))
        .ok()
}

fn under(labels: &[&str], domain: &Name) -> Name {
    let relative =
        Name::from_labels(labels.iter().map(|l| l.as_bytes())).expect("fixed labels are valid");
    relative
        .append_domain(domain)
        .expect("domain length was checked")
}

struct Builder<'a> {
    cfg: &'a ZoneConfig,
    nodes: HashMap<LowerName, Node>,
}

impl Builder<'_> {
    fn add(&mut self, apex: &Name, name: Name, rdata: RData, sliced: bool) {
        let record = Record::from_rdata(name.clone(), self.cfg.ttl, rdata);
        self.touch(apex, &name);
        self.nodes
            .entry(LowerName::new(&name))
            .or_default()
            .push(record, sliced);
    }

    /// Makes `name` and every name between it and `apex` exist.
    fn touch(&mut self, apex: &Name, name: &Name) {
        let apex_labels = apex.num_labels();
        let mut n = name.clone();
        while n.num_labels() >= apex_labels {
            self.nodes.entry(LowerName::new(&n)).or_default();
            if n.num_labels() == apex_labels {
                break;
            }
            n = n.base_name();
        }
    }

    fn address(&mut self, host: &Name, ip: IpAddr) {
        let domain = &self.cfg.domain;
        match ip {
            IpAddr::V4(v4) if !v4.is_unspecified() => {
                self.add(domain, host.clone(), RData::A(A(v4)), false)
            }
            IpAddr::V6(v6) if !v6.is_unspecified() => {
                self.add(domain, host.clone(), RData::AAAA(AAAA(v6)), false)
            }
            _ => {}
        }
    }
}

impl Builder<'_> {
    /// SOA, NS, NAPTR and the SIP SRV names at `apex`, with targets under the configured
    /// domain; returns the SOA.
    fn sip_apex(
        &mut self,
        apex: &Name,
        dns: &[&Name],
        proxies: &[&(&Member, Name)],
        serial: u32,
    ) -> Record {
        let cfg = self.cfg;
        let mname = dns
            .first()
            .map(|h| (*h).clone())
            .unwrap_or_else(|| apex.clone());
        let rname = under(&["hostmaster"], apex);
        let soa = Record::from_rdata(
            apex.clone(),
            cfg.ttl,
            RData::SOA(SOA::new(mname, rname, serial, 60, 10, 3600, cfg.ttl)),
        );
        self.touch(apex, apex);
        self.nodes
            .entry(LowerName::new(apex))
            .or_default()
            .push(soa.clone(), false);
        for h in dns {
            self.add(apex, apex.clone(), RData::NS(NS((*h).clone())), false);
        }

        // NAPTR at the apex and the SRV names they point to.
        let sip_udp = under(&["_sip", "_udp"], apex);
        let sip_tcp = under(&["_sip", "_tcp"], apex);
        let sips_tcp = under(&["_sips", "_tcp"], apex);
        let offered: Vec<(u16, &str, &Name, &str, u16)> = [
            (
                cfg.transports.tls,
                50,
                "SIPS+D2T",
                &sips_tcp,
                "sips",
                cfg.sips_port,
            ),
            (
                cfg.transports.tcp,
                90,
                "SIP+D2T",
                &sip_tcp,
                "sip",
                cfg.sip_port,
            ),
            (
                cfg.transports.udp,
                100,
                "SIP+D2U",
                &sip_udp,
                "sip",
                cfg.sip_port,
            ),
        ]
        .into_iter()
        .filter(|t| t.0)
        .map(|(_, order, service, name, endpoint, port)| (order, service, name, endpoint, port))
        .collect();
        for (order, service, target, _, _) in &offered {
            let naptr = NAPTR::new(
                *order,
                50,
                b"s".to_vec().into_boxed_slice(),
                service.as_bytes().to_vec().into_boxed_slice(),
                Vec::new().into_boxed_slice(),
                (*target).clone(),
            );
            self.add(apex, apex.clone(), RData::NAPTR(naptr), false);
        }
        for (_, _, srv_name, endpoint, default_port) in &offered {
            self.touch(apex, srv_name);
            for (m, host) in proxies.iter().map(|p| (&p.0, &p.1)) {
                let port = port_of(m, endpoint, *default_port);
                let srv = SRV::new(SRV_PRIORITY, SRV_WEIGHT, port, host.clone());
                self.add(apex, (*srv_name).clone(), RData::SRV(srv), true);
            }
        }
        soa
    }
}

impl Builder<'_> {
    /// SOA and NS at the ENUM suffix `apex`; returns the SOA.
    fn enum_apex(&mut self, apex: &Name, dns: &[&Name], serial: u32) -> Record {
        let cfg = self.cfg;
        let mname = dns
            .first()
            .map(|h| (*h).clone())
            .unwrap_or_else(|| cfg.domain.clone());
        let rname = under(&["hostmaster"], &cfg.domain);
        let soa = Record::from_rdata(
            apex.clone(),
            cfg.ttl,
            RData::SOA(SOA::new(mname, rname, serial, 60, 10, 3600, cfg.ttl)),
        );
        self.touch(apex, apex);
        self.nodes
            .entry(LowerName::new(apex))
            .or_default()
            .push(soa.clone(), false);
        for h in dns {
            self.add(apex, apex.clone(), RData::NS(NS((*h).clone())), false);
        }
        soa
    }
}

/// Whether `name` is `zone` or under it.
fn at_or_under(zone: &Name, name: &Name) -> bool {
    zone.zone_of(name)
}

/// The index of the longest apex `name` is at or under.
fn apex_under(index: &HashMap<LowerName, usize>, name: &LowerName) -> Option<usize> {
    let mut n = name.clone();
    loop {
        if let Some(i) = index.get(&n) {
            return Some(*i);
        }
        if n.is_root() {
            return None;
        }
        n = n.base_name();
    }
}

fn port_of(member: &Member, service: &str, default: u16) -> u16 {
    member
        .endpoint(service)
        .map(|a| a.port())
        .filter(|p| *p != 0)
        .unwrap_or(default)
}

impl Zone {
    /// Builds the zone for `status` (the configured domain and the ENUM suffixes' apexes).
    /// Pure: the same status and configuration give the same zone. Members whose name cannot be a DNS label are left
    /// out.
    pub fn from_status(status: &NetworkStatus, cfg: &ZoneConfig) -> Zone {
        Zone::build(status, cfg, &[])
    }

    /// Builds the zone for `status` with the provisioned `domains` too (see the module
    /// documentation; the configured domain, repeats, the root and names too long to hold
    /// the SRV names are skipped). Pure.
    pub fn build(status: &NetworkStatus, cfg: &ZoneConfig, domains: &[Name]) -> Zone {
        let domain = &cfg.domain;
        let mut b = Builder {
            cfg,
            nodes: HashMap::new(),
        };
        let members: Vec<(&Member, Name)> = status
            .members
            .iter()
            .map(|m| &**m)
            .filter(|m| m.kind.is_member())
            .filter_map(|m| host_name(&m.name, domain).map(|h| (m, h)))
            .collect();
        let dns: Vec<&Name> = members
            .iter()
            .filter(|(m, _)| m.kind == Kind::Dns)
            .map(|(_, h)| h)
            .collect();
        let proxies: Vec<&(&Member, Name)> = members
            .iter()
            .filter(|(m, _)| m.has_role(Role::SIP_PROXY))
            .collect();
        let serial = serial_of(status.term, status.version);

        let mut apexes = vec![Apex {
            name: LowerName::new(domain),
            soa: b.sip_apex(domain, &dns, &proxies, serial),
            enum_suffix: false,
        }];
        let mut apex_index = HashMap::from([(LowerName::new(domain), 0)]);
        // ENUM suffixes, as `parse_enum_suffixes` accepts them.
        let mut suffixes: Vec<Name> = Vec::new();
        let mut enum_apexes = Vec::new();
        for s in &cfg.enum_suffixes {
            let mut s = s.to_lowercase();
            s.set_fqdn(true);
            if s.is_root()
                || s.len() > 255 - 64
                || at_or_under(&s, domain)
                || suffixes
                    .iter()
                    .any(|o| at_or_under(o, &s) || at_or_under(&s, o))
            {
                continue;
            }
            let soa = b.enum_apex(&s, &dns, serial);
            let name = LowerName::new(&s);
            apex_index.insert(name.clone(), apexes.len());
            enum_apexes.push(apexes.len());
            apexes.push(Apex {
                name,
                soa,
                enum_suffix: true,
            });
            suffixes.push(s);
        }
        for d in domains {
            let mut d = d.to_lowercase();
            d.set_fqdn(true);
            // Room for the SRV names under it (as `parse_domain` checks); the ENUM trees are
            // the suffixes' alone.
            if d.is_root() || d.len() > 255 - 64 || suffixes.iter().any(|s| at_or_under(s, &d)) {
                continue;
            }
            let name = LowerName::new(&d);
            if apex_index.contains_key(&name) {
                continue;
            }
            let soa = b.sip_apex(&d, &dns, &proxies, serial);
            apex_index.insert(name.clone(), apexes.len());
            apexes.push(Apex {
                name,
                soa,
                enum_suffix: false,
            });
        }

        // Event servers, for bootstrap.
        let es_name = under(&["_eventserver", "_udp"], domain);
        b.touch(domain, &es_name);
        for (m, host) in members.iter().filter(|(m, _)| m.kind == Kind::Eventserver) {
            let port = port_of(m, "eventserver", EVENTSERVER_PORT);
            let srv = SRV::new(SRV_PRIORITY, SRV_WEIGHT, port, host.clone());
            b.add(domain, es_name.clone(), RData::SRV(srv), true);
        }

        // Addresses of every live member.
        for (m, host) in &members {
            b.address(host, m.ip);
        }

        let mut nodes = b.nodes;
        if apexes.len() > 1 {
            for (name, node) in nodes.iter_mut() {
                node.apex = apex_under(&apex_index, name).unwrap_or(0);
            }
        }
        let mut zone = Zone {
            origin: LowerName::new(domain),
            soa: apexes[0].soa.clone(),
            apexes,
            apex_index,
            nodes,
            srv_slice: cfg.srv_slice.max(1),
            ttl: cfg.ttl,
            enum_apexes,
            numbers: Arc::new(EnumTable::new()),
            term: status.term,
            version: status.version,
            members: members.len(),
            fast: FastZone::default(),
        };
        zone.fast = FastZone::build(&zone);
        zone
    }

    /// The apex.
    pub fn origin(&self) -> Name {
        (*self.origin).clone()
    }

    /// The zone serial ([`serial_of`] of the status).
    pub fn serial(&self) -> u32 {
        match &self.soa.data {
            RData::SOA(soa) => soa.serial,
            _ => 0,
        }
    }

    /// The TTL of every record (and the negative-caching TTL).
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The SOA record.
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// `(term, version)` of the status the zone was built from.
    pub fn status_key(&self) -> (u64, u64) {
        (self.term, self.version)
    }

    /// How many members the status listed (and the zone holds names for).
    pub fn member_count(&self) -> usize {
        self.members
    }

    /// Every record of `rtype` at `name` (the whole RRset, not a slice).
    pub fn records(&self, name: &Name, rtype: RecordType) -> &[Record] {
        self.nodes
            .get(&LowerName::new(name))
            .and_then(|n| n.set(rtype))
            .map(|s| s.records.as_slice())
            .unwrap_or(&[])
    }

    /// Whether `name` exists in the zone (possibly as an empty non-terminal).
    pub fn contains(&self, name: &Name) -> bool {
        self.nodes.contains_key(&LowerName::new(name))
    }

    pub(crate) fn node(&self, name: &LowerName) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// The apex a name of the zone is under.
    pub(crate) fn apex_of_node(&self, node: &Node) -> &Apex {
        &self.apexes[node.apex.min(self.apexes.len() - 1)]
    }

    /// The apex `name` is at or under (the longest), for a name the zone does not hold.
    pub(crate) fn apex_of(&self, name: &LowerName) -> Option<&Apex> {
        if self.apexes.len() == 1 {
            return self.origin.zone_of(name).then(|| &self.apexes[0]);
        }
        apex_under(&self.apex_index, name).map(|i| &self.apexes[i])
    }

    /// Every SIP domain served: the configured domain first, then the provisioned domains
    /// (the ENUM suffixes are in [`Zone::enum_suffixes`]).
    pub fn apexes(&self) -> impl Iterator<Item = Name> + '_ {
        self.apexes
            .iter()
            .filter(|a| !a.enum_suffix)
            .map(|a| (*a.name).clone())
    }

    /// The ENUM suffixes served, in the configured order.
    pub fn enum_suffixes(&self) -> impl Iterator<Item = Name> + '_ {
        self.enum_apexes
            .iter()
            .map(|i| (*self.apexes[*i].name).clone())
    }

    /// The zone answering the names under its ENUM suffixes from `numbers` (shared with
    /// whoever updates it; a zone built alone holds an empty table with no listing, and
    /// answers SERVFAIL under the suffixes).
    pub fn with_numbers(mut self, numbers: Arc<EnumTable>) -> Zone {
        self.numbers = numbers;
        self
    }

    /// The answers pre-encoded from this zone.
    pub fn fast(&self) -> &FastZone {
        &self.fast
    }

    /// The routed numbers this zone answers from.
    pub fn numbers(&self) -> &Arc<EnumTable> {
        &self.numbers
    }

    /// The ENUM suffix `name` is under (not at: the suffix itself is in the name table).
    pub(crate) fn enum_apex_of(&self, name: &LowerName) -> Option<&Apex> {
        self.enum_apexes
            .iter()
            .map(|i| &self.apexes[*i])
            .find(|a| a.name.zone_of(name))
    }

    /// The SOA record of the apex `name`, if this zone serves it.
    pub fn soa_of(&self, name: &Name) -> Option<&Record> {
        self.apex_index
            .get(&LowerName::new(name))
            .map(|i| &self.apexes[*i].soa)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_grows_with_status() {
        assert!(serial_of(1, 2) > serial_of(1, 1));
        assert!(serial_of(2, 0) > serial_of(1, 1000));
        assert_eq!(serial_of(1, 0), 1 << 20);
    }

    #[test]
    fn host_names_are_lowercase_labels() {
        let d = parse_domain("Example.Test").unwrap();
        assert_eq!(
            host_name("Node_1", &d).unwrap().to_string(),
            "node_1.example.test."
        );
    }
}
