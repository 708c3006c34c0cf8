//! Paging and filtering of list calls: page sizes, page tokens, list filters,
//! cutting a page from a sorted listing, and the reply that carries the page.

use std::ops::Bound;

use pm_gce::compute::MAX_PAGE_SIZE;
use pm_gce::filter::Filter;
use serde::Serialize;
use serde_json::{json, Value};

use super::{ApiError, URL_ROOT};

/// The filter and paging parameters of a list call, as sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListQuery<'a> {
    /// `filter`; absent lists all.
    pub filter: Option<&'a str>,
    /// `maxResults`; absent or 0 means 500.
    pub max_results: Option<&'a str>,
    /// `pageToken` of the page to list; absent lists the first.
    pub page_token: Option<&'a str>,
    /// `orderBy`: absent or `name` (alphanumerical, the default) or `creationTimestamp
    /// desc` (newest first), the only orders GCE supports.
    pub order_by: Option<&'a str>,
}

/// The order of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    /// By name, the default.
    Name,
    /// Newest first (`orderBy=creationTimestamp desc`).
    NewestFirst,
}

impl ListQuery<'_> {
    /// The parameters checked, in order: the filter, the page size, the page token, the
    /// order.
    pub(super) fn check(&self) -> Result<ListPage, ApiError> {
        Ok(ListPage {
            filter: parse_filter(self.filter)?,
            size: page_size(self.max_results)?,
            after: self.page_token.map(decode_token).transpose()?,
            order: parse_order(self.order_by)?,
        })
    }

    /// As [`ListQuery::check`], for a list gce-sim orders by name only: `creationTimestamp
    /// desc` is refused there (GCE takes it; a client of gce-sim that needs it there gets
    /// a clear error rather than a listing in another order than it asked for).
    pub(super) fn check_by_name(&self) -> Result<ListPage, ApiError> {
        let page = self.check()?;
        if page.order != Order::Name {
            return Err(ApiError::invalid_field(
                "orderBy",
                self.order_by.unwrap_or(""),
                "gce-sim sorts this list by name only; orderBy=creationTimestamp desc is supported for zoneOperations.list.",
            ));
        }
        Ok(page)
    }
}

/// `orderBy` as GCE takes it.
fn parse_order(order_by: Option<&str>) -> Result<Order, ApiError> {
    match order_by {
        None | Some("") | Some("name") => Ok(Order::Name),
        Some("creationTimestamp desc") => Ok(Order::NewestFirst),
        Some(other) => Err(ApiError::invalid_field(
            "orderBy",
            other,
            "Currently, only sorting by 'name' or 'creationTimestamp desc' is supported.",
        )),
    }
}

/// The page a list call asks for.
pub(super) struct ListPage {
    /// What the items listed match.
    pub(super) filter: Filter,
    /// Most items on the page.
    pub(super) size: usize,
    /// The key of the listing that the page starts after.
    pub(super) after: Option<String>,
    /// The order asked for.
    pub(super) order: Order,
}

impl ListPage {
    /// The keys of a sorted listing the page may hold: those after the page token's.
    pub(super) fn keys(&self) -> (Bound<&str>, Bound<&str>) {
        let lower = match &self.after {
            Some(after) => Bound::Excluded(after.as_str()),
            None => Bound::Unbounded,
        };
        (lower, Bound::Unbounded)
    }
}

/// The page token resuming after `key`.
fn encode_token(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The key a page token resumes after.
fn decode_token(token: &str) -> Result<String, ApiError> {
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
fn page_size(max_results: Option<&str>) -> Result<usize, ApiError> {
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
fn parse_filter(filter: Option<&str>) -> Result<Filter, ApiError> {
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

/// A list reply of `kind` whose resource path is `id`, with the token of the next page
/// if there is one.
pub(super) fn list_reply(
    kind: &str,
    id: &str,
    items: impl Serialize,
    next_page_token: Option<String>,
) -> Value {
    let mut reply = json!({
        "kind": kind,
        "id": id,
        "items": items,
        "selfLink": format!("{URL_ROOT}{id}"),
    });
    if let (Some(token), Value::Object(map)) = (next_page_token, &mut reply) {
        map.insert("nextPageToken".into(), Value::String(token));
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::world::test_support::{body, world};
    use crate::world::{Mutation, World};

    #[test]
    fn page_tokens_round_trip() {
        assert_eq!(
            decode_token(&encode_token("z1/web-1")),
            Ok("z1/web-1".to_string())
        );
        assert!(decode_token("abc").is_err());
    }

    /// `instances.list` of `z1` in project `p`, parsed.
    fn list(w: &mut World, query: ListQuery<'_>) -> Result<Value, ApiError> {
        let page = w.list_instances("p", "z1", &query)?;
        Ok(serde_json::from_slice(&page).expect("json"))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pagination_and_filters() {
        let mut w = world(Duration::ZERO, Duration::ZERO);
        for name in ["a", "b", "c"] {
            w.mutate("p", "z1", Mutation::Insert(&body(name)), None)
                .expect("insert");
        }
        let two = ListQuery {
            max_results: Some("2"),
            ..ListQuery::default()
        };
        let page = list(&mut w, two).expect("page");
        assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
        let token = page["nextPageToken"].as_str().expect("token").to_string();
        let next = ListQuery {
            page_token: Some(&token),
            ..two
        };
        let page = list(&mut w, next).expect("page");
        assert_eq!(page["items"][0]["name"], "c");
        assert!(page.get("nextPageToken").is_none());
        let too_many = ListQuery {
            max_results: Some("501"),
            ..ListQuery::default()
        };
        assert!(list(&mut w, too_many).is_err());
        let bad_token = ListQuery {
            page_token: Some("zz"),
            ..ListQuery::default()
        };
        assert!(list(&mut w, bad_token).is_err());
        for (filter, count) in [("name eq 'a|c'", 2), ("scheduling.preemptible = true", 3)] {
            let query = ListQuery {
                filter: Some(filter),
                ..ListQuery::default()
            };
            let filtered = list(&mut w, query).expect("list");
            assert_eq!(filtered["items"].as_array().map(Vec::len), Some(count));
        }
    }
}
