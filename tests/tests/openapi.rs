//! The OpenAPI document states what the server does: every route with its credentials, every
//! answer a route can give, the limits the server enforces, and the links a stateful run follows.
//! (`.ci/schemathesis` fuzzes the running services against it; these pin the parts it relies on.)

use e2e::{TestApp, send};
use serde_json::{Value, json};

async fn document(app: &TestApp) -> Value {
    let (status, doc) = send(app.http.get(app.url("/openapi.json"))).await;
    assert_eq!(status, 200);
    doc
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            found.push((method.clone(), path.clone(), operation));
        }
    }
    found
}

#[tokio::test]
async fn the_document_describes_the_pos_mini_app_and_health_routes_with_their_credentials() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let security = |method: &str, path: &str| {
        doc["paths"][path][method]["security"][0]
            .as_object()
            .and_then(|s| s.keys().next().cloned())
    };
    for path in ["/api/v2/hello", "/api/v2/list", "/api/v2/bill/byid/{id}"] {
        assert_eq!(security("get", path).as_deref(), Some("pos"), "{path}");
    }
    assert_eq!(security("post", "/api/v2/receipts").as_deref(), Some("pos"));
    for path in ["/app/v1/orgs/{org}/me", "/app/v1/orgs/{org}/me/history"] {
        assert_eq!(security("get", path).as_deref(), Some("tma"), "{path}");
    }
    assert_eq!(
        security("post", "/app/v1/orgs/{org}/me/promo").as_deref(),
        Some("tma")
    );
    assert_eq!(security("post", "/admin/v1/orgs").as_deref(), Some("admin"));
    for path in ["/healthz", "/readyz"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path}");
        assert_eq!(security("get", path), None, "{path} needs no credentials");
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["pos"]["scheme"], "bearer");
    assert_eq!(schemes["tma"]["in"], "header");
    assert_eq!(schemes["tma"]["name"], "Authorization");
}

#[tokio::test]
async fn every_operation_documents_the_errors_its_route_can_answer() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    for (method, path, operation) in operations(&doc) {
        let responses = &operation["responses"];
        let mut expected = Vec::new();
        if operation["security"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
        {
            expected.push("401");
        }
        if operation.get("requestBody").is_some() {
            expected.extend(["400", "413", "422"]);
        }
        let parameters = operation["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if parameters.iter().any(|p| p["in"] == "path") {
            if path.starts_with("/app/") {
                // An unknown organization is the Mini App's 401, never a 404.
                assert!(
                    responses.get("404").is_none(),
                    "{method} {path} documents a 404 it never answers"
                );
            } else {
                expected.push("404");
            }
        }
        if parameters.iter().any(|p| p["in"] == "query") {
            expected.push("422");
        }
        // `/readyz` answers its 503 with what it checked; `/healthz` needs nothing.
        if path != "/healthz" && path != "/readyz" {
            expected.push("503");
        }
        for status in expected {
            assert_eq!(
                responses[status]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{method} {path} does not document its {status}"
            );
        }
    }
}

/// The bounds the document states are the server's: the largest value it accepts, and the next one
/// it refuses.
#[tokio::test]
async fn the_document_states_the_limits_the_server_enforces() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let schemas = &doc["components"]["schemas"];
    let bound = |schema: &str, keyword: &str| schemas[schema]["anyOf"][0][keyword].as_f64();
    assert_eq!(bound("Percent", "maximum"), Some(100.0));
    assert_eq!(bound("Percent", "minimum"), Some(0.0));
    assert_eq!(bound("Amount", "exclusiveMinimum"), Some(0.0));
    assert_eq!(bound("Amount", "maximum"), Some(1e12));
    assert_eq!(bound("Amount", "multipleOf"), Some(0.01));
    assert_eq!(
        schemas["OrgChanges"]["properties"]["name"]["maxLength"],
        200
    );
    let new_org = &doc["paths"]["/admin/v1/orgs"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    assert_eq!(new_org["$ref"], "#/components/schemas/NewOrg");
    assert_eq!(schemas["NewOrg"]["allOf"][1]["required"], json!(["name"]));

    let settings = |percentage: &str| {
        json!({"name": "Shop", "bonus_program_settings": {
        "invoice_bonus_percentage": percentage, "referral_promo_bonus": 0,
        "referrer_first_purchase_percentage": 0}})
    };
    assert_eq!(app.post("/admin/v1/orgs", &settings("100")).await.0, 201);
    assert_eq!(
        app.post("/admin/v1/orgs", &settings("100.0001")).await.0,
        422
    );
    assert_eq!(app.post("/admin/v1/orgs", &json!({})).await.0, 422);
    assert_eq!(
        app.post("/admin/v1/orgs", &json!({"name": " "})).await.0,
        422
    );

    let org = app.org().await;
    let customer = app.customer(org, "Ann").await;
    let bonuses = format!("/admin/v1/orgs/{org}/customers/{customer}/bonuses");
    let accrue = |amount: &str| json!({"op": "accrue", "amount": amount});
    assert_eq!(app.post(&bonuses, &accrue("1000000000000")).await.0, 201);
    assert_eq!(app.post(&bonuses, &accrue("1000000000000.01")).await.0, 422);
    assert_eq!(app.post(&bonuses, &accrue("0")).await.0, 422);
}

#[tokio::test]
async fn links_lead_from_what_was_created_to_the_routes_that_use_it() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let links = |path: &str| doc["paths"][path]["post"]["responses"]["201"]["links"].clone();
    let org_links = links("/admin/v1/orgs");
    assert_eq!(
        org_links["create_customer"]["operationId"],
        "create_customer"
    );
    assert_eq!(
        org_links["create_customer"]["parameters"]["org"],
        "$response.body#/id"
    );
    let customer_links = links("/admin/v1/orgs/{org}/customers");
    assert_eq!(
        customer_links["move_bonuses"]["parameters"]["id"],
        "$response.body#/id"
    );
    assert_eq!(
        customer_links["move_bonuses"]["parameters"]["org"],
        "$request.path.org"
    );
    let ids: Vec<&str> = operations(&doc)
        .iter()
        .filter_map(|(_, _, o)| o["operationId"].as_str())
        .collect();
    for (_, _, operation) in operations(&doc) {
        for response in operation["responses"]
            .as_object()
            .expect("responses")
            .values()
        {
            for link in response["links"]
                .as_object()
                .into_iter()
                .flat_map(|l| l.values())
            {
                let target = link["operationId"].as_str().expect("operationId");
                assert!(
                    ids.contains(&target),
                    "a link leads to {target}, which is no operation"
                );
            }
        }
    }
}
