/// mimalloc: the SIP and store paths allocate per message, and glibc's malloc cost a tenth of a
/// node's CPU under load (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    onehop_eventserver::cli_main(std::env::args_os().collect())
}
