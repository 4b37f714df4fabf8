//! onehop-admin: the operators' command-line client of the provisioning API.
//!
//! - [`client`]: the HTTPS client (admin certificate, every manager tried in turn).
//! - this file: the commands.

pub mod client;
pub mod numbers;

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use hyper::Method;
use onehop_overlay::tls::TlsFiles;
use serde_json::{json, Value};

pub use client::{ApiError, Client};

#[derive(Parser, Debug)]
#[command(
    name = "onehop-admin",
    version,
    about = "Provision a onehop farm: domains, subscriber accounts, aliases, bulk imports, carriers and E.164 numbers",
    long_about = "The operators' client of the provisioning API that every manager serves (HTTPS on TCP 8443, mutual TLS with an admin certificate of the farm's CA; docs/provisioning.md).\n\nPoint it at a farm started with onehop-farm (--farm DIR: the managers, the CA and the admin certificate are read from DIR/farm.json), or at managers with --api and the certificate files. Managers are tried in turn; writes are applied once committed by the managers' Raft.\n\nPasswords are read from standard input or a file, or generated, never taken on the command line; they are turned into digests by the manager and never stored.",
    after_help = "Examples:\n  onehop-admin --farm demo domains add example.test\n  onehop-admin --farm demo accounts add alice@example.test --generate-password\n  printf 'secret-pass\\n' | onehop-admin --farm demo accounts update alice@example.test --password-stdin\n  onehop-admin --farm demo accounts list --domain example.test\n  onehop-admin --farm demo import subscribers.csv --dry-run\n  onehop-admin --farm demo changes --since 0\n  onehop-admin --farm demo carriers add ACME --name 'Acme Telecom'\n  onehop-admin --farm demo blocks add +15550100 +15550199 --carrier ACME\n  onehop-admin --farm demo numbers allocate +15550100 --route-account alice@example.test --generate-pin\n  printf '123456\\n' | onehop-admin --farm demo numbers port +15550100 --carrier BETA --pin-stdin --route-uri sip:+15550100@beta.example"
)]
struct Cli {
    /// A farm's directory (onehop-farm up --dir DIR): managers and certificates from farm.json.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["api", "cert", "key", "ca"])]
    farm: Option<PathBuf>,
    /// A manager's API address (IP or IP:PORT, port 8443 by default); repeat for each manager.
    #[arg(long, value_name = "ADDR")]
    api: Vec<String>,
    /// The admin certificate (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["key", "ca"])]
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The farm's CA certificate (PEM).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The farm's CRL (PEM), to refuse a revoked manager.
    #[arg(long, value_name = "FILE")]
    crl: Option<PathBuf>,
    /// Print the API's JSON answers instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Who leads, the store's version and counts.
    Status,
    /// Provisioned domains.
    #[command(subcommand, visible_alias = "domain")]
    Domains(DomainCmd),
    /// Subscriber accounts.
    #[command(subcommand)]
    Accounts(AccountCmd),
    /// Other addresses that reach an account.
    #[command(subcommand)]
    Aliases(AliasCmd),
    /// Add accounts from a CSV file (header row: user,domain,password[,display_name][,enabled],
    /// or ha1_md5,ha1_sha256 instead of password).
    Import(ImportArgs),
    /// Carriers of the number registry (by their OCN).
    #[command(subcommand, visible_alias = "carrier")]
    Carriers(numbers::CarrierCmd),
    /// Blocks of E.164 numbers held by carriers.
    #[command(subcommand, visible_alias = "block")]
    Blocks(numbers::BlockCmd),
    /// E.164 numbers: allocate, route, port, release, whois.
    #[command(subcommand, visible_alias = "number")]
    Numbers(numbers::NumberCmd),
    /// Changes after a version (the change log).
    Changes {
        /// Changes after this version.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Subcommand, Debug)]
enum DomainCmd {
    /// List them.
    List,
    /// Add one.
    Add { name: String },
    /// Remove one (refused while it has accounts or aliases).
    Remove { name: String },
    /// Set how the domain's subscribers dial local numbers (or --clear it).
    DialPlan {
        name: String,
        /// The country calling code (1, 49).
        #[arg(long, required_unless_present = "clear")]
        country_code: Option<String>,
        /// The trunk prefix of national numbers (0; empty: none).
        #[arg(long, default_value = "")]
        national_prefix: String,
        /// The prefix of international numbers (00, 011; empty: none).
        #[arg(long, default_value = "")]
        international_prefix: String,
        /// Remove the dial plan.
        #[arg(long, conflicts_with = "country_code")]
        clear: bool,
    },
}

#[derive(Args, Debug, Default)]
struct PasswordArgs {
    /// Read the password from the first line of standard input.
    #[arg(long, conflicts_with_all = ["password_file", "generate_password"])]
    password_stdin: bool,
    /// Read the password from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "generate_password")]
    password_file: Option<PathBuf>,
    /// Make up a password (printed once).
    #[arg(long)]
    generate_password: bool,
}

#[derive(Subcommand, Debug)]
enum AccountCmd {
    /// Add an account.
    Add {
        /// user@domain (the domain must be provisioned).
        aor: String,
        #[command(flatten)]
        password: PasswordArgs,
        /// The name shown to callees.
        #[arg(long)]
        display_name: Option<String>,
        /// Create it blocked.
        #[arg(long)]
        disabled: bool,
    },
    /// Show an account (never its credentials).
    Get { aor: String },
    /// Change an account: password, display name, enabled or blocked.
    Update {
        aor: String,
        #[command(flatten)]
        password: PasswordArgs,
        /// New display name.
        #[arg(long, conflicts_with = "clear_display_name")]
        display_name: Option<String>,
        /// Remove the display name.
        #[arg(long)]
        clear_display_name: bool,
        /// Allow it to register and call.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Block it.
        #[arg(long)]
        disable: bool,
    },
    /// Remove an account and its aliases.
    Remove { aor: String },
    /// List accounts, a page at a time (all pages with --all).
    List {
        /// Only this domain's.
        #[arg(long)]
        domain: Option<String>,
        /// Only users whose name starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Start after this AOR (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// Page size (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Every page.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AliasCmd {
    /// Make ALIAS (user@domain) reach the account AOR.
    Add { alias: String, aor: String },
    /// Which account an alias reaches.
    Get { alias: String },
    /// Remove an alias.
    Remove { alias: String },
}

#[derive(Args, Debug)]
struct ImportArgs {
    /// The CSV file.
    file: PathBuf,
    /// Check every row against the farm's state without adding anything.
    #[arg(long)]
    dry_run: bool,
    /// Rows per request (at most 10,000).
    #[arg(long, default_value_t = 1000)]
    chunk: usize,
    /// The import's id. Running the same import again with the same id adds only the rows that
    /// had not landed (an interrupted import resumes; nothing is added twice).
    #[arg(long)]
    import_id: Option<String>,
}

/// The `onehop-admin` program.
pub fn cli_main(args: Vec<OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("onehop-admin: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("onehop-admin: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client(cli: &Cli) -> anyhow::Result<Client> {
    if let Some(dir) = &cli.farm {
        return Client::for_farm(dir);
    }
    anyhow::ensure!(
        !cli.api.is_empty(),
        "say where the managers are: --farm DIR, or --api ADDR (repeatable) with --cert, --key and --ca"
    );
    let (Some(cert), Some(key), Some(ca)) = (&cli.cert, &cli.key, &cli.ca) else {
        anyhow::bail!(
            "--api needs --cert, --key and --ca (the admin certificate and the farm's CA)"
        );
    };
    let managers = cli
        .api
        .iter()
        .map(|a| parse_addr(a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Client::new(
        managers,
        &TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            crl: cli.crl.clone(),
        },
    )
}

fn parse_addr(a: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(s) = a.parse::<SocketAddr>() {
        return Ok(s);
    }
    a.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, client::API_PORT))
        .with_context(|| format!("--api {a:?}: give an IP address or IP:PORT"))
}

/// The first line of `r` (`from` names it), which must hold `what` (a password, a PIN).
fn read_first_line(r: &mut dyn BufRead, from: &str, what: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)
        .with_context(|| format!("reading the {what} from {from}"))?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    anyhow::ensure!(!p.is_empty(), "no {what} on the first line of {from}");
    Ok(p)
}

/// A secret (`what`: a password, a PIN) from the first line of standard input or of `file`,
/// or made up by `generate`, never from the command line; `None` when none was asked for.
/// The flag says it was made up.
pub(crate) fn secret(
    stdin: bool,
    file: Option<&Path>,
    generate: Option<fn() -> String>,
    what: &str,
) -> anyhow::Result<Option<(String, bool)>> {
    if stdin {
        let stdin = std::io::stdin();
        return Ok(Some((
            read_first_line(&mut stdin.lock(), "standard input", what)?,
            false,
        )));
    }
    if let Some(f) = file {
        let file = std::fs::File::open(f).with_context(|| format!("{}", f.display()))?;
        let mut r = std::io::BufReader::new(file);
        return Ok(Some((
            read_first_line(&mut r, &f.display().to_string(), what)?,
            false,
        )));
    }
    Ok(generate.map(|g| (g(), true)))
}

/// A password from the arguments (`None`: none asked for); `generated` says it was made up.
fn password(p: &PasswordArgs) -> anyhow::Result<Option<(String, bool)>> {
    secret(
        p.password_stdin,
        p.password_file.as_deref(),
        p.generate_password
            .then_some(generate_password as fn() -> String),
        "password",
    )
}

/// Lists a paged collection: `query` (path and filters, with `?`), a page at a time from
/// `after`, the items of `field` one `line` each (every page with `all`). With `json`, one
/// page is printed as the API answered it, or with `all` every item in one `{field: [...]}`.
pub(crate) async fn list_pages(
    c: &Client,
    query: &str,
    field: &str,
    mut after: Option<String>,
    all: bool,
    json_out: bool,
    line: impl Fn(&Value) -> String,
) -> anyhow::Result<()> {
    let mut out = Vec::new();
    loop {
        let mut q = query.to_string();
        if let Some(a) = &after {
            q.push_str(&format!("&after={}", client::segment(a)));
        }
        let v: Value = c.call(Method::GET, &q, None).await?;
        let next = v["next"].as_str().map(str::to_string);
        if json_out && !all {
            print(true, &v, |_| String::new());
            break;
        }
        for item in v[field].as_array().into_iter().flatten() {
            if json_out {
                out.push(item.clone());
            } else {
                println!("{}", line(item));
            }
        }
        match next {
            Some(n) if all => after = Some(n),
            Some(n) => {
                if !json_out {
                    eprintln!("(more: --after {n}, or --all)");
                }
                break;
            }
            None => break,
        }
    }
    if json_out && all {
        print(true, &json!({ field: out }), |_| String::new());
    }
    Ok(())
}

/// 20 random letters and digits (about 119 bits).
pub fn generate_password() -> String {
    use rand::Rng;
    const SET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..20)
        .map(|_| SET[rng.gen_range(0..SET.len())] as char)
        .collect()
}

fn split_aor(aor: &str) -> anyhow::Result<(&str, &str)> {
    aor.strip_prefix("sip:")
        .unwrap_or(aor)
        .rsplit_once('@')
        .ok_or_else(|| anyhow::anyhow!("{aor:?} is not user@domain"))
}

pub(crate) fn print(json_out: bool, v: &Value, text: impl FnOnce(&Value) -> String) {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("{}", text(v));
    }
}

fn account_line(a: &Value) -> String {
    let s = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let enabled = a.get("enabled").and_then(Value::as_bool).unwrap_or(true);
    let aliases: Vec<String> = a
        .get("aliases")
        .and_then(Value::as_array)
        .map(|v| {
            v.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{}{}{}{}",
        s("aor"),
        match a.get("display_name").and_then(Value::as_str) {
            Some(d) => format!("  \"{d}\""),
            None => String::new(),
        },
        if enabled { "" } else { "  [blocked]" },
        if aliases.is_empty() {
            String::new()
        } else {
            format!("  aliases: {}", aliases.join(", "))
        }
    )
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let c = client(&cli)?;
    let j = cli.json;
    match &cli.command {
        Command::Status => {
            let v: Value = c.call(Method::GET, "/v1/status", None).await?;
            print(j, &v, |v| {
                format!(
                    "manager {} (term {}, leader {}), version {}: {} domains, {} accounts, {} aliases",
                    v["manager"].as_str().unwrap_or("?"),
                    v["term"],
                    v["leader"].as_str().unwrap_or("none"),
                    v["version"],
                    v["domains"],
                    v["accounts"],
                    v["aliases"]
                )
            });
        }
        Command::Carriers(cmd) => numbers::carriers(&c, cmd, j).await?,
        Command::Blocks(cmd) => numbers::blocks(&c, cmd, j).await?,
        Command::Numbers(cmd) => numbers::numbers(&c, cmd, j).await?,
        Command::Domains(DomainCmd::DialPlan {
            name,
            country_code,
            national_prefix,
            international_prefix,
            clear,
        }) => {
            let plan = match (clear, country_code) {
                (false, Some(cc)) => Some((
                    cc.as_str(),
                    national_prefix.as_str(),
                    international_prefix.as_str(),
                )),
                _ => None,
            };
            numbers::dial_plan(&c, name, plan, j).await?
        }
        Command::Domains(DomainCmd::List) => {
            let v: Value = c.call(Method::GET, "/v1/domains", None).await?;
            print(j, &v, |v| {
                v["domains"]
                    .as_array()
                    .map(|ds| {
                        ds.iter()
                            .filter_map(|d| d["name"].as_str().map(str::to_string))
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default()
            });
        }
        Command::Domains(DomainCmd::Add { name }) => {
            let v: Value = c
                .call(Method::POST, "/v1/domains", Some(&json!({ "name": name })))
                .await?;
            print(j, &v, |v| {
                format!("added domain {}", v["name"].as_str().unwrap_or(name))
            });
        }
        Command::Domains(DomainCmd::Remove { name }) => {
            let _: Value = c
                .call(
                    Method::DELETE,
                    &format!("/v1/domains/{}", client::segment(name)),
                    None,
                )
                .await?;
            print(j, &json!({ "removed": name }), |_| {
                format!("removed domain {name}")
            });
        }
        Command::Accounts(AccountCmd::Add {
            aor,
            password: p,
            display_name,
            disabled,
        }) => {
            let (user, domain) = split_aor(aor)?;
            let Some((pw, generated)) = password(p)? else {
                anyhow::bail!("give the password with --password-stdin or --password-file, or --generate-password");
            };
            let mut body =
                json!({ "user": user, "domain": domain, "password": pw, "enabled": !disabled });
            if let Some(d) = display_name {
                body["display_name"] = json!(d);
            }
            let v: Value = c.call(Method::POST, "/v1/accounts", Some(&body)).await?;
            print(j, &v, |v| format!("added {}", account_line(v)));
            if generated {
                println!("password for {aor}: {pw}");
            }
        }
        Command::Accounts(AccountCmd::Get { aor }) => {
            let v: Value = c
                .call(
                    Method::GET,
                    &format!("/v1/accounts/{}", client::segment(aor)),
                    None,
                )
                .await?;
            print(j, &v, account_line);
        }
        Command::Accounts(AccountCmd::Update {
            aor,
            password: p,
            display_name,
            clear_display_name,
            enable,
            disable,
        }) => {
            let mut body = json!({});
            let pw = password(p)?;
            if let Some((pw, _)) = &pw {
                body["password"] = json!(pw);
            }
            if let Some(d) = display_name {
                body["display_name"] = json!(d);
            }
            if *clear_display_name {
                body["display_name"] = Value::Null;
            }
            if *enable {
                body["enabled"] = json!(true);
            }
            if *disable {
                body["enabled"] = json!(false);
            }
            anyhow::ensure!(
                body.as_object().is_some_and(|o| !o.is_empty()),
                "nothing to change: give a password option, --display-name, --clear-display-name, --enable or --disable"
            );
            let v: Value = c
                .call(
                    Method::PATCH,
                    &format!("/v1/accounts/{}", client::segment(aor)),
                    Some(&body),
                )
                .await?;
            print(j, &v, |v| format!("updated {}", account_line(v)));
            if let Some((pw, true)) = pw {
                println!("password for {aor}: {pw}");
            }
        }
        Command::Accounts(AccountCmd::Remove { aor }) => {
            let _: Value = c
                .call(
                    Method::DELETE,
                    &format!("/v1/accounts/{}", client::segment(aor)),
                    None,
                )
                .await?;
            print(j, &json!({ "removed": aor }), |_| format!("removed {aor}"));
        }
        Command::Accounts(AccountCmd::List {
            domain,
            prefix,
            after,
            limit,
            all,
        }) => {
            let mut q = format!(
                "/v1/accounts?limit={limit}&prefix={}",
                client::segment(prefix)
            );
            if let Some(d) = domain {
                q.push_str(&format!("&domain={}", client::segment(d)));
            }
            list_pages(&c, &q, "accounts", after.clone(), *all, j, account_line).await?;
        }
        Command::Aliases(AliasCmd::Add { alias, aor }) => {
            let v: Value = c
                .call(
                    Method::POST,
                    &format!("/v1/accounts/{}/aliases", client::segment(aor)),
                    Some(&json!({ "alias": alias })),
                )
                .await?;
            print(j, &v, |v| {
                format!("{alias} now reaches {}", account_line(v))
            });
        }
        Command::Aliases(AliasCmd::Get { alias }) => {
            let v: Value = c
                .call(
                    Method::GET,
                    &format!("/v1/aliases/{}", client::segment(alias)),
                    None,
                )
                .await?;
            print(j, &v, |v| {
                format!("{alias} -> {}", v["aor"].as_str().unwrap_or("?"))
            });
        }
        Command::Aliases(AliasCmd::Remove { alias }) => {
            let _: Value = c
                .call(
                    Method::DELETE,
                    &format!("/v1/aliases/{}", client::segment(alias)),
                    None,
                )
                .await?;
            print(j, &json!({ "removed": alias }), |_| {
                format!("removed alias {alias}")
            });
        }
        Command::Changes { since, limit } => {
            let v: Value = c
                .call(
                    Method::GET,
                    &format!("/v1/changes?since={since}&limit={limit}"),
                    None,
                )
                .await?;
            print(j, &v, |v| {
                let mut lines: Vec<String> = v["changes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        let what = c["kind"].as_str().unwrap_or("?");
                        let subject = c["account"]["aor"]
                            .as_str()
                            .or(c["aor"].as_str())
                            .or(c["name"].as_str())
                            .unwrap_or("");
                        let alias = c["alias"]
                            .as_str()
                            .map(|a| format!(" {a} ->"))
                            .unwrap_or_default();
                        format!("{:>8}  {what}{alias} {subject}", c["version"])
                    })
                    .collect();
                if v["truncated"].as_bool() == Some(true) {
                    lines.push(format!(
                        "(changes before version {} are no longer kept: list the accounts instead)",
                        v["first"]
                    ));
                }
                lines.push(format!("(version now {})", v["version"]));
                lines.join("\n")
            });
        }
        Command::Import(args) => return import(&c, args, j).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// Chunks of rows of a CSV file, each re-encoded with the header: (number of its first row,
/// rows, CSV). A row whose user and domain came earlier in the file is not sent; it is
/// reported as (row, message) and ends its chunk, so that the rows of a chunk stay numbered
/// in sequence.
type Chunks = (u64, Vec<(u64, u64, Vec<u8>)>, Vec<(u64, String)>);

fn chunks(path: &Path, size: usize) -> anyhow::Result<Chunks> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("{}", path.display()))?;
    let headers = rdr
        .headers()
        .with_context(|| format!("{}: the header row", path.display()))?
        .clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let (user_col, domain_col) = (col("user"), col("domain"));
    let mut seen = std::collections::HashMap::<(String, String), u64>::new();
    let mut dups = Vec::new();
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut cur: Option<(u64, u64, csv::Writer<Vec<u8>>)> = None;
    let close = |cur: &mut Option<(u64, u64, csv::Writer<Vec<u8>>)>,
                 out: &mut Vec<(u64, u64, Vec<u8>)>|
     -> anyhow::Result<()> {
        if let Some((first, n, w)) = cur.take() {
            out.push((
                first,
                n,
                w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?,
            ));
        }
        Ok(())
    };
    for rec in rdr.records() {
        total += 1;
        let rec = rec.with_context(|| format!("{}: row {total}", path.display()))?;
        if let (Some(u), Some(d)) = (user_col, domain_col) {
            if let (Some(user), Some(domain)) = (rec.get(u), rec.get(d)) {
                let key = (user.trim().to_string(), domain.trim().to_ascii_lowercase());
                if let Some(first) = seen.get(&key) {
                    dups.push((
                        total,
                        format!(
                            "{}@{} appears twice in this file (first at row {first})",
                            key.0, key.1
                        ),
                    ));
                    close(&mut cur, &mut out)?;
                    continue;
                }
                seen.insert(key, total);
            }
        }
        let (_, n, w) = cur.get_or_insert_with(|| {
            let mut w = csv::Writer::from_writer(Vec::new());
            let _ = w.write_record(&headers);
            (total, 0, w)
        });
        w.write_record(&rec)?;
        *n += 1;
        if *n as usize == size {
            close(&mut cur, &mut out)?;
        }
    }
    close(&mut cur, &mut out)?;
    Ok((total, out, dups))
}

async fn import(c: &Client, args: &ImportArgs, json_out: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (1..=10_000).contains(&args.chunk),
        "--chunk must be 1 to 10000 rows"
    );
    let id = match &args.import_id {
        Some(id) => id.clone(),
        None => format!("import-{:016x}", rand::random::<u64>()),
    };
    let (total, chunks, dups) = chunks(&args.file, args.chunk)?;
    if !json_out {
        eprintln!(
            "{} {} rows from {} (import id {id}{})",
            if args.dry_run {
                "checking"
            } else {
                "importing"
            },
            total,
            args.file.display(),
            if args.dry_run {
                ""
            } else {
                "; run again with --import-id to resume"
            }
        );
    }
    let bar = if json_out {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} rows  {per_sec}  eta {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut added, mut replayed) = (0u64, 0u64);
    let mut errors: Vec<Value> = dups
        .iter()
        .map(|(row, message)| json!({ "row": row, "code": "exists", "field": "user", "message": message }))
        .collect();
    let mut failed = dups.len() as u64;
    bar.inc(failed);
    for (first, n, body) in chunks {
        let path = format!(
            "/v1/import?import={}&first_row={first}&dry_run={}",
            client::segment(&id),
            args.dry_run
        );
        let (status, bytes) = c
            .raw(Method::POST, &path, "text/csv", Bytes::from(body), true)
            .await
            .map_err(|e| {
                anyhow::anyhow!("{e}; rows before {first} are done: run the same command with --import-id {id} to resume")
            })?;
        let v: Value = client::decode(status, &bytes).map_err(|e| {
            anyhow::anyhow!("{e}; rows before {first} are done: run the same command with --import-id {id} to resume")
        })?;
        added += v["added"].as_u64().unwrap_or(0);
        failed += v["failed"].as_u64().unwrap_or(0);
        replayed += v["replayed_batches"].as_u64().unwrap_or(0);
        errors.extend(v["errors"].as_array().cloned().unwrap_or_default());
        bar.inc(n);
        bar.set_message(format!("{added} added, {failed} refused"));
    }
    bar.finish();
    errors.sort_by_key(|e| e["row"].as_u64());
    let summary = json!({
        "import": id,
        "dry_run": args.dry_run,
        "rows": total,
        "added": added,
        "failed": failed,
        "replayed_batches": replayed,
        "errors": errors,
    });
    if json_out {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{}: {total} rows, {added} {}, {failed} refused{}",
            if args.dry_run { "dry run" } else { "import" },
            if args.dry_run {
                "would be added"
            } else {
                "added"
            },
            if replayed > 0 {
                format!(" ({replayed} batches had landed before and were not applied again)")
            } else {
                String::new()
            }
        )?;
        for e in errors.iter().take(100) {
            writeln!(
                out,
                "  row {}: {}{}",
                e["row"],
                e["message"].as_str().unwrap_or(""),
                e["field"]
                    .as_str()
                    .map(|f| format!(" (field {f})"))
                    .unwrap_or_default()
            )?;
        }
        if errors.len() > 100 {
            writeln!(
                out,
                "  ... {} more (--json lists them all)",
                errors.len() - 100
            )?;
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
