//! Wiring: config → policy, store, pool → pingora services → run until a shutdown signal.

use crate::admin::Admin;
use crate::ingress::Ingress;
use crate::state::AppState;
use crate::store::WorkerStore;
use anyhow::Context;
use isogate_config::Config;
use isogate_pool::{DisabledEgress, NoopObserver, Pool, PoolSettings};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use std::sync::Arc;

/// Starts the gateway on `config` and blocks until it is shut down (SIGTERM drains gracefully,
/// SIGINT stops fast).
pub fn run(config: Config) -> anyhow::Result<()> {
    let store = Arc::new(WorkerStore::open(&config.state_dir).context("opening the worker store")?);
    let threads = config.pool_threads();
    let pool = Arc::new(
        Pool::start(
            PoolSettings {
                threads,
                warm_isolates: config.pool.warm_isolates,
                max_cached_workers: config.pool.max_cached_workers,
                idle_ttl: config.pool.idle_ttl(),
                queue_capacity: config.pool.queue_capacity,
            },
            Arc::new(DisabledEgress),
            Arc::new(NoopObserver),
        )
        .context("starting the isolate pool")?,
    );
    let state = Arc::new(AppState::new(config.policy(), pool.clone(), store));

    let conf = ServerConf {
        threads: 2,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(10),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut ingress = Service::new("isogate ingress".to_string(), Ingress::new(state.clone()));
    ingress.add_tcp(&config.listen.ingress.to_string());
    let mut admin = Service::new("isogate admin".to_string(), Admin::new(state.clone()));
    admin.add_tcp(&config.listen.admin.to_string());
    server.add_service(ingress);
    server.add_service(admin);

    tracing::info!(
        ingress = %config.listen.ingress,
        admin = %config.listen.admin,
        pool_threads = threads,
        warm_isolates = config.pool.warm_isolates,
        engine = isogate_pool::ENGINE,
        "isogate starting"
    );
    server.run(RunArgs::default());
    drop(state);
    tracing::info!("isogate stopped");
    Ok(())
}
