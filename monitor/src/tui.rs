//! The terminal UI's event loop, kept thin: it waits for a key (crossterm `EventStream`), a
//! client event or a clock tick, hands it to [`App::apply`], and redraws with
//! [`crate::ui::draw`]. All behaviour is in the state and the drawing, tested without a
//! terminal.

use std::time::Duration;

use crossterm::event::{Event as TermEvent, EventStream, KeyEventKind};
use futures::StreamExt;
use onehop_overlay::client::EventReceiver;
use ratatui::DefaultTerminal;
use tokio::signal::unix::{signal, SignalKind};

use crate::format::now_ms;
use crate::state::{App, Input};

/// Client events applied before one redraw at most (a burst is drawn once).
const BATCH: usize = 256;

/// Takes over the terminal (raw mode, alternate screen), runs the UI until the user quits
/// (or a signal ends it), and gives the terminal back, also on error and on panic.
pub async fn run(mut app: App, mut events: EventReceiver) -> anyhow::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let result = event_loop(&mut terminal, &mut app, &mut events).await;
    ratatui::restore();
    result
}

async fn event_loop(
    terminal: &mut DefaultTerminal,
    app: &mut App,
    events: &mut EventReceiver,
) -> anyhow::Result<()> {
    let size = terminal.size()?;
    app.apply(now_ms(), Input::Resize(size.width, size.height));
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // SIGTERM, SIGINT (a `kill -INT`: in raw mode Ctrl-C is a key) and SIGHUP (the terminal
    // went away) end the UI the same way as `q`, so the terminal is always restored.
    let mut signals = Vec::new();
    for kind in [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
    ] {
        signals.push(signal(kind)?);
    }
    let signalled = async move {
        let waits = signals.iter_mut().map(|s| Box::pin(s.recv()));
        futures::future::select_all(waits).await;
    };
    tokio::pin!(signalled);
    let mut client_open = true;
    while !app.quit {
        terminal.draw(|f| crate::ui::draw(f, app))?;
        // Every branch is cancel-safe: `recv`, `next` and `tick` lose nothing when another
        // branch wins.
        tokio::select! {
            ev = events.recv(), if client_open => match ev {
                Some(ev) => {
                    app.apply(now_ms(), Input::Client(ev));
                    for _ in 1..BATCH {
                        match events.try_recv() {
                            Ok(ev) => app.apply(now_ms(), Input::Client(ev)),
                            Err(_) => break,
                        }
                    }
                }
                None => client_open = false,
            },
            k = keys.next() => match k {
                Some(Ok(TermEvent::Key(k))) if k.kind != KeyEventKind::Release => {
                    app.apply(now_ms(), Input::Key(k));
                }
                Some(Ok(TermEvent::Resize(w, h))) => app.apply(now_ms(), Input::Resize(w, h)),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => break,
            },
            _ = tick.tick() => app.apply(now_ms(), Input::Tick),
            _ = &mut signalled => break,
        }
    }
    Ok(())
}
