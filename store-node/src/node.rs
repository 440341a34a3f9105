//! Running one node: open storage, recover, serve, and shut down gracefully.
//!
//! Shutdown order (on the cancellation of the token passed to [`run`]): stop accepting connections and
//! streams, let in-flight requests finish (bounded), flush storage (so `periodic` writes are durable too),
//! close the endpoint, wait briefly for clients to see the close, release the storage.

use std::sync::Arc;
use std::time::Duration;

use store_client::tls::CLIENT_ALPN;
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::engine::{now_ms, Engine};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::server::{serve, ServeSettings};
use crate::storage::{self, Durability};

/// Runs a node with `config` until `shutdown` is cancelled. Prints `store-node <id> ready on <addr>` on
/// stdout once it accepts connections (tests and the dev cluster wait for that line).
pub async fn run(config: NodeConfig, shutdown: CancellationToken) -> Result<()> {
    let node_id = config.node_id()?;
    let dir = config.data_dir.clone();
    let kind = config.storage;
    let store = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        storage::open(kind, &dir)
    })
    .await
    .map_err(|e| Error::Storage(format!("storage open task failed: {e}")))??;
    let durability = Durability::start(store.clone(), config.durability)?;
    let metrics = Arc::new(Metrics::default());
    let (engine, recovery) = Engine::open(
        node_id.clone(),
        config.limits.clone(),
        config.max_clock_skew_ms,
        store,
        durability.clone(),
        metrics,
    )?;
    let engine = Arc::new(engine);
    tracing::info!(
        node = %node_id, entities = recovery.entities, corrupt = recovery.corrupt,
        storage = %kind, durability = %config.durability, "recovered"
    );

    let server_config = crate::tls::server_config(
        &config.tls.ca_cert,
        &config.tls.cert,
        &config.tls.key,
        &[CLIENT_ALPN],
        &config.transport,
    )?;
    let endpoint =
        quinn::Endpoint::server(server_config, config.listen).map_err(|source| Error::Io {
            path: format!("udp://{}", config.listen).into(),
            source,
        })?;
    let local = endpoint.local_addr().map_err(|source| Error::Io {
        path: "udp socket".into(),
        source,
    })?;
    tracing::info!(node = %node_id, addr = %local, "listening");
    println!("store-node {node_id} ready on {local}");

    let sweeper = (config.expiry_sweep_ms > 0).then(|| {
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        let every = Duration::from_millis(config.expiry_sweep_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        let engine = engine.clone();
                        let swept = tokio::task::spawn_blocking(move || engine.sweep_expired(now_ms())).await;
                        if let Ok(n) = swept {
                            if n > 0 {
                                tracing::debug!(entities = n, "expired values dropped");
                            }
                        }
                    }
                }
            }
        })
    });

    let settings = ServeSettings {
        max_frame_bytes: config.limits.max_frame_bytes,
        request_timeout: Duration::from_millis(config.request_timeout_ms),
        drain_timeout: Duration::from_millis(config.drain_timeout_ms),
    };
    serve(endpoint.clone(), engine.clone(), settings, shutdown).await;
    if let Some(sweeper) = sweeper {
        let _ = sweeper.await;
    }
    tracing::info!(node = %node_id, "draining done; flushing");
    let flushed = durability.shutdown().await;
    endpoint.close(0u32.into(), b"node shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    // Dropping sled flushes and blocks: do it off the runtime threads.
    let _ = tokio::task::spawn_blocking(move || drop(engine)).await;
    flushed?;
    tracing::info!(node = %node_id, "stopped");
    Ok(())
}
