//! `provider: local`: starts llama.cpp's `llama-server` on a free loopback port, waits until it
//! is healthy, and stops it when dropped (the node finished, failed or was cancelled); if relabel
//! itself is killed, the kernel stops the server too (parent-death signal).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::endpoint::{llama_server_path, Endpoint};

pub struct LocalServer {
    child: tokio::process::Child,
    port: u16,
}

impl LocalServer {
    /// Starts the server for `endpoint` and waits (up to 120 s) until `/health` answers 200.
    pub async fn start(endpoint: &Endpoint, log: Option<&Path>) -> Result<LocalServer, String> {
        let bin = llama_server_path();
        let model = endpoint.local_weights()?;
        for (what, p) in [("llama-server", &bin), ("the local model", &model)] {
            if !p.exists() {
                return Err(format!(
                    "provider: local needs {what} at {}; run `cargo xtask setup` (it builds and fetches both into $RELABEL_HOME or ~/.cache/relabel)",
                    p.display()
                ));
            }
        }
        let port = free_port().map_err(|e| format!("finding a free loopback port: {e}"))?;
        let slots = endpoint.max_concurrency.clamp(1, 8);
        let threads = endpoint.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(2)
        });
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.arg("-m")
            .arg(&model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-c", &(2048 * slots).to_string()])
            .args(["-np", &slots.to_string()])
            .args(["-t", &threads.to_string()])
            .args(["--alias", &endpoint.model])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match log.map(std::fs::File::create) {
            Some(Ok(f)) => {
                let f2 = f.try_clone().map_err(|e| e.to_string())?;
                cmd.stdout(f).stderr(f2);
            }
            _ => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        // Its own process group (Ctrl-C goes to relabel, which stops it), and SIGKILL if relabel dies.
        cmd.process_group(0);
        relabel_engine::child::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let mut server = LocalServer { child, port };
        let t0 = Instant::now();
        let health = format!("http://127.0.0.1:{port}/health");
        let probe = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| e.to_string())?;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                let tail = log
                    .map(|p| format!("\n{}", relabel_engine::child::log_tail(p, 15)))
                    .unwrap_or_default();
                return Err(format!(
                    "llama-server exited before it was ready ({status}){tail}"
                ));
            }
            if let Ok(r) = probe.get(&health).send().await {
                if r.status().is_success() {
                    tracing::info!(
                        port,
                        seconds = t0.elapsed().as_secs_f64(),
                        "local llama-server ready"
                    );
                    return Ok(server);
                }
            }
            if t0.elapsed() > Duration::from_secs(120) {
                return Err("llama-server did not become healthy within 120 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // The whole group, in case the server ever forks.
            // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
        let _ = self.child.start_kill();
    }
}

fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
