//! Pilot: turns the mesh's services and Istio traffic config into Envoy configuration and
//! serves it to proxies over the xDS v3 API (ADS, state-of-the-world and delta).
//!
//! - [`model`]: services, endpoints, proxies and the push context, whatever their source.
//! - [`xds`]: generation, caching, the protocol rules, the gRPC streams and the push pipeline.
//! - [`mesh`]: MeshConfig. [`bootstrap`]: the Envoy bootstrap of a proxy.
//! - [`validate`]: Istio's semantic checks, the admission webhook and its caBundle keeper.
//! - [`inject`]: sidecar injection (`pilot kube-inject`, the webhook's `/inject`).
//! - [`install`]: `manifests/install.yaml` (`pilot manifest`).
//! - `testutil` (tests, or the `testutil` feature): builders of proxies and push contexts.
//!
//! The binary is a thin `main.rs` over [`main`].

pub mod agent;
pub mod bootstrap;
pub mod check;
mod debug;
pub mod inject;
pub mod install;
pub mod kube;
pub mod legacy;
pub mod mesh;
pub mod model;
pub mod settings;
mod status;
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
pub mod validate;
pub mod xds;

use std::sync::Arc;

use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use mesh_runtime::Shutdown;
use mesh_runtime::monitoring;
use mesh_runtime::service::{Base, ConfigSource};

pub use settings::{Cli, Command, Settings};

/// Runs the command line: serves, or runs a subcommand.
pub async fn main(cli: Cli, shutdown: Shutdown) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Bootstrap(args)) => {
            let mut json = bootstrap::bootstrap(&args.options())?;
            if let Some(socket) = &args.sds_socket {
                bootstrap::add_sds_cluster(&mut json, socket);
            }
            let text = serde_json::to_string_pretty(&json)? + "\n";
            match &args.out {
                Some(path) => std::fs::write(path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(())
        }
        Some(Command::Manifest(args)) => {
            let yaml = if args.telemetry {
                install::mixer_config::telemetry_yaml()
            } else {
                install::install_yaml(&args.options())
            };
            match &args.out {
                Some(path) => std::fs::write(path, yaml)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{yaml}"),
            }
            Ok(())
        }
        Some(Command::Check(args)) => Ok(check::run(args).await?),
        Some(Command::KubeInject(args)) => Ok(inject::run(&args)?),
        Some(Command::Validate(args)) => {
            let problems = validate::validate_files(&args.files);
            for p in &problems {
                println!("{p}");
            }
            if problems.is_empty() {
                Ok(())
            } else {
                anyhow::bail!("{} problem(s) found", problems.len())
            }
        }
        None => {
            let settings = Settings::resolve(&cli.common, cli.serve)?;
            serve(settings, shutdown).await
        }
    }
}

/// Serves xDS and the monitoring endpoints until `shutdown`.
pub async fn serve(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    tracing::info!(?settings, "starting pilot");
    // Bind first, so a port conflict fails before anything else starts.
    let http = monitoring::bind(settings.http_addr).await?;
    let grpc = tokio::net::TcpListener::bind(settings.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {} (--grpc-addr)", settings.grpc_addr))?;
    tracing::info!(addr = %settings.grpc_addr, "xDS server listening");
    let webhook = match &settings.webhook {
        Some(w) => {
            let bound = validate::webhook::Webhook::bind(w).await?;
            // An injection config that does not load stops Pilot here, naming the field.
            let injector = validate::inject_webhook::Injector::watch(
                w.injection_config.clone(),
                shutdown.clone(),
            )?;
            tracing::info!(addr = %w.addr, "admission webhook listening (/validate, /inject)");
            Some((bound, injector))
        }
        None => None,
    };

    let (mesh_rx, mesh_refused) =
        mesh::watch_mesh_with_status(settings.mesh.clone(), shutdown.clone())?;
    let source = ConfigSource::from_flags(settings.config_dir.clone(), settings.kubeconfig.clone());
    let (mut base, findings) = Base::start_with_analysis(
        "pilot",
        &source,
        settings::watched_kinds(),
        (!settings.skip_validation)
            .then(|| Arc::new(validate::PilotValidator) as mesh_runtime::config::SharedValidator),
        settings.enable_status,
        shutdown.clone(),
    )
    .await
    .context("opening the config store")?;
    let metrics = xds::XdsMetrics::register(&mut base.registry);
    let injector = webhook.as_ref().map(|(_, injector)| injector.clone());
    if let Some(injector) = &injector {
        injector.metrics().register(&mut base.registry);
    }

    // Wait for the first full config, so proxies never get a partial mesh.
    let mut config_rx = base.store.subscribe();
    let config = loop {
        let snap = config_rx.borrow_and_update().clone();
        if snap.is_synced() {
            break snap;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = config_rx.changed() => r.context("config store stopped")?,
        }
    };
    // On Kubernetes, Services and EndpointSlices are the registry: wait for the first full
    // list of them too.
    let platform_rx = match &source {
        ConfigSource::Kubernetes(kubeconfig) => {
            let client = mesh_runtime::kube_client::connect(kubeconfig.as_deref()).await?;
            let mut rx = kube::watch_registry(client, "cluster.local".into(), shutdown.clone());
            loop {
                if rx.borrow_and_update().is_some() {
                    break;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    r = rx.changed() => r.context("registry watch stopped")?,
                }
            }
            Some(rx)
        }
        ConfigSource::Directory(_) => None,
    };
    let platform = platform_rx.as_ref().and_then(|rx| rx.borrow().clone());
    let inputs = xds::push::Inputs {
        registry: xds::push::merged_registry(&config, platform.as_deref()),
        config,
        mesh: mesh_rx.borrow().clone(),
    };
    // JWKS of `jwksUri`s: fetched before the first push, then refreshed.
    let fetcher = model::jwks_fetch::HttpFetcher::new().context("the JWKS client")?;
    let jwks = model::jwks::JwksResolver::new(fetcher, settings.jwt_pub_key_refresh_interval);
    jwks.register_metrics(&mut base.registry);
    let keys = jwks.resolve(&model::authn::jwks_uris(&inputs.config)).await;
    tokio::spawn(jwks.clone().run(shutdown.clone()));
    let generation = xds::push::build_with_jwks(&inputs, keys, Some(&metrics));
    let server = xds::XdsServer::new(
        generation,
        settings.push_concurrency,
        metrics,
        shutdown.clone(),
    );
    let debounce = xds::push::Debounce {
        after: settings.debounce_after,
        max: settings.debounce_max,
    };
    tokio::spawn(xds::push::run(
        server.clone(),
        inputs,
        config_rx,
        mesh_rx,
        platform_rx,
        Some(jwks.clone()),
        debounce,
        shutdown.clone(),
    ));

    tokio::spawn(status::report_analysis(
        server.clone(),
        findings,
        shutdown.clone(),
    ));

    let grpc_shutdown = shutdown.clone();
    let grpc_task = tokio::spawn(
        xds::server::grpc_server()
            .add_service(server.service())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                async move { grpc_shutdown.cancelled().await },
            ),
    );

    if let Some((webhook, injector)) = webhook {
        tokio::spawn(webhook.serve(injector, shutdown.clone()));
    }
    // On Kubernetes, the webhooks' configurations get the roots of what they serve.
    if let (ConfigSource::Kubernetes(kubeconfig), Some(keeper)) = (
        &source,
        settings.webhook.as_ref().and_then(|w| w.keeper.clone()),
    ) {
        let client = mesh_runtime::kube_client::connect(kubeconfig.as_deref()).await?;
        if let Some(name) = keeper.config {
            let keeper = validate::cabundle::Keeper::<ValidatingWebhookConfiguration> {
                api: ::kube::Api::all(client.clone()),
                name,
                roots: keeper.ca_bundle.clone(),
            };
            tokio::spawn(keeper.run(shutdown.clone()));
        }
        if let Some(name) = keeper.injector_config {
            let keeper = validate::cabundle::Keeper::<MutatingWebhookConfiguration> {
                api: ::kube::Api::all(client),
                name,
                roots: keeper.ca_bundle,
            };
            tokio::spawn(keeper.run(shutdown.clone()));
        }
    }

    let routes = debug::routes(server.clone())
        .merge(debug::mesh_routes(settings.mesh.clone(), mesh_refused))
        .merge(debug::inject_routes(injector))
        .merge(debug::jwks_routes(jwks));
    let store = Arc::clone(&base.store);
    base.serve_monitoring(http, routes, shutdown.clone())
        .await?;
    drop(store);
    match grpc_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "xDS server stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "xDS server task failed"),
    }
    tracing::info!("pilot stopped");
    Ok(())
}
