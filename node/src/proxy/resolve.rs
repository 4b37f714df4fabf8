//! Locating SIP servers of other domains (RFC 3263): NAPTR, then SRV, then A/AAAA.
//!
//! - A URI with a numeric host needs no lookup (the core handles it).
//! - With an explicit port: A/AAAA of the host, transport from the URI or UDP.
//! - Otherwise NAPTR of the host, keeping `SIP+D2U` and `SIP+D2T` rules with flag `s` in
//!   order/preference order (`SIPS+D2T` needs a TLS client, which the proxy does not have);
//!   without NAPTR records, SRV `_sip._udp` then `_sip._tcp`; without SRV records, A/AAAA of
//!   the host on port 5060 over UDP (or the URI's transport).
//! - SRV targets are taken by priority, and within a priority in an RFC 2782 weighted random
//!   order.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::Resolver;

use super::transport::Proto;

/// A resolver for other domains' SIP servers.
#[derive(Clone)]
pub struct SipResolver {
    inner: Arc<Resolver<TokioRuntimeProvider>>,
}

impl SipResolver {
    /// A resolver asking `servers` (none: the system's resolv.conf).
    pub fn new(servers: &[SocketAddr]) -> Result<SipResolver, String> {
        let config = if servers.is_empty() {
            let (config, _) =
                hickory_resolver::system_conf::read_system_conf().map_err(|e| e.to_string())?;
            config
        } else {
            let ns = servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            ResolverConfig::from_name_servers(ns)
        };
        let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        let inner = builder.build().map_err(|e| e.to_string())?;
        Ok(SipResolver {
            inner: Arc::new(inner),
        })
    }

    /// The servers to try for `host` (with `port` and `transport` from the URI, if any), in
    /// order.
    pub async fn locate(
        &self,
        host: &str,
        port: Option<u16>,
        transport: Option<Proto>,
    ) -> Result<Vec<(Proto, SocketAddr)>, String> {
        let name = format!("{}.", host.trim_end_matches('.'));
        if let Some(port) = port {
            let proto = transport.unwrap_or(Proto::Udp);
            return self.addresses(&name, port, proto).await;
        }
        let mut out = Vec::new();
        // NAPTR.
        if transport.is_none() {
            if let Ok(naptr) = self.inner.lookup(name.clone(), RecordType::NAPTR).await {
                let mut rules: Vec<_> = naptr
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::NAPTR(n) if n.flags.eq_ignore_ascii_case(b"s") => Some(n.clone()),
                        _ => None,
                    })
                    .filter_map(|n| {
                        let service = String::from_utf8_lossy(&n.services).to_ascii_uppercase();
                        let proto = match service.as_str() {
                            "SIP+D2U" => Proto::Udp,
                            "SIP+D2T" => Proto::Tcp,
                            _ => return None,
                        };
                        Some((n.order, n.preference, proto, n.replacement.to_string()))
                    })
                    .collect();
                rules.sort_by_key(|r| (r.0, r.1));
                for (_, _, proto, srv_name) in rules {
                    out.extend(self.srv(&srv_name, proto).await);
                }
                if !out.is_empty() {
                    return Ok(out);
                }
            }
        }
        // SRV without NAPTR.
        let protos: Vec<Proto> = match transport {
            Some(p) => vec![p],
            None => vec![Proto::Udp, Proto::Tcp],
        };
        for proto in protos {
            let label = match proto {
                Proto::Udp => "_sip._udp",
                Proto::Tcp => "_sip._tcp",
                // The node opens no TLS connection of its own.
                Proto::Tls => continue,
            };
            out.extend(self.srv(&format!("{label}.{name}"), proto).await);
        }
        if !out.is_empty() {
            return Ok(out);
        }
        self.addresses(&name, 5060, transport.unwrap_or(Proto::Udp))
            .await
    }

    async fn srv(&self, name: &str, proto: Proto) -> Vec<(Proto, SocketAddr)> {
        let Ok(srv) = self.inner.lookup(name.to_string(), RecordType::SRV).await else {
            return Vec::new();
        };
        let mut records: Vec<(u16, u16, u16, String)> = srv
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.priority, s.weight, s.port, s.target.to_string())),
                _ => None,
            })
            .collect();
        records.sort_by_key(|r| r.0);
        let mut ordered = Vec::new();
        let mut i = 0;
        while i < records.len() {
            let prio = records[i].0;
            let mut group: Vec<_> = records[i..]
                .iter()
                .take_while(|r| r.0 == prio)
                .cloned()
                .collect();
            i += group.len();
            // RFC 2782: pick by running sum of weights, repeatedly.
            while !group.is_empty() {
                let total: u32 = group.iter().map(|r| r.1 as u32 + 1).sum();
                let mut pick = rand::random::<u32>() % total;
                let idx = group
                    .iter()
                    .position(|r| {
                        let w = r.1 as u32 + 1;
                        if pick < w {
                            true
                        } else {
                            pick -= w;
                            false
                        }
                    })
                    .unwrap_or(0);
                ordered.push(group.remove(idx));
            }
        }
        let mut out = Vec::new();
        for (_, _, port, target) in ordered {
            if let Ok(addrs) = self.addresses(&target, port, proto).await {
                out.extend(addrs);
            }
        }
        out
    }

    async fn addresses(
        &self,
        name: &str,
        port: u16,
        proto: Proto,
    ) -> Result<Vec<(Proto, SocketAddr)>, String> {
        let ips = self
            .inner
            .lookup_ip(name.to_string())
            .await
            .map_err(|e| e.to_string())?;
        Ok(ips
            .iter()
            .map(|ip| (proto, SocketAddr::new(ip, port)))
            .collect())
    }
}
