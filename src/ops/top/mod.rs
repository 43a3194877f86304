//! `logsentinel top`: a live view of streams, groups, consumers, dead letters and sink
//! backlogs, read from Redis directly, so it works with no police running.
//!
//! Invariants:
//! - read-only: only XINFO, XLEN, XPENDING (summary form), HGETALL, SCAN and LLEN, so
//!   watching never changes what the police see
//! - the terminal is restored on every way out (see [`terminal`])
//! - a failed reading keeps the last figures on screen, dimmed, under a banner; the next
//!   refresh reconnects

pub mod snapshot;
pub mod terminal;
pub mod view;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::errors::{redact_credentials, redact_url};
use crate::broker::{self, Connection};
use crate::cli::TopArgs;
use crate::config::BrokerConfig;
use snapshot::Reading;
use view::View;

/// How often the input thread looks up from waiting for a key, to notice that `top` ends.
const INPUT_POLL: Duration = Duration::from_millis(100);

/// Size of the screen `--once` draws as text: the README's capture and a pasteable view.
const ONCE_WIDTH: u16 = 120;
const ONCE_HEIGHT: u16 = 30;

pub async fn run(args: TopArgs, broker_config: BrokerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let claim_idle_ms = args.claim_idle.0.as_millis() as u64;
    if args.once {
        return print_once(&args, &broker_config, claim_idle_ms).await;
    }
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("top needs a terminal on stdout; `top --once --json` prints one reading");
    }
    let refresh = args.refresh.0.max(Duration::from_millis(100));
    let mut view = View::new(redact_url(&broker_config.redis_url), refresh);
    let mut screen = terminal::Screen::enter().context("cannot take over the terminal")?;
    let (key_sender, mut key_receiver) = mpsc::channel::<Input>(64);
    let input_stop = CancellationToken::new();
    let input_thread = spawn_input_thread(key_sender, input_stop.clone());

    let mut connection: Option<Connection> = None;
    let mut previous: Option<Reading> = None;
    let mut ticker = tokio::time::interval(refresh);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            input = key_receiver.recv() => match input {
                Some(Input::Quit) | None => break Ok(()),
                Some(Input::SwitchPane) => view.switch_pane(),
                Some(Input::Sort) => view.next_sort(),
                Some(Input::Pause) => view.paused = !view.paused,
                Some(Input::Redraw) => {}
            },
            _ = ticker.tick() => {
                if !view.paused {
                    read_into(&mut view, &mut connection, &mut previous, &broker_config, claim_idle_ms).await;
                }
            }
        }
        if let Err(error) = screen.terminal.draw(|frame| view.draw(frame)) {
            break Err(anyhow::Error::from(error).context("cannot draw on the terminal"));
        }
    };
    input_stop.cancel();
    let _ = input_thread.join();
    drop(screen); // restores the terminal before any error is printed
    outcome
}

/// One reading into the view; a failure keeps the last figures and drops the connection,
/// so that the next refresh connects again.
async fn read_into(
    view: &mut View,
    connection: &mut Option<Connection>,
    previous: &mut Option<Reading>,
    broker_config: &BrokerConfig,
    claim_idle_ms: u64,
) {
    let reading = async {
        if connection.is_none() {
            *connection = Some(broker::connect(&broker_config.redis_url).await?);
        }
        let open = connection.as_mut().expect("connected just above");
        snapshot::collect(open, &broker_config.keys, claim_idle_ms).await
    }
    .await;
    match reading {
        Ok(snapshot) => {
            let mut current = Reading {
                snapshot,
                at: Instant::now(),
            };
            if let Some(earlier) = previous.as_ref() {
                snapshot::fill_rates(&mut current, earlier);
            }
            view.last = Some(current.snapshot.clone());
            view.redis_error = None;
            *previous = Some(current);
        }
        Err(error) => {
            view.redis_error = Some(redact_credentials(&error.to_string()));
            *connection = None;
        }
    }
}

/// `--once`: one reading, as JSON or as the screen drawn as text.
async fn print_once(args: &TopArgs, broker_config: &BrokerConfig, claim_idle_ms: u64) -> anyhow::Result<()> {
    let mut connection = broker::connect(&broker_config.redis_url).await.map_err(|error| {
        anyhow::anyhow!(
            "cannot reach Redis at {}: {error}",
            redact_url(&broker_config.redis_url)
        )
    })?;
    let snapshot = snapshot::collect(&mut connection, &broker_config.keys, claim_idle_ms).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
        return Ok(());
    }
    let mut view = View::new(redact_url(&broker_config.redis_url), args.refresh.0);
    view.last = Some(snapshot);
    let backend = ratatui::backend::TestBackend::new(ONCE_WIDTH, ONCE_HEIGHT);
    let mut text_terminal = ratatui::Terminal::new(backend)?;
    text_terminal.draw(|frame| view.draw(frame))?;
    let buffer = text_terminal.backend().buffer();
    for row in 0..buffer.area.height {
        let line: String = (0..buffer.area.width)
            .map(|column| buffer[(column, row)].symbol())
            .collect();
        println!("{}", line.trim_end());
    }
    Ok(())
}

/// What a key press asks for.
enum Input {
    Quit,
    SwitchPane,
    Sort,
    Pause,
    /// The terminal was resized: draw again at once.
    Redraw,
}

/// Reads terminal events on a thread of its own: crossterm's reads block, and the runtime
/// has a single thread.
fn spawn_input_thread(sender: mpsc::Sender<Input>, stop: CancellationToken) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.is_cancelled() {
            let ready = match event::poll(INPUT_POLL) {
                Ok(ready) => ready,
                Err(_) => break, // the terminal is gone: dropping the sender ends `top`
            };
            if !ready {
                continue;
            }
            let input = match event::read() {
                Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => Input::Quit,
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Input::Quit,
                    KeyCode::Tab | KeyCode::BackTab => Input::SwitchPane,
                    KeyCode::Char('s') => Input::Sort,
                    KeyCode::Char('p') | KeyCode::Char(' ') => Input::Pause,
                    _ => continue,
                },
                Ok(Event::Resize(_, _)) => Input::Redraw,
                Ok(_) => continue,
                Err(_) => break,
            };
            if sender.blocking_send(input).is_err() {
                break;
            }
        }
    })
}
