//! The `node-proxy` commands that are not long-running programs: `explain`, `admin`, `ca
//! create`, `cleanup` and `cni`, each with its flags beside its code. Part of the binary
//! (declared in main.rs, not in lib.rs), so its errors are `anyhow`'s.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use marrow_mesh::identity::{self, TrustDomain};
use marrow_mesh::state::StateStore;
use marrow_mesh::state::file::LocalFileSource;
use node_proxy::admin;

/// The connection a decision is asked for, in `explain` and `admin explain`.
#[derive(clap::Args)]
pub struct ConnectionArgs {
    /// The client: `ns/pod`, or `ip:A.B.C.D` for a plaintext client outside the mesh.
    #[arg(long)]
    from: String,
    /// The server: `ns/pod`.
    #[arg(long)]
    to: String,
    /// The destination port.
    #[arg(long)]
    port: u16,
    #[command(flatten)]
    request: RequestArgs,
}

/// An HTTP request: with any of these, the decision is the destination waypoint's (L7).
#[derive(clap::Args)]
pub struct RequestArgs {
    /// The request method (default GET).
    #[arg(long)]
    method: Option<String>,
    /// The request path, as the client sends it (default /); normalized as the waypoint does.
    #[arg(long)]
    path: Option<String>,
    /// The request's host (default: the destination Service's).
    #[arg(long)]
    host: Option<String>,
    /// A request header, `NAME=VALUE`; repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// The waypoint deciding, `ns/name` (needed until the state names waypoints).
    #[arg(long)]
    waypoint: Option<String>,
}

impl RequestArgs {
    /// The request as `explain` takes it.
    fn query(&self) -> marrow_mesh::explain::RequestQuery {
        marrow_mesh::explain::RequestQuery {
            method: self.method.clone(),
            path: self.path.clone(),
            host: self.host.clone(),
            headers: self.headers.clone(),
            waypoint: self.waypoint.clone(),
        }
    }
}

/// Flags of `explain`.
#[derive(clap::Args)]
pub struct ExplainArgs {
    /// The state file (Kubernetes YAML with Pods, Namespaces and Istio security policies).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Print `{"decision":..,"policy":..,"rule":..,"reason":..}`.
    #[arg(long)]
    json: bool,
    /// SPIFFE trust domain of the mesh.
    #[arg(long, default_value = marrow_mesh::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Namespace whose policies apply mesh-wide.
    #[arg(long, default_value = marrow_mesh::policy::DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
}

/// `node-proxy explain`: one decision from a state file, as the destination's proxy takes it.
pub fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    use marrow_mesh::explain::{self, ExplainSource};
    let update = LocalFileSource::new(&args.config)
        .with_root_namespace(&args.root_namespace)
        .load()?;
    let store = StateStore::new();
    store.apply(update);
    let ConnectionArgs {
        from,
        to,
        port,
        request,
    } = &args.connection;
    let source: ExplainSource = from.parse()?;
    let (ns, name) = explain::workload_ref(to, "destination")?;
    let td = TrustDomain::new(&args.trust_domain)?;
    let snap = store.snapshot();
    let query = request.query();
    // One code path with the waypoint: an HTTP request goes through `evaluate_request`.
    let answer = if query.is_empty() {
        explain::explain(&snap, &td, &source, (&ns, &name), *port)?
    } else {
        explain::explain_request(&snap, &td, &source, (&ns, &name), *port, &query)?
    };
    if args.json {
        println!("{}", serde_json::to_string(&answer)?);
    } else {
        println!("decision: {}", answer.decision);
        println!("policy:   {}", answer.policy.as_deref().unwrap_or("none"));
        println!(
            "rule:     {}",
            answer
                .rule
                .map_or_else(|| "-".to_owned(), |r| r.to_string())
        );
        println!("reason:   {}", answer.reason);
        for note in &answer.notes {
            println!("note:     {note}");
        }
    }
    Ok(())
}

/// The request a route is asked for, in `routes` and `admin routes`.
#[derive(clap::Args)]
pub struct RouteArgs {
    /// The client, `ns/pod` (its namespace and labels can decide; a bare --to name is
    /// resolved in its namespace).
    #[arg(long)]
    from: Option<String>,
    /// The destination: a Service host (`name.ns`, `name.ns.svc.cluster.local`, or `name`
    /// with --from) or VIP, and the service port: `HOST:PORT`.
    #[arg(long)]
    to: String,
    /// The request method (default GET).
    #[arg(long)]
    method: Option<String>,
    /// The request path (default /), normalized as the waypoint does.
    #[arg(long)]
    path: Option<String>,
    /// The request's host (default: the Service's).
    #[arg(long)]
    host: Option<String>,
    /// A request header, `NAME=VALUE`; repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
}

impl RouteArgs {
    /// The question as `explain_routes` takes it.
    fn query(&self) -> anyhow::Result<marrow_mesh::explain::RoutesQuery> {
        let from = match &self.from {
            Some(from) => Some(from.parse()?),
            None => None,
        };
        Ok(marrow_mesh::explain::RoutesQuery {
            from,
            to: self.to.clone(),
            request: marrow_mesh::explain::RequestQuery {
                method: self.method.clone(),
                path: self.path.clone(),
                host: self.host.clone(),
                headers: self.headers.clone(),
                waypoint: None,
            },
        })
    }
}

/// Flags of `routes`.
#[derive(clap::Args)]
pub struct RoutesArgs {
    /// The state file (Kubernetes YAML: Services, routes, DestinationRules, …).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    route: RouteArgs,
    /// Print `{"route":..,"backends":[..],"timeout_ms":..,"retries":..,"fault":..}`.
    #[arg(long)]
    json: bool,
    /// Namespace whose objects apply mesh-wide.
    #[arg(long, default_value = marrow_mesh::policy::DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
}

/// `node-proxy routes`: the route that applies to a request or connection, from a state file,
/// answered by the functions the data paths call.
pub fn routes(args: &RoutesArgs) -> anyhow::Result<()> {
    let update = LocalFileSource::new(&args.config)
        .with_root_namespace(&args.root_namespace)
        .load()?;
    let store = StateStore::new();
    store.apply(update);
    let answer = marrow_mesh::explain::explain_routes(&store.snapshot(), &args.route.query()?)?;
    let reply = serde_json::to_value(&answer)?;
    if args.json {
        println!("{}", serde_json::to_string(&reply)?);
    } else {
        // One rendering with `admin routes`.
        print!("{}", admin::client::render(admin::Endpoint::Routes, &reply));
    }
    Ok(())
}

/// Flags of `admin`.
#[derive(clap::Args)]
pub struct AdminArgs {
    /// The admin API's address (`run --admin-addr`).
    #[arg(
        long,
        global = true,
        env = "MARROW_ADMIN_ADDR",
        default_value = "127.0.0.1:15000"
    )]
    addr: SocketAddr,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    what: AdminCommand,
}

/// `node-proxy admin …`.
#[derive(Subcommand)]
pub enum AdminCommand {
    /// The state's workloads, and the pods enrolled on this node.
    Workloads,
    /// The state's Services and EndpointSlices.
    Services,
    /// AuthorizationPolicies and PeerAuthentications in force, with their warnings.
    Policies,
    /// The identities this proxy holds certificates for, and their validity.
    Certificates,
    /// The connections open now: both ends, both identities, bytes each way, age.
    Connections,
    /// The effective configuration, state generation and trust domain.
    Config,
    /// The log filter in force; with --level, replace it.
    Logging {
        /// An EnvFilter directive, e.g. `debug` or `info,access=off`.
        #[arg(long)]
        level: Option<String>,
    },
    /// The running proxy's L4 decision for a connection, or with --method/--path/--host/--header
    /// the waypoint's for a request (as `node-proxy explain`).
    Explain(ConnectionArgs),
    /// The running proxy's route for a request or connection (as `node-proxy routes`).
    Routes(RouteArgs),
}

/// `node-proxy admin …`: one request to the admin API, printed as a table or as its JSON.
pub fn admin(args: &AdminArgs) -> anyhow::Result<()> {
    use admin::Endpoint;
    use admin::client;
    let port_text;
    let (endpoint, method, params): (Endpoint, &str, Vec<(&str, &str)>) = match &args.what {
        AdminCommand::Workloads => (Endpoint::Workloads, "GET", vec![]),
        AdminCommand::Services => (Endpoint::Services, "GET", vec![]),
        AdminCommand::Policies => (Endpoint::Policies, "GET", vec![]),
        AdminCommand::Certificates => (Endpoint::Certificates, "GET", vec![]),
        AdminCommand::Connections => (Endpoint::Connections, "GET", vec![]),
        AdminCommand::Config => (Endpoint::ConfigDump, "GET", vec![]),
        AdminCommand::Logging { level: None } => (Endpoint::Logging, "GET", vec![]),
        AdminCommand::Logging { level: Some(level) } => {
            (Endpoint::Logging, "POST", vec![("level", level)])
        }
        AdminCommand::Explain(ConnectionArgs {
            from,
            to,
            port,
            request,
        }) => {
            port_text = port.to_string();
            let mut params = vec![("from", from.as_str()), ("to", to), ("port", &port_text)];
            let optional = [
                ("method", &request.method),
                ("path", &request.path),
                ("host", &request.host),
                ("waypoint", &request.waypoint),
            ];
            for (key, value) in optional {
                if let Some(value) = value {
                    params.push((key, value));
                }
            }
            params.extend(request.headers.iter().map(|h| ("header", h.as_str())));
            (Endpoint::Explain, "GET", params)
        }
        AdminCommand::Routes(route) => {
            let mut params = vec![("to", route.to.as_str())];
            let optional = [
                ("from", &route.from),
                ("method", &route.method),
                ("path", &route.path),
                ("host", &route.host),
            ];
            for (key, value) in optional {
                if let Some(value) = value {
                    params.push((key, value));
                }
            }
            params.extend(route.headers.iter().map(|h| ("header", h.as_str())));
            (Endpoint::Routes, "GET", params)
        }
    };
    let path = client::target(endpoint, &params);
    let reply = client::request(args.addr, method, &path)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", client::render(endpoint, &reply));
    }
    Ok(())
}

/// `node-proxy ca …`.
#[derive(Subcommand)]
pub enum CaCommand {
    /// Create a self-signed ECDSA P-256 mesh CA: DIR/ca-cert.pem and DIR/ca-key.pem (0600).
    Create {
        /// Directory to write to (created if missing; existing CA files are never overwritten).
        #[arg(long)]
        dir: PathBuf,
        /// SPIFFE trust domain.
        #[arg(long, default_value = marrow_mesh::identity::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u64,
    },
    /// Serve the mesh CA over Istio's CA protocol (gRPC CreateCertificate, TLS on :15012):
    /// node proxies obtain only the identities of pods on their own node.
    Serve(marrow_settings::Flags<marrow_ca::ServeConfig>),
}

/// `node-proxy cni …`.
#[derive(Subcommand)]
pub enum CniCommand {
    /// Copy the plugin into the bin dir and append it to the primary network's plugins (the
    /// lexically first *.conflist/*.conf/*.json of the conf dir). Idempotent.
    Install {
        #[command(flatten)]
        dirs: CniDirs,
        /// The redirect-cni binary to copy.
        #[arg(long, default_value = "/usr/lib/marrow/redirect-cni")]
        plugin_binary: PathBuf,
        /// The node proxy's enrollment socket, written as the entry's `proxySocket`.
        #[arg(long, default_value = marrow_wire::enrollment::DEFAULT_SOCKET_PATH)]
        socket: PathBuf,
        /// Keep running: chain again whenever the primary CNI rewrites its config; exit on
        /// SIGTERM leaving everything in place.
        #[arg(long)]
        watch: bool,
        /// With --watch: seconds between checks.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
        poll_secs: u64,
    },
    /// Take redirect-cni out of every network config and remove the binary.
    Uninstall {
        #[command(flatten)]
        dirs: CniDirs,
    },
    /// Exit 0 if the binary is in place and the primary network chains redirect-cni with this
    /// socket (a readiness check); otherwise say what is missing and exit 1.
    Check {
        #[command(flatten)]
        dirs: CniDirs,
        /// The socket the entry must name.
        #[arg(long, default_value = marrow_wire::enrollment::DEFAULT_SOCKET_PATH)]
        socket: PathBuf,
    },
}

/// The host's CNI directories, as mounted into the installer.
#[derive(clap::Args)]
pub struct CniDirs {
    /// The CNI plugin directory (the host's /opt/cni/bin).
    #[arg(long)]
    bin_dir: PathBuf,
    /// The CNI network config directory (the host's /etc/cni/net.d).
    #[arg(long)]
    conf_dir: PathBuf,
}

/// `node-proxy cni …`: the node's CNI chain (see `node_proxy::cni_install`).
pub fn cni(command: CniCommand) -> anyhow::Result<()> {
    use node_proxy::cni_install::{self, Copied, Installer};
    let placeholder = || PathBuf::from("/usr/lib/marrow/redirect-cni");
    match command {
        CniCommand::Install {
            dirs,
            plugin_binary,
            socket,
            watch,
            poll_secs,
        } => {
            let installer = Installer::new(dirs.bin_dir, dirs.conf_dir, plugin_binary, &socket)?;
            if watch {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building the runtime")?;
                runtime.block_on(installer.watch(
                    Duration::from_secs(poll_secs),
                    marrow_mesh::drain::shutdown_signal(),
                ))?;
                return Ok(());
            }
            let (copied, chained) = installer.install()?;
            let binary = installer.installed_binary();
            match copied {
                Copied::Written => {
                    tracing::info!(binary = %binary.display(), "plugin binary installed")
                }
                Copied::Unchanged => {
                    tracing::info!(binary = %binary.display(), "plugin binary already in place")
                }
            }
            match &chained {
                cni_install::Chained::Already { config } => {
                    tracing::info!(config = %config.display(), "redirect-cni already chained; nothing written")
                }
                inserted => cni_install::log_chained(inserted),
            }
            Ok(())
        }
        CniCommand::Uninstall { dirs } => {
            let done = cni_install::uninstall(&dirs.bin_dir, &dirs.conf_dir)?;
            for config in &done.unchained {
                tracing::info!(config = %config.display(), "redirect-cni taken out");
            }
            for (config, reason) in &done.left_alone {
                tracing::warn!(config = %config.display(), %reason, "not a JSON config; left alone");
            }
            tracing::info!(
                configs = done.unchained.len(),
                binary_removed = done.binary_removed,
                "uninstalled"
            );
            Ok(())
        }
        CniCommand::Check { dirs, socket } => {
            let installer = Installer::new(dirs.bin_dir, dirs.conf_dir, placeholder(), &socket)?;
            let config = installer.check()?;
            println!("chained: {}", config.display());
            Ok(())
        }
    }
}

/// `node-proxy ca create`: a self-signed mesh CA in `dir`; prints the paths of its two files.
pub fn ca_create(dir: &Path, trust_domain: &str, days: u64) -> anyhow::Result<()> {
    let td = TrustDomain::new(trust_domain)?;
    let files = identity::create_ca(dir, &td, Duration::from_secs(days.saturating_mul(86_400)))?;
    println!("{}\n{}", files.cert.display(), files.key.display());
    Ok(())
}

/// `node-proxy cleanup`: removes the pins; capture ends for every pod on the node.
pub fn cleanup(bpffs_dir: &Path) -> anyhow::Result<()> {
    node_proxy::capture::remove_pins(bpffs_dir)
        .with_context(|| format!("removing {}", bpffs_dir.display()))?;
    tracing::info!(dir = %bpffs_dir.display(), "pins removed; capture detached");
    Ok(())
}
