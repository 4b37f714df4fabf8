//! What every daemon's `main` needs: config loading, logging, signals.

use std::path::Path;

use serde::de::DeserializeOwned;

/// A config file that cannot be used, with the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// toml's message, which names the key and line.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{path}: {key}: {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// The offending key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Reads and parses a TOML config file.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string().trim().replace('\n', " "),
    })
}

/// Sets up `tracing`: human-readable lines on stderr (or JSON with `json`), filtered by
/// `RUST_LOG` (default `info`), each line carrying the daemon's name.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Resolves when the process gets SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The command line every daemon takes.
#[derive(Debug, clap::Parser)]
pub struct DaemonCli {
    /// The configuration file (TOML); see the examples/ folder.
    #[arg(long, short)]
    pub config: std::path::PathBuf,
    /// Check the configuration and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

/// A daemon's `main`: parses [`DaemonCli`] from `args` (with the program's name and about text),
/// loads the config with `load`, and runs `run(config, shutdown_signal())` on a tokio runtime.
/// Errors are printed as one line, `PROGRAM: error: ...`.
pub fn daemon_main<C, F, Fut>(
    program: &'static str,
    about: &'static str,
    args: Vec<std::ffi::OsString>,
    load: fn(&Path) -> Result<C, ConfigError>,
    run: F,
) -> std::process::ExitCode
where
    F: FnOnce(C, std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use clap::{CommandFactory, FromArgMatches};
    use std::process::ExitCode;
    let cmd = DaemonCli::command().name(program).about(about);
    let cli = match cmd
        .try_get_matches_from(args)
        .and_then(|m| DaemonCli::from_arg_matches(&m))
    {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let cfg = match load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{program}: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check_config {
        println!("{}: configuration is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    init_tracing(cli.log_json);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg, Box::pin(shutdown_signal()))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
