//! The login mixes, interleaved in a fixed pseudo-random order. `steady`: 60% returning
//! identities, 20% new people, 15% field-match links to existing accounts, 5% pending bindings.
//! `onboarding` (the day a directory's connection is switched on with field matching): 50% new
//! people, 33% linked to existing accounts by verified email, 17% returning.

use serde_json::json;

pub const POOL: &str = "bench";
pub const SOURCE: &str = "urn:bench";

/// Which mix a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MixKind {
    Steady,
    Onboarding,
}

#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub returning: usize,
    pub fresh: usize,
    pub links: usize,
    pub asks: usize,
    /// Seeded accounts with an identity on `returning`.
    pub known: usize,
    /// The connection new people log in through: `fresh` (no association) in the steady mix,
    /// `match` (field matching, so every new person is looked for first) when onboarding.
    pub fresh_connection: &'static str,
}

impl Mix {
    pub fn of(events: usize) -> Self {
        Self::new(MixKind::Steady, events)
    }

    pub fn new(kind: MixKind, events: usize) -> Self {
        match kind {
            MixKind::Steady => {
                let fresh = events / 5;
                let links = events * 15 / 100;
                let asks = events / 20;
                let returning = events - fresh - links - asks;
                Self {
                    returning,
                    fresh,
                    links,
                    asks,
                    known: (returning / 3).max(1),
                    fresh_connection: "fresh",
                }
            }
            MixKind::Onboarding => {
                let fresh = events / 2;
                let links = events / 3;
                let returning = events - fresh - links;
                Self {
                    returning,
                    fresh,
                    links,
                    asks: 0,
                    known: (returning / 3).max(1),
                    fresh_connection: "match",
                }
            }
        }
    }

    pub fn total(&self) -> usize {
        self.returning + self.fresh + self.links + self.asks
    }

    /// Accounts the seed creates.
    pub fn users(&self) -> usize {
        self.known + self.links + self.asks
    }

    /// Expected decisions, by outcome.
    pub fn expected(&self) -> [(&'static str, usize); 4] {
        [
            ("binding_pending", self.asks),
            ("existing_user", self.returning),
            ("user_created", self.fresh),
            ("user_linked", self.links),
        ]
    }

    /// The login bodies, event ids `<prefix><n>` with n the position in the returned order.
    pub fn events(&self, prefix: &str) -> Vec<Vec<u8>> {
        let mut specs: Vec<(&str, String, serde_json::Value)> = Vec::with_capacity(self.total());
        for i in 0..self.returning {
            let k = i % self.known;
            specs.push((
                "returning",
                format!("r{k}"),
                json!({"email": format!("u{k}@bench.example"), "email_verified": true, "name": "Returning"}),
            ));
        }
        for i in 0..self.fresh {
            specs.push((
                self.fresh_connection,
                format!("f{i}-{prefix}"),
                json!({"email": format!("new{i}.{prefix}@bench.example"), "email_verified": true, "name": "New"}),
            ));
        }
        for i in 0..self.links {
            let k = self.known + i;
            specs.push((
                "match",
                format!("m{i}"),
                json!({"email": format!("U{k}@Bench.example"), "email_verified": true}),
            ));
        }
        for i in 0..self.asks {
            let k = self.known + self.links + i;
            specs.push((
                "ask",
                format!("a{i}"),
                json!({"email": format!("u{k}@bench.example"), "email_verified": true}),
            ));
        }
        // A fixed-seed shuffle (xorshift) so that kinds interleave as they would in real traffic.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in (1..specs.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            specs.swap(i, (state % (i as u64 + 1)) as usize);
        }
        specs
            .into_iter()
            .enumerate()
            .map(|(n, (connection, external_id, profile))| {
                serde_json::to_vec(&json!({
                    "specversion": "1.0",
                    "id": format!("{prefix}{n}"),
                    "source": SOURCE,
                    "type": "login.completed",
                    "time": "2026-11-24T09:00:00Z",
                    "data": {"user_pool_id": POOL, "connection": connection, "external_id": external_id,
                             "profile": profile}
                }))
                .expect("json serialises")
            })
            .collect()
    }
}
