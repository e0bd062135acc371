//! The isogate gateway: pingora listeners, the HTTP API, the worker store, tenant admission and
//! the CLI. This is the only crate that knows pingora; the isolate pool and the policy are
//! reached through their own crates' interfaces.

pub mod admin;
pub mod admission;
pub mod apis;
pub mod cli;
pub mod cluster;
pub mod egress;
pub mod error;
pub mod executions;
pub mod explain;
pub mod inflight;
pub mod ingress;
pub mod lifecycle;
pub mod mcp;
pub mod metrics;
pub mod public;
pub mod receipts;
pub mod server;
pub mod state;
pub mod store;
pub mod supervisor;
pub mod tls;
pub mod vault;
