//! The webhooks' HTTP client: keep-alive HTTP/1.1 connections, one request
//! at a time each, on hyper's connection API.
//!
//! Why not reqwest, which the rest of the generator uses: per request it
//! parses the URL, builds a header map, checks a connection out of a pool
//! behind a lock and arms its own timer. At saturation that was about a
//! third of the generator's CPU, taken from the hub on the two cores they
//! share (`BENCHMARKS.md`). Here a request is the bytes of its head and
//! body on a connection nobody else uses meanwhile; at most as many
//! connections are open as requests are in flight.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

/// One webhook endpoint: where it is, and its idle connections.
struct Endpoint {
    address: SocketAddr,
    /// `host:port`, for the `Host` header.
    authority: String,
    path: String,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

/// Connections to each endpoint; request r of a run goes to endpoint r mod
/// their number, as before.
pub struct Connections {
    endpoints: Vec<Endpoint>,
    /// Longest a request may take, connection included.
    timeout: Duration,
}

/// What went wrong with a request, as the report counts it.
#[derive(Debug)]
pub enum Failure {
    Timeout,
    Connect(String),
    Transport(String),
}

impl Failure {
    /// What the report counts: the kind, and hyper's reason.
    pub fn describe(&self) -> String {
        match self {
            Failure::Timeout => "timeout".to_owned(),
            Failure::Connect(reason) => format!("connect: {reason}"),
            Failure::Transport(reason) => format!("transport: {reason}"),
        }
    }
}

impl Connections {
    /// Connections to `urls` (`http://host:port/path`; plain HTTP only, as
    /// the hub is reached on loopback or a private network).
    pub fn new(urls: &[String], timeout: Duration) -> anyhow::Result<Self> {
        let endpoints = urls
            .iter()
            .map(|url| {
                let rest = url
                    .strip_prefix("http://")
                    .with_context(|| format!("{url}: the generator posts webhooks over http://"))?;
                let (authority, path) = match rest.find('/') {
                    Some(slash) => (&rest[..slash], &rest[slash..]),
                    None => (rest, "/"),
                };
                let address = std::net::ToSocketAddrs::to_socket_addrs(authority)
                    .with_context(|| format!("{url}: no address"))?
                    .next()
                    .with_context(|| format!("{url}: no address"))?;
                Ok(Endpoint {
                    address,
                    authority: authority.to_owned(),
                    path: path.to_owned(),
                    idle: Mutex::new(Vec::new()),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!endpoints.is_empty(), "no endpoint");
        Ok(Connections { endpoints, timeout })
    }

    /// Posts `body` with `headers` to endpoint `request mod n`; returns the
    /// status and the whole response body.
    pub async fn post(
        &self,
        request: usize,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), Failure> {
        let endpoint = &self.endpoints[request % self.endpoints.len()];
        match tokio::time::timeout(self.timeout, post(endpoint, headers, body)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout),
        }
    }
}

async fn post(
    endpoint: &Endpoint,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(u16, Bytes), Failure> {
    let idle = endpoint
        .idle
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop();
    let (mut sender, reused) = match idle {
        Some(sender) if !sender.is_closed() => (sender, true),
        _ => (connect(endpoint).await?, false),
    };
    let mut call = hyper::Request::post(endpoint.path.as_str())
        .header(hyper::header::HOST, endpoint.authority.as_str());
    for (name, value) in headers {
        call = call.header(*name, *value);
    }
    let call = call
        .body(Full::new(Bytes::from(body)))
        .map_err(|error| Failure::Transport(error.to_string()))?;
    let response = match send(&mut sender, call).await {
        Ok(response) => response,
        // The hub closed a kept-alive connection before this request went
        // out on it: nothing was sent, so it goes again on a new one.
        Err((Some(call), _)) if reused => {
            sender = connect(endpoint).await?;
            send(&mut sender, call)
                .await
                .map_err(|(_, error)| Failure::Transport(error))?
        }
        Err((_, error)) => return Err(Failure::Transport(error)),
    };
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| Failure::Transport(error.to_string()))?
        .to_bytes();
    // Read to its end: the connection takes the next request.
    endpoint
        .idle
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(sender);
    Ok((status, body))
}

/// Sends `call` on `sender`; on failure, the call back when it was not
/// sent at all, and the reason.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    call: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, (Option<hyper::Request<Full<Bytes>>>, String)> {
    if let Err(error) = sender.ready().await {
        return Err((Some(call), error.to_string()));
    }
    sender.try_send_request(call).await.map_err(|mut error| {
        let unsent = error.take_message();
        (unsent, error.into_error().to_string())
    })
}

async fn connect(endpoint: &Endpoint) -> Result<SendRequest<Full<Bytes>>, Failure> {
    let stream = tokio::net::TcpStream::connect(endpoint.address)
        .await
        .map_err(|error| Failure::Connect(error.to_string()))?;
    stream
        .set_nodelay(true)
        .map_err(|error| Failure::Connect(error.to_string()))?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| Failure::Connect(error.to_string()))?;
    // Drives the connection until the sender is dropped or the hub closes it.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_read_from_their_urls() {
        let connections = Connections::new(
            &[
                "http://127.0.0.1:8080/webhooks/whatsapp".to_owned(),
                "http://127.0.0.1:9090".to_owned(),
            ],
            Duration::from_secs(1),
        )
        .unwrap();
        let shapes: Vec<(String, String, String)> = connections
            .endpoints
            .iter()
            .map(|endpoint| {
                (
                    endpoint.address.to_string(),
                    endpoint.authority.clone(),
                    endpoint.path.clone(),
                )
            })
            .collect();
        assert_eq!(
            shapes,
            vec![
                (
                    "127.0.0.1:8080".to_owned(),
                    "127.0.0.1:8080".to_owned(),
                    "/webhooks/whatsapp".to_owned()
                ),
                (
                    "127.0.0.1:9090".to_owned(),
                    "127.0.0.1:9090".to_owned(),
                    "/".to_owned()
                ),
            ]
        );
        assert!(
            Connections::new(
                &["https://example.test/x".to_owned()],
                Duration::from_secs(1)
            )
            .is_err()
        );
    }
}
