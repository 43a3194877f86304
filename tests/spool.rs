//! The disk spool: a Redis outage during file and HTTP load, `kill -9` of an agent while
//! it spools, a spool segment with a corrupt tail, `when_full = drop_newest`, and a disk
//! that fills up (a small tmpfs) under both `when_full` settings and a stop request.

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::*;

fn post_requests(address: &str, prefix: &str, requests: usize, events_per_request: usize) -> Vec<u16> {
    (0..requests)
        .map(|request| {
            let body: String = (0..events_per_request)
                .map(|event| format!("{{\"message\":\"{prefix} {request}-{event}\"}}\n"))
                .collect();
            curl_post(address, "/ingest", body.as_bytes()).0
        })
        .collect()
}

fn spawn_spooling_agent(url: &str, address: &str, spool: &Path, extra: &[&str]) -> std::process::Child {
    spawn_spooling_agent_logged(url, address, spool, extra, None)
}

fn spawn_spooling_agent_logged(
    url: &str,
    address: &str,
    spool: &Path,
    extra: &[&str],
    log: Option<&Path>,
) -> std::process::Child {
    let mut args = vec![
        "--source",
        "http",
        "--http-listen",
        address,
        "--spool-dir",
        spool.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let agent = match log {
        Some(log) => spawn_agent_logging(url, "spooler", &args, log),
        None => spawn_agent(url, "spooler", &args),
    };
    wait_until("the HTTP source to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(address).is_ok()
    });
    agent
}

/// Restarts Redis, runs an agent on `spool` until `expected` entries are in the stream
/// and the spool is empty, stops it; returns its exit status and summary.
fn replay_after_restart(
    redis: &mut TestRedis,
    spool: &Path,
    expected: u64,
) -> (std::process::ExitStatus, serde_json::Value, redis::Connection) {
    redis.server.restart().unwrap();
    let mut connection = redis.connection();
    let address = free_address();
    let agent = spawn_spooling_agent(&redis.url(), &address, spool, &[]);
    wait_until("the spool replayed", Duration::from_secs(60), || {
        stream_length(&mut connection) >= expected && segment_files(spool, ".spool").is_empty()
    });
    sigterm(&agent);
    let (status, summary) = status_and_summary(agent);
    (status, summary, connection)
}

fn counts(messages: Vec<String>) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for message in messages {
        *counts.entry(message).or_insert(0) += 1;
    }
    counts
}

fn segment_files(spool: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(spool)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect()
}

#[test]
fn a_redis_outage_during_file_and_http_load_loses_nothing() {
    let mut redis = TestRedis::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let spool = dir.path().join("spool");
    let address = free_address();
    let write_lines = |numbers: std::ops::Range<u64>| {
        let mut file = OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let text: String = numbers.map(|number| format!("file line {number}\n")).collect();
        file.write_all(text.as_bytes()).unwrap();
    };
    write_lines(0..2000);
    let agent = spawn_spooling_agent(
        &url,
        &address,
        &spool,
        &[
            "--source",
            "file",
            "--file",
            log.to_str().unwrap(),
            "--checkpoint-file",
            dir.path().join("checkpoints.json").to_str().unwrap(),
        ],
    );
    assert!(
        post_requests(&address, "before", 10, 50)
            .iter()
            .all(|status| *status == 202)
    );
    let mut connection = redis.connection();
    wait_until("the first lines and requests stored", Duration::from_secs(60), || {
        stream_length(&mut connection) >= 2500
    });

    redis.server.kill();
    write_lines(2000..5000);
    let statuses = post_requests(&address, "during", 20, 50);
    assert!(
        statuses.iter().all(|status| *status == 202),
        "accepted into the spool: {statuses:?}"
    );
    assert!(
        !segment_files(&spool, ".spool").is_empty(),
        "the spool holds segments while Redis is down"
    );
    std::thread::sleep(Duration::from_secs(2));

    redis.server.restart().unwrap();
    let mut connection = redis.connection();
    write_lines(5000..6000);
    assert!(
        post_requests(&address, "after", 10, 50)
            .iter()
            .all(|status| *status == 202)
    );
    wait_until("everything stored", Duration::from_secs(120), || {
        stream_length(&mut connection) >= 6000 + 2000
    });
    let summary = stop_and_summarise(agent);
    assert!(summary.raw["spooled_events"].as_u64().unwrap() > 0, "{:?}", summary.raw);
    assert_eq!(summary.raw["spool_bytes_left"], 0);

    let seen = counts(stream_messages(&mut connection));
    let mut expected: Vec<String> = (0..6000).map(|number| format!("file line {number}")).collect();
    for (prefix, requests) in [("before", 10), ("during", 20), ("after", 10)] {
        for request in 0..requests {
            expected.extend((0..50).map(|event| format!("{prefix} {request}-{event}")));
        }
    }
    let missing: Vec<&String> = expected.iter().filter(|message| !seen.contains_key(*message)).collect();
    assert!(
        missing.is_empty(),
        "{} events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // At-least-once: a batch Redis wrote just before it was killed may be resent; the
    // count is shown, not hidden.
    let twice = seen.values().filter(|count| **count > 1).count();
    println!("{} events, {twice} written twice around the kill", expected.len());
}

#[test]
fn kill_9_while_spooling_then_restart_loses_nothing() {
    let mut redis = TestRedis::start(&[]);
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    redis.server.kill();

    let address = free_address();
    let mut agent = spawn_spooling_agent(&url, &address, &spool, &[]);
    let statuses = post_requests(&address, "spooled", 30, 100);
    assert!(statuses.iter().all(|status| *status == 202), "{statuses:?}");
    agent.kill().unwrap(); // SIGKILL: no flush, no goodbye
    agent.wait().unwrap();

    let (status, summary, mut connection) = replay_after_restart(&mut redis, &spool, 3000);
    assert!(status.success(), "{summary}");
    assert_eq!(summary["replayed_events"], 3000);

    let seen = counts(stream_messages(&mut connection));
    assert_eq!(seen.len(), 3000, "every accepted event, once");
    assert!(seen.values().all(|count| *count == 1), "no event replayed twice");
}

#[test]
fn a_corrupt_spool_tail_is_reported_and_the_rest_replayed() {
    let mut redis = TestRedis::start(&[]);
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    redis.server.kill();

    let address = free_address();
    let agent = spawn_spooling_agent(&url, &address, &spool, &[]);
    assert!(
        post_requests(&address, "kept", 10, 10)
            .iter()
            .all(|status| *status == 202)
    );
    let summary = stop_and_summarise(agent);
    assert!(summary.raw["spool_bytes_left"].as_u64().unwrap() > 0);

    // A torn record at the end, as a crash in the middle of a write would leave.
    let segments = segment_files(&spool, ".spool");
    assert_eq!(segments.len(), 1);
    let mut segment = OpenOptions::new().append(true).open(&segments[0]).unwrap();
    segment
        .write_all(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, b'{', b'"'])
        .unwrap();
    drop(segment);

    let (status, summary, mut connection) = replay_after_restart(&mut redis, &spool, 100);
    assert_eq!(summary["corrupt_spool_segments"], 1, "{summary}");
    assert_eq!(status.code(), Some(1), "a spool loss fails the run: {summary}");
    assert_eq!(segment_files(&spool, ".spool.corrupt").len(), 1, "kept for inspection");
    let seen = counts(stream_messages(&mut connection));
    assert_eq!(seen.len(), 100);
    assert!(seen.values().all(|count| *count == 1));
}

#[test]
fn a_full_spool_drops_the_newest_and_counts_them() {
    let mut redis = TestRedis::start(&[]);
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    redis.server.kill();

    let address = free_address();
    let agent = spawn_spooling_agent(
        &url,
        &address,
        &spool,
        &["--spool-max-bytes", "65536", "--when-full", "drop_newest"],
    );
    let statuses = post_requests(&address, "x", 40, 100);
    let accepted = statuses.iter().filter(|status| **status == 202).count() as u64;
    let refused = statuses.iter().filter(|status| **status == 503).count() as u64;
    assert_eq!(accepted + refused, 40, "{statuses:?}");
    assert!(accepted > 0 && refused > 0, "{statuses:?}");
    sigterm(&agent);
    let (status, summary) = status_and_summary(agent);
    assert_eq!(summary["dropped_events"].as_u64().unwrap(), refused * 100);
    assert_eq!(summary["spooled_events"].as_u64().unwrap(), accepted * 100);
    assert_eq!(status.code(), Some(1), "drops fail the run: {summary}");
    assert_eq!(
        summary["events_per_level"]["INFO"].as_u64().unwrap(),
        accepted * 100,
        "levels count what was stored, not what came in"
    );
}

/// The messages of request `request` as `post_requests` writes them.
fn request_messages(prefix: &str, request: usize, events_per_request: usize) -> Vec<String> {
    (0..events_per_request)
        .map(|event| format!("{prefix} {request}-{event}"))
        .collect()
}

/// Each record of 100 events is ~20 KB: 1 MB of disk fills after about 50 requests.
const SMALL_DISK: &str = "1m";
const LARGE_LIMIT: &str = "104857600";

#[test]
fn a_full_disk_with_drop_newest_drops_and_keeps_everything_it_accepted() {
    let mut redis = TestRedis::start(&[]);
    let url = redis.url();
    let disk = Tmpfs::mount(SMALL_DISK);
    let spool = disk.path().join("spool");
    redis.server.kill();

    let address = free_address();
    let agent = spawn_spooling_agent(
        &url,
        &address,
        &spool,
        &["--spool-max-bytes", LARGE_LIMIT, "--when-full", "drop_newest"],
    );
    let statuses = post_requests(&address, "x", 120, 100);
    let accepted: Vec<usize> = (0..statuses.len()).filter(|index| statuses[*index] == 202).collect();
    let refused = statuses.iter().filter(|status| **status == 503).count() as u64;
    assert_eq!(accepted.len() as u64 + refused, 120, "{statuses:?}");
    assert!(refused > 0, "the disk filled before the byte limit: {statuses:?}");
    sigterm(&agent);
    let (status, summary) = status_and_summary(agent);
    assert_eq!(status.code(), Some(1), "drops fail the run: {summary}");
    assert_eq!(summary["dropped_events"].as_u64().unwrap(), refused * 100, "{summary}");
    assert!(summary["spool_write_failures"].as_u64().unwrap() > 0, "{summary}");

    let (status, summary, mut connection) = replay_after_restart(&mut redis, &spool, accepted.len() as u64 * 100);
    assert!(status.success(), "nothing corrupt in the spool: {summary}");
    let expected: Vec<String> = accepted
        .iter()
        .flat_map(|request| request_messages("x", *request, 100))
        .collect();
    assert_eq!(
        stream_messages(&mut connection),
        expected,
        "every accepted event once, in order"
    );
}

#[test]
fn a_full_disk_with_block_holds_the_batch_behind_the_backlog() {
    let mut redis = TestRedis::start(&[]);
    let url = redis.url();
    let disk = Tmpfs::mount(SMALL_DISK);
    let spool = disk.path().join("spool");
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("agent.log");
    redis.server.kill();

    let address = free_address();
    let agent = spawn_spooling_agent_logged(&url, &address, &spool, &["--spool-max-bytes", LARGE_LIMIT], Some(&log));
    let poster_address = address.clone();
    let poster = std::thread::spawn(move || post_requests(&poster_address, "b", 80, 100));
    wait_until("the spool disk to fill", Duration::from_secs(60), || {
        file_text(&log).contains("cannot write to the spool")
    });
    redis.server.restart().unwrap();
    let statuses = poster.join().unwrap();
    assert!(
        statuses.iter().all(|status| *status == 202),
        "the blocked request was stored once Redis took the backlog: {statuses:?}"
    );
    let mut connection = redis.connection();
    wait_until("everything shipped", Duration::from_secs(60), || {
        stream_length(&mut connection) >= 8000
    });
    sigterm(&agent);
    let (status, summary) = status_and_summary(agent);
    assert!(status.success(), "{summary}");
    assert!(summary["spool_write_failures"].as_u64().unwrap() > 0, "{summary}");
    let expected: Vec<String> = (0..80)
        .flat_map(|request| request_messages("b", request, 100))
        .collect();
    assert_eq!(
        stream_messages(&mut connection),
        expected,
        "every event once, and no batch overtook the spooled ones"
    );
}

#[test]
fn a_stop_while_a_batch_waits_on_a_full_disk_ends_the_agent() {
    let mut redis = TestRedis::start(&[]);
    let url = redis.url();
    let disk = Tmpfs::mount(SMALL_DISK);
    let spool = disk.path().join("spool");
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("agent.log");
    redis.server.kill();

    let address = free_address();
    let agent = spawn_spooling_agent_logged(
        &url,
        &address,
        &spool,
        &["--spool-max-bytes", LARGE_LIMIT, "--shutdown-timeout-ms", "500"],
        Some(&log),
    );
    let poster_address = address.clone();
    let poster = std::thread::spawn(move || {
        let mut statuses = Vec::new();
        for request in 0..200 {
            let body: String = request_messages("s", request, 100)
                .iter()
                .map(|message| format!("{{\"message\":\"{message}\"}}\n"))
                .collect();
            let status = curl_post(&poster_address, "/ingest", body.as_bytes()).0;
            statuses.push(status);
            if status != 202 {
                break;
            }
        }
        statuses
    });
    wait_until("the spool disk to fill", Duration::from_secs(60), || {
        file_text(&log).contains("cannot write to the spool")
    });
    sigterm(&agent);
    let (status, summary) = status_and_summary(agent);
    let statuses = poster.join().unwrap();
    assert_eq!(
        statuses.last(),
        Some(&503),
        "the waiting request was not stored: {statuses:?}"
    );
    assert_eq!(status.code(), Some(1), "{summary}");
    assert_eq!(summary["unsent_events"], 100, "the batch in hand: {summary}");

    let accepted = statuses.len() - 1;
    let (status, summary, mut connection) = replay_after_restart(&mut redis, &spool, accepted as u64 * 100);
    assert!(status.success(), "{summary}");
    let expected: Vec<String> = (0..accepted)
        .flat_map(|request| request_messages("s", request, 100))
        .collect();
    assert_eq!(stream_messages(&mut connection), expected);
}
