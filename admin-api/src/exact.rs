//! What makes the OpenAPI document exact (contract §8): the schemas the
//! handlers' derives cannot say (a topic's grammar and length, `topic` *or*
//! `topics`, `jti` *or* `sub` + `issued_before`, required fields, bounds),
//! every status a route answers with its headers, and, for the presence
//! route, the node's own `presence.topics` as the path's pattern.
//!
//! The request structs of the handlers stay lenient on purpose (every field
//! optional), so a refusal can name what is missing; the document states
//! what is accepted, and schemathesis (`scripts/schemathesis.sh`, run by
//! `scripts/test.sh`) holds the two together. Lengths are in characters
//! (what JSON Schema counts), and the server counts the same way.

use herald_protocol::{ErrorCode, Permissions};
use serde_json::{Value, json};

/// One topic segment's characters (contract §3), as a regex class.
const SEGMENT: &str = "[A-Za-z0-9_:@-]+";

/// The largest integer every JSON parser reads exactly (2^53 − 1).
const MAX_SAFE_INTEGER: u64 = 9_007_199_254_740_991;

fn topic_schema() -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": herald_protocol::MAX_TOPIC_LEN,
        "pattern": format!("^{SEGMENT}(\\.{SEGMENT})*$"),
        "description": "Dot-separated segments of A-Z a-z 0-9 _ - : @, 1 to 255 bytes",
        "example": "stocks.AAPL",
    })
}

/// `patterns` (`presence.topics`) as a regex over topics, or `None` when
/// there are none.
pub fn patterns_regex(patterns: &Permissions) -> Option<String> {
    let alternatives: Vec<String> = patterns
        .patterns()
        .iter()
        .map(|p| {
            p.as_str()
                .split('.')
                .map(|segment| match segment {
                    "*" => SEGMENT.to_owned(),
                    ">" => format!("{SEGMENT}(\\.{SEGMENT})*"),
                    literal => regex_escape(literal),
                })
                .collect::<Vec<_>>()
                .join("\\.")
        })
        .collect();
    (!alternatives.is_empty()).then(|| format!("^(?:{})$", alternatives.join("|")))
}

fn regex_escape(s: &str) -> String {
    // Segment characters that mean something in a regex: only `-`, and only
    // inside a class; escape it anyway, with `@` and `:` left alone.
    s.replace('-', "\\-")
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    })
}

/// The error responses every protected route may answer, besides its own.
fn common_errors(responses: &mut serde_json::Map<String, Value>) {
    responses.insert(
        "401".into(),
        json!({
            "description": "unauthorized: no key, or a wrong one",
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "required": true}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }),
    );
    responses.insert(
        "403".into(),
        error_response(
            "forbidden: the key lacks this route's scope (or, for a publish, the topic)",
        ),
    );
    responses.insert(
        "500".into(),
        error_response("internal: an unexpected fault (details are logged, never returned)"),
    );
    responses.insert(
        "503".into(),
        json!({
            "description": "unavailable: the broker cannot serve the request now; retry after Retry-After seconds",
            "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}, "required": true}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }),
    );
}

/// Standard base64 with its padding (the server also takes it unpadded).
const BASE64: &str = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";

/// Exactly one of `data` and `data_b64` (contract §10.2).
fn one_payload() -> Value {
    json!([{"required": ["data"]}, {"required": ["data_b64"]}])
}

fn one_publish(target: (&str, Value)) -> Value {
    let (field, schema) = target;
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": [field],
        "oneOf": one_payload(),
        "properties": {
            field: schema,
            "data": {"description": "Any JSON value (arrays and objects at most limits.max_json_depth deep), delivered as sent; give this or data_b64"},
            "data_b64": {"type": "string", "pattern": BASE64, "description": "Bytes as standard base64 (at most limits.max_message_size once decoded), stored and delivered as bytes; give this or data"},
            "event": {"$ref": "#/components/schemas/Event"},
            "idempotency_key": {"$ref": "#/components/schemas/IdempotencyKey"},
        },
    })
}

fn schemas() -> Vec<(&'static str, Value)> {
    let topic = json!({"$ref": "#/components/schemas/Topic"});
    let int = |description: &str| json!({"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INTEGER, "description": description});
    let id = |description: &str| json!({"type": "string", "minLength": 1, "maxLength": 256, "description": description});
    vec![
        ("Topic", topic_schema()),
        (
            "Event",
            json!({"type": "string", "minLength": 1, "maxLength": 255, "description": "Event name, delivered as `event`", "example": "headline"}),
        ),
        (
            "IdempotencyKey",
            json!({"type": "string", "minLength": 1, "maxLength": 64, "description": "A repeat with the same key (per topic) within publish.idempotency_window publishes nothing and answers the first call's ids", "example": "order-7781"}),
        ),
        (
            "PublishRequest",
            json!({
                "description": "One event to one topic (`topic`), or to several (`topics`, all validated before any is published)",
                "oneOf": [
                    one_publish(("topic", topic.clone())),
                    one_publish(("topics", json!({"type": "array", "minItems": 1, "maxItems": 1000, "items": topic}))),
                ],
            }),
        ),
        ("BatchMessage", one_publish(("topic", topic.clone()))),
        (
            "BatchRequest",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["messages"],
                "description": "1-1000 messages, validated all-or-nothing, published in order",
                "properties": {"messages": {"type": "array", "minItems": 1, "maxItems": 1000, "items": {"$ref": "#/components/schemas/BatchMessage"}}},
            }),
        ),
        (
            "DisconnectRequest",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["sub"],
                "properties": {"sub": {"type": "string", "minLength": 1, "description": "The token `sub` whose sessions to close", "example": "alice"}},
            }),
        ),
        (
            "RevokeRequest",
            json!({
                "description": "One token (`jti`), or every token of `sub` issued before `issued_before`",
                "oneOf": [
                    {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["jti"],
                        "properties": {"jti": id("The token id (`jti` claim)"), "expire_at": int("Unix seconds when the revocation may be forgotten; it is kept at least jwt.max_lifetime (default 7 days) from now, and at most a year")},
                    },
                    {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["sub", "issued_before"],
                        "properties": {
                            "sub": id("The user (`sub` claim)"),
                            "issued_before": int("Unix seconds: tokens of `sub` with an earlier (or no) `iat` are revoked"),
                            "expire_at": int("Unix seconds when the revocation may be forgotten; it is kept at least jwt.max_lifetime (default 7 days) from now, and at most a year"),
                        },
                    },
                ],
            }),
        ),
        (
            "Message",
            json!({
                "type": "object",
                "required": ["type", "topic", "id", "ts"],
                "oneOf": one_payload(),
                "properties": {
                    "type": {"type": "string", "enum": ["message"]},
                    "topic": {"type": "string"},
                    "id": {"type": "string"},
                    "event": {"type": "string"},
                    "data": {"description": "A JSON payload"},
                    "data_b64": {"type": "string", "description": "A byte payload, standard base64"},
                    "ts": {"type": "integer", "minimum": 0},
                },
            }),
        ),
        (
            "ErrorDetail",
            json!({
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": ErrorCode::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>()},
                    "message": {"type": "string"},
                },
            }),
        ),
    ]
}

/// The extra statuses (beyond 200 and the common errors) each operation
/// answers, as (path, method, status, description).
const STATUSES: &[(&str, &str, &str, &str)] = &[
    (
        "/v1/publish",
        "post",
        "400",
        "bad_request (body, data depth, event, key) or invalid_topic",
    ),
    (
        "/v1/publish",
        "post",
        "413",
        "too_large: data over limits.max_message_size, or the body over its limit",
    ),
    (
        "/v1/publish/batch",
        "post",
        "400",
        "bad_request (including batch size) or invalid_topic",
    ),
    ("/v1/publish/batch", "post", "413", "too_large"),
    (
        "/v1/topics/{topic}/history",
        "get",
        "400",
        "bad_request (limit) or invalid_topic",
    ),
    (
        "/v1/topics/{topic}/presence",
        "get",
        "400",
        "bad_request (the topic is not tracked for presence, limit, cursor) or invalid_topic",
    ),
    ("/v1/disconnect", "post", "400", "bad_request"),
    ("/v1/disconnect", "post", "413", "too_large"),
    ("/v1/revoke", "post", "400", "bad_request"),
    ("/v1/revoke", "post", "413", "too_large"),
];

/// Makes `doc` (as generated from the handlers) exact for a node tracking
/// presence on `presence`.
pub fn refine(mut doc: Value, presence: &Permissions) -> Value {
    if let Some(components) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for (name, schema) in schemas() {
            components.insert(name.to_owned(), schema);
        }
        if let Some(s) = components.remove("NodeStatsDoc") {
            components.insert("NodeStats".into(), s);
        }
    }
    let presence_regex = patterns_regex(presence);
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return doc;
    };
    if presence_regex.is_none() {
        // No topic is tracked: no request to this route can succeed.
        paths.remove("/v1/topics/{topic}/presence");
    }
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            let protected = op.get("security").is_some();
            if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                for p in params.iter_mut() {
                    fix_parameter(p, path, presence_regex.as_deref());
                }
            }
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            if protected {
                common_errors(responses);
            }
            for (_, _, status, description) in STATUSES
                .iter()
                .filter(|(p, m, _, _)| p == path && m == method)
            {
                responses.insert((*status).to_owned(), error_response(description));
            }
        }
    }
    if let Some(ok) = doc.pointer_mut("/paths/~1v1~1openapi.json/get/responses/200") {
        ok["content"] = json!({"application/json": {"schema": {"type": "object"}}});
    }
    if let Some(messages) =
        doc.pointer_mut("/components/schemas/HistoryResponse/properties/messages/items")
    {
        *messages = json!({"$ref": "#/components/schemas/Message"});
    }
    if let Some(nodes) = doc.pointer_mut("/components/schemas/StatsResponse/properties/nodes/items")
    {
        *nodes = json!({"$ref": "#/components/schemas/NodeStats"});
    }
    doc
}

fn fix_parameter(p: &mut Value, path: &str, presence_regex: Option<&str>) {
    match p["name"].as_str() {
        Some("topic") => {
            let mut schema = topic_schema();
            if path.ends_with("/presence") {
                if let Some(regex) = presence_regex {
                    schema["pattern"] = json!(regex);
                    schema["description"] = json!("A topic matching presence.topics");
                }
            }
            p["schema"] = schema;
        }
        Some("since" | "cursor") => {
            p["in"] = json!("query");
            p["required"] = json!(false);
            p["schema"] = json!({"type": "string"});
        }
        Some("limit") => {
            p["in"] = json!("query");
            p["required"] = json!(false);
            p["schema"] = json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100});
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_follows_the_configuration() {
        let with = crate::document(&Permissions::parse(["chat.>"]).unwrap());
        let param = &with["paths"]["/v1/topics/{topic}/presence"]["get"]["parameters"][0];
        assert_eq!(
            param["schema"]["pattern"],
            json!(patterns_regex(&Permissions::parse(["chat.>"]).unwrap()))
        );
        let without = crate::document(&Permissions::default());
        assert!(
            without["paths"]
                .get("/v1/topics/{topic}/presence")
                .is_none()
        );
        let publish = &with["components"]["schemas"]["PublishRequest"]["oneOf"];
        assert_eq!(publish[0]["required"], json!(["topic"]));
        assert_eq!(publish[1]["required"], json!(["topics"]));
        // Exactly one payload: `data` or `data_b64` (contract §10.2).
        let payload = json!([{"required": ["data"]}, {"required": ["data_b64"]}]);
        assert_eq!(publish[0]["oneOf"], payload);
        assert_eq!(with["components"]["schemas"]["Message"]["oneOf"], payload);
        let history = &with["paths"]["/v1/topics/{topic}/history"]["get"];
        for p in history["parameters"].as_array().unwrap() {
            let want = if p["name"] == "topic" {
                "path"
            } else {
                "query"
            };
            assert_eq!(p["in"], json!(want), "{p}");
        }
        for status in ["400", "401", "403", "500", "503"] {
            assert!(history["responses"].get(status).is_some(), "{status}");
        }
        assert!(
            with["paths"]["/v1/publish"]["post"]["responses"]
                .get("413")
                .is_some()
        );
    }

    #[test]
    fn presence_patterns_become_a_regex() {
        let p = Permissions::parse(["chat.>", "desk.*.live", "a-b"]).unwrap();
        let r = patterns_regex(&p).unwrap();
        assert_eq!(
            r,
            format!("^(?:chat\\.{SEGMENT}(\\.{SEGMENT})*|desk\\.{SEGMENT}\\.live|a\\-b)$")
        );
        assert!(patterns_regex(&Permissions::default()).is_none());
    }
}
