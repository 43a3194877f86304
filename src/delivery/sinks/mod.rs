//! One file per sink: console, jsonl, webhook, slack, alertmanager, email.
pub mod alertmanager;
pub mod email;
