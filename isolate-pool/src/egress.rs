//! The one door from a Worker to the network.
//!
//! Every `fetch()` a Worker makes becomes an [`EgressRequest`] handed to the [`Egress`]
//! implementation the gateway installs. The pool never opens a socket itself. The request is
//! owned and serialisable, and the identity of the caller ([`Invoker`]) comes from host state,
//! never from the Worker's arguments.

use crate::api::Invoker;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// What the Worker asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRequest {
    /// Method, upper-case.
    pub method: String,
    /// The URL exactly as the Worker's `Request` normalised it.
    pub url: String,
    /// Headers the Worker set.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// The `redirect` mode of the request: `follow`, `manual` or `error`.
    pub redirect: String,
}

/// What the Worker gets back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressResponse {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Why an outbound request did not happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum EgressError {
    /// Refused (policy, SSRF guard, network disabled, upstream failure): `fetch()` rejects with
    /// a `TypeError` carrying this message. The message must never contain a secret.
    #[error("{0}")]
    Rejected(String),
}

/// The gateway's egress pipeline, as the pool sees it.
pub trait Egress: Send + Sync + 'static {
    /// Whether Workers have network access at all. When false, `fetch()` rejects with
    /// [`NETWORK_DISABLED`] before the subrequest budget is charged.
    fn enabled(&self) -> bool {
        true
    }

    /// Performs (or refuses) one outbound request for `invoker`.
    fn fetch(
        &self,
        invoker: Invoker,
        request: EgressRequest,
    ) -> BoxFuture<'static, Result<EgressResponse, EgressError>>;
}

/// The message `fetch()` rejects with when a Worker has no network access.
pub const NETWORK_DISABLED: &str = "network access is disabled for this Worker";

/// An egress that refuses everything: used when no egress is configured.
#[derive(Debug, Default, Clone, Copy)]
pub struct DisabledEgress;

impl Egress for DisabledEgress {
    fn enabled(&self) -> bool {
        false
    }

    fn fetch(
        &self,
        _invoker: Invoker,
        _request: EgressRequest,
    ) -> BoxFuture<'static, Result<EgressResponse, EgressError>> {
        Box::pin(async { Err(EgressError::Rejected(NETWORK_DISABLED.to_string())) })
    }
}
