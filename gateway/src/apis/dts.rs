//! TypeScript declarations of a tenant's APIs (`GET /v1/apis.d.ts`), generated from the tools'
//! JSON Schemas: one `interface Env` member per API, one method per tool with its description
//! (and upstream name, when the JS name differs) as a doc comment. Compact (no indentation),
//! in a stable order (APIs as configured, tools as the upstream lists them, properties by
//! name).

use super::Catalogue;
use serde_json::Value;
use std::fmt::Write;

/// Deepest schema nesting written out (deeper is `unknown`).
const MAX_DEPTH: usize = 12;
/// Longest description kept in a doc comment.
const MAX_DOC: usize = 400;

/// One API as the declarations show it: its name and its catalogue, or why it has none.
pub struct Declared<'a> {
    /// `env.<name>`.
    pub name: &'a str,
    /// Its tools.
    pub catalogue: Result<&'a Catalogue, String>,
}

/// The declarations of `apis`.
pub fn declarations(apis: &[Declared<'_>]) -> String {
    let mut out = String::from("interface Env{\n");
    for api in apis {
        match &api.catalogue {
            Err(e) => {
                let _ = writeln!(out, "/** unavailable: {} */", doc_text(e));
                let _ = writeln!(out, "{}:unknown;", api.name);
            }
            Ok(catalogue) => {
                let _ = writeln!(out, "{}:{{", api.name);
                for tool in &catalogue.tools {
                    out.push_str(&signature(
                        &tool.js_name,
                        &tool.name,
                        tool.description.as_deref(),
                        &tool.input_schema,
                        tool.output_schema.as_ref(),
                    ));
                }
                out.push_str("};\n");
            }
        }
    }
    out.push_str("}\n");
    out
}

/// One tool's method: `/** doc */\nname(args:{…}):Promise<…>;\n`.
pub fn signature(
    js_name: &str,
    name: &str,
    description: Option<&str>,
    input: &Value,
    output: Option<&Value>,
) -> String {
    let mut doc = String::new();
    if js_name != name {
        doc.push_str(&format!("`{}`", doc_text(name)));
    }
    if let Some(d) = description.filter(|d| !d.trim().is_empty()) {
        if !doc.is_empty() {
            doc.push_str(": ");
        }
        doc.push_str(&doc_text(d));
    }
    let mut out = String::new();
    if !doc.is_empty() {
        let _ = writeln!(out, "/** {doc} */");
    }
    let result = output.map_or_else(|| "unknown".to_string(), |o| ts_type(o, 0));
    let _ = writeln!(
        out,
        "{js_name}(args:{}):Promise<{result}>;",
        ts_type(input, 0)
    );
    out
}

/// A description as one line of a doc comment (no `*/`, bounded).
fn doc_text(s: &str) -> String {
    let flat: String = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("*/", "*\u{2215}");
    if flat.chars().count() > MAX_DOC {
        flat.chars().take(MAX_DOC).collect::<String>() + "…"
    } else {
        flat
    }
}

/// The TypeScript type of a JSON Schema.
pub fn ts_type(schema: &Value, depth: usize) -> String {
    if depth > MAX_DEPTH {
        return "unknown".into();
    }
    let Some(obj) = schema.as_object() else {
        // `true`, `false` or nonsense.
        return if schema == &Value::Bool(false) {
            "never"
        } else {
            "unknown"
        }
        .into();
    };
    if let Some(c) = obj.get("const") {
        return literal(c);
    }
    if let Some(Value::Array(values)) = obj.get("enum") {
        if !values.is_empty() {
            return union(values.iter().map(literal));
        }
    }
    for (key, sep) in [("anyOf", "|"), ("oneOf", "|"), ("allOf", "&")] {
        if let Some(Value::Array(parts)) = obj.get(key) {
            if !parts.is_empty() {
                let parts: Vec<String> =
                    parts.iter().map(|p| paren(ts_type(p, depth + 1))).collect();
                return parts.join(sep);
            }
        }
    }
    match obj.get("type") {
        Some(Value::Array(types)) => union(types.iter().map(|t| {
            let mut single = obj.clone();
            single.insert("type".into(), t.clone());
            ts_type(&Value::Object(single), depth + 1)
        })),
        Some(Value::String(t)) => match t.as_str() {
            "string" => "string".into(),
            "number" | "integer" => "number".into(),
            "boolean" => "boolean".into(),
            "null" => "null".into(),
            "array" => match obj.get("items") {
                Some(items) => format!("{}[]", paren(ts_type(items, depth + 1))),
                None => "unknown[]".into(),
            },
            "object" => object_type(obj, depth),
            _ => "unknown".into(),
        },
        _ if obj.contains_key("properties") => object_type(obj, depth),
        _ => "unknown".into(),
    }
}

fn object_type(obj: &serde_json::Map<String, Value>, depth: usize) -> String {
    let required: Vec<&str> = obj
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut fields = Vec::new();
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (name, schema) in props {
            let optional = if required.contains(&name.as_str()) {
                ""
            } else {
                "?"
            };
            fields.push(format!(
                "{}{optional}:{}",
                key(name),
                ts_type(schema, depth + 1)
            ));
        }
    }
    match obj.get("additionalProperties") {
        Some(Value::Object(extra)) => fields.push(format!(
            "[k:string]:{}",
            ts_type(&Value::Object(extra.clone()), depth + 1)
        )),
        _ if fields.is_empty() => return "Record<string,unknown>".into(),
        _ => {}
    }
    format!("{{{}}}", fields.join(";"))
}

/// A property name: bare when it is an identifier, quoted otherwise.
fn key(name: &str) -> String {
    let ident = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if ident {
        name.to_string()
    } else {
        Value::String(name.to_string()).to_string()
    }
}

fn literal(v: &Value) -> String {
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null => v.to_string(),
        _ => "unknown".into(),
    }
}

fn union(parts: impl Iterator<Item = String>) -> String {
    let mut seen: Vec<String> = Vec::new();
    for p in parts {
        if !seen.contains(&p) {
            seen.push(p);
        }
    }
    seen.join("|")
}

fn paren(t: String) -> String {
    if t.contains('|') || t.contains('&') {
        format!("({t})")
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schemas_become_compact_types() {
        let s = json!({"type":"object","properties":{"a":{"type":"integer"},"tags":{"type":"array","items":{"type":["string","null"]}},"mode":{"enum":["x","y"]},"odd-name":{"type":"boolean"}},"required":["a"]});
        assert_eq!(
            ts_type(&s, 0),
            r#"{a:number;mode?:"x"|"y";"odd-name"?:boolean;tags?:(string|null)[]}"#
        );
        assert_eq!(ts_type(&json!({}), 0), "unknown");
        assert_eq!(
            ts_type(&json!({"type":"object"}), 0),
            "Record<string,unknown>"
        );
        assert_eq!(
            ts_type(&json!({"anyOf":[{"type":"string"},{"type":"number"}]}), 0),
            "string|number"
        );
        let mut deep = json!({"type":"string"});
        for _ in 0..50 {
            deep = json!({"type":"array","items":deep});
        }
        assert!(ts_type(&deep, 0).contains("unknown"));
    }

    #[test]
    fn signatures_carry_descriptions_and_upstream_names() {
        let sig = signature(
            "get_weather",
            "get-weather",
            Some("The weather\n in a city. */ evil"),
            &json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}),
            None,
        );
        assert_eq!(
            sig,
            "/** `get-weather`: The weather in a city. *\u{2215} evil */\nget_weather(args:{city:string}):Promise<unknown>;\n"
        );
    }
}
