//! Serving: gRPC with health, reflection, auth and limits; HTTP for pages;
//! graceful shutdown.
//!
//! [`Shutdown`] is the one mechanism that stops a process: a watch channel
//! flipped by SIGTERM, Ctrl-C or a test. On shutdown the gRPC server first
//! reports NOT_SERVING for every service, waits `drain_delay` so that load
//! balancers stop routing to it, then stops accepting connections and lets
//! in-flight requests finish.

use std::convert::Infallible;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::auth::{AuthLayer, TokenVerifier};
use crate::config::GrpcConfig;
use crate::telemetry::GrpcTraceLayer;

/// Tells a running server to stop.
#[derive(Clone)]
pub struct ShutdownTrigger(Arc<watch::Sender<bool>>);

/// Waits for the trigger; clone it for every task that must stop.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(Arc::new(tx)), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }

    /// Triggers on SIGTERM or Ctrl-C.
    pub fn trigger_on_signals(self) {
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            self.trigger();
        });
    }
}

impl Shutdown {
    /// Resolves once shutdown has been triggered (or the trigger is gone).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// The gRPC services one server hosts, and the methods that need no token.
#[derive(Default)]
pub struct GrpcServices {
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    public_methods: Vec<String>,
}

impl GrpcServices {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add<S>(&mut self, service: S) -> &mut Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Marks `/package.Service/Method` as callable without a token.
    pub fn public_method(&mut self, path: &str) -> &mut Self {
        self.public_methods.push(path.to_owned());
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("http: {0}")]
    Http(#[from] std::io::Error),
}

/// Bounds the requests in flight across all connections; more wait for a
/// slot. Health checks never wait: a saturated server must still answer its
/// probes, or an orchestrator restarts it for being busy.
#[derive(Clone)]
struct LimitLayer(Arc<tokio::sync::Semaphore>);

impl LimitLayer {
    fn new(limit: usize) -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(limit.max(1))))
    }
}

impl<S> tower::Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limit {
            inner,
            permits: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Limit<S> {
    inner: S,
    permits: Arc<tokio::sync::Semaphore>,
}

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

impl<S, B> tower::Service<http::Request<B>> for Limit<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = crate::auth::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if request.uri().path().starts_with(HEALTH_PREFIX) {
            return Box::pin(inner.call(request));
        }
        let permits = self.permits.clone();
        Box::pin(async move {
            // The semaphore is never closed, so a permit always comes.
            let _permit = permits.acquire_owned().await;
            inner.call(request).await
        })
    }
}

/// Serves `services` on `listener` until `shutdown`.
pub async fn serve_grpc(
    listener: TcpListener,
    services: GrpcServices,
    verifier: Arc<TokenVerifier>,
    config: &GrpcConfig,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    for name in &services.names {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(atiende_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(atiende_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let mut routes = services.routes;
    routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    // The limit sits inside authentication: a request without a valid
    // token never takes a slot from one that has.
    let layers = tower::ServiceBuilder::new()
        .layer(GrpcTraceLayer)
        .layer(AuthLayer::new(verifier, &services.public_methods))
        .layer(LimitLayer::new(config.concurrency_limit))
        .into_inner();

    let names = services.names;
    let drain_delay = config.drain_delay_ms;
    let signal = async move {
        shutdown.wait().await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for name in names {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        tracing::info!(?drain_delay, "gRPC server draining");
        tokio::time::sleep(drain_delay).await;
    };

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .timeout(config.request_timeout_ms)
        .layer(layers)
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, signal)
        .await?;
    Ok(())
}

/// Serves an HTTP router on `listener` until `shutdown`, with the limits of
/// `config` (request timeout: 408; concurrency; body size: 413). Like the
/// gRPC server it keeps accepting for `drain_delay` after the signal, then
/// lets in-flight requests finish.
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    config: &crate::config::HttpConfig,
    drain_delay: std::time::Duration,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let limits = tower::ServiceBuilder::new()
        .layer(axum::error_handling::HandleErrorLayer::new(
            |_: tower::BoxError| async { http::StatusCode::REQUEST_TIMEOUT },
        ))
        .layer(tower::timeout::TimeoutLayer::new(config.request_timeout_ms))
        // Global: one semaphore shared by every route of the listener.
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            config.concurrency_limit.max(1),
        ));
    let router = router
        .layer(axum::extract::DefaultBodyLimit::max(config.max_body_bytes))
        .layer(limits);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.wait().await;
            tokio::time::sleep(drain_delay).await;
        })
        .await?;
    Ok(())
}
