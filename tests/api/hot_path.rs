//! The webhook hot path: a status for a registered message is routed from
//! memory (the id directory), never by a read of the store, and what the
//! directory remembers never makes a status go astray.

use crate::helpers::*;

/// Reads `statushub_id_directory_lookups_total{result="…"}` from `/metrics`.
async fn directory_lookups(app: &TestApp, result: &str) -> u64 {
    let text = app.get("/metrics", ADMIN_TOKEN).await.text().await.unwrap();
    let prefix = format!("statushub_id_directory_lookups_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |value| value.trim().parse().unwrap())
}

#[actix_web::test]
async fn statuses_of_registered_messages_are_routed_without_reading_the_store() {
    let app = spawn_app().await;
    let ids: Vec<String> = (0..40).map(|i| format!("wamid.hot{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.register_whatsapp("t1", "c1", &refs[..20]).await;
    app.register_whatsapp("t1", "c2", &refs[20..]).await;

    for (n, id) in refs.iter().enumerate() {
        let stage = if n % 2 == 0 { "delivered" } else { "read" };
        let receipt = app.send_statuses(&[(id, "sent", 1_700_000_000)]).await;
        assert_eq!(receipt["applied"], 1, "{receipt}");
        let receipt = app.send_statuses(&[(id, stage, 1_700_000_010)]).await;
        assert_eq!(receipt["applied"], 1, "{receipt}");
    }

    assert_eq!(directory_lookups(&app, "miss").await, 0);
    assert_eq!(directory_lookups(&app, "hit").await, 80);
    for campaign in ["c1", "c2"] {
        let metrics = app.assert_counts_agree(campaign).await;
        assert_eq!(metrics["sent"], 20, "{metrics}");
        assert_eq!(metrics["read"], 10, "{metrics}");
        assert_eq!(metrics["delivered"], 20, "{metrics}");
    }
}

#[actix_web::test]
async fn an_id_unknown_when_first_seen_is_routed_once_registered() {
    // A miss is not remembered: the id may be registered any moment.
    let app = spawn_app().await;
    let receipt = app
        .send_statuses(&[("wamid.late", "sent", 1_700_000_000)])
        .await;
    assert_eq!(receipt["unmatched"], 1, "{receipt}");

    let registered = app.register_whatsapp("t1", "c1", &["wamid.late"]).await;
    assert_eq!(registered["applied_buffered"], 1, "{registered}");
    let receipt = app
        .send_statuses(&[("wamid.late", "delivered", 1_700_000_005)])
        .await;

    assert_eq!(receipt["applied"], 1, "{receipt}");
    assert_eq!(receipt["unmatched"], 0, "{receipt}");
    let metrics = app.assert_counts_agree("c1").await;
    assert_eq!(metrics["delivered"], 1, "{metrics}");
    assert_eq!(
        app.message("whatsapp", "wamid.late").await["status"],
        "delivered"
    );
}

#[actix_web::test]
async fn without_a_directory_every_status_reads_the_store_and_lands_the_same() {
    let app = spawn_app_with(|settings| settings.id_directory_capacity = 0).await;
    app.register_whatsapp("t1", "c1", &["wamid.a", "wamid.b"])
        .await;

    for id in ["wamid.a", "wamid.b", "wamid.a"] {
        let receipt = app.send_statuses(&[(id, "delivered", 1_700_000_000)]).await;
        assert_eq!(receipt["received"], 1, "{receipt}");
    }

    assert_eq!(directory_lookups(&app, "hit").await, 0);
    assert_eq!(directory_lookups(&app, "miss").await, 3);
    let metrics = app.assert_counts_agree("c1").await;
    assert_eq!(metrics["delivered"], 2, "{metrics}");
}

#[actix_web::test]
async fn a_small_directory_forgets_ids_but_never_misroutes_them() {
    // Ten ids through a directory of two: most lookups miss and read the
    // store; every status still lands on its own message.
    let app = spawn_app_with(|settings| settings.id_directory_capacity = 2).await;
    let ids: Vec<String> = (0..10).map(|i| format!("wamid.small{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.register_whatsapp("t1", "c1", &refs[..5]).await;
    app.register_whatsapp("t1", "c2", &refs[5..]).await;

    for round in 0..2 {
        for id in &refs {
            let status = ["sent", "delivered"][round];
            let receipt = app.send_statuses(&[(id, status, 1_700_000_000)]).await;
            assert_eq!(receipt["applied"], 1, "{receipt}");
        }
    }

    assert!(directory_lookups(&app, "miss").await > 0);
    for (campaign, first) in [("c1", 0), ("c2", 5)] {
        let metrics = app.assert_counts_agree(campaign).await;
        assert_eq!(metrics["delivered"], 5, "{metrics}");
        for id in &refs[first..first + 5] {
            let message = app.message("whatsapp", id).await;
            assert_eq!(message["campaign_id"], campaign, "{message}");
            assert_eq!(message["status"], "delivered", "{message}");
        }
    }
}
