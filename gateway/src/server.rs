//! Wiring: config → policy, store, pool → pingora services → run until a shutdown signal.

use crate::admin::Admin;
use crate::cluster::Shared;
use crate::egress::{client, GatewayEgress};
use crate::inflight::InflightBudget;
use crate::ingress::Ingress;
use crate::lifecycle::{DrainingShutdown, Reloader};
use crate::metrics::Metrics;
use crate::public::Scheme;
use crate::state::{AppState, Snapshot};
use crate::store::{Stored, WorkerStore};
use crate::supervisor::cordon::CordonSettings;
use crate::supervisor::{Supervisor, SupervisorSettings, Workers};
use crate::tls::CertStore;
use crate::vault::Secrets;
use anyhow::Context;
use arc_swap::ArcSwap;
use isogate_config::Isolation;
use isogate_config::{Config, Lowered};
use isogate_policy::SelfListeners;
use isogate_pool::wire::{self, WorkerSettings};
use isogate_pool::{EgressPort, Pool, PoolSettings};
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The gateway's own listeners as the SSRF rule sees them: the configured sockets, and for a
/// wildcard bind (`0.0.0.0`, `[::]`) every address of the host's interfaces.
pub fn self_listeners(listeners: &[SocketAddr]) -> SelfListeners {
    let wildcard = listeners.iter().any(|l| l.ip().is_unspecified());
    let local = if wildcard {
        local_interface_ips()
    } else {
        Vec::new()
    };
    SelfListeners::new(listeners.iter().copied(), local)
}

/// The addresses of the host's network interfaces (empty if they cannot be read; loopback and
/// the unspecified address are matched by a wildcard listener anyway).
fn local_interface_ips() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        tracing::warn!("cannot list the interface addresses; only loopback is treated as local");
        return Vec::new();
    };
    interfaces
        .filter_map(|i| i.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect()
}

/// Starts the gateway on `config` (lowered once into `lowered` by `Config::lower`) and blocks
/// until it is shut down (SIGTERM drains gracefully, SIGINT stops fast).
pub fn run(config: Config, lowered: Lowered, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    // pingora retries a listener whose address is taken, silently, for as long as it runs: say
    // so at once instead (the address may still be taken between this check and pingora's
    // bind; `/readyz` waits for the ingress to accept, see `admin.rs`).
    let tls_listener = config.listen.ingress_tls.map(|a| ("listen.ingress_tls", a));
    for (field, addr) in [
        ("listen.ingress", config.listen.ingress),
        ("listen.admin", config.listen.admin),
    ]
    .into_iter()
    .chain(tls_listener)
    {
        std::net::TcpListener::bind(addr)
            .with_context(|| format!("{field}: cannot listen on {addr}"))?;
    }
    // Before any egress client exists: Workers can never reach the gateway's own listeners.
    client::set_self_listeners(self_listeners(&lowered.listeners));
    let metrics = Arc::new(Metrics::new());
    // Certificates load before anything starts: a bad file stops `serve`, naming it.
    let certs = match config.listen.ingress_tls {
        Some(_) => Some(Arc::new(
            CertStore::open(&config.tls.certificates, metrics.clone())
                .context("loading the TLS certificates")?,
        )),
        None => None,
    };
    // Outbound I/O (Worker fetches, vault reads) runs on its own runtime so that a Worker busy
    // with CPU never stalls another Worker's upstream connection.
    let egress_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("isogate-egress")
        .enable_all()
        .build()
        .context("starting the egress runtime")?;
    let store = open_store(&config, &metrics, &egress_runtime)?;
    metrics
        .state_dir_bytes
        .set(i64::try_from(store.disk_bytes()).unwrap_or(i64::MAX));
    let secrets = {
        let _guard = egress_runtime.enter();
        Arc::new(Secrets::new(
            &config.credentials,
            &config.vaults,
            client::open_client(),
            metrics.clone(),
            egress_runtime.handle(),
        ))
    };
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::new(
        lowered.policy,
        secrets,
    )));
    let inflight = InflightBudget::new(
        config.inflight.budget_bytes(),
        config.inflight.tenant_share_percent,
        config.inflight.wait(),
        Some(metrics.inflight_bytes.clone()),
    );
    metrics
        .inflight_budget_bytes
        .set(i64::try_from(config.inflight.budget_bytes()).unwrap_or(i64::MAX));
    let receipts: Arc<crate::receipts::Receipts> = Arc::default();
    let egress = {
        let _guard = egress_runtime.enter();
        GatewayEgress::with_inflight(
            snapshot.clone(),
            metrics.clone(),
            egress_runtime.handle().clone(),
            inflight.clone(),
        )
        .with_shared(store.shared().cloned())
        .with_receipts(receipts.clone())
    };
    let egress: Arc<dyn EgressPort> = Arc::new(egress);
    let apis = crate::apis::Apis::new(
        egress.clone(),
        snapshot.clone(),
        egress_runtime.handle().clone(),
        metrics.clone(),
        receipts.clone(),
    );
    let executions = crate::executions::Executions::new(receipts.clone(), Some(metrics.clone()));
    let outbound = crate::apis::Outbound {
        egress,
        apis: apis.clone(),
        executions: executions.clone(),
    };
    let pool = Arc::new(start_workers(
        &config,
        Arc::new(outbound),
        metrics.clone(),
        &egress_runtime,
    )?);
    let mut replica = String::new();
    if let Some(shared) = store.shared() {
        let mut nonce = [0u8; 8];
        let _ = getrandom::getrandom(&mut nonce);
        let host: String = std::env::var("HOSTNAME")
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            .take(64)
            .collect();
        replica = format!("{host}-{}-{}", std::process::id(), hex::encode(nonce));
        egress_runtime.spawn(shared.clone().heartbeat(replica.clone()));
        // Replies to this replica's executions that reached another replica.
        let relayed = executions.clone();
        egress_runtime.spawn(
            shared
                .clone()
                .follow_replies(replica.clone(), move |reply| {
                    crate::executions::parse_reply(reply.body.as_bytes()).map_or(400, |answer| {
                        match relayed.reply(&reply.tenant, &reply.execution, &reply.call, answer) {
                            Ok(()) => 200,
                            Err(e) => e.status(),
                        }
                    })
                }),
        );
        // Deletions on other replicas evict this replica's warm copies.
        let workers = pool.clone();
        egress_runtime.spawn(shared.clone().follow(move |tenant, id| {
            let workers = workers.clone();
            async move {
                workers.evict(&tenant, &id).await;
            }
        }));
    }
    metrics.config_reloads.with_label_values(&["ok"]).inc();
    metrics.config_last_success.set(unix_now());
    let mut state = AppState::new(snapshot, pool.clone(), store, metrics);
    state.inflight = inflight;
    state.apis = Some(apis);
    state.receipts = receipts;
    state.executions = executions;
    state.replica = replica;
    let state = Arc::new(state);

    let conf = ServerConf {
        threads: 2,
        // isogate drains before it hands the signal to pingora (lifecycle::DrainingShutdown).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut ingress = Service::new("isogate ingress".to_string(), Ingress::new(state.clone()));
    ingress.add_tcp(&config.listen.ingress.to_string());
    let mut admin = Service::new(
        "isogate admin".to_string(),
        Admin::new(
            state.clone(),
            &[
                Some((config.listen.ingress, false)),
                config.listen.ingress_tls.map(|a| (a, true)),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>(),
        ),
    );
    admin.add_tcp(&config.listen.admin.to_string());
    server.add_service(ingress);
    server.add_service(admin);
    if let (Some(addr), Some(certs)) = (config.listen.ingress_tls, &certs) {
        let mut tls = Service::new(
            "isogate ingress tls".to_string(),
            Ingress::with_scheme(state.clone(), Scheme::Https),
        );
        let mut settings =
            TlsSettings::intermediate("", "").context("TLS settings of listen.ingress_tls")?;
        settings.set_cert_resolver(certs.clone());
        // ALPN: h2, then http/1.1.
        settings.enable_h2();
        tls.add_tls_with_settings(&addr.to_string(), None, settings);
        server.add_service(tls);
    }

    tracing::info!(
        ingress = %config.listen.ingress,
        ingress_tls = ?config.listen.ingress_tls,
        admin = %config.listen.admin,
        public_routes = state.snapshot().policy.routes().routes().len(),
        pool_threads = config.pool_threads(),
        isolation = ?config.pool.isolation,
        worker_processes = if config.pool.isolation == Isolation::Process { config.pool_processes() } else { 0 },
        warm_isolates = config.pool.warm_isolates,
        engine = isogate_pool::ENGINE,
        "isogate starting"
    );
    if let Some(path) = config_path {
        let reloader = Arc::new(Reloader::new(
            path,
            config.clone(),
            state.clone(),
            client::open_client(),
            egress_runtime.handle().clone(),
            certs.clone(),
        ));
        egress_runtime.spawn(reloader.watch());
    }
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainingShutdown::new(state.clone(), config.shutdown)),
    });
    drop(state);
    drop(pool);
    egress_runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    tracing::info!("isogate stopped");
    Ok(())
}

/// The stored Workers: SQLite under `state_dir` for one replica, or the Redis of
/// `shared.redis` for every replica (its client lives on `runtime`).
fn open_store(
    config: &Config,
    metrics: &Arc<Metrics>,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Arc<Stored>> {
    let Some(redis) = &config.shared.redis else {
        let local = WorkerStore::open(&config.state_dir).context("opening the worker store")?;
        return Ok(Arc::new(Stored::Local(Arc::new(local))));
    };
    let password = redis
        .password
        .as_ref()
        .map(|p| crate::vault::read_secret(p, "shared.redis.password"))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let _guard = runtime.enter();
    let shared = Shared::open(redis, password, metrics.clone()).map_err(anyhow::Error::msg)?;
    Ok(Arc::new(Stored::Shared(Arc::new(shared))))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Starts the isolate runner `pool.isolation` asks for.
fn start_workers(
    config: &Config,
    egress: Arc<dyn EgressPort>,
    metrics: Arc<Metrics>,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Workers> {
    let pool = &config.pool;
    let threads = config.pool_threads();
    match pool.isolation {
        Isolation::Thread => {
            tracing::warn!(
                "pool.isolation is `thread`: Workers run inside the gateway process, without the second wall"
            );
            Ok(Workers::Threads(Arc::new(
                Pool::start(
                    PoolSettings {
                        threads,
                        warm_isolates: pool.warm_isolates,
                        max_cached_workers: pool.max_cached_workers,
                        idle_ttl: pool.idle_ttl(),
                        queue_capacity: pool.queue_capacity,
                    },
                    egress,
                    metrics,
                )
                .context("starting the isolate pool")?,
            )))
        }
        Isolation::Process => {
            let processes = config.pool_processes();
            let share = |n: usize| n.div_ceil(processes);
            let settings = SupervisorSettings {
                processes,
                worker: WorkerSettings {
                    protocol: wire::PROTOCOL,
                    index: 0,
                    // A tenant runs in one worker process, so each gets all the isolate threads;
                    // warm isolates and cached Workers are divided.
                    threads: threads.max(1),
                    warm_isolates: share(pool.warm_isolates),
                    max_cached_workers: share(pool.max_cached_workers).max(1),
                    idle_ttl: pool.idle_ttl(),
                    queue_capacity: pool.queue_capacity,
                    heartbeat: Duration::from_millis(25),
                    data_limit_bytes: Some(pool.process_memory_mb.saturating_mul(1 << 20)),
                    test_probes: std::env::var_os("ISOGATE_TEST_PROBES").is_some_and(|v| v == "1"),
                },
                grace: Duration::from_millis(pool.grace_ms),
                heartbeat_timeout: Duration::from_secs(5),
                start_timeout: Duration::from_secs(10),
                cordon: CordonSettings {
                    kills: usize::try_from(pool.quarantine.after_kills).unwrap_or(usize::MAX),
                    window: Duration::from_secs(pool.quarantine.window_s),
                    hold: Duration::from_secs(pool.quarantine.hold_s),
                },
            };
            Ok(Workers::Processes(Supervisor::start(
                settings,
                egress,
                metrics,
                runtime.handle().clone(),
            )))
        }
    }
}
