//! Read-only views and repair tools for operators.

pub mod top;
