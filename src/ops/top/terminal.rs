//! The terminal in raw mode on the alternate screen, and its restoration on every way out.
//!
//! Invariant: once [`Screen::enter`] returned, the terminal is restored (raw mode off, main
//! screen back, cursor shown) when the [`Screen`] is dropped, which covers a normal exit,
//! `q`, SIGTERM / SIGINT (the loop ends on the cancellation token) and errors; a panic
//! restores it in the panic hook, before the message is printed, so that the message is
//! readable. Restoring twice is harmless.

use std::io::{Stdout, Write};

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::{cursor, execute, terminal};

pub struct Screen {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Screen {
    pub fn enter() -> std::io::Result<Screen> {
        install_panic_hook();
        terminal::enable_raw_mode()?;
        let mut stdout = std::io::stdout();
        if let Err(error) = execute!(stdout, terminal::EnterAlternateScreen, cursor::Hide) {
            restore();
            return Err(error);
        }
        match Terminal::new(CrosstermBackend::new(stdout)) {
            Ok(terminal) => Ok(Screen { terminal }),
            Err(error) => {
                restore();
                Err(error)
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves raw mode and the alternate screen; errors are ignored (there is nowhere left to
/// report them, and a half-restored terminal is still better than none).
pub fn restore() {
    let _ = terminal::disable_raw_mode();
    let mut stdout = std::io::stdout();
    let _ = execute!(stdout, terminal::LeaveAlternateScreen, cursor::Show);
    let _ = stdout.flush();
}

fn install_panic_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |panic_info| {
            restore();
            previous_hook(panic_info);
        }));
    });
}
