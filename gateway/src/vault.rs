//! Secrets for credential injection. A credential's value comes from an environment variable,
//! a file (re-read when it changes) or a HashiCorp Vault / OpenBao KV v2 secret.
//!
//! Vault secrets are cached per path and served *stale-while-revalidate*: a value younger than
//! `cache_ttl_s` is used as is; an older one (up to `max_stale_s`) is still used while one
//! background refresh runs; a read with no usable value waits for that same refresh (at most
//! the vault timeout). Whatever the number of concurrent readers, a path never has more than one
//! vault request open. Failed refreshes back off exponentially with jitter (capped at the
//! smaller of `cache_ttl_s` and 30 s), and an outage is logged once when a path starts failing
//! and once when it recovers, not once per request.
//!
//! Values live in `secrecy::SecretString` from the moment they are read; they are exposed only
//! where the outbound header or query is written, and where responses are scrubbed. Errors name
//! the credential and the source, never the value.

use crate::egress::client::{read_body_limited, HttpClient};
use crate::metrics::Metrics;
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use http_body_util::Full;
use isogate_config::{CredentialConfig, Injection, SecretSource, TokenSource, VaultConfig};
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long one vault read may take (connect, headers and body).
pub const VAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first retry delay after a failed read; doubles per failure up to the cap.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest retry delay, whatever `cache_ttl_s` is.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Largest vault answer read.
const MAX_VAULT_BODY: usize = 1 << 20;

/// Why a secret could not be had. Never contains a secret value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("credential `{credential}` is unavailable: {reason}")]
pub struct SecretError {
    /// The credential's name.
    pub credential: String,
    /// What went wrong with its source.
    pub reason: String,
}

/// Why one vault read failed. The variant is the `outcome` label of
/// `isogate_vault_read_duration_seconds`. Never contains a secret value or the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// The gateway's vault token could not be read.
    #[error("vault `{vault}`: {detail}")]
    Token {
        /// The vault's name.
        vault: String,
        /// Which variable or file is missing.
        detail: String,
    },
    /// No complete answer within [`VAULT_TIMEOUT`].
    #[error("vault `{vault}` did not answer within {} s", VAULT_TIMEOUT.as_secs())]
    Timeout {
        /// The vault's name.
        vault: String,
    },
    /// Connection refused, reset, DNS failure…
    #[error("vault `{vault}` is unreachable: {detail}")]
    Unreachable {
        /// The vault's name.
        vault: String,
        /// The transport error.
        detail: String,
    },
    /// 401/403: the token is invalid, expired, revoked, or not allowed to read the path.
    #[error("vault `{vault}` denied reading {path} (HTTP {status}): the token is invalid, revoked or lacks a policy for it")]
    Denied {
        /// The vault's name.
        vault: String,
        /// The secret's path.
        path: String,
        /// The HTTP status.
        status: u16,
    },
    /// Any other unsuccessful status (404, 5xx, sealed…).
    #[error("vault `{vault}` answered HTTP {status} for {path}")]
    Status {
        /// The vault's name.
        vault: String,
        /// The secret's path.
        path: String,
        /// The HTTP status.
        status: u16,
    },
    /// A success status without a KV v2 document (`data.data` of strings).
    #[error("vault `{vault}` answered no KV v2 `data.data` object for {path}")]
    Invalid {
        /// The vault's name.
        vault: String,
        /// The secret's path.
        path: String,
    },
}

impl VaultError {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            VaultError::Token { .. } => "token",
            VaultError::Timeout { .. } => "timeout",
            VaultError::Unreachable { .. } => "unreachable",
            VaultError::Denied { .. } => "denied",
            VaultError::Status { .. } => "status",
            VaultError::Invalid { .. } => "invalid",
        }
    }
}

/// A configured credential: where its value comes from and how it is attached.
pub struct Credential {
    /// Name (used in logs and metrics).
    pub name: String,
    /// How it is attached to a request.
    pub inject: Injection,
    source: Source,
}

enum Source {
    Env(String),
    File(FileSecret),
    Vault {
        vault: Arc<Vault>,
        path: String,
        field: String,
    },
}

impl Source {
    fn label(&self) -> &'static str {
        match self {
            Source::Env(_) => "env",
            Source::File(_) => "file",
            Source::Vault { .. } => "vault",
        }
    }
}

struct FileSecret {
    path: PathBuf,
    cache: Mutex<Option<(SystemTime, u64, SecretString)>>,
}

impl FileSecret {
    /// Reads the file if its modification time or size changed since the last read.
    fn get(&self) -> Result<SecretString, String> {
        let meta = std::fs::metadata(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((mtime, len, value)) = cache.as_ref() {
            if (*mtime, *len) == stamp {
                return Ok(value.clone());
            }
        }
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let value = SecretString::from(text.trim_end_matches(['\n', '\r']).to_string());
        *cache = Some((stamp.0, stamp.1, value.clone()));
        Ok(value)
    }
}

/// The fields of one KV v2 secret as last read successfully.
struct CachedDoc {
    fields: HashMap<String, SecretString>,
    fetched: Instant,
}

/// Completes when a refresh has stored its result in the slot.
type Refresh = Shared<BoxFuture<'static, ()>>;

/// The cache entry and refresh state of one vault path.
#[derive(Default)]
struct Slot {
    /// The last successful read.
    good: Option<CachedDoc>,
    /// The one refresh in flight for this path, and when it started.
    inflight: Option<(Refresh, Instant)>,
    /// Consecutive failed reads (0 = healthy).
    failures: u32,
    /// No new read before this instant (backoff after a failure).
    retry_at: Option<Instant>,
    /// Why the last read failed.
    last_error: Option<VaultError>,
}

/// What a reader does after looking at the slot.
enum Step {
    Done(Result<SecretString, String>),
    Wait(Refresh),
}

/// A HashiCorp Vault or OpenBao server (KV v2, token auth).
pub struct Vault {
    name: String,
    address: String,
    token: TokenSource,
    ttl: Duration,
    max_stale: Duration,
    client: HttpClient,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    slots: Mutex<HashMap<String, Slot>>,
}

fn read_token(source: &TokenSource) -> Result<SecretString, String> {
    read_secret(source, "vault token")
}

/// Reads a secret named by `source` (`what` says which, in errors; never the value).
pub(crate) fn read_secret(source: &TokenSource, what: &str) -> Result<SecretString, String> {
    match source {
        TokenSource::Env { env } => std::env::var(env)
            .map(SecretString::from)
            .map_err(|_| format!("{what} variable {env} is not set")),
        TokenSource::File { file } => std::fs::read_to_string(file)
            .map(|t| SecretString::from(t.trim().to_string()))
            .map_err(|e| format!("cannot read {what} file {}: {e}", file.display())),
    }
}

/// A uniformly random fraction in [0, 1).
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// The delay before retrying after `failures` consecutive failed reads: exponential from
/// [`BACKOFF_BASE`], capped at `cap`, with "equal jitter" (between half and all of the step) so
/// that gateways restarted together do not retry in lockstep.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let step = exp.min(cap);
    step / 2 + step.mul_f64(random_fraction() / 2.0)
}

impl Vault {
    fn new(
        config: &VaultConfig,
        client: HttpClient,
        metrics: Arc<Metrics>,
        runtime: tokio::runtime::Handle,
    ) -> Vault {
        Vault {
            name: config.name.clone(),
            address: config.address.trim_end_matches('/').to_string(),
            token: config.token.clone(),
            ttl: Duration::from_secs(config.cache_ttl_s),
            max_stale: Duration::from_secs(config.max_stale_s),
            client,
            metrics,
            runtime,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The longest delay between retries of a failing path.
    fn backoff_cap(&self) -> Duration {
        self.ttl.clamp(BACKOFF_BASE, BACKOFF_MAX)
    }

    /// Reads `path` (e.g. `secret/data/agents/github`) from the KV v2 engine, once.
    async fn fetch(&self, path: &str) -> Result<HashMap<String, SecretString>, VaultError> {
        let token = read_token(&self.token).map_err(|detail| VaultError::Token {
            vault: self.name.clone(),
            detail,
        })?;
        let uri = format!("{}/v1/{}", self.address, path.trim_start_matches('/'));
        let request = http::Request::get(&uri)
            .header("x-vault-token", token.expose_secret())
            .body(Full::new(Bytes::new()))
            .map_err(|e| VaultError::Unreachable {
                vault: self.name.clone(),
                detail: format!("bad request: {e}"),
            })?;
        let unreachable = |detail: String| VaultError::Unreachable {
            vault: self.name.clone(),
            detail,
        };
        let read = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = response.status();
            let body = read_body_limited(response.into_body(), MAX_VAULT_BODY)
                .await
                .map_err(unreachable)?;
            Ok::<_, VaultError>((status, body))
        };
        let (status, body) = tokio::time::timeout(VAULT_TIMEOUT, read)
            .await
            .map_err(|_| VaultError::Timeout {
                vault: self.name.clone(),
            })??;
        if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
            return Err(VaultError::Denied {
                vault: self.name.clone(),
                path: path.to_string(),
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(VaultError::Status {
                vault: self.name.clone(),
                path: path.to_string(),
                status: status.as_u16(),
            });
        }
        let invalid = || VaultError::Invalid {
            vault: self.name.clone(),
            path: path.to_string(),
        };
        let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|_| invalid())?;
        let data = doc
            .get("data")
            .and_then(|d| d.get("data"))
            .and_then(|d| d.as_object())
            .ok_or_else(invalid)?;
        Ok(data
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), SecretString::from(v.as_str()?.to_string()))))
            .collect())
    }

    /// Starts the refresh of `path` unless one is in flight or the backoff forbids it.
    fn start_refresh(self: &Arc<Self>, slot: &mut Slot, path: &str, now: Instant) {
        if let Some((_, started)) = &slot.inflight {
            // A refresh task ends within VAULT_TIMEOUT; one this old was lost (its runtime
            // shut down) and is replaced.
            if now.duration_since(*started) < VAULT_TIMEOUT * 2 {
                return;
            }
        }
        if slot.retry_at.is_some_and(|at| now < at) {
            return;
        }
        let vault = self.clone();
        let owned = path.to_string();
        // The task runs to completion even when every reader has gone away.
        let task = self
            .runtime
            .spawn(async move { vault.refresh(owned).await });
        let done: Refresh = task.map(|_| ()).boxed().shared();
        slot.inflight = Some((done, now));
    }

    /// One read of `path`; stores the result, updates the backoff, logs state changes.
    async fn refresh(self: Arc<Self>, path: String) {
        let started = Instant::now();
        let result = self.fetch(&path).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        self.metrics
            .vault_read_duration
            .with_label_values(&[&self.name, outcome])
            .observe(started.elapsed().as_secs_f64());
        let mut slots = self.slots();
        let slot = slots.entry(path.clone()).or_default();
        slot.inflight = None;
        match result {
            Ok(fields) => {
                slot.good = Some(CachedDoc {
                    fields,
                    fetched: Instant::now(),
                });
                if slot.failures > 0 {
                    tracing::info!(target: "isogate::vault", vault = %self.name, path = %path,
                        failed_reads = slot.failures, "vault read recovered");
                }
                slot.failures = 0;
                slot.retry_at = None;
                slot.last_error = None;
            }
            Err(error) => {
                self.metrics
                    .secret_fetch_errors
                    .with_label_values(&["vault"])
                    .inc();
                if slot.failures == 0 {
                    tracing::warn!(target: "isogate::vault", vault = %self.name, path = %path,
                        error = %error, max_stale_s = self.max_stale.as_secs(),
                        "vault read failing; serving cached values up to max_stale_s, retrying with backoff");
                }
                slot.failures = slot.failures.saturating_add(1);
                slot.retry_at = Some(Instant::now() + backoff(slot.failures, self.backoff_cap()));
                slot.last_error = Some(error);
            }
        }
        let up = slots.values().all(|s| s.failures == 0);
        self.metrics
            .vault_up
            .with_label_values(&[&self.name])
            .set(i64::from(up));
    }

    /// Looks at the cache: a usable value is returned (starting a refresh when it is past
    /// the TTL); otherwise the reader waits for the refresh, or fails during a backoff.
    fn step(self: &Arc<Self>, path: &str, field: &str, may_start: bool) -> Step {
        let now = Instant::now();
        let mut slots = self.slots();
        let slot = slots.entry(path.to_string()).or_default();
        let age = slot.good.as_ref().map(|d| now.duration_since(d.fetched));
        if let (Some(doc), Some(age)) = (&slot.good, age) {
            if age < self.max_stale {
                let value = doc
                    .fields
                    .get(field)
                    .cloned()
                    .ok_or_else(|| format!("field `{field}` not found at {path}"));
                if age >= self.ttl {
                    self.start_refresh(slot, path, now);
                }
                return Step::Done(value);
            }
        }
        if may_start {
            self.start_refresh(slot, path, now);
            if let Some((done, _)) = &slot.inflight {
                return Step::Wait(done.clone());
            }
        }
        let why = slot.last_error.as_ref().map_or_else(
            || format!("vault `{}` read of {path} did not complete", self.name),
            |e| e.to_string(),
        );
        Step::Done(Err(match age {
            Some(_) => format!(
                "{why}; the cached value is older than max_stale_s ({} s)",
                self.max_stale.as_secs()
            ),
            None => why,
        }))
    }

    async fn get(self: &Arc<Self>, path: &str, field: &str) -> Result<SecretString, String> {
        match self.step(path, field, true) {
            Step::Done(result) => result,
            Step::Wait(done) => {
                // The refresh ends within VAULT_TIMEOUT by itself; the bound here only guards
                // against a refresh task that never runs.
                let _ = tokio::time::timeout(VAULT_TIMEOUT + Duration::from_secs(1), done).await;
                match self.step(path, field, false) {
                    Step::Done(result) => result,
                    Step::Wait(_) => Err(format!("vault `{}` read of {path} is stuck", self.name)),
                }
            }
        }
    }
}

/// Every configured credential.
pub struct Secrets {
    credentials: HashMap<String, Arc<Credential>>,
    metrics: Arc<Metrics>,
}

impl Secrets {
    /// Builds the credentials from config; vault refreshes are spawned on `runtime`.
    pub fn new(
        credentials: &[CredentialConfig],
        vaults: &[VaultConfig],
        client: HttpClient,
        metrics: Arc<Metrics>,
        runtime: &tokio::runtime::Handle,
    ) -> Secrets {
        for source in ["env", "file", "vault"] {
            metrics.secret_fetch_errors.with_label_values(&[source]);
        }
        let vaults: HashMap<String, Arc<Vault>> = vaults
            .iter()
            .map(|v| {
                metrics.vault_up.with_label_values(&[&v.name]).set(1);
                metrics
                    .vault_read_duration
                    .with_label_values(&[&v.name, "ok"]);
                let vault = Vault::new(v, client.clone(), metrics.clone(), runtime.clone());
                (v.name.clone(), Arc::new(vault))
            })
            .collect();
        let credentials = credentials
            .iter()
            .filter_map(|c| {
                let source = match &c.source {
                    SecretSource::Env { env } => Source::Env(env.clone()),
                    SecretSource::File { file } => Source::File(FileSecret {
                        path: file.clone(),
                        cache: Mutex::new(None),
                    }),
                    SecretSource::Vault { vault } => Source::Vault {
                        // Validation guarantees the backend exists.
                        vault: vaults.get(&vault.backend)?.clone(),
                        path: vault.path.clone(),
                        field: vault.field.clone(),
                    },
                };
                Some((
                    c.name.clone(),
                    Arc::new(Credential {
                        name: c.name.clone(),
                        inject: c.inject.clone(),
                        source,
                    }),
                ))
            })
            .collect();
        Secrets {
            credentials,
            metrics,
        }
    }

    /// The credential named `name`.
    pub fn credential(&self, name: &str) -> Option<Arc<Credential>> {
        self.credentials.get(name).cloned()
    }

    /// The current value of `credential`.
    pub async fn value(&self, credential: &Credential) -> Result<SecretString, SecretError> {
        let result = match &credential.source {
            Source::Env(var) => std::env::var(var)
                .map(SecretString::from)
                .map_err(|_| format!("environment variable {var} is not set")),
            Source::File(f) => f.get(),
            Source::Vault { vault, path, field } => vault.get(path, field).await,
        };
        result.map_err(|reason| {
            // Vault errors are counted per failed read, not per request that could not be
            // served.
            if !matches!(credential.source, Source::Vault { .. }) {
                self.metrics
                    .secret_fetch_errors
                    .with_label_values(&[credential.source.label()])
                    .inc();
            }
            SecretError {
                credential: credential.name.clone(),
                reason,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let cap = Duration::from_secs(8);
        for _ in 0..50 {
            let first = backoff(1, cap);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
            let third = backoff(3, cap);
            assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
            let many = backoff(40, cap);
            assert!(many >= Duration::from_secs(4) && many <= cap, "{many:?}");
        }
    }

    #[test]
    fn vault_errors_name_no_secret_and_have_labels() {
        let e = VaultError::Denied {
            vault: "main".into(),
            path: "secret/data/x".into(),
            status: 403,
        };
        assert_eq!(e.label(), "denied");
        let text = e.to_string();
        assert!(text.contains("403") && text.contains("revoked"), "{text}");
        let e = VaultError::Timeout {
            vault: "main".into(),
        };
        assert_eq!(e.to_string(), "vault `main` did not answer within 5 s");
    }
}
