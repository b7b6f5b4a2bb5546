//! `tessera serve` processes started by a multi-process test (the CLI and ECS
//! clusters): killed and reaped when the test ends, passed or not.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Child;

/// The nodes of one test, in start order.
#[derive(Default)]
pub struct Fleet {
    /// `None` once a test has taken a node out (to kill it itself).
    pub nodes: Vec<Option<Child>>,
    /// Each node's API address, `http://ip:port`.
    pub api: Vec<String>,
    /// Each node's log file, for tests that read what a node said.
    pub logs: Vec<PathBuf>,
}

impl Fleet {
    /// What node `n` has logged so far (empty if it logs nowhere).
    pub fn log(&self, n: usize) -> String {
        self.logs
            .get(n)
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP port of `ip` that is free now.
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
