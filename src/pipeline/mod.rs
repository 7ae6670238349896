//! The request flow, top to bottom, in one place. Each phase is one call into
//! one module (named after pingora's `ProxyHttp` phases):
//!
//! ```text
//! access     proxy token (access.rs)                         → the client's own credential, if open
//! body       read within the limit                           → 413 past it
//! stored     Responses: the stored items a request continues   (stored.rs; GET/DELETE of a
//!            or references; stored-response routes end here    stored response too)
//! prepare    pure: (route, mode, request) → upstream request  (prepare.rs)
//! credential the pool's candidates for the mode and model,    (credential.rs)
//!            in order (affinity, routing), or the client's key
//! send       one request per credential tried: failover       (send.rs)
//!            before the first byte; retries on the last one;
//!            one retry after a forced OAuth refresh
//! respond    relay bytes | read whole | convert JSON | convert stream   (respond.rs)
//! log        the usage record, owned by the one context and   (ctx.rs; finished on drop,
//!            changed only by named transitions                  off the request path)
//! ```
//!
//! An error at any phase stops the request and is rendered once, in the
//! client's dialect (`error.rs`), after the record notes it.

mod body;
mod credential;
mod ctx;
mod prepare;
mod respond;
mod send;
mod stored;

pub use ctx::RequestCtx;
pub use prepare::{
    Conversion, Meter, PrepareOptions, Prepared, Prior, ResponsesInfo, StoredItems, prepare,
};

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;

use crate::access;
use crate::error::ProxyError;
use crate::routes::{Mode, Route};
use crate::state::AppState;
use crate::upstream;

/// The entry point for every proxied route.
pub async fn handle(state: Arc<AppState>, mode: Mode, route: Route, req: Request) -> Response {
    let mut ctx = RequestCtx::new(state.observer.clone(), mode, route, req.headers());
    // Boxed: in place, `run`'s 5.7 KB state was laid out twice in this future (12.9 KB), which
    // the router boxes and copies for every request; boxed, this future is 1.4 KB.
    let run = Box::pin(run(&state, &mut ctx, req));
    let result = tokio::select! {
        biased;
        r = run => r,
        // When the shutdown grace period ends, a request still waiting for the
        // upstream gets a clean 503 rather than a closed connection.
        () = shutdown_over(&state) => Err(ProxyError::unavailable(
            "ccproxy is shutting down; retry the request",
            1,
        )),
    };
    let mut resp = result.unwrap_or_else(|e| {
        ctx.failed(&e);
        e.into_response(ctx.dialect)
    });
    ctx.finish(&mut resp);
    resp
}

async fn run(state: &AppState, ctx: &mut RequestCtx, req: Request) -> Result<Response, ProxyError> {
    let (parts, body) = req.into_parts();

    // access: the proxy token, or a client key (its slot goes with the record).
    let token = state.proxy_token.as_ref();
    let caller = access::check_caller(token, &state.keys, ctx.mode, &parts.headers)
        .map_err(|r| ctx.refused(r))?;
    let client_token = caller.client_token;
    let key = caller.key.map(|k| ctx.client_key(k));

    // stored responses: answered from the store, nothing goes upstream.
    if matches!(ctx.route, Route::StoredResponse | Route::ResponseInputItems) {
        let resp = stored::answer(
            &state.responses,
            ctx.mode,
            ctx.route,
            &parts.method,
            &parts.uri,
        )
        .await?;
        ctx.completed();
        return Ok(resp);
    }

    // body, within the configured limit; on a relay route an upload (anything but JSON within
    // the limit) is streamed through instead, within the upload limit, and sent only once.
    let limits = &state.settings.limits;
    let stall = limits.body_read_timeout;
    let (body, upload) =
        if ctx.route == Route::Relay && body::streams(&parts.headers, limits.max_body_bytes) {
            let max = limits.max_upload_bytes;
            let (streamed, fault) = body::stream(body, &parts.headers, max, stall).await?;
            (Bytes::new(), Some((streamed, fault)))
        } else {
            let body = body::read(body, &parts.headers, limits.max_body_bytes, stall).await?;
            body::check_nesting(&body)?;
            (body, None)
        };

    // the stored items a Responses request continues or references (a WebSocket may hold
    // the previous response itself).
    let stored = match ctx.route {
        Route::Responses | Route::ResponseInputTokens if ctx.mode != Mode::Passthrough => {
            let held = parts.extensions.get::<Prior>();
            stored::lookup(&state.responses, &body, held).await?
        }
        _ => StoredItems::default(),
    };

    // prepare the upstream request by route and mode.
    let opts = PrepareOptions {
        default_max_tokens: state.settings.upstream.default_max_tokens,
        auto_cache: state.settings.upstream.openai_prompt_caching,
        aliases: &state.aliases,
        stored: &stored,
        host: parts
            .headers
            .get(axum::http::header::HOST)
            .and_then(|v| v.to_str().ok()),
    };
    let conversation_body = body.clone();
    let mut p = prepare(
        ctx.route,
        ctx.mode,
        &parts.method,
        parts.uri.path(),
        body,
        &opts,
    )?;
    // the client key's model patterns, now that the model is known.
    if let Some((name, limits)) = &key {
        crate::keys::check_model(name, limits, p.model.as_deref())?;
    }

    let fault = upload.map(|(streamed, fault)| {
        p.body = upstream::UpBody::streamed(streamed);
        fault
    });

    // credential: the candidates for this mode and model, in order.
    let mut plan = credential::plan(
        state,
        ctx.mode,
        p.model.as_deref(),
        client_token,
        &parts.headers,
        &conversation_body,
    )?;
    if fault.is_some() {
        // A streamed upload reaches one credential: there is nothing to send a second one.
        plan.candidates.truncate(1);
    }
    if let (Some(requested), Some(served)) = (&p.requested_model, &p.model) {
        tracing::info!(
            request_id = %ctx.request_id,
            requested = %requested,
            model = %served,
            "model id mapped by the alias table"
        );
    }
    let first = plan.candidates.first().map_or("", |c| c.name());
    ctx.identified(p.model.clone(), p.stream, first);

    // the model list: from the catalog while it is fresh, when a server credential would fetch
    // it (the client's own key fetches its own list); else all of it in one page.
    let catalog = p.conversion == Conversion::Models;
    let server_credential = matches!(
        plan.candidates.first(),
        Some(credential::Candidate::Member(_))
    );
    if catalog
        && server_credential
        && let Some(models) = state.models.fresh()
    {
        ctx.completed();
        return Ok(respond::model_list(
            ctx.dialect,
            &models,
            &state.aliases,
            crate::model_catalog::Source::Cache,
        ));
    }

    // send: one upstream request per credential tried (with the retries `send` allows).
    let query = if catalog {
        Some("limit=1000")
    } else {
        p.keep_query.then(|| parts.uri.query()).flatten()
    };
    let has_body = !p.body.is_empty();
    let settings = &state.settings;
    let relay = ctx.route == Route::Relay;
    let headers_for = |auth: &upstream::UpstreamAuth| {
        let cli = &settings.upstream.cli_version;
        let mut h = upstream::request_headers(ctx.mode, &parts.headers, auth, has_body, cli);
        if relay {
            // Uploads are multipart, downloads have no body: the client's type, not JSON.
            upstream::keep_content_type(&mut h, &parts.headers);
        }
        h
    };
    let sent = Instant::now();
    let sent_result = send::send(state, &p, query, &plan, headers_for).await;
    // A streamed upload that broke off (too large, stalled) is answered with why.
    if let Some(e) = fault.as_ref().and_then(body::take_fault) {
        return Err(e);
    }
    let (resp, chosen) = match sent_result {
        // No model list from the upstream: the last one fetched, or the built-in one.
        Err(e)
            if catalog
                && matches!(
                    e.kind,
                    crate::error::ErrorKind::BadGateway | crate::error::ErrorKind::GatewayTimeout
                ) =>
        {
            let shared = server_credential.then_some(&state.models);
            return Ok(respond::models_fallback(
                ctx,
                shared,
                &state.aliases,
                &e.message(),
            ));
        }
        r => r?,
    };
    let guard = chosen
        .member
        .as_ref()
        .map(|m| Box::new(m.start()) as Box<dyn Send + Sync>);
    ctx.served_by(chosen.name(), guard);
    ctx.billed_to(credential::bucket(&chosen, resp.headers()));
    if let (Some(key), Some(member)) = (plan.conversation, &chosen.member)
        && resp.status().is_success()
    {
        plan.pool
            .remember(key, member, crate::util::time::now_secs());
    }
    ctx.upstream_answered(&resp, sent.elapsed());

    // respond: relay, read whole, or convert.
    let r = respond::Respond {
        mode: ctx.mode,
        limits: &state.stream_limits,
        aliases: &state.aliases,
        deadline: tokio::time::Instant::from_std(sent) + settings.upstream.timeout,
        sent,
        responses: &state.responses,
        catalog: chosen.member.is_some().then_some(&state.models),
    };
    respond::respond(ctx, r, resp, p.conversion, p.meter).await
}

/// Completes when the server's shutdown grace period is over (never without a server).
async fn shutdown_over(state: &AppState) {
    let mut shutdown = state.stream_limits.shutdown.clone();
    if shutdown.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}
