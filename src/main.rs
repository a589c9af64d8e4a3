//! The `meridian` command: parse the CLI, load the configuration, start the roles.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "meridian", version, about = "A geo-aware edge CDN node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the embedded default: a sample origin and the edges of config/local/ on loopback.
    Demo {
        /// Add this to every port the demo listens on (when one of them is taken).
        #[arg(long, default_value_t = 0)]
        port_offset: u16,
    },
    /// Run the roles that NODE.toml configures.
    Run {
        /// The node file.
        #[arg(short, long, value_name = "NODE.toml")]
        config: PathBuf,
    },
    /// Explain the DNS decision for a client IP: location, candidates, choice, ECS scope.
    Route {
        /// The node file.
        #[arg(short, long, value_name = "NODE.toml")]
        config: PathBuf,
        /// The client address (as an ECS subnet would carry it).
        ip: std::net::IpAddr,
        /// The name asked for (default: the first name of the first zone).
        name: Option<String>,
        /// Decide on the health and load the running node hears by gossip (through its admin
        /// API) instead of the cluster map alone.
        #[arg(long)]
        live: bool,
    },
    /// Ask the running node of NODE.toml (through its admin API and token) to drain: leave the
    /// DNS answers and fail /healthz while it keeps serving. `--undo` takes it back.
    Drain {
        /// The node file.
        #[arg(short, long, value_name = "NODE.toml")]
        config: PathBuf,
        /// Stop draining.
        #[arg(long)]
        undo: bool,
    },
    /// Purge by URL, URL prefix or Surrogate-Key tag through the running node of NODE.toml (its
    /// admin API and token): on every edge of the cluster when the node gossips.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["url", "prefix", "tag"])))]
    Purge {
        /// The node file.
        #[arg(short, long, value_name = "NODE.toml")]
        config: PathBuf,
        /// One URL, every variant (http://host/path?query).
        #[arg(long)]
        url: Option<String>,
        /// Every URL starting with this one.
        #[arg(long)]
        prefix: Option<String>,
        /// Every object its origin tagged so (Surrogate-Key).
        #[arg(long)]
        tag: Option<String>,
        /// Return when every live edge has applied it (exit 1 naming those that have not).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// Which edges own a URL now (tiered caching: `shield` in the origin map), as the running
    /// edge of NODE.toml sees the cluster, and whom a miss there asks.
    Owner {
        /// The node file of an edge.
        #[arg(short, long, value_name = "NODE.toml")]
        config: PathBuf,
        /// The URL (http://host/path?query).
        url: String,
    },
    /// The running node's numbers in the terminal, refreshing: members, load, requests/s, hit
    /// ratio, origin fetches, cache bytes, DNS answers per region.
    Top {
        /// The node file.
        #[arg(short, long, value_name = "NODE.toml")]
        config: PathBuf,
        /// Print once (totals since start) and exit.
        #[arg(long)]
        once: bool,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Print, as a TOML array for `edge.public_addresses`, the addresses users reach this
    /// Kubernetes node at: its `meridian.dev/public-addresses` annotation, else its ExternalIP
    /// addresses (asked of the Kubernetes API with the pod's service account).
    KubeAddress {
        /// The node's name (the edge DaemonSet passes spec.nodeName).
        #[arg(long, value_name = "NAME")]
        node: String,
        /// The API server, `https://HOST:PORT` (default: from KUBERNETES_SERVICE_HOST and
        /// KUBERNETES_SERVICE_PORT).
        #[arg(long, value_name = "URL")]
        api: Option<String>,
        /// The service account's directory (its `token` and `ca.crt`).
        #[arg(long, value_name = "DIR", default_value = meridian::kube::SERVICE_ACCOUNT)]
        service_account: PathBuf,
    },
    /// GeoIP database tools.
    Geo {
        #[command(subcommand)]
        command: GeoCommand,
    },
    /// Validate the node file and every map it names; list every problem; exit 1 on any.
    Check {
        /// The node file.
        #[arg(short, long, value_name = "NODE.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum GeoCommand {
    /// Build a MaxMind-format City database from a CSV of networks and places.
    Build {
        /// Record layout: `city` (GeoIP2 City, as MaxMind's databases) or `flat` (as DB-IP's
        /// City Lite).
        #[arg(long, value_parser = ["city", "flat"], default_value = "city")]
        layout: String,
        /// CSV: network,city,latitude,longitude,country (with a header line).
        csv: PathBuf,
        /// The database to write.
        out: PathBuf,
    },
}

/// Loads a node file, printing every problem on failure.
fn load(path: &std::path::Path) -> Result<meridian::config::Config, ExitCode> {
    meridian::config::load(path).map_err(|e| {
        eprint!("{e}");
        ExitCode::FAILURE
    })
}

/// Runs `work` on a multi-threaded runtime; `what` names it in errors.
/// A command-line number of seconds as a duration: 0.1 s to an hour, `default` if not finite.
fn seconds(s: f64, default: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(if s.is_finite() {
        s.clamp(0.1, 3600.0)
    } else {
        default
    })
}

fn block_on<E: std::fmt::Display>(
    what: &str,
    work: impl std::future::Future<Output = Result<(), E>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // Before any other thread exists: the allocator's arenas are chosen at a thread's first
    // allocation.
    meridian::memory::configure();
    // A write past the file size limit (RLIMIT_FSIZE) fails with EFBIG instead of killing the
    // process: the disk tier logs it and the edge goes on from memory.
    // SAFETY: setting a signal's disposition to ignore, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Demo { port_offset } => {
            meridian::memory::restart_with_thread_caches_off();
            meridian::telemetry::init_logging(&meridian::config::LogConfig {
                json: false,
                level: "warn".into(),
                access_log: false,
            });
            block_on("meridian demo", meridian::demo::run(port_offset))
        }
        Command::Route {
            config,
            ip,
            name,
            live,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let explained = if live {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string());
                runtime.and_then(|r| {
                    r.block_on(meridian::route::explain_live(&cfg, ip, name.as_deref()))
                })
            } else {
                meridian::route::explain(&cfg, ip, name.as_deref())
            };
            match explained {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("meridian route: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Drain { config, undo } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            block_on("meridian drain", async move {
                let answer = meridian::admin::drain(&cfg, !undo).await?;
                println!("{answer}");
                Ok::<(), String>(())
            })
        }
        Command::Purge {
            config,
            url,
            prefix,
            tag,
            wait,
            timeout,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let what = match (url, prefix, tag) {
                (Some(u), _, _) => serde_json::json!({ "url": u }),
                (_, Some(p), _) => serde_json::json!({ "prefix": p }),
                (_, _, Some(t)) => serde_json::json!({ "tag": t }),
                _ => unreachable!("clap requires one of --url, --prefix, --tag"),
            };
            let wait = wait.then(|| seconds(timeout, 10.0));
            block_on("meridian purge", async move {
                meridian::admin::purge(&cfg, what, wait).await
            })
        }
        Command::Owner { config, url } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            block_on("meridian owner", async move {
                meridian::admin::owner(&cfg, &url).await
            })
        }
        Command::Top {
            config,
            once,
            interval,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let every = seconds(interval, 1.0);
            block_on("meridian top", async move {
                meridian::top::run(&cfg, once, every).await
            })
        }
        Command::KubeAddress {
            node,
            api,
            service_account,
        } => {
            let api = match api {
                Some(base) => Ok(meridian::kube::Api {
                    base: base.trim_end_matches('/').to_string(),
                    token_file: service_account.join("token"),
                    ca_file: service_account.join("ca.crt"),
                }),
                None => meridian::kube::Api::in_cluster(&service_account),
            };
            block_on("meridian kube-address", async move {
                let addresses = meridian::kube::addresses(&api?, &node).await?;
                for a in &addresses {
                    if let Some(kind) = meridian::config::unreachable_kind(*a) {
                        eprintln!("warning: node {node}: {a} is a {kind} address; users on the internet cannot reach it");
                    }
                }
                println!("{}", meridian::kube::toml_array(&addresses));
                Ok::<(), String>(())
            })
        }
        Command::Geo {
            command: GeoCommand::Build { csv, out, layout },
        } => match meridian::geobuild::build(
            &csv,
            &out,
            if layout == "flat" {
                meridian::geobuild::Layout::Flat
            } else {
                meridian::geobuild::Layout::City
            },
        ) {
            Ok(n) => {
                println!("{}: {n} networks", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config } => match meridian::app::check(&config) {
            Ok(c) => {
                for w in c.warnings() {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}: ok (node {}, region {}, {} site{})",
                    config.display(),
                    c.node.id,
                    c.node.region,
                    c.sites.len(),
                    if c.sites.len() == 1 { "" } else { "s" }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            // Before any other thread exists (the exec replaces this process).
            meridian::memory::restart_with_thread_caches_off();
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            meridian::telemetry::init_logging(&cfg.node.log);
            block_on("meridian", meridian::app::run(cfg))
        }
    }
}
