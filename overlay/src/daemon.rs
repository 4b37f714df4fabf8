//! What every daemon's `main` needs: config loading, logging, signals.

use std::path::Path;

use serde::de::DeserializeOwned;

pub use crate::logging::{self, LogFormat};
pub use crate::overrides::{self, ConfigFlag, FlagValue, Override};
use crate::tls::TlsFiles;

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
    /// A key given on the command line (`--set KEY=VALUE` or a named flag such as `--ip`)
    /// cannot be used: unknown, of the wrong type, out of range, or not a key at all.
    #[error("{origin}: {message}")]
    Override {
        /// The flag as given: `--set sip_port=5070`, `--ip 10.0.0.7`.
        origin: String,
        /// What is wrong, naming the key.
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
/// `RUST_LOG` (default `info`), each line carrying the member's name once it is set with
/// [`logging::set_member`]. See [`logging::init_tracing`].
pub fn init_tracing(json: bool) {
    logging::init_tracing(if json {
        LogFormat::Json
    } else {
        LogFormat::Human
    });
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

/// What [`daemon_main`] needs of a daemon's configuration.
pub trait DaemonConfig: Sized + serde::Serialize + DeserializeOwned {
    /// The named flags of this daemon, each a shorthand for `--set KEY=VALUE` of one key of
    /// its configuration (only keys the configuration has).
    fn flags() -> &'static [ConfigFlag];
    /// Checks values the types cannot (ranges, consistency); errors name the key.
    fn check(&self, path: &Path) -> Result<(), ConfigError>;
    /// Reads the file, applies the command-line `overrides` in order (see
    /// [`overrides::load_with`]) and validates the result, blaming the flag that set a bad
    /// key (see [`overrides::attribute`]).
    fn load_with(path: &Path, overrides: &[Override]) -> Result<Self, ConfigError> {
        let c: Self = overrides::load_with(path, overrides)?;
        c.check(path)
            .map_err(|e| overrides::attribute(e, overrides))?;
        Ok(c)
    }
    /// [`DaemonConfig::load_with`] on the file's text already read (`path` only names it in
    /// errors): what a daemon does with its config file, without the file system.
    fn parse_with(path: &Path, text: &str, overrides: &[Override]) -> Result<Self, ConfigError> {
        let c: Self = overrides::parse_with(path, text, overrides)?;
        c.check(path)
            .map_err(|e| overrides::attribute(e, overrides))?;
        Ok(c)
    }
    /// The certificate files; the certificate names the member on every log line.
    fn tls(&self) -> &TlsFiles;
    /// Worker threads of the daemon's runtime; 0 (the default): one per CPU the process may
    /// use. One runs Tokio's current-thread scheduler ([`runtime_builder`]).
    fn threads(&self) -> usize {
        0
    }
}

/// The command line every daemon takes (besides its named configuration flags).
#[derive(Debug, clap::Parser)]
pub struct DaemonCli {
    /// The configuration file (TOML); see the examples/ folder.
    #[arg(long, short)]
    pub config: std::path::PathBuf,
    /// Set configuration KEY to VALUE over the file (repeatable). KEY is a dotted path
    /// (quic.idle_timeout_ms); VALUE is a TOML value (5070, true, "text", ["a", "b"]) or,
    /// when it is not one, a string.
    #[arg(long = "set", value_name = "KEY=VALUE", action = clap::ArgAction::Append)]
    pub set: Vec<String>,
    /// Check the configuration (the file and the flags), print the effective values and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Log lines as text (each starting with the member's name) or as JSON objects (each with
    /// a `member` field).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Same as --log-format json.
    #[arg(long)]
    pub log_json: bool,
}

impl DaemonCli {
    /// The log format asked for (`--log-json` is `--log-format json`).
    pub fn format(&self) -> LogFormat {
        if self.log_json {
            LogFormat::Json
        } else {
            self.log_format
        }
    }
}

/// The text after `--help`: precedence and an example.
fn after_help(program: &str, flags: &[ConfigFlag]) -> String {
    let short = program.strip_prefix("onehop-").unwrap_or(program);
    let mut example = format!("  {program} --config /etc/onehop/{short}.toml");
    for f in flags.iter().take(2) {
        example.push_str(&format!(" --{} {}", f.long, f.example));
    }
    example.push_str(" --set quic.idle_timeout_ms=800");
    format!(
        "Configuration: the file (--config) is read first, then --set and the named flags \
         ({named}) are applied in command-line order: flags override the file, and a later \
         flag overrides an earlier one for the same key. A key from the command line is \
         checked like one in the file: an unknown key or a bad value is refused, naming the \
         flag. A VALUE that is also a TOML number, boolean or date is taken as one; quote it \
         to force a string: --set 'KEY=\"true\"'.\n\nExample (add --check-config to print the \
         effective configuration without starting):\n{example}",
        named = flags
            .iter()
            .map(|f| format!("--{}", f.long))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// The overrides on a parsed command line, in command-line order.
fn collect_overrides(m: &clap::ArgMatches, flags: &[ConfigFlag]) -> Result<Vec<Override>, String> {
    let mut at: Vec<(usize, Override)> = Vec::new();
    if let (Some(values), Some(indices)) = (m.get_many::<String>("set"), m.indices_of("set")) {
        for (v, i) in values.zip(indices) {
            at.push((i, Override::parse_set(v)?));
        }
    }
    for f in flags {
        let (Some(values), Some(indices)) = (m.get_many::<String>(f.long), m.indices_of(f.long))
        else {
            continue;
        };
        let pairs: Vec<(String, usize)> = values.cloned().zip(indices).collect();
        if f.value == FlagValue::List {
            let args: Vec<String> = pairs.iter().map(|(v, _)| v.clone()).collect();
            let last = pairs.iter().map(|(_, i)| *i).max().unwrap_or(0);
            at.extend(Override::from_flag(f, &args).map(|o| (last, o)));
        } else {
            for (v, i) in pairs {
                at.extend(Override::from_flag(f, &[v]).map(|o| (i, o)));
            }
        }
    }
    at.sort_by_key(|(i, _)| *i);
    Ok(at.into_iter().map(|(_, o)| o).collect())
}

/// Why a command line was not taken.
#[derive(Debug)]
enum CliError {
    /// clap's error (or `--help`, `--version`).
    Clap(clap::Error),
    /// A `--set` that is not `KEY=VALUE`.
    Override(String),
}

/// Parses a daemon's command line: [`DaemonCli`] and the overrides of `--set` and of the
/// named `flags`, in command-line order.
fn parse_cli(
    program: &'static str,
    about: &'static str,
    flags: &'static [ConfigFlag],
    args: Vec<std::ffi::OsString>,
) -> Result<(DaemonCli, Vec<Override>), CliError> {
    use clap::{CommandFactory, FromArgMatches};
    let mut cmd = DaemonCli::command()
        .name(program)
        .about(about)
        .after_help(after_help(program, flags));
    for f in flags {
        cmd = cmd.arg(
            clap::Arg::new(f.long)
                .long(f.long)
                .value_name(f.value_name)
                .help(f.help)
                .action(clap::ArgAction::Append)
                .help_heading("Configuration keys (override the file)"),
        );
    }
    let matches = cmd.try_get_matches_from(args).map_err(CliError::Clap)?;
    let cli = DaemonCli::from_arg_matches(&matches).map_err(CliError::Clap)?;
    let overrides = collect_overrides(&matches, flags).map_err(CliError::Override)?;
    Ok((cli, overrides))
}

/// The member a configuration's certificate names: (name, kind).
fn member_of(tls: &TlsFiles) -> Result<(String, String), String> {
    let pem =
        std::fs::read_to_string(&tls.cert).map_err(|e| format!("{}: {e}", tls.cert.display()))?;
    let id = crate::identity::identity_from_pem(&pem)
        .map_err(|e| format!("{}: {e}", tls.cert.display()))?;
    Ok((id.name, id.kind.to_string()))
}

/// Turns transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`), before
/// its work starts ([`daemon_main`] does, for every daemon). A daemon's heap churns in small
/// blocks: its allocator (mimalloc) returns freed runs to the kernel after a second, and with
/// huge pages every fresh touch of such a run in a region the kernel had emptied faulted in
/// and zeroed a whole 2 MiB page. That zeroing was a tenth of the entry node's CPU under
/// REGISTER load (docs/benchmarks.md).
/// Failure (an old kernel) is ignored: the process runs as before.
pub fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
}

/// The runtime a daemon runs on, for `threads` worker threads (0: one per CPU).
///
/// One thread gets Tokio's current-thread scheduler rather than a multi-thread one with one
/// worker: a task woken by the running task then waits its turn behind the tasks already
/// queued, where the multi-thread scheduler runs it next (its LIFO slot). That matters for
/// QUIC: a call written to a stream wakes the connection's driver, and run next, the driver
/// sent each call in a packet of its own (a `sendmsg` per SIP request on every node under
/// REGISTER load); behind the other ready tasks, it sends what they wrote as well, together.
pub fn runtime_builder(threads: usize) -> tokio::runtime::Builder {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b
    };
    builder.enable_all();
    builder
}

/// A daemon's `main`: parses [`DaemonCli`] and the configuration's named flags from `args`
/// (with the program's name and about text), loads the config file with the command-line
/// overrides applied, names the member (from its certificate) on every log line, and runs
/// `run(config, shutdown_signal())` on a tokio runtime. Errors are printed as one line,
/// `PROGRAM: error: ...`.
pub fn daemon_main<C, F, Fut>(
    program: &'static str,
    about: &'static str,
    args: Vec<std::ffi::OsString>,
    run: F,
) -> std::process::ExitCode
where
    C: DaemonConfig,
    F: FnOnce(C, std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use std::process::ExitCode;
    no_transparent_huge_pages();
    let (cli, overrides) = match parse_cli(program, about, C::flags(), args) {
        Ok(c) => c,
        Err(CliError::Clap(e)) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
        Err(CliError::Override(e)) => {
            eprintln!("{program}: error: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = match C::load_with(&cli.config, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{program}: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let member = member_of(cfg.tls());
    if cli.check_config {
        println!("{}: configuration is valid", cli.config.display());
        match &member {
            Ok((name, kind)) => println!("# member: {name} ({kind})"),
            Err(e) => println!("# member: unknown, the certificate cannot be read: {e}"),
        }
        if !overrides.is_empty() {
            let given: Vec<&str> = overrides.iter().map(|o| o.origin.as_str()).collect();
            println!("# overrides: {}", given.join(", "));
        }
        if let Ok(text) = toml::to_string(&cfg) {
            println!("# effective configuration:\n{}", text.trim_end());
        }
        return ExitCode::SUCCESS;
    }
    match &member {
        Ok((name, kind)) => logging::set_member(name, kind),
        // The daemon stops at once with its own error about the certificate.
        Err(_) => logging::set_member(program, program.strip_prefix("onehop-").unwrap_or("")),
    };
    logging::init_tracing(cli.format());
    let rt = match runtime_builder(cfg.threads()).build() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_are_turned_off_for_the_process() {
        no_transparent_huge_pages();
        assert!(nix::sys::prctl::get_thp_disable().unwrap());
    }

    #[test]
    fn one_thread_runs_the_current_thread_scheduler() {
        use tokio::runtime::RuntimeFlavor;
        let one = runtime_builder(1).build().unwrap();
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        assert_eq!(one.metrics().num_workers(), 1);
        // Timers and IO are enabled on it.
        one.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(1)).await });
        let two = runtime_builder(2).build().unwrap();
        assert_eq!(two.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(two.metrics().num_workers(), 2);
        let any = runtime_builder(0).build().unwrap();
        assert_eq!(any.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
    }

    const FLAGS: &[ConfigFlag] = &[
        ConfigFlag::IP,
        ConfigFlag::EVENTSERVER,
        ConfigFlag {
            long: "sip-port",
            key: "sip_port",
            value_name: "PORT",
            help: "SIP port",
            value: FlagValue::Toml,
            example: "5060",
        },
    ];

    fn parse(args: &[&str]) -> Result<(DaemonCli, Vec<Override>), CliError> {
        let mut all = vec!["onehop-test", "--config", "x.toml"];
        all.extend_from_slice(args);
        parse_cli(
            "onehop-test",
            "test",
            FLAGS,
            all.into_iter().map(Into::into).collect(),
        )
    }

    fn origins(args: &[&str]) -> Vec<String> {
        let (_, o) = parse(args).unwrap();
        o.into_iter().map(|o| o.origin).collect()
    }

    #[test]
    fn overrides_keep_command_line_order() {
        assert_eq!(
            origins(&[
                "--set",
                "ip=10.0.0.1",
                "--ip",
                "10.0.0.2",
                "--set",
                "sip_port=1"
            ]),
            ["--set ip=10.0.0.1", "--ip 10.0.0.2", "--set sip_port=1"]
        );
        assert_eq!(
            origins(&["--ip", "10.0.0.2", "--set", "ip=10.0.0.1"]),
            ["--ip 10.0.0.2", "--set ip=10.0.0.1"]
        );
        let (_, o) = parse(&["--sip-port", "5070", "--ip", "10.0.0.2"]).unwrap();
        assert_eq!(o[0].key(), "sip_port");
        assert_eq!(o[0].value, toml::Value::Integer(5070));
        assert_eq!(o[1].value, toml::Value::String("10.0.0.2".into()));
    }

    #[test]
    fn a_list_flag_gathers_its_occurrences() {
        let (_, o) = parse(&[
            "--eventserver",
            "10.0.0.1:8000",
            "--set",
            "eventservers=[]",
            "--eventserver",
            "10.0.0.2:8000",
        ])
        .unwrap();
        // The list counts where its last occurrence is: after the --set.
        assert_eq!(o.len(), 2);
        assert_eq!(o[1].key(), "eventservers");
        assert_eq!(
            o[1].value,
            toml::Value::Array(vec!["10.0.0.1:8000".into(), "10.0.0.2:8000".into()])
        );
    }

    #[test]
    fn log_format_and_its_old_alias() {
        assert_eq!(parse(&[]).unwrap().0.format(), LogFormat::Human);
        assert_eq!(
            parse(&["--log-format", "json"]).unwrap().0.format(),
            LogFormat::Json
        );
        assert_eq!(parse(&["--log-json"]).unwrap().0.format(), LogFormat::Json);
        assert!(matches!(
            parse(&["--log-format", "xml"]),
            Err(CliError::Clap(_))
        ));
    }

    #[test]
    fn bad_set_and_unknown_flags() {
        match parse(&["--set", "sip_port"]) {
            Err(CliError::Override(e)) => assert!(e.contains("KEY=VALUE"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["--domain", "x"]), Err(CliError::Clap(_))));
    }

    #[test]
    fn help_explains_precedence_with_an_example() {
        let Err(CliError::Clap(e)) = parse(&["--help"]) else {
            panic!("no help");
        };
        let help = e.to_string();
        assert!(help.contains("flags override the file"), "{help}");
        assert!(
            help.contains("onehop-test --config /etc/onehop/test.toml --ip 10.0.0.7"),
            "{help}"
        );
        assert!(
            help.contains("--set <KEY=VALUE>") && help.contains("--log-format"),
            "{help}"
        );
        assert!(help.contains("--eventserver <ADDR:PORT>"), "{help}");
    }
}
