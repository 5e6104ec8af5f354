//! The registration API over HTTPS: request an SMS code, verify it to get the
//! device's credential, find which phone numbers are registered, and manage
//! an account's devices (link a new one with a code from the primary, list
//! them, unlink one, list another user's device ids, set or clear this
//! device's push token).
//!
//! Errors come back as [`ClientError::Api`] with the server's documented code,
//! parsed leniently so that a proxy's HTML error page still yields a status.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::ClientError;

/// Every request (connect, send, wait for the whole answer) ends within this,
/// so a hung server cannot hang a test or the CLI.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The API's answers are a few hundred bytes; a contact lookup for a large
/// address book is the biggest. Anything past this is not our server.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// This device's push token: `PUT` sets it, `DELETE` forgets it.
const PUSH_TOKEN_PATH: &str = "/v1/devices/self/push-token";

/// HTTP client for the registration API. Cheap to clone: clones share one
/// connection pool.
#[derive(Clone, Debug)]
pub struct Registration {
    http: reqwest::Client,
    /// `https://host:port` without a trailing slash.
    base: String,
}

/// Answer to [`Registration::request_code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRequested {
    /// Seconds until the code sent by SMS stops working.
    pub expires_in: u64,
    /// Seconds before another code may be requested for this number.
    pub next_code_in: u64,
}

/// A device's credential, from [`Registration::verify`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub user_id: u64,
    pub device_id: u64,
    /// The bearer token (a JWT) for the gateway and the API. Secret.
    pub token: String,
}

impl fmt::Debug for Credential {
    // The token is a bearer secret: whoever reads a log line holding it can
    // impersonate the device.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Answer to [`Registration::create_link_code`]: a one-time code that makes
/// a new device of this account when redeemed with [`Registration::link`].
#[derive(Clone, PartialEq, Eq)]
pub struct LinkCode {
    /// The code as the server spells it (groups of base32, say). Secret
    /// while it lasts: whoever redeems it gets a device of the account.
    pub code: String,
    /// Seconds until it stops working.
    pub expires_in: u64,
}

impl fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkCode")
            .field("code", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// One device of this account, from [`Registration::devices`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub device_id: u64,
    /// What the device was called when it was linked (the primary's name is
    /// the server's choice, possibly empty).
    pub name: String,
    /// The device registered by SMS: it makes link codes and cannot be
    /// unlinked.
    pub primary: bool,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of its last session; `None` if it never connected (or
    /// the server does not say).
    pub last_seen_at: Option<u64>,
}

/// A registered phone number and the user id it maps to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub phone: String,
    pub user_id: u64,
}

impl Registration {
    /// A client for the API at `http_base` (e.g. `https://127.0.0.1:8443`),
    /// trusting what `tls` trusts.
    ///
    /// A server that cannot be reached is [`ClientError::Unreachable`] and
    /// an untrusted certificate [`ClientError::TlsHandshake`], both naming
    /// `http_base`.
    pub fn new(http_base: &str, tls: Arc<rustls::ClientConfig>) -> Result<Self, ClientError> {
        validate_http_url(http_base)?;
        let base = http_base.trim_end_matches('/');
        // reqwest takes the config by value and does not add ALPN to a
        // preconfigured one; offer both protocols so an HTTP/2 server gets it.
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("parley-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError::Http)?;
        Ok(Self {
            http,
            base: base.to_string(),
        })
    }

    /// `POST /v1/registration/code`: ask the server to text a code to `phone`.
    pub async fn request_code(&self, phone: &str) -> Result<CodeRequested, ClientError> {
        #[derive(Serialize)]
        struct Body<'a> {
            phone: &'a str,
        }
        debug!("requesting a registration code");
        self.post("/v1/registration/code", None, &Body { phone })
            .await
    }

    /// `POST /v1/registration/verify`: trade the texted code for a credential.
    /// This makes a new device and revokes the number's previous one.
    pub async fn verify(&self, phone: &str, code: &str) -> Result<Credential, ClientError> {
        #[derive(Serialize)]
        struct Body<'a> {
            phone: &'a str,
            code: &'a str,
        }
        debug!("verifying a registration code");
        let answer: WireCredential = self
            .post("/v1/registration/verify", None, &Body { phone, code })
            .await?;
        answer.parse()
    }

    /// `POST /v1/contacts/lookup`: which of `phones` are registered, and as
    /// whom. Unregistered numbers are simply absent from the answer.
    pub async fn lookup(
        &self,
        token: &str,
        phones: &[String],
    ) -> Result<Vec<Contact>, ClientError> {
        #[derive(Serialize)]
        struct Body<'a> {
            phones: &'a [String],
        }
        #[derive(Deserialize)]
        struct Answer {
            contacts: Vec<WireContact>,
        }
        #[derive(Deserialize)]
        struct WireContact {
            phone: String,
            user_id: WireId,
        }
        if phones.is_empty() {
            return Ok(Vec::new());
        }
        debug!(count = phones.len(), "looking up contacts");
        let answer: Answer = self
            .post("/v1/contacts/lookup", Some(token), &Body { phones })
            .await?;
        answer
            .contacts
            .into_iter()
            .map(|c| {
                Ok(Contact {
                    user_id: c.user_id.parse("user_id")?,
                    phone: c.phone,
                })
            })
            .collect()
    }

    /// `POST /v1/devices/link-code`: a code that links a new device to this
    /// account. Only the primary device may ask (`403 PRIMARY_ONLY`); an
    /// account at its device limit gets `409 DEVICE_LIMIT`.
    pub async fn create_link_code(&self, token: &str) -> Result<LinkCode, ClientError> {
        #[derive(Deserialize)]
        struct Answer {
            code: String,
            expires_in: u64,
        }
        debug!("requesting a link code");
        let answer: Answer = self
            .post("/v1/devices/link-code", Some(token), &serde_json::json!({}))
            .await?;
        Ok(LinkCode {
            code: answer.code,
            expires_in: answer.expires_in,
        })
    }

    /// `POST /v1/devices/link`: redeems a link code (no credential needed:
    /// the code is the proof) for a new device of the code's account, named
    /// `name`. Errors: `404 LINK_CODE_INVALID` (unknown, expired, used, or
    /// killed by wrong attempts), `409 DEVICE_LIMIT`, `429 RATE_LIMITED`,
    /// `400 INVALID_REQUEST` (a name empty or over 64 bytes).
    pub async fn link(&self, code: &str, name: &str) -> Result<Credential, ClientError> {
        #[derive(Serialize)]
        struct Body<'a> {
            code: &'a str,
            name: &'a str,
        }
        debug!("redeeming a link code");
        let answer: WireCredential = self
            .post("/v1/devices/link", None, &Body { code, name })
            .await?;
        answer.parse()
    }

    /// `GET /v1/devices`: this account's devices.
    pub async fn devices(&self, token: &str) -> Result<Vec<DeviceInfo>, ClientError> {
        let answer: WireDevices = self
            .request(http::Method::GET, "/v1/devices", Some(token), None)
            .await?;
        answer.parse()
    }

    /// `DELETE /v1/devices/{device_id}`: removes a device from this account.
    /// The primary may unlink any other device, a linked device only
    /// itself (`403 FORBIDDEN`); the primary cannot be unlinked
    /// (`409 PRIMARY_DEVICE`); `404 NO_SUCH_DEVICE`. The removed device's
    /// session is closed (`Closing{UNLINKED}`, close code 4005) and its
    /// token is refused from then on (`401 TOKEN_REVOKED`).
    pub async fn unlink(&self, token: &str, device_id: u64) -> Result<(), ClientError> {
        debug!(device_id, "unlinking a device");
        let path = format!("/v1/devices/{device_id}");
        self.send_request(http::Method::DELETE, &path, Some(token), None)
            .await
            .map(drop)
    }

    /// `PUT /v1/devices/self/push-token`: while this device has no session,
    /// the server wakes it with a content-free push to `push_token` on
    /// `platform` (`"apns"`, `"apns_sandbox"` or `"fcm"`), replacing the
    /// token it had. Errors: `400 INVALID_PUSH_TOKEN` (unknown platform, a
    /// token empty, over 1024 bytes, not printable ASCII, or refused by the
    /// push service), `400 PUSH_PLATFORM_UNAVAILABLE` (the server sends no
    /// pushes for that platform), `502 PUSH_FAILED` (the push service
    /// failed; retry later), `404 NO_SUCH_DEVICE`.
    pub async fn set_push_token(
        &self,
        token: &str,
        platform: &str,
        push_token: &str,
    ) -> Result<(), ClientError> {
        // The push token is the device's address at Apple or Google: it
        // stays out of the logs like the credential.
        debug!(platform, "setting the push token");
        let body = serde_json::json!({ "platform": platform, "token": push_token });
        self.send_request(http::Method::PUT, PUSH_TOKEN_PATH, Some(token), Some(&body))
            .await
            .map(drop)
    }

    /// `DELETE /v1/devices/self/push-token`: no more pushes to this device
    /// (also a success when it had no token).
    pub async fn clear_push_token(&self, token: &str) -> Result<(), ClientError> {
        debug!("clearing the push token");
        self.send_request(http::Method::DELETE, PUSH_TOKEN_PATH, Some(token), None)
            .await
            .map(drop)
    }

    /// `GET /v1/users/{user_id}/devices`: the device ids of any user, for
    /// sends with one envelope per device. `404 NO_SUCH_USER`.
    pub async fn user_devices(&self, token: &str, user_id: u64) -> Result<Vec<u64>, ClientError> {
        #[derive(Deserialize)]
        struct Answer {
            devices: Vec<WireId>,
        }
        let path = format!("/v1/users/{user_id}/devices");
        let answer: Answer = self
            .request(http::Method::GET, &path, Some(token), None)
            .await?;
        answer
            .devices
            .into_iter()
            .map(|d| d.parse("device id"))
            .collect()
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_value(body)
            .map_err(|e| ClientError::InvalidInput(format!("request body for {path}: {e}")))?;
        self.request(http::Method::POST, path, token, Some(&body))
            .await
    }

    /// A request whose success is a JSON answer of type `T`.
    async fn request<T: DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.send_request(method, path, token, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Protocol(format!("unexpected answer from {path} ({status}): {e}"))
        })
    }

    /// Sends a request; a success status with its body, or the error
    /// status as [`ClientError::Api`].
    async fn send_request(
        &self,
        method: http::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::from_request(&self.base, e))?;
        let status = response.status();
        if status.is_success() {
            Ok((status, read_limited(response).await?))
        } else {
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            // The error body only refines the message; an unreadable one
            // must not hide the status.
            let bytes = read_limited(response).await.unwrap_or_default();
            Err(api_error(status, retry_after.as_deref(), &bytes))
        }
    }
}

/// `GET /v1/devices`'s answer as the API spells it. Lenient where leniency
/// costs nothing: a missing name is empty, a missing time is unknown.
#[derive(Deserialize)]
struct WireDevices {
    devices: Vec<WireDevice>,
}

#[derive(Deserialize)]
struct WireDevice {
    device_id: WireId,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    created_at: Option<WireId>,
    #[serde(default)]
    last_seen_at: Option<WireId>,
}

impl WireDevices {
    fn parse(self) -> Result<Vec<DeviceInfo>, ClientError> {
        self.devices
            .into_iter()
            .map(|d| {
                Ok(DeviceInfo {
                    device_id: d.device_id.parse("device_id")?,
                    name: d.name.unwrap_or_default(),
                    primary: d.primary,
                    created_at: d
                        .created_at
                        .map(|t| t.parse("created_at"))
                        .transpose()?
                        .unwrap_or(0),
                    last_seen_at: d
                        .last_seen_at
                        .map(|t| t.parse("last_seen_at"))
                        .transpose()?,
                })
            })
            .collect()
    }
}

/// A credential as the API spells it (ids as decimal strings).
#[derive(Deserialize)]
struct WireCredential {
    user_id: WireId,
    device_id: WireId,
    token: String,
}

impl WireCredential {
    fn parse(self) -> Result<Credential, ClientError> {
        Ok(Credential {
            user_id: self.user_id.parse("user_id")?,
            device_id: self.device_id.parse("device_id")?,
            token: self.token,
        })
    }
}

/// Checks that `http_base` is a registration API URL [`Registration::new`]
/// accepts (`https://host[:port]`), without connecting.
pub fn validate_http_url(http_base: &str) -> Result<(), ClientError> {
    let base = http_base.trim_end_matches('/');
    let url = reqwest::Url::parse(base)
        .map_err(|e| ClientError::InvalidInput(format!("registration URL {base:?}: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(ClientError::InvalidInput(format!(
            "registration URL {base:?}: scheme must be https"
        )));
    }
    Ok(())
}

/// Reads a response body, refusing more than [`MAX_RESPONSE_BYTES`].
async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, ClientError> {
    let mut buf = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ClientError::Protocol(format!(
                "response body over {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Builds [`ClientError::Api`] from an error response.
///
/// The documented shape is `{"error": {"code", "message"}}` with optional
/// `attempts_left` and `retry_after`, which are looked for both inside
/// `error` and beside it. A `Retry-After` header in seconds fills in
/// `retry_after` when the body has none.
pub(crate) fn api_error(
    status: StatusCode,
    retry_after_header: Option<&str>,
    body: &[u8],
) -> ClientError {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error = json.as_ref().and_then(|v| v.get("error"));
    // Look in `error` first, then at the top level.
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .or_else(|| json.as_ref().and_then(|v| v.get(name)))
    };
    let code = error
        .and_then(|e| e.get("code"))
        .and_then(|c| c.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP_{}", status.as_u16()));
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| fallback_message(status, body));
    let attempts_left = field("attempts_left")
        .and_then(|v| v.as_u64())
        .and_then(|n| u32::try_from(n).ok());
    let retry_after = field("retry_after")
        .and_then(|v| v.as_u64())
        .or_else(|| retry_after_header.and_then(|h| h.trim().parse().ok()));
    ClientError::Api {
        status: status.as_u16(),
        code,
        message,
        attempts_left,
        retry_after,
    }
}

/// A short message for a body that is not the documented JSON.
fn fallback_message(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() || text.starts_with('{') {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text.chars().take(200).collect()
    }
}

/// User and device ids are decimal strings in the API's JSON (so JavaScript
/// does not round them); a number is accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum WireId {
    Str(String),
    Num(u64),
}

impl WireId {
    fn parse(self, field: &str) -> Result<u64, ClientError> {
        match self {
            WireId::Num(n) => Ok(n),
            WireId::Str(s) => s
                .parse()
                .map_err(|_| ClientError::Protocol(format!("{field} is not a decimal u64: {s:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(status: u16, header: Option<&str>, body: &str) -> ClientError {
        api_error(
            StatusCode::from_u16(status).expect("valid status"),
            header,
            body.as_bytes(),
        )
    }

    #[test]
    fn documented_error_body() {
        let err = parse(
            400,
            None,
            r#"{"error": {"code": "INVALID_CODE", "message": "wrong code", "attempts_left": 2}}"#,
        );
        match err {
            ClientError::Api {
                status,
                code,
                message,
                attempts_left,
                retry_after,
            } => {
                assert_eq!(status, 400);
                assert_eq!(code, "INVALID_CODE");
                assert_eq!(message, "wrong code");
                assert_eq!(attempts_left, Some(2));
                assert_eq!(retry_after, None);
            }
            other => panic!("not an API error: {other:?}"),
        }
    }

    #[test]
    fn hints_beside_the_error_object() {
        let err = parse(
            429,
            None,
            r#"{"error": {"code": "RATE_LIMITED", "message": "slow down"}, "retry_after": 30, "attempts_left": 0}"#,
        );
        assert!(
            matches!(
                &err,
                ClientError::Api { status: 429, code, attempts_left: Some(0), retry_after: Some(30), .. }
                    if code == "RATE_LIMITED"
            ),
            "{err:?}"
        );
    }

    #[test]
    fn retry_after_header_fills_in() {
        let err = parse(
            429,
            Some(" 17 "),
            r#"{"error": {"code": "RATE_LIMITED", "message": "slow down"}}"#,
        );
        assert!(
            matches!(
                err,
                ClientError::Api {
                    retry_after: Some(17),
                    ..
                }
            ),
            "{err:?}"
        );
        // The body wins over the header when both are present.
        let err = parse(
            429,
            Some("17"),
            r#"{"error": {"code": "RATE_LIMITED", "message": "x", "retry_after": 5}}"#,
        );
        assert!(
            matches!(
                err,
                ClientError::Api {
                    retry_after: Some(5),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn non_json_body_keeps_the_status() {
        let err = parse(502, None, "<html>Bad Gateway</html>");
        assert!(
            matches!(
                &err,
                ClientError::Api { status: 502, code, message, attempts_left: None, retry_after: None }
                    if code == "HTTP_502" && message == "<html>Bad Gateway</html>"
            ),
            "{err:?}"
        );
        let err = parse(404, None, "");
        assert!(
            matches!(&err, ClientError::Api { code, message, .. } if code == "HTTP_404" && message == "Not Found"),
            "{err:?}"
        );
    }

    #[test]
    fn out_of_range_hints_are_dropped_not_fatal() {
        let err = parse(
            400,
            Some("Wed, 21 Oct 2015 07:28:00 GMT"),
            r#"{"error": {"code": "INVALID_CODE", "message": "m", "attempts_left": -1}}"#,
        );
        assert!(
            matches!(
                &err,
                ClientError::Api { code, attempts_left: None, retry_after: None, .. } if code == "INVALID_CODE"
            ),
            "{err:?}"
        );
    }

    #[test]
    fn display_mentions_code_and_hints() {
        let err = parse(
            401,
            None,
            r#"{"error": {"code": "INVALID_CODE", "message": "wrong", "attempts_left": 1}}"#,
        );
        assert_eq!(
            err.to_string(),
            "INVALID_CODE (HTTP 401): wrong (1 attempts left)"
        );
    }

    #[test]
    fn credential_debug_hides_the_token() {
        let c = Credential {
            user_id: 1,
            device_id: 2,
            token: "secret.jwt.value".into(),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("user_id: 1"), "{shown}");
    }

    #[test]
    fn ids_parse_from_strings_and_numbers() {
        let s: WireId = serde_json::from_str(r#""18446744073709551615""#).expect("string id");
        assert_eq!(s.parse("user_id").expect("fits u64"), u64::MAX);
        let n: WireId = serde_json::from_str("42").expect("number id");
        assert_eq!(n.parse("user_id").expect("number"), 42);
        let bad: WireId = serde_json::from_str(r#""abc""#).expect("string");
        assert!(matches!(
            bad.parse("user_id"),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn device_lists_parse_as_documented_and_leniently() {
        let json = r#"{"devices": [
            {"device_id": "7", "name": "Alice's phone", "primary": true, "created_at": 1700000000, "last_seen_at": 1700000500},
            {"device_id": "18446744073709551615", "name": "laptop", "primary": false, "created_at": 1700000100, "last_seen_at": null},
            {"device_id": 9}
        ]}"#;
        let answer: WireDevices = serde_json::from_str(json).expect("parses");
        let devices = answer.parse().expect("valid");
        assert_eq!(
            devices[0],
            DeviceInfo {
                device_id: 7,
                name: "Alice's phone".into(),
                primary: true,
                created_at: 1_700_000_000,
                last_seen_at: Some(1_700_000_500),
            }
        );
        assert_eq!(devices[1].device_id, u64::MAX);
        assert_eq!(devices[1].last_seen_at, None);
        assert!(!devices[2].primary && devices[2].name.is_empty());
        let bad: WireDevices =
            serde_json::from_str(r#"{"devices": [{"device_id": "x"}]}"#).expect("parses");
        assert!(matches!(bad.parse(), Err(ClientError::Protocol(_))));
    }

    #[test]
    fn link_codes_are_secret_in_logs() {
        let code = LinkCode {
            code: "K7Q2-ABCD".into(),
            expires_in: 600,
        };
        let shown = format!("{code:?}");
        assert!(!shown.contains("K7Q2"), "{shown}");
        assert!(shown.contains("600"), "{shown}");
    }

    /// A client of the API at a plain-HTTP `base`; it never uses the CA.
    fn client(base: &str) -> Registration {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        let tls = crate::tls_config_from_pem(key.cert.pem().as_bytes()).expect("tls");
        Registration::new(base, tls).expect("valid base")
    }

    /// Answers one HTTP/1.1 request on 127.0.0.1 with `response` (raw,
    /// status line first); the task yields the request as received, so a
    /// test can check the method, path, credential and body the server
    /// would see.
    async fn answer_once(
        response: String,
    ) -> (String, tokio::task::JoinHandle<std::io::Result<String>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let served = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await?;
            let mut request = Vec::new();
            let mut chunk = [0; 4096];
            // The head, then as much body as it announces.
            let complete = |request: &[u8]| {
                let text = String::from_utf8_lossy(request);
                let (head, body) = text.split_once("\r\n\r\n")?;
                let length = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0);
                (body.len() >= length).then_some(())
            };
            while complete(&request).is_none() {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&chunk[..n]);
            }
            stream.write_all(response.as_bytes()).await?;
            stream.shutdown().await?;
            Ok(String::from_utf8_lossy(&request).into_owned())
        });
        (base, served)
    }

    fn no_content() -> String {
        "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_string()
    }

    fn request_body(request: &str) -> serde_json::Value {
        let (_, body) = request.split_once("\r\n\r\n").expect("a head");
        serde_json::from_str(body).expect("a JSON body")
    }

    #[tokio::test]
    async fn set_push_token_puts_the_documented_body() {
        let (base, served) = answer_once(no_content()).await;
        client(&base)
            .set_push_token("secret.jwt", "apns_sandbox", "a1b2c3")
            .await
            .expect("204 is success");
        let request = served.await.expect("task").expect("served");
        assert!(
            request.starts_with("PUT /v1/devices/self/push-token HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("\r\nauthorization: bearer secret.jwt\r\n"),
            "{request}"
        );
        assert_eq!(
            request_body(&request),
            serde_json::json!({"platform": "apns_sandbox", "token": "a1b2c3"})
        );
    }

    #[tokio::test]
    async fn clear_push_token_deletes_without_a_body() {
        let (base, served) = answer_once(no_content()).await;
        client(&base)
            .clear_push_token("secret.jwt")
            .await
            .expect("204 is success");
        let request = served.await.expect("task").expect("served");
        assert!(
            request.starts_with("DELETE /v1/devices/self/push-token HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: bearer secret.jwt"),
            "{request}"
        );
        assert!(request.ends_with("\r\n\r\n"), "no body: {request}");
    }

    #[tokio::test]
    async fn push_token_refusals_keep_their_code() {
        let body =
            r#"{"error": {"code": "PUSH_PLATFORM_UNAVAILABLE", "message": "no pushes for fcm"}}"#;
        let (base, served) = answer_once(format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ))
        .await;
        let err = client(&base)
            .set_push_token("secret.jwt", "fcm", "t")
            .await
            .expect_err("refused");
        served.await.expect("task").expect("served");
        assert!(
            matches!(
                &err,
                ClientError::Api { status: 400, code, .. } if code == "PUSH_PLATFORM_UNAVAILABLE"
            ),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_non_http_base() {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        let tls = crate::tls_config_from_pem(key.cert.pem().as_bytes()).expect("tls");
        assert!(matches!(
            Registration::new("ftp://x", tls.clone()),
            Err(ClientError::InvalidInput(_))
        ));
        Registration::new("https://127.0.0.1:8443/", tls).expect("valid base");
    }
}
