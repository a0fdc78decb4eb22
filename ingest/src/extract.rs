//! Extractors that turn requests into typed values or into `ApiError`s naming the field at fault.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::idempotency::Fingerprint;

/// A path parameter; a malformed id is a 404, like an unknown one.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Query parameters; a malformed one is a 422 naming it.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// A JSON body parsed into `T`, and the request as an idempotency key sees it.
pub struct Body<T> {
    pub value: T,
    pub digest: Fingerprint,
}

/// Maps a body that could not be read (too large, cut off) to its error.
pub fn body_rejection(
    rejection: axum::extract::rejection::BytesRejection,
    limit: usize,
) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit }
    } else {
        ApiError::BadRequest {
            message: format!("could not read the request body: {}", rejection.body_text()),
        }
    }
}

/// Parses JSON, reporting syntax errors as 400 and wrong values as 422 with the path of the field.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    // The common case, a valid body, in one plain pass; the path of a wrong field is tracked only
    // when there is one to report (tracking costs on every field).
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::BadRequest {
                message: format!("malformed JSON: {inner}"),
            };
        }
        // serde reports a missing field at the level of its parent; name the field itself.
        let message = inner.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_owned();
        let field = match message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            Some(missing) if path == "." => missing.to_owned(),
            Some(missing) => format!("{path}.{missing}"),
            None if path == "." => "body".to_owned(),
            None => path,
        };
        ApiError::Invalid { field, message }
    })?;
    de.end().map_err(|e| ApiError::BadRequest {
        message: format!("malformed JSON: {e}"),
    })?;
    Ok(value)
}

/// The default body limit of the API (the POS receipts' is the same: 1 MiB).
pub const BODY_LIMIT: usize = 1024 * 1024;

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let method = req.method().clone();
        let uri = req.uri().clone();
        let route = req.extensions().get::<MatchedPath>().cloned();
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(BODY_LIMIT, |l| l.0);
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| body_rejection(r, limit))?;
        let value = parse_json(&bytes)?;
        Ok(Body {
            value,
            digest: Fingerprint::new(&method, &uri, route.as_ref(), &bytes),
        })
    }
}

/// The body limit a route was given, so a 413 can say it.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The request, without a body (DELETE), as an idempotency key sees it.
pub struct RequestDigest(pub Fingerprint);

impl<S: Send + Sync> FromRequestParts<S> for RequestDigest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(RequestDigest(Fingerprint::new(
            &parts.method,
            &parts.uri,
            parts.extensions.get::<MatchedPath>(),
            b"",
        )))
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}
