//! The gateway's own MCP endpoint, `POST /mcp` on the ingress (Streamable HTTP transport,
//! stateless: no session id, every answer one JSON body). An agent connects with the tenant's
//! key as a bearer token and gets two tools, whatever the number of the tenant's APIs:
//!
//! - `search` `{query, limit?}` — the tenant's API functions that match, best first, with their
//!   TypeScript signatures (bounded output);
//! - `execute` `{code}` — runs an async arrow function in a fresh isolate with the tenant's
//!   `env` APIs and answers `{result, logs, error}` (`isError` set on failure).
//!
//! This module is the protocol (JSON-RPC 2.0 messages in and out, version negotiation, the
//! tool list); the ingress runs the tools.

use serde_json::{json, Value};

/// Protocol versions served, newest first.
pub const PROTOCOL_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];
/// JSON-RPC: the method does not exist.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC: invalid parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC: the message is not a valid request.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC: the body is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// Most results `search` returns.
pub const MAX_SEARCH_RESULTS: usize = 50;

/// What one POSTed message asks for. `id` is the request's JSON-RPC id, echoed in the answer.
#[derive(Debug, PartialEq)]
#[allow(missing_docs)] // the fields are the request's id and the named parameters
pub enum Message {
    /// `initialize`: answer with this protocol version.
    Initialize { id: Value, version: String },
    /// A notification or a response from the client: answered 202 with no body.
    Accepted,
    /// `ping`.
    Ping { id: Value },
    /// `tools/list`.
    ListTools { id: Value },
    /// `tools/call` of `search`.
    Search {
        id: Value,
        query: String,
        limit: usize,
    },
    /// `tools/call` of `execute`.
    Execute { id: Value, code: String },
    /// Answer with this JSON-RPC error (`id` null when the request had none).
    Error {
        id: Value,
        code: i64,
        message: String,
    },
}

/// Reads one POSTed body. `version` is the request's `MCP-Protocol-Version` header.
pub fn parse(body: &[u8], version: Option<&str>) -> Message {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                Value::Null,
                PARSE_ERROR,
                format!("the body is not JSON: {e}"),
            )
        }
    };
    let Some(obj) = value.as_object() else {
        return error(
            Value::Null,
            INVALID_REQUEST,
            "send one JSON-RPC message (batches are not supported)".into(),
        );
    };
    let id = obj.get("id").cloned();
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        // A response to a request of ours (we send none) or nonsense without an id.
        return match id {
            Some(id) if obj.contains_key("result") || obj.contains_key("error") => {
                let _ = id;
                Message::Accepted
            }
            _ => error(
                id.unwrap_or(Value::Null),
                INVALID_REQUEST,
                "a JSON-RPC request needs a method".into(),
            ),
        };
    };
    let Some(id) = id.filter(|id| id.is_string() || id.is_number()) else {
        return Message::Accepted; // a notification
    };
    if let Some(v) = version {
        if method != "initialize" && !PROTOCOL_VERSIONS.contains(&v) {
            return error(
                id,
                INVALID_REQUEST,
                format!(
                    "unsupported MCP-Protocol-Version {v:?}; this server speaks {}",
                    PROTOCOL_VERSIONS.join(", ")
                ),
            );
        }
    }
    let params = obj.get("params").cloned().unwrap_or(json!({}));
    match method {
        "initialize" => {
            let asked = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            let version = if PROTOCOL_VERSIONS.contains(&asked) {
                asked
            } else {
                PROTOCOL_VERSIONS[0]
            };
            Message::Initialize {
                id,
                version: version.to_string(),
            }
        }
        "ping" => Message::Ping { id },
        "tools/list" => Message::ListTools { id },
        "tools/call" => {
            let name = params.get("name").and_then(Value::as_str).unwrap_or("");
            let args = params.get("arguments").cloned().unwrap_or(json!({}));
            match name {
                "search" => match args.get("query").and_then(Value::as_str) {
                    None => error(
                        id,
                        INVALID_PARAMS,
                        "search: `query` (a string) is required".into(),
                    ),
                    Some(query) => {
                        let limit = match args.get("limit") {
                            None | Some(Value::Null) => 10,
                            Some(l) => match l.as_u64() {
                                Some(n) if (1..=MAX_SEARCH_RESULTS as u64).contains(&n) => n as usize,
                                _ => {
                                    return error(
                                        id,
                                        INVALID_PARAMS,
                                        format!("search: `limit` must be an integer from 1 to {MAX_SEARCH_RESULTS}"),
                                    )
                                }
                            },
                        };
                        Message::Search {
                            id,
                            query: query.to_string(),
                            limit,
                        }
                    }
                },
                "execute" => match args.get("code").and_then(Value::as_str) {
                    Some(code) => Message::Execute {
                        id,
                        code: code.to_string(),
                    },
                    None => error(
                        id,
                        INVALID_PARAMS,
                        "execute: `code` (a string) is required".into(),
                    ),
                },
                other => error(
                    id,
                    INVALID_PARAMS,
                    format!("no tool {other:?}: the tools are search and execute"),
                ),
            }
        }
        other => error(
            id,
            METHOD_NOT_FOUND,
            format!("method {other:?} is not supported"),
        ),
    }
}

fn error(id: Value, code: i64, message: String) -> Message {
    Message::Error { id, code, message }
}

/// A JSON-RPC result.
pub fn result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A JSON-RPC error.
pub fn rpc_error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// The `initialize` result.
pub fn initialized(version: &str) -> Value {
    json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}},
        "serverInfo": {"name": "isogate", "version": env!("CARGO_PKG_VERSION")},
        "instructions": "Write code instead of making one tool call per step: find the functions you need with `search`, then run an async arrow function with `execute` that calls them as `await env.<api>.<tool>(args)` and returns what you need.",
    })
}

/// The `tools/list` result: two tools, the same whatever the tenant's APIs.
pub fn tools() -> Value {
    json!({"tools": [
        {
            "name": "search",
            "description": "Find functions of this tenant's APIs, callable in `execute` code as `await env.<api>.<tool>(args)`. Returns their TypeScript signatures and descriptions, best match first.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "Words to look for in API, function and description text."},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_SEARCH_RESULTS, "description": "Most results (default 10)."}
                },
                "required": ["query"]
            }
        },
        {
            "name": "execute",
            "description": "Run JavaScript in a fresh sandbox. `code` is an async arrow function `async (env) => { ... }`; its return value (JSON) is the result. `env.<api>.<tool>(args)` calls the tenant's APIs (credentials are added by the gateway; errors carry `code` and `hint`); `fetch()` reaches only what the tenant allows; console output comes back as logs.",
            "inputSchema": {
                "type": "object",
                "properties": {"code": {"type": "string", "description": "An async arrow function, e.g. `async (env) => (await env.github.list_issues({owner: \"o\", repo: \"r\"})).length`."}},
                "required": ["code"]
            }
        }
    ]})
}

/// A `tools/call` result: the value as structured content and as JSON text.
pub fn tool_result(value: Value, is_error: bool) -> Value {
    let text = serde_json::to_string(&value).unwrap_or_default();
    json!({
        "content": [{"type": "text", "text": text}],
        "structuredContent": value,
        "isError": is_error,
    })
}

/// Whether an `Origin` header may talk to a server reached as `host` (same host and port; a
/// request without `Origin` is not from a browser). Guards against DNS rebinding.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else { return true };
    let Ok(url) = url::Url::parse(origin) else {
        return false;
    };
    let Some(origin_host) = url.host_str() else {
        return false;
    };
    let origin_authority = match url.port() {
        Some(p) => format!("{origin_host}:{p}"),
        None => origin_host.to_string(),
    };
    host.is_some_and(|h| h.eq_ignore_ascii_case(&origin_authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read() {
        let m = parse(br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#, None);
        assert_eq!(
            m,
            Message::Initialize {
                id: json!(1),
                version: "2025-06-18".into()
            }
        );
        let m = parse(br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2099-01-01"}}"#, None);
        assert_eq!(
            m,
            Message::Initialize {
                id: json!(1),
                version: "2025-11-25".into()
            }
        );
        assert_eq!(
            parse(
                br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                None
            ),
            Message::Accepted
        );
        assert!(matches!(
            parse(b"[{}]", None),
            Message::Error {
                code: INVALID_REQUEST,
                ..
            }
        ));
        assert!(matches!(
            parse(b"{", None),
            Message::Error {
                code: PARSE_ERROR,
                ..
            }
        ));
        assert!(matches!(
            parse(
                br#"{"jsonrpc":"2.0","id":"a","method":"server/discover"}"#,
                Some("2026-07-28")
            ),
            Message::Error {
                code: INVALID_REQUEST,
                ..
            }
        ));
        assert!(matches!(
            parse(
                br#"{"jsonrpc":"2.0","id":2,"method":"resources/list"}"#,
                None
            ),
            Message::Error {
                code: METHOD_NOT_FOUND,
                ..
            }
        ));
        let m = parse(br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"search","arguments":{"query":"issues","limit":3}}}"#, Some("2025-11-25"));
        assert_eq!(
            m,
            Message::Search {
                id: json!(3),
                query: "issues".into(),
                limit: 3
            }
        );
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"search","arguments":{"query":"x","limit":500}}}"#, None),
            Message::Error { code: INVALID_PARAMS, .. }
        ));
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"execute","arguments":{}}}"#, None),
            Message::Error { code: INVALID_PARAMS, .. }
        ));
    }

    #[test]
    fn the_tool_list_is_small() {
        // ~4 characters a token: well under 1,000 tokens whatever the tenant has.
        assert!(
            tools().to_string().len() < 2_500,
            "{}",
            tools().to_string().len()
        );
    }

    #[test]
    fn origins_must_match_the_host() {
        assert!(origin_allowed(None, Some("a:1")));
        assert!(origin_allowed(Some("http://a:1"), Some("a:1")));
        assert!(!origin_allowed(Some("http://evil.example"), Some("a:1")));
        assert!(!origin_allowed(Some("null"), Some("a:1")));
    }
}
