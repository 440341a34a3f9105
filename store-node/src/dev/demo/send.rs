//! Posting the demo's batches: `POST /v1/batch` over plain HTTP/1.1 to one node's HTTP listener, with the
//! dev write key as the Basic-auth user name, on one kept-alive connection per node.
//!
//! Guarantees: a failure (connect, I/O, timeout, a status other than 200) is returned as text and drops
//! the connection, so the next batch reconnects; nothing here panics on what the node sends back (the
//! answer body is read up to [`MAX_ANSWER_BYTES`]).
//!
//! Caveats: a failed batch is not retried (the demo counts it and moves on); there is no TLS (the dev
//! cluster serves plain HTTP on loopback).

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// How long one batch may take (connect, send, answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of an answer body that is read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The most characters of an error answer kept for the status line.
pub const MAX_ERROR_CHARS: usize = 120;

/// An error answer's text for the status line: ` <code>: <message>` of the node's JSON error body, else
/// the body as text, at most [`MAX_ERROR_CHARS`] characters (`…` when cut).
pub fn error_text(body: &[u8]) -> String {
    let json = serde_json::from_slice::<serde_json::Value>(body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let text = match (field("code"), field("message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ => String::from_utf8_lossy(body).trim().to_owned(),
    };
    if text.is_empty() {
        return String::new();
    }
    let mut cut: String = text.chars().take(MAX_ERROR_CHARS).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    format!(" {cut}")
}

/// What a node answered to an accepted batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Events of the batch the node refused as invalid (`refused` of the answer).
    pub refused: u64,
}

/// One node's HTTP listener and the open connection to it, if any.
pub struct Poster {
    addr: SocketAddr,
    authorization: String,
    connection: Option<SendRequest<Full<Bytes>>>,
}

impl Poster {
    /// Posts to `addr` with `write_key`.
    pub fn new(addr: SocketAddr, write_key: &str) -> Poster {
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{write_key}:"));
        Poster {
            addr,
            authorization: format!("Basic {credentials}"),
            connection: None,
        }
    }

    /// Sends `body` (a JSON batch) to `/v1/batch`; `Err` describes what failed.
    pub async fn post(&mut self, body: Bytes) -> Result<Accepted, String> {
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(body))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())));
        if outcome.is_err() {
            self.connection = None;
        }
        outcome
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, String> {
        let usable = self
            .connection
            .as_ref()
            .is_some_and(|c| !c.is_closed() && c.is_ready());
        if !usable {
            let tcp = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.connection = Some(sender);
        }
        self.connection
            .as_mut()
            .ok_or_else(|| "no connection".to_owned())
    }

    async fn exchange(&mut self, body: Bytes) -> Result<Accepted, String> {
        let host = format!("{}", self.addr);
        let request = hyper::Request::post("/v1/batch")
            .header(hyper::header::HOST, host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::AUTHORIZATION, &self.authorization)
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        let sender = self.connect().await?;
        sender
            .ready()
            .await
            .map_err(|e| format!("connection: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("answer body: {e}"))?
            .to_bytes();
        if status != hyper::StatusCode::OK {
            return Err(format!("HTTP {}{}", status.as_u16(), error_text(&bytes)));
        }
        let refused = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("refused").and_then(serde_json::Value::as_u64))
            .unwrap_or(0);
        Ok(Accepted { refused })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_are_shown_short() {
        assert_eq!(
            error_text(br#"{"code":"unauthorized","message":"unknown write key"}"#),
            " unauthorized: unknown write key"
        );
        assert_eq!(error_text(b"  bad gateway \n"), " bad gateway");
        assert_eq!(error_text(b""), "");
        let long = format!(
            r#"{{"code":"unavailable","message":"{}"}}"#,
            "x".repeat(500)
        );
        let shown = error_text(long.as_bytes());
        assert_eq!(shown.chars().count(), 1 + MAX_ERROR_CHARS + 1);
        assert!(shown.ends_with('…'));
    }
}
