//! The SIP message path: the parser and typed headers, the TCP stream framer, and the proxy
//! engine fed received datagrams (digest authentication included).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use onehop_sip::digest::{
    credentials_in_headers, verify_at_owner, Challenge, Credentials, Ha1, NonceKey, NonceKeys,
    RecentNonces,
};
use onehop_sip::engine::{
    AuthCheck, AuthMode, DialPlan, Engine, EngineConfig, Env, Hop, Input, NumberRoute, Output,
};
use onehop_sip::proxy::{validate_request, LocalAddrs};
use onehop_sip::registrar::{Bindings, Transport};
use onehop_sip::{
    parse_with, CSeq, Contact, Frame, Limits, Message, NameAddr, StreamFramer, Uri, Via,
};

use crate::Cursor;

/// Limits under which anything our own code writes must parse again (no size cap).
fn roomy() -> Limits {
    Limits {
        max_message: usize::MAX,
        max_headers: usize::MAX,
        require_max_forwards: false,
    }
}

/// Reads every typed view of a parsed message (what the proxy core relies on).
fn exercise(msg: &Message) {
    let h = msg.headers();
    let _ = h
        .via_top()
        .map(|v| (v.branch(), v.received(), v.rport(), v.response_target()));
    for v in h.vias() {
        let _ = (
            v.sent_by(),
            v.is_reliable(),
            v.maddr(),
            v.has_rfc3261_branch(),
        );
    }
    for addr in [h.from(), h.to()].into_iter().flatten() {
        let _ = (
            addr.display(),
            addr.tag(),
            addr.canonical_aor(),
            addr.uri().canonical_aor(),
        );
    }
    let _ = (
        h.call_id(),
        h.cseq(),
        h.expires(),
        h.min_expires(),
        h.max_forwards(),
    );
    let _ = (h.content_length(), h.content_type());
    if let Ok(contacts) = h.contacts_checked() {
        for c in contacts {
            if let Contact::Addr(a) = c {
                let _ = (a.expires(), a.q(), a.uri().canonical_aor());
            }
        }
    }
    let _ = h.routes().count() + h.record_routes().count();
    for name in ["Authorization", "Proxy-Authorization"] {
        let _ = credentials_in_headers(h, name, "example.test");
    }
    if let Message::Request(req) = msg {
        let local = LocalAddrs::new(&["192.0.2.1:5060".parse().unwrap()], &["example.test"]);
        let _ = validate_request(req, &local);
        let _ = (
            req.to_aor(),
            req.uri.canonical_aor(),
            req.uri.transport_param(),
        );
    }
}

/// The parser on one datagram. Properties: a message that parses is written back (as the
/// proxy forwards it) into bytes that parse again to the same message, and writing that
/// again gives the same bytes; a rejected request's answer can be built and written.
pub fn sip_parse(data: &[u8]) {
    let limits = Limits::default();
    match parse_with(data, &limits) {
        Ok(msg) => {
            exercise(&msg);
            let first = msg.to_bytes();
            let again = match parse_with(&first, &roomy()) {
                Ok(m) => m,
                Err(e) => panic!("a parsed message written back does not parse: {e}"),
            };
            assert_eq!(again.body(), msg.body(), "the body changed");
            let fields = |m: &Message| -> Vec<(String, String)> {
                m.headers()
                    .iter()
                    .filter(|h| !h.is("Content-Length"))
                    .map(|h| (h.name().to_owned(), h.value().to_owned()))
                    .collect()
            };
            assert_eq!(fields(&again), fields(&msg), "the header fields changed");
            match (&msg, &again) {
                (Message::Request(a), Message::Request(b)) => {
                    assert_eq!((&a.method, a.uri.as_str()), (&b.method, b.uri.as_str()));
                }
                (Message::Response(a), Message::Response(b)) => {
                    assert_eq!((a.status, &a.reason), (b.status, &b.reason));
                }
                _ => panic!("a request became a response or back"),
            }
            assert_eq!(again.to_bytes(), first, "writing is not stable");
        }
        Err(e) => {
            let _ = e.status();
            if let Some(resp) = e.response() {
                let _ = resp.to_bytes();
            }
        }
    }
}

/// The typed header parsers and the digest header parsers on one value. Properties: a URI
/// is equivalent to itself and parses again from its text; credentials and challenges that
/// parse are written back into values that parse to the same thing.
pub fn sip_headers(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = Via::parse(text) {
        let _ = (v.branch(), v.rport(), v.response_target(), v.sent_by());
    }
    if let Ok(a) = NameAddr::parse(text) {
        let _ = (a.display(), a.tag(), a.expires(), a.q(), a.canonical_aor());
        let u = a.uri();
        assert!(u.equivalent(&u));
    }
    let _ = Contact::parse(text);
    if let Ok(c) = CSeq::parse(text) {
        let _ = c.method.as_str();
    }
    if let Ok(u) = Uri::parse(text) {
        assert!(u.equivalent(&u), "{text:?} is not equivalent to itself");
        let back = Uri::parse(u.as_str()).expect("a URI's own text parses");
        assert!(back.equivalent(&u));
        let _ = (u.canonical_aor(), u.port_or_default(), u.maddr_or_host());
        let _ = onehop_sip::engine::uri_addr(&u);
        for p in u.params().iter() {
            let _ = p;
        }
    }
    if let Ok(c) = Credentials::parse(text) {
        let written = c.to_string();
        let back = Credentials::parse(&written)
            .unwrap_or_else(|e| panic!("written credentials {written:?} do not parse: {e}"));
        assert_eq!(back, c, "{written}");
    }
    if let Ok(c) = Challenge::parse(text) {
        let written = c.to_string();
        let back = Challenge::parse(&written)
            .unwrap_or_else(|e| panic!("a written challenge {written:?} does not parse: {e}"));
        assert_eq!(back, c, "{written}");
    }
    let _ = onehop_sip::typed::parse_delta_seconds(text);
    if let Some(q) = onehop_sip::typed::parse_qvalue(text) {
        assert_eq!(
            onehop_sip::typed::parse_qvalue(&onehop_sip::typed::format_qvalue(q)),
            Some(q)
        );
    }
    let _ = onehop_sip::params::split_commas(text).count();
    let _ = onehop_sip::params::unquote(text);
}

/// The cap the framer target runs with: small, so that oversized messages are common.
const FRAMER_MAX: usize = 2048;

/// Everything a framer gives for a stream cut into reads of the given sizes: the frames and
/// the error that ended the stream, if any. Checks the bounds on the way.
fn frames(stream: &[u8], cuts: &mut dyn FnMut() -> usize) -> (Vec<Frame>, Option<String>) {
    let limits = Limits {
        max_message: FRAMER_MAX,
        ..Limits::default()
    };
    let mut f = StreamFramer::new(&limits).answer_oversized();
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let n = cuts().clamp(1, FRAMER_MAX).min(stream.len() - at);
        if let Err(e) = f.feed(&stream[at..at + n]) {
            return (out, Some(e.to_string()));
        }
        at += n;
        assert!(f.buffered() <= 2 * FRAMER_MAX, "buffered {}", f.buffered());
        loop {
            match f.next_frame() {
                Ok(Some(frame)) => {
                    if let Frame::Oversized(b) = &frame {
                        assert_eq!(b.len(), FRAMER_MAX + 1);
                    }
                    if let Frame::Message(b) = &frame {
                        assert!(b.len() <= FRAMER_MAX);
                    }
                    out.push(frame)
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }
    // The work stays linear in the bytes fed, however they are cut.
    let n = stream.len() as u64;
    assert!(
        f.examined() <= 4 * n + 16,
        "examined {} for {n}",
        f.examined()
    );
    (out, None)
}

/// The TCP stream framer fed one stream in arbitrary cuts. Properties: the frames (and the
/// error ending the stream) do not depend on how the stream is cut into reads; the buffer
/// stays under twice the cap; the work is linear.
pub fn sip_framer(data: &[u8]) {
    let mut c = Cursor::new(data);
    let seed = c.u16().unwrap_or(0) as u32;
    let stream = c.rest();
    let whole = frames(stream, &mut || FRAMER_MAX);
    let mut state = seed | 1;
    let mut cut = || {
        // xorshift: read sizes from 1 to 64 bytes, now and then a large one.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        if state % 16 == 0 {
            (state as usize >> 4) % FRAMER_MAX
        } else {
            (state as usize >> 4) % 64 + 1
        }
    };
    let cut_up = frames(stream, &mut cut);
    assert_eq!(whole, cut_up, "the frames depend on the cuts");
    let dripped = frames(stream, &mut || 1);
    assert_eq!(
        whole, dripped,
        "the frames depend on the cuts (one byte at a time)"
    );
}

/// The node under test in the engine target, its domain and where it listens.
const ME: &str = "node1";
const DOMAIN: &str = "example.test";
/// Every subscriber's password in the engine target (the fuzzer can answer challenges only
/// through the harness, which knows it).
const PASSWORD: &str = "correct horse";
/// The wall clock of the engine target at its start.
const T0_MS: u64 = 1_700_000_000_000;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

/// The world as the engine target's engine sees it: node2 live at 192.0.2.2, TCP flow 1
/// open here.
struct FuzzEnv;

impl Env for FuzzEnv {
    fn node_at(&self, addr: SocketAddr) -> Option<String> {
        (addr.ip() == sa("192.0.2.2:5060").ip()).then(|| "node2".to_string())
    }
    fn node_is_live(&self, name: &str) -> bool {
        name == "node2"
    }
    fn has_flow(&self, conn: u64) -> bool {
        conn == 1
    }
}

/// What the engine target's registrar holds: bindings and nonce counts per AOR.
#[derive(Default)]
struct Registrar {
    bindings: HashMap<String, Bindings>,
    counts: HashMap<String, RecentNonces>,
}

impl Registrar {
    fn check(&mut self, aor: &str, check: &AuthCheck, now_ms: u64) -> Result<(), bool> {
        let counts = self.counts.entry(aor.to_string()).or_default();
        verify_at_owner(
            &check.credentials,
            &check.method,
            |alg| {
                Some(Ha1::compute(
                    alg,
                    &check.credentials.username,
                    DOMAIN,
                    PASSWORD,
                ))
            },
            check.issued_ms,
            check.lifetime_ms,
            counts,
            now_ms,
        )
        .map_err(|e| e.is_stale())
    }
}

/// The engine, its clock, and the harness's memory of what it sent.
struct Harness {
    engine: Engine<FuzzEnv>,
    t0: Instant,
    now: Instant,
    registrar: Registrar,
    /// Requests the engine asked of the runtime and not yet answered.
    asked: Vec<Output>,
    /// The last challenge sent (and whether it was a 407).
    challenge: Option<(Challenge, bool)>,
    nc: u32,
    /// Whether the input being handled parsed (replies to one that did not may copy its
    /// malformed fields).
    input_parsed: bool,
    sends: usize,
}

impl Harness {
    fn new() -> Harness {
        let mut cfg = EngineConfig::new(ME, DOMAIN, sa("192.0.2.1:5060"));
        cfg.auth = AuthMode::Digest;
        cfg.seed = 42;
        // Small tables, so that the overload paths are reached.
        cfg.max_transactions = 32;
        cfg.max_pending = 8;
        let t0 = Instant::now();
        let mut engine = Engine::new(cfg, FuzzEnv, None, t0);
        engine.set_keys(Some(
            NonceKeys::new(NonceKey::new(1, [7; 32]), None).expect("one key"),
        ));
        engine.set_wall_clock(t0, T0_MS);
        engine.set_domains(&["other.test".to_string()]);
        // Local forms of numbers in example.test's user parts (other.test has none).
        engine.set_dial_plans(&[(
            DOMAIN.to_string(),
            DialPlan {
                country_code: "1".into(),
                national_prefix: String::new(),
                international_prefix: "011".into(),
            },
        )]);
        Harness {
            engine,
            t0,
            now: t0,
            registrar: Registrar::default(),
            asked: Vec::new(),
            challenge: None,
            nc: 0,
            input_parsed: true,
            sends: 0,
        }
    }

    fn now_ms(&self) -> u64 {
        T0_MS + self.now.duration_since(self.t0).as_millis() as u64
    }

    /// Takes the engine's outputs: sends are checked, requests to the runtime kept.
    fn drain(&mut self, fail_sends: bool) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Send { bytes, client, .. } => {
                    self.sends += 1;
                    let parsed = parse_with(&bytes, &roomy());
                    match &parsed {
                        Ok(Message::Response(r)) if matches!(r.status, 401 | 407) => {
                            let name = if r.status == 401 {
                                "WWW-Authenticate"
                            } else {
                                "Proxy-Authenticate"
                            };
                            if let Some(v) = r.headers.get(name) {
                                let ch = Challenge::parse(v).unwrap_or_else(|e| {
                                    panic!("the engine's own challenge {v:?} does not parse: {e}")
                                });
                                self.challenge = Some((ch, r.status == 407));
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            // Only a reply to a message that itself did not parse (from a
                            // client or another node) may carry its malformed fields back.
                            let reply_to_malformed =
                                !self.input_parsed && bytes.starts_with(b"SIP/2.0 ");
                            assert!(
                                reply_to_malformed,
                                "the engine sent a message that does not parse ({e}):\n{}",
                                String::from_utf8_lossy(&bytes)
                            );
                        }
                    }
                    if let (true, Some(client)) = (fail_sends, client) {
                        self.engine.handle(self.now, Input::SendFailed { client });
                    }
                }
                other => self.asked.push(other),
            }
        }
    }

    /// Answers every request the engine asked of the runtime (successes, or failures when
    /// `fail`).
    fn answer(&mut self, fail: bool) {
        use onehop_sip::engine::LocateError;
        let now_ms = self.now_ms();
        for out in std::mem::take(&mut self.asked) {
            let input = match out {
                Output::Register {
                    key,
                    info,
                    policy,
                    auth,
                } => {
                    let result = if fail {
                        Err(LocateError::Unavailable("fuzz".into()))
                    } else {
                        let checked = match &auth {
                            Some(check) => self.registrar.check(&info.aor, check, now_ms),
                            None => Ok(()),
                        };
                        match checked {
                            Err(stale) => Err(LocateError::Unauthorized { stale }),
                            Ok(()) => {
                                let b =
                                    self.registrar.bindings.entry(info.aor.clone()).or_default();
                                b.apply_register(&info, now_ms, &policy)
                                    .map_err(LocateError::from)
                            }
                        }
                    };
                    Input::Registered {
                        key,
                        result,
                        at_ms: now_ms,
                    }
                }
                Output::Authenticate { key, aor, auth } => Input::Authenticated {
                    key,
                    result: match self.registrar.check(&aor, &auth, now_ms) {
                        Ok(()) if !fail => Ok(()),
                        Ok(()) => Err(LocateError::Unavailable("fuzz".into())),
                        Err(stale) => Err(LocateError::Unauthorized { stale }),
                    },
                },
                Output::Lookup { key, aor } => Input::Located {
                    key,
                    result: if fail {
                        Err(LocateError::Unavailable("fuzz".into()))
                    } else {
                        Ok(self
                            .registrar
                            .bindings
                            .get(&aor)
                            .map(|b| b.current(now_ms))
                            .unwrap_or_default())
                    },
                },
                Output::Resolve { key, .. } => Input::Resolved {
                    key,
                    result: if fail {
                        Err("fuzz".into())
                    } else {
                        Ok(vec![(Transport::Udp, sa("198.51.100.99:5060"))])
                    },
                },
                Output::RouteNumber { key, number } => Input::NumberRouted {
                    key,
                    result: if fail {
                        Err(LocateError::Unavailable("fuzz".into()))
                    } else {
                        // The last digit decides, so inputs reach every kind of routing.
                        Ok(match number.bytes().last().map(|d| d % 4) {
                            Some(0) | None => None,
                            Some(1) => Some(NumberRoute::Account(format!("alice@{DOMAIN}"))),
                            Some(2) => Some(NumberRoute::Uri(format!(
                                "sip:{number}@198.51.100.98:5060"
                            ))),
                            Some(_) => Some(NumberRoute::Uri(format!("sip:{number}@carrier.test"))),
                        })
                    },
                },
                Output::Send { .. } => unreachable!("sends are not kept"),
            };
            self.engine.handle(self.now, input);
            self.drain(false);
        }
    }

    /// Answers the last challenge in `payload` (a request): adds the credentials of its From
    /// user with the right password.
    fn authenticate(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        let (ch, proxy) = self.challenge.clone()?;
        let Ok(Message::Request(mut req)) = parse_with(payload, &roomy()) else {
            return None;
        };
        let user = req.headers.from()?.uri().user()?.to_string();
        self.nc += 1;
        let creds = Credentials::answer(
            &ch,
            &user,
            PASSWORD,
            req.method.as_str(),
            req.uri.as_str(),
            "fuzzcnonce",
            self.nc,
        );
        let name = if proxy {
            "Proxy-Authorization"
        } else {
            "Authorization"
        };
        req.headers.push(name, &creds.to_string());
        Some(req.to_bytes().to_vec())
    }

    /// Moves the clock on by `by`, firing every timer due on the way at its own deadline.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while let Some(t) = self.engine.poll_timeout().filter(|t| *t <= end) {
            self.now = self.now.max(t);
            self.engine.handle_timeout(self.now);
            self.drain(false);
        }
        self.now = end;
        self.engine.handle_timeout(self.now);
        self.drain(false);
    }
}

/// The proxy engine (digest authentication on) fed a sequence of messages, each from a
/// client over UDP or TCP or from another node, with the time moving on, the runtime's
/// answers (registrar, lookups, resolution) given as they are asked, now and then a send
/// failing, and challenges answered with the right password when the input asks.
///
/// Input: records of a control byte, a little-endian u16 length and the message. Control
/// bits: 0-1 where from (UDP client, TCP client on flow 1, node2, another UDP client); 2-4
/// how far the clock moves first; 5 answer the runtime's requests now; 6 answer the last
/// challenge (add credentials); 7 failures (sends fail, answers are errors).
///
/// Properties: everything the engine sends parses (but replies to a message that did not
/// parse, which may copy its fields); its tables stay within their bounds; and once every
/// request is answered and ten minutes pass, every transaction is gone.
pub fn sip_engine(data: &[u8]) {
    const STEPS_MS: [u64; 8] = [0, 1, 100, 1_000, 4_000, 32_000, 64_000, 200_000];
    let mut h = Harness::new();
    let mut c = Cursor::new(data);
    let mut records = 0;
    while let Some(ctrl) = c.byte() {
        records += 1;
        if records > 64 {
            break;
        }
        let len = c.u16().unwrap_or(0) as usize;
        let payload = c.take(len);
        let fail = ctrl & 0x80 != 0;
        h.advance(Duration::from_millis(STEPS_MS[(ctrl as usize >> 2) & 7]));
        let payload = match (ctrl & 0x40 != 0)
            .then(|| h.authenticate(payload))
            .flatten()
        {
            Some(p) => p,
            None => payload.to_vec(),
        };
        let uac = sa("198.51.100.10:5060");
        let (from, source) = match ctrl & 3 {
            0 => (
                Hop::Net {
                    proto: Transport::Udp,
                    remote: uac,
                    conn: 0,
                },
                Some(uac),
            ),
            1 => (
                Hop::Net {
                    proto: Transport::Tcp,
                    remote: uac,
                    conn: 1,
                },
                Some(uac),
            ),
            2 => (
                Hop::Peer {
                    node: "node2".into(),
                    deliver: None,
                },
                None,
            ),
            _ => {
                let other = sa("198.51.100.20:5062");
                (
                    Hop::Net {
                        proto: Transport::Udp,
                        remote: other,
                        conn: 0,
                    },
                    Some(other),
                )
            }
        };
        h.input_parsed = parse_with(&payload, &Limits::default()).is_ok();
        h.engine.handle(
            h.now,
            Input::Message {
                bytes: Bytes::from(payload),
                from,
                source,
                deliver: None,
            },
        );
        h.drain(fail);
        h.input_parsed = true;
        if ctrl & 0x20 != 0 {
            h.answer(fail);
        }
        assert!(
            h.engine.transactions() <= 32 * 5 / 4 + 1,
            "{}",
            h.engine.transactions()
        );
        assert!(
            h.engine.pending() <= 8 * 5 / 4 + 1,
            "{}",
            h.engine.pending()
        );
    }
    // Everything asked is answered; then ten minutes pass.
    h.answer(false);
    for _ in 0..20 {
        h.advance(Duration::from_secs(30));
        h.answer(false);
    }
    assert_eq!(
        (
            h.engine.transactions(),
            h.engine.lingering(),
            h.engine.pending()
        ),
        (0, 0, 0),
        "transactions left after ten minutes"
    );
    let _ = (h.sends, IpAddr::from([0, 0, 0, 0]));
}
