//! Test harness: a real `redis-server` on a free loopback port (fails loudly when it cannot
//! start), the real `logsentinel` binary, and helpers to wait for conditions.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use logsentinel::local_redis::LocalRedis;

pub mod rules;

pub struct TestRedis {
    pub server: LocalRedis,
    _dir: tempfile::TempDir,
}

impl TestRedis {
    pub fn start(extra_args: &[&str]) -> TestRedis {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let server = LocalRedis::start(dir.path(), extra_args)
            .unwrap_or_else(|error| panic!("the tests need a real redis-server: {error}"));
        TestRedis { server, _dir: dir }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|client| client.get_connection())
            .expect("connect to test redis")
    }
}

pub fn logsentinel(url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_logsentinel"));
    command.arg("--redis-url").arg(url).env("LOGSENTINEL_LOG", "info");
    // Tests run agents and police side by side: each admin listener takes a free port.
    command.env("LOGSENTINEL_ADMIN_LISTEN", "127.0.0.1:0");
    command.stdin(Stdio::null());
    command
}

/// An agent writing its JSON summary to stdout.
pub fn spawn_agent(url: &str, agent_id: &str, args: &[&str]) -> Child {
    logsentinel(url)
        .args(["agent", "--agent-id", agent_id, "--summary-json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent")
}

pub fn spawn_police(url: &str, consumer: &str, args: &[&str]) -> Child {
    logsentinel(url)
        .args(["police", "--consumer", consumer, "--quiet"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn police")
}

/// A police whose stderr goes to `log`, for the tests that read what it says.
pub fn spawn_police_with(url: &str, consumer: &str, args: &[&str], log: &std::path::Path) -> Child {
    logsentinel(url)
        .args(["police", "--consumer", consumer, "--quiet"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("police log file"))
        .spawn()
        .expect("spawn police")
}

pub struct AgentSummary {
    pub agent_id: String,
    pub run_id: String,
    pub events: u64,
    pub alerting_events: u64,
    pub unsent_events: u64,
    /// The whole summary, for the less common fields.
    pub raw: serde_json::Value,
}

/// Waits for an agent and reads its summary.
pub fn agent_summary(mut agent: Child) -> AgentSummary {
    let status = wait_with_deadline(&mut agent, Duration::from_secs(180));
    let mut output = String::new();
    agent
        .stdout
        .take()
        .expect("agent stdout is piped")
        .read_to_string(&mut output)
        .expect("read agent stdout");
    assert!(status.success(), "agent exited with {status}: {output}");
    let summary: serde_json::Value = serde_json::from_str(output.trim()).expect("agent summary is JSON");
    let per_level = &summary["events_per_level"];
    let alerting_events = ["CRITICAL", "ALERT", "EMERGENCY"]
        .iter()
        .map(|level| per_level[level].as_u64().unwrap_or(0))
        .sum();
    AgentSummary {
        agent_id: summary["agent_id"].as_str().unwrap().to_string(),
        run_id: summary["run_id"].as_str().unwrap().to_string(),
        events: summary["events"].as_u64().unwrap(),
        alerting_events,
        unsent_events: summary["unsent_events"].as_u64().unwrap(),
        raw: summary.clone(),
    }
}

/// SIGTERM, then the summary.
pub fn stop_and_summarise(agent: Child) -> AgentSummary {
    sigterm(&agent);
    agent_summary(agent)
}

pub fn wait_with_deadline(child: &mut Child, deadline: Duration) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn sigterm(child: &Child) {
    // SAFETY: kill(2) on a child we own; no memory is touched.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
}

/// SIGTERM and wait; the process must exit 0 within 20 s.
pub fn stop_gracefully(mut child: Child) {
    sigterm(&child);
    let status = wait_with_deadline(&mut child, Duration::from_secs(20));
    assert!(status.success(), "graceful stop exited with {status}");
}

/// Polls `condition` until it holds; the deadline only guards against hangs.
pub fn wait_until(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn counters(connection: &mut redis::Connection, key: &str) -> HashMap<String, u64> {
    redis::cmd("HGETALL").arg(key).query(connection).expect("HGETALL")
}

/// Every entry of a stream, as (id, field map).
pub fn read_stream(connection: &mut redis::Connection, key: &str) -> Vec<(String, HashMap<String, String>)> {
    let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(connection)
        .expect("XRANGE");
    reply
        .into_iter()
        .map(|(id, fields)| (id, fields.into_iter().collect()))
        .collect()
}

/// Checks that the alerts stream holds exactly `expected` alerts, each id once, each for
/// an event at CRITICAL or above.
pub fn assert_alerts_exactly_once(connection: &mut redis::Connection, expected: u64) {
    let alerts = read_stream(connection, "logsentinel:alerts");
    let mut ids = HashSet::new();
    for (_, fields) in &alerts {
        let alert: serde_json::Value = serde_json::from_str(&fields["alert"]).expect("alert is JSON");
        let level = alert["event"]["level"].as_str().unwrap();
        assert!(
            ["CRITICAL", "ALERT", "EMERGENCY"].contains(&level),
            "alert for a {level} event"
        );
        assert_eq!(alert["alert_id"].as_str().unwrap(), fields["id"]);
        assert!(ids.insert(fields["id"].clone()), "duplicate alert {}", fields["id"]);
    }
    assert_eq!(alerts.len() as u64, expected, "alerts in the alerts stream");
}

pub fn pending_total(connection: &mut redis::Connection) -> u64 {
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg("logsentinel:logs")
        .arg("police")
        .query(connection)
        .expect("XPENDING");
    match reply {
        redis::Value::Array(parts) => redis::from_redis_value::<u64>(parts[0].clone()).unwrap(),
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

/// `logsentinel status --json`, parsed.
pub fn status_json(url: &str) -> serde_json::Value {
    let output = logsentinel(url)
        .args(["status", "--json"])
        .output()
        .expect("run status");
    assert!(
        output.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("status --json is JSON")
}

pub fn group_lag(status: &serde_json::Value) -> u64 {
    status["stream"]["groups"][0]["lag"].as_u64().expect("group lag")
}

/// XGROUP CREATE <stream> <group> 0 MKSTREAM.
pub fn create_group(connection: &mut redis::Connection, group: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("logsentinel:logs")
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query(connection)
        .unwrap();
}

/// The events of the log stream (one per entry), as JSON.
pub fn stream_events(connection: &mut redis::Connection) -> Vec<serde_json::Value> {
    read_stream(connection, "logsentinel:logs")
        .iter()
        .map(|(_, fields)| serde_json::from_str(&fields["event"]).expect("event is JSON"))
        .collect()
}

/// A free loopback address for a listener of the program under test.
pub fn free_address() -> String {
    format!(
        "127.0.0.1:{}",
        logsentinel::local_redis::free_loopback_port().expect("free port")
    )
}

/// XLEN of the log stream.
pub fn stream_length(connection: &mut redis::Connection) -> u64 {
    redis::cmd("XLEN")
        .arg("logsentinel:logs")
        .query(connection)
        .expect("XLEN")
}

/// Messages of the log stream's events, whether entries hold one event or several.
pub fn stream_messages(connection: &mut redis::Connection) -> Vec<String> {
    let mut messages = Vec::new();
    for (_, fields) in read_stream(connection, "logsentinel:logs") {
        let payload = fields.get("event").or_else(|| fields.get("events")).expect("v1 entry");
        for line in payload.lines() {
            let event: serde_json::Value = serde_json::from_str(line).expect("event is JSON");
            messages.push(event["message"].as_str().expect("message").to_string());
        }
    }
    messages
}

/// `curl` posting `body` (written to a file first); returns the status code and the
/// response headers and body.
pub fn curl_post(address: &str, path: &str, body: &[u8]) -> (u16, String) {
    let body_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(body_file.path(), body).expect("write body");
    let output = Command::new("curl")
        .args([
            "-s",
            "-i",
            "-m",
            "60",
            "-H",
            "Content-Type: application/x-ndjson",
            "-H",
            "Expect:", // no 100-continue for large bodies: the first status is the answer
            "--data-binary",
        ])
        .arg(format!("@{}", body_file.path().display()))
        .arg(format!("http://{address}{path}"))
        .output()
        .expect("the tests need curl");
    let response = String::from_utf8_lossy(&output.stdout).to_string();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status from curl: {response:?}"));
    (status, response)
}

/// Peak resident memory of a running process (`VmHWM` in `/proc/PID/status`), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// An agent writing its JSON summary to stdout and its log to `log_file`.
pub fn spawn_agent_logging(url: &str, agent_id: &str, args: &[&str], log_file: &std::path::Path) -> Child {
    let log = std::fs::File::create(log_file).expect("create log file");
    logsentinel(url)
        .args(["agent", "--agent-id", agent_id, "--summary-json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn agent")
}

/// Lines of a log file that contain `needle`.
pub fn log_lines_with(log_file: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(log_file)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(needle))
        .count()
}

/// A counter of the agent's summary (0 when absent).
pub fn summary_count(summary: &AgentSummary, field: &str) -> u64 {
    summary.raw[field].as_u64().unwrap_or(0)
}

/// A self-signed certificate for 127.0.0.1 and localhost, made with the openssl command
/// line: `(cert.pem, key.pem)` in `dir`.
pub fn self_signed_certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the TLS tests need the openssl command");
    assert!(status.success(), "openssl req failed");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Waits for a process to exit (180 s guards hangs); returns its status and stdout.
pub fn exit_and_output(mut child: Child) -> (ExitStatus, String) {
    let status = wait_with_deadline(&mut child, Duration::from_secs(180));
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut output).expect("read stdout");
    }
    (status, output)
}

/// The file's text, empty while it does not exist.
pub fn file_text(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits for a process and parses the JSON summary it printed; any exit status.
pub fn status_and_summary(child: Child) -> (ExitStatus, serde_json::Value) {
    let (status, output) = exit_and_output(child);
    let summary = serde_json::from_str(output.trim())
        .unwrap_or_else(|error| panic!("no JSON summary ({error}), exit {status}: {output:?}"));
    (status, summary)
}

/// A small tmpfs mounted on a fresh directory (a disk that fills up), unmounted on drop.
/// Mounting needs root: the test fails loudly without it rather than skip.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp dir for tmpfs");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "this test fills a small disk: it mounts a tmpfs and must run as root: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Tmpfs { dir }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
