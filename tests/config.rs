//! Configuration errors exit with code 2 naming the key; precedence is flags > environment >
//! file > defaults; an unreachable Redis is retried and reported, never a panic.

mod common;

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;

fn run_failing(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let mut command = logsentinel("redis://127.0.0.1:1");
    command.args(args);
    for (name, value) in envs {
        command.env(name, value);
    }
    let output = command.output().expect("run logsentinel");
    (
        output.status.code().expect("exit code"),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// As [`run_failing`], for commands that would run until stopped if the config were taken.
fn run_with_deadline(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let mut command = logsentinel("redis://127.0.0.1:1");
    command.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    for (name, value) in envs {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("run logsentinel");
    let status = wait_with_deadline(&mut child, Duration::from_secs(30));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr is piped")
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code().expect("exit code"), stderr)
}

#[test]
fn invalid_config_exits_2_and_names_the_key() {
    let (code, stderr) = run_failing(&["agent", "--pack", "0"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("invalid config: pack: 0 is not between 1 and 10000"),
        "{stderr}"
    );

    let (code, stderr) = run_failing(&["agent"], &[("LOGSENTINEL_LEVEL_MIX", "INFO=lots")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("level_mix"), "{stderr}");

    let (code, stderr) = run_failing(&["police", "--alert-level", "loud"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("alert_level: unknown level \"loud\""), "{stderr}");

    let (code, stderr) = run_failing(&["status", "--redis-url", "http://example"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("redis_url"), "{stderr}");

    let (code, stderr) = run_failing(&["agent", "--rate", "fast"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--rate"), "{stderr}");

    // The variable of an option's older spelling is still read.
    let (code, stderr) = run_failing(&["police"], &[("LOGSENTINEL_CLAIM_IDLE_MS", "0")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("claim_idle"), "{stderr}");

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "[police]\nclaim_idel = 5\n").unwrap();
    let (code, stderr) = run_failing(&["police", "--config", file.path().to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("claim_idel"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn invalid_source_settings_exit_2_and_name_the_key() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["agent", "--source", "file"],
            "invalid config: file: the file source needs",
        ),
        (
            &["agent", "--source", "synthetic,http"],
            "invalid config: source: synthetic cannot be combined",
        ),
        (
            &["agent", "--source", "stdin", "--level-pattern", "(unclosed"],
            "invalid config: level_pattern",
        ),
        (
            &["agent", "--source", "stdin", "--multiline-continuation", "[a-"],
            "invalid config: multiline_continuation",
        ),
        (
            &["agent", "--source", "http", "--http-listen", "everywhere"],
            "invalid config: http_listen",
        ),
        (
            &["agent", "--spool-dir", "/tmp/x", "--spool-max-bytes", "10"],
            "invalid config: spool_max_bytes",
        ),
        (&["agent", "--when-full", "explode"], "--when-full"),
        (
            &["agent", "--source", "http", "--http-token-file", "/nonexistent/token"],
            "invalid config: http_token_file: cannot read /nonexistent/token",
        ),
        (
            &["agent", "--source", "http", "--tls-cert", "/nonexistent/cert.pem"],
            "invalid config: tls_key: tls_cert is set",
        ),
        (
            &[
                "agent",
                "--source",
                "http",
                "--tls-cert",
                "/nonexistent/cert.pem",
                "--tls-key",
                "/nonexistent/key.pem",
            ],
            "invalid config: tls_cert: cannot read certificates from /nonexistent/cert.pem",
        ),
        (
            &["agent", "--source", "stdin", "--max-line-bytes", "100"],
            "invalid config: max_line_bytes: 100 is not between 256 and 1073741824",
        ),
        (
            &["agent", "--source", "syslog", "--syslog-max-connections", "0"],
            "invalid config: syslog_max_connections: 0 is not between 1 and 1000000",
        ),
    ];
    for (args, expected) in cases {
        let (code, stderr) = run_failing(args, &[]);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "[agent]\nsource = [\"file\", \"http\"]\nfile = []\n").unwrap();
    let (code, stderr) = run_failing(&["agent", "--config", file.path().to_str().unwrap()], &[]);
    assert_eq!(code, 2, "a list of sources from the file is read: {stderr}");
    assert!(stderr.contains("invalid config: file:"), "{stderr}");

    // A listening address already taken stops startup with a message, exit 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run_failing(&["agent", "--source", "http", "--http-listen", &address], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot listen for HTTP"), "{stderr}");
}

#[test]
fn streams_that_would_feed_the_police_its_own_output_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--dead-stream", "logsentinel:logs", "police"],
            "invalid config: dead_stream: \"logsentinel:logs\" is the same key as stream",
        ),
        (
            &["--alerts-stream", "logsentinel:logs", "agent"],
            "invalid config: alerts_stream: \"logsentinel:logs\" is the same key as stream",
        ),
        (
            &["--dead-stream", "logsentinel:alerts", "status"],
            "invalid config: dead_stream: \"logsentinel:alerts\" is the same key as alerts_stream",
        ),
        (
            &["--key", "logsentinel:logs", "police", "--source", "list"],
            "invalid config: key: \"logsentinel:logs\" is the same key as stream",
        ),
        (
            &["--alerts-stream", "log_queue:alive:p1", "police"],
            "invalid config: alerts_stream: \"log_queue:alive:p1\" is a liveness key of key",
        ),
    ];
    for (args, expected) in cases {
        let (code, stderr) = run_with_deadline(args, &[]);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let (code, stderr) = run_with_deadline(&["police"], &[("LOGSENTINEL_DEAD_STREAM", "logsentinel:logs")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("dead_stream"), "{stderr}");
}

#[test]
fn out_of_range_numbers_exit_2_and_name_the_key() {
    const HUGE: &str = "18446744073709551615";
    let cases: &[(&[&str], &str)] = &[
        (&["agent", "--queue-batches", HUGE], "queue_batches"),
        (&["agent", "--batch", HUGE], "batch"),
        (&["agent", "--linger-ms", HUGE], "linger"),
        (&["agent", "--shutdown-timeout-ms", HUGE], "shutdown_timeout"),
        (&["police", "--read-count", HUGE], "read_count"),
        (&["police", "--block-ms", HUGE], "block"),
        (&["police", "--claim-idle-ms", HUGE], "claim_idle"),
        (&["police", "--consumer-idle-remove-ms", HUGE], "consumer_idle_remove"),
        (&["police", "--maintenance-interval-ms", HUGE], "maintenance_interval"),
        (&["police", "--alert-dedup-ttl-s", HUGE], "alert_dedup_ttl"),
        (&["police", "--max-entry-bytes", HUGE], "max_entry_bytes"),
    ];
    for (args, key) in cases {
        let (code, stderr) = run_with_deadline(args, &[]);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        // numbers: the validation names the key; durations: clap names the flag, whose
        // spelling with `_` is the key
        let named = stderr.contains(&format!("invalid config: {key}: ")) && stderr.contains("is not between");
        let flag_named = stderr.contains(&format!("invalid value '{HUGE}' for '--{}", key.replace('_', "-")));
        assert!(named || flag_named, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// Entries written by an agent of 8 events: the pack size tells which setting won.
fn entries_written(redis: &TestRedis, config_path: &str, envs: &[(&str, &str)], args: &[&str]) -> u64 {
    let mut connection = redis.connection();
    let _: () = redis::cmd("DEL")
        .arg("logsentinel:logs")
        .query(&mut connection)
        .unwrap();
    let mut command = logsentinel(&redis.url());
    command
        .args([
            "--config",
            config_path,
            "agent",
            "--count",
            "8",
            "--rate",
            "0",
            "--summary-json",
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (name, value) in envs {
        command.env(name, value);
    }
    assert!(command.status().unwrap().success());
    redis::cmd("XLEN")
        .arg("logsentinel:logs")
        .query(&mut connection)
        .unwrap()
}

#[test]
fn flags_beat_environment_beat_file_beat_defaults() {
    let redis = TestRedis::start(&[]);
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().to_str().unwrap();
    std::fs::write(path, "[agent]\npack = 4\n").unwrap();
    assert_eq!(entries_written(&redis, path, &[], &[]), 2, "file: pack 4");
    assert_eq!(
        entries_written(&redis, path, &[("LOGSENTINEL_PACK", "2")], &[]),
        4,
        "env: pack 2"
    );
    assert_eq!(
        entries_written(&redis, path, &[("LOGSENTINEL_PACK", "2")], &["--pack", "8"]),
        1,
        "flag: pack 8"
    );
    std::fs::write(path, "").unwrap();
    assert_eq!(entries_written(&redis, path, &[], &[]), 8, "default: pack 1");
}

/// A process whose stderr goes to a file, readable while it runs.
struct Logged {
    child: Child,
    stderr: tempfile::NamedTempFile,
}

impl Logged {
    fn said(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }
}

fn spawn_with_stderr(args: &[&str]) -> Logged {
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let child = logsentinel("redis://127.0.0.1:1")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .unwrap();
    Logged { child, stderr }
}

fn stderr_of(logged: Logged) -> (i32, String, String) {
    let output = logged.child.wait_with_output().unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        std::fs::read_to_string(logged.stderr.path()).unwrap(),
    )
}

#[test]
fn unreachable_redis_is_retried_and_reported_never_a_panic() {
    let (code, stderr) = run_failing(&["status"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot reach Redis at redis://127.0.0.1:1"), "{stderr}");

    let agent = spawn_with_stderr(&[
        "agent",
        "--count",
        "10",
        "--shutdown-timeout-ms",
        "500",
        "--summary-json",
    ]);
    let police = spawn_with_stderr(&["police"]);
    wait_until("both report Redis unreachable", Duration::from_secs(20), || {
        [&agent, &police]
            .iter()
            .all(|logged| logged.said().contains("redis unreachable, retrying"))
            && police.said().contains("component=\"delivery\"")
    });
    sigterm(&agent.child);
    sigterm(&police.child);
    let (agent_code, agent_stdout, agent_stderr) = stderr_of(agent);
    let (police_code, _, police_stderr) = stderr_of(police);

    assert_eq!(agent_code, 1, "an agent that could not deliver fails: {agent_stderr}");
    let summary: serde_json::Value = serde_json::from_str(agent_stdout.trim()).unwrap();
    assert_eq!(
        summary["unsent_events"], 10,
        "undelivered events are counted, not dropped silently"
    );
    assert_eq!(
        agent_stderr.matches("redis unreachable, retrying").count(),
        1,
        "one line per state change"
    );
    assert!(agent_stderr.contains("events not delivered"), "{agent_stderr}");

    assert_eq!(police_code, 0, "{police_stderr}");
    // One line per state change and component: the read loop, and the console sink's
    // delivery worker, which has a connection of its own.
    for component in ["component=\"police\"", "component=\"delivery\""] {
        let lines = police_stderr
            .lines()
            .filter(|line| line.contains("redis unreachable, retrying") && line.contains(component))
            .count();
        assert_eq!(lines, 1, "{component}: {police_stderr}");
    }
    for stderr in [&agent_stderr, &police_stderr] {
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
