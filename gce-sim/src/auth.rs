//! Credentials as Google checks them, for `--require-auth`: an OAuth 2 token endpoint
//! (`POST /token`) that issues access tokens for a service account's JWT-bearer grant
//! (what `gcp_auth::CustomServiceAccount` sends to its key file's `token_uri`), the
//! bearer check that refuses compute calls without an issued token with GCE's 401, and
//! the control API's view and revocation of issued tokens.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use rand::Rng;
use serde_json::{json, Value};

use crate::api::respond;
use crate::control::TokensReport;
use crate::Shared;

/// The grant a service account's signed JWT is exchanged under (RFC 7523).
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Seconds an issued token is valid, as Google's token endpoint answers.
const TOKEN_LIFETIME_SECS: u64 = 3599;

/// Access tokens the token endpoint issued, and what the bearer check did.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    /// Tokens compute calls are accepted with.
    active: HashSet<String>,
    /// Tokens issued since start.
    issued: u64,
    /// Tokens revoked through the control API since start.
    revoked: u64,
    /// Compute calls refused with 401 since start.
    refused: u64,
}

impl Tokens {
    /// What the control API reports.
    fn report(&self) -> TokensReport {
        TokensReport {
            issued: self.issued,
            active: self.active.len() as u64,
            revoked: self.revoked,
            refused: self.refused,
        }
    }
}

/// An OAuth error as Google's token endpoint answers it (400 with `error` and
/// `error_description`).
fn oauth_error(error: &str, description: &str) -> Response {
    let body = json!({"error": error, "error_description": description});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// `POST /token`: exchanges a JWT-bearer grant for an access token. The assertion's
/// signature is not verified, but it must be a JWT whose claims name an issuer and a
/// scope and have not expired.
pub(crate) async fn token(
    State(sim): State<Arc<Shared>>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return oauth_error(
            "invalid_request",
            "The request must be application/x-www-form-urlencoded.",
        );
    };
    match form.get("grant_type").map(String::as_str) {
        Some(JWT_BEARER_GRANT) => {}
        Some(other) => {
            return oauth_error(
                "unsupported_grant_type",
                &format!("Invalid grant_type: {other}"),
            )
        }
        None => return oauth_error("invalid_request", "Missing required parameter: grant_type"),
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error("invalid_request", "Missing required parameter: assertion");
    };
    if let Err(problem) = check_assertion(assertion) {
        return oauth_error("invalid_grant", &format!("Invalid JWT: {problem}"));
    }
    let mut rng = rand::rng();
    let access_token = format!(
        "ya29.sim-{:016x}{:016x}",
        rng.random::<u64>(),
        rng.random::<u64>()
    );
    let mut tokens = sim.tokens();
    tokens.active.insert(access_token.clone());
    tokens.issued += 1;
    drop(tokens);
    Json(json!({
        "access_token": access_token,
        "expires_in": TOKEN_LIFETIME_SECS,
        "token_type": "Bearer",
    }))
    .into_response()
}

/// Checks that `assertion` is a JWT (header, claims, signature) whose claims carry
/// `iss`, a non-empty `scope` and an `exp` in the future.
fn check_assertion(assertion: &str) -> Result<(), String> {
    let parts: Vec<&str> = assertion.split('.').collect();
    let [_header, claims, signature] = parts[..] else {
        return Err("expected header.claims.signature".into());
    };
    if signature.is_empty() {
        return Err("no signature".into());
    }
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .map_err(|e| format!("claims are not base64url: {e}"))?;
    let claims: Value =
        serde_json::from_slice(&decoded).map_err(|e| format!("claims are not JSON: {e}"))?;
    if !claims.get("iss").is_some_and(Value::is_string) {
        return Err("no issuer (iss)".into());
    }
    if claims
        .get("scope")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("no scope".into());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match claims.get("exp").and_then(Value::as_u64) {
        Some(exp) if exp > now => Ok(()),
        Some(_) => Err(
            "Token must be a short-lived token (60 minutes) and in a reasonable timeframe.".into(),
        ),
        None => Err("no expiry (exp)".into()),
    }
}

/// With `--require-auth`, refuses a compute call that carries no bearer token
/// (`required`) or one the token endpoint did not issue or has revoked (`authError`),
/// with 401 as GCE words it.
pub(crate) async fn require_bearer(
    State(sim): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    if !sim.require_auth {
        return next.run(request).await;
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let refusal = {
        let mut tokens = sim.tokens();
        let refusal = match bearer {
            None => Some(false),
            Some(token) if !tokens.active.contains(token) => Some(true),
            Some(_) => None,
        };
        if refusal.is_some() {
            tokens.refused += 1;
        }
        refusal
    };
    match refusal {
        None => next.run(request).await,
        Some(invalid) => unauthenticated(invalid),
    }
}

/// GCE's 401: without credentials (`required`, "Login Required.") or with invalid ones
/// (`authError`, "Invalid Credentials").
fn unauthenticated(invalid: bool) -> Response {
    let (summary, reason, message, challenge) = if invalid {
        (
            "Request had invalid authentication credentials.",
            "authError",
            "Invalid Credentials",
            "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"",
        )
    } else {
        (
            "Request is missing required authentication credential.",
            "required",
            "Login Required.",
            "Bearer realm=\"https://accounts.google.com/\"",
        )
    };
    let body = json!({"error": {
        "code": 401,
        "message": format!("{summary} Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."),
        "errors": [{
            "message": message,
            "domain": "global",
            "reason": reason,
            "location": "Authorization",
            "locationType": "header",
        }],
        "status": "UNAUTHENTICATED",
    }});
    let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// `GET /sim/v1/tokens`.
pub(crate) async fn report(State(sim): State<Arc<Shared>>) -> Response {
    respond(Ok(sim.tokens().report()))
}

/// `POST /sim/v1/tokens/revoke`: every issued token stops being accepted, as when
/// tokens are revoked or expire early; clients must fetch fresh ones.
pub(crate) async fn revoke(State(sim): State<Arc<Shared>>) -> Response {
    let mut tokens = sim.tokens();
    tokens.revoked += tokens.active.len() as u64;
    tokens.active.clear();
    respond(Ok(tokens.report()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &Value) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE;
        format!(
            "{}.{}.c2ln",
            engine.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            engine.encode(claims.to_string())
        )
    }

    #[test]
    fn assertions_must_be_unexpired_jwts_with_issuer_and_scope() {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 3000;
        let good = json!({"iss": "pm@p.iam.gserviceaccount.com", "scope": "https://www.googleapis.com/auth/compute", "exp": exp});
        assert_eq!(check_assertion(&jwt(&good)), Ok(()));
        for (claims, why) in [
            (json!({"scope": "s", "exp": exp}), "issuer"),
            (json!({"iss": "i", "exp": exp}), "scope"),
            (json!({"iss": "i", "scope": "s", "exp": 1}), "expired"),
        ] {
            assert!(check_assertion(&jwt(&claims)).is_err(), "{why}");
        }
        assert!(check_assertion("not-a-jwt").is_err());
        assert!(check_assertion("a.b.").is_err());
    }
}
