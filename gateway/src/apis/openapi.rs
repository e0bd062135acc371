//! OpenAPI 3.x documents as tools: each operation becomes a tool named by its `operationId`
//! (else method + path), taking one argument object: its parameters by name (path, query,
//! header) and `body` (the JSON request body). Local `$ref`s are resolved into the schemas.

use serde_json::{json, Map, Value};

/// Largest document read.
pub const MAX_SPEC_BYTES: usize = 8 * 1024 * 1024;
/// Deepest `$ref` chain resolved (deeper, and cycles, become `{}`: anything).
const MAX_REF_DEPTH: usize = 32;
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Where a parameter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    /// In the path template.
    Path,
    /// In the query string.
    Query,
    /// A request header.
    Header,
}

/// One parameter of an operation.
#[derive(Debug, Clone)]
pub struct Param {
    /// Its name (also its name in the argument object).
    pub name: String,
    /// Where it goes.
    pub location: In,
}

/// One operation.
#[derive(Debug, Clone)]
pub struct Operation {
    /// `operationId`, else `<method>_<path>`.
    pub name: String,
    /// The HTTP method, upper-case.
    pub method: String,
    /// The path template (`/pets/{id}`).
    pub path: String,
    /// Its parameters.
    pub params: Vec<Param>,
    /// Whether a JSON request body is taken (`body`).
    pub has_body: bool,
    /// Its summary or description.
    pub description: Option<String>,
    /// The argument object's schema.
    pub input_schema: Value,
    /// The JSON schema of the success response, when the document gives one.
    pub output_schema: Option<Value>,
}

/// Parses a document (JSON or YAML) into its operations.
pub fn parse(bytes: &[u8], max: usize) -> Result<Vec<Operation>, String> {
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(format!(
            "the OpenAPI document exceeds {MAX_SPEC_BYTES} bytes"
        ));
    }
    let doc: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(_) => serde_yaml_ng::from_slice(bytes)
            .map_err(|e| format!("the OpenAPI document is neither JSON nor YAML: {e}"))?,
    };
    let version = doc.get("openapi").and_then(Value::as_str).unwrap_or("");
    if !version.starts_with("3.") {
        return Err(format!(
            "not an OpenAPI 3.x document (`openapi: {version:?}`); Swagger 2.0 is not supported"
        ));
    }
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .ok_or("the OpenAPI document has no `paths`")?;
    let mut ops = Vec::new();
    for (path, item) in paths {
        let item = resolve(&doc, item, 0);
        let shared = item
            .get("parameters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for method in METHODS {
            let Some(op) = item.get(*method) else {
                continue;
            };
            if ops.len() >= max {
                return Err(format!(
                    "the OpenAPI document has more than {max} operations"
                ));
            }
            ops.push(operation(&doc, path, method, op, &shared));
        }
    }
    Ok(ops)
}

fn operation(doc: &Value, path: &str, method: &str, op: &Value, shared: &[Value]) -> Operation {
    let name = op
        .get("operationId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{method}_{path}"));
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    let own = op
        .get("parameters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // Operation-level parameters override path-level ones of the same name and place.
    for p in own.iter().chain(shared.iter()) {
        let p = resolve(doc, p, 0);
        let (Some(name), Some(location)) = (
            p.get("name").and_then(Value::as_str),
            p.get("in").and_then(Value::as_str),
        ) else {
            continue;
        };
        let location = match location {
            "path" => In::Path,
            "query" => In::Query,
            "header" => In::Header,
            _ => continue, // cookies are not sent
        };
        if params.iter().any(|q| q.name == name) || name == "body" {
            continue;
        }
        let mut schema = p
            .get("schema")
            .map(|s| resolved_schema(doc, s, 0))
            .unwrap_or(json!({}));
        if let (Some(d), Some(obj)) = (
            p.get("description").and_then(Value::as_str),
            schema.as_object_mut(),
        ) {
            obj.entry("description").or_insert(json!(d));
        }
        properties.insert(name.to_string(), schema);
        if location == In::Path || p.get("required").and_then(Value::as_bool) == Some(true) {
            required.push(json!(name));
        }
        params.push(Param {
            name: name.to_string(),
            location,
        });
    }
    let body = op.get("requestBody").map(|b| resolve(doc, b, 0));
    let body_schema = body.as_ref().and_then(|b| {
        let content = b.get("content")?.as_object()?;
        let (_, media) = content
            .iter()
            .find(|(k, _)| k.starts_with("application/json") || k.ends_with("+json"))?;
        Some(
            media
                .get("schema")
                .map(|s| resolved_schema(doc, s, 0))
                .unwrap_or(json!({})),
        )
    });
    let has_body = body_schema.is_some();
    if let Some(schema) = body_schema {
        properties.insert("body".into(), schema);
        if body
            .as_ref()
            .and_then(|b| b.get("required"))
            .and_then(Value::as_bool)
            == Some(true)
        {
            required.push(json!("body"));
        }
    }
    let output_schema = op
        .get("responses")
        .and_then(Value::as_object)
        .and_then(|responses| {
            let (_, response) = responses.iter().find(|(code, _)| code.starts_with('2'))?;
            let response = resolve(doc, response, 0);
            let content = response.get("content")?.as_object()?;
            let (_, media) = content
                .iter()
                .find(|(k, _)| k.starts_with("application/json") || k.ends_with("+json"))?;
            media.get("schema").map(|s| resolved_schema(doc, s, 0))
        });
    let description = op
        .get("summary")
        .or_else(|| op.get("description"))
        .and_then(Value::as_str)
        .map(|d| d.chars().take(4000).collect());
    Operation {
        name,
        method: method.to_ascii_uppercase(),
        path: path.to_string(),
        params,
        has_body,
        description,
        input_schema: json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        }),
        output_schema,
    }
}

/// Follows a local `$ref` (`#/…`) at the top of `v`.
fn resolve(doc: &Value, v: &Value, depth: usize) -> Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) if depth < MAX_REF_DEPTH => {
            match r.strip_prefix('#').and_then(|p| doc.pointer(p)) {
                Some(target) => resolve(doc, target, depth + 1),
                None => json!({}),
            }
        }
        Some(_) => json!({}),
        None => v.clone(),
    }
}

/// A schema with every local `$ref` replaced by its target (to [`MAX_REF_DEPTH`] levels; what
/// is deeper, or cyclic, or not local, becomes `{}`), and OpenAPI's `nullable` turned into a
/// JSON Schema type union.
fn resolved_schema(doc: &Value, v: &Value, depth: usize) -> Value {
    let mut budget = MAX_SCHEMA_NODES;
    resolve_within(doc, v, depth, &mut budget)
}

/// Most values one resolved schema may hold (references can multiply a small document).
const MAX_SCHEMA_NODES: usize = 20_000;

fn resolve_within(doc: &Value, v: &Value, depth: usize, budget: &mut usize) -> Value {
    if depth >= MAX_REF_DEPTH || *budget == 0 {
        return json!({});
    }
    *budget -= 1;
    match v {
        Value::Object(map) => {
            if let Some(r) = map.get("$ref").and_then(Value::as_str) {
                return match r.strip_prefix('#').and_then(|p| doc.pointer(p)) {
                    Some(target) => resolve_within(doc, target, depth + 1, budget),
                    None => json!({}),
                };
            }
            let mut out = Map::new();
            for (k, child) in map {
                out.insert(k.clone(), resolve_within(doc, child, depth + 1, budget));
            }
            if out.remove("nullable") == Some(Value::Bool(true)) {
                if let Some(Value::String(t)) = out.get("type").cloned() {
                    out.insert("type".into(), json!([t, "null"]));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| resolve_within(doc, i, depth + 1, budget))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A call's URL, headers and body.
pub type Built = (String, Vec<(String, String)>, Vec<u8>);

/// The request of one call: method, URL (base + path with its parameters, query), headers and
/// JSON body from an argument object that passed the input schema.
pub fn build_request(
    op: &Operation,
    base_url: &str,
    args: &Map<String, Value>,
) -> Result<Built, String> {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let mut path = op.path.clone();
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    let mut has_query = false;
    let mut headers = vec![("accept".to_string(), "application/json".to_string())];
    for p in &op.params {
        let Some(value) = args.get(&p.name) else {
            continue;
        };
        let values: Vec<String> = match value {
            Value::Array(items) => items.iter().map(scalar).collect(),
            v => vec![scalar(v)],
        };
        match p.location {
            In::Path => {
                let encoded = utf8_percent_encode(&values.join(","), NON_ALPHANUMERIC).to_string();
                path = path.replace(&format!("{{{}}}", p.name), &encoded);
            }
            In::Query => {
                for v in values {
                    query.append_pair(&p.name, &v);
                    has_query = true;
                }
            }
            In::Header => headers.push((p.name.to_ascii_lowercase(), values.join(","))),
        }
    }
    if path.contains('{') {
        return Err(format!("a path parameter of {} is missing", op.path));
    }
    let mut url = format!("{}{}", base_url.trim_end_matches('/'), path);
    if has_query {
        url.push('?');
        url.push_str(&query.finish());
    }
    let body = match (op.has_body, args.get("body")) {
        (true, Some(body)) => {
            headers.push(("content-type".into(), "application/json".into()));
            serde_json::to_vec(body).map_err(|e| e.to_string())?
        }
        _ => Vec::new(),
    };
    Ok((url, headers, body))
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r##"
openapi: 3.0.3
info: { title: pets, version: "1" }
paths:
  /pets/{petId}:
    parameters:
      - { name: petId, in: path, required: true, schema: { type: integer } }
    get:
      operationId: getPet
      parameters:
        - { name: verbose, in: query, schema: { type: boolean } }
      responses:
        "200":
          content:
            application/json:
              schema: { $ref: "#/components/schemas/Pet" }
  /pets:
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: "#/components/schemas/Pet" }
      responses: { "201": { description: created } }
components:
  schemas:
    Pet:
      type: object
      required: [name]
      properties:
        name: { type: string }
        tag: { type: string, nullable: true }
        parent: { $ref: "#/components/schemas/Pet" }
"##;

    #[test]
    fn operations_become_tools_with_resolved_schemas() {
        let ops = parse(SPEC.as_bytes(), 100).unwrap();
        let get = ops.iter().find(|o| o.name == "getPet").unwrap();
        assert_eq!(get.method, "GET");
        assert_eq!(get.input_schema["required"], json!(["petId"]));
        assert_eq!(get.input_schema["properties"]["petId"]["type"], "integer");
        assert_eq!(
            get.output_schema.as_ref().unwrap()["properties"]["tag"]["type"],
            json!(["string", "null"])
        );
        let post = ops.iter().find(|o| o.name == "post_/pets").unwrap();
        assert!(post.has_body);
        assert_eq!(post.input_schema["required"], json!(["body"]));
        // The cycle Pet.parent → Pet ends in `{}` at the depth bound instead of recursing.
        assert!(post.input_schema["properties"]["body"]["properties"]["parent"].is_object());
    }

    #[test]
    fn requests_are_built_from_arguments() {
        let ops = parse(SPEC.as_bytes(), 100).unwrap();
        let get = ops.iter().find(|o| o.name == "getPet").unwrap();
        let args = json!({"petId": 7, "verbose": true});
        let (url, _, body) = build_request(get, "http://h/v1/", args.as_object().unwrap()).unwrap();
        assert_eq!(url, "http://h/v1/pets/7?verbose=true");
        assert!(body.is_empty());
        let args = json!({"petId": "a/b c"});
        let (url, _, _) = build_request(get, "http://h", args.as_object().unwrap()).unwrap();
        assert_eq!(url, "http://h/pets/a%2Fb%20c");
    }

    #[test]
    fn bad_documents_are_refused() {
        assert!(parse(b"swagger: '2.0'", 10)
            .unwrap_err()
            .contains("OpenAPI 3"));
        assert!(parse(b"{not json: [", 10).is_err());
        assert!(parse(SPEC.as_bytes(), 1)
            .unwrap_err()
            .contains("more than 1"));
    }
}
