//! One program for the whole farm: run as `onehop-farm` it launches farms; run through a link
//! named after a daemon (`DIR/bin/onehop-node`, ...) it is that daemon. The farm links
//! `DIR/bin/onehop-*` to itself, so every member runs the same build as the launcher.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

/// mimalloc: the SIP and store paths allocate per message, and glibc's malloc cost a tenth of a
/// node's CPU under load (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let prog = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|s| s.to_str())
        .unwrap_or("onehop-farm")
        .to_string();
    match prog.as_str() {
        "onehop-eventserver" => onehop_eventserver::cli_main(args),
        "onehop-manager" => onehop_manager::cli_main(args),
        "onehop-dns" => onehop_dns::cli_main(args),
        "onehop-node" => onehop_node::cli_main(args),
        "onehop-monitor" => onehop_monitor::cli_main(args),
        "onehop-certs" => onehop_certs::cli_main(args),
        "onehop-admin" => onehop_admin::cli_main(args),
        _ => onehop_farm::cli_main(args),
    }
}
