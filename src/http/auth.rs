//! Bearer-token authentication of the admin API. Tokens are compared as SHA-256 digests in
//! constant time, against every configured token, so neither the match nor its position leaks
//! through timing.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use ring::digest::{SHA256, digest};
use secrecy::ExposeSecret;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::{AppState, error::ApiError};
use crate::{
    admin::Actor,
    settings::{Role, TokenSettings},
};

struct Token {
    name: String,
    role: Role,
    digest: [u8; 32],
}

#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<Token>>);

fn sha256(bytes: &[u8]) -> [u8; 32] {
    digest(&SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

impl Tokens {
    /// Reads every token (from the file or the environment); an unusable one is an error that
    /// names it.
    pub fn new(settings: &[TokenSettings]) -> Result<Self, String> {
        let tokens = settings
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let secret = t
                    .secret()
                    .map_err(|m| format!("admin.tokens[{i}] ({}): {m}", t.name))?;
                Ok(Token {
                    name: t.name.clone(),
                    role: t.role,
                    digest: sha256(secret.expose_secret().as_bytes()),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self(Arc::new(tokens)))
    }

    fn find(&self, presented: &str) -> Option<(&str, Role)> {
        let presented = sha256(presented.as_bytes());
        let mut found = u32::MAX;
        for (i, token) in self.0.iter().enumerate() {
            let equal = token.digest.ct_eq(&presented);
            found = u32::conditional_select(&found, &(i as u32), equal);
        }
        self.0
            .get(found as usize)
            .map(|t| (t.name.as_str(), t.role))
    }
}

/// The credentials of an `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive (RFC 9110, section 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// 401 without a known token, 403 for a viewer writing; otherwise the token's name becomes the
/// request's actor.
pub async fn authorize(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let Some((name, role)) = presented.and_then(|t| state.tokens.find(t)) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown bearer token",
        )
        .into_response();
    };
    // A simulation is a POST that changes nothing: a viewer may preview settings.
    let reading = matches!(*request.method(), Method::GET | Method::HEAD)
        || (request.method() == Method::POST && is_simulation(request.uri().path()));
    if role == Role::Viewer && !reading {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token may only read",
        )
        .into_response();
    }
    request.extensions_mut().insert(Actor {
        name: name.to_owned(),
        role,
    });
    next.run(request).await
}

/// `/v1/connections/{user_pool_id}/{identifier}/simulate`.
fn is_simulation(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    matches!(parts.as_slice(), ["", "v1", "connections", pool, id, "simulate"]
        if !pool.is_empty() && !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, is_simulation};

    #[test]
    fn only_the_simulation_is_a_post_that_reads() {
        assert!(is_simulation("/v1/connections/pool-1/corp/simulate"));
        for path in [
            "/v1/connections/pool-1/simulate",
            "/v1/connections/pool-1/corp/simulate/x",
            "/v1/bindings/1/simulate",
            "/v1/connections//corp/simulate",
            "/v1/connections/pool-1/corp",
        ] {
            assert!(!is_simulation(path), "{path}");
        }
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        for header in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR   abc "] {
            assert_eq!(bearer_token(header), Some("abc"), "{header}");
        }
        for header in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "abc"] {
            assert_eq!(bearer_token(header), None, "{header}");
        }
    }
}
