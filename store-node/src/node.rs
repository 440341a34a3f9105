//! Running one node: open storage, recover, serve, and shut down gracefully.
//!
//! Shutdown order (on the cancellation of the token passed to [`run`]): stop accepting connections and
//! streams, let in-flight requests finish (bounded), flush storage (so `periodic` writes are durable too),
//! close the endpoint, wait briefly for clients to see the close, release the storage.

use std::sync::Arc;
use std::time::Duration;

use store_client::tls::{CLIENT_ALPN, PEER_ALPN};
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
    .map_err(|source| Error::Task {
        context: "storage open task failed".into(),
        source,
    })??;
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

    let server_config = crate::net::tls::server_config(
        &config.tls.ca_cert,
        &config.tls.cert,
        &config.tls.key,
        &[CLIENT_ALPN, PEER_ALPN],
        &config.transport,
    )?;
    // The same certificate authenticates this node when it dials its peers.
    let peer_client = store_client::tls::client_config(
        &config.tls.ca_cert,
        &config.tls.cert,
        &config.tls.key,
        PEER_ALPN,
        &config.transport,
    )
    .map_err(Error::Tls)?;
    let endpoint = bind_endpoint(&config, server_config)?;
    let local = endpoint.local_addr().map_err(|source| Error::Socket {
        addr: config.listen,
        source,
    })?;
    let peers = crate::net::peer::Peers::new(
        endpoint.clone(),
        peer_client,
        config.cluster.peer_queue,
        Duration::from_millis(config.cluster.replication.rpc_timeout_ms.max(100)),
    );
    let cluster = Arc::new(crate::cluster::Cluster::open(
        &config,
        engine.clone(),
        peers,
    )?);
    let ticker = {
        let cluster = cluster.clone();
        let shutdown = shutdown.clone();
        let every = Duration::from_millis(config.cluster.tick_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        let cluster = cluster.clone();
                        if tokio::task::spawn_blocking(move || cluster.tick()).await.is_err() {
                            tracing::error!("replication tick panicked");
                        }
                    }
                }
            }
        })
    };
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
    serve(
        endpoint.clone(),
        engine.clone(),
        cluster.clone(),
        settings,
        shutdown,
    )
    .await;
    let _ = ticker.await;
    if let Some(sweeper) = sweeper {
        let _ = sweeper.await;
    }
    tracing::info!(node = %node_id, "draining done; flushing");
    let flushed = durability.shutdown().await;
    endpoint.close(0u32.into(), b"node shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    // Dropping sled flushes and blocks: do it off the runtime threads.
    drop(cluster);
    let _ = tokio::task::spawn_blocking(move || drop(engine)).await;
    flushed?;
    tracing::info!(node = %node_id, "stopped");
    Ok(())
}

/// Binds the QUIC endpoint with a stateless-reset key (and connection-id key) derived from this node's
/// private key, so that after
/// a restart (even `kill -9`) the node answers packets of its previous incarnation's connections with a
/// stateless reset: peers and clients learn at once that the old connection is gone instead of sending
/// into it until their idle timeout.
fn bind_endpoint(
    config: &NodeConfig,
    server_config: quinn::ServerConfig,
) -> Result<quinn::Endpoint> {
    let key_bytes = std::fs::read(&config.tls.key).map_err(|source| Error::Io {
        path: config.tls.key.clone(),
        source,
    })?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"featurestore stateless reset v1\0");
    ctx.update(&key_bytes);
    let secret = ctx.finish();
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_ref());
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    // Connection ids must validate across restarts too, or the new incarnation drops the old
    // connections' packets as invalid instead of answering them with a reset.
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&secret.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let socket_error = |source| Error::Socket {
        addr: config.listen,
        source,
    };
    let socket = std::net::UdpSocket::bind(config.listen).map_err(socket_error)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| Error::Config("no async runtime for QUIC".into()))?;
    quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime)
        .map_err(socket_error)
}
