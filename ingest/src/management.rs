//! RabbitMQ's management plugin, when `RABBITMQ_MANAGEMENT_URL` names it: the unacknowledged
//! counts and the publish/ack rates that AMQP itself cannot report. Optional: without it (or while
//! it does not answer) the operator views show what AMQP reports and leave these fields null.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use loyalty::queue::QueueDepth;
use serde::Deserialize;

/// A client of one broker's management HTTP API.
#[derive(Clone)]
pub struct Management {
    /// The API's base, e.g. `http://guest:guest@rabbitmq:15672` (reqwest turns the user info into
    /// basic auth and keeps it out of its errors).
    base: String,
    /// The virtual host whose queues we read.
    vhost: String,
    http: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct QueueInfo {
    name: String,
    #[serde(default)]
    messages_unacknowledged: Option<u64>,
    #[serde(default)]
    message_stats: Option<MessageStats>,
}

#[derive(Debug, Deserialize)]
struct MessageStats {
    #[serde(default)]
    publish_details: Option<Rate>,
    #[serde(default)]
    ack_details: Option<Rate>,
}

#[derive(Debug, Deserialize)]
struct Rate {
    rate: f64,
}

/// How long the dashboard waits for the management API before showing AMQP's figures alone.
const TIMEOUT: Duration = Duration::from_secs(2);

impl Management {
    /// A client with [`TIMEOUT`]; one that cannot be built (no TLS backend) stops the start, since
    /// a client without its timeout would hold the dashboard's requests for as long as the API does.
    pub fn new(base: &str, vhost: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .context("building the RabbitMQ management API's HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            vhost,
            http,
        })
    }

    /// Adds the management plugin's figures to the depths AMQP reported. Returns whether it
    /// answered; a failure is logged (without the URL's credentials) and leaves the fields null.
    pub async fn enrich(&self, depths: &mut [QueueDepth]) -> bool {
        match self.queues().await {
            Ok(info) => {
                for depth in depths.iter_mut() {
                    if let Some(q) = info.get(&depth.name) {
                        depth.messages_unacknowledged = q.messages_unacknowledged;
                        let stats = q.message_stats.as_ref();
                        // A queue nothing went through yet has no stats: its rates are zero.
                        depth.publish_rate = Some(
                            stats
                                .and_then(|s| s.publish_details.as_ref())
                                .map_or(0.0, |r| r.rate),
                        );
                        depth.ack_rate = Some(
                            stats
                                .and_then(|s| s.ack_details.as_ref())
                                .map_or(0.0, |r| r.rate),
                        );
                    }
                }
                true
            }
            Err(err) => {
                tracing::warn!(error = %err.without_url(), "RabbitMQ management API did not answer");
                false
            }
        }
    }

    async fn queues(&self) -> reqwest::Result<HashMap<String, QueueInfo>> {
        let url = format!(
            "{}/api/queues/{}?columns=name,messages_unacknowledged,message_stats.publish_details,message_stats.ack_details",
            self.base,
            segment(&self.vhost)
        );
        let queues: Vec<QueueInfo> = self
            .http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(queues.into_iter().map(|q| (q.name.clone(), q)).collect())
    }
}

/// A vhost as one path segment ("/" is "%2F").
fn segment(vhost: &str) -> String {
    percent_encoding::utf8_percent_encode(vhost, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhosts_become_one_path_segment() {
        assert_eq!(segment("/"), "%2F");
        assert_eq!(segment("shop-1"), "shop%2D1");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
