//! A real S3 server on loopback for the tests: moto in server mode, as
//! installed by scripts/setup into build/s3-venv.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long moto may take to answer its first request (it imports all of
/// its services first: a few seconds on a loaded machine).
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// Attempts at a free port: another process may take the one picked
/// between our probe and moto's bind.
const PORT_ATTEMPTS: usize = 5;

/// A running `moto_server` on 127.0.0.1; killed and reaped on drop.
pub struct MotoServer {
    child: Child,
    address: SocketAddr,
    log: PathBuf,
}

/// `CKPT_MOTO_SERVER` if set, else the one scripts/setup installs.
pub fn moto_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CKPT_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    super::repo_root().join("build/s3-venv/bin/moto_server")
}

impl MotoServer {
    /// Starts a server on a free loopback port and waits until it answers.
    /// Panics (never skips) when moto is missing: CI must run the S3 tests.
    pub fn start() -> MotoServer {
        let binary = moto_server_binary();
        assert!(
            binary.exists(),
            "{} is missing: run ./scripts/setup (it installs moto[server] into build/s3-venv)",
            binary.display()
        );
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            match Self::start_on_free_port(&binary) {
                Ok(server) => return server,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("moto_server did not start:\n{}", failures.join("\n---\n"));
    }

    /// One server for the whole test process, for tests that each use
    /// their own bucket. It is started from a thread that never ends, so
    /// the parent-death signal (see `spawn`) fires only when the process does.
    pub fn shared() -> &'static MotoServer {
        static SHARED: OnceLock<MotoServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            let (sender, receiver) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                sender
                    .send(std::panic::catch_unwind(MotoServer::start))
                    .unwrap();
                loop {
                    std::thread::park();
                }
            });
            match receiver.recv().unwrap() {
                Ok(server) => server,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    fn start_on_free_port(binary: &PathBuf) -> Result<MotoServer, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|error| format!("no free port: {error}"))?
            .port();
        Self::start_on_port(binary, port)
    }

    /// A new, empty server on the port of one that was stopped (moto keeps
    /// nothing), as a remote that went down and came back.
    pub fn start_again(port: u16) -> MotoServer {
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            match Self::start_on_port(&moto_server_binary(), port) {
                Ok(server) => return server,
                Err(failure) => failures.push(failure),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "moto_server did not start again:\n{}",
            failures.join("\n---\n")
        );
    }

    fn start_on_port(binary: &PathBuf, port: u16) -> Result<MotoServer, String> {
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("moto-{port}.log"));
        let log_file = std::fs::File::create(&log).map_err(|error| error.to_string())?;
        let mut command = Command::new(binary);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|error| error.to_string())?)
            .stderr(log_file);
        // SAFETY: prctl is async-signal-safe. It kills moto when the
        // thread that started it dies, even if the test process is SIGKILLed.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|error| format!("cannot run {}: {error}", binary.display()))?;
        let mut server = MotoServer {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        };
        server.wait_until_ready()?;
        Ok(server)
    }

    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!(
                    "moto_server exited ({status}):\n{}",
                    self.log_text()
                ));
            }
            // Any HTTP answer will do: moto answers once its app is loaded.
            if http_request(self.address, "GET", "/", &[], &[]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "moto_server did not answer on {} within {STARTUP_DEADLINE:?}:\n{}",
                    self.address,
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:PORT`, for `AmazonS3Builder::with_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Creates `bucket` (path-style, unsigned: moto accepts both).
    pub fn create_bucket(&self, bucket: &str) {
        let (status, body) = http_request(self.address, "PUT", &format!("/{bucket}"), &[], &[])
            .unwrap_or_else(|error| panic!("PUT /{bucket}: {error}"));
        assert_eq!(
            status,
            200,
            "PUT /{bucket}: {}",
            String::from_utf8_lossy(&body)
        );
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close` and `headers`; the status
/// and body (chunked bodies are returned as sent, with their framing).
pub fn http_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let header_end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(invalid)?;
    let status = std::str::from_utf8(&response[..header_end])
        .ok()
        .and_then(|head| head.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(invalid)?;
    Ok((status, response[header_end + 4..].to_vec()))
}

/// A bucket of its own on the shared server, and the test's own client on
/// it, to read back what the library wrote (keys as the server stores them).
pub struct Bucket {
    pub name: String,
    pub endpoint: String,
    client: object_store::aws::AmazonS3,
    runtime: tokio::runtime::Runtime,
}

impl Bucket {
    pub fn new(name: &str) -> Bucket {
        let server = MotoServer::shared();
        server.create_bucket(name);
        let client = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(server.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_bucket_name(name)
            .build()
            .unwrap();
        Bucket {
            name: name.to_owned(),
            endpoint: server.endpoint(),
            client,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    pub fn url(&self, prefix: &str) -> PathBuf {
        PathBuf::from(format!("s3://{}/{prefix}", self.name))
    }

    /// Every key in the bucket, sorted.
    pub fn keys(&self) -> std::collections::BTreeSet<String> {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        self.runtime.block_on(async {
            self.client
                .list(None)
                .map_ok(|meta| meta.location.to_string())
                .try_collect()
                .await
                .unwrap()
        })
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        use object_store::ObjectStore;
        let key = object_store::path::Path::parse(key).unwrap();
        self.runtime.block_on(async {
            let got = self.client.get(&key).await.unwrap();
            got.bytes().await.unwrap().to_vec()
        })
    }

    /// The keys of the bucket's incomplete multipart uploads, as the
    /// server lists them (ListMultipartUploads; moto does not check
    /// signatures).
    pub fn incomplete_uploads(&self) -> Vec<String> {
        let address = MotoServer::shared().address();
        let (status, body) =
            http_request(address, "GET", &format!("/{}?uploads", self.name), &[], &[])
                .expect("ListMultipartUploads");
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{body}");
        body.split("<Key>")
            .skip(1)
            .map(|rest| rest[..rest.find("</Key>").unwrap()].to_owned())
            .collect()
    }

    pub fn put(&self, key: &str, bytes: Vec<u8>) {
        use object_store::ObjectStore;
        let key = object_store::path::Path::parse(key).unwrap();
        self.runtime
            .block_on(async { self.client.put(&key, bytes.into()).await.unwrap() });
    }
}

/// A writer's configuration on `url`, reaching the server through
/// `endpoint` (the server's own, or a proxy's in front of it), by storage
/// options.
pub fn storage_config(
    url: &std::path::Path,
    endpoint: &str,
    max_to_keep: ckpt_manager::MaxToKeep,
) -> ckpt_manager::Config {
    let mut config = ckpt_manager::Config::new(url, max_to_keep).unwrap();
    for (key, value) in [
        ("aws_endpoint", endpoint),
        ("aws_allow_http", "true"),
        ("aws_region", "us-east-1"),
        ("aws_access_key_id", "testing"),
        ("aws_secret_access_key", "testing"),
    ] {
        config.set_storage_option(key, value).unwrap();
    }
    config
}
