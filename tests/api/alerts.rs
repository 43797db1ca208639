//! The alert rules (`deploy/prometheus/alerts.yml`) and the dashboard
//! (`deploy/grafana/statushub.json`) name only metrics a running hub
//! exports, and the metrics they were written for move where the events
//! happen. (`promtool check rules` and `promtool test rules` run in
//! `scripts/test`.)

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::helpers::*;

/// Suffixes Prometheus adds to a histogram's series.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn deploy_file(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every `statushub_…` name in `text` (metric names: `[a-z0-9_]` after the
/// prefix).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("statushub_") {
        // Not the tail of a longer identifier.
        let preceded = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The metric families of a scrape, with their type (`# TYPE name type`).
fn families(scrape: &str) -> BTreeSet<(String, String)> {
    scrape
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

/// Whether `name` is a family of the scrape, or a series of one of its
/// histograms (`…_bucket`, `…_sum`, `…_count`).
fn exported(name: &str, families: &BTreeSet<(String, String)>) -> bool {
    families.iter().any(|(family, kind)| {
        family == name
            || (kind == "histogram"
                && HISTOGRAM_SUFFIXES
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(family.as_str())))
    })
}

#[test]
fn metric_names_are_found_in_expressions_and_histogram_series_are_recognised() {
    let names = metric_names(
        r#"rate(statushub_a_total[5m]) / x_statushub_not{job="statushub"} + statushub_b_seconds_bucket{le="1"}"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["statushub_a_total", "statushub_b_seconds_bucket"]
    );
    let families: BTreeSet<_> = [
        ("statushub_b_seconds".to_owned(), "histogram".to_owned()),
        ("statushub_c".to_owned(), "gauge".to_owned()),
    ]
    .into();
    assert!(exported("statushub_b_seconds_bucket", &families));
    assert!(exported("statushub_c", &families));
    assert!(!exported("statushub_c_count", &families), "not a histogram");
    assert!(!exported("statushub_a_total", &families));
}

#[actix_web::test]
async fn every_metric_the_alerts_and_the_dashboard_use_is_exported() {
    // Arrange: the metric names in the rules and the dashboard.
    let rules = deploy_file("prometheus/alerts.yml");
    let dashboard = deploy_file("grafana/statushub.json");
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    let used: BTreeSet<String> = metric_names(&rules)
        .into_iter()
        .chain(metric_names(&dashboard))
        .collect();
    for sure in [
        "statushub_ready",
        "statushub_db_commit_failures_total",
        "statushub_db_commit_seconds_bucket",
    ] {
        assert!(used.contains(sure), "{sure} not found: {used:?}");
    }

    // Act: a hub that served one request (request metrics exist once a
    // request was counted), scraped.
    let app = spawn_app().await;
    assert_eq!(app.readyz().await.status(), 200);
    let scrape = app.get("/metrics", ADMIN_TOKEN).await.text().await.unwrap();
    let families = families(&scrape);

    // Assert
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| !exported(name, &families))
        .collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\n{scrape}"
    );
}

#[test]
fn every_alert_has_a_promtool_unit_test() {
    let rules = deploy_file("prometheus/alerts.yml");
    let tests = deploy_file("prometheus/alerts_test.yml");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 7, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "no promtool test for {alert}"
        );
    }
}

#[actix_web::test]
async fn the_alerting_metrics_move_where_their_events_happen() {
    // Arrange
    let app = spawn_app_with(|settings| settings.max_queue = 12_345).await;

    // Act: a webhook with a bad signature, then a good one.
    let body = serde_json::to_vec(&whatsapp_payload(&[("wamid.unknown", "sent", 1)])).unwrap();
    let refused = app
        .post_whatsapp_raw(body.clone(), Some("sha256=00".to_owned()))
        .await;
    assert_eq!(refused.status(), 401);
    assert_eq!(app.post_whatsapp_bytes(body).await.status(), 200);

    // Assert
    let whatsapp = r#"statushub_webhook_signature_failures_total{channel="whatsapp"}"#;
    assert_eq!(app.scrape(whatsapp).await, 1.0);
    let email = r#"statushub_webhook_signature_failures_total{channel="email"}"#;
    assert_eq!(app.scrape(email).await, 0.0);
    assert_eq!(app.scrape("statushub_db_queue_capacity").await, 12_345.0);
    assert_eq!(app.scrape("statushub_ready").await, 1.0);
    let unmatched = r#"statushub_statuses_total{outcome="unmatched"}"#;
    assert_eq!(app.scrape(unmatched).await, 1.0);
    let webhook_latency =
        r#"statushub_http_request_duration_seconds_count{route="/webhooks/whatsapp"}"#;
    assert_eq!(app.scrape(webhook_latency).await, 2.0);
}
