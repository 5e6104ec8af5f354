//! The HTTPS API as JSON, for the tests that call it directly. Included by
//! the tests that use it (`#[path = "common/api.rs"] mod api;`); each adds
//! its own calls in an `impl Api` of its own.
#![allow(dead_code)]

use std::sync::Arc;

use crate::common::TestServer;

pub struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    pub fn new(server: &TestServer) -> Api {
        Api {
            client: reqwest::Client::builder()
                .tls_backend_preconfigured(Arc::unwrap_or_clone(server.tls.clone()))
                .build()
                .expect("client"),
            base: server.http_url(),
        }
    }

    /// `method path` with an optional bearer credential and JSON body: the
    /// status and the JSON answer (`Null` if it is not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("an answer");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        (status, json)
    }
}

impl Api {
    /// `PUT /v1/devices/self/push-token`: the status and the error code.
    pub async fn set_push_token(
        &self,
        who: &parley_client::Credential,
        platform: &str,
        token: &str,
    ) -> (u16, String) {
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                "/v1/devices/self/push-token",
                Some(&who.token),
                Some(serde_json::json!({"platform": platform, "token": token})),
            )
            .await;
        (status, code_of(&body))
    }
}

impl Api {
    /// Links a new device ("Tablet") to `primary`'s account, with a push
    /// token registered at linking; its credential.
    pub async fn link_with_push(
        &self,
        primary: &parley_client::Credential,
        platform: &str,
        token: &str,
    ) -> parley_client::Credential {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/devices/link-code",
                Some(&primary.token),
                None,
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/devices/link",
                None,
                Some(serde_json::json!({
                    "code": body["code"], "name": "Tablet",
                    "push": {"platform": platform, "token": token},
                })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["push"], "registered", "{body}");
        let id = |key: &str| body[key].as_str().expect(key).parse().expect(key);
        parley_client::Credential {
            user_id: id("user_id"),
            device_id: id("device_id"),
            token: body["token"].as_str().expect("token").to_owned(),
        }
    }
}

/// The error code of an error answer (empty for any other).
pub fn code_of(body: &serde_json::Value) -> String {
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
