//! Observability: the per-request record, structured logs, Prometheus metrics,
//! and the usage store (off the request path).

pub mod usage;

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

/// One finished request, as the usage store keeps it. Contains no secrets.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UsageRecord {
    /// Start time, epoch milliseconds.
    pub ts_ms: i64,
    pub request_id: String,
    /// `full`, `minimal` or `passthrough`.
    pub mode: String,
    /// `anthropic` or `openai`.
    pub dialect: String,
    /// The Claude model billed (for OpenAI requests, the model it was mapped to).
    pub model: Option<String>,
    pub stream: bool,
    /// Status sent to the client.
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub tokens: Tokens,
    /// Estimated cost in USD; `None` when the model's price is unknown.
    pub cost_usd: Option<f64>,
    pub duration_ms: f64,
    /// Time to the first content event (streams) or to the response (non-stream).
    pub ttft_ms: Option<f64>,
    /// Time the proxy itself added before the response head.
    pub proxy_ms: f64,
    /// The client went away before the end: tokens are what was delivered.
    pub abandoned: bool,
    pub error: Option<String>,
    /// `server_oauth`, `client` or `server_api_key`.
    pub credential: Option<String>,
}
