//! The optional metrics endpoint (`--metrics-addr`, `S3VOL_METRICS_ADDR`): `GET /metrics` in the
//! Prometheus text format, on a TCP address of the user's choosing (bind it to 127.0.0.1 unless
//! a scraper elsewhere needs it).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use common::metrics::metrics;

/// Called before each scrape to set gauges that mirror a size (cache bytes).
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// Bind `addr` now (so a bad address fails the start) and serve metrics in the background.
pub async fn start(addr: SocketAddr, refresh: Refresh) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let refresh = refresh.clone();
            async move {
                refresh();
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics().encode(),
                )
                    .into_response()
            }
        }),
    );
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the metrics endpoint stopped: {e}");
        }
    });
    Ok(())
}
