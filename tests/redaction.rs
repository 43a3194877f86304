//! A password in the Redis URL appears in no output of any subcommand that takes the URL:
//! against a live Redis that requires it, a wrong port, a wrong password and malformed URLs,
//! with text and JSON logs at debug level, the URL given as a flag or a variable.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{TestRedis, wait_until};

const PASSWORD: &str = "Zq7-secret-pa55";
const WRONG_PASSWORD: &str = "Wr0ng-secret-pa55";
const DEADLINE: Duration = Duration::from_secs(60);

/// The binary with the URL in `LOGSENTINEL_REDIS_URL` or `--redis-url`, stdout and stderr
/// into files of `dir` (a piped child that logs a lot would block).
fn command(url: &str, as_variable: bool, log_format: &str, dir: &Path, name: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_logsentinel"));
    if as_variable {
        command.env("LOGSENTINEL_REDIS_URL", url);
    } else {
        command.arg("--redis-url").arg(url);
    }
    command
        .arg("--log-format")
        .arg(log_format)
        .env("LOGSENTINEL_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap());
    command
}

fn output_of(dir: &Path, name: &str) -> String {
    let stdout = std::fs::read_to_string(dir.join(format!("{name}.out"))).unwrap_or_default();
    let stderr = std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default();
    format!("{stdout}{stderr}")
}

fn assert_no_secret(output: &str, name: &str) {
    for secret in [PASSWORD, WRONG_PASSWORD] {
        assert!(!output.contains(secret), "{name} printed the password:\n{output}");
    }
}

/// Runs a subcommand that ends by itself; returns what it printed.
fn run_to_end(mut command: Command, dir: &Path, name: &str) -> String {
    let mut child = command.spawn().expect("spawn logsentinel");
    common::wait_with_deadline(&mut child, DEADLINE);
    output_of(dir, name)
}

/// Runs a long-lived subcommand until it has logged something, then stops it.
fn run_until_logged(mut command: Command, dir: &Path, name: &str) -> String {
    let mut child: Child = command.spawn().expect("spawn logsentinel");
    wait_until(&format!("{name} to log"), DEADLINE, || {
        !output_of(dir, name).is_empty() || child.try_wait().ok().flatten().is_some()
    });
    common::sigterm(&child);
    common::wait_with_deadline(&mut child, DEADLINE);
    output_of(dir, name)
}

/// Every subcommand that takes the URL, run against `url`; each output checked.
fn check_every_subcommand(url: &str, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut case = 0;
    for as_variable in [false, true] {
        for log_format in ["text", "json"] {
            let mut name = |what: &str| {
                case += 1;
                format!("{label}-{what}-{case}")
            };
            let one_shot: &[&[&str]] = &[
                &["status"],
                &["status", "--json"],
                &["top", "--once"],
                &["top", "--once", "--json"],
                &["healthcheck"],
                &["demo", "--duration", "1s", "--rate", "20"],
            ];
            for args in one_shot {
                let name = name(args[0]);
                let mut command = command(url, as_variable, log_format, dir, &name);
                command.args(*args);
                let output = run_to_end(command, dir, &name);
                assert_no_secret(&output, &name);
                if label == "live" && args == &["status", "--json"] {
                    assert!(
                        output.contains("\"logsentinel:logs\""),
                        "status ran against the live Redis: {output}"
                    );
                }
            }
            // An agent against an unreachable Redis keeps retrying until stopped, --count or not.
            let long_lived: &[&[&str]] = &[
                &["police", "--quiet"],
                &["agent", "--rate", "10"],
                &["agent", "--count", "20", "--rate", "0", "--shutdown-timeout", "1s"],
            ];
            for args in long_lived {
                let name = name(args[0]);
                let mut command = command(url, as_variable, log_format, dir, &name);
                command.args(*args);
                assert_no_secret(&run_until_logged(command, dir, &name), &name);
            }
        }
    }
}

#[test]
fn a_password_in_the_redis_url_is_never_printed() {
    let redis = TestRedis::start(&[]);
    let port = redis.server.port;
    // Set after the start: the harness's readiness PING has no password.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(PASSWORD)
        .query(&mut redis.connection())
        .expect("CONFIG SET requirepass");
    check_every_subcommand(&format!("redis://default:{PASSWORD}@127.0.0.1:{port}"), "live");

    check_every_subcommand(
        &format!("redis://default:{WRONG_PASSWORD}@127.0.0.1:{port}"),
        "wrong-password",
    );
    check_every_subcommand(&format!("redis://:{PASSWORD}@127.0.0.1:{port}"), "no-user");
    let free_port = common::free_address().rsplit(':').next().unwrap().to_string();
    check_every_subcommand(&format!("redis://app:{PASSWORD}@127.0.0.1:{free_port}"), "wrong-port");
}

#[test]
fn a_password_in_a_malformed_url_is_never_printed() {
    for (index, url) in [
        format!("redis://app:{PASSWORD}@127.0.0.1:notaport"),
        format!("redis//app:{PASSWORD}@127.0.0.1:6379"),
        format!("http://app:{PASSWORD}@127.0.0.1:6379"),
        format!("redis://127.0.0.1:6379/?password={PASSWORD}"),
        format!("redis://app:{PASSWORD}@[::1"),
    ]
    .iter()
    .enumerate()
    {
        check_every_subcommand(url, &format!("malformed{index}"));
    }
}
