//! The harness of the end-to-end tests: each test gets its own database on the real PostgreSQL
//! (`DATABASE_URL`'s server, default the local one) and runs the real services in-process. Where
//! no PostgreSQL answers and a Docker engine is present, one is started with testcontainers.

use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The test bot's token: an organization created with it accepts init data signed with it. A test
/// that needs a second bot, or a token replaced, names that token itself.
pub const BOT_TOKEN: &str = "123456789:TEST-fake-token_for-unit-tests";

/// The legacy seed's bonus settings: 2 % of each invoice, 50 for a friend's promo code, 5 % of the
/// friend's first purchase to the referrer.
pub fn seed_settings() -> Value {
    serde_json::json!({
        "invoice_bonus_percentage": 2,
        "referral_promo_bonus": 50,
        "referrer_first_purchase_percentage": 5
    })
}

/// Init data Telegram would sign now for `user` (a JSON object) with the bot's `token`.
pub fn signed_init_data(user: &Value, token: &str) -> String {
    let now = chrono::Utc::now().timestamp().to_string();
    loyalty::init_data::sign(&[("auth_date", &now), ("user", &user.to_string())], token)
}

/// The seed export of the old system (a copy of ../shared/seeds/legacy-export.json).
pub fn legacy_export() -> Value {
    serde_json::from_str(include_str!("../fixtures/legacy-export.json")).expect("fixture parses")
}

/// The seed log of real POS traffic (a copy of ../shared/seeds/pos-log.json).
pub fn pos_log() -> Value {
    serde_json::from_str(include_str!("../fixtures/pos-log.json")).expect("fixture parses")
}

static POSTGRES: OnceCell<String> = OnceCell::const_new();

/// The URL of a PostgreSQL server's maintenance database.
async fn postgres_server() -> &'static str {
    POSTGRES
        .get_or_init(|| async {
            let url = std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
            if PgConnection::connect(&url).await.is_ok() {
                return url;
            }
            containers::postgres().await.unwrap_or_else(|| {
                panic!("PostgreSQL is not reachable at {url} and no Docker engine is available to start one")
            })
        })
        .await
}

static RABBITMQ: OnceCell<String> = OnceCell::const_new();

/// The URL of a RabbitMQ broker: `AMQP_URL` (default the local one), or one in Docker.
pub async fn amqp_url() -> &'static str {
    RABBITMQ
        .get_or_init(|| async {
            let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
            if let Ok(conn) = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await {
                if let Err(err) = conn.close(200, "probe".into()).await {
                    eprintln!("closing the RabbitMQ probe failed: {err}");
                }
                return url;
            }
            containers::rabbitmq().await.unwrap_or_else(|| {
                panic!("RabbitMQ is not reachable at {url} and no Docker engine is available to start one")
            })
        })
        .await
}

/// RabbitMQ's management API for the broker the tests use: `RABBITMQ_MANAGEMENT_URL`, or the
/// local one beside the local broker (`.ci/run` enables the plugin). None for a broker in Docker.
pub async fn management_url() -> Option<String> {
    if let Ok(url) = std::env::var("RABBITMQ_MANAGEMENT_URL") {
        return Some(url);
    }
    amqp_url()
        .await
        .contains("@127.0.0.1:5672/")
        .then(|| "http://guest:guest@127.0.0.1:15672".to_owned())
}

/// Whether the management API answers (the tests check what the services show either way).
pub async fn management_answers() -> bool {
    let Some(url) = management_url().await else {
        return false;
    };
    reqwest::get(format!("{url}/api/overview"))
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn with_database(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("DATABASE_URL is a URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

/// A database of its own for one test, migrated, dropped when the test ends.
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    name: String,
    server: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let server = postgres_server().await.to_owned();
        let name = format!("loyalty_test_{}", uuid_like());
        let mut admin = PgConnection::connect(&server)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let url = with_database(&server, &name);
        let pool = PgPoolOptions::new()
            .max_connections(30)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&url)
            .await
            .expect("connect to the test database");
        loyalty::db::migrate(&pool).await.expect("migrations apply");
        TestDb {
            pool,
            url,
            name,
            server,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // The pool's connections live on the test's runtime; `with (force)` ends them from outside.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut admin = PgConnection::connect(&server).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "drop database if exists {name} with (force)"
                )))
                .execute(&mut admin)
                .await
                .map(drop)
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("a test database was not dropped: {dropped:?}");
        }
    }
}

/// A short random name part.
pub fn uuid_like() -> String {
    format!("{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// The ingest service running in this process on a random port, with its own database.
pub struct TestApp {
    pub state: ingest::AppState,
    pub base: String,
    pub http: reqwest::Client,
    pub db: TestDb,
    _server: tokio::task::JoinHandle<()>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Ingest on the broker whose nodes `amqp_urls` name (a cluster of its own, say).
    pub async fn spawn_on(amqp_urls: Vec<String>) -> Self {
        Self::spawn_with(|config| config.backends.amqp_url = amqp_urls).await
    }

    /// [`TestApp::spawn`] with its configuration changed by `configure` first (a Bot API
    /// stand-in, a public URL, the nodes of a cluster).
    pub async fn spawn_with(configure: impl FnOnce(&mut ingest::Config)) -> Self {
        let db = TestDb::new().await;
        let mut config = ingest::Config {
            backends: loyalty_service::config::Backends {
                database_url: db.url.clone(),
                amqp_url: vec![amqp_url().await.to_owned()],
                queue_prefix: format!("test.{}.", uuid_like()),
            },
            secrets: loyalty_service::config::Secrets {
                token_keys: token_keys(),
            },
            admin_token: ADMIN_TOKEN.to_owned(),
            addr: "127.0.0.1:0".parse().expect("addr"),
            metrics_addr: "127.0.0.1:0".parse().expect("addr"),
            http: loyalty_service::server::HttpLimits {
                header_timeout_secs: 10,
                max_connections: 4096,
            },
            max_in_flight: 256,
            telegram_api_url: "http://127.0.0.1:9".into(),
            import_body_limit: 64 * 1024 * 1024,
            rabbitmq_management_url: management_url().await,
            miniapp_max_age: 86_400,
            public_url: None,
            db_pool_size: 16,
            miniapp_rate: std::num::NonZeroU32::new(5).expect("non-zero"),
            miniapp_burst: std::num::NonZeroU32::new(20).expect("non-zero"),
        };
        configure(&mut config);
        let state = ingest::AppState::new(db.pool.clone(), config).expect("ingest state");
        let served = state.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            axum::serve(listener, ingest::app(served))
                .await
                .expect("serve");
        });
        TestApp {
            state,
            base,
            http: reqwest::Client::new(),
            db,
            _server: server,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An operator request with the admin token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        send(self.admin(reqwest::Method::POST, path).json(body)).await
    }

    /// A Mini App request as Telegram user of `init` (init data signed for the organization's bot).
    pub async fn as_user(
        &self,
        method: reqwest::Method,
        path: &str,
        init: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, self.url(path))
            .header("Authorization", format!("tma {init}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        send(request).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        send(self.admin(reqwest::Method::GET, path)).await
    }

    /// Creates an organization from `fields` (the body of `POST /admin/v1/orgs`); returns its id.
    pub async fn create_org(&self, fields: &Value) -> i64 {
        let (status, body) = self.post("/admin/v1/orgs", fields).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_i64().expect("org id")
    }

    /// Creates an organization with the legacy seed's bonus settings.
    pub async fn org(&self) -> i64 {
        self.create_org(&serde_json::json!({
            "name": "Shop",
            "bonus_program_settings": seed_settings()
        }))
        .await
    }

    /// Creates an organization whose bot has `token` (and no bonus settings of its own).
    pub async fn org_with_bot(&self, token: &str) -> i64 {
        self.create_org(&serde_json::json!({"name": "Shop", "telegram_bot_token": token}))
            .await
    }

    /// Imports the seed export; returns the organization's id.
    pub async fn imported_seed(&self) -> i64 {
        let (status, body) = self.post("/admin/v1/import", &legacy_export()).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_i64().expect("org id")
    }

    pub async fn customer(&self, org: i64, first_name: &str) -> String {
        let (status, body) = self
            .post(
                &format!("/admin/v1/orgs/{org}/customers"),
                &serde_json::json!({ "first_name": first_name }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("customer id").to_owned()
    }

    /// Accrues `amount` bonuses to `customer` as an operator does by hand.
    pub async fn accrue(
        &self,
        org: i64,
        customer: impl std::fmt::Display,
        amount: impl Into<Value>,
    ) {
        let (status, body) = self
            .post(
                &format!("/admin/v1/orgs/{org}/customers/{customer}/bonuses"),
                &serde_json::json!({"op": "accrue", "amount": amount.into()}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
}

/// A worker consuming this test's receipts queue until dropped.
pub struct RunningWorker {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    /// Stops consuming and waits for in-flight receipts to be acknowledged.
    pub async fn stop(mut self) {
        // A worker that already ended has nothing to stop.
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        if let Err(err) = (&mut self.task).await {
            eprintln!("the worker ended badly: {err}");
        }
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestApp {
    /// A worker on this test's database and queues, not running: a test steps it
    /// (`worker().consumer(..).run_until_empty()`) or runs it (`run_worker`).
    pub fn worker(&self) -> workers::Worker {
        workers::Worker::new(self.db.pool.clone(), self.state.broker.clone())
    }

    /// Starts a worker on this test's database and queues.
    pub fn start_worker(&self) -> RunningWorker {
        self.run_worker(self.worker(), 4, 100)
    }

    /// A POS integration of `org`; returns its token.
    pub async fn pos_token(&self, org: i64, system: &str) -> String {
        let (status, body) = self
            .post(
                &format!("/admin/v1/orgs/{org}/integrations"),
                &serde_json::json!({ "system": system }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }

    pub async fn pos_get(&self, token: &str, path: &str) -> (u16, Value) {
        send(self.http.get(self.url(path)).bearer_auth(token)).await
    }

    pub async fn post_receipt(&self, token: &str, event: &Value) -> (u16, Value) {
        send(
            self.http
                .post(self.url("/api/v2/receipts"))
                .bearer_auth(token)
                .json(event),
        )
        .await
    }

    /// Waits (up to 30 s) until the event's receipt row has `status`; returns the row as JSON.
    pub async fn wait_receipt(&self, org: i64, event_id: &str, status: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let row: Option<Value> = sqlx::query_scalar(
                "select to_jsonb(r) - 'payload' from receipts r where org_id = $1 and event_id = $2",
            )
            .bind(org)
            .bind(event_id)
            .fetch_optional(&self.db.pool)
            .await
            .expect("query");
            if let Some(row) = &row {
                if row["status"] == status {
                    return row.clone();
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "receipt {event_id} never reached {status}: {row:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An open bill of one item for `customer`, paid with no bonuses; returns its id.
    pub async fn open_bill(&self, org: i64, customer: &str, price: u32) -> i64 {
        self.bill_paying(org, customer, &price.to_string(), None)
            .await
    }

    /// An open bill of one item at `price` for `customer`, paying `bonuses` of it from the main
    /// wallet; returns its id.
    pub async fn bill_paying(
        &self,
        org: i64,
        customer: &str,
        price: &str,
        bonuses: Option<&str>,
    ) -> i64 {
        let mut body = serde_json::json!({
            "customer_id": customer,
            "items": [{"name": "Чай", "quantity": 1, "unit_price": price}]
        });
        if let Some(amount) = bonuses {
            body["bonus_payment"] = serde_json::json!({"amount": amount, "wallet": "main"});
        }
        let (status, created) = self
            .post(&format!("/admin/v1/orgs/{org}/bills"), &body)
            .await;
        assert_eq!(status, 201, "{created}");
        created["id"].as_i64().expect("bill id")
    }

    /// Puts a receipt where a worker leaves one that failed every attempt: in the dead-letter
    /// queue (6 attempts, `error` as its last error) and recorded as dead. Returns what was published.
    pub async fn bury_receipt(&self, org: i64, event: Value, error: &str) -> Vec<u8> {
        self.bury_receipt_received(org, event, error, chrono::Utc::now())
            .await
    }

    /// [`TestApp::bury_receipt`], received by ingest at `received_at`.
    pub async fn bury_receipt_received(
        &self,
        org: i64,
        event: Value,
        error: &str,
        received_at: chrono::DateTime<chrono::Utc>,
    ) -> Vec<u8> {
        use loyalty::queue::{Stream, contract};
        let event_id = event["id"].as_str().expect("event id").to_owned();
        let message = loyalty::receipts::ReceiptMessage::new(org, 1, received_at, event);
        let mut conn = self.db.pool.acquire().await.expect("connection");
        loyalty::receipts::record_failure(&mut conn, &message, 6, error, true)
            .await
            .expect("recorded");
        let body = serde_json::to_vec(&message).expect("json");
        let topology = self.state.broker.topology();
        let properties = contract::passed_on(
            &contract::receipt_properties(&event_id, org),
            6,
            error,
            &topology.main(Stream::Receipts),
            None,
        );
        let dead = topology.dead(Stream::Receipts);
        self.state
            .broker
            .publish(&dead, &body, properties)
            .await
            .expect("published");
        body
    }

    /// Waits (up to 10 s) until one of this test's queues holds `expected` messages (a quorum
    /// queue applies returns and acknowledgements through its log, a moment later).
    pub async fn wait_queue_depth(&self, queue: &str, expected: u32) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let depth = self.queue_depth(queue).await;
            if depth == expected {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{queue} holds {depth} messages, not {expected}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Receipts of `org` applied so far.
    pub async fn processed(&self, org: i64) -> i64 {
        sqlx::query_scalar(
            "select count(*) from receipts where org_id = $1 and status = 'processed'",
        )
        .bind(org)
        .fetch_one(&self.db.pool)
        .await
        .expect("count")
    }

    /// An organization with a POS token, one customer and `n` open bills of 100 each (numbered
    /// `K0`…), created a few at a time.
    pub async fn shop_with_bills(&self, n: usize) -> Shop {
        use futures::StreamExt;
        let org = self.org().await;
        let token = self.pos_token(org, "shop").await;
        let customer = self.customer(org, "Alex").await;
        let bills = futures::stream::iter(0..n)
            .map(|i| {
                let customer = &customer;
                async move {
                    let (status, bill) = self
                        .post(
                            &format!("/admin/v1/orgs/{org}/bills"),
                            &serde_json::json!({"customer_id": customer, "number": format!("K{i}"),
                                "items": [{"name": "x", "quantity": 1, "unit_price": 100}]}),
                        )
                        .await;
                    assert_eq!(status, 201, "{bill}");
                    bill["id"].as_i64().expect("id")
                }
            })
            .buffered(8)
            .collect()
            .await;
        Shop {
            org,
            token,
            customer,
            bills,
        }
    }

    /// Waits (up to 60 s) until the `n` receipts of a [`Shop`] are applied, then checks that each
    /// was applied once: one accrual of 2 % per receipt, every bill paid. Says where the receipts
    /// are when they are not all applied in time.
    pub async fn assert_applied_exactly_once(&self, shop: &Shop, n: usize) {
        let org = shop.org;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.processed(org).await < n as i64 {
            if std::time::Instant::now() > deadline {
                let by_status: Vec<(String, i64)> = sqlx::query_as(
                    "select status || coalesce(': ' || reason, ''), count(*) from receipts group by 1",
                )
                .fetch_all(&self.db.pool)
                .await
                .expect("statuses");
                let topology = self.state.broker.topology();
                let main = self
                    .queue_depth(&topology.main(loyalty::queue::Stream::Receipts))
                    .await;
                let dead = self
                    .queue_depth(&topology.dead(loyalty::queue::Stream::Receipts))
                    .await;
                panic!(
                    "only {} of {n} processed: {by_status:?}, queue {main}, dead {dead}",
                    self.processed(org).await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, read) = self
            .get(&format!("/admin/v1/orgs/{org}/customers/{}", shop.customer))
            .await;
        assert_eq!(
            read["history"].as_array().map(Vec::len),
            Some(n),
            "one accrual per receipt"
        );
        assert_eq!(read["bonuses"], serde_json::json!(2 * n), "2 % of 100 each");
        let statuses: Vec<(String, i64)> =
            sqlx::query_as("select status, count(*) from receipts where org_id = $1 group by 1")
                .bind(org)
                .fetch_all(&self.db.pool)
                .await
                .expect("statuses");
        assert_eq!(statuses, vec![("processed".to_owned(), n as i64)]);
        let paid: i64 =
            sqlx::query_scalar("select count(*) from bills where org_id = $1 and status = 'paid'")
                .bind(org)
                .fetch_one(&self.db.pool)
                .await
                .expect("count");
        assert_eq!(paid, n as i64, "every bill paid");
    }

    /// Messages waiting in one of this test's queues.
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let channel = self.state.broker.channel().await.expect("broker");
        let conn_channel = channel.clone();
        let declared = conn_channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .expect("queue exists");
        declared.message_count()
    }
}

/// A shop of [`TestApp::shop_with_bills`]: its organization, POS token, customer and bills.
pub struct Shop {
    pub org: i64,
    pub token: String,
    pub customer: String,
    pub bills: Vec<i64>,
}

/// A `ReceiptCreated` event in the shape the POS sends, paying `bill` with `total`, sold now.
pub fn receipt_event(event_id: &str, receipt_id: &str, bill: Option<i64>, total: &str) -> Value {
    receipt_event_at(event_id, receipt_id, bill, total, chrono::Utc::now())
}

/// [`receipt_event`] sold at `sold_at` (the receipt's `dateTime`).
pub fn receipt_event_at(
    event_id: &str,
    receipt_id: &str,
    bill: Option<i64>,
    total: &str,
    sold_at: chrono::DateTime<chrono::Utc>,
) -> Value {
    let total: Value = serde_json::from_str(total).expect("number");
    serde_json::json!({
        "id": event_id,
        "type": "ReceiptCreated",
        "version": 2,
        "userId": "01-000000009264720",
        "timestamp": sold_at.timestamp_millis(),
        "data": {
            "id": receipt_id,
            "type": "SELL",
            "items": [{"id": "521", "tax": 0, "name": "Товар", "price": total, "discount": 0, "itemType": "NORMAL",
                       "quantity": 1, "sumPrice": total, "costPrice": 0, "taxPercent": 0, "measureName": "Штука"}],
            "extras": {"billId": bill.map(|b| b.to_string()), "prepayment": 0, "settlementMethod": "FullSettlement"},
            "shiftId": "19",
            "storeId": "20240116-907B-400D-80BA-5B1712F12B91",
            "dateTime": sold_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "deviceId": "20260123-D77D-40E1-80FB-5A10E3AF19CA",
            "totalTax": 0,
            "infoCheck": false,
            "employeeId": "20260119-3181-4054-809F-A325514A1A6C",
            "totalAmount": total,
            "paymentSource": "PAY_CARD",
            "totalDiscount": 0
        }
    })
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Each test's queues go with it.
        let urls = self.state.config.backends.amqp_url.clone();
        let queues = self.state.broker.topology().queues();
        let deleted = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let conn = loyalty::queue::Nodes::new(&urls)
                    .connect(lapin::ConnectionProperties::default())
                    .await?;
                let channel = conn.create_channel().await?;
                for queue in queues {
                    channel
                        .queue_delete(
                            queue.as_str().into(),
                            lapin::options::QueueDeleteOptions::default(),
                        )
                        .await?;
                }
                conn.close(200, "done".into()).await
            })
        })
        .join();
        if !matches!(deleted, Ok(Ok(()))) {
            eprintln!("a test's queues were not deleted: {deleted:?}");
        }
    }
}

/// Sends a request and returns the status and the JSON body (Null when empty).
pub async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request reaches the service");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// Numbers compare by value: `0` and `0.0` are the same amount.
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

mod containers {
    //! Services started in Docker when the local ones are missing (a developer's laptop).
    use testcontainers::ContainerAsync;
    use testcontainers::ImageExt;
    use testcontainers::runners::AsyncRunner;
    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::rabbitmq::RabbitMq;
    use tokio::sync::OnceCell;

    static PG: OnceCell<Option<(ContainerAsync<Postgres>, String)>> = OnceCell::const_new();
    static MQ: OnceCell<Option<(ContainerAsync<RabbitMq>, String)>> = OnceCell::const_new();

    pub async fn rabbitmq() -> Option<String> {
        MQ.get_or_init(|| async {
            if !docker_present() {
                return None;
            }
            let container = RabbitMq::default().start().await.ok()?;
            let port = container.get_host_port_ipv4(5672).await.ok()?;
            Some((
                container,
                format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            ))
        })
        .await
        .as_ref()
        .map(|(_, url)| url.clone())
    }

    fn docker_present() -> bool {
        std::process::Command::new("docker")
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    pub async fn postgres() -> Option<String> {
        PG.get_or_init(|| async {
            if !docker_present() {
                return None;
            }
            let container = Postgres::default()
                .with_tag("16-alpine")
                .start()
                .await
                .ok()?;
            let port = container.get_host_port_ipv4(5432).await.ok()?;
            Some((
                container,
                format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres"),
            ))
        })
        .await
        .as_ref()
        .map(|(_, url)| url.clone())
    }
}

/// The path of one of the workspace's binaries, built if needed (the real program, for tests that
/// kill it). The whole workspace's binaries are built at once, with the same features as `.ci/run`
/// builds them, so this is a no-op there.
pub fn binary(name: &str) -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        // All targets, as `.ci/run` builds and as the test runner did: `--bins` alone would leave
        // out the dev-dependencies' features, so the crates whose features they change would be
        // built a second time (a minute on two cores) instead of found up to date.
        .args(["build", "--quiet", "--workspace", "--all-targets"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    // The variables cargo sets for this test process describe this package, not the build: passed
    // on (OUT_DIR above all: this package has a build script), they make build scripts that watch
    // them (ring's) run again, and every test calling this would rebuild those crates (~30 s)
    // instead of finding the binaries up to date (~0.2 s).
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_")
            || matches!(
                key.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            )
        {
            build.env_remove(key.as_ref());
        }
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building {name} failed");
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(std::path::Path::parent)
        .expect("target dir")
        .join(name)
}

/// Closes this test's broker connections from the broker's side, as a broker restart would.
pub fn cut_broker_connections(prefix: &str) -> usize {
    let listed = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "-q"])
        .output()
        .expect("rabbitmqctl runs");
    // Connections are named "loyalty <role> <queue prefix>".
    let marker = format!(" {prefix}\"");
    let mut cut = 0;
    for line in String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| l.contains(&marker))
    {
        let Some(pid) = line.split('\t').next() else {
            continue;
        };
        let closed = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "test cut"])
            .output();
        cut += usize::from(closed.is_ok_and(|o| o.status.success()));
    }
    cut
}

impl TestApp {
    /// Starts `worker` on this test's queues: `concurrency` batches at once, of up to `batch`
    /// receipts each.
    pub fn run_worker(
        &self,
        worker: workers::Worker,
        concurrency: u16,
        batch: u16,
    ) -> RunningWorker {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            worker
                .run(concurrency, batch, async {
                    // Dropped without a word: the test is over.
                    stopped.await.ok();
                })
                .await
                .expect("worker runs");
        });
        RunningWorker {
            stop: Some(stop),
            task,
        }
    }

    /// Publishes `event` (raw JSON text) to the receipts queue as ingest would, bypassing ingest's
    /// checks: what a faulty or older ingest, or a hand-made message, puts there.
    pub async fn publish_raw_receipt(&self, org: i64, message_id: &str, event: &[u8]) {
        use loyalty::queue::{Stream, contract};
        let body = loyalty::receipts::ReceiptMessage::encode_raw(org, 1, chrono::Utc::now(), event);
        let properties = contract::receipt_properties(message_id, org);
        let main = self.state.broker.topology().main(Stream::Receipts);
        self.state
            .broker
            .publish(&main, &body, properties)
            .await
            .expect("published");
    }
}

/// `TOKEN_KEYS` of the test services: one fixed key, "test".
pub const TOKEN_KEYS: &str = "test:dGVzdC1vbmx5LWtleS1ub3QtYS1zZWNyZXQtMzJieXQ=";

/// The keys the test services seal bot tokens with.
pub fn token_keys() -> loyalty::crypto::TokenKeys {
    TOKEN_KEYS.parse().expect("test keys parse")
}

/// Serves `router` as the `ingest` binary serves its listeners (header timeout, connection bound,
/// graceful shutdown) on a port of its own, until `shutdown` resolves. Returns the address and
/// the server's task, which ends once every connection is closed.
pub async fn serve(
    router: axum::Router,
    limits: loyalty_service::server::HttpLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loyalty_service::server::serve(listener, router, &limits, shutdown).await;
    });
    (addr, task)
}

impl TestApp {
    /// One scrape of this app's `/metrics`, served on their own listener as the binary serves them.
    pub async fn scrape_metrics(&self) -> String {
        let limits = loyalty_service::server::HttpLimits {
            header_timeout_secs: 10,
            max_connections: 100,
        };
        let router = ingest::health::metrics_router(self.state.clone());
        let (addr, server) = serve(router, limits, std::future::pending()).await;
        let text = self
            .http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        server.abort();
        text
    }
}

/// A script of `tests/browser` running in Node.js with headless Chromium (see
/// [`run_browser_script`]): the test reads the lines it prints and may answer on its stdin.
pub struct BrowserRun {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    /// Where the script writes its screenshots: `target/<name>/`.
    pub screenshots: std::path::PathBuf,
}

/// Starts `node tests/browser/<script> <args…> <screenshot dir>`, the screenshots going to
/// `target/<screenshots>/`. The browser tests need Node.js, Debian's Chromium (`CHROMIUM_PATH`)
/// and `npm ci --prefix tests/browser`; without them `build.rs` compiles those tests ignored
/// (reported as skipped), unless REQUIRE_BROWSER=1 (set by `.ci/run`): then they run and fail
/// here, naming what is missing.
pub fn run_browser_script(script: &str, args: &[String], screenshots: &str) -> BrowserRun {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = manifest.join("browser");
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        node && std::path::Path::new(&chromium).exists()
            && dir.join("node_modules/playwright-core").exists(),
        "{script} needs Node.js, Chromium ({chromium}) and `npm ci --prefix {}`",
        dir.display()
    );
    let shots = manifest.join("../target").join(screenshots);
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let mut child = tokio::process::Command::new("node")
        .arg(dir.join(script))
        .args(args)
        .arg(&shots)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("stdout");
    BrowserRun {
        child,
        stdin,
        lines: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)),
        screenshots: shots,
    }
}

impl BrowserRun {
    /// The next line the script prints, as JSON (`{"line": …}` when it is not); `Null` once it
    /// has ended.
    pub async fn next_line(&mut self) -> Value {
        match self.lines.next_line().await.expect("read") {
            Some(line) => {
                serde_json::from_str(&line).unwrap_or_else(|_| serde_json::json!({"line": line}))
            }
            None => Value::Null,
        }
    }

    /// Writes `line` to the script's stdin.
    pub async fn say(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write");
        stdin.flush().await.expect("flush");
    }

    /// Waits for the script to end; its last line, what it saw, as JSON. Fails the test when
    /// the script failed or reports `problems`.
    pub async fn finish(mut self) -> Value {
        drop(self.stdin.take());
        let mut last = String::new();
        while let Some(line) = self.lines.next_line().await.expect("read") {
            last = line;
        }
        let run = self.child.wait_with_output().await.expect("node ends");
        let seen: Value =
            serde_json::from_str(&last).unwrap_or_else(|_| serde_json::json!({"unparsed": last}));
        assert!(
            run.status.success() && seen["problems"] == serde_json::json!([]),
            "the browser run failed: {seen:#}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        seen
    }
}
