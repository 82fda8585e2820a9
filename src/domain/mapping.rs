//! Templates over a login's profile (contract section 9): `"+{attributes.state_code}{attributes.mobile}"`
//! builds a value for an account field out of the fields a source really sends. A placeholder
//! names a path into the profile's nested objects, keys separated by dots; a template yields a
//! value only when every placeholder finds one.

use std::{collections::BTreeMap, fmt};

use serde_json::{Map, Value};

use super::attributes::AttributeName;
use super::field::{ATTRIBUTE_PREFIX, FieldError, MatchField, MatchKey};
use super::presets::Preset;

/// Longest template accepted, in characters: a mapping is configuration, not data.
const MAX_TEMPLATE_CHARS: usize = 512;

/// A parsed template: literal text and placeholders, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// A path of object keys into the profile.
    Placeholder(Vec<String>),
}

impl Template {
    /// Reads a template: text with `{path.to.key}` placeholders; `{{` and `}}` stand for literal
    /// braces. A key is letters, digits, `_` and `-`; the error says what is wrong and where.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.chars().count() > MAX_TEMPLATE_CHARS {
            return Err(format!("longer than {MAX_TEMPLATE_CHARS} characters"));
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = raw.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, n)| *n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|(_, n)| *n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(format!("unmatched '}}' at {at} (write '}}}}' for a brace)")),
                '{' => {
                    let mut path = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, c)) => path.push(c),
                            None => return Err(format!("the placeholder at {at} is not closed")),
                        }
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Placeholder(path_of(&path, at)?));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.iter().any(|p| matches!(p, Part::Placeholder(_))) {
            return Err("no placeholder: a mapping takes something from the profile".into());
        }
        Ok(Self { parts })
    }

    /// The value for this profile: `None` when a placeholder finds nothing, an empty string, or
    /// a value that is neither a string nor a number (an object, a list, a boolean, null).
    /// Numbers are written as JSON writes them (`13800138000`, `86`).
    pub fn render(&self, profile: &Map<String, Value>) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Placeholder(path) => match lookup(profile, path)? {
                    Value::String(s) if !s.trim().is_empty() => out.push_str(s),
                    // An integer as written; a fraction or a number too large for 64 bits would
                    // be rounded, and two employee numbers must not round to one.
                    Value::Number(n) if n.is_i64() || n.is_u64() => out.push_str(&n.to_string()),
                    _ => return None,
                },
            }
        }
        Some(out)
    }

    /// The paths the template reads, as written (`attributes.mobile`).
    pub fn placeholders(&self) -> impl Iterator<Item = String> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(path) => Some(path.join(".")),
            Part::Literal(_) => None,
        })
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(text) => f.write_str(&text.replace('{', "{{").replace('}', "}}"))?,
                Part::Placeholder(path) => write!(f, "{{{}}}", path.join("."))?,
            }
        }
        Ok(())
    }
}

/// Most attributes a mapping builds: as many as an account holds.
const MAX_MAPPED_ATTRIBUTES: usize = super::attributes::MAX_ATTRIBUTES;

/// One mapped field: its template, and whether the template only stands in for a profile that
/// lacks the field's standard name (a provider's preset) or replaces it (the connection's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The template building the value.
    pub template: Template,
    /// From a preset: the profile's own `email`, `phone` or `username`, when it carries one,
    /// wins over it.
    pub fallback: bool,
}

/// A connection's `mapping` and `verified_fields`, checked: the provider's preset with the
/// connection's own keys over it, one template per mapped field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping {
    /// The template building the email, if the email is mapped.
    pub email: Option<Mapped>,
    /// The template building the phone number (then normalised as any phone).
    pub phone: Option<Mapped>,
    /// The template building the username.
    pub username: Option<Mapped>,
    /// The templates building account attributes, by attribute.
    pub attributes: BTreeMap<AttributeName, Template>,
    /// Mapped fields counted as verified whatever the profile's flags say (an attribute is
    /// verified only so: a profile has no flag for it).
    pub verified: Vec<MatchKey>,
    /// The connection's own keys, as written (what its settings read back as).
    written: BTreeMap<String, String>,
}

impl Mapping {
    /// The template of `field`, if it is mapped.
    pub fn template(&self, field: MatchField) -> Option<&Mapped> {
        match field {
            MatchField::Email => self.email.as_ref(),
            MatchField::Phone => self.phone.as_ref(),
            MatchField::Username => self.username.as_ref(),
        }
    }

    /// Whether the connection vouches for `key`.
    pub fn vouches_for(&self, key: &MatchKey) -> bool {
        self.verified.contains(key)
    }

    /// Whether `key` is mapped at all.
    pub fn maps(&self, key: &MatchKey) -> bool {
        match key {
            MatchKey::Field(field) => self.template(*field).is_some(),
            MatchKey::Attribute(name) => self.attributes.contains_key(name),
        }
    }

    /// The connection's own keys, as written.
    pub fn written(&self) -> &BTreeMap<String, String> {
        &self.written
    }

    /// Every mapped target with its template (the preset's and the connection's), as the
    /// connection's view shows what applies.
    pub fn effective(&self) -> BTreeMap<String, String> {
        let standard = MatchField::ALL.iter().filter_map(|f| {
            Some((
                f.as_str().to_owned(),
                self.template(*f)?.template.to_string(),
            ))
        });
        let attributes = self
            .attributes
            .iter()
            .map(|(name, t)| (format!("{ATTRIBUTE_PREFIX}{name}"), t.to_string()));
        standard.chain(attributes).collect()
    }

    /// Reads `mapping` over the preset's, then `verified_fields` (the preset's when absent). A
    /// key written with an empty template takes the preset's key away.
    pub(crate) fn validate(
        preset: Option<&Preset>,
        written: Option<&BTreeMap<String, String>>,
        verified: Option<&[String]>,
    ) -> Result<Self, FieldError> {
        let mut mapping = Self {
            written: written.cloned().unwrap_or_default(),
            ..Self::default()
        };
        let preset_keys = preset.into_iter().flat_map(|p| p.mapping.iter());
        for (target, template) in preset_keys {
            let template = Template::parse(template).expect("presets parse");
            mapping.set(
                &target.parse().expect("preset targets are valid"),
                template,
                true,
            );
        }
        for (target, raw) in written.into_iter().flatten() {
            let key: MatchKey = target.parse().map_err(|_| {
                FieldError::new(
                    "mapping",
                    format!(
                        "{target:?} cannot be mapped: the targets are email, phone, username \
                         and attributes.<name>"
                    ),
                )
            })?;
            if raw.is_empty() {
                mapping.unset(&key);
                continue;
            }
            let template = Template::parse(raw)
                .map_err(|m| FieldError::new("mapping", format!("{target}: {m}")))?;
            mapping.set(&key, template, false);
        }
        if mapping.attributes.len() > MAX_MAPPED_ATTRIBUTES {
            return Err(FieldError::new(
                "mapping",
                format!("more than {MAX_MAPPED_ATTRIBUTES} attributes"),
            ));
        }
        let verified: Vec<String> = match verified {
            Some(list) => list.to_vec(),
            None => preset
                .into_iter()
                .flat_map(|p| p.verified_fields.iter())
                .filter(|f| mapping.maps(&f.parse().expect("preset fields are valid")))
                .map(|f| (*f).to_owned())
                .collect(),
        };
        for name in &verified {
            let field: MatchKey = name
                .parse()
                .map_err(|m| FieldError::new("verified_fields", m))?;
            if !mapping.maps(&field) {
                return Err(FieldError::new(
                    "verified_fields",
                    format!("{name:?} is not mapped: only a mapped field can be vouched for"),
                ));
            }
            if !mapping.verified.contains(&field) {
                mapping.verified.push(field);
            }
        }
        Ok(mapping)
    }

    fn set(&mut self, key: &MatchKey, template: Template, fallback: bool) {
        let field = match key {
            MatchKey::Field(field) => *field,
            MatchKey::Attribute(name) => {
                self.attributes.insert(name.clone(), template);
                return;
            }
        };
        let mapped = Some(Mapped { template, fallback });
        match field {
            MatchField::Email => self.email = mapped,
            MatchField::Phone => self.phone = mapped,
            MatchField::Username => self.username = mapped,
        }
    }

    fn unset(&mut self, key: &MatchKey) {
        match key {
            MatchKey::Field(MatchField::Email) => self.email = None,
            MatchKey::Field(MatchField::Phone) => self.phone = None,
            MatchKey::Field(MatchField::Username) => self.username = None,
            MatchKey::Attribute(name) => {
                self.attributes.remove(name);
            }
        }
    }
}

fn path_of(raw: &str, at: usize) -> Result<Vec<String>, String> {
    let keys: Vec<String> = raw.split('.').map(str::to_owned).collect();
    let valid = |k: &String| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if keys.iter().all(valid) {
        Ok(keys)
    } else {
        Err(format!(
            "the placeholder {{{raw}}} at {at} must be keys of letters, digits, '_' or '-' \
             separated by dots"
        ))
    }
}

fn lookup<'a>(profile: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut value = profile.get(first)?;
    for key in rest {
        value = value.as_object()?.get(key)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn profile(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    /// DingTalk's user detail: the country code apart from the mobile number.
    fn dingtalk() -> Map<String, Value> {
        profile(json!({
            "unionid": "z21HjQliSzpw0YWCNxmii6u2Os62cZ62iSZ", "userid": "zhangsan",
            "attributes": {"state_code": "86", "mobile": "13800138000", "job_number": 4021,
                           "org_email": "", "active": true, "dept_id_list": [1, 2],
                           "extension": {"level": "P7"}, "title": null},
        }))
    }

    fn render(template: &str) -> Option<String> {
        Template::parse(template).unwrap().render(&dingtalk())
    }

    #[test]
    fn every_placeholder_present_yields_the_value() {
        assert_eq!(
            render("+{attributes.state_code}{attributes.mobile}").as_deref(),
            Some("+8613800138000")
        );
        assert_eq!(render("{userid}").as_deref(), Some("zhangsan"));
        assert_eq!(
            render("{attributes.extension.level}").as_deref(),
            Some("P7"),
            "nested objects"
        );
    }

    #[test]
    fn a_number_is_written_as_json_writes_it() {
        assert_eq!(render("E{attributes.job_number}").as_deref(), Some("E4021"));
        // Only integers: a fraction, or a number past 64 bits, would be rounded, and two
        // employee numbers must not round to one.
        let numbers = profile(
            json!({"fraction": 1.5, "huge": 123456789012345678901234_f64,
                                     "negative": -7, "big": 18446744073709551615_u64}),
        );
        let of = |t: &str| Template::parse(t).unwrap().render(&numbers);
        assert_eq!(of("{fraction}"), None);
        assert_eq!(of("{huge}"), None);
        assert_eq!(of("{negative}").as_deref(), Some("-7"));
        assert_eq!(of("{big}").as_deref(), Some("18446744073709551615"));
    }

    #[test]
    fn one_missing_placeholder_yields_nothing() {
        for template in [
            "{attributes.fax}",
            "+{attributes.state_code}{attributes.fax}",
            "{attributes.org_email}",
            "{attributes.active}",
            "{attributes.dept_id_list}",
            "{attributes.extension}",
            "{attributes.title}",
            "{attributes.mobile.number}",
            "{nothing.at.all}",
        ] {
            assert_eq!(render(template), None, "{template}");
        }
    }

    #[test]
    fn braces_can_be_written_and_bad_templates_say_why() {
        assert_eq!(render("{{{userid}}}").as_deref(), Some("{zhangsan}"));
        for (bad, says) in [
            ("{userid", "not closed"),
            ("userid}", "unmatched"),
            ("{}", "placeholder {}"),
            ("{a..b}", "placeholder {a..b}"),
            ("{a b}", "placeholder {a b}"),
            ("plain", "no placeholder"),
        ] {
            let error = Template::parse(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
        assert!(Template::parse(&"{a}".repeat(200)).is_err(), "too long");
    }

    #[test]
    fn a_template_reads_back_as_written() {
        let raw = "+{attributes.state_code}{{x}}{attributes.mobile}";
        let template = Template::parse(raw).unwrap();
        assert_eq!(template.to_string(), raw);
        assert_eq!(
            template.placeholders().collect::<Vec<_>>(),
            ["attributes.state_code", "attributes.mobile"]
        );
    }
}
