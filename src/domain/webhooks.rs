//! Webhooks (contract section 12): which events an endpoint takes, its URL and the addresses it
//! may reach, its signing secrets and signatures (Standard Webhooks 1.0), and when a failed
//! delivery is tried again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};

/// The longest URL an endpoint may have.
pub const MAX_URL: usize = 2048;
/// The most patterns an endpoint may list.
pub const MAX_PATTERNS: usize = 32;
/// The longest description.
pub const MAX_DESCRIPTION: usize = 1024;

/// An endpoint's event filter: routing-key patterns as the events exchange reads them (`*` one
/// word, `#` zero or more words), e.g. `user.*`, `binding.#`, `#`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeFilter {
    patterns: Vec<String>,
}

impl TypeFilter {
    /// Every pattern is words of `[A-Za-z0-9_-]`, `*` or `#`, separated by dots; at least one
    /// pattern and at most [`MAX_PATTERNS`].
    pub fn parse(patterns: &[String]) -> Result<Self, String> {
        if patterns.is_empty() {
            return Err("event_types must list at least one pattern (\"#\": every event)".into());
        }
        if patterns.len() > MAX_PATTERNS {
            return Err(format!("event_types lists at most {MAX_PATTERNS} patterns"));
        }
        for pattern in patterns {
            let good_word = |w: &str| {
                w == "*"
                    || w == "#"
                    || (!w.is_empty()
                        && w.len() <= 64
                        && w.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
            };
            if pattern.len() > 255 || !pattern.split('.').all(good_word) {
                return Err(format!(
                    "{pattern:?} is not a routing-key pattern: words of letters, digits, `_` and \
                     `-`, or `*` (one word) or `#` (any words), separated by dots"
                ));
            }
        }
        let mut patterns = patterns.to_vec();
        patterns.dedup();
        Ok(Self { patterns })
    }

    /// Every event.
    pub fn everything() -> Self {
        Self {
            patterns: vec!["#".into()],
        }
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// A POSIX regular expression (PostgreSQL's `~`) matching `.` followed by an event type
    /// exactly when a pattern matches the type: each word becomes `\.word`, `*` `\.[^.]+` and `#`
    /// `(\.[^.]+)*`. Words hold no character special to a regular expression.
    pub fn regex(&self) -> String {
        let alternatives: Vec<String> = self
            .patterns
            .iter()
            .map(|pattern| {
                pattern
                    .split('.')
                    .map(|word| match word {
                        "*" => r"\.[^.]+".to_owned(),
                        "#" => r"(\.[^.]+)*".to_owned(),
                        word => format!(r"\.{word}"),
                    })
                    .collect::<String>()
            })
            .collect();
        format!("^({})$", alternatives.join("|"))
    }

    /// Whether `event_type` matches a pattern (the same rule as [`Self::regex`]).
    pub fn matches(&self, event_type: &str) -> bool {
        fn words_match(pattern: &[&str], words: &[&str]) -> bool {
            match pattern.split_first() {
                None => words.is_empty(),
                Some((&"#", rest)) => {
                    (0..=words.len()).any(|skip| words_match(rest, &words[skip..]))
                }
                Some((&"*", rest)) => !words.is_empty() && words_match(rest, &words[1..]),
                Some((word, rest)) => words.first() == Some(word) && words_match(rest, &words[1..]),
            }
        }
        let words: Vec<&str> = event_type.split('.').collect();
        self.patterns.iter().any(|pattern| {
            let pattern: Vec<&str> = pattern.split('.').collect();
            words_match(&pattern, &words)
        })
    }
}

/// An endpoint's URL: `http` or `https`, a host, no user or password, no fragment.
pub fn parse_url(raw: &str) -> Result<reqwest::Url, String> {
    if raw.len() > MAX_URL {
        return Err(format!("url is longer than {MAX_URL} bytes"));
    }
    let url = reqwest::Url::parse(raw).map_err(|e| format!("url is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("url must be http or https".into());
    }
    if url.host().is_none() {
        return Err("url has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "url must not carry a user or password (authenticate with the signature)".into(),
        );
    }
    if url.fragment().is_some() {
        return Err("url must not have a fragment".into());
    }
    Ok(url)
}

/// Why an address may not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Link-local (169.254.0.0/16, fe80::/10: cloud metadata endpoints live there), unspecified,
    /// multicast or broadcast: refused always.
    Always,
    /// Loopback, private (RFC 1918, shared 100.64.0.0/10) or unique-local (fc00::/7): refused
    /// unless `webhooks.allow_private_addresses`.
    Private,
}

impl Refused {
    pub fn describe(self, ip: IpAddr) -> String {
        match self {
            Self::Always => format!(
                "{ip} is a link-local, unspecified, multicast or broadcast address: never reached"
            ),
            Self::Private => format!(
                "{ip} is a loopback, private or unique-local address: reached only when \
                 webhooks.allow_private_addresses is true"
            ),
        }
    }
}

/// Whether a delivery may connect to `ip`.
pub fn check_address(ip: IpAddr, allow_private: bool) -> Result<(), Refused> {
    let ip = match ip {
        // An IPv4 address carried in IPv6 is judged as the IPv4 address it reaches.
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    let refused = match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    };
    match refused {
        Some(Refused::Private) if allow_private => Ok(()),
        Some(refused) => Err(refused),
        None => Ok(()),
    }
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4 (`2002:aabb:ccdd::`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, ..] => Some(tail),
        [0, 0, 0, 0, 0, 0, ..] if !ip.is_loopback() && !ip.is_unspecified() => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(tail),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new(
            (a >> 8) as u8,
            a as u8,
            (b >> 8) as u8,
            b as u8,
        )),
        _ => None,
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<Refused> {
    let [a, b, ..] = ip.octets();
    if ip.is_link_local() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || a == 0
    {
        Some(Refused::Always)
    } else if ip.is_loopback() || ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        Some(Refused::Private)
    } else {
        None
    }
}

fn v6_class(ip: Ipv6Addr) -> Option<Refused> {
    let first = ip.segments()[0];
    if (first & 0xffc0) == 0xfe80 || ip.is_unspecified() || ip.is_multicast() {
        Some(Refused::Always)
    } else if ip.is_loopback() || (first & 0xfe00) == 0xfc00 {
        Some(Refused::Private)
    } else {
        None
    }
}

/// A signing secret: `whsec_` and the base64 of 32 random bytes, the HMAC key.
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .expect("the system's random source works");
    format!("whsec_{}", STANDARD.encode(key))
}

fn key_of(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    STANDARD
        .decode(encoded)
        .expect("stored secrets are whsec_ and base64, as new_secret makes them")
}

/// The `webhook-signature` header: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` per secret,
/// space-separated, the current secret first.
pub fn signature(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_of(secret));
            let mut context = ring::hmac::Context::with_key(&key);
            context.update(id.as_bytes());
            context.update(b".");
            context.update(timestamp.to_string().as_bytes());
            context.update(b".");
            context.update(body);
            format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// When a delivery is tried again: after the `attempts`-th failed attempt (1-based), the
/// schedule's delay for it, spread by up to a tenth either way (`jitter` in [-1, 1]), and never
/// before the receiver's `Retry-After`; `None` once the schedule is used up (the delivery has
/// failed).
pub fn retry_delay(
    schedule: &[Duration],
    attempts: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Option<Duration> {
    let base = *schedule.get(attempts.checked_sub(1)? as usize)?;
    let spread = base.as_secs_f64() * 0.1 * jitter.clamp(-1.0, 1.0);
    let delay = Duration::from_secs_f64((base.as_secs_f64() + spread).max(0.0));
    // A Retry-After beyond the schedule's longest step is held to that step.
    let longest = schedule.iter().max().copied().unwrap_or_default();
    Some(match retry_after {
        Some(asked) => delay.max(asked.min(longest)),
        None => delay,
    })
}

/// The default schedule: after about 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h (the first
/// attempt is at once).
pub fn default_schedule() -> Vec<Duration> {
    [5, 300, 1800, 7200, 18000, 36000, 36000]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}

/// A `Retry-After` header's wait: seconds, or an HTTP date.
pub fn parse_retry_after(raw: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let raw = raw.trim();
    if let Ok(seconds) = raw.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
    (at.with_timezone(&chrono::Utc) - now).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(patterns: &[&str]) -> TypeFilter {
        TypeFilter::parse(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn patterns_follow_the_topic_exchange() {
        let f = filter(&["user.*"]);
        assert!(f.matches("user.created"));
        assert!(!f.matches("user"));
        assert!(!f.matches("binding.pending"));
        let f = filter(&["binding.#"]);
        assert!(f.matches("binding"));
        assert!(f.matches("binding.pending"));
        assert!(!f.matches("user.binding"));
        let f = filter(&["#"]);
        assert!(f.matches("webhook.delivery_failed"));
        let f = filter(&["#.created", "login.rejected"]);
        assert!(f.matches("user.created"));
        assert!(f.matches("login.rejected"));
        assert!(!f.matches("user.linked"));
    }

    #[test]
    fn the_regex_is_built_word_by_word() {
        // The database matches with the regex (an integration test runs it there against the
        // matcher, on every event type).
        assert_eq!(filter(&["user.*"]).regex(), r"^(\.user\.[^.]+)$");
        assert_eq!(filter(&["binding.#"]).regex(), r"^(\.binding(\.[^.]+)*)$");
        assert_eq!(filter(&["#", "a.b"]).regex(), r"^((\.[^.]+)*|\.a\.b)$");
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "",
            "user.",
            ".user",
            "user..created",
            "user.cre(ated",
            "a|b",
            "user.*x",
        ] {
            assert!(TypeFilter::parse(&[bad.to_string()]).is_err(), "{bad:?}");
        }
        assert!(TypeFilter::parse(&[]).is_err());
    }

    #[test]
    fn addresses_are_judged_as_the_contract_says() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for always in [
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "::169.254.169.254",
            "169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "::ffff:169.254.1.1",
        ] {
            assert_eq!(
                check_address(ip(always), true),
                Err(Refused::Always),
                "{always}"
            );
        }
        for private in [
            "64:ff9b::7f00:1",
            "2002:c0a8:0101::",
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(
                check_address(ip(private), false),
                Err(Refused::Private),
                "{private}"
            );
            assert_eq!(check_address(ip(private), true), Ok(()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "172.32.0.1",
            "100.128.0.1",
        ] {
            assert_eq!(check_address(ip(public), false), Ok(()), "{public}");
        }
    }

    #[test]
    fn urls_are_checked() {
        assert!(parse_url("https://hooks.example.com/in?x=1").is_ok());
        assert!(parse_url("ftp://example.com/").is_err());
        assert!(parse_url("https://user:pw@example.com/").is_err());
        assert!(parse_url("https://example.com/#frag").is_err());
        assert!(parse_url("not a url").is_err());
    }

    #[test]
    fn signatures_follow_the_specification() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let signed = signature(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signed, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let two = signature(&[secret, secret], "id", 1, b"x");
        assert_eq!(two.split(' ').count(), 2);
        let fresh = new_secret();
        assert!(fresh.starts_with("whsec_"));
        assert_eq!(key_of(&fresh).len(), 32);
    }

    #[test]
    fn retries_follow_the_schedule() {
        let schedule = default_schedule();
        assert_eq!(
            retry_delay(&schedule, 1, None, 0.0),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            retry_delay(&schedule, 7, None, 0.0),
            Some(Duration::from_secs(36000))
        );
        assert_eq!(retry_delay(&schedule, 8, None, 0.0), None);
        assert_eq!(retry_delay(&schedule, 0, None, 0.0), None);
        let jittered = retry_delay(&schedule, 2, None, 1.0).unwrap();
        assert_eq!(jittered, Duration::from_secs(330));
        assert_eq!(
            retry_delay(&schedule, 1, Some(Duration::from_secs(60)), 0.0),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            retry_delay(&schedule, 1, Some(Duration::from_secs(10_000_000)), 0.0),
            Some(Duration::from_secs(36000))
        );
        let now = chrono::Utc::now();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
