//! Malformed, truncated and oversized frames close that stream; the daemon keeps serving.

use std::time::Duration;

use onehop_overlay::wire::{encode_frame, ClientMsg, Topic};

use crate::harness::{raw_connect, send_raw, wait_for, Farm};

#[test]
fn bad_frames_close_the_stream_and_the_event_server_keeps_serving() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let farm = Farm::up(
        "127.0.10.1",
        &[
            "--nodes",
            "1",
            "--dns",
            "0",
            "--managers",
            "1",
            "--eventservers",
            "1",
        ],
    );
    let ca = farm.path().join("ca/ca.pem");
    let cert = farm.path().join("certs/monitor.pem");
    let key = farm.path().join("certs/monitor.key");
    let es = farm
        .file
        .member("es1")
        .unwrap()
        .addr("eventserver")
        .unwrap();

    let mut garbage = vec![0, 0, 0, 6];
    garbage.extend_from_slice(&[0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa]);
    let mut truncated = encode_frame(&ClientMsg::Subscribe(vec![Topic::Network])).to_vec();
    truncated[3] += 10; // claims 10 more bytes than are sent before the stream finishes
    let oversized = vec![0x7f, 0xff, 0xff, 0xff, 1, 2, 3];
    let cases: [(&str, Vec<u8>, bool); 3] = [
        ("malformed", garbage, false),
        ("truncated", truncated, true),
        ("oversized", oversized, false),
    ];
    for (what, bytes, finish) in cases {
        let r = rt.block_on(async {
            let conn = raw_connect(&ca, &cert, &key, es).await.unwrap();
            if finish {
                let (mut s, mut r) = conn.open_bi().await.unwrap();
                s.write_all(&bytes).await.unwrap();
                s.finish().unwrap();
                let mut buf = Vec::new();
                // The welcome comes first; then the stream or connection must end with an error.
                loop {
                    match tokio::time::timeout(
                        Duration::from_secs(3),
                        onehop_overlay::wire::read_frame(&mut r, 1 << 20),
                    )
                    .await
                    {
                        Ok(Ok(Some(f))) => buf.push(f),
                        Ok(Ok(None)) => return Err("finished".to_string()),
                        Ok(Err(e)) => return Err(e.to_string()),
                        Err(_) => return Ok(buf.len()),
                    }
                }
            } else {
                send_raw(&conn, &bytes).await.map(|f| f.len())
            }
        });
        println!("{what}: {r:?}");
        assert!(r.is_err(), "{what} frame: stream not closed ({r:?})");
        assert!(
            farm.log_shows("es1", "closing stream: bad frame", Duration::from_secs(3)),
            "{what}: no log line"
        );
        // A well-behaved client still gets served.
        let ok = rt.block_on(async {
            let conn = raw_connect(&ca, &cert, &key, es).await.unwrap();
            send_raw(
                &conn,
                &encode_frame(&ClientMsg::Subscribe(vec![Topic::Network])),
            )
            .await
        });
        assert!(ok.is_ok(), "after {what}: {ok:?}");
    }
    let log = farm.log("es1");
    for needle in [
        "malformed frame",
        "stream ended inside a frame",
        "exceeds the cap",
    ] {
        assert!(log.contains(needle), "es1 log lacks {needle:?}");
    }
    // And the farm is whole.
    let mut l = farm.lookup("node1");
    assert!(wait_for(Duration::from_secs(2), || l.status()).is_some());
}
