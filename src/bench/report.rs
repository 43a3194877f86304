//! Benchmark results: statistics, the Markdown table, the JSON document.

use serde::Serialize;

use super::RunFigures;
use super::processes::Fleet;

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub scenario: String,
    pub runs_events_per_s: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Median over the median XADD ceiling of the same run (filled in by [`Report::new`]).
    pub ratio_to_ceiling: f64,
    pub agent_peak_rss_mb: f64,
    pub police_peak_rss_mb: f64,
}

impl Throughput {
    pub fn from_runs(scenario: &str, runs: &[RunFigures]) -> Throughput {
        let mut rates: Vec<f64> = runs.iter().map(|run| run.events_per_s).collect();
        rates.sort_by(f64::total_cmp);
        let peak = |pick: fn(&RunFigures) -> u64| runs.iter().map(pick).max().unwrap_or(0) as f64 / 1024.0;
        Throughput {
            scenario: scenario.to_string(),
            median: median(&rates),
            min: rates.first().copied().unwrap_or(0.0),
            max: rates.last().copied().unwrap_or(0.0),
            runs_events_per_s: rates,
            ratio_to_ceiling: 0.0,
            agent_peak_rss_mb: peak(|run| run.agent_peak_rss_kb),
            police_peak_rss_mb: peak(|run| run.police_peak_rss_kb),
        }
    }
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        length if length % 2 == 1 => sorted[length / 2],
        length => (sorted[length / 2 - 1] + sorted[length / 2]) / 2.0,
    }
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub rate_events_per_s: u64,
    pub alerts: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub agent_peak_rss_mb: f64,
    pub police_peak_rss_mb: f64,
}

impl Latency {
    pub fn new(rate: u64, sorted_latencies_us: &[u64], fleet: &Fleet) -> Latency {
        let at = |quantile: f64| {
            let index = ((sorted_latencies_us.len() as f64 - 1.0) * quantile).round() as usize;
            sorted_latencies_us[index] as f64 / 1000.0
        };
        Latency {
            rate_events_per_s: rate,
            alerts: sorted_latencies_us.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
            agent_peak_rss_mb: fleet.agent_peak_rss_kb as f64 / 1024.0,
            police_peak_rss_mb: fleet.police_peak_rss_kb as f64 / 1024.0,
        }
    }
}

/// The spool writer alone: records appended to segment files, then synced.
#[derive(Debug, Serialize)]
pub struct SpoolWrite {
    pub runs_mb_per_s: Vec<f64>,
    pub median_mb_per_s: f64,
    pub min_mb_per_s: f64,
    pub max_mb_per_s: f64,
    pub median_events_per_s: f64,
    pub events_per_run: u64,
}

impl SpoolWrite {
    /// `runs`: (MB/s, events/s) of each run.
    pub fn from_runs(runs: &[(f64, f64)], events_per_run: u64) -> SpoolWrite {
        let mut rates: Vec<f64> = runs.iter().map(|run| run.0).collect();
        rates.sort_by(f64::total_cmp);
        let mut event_rates: Vec<f64> = runs.iter().map(|run| run.1).collect();
        event_rates.sort_by(f64::total_cmp);
        SpoolWrite {
            median_mb_per_s: median(&rates),
            min_mb_per_s: rates.first().copied().unwrap_or(0.0),
            max_mb_per_s: rates.last().copied().unwrap_or(0.0),
            runs_mb_per_s: rates,
            median_events_per_s: median(&event_rates),
            events_per_run,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub cores: usize,
    pub aof: bool,
    pub events_per_run: u64,
    pub ceiling: Throughput,
    pub throughput: Vec<Throughput>,
    pub latency: Vec<Latency>,
    /// `None` when `--only` left it out.
    pub spool_write: Option<SpoolWrite>,
}

impl Report {
    pub fn new(
        mut ceiling: Throughput,
        mut throughput: Vec<Throughput>,
        latency: Vec<Latency>,
        spool_write: Option<SpoolWrite>,
        aof: bool,
        events_per_run: u64,
    ) -> Report {
        ceiling.ratio_to_ceiling = 1.0;
        for row in &mut throughput {
            row.ratio_to_ceiling = row.median / ceiling.median.max(1.0);
        }
        Report {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            aof,
            events_per_run,
            ceiling,
            throughput,
            latency,
            spool_write,
        }
    }

    pub fn print_markdown(&self) {
        println!("| scenario | median events/s | min | max | × XADD ceiling | agent peak RSS | police peak RSS |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for row in std::iter::once(&self.ceiling).chain(&self.throughput) {
            println!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.2} | {} | {} |",
                row.scenario,
                row.median,
                row.min,
                row.max,
                row.ratio_to_ceiling,
                megabytes(row.agent_peak_rss_mb),
                megabytes(row.police_peak_rss_mb)
            );
        }
        if !self.latency.is_empty() {
            println!();
            println!(
                "| latency, event → alert in stream | alerts | p50 | p99 | max | agent peak RSS | police peak RSS |"
            );
            println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
            for row in &self.latency {
                println!(
                    "| {} events/s | {} | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} |",
                    row.rate_events_per_s,
                    row.alerts,
                    row.p50_ms,
                    row.p99_ms,
                    row.max_ms,
                    megabytes(row.agent_peak_rss_mb),
                    megabytes(row.police_peak_rss_mb)
                );
            }
        }
        let Some(spool) = &self.spool_write else { return };
        println!();
        println!("| spool write (append + sync) | median MB/s | min | max | events/s (median) |");
        println!("| --- | ---: | ---: | ---: | ---: |");
        println!(
            "| {} events per run | {:.0} | {:.0} | {:.0} | {:.0} |",
            spool.events_per_run,
            spool.median_mb_per_s,
            spool.min_mb_per_s,
            spool.max_mb_per_s,
            spool.median_events_per_s
        );
    }
}

fn megabytes(value: f64) -> String {
    if value == 0.0 {
        "-".into()
    } else {
        format!("{value:.1} MB")
    }
}
