//! The OpenAPI document (docs/openapi.json) against the code, so that it
//! cannot drift: the server serves the file as committed; every route of
//! the route tables is documented with exactly the statuses its table
//! lists, and every documented operation is a route; the server answers
//! the documented methods of each path and refuses the others; every error
//! code of the error enums is documented, at the status the code answers
//! with. Whether the document is valid OpenAPI, and whether the running
//! server's answers match it, is checked in .ci/run (openapi-spec-validator
//! and schemathesis).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::TestServer;
use parley_identity::AuthRejection;
use parley_registration::error::AppError;
use serde_json::Value;

type Route = (&'static str, &'static str, &'static [u16]);

/// Every route the server serves: method, path, statuses.
fn served_routes() -> Vec<Route> {
    let mut routes: Vec<Route> = Vec::new();
    routes.extend(parley_registration::api::ROUTES);
    routes.extend(parley_media::ROUTES);
    routes.extend(parley::openapi::ROUTES);
    routes
}

/// Path prefixes the document describes that no route table has yet
/// (none now; a contract documented before its code goes here for a
/// while). Their operations are only checked for the error shape.
const NOT_SERVED_YET: &[&str] = &[];

/// Every error code the code can answer with, and the statuses it comes
/// with (INVALID_UPLOAD has three: 400, 411 and 415).
fn error_codes() -> BTreeMap<&'static str, BTreeSet<u16>> {
    let mut codes: BTreeMap<&'static str, BTreeSet<u16>> = BTreeMap::new();
    let kinds = AppError::every_kind()
        .into_iter()
        .map(|error| (error.code(), error.status()));
    let refusals = AuthRejection::ALL
        .into_iter()
        .map(|refusal| (refusal.code(), refusal.status()));
    let media = parley_media::MediaError::every_kind()
        .into_iter()
        .map(|error| (error.code(), error.status()));
    for (code, status) in kinds.chain(refusals).chain(media) {
        codes.entry(code).or_default().insert(status.as_u16());
    }
    codes
}

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let text = std::fs::read_to_string(path).expect("docs/openapi.json");
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

fn served_yet(path: &str) -> bool {
    !NOT_SERVED_YET.iter().any(|prefix| path.starts_with(prefix))
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every operation of the document: (method in capitals, path, its
/// operation object).
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut out = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                out.push((method.to_uppercase(), path.clone(), operation));
            }
        }
    }
    out
}

/// Follows a local `$ref` (`#/components/...`), if `value` is one.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => {
            let pointer = pointer.strip_prefix('#').expect("a local $ref");
            resolve(
                doc,
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("$ref {pointer} names nothing in the document")),
            )
        }
        None => value,
    }
}

/// An operation's statuses, and each response object (resolved).
fn responses<'a>(doc: &'a Value, operation: &'a Value) -> BTreeMap<u16, &'a Value> {
    operation["responses"]
        .as_object()
        .expect("responses")
        .iter()
        .map(|(status, response)| {
            let status = status
                .parse()
                .unwrap_or_else(|_| panic!("response {status:?}: every status is given"));
            (status, resolve(doc, response))
        })
        .collect()
}

/// The error codes a response's body may carry: `Some` with the codes of a
/// body that narrows `Error`'s code to an enum, `None` for the plain
/// `Error` (any code of `ErrorCode`). Panics if the body is not the error
/// shape.
fn error_codes_of(response: &Value, what: &str) -> Option<BTreeSet<String>> {
    // Not resolved: a plain `$ref` to Error is the answer "any code".
    let schema = &response["content"]["application/json"]["schema"];
    let is_error = |schema: &Value| {
        schema.get("$ref").and_then(Value::as_str) == Some("#/components/schemas/Error")
    };
    if is_error(schema) {
        return None;
    }
    let members = schema["allOf"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: the body is not the error shape: {schema}"));
    assert!(
        members.iter().any(is_error),
        "{what}: the body is not the error shape: {schema}"
    );
    let codes = members
        .iter()
        .find_map(|member| member.pointer("/properties/error/properties/code/enum"))
        .unwrap_or_else(|| panic!("{what}: the body does not say its codes: {schema}"));
    Some(
        codes
            .as_array()
            .expect("an enum")
            .iter()
            .map(|code| code.as_str().expect("a code").to_owned())
            .collect(),
    )
}

#[tokio::test]
async fn the_server_serves_the_document_as_committed_without_a_credential() {
    let server = TestServer::start();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(std::sync::Arc::unwrap_or_clone(server.tls.clone()))
        .build()
        .expect("client");
    let response = client
        .get(format!("{}/v1/openapi.json", server.http_url()))
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "content type"
    );
    let served = response.text().await.expect("a body");
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .expect("docs/openapi.json");
    assert!(
        served == committed,
        "the served document is not docs/openapi.json"
    );
}

#[test]
fn every_route_is_documented_with_exactly_its_statuses() {
    let doc = document();
    let mut problems = Vec::new();
    let routes = served_routes();
    for (method, path, statuses) in &routes {
        let Some(operation) = doc["paths"][path].get(method.to_lowercase()) else {
            problems.push(format!("{method} {path} is not documented"));
            continue;
        };
        let documented: BTreeSet<u16> = responses(&doc, operation).into_keys().collect();
        let answered: BTreeSet<u16> = statuses.iter().copied().collect();
        if documented != answered {
            problems.push(format!(
                "{method} {path}: documented {documented:?}, the route table says {answered:?}"
            ));
        }
    }
    for (method, path, _) in operations(&doc) {
        if served_yet(&path) && !routes.iter().any(|(m, p, _)| *m == method && *p == path) {
            problems.push(format!(
                "{method} {path} is documented but in no route table"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_error_answer_has_the_error_shape_and_every_code_its_status() {
    let doc = document();
    let known = error_codes();
    let listed: BTreeSet<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode's enum")
        .iter()
        .map(|code| code.as_str().expect("a code").to_owned())
        .collect();
    let mut problems = Vec::new();
    // Code -> the statuses of the responses that name it.
    let mut documented: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let mut served_codes = BTreeSet::new();
    for (method, path, operation) in operations(&doc) {
        for (status, response) in responses(&doc, operation) {
            let what = format!("{method} {path} {status}");
            if status < 400 {
                continue;
            }
            if method == "HEAD" {
                // A HEAD answer has no body.
                assert!(response.get("content").is_none(), "{what} has a body");
                continue;
            }
            let Some(codes) = error_codes_of(response, &what) else {
                continue;
            };
            for code in codes {
                if !listed.contains(&code) {
                    problems.push(format!("{what}: {code} is not in ErrorCode"));
                }
                if served_yet(&path) {
                    served_codes.insert(code.clone());
                }
                documented.entry(code).or_default().insert(status);
            }
        }
    }
    for (code, statuses) in &known {
        match documented.get(*code) {
            None => problems.push(format!("{code} ({statuses:?}) is in no response")),
            Some(at) if at != statuses => problems.push(format!(
                "{code} is answered with {statuses:?}, documented at {at:?}"
            )),
            Some(_) => {}
        }
    }
    for code in &served_codes {
        if !known.contains_key(code.as_str()) {
            problems.push(format!(
                "{code} is documented on a served route, but no error of the code has it"
            ));
        }
    }
    for code in &listed {
        if !documented.contains_key(code) {
            problems.push(format!("{code} is in ErrorCode but in no response"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A documented path with every parameter set to `1`.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "1"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn the_server_answers_the_documented_methods_and_refuses_the_others() {
    let doc = document();
    let server = TestServer::start();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(std::sync::Arc::unwrap_or_clone(server.tls.clone()))
        .build()
        .expect("client");
    let mut problems = Vec::new();
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths.iter().filter(|(path, _)| served_yet(path)) {
        let url = format!("{}{}", server.http_url(), concrete(path));
        // HEAD is left out: the server answers it wherever it answers GET.
        for method in METHODS.into_iter().filter(|m| *m != "head") {
            let verb =
                reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
            // No credential and no body: each route refuses it with a
            // documented status, or answers (the document itself).
            let status = client
                .request(verb, &url)
                .send()
                .await
                .expect("an answer")
                .status()
                .as_u16();
            match item.get(method) {
                Some(operation) => {
                    let statuses = responses(&doc, operation);
                    if !statuses.contains_key(&status) {
                        problems.push(format!(
                            "{method} {path}: answered {status}, not a documented status"
                        ));
                    }
                }
                None if status != 405 => problems.push(format!(
                    "{method} {path} is not documented, but answered {status} (not 405)"
                )),
                None => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
