//! One upstream exchange of an API, through the egress pipeline: the request is an ordinary
//! outbound request of the invocation (or of the gateway itself, for catalogue fetches), so the
//! tenant's egress rules, credential injection, rate limits, SSRF guard, scrubbing and the audit
//! line apply exactly as to a Worker's `fetch()`.

use futures::FutureExt;
use isogate_pool::{
    ApiErrorCode, ApiFailure, BodyStream, EgressPort, EgressRequest, EgressResponse, Fetched,
    Invoker,
};
use std::time::Duration;

/// What came back from upstream.
pub struct Upstream {
    /// The response head and the first part of its body.
    pub head: EgressResponse,
    /// The rest of a streamed body.
    pub rest: Option<BodyStream>,
}

/// Why an exchange produced no upstream response.
#[derive(Debug)]
pub enum Refused {
    /// The API failed before or while sending (policy, network, …).
    Failed {
        /// What the code sees.
        failure: ApiFailure,
        /// Whether a subrequest was spent.
        charged: bool,
    },
    /// The invocation's subrequest budget was spent.
    Budget,
}

impl Refused {
    /// A failure with `code` and `message`.
    pub fn failed(code: ApiErrorCode, message: impl Into<String>, charged: bool) -> Refused {
        Refused::Failed {
            failure: ApiFailure::new(code, message),
            charged,
        }
    }
}

/// Sends `request` for `invoker` with `left` subrequests (including this one).
pub async fn exchange(
    port: &dyn EgressPort,
    invoker: Invoker,
    request: EgressRequest,
    left: u32,
    timeout: Duration,
) -> Result<Upstream, Refused> {
    let sent = port.fetch(invoker, request, left).fuse();
    let (fetched, rest) = match tokio::time::timeout(timeout, sent).await {
        Ok(reply) => reply,
        Err(_) => {
            return Err(Refused::failed(
                ApiErrorCode::UpstreamTimeout,
                format!(
                    "the upstream did not answer within {} ms",
                    timeout.as_millis()
                ),
                true,
            ))
        }
    };
    match fetched {
        Fetched::Sent(head) => Ok(Upstream { head, rest }),
        Fetched::Answered(head) => {
            let mut failure = ApiFailure::new(
                if head.status == 429 {
                    ApiErrorCode::RateLimited
                } else {
                    ApiErrorCode::EgressAnswered
                },
                if head.status == 429 {
                    "the tenant's egress rate limit refused the call".to_string()
                } else {
                    format!("the gateway answered {} without sending", head.status)
                },
            );
            failure.status = Some(head.status);
            if let Some((_, after)) = head
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
            {
                failure.hint = Some(format!("retry after {after} s"));
            }
            Err(Refused::Failed {
                failure,
                charged: false,
            })
        }
        Fetched::Rejected {
            message,
            charged,
            detail,
        } => Err(Refused::Failed {
            // A policy denial comes with its rule, reason and hint; other refusals (the SSRF
            // guard, a connection that failed) with their message.
            failure: detail.map(|d| *d).unwrap_or_else(|| {
                ApiFailure::new(
                    if charged {
                        ApiErrorCode::UpstreamUnreachable
                    } else {
                        ApiErrorCode::EgressDenied
                    },
                    message,
                )
            }),
            charged,
        }),
        Fetched::SubrequestLimit { .. } => Err(Refused::Budget),
    }
}

impl Upstream {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next part of the body (the first part is the one that came with the head); `None`
    /// at its end.
    pub async fn next(&mut self) -> Option<Result<Vec<u8>, String>> {
        if !self.head.body.is_empty() {
            return Some(Ok(std::mem::take(&mut self.head.body)));
        }
        match &mut self.rest {
            None => None,
            Some(rest) => rest.next().await,
        }
    }

    /// The whole body, at most `max` bytes.
    pub async fn read_all(&mut self, max: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while let Some(part) = self.next().await {
            let part = part?;
            if out.len() + part.len() > max {
                return Err(format!("the upstream's answer exceeds {max} bytes"));
            }
            out.extend_from_slice(&part);
        }
        Ok(out)
    }
}
