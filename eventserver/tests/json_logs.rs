//! A real `onehop-eventserver` process with `--log-format json`: every line is one JSON object
//! naming the member (`member`, `member_kind`), and the lines about a member's session carry
//! `peer` (its certificate name and address).

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use onehop_certs::{Ca, IssueRequest};
use onehop_overlay::client::{ClientEvent, ClientOptions, EventClient};
use onehop_overlay::crl::CrlState;
use onehop_overlay::net::{self, ConnTable, Timing};
use onehop_overlay::status::Kind;
use onehop_overlay::tls::{Credentials, TlsFiles};
use onehop_overlay::wire::{Announce, Topic};
use serde_json::Value;

/// Kills the server however the test ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of the server's stderr, gathered by a thread.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    /// Waits (until `deadline`) for a line that `want` accepts; every line read is kept.
    fn wait_for(&mut self, deadline: Instant, want: impl Fn(&Value) -> bool) -> Option<Value> {
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.rx.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if want(&v) {
                    return Some(v);
                }
            }
        }
    }
}

fn free_udp_port(ip: IpAddr) -> u16 {
    UdpSocket::bind(SocketAddr::new(ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn every_json_line_names_the_member_and_session_lines_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = Ca::init(dir.path().join("ca"), "example.test").unwrap();
    let ip: IpAddr = [127, 0, 0, 1].into();
    let certs = dir.path().join("certs");
    let es = ca
        .issue(
            &IssueRequest::new("es-log", Kind::Eventserver).ips([ip]),
            &certs,
        )
        .unwrap();
    let node = ca
        .issue(&IssueRequest::new("node-log", Kind::Node).ips([ip]), &certs)
        .unwrap();
    let listen = SocketAddr::new(ip, free_udp_port(ip));
    let config = dir.path().join("es.toml");
    let q = |p: &std::path::Path| toml::Value::String(p.display().to_string()).to_string();
    std::fs::write(
        &config,
        format!(
            "listen = \"{listen}\"\n[tls]\nca = {}\ncert = {}\nkey = {}\n",
            q(&ca.cert_path()),
            q(&es.cert_path),
            q(&es.key_path)
        ),
    )
    .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_onehop-eventserver"))
        .arg("--config")
        .arg(&config)
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _server = Server(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Lines {
        rx,
        seen: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    assert!(
        lines
            .wait_for(deadline, |v| v["message"] == "event server ready")
            .is_some(),
        "no ready line; lines: {:#?}",
        lines.seen
    );

    // A member connects, announces itself and leaves.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client_port = rt.block_on(async {
        let creds = Credentials::load(&TlsFiles {
            ca: ca.cert_path(),
            cert: node.cert_path.clone(),
            key: node.key_path.clone(),
            crl: None,
        })
        .unwrap();
        let endpoint = net::endpoint(
            SocketAddr::new(ip, 0),
            &creds,
            &CrlState::default(),
            Timing::default(),
            None,
        )
        .unwrap();
        let port = endpoint.local_addr().unwrap().port();
        let opts = ClientOptions {
            eventservers: vec![listen],
            announce: Some(Announce {
                roles: Vec::new(),
                endpoints: Vec::new(),
            }),
            subscribe: vec![Topic::Members],
            ..Default::default()
        };
        let (client, mut events) = EventClient::start(endpoint, opts, ConnTable::default(), None);
        let up = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(ev) = events.recv().await {
                if matches!(ev, ClientEvent::Up { .. }) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(up, Ok(true), "no session with the event server");
        client.leave(Duration::from_secs(2)).await;
        port
    });

    let peer = format!("node-log@{ip}:{client_port}");
    let joined = lines.wait_for(deadline, |v| v["message"] == "member joined");
    let joined = joined.unwrap_or_else(|| panic!("no `member joined` line: {:#?}", lines.seen));
    assert_eq!(joined["peer"], peer.as_str(), "{joined}");
    assert_eq!(joined["peer_kind"], "node", "{joined}");
    assert_eq!(joined["span"], "session", "{joined}");
    let left = lines.wait_for(deadline, |v| v["message"] == "member left");
    let left = left.unwrap_or_else(|| panic!("no `member left` line: {:#?}", lines.seen));
    assert_eq!(left["peer"], peer.as_str(), "{left}");

    assert!(lines.seen.len() >= 3, "{:#?}", lines.seen);
    for line in &lines.seen {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["member"], "es-log", "{line}");
        assert_eq!(v["member_kind"], "eventserver", "{line}");
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
    }
}
