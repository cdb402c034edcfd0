//! Real S3 servers for tests (moto's, run by the tests' Python, and SeaweedFS's `weed mini`) and a TCP proxy that can cut one off mid-transfer.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A client for an S3 server at a loopback endpoint, through boto3 in the tests' Python.
#[derive(Clone)]
pub struct S3Client {
    endpoint: String,
    python: PathBuf,
}

/// moto's S3 server on a loopback port; stopped when dropped.
pub struct S3Server {
    child: Child,
    pub port: u16,
    client: S3Client,
}

impl std::ops::Deref for S3Server {
    type Target = S3Client;
    fn deref(&self) -> &S3Client {
        &self.client
    }
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
            client: S3Client {
                endpoint: format!("http://127.0.0.1:{port}"),
                python: python.to_path_buf(),
            },
        };
        wait_for(port, "moto's server")?;
        Ok(server)
    }
}

fn wait_for(port: u16, what: &str) -> std::io::Result<()> {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(std::io::Error::other(format!(
                "{what} did not start in 60 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

impl S3Client {
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
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
            blake3::hash(self.endpoint.as_bytes()).to_hex()
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

/// SeaweedFS's all-in-one server (`weed mini`) with its data in a folder, so it can be killed
/// and started again with what it held; stopped when dropped.
pub struct WeedServer {
    child: Option<Child>,
    weed: PathBuf,
    dir: PathBuf,
    bucket: String,
    pub port: u16,
    client: S3Client,
}

impl std::ops::Deref for WeedServer {
    type Target = S3Client;
    fn deref(&self) -> &S3Client {
        &self.client
    }
}

impl WeedServer {
    /// Starts `weed mini` on free loopback ports with data in `dir`, credentials `test`/`test`
    /// and `bucket` created.
    pub fn start(weed: &Path, python: &Path, dir: &Path, bucket: &str) -> std::io::Result<Self> {
        let port = free_port()?;
        let mut w = WeedServer {
            child: None,
            weed: weed.to_path_buf(),
            dir: dir.to_path_buf(),
            bucket: bucket.to_string(),
            port,
            client: S3Client {
                endpoint: format!("http://127.0.0.1:{port}"),
                python: python.to_path_buf(),
            },
        };
        w.restart()?;
        Ok(w)
    }

    /// Kills the server at once (no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again) on the same ports and folder.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        std::fs::create_dir_all(&self.dir)?;
        // Every port it opens, chosen free, so it does not collide with a service already here.
        let mut args = vec![
            format!("-dir={}", self.dir.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-bucket={}", self.bucket),
            "-admin.ui=false".into(),
            format!("-s3.port={}", self.port),
        ];
        let ports_file = self.dir.join("relabel-test-ports");
        let others: Vec<u16> = match std::fs::read_to_string(&ports_file) {
            Ok(t) => t
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect(),
            Err(_) => {
                let mut ps = Vec::new();
                while ps.len() < 8 {
                    // grpc ports default to port + 10000: keep the bases low enough.
                    let p = free_port()?;
                    if p < 50000 && !ps.contains(&p) {
                        ps.push(p);
                    }
                }
                std::fs::write(
                    &ports_file,
                    ps.iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                )?;
                ps
            }
        };
        for (flag, p) in [
            "-master.port",
            "-volume.port",
            "-filer.port",
            "-webdav.port",
            "-admin.port",
            "-s3.port.iceberg",
            "-s3.port.lance",
            "-metricsPort",
        ]
        .iter()
        .zip(&others)
        {
            args.push(format!("{flag}={p}"));
        }
        let child = Command::new(&self.weed)
            .arg("mini")
            .args(&args)
            .current_dir(&self.dir)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        wait_for(self.port, "SeaweedFS")?;
        // The S3 port opens before the bucket exists: wait until it lists.
        let t0 = Instant::now();
        while self.keys(&self.bucket, "").is_err() {
            if t0.elapsed() > Duration::from_secs(60) {
                return Err(std::io::Error::other("SeaweedFS's bucket never appeared"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        // Listing is served by the filer before the volume server has loaded what it held, and
        // a read in that window fails with InternalError: wait until every listed object reads.
        for key in self.keys(&self.bucket, "")? {
            let t0 = Instant::now();
            while let Err(e) = self.get(&self.bucket, &key) {
                if t0.elapsed() > Duration::from_secs(60) {
                    return Err(std::io::Error::other(format!(
                        "SeaweedFS lists {key} but could not read it for 60 s: {e}"
                    )));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        Ok(())
    }
}

impl Drop for WeedServer {
    fn drop(&mut self) {
        self.kill();
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
