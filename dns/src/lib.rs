//! onehop-dns: authoritative DNS for the overlay (work in progress).

/// Command-line entry point of the `onehop-dns` daemon.
pub fn cli_main(args: Vec<std::ffi::OsString>) -> std::process::ExitCode {
    let _ = args;
    eprintln!("onehop-dns: not implemented yet");
    std::process::ExitCode::FAILURE
}
