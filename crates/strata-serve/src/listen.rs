//! The network side: the TCP listener, TLS (rustls), the Basic-auth gate in
//! front of every request, HTTP/1.1 connections handed to dav-server, and
//! a graceful stop (no new connections; requests in flight finish, up to a
//! deadline).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use dav_server::body::Body;
use dav_server::DavHandler;
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::auth::Htpasswd;

/// A rustls server configuration from PEM files.
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            anyhow!(
                "cannot read the TLS certificate {}: {e} (a PEM file is expected)",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "the TLS certificate file {} holds no certificate (a PEM file is expected)",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        anyhow!(
            "cannot read the TLS key {}: {e} (an unencrypted PEM private key is expected)",
            key.display()
        )
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the TLS key does not fit the certificate {} (or is of an unsupported kind)",
                cert.display()
            )
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// What every connection shares.
#[derive(Clone)]
pub struct Service {
    pub dav: DavHandler,
    pub auth: Option<Arc<Htpasswd>>,
}

fn unauthorized() -> Response<Body> {
    let mut r = Response::new(Body::from("authentication required\n"));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Strata\", charset=\"UTF-8\""),
    );
    r
}

impl Service {
    async fn handle(self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        if let Some(auth) = &self.auth {
            let header = req
                .headers()
                .get(AUTHORIZATION)
                .map(|v| v.as_bytes().to_vec());
            let ok = match header {
                None => false,
                // bcrypt takes tens of milliseconds: not on a worker thread
                Some(h) => {
                    let auth = auth.clone();
                    tokio::task::spawn_blocking(move || auth.check_header(&h))
                        .await
                        .unwrap_or(false)
                }
            };
            if !ok {
                debug!(method = %req.method(), uri = %req.uri(), "401");
                return unauthorized();
            }
        }
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let res = self.dav.handle(req).await;
        debug!(%method, %uri, status = %res.status(), "request");
        res
    }
}

/// A running listener; [`Server::stop`] ends it.
pub struct Server {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Bind `addr` and serve in the background.
    pub async fn start(
        addr: SocketAddr,
        tls: Option<Arc<ServerConfig>>,
        svc: Service,
    ) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (is another server using that port? choose another with --listen)")
        })?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            listener,
            tls.map(TlsAcceptor::from),
            svc,
            stopped,
        ));
        Ok(Server { addr, stop, task })
    }

    /// Stop accepting; let requests in flight finish for up to `grace`.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            warn!("requests still running after {grace:?}; cutting them off");
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    svc: Service,
    mut stopped: watch::Receiver<bool>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // e.g. out of descriptors: wait a little instead of spinning
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        let _ = tcp.set_nodelay(true);
        let (svc, tls, stopped) = (svc.clone(), tls.clone(), stopped.clone());
        conns.spawn(async move {
            match tls {
                None => serve_conn(TokioIo::new(tcp), svc, stopped).await,
                Some(acc) => match acc.accept(tcp).await {
                    Ok(s) => serve_conn(TokioIo::new(s), svc, stopped).await,
                    Err(e) => debug!(%peer, error = %e, "TLS handshake failed"),
                },
            }
        });
        // reap finished connections
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

async fn serve_conn<I>(io: TokioIo<I>, svc: Service, mut stopped: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let svc = svc.clone();
        async move { Ok::<_, Infallible>(svc.handle(req).await) }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = stopped.changed() => {}
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        debug!(error = %e, "connection ended with an error");
    }
}
