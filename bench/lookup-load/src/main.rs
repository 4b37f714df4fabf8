//! lookup-load: a load generator for the onehop lookup interface (the SIP Thor line protocol on
//! TCP 9500: `lookup ROLE for KEY\r\n`, answered in order by an IP address line).
//!
//! It opens `--connections` connections and on each keeps `--depth` requests in flight: it
//! writes a batch of `depth` pipelined requests in one write, reads until `depth` answer lines
//! have come back, checks that every answer is an IP address, and starts the next batch. This
//! is what `redis-benchmark -P DEPTH` does for Redis. Requests are pre-built from `--keys`
//! distinct AOR keys (`user00000000@example.test` ...), each connection sweeping them from its
//! own offset, so building requests costs nothing during the run.
//!
//! After `--warmup` seconds it counts, for `--duration` seconds, the answers received and the
//! round trip of every batch (from the write of its first request to the arrival of its last
//! answer), then prints requests per second and the batches' round-trip percentiles. The last
//! line, starting with `RESULT`, is `key=value` pairs for scripts.
//!
//! It refuses targets that are not loopback addresses: it is for benchmarking a farm on this
//! machine, not for loading someone else's server.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USAGE: &str = "\
usage: lookup-load [options]
  --addr IP:PORT       the lookup interface (loopback only)     [127.0.0.1:9500]
  --connections N      connections, 1..=1024                    [1]
  --depth N            requests in flight per connection, 1..=65536 [1]
  --duration SECS      measured seconds, at most 300            [5]
  --warmup SECS        unmeasured seconds first, at most 60     [1]
  --keys N             distinct AOR keys, 1..=10000000          [100000]
  --role ROLE          the role looked up                       [registrar]
  --sip-uris           send keys as sip:userN@Example.test:5060 (canonicalised by the server)
  --threads N          client runtime threads, 1..=64           [1]";

#[derive(Debug, Clone)]
struct Opts {
    addr: SocketAddr,
    connections: usize,
    depth: usize,
    duration: Duration,
    warmup: Duration,
    keys: usize,
    role: String,
    sip_uris: bool,
    threads: usize,
}

fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        addr: "127.0.0.1:9500".parse().unwrap(),
        connections: 1,
        depth: 1,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        keys: 100_000,
        role: "registrar".into(),
        sip_uris: false,
        threads: 1,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--sip-uris" {
            o.sip_uris = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .as_str();
        let int = |lo: usize, hi: usize| -> Result<usize, String> {
            match value.parse::<usize>() {
                Ok(n) if (lo..=hi).contains(&n) => Ok(n),
                _ => Err(format!(
                    "{flag}: expected an integer in {lo}..={hi}, got {value:?}"
                )),
            }
        };
        let secs = |hi: f64| -> Result<Duration, String> {
            match value.parse::<f64>() {
                Ok(s) if (0.0..=hi).contains(&s) => Ok(Duration::from_secs_f64(s)),
                _ => Err(format!(
                    "{flag}: expected seconds in 0..={hi}, got {value:?}"
                )),
            }
        };
        match flag.as_str() {
            "--addr" => {
                o.addr = value
                    .parse()
                    .map_err(|_| format!("--addr: expected IP:PORT, got {value:?}"))?
            }
            "--connections" => o.connections = int(1, 1024)?,
            "--depth" => o.depth = int(1, 65_536)?,
            "--duration" => o.duration = secs(300.0)?,
            "--warmup" => o.warmup = secs(60.0)?,
            "--keys" => o.keys = int(1, 10_000_000)?,
            "--threads" => o.threads = int(1, 64)?,
            "--role" => {
                if value.is_empty() || value.contains([' ', '\r', '\n']) {
                    return Err(format!("--role: not a role name: {value:?}"));
                }
                o.role = value.to_string()
            }
            _ => return Err(format!("unknown option {flag:?}")),
        }
    }
    if o.duration.is_zero() {
        return Err("--duration must be more than 0".into());
    }
    if !o.addr.ip().is_loopback() {
        return Err(format!(
            "refusing {}: lookup-load only loads servers on a loopback address",
            o.addr
        ));
    }
    Ok(o)
}

/// Every request, pre-built: `keys` requests followed by the first `depth` again, so that any
/// `depth` consecutive requests starting below `keys` are one contiguous slice.
struct Requests {
    bytes: Vec<u8>,
    /// `offsets[i]` is where request `i` starts; one more entry for the end.
    offsets: Vec<usize>,
    keys: usize,
}

impl Requests {
    fn build(role: &str, keys: usize, depth: usize, sip_uris: bool) -> Requests {
        let total = keys + depth;
        let mut bytes = Vec::with_capacity(total * (role.len() + 48));
        let mut offsets = Vec::with_capacity(total + 1);
        for i in 0..total {
            offsets.push(bytes.len());
            let k = i % keys;
            let line = if sip_uris {
                format!("lookup {role} for sip:user{k:08}@Example.test:5060\r\n")
            } else {
                format!("lookup {role} for user{k:08}@example.test\r\n")
            };
            bytes.extend_from_slice(line.as_bytes());
        }
        offsets.push(bytes.len());
        Requests {
            bytes,
            offsets,
            keys,
        }
    }

    /// The `depth` requests starting at request `start` (< keys).
    fn batch(&self, start: usize, depth: usize) -> &[u8] {
        &self.bytes[self.offsets[start]..self.offsets[start + depth]]
    }
}

#[derive(Default)]
struct ConnResult {
    answered: u64,
    errors: u64,
    first_error: Option<String>,
    /// Round trip of every measured batch, in nanoseconds.
    batches_ns: Vec<u64>,
    /// When the last measured batch completed.
    last_done: Option<Instant>,
}

struct Window {
    /// Batches written from here on are measured.
    measure_from: Instant,
    /// No batch is started from here on.
    stop_at: Instant,
    /// A connection still waiting for answers here gives up.
    give_up_at: Instant,
}

async fn run_connection(
    id: usize,
    opts: Arc<Opts>,
    reqs: Arc<Requests>,
    window: Arc<Window>,
) -> Result<ConnResult, String> {
    let depth = opts.depth;
    let mut sock = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(opts.addr))
        .await
        .map_err(|_| format!("connection {id}: connect to {} timed out", opts.addr))?
        .map_err(|e| format!("connection {id}: connect to {}: {e}", opts.addr))?;
    sock.set_nodelay(true)
        .map_err(|e| format!("connection {id}: {e}"))?;
    let mut res = ConnResult::default();
    let mut rbuf = vec![0u8; 256 * 1024];
    let mut filled = 0usize;
    // Each connection sweeps the keys from its own offset.
    let mut next = id * (reqs.keys / opts.connections) % reqs.keys;
    loop {
        let started = Instant::now();
        if started >= window.stop_at {
            break;
        }
        let batch = reqs.batch(next, depth);
        next = (next + depth) % reqs.keys;
        sock.write_all(batch)
            .await
            .map_err(|e| format!("connection {id}: write: {e}"))?;
        let mut got = 0usize;
        let mut errors = 0u64;
        while got < depth {
            if filled == rbuf.len() {
                return Err(format!(
                    "connection {id}: an answer line is longer than 256 KiB"
                ));
            }
            let n =
                tokio::time::timeout_at(window.give_up_at.into(), sock.read(&mut rbuf[filled..]))
                    .await
                    .map_err(|_| format!("connection {id}: no answer before the deadline"))?
                    .map_err(|e| format!("connection {id}: read: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "connection {id}: the server closed the connection with {} answers missing",
                    depth - got
                ));
            }
            filled += n;
            let mut start = 0;
            while let Some(nl) = rbuf[start..filled].iter().position(|&b| b == b'\n') {
                let line = &rbuf[start..start + nl];
                start += nl + 1;
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                got += 1;
                let ok = std::str::from_utf8(line)
                    .ok()
                    .and_then(|s| s.parse::<IpAddr>().ok())
                    .is_some();
                if !ok {
                    errors += 1;
                    if res.first_error.is_none() {
                        res.first_error = Some(String::from_utf8_lossy(line).into_owned());
                    }
                }
            }
            rbuf.copy_within(start..filled, 0);
            filled -= start;
        }
        if got > depth {
            return Err(format!(
                "connection {id}: {} more answers than requests",
                got - depth
            ));
        }
        let done = Instant::now();
        if started >= window.measure_from {
            res.answered += depth as u64;
            res.errors += errors;
            res.batches_ns.push((done - started).as_nanos() as u64);
            res.last_done = Some(done);
        }
    }
    Ok(res)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

async fn run(opts: Opts) -> Result<(), String> {
    let opts = Arc::new(opts);
    let reqs = Arc::new(Requests::build(
        &opts.role,
        opts.keys,
        opts.depth,
        opts.sip_uris,
    ));
    let now = Instant::now();
    let measure_from = now + opts.warmup;
    let stop_at = measure_from + opts.duration;
    let window = Arc::new(Window {
        measure_from,
        stop_at,
        give_up_at: stop_at + Duration::from_secs(10),
    });
    let tasks: Vec<_> = (0..opts.connections)
        .map(|id| {
            tokio::spawn(run_connection(
                id,
                opts.clone(),
                reqs.clone(),
                window.clone(),
            ))
        })
        .collect();
    let mut total = ConnResult::default();
    let mut failures = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => {
                total.answered += r.answered;
                total.errors += r.errors;
                if total.first_error.is_none() {
                    total.first_error = r.first_error;
                }
                total.batches_ns.extend(r.batches_ns);
                total.last_done = total.last_done.max(r.last_done);
            }
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(format!("connection task failed: {e}")),
        }
    }
    if !failures.is_empty() {
        return Err(failures.join("\n"));
    }
    let seconds = total
        .last_done
        .map(|d| (d - measure_from).as_secs_f64())
        .unwrap_or(f64::NAN);
    let qps = total.answered as f64 / seconds;
    let mut lat = total.batches_ns;
    lat.sort_unstable();
    let us = |ns: f64| ns / 1000.0;
    let (p50, p99, max) = (
        us(percentile(&lat, 50.0)),
        us(percentile(&lat, 99.0)),
        us(lat.last().copied().unwrap_or(0) as f64),
    );
    println!(
        "lookup-load {} connections={} depth={} keys={}: {} answers in {:.2} s = {:.0} lookups/s, {} errors; batch round trip p50 {:.1} us, p99 {:.1} us, max {:.1} us ({} batches)",
        opts.addr,
        opts.connections,
        opts.depth,
        opts.keys,
        total.answered,
        seconds,
        qps,
        total.errors,
        p50,
        p99,
        max,
        lat.len()
    );
    if let Some(e) = &total.first_error {
        println!("first answer that is not an IP address: {e:?}");
    }
    println!(
        "RESULT connections={} depth={} answered={} errors={} seconds={:.3} qps={:.0} p50_us={:.1} p99_us={:.1} max_us={:.1}",
        opts.connections, opts.depth, total.answered, total.errors, seconds, qps, p50, p99, max
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            if e.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("lookup-load: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = if opts.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lookup-load: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lookup-load: {e}");
            ExitCode::FAILURE
        }
    }
}
