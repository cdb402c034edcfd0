//! A real S3 server for tests (moto's, run by the tests' Python) and a TCP proxy that can cut it off mid-transfer.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// moto's S3 server on a loopback port; stopped when dropped.
pub struct S3Server {
    child: Child,
    pub port: u16,
    python: PathBuf,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl S3Server {
    /// Starts `python -m moto.server` (moto[server] must be installed in that Python).
    pub fn start(python: &Path) -> std::io::Result<S3Server> {
        let port = free_port()?;
        let child = Command::new(python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = S3Server {
            child,
            port,
            python: python.to_path_buf(),
        };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(std::io::Error::other("moto's server did not start in 30 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The variables a client needs: dummy credentials, the endpoint, plain HTTP.
    pub fn env(&self) -> Vec<(String, String)> {
        env_for(&self.endpoint())
    }

    fn boto(&self, code: &str, args: &[&str]) -> std::io::Result<Vec<u8>> {
        let script = format!(
            "import boto3, sys\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n{code}",
            self.endpoint()
        );
        let out = Command::new(&self.python)
            .arg("-c")
            .arg(script)
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(
                String::from_utf8_lossy(&out.stderr).to_string(),
            ));
        }
        Ok(out.stdout)
    }

    pub fn create_bucket(&self, bucket: &str) -> std::io::Result<()> {
        self.boto("s3.create_bucket(Bucket=sys.argv[1])", &[bucket])
            .map(|_| ())
    }

    /// Every key under `prefix`, sorted.
    pub fn keys(&self, bucket: &str, prefix: &str) -> std::io::Result<Vec<String>> {
        let out = self.boto(
            "p = s3.get_paginator('list_objects_v2')\nfor page in p.paginate(Bucket=sys.argv[1], Prefix=sys.argv[2]):\n    for o in page.get('Contents', []):\n        print(o['Key'])",
            &[bucket, prefix],
        )?;
        let mut keys: Vec<String> = String::from_utf8_lossy(&out)
            .lines()
            .map(String::from)
            .collect();
        keys.sort();
        Ok(keys)
    }

    pub fn get(&self, bucket: &str, key: &str) -> std::io::Result<Vec<u8>> {
        self.boto(
            "sys.stdout.buffer.write(s3.get_object(Bucket=sys.argv[1], Key=sys.argv[2])['Body'].read())",
            &[bucket, key],
        )
    }

    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) -> std::io::Result<()> {
        let tmp = std::env::temp_dir().join(format!(
            "relabel-s3-put-{}-{}",
            std::process::id(),
            self.port
        ));
        std::fs::write(&tmp, body)?;
        let r = self.boto(
            "s3.put_object(Bucket=sys.argv[1], Key=sys.argv[2], Body=open(sys.argv[3], 'rb').read())",
            &[bucket, key, tmp.to_str().unwrap_or_default()],
        );
        let _ = std::fs::remove_file(&tmp);
        r.map(|_| ())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The AWS variables for an S3-compatible server at `endpoint`, with dummy credentials.
pub fn env_for(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ALLOW_HTTP", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A TCP proxy in front of a server that "dies" (drops every connection and refuses new ones)
/// once clients have sent it a given number of bytes, until [`CutProxy::resume`].
pub struct CutProxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    limit: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
}

impl CutProxy {
    pub fn start(upstream: u16) -> std::io::Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let cut = Arc::new(AtomicBool::new(false));
        let limit = Arc::new(AtomicU64::new(u64::MAX));
        let sent = Arc::new(AtomicU64::new(0));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, l, s, o) = (cut.clone(), limit.clone(), sent.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for s in [&client, &server] {
                    if let Ok(s) = s.try_clone() {
                        o.lock().unwrap().push(s);
                    }
                }
                let (c1, l1, s1, o1) = (c.clone(), l.clone(), s.clone(), o.clone());
                let (cr, sw) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pipe(cr, sw, Some((c1, l1, s1, o1))));
                std::thread::spawn(move || pipe(server, client, None));
            }
        });
        Ok(CutProxy {
            port,
            cut,
            limit,
            sent,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Dies once clients have sent `bytes` more bytes.
    pub fn cut_after(&self, bytes: u64) {
        self.limit
            .store(self.sent.load(Ordering::SeqCst) + bytes, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Comes back: new connections go through again.
    pub fn resume(&self) {
        self.limit.store(u64::MAX, Ordering::SeqCst);
        self.cut.store(false, Ordering::SeqCst);
    }
}

type Cutter = (
    Arc<AtomicBool>,
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Arc<Mutex<Vec<TcpStream>>>,
);

fn pipe(mut from: TcpStream, mut to: TcpStream, cutter: Option<Cutter>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((cut, limit, sent, open)) = &cutter {
            let total = sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            if cut.load(Ordering::SeqCst) || total > limit.load(Ordering::SeqCst) {
                cut.store(true, Ordering::SeqCst);
                for s in open.lock().unwrap().drain(..) {
                    let _ = s.shutdown(Shutdown::Both);
                }
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
