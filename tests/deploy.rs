//! The deployment files of `deploy/`: the Kubernetes manifests against the Kubernetes schemas
//! (with the `kubernetes-validate` package from PyPI, when installed), the node file templates
//! they run through `meridian check`, and the systemd units' hardening and reload wiring.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn meridian() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
}

#[test]
fn kubernetes_manifests_match_the_schemas() {
    let probe = Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "skipped: the Kubernetes schema check needs `python3 -m pip install kubernetes-validate` (the README's install step); it is not installed here"
        );
        return;
    }
    let dir = repo().join("deploy/kubernetes");
    let files = [
        "namespace.yaml",
        "gossip-service.yaml",
        "rbac.yaml",
        "edges.yaml",
        "dns.yaml",
    ];
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--no-warn"])
        .args(files.iter().map(|f| dir.join(f)))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    // Every resource was checked: 3 edge DaemonSets, the DNS Deployment and its Service, the
    // gossip Service, the edges' ServiceAccount, ClusterRole and binding, and the Namespace.
    assert_eq!(text.matches(" passed for resource ").count(), 10, "{text}");
}

#[test]
fn dns_has_one_service_for_both_protocols_and_the_image_is_set_once() {
    let dir = repo().join("deploy/kubernetes");
    // DNS answers UDP and TCP at one address: one Service carries both protocols on port 53.
    let dns = std::fs::read_to_string(dir.join("dns.yaml")).unwrap();
    let service = dns
        .split("\n---\n")
        .find(|d| d.contains("kind: Service"))
        .unwrap();
    assert_eq!(dns.matches("kind: Service").count(), 1);
    assert!(service.contains("protocol: UDP") && service.contains("protocol: TCP"));
    // The image is set in one place, by kustomize.
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    assert!(kustomization.contains("images:\n  - name: meridian\n"));
    for f in ["edges.yaml", "dns.yaml"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(
            !text.contains("meridian:latest"),
            "{f} names a tag of its own"
        );
    }
}

/// Renders a node file template of `deploy/kubernetes/config` into `dir` with its paths moved
/// from `/etc/meridian` (and the image's GeoIP data) to `dir` (and the repository's).
fn render(template: &str, dir: &Path, values: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(repo().join("deploy/kubernetes/config").join(template))
        .unwrap()
        .replace("/etc/meridian", &dir.display().to_string())
        .replace(
            "/usr/share/meridian/geo",
            &repo().join("geo").display().to_string(),
        )
        // What geoipupdate fetches in a cluster: the test database stands in for it.
        .replace(
            "/var/lib/geoip/GeoLite2-City.mmdb",
            &repo().join("geo/test-city.mmdb").display().to_string(),
        );
    for (k, v) in values {
        text = text.replace(k, v);
    }
    assert!(!text.contains('@'), "unfilled placeholder in {template}");
    text
}

#[test]
fn kubernetes_node_file_templates_pass_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for f in ["origins.toml", "cluster.toml"] {
        let text = std::fs::read_to_string(repo().join("deploy/kubernetes/config").join(f))
            .unwrap()
            .replace("/etc/meridian", &d.display().to_string());
        std::fs::write(d.join(f), text).unwrap();
    }
    // The Secrets: keys made as the kustomization says, a certificate for the site.
    std::fs::create_dir_all(d.join("secrets")).unwrap();
    std::fs::create_dir_all(d.join("tls")).unwrap();
    std::fs::write(
        d.join("secrets/gossip.key"),
        "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n",
    )
    .unwrap();
    std::fs::write(
        d.join("secrets/admin.token"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["www.example.com".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(d.join("tls/www.pem"), cert.pem()).unwrap();
    std::fs::write(d.join("tls/www.key"), key.serialize_pem()).unwrap();
    let edge = render(
        "edge.toml.in",
        d,
        &[
            ("@NODE@", "node-1"),
            ("@IP@", "10.0.0.7"),
            // What `meridian kube-address` prints for the node.
            ("@PUBLIC@", r#"["203.0.113.7", "2001:db8::7"]"#),
            ("@REGION@", "us-west"),
        ],
    );
    let dns = render(
        "dns.toml.in",
        d,
        &[("@NODE@", "meridian-dns-abc"), ("@IP@", "10.1.0.9")],
    );
    std::fs::write(d.join("edge.toml"), edge).unwrap();
    std::fs::write(d.join("dns.toml"), dns).unwrap();
    for node in ["edge.toml", "dns.toml"] {
        let out = meridian()
            .args(["check", "-c"])
            .arg(d.join(node))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{node}: {err}");
        // Users are handed the public addresses, not the node's private one.
        assert!(!err.contains("public_addresses"), "{node}: {err}");
    }
}

#[test]
fn edges_publish_the_nodes_public_address_never_its_private_one() {
    let dir = repo().join("deploy/kubernetes");
    let edges = std::fs::read_to_string(dir.join("edges.yaml")).unwrap();
    let template = std::fs::read_to_string(dir.join("config/edge.toml.in")).unwrap();
    assert!(
        template.contains("public_addresses = @PUBLIC@"),
        "{template}"
    );
    // Every edge pool fills it from its node, with the account that may read the node.
    for pool in edges
        .split("\n---\n")
        .filter(|d| d.contains("kind: DaemonSet"))
    {
        assert!(
            pool.contains("PUBLIC=$(meridian kube-address --node \"$NODE_NAME\")"),
            "{pool}"
        );
        assert!(pool.contains("-e \"s/@PUBLIC@/$PUBLIC/g\""), "{pool}");
        assert!(pool.contains("serviceAccountName: meridian-edge"), "{pool}");
    }
    let rbac = std::fs::read_to_string(dir.join("rbac.yaml")).unwrap();
    assert!(
        rbac.contains("resources: [\"nodes\"]\n    verbs: [\"get\"]"),
        "{rbac}"
    );
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    assert!(kustomization.contains("  - rbac.yaml\n"));
}

#[test]
fn systemd_units_are_hardened_and_reload_on_sighup() {
    for role in ["edge", "dns"] {
        let path = repo().join(format!("deploy/systemd/meridian-{role}.service"));
        let unit = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = unit.lines().map(str::trim).collect();
        for want in [
            "ExecReload=/bin/kill -HUP $MAINPID",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "Restart=on-failure",
            "User=meridian",
            "KillSignal=SIGTERM",
        ] {
            assert!(lines.contains(&want), "{}: no {want}", path.display());
        }
        let node = format!("ExecStart=/usr/local/bin/meridian run -c /etc/meridian/{role}.toml");
        assert!(lines.contains(&node.as_str()), "{}", path.display());
        // systemd's own checker, where there is one: every directive known, every value valid.
        let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
            eprintln!("note: systemd-analyze is not installed; unit syntax not verified");
            continue;
        };
        if !probe.status.success() {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join(format!("meridian-{role}.service"));
        std::fs::write(
            &copy,
            unit.replace("/usr/local/bin/meridian", env!("CARGO_BIN_EXE_meridian")),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy)
            .output()
            .unwrap();
        let complaints = String::from_utf8_lossy(&out.stderr);
        // Outside a booted systemd (a container) it may not know the user; nothing else may fail.
        let real: Vec<&str> = complaints
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("meridian\" not found"))
            .collect();
        assert!(real.is_empty(), "{}: {complaints}", path.display());
    }
}

/// The target triple rustc builds for here.
fn host() -> String {
    let out = Command::new("rustc").arg("-vV").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap()
        .to_string()
}

#[test]
fn the_image_builds_its_dependencies_in_a_layer_of_their_own() {
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    // The dependency layer comes before the sources are copied, and the binary is stripped.
    let deps = dockerfile.find("COPY Cargo.toml Cargo.lock ./").unwrap();
    let sources = dockerfile.find("COPY . .").unwrap();
    assert!(deps < sources);
    assert!(dockerfile.contains("strip target/release/meridian"));
    assert!(!dockerfile.contains("cmake") || dockerfile.contains("no cmake"));
    // What that layer builds: the manifest as the Dockerfile's awk program trims it, over stub
    // sources, must still resolve against the lock file unchanged (--locked).
    let program = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("RUN awk '"))
        .and_then(|l| l.split('\'').next())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("awk")
        .arg(program)
        .arg(repo().join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let manifest = String::from_utf8(out.stdout).unwrap();
    assert!(!manifest.contains("[[bench]]") && !manifest.contains("[[test]]"));
    assert!(manifest.contains("[dependencies]") && manifest.contains("[profile.release]"));
    std::fs::write(dir.path().join("Cargo.toml"), manifest).unwrap();
    std::fs::copy(repo().join("Cargo.lock"), dir.path().join("Cargo.lock")).unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(dir.path().join("src/lib.rs"), "").unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        // Only what this platform builds (the cache here holds no Windows crates).
        .args(["--filter-platform", &host()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let targets: Vec<&str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "meridian")
        .unwrap()["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(targets.contains(&"meridian"), "{targets:?}");
}
