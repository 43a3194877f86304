//! The README's option tables say what the CLI does: every option listed, none invented,
//! every default as declared.

use clap::CommandFactory;
use logsentinel::cli::Cli;

/// Rows of the table that follows the line starting with `intro`, as cells.
fn table_after(readme: &str, intro: &str) -> Vec<Vec<String>> {
    let start = readme
        .find(intro)
        .unwrap_or_else(|| panic!("README has no line starting with {intro:?}"));
    readme[start..]
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2) // header and separator
        .map(|line| {
            line.trim_matches('|')
                .split(" | ")
                .map(|cell| cell.trim().to_string())
                .collect()
        })
        .collect()
}

/// The `--flags` written in backticks in a cell.
fn flags_in(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .filter(|quoted| quoted.starts_with("--"))
        .map(|quoted| quoted.trim_start_matches("--").to_string())
        .collect()
}

fn check_table(command: &clap::Command, rows: &[Vec<String>], default_column: usize, what: &str) {
    let mut documented = Vec::new();
    for row in rows {
        for flag in flags_in(&row[0]) {
            let argument = command
                .get_arguments()
                .find(|argument| {
                    argument.get_long() == Some(flag.as_str())
                        || argument.get_all_aliases().unwrap_or_default().contains(&flag.as_str())
                })
                .unwrap_or_else(|| panic!("{what}: README lists --{flag}, which the CLI does not have"));
            documented.push(argument.get_id().to_string());
            let defaults: Vec<String> = argument
                .get_default_values()
                .iter()
                .map(|value| value.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() && argument.get_long() == Some(flag.as_str()) {
                let expected = format!("`{}`", defaults.join(","));
                assert!(
                    row[default_column].contains(&expected),
                    "{what}: README gives {:?} as the default of --{flag}, the CLI {expected}",
                    row[default_column]
                );
            }
        }
    }
    for argument in command.get_arguments() {
        let id = argument.get_id().as_str();
        if argument.is_hide_set() || argument.get_long().is_none() || ["help", "version"].contains(&id) {
            continue;
        }
        assert!(
            documented.iter().any(|documented_id| documented_id == id),
            "{what}: --{} is missing from the README's table",
            argument.get_long().unwrap_or(id)
        );
    }
}

#[test]
fn readme_option_tables_match_the_cli() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let root = Cli::command();
    let subcommand = |name: &str| {
        root.find_subcommand(name)
            .unwrap_or_else(|| panic!("no subcommand {name}"))
            .clone()
    };
    check_table(&root, &table_after(&readme, "Shared options"), 2, "shared options");
    // The agent's limits have a table of their own.
    let mut agent_rows = table_after(&readme, "`logsentinel agent` (file table");
    agent_rows.extend(table_after(&readme, "### Limits of the sources"));
    check_table(&subcommand("agent"), &agent_rows, 1, "agent");
    check_table(
        &subcommand("police"),
        &table_after(&readme, "`logsentinel police` (file table"),
        1,
        "police",
    );
    let rules_test = subcommand("rules")
        .find_subcommand("test")
        .expect("rules has a test subcommand")
        .clone();
    check_table(
        &rules_test,
        &table_after(&readme, "`logsentinel rules test FILE` options"),
        1,
        "rules test",
    );
    check_table(
        &subcommand("tail"),
        &table_after(&readme, "`logsentinel tail` options"),
        1,
        "tail",
    );
    // One table for `dlq` and its actions: their options, each once.
    let dlq = subcommand("dlq");
    let mut dlq_arguments: Vec<clap::Arg> = dlq.get_arguments().cloned().collect();
    for action in dlq.get_subcommands() {
        for argument in action.get_arguments() {
            if !dlq_arguments.iter().any(|known| known.get_id() == argument.get_id()) {
                dlq_arguments.push(argument.clone());
            }
        }
    }
    check_table(
        &clap::Command::new("dlq").args(dlq_arguments),
        &table_after(&readme, "`logsentinel dlq` options"),
        1,
        "dlq",
    );
    check_table(
        &subcommand("top"),
        &table_after(&readme, "`logsentinel top` options"),
        1,
        "top",
    );
}
