//! Signatures and vectors: both signature versions of every message type,
//! what breaks a signature, AWS's genuine signed notifications, Lambda's
//! spelling, and AWS's documented SES examples.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::harness::*;
use crate::helpers::*;

#[actix_web::test]
async fn signed_messages_of_every_type_and_both_versions_are_accepted() {
    let signer = Signer::new();
    let stand_in = StandIn::start().await;
    let base = stand_in.base.clone();
    let app = spawn_ses_app(&signer, |settings| {
        settings.sns_topic_arns = vec![TOPIC.to_owned()];
        settings.sns_subscribe_override = Some(base);
    })
    .await;
    register_email(&app, "c1", &["e-1a", "e-1b", "e-2a", "e-2b"]).await;

    for version in ["1", "2"] {
        // A notification with a Subject and one without (both are signed differently).
        let mut with_subject =
            notification(&ses_event("eventType", "Send", &format!("e-{version}a")));
        with_subject["Subject"] = "Amazon SES Email Event Notification".into();
        let without_subject = notification(&ses_event(
            "eventType",
            "Delivery",
            &format!("e-{version}b"),
        ));
        for envelope in [with_subject, without_subject] {
            let receipt = deliver(&app, &signer.sign(envelope, version)).await;
            assert_eq!(receipt, receipt_json(1, 0, 0, 0), "version {version}");
        }

        let token = format!("token-v{version}");
        let subscribe = signer.sign(
            confirmation("SubscriptionConfirmation", TOPIC, &token),
            version,
        );
        let response = post_sns(&app, &subscribe).await;
        assert_eq!(response.status(), 200, "version {version}");
        let outcome: Value = response.json().await.unwrap();
        assert_eq!(outcome["outcome"], "confirmed");
        assert_eq!(outcome["subscription_arn"], SUBSCRIPTION_ARN);

        let unsubscribe = signer.sign(
            confirmation("UnsubscribeConfirmation", TOPIC, &token),
            version,
        );
        assert_eq!(
            post_sns(&app, &unsubscribe).await.status(),
            200,
            "version {version}"
        );
    }

    // Confirmations went to the stand-in with SubscribeURL's path and query.
    assert_eq!(
        stand_in.requests(),
        ["1", "2"].map(|v| format!(
            "GET /?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=token-v{v} HTTP/1.1"
        ))
    );
    let outcomes: Vec<(String, String)> = health_subscriptions(&app)
        .await
        .iter()
        .map(|o| {
            (
                o["message_type"].as_str().unwrap().to_owned(),
                o["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let pair = |kind: &str, outcome: &str| (kind.to_owned(), outcome.to_owned());
    assert_eq!(
        outcomes,
        [
            pair("UnsubscribeConfirmation", "unsubscribed"),
            pair("SubscriptionConfirmation", "confirmed"),
            pair("UnsubscribeConfirmation", "unsubscribed"),
            pair("SubscriptionConfirmation", "confirmed"),
        ],
        "newest first"
    );
    let metrics = app.metrics("c1").await;
    assert_eq!(
        counts_only(&metrics),
        expected_counts(["Send", "Delivery", "Send", "Delivery"])
    );
    assert_eq!(counts_only(&metrics), app.sql_counts("c1").await);
}

#[actix_web::test]
async fn a_changed_signed_byte_a_wrong_version_or_a_foreign_certificate_host_is_refused() {
    let signer = Signer::new();
    let stand_in = StandIn::start().await;
    let base = stand_in.base.clone();
    let app = spawn_ses_app(&signer, |settings| {
        settings.sns_subscribe_override = Some(base)
    })
    .await;
    register_email(&app, "c1", &["e-1"]).await;
    // Another certificate with the same file name must not matter either.
    let foreign_hosts = [
        format!("https://{SNS_HOST}.evil.example/{CERT_NAME}"),
        format!("https://evil.example/{CERT_NAME}"),
        format!("http://{SNS_HOST}/{CERT_NAME}"),
        format!("https://sqs.eu-west-1.amazonaws.com/{CERT_NAME}"),
    ];

    let mut with_subject = notification(&ses_event("eventType", "Delivery", "e-1"));
    with_subject["Subject"] = "s".into();
    let originals = [
        with_subject,
        notification(&ses_event("eventType", "Delivery", "e-1")),
        confirmation("SubscriptionConfirmation", TOPIC, "tok"),
        confirmation("UnsubscribeConfirmation", TOPIC, "tok"),
    ];
    let mut refused = 0;
    for original in originals {
        for version in ["1", "2"] {
            let signed = signer.sign(original.clone(), version);
            let mut forgeries = Vec::new();
            for key in signed_keys(&signed) {
                if key == "Type" {
                    continue; // changed below, to another valid type
                }
                let mut forged = signed.clone();
                forged[key] = flip_last(forged[key].as_str().unwrap()).into();
                forgeries.push((format!("changed {key}"), forged));
            }
            let mut retyped = signed.clone();
            match signed["Type"].as_str().unwrap() {
                "Notification" => {
                    // Adding or dropping the Subject changes the signed string.
                    if retyped.as_object_mut().unwrap().remove("Subject").is_none() {
                        retyped["Subject"] = "s".into();
                    }
                }
                "SubscriptionConfirmation" => retyped["Type"] = "UnsubscribeConfirmation".into(),
                _ => retyped["Type"] = "SubscriptionConfirmation".into(),
            }
            forgeries.push(("changed Type or Subject presence".to_owned(), retyped));
            for wrong in [if version == "1" { "2" } else { "1" }, "3", ""] {
                let mut forged = signed.clone();
                forged["SignatureVersion"] = wrong.into();
                forgeries.push((format!("version {wrong:?}"), forged));
            }
            for url in &foreign_hosts {
                let mut forged = signed.clone();
                forged["SigningCertURL"] = url.as_str().into();
                forgeries.push((format!("certificate at {url}"), forged));
            }
            let mut unsigned = signed.clone();
            for key in ["Signature", "SignatureVersion", "SigningCertURL"] {
                unsigned.as_object_mut().unwrap().remove(key);
            }
            forgeries.push(("unsigned".to_owned(), unsigned));
            let mut garbled = signed.clone();
            garbled["Signature"] = STANDARD.encode([7u8; 256]).into();
            forgeries.push(("another signature".to_owned(), garbled));

            for (what, forged) in forgeries {
                let response = post_sns(&app, &forged).await;
                assert_eq!(
                    response.status(),
                    401,
                    "{what}, version {version}: {forged}"
                );
                refused += 1;
            }
        }
    }

    assert!(refused > 80, "{refused}");
    assert_eq!(stored(&app).await, [0, 0, 0], "nothing stored");
    assert!(stand_in.requests().is_empty(), "nothing fetched");
    assert!(health_subscriptions(&app).await.is_empty());
    assert_eq!(app.message("email", "e-1").await["status"], "pending");
}

/// Genuine AWS-signed notifications (aws/aws-php-sns-message-validator
/// fixtures, SignatureVersion 1 and 2) verify offline through
/// `SNS_CERT_DIR`; their "Hello world" message is no SES event, so they are
/// kept as dead letters and acknowledged. Any changed signed byte: 401.
#[actix_web::test]
async fn genuine_aws_signed_notifications_verify_offline_and_fail_when_changed() {
    let dir = vectors_dir("sns");
    let app = spawn_app_with(|settings| settings.sns_cert_dir = Some(dir.clone())).await;

    let names = [
        "php2022-notification-v1-subject.json",
        "php2022-notification-v2-subject.json",
    ];
    for (index, name) in names.iter().enumerate() {
        let raw = std::fs::read(dir.join(name)).unwrap();
        let genuine: Value = serde_json::from_slice(&raw).unwrap();
        // The exact bytes AWS sent.
        let response = app
            .client
            .post(app.url("/webhooks/email"))
            .header("content-type", "text/plain; charset=UTF-8")
            .header("x-amz-sns-message-type", "Notification")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name}");
        let receipt: Value = response.json().await.unwrap();
        assert_eq!(receipt, receipt_json(0, 0, 0, 1), "{name}");
        assert_eq!(stored(&app).await, [0, 0, index as i64 + 1], "{name}");

        for key in ["Message", "MessageId", "Subject", "Timestamp", "TopicArn"] {
            let mut forged = genuine.clone();
            forged[key] = flip_last(genuine[key].as_str().unwrap()).into();
            assert_eq!(post_sns(&app, &forged).await.status(), 401, "{name}: {key}");
        }
        let mut no_subject = genuine.clone();
        no_subject.as_object_mut().unwrap().remove("Subject");
        assert_eq!(
            post_sns(&app, &no_subject).await.status(),
            401,
            "{name}: no subject"
        );
        let mut other_version = genuine.clone();
        other_version["SignatureVersion"] = if genuine["SignatureVersion"] == "1" {
            "2"
        } else {
            "1"
        }
        .into();
        assert_eq!(
            post_sns(&app, &other_version).await.status(),
            401,
            "{name}: version"
        );
        assert_eq!(
            stored(&app).await,
            [0, 0, index as i64 + 1],
            "{name}: nothing more stored"
        );
    }
    let response = app
        .get("/webhooks/dead-letters?limit=10", ADMIN_TOKEN)
        .await;
    let letters: Value = response.json().await.unwrap();
    assert!(
        letters
            .as_array()
            .unwrap()
            .iter()
            .all(|letter| letter["channel"] == "email"
                && letter["body"].as_str().unwrap().contains("Hello world")),
        "{letters}"
    );
}

/// A signed notification with a subject, replayed with the subject shifted
/// into `MessageId`, signs the same bytes: it is refused (401) and nothing
/// more is applied or stored. AWS's genuine notification shifted the same
/// way: 401 too.
#[actix_web::test]
async fn a_subject_shifted_into_the_message_id_is_refused() {
    let signer = Signer::new();
    let app = spawn_ses_app(&signer, |_| {}).await;
    register_email(&app, "c1", &["e-1"]).await;

    for version in ["1", "2"] {
        let mut envelope = notification(&ses_event("eventType", "Click", "e-1"));
        envelope["Subject"] = "Amazon SES Email Event Notification".into();
        let signed = signer.sign(envelope, version);
        if version == "1" {
            assert_eq!(deliver(&app, &signed).await, receipt_json(1, 0, 0, 0));
        }
        let before = (app.metrics("c1").await, stored(&app).await);

        let shifted = subject_shifted_into_message_id(&signed);
        let response = post_sns(&app, &shifted).await;
        assert_eq!(response.status(), 401, "version {version}");
        assert_eq!((app.metrics("c1").await, stored(&app).await), before);
    }
    let timeline = &app.message("email", "e-1").await["timeline"];
    assert_eq!(timeline.as_array().unwrap().len(), 1, "{timeline}");
    // Each refusal is counted by channel, for the alert.
    let refused = r#"statushub_webhook_signature_failures_total{channel="email"}"#;
    assert_eq!(app.scrape(refused).await, 2.0);

    let dir = vectors_dir("sns");
    let app = spawn_app_with(|settings| settings.sns_cert_dir = Some(dir.clone())).await;
    for name in [
        "php2022-notification-v1-subject.json",
        "php2022-notification-v2-subject.json",
    ] {
        let genuine: Value =
            serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap();
        let shifted = subject_shifted_into_message_id(&genuine);
        assert_eq!(post_sns(&app, &shifted).await.status(), 401, "{name}");
        assert_eq!(post_sns(&app, &genuine).await.status(), 200, "{name}");
    }
    assert_eq!(stored(&app).await, [0, 0, 2]);
}

/// SNS messages relayed by AWS Lambda (`SigningCertUrl`, `UnsubscribeUrl`,
/// `"Subject": null`) verify and are applied like SNS's own; a body with
/// both spellings of a key is malformed (400). AWS's genuine notifications
/// respelled that way still verify.
#[actix_web::test]
async fn notifications_relayed_by_lambda_are_accepted() {
    let signer = Signer::new();
    let app = spawn_ses_app(&signer, |_| {}).await;
    register_email(&app, "c1", &["e-1", "e-2"]).await;

    for (version, id) in [("1", "e-1"), ("2", "e-2")] {
        let mut envelope = notification(&ses_event("eventType", "Delivery", id));
        envelope["Subject"] = Value::Null;
        let relayed = in_lambda_spelling(&signer.sign(envelope, version));
        assert!(relayed["Subject"].is_null() && relayed.get("SigningCertURL").is_none());

        let rows = stored(&app).await;
        let mut both = relayed.clone();
        both["SigningCertURL"] = relayed["SigningCertUrl"].clone();
        assert_eq!(
            post_sns(&app, &both).await.status(),
            400,
            "version {version}"
        );

        let mut forged = relayed.clone();
        forged["Subject"] = "s".into();
        assert_eq!(
            post_sns(&app, &forged).await.status(),
            401,
            "version {version}"
        );
        assert_eq!(stored(&app).await, rows, "version {version}");

        assert_eq!(deliver(&app, &relayed).await, receipt_json(1, 0, 0, 0));
        assert_eq!(app.message("email", id).await["status"], "delivered");
    }
    let metrics = app.metrics("c1").await;
    assert_eq!(
        counts_only(&metrics),
        expected_counts(["Delivery", "Delivery"])
    );
    assert_eq!(counts_only(&metrics), app.sql_counts("c1").await);

    let dir = vectors_dir("sns");
    let app = spawn_app_with(|settings| settings.sns_cert_dir = Some(dir.clone())).await;
    for name in [
        "php2022-notification-v1-subject.json",
        "php2022-notification-v2-subject.json",
    ] {
        let genuine: Value =
            serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap();
        let relayed = in_lambda_spelling(&genuine);
        // "Hello world" is no SES event: kept as a dead letter.
        assert_eq!(
            deliver(&app, &relayed).await,
            receipt_json(0, 0, 0, 1),
            "{name}"
        );
    }
    assert_eq!(stored(&app).await, [0, 0, 2]);
}

/// Every documented SES example (awsdocs/amazon-ses-developer-guide), as the
/// `Message` of an SNS notification signed by the test key, moves the right
/// counters of a campaign holding its message.
#[actix_web::test]
async fn aws_documented_ses_examples_move_the_right_counters() {
    let dir = vectors_dir("ses");
    let signer = Signer::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 15, "{files:?}");

    for (index, file) in files.iter().enumerate() {
        let name = file_name(file);
        let text = std::fs::read_to_string(file).unwrap();
        let example: Value = serde_json::from_str(&text).unwrap();
        let event = example
            .get("eventType")
            .or_else(|| example.get("notificationType"))
            .and_then(Value::as_str)
            .unwrap();
        let mail_id = example["mail"]["messageId"].as_str().unwrap();
        // The examples share message ids: a fresh hub for each.
        let app = spawn_ses_app(&signer, |_| {}).await;
        register_email(&app, "c1", &[mail_id]).await;

        let version = if index % 2 == 0 { "1" } else { "2" };
        let receipt = deliver(&app, &signer.sign(notification(&text), version)).await;
        assert_eq!(receipt, receipt_json(1, 0, 0, 0), "{name}");

        let metrics = app.metrics("c1").await;
        assert_eq!(counts_only(&metrics), expected_counts([event]), "{name}");
        assert_eq!(counts_only(&metrics), app.sql_counts("c1").await, "{name}");
        let message = app.message("email", mail_id).await;
        assert_eq!(message["status"], expected_after(event).1, "{name}");
        assert_eq!(message["timeline"][0]["event"], event, "{name}");
        if expected_after(event).1 == "failed" {
            assert!(message["error"]["code"].is_string(), "{name}: {message}");
        }
    }
}
