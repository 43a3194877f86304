//! `logsentinel demo`: a private Redis, 3 agents and 2 police, a live line of figures,
//! then a clean stop and the totals.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, keys::Keys};
use crate::cli::DemoArgs;
use crate::local_redis::LocalRedis;
use crate::status;

const AGENTS: usize = 3;
const POLICE: usize = 2;

pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("logsentinel-demo-{}", std::process::id()));
    let redis_dir = dir.clone();
    let redis = tokio::task::spawn_blocking(move || LocalRedis::start(&redis_dir, &[]))
        .await
        .context("starting redis-server")??;
    let url = redis.url();
    eprintln!(
        "[demo] redis-server on {url}, {AGENTS} agents at {} events/s each, {POLICE} police, {} s",
        args.rate, args.duration
    );

    let exe = std::env::current_exe().context("locating the logsentinel binary")?;
    let mut police = Vec::new();
    for index in 1..=POLICE {
        let child = Command::new(&exe)
            .args([
                "police",
                "--redis-url",
                &url,
                "--consumer",
                &format!("demo-police-{index}"),
            ])
            .args(["--claim-idle-ms", "5000"])
            .env("LOGSENTINEL_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .context("starting a police")?;
        police.push(child);
    }
    let mut agents = Vec::new();
    for index in 1..=AGENTS {
        let child = Command::new(&exe)
            .args([
                "agent",
                "--redis-url",
                &url,
                "--agent-id",
                &format!("demo-agent-{index}"),
            ])
            .args([
                "--rate",
                &args.rate.to_string(),
                "--pack",
                &args.pack.to_string(),
                "--summary-json",
            ])
            .args(["--service", ["checkout", "payments", "search"][index - 1]])
            .env("LOGSENTINEL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting an agent")?;
        agents.push(child);
    }

    let mut connection = broker::connect(&url).await.context("connecting to the demo redis")?;
    let keys = Keys::default();
    let started = Instant::now();
    let mut previous_processed = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    while started.elapsed() < Duration::from_secs(args.duration) {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let figures = status::collect(&mut connection, &keys).await?;
        let processed = figures.stream.processed.get("events").copied().unwrap_or(0);
        let group = figures.stream.groups.first();
        eprintln!(
            "[demo] t={:>3}s  ingested {:>8}  processed {:>8} ({:>6} ev/s)  lag {:>5}  pending {:>4}  alerts {:>5}  dead {}",
            started.elapsed().as_secs(),
            figures.stream.entries_added * args.pack as u64,
            processed,
            processed - previous_processed,
            group.and_then(|group| group.lag).unwrap_or(0),
            group.map_or(0, |group| group.pending),
            figures.alerts_stream.length,
            figures.dead_stream.length,
        );
        previous_processed = processed;
    }

    eprintln!("[demo] stopping agents");
    let mut sent_events = 0u64;
    for agent in &mut agents {
        stop(agent).await?;
        let mut output = String::new();
        if let Some(mut stdout) = agent.stdout.take() {
            stdout.read_to_string(&mut output).await?;
        }
        let summary: serde_json::Value = serde_json::from_str(output.trim()).context("reading an agent summary")?;
        sent_events += summary["events"].as_u64().unwrap_or(0);
    }
    eprintln!("[demo] waiting for the police to drain the stream");
    let drain_deadline = Instant::now() + Duration::from_secs(15);
    let final_figures = loop {
        let figures = status::collect(&mut connection, &keys).await?;
        let processed = figures.stream.processed.get("events").copied().unwrap_or(0);
        if processed >= sent_events || Instant::now() >= drain_deadline {
            break figures;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("[demo] stopping police");
    for child in &mut police {
        stop(child).await?;
    }
    let processed = final_figures.stream.processed.get("events").copied().unwrap_or(0);
    println!("demo totals after {:.1} s:", started.elapsed().as_secs_f64());
    println!("  events sent by the agents   {sent_events}");
    println!("  events processed by police  {processed}");
    println!("  alerts raised               {}", final_figures.alerts_stream.length);
    println!("  dead letters                {}", final_figures.dead_stream.length);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
    if processed < sent_events {
        bail!("{} events were not processed", sent_events - processed);
    }
    Ok(())
}

/// SIGTERM, then wait for a clean exit.
async fn stop(child: &mut Child) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .context("a child did not stop within 30 s")??;
    if !status.success() {
        bail!("a child exited with {status}");
    }
    Ok(())
}
