//! onehop-monitor: watches the network as a `monitor` (subscribe only, never a member).
//!
//! # Layout
//! - [`watch_status`], [`wait_for`], [`start_session`]: client sessions with the event
//!   servers (a `monitor` certificate may subscribe, never publish).
//! - [`state`]: the terminal UI's state, a plain struct updated by [`state::App::apply`].
//! - [`ui`]: [`ui::draw`] renders that state on a ratatui frame (pure, tested on
//!   `TestBackend`).
//! - [`tui`]: the thin event loop: keys (crossterm `EventStream`), client events, a tick.
//! - [`follow`]: `--follow`, the network's changes as timestamped lines for scripts.
//! - [`format`](mod@format): clocks, durations, figures, padding and wrapping.
//! - [`cli`]: the command line: `--json` (one snapshot), `--follow`, or the terminal UI.
//!
//! # The terminal UI
//! `onehop-monitor --farm DIR` (on a terminal) subscribes to `network`, `members`, `stats`,
//! `events` and `crl` and shows, live: the active manager with `term`/`version`; each event
//! server and whether our session with it is up; the members (name, kind, roles, address,
//! uptime from `since`, state, latest `stats` figures); each role's ring with every member's
//! share of the keyspace; a log (the active manager's lines, departures as the event servers
//! report them, new revocation lists, our own sessions); and a lookup box (`/`) giving a key's
//! owner and replicas on every ring, computed from the status exactly as the nodes do (the
//! same [`onehop_overlay::ring`] code, `--points` as configured on the nodes). Keys are listed
//! in [`ui::KEYS`] and on screen (`?`). Times are UTC.
//!
//! The monitor never derives join/leave lines from status differences: the active manager
//! already publishes them on `events`, and doubling them would only add noise. `--follow`
//! does list the names that joined or left on each `status` line, for scripts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use onehop_overlay::client::{ClientEvent, ClientOptions, EventClient, EventReceiver};
use onehop_overlay::crl::CrlStore;
use onehop_overlay::net::{self, ConnTable, Timing};
use onehop_overlay::status::NetworkStatus;
use onehop_overlay::tls::{Credentials, TlsFiles};
use onehop_overlay::wire::{Payload, Topic};
use tokio::sync::watch;

pub mod cli;
pub mod follow;
pub mod format;
pub mod state;
pub mod tui;
pub mod ui;

pub use cli::{cli_main, Cli};

/// The topics the terminal UI and `--follow` subscribe to.
pub const WATCH_TOPICS: [Topic; 5] = [
    Topic::Network,
    Topic::Members,
    Topic::Stats,
    Topic::Events,
    Topic::Crl,
];

/// Starts a monitor session with every event server in `eventservers`, subscribed to
/// `topics`: the client (for `stop`) and the channel of what it delivers (publications,
/// event-server up/down).
pub fn start_session(
    tls: &TlsFiles,
    eventservers: Vec<SocketAddr>,
    topics: Vec<Topic>,
) -> anyhow::Result<(EventClient, EventReceiver)> {
    let creds = Arc::new(Credentials::load(tls)?);
    let crl = CrlStore::open(creds.ca.to_vec(), None)?;
    let bind: SocketAddr = "0.0.0.0:0".parse().expect("literal");
    let endpoint = net::endpoint(bind, &creds, &crl.current(), Timing::default(), None)?;
    let opts = ClientOptions {
        eventservers,
        announce: None,
        subscribe: topics,
        ..Default::default()
    };
    Ok(EventClient::start(
        endpoint,
        opts,
        ConnTable::default(),
        Some(crl),
    ))
}

/// A monitor session: the newest status seen, and which event servers are reachable.
pub struct StatusWatch {
    /// The client (for `stop`).
    pub client: EventClient,
    /// The newest status seen (`None` until the first).
    pub status: watch::Receiver<Option<Arc<NetworkStatus>>>,
}

/// Connects to `eventservers` with the certificate in `tls` and keeps the newest status.
pub fn watch_status(tls: &TlsFiles, eventservers: Vec<SocketAddr>) -> anyhow::Result<StatusWatch> {
    let (client, mut events) = start_session(tls, eventservers, vec![Topic::Network])?;
    let (tx, rx) = watch::channel(None::<Arc<NetworkStatus>>);
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let ClientEvent::Event(ev) = ev {
                if let Payload::Network(s) = &ev.payload {
                    let newer = s.supersedes(tx.borrow().as_deref());
                    if newer {
                        let _ = tx.send(Some(Arc::new(s.clone())));
                    }
                }
            }
        }
    });
    Ok(StatusWatch { client, status: rx })
}

/// Waits up to `timeout` for a status that satisfies `pred`.
pub async fn wait_for(
    w: &mut StatusWatch,
    timeout: Duration,
    mut pred: impl FnMut(&NetworkStatus) -> bool,
) -> Option<Arc<NetworkStatus>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(s) = w.status.borrow().as_ref() {
            if pred(s) {
                return Some(s.clone());
            }
        }
        match tokio::time::timeout_at(deadline, w.status.changed()).await {
            Ok(Ok(())) => {}
            _ => return None,
        }
    }
}
