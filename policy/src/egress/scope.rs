//! The SSRF address rule: [`check_address`] (and [`check_name`] for host names), the only place
//! that decides which socket addresses a Worker's request may connect to.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::address::{classify_ip, embedded, metadata_endpoint, BlockedRange, Embedded};
use super::metadata::{self, MetadataEndpoint};

/// The gateway's own listening sockets (ingress, admin), which no Worker may ever reach.
///
/// A listener bound to an unspecified address (`0.0.0.0`, `[::]`) accepts connections on every
/// local address, so it matches its port on the unspecified and loopback addresses and on every
/// address of [`local_ips`](Self::new) (the host's interface addresses, which the gateway reads
/// at start). Addresses are compared after unwrapping IPv4-mapped, IPv4-compatible, NAT64 and
/// 6to4 forms. A listener configured with port 0 (an ephemeral port) cannot be matched.
///
/// Cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelfListeners {
    sockets: Arc<[SocketAddr]>,
    local_ips: Arc<[IpAddr]>,
}

impl SelfListeners {
    /// The listeners `sockets`, with `local_ips` the addresses a wildcard bind also accepts on.
    pub fn new(
        sockets: impl IntoIterator<Item = SocketAddr>,
        local_ips: impl IntoIterator<Item = IpAddr>,
    ) -> SelfListeners {
        SelfListeners {
            sockets: sockets.into_iter().collect(),
            local_ips: local_ips.into_iter().map(canonical).collect(),
        }
    }

    /// The listening sockets, as given.
    pub fn sockets(&self) -> &[SocketAddr] {
        &self.sockets
    }

    /// The listener a connection to `addr` would reach, if any.
    pub fn find(&self, addr: SocketAddr) -> Option<SocketAddr> {
        let ip = canonical(addr.ip());
        self.sockets.iter().copied().find(|listener| {
            listener.port() != 0
                && listener.port() == addr.port()
                && if listener.ip().is_unspecified() {
                    ip.is_unspecified() || ip.is_loopback() || self.local_ips.contains(&ip)
                } else {
                    canonical(listener.ip()) == ip
                }
        })
    }
}

/// `ip`, or the IPv4 address it embeds (IPv4-mapped, -compatible, NAT64 /96, 6to4).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match embedded(v6) {
            Some(Embedded::One(v4)) => IpAddr::V4(v4),
            _ => ip,
        },
        v4 => v4,
    }
}

/// What a request may connect to: the `allow_private` of the rule it fully matched (see
/// [`EgressPlan::allow_private`](super::EgressPlan::allow_private)) and the gateway's own
/// listeners, which are never reachable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressScope {
    /// Whether the private-use ranges ([`BlockedRange::is_private_use`]) are open.
    pub allow_private: bool,
    /// The gateway's listeners.
    pub self_listeners: SelfListeners,
}

impl AddressScope {
    /// A scope.
    pub fn new(allow_private: bool, self_listeners: SelfListeners) -> AddressScope {
        AddressScope {
            allow_private,
            self_listeners,
        }
    }
}

/// An address about to be connected to: an IP, with the port when it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Destination {
    /// The address.
    pub ip: IpAddr,
    /// The port; `None` when only the address is checked (then the gateway's listeners cannot
    /// be recognised: the connect-time check, which knows the port, must run too).
    pub port: Option<u16>,
}

impl From<IpAddr> for Destination {
    fn from(ip: IpAddr) -> Self {
        Destination { ip, port: None }
    }
}

impl From<SocketAddr> for Destination {
    fn from(addr: SocketAddr) -> Self {
        Destination {
            ip: addr.ip(),
            port: Some(addr.port()),
        }
    }
}

/// Why an address (or host name) may not be connected to. [`as_str`](Self::as_str) is the
/// stable metric/audit label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressRefusal {
    /// A known cloud metadata / credential endpoint: never reachable.
    Metadata(&'static MetadataEndpoint),
    /// A host name of a metadata / credential service (see
    /// [`METADATA_NAMES`](super::METADATA_NAMES)): never reachable.
    MetadataName(&'static str),
    /// One of the gateway's own listeners: never reachable.
    SelfListener(SocketAddr),
    /// A special-purpose range the scope does not open (private-use ranges without
    /// `allow_private`; every other special range always).
    Range(BlockedRange),
}

impl AddressRefusal {
    /// Stable label: the range's label, `cloud_metadata` or `self_listener`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            AddressRefusal::Metadata(_) | AddressRefusal::MetadataName(_) => "cloud_metadata",
            AddressRefusal::SelfListener(_) => "self_listener",
            AddressRefusal::Range(range) => range.as_str(),
        }
    }

    /// The special-purpose range behind the refusal: metadata refusals are
    /// [`BlockedRange::CloudMetadata`]; `None` for a gateway listener (which may be any address).
    pub const fn range(&self) -> Option<BlockedRange> {
        match self {
            AddressRefusal::Metadata(_) | AddressRefusal::MetadataName(_) => {
                Some(BlockedRange::CloudMetadata)
            }
            AddressRefusal::SelfListener(_) => None,
            AddressRefusal::Range(range) => Some(*range),
        }
    }

    /// Whether no scope could ever open it (`allow_private` included).
    pub const fn is_absolute(&self) -> bool {
        match self {
            AddressRefusal::Range(range) => !range.is_private_use(),
            _ => true,
        }
    }
}

/// Displayed as a noun phrase: `a loopback address`, `a cloud metadata endpoint (AWS ECS task
/// credentials)`, `the gateway's own listener 127.0.0.1:9090`.
impl fmt::Display for AddressRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressRefusal::Metadata(endpoint) => {
                write!(f, "a cloud metadata address ({})", endpoint.service)
            }
            AddressRefusal::MetadataName(service) => {
                write!(f, "a cloud metadata host name ({service})")
            }
            AddressRefusal::SelfListener(listener) => {
                write!(f, "the gateway's own listener {listener}")
            }
            AddressRefusal::Range(range) => write!(f, "a {range}"),
        }
    }
}

impl std::error::Error for AddressRefusal {}

/// The SSRF address rule: whether a request with `scope` may connect to `dest`.
///
/// In order:
/// 1. a known metadata / credential endpoint ([`METADATA_ENDPOINTS`](super::METADATA_ENDPOINTS),
///    also in embedded IPv6 forms) is refused;
/// 2. one of the gateway's own listeners is refused (only recognisable when the port is known);
/// 3. a public address is allowed;
/// 4. a private-use address (loopback, RFC 1918, link-local, CGNAT, unique local) is allowed
///    only with [`AddressScope::allow_private`];
/// 5. every other special-purpose address is refused.
///
/// # Errors
///
/// The [`AddressRefusal`].
pub fn check_address(
    dest: impl Into<Destination>,
    scope: &AddressScope,
) -> Result<(), AddressRefusal> {
    let dest = dest.into();
    if let Some(endpoint) = metadata_endpoint(dest.ip) {
        return Err(AddressRefusal::Metadata(endpoint));
    }
    if let Some(port) = dest.port {
        if let Some(listener) = scope.self_listeners.find(SocketAddr::new(dest.ip, port)) {
            return Err(AddressRefusal::SelfListener(listener));
        }
    }
    match classify_ip(dest.ip) {
        None => Ok(()),
        Some(range) if scope.allow_private && range.is_private_use() => Ok(()),
        Some(range) => Err(AddressRefusal::Range(range)),
    }
}

/// The name part of the SSRF rule, checked before any DNS lookup: host names of metadata /
/// credential services ([`METADATA_NAMES`](super::METADATA_NAMES), ASCII case-insensitive,
/// one trailing dot ignored) are refused. Every address a name resolves to must then pass
/// [`check_address`].
///
/// # Errors
///
/// [`AddressRefusal::MetadataName`].
pub fn check_name(name: &str) -> Result<(), AddressRefusal> {
    match metadata::name_service(name) {
        Some(service) => Err(AddressRefusal::MetadataName(service)),
        None => Ok(()),
    }
}
