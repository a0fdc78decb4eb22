//! Operators see the queues and the dead letters, and replay them; a replayed receipt is still
//! applied at most once.

use e2e::{TestApp, receipt_event};
use loyalty::queue::{Handled, Stream};
use loyalty::receipts::Outcome;
use serde_json::json;

#[tokio::test]
async fn the_queues_are_listed_with_their_depths() {
    let app = TestApp::spawn().await;
    let (status, queues) = app.get("/admin/v1/ops/queues").await;
    assert_eq!(status, 200, "{queues}");
    let items = queues["items"].as_array().expect("items");
    assert_eq!(items.len(), app.state.broker.topology().queues().len());
    let dead: Vec<&serde_json::Value> = items.iter().filter(|q| q["role"] == "dead").collect();
    assert_eq!(dead.len(), 2);
    assert!(items.iter().all(|q| q["messages_ready"] == 0));
}

#[tokio::test]
async fn a_dead_receipt_is_listed_with_its_error_and_replayed_at_most_once() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let customer = app.customer(org, "Alex").await;
    let bill = app.open_bill(org, &customer, 1000).await;
    // A receipt that exhausted its attempts while the database was down lies in the dead letters.
    let event = receipt_event("ev-dead", "rc-dead", Some(bill), "1000");
    let error = "database: connection refused";
    app.bury_receipt(org, event.clone(), error).await;
    let dead_queue = app.state.broker.topology().dead(Stream::Receipts);
    app.wait_receipt(org, "ev-dead", "dead").await;

    let (status, dead) = app.get("/admin/v1/ops/dead-letters?queue=receipts").await;
    assert_eq!(status, 200, "{dead}");
    assert_eq!(dead["items"][0]["id"], "ev-dead");
    assert_eq!(dead["items"][0]["attempts"], 6);
    assert_eq!(
        dead["items"][0]["last_error"],
        "database: connection refused"
    );
    // Listing takes nothing away.
    app.wait_queue_depth(&dead_queue, 1).await;

    let worker = app.start_worker();
    let (status, replayed) = app
        .post(
            "/admin/v1/ops/dead-letters/replay",
            &json!({"queue": "receipts", "ids": ["other"]}),
        )
        .await;
    assert_eq!((status, replayed["replayed"].clone()), (200, json!([])));
    let (status, replayed) = app
        .post(
            "/admin/v1/ops/dead-letters/replay",
            &json!({"queue": "receipts"}),
        )
        .await;
    assert_eq!(
        (status, replayed["replayed"].clone()),
        (200, json!(["ev-dead"]))
    );
    app.wait_receipt(org, "ev-dead", "processed").await;
    let (status, all) = app.get("/admin/v1/ops/receipts?status=processed").await;
    assert_eq!(
        (status, all["items"][0]["event_id"].clone()),
        (200, json!("ev-dead")),
        "{all}"
    );
    let (_, other) = app
        .get(&format!("/admin/v1/ops/receipts?org={}", org + 1))
        .await;
    assert_eq!(other["items"], json!([]));
    let (status, _) = app.get("/admin/v1/ops/notifications?status=pending").await;
    assert_eq!(status, 200);

    // The same message dead and replayed again changes nothing: a worker stepped through the
    // queue finds it a duplicate.
    worker.stop().await;
    app.bury_receipt(org, event, error).await;
    let (_, replayed) = app
        .post(
            "/admin/v1/ops/dead-letters/replay",
            &json!({"queue": "receipts", "ids": ["ev-dead"]}),
        )
        .await;
    assert_eq!(replayed["replayed"], json!(["ev-dead"]));
    let handled = app
        .worker()
        .consumer(1, 10)
        .run_until_empty()
        .await
        .expect("the replay is consumed");
    assert_eq!(
        handled,
        [Handled::Done(Outcome::Duplicate)],
        "the replay is a duplicate"
    );
    let (_, read) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{customer}"))
        .await;
    assert_eq!(read["bonuses"], json!(20), "applied once");
    app.wait_queue_depth(&dead_queue, 0).await;
    let (status, _) = app
        .post(
            "/admin/v1/ops/dead-letters/replay",
            &json!({"queue": "elsewhere"}),
        )
        .await;
    assert_eq!(status, 422);
}

/// A message its consumers keep dying on (every delivery returned unacknowledged) leaves the work
/// queue for the dead letters after REDELIVERY_LIMIT deliveries, instead of looping forever (3.x)
/// or being dropped (4.x's default limit); dead letters themselves survive being listed over and
/// over.
#[tokio::test]
async fn a_poison_message_ends_in_the_dead_letters_and_stays_there() {
    use lapin::options::{BasicGetOptions, BasicNackOptions};
    use loyalty::queue::REDELIVERY_LIMIT;

    let app = TestApp::spawn().await;
    let topology = app.state.broker.topology();
    let (main, dead) = (
        topology.main(Stream::Receipts),
        topology.dead(Stream::Receipts),
    );
    app.state
        .broker
        .publish(
            &main,
            br#"{"poison": true}"#,
            lapin::BasicProperties::default().with_message_id("ev-poison".into()),
        )
        .await
        .expect("published");
    let channel = app.state.broker.channel().await.expect("channel");
    let mut deliveries = 0;
    loop {
        let Some(message) = channel
            .basic_get(main.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .expect("get")
        else {
            // Returns are applied through the queue's log: wait a moment before calling it gone.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if app.queue_depth(&main).await == 0 && app.queue_depth(&dead).await == 1 {
                break;
            }
            continue;
        };
        deliveries += 1;
        assert!(
            deliveries <= REDELIVERY_LIMIT + 1,
            "delivered {deliveries} times"
        );
        message
            .delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .expect("returned");
    }
    assert_eq!(deliveries, REDELIVERY_LIMIT + 1);

    // Listed 30 times (more than 4.x's default limit), it is still there.
    for _ in 0..30 {
        let (status, listed) = app.get("/admin/v1/ops/dead-letters?queue=receipts").await;
        assert_eq!(status, 200, "{listed}");
        assert_eq!(listed["items"][0]["id"], "ev-poison");
    }
    let (_, listed) = app.get("/admin/v1/ops/dead-letters?queue=receipts").await;
    assert_eq!(
        listed["items"][0]["last_error"],
        format!("dead-lettered by RabbitMQ from {main}: delivery_limit")
    );
    app.wait_queue_depth(&dead, 1).await;
}
