//! Test support: real `store-node` processes with real certificates, sled files and QUIC.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use store_client::{Client, ClientConfig};

/// One node process and its files.
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub addr: SocketAddr,
    /// Extra TOML appended to the node config (e.g. a durability section).
    pub extra: String,
}

impl TestNode {
    /// Generates certificates (node `n1`, client `app`) and starts the node.
    pub fn start(extra: &str) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        store_node::certs::generate(
            &dir.path().join("certs"),
            &["n1".to_owned()],
            &["app".to_owned()],
        )
        .unwrap();
        let mut node = TestNode {
            dir,
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            extra: extra.to_owned(),
        };
        node.launch();
        node
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write_config(&self) -> PathBuf {
        let text = format!(
            "node_id = \"n1\"\nlisten = \"{}\"\ndata_dir = \"data\"\n{}\n\
             [tls]\nca_cert = \"certs/ca.pem\"\ncert = \"certs/node-n1.pem\"\nkey = \"certs/node-n1.key\"\n",
            self.addr, self.extra
        );
        let path = self.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts the process (on the same port as before, if it ran before) and waits for its ready line.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "already running");
        let config = self.write_config();
        let mut child = Command::new(env!("CARGO_BIN_EXE_store-node"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("FEATURESTORE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.split(" ready on ").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("node did not report ready within 60 s");
        self.addr = addr.parse().unwrap();
        self.child = Some(child);
        self.write_client_config("client.toml", "app");
    }

    /// Writes a client config for certificate `client-<name>` under `certs_dir` (relative to the node dir).
    pub fn write_client_config(&self, file: &str, name: &str) -> PathBuf {
        let text = format!(
            "ca_cert = \"certs/ca.pem\"\ncert = \"certs/client-{name}.pem\"\nkey = \"certs/client-{name}.key\"\n\
             request_timeout_ms = 10000\n[[nodes]]\nname = \"n1\"\naddr = \"{}\"\n",
            self.addr
        );
        let path = self.path().join(file);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::load(self.path().join("client.toml")).unwrap()
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.client_config()).await.unwrap()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        for _ in 0..300 {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().unwrap();
        panic!("node did not exit within 15 s of SIGTERM");
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
