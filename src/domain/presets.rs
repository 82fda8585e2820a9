//! Preset mappings for the identity sources whose user profiles do not use the standard names
//! (contract section 9): a connection whose `provider` is `dingtalk`, `wecom` or `feishu` starts
//! from the mapping below, which its own `mapping` overrides key by key.
//!
//! The templates read the source's user-detail object as the identity platform relays it under
//! the profile's `attributes` (the fixtures in `tests/fixtures/` are such profiles):
//!
//! - DingTalk (`topapi/v2/user/get`): `state_code` is the country calling code without `+`,
//!   `mobile` the national number, `org_email` the enterprise mailbox, `job_number` the employee
//!   number.
//! - WeCom (`cgi-bin/user/get`): `mobile` without a country code (read with the preset's default
//!   country code 86 unless the connection sets another), `biz_mail` the enterprise mailbox,
//!   `userid` the account the enterprise assigns (commonly the employee number; WeCom has no
//!   separate employee-number field).
//! - Feishu (`contact/v3/users`): `mobile`, normally with its `+` country code (a bare national
//!   number is read with the default country code 86), `enterprise_email`, `employee_no`.
//!
//! A preset's email, phone or username stands in only for a profile that lacks the standard name:
//! a platform that already sends `email` or `phone` keeps them. Each source verifies the mobile
//! number its people sign in with, issues the enterprise mailbox and has its administrators assign
//! the employee number, so the preset vouches for the three (`verified_fields`); a connection that
//! sets `verified_fields` replaces that.

/// A source's default mapping.
#[derive(Debug)]
pub struct Preset {
    /// The `provider` value that selects it.
    pub provider: &'static str,
    /// Target and template, as a connection's `mapping` writes them.
    pub mapping: &'static [(&'static str, &'static str)],
    /// The mapped fields the source vouches for, as `verified_fields` writes them.
    pub verified_fields: &'static [&'static str],
    /// The calling code for national numbers, when the connection sets none.
    pub default_country_code: Option<&'static str>,
}

/// Every preset.
pub const ALL: &[Preset] = &[
    Preset {
        provider: "dingtalk",
        mapping: &[
            ("phone", "+{attributes.state_code}{attributes.mobile}"),
            ("email", "{attributes.org_email}"),
            ("attributes.employee_id", "{attributes.job_number}"),
        ],
        verified_fields: &["phone", "email", "attributes.employee_id"],
        default_country_code: None,
    },
    Preset {
        provider: "wecom",
        mapping: &[
            ("phone", "{attributes.mobile}"),
            ("email", "{attributes.biz_mail}"),
            ("attributes.employee_id", "{attributes.userid}"),
        ],
        verified_fields: &["phone", "email", "attributes.employee_id"],
        default_country_code: Some("86"),
    },
    Preset {
        provider: "feishu",
        mapping: &[
            ("phone", "{attributes.mobile}"),
            ("email", "{attributes.enterprise_email}"),
            ("attributes.employee_id", "{attributes.employee_no}"),
        ],
        verified_fields: &["phone", "email", "attributes.employee_id"],
        default_country_code: Some("86"),
    },
];

/// The preset of a `provider`, if it names one of the sources above.
pub fn of(provider: &str) -> Option<&'static Preset> {
    ALL.iter().find(|p| p.provider == provider)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::mapping::Template;

    #[test]
    fn every_preset_reads() {
        for preset in ALL {
            for field in preset.verified_fields {
                assert!(
                    field.parse::<crate::domain::connection::MatchKey>().is_ok(),
                    "{field}"
                );
            }
            for (target, template) in preset.mapping {
                assert!(
                    target
                        .parse::<crate::domain::connection::MatchKey>()
                        .is_ok(),
                    "{target}"
                );
                assert!(Template::parse(template).is_ok(), "{template}");
            }
            assert_eq!(of(preset.provider).unwrap().provider, preset.provider);
        }
        assert!(of("ldap").is_none());
        assert!(of("DingTalk").is_none(), "providers are named exactly");
    }
}
