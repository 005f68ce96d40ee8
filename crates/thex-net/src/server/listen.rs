//! The accept loop: a cap on open connections, a deadline for each request's headers, and
//! graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};

/// How connections are accepted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenLimits {
    /// Most open connections; more are closed at once.
    pub max_connections: usize,
    /// Time for a request's headers (and a TLS handshake) to arrive, idle keep-alive
    /// connections included.
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` fires, then lets open requests finish (at
/// most 10 s). `refused` counts connections closed for the connection cap.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    refused: Arc<AtomicU64>,
    mut shutdown: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closed) = watch::channel(false);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(target: "thex_net::request", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let (app, tls, closed) = (app.clone(), tls.clone(), closed.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => connection(stream, app, limits, closed).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(limits.header_timeout, handshake).await {
                        Ok(Ok(stream)) => connection(stream, app, limits, closed).await,
                        Ok(Err(e)) => tracing::debug!(
                            target: "thex_net::request", error = %e, "TLS handshake failed"
                        ),
                        Err(_) => tracing::debug!(
                            target: "thex_net::request", "TLS handshake timed out"
                        ),
                    }
                }
            }
        });
    }
    let _ = closing.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(10), slots.acquire_many(all)).await;
    Ok(())
}

/// Serves HTTP/1.1 on one connection until it closes or the server shuts down.
async fn connection<S>(
    stream: S,
    app: Router,
    limits: ListenLimits,
    mut closed: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = closed.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
