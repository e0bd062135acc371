//! Tenant APIs: the upstream services a tenant's Worker code calls as `env.<name>.<tool>(args)`
//! (MCP servers and OpenAPI documents). Pure data and the naming rules; the gateway's `apis`
//! module fetches catalogues and makes the calls, through the egress pipeline.

use std::time::Duration;

/// One API of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantApi {
    /// Its name in `env` (a JS identifier, see [`check_api_name`]).
    pub name: String,
    /// Where its tools come from and where calls go.
    pub source: ApiSource,
    /// How often the tool list (or spec) is fetched again.
    pub refresh: Duration,
    /// Time allowed for one upstream exchange.
    pub timeout: Duration,
}

/// Where an API's tools come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiSource {
    /// An MCP server over the Streamable HTTP transport.
    Mcp {
        /// Its endpoint (`https://…/mcp`).
        url: String,
    },
    /// An OpenAPI 3.x document: each operation is a tool.
    OpenApi {
        /// The document: a file, or a URL fetched through the egress pipeline.
        spec: SpecSource,
        /// The URL operations' paths are appended to.
        base_url: String,
    },
}

/// Where an OpenAPI document is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecSource {
    /// A local file (JSON or YAML), read by the gateway.
    File(String),
    /// An `http(s)` URL, fetched like a call (egress rules and credentials apply).
    Url(String),
}

/// Longest API or tool name in JS.
pub const MAX_API_NAME_LEN: usize = 64;

/// Reserved words that cannot be used as a plain identifier (ES2024, strict mode) plus names a
/// binding object must not shadow.
const RESERVED: &[&str] = &[
    "await",
    "break",
    "case",
    "catch",
    "class",
    "const",
    "continue",
    "debugger",
    "default",
    "delete",
    "do",
    "else",
    "enum",
    "export",
    "extends",
    "false",
    "finally",
    "for",
    "function",
    "if",
    "implements",
    "import",
    "in",
    "instanceof",
    "interface",
    "let",
    "new",
    "null",
    "package",
    "private",
    "protected",
    "public",
    "return",
    "static",
    "super",
    "switch",
    "this",
    "throw",
    "true",
    "try",
    "typeof",
    "var",
    "void",
    "while",
    "with",
    "yield",
    "then",
    "constructor",
    "prototype",
    "__proto__",
];

/// Checks an API name: an ASCII JS identifier (`[A-Za-z_$][A-Za-z0-9_$]*`), not a reserved
/// word, at most [`MAX_API_NAME_LEN`] characters.
pub fn check_api_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$');
    if !first_ok
        || name.len() > MAX_API_NAME_LEN
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    {
        return Err(format!(
            "invalid API name {name:?}: must be a JS identifier of 1 to {MAX_API_NAME_LEN} \
             ASCII letters, digits, `_` and `$`, not starting with a digit"
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!("invalid API name {name:?}: it is a reserved word"));
    }
    Ok(())
}

/// The JS name of an upstream tool: every character that cannot be in an identifier becomes
/// `_` (`get-sum` → `get_sum`), a leading digit or a reserved word gets a `_` in front, and the
/// result is cut to [`MAX_API_NAME_LEN`] characters. Two tools that map to the same name are
/// told apart by the catalogue (see [`unique_js_names`]).
pub fn js_name(tool: &str) -> String {
    let mut out: String = tool
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '$' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_API_NAME_LEN)
        .collect();
    if out.is_empty()
        || out.starts_with(|c: char| c.is_ascii_digit())
        || RESERVED.contains(&out.as_str())
    {
        out.insert(0, '_');
        out.truncate(MAX_API_NAME_LEN);
    }
    out
}

/// JS names for a list of tool names, in order: [`js_name`], with `_2`, `_3`, … appended to a
/// name already taken by an earlier tool.
pub fn unique_js_names<'a>(tools: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut taken = std::collections::HashSet::new();
    let mut out = Vec::new();
    for tool in tools {
        let base = js_name(tool);
        let mut name = base.clone();
        let mut n = 2;
        while !taken.insert(name.clone()) {
            let suffix = format!("_{n}");
            let keep = MAX_API_NAME_LEN
                .saturating_sub(suffix.len())
                .min(base.len());
            name = format!("{}{suffix}", &base[..keep]);
            n += 1;
        }
        out.push(name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_names_are_js_identifiers() {
        for ok in ["github", "_x", "$", "a1", "get_sum"] {
            assert!(check_api_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "a-b",
            "a b",
            "ünï",
            "then",
            "class",
            &"a".repeat(65),
        ] {
            assert!(check_api_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tool_names_become_identifiers_and_stay_distinct() {
        assert_eq!(js_name("get-sum"), "get_sum");
        assert_eq!(js_name("2fa"), "_2fa");
        assert_eq!(js_name("then"), "_then");
        assert_eq!(js_name(""), "_");
        assert_eq!(js_name("a.b/c"), "a_b_c");
        assert_eq!(
            unique_js_names(["get-sum", "get_sum", "get.sum"]),
            ["get_sum", "get_sum_2", "get_sum_3"]
        );
        let long = "x".repeat(100);
        let names = unique_js_names([long.as_str(), long.as_str()]);
        assert_eq!(names[0].len(), MAX_API_NAME_LEN);
        assert_eq!(names[1].len(), MAX_API_NAME_LEN);
        assert_ne!(names[0], names[1]);
    }
}
