fn main() -> std::process::ExitCode {
    onehop_monitor::cli_main(std::env::args_os().collect())
}
