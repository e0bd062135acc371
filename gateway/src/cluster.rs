//! State shared by replicas, in Redis (or Valkey): the stored Workers of every replica.
//!
//! **Keys** (`P` is `shared.redis.key_prefix`, `T` the tenant): `P{T}:workers`, a hash of Worker
//! id → code digest (hex); `P{T}:code:<digest>`, the WorkerCode (JSON), content-addressed. The
//! `{T}` hash tag keeps a tenant's keys together. **Writes are Lua scripts**, so each is atomic
//! on the server: a PUT sets the id only if it is absent (created), or compares digests
//! (identical → unchanged, different → conflict), so concurrent PUTs of one id on different
//! replicas yield exactly one 201; a DELETE removes the id, drops the code no other id of the
//! tenant uses, and publishes the deletion on `P:events` in the same step.
//!
//! **Each replica** keeps the code it has read in memory (a `get()` needs no round trip once a
//! Worker was seen) and subscribes to `P:events`: a deletion on any replica evicts the code and
//! the warm copies here. After the subscription is lost (Redis restarted, a network cut) the
//! memory is dropped, since deletions may have been missed, and re-read on demand.
//!
//! **When Redis is unreachable**, Workers held in memory keep serving; anything that needs
//! Redis (a PUT, a DELETE, a listing, a Worker not seen yet) fails fast with
//! [`SharedError::Unavailable`] (503 with `Retry-After`), and `/readyz` says `degraded` without
//! failing. Connections are re-made with backoff by redis-rs's `ConnectionManager` and by the
//! subscriber's loop; each up/down change is one log line and `isogate_shared_store_up`.
//!
//! **Streaming executions** (client-side tools) run on one replica, but the client's replies may
//! reach any: `P:exec:<id>` says `tenant<TAB>replica` while the execution runs (`tenant<TAB>`
//! once it has ended), and a replica that gets a reply for an execution it does not run relays
//! it on the owner's channel `P:replies:<replica>` and waits (on a list, `BLPOP`) for the status
//! the owner answered ([`RelayedReply`]).

use crate::metrics::Metrics;
use crate::store::PutOutcome;
use isogate_config::RedisConfig;
use isogate_pool::{CodeDigest, SealedCode, WorkerCode};
use redis::aio::ConnectionManager;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Why a shared-store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedError {
    /// Redis cannot be reached (or did not answer in `command_timeout_ms`).
    #[error("the shared store (Redis) is unavailable: {0}")]
    Unavailable(String),
    /// Stored data does not parse or does not match its digest.
    #[error("the shared store holds invalid code for {tenant}/{id}: {message}")]
    Corrupt {
        /// Tenant.
        tenant: String,
        /// Worker id.
        id: String,
        /// What is wrong.
        message: String,
    },
}

/// The create-if-absent PUT: 1 created, 0 identical, -1 different code under the id.
const PUT: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then
  redis.call('SET', KEYS[2], ARGV[3])
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
if current == ARGV[2] then return 0 end
return -1
";

/// The DELETE: removes the id, the code when no other id of the tenant uses it, and publishes
/// the deletion; 1 if the id existed.
const DELETE: &str = r"
local digest = redis.call('HGET', KEYS[1], ARGV[1])
if not digest then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
for _, other in ipairs(redis.call('HVALS', KEYS[1])) do
  if other == digest then
    redis.call('PUBLISH', ARGV[3], ARGV[4])
    return 1
  end
end
redis.call('DEL', ARGV[2] .. digest)
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

/// GCRA over every key at once (the rule's and the tenant's): a request passes only if every
/// limit has room, and then takes a cell from each. Per key: ARGV = emission interval and
/// burst tolerance in microseconds. Time is the server's (`TIME`), so replicas' clocks do not
/// matter. Returns 0, or the microseconds to wait. The same semantics as redis-cell's
/// `CL.THROTTLE key burst-1 rate 1 1` and governor's GCRA.
const THROTTLE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local over = tat - now - tolerance
  if over > 0 and over > wait then wait = over end
  tats[i] = tat + interval
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, tats[i], 'PX', math.ceil((tats[i] - now) / 1000) + 1)
end
return 0
";

/// The shared Redis and this replica's view of it.
pub struct Shared {
    manager: ConnectionManager,
    client: redis::Client,
    prefix: String,
    command_timeout: Duration,
    up: AtomicBool,
    metrics: Arc<Metrics>,
    /// Code read from Redis, by (tenant, id).
    cache: RwLock<HashMap<(String, String), SealedCode>>,
    put: redis::Script,
    delete: redis::Script,
    throttle: redis::Script,
}

impl Shared {
    /// Builds the client for `config` (the password already read); connects lazily, so that
    /// a replica starts while Redis is down.
    pub fn open(
        config: &RedisConfig,
        password: Option<SecretString>,
        metrics: Arc<Metrics>,
    ) -> Result<Shared, String> {
        use redis::IntoConnectionInfo;
        let mut info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("shared.redis.url: {e}"))?;
        if let Some(password) = password {
            let settings = info
                .redis_settings()
                .clone()
                .set_password(password.expose_secret());
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(|e| format!("shared.redis.url: {e}"))?;
        let command_timeout = Duration::from_millis(config.command_timeout_ms);
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
            .set_response_timeout(Some(command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| format!("shared.redis: {e}"))?;
        metrics.shared_store_up.set(0);
        Ok(Shared {
            manager,
            client,
            prefix: config.key_prefix.clone(),
            command_timeout,
            up: AtomicBool::new(false),
            metrics,
            cache: RwLock::new(HashMap::new()),
            put: redis::Script::new(PUT),
            delete: redis::Script::new(DELETE),
            throttle: redis::Script::new(THROTTLE),
        })
    }

    fn workers_key(&self, tenant: &str) -> String {
        format!("{}{{{tenant}}}:workers", self.prefix)
    }

    fn code_prefix(&self, tenant: &str) -> String {
        format!("{}{{{tenant}}}:code:", self.prefix)
    }

    /// The channel deletions are published on.
    pub fn events_channel(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// Whether the last exchange with Redis worked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records the outcome of an exchange: one log line per change of state.
    fn mark(&self, ok: bool, why: &str) {
        if self.up.swap(ok, Ordering::Relaxed) != ok {
            self.metrics.shared_store_up.set(i64::from(ok));
            if ok {
                tracing::info!("the shared store (Redis) is reachable");
            } else {
                tracing::error!(error = why,
                    "the shared store (Redis) is unreachable: cached Workers keep serving; PUT, DELETE and Workers not seen yet get 503");
            }
        }
    }

    /// Runs one exchange under the command timeout, tracking the state.
    async fn run<T>(
        &self,
        exchange: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SharedError> {
        match tokio::time::timeout(self.command_timeout, exchange).await {
            Ok(Ok(value)) => {
                self.mark(true, "");
                Ok(value)
            }
            Ok(Err(e)) => {
                let why = e.to_string();
                self.mark(false, &why);
                Err(SharedError::Unavailable(why))
            }
            Err(_) => {
                let why = format!("no answer within {} ms", self.command_timeout.as_millis());
                self.mark(false, &why);
                Err(SharedError::Unavailable(why))
            }
        }
    }

    /// The stored code of `tenant`/`id`: from memory, else from Redis (then kept).
    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<SealedCode>, SharedError> {
        let key = (tenant.to_string(), id.to_string());
        if let Some(code) = self.read_cache().get(&key) {
            return Ok(Some(code.clone()));
        }
        let mut con = self.manager.clone();
        let workers = self.workers_key(tenant);
        let digest: Option<String> = self
            .run(
                redis::cmd("HGET")
                    .arg(&workers)
                    .arg(id)
                    .query_async(&mut con),
            )
            .await?;
        let Some(digest) = digest else {
            return Ok(None);
        };
        let code_key = format!("{}{digest}", self.code_prefix(tenant));
        let json: Option<String> = self
            .run(redis::cmd("GET").arg(&code_key).query_async(&mut con))
            .await?;
        let corrupt = |message: String| SharedError::Corrupt {
            tenant: tenant.into(),
            id: id.into(),
            message,
        };
        let Some(json) = json else {
            return Err(corrupt(format!("no code under digest {digest}")));
        };
        let code: WorkerCode = serde_json::from_str(&json).map_err(|e| corrupt(e.to_string()))?;
        let sealed = SealedCode::new(code);
        if hex::encode(sealed.digest().0) != digest {
            return Err(corrupt("the code does not match its digest".into()));
        }
        self.write_cache().insert(key, sealed.clone());
        Ok(Some(sealed))
    }

    /// Stores `code` under `tenant`/`id` if the id is free (atomically, across replicas).
    pub async fn put(
        &self,
        tenant: &str,
        id: &str,
        code: WorkerCode,
    ) -> Result<PutOutcome, SharedError> {
        let sealed = SealedCode::new(code);
        let digest: CodeDigest = sealed.digest();
        let hex = hex::encode(digest.0);
        let json =
            serde_json::to_string(sealed.code().as_ref()).map_err(|e| SharedError::Corrupt {
                tenant: tenant.into(),
                id: id.into(),
                message: e.to_string(),
            })?;
        let mut con = self.manager.clone();
        let workers = self.workers_key(tenant);
        let code_key = format!("{}{hex}", self.code_prefix(tenant));
        let outcome: i64 = self
            .run(
                self.put
                    .key(&workers)
                    .key(&code_key)
                    .arg(id)
                    .arg(&hex)
                    .arg(&json)
                    .invoke_async(&mut con),
            )
            .await?;
        Ok(match outcome {
            1 => {
                self.write_cache()
                    .insert((tenant.into(), id.into()), sealed);
                PutOutcome::Created
            }
            0 => PutOutcome::Unchanged,
            _ => PutOutcome::Conflict,
        })
    }

    /// Forgets `tenant`/`id` everywhere: Redis, this replica's memory, and (through the event
    /// it publishes) every other replica's. Whether it existed.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<bool, SharedError> {
        let mut con = self.manager.clone();
        let existed: i64 = self
            .run(
                self.delete
                    .key(self.workers_key(tenant))
                    .arg(id)
                    .arg(self.code_prefix(tenant))
                    .arg(self.events_channel())
                    .arg(event(tenant, id))
                    .invoke_async(&mut con),
            )
            .await?;
        self.forget(tenant, id);
        Ok(existed == 1)
    }

    /// Takes one cell from each of `limits` (named within the tenant: `tenant`, `rule:NAME`)
    /// for every replica at once, in one round trip (EVALSHA): `Ok(Err(wait))` when one of them
    /// has no room (nothing is taken then).
    pub async fn throttle(
        &self,
        tenant: &str,
        limits: &[(String, isogate_policy::RateLimit)],
    ) -> Result<Result<(), Duration>, SharedError> {
        let mut invocation = self.throttle.prepare_invoke();
        for (name, limit) in limits {
            let per_second = u64::from(limit.per_second.max(1));
            let interval = 1_000_000 / per_second;
            let tolerance = interval * u64::from(limit.burst.max(1) - 1);
            invocation
                .key(format!("{}{{{tenant}}}:rl:{name}", self.prefix))
                .arg(interval)
                .arg(tolerance);
        }
        let mut con = self.manager.clone();
        let wait: i64 = self.run(invocation.invoke_async(&mut con)).await?;
        Ok(if wait > 0 {
            Err(Duration::from_micros(wait as u64))
        } else {
            Ok(())
        })
    }

    /// The ids stored for `tenant`, sorted.
    pub async fn ids(&self, tenant: &str) -> Result<Vec<String>, SharedError> {
        let mut con = self.manager.clone();
        let mut ids: Vec<String> = self
            .run(
                redis::cmd("HKEYS")
                    .arg(self.workers_key(tenant))
                    .query_async(&mut con),
            )
            .await?;
        ids.sort();
        Ok(ids)
    }

    /// Drops `tenant`/`id` from this replica's memory.
    pub fn forget(&self, tenant: &str, id: &str) {
        self.write_cache()
            .remove(&(tenant.to_string(), id.to_string()));
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, HashMap<(String, String), SealedCode>> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_cache(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<(String, String), SealedCode>> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the deletions published by every replica, for as long as the process runs:
    /// `evict` is called with the tenant and id of each (this replica's warm copies go). The
    /// subscription is re-made with backoff when lost; then the memory is dropped, since
    /// deletions may have been missed meanwhile.
    pub async fn follow<F, Fut>(self: Arc<Self>, evict: F)
    where
        F: Fn(String, String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        use futures::StreamExt;
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(self.events_channel()).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(Duration::from_secs(5), subscribed).await {
                Ok(Ok(pubsub)) => {
                    backoff = Duration::from_millis(100);
                    if !first {
                        // Deletions published while unsubscribed were missed.
                        let dropped = std::mem::take(&mut *self.write_cache()).len();
                        tracing::info!(dropped, "shared store: subscribed again; the Workers held in memory are re-read on their next request");
                    }
                    first = false;
                    self.mark(true, "");
                    let mut messages = pubsub.into_on_message();
                    while let Some(msg) = messages.next().await {
                        let Ok(payload) = msg.get_payload::<String>() else {
                            continue;
                        };
                        if let Some((tenant, id)) = parse_event(&payload) {
                            self.forget(tenant, id);
                            evict(tenant.to_string(), id.to_string()).await;
                        }
                    }
                    self.mark(false, "the subscription ended");
                }
                Ok(Err(e)) => self.mark(false, &e.to_string()),
                Err(_) => self.mark(false, "no answer to SUBSCRIBE within 5 s"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// A reply to a client-side tool call that reached another replica than the one running the
/// execution: relayed on the owner's channel `P:replies:<replica>`; the owner pushes the
/// status it answered (200, 404, 410) on `ack`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayedReply {
    /// The execution's id.
    pub execution: String,
    /// The call's id.
    pub call: String,
    /// The tenant whose key sent the reply.
    pub tenant: String,
    /// The reply's body, as the client sent it (checked already).
    pub body: String,
    /// The list the owner pushes its status on.
    pub ack: String,
}

/// Where a streaming execution of a tenant runs, as Redis knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutionAt {
    /// No such execution of this tenant (never, another tenant's, or forgotten).
    Unknown,
    /// It has ended.
    Ended,
    /// It runs on `replica`.
    Running(String),
}

/// How long the replica that relayed a reply waits for the owner's status.
const RELAY_ACK: Duration = Duration::from_secs(2);

impl Shared {
    fn execution_key(&self, id: &str) -> String {
        format!("{}exec:{id}", self.prefix)
    }

    fn replies_channel(&self, replica: &str) -> String {
        format!("{}replies:{replica}", self.prefix)
    }

    /// Records that execution `id` of `tenant` runs on `replica`, for `ttl` at most.
    pub async fn execution_started(
        &self,
        id: &str,
        tenant: &str,
        replica: &str,
        ttl: Duration,
    ) -> Result<(), SharedError> {
        self.set_execution(id, &format!("{tenant}\t{replica}"), ttl)
            .await
    }

    /// Records that execution `id` of `tenant` has ended (replies get 410 for `keep`).
    pub async fn execution_ended(
        &self,
        id: &str,
        tenant: &str,
        keep: Duration,
    ) -> Result<(), SharedError> {
        self.set_execution(id, &format!("{tenant}\t"), keep).await
    }

    async fn set_execution(&self, id: &str, value: &str, ttl: Duration) -> Result<(), SharedError> {
        let mut con = self.manager.clone();
        let mut set = redis::cmd("SET");
        set.arg(self.execution_key(id))
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        self.run(set.query_async::<()>(&mut con)).await
    }

    /// Where execution `id` of `tenant` runs.
    pub async fn execution_at(&self, id: &str, tenant: &str) -> Result<ExecutionAt, SharedError> {
        let mut con = self.manager.clone();
        let mut get = redis::cmd("GET");
        get.arg(self.execution_key(id));
        let value: Option<String> = self.run(get.query_async(&mut con)).await?;
        Ok(match value.as_deref().and_then(|v| v.split_once('\t')) {
            Some((owner, _)) if owner != tenant => ExecutionAt::Unknown,
            Some((_, "")) => ExecutionAt::Ended,
            Some((_, replica)) => ExecutionAt::Running(replica.to_string()),
            None => ExecutionAt::Unknown,
        })
    }

    /// Relays `reply` to `replica` and waits for the status it answered. A replica that no
    /// longer listens (gone, and its executions with it) is 410.
    pub async fn relay_reply(
        &self,
        replica: &str,
        mut reply: RelayedReply,
    ) -> Result<u16, SharedError> {
        let mut nonce = [0u8; 16];
        let _ = getrandom::getrandom(&mut nonce);
        reply.ack = format!("{}ack:{}", self.prefix, hex::encode(nonce));
        let payload = serde_json::to_string(&reply).unwrap_or_default();
        // A connection of its own: BLPOP would hold up the shared one's other commands.
        let mut own = self
            .run(self.client.get_multiplexed_async_connection())
            .await?;
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.replies_channel(replica)).arg(payload);
        let receivers: u64 = self.run(publish.query_async(&mut own)).await?;
        if receivers == 0 {
            return Ok(410);
        }
        let mut blpop = redis::cmd("BLPOP");
        blpop.arg(&reply.ack).arg(RELAY_ACK.as_secs_f64());
        let wait = tokio::time::timeout(
            RELAY_ACK + self.command_timeout,
            blpop.query_async::<Option<(String, u16)>>(&mut own),
        )
        .await;
        match wait {
            Ok(Ok(Some((_, status)))) => Ok(status),
            Ok(Ok(None)) | Err(_) => Err(SharedError::Unavailable(format!(
                "replica {replica} did not acknowledge the reply within {} s",
                RELAY_ACK.as_secs()
            ))),
            Ok(Err(e)) => Err(SharedError::Unavailable(e.to_string())),
        }
    }

    /// Takes the replies other replicas relay to this one (`replica`) for as long as the
    /// process runs: `deliver` answers each with a status, pushed back on its `ack` list. The
    /// subscription is re-made with backoff when lost.
    pub async fn follow_replies<F>(self: Arc<Self>, replica: String, deliver: F)
    where
        F: Fn(RelayedReply) -> u16,
    {
        use futures::StreamExt;
        let channel = self.replies_channel(&replica);
        let mut backoff = Duration::from_millis(100);
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            if let Ok(Ok(pubsub)) = tokio::time::timeout(Duration::from_secs(5), subscribed).await {
                backoff = Duration::from_millis(100);
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    let Ok(reply) = serde_json::from_str::<RelayedReply>(&payload) else {
                        continue;
                    };
                    if !reply.ack.starts_with(&format!("{}ack:", self.prefix)) {
                        continue;
                    }
                    let ack = reply.ack.clone();
                    let status = deliver(reply);
                    let mut con = self.manager.clone();
                    let mut push = redis::pipe();
                    push.cmd("LPUSH")
                        .arg(&ack)
                        .arg(status)
                        .ignore()
                        .cmd("PEXPIRE")
                        .arg(&ack)
                        .arg(10_000)
                        .ignore();
                    let _ = self.run(push.query_async::<()>(&mut con)).await;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// How often a replica says it is alive, and how long that lasts.
const HEARTBEAT: Duration = Duration::from_secs(2);
const HEARTBEAT_TTL: Duration = Duration::from_secs(6);

impl Shared {
    /// Says every [`HEARTBEAT`] that this replica (`replica`: unique per process) is alive, and
    /// counts the replicas that did within [`HEARTBEAT_TTL`] (`isogate_replicas_seen`), so that
    /// operators can reason about what stays per replica (N× the concurrency).
    pub async fn heartbeat(self: Arc<Self>, replica: String) {
        let key = format!("{}replicas:{replica}", self.prefix);
        let pattern = format!("{}replicas:*", self.prefix);
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut con = self.manager.clone();
            let mut set = redis::cmd("SET");
            set.arg(&key)
                .arg(1)
                .arg("PX")
                .arg(HEARTBEAT_TTL.as_millis() as u64);
            if self.run(set.query_async::<()>(&mut con)).await.is_err() {
                continue;
            }
            let mut cursor: u64 = 0;
            let mut seen = 0usize;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000);
                match self
                    .run(scan.query_async::<(u64, Vec<String>)>(&mut con))
                    .await
                {
                    Ok((next, keys)) => {
                        seen += keys.len();
                        cursor = next;
                        if cursor == 0 {
                            self.metrics
                                .replicas_seen
                                .set(i64::try_from(seen).unwrap_or(i64::MAX));
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    }
}

/// The payload of a deletion event: `del`, tenant and id, tab-separated (tenant names and
/// Worker ids have no tabs).
fn event(tenant: &str, id: &str) -> String {
    format!("del\t{tenant}\t{id}")
}

fn parse_event(payload: &str) -> Option<(&str, &str)> {
    let mut parts = payload.split('\t');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("del"), Some(tenant), Some(id), None) => Some((tenant, id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_junk_is_ignored() {
        assert_eq!(parse_event(&event("acme", "w@v1")), Some(("acme", "w@v1")));
        for junk in ["", "del", "del\ta", "put\ta\tb", "del\ta\tb\tc"] {
            assert_eq!(parse_event(junk), None, "{junk:?}");
        }
    }
}
