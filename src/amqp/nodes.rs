//! `amqp.url`: one broker, or the nodes of a RabbitMQ cluster. Each connect tries the nodes in
//! turn, starting after the node the previous connection of that role used, so that a process
//! whose node died reconnects to the next one at once instead of waiting on the dead one first.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// The broker's URLs (with their credentials: secrets), in the order they were configured.
#[derive(Clone)]
pub struct BrokerUrls {
    urls: Arc<[SecretString]>,
    /// Where the next connect starts, per role that connects (see [`BrokerUrls::turn`]).
    next: Arc<[AtomicUsize; ROLES]>,
}

/// The roles that hold a broker connection of their own: the consumers and the relay, and
/// anything else (the command line).
const ROLES: usize = 4;

impl BrokerUrls {
    /// `urls` must not be empty (the settings check it).
    pub fn new(urls: Vec<SecretString>) -> Self {
        Self {
            urls: urls.into(),
            next: Arc::new(Default::default()),
        }
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The first configured URL (what a one-off tool connects to first).
    pub fn first(&self) -> &SecretString {
        &self.urls[0]
    }

    /// Every URL, in the configured order.
    pub fn iter(&self) -> impl Iterator<Item = &SecretString> {
        self.urls.iter()
    }

    /// The nodes to try, in order, for the next connection of `role`: every node once, starting
    /// after the one its last connection used.
    pub fn turn(&self, role: &str) -> Vec<(usize, &SecretString)> {
        let start = self.next[slot(role)].load(Ordering::Relaxed) % self.urls.len();
        (0..self.urls.len())
            .map(|i| (start + i) % self.urls.len())
            .map(|i| (i, &self.urls[i]))
            .collect()
    }

    /// `role` connected to node `index`: its next connection starts with the node after it.
    pub fn connected(&self, role: &str, index: usize) {
        self.next[slot(role)].store(index + 1, Ordering::Relaxed);
    }

    /// The broker user the process connects as (the settings check that every node is reached
    /// as the same one): RabbitMQ accepts a message's `user_id` only when it is this.
    pub fn user(&self) -> String {
        user(self.urls[0].expose_secret()).unwrap_or_else(|| "guest".to_owned())
    }

    /// Host and port of node `index`, without the credentials: what logs may show.
    pub fn address(&self, index: usize) -> String {
        address(self.urls[index].expose_secret())
    }
}

fn slot(role: &str) -> usize {
    match role {
        "worker" | "logins" => 0,
        "commands" => 1,
        "relay" => 2,
        _ => 3,
    }
}

/// The user of an AMQP URL (`guest` when it names none, as lapin connects); `None` if it does not
/// parse.
pub fn user(url: &str) -> Option<String> {
    let uri = url.parse::<lapin::uri::AMQPUri>().ok()?;
    Some(uri.authority.userinfo.username)
}

/// `host:port` of an AMQP URL (or the text before any credentials, for an unreadable one).
pub fn address(url: &str) -> String {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => "an unreadable URL".to_owned(),
    }
}

impl Default for BrokerUrls {
    fn default() -> Self {
        Self::from("amqp://guest:guest@127.0.0.1:5672/%2f")
    }
}

/// One URL, or several separated by commas (as an environment variable gives them; a comma in
/// a password is written `%2C`).
impl From<&str> for BrokerUrls {
    fn from(raw: &str) -> Self {
        Self::new(
            raw.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(SecretString::from)
                .collect(),
        )
    }
}

impl From<String> for BrokerUrls {
    fn from(raw: String) -> Self {
        Self::from(raw.as_str())
    }
}

impl std::fmt::Debug for BrokerUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = (0..self.urls.len()).map(|i| self.address(i)).collect();
        write!(f, "BrokerUrls({nodes:?}, credentials redacted)")
    }
}

/// A string (one URL or a comma-separated list) or a list of strings.
impl<'de> Deserialize<'de> for BrokerUrls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::One(raw) => Self::from(raw),
            Raw::Many(list) => Self::new(
                list.iter()
                    .map(|u| u.trim())
                    .filter(|u| !u.is_empty())
                    .map(SecretString::from)
                    .collect(),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_or_commas() {
        let urls = BrokerUrls::from(" amqp://a:b@n1:5701/%2f, amqp://a:b@n2:5702/%2f ,");
        assert_eq!(urls.len(), 2);
        assert_eq!(urls.address(1), "n2:5702");
        let debug = format!("{urls:?}");
        assert!(
            debug.contains("n1:5701") && !debug.contains("a:b"),
            "{debug}"
        );
    }

    #[test]
    fn the_user_is_the_urls_or_guest() {
        assert_eq!(BrokerUrls::from("amqp://worker:pw@n1/%2f").user(), "worker");
        assert_eq!(BrokerUrls::from("amqp://n1/%2f").user(), "guest");
    }

    #[test]
    fn each_role_goes_round_from_the_node_after_its_last() {
        let urls = BrokerUrls::from("amqp://n1/%2f,amqp://n2/%2f,amqp://n3/%2f");
        let order = |role| -> Vec<usize> { urls.turn(role).iter().map(|(i, _)| *i).collect() };
        assert_eq!(order("worker"), [0, 1, 2]);
        urls.connected("worker", 0);
        assert_eq!(order("worker"), [1, 2, 0]);
        // Another role keeps its own place.
        assert_eq!(order("relay"), [0, 1, 2]);
        urls.connected("worker", 2);
        assert_eq!(order("worker"), [0, 1, 2]);
        // A clone (the settings are shared) sees the same places.
        let clone = urls.clone();
        clone.connected("relay", 1);
        assert_eq!(order("relay"), [2, 0, 1]);
    }
}
