//! A fake Telegram Bot API in this process: answers every `sendMessage` as sent and counts the
//! calls per (chat, text), so "every notification sent at most once" can be checked from the
//! receiving end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

#[derive(Default)]
struct Received {
    by_message: Mutex<HashMap<(i64, String), u32>>,
    next_id: AtomicI64,
}

#[derive(Deserialize)]
struct SendMessage {
    chat_id: i64,
    text: String,
}

pub struct FakeBot {
    pub url: String,
    received: Arc<Received>,
    stop: oneshot::Sender<()>,
}

/// What the fake Bot API was asked to send.
pub struct Counts {
    pub calls: u64,
    /// (chat, text) pairs sent more than once, with how many times.
    pub repeated: Vec<(i64, String, u32)>,
}

impl FakeBot {
    pub async fn start() -> anyhow::Result<Self> {
        let received = Arc::new(Received::default());
        let app = Router::new()
            .route("/{bot}/sendMessage", post(send_message))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            url,
            received,
            stop,
        })
    }

    pub fn counts(&self) -> Counts {
        let by_message = self
            .received
            .by_message
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Counts {
            calls: by_message.values().map(|&n| u64::from(n)).sum(),
            repeated: by_message
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|((chat, text), n)| (*chat, text.clone(), *n))
                .collect(),
        }
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
    }
}

async fn send_message(
    State(received): State<Arc<Received>>,
    Json(message): Json<SendMessage>,
) -> Json<Value> {
    *received
        .by_message
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry((message.chat_id, message.text))
        .or_default() += 1;
    let message_id = received.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    Json(json!({"ok": true, "result": {"message_id": message_id}}))
}
