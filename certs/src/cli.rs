//! `onehop-certs`: the command line of the onehop certificate authority. All the work is in the
//! library; this module parses arguments, prints results and turns errors into one line.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::{
    format_list, format_time, list_json, parse_ip, parse_kind, parse_roles, parse_time, show, Ca,
    IssueRequest, PublishOptions,
};
use anyhow::anyhow;
use clap::{Args, Parser, Subcommand};

/// The onehop certificate authority.
///
/// Every onehop daemon talks QUIC with mutual TLS. Its certificate comes from the provider's own
/// CA, kept in one directory (ca.pem, ca.key, crl.pem, index.json), and says in a private
/// extension what its holder may be: its kind and, for nodes, its roles.
#[derive(Parser, Debug)]
#[command(name = "onehop-certs", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The options of `revoke` and `crl` that publish the new list.
#[derive(Args, Debug)]
struct PublishArgs {
    /// Also publish the new revocation list through the event servers.
    #[arg(long)]
    publish: bool,
    /// With --publish: a farm directory to take the admin certificate and the event
    /// server addresses from.
    #[arg(long, value_name = "DIR", requires = "publish")]
    farm: Option<PathBuf>,
    /// With --publish: the admin certificate to connect with.
    #[arg(long, value_name = "FILE", requires = "publish")]
    cert: Option<PathBuf>,
    /// With --publish: the admin certificate's key.
    #[arg(long, value_name = "FILE", requires = "publish")]
    key: Option<PathBuf>,
    /// With --publish: an event server address, HOST:PORT (repeatable).
    #[arg(long = "eventserver", value_name = "ADDR", requires = "publish")]
    eventservers: Vec<String>,
}

impl PublishArgs {
    /// Publishes `crl_der` of the CA in `ca_dir` when --publish was given.
    fn run(self, ca_dir: PathBuf, crl_der: Vec<u8>) -> anyhow::Result<()> {
        if !self.publish {
            return Ok(());
        }
        publish_crl(PublishOptions {
            ca_dir,
            crl_der,
            farm: self.farm,
            cert: self.cert,
            key: self.key,
            eventservers: self.eventservers,
        })
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new CA in a directory.
    ///
    /// Writes DIR/ca.pem (CN "onehop CA for DOMAIN", valid ten years), DIR/ca.key (mode 0600),
    /// an empty signed revocation list DIR/crl.pem and DIR/index.json. Refuses to overwrite an
    /// existing CA.
    Init {
        /// The SIP domain: every certificate gets the DNS name NAME.DOMAIN.
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
        /// The CA directory (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Validity of the CA certificate in days (default 3653, ten years). Every member
        /// certificate stops working when the CA's ends; the daemons report it from 30 days
        /// before.
        #[arg(long, value_name = "N")]
        days: Option<u32>,
    },
    /// Issue a certificate and its key.
    ///
    /// Writes OUT/NAME.pem (the certificate) and OUT/NAME.key (its ECDSA P-256 key, PKCS#8,
    /// mode 0600). The certificate has CN NAME, the DNS name NAME.DOMAIN, one IP name per --ip,
    /// and the kind and roles in the onehop extension. A name can only be issued again once its
    /// certificate is revoked.
    Issue {
        /// The CA directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The member name: 1-63 characters of A-Z, a-z, 0-9, '_' or '-'.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// What the holder may be: eventserver, manager, dns, node, monitor or admin.
        #[arg(long, value_name = "KIND")]
        kind: String,
        /// Comma-separated roles, only for kind node (for example sip_proxy,registrar). A node
        /// without --roles bears no role.
        #[arg(long, value_name = "ROLES")]
        roles: Option<String>,
        /// Comma-separated carriers (OCNs), only for kind admin: the holder administers the
        /// numbers of these carriers only. An admin certificate without --carriers is a
        /// farm-wide administrator (domains, accounts, carriers, blocks, every number).
        #[arg(long, value_name = "OCNS")]
        carriers: Option<String>,
        /// An IP address to add as a subject alternative name (repeatable).
        #[arg(long = "ip", value_name = "ADDR")]
        ips: Vec<String>,
        /// Where to write NAME.pem and NAME.key (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity in days from --not-before (default 825).
        #[arg(long, value_name = "N", conflicts_with = "not_after")]
        days: Option<u32>,
        /// Start of validity, RFC 3339 (default: now).
        #[arg(long, value_name = "RFC3339")]
        not_before: Option<String>,
        /// End of validity, RFC 3339. May be in the past, to make an expired certificate (then,
        /// without --not-before, the certificate is valid for the 825 days before it).
        #[arg(long, value_name = "RFC3339")]
        not_after: Option<String>,
    },
    /// Revoke the certificate of a name.
    ///
    /// Adds its serial to the revocation list: DIR/crl.pem is re-signed with every revoked
    /// serial, the next CRL number and a validity of seven days, and the certificate is marked
    /// revoked in DIR/index.json. With --publish, the new list is also pushed to the running
    /// network through its event servers.
    Revoke {
        /// The CA directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The member name whose certificate to revoke.
        #[arg(long, value_name = "NAME")]
        name: String,
        #[command(flatten)]
        publish: PublishArgs,
    },
    /// Sign the revocation list again, revoking nothing new.
    ///
    /// Re-signs DIR/crl.pem with every revoked serial, the next CRL number and a new next
    /// update (seven days ahead unless told). A list past its next update is stale: the
    /// daemons keep enforcing it but report it loudly (an ERROR line hourly, the metric
    /// onehop_crl_stale), so run this well before then, from cron say, with --publish to
    /// push it to the running network at once (daemons also reload crl.pem when it changes).
    Crl {
        /// The CA directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Days until the next update (default 7).
        #[arg(long, value_name = "N", conflicts_with = "next_update")]
        days: Option<u32>,
        /// The next update, RFC 3339. May be in the past, to make a stale list for a test
        /// (its this-update is then one day before).
        #[arg(long, value_name = "RFC3339")]
        next_update: Option<String>,
        #[command(flatten)]
        publish: PublishArgs,
    },
    /// List every certificate the CA issued.
    ///
    /// One line per certificate: name, kind, roles, serial, end of validity and state (valid,
    /// not-yet-valid, expired or revoked).
    List {
        /// The CA directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show what a certificate file says.
    ///
    /// Prints its name, kind, roles, serial, names and validity (and whether it is expired).
    /// With --dir, also checks that the CA signed it and whether the CA revoked it.
    Show {
        /// The certificate file (PEM or DER).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The CA directory, to tell whether the certificate is revoked.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The `onehop-certs` program.
pub fn cli_main(args: Vec<std::ffi::OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("{e:#}").replace('\n', " ");
            eprintln!("onehop-certs: error: {message}");
            ExitCode::from(1)
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init { domain, dir, days } => {
            let ca = match days {
                Some(d) => Ca::init_for_days(&dir, &domain, d)?,
                None => Ca::init(&dir, &domain)?,
            };
            println!(
                "created the CA for {} in {}: ca.pem, ca.key, crl.pem, index.json",
                ca.domain(),
                dir.display()
            );
        }
        Command::Issue {
            dir,
            name,
            kind,
            roles,
            carriers,
            ips,
            out,
            days,
            not_before,
            not_after,
        } => {
            let mut ca = Ca::open(&dir)?;
            let mut req = IssueRequest::new(name, parse_kind(&kind)?);
            req.roles = match roles {
                Some(r) => parse_roles(&r)?,
                None => Vec::new(),
            };
            req.carriers = carriers.map(|c| {
                c.split(',')
                    .map(|s| s.trim().to_ascii_uppercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            });
            req.ips = ips
                .iter()
                .map(|ip| parse_ip(ip))
                .collect::<Result<_, _>>()?;
            req.days = days;
            req.not_before = not_before.as_deref().map(parse_time).transpose()?;
            req.not_after = not_after.as_deref().map(parse_time).transpose()?;
            let issued = ca.issue(&req, &out)?;
            println!(
                "issued {} ({}) serial {}, valid until {}: {} {}",
                issued.entry.name,
                issued.entry.kind,
                issued.entry.serial,
                format_time(issued.entry.not_after),
                issued.cert_path.display(),
                issued.key_path.display()
            );
        }
        Command::Revoke { dir, name, publish } => {
            let mut ca = Ca::open(&dir)?;
            let serial = ca.revoke(&name)?;
            println!(
                "revoked {name} (serial {serial}); {} is now crl number {}",
                ca.crl_path().display(),
                ca.crl_number()
            );
            publish.run(dir, ca.crl_der())?;
        }
        Command::Crl {
            dir,
            days,
            next_update,
            publish,
        } => {
            let mut ca = Ca::open(&dir)?;
            let next = match (days, next_update) {
                (_, Some(t)) => parse_time(&t)?,
                (Some(0), None) => return Err(anyhow!("--days must be at least 1")),
                (Some(d), None) => {
                    time::OffsetDateTime::now_utc() + time::Duration::days(i64::from(d))
                }
                (None, None) => {
                    time::OffsetDateTime::now_utc() + time::Duration::days(crate::CRL_DAYS)
                }
            };
            ca.refresh_crl_until(next)?;
            println!(
                "signed {} as crl number {}, next update {}",
                ca.crl_path().display(),
                ca.crl_number(),
                ca.crl_next_update()
                    .map(format_time)
                    .unwrap_or_else(|| "none".into())
            );
            publish.run(dir, ca.crl_der())?;
        }
        Command::List { dir, json } => {
            let ca = Ca::open(&dir)?;
            let now = time::OffsetDateTime::now_utc();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list_json(&ca.list(), now))?
                );
            } else {
                print!("{}", format_list(&ca.list(), now));
            }
        }
        Command::Show { file, dir, json } => {
            let info = show(&file, dir.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info.to_json())?);
            } else {
                print!("{}", info.to_text());
            }
        }
    }
    Ok(())
}

/// Publishes the new revocation list through the event servers (`revoke --publish`).
///
/// Pushes the CRL through the event servers as an `admin`: every daemon verifies it against
/// the CA, takes it and closes the connections of revoked peers.
fn publish_crl(opts: PublishOptions) -> anyhow::Result<()> {
    use onehop_overlay::client::{ClientEvent, ClientOptions, EventClient};
    use onehop_overlay::farmfile::FarmFile;
    use onehop_overlay::net::{self, ConnTable, Timing};
    use onehop_overlay::tls::{Credentials, TlsFiles};
    use onehop_overlay::wire::Payload;
    use std::time::Duration;

    let (cert, key, mut eventservers) = match &opts.farm {
        Some(dir) => {
            let farm = FarmFile::load(dir)?;
            let admin = farm.admin.clone().ok_or_else(|| {
                anyhow!("{}: farm.json names no admin certificate", dir.display())
            })?;
            (admin.cert, admin.key, farm.eventservers())
        }
        None => (
            opts.cert.clone().ok_or_else(|| {
                anyhow!("--publish needs --farm DIR, or --cert and --key of an admin certificate")
            })?,
            opts.key
                .clone()
                .ok_or_else(|| anyhow!("--publish needs --key with --cert"))?,
            Vec::new(),
        ),
    };
    for e in &opts.eventservers {
        eventservers.push(
            e.parse()
                .map_err(|err| anyhow!("--eventserver {e}: {err} (expected ip:port)"))?,
        );
    }
    if eventservers.is_empty() {
        return Err(anyhow!(
            "--publish needs at least one --eventserver ADDR (or --farm DIR)"
        ));
    }
    let tls = TlsFiles {
        ca: opts.ca_dir.join("ca.pem"),
        cert,
        key,
        crl: None,
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let creds = Credentials::load(&tls)?;
        let endpoint = net::endpoint(
            "0.0.0.0:0".parse().expect("literal"),
            &creds,
            &Default::default(),
            Timing::default(),
            None,
        )?;
        let total = eventservers.len();
        let options = ClientOptions {
            eventservers,
            ..Default::default()
        };
        let (client, mut events) =
            EventClient::start(endpoint, options, ConnTable::default(), None);
        let mut up = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while up < total {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(ClientEvent::Up { .. })) => up += 1,
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        if up == 0 {
            client.stop();
            return Err(anyhow!("no event server could be reached within 5 s"));
        }
        let sent = client.publish(Payload::Crl(opts.crl_der.clone()));
        client.leave(Duration::from_secs(2)).await;
        println!("published the revocation list to {sent} of {total} event server(s)");
        Ok(())
    })
}
