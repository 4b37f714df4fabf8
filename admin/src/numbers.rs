//! The number registry's commands: carriers, blocks, numbers (allocate, get, whois, history,
//! update, release, port, list, changes) and domain dial plans.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

use crate::client::{self, Client};
use crate::print;

/// `carriers ...`
#[derive(Subcommand, Debug)]
pub enum CarrierCmd {
    /// List them.
    List,
    /// Add a carrier (farm-wide administrators).
    Add {
        /// Its operating company number (OCN): letters, digits, '-', '_'.
        ocn: String,
        /// Its name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Remove a carrier (refused while it holds blocks or numbers).
    Remove { ocn: String },
}

/// `blocks ...`
#[derive(Subcommand, Debug)]
pub enum BlockCmd {
    /// List them.
    List,
    /// Add a block FIRST..LAST (same length, E.164) for a carrier (farm-wide administrators).
    Add {
        first: String,
        last: String,
        /// The carrier (OCN) that holds it.
        #[arg(long)]
        carrier: String,
    },
    /// Show a block.
    Get { first: String },
    /// Remove a block (refused while numbers are allocated from it).
    Remove { first: String },
}

/// Where calls to a number go, and its properties.
#[derive(Args, Debug, Default)]
pub struct NumberArgs {
    /// Route calls to this account (user@domain).
    #[arg(long, value_name = "AOR", conflicts_with_all = ["route_uri", "unroute"])]
    route_account: Option<String>,
    /// Route calls to this SIP URI of another network.
    #[arg(long, value_name = "URI", conflicts_with = "unroute")]
    route_uri: Option<String>,
    /// Route calls nowhere (ENUM and the proxies answer as for an unrouted number).
    #[arg(long)]
    unroute: bool,
    /// The carrier's reference of whom it is assigned to.
    #[arg(long)]
    assignee: Option<String>,
    /// The caller name shown for it.
    #[arg(long)]
    caller_name: Option<String>,
    /// Where it is.
    #[arg(long)]
    location: Option<String>,
    /// fixed, mobile, voip, tollfree, premium, shared, pager or other.
    #[arg(long)]
    service_type: Option<String>,
}

/// Where a PIN comes from: never the command line.
#[derive(Args, Debug, Default)]
pub struct PinArgs {
    /// Read the porting PIN from the first line of standard input.
    #[arg(long, conflicts_with_all = ["pin_file", "generate_pin"])]
    pin_stdin: bool,
    /// Read the porting PIN from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "generate_pin")]
    pin_file: Option<PathBuf>,
    /// Make up a 6-digit porting PIN (printed once, for the subscriber).
    #[arg(long)]
    generate_pin: bool,
}

/// `numbers ...`
#[derive(Subcommand, Debug)]
pub enum NumberCmd {
    /// Allocate NUMBER, or the next free number of a block (--block FIRST).
    Allocate {
        /// The number (E.164: +15550100).
        #[arg(required_unless_present = "block")]
        number: Option<String>,
        /// Take the next free number of the block starting at FIRST.
        #[arg(long, value_name = "FIRST", conflicts_with = "number")]
        block: Option<String>,
        #[command(flatten)]
        fields: NumberArgs,
        #[command(flatten)]
        pin: PinArgs,
    },
    /// Show a number (its carrier's administrators).
    Get { number: String },
    /// A number's public properties (anyone).
    Whois { number: String },
    /// Every change a number had.
    History { number: String },
    /// Change a number's routing or properties, or its porting PIN.
    Update {
        number: String,
        #[command(flatten)]
        fields: NumberArgs,
        #[command(flatten)]
        pin: PinArgs,
    },
    /// Release a number back to its block.
    Release { number: String },
    /// Port a number to CARRIER (its administrators), with the subscriber's PIN.
    Port {
        number: String,
        /// The carrier it moves to.
        #[arg(long)]
        carrier: String,
        #[command(flatten)]
        fields: NumberArgs,
        #[command(flatten)]
        pin: PinArgs,
    },
    /// List numbers, a page at a time (all pages with --all).
    List {
        /// Only this block's (its first number).
        #[arg(long)]
        block: Option<String>,
        /// Start after this number.
        #[arg(long)]
        after: Option<String>,
        /// Page size (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Every page.
        #[arg(long)]
        all: bool,
    },
    /// The registry's changes after a version (carriers, blocks, numbers; public fields).
    Changes {
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

fn fields_json(f: &NumberArgs, body: &mut Value) {
    if let Some(a) = &f.route_account {
        body["route"] = json!({ "account": a });
    }
    if let Some(u) = &f.route_uri {
        body["route"] = json!({ "uri": u });
    }
    if f.unroute {
        body["route"] = Value::Null;
    }
    for (k, v) in [
        ("assignee", &f.assignee),
        ("caller_name", &f.caller_name),
        ("location", &f.location),
        ("service_type", &f.service_type),
    ] {
        if let Some(v) = v {
            body[k] = json!(v);
        }
    }
}

/// A random 6-digit PIN.
fn generate_pin() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..6)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

/// The PIN asked for (`None`: none), and whether it was made up.
fn pin(p: &PinArgs) -> anyhow::Result<Option<(String, bool)>> {
    crate::secret(
        p.pin_stdin,
        p.pin_file.as_deref(),
        p.generate_pin.then_some(generate_pin as fn() -> String),
        "PIN",
    )
}

/// A random idempotency key for one command (its retries reuse it).
fn new_key() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    format!("admin-{:016x}{:016x}", rng.gen::<u64>(), rng.gen::<u64>())
}

/// One line of a number.
pub fn number_line(n: &Value) -> String {
    let s = |k: &str| n.get(k).and_then(Value::as_str).map(str::to_string);
    let mut out = format!(
        "{}  carrier {}",
        s("number").unwrap_or_default(),
        s("carrier").unwrap_or_default()
    );
    match s("sip_uri") {
        Some(u) => out.push_str(&format!("  -> {u}")),
        None => out.push_str("  (not routed)"),
    }
    for k in ["caller_name", "location", "service_type", "assignee"] {
        if let Some(v) = s(k) {
            out.push_str(&format!("  {k}={v}"));
        }
    }
    if n.get("has_pin").and_then(Value::as_bool) == Some(true) {
        out.push_str("  [PIN set]");
    }
    out
}

fn block_line(b: &Value) -> String {
    format!(
        "{}..{}  carrier {}  {} of {} allocated",
        b["first"].as_str().unwrap_or("?"),
        b["last"].as_str().unwrap_or("?"),
        b["carrier"].as_str().unwrap_or("?"),
        b["allocated"],
        b["size"]
    )
}

/// Runs a `carriers` command.
pub async fn carriers(c: &Client, cmd: &CarrierCmd, j: bool) -> anyhow::Result<()> {
    match cmd {
        CarrierCmd::List => {
            let v: Value = c.call(Method::GET, "/v1/carriers", None).await?;
            print(j, &v, |v| {
                v["carriers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        format!(
                            "{}  {}",
                            c["ocn"].as_str().unwrap_or("?"),
                            c["name"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        CarrierCmd::Add { ocn, name } => {
            let v: Value = c
                .call(
                    Method::POST,
                    "/v1/carriers",
                    Some(&json!({ "ocn": ocn, "name": name })),
                )
                .await?;
            print(j, &v, |v| {
                format!("added carrier {}", v["ocn"].as_str().unwrap_or(ocn))
            });
        }
        CarrierCmd::Remove { ocn } => {
            let _: Value = c
                .call(
                    Method::DELETE,
                    &format!("/v1/carriers/{}", client::segment(ocn)),
                    None,
                )
                .await?;
            print(j, &json!({ "removed": ocn }), |_| {
                format!("removed carrier {ocn}")
            });
        }
    }
    Ok(())
}

/// Runs a `blocks` command.
pub async fn blocks(c: &Client, cmd: &BlockCmd, j: bool) -> anyhow::Result<()> {
    match cmd {
        BlockCmd::List => {
            let v: Value = c.call(Method::GET, "/v1/blocks", None).await?;
            print(j, &v, |v| {
                v["blocks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(block_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        BlockCmd::Add {
            first,
            last,
            carrier,
        } => {
            let v: Value = c
                .call(
                    Method::POST,
                    "/v1/blocks",
                    Some(&json!({ "first": first, "last": last, "carrier": carrier })),
                )
                .await?;
            print(j, &v, |v| format!("added block {}", block_line(v)));
        }
        BlockCmd::Get { first } => {
            let v: Value = c
                .call(
                    Method::GET,
                    &format!("/v1/blocks/{}", client::segment(first)),
                    None,
                )
                .await?;
            print(j, &v, block_line);
        }
        BlockCmd::Remove { first } => {
            let _: Value = c
                .call(
                    Method::DELETE,
                    &format!("/v1/blocks/{}", client::segment(first)),
                    None,
                )
                .await?;
            print(j, &json!({ "removed": first }), |_| {
                format!("removed block {first}")
            });
        }
    }
    Ok(())
}

/// Runs a `numbers` command.
pub async fn numbers(c: &Client, cmd: &NumberCmd, j: bool) -> anyhow::Result<()> {
    let path = |n: &str, tail: &str| format!("/v1/numbers/{}{tail}", client::segment(n));
    match cmd {
        NumberCmd::Allocate {
            number,
            block,
            fields,
            pin: p,
        } => {
            let mut body = json!({});
            if let Some(n) = number {
                body["number"] = json!(n);
            }
            if let Some(b) = block {
                body["block"] = json!(b);
            }
            fields_json(fields, &mut body);
            let pin = pin(p)?;
            if let Some((p, _)) = &pin {
                body["pin"] = json!(p);
            }
            let v: Value = c
                .call_idempotent(Method::POST, "/v1/numbers", Some(&body), &new_key())
                .await?;
            print(j, &v, |v| format!("allocated {}", number_line(v)));
            if let Some((p, true)) = pin {
                println!(
                    "porting PIN for {}: {p}",
                    v["number"].as_str().unwrap_or("?")
                );
            }
        }
        NumberCmd::Get { number } => {
            let v: Value = c.call(Method::GET, &path(number, ""), None).await?;
            print(j, &v, number_line);
        }
        NumberCmd::Whois { number } => {
            let v: Value = c.call(Method::GET, &path(number, "/whois"), None).await?;
            print(j, &v, |v| {
                let mut s = format!(
                    "{}  carrier {} ({})",
                    v["number"].as_str().unwrap_or("?"),
                    v["carrier"].as_str().unwrap_or("?"),
                    v["carrier_name"].as_str().unwrap_or("")
                );
                for k in ["caller_name", "location", "service_type"] {
                    if let Some(x) = v[k].as_str() {
                        s.push_str(&format!("  {k}={x}"));
                    }
                }
                s
            });
        }
        NumberCmd::History { number } => {
            let v: Value = c.call(Method::GET, &path(number, "/history"), None).await?;
            print(j, &v, |v| {
                v["history"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        format!(
                            "v{}  {}  {}  by {}  {}",
                            e["version"],
                            e["action"].as_str().unwrap_or("?"),
                            e["carrier"].as_str().unwrap_or("?"),
                            e["by"].as_str().unwrap_or("?"),
                            e["detail"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        NumberCmd::Update {
            number,
            fields,
            pin: p,
        } => {
            let mut body = json!({});
            fields_json(fields, &mut body);
            let pin = pin(p)?;
            if let Some((p, _)) = &pin {
                body["pin"] = json!(p);
            }
            anyhow::ensure!(
                body.as_object().is_some_and(|o| !o.is_empty()),
                "nothing to change: give --route-account, --route-uri, --unroute, a property or a PIN option"
            );
            let v: Value = c
                .call_idempotent(Method::PATCH, &path(number, ""), Some(&body), &new_key())
                .await?;
            print(j, &v, |v| format!("updated {}", number_line(v)));
            if let Some((p, true)) = pin {
                println!("porting PIN for {number}: {p}");
            }
        }
        NumberCmd::Release { number } => {
            let _: Value = c
                .call_idempotent(Method::DELETE, &path(number, ""), None, &new_key())
                .await?;
            print(j, &json!({ "released": number }), |_| {
                format!("released {number}")
            });
        }
        NumberCmd::Port {
            number,
            carrier,
            fields,
            pin: p,
        } => {
            let Some((pin, generated)) = pin(p)? else {
                anyhow::bail!("porting needs the subscriber's PIN: --pin-stdin or --pin-file");
            };
            anyhow::ensure!(
                !generated,
                "porting needs the subscriber's PIN, not a new one"
            );
            let mut body = json!({ "carrier": carrier, "pin": pin });
            fields_json(fields, &mut body);
            let v: Value = c
                .call_idempotent(
                    Method::POST,
                    &path(number, "/port"),
                    Some(&body),
                    &new_key(),
                )
                .await?;
            print(j, &v, |v| format!("ported {}", number_line(v)));
        }
        NumberCmd::List {
            block,
            after,
            limit,
            all,
        } => {
            let mut q = format!("/v1/numbers?limit={limit}");
            if let Some(b) = block {
                q.push_str(&format!("&block={}", client::segment(b)));
            }
            crate::list_pages(c, &q, "numbers", after.clone(), *all, j, number_line).await?;
        }
        NumberCmd::Changes { since, limit } => {
            let v: Value = c
                .call(
                    Method::GET,
                    &format!("/v1/numbers/changes?since={since}&limit={limit}"),
                    None,
                )
                .await?;
            print(j, &v, |v| {
                let mut lines: Vec<String> = v["changes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        format!(
                            "v{}  {}  {}",
                            c["version"],
                            c["kind"].as_str().unwrap_or("?"),
                            c["number"]
                                .as_str()
                                .or(c["first"].as_str())
                                .or(c["ocn"].as_str())
                                .unwrap_or("")
                        )
                    })
                    .collect();
                lines.push(format!(
                    "(version {}{})",
                    v["version"],
                    if v["more"].as_bool() == Some(true) {
                        ", more follow"
                    } else {
                        ""
                    }
                ));
                lines.join("\n")
            });
        }
    }
    Ok(())
}

/// Sets or clears a domain's dial plan.
pub async fn dial_plan(
    c: &Client,
    domain: &str,
    plan: Option<(&str, &str, &str)>,
    j: bool,
) -> anyhow::Result<()> {
    let path = format!("/v1/domains/{}/dial-plan", client::segment(domain));
    match plan {
        Some((cc, national, international)) => {
            let v: Value = c
                .call(
                    Method::PUT,
                    &path,
                    Some(&json!({
                        "country_code": cc,
                        "national_prefix": national,
                        "international_prefix": international,
                    })),
                )
                .await?;
            print(j, &v, |_| {
                format!(
                    "{domain}: country code {cc}, national prefix {national:?}, international prefix {international:?}"
                )
            });
        }
        None => {
            let _: Value = c.call(Method::DELETE, &path, None).await?;
            print(j, &json!({ "cleared": domain }), |_| {
                format!("{domain}: no dial plan")
            });
        }
    }
    Ok(())
}
