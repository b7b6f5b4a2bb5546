//! The client API: the `tessera.v1.TicketStore` gRPC service over the store.
//!
//! Handlers only translate: wire types in, store call, wire types out. Store
//! calls are short and synchronous (a shard lock each), so they run inline.

mod convert;
mod status;

use std::pin::Pin;
use std::sync::Arc;

use tessera_proto::v1::ticket_store_server::TicketStore;
use tessera_proto::v1::{
    ConsumeRequest, CountRequest, CountResponse, DeleteAllRequest, DeleteForRequest, DeleteRequest,
    DeleteResponse, GetRequest, ListRequest, Member, MembersRequest, MembersResponse, PutRequest,
    SessionsForRequest, SessionsForResponse, Ticket, TouchRequest, UpdateRequest,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::store::{ListCursor, ListFilter, Store};
use convert::{put_ticket, update_ticket};
pub use convert::{ticket, ticket_view};
pub use status::to_status;

/// Tickets per store page while listing; the stream buffers at most one page
/// beyond what the client has read, whatever the store holds.
const LIST_PAGE: usize = 256;

/// What `Members` reports about this node.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub node_id: String,
    pub api_addr: String,
}

/// The gRPC service.
pub struct TicketApi {
    store: Arc<Store>,
    node: NodeInfo,
}

impl TicketApi {
    pub fn new(store: Arc<Store>, node: NodeInfo) -> TicketApi {
        TicketApi { store, node }
    }
}

type TicketStream = Pin<Box<dyn Stream<Item = Result<Ticket, Status>> + Send>>;

#[tonic::async_trait]
impl TicketStore for TicketApi {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<Ticket>, Status> {
        let written = self
            .store
            .put(put_ticket(request.into_inner()))
            .map_err(to_status)?;
        Ok(Response::new(ticket(written.value)))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Ticket>, Status> {
        let view = self
            .store
            .get(&request.into_inner().id)
            .map_err(to_status)?;
        Ok(Response::new(ticket(view)))
    }

    async fn touch(&self, request: Request<TouchRequest>) -> Result<Response<Ticket>, Status> {
        let written = self
            .store
            .touch(&request.into_inner().id)
            .map_err(to_status)?;
        Ok(Response::new(ticket(written.value)))
    }

    async fn consume(&self, request: Request<ConsumeRequest>) -> Result<Response<Ticket>, Status> {
        let written = self
            .store
            .consume(&request.into_inner().id)
            .map_err(to_status)?;
        Ok(Response::new(ticket(written.value)))
    }

    async fn update(&self, request: Request<UpdateRequest>) -> Result<Response<Ticket>, Status> {
        let request = request.into_inner();
        let id = request.id.clone();
        let written = self
            .store
            .update(&id, update_ticket(request))
            .map_err(to_status)?;
        Ok(Response::new(ticket(written.value)))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let written = self
            .store
            .delete(&request.into_inner().id)
            .map_err(to_status)?;
        Ok(Response::new(DeleteResponse {
            deleted: written.value,
        }))
    }

    async fn delete_all(
        &self,
        _request: Request<DeleteAllRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let store = self.store.clone();
        // Long for big stores: keep it off the request threads.
        let written = tokio::task::spawn_blocking(move || store.delete_all())
            .await
            .map_err(|e| Status::internal(format!("delete_all failed: {e}")))?;
        Ok(Response::new(DeleteResponse {
            deleted: written.value,
        }))
    }

    async fn delete_for(
        &self,
        request: Request<DeleteForRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let written = self
            .store
            .delete_for(&request.into_inner().principal)
            .map_err(to_status)?;
        Ok(Response::new(DeleteResponse {
            deleted: written.value,
        }))
    }

    async fn count(
        &self,
        _request: Request<CountRequest>,
    ) -> Result<Response<CountResponse>, Status> {
        let counts = self.store.count();
        Ok(Response::new(CountResponse {
            total: counts.total,
            by_kind: counts.by_kind.into_iter().collect(),
        }))
    }

    async fn sessions_for(
        &self,
        request: Request<SessionsForRequest>,
    ) -> Result<Response<SessionsForResponse>, Status> {
        let sessions = self
            .store
            .sessions_for(&request.into_inner().principal)
            .map_err(to_status)?;
        Ok(Response::new(SessionsForResponse {
            tickets: sessions.into_iter().map(ticket).collect(),
        }))
    }

    type ListStream = TicketStream;

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<TicketStream>, Status> {
        let request = request.into_inner();
        if let Some(kind) = &request.kind {
            crate::ticket::validate_kind(kind).map_err(to_status)?;
        }
        let filter = ListFilter {
            kind: request.kind,
            principal: request.principal,
        };
        let limit = if request.limit == 0 {
            u64::MAX
        } else {
            request.limit
        };
        let (tx, rx) = mpsc::channel(LIST_PAGE);
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut cursor = Some(ListCursor::default());
            let mut sent = 0u64;
            while let Some(at) = cursor.take() {
                let want = LIST_PAGE.min(usize::try_from(limit - sent).unwrap_or(LIST_PAGE));
                let (page, next) = store.list_page(&filter, at, want);
                for view in page {
                    if tx.send(Ok(ticket(view))).await.is_err() {
                        return; // the client went away
                    }
                    sent += 1;
                }
                if sent >= limit {
                    return;
                }
                cursor = next;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn members(
        &self,
        _request: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let me = Member {
            node_id: self.node.node_id.clone(),
            api_addr: self.node.api_addr.clone(),
            state: "alive".into(),
            ready: true,
            version: env!("CARGO_PKG_VERSION").into(),
            tickets: self.store.count().total,
        };
        Ok(Response::new(MembersResponse { members: vec![me] }))
    }
}
