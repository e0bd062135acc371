//! Pure tenant policy decisions for isogate.
//!
//! This crate holds the *decision logic* the gateway needs on its hot path, with
//! no I/O, no async runtime and no configuration format knowledge:
//!
//! * [`TenantName`] — a cheap-to-clone tenant identifier;
//! * [`ApiKeyHash`] — the SHA-256 digest of a tenant API key (keys themselves are
//!   never stored);
//! * [`TenantLimits`] / [`InvocationLimits`] / [`LimitOverrides`] — resource
//!   limits, where a request may *lower* but never *raise* its tenant's limits;
//! * [`Policy`] — the set of tenants, with name lookup and bearer-key
//!   authentication;
//! * [`egress`] — which outbound `fetch()` requests a tenant's Workers may
//!   make: URL parsing ([`parse_target`]), the allow-list decision and the
//!   whole per-request plan ([`EgressPolicy::plan`]), and the one SSRF
//!   address rule ([`check_address`], [`check_name`]).
//!
//! Policies are normally built by the `isogate-config` crate from a validated
//! configuration file, but can be constructed directly (e.g. in tests).

pub mod apis;
pub mod egress;
pub mod routes;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use apis::{ApiSource, SpecSource, TenantApi};
pub use egress::{
    check_address, check_name, classify_ip, metadata_endpoint, parse_target, AddressRefusal,
    AddressScope, BlockedRange, Decision, DenyReason, Destination, EgressMode, EgressPlan,
    EgressPolicy, EgressRule, HostPattern, MetadataEndpoint, PathMatcher, PlanVerdict,
    PlannedLimiters, RateLimit, SelfListeners, Target, TargetError, TargetHost, METADATA_ENDPOINTS,
    METADATA_NAMES,
};
pub use routes::{check_worker_id, PublicRoute, RouteMatch, RouteTable};

/// The name of a tenant.
///
/// Backed by an `Arc<str>`, so cloning is a reference-count bump. Names are
/// compared, hashed and ordered by their string value; `TenantName` also
/// implements [`Borrow<str>`], so maps keyed by `TenantName` can be queried
/// with a `&str`.
///
/// This type does not validate its contents; the configuration layer enforces
/// the naming rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantName(Arc<str>);

impl TenantName {
    /// Creates a tenant name from anything convertible into an `Arc<str>`
    /// (`&str`, `String`, `Box<str>`, ...).
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }

    /// Returns the name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TenantName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for TenantName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for TenantName {
    fn from(name: &str) -> Self {
        Self::new(name)
    }
}

impl From<String> for TenantName {
    fn from(name: String) -> Self {
        Self::new(name)
    }
}

/// Length in bytes of an [`ApiKeyHash`].
const HASH_LEN: usize = 32;

/// The SHA-256 digest of a tenant API key.
///
/// Only digests are ever stored or configured, never the keys themselves.
/// Equality is evaluated in constant time. The [`Debug`](fmt::Debug)
/// representation shows only the first 8 hex characters (e.g. `c48a01f4…`)
/// so that digests do not end up in logs in full.
#[derive(Clone, Copy)]
pub struct ApiKeyHash([u8; HASH_LEN]);

impl ApiKeyHash {
    /// Parses a digest from exactly 64 hexadecimal characters (upper- or
    /// lowercase).
    ///
    /// The error message is human-readable and always starts with
    /// `"must be 64 hex characters"`, so it can be appended to a field path.
    ///
    /// # Errors
    ///
    /// If the input has the wrong length or contains a non-hex character
    /// (whitespace included).
    pub fn from_hex(hex_digest: &str) -> Result<Self, String> {
        const EXPECTED: &str = "must be 64 hex characters";
        if let Some((index, c)) = hex_digest
            .char_indices()
            .find(|(_, c)| !c.is_ascii_hexdigit())
        {
            return Err(format!(
                "{EXPECTED}, found non-hex character {c:?} at byte offset {index}"
            ));
        }
        // All characters are ASCII now, so the byte length is the char count.
        if hex_digest.len() != 2 * HASH_LEN {
            return Err(format!("{EXPECTED}, got {}", hex_digest.len()));
        }
        let mut bytes = [0u8; HASH_LEN];
        hex::decode_to_slice(hex_digest, &mut bytes).map_err(|e| format!("{EXPECTED}: {e}"))?;
        Ok(Self(bytes))
    }

    /// Computes the SHA-256 digest of a plaintext API key.
    pub fn of_key(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; HASH_LEN]) -> Self {
        Self(bytes)
    }

    /// Returns the raw digest bytes.
    pub const fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }

    /// Returns the full digest as 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl ConstantTimeEq for ApiKeyHash {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.0.ct_eq(&other.0)
    }
}

impl PartialEq for ApiKeyHash {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for ApiKeyHash {}

impl Hash for ApiKeyHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", hex::encode(&self.0[..4]))
    }
}

/// The complete resource limits of a tenant.
///
/// The first four fields bound a single invocation (see
/// [`TenantLimits::invocation`]); the others bound the tenant as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TenantLimits {
    /// CPU time per invocation, in milliseconds.
    pub cpu_ms: u64,
    /// Isolate heap size, in MiB.
    pub memory_mb: u64,
    /// Wall-clock time per invocation, in milliseconds.
    pub wall_ms: u64,
    /// Outbound `fetch` sub-requests per invocation.
    pub subrequests: u32,
    /// Invocations of this tenant that may run at the same time.
    pub max_concurrency: u32,
    /// Invocations one cached Worker runs at the same time in its isolate (interleaved at
    /// their await points).
    pub max_concurrent_requests: u32,
    /// Compiled workers of this tenant kept in the cache.
    pub max_cached_workers: u32,
    /// Maximum request body size, in bytes.
    pub max_body_bytes: u64,
    /// Requests that may wait for a concurrency slot once `max_concurrency`
    /// is reached; further requests are rejected immediately.
    pub max_queue: u32,
    /// How long a request may wait for a concurrency slot, in milliseconds.
    pub queue_timeout_ms: u64,
}

impl TenantLimits {
    /// The per-invocation subset of these limits.
    pub fn invocation(&self) -> InvocationLimits {
        InvocationLimits {
            cpu_ms: self.cpu_ms,
            memory_mb: self.memory_mb,
            wall_ms: self.wall_ms,
            subrequests: self.subrequests,
        }
    }
}

/// Limits that apply to a single worker invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InvocationLimits {
    /// CPU time, in milliseconds.
    pub cpu_ms: u64,
    /// Isolate heap size, in MiB.
    pub memory_mb: u64,
    /// Wall-clock time, in milliseconds.
    pub wall_ms: u64,
    /// Outbound `fetch` sub-requests.
    pub subrequests: u32,
}

impl InvocationLimits {
    /// Applies per-request overrides, which can only *lower* limits.
    ///
    /// Each field of the result is `min(self, override)`; a field without an
    /// override keeps its current value. A request can therefore never obtain
    /// more resources than its tenant is allowed.
    #[must_use]
    pub fn lowered_by(&self, overrides: &LimitOverrides) -> InvocationLimits {
        fn lower<T: Ord + Copy>(current: T, requested: Option<T>) -> T {
            requested.map_or(current, |r| r.min(current))
        }
        InvocationLimits {
            cpu_ms: lower(self.cpu_ms, overrides.cpu_ms),
            memory_mb: lower(self.memory_mb, overrides.memory_mb),
            wall_ms: lower(self.wall_ms, overrides.wall_ms),
            subrequests: lower(self.subrequests, overrides.subrequests),
        }
    }
}

/// Per-request limit overrides, e.g. taken from request headers.
///
/// `None` means "no override". See [`InvocationLimits::lowered_by`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LimitOverrides {
    /// Requested CPU time, in milliseconds.
    pub cpu_ms: Option<u64>,
    /// Requested heap size, in MiB.
    pub memory_mb: Option<u64>,
    /// Requested wall-clock time, in milliseconds.
    pub wall_ms: Option<u64>,
    /// Requested sub-request budget.
    pub subrequests: Option<u32>,
}

/// Everything the gateway needs to know about one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPolicy {
    /// The tenant's unique name.
    pub name: TenantName,
    /// Digests of the API keys that authenticate as this tenant.
    pub api_keys: Vec<ApiKeyHash>,
    /// The tenant's resource limits.
    pub limits: TenantLimits,
    /// Which outbound requests the tenant's Workers may make. The default
    /// denies all of them.
    pub egress: EgressPolicy,
    /// Public routes to the tenant's Workers (no API key).
    pub routes: Vec<PublicRoute>,
    /// The upstream APIs the tenant's code calls through `env` (names unique).
    pub apis: Vec<apis::TenantApi>,
}

/// The set of tenants, indexed by name and by API key digest.
#[derive(Clone)]
pub struct Policy {
    tenants: Vec<TenantPolicy>,
    /// Tenant name -> index into `tenants`.
    by_name: HashMap<TenantName, usize>,
    /// Key digest -> (tenant index, key index within that tenant).
    by_key: HashMap<[u8; HASH_LEN], (usize, usize)>,
    /// Public routes of all tenants, and the API hosts.
    routes: RouteTable,
    /// Peers whose `X-Forwarded-*` headers are believed.
    trusted_proxies: Vec<ipnet::IpNet>,
}

impl Policy {
    /// Builds a policy from a list of tenants.
    ///
    /// Names and key digests are expected to be unique (the configuration
    /// layer rejects duplicates). Should a duplicate still occur, the first
    /// occurrence wins for both name lookup and authentication.
    pub fn new(tenants: Vec<TenantPolicy>) -> Policy {
        let mut by_name = HashMap::with_capacity(tenants.len());
        let mut by_key = HashMap::new();
        for (t, tenant) in tenants.iter().enumerate() {
            by_name.entry(tenant.name.clone()).or_insert(t);
            for (k, key) in tenant.api_keys.iter().enumerate() {
                by_key.entry(*key.as_bytes()).or_insert((t, k));
            }
        }
        let routes = RouteTable::new(
            tenants
                .iter()
                .flat_map(|t| t.routes.iter().cloned())
                .collect(),
            Vec::new(),
        );
        Policy {
            tenants,
            by_name,
            by_key,
            routes,
            trusted_proxies: Vec::new(),
        }
    }

    /// The same policy with the hosts that serve the API (`listen.api_hosts`; empty: any host
    /// no route claims) and the proxies whose forwarded headers are believed.
    pub fn with_ingress(
        mut self,
        api_hosts: Vec<HostPattern>,
        trusted_proxies: Vec<ipnet::IpNet>,
    ) -> Policy {
        let routes = self
            .tenants
            .iter()
            .flat_map(|t| t.routes.iter().cloned())
            .collect();
        self.routes = RouteTable::new(routes, api_hosts);
        self.trusted_proxies = trusted_proxies;
        self
    }

    /// The public routes and API hosts.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// Whether `peer` is a proxy whose `X-Forwarded-*` headers are kept.
    pub fn is_trusted_proxy(&self, peer: std::net::IpAddr) -> bool {
        let peer = match peer {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }

    /// The client a request comes from: the TCP peer, or — when the peer is a trusted proxy —
    /// the right-most address of `X-Forwarded-For` (all its values, in order) that is not a
    /// trusted proxy itself. An entry that is not an IP address ends the walk at the last
    /// address believed, so a client cannot choose its own identity.
    pub fn client_ip<'a>(
        &self,
        peer: std::net::IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    ) -> std::net::IpAddr {
        let mut client = peer;
        if !self.is_trusted_proxy(client) {
            return client;
        }
        for value in forwarded_for.rev() {
            for entry in value.rsplit(',') {
                match entry.trim().parse::<std::net::IpAddr>() {
                    Ok(ip) => {
                        client = ip;
                        if !self.is_trusted_proxy(ip) {
                            return client;
                        }
                    }
                    Err(_) => return client,
                }
            }
        }
        client
    }

    /// All tenants, in the order they were given to [`Policy::new`].
    pub fn tenants(&self) -> &[TenantPolicy] {
        &self.tenants
    }

    /// Looks up a tenant by name.
    pub fn tenant(&self, name: &str) -> Option<&TenantPolicy> {
        self.by_name.get(name).map(|&t| &self.tenants[t])
    }

    /// Authenticates a presented bearer key.
    ///
    /// The key is hashed once with SHA-256 and looked up by digest; the match
    /// is then confirmed with a constant-time comparison against the stored
    /// digest. Returns `None` for unknown keys and for the empty key.
    pub fn authenticate(&self, presented_key: &str) -> Option<&TenantPolicy> {
        if presented_key.is_empty() {
            return None;
        }
        let presented = ApiKeyHash::of_key(presented_key);
        let &(t, k) = self.by_key.get(presented.as_bytes())?;
        let tenant = self.tenants.get(t)?;
        let stored = tenant.api_keys.get(k)?;
        bool::from(stored.ct_eq(&presented)).then_some(tenant)
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The indexes are derived data (and the key index would print full
        // digests), so only show the tenants.
        f.debug_struct("Policy")
            .field("tenants", &self.tenants)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO_KEY_SHA256: &str =
        "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c";

    fn limits() -> TenantLimits {
        TenantLimits {
            cpu_ms: 50,
            memory_mb: 64,
            wall_ms: 30_000,
            subrequests: 50,
            max_concurrency: 16,
            max_concurrent_requests: 32,
            max_cached_workers: 100,
            max_body_bytes: 1 << 20,
            max_queue: 64,
            queue_timeout_ms: 5_000,
        }
    }

    fn tenant(name: &str, keys: &[&str]) -> TenantPolicy {
        TenantPolicy {
            name: TenantName::new(name),
            api_keys: keys.iter().map(|k| ApiKeyHash::of_key(k)).collect(),
            limits: limits(),
            egress: EgressPolicy::default(),
            routes: Vec::new(),
            apis: Vec::new(),
        }
    }

    fn policy() -> Policy {
        Policy::new(vec![
            tenant("alpha", &["alpha-key-1", "alpha-key-2"]),
            tenant("beta", &["beta-key"]),
        ])
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_forwarded_it() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let p = policy().with_ingress(vec![], vec!["10.0.0.0/8".parse().unwrap()]);
        // An untrusted peer's header is ignored.
        assert_eq!(
            p.client_ip(ip("203.0.113.9"), ["1.2.3.4"].into_iter()),
            ip("203.0.113.9")
        );
        // A trusted peer: the right-most untrusted entry, across header lines.
        assert_eq!(
            p.client_ip(ip("10.0.0.2"), ["6.6.6.6, 1.2.3.4", "10.1.1.1"].into_iter()),
            ip("1.2.3.4")
        );
        assert_eq!(
            p.client_ip(ip("::ffff:10.0.0.2"), ["1.2.3.4"].into_iter()),
            ip("1.2.3.4")
        );
        // Garbage stops the walk at the last believed address.
        assert_eq!(
            p.client_ip(ip("10.0.0.2"), ["1.2.3.4, junk"].into_iter()),
            ip("10.0.0.2")
        );
        assert_eq!(
            p.client_ip(ip("10.0.0.2"), std::iter::empty()),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn known_sha256_vector() {
        let expected = ApiKeyHash::from_hex(DEMO_KEY_SHA256).expect("valid hex");
        assert_eq!(ApiKeyHash::of_key("demo-key"), expected);
        assert_eq!(ApiKeyHash::of_key("demo-key").to_hex(), DEMO_KEY_SHA256);
    }

    #[test]
    fn from_hex_is_case_insensitive() {
        let upper = ApiKeyHash::from_hex(&DEMO_KEY_SHA256.to_uppercase()).expect("valid hex");
        assert_eq!(upper, ApiKeyHash::of_key("demo-key"));
    }

    #[test]
    fn from_hex_rejects_bad_length() {
        for bad in [
            "",
            "c4",
            &DEMO_KEY_SHA256[..63],
            &format!("{DEMO_KEY_SHA256}0"),
        ] {
            let err = ApiKeyHash::from_hex(bad).expect_err(bad);
            assert!(err.starts_with("must be 64 hex characters"), "{err}");
        }
    }

    #[test]
    fn from_hex_rejects_non_hex() {
        let mut bad = DEMO_KEY_SHA256.to_owned();
        bad.replace_range(10..11, "g");
        let err = ApiKeyHash::from_hex(&bad).expect_err("non-hex");
        assert!(err.starts_with("must be 64 hex characters"), "{err}");
        assert!(err.contains("'g'"), "{err}");

        // Whitespace is not tolerated.
        assert!(ApiKeyHash::from_hex(&format!(" {}", &DEMO_KEY_SHA256[1..])).is_err());
        // 64 *bytes* containing a multi-byte character must not panic.
        let multibyte = format!("é{}", &DEMO_KEY_SHA256[2..]);
        assert_eq!(multibyte.len(), 64);
        assert!(ApiKeyHash::from_hex(&multibyte).is_err());
    }

    #[test]
    fn debug_hides_most_of_the_digest() {
        let debug = format!("{:?}", ApiKeyHash::of_key("demo-key"));
        assert_eq!(debug, "c48a01f4…");
        let policy_debug = format!("{:?}", Policy::new(vec![tenant("demo", &["demo-key"])]));
        assert!(!policy_debug.contains(DEMO_KEY_SHA256), "{policy_debug}");
    }

    #[test]
    fn tenant_name_traits() {
        let name = TenantName::new("demo");
        assert_eq!(name.to_string(), "demo");
        assert_eq!(name.as_ref(), "demo");
        assert_eq!(name, TenantName::from(String::from("demo")));
        assert!(TenantName::new("a") < TenantName::new("b"));
        let map: HashMap<TenantName, u8> = [(name.clone(), 1)].into();
        assert_eq!(map.get("demo"), Some(&1));
    }

    #[test]
    fn authenticate_finds_the_right_tenant() {
        let policy = policy();
        let name = |key| policy.authenticate(key).map(|t| t.name.as_str());
        assert_eq!(name("alpha-key-1"), Some("alpha"));
        assert_eq!(name("alpha-key-2"), Some("alpha"));
        assert_eq!(name("beta-key"), Some("beta"));
    }

    #[test]
    fn authenticate_rejects_wrong_and_empty_keys() {
        let policy = policy();
        assert!(policy.authenticate("gamma-key").is_none());
        assert!(policy.authenticate("beta-key ").is_none());
        assert!(policy.authenticate("BETA-KEY").is_none());
        assert!(policy.authenticate("").is_none());

        // Even if someone configured the digest of the empty string.
        let with_empty = Policy::new(vec![tenant("empty", &[""])]);
        assert!(with_empty.authenticate("").is_none());
    }

    #[test]
    fn tenant_lookup_by_name() {
        let policy = policy();
        assert_eq!(policy.tenants().len(), 2);
        assert_eq!(policy.tenant("beta").map(|t| t.api_keys.len()), Some(1));
        assert!(policy.tenant("gamma").is_none());
        assert!(policy.tenant("").is_none());
    }

    #[test]
    fn duplicates_resolve_to_first_occurrence() {
        let policy = Policy::new(vec![
            tenant("dup", &["shared"]),
            tenant("dup", &["other"]),
            tenant("second", &["shared"]),
        ]);
        assert!(std::ptr::eq(
            policy.tenant("dup").expect("present"),
            &policy.tenants()[0]
        ));
        let t = policy.authenticate("shared").expect("present");
        assert_eq!(t.name.as_str(), "dup");
    }

    #[test]
    fn invocation_takes_the_per_invocation_fields() {
        let l = limits();
        assert_eq!(
            l.invocation(),
            InvocationLimits {
                cpu_ms: 50,
                memory_mb: 64,
                wall_ms: 30_000,
                subrequests: 50
            }
        );
    }

    #[test]
    fn lowered_by_never_raises() {
        let bases = [
            InvocationLimits {
                cpu_ms: 0,
                memory_mb: 0,
                wall_ms: 0,
                subrequests: 0,
            },
            InvocationLimits {
                cpu_ms: 50,
                memory_mb: 64,
                wall_ms: 30_000,
                subrequests: 50,
            },
            InvocationLimits {
                cpu_ms: u64::MAX,
                memory_mb: u64::MAX,
                wall_ms: u64::MAX,
                subrequests: u32::MAX,
            },
        ];
        let values64 = [
            None,
            Some(0),
            Some(1),
            Some(49),
            Some(50),
            Some(51),
            Some(30_000),
            Some(u64::MAX),
        ];
        let values32 = [None, Some(0), Some(1), Some(50), Some(51), Some(u32::MAX)];

        for base in bases {
            for &cpu in &values64 {
                for &mem in &values64 {
                    for &wall in &values64 {
                        for &sub in &values32 {
                            let o = LimitOverrides {
                                cpu_ms: cpu,
                                memory_mb: mem,
                                wall_ms: wall,
                                subrequests: sub,
                            };
                            let got = base.lowered_by(&o);
                            // Never raises.
                            assert!(got.cpu_ms <= base.cpu_ms, "{base:?} {o:?}");
                            assert!(got.memory_mb <= base.memory_mb, "{base:?} {o:?}");
                            assert!(got.wall_ms <= base.wall_ms, "{base:?} {o:?}");
                            assert!(got.subrequests <= base.subrequests, "{base:?} {o:?}");
                            // Exactly min(base, override), unchanged without override.
                            assert_eq!(got.cpu_ms, cpu.map_or(base.cpu_ms, |v| v.min(base.cpu_ms)));
                            assert_eq!(
                                got.memory_mb,
                                mem.map_or(base.memory_mb, |v| v.min(base.memory_mb))
                            );
                            assert_eq!(
                                got.wall_ms,
                                wall.map_or(base.wall_ms, |v| v.min(base.wall_ms))
                            );
                            assert_eq!(
                                got.subrequests,
                                sub.map_or(base.subrequests, |v| v.min(base.subrequests))
                            );
                            // Idempotent.
                            assert_eq!(got.lowered_by(&o), got);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn no_overrides_is_identity() {
        let base = limits().invocation();
        assert_eq!(base.lowered_by(&LimitOverrides::default()), base);
    }
}
