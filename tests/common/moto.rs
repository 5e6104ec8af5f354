//! A real local SNS-compatible server for the tests: moto's, started from
//! `PARLEY_TEST_MOTO` (`.ci/run` installs it), and what it was asked to
//! send, read back from its own API (`GET /moto-api/data.json`). Included
//! by the tests that use it (`#[path = "common/moto.rs"] mod moto;`).
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// How long moto may take to start (usually about a second).
const MOTO_STARTUP: Duration = Duration::from_secs(60);

/// A moto server on a loopback port of its own, ended (by its pid) when
/// dropped.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Moto {
    /// Starts moto on a free loopback port. The port was free when picked,
    /// but another test's server may take it before moto (a Python program,
    /// slow to start on a loaded machine) binds it: moto then exits, and it
    /// is started again on another port (at most 5 times).
    pub async fn start() -> Moto {
        let command = std::env::var("PARLEY_TEST_MOTO")
            .ok()
            .filter(|c| !c.is_empty())
            .expect("PARLEY_TEST_MOTO names the command that starts moto's server");
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new(&command)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
            let mut moto = Moto {
                child,
                url: format!("http://127.0.0.1:{port}"),
            };
            let deadline = std::time::Instant::now() + MOTO_STARTUP;
            loop {
                if moto.try_data().await.is_some() {
                    return moto;
                }
                if let Ok(Some(_)) = moto.child.try_wait() {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "moto did not answer within {MOTO_STARTUP:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            moto.stop();
        }
        panic!("moto exited at start 5 times (its port taken each time?)");
    }

    pub async fn try_data(&self) -> Option<serde_json::Value> {
        let response = plain_http()
            .get(format!("{}/moto-api/data.json", self.url))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// The SMS SNS was asked to send: `(phone_number, message)`.
    pub async fn sms(&self) -> Vec<(String, String)> {
        let data = self.try_data().await.expect("moto's data");
        data["sns"]["SMS"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|sms| {
                        (
                            sms["phone_number"].as_str().unwrap_or_default().to_owned(),
                            sms["message"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client for moto's plain-HTTP API (reqwest needs a TLS
/// configuration even so; it trusts nothing).
pub fn plain_http() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .expect("client")
}

/// A loopback port nothing listens on (it was free a moment ago).
pub fn free_port() -> u16 {
    let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
    probe.local_addr().expect("addr").port()
}

impl Moto {
    /// Creates S3 bucket `name` (moto tells its services apart by the
    /// service an Authorization header names; it checks no signature).
    pub async fn create_bucket(&self, name: &str) {
        let response = plain_http()
            .put(format!("{}/{name}", self.url))
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, \
                 SignedHeaders=host, Signature=0",
            )
            .send()
            .await
            .expect("moto answers");
        assert!(
            response.status().is_success(),
            "bucket {name}: {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// Ends moto now (SNS "goes away"); dropping it later is harmless.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// An SDK client for moto, for what a test sets up itself (platform
    /// applications, a disabled endpoint).
    pub async fn client(&self) -> aws_sdk_sns::Client {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sns::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .endpoint_url(&self.url)
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https(),
            )
            .load()
            .await;
        aws_sdk_sns::Client::new(&config)
    }

    /// A platform application for `platform` (`GCM`, `APNS`,
    /// `APNS_SANDBOX`); its ARN.
    pub async fn platform_application(&self, platform: &str) -> String {
        self.client()
            .await
            .create_platform_application()
            .name(format!("parley-{}", platform.to_lowercase()))
            .platform(platform)
            .attributes("PlatformCredential", "test-credential")
            .send()
            .await
            .expect("CreatePlatformApplication")
            .platform_application_arn
            .expect("an ARN")
    }

    /// The platform endpoints moto holds: `(arn, token, enabled, messages)`.
    pub async fn endpoints(&self) -> Vec<Endpoint> {
        let data = self.try_data().await.expect("moto's data");
        data["sns"]["PlatformEndpoint"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|e| Endpoint {
                        arn: e["arn"].as_str().unwrap_or_default().to_owned(),
                        // What GetEndpointAttributes says (moto keeps a
                        // token changed by SetEndpointAttributes there).
                        token: e["attributes"]["Token"]
                            .as_str()
                            .or(e["token"].as_str())
                            .unwrap_or_default()
                            .to_owned(),
                        enabled: e["enabled"].as_bool().unwrap_or_default(),
                        messages: e["messages"]
                            .as_object()
                            .map(|m| {
                                m.values()
                                    .filter_map(|v| v.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The endpoint of `token`.
    pub async fn endpoint(&self, token: &str) -> Endpoint {
        let endpoints = self.endpoints().await;
        let mine: Vec<&Endpoint> = endpoints.iter().filter(|e| e.token == token).collect();
        assert_eq!(mine.len(), 1, "one endpoint for {token}: {endpoints:?}");
        mine[0].clone()
    }
}

/// A platform endpoint as moto holds it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub arn: String,
    pub token: String,
    pub enabled: bool,
    /// What was published to it, as sent (SNS's JSON message structure).
    pub messages: Vec<String>,
}
