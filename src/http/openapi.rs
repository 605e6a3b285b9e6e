//! `GET /v2/openapi.json`: the OpenAPI 3.1 document of the public API.
//!
//! Generated from the route handlers' annotations and the request and answer types
//! themselves, then completed by [`conventions`] with what every route shares and the code
//! decides in one place each, so that the document cannot drift from what the server does:
//!
//! | the route... | so it may also answer | from |
//! |---|---|---|
//! | is secured | 401 (token), 403 (`api_key_required` for the service token) | `Caller` |
//! | takes a body | 400 (`malformed_json`, `unknown_field`), 408, 413, 415, 422 | `ApiJson` |
//! | takes a query | 400 `invalid_query` | the route table's `QueryConfig` |
//! | pages (`cursor`) | 400 `invalid_cursor`, 422 (`limit`) | `PageQuery` |
//! | is a logged mutation ([`Idempotent`]) | 400, 409 (`idempotency_key_reused`), 503 + `Retry-After` | `mutation::execute` |
//! | exists at all | 405 + `Allow` for other methods, `X-Request-Id` on every answer | `Methods`, `request_id` |
//!
//! Reads answer with `X-Resource-Version`, mutations with it and `Idempotent-Replayed`. A body
//! whose schema requires nothing may be left out (`ApiJson` reads none as `{}`). Names carry
//! their pattern and sizes the catalog's names. `tests/it/openapi.rs` validates the document
//! and checks every status the server answers against it.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use serde_json::{json, Map, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};

use crate::domain::{AccountName, Email, ResourceName};
use crate::http::page::CURSOR_PATTERN;
use crate::routes::{accounts, admin, billing, dbs, events, keys, schema_diff, sizes, tenants};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "SPG99 Control Plane API v2",
        description = "Accounts, API keys, tenants and databases of the SPG99 serverless PostgreSQL platform. \
Authenticate with `Authorization: Bearer spg99_<key_id>_<secret>`. Mutating routes take an \
`Idempotency-Key` header; reads answer with `X-Resource-Version` (the log seq they reflect); \
every answer carries `X-Request-Id`. `HEAD` works wherever `GET` does; other methods a path \
does not take get 405 with `Allow`. Errors are `{\"error\": {\"code\", \"message\", \"request_id\", \"field\"?}}`."
    ),
    paths(
        accounts::create, accounts::list, accounts::get, accounts::profile, accounts::contact, accounts::delete,
        keys::issue, keys::list, keys::me, keys::rotate, keys::revoke,
        tenants::create, tenants::list, tenants::get, tenants::credentials, tenants::reset_credentials, tenants::delete,
        dbs::create, dbs::list, dbs::get, dbs::get_by_id, dbs::delete, dbs::restore, dbs::reset, dbs::set_ha, schema_diff::schema_diff, dbs::manual_lifecycle,
        sizes::list, billing::summary, admin::state, admin::log, admin::verify, events::stream, events::ticket,
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Marks a route as a logged mutation: it takes `Idempotency-Key` and answers as
/// `mutation::execute` does.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct Idempotent {
    /// 1 to 255 visible ASCII characters. A repeat with the same key and request gets the
    /// first answer (with `Idempotent-Replayed: true`); the same key with another request
    /// gets 409 `idempotency_key_reused`. Kept in the log: it survives restarts.
    #[param(rename = "Idempotency-Key", value_type = String, required = false, pattern = "^[!-~]{1,255}$")]
    idempotency_key: Option<String>,
}

/// The document, rendered once.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
        conventions(&mut doc);
        serde_json::to_string_pretty(&doc).expect("the document serializes")
    })
}

pub async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    })
}

/// The shared answers, headers and parameters.
fn components(doc: &mut Value) {
    let c = doc["components"].as_object_mut().expect("components");
    let mut responses = Map::new();
    for (name, description) in [
        ("BadRequest", "`malformed_json`, `unknown_field` (with `field`), `invalid_query`, `invalid_cursor`, `invalid_idempotency_key`, ..."),
        ("Unauthorized", "`missing_token`, `invalid_token`, `token_expired`, `token_revoked`"),
        ("Forbidden", "`missing_permission` (naming it), `global_key_required`, `api_key_required` (the service token is for the internal API), ..."),
        ("MethodNotAllowed", "this path does not take the method used (not this one, which it does): `method_not_allowed`; `Allow` lists the methods it takes"),
        ("RequestTimeout", "`body_timeout`: the body did not arrive within 10 s; the connection is closed"),
        ("Conflict", "`idempotency_key_reused`: this `Idempotency-Key` went with another request; or a conflict of the route"),
        ("PayloadTooLarge", "`body_too_large`: bodies are limited to 64 KiB"),
        ("UnsupportedMediaType", "`unsupported_media_type`: send `Content-Type: application/json` (charset, if any, utf-8)"),
        ("Unprocessable", "`invalid_value`, with the offending `field`"),
        ("TooManyRequests", "an abuse limit (docs/api.md, Limits): `too_many_auth_failures` (from this address, or naming this key from an address it was not recently used from), `rate_limited` (requests per key per second), `too_many_tickets`, `too_many_streams`; retry after `Retry-After` seconds"),
        ("Unavailable", "`unavailable`: the control plane is not accepting writes right now; retry after `Retry-After` seconds. `log_failed`: the command log's storage failed a write; writes are refused until the service is restarted, and the refused write may or may not have been recorded (repeat it with the same `Idempotency-Key`). `committer_failed`: the same after a defect in writing the log. `committer_restarting`: the committer restarts from the durable state after a defect; nothing of the request was recorded: repeat it"),
    ] {
        let mut r = error_response(description);
        match name {
            "MethodNotAllowed" => {
                r["headers"]["Allow"] = json!({"$ref": "#/components/headers/Allow"});
            }
            "Unavailable" | "TooManyRequests" => {
                r["headers"]["Retry-After"] = json!({"$ref": "#/components/headers/Retry-After"});
            }
            _ => {}
        }
        responses.insert(name.into(), r);
    }
    c.insert("responses".into(), Value::Object(responses));
    c.insert(
        "headers".into(),
        json!({
            "X-Request-Id": {"description": "the request's id: the client's own if it sent a sane one (1 to 128 visible ASCII characters), else made up; also in error bodies and in the log's envelopes", "schema": {"type": "string"}},
            "X-Resource-Version": {"description": "the seq of the last log event this answer reflects: the event stream's ids, so a client can read, then watch from exactly there", "schema": {"type": "integer", "minimum": 0}},
            "Idempotent-Replayed": {"description": "`true` when this is the recorded answer to an earlier request with the same `Idempotency-Key`", "schema": {"type": "string", "enum": ["true"]}},
            "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer", "minimum": 0}},
            "Allow": {"description": "the methods this path takes", "schema": {"type": "string"}},
        }),
    );
    c.insert(
        "parameters".into(),
        json!({"X-Request-Id": {
            "name": "X-Request-Id", "in": "header", "required": false,
            "description": "an id of the client's choosing, echoed and logged (1 to 128 visible ASCII characters; another is replaced)",
            "schema": {"type": "string"},
        }}),
    );
}

fn schema_of<'a>(doc: &'a Value, reference: &Value) -> Option<&'a Value> {
    let name = reference.as_str()?.strip_prefix("#/components/schemas/")?;
    doc["components"]["schemas"].get(name)
}

/// Completes every operation with what its shape implies (see the module's table).
fn conventions(doc: &mut Value) {
    components(doc);
    tighten_schemas(doc);
    let paths: Vec<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();
    for path in paths {
        for method in ["get", "post", "delete"] {
            let Some(op) = doc["paths"][&path].get(method).cloned() else {
                continue;
            };
            let op = complete(doc, method, op);
            doc["paths"][&path][method] = op;
        }
    }
}

fn complete(doc: &Value, method: &str, mut op: Value) -> Value {
    let params = op["parameters"].as_array().cloned().unwrap_or_default();
    let has = |place: &str, name: &str| {
        params
            .iter()
            .any(|p| p["in"] == place && (name.is_empty() || p["name"] == name))
    };
    let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
    let body = op.get("requestBody").is_some();
    let mutation = has("header", "Idempotency-Key");
    let pages = has("query", "cursor");
    let query = has("query", "");

    let mut add: Vec<(&str, &str)> = vec![("405", "MethodNotAllowed")];
    if secured {
        add.extend([
            ("401", "Unauthorized"),
            ("403", "Forbidden"),
            ("429", "TooManyRequests"),
        ]);
    }
    if body || query || mutation {
        add.push(("400", "BadRequest"));
    }
    if body {
        add.extend([
            ("408", "RequestTimeout"),
            ("413", "PayloadTooLarge"),
            ("415", "UnsupportedMediaType"),
            ("422", "Unprocessable"),
        ]);
    }
    if pages {
        add.push(("422", "Unprocessable"));
    }
    if mutation {
        add.extend([("409", "Conflict"), ("503", "Unavailable")]);
    }
    let responses = op["responses"].as_object_mut().expect("responses");
    for (status, name) in add {
        responses
            .entry(status)
            .or_insert_with(|| json!({"$ref": format!("#/components/responses/{name}")}));
    }
    for (status, r) in responses.iter_mut() {
        if r.get("$ref").is_some() {
            continue;
        }
        let headers = r
            .as_object_mut()
            .expect("a response")
            .entry("headers")
            .or_insert_with(|| json!({}));
        headers["X-Request-Id"] = json!({"$ref": "#/components/headers/X-Request-Id"});
        if status.starts_with('2') && secured && (method == "get" || mutation) {
            headers["X-Resource-Version"] =
                json!({"$ref": "#/components/headers/X-Resource-Version"});
        }
        if status.starts_with('2') && mutation {
            headers["Idempotent-Replayed"] =
                json!({"$ref": "#/components/headers/Idempotent-Replayed"});
        }
        if status == "503" {
            headers["Retry-After"] = json!({"$ref": "#/components/headers/Retry-After"});
        }
        if r.get("description").is_some_and(|d| d == "") {
            r["description"] = json!(describe(status));
        }
    }
    if let Some(rb) = op.get_mut("requestBody") {
        // ApiJson reads no body (and no Content-Type) as `{}`.
        let reference = &rb["content"]["application/json"]["schema"]["$ref"];
        let requires_nothing = schema_of(doc, reference).is_some_and(|s| {
            s["required"].as_array().is_none_or(|r| r.is_empty()) && s.get("oneOf").is_none()
        });
        if requires_nothing {
            rb["required"] = json!(false);
        }
    }
    let mut params = params;
    for p in &mut params {
        let (place, name) = (
            p["in"].as_str().unwrap_or(""),
            p["name"].as_str().unwrap_or(""),
        );
        let rule = match (place, name) {
            ("path", "tenant" | "db") | ("query", "against") => {
                json!({"type": "string", "pattern": ResourceName::PATTERN})
            }
            // The event stream checks its tenant filter; the operators' routes filter by any.
            ("query", "tenant") if op["operationId"] == "streamEvents" => {
                json!({"type": "string", "pattern": ResourceName::PATTERN})
            }
            ("query", "types") => json!({"type": "string", "pattern": types_pattern()}),
            ("query", "cursor") => json!({"type": "string", "pattern": CURSOR_PATTERN}),
            ("query", "at") => json!({"anyOf": [
                {"type": "string", "pattern": "^[0-9]{1,19}$"},
                {"type": "string", "format": "date-time"},
            ]}),
            // A u64: utoipa writes it as int64, whose range ends at half of it.
            _ if p["schema"]["format"] == "int64" && p["schema"]["minimum"] == 0 => {
                json!({"type": "integer", "minimum": 0, "maximum": u64::MAX})
            }
            _ => continue,
        };
        p["schema"] = rule;
    }
    params.push(json!({"$ref": "#/components/parameters/X-Request-Id"}));
    op["parameters"] = Value::Array(params);
    op
}

/// `?types=`: known event type names, comma-separated (`tools::parse_types`).
fn types_pattern() -> String {
    let names: Vec<String> = spg99_events::Event::TYPE_NAMES
        .iter()
        .map(|n| n.replace('.', "\\."))
        .collect();
    let one = format!("({})", names.join("|"));
    format!("^{one}(,{one})*$")
}

fn describe(status: &str) -> &'static str {
    match status {
        "200" => "OK",
        "201" => "created",
        "202" => "accepted: finished in the background",
        "404" => "`not_found`: no such resource, or not in the key's scope",
        "409" => "a conflict with the current state",
        "422" => "`invalid_value`, with the offending `field`",
        _ => "see the error code",
    }
}

/// What the server checks of a value, said in the schema too.
fn tighten_schemas(doc: &mut Value) {
    let sizes: Vec<&str> = crate::catalog::SIZES.iter().map(|s| s.name).collect();
    let label = json!({"pattern": AccountName::pattern(), "maxLength": AccountName::MAX_CHARS});
    let email = json!({"pattern": Email::pattern(), "maxLength": Email::MAX_CHARS});
    let resource = json!({"pattern": ResourceName::PATTERN});
    let schemas = &mut doc["components"]["schemas"];
    for (schema, field, rule) in [
        ("CreateTenant", "name", &resource),
        ("CreateDb", "name", &resource),
        ("CreateDb", "parent", &resource),
        ("CreateDb", "at", &json!({"format": "date-time"})),
        ("IssueKey", "tenant", &resource),
        ("CreateAccount", "name", &label),
        ("CreateAccount", "email", &email),
        ("Contact", "name", &label),
        ("Contact", "email", &email),
        ("IssueKey", "name", &label),
        ("CreateTenant", "account", &json!({"format": "uuid"})),
        ("IssueKey", "expires_at", &json!({"format": "date-time"})),
    ] {
        let property = &mut schemas[schema]["properties"][field];
        for (k, v) in rule.as_object().expect("a rule") {
            property[k] = v.clone();
        }
    }
    schemas["CreateDb"]["properties"]["size"]["enum"] = json!(sizes);
    // `start_immediately: true` is refused: a database starts on its first connection.
    schemas["CreateDb"]["properties"]["start_immediately"]["enum"] = json!([false, null]);
    // A branch's point needs the branch's parent.
    schemas["CreateDb"]["if"] =
        json!({"required": ["at"], "properties": {"at": {"type": "string"}}});
    schemas["CreateDb"]["then"] =
        json!({"required": ["parent"], "properties": {"parent": {"type": "string"}}});
    let key = &mut schemas["IssueKey"];
    key["properties"]["scope"]["enum"] = json!(["global", "account", "tenant"]);
    key["oneOf"] = json!([
        {"properties": {"scope": {"const": "tenant"}, "tenant": {"type": "string"}}, "required": ["tenant"]},
        {"properties": {"scope": {"enum": ["global", "account"]}, "tenant": {"type": "null"}}},
    ]);
    key["description"] =
        json!("`tenant` is required with scope `tenant` and refused with the others.");
    // A restore's point: exactly one of a time and a WAL position, and nothing else.
    let target = &mut schemas["RestoreTarget"]["oneOf"];
    target[0]["properties"]["at"]["format"] = json!("date-time");
    target[1]["properties"]["lsn"]["pattern"] = json!("^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$");
    for variant in target.as_array_mut().into_iter().flatten() {
        variant["additionalProperties"] = json!(false);
    }
}
