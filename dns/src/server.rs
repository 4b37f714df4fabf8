//! The request handler (zone snapshot, metrics) and the thin socket layer around it.
//!
//! [`DnsHandler`] holds the current [`Zone`] in an `ArcSwapOption`: answering loads it without
//! blocking, a newer network status or a change of the provisioned domains
//! ([`DnsHandler::set_domains`]) swaps a whole new zone in. Every zone it builds shares the
//! handler's [`EnumTable`] ([`DnsHandler::numbers`]), which the ENUM follower changes in
//! place. It implements hickory-server's
//! [`RequestHandler`], so it can be hosted by `hickory_server::Server` (for DoT or DoH later),
//! and offers [`DnsHandler::respond`] for raw datagrams.
//!
//! [`DnsServer`] is what the daemon runs: UDP and TCP on one address, with bounded work. A
//! fixed number of UDP workers share the socket (the kernel's receive buffer is the queue),
//! and at most `tcp_connections` TCP connections are served at once, each closed after
//! `tcp_idle_timeout` of silence. We serve the sockets ourselves rather than through
//! `hickory_server::Server` because that one spawns a task per datagram and per connection
//! with no limit, answers malformed requests before any handler could count them, and logs
//! every query at `info`.

use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hickory_proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_proto::rr::{LowerName, Name, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use onehop_overlay::metrics::{Histogram, Metric, Metrics, FAST_BUCKETS};
use onehop_overlay::per_address::PerAddress;
use onehop_overlay::status::NetworkStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, warn, Instrument};

use crate::answer::{
    answer_bytes_slow, fit, resolve, size_limit, AnswerOptions, EnumResult, Transport,
};
use crate::config::parse_domain;
use crate::enum_data::EnumTable;
use crate::fast;
use crate::udp;
use crate::zone::{Zone, ZoneConfig};

/// Query types counted under their own label; the rest count as `OTHER`.
const QTYPES: [(RecordType, &str); 16] = [
    (RecordType::A, "A"),
    (RecordType::AAAA, "AAAA"),
    (RecordType::NS, "NS"),
    (RecordType::SOA, "SOA"),
    (RecordType::SRV, "SRV"),
    (RecordType::NAPTR, "NAPTR"),
    (RecordType::ANY, "ANY"),
    (RecordType::CNAME, "CNAME"),
    (RecordType::MX, "MX"),
    (RecordType::TXT, "TXT"),
    (RecordType::PTR, "PTR"),
    (RecordType::HTTPS, "HTTPS"),
    (RecordType::SVCB, "SVCB"),
    (RecordType::CAA, "CAA"),
    (RecordType::AXFR, "AXFR"),
    (RecordType::IXFR, "IXFR"),
];

/// Response codes counted under their own label; the rest count as `OTHER`.
const RCODES: [(ResponseCode, &str); 7] = [
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::FormErr, "FORMERR"),
    (ResponseCode::ServFail, "SERVFAIL"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::NotImp, "NOTIMP"),
    (ResponseCode::Refused, "REFUSED"),
    (ResponseCode::BADVERS, "BADVERS"),
];

/// The DNS server's figures, registered once in the daemon's [`Metrics`].
#[derive(Debug, Clone)]
pub struct DnsMetrics {
    /// `dns_queries_total{qtype=..}`, in [`QTYPES`] order, then `OTHER`, then `NONE` (no
    /// single readable question).
    queries: Vec<Metric>,
    /// `dns_responses_total{rcode=..}`, in [`RCODES`] order, then `OTHER`.
    responses: Vec<Metric>,
    truncated: Metric,
    dropped: Metric,
    tcp_refused: Metric,
    tcp_refused_per_ip: Metric,
    serial: Metric,
    stale: Metric,
    members: Metric,
    domains: Metric,
    /// `dns_enum_queries_total{result=..}`, in [`EnumResult::ALL`] order.
    enum_queries: Vec<Metric>,
    enum_numbers: Metric,
    enum_version: Metric,
    enum_listed: Metric,
    /// `dns_answer_seconds`: from a query's arrival to its answer sent.
    pub(crate) answer_time: Histogram,
}

impl DnsMetrics {
    /// Registers the figures in `m`.
    pub fn new(m: &Metrics) -> DnsMetrics {
        const QHELP: &str = "DNS queries received, by query type.";
        const RHELP: &str = "DNS responses sent, by response code.";
        let mut queries: Vec<Metric> = QTYPES
            .iter()
            .map(|(_, l)| m.counter(&format!("dns_queries_total{{qtype=\"{l}\"}}"), QHELP))
            .collect();
        queries.push(m.counter("dns_queries_total{qtype=\"OTHER\"}", QHELP));
        queries.push(m.counter("dns_queries_total{qtype=\"NONE\"}", QHELP));
        let mut responses: Vec<Metric> = RCODES
            .iter()
            .map(|(_, l)| m.counter(&format!("dns_responses_total{{rcode=\"{l}\"}}"), RHELP))
            .collect();
        responses.push(m.counter("dns_responses_total{rcode=\"OTHER\"}", RHELP));
        DnsMetrics {
            queries,
            responses,
            truncated: m.counter("dns_truncated_total", "UDP responses sent with TC set."),
            dropped: m.counter(
                "dns_dropped_total",
                "Datagrams or TCP messages left unanswered: shorter than a header, or responses.",
            ),
            tcp_refused: m.counter(
                "dns_tcp_refused_total",
                "TCP connections closed at accept because tcp_connections were in use.",
            ),
            tcp_refused_per_ip: m.counter(
                "dns_tcp_refused_per_ip_total",
                "TCP connections closed at accept because their address held tcp_connections_per_ip already.",
            ),
            serial: m.gauge(
                "dns_zone_serial",
                "Serial of the zone served (0 before the first status).",
            ),
            stale: m.gauge(
                "dns_stale",
                "1 while no event server is reachable: answers come from the last status held.",
            ),
            members: m.gauge(
                "dns_zone_members",
                "Members in the status the zone was built from.",
            ),
            domains: m.gauge(
                "dns_zone_domains",
                "Domains answered for: the configured one and the provisioned ones.",
            ),
            enum_queries: EnumResult::ALL
                .iter()
                .map(|r| {
                    m.counter(
                        &format!("dns_enum_queries_total{{result=\"{}\"}}", r.label()),
                        "Queries for names under an ENUM suffix, by what was answered: the number's record, NODATA, NXDOMAIN, or SERVFAIL before the numbers were first listed.",
                    )
                })
                .collect(),
            enum_numbers: m.gauge(
                "dns_enum_numbers",
                "Routed E.164 numbers held for ENUM answers.",
            ),
            enum_version: m.gauge(
                "dns_enum_version",
                "The provisioning change version the ENUM numbers are complete up to.",
            ),
            enum_listed: m.gauge(
                "dns_enum_listed",
                "1 once a complete listing of the numbers is held (ENUM names answer SERVFAIL before).",
            ),
            answer_time: m.histogram(
                "dns_answer_seconds",
                "DNS answer time, from a query's arrival to its answer sent. Over UDP the \
                 datagrams of one batch (recvmmsg) are timed once, the batch's time counted \
                 for each answer; over TCP each query is timed from its message read.",
                FAST_BUCKETS,
            ),
        }
    }

    fn record_enum(&self, result: Option<EnumResult>) {
        if let Some(r) = result {
            if let Some(i) = EnumResult::ALL.iter().position(|x| *x == r) {
                self.enum_queries[i].inc();
            }
        }
    }

    fn record(&self, qtype: Option<RecordType>, rcode: ResponseCode, truncated: bool) {
        let q = match qtype {
            Some(t) => QTYPES
                .iter()
                .position(|(x, _)| *x == t)
                .unwrap_or(QTYPES.len()),
            None => QTYPES.len() + 1,
        };
        self.queries[q].inc();
        let r = RCODES
            .iter()
            .position(|(x, _)| *x == rcode)
            .unwrap_or(RCODES.len());
        self.responses[r].inc();
        if truncated {
            self.truncated.inc();
        }
    }
}

/// The request handler: the current zone, how to answer, and the figures.
#[derive(Debug)]
pub struct DnsHandler {
    zone: ArcSwapOption<Zone>,
    zone_config: ZoneConfig,
    opts: AnswerOptions,
    metrics: DnsMetrics,
    /// The routed numbers, shared by every zone built here.
    numbers: Arc<EnumTable>,
    /// What the zone is built from; held under the lock while a zone is built and swapped,
    /// so a status and a domain change never undo each other. Never taken when answering.
    inputs: Mutex<Inputs>,
}

/// The inputs of the zone served.
#[derive(Debug, Default)]
struct Inputs {
    status: Option<NetworkStatus>,
    /// The provisioned domains, parsed, sorted, without the configured domain.
    domains: Vec<Name>,
}

impl DnsHandler {
    /// The histogram of answer times (`dns_answer_seconds`), for the socket loops and
    /// benchmarks.
    pub fn answer_time(&self) -> &Histogram {
        &self.metrics.answer_time
    }

    /// A handler with no zone yet (it answers SERVFAIL until one is set).
    pub fn new(zone_config: ZoneConfig, opts: AnswerOptions, metrics: &Metrics) -> DnsHandler {
        DnsHandler {
            zone: ArcSwapOption::empty(),
            zone_config,
            opts,
            metrics: DnsMetrics::new(metrics),
            numbers: Arc::new(EnumTable::new()),
            inputs: Mutex::new(Inputs::default()),
        }
    }

    /// The routed numbers answered under the ENUM suffixes: every zone this handler builds
    /// answers from this table, and changes to it are answered at once (no new zone).
    pub fn numbers(&self) -> &Arc<EnumTable> {
        &self.numbers
    }

    /// Updates the ENUM figures (numbers held, version, listed) from the table.
    pub fn enum_changed(&self) {
        self.metrics.enum_numbers.set(self.numbers.len() as i64);
        self.metrics
            .enum_version
            .set(i64::try_from(self.numbers.version()).unwrap_or(i64::MAX));
        self.metrics
            .enum_listed
            .set(i64::from(self.numbers.is_listed()));
    }

    fn build(&self, status: &NetworkStatus, domains: &[Name]) -> Zone {
        Zone::build(status, &self.zone_config, domains).with_numbers(self.numbers.clone())
    }

    /// The zone served now, if any.
    pub fn zone(&self) -> Option<Arc<Zone>> {
        self.zone.load_full()
    }

    /// The zone configuration statuses are turned into zones with.
    pub fn zone_config(&self) -> &ZoneConfig {
        &self.zone_config
    }

    /// Serves `zone` from now on (whatever was held before).
    pub fn set_zone(&self, zone: Zone) {
        self.metrics.serial.set(zone.serial() as i64);
        self.metrics.members.set(zone.member_count() as i64);
        self.metrics.domains.set(zone.apexes().count() as i64);
        self.zone.store(Some(Arc::new(zone)));
    }

    /// Builds and serves the zone of `status` (with the provisioned domains held) if it
    /// supersedes the one held; returns whether it did.
    pub fn apply_status(&self, status: &NetworkStatus) -> bool {
        let mut inputs = self.inputs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = self.zone.load().as_ref() {
            if (status.term, status.version) <= held.status_key() {
                return false;
            }
        }
        inputs.status = Some(status.clone());
        self.set_zone(self.build(status, &inputs.domains));
        true
    }

    /// Answers for the provisioned `domains` (besides the configured domain) from now on;
    /// the zone is rebuilt from the status held, if any. Names that are not valid domains
    /// are left out (and logged). Returns whether the set changed.
    pub fn set_domains(&self, domains: &[String]) -> bool {
        let own = LowerName::new(&self.zone_config.domain);
        let mut parsed: Vec<Name> = domains
            .iter()
            .filter_map(|d| match parse_domain(d) {
                Ok(n) => Some(n),
                Err(e) => {
                    warn!(domain = %d, cause = %e, "provisioned domain left out of DNS");
                    None
                }
            })
            .filter(|n| LowerName::new(n) != own)
            .collect();
        parsed.sort();
        parsed.dedup();
        let mut inputs = self.inputs.lock().unwrap_or_else(|p| p.into_inner());
        if inputs.domains == parsed {
            return false;
        }
        inputs.domains = parsed;
        if let Some(status) = &inputs.status {
            self.set_zone(self.build(status, &inputs.domains));
        }
        true
    }

    /// Records whether the answers come from a status that may be out of date.
    pub fn set_stale(&self, stale: bool) {
        self.metrics.stale.set(stale as i64);
    }

    /// Answers one raw request; `None` when no response may be sent.
    pub fn respond(&self, raw: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.respond_into(raw, transport, &mut out).then_some(out)
    }

    /// Answers one raw request into `out` (whatever it held is replaced): from the zone's
    /// pre-encoded answers when it can, else by the slow path. Returns false when no response
    /// may be sent.
    pub fn respond_into(&self, raw: &[u8], transport: Transport, out: &mut Vec<u8>) -> bool {
        let zone = self.zone.load();
        // Belt and braces: a panic deep in parsing or encoding must cost one answer, not a
        // worker.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut rng = rand::thread_rng();
            if let Some(z) = zone.as_deref() {
                if let Some(f) = fast::answer(z, raw, transport, &self.opts, &mut rng, out) {
                    return Some((Some(f.qtype), f.rcode, false, f.enum_result));
                }
            }
            answer_bytes_slow(zone.as_deref(), raw, transport, &self.opts, &mut rng).map(|o| {
                *out = o.bytes;
                (o.qtype, o.rcode, o.truncated, o.enum_result)
            })
        }))
        .unwrap_or_else(|_| {
            error!(len = raw.len(), "answering panicked: request dropped");
            None
        });
        match outcome {
            Some((qtype, rcode, truncated, enum_result)) => {
                self.metrics.record(qtype, rcode, truncated);
                self.metrics.record_enum(enum_result);
                true
            }
            None => {
                self.metrics.dropped.inc();
                false
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let transport = match request.protocol() {
            Protocol::Udp => Transport::Udp,
            _ => Transport::Tcp,
        };
        let zone = self.zone.load_full();
        let mut reply = {
            let mut rng = rand::thread_rng();
            resolve(zone.as_deref(), request, &self.opts, &mut rng)
        };
        let limit = size_limit(request, transport, &self.opts);
        if fit(request, &mut reply, limit).is_err() {
            reply.answers.clear();
            reply.authorities.clear();
            reply.additionals.clear();
            reply.metadata.response_code = ResponseCode::ServFail;
        }
        self.metrics.record(
            reply.qtype,
            reply.metadata.response_code,
            reply.metadata.truncation,
        );
        self.metrics.record_enum(reply.enum_result);
        let queries = reply.questions(&request.queries);
        let response = MessageResponseBuilder::new(queries, reply.edns.as_ref()).build(
            reply.metadata,
            reply.answers.iter().map(|r| &**r),
            reply.authorities.iter().copied(),
            std::iter::empty(),
            reply.additionals.iter().copied(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                debug!(cause = %e, "cannot send DNS response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// Default [`Limits::tcp_per_address`]: no limit per address, as authoritative servers
/// usually have none (a resolver farm behind one address falling back to TCP after truncated
/// answers may open many connections at once); an operator sets one where a single client
/// holding every connection is the greater risk.
pub const DEFAULT_TCP_PER_ADDRESS: usize = 0;

/// Bounds on the work the sockets take on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// UDP sockets bound to the address with `SO_REUSEPORT` (the kernel spreads the
    /// clients over them), each served by its own task in batches; one per core by default.
    pub udp_workers: usize,
    /// Most TCP connections served at once.
    pub tcp_connections: usize,
    /// Most TCP connections served at once from one client address (0: no limit), so that
    /// one client cannot take them all.
    pub tcp_per_address: usize,
    /// A TCP connection silent (or stalled mid-message) this long is closed.
    pub tcp_idle_timeout: Duration,
    /// Receive and send buffer asked for the UDP socket (`SO_RCVBUF`/`SO_SNDBUF`; the kernel
    /// caps it at `net.core.rmem_max`/`wmem_max`); 0 keeps the system default. The receive
    /// buffer is the UDP queue: the default (about 200 KiB, some 300 small datagrams) drops
    /// queries under bursts that a few MiB absorb.
    pub udp_buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Limits {
            udp_workers: cores.clamp(1, 64),
            tcp_connections: 256,
            tcp_per_address: DEFAULT_TCP_PER_ADDRESS,
            tcp_idle_timeout: Duration::from_secs(5),
            udp_buffer_bytes: 4 << 20,
        }
    }
}

/// UDP and TCP DNS service on one address. Dropping it stops the service.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    handler: Arc<DnsHandler>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr` (port 0: a free port, the same for both) and serves.
    pub async fn start(
        addr: SocketAddr,
        handler: Arc<DnsHandler>,
        limits: Limits,
    ) -> io::Result<DnsServer> {
        let (udp, tcp) = bind_pair(addr).await?;
        let addr = udp.local_addr()?;
        let mut sockets = vec![udp];
        for _ in 1..limits.udp_workers.max(1) {
            sockets.push(udp::bind_reuseport(addr)?);
        }
        let mut tasks = Vec::new();
        for socket in sockets {
            let socket = UdpSocket::from_std(socket)?;
            if limits.udp_buffer_bytes > 0 {
                onehop_overlay::net::size_udp_buffers(&socket, limits.udp_buffer_bytes);
            }
            tasks.push(tokio::spawn(udp::serve(socket, handler.clone())));
        }
        tasks.push(tokio::spawn(tcp_accept(tcp, handler.clone(), limits)));
        Ok(DnsServer {
            addr,
            handler,
            tasks,
        })
    }

    /// Test hook: serves `zone` on `addr` with default options and limits, no event server
    /// needed. Swap other zones in through [`DnsServer::handler`].
    pub async fn with_zone(addr: SocketAddr, zone: Zone) -> io::Result<DnsServer> {
        let cfg = ZoneConfig::new(&zone.origin().to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let handler = Arc::new(DnsHandler::new(
            cfg,
            AnswerOptions::default(),
            &Metrics::default(),
        ));
        handler.set_zone(zone);
        DnsServer::start(addr, handler, Limits::default()).await
    }

    /// Where it answers (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The handler: swap zones, read the zone.
    pub fn handler(&self) -> &Arc<DnsHandler> {
        &self.handler
    }

    /// Stops serving.
    pub fn shutdown(self) {
        drop(self)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The first UDP socket (with `SO_REUSEPORT`, so the others can join it) and the TCP
/// listener, on one port.
async fn bind_pair(addr: SocketAddr) -> io::Result<(std::net::UdpSocket, TcpListener)> {
    let mut attempts = 0;
    loop {
        let udp = udp::bind_reuseport(addr)?;
        let bound = udp.local_addr()?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // With port 0 the UDP port may be taken on TCP: try another. This also keeps us
            // off a port another server of ours holds: with `SO_REUSEPORT` the kernel may
            // hand out a UDP port that another such socket of the same user is bound to, but
            // that server holds the TCP port too.
            Err(e) if addr.port() == 0 && attempts < 20 => {
                attempts += 1;
                debug!(cause = %e, port = bound.port(), "TCP port taken, trying another");
            }
            Err(e) => return Err(e),
        }
    }
}

async fn tcp_accept(listener: TcpListener, handler: Arc<DnsHandler>, limits: Limits) {
    let permits = Arc::new(Semaphore::new(limits.tcp_connections.max(1)));
    let per_address = PerAddress::new();
    let mut conns = JoinSet::new();
    let mut warned = false;
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: back off a little, do not spin.
                warn!(cause = %e, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = per_address.take(peer.ip(), limits.tcp_per_address) else {
            handler.metrics.tcp_refused_per_ip.inc();
            debug!(%peer, limit = limits.tcp_per_address, "DNS TCP connection closed at accept: its address holds tcp_connections_per_ip already");
            drop(stream);
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            handler.metrics.tcp_refused.inc();
            if !warned {
                warn!(
                    %peer,
                    limit = limits.tcp_connections,
                    "DNS TCP connections at their limit: closing new ones"
                );
                warned = true;
            }
            drop(stream);
            continue;
        };
        warned = false;
        let handler = handler.clone();
        let idle = limits.tcp_idle_timeout;
        conns.spawn(
            async move {
                let _held = (permit, slot);
                if let Err(e) = tcp_conn(stream, &handler, idle).await {
                    debug!(cause = %e, "DNS TCP connection ended");
                }
            }
            .instrument(tracing::info_span!("dns_tcp", %peer)),
        );
    }
}

async fn tcp_conn(mut stream: TcpStream, handler: &DnsHandler, idle: Duration) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "idle");
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(timed_out()),
        }
        let len = u16::from_be_bytes(len) as usize;
        let mut msg = vec![0u8; len];
        tokio::time::timeout(idle, stream.read_exact(&mut msg))
            .await
            .map_err(|_| timed_out())??;
        let arrived = std::time::Instant::now();
        let Some(response) = handler.respond(&msg, Transport::Tcp) else {
            // Nothing sensible can follow a message we cannot answer.
            return Ok(());
        };
        let mut out = Vec::with_capacity(response.len() + 2);
        out.extend_from_slice(&(response.len() as u16).to_be_bytes());
        out.extend_from_slice(&response);
        tokio::time::timeout(idle, stream.write_all(&out))
            .await
            .map_err(|_| timed_out())??;
        handler.metrics.answer_time.observe(arrived.elapsed());
    }
}
