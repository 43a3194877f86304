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
    let agent = spawn_http_agent(&url, &address, &["--max-lag", "1000"]);

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
    std::thread::sleep(Duration::from_secs(3));
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
