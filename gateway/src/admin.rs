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
    /// Where to reach the ingress listeners (loopback for an unspecified address), and whether
    /// each speaks TLS.
    ingress: Vec<(SocketAddr, bool)>,
    /// Set once the ingress was seen accepting a connection.
    ingress_up: AtomicBool,
}

impl Admin {
    /// Builds the app for a gateway whose ingress listens on `ingress` (every address, and
    /// whether it speaks TLS).
    pub fn new(state: Arc<AppState>, ingress: &[(SocketAddr, bool)]) -> Self {
        let probes = ingress
            .iter()
            .map(|&(addr, tls)| {
                let mut probe = addr;
                if probe.ip().is_unspecified() {
                    probe.set_ip(match probe {
                        SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                        SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
                    });
                }
                (probe, tls)
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
        for &(addr, tls) in &self.ingress {
            let connect = tokio::net::TcpStream::connect(addr);
            let stream =
                match tokio::time::timeout(std::time::Duration::from_millis(500), connect).await {
                    Ok(Ok(stream)) => stream,
                    _ => return false,
                };
            if tls {
                up &= match stream.into_std() {
                    Ok(std) => {
                        let _ = std.set_nonblocking(false);
                        tokio::task::spawn_blocking(move || tls_handshake(std, addr))
                            .await
                            .unwrap_or(false)
                    }
                    Err(_) => false,
                };
            }
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
                    // A shared store that is down degrades the replica without failing it:
                    // cached Workers keep serving, and a Redis blip must not take every pod
                    // out of its Service at once.
                    match self.state.store.shared() {
                        Some(shared) if !shared.is_up() => Reply::json(
                            200,
                            &serde_json::json!({"status": "degraded", "reason": "the shared store (Redis) is unreachable", "warm_isolates": warm}),
                        ),
                        _ => Reply::json(
                            200,
                            &serde_json::json!({"status": "ready", "warm_isolates": warm}),
                        ),
                    }
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

/// Completes a TLS handshake with the listener at `addr` (any certificate is accepted: the
/// probe asks whether the listener serves, not who it is), so that the readiness check is an
/// ordinary client: pingora logs a connection that ends mid-handshake as an error.
fn tls_handshake(stream: std::net::TcpStream, addr: SocketAddr) -> bool {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(builder) = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
    else {
        return false;
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let Ok(conn) = rustls::ClientConnection::new(Arc::new(config), name) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(500)));
    let _ = stream.set_write_timeout(Some(std::time::Duration::from_millis(500)));
    let mut tls = rustls::StreamOwned::new(conn, stream);
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            return false;
        }
    }
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
    true
}

/// A certificate verifier that accepts any certificate (signatures are still checked), for the
/// readiness probe of the gateway's own TLS listener only.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
