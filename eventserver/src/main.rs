fn main() -> std::process::ExitCode {
    onehop_eventserver::cli_main(std::env::args_os().collect())
}
