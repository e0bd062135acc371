//! Secrets for credential injection. A credential's value comes from an environment variable,
//! a file (re-read when it changes) or HashiCorp Vault KV v2 (cached with a TTL, refreshed in
//! the background, served stale during an outage up to `max_stale_s`, then failing closed).
//!
//! Values live in `secrecy::SecretString` from the moment they are read; they are exposed only
//! where the outbound header or query is written, and where responses are scrubbed. Errors name
//! the credential and the source, never the value.

use crate::egress::client::{read_body_limited, HttpClient};
use crate::metrics::Metrics;
use bytes::Bytes;
use http_body_util::Full;
use isogate_config::{CredentialConfig, Injection, SecretSource, TokenSource, VaultConfig};
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Why a secret could not be had. Never contains a secret value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("credential `{credential}` is unavailable: {reason}")]
pub struct SecretError {
    /// The credential's name.
    pub credential: String,
    /// What went wrong with its source.
    pub reason: String,
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

struct CachedDoc {
    fields: HashMap<String, SecretString>,
    fetched: Instant,
}

/// A HashiCorp Vault (KV v2, token auth).
pub struct Vault {
    name: String,
    address: String,
    token: TokenSource,
    ttl: Duration,
    max_stale: Duration,
    client: HttpClient,
    cache: Mutex<HashMap<String, CachedDoc>>,
}

fn read_token(source: &TokenSource) -> Result<SecretString, String> {
    match source {
        TokenSource::Env { env } => std::env::var(env)
            .map(SecretString::from)
            .map_err(|_| format!("vault token variable {env} is not set")),
        TokenSource::File { file } => std::fs::read_to_string(file)
            .map(|t| SecretString::from(t.trim().to_string()))
            .map_err(|e| format!("cannot read vault token file {}: {e}", file.display())),
    }
}

impl Vault {
    fn new(config: &VaultConfig, client: HttpClient) -> Vault {
        Vault {
            name: config.name.clone(),
            address: config.address.trim_end_matches('/').to_string(),
            token: config.token.clone(),
            ttl: Duration::from_secs(config.cache_ttl_s),
            max_stale: Duration::from_secs(config.max_stale_s),
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedDoc>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `path` (e.g. `kv/data/agents/github`) from the KV v2 engine.
    async fn fetch(&self, path: &str) -> Result<HashMap<String, SecretString>, String> {
        let token = read_token(&self.token)?;
        let uri = format!("{}/v1/{}", self.address, path.trim_start_matches('/'));
        let request = http::Request::get(&uri)
            .header("x-vault-token", token.expose_secret())
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("bad vault request: {e}"))?;
        let response = tokio::time::timeout(Duration::from_secs(5), self.client.request(request))
            .await
            .map_err(|_| format!("vault `{}` did not answer within 5 s", self.name))?
            .map_err(|e| format!("vault `{}` unreachable: {e}", self.name))?;
        let status = response.status();
        let body = read_body_limited(response.into_body(), 1 << 20)
            .await
            .map_err(|e| format!("vault `{}`: {e}", self.name))?;
        if !status.is_success() {
            return Err(format!(
                "vault `{}` answered {status} for {path}",
                self.name
            ));
        }
        let doc: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| format!("vault `{}` answered invalid JSON for {path}", self.name))?;
        let data = doc
            .get("data")
            .and_then(|d| d.get("data"))
            .and_then(|d| d.as_object())
            .ok_or_else(|| format!("vault `{}`: {path} has no KV v2 `data.data`", self.name))?;
        Ok(data
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), SecretString::from(v.as_str()?.to_string()))))
            .collect())
    }

    async fn get(
        &self,
        path: &str,
        field: &str,
        metrics: &Metrics,
    ) -> Result<SecretString, String> {
        let fresh = {
            let cache = self.cached();
            cache.get(path).and_then(|doc| {
                (doc.fetched.elapsed() < self.ttl).then(|| doc.fields.get(field).cloned())
            })
        };
        if let Some(value) = fresh {
            return value.ok_or_else(|| format!("field `{field}` not found at {path}"));
        }
        match self.fetch(path).await {
            Ok(fields) => {
                let value = fields.get(field).cloned();
                self.cached().insert(
                    path.to_string(),
                    CachedDoc {
                        fields,
                        fetched: Instant::now(),
                    },
                );
                value.ok_or_else(|| format!("field `{field}` not found at {path}"))
            }
            Err(e) => {
                metrics
                    .secret_fetch_errors
                    .with_label_values(&["vault"])
                    .inc();
                let cache = self.cached();
                match cache.get(path) {
                    Some(doc) if doc.fetched.elapsed() < self.max_stale => {
                        tracing::warn!(vault = %self.name, path, error = %e, "vault read failed; serving the cached value");
                        doc.fields
                            .get(field)
                            .cloned()
                            .ok_or_else(|| format!("field `{field}` not found at {path}"))
                    }
                    Some(_) => Err(format!(
                        "{e}; the cached value is older than max_stale_s ({} s)",
                        self.max_stale.as_secs()
                    )),
                    None => Err(e),
                }
            }
        }
    }

    /// Refreshes cached paths older than half their TTL, forever (runs on the egress runtime).
    async fn refresh_loop(self: Arc<Self>, metrics: Arc<Metrics>) {
        let period = (self.ttl / 2).max(Duration::from_millis(500));
        loop {
            tokio::time::sleep(period).await;
            let due: Vec<String> = self
                .cached()
                .iter()
                .filter(|(_, d)| d.fetched.elapsed() >= self.ttl / 2)
                .map(|(p, _)| p.clone())
                .collect();
            for path in due {
                match self.fetch(&path).await {
                    Ok(fields) => {
                        self.cached().insert(
                            path,
                            CachedDoc {
                                fields,
                                fetched: Instant::now(),
                            },
                        );
                    }
                    Err(e) => {
                        metrics
                            .secret_fetch_errors
                            .with_label_values(&["vault"])
                            .inc();
                        tracing::warn!(vault = %self.name, path, error = %e, "background vault refresh failed");
                    }
                }
            }
        }
    }
}

/// Every configured credential.
pub struct Secrets {
    credentials: HashMap<String, Arc<Credential>>,
    metrics: Arc<Metrics>,
    /// Background vault refreshers; stopped when this set of credentials is replaced.
    refreshers: Vec<tokio::task::AbortHandle>,
}

impl Drop for Secrets {
    fn drop(&mut self) {
        for r in &self.refreshers {
            r.abort();
        }
    }
}

impl Secrets {
    /// Builds the credentials from config; vault refreshers are spawned on `runtime`.
    pub fn new(
        credentials: &[CredentialConfig],
        vaults: &[VaultConfig],
        client: HttpClient,
        metrics: Arc<Metrics>,
        runtime: &tokio::runtime::Handle,
    ) -> Secrets {
        let mut refreshers = Vec::new();
        let vaults: HashMap<String, Arc<Vault>> = vaults
            .iter()
            .map(|v| {
                let vault = Arc::new(Vault::new(v, client.clone()));
                refreshers.push(
                    runtime
                        .spawn(vault.clone().refresh_loop(metrics.clone()))
                        .abort_handle(),
                );
                (v.name.clone(), vault)
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
            refreshers,
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
            Source::Vault { vault, path, field } => vault.get(path, field, &self.metrics).await,
        };
        result.map_err(|reason| {
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
