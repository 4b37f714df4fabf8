//! A node's replicated store is bounded in entries and bytes (`store_max_entries`,
//! `store_max_bytes`): past the bound a REGISTER for a new AOR is refused with 503 and a
//! Retry-After (the client tries again later, another node's registrar may have room after a
//! membership change), a refresh of an AOR already held still works, and the refusals are
//! counted in `store_full_refusals_total`.

use std::net::UdpSocket;
use std::time::Duration;

use crate::harness::{scrape, Farm};
use crate::metrics::register_answer;

#[test]
fn a_full_store_refuses_new_aors_with_503_and_counts_it() {
    let farm = Farm::up(
        "127.0.211.1",
        &[
            "--nodes",
            "1",
            "--dns",
            "0",
            "--no-demo-accounts",
            "--node-set",
            "store_max_entries=100",
        ],
    );
    let member = farm.file.member("node1").unwrap();
    let sip = member.addr("sip").unwrap();
    let metrics = member.addr("metrics").unwrap();
    let sock = UdpSocket::bind("127.0.211.200:0").expect("client socket");
    let mut ok = 0;
    let mut refused = Vec::new();
    for i in 0..130u32 {
        let answer = register_answer(&sock, sip, &format!("c{i}"), i + 1);
        if answer.starts_with("SIP/2.0 200") {
            ok += 1;
        } else {
            refused.push((i, answer));
        }
    }
    println!(
        "store capped at 100 entries: {ok} of 130 REGISTERs for new AORs taken, {} refused",
        refused.len()
    );
    assert_eq!(ok, 100, "the first 100 fit: {:?}", refused.first());
    for (i, answer) in &refused {
        assert!(
            answer.starts_with("SIP/2.0 503") && answer.contains("Retry-After:"),
            "c{i}: {answer}"
        );
    }
    // A refresh of an AOR held is still taken.
    let again = register_answer(&sock, sip, "c5", 1_000);
    assert!(again.starts_with("SIP/2.0 200"), "{again}");
    let figures = crate::harness::wait_for(Duration::from_secs(5), || {
        let m = scrape(metrics)?;
        (m.get("onehop_store_full_refusals_total").copied()? >= 30).then_some(m)
    })
    .expect("refusals counted");
    assert_eq!(figures.get("onehop_store_entries"), Some(&100));
    assert!(figures.get("onehop_store_bytes").copied().unwrap_or(0) > 100 * 128);
    assert!(farm.log("node1").contains("store full: write refused"));
}
