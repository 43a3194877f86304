//! `logsentinel bench`: throughput, latency and memory of agents and police against a
//! private `redis-server`, beside the Redis XADD ceiling measured in the same run by
//! `redis-benchmark`. Prints a Markdown table and writes JSON. Figures are printed, never
//! asserted: machines are noisy.

mod processes;
mod report;

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, Connection, keys::Keys};
use crate::cli::BenchArgs;
use crate::local_redis::LocalRedis;
use crate::progress::{self, Figure, Progress, summary_line};
use processes::{Fleet, wait_processed};
use report::{Latency, Report, SpoolWrite, Throughput};

/// A rule file of 20 rules (regex filters, group_by, frequency, spike and flatline
/// windows) for the police drain against the built-in rule.
const BENCH_RULES: &str = include_str!("rules-20.toml");

/// Settings of one benchmark run, derived from the arguments.
struct Plan {
    repeat: usize,
    events: u64,
    pack: usize,
    latency_rates: Vec<u64>,
    latency_duration: Duration,
    only: Option<String>,
    ceiling_requests: u64,
}

impl Plan {
    fn from_args(args: &BenchArgs) -> Plan {
        let (default_repeat, default_events) = if args.smoke { (1, 20_000) } else { (3, 1_000_000) };
        Plan {
            repeat: args.repeat.unwrap_or(default_repeat).max(1),
            events: args.events.unwrap_or(default_events).max(100),
            pack: args.pack.max(2),
            only: args.only.clone(),
            latency_rates: if args.smoke {
                vec![1_000, 10_000]
            } else {
                vec![1_000, 10_000, 50_000, 100_000]
            },
            latency_duration: Duration::from_secs(if args.smoke { 1 } else { 5 }),
            ceiling_requests: if args.smoke { 100_000 } else { 2_000_000 },
        }
    }
}

/// A throughput scenario; each is run `repeat` times on a flushed Redis.
enum Scenario {
    /// One agent writing `events` as fast as it can.
    Ingest { pack: usize },
    /// One police draining a stream pre-filled with `events`, with the built-in rule or
    /// with [`BENCH_RULES`].
    Drain { pack: usize, rules: bool },
    /// One agent tailing a file of `events` plain-text lines (written before the clock starts).
    FileTail { pack: usize },
    /// One agent taking `events` RFC 5424 messages over one TCP connection.
    SyslogTcp { pack: usize },
    /// One police delivering a pre-filled outbox to a local webhook receiver.
    WebhookDelivery,
    /// Agents and police running together, until the police processed every event.
    EndToEnd {
        agents: u64,
        police: usize,
        pack: usize,
        list: bool,
    },
}

struct Bench {
    url: String,
    port: u16,
    connection: Connection,
    keys: Keys,
    plan: Plan,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = Plan::from_args(&args);
    let dir = std::env::temp_dir().join(format!("logsentinel-bench-{}", std::process::id()));
    let redis_args: &[&str] = if args.aof {
        &["--appendonly", "yes", "--appendfsync", "everysec"]
    } else {
        &["--appendonly", "no"]
    };
    let redis_dir = dir.clone();
    let redis = tokio::task::spawn_blocking(move || LocalRedis::start(&redis_dir, redis_args))
        .await
        .context("starting redis-server")??;
    let connection = broker::connect(&redis.url()).await?;
    let mut bench = Bench {
        url: redis.url(),
        port: redis.port,
        connection,
        keys: Keys::default(),
        plan,
    };
    progress::note(
        "[bench]",
        &format!(
            "redis-server on {} (AOF {}), {} events per run, {} runs per scenario",
            bench.url,
            if args.aof { "everysec" } else { "off" },
            bench.plan.events,
            bench.plan.repeat
        ),
    );
    let started = std::time::Instant::now();
    let outcome = bench.run_all(args.aof).await;
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
    let report = outcome?;
    report.print_markdown();
    std::fs::write(&args.json_out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json_out.display()))?;
    progress::note("[bench]", &format!("JSON written to {}", args.json_out.display()));
    eprintln!(
        "{}",
        summary_line(
            "bench",
            &[
                ("scenarios", report.throughput.len().into()),
                ("latency_rates", report.latency.len().into()),
                ("events_per_run", report.events_per_run.into()),
                ("elapsed_s", Figure::Decimal(started.elapsed().as_secs_f64(), 1)),
                ("json", args.json_out.display().to_string().into()),
            ],
        )
    );
    Ok(())
}

impl Plan {
    /// Whether scenario `name` runs under `--only`.
    fn selects(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|text| name.contains(text))
    }
}

impl Bench {
    async fn run_all(&mut self, aof: bool) -> anyhow::Result<Report> {
        let ceiling = self.ceiling().await?;
        let pack = self.plan.pack;
        let packed = format!("pack {pack}");
        let mut scenarios = vec![
            ("agent ingest, pack 1".to_string(), Scenario::Ingest { pack: 1 }),
            (format!("agent ingest, {packed}"), Scenario::Ingest { pack }),
            (
                "police drain, pack 1".to_string(),
                Scenario::Drain { pack: 1, rules: false },
            ),
            (
                "police drain, pack 1, 20 rules".to_string(),
                Scenario::Drain { pack: 1, rules: true },
            ),
            (
                format!("police drain, {packed}"),
                Scenario::Drain { pack, rules: false },
            ),
            (
                format!("police drain, {packed}, 20 rules"),
                Scenario::Drain { pack, rules: true },
            ),
        ];
        for source_pack in [1, pack] {
            scenarios.push((
                format!("agent file tail → stream, pack {source_pack}"),
                Scenario::FileTail { pack: source_pack },
            ));
            scenarios.push((
                format!("agent syslog TCP → stream, pack {source_pack}"),
                Scenario::SyslogTcp { pack: source_pack },
            ));
        }
        for (agents, police) in [(1, 1), (5, 2)] {
            for entry_pack in [1, pack] {
                let name = format!("end to end, {agents} agent(s) + {police} police, pack {entry_pack}");
                scenarios.push((
                    name,
                    Scenario::EndToEnd {
                        agents,
                        police,
                        pack: entry_pack,
                        list: false,
                    },
                ));
            }
        }
        scenarios.push((
            "list mode end to end, 1 agent + 1 police".to_string(),
            Scenario::EndToEnd {
                agents: 1,
                police: 1,
                pack: 1,
                list: true,
            },
        ));
        scenarios.push((
            "webhook delivery, 1 police (alerts/s to a local receiver)".to_string(),
            Scenario::WebhookDelivery,
        ));
        scenarios.retain(|(name, _)| self.plan.selects(name));
        let mut latency_rates = self.plan.latency_rates.clone();
        latency_rates.retain(|rate| self.plan.selects(&format!("latency at {rate} events/s")));
        let total_runs = (scenarios.len() * self.plan.repeat + latency_rates.len()) as u64;
        let mut progress = Progress::new("[bench]", "runs", Some(total_runs));
        let mut throughput = Vec::new();
        for (name, scenario) in &scenarios {
            throughput.push(self.repeat(name, scenario, &mut progress).await?);
        }
        for pair in throughput.windows(2) {
            if pair[1].scenario == format!("{}, 20 rules", pair[0].scenario) && pair[0].median > 0.0 {
                progress::note(
                    "[bench]",
                    &format!(
                        "{}: 20 rules drain at {:.2}x the built-in rule's rate",
                        pair[0].scenario,
                        pair[1].median / pair[0].median
                    ),
                );
            }
        }
        let mut latency = Vec::new();
        for rate in latency_rates {
            let note = format!("latency at {rate} events/s");
            progress.update(progress.done(), &note);
            latency.push(self.latency(rate).await?);
            progress.update(progress.done() + 1, &note);
        }
        progress.finish();
        let spool = if self.plan.selects("spool write") {
            Some(self.spool_write()?)
        } else {
            None
        };
        Ok(Report::new(ceiling, throughput, latency, spool, aof, self.plan.events))
    }

    async fn repeat(&mut self, name: &str, scenario: &Scenario, progress: &mut Progress) -> anyhow::Result<Throughput> {
        let mut runs = Vec::new();
        for _ in 0..self.plan.repeat {
            progress.update(progress.done(), name);
            self.flush().await?;
            let run = match *scenario {
                Scenario::Ingest { pack } => self.ingest(pack).await,
                Scenario::Drain { pack, rules } => self.drain(pack, rules).await,
                Scenario::FileTail { pack } => self.file_tail(pack).await,
                Scenario::SyslogTcp { pack } => self.syslog_tcp(pack).await,
                Scenario::WebhookDelivery => self.webhook_delivery().await,
                Scenario::EndToEnd {
                    agents,
                    police,
                    pack,
                    list,
                } => self.end_to_end(agents, police, pack, list).await,
            };
            runs.push(run.with_context(|| format!("scenario {name}"))?);
            progress.update(progress.done() + 1, name);
        }
        let throughput = Throughput::from_runs(name, &runs);
        progress::note("[bench]", &format!("{name}: median {:.0} events/s", throughput.median));
        Ok(throughput)
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        redis::cmd("FLUSHALL").query_async::<()>(&mut self.connection).await?;
        Ok(())
    }

    /// XADD ceiling: redis-benchmark, 1 connection, pipeline 64, 200-byte values.
    async fn ceiling(&mut self) -> anyhow::Result<Throughput> {
        let value = "x".repeat(200);
        let mut runs = Vec::new();
        for _ in 0..self.plan.repeat {
            let output = tokio::process::Command::new("redis-benchmark")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-c",
                    "1",
                    "-P",
                    "64",
                    "-q",
                ])
                .args(["-n", &self.plan.ceiling_requests.to_string()])
                .args(["XADD", "bench:ceiling", "*", "payload", &value])
                .output()
                .await
                .context("running redis-benchmark (Debian: apt-get install redis-tools)")?;
            let text = String::from_utf8_lossy(&output.stdout);
            let per_second = parse_requests_per_second(&text)
                .with_context(|| format!("no 'requests per second' in redis-benchmark output: {text:?}"))?;
            runs.push(RunFigures::rate(per_second));
            redis::cmd("DEL")
                .arg("bench:ceiling")
                .query_async::<()>(&mut self.connection)
                .await?;
        }
        let ceiling = Throughput::from_runs("redis-benchmark XADD ceiling (1 conn, pipeline 64, 200 B)", &runs);
        progress::note("[bench]", &format!("XADD ceiling: median {:.0}/s", ceiling.median));
        Ok(ceiling)
    }

    fn agent_args(&self, count: u64, pack: usize, list: bool, extra: &[&str]) -> Vec<String> {
        // --max-lag 0: the ingest and drain scenarios fill the stream with no consumer on purpose.
        let mut args: Vec<String> = [
            "--count",
            &count.to_string(),
            "--rate",
            "0",
            "--pack",
            &pack.to_string(),
            "--max-lag",
            "0",
        ]
        .map(String::from)
        .to_vec();
        if list {
            args.extend(["--sink", "list"].map(String::from));
        }
        args.extend(extra.iter().map(|arg| arg.to_string()));
        args
    }

    async fn ingest(&mut self, pack: usize) -> anyhow::Result<RunFigures> {
        let mut fleet = Fleet::new(&self.url)?;
        let started = Instant::now();
        fleet.spawn_agent(&self.agent_args(self.plan.events, pack, false, &[]))?;
        fleet.wait_agents().await?;
        let elapsed = started.elapsed();
        Ok(RunFigures::measured(self.plan.events, elapsed, &fleet))
    }

    async fn file_tail(&mut self, pack: usize) -> anyhow::Result<RunFigures> {
        let dir = tempfile_dir("file-tail")?;
        let log = dir.join("app.log");
        let mut text = String::with_capacity(self.plan.events as usize * 100);
        for number in 0..self.plan.events {
            text.push_str(&plain_line(number));
        }
        std::fs::write(&log, text)?;
        let mut fleet = Fleet::new(&self.url)?;
        let checkpoints = dir.join("checkpoints.json");
        let started = Instant::now();
        let extra = [
            "--source",
            "file",
            "--file",
            log.to_str().context("temp path is UTF-8")?,
            "--checkpoint-file",
            checkpoints.to_str().context("temp path is UTF-8")?,
        ];
        fleet.spawn_agent(&self.agent_args(self.plan.events, pack, false, &extra))?;
        fleet.wait_agents().await?;
        let elapsed = started.elapsed();
        let _ = std::fs::remove_dir_all(&dir);
        Ok(RunFigures::measured(self.plan.events, elapsed, &fleet))
    }

    async fn syslog_tcp(&mut self, pack: usize) -> anyhow::Result<RunFigures> {
        use tokio::io::AsyncWriteExt;
        let port = crate::local_redis::free_loopback_port()?;
        let address = format!("127.0.0.1:{port}");
        let mut messages = Vec::with_capacity(self.plan.events as usize * 110);
        for number in 0..self.plan.events {
            messages.extend_from_slice(syslog_line(number).as_bytes());
        }
        let mut fleet = Fleet::new(&self.url)?;
        fleet.spawn_agent(&self.agent_args(
            self.plan.events,
            pack,
            false,
            &["--source", "syslog", "--syslog-tcp", &address],
        ))?;
        let mut stream = connect_with_retry(&address).await?;
        let started = Instant::now();
        stream.write_all(&messages).await?;
        stream.shutdown().await?;
        fleet.wait_agents().await?;
        let elapsed = started.elapsed();
        Ok(RunFigures::measured(self.plan.events, elapsed, &fleet))
    }

    /// Appends batches of synthetic events (pack 1, 256 entries) to a fresh spool and
    /// syncs it, in this process: the rate of the spool's writer alone.
    fn spool_write(&self) -> anyhow::Result<SpoolWrite> {
        use crate::agent::batcher::Batcher;
        use crate::agent::spool::Spool;
        use crate::config::SpoolConfig;
        use crate::options::WhenFull;
        let mut generator = crate::agent::generator::Generator::new(
            7,
            &crate::config::LevelMix::parse(crate::config::LevelMix::DEFAULT).expect("default mix"),
            "checkout",
            "bench-host",
            "bench",
            "run",
        );
        let mut batcher = Batcher::new(
            1,
            256,
            crate::agent::batcher::DEFAULT_BATCH_MAX_BYTES,
            Duration::from_secs(1),
        );
        let mut batches = Vec::new();
        for _ in 0..64 {
            while batcher.room() > 0 {
                batcher.push(|out| generator.write_next(out));
            }
            batches.push(batcher.take().expect("a full batch"));
        }
        let batch_bytes: u64 = batches.iter().map(Spool::record_bytes).sum();
        let target_bytes = self.plan.events * 256; // 256 MB for a full run
        let mut runs = Vec::new();
        let mut events = 0;
        for _ in 0..self.plan.repeat {
            let dir = tempfile_dir("spool")?;
            let config = SpoolConfig {
                dir: dir.clone(),
                max_bytes: target_bytes * 2,
                when_full: WhenFull::Block,
            };
            let mut spool = Spool::open(&config)?;
            let started = std::time::Instant::now();
            let mut written = 0;
            events = 0;
            while written < target_bytes {
                for batch in &batches {
                    spool.append(batch)?;
                    events += batch.event_count;
                }
                written += batch_bytes;
            }
            spool.sync()?;
            let elapsed = started.elapsed().as_secs_f64();
            runs.push((written as f64 / elapsed / 1e6, events as f64 / elapsed));
            drop(spool);
            let _ = std::fs::remove_dir_all(&dir);
        }
        let spool = SpoolWrite::from_runs(&runs, events);
        progress::note(
            "[bench]",
            &format!(
                "spool write: median {:.0} MB/s ({:.0} events/s)",
                spool.median_mb_per_s, spool.median_events_per_s
            ),
        );
        Ok(spool)
    }

    async fn drain(&mut self, pack: usize, rules: bool) -> anyhow::Result<RunFigures> {
        let mut prefill = Fleet::new(&self.url)?;
        prefill.spawn_agent(&self.agent_args(self.plan.events, pack, false, &[]))?;
        prefill.wait_agents().await?;
        let mut police_args = Vec::new();
        if rules {
            let dir = tempfile_dir("rules")?;
            let path = dir.join("rules.toml");
            std::fs::write(&path, BENCH_RULES)?;
            police_args = vec!["--rules".to_string(), path.display().to_string()];
        }
        let mut fleet = Fleet::new(&self.url)?;
        let started = Instant::now();
        fleet.spawn_police(&police_args)?;
        let stats_key = self.keys.stats(&self.keys.stream);
        let done = wait_processed(&mut self.connection, &stats_key, self.plan.events, &mut fleet).await?;
        fleet.stop_police().await?;
        Ok(RunFigures::measured(self.plan.events, done - started, &fleet))
    }

    /// Alerts per second one police's webhook worker delivers to a receiver in this process
    /// that answers 200 at once: the outbox is filled first (records routed to the sink),
    /// then the clock runs from the first alert received until the receiver has them all. One request per alert: no
    /// rate limit, so no digests.
    async fn webhook_delivery(&mut self) -> anyhow::Result<RunFigures> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let alerts = (self.plan.events / 20).clamp(1_000, 50_000);
        let received = Arc::new(AtomicU64::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let counter = received.clone();
        let router = axum::Router::new().route(
            "/",
            axum::routing::post(move || {
                counter.fetch_add(1, Ordering::Relaxed);
                async { axum::http::StatusCode::OK }
            }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        for chunk_start in (0..alerts).step_by(1000) {
            let mut pipeline = redis::pipe();
            for number in chunk_start..(chunk_start + 1000).min(alerts) {
                let alert = bench_alert(number);
                pipeline
                    .cmd("XADD")
                    .arg(&self.keys.alerts)
                    .arg("*")
                    .arg("id")
                    .arg(&alert.alert_id)
                    .arg("alert")
                    .arg(alert.to_json())
                    .ignore();
            }
            pipeline.query_async::<()>(&mut self.connection).await?;
        }
        let dir = tempfile_dir("webhook")?;
        let path = dir.join("rules.toml");
        std::fs::write(
            &path,
            format!(
                "[sinks.bench]\ntype = \"webhook\"\nurl = \"http://{address}/\"\n\n[[rules]]\nname = \"bench\"\n\
                 type = \"any\"\nfilter = {{ level = \"EMERGENCY\" }}\nsinks = [\"bench\"]\n"
            ),
        )?;
        let mut fleet = Fleet::new(&self.url)?;
        fleet.spawn_police(&["--rules".to_string(), path.display().to_string()])?;
        // The clock starts at the first delivered alert: the police's start-up is not delivery.
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut first: Option<(Instant, u64)> = None;
        loop {
            let delivered = received.load(Ordering::Relaxed);
            if delivered >= alerts {
                break;
            }
            if first.is_none() && delivered > 0 {
                first = Some((Instant::now(), delivered));
            }
            if Instant::now() > deadline {
                bail!("only {delivered} of {alerts} alerts delivered");
            }
            fleet.sample_memory();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (started, already) = first.unwrap_or((Instant::now(), 0));
        let elapsed = started.elapsed();
        fleet.stop_police().await?;
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
        Ok(RunFigures::measured(alerts - already, elapsed, &fleet))
    }

    async fn end_to_end(&mut self, agents: u64, police: usize, pack: usize, list: bool) -> anyhow::Result<RunFigures> {
        let mut fleet = Fleet::new(&self.url)?;
        let police_args: Vec<String> = if list {
            vec!["--source".into(), "list".into()]
        } else {
            Vec::new()
        };
        for _ in 0..police {
            fleet.spawn_police(&police_args)?;
        }
        let per_agent = self.plan.events / agents;
        let total = per_agent * agents;
        let started = Instant::now();
        for index in 0..agents {
            let agent_id = format!("bench-agent-{index}");
            fleet.spawn_agent(&self.agent_args(per_agent, pack, list, &["--agent-id", &agent_id]))?;
        }
        let stats_key = if list {
            self.keys.stats(&self.keys.list)
        } else {
            self.keys.stats(&self.keys.stream)
        };
        let done = wait_processed(&mut self.connection, &stats_key, total, &mut fleet).await?;
        fleet.wait_agents().await?;
        fleet.stop_police().await?;
        Ok(RunFigures::measured(total, done - started, &fleet))
    }

    /// Latency from event creation (its timestamp) to its alert arriving in the alerts
    /// stream, read by a blocking XREAD here; 2% of the events are CRITICAL.
    async fn latency(&mut self, rate: u64) -> anyhow::Result<Latency> {
        self.flush().await?;
        let mut fleet = Fleet::new(&self.url)?;
        fleet.spawn_police(&[])?;
        let stop_reader = CancellationToken::new();
        let reader = tokio::spawn(read_alert_latencies(
            self.url.clone(),
            self.keys.alerts.clone(),
            stop_reader.clone(),
        ));
        let count = rate * self.plan.latency_duration.as_secs().max(1);
        let mut args = self.agent_args(count, 1, false, &["--level-mix", "INFO=98,CRITICAL=2"]);
        args[3] = rate.to_string(); // --rate
        fleet.spawn_agent(&args)?;
        let stats_key = self.keys.stats(&self.keys.stream);
        wait_processed(&mut self.connection, &stats_key, count, &mut fleet).await?;
        fleet.wait_agents().await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop_reader.cancel();
        let mut latencies_us = reader.await??;
        fleet.stop_police().await?;
        if latencies_us.is_empty() {
            bail!("no alert arrived at {rate} events/s");
        }
        latencies_us.sort_unstable();
        let latency = Latency::new(rate, &latencies_us, &fleet);
        progress::note(
            "[bench]",
            &format!(
                "latency at {rate} events/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} alerts)",
                latency.p50_ms, latency.p99_ms, latency.max_ms, latency.alerts
            ),
        );
        Ok(latency)
    }
}

/// An alert record for the webhook delivery scenario, routed to the sink `bench`.
fn bench_alert(number: u64) -> crate::police::alert::Alert {
    crate::police::alert::Alert {
        alert_id: format!("bench:{number}/bench"),
        rule: "bench".into(),
        rule_type: "any".into(),
        status: crate::police::alert::AlertStatus::Firing,
        severity: "critical".into(),
        group: Default::default(),
        labels: Default::default(),
        annotations: [("summary".to_string(), format!("bench alert {number}"))].into(),
        count: 1,
        first_event_time: "2026-12-01T12:00:00Z".into(),
        last_event_time: "2026-12-01T12:00:00Z".into(),
        raised_at: crate::event::now_rfc3339(),
        sinks: vec!["bench".into()],
        event: None,
    }
}

fn tempfile_dir(what: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("logsentinel-bench-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A plain-text application log line of about 100 bytes.
fn plain_line(number: u64) -> String {
    let level = if number.is_multiple_of(50) { "ERROR" } else { "INFO" };
    format!(
        "2026-11-28T10:00:00.{:06}Z {level} checkout[4242]: GET /api/cart/{number} 200 in 12 ms user=u{}\n",
        number % 1_000_000,
        number % 977
    )
}

/// An RFC 5424 message of about 110 bytes, newline-framed.
fn syslog_line(number: u64) -> String {
    let priority = if number.is_multiple_of(50) { 131 } else { 134 }; // local0.err / local0.info
    format!(
        "<{priority}>1 2026-11-28T10:00:00.{:06}Z web01 checkout 4242 - - GET /api/cart/{number} 200 in 12 ms\n",
        number % 1_000_000
    )
}

async fn connect_with_retry(address: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::net::TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(error) if Instant::now() >= deadline => {
                return Err(error).with_context(|| format!("the agent never listened on {address}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn read_alert_latencies(url: String, alerts: String, stop: CancellationToken) -> anyhow::Result<Vec<u64>> {
    let mut connection = broker::connect(&url).await?;
    let mut last_id = "0-0".to_string();
    let mut latencies_us = Vec::new();
    while !stop.is_cancelled() {
        let reply: redis::Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS")
            .arg(&alerts)
            .arg(&last_id)
            .query_async(&mut connection)
            .await?;
        let arrived = chrono::Utc::now();
        for stream in broker::value_items(&reply) {
            let Some(entries) = broker::value_items(stream).get(1) else {
                continue;
            };
            for entry in broker::value_items(entries) {
                let parts = broker::value_items(entry);
                let (Some(id), Some(fields)) = (parts.first().and_then(broker::value_text), parts.get(1)) else {
                    continue;
                };
                last_id = id;
                let alert_json = broker::value_pairs(fields)
                    .into_iter()
                    .find(|(name, _)| name == "alert")
                    .and_then(|(_, value)| broker::value_text(value));
                let created = alert_json
                    .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
                    .and_then(|alert| alert["event"]["timestamp"].as_str().map(str::to_string))
                    .and_then(|text| chrono::DateTime::parse_from_rfc3339(&text).ok());
                if let Some(created) = created {
                    let micros = arrived.signed_duration_since(created).num_microseconds().unwrap_or(0);
                    latencies_us.push(micros.max(0) as u64);
                }
            }
        }
    }
    Ok(latencies_us)
}

/// One run of a throughput scenario.
pub struct RunFigures {
    pub events_per_s: f64,
    pub agent_peak_rss_kb: u64,
    pub police_peak_rss_kb: u64,
}

impl RunFigures {
    fn measured(events: u64, elapsed: Duration, fleet: &Fleet) -> RunFigures {
        RunFigures {
            events_per_s: events as f64 / elapsed.as_secs_f64().max(1e-9),
            agent_peak_rss_kb: fleet.agent_peak_rss_kb,
            police_peak_rss_kb: fleet.police_peak_rss_kb,
        }
    }

    fn rate(per_second: f64) -> RunFigures {
        RunFigures {
            events_per_s: per_second,
            agent_peak_rss_kb: 0,
            police_peak_rss_kb: 0,
        }
    }
}

/// The figure of the last `… requests per second` line of `redis-benchmark -q`.
fn parse_requests_per_second(output: &str) -> Option<f64> {
    let line = output
        .split(['\n', '\r'])
        .rev()
        .find(|line| line.contains("requests per second"))?;
    let before = line.split("requests per second").next()?;
    before
        .trim()
        .rsplit([' ', ':'])
        .find(|token| !token.is_empty())?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmark_quiet_output() {
        let output = "XADD bench:ceiling * payload xxx: rps=0.0 (overall: nan) avg_msec=nan\r\
            XADD bench:ceiling * payload xxx: 213675.22 requests per second, p50=0.223 msec\n";
        assert_eq!(parse_requests_per_second(output), Some(213_675.22));
        assert_eq!(parse_requests_per_second("nothing"), None);
    }
}
