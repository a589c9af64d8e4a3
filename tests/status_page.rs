//! The status page of the admin listener, in a real browser: headless Chromium (Debian's
//! `chromium`) loads `GET /` from the demo's DNS node over the DevTools protocol, and the page
//! must show every member of the demo cluster without one console error, exception or refused
//! resource. Skipped, saying why, where Chromium is missing.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CHROMIUM: &[&str] = &["chromium", "chromium-browser", "google-chrome"];

fn find_chromium() -> Option<String> {
    CHROMIUM.iter().find_map(|name| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|dir| std::path::Path::new(dir).join(name))
            .find(|p| p.is_file())
            .map(|p| p.to_string_lossy().into_owned())
    })
}

/// A browser driven over `--remote-debugging-pipe`: commands on its fd 3, answers and events
/// on its fd 4, each a JSON message ended by a NUL byte.
struct Browser {
    child: Child,
    to: std::fs::File,
    from: mpsc::Receiver<Value>,
    next_id: u64,
    /// Every event seen so far.
    events: Vec<Value>,
    _profile: tempfile::TempDir,
}

/// A pipe whose ends sit at descriptors 10 and above (clear of 3 and 4), closed on exec.
fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own; F_DUPFD_CLOEXEC makes owned copies.
    unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        let high = fds.map(|fd| {
            let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
            assert!(h >= 10);
            libc::close(fd);
            h
        });
        (
            std::os::fd::OwnedFd::from_raw_fd(high[0]),
            std::os::fd::OwnedFd::from_raw_fd(high[1]),
        )
    }
}

impl Browser {
    fn start(path: &str) -> Browser {
        use std::os::fd::AsRawFd;
        let profile = tempfile::tempdir().unwrap();
        let (cmd_read, cmd_write) = pipe();
        let (evt_read, evt_write) = pipe();
        let (r, w) = (cmd_read.as_raw_fd(), evt_write.as_raw_fd());
        let mut command = Command::new(path);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--remote-debugging-pipe",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        drop((cmd_read, evt_write));
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || {
            let mut input = BufReader::new(std::fs::File::from(evt_read));
            let mut message = Vec::new();
            while input.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop();
                if let Ok(v) = serde_json::from_slice::<Value>(&message) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
                message.clear();
            }
        });
        Browser {
            child,
            to: std::fs::File::from(cmd_write),
            from,
            next_id: 0,
            events: Vec::new(),
            _profile: profile,
        }
    }

    /// Sends a command (to a page's session, if given) and waits for its answer.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = s.into();
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer to {method}"));
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            self.events.push(v);
        }
    }

    /// Keeps the events that arrive over `d`.
    fn collect(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Ok(v) = self
            .from
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.events.push(v);
        }
    }

    /// Console errors and warnings, exceptions and browser log errors (refused or failed
    /// resources, policy violations) seen so far.
    fn problems(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| {
                let p = &e["params"];
                match e["method"].as_str()? {
                    "Runtime.exceptionThrown" => {
                        Some(format!("exception: {}", p["exceptionDetails"]))
                    }
                    "Runtime.consoleAPICalled"
                        if matches!(p["type"].as_str(), Some("error" | "warning" | "assert")) =>
                    {
                        Some(format!("console.{}: {}", p["type"], p["args"]))
                    }
                    "Log.entryAdded"
                        if matches!(p["entry"]["level"].as_str(), Some("error" | "warning")) =>
                    {
                        Some(format!("log: {}", p["entry"]))
                    }
                    _ => None,
                }
            })
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A demo that is stopped (SIGINT) when dropped, whatever the test's fate.
struct Demo(Child);

impl Demo {
    /// Stops it with Ctrl-C; whether it exited cleanly.
    fn stop(mut self) -> bool {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGINT);
        }
        self.0.wait().is_ok_and(|s| s.success())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The demo on ports moved by `offset`, its stdout read until it is up.
fn demo(offset: u16) -> Demo {
    let mut demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(["demo", "--port-offset", &offset.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(demo.0.stdout.take().unwrap()).lines();
    for line in out.by_ref().map_while(Result::ok) {
        if line.contains("Ctrl-C stops the demo") {
            std::thread::spawn(move || out.for_each(drop));
            return demo;
        }
    }
    panic!("the demo did not start");
}

fn evaluate(b: &mut Browser, session: &str, expression: &str) -> Value {
    let r = b.call(
        Some(session),
        "Runtime.evaluate",
        json!({ "expression": expression, "returnByValue": true }),
    );
    r["result"]["value"].clone()
}

#[test]
fn the_status_page_shows_every_member_of_the_demo_cluster_without_console_errors() {
    let Some(chromium) = find_chromium() else {
        eprintln!(
            "skipped: no Chromium on PATH (tried {CHROMIUM:?}; Debian: apt-get install chromium)"
        );
        return;
    };
    // Every port below the ephemeral range (32768 up), where other sockets are given theirs.
    let demo = demo(15000);
    let page = "http://127.0.0.10:24090/";
    // Some traffic, so that the edges have requests/s to report.
    for edge in ["127.0.0.11", "127.0.0.12", "127.0.0.13"] {
        let mut s = std::net::TcpStream::connect((edge, 23080)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: demo.meridian.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    let mut b = Browser::start(&chromium);
    let target = b.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
    let attached = b.call(
        None,
        "Target.attachToTarget",
        json!({ "targetId": target["targetId"], "flatten": true }),
    );
    let session = attached["sessionId"].as_str().unwrap().to_string();
    for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
        b.call(Some(&session), domain, json!({}));
    }
    b.call(Some(&session), "Page.navigate", json!({ "url": page }));

    // Gossip may still be converging: wait (bounded) for all four members.
    let want = ["dns", "edge-a", "edge-b", "edge-c"];
    let deadline = Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let shown = evaluate(
            &mut b,
            &session,
            "[...document.querySelectorAll('#members tr[data-member]')].map(r => r.dataset.member + ' ' + r.children[3].textContent).sort()",
        );
        let ids: Vec<String> = shown
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .filter(|s| s.ends_with(" alive"))
            .map(|s| s.split(' ').next().unwrap().to_string())
            .collect();
        if ids == want || Instant::now() > deadline {
            break ids;
        }
        b.collect(Duration::from_millis(500));
    };
    assert_eq!(
        shown, want,
        "the page lists every member of the demo, alive"
    );
    // Every region of the demo's cluster map is on the world plot, with its edges serving.
    let regions = evaluate(
        &mut b,
        &session,
        "[...document.querySelectorAll('#map g[data-region]')].map(g => g.querySelector('text.label').textContent).sort()",
    );
    assert_eq!(
        regions,
        json!(["ap-east 1/1", "eu-west 1/1", "us-west 1/1"]),
        "{regions}"
    );
    let loaded = evaluate(
        &mut b,
        &session,
        "document.body.dataset.loaded === '1' && document.getElementById('problem').hidden",
    );
    assert_eq!(loaded, json!(true), "the page refreshed from /status.json");
    // Let it refresh a few times, then look for anything the browser complained about.
    b.collect(Duration::from_millis(4500));
    let problems = b.problems();
    assert!(problems.is_empty(), "{problems:#?}");

    assert!(demo.stop(), "the demo stops cleanly on Ctrl-C");
}
