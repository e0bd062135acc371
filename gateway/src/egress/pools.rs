//! Upstream connection pools, one per (tenant, credential, `allow_private`): a connection that
//! carried one tenant's traffic (or a request without a credential) is never reused for
//! another tenant's (or another credential's) request. A connection whose response head
//! arrived before its request body was fully sent is poisoned (never returned to the pool): an
//! upstream that answers without reading the body would otherwise parse the rest of that body
//! as the next request on the connection.

use super::client::{self, GuardedConnector};
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{capture_connection, CaptureConnection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// A client over the guarded connector (the SSRF rule: `check_name`, then `check_address` on
/// every resolved `(address, port)`), sending [`SentBody`].
pub type PooledClient = Client<HttpsConnector<GuardedConnector>, SentBody>;

/// At most this many pools are kept; the least recently used one is dropped (with its idle
/// connections) when a new key needs room.
const MAX_POOLS: usize = 256;
/// Bodies are handed to hyper in pieces of this size, so "fully sent" tracks the socket.
const CHUNK: usize = 16 * 1024;

/// Who may share a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The tenant.
    pub tenant: String,
    /// The credential attached to the request, if any.
    pub credential: Option<String>,
    /// Whether the connector admits private-use ranges.
    pub allow_private: bool,
}

/// The pools.
pub struct Pools {
    tls: rustls::ClientConfig,
    clients: Mutex<lru::LruCache<PoolKey, PooledClient>>,
}

impl Default for Pools {
    fn default() -> Self {
        Pools::new()
    }
}

impl Pools {
    /// No pools yet; clients are built on first use of a key.
    pub fn new() -> Pools {
        Pools {
            tls: client::shared_tls_config(),
            clients: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(MAX_POOLS).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// The client (and so the connection pool) of `key`.
    pub fn client(&self, key: &PoolKey) -> PooledClient {
        if let Ok(mut clients) = self.clients.lock() {
            if let Some(c) = clients.get(key) {
                return c.clone();
            }
            let c = self.build(key.allow_private);
            clients.put(key.clone(), c.clone());
            return c;
        }
        self.build(key.allow_private)
    }

    /// Number of pools (for tests).
    pub fn len(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Whether there is no pool.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn build(&self, allow_private: bool) -> PooledClient {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(GuardedConnector::new(allow_private));
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .build(https)
    }
}

/// An outbound request body that records when hyper has taken its last byte.
pub struct SentBody {
    data: Bytes,
    done: Arc<AtomicBool>,
}

impl SentBody {
    /// The body and its "fully sent" flag.
    pub fn new(data: Bytes) -> (SentBody, Arc<AtomicBool>) {
        let done = Arc::new(AtomicBool::new(data.is_empty()));
        (
            SentBody {
                data,
                done: done.clone(),
            },
            done,
        )
    }
}

impl Body for SentBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.data.is_empty() {
            self.done.store(true, Ordering::SeqCst);
            return Poll::Ready(None);
        }
        let n = self.data.len().min(CHUNK);
        let piece = self.data.split_to(n);
        if self.data.is_empty() {
            self.done.store(true, Ordering::SeqCst);
        }
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.len() as u64)
    }
}

/// Watches one request's connection: [`Watch::response_arrived`] poisons it when the body was
/// not fully sent yet.
pub struct Watch {
    captured: CaptureConnection,
    done: Arc<AtomicBool>,
}

impl Watch {
    /// Starts watching `request`, whose body reports completion through `done`.
    pub fn new<B>(request: &mut http::Request<B>, done: Arc<AtomicBool>) -> Watch {
        Watch {
            captured: capture_connection(request),
            done,
        }
    }

    /// Call when the response head arrived. Returns whether the connection was poisoned.
    pub fn response_arrived(&self) -> bool {
        if self.done.load(Ordering::SeqCst) {
            return false;
        }
        let meta = self.captured.connection_metadata();
        if let Some(connected) = &*meta {
            connected.poison();
        }
        true
    }
}
