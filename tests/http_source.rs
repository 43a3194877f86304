//! `agent --source http`: `curl` posting NDJSON and JSON arrays (202), malformed bodies
//! (400 with the line number), oversized ones (413), and 503 with Retry-After while the
//! agent holds batches because the consumers are too far behind.

mod common;

use std::time::Duration;

use common::*;

fn spawn_http_agent(url: &str, address: &str, extra: &[&str]) -> std::process::Child {
    let mut args = vec!["--source", "http", "--http-listen", address];
    args.extend_from_slice(extra);
    let agent = spawn_agent(url, "web", &args);
    wait_until("the HTTP source to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(address).is_ok()
    });
    agent
}

#[test]
fn ingest_accepts_ndjson_and_arrays_and_refuses_bad_bodies() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let address = free_address();
    let agent = spawn_http_agent(&url, &address, &["--http-max-body-bytes", "2000"]);

    let (status, response) = curl_post(
        &address,
        "/ingest",
        b"{\"message\":\"disk full\",\"level\":\"crit\",\"service\":\"db\"}\n\n{\"msg\":\"hello\",\"severity\":\"warn\"}\n",
    );
    assert_eq!(status, 202, "{response}");
    assert!(response.contains("\"accepted\":2"), "{response}");
    // Accepted means stored: the events are in the stream when the answer comes.
    assert_eq!(stream_length(&mut connection), 2);

    let (status, response) = curl_post(&address, "/ingest", b"[{\"message\":\"one\"},\n {\"message\":\"two\"}]");
    assert_eq!(status, 202, "{response}");

    let (status, response) = curl_post(
        &address,
        "/ingest",
        b"{\"message\":\"fine\"}\n{\"message\":\"fine too\"}\n{\"message\": broken}\n{\"message\":\"after\"}\n",
    );
    assert_eq!(status, 400, "{response}");
    assert!(response.contains("\"line\":3"), "{response}");
    let (status, response) = curl_post(&address, "/ingest", b"{\"message\":\"a\"}\n[1,2]\n");
    assert_eq!(status, 400, "{response}");
    assert!(response.contains("line 2: expected a JSON object"), "{response}");

    let oversized = "{\"message\":\"x\"}\n".repeat(200);
    let (status, response) = curl_post(&address, "/ingest", oversized.as_bytes());
    assert_eq!(status, 413, "{response}");

    let health = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{address}/health"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "200");

    stop_gracefully(agent);
    let mut messages = stream_messages(&mut connection);
    messages.sort();
    assert_eq!(
        messages,
        ["disk full", "hello", "one", "two"],
        "refused bodies added nothing"
    );
    let events = stream_events(&mut connection);
    let disk_full = events.iter().find(|event| event["message"] == "disk full").unwrap();
    assert_eq!(disk_full["level"], "CRITICAL");
    assert_eq!(disk_full["service"], "db");
}

#[test]
fn backpressure_answers_503_then_everything_is_stored_once_the_police_catches_up() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let address = free_address();
    let log_dir = tempfile::tempdir().unwrap();
    let log_file = log_dir.path().join("agent.log");
    let agent = spawn_agent_logging(
        &url,
        "web",
        &["--source", "http", "--http-listen", &address, "--max-lag", "1000"],
        &log_file,
    );
    wait_until("the HTTP source to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(&address).is_ok()
    });

    let (status, _) = curl_post(&address, "/ingest", "{\"message\":\"m\"}\n".repeat(1000).as_bytes());
    assert_eq!(status, 202);
    // The consumers are now 1,000 entries behind (no police): batches are held. The next
    // request waits for its answer until the police catches up.
    let big_address = address.clone();
    let big = std::thread::spawn(move || {
        curl_post(
            &big_address,
            "/ingest",
            "{\"message\":\"m\"}\n".repeat(20_000).as_bytes(),
        )
    });
    wait_until(
        "the agent holds the big request's batches",
        Duration::from_secs(30),
        || log_lines_with(&log_file, "holding batches") > 0,
    );
    let (status, response) = curl_post(&address, "/ingest", b"{\"message\":\"one more\"}\n");
    assert_eq!(status, 503, "{response}");
    assert!(response.to_ascii_lowercase().contains("retry-after: 1"), "{response}");
    let length_while_held = stream_length(&mut connection);
    assert!(
        length_while_held <= 1000 + 2048,
        "the stream grew to {length_while_held} while the lag was over the limit"
    );

    let police = spawn_police(&url, "p1", &[]);
    let (status, response) = big.join().unwrap();
    assert_eq!(status, 202, "{response}");
    wait_until("the police processed everything", Duration::from_secs(120), || {
        counters(&mut connection, "logsentinel:logs:stats")
            .get("events")
            .copied()
            .unwrap_or(0)
            >= 21_000
    });
    stop_gracefully(police);
    stop_gracefully(agent);
}

/// `curl` posting `body` with extra `headers`; returns the status code.
fn curl_status(address: &str, headers: &[&str], body: &str) -> u16 {
    let mut command = std::process::Command::new("curl");
    command.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "60"]);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command
        .args(["--data-binary", body])
        .arg(format!("http://{address}/ingest"))
        .output()
        .expect("the tests need curl");
    String::from_utf8_lossy(&output.stdout)
        .parse()
        .expect("an HTTP status from curl")
}

/// A request whose headers are sent and whose chunked body stops after a few bytes.
fn stalled_upload(address: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .write_all(
            b"POST /ingest HTTP/1.1\r\nHost: agent\r\nContent-Type: application/x-ndjson\r\n\
              Transfer-Encoding: chunked\r\n\r\n5\r\n{\"mes\r\n",
        )
        .unwrap();
    stream
}

#[test]
fn only_json_content_types_and_the_right_token_get_in() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let address = free_address();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let agent = spawn_http_agent(&url, &address, &["--http-token-file", token_file.to_str().unwrap()]);
    let body = "{\"message\":\"hello\"}\n";
    let good_token = "Authorization: Bearer s3cret-token";
    assert_eq!(curl_status(&address, &["Content-Type: application/json"], body), 401);
    assert_eq!(
        curl_status(
            &address,
            &["Content-Type: application/json", "Authorization: Bearer s3cret-tokem"],
            body
        ),
        401
    );
    assert_eq!(
        curl_status(&address, &["Content-Type: text/plain", good_token], body),
        415
    );
    // curl's default: a form, as a web page could send to any address.
    assert_eq!(curl_status(&address, &[good_token], body), 415);
    for content_type in [
        "application/json; charset=utf-8",
        "application/x-ndjson",
        "application/jsonlines",
    ] {
        let header = format!("Content-Type: {content_type}");
        assert_eq!(
            curl_status(&address, &[&header, good_token], body),
            202,
            "{content_type}"
        );
    }
    stop_gracefully(agent);
    assert_eq!(stream_length(&mut connection), 3, "refused requests added nothing");
}

#[test]
fn stalled_bodies_time_out_and_requests_over_the_limit_get_503() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let address = free_address();
    let agent = spawn_http_agent(
        &url,
        &address,
        &["--http-max-requests", "2", "--http-body-timeout-ms", "300"],
    );
    let mut stalled = stalled_upload(&address);
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stalled, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    let summary = stop_and_summarise(agent);
    assert!(summary_count(&summary, "http_body_timeouts") >= 1, "{:?}", summary.raw);

    let agent = spawn_http_agent(&url, &address, &["--http-max-requests", "2"]);
    let held = [stalled_upload(&address), stalled_upload(&address)];
    // Once both stalled requests are being handled, a third is refused without its body.
    wait_until("a request refused as busy", Duration::from_secs(20), || {
        let (status, response) = curl_post(&address, "/ingest", b"{\"message\":\"m\"}\n");
        status == 503 && response.contains("busy")
    });
    drop(held);
    wait_until("requests taken again", Duration::from_secs(20), || {
        curl_post(&address, "/ingest", b"{\"message\":\"m\"}\n").0 == 202
    });
    let summary = stop_and_summarise(agent);
    assert!(summary_count(&summary, "busy_http_requests") >= 1, "{:?}", summary.raw);
}

#[test]
fn requests_in_flight_when_max_lag_is_reached_are_all_answered() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let address = free_address();
    let agent = spawn_http_agent(
        &url,
        &address,
        &["--max-lag", "1000", "--http-store-timeout-ms", "2000"],
    );
    let (status, _) = curl_post(&address, "/ingest", "{\"message\":\"m\"}\n".repeat(1000).as_bytes());
    assert_eq!(status, 202);
    // No police: the consumers stay 1,000 behind. Four requests come in at once; those
    // taken before the agent holds its batches must still get an answer (curl gives up
    // after 60 s, reported as status 0).
    let requests: Vec<_> = (0..4)
        .map(|_| {
            let address = address.clone();
            std::thread::spawn(move || curl_post(&address, "/ingest", "{\"message\":\"m\"}\n".repeat(3000).as_bytes()))
        })
        .collect();
    let answers: Vec<(u16, String)> = requests.into_iter().map(|request| request.join().unwrap()).collect();
    for (status, response) in &answers {
        assert_eq!(*status, 503, "{response}");
        assert!(response.to_ascii_lowercase().contains("retry-after: 1"), "{response}");
    }
    // What was taken is stored once the police catches up.
    let police = spawn_police(&url, "p1", &[]);
    wait_until("the police caught up", Duration::from_secs(60), || {
        // No group until the police made it.
        status_json(&url)["stream"]["groups"][0]["lag"].as_u64() == Some(0) && stream_length(&mut connection) >= 1000
    });
    stop_gracefully(police);
    let summary = stop_and_summarise(agent);
    assert_eq!(summary.unsent_events, 0);
}

#[test]
fn https_with_tls_cert_and_key() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let address = free_address();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_certificate(dir.path());
    let log_file = dir.path().join("agent.stderr");
    let agent = spawn_agent_logging(
        &url,
        "web",
        &[
            "--source",
            "http",
            "--http-listen",
            &address,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &log_file,
    );
    wait_until("the HTTP source to listen", Duration::from_secs(20), || {
        log_lines_with(&log_file, "HTTP source listening") > 0
    });
    let post = |scheme: &str| {
        let output = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "30", "--cacert"])
            .arg(&cert)
            .args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "{\"message\":\"over tls\"}",
            ])
            .arg(format!("{scheme}://{address}/ingest"))
            .output()
            .expect("the tests need curl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(post("https"), "202");
    assert_ne!(post("http"), "202", "plain HTTP is not taken on a TLS listener");
    stop_gracefully(agent);
    assert_eq!(stream_messages(&mut connection), ["over tls"]);
}

/// Clients that open connections and never finish a request (slowloris) hold at most the
/// connection cap; the rest wait in the kernel's queue, and the agent's descriptors stay
/// bounded. Once they go, requests are served again.
#[test]
fn idle_connections_are_capped_and_do_not_exhaust_the_agent() {
    use std::io::Write;
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let address = free_address();
    let agent = spawn_http_agent(&url, &address, &[]);
    let open_fds = || std::fs::read_dir(format!("/proc/{}/fd", agent.id())).unwrap().count();
    // A first request: the agent is up and connected to Redis before the count is taken.
    let (status, response) = curl_post(&address, "/ingest", b"{\"message\":\"before\"}\n");
    assert_eq!(status, 202, "{response}");
    let before = open_fds();
    // 256 taken, the rest within the listen backlog (more would wait for a SYN retry)
    let held: Vec<std::net::TcpStream> = (0..300)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(&address).unwrap();
            stream.write_all(b"POST /ingest HTTP/1.1\r\nHost: x\r\nX-a: ").unwrap();
            stream
        })
        .collect();
    // The count taken before may still hold a closing connection or two: 8 either way.
    wait_until(
        "the agent took connections up to its cap",
        Duration::from_secs(20),
        || open_fds() + 8 >= before + 256,
    );
    let during = open_fds();
    assert!(
        during <= before + 256 + 8,
        "{during} descriptors open (started with {before})"
    );
    drop(held);
    wait_until("the held connections closed", Duration::from_secs(20), || {
        open_fds() <= before + 8
    });
    let (status, response) = curl_post(&address, "/ingest", b"{\"message\":\"after\"}\n");
    assert_eq!(status, 202, "{response}");
    stop_gracefully(agent);
}
