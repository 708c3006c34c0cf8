//! [`Compute`] over the Compute Engine v1 REST API (reqwest), against GCE or gce-sim.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gcp_auth::TokenProvider;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::compute::{ApiCall, BoxFuture, Compute, PageRequest, MAX_PAGE_SIZE};
use crate::error::{ErrorClass, GceError};
use crate::resources::{
    BulkInsertRequest, ErrorEnvelope, Instance, InstanceList, Operation, OperationList,
};
use pm_backoff::Backoff;

mod project;

/// Compute Engine's production endpoint.
pub const DEFAULT_BASE_URL: &str = "https://compute.googleapis.com/compute/v1/";

/// OAuth scope for Compute Engine.
const COMPUTE_SCOPE: &str = "https://www.googleapis.com/auth/compute";

/// How long an error or undecodable body is quoted in an error message.
const SNIPPET_CHARS: usize = 200;

/// Where access tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// No `Authorization` header (gce-sim).
    None,
    /// `gcp_auth::provider()`: `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's application
    /// default credentials, or the metadata server, in that order.
    ApplicationDefault,
    /// A service-account key file.
    ServiceAccountFile(PathBuf),
}

/// Settings of a [`RestCompute`].
#[derive(Debug, Clone)]
pub struct RestConfig {
    /// API root ending in `/compute/v1/`, e.g. [`DEFAULT_BASE_URL`] or gce-sim's
    /// `http://127.0.0.1:PORT/compute/v1/`.
    pub base_url: String,
    /// Credentials.
    pub auth: Auth,
    /// Timeout of every call except `zoneOperations.wait`.
    pub timeout: Duration,
    /// Timeout of `zoneOperations.wait`, which the server holds up to about 2 minutes.
    pub wait_timeout: Duration,
    /// Retries of the retryable error classes.
    pub backoff: Backoff,
    /// Calls made at most for one request (1: no retry).
    pub max_attempts: u32,
    /// Page size of the list-all calls, 1 to 500.
    pub page_size: u32,
}

impl RestConfig {
    /// Production defaults for `base_url` and `auth`: 30 s per call, 150 s per wait,
    /// back-off from 500 ms to 30 s over 5 attempts, pages of 500.
    pub fn new(base_url: impl Into<String>, auth: Auth) -> Result<RestConfig, GceError> {
        let backoff =
            Backoff::new(Duration::from_millis(500), Duration::from_secs(30)).map_err(|e| {
                GceError::InvalidRequest {
                    problem: e.to_string(),
                }
            })?;
        Ok(RestConfig {
            base_url: base_url.into(),
            auth,
            timeout: Duration::from_secs(30),
            wait_timeout: Duration::from_secs(150),
            backoff,
            max_attempts: 5,
            page_size: MAX_PAGE_SIZE,
        })
    }
}

/// The REST implementation of [`Compute`]. Cheap to clone; clones share connections.
///
/// It speaks HTTP/1.1 (reqwest's `http2` feature is off: Google's front end serves
/// HTTP/1.1, gce-sim serves only it, and it keeps the dependency tree lean) with explicit
/// framing: every POST carries `Content-Length`, `0` when it has no body, because
/// Google's front end answers a POST without one with 411; a JSON body is sent as
/// `application/json`.
#[derive(Clone)]
pub struct RestCompute {
    http: reqwest::Client,
    base_url: String,
    /// Where tokens come from; replaced by a fresh one after a 401 (see [`Self::send`]).
    tokens: Arc<RwLock<Option<Arc<dyn TokenProvider>>>>,
    /// The credentials, to build a fresh token provider from after a 401.
    auth: Auth,
    timeout: Duration,
    wait_timeout: Duration,
    backoff: Backoff,
    max_attempts: u32,
    page_size: u32,
}

impl std::fmt::Debug for RestCompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestCompute")
            .field("base_url", &self.base_url)
            .field("authenticated", &(self.auth != Auth::None))
            .field("timeout", &self.timeout)
            .field("wait_timeout", &self.wait_timeout)
            .field("backoff", &self.backoff)
            .field("page_size", &self.page_size)
            .finish()
    }
}

/// One request, replayable across retries.
struct Request {
    call: ApiCall,
    method: Method,
    url: String,
    query: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    timeout: Duration,
}

impl RestCompute {
    /// A client for `config`. Loads credentials now, so missing ones fail here rather
    /// than at the first call.
    pub async fn new(config: RestConfig) -> Result<RestCompute, GceError> {
        let mut base_url = config.base_url.trim().to_string();
        if !base_url.ends_with('/') {
            base_url.push('/');
        }
        let parsed = reqwest::Url::parse(&base_url).map_err(|e| GceError::InvalidRequest {
            problem: format!("base URL {base_url:?} is not a URL: {e}"),
        })?;
        if parsed.scheme() != "http" && parsed.scheme() != "https" {
            return Err(GceError::InvalidRequest {
                problem: format!("base URL {base_url:?} is not http(s)"),
            });
        }
        if !(1..=MAX_PAGE_SIZE).contains(&config.page_size) {
            return Err(GceError::InvalidRequest {
                problem: format!(
                    "page size {} is not between 1 and {MAX_PAGE_SIZE}",
                    config.page_size
                ),
            });
        }
        let tokens = token_provider(&config.auth).await?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("pm-gce/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| GceError::InvalidRequest {
                problem: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(RestCompute {
            http,
            base_url,
            tokens: Arc::new(RwLock::new(tokens)),
            auth: config.auth,
            timeout: config.timeout,
            wait_timeout: config.wait_timeout,
            backoff: config.backoff,
            max_attempts: config.max_attempts,
            page_size: config.page_size,
        })
    }

    /// A bodiless `POST .../instances/NAME/VERB` returning an operation.
    fn instance_verb<'a>(
        &'a self,
        call: ApiCall,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
        verb: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        Box::pin(async move {
            let url = self.zone_url(project, zone, &["instances", name, verb]);
            self.send(self.request(call, Method::POST, url)).await
        })
    }

    /// The API root this client talks to (ends with `/`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn zone_url(&self, project: &str, zone: &str, rest: &[&str]) -> String {
        let mut url = format!(
            "{}projects/{}/zones/{}",
            self.base_url,
            encode_segment(project),
            encode_segment(zone)
        );
        for segment in rest {
            url.push('/');
            url.push_str(&encode_segment(segment));
        }
        url
    }

    fn request(&self, call: ApiCall, method: Method, url: String) -> Request {
        Request {
            call,
            method,
            url,
            query: Vec::new(),
            body: None,
            timeout: self.timeout,
        }
    }

    fn with_body<B: Serialize>(mut request: Request, body: &B) -> Result<Request, GceError> {
        let bytes = serde_json::to_vec(body).map_err(|e| GceError::InvalidRequest {
            problem: format!("cannot encode the {} body: {e}", request.call),
        })?;
        request.body = Some(bytes);
        Ok(request)
    }

    /// Sends `request`, retrying retryable failures with the back-off. A 401 (an access
    /// token revoked or expired early) replaces the token provider with a fresh one, so a
    /// new token is fetched, and sends once more before it becomes the error.
    async fn send<T: DeserializeOwned>(&self, request: Request) -> Result<T, GceError> {
        match self.send_with_retries(&request).await {
            Err(GceError::Http { status: 401, .. }) if self.auth != Auth::None => {
                tracing::info!(call = %request.call, "HTTP 401: fetching a fresh access token");
                let fresh = token_provider(&self.auth).await?;
                *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                self.send_with_retries(&request).await
            }
            other => other,
        }
    }

    async fn send_with_retries<T: DeserializeOwned>(
        &self,
        request: &Request,
    ) -> Result<T, GceError> {
        self.backoff
            .retry(
                self.max_attempts,
                |error: &GceError| {
                    // An answer that says when to come back goes to the caller, who
                    // waits that long; retrying sooner would ignore it.
                    let retry = error.class().is_retryable() && error.retry_after().is_none();
                    if retry {
                        tracing::debug!(%error, "retrying Compute call");
                    }
                    retry
                },
                || self.attempt(request),
            )
            .await
    }

    async fn attempt<T: DeserializeOwned>(&self, request: &Request) -> Result<T, GceError> {
        let call = request.call;
        let url = &request.url;
        let mut builder = self
            .http
            .request(request.method.clone(), url)
            .timeout(request.timeout)
            .query(&request.query);
        let tokens = self
            .tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(tokens) = tokens {
            let token = tokens
                .token(&[COMPUTE_SCOPE])
                .await
                .map_err(|source| GceError::Auth { source })?;
            builder = builder.bearer_auth(token.as_str());
        }
        builder = match &request.body {
            Some(body) => builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(reqwest::header::CONTENT_LENGTH, body.len())
                .body(body.clone()),
            // hyper sends no length for an empty body; Google's front end wants one.
            None if request.method == Method::POST => builder
                .header(reqwest::header::CONTENT_LENGTH, 0)
                .body(Vec::new()),
            None => builder,
        };
        let transport = |source: reqwest::Error| {
            if source.is_timeout() {
                GceError::Timeout {
                    call,
                    url: url.clone(),
                    timeout: request.timeout,
                    source,
                }
            } else {
                GceError::Transport {
                    call,
                    url: url.clone(),
                    source,
                }
            }
        };
        let response = builder.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.map_err(transport)?;
        if !(200..300).contains(&status) {
            return Err(http_error(call, url, status, &body, retry_after));
        }
        serde_json::from_slice(&body).map_err(|e| GceError::Decode {
            call,
            url: url.clone(),
            status,
            problem: e.to_string(),
            snippet: snippet(&body),
        })
    }

    async fn list_all<T: DeserializeOwned, P>(
        &self,
        call: ApiCall,
        url: String,
        filter: Option<&str>,
        split: impl Fn(T) -> (Vec<P>, Option<String>),
    ) -> Result<Vec<P>, GceError> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut request = self.request(call, Method::GET, url.clone());
            request.query = page_query(&PageRequest {
                filter: filter.map(str::to_string),
                max_results: Some(self.page_size),
                page_token: token.clone(),
            });
            let (items, next) = split(self.send(request).await?);
            all.extend(items);
            match next.filter(|t| !t.is_empty()) {
                None => return Ok(all),
                Some(next) if Some(&next) == token.as_ref() => {
                    return Err(GceError::InvalidResponse {
                        call,
                        url,
                        problem: format!("page token {next:?} repeats; the listing would loop"),
                    })
                }
                Some(next) => token = Some(next),
            }
        }
    }
}

/// The token provider of `auth`, new (with an empty token cache).
async fn token_provider(auth: &Auth) -> Result<Option<Arc<dyn TokenProvider>>, GceError> {
    Ok(match auth {
        Auth::None => None,
        Auth::ApplicationDefault => Some(
            gcp_auth::provider()
                .await
                .map_err(|source| GceError::Auth { source })?,
        ),
        Auth::ServiceAccountFile(path) => Some(Arc::new(
            gcp_auth::CustomServiceAccount::from_file(path)
                .map_err(|source| GceError::Auth { source })?,
        )),
    })
}

fn page_query(page: &PageRequest) -> Vec<(&'static str, String)> {
    let mut query = Vec::new();
    if let Some(filter) = &page.filter {
        query.push(("filter", filter.clone()));
    }
    if let Some(max) = page.max_results {
        query.push(("maxResults", max.to_string()));
    }
    if let Some(token) = &page.page_token {
        query.push(("pageToken", token.clone()));
    }
    query
}

/// The start of a body, for error messages.
fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(SNIPPET_CHARS)
        .collect()
}

/// The `Retry-After` of an answer, in its delta-seconds form (the form GCE sends); an
/// HTTP-date or a value that does not parse counts as none.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse().ok().map(Duration::from_secs)
}

/// An HTTP error status as a [`GceError::Http`], decoding GCE's envelope when present.
fn http_error(
    call: ApiCall,
    url: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> GceError {
    let (message, errors) = match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) => (envelope.error.message, envelope.error.errors),
        Err(_) => (
            format!("non-GCE error body: {:?}", snippet(body)),
            Vec::new(),
        ),
    };
    GceError::Http {
        call,
        url: url.to_string(),
        status,
        message,
        errors,
        retry_after,
    }
}

/// Percent-encodes one URL path segment (keeps RFC 3986 unreserved characters and `:`,
/// which domain-scoped project ids contain).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A call's result with "not found" as `None`: what `get` and `delete` promise.
fn absent_if_not_found<T>(result: Result<T, GceError>) -> Result<Option<T>, GceError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.class() == ErrorClass::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

impl Compute for RestCompute {
    fn insert<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        instance: &'a Instance,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        Box::pin(async move {
            let url = self.zone_url(project, zone, &["instances"]);
            let mut request =
                Self::with_body(self.request(ApiCall::Insert, Method::POST, url), instance)?;
            request.query.push(("requestId", request_id.to_string()));
            self.send(request).await
        })
    }

    fn bulk_insert<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        bulk: &'a BulkInsertRequest,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        Box::pin(async move {
            let url = self.zone_url(project, zone, &["instances", "bulkInsert"]);
            let mut request =
                Self::with_body(self.request(ApiCall::BulkInsert, Method::POST, url), bulk)?;
            request.query.push(("requestId", request_id.to_string()));
            self.send(request).await
        })
    }

    fn get<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Instance>, GceError>> {
        Box::pin(async move {
            let url = self.zone_url(project, zone, &["instances", name]);
            absent_if_not_found(
                self.send(self.request(ApiCall::Get, Method::GET, url))
                    .await,
            )
        })
    }

    fn list_page<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        page: &'a PageRequest,
    ) -> BoxFuture<'a, Result<InstanceList, GceError>> {
        Box::pin(async move {
            let url = self.zone_url(project, zone, &["instances"]);
            let mut request = self.request(ApiCall::List, Method::GET, url);
            request.query = page_query(page);
            self.send(request).await
        })
    }

    fn list<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        filter: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Instance>, GceError>> {
        Box::pin(async move {
            let url = self.zone_url(project, zone, &["instances"]);
            self.list_all(ApiCall::List, url, filter, |page: InstanceList| {
                (page.items, page.next_page_token)
            })
            .await
        })
    }

    fn delete<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Operation>, GceError>> {
        Box::pin(async move {
            let url = self.zone_url(project, zone, &["instances", name]);
            absent_if_not_found(
                self.send(self.request(ApiCall::Delete, Method::DELETE, url))
                    .await,
            )
        })
    }

    fn start<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        self.instance_verb(ApiCall::Start, project, zone, name, "start")
    }

    fn resume<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        self.instance_verb(ApiCall::Resume, project, zone, name, "resume")
    }

    fn wait_operation<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        operation: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        Box::pin(async move {
            let url = self.zone_url(project, zone, &["operations", operation, "wait"]);
            let mut request = self.request(ApiCall::WaitOperation, Method::POST, url);
            request.timeout = self.wait_timeout;
            self.send(request).await
        })
    }

    fn set_labels<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
        fingerprint: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        Box::pin(async move {
            let url = self.zone_url(project, zone, &["instances", name, "setLabels"]);
            let body = serde_json::json!({"labels": labels, "labelFingerprint": fingerprint});
            let request = self.request(ApiCall::SetLabels, Method::POST, url);
            self.send(Self::with_body(request, &body)?).await
        })
    }

    fn list_operations<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        filter: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Operation>, GceError>> {
        Box::pin(async move {
            let url = self.zone_url(project, zone, &["operations"]);
            self.list_all(
                ApiCall::ListOperations,
                url,
                filter,
                |page: OperationList| (page.items, page.next_page_token),
            )
            .await
        })
    }

    fn recent_operations<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        filter: Option<&'a str>,
        max_results: u32,
    ) -> BoxFuture<'a, Result<Vec<Operation>, GceError>> {
        Box::pin(async move {
            let url = self.zone_url(project, zone, &["operations"]);
            let mut request = self.request(ApiCall::ListOperations, Method::GET, url);
            request.query = page_query(&PageRequest {
                filter: filter.map(str::to_string),
                max_results: Some(max_results.clamp(1, MAX_PAGE_SIZE)),
                page_token: None,
            });
            request
                .query
                .push(("orderBy", "creationTimestamp desc".to_string()));
            let page: OperationList = self.send(request).await?;
            Ok(page.items)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("web-1"), "web-1");
        assert_eq!(encode_segment("google.com:proj"), "google.com:proj");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn non_envelope_error_bodies_are_quoted() {
        let error = http_error(ApiCall::Get, "u", 502, b"<html>Bad Gateway</html>", None);
        assert_eq!(error.class(), ErrorClass::Retryable);
        assert!(error.to_string().contains("<html>Bad Gateway"), "{error}");
        let error = http_error(
            ApiCall::Insert,
            "u",
            403,
            br#"{"error":{"code":403,"message":"Quota","errors":[{"domain":"usageLimits","reason":"quotaExceeded","message":"q"}]}}"#,
            None,
        );
        assert_eq!(error.class(), ErrorClass::Quota);
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, "12".parse().expect("value"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(12)));
        let date = "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("value");
        headers.insert(reqwest::header::RETRY_AFTER, date);
        assert_eq!(retry_after(&headers), None, "an HTTP-date is not read");
    }

    /// A server that records each request's head (lower-cased) and answers with `reply`.
    async fn recording_server(reply: &'static str) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/compute/v1/",
            listener.local_addr().expect("addr")
        );
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = socket.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buffer).to_lowercase();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let length = text[..end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buffer.len() < end + 4 + length {
                            continue;
                        }
                        seen.lock().expect("heads").push(text[..end].to_string());
                        buffer.drain(..end + 4 + length);
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                            reply.len()
                        );
                        if socket.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, heads)
    }

    #[tokio::test]
    async fn every_post_is_framed_as_googles_front_end_requires() {
        const OPERATION: &str = r#"{"name":"op-1","status":"DONE","zone":"https://www.googleapis.com/compute/v1/projects/p/zones/z"}"#;
        let (url, heads) = recording_server(OPERATION).await;
        let compute = RestCompute::new(RestConfig::new(url, Auth::None).expect("config"))
            .await
            .expect("client");
        compute.start("p", "z", "web-1").await.expect("start");
        compute
            .wait_operation("p", "z", "op-1")
            .await
            .expect("wait");
        let instance: Instance =
            serde_json::from_value(serde_json::json!({"name": "web-1"})).expect("instance");
        compute
            .insert("p", "z", &instance, &crate::request_id_for("web-1"))
            .await
            .expect("insert");
        let heads = heads.lock().expect("heads").clone();
        assert_eq!(heads.len(), 3, "{heads:?}");
        for head in &heads[..2] {
            assert!(head.starts_with("post "), "{head}");
            assert!(
                head.contains("\r\ncontent-length: 0"),
                "a bodiless POST: {head}"
            );
        }
        assert!(
            heads[2].contains("\r\ncontent-type: application/json"),
            "{}",
            heads[2]
        );
        let length = format!(
            "\r\ncontent-length: {}",
            serde_json::to_vec(&instance).expect("json").len()
        );
        assert!(heads[2].contains(&length), "{}", heads[2]);
        assert!(
            !heads.iter().any(|h| h.contains("transfer-encoding")),
            "{heads:?}"
        );
    }

    #[tokio::test]
    async fn bad_base_urls_are_rejected() {
        let config = RestConfig::new("not a url", Auth::None).expect("config");
        let error = RestCompute::new(config).await.expect_err("bad URL");
        assert!(error.to_string().contains("not a URL"), "{error}");
        let config = RestConfig::new("ftp://x/compute/v1/", Auth::None).expect("config");
        assert!(RestCompute::new(config).await.is_err());
        let mut config = RestConfig::new(DEFAULT_BASE_URL, Auth::None).expect("config");
        config.page_size = 501;
        let error = RestCompute::new(config).await.expect_err("page size");
        assert!(error.to_string().contains("page size 501"), "{error}");
    }
}
