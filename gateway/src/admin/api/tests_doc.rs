//! The OpenAPI document walked as a client reads it (its JSON): every
//! operation declares the errors its extractors and the token check can
//! answer, every error is the `ErrorBody` JSON, every path parameter
//! carries the name pattern, and the bodies' bounds and required fields are
//! the ones the handlers enforce.

use serde_json::Value;

use super::openapi;

fn doc() -> Value {
    serde_json::to_value(openapi()).unwrap()
}

/// `(path, method, operation)` of every operation.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if ["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                out.push((path.clone(), method.to_uppercase(), operation.clone()));
            }
        }
    }
    out
}

fn declares(operation: &Value, status: &str) -> bool {
    operation["responses"].get(status).is_some()
}

#[test]
fn every_operation_declares_the_errors_it_can_answer() {
    let doc = doc();
    let mut checked = 0;
    for (path, method, op) in operations(&doc) {
        let name = format!("{method} {path}");
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        let has_path = params.iter().any(|p| p["in"] == "path");
        let has_query = params.iter().any(|p| p["in"] == "query");
        let has_body = op.get("requestBody").is_some();
        if has_path || has_query || has_body {
            assert!(
                declares(&op, "400"),
                "{name}: a bad parameter or body is a 400; declare it"
            );
        }
        if method != "GET" {
            for status in ["401", "503"] {
                assert!(
                    declares(&op, status),
                    "{name}: a write answers {status}; declare it"
                );
            }
        }
        if has_body {
            for status in ["413", "415"] {
                assert!(
                    declares(&op, status),
                    "{name}: a body can be answered {status}; declare it"
                );
            }
            let content = &op["requestBody"]["content"];
            assert_eq!(
                content.as_object().unwrap().keys().collect::<Vec<_>>(),
                ["application/json"],
                "{name}: bodies are JSON"
            );
        }
        for p in params.iter().filter(|p| p["in"] == "path") {
            assert_eq!(p["required"], true, "{name}: {p}");
            assert_eq!(
                p["schema"]["pattern"],
                super::params::SEGMENT_PATTERN,
                "{name}: path parameter {} without the name pattern",
                p["name"]
            );
        }
        for (status, response) in op["responses"].as_object().unwrap() {
            let code: u16 = status
                .parse()
                .unwrap_or_else(|_| panic!("{name}: status {status}"));
            let content = response["content"].as_object();
            if code >= 400 {
                let json = &content.unwrap_or_else(|| panic!("{name} {status}: no content"))["application/json"];
                assert_eq!(
                    json["schema"]["$ref"], "#/components/schemas/ErrorBody",
                    "{name} {status}: errors are ErrorBody JSON"
                );
            } else {
                assert!(
                    content.is_some_and(|c| c.len() == 1),
                    "{name} {status}: a success declares its one content type"
                );
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 27);
}

/// Every `$ref` points at a schema the document has.
#[test]
fn every_reference_resolves() {
    let doc = doc();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    fn walk(v: &Value, found: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    found.push(r.clone());
                }
                o.values().for_each(|v| walk(v, found));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    walk(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        assert!(schemas.contains_key(name), "{r} is not in components");
    }
}

fn schema(doc: &Value, name: &str) -> Value {
    doc["components"]["schemas"][name].clone()
}

fn required(schema: &Value) -> Vec<&str> {
    let mut r: Vec<&str> = schema["required"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
        .unwrap_or_default();
    r.sort_unstable();
    r
}

/// Bounds and required fields the handlers and the model enforce.
#[test]
fn bodies_declare_their_bounds_and_required_fields() {
    let doc = doc();
    let pin = schema(&doc, "PinBody");
    assert_eq!(required(&pin), ["replicas"]);
    assert_eq!(pin["properties"]["replicas"]["maximum"], 1000);
    assert_eq!(
        pin["additionalProperties"], false,
        "unknown fields are refused"
    );

    let policy = schema(&doc, "ScalingPolicy");
    assert_eq!(
        required(&policy),
        ["max", "metric", "min", "service", "target"]
    );
    assert_eq!(policy["properties"]["max"]["maximum"], 1000);
    assert_eq!(policy["properties"]["max"]["minimum"], 1);
    assert_eq!(policy["properties"]["pinned"]["maximum"], 1000);
    let body = schema(&doc, "PolicyBody");
    assert_eq!(
        required(&body),
        ["max", "metric", "min", "target"],
        "service comes from the path"
    );

    let metric = schema(&doc, "ScalingMetric");
    let mut values: Vec<&str> = metric["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("{metric}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(values, ["cpu", "inflight", "p95-latency", "rps"]);

    let route = schema(&doc, "Route");
    assert_eq!(required(&route), ["service"]);
    assert_eq!(route["properties"]["retries"]["maximum"], 10);
    assert!(
        route["properties"]["upstream_protocol"].is_object(),
        "{route}"
    );
    assert_eq!(route["properties"]["idempotent"]["type"], "boolean");
    let protocol = schema(&doc, "UpstreamProtocol");
    assert_eq!(protocol["enum"], serde_json::json!(["http1", "h2c"]));

    let rollout = schema(&doc, "RolloutBody");
    assert!(required(&rollout).is_empty());
    assert_eq!(rollout["properties"]["max_surge"]["maximum"], 1000);

    let spec = schema(&doc, "SpecBody");
    assert!(
        !required(&spec).contains(&"name"),
        "name comes from the path"
    );
    assert_eq!(schema(&doc, "Service")["additionalProperties"], false);

    let retire = schema(&doc, "RetireBody");
    assert_eq!(retire["properties"]["reason"]["maxLength"], 256);
}
