//! Extractors that turn requests into typed values or into `ApiError`s naming the field at fault.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A path parameter; a malformed id is a 404, like an unknown one.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Query parameters; a malformed one is a 422 naming it.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// A JSON body parsed into `T` (a money-moving one is read by `idempotency::Idempotent`).
pub struct Body<T> {
    pub value: T,
}

/// Maps a body that could not be read (too large, cut off) to its error.
fn body_rejection(rejection: axum::extract::rejection::BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit }
    } else {
        ApiError::BadRequest {
            message: format!("could not read the request body: {}", rejection.body_text()),
        }
    }
}

/// The deepest nesting of arrays and objects a body may have. The documents the API takes go 7
/// levels deep; the limit keeps a body whose depth would stop a parser later (the worker's,
/// serde_json's 128) from being accepted now.
pub const MAX_DEPTH: usize = 32;

/// Why text with a NUL is refused: PostgreSQL stores no NUL in text.
pub const NUL_MESSAGE: &str = "must not contain the NUL character (\\u0000)";

/// Refuses a body nested deeper than [`MAX_DEPTH`], or with a NUL in a string or a key (naming
/// its path). One pass over the bytes, skipping strings; the tree is walked only when the pass
/// saw a `\u0000` escape.
fn check_shape(bytes: &[u8]) -> Result<(), ApiError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut nul_escape = false;
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match (in_string, byte) {
            (true, b'\\') => {
                nul_escape |= bytes.get(i + 1..i + 6) == Some(b"u0000".as_slice());
                // The escaped character is skipped: `\"` does not end the string.
                i += 1;
            }
            (_, b'"') => in_string = !in_string,
            (false, b'[' | b'{') => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ApiError::invalid(
                        "body",
                        format!("JSON nested deeper than {MAX_DEPTH} levels"),
                    ));
                }
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    if !nul_escape {
        return Ok(());
    }
    // Malformed JSON is left to the parser's own report.
    let Ok(tree) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Ok(());
    };
    match nul_path(&tree, "") {
        Some(path) if path.is_empty() => Err(ApiError::invalid("body", NUL_MESSAGE)),
        Some(path) => Err(ApiError::invalid(path, NUL_MESSAGE)),
        None => Ok(()),
    }
}

/// The path (`data.items[0].name`) of the first string or key holding a NUL.
fn nul_path(value: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(text) => text.contains('\0').then(|| path.to_owned()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_path(item, &format!("{path}[{i}]"))),
        Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            let key_path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            if key.contains('\0') {
                Some(key_path.replace('\0', "\\u0000"))
            } else {
                nul_path(item, &key_path)
            }
        }),
        _ => None,
    }
}

/// Parses JSON, reporting syntax errors as 400 and wrong values as 422 with the path of the field
/// (as are bodies nested too deep and text holding a NUL, see [`check_shape`]).
pub fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    check_shape(bytes)?;
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

/// A body's raw bytes, read within the route's limit; one too large is the JSON 413.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(BODY_LIMIT, |l| l.0);
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|r| body_rejection(r, limit))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        Ok(Body {
            value: parse_json(&bytes)?,
        })
    }
}

/// The body limit a route was given, so a 413 can say it.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_field(body: &str) -> Option<String> {
        match check_shape(body.as_bytes()) {
            Err(ApiError::Invalid { field, .. }) => Some(field),
            _ => None,
        }
    }

    #[test]
    fn depth_counts_arrays_and_objects_but_not_brackets_in_strings() {
        let nested = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        assert_eq!(refused_field(&nested(MAX_DEPTH)), None);
        assert_eq!(
            refused_field(&nested(MAX_DEPTH + 1)).as_deref(),
            Some("body")
        );
        let brackets = format!(r#"{{"a": "{}\"{}"}}"#, "[".repeat(100), "{".repeat(100));
        assert_eq!(refused_field(&brackets), None);
    }

    #[test]
    fn a_nul_is_named_by_its_path_and_an_escaped_backslash_is_no_nul() {
        assert_eq!(
            refused_field(r#"{"data": {"items": [{"name": "ok"}, {"name": "a\u0000"}]}}"#)
                .as_deref(),
            Some("data.items[1].name")
        );
        assert_eq!(
            refused_field(r#"{"a": {"k\u0000": 1}}"#).as_deref(),
            Some(r"a.k\u0000")
        );
        assert_eq!(refused_field(r#""\u0000""#).as_deref(), Some("body"));
        assert_eq!(refused_field(r#"{"a": "\\u0000"}"#), None);
    }
}
