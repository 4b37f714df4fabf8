//! SIP over TLS on port 5061 when a certificate is configured: a phone registers over TLS,
//! and a request for it sent to another node reaches it over that same TLS connection
//! (reverse outbound through the node holding the flow).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{wait_for, Farm};

/// Reads one SIP message (header, then Content-Length bytes of body) from a stream.
async fn read_sip<S: tokio::io::AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    (n.trim().eq_ignore_ascii_case("content-length") || n.trim() == "l")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let msg = String::from_utf8_lossy(&buf[..end + 4 + len]).to_string();
                buf.drain(..end + 4 + len);
                return msg;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("a SIP message within 10 s")
            .expect("read");
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn a_phone_on_tls_registers_and_is_reached_over_its_connection() {
    let mut farm = Farm::up("127.0.120.1", &["--nodes", "2", "--dns", "0"]);
    // In production this is a certificate from a public CA; here one from the farm's CA, which
    // the test's phone trusts.
    let ip1 = farm.ip("node1");
    farm.issue("sip-node1", "monitor", &["--ip", &ip1.to_string()]);
    let node1 = farm.file.member("node1").unwrap().clone();
    let mut cfg: toml::Table =
        toml::from_str(&std::fs::read_to_string(&node1.config).unwrap()).unwrap();
    let certs = farm.path().join("certs");
    cfg.insert(
        "sip_tls_cert".into(),
        certs.join("sip-node1.pem").display().to_string().into(),
    );
    cfg.insert(
        "sip_tls_key".into(),
        certs.join("sip-node1.key").display().to_string().into(),
    );
    std::fs::write(&node1.config, toml::to_string(&cfg).unwrap()).unwrap();
    farm.signal("node1", "-TERM");
    wait_for(Duration::from_secs(10), || {
        let alive = Command::new("kill")
            .args(["-0", &node1.pid.to_string()])
            .status()
            .ok()?
            .success();
        (!alive).then_some(())
    })
    .expect("node1 stopped");
    farm.restart("node1");
    let mut l2 = farm.lookup("node2");
    wait_for(Duration::from_secs(10), || {
        l2.ask("members registrar").contains("node1=").then_some(())
    })
    .expect("node1 back");

    let ca = farm.path().join("ca/ca.pem");
    let node2_sip = SocketAddr::new(farm.ip("node2"), 5060);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from_pem_file(&ca).unwrap()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = wait_for_async(SocketAddr::new(ip1, 5061)).await;
        let local = tcp.local_addr().unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(ip1.into());
        let mut tls = connector.connect(name, tcp).await.expect("TLS handshake with node1:5061");
        let mut buf = Vec::new();
        let register = format!(
            "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKtls1;rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:tlsphone@example.test>;tag=t1\r\nTo: <sip:tlsphone@example.test>\r\n\
             Call-ID: tls-reg-1\r\nCSeq: 1 REGISTER\r\nContact: <sip:tlsphone@{local};transport=tls>\r\n\
             Expires: 600\r\nContent-Length: 0\r\n\r\n"
        );
        tls.write_all(register.as_bytes()).await.unwrap();
        let answer = read_sip(&mut tls, &mut buf).await;
        assert!(answer.starts_with("SIP/2.0 200"), "REGISTER over TLS: {answer}");
        println!("REGISTER over TLS to node1:5061: {}", answer.lines().next().unwrap());

        // An OPTIONS for the phone, sent over UDP to node2, arrives on the phone's TLS connection.
        let udp = UdpSocket::bind((IpAddr::from([127, 0, 120, 200]), 0)).unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let me = udp.local_addr().unwrap();
        let options = format!(
            "OPTIONS sip:tlsphone@example.test SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKopt1;rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:prober@example.test>;tag=p1\r\nTo: <sip:tlsphone@example.test>\r\n\
             Call-ID: tls-opt-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        udp.send_to(options.as_bytes(), node2_sip).unwrap();
        let req = read_sip(&mut tls, &mut buf).await;
        assert!(req.starts_with("OPTIONS sip:tlsphone@"), "on the TLS connection: {req}");
        let vias = req.lines().filter(|l| l.to_ascii_lowercase().starts_with("via:")).count();
        println!("OPTIONS via node2 reached the phone over its TLS connection with {vias} Via headers");
        // Answer 200, copying the headers a response must carry.
        let mut resp = String::from("SIP/2.0 200 OK\r\n");
        for l in req.lines() {
            let lower = l.to_ascii_lowercase();
            if ["via:", "from:", "call-id:", "cseq:"].iter().any(|h| lower.starts_with(h)) {
                resp.push_str(l);
                resp.push_str("\r\n");
            } else if lower.starts_with("to:") {
                resp.push_str(l);
                resp.push_str(";tag=phone\r\n");
            }
        }
        resp.push_str("Content-Length: 0\r\n\r\n");
        tls.write_all(resp.as_bytes()).await.unwrap();
        let mut got = [0u8; 4096];
        let n = udp.recv(&mut got).expect("the prober gets an answer");
        let text = String::from_utf8_lossy(&got[..n]);
        assert!(text.starts_with("SIP/2.0 200"), "prober got: {text}");
    });
}

async fn wait_for_async(addr: SocketAddr) -> tokio::net::TcpStream {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => return s,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("connect {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
