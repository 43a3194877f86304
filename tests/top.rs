//! `logsentinel top` in a real terminal: tmux runs it in a detached 120x40 window, the test
//! reads the screen with `capture-pane` and types with `send-keys`. Redis is real; figures
//! are checked against XINFO.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{TestRedis, spawn_agent, spawn_police, stop_gracefully, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

/// A private tmux server (its socket in a temp dir), killed on drop. Its panes stay after their
/// program exits (`remain-on-exit`), so the exit status and the last screen can be read.
struct Tmux {
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Tmux {
    fn start(program: &str) -> Tmux {
        let dir = tempfile::tempdir().expect("temp dir for tmux");
        let config = dir.path().join("tmux.conf");
        std::fs::write(&config, "set -g remain-on-exit on\nset -g status off\n").expect("tmux config");
        let socket = dir.path().join("tmux.sock");
        let tmux = Tmux {
            socket,
            _dir: dir,
            config,
        };
        let created = tmux
            .command()
            .args(["new-session", "-d", "-x", "120", "-y", "40", "-s", "top", program])
            .status()
            .expect("tmux runs (apt-get install tmux)");
        assert!(created.success(), "tmux new-session failed");
        tmux
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.arg("-S").arg(&self.socket).arg("-f").arg(&self.config);
        command
    }

    fn capture(&self) -> String {
        let output = self
            .command()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn display(&self, format: &str) -> String {
        let output = self
            .command()
            .args(["display-message", "-p", "-t", "top", format])
            .output()
            .expect("tmux display-message");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    fn run(&self, args: &[&str]) {
        let status = self.command().args(args).status().expect("tmux command");
        assert!(status.success(), "tmux {args:?} failed");
    }

    fn wait_for_screen(&self, what: &str, condition: impl Fn(&str) -> bool) -> String {
        let mut last_screen = String::new();
        wait_until(what, DEADLINE, || {
            last_screen = self.capture();
            condition(&last_screen)
        });
        last_screen
    }

    /// Waits for the shell around `top` to end; returns the main screen it left.
    fn wait_for_exit(&self) -> String {
        wait_until("top and its shell to exit", DEADLINE, || {
            self.display("#{pane_dead}") == "1"
        });
        self.capture()
    }

    /// The pid of `top`: the child of the pane's shell.
    fn top_pid(&self) -> i32 {
        let shell_pid = self.display("#{pane_pid}");
        let children = std::fs::read_to_string(format!("/proc/{shell_pid}/task/{shell_pid}/children"))
            .expect("the children of the pane's shell");
        children
            .split_whitespace()
            .next()
            .expect("top runs")
            .parse()
            .expect("a pid")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").status();
    }
}

/// `top` run by a shell that then prints its exit status and whether the terminal is back in
/// canonical mode (`icanon`, not raw mode's `-icanon`) on the main screen. (The first line
/// written after the screen switch can be lost in tmux 3.3: an empty one goes first.)
fn top_program(url: &str, extra: &str) -> String {
    let binary = env!("CARGO_BIN_EXE_logsentinel");
    format!(
        "sh -c '{binary} --redis-url {url} top --refresh 200ms {extra}; status=$?; echo; echo \"top exited $status\"; \
         stty -a | tr \" ;\" \"\\n\\n\" | grep -x -e \"-*icanon\"'"
    )
}

/// The screen `top` left behind: its exit status 0, the terminal out of raw mode, the main
/// screen back with no table on it.
fn assert_restored(tmux: &Tmux, screen: &str) {
    assert!(screen.contains("top exited 0"), "top exits 0: {screen}");
    assert!(
        screen.lines().any(|line| line.trim() == "icanon"),
        "raw mode is off: {screen}"
    );
    assert!(
        !screen.contains("CONSUMER"),
        "no table left on the main screen: {screen}"
    );
    assert_eq!(tmux.display("#{alternate_on}"), "0", "the alternate screen was left");
}

/// The cells of the screen line of a table row whose first cell is `first`.
fn row_cells(screen: &str, first: &str) -> Option<Vec<String>> {
    screen.lines().find_map(|line| {
        let cells: Vec<String> = line
            .trim_matches(|c: char| c == '│' || c.is_whitespace())
            .split_whitespace()
            .map(str::to_string)
            .collect();
        (cells.first().map(String::as_str) == Some(first)).then_some(cells)
    })
}

fn xinfo_group(connection: &mut redis::Connection) -> std::collections::HashMap<String, redis::Value> {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("logsentinel:logs")
        .query(connection)
        .expect("XINFO GROUPS");
    groups.into_iter().next().expect("one group")
}

fn int(value: &redis::Value) -> u64 {
    redis::from_redis_value::<u64>(value.clone()).expect("an integer")
}

#[test]
fn top_shows_lag_and_pending_survives_a_tiny_terminal_and_restores_it_on_q() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let police = spawn_police(&url, "police-1", &[]);
    let tmux = Tmux::start(&top_program(&url, "--claim-idle 1s"));
    tmux.wait_for_screen("the police group line", |screen| row_cells(screen, "police").is_some());
    assert_eq!(
        tmux.display("#{alternate_on}"),
        "1",
        "top draws on the alternate screen"
    );

    // Stop the police, then ship 300 events and take 10 of them as a consumer that never
    // acknowledges: lag counts only the 290 undelivered, pending the 10.
    stop_gracefully(police);
    let agent = spawn_agent(&url, "agent-1", &["--count", "300", "--rate", "0"]);
    let summary = common::agent_summary(agent);
    assert_eq!(common::summary_count(&summary, "events"), 300);
    let mut connection = redis.connection();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("police")
        .arg("stuck")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg("logsentinel:logs")
        .arg(">")
        .query(&mut connection)
        .expect("XREADGROUP");
    let screen = tmux.wait_for_screen("lag 290 and pending 10, the stuck consumer flagged", |screen| {
        let group_ok = row_cells(screen, "police").is_some_and(|cells| cells[2] == "290" && cells[3] == "10");
        let consumer_ok =
            row_cells(screen, "stuck").is_some_and(|cells| cells[2] == "10" && cells.contains(&"STALLED".to_string()));
        group_ok && consumer_ok
    });
    assert!(screen.contains("logsentinel:logs"), "{screen}");

    // `--once --json` agrees with XINFO.
    let output = common::logsentinel(&url)
        .args(["top", "--once", "--json"])
        .output()
        .expect("top --once --json");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let snapshot: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let group_info = xinfo_group(&mut connection);
    let group = &snapshot["groups"][0];
    assert_eq!(group["name"], "police");
    assert_eq!(group["lag"].as_u64(), Some(int(&group_info["lag"])));
    assert_eq!(group["pending"].as_u64(), Some(int(&group_info["pending"])));
    assert_eq!(group["entries_read"].as_u64(), Some(int(&group_info["entries-read"])));
    assert_eq!(group["consumers"].as_u64(), Some(int(&group_info["consumers"])));
    let stream_length: u64 = redis::cmd("XLEN")
        .arg("logsentinel:logs")
        .query(&mut connection)
        .unwrap();
    assert_eq!(snapshot["streams"][0]["key"], "logsentinel:logs");
    assert_eq!(snapshot["streams"][0]["length"].as_u64(), Some(stream_length));
    let stuck = snapshot["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|consumer| consumer["name"] == "stuck")
        .expect("the stuck consumer");
    assert_eq!(stuck["pending"].as_u64(), Some(10));

    // A tiny terminal gets a message; back to full size, the tables return.
    tmux.run(&["resize-window", "-t", "top", "-x", "20", "-y", "5"]);
    tmux.wait_for_screen("the too-small message", |screen| screen.contains("too small"));
    assert_eq!(tmux.display("#{pane_dead}"), "0", "top survives a tiny terminal");
    tmux.run(&["resize-window", "-t", "top", "-x", "120", "-y", "40"]);
    tmux.wait_for_screen("the tables again", |screen| row_cells(screen, "police").is_some());

    // The keys: tab, s and p change the help line; q quits, 0, main screen back.
    tmux.run(&["send-keys", "-t", "top", "Tab"]);
    tmux.run(&["send-keys", "-t", "top", "s"]);
    tmux.wait_for_screen("consumers sorted by pending", |screen| {
        screen.contains("s sort (consumers by pending)")
    });
    tmux.run(&["send-keys", "-t", "top", "p"]);
    tmux.wait_for_screen("the pause mark", |screen| screen.contains("PAUSED"));
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let screen = tmux.wait_for_exit();
    assert_restored(&tmux, &screen);
}

#[test]
fn top_keeps_the_last_figures_when_redis_goes_and_restores_the_terminal_on_sigterm() {
    let mut redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    common::create_group(&mut connection, "police");
    drop(connection);
    let tmux = Tmux::start(&top_program(&url, ""));
    tmux.wait_for_screen("the police group line", |screen| row_cells(screen, "police").is_some());

    redis.server.kill();
    let screen = tmux.wait_for_screen("the Redis banner", |screen| screen.contains("Redis unreachable"));
    assert!(
        row_cells(&screen, "police").is_some(),
        "the last figures stay: {screen}"
    );

    redis.server.restart().expect("restart redis");
    tmux.wait_for_screen("the banner gone", |screen| !screen.contains("Redis unreachable"));

    let top_pid = tmux.top_pid();
    // SAFETY: kill(2) on the process tmux started for this test.
    unsafe {
        libc::kill(top_pid, libc::SIGTERM);
    }
    let screen = tmux.wait_for_exit();
    assert_restored(&tmux, &screen);
}

#[test]
fn top_without_a_terminal_says_to_use_once() {
    let redis = TestRedis::start(&[]);
    let output = common::logsentinel(&redis.url()).arg("top").output().expect("run top");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("top --once --json"), "{stderr}");
}

/// The README's capture is what `top --once` prints (the layout, not the figures).
#[test]
fn top_once_prints_the_screen_as_text() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    common::create_group(&mut connection, "police");
    let output = common::logsentinel(&redis.url())
        .args(["top", "--once"])
        .output()
        .expect("top --once");
    assert!(output.status.success());
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(screen.starts_with("logsentinel top"), "{screen}");
    assert!(row_cells(&screen, "police").is_some(), "{screen}");
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for header in ["GROUP", "LAG", "PENDING", "OLDEST", "DELIV/S", "BACKLOG", "STALLED"] {
        assert!(readme.contains(header), "the README's capture shows {header}");
    }
}
