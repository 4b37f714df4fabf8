//! `onehop-monitor` against a real farm: the terminal UI driven through tmux (as a person at a
//! 100x30 terminal would), and `--follow` read as a script would.
//!
//! The UI test needs tmux (Debian package `tmux`, installed by `tests/run`); without it the
//! test fails and says so.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::Farm;

/// A tmux server of our own (its own socket, so nothing touches a user's sessions) running
/// one detached session; killed on drop.
struct Tmux {
    socket: PathBuf,
    session: &'static str,
}

impl Tmux {
    /// Starts `cmd` in a detached session of `width` x `height`. When the command ends the
    /// pane prints `monitor exited with CODE` and stays, so the screen tells how it ended.
    fn start(dir: &Path, width: u16, height: u16, cmd: &[&str]) -> Tmux {
        match Command::new("tmux").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            _ => panic!(
                "tmux is not installed: the monitor's terminal UI test drives it through tmux. \
                 Install it with `apt-get install tmux` (tests/run does)"
            ),
        }
        let t = Tmux {
            socket: dir.join("tmux.sock"),
            session: "monitor",
        };
        let script = r#""$0" "$@"; echo "monitor exited with $?"; exec sleep 600"#;
        let st = Command::new("tmux")
            .arg("-u")
            .arg("-S")
            .arg(&t.socket)
            .args(["-f", "/dev/null", "new-session", "-d", "-s", t.session])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .args(["sh", "-c", script])
            .args(cmd)
            .env("TERM", "xterm-256color")
            .env("LANG", "C.UTF-8")
            .status()
            .expect("run tmux");
        assert!(st.success(), "tmux new-session failed");
        t
    }

    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-u").arg("-S").arg(&self.socket);
        c
    }

    /// The screen as text, one string per row.
    fn screen(&self) -> Vec<String> {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-t", self.session])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect()
    }

    /// Types `keys` (tmux key names such as `Enter`, `/`, or `-l TEXT` for literal text).
    fn send(&self, keys: &[&str]) {
        let st = self
            .tmux()
            .args(["send-keys", "-t", self.session])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(st.success(), "tmux send-keys {keys:?}");
    }

    /// Polls the screen until `pred` holds; fails with the last screen after `timeout`.
    fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&[String]) -> bool) {
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                println!("monitor screen: {what} after {:?}", started.elapsed());
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the monitor's screen did not show {what} within {timeout:?}; it shows:\n{}",
                    screen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .tmux()
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether a row of the member table (or the rings panel) shows `name`: a panel row starting
/// with it.
fn listed(screen: &[String], name: &str) -> bool {
    let cell = format!("│{name} ");
    screen.iter().any(|l| l.contains(&cell))
}

#[test]
fn monitor_ui_shows_the_farm_looks_keys_up_and_sees_a_node_die() {
    let farm = Farm::up("127.0.95.1", &["--nodes", "3", "--dns", "0"]);
    let dir = farm.path().to_str().unwrap().to_string();
    let monitor = farm.path().join("bin").join("onehop-monitor");
    let tmux = Tmux::start(
        farm.path(),
        100,
        30,
        &[monitor.to_str().unwrap(), "--farm", &dir],
    );
    let members: Vec<(String, String)> = farm
        .file
        .members
        .iter()
        .map(|m| (m.name.clone(), m.ip.to_string()))
        .collect();
    assert_eq!(members.len(), 9, "3 event servers, 3 managers, 3 nodes");

    // Every member in the table, with its address, and the manager's term.
    tmux.wait("every member and the term", Duration::from_secs(20), |s| {
        s.first().is_some_and(|h| h.contains("term"))
            && members.iter().all(|(name, ip)| {
                s.iter()
                    .any(|l| l.contains(&format!("│{name} ")) && l.contains(&format!("{ip} ")))
            })
    });
    let screen = tmux.screen();
    println!("{}", screen.join("\n"));
    assert!(screen[1].contains("event servers 3/3"), "{}", screen[1]);

    // A lookup: the owner the monitor shows is the one the nodes answer.
    let key = "alice@example.test";
    let owner_ip = farm
        .lookup("node1")
        .ask(&format!("lookup registrar for {key}"));
    let owner = farm
        .file
        .members
        .iter()
        .find(|m| m.ip.to_string() == owner_ip)
        .unwrap_or_else(|| panic!("no member has the owner's address {owner_ip:?}"))
        .name
        .clone();
    tmux.send(&["/"]);
    tmux.wait("the lookup box", Duration::from_secs(5), |s| {
        s.iter().any(|l| l.contains("key: "))
    });
    tmux.send(&["-l", key]);
    tmux.send(&["Enter"]);
    tmux.wait(
        &format!("{owner} as the registrar owner of {key}"),
        Duration::from_secs(5),
        |s| {
            s.iter()
                .any(|l| l.contains("│registrar ") && l.contains(&format!(" owner {owner} ")))
        },
    );
    println!("{}", tmux.screen().join("\n"));

    // node3 dies: it leaves the table and the rings, and the log says so.
    let killed = Instant::now();
    farm.signal("node3", "-KILL");
    tmux.wait(
        "node3 gone from the table and a log line",
        Duration::from_secs(10),
        |s| {
            !listed(s, "node3")
                && s.iter()
                    .any(|l| l.contains("node3 is gone") || l.contains("node3 lost"))
        },
    );
    println!(
        "node3 off the monitor's screen {:?} after kill -9",
        killed.elapsed()
    );
    let screen = tmux.screen();
    println!("{}", screen.join("\n"));
    assert!(listed(&screen, "node1") && listed(&screen, "node2"));

    // q quits, and the program exits cleanly (the terminal is given back).
    tmux.send(&["q"]);
    tmux.wait("the monitor exiting", Duration::from_secs(5), |s| {
        s.iter().any(|l| l.contains("monitor exited with 0"))
    });
}

/// A `--follow` process whose stdout lines arrive on a channel; killed on drop.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Follower {
    fn start(farm: &Farm) -> Follower {
        let mut child = Command::new(farm.path().join("bin").join("onehop-monitor"))
            .args(["--farm", farm.path().to_str().unwrap(), "--follow"])
            .args(["--timeout", "120"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start onehop-monitor --follow");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follower {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `pred`; returns it.
    fn until(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    println!("follow: {line}");
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "--follow printed no line with {what} within {timeout:?}; it printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `2025-06-01T12:00:00.123Z`
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn monitor_follow_prints_a_line_for_a_join() {
    let mut farm = Farm::up("127.0.96.1", &["--nodes", "2", "--dns", "0"]);

    // Without a terminal and without --json/--follow, the UI refuses with exit status 2.
    let out = farm.tool("onehop-monitor", &["--farm", farm.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "the UI without a terminal");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs a terminal") && err.contains("--follow"),
        "{err}"
    );

    let mut f = Follower::start(&farm);
    let first = f.until("a status", Duration::from_secs(15), |l| {
        l.contains(" status term ")
    });
    let (ts, rest) = first.split_once(' ').unwrap();
    assert!(is_timestamp(ts), "timestamp {ts:?}");
    assert!(rest.contains("members 8"), "{first}");
    f.until("an event server up", Duration::from_secs(5), |l| {
        l.contains(" eventserver es1 ") && l.ends_with(" up")
    });

    farm.add_node("node9", "127.0.96.40", "registrar");
    let status = f.until("node9 joining the status", Duration::from_secs(15), |l| {
        l.contains(" status term ") && l.contains(" joined node9")
    });
    assert!(status.contains("members 9"), "{status}");
    let log = f.until("the manager's join line", Duration::from_secs(5), |l| {
        l.contains(" log manager") && l.contains("node9") && l.contains("joined")
    });
    let (ts, _) = log.split_once(' ').unwrap();
    assert!(is_timestamp(ts), "timestamp {ts:?}");
}
