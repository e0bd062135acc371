//! Tenant APIs: the MCP servers and OpenAPI documents of `tenants[].apis`, called from Worker
//! code as `await env.<api>.<tool>(args)`.
//!
//! A call arrives as [`ApiCall`] (from an isolate thread, or across the process wall) with the
//! invoker the gateway dispatched. [`Apis::call`] finds the tenant's API in the current
//! configuration, its tool in the API's catalogue (fetched on first use and again every
//! `refresh_s`, or when a reload changes the API), checks the arguments against the tool's
//! JSON Schema (nothing is sent when they do not match), then sends one upstream request
//! through the egress pipeline as an outbound request of the invocation: the tenant's egress
//! rules, the rule's credential, rate limits, the subrequest budget, the SSRF guard, scrubbing
//! and the audit line apply as they do to `fetch()`. Catalogue fetches go through the same
//! pipeline for the tenant (not charged to any invocation).

pub mod dts;
pub mod mcp;
pub mod openapi;
pub mod transport;

use crate::state::Snapshot;
use arc_swap::{ArcSwap, ArcSwapOption};
use futures::future::BoxFuture;
use isogate_policy::{ApiSource, SpecSource, TenantApi};
use isogate_pool::{
    ApiAnswer, ApiCall, ApiErrorCode, ApiFailure, EgressPort, EgressRequest, FetchReply, Invoker,
};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use transport::{exchange, Refused};

/// Most tools one API may have.
pub const MAX_TOOLS: usize = 10_000;
/// Largest response body of an OpenAPI call read.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Most validation errors named in one `INVALID_ARGUMENTS` message.
const MAX_NAMED_ERRORS: usize = 5;
/// A catalogue that failed to load is tried again after this long at the soonest.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// One tool of an API.
pub struct Tool {
    /// The upstream's name.
    pub name: String,
    /// The name in JS (`env.<api>.<js_name>`).
    pub js_name: String,
    /// Its description.
    pub description: Option<String>,
    /// Its argument object's schema.
    pub input_schema: Value,
    /// Its result's schema, when given.
    pub output_schema: Option<Value>,
    /// The compiled input schema, or why it does not compile.
    validator: Result<Arc<jsonschema::Validator>, String>,
    /// For OpenAPI: the operation.
    operation: Option<openapi::Operation>,
}

/// An API's tools, as last fetched.
pub struct Catalogue {
    /// In upstream order.
    pub tools: Vec<Tool>,
    by_js: HashMap<String, usize>,
    fetched: Instant,
}

impl Catalogue {
    fn new(tools: Vec<Tool>) -> Catalogue {
        let by_js = tools
            .iter()
            .enumerate()
            .map(|(i, t)| (t.js_name.clone(), i))
            .collect();
        Catalogue {
            tools,
            by_js,
            fetched: Instant::now(),
        }
    }

    /// The tool called `js_name` in JS.
    pub fn tool(&self, js_name: &str) -> Option<&Tool> {
        self.by_js.get(js_name).map(|&i| &self.tools[i])
    }
}

/// One API of one tenant: its configuration, catalogue and MCP session.
struct Entry {
    config: TenantApi,
    catalogue: ArcSwapOption<Catalogue>,
    /// One load at a time; holds the time of the last failed load.
    loading: tokio::sync::Mutex<Option<(Instant, String)>>,
    session: Mutex<Option<mcp::Session>>,
}

/// The entries by (tenant, API name).
type Entries = HashMap<(String, String), Arc<Entry>>;

/// The tenant APIs of the gateway.
pub struct Apis {
    me: std::sync::Weak<Apis>,
    port: Arc<dyn EgressPort>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// By (tenant, API), for the configuration snapshot `.0` (the address of the snapshot
    /// they were made for: a reload starts over, so catalogues are fetched again).
    entries: Mutex<(usize, Entries)>,
    runtime: tokio::runtime::Handle,
    metrics: Arc<crate::metrics::Metrics>,
    receipts: Arc<crate::receipts::Receipts>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn fail(code: ApiErrorCode, message: impl Into<String>) -> ApiAnswer {
    ApiAnswer::Failed {
        failure: ApiFailure::new(code, message),
        charged: false,
    }
}

impl Apis {
    /// The APIs of the tenants in `snapshot`, called through `port` (the egress pipeline); I/O
    /// runs on `runtime`.
    pub fn new(
        port: Arc<dyn EgressPort>,
        snapshot: Arc<ArcSwap<Snapshot>>,
        runtime: tokio::runtime::Handle,
        metrics: Arc<crate::metrics::Metrics>,
        receipts: Arc<crate::receipts::Receipts>,
    ) -> Arc<Apis> {
        Arc::new_cyclic(|me| Apis {
            me: me.clone(),
            port,
            snapshot,
            entries: Mutex::new((0, HashMap::new())),
            runtime,
            metrics,
            receipts,
        })
    }

    /// The entry of `tenant`'s API `api` as configured now (a changed configuration starts a
    /// new entry: catalogue and session are fetched again).
    fn entry(&self, snapshot: &Arc<Snapshot>, tenant: &str, api: &TenantApi) -> Arc<Entry> {
        let mut guard = lock(&self.entries);
        let (seen, entries) = &mut *guard;
        let current = Arc::as_ptr(snapshot) as usize;
        if *seen != current {
            *seen = current;
            entries.clear();
        }
        let key = (tenant.to_string(), api.name.clone());
        match entries.get(&key) {
            Some(e) if e.config == *api => e.clone(),
            _ => {
                let e = Arc::new(Entry {
                    config: api.clone(),
                    catalogue: ArcSwapOption::empty(),
                    loading: tokio::sync::Mutex::new(None),
                    session: Mutex::new(None),
                });
                entries.insert(key, e.clone());
                e
            }
        }
    }

    /// The invoker of requests the gateway makes for a tenant itself (catalogue fetches).
    fn gateway_invoker(tenant: &str) -> Invoker {
        Invoker {
            tenant: tenant.to_string(),
            ..Invoker::default()
        }
    }

    /// The API's catalogue: loaded now if there is none; refreshed in the background when it
    /// is older than the API's `refresh`.
    async fn catalogue(&self, tenant: &str, entry: &Arc<Entry>) -> Result<Arc<Catalogue>, String> {
        if let Some(c) = entry.catalogue.load_full() {
            if c.fetched.elapsed() >= entry.config.refresh {
                if let (Ok(guard), Some(this)) = (entry.loading.try_lock(), self.me.upgrade()) {
                    drop(guard);
                    let (tenant, entry) = (tenant.to_string(), entry.clone());
                    self.runtime.spawn(async move {
                        let _ = this.load(&tenant, &entry).await;
                    });
                }
            }
            return Ok(c);
        }
        self.load(tenant, entry).await
    }

    /// Loads the catalogue (one load at a time per entry; a recent failure is answered again
    /// without asking the upstream).
    async fn load(&self, tenant: &str, entry: &Arc<Entry>) -> Result<Arc<Catalogue>, String> {
        let mut last_failure = entry.loading.lock().await;
        if let Some(c) = entry.catalogue.load_full() {
            if c.fetched.elapsed() < entry.config.refresh {
                return Ok(c);
            }
        }
        if let Some((at, message)) = &*last_failure {
            if at.elapsed() < RETRY_AFTER_FAILURE && entry.catalogue.load().is_none() {
                return Err(message.clone());
            }
        }
        match self.fetch_catalogue(tenant, entry).await {
            Ok(c) => {
                let c = Arc::new(c);
                entry.catalogue.store(Some(c.clone()));
                *last_failure = None;
                tracing::info!(tenant, api = %entry.config.name, tools = c.tools.len(), "api: catalogue loaded");
                Ok(c)
            }
            Err(message) => {
                tracing::warn!(tenant, api = %entry.config.name, error = %message, "api: catalogue not loaded");
                *last_failure = Some((Instant::now(), message.clone()));
                // A stale catalogue keeps serving.
                entry.catalogue.load_full().ok_or(message)
            }
        }
    }

    fn sender(&self, invoker: Invoker, left: u32, timeout: Duration) -> mcp::Sender<'_> {
        mcp::Sender {
            port: &*self.port,
            invoker,
            left,
            timeout,
        }
    }

    async fn fetch_catalogue(&self, tenant: &str, entry: &Entry) -> Result<Catalogue, String> {
        let describe = |r: Refused| match r {
            Refused::Failed { failure, .. } => failure.message,
            Refused::Budget => "subrequest budget".to_string(),
        };
        match &entry.config.source {
            ApiSource::Mcp { url } => {
                let sender = self.sender(Self::gateway_invoker(tenant), 1, entry.config.timeout);
                let session = mcp::initialize(&sender, url).await.map_err(describe)?;
                let listed = mcp::list_tools(&sender, url, &session, MAX_TOOLS)
                    .await
                    .map_err(describe)?;
                *lock(&entry.session) = Some(session);
                let names =
                    isogate_policy::apis::unique_js_names(listed.iter().map(|t| t.name.as_str()));
                Ok(Catalogue::new(
                    listed
                        .into_iter()
                        .zip(names)
                        .map(|(t, js_name)| Tool {
                            validator: compile(&t.input_schema),
                            name: t.name,
                            js_name,
                            description: t.description,
                            input_schema: t.input_schema,
                            output_schema: t.output_schema,
                            operation: None,
                        })
                        .collect(),
                ))
            }
            ApiSource::OpenApi { spec, .. } => {
                let bytes = match spec {
                    SpecSource::File(path) => read_spec_file(path).await?,
                    SpecSource::Url(url) => {
                        let request = EgressRequest {
                            method: "GET".into(),
                            url: url.clone(),
                            headers: vec![(
                                "accept".into(),
                                "application/json, application/yaml, text/yaml, */*".into(),
                            )],
                            body: Vec::new(),
                            redirect: "follow".into(),
                            budget: 0,
                        };
                        let mut up = exchange(
                            &*self.port,
                            Self::gateway_invoker(tenant),
                            request,
                            5,
                            entry.config.timeout,
                        )
                        .await
                        .map_err(describe)?;
                        if !(200..300).contains(&up.head.status) {
                            return Err(format!(
                                "the OpenAPI document {url} answered HTTP {}",
                                up.head.status
                            ));
                        }
                        up.read_all(openapi::MAX_SPEC_BYTES).await?
                    }
                };
                let ops = openapi::parse(&bytes, MAX_TOOLS)?;
                let names =
                    isogate_policy::apis::unique_js_names(ops.iter().map(|o| o.name.as_str()));
                Ok(Catalogue::new(
                    ops.into_iter()
                        .zip(names)
                        .map(|(op, js_name)| Tool {
                            validator: compile(&op.input_schema),
                            name: op.name.clone(),
                            js_name,
                            description: op.description.clone(),
                            input_schema: op.input_schema.clone(),
                            output_schema: op.output_schema.clone(),
                            operation: Some(op),
                        })
                        .collect(),
                ))
            }
        }
    }

    /// The catalogue of `tenant`'s API `api`, loading it if needed (for `apis.d.ts`, search).
    pub async fn catalogue_of(
        &self,
        tenant: &str,
        api: &TenantApi,
    ) -> Result<Arc<Catalogue>, String> {
        let snapshot = self.snapshot.load_full();
        let entry = self.entry(&snapshot, tenant, api);
        self.catalogue(tenant, &entry).await
    }

    /// The TypeScript declarations of `tenant`'s APIs (catalogues loaded as needed, at once).
    pub async fn declarations(&self, tenant: &isogate_policy::TenantPolicy) -> String {
        let name = tenant.name.as_str();
        let loaded =
            futures::future::join_all(tenant.apis.iter().map(|api| self.catalogue_of(name, api)))
                .await;
        let declared: Vec<dts::Declared<'_>> = tenant
            .apis
            .iter()
            .zip(&loaded)
            .map(|(api, c)| dts::Declared {
                name: &api.name,
                catalogue: c.as_deref().map_err(Clone::clone),
            })
            .collect();
        dts::declarations(&declared)
    }

    /// The tenant's API functions that match `query` (each word in the API's name, the tool's
    /// names or its description; names weigh more), best first, at most `limit`, with their
    /// signatures. APIs whose tools cannot be loaded are named in `unavailable`.
    pub async fn search(
        &self,
        tenant: &isogate_policy::TenantPolicy,
        query: &str,
        limit: usize,
    ) -> Value {
        let name = tenant.name.as_str();
        let words: Vec<String> = query
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .take(32)
            .map(str::to_lowercase)
            .collect();
        let loaded =
            futures::future::join_all(tenant.apis.iter().map(|api| self.catalogue_of(name, api)))
                .await;
        let mut hits: Vec<(u32, usize, &str, &Tool)> = Vec::new();
        let mut unavailable = Vec::new();
        let mut order = 0usize;
        for (api, catalogue) in tenant.apis.iter().zip(&loaded) {
            let catalogue = match catalogue {
                Ok(c) => c,
                Err(e) => {
                    unavailable.push(serde_json::json!({"api": api.name, "error": e}));
                    continue;
                }
            };
            for tool in &catalogue.tools {
                order += 1;
                let names = format!("{} {} {}", api.name, tool.js_name, tool.name).to_lowercase();
                let description = tool.description.as_deref().unwrap_or("").to_lowercase();
                let score: u32 = words
                    .iter()
                    .map(|w| {
                        let in_name = if names.contains(w.as_str()) { 3 } else { 0 };
                        let in_description = if description.contains(w.as_str()) {
                            1
                        } else {
                            0
                        };
                        in_name + in_description
                    })
                    .sum();
                if score > 0 || words.is_empty() {
                    hits.push((score, order, &api.name, tool));
                }
            }
        }
        hits.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let total = hits.len();
        let results: Vec<Value> = hits
            .into_iter()
            .take(limit)
            .map(|(_, _, api, tool)| {
                let signature = dts::signature(
                    &tool.js_name,
                    &tool.name,
                    None,
                    &tool.input_schema,
                    tool.output_schema.as_ref(),
                );
                serde_json::json!({
                    "call": format!("env.{api}.{}", tool.js_name),
                    "name": tool.name,
                    "signature": signature.trim_end(),
                    "description": tool.description.as_deref().map(|d| d.chars().take(400).collect::<String>()),
                })
            })
            .collect();
        serde_json::json!({"results": results, "matched": total, "unavailable": unavailable})
    }

    /// One API call of an invocation: see the module documentation. Counted (by outcome) and
    /// timed when the tenant has the API.
    pub async fn call(&self, invoker: Invoker, call: ApiCall, left: u32) -> ApiAnswer {
        let started = Instant::now();
        let (tenant, api, tool, trace) = (
            invoker.tenant.clone(),
            call.api.clone(),
            call.tool.clone(),
            invoker.trace,
        );
        let answer = self.call_checked(invoker, call, left).await;
        let configured = self
            .snapshot
            .load()
            .policy
            .tenant(&tenant)
            .is_some_and(|t| t.apis.iter().any(|a| a.name == api));
        if configured {
            let outcome = match &answer {
                ApiAnswer::Done(_) => "ok",
                ApiAnswer::Failed { failure, .. } => failure.code.label(),
                ApiAnswer::SubrequestLimit => "subrequest_limit",
            };
            self.metrics
                .api_call(&tenant, &api, outcome, started.elapsed());
            self.receipts.record(
                trace,
                crate::receipts::Entry::Api {
                    api,
                    tool: tool.chars().take(128).collect(),
                    outcome,
                    duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                },
            );
        }
        answer
    }

    async fn call_checked(&self, invoker: Invoker, call: ApiCall, left: u32) -> ApiAnswer {
        let snapshot = self.snapshot.load_full();
        let Some(tenant) = snapshot.policy.tenant(&invoker.tenant) else {
            return fail(
                ApiErrorCode::ApiUnavailable,
                "the tenant is no longer configured",
            );
        };
        let Some(config) = tenant.apis.iter().find(|a| a.name == call.api) else {
            let mut failure = ApiFailure::new(
                ApiErrorCode::ApiNotFound,
                format!("{:?} is not an API of this tenant", call.api),
            );
            failure.hint = Some(if tenant.apis.is_empty() {
                "the tenant has no APIs".to_string()
            } else {
                format!(
                    "the tenant's APIs: {}",
                    tenant
                        .apis
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
            return ApiAnswer::Failed {
                failure,
                charged: false,
            };
        };
        let entry = self.entry(&snapshot, &invoker.tenant, config);
        let catalogue = match self.catalogue(&invoker.tenant, &entry).await {
            Ok(c) => c,
            Err(message) => {
                return fail(
                    ApiErrorCode::ApiUnavailable,
                    format!(
                        "the tool list of API {:?} could not be loaded: {message}",
                        call.api
                    ),
                )
            }
        };
        let Some(tool) = catalogue.tool(&call.tool) else {
            let mut failure = ApiFailure::new(
                ApiErrorCode::ToolNotFound,
                format!("API {:?} has no tool {:?}", call.api, call.tool),
            );
            let names: Vec<&str> = catalogue
                .tools
                .iter()
                .take(20)
                .map(|t| t.js_name.as_str())
                .collect();
            failure.hint = Some(format!(
                "its tools include: {}{}",
                names.join(", "),
                if catalogue.tools.len() > names.len() {
                    ", …"
                } else {
                    ""
                }
            ));
            return ApiAnswer::Failed {
                failure,
                charged: false,
            };
        };
        // The engine bounds the arguments; a worker process is not trusted to have.
        if let Err(failure) = isogate_pool::check_api_args(&call.args) {
            return ApiAnswer::Failed {
                failure,
                charged: false,
            };
        }
        let large = call.args.len() > INLINE_CHECK_BYTES;
        let args: Value = match serde_json::from_str(&call.args) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return fail(
                    ApiErrorCode::InvalidArguments,
                    "the arguments must be one object",
                )
            }
            Err(e) => {
                return fail(
                    ApiErrorCode::InvalidArguments,
                    format!("the arguments are not JSON: {e}"),
                )
            }
        };
        let validator = match &tool.validator {
            Err(e) => {
                return fail(
                    ApiErrorCode::InvalidSchema,
                    format!("the tool's input schema cannot be used to check arguments: {e}"),
                )
            }
            Ok(validator) => validator.clone(),
        };
        // Large arguments are checked off the async runtime, so that one call's check does not
        // hold up the other calls and fetches it serves.
        let (errors, args) = if large {
            match tokio::task::spawn_blocking(move || (check(&validator, &args), args)).await {
                Ok(checked) => checked,
                Err(_) => return fail(ApiErrorCode::ApiUnavailable, "the argument check failed"),
            }
        } else {
            (check(&validator, &args), args)
        };
        if !errors.is_empty() {
            return fail(
                ApiErrorCode::InvalidArguments,
                format!(
                    "invalid arguments for {}.{}: {}",
                    call.api,
                    tool.js_name,
                    errors.join("; ")
                ),
            );
        }
        if left == 0 {
            return ApiAnswer::SubrequestLimit;
        }
        let outcome = match &config.source {
            ApiSource::Mcp { url } => self.call_mcp(&invoker, &entry, url, tool, args, left).await,
            ApiSource::OpenApi { base_url, .. } => {
                self.call_openapi(&invoker, config, base_url, tool, args, left)
                    .await
            }
        };
        match outcome {
            Ok(value) => ApiAnswer::Done(value.to_string()),
            Err(Refused::Budget) => ApiAnswer::SubrequestLimit,
            Err(Refused::Failed { failure, charged }) => ApiAnswer::Failed { failure, charged },
        }
    }

    async fn session(
        &self,
        invoker: &Invoker,
        entry: &Entry,
        url: &str,
    ) -> Result<mcp::Session, Refused> {
        if let Some(s) = lock(&entry.session).clone() {
            return Ok(s);
        }
        let sender = self.sender(
            Self::gateway_invoker(&invoker.tenant),
            1,
            entry.config.timeout,
        );
        let session = mcp::initialize(&sender, url).await?;
        *lock(&entry.session) = Some(session.clone());
        Ok(session)
    }

    async fn call_mcp(
        &self,
        invoker: &Invoker,
        entry: &Entry,
        url: &str,
        tool: &Tool,
        args: Value,
        left: u32,
    ) -> Result<Value, Refused> {
        let sender = self.sender(invoker.clone(), left, entry.config.timeout);
        for attempt in 0..2 {
            let session = self.session(invoker, entry, url).await?;
            match mcp::call_tool(&sender, url, &session, &tool.name, args.clone()).await {
                Ok(mcp::CallOutcome::Value(v)) => return Ok(v),
                Ok(mcp::CallOutcome::ToolError(message)) => {
                    return Err(Refused::failed(ApiErrorCode::ToolError, message, true))
                }
                Err(Ok(refused)) => return Err(refused),
                Err(Err(mcp::SessionExpired)) => {
                    // The server forgot the session: start a new one, once.
                    let mut current = lock(&entry.session);
                    if current.as_ref() == Some(&session) {
                        *current = None;
                    }
                    if attempt == 1 {
                        break;
                    }
                }
            }
        }
        Err(Refused::failed(
            ApiErrorCode::UpstreamError,
            "the MCP server keeps refusing the session",
            true,
        ))
    }

    async fn call_openapi(
        &self,
        invoker: &Invoker,
        config: &TenantApi,
        base_url: &str,
        tool: &Tool,
        args: Value,
        left: u32,
    ) -> Result<Value, Refused> {
        let Some(op) = &tool.operation else {
            return Err(Refused::failed(
                ApiErrorCode::ApiUnavailable,
                "not an operation",
                false,
            ));
        };
        let args = args.as_object().cloned().unwrap_or_default();
        let (url, headers, body) = openapi::build_request(op, base_url, &args)
            .map_err(|e| Refused::failed(ApiErrorCode::InvalidArguments, e, false))?;
        let request = EgressRequest {
            method: op.method.clone(),
            url,
            headers,
            body,
            redirect: "follow".into(),
            budget: 0,
        };
        let mut up = exchange(&*self.port, invoker.clone(), request, left, config.timeout).await?;
        let status = up.head.status;
        let json = up
            .header("content-type")
            .is_some_and(|t| t.contains("json"));
        let bytes = tokio::time::timeout(config.timeout, up.read_all(MAX_RESPONSE_BYTES))
            .await
            .unwrap_or_else(|_| Err("the upstream did not finish its answer in time".into()))
            .map_err(|e| Refused::failed(ApiErrorCode::UpstreamError, e, true))?;
        let value = if bytes.is_empty() {
            Value::Null
        } else if json {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        } else {
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        };
        if !(200..300).contains(&status) {
            let text = match &value {
                Value::String(s) => s.chars().take(300).collect::<String>(),
                v => v.to_string().chars().take(300).collect(),
            };
            let mut failure = ApiFailure::new(
                ApiErrorCode::UpstreamError,
                format!("{} {} answered HTTP {status}: {text}", op.method, op.path),
            );
            failure.status = Some(status);
            return Err(Refused::Failed {
                failure,
                charged: true,
            });
        }
        Ok(value)
    }
}

/// Arguments up to this size (JSON text) are checked on the async runtime; larger ones on its
/// blocking threads.
const INLINE_CHECK_BYTES: usize = 64 * 1024;

/// Longest description of one invalid argument (they quote the value).
const MAX_ERROR_CHARS: usize = 512;

/// The first [`MAX_NAMED_ERRORS`] reasons `args` do not match, each naming where.
fn check(validator: &jsonschema::Validator, args: &Value) -> Vec<String> {
    validator
        .iter_errors(args)
        .take(MAX_NAMED_ERRORS)
        .map(|e| {
            let at = e.instance_path().to_string();
            let mut text = format!("at {}: {e}", if at.is_empty() { "/" } else { &at });
            if let Some((cut, _)) = text.char_indices().nth(MAX_ERROR_CHARS) {
                text.truncate(cut);
                text.push('…');
            }
            text
        })
        .collect()
}

/// Most named groups and named backreferences (`(?<`, `\k<`) a string checked as
/// `format: "regex"` may have: jsonschema's check of one is quadratic in their number.
const MAX_REGEX_FORMAT_NAMES: usize = 32;

/// Compiles a tool's input schema.
///
/// Schemas come from upstreams and arguments from Worker code (up to 4 MiB of JSON), so
/// checking must stay bounded. jsonschema matches `pattern` and `patternProperties` with
/// fancy-regex by default, a backtracking engine: a pattern with look-around or backreferences
/// (`^(?:a|aa)+(?!b)$`) takes up to its default million backtracks (~50 ms) on each string,
/// hours for 4 MiB of short strings. Here they run on the `regex` crate, whose time is linear
/// in the string (times the pattern's size); a schema whose patterns need backtracking does not
/// compile (the tool answers `INVALID_SCHEMA`). `format: "regex"`, where formats are assertions
/// (drafts 4 to 7), is checked for strings of at most [`MAX_REGEX_FORMAT_NAMES`] group names.
///
/// A `pattern` the linear engine cannot run (look-around, backreferences: common in password
/// rules) is left unchecked rather than making the tool unusable: the upstream still checks its
/// own input. A schema that still does not compile answers `INVALID_SCHEMA`.
fn compile(schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
    const UNSUPPORTED: &str = "look-around and backreferences are not supported";
    let build = |schema: &Value| {
        jsonschema::options()
            .with_pattern_options(jsonschema::PatternOptions::regex())
            .with_format("regex", regex_format)
            .build(schema)
            .map(Arc::new)
    };
    let explain = |e: jsonschema::ValidationError<'_>| match e.kind() {
        jsonschema::error::ValidationErrorKind::Format { format } if format == "regex" => {
            format!("{e} (patterns are matched in linear time: {UNSUPPORTED})")
        }
        _ => e.to_string(),
    };
    match build(schema) {
        Ok(v) => Ok(v),
        Err(e) => {
            let mut lenient = schema.clone();
            let mut skipped = Vec::new();
            drop_unsupported_patterns(&mut lenient, 0, &mut skipped);
            if skipped.is_empty() {
                return Err(explain(e));
            }
            let validator = build(&lenient).map_err(explain)?;
            tracing::warn!(
                patterns = ?skipped,
                "a tool's input schema has patterns the gateway cannot match in linear time; they are left to the upstream to check"
            );
            Ok(validator)
        }
    }
}

/// Removes, in place, every `pattern` whose expression the linear engine refuses; `skipped`
/// gets them. Bounded by the schema's depth (serde_json's nesting limit and this one).
fn drop_unsupported_patterns(schema: &mut Value, depth: usize, skipped: &mut Vec<String>) {
    if depth > 256 {
        return;
    }
    match schema {
        Value::Object(map) => {
            let unsupported = match map.get("pattern") {
                Some(Value::String(p)) => jsonschema::options()
                    .with_pattern_options(jsonschema::PatternOptions::regex())
                    .build(&serde_json::json!({ "pattern": p }))
                    .is_err(),
                _ => false,
            };
            if unsupported {
                if let Some(Value::String(p)) = map.remove("pattern") {
                    skipped.push(p);
                }
            }
            for value in map.values_mut() {
                drop_unsupported_patterns(value, depth + 1, skipped);
            }
        }
        Value::Array(items) => {
            for item in items {
                drop_unsupported_patterns(item, depth + 1, skipped);
            }
        }
        _ => {}
    }
}

/// `format: "regex"`: jsonschema's own check (an ECMA-262 regular expression), for strings
/// with at most [`MAX_REGEX_FORMAT_NAMES`] group names.
fn regex_format(text: &str) -> bool {
    static CHECK: std::sync::LazyLock<jsonschema::Validator> = std::sync::LazyLock::new(|| {
        jsonschema::options()
            .should_validate_formats(true)
            .build(&serde_json::json!({"format": "regex"}))
            .expect("a constant schema")
    });
    text.matches("(?<")
        .chain(text.matches("\\k<"))
        .nth(MAX_REGEX_FORMAT_NAMES)
        .is_none()
        && CHECK.is_valid(&Value::String(text.to_owned()))
}

async fn read_spec_file(path: &str) -> Result<Vec<u8>, String> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let file = std::fs::File::open(&path)
            .map_err(|e| format!("cannot read the OpenAPI document {path}: {e}"))?;
        let mut bytes = Vec::new();
        file.take(openapi::MAX_SPEC_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read the OpenAPI document {path}: {e}"))?;
        if bytes.len() > openapi::MAX_SPEC_BYTES {
            return Err(format!(
                "the OpenAPI document {path} exceeds {} bytes",
                openapi::MAX_SPEC_BYTES
            ));
        }
        Ok(bytes)
    })
    .await
    .unwrap_or_else(|_| Err("reading the OpenAPI document failed".into()))
}

/// What the pool is given as its egress: `fetch()` through the egress pipeline, API calls
/// through [`Apis`].
pub struct Outbound {
    /// The egress pipeline.
    pub egress: Arc<dyn EgressPort>,
    /// The tenant APIs.
    pub apis: Arc<Apis>,
    /// Streaming executions: client-side tool calls go to their client.
    pub executions: Arc<crate::executions::Executions>,
}

impl EgressPort for Outbound {
    fn enabled(&self) -> bool {
        self.egress.enabled()
    }

    fn fetch(
        &self,
        invoker: Invoker,
        request: EgressRequest,
        left: u32,
    ) -> BoxFuture<'static, FetchReply> {
        self.egress.fetch(invoker, request, left)
    }

    fn api(&self, invoker: Invoker, call: ApiCall, left: u32) -> BoxFuture<'static, ApiAnswer> {
        if call.client {
            return Box::pin(self.executions.clone().call(invoker, call));
        }
        let apis = self.apis.clone();
        // Already on the egress runtime (a worker process's call, read there): no hand-off.
        let here = tokio::runtime::Handle::try_current().map(|h| h.id());
        if here.as_ref().ok() == Some(&self.apis.runtime.id()) {
            return Box::pin(async move { apis.call(invoker, call, left).await });
        }
        let task = self
            .apis
            .runtime
            .spawn(async move { apis.call(invoker, call, left).await });
        let abort = task.abort_handle();
        let guard = scopeguard(abort);
        Box::pin(async move {
            let _guard = guard;
            task.await
                .unwrap_or_else(|_| fail(ApiErrorCode::ApiUnavailable, "the API call ended"))
        })
    }
}

/// Aborts the call's task when its caller goes away (an aborted invocation).
struct AbortGuard(tokio::task::AbortHandle);

impl Drop for AbortGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn scopeguard(handle: tokio::task::AbortHandle) -> AbortGuard {
    AbortGuard(handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with_pattern(pattern: &str) -> Value {
        json!({
            "type": "object",
            "properties": {"s": {"type": "array", "items": {"type": "string", "pattern": pattern}}},
        })
    }

    #[test]
    fn patterns_are_matched_in_linear_time() {
        // Nested quantifiers: answered in one pass over 50 000 characters.
        let nested = compile(&with_pattern("^(a+)+$")).unwrap();
        let long = "a".repeat(50_000);
        assert!(!nested.is_valid(&json!({"s": [format!("{long}!")]})));
        assert!(nested.is_valid(&json!({"s": [long]})));
        let normal = compile(&with_pattern("^[a-z]+-[0-9]{2}$")).unwrap();
        assert!(normal.is_valid(&json!({"s": ["abc-12", "x-00"]})));
        let errors: Vec<String> = normal
            .iter_errors(&json!({"s": ["abc-12", "abc-1"]}))
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errors, [r#""abc-1" does not match "^[a-z]+-[0-9]{2}$""#]);
        let keys = compile(&json!({
            "type": "object",
            "patternProperties": {"^(a+)+$": {"type": "integer"}},
        }))
        .unwrap();
        assert!(keys.is_valid(&json!({format!("{}!", "a".repeat(50_000)): "x", "aa": 1})));
        assert!(!keys.is_valid(&json!({"aa": "x"})));

        // Look-around and backreferences need a backtracking engine. Compiled with jsonschema's
        // default (fancy-regex), the first costs its million backtracks (~50 ms) on each
        // "aaaaaaaaaaaaaaaaaaaaaaaaa!": 100 000 of them (2.8 MB of arguments), over an hour.
        // Here they are left unchecked (the upstream checks its own input): the schema's other
        // keywords still apply, and nothing backtracks.
        for pattern in [r"^(?:a|aa)+(?!b)$", r"^(a+)+\1$", r"^(?=\w)(a|aa)+$"] {
            let lenient = compile(&with_pattern(pattern)).unwrap();
            let slow = format!("{}!", "a".repeat(25));
            assert!(lenient.is_valid(&json!({"s": vec![slow; 100_000]})));
            assert!(!lenient.is_valid(&json!({"s": [1]})));
        }
        // A password rule with a look-ahead beside a supported pattern: only the first goes.
        let mixed = compile(&json!({
            "type": "object",
            "properties": {
                "password": {"type": "string", "pattern": "^(?=.*[A-Z])(?=.*\\d).{8,}$"},
                "user": {"type": "string", "pattern": "^[a-z]+$"},
            },
        }))
        .unwrap();
        assert!(mixed.is_valid(&json!({"password": "weak", "user": "ada"})));
        assert!(!mixed.is_valid(&json!({"password": "weak", "user": "Ada!"})));
    }

    #[test]
    fn invalid_arguments_are_described_briefly() {
        let validator =
            compile(&json!({"type": "object", "properties": {"n": {"type": "integer"}}})).unwrap();
        let errors = check(&validator, &json!({"n": "x".repeat(100_000)}));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("at /n: "), "{}", errors[0]);
        assert!(
            errors[0].chars().count() <= MAX_ERROR_CHARS + 1,
            "{}",
            errors[0].len()
        );
    }

    #[test]
    fn regex_format_is_checked_in_bounded_time() {
        let validator = compile(&json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"re": {"type": "string", "format": "regex"}},
        }))
        .unwrap();
        let valid = |re: &str| validator.is_valid(&json!({"re": re}));
        assert!(valid(r"^a(?<x>b)\k<x>(?<=b)$"));
        assert!(!valid("(a"));
        let names = |n: usize| (0..n).map(|i| format!("(?<n{i}>)")).collect::<String>();
        assert!(valid(&names(MAX_REGEX_FORMAT_NAMES)));
        assert!(!valid(&names(MAX_REGEX_FORMAT_NAMES + 1)));
        // Quadratic in the names without the bound: minutes for 4 MiB.
        assert!(!valid(&names(400_000)));
    }
}
