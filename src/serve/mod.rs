//! An HTTP inference server (axum on tokio) with dynamic batching and a web page.
//!
//! - `POST /v1/predict[?topk=K&attention=1]`: one image, as the raw body or one multipart file
//!   part. The answer is the object `sknet predict --json` prints for that image.
//! - `GET /v1/model`: name, config, classes, preprocessing, SK units.
//! - `GET /healthz`, `GET /metrics` (OpenMetrics text for Prometheus).
//! - `GET /`: a page to drop an image on and see its top-5 and each SK unit's large-kernel weight.
//!
//! Requests are decoded on tokio's blocking pool, then wait in a bounded queue for the inference
//! thread ([`batcher`]), which answers up to `max_batch` of them with one forward pass. A full
//! queue answers 503 with `Retry-After`; bodies are capped; every request has a deadline. The
//! future given to [`Server::run`] ends the server gracefully: requests in flight are answered,
//! new connections are refused.

mod batcher;
mod metrics;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use burn::tensor::Device;
use serde_json::json;
use thiserror::Error;
use tokio::sync::oneshot;

use crate::attention::units;
use crate::infer::{decode_image, InferError, Preprocess};
use crate::model::SkNet;
use batcher::{Batcher, Job, Worker};
use metrics::Metrics;

/// Largest `max_batch`.
pub const MAX_BATCH: usize = 256;
/// Largest queue.
pub const MAX_QUEUE: usize = 65_536;

/// How the server runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Most images per forward pass.
    pub max_batch: usize,
    /// How long the first request of a batch waits for others.
    pub max_wait: Duration,
    /// Most requests waiting for a forward pass; more are answered 503.
    pub queue: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// A request's deadline, from arrival to answer; past it the answer is 504.
    pub timeout: Duration,
}

impl ServeConfig {
    /// Batches of up to 16 gathered for 5 ms, a queue of 256, 20 MB bodies, 30 s deadlines.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            max_batch: 16,
            max_wait: Duration::from_millis(5),
            queue: 256,
            max_body_bytes: 20_000_000,
            timeout: Duration::from_secs(30),
        }
    }

    /// Checks the limits; the error names the field.
    pub fn validate(&self) -> Result<(), ServeError> {
        let invalid = |field: &str, constraint: String| {
            Err(ServeError::Invalid {
                field: field.into(),
                constraint,
            })
        };
        if !(1..=MAX_BATCH).contains(&self.max_batch) {
            return invalid("max_batch", format!("must be within 1..={MAX_BATCH}"));
        }
        if !(1..=MAX_QUEUE).contains(&self.queue) {
            return invalid("queue", format!("must be within 1..={MAX_QUEUE}"));
        }
        if self.max_wait > Duration::from_secs(10) {
            return invalid("max_wait", "must be at most 10 s".into());
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > 1 << 30 {
            return invalid("max_body_bytes", "must be within 1 byte..=1 GiB".into());
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(3600) {
            return invalid("timeout", "must be within 1 ms..=1 h".into());
        }
        Ok(())
    }
}

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServeError {
    /// A setting is out of range.
    #[error("serve setting `{field}` {constraint}")]
    Invalid {
        /// The setting.
        field: String,
        /// What was expected.
        constraint: String,
    },
    /// The address cannot be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The network does not take its own preprocessing's size.
    #[error(transparent)]
    Input(#[from] crate::model::InputError),
    /// Serving failed after it started.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// The network and what describes it.
pub struct ServedModel {
    /// The network (folded for inference, or not).
    pub model: SkNet,
    /// The evaluation transform.
    pub preprocess: Preprocess,
    /// Class names, one per output.
    pub classes: Vec<String>,
}

struct AppState {
    batcher: Batcher,
    metrics: Arc<Metrics>,
    info: serde_json::Value,
    timeout: Duration,
    num_classes: usize,
}

/// A bound server, not yet answering.
pub struct Server {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    inference: std::thread::JoinHandle<()>,
    max_body_bytes: usize,
}

impl Server {
    /// Binds the address and starts the inference thread. Call inside a tokio runtime.
    pub async fn bind(
        served: ServedModel,
        config: &ServeConfig,
        device: &Device,
    ) -> Result<Self, ServeError> {
        config.validate()?;
        let ServedModel {
            model,
            preprocess,
            classes,
        } = served;
        let [h, w] = preprocess.size;
        model.check_input(&[1, model.config.in_channels, h, w])?;
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.addr,
                source,
            })?;
        let info = json!({
            "name": model.config.name,
            "num_classes": model.config.num_classes,
            "classes": classes,
            "preprocess": preprocess,
            "units": units(&model)
                .iter()
                .map(|u| json!({"unit": u.name, "kernel": u.kernels[u.largest]}))
                .collect::<Vec<_>>(),
            "config": model.config,
        });
        let num_classes = model.config.num_classes;
        let metrics = Arc::new(Metrics::new(config.max_batch));
        let worker = Worker {
            model,
            preprocess,
            classes,
            max_batch: config.max_batch,
            max_wait: config.max_wait,
            device: device.clone(),
            metrics: metrics.clone(),
        };
        let (batcher, inference) = Batcher::start(worker, config.queue);
        Ok(Self {
            listener,
            state: Arc::new(AppState {
                batcher,
                metrics,
                info,
                timeout: config.timeout,
                num_classes,
            }),
            inference,
            max_body_bytes: config.max_body_bytes,
        })
    }

    /// The address it listens on (with the port chosen when the config asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers requests until `shutdown` completes, then finishes the requests in flight and
    /// stops the inference thread.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let app = router(self.state.clone(), self.max_body_bytes);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        // The last handle to the queue goes: the inference thread drains it and ends.
        drop(self.state);
        let inference = self.inference;
        tokio::task::spawn_blocking(move || inference.join())
            .await
            .ok();
        Ok(())
    }
}

const PAGE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let page = |body: &'static str, kind: &'static str| {
        get(move || async move { ([(header::CONTENT_TYPE, kind)], body) })
    };
    Router::new()
        .route("/", page(PAGE, "text/html; charset=utf-8"))
        .route("/app.js", page(SCRIPT, "text/javascript; charset=utf-8"))
        .route("/style.css", page(STYLE, "text/css; charset=utf-8"))
        .route("/v1/predict", post(predict))
        .route("/v1/model", get(model_info))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint".into(),
            )
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Counts every answer by route and status, with its latency.
async fn count(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = match request.uri().path() {
        "/v1/predict" => "predict",
        "/v1/model" => "model",
        "/healthz" => "healthz",
        "/metrics" => "metrics",
        "/" | "/app.js" | "/style.css" => "page",
        _ => "other",
    };
    let start = Instant::now();
    let response = next.run(request).await;
    let seconds = start.elapsed().as_secs_f64();
    state
        .metrics
        .record(route, response.status().as_u16(), seconds);
    response
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn model_info(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(state.info.clone())
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.queue_depth.set(state.batcher.depth() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `topk` and `attention` from the query string.
fn parse_query(
    query: &HashMap<String, String>,
    num_classes: usize,
) -> Result<(usize, bool), String> {
    if let Some(key) = query.keys().find(|k| *k != "topk" && *k != "attention") {
        return Err(format!(
            "unknown query parameter `{key}` (expected topk, attention)"
        ));
    }
    let topk = match query.get("topk") {
        None => 5.min(num_classes),
        Some(text) => match text.parse::<usize>() {
            Ok(k) if (1..=num_classes).contains(&k) => k,
            _ => {
                return Err(format!(
                    "topk `{text}`: expected a whole number within 1..={num_classes}"
                ))
            }
        },
    };
    let attention = match query.get("attention").map(String::as_str) {
        None | Some("0" | "false") => false,
        Some("1" | "true" | "") => true,
        Some(other) => return Err(format!("attention `{other}`: expected 1 or 0")),
    };
    Ok((topk, attention))
}

/// The image bytes and a name for them: the raw body, or the first file part of a multipart
/// body.
async fn image_bytes(state: &Arc<AppState>, request: Request) -> Result<(String, Bytes), Response> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let rejected = |status: StatusCode, text: String| error(status, text);
    if !multipart {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|r| rejected(r.status(), r.body_text()))?;
        return Ok(("body".into(), bytes));
    }
    let mut form = Multipart::from_request(request, state)
        .await
        .map_err(|r| rejected(r.status(), r.body_text()))?;
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let Some(name) = field.file_name().map(str::to_string) else {
                    continue;
                };
                let bytes = field
                    .bytes()
                    .await
                    .map_err(|r| rejected(r.status(), r.body_text()))?;
                return Ok((name, bytes));
            }
            Ok(None) => {
                return Err(rejected(
                    StatusCode::BAD_REQUEST,
                    "the multipart body has no file part".into(),
                ))
            }
            Err(r) => return Err(rejected(r.status(), r.body_text())),
        }
    }
}

async fn predict(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    request: Request<Body>,
) -> Response {
    let deadline = tokio::time::Instant::now() + state.timeout;
    let (topk, attention) = match parse_query(&query, state.num_classes) {
        Ok(parsed) => parsed,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let (name, bytes) = match image_bytes(&state, request).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    // Decoding is CPU work: it goes to the blocking pool, not the async workers.
    let decode_name = name.clone();
    let decoded = tokio::task::spawn_blocking(move || decode_image(&bytes, &decode_name)).await;
    let image = match decoded {
        Ok(Ok(image)) => image,
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("decoding: {e}")),
    };
    let (reply, answer) = oneshot::channel();
    let job = Job {
        image,
        name,
        topk,
        attention,
        reply,
    };
    if state.batcher.submit(job).is_err() {
        state.metrics.rejected.inc();
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is at capacity: retry shortly".into(),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    match tokio::time::timeout_at(deadline, answer).await {
        Ok(Ok(Ok(prediction))) => Json(prediction).into_response(),
        Ok(Ok(Err(e @ InferError::Image { .. }))) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Ok(Ok(Err(e))) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Ok(Err(_)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the inference thread stopped".into(),
        ),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "no answer within the request timeout of {} ms",
                state.timeout.as_millis()
            ),
        ),
    }
}
