//! isogate's isolate pool: a warm pool of QuickJS isolates running tenant Workers under limits.
//!
//! The gateway talks to this crate only through owned, serialisable messages ([`api`]) and two
//! traits it implements: [`Egress`] (every outbound `fetch()`) and [`PoolObserver`] (metrics).
//! Every JS-engine type stays inside the private `engine` module.

#![warn(missing_docs)]

pub mod activity;
pub mod api;
pub mod cache;
pub mod confine;
pub mod egress;
mod engine;
pub mod observe;
pub mod pool;
pub mod wire;
pub mod worker;

pub use api::{
    BodyPart, BodySink, ClientTools, CodeDigest, ErrorKind, HttpRequest, HttpResponse, Invocation,
    InvocationStats, Invoker, LimitOverrides, Limits, LogEntry, ModuleSource, Outbound, SealedCode,
    WorkerCode, WorkerError,
};
pub use egress::{
    body_channel, check_api_args, ApiAnswer, ApiCall, ApiErrorCode, ApiFailure, Authorization,
    BodyStream, BodyWriter, Delivered, DisabledEgress, Egress, EgressError, EgressPort,
    EgressRequest, EgressResponse, FetchReply, Fetched, Verdict, Window, BODY_WINDOW,
    MAX_API_ARGS_BYTES, NETWORK_DISABLED, NO_APIS,
};
pub use observe::{CacheEvent, NoopObserver, PoolObserver, StartKind};
pub use pool::{Hold, Pool, PoolError, PoolSettings, Reply};

/// Name of the JS engine this build uses.
pub const ENGINE: &str = engine::ENGINE_NAME;

/// Starts one isolate with the whole Worker API installed (what a warm isolate costs) and drops
/// it. For benchmarks (`benches/benches/pool.rs`, `isolate_start`); the pool does this itself.
#[doc(hidden)]
pub async fn start_and_drop_isolate() -> Result<(), WorkerError> {
    drop(start_isolate().await?);
    Ok(())
}

/// An isolate [`start_isolate`] made, held only to be dropped (which tears the isolate down).
/// For benchmarks.
#[doc(hidden)]
pub struct StartedIsolate(#[allow(dead_code)] engine::Isolate);

/// Starts one isolate with the whole Worker API installed, without dropping it (benchmarks time
/// the start alone, `isolate_create`, and drop it outside the measurement).
#[doc(hidden)]
pub async fn start_isolate() -> Result<StartedIsolate, WorkerError> {
    engine::Isolate::new(std::sync::Arc::new(DisabledEgress))
        .await
        .map(StartedIsolate)
}
