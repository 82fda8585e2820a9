//! identity-sync: decides which account an external identity belongs to after a login.

pub mod domain;
