//! `tessera-noise HOST...`: what an attacker without the cluster secret can
//! send to every port of each node: random bytes, truncated frames, a huge
//! length prefix and a burst of connections to the API (7070/tcp) and peer
//! (7947/tcp) ports, and random datagrams to the gossip port (7946/udp).
//! Bounded: a fixed number of sends, each connection given at most 2 s.
//! Prints one line per host with what was sent and how the node reacted.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

const API_PORT: u16 = 7070;
const GOSSIP_PORT: u16 = 7946;
const PEER_PORT: u16 = 7947;
const DATAGRAMS: usize = 300;
const CONNECTIONS_PER_KIND: usize = 20;
const LIMIT: Duration = Duration::from_secs(2);

fn random(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes
}

fn random_len(max: usize) -> usize {
    let mut two = [0u8; 4];
    getrandom::fill(&mut two).expect("the OS random source works");
    1 + u32::from_le_bytes(two) as usize % max
}

/// The byte strings sent on one TCP connection each.
fn tcp_payloads() -> Vec<(&'static str, Vec<u8>)> {
    let mut payloads = Vec::new();
    for _ in 0..CONNECTIONS_PER_KIND {
        payloads.push(("random", random(random_len(64 * 1024))));
    }
    // Handshake frame (u16 length) that promises more than it sends.
    let mut truncated = 1000u16.to_be_bytes().to_vec();
    truncated.extend(random(10));
    payloads.push(("truncated", truncated));
    // Application frame length (u32) far beyond any limit, then silence.
    let mut huge = u32::MAX.to_be_bytes().to_vec();
    huge.extend(random(16));
    payloads.push(("huge-length", huge));
    // An HTTP/2 preface followed by garbage: reaches the gRPC server's framing.
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2.extend(random(4096));
    payloads.push(("http2-garbage", h2));
    payloads.push(("empty", Vec::new()));
    payloads
}

/// Connect, send, read until the node closes (or 2 s pass). Returns whether
/// the node closed the connection on its own.
async fn send_tcp(host: &str, port: u16, payload: &[u8]) -> anyhow::Result<bool> {
    let mut stream = timeout(LIMIT, TcpStream::connect((host, port))).await??;
    // The node may close mid-write; that is an answer, not a failure.
    let _ = timeout(LIMIT, stream.write_all(payload)).await;
    let mut sink = [0u8; 4096];
    let closed = timeout(LIMIT, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    Ok(closed)
}

async fn noise(host: &str) -> String {
    let mut report = Vec::new();
    for port in [API_PORT, PEER_PORT] {
        let (mut sent, mut closed, mut refused) = (0, 0, 0);
        for (_, payload) in tcp_payloads() {
            match send_tcp(host, port, &payload).await {
                Ok(was_closed) => {
                    sent += 1;
                    closed += usize::from(was_closed);
                }
                Err(_) => refused += 1,
            }
        }
        report.push(format!(
            "tcp/{port}: {sent} connections sent garbage, {closed} closed by the node, {refused} not connected"
        ));
    }
    let sent = async {
        let socket = UdpSocket::bind("0.0.0.0:0").await?;
        let mut sent = 0;
        for _ in 0..DATAGRAMS {
            let datagram = random(random_len(60_000));
            socket.send_to(&datagram, (host, GOSSIP_PORT)).await?;
            sent += 1;
        }
        anyhow::Ok(sent)
    }
    .await;
    report.push(match sent {
        Ok(sent) => format!("udp/{GOSSIP_PORT}: {sent} datagrams"),
        Err(e) => format!("udp/{GOSSIP_PORT}: failed: {e}"),
    });
    format!("{host}: {}", report.join("; "))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let hosts: Vec<String> = std::env::args().skip(1).collect();
    if hosts.is_empty() {
        eprintln!("usage: tessera-noise HOST...");
        std::process::exit(2);
    }
    for host in &hosts {
        println!("{}", noise(host).await);
    }
}
