//! Process lifecycle: configuration reload (SIGHUP and file changes) and graceful shutdown.
//!
//! **Reload** parses and validates the whole file, then swaps the reloadable [`Snapshot`]
//! atomically; requests in flight finish under the snapshot they started with. An invalid file
//! is rejected (logged, counted) and the last good configuration keeps serving. Tenants, keys,
//! limits, egress rules, public routes, `listen.api_hosts`/`trusted_proxies`, credentials and
//! vaults reload; the listening sockets, `state_dir`, `pool` and `shutdown` need a restart (a reload that changes them says so in the log). Cached Workers of a
//! tenant that left the configuration are evicted.
//!
//! The ingress TLS certificates reload the same way: on SIGHUP, with the configuration, and
//! when the contents of their files change (checked every second); a set that does not load is
//! refused and the last good one keeps serving (`tls.rs`).
//!
//! **Shutdown** on SIGTERM: `/readyz` answers 503 at once while the gateway keeps serving for
//! `shutdown.grace_period_s` (load balancers stop routing to it); then new requests are refused
//! with 503 and the gateway waits up to `shutdown.drain_timeout_s` for requests in flight; then
//! pingora stops its listeners and the process exits 0. SIGINT stops at once; SIGQUIT is
//! pingora's graceful upgrade.

use crate::egress::client::HttpClient;
use crate::state::{AppState, Snapshot};
use crate::tls::CertStore;
use crate::vault::Secrets;
use async_trait::async_trait;
use isogate_config::{Config, ShutdownConfig};
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// Reloads the configuration file into the running gateway.
pub struct Reloader {
    path: PathBuf,
    state: Arc<AppState>,
    client: HttpClient,
    runtime: tokio::runtime::Handle,
    current: Mutex<Config>,
    certs: Option<Arc<CertStore>>,
}

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new configuration is serving.
    Applied,
    /// The file was rejected; the last good configuration keeps serving.
    Rejected(String),
}

impl Reloader {
    /// A reloader for `path`, whose configuration `current` is serving now.
    pub fn new(
        path: PathBuf,
        current: Config,
        state: Arc<AppState>,
        client: HttpClient,
        runtime: tokio::runtime::Handle,
        certs: Option<Arc<CertStore>>,
    ) -> Reloader {
        Reloader {
            path,
            state,
            client,
            runtime,
            current: Mutex::new(current),
            certs,
        }
    }

    /// Loads, validates and applies the file.
    pub fn reload(&self, why: &str) -> ReloadOutcome {
        let metrics = &self.state.metrics;
        let (config, lowered) = match Config::load_lowered(&self.path) {
            Ok(loaded) => loaded,
            Err(e) => {
                metrics
                    .config_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::error!(path = %self.path.display(), trigger = why, error = %e,
                    "configuration rejected; the last good configuration keeps serving");
                return ReloadOutcome::Rejected(e.to_string());
            }
        };
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        for (field, changed) in [
            (
                "listen",
                config.listen.sockets() != current.listen.sockets(),
            ),
            ("state_dir", config.state_dir != current.state_dir),
            ("pool", config.pool != current.pool),
            ("shutdown", config.shutdown != current.shutdown),
        ] {
            if changed {
                tracing::warn!(
                    field,
                    "this setting changed but only takes effect after a restart"
                );
            }
        }
        let secrets = {
            let _guard = self.runtime.enter();
            Arc::new(Secrets::new(
                &config.credentials,
                &config.vaults,
                self.client.clone(),
                metrics.clone(),
                &self.runtime,
            ))
        };
        let old = self.state.snapshot();
        let snapshot = Snapshot::rebuild(lowered.policy, secrets, &old);
        let kept: HashSet<&str> = config.tenants.iter().map(|t| t.name.as_str()).collect();
        let removed: Vec<String> = old
            .policy
            .tenants()
            .iter()
            .map(|t| t.name.as_str().to_string())
            .filter(|t| !kept.contains(t.as_str()))
            .collect();
        self.state.swap(snapshot);
        for tenant in &removed {
            let evicted = self.state.pool.evict_tenant(tenant);
            metrics.forget_tenant(tenant);
            tracing::info!(
                tenant,
                evicted = ?evicted,
                "tenant removed; its cached Workers were evicted"
            );
        }
        if let Some(certs) = &self.certs {
            certs.reload(Some(&config.tls.certificates), why);
        }
        *current = config;
        metrics.config_reloads.with_label_values(&["ok"]).inc();
        metrics.config_last_success.set(crate::server::unix_now());
        tracing::info!(path = %self.path.display(), trigger = why, tenants = current.tenants.len(),
            "configuration reloaded");
        ReloadOutcome::Applied
    }

    /// Reloads on SIGHUP and whenever the file's contents change (checked every second; a
    /// content hash, so editors' rename-and-replace and Kubernetes ConfigMap symlink swaps are
    /// seen). Runs until the process exits.
    pub async fn watch(self: Arc<Self>) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload on file change only");
                None
            }
        };
        let mut last = self.fingerprint();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    last = self.fingerprint();
                    self.reload("SIGHUP");
                }
                _ = tick.tick() => {
                    let now = self.fingerprint();
                    if now.is_some() && now != last {
                        last = now;
                        self.reload("file change");
                    }
                    if let Some(certs) = &self.certs {
                        certs.reload(None, "certificate file change");
                    }
                }
            }
        }
    }

    fn fingerprint(&self) -> Option<[u8; 32]> {
        std::fs::read(&self.path)
            .ok()
            .map(|bytes| Sha256::digest(&bytes).into())
    }
}

/// pingora's shutdown signal, with isogate's not-ready grace period and drain in front of it.
pub struct DrainingShutdown {
    state: Arc<AppState>,
    settings: ShutdownConfig,
}

impl DrainingShutdown {
    /// Watches signals for `state` with `settings`.
    pub fn new(state: Arc<AppState>, settings: ShutdownConfig) -> Self {
        DrainingShutdown { state, settings }
    }

    async fn drain(&self) {
        let state = &self.state;
        state.draining.store(true, Ordering::SeqCst);
        tracing::info!(
            grace_period_s = self.settings.grace_period_s,
            "SIGTERM: /readyz now answers 503; still serving during the grace period"
        );
        tokio::time::sleep(Duration::from_secs(self.settings.grace_period_s)).await;
        state.refusing.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(self.settings.drain_timeout_s);
        tracing::info!(
            in_flight = state.in_flight.load(Ordering::SeqCst),
            "refusing new requests; draining requests in flight"
        );
        while state.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = state.in_flight.load(Ordering::SeqCst);
        if left > 0 {
            tracing::warn!(in_flight = left, "drain timeout reached; stopping anyway");
        } else {
            tracing::info!("drained; stopping");
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for DrainingShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = term.recv() => {
                tokio::select! {
                    _ = self.drain() => {}
                    _ = int.recv() => return ShutdownSignal::FastShutdown,
                }
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}
