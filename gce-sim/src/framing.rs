//! Request framing as Google's front end enforces it, before any API sees the call: an
//! HTTP/1.x POST that carries neither `Content-Length` nor `Transfer-Encoding` gets 411
//! Length Required with Google's HTML page, and a body sent with a `Content-Type` other
//! than JSON gets 400. (HTTP/2 frames bodies itself, so it needs no length header.)

use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::error_response;
use crate::world::ApiError;

/// The page Google's front end answers a POST without a length with.
const LENGTH_REQUIRED_PAGE: &str = "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  \
<title>Error 411 (Length Required)!!1</title>\n  \
<p><b>411.</b> <ins>That\u{2019}s an error.</ins>\n  \
<p>POST requests require a <code>Content-length</code> header.  \
<ins>That\u{2019}s all we know.</ins>\n";

/// The answer Google's front end gives a request framed as it refuses, if it refuses it.
pub(crate) fn refusal(request: &Request) -> Option<Response> {
    let headers = request.headers();
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let length = headers.get(header::CONTENT_LENGTH);
    let http1 = matches!(
        request.version(),
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
    );
    if request.method() == Method::POST && http1 && length.is_none() && !chunked {
        return Some(length_required());
    }
    let has_body = chunked
        || length
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    if has_body && !is_json(headers) {
        let sent = headers
            .get(header::CONTENT_TYPE)
            .map_or("none", |v| v.to_str().unwrap_or("not text"));
        return Some(error_response(&ApiError::invalid(format!(
            "Invalid Content-Type '{sent}' for a request body: the body must be sent as \
             application/json."
        ))));
    }
    None
}

/// Middleware: [`refusal`] or the route's answer.
pub(crate) async fn enforce(request: Request, next: Next) -> Response {
    match refusal(&request) {
        Some(response) => response,
        None => next.run(request).await,
    }
}

/// 411 with Google's HTML page.
fn length_required() -> Response {
    (
        StatusCode::LENGTH_REQUIRED,
        [(header::CONTENT_TYPE, "text/html; charset=UTF-8")],
        LENGTH_REQUIRED_PAGE,
    )
        .into_response()
}

/// Whether the `Content-Type` is JSON (`application/json`, parameters allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    fn request(method: Method, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().method(method).uri("/compute/v1/x");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::empty()).expect("request")
    }

    fn status(request: &Request) -> Option<u16> {
        refusal(request).map(|r| r.status().as_u16())
    }

    #[test]
    fn a_post_needs_a_length_or_chunks() {
        assert_eq!(status(&request(Method::POST, &[])), Some(411));
        assert_eq!(
            status(&request(Method::POST, &[("content-length", "0")])),
            None
        );
        let chunked = [
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
        ];
        assert_eq!(status(&request(Method::POST, &chunked)), None);
        assert_eq!(status(&request(Method::GET, &[])), None);
        assert_eq!(status(&request(Method::DELETE, &[])), None);
        let mut http2 = request(Method::POST, &[]);
        *http2.version_mut() = Version::HTTP_2;
        assert_eq!(status(&http2), None);
    }

    #[test]
    fn a_body_must_be_json() {
        let json = [
            ("content-length", "2"),
            ("content-type", "application/json"),
        ];
        assert_eq!(status(&request(Method::POST, &json)), None);
        let charset = [
            ("content-length", "2"),
            ("content-type", "Application/JSON; charset=UTF-8"),
        ];
        assert_eq!(status(&request(Method::POST, &charset)), None);
        let form = [
            ("content-length", "2"),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        assert_eq!(status(&request(Method::POST, &form)), Some(400));
        assert_eq!(
            status(&request(Method::POST, &[("content-length", "2")])),
            Some(400)
        );
        let empty_form = [
            ("content-length", "0"),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        assert_eq!(status(&request(Method::POST, &empty_form)), None);
    }
}
