//! What the HTTP edge answers to whatever a client sends: a panicking handler, NUL characters,
//! JSON nested too deep, unknown routes and methods, long URIs, oversized POS bodies, probes of
//! the operator API and of Mini App organizations. Every answer is the JSON error shape.

use axum::routing::get;
use e2e::{ADMIN_TOKEN, BOT_TOKEN, TestApp, send, signed_init_data};
use loyalty::queue::Stream;
use reqwest::Method;
use serde_json::{Value, json};

async fn receipts_published(app: &TestApp) -> u32 {
    let queue = app.state.broker.topology().main(Stream::Receipts);
    app.queue_depth(&queue).await
}

/// Sends a request; returns its status, the value of `header` and the JSON body (Null if none).
async fn send_reading(
    request: reqwest::RequestBuilder,
    header: &str,
) -> (u16, Option<String>, Value) {
    let response = request.send().await.expect("answer");
    let value = response
        .headers()
        .get(header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = response.status().as_u16();
    (status, value, response.json().await.unwrap_or(Value::Null))
}

fn assert_error(status: u16, body: &Value, expected: (u16, &str)) {
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (expected.0, Some(expected.1)),
        "{body}"
    );
    assert!(body["error"]["message"].as_str().is_some(), "{body}");
}

#[tokio::test]
async fn a_panicking_handler_answers_the_json_500_and_the_server_keeps_serving() {
    async fn boom() -> &'static str {
        panic!("a bug")
    }
    let routes = axum::Router::new()
        .route("/boom", get(boom))
        .route("/fine", get(|| async { "fine" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        axum::serve(listener, ingest::edge::layers(routes))
            .await
            .expect("serve");
    });
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let (status, body) = send(http.get(format!("{base}/boom"))).await;
        assert_error(status, &body, (500, "internal"));
        assert!(
            !body.to_string().contains("a bug"),
            "the panic stays in the log: {body}"
        );
        let (status, body) = send(http.get(format!("{base}/fine"))).await;
        assert_eq!((status, body), (200, json!("fine")));
    }
    server.abort();
}

#[tokio::test]
async fn nul_in_any_json_text_is_a_422_naming_the_field() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let customer = app.customer(org, "Alex").await;
    let cases = [
        (
            "/admin/v1/orgs".to_owned(),
            json!({"name": "Sh\u{0}op"}),
            "name",
        ),
        (
            format!("/admin/v1/orgs/{org}/integrations"),
            json!({"system": "\u{0}"}),
            "system",
        ),
        (
            format!("/admin/v1/orgs/{org}/customers"),
            json!({"first_name": "Al\u{0}ex"}),
            "first_name",
        ),
        (
            format!("/admin/v1/orgs/{org}/bills"),
            json!({"customer_id": customer, "items": [{"name": "ok", "quantity": 1, "unit_price": 5},
                                                      {"name": "x\u{0}", "quantity": 1, "unit_price": 5}]}),
            "items[1].name",
        ),
        (
            format!("/admin/v1/orgs/{org}/customers/{customer}/bonuses"),
            json!({"amount": 5, "description": "gift\u{0}"}),
            "description",
        ),
        (
            format!("/admin/v1/orgs/{org}/bills"),
            json!({"customer_id": customer, "items": [{"name": "ok", "quantity": 1, "unit_price": 5, "n\u{0}": 1}]}),
            "items[0].n\\u0000",
        ),
    ];
    for (path, body, field) in cases {
        let (status, answer) = app.post(&path, &body).await;
        assert_error(status, &answer, (422, "invalid"));
        assert_eq!(answer["error"]["field"], field, "{path}: {answer}");
    }
    let (status, answer) = send(
        app.admin(Method::PATCH, &format!("/admin/v1/orgs/{org}"))
            .json(&json!({"address": "Street\u{0}1"})),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["field"].clone()),
        (422, json!("address"))
    );

    // A backslash before `u0000` is text, not a NUL.
    let (status, created) = app
        .post("/admin/v1/orgs", &json!({"name": "\\u0000"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let (_, stored) = app.get(&format!("/admin/v1/orgs/{}", created["id"])).await;
    assert_eq!(stored["name"], "\\u0000", "{stored}");

    let token = app.pos_token(org, "POS").await;
    let mut receipt = e2e::receipt_event("ev-nul", "r-1", None, "100");
    receipt["data"]["items"][0]["name"] = json!("Tea\u{0}");
    let (status, answer) = app.post_receipt(&token, &receipt).await;
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (422, Some("data.items[0].name")),
        "{answer}"
    );
    let receipt = e2e::receipt_event("ev\u{0}nul", "r-1", None, "100");
    let (status, answer) = app.post_receipt(&token, &receipt).await;
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (422, Some("id")),
        "{answer}"
    );
    assert_eq!(receipts_published(&app).await, 0);
}

#[tokio::test]
async fn nul_in_a_path_or_query_parameter_is_a_422_naming_it() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let (status, answer) = app
        .get(&format!("/admin/v1/orgs/{org}/customers?limit=5&q=Al%00ex"))
        .await;
    assert_error(status, &answer, (422, "invalid"));
    assert_eq!(answer["error"]["field"], "q", "{answer}");
    let customer = app.customer(org, "Alex").await;
    let (status, answer) = app
        .post(
            &format!("/admin/v1/orgs/{org}/receipts/r%00/attach"),
            &json!({"customer_id": customer}),
        )
        .await;
    assert_error(status, &answer, (422, "invalid"));
    assert_eq!(answer["error"]["field"], "path", "{answer}");
}

#[tokio::test]
async fn a_signed_mini_app_user_with_a_nul_in_the_name_is_stored_without_it() {
    let app = TestApp::spawn().await;
    let org = app.org_with_bot(BOT_TOKEN).await;
    let init = signed_init_data(
        &json!({"id": 77, "first_name": "Al\u{0}ex", "last_name": "\u{0}", "username": "al\u{0}"}),
        BOT_TOKEN,
    );
    let (status, me) = send(
        app.http
            .get(app.url(&format!("/app/v1/orgs/{org}/me")))
            .header("Authorization", format!("tma {init}")),
    )
    .await;
    assert_eq!(
        (status, me["first_name"].clone(), me["username"].clone()),
        (200, json!("Alex"), json!("al")),
        "{me}"
    );
}

/// A receipt whose `extras.note` is `levels` arrays deep: the body is 3 levels more.
fn receipt_with_deep_note(event_id: &str, levels: usize) -> Value {
    let mut note = json!("deep");
    for _ in 0..levels {
        note = json!([note]);
    }
    let mut receipt = e2e::receipt_event(event_id, event_id, None, "100");
    receipt["data"]["extras"]["note"] = note;
    receipt
}

#[tokio::test]
async fn json_nested_deeper_than_32_levels_is_refused_at_ingest() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let token = app.pos_token(org, "POS").await;

    let (status, _) = app
        .post_receipt(&token, &receipt_with_deep_note("ev-32", 29))
        .await;
    assert_eq!(status, 200, "32 levels are accepted");
    for (event, levels) in [("ev-33", 30), ("ev-133", 130)] {
        let (status, answer) = app
            .post_receipt(&token, &receipt_with_deep_note(event, levels))
            .await;
        assert_error(status, &answer, (422, "invalid"));
        assert_eq!(answer["error"]["field"], "body", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("32 levels")),
            "{answer}"
        );
    }
    app.wait_queue_depth(&app.state.broker.topology().main(Stream::Receipts), 1)
        .await;

    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!({"a": deep});
    }
    let (status, answer) = app
        .post("/admin/v1/orgs", &json!({"name": "Shop", "address": deep}))
        .await;
    assert_error(status, &answer, (422, "invalid"));
    assert_eq!(answer["error"]["field"], "body", "{answer}");
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_long_uris_answer_in_the_json_error_shape() {
    let app = TestApp::spawn().await;

    let (status, body) = send(app.http.get(app.url("/no/such/route"))).await;
    assert_error(status, &body, (404, "not_found"));

    for (request, allowed) in [
        (app.http.delete(app.url("/healthz")), "GET,HEAD"),
        (app.admin(Method::PUT, "/admin/v1/orgs"), "POST"),
    ] {
        let (status, allow, body) = send_reading(request, "allow").await;
        assert_error(status, &body, (405, "method_not_allowed"));
        assert_eq!(allow.as_deref(), Some(allowed));
    }

    for length in [ingest::edge::URI_LIMIT, 60 * 1024] {
        let long = format!("/healthz?pad={}", "x".repeat(length));
        let (status, body) = send(app.http.get(app.url(&long))).await;
        assert_error(status, &body, (414, "uri_too_long"));
    }
    let (status, _) = send(app.http.get(app.url("/healthz?pad=short"))).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_oversized_pos_receipt_is_the_json_413() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let token = app.pos_token(org, "POS").await;
    let (status, content_type, body) = send_reading(
        app.http
            .post(app.url("/api/v2/receipts"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(vec![b' '; ingest::extract::BODY_LIMIT + 1]),
        "content-type",
    )
    .await;
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_error(status, &body, (413, "payload_too_large"));
}

#[tokio::test]
async fn the_root_sends_a_browser_to_the_dashboard() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let (status, location, _) = send_reading(http.get(app.url("/")), "location").await;
    assert_eq!((status, location.as_deref()), (303, Some("/admin")));
}

#[tokio::test]
async fn operator_routes_cannot_be_probed_without_the_token() {
    let app = TestApp::spawn().await;
    for (method, path) in [
        (Method::GET, "/admin/v1/no-such-route"),
        (Method::GET, "/admin/v1/orgs/1/no-such-route"),
        (Method::PUT, "/admin/v1/orgs"),
    ] {
        let (status, body) = send(app.http.request(method.clone(), app.url(path))).await;
        assert_error(status, &body, (401, "unauthorized"));
    }
    let (status, body) = app.get("/admin/v1/no-such-route").await;
    assert_error(status, &body, (404, "not_found"));
}

#[tokio::test]
async fn the_mini_app_answers_an_unknown_organization_with_the_same_401_as_a_known_one() {
    let app = TestApp::spawn().await;
    let org = app.org_with_bot(BOT_TOKEN).await;
    let foreign = signed_init_data(
        &json!({"id": 5, "first_name": "Eve"}),
        "987654321:another-bot-entirely-here",
    );
    let mut answers = Vec::new();
    for path in [
        format!("/app/v1/orgs/{org}/me"),
        format!("/app/v1/orgs/{}/me", org + 1000),
        "/app/v1/orgs/not-a-number/me".to_owned(),
    ] {
        answers.push(
            send(
                app.http
                    .get(app.url(&path))
                    .header("Authorization", format!("tma {foreign}")),
            )
            .await,
        );
    }
    assert_eq!(answers[0].0, 401, "{answers:?}");
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "no hint which organizations exist: {answers:?}"
    );
    let (status, _) = send(
        app.http
            .get(app.url(&format!("/app/v1/orgs/{org}/me")))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn every_answer_echoes_its_request_id_or_a_fresh_one() {
    let app = TestApp::spawn().await;
    let request_id = |request: reqwest::RequestBuilder| send_reading(request, "x-request-id");

    // A sane id from the client (a proxy's, a trace's) is kept and echoed, on errors too.
    let (status, echoed, _) = request_id(
        app.http
            .get(app.url("/healthz"))
            .header("x-request-id", "lb-7f3a.42:9"),
    )
    .await;
    assert_eq!((status, echoed.as_deref()), (200, Some("lb-7f3a.42:9")));
    let (status, echoed, _) = request_id(
        app.http
            .get(app.url("/no/such/route"))
            .header("x-request-id", "abc-1"),
    )
    .await;
    assert_eq!((status, echoed.as_deref()), (404, Some("abc-1")));

    // None given: a fresh UUID, another for every request.
    let (_, first, _) = request_id(app.http.get(app.url("/healthz"))).await;
    let (_, second, _) = request_id(app.http.get(app.url("/healthz"))).await;
    let (first, second) = (first.expect("an id"), second.expect("an id"));
    assert_eq!(first.len(), 36, "{first}");
    assert_ne!(first, second);

    // One that could not name a request in the logs is replaced.
    for insane in [
        "has space",
        "x".repeat(129).as_str(),
        "quote\"d",
        "tab\tbed",
    ] {
        let (_, echoed, _) = request_id(
            app.http
                .get(app.url("/healthz"))
                .header("x-request-id", insane),
        )
        .await;
        let echoed = echoed.expect("an id");
        assert_ne!(echoed, insane);
        assert_eq!(echoed.len(), 36, "{echoed}");
    }
}
