//! The admin listener: `GET /healthz` (200 while the process serves) and `GET /readyz` (200 once
//! the warm pool has been filled and the ingress accepts connections).
//!
//! Test-only: with `ISOGATE_TEST_PROBES=1` in the gateway's environment (never in production),
//! `POST /debug/probe/{socket|open|exhaust|garbage|oversized}?tenant=NAME` makes the worker
//! process that runs `NAME` attempt what an engine bug could (open a socket or a file, allocate
//! without bound, write a malformed or oversized frame), to test that its confinement or the
//! supervisor ends it. Without that variable the route does not exist (404).

use crate::ingress::Reply;
use crate::state::AppState;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The admin app.
pub struct Admin {
    state: Arc<AppState>,
    /// Where to reach the ingress listeners (plain and TLS; loopback for an unspecified
    /// address).
    ingress: Vec<SocketAddr>,
    /// Set once the ingress was seen accepting a connection.
    ingress_up: AtomicBool,
}

impl Admin {
    /// Builds the app for a gateway whose ingress listens on `ingress` (every address).
    pub fn new(state: Arc<AppState>, ingress: &[SocketAddr]) -> Self {
        let probes = ingress
            .iter()
            .map(|&addr| {
                let mut probe = addr;
                if probe.ip().is_unspecified() {
                    probe.set_ip(match probe {
                        SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                        SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                    });
                }
                probe
            })
            .collect();
        Admin {
            state,
            ingress: probes,
            ingress_up: AtomicBool::new(false),
        }
    }

    /// Whether every ingress listener accepts connections. pingora binds its listeners in the background
    /// and keeps retrying an address that is taken, so being started does not mean listening.
    async fn ingress_listening(&self) -> bool {
        if self.ingress_up.load(Ordering::Relaxed) {
            return true;
        }
        let mut up = true;
        for &addr in &self.ingress {
            let connect = tokio::net::TcpStream::connect(addr);
            up &= matches!(
                tokio::time::timeout(std::time::Duration::from_millis(500), connect).await,
                Ok(Ok(_))
            );
        }
        if up {
            self.ingress_up.store(true, Ordering::Relaxed);
        }
        up
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        if let Some(what) = path.strip_prefix("/debug/probe/") {
            if probes_enabled() {
                let post = session.req_header().method == http::Method::POST;
                let query = session.req_header().uri.query().unwrap_or("").to_string();
                return self.probe(post, what, &query).await.into_http();
            }
        }
        let reply = match path {
            "/healthz" => Reply::json(200, &serde_json::json!({"status": "ok"})),
            "/readyz" => {
                let warm = self.state.pool.warm_isolates();
                if self
                    .state
                    .draining
                    .load(std::sync::atomic::Ordering::SeqCst)
                {
                    Reply::json(
                        503,
                        &serde_json::json!({"status": "draining", "warm_isolates": warm}),
                    )
                } else if !self.ingress_listening().await {
                    Reply::json(
                        503,
                        &serde_json::json!({"status": "starting", "reason": "the ingress is not listening yet", "warm_isolates": warm}),
                    )
                } else if self.state.pool.is_ready() {
                    Reply::json(
                        200,
                        &serde_json::json!({"status": "ready", "warm_isolates": warm}),
                    )
                } else {
                    Reply::json(
                        503,
                        &serde_json::json!({"status": "warming", "warm_isolates": warm}),
                    )
                }
            }
            "/metrics" => {
                return http::Response::builder()
                    .status(200)
                    .header("content-type", "text/plain; version=0.0.4")
                    .body(self.state.metrics.render())
                    .unwrap_or_else(|_| http::Response::new(Vec::new()));
            }
            _ => Reply::error(&crate::error::ApiError::NotFound(format!(
                "no admin route for {path}"
            ))),
        };
        reply.into_http()
    }
}

/// Whether the test-only probe route exists (`ISOGATE_TEST_PROBES=1`).
fn probes_enabled() -> bool {
    std::env::var_os("ISOGATE_TEST_PROBES").is_some_and(|v| v == "1")
}

impl Admin {
    /// `POST /debug/probe/{what}?tenant=NAME` (test-only, see the module doc).
    async fn probe(&self, post: bool, what: &str, query: &str) -> Reply {
        use crate::error::ApiError;
        use isogate_pool::wire::Probe;
        if !post {
            return Reply::error(&ApiError::MethodNotAllowed { allow: "POST" });
        }
        let probe = match what {
            "socket" => Probe::Socket,
            "open" => Probe::Open,
            "exhaust" => Probe::Exhaust,
            "garbage" => Probe::Garbage,
            "oversized" => Probe::Oversized,
            _ => return Reply::error(&ApiError::NotFound(format!("no probe {what}"))),
        };
        let Some(tenant) = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "tenant")
            .map(|(_, v)| v.into_owned())
        else {
            return Reply::error(&ApiError::BadRequest("probe: missing ?tenant=".into()));
        };
        match self.state.pool.probe(&tenant, probe).await {
            None => Reply::error(&ApiError::Conflict(
                "probes need worker processes (pool.isolation: process)".into(),
            )),
            Some(Ok(pid)) => Reply::json(200, &serde_json::json!({"probe": what, "pid": pid})),
            Some(Err(_)) => Reply::error(&ApiError::Overloaded),
        }
    }
}
