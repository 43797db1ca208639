//! The funnel over time (`GET /api/v1/campaigns/{id}/timeseries`), latency
//! percentiles, failure reasons and cost (in `GET …/metrics`): checked
//! against a recount of the stored message rows written here, in SQL and
//! plain Rust, without statushub's `domain::analytics`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::helpers::*;

/// Milliseconds per minute.
const MINUTE: i64 = 60_000;

/// One message as stored, with what analytics read.
struct StoredRow {
    channel: String,
    /// sent, delivered, read, clicked, complained, failed.
    at: [Option<i64>; 6],
    error: Option<(String, String)>,
    complaint_type: Option<String>,
    pricing: Option<(String, bool)>,
}

async fn stored_rows(app: &TestApp, tenant: &str, campaign: &str) -> Vec<StoredRow> {
    let rows = app
        .db
        .fetch(
            "SELECT m.channel, m.sent_at, m.delivered_at, m.read_at, m.clicked_at,
                    m.complained_at, m.failed_at, m.error_code, m.error_title, m.complaint_type,
                    m.pricing_category,
                    CASE WHEN m.pricing_billable THEN 1 ELSE 0 END AS billable
             FROM messages m JOIN campaigns c ON c.id = m.campaign_pk
             WHERE c.tenant_id = $1 AND c.campaign_id = $2 AND m.before_analytics IS NULL",
            &[
                Bind::Text(tenant.to_owned()),
                Bind::Text(campaign.to_owned()),
            ],
        )
        .await;
    rows.iter()
        .map(|row| {
            let text = |name: &str| match &row[name] {
                Cell::Null => None,
                cell => Some(cell.text().to_owned()),
            };
            StoredRow {
                channel: row["channel"].text().to_owned(),
                at: [
                    row["sent_at"].opt_int(),
                    row["delivered_at"].opt_int(),
                    row["read_at"].opt_int(),
                    row["clicked_at"].opt_int(),
                    row["complained_at"].opt_int(),
                    row["failed_at"].opt_int(),
                ],
                error: text("error_code")
                    .map(|code| (code, text("error_title").unwrap_or_default())),
                complaint_type: text("complaint_type"),
                pricing: text("pricing_category")
                    .map(|category| (category, row["billable"].int() == 1)),
            }
        })
        .collect()
}

/// When a stored message first reached sent, delivered, read, clicked and
/// failed: the earliest timestamp of the status or of one that implies it.
fn reached(at: &[Option<i64>; 6]) -> [Option<i64>; 5] {
    let min = |indexes: &[usize]| indexes.iter().filter_map(|i| at[*i]).min();
    [
        min(&[0, 1, 2, 3, 4]),
        min(&[1, 2, 3, 4]),
        min(&[2, 3]),
        min(&[3]),
        min(&[5]),
    ]
}

/// The nearest-rank percentile of exact samples.
fn exact_percentile(samples: &mut [i64], percent: usize) -> Option<i64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = (percent * samples.len()).div_ceil(100).max(1);
    Some(samples[rank - 1])
}

/// Asserts that the campaign's time series (1m, 5m, 1h), latency
/// percentiles, failure reasons and cost equal a recount of its stored
/// message rows; returns the metrics.
pub async fn assert_analytics_agree(app: &TestApp, tenant: &str, campaign: &str) -> Value {
    let rows = stored_rows(app, tenant, campaign).await;
    // Funnel per minute.
    let mut minutes: BTreeMap<i64, [i64; 5]> = BTreeMap::new();
    let mut latency: [Vec<i64>; 2] = [Vec::new(), Vec::new()];
    let mut reasons: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    let mut cost: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for row in &rows {
        let times = reached(&row.at);
        for (stage, at) in times.iter().enumerate() {
            if let Some(at) = at {
                minutes.entry(at.div_euclid(MINUTE)).or_default()[stage] += 1;
            }
        }
        if let Some(sent) = row.at[0] {
            for (measure, stage) in [1, 2].into_iter().enumerate() {
                if let Some(at) = times[stage] {
                    latency[measure].push((at - sent).max(0));
                }
            }
        }
        if let Some((code, title)) = &row.error {
            let key = if row.channel == "whatsapp" {
                ("whatsapp_error", code.clone(), title.clone())
            } else if code == "Reject" {
                ("ses_reject", code.clone(), "rejected by SES".to_owned())
            } else if code == "RenderingFailure" {
                (
                    "ses_rendering_failure",
                    code.clone(),
                    "template failed to render".to_owned(),
                )
            } else {
                let (kind, sub) = code.split_once('/').unwrap();
                ("ses_bounce", code.clone(), format!("{kind} bounce ({sub})"))
            };
            *reasons.entry((key.0.to_owned(), key.1, key.2)).or_default() += 1;
        }
        if row.at[4].is_some() {
            let code = row
                .complaint_type
                .clone()
                .unwrap_or("unspecified".to_owned());
            let title = format!("complaint ({code})");
            *reasons
                .entry(("ses_complaint".to_owned(), code, title))
                .or_default() += 1;
        }
        if let Some((category, billable)) = &row.pricing {
            let entry = cost.entry(category.clone()).or_default();
            if *billable {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }

    for (bucket, width) in [("1m", 1), ("5m", 5), ("1h", 60)] {
        let mut expected: BTreeMap<i64, [i64; 5]> = BTreeMap::new();
        for (minute, counts) in &minutes {
            let slot = expected
                .entry(minute - minute.rem_euclid(width))
                .or_default();
            for (sum, count) in slot.iter_mut().zip(counts) {
                *sum += count;
            }
        }
        expected.retain(|_, counts| counts.iter().any(|count| *count != 0));
        let expected: Vec<Value> = expected
            .iter()
            .map(|(start, [sent, delivered, read, clicked, failed])| {
                json!({"start": rfc3339(start * MINUTE), "sent": sent, "delivered": delivered,
                       "read": read, "clicked": clicked, "failed": failed})
            })
            .collect();
        let series = timeseries(app, ADMIN_TOKEN, tenant, campaign, bucket).await;
        let got: Vec<Value> = series["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|bucket| {
                ["sent", "delivered", "read", "clicked", "failed"]
                    .iter()
                    .any(|stage| bucket[stage] != 0)
            })
            .cloned()
            .collect();
        assert_eq!(
            got, expected,
            "{campaign}: {bucket} buckets against a recount"
        );
        for (measure, name) in ["to_delivered", "to_read"].iter().enumerate() {
            let view = &series["latency"][name];
            let mut samples = latency[measure].clone();
            assert_eq!(view["messages"], json!(samples.len()), "{campaign}: {name}");
            for percent in [50, 90] {
                let exact = exact_percentile(&mut samples, percent);
                let got = view[format!("p{percent}_ms")].as_i64();
                match (exact, got) {
                    (None, None) => {}
                    (Some(exact), Some(got)) => assert!(
                        (got - exact).abs() as f64 <= exact as f64 * 0.032 + 0.5,
                        "{campaign}: {name} p{percent} {got} against exact {exact}"
                    ),
                    other => panic!("{campaign}: {name} p{percent}: {other:?}"),
                }
            }
        }
    }

    let metrics = metrics_of(app, tenant, campaign).await;
    let mut got: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    for reason in metrics["failure_reasons"].as_array().unwrap() {
        let key = (
            reason["kind"].as_str().unwrap().to_owned(),
            reason["code"].as_str().unwrap().to_owned(),
            reason["title"].as_str().unwrap().to_owned(),
        );
        got.insert(key, reason["messages"].as_i64().unwrap());
    }
    if reasons.len() <= 20 {
        assert_eq!(
            got, reasons,
            "{campaign}: failure reasons against a recount"
        );
        assert_eq!(metrics["failure_reasons_other"], 0);
    }
    let by_category: Vec<Value> = cost
        .iter()
        .map(|(category, (billable, free))| {
            json!({"category": category, "billable": billable, "free": free})
        })
        .collect();
    assert_eq!(
        metrics["cost"],
        json!({
            "billable": cost.values().map(|c| c.0).sum::<i64>(),
            "free": cost.values().map(|c| c.1).sum::<i64>(),
            "by_category": by_category,
        }),
        "{campaign}: cost against a recount"
    );
    metrics
}

fn rfc3339(ms: i64) -> String {
    statushub::clock::format_ms(ms)
}

/// `GET …/timeseries?bucket=` of a tenant's campaign; asserts a 200.
pub async fn timeseries(
    app: &TestApp,
    token: &str,
    tenant: &str,
    campaign: &str,
    bucket: &str,
) -> Value {
    let response = app
        .get(
            &format!("/api/v1/campaigns/{campaign}/timeseries?bucket={bucket}&tenant_id={tenant}"),
            token,
        )
        .await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    response.json().await.unwrap()
}

async fn metrics_of(app: &TestApp, tenant: &str, campaign: &str) -> Value {
    let response = app
        .get(
            &format!("/api/v1/campaigns/{campaign}/metrics?tenant_id={tenant}"),
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    response.json().await.unwrap()
}

/// 2024-05-01T12:00:00Z, a minute boundary.
const NOON: i64 = 1_714_564_800;

#[actix_web::test]
async fn funnel_buckets_follow_the_first_timestamp_even_when_it_arrives_late() {
    // Arrange
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.a", "wamid.b"])
        .await;

    // Act: `read` at 12:07, then `played` (also read) at 12:02 arrives
    // later and moves the message's first read back five minutes; `sent`
    // at 12:00 arrives last. `wamid.b` fails.
    for status in [
        whatsapp_status("wamid.a", "read", NOON + 7 * 60, None),
        whatsapp_status("wamid.a", "played", NOON + 2 * 60, None),
        whatsapp_status("wamid.a", "sent", NOON, None),
        whatsapp_status(
            "wamid.b",
            "failed",
            NOON + 61,
            Some((131_026, "Message undeliverable")),
        ),
    ] {
        let response = app
            .post_whatsapp(&statushub::webhooks::whatsapp::envelope(vec![status]))
            .await;
        assert_eq!(response.status(), 200);
    }

    // Assert
    let series = timeseries(&app, ADMIN_TOKEN, "t1", "c1", "1m").await;
    let at = |minute: i64| rfc3339((NOON + minute * 60) * 1000);
    assert_eq!(
        series["buckets"],
        json!([
            {"start": at(0), "sent": 1, "delivered": 0, "read": 0, "clicked": 0, "failed": 0},
            {"start": at(1), "sent": 0, "delivered": 0, "read": 0, "clicked": 0, "failed": 1},
            {"start": at(2), "sent": 0, "delivered": 1, "read": 1, "clicked": 0, "failed": 0},
        ]),
        "{series}"
    );
    assert_eq!(series["latency"]["to_read"]["messages"], 1);
    // Two minutes, within the histogram's 3.2%.
    let p50 = series["latency"]["to_read"]["p50_ms"].as_i64().unwrap();
    assert!((116_160..=123_840).contains(&p50), "{p50}");
    let hourly = timeseries(&app, ADMIN_TOKEN, "t1", "c1", "1h").await;
    assert_eq!(
        hourly["buckets"],
        json!([{"start": at(0), "sent": 1, "delivered": 1, "read": 1, "clicked": 0, "failed": 1}])
    );
    let metrics = assert_analytics_agree(&app, "t1", "c1").await;
    assert_eq!(
        metrics["failure_reasons"],
        json!([{"kind": "whatsapp_error", "code": "131026", "title": "Message undeliverable",
                "messages": 1}])
    );
}

#[actix_web::test]
async fn pricing_counts_each_message_once_whatever_repeats_it() {
    // Arrange: the pywa captures carry `pricing` on sent, delivered and
    // read (billable, category service).
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.xyzxyz"]).await;
    let dir = vectors_dir("whatsapp");

    // Act: each capture twice, the later ones first.
    for name in ["read", "delivered", "sent", "read", "played", "sent"] {
        let body = std::fs::read(dir.join(format!("pywa-status-{name}.json"))).unwrap();
        let payload: Value = serde_json::from_slice(&body).unwrap();
        let response = app.post_whatsapp(&payload).await;
        assert_eq!(response.status(), 200);
    }

    // Assert
    let metrics = assert_analytics_agree(&app, "t1", "c1").await;
    assert_eq!(
        metrics["cost"],
        json!({"billable": 1, "free": 0,
               "by_category": [{"category": "service", "billable": 1, "free": 0}]})
    );
}

#[actix_web::test]
async fn another_tenant_gets_404_and_bad_buckets_get_400() {
    // Arrange
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.a"]).await;
    let own = app.tenant_token("t1", None);
    let other = app.tenant_token("t2", None);

    // Act / Assert
    let path = "/api/v1/campaigns/c1/timeseries?bucket=5m";
    assert_eq!(app.get(path, &own).await.status(), 200);
    assert_eq!(app.get(path, &other).await.status(), 404);
    assert_eq!(
        app.get("/api/v1/campaigns/c1/metrics", &other)
            .await
            .status(),
        404
    );
    for bad in [
        "bucket=2m",
        "bucket=",
        "bucket=1M",
        "bucket=1h&from=yesterday",
        "bucket=1m&from=2024-05-01T12:00:00Z&to=2024-05-01T11:00:00Z",
        "bucket=1m&from=2024-05-01T00:00:00Z&to=2024-05-03T00:00:00Z",
    ] {
        let response = app
            .get(&format!("/api/v1/campaigns/c1/timeseries?{bad}"), &own)
            .await;
        assert_eq!(response.status(), 400, "{bad}");
    }
    // An empty campaign has no buckets, and no window unless asked.
    let empty = timeseries(&app, &own, "t1", "c1", "1m").await;
    assert_eq!(empty["buckets"], json!([]));
    assert_eq!(empty["from"], Value::Null);
    assert_eq!(empty["latency"]["to_read"]["p50_ms"], Value::Null);
}

#[actix_web::test]
async fn messages_stored_before_the_analytics_migration_stay_out_of_them() {
    // Arrange: wamid.old as the migration leaves a message it finds.
    let app = spawn_app().await;
    app.register_whatsapp("t1", "c1", &["wamid.old", "wamid.new"])
        .await;
    app.db.mark_before_analytics(&["wamid.old"]).await;

    // Act: both move on; the old one fails.
    for status in [
        whatsapp_status("wamid.old", "sent", NOON, None),
        whatsapp_status(
            "wamid.old",
            "failed",
            NOON + 60,
            Some((131_026, "Undeliverable")),
        ),
        whatsapp_status("wamid.new", "sent", NOON, None),
        whatsapp_status("wamid.new", "read", NOON + 120, None),
    ] {
        let response = app
            .post_whatsapp(&statushub::webhooks::whatsapp::envelope(vec![status]))
            .await;
        assert_eq!(response.status(), 200);
    }

    // Assert: the counters count both, the analytics only the new one.
    let metrics = assert_analytics_agree(&app, "t1", "c1").await;
    assert_eq!(metrics["sent"], 2);
    assert_eq!(metrics["failed"], 1);
    assert_eq!(metrics["failure_reasons"], json!([]), "{metrics}");
    let series = timeseries(&app, ADMIN_TOKEN, "t1", "c1", "1h").await;
    assert_eq!(
        series["buckets"],
        json!([{"start": rfc3339(NOON * 1000), "sent": 1, "delivered": 1, "read": 1,
                "clicked": 0, "failed": 0}]),
        "{series}"
    );
}
