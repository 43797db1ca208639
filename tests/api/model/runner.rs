//! Running a case against the hub, and what a run covered.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt as _;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

use super::generators::{History, Item};
use super::reference::{Model, ModelMessage, STATUSES, current};
use super::wire::{Call, Case, Notice, Wire, parse_ms};
use crate::helpers::*;

/// What the cases of a run covered: the run fails if a kind of history
/// never came up (a generator gone quiet tests nothing).
#[derive(Debug, Default)]
pub(super) struct Coverage {
    cases: usize,
    concurrent: usize,
    whatsapp_calls: usize,
    whatsapp_batches: usize,
    sns_calls: usize,
    registrations: usize,
    redeliveries: usize,
    applied_at_registration: usize,
    never_registered: usize,
    registered_twice: usize,
    failures: usize,
}

impl Coverage {
    pub(super) fn add(&mut self, history: &History, case: &Case) {
        self.cases += 1;
        self.concurrent += usize::from(history.concurrent);
        for call in &case.calls {
            match call {
                Call::WhatsApp(group) => {
                    self.whatsapp_calls += 1;
                    self.whatsapp_batches += usize::from(group.len() > 1);
                }
                Call::Sns(_) => self.sns_calls += 1,
                Call::Register { .. } => self.registrations += 1,
            }
        }
        for spec in &history.messages {
            self.redeliveries += spec.events.iter().map(|e| e.redeliveries).sum::<usize>();
            self.never_registered += usize::from(spec.registrations == 0);
            self.registered_twice += usize::from(spec.registrations == 2);
        }
        self.failures += case
            .notices
            .iter()
            .filter(|notice| notice.failure.is_some())
            .count();
        // A notification that came before its message's first registration.
        let mut registered = HashSet::new();
        for item in &history.order {
            match *item {
                Item::Register { message } => {
                    registered.insert(message);
                }
                Item::Notify { message, .. } => {
                    let later = history.messages[message].registrations > 0;
                    self.applied_at_registration +=
                        usize::from(later && !registered.contains(&message));
                }
            }
        }
    }

    pub(super) fn assert_broad(&self) {
        let all = [
            self.concurrent,
            self.cases - self.concurrent,
            self.whatsapp_calls,
            self.whatsapp_batches,
            self.sns_calls,
            self.registrations,
            self.redeliveries,
            self.applied_at_registration,
            self.never_registered,
            self.registered_twice,
            self.failures,
        ];
        assert!(all.iter().all(|count| *count > 0), "thin run: {self:#?}");
    }
}

/// Posts one call; returns its status code and JSON answer.
async fn post(app: &TestApp, case: &Case, call: &Call) -> (u16, Value) {
    let response = match call {
        Call::WhatsApp(indexes) => {
            let statuses: Vec<Value> = indexes
                .iter()
                .map(|index| match &case.notices[*index].wire {
                    Wire::WhatsApp(status) => status.clone(),
                    Wire::Sns(_) => unreachable!(),
                })
                .collect();
            app.post_whatsapp(&statushub::webhooks::whatsapp::envelope(statuses))
                .await
        }
        Call::Sns(index) => match &case.notices[*index].wire {
            Wire::Sns(envelope) => app.post_sns(envelope).await,
            Wire::WhatsApp(_) => unreachable!(),
        },
        Call::Register { campaign, messages } => {
            let body: Vec<Value> = messages
                .iter()
                .map(|message| {
                    json!({"tenant_id": case.tenant, "campaign_id": case.campaigns[*campaign],
                           "channel": case.channels[*message], "provider_message_id": case.ids[*message]})
                })
                .collect();
            app.register_with(ADMIN_TOKEN, &Value::Array(body)).await
        }
    };
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Returns `{status name: first timestamp (ms)}` of a message view's seen set.
fn seen_of(view: &Value) -> BTreeMap<String, Option<i64>> {
    view["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|seen| {
            (
                seen["status"].as_str().unwrap().to_owned(),
                seen["first_at"].as_str().map(parse_ms),
            )
        })
        .collect()
}

/// Returns a message view's timeline as sorted (event, status, ms).
fn timeline_of(view: &Value) -> Vec<(String, Option<String>, i64)> {
    let mut timeline: Vec<_> = view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            (
                event["event"].as_str().unwrap().to_owned(),
                event["status"].as_str().map(str::to_owned),
                parse_ms(event["provider_at"].as_str().unwrap()),
            )
        })
        .collect();
    timeline.sort();
    timeline
}

pub(super) async fn run_case(
    app: &TestApp,
    history: &History,
    case: &Case,
) -> Result<(), TestCaseError> {
    let mut model = Model {
        messages: vec![ModelMessage::default(); case.ids.len()],
        ..Model::default()
    };
    let token = app.tenant_token(&case.tenant, None);
    let mut stream = app.open_stream("/api/v1/stream", &token, None).await;

    // Post: one call at a time (every receipt predicted), or four at a time.
    let mut answers = Vec::new();
    let mut expected = Vec::new();
    if history.concurrent {
        answers = futures_util::stream::iter(&case.calls)
            .map(|call| post(app, case, call))
            .buffered(4)
            .collect()
            .await;
    }
    for (index, call) in case.calls.iter().enumerate() {
        let receipt = match call {
            Call::WhatsApp(indexes) => {
                let notices: Vec<&Notice> =
                    indexes.iter().map(|index| &case.notices[*index]).collect();
                model.deliver(&notices, &case.campaign_of)
            }
            Call::Sns(index) => model.deliver(&[&case.notices[*index]], &case.campaign_of),
            Call::Register { campaign, messages } => {
                model.register(*campaign, messages, &case.notices)
            }
        };
        if !history.concurrent {
            answers.push(post(app, case, call).await);
        }
        let (status, answer) = &answers[index];
        prop_assert_eq!(*status, 200, "call {} {:?}: {}", index, call, answer);
        expected.push(receipt);
    }
    if history.concurrent {
        // Racing calls split the work differently, never the totals.
        let sum = |key: &str, register: bool| -> i64 {
            case.calls
                .iter()
                .zip(&answers)
                .filter(|(call, _)| matches!(call, Call::Register { .. }) == register)
                .map(|(_, (_, answer))| answer[key].as_i64().unwrap())
                .sum()
        };
        let deliveries: i64 = history
            .messages
            .iter()
            .flat_map(|spec| &spec.events)
            .map(|event| i64::try_from(event.redeliveries).unwrap() + 1)
            .sum();
        let distinct = i64::try_from(case.notices.len()).unwrap();
        prop_assert_eq!(sum("received", false), deliveries);
        prop_assert_eq!(sum("applied", false) + sum("unmatched", false), distinct);
        prop_assert_eq!(sum("duplicates", false), deliveries - distinct);
        let registered = model.messages.iter().filter(|m| m.registered).count();
        prop_assert_eq!(sum("registered", true), i64::try_from(registered).unwrap());
    } else {
        for (index, (answer, receipt)) in answers.iter().zip(&expected).enumerate() {
            prop_assert_eq!(
                &answer.1,
                receipt,
                "receipt of call {} {:?}",
                index,
                &case.calls[index]
            );
        }
    }

    // Every message, as the API shows it.
    let mut changes = [0i64; 2];
    for (index, message) in model.messages.iter().enumerate() {
        let path = format!(
            "/api/v1/messages/{}/{}",
            case.channels[index], case.ids[index]
        );
        if !message.registered {
            let response = app.get(&path, ADMIN_TOKEN).await;
            prop_assert_eq!(
                response.status().as_u16(),
                404,
                "{} is not registered",
                path
            );
            let buffered = app
                .db
                .buffered(case.channels[index], &case.ids[index])
                .await;
            prop_assert_eq!(
                buffered,
                i64::try_from(message.buffered.len()).unwrap(),
                "buffered statuses of {}",
                path
            );
            continue;
        }
        let view = app.message(case.channels[index], &case.ids[index]).await;
        prop_assert_eq!(
            view["status"].as_str(),
            Some(current(message.seen)),
            "{}",
            view
        );
        let seen: BTreeMap<String, Option<i64>> = STATUSES
            .iter()
            .filter(|(bit, _)| message.seen & bit != 0)
            .map(|(bit, name)| ((*name).to_owned(), message.first.get(bit).copied()))
            .collect();
        prop_assert_eq!(seen_of(&view), seen, "seen set of {}", view);
        let mut timeline: Vec<(String, Option<String>, i64)> = message
            .timeline
            .iter()
            .map(|(event, status, ts)| (event.clone(), status.map(str::to_owned), *ts))
            .collect();
        timeline.sort();
        prop_assert_eq!(timeline_of(&view), timeline, "timeline of {}", view);
        match &message.failure {
            None => prop_assert!(view["error"].is_null(), "no failure expected: {}", view),
            Some(failure) => {
                prop_assert_eq!(
                    view["error"]["title"].as_str(),
                    Some(failure.title.as_str()),
                    "earliest failure of {}",
                    view
                );
                let code = view["error"]["code"].as_str().unwrap_or_default();
                for part in &failure.code_parts {
                    prop_assert!(code.contains(part.as_str()), "code {} of {}", code, view);
                }
            }
        }
        changes[case.campaign_of[index]] += i64::try_from(
            view["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|event| event["changed"] == true)
                .count(),
        )
        .unwrap();
    }

    // Every campaign: counters against the model, the SQL recount and the
    // stored row; the version against its own bookkeeping.
    let mut finals = BTreeMap::new();
    for (campaign, name) in case.campaigns.iter().enumerate() {
        if !model.exists[campaign] {
            continue;
        }
        let metrics = app.assert_counts_agree(name).await;
        // Funnel over time, latency, failure reasons and cost against a
        // recount of the stored rows; each priced message counted once.
        let analytics = crate::analytics::assert_analytics_agree(app, &case.tenant, name).await;
        let priced = model
            .messages
            .iter()
            .enumerate()
            .filter(|(index, message)| {
                message.registered
                    && case.campaign_of[*index] == campaign
                    && case.channels[*index] == "whatsapp"
                    && message.timeline.iter().any(|(event, ..)| {
                        matches!(event.as_str(), "sent" | "delivered" | "read" | "played")
                    })
            })
            .count();
        let cost = &analytics["cost"];
        prop_assert_eq!(
            cost["billable"].as_i64().unwrap() + cost["free"].as_i64().unwrap(),
            i64::try_from(priced).unwrap(),
            "priced messages of {}: {}",
            name,
            cost
        );
        prop_assert_eq!(
            counts_only(&metrics),
            model.counts(campaign, &case.campaign_of),
            "counters of {}",
            name
        );
        let registrations = case
            .calls
            .iter()
            .zip(&answers)
            .filter(|(call, (_, answer))| {
                matches!(call, Call::Register { campaign: of, .. } if *of == campaign)
                    && answer["registered"].as_i64() > Some(0)
            })
            .count();
        // Every registration and every change took one version.
        prop_assert_eq!(
            metrics["version"].as_i64(),
            Some(i64::try_from(registrations).unwrap() + changes[campaign]),
            "version of {}",
            name
        );
        if !history.concurrent {
            prop_assert_eq!(metrics["version"].as_i64(), Some(model.versions[campaign]));
        }
        finals.insert(name.clone(), metrics);
    }

    // The live stream ends on the same counters.
    if !finals.is_empty() {
        let mut latest: BTreeMap<String, Value> = BTreeMap::new();
        stream
            .until(Duration::from_secs(20), |event| {
                if let Ok(data) = serde_json::from_str::<Value>(&event.data) {
                    if let Some(campaign) = data["campaign_id"].as_str() {
                        latest.insert(campaign.to_owned(), data);
                    }
                }
                finals.iter().all(|(name, metrics)| {
                    latest
                        .get(name)
                        .is_some_and(|data| data["version"] == metrics["version"])
                })
            })
            .await;
        for (name, metrics) in &finals {
            prop_assert_eq!(
                counts_only(&latest[name]),
                counts_only(metrics),
                "stream of {}",
                name
            );
        }
    }
    Ok(())
}
