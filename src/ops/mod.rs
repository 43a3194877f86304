//! Read-only views and repair tools for operators.

pub mod dlq;
pub mod filter;
pub mod output;
pub mod tail;
pub mod top;
