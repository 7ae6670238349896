//! The Responses store's side of the pipeline: the lookups a create (or `input_tokens`) needs
//! before `prepare` ([`lookup`]), and the routes answered from the store alone ([`answer`]:
//! `GET`/`DELETE /openai/v1/responses/{id}`, `GET …/{id}/input_items`).

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::Value;
use serde_json::value::RawValue;

use super::prepare::StoredItems;
use crate::error::{ErrorKind, Origin, ProxyError};
use crate::response_store::{ResponseStore, StoreError, StoredResponse, response_of_item};
use crate::routes::{Mode, Route};

fn store_error(e: StoreError) -> ProxyError {
    ProxyError::new(ErrorKind::Internal, Origin::Proxy, e.to_string())
}

/// The fields of a create body the lookups read (anything else, or a body that is not JSON, is
/// left to the converter to judge).
#[derive(serde::Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    previous_response_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

/// The previous response's items (unknown → 404) and the items the request's `item_reference`s
/// name: in the previous response's items, else in the response an id of ours belongs to.
pub async fn lookup(
    store: &ResponseStore,
    body: &[u8],
    held: Option<&super::Prior>,
) -> Result<StoredItems, ProxyError> {
    let mut out = StoredItems::default();
    if !may_refer(body) {
        return Ok(out);
    }
    let Ok(peek) = serde_json::from_slice::<Peek>(body) else {
        return Ok(out);
    };
    if let Some(id) = peek
        .previous_response_id
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
    {
        if let Some(h) = held.filter(|h| h.id == id) {
            out.prior = h.items.to_vec();
            out.previous = Some(id);
            return resolve_references(store, peek, out).await;
        }
        let Some(prev) = store.get(&id).await.map_err(store_error)? else {
            return Err(super::prepare::unknown_previous(&id));
        };
        out.prior = conversation(&prev).map_err(|e| {
            ProxyError::new(
                ErrorKind::Internal,
                Origin::Proxy,
                format!("stored response {id:?} cannot be read: {e}"),
            )
        })?;
        out.previous = Some(id);
    }
    resolve_references(store, peek, out).await
}

/// The items the request's `item_reference`s name.
async fn resolve_references(
    store: &ResponseStore,
    peek: Peek<'_>,
    mut out: StoredItems,
) -> Result<StoredItems, ProxyError> {
    let references = peek.input.map(references).unwrap_or_default();
    if references.is_empty() {
        return Ok(out);
    }
    let mut by_id = index(&out.prior);
    let mut fetched: HashMap<String, bool> = HashMap::new();
    for id in references {
        if !by_id.contains_key(&id)
            && let Some(resp_id) = response_of_item(&id)
            && !fetched.contains_key(&resp_id)
        {
            let found = store.get(&resp_id).await.map_err(store_error)?;
            fetched.insert(resp_id, found.is_some());
            if let Some(r) = found
                && let Ok(items) = conversation(&r)
            {
                for (k, v) in index(&items) {
                    by_id.entry(k).or_insert(v);
                }
            }
        }
        if let Some(item) = by_id.get(&id) {
            out.items.insert(id, item.clone());
        }
    }
    Ok(out)
}

/// A stored response's input items followed by its output items.
fn conversation(r: &StoredResponse) -> serde_json::Result<Vec<Box<RawValue>>> {
    #[derive(serde::Deserialize)]
    struct Output {
        #[serde(default)]
        output: Vec<Box<RawValue>>,
    }
    let mut items: Vec<Box<RawValue>> = serde_json::from_str(&r.input_items)?;
    items.extend(serde_json::from_str::<Output>(&r.response)?.output);
    Ok(items)
}

/// Items by their `id`.
fn index(items: &[Box<RawValue>]) -> HashMap<String, Box<RawValue>> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<String>,
    }
    items
        .iter()
        .filter_map(|raw| {
            let id = serde_json::from_str::<Id>(raw.get()).ok()?.id?;
            Some((id, raw.clone()))
        })
        .collect()
}

/// Whether `body` may continue a response or reference items: it names
/// `previous_response_id` or `item_reference`, or has a `\u` escape (either name written
/// with one is found only by parsing). Most requests do neither, and need not be parsed for
/// it; a client that escapes all non-ASCII text (Python's `json.dumps` by default) always is.
fn may_refer(body: &[u8]) -> bool {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    // Built once: a searcher built per call cost more than the three searches.
    static NAMES: LazyLock<[Finder<'static>; 3]> = LazyLock::new(|| {
        [
            Finder::new(b"previous_response_id"),
            Finder::new(b"item_reference"),
            Finder::new(b"\\u"),
        ]
    });
    NAMES.iter().any(|f| f.find(body).is_some())
}

/// The ids the `item_reference` items of `input` name.
fn references(input: &RawValue) -> Vec<String> {
    let raw = input.get();
    if !raw.contains("item_reference") && !raw.contains("\\u") {
        return Vec::new();
    }
    let Ok(items) = serde_json::from_str::<Vec<Value>>(raw) else {
        return Vec::new();
    };
    items
        .iter()
        .filter(|it| it["type"] == "item_reference")
        .filter_map(|it| it["id"].as_str().map(str::to_owned))
        .collect()
}

/// `GET`/`DELETE /openai/v1/responses/{id}` and `GET …/{id}/input_items`.
pub async fn answer(
    store: &ResponseStore,
    mode: Mode,
    route: Route,
    method: &Method,
    uri: &Uri,
) -> Result<Response, ProxyError> {
    if mode == Mode::Passthrough {
        return Err(ProxyError::not_found(
            "passthrough has no Responses API (the upstream has none): use the full or minimal \
             prefix (/openai/v1/responses/{id}, /min/openai/v1/responses/{id})",
        ));
    }
    let id = response_id(uri.path(), route);
    match (route, method) {
        (Route::StoredResponse, &Method::DELETE) => {
            if !store.delete(&id).await.map_err(store_error)? {
                return Err(not_found(&id));
            }
            let body = serde_json::json!({"id": id, "object": "response.deleted", "deleted": true});
            Ok(json(body.to_string()))
        }
        (Route::StoredResponse, _) => {
            let r = store
                .get(&id)
                .await
                .map_err(store_error)?
                .ok_or_else(|| not_found(&id))?;
            Ok(json(r.response.clone()))
        }
        _ => {
            let q = ListQuery::parse(uri.query())?;
            let r = store
                .get(&id)
                .await
                .map_err(store_error)?
                .ok_or_else(|| not_found(&id))?;
            let items: Vec<Box<RawValue>> = serde_json::from_str(&r.input_items).map_err(|e| {
                ProxyError::new(
                    ErrorKind::Internal,
                    Origin::Proxy,
                    format!("stored input items of {id:?} cannot be read: {e}"),
                )
            })?;
            Ok(json(list(&items, &q)?))
        }
    }
}

/// The `{id}` segment of the path (after `/responses/`).
fn response_id(path: &str, route: Route) -> String {
    let rest = path.rsplit_once("/responses/").map_or("", |(_, r)| r);
    let id = match route {
        Route::ResponseInputItems => rest.strip_suffix("/input_items").unwrap_or(rest),
        _ => rest,
    };
    percent_decode(id)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn not_found(id: &str) -> ProxyError {
    ProxyError::not_found(format!(
        "Response with id {id:?} not found (unknown, expired, deleted, or created with store: false)"
    ))
}

fn json(body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `limit`, `order`, `after`, `before` of a list request.
#[derive(Debug, PartialEq)]
struct ListQuery {
    limit: usize,
    ascending: bool,
    after: Option<String>,
    before: Option<String>,
}

impl ListQuery {
    fn parse(query: Option<&str>) -> Result<ListQuery, ProxyError> {
        let mut q = ListQuery {
            limit: 20,
            ascending: false,
            after: None,
            before: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(&v.replace('+', " "));
            match k {
                "limit" => {
                    q.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or_else(|| {
                            ProxyError::invalid(format!(
                                "invalid limit {v:?}: an integer from 1 to 100"
                            ))
                            .with_param("limit")
                        })?;
                }
                "order" => {
                    q.ascending = match v.as_str() {
                        "asc" => true,
                        "desc" => false,
                        _ => {
                            return Err(ProxyError::invalid(format!(
                                "invalid order {v:?}: asc or desc"
                            ))
                            .with_param("order"));
                        }
                    };
                }
                "after" => q.after = Some(v),
                "before" => q.before = Some(v),
                // `include` and anything else: nothing to add (items are stored whole).
                _ => {}
            }
        }
        Ok(q)
    }
}

/// One page of `items` in OpenAI's list shape.
fn list(items: &[Box<RawValue>], q: &ListQuery) -> Result<String, ProxyError> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<String>,
    }
    let id_of = |raw: &RawValue| {
        serde_json::from_str::<Id>(raw.get())
            .ok()
            .and_then(|i| i.id)
    };
    let mut ordered: Vec<&RawValue> = items.iter().map(|b| &**b).collect();
    if !q.ascending {
        ordered.reverse();
    }
    let position = |cursor: &str, param: &str| {
        ordered
            .iter()
            .position(|raw| id_of(raw).as_deref() == Some(cursor))
            .ok_or_else(|| {
                ProxyError::invalid(format!("no input item with id {cursor:?} in this response"))
                    .with_param(param.to_owned())
            })
    };
    let start = match &q.after {
        Some(a) => position(a, "after")? + 1,
        None => 0,
    };
    let end = match &q.before {
        Some(b) => position(b, "before")?,
        None => ordered.len(),
    };
    let window = ordered.get(start..end.max(start)).unwrap_or(&[]);
    let page = &window[..window.len().min(q.limit)];
    let body = serde_json::json!({
        "object": "list",
        "data": page,
        "first_id": page.first().and_then(|r| id_of(r)),
        "last_id": page.last().and_then(|r| id_of(r)),
        "has_more": window.len() > page.len(),
    });
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<Box<RawValue>> {
        (0..n)
            .map(|i| {
                serde_json::value::to_raw_value(&serde_json::json!({"id": format!("i{i}")}))
                    .unwrap()
            })
            .collect()
    }

    fn page(q: &str) -> Value {
        let q = ListQuery::parse(Some(q)).unwrap();
        serde_json::from_str(&list(&items(5), &q).unwrap()).unwrap()
    }

    #[test]
    fn pages() {
        let v = page("");
        assert_eq!(v["data"][0]["id"], "i4", "newest first by default");
        assert_eq!(v["has_more"], false);
        let v = page("order=asc&limit=2");
        assert_eq!(
            (v["first_id"].as_str(), v["last_id"].as_str()),
            (Some("i0"), Some("i1"))
        );
        assert_eq!(v["has_more"], true);
        let v = page("order=asc&limit=2&after=i1");
        assert_eq!(v["first_id"], "i2");
        let v = page("order=asc&after=i4");
        assert_eq!(v["data"], serde_json::json!([]));
        assert_eq!(v["first_id"], Value::Null);
        let v = page("order=desc&before=i2");
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn bad_queries_name_their_parameter() {
        for (q, param) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=x", "limit"),
            ("order=up", "order"),
        ] {
            let e = ListQuery::parse(Some(q)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{q}");
        }
        let q = ListQuery::parse(Some("after=nope")).unwrap();
        let e = list(&items(2), &q).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("after"));
    }

    #[test]
    fn only_a_body_that_may_refer_is_parsed_for_references() {
        assert!(!may_refer(br#"{"model":"m","input":"hi"}"#));
        assert!(may_refer(
            br#"{"previous_response_id":"resp_1","input":"hi"}"#
        ));
        assert!(may_refer(
            br#"{"input":[{"type":"item_reference","id":"x"}]}"#
        ));
        assert!(may_refer(br#"{"previous_response\u005fid":"resp_1"}"#));
    }

    #[test]
    fn ids_come_from_the_path() {
        assert_eq!(
            response_id(
                "/min/openai/v1/responses/resp_1/input_items",
                Route::ResponseInputItems
            ),
            "resp_1"
        );
        assert_eq!(
            response_id("/openai/v1/responses/resp%5F2", Route::StoredResponse),
            "resp_2"
        );
    }
}
