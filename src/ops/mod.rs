pub mod dlq;
pub mod filter;
pub mod output;
pub mod tail;
