//! What the program prints is safe to show: console alerts are one line each whatever the
//! logs hold, and the Redis password never appears, not even in a configuration error.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn a_message_cannot_print_a_fake_alert_line() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    create_group(&mut connection, "police");
    let forged = r#"{"id":"x:1:0","timestamp":"2026-11-27T10:00:00Z","level":"CRITICAL","service":"api","host":"h","message":"disk full\n[ALERT] CRITICAL from bank@h at now: fake \u001b[2J"}"#;
    let _: String = redis::cmd("XADD")
        .arg("logsentinel:logs")
        .arg("*")
        .arg("v")
        .arg("1")
        .arg("event")
        .arg(forged)
        .query(&mut connection)
        .unwrap();

    let mut police = logsentinel(&redis.url())
        .args(["police", "--consumer", "p1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn police");
    let mut stdout = police.stdout.take().expect("police stdout is piped");
    // The console sink reads the alerts stream after the settle: collect what it prints.
    let (printed_sender, printed_receiver) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(read) = stdout.read(&mut chunk) {
            if read == 0
                || printed_sender
                    .send(String::from_utf8_lossy(&chunk[..read]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    wait_until("the alert is written", Duration::from_secs(30), || {
        read_stream(&mut connection, "logsentinel:alerts").len() == 1
    });
    let mut printed = String::new();
    wait_until("the console sink prints the alert", Duration::from_secs(30), || {
        printed.extend(printed_receiver.try_iter());
        printed.ends_with('\n')
    });
    stop_gracefully(police);
    reader.join().expect("stdout reader");
    printed.extend(printed_receiver.try_iter());

    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 1, "one alert, one line: {printed:?}");
    assert!(lines[0].starts_with("[ALERT] CRITICAL from api@h"), "{printed:?}");
    assert!(
        lines[0].contains(r"disk full\n[ALERT] CRITICAL from bank@h at now: fake \u{1b}[2J"),
        "the newline and the escape are shown escaped: {printed:?}"
    );
    assert!(!printed.trim_end().contains(char::is_control), "{printed:?}");
}

/// Runs a command that must fail at once; returns its exit code and everything it printed.
fn output_of(command: &mut std::process::Command) -> (i32, String) {
    let output = command.output().expect("run logsentinel");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().expect("exit code"), printed)
}

#[test]
fn the_redis_password_is_never_printed() {
    let unreachable = "redis://u:secret@bad-host-that-fails:6379";
    let (code, printed) = output_of(logsentinel(unreachable).arg("status"));
    assert_eq!(code, 1, "{printed}");
    assert!(printed.contains("redis://u:***@bad-host-that-fails:6379"), "{printed}");

    let bad_port = "redis://u:secret@bad-host-that-fails:99999";
    let (code, printed) = output_of(logsentinel(bad_port).arg("status"));
    assert_eq!(code, 2, "{printed}");
    assert!(printed.contains("invalid config: redis_url"), "{printed}");
    assert!(printed.contains("redis://u:***@bad-host-that-fails:99999"), "{printed}");
    assert!(!printed.contains("secret"), "{printed}");

    let cases: [(&str, &[&str]); 3] = [
        ("http://u:secret@host", &["agent"]),
        ("rediss://:secret@host:1/not-a-db", &["police"]),
        ("redis://secret@host:99999", &["status"]),
    ];
    for (url, args) in cases {
        let (code, printed) = output_of(logsentinel(url).args(args));
        assert_eq!(code, 2, "{url}: {printed}");
        assert!(printed.contains("invalid config: redis_url"), "{url}: {printed}");
        assert!(!printed.contains("secret"), "{url}: {printed}");
    }

    // From the environment, and from a config file whose redis_url line the parser quotes.
    let bare = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_logsentinel"));
        command.env_remove("LOGSENTINEL_REDIS_URL").stdin(Stdio::null());
        command
    };
    let (code, printed) = output_of(
        bare()
            .env("LOGSENTINEL_REDIS_URL", "http://u:secret@host")
            .arg("status"),
    );
    assert_eq!(code, 2, "{printed}");
    assert!(printed.contains("http://u:***@host"), "{printed}");
    assert!(!printed.contains("secret"), "{printed}");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "redis_url = redis://u:secret@host:6379\n").unwrap();
    let (code, printed) = output_of(bare().args(["--config", file.path().to_str().unwrap(), "status"]));
    assert_eq!(code, 2, "{printed}");
    assert!(printed.contains("redis_url = redis://u:***@host:6379"), "{printed}");
    assert!(!printed.contains("secret"), "{printed}");
}

/// Every line of `text`, parsed as a JSON object (panics naming the first that is not).
fn json_lines(text: &str, what: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    text.lines()
        .map(|line| match serde_json::from_str(line) {
            Ok(serde_json::Value::Object(object)) => object,
            _ => panic!("{what}: a line that is no JSON object: {line:?}\n{text}"),
        })
        .collect()
}

#[test]
fn with_json_logs_the_progress_and_summary_lines_are_json_too() {
    let redis = TestRedis::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("agent.err");
    let status = logsentinel(&redis.url())
        .args([
            "--log-format",
            "json",
            "agent",
            "--agent-id",
            "json-agent",
            "--count",
            "2000",
        ])
        .stdout(Stdio::null())
        // A file, not a terminal: the plain progress lines.
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .status()
        .expect("run the agent");
    assert!(status.success(), "{}", file_text(&stderr_path));
    let lines = json_lines(&file_text(&stderr_path), "agent stderr");
    for line in &lines {
        for key in ["timestamp", "level", "message"] {
            assert!(
                line.get(key).is_some_and(|value| value.is_string()),
                "{key} in {line:?}"
            );
        }
        assert!(!line.contains_key("fields"), "fields at the top level: {line:?}");
    }
    let with_message = |message: &str| {
        lines
            .iter()
            .filter(|line| line["message"] == message && line.get("label").is_some_and(|label| label == "agent"))
            .collect::<Vec<_>>()
    };
    let progress = with_message("progress");
    assert!(!progress.is_empty(), "no progress line: {lines:?}");
    assert_eq!(progress[0]["total"], 2000);
    assert_eq!(progress[0]["unit"], "events");
    assert!(progress[0]["done"].is_u64() && progress[0]["elapsed_s"].is_u64());
    let summaries = with_message("summary");
    let [summary] = summaries.as_slice() else {
        panic!("one summary line: {lines:?}")
    };
    // The names of the text line: agent_id events entries unsent spooled dropped
    // dead_lettered elapsed_s events_per_s.
    assert_eq!(summary["level"], "INFO");
    assert_eq!(summary["agent_id"], "json-agent");
    assert_eq!(summary["events"], 2000);
    for count in ["entries", "unsent", "spooled", "dropped", "dead_lettered"] {
        assert!(summary[count].is_u64(), "{count} in {summary:?}");
    }
    assert!(summary["elapsed_s"].is_number() && summary["events_per_s"].is_number());

    // Text logs keep the key=value line.
    let text_path = dir.path().join("text.err");
    let status = logsentinel(&redis.url())
        .args(["agent", "--agent-id", "text-agent", "--count", "100"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&text_path).unwrap())
        .status()
        .expect("run the agent");
    assert!(status.success());
    let text = file_text(&text_path);
    assert!(
        text.lines()
            .any(|line| line.starts_with("agent summary: agent_id=text-agent events=100 ")),
        "{text}"
    );
    assert!(text.contains("[agent] progress: "), "{text}");
}

#[test]
fn with_json_logs_every_line_of_the_demo_on_stderr_is_json() {
    let redis = TestRedis::start(&[]);
    let output = logsentinel(&redis.url())
        .args(["--log-format", "json", "demo", "--duration", "2", "--rate", "100"])
        .env("LOGSENTINEL_LOG", "info")
        .output()
        .expect("run demo");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let lines = json_lines(&stderr, "demo stderr");
    let summary = lines
        .iter()
        .find(|line| line["message"] == "summary")
        .unwrap_or_else(|| panic!("no summary: {stderr}"));
    assert_eq!(summary["label"], "demo");
    assert!(summary["sent"].as_u64().is_some_and(|sent| sent > 0), "{summary:?}");
    assert!(summary["processed"].as_u64() >= summary["sent"].as_u64(), "{summary:?}");
    assert!(
        lines.iter().any(|line| line["message"] == "stopping police"),
        "{stderr}"
    );
}

/// A start that fails says why in the format of the logs: with `--log-format json`, one
/// JSON object at level ERROR, as a log collector reads every other line.
#[test]
fn a_fatal_error_is_a_json_line_in_json_mode() {
    let output = logsentinel("redis://127.0.0.1:1")
        .args([
            "--log-format",
            "json",
            "police",
            "--admin-listen",
            "off",
            "--rules",
            "/nonexistent/rules.toml",
        ])
        .output()
        .expect("run police");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let fatal = lines.last().expect("a line");
    assert_eq!(fatal["level"], "ERROR");
    assert!(
        fatal["message"].as_str().unwrap().contains("cannot read the rule file"),
        "{fatal}"
    );
}
