//! A connection: one external identity source of one user pool, with the settings that steer the
//! decision. `ConnectionSpec` is the unvalidated shape (config file, admin API); `ConnectionSettings`
//! is what the rest of the program works with.

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

use super::attributes::AttributeName;
use super::directory::{DirectorySettings, DirectorySpec};
pub use super::field::{ATTRIBUTE_PREFIX, FieldError, MatchField, MatchKey};
use super::leavers::{OnSourceRemoval, RemovalGuard, RemovalGuardSpec};
use super::mapping::Mapping;
use super::phone::CountryCode;

/// Contract default for `binding_ttl`.
pub const DEFAULT_BINDING_TTL: Duration = Duration::from_secs(72 * 3600);
/// A binding left open for more than a year is a configuration mistake, not a policy.
const MAX_BINDING_TTL: Duration = Duration::from_secs(366 * 24 * 3600);
const MAX_POOL_ID_LEN: usize = 128;
const MAX_TEXT_LEN: usize = 256;

/// A connection's identifier (`dingtalk-corp`), as logins name it in `data.connection`: lowercase
/// ASCII letters, digits and `-`, 1 to 31 characters; unique within its pool and fixed once
/// created.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ConnectionId(String);

impl ConnectionId {
    /// Accepts `raw` exactly as given (no trimming, no lowercasing) when it has the identifier
    /// format; the error says what the format is.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok_len = (1..=31).contains(&raw.len());
        let ok_chars = raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok_len && ok_chars {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "{raw:?} is not a valid identifier (lowercase letters, digits and '-', 1 to 31 characters)"
            ))
        }
    }

    /// The identifier's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user pool (tenant) id as the identity platform names it, e.g. `pool-1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserPoolId(String);

impl UserPoolId {
    /// Accepts 1 to 128 bytes without whitespace or control characters, kept exactly as given
    /// (pool ids are compared as the platform writes them, case included).
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > MAX_POOL_ID_LEN {
            return Err(format!("user pool id must be 1 to {MAX_POOL_ID_LEN} bytes"));
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("user pool id must not contain whitespace or control characters".into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// The pool id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserPoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

text_enum!(
    /// What happens to an identity that maps to no existing account (the connection's
    /// `login_mode`):
    ///
    /// - `normal` (the default): it gets a new account;
    /// - `login_only`: it is rejected (`login.rejected`, reason `unknown_user`); the connection
    ///   never creates an account, not even by resolving a binding.
    LoginMode { Normal => "normal", LoginOnly => "login_only" }
);
text_enum!(
    /// How an unknown identity is associated with existing accounts (the connection's
    /// `association`):
    ///
    /// - `disabled` (the default): no account is looked for; the identity gets a new account (or
    ///   is rejected under `login_only`);
    /// - `field_matching`: it is linked to the one account whose `match_fields` equal the
    ///   login's, unless several match or a safety rule sets that account aside (then a pending
    ///   binding);
    /// - `ask_binding`: any match opens a pending binding, for the person (through the platform)
    ///   or an admin to resolve.
    Association {
        Disabled => "disabled",
        FieldMatching => "field_matching",
        AskBinding => "ask_binding",
    }
);

text_enum!(
    /// How the listed `match_fields` combine (contract section 9): `any` (the default) makes a
    /// candidate of an account matching on any one of them; `all` only of an account matching on
    /// every listed field the login carries (and the login must carry at least one).
    MatchRule { Any => "any", All => "all" }
);

text_enum!(
    /// What a login of a linked identity does when the source now sends another usable email,
    /// phone or username than the identity's last snapshot (contract section 1, step 3):
    /// `ignore` publishes nothing, `notify` publishes `identity.changed`, `update_user` also
    /// copies the new value onto the account where no other account of the pool holds it, and
    /// publishes `user.updated`.
    OnProfileChange { Ignore => "ignore", Notify => "notify", UpdateUser => "update_user" }
);

/// A connection as written in the config file or sent to the admin API, not yet validated.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSpec {
    /// Required: the connection's identifier (lowercase letters, digits and `-`, 1 to 31
    /// characters).
    pub identifier: Option<String>,
    /// Required: the user pool (tenant) the connection belongs to.
    pub user_pool_id: Option<String>,
    /// The name people see in the console, up to 256 characters without control characters;
    /// defaults to the identifier.
    pub display_name: Option<String>,
    /// The kind of identity source, up to 256 characters; empty by default. `dingtalk`, `wecom`
    /// and `feishu` bring a preset mapping of that source's profile (see `presets`), which
    /// `mapping` overrides key by key; any other text is for people only.
    pub provider: Option<String>,
    /// `normal` (the default) or `login_only`.
    pub login_mode: Option<String>,
    /// `disabled` (the default), `field_matching` or `ask_binding`.
    pub association: Option<String>,
    /// The fields matching compares, in order, among `email`, `phone`, `username` and
    /// `attributes.<name>` (an attribute some mapping fills): at least one, none twice;
    /// `["email"]` by default.
    pub match_fields: Option<Vec<String>>,
    /// `any` (the default) or `all`: see [`MatchRule`].
    pub match_rule: Option<String>,
    /// Attribute names whose values are unique among the accounts of the pool (enforced by the
    /// database for every account of the pool, whichever connection or admin writes them).
    pub unique_attributes: Option<Vec<String>>,
    /// Whether an email or phone must be verified by the source to take part in matching and
    /// to be copied onto a new account. Default `true`.
    pub require_verified: Option<bool>,
    /// The calling code (`86` or `+86`) used to read phone numbers given without `+`; absent or
    /// empty: such numbers are unusable.
    pub default_country_code: Option<String>,
    /// How long a pending binding waits before it expires, as a duration such as `72h` or
    /// `1h 30m`: whole seconds, from 1 s to 366 days. Default `72h`.
    pub binding_ttl: Option<String>,
    /// Link to candidates whose matching email or phone is unverified on the account (for a
    /// source that is the source of truth for its accounts). Default `false`.
    pub trust_unverified_accounts: Option<bool>,
    /// When not empty, an email outside these domains is unusable (not matched, not copied).
    pub allowed_email_domains: Option<Vec<String>>,
    /// `ignore`, `notify` (the default) or `update_user`: see [`OnProfileChange`].
    pub on_profile_change: Option<String>,
    /// Account fields (`email`, `phone`, `username`, `attributes.<name>`) built from the login's
    /// profile by a template (`"+{attributes.state_code}{attributes.mobile}"`), for sources that
    /// do not send the standard names. A mapped field is taken from its template alone; an empty
    /// template takes a preset's key away.
    pub mapping: Option<BTreeMap<String, String>>,
    /// Mapped fields the source vouches for (a corporate directory): verified whatever the
    /// profile's flags say. Each must be mapped. Without it, the preset's.
    pub verified_fields: Option<Vec<String>>,
    /// The source's open API, asked about the person (contract section 10); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectorySpec>,
    /// `notify` (the default), `unlink` or `suspend`: what the source's
    /// `directory.user_removed` does (contract section 11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_source_removal: Option<String>,
    /// The guard against mass removal; the defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removal_guard: Option<RemovalGuardSpec>,
}

/// A connection's validated settings, with the contract's defaults filled in: what the decision
/// and a binding's resolution read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// The connection's identifier within its pool.
    pub identifier: ConnectionId,
    /// The user pool (tenant) whose accounts the connection's identities are linked to.
    pub user_pool_id: UserPoolId,
    /// The name people see in the console; the identifier when none was given.
    pub display_name: String,
    /// The kind of identity source (`dingtalk`, `ldap`), for people only; may be empty.
    pub provider: String,
    /// What happens to an identity that matches no account.
    pub login_mode: LoginMode,
    /// Whether and how an unknown identity is matched to existing accounts.
    pub association: Association,
    /// The fields matching compares, in order (a candidate's `matched_on` follows it): free of
    /// repeats and never empty; every attribute among them is filled by the mapping.
    pub match_fields: Vec<MatchKey>,
    /// How the match fields combine.
    pub match_rule: MatchRule,
    /// Attributes unique inside the pool, as this connection declares them.
    pub unique_attributes: Vec<AttributeName>,
    /// Whether a login's email or phone counts (for matching, or for a new account) only when
    /// the source says it is verified; usernames are never subject to it.
    pub require_verified: bool,
    /// The calling code whose region's national format reads phone numbers given without `+`;
    /// `None`: such numbers are unusable.
    pub default_country_code: Option<CountryCode>,
    /// How long a pending binding waits before it expires: whole seconds, from 1 s to 366 days.
    pub binding_ttl: Duration,
    /// Whether a candidate whose matching email or phone is unverified on the account may still
    /// be linked automatically (`false`: it is set aside as `candidate_unverified`).
    pub trust_unverified_accounts: bool,
    /// Canonical domains (IDNA-mapped, lowercase); empty: every domain is allowed.
    pub allowed_email_domains: Vec<String>,
    /// What a linked identity's changed email, phone or username does.
    pub on_profile_change: OnProfileChange,
    /// The account fields built from the profile by a template: the provider's preset with the
    /// connection's own keys over it.
    pub mapping: Mapping,
    /// The source's directory, asked about people before their logins are decided.
    pub directory: Option<DirectorySettings>,
    /// What the source's removal of a person does.
    pub on_source_removal: OnSourceRemoval,
    /// Removals beyond it are held for an admin.
    pub removal_guard: RemovalGuard,
    /// The `settings_version` decisions record: it changes whenever the stored settings change
    /// (0 for settings not stored yet).
    pub version: i64,
}

impl ConnectionSettings {
    /// Whether an email of `domain` (canonical) may be used.
    pub fn email_domain_allowed(&self, domain: &str) -> bool {
        self.allowed_email_domains.is_empty()
            || self.allowed_email_domains.iter().any(|d| d == domain)
    }

    /// The same settings apart from the version (what a change is judged by).
    pub fn same_settings(&self, other: &Self) -> bool {
        Self {
            version: other.version,
            ..self.clone()
        } == *other
    }

    /// Checks a spec and fills in the contract's defaults; the error names the first bad
    /// setting. The version is 0 until the settings are stored.
    pub fn validate(spec: &ConnectionSpec) -> Result<Self, FieldError> {
        let identifier = required(
            "identifier",
            spec.identifier.as_deref(),
            ConnectionId::parse,
        )?;
        let user_pool_id = required(
            "user_pool_id",
            spec.user_pool_id.as_deref(),
            UserPoolId::parse,
        )?;
        let display_name = bounded_text("display_name", spec.display_name.as_deref())?
            .unwrap_or_else(|| identifier.as_str().to_owned());
        let provider = bounded_text("provider", spec.provider.as_deref())?.unwrap_or_default();
        let login_mode =
            parse_opt("login_mode", spec.login_mode.as_deref())?.unwrap_or(LoginMode::Normal);
        let association =
            parse_opt("association", spec.association.as_deref())?.unwrap_or(Association::Disabled);
        let preset = super::presets::of(&provider);
        let default_country_code = match spec
            .default_country_code
            .as_deref()
            .or(preset.and_then(|p| p.default_country_code))
        {
            None | Some("") => None,
            Some(raw) => Some(
                CountryCode::parse(raw).map_err(|m| FieldError::new("default_country_code", m))?,
            ),
        };
        let mapping = Mapping::validate(
            preset,
            spec.mapping.as_ref(),
            spec.verified_fields.as_deref(),
        )?;
        let match_fields = match_fields(spec.match_fields.as_deref(), &mapping)?;
        Ok(Self {
            identifier,
            user_pool_id,
            display_name,
            provider,
            login_mode,
            association,
            match_fields,
            match_rule: parse_opt("match_rule", spec.match_rule.as_deref())?
                .unwrap_or(MatchRule::Any),
            unique_attributes: unique_attributes(spec.unique_attributes.as_deref())?,
            require_verified: spec.require_verified.unwrap_or(true),
            default_country_code,
            binding_ttl: binding_ttl(spec.binding_ttl.as_deref())?,
            trust_unverified_accounts: spec.trust_unverified_accounts.unwrap_or(false),
            allowed_email_domains: allowed_email_domains(spec.allowed_email_domains.as_deref())?,
            on_profile_change: parse_opt("on_profile_change", spec.on_profile_change.as_deref())?
                .unwrap_or(OnProfileChange::Notify),
            mapping,
            directory: spec
                .directory
                .as_ref()
                .map(DirectorySettings::validate)
                .transpose()?,
            on_source_removal: parse_opt("on_source_removal", spec.on_source_removal.as_deref())?
                .unwrap_or(OnSourceRemoval::Notify),
            removal_guard: spec
                .removal_guard
                .as_ref()
                .map(RemovalGuard::validate)
                .transpose()?
                .unwrap_or_default(),
            version: 0,
        })
    }

    /// The unvalidated shape of these settings, as the admin API and the config file write them.
    pub fn to_spec(&self) -> ConnectionSpec {
        ConnectionSpec {
            identifier: Some(self.identifier.as_str().to_owned()),
            user_pool_id: Some(self.user_pool_id.as_str().to_owned()),
            display_name: Some(self.display_name.clone()),
            provider: Some(self.provider.clone()),
            login_mode: Some(self.login_mode.as_str().to_owned()),
            association: Some(self.association.as_str().to_owned()),
            match_fields: Some(self.match_fields.iter().map(|f| f.to_string()).collect()),
            match_rule: Some(self.match_rule.as_str().to_owned()),
            unique_attributes: Some(
                self.unique_attributes
                    .iter()
                    .map(|a| a.as_str().to_owned())
                    .collect(),
            ),
            require_verified: Some(self.require_verified),
            // Written even when none: "none" is a setting, and a preset's default must not
            // take its place when the settings are read back.
            default_country_code: Some(
                self.default_country_code
                    .as_ref()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
            ),
            binding_ttl: Some(format_ttl(self.binding_ttl)),
            trust_unverified_accounts: Some(self.trust_unverified_accounts),
            allowed_email_domains: Some(self.allowed_email_domains.clone()),
            on_profile_change: Some(self.on_profile_change.as_str().to_owned()),
            mapping: Some(self.mapping.written().clone()),
            verified_fields: Some(
                self.mapping
                    .verified
                    .iter()
                    .map(|f| f.to_string())
                    .collect(),
            ),
            directory: self.directory.as_ref().map(DirectorySettings::to_spec),
            on_source_removal: Some(self.on_source_removal.as_str().to_owned()),
            removal_guard: Some(self.removal_guard.to_spec()),
        }
    }
}

/// `72h`, `90m` or `45s`: the largest unit that divides the duration (sub-second parts are not
/// kept: a TTL that precise is not a policy).
pub fn format_ttl(ttl: Duration) -> String {
    let secs = ttl.as_secs();
    if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// A setting that must be there, parsed by `parse`.
fn required<T>(
    field: &'static str,
    raw: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, FieldError> {
    let raw = raw.ok_or_else(|| FieldError::new(field, "is required"))?;
    parse(raw).map_err(|m| FieldError::new(field, m))
}

/// `match_fields`: email alone by default; at least one field, none twice; an attribute only
/// where the mapping fills it (else no login could ever carry it).
fn match_fields(raw: Option<&[String]>, mapping: &Mapping) -> Result<Vec<MatchKey>, FieldError> {
    let Some(raw) = raw else {
        return Ok(vec![MatchField::Email.into()]);
    };
    if raw.is_empty() {
        return Err(FieldError::new(
            "match_fields",
            "must name at least one field",
        ));
    }
    let mut fields = Vec::with_capacity(raw.len());
    for name in raw {
        let field: MatchKey = name
            .parse()
            .map_err(|m| FieldError::new("match_fields", m))?;
        if let MatchKey::Attribute(attribute) = &field
            && !mapping.attributes.contains_key(attribute)
        {
            return Err(FieldError::new(
                "match_fields",
                format!(
                    "{name:?} can never match: no mapping fills it (add a mapping key \"{name}\")"
                ),
            ));
        }
        if fields.contains(&field) {
            return Err(FieldError::new(
                "match_fields",
                format!("{name:?} is listed twice"),
            ));
        }
        fields.push(field);
    }
    Ok(fields)
}

/// `unique_attributes`: attribute names, each once.
fn unique_attributes(raw: Option<&[String]>) -> Result<Vec<AttributeName>, FieldError> {
    let mut names = Vec::new();
    for raw in raw.into_iter().flatten() {
        let name = AttributeName::parse(raw.strip_prefix(ATTRIBUTE_PREFIX).unwrap_or(raw))
            .map_err(|m| FieldError::new("unique_attributes", m))?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// `binding_ttl`: whole seconds, from 1s to 366 days.
fn binding_ttl(raw: Option<&str>) -> Result<Duration, FieldError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_BINDING_TTL);
    };
    let ttl = humantime::parse_duration(raw)
        .map_err(|e| FieldError::new("binding_ttl", format!("{raw:?} is not a duration ({e})")))?;
    if ttl < Duration::from_secs(1) || ttl > MAX_BINDING_TTL || ttl.subsec_nanos() != 0 {
        return Err(FieldError::new(
            "binding_ttl",
            "must be whole seconds, from 1s to 366 days",
        ));
    }
    Ok(ttl)
}

/// `allowed_email_domains`: canonical domains, each once.
fn allowed_email_domains(raw: Option<&[String]>) -> Result<Vec<String>, FieldError> {
    let mut domains = Vec::new();
    for raw in raw.into_iter().flatten() {
        let domain = super::identifier::canonical_domain(raw);
        let valid = !domain.is_empty()
            && domain.len() <= 253
            && !domain.contains(|c: char| c == '@' || c.is_whitespace() || c.is_control());
        if !valid {
            return Err(FieldError::new(
                "allowed_email_domains",
                format!("{raw:?} is not a domain"),
            ));
        }
        if !domains.contains(&domain) {
            domains.push(domain);
        }
    }
    Ok(domains)
}

fn bounded_text(field: &'static str, raw: Option<&str>) -> Result<Option<String>, FieldError> {
    match raw {
        None => Ok(None),
        Some(text) if text.chars().count() > MAX_TEXT_LEN => Err(FieldError::new(
            field,
            format!("must be at most {MAX_TEXT_LEN} characters"),
        )),
        Some(text) if text.chars().any(char::is_control) => Err(FieldError::new(
            field,
            "must not contain control characters",
        )),
        Some(text) => Ok(Some(text.to_owned())),
    }
}

fn parse_opt<T: FromStr<Err = String>>(
    field: &'static str,
    raw: Option<&str>,
) -> Result<Option<T>, FieldError> {
    raw.map(|r| r.parse().map_err(|m| FieldError::new(field, m)))
        .transpose()
}

#[cfg(test)]
mod tests;
