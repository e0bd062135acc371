//! Public routes (a tenant's Workers serving its own users on its hostnames, without an API key):
//! the per-client rate limiters, the forwarded headers and the HTTPS redirect. Which route a
//! request takes is decided by `isogate_policy::RouteTable::resolve`; the ingress runs the rest.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use isogate_policy::{Policy, PublicRoute, RateLimit};
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Entries a client limiter keeps before it forgets the clients that are back to a full burst
/// (checked every [`SWEEP_EVERY`] requests).
const SWEEP_ABOVE: usize = 10_000;
/// Requests between two checks of a client limiter's size.
const SWEEP_EVERY: u64 = 1024;

/// A route's per-client rate limiter (GCRA; IPv4 per address, IPv6 per /64, the smallest block
/// a single subscriber usually gets).
pub struct ClientLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU64,
    limit: RateLimit,
    /// Only read on refusal (creating a clock calibrates it).
    clock: DefaultClock,
}

impl ClientLimiter {
    /// A limiter for `limit` (both values are at least 1, as the configuration checks).
    pub fn new(limit: RateLimit) -> ClientLimiter {
        let rate = NonZeroU32::new(limit.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limit.burst).unwrap_or(rate);
        ClientLimiter {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            checks: AtomicU64::new(0),
            limit,
            clock: DefaultClock::default(),
        }
    }

    /// The limit it enforces.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one cell for `client`; on refusal, how long to wait.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1
            && self.limiter.len() > SWEEP_ABOVE
        {
            // Clients whose bucket is full again are the same as unseen ones: forget them, so
            // that a spray of source addresses cannot grow the table without end.
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter
            .check_key(&client_key(client))
            .map_err(|n| n.wait_time_from(self.clock.now()))
    }

    /// Clients tracked now.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// The key a client is limited by: IPv4 (or IPv4-mapped IPv6) per address, IPv6 per /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `listen.ingress`.
    Http,
    /// `listen.ingress_tls`.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// What the gateway tells a Worker about where its request came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The client's address (see [`Policy::client_ip`]).
    pub client: IpAddr,
    /// The scheme the client used: the listener's, or a trusted proxy's `X-Forwarded-Proto`.
    pub proto: &'static str,
    /// Whether the incoming forwarding headers are kept (the peer is a trusted proxy).
    pub trusted: bool,
    /// The value of `X-Forwarded-For` to send.
    pub forwarded_for: String,
    /// The value of `X-Forwarded-Host` to send.
    pub forwarded_host: String,
}

impl Forwarded {
    /// Works out the forwarding facts of a request from `peer` on `scheme` for `host`.
    pub fn of(
        policy: &Policy,
        peer: IpAddr,
        scheme: Scheme,
        host: &str,
        headers: &http::HeaderMap,
    ) -> Forwarded {
        let values = |name: &str| -> Vec<&str> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        let trusted = policy.is_trusted_proxy(peer);
        let incoming_for = values("x-forwarded-for");
        let client = policy.client_ip(peer, incoming_for.iter().copied());
        if !trusted {
            return Forwarded {
                client,
                proto: scheme.as_str(),
                trusted,
                forwarded_for: peer.to_string(),
                forwarded_host: host.to_string(),
            };
        }
        let proto = match values("x-forwarded-proto").first().map(|p| p.trim()) {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            Some(p) if p.eq_ignore_ascii_case("http") => "http",
            _ => scheme.as_str(),
        };
        let mut forwarded_for = incoming_for.join(", ");
        if !forwarded_for.is_empty() {
            forwarded_for.push_str(", ");
        }
        forwarded_for.push_str(&peer.to_string());
        let forwarded_host = values("x-forwarded-host")
            .first()
            .map(|h| h.to_string())
            .unwrap_or_else(|| host.to_string());
        Forwarded {
            client,
            proto,
            trusted,
            forwarded_for,
            forwarded_host,
        }
    }

    /// Whether an incoming header is dropped: the `X-Forwarded-*` ones always (the gateway sends
    /// its own, built from them when the peer is trusted), `Forwarded` and `X-Real-IP` from
    /// untrusted peers.
    pub fn replaces(&self, name: &str) -> bool {
        match name {
            "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" => true,
            "forwarded" | "x-real-ip" => !self.trusted,
            _ => false,
        }
    }

    /// The headers the gateway adds.
    pub fn headers(&self) -> [(String, String); 3] {
        [
            ("x-forwarded-for".into(), self.forwarded_for.clone()),
            ("x-forwarded-proto".into(), self.proto.into()),
            ("x-forwarded-host".into(), self.forwarded_host.clone()),
        ]
    }
}

/// The size of a request head as the client sent it (request line and header lines, with their
/// line ends), for a route's `max_header_bytes`.
pub fn head_bytes(header: &pingora::http::RequestHeader) -> u64 {
    let line = header.method.as_str().len() + header.raw_path().len() + 12;
    let fields: usize = header
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    (line + fields + 2) as u64
}

/// Where a plain-HTTP request to an `https_redirect` route is sent: the same host (without its
/// port), `https_port` unless it is 443, the same path and query.
pub fn https_location(host: &str, https_port: u32, path_and_query: &str) -> String {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    if https_port == 443 {
        format!("https://{name}{path_and_query}")
    } else {
        format!("https://{name}:{https_port}{path_and_query}")
    }
}

/// The label of a route in metrics: its name, unique within the tenant.
pub fn label(route: &PublicRoute) -> &str {
    &route.name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(trusted: &[&str]) -> Policy {
        Policy::new(vec![])
            .with_ingress(vec![], trusted.iter().map(|t| t.parse().unwrap()).collect())
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn an_untrusted_peer_cannot_choose_its_forwarded_identity() {
        let incoming = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.test"),
        ]);
        let f = Forwarded::of(
            &policy(&["10.0.0.0/8"]),
            "203.0.113.7".parse().unwrap(),
            Scheme::Http,
            "app.test",
            &incoming,
        );
        assert_eq!(f.client, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(
            f.headers(),
            [
                ("x-forwarded-for".into(), "203.0.113.7".into()),
                ("x-forwarded-proto".into(), "http".into()),
                ("x-forwarded-host".into(), "app.test".into()),
            ]
        );
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
            "x-real-ip",
        ] {
            assert!(f.replaces(name), "{name}");
        }
    }

    #[test]
    fn a_trusted_proxy_is_believed_and_appended_to() {
        let incoming = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.test"),
            ("x-real-ip", "198.51.100.1"),
        ]);
        let f = Forwarded::of(
            &policy(&["10.0.0.0/8"]),
            "10.0.0.5".parse().unwrap(),
            Scheme::Http,
            "internal:8080",
            &incoming,
        );
        assert_eq!(f.client, "198.51.100.1".parse::<IpAddr>().unwrap());
        assert_eq!(f.proto, "https");
        assert_eq!(f.forwarded_for, "198.51.100.1, 10.0.0.5");
        assert_eq!(f.forwarded_host, "shop.test");
        assert!(f.replaces("x-forwarded-for"));
        assert!(!f.replaces("x-real-ip") && !f.replaces("forwarded"));
    }

    #[test]
    fn clients_are_limited_apart_and_ipv6_per_64() {
        let l = ClientLimiter::new(RateLimit {
            per_second: 1,
            burst: 2,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(l.check(a).is_ok() && l.check(a).is_ok());
        let wait = l.check(a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(l.check("192.0.2.2".parse().unwrap()).is_ok());
        // Two addresses of one /64 share a bucket; another /64 does not.
        assert!(l.check("2001:db8::1".parse().unwrap()).is_ok());
        assert!(l.check("2001:db8::2".parse().unwrap()).is_ok());
        assert!(l.check("2001:db8::3".parse().unwrap()).is_err());
        assert!(l.check("2001:db8:0:1::1".parse().unwrap()).is_ok());
        assert_eq!(client_key("::ffff:192.0.2.1".parse().unwrap()), a);
    }

    #[test]
    fn redirects_keep_the_path_and_name_the_https_port() {
        assert_eq!(
            https_location("app.test:8080", 443, "/a?b=1"),
            "https://app.test/a?b=1"
        );
        assert_eq!(
            https_location("app.test", 8443, "/"),
            "https://app.test:8443/"
        );
        assert_eq!(https_location("[::1]:80", 443, "/"), "https://[::1]/");
    }
}
