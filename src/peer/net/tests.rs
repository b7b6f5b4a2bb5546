//! Loopback tests of [`PeerNet`]: every loop is bounded in count and time.

use std::time::Duration;

use futures::future::join_all;
use tessera_proto::peer::{
    Decide, Entries, EntryRecord, Fetch, Hlc, LiveEntry, Push, entry_record,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::*;
use crate::peer::handshake::noise_handshake;

const PSK: [u8; 32] = [42u8; 32];
const MIB: usize = 1024 * 1024;

/// Echoes: `Fetch` is answered with one entry per requested id, `Push` with
/// the pushed entries; a `Fetch` of "slow" sleeps first, one of "late-big"
/// answers after 700 ms with a 3 MiB entry; `Decide` fails.
struct Echo {
    clock: ClockReading,
    observed: Mutex<Vec<(NodeId, ClockReading)>>,
}

impl Echo {
    fn new(wall_ms: u64) -> Arc<Echo> {
        Arc::new(Echo {
            clock: reading(wall_ms),
            observed: Mutex::new(Vec::new()),
        })
    }

    fn observed_from(&self, node: &str) -> Vec<ClockReading> {
        lock(&self.observed)
            .iter()
            .filter(|(from, _)| &**from == node)
            .map(|(_, reading)| reading.clone())
            .collect()
    }
}

/// An HLC at `wall_ms` and a physical clock 500 ms behind it (an HLC that
/// followed a faster peer).
fn reading(wall_ms: u64) -> ClockReading {
    ClockReading {
        hlc: Hlc {
            wall_ms,
            logical: 3,
        },
        physical_ms: Some(wall_ms - 500),
    }
}

#[async_trait::async_trait]
impl PeerHandler for Echo {
    async fn handle(&self, _from: NodeId, body: Body) -> Body {
        match body {
            Body::Fetch(fetch) => {
                if fetch.ids.first().is_some_and(|id| id == "slow") {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                if fetch.ids.first().is_some_and(|id| id == "late-big") {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    return Body::Entries(Entries {
                        entries: vec![big_record(3 * MIB).0],
                        more: false,
                    });
                }
                Body::Entries(Entries {
                    entries: fetch
                        .ids
                        .into_iter()
                        .map(|id| EntryRecord {
                            id,
                            ..Default::default()
                        })
                        .collect(),
                    more: false,
                })
            }
            // Answer with a digest of each payload: large frames one way only
            // (crypto is slow in unoptimized test builds).
            Body::Push(push) => Body::Entries(Entries {
                entries: push
                    .entries
                    .into_iter()
                    .map(|entry| EntryRecord {
                        id: digest(&payload_of_entry(entry)),
                        ..Default::default()
                    })
                    .collect(),
                more: false,
            }),
            Body::Decide(_) => error_body(tonic::Code::NotFound, "no such ticket"),
            _ => error_body(tonic::Code::Unimplemented, "not in this test"),
        }
    }

    fn clock_reading(&self) -> ClockReading {
        self.clock.clone()
    }

    fn observe_clock(&self, from: &NodeId, remote: ClockReading) {
        lock(&self.observed).push((Arc::clone(from), remote));
    }
}

fn config(name: &str, psk: [u8; 32], max_frame_bytes: usize) -> PeerNetConfig {
    PeerNetConfig::new(
        Arc::from(name),
        1,
        "127.0.0.1:0".parse().unwrap(),
        psk,
        max_frame_bytes,
    )
}

async fn start(name: &str) -> (Arc<PeerNet>, Arc<Echo>) {
    start_with(config(name, PSK, 4 * MIB)).await
}

async fn start_with(config: PeerNetConfig) -> (Arc<PeerNet>, Arc<Echo>) {
    let echo = Echo::new(1000 + config.node_id.len() as u64);
    let net = PeerNet::start(config, echo.clone()).await.unwrap();
    (net, echo)
}

fn id(name: &str) -> NodeId {
    Arc::from(name)
}

/// Tell each net where the others are.
fn introduce(nets: &[(&str, &Arc<PeerNet>)]) {
    for (_, net) in nets {
        for (name, other) in nets {
            net.set_peer_addr(id(name), other.local_addr());
        }
    }
}

fn fetch(ids: &[&str]) -> Body {
    Body::Fetch(Fetch {
        ids: ids.iter().map(|s| s.to_string()).collect(),
    })
}

fn entry_ids(body: Body) -> Vec<String> {
    match body {
        Body::Entries(entries) => entries.entries.into_iter().map(|e| e.id).collect(),
        _ => panic!("expected Entries"),
    }
}

fn big_record(payload_bytes: usize) -> (EntryRecord, Vec<u8>) {
    let payload: Vec<u8> = (0..payload_bytes).map(|i| (i % 251) as u8).collect();
    let record = EntryRecord {
        id: "TGT-big".into(),
        retain_until_ms: 1,
        state: Some(entry_record::State::Live(LiveEntry {
            kind: "TGT".into(),
            payload: payload.clone().into(),
            ..Default::default()
        })),
    };
    (record, payload)
}

fn big_push(payload_bytes: usize) -> (Body, Vec<u8>) {
    let (record, payload) = big_record(payload_bytes);
    (
        Body::Push(Push {
            entries: vec![record],
        }),
        payload,
    )
}

fn payload_of_entry(entry: EntryRecord) -> Vec<u8> {
    match entry.state {
        Some(entry_record::State::Live(live)) => live.payload.to_vec(),
        _ => Vec::new(),
    }
}

fn digest(payload: &[u8]) -> String {
    format!("{}:{}", payload.len(), blake3::hash(payload).to_hex())
}

/// Wait (bounded) until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_flow_both_ways_over_one_pipelined_connection() {
    let (a, _) = start("a").await;
    let (b, _) = start("b").await;
    introduce(&[("a", &a), ("b", &b)]);

    assert_eq!(
        entry_ids(a.call(&id("b"), fetch(&["x"])).await.unwrap()),
        ["x"]
    );
    assert_eq!(
        entry_ids(b.call(&id("a"), fetch(&["y"])).await.unwrap()),
        ["y"]
    );
    assert_eq!(a.stats().connections_open, 1);
    assert_eq!(b.stats().connections_open, 1);
    assert_eq!(a.stats().handshakes_ok, 1);
    assert_eq!(b.stats().handshakes_ok, 1);
    assert_eq!(a.peer_generation(&id("b")), Some(1));

    // 1,000 calls at once, half each way, all on the one connection.
    let calls = (0..1000).map(|i| {
        let (from, to) = if i % 2 == 0 { (&a, "b") } else { (&b, "a") };
        let ticket = format!("ST-{i}");
        async move {
            let answer = from.call(&id(to), fetch(&[&ticket])).await.unwrap();
            assert_eq!(entry_ids(answer), [ticket]);
        }
    });
    join_all(calls).await;
    assert_eq!(a.stats().connections_open, 1);
    assert_eq!(b.stats().connections_open, 1);
    assert_eq!(a.stats().handshakes_ok, 1);
    assert_eq!(a.stats().calls_failed, 0);
    assert_eq!(b.stats().requests_refused, 0);

    // An error reply surfaces as Remote.
    let decide = Body::Decide(Decide {
        id: "ST-1".into(),
        op: None,
    });
    let refused = a.call(&id("b"), decide).await;
    assert!(
        matches!(&refused, Err(PeerError::Remote { code: 5, .. })),
        "{refused:?}"
    );
    assert_eq!(a.stats().calls_failed, 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_cross_and_oversized_ones_are_rejected() {
    // Unoptimized crypto runs at about 1 MiB/s: give the big frame time.
    let mut cfg = config("a", PSK, 8 * MIB);
    cfg.call_timeout = Duration::from_secs(60);
    let (a, _) = start_with(cfg).await;
    let (b, _) = start_with(config("b", PSK, 4 * MIB)).await;
    let (c, _) = start_with(config("c", PSK, 256 * 1024)).await;
    let (d, _) = start_with(config("d", PSK, 256 * 1024)).await;
    introduce(&[("a", &a), ("b", &b), ("c", &c), ("d", &d)]);

    // ~3 MiB: many Noise transport messages in one frame.
    let (push, payload) = big_push(3 * MIB);
    let answer = a.call(&id("b"), push).await.unwrap();
    assert_eq!(entry_ids(answer), [digest(&payload)]);

    // 300 KiB is within a's limit but over d's: d refuses the frame and
    // closes the connection.
    let (push, _) = big_push(300 * 1024);
    let refused = a.call(&id("d"), push).await;
    assert!(matches!(&refused, Err(PeerError::Lost(..))), "{refused:?}");
    assert_eq!(d.stats().frames_rejected, 1);
    eventually("d closed the connection", || {
        d.stats().connections_open == 0
    })
    .await;

    // d keeps serving: c, and a again over a fresh connection.
    assert_eq!(
        entry_ids(c.call(&id("d"), fetch(&["c1"])).await.unwrap()),
        ["c1"]
    );
    assert_eq!(
        entry_ids(a.call(&id("d"), fetch(&["a1"])).await.unwrap()),
        ["a1"]
    );

    // Over our own limit: refused locally, the connection stays up.
    let (push, _) = big_push(300 * 1024);
    let local = c.call(&id("d"), push).await;
    assert!(matches!(&local, Err(PeerError::Protocol(..))), "{local:?}");
    assert_eq!(
        entry_ids(c.call(&id("d"), fetch(&["c2"])).await.unwrap()),
        ["c2"]
    );
    assert_eq!(c.stats().connections_open, 1);
    assert_eq!(c.stats().handshakes_ok, 1);
    assert_eq!(d.stats().frames_rejected, 1);
    for net in [a, b, c, d] {
        net.shutdown().await;
    }
}

#[tokio::test]
async fn a_wrong_psk_is_rejected_on_both_sides() {
    let (a, _) = start("a").await;
    let (b, _) = start_with(config("b", [7u8; 32], 4 * MIB)).await;
    introduce(&[("a", &a), ("b", &b)]);

    let result = a.call(&id("b"), fetch(&["x"])).await;
    assert!(
        matches!(&result, Err(PeerError::Unreachable(..))),
        "{result:?}"
    );
    let result = b.call(&id("a"), fetch(&["x"])).await;
    assert!(
        matches!(&result, Err(PeerError::Unreachable(..))),
        "{result:?}"
    );
    eventually("both sides count both refusals", || {
        a.stats().handshakes_rejected == 2 && b.stats().handshakes_rejected == 2
    })
    .await;
    for net in [&a, &b] {
        let stats = net.stats();
        assert_eq!(stats.handshakes_ok, 0);
        assert_eq!(stats.connections_open, 0);
        assert_eq!(stats.calls_failed, 1);
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_listen_port_is_rejected_and_service_goes_on() {
    let mut cfg = config("b", PSK, 4 * MIB);
    cfg.handshake_timeout = Duration::from_millis(300);
    let (b, _) = start_with(cfg).await;
    let (a, _) = start("a").await;
    introduce(&[("a", &a), ("b", &b)]);
    let addr = b.local_addr();

    let mut random = vec![0u8; 4096];
    getrandom::fill(&mut random).unwrap();
    let attempts: Vec<Vec<u8>> = vec![
        random.clone(),
        // A huge u16 handshake length, then a little data.
        [&[0xff, 0xff][..], &random[..100]].concat(),
        // A huge u32 (as if a transport frame came first).
        vec![0xff, 0xff, 0xff, 0xff],
        // A truncated handshake message.
        [&[0x00, 0x30][..], &random[..10]].concat(),
        // Nothing at all.
        Vec::new(),
    ];
    for bytes in attempts {
        let mut raw = TcpStream::connect(addr).await.unwrap();
        let _ = raw.write_all(&bytes).await;
        drop(raw);
    }
    // A silent connection that stays open: the handshake timeout ends it.
    let silent = TcpStream::connect(addr).await.unwrap();

    // A real first handshake message with the right key, then nothing.
    let mut half = TcpStream::connect(addr).await.unwrap();
    let params: snow::params::NoiseParams = handshake::NOISE_PATTERN.parse().unwrap();
    let mut initiator = snow::Builder::new(params)
        .psk(0, &PSK)
        .unwrap()
        .prologue(handshake::PROLOGUE)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut message = [0u8; 256];
    let n = initiator.write_message(&[], &mut message).unwrap();
    let mut framed = (n as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&message[..n]);
    half.write_all(&framed).await.unwrap();
    drop(half);

    // A full handshake with the right key, then garbage instead of a Hello.
    let mut keyed = TcpStream::connect(addr).await.unwrap();
    let (_sealer, _opener) = noise_handshake(&mut keyed, Role::Initiator, &PSK)
        .await
        .unwrap();
    keyed.write_all(&random[..1000]).await.unwrap();

    eventually("every bad connection counted", || {
        b.stats().handshakes_rejected >= 8
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(b.stats().handshakes_rejected, 8);
    assert_eq!(b.stats().handshakes_ok, 0);
    drop(silent);
    drop(keyed);

    // Still serving a real peer.
    assert_eq!(
        entry_ids(a.call(&id("b"), fetch(&["ok"])).await.unwrap()),
        ["ok"]
    );
    assert_eq!(b.stats().handshakes_ok, 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_links_fail_fast_and_heal() {
    let (a, _) = start("a").await;
    let (b, _) = start("b").await;
    introduce(&[("a", &a), ("b", &b)]);
    a.call(&id("b"), fetch(&["x"])).await.unwrap();

    a.block(id("b"));
    let started = Instant::now();
    let result = a.call(&id("b"), fetch(&["x"])).await;
    assert!(
        matches!(&result, Err(PeerError::Unreachable(..))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(a.stats().connections_open, 0);
    eventually("b saw the connection close", || {
        b.stats().connections_open == 0
    })
    .await;
    // b's calls are refused by a, quickly (a refuses the connection once
    // it knows who dialed, after the handshake: b's request may be sent).
    let started = Instant::now();
    let result = b.call(&id("a"), fetch(&["x"])).await;
    assert!(
        matches!(
            &result,
            Err(PeerError::Unreachable(..) | PeerError::Lost(..))
        ),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    a.unblock(&id("b"));
    assert_eq!(
        entry_ids(a.call(&id("b"), fetch(&["p"])).await.unwrap()),
        ["p"]
    );
    assert_eq!(
        entry_ids(b.call(&id("a"), fetch(&["q"])).await.unwrap()),
        ["q"]
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_peer_fails_calls_and_a_restarted_one_is_redialed() {
    let (a, _) = start("a").await;
    let (b, _) = start("b").await;
    introduce(&[("a", &a), ("b", &b)]);
    a.call(&id("b"), fetch(&["x"])).await.unwrap();
    let addr = b.local_addr();

    let pending = {
        let a = Arc::clone(&a);
        tokio::spawn(async move { a.call(&id("b"), fetch(&["slow"])).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    b.shutdown().await;
    drop(b);
    let result = pending.await.unwrap();
    assert!(
        matches!(&result, Err(PeerError::Lost(..) | PeerError::Timeout(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    let result = a.call(&id("b"), fetch(&["x"])).await;
    assert!(
        matches!(
            &result,
            Err(PeerError::Unreachable(..) | PeerError::Timeout(_))
        ),
        "{result:?}"
    );

    // Same address, new run.
    let mut cfg = config("b", PSK, 4 * MIB);
    cfg.listen = addr;
    cfg.generation = 2;
    let (b2, _) = start_with(cfg).await;
    assert_eq!(
        entry_ids(a.call(&id("b"), fetch(&["again"])).await.unwrap()),
        ["again"]
    );
    assert_eq!(a.peer_generation(&id("b")), Some(2));
    a.shutdown().await;
    b2.shutdown().await;
}

/// A call whose connection breaks after the request left may have been
/// carried out by the peer: it must not be reported as one that never
/// reached it (replication decides again only on the latter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cut_off_after_it_was_sent_is_not_called_unreachable() {
    let (a, _) = start("a").await;
    let (b, _) = start("b").await;
    introduce(&[("a", &a), ("b", &b)]);
    a.call(&id("b"), fetch(&["x"])).await.unwrap();

    let pending = {
        let a = Arc::clone(&a);
        tokio::spawn(async move { a.call(&id("b"), fetch(&["slow"])).await })
    };
    eventually("b is handling the call", || {
        b.inner
            .state
            .lock()
            .unwrap()
            .conns
            .values()
            .any(|c| !c.is_idle())
    })
    .await;
    b.block(id("a"));
    let result = pending.await.unwrap();
    assert!(matches!(&result, Err(PeerError::Lost(..))), "{result:?}");
    a.shutdown().await;
    b.shutdown().await;
}

/// A superseded connection closes once quiet, but never with responses
/// still to write: every call on it gets its answer. (48 answers of 3 MiB
/// come due together, far more than one drain check's worth of writing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_connection_writes_its_last_responses_before_closing() {
    // Writing 144 MiB takes seconds in a debug build: a waits for all of it.
    let mut cfg = config("a", PSK, 4 * MIB);
    cfg.call_timeout = Duration::from_secs(60);
    let (a, _) = start_with(cfg).await;
    let (b, _) = start("b").await;
    introduce(&[("a", &a), ("b", &b)]);
    a.call(&id("b"), fetch(&["x"])).await.unwrap();

    let pending: Vec<_> = (0..48)
        .map(|_| {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.call(&id("b"), fetch(&["late-big"])).await })
        })
        .collect();
    eventually("b is handling the calls", || {
        let st = b.inner.state.lock().unwrap();
        st.conns
            .values()
            .any(|c| c.inbound.available_permits() == MAX_INBOUND_REQUESTS - pending.len())
    })
    .await;
    // As if a simultaneous dial had won: both ends stop sending new calls on
    // this connection and drain it.
    for net in [&a, &b] {
        for conn in net.inner.state.lock().unwrap().conns.values() {
            conn.supersede();
        }
    }
    let (expected, _) = big_record(3 * MIB);
    for call in pending {
        match call.await.unwrap() {
            Ok(Body::Entries(entries)) => assert!(entries.entries == [expected.clone()]),
            other => panic!("a response was lost: {:?}", other.map(|_| "a body")),
        }
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_run_of_a_peer_replaces_the_old_connection() {
    let (a, _) = start("a").await;
    let (b1, _) = start("b").await;
    introduce(&[("a", &a), ("b", &b1)]);
    a.call(&id("b"), fetch(&["x"])).await.unwrap();
    assert_eq!(a.peer_generation(&id("b")), Some(1));

    // Another run of "b" (as after a crash the old socket did not notice)
    // connects to a: the old connection is dropped, calls go to the new run.
    let mut cfg = config("b", PSK, 4 * MIB);
    cfg.generation = 2;
    let (b2, _) = start_with(cfg).await;
    b2.set_peer_addr(id("a"), a.local_addr());
    b2.call(&id("a"), fetch(&["y"])).await.unwrap();
    assert_eq!(a.peer_generation(&id("b")), Some(2));
    eventually("the old run's connection closed", || {
        b1.stats().connections_open == 0 && a.stats().connections_open == 1
    })
    .await;
    assert_eq!(
        entry_ids(a.call(&id("b"), fetch(&["z"])).await.unwrap()),
        ["z"]
    );
    for net in [a, b1, b2] {
        net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_times_out_and_the_next_call_redials() {
    let mut cfg = config("a", PSK, 4 * MIB);
    cfg.call_timeout = Duration::from_secs(1);
    let (a, _) = start_with(cfg).await;
    let (b, _) = start("b").await;
    introduce(&[("a", &a), ("b", &b)]);
    a.call(&id("b"), fetch(&["x"])).await.unwrap();

    let result = a.call(&id("b"), fetch(&["slow"])).await;
    assert!(matches!(&result, Err(PeerError::Timeout(_))), "{result:?}");
    assert_eq!(
        entry_ids(a.call(&id("b"), fetch(&["y"])).await.unwrap()),
        ["y"]
    );
    assert_eq!(a.stats().handshakes_ok, 2);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn clock_readings_travel_with_every_frame() {
    let (a, echo_a) = start("a").await;
    let (b, echo_b) = start("bb").await;
    introduce(&[("a", &a), ("bb", &b)]);
    a.call(&id("bb"), fetch(&["x"])).await.unwrap();

    // Hello and request from a; Hello and response from bb: HLC and
    // physical reading alike.
    let (a_clock, b_clock) = (reading(1001), reading(1002));
    assert_eq!(echo_b.observed_from("a"), [a_clock.clone(), a_clock]);
    assert_eq!(echo_a.observed_from("bb"), [b_clock.clone(), b_clock]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn wrong_or_own_addresses_are_refused() {
    let (a, _) = start("a").await;
    let (b, _) = start("b").await;
    // a's own address under its own name, and b's address under another name.
    a.set_peer_addr(id("a"), a.local_addr());
    a.set_peer_addr(id("c"), b.local_addr());
    let result = a.call(&id("a"), fetch(&["x"])).await;
    assert!(
        matches!(&result, Err(PeerError::Unreachable(..))),
        "{result:?}"
    );
    let result = a.call(&id("c"), fetch(&["x"])).await;
    assert!(
        matches!(&result, Err(PeerError::Unreachable(..))),
        "{result:?}"
    );
    let result = a.call(&id("nowhere"), fetch(&["x"])).await;
    assert!(
        matches!(&result, Err(PeerError::Unreachable(..))),
        "{result:?}"
    );
    eventually("nothing left open", || a.stats().connections_open == 0).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_settle_on_one_connection() {
    for round in 0..5 {
        let (a, _) = start("a").await;
        let (b, _) = start("b").await;
        introduce(&[("a", &a), ("b", &b)]);
        let calls = (0..100).map(|i| {
            let (from, to) = if i % 2 == 0 { (&a, "b") } else { (&b, "a") };
            let ticket = format!("ST-{round}-{i}");
            async move {
                let answer = from.call(&id(to), fetch(&[&ticket])).await.unwrap();
                assert_eq!(entry_ids(answer), [ticket]);
            }
        });
        join_all(calls).await;
        eventually("one connection each side", || {
            a.stats().connections_open == 1 && b.stats().connections_open == 1
        })
        .await;
        assert_eq!(
            entry_ids(a.call(&id("b"), fetch(&["z"])).await.unwrap()),
            ["z"]
        );
        assert_eq!(
            entry_ids(b.call(&id("a"), fetch(&["z"])).await.unwrap()),
            ["z"]
        );
        assert_eq!(a.stats().calls_failed + b.stats().calls_failed, 0);
        a.shutdown().await;
        b.shutdown().await;
    }
}

#[test]
fn the_warning_limiter_allows_one_line_per_interval_per_ip() {
    let mut limiter = WarnLimiter::default();
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    let other: IpAddr = "10.0.0.2".parse().unwrap();
    let start = Instant::now();
    assert_eq!(limiter.admit(ip, start), Some(0));
    assert_eq!(limiter.admit(ip, start + Duration::from_secs(1)), None);
    assert_eq!(limiter.admit(ip, start + Duration::from_secs(2)), None);
    assert_eq!(limiter.admit(other, start), Some(0));
    assert_eq!(limiter.admit(ip, start + WARN_INTERVAL), Some(2));
}
