//! Parley on AWS SNS: registration codes leave as SMS through SNS `Publish`
//! ([`SnsSms`]); push notifications go through SNS mobile push
//! ([`SnsPush`], module [`push`]), on the same kind of client
//! ([`connect`]).
//!
//! Region, credentials and endpoint come from the standard AWS
//! configuration chain (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, profiles,
//! instance roles, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_SNS`), plus an
//! endpoint override of our own ([`SnsSettings::endpoint_url`]) for tests
//! and SNS-compatible services. HTTPS is rustls with ring, the crypto the
//! rest of Parley uses.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_sdk_sns::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sns::types::MessageAttributeValue;
use parley_registration::{SmsError, SmsSender};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub mod push;

pub use push::{PushApps, SnsPush};

/// Attempts per SNS call, the first included. Throttling and transient
/// errors are retried with the SDK's exponential backoff (with jitter);
/// the caller's deadline (the registration API's SMS timeout) bounds the
/// whole, so a retry never outlives the request.
pub const MAX_ATTEMPTS: u32 = 4;

/// The first retry's backoff; each next one doubles, with jitter.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// How to reach SNS, beyond the standard AWS configuration chain.
#[derive(Clone, Debug, Default)]
pub struct SnsSettings {
    /// An endpoint instead of AWS's (a local SNS-compatible server in
    /// tests). `AWS_ENDPOINT_URL_SNS` and `AWS_ENDPOINT_URL` work too.
    pub endpoint_url: Option<String>,
}

/// Why no SNS client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "no AWS region for SNS: set AWS_REGION (or a region in the AWS profile, ~/.aws/config)"
    )]
    NoRegion,
}

/// An SNS client from the standard AWS configuration chain and `settings`.
/// Makes no request: credentials are looked up at the first call.
pub async fn connect(settings: &SnsSettings) -> Result<aws_sdk_sns::Client, ConnectError> {
    client_from(loader(settings)).await
}

/// The AWS configuration [`connect`] loads: the standard chain, our HTTPS
/// client and retry policy, and `settings`. A caller may add to it (a
/// region or credentials of its own) before [`client_from`].
pub fn loader(settings: &SnsSettings) -> aws_config::ConfigLoader {
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(https)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(INITIAL_BACKOFF),
        );
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader
}

/// The SNS client of `loader`'s configuration; it must name a region.
pub async fn client_from(
    loader: aws_config::ConfigLoader,
) -> Result<aws_sdk_sns::Client, ConnectError> {
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(ConnectError::NoRegion);
    }
    Ok(aws_sdk_sns::Client::new(&config))
}

/// What the SMS sender counts. Every `reason` series exists from the start.
#[derive(Clone, Debug)]
pub struct SmsMetrics {
    /// SMS accepted by SNS. `increase(parley_sns_sms_sent_total[1h])` is the
    /// hourly spend to alarm on.
    pub sent: Counter,
    /// SMS SNS did not take, by `reason` ([`FAILURE_REASONS`]).
    pub failed: Family<[(&'static str, &'static str); 1], Counter>,
}

/// `reason`s of [`SmsMetrics::failed`]: `throttled` (SNS kept throttling
/// through every retry), `rejected` (SNS refused this message: a bad or
/// opted-out number, a spend limit), `auth` (credentials or permissions),
/// `unreachable` (no connection, or no answer in time), `service` (any
/// other SNS error).
pub const FAILURE_REASONS: [&str; 5] = ["throttled", "rejected", "auth", "unreachable", "service"];

impl Default for SmsMetrics {
    fn default() -> Self {
        let failed = Family::default();
        for reason in FAILURE_REASONS {
            let _ = failed.get_or_create(&[("reason", reason)]);
        }
        Self {
            sent: Counter::default(),
            failed,
        }
    }
}

impl SmsMetrics {
    /// Registers the families under `registry` (prefix it with `sns`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("sms_sent", "SMS accepted by SNS", self.sent.clone());
        registry.register(
            "sms_failed",
            "SMS that SNS did not take, by reason",
            self.failed.clone(),
        );
    }
}

/// How SMS are sent: sender id and origination number are optional and
/// depend on the destination country (docs/operations.md).
#[derive(Clone, Debug, Default)]
pub struct SmsOptions {
    /// `AWS.SNS.SMS.SenderID`: up to 11 letters and digits, where the
    /// destination country supports it.
    pub sender_id: Option<String>,
    /// `AWS.MM.SMS.OriginationNumber`: an E.164 number the account owns.
    pub origination_number: Option<String>,
}

/// SMS through SNS `Publish` to a phone number, as transactional messages
/// (SNS delivers those first and with the higher reliability).
#[derive(Clone, Debug)]
pub struct SnsSms {
    client: aws_sdk_sns::Client,
    options: SmsOptions,
    metrics: SmsMetrics,
}

impl SnsSms {
    pub fn new(client: aws_sdk_sns::Client, options: SmsOptions, metrics: SmsMetrics) -> Self {
        Self {
            client,
            options,
            metrics,
        }
    }
}

fn string_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data_type is set")
}

impl SmsSender for SnsSms {
    fn send<'a>(
        &'a self,
        to: &'a str,
        body: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), SmsError>> + Send + 'a>> {
        Box::pin(async move {
            let mut publish = self
                .client
                .publish()
                .phone_number(to)
                .message(body)
                .message_attributes("AWS.SNS.SMS.SMSType", string_attribute("Transactional"));
            if let Some(id) = &self.options.sender_id {
                publish = publish.message_attributes("AWS.SNS.SMS.SenderID", string_attribute(id));
            }
            if let Some(number) = &self.options.origination_number {
                publish = publish
                    .message_attributes("AWS.MM.SMS.OriginationNumber", string_attribute(number));
            }
            match publish.send().await {
                Ok(_) => {
                    self.metrics.sent.inc();
                    // The number and the code stay out of the log.
                    tracing::info!("SMS handed to SNS");
                    Ok(())
                }
                Err(err) => {
                    let (reason, detail) = classify(&err);
                    // SNS messages may quote what they refused: keep the
                    // number and the text out of what reaches the log.
                    let detail = redact(&detail, to, body);
                    self.metrics
                        .failed
                        .get_or_create(&[("reason", reason)])
                        .inc();
                    Err(SmsError::Provider(format!(
                        "SNS Publish ({reason}): {detail}"
                    )))
                }
            }
        })
    }
}

/// The `reason` label of a failed call and what to say of it (the SNS
/// error code and message, which never carry the number or the text).
pub(crate) fn classify<E, R>(err: &SdkError<E, R>) -> (&'static str, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            let code = inner.code().unwrap_or("unknown");
            let message = inner.message().unwrap_or("");
            (reason_of_code(code), format!("{code}: {message}"))
        }
        SdkError::TimeoutError(_) => ("unreachable", "no answer in time".to_owned()),
        SdkError::DispatchFailure(failure) => (
            "unreachable",
            format!("could not reach SNS: {:?}", failure.as_connector_error()),
        ),
        other => (
            "service",
            format!("{}", aws_sdk_sns::error::DisplayErrorContext(other)),
        ),
    }
}

/// `detail` without `to` (also without its `+`) and without `body`.
fn redact(detail: &str, to: &str, body: &str) -> String {
    let mut detail = detail.replace(body, "<the message>");
    detail = detail.replace(to, "<the number>");
    if let Some(digits) = to.strip_prefix('+')
        && !digits.is_empty()
    {
        detail = detail.replace(digits, "<the number>");
    }
    detail
}

/// The `reason` label of an SNS error code.
fn reason_of_code(code: &str) -> &'static str {
    match code {
        "Throttling"
        | "ThrottlingException"
        | "ThrottledException"
        | "TooManyRequestsException" => "throttled",
        "AuthorizationError"
        | "AccessDenied"
        | "AccessDeniedException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "UnrecognizedClientException" => "auth",
        "InvalidParameter"
        | "InvalidParameterValue"
        | "OptedOut"
        | "KMSDisabled"
        | "ValidationException" => "rejected",
        _ => "service",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_quoting_the_number_or_the_text_are_redacted() {
        let said = redact(
            "InvalidParameter: Invalid parameter: PhoneNumber Reason: +15550001111 (15550001111) \
             rejected 'Your Parley code is 123456'",
            "+15550001111",
            "Your Parley code is 123456",
        );
        assert!(!said.contains("5550001111"), "{said}");
        assert!(!said.contains("123456"), "{said}");
        assert!(said.contains("InvalidParameter"), "{said}");
    }

    #[test]
    fn every_error_code_has_a_known_reason() {
        for (code, reason) in [
            ("Throttling", "throttled"),
            ("AuthorizationError", "auth"),
            ("InvalidParameter", "rejected"),
            ("InternalError", "service"),
        ] {
            assert_eq!(reason_of_code(code), reason, "{code}");
            assert!(FAILURE_REASONS.contains(&reason));
        }
    }
}
