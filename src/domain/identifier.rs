//! The canonical form of the identifiers that matching compares (usernames and emails), and the
//! test for *suspicious* values: values that another system, or a careless comparison, could take
//! for a different, plainer identifier.
//!
//! Canonical form: trimmed, Unicode NFC, full case folding (Unicode's `CaseFolding.txt`), NFC
//! again. It is idempotent, and two values share it only if they differ in letter case (ASCII or
//! not: `Zhāng` and `zhāng`, `Σ` and `ς`), surrounding whitespace, or canonical equivalence (a
//! precomposed `é` and `e` + U+0301). Email domains are mapped by IDNA (UTS 46) instead: `XN--…`
//! and `例子` are one domain.
//!
//! Suspicious: a value with a non-ASCII character that case mapping (either way), case folding or
//! compatibility normalisation (NFKC) turns into ASCII (U+212A KELVIN SIGN, U+017F LONG S, `ß`,
//! dotless `ı`, fullwidth and superscript letters, ligatures such as U+FB01); that NFC replaces
//! with another character (U+212B ANGSTROM SIGN, CJK compatibility ideographs); that UTS #39 does
//! not allow in identifiers (invisible and format characters, symbols); that IDNA maps to
//! something other than its lowercase in a domain (U+3002 `。` becomes `.`, a soft hyphen
//! vanishes); or whose letters mix scripts beyond what UTS #39 calls *highly restrictive* (Latin
//! with Cyrillic or Greek, say; Latin with Han, kana or Hangul is fine). Their canonical form can
//! equal an identifier that belongs to someone else, so they never cause an automatic link and
//! are never copied onto a new account.

use unicode_normalization::UnicodeNormalization;
use unicode_security::{GeneralSecurityProfile, RestrictionLevel, RestrictionLevelDetection};

/// The canonical form of an identifier (a username, or an email's local part).
pub fn canonical(raw: &str) -> String {
    let composed: String = raw.trim().nfc().collect();
    caseless::default_case_fold_str(&composed).nfc().collect()
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

/// Whether a username (or any single identifier) is suspicious; see the module's text.
pub fn is_suspicious(raw: &str) -> bool {
    // Judged on the characters as received: NFC itself turns U+212A KELVIN SIGN into `K`.
    let raw = raw.trim();
    raw.chars().any(passes_for_another) || mixes_scripts(&raw.nfc().collect::<String>())
}

/// An email is judged part by part: its local part as an identifier; its domain character by
/// character (as an identifier, and against what IDNA makes of it), and each label of the
/// domain's Unicode form for mixed scripts, so that `ivan@почта.рф` and `ivan@почта.com` are
/// fine and `xn--` spellings are judged like the Unicode ones.
pub fn is_suspicious_email(local: &str, domain: &str) -> bool {
    is_suspicious(local)
        || domain
            .trim()
            .chars()
            .any(|c| passes_for_another(c) || idna_changes(c))
        || canonical_domain(domain).split('.').any(mixes_scripts)
}

/// A non-ASCII character that is not what it looks like: one that case mapping, case folding or
/// compatibility normalisation turns into ASCII, that canonical normalisation replaces, or that
/// UTS #39 does not allow in identifiers.
fn passes_for_another(c: char) -> bool {
    if c.is_ascii() {
        return false;
    }
    let single = c.to_string();
    c.to_lowercase().any(|m| m.is_ascii())
        || c.to_uppercase().any(|m| m.is_ascii())
        || caseless::default_case_fold_str(&single)
            .chars()
            .any(|m| m.is_ascii())
        || single.nfkc().any(|m| m.is_ascii())
        || single.nfc().collect::<String>() != single
        || !c.identifier_allowed()
}

/// A non-ASCII character of a domain that IDNA maps to something other than its own lowercase
/// (`。` to `.`, a soft hyphen to nothing).
fn idna_changes(c: char) -> bool {
    if c.is_ascii() {
        return false;
    }
    let (mapped, _) = idna::domain_to_unicode(&c.to_string());
    mapped != c.to_lowercase().collect::<String>()
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
    fn canonical_form_is_trimmed_composed_and_case_folded() {
        assert_eq!(canonical("  ZhangSan "), "zhangsan");
        assert_eq!(canonical("ZHĀNG"), "zhāng");
        // e + combining acute and the precomposed é are one identifier.
        assert_eq!(canonical("Jose\u{301}"), canonical("josé"));
        assert_eq!(canonical("张三"), "张三");
        // Final and medial sigma fold together.
        assert_eq!(canonical("ΟΔΥΣΣΕΥΣ"), canonical("οδυσσευσ"));
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
    fn lookalikes_are_suspicious() {
        for raw in [
            "\u{212A}evin",         // KELVIN SIGN
            "\u{17F}ally",          // LONG S
            "ｋｅｖｉｎ",           // fullwidth
            "ᴮᴵᴳᴮᴵᴿᴰ",              // modifier capitals (Spotify, 2013)
            "\u{FB01}nance",        // LIGATURE FI
            "ad\u{131}n",           // dotless i (GitHub, 2019)
            "\u{130}stanbul",       // dotted capital I
            "stra\u{DF}e",          // sharp s: uppercase is SS
            "p\u{430}ypal",         // Cyrillic a among Latin
            "g\u{3BF}\u{3BF}gle",   // Greek omicrons among Latin
            "\u{2170}nfo",          // SMALL ROMAN NUMERAL ONE
            "\u{212B}ngstr\u{F6}m", // ANGSTROM SIGN: NFC makes it Å
            "\u{F9E1}四",           // a CJK compatibility ideograph: NFC makes it 李
            "vic\u{200B}tim",       // a zero-width space
            "vic\u{AD}tim",         // a soft hyphen
        ] {
            assert!(is_suspicious(raw), "{raw}");
        }
    }

    #[test]
    fn lookalike_domains_are_suspicious() {
        for domain in [
            "corp\u{3002}example",  // IDEOGRAPHIC FULL STOP: IDNA makes it a dot
            "corp\u{FF61}example",  // HALFWIDTH IDEOGRAPHIC FULL STOP
            "co\u{AD}rp.example",   // a soft hyphen vanishes
            "xn--pypal-4ve.com",    // pаypal with a Cyrillic а, written in xn--
            "p\u{43E}chta.example", // Cyrillic о in a Latin label
        ] {
            assert!(is_suspicious_email("victim", domain), "{domain}");
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
            "李四",
        ] {
            assert!(!is_suspicious(raw), "{raw}");
        }
        for (local, domain) in [
            ("zhāng", "例子.公司"),
            ("ivan", "почта.рф"),
            ("ivan", "почта.com"),
            ("müller", "bücher.de"),
        ] {
            assert!(!is_suspicious_email(local, domain), "{local}@{domain}");
        }
        let ascii = idna::domain_to_ascii("例子.公司").unwrap();
        assert!(!is_suspicious_email("zhang", &ascii));
    }
}
