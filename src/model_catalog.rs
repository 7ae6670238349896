//! The upstream's model list, cached (README "Models").
//!
//! `GET /v1/models` and `GET /openai/v1/models` in full and minimal mode answer from this cache
//! while it is fresh (`models_cache_secs`), when the request would use one of the server's own
//! credentials: the list is the organisation's, not the client's. A request that finds it stale
//! (or `POST /api/models/refresh`, `ccproxy models refresh`) fetches it again, one page of up to
//! 1000 models. When the upstream cannot be reached or fails (5xx, 429), the last list fetched
//! is served, and before any was fetched the built-in list ([`convert::model_list::built_in`]);
//! `x-ccproxy-models-source` says which (`upstream`, `cache`, `built-in`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::convert;

/// Where a served model list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Fetched from the upstream for this request.
    Upstream,
    /// The cached upstream list.
    Cache,
    /// The built-in list (the upstream never answered).
    BuiltIn,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Upstream => "upstream",
            Source::Cache => "cache",
            Source::BuiltIn => "built-in",
        }
    }
}

/// The header that names the [`Source`] of a served list.
pub const SOURCE_HEADER: &str = "x-ccproxy-models-source";

/// The last list fetched, and until when it is fresh (`None`: invalidated).
type Entry = Option<(Arc<Vec<Value>>, Option<Instant>)>;

/// The cached list.
#[derive(Debug)]
pub struct ModelCatalog {
    ttl: Duration,
    inner: Mutex<Entry>,
}

impl ModelCatalog {
    pub fn new(ttl: Duration) -> ModelCatalog {
        ModelCatalog {
            ttl,
            inner: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entry> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached list, while it is fresh.
    pub fn fresh(&self) -> Option<Arc<Vec<Value>>> {
        self.lock()
            .as_ref()
            .filter(|(_, until)| until.is_some_and(|t| Instant::now() < t))
            .map(|(m, _)| m.clone())
    }

    /// The list to serve when the upstream gave none: the last one fetched, else the built-in.
    pub fn fallback(&self) -> (Arc<Vec<Value>>, Source) {
        match self.lock().as_ref() {
            Some((m, _)) => (m.clone(), Source::Cache),
            None => (Arc::new(convert::model_list::built_in()), Source::BuiltIn),
        }
    }

    /// Keeps a list just fetched.
    pub fn store(&self, models: Vec<Value>) -> Arc<Vec<Value>> {
        let models = Arc::new(models);
        *self.lock() = Some((models.clone(), Instant::now().checked_add(self.ttl)));
        models
    }

    /// Makes the next request fetch the list again (the cached one is still the fallback).
    pub fn invalidate(&self) {
        if let Some((_, until)) = self.lock().as_mut() {
            *until = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_then_stale_then_fallback() {
        let c = ModelCatalog::new(Duration::from_secs(60));
        assert!(c.fresh().is_none());
        let (built_in, source) = c.fallback();
        assert_eq!(source, Source::BuiltIn);
        assert!(!built_in.is_empty());
        c.store(vec![serde_json::json!({"id": "m"})]);
        assert_eq!(c.fresh().unwrap()[0]["id"], "m");
        c.invalidate();
        assert!(c.fresh().is_none());
        let (last, source) = c.fallback();
        assert_eq!((last[0]["id"].as_str(), source), (Some("m"), Source::Cache));
    }
}
