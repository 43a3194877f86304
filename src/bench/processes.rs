//! Child processes of the benchmark: agents and police of this same binary, their peak
//! memory (VmHWM from /proc), and waiting for the police to have processed N events.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::broker::Connection;

/// Longest any single benchmark run may take before it is declared stuck.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

pub struct Fleet {
    exe: std::path::PathBuf,
    url: String,
    pub agents: Vec<Child>,
    pub police: Vec<Child>,
    pub agent_peak_rss_kb: u64,
    pub police_peak_rss_kb: u64,
}

impl Fleet {
    pub fn new(url: &str) -> anyhow::Result<Fleet> {
        Ok(Fleet {
            exe: std::env::current_exe().context("locating the logsentinel binary")?,
            url: url.to_string(),
            agents: Vec::new(),
            police: Vec::new(),
            agent_peak_rss_kb: 0,
            police_peak_rss_kb: 0,
        })
    }

    fn command(&self, args: &[String]) -> Command {
        let mut command = Command::new(&self.exe);
        command
            .arg("--redis-url")
            .arg(&self.url)
            .args(args)
            .env("LOGSENTINEL_LOG", "warn")
            // Their log lines share the bench's stderr: the same format.
            .env("LOGSENTINEL_LOG_FORMAT", crate::telemetry::format().as_str())
            // Several agents and police at once: each admin listener takes a free port, so
            // that the figures include the cost of recording metrics.
            .env("LOGSENTINEL_ADMIN_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        command
    }

    pub fn spawn_agent(&mut self, args: &[String]) -> anyhow::Result<()> {
        let child = self
            .command(&[vec!["agent".to_string()], args.to_vec()].concat())
            .spawn()?;
        self.agents.push(child);
        Ok(())
    }

    pub fn spawn_police(&mut self, args: &[String]) -> anyhow::Result<()> {
        let name = format!("bench-police-{}", self.police.len() + 1);
        let base = ["police", "--quiet", "--consumer", &name].map(String::from);
        let child = self.command(&[base.to_vec(), args.to_vec()].concat()).spawn()?;
        self.police.push(child);
        Ok(())
    }

    /// Records the peak RSS of every live child.
    pub fn sample_memory(&mut self) {
        for agent in &self.agents {
            self.agent_peak_rss_kb = self.agent_peak_rss_kb.max(peak_rss_kb(agent));
        }
        for police in &self.police {
            self.police_peak_rss_kb = self.police_peak_rss_kb.max(peak_rss_kb(police));
        }
    }

    /// Waits for every agent to exit successfully, sampling memory meanwhile.
    pub async fn wait_agents(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + RUN_DEADLINE;
        for index in 0..self.agents.len() {
            loop {
                self.sample_memory();
                if let Some(status) = self.agents[index].try_wait()? {
                    if !status.success() {
                        bail!("an agent exited with {status}");
                    }
                    break;
                }
                if Instant::now() > deadline {
                    bail!("an agent did not finish within {RUN_DEADLINE:?}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// SIGTERM to every police, then wait for them.
    pub async fn stop_police(&mut self) -> anyhow::Result<()> {
        self.sample_memory();
        for police in &self.police {
            if let Some(pid) = police.id() {
                // SAFETY: kill(2) on a child we own; no memory is touched.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        for police in &mut self.police {
            tokio::time::timeout(Duration::from_secs(30), police.wait())
                .await
                .context("a police did not stop within 30 s")??;
        }
        Ok(())
    }
}

/// VmHWM (peak resident set) of a child, in kB; 0 once it has exited.
fn peak_rss_kb(child: &Child) -> u64 {
    let Some(pid) = child.id() else {
        return 0;
    };
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Polls the police's counter until `expected` events are processed; samples memory.
pub async fn wait_processed(
    connection: &mut Connection,
    stats_key: &str,
    expected: u64,
    fleet: &mut Fleet,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut polls: u64 = 0;
    loop {
        let processed: Option<u64> = redis::cmd("HGET")
            .arg(stats_key)
            .arg("events")
            .query_async(connection)
            .await?;
        if processed.unwrap_or(0) >= expected {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("only {processed:?} of {expected} events processed within {RUN_DEADLINE:?}");
        }
        polls += 1;
        if polls.is_multiple_of(10) {
            fleet.sample_memory();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
