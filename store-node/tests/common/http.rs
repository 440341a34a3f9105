//! A minimal HTTP/1.1 client for the HTTP listener's tests: one request per connection, over plain TCP
//! or HTTPS trusting the cluster CA (server name `localhost`, which node certificates carry).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How to reach a listener.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `Some`: HTTPS with this client configuration.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    /// Plain HTTP to `addr`.
    pub fn plain(addr: SocketAddr) -> Target {
        Target { addr, tls: None }
    }

    /// HTTPS to `addr`, trusting only the CA certificate at `ca`.
    pub fn https(addr: SocketAddr, ca: &Path) -> Target {
        let roots = store_client::tls::root_store(ca).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(store_client::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Target {
            addr,
            tls: Some(Arc::new(config)),
        }
    }
}

/// An answer: status, `Retry-After`, and the body as JSON (`Null` if it is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub body: Json,
    /// The body as text (lossy UTF-8).
    pub text: String,
}

/// The `Authorization` value SDKs send for `key`.
pub fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

async fn exchange<S>(io: S, request: Request<Full<Bytes>>) -> Result<Reply, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &hyper::header::HeaderValue| v.to_str().unwrap().to_owned())
    };
    let retry_after = header(hyper::header::RETRY_AFTER);
    let content_type = header(hyper::header::CONTENT_TYPE);
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Json::Null);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok(Reply {
        text,
        status,
        retry_after,
        content_type,
        body,
    })
}

/// Sends `method path` with `headers` and `body` (30 s at most); `Err` if the exchange fails.
pub async fn request(
    target: &Target,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<Reply, String> {
    let mut builder = Request::builder().method(method).uri(path).header(
        hyper::header::HOST,
        format!("localhost:{}", target.addr.port()),
    );
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    let request = builder.body(Full::new(Bytes::from(body))).unwrap();
    let work = async {
        let tcp = TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match &target.tls {
            None => exchange(tcp, request).await,
            Some(config) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("tls: {e}"))?;
                exchange(tls, request).await
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// POSTs `body` (JSON text) to `path` with the write key `key` as Basic auth (none if `None`),
/// gzip-compressed if `gzipped`. Panics if the exchange fails.
pub async fn post(
    target: &Target,
    path: &str,
    key: Option<&str>,
    body: &[u8],
    gzipped: bool,
) -> Reply {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let Some(key) = key {
        headers.push(("authorization", basic(key)));
    }
    let body = if gzipped {
        headers.push(("content-encoding", "gzip".to_owned()));
        gzip(body)
    } else {
        body.to_vec()
    };
    request(target, "POST", path, &headers, body)
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// One server-sent event: its `event`, `id` and `data` fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// An open `text/event-stream` response, read event by event.
pub struct SseStream {
    body: hyper::body::Incoming,
    buffer: String,
    pub content_type: Option<String>,
    pub allow_origin: Option<String>,
}

impl SseStream {
    /// `GET path` on plain HTTP `addr` with `headers` (e.g. `Last-Event-ID`); panics unless 200.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, String)]) -> SseStream {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut builder = Request::builder()
            .uri(path)
            .header(hyper::header::HOST, format!("localhost:{}", addr.port()))
            .header(hyper::header::ACCEPT, "text/event-stream");
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let response = sender
            .send_request(builder.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &hyper::header::HeaderValue| v.to_str().unwrap().to_owned())
        };
        let content_type = header(hyper::header::CONTENT_TYPE);
        let allow_origin = header(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN);
        SseStream {
            body: response.into_body(),
            buffer: String::new(),
            content_type,
            allow_origin,
        }
    }

    /// The next event (comments skipped), or `None` if the stream ends or `limit` passes first.
    pub async fn next(&mut self, limit: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                let mut any = false;
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => event.event = value.to_owned(),
                        "id" => event.id = Some(value.to_owned()),
                        "data" => {
                            if any {
                                event.data.push('\n');
                            }
                            event.data.push_str(value);
                            any = true;
                        }
                        _ => {}
                    }
                }
                if !event.event.is_empty() || any {
                    return Some(event);
                }
                continue;
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()??;
            if let Ok(data) = frame.ok()?.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
}
