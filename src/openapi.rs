//! The HTTPS API's OpenAPI document, `docs/openapi.json`, served at
//! `GET /v1/openapi.json` without a credential, so that app writers and
//! their tools (client generators, fuzzers) read the API of the server
//! they talk to.
//!
//! The document is kept by hand and built into the binary as it is in the
//! repository; tests/openapi.rs fails when it drifts from the routes, the
//! statuses they answer and the error codes (docs/decisions.md, "The HTTP
//! API's description").

use axum::Router;
use axum::http::header;
use axum::routing::get;

/// The document, as committed.
pub const DOCUMENT: &str = include_str!("../docs/openapi.json");

/// This module's one route, in the shape of
/// `parley_registration::api::ROUTES`: method, path, statuses.
pub const ROUTES: [(&str, &str, &[u16]); 1] = [("GET", "/v1/openapi.json", &[200])];

/// The route that serves [`DOCUMENT`]. No limits of its own: it answers a
/// constant and reads no body.
pub fn router() -> Router {
    Router::new().route(
        ROUTES[0].1,
        get(|| async { ([(header::CONTENT_TYPE, "application/json")], DOCUMENT) }),
    )
}
