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
