//! The client side of MCP's Streamable HTTP transport, over [`transport::exchange`]: JSON-RPC
//! 2.0 requests POSTed to the server's endpoint, answered with one JSON body or an SSE stream
//! (read until the response with our id arrives); `initialize` (protocol version negotiated,
//! `Mcp-Session-Id` kept), `notifications/initialized`, `tools/list` (every page) and
//! `tools/call`.

use super::transport::{exchange, Refused, Upstream};
use isogate_pool::{ApiErrorCode, EgressPort, EgressRequest, Invoker};
use serde_json::{json, Value};
use std::time::Duration;

/// Protocol versions this client speaks, newest first; the first is offered.
pub const PROTOCOL_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];
/// Largest JSON-RPC answer read from a server.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
const TIMED_OUT: &str = "the MCP server did not finish its answer in time";
/// Most pages of `tools/list` followed.
const MAX_PAGES: usize = 100;

/// An initialised session with a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// `Mcp-Session-Id`, when the server gave one.
    pub id: Option<String>,
    /// The negotiated protocol version.
    pub protocol: String,
}

/// A tool as `tools/list` describes it.
#[derive(Debug, Clone)]
pub struct ListedTool {
    /// The tool's name on the server.
    pub name: String,
    /// Its description.
    pub description: Option<String>,
    /// `inputSchema`.
    pub input_schema: Value,
    /// `outputSchema`, when given.
    pub output_schema: Option<Value>,
}

/// One JSON-RPC exchange's outcome.
enum RpcOutcome {
    Result(Value),
    Error { code: i64, message: String },
}

/// Who sends and how: the egress port, the invoker the request is audited for, subrequests
/// left, the per-exchange timeout.
pub struct Sender<'a> {
    /// The egress pipeline.
    pub port: &'a dyn EgressPort,
    /// Whose request it is (audit, rate limits, credentials).
    pub invoker: Invoker,
    /// Subrequests left including this one.
    pub left: u32,
    /// Time allowed for one exchange.
    pub timeout: Duration,
}

fn request(url: &str, session: Option<&Session>, body: &Value) -> EgressRequest {
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        (
            "accept".to_string(),
            "application/json, text/event-stream".to_string(),
        ),
    ];
    if let Some(session) = session {
        if let Some(id) = &session.id {
            headers.push(("mcp-session-id".into(), id.clone()));
        }
        headers.push(("mcp-protocol-version".into(), session.protocol.clone()));
    }
    EgressRequest {
        method: "POST".into(),
        url: url.to_string(),
        headers,
        body: serde_json::to_vec(body).unwrap_or_default(),
        redirect: "error".into(),
        budget: 0,
    }
}

/// The session died (the server answered 404 to a request carrying its id).
pub struct SessionExpired;

/// Sends one JSON-RPC request and reads its response.
async fn rpc(
    sender: &Sender<'_>,
    url: &str,
    session: Option<&Session>,
    id: u64,
    method: &str,
    params: Value,
) -> Result<(RpcOutcome, Upstream), Result<Refused, SessionExpired>> {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let mut upstream = exchange(
        sender.port,
        sender.invoker.clone(),
        request(url, session, &body),
        sender.left,
        sender.timeout,
    )
    .await
    .map_err(Ok)?;
    let status = upstream.head.status;
    if status == 404 && session.is_some_and(|s| s.id.is_some()) {
        return Err(Err(SessionExpired));
    }
    if !(200..300).contains(&status) {
        let text = upstream.read_all(64 * 1024).await.unwrap_or_default();
        let mut failure = isogate_pool::ApiFailure::new(
            ApiErrorCode::UpstreamError,
            format!(
                "the MCP server answered {method} with HTTP {status}: {}",
                snippet(&text)
            ),
        );
        failure.status = Some(status);
        return Err(Ok(Refused::Failed {
            failure,
            charged: true,
        }));
    }
    let is_sse = upstream
        .header("content-type")
        .is_some_and(|t| t.trim_start().starts_with("text/event-stream"));
    let message = tokio::time::timeout(sender.timeout, async {
        if is_sse {
            read_sse_response(&mut upstream, id).await
        } else {
            let bytes = upstream.read_all(MAX_MESSAGE_BYTES).await?;
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("the MCP server's answer is not JSON: {e}"))?;
            find_response(value, id)
                .ok_or_else(|| "the MCP server's answer has no response to the request".to_string())
        }
    })
    .await
    .unwrap_or_else(|_| Err(TIMED_OUT.into()));
    let message = message.map_err(|e| {
        let code = if e == TIMED_OUT {
            ApiErrorCode::UpstreamTimeout
        } else {
            ApiErrorCode::UpstreamError
        };
        Ok(Refused::failed(code, e, true))
    })?;
    let outcome = if let Some(error) = message.get("error") {
        RpcOutcome::Error {
            code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
                .chars()
                .take(2000)
                .collect(),
        }
    } else {
        RpcOutcome::Result(message.get("result").cloned().unwrap_or(Value::Null))
    };
    Ok((outcome, upstream))
}

/// The response with `id` among one message or a batch.
fn find_response(value: Value, id: u64) -> Option<Value> {
    let matches = |v: &Value| {
        v.get("id").and_then(Value::as_u64) == Some(id)
            && (v.get("result").is_some() || v.get("error").is_some())
    };
    match value {
        Value::Array(items) => items.into_iter().find(|v| matches(v)),
        v if matches(&v) => Some(v),
        _ => None,
    }
}

/// Reads an SSE stream until the JSON-RPC response with `id` (requests and notifications the
/// server interleaves are skipped: this client offers no capabilities that they could need).
async fn read_sse_response(upstream: &mut Upstream, id: u64) -> Result<Value, String> {
    let mut buffer: Vec<u8> = Vec::new();
    let mut total = 0usize;
    // How far the buffer was searched for an event's end (each byte is looked at once or twice).
    let mut searched = 0usize;
    loop {
        // Complete events in the buffer, separated by a blank line.
        while let Some((end, skip)) = event_end(&buffer, searched.saturating_sub(3)) {
            searched = 0;
            let event: Vec<u8> = buffer.drain(..end + skip).take(end).collect();
            let data = event_data(&event);
            if data.is_empty() {
                continue;
            }
            if let Ok(value) = serde_json::from_str::<Value>(&data) {
                if let Some(response) = find_response(value, id) {
                    return Ok(response);
                }
            }
        }
        match upstream.next().await {
            None => return Err("the MCP server's event stream ended without a response".into()),
            Some(Err(e)) => return Err(format!("the MCP server's event stream broke off: {e}")),
            Some(Ok(part)) => {
                total += part.len();
                if total > MAX_MESSAGE_BYTES {
                    return Err(format!(
                        "the MCP server's event stream exceeds {MAX_MESSAGE_BYTES} bytes"
                    ));
                }
                searched = buffer.len();
                buffer.extend_from_slice(&part);
            }
        }
    }
}

/// Where the first event in `buffer` ends (searching from `from`), and the length of the blank
/// line after it.
fn event_end(buffer: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i < buffer.len() {
        for sep in [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"] {
            if buffer[i..].starts_with(sep) {
                return Some((i, sep.len()));
            }
        }
        i += 1;
    }
    None
}

/// The `data` of one SSE event: its `data:` lines joined with newlines.
fn event_data(event: &[u8]) -> String {
    let text = String::from_utf8_lossy(event);
    let mut lines = Vec::new();
    for line in text.split(['\n', '\r']) {
        if let Some(rest) = line.strip_prefix("data:") {
            lines.push(rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
    lines.join("\n")
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut s: String = text.chars().take(300).collect();
    if text.chars().count() > 300 {
        s.push('…');
    }
    s
}

/// `initialize` then `notifications/initialized`.
pub async fn initialize(sender: &Sender<'_>, url: &str) -> Result<Session, Refused> {
    let params = json!({
        "protocolVersion": PROTOCOL_VERSIONS[0],
        "capabilities": {},
        "clientInfo": {"name": "isogate", "version": env!("CARGO_PKG_VERSION")},
    });
    let (outcome, upstream) = rpc(sender, url, None, 1, "initialize", params)
        .await
        .map_err(|e| {
            e.unwrap_or_else(|_| Refused::failed(ApiErrorCode::UpstreamError, "no session", true))
        })?;
    let result = match outcome {
        RpcOutcome::Result(r) => r,
        RpcOutcome::Error { code, message } => {
            return Err(Refused::failed(
                ApiErrorCode::UpstreamError,
                format!("the MCP server refused initialize ({code}): {message}"),
                true,
            ))
        }
    };
    let offered = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let Some(protocol) = PROTOCOL_VERSIONS.iter().find(|v| **v == offered) else {
        return Err(Refused::failed(
            ApiErrorCode::UpstreamError,
            format!(
                "the MCP server speaks protocol version {offered:?}; isogate speaks {}",
                PROTOCOL_VERSIONS.join(", ")
            ),
            true,
        ));
    };
    let session = Session {
        id: upstream
            .header("mcp-session-id")
            .filter(|id| {
                !id.is_empty() && id.len() <= 1024 && id.bytes().all(|b| (0x21..=0x7e).contains(&b))
            })
            .map(str::to_string),
        protocol: protocol.to_string(),
    };
    drop(upstream);
    // The notification is answered 202 with no body; its failure is the next request's.
    let body = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    if let Ok(mut up) = exchange(
        sender.port,
        sender.invoker.clone(),
        request(url, Some(&session), &body),
        sender.left,
        sender.timeout,
    )
    .await
    {
        let _ = up.read_all(64 * 1024).await;
    }
    Ok(session)
}

/// Every tool of the server (`tools/list`, following `nextCursor`), at most `max`.
pub async fn list_tools(
    sender: &Sender<'_>,
    url: &str,
    session: &Session,
    max: usize,
) -> Result<Vec<ListedTool>, Refused> {
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..MAX_PAGES {
        let params = match &cursor {
            Some(c) => json!({ "cursor": c }),
            None => json!({}),
        };
        let (outcome, _) = rpc(
            sender,
            url,
            Some(session),
            2 + page as u64,
            "tools/list",
            params,
        )
        .await
        .map_err(|e| {
            e.unwrap_or_else(|_| {
                Refused::failed(
                    ApiErrorCode::ApiUnavailable,
                    "the MCP session expired",
                    true,
                )
            })
        })?;
        let result = match outcome {
            RpcOutcome::Result(r) => r,
            RpcOutcome::Error { code, message } => {
                return Err(Refused::failed(
                    ApiErrorCode::UpstreamError,
                    format!("the MCP server refused tools/list ({code}): {message}"),
                    true,
                ))
            }
        };
        for tool in result
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                continue;
            };
            if name.is_empty() || name.len() > 256 {
                continue;
            }
            if tools.len() >= max {
                return Err(Refused::failed(
                    ApiErrorCode::ApiUnavailable,
                    format!("the MCP server lists more than {max} tools"),
                    true,
                ));
            }
            tools.push(ListedTool {
                name: name.to_string(),
                description: tool
                    .get("description")
                    .and_then(Value::as_str)
                    .map(|d| d.chars().take(4000).collect()),
                input_schema: tool
                    .get("inputSchema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
                output_schema: tool.get("outputSchema").cloned(),
            });
        }
        cursor = result
            .get("nextCursor")
            .and_then(Value::as_str)
            .map(str::to_string);
        if cursor.is_none() {
            return Ok(tools);
        }
    }
    Ok(tools)
}

/// What a `tools/call` came to.
pub enum CallOutcome {
    /// The tool's result, as the code gets it.
    Value(Value),
    /// The tool reported an error (`isError`), or the server refused the call.
    ToolError(String),
}

/// `tools/call`. `Err(Err(SessionExpired))`: initialise again and retry.
pub async fn call_tool(
    sender: &Sender<'_>,
    url: &str,
    session: &Session,
    tool: &str,
    arguments: Value,
) -> Result<CallOutcome, Result<Refused, SessionExpired>> {
    let params = json!({"name": tool, "arguments": arguments});
    let (outcome, _) = rpc(sender, url, Some(session), 1000, "tools/call", params).await?;
    Ok(match outcome {
        RpcOutcome::Error { code, message } => CallOutcome::ToolError(format!(
            "the MCP server refused the call ({code}): {message}"
        )),
        RpcOutcome::Result(result) => {
            let text = text_content(&result);
            if result.get("isError").and_then(Value::as_bool) == Some(true) {
                CallOutcome::ToolError(text.unwrap_or_else(|| "the tool reported an error".into()))
            } else {
                CallOutcome::Value(tool_value(result, text))
            }
        }
    })
}

/// The text items of a tool result's `content`, joined with newlines.
fn text_content(result: &Value) -> Option<String> {
    let texts: Vec<&str> = result
        .get("content")
        .and_then(Value::as_array)?
        .iter()
        .filter(|c| c.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|c| c.get("text").and_then(Value::as_str))
        .collect();
    (!texts.is_empty()).then(|| texts.join("\n"))
}

/// What the code gets: `structuredContent` when present, else the text content parsed as JSON
/// when it is JSON, else the text, else the content list itself.
fn tool_value(mut result: Value, text: Option<String>) -> Value {
    if let Some(structured) = result.get_mut("structuredContent").map(Value::take) {
        if !structured.is_null() {
            return structured;
        }
    }
    match text {
        Some(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        None => result
            .get_mut("content")
            .map(Value::take)
            .unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_split_and_joined() {
        let stream = b"event: message\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\nid: 2\ndata: x\n\n";
        let (end, skip) = event_end(stream, 0).unwrap();
        assert_eq!(event_data(&stream[..end]), "{\"a\":\n1}");
        let rest = &stream[end + skip..];
        let (end, _) = event_end(rest, 0).unwrap();
        assert_eq!(event_data(&rest[..end]), "x");
    }

    #[test]
    fn results_prefer_structured_content_then_json_text() {
        let r = json!({"content":[{"type":"text","text":"{\"n\":3}"}],"structuredContent":{"n":4}});
        let t = text_content(&r);
        assert_eq!(tool_value(r, t), json!({"n": 4}));
        let r = json!({"content":[{"type":"text","text":"{\"n\":3}"}]});
        let t = text_content(&r);
        assert_eq!(tool_value(r, t), json!({"n": 3}));
        let r = json!({"content":[{"type":"text","text":"hello"}]});
        let t = text_content(&r);
        assert_eq!(tool_value(r, t), json!("hello"));
        let r = json!({"content":[{"type":"image","data":"AA==","mimeType":"image/png"}]});
        let t = text_content(&r);
        assert_eq!(
            tool_value(r, t),
            json!([{"type":"image","data":"AA==","mimeType":"image/png"}])
        );
    }

    #[test]
    fn responses_are_found_by_id_in_batches() {
        let batch = json!([{"jsonrpc":"2.0","method":"notifications/progress"},{"jsonrpc":"2.0","id":7,"result":{}}]);
        assert!(find_response(batch, 7).is_some());
        assert!(find_response(json!({"jsonrpc":"2.0","id":8,"result":{}}), 7).is_none());
    }
}
