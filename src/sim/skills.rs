//! The Skills API of the simulated upstream (`/v1/skills`): create from a multipart upload of a
//! skill's files, list (newest first, `page` cursor), retrieve, delete — validated as the real
//! service validates: a key and `anthropic-version`, at least one file, every file in one
//! top-level directory with a `SKILL.md` at its root, a `name` in its frontmatter when no
//! `display_name` is given, known ids.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::files::{admit_call, boundary, parse_multipart, rfc3339};
use super::{SimError, SimState, bodyless, record_request, sim_err};

/// The largest upload the service accepts for one skill (30 MB).
const MAX_SKILL_BYTES: usize = 30 * 1000 * 1000;

struct Skill {
    id: String,
    display_name: String,
    version: String,
    created_at: u64,
}

impl Skill {
    fn object(&self) -> Value {
        json!({
            "id": self.id, "type": "skill", "display_name": self.display_name,
            "source": "custom", "latest_version_id": self.version,
            "created_at": rfc3339(self.created_at), "updated_at": rfc3339(self.created_at),
        })
    }
}

/// The skills created so far, by order of creation.
#[derive(Default)]
pub struct Skills {
    by_seq: Mutex<BTreeMap<u64, Skill>>,
}

/// `POST /v1/skills`.
pub async fn create(State(state): State<Arc<SimState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_SKILL_BYTES + 64 * 1024).await else {
        return sim_err(413, "The skill's files exceed 30 MB").into_response();
    };
    record_request(&state, &parts.method, &parts.uri, &parts.headers, &body);
    match store(&state, &parts.headers, &body) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The `name` of a `SKILL.md` frontmatter (`---` … `---`).
fn frontmatter_name(text: &str) -> Option<String> {
    let rest = text.strip_prefix("---")?;
    let end = rest.find("\n---")?;
    rest[..end].lines().find_map(|l| {
        l.trim()
            .strip_prefix("name:")
            .map(|n| n.trim().trim_matches('"').to_owned())
            .filter(|n| !n.is_empty())
    })
}

fn store(state: &SimState, headers: &HeaderMap, body: &Bytes) -> Result<Value, SimError> {
    admit_call(state, headers)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = boundary(ct).ok_or_else(|| {
        sim_err(
            400,
            "Invalid content type: expected multipart/form-data with a boundary",
        )
    })?;
    let parts = parse_multipart(body, boundary)
        .ok_or_else(|| sim_err(400, "The multipart body could not be parsed"))?;
    let mut display_name = None;
    let mut files = Vec::new();
    for p in parts {
        match p.name.as_str() {
            "files" | "files[]" => files.push((p.filename.unwrap_or_default(), p.content)),
            "display_name" => {
                display_name = Some(String::from_utf8_lossy(p.content).into_owned());
            }
            _ => {}
        }
    }
    if files.is_empty() {
        return Err(sim_err(400, "files: at least one file is required"));
    }
    let top = |name: &str| name.split_once('/').map(|(d, _)| d.to_owned());
    let Some(dir) = top(&files[0].0) else {
        return Err(sim_err(
            400,
            "files: every file must be inside the skill's top-level directory",
        ));
    };
    if files.iter().any(|(n, _)| top(n).as_deref() != Some(&dir)) {
        return Err(sim_err(
            400,
            "files: all files must be in the same top-level directory",
        ));
    }
    let skill_md = format!("{dir}/SKILL.md");
    let Some((_, md)) = files.iter().find(|(n, _)| *n == skill_md) else {
        return Err(sim_err(
            400,
            "files: SKILL.md is required at the root of the skill's directory",
        ));
    };
    let from_md = frontmatter_name(&String::from_utf8_lossy(md));
    let Some(display_name) = display_name.filter(|d| !d.is_empty()).or(from_md) else {
        return Err(sim_err(
            400,
            "SKILL.md: the frontmatter must name the skill (name: …)",
        ));
    };
    if display_name.len() > 255 || display_name.contains('\n') {
        return Err(sim_err(
            400,
            "display_name: one line of at most 255 characters",
        ));
    }
    let seq = state.next_id();
    let now = crate::util::time::now_secs();
    let skill = Skill {
        id: format!("skill_01Sim{seq:016x}"),
        display_name,
        version: format!("{}", now * 1_000_000 + seq % 1_000_000),
        created_at: now,
    };
    let v = skill.object();
    if let Ok(mut all) = state.skills.by_seq.lock() {
        all.insert(seq, skill);
    }
    Ok(v)
}

/// `limit` (1–100, default 20), `page` (the cursor a previous page gave), `source`.
#[derive(serde::Deserialize, Default)]
pub struct ListQuery {
    limit: Option<String>,
    page: Option<String>,
    source: Option<String>,
}

/// `GET /v1/skills`: newest first; `next_page` is the cursor of the next page.
pub async fn list(
    State(state): State<Arc<SimState>>,
    Query(q): Query<ListQuery>,
    req: Request,
) -> Response {
    let parts = bodyless(&state, req);
    let result = admit_call(&state, &parts.headers).and_then(|()| {
        let limit = match q.limit.as_deref().map(str::parse::<usize>) {
            None => 20,
            Some(Ok(n)) if (1..=100).contains(&n) => n,
            Some(_) => return Err(sim_err(400, "limit: between 1 and 100")),
        };
        let from = match q.page.as_deref() {
            None => 0,
            Some(p) => p
                .strip_prefix("page_")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| sim_err(400, "page: not a page this service gave"))?,
        };
        let all: Vec<Value> = state
            .skills
            .by_seq
            .lock()
            .map(|s| s.values().rev().map(Skill::object).collect())
            .unwrap_or_default();
        let all: Vec<Value> = match q.source.as_deref() {
            None | Some("custom") => all,
            Some(_) => Vec::new(),
        };
        let to = (from + limit).min(all.len());
        let data = all.get(from..to).unwrap_or_default().to_vec();
        let next = (to < all.len()).then(|| format!("page_{to}"));
        Ok(json!({"data": data, "has_more": next.is_some(), "next_page": next}))
    });
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/skills/{id}` and `DELETE /v1/skills/{id}`.
pub async fn one(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let parts = bodyless(&state, req);
    if let Err(e) = admit_call(&state, &parts.headers) {
        return e.into_response();
    }
    let Ok(mut all) = state.skills.by_seq.lock() else {
        return sim_err(500, "skills are unavailable").into_response();
    };
    let Some(seq) = all.iter().find(|(_, s)| s.id == id).map(|(k, _)| *k) else {
        return sim_err(404, &format!("Skill not found: {id}")).into_response();
    };
    if parts.method == axum::http::Method::DELETE {
        all.remove(&seq);
        return axum::Json(json!({"id": id, "type": "skill_deleted"})).into_response();
    }
    axum::Json(all[&seq].object()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontmatter_names() {
        assert_eq!(
            frontmatter_name("---\nname: pdf-tools\ndescription: x\n---\nbody").as_deref(),
            Some("pdf-tools")
        );
        assert_eq!(frontmatter_name("---\ndescription: x\n---\n"), None);
        assert_eq!(frontmatter_name("no frontmatter"), None);
    }
}
