//! Identifiers an application picks are scoped to it: messages that share a `msg_id` are still
//! separate messages, and sync requests that share one are separate requests, each answered (or
//! timed out) to the connection that made it. Real `hub cloud` and `hub edge` processes.

mod common;

use async_tungstenite::tungstenite::Message as WsMessage;
use common::apps::*;
use common::{CloudSpec, Proto};
use hub::client::{self, Connection};
use hub::message::Message;

/// `msg` with the `msg_id` the application chose.
fn with_id(msg: Message, id: &str) -> Message {
    Message {
        id: id.into(),
        ..msg
    }
}

/// The next message on `ws` that is not the hub's `accepted` notice.
async fn next_answer(ws: &mut Connection) -> Message {
    loop {
        let m = client::next(ws).await.expect("open").unwrap();
        if !(is_hub_notice(&m) && m.operation == "accepted") {
            return m;
        }
    }
}

#[test]
fn messages_sharing_a_msg_id_from_two_edge_applications_all_arrive() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    let (_edge, apps) = start_connected_edge(tmp.path(), &pki, Proto::Quic, &cloud);
    let mut at_cloud = subscribe(&cloud.apps, "node/edge-node/");

    block("publish", async {
        let mut ws = [
            client::connect(&apps, "/").await.unwrap(),
            client::connect(&apps, "/").await.unwrap(),
        ];
        for (app, content) in [(0, "1"), (1, "2"), (0, "3")] {
            client::publish(
                &mut ws[app],
                &with_id(message("readings", content), "fixed-1"),
            )
            .await
            .unwrap();
        }
    });
    let got = receive(&mut at_cloud, 3);
    let contents: Vec<_> = got.iter().map(|m| number(m).unwrap()).collect();
    assert_eq!(
        contents,
        [1, 2, 3],
        "each accepted message arrives, in order"
    );
    assert!(
        got.iter().all(|m| m.id == "fixed-1"),
        "with the id its sender chose"
    );
    assert_next_is_marker(&apps, "readings", &mut at_cloud);
}

#[test]
fn requests_sharing_a_msg_id_from_two_cloud_applications_each_get_their_own_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    let (_edge, apps) = start_connected_edge(tmp.path(), &pki, Proto::Websocket, &cloud);

    // The responder collects two questions before it answers either, so both are pending at
    // once on the cloud; then it answers each with its own content.
    let mut responder = subscribe(&apps, "ping");
    let answering = std::thread::spawn(move || {
        block("answer two requests", async {
            let mut questions = Vec::new();
            while questions.len() < 2 {
                let m = client::next(&mut responder).await.expect("open").unwrap();
                if !is_hub_notice(&m) {
                    questions.push(m);
                }
            }
            for q in &questions {
                let mut answer = Message {
                    parent_id: q.id.clone(),
                    operation: "response".into(),
                    ..message(&q.resource, std::str::from_utf8(&q.content).unwrap())
                };
                answer.fill_header();
                client::publish(&mut responder, &answer).await.unwrap();
            }
            questions
        })
    });

    let (a, b, again) = block("ask", async {
        let mut a = client::connect(&cloud.apps, "/").await.unwrap();
        let mut b = client::connect(&cloud.apps, "/").await.unwrap();
        let ask = |content: &str| with_id(request("node/edge-node/ping", content), "req-1");
        a.send(WsMessage::text(ask("\"from a\"").to_json()))
            .await
            .unwrap();
        b.send(WsMessage::text(ask("\"from b\"").to_json()))
            .await
            .unwrap();
        // The same id again on a's connection while its request waits: refused, a's own scope.
        a.send(WsMessage::text(ask("\"a again\"").to_json()))
            .await
            .unwrap();
        // a gets the refusal and the answer, in whichever order they come.
        let (one, two) = (next_answer(&mut a).await, next_answer(&mut a).await);
        let (again, answer) = if is_hub_notice(&one) {
            (one, two)
        } else {
            (two, one)
        };
        (answer, next_answer(&mut b).await, again)
    });
    assert!(
        is_hub_notice(&again) && again.operation == "error" && again.parent_id == "req-1",
        "{}",
        again.to_json()
    );
    assert!(
        client::notice_error(&again).contains("still waiting"),
        "{}",
        again.to_json()
    );

    let questions = answering.join().unwrap();
    assert_ne!(
        questions[0].id, questions[1].id,
        "the responder can tell the questions apart"
    );
    for (got, want) in [(&a, "\"from a\""), (&b, "\"from b\"")] {
        assert_eq!(got.operation, "response", "{}", got.to_json());
        assert_eq!(
            got.parent_id,
            "req-1",
            "the requester sees its own id: {}",
            got.to_json()
        );
        assert_eq!(std::str::from_utf8(&got.content).unwrap(), want);
    }
}

#[test]
fn requests_sharing_a_msg_id_each_time_out_to_their_own_requester() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let spec = CloudSpec {
        apps_extra: "  request-timeout: 1\n".into(),
        ..CloudSpec::default()
    };
    let cloud = common::start_cloud(tmp.path(), &pki, &spec);
    let (_edge, apps) = start_connected_edge(tmp.path(), &pki, Proto::Websocket, &cloud);
    // Subscribed, so the requests are delivered, but it never answers.
    let mut silent = subscribe(&apps, "ping");

    let (a, b) = block("ask", async {
        let mut a = client::connect(&cloud.apps, "/").await.unwrap();
        let mut b = client::connect(&cloud.apps, "/").await.unwrap();
        let ask = |content: &str| with_id(request("node/edge-node/ping", content), "req-1");
        a.send(WsMessage::text(ask("1").to_json())).await.unwrap();
        b.send(WsMessage::text(ask("2").to_json())).await.unwrap();
        (next_answer(&mut a).await, next_answer(&mut b).await)
    });
    for got in [&a, &b] {
        assert!(
            is_hub_notice(got) && got.operation == "error",
            "{}",
            got.to_json()
        );
        assert_eq!(got.parent_id, "req-1");
        assert!(
            client::notice_error(got).contains("no response within"),
            "{}",
            got.to_json()
        );
    }
    assert_eq!(
        receive(&mut silent, 2).len(),
        2,
        "both questions reached the edge"
    );
}
