//! `meridian kube-address`: the addresses users reach this Kubernetes node at, read from the
//! Kubernetes API when an edge pod starts (the edge DaemonSet runs it before `meridian run` and
//! writes the answer into `edge.public_addresses`).
//!
//! `status.hostIP` is the node's private address on GKE, EKS and AKS, and DNS would hand it to
//! users. The node object says better: the annotation `meridian.dev/public-addresses` (a comma
//! list, set by the operator: an elastic IP, a load balancer in front of the node, IPv6) wins;
//! else the node's `ExternalIP` addresses. Neither: an error that says what to set. The pod needs
//! `get` on its node (the ClusterRole in `deploy/kubernetes/rbac.yaml`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The annotation an operator sets on a node to name the addresses users reach it at.
pub const ANNOTATION: &str = "meridian.dev/public-addresses";
/// Where a pod finds its service account's token and the cluster's CA.
pub const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Largest node object read.
const MAX_BODY: usize = 1 << 20;

/// Where and how to ask the API server.
#[derive(Debug, Clone)]
pub struct Api {
    /// `https://HOST:PORT`.
    pub base: String,
    /// The service account's bearer token.
    pub token_file: PathBuf,
    /// The CA that signed the API server's certificate.
    pub ca_file: PathBuf,
}

impl Api {
    /// The API server as a pod sees it: `KUBERNETES_SERVICE_HOST` and `_PORT`, and the service
    /// account's files under `dir`.
    pub fn in_cluster(dir: &Path) -> Result<Api, String> {
        let var = |k: &str| {
            std::env::var(k)
                .map_err(|_| format!("{k} is not set: not running in a Kubernetes pod?"))
        };
        let host = var("KUBERNETES_SERVICE_HOST")?;
        let port = var("KUBERNETES_SERVICE_PORT")?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(Api {
            base: format!("https://{host}:{port}"),
            token_file: dir.join("token"),
            ca_file: dir.join("ca.crt"),
        })
    }
}

/// The public addresses of node `node`, asked of `api`.
pub async fn addresses(api: &Api, node: &str) -> Result<Vec<IpAddr>, String> {
    let token = std::fs::read_to_string(&api.token_file)
        .map_err(|e| format!("cannot read {}: {e}", api.token_file.display()))?;
    let tls = crate::origin::tls_config(Some(&api.ca_file))
        .map_err(|e| format!("{}: {e}", api.ca_file.display()))?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    if node.is_empty()
        || !node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
    {
        return Err(format!("{node:?} is not a node name"));
    }
    let url = format!("{}/api/v1/nodes/{node}", api.base);
    let req = http::Request::get(&url)
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.trim()),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| format!("{url}: no answer within 10 s"))?
        .map_err(|e| format!("{url}: {}", crate::origin::error_chain(&e)))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    if status == http::StatusCode::FORBIDDEN {
        return Err(format!(
            "{url}: 403: the pod's service account may not read its node (apply deploy/kubernetes/rbac.yaml)"
        ));
    }
    if !status.is_success() {
        return Err(format!(
            "{url}: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    let object: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))?;
    from_node(&object, node)
}

/// The public addresses a node object names: the annotation, else its `ExternalIP`s.
pub fn from_node(object: &serde_json::Value, node: &str) -> Result<Vec<IpAddr>, String> {
    if let Some(list) = object["metadata"]["annotations"][ANNOTATION].as_str() {
        let parsed: Result<Vec<IpAddr>, String> = list
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.parse().map_err(|_| {
                    format!("node {node}: annotation {ANNOTATION}: {a:?} is not an IP address")
                })
            })
            .collect();
        let parsed = parsed?;
        if parsed.is_empty() {
            return Err(format!("node {node}: annotation {ANNOTATION} is empty"));
        }
        return Ok(parsed);
    }
    let external: Vec<IpAddr> = object["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == "ExternalIP")
        .filter_map(|a| a["address"].as_str()?.parse().ok())
        .collect();
    if external.is_empty() {
        return Err(format!(
            "node {node} has no ExternalIP address and no {ANNOTATION} annotation: name the addresses users reach it at, e.g. kubectl annotate node {node} {ANNOTATION}=203.0.113.7"
        ));
    }
    Ok(external)
}

/// The addresses as a TOML array, for `edge.public_addresses`.
pub fn toml_array(addresses: &[IpAddr]) -> String {
    let quoted: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotation_wins_over_external_ips_and_internal_ones_are_never_taken() {
        let node = serde_json::json!({
            "metadata": {"annotations": {ANNOTATION: "203.0.113.7, 2001:db8::7"}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.0.4"},
                {"type": "ExternalIP", "address": "198.51.100.4"},
            ]},
        });
        let a = from_node(&node, "n1").unwrap();
        assert_eq!(toml_array(&a), r#"["203.0.113.7", "2001:db8::7"]"#);
        let mut plain = node.clone();
        plain["metadata"] = serde_json::json!({});
        assert_eq!(
            toml_array(&from_node(&plain, "n1").unwrap()),
            r#"["198.51.100.4"]"#
        );
        plain["status"]["addresses"]
            .as_array_mut()
            .unwrap()
            .remove(1);
        let e = from_node(&plain, "n1").unwrap_err();
        assert!(e.contains("kubectl annotate node n1"), "{e}");
        let bad =
            serde_json::json!({"metadata": {"annotations": {ANNOTATION: "203.0.113.7,edge"}}});
        assert!(from_node(&bad, "n1")
            .unwrap_err()
            .contains("\"edge\" is not an IP address"));
    }
}
