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

#[cfg(test)]
mod tests {
    use super::*;

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
