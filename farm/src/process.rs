//! Child processes: starting, watching, stopping.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use onehop_overlay::status::Kind;

/// The programs this binary runs by name (see main.rs).
pub const PROGRAMS: [&str; 7] = [
    "onehop-eventserver",
    "onehop-manager",
    "onehop-dns",
    "onehop-node",
    "onehop-monitor",
    "onehop-certs",
    "onehop-admin",
];

/// Links `DIR/bin/onehop-*` to this executable (a copy where a link is not possible), so each
/// daemon runs from the same build as the farm and shows its own name in `ps`.
pub fn link_binaries(dir: &Path) -> anyhow::Result<BTreeMap<Kind, PathBuf>> {
    let me = std::env::current_exe().context("cannot find this program's path")?;
    link_binaries_of(&me, dir)
}

/// [`link_binaries`] for another build of this program (`me`): a test that starts members
/// itself links them to the `onehop-farm` it was built with.
pub fn link_binaries_of(me: &Path, dir: &Path) -> anyhow::Result<BTreeMap<Kind, PathBuf>> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    for prog in PROGRAMS {
        let target = bin.join(prog);
        let _ = std::fs::remove_file(&target);
        if std::fs::hard_link(me, &target).is_err() {
            std::fs::copy(me, &target)
                .with_context(|| format!("cannot place {}", target.display()))?;
        }
    }
    let mut map = BTreeMap::new();
    map.insert(Kind::Eventserver, bin.join("onehop-eventserver"));
    map.insert(Kind::Manager, bin.join("onehop-manager"));
    map.insert(Kind::Dns, bin.join("onehop-dns"));
    map.insert(Kind::Node, bin.join("onehop-node"));
    Ok(map)
}

/// Whether `pid` is alive and still runs `cmd` (guards against a reused pid).
pub fn alive(pid: u32, cmd: &[String]) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has exited already.
        if let Some(rest) = stat.rsplit(')').next() {
            if rest.trim_start().starts_with('Z') {
                return false;
            }
        }
    }
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    args == cmd
}

/// Sends SIGTERM.
pub fn terminate(pid: u32) {
    let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
}

/// Sends SIGKILL.
pub fn kill(pid: u32) {
    let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(f) = File::open(path) else {
        return String::from("(no log)");
    };
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// The farm's children, in start order.
#[derive(Default)]
pub struct Children {
    list: Vec<(String, Child)>,
}

impl Children {
    /// Starts `cmd` with its output appended to `log`, in a process group of its own (so a
    /// Ctrl-C at the terminal reaches only the farm, which stops the members in order).
    pub fn spawn(&mut self, name: &str, cmd: &[String], log: &Path) -> anyhow::Result<u32> {
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", cmd[0]))?;
        let pid = child.id();
        self.list.push((name.to_string(), child));
        Ok(pid)
    }

    /// The first child that has exited, with how.
    pub fn first_exited(&mut self) -> Option<(String, String)> {
        for (name, child) in &mut self.list {
            if let Ok(Some(status)) = child.try_wait() {
                return Some((name.clone(), status.to_string()));
            }
        }
        None
    }

    /// Watches the children until SIGINT/SIGTERM; reports each one that exits.
    pub async fn supervise(&mut self) {
        let mut reported = std::collections::HashSet::new();
        let signal = onehop_overlay::daemon::shutdown_signal();
        tokio::pin!(signal);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = &mut signal => return,
                _ = tick.tick() => {}
            }
            for (name, child) in &mut self.list {
                if reported.contains(name) {
                    continue;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    println!("onehop-farm: {name} exited ({status}); the rest of the farm goes on");
                    reported.insert(name.clone());
                }
            }
        }
    }

    /// Stops every child: nodes and DNS first, then managers, then event servers; SIGTERM,
    /// then SIGKILL after `grace`.
    pub fn stop_all(&mut self, grace: Duration) {
        let order = |n: &str| {
            if n.starts_with("node") || n.starts_with("dns") {
                0
            } else if n.starts_with("manager") {
                1
            } else {
                2
            }
        };
        for stage in 0..3 {
            let group: Vec<usize> = (0..self.list.len())
                .filter(|i| order(&self.list[*i].0) == stage)
                .collect();
            for &i in &group {
                if let Ok(None) = self.list[i].1.try_wait() {
                    terminate(self.list[i].1.id());
                }
            }
            let deadline = Instant::now() + grace;
            for &i in &group {
                let (name, child) = &mut self.list[i];
                loop {
                    match child.try_wait() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) if Instant::now() >= deadline => {
                            eprintln!("onehop-farm: {name} did not stop in time; killing it");
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        }
    }

    /// Leaves the children running on their own.
    pub fn detach(self) {
        for (_, child) in self.list {
            drop(child);
        }
    }
}
