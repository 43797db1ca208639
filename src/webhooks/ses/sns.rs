//! The SNS HTTP(S) delivery envelope: parsing, message types and the
//! canonical string AWS signs.
//!
//! See AWS's "Verifying the signatures of Amazon SNS messages": the string to
//! sign is a fixed, ordered subset of the envelope's keys, each written as
//! `Key\nValue\n`, using the JSON-decoded values.

use serde::Deserialize;

/// Longest piece of untrusted input quoted in an error message.
const QUOTE_LIMIT: usize = 128;

/// Why an SNS envelope was rejected.
#[derive(Debug, thiserror::Error)]
pub enum SnsError {
    /// The body is not a JSON SNS envelope.
    #[error("malformed sns envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    /// `Type` is not one of the three SNS HTTP message types.
    #[error("unknown sns message type {0:?}")]
    UnknownType(String),
    /// A key required for the message type (or for verification) is absent.
    #[error("missing sns field {0}")]
    MissingField(&'static str),
    /// A field AWS always writes on one line (every signed key but `Message`,
    /// and the URLs) holds a line break. The string to sign is `Key\nValue\n`
    /// lines, so such a value could shift a neighbouring key into itself (a
    /// `MessageId` of `<id>\nSubject\n<subject>` signs the same bytes as the
    /// message with that subject).
    #[error("sns field {0} contains a line break")]
    LineBreak(&'static str),
    /// `SignatureVersion` is neither `1` nor `2`.
    #[error("unsupported sns signature version {0:?}")]
    BadSignatureVersion(String),
    /// `Signature` is not standard base64.
    #[error("sns signature is not valid base64")]
    BadSignatureEncoding,
    /// `SigningCertURL` is not an https `.pem` URL on an SNS host.
    #[error("untrusted sns signing certificate url {0:?}")]
    UntrustedCertUrl(String),
    /// `SubscribeURL` is not an https URL on an SNS host.
    #[error("untrusted sns subscribe url {0:?}")]
    UntrustedSubscribeUrl(String),
    /// The signing certificate could not be read, fetched or parsed.
    #[error("sns signing certificate unavailable: {0}")]
    CertificateUnavailable(String),
    /// The signature does not match the canonical string under the certificate's key.
    #[error("sns signature mismatch")]
    SignatureMismatch,
}

impl SnsError {
    /// Returns `text` cut to a length fit for an error message (untrusted input can be long).
    pub(crate) fn quote(text: &str) -> String {
        match text.char_indices().nth(QUOTE_LIMIT) {
            Some((end, _)) => format!("{}…", &text[..end]),
            None => text.to_owned(),
        }
    }
}

/// The three message types SNS delivers to an HTTP(S) endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, utoipa::ToSchema)]
pub enum SnsMessageType {
    /// A published message; for SES, `Message` holds the SES event JSON.
    Notification,
    /// Asks the endpoint to confirm by visiting `SubscribeURL`.
    SubscriptionConfirmation,
    /// Tells the endpoint it was unsubscribed.
    UnsubscribeConfirmation,
}

impl SnsMessageType {
    /// Parses the wire name (the `Type` key or the `x-amz-sns-message-type`
    /// header); `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "Notification" => Some(SnsMessageType::Notification),
            "SubscriptionConfirmation" => Some(SnsMessageType::SubscriptionConfirmation),
            "UnsubscribeConfirmation" => Some(SnsMessageType::UnsubscribeConfirmation),
            _ => None,
        }
    }

    /// Returns the wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            SnsMessageType::Notification => "Notification",
            SnsMessageType::SubscriptionConfirmation => "SubscriptionConfirmation",
            SnsMessageType::UnsubscribeConfirmation => "UnsubscribeConfirmation",
        }
    }
}

/// An SNS message as delivered over HTTP(S), with AWS's key names.
///
/// Messages relayed by AWS Lambda (the `Sns` object of a Lambda event) spell
/// two keys `SigningCertUrl` and `UnsubscribeUrl` and carry `"Subject": null`
/// when there is no subject. Both spellings are accepted, as AWS's own
/// message validators do, and a null `Subject` is an absent one (left out of
/// the string to sign). A body holding both spellings of one key is
/// malformed, like any repeated key: the verified and the used value could
/// differ.
///
/// The three signature keys default to empty when absent, so that an
/// unsigned envelope still parses and is refused by the verifier as
/// [`SnsError::MissingField`] (an authentication failure) rather than as
/// malformed input.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct SnsEnvelope {
    /// `Notification`, `SubscriptionConfirmation` or `UnsubscribeConfirmation`.
    #[serde(rename = "Type")]
    pub r#type: String,
    /// SNS's unique id of this message; a redelivery carries the same id.
    pub message_id: String,
    pub topic_arn: String,
    /// Only for notifications published with a subject; `null` (as Lambda
    /// relays write it) is the same as absent.
    #[serde(default)]
    pub subject: Option<String>,
    /// The payload (the SES event JSON) or, for confirmations, a human text.
    pub message: String,
    /// ISO 8601 time SNS published the message.
    pub timestamp: String,
    /// `1` (SHA1withRSA) or `2` (SHA256withRSA).
    #[serde(default)]
    pub signature_version: String,
    /// Base64 signature over [`SnsEnvelope::string_to_sign`].
    #[serde(default)]
    pub signature: String,
    #[serde(rename = "SigningCertURL", alias = "SigningCertUrl", default)]
    pub signing_cert_url: String,
    /// Confirmation types only: the URL to visit to confirm.
    #[serde(rename = "SubscribeURL", default)]
    pub subscribe_url: Option<String>,
    /// Confirmation types only.
    #[serde(default)]
    pub token: Option<String>,
    /// Notifications only.
    #[serde(rename = "UnsubscribeURL", alias = "UnsubscribeUrl", default)]
    pub unsubscribe_url: Option<String>,
}

impl SnsEnvelope {
    /// Parses a raw HTTP body (SNS sends JSON as `text/plain`).
    pub fn parse(body: &[u8]) -> Result<Self, SnsError> {
        Ok(serde_json::from_slice(body)?)
    }

    /// Returns the message type named by `Type`.
    pub fn message_type(&self) -> Result<SnsMessageType, SnsError> {
        SnsMessageType::parse(&self.r#type)
            .ok_or_else(|| SnsError::UnknownType(SnsError::quote(&self.r#type)))
    }

    /// Refuses a line break (`\n` or `\r`) in any field AWS writes on one
    /// line: every key of the string to sign but `Message` (which may span
    /// lines), and the certificate and subscribe URLs.
    fn check_single_line_fields(&self) -> Result<(), SnsError> {
        let fields = [
            ("MessageId", Some(&self.message_id)),
            ("Subject", self.subject.as_ref()),
            ("Timestamp", Some(&self.timestamp)),
            ("TopicArn", Some(&self.topic_arn)),
            ("Type", Some(&self.r#type)),
            ("Token", self.token.as_ref()),
            ("SubscribeURL", self.subscribe_url.as_ref()),
            ("SigningCertURL", Some(&self.signing_cert_url)),
        ];
        for (key, value) in fields {
            if value.is_some_and(|value| value.contains(['\n', '\r'])) {
                return Err(SnsError::LineBreak(key));
            }
        }
        Ok(())
    }

    /// Returns the canonical string AWS signs for this message type: the
    /// type's keys in byte order, each as `Key\nValue\n`.
    ///
    /// Notification: Message, MessageId, Subject (only when present and not
    /// null), Timestamp, TopicArn, Type. Subscription and unsubscribe confirmations:
    /// Message, MessageId, SubscribeURL, Timestamp, Token, TopicArn, Type.
    ///
    /// Refuses an envelope with a line break where AWS never writes one
    /// ([`SnsEnvelope::check_single_line_fields`]): only `Message` may span
    /// lines, so the string has one reading.
    pub fn string_to_sign(&self) -> Result<String, SnsError> {
        self.check_single_line_fields()?;
        let mut fields: Vec<(&str, &str)> =
            vec![("Message", &self.message), ("MessageId", &self.message_id)];
        match self.message_type()? {
            SnsMessageType::Notification => {
                if let Some(subject) = &self.subject {
                    fields.push(("Subject", subject));
                }
                fields.push(("Timestamp", &self.timestamp));
            }
            SnsMessageType::SubscriptionConfirmation | SnsMessageType::UnsubscribeConfirmation => {
                let subscribe_url = self
                    .subscribe_url
                    .as_deref()
                    .ok_or(SnsError::MissingField("SubscribeURL"))?;
                let token = self
                    .token
                    .as_deref()
                    .ok_or(SnsError::MissingField("Token"))?;
                fields.extend([
                    ("SubscribeURL", subscribe_url),
                    ("Timestamp", &self.timestamp),
                    ("Token", token),
                ]);
            }
        }
        fields.push(("TopicArn", &self.topic_arn));
        fields.push(("Type", &self.r#type));

        let mut canonical =
            String::with_capacity(fields.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
        for (key, value) in fields {
            canonical.push_str(key);
            canonical.push('\n');
            canonical.push_str(value);
            canonical.push('\n');
        }
        Ok(canonical)
    }
}

/// Returns the shared provider vectors directory (`../shared/vectors` from the
/// crate root, else `STATUSHUB_VECTORS_DIR`) joined with `sub`.
///
/// # Panics
///
/// When that folder is absent: a test that reads vectors fails without them
/// rather than passing without checking anything.
#[cfg(test)]
pub(crate) fn shared_vectors(sub: &str) -> std::path::PathBuf {
    let beside = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors");
    let root = if beside.is_dir() {
        beside
    } else {
        match std::env::var_os("STATUSHUB_VECTORS_DIR") {
            Some(dir) => dir.into(),
            None => beside,
        }
    };
    let dir = root.join(sub);
    assert!(
        dir.is_dir(),
        "the shared provider vectors are missing: no folder {} (they live in \
         ../shared/vectors beside the checkout, or where STATUSHUB_VECTORS_DIR points)",
        dir.display()
    );
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(json: serde_json::Value) -> SnsEnvelope {
        SnsEnvelope::parse(json.to_string().as_bytes()).unwrap()
    }

    fn confirmation(kind: &str) -> serde_json::Value {
        serde_json::json!({
            "Type": kind,
            "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
            "Token": "2336412f37f",
            "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
            "Message": "You have chosen to subscribe to the topic.",
            "SubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=2336412f37f",
            "Timestamp": "2012-04-26T20:45:04.751Z",
            "SignatureVersion": "1",
            "Signature": "c2ln",
            "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem"
        })
    }

    #[test]
    fn message_types_parse() {
        assert_eq!(
            SnsMessageType::parse("Notification"),
            Some(SnsMessageType::Notification)
        );
        assert_eq!(
            SnsMessageType::parse("SubscriptionConfirmation"),
            Some(SnsMessageType::SubscriptionConfirmation)
        );
        assert_eq!(
            SnsMessageType::parse("UnsubscribeConfirmation"),
            Some(SnsMessageType::UnsubscribeConfirmation)
        );
        assert_eq!(SnsMessageType::parse("notification"), None);
        let unknown = envelope(serde_json::json!({
            "Type": "Other", "MessageId": "m", "TopicArn": "t", "Message": "x", "Timestamp": "z"
        }));
        assert!(matches!(
            unknown.message_type(),
            Err(SnsError::UnknownType(_))
        ));
        assert!(matches!(
            unknown.string_to_sign(),
            Err(SnsError::UnknownType(_))
        ));
    }

    #[test]
    fn notification_string_to_sign_with_and_without_subject() {
        let mut json = serde_json::json!({
            "Type": "Notification",
            "MessageId": "m-1",
            "TopicArn": "arn:aws:sns:us-east-2:1:topic",
            "Subject": "Hi",
            "Message": "{\"a\":\"b\\nc\"}\nsecond line",
            "Timestamp": "2022-07-28T22:53:49.654Z",
            "SignatureVersion": "2",
            "Signature": "c2ln",
            "SigningCertURL": "https://sns.us-east-2.amazonaws.com/x.pem",
            "UnsubscribeURL": "https://sns.us-east-2.amazonaws.com/?Action=Unsubscribe",
            "MessageAttributes": {"k": {"Type": "String", "Value": "v"}}
        });
        assert_eq!(
            envelope(json.clone()).string_to_sign().unwrap(),
            "Message\n{\"a\":\"b\\nc\"}\nsecond line\nMessageId\nm-1\nSubject\nHi\nTimestamp\n2022-07-28T22:53:49.654Z\n\
             TopicArn\narn:aws:sns:us-east-2:1:topic\nType\nNotification\n"
        );
        json.as_object_mut().unwrap().remove("Subject");
        assert_eq!(
            envelope(json).string_to_sign().unwrap(),
            "Message\n{\"a\":\"b\\nc\"}\nsecond line\nMessageId\nm-1\nTimestamp\n2022-07-28T22:53:49.654Z\n\
             TopicArn\narn:aws:sns:us-east-2:1:topic\nType\nNotification\n"
        );
    }

    #[test]
    fn confirmation_strings_to_sign() {
        for kind in ["SubscriptionConfirmation", "UnsubscribeConfirmation"] {
            let parsed = envelope(confirmation(kind));
            assert_eq!(
                parsed.string_to_sign().unwrap(),
                format!(
                    "Message\nYou have chosen to subscribe to the topic.\n\
                     MessageId\n165545c9-2a5c-472c-8df2-7ff2be2b3b1b\n\
                     SubscribeURL\nhttps://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=2336412f37f\n\
                     Timestamp\n2012-04-26T20:45:04.751Z\nToken\n2336412f37f\n\
                     TopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\nType\n{kind}\n"
                )
            );
        }
    }

    #[test]
    fn confirmation_without_token_or_subscribe_url_is_refused() {
        for missing in ["Token", "SubscribeURL"] {
            let mut json = confirmation("SubscriptionConfirmation");
            json.as_object_mut().unwrap().remove(missing);
            assert!(matches!(
                envelope(json).string_to_sign(),
                Err(SnsError::MissingField(field)) if field == missing
            ));
        }
    }

    /// Only `Message` may span lines: a line break anywhere else could shift
    /// a key of the string to sign into a neighbouring value.
    #[test]
    fn line_breaks_outside_message_are_refused() {
        let notification = serde_json::json!({
            "Type": "Notification",
            "MessageId": "m-1",
            "TopicArn": "arn:aws:sns:us-east-2:1:topic",
            "Subject": "Hi",
            "Message": "multi\nline\r\nmessage",
            "Timestamp": "2022-07-28T22:53:49.654Z",
            "SigningCertURL": "https://sns.us-east-2.amazonaws.com/x.pem",
        });
        envelope(notification.clone()).string_to_sign().unwrap();
        let cases = [
            (notification.clone(), "MessageId"),
            (notification.clone(), "Subject"),
            (notification.clone(), "Timestamp"),
            (notification.clone(), "TopicArn"),
            (notification, "SigningCertURL"),
            (confirmation("SubscriptionConfirmation"), "Token"),
            (confirmation("UnsubscribeConfirmation"), "SubscribeURL"),
        ];
        for (json, key) in cases {
            for line_break in ["\n", "\r", "\r\n"] {
                for at_end in [false, true] {
                    let mut json = json.clone();
                    let value = json[key].as_str().unwrap();
                    json[key] = if at_end {
                        format!("{value}{line_break}")
                    } else {
                        format!("{line_break}{value}")
                    }
                    .into();
                    assert!(
                        matches!(
                            envelope(json).string_to_sign(),
                            Err(SnsError::LineBreak(field)) if field == key
                        ),
                        "{key} {line_break:?}"
                    );
                }
            }
        }
        // `Type` with a line break is no known type; still refused.
        let mut json = confirmation("SubscriptionConfirmation");
        json["Type"] = "SubscriptionConfirmation\n".into();
        assert!(envelope(json).string_to_sign().is_err());
    }

    /// A notification with a subject, replayed with the subject moved into
    /// `MessageId`, would sign the same bytes as a message with a new id.
    #[test]
    fn a_subject_shifted_into_the_message_id_is_refused() {
        let original = envelope(serde_json::json!({
            "Type": "Notification",
            "MessageId": "m-1",
            "TopicArn": "t",
            "Subject": "Hi",
            "Message": "x",
            "Timestamp": "z",
        }));
        let shifted = SnsEnvelope {
            message_id: "m-1\nSubject\nHi".to_owned(),
            subject: None,
            ..original.clone()
        };
        let naive = format!(
            "Message\nx\nMessageId\n{}\nTimestamp\nz\nTopicArn\nt\nType\nNotification\n",
            shifted.message_id
        );
        assert_eq!(original.string_to_sign().unwrap(), naive);
        assert!(matches!(
            shifted.string_to_sign(),
            Err(SnsError::LineBreak("MessageId"))
        ));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for body in [
            &b""[..],
            b"not json",
            b"[]",
            b"{\"Type\":\"Notification\"}",
            b"\xff",
        ] {
            assert!(matches!(
                SnsEnvelope::parse(body),
                Err(SnsError::Malformed(_))
            ));
        }
    }

    /// A repeated key could make the verified and the used value differ.
    #[test]
    fn duplicate_keys_are_refused() {
        let body = br#"{"Type":"Notification","MessageId":"m","TopicArn":"t","Message":"a",
            "Message":"b","Timestamp":"z"}"#;
        assert!(matches!(
            SnsEnvelope::parse(body),
            Err(SnsError::Malformed(_))
        ));
    }

    /// The shape of a message relayed by AWS Lambda: `SigningCertUrl`,
    /// `UnsubscribeUrl` and a null `Subject`, left out of the string to sign.
    fn lambda_notification() -> serde_json::Value {
        serde_json::json!({
            "Type": "Notification",
            "MessageId": "m-1",
            "TopicArn": "arn:aws:sns:us-east-2:1:topic",
            "Subject": null,
            "Message": "{\"eventType\":\"Send\"}",
            "Timestamp": "2022-07-28T22:53:49.654Z",
            "SignatureVersion": "1",
            "Signature": "c2ln",
            "SigningCertUrl": "https://sns.us-east-2.amazonaws.com/x.pem",
            "UnsubscribeUrl": "https://sns.us-east-2.amazonaws.com/?Action=Unsubscribe",
            "MessageAttributes": {}
        })
    }

    #[test]
    fn lambda_relayed_notifications_parse() {
        let parsed = envelope(lambda_notification());
        assert_eq!(
            parsed.signing_cert_url,
            "https://sns.us-east-2.amazonaws.com/x.pem"
        );
        assert_eq!(
            parsed.unsubscribe_url.as_deref(),
            Some("https://sns.us-east-2.amazonaws.com/?Action=Unsubscribe")
        );
        assert_eq!(parsed.subject, None);
        assert_eq!(
            parsed.string_to_sign().unwrap(),
            "Message\n{\"eventType\":\"Send\"}\nMessageId\nm-1\n\
             Timestamp\n2022-07-28T22:53:49.654Z\n\
             TopicArn\narn:aws:sns:us-east-2:1:topic\nType\nNotification\n"
        );
        // The same message in SNS's own spelling signs the same string.
        let mut json = lambda_notification();
        let object = json.as_object_mut().unwrap();
        object.remove("Subject");
        let url = object.remove("SigningCertUrl").unwrap();
        object.insert("SigningCertURL".to_owned(), url);
        assert_eq!(
            envelope(json).string_to_sign().unwrap(),
            parsed.string_to_sign().unwrap()
        );
    }

    /// Both spellings of one key are a repeated key: refused, whatever the
    /// order and even when the values agree.
    #[test]
    fn both_spellings_of_one_key_are_refused() {
        let url = "https://sns.us-east-2.amazonaws.com/x.pem";
        let unsubscribe = "https://sns.us-east-2.amazonaws.com/?Action=Unsubscribe";
        for (first, second, value) in [
            ("SigningCertUrl", "SigningCertURL", url),
            ("SigningCertURL", "SigningCertUrl", url),
            ("UnsubscribeUrl", "UnsubscribeURL", unsubscribe),
            ("UnsubscribeURL", "UnsubscribeUrl", unsubscribe),
        ] {
            let mut json = lambda_notification();
            let object = json.as_object_mut().unwrap();
            object.remove("SigningCertUrl");
            object.remove("UnsubscribeUrl");
            let rest = json.to_string();
            let body = format!(
                "{},\"{first}\":\"{value}\",\"{second}\":\"{value}\"}}",
                rest.strip_suffix('}').unwrap()
            );
            assert!(
                matches!(
                    SnsEnvelope::parse(body.as_bytes()),
                    Err(SnsError::Malformed(_))
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn unsigned_envelope_parses_with_empty_signature_fields() {
        let parsed = envelope(serde_json::json!({
            "Type": "Notification", "MessageId": "m", "TopicArn": "t", "Message": "x", "Timestamp": "z"
        }));
        assert!(parsed.signature.is_empty() && parsed.signing_cert_url.is_empty());
    }

    #[test]
    fn quote_truncates_long_input() {
        let long = "é".repeat(500);
        assert_eq!(SnsError::quote(&long).chars().count(), QUOTE_LIMIT + 1);
        assert_eq!(SnsError::quote("short"), "short");
    }

    #[test]
    fn aws_vectors_parse() {
        let dir = shared_vectors("sns");
        for name in [
            "php2022-notification-v1-subject.json",
            "php2022-notification-v2-subject.json",
        ] {
            let parsed = SnsEnvelope::parse(&std::fs::read(dir.join(name)).unwrap()).unwrap();
            assert_eq!(parsed.message_type().unwrap(), SnsMessageType::Notification);
            assert_eq!(parsed.subject.as_deref(), Some("Hello world"));
            assert!(
                parsed
                    .string_to_sign()
                    .unwrap()
                    .starts_with("Message\nHello world\nMessageId\n")
            );
        }
    }
}
