//! SSRF address classification: which IP addresses outbound requests must
//! not reach.
//!
//! [`classify_ip`] returns the special-purpose range an address belongs to,
//! or `None` for an ordinary public address. The tables follow the IANA IPv4
//! and IPv6 special-purpose address registries, plus the well-known cloud
//! metadata endpoints. IPv6 is allow-listed: only global unicast
//! (`2000::/3`) outside the special ranges is public. IPv6 forms that embed
//! an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4) are classified
//! by their IPv4 address, so `::ffff:127.0.0.1` is loopback.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use super::metadata::{self, MetadataEndpoint};

/// A special-purpose address range that outbound requests must not reach.
///
/// Displayed as a noun phrase, e.g. `loopback address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlockedRange {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    Private,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// RFC 6598 shared address space (carrier-grade NAT): `100.64.0.0/10`.
    SharedCgnat,
    /// "This network" `0.0.0.0/8`, and `::`.
    Unspecified,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// The limited broadcast address `255.255.255.255`.
    Broadcast,
    /// `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`,
    /// `3fff::/20`.
    Documentation,
    /// Cloud metadata and credential endpoints: every address of
    /// [`METADATA_ENDPOINTS`](super::METADATA_ENDPOINTS) (`169.254.169.254`,
    /// `169.254.170.2`, `168.63.129.16`, `fd00:ec2::254`, ...). Never
    /// reachable, not even under `allow_private`.
    CloudMetadata,
    /// Benchmarking: `198.18.0.0/15`, `2001:2::/48`.
    Benchmarking,
    /// IETF protocol assignments: `192.0.0.0/24`, `2001::/23`.
    ProtocolAssignment,
    /// Reserved or otherwise not globally routable: `240.0.0.0/4`,
    /// `192.88.99.0/24` (deprecated 6to4 relays), Teredo `2001::/32`,
    /// deprecated site-local `fec0::/10`, SRv6 SIDs `5f00::/16`, and all IPv6
    /// outside `2000::/3` not covered by another variant.
    Reserved,
    /// IPv6 unique local addresses: `fc00::/7`.
    UniqueLocal,
    /// The IPv6 discard-only prefix `100::/64`.
    Discard,
}

impl BlockedRange {
    /// A short, stable identifier, suitable as a metrics label, e.g.
    /// `loopback` or `cloud_metadata`.
    pub const fn as_str(self) -> &'static str {
        match self {
            BlockedRange::Loopback => "loopback",
            BlockedRange::Private => "private",
            BlockedRange::LinkLocal => "link_local",
            BlockedRange::SharedCgnat => "shared_cgnat",
            BlockedRange::Unspecified => "unspecified",
            BlockedRange::Multicast => "multicast",
            BlockedRange::Broadcast => "broadcast",
            BlockedRange::Documentation => "documentation",
            BlockedRange::CloudMetadata => "cloud_metadata",
            BlockedRange::Benchmarking => "benchmarking",
            BlockedRange::ProtocolAssignment => "protocol_assignment",
            BlockedRange::Reserved => "reserved",
            BlockedRange::UniqueLocal => "unique_local",
            BlockedRange::Discard => "discard",
        }
    }

    /// Whether the range is used for private networks and hosts: loopback,
    /// private, link-local, CGNAT shared space and unique local. An egress
    /// rule with `allow_private` may reach these (see
    /// [`EgressRule::check_address`](super::EgressRule::check_address)); all
    /// other ranges stay blocked.
    pub const fn is_private_use(self) -> bool {
        matches!(
            self,
            BlockedRange::Loopback
                | BlockedRange::Private
                | BlockedRange::LinkLocal
                | BlockedRange::SharedCgnat
                | BlockedRange::UniqueLocal
        )
    }
}

impl fmt::Display for BlockedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlockedRange::Loopback => "loopback address",
            BlockedRange::Private => "private address",
            BlockedRange::LinkLocal => "link-local address",
            BlockedRange::SharedCgnat => "shared (carrier-grade NAT) address",
            BlockedRange::Unspecified => "unspecified address",
            BlockedRange::Multicast => "multicast address",
            BlockedRange::Broadcast => "broadcast address",
            BlockedRange::Documentation => "documentation address",
            BlockedRange::CloudMetadata => "cloud metadata address",
            BlockedRange::Benchmarking => "benchmarking address",
            BlockedRange::ProtocolAssignment => "IETF protocol assignment address",
            BlockedRange::Reserved => "reserved address",
            BlockedRange::UniqueLocal => "unique local address",
            BlockedRange::Discard => "discard-only address",
        })
    }
}

/// Classifies an IP address for SSRF protection.
///
/// Returns the [`BlockedRange`] the address belongs to, or `None` if it is an
/// ordinary public address that outbound requests may reach. IPv6 addresses
/// embedding an IPv4 address are classified by that IPv4 address:
///
/// * IPv4-mapped `::ffff:a.b.c.d` and IPv4-compatible `::a.b.c.d`;
/// * NAT64 `64:ff9b::/96` (last 32 bits);
/// * local-use NAT64 `64:ff9b:1::/48`: the prefix length is a deployment
///   choice, so the IPv4 address is read at every RFC 6052 position possible
///   under that prefix (/48, /56, /64 and /96), and the address is blocked if
///   any reading is (readings in `0.0.0.0/8`, i.e. zero padding, are
///   ignored). The usual /96 layout (`64:ff9b:1::a.b.c.d`) classifies
///   exactly like `a.b.c.d`;
/// * 6to4 `2002::/16` (bits 16 to 48).
///
/// Teredo (`2001::/32`) hides its IPv4 address and is always
/// [`BlockedRange::Reserved`].
pub fn classify_ip(ip: IpAddr) -> Option<BlockedRange> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)
}

const fn v6(segments: [u16; 8], prefix: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix)
}

/// IPv4 special-purpose ranges; the first match wins, so more specific
/// entries come first. Metadata endpoints are looked up before this table.
const V4_TABLE: &[(Ipv4Net, BlockedRange)] = &[
    (v4(0, 0, 0, 0, 8), BlockedRange::Unspecified),
    (v4(10, 0, 0, 0, 8), BlockedRange::Private),
    (v4(100, 64, 0, 0, 10), BlockedRange::SharedCgnat),
    (v4(127, 0, 0, 0, 8), BlockedRange::Loopback),
    (v4(169, 254, 0, 0, 16), BlockedRange::LinkLocal),
    (v4(172, 16, 0, 0, 12), BlockedRange::Private),
    (v4(192, 0, 0, 0, 24), BlockedRange::ProtocolAssignment),
    (v4(192, 0, 2, 0, 24), BlockedRange::Documentation),
    (v4(192, 88, 99, 0, 24), BlockedRange::Reserved),
    (v4(192, 168, 0, 0, 16), BlockedRange::Private),
    (v4(198, 18, 0, 0, 15), BlockedRange::Benchmarking),
    (v4(198, 51, 100, 0, 24), BlockedRange::Documentation),
    (v4(203, 0, 113, 0, 24), BlockedRange::Documentation),
    (v4(224, 0, 0, 0, 4), BlockedRange::Multicast),
    (v4(255, 255, 255, 255, 32), BlockedRange::Broadcast),
    (v4(240, 0, 0, 0, 4), BlockedRange::Reserved),
];

/// IPv6 special-purpose ranges (after the embedded-IPv4 forms are handled);
/// the first match wins, so more specific entries come first.
const V6_TABLE: &[(Ipv6Net, BlockedRange)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), BlockedRange::Unspecified),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), BlockedRange::Loopback),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), BlockedRange::Discard),
    (
        v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32),
        BlockedRange::Reserved,
    ),
    (
        v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48),
        BlockedRange::Benchmarking,
    ),
    (
        v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
        BlockedRange::ProtocolAssignment,
    ),
    (
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        BlockedRange::Documentation,
    ),
    (
        v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
        BlockedRange::Documentation,
    ),
    (
        v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16),
        BlockedRange::Reserved,
    ),
    (
        v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        BlockedRange::UniqueLocal,
    ),
    (
        v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        BlockedRange::LinkLocal,
    ),
    (
        v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        BlockedRange::Reserved,
    ),
    (
        v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
        BlockedRange::Multicast,
    ),
];

/// IPv6 global unicast; everything outside it is blocked.
const V6_GLOBAL_UNICAST: Ipv6Net = v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);

/// Prefixes of IPv6 forms embedding an IPv4 address.
const V6_MAPPED: Ipv6Net = v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96);
const V6_COMPATIBLE: Ipv6Net = v6([0, 0, 0, 0, 0, 0, 0, 0], 96);
const V6_NAT64: Ipv6Net = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
const V6_NAT64_LOCAL: Ipv6Net = v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48);
const V6_6TO4: Ipv6Net = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);

fn classify_v4(ip: Ipv4Addr) -> Option<BlockedRange> {
    if metadata::exact(IpAddr::V4(ip)).is_some() {
        return Some(BlockedRange::CloudMetadata);
    }
    V4_TABLE
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|&(_, range)| range)
}

fn classify_v6(ip: Ipv6Addr) -> Option<BlockedRange> {
    match embedded(ip) {
        Some(Embedded::One(v4)) => return classify_v4(v4),
        Some(Embedded::LocalNat64(readings)) => return classify_local_nat64(readings),
        None => {}
    }
    if metadata::exact(IpAddr::V6(ip)).is_some() {
        return Some(BlockedRange::CloudMetadata);
    }
    V6_TABLE
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|&(_, range)| range)
        .or_else(|| (!V6_GLOBAL_UNICAST.contains(&ip)).then_some(BlockedRange::Reserved))
}

/// An IPv4 address embedded in an IPv6 address.
#[derive(Debug, Clone, Copy)]
pub(super) enum Embedded {
    /// IPv4-mapped, IPv4-compatible, NAT64 `64:ff9b::/96` or 6to4: one IPv4 address.
    One(Ipv4Addr),
    /// Local-use NAT64 `64:ff9b:1::/48`: the readings for the prefix lengths /48, /56, /64 and
    /// /96 (see [`classify_local_nat64`]).
    LocalNat64([Ipv4Addr; 4]),
}

/// The IPv4 address(es) an IPv6 address of an embedding form carries; `None` if the address is
/// not of such a form. `::` and `::1` are not treated as IPv4-compatible.
pub(super) fn embedded(ip: Ipv6Addr) -> Option<Embedded> {
    let o = ip.octets();
    let at = |a: usize, b: usize, c: usize, d: usize| Ipv4Addr::new(o[a], o[b], o[c], o[d]);
    let last = at(12, 13, 14, 15);
    if V6_MAPPED.contains(&ip) || V6_NAT64.contains(&ip) {
        Some(Embedded::One(last))
    } else if V6_COMPATIBLE.contains(&ip) {
        (ip > Ipv6Addr::LOCALHOST).then_some(Embedded::One(last))
    } else if V6_NAT64_LOCAL.contains(&ip) {
        Some(Embedded::LocalNat64([
            at(6, 7, 9, 10),
            at(7, 9, 10, 11),
            at(9, 10, 11, 12),
            last,
        ]))
    } else if V6_6TO4.contains(&ip) {
        Some(Embedded::One(at(2, 3, 4, 5)))
    } else {
        None
    }
}

/// The known metadata / credential endpoint `ip` reaches, also through the IPv4-mapped,
/// IPv4-compatible, NAT64 and 6to4 forms of an IPv4 endpoint; `None` if it is none of them.
pub fn metadata_endpoint(ip: IpAddr) -> Option<&'static MetadataEndpoint> {
    if let Some(endpoint) = metadata::exact(ip) {
        return Some(endpoint);
    }
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    let readings: Vec<Ipv4Addr> = match embedded(v6)? {
        Embedded::One(v4) => vec![v4],
        Embedded::LocalNat64(readings) => readings.to_vec(),
    };
    readings
        .into_iter()
        .find_map(|v4| metadata::exact(IpAddr::V4(v4)))
}

/// Classifies an address of the local-use NAT64 prefix `64:ff9b:1::/48`,
/// given its IPv4 readings for the RFC 6052 prefix lengths /48, /56, /64 and
/// /96 (octet 8, the "u" octet, is skipped).
///
/// The prefix length is a deployment choice, so every reading counts and the
/// address is blocked if any reading is. Readings in `0.0.0.0/8` are
/// ignored: they are what the zero padding of the *other* layouts looks
/// like, and no translator forwards to them. If nothing else remains the
/// address is [`BlockedRange::Unspecified`].
fn classify_local_nat64(readings: [Ipv4Addr; 4]) -> Option<BlockedRange> {
    let mut meaningful = readings
        .into_iter()
        .filter(|v4| v4.octets()[0] != 0)
        .peekable();
    if meaningful.peek().is_none() {
        return Some(BlockedRange::Unspecified);
    }
    meaningful.find_map(classify_v4)
}
