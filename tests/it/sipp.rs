//! Running SIPp (the Debian package `sip-tester`) from tests, bounded in calls and time, and
//! reading what it leaves: its exit code, `-trace_stat` (the CSV of counters), `-trace_err`,
//! `-trace_msg` and `-trace_logs`.
//!
//! Every run gets its own files in a [`Workdir`], named after the run. SIPp is given `-timeout`
//! and `-timeout_error`; the test side also kills it when it outlives that by 30 s.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fails the test (with the way out) when `sipp` is not installed.
pub fn require_sipp() {
    let found = Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "`sipp` is not installed: these tests drive the farm with SIPp. Install the Debian \
         package sip-tester (`apt-get install sip-tester`; tests/run does it)"
    );
}

/// A scenario file of `tests/sipp/`.
pub fn scenario(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/sipp")
        .join(name);
    assert!(p.exists(), "no scenario {}", p.display());
    p
}

/// A folder for a test's SIPp files: removed when the test passes, kept (and named on stderr)
/// when it fails.
pub struct Workdir(PathBuf);

impl Workdir {
    /// A new empty folder.
    pub fn new(prefix: &str) -> Workdir {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("tempdir");
        Workdir(dir.keep())
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A SIPp injection file: `SEQUENTIAL`, then one line per row (fields joined by `;`).
    pub fn csv<'a>(&self, name: &str, rows: impl Iterator<Item = &'a str>) -> PathBuf {
        let mut text = String::from("SEQUENTIAL\n");
        for r in rows {
            text.push_str(r);
            text.push('\n');
        }
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write csv");
        p
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("SIPp files of the failed test kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A SIPp run being set up.
pub struct Sipp {
    name: String,
    dir: PathBuf,
    args: Vec<String>,
    remote: Option<SocketAddr>,
    timeout: Duration,
    trace_msg: bool,
}

impl Sipp {
    /// A run of `tests/sipp/SCENARIO` named `name` (its files are `name.*` in `dir`).
    pub fn new(dir: &Workdir, name: &str, scenario_file: &str) -> Sipp {
        let sf = scenario(scenario_file);
        Sipp {
            name: name.to_string(),
            dir: dir.path().to_path_buf(),
            args: vec!["-sf".into(), sf.display().to_string()],
            remote: None,
            timeout: Duration::from_secs(60),
            trace_msg: false,
        }
    }

    fn arg(mut self, flag: &str, value: impl ToString) -> Sipp {
        self.args.push(flag.into());
        self.args.push(value.to_string());
        self
    }

    /// Its own address and port (`-i`, `-p`).
    pub fn local(self, ip: IpAddr, port: u16) -> Sipp {
        self.arg("-i", ip).arg("-p", port)
    }

    /// Where requests go (a UAC's proxy).
    pub fn remote(mut self, addr: SocketAddr) -> Sipp {
        self.remote = Some(addr);
        self
    }

    /// Stop after this many calls (`-m`).
    pub fn calls(self, n: usize) -> Sipp {
        self.arg("-m", n)
    }

    /// At most this many calls at once (`-l`).
    pub fn limit(self, n: usize) -> Sipp {
        self.arg("-l", n)
    }

    /// New calls per second (`-r`).
    pub fn rate(self, n: usize) -> Sipp {
        self.arg("-r", n)
    }

    /// The `[service]` keyword (`-s`).
    pub fn service(self, user: &str) -> Sipp {
        self.arg("-s", user)
    }

    /// A global variable (`-set NAME VALUE`).
    pub fn set(mut self, name: &str, value: &str) -> Sipp {
        self.args
            .extend(["-set".to_string(), name.to_string(), value.to_string()]);
        self
    }

    /// An injection file (`-inf`).
    pub fn inf(self, path: &Path) -> Sipp {
        self.arg("-inf", path.display())
    }

    /// TCP, one connection (`-t t1`), instead of UDP.
    pub fn tcp(self) -> Sipp {
        self.arg("-t", "t1")
    }

    /// SIPp's own global timeout (`-timeout`, an error when it fires).
    pub fn timeout(mut self, t: Duration) -> Sipp {
        self.timeout = t;
        self
    }

    /// Also keep every message sent and received (`-trace_msg`).
    pub fn trace_msg(mut self) -> Sipp {
        self.trace_msg = true;
        self
    }

    fn file(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", self.name))
    }

    /// Starts SIPp.
    pub fn spawn(self) -> Running {
        let mut cmd = Command::new("sipp");
        cmd.args(&self.args)
            .args(["-nostdin", "-timeout_error", "-timeout"])
            .arg(self.timeout.as_secs().max(1).to_string())
            .args(["-trace_stat", "-fd", "1", "-stf"])
            .arg(self.file("stat.csv"))
            .args(["-trace_err", "-error_file"])
            .arg(self.file("errors.log"))
            .args(["-trace_logs", "-log_file"])
            .arg(self.file("logs.log"));
        if self.trace_msg {
            cmd.args(["-trace_msg", "-message_file"])
                .arg(self.file("messages.log"));
        }
        if let Some(r) = self.remote {
            cmd.arg(r.to_string());
        }
        let out = std::fs::File::create(self.file("out")).expect("sipp stdout file");
        let child = cmd
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("stdout"))
            .stderr(out)
            .spawn()
            .expect("start sipp");
        Running {
            child: Some(child),
            deadline: Instant::now() + self.timeout + Duration::from_secs(30),
            started: Instant::now(),
            sipp: self,
        }
    }

    /// Runs SIPp to its end.
    pub fn run(self) -> Outcome {
        self.spawn().wait()
    }
}

/// A SIPp process; killed if dropped while running.
pub struct Running {
    child: Option<Child>,
    deadline: Instant,
    started: Instant,
    sipp: Sipp,
}

impl Running {
    /// Waits for SIPp to end (killing it past its deadline) and reads its files.
    pub fn wait(mut self) -> Outcome {
        let mut child = self.child.take().expect("running");
        let mut killed = false;
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait sipp") {
                break Some(st);
            }
            if Instant::now() > self.deadline {
                let _ = child.kill();
                let _ = child.wait();
                killed = true;
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.started.elapsed();
        let s = &self.sipp;
        let read = |ext: &str| std::fs::read_to_string(s.file(ext)).unwrap_or_default();
        let read_lossy = |ext: &str| {
            std::fs::read(s.file(ext))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        Outcome {
            name: s.name.clone(),
            code: status.and_then(|st| st.code()),
            killed,
            elapsed,
            stats: parse_stat(&read("stat.csv")),
            errors: read_lossy("errors.log"),
            logs: read_lossy("logs.log"),
            messages: parse_messages(&read_lossy("messages.log")),
            out: read_lossy("out"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a SIPp run left.
#[derive(Debug)]
pub struct Outcome {
    /// The run's name.
    pub name: String,
    /// Exit code (0: every call succeeded; 1: some failed; 97, 99, 255, 254: see `man sipp`).
    pub code: Option<i32>,
    /// Killed by the test for running past its deadline.
    pub killed: bool,
    /// From start to end.
    pub elapsed: Duration,
    /// The last line of `-trace_stat`, by column.
    pub stats: BTreeMap<String, String>,
    /// `-trace_err`.
    pub errors: String,
    /// `-trace_logs` (what the scenario's `<log>` actions wrote).
    pub logs: String,
    /// `-trace_msg`, when asked for.
    pub messages: Vec<Traced>,
    /// SIPp's screen output.
    pub out: String,
}

impl Outcome {
    /// A counter of `-trace_stat` (0 when absent).
    pub fn stat(&self, column: &str) -> u64 {
        self.stats
            .get(column)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or(0)
    }

    /// Calls that ended as the scenario says.
    pub fn successful(&self) -> u64 {
        self.stat("SuccessfulCall(C)")
    }

    /// Calls that failed.
    pub fn failed(&self) -> u64 {
        self.stat("FailedCall(C)")
    }

    /// Calls per second over the run (from the counters).
    pub fn rate(&self) -> f64 {
        self.stats
            .get("CallRate(C)")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Mean of the scenario's response time 1 (`rtd`), in ms.
    pub fn response_time_ms(&self) -> f64 {
        self.stats
            .get("ResponseTime1(C)")
            .map(|v| parse_duration_ms(v))
            .unwrap_or(0.0)
    }

    /// The events of `-trace_err` other than benign ones: a retransmitted final response that
    /// reaches a call already ended successfully ("Dead call ... (successful)") is normal SIP
    /// over UDP under load, and SIPp's minor watchdog only says that SIPp itself was not
    /// scheduled for 500 ms (a busy 2-core machine); calls it delayed fail on their own.
    pub fn error_events(&self) -> Vec<String> {
        split_events(&self.errors)
            .into_iter()
            .filter(|e| !(e.contains("Dead call") && e.contains("(successful)")))
            .filter(|e| !e.contains("the minor watchdog timer"))
            .collect()
    }

    /// Asserts that SIPp ended by itself with exit code 0, `calls` successful calls, none
    /// failed, and nothing but benign events in `-trace_err`.
    pub fn assert_all(&self, calls: u64) {
        let tail: String = {
            let lines: Vec<&str> = self.out.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        let events = self.error_events();
        let first: Vec<&String> = events.iter().take(5).collect();
        assert!(
            !self.killed && self.code == Some(0) && self.successful() == calls && self.failed() == 0,
            "SIPp {}: exit {:?}{}, {} successful (expected {calls}), {} failed; first error events: \
             {first:#?}\nscenario log:\n{}\nscreen:\n{tail}",
            self.name,
            self.code,
            if self.killed { " (killed at its deadline)" } else { "" },
            self.successful(),
            self.failed(),
            self.logs,
        );
        assert!(
            events.is_empty(),
            "SIPp {}: {} error events, the first: {first:#?}",
            self.name,
            events.len()
        );
    }

    /// Messages received.
    pub fn received(&self) -> impl Iterator<Item = &Traced> {
        self.messages.iter().filter(|m| !m.sent)
    }

    /// Messages sent.
    pub fn sent(&self) -> impl Iterator<Item = &Traced> {
        self.messages.iter().filter(|m| m.sent)
    }
}

/// `HH:MM:SS:mmmmmm` (SIPp's duration columns) in ms.
fn parse_duration_ms(v: &str) -> f64 {
    let parts: Vec<f64> = v
        .trim()
        .split(':')
        .map(|p| p.parse().unwrap_or(0.0))
        .collect();
    match parts.as_slice() {
        [h, m, s, us] => ((h * 60.0 + m) * 60.0 + s) * 1e3 + us / 1e3,
        _ => 0.0,
    }
}

/// The last row of a `-trace_stat` file, by column name.
fn parse_stat(text: &str) -> BTreeMap<String, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return BTreeMap::new();
    };
    let Some(last) = lines.next_back() else {
        return BTreeMap::new();
    };
    header
        .split(';')
        .zip(last.split(';'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `-trace_err` events: each starts with a date (`YYYY-MM-DD<TAB>`).
fn split_events(text: &str) -> Vec<String> {
    let mut events: Vec<String> = Vec::new();
    let bytes = text.as_bytes();
    let mut start = None;
    let is_date = |i: usize| {
        bytes.len() >= i + 11
            && bytes[i..i + 4].iter().all(u8::is_ascii_digit)
            && bytes[i + 4] == b'-'
            && bytes[i + 7] == b'-'
            && bytes[i + 10] == b'\t'
    };
    for i in 0..bytes.len() {
        if is_date(i) && (i == 0 || !bytes[i - 1].is_ascii_digit()) {
            if let Some(s) = start {
                events.push(text[s..i].to_string());
            }
            start = Some(i);
        }
    }
    if let Some(s) = start {
        events.push(text[s..].to_string());
    }
    events
}

/// One message of `-trace_msg`.
#[derive(Debug, Clone)]
pub struct Traced {
    /// Sent by SIPp (else received).
    pub sent: bool,
    /// The message, CRLFs as LFs.
    pub text: String,
}

fn parse_messages(text: &str) -> Vec<Traced> {
    // Each entry: a line of dashes and a date, "UDP message received [N] bytes :" or
    // "UDP message sent (N bytes):" (TCP alike), an empty line, the message.
    let mut out = Vec::new();
    let text = text.replace("\r\n", "\n");
    for block in text.split("\n----------------------------------------------- ") {
        let mut lines = block.lines();
        let _date = lines.next();
        let Some(what) = lines.next() else { continue };
        let sent = what.contains("message sent");
        if !(sent || what.contains("message received")) {
            continue;
        }
        let body: Vec<&str> = lines.skip_while(|l| l.trim().is_empty()).collect();
        let msg = body.join("\n").trim_end().to_string();
        if !msg.is_empty() {
            out.push(Traced { sent, text: msg });
        }
    }
    out
}

impl Traced {
    /// The start line.
    pub fn start_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&str> {
        let l = self.start_line();
        (!l.starts_with("SIP/")).then(|| l.split(' ').next().unwrap_or(""))
    }

    /// The Request-URI of a request.
    pub fn request_uri(&self) -> Option<&str> {
        self.method()?;
        self.start_line().split(' ').nth(1)
    }

    /// The status of a response.
    pub fn status(&self) -> Option<u16> {
        let l = self.start_line();
        l.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
    }

    /// Every value of a header (long or compact name), comma-separated lists split.
    pub fn header(&self, name: &str, compact: Option<&str>) -> Vec<String> {
        let mut values = Vec::new();
        for line in self.text.lines().skip(1) {
            if line.is_empty() {
                break;
            }
            let Some((n, v)) = line.split_once(':') else {
                continue;
            };
            let n = n.trim();
            if n.eq_ignore_ascii_case(name) || compact.is_some_and(|c| n.eq_ignore_ascii_case(c)) {
                values.extend(split_list(v));
            }
        }
        values
    }

    /// The Call-ID.
    pub fn call_id(&self) -> String {
        self.header("Call-ID", Some("i"))
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    /// The CSeq method.
    pub fn cseq_method(&self) -> String {
        self.header("CSeq", None)
            .into_iter()
            .next()
            .and_then(|v| v.split_whitespace().nth(1).map(String::from))
            .unwrap_or_default()
    }
}

/// Splits a header value on the commas that separate list elements (not those inside quotes
/// or angle brackets).
fn split_list(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut cur) = (false, false, String::new());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                continue;
            }
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

#[test]
fn sipp_files_are_read() {
    let stat = "StartTime;SuccessfulCall(C);FailedCall(C);ResponseTime1(C)\n\
                a;1;0;00:00:00:000000\n\
                b;20;1;00:00:01:500000\n";
    let s = parse_stat(stat);
    assert_eq!(s["SuccessfulCall(C)"], "20");
    assert_eq!(parse_duration_ms(&s["ResponseTime1(C)"]), 1500.0);
    let msgs = "\n----------------------------------------------- 2026-11-22 03:06:54.539506\n\
                UDP message received [540] bytes :\n\nINVITE sip:a@b SIP/2.0\n\
                Via: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1, SIP/2.0/UDP 5.6.7.8;branch=z9hG4bK2\n\
                v: SIP/2.0/UDP 9.9.9.9\nRecord-Route: <sip:1.2.3.4;lr>, <sip:5.6.7.8;lr>\n\
                To: \"a, b\" <sip:a@b>\nCall-ID: x\nCSeq: 1 INVITE\n\nv=0\n\n\
                ----------------------------------------------- 2026-11-22 03:06:54.539581\n\
                UDP message sent (458 bytes):\n\nSIP/2.0 200 OK\nCall-ID: x\n";
    let m = parse_messages(msgs);
    assert_eq!(m.len(), 2);
    assert!(!m[0].sent && m[1].sent);
    assert_eq!(m[0].method(), Some("INVITE"));
    assert_eq!(m[0].request_uri(), Some("sip:a@b"));
    assert_eq!(m[0].header("Via", Some("v")).len(), 3);
    assert_eq!(m[0].header("Record-Route", None).len(), 2);
    assert_eq!(m[0].header("To", Some("t")).len(), 1);
    assert_eq!(m[0].cseq_method(), "INVITE");
    assert_eq!(m[1].status(), Some(200));
    let errs = "The following events occurred:\n2026-11-22\t03:07:21.184759\t1.2: Dead call 1 \
                (successful), received 'SIP/2.0 200 OK\n'2026-11-22\t03:07:22.0\t1.3: Aborting \
                call on unexpected message2026-11-22\t03:07:23.0\t1.4: Overload warning: the \
                minor watchdog timer 500ms has been tripped (592), 119 trips remaining.";
    let o = Outcome {
        name: "x".into(),
        code: Some(0),
        killed: false,
        elapsed: Duration::ZERO,
        stats: s,
        errors: errs.into(),
        logs: String::new(),
        messages: m,
        out: String::new(),
    };
    assert_eq!(o.error_events().len(), 1, "{:?}", o.error_events());
    assert!(o.error_events()[0].contains("Aborting"));
}
