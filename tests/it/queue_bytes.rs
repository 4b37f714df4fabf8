//! Queues bounded in bytes (issue 11): a subscriber that stops reading while events close to
//! the frame cap are published costs the event server its byte bound, not its entry bound.

use std::path::Path;
use std::time::{Duration, Instant};

use onehop_overlay::client::{ClientEvent, ClientOptions, EventClient};
use onehop_overlay::net::{self, ConnTable, Timing};
use onehop_overlay::tls::{Credentials, TlsFiles};
use onehop_overlay::wire::{encode_frame, ClientMsg, Level, LogEvent, Payload, Topic};

use crate::harness::{raw_connect, scrape, vm_hwm_kib, vm_rss_kib, Farm};

/// Events published: 1 MiB each, 300 MiB in all, far past the 16 MiB byte bound (and far
/// under the 4,096 events of the entry bound, which alone would let the stalled subscriber
/// hold all of them).
const EVENTS: usize = 300;
/// The text of each event: the frame cap less a little for the envelope.
const TEXT: usize = (1 << 20) - 1024;
/// What the event server may grow by, in KiB, over its resident size before the publications:
/// the stalled subscriber's queue (16 MiB by default) and QUIC send buffer (what the
/// subscriber's stream window lets through, 1.25 MB), the frames in flight to the reading
/// subscriber and from the publisher, and the allocator's slack.
const GROWTH_KIB: u64 = 64 << 10;

async fn client(
    tls: TlsFiles,
    es: std::net::SocketAddr,
    subscribe: Vec<Topic>,
) -> (EventClient, onehop_overlay::client::EventReceiver) {
    let creds = Credentials::load(&tls).unwrap();
    let ep = net::endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &creds,
        &Default::default(),
        Timing::default(),
        None,
    )
    .unwrap();
    let opts = ClientOptions {
        eventservers: vec![es],
        subscribe,
        ..Default::default()
    };
    let (c, rx) = EventClient::start(ep, opts, ConnTable::default(), None);
    (c, rx)
}

async fn until_up(rx: &mut onehop_overlay::client::EventReceiver) {
    let up = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = rx.recv().await {
            if let ClientEvent::Up { .. } = ev {
                return;
            }
        }
    })
    .await;
    assert!(up.is_ok(), "no session with the event server in 10 s");
}

#[test]
fn a_stalled_subscriber_costs_the_event_server_its_byte_bound() {
    let farm = Farm::up(
        "127.0.211.1",
        &[
            "--nodes",
            "0",
            "--dns",
            "0",
            "--managers",
            "1",
            "--eventservers",
            "1",
        ],
    );
    let es = farm.file.member("es1").expect("es1").clone();
    let es_addr = es.addr("eventserver").expect("eventserver port");
    let metrics = es.addr("metrics").expect("metrics port");
    let pid = farm.pid("es1");
    let ca = farm.file.ca.clone();
    let monitor = farm.file.monitor.clone().expect("monitor certificate");
    let admin = farm.file.admin.clone().expect("admin certificate");
    let rt = tokio::runtime::Runtime::new().unwrap();

    rt.block_on(async {
        // The stalled subscriber: subscribes to `events`, reads the welcome, and never reads
        // again.
        let stalled = raw_connect(&ca, &monitor.cert, &monitor.key, es_addr)
            .await
            .expect("stalled subscriber connects");
        let (mut send, mut recv) = stalled.open_bi().await.unwrap();
        send.write_all(&encode_frame(&ClientMsg::Subscribe(vec![Topic::Events])))
            .await
            .unwrap();
        let welcome = tokio::time::timeout(
            Duration::from_secs(5),
            onehop_overlay::wire::read_frame(&mut recv, 1 << 20),
        )
        .await;
        assert!(matches!(welcome, Ok(Ok(Some(_)))), "welcome: {welcome:?}");

        // The subscriber that reads, and the publisher (an admin may publish on `events`).
        let (reader, mut events) = client(
            farm.file.client_tls(&monitor),
            es_addr,
            vec![Topic::Events],
        )
        .await;
        until_up(&mut events).await;
        let (publisher, mut pub_events) =
            client(farm.file.client_tls(&admin), es_addr, Vec::new()).await;
        until_up(&mut pub_events).await;

        let before_kib = vm_rss_kib(pid);
        let (mut peak_kib, mut received) = (before_kib, 0usize);
        let mut cut_after = None;
        let text = "e".repeat(TEXT);
        let started = Instant::now();
        for i in 0..EVENTS {
            let queued = publisher.publish(Payload::Log(LogEvent {
                time_ms: i as u64,
                level: Level::Info,
                text: text.clone(),
            }));
            assert_eq!(queued, 1, "publication {i} queued to the event server");
            // Paced by the reading subscriber: each event arrives before the next is sent.
            let got = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match events.recv().await {
                        Some(ClientEvent::Event(ev)) => {
                            if let Payload::Log(l) = &ev.payload {
                                if l.time_ms == i as u64 && l.text.len() == TEXT {
                                    return true;
                                }
                            }
                        }
                        Some(ClientEvent::Down { reason, .. }) => {
                            panic!("the reading subscriber lost its session: {reason}")
                        }
                        Some(_) => {}
                        None => return false,
                    }
                }
            })
            .await;
            assert_eq!(got, Ok(true), "event {i} reached the reading subscriber");
            received += 1;
            peak_kib = peak_kib.max(vm_rss_kib(pid));
            if cut_after.is_none() && stalled.close_reason().is_some() {
                cut_after = Some(i + 1);
            }
        }
        let took = started.elapsed();
        let hwm_kib = vm_hwm_kib(pid).unwrap_or(0);
        println!(
            "{EVENTS} events of {TEXT} bytes in {took:?}; event server RSS {before_kib} KiB before, \
             peak {peak_kib} KiB sampled, VmHWM {hwm_kib} KiB; stalled subscriber cut after \
             {cut_after:?} events; the reading one got {received}"
        );

        // The stalled subscriber was disconnected as too slow, by the byte bound.
        let reason = tokio::time::timeout(Duration::from_secs(5), stalled.closed())
            .await
            .expect("the stalled subscriber is disconnected");
        let text = format!("{reason}");
        assert!(
            text.contains("subscriber too slow") && text.contains("bytes"),
            "close reason: {text}"
        );
        let cut_after = cut_after.expect("cut while publishing");
        assert!(
            cut_after <= 32,
            "cut after {cut_after} events of 1 MiB: far more than 16 MiB of queue and 1.25 MB \
             of QUIC buffer"
        );
        assert_eq!(received, EVENTS, "the reading subscriber got every event");
        assert!(
            peak_kib <= before_kib + GROWTH_KIB,
            "event server grew from {before_kib} KiB to {peak_kib} KiB with a stalled \
             subscriber (bound {GROWTH_KIB} KiB)"
        );
        let figures = scrape(metrics).expect("event server metrics");
        let by_bytes = figures
            .get("onehop_eventserver_slow_subscribers_by_bound_total{bound=\"bytes\"}")
            .copied();
        assert_eq!(by_bytes, Some(1), "one subscriber cut by the byte bound");
        println!(
            "eventserver_queue_bytes_max now {:?}",
            figures.get("onehop_eventserver_queue_bytes_max")
        );
        reader.stop();
        publisher.stop();
    });
    assert!(
        log_has(&es.log, "subscriber too slow: its queue is full in bytes"),
        "the event server logs the disconnection"
    );
}

fn log_has(path: &Path, text: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|l| l.contains(text))
}
