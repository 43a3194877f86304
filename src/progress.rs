//! Progress of long runs (`bench`, `demo`, an agent with `--count`) on stderr, and the one
//! `key=value` line each ends with.
//!
//! On a terminal a bar redraws in place; otherwise (CI, a container's log) a plain line is
//! printed at the first update and then at most every [`PLAIN_LINE_EVERY`], so a long run
//! leaves a short log. Progress never goes to stdout, which stays for results.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Interval between plain progress lines when stderr is not a terminal.
pub const PLAIN_LINE_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    /// `[agent]`, `[bench]`, `[demo]`: the prefix of the plain lines.
    label: &'static str,
    /// What is counted, e.g. `events`.
    unit: &'static str,
    total: Option<u64>,
    /// The last count reported.
    done: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    /// When the last plain line was printed; `None` before the first.
    last_line_at: Option<Instant>,
}

impl Progress {
    /// A bar if stderr is a terminal, plain lines otherwise.
    pub fn new(label: &'static str, unit: &'static str, total: Option<u64>) -> Progress {
        Progress::with_terminal(label, unit, total, std::io::stderr().is_terminal())
    }

    fn with_terminal(label: &'static str, unit: &'static str, total: Option<u64>, on_terminal: bool) -> Progress {
        let bar = on_terminal.then(|| {
            let bar = match total {
                Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = match total {
                Some(_) => "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
                None => "{prefix} {spinner} {pos} {msg} ({elapsed})",
            };
            let style = ProgressStyle::with_template(template)
                .expect("the progress templates are valid")
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(label);
            bar
        });
        Progress {
            label,
            unit,
            total,
            done: 0,
            bar,
            started: Instant::now(),
            last_line_at: None,
        }
    }

    /// Reports `done` units so far, with a short note (what runs now, figures).
    pub fn update(&mut self, done: u64, note: &str) {
        self.done = done;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(note.to_string());
            return;
        }
        if let Some(line) = self.plain_line(done, note, Instant::now()) {
            eprintln!("{line}");
        }
    }

    /// The last count reported.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// The plain line due at `now`, if one is due.
    fn plain_line(&mut self, done: u64, note: &str, now: Instant) -> Option<String> {
        if self
            .last_line_at
            .is_some_and(|last| now.duration_since(last) < PLAIN_LINE_EVERY)
        {
            return None;
        }
        self.last_line_at = Some(now);
        let elapsed_s = now.duration_since(self.started).as_secs();
        let count = match self.total {
            Some(total) => format!("{done}/{total} {}", self.unit),
            None => format!("{done} {}", self.unit),
        };
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(", {note}")
        };
        Some(format!("{} progress: {count} after {elapsed_s} s{note}", self.label))
    }

    /// Removes the bar (plain lines stay, they are the log).
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `label key=value key=value …`: one line a script can parse. Values with spaces are quoted.
pub fn summary_line(label: &str, pairs: &[(&str, String)]) -> String {
    let mut line = format!("{label} summary:");
    for (key, value) in pairs {
        debug_assert!(!key.contains([' ', '=']), "summary keys are plain words");
        if value.is_empty() || value.contains([' ', '"', '=']) {
            line.push_str(&format!(" {key}={value:?}"));
        } else {
            line.push_str(&format!(" {key}={value}"));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_come_first_at_once_then_every_ten_seconds() {
        let mut progress = Progress::with_terminal("[agent]", "events", Some(100), false);
        let start = progress.started;
        let first = progress.plain_line(1, "", start).expect("the first update prints");
        assert_eq!(first, "[agent] progress: 1/100 events after 0 s");
        assert!(progress.plain_line(2, "", start + Duration::from_secs(9)).is_none());
        let later = progress
            .plain_line(50, "lag 3", start + Duration::from_secs(10))
            .expect("ten seconds later");
        assert_eq!(later, "[agent] progress: 50/100 events after 10 s, lag 3");
    }

    #[test]
    fn summary_values_with_spaces_are_quoted() {
        let line = summary_line("agent", &[("events", "10".into()), ("error", "redis refused".into())]);
        assert_eq!(line, r#"agent summary: events=10 error="redis refused""#);
    }
}
