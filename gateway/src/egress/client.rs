//! Outbound HTTP clients: rustls (webpki + system roots, verification always on), connection
//! reuse, connect timeout, and — for Worker traffic — a connector that enforces the SSRF rule
//! (`isogate_policy::check_name` / `check_address`) on the exact socket addresses it connects
//! to: the name is checked, resolved, every resolved `(ip, port)` checked (metadata endpoints
//! and the gateway's own listeners never pass), and only those addresses are handed to the TCP
//! connector.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use isogate_policy::{check_address, check_name, AddressRefusal, AddressScope, SelfListeners};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

/// Client for operator-configured destinations (vaults).
pub type HttpClient = Client<HttpsConnector<HttpConnector<GaiResolver>>, Full<Bytes>>;
/// Client for Worker traffic: every socket address passes the SSRF rule at connect time.
pub type GuardedClient = Client<HttpsConnector<GuardedConnector>, Full<Bytes>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The gateway's own listeners, registered once at start (`server::run`) from the
/// configuration and the host's interface addresses. Process-wide so that every guarded client
/// sees them, whoever built it.
static SELF_LISTENERS: OnceLock<SelfListeners> = OnceLock::new();

/// Registers the gateway's own listeners; returns `false` if a set was registered before (the
/// first one stays).
pub fn set_self_listeners(listeners: SelfListeners) -> bool {
    SELF_LISTENERS.set(listeners).is_ok()
}

/// The registered listeners (empty before [`set_self_listeners`]).
pub fn self_listeners() -> SelfListeners {
    SELF_LISTENERS.get().cloned().unwrap_or_default()
}

/// The address scope of a request: its `allow_private` and the registered listeners.
pub fn scope(allow_private: bool) -> AddressScope {
    AddressScope::new(allow_private, self_listeners())
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A destination the SSRF rule refuses.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", describe(host, addr, refusal))]
pub struct GuardRefused {
    /// The host as in the URL (a name or an IP literal).
    pub host: String,
    /// The refused socket address; `None` when the name itself is refused.
    pub addr: Option<SocketAddr>,
    /// Why it is refused.
    pub refusal: AddressRefusal,
}

fn describe(host: &str, addr: &Option<SocketAddr>, refusal: &AddressRefusal) -> String {
    match addr {
        None => format!("{host} is {refusal}"),
        Some(addr)
            if host.trim_start_matches('[').trim_end_matches(']') == addr.ip().to_string() =>
        {
            format!("{addr} is {refusal}")
        }
        Some(addr) => format!("{host} resolves to {}, {refusal}", addr.ip()),
    }
}

/// The TCP connector of Worker traffic: checks the host name, resolves it with the system
/// resolver, refuses the whole name if any `(address, port)` is refused (so a name cannot mix a
/// public and a private answer), and connects only to the addresses it checked. IP literals are
/// checked the same way.
#[derive(Clone, Default)]
pub struct GuardedConnector {
    allow_private: bool,
}

impl GuardedConnector {
    /// The connector of one pool: `allow_private` opens the private-use ranges only.
    pub fn new(allow_private: bool) -> GuardedConnector {
        GuardedConnector { allow_private }
    }

    async fn connect(self, uri: http::Uri) -> Result<TokioIo<tokio::net::TcpStream>, BoxError> {
        let scope = scope(self.allow_private);
        let host = uri.host().ok_or("URL has no host")?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        let refused = |addr, refusal| {
            Box::new(GuardRefused {
                host: host.to_string(),
                addr,
                refusal,
            }) as BoxError
        };
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => {
                check_name(bare).map_err(|r| refused(None, r))?;
                tokio::net::lookup_host((bare, port)).await?.collect()
            }
        };
        if addrs.is_empty() {
            return Err(format!("{host} resolves to no address").into());
        }
        for &addr in &addrs {
            check_address(addr, &scope).map_err(|r| refused(Some(addr), r))?;
        }
        let mut http = http_connector(Checked(addrs));
        let stream = tower_service::Service::call(&mut http, uri).await?;
        Ok(stream)
    }
}

impl tower_service::Service<http::Uri> for GuardedConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// A "resolver" answering with the addresses the guard already checked.
#[derive(Clone)]
struct Checked(Vec<SocketAddr>);

impl tower_service::Service<Name> for Checked {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _name: Name) -> Self::Future {
        std::future::ready(Ok(self.0.clone().into_iter()))
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

fn http_connector<R: Clone>(resolver: R) -> HttpConnector<R> {
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    http
}

fn build<C>(connector: C) -> Client<HttpsConnector<C>, Full<Bytes>>
where
    C: tower_service::Service<http::Uri> + Clone + Send + Sync + 'static,
    HttpsConnector<C>: hyper_util::client::legacy::connect::Connect,
{
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config())
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(32)
        .build(https)
}

/// A client for trusted destinations.
pub fn open_client() -> HttpClient {
    build(http_connector(GaiResolver::new()))
}

/// A client whose connector enforces the SSRF rule (`allow_private` opens the private-use
/// ranges only; metadata endpoints and the gateway's own listeners stay closed).
pub fn guarded_client(allow_private: bool) -> GuardedClient {
    build(GuardedConnector { allow_private })
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

/// The TLS configuration of every outbound client (built once: loading the system roots reads
/// files).
pub fn shared_tls_config() -> rustls::ClientConfig {
    tls_config()
}
