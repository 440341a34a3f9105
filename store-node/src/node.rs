//! Running one node: open storage, recover, serve, and shut down gracefully.
//!
//! Shutdown order (on the cancellation of the token passed to [`run`]): stop accepting connections and
//! streams (QUIC and HTTP), let in-flight requests finish (bounded), flush storage (so `periodic` writes are durable too),
//! close the endpoint, wait briefly for clients to see the close, release the storage.

use std::sync::Arc;
use std::time::Duration;

use featurestore::NodeId;
use store_client::tls::{CLIENT_ALPN, PEER_ALPN};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::cluster::Cluster;
use crate::config::NodeConfig;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::launch::{NodeEvent, ReadyInfo};
use crate::metrics::Metrics;
use crate::net::peer::{PeerBatch, Peers};
use crate::server::{serve, ServeSettings};
use crate::storage::{self, Durability};

/// How long shutdown waits, after closing the endpoint, for the close to reach clients and peers
/// (`quinn::Endpoint::wait_idle`) before the storage is released and [`run`] returns.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The peer transport's connect (and send) timeout is the replication RPC timeout
/// (`cluster.replication.rpc_timeout_ms`), but never less than this.
const MIN_PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(100);

/// Runs a node with `config` until `shutdown` is cancelled. Prints the ready signal on stdout once it
/// accepts connections: `store-node <id> ready on <addr>`, then the JSON line launchers wait for (see
/// [`crate::launch`]).
pub async fn run(config: NodeConfig, shutdown: CancellationToken) -> Result<()> {
    let node_id = config.node_id.clone();
    crate::clock::set_offset_ms(config.test.clock_offset_ms);
    if config.test.clock_offset_ms != 0 {
        tracing::warn!(
            node = %node_id, offset_ms = config.test.clock_offset_ms,
            "test control: this node's clock is offset from the system clock"
        );
    }
    if let Some(path) = &config.test.clock_control_file {
        crate::clock::watch_control_file(path.clone(), shutdown.clone());
    }
    let (engine, durability, incarnation) = open_storage(&config, &node_id).await?;
    let (endpoint, peers) = open_endpoint(&config)?;
    let local = endpoint.local_addr().map_err(|source| Error::Socket {
        addr: config.listen,
        source,
    })?;
    let cluster = Arc::new(Cluster::open(&config, engine.clone(), peers)?);
    let http = start_http(&config, &engine, &cluster, &durability, &shutdown)?;
    let stall_watch = cluster.stall_guard().clone().spawn_watch(shutdown.clone());
    let ticker = spawn_ticker(
        cluster.clone(),
        Duration::from_millis(config.cluster.tick_ms),
        shutdown.clone(),
    );
    let segment_tasks = crate::cluster::segments::spawn_tasks(
        cluster.clone(),
        config.ingest.backfill_per_second,
        shutdown.clone(),
    );
    tracing::info!(node = %node_id, addr = %local, "listening");
    announce_ready(&node_id, local, http.as_ref().map(|(addr, _)| *addr));

    let sweeper = (config.expiry_sweep_ms > 0).then(|| {
        spawn_sweeper(
            engine.clone(),
            Duration::from_millis(config.expiry_sweep_ms),
            shutdown.clone(),
        )
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
    // The segment tasks write (timers, backfills): they end before the final flush.
    for task in segment_tasks {
        let _ = task.await;
    }
    let running = Running {
        node_id,
        incarnation,
        endpoint,
        engine,
        cluster,
        durability,
        ticker,
        sweeper,
        http: http.map(|(_, task)| task),
    };
    let result = running.shut_down().await;
    let _ = stall_watch.await;
    result
}

/// Binds the HTTP listener of `[http]` (if it has a `listen` address: the ingest API, `/health`,
/// `/metrics`, `/ready`) and serves it in a task until `shutdown`; returns its bound address and the task.
fn start_http(
    config: &NodeConfig,
    engine: &Arc<Engine>,
    cluster: &Arc<Cluster>,
    durability: &Durability,
    shutdown: &CancellationToken,
) -> Result<Option<(std::net::SocketAddr, JoinHandle<()>)>> {
    let Some(listener) = crate::http::bind(config)? else {
        return Ok(None);
    };
    let addr = listener.local_addr();
    tracing::info!(
        node = %config.node_id, %addr, https = listener.is_https(),
        sources = config.http.write_keys.len(), "http listening"
    );
    if config.http.write_keys.is_empty() {
        tracing::info!(
            "no [[http.write_keys]]: /health, /metrics and /ready only (ingest answers 401)"
        );
    }
    let state = crate::http::HttpState::new(
        cluster.clone(),
        engine.limits().clone(),
        config.http.clone(),
        engine.metrics().clone(),
    );
    state.set_telemetry(Arc::new(crate::telemetry::Telemetry::new(
        cluster.clone(),
        durability.flush_histograms(),
        shutdown.clone(),
    )));
    if config.http.dashboard {
        if !listener.local_addr().ip().is_loopback() {
            tracing::warn!(
                %addr,
                "the /ui dashboard shows user ids and feature values without a key, on a listener \
                 that is not on loopback"
            );
        }
        state.set_dashboard(crate::http::dashboard::Dashboard {
            pages: cluster.clone(),
            peers: config.http.dashboard_peers.clone(),
            shutdown: shutdown.clone(),
        });
    }
    let task = tokio::spawn(crate::http::serve(
        listener,
        crate::http::router(state),
        crate::http::ServeSettings::of(config),
        engine.metrics().clone(),
        shutdown.clone(),
    ));
    Ok(Some((addr, task)))
}

/// Prints the ready lines (human, then machine-readable) on stdout, in one write.
fn announce_ready(
    node_id: &NodeId,
    local: std::net::SocketAddr,
    http: Option<std::net::SocketAddr>,
) {
    let event = NodeEvent::Ready(ReadyInfo {
        node: node_id.clone(),
        addr: local,
        http,
        pid: std::process::id(),
    });
    let text = format!(
        "store-node {node_id} ready on {local}\n{}\n",
        event.to_line()
    );
    // A closed stdout must not stop the node.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
}

/// Creates the data directory, opens the storage, decides the incarnation this start runs as (recorded
/// durably before anything is applied; see `cluster::meta::begin_incarnation`), starts the durability
/// policy and recovers every stored profile into a new engine.
async fn open_storage(
    config: &NodeConfig,
    node_id: &NodeId,
) -> Result<(Arc<Engine>, Arc<Durability>, u64)> {
    let dir = config.data_dir.clone();
    let kind = config.storage;
    let cache_bytes = config.storage_cache_bytes;
    let wal = storage::WalSizes::of(&config.limits);
    let fresh = random_u64()?;
    let (store, incarnation, previous) = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let store = storage::open(kind, &dir, cache_bytes, wal)?;
        let (incarnation, previous) = crate::cluster::meta::begin_incarnation(&*store, fresh)?;
        Ok::<_, Error>((store, incarnation, previous))
    })
    .await
    .map_err(|source| Error::Task {
        context: "storage open task failed".into(),
        source,
    })??;
    let durability = Durability::start(store.clone(), config.durability)?;
    let metrics = Arc::new(Metrics::default());
    let actor = featurestore::hlc::Actor::new(node_id.clone(), incarnation);
    let continued = previous.is_some_and(|p| p.incarnation == incarnation);
    tracing::info!(
        node = %node_id, %actor, continued,
        "incarnation (a new one unless the previous run shut down cleanly)"
    );
    let (engine, recovery) = Engine::open(
        actor,
        config.limits.clone(),
        config.max_clock_skew_ms,
        store,
        durability.clone(),
        metrics,
    )?;
    tracing::info!(
        node = %node_id, entities = recovery.entities, corrupt = recovery.corrupt,
        storage = %kind, durability = %config.durability, "recovered"
    );
    Ok((Arc::new(engine), durability, incarnation))
}

/// A random 64-bit number from the operating system (a new incarnation).
fn random_u64() -> Result<u64> {
    let bytes: [u8; 8] = ring::rand::generate(&ring::rand::SystemRandom::new())
        .map_err(Error::Random)?
        .expose();
    Ok(u64::from_le_bytes(bytes))
}

/// Builds the TLS configurations (the server's, for clients and peers; and this node's as a client of its
/// peers, with the same certificate), binds the QUIC endpoint and puts the peer transport on it.
fn open_endpoint(config: &NodeConfig) -> Result<(quinn::Endpoint, Peers)> {
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
    let endpoint = bind_endpoint(config, server_config)?;
    let connect_timeout = Duration::from_millis(config.cluster.replication.rpc_timeout_ms)
        .max(MIN_PEER_CONNECT_TIMEOUT);
    let peers = Peers::new(
        endpoint.clone(),
        peer_client,
        config.cluster.peer_queue,
        connect_timeout,
        PeerBatch::of(&config.limits),
    );
    Ok((endpoint, peers))
}

/// Runs [`Cluster::tick`] (off the runtime threads) at the replication state machine's next deadline, at
/// most once per `pace`, until `shutdown` is cancelled.
fn spawn_ticker(
    cluster: Arc<Cluster>,
    pace: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // When a tick runs is decided by the core's next deadline; `pace` is the shortest interval between
        // two ticks (it also paces handoff batches).
        let pace_ms = u64::try_from(pace.as_millis()).unwrap_or(u64::MAX);
        let mut next = now_ms();
        loop {
            let wait = Duration::from_millis(next.saturating_sub(now_ms()).max(pace_ms));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {
                    let cluster = cluster.clone();
                    match tokio::task::spawn_blocking(move || cluster.tick()).await {
                        Ok(deadline) => next = deadline,
                        Err(_) => tracing::error!("replication tick panicked"),
                    }
                }
            }
        }
    })
}

/// Drops expired values ([`Engine::sweep_expired`], off the runtime threads) every `every`, first after
/// one period, until `shutdown` is cancelled.
fn spawn_sweeper(
    engine: Arc<Engine>,
    every: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
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
}

/// A node that has stopped serving (its `shutdown` token is cancelled and the server drained), with
/// everything [`Running::shut_down`] still has to stop and release.
struct Running {
    node_id: NodeId,
    incarnation: u64,
    endpoint: quinn::Endpoint,
    engine: Arc<Engine>,
    cluster: Arc<Cluster>,
    durability: Arc<Durability>,
    ticker: JoinHandle<()>,
    sweeper: Option<JoinHandle<()>>,
    http: Option<JoinHandle<()>>,
}

impl Running {
    /// The rest of the shutdown sequence: wait for the ticker and the sweeper, flush the storage, close
    /// the endpoint and wait up to [`CLOSE_WAIT`] for the close to go out, then release the storage. The
    /// flush's outcome is the result.
    async fn shut_down(self) -> Result<()> {
        let Running {
            node_id,
            incarnation,
            endpoint,
            engine,
            cluster,
            durability,
            ticker,
            sweeper,
            http,
        } = self;
        if let Some(http) = http {
            // Drains concurrently with the QUIC server (both watch the shutdown token).
            let _ = http.await;
        }
        let _ = ticker.await;
        if let Some(sweeper) = sweeper {
            let _ = sweeper.await;
        }
        tracing::info!(node = %node_id, "draining done; flushing");
        let flushed = durability.shutdown().await;
        endpoint.close(0u32.into(), b"node shutting down");
        let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
        // Nothing applies writes any more: record the clean end (so the next start continues this
        // incarnation) only if the final flush worked. Dropping sled flushes and blocks: do it off the
        // runtime threads.
        drop(cluster);
        let ended = tokio::task::spawn_blocking(move || {
            let ended = match &flushed {
                Ok(()) => crate::cluster::meta::end_incarnation(&**engine.storage(), incarnation),
                Err(_) => Ok(()),
            };
            drop(engine);
            flushed.and(ended)
        })
        .await
        .map_err(|source| Error::Task {
            context: "final storage task failed".into(),
            source,
        })?;
        ended?;
        tracing::info!(node = %node_id, "stopped");
        Ok(())
    }
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
