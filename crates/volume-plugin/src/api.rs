//! Docker's volume plugin protocol over HTTP (axum).
//!
//! Wire facts (research/docker-plugin-anchors.md): every call is a `POST /<Method>` whose body
//! is JSON *without* a `Content-Type` header (so bodies are read as bytes, not with axum's
//! `Json` extractor), empty for `/Plugin.Activate`; fields are PascalCase; `Opts` may be null;
//! `CreatedAt` is RFC 3339 or absent; errors are `{"Err": "..."}`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::manager::{VolumeInfo, VolumeManager};
use crate::mounter::Mounter;

/// The media type Docker's plugin helpers answer with.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.1+json";

/// Every call answers within this, with an error if need be: Docker's client gives a managed
/// plugin 30 s per call (its HTTP client's timeout, `docker plugin enable --timeout`, default
/// 30; the volume proxy's own per-call limits of 1 and 2 minutes are longer, so this one
/// decides), and a call that never answers blocks `docker` commands.
const CALL_DEADLINE: Duration = Duration::from_secs(28);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateRequest {
    name: String,
    #[serde(default)]
    opts: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NameRequest {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MountRequest {
    name: String,
    #[serde(rename = "ID", default)]
    id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Volume {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    mountpoint: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    created_at: String,
    #[serde(skip_serializing_if = "Map::is_empty")]
    status: Map<String, Value>,
}

impl From<VolumeInfo> for Volume {
    fn from(info: VolumeInfo) -> Self {
        Self {
            name: info.name,
            mountpoint: info.mountpoint.map(|p| p.display().to_string()),
            created_at: info.created_at,
            status: info.status,
        }
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    reply(status, json!({ "Err": message.into() }))
}

/// A request body as Docker sends it: JSON without a `Content-Type` header, where an empty
/// body counts as `{}`. A body that does not decode is answered with 400 and an `Err`.
struct DockerJson<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for DockerJson<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let call = request.uri().path().trim_start_matches('/').to_string();
        let body = Bytes::from_request(request, state).await.map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("unreadable {call} request: {e}"),
            )
        })?;
        let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &body
        };
        serde_json::from_slice(body).map(DockerJson).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("malformed {call} request: {e}"),
            )
        })
    }
}

/// Run a call within the deadline and turn its result into a reply.
async fn answer<T>(
    call: &str,
    work: impl Future<Output = Result<T, String>>,
    to_json: impl FnOnce(T) -> Value,
) -> Response {
    match tokio::time::timeout(CALL_DEADLINE, work).await {
        Ok(Ok(value)) => reply(StatusCode::OK, to_json(value)),
        Ok(Err(message)) => {
            tracing::warn!(call, "{message}");
            error(StatusCode::INTERNAL_SERVER_ERROR, message)
        }
        Err(_) => {
            let message = format!(
                "{call} did not finish within {} s; the object store may be slow or unreachable (see the plugin's log)",
                CALL_DEADLINE.as_secs()
            );
            tracing::error!(call, "{message}");
            error(StatusCode::INTERNAL_SERVER_ERROR, message)
        }
    }
}

type Manager<M> = State<Arc<VolumeManager<M>>>;

/// The plugin's HTTP API.
pub fn router<M: Mounter>(manager: Arc<VolumeManager<M>>) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/VolumeDriver.Capabilities", post(capabilities))
        .route("/VolumeDriver.Create", post(create::<M>))
        .route("/VolumeDriver.Remove", post(remove::<M>))
        .route("/VolumeDriver.Mount", post(mount::<M>))
        .route("/VolumeDriver.Unmount", post(unmount::<M>))
        .route("/VolumeDriver.Path", post(path::<M>))
        .route("/VolumeDriver.Get", post(get::<M>))
        .route("/VolumeDriver.List", post(list::<M>))
        .fallback(unknown)
        .with_state(manager)
}

async fn activate() -> Response {
    reply(StatusCode::OK, json!({ "Implements": ["VolumeDriver"] }))
}

async fn capabilities() -> Response {
    // Global: the data lives in shared object storage, so a cluster creates a volume once.
    reply(
        StatusCode::OK,
        json!({ "Capabilities": { "Scope": "global" } }),
    )
}

async fn unknown(uri: Uri) -> Response {
    let path: String = uri.path().chars().take(100).collect();
    error(
        StatusCode::NOT_FOUND,
        format!("unknown endpoint {path}: this is s3vol, a Docker volume plugin (VolumeDriver.*)"),
    )
}

async fn create<M: Mounter>(
    State(m): Manager<M>,
    DockerJson(req): DockerJson<CreateRequest>,
) -> Response {
    tracing::info!(volume = %req.name, "Create");
    let options = req.opts.unwrap_or_default();
    answer("Create", m.create(&req.name, &options), |()| json!({})).await
}

async fn remove<M: Mounter>(
    State(m): Manager<M>,
    DockerJson(req): DockerJson<NameRequest>,
) -> Response {
    tracing::info!(volume = %req.name, "Remove");
    answer("Remove", m.remove(&req.name), |()| json!({})).await
}

async fn mount<M: Mounter>(
    State(m): Manager<M>,
    DockerJson(req): DockerJson<MountRequest>,
) -> Response {
    tracing::info!(volume = %req.name, id = %req.id, "Mount");
    answer(
        "Mount",
        m.mount(&req.name, &req.id),
        |path| json!({ "Mountpoint": path.display().to_string() }),
    )
    .await
}

async fn unmount<M: Mounter>(
    State(m): Manager<M>,
    DockerJson(req): DockerJson<MountRequest>,
) -> Response {
    tracing::info!(volume = %req.name, id = %req.id, "Unmount");
    answer("Unmount", m.unmount(&req.name, &req.id), |()| json!({})).await
}

async fn path<M: Mounter>(
    State(m): Manager<M>,
    DockerJson(req): DockerJson<NameRequest>,
) -> Response {
    answer("Path", async { m.path(&req.name) }, |path| match path {
        Some(p) => json!({ "Mountpoint": p.display().to_string() }),
        None => json!({}),
    })
    .await
}

async fn get<M: Mounter>(
    State(m): Manager<M>,
    DockerJson(req): DockerJson<NameRequest>,
) -> Response {
    answer(
        "Get",
        async { m.get(&req.name) },
        |info| json!({ "Volume": Volume::from(info) }),
    )
    .await
}

async fn list<M: Mounter>(State(m): Manager<M>) -> Response {
    let volumes: Vec<Volume> = m.list().into_iter().map(Volume::from).collect();
    reply(StatusCode::OK, json!({ "Volumes": volumes }))
}
