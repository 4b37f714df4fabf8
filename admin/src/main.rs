fn main() -> std::process::ExitCode {
    onehop_admin::cli_main(std::env::args_os().collect())
}
