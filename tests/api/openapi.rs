//! `GET /api/v1/openapi.json` over real HTTP: open, OpenAPI 3.1, and every
//! operation it lists reaches a handler of the running server (the source
//! side, that every registered route is listed, is the unit test
//! `openapi::tests::every_registered_route_is_documented`). And every
//! error answer is the documented `{"error": …}`, including the router's
//! 404 and 405 and the extractors' refusals. schemathesis checks the rest
//! of the contract (scripts/schemathesis).

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{ADMIN_TOKEN, spawn_app, spawn_app_with};

/// Fills a documented path's `{parameters}` with sample values.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment {
            "{channel}" => "whatsapp",
            "{id}" => "1",
            segment if segment.starts_with('{') => "sample",
            segment => segment,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Tells whether an answer is the router's: no route took the request.
async fn from_router(response: reqwest::Response) -> Option<String> {
    let status = response.status().as_u16();
    if status != 404 && status != 405 {
        return None;
    }
    let body: Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap().to_owned();
    (error == "not found" || error == "method not allowed").then_some(error)
}

#[actix_web::test]
async fn the_document_is_open_and_every_operation_reaches_a_handler() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the document needs no token");
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 18, "{:?}", paths.keys());

    let mut operations = 0;
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let Ok(method) = Method::from_bytes(method.to_uppercase().as_bytes()) else {
                continue;
            };
            operations += 1;
            let mut request = app
                .client
                .request(method.clone(), app.url(&concrete(path)))
                .bearer_auth(ADMIN_TOKEN)
                .timeout(Duration::from_secs(10));
            if method == Method::POST {
                request = request
                    .header("content-type", "application/json")
                    .body("{}");
            }
            let response = request.send().await.unwrap();
            let streaming = response
                .headers()
                .get("content-type")
                .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
            // A stream's answer is in once its head is: drop it.
            if streaming {
                assert_eq!(response.status(), 200, "{method} {path}");
                continue;
            }
            if let Some(error) = from_router(response).await {
                panic!("{method} {path} is documented but no route took it: {error}");
            }
        }
    }
    assert!(operations >= 18, "{operations}");
}

#[actix_web::test]
async fn every_error_answer_is_an_error_body() {
    let app = spawn_app_with(|settings| settings.body_limit = 1024).await;
    let admin = |request: reqwest::RequestBuilder| request.bearer_auth(ADMIN_TOKEN);
    let cases = [
        // No route: the router's 404.
        (admin(app.client.get(app.url("/nowhere"))), 404, "not found"),
        // A documented path under another method: 405 with Allow.
        (
            admin(app.client.delete(app.url("/webhooks/whatsapp"))),
            405,
            "method not allowed",
        ),
        (
            app.client.post(app.url("/healthz")),
            405,
            "method not allowed",
        ),
        // A resource's own 405.
        (
            admin(app.client.get(app.url("/api/v1/messages"))),
            405,
            "method not allowed",
        ),
        // A path parameter that is not an integer.
        (
            admin(app.client.get(app.url("/webhooks/dead-letters/abc"))),
            404,
            "can not parse",
        ),
        // A query that does not parse.
        (
            admin(app.client.get(app.url("/webhooks/events?limit=-1"))),
            400,
            "Query deserialize error",
        ),
        // A body over the limit.
        (
            app.client
                .post(app.url("/webhooks/whatsapp"))
                .header("x-hub-signature-256", "sha256=00")
                .body(vec![b' '; 4096]),
            413,
            "limit",
        ),
        // A handler's own error, untouched.
        (
            app.client.get(app.url("/metrics")),
            401,
            "missing bearer token",
        ),
    ];
    for (request, status, error) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{error}");
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "application/json",
            "{error}"
        );
        if status == 405 {
            assert!(response.headers().contains_key("allow"), "{error}");
        }
        // The request-id middleware wraps the JSON-error one: both apply.
        let id = response.headers()["x-request-id"].to_str().unwrap();
        assert_eq!(id.len(), 32, "{error}: generated id {id:?}");
        let body: Value = response.json().await.unwrap();
        let text = body["error"].as_str().unwrap();
        assert!(text.contains(error), "{text:?} should say {error:?}");
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    }

    let allow = app
        .client
        .put(app.url("/webhooks/whatsapp"))
        .send()
        .await
        .unwrap();
    assert_eq!(allow.headers()["allow"], "GET, POST");
    let allow = app
        .client
        .put(app.url("/api/v1/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(allow.headers()["allow"], "POST");
}
