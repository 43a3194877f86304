//! The police's rule file: a broken file stops the start with every error placed
//! (`FILE:LINE:COL`, exit 2); SIGHUP swaps in a new file, and a broken one keeps the rules
//! in force and says why in the log.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

const FIRST_RULES: &str = r#"
[[rules]]
name = "first"
type = "any"
cooldown = "0s"
filter = { message = "^alpha" }
"#;

const SECOND_RULES: &str = r#"
[[rules]]
name = "second"
type = "any"
cooldown = "0s"
filter = { message = "^beta" }
"#;

const BROKEN_RULES: &str = r#"
[[rules]]
name = "third"
type = "any"
filter = { message = "(unclosed" }
"#;

fn push_event(connection: &mut redis::Connection, id: &str, message: &str) {
    let event = format!(
        r#"{{"id":"{id}","timestamp":"2026-12-01T12:00:00Z","level":"INFO","service":"api","host":"h","message":"{message}"}}"#
    );
    let _: String = redis::cmd("XADD")
        .arg("logsentinel:logs")
        .arg("*")
        .arg("v")
        .arg("1")
        .arg("event")
        .arg(event)
        .query(connection)
        .expect("XADD");
}

fn alert_ids(connection: &mut redis::Connection) -> Vec<String> {
    read_stream(connection, "logsentinel:alerts")
        .into_iter()
        .filter_map(|(_, fields)| fields.get("id").cloned())
        .collect()
}

fn sighup(child: &std::process::Child) {
    // SAFETY: kill(2) on a child we own; no memory is touched.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGHUP);
    }
}

#[test]
fn sighup_swaps_the_rules_and_a_broken_file_keeps_them() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("rules.toml");
    let log_path = dir.path().join("police.log");
    std::fs::write(&rules_path, FIRST_RULES).unwrap();
    let mut police = logsentinel(&redis.url())
        .args(["police", "--consumer", "p1", "--quiet", "--rules"])
        .arg(&rules_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("spawn police");
    wait_until("the police started", Duration::from_secs(30), || {
        log_lines_with(&log_path, "police started") == 1
    });

    push_event(&mut connection, "e:1:0", "alpha one");
    push_event(&mut connection, "e:1:1", "beta one");
    wait_until("the first rule's alert", Duration::from_secs(30), || {
        alert_ids(&mut connection) == ["e:1:0/first"]
    });

    std::fs::write(&rules_path, SECOND_RULES).unwrap();
    sighup(&police);
    wait_until("the reload", Duration::from_secs(30), || {
        log_lines_with(&log_path, "rule file reloaded") == 1
    });
    push_event(&mut connection, "e:2:0", "alpha two");
    push_event(&mut connection, "e:2:1", "beta two");
    wait_until("the second rule's alert", Duration::from_secs(30), || {
        alert_ids(&mut connection).len() == 2
    });
    assert_eq!(alert_ids(&mut connection), ["e:1:0/first", "e:2:1/second"]);

    std::fs::write(&rules_path, BROKEN_RULES).unwrap();
    sighup(&police);
    wait_until("the refused reload", Duration::from_secs(30), || {
        log_lines_with(&log_path, "rule file not reloaded") == 1
    });
    let log = std::fs::read_to_string(&log_path).unwrap();
    let place = format!("{}:5:22: bad regex", rules_path.display());
    assert!(log.contains(&place), "the log names the error and its place: {log}");
    push_event(&mut connection, "e:3:0", "alpha three");
    push_event(&mut connection, "e:3:1", "beta three");
    wait_until("the kept rule's alert", Duration::from_secs(30), || {
        alert_ids(&mut connection).len() == 3
    });
    assert_eq!(
        alert_ids(&mut connection),
        ["e:1:0/first", "e:2:1/second", "e:3:1/second"]
    );
    wait_until("every entry settled", Duration::from_secs(30), || {
        pending_total(&mut connection) == 0 && group_lag(&status_json(&redis.url())) == 0
    });
    assert!(police.try_wait().unwrap().is_none(), "the police still runs");
    stop_gracefully(police);
}

#[test]
fn a_broken_rule_file_stops_the_start_with_every_error() {
    let redis = TestRedis::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("rules.toml");
    std::fs::write(
        &rules_path,
        "[[rules]]\nname = \"a\"\ntype = \"frequency\"\nwindow = \"soon\"\nthreshold = 3\n\n[[rules]]\nname = \"a\"\ntype = \"any\"\n",
    )
    .unwrap();
    let output = logsentinel(&redis.url())
        .args(["police", "--consumer", "p1", "--quiet", "--rules"])
        .arg(&rules_path)
        .output()
        .expect("run police");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let file = rules_path.display();
    assert!(
        stderr.contains(&format!("{file}:4:10: bad duration \"soon\" for window")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:8:8: duplicate rule name \"a\"")),
        "{stderr}"
    );
    let missing = dir.path().join("missing.toml");
    let output = logsentinel(&redis.url())
        .args(["police", "--consumer", "p1", "--quiet", "--rules"])
        .arg(&missing)
        .output()
        .expect("run police");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot read the rule file"), "{stderr}");
}

#[test]
fn without_a_rule_file_sighup_is_ignored() {
    let redis = TestRedis::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("police.log");
    let police = logsentinel(&redis.url())
        .args(["police", "--consumer", "p1", "--quiet"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("spawn police");
    wait_until("the police started", Duration::from_secs(30), || {
        log_lines_with(&log_path, "police started") == 1
    });
    sighup(&police);
    wait_until("the ignored SIGHUP", Duration::from_secs(30), || {
        log_lines_with(&log_path, "SIGHUP ignored") == 1
    });
    // Still running: a graceful stop exits 0.
    stop_gracefully(police);
}

#[test]
fn a_reload_whose_new_sink_cannot_read_its_secret_keeps_the_rules() {
    const UNSET: &str = "LOGSENTINEL_TEST_RELOAD_UNSET_PAGER_URL";
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("rules.toml");
    let log_path = dir.path().join("police.log");
    std::fs::write(&rules_path, FIRST_RULES).unwrap();
    let mut police = logsentinel(&redis.url())
        .args(["police", "--consumer", "p1", "--quiet", "--rules"])
        .arg(&rules_path)
        .env_remove(UNSET)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("spawn police");
    wait_until("the police started", Duration::from_secs(30), || {
        log_lines_with(&log_path, "police started") == 1
    });

    // The second rule routed to an added sink whose URL comes from an unset variable: the
    // file loads (`rules check` never reads secrets), but a start with it would fail.
    let with_pager = format!(
        "{SECOND_RULES}sinks = [\"pager\"]\n\n[sinks.pager]\ntype = \"webhook\"\nurl = {{ env = \"{UNSET}\" }}\n"
    );
    std::fs::write(&rules_path, &with_pager).unwrap();
    sighup(&police);
    wait_until("the refused reload", Duration::from_secs(30), || {
        log_lines_with(&log_path, "rule file not reloaded") == 1
    });
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains(&format!(
            "sink pager: secret url: environment variable {UNSET} is not set"
        )),
        "the log names the sink, the key and the variable: {log}"
    );
    assert!(!log.contains("rule file reloaded"), "{log}");
    // A URL that is not http(s): found when the sink is built, at the reload as at a start.
    std::fs::write(
        &rules_path,
        with_pager.replace(&format!("{{ env = \"{UNSET}\" }}"), "\"ftp://127.0.0.1/hook\""),
    )
    .unwrap();
    sighup(&police);
    wait_until("the second refused reload", Duration::from_secs(30), || {
        log_lines_with(&log_path, "rule file not reloaded") == 2
    });
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("sink pager: url must be an http:// or https:// URL with a host"),
        "{log}"
    );
    assert!(!log.contains("rule file reloaded"), "{log}");
    push_event(&mut connection, "e:1:0", "alpha one");
    push_event(&mut connection, "e:1:1", "beta one");
    wait_until("the kept rule's alert", Duration::from_secs(30), || {
        !alert_ids(&mut connection).is_empty()
    });
    wait_until("every entry settled", Duration::from_secs(30), || {
        pending_total(&mut connection) == 0 && group_lag(&status_json(&redis.url())) == 0
    });
    assert_eq!(
        alert_ids(&mut connection),
        ["e:1:0/first"],
        "the first rule is still in force"
    );
    assert!(police.try_wait().unwrap().is_none(), "the police still runs");
    stop_gracefully(police);
}
