//! The canonical form of the identifiers that matching compares (usernames and emails), and the
//! test for *suspicious* values: values that another system, or a careless comparison, could take
//! for a different, plainer identifier.
//!
//! Canonical form: trimmed, Unicode NFC, lowercased with Unicode's case mapping, NFC again.
//! It is idempotent, and two values share it only if they differ in letter case (ASCII or not:
//! `Zhāng` and `zhāng`), surrounding whitespace, or canonical equivalence (a precomposed `é`
//! and `e` + U+0301). Email domains are also mapped by IDNA (UTS 46): `XN--FSQU00A` and `例子`
//! are one domain.
//!
//! Suspicious: a value with a non-ASCII character that case mapping (either way) or
//! compatibility normalisation (NFKC) turns into ASCII (U+212A KELVIN SIGN, U+017F LONG S, `ß`,
//! dotless `ı`, fullwidth and superscript letters, ligatures such as U+FB01), or whose letters mix
//! scripts beyond what UTS #39 calls *highly restrictive* (Latin with Cyrillic or Greek, say;
//! Latin with Han, kana or Hangul is fine). Their canonical form can equal an ASCII identifier
//! that belongs to someone else, so they never cause an automatic link and are never copied onto
//! a new account.

use unicode_normalization::UnicodeNormalization;
use unicode_security::{RestrictionLevel, RestrictionLevelDetection};

/// The canonical form of an identifier (a username, or an email's local part).
pub fn canonical(raw: &str) -> String {
    let composed: String = raw.trim().nfc().collect();
    composed.to_lowercase().nfc().collect()
}

/// The canonical form of an email domain: IDNA-mapped (which lowercases, normalises and reads
/// `xn--` labels) where the domain is valid IDNA, else the identifier canonical form.
pub fn canonical_domain(raw: &str) -> String {
    let (mapped, result) = idna::domain_to_unicode(raw.trim());
    if result.is_ok() && !mapped.is_empty() {
        mapped.nfc().collect()
    } else {
        canonical(raw)
    }
}

/// Whether a value (as received, or any part of it) is suspicious; see the module's text.
pub fn is_suspicious(raw: &str) -> bool {
    // Judged on the characters as received: NFC itself turns U+212A KELVIN SIGN into `K`.
    let raw = raw.trim();
    raw.chars().any(maps_onto_ascii) || mixes_scripts(&raw.nfc().collect::<String>())
}

/// An email is judged part by part: its local part and each label of its domain must each be of
/// one script (or a highly restrictive mix), as `ivan@почта.рф` is.
pub fn is_suspicious_email(local: &str, domain: &str) -> bool {
    is_suspicious(local)
        || is_suspicious(domain)
        || domain.split(['.', '。', '．', '｡']).any(mixes_scripts)
}

/// A non-ASCII character whose lowercase, uppercase or compatibility decomposition contains an
/// ASCII character.
fn maps_onto_ascii(c: char) -> bool {
    if c.is_ascii() {
        return false;
    }
    c.to_lowercase().any(|m| m.is_ascii())
        || c.to_uppercase().any(|m| m.is_ascii())
        || std::iter::once(c).nfkc().any(|m| m.is_ascii())
}

/// Letters of more scripts than UTS #39's highly restrictive level allows.
fn mixes_scripts(text: &str) -> bool {
    let letters: String = text.chars().filter(|c| c.is_alphanumeric()).collect();
    letters.detect_restriction_level() > RestrictionLevel::HighlyRestrictive
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_is_trimmed_composed_and_lowercased() {
        assert_eq!(canonical("  ZhangSan "), "zhangsan");
        assert_eq!(canonical("ZHĀNG"), "zhāng");
        // e + combining acute and the precomposed é are one identifier.
        assert_eq!(canonical("Jose\u{301}"), canonical("josé"));
        assert_eq!(canonical("张三"), "张三");
    }

    #[test]
    fn domains_are_idna_mapped() {
        assert_eq!(canonical_domain("Example.COM"), "example.com");
        let ascii = idna::domain_to_ascii("例子.公司").unwrap();
        assert!(ascii.starts_with("xn--"), "{ascii}");
        assert_eq!(canonical_domain(&ascii.to_uppercase()), "例子.公司");
        assert_eq!(canonical_domain("例子.公司"), "例子.公司");
    }

    #[test]
    fn lookalikes_that_map_onto_ascii_are_suspicious() {
        for raw in [
            "\u{212A}evin",       // KELVIN SIGN
            "\u{17F}ally",        // LONG S
            "ｋｅｖｉｎ",         // fullwidth
            "ᴮᴵᴳᴮᴵᴿᴰ",            // modifier capitals (Spotify, 2013)
            "\u{FB01}nance",      // LIGATURE FI
            "ad\u{131}n",         // dotless i (GitHub, 2019)
            "\u{130}stanbul",     // dotted capital I
            "stra\u{DF}e",        // sharp s: uppercase is SS
            "p\u{430}ypal",       // Cyrillic a among Latin
            "g\u{3BF}\u{3BF}gle", // Greek omicrons among Latin
            "\u{2170}nfo",        // SMALL ROMAN NUMERAL ONE
        ] {
            assert!(is_suspicious(raw), "{raw}");
        }
    }

    #[test]
    fn legitimate_non_ascii_values_are_not_suspicious() {
        for raw in [
            "张三",
            "zhāng",
            "José",
            "иван",
            "Müller",
            "zhangsan",
            "佐藤さん",
            "김철수",
            "张三abc",
        ] {
            assert!(!is_suspicious(raw), "{raw}");
        }
        assert!(!is_suspicious_email("zhāng", "例子.公司"));
        assert!(!is_suspicious_email("ivan", "почта.рф"));
        assert!(is_suspicious_email("ivan", "p\u{43E}chta.example"));
    }
}
