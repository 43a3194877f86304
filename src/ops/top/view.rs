//! What `top` shows: the screen state (focused pane, sort orders, pause, last reading,
//! Redis error) and its drawing. Drawing is a pure function of that state, so any terminal
//! size, however small, is drawn without a panic.

use std::time::Duration;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, Wrap};

use super::snapshot::{ConsumerRow, GroupRow, Snapshot, StreamRow};
use crate::ops::output::escape_control;

/// Smallest terminal the tables fit in; below it a message says so.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Streams,
    Groups,
    Consumers,
}

impl Pane {
    fn next(self) -> Pane {
        match self {
            Pane::Streams => Pane::Groups,
            Pane::Groups => Pane::Consumers,
            Pane::Consumers => Pane::Streams,
        }
    }

    /// Sort orders of the pane, the first being the default; numbers sort largest first.
    fn sort_names(self) -> &'static [&'static str] {
        match self {
            Pane::Streams => &["key", "length", "rate"],
            Pane::Groups => &["name", "lag", "pending", "oldest"],
            Pane::Consumers => &["name", "pending", "idle"],
        }
    }
}

pub struct View {
    pub focus: Pane,
    /// Index into [`Pane::sort_names`] of each pane: streams, groups, consumers.
    sort_choice: [usize; 3],
    pub paused: bool,
    /// The last reading that succeeded; kept, dimmed, while Redis cannot be read.
    pub last: Option<Snapshot>,
    /// Why the last reading failed; `None` once one succeeds again.
    pub redis_error: Option<String>,
    /// The Redis URL without its password.
    pub redis_label: String,
    pub refresh: Duration,
}

impl View {
    pub fn new(redis_label: String, refresh: Duration) -> View {
        View {
            focus: Pane::Groups,
            sort_choice: [0; 3],
            paused: false,
            last: None,
            redis_error: None,
            redis_label,
            refresh,
        }
    }

    pub fn switch_pane(&mut self) {
        self.focus = self.focus.next();
    }

    pub fn next_sort(&mut self) {
        let index = self.focus as usize;
        self.sort_choice[index] = (self.sort_choice[index] + 1) % self.focus.sort_names().len();
    }

    fn sort_name(&self, pane: Pane) -> &'static str {
        pane.sort_names()[self.sort_choice[pane as usize]]
    }

    pub fn draw(&self, frame: &mut Frame) {
        let area = frame.area();
        if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
            let message = format!(
                "terminal too small ({}x{}): top needs {MIN_WIDTH}x{MIN_HEIGHT}; q quits",
                area.width, area.height
            );
            frame.render_widget(Paragraph::new(message).wrap(Wrap { trim: true }), area);
            return;
        }
        let [
            header_area,
            banner_area,
            streams_area,
            groups_area,
            consumers_area,
            help_area,
        ] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(u16::from(self.redis_error.is_some())),
            Constraint::Length(self.streams_height()),
            Constraint::Min(4),
            Constraint::Min(4),
            Constraint::Length(1),
        ])
        .areas(area);
        frame.render_widget(Paragraph::new(self.header()), header_area);
        if let Some(error) = &self.redis_error {
            let seen = self.last.as_ref().map_or_else(
                || "no figures yet".to_string(),
                |snapshot| format!("showing the figures of {}", clock_time(snapshot.taken_at_ms)),
            );
            let banner = format!(" Redis unreachable: {error}; {seen}");
            let style = Style::new()
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD);
            frame.render_widget(Paragraph::new(banner).style(style), banner_area);
        }
        let Some(snapshot) = &self.last else {
            frame.render_widget(Paragraph::new("waiting for the first reading"), groups_area);
            frame.render_widget(Paragraph::new(self.help()), help_area);
            return;
        };
        let body_style = if self.redis_error.is_some() {
            Style::new().add_modifier(Modifier::DIM)
        } else {
            Style::new()
        };
        frame.render_widget(self.streams_table(snapshot).style(body_style), streams_area);
        frame.render_widget(self.groups_table(snapshot).style(body_style), groups_area);
        frame.render_widget(self.consumers_table(snapshot).style(body_style), consumers_area);
        frame.render_widget(Paragraph::new(self.help()), help_area);
    }

    fn streams_height(&self) -> u16 {
        let rows = self.last.as_ref().map_or(3, |snapshot| snapshot.streams.len()) as u16;
        // Borders and the header row; at most 8 rows so the groups always show.
        rows.min(8) + 3
    }

    fn header(&self) -> Line<'static> {
        let mut spans = vec![
            Span::styled("logsentinel top", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(format!("  {}  refresh {:?}", self.redis_label, self.refresh)),
        ];
        if let Some(snapshot) = &self.last {
            spans.push(Span::raw(format!("  at {}", clock_time(snapshot.taken_at_ms))));
            let alerts_per_s = snapshot
                .streams
                .iter()
                .find(|stream| stream.role == super::snapshot::StreamRole::Alerts)
                .and_then(|stream| stream.added_per_s);
            spans.push(Span::raw(format!("  alerts/s {}", rate_text(alerts_per_s))));
        }
        if self.paused {
            spans.push(Span::styled("  PAUSED", Style::new().add_modifier(Modifier::REVERSED)));
        }
        Line::from(spans)
    }

    fn help(&self) -> Line<'static> {
        Line::from(format!(
            "q quit  tab pane  s sort ({} by {})  p {}",
            pane_title(self.focus),
            self.sort_name(self.focus),
            if self.paused { "resume" } else { "pause" }
        ))
    }

    fn block(&self, pane: Pane) -> Block<'static> {
        let title = format!(" {} (by {}) ", pane_title(pane), self.sort_name(pane));
        let block = Block::bordered().title(title);
        if pane == self.focus {
            block.border_style(Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD))
        } else {
            block
        }
    }

    fn streams_table(&self, snapshot: &Snapshot) -> Table<'static> {
        let mut streams: Vec<&StreamRow> = snapshot.streams.iter().collect();
        match self.sort_name(Pane::Streams) {
            "length" => streams.sort_by_key(|stream| std::cmp::Reverse(stream.length)),
            "rate" => streams.sort_by(|a, b| b.added_per_s.unwrap_or(0.0).total_cmp(&a.added_per_s.unwrap_or(0.0))),
            _ => {}
        }
        let rows = streams.into_iter().map(|stream| {
            Row::new(vec![
                Cell::from(escape_control(&stream.key)),
                Cell::from(role_text(stream.role)),
                Cell::from(stream.length.to_string()),
                Cell::from(rate_text(stream.added_per_s)),
                Cell::from(stream.entries_added.to_string()),
            ])
        });
        Table::new(
            rows,
            [
                Constraint::Fill(3),
                Constraint::Length(17),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(12),
            ],
        )
        .header(header_row(["STREAM", "HOLDS", "LENGTH", "ADDED/S", "ADDED"]))
        .block(self.block(Pane::Streams))
    }

    fn groups_table(&self, snapshot: &Snapshot) -> Table<'static> {
        let mut groups: Vec<&GroupRow> = snapshot.groups.iter().collect();
        match self.sort_name(Pane::Groups) {
            "lag" => groups.sort_by_key(|group| std::cmp::Reverse(group.lag)),
            "pending" => groups.sort_by_key(|group| std::cmp::Reverse(group.pending)),
            "oldest" => groups.sort_by_key(|group| std::cmp::Reverse(group.oldest_pending_age_ms)),
            _ => {}
        }
        let rows = groups.into_iter().map(|group| {
            Row::new(vec![
                Cell::from(escape_control(&group.name)),
                Cell::from(group.stream.clone()),
                Cell::from(optional_text(group.lag)),
                Cell::from(group.pending.to_string()),
                Cell::from(group.oldest_pending_age_ms.map_or_else(|| "-".into(), age_text)),
                Cell::from(rate_text(group.delivered_per_s)),
                Cell::from(group.consumers.to_string()),
                Cell::from(match group.sink {
                    Some(_) => optional_text(group.backlog),
                    None => "-".into(),
                }),
            ])
        });
        Table::new(
            rows,
            [
                Constraint::Fill(2),
                Constraint::Fill(2),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(9),
                Constraint::Length(5),
                Constraint::Length(9),
            ],
        )
        .header(header_row([
            "GROUP", "STREAM", "LAG", "PENDING", "OLDEST", "DELIV/S", "CONS", "BACKLOG",
        ]))
        .block(self.block(Pane::Groups))
    }

    fn consumers_table(&self, snapshot: &Snapshot) -> Table<'static> {
        let mut consumers: Vec<&ConsumerRow> = snapshot.consumers.iter().collect();
        match self.sort_name(Pane::Consumers) {
            "pending" => consumers.sort_by_key(|consumer| std::cmp::Reverse(consumer.pending)),
            "idle" => consumers.sort_by_key(|consumer| std::cmp::Reverse(consumer.idle_ms)),
            _ => {}
        }
        let rows = consumers.into_iter().map(|consumer| {
            let row = Row::new(vec![
                Cell::from(escape_control(&consumer.name)),
                Cell::from(escape_control(&consumer.group)),
                Cell::from(consumer.pending.to_string()),
                Cell::from(age_text(consumer.idle_ms)),
                Cell::from(if consumer.stalled { "STALLED" } else { "" }),
            ]);
            if consumer.stalled {
                row.style(Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD))
            } else {
                row
            }
        });
        Table::new(
            rows,
            [
                Constraint::Fill(3),
                Constraint::Fill(2),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(8),
            ],
        )
        .header(header_row(["CONSUMER", "GROUP", "PENDING", "IDLE", "STATE"]))
        .block(self.block(Pane::Consumers))
    }
}

fn header_row<const N: usize>(names: [&'static str; N]) -> Row<'static> {
    Row::new(names).style(Style::new().add_modifier(Modifier::BOLD))
}

fn pane_title(pane: Pane) -> &'static str {
    match pane {
        Pane::Streams => "streams",
        Pane::Groups => "groups",
        Pane::Consumers => "consumers",
    }
}

fn role_text(role: super::snapshot::StreamRole) -> &'static str {
    use super::snapshot::StreamRole;
    match role {
        StreamRole::Logs => "logs",
        StreamRole::Alerts => "alerts",
        StreamRole::DeadLetters => "dead letters",
        StreamRole::SinkDeadLetters => "sink dead letters",
    }
}

fn optional_text(value: Option<u64>) -> String {
    value.map_or_else(|| "?".into(), |value| value.to_string())
}

fn rate_text(per_s: Option<f64>) -> String {
    match per_s {
        None => "-".into(),
        Some(rate) if rate >= 10.0 => format!("{rate:.0}"),
        Some(rate) => format!("{rate:.1}"),
    }
}

/// `850ms`, `12.3s`, `4m05s`, `3h12m`: short enough for a column of 8.
fn age_text(age_ms: u64) -> String {
    let seconds = age_ms / 1000;
    match age_ms {
        0..1_000 => format!("{age_ms}ms"),
        1_000..60_000 => format!("{:.1}s", age_ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

fn clock_time(epoch_ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(epoch_ms as i64)
        .map_or_else(|| "?".into(), |time| time.format("%H:%M:%S").to_string())
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;

    #[test]
    fn ages_fit_their_column() {
        assert_eq!(age_text(850), "850ms");
        assert_eq!(age_text(12_345), "12.3s");
        assert_eq!(age_text(245_000), "4m05s");
        assert_eq!(age_text(11_520_000), "3h12m");
    }

    #[test]
    fn any_size_draws_without_a_panic() {
        let mut view = View::new("redis://127.0.0.1:6379".into(), Duration::from_secs(1));
        view.redis_error = Some("connection refused".into());
        for (width, height) in [(0, 0), (1, 1), (20, 5), (59, 40), (60, 12), (200, 60)] {
            let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test backend");
            terminal.draw(|frame| view.draw(frame)).expect("draw");
        }
    }
}
