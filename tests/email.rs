//! The email sink against a real SMTP server (aiosmtpd, `tests/smtp_server.py`) on a
//! loopback port, with STARTTLS on a self-signed certificate and AUTH: the messages the
//! server received are read back (subject, plain and HTML parts, headers).

#[path = "common/alerts.rs"]
mod alerts;
mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use alerts::sample_alert;
use common::{free_address, wait_until};
use logsentinel::delivery::config::SinkConfig;
use logsentinel::delivery::sinks::email::EmailSink;
use logsentinel::delivery::{AlertSink, Message, SinkError};
use logsentinel::event::{Level, LogEvent};
use logsentinel::police::alert::{Alert, AlertStatus};

/// A Python with aiosmtpd: Debian's (`/usr/bin/python3`, where python3-aiosmtpd installs
/// it) first, then whatever `python3` is on the PATH.
fn python_with_aiosmtpd() -> String {
    for candidate in ["/usr/bin/python3", "python3"] {
        let found = Command::new(candidate)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if found {
            return candidate.to_string();
        }
    }
    panic!("the email tests need aiosmtpd: apt-get install python3-aiosmtpd");
}

/// A self-signed certificate for 127.0.0.1 marked as a leaf (`CA:FALSE`): rustls, unlike
/// OpenSSL, refuses a CA certificate as a server's own, so openssl's default
/// (`CA:TRUE`) would not do.
fn server_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the email tests need the openssl command");
    assert!(status.success(), "openssl req failed");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// The SMTP server of `tests/smtp_server.py`, killed on drop.
struct TestSmtp {
    address: String,
    dir: tempfile::TempDir,
    cert: PathBuf,
    child: Child,
}

impl TestSmtp {
    fn start(extra_args: &[&str]) -> TestSmtp {
        let dir = tempfile::tempdir().expect("temp dir for the smtp server");
        let (cert, key) = server_certificate(dir.path());
        let address = free_address();
        let port = address.rsplit_once(':').expect("host:port").1.to_string();
        let child = Command::new(python_with_aiosmtpd())
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_server.py"))
            .args(["--port", &port])
            .arg("--dir")
            .arg(dir.path())
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(["--user", "alerts", "--password", "s3cret"])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the smtp server");
        let probe = address.clone();
        wait_until("smtp server listening", Duration::from_secs(30), || {
            std::net::TcpStream::connect(&probe).is_ok()
        });
        TestSmtp {
            address,
            dir,
            cert,
            child,
        }
    }

    /// The `[sinks.mail]` table for this server; the password comes from a file.
    fn sink_config(&self, password: &str) -> SinkConfig {
        self.sink_config_with(password, "starttls")
    }

    fn sink_config_with(&self, password: &str, security: &str) -> SinkConfig {
        let password_file = self.dir.path().join("password");
        std::fs::write(&password_file, format!("{password}\n")).expect("write password file");
        let text = format!(
            "type = \"email\"\nsmtp = \"{}\"\nsecurity = \"{security}\"\nusername = \"alerts\"\npassword = {{ file = \"{}\" }}\n\
             from = \"LogSentinel <logsentinel@example.com>\"\nto = [\"oncall@example.com\", \"team@example.com\"]\n\
             ca_file = \"{}\"\ntimeout = \"5s\"\n",
            self.address,
            password_file.display(),
            self.cert.display()
        );
        toml::from_str(&text).expect("sink config")
    }

    fn message(&self, number: usize) -> serde_json::Value {
        read_json(&self.dir.path().join(format!("{number}.json")))
    }

    fn wait_for_message(&self, number: usize) -> serde_json::Value {
        let path = self.dir.path().join(format!("{number}.json"));
        wait_until("message received", Duration::from_secs(30), || path.exists());
        self.message(number)
    }

    fn attempts(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("attempts"))
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for TestSmtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read message record")).expect("message JSON")
}

fn hostile_alert(status: AlertStatus) -> Alert {
    let event = LogEvent {
        id: "agent-1:7:0".into(),
        timestamp: "2026-12-01T12:00:00Z".into(),
        level: Level::Critical,
        service: "api".into(),
        host: "web-1".into(),
        message: "<img src=x onerror=alert(1)> & \"quoted\"".into(),
        extra: Default::default(),
    };
    Alert {
        group: BTreeMap::from([("service".into(), "api<b>".into())]),
        annotations: BTreeMap::from([("summary".into(), "password in <script>log</script>".into())]),
        count: 2,
        last_event_time: "2026-12-01T12:00:05Z".into(),
        raised_at: "2026-12-01T12:00:06Z".into(),
        event: Some(event),
        ..sample_alert("leaks/00000000000000aa/1764590400000", "leaks", "any", status, "mail")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_per_alert_over_starttls_with_auth_plain_and_escaped_html() {
    let smtp = TestSmtp::start(&[]);
    let sink = EmailSink::from_config("mail", &smtp.sink_config("s3cret"))
        .await
        .expect("sink");

    let firing = hostile_alert(AlertStatus::Firing);
    sink.deliver(&Message::Single(&firing)).await.expect("firing delivered");
    let message = smtp.wait_for_message(1);
    assert_eq!(message["tls"], true, "STARTTLS was used");
    assert_eq!(message["authenticated"], true, "AUTH was used");
    assert_eq!(message["subject"], "[LogSentinel] critical leaks api<b> firing");
    assert_eq!(message["content_type"], "multipart/alternative");
    assert_eq!(message["headers"]["X-LogSentinel-Alert-Id"], firing.alert_id);
    let firing_message_id = message["headers"]["Message-ID"]
        .as_str()
        .expect("Message-ID")
        .to_string();
    assert!(
        firing_message_id.ends_with(".firing.logsentinel@example.com>"),
        "{firing_message_id}"
    );
    assert_eq!(
        message["rcpt_tos"],
        serde_json::json!(["oncall@example.com", "team@example.com"])
    );
    let text = message["text"].as_str().expect("plain part");
    assert!(text.contains("password in <script>log</script>"), "{text}");
    assert!(text.contains("<img src=x onerror=alert(1)> & \"quoted\""), "{text}");
    let html = message["html"].as_str().expect("html part");
    assert!(html.contains("password in &lt;script&gt;log&lt;/script&gt;"), "{html}");
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt; &amp; &quot;quoted&quot;"),
        "{html}"
    );
    assert!(html.contains("api&lt;b&gt;"), "{html}");
    assert!(
        !html.contains("<script>") && !html.contains("<img") && !html.contains("<b>"),
        "{html}"
    );

    // the same alert again (at-least-once) carries the same Message-ID
    sink.deliver(&Message::Single(&firing)).await.expect("repeat delivered");
    assert_eq!(smtp.wait_for_message(2)["headers"]["Message-ID"], firing_message_id);

    // the resolve replies to the firing message
    let resolved = hostile_alert(AlertStatus::Resolved);
    sink.deliver(&Message::Single(&resolved))
        .await
        .expect("resolve delivered");
    let message = smtp.wait_for_message(3);
    assert_eq!(message["subject"], "[LogSentinel] critical leaks api<b> resolved");
    assert_eq!(message["headers"]["In-Reply-To"], firing_message_id);
    assert_ne!(message["headers"]["Message-ID"], firing_message_id);

    // a digest is one message naming every alert
    let alerts: Vec<Alert> = (0..3)
        .map(|index| {
            let mut alert = hostile_alert(AlertStatus::Firing);
            alert.alert_id = format!("leaks/{index:016x}/0");
            alert
        })
        .collect();
    sink.deliver(&Message::Digest {
        rule: "leaks",
        alerts: &alerts,
    })
    .await
    .expect("digest delivered");
    let message = smtp.wait_for_message(4);
    assert_eq!(
        message["subject"],
        "[LogSentinel] critical leaks digest: 3 alerts (3 firing, 0 resolved)"
    );
    assert_eq!(
        message["headers"]["X-LogSentinel-Alert-Id"],
        "leaks/0000000000000000/0, leaks/0000000000000001/0, leaks/0000000000000002/0"
    );
    let text = message["text"].as_str().expect("plain part");
    for alert in &alerts {
        assert!(text.contains(&alert.alert_id), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_several_lines_with_an_escape_is_shown_on_one_line() {
    let smtp = TestSmtp::start(&[
        "--fail-code",
        "550",
        "--fail-count",
        "1000",
        "--fail-text",
        "5.7.1 refused \u{1b}[2J\n2026-12-01T12:00:00.000000Z ERROR logsentinel::police: forged",
    ]);
    let sink = EmailSink::from_config("mail", &smtp.sink_config("s3cret"))
        .await
        .expect("sink");
    match sink
        .deliver(&Message::Single(&hostile_alert(AlertStatus::Firing)))
        .await
    {
        Err(SinkError::Permanent { status, .. }) => {
            assert!(!status.chars().any(char::is_control), "one line: {status:?}");
            // lettre joins the reply's lines; a terminal escape in one is escaped.
            assert!(status.contains("refused \\u{1b}[2J"), "{status}");
            assert!(
                status.chars().count() <= logsentinel::delivery::MAX_STATUS_CHARS,
                "{status}"
            );
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_550_is_permanent() {
    let smtp = TestSmtp::start(&["--fail-code", "550", "--fail-count", "1000"]);
    let sink = EmailSink::from_config("mail", &smtp.sink_config("s3cret"))
        .await
        .expect("sink");
    match sink
        .deliver(&Message::Single(&hostile_alert(AlertStatus::Firing)))
        .await
    {
        Err(SinkError::Permanent { status, .. }) => assert!(status.contains("550"), "{status}"),
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_451_is_retryable_and_the_retry_is_accepted() {
    let smtp = TestSmtp::start(&["--fail-code", "451", "--fail-count", "1"]);
    let sink = EmailSink::from_config("mail", &smtp.sink_config("s3cret"))
        .await
        .expect("sink");
    let alert = hostile_alert(AlertStatus::Firing);
    match sink.deliver(&Message::Single(&alert)).await {
        Err(SinkError::Retryable { status, .. }) => assert!(status.contains("451"), "{status}"),
        other => panic!("expected a retryable error, got {other:?}"),
    }
    sink.deliver(&Message::Single(&alert))
        .await
        .expect("the retry is accepted");
    assert_eq!(
        smtp.wait_for_message(1)["headers"]["X-LogSentinel-Alert-Id"],
        alert.alert_id
    );
    assert_eq!(smtp.attempts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_permanent_and_an_untrusted_certificate_retryable() {
    let smtp = TestSmtp::start(&[]);
    let sink = EmailSink::from_config("mail", &smtp.sink_config("wrong"))
        .await
        .expect("sink");
    match sink
        .deliver(&Message::Single(&hostile_alert(AlertStatus::Firing)))
        .await
    {
        Err(SinkError::Permanent { status, .. }) => assert!(status.contains("535"), "{status}"),
        other => panic!("expected a permanent error, got {other:?}"),
    }

    // without the CA file the self-signed certificate is not trusted: never sent in clear
    let text = format!(
        "type = \"email\"\nsmtp = \"{}\"\nfrom = \"logsentinel@example.com\"\nto = [\"oncall@example.com\"]\ntimeout = \"5s\"\n",
        smtp.address
    );
    let untrusting = EmailSink::from_config("mail", &toml::from_str(&text).expect("config"))
        .await
        .expect("sink");
    match untrusting
        .deliver(&Message::Single(&hostile_alert(AlertStatus::Firing)))
        .await
    {
        Err(SinkError::Retryable { .. }) => {}
        other => panic!("expected a retryable TLS error, got {other:?}"),
    }
    assert_eq!(smtp.attempts(), 0, "no message reached DATA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_a_retryable_timeout() {
    // the kernel completes the connection; nobody ever greets
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let text = format!(
        "type = \"email\"\nsmtp = \"{}\"\nsecurity = \"none\"\nfrom = \"logsentinel@example.com\"\nto = [\"oncall@example.com\"]\ntimeout = \"1s\"\n",
        silent.local_addr().expect("address")
    );
    let sink = EmailSink::from_config("mail", &toml::from_str(&text).expect("config"))
        .await
        .expect("sink");
    match sink
        .deliver(&Message::Single(&hostile_alert(AlertStatus::Firing)))
        .await
    {
        Err(SinkError::Retryable { .. }) => {}
        other => panic!("expected a retryable timeout, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_delivers_too() {
    let smtp = TestSmtp::start(&["--implicit-tls"]);
    let sink = EmailSink::from_config("mail", &smtp.sink_config_with("s3cret", "tls"))
        .await
        .expect("sink");
    let alert = hostile_alert(AlertStatus::Firing);
    sink.deliver(&Message::Single(&alert))
        .await
        .expect("delivered over TLS");
    let message = smtp.wait_for_message(1);
    assert_eq!(message["tls"], true);
    assert_eq!(message["authenticated"], true);
    assert_eq!(message["headers"]["X-LogSentinel-Alert-Id"], alert.alert_id);
}

fn push_critical(connection: &mut redis::Connection, id: &str, message: &str) {
    let event = serde_json::json!({
        "id": id, "timestamp": logsentinel::event::now_rfc3339(), "level": "CRITICAL",
        "service": "api", "host": "web-1", "message": message,
    });
    let _: String = redis::cmd("XADD")
        .arg("logsentinel:logs")
        .arg("*")
        .arg("v")
        .arg("1")
        .arg("event")
        .arg(event.to_string())
        .query(connection)
        .expect("XADD");
}

/// A rule file whose one rule mails every CRITICAL event through `smtp`.
fn mail_rules(smtp: &TestSmtp, dir: &Path) -> PathBuf {
    let password_file = dir.join("smtp-password");
    std::fs::write(&password_file, "s3cret\n").expect("write password");
    let rules = format!(
        r#"
[sinks.mail]
type = "email"
smtp = "{}"
username = "alerts"
password = {{ file = "{}" }}
from = "logsentinel@example.com"
to = ["oncall@example.com"]
ca_file = "{}"
timeout = "5s"
max_attempts = 3

[[rules]]
name = "critical"
type = "any"
filter = {{ level = "CRITICAL" }}
cooldown = "0s"
severity = "critical"
annotations = {{ summary = "{{service}}: {{message}}" }}
sinks = ["mail"]
"#,
        smtp.address,
        password_file.display(),
        smtp.cert.display()
    );
    let path = dir.join("rules.toml");
    std::fs::write(&path, rules).expect("write rules");
    path
}

fn sink_dead_letters(connection: &mut redis::Connection) -> Vec<HashMap<String, String>> {
    common::read_stream(connection, "logsentinel:dead:sink:mail")
        .into_iter()
        .map(|(_, fields)| fields)
        .collect()
}

#[test]
fn the_police_mails_one_message_per_alert() {
    let redis = common::TestRedis::start(&[]);
    let smtp = TestSmtp::start(&[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = mail_rules(&smtp, dir.path());
    let police = common::spawn_police(
        &redis.url(),
        "police-1",
        &["--rules", rules.to_str().expect("utf-8 path")],
    );
    let mut connection = redis.connection();
    push_critical(&mut connection, "agent-1:1:0", "disk <full> & \"failing\"");
    push_critical(&mut connection, "agent-1:2:0", "second");

    let first = smtp.wait_for_message(1);
    let second = smtp.wait_for_message(2);
    let mut ids = vec![
        first["headers"]["X-LogSentinel-Alert-Id"]
            .as_str()
            .expect("id header")
            .to_string(),
        second["headers"]["X-LogSentinel-Alert-Id"]
            .as_str()
            .expect("id header")
            .to_string(),
    ];
    ids.sort();
    assert_eq!(ids, ["agent-1:1:0/critical", "agent-1:2:0/critical"]);
    let full = if ids[0] == first["headers"]["X-LogSentinel-Alert-Id"] {
        &first
    } else {
        &second
    };
    assert_eq!(full["subject"], "[LogSentinel] critical critical firing");
    assert!(
        full["html"]
            .as_str()
            .expect("html")
            .contains("api: disk &lt;full&gt; &amp; &quot;failing&quot;")
    );
    assert!(
        full["text"]
            .as_str()
            .expect("text")
            .contains("api: disk <full> & \"failing\"")
    );
    common::stop_gracefully(police);
    assert!(sink_dead_letters(&mut connection).is_empty());
}

#[test]
fn the_police_dead_letters_a_550_and_retries_a_451() {
    let redis = common::TestRedis::start(&[]);
    let refusing = TestSmtp::start(&["--fail-code", "550", "--fail-count", "1000"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = mail_rules(&refusing, dir.path());
    let police = common::spawn_police(
        &redis.url(),
        "police-1",
        &["--rules", rules.to_str().expect("utf-8 path")],
    );
    let mut connection = redis.connection();
    push_critical(&mut connection, "agent-1:1:0", "refused");
    wait_until(
        "the refused alert in the sink's dead letters",
        Duration::from_secs(60),
        || !sink_dead_letters(&mut connection).is_empty(),
    );
    let dead = sink_dead_letters(&mut connection);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].values().any(|value| value.contains("550")), "{dead:?}");
    assert_eq!(refusing.attempts(), 1, "a permanent refusal is not retried");
    common::stop_gracefully(police);

    let redis = common::TestRedis::start(&[]);
    let busy = TestSmtp::start(&["--fail-code", "451", "--fail-count", "1"]);
    let rules = mail_rules(&busy, dir.path());
    let police = common::spawn_police(
        &redis.url(),
        "police-1",
        &["--rules", rules.to_str().expect("utf-8 path")],
    );
    let mut connection = redis.connection();
    push_critical(&mut connection, "agent-1:1:0", "busy");
    let message = busy.wait_for_message(1);
    assert_eq!(message["headers"]["X-LogSentinel-Alert-Id"], "agent-1:1:0/critical");
    assert_eq!(busy.attempts(), 2, "refused once with 451, accepted on the retry");
    common::stop_gracefully(police);
    assert!(sink_dead_letters(&mut connection).is_empty());
}
