fn main() -> std::process::ExitCode {
    onehop_node::cli_main(std::env::args_os().collect())
}
