//! Unit tests of the egress policy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|_| panic!("test address {text}"))
}

fn domain(name: &str) -> TargetHost {
    TargetHost::Domain(name.to_owned())
}

fn pattern(text: &str) -> HostPattern {
    HostPattern::parse(text).unwrap_or_else(|error| panic!("{text}: {error}"))
}

fn target(url: &str) -> Target {
    parse_target(url).unwrap_or_else(|error| panic!("{url}: {error}"))
}

fn rule(host: &str) -> EgressRule {
    EgressRule {
        name: host.to_owned(),
        host: pattern(host),
        ports: DEFAULT_PORTS.to_vec(),
        methods: None,
        paths: None,
        credential: None,
        rate_limit: None,
        allow_private: false,
    }
}

fn policy(rules: Vec<EgressRule>) -> EgressPolicy {
    EgressPolicy {
        rules,
        ..EgressPolicy::default()
    }
}

// ------------------------------------------------------------ host patterns

#[test]
fn host_pattern_parsing_normalises() {
    let cases: &[(&str, HostPattern)] = &[
        (
            "api.github.com",
            HostPattern::Exact("api.github.com".into()),
        ),
        (
            "API.GitHub.COM",
            HostPattern::Exact("api.github.com".into()),
        ),
        (
            "api.github.com.",
            HostPattern::Exact("api.github.com".into()),
        ),
        ("münchen.de", HostPattern::Exact("xn--mnchen-3ya.de".into())),
        ("localhost", HostPattern::Exact("localhost".into())),
        ("_dmarc.x.com", HostPattern::Exact("_dmarc.x.com".into())),
        (
            "*.example.com",
            HostPattern::Subdomains("example.com".into()),
        ),
        (
            "*.Example.COM.",
            HostPattern::Subdomains("example.com".into()),
        ),
        ("*.com", HostPattern::Subdomains("com".into())),
        ("127.0.0.1", HostPattern::Ip(ip("127.0.0.1"))),
        ("[::1]", HostPattern::Ip(ip("::1"))),
        ("::1", HostPattern::Ip(ip("::1"))),
        ("[2001:DB8::1]", HostPattern::Ip(ip("2001:db8::1"))),
        ("::ffff:127.0.0.1", HostPattern::Ip(ip("::ffff:127.0.0.1"))),
    ];
    for (text, expected) in cases {
        assert_eq!(&pattern(text), expected, "{text}");
    }
}

#[test]
fn host_pattern_display_is_the_normalised_text() {
    for (text, display) in [
        ("API.GitHub.com.", "api.github.com"),
        ("*.Example.com", "*.example.com"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "[::1]"),
        ("[::1]", "[::1]"),
    ] {
        assert_eq!(pattern(text).to_string(), display, "{text}");
    }
}

#[test]
fn host_pattern_rejects_invalid_patterns() {
    let long_label = format!("{}.com", "a".repeat(64));
    let long_name = format!("{}com", "abcdefghi.".repeat(26));
    let cases: &[(&str, &str)] = &[
        ("", "must not be empty"),
        ("*", "`*` is only allowed"),
        ("a.*.com", "`*` is only allowed"),
        ("**.x.com", "`*` is only allowed"),
        ("*x.com", "`*` is only allowed"),
        ("*.*.x.com", "`*` is only allowed"),
        ("*.", "must be followed by a domain name"),
        ("*.127.0.0.1", "not an IP address"),
        ("a b.com", "whitespace"),
        (" x.com", "whitespace"),
        ("x.com\n", "whitespace"),
        ("https://x.com", "looks like a URL"),
        ("x.com/path", "looks like a URL"),
        ("x.com:443", "must not contain a port"),
        ("127.0.0.1:80", "must not contain a port"),
        ("[::1]:443", "must not contain a port"),
        ("[::1", "missing `]`"),
        ("[::1]x", "unexpected text"),
        ("[x.com]", "invalid IPv6 address"),
        ("a:b:x.com", "only allowed in IPv6"),
        ("user@x.com", "invalid character '@'"),
        ("x%41.com", "invalid character '%'"),
        ("x..com", "empty label"),
        ("x.com..", "empty label"),
        (".", "empty"),
        (long_label.as_str(), "longer than 63"),
        (long_name.as_str(), "longer than 253"),
        ("2130706433", "dotted-decimal"),
        ("0x7f.1", "dotted-decimal"),
        ("127.1", "dotted-decimal"),
        ("xn--", "invalid host pattern"),
    ];
    for (text, expected) in cases {
        match HostPattern::parse(text) {
            Ok(parsed) => panic!("{text:?} should be rejected, got {parsed:?}"),
            Err(message) => assert!(message.contains(expected), "{text:?}: {message}"),
        }
    }
}

#[test]
fn host_matching_table() {
    let cases: &[(&str, TargetHost, bool)] = &[
        // Exact.
        ("api.github.com", domain("api.github.com"), true),
        ("api.github.com", domain("API.GitHub.com"), true),
        ("api.github.com", domain("api.github.com."), true),
        ("api.github.com", domain("github.com"), false),
        ("api.github.com", domain("x.api.github.com"), false),
        ("api.github.com", domain("api.github.com.evil"), false),
        ("API.GITHUB.COM.", domain("api.github.com"), true),
        // Strict subdomains.
        ("*.example.com", domain("a.example.com"), true),
        ("*.example.com", domain("A.Example.Com"), true),
        ("*.example.com", domain("a.b.example.com"), true),
        ("*.example.com", domain("a.example.com."), true),
        ("*.example.com", domain("example.com"), false),
        ("*.example.com", domain("example.com."), false),
        ("*.example.com", domain(".example.com"), false),
        ("*.example.com", domain("evilexample.com"), false),
        ("*.example.com", domain("a.evilexample.com"), false),
        ("*.example.com", domain("example.com.evil.org"), false),
        ("*.example.com", domain("com"), false),
        ("*.example.com", domain("é.example.com"), true),
        ("*.example.com", domain("éxample.com"), false),
        // IP patterns.
        ("127.0.0.1", TargetHost::Ip(ip("127.0.0.1")), true),
        ("127.0.0.1", TargetHost::Ip(ip("127.0.0.2")), false),
        ("127.0.0.1", TargetHost::Ip(ip("::ffff:127.0.0.1")), false),
        ("127.0.0.1", domain("127.0.0.1"), false),
        ("[::1]", TargetHost::Ip(ip("::1")), true),
        ("::1", TargetHost::Ip(ip("::1")), true),
        ("[::1]", TargetHost::Ip(ip("127.0.0.1")), false),
        ("[::1]", domain("localhost"), false),
        // Domains never match IPs.
        ("localhost", TargetHost::Ip(ip("127.0.0.1")), false),
    ];
    for (text, host, expected) in cases {
        assert_eq!(pattern(text).matches(host), *expected, "{text} vs {host:?}");
    }
}

#[test]
fn host_matching_after_url_parsing() {
    let github = pattern("api.github.com");
    assert!(github.matches(&target("HTTP://API.GitHub.COM./x").host));
    let subdomains = pattern("*.münchen.de");
    assert!(subdomains.matches(&target("https://www.MÜNCHEN.de/").host));
    assert!(!subdomains.matches(&target("https://münchen.de/").host));
    let loopback = pattern("127.0.0.1");
    assert!(loopback.matches(&target("http://2130706433/").host));
    assert!(pattern("[::1]").matches(&target("http://[0:0::1]:8080/").host));
}

// ---------------------------------------------------------------- targets

#[test]
fn parse_target_table() {
    let loopback = TargetHost::Ip(ip("127.0.0.1"));
    let cases: &[(&str, TargetHost, u16, &str, Option<&str>)] = &[
        ("http://2130706433/", loopback.clone(), 80, "/", None),
        ("http://0x7f000001/", loopback.clone(), 80, "/", None),
        ("http://0177.0.0.1/", loopback.clone(), 80, "/", None),
        ("http://0x7f.1/", loopback.clone(), 80, "/", None),
        ("http://127.1:8080", loopback.clone(), 8080, "/", None),
        (
            "http://0.0.0.0/",
            TargetHost::Ip(ip("0.0.0.0")),
            80,
            "/",
            None,
        ),
        ("http://[::1]/", TargetHost::Ip(ip("::1")), 80, "/", None),
        (
            "http://[::ffff:127.0.0.1]/",
            TargetHost::Ip(ip("::ffff:127.0.0.1")),
            80,
            "/",
            None,
        ),
        (
            "http://169.254.169.254/latest",
            TargetHost::Ip(ip("169.254.169.254")),
            80,
            "/latest",
            None,
        ),
        (
            "HTTP://API.GitHub.COM./x?y=1",
            domain("api.github.com"),
            80,
            "/x",
            Some("y=1"),
        ),
        (
            "https://api.github.com/repos/a/../b/%2e%2E/c?#frag",
            domain("api.github.com"),
            443,
            "/repos/c",
            Some(""),
        ),
        (
            "https://x.com:443/a b",
            domain("x.com"),
            443,
            "/a%20b",
            None,
        ),
        (
            "http://münchen.de/",
            domain("xn--mnchen-3ya.de"),
            80,
            "/",
            None,
        ),
        ("http://x.com:8443", domain("x.com"), 8443, "/", None),
    ];
    for (url, host, port, path, query) in cases {
        let parsed = target(url);
        assert_eq!(&parsed.host, host, "{url}");
        assert_eq!(parsed.port, *port, "{url}");
        assert_eq!(parsed.path, *path, "{url}");
        assert_eq!(parsed.query.as_deref(), *query, "{url}");
    }
    assert_eq!(target("HTTP://x.com/").scheme, "http");
    assert_eq!(target("https://x.com/").scheme, "https");
}

#[test]
fn parse_target_refusals() {
    assert_eq!(
        parse_target("https://user:pw@x.com/"),
        Err(TargetError::Userinfo)
    );
    assert_eq!(
        parse_target("https://user@x.com/"),
        Err(TargetError::Userinfo)
    );
    assert_eq!(
        parse_target("https://:pw@x.com/"),
        Err(TargetError::Userinfo)
    );
    assert_eq!(
        parse_target("ftp://x/"),
        Err(TargetError::Scheme("ftp".into()))
    );
    assert_eq!(
        parse_target("FILE:///etc/passwd"),
        Err(TargetError::Scheme("file".into()))
    );
    for invalid in [
        "",
        "/relative",
        "http://",
        "http://a b/",
        "http://[::1/",
        "http://x.com../",
        "http://./",
        "http://x.com:99999/",
    ] {
        assert!(
            matches!(parse_target(invalid), Err(TargetError::Invalid(_))),
            "{invalid:?}: {:?}",
            parse_target(invalid)
        );
    }
}

#[test]
fn target_error_messages() {
    assert_eq!(
        TargetError::Scheme("ftp".into()).to_string(),
        "URL scheme `ftp` is not allowed (only http and https)"
    );
    assert_eq!(
        TargetError::Userinfo.to_string(),
        "URLs with credentials (user:pass@) are not allowed"
    );
    let invalid = parse_target("nope").expect_err("relative");
    assert!(
        invalid.to_string().starts_with("invalid URL: "),
        "{invalid}"
    );
}

// ------------------------------------------------------------------ paths

#[test]
fn path_globs() {
    let repos = PathMatcher::new(["/repos/**", "/user"]).expect("valid globs");
    for (path, expected) in [
        ("/repos/a", true),
        ("/repos/a/b/c", true),
        ("/repos/", true),
        ("/repos", false),
        ("/reposx", false),
        ("/reposx/a", false),
        ("/user", true),
        ("/user/x", false),
        ("/repos/a%2Fb", false),
        ("/repos/a%5cb", false),
    ] {
        assert_eq!(repos.is_match(path), expected, "{path}");
    }
    let single = PathMatcher::new(["/a/*"]).expect("valid glob");
    assert!(single.is_match("/a/b"));
    assert!(!single.is_match("/a/b/c"));
    assert_eq!(repos.patterns(), ["/repos/**", "/user"]);
    assert_eq!(
        repos,
        PathMatcher::new(["/repos/**", "/user"]).expect("valid")
    );
    assert_ne!(repos, single);
    assert_eq!(format!("{single:?}"), r#"PathMatcher(["/a/*"])"#);
}

#[test]
fn path_glob_errors() {
    for (glob, expected) in [
        ("repos/**", "must start with `/`"),
        ("", "must start with `/`"),
        ("/a[", "invalid path glob"),
        ("/a{b", "invalid path glob"),
        ("/a\\", "invalid path glob"),
    ] {
        let error = PathMatcher::check_pattern(glob).expect_err(glob);
        assert!(error.contains(expected), "{glob}: {error}");
        assert!(PathMatcher::new([glob]).is_err(), "{glob}");
    }
    assert!(PathMatcher::check_pattern("/{a,b}/[0-9]*").is_ok());
}

// --------------------------------------------------------------- decisions

fn github_rule() -> EgressRule {
    EgressRule {
        methods: Some(vec!["GET".into(), "POST".into()]),
        paths: Some(PathMatcher::new(["/repos/**"]).expect("valid glob")),
        credential: Some("github".into()),
        ..rule("api.github.com")
    }
}

#[test]
fn decide_allows_matching_requests() {
    let policy = policy(vec![github_rule(), rule("*.example.com")]);
    let allow = |method, url| policy.decide(method, &target(url));
    assert_eq!(
        allow("GET", "https://api.github.com/repos/a/b"),
        Decision::Allow { rule: 0 }
    );
    assert_eq!(
        allow("post", "http://api.github.com/repos/x"),
        Decision::Allow { rule: 0 }
    );
    assert_eq!(
        allow("DELETE", "https://a.b.example.com/anything?q"),
        Decision::Allow { rule: 1 }
    );
    assert!(allow("PATCH", "https://x.example.com/").is_allowed());
}

#[test]
fn decide_denies_without_a_host_rule() {
    let policy = policy(vec![github_rule(), rule("*.example.com")]);
    let decision = policy.decide("GET", &target("https://example.com/"));
    let Decision::Deny(reason) = decision else {
        panic!("expected a denial, got {decision:?}");
    };
    assert_eq!(
        reason,
        DenyReason::NoRule {
            host: domain("example.com")
        }
    );
    assert_eq!(reason.to_string(), "no egress rule allows host example.com");
    assert_eq!(reason.kind(), "no_rule");
    assert_eq!(reason.host_port_rule(), None);

    let empty = EgressPolicy::default();
    assert_eq!(empty.mode, EgressMode::Enforce);
    assert!(!empty.decide("GET", &target("https://x.com/")).is_allowed());
    let ipv6 = empty.decide("GET", &target("http://[::1]/"));
    let Decision::Deny(reason) = ipv6 else {
        panic!("{ipv6:?}");
    };
    assert_eq!(reason.to_string(), "no egress rule allows host [::1]");
}

#[test]
fn decide_reports_port_then_method_then_path() {
    let policy = policy(vec![github_rule()]);
    let deny = |method: &str, url: &str| match policy.decide(method, &target(url)) {
        Decision::Deny(reason) => reason,
        allowed => panic!("{method} {url} should be denied, got {allowed:?}"),
    };
    let host = domain("api.github.com");

    // Default ports are 80 and 443; the port is reported before all else.
    let port = deny("DELETE", "https://api.github.com:8443/nope");
    assert_eq!(
        port,
        DenyReason::Port {
            host: host.clone(),
            port: 8443,
            rule: 0
        }
    );
    assert_eq!(
        port.to_string(),
        "port 8443 is not allowed for host api.github.com"
    );
    assert_eq!(port.kind(), "port");

    let method = deny("delete", "https://api.github.com/nope");
    assert_eq!(
        method,
        DenyReason::Method {
            host: host.clone(),
            method: "DELETE".into(),
            rule: 0
        }
    );
    assert_eq!(
        method.to_string(),
        "method DELETE is not allowed for host api.github.com"
    );
    // Non-standard methods are not upper-cased (fetch() sends them as is).
    assert!(matches!(
        deny("post2", "https://api.github.com/repos/x"),
        DenyReason::Method { method, .. } if method == "post2"
    ));

    for path in ["/repos", "/reposx", "/", "/repos%2Fx"] {
        let url = format!("https://api.github.com{path}");
        let reason = deny("GET", &url);
        assert_eq!(
            reason,
            DenyReason::Path {
                host: host.clone(),
                path: path.into(),
                rule: 0
            }
        );
        assert_eq!(reason.host_rule(), Some(0));
        // Host and port matched: the only rule a report-mode pass may take `allow_private` from.
        assert_eq!(reason.host_port_rule(), Some(0));
        assert_eq!(reason.host(), &host);
    }
    assert_eq!(
        deny("GET", "https://api.github.com/reposx").to_string(),
        "path /reposx is not allowed for host api.github.com"
    );
}

#[test]
fn decide_first_match_wins_and_reports_first_host_rule() {
    let narrow = EgressRule {
        name: "narrow".into(),
        methods: Some(vec!["GET".into()]),
        ..rule("api.github.com")
    };
    let wide = EgressRule {
        name: "wide".into(),
        ports: vec![8443],
        ..rule("*.github.com")
    };
    let any = EgressRule {
        name: "any".into(),
        ..rule("api.github.com")
    };

    // The first fully matching rule wins.
    let both = policy(vec![narrow.clone(), any.clone()]);
    let decide = |policy: &EgressPolicy, method, url| policy.decide(method, &target(url));
    assert_eq!(
        decide(&both, "GET", "https://api.github.com/"),
        Decision::Allow { rule: 0 }
    );
    // A later rule allows what an earlier host-matching rule does not.
    assert_eq!(
        decide(&both, "PUT", "https://api.github.com/"),
        Decision::Allow { rule: 1 }
    );

    // Without a full match, the reason of the first host-matching rule.
    let partial = policy(vec![rule("other.com"), narrow, wide]);
    assert_eq!(
        decide(&partial, "PUT", "https://api.github.com/"),
        Decision::Deny(DenyReason::Method {
            host: domain("api.github.com"),
            method: "PUT".into(),
            rule: 1
        })
    );
    assert_eq!(
        decide(&partial, "GET", "https://api.github.com:8443/"),
        Decision::Allow { rule: 2 }
    );
    assert_eq!(
        decide(&partial, "GET", "https://www.github.com/"),
        Decision::Deny(DenyReason::Port {
            host: domain("www.github.com"),
            port: 443,
            rule: 2
        })
    );
}

#[test]
fn decide_with_ip_rules_and_custom_ports() {
    let local = EgressRule {
        ports: vec![18999],
        allow_private: true,
        ..rule("127.0.0.1")
    };
    let policy = policy(vec![local]);
    assert!(policy
        .decide("GET", &target("http://127.0.0.1:18999/x"))
        .is_allowed());
    assert!(policy
        .decide("GET", &target("http://2130706433:18999/x"))
        .is_allowed());
    assert!(matches!(
        policy.decide("GET", &target("http://127.0.0.1/x")),
        Decision::Deny(DenyReason::Port { port: 80, .. })
    ));
    assert!(matches!(
        policy.decide("GET", &target("http://[::ffff:127.0.0.1]:18999/x")),
        Decision::Deny(DenyReason::NoRule { .. })
    ));
}

#[test]
fn mode_names() {
    assert_eq!(EgressMode::Enforce.to_string(), "enforce");
    assert_eq!(EgressMode::Report.as_str(), "report");
    assert_eq!(EgressMode::default(), EgressMode::Enforce);
}

// ------------------------------------------------------- address checks

#[test]
fn classify_ip_table() {
    use BlockedRange::*;
    // (address, expected classification); every blocked range has a
    // neighbouring public address.
    let cases: &[(&str, Option<BlockedRange>)] = &[
        // IPv4 public.
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        // Loopback 127/8.
        ("127.0.0.1", Some(Loopback)),
        ("127.255.255.255", Some(Loopback)),
        ("126.255.255.255", None),
        ("128.0.0.0", None),
        // Private.
        ("10.0.0.1", Some(Private)),
        ("10.255.255.255", Some(Private)),
        ("9.255.255.255", None),
        ("11.0.0.0", None),
        ("172.16.0.1", Some(Private)),
        ("172.31.255.255", Some(Private)),
        ("172.15.255.255", None),
        ("172.32.0.0", None),
        ("192.168.1.1", Some(Private)),
        ("192.167.255.255", None),
        ("192.169.0.0", None),
        // Link-local and cloud metadata.
        ("169.254.0.1", Some(LinkLocal)),
        ("169.254.169.253", Some(LinkLocal)),
        ("169.254.169.254", Some(CloudMetadata)),
        ("169.254.170.2", Some(CloudMetadata)),
        ("169.254.170.3", Some(LinkLocal)),
        ("169.253.255.255", None),
        ("169.255.0.0", None),
        ("100.100.100.200", Some(CloudMetadata)),
        ("192.0.0.192", Some(CloudMetadata)),
        // CGNAT 100.64/10.
        ("100.64.0.1", Some(SharedCgnat)),
        ("100.127.255.255", Some(SharedCgnat)),
        ("100.63.255.255", None),
        ("100.128.0.0", None),
        // Unspecified 0/8.
        ("0.0.0.0", Some(Unspecified)),
        ("0.255.255.255", Some(Unspecified)),
        ("1.0.0.0", None),
        // Multicast 224/4.
        ("224.0.0.1", Some(Multicast)),
        ("239.255.255.255", Some(Multicast)),
        ("223.255.255.255", None),
        // Reserved 240/4 and broadcast.
        ("240.0.0.1", Some(Reserved)),
        ("255.255.255.254", Some(Reserved)),
        ("255.255.255.255", Some(Broadcast)),
        // Documentation.
        ("192.0.2.1", Some(Documentation)),
        ("192.0.3.0", None),
        ("198.51.100.7", Some(Documentation)),
        ("198.51.101.0", None),
        ("203.0.113.9", Some(Documentation)),
        ("203.0.112.255", None),
        ("203.0.114.0", None),
        // Benchmarking 198.18/15.
        ("198.18.0.1", Some(Benchmarking)),
        ("198.19.255.255", Some(Benchmarking)),
        ("198.17.255.255", None),
        ("198.20.0.0", None),
        // IETF protocol assignments 192.0.0/24.
        ("192.0.0.8", Some(ProtocolAssignment)),
        ("192.0.1.0", None),
        ("191.255.255.255", None),
        // Deprecated 6to4 relay anycast.
        ("192.88.99.1", Some(Reserved)),
        ("192.88.98.255", None),
        // IPv6 public.
        ("2606:4700:4700::1111", None),
        ("2001:4860:4860::8888", None),
        // Loopback, unspecified.
        ("::1", Some(Loopback)),
        ("::", Some(Unspecified)),
        // Link-local fe80::/10.
        ("fe80::1", Some(LinkLocal)),
        ("febf:ffff::1", Some(LinkLocal)),
        ("fec0::1", Some(Reserved)),
        // Unique local fc00::/7, AWS metadata.
        ("fc00::1", Some(UniqueLocal)),
        ("fdff:ffff::1", Some(UniqueLocal)),
        ("fd00:ec2::254", Some(CloudMetadata)),
        ("fd00:ec2::253", Some(UniqueLocal)),
        ("fbff::1", Some(Reserved)),
        // Multicast.
        ("ff02::1", Some(Multicast)),
        ("ff0e::1", Some(Multicast)),
        // Documentation.
        ("2001:db8::1", Some(Documentation)),
        ("2001:db8:ffff::1", Some(Documentation)),
        ("2001:db7:ffff::1", None),
        ("2001:db9::1", None),
        ("3fff::1", Some(Documentation)),
        ("3ffe:ffff::1", None),
        // Discard 100::/64.
        ("100::1", Some(Discard)),
        ("100::ffff:ffff:ffff:ffff", Some(Discard)),
        ("100:0:0:1::1", Some(Reserved)),
        // Teredo, benchmarking, protocol assignments (2001::/23).
        ("2001::1", Some(Reserved)),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Some(Reserved)),
        ("2001:2::1", Some(Benchmarking)),
        ("2001:1::1", Some(ProtocolAssignment)),
        ("2001:1ff::1", Some(ProtocolAssignment)),
        ("2001:200::1", None),
        // SRv6 SIDs, outside global unicast.
        ("5f00::1", Some(Reserved)),
        ("4000::1", Some(Reserved)),
        ("1fff::1", Some(Reserved)),
        ("3fff:fff:ffff::1", Some(Documentation)),
        ("3fff:1000::1", None),
        // IPv4-mapped.
        ("::ffff:127.0.0.1", Some(Loopback)),
        ("::ffff:169.254.169.254", Some(CloudMetadata)),
        ("::ffff:10.1.2.3", Some(Private)),
        ("::ffff:0.0.0.0", Some(Unspecified)),
        ("::ffff:8.8.8.8", None),
        // IPv4-compatible.
        ("::127.0.0.1", Some(Loopback)),
        ("::192.168.0.1", Some(Private)),
        ("::0.0.0.2", Some(Unspecified)),
        ("::8.8.8.8", None),
        // NAT64 well-known prefix.
        ("64:ff9b::127.0.0.1", Some(Loopback)),
        ("64:ff9b::a9fe:a9fe", Some(CloudMetadata)),
        ("64:ff9b::8.8.8.8", None),
        ("64:ff9b::1:8.8.8.8", Some(Reserved)),
        // NAT64 local-use prefix: /96 and /48 positions.
        ("64:ff9b:1::10.0.0.1", Some(Private)),
        ("64:ff9b:1::8.8.8.8", None),
        ("64:ff9b:1:7f00:0:100::", Some(Loopback)),
        ("64:ff9b:1:808:8:800::", None),
        ("64:ff9b:1:7f00:0:1:808:808", Some(Loopback)),
        ("64:ff9b:1::", Some(Unspecified)),
        // 6to4.
        ("2002:7f00:1::", Some(Loopback)),
        ("2002:a9fe:a9fe::1", Some(CloudMetadata)),
        ("2002:c0a8:101::1", Some(Private)),
        ("2002:808:808::1", None),
    ];
    for (text, expected) in cases {
        assert_eq!(classify_ip(ip(text)), *expected, "{text}");
    }
}

#[test]
fn blocked_range_names() {
    assert_eq!(BlockedRange::Loopback.to_string(), "loopback address");
    assert_eq!(
        BlockedRange::CloudMetadata.to_string(),
        "cloud metadata address"
    );
    assert_eq!(BlockedRange::CloudMetadata.as_str(), "cloud_metadata");
    assert_eq!(BlockedRange::Discard.to_string(), "discard-only address");
}

fn scope(allow_private: bool) -> AddressScope {
    AddressScope::new(allow_private, SelfListeners::default())
}

#[test]
fn check_address_honours_allow_private() {
    let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    let public = scope(false);
    let private = scope(true);

    assert_eq!(check_address(v4(8, 8, 8, 8), &public), Ok(()));
    assert_eq!(
        check_address(v4(127, 0, 0, 1), &public),
        Err(AddressRefusal::Range(BlockedRange::Loopback))
    );
    assert_eq!(
        check_address(IpAddr::V6(Ipv6Addr::LOCALHOST), &public),
        Err(AddressRefusal::Range(BlockedRange::Loopback))
    );

    for allowed in [
        "127.0.0.1",
        "10.0.0.1",
        "169.254.1.1",
        "100.64.0.1",
        "fd12::1",
        "::ffff:192.168.0.1",
    ] {
        assert_eq!(check_address(ip(allowed), &private), Ok(()), "{allowed}");
        assert!(check_address(ip(allowed), &public).is_err(), "{allowed}");
    }
    for (blocked, range) in [
        ("0.0.0.0", BlockedRange::Unspecified),
        ("224.0.0.1", BlockedRange::Multicast),
        ("255.255.255.255", BlockedRange::Broadcast),
    ] {
        let refusal = check_address(ip(blocked), &private).unwrap_err();
        assert_eq!(refusal, AddressRefusal::Range(range), "{blocked}");
        assert!(refusal.is_absolute(), "{blocked}");
    }
}

/// Every metadata / credential endpoint, in every encoding, under every scope.
#[test]
fn metadata_endpoints_are_never_reachable_in_any_form() {
    let named: &[(&str, &str)] = &[
        ("169.254.169.254", "instance metadata service"),
        ("fd00:ec2::254", "AWS instance metadata service (IPv6)"),
        ("169.254.170.2", "AWS ECS task credentials"),
        ("169.254.170.23", "AWS EKS Pod Identity agent"),
        ("fd00:ec2::23", "AWS EKS Pod Identity agent (IPv6)"),
        ("168.63.129.16", "Azure WireServer"),
        ("fd20:ce::254", "GCP metadata server (IPv6)"),
        ("100.100.100.200", "Alibaba Cloud instance metadata"),
        ("192.0.0.192", "Oracle Cloud instance metadata"),
        ("fe80::a9fe:a9fe", "OpenStack metadata service (IPv6)"),
        ("169.254.0.23", "Tencent Cloud instance metadata"),
        ("169.254.42.42", "Scaleway instance metadata"),
        ("fd00:42::42", "Scaleway instance metadata (IPv6)"),
        ("fd00:a9fe:a9fe::1", "Akamai/Linode metadata service (IPv6)"),
    ];
    assert_eq!(
        named.len(),
        METADATA_ENDPOINTS.len(),
        "every entry is tested"
    );
    let listeners = SelfListeners::new(["0.0.0.0:80".parse().unwrap()], []);
    for &(text, service) in named {
        let mut forms = vec![text.to_owned()];
        if let IpAddr::V4(v4) = ip(text) {
            let [a, b, c, d] = v4.octets();
            let hi = u16::from_be_bytes([a, b]);
            let lo = u16::from_be_bytes([c, d]);
            forms.extend([
                format!("::ffff:{v4}"),
                format!("::{v4}"),
                format!("64:ff9b::{v4}"),
                format!("64:ff9b:1::{v4}"),
                format!("2002:{hi:x}:{lo:x}::1"),
            ]);
        }
        for form in forms {
            let address = ip(&form);
            assert_eq!(
                classify_ip(address),
                Some(BlockedRange::CloudMetadata),
                "{form}"
            );
            let endpoint = metadata_endpoint(address).unwrap_or_else(|| panic!("{form}"));
            assert!(
                endpoint.service.starts_with(service),
                "{form}: {endpoint:?}"
            );
            for allow_private in [false, true] {
                let scope = AddressScope::new(allow_private, listeners.clone());
                for port in [None, Some(80), Some(443)] {
                    let dest = Destination { ip: address, port };
                    let refusal = check_address(dest, &scope).unwrap_err();
                    assert_eq!(refusal, AddressRefusal::Metadata(endpoint), "{form}");
                    assert_eq!(refusal.as_str(), "cloud_metadata");
                    assert!(refusal.is_absolute());
                    assert!(refusal.to_string().contains(endpoint.service), "{refusal}");
                }
            }
        }
    }
    // Neighbours stay ordinary.
    assert_eq!(classify_ip(ip("168.63.129.17")), None);
    assert_eq!(
        classify_ip(ip("169.254.170.3")),
        Some(BlockedRange::LinkLocal)
    );
    assert_eq!(check_address(ip("168.63.129.17"), &scope(false)), Ok(()));
}

#[test]
fn metadata_host_names_are_refused_by_name() {
    for name in [
        "metadata.google.internal",
        "METADATA.google.internal.",
        "metadata.goog",
        "metadata",
        "instance-data",
        "instance-data.ec2.internal",
        "instance-data.us-west-2.compute.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "kubernetes.default.svc.corp.example.",
    ] {
        let refusal = check_name(name).unwrap_err();
        assert!(
            matches!(refusal, AddressRefusal::MetadataName(_)),
            "{name}: {refusal:?}"
        );
        assert_eq!(refusal.as_str(), "cloud_metadata");
    }
    for name in [
        "metadata.google.internal.example.com",
        "google.internal",
        "instance-data.example.com",
        "kubernetes.io",
        "kubernetes.default.svcx",
        "my-metadata.goog",
        "api.github.com",
    ] {
        assert_eq!(check_name(name), Ok(()), "{name}");
    }
}

#[test]
fn self_listeners_are_never_reachable() {
    let listeners = SelfListeners::new(
        [
            "127.0.0.1:8080".parse().unwrap(),
            "[::]:9090".parse().unwrap(),
        ],
        [ip("10.1.2.3"), ip("203.0.113.7"), ip("2001:4860::1")],
    );
    for allow_private in [false, true] {
        let scope = AddressScope::new(allow_private, listeners.clone());
        for (addr, listener) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("[::ffff:127.0.0.1]:8080", "127.0.0.1:8080"),
            ("[::127.0.0.1]:8080", "127.0.0.1:8080"),
            ("127.0.0.1:9090", "[::]:9090"),
            ("127.9.9.9:9090", "[::]:9090"),
            ("[::1]:9090", "[::]:9090"),
            ("0.0.0.0:9090", "[::]:9090"),
            ("10.1.2.3:9090", "[::]:9090"),
            ("[::ffff:10.1.2.3]:9090", "[::]:9090"),
            // A public interface address: refused although public.
            ("203.0.113.7:9090", "[::]:9090"),
            ("[2001:4860::1]:9090", "[::]:9090"),
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let refusal = check_address(addr, &scope).unwrap_err();
            assert_eq!(
                refusal,
                AddressRefusal::SelfListener(listener.parse().unwrap()),
                "{addr}"
            );
            assert_eq!(refusal.as_str(), "self_listener");
            assert!(refusal.is_absolute());
        }
    }
    let private = AddressScope::new(true, listeners.clone());
    // Same address, other port; other loopback address on the specifically bound port.
    for addr in [
        "127.0.0.1:8081",
        "127.0.0.2:8080",
        "10.1.2.3:8080",
        "10.9.9.9:9090",
    ] {
        let addr: SocketAddr = addr.parse().unwrap();
        assert_eq!(check_address(addr, &private), Ok(()), "{addr}");
    }
    // Public addresses that are not the host's.
    let public = AddressScope::new(false, listeners);
    assert_eq!(
        check_address("8.8.8.8:9090".parse::<SocketAddr>().unwrap(), &public),
        Ok(())
    );
    // Without a port, listeners cannot be recognised: the connect-time check must run.
    assert_eq!(check_address(ip("10.1.2.3"), &private), Ok(()));
    // Port 0 (ephemeral) listeners match nothing.
    let ephemeral = SelfListeners::new(["127.0.0.1:0".parse().unwrap()], []);
    assert_eq!(ephemeral.find("127.0.0.1:0".parse().unwrap()), None);
}

// ------------------------------------------------------------------ plan

fn limit(per_second: u32) -> Option<RateLimit> {
    Some(RateLimit {
        per_second,
        burst: per_second,
    })
}

fn loopback_rule(name: &str, port: u16) -> EgressRule {
    EgressRule {
        name: name.to_owned(),
        ports: vec![port],
        methods: Some(vec!["GET".into()]),
        paths: Some(PathMatcher::new(["/api/**"]).unwrap()),
        allow_private: true,
        credential: Some(format!("{name}-cred")),
        rate_limit: limit(3),
        ..rule("127.0.0.1")
    }
}

fn plan_policy(mode: EgressMode) -> EgressPolicy {
    EgressPolicy {
        mode,
        rate_limit: limit(50),
        rules: vec![
            loopback_rule("a", 20402),
            EgressRule {
                rate_limit: None,
                ..loopback_rule("b", 20405)
            },
        ],
    }
}

#[test]
fn plan_allow_carries_rule_credential_limiters_and_scope() {
    for mode in [EgressMode::Enforce, EgressMode::Report] {
        let policy = plan_policy(mode);
        let plan = policy.plan("get", &target("http://127.0.0.1:20402/api/x"));
        assert_eq!(plan.verdict, PlanVerdict::Allow);
        assert_eq!(plan.verdict.as_str(), "allow");
        assert!(plan.proceeds());
        assert_eq!(plan.rule, Some(0));
        assert_eq!(plan.rule(&policy).map(|r| r.name.as_str()), Some("a"));
        assert_eq!(plan.credential.as_deref(), Some("a-cred"));
        assert_eq!(
            plan.limiters,
            PlannedLimiters {
                rule: Some(0),
                tenant: true
            }
        );
        assert!(plan.allow_private);
        assert!(plan.scope(&SelfListeners::default()).allow_private);

        let plan = policy.plan("GET", &target("http://127.0.0.1:20405/api/x"));
        assert_eq!(plan.rule, Some(1));
        // The rule has no limit of its own.
        assert_eq!(plan.limiters.rule, None);
        assert!(plan.limiters.tenant);
    }
}

#[test]
fn plan_scope_only_on_full_match() {
    let policy = plan_policy(EgressMode::Enforce);
    for (method, url, kind) in [
        ("GET", "http://127.0.0.1:20403/api/x", "port"),
        ("POST", "http://127.0.0.1:20402/api/x", "method"),
        ("GET", "http://127.0.0.1:20402/admin", "path"),
        ("GET", "http://127.0.0.2:20402/api/x", "no_rule"),
    ] {
        let plan = policy.plan(method, &target(url));
        let PlanVerdict::Deny(reason) = &plan.verdict else {
            panic!("{url}: {plan:?}");
        };
        assert_eq!(reason.kind(), kind, "{url}");
        assert!(!plan.proceeds());
        assert!(!plan.allow_private, "{url}");
        assert!(!plan.scope(&SelfListeners::default()).allow_private);
        assert_eq!(plan.rule, None);
        assert_eq!(plan.credential, None);
        assert_eq!(plan.limiters, PlannedLimiters::default());
    }
}

#[test]
fn plan_report_mode_lets_through_without_scope_credential_or_rule_limit() {
    // Defect 8: a report-mode tenant with one allow_private rule for 127.0.0.1:20402 reached
    // 127.0.0.1:20403 (and every other loopback port) through that rule's allow_private.
    let policy = plan_policy(EgressMode::Report);
    for (method, url) in [
        ("GET", "http://127.0.0.1:20403/api/x"),
        ("GET", "http://localhost:20402/api/x"),
    ] {
        let plan = policy.plan(method, &target(url));
        assert!(
            matches!(plan.verdict, PlanVerdict::ReportDeny(_)),
            "{url}: {plan:?}"
        );
        assert_eq!(plan.verdict.as_str(), "report_deny");
        assert!(plan.proceeds());
        assert!(!plan.allow_private, "{url}");
        assert_eq!(plan.rule, None);
        assert_eq!(plan.credential, None);
        assert_eq!(
            plan.limiters,
            PlannedLimiters {
                rule: None,
                tenant: true
            }
        );
        // And so loopback stays closed to it.
        let scope = plan.scope(&SelfListeners::default());
        assert_eq!(
            check_address(ip("127.0.0.1"), &scope),
            Err(AddressRefusal::Range(BlockedRange::Loopback))
        );
    }
}

#[test]
fn plan_report_mode_keeps_allow_private_on_host_and_port_match() {
    // The issue's rule: allow_private applies to requests that match the rule's host and port.
    // In report mode a request to that host:port with another method or path is let through
    // under the rule's scope, without its credential or rule limiter.
    let policy = plan_policy(EgressMode::Report);
    for (method, url) in [
        ("DELETE", "http://127.0.0.1:20402/api/x"),
        ("GET", "http://127.0.0.1:20402/other"),
    ] {
        let plan = policy.plan(method, &target(url));
        assert!(
            matches!(plan.verdict, PlanVerdict::ReportDeny(_)),
            "{url}: {plan:?}"
        );
        assert!(plan.allow_private, "{url}");
        assert_eq!(plan.rule, None);
        assert_eq!(plan.credential, None);
        assert_eq!(plan.limiters.rule, None);
        let scope = plan.scope(&SelfListeners::default());
        assert_eq!(check_address(ip("127.0.0.1"), &scope), Ok(()));
    }
    // Enforce mode denies them outright: no scope.
    let enforce = plan_policy(EgressMode::Enforce);
    let plan = enforce.plan("GET", &target("http://127.0.0.1:20402/other"));
    assert!(!plan.proceeds());
    assert!(!plan.allow_private);
}

#[test]
fn plan_without_rules() {
    let enforce = EgressPolicy::default();
    let plan = enforce.plan("GET", &target("https://example.com/"));
    assert_eq!(
        plan.verdict,
        PlanVerdict::Deny(DenyReason::NoRules {
            host: domain("example.com")
        })
    );
    assert_eq!(
        plan.verdict.reason().unwrap().to_string(),
        "the tenant has no egress rules"
    );
    assert_eq!(plan.verdict.reason().unwrap().kind(), "no_rules");

    let report = EgressPolicy {
        mode: EgressMode::Report,
        ..EgressPolicy::default()
    };
    let plan = report.plan("GET", &target("https://example.com/"));
    assert!(matches!(
        plan.verdict,
        PlanVerdict::ReportDeny(DenyReason::NoRule { .. })
    ));
    // No tenant limit configured: none applies.
    assert!(!plan.limiters.tenant);
}
