//! Tenant APIs end to end (issue 12, part 1): Worker code calls `env.<api>.<tool>(args)` on real
//! upstream MCP servers — a server written with the Python `mcp` SDK that refuses requests
//! without the injected credential (`tests/mcp/checked_server.py`), and npm's
//! `@modelcontextprotocol/server-everything` — and on an OpenAPI document served by a loopback
//! server, through the real gateway and its egress pipeline.
//!
//! The npm packages are pinned in `tests/mcp/package.json` and installed under
//! `target/tools/mcp` by `scripts/prerequisites.sh` (`ISOGATE_MCP_MODULES` overrides); the Python
//! SDK is pinned there too (`pip install mcp==…`).

mod common;

use common::upstream::{Answer, Upstream};
use common::{sha256_hex, worker, Gateway};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

const KEY: &str = "apis-key";
const OTHER_KEY: &str = "apis-other-key";
const TOKEN: &str = "mcp-Tok-8731-very-secret";
const POOL: &str = "threads: 2, warm_isolates: 2";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` and waits for the line its readiness is announced on (`ready` returns the
/// port from it).
fn spawn(
    mut command: Command,
    what: &str,
    ready: impl Fn(&str) -> Option<u16>,
    stderr: bool,
) -> Server {
    command.stdin(Stdio::null());
    if stderr {
        command.stdout(Stdio::null()).stderr(Stdio::piped());
    } else {
        command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what} ({e}): run scripts/prerequisites.sh"));
    let out: Box<dyn std::io::Read + Send> = if stderr {
        Box::new(child.stderr.take().unwrap())
    } else {
        Box::new(child.stdout.take().unwrap())
    };
    let mut lines = BufReader::new(out).lines();
    let port = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(port) = ready(&line) {
                    break port;
                }
            }
            _ => {
                let _ = child.kill();
                panic!(
                    "{what} ended before it was ready: is it installed? (scripts/prerequisites.sh)"
                );
            }
        }
    };
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, port }
}

/// The Python SDK server that checks the credential.
fn checked_server() -> Server {
    let python = std::env::var("ISOGATE_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut c = Command::new(python);
    c.arg(repo_root().join("tests/mcp/checked_server.py"))
        .env("MCP_TEST_TOKEN", TOKEN);
    spawn(
        c,
        "the Python MCP server (pip install mcp)",
        |l| l.strip_prefix("READY ").and_then(|p| p.trim().parse().ok()),
        false,
    )
}

/// npm's server-everything over Streamable HTTP.
fn everything_server() -> Server {
    let modules = std::env::var("ISOGATE_MCP_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/tools/mcp"));
    let index = modules.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        index.exists(),
        "{} is missing: run scripts/prerequisites.sh (it installs tests/mcp's npm packages) or set ISOGATE_MCP_MODULES",
        index.display()
    );
    let port = common::free_loopback_addr()
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    let mut c = Command::new("node");
    c.arg(index)
        .arg("streamableHttp")
        .env("PORT", port.to_string());
    spawn(
        c,
        "server-everything (node)",
        move |l| l.contains("listening on port").then_some(port),
        true,
    )
}

fn tenant(name: &str, key: &str, limits: &str, rest: &str) -> String {
    format!(
        "  - name: {name}\n    api_keys:\n      - sha256: \"{}\"\n    limits: {{ {limits} }}\n{rest}",
        sha256_hex(key)
    )
}

const CREDENTIALS: &str = "credentials:\n  - name: mcp-token\n    source: { env: ISOGATE_TEST_MCP_TOKEN }\n    inject: { header: Authorization, value: \"Bearer ${secret}\" }\n";

/// A rule for a loopback port (with a credential, or none).
fn rule(name: &str, port: u16, credential: Option<&str>) -> String {
    let credential = credential
        .map(|c| format!("          credential: {c}\n"))
        .unwrap_or_default();
    format!("        - host: 127.0.0.1\n          ports: [{port}]\n          allow_private: true\n          name: {name}\n{credential}")
}

fn execute(g: &Gateway, key: &str, code: &str) -> Value {
    let r = g.post_json(key, "/v1/execute", &json!({ "code": code }));
    let status = r.status().as_u16();
    let body: Value = r.json().unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// The gateway with tenant `alpha`'s APIs `checked` (the Python server) and `everything`, and
/// tenant `beta` with no APIs.
fn gateway(checked: &Server, everything: &Server, limits: &str) -> Gateway {
    let alpha = tenant(
        "alpha",
        KEY,
        limits,
        &format!(
            "    egress:\n      allow:\n{}{}    apis:\n      - name: checked\n        mcp: {{ url: \"http://127.0.0.1:{}/mcp\" }}\n        timeout_ms: 1500\n      - name: everything\n        mcp: {{ url: \"http://127.0.0.1:{}/mcp\" }}\n",
            rule("checked", checked.port, Some("mcp-token")),
            rule("everything", everything.port, None),
            checked.port,
            everything.port,
        ),
    );
    let beta = tenant("beta", OTHER_KEY, limits, "");
    Gateway::start_with(
        POOL,
        &(alpha + &beta),
        CREDENTIALS,
        &[("ISOGATE_TEST_MCP_TOKEN", TOKEN)],
    )
}

#[test]
fn workers_and_snippets_call_mcp_tools_with_the_credential_injected_and_never_see_it() {
    let (checked, everything) = (checked_server(), everything_server());
    let g = gateway(&checked, &everything, "subrequests: 20");
    let out = execute(
        &g,
        KEY,
        r#"async (env) => ({
            keys: Object.keys(env),
            sum: await env.checked.add({ a: 2, b: 3 }),
            weather: await env.checked.get_weather({ city: "Oslo" }),
            echoed: await env.checked.echo_credential({}),
            everything: await env.everything.get_sum({ a: 40, b: 2 }),
            echo: await env.everything.echo({ message: "hi" }),
        })"#,
    );
    let result = &out["result"];
    assert_eq!(result["keys"], json!(["checked", "everything"]), "{out}");
    assert_eq!(result["sum"], json!({ "result": 5 }), "{out}");
    assert_eq!(
        result["weather"],
        json!({ "city": "Oslo", "temperature_c": 21 }),
        "{out}"
    );
    // The server received the credential (it answers nothing without it) and sent it back: the
    // code sees it scrubbed.
    // (The SDK returns a tool's plain string as structured content `{result}`.)
    let echoed = result["echoed"]["result"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        !echoed.contains(TOKEN),
        "the credential reached the code: {echoed}"
    );
    assert!(echoed.starts_with("Bearer "), "{echoed}");
    assert!(result["everything"].to_string().contains("42"), "{out}");
    assert!(result["echo"].to_string().contains("hi"), "{out}");
    assert!(!out.to_string().contains(TOKEN));

    // A Worker (load() and a stored Worker through get()) has the same bindings in its env.
    let src = r#"export default { async fetch(request, env) {
        return Response.json(await env.checked.add({ a: 20, b: 22 }));
    } }"#;
    let r = g.load(KEY, &worker(src), None);
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().unwrap(), json!({ "result": 42 }));
    assert_eq!(g.put(KEY, "adder", src), 201);
    for _ in 0..3 {
        let r = g.get_worker(KEY, "adder", "/");
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.json::<Value>().unwrap(), json!({ "result": 42 }));
    }
    // The calls left through the egress pipeline, counted (and audited) under their rule: 3 in
    // the snippet, 1 by load(), 3 by get(), plus the gateway's own session and tool-list
    // requests.
    let allowed = g
        .metric(r#"isogate_egress_requests_total{decision="allow",rule="checked",tenant="alpha"}"#);
    assert!(allowed >= 7.0, "{allowed}");
    let ok = g.metric(r#"isogate_api_calls_total{api="checked",outcome="ok",tenant="alpha"}"#);
    assert_eq!(ok, 7.0);
    let denied = g
        .metric(r#"isogate_api_calls_total{api="checked",outcome="egress_denied",tenant="alpha"}"#);
    assert_eq!(denied, 0.0, "series exist at 0");
    assert!(!g.log().contains(TOKEN));
}

fn declarations(g: &Gateway, key: Option<&str>) -> (u16, String) {
    let mut request = reqwest::blocking::Client::new().get(g.url("/v1/apis.d.ts"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let r = request.send().unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/typescript"));
    }
    (status, r.text().unwrap())
}

#[test]
fn declarations_describe_each_tenants_apis_from_their_schemas() {
    let (checked, everything) = (checked_server(), everything_server());
    let g = gateway(&checked, &everything, "subrequests: 5");
    let (status, dts) = declarations(&g, Some(KEY));
    assert_eq!(status, 200, "{dts}");
    assert!(dts.starts_with("interface Env{\nchecked:{\n"), "{dts}");
    for expected in [
        "/** Adds two integers. */\nadd(args:{a:number;b:number}):Promise<{result:number}>;\n",
        "/** `get-weather`: The weather in a city. */\nget_weather(args:{city:string}):Promise<",
        "everything:{\n",
        "`get-sum`",
        "get_sum(args:{a:number;b:number}):Promise<",
    ] {
        assert!(dts.contains(expected), "{expected:?} missing from:\n{dts}");
    }
    assert!(!dts.contains("  "), "compact: {dts}");
    // The same text twice (stable order), and nothing of another tenant's.
    assert_eq!(declarations(&g, Some(KEY)).1, dts);
    assert_eq!(
        declarations(&g, Some(OTHER_KEY)),
        (200, "interface Env{\n}\n".to_string())
    );
    assert_eq!(declarations(&g, None).0, 401);
}

#[test]
fn failed_calls_are_typed_errors_the_code_can_act_on() {
    let (checked, everything) = (checked_server(), everything_server());
    // CPU room for the 1 MiB tool name (made, then turned into a property key), which took
    // over the default 50 ms on a busy CI machine.
    let g = gateway(&checked, &everything, "subrequests: 20, cpu_ms: 1000");
    let out = execute(
        &g,
        KEY,
        r#"async (env) => {
            const attempt = async (f) => {
                try { return { ok: await f() }; }
                catch (e) {
                    return { name: e.name, code: e.code, api: e.api, tool: e.tool, message: e.message,
                             hint: e.hint, isApiError: e instanceof ApiError };
                }
            };
            return {
                invalid: await attempt(() => env.checked.add({ a: "two", b: 3 })),
                missing: await attempt(() => env.checked.add({ b: 3 })),
                notObject: await attempt(() => env.checked.add(5)),
                toolError: await attempt(() => env.checked.fail({ message: "it broke" })),
                noTool: await attempt(() => env.checked.subtract({})),
                hugeName: await attempt(() => env.checked["x".repeat(1 << 20)]({})),
                timeout: await attempt(() => env.checked.slow({ ms: 5000 })),
                noApi: typeof env.github,
                then: typeof env.checked.then,
            };
        }"#,
    );
    let r = &out["result"];
    assert_eq!(r["invalid"]["code"], "INVALID_ARGUMENTS", "{out}");
    assert_eq!(r["invalid"]["name"], "ApiError");
    assert_eq!(r["invalid"]["isApiError"], true);
    assert_eq!(r["invalid"]["api"], "checked");
    assert_eq!(r["invalid"]["tool"], "add");
    assert!(
        r["invalid"]["message"].as_str().unwrap().contains("/a"),
        "{out}"
    );
    assert_eq!(r["missing"]["code"], "INVALID_ARGUMENTS");
    assert!(
        r["missing"]["message"].as_str().unwrap().contains("\"a\""),
        "{out}"
    );
    assert_eq!(r["notObject"]["name"], "TypeError", "{out}");
    assert_eq!(r["toolError"]["code"], "TOOL_ERROR", "{out}");
    assert!(
        r["toolError"]["message"]
            .as_str()
            .unwrap()
            .contains("it broke"),
        "{out}"
    );
    assert_eq!(r["noTool"]["code"], "TOOL_NOT_FOUND", "{out}");
    assert_eq!(r["hugeName"]["code"], "TOOL_NOT_FOUND", "{out}");
    assert!(
        r["noTool"]["hint"]
            .as_str()
            .unwrap()
            .contains("get_weather"),
        "{out}"
    );
    assert_eq!(r["timeout"]["code"], "UPSTREAM_TIMEOUT", "{out}");
    assert_eq!(r["noApi"], "undefined");
    assert_eq!(r["then"], "undefined");
}

#[test]
fn invalid_arguments_send_nothing_and_calls_count_as_subrequests() {
    let (checked, everything) = (checked_server(), everything_server());
    let g = gateway(&checked, &everything, "subrequests: 2");
    let allowed = |g: &Gateway| {
        g.metrics()
            .lines()
            .filter(|l| {
                l.starts_with("isogate_egress_requests_total")
                    && l.contains("rule=\"checked\"")
                    && l.contains("decision=\"allow\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    // Warm the catalogue (its fetches are the gateway's, not the invocation's).
    execute(&g, KEY, r#"async (env) => env.checked.add({ a: 1, b: 1 })"#);
    let before = allowed(&g);
    let out = execute(
        &g,
        KEY,
        r#"async (env) => {
            const errors = [];
            for (let i = 0; i < 5; i++) {
                try { await env.checked.add({ a: "x", b: i }); } catch (e) { errors.push(e.code); }
            }
            const sums = [await env.checked.add({ a: 1, b: 2 }), await env.checked.add({ a: 3, b: 4 })];
            return { errors, sums };
        }"#,
    );
    assert_eq!(
        allowed(&g) - before,
        2.0,
        "exactly the two valid calls went upstream: {out}"
    );
    let r = &out["result"];
    assert_eq!(r["errors"], json!(vec!["INVALID_ARGUMENTS"; 5]), "{out}");
    assert_eq!(
        g.metric(
            r#"isogate_api_calls_total{api="checked",outcome="invalid_arguments",tenant="alpha"}"#
        ),
        5.0
    );
    assert_eq!(r["sums"], json!([{ "result": 3 }, { "result": 7 }]));
    // A third call is one subrequest too many: the invocation ends as for fetch().
    let out = execute(
        &g,
        KEY,
        r#"async (env) => {
            await env.checked.add({ a: 1, b: 2 });
            await env.checked.add({ a: 3, b: 4 });
            try { await env.checked.add({ a: 5, b: 6 }); } catch (e) { return "caught " + e.message; }
        }"#,
    );
    assert_eq!(out["error"]["kind"], "subrequest_limit", "{out}");
    assert_eq!(
        allowed(&g) - before,
        4.0,
        "the refused call was not sent: {out}"
    );
}

#[test]
fn another_tenant_has_neither_the_apis_nor_their_calls() {
    let (checked, everything) = (checked_server(), everything_server());
    let g = gateway(&checked, &everything, "subrequests: 5");
    let out = execute(
        &g,
        OTHER_KEY,
        r#"async (env) => ({ keys: Object.keys(env), checked: typeof env.checked })"#,
    );
    assert_eq!(
        out["result"],
        json!({ "keys": [], "checked": "undefined" }),
        "{out}"
    );
}

#[test]
fn an_api_the_egress_rules_do_not_allow_is_refused_by_check() {
    let alpha = tenant(
        "alpha",
        KEY,
        "subrequests: 5",
        "    egress:\n      allow:\n        - host: api.example.com\n    apis:\n      - name: github\n        mcp: { url: \"https://mcp.example.org/mcp\" }\n      - name: bad-name\n        mcp: { url: \"https://api.example.com/mcp\" }\n      - name: both\n        mcp: { url: \"https://api.example.com/mcp\" }\n        openapi: { spec: x.json, base_url: \"https://api.example.com\" }\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, format!("tenants:\n{alpha}")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_isogate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("tenants[0].apis[0].mcp.url"), "{text}");
    assert!(text.contains("mcp.example.org"), "{text}");
    assert!(text.contains("tenants[0].apis[1].name"), "{text}");
    assert!(text.contains("tenants[0].apis[2]"), "{text}");
}

/// The OpenAPI document of the pet store served by [`pet_store`].
fn pet_spec() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": { "title": "pets", "version": "1" },
        "paths": {
            "/pets/{petId}": {
                "get": {
                    "operationId": "getPet",
                    "parameters": [
                        { "name": "petId", "in": "path", "required": true, "schema": { "type": "integer" } },
                        { "name": "verbose", "in": "query", "schema": { "type": "boolean" } }
                    ],
                    "responses": { "200": { "description": "a pet", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Pet" } } } } }
                }
            },
            "/pets": {
                "post": {
                    "operationId": "create-pet",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Pet" } } } },
                    "responses": { "201": { "description": "created" } }
                }
            }
        },
        "components": { "schemas": { "Pet": {
            "type": "object", "required": ["name"],
            "properties": { "name": { "type": "string" }, "tag": { "type": "string" } }
        } } }
    })
}

/// What the pet store saw of one request: method, target, `Authorization`, body.
type Request = (String, String, Option<String>, String);

#[test]
fn openapi_operations_are_tools_called_with_the_credential() {
    let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
    let record = seen.clone();
    let store = Upstream::start(move |s| {
        record.lock().unwrap().push((
            s.method.clone(),
            s.target.clone(),
            s.headers.get("authorization").cloned(),
            String::from_utf8_lossy(&s.body).into_owned(),
        ));
        if s.headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}")) {
            return Answer::json(401, &json!({ "error": "unauthorized" }));
        }
        match (s.method.as_str(), s.target.as_str()) {
            ("GET", "/openapi.json") => Answer::json(200, &pet_spec()),
            ("GET", t) if t.starts_with("/v1/pets/7") => {
                Answer::json(200, &json!({ "name": "Rex", "id": 7, "query": t }))
            }
            ("GET", t) if t.starts_with("/v1/pets/") => {
                Answer::json(404, &json!({ "error": "no such pet" }))
            }
            ("POST", "/v1/pets") => Answer::json(
                201,
                &serde_json::from_slice::<Value>(&s.body).unwrap_or(Value::Null),
            ),
            _ => Answer::json(404, &json!({})),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let spec_file = dir.path().join("pets.json");
    std::fs::write(&spec_file, pet_spec().to_string()).unwrap();
    let alpha = tenant(
        "alpha",
        KEY,
        "subrequests: 10",
        &format!(
            "    egress:\n      allow:\n{}    apis:\n      - name: pets\n        openapi: {{ spec: \"{}\", base_url: \"http://127.0.0.1:{}/v1\" }}\n      - name: petsByUrl\n        openapi: {{ spec: \"http://127.0.0.1:{}/openapi.json\", base_url: \"http://127.0.0.1:{}/v1\" }}\n",
            rule("store", store.port, Some("mcp-token")),
            spec_file.display(),
            store.port,
            store.port,
            store.port,
        ),
    );
    let g = Gateway::start_with(
        POOL,
        &alpha,
        CREDENTIALS,
        &[("ISOGATE_TEST_MCP_TOKEN", TOKEN)],
    );
    let out = execute(
        &g,
        KEY,
        r#"async (env) => {
            const pet = await env.pets.getPet({ petId: 7, verbose: true });
            const created = await env.petsByUrl.create_pet({ body: { name: "Tom", tag: "cat" } });
            let missing, invalid;
            try { await env.pets.getPet({ petId: 8 }); } catch (e) { missing = { code: e.code, status: e.status }; }
            try { await env.pets.create_pet({ body: { tag: "no name" } }); } catch (e) { invalid = e.code + " " + e.message; }
            return { pet, created, missing, invalid };
        }"#,
    );
    let r = &out["result"];
    assert_eq!(r["pet"]["name"], "Rex", "{out}");
    assert_eq!(r["pet"]["query"], "/v1/pets/7?verbose=true");
    assert_eq!(r["created"], json!({ "name": "Tom", "tag": "cat" }));
    assert_eq!(
        r["missing"],
        json!({ "code": "UPSTREAM_ERROR", "status": 404 })
    );
    assert!(
        r["invalid"]
            .as_str()
            .unwrap()
            .starts_with("INVALID_ARGUMENTS"),
        "{out}"
    );
    assert!(r["invalid"].as_str().unwrap().contains("name"), "{out}");
    let seen = seen.lock().unwrap();
    assert!(seen
        .iter()
        .all(|(_, _, auth, _)| auth.as_deref() == Some(&*format!("Bearer {TOKEN}"))));
    assert!(seen
        .iter()
        .any(|(m, t, _, b)| m == "POST" && t == "/v1/pets" && b.contains("Tom")));
    assert!(!out.to_string().contains(TOKEN));
}

#[test]
fn denied_fetches_and_rate_limited_calls_say_what_to_do() {
    let store = Upstream::start(|s| match s.target.as_str() {
        "/openapi.json" => Answer::json(200, &pet_spec()),
        t => Answer::json(200, &json!({ "name": "Rex", "at": t })),
    });
    let alpha = tenant(
        "alpha",
        KEY,
        "subrequests: 10",
        &format!(
            "    egress:\n      allow:\n        - host: 127.0.0.1\n          ports: [{}]\n          allow_private: true\n          name: store\n          rate_limit: {{ per_second: 1, burst: 1 }}\n    apis:\n      - name: pets\n        openapi: {{ spec: \"http://127.0.0.1:{}/openapi.json\", base_url: \"http://127.0.0.1:{}/v1\" }}\n",
            store.port, store.port, store.port,
        ),
    );
    let g = Gateway::start(POOL, &alpha);
    let out = execute(
        &g,
        KEY,
        &format!(
            r#"async (env) => {{
                const attempt = async (f) => {{
                    try {{ await f(); return "sent"; }}
                    catch (e) {{ return {{ name: e.name, code: e.code, rule: e.rule, reason: e.reason, hint: e.hint, status: e.status }}; }}
                }};
                return {{
                    host: await attempt(() => fetch("https://api.example.com/x")),
                    port: await attempt(() => fetch("http://127.0.0.1:{}/x")),
                    first: await attempt(() => env.pets.getPet({{ petId: 1 }})),
                    second: await attempt(() => env.pets.getPet({{ petId: 2 }})),
                }};
            }}"#,
            store.port + 1
        ),
    );
    let r = &out["result"];
    assert_eq!(r["host"]["name"], "TypeError", "{out}");
    assert_eq!(r["host"]["code"], "EGRESS_DENIED", "{out}");
    assert_eq!(r["host"]["reason"], "no_rule");
    assert!(
        r["host"]["hint"]
            .as_str()
            .unwrap()
            .contains("api.example.com"),
        "{out}"
    );
    assert_eq!(r["port"]["code"], "EGRESS_DENIED", "{out}");
    assert_eq!(r["port"]["reason"], "port");
    assert_eq!(r["port"]["rule"], "store");
    assert!(
        r["port"]["hint"]
            .as_str()
            .unwrap()
            .contains(&(store.port + 1).to_string()),
        "{out}"
    );
    // The catalogue fetch took the rule's one token this second or not: the calls after it
    // meet the limit either way, and the refusal says so.
    assert_eq!(r["second"]["code"], "RATE_LIMITED", "{out}");
    assert_eq!(r["second"]["status"], 429, "{out}");
}

/// Runs an SDK client script (`py_client.py` or `ts_client.mjs`) against the gateway's `/mcp`:
/// its JSON output, or its failure.
fn sdk_client(
    script: &str,
    g: &Gateway,
    key: &str,
    calls: &[(&str, Value)],
) -> Result<Value, String> {
    let path = repo_root().join("tests/mcp").join(script);
    let mut c = if script.ends_with(".py") {
        Command::new(std::env::var("ISOGATE_PYTHON").unwrap_or_else(|_| "python3".into()))
    } else {
        Command::new("node")
    };
    let modules = std::env::var("ISOGATE_MCP_MODULES")
        .unwrap_or_else(|_| repo_root().join("target/tools/mcp").display().to_string());
    c.arg(path)
        .arg(g.url("/mcp"))
        .arg(key)
        .env("ISOGATE_MCP_MODULES", modules);
    for (tool, args) in calls {
        c.arg(tool).arg(args.to_string());
    }
    let out = c
        .output()
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn the_mcp_endpoint_serves_search_and_execute_to_the_official_sdks() {
    let (checked, everything) = (checked_server(), everything_server());
    let g = gateway(&checked, &everything, "subrequests: 20");
    let calls = [
        ("search", json!({ "query": "weather city", "limit": 3 })),
        (
            "execute",
            json!({ "code": "async (env) => { console.log('hello'); return (await env.checked.add({ a: 2, b: 40 })).result; }" }),
        ),
        (
            "execute",
            json!({ "code": "async (env) => { throw new Error('boom'); }" }),
        ),
    ];
    for script in ["py_client.py", "ts_client.mjs"] {
        let out = sdk_client(script, &g, KEY, &calls).unwrap_or_else(|e| panic!("{script}: {e}"));
        let names: Vec<&str> = out["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["search", "execute"], "{script}: {out}");
        assert!(
            out["tools"].to_string().len() < 2_500,
            "tools/list stays small"
        );
        let search = &out["calls"][0]["structuredContent"];
        assert_eq!(
            search["results"][0]["call"], "env.checked.get_weather",
            "{script}: {out}"
        );
        assert!(search["results"][0]["signature"]
            .as_str()
            .unwrap()
            .contains("get_weather(args:{city:string})"));
        let run = &out["calls"][1];
        assert_eq!(run["isError"], false, "{script}: {out}");
        assert_eq!(run["structuredContent"]["result"], 42, "{script}: {out}");
        assert_eq!(run["structuredContent"]["logs"][0]["message"], "hello");
        let failed = &out["calls"][2];
        assert_eq!(failed["isError"], true, "{script}: {out}");
        assert!(failed["structuredContent"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("boom"));
    }
    // Another tenant's key sees none of alpha's APIs; no key is refused.
    let out = sdk_client(
        "py_client.py",
        &g,
        OTHER_KEY,
        &[("search", json!({ "query": "weather" }))],
    )
    .unwrap();
    assert_eq!(out["calls"][0]["structuredContent"]["results"], json!([]));
    assert!(sdk_client("ts_client.mjs", &g, "wrong-key", &[]).is_err());
    let r = reqwest::blocking::Client::new()
        .post(g.url("/mcp"))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // A page of another site cannot drive it through the tenant's browser (DNS rebinding).
    let r = reqwest::blocking::Client::new()
        .post(g.url("/mcp"))
        .bearer_auth(KEY)
        .header("origin", "http://evil.example")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[test]
fn receipts_list_what_the_code_did_without_secrets_or_queries() {
    let store = Upstream::start(|s| {
        if s.headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}")) {
            return Answer::json(401, &json!({}));
        }
        match s.target.as_str() {
            "/openapi.json" => Answer::json(200, &pet_spec()),
            t => Answer::json(200, &json!({ "name": "Rex", "at": t })),
        }
    });
    let rule = rule("store", store.port, Some("mcp-token"));
    let alpha = tenant(
        "alpha",
        KEY,
        "subrequests: 10",
        &format!(
            "    egress:\n      allow:\n{rule}    apis:\n      - name: pets\n        openapi: {{ spec: \"http://127.0.0.1:{}/openapi.json\", base_url: \"http://127.0.0.1:{}/v1\" }}\n",
            store.port, store.port,
        ),
    );
    let beta = tenant("beta", OTHER_KEY, "subrequests: 10", "");
    let g = Gateway::start_with(
        POOL,
        &(alpha + &beta),
        CREDENTIALS,
        &[("ISOGATE_TEST_MCP_TOKEN", TOKEN)],
    );
    let code = format!(
        r#"async (env) => {{
            await env.pets.getPet({{ petId: 7, verbose: true }});
            await fetch("http://127.0.0.1:{}/v1/raw?token=abc");
            try {{ await fetch("https://denied.example/x"); }} catch {{}}
            return "done";
        }}"#,
        store.port
    );
    let out = execute(&g, KEY, &code);
    let receipt = out["receipt"].as_array().unwrap();
    let (last, entries) = receipt.split_last().unwrap();
    assert_eq!(last["type"], "outcome", "{out}");
    assert_eq!(last["outcome"], "completed", "{out}");
    let base = format!("http://127.0.0.1:{}", store.port);
    let api = entries
        .iter()
        .find(|e| e["type"] == "api")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(api["api"], "pets");
    assert_eq!(api["tool"], "getPet");
    assert_eq!(api["outcome"], "ok");
    let targets: Vec<(&str, &str, u64)> = entries
        .iter()
        .filter(|e| e["type"] == "fetch")
        .map(|e| {
            (
                e["target"].as_str().unwrap(),
                e["decision"].as_str().unwrap(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        targets,
        [
            (format!("{base}/v1/pets/7").as_str(), "allow", 200),
            (format!("{base}/v1/raw").as_str(), "allow", 200),
            ("https://denied.example:443/x", "deny", 0),
        ],
        "{out}"
    );
    assert!(entries
        .iter()
        .filter(|e| e["decision"] == "allow")
        .all(|e| e["rule"] == "store"));
    let text = out["receipt"].to_string();
    assert!(
        !text.contains(TOKEN) && !text.contains("verbose") && !text.contains("token=abc"),
        "{text}"
    );

    // load() and get() leave their receipt behind a header, for the tenant only.
    let src = r#"export default { async fetch(request, env) {
        const pet = await env.pets.getPet({ petId: 3 });
        throw new Error("after " + pet.name);
    } }"#;
    let r = g.load(KEY, &worker(src), None);
    assert_eq!(r.status().as_u16(), 500);
    let id = r.headers()["isogate-receipt"].to_str().unwrap().to_string();
    let get = |key: &str| {
        reqwest::blocking::Client::new()
            .get(g.url(&format!("/v1/receipts/{id}")))
            .bearer_auth(key)
            .send()
            .unwrap()
    };
    let r = get(KEY);
    assert_eq!(r.status().as_u16(), 200);
    let receipt: Value = r.json().unwrap();
    let list = receipt.as_array().unwrap();
    assert_eq!(list.last().unwrap()["outcome"], "threw", "{receipt}");
    assert_eq!(list.len(), 3, "{receipt}");
    assert_eq!(get(OTHER_KEY).status().as_u16(), 404);
}
