//! Host patterns of egress rules and the hosts they are matched against.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::Host;

/// Maximum length of a DNS name in its dotted text form, without the
/// trailing dot.
const MAX_DOMAIN_LEN: usize = 253;
/// Maximum length of one DNS label.
const MAX_LABEL_LEN: usize = 63;

/// The host of an outbound request, as produced by
/// [`parse_target`](super::parse_target).
///
/// Domains are expected in their normalised form (lower-case ASCII, IDNA
/// punycode, no trailing dot); [`HostPattern::matches`] nevertheless compares
/// ASCII case-insensitively and ignores one trailing dot.
///
/// Displayed as the domain, the IPv4 address, or the IPv6 address in
/// brackets (`[::1]`), i.e. as the host appears in a URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetHost {
    /// A DNS name.
    Domain(String),
    /// An IP address literal.
    Ip(IpAddr),
}

impl fmt::Display for TargetHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetHost::Domain(domain) => f.write_str(domain),
            TargetHost::Ip(ip) => fmt_ip(ip, f),
        }
    }
}

/// Which hosts an egress rule applies to.
///
/// Parsed with [`HostPattern::parse`]; displayed as its normalised pattern
/// text (`api.github.com`, `*.example.com`, `127.0.0.1`, `[::1]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this domain (normalised: lower-case ASCII, punycode, no
    /// trailing dot).
    Exact(String),
    /// Strict subdomains of this domain, at any depth. Written
    /// `*.example.com`, stored as `example.com`: matches `a.example.com` and
    /// `a.b.example.com`, but not `example.com` itself.
    Subdomains(String),
    /// Exactly this IP address. IP patterns match IP-literal hosts only, and
    /// only the same address in the same family: a `127.0.0.1` pattern does
    /// not match `[::ffff:127.0.0.1]`.
    Ip(IpAddr),
}

impl HostPattern {
    /// Parses and normalises a host pattern.
    ///
    /// Accepted forms:
    ///
    /// * a domain name, e.g. `api.github.com` or `münchen.de`: lower-cased,
    ///   converted to ASCII with IDNA (punycode), one trailing dot removed;
    /// * `*.` followed by a domain name: strict subdomains of that domain;
    /// * an IPv4 address in dotted-decimal form (`127.0.0.1`);
    /// * an IPv6 address, with or without brackets (`[::1]`, `::1`).
    ///
    /// Rejected, among others: the empty string, `*` alone, a `*` anywhere
    /// but as the entire first label (`a.*.com`, `**.x.com`, `*x.com`), `*.`
    /// without a domain, whitespace, URLs (`https://x.com`), ports
    /// (`x.com:443`), empty or over-long labels, and IPv4 shorthand forms
    /// such as `2130706433`.
    ///
    /// # Errors
    ///
    /// A human-readable description of the problem.
    pub fn parse(pattern: &str) -> Result<HostPattern, String> {
        if pattern.is_empty() {
            return Err("host pattern must not be empty".to_owned());
        }
        if pattern.contains("://") || pattern.contains('/') {
            return Err(format!(
                "host pattern {pattern:?} looks like a URL; give only the host name, \
                 e.g. `example.com`"
            ));
        }
        if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "host pattern {pattern:?} must not contain whitespace or control characters"
            ));
        }
        if let Some(bracketed) = pattern.strip_prefix('[') {
            return parse_bracketed_ipv6(pattern, bracketed);
        }
        if pattern.contains(':') {
            return parse_unbracketed_ipv6(pattern);
        }

        let (wildcard, domain) = match pattern.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        if domain.contains('*') {
            return Err(format!(
                "invalid host pattern {pattern:?}: `*` is only allowed as the entire first \
                 label, as in `*.example.com`"
            ));
        }
        if domain.is_empty() {
            return Err(format!(
                "invalid host pattern {pattern:?}: `*.` must be followed by a domain name"
            ));
        }
        if let Some(c) = domain
            .chars()
            .find(|&c| c.is_ascii() && !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
        {
            return Err(format!(
                "invalid host pattern {pattern:?}: invalid character {c:?}"
            ));
        }

        match Host::parse(domain) {
            Err(error) => Err(format!("invalid host pattern {pattern:?}: {error}")),
            Ok(Host::Domain(ascii)) => {
                let ascii = normalize_domain(&ascii)
                    .map_err(|problem| format!("invalid host pattern {pattern:?}: {problem}"))?;
                Ok(if wildcard {
                    HostPattern::Subdomains(ascii)
                } else {
                    HostPattern::Exact(ascii)
                })
            }
            Ok(Host::Ipv4(_)) if wildcard => Err(format!(
                "invalid host pattern {pattern:?}: `*.` must be followed by a domain name, \
                 not an IP address"
            )),
            Ok(Host::Ipv4(ip)) => {
                // WHATWG parsing also accepts shorthand forms (`2130706433`, `0x7f.1`,
                // `127.1`); a configuration must spell the address out.
                if domain.parse::<Ipv4Addr>().is_err() {
                    return Err(format!(
                        "invalid host pattern {pattern:?}: IPv4 addresses must be written in \
                         dotted-decimal form, e.g. `{ip}`"
                    ));
                }
                Ok(HostPattern::Ip(IpAddr::V4(ip)))
            }
            // Host::parse only yields IPv6 for bracketed input, handled above.
            Ok(Host::Ipv6(ip)) => Ok(HostPattern::Ip(IpAddr::V6(ip))),
        }
    }

    /// Whether this pattern matches `host`.
    ///
    /// Domains are compared ASCII case-insensitively, ignoring one trailing
    /// dot of `host`; a [`Subdomains`](Self::Subdomains) pattern matches only
    /// at a label boundary (`*.example.com` does not match
    /// `evilexample.com`). Domain patterns never match IP hosts and vice
    /// versa.
    pub fn matches(&self, host: &TargetHost) -> bool {
        match (self, host) {
            (HostPattern::Exact(pattern), TargetHost::Domain(domain)) => {
                trim_dot(domain).eq_ignore_ascii_case(pattern)
            }
            (HostPattern::Subdomains(parent), TargetHost::Domain(domain)) => {
                is_strict_subdomain(trim_dot(domain).as_bytes(), parent.as_bytes())
            }
            (HostPattern::Ip(pattern), TargetHost::Ip(ip)) => pattern == ip,
            _ => false,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(domain) => f.write_str(domain),
            HostPattern::Subdomains(parent) => write!(f, "*.{parent}"),
            HostPattern::Ip(ip) => fmt_ip(ip, f),
        }
    }
}

/// Formats an IP address as it appears in a URL host (IPv6 in brackets).
fn fmt_ip(ip: &IpAddr, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match ip {
        IpAddr::V4(v4) => write!(f, "{v4}"),
        IpAddr::V6(v6) => write!(f, "[{v6}]"),
    }
}

fn parse_bracketed_ipv6(pattern: &str, bracketed: &str) -> Result<HostPattern, String> {
    let Some((inner, after)) = bracketed.split_once(']') else {
        return Err(format!("invalid host pattern {pattern:?}: missing `]`"));
    };
    if let Some(port) = after.strip_prefix(':') {
        return Err(port_error(pattern, port));
    }
    if !after.is_empty() {
        return Err(format!(
            "invalid host pattern {pattern:?}: unexpected text after `]`"
        ));
    }
    inner
        .parse::<Ipv6Addr>()
        .map(|ip| HostPattern::Ip(IpAddr::V6(ip)))
        .map_err(|_| format!("invalid host pattern {pattern:?}: invalid IPv6 address"))
}

fn parse_unbracketed_ipv6(pattern: &str) -> Result<HostPattern, String> {
    if let Ok(ip) = pattern.parse::<Ipv6Addr>() {
        return Ok(HostPattern::Ip(IpAddr::V6(ip)));
    }
    match pattern.rsplit_once(':') {
        Some((host, port))
            if !host.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Err(port_error(pattern, port))
        }
        _ => Err(format!(
            "invalid host pattern {pattern:?}: `:` is only allowed in IPv6 addresses"
        )),
    }
}

fn port_error(pattern: &str, port: &str) -> String {
    format!(
        "invalid host pattern {pattern:?}: must not contain a port (`:{port}`); \
         list allowed ports in `ports`"
    )
}

/// Removes one trailing dot and checks the label structure of an ASCII
/// domain returned by [`Host::parse`].
pub(super) fn normalize_domain(ascii: &str) -> Result<String, String> {
    let domain = trim_dot(ascii);
    if domain.is_empty() {
        return Err("empty host name".to_owned());
    }
    if domain.len() > MAX_DOMAIN_LEN {
        return Err(format!(
            "host name is longer than {MAX_DOMAIN_LEN} characters"
        ));
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err("host name contains an empty label".to_owned());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "host name label {label:?} is longer than {MAX_LABEL_LEN} characters"
            ));
        }
    }
    Ok(domain.to_ascii_lowercase())
}

/// `domain` without one trailing dot.
fn trim_dot(domain: &str) -> &str {
    domain.strip_suffix('.').unwrap_or(domain)
}

/// Whether `domain` ends with `.` + `parent` and has at least one more
/// character before that dot (ASCII case-insensitive).
fn is_strict_subdomain(domain: &[u8], parent: &[u8]) -> bool {
    let Some(dot) = domain.len().checked_sub(parent.len() + 1) else {
        return false;
    };
    dot > 0 && domain[dot] == b'.' && domain[dot + 1..].eq_ignore_ascii_case(parent)
}
