//! How client subcommands print: text for people, `--json` for scripts
//! (one JSON object per line; times RFC 3339, payload base64).

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use tessera_client::{Counts, EventCause, EventType, Member, Ticket, WatchItem};

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub fn ticket_json(ticket: &Ticket) -> Value {
    json!({
        "id": ticket.id,
        "kind": ticket.kind,
        "principal": ticket.principal,
        "parent": ticket.parent,
        "payload": BASE64.encode(&ticket.payload),
        "created_at": rfc3339(ticket.created_at),
        "deadline": rfc3339(ticket.deadline),
        "idle": ticket.idle.map(duration),
        "last_used": rfc3339(ticket.last_used),
        "uses": ticket.uses,
        "max_uses": ticket.max_uses,
        "version": ticket.version,
    })
}

/// A ticket in full, one field per line.
pub fn ticket_text(ticket: &Ticket) -> String {
    let payload = match std::str::from_utf8(&ticket.payload) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_owned(),
        _ => format!("base64:{}", BASE64.encode(&ticket.payload)),
    };
    let max_uses = match ticket.max_uses {
        0 => "unlimited".to_owned(),
        n => n.to_string(),
    };
    [
        ("id", ticket.id.clone()),
        ("kind", ticket.kind.clone()),
        (
            "principal",
            ticket.principal.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "parent",
            ticket.parent.clone().unwrap_or_else(|| "-".into()),
        ),
        ("created_at", rfc3339(ticket.created_at)),
        ("deadline", rfc3339(ticket.deadline)),
        (
            "idle",
            ticket.idle.map(duration).unwrap_or_else(|| "-".into()),
        ),
        ("last_used", rfc3339(ticket.last_used)),
        ("uses", format!("{} of {max_uses}", ticket.uses)),
        ("version", ticket.version.clone()),
        ("payload", payload),
    ]
    .iter()
    .map(|(key, value)| format!("{key:<11}{value}"))
    .collect::<Vec<_>>()
    .join("\n")
}

/// A ticket on one line, for listings.
pub fn ticket_line(ticket: &Ticket) -> String {
    format!(
        "{}\t{}\t{}\t{}/{}\t{}",
        ticket.id,
        ticket.kind,
        ticket.principal.as_deref().unwrap_or("-"),
        ticket.uses,
        ticket.max_uses,
        rfc3339(ticket.deadline),
    )
}

pub fn counts_json(counts: &Counts) -> Value {
    json!({ "total": counts.total, "by_kind": counts.by_kind })
}

pub fn counts_text(counts: &Counts) -> String {
    let mut lines = vec![format!("total\t{}", counts.total)];
    lines.extend(
        counts
            .by_kind
            .iter()
            .map(|(kind, n)| format!("{kind}\t{n}")),
    );
    lines.join("\n")
}

pub fn member_json(member: &Member) -> Value {
    json!({
        "node_id": member.node_id,
        "api_addr": member.api_addr,
        "state": member.state,
        "ready": member.ready,
        "version": member.version,
        "tickets": member.tickets,
    })
}

pub fn member_line(member: &Member) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}",
        member.node_id,
        member.api_addr,
        member.state,
        if member.ready { "ready" } else { "not-ready" },
        member.version,
        member.tickets,
    )
}

fn event_name(event: EventType) -> &'static str {
    match event {
        EventType::Created => "created",
        EventType::Deleted => "deleted",
        EventType::Expired => "expired",
        EventType::UsedUp => "used-up",
    }
}

fn cause_name(cause: EventCause) -> &'static str {
    match cause {
        EventCause::Delete => "delete",
        EventCause::Cascade => "cascade",
        EventCause::DeleteFor => "delete-for",
        EventCause::DeleteAll => "delete-all",
        EventCause::Deadline => "deadline",
        EventCause::Idle => "idle",
    }
}

/// One line of `tessera watch`: an event (`at node event[/cause] ticket
/// position`, or JSON with the ticket in full) or a gap.
pub fn watch_line(item: &WatchItem, json: bool) -> String {
    match item {
        WatchItem::Event(event) => {
            let name = event_name(event.event);
            let cause = event.cause.map(cause_name);
            if json {
                json!({
                    "position": event.position,
                    "event": name,
                    "cause": cause,
                    "at": rfc3339(event.at),
                    "node_id": event.node_id,
                    "ticket": ticket_json(&event.ticket),
                })
                .to_string()
            } else {
                let what = match cause {
                    Some(cause) => format!("{name}/{cause}"),
                    None => name.to_owned(),
                };
                format!(
                    "{}\t{}\t{what}\t{}\t{}",
                    rfc3339(event.at),
                    event.node_id,
                    ticket_line(&event.ticket),
                    event.position
                )
            }
        }
        WatchItem::Gap {
            position,
            missed,
            reason,
        } => {
            if json {
                json!({"position": position, "gap": {"missed": missed, "reason": reason}})
                    .to_string()
            } else {
                let missed = missed.map_or("an unknown number of".to_owned(), |n| n.to_string());
                format!("gap\t{missed} events may be missing: {reason}\t{position}")
            }
        }
    }
}
