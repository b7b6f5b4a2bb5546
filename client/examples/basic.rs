//! A CAS-style login, service validation and logout against a running cluster.
//!
//! ```sh
//! TESSERA_ADDR=http://127.0.0.1:7070,http://127.0.0.1:7071 \
//! TESSERA_API_TOKEN="$(cat api-token)" \
//!     cargo run -p tessera-client --example basic
//! ```
//!
//! `TESSERA_ADDR` is a comma-separated list of node addresses (default
//! `http://127.0.0.1:7070`); `TESSERA_API_TOKEN` the cluster's API token (a
//! cluster requires it; a single node without one does not). The service ticket is created through the first
//! address and validated through the second, as happens when a load balancer
//! spreads a CAS cluster's requests over Tessera nodes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tessera_client::{Client, ClientConfig, Error, NewTicket};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let addrs: Vec<String> = std::env::var("TESSERA_ADDR")
        .unwrap_or_else(|_| "http://127.0.0.1:7070".to_owned())
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    let config = ClientConfig {
        token: std::env::var("TESSERA_API_TOKEN").ok(),
        ..ClientConfig::default()
    };
    let client = Client::connect_with(&addrs, config.clone()).await?;
    // A client that talks to the second node first (the same one if only one was given).
    let second =
        Client::connect_with(addrs.iter().cycle().skip(1).take(addrs.len()), config).await?;

    let suffix = unique_suffix();
    let tgt_id = format!("TGT-1-{suffix}-example");
    let st_id = format!("ST-1-{suffix}-example");

    // Login: a ticket-granting ticket with an 8 h hard limit and 2 h idle timeout.
    let tgt = client
        .put(
            NewTicket::new(&tgt_id, Duration::from_secs(8 * 3600))
                .principal("casuser")
                .idle(Duration::from_secs(2 * 3600))
                .payload(b"serialized authentication".to_vec()),
        )
        .await?;
    println!("put     {tgt:?}");

    // A service ticket granted by it: 10 s, usable once.
    let st = client
        .put(
            NewTicket::new(&st_id, Duration::from_secs(10))
                .parent(&tgt_id)
                .max_uses(1)
                .payload(b"https://app.example.org/".to_vec()),
        )
        .await?;
    println!("put     {st:?}");

    // Validation, through another node: read-your-writes holds everywhere, so
    // no retry is needed.
    let validated = second.consume(&st_id).await?;
    println!(
        "consume {validated:?} via {}",
        second.addresses().first().copied().unwrap_or_default()
    );

    // A second validation of the same service ticket must fail.
    match second.consume(&st_id).await {
        Err(e) if e.is_not_found() => println!("consume again: {e} (as expected)"),
        other => println!("consume again: unexpected {other:?}"),
    }

    let sessions = client.sessions_for("casuser").await?;
    println!("sessions_for casuser: {} session(s)", sessions.len());

    // Logout: the TGT and everything it granted.
    let deleted = client.delete(&tgt_id).await?;
    println!("delete  {deleted} ticket(s)");
    Ok(())
}

/// Enough uniqueness for an example run; real ids come from a CSPRNG.
fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos:x}{:x}", std::process::id())
}
