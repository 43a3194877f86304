//! `logsentinel completions SHELL` and `logsentinel manpage DIR`: generated from the same
//! clap definitions, checked by the tools that will read them (bash, man).

use std::process::Command;

fn logsentinel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_logsentinel"))
}

#[test]
fn the_bash_completion_is_valid_bash_and_knows_the_subcommands() {
    let output = logsentinel().args(["completions", "bash"]).output().unwrap();
    assert!(output.status.success());
    let script = String::from_utf8(output.stdout).unwrap();
    assert!(script.contains("tail") && script.contains("dlq") && script.contains("--older-than"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logsentinel.bash");
    std::fs::write(&path, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let output = logsentinel().args(["completions", shell]).output().unwrap();
        assert!(output.status.success() && !output.stdout.is_empty(), "{shell}");
    }
    let unknown = logsentinel().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn the_man_pages_render_with_man() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    let output = logsentinel().arg("manpage").arg(&pages).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for page in [
        "logsentinel.1",
        "logsentinel-tail.1",
        "logsentinel-dlq.1",
        "logsentinel-police.1",
    ] {
        let path = pages.join(page);
        assert!(path.exists(), "{page} written");
        let rendered = Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .env("LC_ALL", "C")
            .output()
            .expect("man (Debian's man-db) is installed");
        assert!(
            rendered.status.success(),
            "man -l {page}: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let text = String::from_utf8_lossy(&rendered.stdout);
        assert!(text.contains("NAME") && text.contains("logsentinel"), "{page}: {text}");
    }
    let tail_page = Command::new("man")
        .arg("-l")
        .arg(pages.join("logsentinel-tail.1"))
        .env("MANPAGER", "cat")
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&tail_page.stdout).contains("from"));
}
