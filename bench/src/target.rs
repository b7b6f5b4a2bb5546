//! The two kinds of target and the calls the workloads make on them.
//!
//! Tessera is called through `tessera-client`. Redis is called the way Apereo
//! CAS's `RedisTicketRegistry` (CAS 7) stores tickets: one string key per ticket
//! (`SET key value EX ttl`), a sorted set per principal holding its TGTs scored
//! by expiry (`ZREMRANGEBYSCORE` of the expired ones, `ZADD`, `EXPIRE`), and a
//! one-time consume as `GETDEL`. CAS finds a TGT's children by deserializing the
//! TGT (its `services` map) and deleting each; this tool keeps them in a set per
//! TGT instead (`SADD` on each ST put, `SMEMBERS` + one `DEL` at logout), which
//! costs Redis less than rewriting the whole TGT on every grant would. A touch
//! re-writes the ticket document with its new idle expiry (`SET .. XX EX idle`),
//! as CAS's `updateTicket` does. The commands of one logical operation go in one
//! pipeline (one round trip) where they do not depend on each other; CAS itself
//! sends them one by one, so these Redis figures are, if anything, generous.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use serde::Serialize;
use tessera_client::{Client, ClientConfig, NewTicket};

/// TGT hard time to live and idle timeout (CAS defaults: 8 h and 2 h).
pub const TGT_TTL: Duration = Duration::from_secs(8 * 3600);
pub const TGT_IDLE: Duration = Duration::from_secs(2 * 3600);
/// ST time to live (CAS default: 10 s, one use).
pub const ST_TTL: Duration = Duration::from_secs(10);
/// Bound on every single Redis call (the Tessera client has its own, 5 s).
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the load goes, from `tessera://host:port,host:port` or `redis://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Node addresses as `http://host:port`, in the order given.
    Tessera(Vec<String>),
    /// A Redis URL as the `redis` crate takes it.
    Redis(String),
}

impl FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Target> {
        if let Some(rest) = s.strip_prefix("tessera://") {
            let addrs: Vec<String> = rest
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| format!("http://{}", a.trim_end_matches('/')))
                .collect();
            if addrs.is_empty() {
                bail!("{s:?}: no address after tessera://");
            }
            for a in &addrs {
                if !a["http://".len()..].contains(':') {
                    bail!("{s:?}: {a} has no port");
                }
            }
            Ok(Target::Tessera(addrs))
        } else if let Some(rest) = s.strip_prefix("redis://") {
            if rest.is_empty() || rest.contains(',') {
                bail!("{s:?}: expected redis://host:port");
            }
            Ok(Target::Redis(s.to_owned()))
        } else {
            bail!("{s:?}: expected tessera://host:port[,host:port...] or redis://host:port")
        }
    }
}

impl Target {
    /// The target as written in reports.
    pub fn label(&self) -> String {
        match self {
            Target::Tessera(addrs) => format!(
                "tessera://{}",
                addrs
                    .iter()
                    .map(|a| a.trim_start_matches("http://"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Target::Redis(url) => url.clone(),
        }
    }

    /// Short name: "tessera" or "redis".
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Tessera(_) => "tessera",
            Target::Redis(_) => "redis",
        }
    }

    /// One connection handle per virtual client.
    ///
    /// Tessera: `sharing.tessera` groups of `tessera-client` handles (one
    /// HTTP/2 connection per node each) shared round-robin by the clients, whose
    /// concurrent calls the client batches; client `i` issues through node
    /// `i % n` and consumes through node `(i + 1) % n`.
    /// Redis: `sharing.redis` multiplexed connections shared round-robin (the
    /// `redis` crate pipelines the commands of the clients sharing one, as
    /// Lettuce's shared connection does for CAS), or with 0 one connection per
    /// client, like a pool (Jedis), so no client's commands are pipelined with
    /// another's.
    pub async fn connect(
        &self,
        clients: usize,
        sharing: Sharing,
        token: Option<&str>,
    ) -> anyhow::Result<Vec<Conn>> {
        match self {
            Target::Tessera(addrs) => {
                let config = ClientConfig {
                    token: token.map(str::to_owned),
                    ..ClientConfig::default()
                };
                let n = addrs.len();
                let mut groups: Vec<Vec<Client>> = Vec::new();
                for _ in 0..sharing.tessera.max(1) {
                    let mut by_start = Vec::new();
                    for start in 0..n {
                        let rotated: Vec<&String> =
                            addrs.iter().cycle().skip(start).take(n).collect();
                        by_start.push(
                            Client::connect_with(rotated, config.clone())
                                .await
                                .context("tessera client")?,
                        );
                    }
                    groups.push(by_start);
                }
                Ok((0..clients)
                    .map(|i| {
                        let group = &groups[i % groups.len()];
                        Conn::Tessera {
                            issue: group[i % n].clone(),
                            consume: group[(i + 1) % n].clone(),
                        }
                    })
                    .collect())
            }
            Target::Redis(url) => {
                let client = redis::Client::open(url.as_str()).context("redis url")?;
                let shared = if sharing.redis == 0 {
                    clients
                } else {
                    sharing.redis.min(clients)
                };
                let mut conns = Vec::with_capacity(clients);
                for _ in 0..shared {
                    let conn = tokio::time::timeout(
                        REDIS_TIMEOUT,
                        client.get_multiplexed_async_connection(),
                    )
                    .await
                    .context("redis connect: timeout")?
                    .with_context(|| format!("redis connect {url}"))?;
                    conns.push(Conn::Redis(conn));
                }
                Ok((0..clients).map(|i| conns[i % shared].clone()).collect())
            }
        }
    }
}

/// How many connections the virtual clients share, per kind of target.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sharing {
    /// `tessera-client` handles (one HTTP/2 connection per node each).
    pub tessera: usize,
    /// Redis multiplexed connections; 0 = one per client.
    pub redis: usize,
}

impl Default for Sharing {
    /// What a CAS node does with each: one shared Tessera client; for Redis a
    /// connection per client, which measured faster here than sharing.
    fn default() -> Sharing {
        Sharing {
            tessera: 1,
            redis: 0,
        }
    }
}

impl Sharing {
    /// `tessera` shared tessera-clients, Redis as by default.
    pub fn tessera(tessera: usize) -> Sharing {
        Sharing {
            tessera,
            ..Sharing::default()
        }
    }
}

/// One virtual client's handle on the target.
#[derive(Clone)]
pub enum Conn {
    Tessera { issue: Client, consume: Client },
    Redis(redis::aio::MultiplexedConnection),
}

fn ticket_key(id: &str) -> String {
    format!("CAS_TICKET:{id}")
}

fn principal_key(principal: &str) -> String {
    format!("CAS_PRINCIPAL:{principal}")
}

fn children_key(id: &str) -> String {
    format!("CAS_CHILDREN:{id}")
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn redis_run<T: redis::FromRedisValue>(
    conn: &mut redis::aio::MultiplexedConnection,
    what: &redis::Pipeline,
) -> Result<T, String> {
    match tokio::time::timeout(REDIS_TIMEOUT, what.query_async::<T>(conn)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("redis: {e}")),
        Err(_) => Err("redis: timeout".to_owned()),
    }
}

async fn redis_cmd<T: redis::FromRedisValue>(
    conn: &mut redis::aio::MultiplexedConnection,
    cmd: &redis::Cmd,
) -> Result<T, String> {
    match tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<T>(conn)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("redis: {e}")),
        Err(_) => Err("redis: timeout".to_owned()),
    }
}

fn tessera_err(e: tessera_client::Error) -> String {
    e.to_string()
}

impl Conn {
    /// Login: a TGT with a principal, 8 h hard and 2 h idle.
    pub async fn put_tgt(
        &mut self,
        id: &str,
        principal: &str,
        payload: &Bytes,
    ) -> Result<(), String> {
        match self {
            Conn::Tessera { issue, .. } => issue
                .put(
                    NewTicket::new(id, TGT_TTL)
                        .principal(principal)
                        .idle(TGT_IDLE)
                        .payload(payload.clone()),
                )
                .await
                .map(drop)
                .map_err(tessera_err),
            Conn::Redis(conn) => {
                let now = unix_secs();
                let ttl = TGT_TTL.as_secs();
                let pkey = principal_key(principal);
                let mut p = redis::pipe();
                p.cmd("SET")
                    .arg(ticket_key(id))
                    .arg(payload.as_ref())
                    .arg("EX")
                    .arg(ttl)
                    .ignore();
                p.cmd("ZREMRANGEBYSCORE")
                    .arg(&pkey)
                    .arg(0)
                    .arg(now)
                    .ignore();
                p.cmd("ZADD").arg(&pkey).arg(now + ttl).arg(id).ignore();
                p.cmd("EXPIRE").arg(&pkey).arg(ttl).ignore();
                redis_run::<()>(conn, &p).await
            }
        }
    }

    /// A service visit: an ST granted by the TGT, 10 s, one use.
    pub async fn put_st(&mut self, id: &str, parent: &str, payload: &Bytes) -> Result<(), String> {
        match self {
            Conn::Tessera { issue, .. } => issue
                .put(
                    NewTicket::new(id, ST_TTL)
                        .parent(parent)
                        .max_uses(1)
                        .payload(payload.clone()),
                )
                .await
                .map(drop)
                .map_err(tessera_err),
            Conn::Redis(conn) => {
                let ckey = children_key(parent);
                let mut p = redis::pipe();
                p.cmd("SET")
                    .arg(ticket_key(id))
                    .arg(payload.as_ref())
                    .arg("EX")
                    .arg(ST_TTL.as_secs())
                    .ignore();
                p.cmd("SADD").arg(&ckey).arg(id).ignore();
                p.cmd("EXPIRE").arg(&ckey).arg(TGT_TTL.as_secs()).ignore();
                redis_run::<()>(conn, &p).await
            }
        }
    }

    /// Records a use of a ticket (restarts its idle timeout). Redis: the
    /// ticket document is written again with its new expiry, as CAS does.
    pub async fn touch(&mut self, id: &str, payload: &Bytes) -> Result<(), String> {
        match self {
            Conn::Tessera { issue, .. } => issue.touch(id).await.map(drop).map_err(tessera_err),
            Conn::Redis(conn) => {
                let mut c = redis::cmd("SET");
                c.arg(ticket_key(id))
                    .arg(payload.as_ref())
                    .arg("XX")
                    .arg("EX")
                    .arg(TGT_IDLE.as_secs());
                match redis_cmd::<Option<String>>(conn, &c).await? {
                    Some(_) => Ok(()),
                    None => Err("touch: not found".to_owned()),
                }
            }
        }
    }

    /// Validates a one-use ticket, through the consuming node.
    pub async fn consume(&mut self, id: &str) -> Result<(), String> {
        match self {
            Conn::Tessera { consume, .. } => {
                consume.consume(id).await.map(drop).map_err(tessera_err)
            }
            Conn::Redis(conn) => {
                let mut c = redis::cmd("GETDEL");
                c.arg(ticket_key(id));
                match redis_cmd::<Option<Vec<u8>>>(conn, &c).await? {
                    Some(_) => Ok(()),
                    None => Err("consume: not found".to_owned()),
                }
            }
        }
    }

    /// Reads a ticket.
    pub async fn get(&mut self, id: &str) -> Result<(), String> {
        match self {
            Conn::Tessera { issue, .. } => issue.get(id).await.map(drop).map_err(tessera_err),
            Conn::Redis(conn) => {
                let mut c = redis::cmd("GET");
                c.arg(ticket_key(id));
                match redis_cmd::<Option<Vec<u8>>>(conn, &c).await? {
                    Some(_) => Ok(()),
                    None => Err("get: not found".to_owned()),
                }
            }
        }
    }

    /// Logout: the ticket and every ticket it granted. Redis: the children's
    /// ids from the TGT's set, then one DEL of them all, the set and the TGT,
    /// and the TGT's entry in its principal's sorted set (two round trips).
    pub async fn delete_tree(&mut self, id: &str, principal: Option<&str>) -> Result<(), String> {
        match self {
            Conn::Tessera { issue, .. } => issue.delete(id).await.map(drop).map_err(tessera_err),
            Conn::Redis(conn) => {
                let ckey = children_key(id);
                let mut members = redis::cmd("SMEMBERS");
                members.arg(&ckey);
                let children: Vec<String> = redis_cmd(conn, &members).await?;
                let mut p = redis::pipe();
                let del = p.cmd("DEL").arg(ticket_key(id)).arg(&ckey);
                for child in &children {
                    del.arg(ticket_key(child));
                }
                del.ignore();
                if let Some(principal) = principal {
                    p.cmd("ZREM").arg(principal_key(principal)).arg(id).ignore();
                }
                redis_run::<()>(conn, &p).await
            }
        }
    }

    /// A plain ticket (no principal, no parent) with a ttl and use limit, for
    /// the single-operation workloads and the memory figure.
    pub async fn put_plain(
        &mut self,
        id: &str,
        payload: &Bytes,
        ttl: Duration,
        max_uses: u32,
    ) -> Result<(), String> {
        match self {
            Conn::Tessera { issue, .. } => issue
                .put(
                    NewTicket::new(id, ttl)
                        .max_uses(max_uses)
                        .payload(payload.clone()),
                )
                .await
                .map(drop)
                .map_err(tessera_err),
            Conn::Redis(conn) => {
                let mut c = redis::cmd("SET");
                c.arg(ticket_key(id))
                    .arg(payload.as_ref())
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64);
                redis_cmd::<()>(conn, &c).await
            }
        }
    }

    /// A plain ticket that dies at `deadline` (wall clock), for the expiry storm.
    pub async fn put_expiring_at(
        &mut self,
        id: &str,
        payload: &Bytes,
        deadline: SystemTime,
    ) -> Result<(), String> {
        match self {
            Conn::Tessera { .. } => {
                let ttl = deadline
                    .duration_since(SystemTime::now())
                    .map_err(|_| "deadline already passed".to_owned())?;
                self.put_plain(id, payload, ttl, 0).await
            }
            Conn::Redis(conn) => {
                let at = deadline
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let mut c = redis::cmd("SET");
                c.arg(ticket_key(id))
                    .arg(payload.as_ref())
                    .arg("PXAT")
                    .arg(at);
                redis_cmd::<()>(conn, &c).await
            }
        }
    }

    /// Number of live tickets (Tessera: the node's counters; Redis: DBSIZE,
    /// which also counts the index keys).
    pub async fn count(&mut self) -> Result<u64, String> {
        match self {
            Conn::Tessera { issue, .. } => {
                issue.count().await.map(|c| c.total).map_err(tessera_err)
            }
            Conn::Redis(conn) => redis_cmd(conn, &redis::cmd("DBSIZE")).await,
        }
    }

    /// Redis `INFO memory` as (field, value) pairs; empty for Tessera.
    pub async fn redis_memory_info(&mut self) -> Result<Vec<(String, String)>, String> {
        match self {
            Conn::Tessera { .. } => Ok(Vec::new()),
            Conn::Redis(conn) => {
                let mut c = redis::cmd("INFO");
                c.arg("memory");
                let text: String = redis_cmd(conn, &c).await?;
                Ok(parse_info(&text))
            }
        }
    }
}

/// `field:value` lines of a Redis INFO reply.
pub fn parse_info(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tessera_urls_take_several_nodes() {
        let t: Target = "tessera://127.0.0.1:7070,127.0.0.2:7070".parse().unwrap();
        assert_eq!(
            t,
            Target::Tessera(vec![
                "http://127.0.0.1:7070".into(),
                "http://127.0.0.2:7070".into()
            ])
        );
        assert_eq!(t.label(), "tessera://127.0.0.1:7070,127.0.0.2:7070");
        assert_eq!(t.kind(), "tessera");
    }

    #[test]
    fn redis_urls_are_kept_whole() {
        let t: Target = "redis://127.0.0.1:6379".parse().unwrap();
        assert_eq!(t, Target::Redis("redis://127.0.0.1:6379".into()));
        assert_eq!(t.kind(), "redis");
    }

    #[test]
    fn bad_urls_are_refused() {
        for bad in [
            "http://x:1",
            "tessera://",
            "tessera://host",
            "redis://",
            "redis://a:1,b:2",
            "x",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn info_lines_are_split_on_the_first_colon() {
        let info = "# Memory\r\nused_memory:1024\r\nused_memory_human:1.00K\r\n\r\n";
        let v = parse_info(info);
        assert_eq!(v[0], ("used_memory".to_owned(), "1024".to_owned()));
        assert_eq!(v.len(), 2);
    }
}
