//! Client-side tools over a streamed execute, against the real gateway (pingora, isolates in
//! worker processes, or threads with `ISOGATE_TEST_ISOLATION=thread`): `POST /v1/execute` with
//! `tools` and `Accept: application/x-ndjson` streams a `call` event per tool call; the client
//! answers with `POST <reply_to>`; the last event is the `result`. Covers replies, errors,
//! tenant isolation of executions, ended executions (410), the wall-clock limit, the bound on
//! waiting calls, and a client that stops reading.

mod common;

use common::{tenant_yaml, Gateway};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

const KEY: &str = "tools-key";
const OTHER_KEY: &str = "tools-other-key";
const POOL: &str = "threads: 2, warm_isolates: 2";

fn gateway() -> Gateway {
    let limits = "cpu_ms: 200, memory_mb: 64, wall_ms: 3000, subrequests: 5, max_concurrency: 8, max_cached_workers: 10, max_body_bytes: 1048576";
    Gateway::start(
        POOL,
        &(tenant_yaml("alpha", KEY, limits) + &tenant_yaml("beta", OTHER_KEY, limits)),
    )
}

/// A streamed execute: the response whose body is read line by line.
struct Stream {
    lines: std::io::Lines<BufReader<reqwest::blocking::Response>>,
    execution: String,
}

impl Stream {
    fn open(g: &Gateway, key: &str, body: Value) -> Stream {
        let r = reqwest::blocking::Client::new()
            .post(g.url("/v1/execute"))
            .bearer_auth(key)
            .header("accept", "application/x-ndjson")
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["content-type"], "application/x-ndjson");
        let execution = r.headers()["isogate-execution"]
            .to_str()
            .unwrap()
            .to_string();
        Stream {
            lines: BufReader::new(r).lines(),
            execution,
        }
    }

    fn next(&mut self) -> Value {
        let line = self.lines.next().expect("an event").expect("a line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Answers every call with `answer(tool, args)` until the result, which it returns with
    /// the calls seen.
    fn run(
        &mut self,
        g: &Gateway,
        key: &str,
        mut answer: impl FnMut(&str, &Value) -> Value,
    ) -> (Value, Vec<Value>) {
        let mut calls = Vec::new();
        loop {
            let event = self.next();
            match event["type"].as_str() {
                Some("call") => {
                    let reply = answer(event["tool"].as_str().unwrap(), &event["args"]);
                    let r = reply_to(g, key, &event, &reply);
                    assert_eq!(r.0, 200, "{}", r.1);
                    calls.push(event);
                }
                Some("result") => return (event, calls),
                _ => panic!("unexpected event {event}"),
            }
        }
    }
}

/// A streamed execute of `code` with `tools`, and its first event, which must be a call.
fn first_call(g: &Gateway, code: &str, tools: Value) -> (Stream, Value) {
    let mut stream = Stream::open(g, KEY, json!({"code": code, "tools": tools}));
    let call = stream.next();
    assert_eq!(call["type"], "call", "{call}");
    (stream, call)
}

fn reply_to(g: &Gateway, key: &str, event: &Value, body: &Value) -> (u16, Value) {
    post(g, key, event["reply_to"].as_str().unwrap(), body)
}

fn post(g: &Gateway, key: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = g.post_json(key, path, body);
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

#[test]
fn tool_calls_stream_as_events_and_settle_with_the_clients_answers() {
    let g = gateway();
    let code = r#"async () => {
        const sum = await codemode.add({ a: 2, b: 3 });
        const both = await Promise.all([codemode.add({ a: 1, b: 1 }), codemode.get_sum({ a: 5, b: 5 })]);
        let refused;
        try { await kv.put({ key: "k", value: "v" }); } catch (e) {
            refused = { name: e.name, code: e.code, api: e.api, tool: e.tool, message: e.message };
        }
        console.log("done");
        return { sum, both, refused, undeclared: typeof codemode.nope, same: codemode["get-sum"] === codemode.get_sum };
    }"#;
    let mut stream = Stream::open(
        &g,
        KEY,
        json!({"code": code, "tools": {"codemode": ["add", "get-sum"], "kv": ["put"]}}),
    );
    let id = stream.execution.clone();
    assert_eq!(id.len(), 32, "{id}");
    let (result, calls) = stream.run(&g, KEY, |tool, args| match tool {
        "codemode.add" | "codemode.get-sum" => {
            json!({"result": args["a"].as_i64().unwrap() + args["b"].as_i64().unwrap()})
        }
        "kv.put" => json!({"error": "the store is read-only"}),
        other => panic!("{other}"),
    });
    assert_eq!(
        result["result"],
        json!({
            "sum": 5,
            "both": [2, 10],
            "refused": {"name": "ApiError", "code": "TOOL_ERROR", "api": "kv", "tool": "put", "message": "the store is read-only"},
            "undeclared": "undefined",
            "same": true,
        }),
        "{result}"
    );
    assert_eq!(result["error"], Value::Null);
    assert_eq!(result["logs"][0]["message"], "done");
    // The events: one per call, with the original tool name and the arguments as sent.
    let tools: Vec<&str> = calls.iter().map(|c| c["tool"].as_str().unwrap()).collect();
    assert_eq!(tools.len(), 4);
    assert_eq!(tools[0], "codemode.add");
    assert!(tools.contains(&"codemode.get-sum"), "{tools:?}");
    assert_eq!(tools[3], "kv.put");
    assert_eq!(calls[0]["args"], json!({"a": 2, "b": 3}));
    for call in &calls {
        let reply_to = format!("/v1/executions/{id}/calls/{}", call["id"].as_str().unwrap());
        assert_eq!(call["reply_to"], reply_to);
    }
    // The receipt lists the tool calls in order, then the outcome.
    let receipt = result["receipt"].as_array().unwrap();
    let listed: Vec<(&str, &str)> = receipt
        .iter()
        .filter(|e| e["type"] == "tool")
        .map(|e| (e["tool"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(listed.len(), 4, "{receipt:?}");
    assert_eq!(listed[0], ("codemode.add", "ok"));
    assert_eq!(listed[3], ("kv.put", "tool_error"));
    assert_eq!(
        receipt.last().unwrap(),
        &json!({"type": "outcome", "outcome": "completed"})
    );

    // The execution has ended: its calls answer 410 to its tenant, 404 to anyone else.
    let first = calls[0]["reply_to"].as_str().unwrap();
    let (status, body) = post(&g, KEY, first, &json!({"result": 1}));
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"]["kind"], "gone");
    assert_eq!(post(&g, OTHER_KEY, first, &json!({"result": 1})).0, 404);
    assert_eq!(
        post(
            &g,
            KEY,
            "/v1/executions/00ff/calls/1",
            &json!({"result": 1})
        )
        .0,
        404
    );
    let ok = g.metric(r#"isogate_client_tool_calls_total{outcome="ok",tenant="alpha"}"#);
    assert_eq!(ok, 3.0);
    let failed =
        g.metric(r#"isogate_client_tool_calls_total{outcome="tool_error",tenant="alpha"}"#);
    assert_eq!(failed, 1.0);
    assert_eq!(
        g.metric(r#"isogate_client_tool_calls_total{outcome="ok",tenant="beta"}"#),
        0.0,
        "series start at 0"
    );
}

#[test]
fn replies_are_checked_and_belong_to_the_executions_tenant() {
    let g = gateway();
    let (mut stream, call) = first_call(
        &g,
        // A second call keeps the execution running while the first is answered twice.
        "async () => [await codemode.echo({ n: 1 }), await codemode.echo({ n: 10 })]",
        json!({"codemode": ["echo"]}),
    );
    // Another tenant's key cannot see or answer it.
    let (status, _) = reply_to(&g, OTHER_KEY, &call, &json!({"result": "stolen"}));
    assert_eq!(status, 404);
    // Malformed replies are refused with the field named, and the call still waits.
    for (bad, field) in [
        (json!({}), "result"),
        (json!({"result": 1, "error": "x"}), "not both"),
        (json!({"result": 1, "extra": 1}), "extra"),
        (json!({"error": 7}), "error"),
    ] {
        let (status, body) = reply_to(&g, KEY, &call, &bad);
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{message}");
    }
    let unknown = format!("/v1/executions/{}/calls/999", stream.execution);
    assert_eq!(post(&g, KEY, &unknown, &json!({"result": 1})).0, 404);
    assert_eq!(
        reply_to(&g, KEY, &call, &json!({"result": {"n": 2}})).0,
        200
    );
    // Answered once only (the execution now waits on its second call).
    let second = stream.next();
    assert_eq!(second["args"], json!({"n": 10}), "{second}");
    assert_eq!(
        reply_to(&g, KEY, &call, &json!({"result": {"n": 3}})).0,
        404
    );
    assert_eq!(reply_to(&g, KEY, &second, &json!({"result": 11})).0, 200);
    let result = stream.next();
    assert_eq!(result["type"], "result");
    assert_eq!(result["result"], json!([{"n": 2}, 11]), "{result}");
    // The reply route takes POST only and a key.
    let r = reqwest::blocking::Client::new()
        .post(g.url(call["reply_to"].as_str().unwrap()))
        .json(&json!({"result": 1}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[test]
fn bad_tool_declarations_are_refused_before_anything_runs() {
    let g = gateway();
    let send = |body: Value, ndjson: bool| {
        let mut r = reqwest::blocking::Client::new()
            .post(g.url("/v1/execute"))
            .bearer_auth(KEY)
            .json(&body);
        if ndjson {
            r = r.header("accept", "application/x-ndjson");
        }
        let r = r.send().unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap())
    };
    let code = "async () => 1";
    let (status, body) = send(json!({"code": code, "tools": {"codemode": ["a"]}}), false);
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("application/x-ndjson"),
        "{body}"
    );
    for (tools, field) in [
        (json!({"eval": ["a"]}), "tools.eval"),
        (json!({"a-b": ["a"]}), "tools.a-b"),
        (json!({"ns": ["x", "x"]}), "tools.ns[1]"),
        (json!({"ns": "x"}), "tools.ns"),
    ] {
        let (status, body) = send(json!({"code": code, "tools": tools}), true);
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{message}");
    }
    // Without `tools`, a streamed execute is just its result event; without the Accept header,
    // execute answers as before (and the namespaces do not exist).
    let mut stream = Stream::open(&g, KEY, json!({"code": "async () => 41 + 1"}));
    let result = stream.next();
    assert_eq!(
        (result["type"].clone(), result["result"].clone()),
        (json!("result"), json!(42))
    );
    let out = g.execute(KEY, "async () => typeof codemode", json!({}));
    assert_eq!(out["result"], "undefined");
}

#[test]
fn unanswered_calls_end_with_the_wall_clock_limit() {
    let g = gateway();
    let started = Instant::now();
    let (mut stream, call) = first_call(
        &g,
        "async () => await codemode.wait({})",
        json!({"codemode": ["wait"]}),
    );
    let result = stream.next();
    assert_eq!(result["type"], "result");
    assert_eq!(result["error"]["kind"], "wall_limit", "{result}");
    assert!(started.elapsed() >= Duration::from_millis(3000));
    let receipt = result["receipt"].as_array().unwrap();
    assert_eq!(receipt.last().unwrap()["outcome"], "wall_limit", "{result}");
    // The call ended with the execution.
    assert_eq!(reply_to(&g, KEY, &call, &json!({"result": 1})).0, 410);
}

#[test]
fn waiting_calls_are_bounded() {
    let g = gateway();
    // 70 calls at once, none answered: 64 wait (64 events), 6 are refused at once.
    let code = r#"async () => {
        let refused = [];
        let enough;
        const six = new Promise((resolve) => { enough = resolve; });
        for (let i = 0; i < 70; i++) {
            codemode.f({ i }).catch((e) => { refused.push(e.code); if (refused.length === 6) enough(); });
        }
        await six;
        return refused;
    }"#;
    let mut stream = Stream::open(&g, KEY, json!({"code": code, "tools": {"codemode": ["f"]}}));
    let mut calls = 0;
    let result = loop {
        let event = stream.next();
        if event["type"] == "result" {
            break event;
        }
        calls += 1;
    };
    assert_eq!(calls, 64);
    assert_eq!(
        result["result"],
        json!(vec!["TOO_MANY_CALLS"; 6]),
        "{result}"
    );
}

#[test]
fn a_client_that_stops_reading_fails_its_waiting_calls() {
    let g = gateway();
    let (stream, call) = first_call(
        &g,
        "async () => await codemode.wait({})",
        json!({"codemode": ["wait"]}),
    );
    drop(stream);
    // The gateway watches the idle connection: once the client has closed it, the waiting call
    // fails (`api_unavailable`) and the execution ends, so the call answers 410; it never
    // takes an answer meant for a client that has gone. (Polled until the gateway has seen
    // the close. Without the watch, the call would wait until the wall-clock limit ends the
    // invocation, and a call cut off that way is not counted as `api_unavailable`.)
    let gone = r#"isogate_client_tool_calls_total{outcome="api_unavailable",tenant="alpha"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.metric(gone) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the gateway did not notice the client leaving"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(reply_to(&g, KEY, &call, &json!({"result": 1})).0, 410);
}
