//! The store on its own: what one group commit does with mixed operations.
//! Runs against a real database from [`TestDb::fresh_in`] (a SQLite file, or
//! a PostgreSQL database of its own with `STATUSHUB_TEST_BACKEND=postgres`),
//! and checks the store's counters against the API tests' independent SQL
//! recount. The last tests check the PostgreSQL side of [`TestDb`] itself,
//! and two stores committing at once to one PostgreSQL database (as two
//! instances do), on `STATUSHUB_TEST_POSTGRES_URL`'s server whatever the
//! backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "api/helpers/db.rs"]
mod db;

use serde_json::json;
use statushub::domain::{Channel, Status, StatusUpdate};
use statushub::store::{
    Apply, Batch, Buffer, EnsureCampaign, NewMessage, Register, Store, StoreSettings, UpdateOutcome,
};

use db::{Cell, TestDb};

/// A store on a fresh database, the database seen from the test, and the
/// directory both live in.
async fn test_store() -> (Store, TestDb, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::fresh_in(dir.path());
    let store = Store::connect(&StoreSettings::new(db.url())).await.unwrap();
    (store, db, dir)
}

fn update(id: &str, status: Status, key: &str) -> StatusUpdate {
    StatusUpdate {
        channel: Channel::Whatsapp,
        provider_message_id: id.to_owned(),
        event: status.as_str().to_owned(),
        status: Some(status),
        timestamp_ms: 1_700_000_000_000,
        idempotency_key: key.to_owned(),
        failure: None,
        details: serde_json::Value::Null,
        stored: Default::default(),
    }
}

fn message(id: &str) -> NewMessage {
    NewMessage {
        channel: Channel::Whatsapp,
        provider_message_id: id.to_owned(),
        recipient: None,
    }
}

async fn campaign(store: &Store) -> i64 {
    let batch = Batch {
        campaigns: vec![EnsureCampaign {
            tenant_id: "t1".to_owned(),
            campaign_id: "c1".to_owned(),
        }],
        ..Batch::default()
    };
    store
        .commit(std::sync::Arc::new(batch.clone()), 1)
        .await
        .unwrap()
        .campaigns[0]
}

#[tokio::test]
async fn a_status_buffered_in_the_same_commit_as_its_registration_is_routed_again() {
    // The race the hub must survive: a webhook found no message, and the
    // message is registered before its buffer write commits.
    let (store, db, _dir) = test_store().await;
    let campaign_pk = campaign(&store).await;
    let batch = Batch {
        registrations: vec![Register {
            campaign_pk,
            messages: vec![message("wamid.race")],
        }],
        buffers: vec![Buffer {
            updates: vec![update("wamid.race", Status::Read, "k1").into()],
        }],
        ..Batch::default()
    };

    let outcome = store
        .commit(std::sync::Arc::new(batch.clone()), 2)
        .await
        .unwrap();

    let buffered = &outcome.buffers[0];
    assert!(
        matches!(buffered[0], UpdateOutcome::Known(reference) if reference.campaign_pk == campaign_pk)
    );
    assert_eq!(
        store.stats().await.unwrap().unmatched_buffered,
        0,
        "not buffered"
    );
    // Neither buffered nor applied: the hub routes it again, to the message.
    let counts = db.recount("c1").await.checked("c1");
    assert_eq!((&counts["total"], &counts["read"]), (&json!(1), &json!(0)));
}

#[tokio::test]
async fn buffered_statuses_apply_in_the_registering_commit_with_consecutive_versions() {
    let (store, db, _dir) = test_store().await;
    let campaign_pk = campaign(&store).await;
    let buffer = Batch {
        buffers: vec![Buffer {
            updates: vec![
                update("wamid.1", Status::Delivered, "k1").into(),
                update("wamid.1", Status::Read, "k2").into(),
                update("wamid.2", Status::Sent, "k3").into(),
            ],
        }],
        ..Batch::default()
    };
    store
        .commit(std::sync::Arc::new(buffer.clone()), 2)
        .await
        .unwrap();
    let batch = Batch {
        registrations: vec![Register {
            campaign_pk,
            messages: vec![message("wamid.1"), message("wamid.2"), message("wamid.3")],
        }],
        applies: vec![Apply {
            campaign_pk,
            updates: vec![],
        }],
        ..Batch::default()
    };

    let outcome = store
        .commit(std::sync::Arc::new(batch.clone()), 3)
        .await
        .unwrap();

    let registered = &outcome.registrations[0];
    let (receipt, counters, changes) = (
        &registered.receipt,
        &registered.counters,
        &registered.changes,
    );
    assert_eq!(receipt.registered, 3);
    assert_eq!(receipt.applied_buffered, 3);
    assert_eq!(
        outcome.applies[0].counters, *counters,
        "one campaign, one state"
    );
    assert_eq!((counters.total, counters.read, counters.sent), (3, 1, 2));
    // Registration takes version 1; the three changes take 2, 3 and 4.
    let versions: Vec<i64> = changes.iter().map(|change| change.version).collect();
    assert_eq!(versions, [2, 3, 4]);
    assert_eq!(counters.version, 4);
    assert_eq!(store.stats().await.unwrap().unmatched_buffered, 0);
    let recount = db.recount("c1").await;
    assert_eq!(
        recount.stored_counters.as_ref().unwrap()["version"],
        json!(4)
    );
    assert_eq!(
        recount.checked("c1"),
        json!({"total": 3, "sent": 2, "delivered": 1, "read": 1, "failed": 0, "clicked": 0, "complained": 0,
               "by_status": {"pending": 1, "sent": 1, "delivered": 0, "read": 1, "failed": 0}})
    );
}

#[tokio::test]
async fn a_failed_commit_leaves_nothing_behind() {
    let (store, db, _dir) = test_store().await;
    let campaign_pk = campaign(&store).await;
    // A write for a campaign that does not exist fails the whole transaction.
    let batch = Batch {
        registrations: vec![
            Register {
                campaign_pk,
                messages: vec![message("wamid.1")],
            },
            Register {
                campaign_pk: campaign_pk + 1_000,
                messages: vec![message("wamid.2")],
            },
        ],
        ..Batch::default()
    };

    assert!(
        store
            .commit(std::sync::Arc::new(batch.clone()), 2)
            .await
            .is_err()
    );

    assert_eq!(store.stats().await.unwrap().messages, 0);
    let counters = store.campaign_counters(campaign_pk).await.unwrap().unwrap();
    assert_eq!((counters.total, counters.version), (0, 0));
    assert_eq!(db.recount("c1").await.checked("c1")["total"], 0);
}

/// Hands `batches` to the store all at once (as the DB actor does under
/// load) and returns each one's outcome.
async fn commit_at_once(
    store: &Store,
    batches: Vec<Batch>,
    now_ms: i64,
) -> Vec<Result<statushub::store::BatchOutcome, statushub::store::StoreError>> {
    futures_util::future::join_all(
        batches
            .into_iter()
            .map(|batch| store.commit(std::sync::Arc::new(batch), now_ms)),
    )
    .await
}

#[tokio::test]
async fn batches_handed_over_at_once_each_get_their_own_outcome_and_a_bad_one_fails_alone() {
    let (store, db, _dir) = test_store().await;
    let campaign_pk = campaign(&store).await;
    let ids: Vec<String> = (0..40).map(|n| format!("wamid.{n}")).collect();
    store
        .commit(
            std::sync::Arc::new(Batch {
                registrations: vec![Register {
                    campaign_pk,
                    messages: ids.iter().map(|id| message(id)).collect(),
                }],
                ..Batch::default()
            }),
            2,
        )
        .await
        .unwrap();
    // One batch per message (one `delivered` each, and its duplicate in a
    // second write of the same batch).
    let batches = |status: Status| -> Vec<Batch> {
        ids.iter()
            .map(|id| {
                let once = update(id, status, &format!("{id}:{}", status.as_str()));
                Batch {
                    applies: vec![
                        Apply {
                            campaign_pk,
                            updates: vec![(0, once.clone().into())],
                        },
                        Apply {
                            campaign_pk,
                            updates: vec![(0, once.into())],
                        },
                    ],
                    ..Batch::default()
                }
            })
            .collect()
    };
    let message_pks: Vec<i64> = {
        let resolved = store
            .resolve(
                Channel::Whatsapp,
                &ids.iter().map(String::as_str).collect::<Vec<_>>(),
            )
            .await
            .unwrap();
        ids.iter()
            .map(|id| {
                resolved
                    .iter()
                    .find(|(found, _)| found == id)
                    .map(|(_, reference)| reference.message_pk)
                    .unwrap()
            })
            .collect()
    };
    let with_pks = |mut batches: Vec<Batch>| {
        for (batch, message_pk) in batches.iter_mut().zip(&message_pks) {
            for apply in &mut batch.applies {
                for (pk, _) in &mut apply.updates {
                    *pk = *message_pk;
                }
            }
        }
        batches
    };

    // All good: each batch's outcome is its own, whatever transaction held it.
    let outcomes = commit_at_once(&store, with_pks(batches(Status::Delivered)), 3).await;
    let mut transactions = 0;
    let mut rows_in_transactions = 0;
    for outcome in &outcomes {
        let outcome = outcome.as_ref().expect("every good batch commits");
        assert_eq!(outcome.applies.len(), 2, "its own two writes, no other's");
        assert_eq!(
            outcome.applies[0].outcomes,
            vec![UpdateOutcome::Applied { changed: true }]
        );
        assert_eq!(outcome.applies[1].outcomes, vec![UpdateOutcome::Duplicate]);
        if let Some(transaction) = outcome.transaction {
            transactions += 1;
            rows_in_transactions += transaction.rows;
        }
    }
    // Each change takes the campaign's next version, in the order the
    // batches were handed over; the counters are those after the
    // transaction that held the batch.
    let versions: Vec<(i64, i64)> = outcomes
        .iter()
        .map(|outcome| {
            let applied = &outcome.as_ref().unwrap().applies[0];
            (applied.changes[0].version, applied.counters.version)
        })
        .collect();
    assert!(
        versions
            .windows(2)
            .all(|pair| pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1),
        "batches commit in the order they were handed over: {versions:?}"
    );
    assert!(versions.iter().all(|(change, counters)| change <= counters));
    if store.commits_in_flight() > 1 {
        // SQLite: what queued while the writer was busy went in one
        // transaction, told once, with every batch's rows.
        assert!(
            transactions < outcomes.len(),
            "no two batches shared a transaction"
        );
        assert_eq!(rows_in_transactions, 2 * ids.len());
    }
    let counts = db.recount("c1").await.checked("c1");
    assert_eq!(
        (&counts["total"], &counts["delivered"]),
        (&json!(40), &json!(40))
    );

    // A batch the store refuses among them fails alone.
    let mut batches = with_pks(batches(Status::Read));
    batches.insert(
        20,
        Batch {
            registrations: vec![Register {
                campaign_pk: campaign_pk + 1_000,
                messages: vec![message("wamid.nowhere")],
            }],
            ..Batch::default()
        },
    );
    let outcomes = commit_at_once(&store, batches, 4).await;
    for (n, outcome) in outcomes.iter().enumerate() {
        assert_eq!(outcome.is_err(), n == 20, "batch {n}: {outcome:?}");
    }
    let counts = db.recount("c1").await.checked("c1");
    assert_eq!(
        (&counts["total"], &counts["read"]),
        (&json!(40), &json!(40))
    );
    assert_eq!(store.stats().await.unwrap().messages, 40);
}

#[tokio::test]
async fn ping_fails_while_the_store_is_down_and_passes_once_it_is_back() {
    let (store, db, _dir) = test_store().await;
    store.ping().await.unwrap();

    let outage = db.outage().await;
    let down = store.ping().await;
    outage.end().await;

    assert!(down.is_err(), "ping answered while every table was away");
    store.ping().await.unwrap();
}

#[tokio::test]
async fn commits_fail_and_reads_work_while_the_store_refuses_writes() {
    let (store, db, _dir) = test_store().await;
    let campaign_pk = campaign(&store).await;
    let batch = Batch {
        registrations: vec![Register {
            campaign_pk,
            messages: vec![message("wamid.1")],
        }],
        ..Batch::default()
    };

    let outage = db.refuse_writes().await;
    let refused = store.commit(std::sync::Arc::new(batch.clone()), 2).await;
    let counters = store.campaign_counters(campaign_pk).await;
    outage.end().await;

    assert!(
        refused.is_err(),
        "a commit went through while writes were refused"
    );
    let counters = counters.expect("reads work while writes are refused");
    assert_eq!(counters.unwrap().total, 0);
    store
        .commit(std::sync::Arc::new(batch.clone()), 3)
        .await
        .unwrap();
    assert_eq!(db.recount("c1").await.checked("c1")["total"], 1);
}

/// Counts the rows of `messages` through `session`.
async fn count(session: &mut sqlx::PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM messages")
        .fetch_one(session)
        .await
}

/// Counts the databases named `name` on the server `server` is on.
async fn databases_named(server: &TestDb, name: &str) -> i64 {
    server
        .fetch(
            "SELECT COUNT(*) FROM pg_database WHERE datname = $1",
            &[db::Bind::Text(name.to_owned())],
        )
        .await[0][0]
        .int()
}

#[tokio::test]
async fn a_fresh_postgres_database_answers_and_is_dropped_with_its_last_handle() {
    let db = TestDb::postgres_fresh();
    let name = db.postgres_name().unwrap().to_owned();
    let server = TestDb::from_url(&db::postgres_server_url());

    let row = db
        .fetch(
            "SELECT 1 AS one, 2::int2 AS small, 3::int8 AS big, true AS yes, false AS no,
                    NULL::bigint AS nothing, 'v'::varchar AS v, 't' AS t, current_database() AS here",
            &[],
        )
        .await
        .remove(0);

    assert!(
        name.starts_with(&format!("statushub_t_{}_", std::process::id())),
        "{name}"
    );
    assert!(db.url().starts_with("postgres") && db.url().contains(&name));
    assert_eq!(
        TestDb::from_url(&db.url()).postgres_name(),
        Some(name.as_str())
    );
    assert_eq!(
        (&row["one"], &row["small"], &row["big"]),
        (&Cell::Int(1), &Cell::Int(2), &Cell::Int(3))
    );
    assert_eq!((&row["yes"], &row["no"]), (&Cell::Int(1), &Cell::Int(0)));
    assert_eq!(row["nothing"], Cell::Null);
    assert_eq!((row["v"].text(), row["t"].text()), ("v", "t"));
    assert_eq!(row["here"].text(), name);
    assert_eq!(databases_named(&server, &name).await, 1);
    let clone = db.clone();
    drop(db);
    assert_eq!(databases_named(&server, &name).await, 1, "a clone keeps it");
    drop(clone);
    assert_eq!(
        databases_named(&server, &name).await,
        0,
        "still there once its last handle went"
    );
}

#[tokio::test]
async fn each_postgres_outage_breaks_a_live_session_and_end_mends_it() {
    use sqlx::Connection as _;
    // Arrange: a schema of the hub's shape and a session held open, as the
    // hub's pool holds one, with its statements prepared.
    let db = TestDb::postgres_fresh();
    db.tamper(&[
        "CREATE TABLE messages (id bigint PRIMARY KEY)",
        "CREATE TABLE status_events (id bigint, message_id bigint REFERENCES messages (id))",
        "INSERT INTO messages VALUES (1)",
    ])
    .await;
    let mut hub = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    assert_eq!(count(&mut hub).await.unwrap(), 1);

    // Every table away: the prepared read fails, then works again.
    let outage = db.outage().await;
    let away = count(&mut hub).await;
    outage.end().await;
    assert!(away.is_err(), "read a table that was away: {away:?}");
    assert_eq!(count(&mut hub).await.unwrap(), 1);

    // Writes refused: a write fails, a read works; then writes work.
    let outage = db.refuse_writes().await;
    let write = sqlx::query("INSERT INTO status_events VALUES (1, 1)")
        .execute(&mut hub)
        .await;
    let read_meanwhile = count(&mut hub).await;
    outage.end().await;
    let error = write.expect_err("a write went through while writes were refused");
    assert!(error.to_string().contains("writes refused"), "{error}");
    assert_eq!(read_meanwhile.unwrap(), 1);
    sqlx::query("INSERT INTO status_events VALUES (1, 1)")
        .execute(&mut hub)
        .await
        .unwrap();
    assert_eq!(db.count_rows("status_events").await, 1);

    // Sessions ended: the held one breaks, a new one works.
    assert_eq!(db.terminate_connections().await, 1);
    assert!(
        count(&mut hub).await.is_err(),
        "a terminated session answered"
    );
    let mut hub = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    assert_eq!(count(&mut hub).await.unwrap(), 1);

    // Connections refused: the held session breaks and no new one opens
    // until the end.
    let outage = db.refuse_connections().await;
    let held = count(&mut hub).await;
    let new = sqlx::PgConnection::connect(&db.url()).await;
    outage.end().await;
    assert!(held.is_err(), "a session survived refuse_connections");
    assert!(new.is_err(), "a connection opened while they were refused");
    let mut hub = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    assert_eq!(count(&mut hub).await.unwrap(), 1);
}

/// A WhatsApp-like update of `id` to `status`, keyed as the provider
/// notification it stands for: the same on every store that receives it,
/// with a timestamp fixed by the notification.
fn notification(id: &str, status: Status) -> StatusUpdate {
    let mut update = update(id, status, &format!("k:{id}:{}", status.as_str()));
    update.timestamp_ms += 1_000 * mask_of(status);
    update
}

/// The seen mask one status gives a message, by the spec's implications
/// (clicked ⇒ read ⇒ delivered ⇒ sent, complained ⇒ delivered), in the
/// bits of the `seen` column: sent 1, delivered 2, read 4, clicked 8,
/// complained 16, failed 32.
fn mask_of(status: Status) -> i64 {
    match status {
        Status::Sent => 1,
        Status::Delivered => 1 | 2,
        Status::Read => 1 | 2 | 4,
        Status::Clicked => 1 | 2 | 4 | 8,
        Status::Complained => 1 | 2 | 16,
        Status::Failed => 32,
    }
}

/// Two stores over one PostgreSQL database (two instances' worth: each its
/// own writer connection, so their commits run at once) commit 200 batches
/// each of updates to the same messages of the same two campaigns (the
/// same notifications reaching both, campaigns in either order), while one
/// registers new message ids and the other buffers statuses for those very
/// ids, at the same moment. At the end the counters equal a recount of
/// the messages, every message holds exactly what it was sent, and no
/// buffered status is stranded for a registered message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_postgres_stores_committing_at_once_keep_counters_exact_and_strand_nothing() {
    use rand::{Rng as _, SeedableRng as _};
    use std::collections::BTreeMap;

    // Arrange: two campaigns of 20 messages, registered through `one`.
    let seed: u64 = rand::random();
    let db = TestDb::postgres_fresh();
    let settings = StoreSettings::new(db.url());
    let one = Store::connect(&settings).await.unwrap();
    let two = Store::connect(&settings).await.unwrap();
    let ensure = Batch {
        campaigns: ["c1", "c2"]
            .map(|campaign_id| EnsureCampaign {
                tenant_id: "t1".to_owned(),
                campaign_id: campaign_id.to_owned(),
            })
            .into(),
        ..Batch::default()
    };
    let campaigns = one
        .commit(std::sync::Arc::new(ensure.clone()), 1)
        .await
        .unwrap()
        .campaigns;
    let mut known: Vec<(i64, i64, String)> = Vec::new();
    for (n, campaign_pk) in campaigns.iter().enumerate() {
        let ids: Vec<String> = (0..20).map(|i| format!("wamid.pg{n}.{i}")).collect();
        let batch = Batch {
            registrations: vec![Register {
                campaign_pk: *campaign_pk,
                messages: ids.iter().map(|id| message(id)).collect(),
            }],
            ..Batch::default()
        };
        one.commit(std::sync::Arc::new(batch.clone()), 2)
            .await
            .unwrap();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        for (id, found) in one.resolve(Channel::Whatsapp, &refs).await.unwrap() {
            known.push((found.campaign_pk, found.message_pk, id));
        }
    }
    assert_eq!(known.len(), 40);

    // Act: each store commits 200 batches of updates; meanwhile the two
    // race 100 registrations (on one) against buffers of statuses for the
    // same ids (on the other), alternating which store does which.
    let applies = |store: Store, stream: u64| {
        let known = known.clone();
        let campaigns = campaigns.clone();
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ stream);
            let mut sent: Vec<(String, Status)> = Vec::new();
            for n in 0..200 {
                let mut applies: Vec<Apply> = campaigns
                    .iter()
                    .map(|campaign_pk| Apply {
                        campaign_pk: *campaign_pk,
                        updates: Vec::new(),
                    })
                    .collect();
                for _ in 0..rng.gen_range(2..=8) {
                    let (campaign_pk, message_pk, id) = &known[rng.gen_range(0..known.len())];
                    let status = Status::ALL[rng.gen_range(0..Status::ALL.len())];
                    sent.push((id.clone(), status));
                    let apply = applies
                        .iter_mut()
                        .find(|apply| apply.campaign_pk == *campaign_pk)
                        .unwrap();
                    apply
                        .updates
                        .push((*message_pk, notification(id, status).into()));
                }
                applies.retain(|apply| !apply.updates.is_empty());
                if rng.gen_bool(0.5) {
                    applies.reverse();
                }
                let batch = Batch {
                    applies,
                    ..Batch::default()
                };
                store
                    .commit(std::sync::Arc::new(batch.clone()), 10 + n)
                    .await
                    .unwrap_or_else(|error| panic!("seed {seed}: batch {n}: {error:?}"));
            }
            sent
        })
    };
    let races = {
        let (one, two) = (one.clone(), two.clone());
        let campaign_pk = campaigns[0];
        tokio::spawn(async move {
            let mut buffered: Vec<(String, Status)> = Vec::new();
            for round in 0..100 {
                let ids: Vec<String> = (0..3).map(|i| format!("wamid.race{round}.{i}")).collect();
                let (registering, buffering) = if round % 2 == 0 {
                    (&one, &two)
                } else {
                    (&two, &one)
                };
                let register = Batch {
                    registrations: vec![Register {
                        campaign_pk,
                        messages: ids.iter().map(|id| message(id)).collect(),
                    }],
                    ..Batch::default()
                };
                let statuses = [Status::Delivered, Status::Read, Status::Failed];
                let updates: Vec<StatusUpdate> = ids
                    .iter()
                    .zip(statuses)
                    .map(|(id, status)| notification(id, status))
                    .collect();
                let buffer = Batch {
                    buffers: vec![Buffer {
                        updates: updates.iter().cloned().map(Into::into).collect(),
                    }],
                    ..Batch::default()
                };
                let (registered, outcomes) = tokio::join!(
                    registering.commit(std::sync::Arc::new(register.clone()), 1_000 + round),
                    buffering.commit(std::sync::Arc::new(buffer.clone()), 1_000 + round)
                );
                let registered = registered.unwrap();
                assert_eq!(registered.registrations[0].receipt.registered, 3);
                // What found its message registered meanwhile is applied
                // to it, as the hub routes it again.
                for (update, outcome) in updates.into_iter().zip(&outcomes.unwrap().buffers[0]) {
                    buffered.push((update.provider_message_id.clone(), update.status.unwrap()));
                    match outcome {
                        UpdateOutcome::Buffered => {}
                        UpdateOutcome::Known(found) => {
                            let batch = Batch {
                                applies: vec![Apply {
                                    campaign_pk: found.campaign_pk,
                                    updates: vec![(found.message_pk, update.into())],
                                }],
                                ..Batch::default()
                            };
                            let applied = buffering
                                .commit(std::sync::Arc::new(batch.clone()), 2_000 + round)
                                .await
                                .unwrap();
                            assert!(matches!(
                                applied.applies[0].outcomes[0],
                                UpdateOutcome::Applied { changed: true }
                            ));
                        }
                        other => panic!("round {round}: buffered as {other:?}"),
                    }
                }
            }
            buffered
        })
    };
    let (by_one, by_two, raced) =
        tokio::join!(applies(one.clone(), 1), applies(two.clone(), 2), races);
    let sent: Vec<(String, Status)> = [by_one.unwrap(), by_two.unwrap(), raced.unwrap()].concat();

    // Assert: counters are a recount, on both stores.
    for (campaign_pk, campaign) in campaigns.iter().zip(["c1", "c2"]) {
        let counts = db.recount(campaign).await.checked(campaign);
        for store in [&one, &two] {
            let counters = store
                .campaign_counters(*campaign_pk)
                .await
                .unwrap()
                .unwrap();
            let mut live = serde_json::to_value(&counters).unwrap();
            for key in ["tenant_id", "campaign_id", "version", "updated_at"] {
                live.as_object_mut().unwrap().remove(key);
            }
            assert_eq!(live, counts, "seed {seed}: {campaign}");
        }
    }
    // Nothing is left buffered: every status raced with its registration
    // reached its message.
    let stranded: Vec<String> = db
        .fetch(
            "SELECT provider_message_id FROM unmatched_statuses ORDER BY id",
            &[],
        )
        .await
        .iter()
        .map(|row| row[0].text().to_owned())
        .collect();
    assert!(
        stranded.is_empty(),
        "seed {seed}: buffered statuses stranded for registered messages: {stranded:?}"
    );
    // Every message holds exactly the statuses sent to it, whichever store
    // took them.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for (id, status) in &sent {
        *expected.entry(id.clone()).or_default() |= mask_of(*status);
    }
    let stored: BTreeMap<String, i64> = db
        .fetch("SELECT provider_message_id, seen FROM messages", &[])
        .await
        .iter()
        .map(|row| (row[0].text().to_owned(), row[1].int()))
        .collect();
    assert_eq!(stored.len(), 40 + 300);
    for (id, seen) in &stored {
        let expected = expected.get(id).copied().unwrap_or(0);
        assert_eq!(*seen, expected, "seed {seed}: {id}");
    }
    for round in [0, 1, 50, 99] {
        let id = format!("wamid.race{round}.1");
        assert_eq!(db.buffered("whatsapp", &id).await, 0);
        let view = one.message(Channel::Whatsapp, &id).await.unwrap().unwrap();
        assert_eq!(view.status, statushub::domain::CurrentStatus::Read, "{id}");
        assert_eq!(view.timeline.len(), 1, "{id}");
    }
}
