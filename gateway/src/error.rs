//! Every error the HTTP API can answer with, mapped to a status and a JSON body in one place.
//!
//! The body is always `{"error":{"kind":"...","message":"..."}}`; `kind` is a small fixed set
//! usable in logs and metric labels.

use isogate_pool::{ErrorKind, WorkerError};

/// Whose failure an error answer is: the `fault` label of `isogate_request_failures_total`, so
/// that alerts on the gateway failing are not set off by tenants' code or their clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request itself: malformed, unauthenticated, too large, no such route or Worker.
    Client,
    /// The tenant's code or the tenant's own limits: an exception, a limit breach, its
    /// concurrency exhausted, an isolate discarded for another of its requests' breach.
    Tenant,
    /// isogate: overloaded, out of its memory budget, shutting down, a crashed worker process,
    /// a fault of its own.
    Platform,
}

impl Fault {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Tenant => "tenant",
            Fault::Platform => "platform",
        }
    }
}

/// Every `kind` an error answer can have, with its [`Fault`] (the counter's series, created
/// at 0).
pub const ERROR_KINDS: &[(&str, Fault)] = &[
    ("bad_request", Fault::Client),
    ("unauthorized", Fault::Client),
    ("payload_too_large", Fault::Client),
    ("headers_too_large", Fault::Client),
    ("rate_limited", Fault::Client),
    ("not_found", Fault::Client),
    ("method_not_allowed", Fault::Client),
    ("conflict", Fault::Client),
    ("gone", Fault::Client),
    ("too_many_requests", Fault::Tenant),
    ("exception", Fault::Tenant),
    ("syntax", Fault::Tenant),
    ("cpu_limit", Fault::Tenant),
    ("memory_limit", Fault::Tenant),
    ("wall_limit", Fault::Tenant),
    ("subrequest_limit", Fault::Tenant),
    ("isolate_discarded", Fault::Tenant),
    ("overloaded", Fault::Platform),
    ("draining", Fault::Platform),
    ("memory_budget", Fault::Platform),
    ("store_unavailable", Fault::Platform),
    ("worker_crashed", Fault::Platform),
    ("internal", Fault::Platform),
];

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// Malformed body or bad WorkerCode; the message names the field.
    BadRequest(String),
    /// Missing or unknown API key.
    Unauthorized,
    /// Body larger than the tenant's `max_body_bytes`.
    PayloadTooLarge {
        /// The limit that was exceeded.
        limit: u64,
    },
    /// Request head larger than a public route's `max_header_bytes`.
    HeadersTooLarge {
        /// The limit that was exceeded.
        limit: u64,
    },
    /// A client over a public route's per-client rate limit.
    RateLimited {
        /// Seconds the client should wait.
        retry_after_s: u64,
    },
    /// No such route or Worker.
    NotFound(String),
    /// Route exists, method does not.
    MethodNotAllowed {
        /// Methods the route accepts.
        allow: &'static str,
    },
    /// Different code already stored under an id.
    Conflict(String),
    /// The thing named existed and has ended (a reply to a finished execution).
    Gone(String),
    /// Tenant over its concurrency and its queue full or the wait timed out.
    TooManyRequests {
        /// Seconds the client should wait.
        retry_after_s: u64,
        /// Why.
        message: String,
    },
    /// The isolate pool cannot take more work right now.
    Overloaded,
    /// The gateway is shutting down.
    Draining,
    /// The gateway-wide in-flight body budget has no room (the message says why).
    MemoryBudget(String),
    /// The shared store (Redis) cannot be reached now.
    StoreUnavailable(String),
    /// The Worker failed (limit breach → 503, exception/syntax → 500).
    Worker(WorkerError),
    /// A fault in isogate.
    Internal(String),
}

impl ApiError {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::HeadersTooLarge { .. } => 431,
            ApiError::RateLimited { .. } => 429,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::Conflict(_) => 409,
            ApiError::Gone(_) => 410,
            ApiError::TooManyRequests { .. } => 429,
            ApiError::Overloaded
            | ApiError::Draining
            | ApiError::MemoryBudget(_)
            | ApiError::StoreUnavailable(_) => 503,
            ApiError::Worker(e) if e.kind.is_limit() || e.kind.is_retryable() => 503,
            ApiError::Worker(_) => 500,
            ApiError::Internal(_) => 500,
        }
    }

    /// Whose failure this is (see [`Fault`]). A Worker's exception or limit breach is the
    /// tenant's; a worker process that crashed under it is isogate's (a Worker's own overrun is
    /// answered with its limit kind instead).
    pub fn fault(&self) -> Fault {
        match self {
            ApiError::BadRequest(_)
            | ApiError::Unauthorized
            | ApiError::PayloadTooLarge { .. }
            | ApiError::HeadersTooLarge { .. }
            | ApiError::RateLimited { .. }
            | ApiError::NotFound(_)
            | ApiError::MethodNotAllowed { .. }
            | ApiError::Conflict(_)
            | ApiError::Gone(_) => Fault::Client,
            ApiError::TooManyRequests { .. } => Fault::Tenant,
            ApiError::Overloaded
            | ApiError::Draining
            | ApiError::MemoryBudget(_)
            | ApiError::StoreUnavailable(_)
            | ApiError::Internal(_) => Fault::Platform,
            ApiError::Worker(e) => match e.kind {
                ErrorKind::WorkerCrashed | ErrorKind::Internal => Fault::Platform,
                ErrorKind::Exception
                | ErrorKind::Syntax
                | ErrorKind::CpuLimit
                | ErrorKind::MemoryLimit
                | ErrorKind::WallLimit
                | ErrorKind::SubrequestLimit
                | ErrorKind::IsolateDiscarded => Fault::Tenant,
            },
        }
    }

    /// The fixed `kind` string.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::HeadersTooLarge { .. } => "headers_too_large",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::Gone(_) => "gone",
            ApiError::TooManyRequests { .. } => "too_many_requests",
            ApiError::Overloaded => "overloaded",
            ApiError::Draining => "draining",
            ApiError::MemoryBudget(_) => "memory_budget",
            ApiError::StoreUnavailable(_) => "store_unavailable",
            ApiError::Worker(e) => e.kind.as_str(),
            ApiError::Internal(_) => "internal",
        }
    }

    /// The human message.
    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Gone(m) => m.clone(),
            ApiError::Unauthorized => {
                "missing or unknown API key; send `Authorization: Bearer <tenant api key>`".into()
            }
            ApiError::PayloadTooLarge { limit } => {
                format!("request body exceeds this tenant's limit of {limit} bytes")
            }
            ApiError::HeadersTooLarge { limit } => {
                format!("request headers exceed this route's limit of {limit} bytes")
            }
            ApiError::RateLimited { retry_after_s } => {
                format!("too many requests from this client; retry after {retry_after_s} s")
            }
            ApiError::MethodNotAllowed { allow } => format!("method not allowed; use {allow}"),
            ApiError::TooManyRequests { message, .. } => message.clone(),
            ApiError::Overloaded => "the isolate pool is overloaded; retry shortly".into(),
            ApiError::Draining => "the gateway is shutting down; retry on another replica".into(),
            ApiError::Worker(e) => e.message.clone(),
            ApiError::Internal(m) | ApiError::MemoryBudget(m) => m.clone(),
            ApiError::StoreUnavailable(m) => {
                format!("{m}; stored Workers cannot be changed or read for the first time now, retry shortly")
            }
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "kind": self.kind(), "message": self.message() } })
    }

    /// The JSON body for a public route's client (the tenant's end user): the kind, and the
    /// message only where it is about the request itself; a Worker's exception, a tenant's
    /// limits and the gateway's internals are not told to the public.
    pub fn public_body(&self) -> serde_json::Value {
        let message = match self {
            ApiError::BadRequest(_)
            | ApiError::PayloadTooLarge { .. }
            | ApiError::HeadersTooLarge { .. }
            | ApiError::RateLimited { .. }
            | ApiError::Overloaded
            | ApiError::Draining => self.message(),
            ApiError::NotFound(_) => "not found".into(),
            _ => "the application could not answer this request".into(),
        };
        serde_json::json!({ "error": { "kind": self.kind(), "message": message } })
    }

    /// Whether the answer ends the connection (the client sent more than it may, or the gateway
    /// is going away); a body left unread is then discarded up to a bound before closing.
    pub fn closes_connection(&self) -> bool {
        matches!(self, ApiError::PayloadTooLarge { .. } | ApiError::Draining)
    }

    /// Extra headers the status calls for.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            ApiError::Unauthorized => vec![("www-authenticate", "Bearer".into())],
            ApiError::MethodNotAllowed { allow } => vec![("allow", (*allow).to_string())],
            ApiError::TooManyRequests { retry_after_s, .. }
            | ApiError::RateLimited { retry_after_s } => {
                vec![("retry-after", retry_after_s.to_string())]
            }
            ApiError::Overloaded | ApiError::MemoryBudget(_) | ApiError::StoreUnavailable(_) => {
                vec![("retry-after", "1".into())]
            }
            ApiError::Worker(e) if e.kind.is_retryable() => {
                vec![("retry-after", "1".into())]
            }
            ApiError::Draining => vec![("retry-after", "1".into()), ("connection", "close".into())],
            ApiError::PayloadTooLarge { .. } => vec![("connection", "close".into())],
            _ => vec![],
        }
    }
}

impl From<isogate_pool::PoolError> for ApiError {
    fn from(e: isogate_pool::PoolError) -> Self {
        match e {
            isogate_pool::PoolError::Overloaded => ApiError::Overloaded,
            isogate_pool::PoolError::Unavailable => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::store::StoredError> for ApiError {
    fn from(e: crate::store::StoredError) -> Self {
        match e {
            crate::store::StoredError::Unavailable(m) => ApiError::StoreUnavailable(m),
            crate::store::StoredError::Failed(m) => ApiError::Internal(m),
        }
    }
}

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> Self {
        match e.kind {
            ErrorKind::Internal => ApiError::Internal(e.message),
            _ => ApiError::Worker(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_api_contract() {
        let limit = ApiError::Worker(WorkerError::new(ErrorKind::CpuLimit, "x"));
        assert_eq!(limit.status(), 503);
        assert_eq!(limit.kind(), "cpu_limit");
        let exc = ApiError::Worker(WorkerError::new(ErrorKind::Exception, "x"));
        assert_eq!(exc.status(), 500);
        let busy = ApiError::TooManyRequests {
            retry_after_s: 2,
            message: "m".into(),
        };
        assert_eq!(busy.status(), 429);
        assert_eq!(busy.headers(), vec![("retry-after", "2".to_string())]);
        assert_eq!(
            ApiError::Unauthorized.body()["error"]["kind"],
            "unauthorized"
        );
    }

    #[test]
    fn every_error_has_its_kind_and_fault_listed() {
        let mut all = vec![
            ApiError::BadRequest("m".into()),
            ApiError::Unauthorized,
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::HeadersTooLarge { limit: 1 },
            ApiError::RateLimited { retry_after_s: 1 },
            ApiError::NotFound("m".into()),
            ApiError::MethodNotAllowed { allow: "GET" },
            ApiError::Conflict("m".into()),
            ApiError::Gone("m".into()),
            ApiError::TooManyRequests {
                retry_after_s: 1,
                message: "m".into(),
            },
            ApiError::Overloaded,
            ApiError::Draining,
            ApiError::MemoryBudget("m".into()),
            ApiError::StoreUnavailable("m".into()),
            ApiError::Internal("m".into()),
        ];
        for kind in [
            ErrorKind::Exception,
            ErrorKind::Syntax,
            ErrorKind::CpuLimit,
            ErrorKind::MemoryLimit,
            ErrorKind::WallLimit,
            ErrorKind::SubrequestLimit,
            ErrorKind::WorkerCrashed,
            ErrorKind::IsolateDiscarded,
            ErrorKind::Internal,
        ] {
            all.push(ApiError::from(WorkerError::new(kind, "m")));
        }
        for e in &all {
            assert!(
                ERROR_KINDS.contains(&(e.kind(), e.fault())),
                "{} / {:?} is not listed",
                e.kind(),
                e.fault()
            );
        }
        // The gateway failing is the platform's; the tenant's code failing is not.
        let crashed = ApiError::from(WorkerError::new(ErrorKind::WorkerCrashed, "m"));
        assert_eq!(crashed.fault(), Fault::Platform);
        let thrown = ApiError::from(WorkerError::new(ErrorKind::Exception, "m"));
        assert_eq!((thrown.status(), thrown.fault()), (500, Fault::Tenant));
        assert_eq!(ERROR_KINDS.len(), 23);
        // A public client learns nothing of the Worker's failure but its kind.
        let body = thrown.public_body();
        assert_eq!(body["error"]["kind"], "exception");
        assert!(!body.to_string().contains("\"m\""), "{body}");
    }
}
