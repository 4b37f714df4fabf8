//! SIP parsing and serialising, per message: the INVITE and REGISTER SIPp sends in our
//! benchmarks (`bench/sip/sipp/uac.xml`, `register.xml`), and the whole stateless proxy
//! path for an INVITE (parse, RFC 3581 stamp, validate, forward with Record-Route,
//! serialise).
//!
//! `cargo bench -p onehop-sip --bench sip_parse`

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use onehop_sip::proxy::{self, LocalAddrs, ViaParams};
use onehop_sip::registrar::Transport;
use onehop_sip::{parse, parse_bytes, Limits, Message};

const INVITE: &str = "INVITE sip:2000@example.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4242-1-0\r\n\
Max-Forwards: 70\r\n\
From: <sip:caller@example.test>;tag=4242SIPpTag001\r\n\
To: <sip:2000@example.test>\r\n\
Call-ID: 1-4242@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:caller@127.0.0.1:5061;transport=UDP>\r\n\
Subject: bench\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 129\r\n\
\r\n\
v=0\r\n\
o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n\
s=-\r\n\
c=IN IP4 127.0.0.1\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

const REGISTER: &str = "REGISTER sip:example.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-4242-1-0\r\n\
Max-Forwards: 70\r\n\
From: <sip:1000@example.test>;tag=4242SIPpTag001\r\n\
To: <sip:1000@example.test>\r\n\
Call-ID: 1-4242@127.0.0.1\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:1000@127.0.0.1:5070;transport=UDP>\r\n\
Expires: 3600\r\n\
User-Agent: SIPp-bench\r\n\
Content-Length: 0\r\n\
\r\n";

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("sip");
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    for (name, text) in [("invite", INVITE), ("register", REGISTER)] {
        let data = Bytes::from_static(text.as_bytes());
        let parsed = parse(&data).expect("a valid message");
        assert_eq!(parsed.to_bytes(), data, "round trip is byte exact");
        g.bench_function(format!("parse_{name}"), |b| {
            b.iter(|| parse_bytes(black_box(&data), &limits).unwrap())
        });
        g.bench_function(format!("serialise_{name}"), |b| {
            let mut out = Vec::with_capacity(1024);
            b.iter(|| {
                out.clear();
                black_box(&parsed).write_to(&mut out);
                black_box(out.len())
            })
        });
        g.bench_function(format!("parse_serialise_{name}"), |b| {
            let mut out = Vec::with_capacity(1024);
            b.iter(|| {
                out.clear();
                parse_bytes(black_box(&data), &limits)
                    .unwrap()
                    .write_to(&mut out);
                black_box(out.len())
            })
        });
    }
    let local = LocalAddrs::new(&["127.0.1.7:5060".parse().unwrap()], &["example.test"]);
    let via = ViaParams {
        host: "127.0.1.7".into(),
        port: 5060,
        transport: Transport::Udp,
        branch: None,
        rport: false,
    };
    let target = onehop_sip::Uri::parse("sip:2000@127.0.0.1:5090;transport=UDP").unwrap();
    let data = Bytes::from_static(INVITE.as_bytes());
    g.bench_function("proxy_invite", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            let Ok(Message::Request(mut req)) = parse_bytes(black_box(&data), &limits) else {
                unreachable!()
            };
            proxy::stamp_received(&mut req, "192.0.2.7:5061".parse().unwrap());
            proxy::validate_request(&req, &local).unwrap();
            let fwd =
                proxy::forward_request(&req, &target, &via, Some("<sip:127.0.1.7;lr>"), &local);
            out.clear();
            fwd.write_to(&mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
