//! The transport floor: a bare `quinn` server and client that echo featurestore-sized payloads.
//!
//! It is set up like a featurestore node and client: TLS 1.3 with mutual authentication against the same
//! cluster CA (the node's certificate on the server, the client's on the client), the same QUIC transport
//! limits, one connection, one bidirectional stream per request. The server does nothing but read the
//! whole request and answer with as many bytes as the request asks for, so the difference between
//! featurestore and this floor is the cost of the node's own work (decode, engine, encode) plus the
//! client library.
//!
//! Wire format of the echo: the request's first 4 bytes are the big-endian length of the wanted answer
//! (at most [`MAX_ECHO_BYTES`]); the rest is padding up to the request size being imitated. The answer is
//! that many zero bytes, then the stream is finished.
//!
//! Session mode (for measuring the alternative to a stream per request): a stream that starts with
//! [`SESSION_MAGIC`] stays open and carries any number of `[u32 length][request]` frames, each answered
//! with `[u32 length][answer]` on the same stream ([`EchoSession`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use rustls::server::WebPkiClientVerifier;
use store_client::tls::TransportLimits;
use store_client::tls::{client_config, load_certs, load_key, provider, root_store};

use crate::error::{Error, Result};

/// ALPN protocol of the echo server (distinct from featurestore's, so the two can never be confused).
pub const ECHO_ALPN: &[u8] = b"featurestore-echo/1";

/// Largest request or answer the echo handles (16 MiB, featurestore's frame ceiling).
pub const MAX_ECHO_BYTES: usize = 16 * 1024 * 1024;

/// The first 4 bytes of a session-mode stream.
pub const SESSION_MAGIC: [u8; 4] = [0xff, 0xff, 0xff, 0xff];

/// The TLS server name of the echo server: it presents node `n1`'s certificate.
pub const ECHO_SERVER_NAME: &str = "n1.node.featurestore";

/// Builds an echo request of `request_len` bytes (at least 4) asking for `answer_len` bytes.
pub fn echo_request(request_len: usize, answer_len: usize) -> Result<Vec<u8>> {
    let answer = u32::try_from(answer_len)
        .ok()
        .filter(|&a| a as usize <= MAX_ECHO_BYTES)
        .ok_or_else(|| Error::Setup(format!("echo answer of {answer_len} bytes is too large")))?;
    if request_len > MAX_ECHO_BYTES {
        return Err(Error::Setup(format!(
            "echo request of {request_len} bytes is too large"
        )));
    }
    let mut buf = vec![0u8; request_len.max(4)];
    buf[..4].copy_from_slice(&answer.to_be_bytes());
    Ok(buf)
}

/// The server side: node `n1`'s certificate from `certs` (as written by `store-node certs`), client
/// certificates verified against `certs/ca.pem`, featurestore's default transport limits.
pub fn server_config(certs: &Path) -> Result<quinn::ServerConfig> {
    let tls_err = |e: &dyn std::fmt::Display| Error::Setup(format!("echo server TLS: {e}"));
    let provider = provider();
    let roots = Arc::new(root_store(&certs.join("ca.pem")).map_err(|e| tls_err(&e))?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| tls_err(&e))?;
    let chain = load_certs(&certs.join("node-n1.pem")).map_err(|e| tls_err(&e))?;
    let key = load_key(&certs.join("node-n1.key")).map_err(|e| tls_err(&e))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls_err(&e))?;
    tls.alpn_protocols = vec![ECHO_ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| tls_err(&e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(TransportLimits::default().to_quinn()));
    config.migration(false);
    Ok(config)
}

/// Runs the echo server on `listen` until the process is stopped. Calls `ready` with the bound address
/// once it accepts connections.
pub async fn serve(certs: &Path, listen: SocketAddr, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let endpoint = quinn::Endpoint::server(server_config(certs)?, listen).map_err(Error::io(
        "binding the echo server",
        format!("udp://{listen}"),
    ))?;
    let local = endpoint
        .local_addr()
        .map_err(Error::io("echo server address", "udp socket"))?;
    ready(local);
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else {
                return;
            };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(echo_stream(send, recv));
            }
        });
    }
    Ok(())
}

fn answer_len(request: &[u8]) -> usize {
    request
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, |b| u32::from_be_bytes(b) as usize)
        .min(MAX_ECHO_BYTES)
}

/// Session mode: frames until the client finishes the stream.
async fn echo_session(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut len = [0u8; 4];
    while recv.read_exact(&mut len).await.is_ok() {
        let n = (u32::from_be_bytes(len) as usize).min(MAX_ECHO_BYTES);
        let mut request = vec![0u8; n];
        if recv.read_exact(&mut request).await.is_err() {
            return;
        }
        let answer = answer_len(&request);
        let mut reply = vec![0u8; 4 + answer];
        reply[..4].copy_from_slice(&(answer as u32).to_be_bytes());
        if send.write_all(&reply).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

async fn echo_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut head = [0u8; 4];
    if recv.read_exact(&mut head).await.is_err() {
        return;
    }
    if head == SESSION_MAGIC {
        return echo_session(send, recv).await;
    }
    let Ok(rest) = recv.read_to_end(MAX_ECHO_BYTES).await else {
        return;
    };
    let mut request = head.to_vec();
    request.extend_from_slice(&rest);
    let reply = vec![0u8; answer_len(&request)];
    if send.write_all(&reply).await.is_ok() {
        let _ = send.finish();
    }
}

/// The client side: one connection, one stream per call.
#[derive(Debug, Clone)]
pub struct EchoClient {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl EchoClient {
    /// Connects to the echo server at `addr` with client `app`'s certificate from `certs`.
    pub async fn connect(certs: &Path, addr: SocketAddr) -> Result<EchoClient> {
        let config = client_config(
            &certs.join("ca.pem"),
            &certs.join("client-app.pem"),
            &certs.join("client-app.key"),
            ECHO_ALPN,
            &TransportLimits::default(),
        )
        .map_err(|e| Error::Setup(format!("echo client TLS: {e}")))?;
        let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(Error::io("binding the echo client", "udp://127.0.0.1:0"))?;
        endpoint.set_default_client_config(config);
        let conn = endpoint
            .connect(addr, ECHO_SERVER_NAME)
            .map_err(|e| Error::Transport(e.to_string()))?
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(EchoClient {
            conn,
            _endpoint: endpoint,
        })
    }

    /// Sends `request` (built by [`echo_request`]) on a fresh stream and reads the whole answer; returns
    /// its length.
    pub async fn call(&self, request: &[u8]) -> Result<usize> {
        let (mut send, mut recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| Error::Transport(format!("opening a stream: {e}")))?;
        send.write_all(request)
            .await
            .map_err(|e| Error::Transport(format!("sending: {e}")))?;
        let _ = send.finish();
        let answer = recv
            .read_to_end(MAX_ECHO_BYTES)
            .await
            .map_err(|e| Error::Transport(format!("receiving: {e}")))?;
        Ok(answer.len())
    }

    /// Opens a session: one long-lived stream for many requests.
    pub async fn session(&self) -> Result<EchoSession> {
        let (mut send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| Error::Transport(format!("opening a stream: {e}")))?;
        send.write_all(&SESSION_MAGIC)
            .await
            .map_err(|e| Error::Transport(format!("sending: {e}")))?;
        Ok(EchoSession {
            streams: std::sync::Arc::new(tokio::sync::Mutex::new((send, recv))),
        })
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"done");
    }
}

/// One long-lived echo stream carrying length-prefixed frames; calls are serialised on it.
#[derive(Debug, Clone)]
pub struct EchoSession {
    streams: std::sync::Arc<tokio::sync::Mutex<(quinn::SendStream, quinn::RecvStream)>>,
}

impl EchoSession {
    /// Sends `request` as one frame and reads the answer frame; returns the answer's length.
    pub async fn call(&self, request: &[u8]) -> Result<usize> {
        let mut guard = self.streams.lock().await;
        let (send, recv) = &mut *guard;
        let mut frame = Vec::with_capacity(4 + request.len());
        frame.extend_from_slice(&(request.len() as u32).to_be_bytes());
        frame.extend_from_slice(request);
        send.write_all(&frame)
            .await
            .map_err(|e| Error::Transport(format!("sending: {e}")))?;
        let mut len = [0u8; 4];
        recv.read_exact(&mut len)
            .await
            .map_err(|e| Error::Transport(format!("receiving: {e}")))?;
        let n = (u32::from_be_bytes(len) as usize).min(MAX_ECHO_BYTES);
        let mut answer = vec![0u8; n];
        recv.read_exact(&mut answer)
            .await
            .map_err(|e| Error::Transport(format!("receiving: {e}")))?;
        Ok(n)
    }
}
