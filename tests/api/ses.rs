//! AWS SES events through SNS, end to end over HTTP: real RSA signatures
//! (by the crate's SNS signer, whose self-signed certificate is served from a
//! temporary `SNS_CERT_DIR`), AWS's genuine signed notifications and
//! documented SES examples from `../shared/vectors/`, topics, subscription
//! confirmation against a local stand-in, and the shared secret.

mod harness;

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::*;
use harness::*;

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

#[actix_web::test]
async fn every_ses_event_type_in_both_forms_moves_the_right_counters() {
    let signer = Signer::new();
    let app = spawn_ses_app(&signer, |_| {}).await;
    let mut cases = Vec::new();
    for form in ["eventType", "notificationType"] {
        for (name, _, _) in SES_EVENTS {
            cases.push((form, name, format!("{form}-{}", name.replace(' ', "-"))));
        }
    }
    let ids: Vec<&str> = cases.iter().map(|(_, _, id)| id.as_str()).collect();
    register_email(&app, "c1", &ids).await;

    for (index, (form, name, id)) in cases.iter().enumerate() {
        let version = if index % 2 == 0 { "2" } else { "1" };
        let envelope = signer.sign(notification(&ses_event(form, name, id)), version);
        let receipt = deliver(&app, &envelope).await;
        assert_eq!(receipt, receipt_json(1, 0, 0, 0), "{form} {name}");

        let message = app.message("email", id).await;
        let (seen, current) = expected_after(name);
        assert_eq!(message["status"], current, "{form} {name}");
        let mut seen_now: Vec<&str> = message["seen"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["status"].as_str().unwrap())
            .collect();
        seen_now.sort_unstable();
        let mut seen = seen.to_vec();
        seen.sort_unstable();
        assert_eq!(seen_now, seen, "{form} {name}");
        assert_eq!(message["timeline"][0]["event"], *name, "{form} {name}");
    }

    let bounce = app.message("email", "notificationType-Bounce").await;
    assert_eq!(
        bounce["error"],
        json!({"code": "Permanent/General", "title": "smtp; 550 5.1.1 user unknown"})
    );
    let metrics = app.metrics("c1").await;
    let all = cases.iter().map(|(_, name, _)| *name);
    assert_eq!(counts_only(&metrics), expected_counts(all));
    assert_eq!(counts_only(&metrics), app.sql_counts("c1").await);
}

#[actix_web::test]
async fn a_redelivered_sns_message_changes_nothing() {
    let signer = Signer::new();
    let app = spawn_ses_app(&signer, |_| {}).await;
    register_email(&app, "c1", &["e-1"]).await;
    let envelope = signer.sign(notification(&ses_event("eventType", "Open", "e-1")), "2");

    assert_eq!(deliver(&app, &envelope).await, receipt_json(1, 0, 0, 0));
    let before = app.metrics("c1").await;
    let rows = stored(&app).await;

    for _ in 0..2 {
        assert_eq!(deliver(&app, &envelope).await, receipt_json(0, 1, 0, 0));
    }
    assert_eq!(app.metrics("c1").await, before);
    assert_eq!(stored(&app).await, rows);
    assert_eq!(
        app.message("email", "e-1").await["timeline"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[actix_web::test]
async fn an_open_before_the_delivery_ends_like_the_reverse_order() {
    let signer = Signer::new();
    let app = spawn_ses_app(&signer, |_| {}).await;
    register_email(&app, "in-order", &["e-1"]).await;
    register_email(&app, "reversed", &["e-2"]).await;

    for (id, order) in [("e-1", ["Delivery", "Open"]), ("e-2", ["Open", "Delivery"])] {
        for name in order {
            let envelope = signer.sign(notification(&ses_event("eventType", name, id)), "1");
            assert_eq!(deliver(&app, &envelope).await, receipt_json(1, 0, 0, 0));
        }
    }

    let (in_order, reversed) = (
        app.message("email", "e-1").await,
        app.message("email", "e-2").await,
    );
    assert_eq!(in_order["status"], "read");
    for key in ["status", "seen", "error"] {
        assert_eq!(in_order[key], reversed[key], "{key}");
    }
    let expected = expected_counts(["Open"]);
    for campaign in ["in-order", "reversed"] {
        let metrics = app.metrics(campaign).await;
        assert_eq!(counts_only(&metrics), expected, "{campaign}");
        assert_eq!(
            counts_only(&metrics),
            app.sql_counts(campaign).await,
            "{campaign}"
        );
    }
}

#[actix_web::test]
async fn events_for_unknown_messages_wait_for_their_registration() {
    let signer = Signer::new();
    let app = spawn_ses_app(&signer, |_| {}).await;
    let envelope = signer.sign(notification(&ses_event("eventType", "Click", "late")), "2");

    assert_eq!(deliver(&app, &envelope).await, receipt_json(0, 0, 1, 0));
    register_email(&app, "c1", &["late"]).await;

    let metrics = app.metrics("c1").await;
    assert_eq!(counts_only(&metrics), expected_counts(["Click"]));
    assert_eq!(counts_only(&metrics), app.sql_counts("c1").await);
}

#[actix_web::test]
async fn subscriptions_are_confirmed_for_accepted_topics_only() {
    let signer = Signer::new();
    let stand_in = StandIn::start().await;
    let base = stand_in.base.clone();
    let app = spawn_ses_app(&signer, |settings| {
        settings.sns_topic_arns = vec![TOPIC.to_owned()];
        settings.sns_subscribe_override = Some(base);
    })
    .await;
    register_email(&app, "c1", &["e-1", "e-2"]).await;

    // An accepted topic: confirmed by a GET of SubscribeURL (at the stand-in).
    let accepted = signer.sign(
        confirmation("SubscriptionConfirmation", TOPIC, "tok-1"),
        "1",
    );
    let response = post_sns(&app, &accepted).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        stand_in.requests(),
        [format!(
            "GET /?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=tok-1 HTTP/1.1"
        )]
    );
    let health = health_subscriptions(&app).await;
    assert_eq!(health.len(), 1);
    assert_eq!(health[0]["outcome"], "confirmed");
    assert_eq!(health[0]["topic_arn"], TOPIC);
    assert_eq!(health[0]["subscription_arn"], SUBSCRIPTION_ARN);

    // Another topic, however well signed: 403, nothing fetched or stored.
    for envelope in [
        confirmation("SubscriptionConfirmation", OTHER_TOPIC, "tok-2"),
        confirmation("UnsubscribeConfirmation", OTHER_TOPIC, "tok-2"),
        notification_of(OTHER_TOPIC, &ses_event("eventType", "Delivery", "e-1")),
    ] {
        let response = post_sns(&app, &signer.sign(envelope.clone(), "2")).await;
        assert_eq!(response.status(), 403, "{envelope}");
    }
    assert_eq!(stand_in.requests().len(), 1);
    assert_eq!(health_subscriptions(&app).await.len(), 1);
    assert_eq!(stored(&app).await, [0, 0, 0]);

    // A signed SubscribeURL off the SNS hosts is not followed, override or not.
    let mut elsewhere = confirmation("SubscriptionConfirmation", TOPIC, "tok-3");
    elsewhere["SubscribeURL"] =
        "https://evil.example/?Action=ConfirmSubscription&Token=tok-3".into();
    assert_eq!(
        post_sns(&app, &signer.sign(elsewhere, "2")).await.status(),
        400
    );
    assert_eq!(stand_in.requests().len(), 1);

    // The accepted topic's notifications go through.
    let delivery = signer.sign(
        notification(&ses_event("eventType", "Delivery", "e-2")),
        "2",
    );
    assert_eq!(deliver(&app, &delivery).await, receipt_json(1, 0, 0, 0));

    // SNS refusing the confirmation: 502 so SNS retries, and health says so.
    stand_in.status.store(500, Ordering::SeqCst);
    let refused = signer.sign(
        confirmation("SubscriptionConfirmation", TOPIC, "tok-4"),
        "2",
    );
    let response = post_sns(&app, &refused).await;
    assert_eq!(response.status(), 502);
    assert_eq!(stand_in.requests().len(), 2);
    let health = health_subscriptions(&app).await;
    assert_eq!(health[0]["outcome"], "failed");
    assert_eq!(health[0]["error"], "sns answered http 500");
}

/// With `SNS_TOPIC_ARNS` empty (the default), any AWS account could
/// subscribe the hub to its own topic and publish genuine, signed SES events:
/// so nothing is confirmed by itself. The confirmation waits, visible in
/// `/webhooks/health`, until the admin confirms it with one call.
#[actix_web::test]
async fn without_a_topic_list_confirmations_wait_for_the_admin() {
    let signer = Signer::new();
    let stand_in = StandIn::start().await;
    let base = stand_in.base.clone();
    let app = spawn_ses_app(&signer, |settings| {
        settings.sns_subscribe_override = Some(base);
    })
    .await;
    let pending = || async {
        let health: Value = app
            .get("/webhooks/health", ADMIN_TOKEN)
            .await
            .json()
            .await
            .unwrap();
        health["sns_pending_confirmations"]
            .as_array()
            .unwrap()
            .clone()
    };
    let confirm = |id: String, token: String| {
        let request = app
            .client
            .post(app.url(&format!("/webhooks/sns/confirmations/{id}")))
            .bearer_auth(token);
        async move { request.send().await.unwrap() }
    };

    // Signed and well formed, yet held: nothing is fetched.
    let envelope = signer.sign(
        confirmation("SubscriptionConfirmation", OTHER_TOPIC, "tok-9"),
        "2",
    );
    let response = post_sns(&app, &envelope).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["held"], true);
    assert!(
        stand_in.requests().is_empty(),
        "nothing confirmed by itself"
    );
    let held = pending().await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["topic_arn"], OTHER_TOPIC);
    assert_eq!(
        held[0]["subscribe_url"],
        subscribe_url(OTHER_TOPIC, "tok-9")
    );
    assert!(held[0]["received_at"].as_str().unwrap().ends_with('Z'));
    let id = held[0]["id"].to_string();

    // Only the admin may confirm; an unknown id is a 404.
    let tenant = app.tenant_token("t1", None);
    assert_eq!(confirm(id.clone(), tenant).await.status(), 403);
    assert_eq!(
        confirm("999".to_owned(), ADMIN_TOKEN.to_owned())
            .await
            .status(),
        404
    );
    assert!(stand_in.requests().is_empty());

    // SNS refusing: 502, and it stays held for another try.
    stand_in.status.store(500, Ordering::SeqCst);
    assert_eq!(
        confirm(id.clone(), ADMIN_TOKEN.to_owned()).await.status(),
        502
    );
    assert_eq!(pending().await.len(), 1);

    // The admin confirms with one call: one GET of the SubscribeURL.
    stand_in.status.store(200, Ordering::SeqCst);
    let response = confirm(id, ADMIN_TOKEN.to_owned()).await;
    assert_eq!(response.status(), 200);
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["outcome"], "confirmed");
    assert_eq!(outcome["subscription_arn"], SUBSCRIPTION_ARN);
    let expected =
        format!("GET /?Action=ConfirmSubscription&TopicArn={OTHER_TOPIC}&Token=tok-9 HTTP/1.1");
    assert_eq!(stand_in.requests(), [expected.clone(), expected]);
    assert!(pending().await.is_empty());
    assert_eq!(health_subscriptions(&app).await[0]["outcome"], "confirmed");
}

#[actix_web::test]
async fn the_shared_secret_is_required_when_set() {
    let signer = Signer::new();
    let app = spawn_ses_app(&signer, |settings| {
        settings.ses_webhook_secret = Some(SecretString::from("s3cret"));
    })
    .await;
    register_email(&app, "c1", &["e-1", "e-2"]).await;
    let first = signer.sign(notification(&ses_event("eventType", "Send", "e-1")), "2");

    let path = "/webhooks/email";
    let refused = [
        post_sns(&app, &first).await,
        post_sns_with(&app, path, &first, |r| r.basic_auth("sns", Some("wrong"))).await,
        post_sns_with(&app, path, &first, |r| r.basic_auth("s3cret", None::<&str>)).await,
        post_sns_with(&app, path, &first, |r| r.bearer_auth("s3cret")).await,
        post_sns_with(&app, "/webhooks/email?token=wrong", &first, |r| r).await,
        post_sns_with(&app, "/webhooks/email?token=", &first, |r| r).await,
    ];
    for (index, response) in refused.into_iter().enumerate() {
        assert_eq!(response.status(), 401, "case {index}");
    }
    assert_eq!(stored(&app).await, [0, 0, 0]);

    // The secret is checked in addition to the signature.
    let mut forged = first.clone();
    forged["Message"] = ses_event("eventType", "Send", "e-2").into();
    let response =
        post_sns_with(&app, path, &forged, |r| r.basic_auth("sns", Some("s3cret"))).await;
    assert_eq!(response.status(), 401);

    let response = post_sns_with(&app, path, &first, |r| r.basic_auth("sns", Some("s3cret"))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        receipt_json(1, 0, 0, 0)
    );
    let second = signer.sign(notification(&ses_event("eventType", "Send", "e-2")), "1");
    let response = post_sns_with(&app, "/webhooks/email?token=s3cret", &second, |r| r).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        receipt_json(1, 0, 0, 0)
    );
}

#[actix_web::test]
async fn unparseable_or_inconsistent_unsigned_input_is_a_bad_request() {
    let signer = Signer::new();
    let app = spawn_ses_app(&signer, |_| {}).await;
    let send = |body: &'static str, kind: Option<&'static str>| {
        let mut request = app
            .client
            .post(app.url("/webhooks/email"))
            .header("content-type", "text/plain; charset=UTF-8")
            .body(body);
        if let Some(kind) = kind {
            request = request.header("x-amz-sns-message-type", kind);
        }
        request.send()
    };
    let cases = [
        ("", Some("Notification")),
        ("not json", Some("Notification")),
        ("[]", Some("Notification")),
        (r#"{"Type":"Notification"}"#, Some("Notification")),
        (
            r#"{"Type":"Other","MessageId":"m","TopicArn":"t","Message":"x","Timestamp":"z"}"#,
            Some("Other"),
        ),
    ];
    for (body, kind) in cases {
        assert_eq!(send(body, kind).await.unwrap().status(), 400, "{body}");
    }

    // The header must repeat the body's Type.
    let signed = signer.sign(notification(&ses_event("eventType", "Send", "e-1")), "2");
    for kind in [None, Some("SubscriptionConfirmation"), Some("notification")] {
        let mut request = app
            .client
            .post(app.url("/webhooks/email"))
            .body(signed.to_string());
        if let Some(kind) = kind {
            request = request.header("x-amz-sns-message-type", kind);
        }
        assert_eq!(request.send().await.unwrap().status(), 400, "{kind:?}");
    }
    assert_eq!(stored(&app).await, [0, 0, 0]);

    // Any Content-Type is accepted (SNS may be configured to send JSON).
    for content_type in [Some("application/json"), None] {
        let envelope = signer.sign(notification(&ses_event("eventType", "Send", "e-1")), "1");
        let mut request = app
            .client
            .post(app.url("/webhooks/email"))
            .header("x-amz-sns-message-type", "Notification")
            .body(envelope.to_string());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{content_type:?}");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            receipt_json(0, 0, 1, 0)
        );
    }
}

#[actix_web::test]
async fn signed_but_uninterpretable_messages_are_dead_lettered_and_ses_setup_notices_acknowledged()
{
    let signer = Signer::new();
    let app = spawn_ses_app(&signer, |_| {}).await;

    let unknown =
        r#"{"eventType":"Teleport","mail":{"messageId":"e-1","timestamp":"2024-05-01T12:00:00Z"}}"#;
    let receipt = deliver(&app, &signer.sign(notification(unknown), "2")).await;
    assert_eq!(receipt, receipt_json(0, 0, 0, 1));
    assert_eq!(stored(&app).await, [0, 0, 1]);
    let letters: Value = app
        .get("/webhooks/dead-letters?limit=10", ADMIN_TOKEN)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(letters[0]["channel"], "email");
    assert!(
        letters[0]["reason"].as_str().unwrap().contains("Teleport"),
        "{letters}"
    );
    assert!(
        letters[0]["body"].as_str().unwrap().contains("Teleport"),
        "{letters}"
    );

    // What SES publishes about its own set-up is acknowledged, not kept.
    for notice in [
        "Successfully validated SNS topic for Amazon SES event publishing.".to_owned(),
        json!({"notificationType": "AmazonSnsSubscriptionSucceeded",
               "message": format!("You have successfully subscribed your Amazon SNS topic '{TOPIC}' to receive 'Bounce' notifications from Amazon SES for identity 'example.com'.")})
        .to_string(),
    ] {
        let receipt = deliver(&app, &signer.sign(notification(&notice), "1")).await;
        assert_eq!(receipt["received"], 0, "{notice}");
        assert_eq!(receipt["dead_lettered"], 0, "{notice}");
    }
    assert_eq!(stored(&app).await, [0, 0, 1]);
}

#[actix_web::test]
async fn without_verification_unsigned_envelopes_are_accepted_but_junk_is_not_kept() {
    let app = spawn_app_with(|settings| settings.enable_webhook_verification = false).await;
    register_email(&app, "c1", &["e-1"]).await;

    let unsigned = notification(&ses_event("notificationType", "Delivery", "e-1"));
    assert_eq!(deliver(&app, &unsigned).await, receipt_json(1, 0, 0, 0));
    assert_eq!(
        post_sns(&app, &notification("Hello world")).await.status(),
        400
    );
    assert_eq!(stored(&app).await, [1, 0, 0]);
}

/// A notification whose certificate is not in the cert dir is verified with
/// the certificate downloaded from its (stand-in) SNS host, once: later
/// messages, of either version and however the URL is spelled, use the
/// cached key. The host check applies to the original `SigningCertURL`: a
/// certificate named off the SNS hosts is never fetched, override or not.
#[actix_web::test]
async fn a_certificate_not_in_the_cert_dir_is_downloaded_once() {
    let signer = Signer::new();
    let stand_in = CertStandIn::start().await;
    let base = stand_in.base.clone();
    let app = spawn_ses_app(&signer, |settings| {
        settings.sns_cert_download_override = Some(base);
    })
    .await;
    register_email(&app, "c1", &["e-1", "e-2", "e-3"]).await;

    let send = signer.sign(notification(&ses_event("eventType", "Send", "e-1")), "2");
    for url in [
        format!("https://evil.example/{DOWNLOAD_CERT_NAME}"),
        format!("http://{SNS_HOST}/{DOWNLOAD_CERT_NAME}"),
        format!("https://{SNS_HOST}.evil.example/{DOWNLOAD_CERT_NAME}"),
        format!("https://{SNS_HOST}:8443/{DOWNLOAD_CERT_NAME}"),
    ] {
        let forged = naming_certificate(send.clone(), &url);
        assert_eq!(post_sns(&app, &forged).await.status(), 401, "{url}");
    }
    assert!(stand_in.requests().is_empty(), "nothing fetched");
    assert_eq!(stored(&app).await, [0, 0, 0]);

    let first = naming_certificate(send, &download_cert_url());
    assert_eq!(deliver(&app, &first).await, receipt_json(1, 0, 0, 0));
    assert_eq!(
        stand_in.requests(),
        [format!("GET /{DOWNLOAD_CERT_NAME} HTTP/1.1")]
    );

    let upper = format!("https://{}/{DOWNLOAD_CERT_NAME}", SNS_HOST.to_uppercase());
    for (id, version, url) in [("e-2", "1", download_cert_url()), ("e-3", "2", upper)] {
        let envelope = signer.sign(
            notification(&ses_event("eventType", "Delivery", id)),
            version,
        );
        let envelope = naming_certificate(envelope, &url);
        assert_eq!(deliver(&app, &envelope).await, receipt_json(1, 0, 0, 0));
    }
    assert_eq!(stand_in.requests().len(), 1, "downloaded once");
    assert_eq!(app.message("email", "e-3").await["status"], "delivered");
}

/// A certificate host answering 500, or closing the connection: 503 with
/// `Retry-After` (SNS retries), nothing stored. The failure is not cached:
/// the retried message downloads again and, once the host serves the
/// certificate, is applied.
#[actix_web::test]
async fn an_unavailable_certificate_gives_503_and_a_later_download_succeeds() {
    let signer = Signer::new();
    let stand_in = CertStandIn::start().await;
    let base = stand_in.base.clone();
    let app = spawn_ses_app(&signer, |settings| {
        settings.sns_cert_download_override = Some(base);
    })
    .await;
    register_email(&app, "c1", &["e-1"]).await;
    let envelope = naming_certificate(
        signer.sign(
            notification(&ses_event("eventType", "Delivery", "e-1")),
            "2",
        ),
        &download_cert_url(),
    );

    for (attempt, answer) in [CertAnswer::Fail, CertAnswer::Close, CertAnswer::Fail]
        .into_iter()
        .enumerate()
    {
        stand_in.answer(answer);
        let response = post_sns(&app, &envelope).await;
        assert_eq!(response.status(), 503, "{answer:?}");
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().unwrap().parse::<u64>().unwrap());
        assert!(retry_after.is_some_and(|secs| secs > 0), "{answer:?}");
        assert_eq!(stored(&app).await, [0, 0, 0], "{answer:?}");
        assert_eq!(stand_in.requests().len(), attempt + 1, "not cached");
    }
    assert_eq!(app.message("email", "e-1").await["status"], "pending");

    stand_in.answer(CertAnswer::Serve);
    assert_eq!(deliver(&app, &envelope).await, receipt_json(1, 0, 0, 0));
    assert_eq!(stand_in.requests().len(), 4);
    assert_eq!(app.message("email", "e-1").await["status"], "delivered");
    let metrics = app.metrics("c1").await;
    assert_eq!(counts_only(&metrics), expected_counts(["Delivery"]));
    assert_eq!(counts_only(&metrics), app.sql_counts("c1").await);
}
