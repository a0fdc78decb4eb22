//! The scratch world a run measures in: its database and queue names (and their removal), the
//! ingest service in-process, and the shop it sells in (an organization, a register, customers and
//! open bills). Setup time is not measured, so bills are inserted in bulk with SQL.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use lapin::options::QueueDeleteOptions;
use loyalty::queue::Topology;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::Args;

/// Names of everything a run creates, so it can all be removed whatever happened.
pub struct Scratch {
    /// Random part of every name.
    pub tag: String,
    pub server_url: String,
    pub amqp_url: String,
    pub db_name: String,
    pub pgbench_db: String,
    pub prefix: String,
    pub topology: Topology,
    pub ceiling_queue: String,
}

impl Scratch {
    pub fn new(database_url: &str, amqp_url: &str) -> anyhow::Result<Self> {
        let tag = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let prefix = format!("loadgen.{tag}.");
        url::Url::parse(database_url).context("DATABASE_URL is not a URL")?;
        Ok(Self {
            server_url: database_url.to_owned(),
            amqp_url: amqp_url.to_owned(),
            db_name: format!("loadgen_{tag}"),
            pgbench_db: format!("loadgen_{tag}_pgbench"),
            topology: Topology::new(prefix.clone()),
            ceiling_queue: format!("{prefix}ceiling"),
            prefix,
            tag,
        })
    }

    /// Drops the databases and deletes the queues; tries everything, reports the first failure.
    pub async fn clean(&self) -> anyhow::Result<()> {
        let dropped = self.drop_databases().await;
        let deleted = self.delete_queues().await;
        dropped.and(deleted)
    }

    /// Drops the scratch databases.
    pub async fn drop_databases(&self) -> anyhow::Result<()> {
        async {
            let mut admin = PgConnection::connect(&self.server_url).await?;
            for db in [&self.db_name, &self.pgbench_db] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "drop database if exists {db} with (force)"
                )))
                .execute(&mut admin)
                .await?;
            }
            anyhow::Ok(())
        }
        .await
        .context("drop the scratch databases")
    }

    /// Deletes the run's queues.
    pub async fn delete_queues(&self) -> anyhow::Result<()> {
        async {
            let conn =
                lapin::Connection::connect(&self.amqp_url, lapin::ConnectionProperties::default())
                    .await?;
            let channel = conn.create_channel().await?;
            let mut queues = self.topology.queues();
            queues.push(self.ceiling_queue.clone());
            for queue in queues {
                channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await?;
            }
            let _ = conn.close(200, "done".into()).await;
            anyhow::Ok(())
        }
        .await
        .context("delete the scratch queues")
    }

    /// Creates and migrates the scratch database; returns its URL and a small pool on it.
    pub async fn create_database(&self) -> anyhow::Result<(String, PgPool)> {
        let mut admin = PgConnection::connect(&self.server_url)
            .await
            .context("connect to PostgreSQL")?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "create database {}",
            self.db_name
        )))
        .execute(&mut admin)
        .await?;
        admin.close().await?;
        let db_url = with_database(&self.server_url, &self.db_name)?;
        let db = loyalty::db::connect(&db_url, 4).await?;
        loyalty::db::migrate(&db).await?;
        Ok((db_url, db))
    }
}

/// Sends `rows` lines to `copy` (a `COPY … FROM STDIN` statement) in chunks, on `conn` (so a
/// session setting made on it applies).
pub async fn copy_lines(
    conn: &mut PgConnection,
    copy: &str,
    rows: usize,
    line: impl Fn(usize) -> String,
) -> anyhow::Result<()> {
    let mut sink = conn.copy_in_raw(copy).await?;
    let mut chunk = String::with_capacity(8 << 20);
    for i in 0..rows {
        chunk.push_str(&line(i));
        if chunk.len() > (4 << 20) {
            sink.send(std::mem::take(&mut chunk).into_bytes()).await?;
        }
    }
    if !chunk.is_empty() {
        sink.send(chunk.into_bytes()).await?;
    }
    sink.finish().await?;
    Ok(())
}

/// `url` with its path replaced by `/database`.
pub fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let mut parsed = url::Url::parse(url)?;
    parsed.set_path(&format!("/{database}"));
    Ok(parsed.to_string())
}

/// The scratch database and ingest serving on it.
pub struct Environment {
    pub server_url: String,
    pub db_url: String,
    /// For setup and measuring queries (ingest and the worker have pools of their own).
    pub db: PgPool,
    pub base: String,
    pub operator: Operator,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

/// `TOKEN_KEYS` of the in-process ingest: a fixed key, for scratch databases only.
const LOADGEN_TOKEN_KEYS: &str = "loadgen:bG9hZGdlbi1zY2FsZS1rZXktbm90LWEtc2VjcmV0ISE=";

/// Telegram ids of seeded customers start here.
pub const TELEGRAM_IDS: i64 = 7_000_000_000;

/// An organization with a register and open bills to pay.
pub struct Shop {
    pub org: i64,
    pub integration: i64,
    pub token: String,
    /// In the order they were created.
    pub customers: Vec<i64>,
    pub bills: Vec<Bill>,
}

#[derive(Debug, Clone, Copy)]
pub struct Bill {
    pub id: i64,
    pub total: i64,
}

impl Environment {
    /// Creates and migrates the database and starts ingest on a random local port.
    pub async fn start(args: &Args, scratch: &Scratch) -> anyhow::Result<Self> {
        Self::serve_new(&args.servers.amqp_url, scratch).await
    }

    /// [`Environment::start`] with only the broker's URL.
    pub async fn serve_new(amqp_url: &str, scratch: &Scratch) -> anyhow::Result<Self> {
        let (db_url, db) = scratch.create_database().await?;
        Self::serve(amqp_url, scratch, db_url, db).await
    }

    /// Ingest on an existing (migrated) database, publishing under the scratch queue prefix.
    pub async fn serve(
        amqp_url: &str,
        scratch: &Scratch,
        db_url: String,
        db: PgPool,
    ) -> anyhow::Result<Self> {
        let admin_token = format!("loadgen-{}", rand::random::<u64>());
        // Parsed like the service's own command line, so new settings take their defaults.
        let config = ingest::Config::try_parse_from([
            "ingest",
            "--database-url",
            &db_url,
            "--amqp-url",
            amqp_url,
            "--admin-token",
            &admin_token,
            "--addr",
            "127.0.0.1:0",
            "--telegram-api-url",
            "http://127.0.0.1:9",
            "--queue-prefix",
            &scratch.prefix,
            // `loadgen scale` walks Mini App histories page after page as one user.
            "--miniapp-rate",
            "100000",
            "--miniapp-burst",
            "100000",
            // Seals the bot token of `loadgen scale`'s organization (a key for scratch data only).
            "--token-keys",
            LOADGEN_TOKEN_KEYS,
        ])?;
        // The pool size ingest runs with in production (`ingest::run`).
        let ingest_db = loyalty::db::connect(&db_url, 16).await?;
        let state = ingest::AppState::new(ingest_db, config)?;
        // Declares the topology and opens the publishing channel before anything is measured.
        state
            .broker
            .channel()
            .await
            .context("connect to RabbitMQ")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let app = ingest::app(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            server_url: scratch.server_url.clone(),
            db_url,
            operator: Operator::new(&base, &admin_token, db.clone()),
            db,
            base,
            stop,
            server,
        })
    }

    /// Stops ingest (open keep-alive connections are not waited for long).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
    }
}

/// The operator API of a running ingest, and the database behind it.
pub struct Operator {
    base: String,
    token: String,
    http: reqwest::Client,
    db: PgPool,
}

impl Operator {
    pub fn new(base: &str, token: &str, db: PgPool) -> Self {
        Self {
            base: base.to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
            db,
        }
    }

    /// The admin token ingest was started with.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// POSTs `body` to `/admin/v1{path}`; an error unless the answer is `expect`.
    pub async fn post(&self, path: &str, body: &Value, expect: u16) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(format!("{}/admin/v1{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        if status != expect {
            bail!("POST /admin/v1{path} answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// The organization (bonus settings 2 / 50 / 5) and its register through the operator API;
    /// `customers` customers, every second one referred by the one before; `bills` open bills
    /// spread over them round-robin. With a `bot` token, the organization has that bot and
    /// customer `i` the Telegram id `TELEGRAM_IDS + i`.
    pub async fn seed(
        &self,
        customers: usize,
        bills: usize,
        concurrency: usize,
        bot: Option<&str>,
    ) -> anyhow::Result<Shop> {
        let mut org = json!({
            "name": "Loadgen shop",
            "bonus_program_settings": {
                "invoice_bonus_percentage": 2,
                "referral_promo_bonus": 50,
                "referrer_first_purchase_percentage": 5
            }
        });
        if let Some(token) = bot {
            org["telegram_bot_token"] = json!(token);
        }
        let org = self.post("/orgs", &org, 201).await?["id"]
            .as_i64()
            .context("org id")?;
        let created = self
            .post(
                &format!("/orgs/{org}/integrations"),
                &json!({"system": "loadgen"}),
                201,
            )
            .await?;
        let token = created["token"].as_str().context("POS token")?.to_owned();
        let integration: i64 = sqlx::query_scalar("select id from integrations where org_id = $1")
            .bind(org)
            .fetch_one(&self.db)
            .await?;

        let customer_ids: Vec<i64> = futures::stream::iter(0..customers)
            .map(|i| async move {
                let mut customer =
                    json!({"first_name": format!("Customer{i}"), "last_name": "Load"});
                if bot.is_some() {
                    customer["telegram_id"] = json!(TELEGRAM_IDS + i64::try_from(i)?);
                }
                let created = self
                    .post(&format!("/orgs/{org}/customers"), &customer, 201)
                    .await?;
                let id = created["id"].as_str().context("customer id")?;
                anyhow::Ok(id.parse::<i64>()?)
            })
            .buffered(concurrency)
            .try_collect()
            .await?;
        // Half the customers were brought by a friend: their first purchase rewards the friend.
        futures::stream::iter(customer_ids.chunks_exact(2))
            .map(|pair| async move {
                let (friend, customer) = (pair[0], pair[1]);
                self.post(
                    &format!("/orgs/{org}/customers/{customer}/promo"),
                    &json!({"code": format!("PROMO{friend}")}),
                    200,
                )
                .await
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<_>>()
            .await?;

        let owners: Vec<i64> = (0..bills)
            .map(|i| customer_ids[i % customer_ids.len()])
            .collect();
        let totals: Vec<i64> = (0..bills)
            .map(|i| 500 + i64::try_from(i * 37 % 100).unwrap_or(0) * 50)
            .collect();
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "insert into bills (org_id, customer_id, number, items, total)
             select $1, b.customer_id, 'LG-' || b.n,
                    jsonb_build_array(jsonb_build_object(
                        'name', 'Товар', 'quantity', 1, 'unit_price', b.total, 'item_total', b.total,
                        'unit', 'Штука', 'tax_rate', null, 'product_id', 521)),
                    b.total
             from unnest($2::bigint[], $3::bigint[]) with ordinality as b(customer_id, total, n)
             returning id, total::bigint",
        )
        .bind(org)
        .bind(&owners)
        .bind(&totals)
        .fetch_all(&self.db)
        .await?;
        let mut bills: Vec<Bill> = rows
            .into_iter()
            .map(|(id, total)| Bill { id, total })
            .collect();
        bills.sort_by_key(|b| b.id);
        sqlx::query("analyze").execute(&self.db).await?;
        Ok(Shop {
            org,
            integration,
            token,
            customers: customer_ids,
            bills,
        })
    }
}

/// The PostgreSQL and RabbitMQ servers a run uses (scratch databases and queues are made on them).
#[derive(Debug, Clone, clap::Args)]
pub struct Servers {
    /// PostgreSQL server (any database on it; scratch databases are created next to it).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// RabbitMQ connection URL.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
}
