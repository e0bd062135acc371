//! Public routes: which tenant Worker answers a request by its `Host` and path, without an API
//! key (a tenant's own users reach its Workers on the tenant's hostnames), and which hosts serve
//! the tenant API.
//!
//! One decision, [`RouteTable::resolve`], used by the ingress and by anything that explains a
//! routing decision:
//!
//! 1. A host claimed by a route with an exact pattern (`app.example.com`) belongs to that
//!    route's tenant.
//! 2. Otherwise a host named in `listen.api_hosts` serves the API.
//! 3. Otherwise the most specific wildcard (`*.apps.example.com` before `*.example.com`) claims
//!    it; a wildcard matches strict subdomains at any depth, as in egress rules.
//! 4. Otherwise: the API when `api_hosts` is empty (any host no route claims), else no route.
//!
//! Within a claimed host the longest matching `path_prefix` wins; a prefix matches at a segment
//! boundary (`/api` matches `/api` and `/api/x`, not `/apix`; `/api/` matches `/api/x` only). A
//! claimed host whose paths match no prefix is *not* handed to another pattern or to the API:
//! the host belongs to one tenant.

use std::collections::HashMap;

use crate::egress::{HostPattern, RateLimit, TargetHost};
use crate::TenantName;

/// One public route of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicRoute {
    /// Name for metrics and logs, unique within the tenant (from the configuration only).
    pub name: String,
    /// The tenant whose Worker answers.
    pub tenant: TenantName,
    /// The host (exact or `*.` wildcard; never an IP address).
    pub host: HostPattern,
    /// Path prefix, starting with `/`.
    pub path_prefix: String,
    /// The tenant's stored Worker id.
    pub worker: String,
    /// Per-client-IP rate limit (GCRA).
    pub client_rate_limit: RateLimit,
    /// Largest request head (request line and headers) accepted, in bytes.
    pub max_header_bytes: u64,
    /// Largest request body accepted, in bytes (at most the tenant's `max_body_bytes`).
    pub max_body_bytes: u64,
    /// On the plain-HTTP listener, answer with a redirect to HTTPS on this port instead of
    /// running the Worker.
    pub https_redirect: Option<u32>,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMatch<'a> {
    /// The tenant API (`/v1/…`, `/w/…`), authenticated by API key.
    Api,
    /// A public route.
    Route(&'a PublicRoute),
    /// A host no route claims while `api_hosts` is set, or a claimed host whose paths match no
    /// prefix: 404, naming nothing.
    NoRoute,
}

/// The routes of all tenants, indexed by host.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<PublicRoute>,
    /// Exact host -> route indexes, longest prefix first.
    exact: HashMap<String, Vec<usize>>,
    /// Parent domain of a `*.` pattern -> route indexes, longest prefix first.
    subdomains: HashMap<String, Vec<usize>>,
    api_hosts: Vec<HostPattern>,
}

impl RouteTable {
    /// Indexes `routes`. Hosts are expected to be claimed by one tenant only and every pattern to
    /// be a domain or wildcard (the configuration layer checks both); an IP pattern is ignored.
    pub fn new(routes: Vec<PublicRoute>, api_hosts: Vec<HostPattern>) -> RouteTable {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut subdomains: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, route) in routes.iter().enumerate() {
            match &route.host {
                HostPattern::Exact(host) => exact.entry(host.clone()).or_default().push(i),
                HostPattern::Subdomains(parent) => {
                    subdomains.entry(parent.clone()).or_default().push(i)
                }
                HostPattern::Ip(_) => {}
            }
        }
        for list in exact.values_mut().chain(subdomains.values_mut()) {
            // Longest prefix first; the configuration order breaks ties (stable sort).
            list.sort_by_key(|&i| std::cmp::Reverse(routes[i].path_prefix.len()));
        }
        RouteTable {
            routes,
            exact,
            subdomains,
            api_hosts,
        }
    }

    /// Every route, in configuration order.
    pub fn routes(&self) -> &[PublicRoute] {
        &self.routes
    }

    /// Where a request for `host` (the `Host` header as received: any case, with or without a
    /// port or a trailing dot; `None` when absent) and `path` goes.
    pub fn resolve(&self, host: Option<&str>, path: &str) -> RouteMatch<'_> {
        let Some(host) = host.and_then(request_host) else {
            return self.unclaimed();
        };
        let domain = match host {
            TargetHost::Ip(_) if self.api_hosts.iter().any(|p| p.matches(&host)) => {
                return RouteMatch::Api
            }
            TargetHost::Ip(_) => return self.unclaimed(),
            TargetHost::Domain(domain) => domain,
        };
        if let Some(list) = self.exact.get(domain.as_str()) {
            return self.by_prefix(list, path);
        }
        if self.is_api_host(&domain) {
            return RouteMatch::Api;
        }
        // Parent domains from the longest: `a.b.example.com` tries `b.example.com`, then
        // `example.com`, then `com`.
        let mut rest = domain.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(list) = self.subdomains.get(parent) {
                return self.by_prefix(list, path);
            }
            rest = parent;
        }
        self.unclaimed()
    }

    fn is_api_host(&self, domain: &str) -> bool {
        let target = TargetHost::Domain(domain.to_string());
        self.api_hosts.iter().any(|p| p.matches(&target))
    }

    fn unclaimed(&self) -> RouteMatch<'_> {
        if self.api_hosts.is_empty() {
            RouteMatch::Api
        } else {
            RouteMatch::NoRoute
        }
    }

    fn by_prefix(&self, list: &[usize], path: &str) -> RouteMatch<'_> {
        list.iter()
            .map(|&i| &self.routes[i])
            .find(|r| prefix_matches(&r.path_prefix, path))
            .map_or(RouteMatch::NoRoute, RouteMatch::Route)
    }
}

/// Whether `prefix` matches `path` at a segment boundary.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// The host of a `Host` header value: a domain (lower-cased, without port and trailing dot) or
/// an IP address (`[v6]` or dotted IPv4, with or without port); `None` for empty values and
/// anything else.
pub fn request_host(host: &str) -> Option<TargetHost> {
    if let Some(rest) = host.strip_prefix('[') {
        let (ip, port) = rest.split_once(']')?;
        let port_ok = port.is_empty()
            || port
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        return port_ok
            .then(|| ip.parse::<std::net::Ipv6Addr>().ok())
            .flatten()
            .map(|ip| TargetHost::Ip(ip.into()));
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => return None,
        None => host,
    };
    if let Ok(ip) = name.parse::<std::net::Ipv4Addr>() {
        return Some(TargetHost::Ip(ip.into()));
    }
    request_domain(name).map(TargetHost::Domain)
}

/// The domain of a `Host` header value: lower-cased, without port and trailing dot; `None` for
/// IP literals, empty values and anything that is not a plain DNS name (such hosts are never
/// claimed by a route).
pub fn request_domain(host: &str) -> Option<String> {
    if host.starts_with('[') {
        return None;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => return None,
        None => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let plain = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !plain || name.parse::<std::net::Ipv4Addr>().is_ok() {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// Checks a path prefix of a route: starts with `/`, at most 1024 bytes, visible ASCII without
/// `?` and `#`.
pub fn check_path_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("path prefix {prefix:?} must start with '/'"));
    }
    if prefix.len() > 1024 {
        return Err("path prefix must be at most 1024 bytes".into());
    }
    if let Some(c) = prefix
        .chars()
        .find(|&c| !c.is_ascii_graphic() || c == '?' || c == '#')
    {
        return Err(format!(
            "path prefix {prefix:?} must be visible ASCII without '?' and '#' (found {c:?})"
        ));
    }
    Ok(())
}

/// Worker ids: 1–128 characters of `A-Z a-z 0-9 . _ - @ : + ~`, not made of dots only (`.` and
/// `..` are path segments that clients and proxies rewrite, so such an id names no one thing).
/// The one rule for ids in URLs, the store and route targets.
pub fn check_worker_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@:+~".contains(&b));
    if !ok {
        return Err(format!(
            "invalid worker id {id:?}: use 1-128 characters of A-Z a-z 0-9 . _ - @ : + ~"
        ));
    }
    if id.bytes().all(|b| b == b'.') {
        return Err(format!(
            "invalid worker id {id:?}: an id made only of dots is a path segment (`.`, `..`), not a name"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(tenant: &str, host: &str, prefix: &str, name: &str) -> PublicRoute {
        PublicRoute {
            name: name.into(),
            tenant: TenantName::new(tenant),
            host: HostPattern::parse(host).unwrap(),
            path_prefix: prefix.into(),
            worker: "w".into(),
            client_rate_limit: RateLimit {
                per_second: 10,
                burst: 10,
            },
            max_header_bytes: 32 << 10,
            max_body_bytes: 1 << 20,
            https_redirect: None,
        }
    }

    fn name_of(m: RouteMatch<'_>) -> String {
        match m {
            RouteMatch::Api => "api".into(),
            RouteMatch::NoRoute => "none".into(),
            RouteMatch::Route(r) => format!("{}/{}", r.tenant, r.name),
        }
    }

    fn table(api_hosts: &[&str]) -> RouteTable {
        RouteTable::new(
            vec![
                route("a", "app.example.com", "/", "app"),
                route("a", "app.example.com", "/api", "app-api"),
                route("b", "*.apps.example.com", "/", "apps"),
                route("c", "*.example.com", "/", "wild"),
                route("d", "shop.test", "/store/", "store"),
            ],
            api_hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
        )
    }

    #[test]
    fn exact_host_then_longest_prefix_at_a_segment_boundary() {
        let t = table(&[]);
        let at = |h: &str, p: &str| name_of(t.resolve(Some(h), p));
        assert_eq!(at("app.example.com", "/"), "a/app");
        assert_eq!(at("APP.Example.COM:8443", "/api"), "a/app-api");
        assert_eq!(at("app.example.com.", "/api/v1/x"), "a/app-api");
        assert_eq!(at("app.example.com", "/apix"), "a/app");
        assert_eq!(at("shop.test", "/store/x"), "d/store");
        // A claimed host whose paths match no prefix is not handed to anyone else.
        assert_eq!(at("shop.test", "/store"), "none");
        assert_eq!(at("shop.test", "/v1/execute"), "none");
    }

    #[test]
    fn the_most_specific_wildcard_wins_and_exact_hosts_beat_wildcards() {
        let t = table(&[]);
        let at = |h: &str| name_of(t.resolve(Some(h), "/"));
        assert_eq!(at("x.apps.example.com"), "b/apps");
        assert_eq!(at("y.x.apps.example.com"), "b/apps");
        assert_eq!(at("apps.example.com"), "c/wild");
        assert_eq!(at("other.example.com"), "c/wild");
        assert_eq!(at("app.example.com"), "a/app");
        assert_eq!(at("example.com"), "api");
        assert_eq!(at("evilexample.com"), "api");
    }

    #[test]
    fn unclaimed_hosts_are_the_api_unless_api_hosts_are_named() {
        let open = table(&[]);
        assert_eq!(
            name_of(open.resolve(Some("localhost:8080"), "/v1/load")),
            "api"
        );
        assert_eq!(name_of(open.resolve(None, "/")), "api");
        assert_eq!(name_of(open.resolve(Some("127.0.0.1:8080"), "/")), "api");
        let closed = table(&["api.example.com", "localhost", "10.0.0.1", "::1"]);
        let at = |h: Option<&str>| name_of(closed.resolve(h, "/v1/load"));
        assert_eq!(at(Some("api.example.com")), "api");
        assert_eq!(at(Some("localhost:8080")), "api");
        assert_eq!(at(Some("unknown.test")), "none");
        assert_eq!(at(Some("127.0.0.1")), "none");
        assert_eq!(at(Some("10.0.0.1:8080")), "api");
        assert_eq!(at(Some("[::1]:8080")), "api");
        assert_eq!(at(Some("[::2]")), "none");
        assert_eq!(at(None), "none");
        // An API host beats a wildcard route, not an exact one.
        assert_eq!(at(Some("app.example.com")), "a/app");
    }

    #[test]
    fn request_hosts_are_normalised_or_refused() {
        assert_eq!(
            request_domain("A.Example.com:80").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            request_domain("a.example.com.").as_deref(),
            Some("a.example.com")
        );
        for bad in [
            "", "[::1]:80", "10.0.0.1", "a b", "a.com:x", "a.com:", "é.com", ":80",
        ] {
            assert_eq!(request_domain(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn prefixes_and_ids_are_checked() {
        assert!(check_path_prefix("/api").is_ok());
        for bad in ["api", "/a?b", "/a#", "/a b", ""] {
            assert!(check_path_prefix(bad).is_err(), "{bad:?}");
        }
        assert!(check_worker_id("app-v1.2@x").is_ok());
        for bad in ["", "..", "a/b", &"x".repeat(129)] {
            assert!(check_worker_id(bad).is_err(), "{bad:?}");
        }
    }
}
