//! Subscriptions, the shared secret and certificate downloads.

use std::sync::atomic::Ordering;

use secrecy::SecretString;
use serde_json::Value;

use super::harness::*;
use crate::helpers::*;

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
        assert_eq!(
            app.scrape("statushub_sns_certificate_failures_total").await,
            (attempt + 1) as f64,
            "each failed load is counted, for the alert"
        );
    }
    assert_eq!(app.message("email", "e-1").await["status"], "pending");

    stand_in.answer(CertAnswer::Serve);
    assert_eq!(deliver(&app, &envelope).await, receipt_json(1, 0, 0, 0));
    assert_eq!(stand_in.requests().len(), 4);
    assert_eq!(app.message("email", "e-1").await["status"], "delivered");
    assert_eq!(
        app.scrape("statushub_sns_certificate_failures_total").await,
        3.0
    );
    let metrics = app.metrics("c1").await;
    assert_eq!(counts_only(&metrics), expected_counts(["Delivery"]));
    assert_eq!(counts_only(&metrics), app.sql_counts("c1").await);
}
