//! Outbound HTTP clients: rustls (webpki + system roots, verification always on), connection
//! reuse, connect timeout, and — for Worker traffic — a resolver that refuses private, loopback
//! and other non-public addresses so the connection goes to exactly the address that was checked.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use isogate_policy::{classify_ip, BlockedRange};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Client for operator-configured destinations (vaults).
pub type HttpClient = Client<HttpsConnector<HttpConnector<GaiResolver>>, Full<Bytes>>;
/// Client for Worker traffic: every resolved address passes the SSRF guard.
pub type GuardedClient = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

/// Whether an address may be connected to: public addresses always; with `allow_private`, also
/// private-use ranges (loopback, RFC 1918, link-local, CGNAT, unique-local) — never cloud
/// metadata, multicast or the other special ranges.
pub fn address_allowed(ip: IpAddr, allow_private: bool) -> Result<(), BlockedRange> {
    match classify_ip(ip) {
        None => Ok(()),
        Some(range)
            if allow_private && range.is_private_use() && range != BlockedRange::CloudMetadata =>
        {
            Ok(())
        }
        Some(range) => Err(range),
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A name resolved to an address the SSRF guard refuses.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{host} resolves to {ip}, a {range}")]
pub struct GuardRefused {
    /// The host name.
    pub host: String,
    /// The refused address.
    pub ip: IpAddr,
    /// Why it is refused.
    pub range: BlockedRange,
}

/// Resolves with the system resolver, then refuses the whole name if any address is not allowed
/// (so a name cannot mix a public and a private answer).
#[derive(Clone, Default)]
pub struct GuardedResolver {
    allow_private: bool,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                if let Err(range) = address_allowed(addr.ip(), allow_private) {
                    return Err(Box::new(GuardRefused {
                        host: host.clone(),
                        ip: addr.ip(),
                        range,
                    }) as Self::Error);
                }
            }
            Ok(addrs.into_iter())
        })
    }
}

fn tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap_or_else(|_| {
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .expect("default TLS versions are supported by ring")
    })
    .with_root_certificates(roots)
    .with_no_client_auth()
}

fn build<R>(resolver: R) -> Client<HttpsConnector<HttpConnector<R>>, Full<Bytes>>
where
    R: tower_service::Service<Name> + Clone + Send + Sync + 'static,
    HttpConnector<R>: tower_service::Service<http::Uri>,
    HttpsConnector<HttpConnector<R>>: hyper_util::client::legacy::connect::Connect,
{
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(32)
        .build(https)
}

/// A client for trusted destinations.
pub fn open_client() -> HttpClient {
    build(GaiResolver::new())
}

/// A client whose resolver enforces the SSRF guard (`allow_private` relaxes it for private-use
/// ranges only).
pub fn guarded_client(allow_private: bool) -> GuardedClient {
    build(GuardedResolver { allow_private })
}

/// Reads a whole body, failing past `limit` bytes.
pub async fn read_body_limited<B>(body: B, limit: usize) -> Result<Bytes, String>
where
    B: hyper::body::Body,
    B::Error:
        std::fmt::Display + Send + Sync + 'static + Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(format!("response body exceeds {limit} bytes"))
            } else {
                Err(format!("error reading response body: {e}"))
            }
        }
    }
}

/// Finds a [`GuardRefused`] in an error's source chain.
pub fn guard_refusal(err: &(dyn std::error::Error + 'static)) -> Option<GuardRefused> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(r) = e.downcast_ref::<GuardRefused>() {
            return Some(r.clone());
        }
        current = e.source();
    }
    None
}

impl GuardedResolver {
    /// A resolver that enforces [`address_allowed`] with this `allow_private`.
    pub fn new(allow_private: bool) -> GuardedResolver {
        GuardedResolver { allow_private }
    }
}

/// The TLS configuration of every outbound client (built once: loading the system roots reads
/// files).
pub fn shared_tls_config() -> rustls::ClientConfig {
    tls_config()
}

/// The connect timeout of every outbound client.
pub const OUTBOUND_CONNECT_TIMEOUT: Duration = CONNECT_TIMEOUT;
