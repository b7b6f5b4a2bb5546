//! Client subcommands: one call each through `tessera-client`.

use std::io::{Read, Write};
use std::path::Path;

use bytes::Bytes;
use tessera_client::{
    Client, ClientConfig, ClientTls, Error, EventStream, EventType, ListFilter, NewTicket,
    NodeStats, Ticket, TicketUpdate, WatchFilter,
};

use super::output::{
    counts_json, counts_text, member_json, member_line, ticket_json, ticket_line, ticket_text,
    watch_line,
};
use super::{
    Command, Exit, GlobalArgs, ListArgs, PayloadArgs, PutArgs, UpdateArgs, WatchArgs, WatchEventArg,
};
use crate::config::MAX_PAYLOAD_LIMIT;
use crate::secret::ApiToken;

/// Run one client subcommand and report how it ended.
pub async fn run(global: &GlobalArgs, command: Command) -> Exit {
    match call(global, command).await {
        Ok(exit) => exit,
        Err(failure) => {
            eprintln!("tessera: {}", failure.message);
            failure.exit
        }
    }
}

/// A failed subcommand: what to say and which exit code.
struct Failure {
    exit: Exit,
    message: String,
}

impl Failure {
    fn invalid(message: impl Into<String>) -> Failure {
        Failure {
            exit: Exit::InvalidInput,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        let exit = match &error {
            Error::NotFound(_)
            | Error::VersionMismatch(_)
            | Error::AlreadyExists(_)
            | Error::FailedPrecondition(_) => Exit::NotThere,
            // A missing or wrong token is the caller's configuration, like a bad address.
            Error::InvalidArgument(_) | Error::InvalidAddress(_) | Error::Unauthenticated(_) => {
                Exit::InvalidInput
            }
            _ => Exit::Failed,
        };
        let message = match &error {
            Error::Unauthenticated(_) => {
                format!("{error} (give the cluster's API token: TESSERA_API_TOKEN or --token-file)")
            }
            _ => error.to_string(),
        };
        Failure { exit, message }
    }
}

/// The API token from `--token-file`, else from `TESSERA_API_TOKEN`, checked by
/// the rules a node applies (so a short or world-readable one is refused here).
fn api_token(global: &GlobalArgs) -> Result<Option<ApiToken>, Failure> {
    if let Some(path) = &global.token_file {
        return ApiToken::from_file(path)
            .map(Some)
            .map_err(|e| Failure::invalid(format!("invalid setting --token-file: {e}")));
    }
    match std::env::var_os("TESSERA_API_TOKEN") {
        Some(value) => ApiToken::new(value.as_encoded_bytes())
            .map(Some)
            .map_err(|e| Failure::invalid(format!("invalid setting TESSERA_API_TOKEN: {e}"))),
        None => Ok(None),
    }
}

/// The TLS settings of the client flags: the files read now, so a missing one
/// is a clear error before any call.
fn client_tls(global: &GlobalArgs) -> Result<ClientTls, Failure> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            Failure::invalid(format!("invalid setting {flag}: {}: {e}", path.display()))
        })
    };
    // TESSERA_CA holds the CA as PEM text, for containers that get it as a
    // variable (an ECS task's health check) rather than as a file.
    let ca_pem = match (&global.ca_file, std::env::var_os("TESSERA_CA")) {
        (Some(path), _) => Some(read("--ca-file", path)?),
        (None, Some(pem)) => Some(pem.as_encoded_bytes().to_vec()),
        (None, None) => None,
    };
    let identity_pem = match (&global.cert_file, &global.key_file) {
        (Some(cert), Some(key)) => Some((read("--cert-file", cert)?, read("--key-file", key)?)),
        _ => None,
    };
    Ok(ClientTls {
        ca_pem,
        identity_pem,
    })
}

async fn call(global: &GlobalArgs, command: Command) -> Result<Exit, Failure> {
    let config = ClientConfig {
        call_timeout: global.timeout,
        token: api_token(global)?.map(|t| t.expose().to_owned()),
        tls: client_tls(global)?,
        ..ClientConfig::default()
    };
    let config_for_watch = config.clone();
    let client = Client::connect_with(&global.addr, config).await?;
    let json = global.json;
    match command {
        Command::Serve(_) => unreachable!("serve is not a client command"),
        Command::Put(args) => print_ticket(&client.put(new_ticket(args)?).await?, json),
        Command::Get { id } => print_ticket(&client.get(&id).await?, json),
        Command::Touch { id } => print_ticket(&client.touch(&id).await?, json),
        Command::Consume { id } => print_ticket(&client.consume(&id).await?, json),
        Command::Update(args) => {
            let id = args.id.clone();
            print_ticket(&client.update(&id, ticket_update(args)?).await?, json)
        }
        Command::Delete { id } => {
            let deleted = client.delete(&id).await?;
            print_deleted(deleted, json);
            // Nothing deleted means the ticket was not there.
            return Ok(if deleted == 0 {
                Exit::NotThere
            } else {
                Exit::Ok
            });
        }
        Command::DeleteAll => print_deleted(client.delete_all().await?, json),
        Command::DeleteFor { principal } => {
            print_deleted(client.delete_for(&principal).await?, json)
        }
        Command::List(args) => list(&client, args, json).await?,
        Command::Watch(args) => {
            drop(client);
            watch(global, config_for_watch, args, json).await?
        }
        Command::Count => {
            let counts = client.count().await?;
            if json {
                println!("{}", counts_json(&counts));
            } else {
                println!("{}", counts_text(&counts));
            }
        }
        Command::Sessions { principal } => {
            for ticket in client.sessions_for(&principal).await? {
                print_ticket_line(&ticket, json);
            }
        }
        Command::Stats => {
            let stats = stats_fields(&client.stats().await?);
            if json {
                println!("{}", serde_json::Value::Object(stats.into_iter().collect()));
            } else {
                for (name, value) in stats {
                    match value {
                        serde_json::Value::String(text) => println!("{name}\t{text}"),
                        other => println!("{name}\t{other}"),
                    }
                }
            }
        }
        Command::Health => unreachable!("health is answered without the ticket client"),
        Command::Members => {
            for member in client.members().await? {
                if json {
                    println!("{}", member_json(&member));
                } else {
                    println!("{}", member_line(&member));
                }
            }
        }
    }
    Ok(Exit::Ok)
}

/// A node's counters by name, in the order the proto declares them.
fn stats_fields(stats: &NodeStats) -> Vec<(String, serde_json::Value)> {
    let counters = [
        ("tickets", stats.tickets),
        ("api_rejections", stats.api_rejections),
        ("peer_handshakes_ok", stats.peer_handshakes_ok),
        ("peer_handshakes_rejected", stats.peer_handshakes_rejected),
        ("peer_frames_rejected", stats.peer_frames_rejected),
        ("peer_connections_open", stats.peer_connections_open),
        ("peer_calls_failed", stats.peer_calls_failed),
        ("pushes_failed", stats.pushes_failed),
        ("read_repairs", stats.read_repairs),
        ("decisions_forwarded", stats.decisions_forwarded),
        ("clock_skew_reports", stats.clock_skew_reports),
        ("bad_records", stats.bad_records),
        ("clock_fences", stats.clock_fences),
        ("batches", stats.batches),
        ("batched_calls", stats.batched_calls),
        ("sessions", stats.sessions),
        ("idle_deaths_unconfirmed", stats.idle_deaths_unconfirmed),
    ];
    let mut fields = vec![
        ("node_id".to_owned(), stats.node_id.clone().into()),
        ("ready".to_owned(), stats.ready.into()),
        ("draining".to_owned(), stats.draining.into()),
        ("clock_fenced".to_owned(), stats.clock_fenced.into()),
    ];
    fields.extend(
        counters
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.into())),
    );
    fields
}

/// `tessera health`: the gRPC health service of every address, without a
/// token (health is open on every node).
pub async fn health(global: &GlobalArgs) -> Exit {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let config = match client_tls(global) {
        Ok(tls) => ClientConfig {
            connect_timeout: global.timeout,
            tls,
            ..ClientConfig::default()
        },
        Err(failure) => {
            eprintln!("tessera: {}", failure.message);
            return failure.exit;
        }
    };
    let mut worst = Exit::Ok;
    for addr in &global.addr {
        let status = async {
            let endpoint = config
                .endpoint(addr)
                .map_err(|e| e.to_string())?
                .timeout(global.timeout);
            let channel = endpoint.connect().await.map_err(|e| error_chain(&e))?;
            let response = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .map_err(|e| e.message().to_owned())?;
            Ok::<_, String>(response.into_inner().status())
        }
        .await;
        let (exit, said) = match status {
            Ok(ServingStatus::Serving) => (Exit::Ok, "serving".to_owned()),
            Ok(other) => (
                Exit::NotThere,
                format!("not ready ({})", other.as_str_name()),
            ),
            Err(reason) => (Exit::Failed, format!("unreachable: {reason}")),
        };
        println!("{addr}\t{said}");
        worst = worst.max(exit);
    }
    worst
}

/// An error and its sources on one line: a TLS failure is named only deep
/// in the chain (e.g. "invalid peer certificate: UnknownIssuer").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn new_ticket(args: PutArgs) -> Result<NewTicket, Failure> {
    let mut ticket = NewTicket::new(args.id, args.ttl)
        .max_uses(args.max_uses)
        .create_only(args.create_only)
        .payload(payload(&args.payload)?.unwrap_or_default());
    if let Some(kind) = args.kind {
        ticket = ticket.kind(kind);
    }
    if let Some(idle) = args.idle {
        ticket = ticket.idle(idle);
    }
    if let Some(principal) = args.principal {
        ticket = ticket.principal(principal);
    }
    if let Some(parent) = args.parent {
        ticket = ticket.parent(parent);
    }
    Ok(ticket)
}

fn ticket_update(args: UpdateArgs) -> Result<TicketUpdate, Failure> {
    let update = TicketUpdate {
        payload: payload(&args.payload)?,
        idle: args.idle,
        if_version: args.if_version,
    };
    if update.payload.is_none() && update.idle.is_none() {
        return Err(Failure::invalid(
            "nothing to update: give --payload, --payload-file or --idle",
        ));
    }
    Ok(update)
}

/// The payload from `--payload` or `--payload-file` (`-` = standard input).
fn payload(args: &PayloadArgs) -> Result<Option<Bytes>, Failure> {
    if let Some(text) = &args.payload {
        return Ok(Some(Bytes::from(text.clone().into_bytes())));
    }
    let Some(path) = &args.payload_file else {
        return Ok(None);
    };
    let limit = MAX_PAYLOAD_LIMIT as u64 + 1;
    let mut bytes = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|file| file.take(limit).read_to_end(&mut bytes))
    };
    read.map_err(|e| Failure::invalid(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() > MAX_PAYLOAD_LIMIT {
        return Err(Failure::invalid(format!(
            "{} is larger than {MAX_PAYLOAD_LIMIT} bytes, more than any node accepts",
            path.display()
        )));
    }
    Ok(Some(Bytes::from(bytes)))
}

/// `tessera watch`: one stream per address, printed as they come; a stream
/// that breaks is resumed after its last position. Fails (exit 2 or 3) only
/// when a node cannot be watched at all at the start.
async fn watch(
    global: &GlobalArgs,
    config: ClientConfig,
    args: WatchArgs,
    json: bool,
) -> Result<(), Failure> {
    if args.resume_after.is_some() && global.addr.len() > 1 {
        return Err(Failure::invalid(
            "--resume-after: positions are per node; give one --addr with it",
        ));
    }
    let filter = WatchFilter {
        kinds: args.kinds,
        events: args
            .events
            .iter()
            .map(|event| match event {
                WatchEventArg::Created => EventType::Created,
                WatchEventArg::Deleted => EventType::Deleted,
                WatchEventArg::Expired => EventType::Expired,
                WatchEventArg::UsedUp => EventType::UsedUp,
            })
            .collect(),
        resume_after: args.resume_after,
    };
    let (lines, mut printed) = tokio::sync::mpsc::channel::<String>(256);
    for addr in &global.addr {
        let client = Client::connect_with([addr.as_str()], config.clone()).await?;
        let stream = client.watch(filter.clone()).await?;
        let (addr, filter, lines) = (addr.clone(), filter.clone(), lines.clone());
        tokio::spawn(follow(client, addr, stream, filter, lines, json));
    }
    drop(lines);
    let stdout = std::io::stdout();
    while let Some(line) = printed.recv().await {
        if writeln!(stdout.lock(), "{line}").is_err() {
            break; // stdout closed (e.g. piped into `head`)
        }
    }
    Ok(())
}

/// Print one node's events; when its stream breaks, watch it again after
/// the last position received, once a second until it answers.
async fn follow(
    client: Client,
    addr: String,
    mut stream: EventStream,
    mut filter: WatchFilter,
    lines: tokio::sync::mpsc::Sender<String>,
    json: bool,
) {
    loop {
        loop {
            match stream.message().await {
                Ok(Some(item)) => {
                    filter.resume_after = Some(item.position().to_owned());
                    if lines.send(watch_line(&item, json)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    eprintln!("tessera: watch on {addr} ended; watching again");
                    break;
                }
                Err(error) => {
                    eprintln!("tessera: watch on {addr} ended: {error}; watching again");
                    break;
                }
            }
        }
        stream = loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            match client.watch(filter.clone()).await {
                Ok(stream) => break stream,
                Err(error) => eprintln!("tessera: watch on {addr}: {error}; retrying"),
            }
        };
    }
}

async fn list(client: &Client, args: ListArgs, json: bool) -> Result<(), Failure> {
    let filter = ListFilter {
        kind: args.kind,
        principal: args.principal,
        limit: args.limit,
    };
    let mut stream = client.list(filter).await?;
    let stdout = std::io::stdout();
    while let Some(ticket) = stream.message().await? {
        let line = if json {
            ticket_json(&ticket).to_string()
        } else {
            ticket_line(&ticket)
        };
        if writeln!(stdout.lock(), "{line}").is_err() {
            break; // stdout closed (e.g. piped into `head`)
        }
    }
    Ok(())
}

fn print_ticket(ticket: &Ticket, json: bool) {
    if json {
        println!("{}", ticket_json(ticket));
    } else {
        println!("{}", ticket_text(ticket));
    }
}

fn print_ticket_line(ticket: &Ticket, json: bool) {
    if json {
        println!("{}", ticket_json(ticket));
    } else {
        println!("{}", ticket_line(ticket));
    }
}

fn print_deleted(deleted: u64, json: bool) {
    if json {
        println!("{}", serde_json::json!({ "deleted": deleted }));
    } else {
        println!("deleted {deleted}");
    }
}
