//! The admin listener, from outside: real redis-server, real agent and police processes,
//! real HTTP on loopback, and `promtool check metrics` on what `/metrics` serves.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const DEADLINE: Duration = Duration::from_secs(60);

/// One GET over a fresh connection: status code and body; `None` when nothing listens.
fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string())?;
    Some((status, body))
}

/// The value of one sample (`name` with its labels, exactly as exposed), 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Sum of every sample of a metric, whatever its labels.
fn sum_of(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(metric))
        .filter(|line| line[metric.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn promtool_check(text: &str, what: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("the tests need promtool (Debian package prometheus): {error}"));
    promtool
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = promtool.wait_with_output().expect("promtool output");
    assert!(
        output.status.success(),
        "promtool rejects the {what} metrics: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn spawn_police_with_admin(url: &str, consumer: &str, admin: &str) -> Child {
    spawn_police(url, consumer, &["--admin-listen", admin])
}

fn wait_for_status(address: &str, path: &str, wanted: u16) -> String {
    let mut last = None;
    let started = std::time::Instant::now();
    loop {
        let answer = http_get(address, path);
        if let Some((status, body)) = &answer
            && *status == wanted
        {
            return body.clone();
        }
        last = answer.or(last);
        assert!(
            started.elapsed() < DEADLINE,
            "{path} never answered {wanted}; last answer {last:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn agent_and_police_metrics_pass_promtool_and_shipped_equals_processed() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let police_admin = free_address();
    let agent_admin = free_address();
    let mut police = spawn_police_with_admin(&url, "metrics-police", &police_admin);
    wait_for_status(&police_admin, "/readyz", 200);
    // A stdin agent stays up until its input closes: it is scraped after its last batch.
    let events: u64 = 3000;
    let mut agent = logsentinel(&url)
        .args([
            "agent",
            "--source",
            "stdin",
            "--agent-id",
            "metrics-agent",
            "--summary-json",
        ])
        .args(["--admin-listen", &agent_admin])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent");
    let mut input = agent.stdin.take().expect("piped stdin");
    let critical_lines = events / 10;
    for sequence in 0..events {
        let level = if sequence % 10 == 0 { "CRITICAL" } else { "INFO" };
        writeln!(input, "{level} request {sequence} served").expect("write to the agent");
    }
    input.flush().expect("flush the agent's input");
    let mut agent_text = String::new();
    wait_until("the agent to report every event shipped", DEADLINE, || {
        if let Some((200, text)) = http_get(&agent_admin, "/metrics") {
            agent_text = text;
        }
        sample(&agent_text, "logsentinel_agent_events_shipped_total") == events as f64
    });
    promtool_check(&agent_text, "agent");
    assert_eq!(
        sum_of(&agent_text, "logsentinel_agent_events_received_total"),
        events as f64
    );
    assert_eq!(
        sample(
            &agent_text,
            "logsentinel_agent_events_received_total{level=\"CRITICAL\"}"
        ),
        critical_lines as f64
    );
    assert!(agent_text.contains("logsentinel_build_info{version="));
    assert!(
        sample(
            &agent_text,
            "logsentinel_redis_round_trip_seconds_count{command=\"xadd\"}"
        ) >= 1.0
    );
    assert!(sample(&agent_text, "logsentinel_process_resident_memory_bytes") > 0.0);
    assert!(sample(&agent_text, "logsentinel_process_open_fds") > 0.0);
    drop(input);
    let summary = agent_summary(agent);
    assert_eq!(summary.events, events);

    let mut police_text = String::new();
    wait_until("the police to report every event processed", DEADLINE, || {
        if let Some((200, text)) = http_get(&police_admin, "/metrics") {
            police_text = text;
        }
        sample(&police_text, "logsentinel_police_events_processed_total") == events as f64
    });
    promtool_check(&police_text, "police");
    let alerts = sum_of(&police_text, "logsentinel_police_alerts_total");
    assert_eq!(
        alerts, summary.alerting_events as f64,
        "one alert per CRITICAL event (the built-in rule)"
    );
    assert!(police_text.contains("logsentinel_redis_round_trip_seconds_bucket{command=\"settle\",le=\"+Inf\"}"));
    // The group figures are sampled every few seconds: wait for a sample after the drain.
    wait_until("the sampled group figures", DEADLINE, || {
        if let Some((200, text)) = http_get(&police_admin, "/metrics") {
            police_text = text;
        }
        police_text.contains("logsentinel_group_consumers ")
            && sample(&police_text, "logsentinel_group_lag") == 0.0
            && police_text.contains("logsentinel_dead_letter_length 0")
    });
    promtool_check(&police_text, "police (sampled)");
    for forbidden in ["metrics-agent", "metrics-police", "consumer=", "host="] {
        assert!(!police_text.contains(forbidden), "unbounded label {forbidden}");
        assert!(!agent_text.contains(forbidden), "unbounded label {forbidden}");
    }
    let _ = police.kill();
    let _ = police.wait();
}

#[test]
fn readyz_names_redis_while_it_is_down_and_healthz_stays_200() {
    let mut redis = TestRedis::start(&[]);
    let admin = free_address();
    let police = spawn_police_with_admin(&redis.url(), "ready-police", &admin);
    let ready = wait_for_status(&admin, "/readyz", 200);
    assert!(
        ready.contains("[+]redis ok") && ready.contains("[+]group ok") && ready.contains("[+]rules ok"),
        "{ready}"
    );

    redis.server.kill();
    let not_ready = wait_for_status(&admin, "/readyz", 503);
    assert!(not_ready.contains("[-]redis: "), "{not_ready}");
    assert_eq!(http_get(&admin, "/healthz").map(|(status, _)| status), Some(200));
    // Still alive, still not ready, a while into the outage (the police retries meanwhile).
    let still_down = wait_for_status(&admin, "/readyz", 503);
    assert!(still_down.contains("[-]redis: connection refused"), "{still_down}");
    assert_eq!(http_get(&admin, "/healthz").map(|(status, _)| status), Some(200));

    redis.server.restart().expect("restart redis");
    let ready_again = wait_for_status(&admin, "/readyz", 200);
    assert!(ready_again.contains("[+]redis ok"), "{ready_again}");
    stop_gracefully(police);
}

#[test]
fn readyz_is_503_from_the_start_of_a_stop() {
    let mut redis = TestRedis::start(&[]);
    let admin = free_address();
    // Without a spool and with Redis gone, a stopping agent retries its batch for
    // --shutdown-timeout: the stop lasts long enough to be seen from outside.
    let mut agent = spawn_agent(
        &redis.url(),
        "stopping-agent",
        &["--rate", "200", "--admin-listen", &admin, "--shutdown-timeout", "60s"],
    );
    wait_for_status(&admin, "/readyz", 200);
    redis.server.kill();
    wait_for_status(&admin, "/readyz", 503);
    // A batch in hand that Redis refused: the stop has to wait for it. (Stopped between two
    // batches, with nothing in hand, the agent would exit at once.)
    wait_until("a failed ship", DEADLINE, || {
        http_get(&admin, "/metrics")
            .is_some_and(|(_, text)| sample(&text, "logsentinel_errors_total{stage=\"ship\"}") >= 1.0)
    });
    sigterm(&agent);
    let mut stopping = (0, String::new());
    wait_until("readyz to name the stop", DEADLINE, || {
        stopping = http_get(&admin, "/readyz").unwrap_or_default();
        stopping.1.contains("[-]shutdown: stopping")
    });
    assert_eq!(stopping.0, 503, "{}", stopping.1);
    assert_eq!(http_get(&admin, "/healthz").map(|(status, _)| status), Some(200));
    redis.server.restart().expect("restart redis");
    // Redis is back, the stop goes on: still not ready.
    let after_restart = wait_for_status(&admin, "/readyz", 503);
    assert!(after_restart.contains("[-]shutdown: stopping"), "{after_restart}");
    let status = wait_with_deadline(&mut agent, DEADLINE);
    assert!(
        status.success(),
        "the agent delivered its batch once Redis was back: {status}"
    );
}

/// Listening TCP sockets of a process: its socket inodes that /proc/net/tcp lists in LISTEN.
fn listening_sockets(pid: u32) -> usize {
    let socket_inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the process's descriptors")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().to_string();
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_string())
        })
        .collect();
    let mut listening = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) == Some(&"0A")
                && fields
                    .get(9)
                    .is_some_and(|inode| socket_inodes.iter().any(|own| own == inode))
            {
                listening += 1;
            }
        }
    }
    listening
}

#[test]
fn admin_listen_off_opens_no_port_and_an_address_opens_one() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let consumer_joined = |connection: &mut redis::Connection, name: &str| {
        let consumers: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg("logsentinel:logs")
            .arg("police")
            .query(connection);
        format!("{consumers:?}").contains(name)
    };
    let off = spawn_police(&redis.url(), "police-off", &["--admin-listen", "off"]);
    wait_until("the police to join its group", DEADLINE, || {
        consumer_joined(&mut connection, "police-off")
    });
    assert_eq!(listening_sockets(off.id()), 0, "--admin-listen off opened a port");
    let admin = free_address();
    let on = spawn_police_with_admin(&redis.url(), "police-on", &admin);
    wait_until("the police to join its group", DEADLINE, || {
        consumer_joined(&mut connection, "police-on")
    });
    assert_eq!(listening_sockets(on.id()), 1);
    stop_gracefully(off);
    stop_gracefully(on);
}

#[test]
fn an_admin_port_in_use_stops_startup_naming_the_option() {
    let redis = TestRedis::start(&[]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = taken.local_addr().expect("local address").to_string();
    for role in ["police", "agent"] {
        let output = logsentinel(&redis.url())
            .args([role, "--admin-listen", &address])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{role} started on a port in use");
        assert!(
            stderr.contains(&format!("cannot listen on --admin-listen {address}")),
            "{role}: {stderr}"
        );
        assert_eq!(
            stderr.matches("in use (os error").count(),
            1,
            "{role}: the cause is said once: {stderr}"
        );
    }
    let (code, printed) = {
        let output = logsentinel(&redis.url())
            .args(["police", "--admin-listen", "somewhere"])
            .output()
            .expect("run");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    assert_eq!(code, Some(2), "{printed}");
    assert!(printed.contains("admin_listen"), "{printed}");
}

#[test]
fn healthcheck_url_probes_readyz() {
    let redis = TestRedis::start(&[]);
    let admin = free_address();
    let police = spawn_police_with_admin(&redis.url(), "probed-police", &admin);
    wait_for_status(&admin, "/readyz", 200);
    let probe = |url: &str| {
        logsentinel("redis://127.0.0.1:1")
            .args(["healthcheck", "--url", url])
            .output()
            .expect("run healthcheck")
    };
    let ready = probe(&format!("http://{admin}/readyz"));
    assert!(ready.status.success(), "{}", String::from_utf8_lossy(&ready.stderr));
    let missing = probe(&format!("http://{admin}/nothing-here"));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    let nobody = probe(&format!("http://{}/readyz", free_address()));
    assert!(!nobody.status.success());
    stop_gracefully(police);
}

/// Connections the admin listener serves at once (README, "Operating").
const ADMIN_MAX_CONNECTIONS: usize = 256;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the process's descriptors")
        .count()
}

/// Reads until the server closes: `Ok` once it did (EOF or a reset), `Err` on the timeout.
fn read_until_closed(stream: &mut TcpStream) -> Result<(), std::io::Error> {
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Err(error) => Err(error),
    }
}

/// A child killed if the test fails before it stops it.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn id(&self) -> u32 {
        self.0.as_ref().expect("not stopped yet").id()
    }

    fn take(mut self) -> Child {
        self.0.take().expect("not stopped yet")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn slow_and_idle_admin_connections_are_closed_and_capped() {
    let redis = TestRedis::start(&[]);
    let admin = free_address();
    let police = KillOnDrop(Some(spawn_police_with_admin(&redis.url(), "slowloris-police", &admin)));
    wait_for_status(&admin, "/readyz", 200);
    let baseline_fds = open_fds(police.id());
    // More than the cap: half a request line each (slowloris), and some that send nothing.
    let mut idle = Vec::new();
    for index in 0..ADMIN_MAX_CONNECTIONS + 100 {
        let mut stream = TcpStream::connect(&admin).expect("connect to the admin listener");
        if index % 10 != 0 {
            stream.write_all(b"GET /metr").expect("send half a request line");
        }
        stream.set_read_timeout(Some(DEADLINE)).expect("set a read deadline");
        idle.push(stream);
    }
    // A scrape queued behind the full cap: answered once the idle ones are closed.
    let scrape_address = admin.clone();
    let scrape = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(&scrape_address).expect("connect for the scrape");
        stream.set_read_timeout(Some(DEADLINE)).expect("set a read deadline");
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {scrape_address}\r\nConnection: close\r\n\r\n"
        )
        .expect("send the scrape");
        let mut response = String::new();
        stream.read_to_string(&mut response).map(|_| response)
    });
    // Descriptors of the police other than these connections come and go (a probe's
    // connection closing, a Redis reconnection): a few of slack either way.
    let slack = 16;
    let mut most_fds = 0;
    let started = std::time::Instant::now();
    while most_fds + slack < baseline_fds + ADMIN_MAX_CONNECTIONS {
        assert!(
            started.elapsed() < DEADLINE,
            "the listener never took up to its cap: {most_fds} fds at most, {baseline_fds} before"
        );
        most_fds = most_fds.max(open_fds(police.id()));
        std::thread::sleep(Duration::from_millis(20));
    }
    for (closed_before, stream) in idle.iter_mut().enumerate() {
        most_fds = most_fds.max(open_fds(police.id()));
        read_until_closed(stream).unwrap_or_else(|error| {
            panic!("an idle connection stayed open ({closed_before} closed before it): {error}")
        });
    }
    assert!(
        most_fds <= baseline_fds + ADMIN_MAX_CONNECTIONS + slack,
        "{most_fds} fds open at most, {baseline_fds} before the flood"
    );
    let response = scrape
        .join()
        .expect("the scrape thread")
        .expect("the scrape queued behind the cap is answered");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("logsentinel_build_info"), "{response}");
    assert_eq!(http_get(&admin, "/healthz").map(|(status, _)| status), Some(200));
    stop_gracefully(police.take());
}

#[test]
fn matches_beyond_max_groups_are_counted_in_the_metrics() {
    use logsentinel::police::rules::window;
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "max_groups = 1\n[[rules]]\nname = \"per_service\"\ntype = \"frequency\"\n\
         group_by = [\"service\"]\nthreshold = 5\nwindow = \"1h\"\n",
    )
    .unwrap();
    // Two matches of each of two groups: the second group is one too many.
    let now_ms = window::now_ms();
    for (sequence, service) in ["api", "api", "web", "web"].iter().enumerate() {
        let event = serde_json::json!({
            "id": format!("m:1:{sequence}"),
            "timestamp": window::rfc3339(now_ms),
            "level": "ERROR",
            "service": service,
            "host": "h1",
            "message": "m",
        });
        let _: String = redis::cmd("XADD")
            .arg("logsentinel:logs")
            .arg("*")
            .arg("v")
            .arg("1")
            .arg("event")
            .arg(event.to_string())
            .query(&mut connection)
            .unwrap();
    }
    let admin = free_address();
    let rules_path = rules.display().to_string();
    let police = KillOnDrop(Some(spawn_police(
        &redis.url(),
        "bounded-police",
        &["--rules", &rules_path, "--admin-listen", &admin],
    )));
    let mut text = String::new();
    wait_until("the four events processed", DEADLINE, || {
        if let Some((200, page)) = http_get(&admin, "/metrics") {
            text = page;
        }
        sample(&text, "logsentinel_police_events_processed_total") == 4.0
    });
    let dropped = "logsentinel_police_rule_matches_dropped_total";
    assert_eq!(
        sample(&text, &format!("{dropped}{{reason=\"over_limit\"}}")),
        2.0,
        "{text}"
    );
    assert!(
        text.contains(&format!("{dropped}{{reason=\"over_maxmemory\"}} 0")),
        "{text}"
    );
    let stats = counters(&mut connection, "logsentinel:logs:stats");
    assert_eq!(
        stats.get("over_limit"),
        Some(&2),
        "the metric is the stats hash's figure"
    );
    promtool_check(&text, "police with bounded rules");
    stop_gracefully(police.take());
}

/// A fresh police exposes every series dashboards and absence alerts need, at 0: the
/// errors of each stage, the dead letters of each reason, the alerts of each rule and the
/// deliveries of each sink and outcome (`rate()` over a series that appears late misses its
/// first increase).
#[test]
fn a_fresh_police_exposes_its_series_at_zero() {
    let redis = TestRedis::start(&[]);
    let address = free_address();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            "[sinks.file]\ntype = \"jsonl\"\npath = \"{}\"\n\n[[rules]]\nname = \"crit\"\ntype = \"any\"\n\
             filter = {{ level = \"CRITICAL\" }}\nsinks = [\"file\"]\n",
            dir.path().join("alerts.jsonl").display()
        ),
    )
    .unwrap();
    let police = spawn_police(
        &redis.url(),
        "p1",
        &["--admin-listen", &address, "--rules", rules.to_str().unwrap()],
    );
    let text = wait_for_status(&address, "/metrics", 200);
    let mut expected = vec![
        r#"logsentinel_errors_total{stage="settle"}"#.to_string(),
        r#"logsentinel_errors_total{stage="session"}"#.to_string(),
        r#"logsentinel_police_alerts_total{rule="crit"}"#.to_string(),
    ];
    for reason in ["max_deliveries", "too_large", "undecodable"] {
        expected.push(format!(r#"logsentinel_police_dead_letters_total{{reason="{reason}"}}"#));
    }
    for outcome in ["delivered", "dead_letter", "retry"] {
        expected.push(format!(
            r#"logsentinel_sink_deliveries_total{{sink="file",outcome="{outcome}"}}"#
        ));
    }
    let text = {
        let mut text = text;
        wait_until("every series exposed", DEADLINE, || {
            text = http_get(&address, "/metrics").map(|(_, body)| body).unwrap_or_default();
            expected
                .iter()
                .all(|series| text.lines().any(|line| line == format!("{series} 0")))
        });
        text
    };
    promtool_check(&text, "fresh police");
    stop_gracefully(police);
}
