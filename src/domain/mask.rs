//! Masking of personal data for logs and admin summaries: the first character and the shape stay,
//! the rest does not.

/// `zhang.san@example.com` becomes `z***@example.com`; anything without an `@` is fully starred.
pub fn email(value: &str) -> String {
    match value.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

/// `+8613800138000` becomes `+86*******8000`: the country code and the last four digits stay.
pub fn phone(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= 6 {
        return "*".repeat(chars.len());
    }
    let keep_head = if value.starts_with('+') { 3 } else { 0 };
    let keep_tail = 4;
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i < keep_head || i >= chars.len() - keep_tail {
                *c
            } else {
                '*'
            }
        })
        .collect()
}

/// What a value holds, from its key or its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Email,
    Phone,
}

/// The kind a JSON key names (`email`, `org_email`, `biz_mail`, `emails`; `phone`, `mobile`).
fn key_kind(key: &str) -> Option<Kind> {
    let key = key.to_ascii_lowercase();
    if key.contains("mail") {
        Some(Kind::Email)
    } else if key.contains("phone") || key.contains("mobile") {
        Some(Kind::Phone)
    } else {
        None
    }
}

/// The kind a string looks like: an address with `@`, or a number of 7 to 15 digits written
/// with nothing but `+`, spaces, dashes and parentheses (dates excepted).
fn shape_kind(text: &str) -> Option<Kind> {
    let text = text.trim();
    if let Some((local, domain)) = text.split_once('@')
        && !local.is_empty()
        && !domain.is_empty()
        && !text.contains(|c: char| c.is_whitespace() || c == '/')
    {
        return Some(Kind::Email);
    }
    let digits = text.chars().filter(char::is_ascii_digit).count();
    let phone_chars = text
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')'));
    let date = text.len() == 10 && text.as_bytes()[4] == b'-' && text.as_bytes()[7] == b'-';
    (phone_chars && (7..=15).contains(&digits) && !date).then_some(Kind::Phone)
}

fn masked(kind: Kind, text: &str) -> String {
    match kind {
        Kind::Email => email(text),
        Kind::Phone => phone(text),
    }
}

/// A free-text value (an audit target such as `user/.../identities/oidc/ann@example.com`): each
/// `/`-separated part that looks like an email or a phone number is masked.
fn mask_parts(text: &str, keep: &[String]) -> Option<String> {
    let mut changed = false;
    let parts: Vec<String> = text
        .split('/')
        .map(|part| match shape_kind(part) {
            Some(kind) if !kept(part, keep) => {
                changed = true;
                masked(kind, part)
            }
            _ => part.to_owned(),
        })
        .collect();
    changed.then(|| parts.join("/"))
}

fn kept(text: &str, keep: &[String]) -> bool {
    keep.iter().any(|k| k.eq_ignore_ascii_case(text.trim()))
}

/// Masks, anywhere in `value`, every email address and phone number: values under a key that
/// names one (`email`, `org_email`, `mobile`, `emails: [...]`, numbers included), and strings
/// shaped like one under any key (an external id that is an email, say), except the values in
/// `keep` (compared case-insensitively): what a viewer searched by. Identity sources name these
/// fields in many ways, hence the match on the key's words and on the values' shape.
pub fn json(value: &mut serde_json::Value, keep: &[String]) {
    walk(value, None, keep);
}

fn walk(value: &mut serde_json::Value, kind: Option<Kind>, keep: &[String]) {
    use serde_json::Value;
    match value {
        Value::String(text) => {
            if kept(text, keep) {
                return;
            }
            if let Some(kind) = kind.or_else(|| shape_kind(text)) {
                *text = masked(kind, text);
            } else if let Some(parts) = mask_parts(text, keep) {
                *text = parts;
            }
        }
        Value::Number(number) if kind == Some(Kind::Phone) => {
            *value = Value::String(phone(&number.to_string()));
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                walk(item, key_kind(key).or(kind), keep);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| walk(item, kind, keep)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_contact_values_anywhere_in_a_document() {
        let mut doc = serde_json::json!({
            "email": "zhang.san@example.com",
            "email_verified": true,
            "phone": "+8613800138000",
            "name": "Zhang San",
            "identities": [{"profile": {"org_email": "z@corp.cn", "mobile": "13800138000",
                                        "attributes": {"biz_mail": "a@b.c"}}}],
            "before": null
        });
        json(&mut doc, &["ZHANG.SAN@example.com".to_owned()]);
        assert_eq!(
            doc["email"], "zhang.san@example.com",
            "the value searched by"
        );
        assert_eq!(doc["phone"], "+86*******8000");
        assert_eq!(doc["email_verified"], true);
        assert_eq!(doc["name"], "Zhang San");
        let profile = &doc["identities"][0]["profile"];
        assert_eq!(profile["org_email"], "z***@corp.cn");
        assert_eq!(profile["mobile"], "*******8000");
        assert_eq!(profile["attributes"]["biz_mail"], "a***@b.c");
    }

    #[test]
    fn masks_lists_numbers_and_values_shaped_like_contacts() {
        let mut doc = serde_json::json!({
            "emails": ["a@b.c", {"value": "d@e.f", "primary": true}],
            "mobile": 13800138000u64,
            "external_id": "ann@corp.example",
            "target": "user/0193/identities/oidc/ann@corp.example",
            "id": "0193a1b2-0000-7000-8000-000000000000",
            "birthday": "1990-01-01",
            "count": 12345678,
            "note": "call +86 138 0013 8000"
        });
        json(&mut doc, &[]);
        assert_eq!(doc["emails"][0], "a***@b.c");
        assert_eq!(doc["emails"][1]["value"], "d***@e.f");
        assert_eq!(doc["emails"][1]["primary"], true);
        assert_eq!(doc["mobile"], "*******8000");
        assert_eq!(doc["external_id"], "a***@corp.example");
        assert_eq!(doc["target"], "user/0193/identities/oidc/a***@corp.example");
        assert_eq!(doc["id"], "0193a1b2-0000-7000-8000-000000000000");
        assert_eq!(doc["birthday"], "1990-01-01");
        assert_eq!(doc["count"], 12345678);
    }

    #[test]
    fn masks_email_local_part() {
        assert_eq!(email("zhang.san@example.com"), "z***@example.com");
        assert_eq!(email("not-an-email"), "***");
    }

    #[test]
    fn masks_phone_middle() {
        assert_eq!(phone("+8613800138000"), "+86*******8000");
        assert_eq!(phone("12345"), "*****");
    }
}
