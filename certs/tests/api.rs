//! The library API, as the farm launcher uses it.

use onehop_certs::{
    parse_roles, show, Ca, CertsError, IssueRequest, Revocation, State, DEFAULT_DAYS,
};
use onehop_overlay::identity::{crl_serials, identity_from_pem};
use onehop_overlay::status::{Kind, Role};

#[test]
fn init_open_issue_revoke() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let out = tmp.path().join("certs");

    assert!(matches!(Ca::open(&dir), Err(CertsError::NoCa { .. })));
    let ca = Ca::init(&dir, "voip.example").unwrap();
    assert_eq!(ca.domain(), "voip.example");
    assert!(ca.cert_pem().contains("BEGIN CERTIFICATE"));
    assert!(crl_serials(&ca.crl_der()).unwrap().is_empty());
    assert!(matches!(
        Ca::init(&dir, "voip.example"),
        Err(CertsError::CaExists { .. })
    ));

    let mut ca = Ca::open(&dir).unwrap();
    let req = IssueRequest::new("node-7", Kind::Node)
        .roles(parse_roles("sip_proxy, media_relay,sip_proxy").unwrap())
        .ips(["10.0.0.7".parse().unwrap()]);
    let issued = ca.issue(&req, &out).unwrap();
    assert_eq!(issued.cert_path, out.join("node-7.pem"));
    assert_eq!(issued.key_path, out.join("node-7.key"));
    assert_eq!(
        issued.identity.roles,
        vec![
            Role::new("media_relay").unwrap(),
            Role::new("sip_proxy").unwrap()
        ]
    );
    assert_eq!(
        issued.identity.not_after - issued.identity.not_before,
        i64::from(DEFAULT_DAYS) * 86_400
    );
    let from_file =
        identity_from_pem(&std::fs::read_to_string(&issued.cert_path).unwrap()).unwrap();
    assert_eq!(from_file, issued.identity);

    match ca.issue(&req, &out) {
        Err(e @ CertsError::AlreadyIssued { .. }) => assert_eq!(
            e.to_string(),
            format!(
                "node-7 is already issued (serial {}); revoke it first or pick another name",
                issued.identity.serial
            )
        ),
        other => panic!("{other:?}"),
    }

    let info = show(&issued.cert_path, Some(&dir)).unwrap();
    assert_eq!(info.revocation, Revocation::NotRevoked);
    assert_eq!(info.dns_names, ["node-7.voip.example"]);
    assert_eq!(info.ips, ["10.0.0.7".parse::<std::net::IpAddr>().unwrap()]);

    let serial = ca.revoke("node-7").unwrap();
    assert_eq!(serial, issued.identity.serial);
    assert!(ca.is_revoked(&serial));
    assert_eq!(crl_serials(&ca.crl_der()).unwrap(), vec![serial.clone()]);
    assert_eq!(ca.crl_number(), 2);

    // A reopened CA sees the same state.
    let mut ca = Ca::open(&dir).unwrap();
    assert_eq!(ca.crl_number(), 2);
    assert_eq!(ca.list().len(), 1);
    assert_eq!(
        ca.list()[0].state_at(time::OffsetDateTime::now_utc()),
        State::Revoked
    );
    assert!(matches!(
        ca.revoke("node-7"),
        Err(CertsError::AlreadyRevoked { .. })
    ));
    assert_eq!(
        show(&issued.cert_path, Some(&dir)).unwrap().revocation,
        Revocation::Revoked
    );

    ca.refresh_crl().unwrap();
    assert_eq!(ca.crl_number(), 3);
    assert_eq!(crl_serials(&ca.crl_der()).unwrap(), vec![serial]);

    // A certificate from another CA is not judged by this one.
    let other = tmp.path().join("other");
    let mut other_ca = Ca::init(&other, "voip.example").unwrap();
    let foreign = other_ca
        .issue(
            &IssueRequest::new("node-7", Kind::Node),
            tmp.path().join("o"),
        )
        .unwrap();
    assert_eq!(
        show(&foreign.cert_path, Some(&dir)).unwrap().revocation,
        Revocation::NotIssuedByCa
    );
}

#[test]
fn every_kind_can_be_issued() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ca = Ca::init(tmp.path().join("ca"), "example.net").unwrap();
    for kind in Kind::ALL {
        let name = format!("{kind}-1");
        let issued = ca
            .issue(&IssueRequest::new(&name, kind), tmp.path().join("out"))
            .unwrap();
        assert_eq!(issued.identity.kind, kind);
        assert_eq!(issued.identity.name, name);
    }
    assert_eq!(ca.list().len(), Kind::ALL.len());
}
