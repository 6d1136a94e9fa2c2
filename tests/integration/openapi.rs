//! The OpenAPI document served at `/api/openapi.json` describes what the server does:
//! every route `api::configure` mounts is in it with its method, each `{param}` of its
//! path is declared (as a UUID where the handler parses one), authenticated operations
//! list 401 and JSON-body operations 400/413/415/422, and the bounds the validation
//! code enforces are stated.
//!
//! The list of mounted routes is read from the source, not from the document: the
//! `.service(...)` calls of `api::configure` (with the prefix of the `web::scope` they
//! sit in) and the `#[get("...")]`/`#[post("...")]`/... attribute of each handler.
//! Each route is then probed on the live server, so a parse that went wrong shows as
//! an "unknown route" answer. (The dashboard's HTML pages, `web::configure`, are not
//! part of the API and not in the document.)

use std::collections::{BTreeMap, BTreeSet};

use lastmile_controller::api::{Bound, SCHEMA_BOUNDS};
use serde_json::Value;

use crate::per_backend;
use crate::support::{TestApp, TestDb};

per_backend!(openapi_document_describes_every_mounted_route);

/// A route as the server mounts it.
#[derive(Debug)]
struct Route {
    /// Lower case, as OpenAPI keys operations.
    method: String,
    /// Full path template, `{name}` for parameters.
    path: String,
    /// `module::function`.
    handler: String,
    /// The handler's parameter list: which extractors it takes.
    signature: String,
}

fn api_source(file: &str) -> String {
    let path = format!(
        "{}/../controller/server/src/api/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The `(prefix, module::function)` of every `.service(handler)` in `configure`.
fn configured_services() -> Vec<(String, String)> {
    let module = api_source("mod.rs");
    let start = module
        .find("pub fn configure(")
        .expect("api::configure not found");
    let body = &module[start..];
    let body = &body[..body.find("\n}\n").expect("end of configure")];
    let bytes = body.as_bytes();
    let mut services = Vec::new();
    let mut scopes: Vec<(i32, String)> = Vec::new();
    let mut depth = 0i32;
    let mut i = 0;
    while i < body.len() {
        let rest = &body[i..];
        if let Some(after) = rest.strip_prefix("web::scope(\"") {
            // A scope's services are chained on it: it lasts as long as the
            // parentheses around the scope expression.
            let prefix = &after[..after.find('"').expect("scope literal")];
            scopes.push((depth - 1, prefix.to_owned()));
            depth += 1;
            i += "web::scope(\"".len() + prefix.len() + 1;
            continue;
        }
        if let Some(after) = rest.strip_prefix(".service(") {
            let len = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(after.len());
            if after[len..].starts_with(')') && after[..len].contains("::") {
                let prefix: String = scopes.iter().map(|(_, p)| p.as_str()).collect();
                services.push((prefix, after[..len].to_owned()));
            }
        }
        match bytes[i] {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                while scopes.last().is_some_and(|(d, _)| *d >= depth) {
                    scopes.pop();
                }
            }
            _ => {}
        }
        i += 1;
    }
    services
}

/// Every route `configure` mounts, with its handler's method attribute.
fn mounted_routes() -> Vec<Route> {
    let mut routes = Vec::new();
    for (prefix, handler) in configured_services() {
        let (module, function) = handler.rsplit_once("::").unwrap();
        let module = module.rsplit("::").next().unwrap();
        let source = api_source(&format!("{module}.rs"));
        let at = source
            .find(&format!("pub async fn {function}("))
            .unwrap_or_else(|| panic!("handler {handler} not found in {module}.rs"));
        // The handler's attributes: between the end of the previous item and the fn.
        let head = &source[..at];
        let attributes = &head[head.rfind("\n}").map_or(0, |p| p + 2)..];
        let (method, path) = ["get", "post", "put", "delete", "patch"]
            .iter()
            .find_map(|m| {
                let open = format!("#[{m}(\"");
                let from = attributes.find(&open)? + open.len();
                let len = attributes[from..].find('"')?;
                Some((m.to_string(), attributes[from..from + len].to_owned()))
            })
            .unwrap_or_else(|| panic!("{handler} has no #[get/post/put/delete/patch] attribute"));
        // The parameters only (the return type may say `web::Json` too).
        let tail = &source[at..];
        let tail = &tail[..tail.find('{').unwrap()];
        let signature = tail[..tail.rfind("->").unwrap_or(tail.len())].to_owned();
        routes.push(Route {
            method,
            path: format!("{prefix}{path}"),
            handler,
            signature,
        });
    }
    routes
}

/// The `{name}`s of a path template, in order.
fn template_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(str::to_owned)
        .collect()
}

fn is_api_error_response(response: &Value) -> bool {
    response["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ApiError"
}

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

const AUTH_EXTRACTORS: [&str; 6] = [
    "AuthOwner",
    "AuthAgent",
    "AuthAdmin",
    "AuthHolder",
    "AuthVolunteer",
    "AuthIsp",
];

async fn openapi_document_describes_every_mounted_route(db: TestDb) {
    let app = TestApp::start(&db).await;
    let routes = mounted_routes();
    assert!(
        routes.len() > 30,
        "only {} routes parsed from api::configure: {routes:?}",
        routes.len()
    );
    let (status, doc) = app.call("GET", "/api/openapi.json", None, None).await;
    assert_eq!(status, 200);

    // A valid OpenAPI 3.1 document: it parses as one, and every reference resolves.
    assert_eq!(doc["openapi"], "3.1.0");
    serde_json::from_value::<utoipa::openapi::OpenApi>(doc.clone())
        .expect("the document does not parse as an OpenAPI document");
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    for r in &all_refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {r}"));
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "dangling reference {r}"
        );
    }

    let mut problems = Vec::new();
    let mut mounted = BTreeSet::new();
    for route in &routes {
        let label = format!("{} {} ({})", route.method, route.path, route.handler);
        mounted.insert((route.path.clone(), route.method.clone()));
        let Some(op) = doc["paths"][&route.path].get(&route.method) else {
            problems.push(format!("{label}: not in the document"));
            continue;
        };
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        let declared: BTreeMap<String, &Value> = params
            .iter()
            .filter(|p| p["in"] == "path")
            .map(|p| (p["name"].as_str().unwrap_or_default().to_owned(), p))
            .collect();
        let wanted = template_params(&route.path);
        let parses_uuid =
            route.signature.contains("Path<Uuid>") || route.signature.contains("Path<(Uuid");
        for name in &wanted {
            match declared.get(name) {
                None => problems.push(format!("{label}: path parameter {{{name}}} not declared")),
                Some(p) => {
                    if p["required"] != true {
                        problems.push(format!("{label}: {{{name}}} not required"));
                    }
                    if parses_uuid && p["schema"]["format"] != "uuid" {
                        problems.push(format!("{label}: {{{name}}} is a UUID, not declared so"));
                    }
                }
            }
        }
        for name in declared.keys() {
            if !wanted.contains(name) {
                problems.push(format!(
                    "{label}: declares path parameter {name} that the path does not have"
                ));
            }
        }
        if route.signature.contains("web::Query<") && !params.iter().any(|p| p["in"] == "query") {
            problems.push(format!("{label}: takes a query string, declares none"));
        }
        let responses = &op["responses"];
        if AUTH_EXTRACTORS.iter().any(|a| route.signature.contains(a)) {
            let secured = op["security"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|r| r.as_object().is_some_and(|o| !o.is_empty()))
            });
            if !secured {
                problems.push(format!(
                    "{label}: authenticated, but no security requirement"
                ));
            }
            if !is_api_error_response(&responses["401"]) {
                problems.push(format!(
                    "{label}: authenticated, but no 401 ApiError answer"
                ));
            }
        }
        if route.signature.contains("web::Json<") {
            if op["requestBody"]["content"]
                .get("application/json")
                .is_none()
            {
                problems.push(format!("{label}: takes JSON, documents no JSON body"));
            }
            for status in ["400", "413", "415", "422"] {
                if !is_api_error_response(&responses[status]) {
                    problems.push(format!(
                        "{label}: JSON body, but no {status} ApiError answer"
                    ));
                }
            }
        }
    }
    // Nothing documented that the server does not mount.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if !mounted.contains(&(path.clone(), method.clone())) {
                problems.push(format!("{method} {path}: documented but not mounted"));
            }
        }
    }

    // The bounds the server enforces, stated on the fields they apply to.
    let schemas = &doc["components"]["schemas"];
    let amount = &schemas["NewCheckout"]["properties"]["amount_minor"];
    if (amount["minimum"].as_i64(), amount["maximum"].as_i64()) != (Some(500), Some(1_000_000)) {
        problems.push(format!(
            "NewCheckout.amount_minor is not 500..=1000000: {amount}"
        ));
    }
    for (schema, property, bound) in SCHEMA_BOUNDS {
        let (name, items) = match property.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (*property, false),
        };
        let mut field = &schemas[schema]["properties"][name];
        if items {
            field = &field["items"];
        }
        let ok = match *bound {
            Bound::Range(min, max) => {
                min.is_none_or(|m| field["minimum"].as_i64() == Some(m))
                    && max.is_none_or(|m| field["maximum"].as_i64() == Some(m))
            }
            Bound::Length(min, max) => {
                field["minLength"].as_u64() == Some(min as u64)
                    && field["maxLength"].as_u64() == Some(max as u64)
            }
            Bound::Pattern(p) => field["pattern"] == p,
        };
        if !ok {
            problems.push(format!(
                "{schema}.{property}: {bound:?} not in the document ({field})"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the OpenAPI document does not describe the server:\n  {}",
        problems.join("\n  ")
    );

    // The live server answers every mounted route (no "no route for" 404), and the
    // authenticated ones answer 401 without a token.
    let client = reqwest::Client::new();
    for route in &routes {
        let mut path = route.path.clone();
        for name in template_params(&route.path) {
            path = path.replace(&format!("{{{name}}}"), &uuid::Uuid::new_v4().to_string());
        }
        let res = client
            .request(
                route.method.to_uppercase().parse().unwrap(),
                format!("{}{path}", app.base),
            )
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        let label = format!("{} {path} ({})", route.method, route.handler);
        let unknown = body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no route for"));
        assert!(!unknown, "{label}: the server does not mount it: {body}");
        if AUTH_EXTRACTORS.iter().any(|a| route.signature.contains(a))
            && !route.signature.contains("web::Json<")
        {
            assert_eq!(status, 401, "{label} without a token: {body}");
        }
    }
    app.controller.stop().await.unwrap();
}
