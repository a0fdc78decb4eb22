//! What every binary of the loyalty program runs on, apart from the domain (`loyalty`): the
//! configuration they share (where PostgreSQL and RabbitMQ are, the bot-token keys), the runtime
//! `main` runs on (huge pages off), logging set up once, the Prometheus recorder and its
//! `/metrics` listener, the Bot API client, the hardened HTTP/1 server under ingest's API and every
//! metrics listener, and graceful shutdown. The domain crate depends on no
//! HTTP framework, command-line parser or log subscriber; this crate holds them.

pub mod config;
pub mod heap;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod telegram;
pub mod telemetry;
