//! The README's "Quick start for your own domain" runs as written: every `sh` block of the
//! section, in order, in an empty directory, with this build's `meridian` on the PATH and the
//! repository's test GeoIP database standing in for a real one.

use std::path::Path;
use std::process::Command;

fn section(readme: &str) -> &str {
    let start = readme
        .find("## Quick start for your own domain")
        .expect("the README has the quick start section");
    let rest = &readme[start + 3..];
    let end = rest.find("\n## ").map_or(rest.len(), |e| e);
    &rest[..end]
}

fn sh_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```sh" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            out.push(block.join("\n"));
        }
    }
    out
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_quick_start_runs_as_written() {
    for tool in ["bash", "openssl", "base64", "head"] {
        if !have(tool) {
            eprintln!("skipped: the quick start needs {tool}, which this machine lacks");
            return;
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = sh_blocks(section(&readme));
    assert!(blocks.len() >= 5, "{blocks:?}");
    let script = blocks.join("\n");
    let bin = Path::new(env!("CARGO_BIN_EXE_meridian")).parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("GEOIP", root.join("geo/test-city.mmdb"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the quick start failed:\n{stdout}\n{stderr}"
    );
    // The London user goes to the London edge.
    assert!(stdout.contains("lon-1"), "{stdout}");
    assert!(stdout.contains("203.0.113.10"), "{stdout}");
}
