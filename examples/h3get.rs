//! GET a URL over HTTP/3 and print the response as `curl -si` would (status line, fields, body):
//! the demo's HTTP/3 line for machines whose curl has no HTTP/3 (Debian's has none).
//!
//! `cargo run --release --example h3get -- [--cacert FILE] [--resolve HOST:PORT:ADDR] [-I] URL`
//!
//! `--cacert` trusts the PEM certificates in FILE instead of the system's roots; `--resolve`
//! sends HOST:PORT to ADDR, as curl's option does; `-I` prints the head only.

use std::net::SocketAddr;
use std::process::ExitCode;

use meridian::h3client::{tls_config, H3Client};

struct Args {
    url: http::Uri,
    cacert: Option<std::path::PathBuf>,
    resolve: Option<(String, u16, std::net::IpAddr)>,
    head_only: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut url, mut cacert, mut resolve, mut head_only) = (None, None, None, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cacert" => cacert = Some(args.next().ok_or("--cacert needs a file")?.into()),
            "--resolve" => {
                let v = args.next().ok_or("--resolve needs HOST:PORT:ADDR")?;
                let mut parts = v.splitn(3, ':');
                let (Some(host), Some(port), Some(addr)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(format!("--resolve {v}: not HOST:PORT:ADDR"));
                };
                let port = port
                    .parse()
                    .map_err(|_| format!("--resolve {v}: bad port"))?;
                let addr = addr
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse()
                    .map_err(|_| format!("--resolve {v}: bad address"))?;
                resolve = Some((host.to_string(), port, addr));
            }
            "-I" | "--head" => head_only = true,
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            other => url = Some(other.parse().map_err(|e| format!("{other}: {e}"))?),
        }
    }
    Ok(Args {
        url: url.ok_or("usage: h3get [--cacert FILE] [--resolve HOST:PORT:ADDR] [-I] URL")?,
        cacert,
        resolve,
        head_only,
    })
}

async fn run(args: Args) -> Result<(), String> {
    let host = args.url.host().ok_or("the URL names no host")?.to_string();
    let port = args.url.port_u16().unwrap_or(443);
    let addr = match &args.resolve {
        Some((h, p, ip)) if h.eq_ignore_ascii_case(&host) && *p == port => {
            SocketAddr::new(*ip, port)
        }
        _ => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("{host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}: no address"))?,
    };
    let tls = tls_config(args.cacert.as_deref())?;
    let client = H3Client::connect(addr, &host, tls).await?;
    let method = if args.head_only {
        http::Method::HEAD
    } else {
        http::Method::GET
    };
    let req = http::Request::builder()
        .method(method)
        .uri(args.url.clone())
        .header("user-agent", "meridian-h3get")
        .body(bytes::Bytes::new())
        .map_err(|e| e.to_string())?;
    let (resp, body) = client.send(req).await?;
    println!("HTTP/3 {}", resp.status());
    for (name, value) in resp.headers() {
        println!("{name}: {}", String::from_utf8_lossy(value.as_bytes()));
    }
    println!();
    if !args.head_only {
        use std::io::Write;
        let _ = std::io::stdout().write_all(&body);
    }
    client.close().await;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("h3get: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("h3get: {e}");
            ExitCode::FAILURE
        }
    }
}
