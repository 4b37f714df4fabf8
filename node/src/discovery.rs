//! Bootstrap through DNS: a node configured with a `domain` and no `eventservers` finds the
//! event servers in the SRV records `_eventserver._udp.DOMAIN` that the farm's DNS publishes
//! (DESIGN.md section 4), so it needs only its certificate and the domain to join.
//!
//! The DNS servers asked are `dns_servers` from the configuration or, when it is empty, the
//! `nameserver` lines of /etc/resolv.conf (port 53). They are asked in order; a round that
//! finds nothing is retried after a back-off that doubles up to [`MAX_BACKOFF`], so a node
//! started before the DNS (or before the first network status) joins as soon as it can.
//! Discovery happens once, at start-up: the event-server client then keeps the addresses.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::Config;

/// The well-known DNS port, for resolv.conf name servers.
const DNS_PORT: u16 = 53;
/// Wait before the second round.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between rounds.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest time one DNS server may take to answer one round.
const PER_SERVER: Duration = Duration::from_secs(5);

/// The event servers to connect to: `cfg.eventservers` when set; otherwise those published
/// under `cfg.domain`, asked of the configured DNS servers until at least one is found.
///
/// Never returns an empty list; without a `domain` and without `eventservers` (which
/// [`Config::validate`] refuses) it waits forever. Cancel-safe: dropping the future stops the
/// search.
pub async fn discover_eventservers(cfg: &Config) -> Vec<SocketAddr> {
    if !cfg.eventservers.is_empty() {
        return cfg.eventservers.clone();
    }
    let Some(domain) = cfg.domain.as_deref() else {
        warn!("no event servers and no domain configured: cannot join");
        return std::future::pending().await;
    };
    let servers = if cfg.dns_servers.is_empty() {
        let from_file = resolv_conf_servers(Path::new("/etc/resolv.conf"));
        info!(servers = ?from_file, "dns_servers not set: using the name servers of /etc/resolv.conf");
        from_file
    } else {
        cfg.dns_servers.clone()
    };
    if servers.is_empty() {
        warn!(%domain, "no DNS server to ask for the event servers (set dns_servers): cannot join");
        return std::future::pending().await;
    }
    let mut backoff = FIRST_BACKOFF;
    let mut round = 1u32;
    loop {
        let mut failures = Vec::new();
        for dns in &servers {
            let found = tokio::time::timeout(
                PER_SERVER,
                onehop_overlay::bootstrap::resolve_eventservers(*dns, domain),
            )
            .await;
            match found {
                Ok(Ok(found)) if !found.is_empty() => {
                    info!(%dns, %domain, eventservers = ?found, round, "event servers found through DNS");
                    return found;
                }
                Ok(Ok(_)) => failures.push(format!("{dns}: no event servers")),
                Ok(Err(e)) => failures.push(format!("{e:#}")),
                Err(_) => failures.push(format!("{dns}: no answer within {PER_SERVER:?}")),
            }
        }
        warn!(
            %domain,
            round,
            retry_in_ms = backoff.as_millis() as u64,
            causes = %failures.join("; "),
            "no event server found through DNS yet"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        round += 1;
    }
}

/// The `nameserver` addresses of a resolv.conf file, with port 53 (none if it is unreadable).
pub fn resolv_conf_servers(path: &Path) -> Vec<SocketAddr> {
    std::fs::read_to_string(path)
        .map(|text| parse_resolv_conf(&text))
        .unwrap_or_default()
}

/// The `nameserver` addresses in resolv.conf text, with port 53. IPv6 zone suffixes
/// (`fe80::1%eth0`) are dropped with their address (the socket API needs a scope id).
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(addr)) => addr.parse::<IpAddr>().ok(),
                _ => None,
            }
        })
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# generated\nsearch example.test\nnameserver 10.0.0.2\n  nameserver\t::1 \
                    \nnameserver fe80::1%eth0\nnameserver not-an-ip\noptions ndots:1\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn configured_eventservers_are_used_as_they_are() {
        let cfg: Config = toml::from_str(
            "ip = \"127.0.0.1\"\neventservers = [\"127.0.0.1:8000\"]\n\
             [tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
        )
        .unwrap();
        assert_eq!(
            discover_eventservers(&cfg).await,
            vec!["127.0.0.1:8000".parse::<SocketAddr>().unwrap()]
        );
    }

    /// A DNS server that does not answer is skipped; the next one's SRV records are used.
    #[tokio::test]
    async fn event_servers_from_the_second_dns_server() {
        use onehop_overlay::status::{Endpoint, Kind, Member, NetworkStatus};
        let es = |name: &str, ip: &str| Member {
            name: name.into(),
            kind: Kind::Eventserver,
            roles: Vec::new(),
            endpoints: vec![Endpoint {
                service: "eventserver".into(),
                addr: SocketAddr::new(ip.parse().unwrap(), 8000),
            }],
            since: 1,
            ip: ip.parse().unwrap(),
        };
        let status = NetworkStatus {
            term: 1,
            version: 1,
            manager: "manager1".into(),
            members: vec![
                es("es1", "127.0.0.11").into(),
                es("es2", "127.0.0.12").into(),
            ],
        };
        let zone = onehop_dns::Zone::from_status(
            &status,
            &onehop_dns::ZoneConfig::new("example.test").unwrap(),
        );
        let server = onehop_dns::DnsServer::with_zone("127.0.0.1:0".parse().unwrap(), zone)
            .await
            .unwrap();
        // A port nobody answers on: bound, then closed.
        let dead = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let cfg: Config = toml::from_str(&format!(
            "ip = \"127.0.0.1\"\ndomain = \"example.test\"\n\
             dns_servers = [\"{dead}\", \"{}\"]\n\
             [tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
            server.local_addr()
        ))
        .unwrap();
        let mut found = tokio::time::timeout(Duration::from_secs(20), discover_eventservers(&cfg))
            .await
            .expect("found within 20 s");
        found.sort();
        assert_eq!(
            found,
            vec![
                "127.0.0.11:8000".parse::<SocketAddr>().unwrap(),
                "127.0.0.12:8000".parse().unwrap()
            ]
        );
    }
}
