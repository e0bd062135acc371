//! Parsing the URL of an outbound request into a [`Target`].

use std::net::IpAddr;

use url::{Host, Url};

use super::host::normalize_domain;
use super::TargetHost;

/// Where an outbound request goes, as parsed by [`parse_target`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: String,
    /// The host: a normalised domain or an IP address.
    pub host: TargetHost,
    /// The port; the scheme's default (80 or 443) when the URL has none.
    pub port: u16,
    /// The path, percent-encoded, with dot segments resolved; at least `/`.
    pub path: String,
    /// The query without the leading `?`, if the URL has one.
    pub query: Option<String>,
}

/// Why a URL cannot be the target of an outbound request.
///
/// The [`Display`](std::fmt::Display) messages are meant to be shown to the
/// Worker that passed the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The URL does not parse.
    #[error("invalid URL: {0}")]
    Invalid(String),
    /// The scheme is neither `http` nor `https`.
    #[error("URL scheme `{0}` is not allowed (only http and https)")]
    Scheme(String),
    /// The URL contains a user name or password.
    #[error("URLs with credentials (user:pass@) are not allowed")]
    Userinfo,
    /// The URL has no host.
    #[error("URL has no host")]
    NoHost,
}

/// Parses the URL of an outbound request.
///
/// Parsing follows the WHATWG URL standard (the `url` crate), exactly as a
/// browser's `fetch()` would, so the result names the host that will really
/// be contacted:
///
/// * the scheme is lower-cased and must be `http` or `https`;
/// * URLs with a user name or password are refused;
/// * domains are lower-cased and converted to ASCII with IDNA
///   (`münchen.de` → `xn--mnchen-3ya.de`), and one trailing dot is removed;
/// * IPv4 hosts in any WHATWG form (`2130706433`, `0x7f000001`,
///   `0177.0.0.1`, `0x7f.1`) become [`TargetHost::Ip`]; IPv6 hosts too,
///   including IPv4-mapped ones (`[::ffff:127.0.0.1]` stays IPv6;
///   [`classify_ip`](super::classify_ip) sees through it);
/// * the port defaults to 80 for `http` and 443 for `https`;
/// * the path is percent-encoded with `.`/`..` segments (also encoded ones)
///   resolved; the fragment is dropped.
///
/// # Errors
///
/// A [`TargetError`] describing why the URL is refused.
pub fn parse_target(url: &str) -> Result<Target, TargetError> {
    let parsed = Url::parse(url).map_err(|error| TargetError::Invalid(error.to_string()))?;
    let scheme = parsed.scheme();
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        other => return Err(TargetError::Scheme(other.to_owned())),
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(TargetError::Userinfo);
    }
    let host = match parsed.host() {
        None => return Err(TargetError::NoHost),
        Some(Host::Domain(domain)) => {
            TargetHost::Domain(normalize_domain(domain).map_err(TargetError::Invalid)?)
        }
        Some(Host::Ipv4(ip)) => TargetHost::Ip(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => TargetHost::Ip(IpAddr::V6(ip)),
    };
    Ok(Target {
        scheme: scheme.to_owned(),
        host,
        port: parsed.port().unwrap_or(default_port),
        path: parsed.path().to_owned(),
        query: parsed.query().map(str::to_owned),
    })
}
