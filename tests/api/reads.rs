//! The read side (issue 11): `GET /api/v1/campaigns` and
//! `GET /api/v1/campaigns/{id}/messages`, over HTTP on both backends.
//!
//! - scoping: another tenant sees nothing of a tenant's campaigns;
//! - paging while webhooks and registrations keep writing: no duplicates,
//!   and no gaps among what did not change;
//! - every filter, against an expectation computed from the single-message
//!   endpoint (another code path);
//! - the NDJSON and CSV exports, parsed back;
//! - the query plans (index ranges, never a full scan of `messages`);
//! - an export cut by a store failure ends the body with an error;
//! - the real binary exports far more than it holds in memory.

mod export_memory;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// `GET path` as `token`; returns the status and the JSON body (`Null`
/// when the body is not JSON).
async fn get_json(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    let response = app.get(path, token).await;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Follows `next_cursor` from the first page of `path` (which has a query
/// string) to the end; returns every item of `key`, in order, and the
/// number of pages.
async fn all_pages(app: &TestApp, path: &str, token: &str, key: &str) -> (Vec<Value>, usize) {
    all_pages_pausing(app, path, token, key, Duration::ZERO).await
}

/// [`all_pages`], pausing between pages (for writes to happen meanwhile).
async fn all_pages_pausing(
    app: &TestApp,
    path: &str,
    token: &str,
    key: &str,
    pause: Duration,
) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(cursor) => format!("{path}&cursor={cursor}"),
            None => path.to_owned(),
        };
        let (status, body) = get_json(app, &url, token).await;
        assert_eq!(status, 200, "{url}: {body}");
        pages += 1;
        items.extend(body[key].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (items, pages),
        }
        assert!(pages < 10_000, "{path}: paging does not end");
        tokio::time::sleep(pause).await;
    }
}

fn campaign_names(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|item| {
            format!(
                "{}/{}",
                item["tenant_id"].as_str().unwrap(),
                item["campaign_id"].as_str().unwrap()
            )
        })
        .collect()
}

fn message_ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|item| item["provider_message_id"].as_str().unwrap().to_owned())
        .collect()
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

#[actix_web::test]
async fn campaigns_are_the_callers_newest_activity_first_and_paged() {
    let app = spawn_app().await;
    for campaign in ["a1", "a2", "a3", "a4", "a5"] {
        app.register_whatsapp("t-a", campaign, &[&format!("wamid.{campaign}")])
            .await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for campaign in ["b1", "b2"] {
        app.register_whatsapp("t-b", campaign, &[&format!("wamid.{campaign}")])
            .await;
    }
    tokio::time::sleep(Duration::from_millis(3)).await;
    // a2 becomes the most recently active campaign.
    app.send_statuses(&[("wamid.a2", "delivered", 1_700_000_000)])
        .await;

    // The admin sees every tenant's, newest activity first.
    let (status, all) = get_json(&app, "/api/v1/campaigns", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{all}");
    let listed = all["campaigns"].as_array().unwrap();
    assert_eq!(listed.len(), 7);
    assert_eq!(campaign_names(listed)[0], "t-a/a2");
    let activity: Vec<&str> = listed
        .iter()
        .map(|item| item["updated_at"].as_str().unwrap())
        .collect();
    assert!(
        activity.windows(2).all(|pair| pair[0] >= pair[1]),
        "{activity:?}"
    );
    assert!(all["next_cursor"].is_null());
    // Each item is the metrics JSON plus the creation time.
    let a2 = &listed[0];
    assert_eq!(a2["total"], 1);
    assert_eq!(a2["delivered"], 1);
    assert_eq!(a2["by_status"]["delivered"], 1);
    assert!(a2["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(a2["version"].as_i64().unwrap() >= 2);

    // The admin's tenant filter.
    let (_, only_b) = get_json(&app, "/api/v1/campaigns?tenant_id=t-b", ADMIN_TOKEN).await;
    assert_eq!(
        sorted(campaign_names(only_b["campaigns"].as_array().unwrap())),
        ["t-b/b1", "t-b/b2"]
    );

    // A tenant sees its own only; another tenant's filter is refused.
    let token_a = app.tenant_token("t-a", None);
    let (_, mine) = get_json(&app, "/api/v1/campaigns", &token_a).await;
    assert_eq!(
        sorted(campaign_names(mine["campaigns"].as_array().unwrap())),
        ["t-a/a1", "t-a/a2", "t-a/a3", "t-a/a4", "t-a/a5"]
    );
    let (status, _) = get_json(&app, "/api/v1/campaigns?tenant_id=t-b", &token_a).await;
    assert_eq!(status, 403);
    let (status, same) = get_json(&app, "/api/v1/campaigns?tenant_id=t-a", &token_a).await;
    assert_eq!(status, 200);
    assert_eq!(same["campaigns"], mine["campaigns"]);
    let token_b = app.tenant_token("t-b", None);
    let (_, theirs) = get_json(&app, "/api/v1/campaigns", &token_b).await;
    assert_eq!(theirs["campaigns"].as_array().unwrap().len(), 2);
    let nobody = app.tenant_token("t-nobody", None);
    let (_, empty) = get_json(&app, "/api/v1/campaigns", &nobody).await;
    assert_eq!(empty, json!({"campaigns": [], "next_cursor": null}));
    // A token restricted to campaigns lists those only.
    let restricted = app.tenant_token("t-a", Some(vec!["a1".into(), "a3".into()]));
    let (_, few) = get_json(&app, "/api/v1/campaigns", &restricted).await;
    assert_eq!(
        sorted(campaign_names(few["campaigns"].as_array().unwrap())),
        ["t-a/a1", "t-a/a3"]
    );

    // Pages of two give the same list, in the same order.
    let (paged, pages) = all_pages(&app, "/api/v1/campaigns?limit=2", &token_a, "campaigns").await;
    assert_eq!(pages, 3);
    assert_eq!(
        campaign_names(&paged),
        campaign_names(mine["campaigns"].as_array().unwrap())
    );

    // Bad input is a 400 that says why.
    for (path, needle) in [
        ("/api/v1/campaigns?limit=0", "limit"),
        ("/api/v1/campaigns?limit=x", "limit"),
        ("/api/v1/campaigns?cursor=nope", "cursor"),
        ("/api/v1/campaigns?page=2", "unknown parameter"),
        ("/api/v1/campaigns?limit=1&limit=2", "once"),
    ] {
        let (status, body) = get_json(&app, path, ADMIN_TOKEN).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{path}: {body}"
        );
    }
    // A limit above the cap is lowered to it.
    let (status, _) = get_json(&app, "/api/v1/campaigns?limit=100000", ADMIN_TOKEN).await;
    assert_eq!(status, 200);
    // No token, no list.
    let response = app
        .client
        .get(app.url("/api/v1/campaigns"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

/// Registers a new message in a campaign every few milliseconds (each one
/// is activity) until `stop`; returns how many it registered.
fn keep_registering(
    app: &TestApp,
    tenant: &'static str,
    campaigns: Vec<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    let client = app.client.clone();
    let url = app.url("/api/v1/messages");
    tokio::spawn(async move {
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            let campaign = &campaigns[(sent * 7) % campaigns.len()];
            let body = json!([{"tenant_id": tenant, "campaign_id": campaign, "channel": "whatsapp",
                               "provider_message_id": format!("wamid.more.{sent}")}]);
            let response = client
                .post(&url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            sent += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sent
    })
}

#[actix_web::test]
async fn campaign_pages_have_no_duplicates_and_no_gaps_while_activity_changes() {
    let app = spawn_app().await;
    let campaigns: Vec<String> = (0..30).map(|i| format!("c{i:02}")).collect();
    for campaign in &campaigns {
        app.register_whatsapp("t", campaign, &[&format!("wamid.{campaign}")])
            .await;
    }
    let (_, before) = get_json(&app, "/api/v1/campaigns?limit=500", ADMIN_TOKEN).await;
    let before: HashMap<String, Value> = before["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["campaign_id"].as_str().unwrap().to_owned(),
                item["updated_at"].clone(),
            )
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = keep_registering(&app, "t", campaigns.clone(), stop.clone());
    let mut seen: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/api/v1/campaigns?limit=3&cursor={cursor}"),
            None => "/api/v1/campaigns?limit=3".to_owned(),
        };
        let (status, body) = get_json(&app, &path, ADMIN_TOKEN).await;
        assert_eq!(status, 200, "{body}");
        seen.extend(body["campaigns"].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    let (_, after) = get_json(&app, "/api/v1/campaigns?limit=500", ADMIN_TOKEN).await;
    let after: HashMap<String, Value> = after["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["campaign_id"].as_str().unwrap().to_owned(),
                item["updated_at"].clone(),
            )
        })
        .collect();
    let names: Vec<String> = seen
        .iter()
        .map(|item| item["campaign_id"].as_str().unwrap().to_owned())
        .collect();
    let unique: BTreeSet<&String> = names.iter().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "a campaign was listed twice: {names:?}"
    );
    let unchanged: Vec<&String> = campaigns
        .iter()
        .filter(|campaign| before[*campaign] == after[*campaign])
        .collect();
    let changed = campaigns.len() - unchanged.len();
    assert!(changed > 0, "no campaign changed while paging");
    for campaign in unchanged {
        assert!(
            unique.contains(campaign),
            "{campaign} did not change but was not listed"
        );
    }
    // The order held across pages: activity never rises from one item to the next.
    let activity: Vec<&str> = seen
        .iter()
        .map(|item| item["updated_at"].as_str().unwrap())
        .collect();
    assert!(
        activity.windows(2).all(|pair| pair[0] >= pair[1]),
        "{activity:?}"
    );
}

#[actix_web::test]
async fn messages_are_scoped_to_the_campaigns_tenant() {
    let app = spawn_app().await;
    app.register_whatsapp("t-a", "shared-name", &["wamid.a"])
        .await;
    app.register_whatsapp("t-b", "other", &["wamid.b"]).await;
    let token_a = app.tenant_token("t-a", None);
    let token_b = app.tenant_token("t-b", None);

    let (status, body) = get_json(&app, "/api/v1/campaigns/shared-name/messages", &token_a).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        message_ids(body["messages"].as_array().unwrap()),
        ["wamid.a"]
    );
    // Another tenant: the campaign does not exist for it.
    let (status, _) = get_json(&app, "/api/v1/campaigns/shared-name/messages", &token_b).await;
    assert_eq!(status, 404);
    // Nor through an export.
    let response = app
        .client
        .get(app.url("/api/v1/campaigns/shared-name/messages"))
        .bearer_auth(&token_b)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let (status, _) = get_json(
        &app,
        "/api/v1/campaigns/shared-name/messages?tenant_id=t-a",
        &token_b,
    )
    .await;
    assert_eq!(status, 403);
    let restricted = app.tenant_token("t-a", Some(vec!["elsewhere".into()]));
    let (status, _) = get_json(&app, "/api/v1/campaigns/shared-name/messages", &restricted).await;
    assert_eq!(status, 403);
    let (status, body) = get_json(
        &app,
        "/api/v1/campaigns/shared-name/messages?tenant_id=t-a",
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);
    // The plans are for the admin only.
    let (status, _) = get_json(
        &app,
        "/api/v1/campaigns/shared-name/messages?explain=true",
        &token_a,
    )
    .await;
    assert_eq!(status, 403);
}

/// The single-message view of each of `ids` (another code path than the
/// query's), by id.
async fn views(app: &TestApp, ids: &[&str]) -> BTreeMap<String, Value> {
    let mut views = BTreeMap::new();
    for id in ids {
        views.insert((*id).to_owned(), app.message("whatsapp", id).await);
    }
    views
}

fn seen_in(view: &Value) -> BTreeSet<String> {
    view["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["status"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn every_message_filter_selects_what_the_messages_say() {
    let app = spawn_app().await;
    let ids = [
        "m.pending",
        "m.sent",
        "m.delivered",
        "m.delivered2",
        "m.read",
        "m.read2",
        "m.failed",
        "m.failed2",
        "m.failed.then.delivered",
        "m.clicked.email",
    ];
    let ids: Vec<&str> = ids.to_vec();
    app.register(&Value::Array(
        ids.iter()
            .map(|id| {
                json!({"tenant_id": "t", "campaign_id": "f", "channel": "whatsapp",
                             "provider_message_id": id, "recipient": format!("+1555{}", id.len())})
            })
            .collect(),
    ))
    .await;
    let ts = 1_700_000_000;
    app.send_statuses(&[
        ("m.sent", "sent", ts),
        ("m.delivered", "sent", ts),
        ("m.delivered", "delivered", ts + 1),
        ("m.delivered2", "delivered", ts + 2),
        ("m.read", "read", ts + 3),
        ("m.read2", "sent", ts),
        ("m.read2", "delivered", ts + 1),
        ("m.read2", "read", ts + 2),
        ("m.failed", "failed", ts + 4),
    ])
    .await;
    let other_failure = statushub::webhooks::whatsapp::envelope(vec![
        whatsapp_status(
            "m.failed2",
            "failed",
            ts + 5,
            Some((131_047, "Re-engagement message")),
        ),
        whatsapp_status(
            "m.failed.then.delivered",
            "failed",
            ts + 5,
            Some((131_026, "Message undeliverable")),
        ),
    ]);
    assert_eq!(app.post_whatsapp(&other_failure).await.status(), 200);
    // A second wave, after a mark in time: `updated_since` selects it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mark = statushub::clock::format_ms(statushub::clock::now_ms());
    tokio::time::sleep(Duration::from_millis(20)).await;
    app.send_statuses(&[
        ("m.failed.then.delivered", "delivered", ts + 6),
        ("m.delivered2", "read", ts + 7),
    ])
    .await;
    let wave_two: BTreeSet<String> = ["m.failed.then.delivered", "m.delivered2"]
        .map(str::to_owned)
        .into();

    let views = views(&app, &ids).await;
    let select = |keep: &dyn Fn(&Value) -> bool| -> BTreeSet<String> {
        views
            .iter()
            .filter(|(_, view)| keep(view))
            .map(|(id, _)| id.clone())
            .collect()
    };
    let in_wave_two =
        |view: &Value| wave_two.contains(view["provider_message_id"].as_str().unwrap());
    let code = |view: &Value| view["error"]["code"].as_str().map(str::to_owned);
    let since = format!("updated_since={mark}");
    let since_delivered = format!("updated_since={mark}&status=delivered");
    let since_read = format!("updated_since={mark}&status=read");
    let since_sent = format!("updated_since={mark}&status=sent");
    let cases: Vec<(&str, BTreeSet<String>)> = vec![
        ("", select(&|_| true)),
        ("status=pending", select(&|v| v["status"] == "pending")),
        ("status=sent", select(&|v| v["status"] == "sent")),
        (
            "status=read&status=failed",
            select(&|v| v["status"] == "read" || v["status"] == "failed"),
        ),
        (
            "seen=delivered",
            select(&|v| seen_in(v).contains("delivered")),
        ),
        // The resend audience.
        (
            "seen=delivered&not_seen=read",
            select(&|v| seen_in(v).contains("delivered") && !seen_in(v).contains("read")),
        ),
        ("not_seen=sent", select(&|v| !seen_in(v).contains("sent"))),
        (
            "seen=failed&seen=delivered",
            select(&|v| seen_in(v).contains("failed") && seen_in(v).contains("delivered")),
        ),
        ("seen=read&not_seen=delivered", BTreeSet::new()),
        (
            "failure_code=131026",
            select(&|v| code(v).as_deref() == Some("131026")),
        ),
        (
            "failure_code=131047",
            select(&|v| code(v).as_deref() == Some("131047")),
        ),
        (
            "failure_code=131026&status=failed",
            select(&|v| code(v).as_deref() == Some("131026") && v["status"] == "failed"),
        ),
        ("failure_code=999", BTreeSet::new()),
        (&since, wave_two.clone()),
        (
            &since_delivered,
            select(&|v| in_wave_two(v) && v["status"] == "delivered"),
        ),
        (
            &since_read,
            select(&|v| in_wave_two(v) && v["status"] == "read"),
        ),
        (&since_sent, BTreeSet::new()),
    ];
    for (filter, expected) in &cases {
        assert!(!filter.contains("131026") || !expected.is_empty());
        for limit in [1, 3, 100] {
            let path = format!("/api/v1/campaigns/f/messages?limit={limit}&{filter}");
            let (items, _) = all_pages(&app, &path, ADMIN_TOKEN, "messages").await;
            let got = message_ids(&items);
            let unique: BTreeSet<String> = got.iter().cloned().collect();
            assert_eq!(unique.len(), got.len(), "{path}: duplicates {got:?}");
            assert_eq!(&unique, expected, "{path}");
        }
    }
    // Sanity of the expectations themselves.
    assert_eq!(cases[5].1.len(), 2, "{:?}", cases[5].1);
    assert_eq!(cases[14].1.len(), 1, "{:?}", cases[14].1);

    // An item: id, recipient, status, seen with first times, failure.
    let (_, page) = get_json(
        &app,
        "/api/v1/campaigns/f/messages?status=failed&failure_code=131047",
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(
        page["messages"][0],
        json!({
            "provider_message_id": "m.failed2", "channel": "whatsapp", "recipient": "+15559",
            "status": "failed",
            "seen": [{"status": "failed", "first_at": "2023-11-14T22:13:25.000Z"}],
            "failure": {"code": "131047", "title": "Re-engagement message"},
            "updated_at": page["messages"][0]["updated_at"],
        })
    );
    let (_, page) = get_json(
        &app,
        "/api/v1/campaigns/f/messages?status=read",
        ADMIN_TOKEN,
    )
    .await;
    let read = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["provider_message_id"] == "m.read")
        .unwrap();
    // Implied stages are listed without a time of their own.
    assert_eq!(
        read["seen"],
        json!([{"status": "sent", "first_at": null}, {"status": "delivered", "first_at": null},
               {"status": "read", "first_at": "2023-11-14T22:13:23.000Z"}])
    );

    // Unknown parameters and values: 400 with what is accepted.
    for (query, needle) in [
        ("status=bogus", "status"),
        ("status=clicked", "pending, sent"),
        ("seen=pending", "seen"),
        ("not_seen=opened", "not_seen"),
        ("stauts=sent", "unknown parameter"),
        ("updated_since=yesterday", "RFC 3339"),
        ("failure_code=", "failure_code"),
        ("cursor=abc", "cursor"),
        ("limit=-1", "limit"),
        ("format=xml", "format"),
        ("explain=maybe", "explain"),
    ] {
        let (status, body) = get_json(
            &app,
            &format!("/api/v1/campaigns/f/messages?{query}"),
            ADMIN_TOKEN,
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
    }
    // A campaign cursor is not a message cursor.
    let (_, page) = get_json(&app, "/api/v1/campaigns/f/messages?limit=1", ADMIN_TOKEN).await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let (status, _) = get_json(
        &app,
        &format!("/api/v1/campaigns?cursor={cursor}"),
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(status, 400);
    // An offset with a '+' that arrived unencoded (a space) still parses.
    let (status, _) = get_json(
        &app,
        "/api/v1/campaigns/f/messages?updated_since=2026-01-01T00:00:00+00:00",
        ADMIN_TOKEN,
    )
    .await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn message_pages_have_no_duplicates_and_no_gaps_while_webhooks_write() {
    let app = spawn_app().await;
    let ids: Vec<String> = (0..400).map(|i| format!("wamid.p{i:03}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.register_whatsapp("t", "p", &refs).await;
    // The even messages are delivered, so `not_seen=read` holds them
    // throughout; the webhooks change only odd ones.
    let even: Vec<(&str, &str, i64)> = ids
        .iter()
        .step_by(2)
        .map(|id| (id.as_str(), "delivered", 1_700_000_000))
        .collect();
    app.send_statuses(&even).await;

    let stop = Arc::new(AtomicBool::new(false));
    let registrar = keep_registering(&app, "t", vec!["p".to_owned()], stop.clone());
    let webhooks = {
        let odd: Vec<String> = ids.iter().skip(1).step_by(2).cloned().collect();
        let app_url = app.url("/webhooks/whatsapp");
        let client = app.client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let id = &odd[(sent * 13) % odd.len()];
                let status = ["sent", "delivered", "read"][sent % 3];
                let body = serde_json::to_vec(&whatsapp_payload(&[(
                    id.as_str(),
                    status,
                    1_700_000_000 + sent as i64,
                )]))
                .unwrap();
                let signature = statushub::webhooks::whatsapp::signature::sign(
                    WHATSAPP_SECRET.as_bytes(),
                    &body,
                );
                let response = client
                    .post(&app_url)
                    .header("content-type", "application/json")
                    .header("x-hub-signature-256", signature)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                sent += 1;
            }
            sent
        })
    };
    let pause = Duration::from_millis(10);
    let (all, pages) = all_pages_pausing(
        &app,
        "/api/v1/campaigns/p/messages?limit=17",
        ADMIN_TOKEN,
        "messages",
        pause,
    )
    .await;
    let (unread, _) = all_pages_pausing(
        &app,
        "/api/v1/campaigns/p/messages?limit=9&not_seen=read",
        ADMIN_TOKEN,
        "messages",
        pause,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    assert!(
        webhooks.await.unwrap() > 20,
        "the webhooks did not overlap the paging"
    );
    registrar.await.unwrap();
    assert!(pages > 20);

    let all = message_ids(&all);
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "duplicates while paging");
    for id in &ids {
        assert!(
            unique.contains(id),
            "{id} existed before paging but was not listed"
        );
    }
    let unread = message_ids(&unread);
    let unread_unique: BTreeSet<&String> = unread.iter().collect();
    assert_eq!(unread_unique.len(), unread.len(), "duplicates while paging");
    for id in ids.iter().step_by(2) {
        assert!(
            unread_unique.contains(id),
            "{id} matched throughout but was not listed"
        );
    }
}

/// `GET` an export with `accept`; returns the response after checking 200.
async fn export(app: &TestApp, path: &str, accept: &str) -> reqwest::Response {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response
}

#[actix_web::test]
async fn exports_stream_the_whole_selection_as_ndjson_and_csv() {
    let app = spawn_app().await;
    let mut messages: Vec<Value> = (0..2_345)
        .map(|i| json!({"tenant_id": "t", "campaign_id": "x", "channel": "whatsapp",
                        "provider_message_id": format!("wamid.x{i:05}"), "recipient": format!("+1555{i:07}")}))
        .collect();
    // Values CSV must quote: a comma, a quote (line breaks cannot be
    // registered; the unit tests cover them).
    messages.push(json!({"tenant_id": "t", "campaign_id": "x", "channel": "email",
                         "provider_message_id": "ses,\"odd\" id", "recipient": "Ann \"A\", <a@example.com>"}));
    app.register(&Value::Array(messages)).await;
    let delivered: Vec<String> = (0..2_345)
        .step_by(3)
        .map(|i| format!("wamid.x{i:05}"))
        .collect();
    for chunk in delivered.chunks(200) {
        let statuses: Vec<(&str, &str, i64)> = chunk
            .iter()
            .map(|id| (id.as_str(), "delivered", 1_700_000_000))
            .collect();
        app.send_statuses(&statuses).await;
    }
    app.send_statuses(&[("wamid.x00001", "failed", 1_700_000_100)])
        .await;

    for filter in ["", "seen=delivered&not_seen=read", "status=failed"] {
        let (pages, _) = all_pages(
            &app,
            &format!("/api/v1/campaigns/x/messages?limit=1000&{filter}"),
            ADMIN_TOKEN,
            "messages",
        )
        .await;

        let ndjson = export(
            &app,
            &format!("/api/v1/campaigns/x/messages?{filter}"),
            "application/x-ndjson",
        )
        .await;
        assert_eq!(ndjson.headers()["content-type"], "application/x-ndjson");
        assert!(
            ndjson.headers().get("content-length").is_none(),
            "an export is chunked"
        );
        let text = ndjson.text().await.unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(
            lines, pages,
            "NDJSON against the JSON pages, filter {filter:?}"
        );

        let csv = export(
            &app,
            &format!("/api/v1/campaigns/x/messages?{filter}"),
            "text/csv",
        )
        .await;
        assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
        assert!(
            csv.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .contains("x-messages.csv")
        );
        let body = csv.bytes().await.unwrap();
        let mut reader = csv::Reader::from_reader(&body[..]);
        let header: Vec<String> = reader
            .headers()
            .unwrap()
            .iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(
            header[..5],
            [
                "provider_message_id",
                "channel",
                "recipient",
                "status",
                "seen"
            ]
        );
        let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), pages.len(), "filter {filter:?}");
        for (record, item) in records.iter().zip(&pages) {
            assert_eq!(&record[0], item["provider_message_id"].as_str().unwrap());
            assert_eq!(&record[2], item["recipient"].as_str().unwrap_or(""));
            assert_eq!(&record[3], item["status"].as_str().unwrap());
            let seen: Vec<&str> = item["seen"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["status"].as_str().unwrap())
                .collect();
            assert_eq!(&record[4], seen.join(";"));
            assert_eq!(&record[11], item["failure"]["code"].as_str().unwrap_or(""));
        }
    }
    // The whole campaign, odd values included, round-trips through CSV.
    let body = export(&app, "/api/v1/campaigns/x/messages?format=csv", "*/*")
        .await
        .bytes()
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(&body[..]);
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 2_346);
    let odd = records.iter().find(|record| &record[1] == "email").unwrap();
    assert_eq!(&odd[0], "ses,\"odd\" id");
    assert_eq!(&odd[2], "Ann \"A\", <a@example.com>");
    // An empty selection: the header alone, or nothing.
    let body = export(
        &app,
        "/api/v1/campaigns/x/messages?seen=read&not_seen=delivered",
        "text/csv",
    )
    .await
    .text()
    .await
    .unwrap();
    assert_eq!(body.lines().count(), 1);
    let body = export(
        &app,
        "/api/v1/campaigns/x/messages?failure_code=none",
        "application/x-ndjson",
    )
    .await
    .text()
    .await
    .unwrap();
    assert_eq!(body, "");
    // A limit belongs to JSON pages.
    let response = app
        .client
        .get(app.url("/api/v1/campaigns/x/messages?limit=5"))
        .bearer_auth(ADMIN_TOKEN)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

/// Adds `count` messages to campaign `campaign` of tenant `t` straight in
/// the database (in one statement: registering a million through the API
/// is the load generator's job), with a spread of states like a campaign's:
/// a tenth pending, then sent, delivered, read, failed (two codes), each
/// recipient `recipient_len` characters.
pub async fn seed_messages(app_db: &TestDb, campaign_pk: i64, count: i64, recipient_len: usize) {
    let pad = "x".repeat(recipient_len.saturating_sub(12));
    let (numbers, n) = match app_db {
        TestDb::Sqlite { .. } => (
            format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count})"
            ),
            "n",
        ),
        TestDb::Postgres { .. } => (String::new(), "generate_series(1, {count}) AS n(i)"),
    };
    let from = n.replace("{count}", &count.to_string());
    // seen masks: 0 pending, 1 sent, 3 delivered, 7 read, 32 failed.
    let sql = format!(
        "{numbers}
         INSERT INTO messages (campaign_pk, channel, provider_message_id, recipient, seen, status,
                               sent_at, delivered_at, read_at, failed_at, error_code, error_title,
                               created_at, updated_at)
         SELECT {campaign_pk}, 'whatsapp', 'seed.{campaign_pk}.' || i, '{pad}' || (100000000000 + i),
                CASE WHEN i % 10 = 0 THEN 0 WHEN i % 10 = 1 THEN 1 WHEN i % 10 < 5 THEN 3
                     WHEN i % 10 < 9 THEN 7 ELSE 32 END,
                CASE WHEN i % 10 = 0 THEN 'pending' WHEN i % 10 = 1 THEN 'sent' WHEN i % 10 < 5 THEN 'delivered'
                     WHEN i % 10 < 9 THEN 'read' ELSE 'failed' END,
                CASE WHEN i % 10 BETWEEN 1 AND 8 THEN 1700000000000 + i END,
                CASE WHEN i % 10 BETWEEN 2 AND 8 THEN 1700000001000 + i END,
                CASE WHEN i % 10 BETWEEN 5 AND 8 THEN 1700000002000 + i END,
                CASE WHEN i % 10 = 9 THEN 1700000003000 + i END,
                CASE WHEN i % 10 = 9 THEN (CASE WHEN i % 20 = 9 THEN '131026' ELSE '131047' END) END,
                CASE WHEN i % 10 = 9 THEN 'seeded failure' END,
                1700000000000, 1700000000000 + i
         FROM {from}"
    );
    app_db.tamper(&[&sql]).await;
}

/// Returns the key of campaign `campaign`.
pub async fn campaign_pk(db: &TestDb, campaign: &str) -> i64 {
    db.fetch(
        "SELECT id FROM campaigns WHERE campaign_id = $1",
        &[Bind::Text(campaign.to_owned())],
    )
    .await[0]["id"]
        .int()
}

#[actix_web::test]
async fn message_pages_are_index_ranges_never_a_scan_of_the_messages() {
    let app = spawn_app().await;
    app.register_whatsapp("t", "big", &["wamid.first"]).await;
    app.register_whatsapp("t", "neighbour", &["wamid.n"]).await;
    let pk = campaign_pk(&app.db, "big").await;
    seed_messages(&app.db, pk, 50_000, 20).await;
    let neighbour = campaign_pk(&app.db, "neighbour").await;
    seed_messages(&app.db, neighbour, 50_000, 20).await;
    if matches!(app.db, TestDb::Postgres { .. }) {
        // As autovacuum would have by then.
        app.db
            .tamper(&[
                "ANALYZE messages",
                "ANALYZE campaign_counters",
                "ANALYZE campaigns",
            ])
            .await;
    }
    let postgres = matches!(app.db, TestDb::Postgres { .. });
    for (filter, index) in [
        ("", "messages_by_campaign_seen"),
        ("status=read", "messages_by_campaign_seen"),
        ("seen=delivered&not_seen=read", "messages_by_campaign_seen"),
        (
            "updated_since=2023-11-14T22:13:20Z&status=failed",
            "messages_by_campaign_seen",
        ),
        ("failure_code=131026", "messages_by_failure"),
        ("failure_code=131026&status=failed", "messages_by_failure"),
    ] {
        let (status, body) = get_json(
            &app,
            &format!("/api/v1/campaigns/big/messages?explain=true&{filter}"),
            ADMIN_TOKEN,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let plan: Vec<String> = body["plan"]
            .as_array()
            .unwrap()
            .iter()
            .map(|line| line.as_str().unwrap().to_owned())
            .collect();
        let text = plan.join("\n");
        println!("plan for {filter:?}:\n{text}\n");
        let candidates: Vec<&String> = plan
            .iter()
            .filter(|line| line.starts_with("candidates:"))
            .collect();
        let rows: Vec<&String> = plan
            .iter()
            .filter(|line| line.starts_with("rows:"))
            .collect();
        assert!(
            candidates.iter().any(|line| line.contains(index)),
            "{filter:?}: {text}"
        );
        if postgres {
            assert!(!text.contains("Seq Scan on messages"), "{filter:?}: {text}");
            assert!(
                rows.iter().any(|line| line.contains("messages_pkey")),
                "{filter:?}: {text}"
            );
            // Each range is cut by a limit of its own (the planner may
            // read a range by bitmap when the limit covers most of it).
            let arms = candidates
                .iter()
                .filter(|line| line.contains("Index Cond"))
                .count();
            let limits = candidates
                .iter()
                .filter(|line| line.contains("Limit"))
                .count();
            assert!(arms >= 1 && limits >= arms, "{filter:?}: {text}");
        } else {
            assert!(
                !plan.iter().any(|line| line.ends_with("SCAN messages")),
                "{filter:?}: {text}"
            );
            assert!(
                candidates.iter().all(|line| !line.contains("TEMP B-TREE")),
                "{filter:?}: {text}"
            );
            assert!(
                rows.iter().any(|line| line.contains("INTEGER PRIMARY KEY")),
                "{filter:?}: {text}"
            );
            if filter.is_empty() || filter.starts_with("seen") || filter.starts_with("status") {
                assert!(text.contains("MERGE (UNION ALL)"), "{filter:?}: {text}");
            }
        }
    }
    // And the pages are right over the seeded rows: the resend audience is
    // the delivered-not-read tenth-multiples (i % 10 in 2..5) of 50,000.
    let (items, _) = all_pages(
        &app,
        "/api/v1/campaigns/big/messages?limit=1000&seen=delivered&not_seen=read",
        ADMIN_TOKEN,
        "messages",
    )
    .await;
    assert_eq!(items.len(), 15_000);
    let (items, _) = all_pages(
        &app,
        "/api/v1/campaigns/big/messages?limit=1000&failure_code=131026",
        ADMIN_TOKEN,
        "messages",
    )
    .await;
    assert_eq!(items.len(), 2_500);
}

#[actix_web::test]
async fn an_export_cut_by_a_store_failure_ends_in_an_error_not_a_hang() {
    let app = spawn_app().await;
    app.register_whatsapp("t", "cut", &["wamid.first"]).await;
    let pk = campaign_pk(&app.db, "cut").await;
    // About 60 MB of CSV: far more than the socket buffers hold.
    seed_messages(&app.db, pk, 120_000, 400).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut response = client
        .get(app.url("/api/v1/campaigns/cut/messages"))
        .bearer_auth(ADMIN_TOKEN)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"provider_message_id,"));
    let outage = app.db.outage().await;
    let mut received = first.len();
    let ended = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received += chunk.len(),
            Ok(None) => break Ok(received),
            Err(error) => break Err(error),
        }
    };
    outage.end().await;
    assert!(
        ended.is_err(),
        "the body ended as if whole after {received} bytes"
    );
    assert!(received < 60_000_000, "{received}");
}
