//! Binary entry point: parse the CLI, start logging, run a subcommand, map the outcome to
//! an exit code (0 ok, 1 failure, 2 invalid configuration).

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use logsentinel::cli::{Cli, Command, RulesAction};
use logsentinel::config::{self, ConfigError, FileConfig};
use logsentinel::{agent, bench, broker, demo, observability, ops, police, progress, shutdown, status, telemetry};

fn main() -> ExitCode {
    logsentinel::cli::accept_old_variable_names();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    // A full-screen `top` owns the terminal: a log line would tear its screen.
    let full_screen = matches!(&cli.command, Command::Top(args) if !args.once);
    telemetry::init(cli.common.log_format, full_screen);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("logsentinel: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli, matches))
}

async fn run(cli: Cli, matches: clap::ArgMatches) -> ExitCode {
    // Every message is redacted once more: an error from a library may quote a Redis URL.
    match run_command(cli, matches).await {
        Ok(code) => code,
        Err(error) if is_invalid_configuration(&error) => {
            progress::fatal(&broker::errors::redact_credentials(&error.to_string()));
            ExitCode::from(2)
        }
        Err(error) => {
            progress::fatal(&broker::errors::redact_credentials(&error_with_causes(&error)));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by `: ` (as `{:#}` prints them), each cause said once:
/// many errors quote their source in their own message (Redis's do), and a cause the line
/// already holds is left out.
fn error_with_causes(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
    }
    text
}

async fn run_command(cli: Cli, matches: clap::ArgMatches) -> anyhow::Result<ExitCode> {
    // Offline: needs neither the config file nor Redis.
    if let Command::Rules(args) = cli.command {
        return rules_command(args.action).await;
    }
    if let Command::Completions(args) = &cli.command {
        let mut command = Cli::command();
        clap_complete::generate(args.shell, &mut command, "logsentinel", &mut std::io::stdout());
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Manpage(args) = &cli.command {
        std::fs::create_dir_all(&args.dir)
            .map_err(|error| anyhow::anyhow!("cannot create {}: {error}", args.dir.display()))?;
        clap_mangen::generate_to(Cli::command(), &args.dir)
            .map_err(|error| anyhow::anyhow!("cannot write man pages into {}: {error}", args.dir.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let file = FileConfig::load(cli.common.config.as_deref())?;
    let broker_config = config::broker_config(&cli.common, &matches, &file)?;
    let sub_matches = matches
        .subcommand()
        .map(|(_, sub_matches)| sub_matches)
        .unwrap_or(&matches);
    let shutdown = shutdown::on_signals()?;
    match cli.command {
        Command::Agent(args) => {
            let agent_config = config::agent_config(&args, sub_matches, &file)?;
            if let Some(address) = agent_config.admin_listen {
                let role = observability::Role::Agent;
                observability::start(
                    address,
                    role,
                    broker_config.redis_url.clone(),
                    broker_config.keys.clone(),
                    shutdown.clone(),
                )
                .await?;
            }
            let summary_json = agent_config.summary_json;
            let counted = agent_config.count.is_some();
            let summary = agent::run(broker_config, agent_config, shutdown).await?;
            summary.print(summary_json);
            if counted {
                eprintln!("{}", broker::errors::redact_credentials(&summary.key_value_line()));
            }
            if let Some(error) = &summary.error {
                progress::fatal(&error.to_string());
            }
            Ok(if summary.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Police(args) => {
            let police_config = config::police_config(&args, sub_matches, &file)?;
            if let Some(address) = police_config.admin_listen {
                let role = observability::Role::Police {
                    stream_mode: police_config.source == logsentinel::options::Transport::Stream,
                };
                observability::start(
                    address,
                    role,
                    broker_config.redis_url.clone(),
                    broker_config.keys.clone(),
                    shutdown.clone(),
                )
                .await?;
            }
            let police = match police::Police::new(broker_config, police_config, shutdown).await {
                Ok(police) => police,
                Err(police::PoliceError::Rules(error)) => {
                    for line in error.lines() {
                        progress::fatal(&line);
                    }
                    return Ok(ExitCode::from(2));
                }
                Err(police::PoliceError::Secrets(problems)) => {
                    for problem in problems {
                        progress::fatal(&problem.to_string());
                    }
                    return Ok(ExitCode::from(2));
                }
                Err(other) => return Err(other.into()),
            };
            police.run().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            let mut connection = connect_or_explain(&broker_config.redis_url).await?;
            let figures = status::collect(&mut connection, &broker_config.keys).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&figures)?);
            } else {
                figures.print_text();
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            let use_given_redis = config::redis_url_given(&matches, &file);
            demo::run(args, broker_config, use_given_redis, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            bench::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rules(_) | Command::Completions(_) | Command::Manpage(_) => {
            unreachable!("handled before the config is read")
        }
        Command::Top(args) => {
            ops::top::run(args, broker_config, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail(args) => {
            ops::tail::run(args, &broker_config.redis_url, &broker_config.keys, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq(args) => ops::dlq::run(args, &broker_config.redis_url, &broker_config.keys).await,
        Command::Healthcheck(args) => {
            if !args.url.is_empty() {
                probe(&args.url).await?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut connection = connect_or_explain(&broker_config.redis_url).await?;
            redis::cmd("PING").query_async::<String>(&mut connection).await?;
            // A missing file means no police loop runs here (an agent uses the same image).
            if let Some(path) = &args.health_file
                && let Ok(modified) = std::fs::metadata(path).and_then(|metadata| metadata.modified())
            {
                let age = modified.elapsed().unwrap_or_default();
                if age > args.max_age.0 {
                    anyhow::bail!(
                        "police loop stalled: health file {} is {} s old",
                        path.display(),
                        age.as_secs()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Errors that mean "fix the configuration": exit 2.
fn is_invalid_configuration(error: &anyhow::Error) -> bool {
    error.downcast_ref::<ConfigError>().is_some()
        || matches!(
            error.downcast_ref::<police::PoliceError>(),
            Some(police::PoliceError::Sink(_) | police::PoliceError::Secrets(_))
        )
}

/// `rules check` and `rules test`: exit 0, or 2 with every problem on stderr, one per line.
/// `rules test` reports sample lines that are not events and goes on; with `--strict` they
/// make it exit 1 at the end.
async fn rules_command(action: RulesAction) -> anyhow::Result<ExitCode> {
    use logsentinel::police::rules::{replay, window};
    let outcome = tokio::task::spawn_blocking(move || match action {
        RulesAction::Check { file } => replay::check(&file)
            .map(|summary| (vec![summary], ExitCode::SUCCESS))
            .map_err(|error| error.lines()),
        RulesAction::Test {
            file,
            events,
            strict,
            now,
        } => match replay::test(&file, &events, now.unwrap_or_else(window::now_ms)) {
            Ok(replayed) => {
                use std::io::Write;
                for bad_line in &replayed.bad_lines {
                    eprintln!("{bad_line}");
                }
                for future_event in &replayed.future_events {
                    eprintln!("{future_event}");
                }
                let mut stdout = std::io::stdout().lock();
                for alert in &replayed.alerts {
                    // A closed stdout (`| head`) ends the listing, not the summary.
                    if writeln!(stdout, "{}", alert.to_json()).is_err() {
                        break;
                    }
                }
                eprintln!("{}", replayed.summary());
                let code = if strict && !replayed.bad_lines.is_empty() {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                };
                Ok((Vec::new(), code))
            }
            Err(error) => Err(error.lines()),
        },
    })
    .await?;
    match outcome {
        Ok((summary_lines, code)) => {
            for line in summary_lines {
                println!("{line}");
            }
            Ok(code)
        }
        Err(error_lines) => {
            for line in error_lines {
                eprintln!("{line}");
            }
            Ok(ExitCode::from(2))
        }
    }
}

/// `healthcheck --url`: a GET that must answer 200 within 5 s (the image has no curl); of
/// several URLs, the first that accepts the connection decides.
async fn probe(urls: &[String]) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?;
    let mut refused = Vec::new();
    let mut answer = None;
    for url in urls {
        match client.get(url).send().await {
            Ok(response) => {
                answer = Some((url, response));
                break;
            }
            Err(error) if error.is_connect() => refused.push(format!("{url}: {error}")),
            Err(error) => anyhow::bail!("cannot probe {url}: {error}"),
        }
    }
    let Some((url, response)) = answer else {
        anyhow::bail!("nothing listens: {}", refused.join("; "));
    };
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    anyhow::bail!("{url} answered {status}: {}", body.trim_end().replace('\n', "; "))
}

/// One connection, or an error naming the URL (without its password).
async fn connect_or_explain(url: &str) -> anyhow::Result<broker::Connection> {
    broker::connect(url)
        .await
        .map_err(|error| anyhow::anyhow!("cannot reach Redis at {}: {error}", broker::errors::redact_url(url)))
}

/// mimalloc: the agent and police allocate many short-lived buffers per batch; it cut
/// their CPU per event measurably against glibc malloc (see the README's Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
