//! Paging and filtering of list calls: page sizes, page tokens, list filters, and
//! cutting a page from a sorted listing.

use pm_gce::compute::MAX_PAGE_SIZE;
use pm_gce::filter::Filter;

use super::ApiError;

/// The page token resuming after `key`.
fn encode_token(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The key a page token resumes after.
pub(super) fn decode_token(token: &str) -> Result<String, ApiError> {
    let bad = || ApiError::invalid_field("pageToken", token, "Invalid page token.");
    if token.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    String::from_utf8(bytes).map_err(|_| bad())
}

/// The page size asked for: 1 to 500; absent or 0 means 500.
pub(super) fn page_size(max_results: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = max_results else {
        return Ok(MAX_PAGE_SIZE as usize);
    };
    match text.parse::<u32>() {
        Ok(0) => Ok(MAX_PAGE_SIZE as usize),
        Ok(n) if n <= MAX_PAGE_SIZE => Ok(n as usize),
        Ok(_) | Err(_) => Err(ApiError::invalid_field(
            "maxResults",
            text,
            "Must be an integer between 0 and 500.",
        )),
    }
}

/// A list call's `filter`, absent meaning all.
pub(super) fn parse_filter(filter: Option<&str>) -> Result<Filter, ApiError> {
    Filter::parse(filter.unwrap_or("")).map_err(|e| {
        ApiError::invalid_field("filter", filter.unwrap_or(""), &format!("{}.", e.problem))
    })
}

/// Takes up to `size` items after the start; returns them and the next page token.
pub(super) fn paginate<T>(
    mut items: impl Iterator<Item = (String, T)>,
    size: usize,
) -> (Vec<T>, Option<String>) {
    let mut page = Vec::new();
    let mut last_key = None;
    for (key, item) in items.by_ref() {
        if page.len() == size {
            return (page, last_key.as_deref().map(encode_token));
        }
        last_key = Some(key);
        page.push(item);
    }
    (page, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::world::test_support::{body, world};
    use serde_json::Value;

    #[test]
    fn page_tokens_round_trip() {
        assert_eq!(
            decode_token(&encode_token("z1/web-1")),
            Ok("z1/web-1".to_string())
        );
        assert!(decode_token("abc").is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pagination_and_filters() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        w.insert("p", "z1", &body("a"), None).expect("insert");
        w.insert("p", "z1", &body("b"), None).expect("insert");
        w.insert("p", "z1", &body("c"), None).expect("insert");
        let page: Value = serde_json::from_slice(
            &w.list_instances("p", "z1", None, Some("2"), None)
                .expect("page"),
        )
        .expect("json");
        assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
        let token = page["nextPageToken"].as_str().expect("token").to_string();
        let page: Value = serde_json::from_slice(
            &w.list_instances("p", "z1", None, Some("2"), Some(&token))
                .expect("page"),
        )
        .expect("json");
        assert_eq!(page["items"][0]["name"], "c");
        assert!(page.get("nextPageToken").is_none());
        assert!(w
            .list_instances("p", "z1", None, Some("501"), None)
            .is_err());
        assert!(w.list_instances("p", "z1", None, None, Some("zz")).is_err());
        let filtered: Value = serde_json::from_slice(
            &w.list_instances("p", "z1", Some("name eq 'a|c'"), None, None)
                .expect("list"),
        )
        .expect("json");
        assert_eq!(filtered["items"].as_array().map(Vec::len), Some(2));
        let by_body_field: Value = serde_json::from_slice(
            &w.list_instances("p", "z1", Some("scheduling.preemptible = true"), None, None)
                .expect("list"),
        )
        .expect("json");
        assert_eq!(by_body_field["items"].as_array().map(Vec::len), Some(3));
    }
}
