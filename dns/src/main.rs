fn main() -> std::process::ExitCode {
    onehop_dns::cli_main(std::env::args_os().collect())
}
