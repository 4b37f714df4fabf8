fn main() -> std::process::ExitCode {
    onehop_certs::cli_main(std::env::args_os().collect())
}
