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

/// Whether a JSON key names an email address (`email`, `org_email`, `biz_mail`, ...).
fn email_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("email") || key.contains("mail")
}

/// Whether a JSON key names a phone number (`phone`, `mobile`, ...).
fn phone_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("phone") || key.contains("mobile")
}

/// Masks, anywhere in `value`, every string held under a key that names an email address or a
/// phone number, except the values in `keep` (compared case-insensitively): what a viewer
/// searched by. Profiles from identity sources name these fields in many ways, hence the match
/// on the key's words rather than on a fixed list.
pub fn json(value: &mut serde_json::Value, keep: &[String]) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                match item {
                    Value::String(text) if !keep.iter().any(|k| k.eq_ignore_ascii_case(text)) => {
                        if email_key(key) {
                            *text = email(text);
                        } else if phone_key(key) {
                            *text = phone(text);
                        }
                    }
                    Value::String(_) => {}
                    other => json(other, keep),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| json(item, keep)),
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
