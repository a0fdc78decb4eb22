//! Where the broker is: one node's URL, or one URL per node of a RabbitMQ cluster. Every
//! connection a service opens (publisher, consumers, operator views) goes to a node that answers,
//! trying them in turn; a service whose node goes away reconnects the same way and so lands on
//! another one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

/// How long one node may take to accept a connection before the next one is tried: a node that
/// is down refuses at once, one that is cut off by the network only times out.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest AMQP frame the services ask for, unless a URL says otherwise (`?frame_max=`).
/// lapin sizes each connection's two I/O buffers at 32 frames: at RabbitMQ's default of 128 KiB
/// that is 4 MiB each, and a busy connection touches all of it and keeps it (heaptrack: 8.4 MiB of
/// ingest's heap after a load). A receipt or a message is one or two KiB, one frame at 16 KiB; a
/// larger body is sent in several frames.
pub const FRAME_MAX: u32 = 16 * 1024;

/// The nodes of one broker (a single node or the members of a cluster).
#[derive(Debug)]
pub struct Nodes {
    urls: Vec<String>,
    /// The node the next connection tries first: random at start, so that the replicas of a
    /// service spread their connections over the cluster, then one further at each connection.
    next: AtomicUsize,
}

impl Nodes {
    /// The nodes from URLs, each of which may itself list several, comma-separated
    /// (`AMQP_URL=amqp://a,amqp://b`); blanks are ignored.
    pub fn new<S: AsRef<str>>(urls: impl IntoIterator<Item = S>) -> Self {
        let urls: Vec<String> = urls
            .into_iter()
            .flat_map(|url| split(url.as_ref()).collect::<Vec<_>>())
            .collect();
        let next = if urls.len() > 1 {
            rand::random_range(0..urls.len())
        } else {
            0
        };
        Self {
            urls,
            next: AtomicUsize::new(next),
        }
    }

    /// How many nodes are configured.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The URLs, in the order they were configured (they carry credentials: never log them).
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The virtual host the URLs name ("/" when they name none; the nodes of a cluster share it).
    pub fn vhost(&self) -> String {
        self.urls
            .first()
            .and_then(|url| url.parse::<AMQPUri>().ok())
            .map(|uri| uri.vhost)
            .unwrap_or_else(|| "/".to_owned())
    }

    /// Opens a connection to the first node that accepts one, starting at the next node in turn;
    /// the error is the last node's when none does.
    pub async fn connect(&self, properties: ConnectionProperties) -> lapin::Result<Connection> {
        let count = self.urls.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for i in 0..count {
            let url = &self.urls[(start + i) % count];
            let mut uri = match parse(url) {
                Ok(uri) => uri,
                Err(err) => {
                    last = Some(lapin::Error::from(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        err,
                    )));
                    continue;
                }
            };
            uri.query.frame_max.get_or_insert(FRAME_MAX);
            let attempt = tokio::time::timeout(
                CONNECT_TIMEOUT,
                Connection::connect_uri(uri, properties.clone()),
            )
            .await;
            let err = match attempt {
                Ok(Ok(conn)) => {
                    if count > 1 {
                        tracing::debug!(node = %node_label(url), "connected to a RabbitMQ node");
                    }
                    return Ok(conn);
                }
                Ok(Err(err)) => err,
                Err(_) => lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {CONNECT_TIMEOUT:?}"),
                )),
            };
            if count > 1 {
                tracing::info!(node = %node_label(url), error = %err, "RabbitMQ node not reachable; trying the next");
            }
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| {
            lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no RabbitMQ URL configured",
            ))
        }))
    }
}

/// Splits a comma-separated list of URLs (commas cannot occur unescaped in an AMQP URL).
fn split(urls: &str) -> impl Iterator<Item = String> + '_ {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
}

/// Checks one `--amqp-url` value (a URL or a comma-separated list): each must be an AMQP URL.
pub fn check_urls(urls: &str) -> Result<String, String> {
    let mut count = 0;
    for url in split(urls) {
        parse(&url)?;
        count += 1;
    }
    if count == 0 {
        return Err("no AMQP URL given".to_owned());
    }
    Ok(urls.to_owned())
}

/// One node's URL parsed, or what is wrong with it (naming the node, never its credentials).
fn parse(url: &str) -> Result<AMQPUri, String> {
    url.parse::<AMQPUri>()
        .map_err(|err| format!("not an AMQP URL ({}): {err}", node_label(url)))
}

/// A node as logs name it: host and port, never the credentials the URL carries.
pub fn node_label(url: &str) -> String {
    match url.parse::<AMQPUri>() {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => "an unreadable URL".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_urls_come_comma_separated_or_one_by_one() {
        let nodes = Nodes::new([
            "amqp://guest:guest@a:5672/%2f, amqp://guest:guest@b:5672/%2f",
            "amqp://guest:guest@c:5673/%2f",
            "",
        ]);
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes.urls()[2], "amqp://guest:guest@c:5673/%2f");
        assert_eq!(nodes.vhost(), "/");
    }

    #[test]
    fn a_node_is_logged_without_its_credentials() {
        assert_eq!(
            node_label("amqp://user:secret@rabbit-2:5673/prod"),
            "rabbit-2:5673"
        );
        assert!(!node_label("amqp://user:secret@rabbit-2/prod").contains("secret"));
    }

    #[test]
    fn a_bad_url_or_an_empty_list_is_refused_at_start() {
        assert!(check_urls("amqp://a:5672/%2f,amqp://b:5672/%2f").is_ok());
        assert!(check_urls(" , ").is_err());
        assert!(check_urls("amqp://a:5672/%2f,http://b").is_err());
    }

    #[tokio::test]
    async fn a_connection_skips_the_nodes_that_refuse_it() {
        // Port 1 refuses at once; the local broker is the only node that answers, wherever the
        // rotation starts.
        let local = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
        let nodes = Nodes::new(["amqp://guest:guest@127.0.0.1:1/%2f", local.as_str()]);
        for _ in 0..2 {
            let conn = nodes
                .connect(ConnectionProperties::default())
                .await
                .expect("the local broker answers");
            assert!(conn.status().connected());
            conn.close(200, "done".into()).await.expect("close");
        }
        let down = Nodes::new(["amqp://guest:guest@127.0.0.1:1/%2f"; 2]);
        let err = down
            .connect(ConnectionProperties::default())
            .await
            .expect_err("nothing listens on port 1");
        assert!(err.is_io_error(), "{err}");
    }
}
