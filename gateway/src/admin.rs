//! The admin listener: `GET /healthz` (200 while the process serves) and `GET /readyz` (200 once
//! the warm pool has been filled).

use crate::ingress::Reply;
use crate::state::AppState;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

/// The admin app.
pub struct Admin {
    state: Arc<AppState>,
}

impl Admin {
    /// Builds the app.
    pub fn new(state: Arc<AppState>) -> Self {
        Admin { state }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = session.req_header().uri.path();
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
