//! `logsentinel rules check` and `rules test`, run as the user runs them: every error of a
//! broken file at its line and column with exit 2; the alerts a sample would raise.

use std::path::Path;
use std::process::Command;

fn logsentinel() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_logsentinel"));
    command.env("LOGSENTINEL_LOG", "warn");
    command
}

/// Exit code, stdout and stderr lines of `rules check FILE`.
fn check(path: &Path) -> (i32, String, Vec<String>) {
    let output = logsentinel()
        .args(["rules", "check"])
        .arg(path)
        .output()
        .expect("run rules check");
    let stderr = String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_string)
        .collect();
    (
        output.status.code().expect("exit code"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr,
    )
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_error_of_a_broken_file_is_placed_and_the_exit_is_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "broken.toml",
        r#"max_lateness = "a minute"

[sinks.ops]
type = "webhook"
url = "http://127.0.0.1:9/hook"

[[rules]]
name = "errors"
type = "frequency"
filter = { level = "ERROR", message = "(unclosed" }
window = "1m"
threshold = "ten"

[[rules]]
name = "errors"
type = "spike"
window = "1m"
ratio = 1
sinks = ["ops", "pager"]
annotations = { summary = "{count} in {servce}" }

[[rules]]
name = "no threshold"
type = "flatline"
window = "1m"
colour = "red"
filter = { in = ["a"], not = { field = "host" } }
"#,
    );
    let (code, stdout, errors) = check(&path);
    assert_eq!(code, 2, "{errors:#?}");
    assert_eq!(stdout, "");
    let file = path.display();
    let expected = [
        format!(
            "{file}:1:16: bad duration \"a minute\" for max_lateness: expected number at 0 (write e.g. \"30s\", \"5m\", \"1h\")"
        ),
        format!("{file}:10:39: bad regex \"(unclosed\": unclosed group"),
        format!("{file}:12:13: invalid type: string \"ten\", expected u64"),
        format!("{file}:15:8: duplicate rule name \"errors\""),
        format!("{file}:18:9: ratio must be above 1, not 1"),
        format!("{file}:19:17: unknown sink \"pager\" (not a [sinks.NAME] of this file)"),
        format!(
            "{file}:20:27: annotation summary: template names an unknown field {{servce}} (event fields, extra.NAME, \
             the group_by fields and the figures rule, severity, count, window, threshold, previous_count, \
             first_event_time, last_event_time)"
        ),
        format!("{file}:23:8: bad rule name \"no threshold\": use letters, digits, '_', '-' and '.'"),
        format!("{file}:23:8: flatline rule \"no threshold\" needs threshold"),
        format!(
            "{file}:26:1: unknown key \"colour\" in a rule (expected one of name, type, filter, group_by, severity, \
             labels, annotations, cooldown, sinks, threshold, window, ratio, direction, min_count, expect, max_groups, forget_after)"
        ),
        format!("{file}:27:17: in needs field"),
        format!("{file}:27:40: field needs one of equals, in, regex"),
    ];
    assert_eq!(errors, expected);
}

#[test]
fn levels_regex_limits_durations_and_syntax_are_placed() {
    let dir = tempfile::tempdir().unwrap();
    let limits = write(
        dir.path(),
        "limits.toml",
        "[[rules]]\nname = \"x\"\ntype = \"frequency\"\nthreshold = 2\nwindow = \"1m\"\n\
         filter = { level = \"LOUD\", field = \"service\", regex = \"a{99999}\" }\ncooldown = \"-5s\"\n",
    );
    let (code, _, errors) = check(&limits);
    assert_eq!(code, 2);
    let file = limits.display();
    assert_eq!(
        errors,
        [
            format!("{file}:6:20: unknown level \"LOUD\""),
            format!("{file}:6:55: bad regex \"a{{99999}}\": compiled regex exceeds size limit of 1048576 bytes"),
            format!(
                "{file}:7:12: bad duration \"-5s\" for cooldown: expected number at 0 (write e.g. \"30s\", \"5m\", \"1h\")"
            ),
        ]
    );

    let syntax = write(dir.path(), "syntax.toml", "[[rules]]\nname = \"x\"\ntype = \n");
    let (code, _, errors) = check(&syntax);
    assert_eq!(code, 2);
    assert_eq!(
        errors,
        [format!(
            "{}:3:8: string values must be quoted, expected literal string",
            syntax.display()
        )]
    );

    let kinds = write(
        dir.path(),
        "kinds.toml",
        "[[rules]]\nname = \"s\"\ntype = \"spike\"\nwindow = \"0s\"\nthreshold = 3\n\n\
         [[rules]]\nname = \"t\"\ntype = \"sometimes\"\n\n[[sinks]]\ntype = \"console\"\n",
    );
    let (code, _, errors) = check(&kinds);
    assert_eq!(code, 2);
    let file = kinds.display();
    assert_eq!(
        errors,
        [
            format!("{file}:2:8: spike rule \"s\" needs ratio"),
            format!("{file}:4:10: window must be longer than 0s"),
            format!("{file}:5:13: threshold is not a key of spike rules"),
            format!("{file}:9:8: unknown variant `sometimes`, expected one of `any`, `frequency`, `spike`, `flatline`"),
            format!("{file}:11:1: sinks must be a table of sinks ([sinks.NAME])"),
        ]
    );
}

#[test]
fn the_example_file_checks_without_its_secrets() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rules.toml");
    let output = logsentinel()
        .args(["rules", "check"])
        .arg(&example)
        .env_remove("OPS_WEBHOOK_URL")
        .env_remove("OPS_WEBHOOK_SECRET")
        .env_remove("SLACK_WEBHOOK_URL")
        .env_remove("SMTP_USER")
        .output()
        .expect("run rules check");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!(
            "{}: ok, 5 rules (2 any, 1 frequency, 1 spike, 1 flatline), 6 sinks\n",
            example.display()
        )
    );
}

const SAMPLE_RULES: &str = r#"
max_lateness = "0s"

[[rules]]
name = "errors"
type = "frequency"
filter = { level = "ERROR" }
group_by = ["service"]
threshold = 3
window = "1m"
cooldown = "0s"
annotations = { summary = "{count} errors in {service} within {window}" }

[[rules]]
name = "checkout-spike"
type = "spike"
filter = { field = "service", equals = "checkout" }
group_by = ["service"]
window = "1m"
ratio = 3
min_count = 3
cooldown = "0s"
annotations = { summary = "{count} after {previous_count}" }

[[rules]]
name = "host-silent"
type = "flatline"
group_by = ["host"]
threshold = 1
window = "1m"
expect = ["web-1"]
annotations = { summary = "{host} sent {count}" }
"#;

/// One sample event at 12:MM:SS on 2026-12-01.
fn sample_event(index: usize, seconds: u32, host: &str, service: &str, level: &str) -> String {
    serde_json::json!({
        "id": format!("a:1:{index}"),
        "timestamp": format!("2026-12-01T12:{:02}:{:02}Z", seconds / 60, seconds % 60),
        "level": level,
        "service": service,
        "host": host,
        "message": "something happened",
    })
    .to_string()
}

/// FNV-1a 64 of the JSON array of `values`, as the group key id is defined.
fn group_id(values: &[&str]) -> String {
    let json = serde_json::to_string(values).unwrap();
    let hash = json.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

#[test]
fn rules_test_prints_the_alerts_a_sample_raises() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.toml", SAMPLE_RULES);
    // Minute 0: api sends 3 errors (frequency), checkout 1 event; both hosts send.
    // Minute 1: checkout sends 3 (spike: 3 >= 3 x 1), web-2 sends nothing (flatline).
    // Minute 2: web-2 is back (flatline resolved); the errors episode resolves as minute 1
    // closed without firing; the spike resolves at the end of input, once minute 2 closed.
    let events = [
        (1, "web-1", "api", "ERROR"),
        (2, "web-2", "api", "ERROR"),
        (3, "web-1", "db", "ERROR"),
        (4, "web-1", "api", "ERROR"),
        (5, "web-2", "checkout", "INFO"),
        (61, "web-1", "checkout", "INFO"),
        (62, "web-1", "checkout", "INFO"),
        (63, "web-1", "checkout", "INFO"),
        (64, "web-1", "api", "ERROR"),
        (121, "web-2", "api", "INFO"),
        (122, "web-1", "api", "INFO"),
    ];
    let sample: Vec<String> = events
        .iter()
        .enumerate()
        .map(|(index, (seconds, host, service, level))| sample_event(index, *seconds, host, service, level))
        .collect();
    let sample_path = write(dir.path(), "sample.ndjson", &(sample.join("\n") + "\n"));
    let output = logsentinel()
        .args(["rules", "test"])
        .arg(&rules)
        .arg("--events")
        .arg(&sample_path)
        .output()
        .expect("run rules test");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stderr,
        "replayed 11 events: 3 alerts fired, 3 resolved, 0 late matches, 0 bad lines\n"
    );
    let alerts: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON alert per line"))
        .collect();
    let minute = |m: i64| 1_796_126_400_000 + m * 60_000;
    let api = group_id(&["api"]);
    let checkout = group_id(&["checkout"]);
    let web_2 = group_id(&["web-2"]);
    let summary: Vec<(String, String, u64, String, String)> = alerts
        .iter()
        .map(|alert| {
            (
                alert["alert_id"].as_str().unwrap().to_string(),
                alert["status"].as_str().unwrap().to_string(),
                alert["count"].as_u64().unwrap(),
                alert["annotations"]["summary"].as_str().unwrap().to_string(),
                alert["raised_at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let row = |id: String, status: &str, count: u64, summary: &str, raised_at: &str| {
        (
            id,
            status.to_string(),
            count,
            summary.to_string(),
            raised_at.to_string(),
        )
    };
    assert_eq!(
        summary,
        [
            row(
                format!("errors/{api}/{}", minute(0)),
                "firing",
                3,
                "3 errors in api within 1m",
                "2026-12-01T12:00:04.000Z"
            ),
            row(
                format!("checkout-spike/{checkout}/{}", minute(1)),
                "firing",
                3,
                "3 after 1",
                "2026-12-01T12:01:03.000Z"
            ),
            row(
                format!("host-silent/{web_2}/{}", minute(1)),
                "firing",
                0,
                "web-2 sent 0",
                "2026-12-01T12:02:01.000Z"
            ),
            row(
                format!("errors/{api}/{}", minute(0)),
                "resolved",
                3,
                "3 errors in api within 1m",
                "2026-12-01T12:02:01.000Z"
            ),
            row(
                format!("host-silent/{web_2}/{}", minute(1)),
                "resolved",
                0,
                "web-2 sent 0",
                "2026-12-01T12:02:01.000Z"
            ),
            row(
                format!("checkout-spike/{checkout}/{}", minute(1)),
                "resolved",
                3,
                "3 after 1",
                "2026-12-01T12:03:02.000Z"
            ),
        ]
    );
    assert_eq!(alerts[0]["group"], serde_json::json!({"service": "api"}));
    assert_eq!(
        alerts[0]["event"]["id"], "a:1:3",
        "the event that crossed the threshold"
    );
    assert_eq!(alerts[0]["type"], "frequency");
    assert!(alerts[2].get("event").is_none(), "flatline is raised by the clock");
    assert_eq!(alerts[2]["group"], serde_json::json!({"host": "web-2"}));
}

#[test]
fn rules_test_reports_every_bad_sample_line_replays_the_rest_and_fails_only_when_strict() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.toml", SAMPLE_RULES);
    let errors: Vec<String> = (0..3)
        .map(|index| sample_event(index, index as u32, "web-1", "api", "ERROR"))
        .collect();
    let sample = write(
        dir.path(),
        "sample.ndjson",
        &format!(
            "{}\nnot json\n{{\"id\":\"x\"}}\n{}\n{}\n",
            errors[0], errors[1], errors[2]
        ),
    );
    let run = |strict: bool| {
        let mut command = logsentinel();
        command.args(["rules", "test"]).arg(&rules).arg("--events").arg(&sample);
        if strict {
            command.arg("--strict");
        }
        command.output().expect("run rules test")
    };
    for strict in [false, true] {
        let output = run(strict);
        assert_eq!(
            output.status.code(),
            Some(if strict { 1 } else { 0 }),
            "strict {strict}"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 3, "{stderr}");
        assert!(
            lines[0].starts_with(&format!("{}:2: malformed event: ", sample.display())),
            "{stderr}"
        );
        assert!(
            lines[1].starts_with(&format!("{}:3: malformed event: missing field", sample.display())),
            "{stderr}"
        );
        assert!(lines[2].starts_with("replayed 3 events: "), "{stderr}");
        assert!(lines[2].ends_with(", 2 bad lines"), "{stderr}");
        // The good lines around the bad ones were replayed: the three errors fired.
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("\"3 errors in api within 1m\""), "{stdout}");
    }
}

/// Exit code, alerts (stdout) and stderr lines of `rules test RULES --events SAMPLE ARGS…`.
fn rules_test(rules: &Path, sample: &Path, args: &[&str]) -> (i32, Vec<serde_json::Value>, Vec<String>) {
    let output = logsentinel()
        .args(["rules", "test"])
        .arg(rules)
        .arg("--events")
        .arg(sample)
        .args(args)
        .output()
        .expect("run rules test");
    let alerts = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON alert per line"))
        .collect();
    let stderr = String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_string)
        .collect();
    (output.status.code().expect("exit code"), alerts, stderr)
}

fn event_at(id: &str, timestamp: &str, service: &str, extra: serde_json::Value) -> String {
    serde_json::json!({
        "id": id,
        "timestamp": timestamp,
        "level": "ERROR",
        "service": service,
        "host": "web-1",
        "message": "something happened",
        "extra": extra,
    })
    .to_string()
}

#[test]
fn rules_test_places_a_far_future_event_at_its_clock_as_the_police_does() {
    use logsentinel::police::rules::window::{now_ms, rfc3339};
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "rules.toml",
        r#"max_lateness = "60s"

[[rules]]
name = "errors"
type = "frequency"
group_by = ["service"]
threshold = 3
window = "1m"
"#,
    );
    // An hour before the wall clock, on a minute: in the past of any police running now.
    let minute_ms = (now_ms() - 3_600_000).div_euclid(60_000) * 60_000;
    let at = |offset_ms: i64| rfc3339(minute_ms + offset_ms);
    let sample = write(
        dir.path(),
        "sample.ndjson",
        &[
            event_at("a:1:0", &at(1_000), "api", serde_json::json!({})),
            event_at("a:1:1", "2099-01-01T00:00:00Z", "api", serde_json::json!({})),
            event_at("a:1:2", &at(2_000), "api", serde_json::json!({})),
            event_at("a:1:3", &at(3_000), "api", serde_json::json!({})),
            // After a quiet stretch of 10 min: on time, not "in the future".
            event_at("a:1:4", &at(600_000), "api", serde_json::json!({})),
        ]
        .join("\n"),
    );
    let (code, alerts, stderr) = rules_test(&rules, &sample, &[]);
    assert_eq!(code, 0, "{stderr:#?}");
    // Before the clamp, the 2099 line moved the replay's clock to 2099: the three lines
    // after it were late and nothing fired.
    assert_eq!(
        stderr.last().map(String::as_str),
        Some("replayed 5 events: 1 alerts fired, 1 resolved, 0 late matches, 0 bad lines"),
        "{stderr:#?}"
    );
    assert_eq!(stderr.len(), 2, "one note, for the 2099 line only: {stderr:#?}");
    assert!(
        stderr[0].starts_with("event a:1:1: timestamp 2099-01-01T00:00:00Z is more than 5 min after the clock"),
        "{stderr:#?}"
    );
    assert!(stderr[0].contains(&format!("replayed at {}", at(1_000))), "{stderr:#?}");
    let api = group_id(&["api"]);
    assert_eq!(alerts[0]["alert_id"], format!("errors/{api}/{minute_ms}"));
    assert_eq!(alerts[0]["status"], "firing");
    assert_eq!(alerts[0]["count"], 3, "the 2099 line counts in the window of its clock");
    assert_eq!(alerts[0]["event"]["id"], "a:1:2");

    // With the police's clock given, a line more than 5 min after it (and after the newest
    // event time) is placed too; the rest replays as before.
    let (code, _, stderr) = rules_test(&rules, &sample, &["--now", &at(60_000)]);
    assert_eq!(code, 0, "{stderr:#?}");
    assert_eq!(stderr.len(), 3, "{stderr:#?}");
    assert!(stderr[1].starts_with("event a:1:4: timestamp "), "{stderr:#?}");
    assert!(stderr[1].contains(&format!("replayed at {}", at(3_000))), "{stderr:#?}");
    assert!(stderr[2].contains(" 0 late matches, "), "{stderr:#?}");
    let (code, _, stderr) = rules_test(&rules, &sample, &["--now", "soon"]);
    assert_eq!(code, 2, "{stderr:#?}");
    assert!(
        stderr.join("\n").contains("\"soon\" is not an RFC 3339 time"),
        "{stderr:#?}"
    );
}

#[test]
fn extra_fields_group_and_filter_with_or_without_the_extra_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "rules.toml",
        r#"[[rules]]
name = "per-region"
type = "frequency"
group_by = ["extra.region"]
filter = { field = "extra.zone", equals = "a" }
threshold = 2
window = "1m"
annotations = { summary = "{count} in {extra.region}" }

[[rules]]
name = "bare"
type = "frequency"
group_by = ["region"]
threshold = 2
window = "1m"
"#,
    );
    let (code, stdout, errors) = check(&rules);
    assert_eq!((code, errors.len()), (0, 0), "{errors:#?}");
    assert!(stdout.contains(": ok, 2 rules (2 frequency)"), "{stdout}");
    let zone = |region: &str, zone: &str| serde_json::json!({"region": region, "zone": zone});
    let sample = write(
        dir.path(),
        "sample.ndjson",
        &[
            event_at("a:1:0", "2026-12-01T12:00:01Z", "api", zone("eu", "a")),
            event_at("a:1:1", "2026-12-01T12:00:02Z", "api", zone("us", "a")),
            event_at("a:1:2", "2026-12-01T12:00:03Z", "api", zone("eu", "a")),
            event_at("a:1:3", "2026-12-01T12:00:04Z", "api", zone("us", "b")),
        ]
        .join("\n"),
    );
    let (code, alerts, stderr) = rules_test(&rules, &sample, &["--now", "2026-12-01T12:10:00Z"]);
    assert_eq!(code, 0, "{stderr:#?}");
    let firing: Vec<(&str, &serde_json::Value, &str)> = alerts
        .iter()
        .filter(|alert| alert["status"] == "firing")
        .map(|alert| {
            (
                alert["rule"].as_str().unwrap(),
                &alert["group"],
                alert["annotations"]["summary"].as_str().unwrap_or(""),
            )
        })
        .collect();
    // Before, `extra.region` and `extra.zone` named extra fields called so: the filter
    // matched nothing and per-region never fired.
    assert_eq!(
        firing,
        [
            ("per-region", &serde_json::json!({"extra.region": "eu"}), "2 in eu"),
            ("bare", &serde_json::json!({"region": "eu"}), ""),
            ("bare", &serde_json::json!({"region": "us"}), ""),
        ]
    );
    let broken = write(
        dir.path(),
        "broken.toml",
        "[[rules]]\nname = \"r\"\ntype = \"frequency\"\nthreshold = 2\nwindow = \"1m\"\ngroup_by = [\"region\", \"extra.region\"]\n",
    );
    let (code, _, errors) = check(&broken);
    assert_eq!(code, 2);
    assert_eq!(
        errors,
        [format!(
            "{}:6:23: group_by names one field twice: \"region\" and \"extra.region\"",
            broken.display()
        )]
    );
}

/// A rule file is read bounded: a device (`/dev/zero`, endless) and a FIFO (blocking) are
/// refused before any read, a file past 4 MiB after reading just past the limit.
#[test]
fn devices_fifos_and_oversized_files_are_refused_without_reading_them_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, lines) = check(Path::new("/dev/zero"));
    assert_eq!(code, 2);
    assert_eq!(lines, vec!["/dev/zero:1:1: not a regular file".to_string()]);

    let fifo = dir.path().join("rules.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let (code, _, lines) = check(&fifo);
    assert_eq!(code, 2);
    assert!(lines[0].ends_with(":1:1: not a regular file"), "{lines:?}");

    let big = write(dir.path(), "big.toml", &"#".repeat((4 << 20) + 1));
    let (code, _, lines) = check(&big);
    assert_eq!(code, 2);
    assert!(
        lines[0].ends_with(":1:1: rule file is more than the 4194304 bytes allowed"),
        "{lines:?}"
    );
}
