//! The HTTP listener: the accept loop, optional TLS (rustls), and the time limits that
//! `axum::serve` does not set.
//!
//! `axum::serve` runs hyper without a timer, so a client could hold a connection forever by
//! sending its request head or body a byte at a time (slowloris), or by opening a connection
//! and saying nothing. Here every connection has three limits, from `[http]` in the config:
//! - the TLS handshake must finish within `header_timeout`;
//! - the request head (line and headers) must arrive within `header_timeout` of the connection
//!   being ready for it — also the longest a kept-alive connection may sit idle (hyper's
//!   `header_read_timeout`, which needs the tokio timer given here);
//! - the body must arrive whole within `body_timeout` of the head ([`DeadlineBody`]); a late
//!   body is answered `408 {"message": "request body timed out"}` and the connection closed.
//!
//! The request head has palmgate's own size limits ([`head_too_large`]: target 8 KiB, header
//! section 32 KiB, 100 fields), answered `414`/`431` as JSON by the routes (with the rate-limit
//! headers under `/v1`). hyper's own limits are raised well above them (`HYPER_MAX_HEADERS`,
//! `HYPER_MAX_HEAD_BYTES`; its request-target cap is a fixed 65534 bytes), so only a head
//! beyond those still gets hyper's bare `414`/`431` with no body.
//!
//! Invariants: a connection that makes no progress is closed within its limit, whatever the
//! other connections do; handlers see the client's address as `ConnectInfo<SocketAddr>`, as
//! with `axum::serve`; graceful shutdown stops accepting, lets requests in flight finish, and
//! returns once every connection has closed or after 10 s (an open event stream never ends
//! by itself; the tasks still serving are dropped with the runtime).

use super::error::ApiError;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, OriginalUri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// How long shutdown waits for connections to finish (a live event stream never does).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The longest request target (path and query, or the whole absolute-form URI) palmgate takes;
/// longer is `414 {"message": "request URI too long (limit 8192 bytes)"}`.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
/// The largest header section (every field as `name: value\r\n`) palmgate takes; larger is 431.
pub const MAX_HEADER_SECTION_BYTES: usize = 32 * 1024;
/// The most header fields (a repeated name counts each time) palmgate takes; more is 431.
pub const MAX_HEADER_FIELDS: usize = 100;
/// hyper's cap on header fields (its default is 100, which would answer a bare 431 before
/// palmgate could answer its JSON one); also its cap on a chunked body's trailer fields. Once
/// set, hyper allocates its two field arrays per request (2 × 8 KiB here) instead of keeping
/// them on the stack, which its documentation puts at ~5 % of its pipelined benchmark.
const HYPER_MAX_HEADERS: usize = 256;
/// hyper's cap on the whole head, request line included (unset, its ~400 KiB read buffer was
/// the cap); also its cap on a chunked body's trailers (16 KiB unset).
const HYPER_MAX_HEAD_BYTES: usize = 128 * 1024;

const _: () = assert!(HYPER_MAX_HEADERS > 2 * MAX_HEADER_FIELDS);
const _: () = assert!(HYPER_MAX_HEAD_BYTES > 2 * (MAX_TARGET_BYTES + MAX_HEADER_SECTION_BYTES));

/// The 414 or 431 a request's head earns under palmgate's limits, if any.
///
/// Inside a nested router the URI has lost its prefix, so the target is measured on the
/// [`OriginalUri`] when there is one.
pub fn head_too_large<B>(req: &hyper::Request<B>) -> Option<ApiError> {
    let uri = req
        .extensions()
        .get::<OriginalUri>()
        .map_or(req.uri(), |o| &o.0);
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_TARGET_BYTES {
        return Some(ApiError::UriTooLong {
            limit: MAX_TARGET_BYTES,
        });
    }
    let headers = req.headers();
    if headers.len() > MAX_HEADER_FIELDS {
        return Some(ApiError::HeadersTooLarge(format!(
            "too many request header fields: {} (limit {MAX_HEADER_FIELDS})",
            headers.len()
        )));
    }
    let section: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if section > MAX_HEADER_SECTION_BYTES {
        return Some(ApiError::HeadersTooLarge(format!(
            "request header section too large (limit {MAX_HEADER_SECTION_BYTES} bytes)"
        )));
    }
    None
}

/// The limits of every connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// TLS handshake, request head, and idle keep-alive.
    pub header: Duration,
    /// The whole body, from the end of the head.
    pub body: Duration,
}

/// The error a body reports once its deadline has passed ([`crate::http::body`] answers 408).
#[derive(Debug, thiserror::Error)]
#[error("request body timed out")]
pub struct BodyTimedOut;

/// True when `err` (or anything in its source chain) is a [`BodyTimedOut`].
pub fn is_body_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut e = Some(err);
    while let Some(x) = e {
        if x.is::<BodyTimedOut>() {
            return true;
        }
        e = x.source();
    }
    false
}

/// A request body that fails with [`BodyTimedOut`] when it is not whole by its deadline.
pub struct DeadlineBody<B> {
    inner: B,
    deadline: Instant,
    /// Armed the first time the body is not ready (most bodies never need a timer).
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
}

impl<B> DeadlineBody<B> {
    pub fn new(inner: B, limit: Duration) -> Self {
        DeadlineBody {
            inner,
            deadline: Instant::now() + limit,
            sleep: None,
            timed_out: false,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = &mut *self;
        if this.timed_out {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.timed_out = true;
                Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Loads `http.tls` into a rustls server configuration (HTTP/1.1 over TLS 1.2 or 1.3, the
/// aws-lc-rs provider named explicitly, so a second provider in the tree cannot make rustls
/// panic at start-up).
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("http.tls.cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "http.tls.cert {}: no PEM certificate",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("http.tls.key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("http.tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("http.tls: the certificate and key do not make a pair: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` on `listener` (TLS when `tls` is given) until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    // `stop` tells connections to finish their request and close; every connection holds a
    // `done` receiver, so `closed()` on the sender resolves once they are all gone.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let acceptor = acceptor.clone();
        let stop = stop_rx.clone();
        let done = done_rx.clone();
        tokio::spawn(async move {
            match acceptor {
                None => connection(tcp, remote, router, limits, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => connection(tls, remote, router, limits, stop).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                }
            }
            drop(done);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_rx);
    if tokio::time::timeout(SHUTDOWN_GRACE, done_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            open = done_tx.receiver_count(),
            "connections still open after the shutdown grace period; closing them"
        );
    }
    Ok(())
}

/// Serves one connection until it closes (or, after `stop`, once its request in flight is done).
async fn connection<IO>(
    io: IO,
    remote: SocketAddr,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut req = req.map(|b| axum::body::Body::new(DeadlineBody::new(b, limits.body)));
        req.extensions_mut().insert(ConnectInfo(remote));
        router.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header)
        .max_headers(HYPER_MAX_HEADERS)
        .max_header_size(HYPER_MAX_HEAD_BYTES);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "connection ended");
            }
            return;
        }
        _ = stop.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(%remote, error = %e, "connection ended during shutdown");
    }
}

/// An accept error: a vanished peer is nothing; anything else (e.g. out of file descriptors)
/// is logged and waited out, as `axum::serve` does.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
