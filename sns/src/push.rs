//! Push notifications through SNS mobile push: a device's token becomes a
//! platform endpoint under the platform application configured for its
//! platform, and a push is a `Publish` to that endpoint with
//! `MessageStructure=json`, one payload per platform, none of which says
//! anything about the message (no sender, no text, no ids).

use std::collections::HashMap;

use aws_sdk_sns::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sns::types::MessageAttributeValue;
use parley_push::{BoxFuture, Device, Platform, PushError, PushService, Target};

/// What a push says, in every language the app does not localise: the
/// app's own notification (after it connected and drained) says more.
pub const ALERT_TEXT: &str = "New messages";

/// Notifications replace each other on the phone: one "new messages" is
/// shown however many pushes arrived.
pub const COLLAPSE_ID: &str = "parley-new-messages";

/// Seconds APNs and FCM keep a push for a phone that is off: a day.
pub const TTL_SECONDS: u32 = 24 * 3600;

/// The platform applications pushes go through, one ARN per platform
/// (`arn:aws:sns:<region>:<account>:app/APNS/<name>`, `.../APNS_SANDBOX/...`,
/// `.../GCM/...`). A platform without one is not offered.
#[derive(Clone, Debug, Default)]
pub struct PushApps {
    pub apns: Option<String>,
    pub apns_sandbox: Option<String>,
    pub fcm: Option<String>,
}

impl PushApps {
    fn get(&self, platform: Platform) -> Option<&str> {
        match platform {
            Platform::Apns => self.apns.as_deref(),
            Platform::ApnsSandbox => self.apns_sandbox.as_deref(),
            Platform::Fcm => self.fcm.as_deref(),
        }
    }

    /// Whether any platform is configured.
    pub fn any(&self) -> bool {
        Platform::ALL.iter().any(|&p| self.get(p).is_some())
    }
}

/// SNS mobile push.
#[derive(Clone, Debug)]
pub struct SnsPush {
    client: aws_sdk_sns::Client,
    apps: PushApps,
    /// The `Publish` message of each platform, made once.
    messages: HashMap<Platform, String>,
}

impl SnsPush {
    pub fn new(client: aws_sdk_sns::Client, apps: PushApps) -> Self {
        let messages = Platform::ALL
            .into_iter()
            .map(|p| (p, publish_message(p)))
            .collect();
        Self {
            client,
            apps,
            messages,
        }
    }

    /// Token and `Enabled=true` on `arn`, unless it has them already.
    async fn repair(&self, arn: &str, token: &str) -> Result<Repaired, PushError> {
        let attributes = match self
            .client
            .get_endpoint_attributes()
            .endpoint_arn(arn)
            .send()
            .await
        {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_not_found_exception()) =>
            {
                return Ok(Repaired::Gone);
            }
            Err(err) => return Err(failed(&err)),
        };
        let enabled = attributes.get("Enabled").map(String::as_str) == Some("true");
        let same = attributes.get("Token").map(String::as_str) == Some(token);
        if !(enabled && same) {
            self.client
                .set_endpoint_attributes()
                .endpoint_arn(arn)
                .attributes("Token", token)
                .attributes("Enabled", "true")
                .send()
                .await
                .map_err(|e| failed(&e))?;
        }
        Ok(Repaired::Ready)
    }
}

enum Repaired {
    Ready,
    /// The endpoint no longer exists (deleted): make a new one.
    Gone,
}

/// The `Publish` message for `platform`: SNS's JSON message structure,
/// a `default` text (required by SNS) and the platform's payload, itself
/// JSON in a string.
pub fn publish_message(platform: Platform) -> String {
    let payload = match platform {
        // A visible alert: iOS does not reliably wake an app for a silent
        // push. `mutable-content` lets the app's notification service
        // extension connect and replace the text with what arrived.
        Platform::Apns | Platform::ApnsSandbox => serde_json::json!({
            "aps": {
                "alert": { "body": ALERT_TEXT },
                "sound": "default",
                "mutable-content": 1,
            },
        }),
        // A data message at high priority: Android wakes the app, which
        // connects, drains and shows its own notification. The FCM HTTP v1
        // form, which SNS forwards as it is.
        Platform::Fcm => serde_json::json!({
            "fcmV1Message": {
                "message": {
                    "data": { "kind": "new_messages" },
                    "android": {
                        "priority": "high",
                        "collapse_key": COLLAPSE_ID,
                        "ttl": format!("{TTL_SECONDS}s"),
                    },
                },
            },
        }),
    };
    let key = match platform {
        Platform::Apns => "APNS",
        Platform::ApnsSandbox => "APNS_SANDBOX",
        Platform::Fcm => "GCM",
    };
    serde_json::json!({
        "default": ALERT_TEXT,
        key: payload.to_string(),
    })
    .to_string()
}

fn string_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data_type is set")
}

/// A failed SNS call as a [`PushError::Failed`], labelled like SMS
/// failures. SNS's messages about endpoints quote ARNs, never tokens.
fn failed<E, R>(err: &SdkError<E, R>) -> PushError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let (reason, detail) = crate::classify(err);
    PushError::Failed { reason, detail }
}

/// The ARN SNS names in "Endpoint <arn> already exists with the same
/// Token, but different attributes" (made by someone else, with
/// attributes of theirs), if that is what `message` says.
fn existing_endpoint(message: &str) -> Option<&str> {
    if !message.contains("already exists") {
        return None;
    }
    let start = message.find("arn:")?;
    let rest = &message[start..];
    Some(rest.split_whitespace().next()?.trim_end_matches([',', '.']))
}

impl PushService for SnsPush {
    fn supports(&self, platform: Platform) -> bool {
        self.apps.get(platform).is_some()
    }

    fn register<'a>(
        &'a self,
        platform: Platform,
        token: &'a str,
        known: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, PushError>> {
        Box::pin(async move {
            let app = self
                .apps
                .get(platform)
                .ok_or(PushError::Unconfigured(platform))?;
            // The endpoint we made before is repaired in place (a new token
            // of the same device, or re-enabled), as AWS recommends.
            if let Some(arn) = known.filter(|arn| arn.starts_with("arn:"))
                && let Repaired::Ready = self.repair(arn, token).await?
            {
                return Ok(arn.to_owned());
            }
            // Idempotent in SNS: the same token gives the same endpoint.
            let created = self
                .client
                .create_platform_endpoint()
                .platform_application_arn(app)
                .token(token)
                .send()
                .await;
            let arn = match created {
                Ok(out) => out.endpoint_arn.ok_or_else(|| PushError::Failed {
                    reason: "service",
                    detail: "CreatePlatformEndpoint answered no EndpointArn".to_owned(),
                })?,
                Err(err) => {
                    let message = err.message().unwrap_or_default();
                    let exists = err
                        .as_service_error()
                        .is_some_and(|e| e.is_invalid_parameter_exception())
                        .then(|| existing_endpoint(message))
                        .flatten();
                    match exists {
                        Some(arn) => arn.to_owned(),
                        None if err
                            .as_service_error()
                            .is_some_and(|e| e.is_invalid_parameter_exception()) =>
                        {
                            return Err(PushError::InvalidToken(
                                "SNS refused the token (InvalidParameter)".to_owned(),
                            ));
                        }
                        None => return Err(failed(&err)),
                    }
                }
            };
            // A token registered again revives its endpoint (SNS disables
            // it when APNs or FCM says the token is no longer valid).
            match self.repair(&arn, token).await? {
                Repaired::Ready => Ok(arn),
                Repaired::Gone => Err(PushError::Failed {
                    reason: "service",
                    detail: "the endpoint SNS just made is gone".to_owned(),
                }),
            }
        })
    }

    fn publish<'a>(
        &'a self,
        _device: Device,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<(), PushError>> {
        Box::pin(async move {
            let mut publish = self
                .client
                .publish()
                .target_arn(&target.endpoint)
                .message_structure("json")
                .message(&self.messages[&target.platform]);
            if matches!(target.platform, Platform::Apns | Platform::ApnsSandbox) {
                for (name, value) in [
                    ("AWS.SNS.MOBILE.APNS.PUSH_TYPE", "alert"),
                    ("AWS.SNS.MOBILE.APNS.PRIORITY", "10"),
                    ("AWS.SNS.MOBILE.APNS.COLLAPSE_ID", COLLAPSE_ID),
                ] {
                    publish = publish.message_attributes(name, string_attribute(value));
                }
                publish = publish.message_attributes(
                    "AWS.SNS.MOBILE.APNS.TTL",
                    string_attribute(&TTL_SECONDS.to_string()),
                );
            }
            match publish.send().await {
                Ok(_) => Ok(()),
                Err(err) => {
                    let service = err.as_service_error();
                    // Disabled, or deleted: either way this endpoint is
                    // done until the phone registers its token again.
                    if service.is_some_and(|e| {
                        e.is_endpoint_disabled_exception() || e.is_not_found_exception()
                    }) {
                        return Err(PushError::Disabled);
                    }
                    Err(failed(&err))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_payload_is_json_in_json_and_says_nothing_of_the_message() {
        for platform in Platform::ALL {
            let outer: serde_json::Value =
                serde_json::from_str(&publish_message(platform)).expect("json");
            assert_eq!(outer["default"], ALERT_TEXT);
            let key = match platform {
                Platform::Apns => "APNS",
                Platform::ApnsSandbox => "APNS_SANDBOX",
                Platform::Fcm => "GCM",
            };
            let inner: serde_json::Value =
                serde_json::from_str(outer[key].as_str().expect("a string")).expect("json");
            match platform {
                Platform::Fcm => {
                    let message = &inner["fcmV1Message"]["message"];
                    assert_eq!(message["android"]["priority"], "high");
                    assert_eq!(message["data"], serde_json::json!({"kind": "new_messages"}));
                }
                _ => assert_eq!(inner["aps"]["alert"]["body"], ALERT_TEXT),
            }
        }
    }

    #[test]
    fn an_endpoint_sns_says_exists_is_found_in_its_message() {
        let said = "Invalid parameter: Token Reason: Endpoint \
                    arn:aws:sns:us-east-1:123456789012:endpoint/GCM/app/0f1e already exists \
                    with the same Token, but different attributes.";
        assert_eq!(
            existing_endpoint(said),
            Some("arn:aws:sns:us-east-1:123456789012:endpoint/GCM/app/0f1e")
        );
        assert_eq!(existing_endpoint("Invalid parameter: Token"), None);
    }
}
