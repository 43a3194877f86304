//! Operating the agent and the police: the admin HTTP listener (`/metrics`, `/healthz`,
//! `/readyz`), the metric names, the watchdog of the main loops and the figures sampled
//! from Redis.
//!
//! Invariants:
//! - `/healthz` never touches Redis: an outage must not get a spooling agent restarted
//! - `/readyz` answers 503 from the moment a stop is requested
//! - every metric name is declared once, in [`names`]; label values come from closed sets
//!   (levels, reasons, commands, stages) or from the configuration (rule and sink names),
//!   never from the data (no host, consumer or event ids)
//! - recording is an atomic add on a cached handle: hot paths count per batch, not per
//!   event; without the listener (`--admin-listen off`) no recorder is installed and every
//!   recording is a no-op

pub mod admin;
pub mod health;
pub mod names;
pub mod process;
pub mod sampler;

pub use admin::{AdminListen, Role, start};
