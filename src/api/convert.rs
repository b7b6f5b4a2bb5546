//! Wire types <-> store types, in one place.

use tessera_proto::v1::{PutRequest, Ticket, UpdateRequest};

use crate::store::{PutTicket, UpdateTicket};
use crate::ticket::TicketView;

pub fn put_ticket(request: PutRequest) -> PutTicket {
    PutTicket {
        id: request.id,
        kind: request.kind,
        principal: request.principal,
        parent: request.parent,
        payload: request.payload,
        ttl_ms: request.ttl_ms,
        idle_ms: request.idle_ms,
        max_uses: request.max_uses,
        create_only: request.create_only,
    }
}

pub fn update_ticket(request: UpdateRequest) -> UpdateTicket {
    UpdateTicket {
        payload: request.payload,
        idle_ms: request.idle_ms,
        if_version: request.if_version,
    }
}

pub fn ticket(view: TicketView) -> Ticket {
    Ticket {
        id: view.id,
        kind: view.kind,
        principal: view.principal,
        parent: view.parent,
        payload: view.payload,
        created_at_ms: view.created_at_ms,
        deadline_ms: view.deadline_ms,
        idle_ms: view.idle_ms,
        last_used_ms: view.last_used_ms,
        uses: view.uses,
        max_uses: view.max_uses,
        version: view.version,
    }
}

/// The inverse of [`ticket`], for tickets a peer's arbiter sends back.
pub fn ticket_view(ticket: Ticket) -> TicketView {
    TicketView {
        id: ticket.id,
        kind: ticket.kind,
        principal: ticket.principal,
        parent: ticket.parent,
        payload: ticket.payload,
        created_at_ms: ticket.created_at_ms,
        deadline_ms: ticket.deadline_ms,
        idle_ms: ticket.idle_ms,
        last_used_ms: ticket.last_used_ms,
        uses: ticket.uses,
        max_uses: ticket.max_uses,
        version: ticket.version,
    }
}
