//! Configuration errors exit with code 2 naming the key; precedence is flags > environment >
//! file > defaults; an unreachable Redis is retried and reported, never a panic.

mod common;

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

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "[police]\nclaim_idle = 5\n").unwrap();
    let (code, stderr) = run_failing(&["police", "--config", file.path().to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("claim_idle"), "{stderr}");
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
            "invalid config: max_line_bytes: 100 is below 256",
        ),
        (
            &["agent", "--source", "syslog", "--syslog-max-connections", "0"],
            "invalid config: syslog_max_connections: must be at least 1",
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

fn spawn_with_stderr(args: &[&str]) -> Child {
    logsentinel("redis://127.0.0.1:1")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stderr_of(child: Child) -> (i32, String, String) {
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
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
    std::thread::sleep(Duration::from_millis(1500));
    sigterm(&agent);
    sigterm(&police);
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
    assert_eq!(
        police_stderr.matches("redis unreachable, retrying").count(),
        1,
        "{police_stderr}"
    );
    for stderr in [&agent_stderr, &police_stderr] {
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
