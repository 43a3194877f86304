//! `logsentinel demo`: a private Redis (or the one `--redis-url` names), 3 agents and 2
//! police, a live line of figures, then a clean stop and the totals.
//!
//! Stopping, whatever ends the run (`--duration`, Ctrl-C, SIGTERM, an error):
//! - the children and the private `redis-server` run in process groups of their own: a
//!   Ctrl-C in the terminal signals the whole foreground group, and would otherwise stop
//!   them under the demo in any order (agents losing their Redis, police their agents);
//! - there is one stop path: agents first (they flush and report what they sent), then the
//!   wait for the police to process it, then the police, then the totals;
//! - every path out of [`run`] kills what is still running and removes the private Redis
//!   and its directory (the guards below); on Linux the children also die with the demo
//!   if it exits abruptly (a second Ctrl-C exits at once).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, errors::redact_url, keys::Keys};
use crate::cli::DemoArgs;
use crate::config::{BrokerConfig, ConfigError};
use crate::local_redis::{self, LocalRedis};
use crate::progress::{self, Figure, Progress, summary_line};
use crate::status::{self, Status};
use crate::telemetry;

const AGENTS: usize = 3;
const POLICE: usize = 2;
const SERVICES: [&str; AGENTS] = ["checkout", "payments", "search"];
/// Longest wait for the police to process what the agents sent, once the agents stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for a child to exit after SIGTERM (an agent retries Redis for 10 s at most).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the demo against `broker`'s Redis when `use_given_redis`, else against a private one
/// (the keys are `broker`'s either way).
pub async fn run(
    args: DemoArgs,
    broker: BrokerConfig,
    use_given_redis: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Checked here, before anything starts, rather than by each agent as it fails.
    if args.pack == 0 || args.pack > 10_000 {
        return Err(ConfigError::Invalid {
            key: "pack",
            problem: format!("{} is not between 1 and 10000", args.pack),
        }
        .into());
    }
    let private_redis = if use_given_redis {
        None
    } else {
        Some(PrivateRedis::start()?)
    };
    let url = match &private_redis {
        Some(private_redis) => private_redis.url(),
        None => broker.redis_url.clone(),
    };
    let keys = broker.keys;
    let where_redis_is = match &private_redis {
        Some(_) => format!("redis-server on {url}"),
        None => format!("the Redis at {}", redact_url(&url)),
    };
    progress::note(
        "[demo]",
        &format!(
            "{where_redis_is}, {AGENTS} agents at {} events/s each, {POLICE} police, {}",
            args.rate, args.duration
        ),
    );

    let mut connection = broker::connect(&url)
        .await
        .with_context(|| format!("connecting to {}", redact_url(&url)))?;
    // Against a Redis already in use, the totals are what this run added.
    let baseline = Totals::of(&status::collect(&mut connection, &keys).await?);
    let exe = std::env::current_exe().context("locating the logsentinel binary")?;
    let mut fleet = Fleet::start(&exe, &url, &keys, &args)?;
    let started = Instant::now();
    let watched = watch(&args, &mut connection, &keys, &baseline, started, &shutdown).await;
    let stopped = stop(&mut fleet, &mut connection, &keys, &baseline, started).await;
    // The fleet and the private Redis are dropped here on every path: children killed if
    // still running, the Redis stopped, its directory removed.
    watched.and(stopped)
}

/// The live figures, read once a second (shown as progress), until `--duration` has passed or a stop request.
async fn watch(
    args: &DemoArgs,
    connection: &mut broker::Connection,
    keys: &Keys,
    baseline: &Totals,
    started: Instant,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let run_for = args.duration.0;
    let mut progress = Progress::new("[demo]", "s", Some(run_for.as_secs()));
    let mut previous_processed = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    while started.elapsed() < run_for {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let figures = status::collect(connection, keys).await?;
        let totals = Totals::of(&figures).since(baseline);
        let group = figures.stream.groups.iter().find(|group| group.name == keys.group);
        let note = format!(
            "ingested {} processed {} ({} ev/s) lag {} pending {} alerts {} dead {}",
            totals.entries_added * args.pack as u64,
            totals.processed,
            totals.processed.saturating_sub(previous_processed),
            group.and_then(|group| group.lag).unwrap_or(0),
            group.map_or(0, |group| group.pending),
            totals.alerts,
            totals.dead,
        );
        progress.update(started.elapsed().as_secs(), &note);
        previous_processed = totals.processed;
    }
    progress.finish();
    Ok(())
}

/// The one stop path: agents, drain, police, totals. Every child is stopped even when
/// another failed; the first failure is returned once all are down.
async fn stop(
    fleet: &mut Fleet,
    connection: &mut broker::Connection,
    keys: &Keys,
    baseline: &Totals,
    started: Instant,
) -> anyhow::Result<()> {
    progress::note("[demo]", "stopping agents");
    let mut first_failure: Option<anyhow::Error> = None;
    let mut sent_events = 0u64;
    fleet.agents.iter().for_each(terminate);
    for agent in &mut fleet.agents {
        match agent_summary(agent).await {
            Ok(events) => sent_events += events,
            Err(error) => {
                first_failure.get_or_insert(error);
            }
        }
    }
    progress::note("[demo]", "waiting for the police to drain the stream");
    let drained = drain(connection, keys, baseline, sent_events).await;
    progress::note("[demo]", "stopping police");
    fleet.police.iter().for_each(terminate);
    for police in &mut fleet.police {
        if let Err(error) = wait_for_exit(police).await {
            first_failure.get_or_insert(error);
        }
    }
    let totals = drained?;
    println!("demo totals after {:.1} s:", started.elapsed().as_secs_f64());
    println!("  events sent by the agents   {sent_events}");
    println!("  events processed by police  {}", totals.processed);
    println!("  alerts raised               {}", totals.alerts);
    println!("  dead letters                {}", totals.dead);
    eprintln!(
        "{}",
        summary_line(
            "demo",
            &[
                ("sent", sent_events.into()),
                ("processed", totals.processed.into()),
                ("alerts", totals.alerts.into()),
                ("dead", totals.dead.into()),
                ("elapsed_s", Figure::Decimal(started.elapsed().as_secs_f64(), 1)),
            ],
        )
    );
    if let Some(error) = first_failure {
        return Err(error);
    }
    if totals.processed < sent_events {
        bail!("{} events were not processed", sent_events - totals.processed);
    }
    Ok(())
}

/// Polls until the police processed `sent_events`, or [`DRAIN_TIMEOUT`] passed.
async fn drain(
    connection: &mut broker::Connection,
    keys: &Keys,
    baseline: &Totals,
    sent_events: u64,
) -> anyhow::Result<Totals> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        poll.tick().await;
        let totals = Totals::of(&status::collect(connection, keys).await?).since(baseline);
        if totals.processed >= sent_events || Instant::now() >= deadline {
            return Ok(totals);
        }
    }
}

/// The figures the demo reports, read from `status`.
#[derive(Debug, Default)]
struct Totals {
    entries_added: u64,
    processed: u64,
    alerts: u64,
    dead: u64,
}

impl Totals {
    fn of(figures: &Status) -> Totals {
        Totals {
            entries_added: figures.stream.entries_added,
            processed: figures.stream.processed.get("events").copied().unwrap_or(0),
            alerts: figures.alerts_stream.length,
            dead: figures.dead_stream.length,
        }
    }

    fn since(self, baseline: &Totals) -> Totals {
        Totals {
            entries_added: self.entries_added.saturating_sub(baseline.entries_added),
            processed: self.processed.saturating_sub(baseline.processed),
            alerts: self.alerts.saturating_sub(baseline.alerts),
            dead: self.dead.saturating_sub(baseline.dead),
        }
    }
}

/// The agents and police. Each is spawned with `kill_on_drop`, so whatever is still running
/// when the fleet is dropped (an error path) is killed.
struct Fleet {
    agents: Vec<Child>,
    police: Vec<Child>,
}

impl Fleet {
    fn start(exe: &std::path::Path, url: &str, keys: &Keys, args: &DemoArgs) -> anyhow::Result<Fleet> {
        let mut fleet = Fleet {
            agents: Vec::new(),
            police: Vec::new(),
        };
        for index in 1..=POLICE {
            let mut command = child_command(exe, url, keys);
            command
                .args(["police", "--consumer", &format!("demo-police-{index}")])
                .args(["--claim-idle-ms", "5000"]);
            fleet.police.push(command.spawn().context("starting a police")?);
        }
        for (index, service) in SERVICES.iter().enumerate() {
            let mut command = child_command(exe, url, keys);
            command
                .args(["agent", "--agent-id", &format!("demo-agent-{}", index + 1)])
                .args(["--rate", &args.rate.to_string(), "--pack", &args.pack.to_string()])
                .args(["--service", service, "--summary-json"])
                .stdout(Stdio::piped());
            fleet.agents.push(command.spawn().context("starting an agent")?);
        }
        Ok(fleet)
    }
}

/// A child of the demo: in a process group of its own (see the module doc), with the Redis
/// URL and keys in its environment (not on its command line, where `ps` shows a password),
/// and none of the caller's other `LOGSENTINEL_*` settings, which could send the agents
/// somewhere the police do not read.
fn child_command(exe: &std::path::Path, url: &str, keys: &Keys) -> Command {
    let mut command = Command::new(exe);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LOGSENTINEL_") {
            command.env_remove(name);
        }
    }
    command
        .env("LOGSENTINEL_REDIS_URL", url)
        .env("LOGSENTINEL_STREAM", &keys.stream)
        .env("LOGSENTINEL_GROUP", &keys.group)
        .env("LOGSENTINEL_ALERTS_STREAM", &keys.alerts)
        .env("LOGSENTINEL_DEAD_STREAM", &keys.dead)
        .env("LOGSENTINEL_KEY", &keys.list)
        .env("LOGSENTINEL_LOG", "warn")
        // Their log lines share the demo's stderr: the same format.
        .env("LOGSENTINEL_LOG_FORMAT", telemetry::format().as_str())
        // Five processes on one host: the default admin ports would collide.
        .env("LOGSENTINEL_ADMIN_LISTEN", "off")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    // SAFETY: the hook only calls async-signal-safe functions (prctl, getppid).
    unsafe {
        command.pre_exec(local_redis::die_with_parent(libc::SIGTERM));
    }
    command
}

/// SIGTERM: the child finishes what it has in hand and exits.
fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

/// Waits for a child told to stop; an exit other than 0 is an error.
async fn wait_for_exit(child: &mut Child) -> anyhow::Result<()> {
    let status = match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(status) => status?,
        Err(_) => {
            let _ = child.start_kill();
            bail!(
                "a child did not stop within {} s and was killed",
                STOP_TIMEOUT.as_secs()
            );
        }
    };
    if !status.success() {
        bail!("a child exited with {status}");
    }
    Ok(())
}

/// Waits for a stopping agent and returns the number of events it sent.
async fn agent_summary(agent: &mut Child) -> anyhow::Result<u64> {
    let mut output = String::new();
    if let Some(mut stdout) = agent.stdout.take() {
        // Read before waiting: the summary is printed at exit.
        stdout.read_to_string(&mut output).await?;
    }
    wait_for_exit(agent).await?;
    let summary: serde_json::Value = serde_json::from_str(output.trim()).context("reading an agent summary")?;
    Ok(summary["events"].as_u64().unwrap_or(0))
}

/// The demo's own `redis-server` in a temp directory; dropping it stops the server, then
/// removes the directory.
struct PrivateRedis {
    server: Option<LocalRedis>,
    dir: PathBuf,
}

impl PrivateRedis {
    fn start() -> anyhow::Result<PrivateRedis> {
        let dir = std::env::temp_dir().join(format!("logsentinel-demo-{}", std::process::id()));
        // Built before the server starts, so that a failed start still removes the directory.
        let mut private_redis = PrivateRedis { server: None, dir };
        // Started on this thread, not with spawn_blocking: on Linux the server dies with the
        // thread that started it, and the runtime's blocking threads end when idle. Nothing
        // else runs yet, so blocking the runtime for the start (a few ms) costs nothing.
        let server = LocalRedis::start_isolated(&private_redis.dir, &[]).context("starting redis-server")?;
        private_redis.server = Some(server);
        Ok(private_redis)
    }

    fn url(&self) -> String {
        self.server.as_ref().expect("the server is started in start()").url()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
