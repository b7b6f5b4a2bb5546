//! Store tests. Time is tokio's paused clock: `advance` drives every expiry.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::clock::{Clock, HlcClock};
use crate::entry::State;
use crate::sweeper::{Sweep, Sweeper};
use crate::worker::{self, Shutdown};

const EPOCH: Millis = 1_700_000_000_000;
const SKEW: Millis = 1_000;

fn store() -> Store {
    Store::new(
        StoreConfig {
            shards: 8,
            skew_budget_ms: SKEW,
            limits: Limits::default(),
        },
        HlcClock::new(Clock::starting_at(EPOCH), "node-a".into()),
    )
}

fn put(id: &str, ttl_ms: Millis) -> PutTicket {
    PutTicket {
        id: id.into(),
        payload: Bytes::from_static(b"payload"),
        ttl_ms,
        ..PutTicket::default()
    }
}

fn child(id: &str, parent: &str, ttl_ms: Millis) -> PutTicket {
    PutTicket {
        parent: Some(parent.into()),
        ..put(id, ttl_ms)
    }
}

/// Whether the store holds a record for `id`, and whether it is a tombstone.
fn stored_state(store: &Store, id: &str) -> Option<bool> {
    let shard = store.lock(store.shard_index(id));
    shard.entries.get(id).map(Entry::is_deleted)
}

/// Let `n` seconds pass on the paused clock. A sleep (rather than `advance`)
/// lets every timer due on the way, the sweeper's included, fire in order.
async fn secs(n: u64) {
    tokio::time::sleep(Duration::from_secs(n)).await;
}

#[tokio::test(start_paused = true)]
async fn put_then_get_returns_the_ticket() {
    let store = store();
    let written = store
        .put(PutTicket {
            principal: Some("Alice".into()),
            idle_ms: Some(7_200_000),
            ..put("TGT-1-abc-cas01", 28_800_000)
        })
        .unwrap();
    assert_eq!(written.changes.len(), 1, "one entry to replicate");
    let got = store.get("TGT-1-abc-cas01").unwrap();
    assert_eq!(got, written.value);
    assert_eq!(got.kind, "TGT", "kind defaults to the id prefix");
    assert_eq!(got.principal.as_deref(), Some("Alice"));
    assert_eq!(got.created_at_ms, EPOCH);
    assert_eq!(got.deadline_ms, EPOCH + 28_800_000);
    assert_eq!(got.uses, 0);
    assert_eq!(store.get("TGT-2").unwrap_err(), StoreError::NotFound);
}

#[tokio::test(start_paused = true)]
async fn create_only_refuses_and_upsert_replaces_whole() {
    let store = store();
    let first = store.put(put("ST-1", 10_000)).unwrap().value;
    let err = store
        .put(PutTicket {
            create_only: true,
            ..put("ST-1", 10_000)
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)));
    store.touch("ST-1").unwrap();
    let second = store
        .put(PutTicket {
            payload: Bytes::from_static(b"new"),
            max_uses: 3,
            ..put("ST-1", 20_000)
        })
        .unwrap()
        .value;
    assert_ne!(first.version, second.version);
    let got = store.get("ST-1").unwrap();
    assert_eq!(got.payload, Bytes::from_static(b"new"));
    assert_eq!((got.uses, got.max_uses), (0, 3), "a new incarnation");
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_refused_naming_field_and_limit() {
    let store = Store::new(
        StoreConfig {
            shards: 2,
            skew_budget_ms: SKEW,
            limits: Limits {
                max_payload_bytes: 8,
                max_ttl: Duration::from_secs(60),
            },
        },
        HlcClock::new(Clock::starting_at(EPOCH), "n".into()),
    );
    let cases: Vec<(PutTicket, &str)> = vec![
        (put("", 1_000), "invalid id"),
        (put("ST 1", 1_000), "invalid id"),
        (put(&"S".repeat(257), 1_000), "256"),
        (put("st-1", 1_000), "invalid kind"),
        (put("ST-1", 0), "invalid ttl"),
        (put("ST-1", 60_001), "max_ttl"),
        (
            PutTicket {
                payload: Bytes::from_static(b"123456789"),
                ..put("ST-1", 1_000)
            },
            "max_payload_bytes = 8",
        ),
        (
            PutTicket {
                idle_ms: Some(2_000),
                ..put("ST-1", 1_000)
            },
            "invalid idle",
        ),
        (
            PutTicket {
                principal: Some("p".repeat(257)),
                ..put("ST-1", 1_000)
            },
            "invalid principal",
        ),
    ];
    for (request, expected) in cases {
        let err = store.put(request).unwrap_err();
        assert!(matches!(err, StoreError::InvalidArgument { .. }), "{err}");
        assert!(err.to_string().contains(expected), "{err} lacks {expected}");
    }
    assert_eq!(store.count().total, 0, "nothing written");
}

#[tokio::test(start_paused = true)]
async fn child_needs_a_live_parent_and_never_outlives_it() {
    let store = store();
    let err = store.put(child("ST-1", "TGT-1", 10_000)).unwrap_err();
    assert!(matches!(err, StoreError::FailedPrecondition(_)), "{err}");
    store.put(put("TGT-1", 5_000)).unwrap();
    let st = store.put(child("ST-1", "TGT-1", 10_000)).unwrap().value;
    assert_eq!(
        st.deadline_ms,
        EPOCH + 5_000,
        "capped at the parent's deadline"
    );
    let err = store.put(child("TGT-1", "ST-1", 1_000)).unwrap_err();
    assert!(err.to_string().contains("own ancestor"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn touch_records_uses_and_the_last_use_kills() {
    let store = store();
    store
        .put(PutTicket {
            max_uses: 2,
            ..put("ST-1", 10_000)
        })
        .unwrap();
    secs(1).await;
    let first = store.touch("ST-1").unwrap().value;
    assert_eq!((first.uses, first.last_used_ms), (1, EPOCH + 1_000));
    let second = store.consume("ST-1").unwrap().value;
    assert_eq!(second.uses, 2, "the last use still succeeds");
    assert_eq!(store.get("ST-1").unwrap_err(), StoreError::NotFound);
    assert_eq!(store.consume("ST-1").unwrap_err(), StoreError::NotFound);
    let err = store.put(put("ST-1", 10_000)).unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists(_)),
        "ids are never reused"
    );
}

#[test]
fn concurrent_consumes_of_a_single_use_ticket_succeed_once() {
    let store = Arc::new(Store::new(
        StoreConfig::default(),
        HlcClock::new(Clock::starting_at(EPOCH), "n".into()),
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    for round in 0..200 {
        let id = format!("ST-{round}");
        store
            .put(PutTicket {
                max_uses: 1,
                ..put(&id, 10_000)
            })
            .unwrap();
        let successes: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let store = store.clone();
                    let id = id.clone();
                    scope.spawn(move || usize::from(store.consume(&id).is_ok()))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(successes, 1, "round {round}");
    }
}

#[tokio::test(start_paused = true)]
async fn update_compares_and_sets_on_version() {
    let store = store();
    let v1 = store.put(put("TGT-1", 10_000)).unwrap().value.version;
    let v2 = store
        .update(
            "TGT-1",
            UpdateTicket {
                payload: Some(Bytes::from_static(b"two")),
                if_version: Some(v1.clone()),
                ..UpdateTicket::default()
            },
        )
        .unwrap()
        .value
        .version;
    assert_ne!(v1, v2);
    let err = store
        .update(
            "TGT-1",
            UpdateTicket {
                payload: Some(Bytes::from_static(b"three")),
                if_version: Some(v1),
                ..UpdateTicket::default()
            },
        )
        .unwrap_err();
    assert_eq!(err, StoreError::VersionMismatch { current: v2 });
    assert_eq!(
        store.get("TGT-1").unwrap().payload,
        Bytes::from_static(b"two")
    );
    let touched = store.touch("TGT-1").unwrap().value;
    assert_eq!(touched.version, store.get("TGT-1").unwrap().version);
}

#[tokio::test(start_paused = true)]
async fn delete_cascades_to_every_descendant() {
    let store = store();
    store.put(put("TGT-1", 60_000)).unwrap();
    store.put(child("PGT-1", "TGT-1", 60_000)).unwrap();
    store.put(child("PT-1", "PGT-1", 60_000)).unwrap();
    store.put(child("ST-1", "TGT-1", 60_000)).unwrap();
    store.put(put("TGT-2", 60_000)).unwrap();
    let written = store.delete("TGT-1").unwrap();
    assert_eq!(written.value, 4);
    assert_eq!(written.changes.len(), 4, "four tombstones to replicate");
    for id in ["TGT-1", "PGT-1", "PT-1", "ST-1"] {
        assert_eq!(store.get(id).unwrap_err(), StoreError::NotFound, "{id}");
    }
    assert!(store.get("TGT-2").is_ok());
    let err = store.put(child("ST-2", "TGT-1", 1_000)).unwrap_err();
    assert!(matches!(err, StoreError::FailedPrecondition(_)));
    assert_eq!(store.delete("TGT-1").unwrap().value, 0);
    assert_eq!(store.delete("NOPE-1").unwrap().value, 0);
    assert_eq!(store.count().total, 1);
}

/// A child put racing its parent's delete is either refused or deleted with it.
#[test]
fn delete_never_misses_a_concurrent_child() {
    let store = Arc::new(Store::new(
        StoreConfig::default(),
        HlcClock::new(Clock::starting_at(EPOCH), "n".into()),
    ));
    for round in 0..300 {
        let parent = format!("TGT-{round}");
        store.put(put(&parent, 60_000)).unwrap();
        std::thread::scope(|scope| {
            for n in 0..4 {
                let store = store.clone();
                let parent = parent.clone();
                scope.spawn(move || {
                    let _ = store.put(child(&format!("ST-{round}-{n}"), &parent, 10_000));
                });
            }
            let store = store.clone();
            let parent = parent.clone();
            scope.spawn(move || store.delete(&parent).unwrap());
        });
        for n in 0..4 {
            let id = format!("ST-{round}-{n}");
            assert_eq!(store.get(&id).unwrap_err(), StoreError::NotFound, "{id}");
        }
    }
    assert_eq!(store.count().total, 0);
}

#[tokio::test(start_paused = true)]
async fn expiry_is_exact_whether_or_not_swept() {
    let store = store();
    store.put(put("ST-1", 10_000)).unwrap();
    tokio::time::sleep(Duration::from_millis(9_999)).await;
    assert!(store.get("ST-1").is_ok());
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(store.get("ST-1").unwrap_err(), StoreError::NotFound);
    assert_eq!(store.touch("ST-1").unwrap_err(), StoreError::NotFound);
    assert_eq!(store.count().total, 1, "not swept yet");
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_slides_on_touch_but_reads_never_extend() {
    let store = store();
    store
        .put(PutTicket {
            idle_ms: Some(2_000),
            ..put("TGT-1", 5_000)
        })
        .unwrap();
    secs(1).await;
    store.get("TGT-1").unwrap();
    secs(1).await;
    assert!(store.get("TGT-1").is_err(), "a get is not a use");

    store
        .put(PutTicket {
            idle_ms: Some(2_000),
            ..put("TGT-2", 5_000)
        })
        .unwrap();
    for _ in 0..4 {
        secs(1).await;
        store.touch("TGT-2").unwrap();
    }
    secs(1).await;
    assert!(
        store.get("TGT-2").is_err(),
        "touches never pass the hard deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn sweeper_removes_dead_tickets_and_later_their_tombstones() {
    let store = Arc::new(store());
    let shutdown = Shutdown::new();
    let sweeper = worker::spawn(Sweeper::new(store.clone()), &shutdown);
    store.put(put("TGT-1", 10_000)).unwrap();
    store.put(child("ST-1", "TGT-1", 3_000)).unwrap();
    store.put(put("TGT-2", 60_000)).unwrap();
    assert_eq!(store.count().total, 3);
    secs(3).await;
    assert!(store.get("ST-1").is_err(), "dead at its deadline");
    assert_eq!(stored_state(&store, "ST-1"), Some(false), "not yet swept");
    secs(2).await;
    assert_eq!(
        store.count().by_kind.get("ST"),
        None,
        "forgotten after its deadline and the skew slack (no copy is live)"
    );
    secs(7).await;
    let counts = store.count();
    assert_eq!(counts.total, 1);
    assert_eq!(counts.by_kind.get("TGT"), Some(&1));
    assert_eq!(stored_state(&store, "TGT-1"), None);
    // A deleted ticket's tombstone stays until deadline + skew budget, so
    // stale copies stay dead.
    store.delete("TGT-2").unwrap();
    assert_eq!(stored_state(&store, "TGT-2"), Some(true), "a tombstone");
    secs(50).await;
    assert_eq!(stored_state(&store, "TGT-2"), None, "forgotten after skew");
    shutdown.stop();
    sweeper.await.unwrap();
}

/// While the hold lasts, due tickets stay live records and the sweeper checks
/// the hold about once a second (it does not spin on the due keys); once the
/// hold ends it tombstones them.
#[tokio::test(start_paused = true)]
async fn a_holding_sweeper_waits_without_spinning_then_resumes() {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    let store = Arc::new(store());
    let shutdown = Shutdown::new();
    let hold = Arc::new(AtomicBool::new(true));
    let checks = Arc::new(AtomicUsize::new(0));
    /// A store whose expiry is held while `hold` is set; counts the slices.
    struct HeldStore {
        store: Arc<Store>,
        hold: Arc<AtomicBool>,
        checks: Arc<AtomicUsize>,
    }
    impl Sweep for HeldStore {
        fn store(&self) -> &Store {
            &self.store
        }
        async fn sweep(&self, budget: usize) -> SweepReport {
            self.checks.fetch_add(1, Ordering::Relaxed);
            if self.hold.load(Ordering::Relaxed) {
                self.store.sweep(budget, Expiry::Hold)
            } else {
                Sweep::sweep(&*self.store, budget).await
            }
        }
    }
    let source = HeldStore {
        store: store.clone(),
        hold: hold.clone(),
        checks: checks.clone(),
    };
    let _sweeper = worker::spawn(Sweeper::new(Arc::new(source)), &shutdown);
    // Idle tickets: due after 1 s (plus the skew budget), kept for 60 s.
    for n in 0..1_000 {
        store
            .put(PutTicket {
                idle_ms: Some(1_000),
                ..put(&format!("TGT-{n}"), 60_000)
            })
            .unwrap();
    }
    secs(2).await;
    let before = checks.load(Ordering::Relaxed);
    secs(10).await;
    let during = checks.load(Ordering::Relaxed) - before;
    assert!((9..=12).contains(&during), "{during} checks in 10 s");
    assert_eq!(stored_state(&store, "TGT-7"), Some(false), "no tombstone");
    assert!(store.get("TGT-7").is_err(), "yet not served");
    hold.store(false, Ordering::Relaxed);
    secs(2).await;
    assert_eq!(stored_state(&store, "TGT-7"), Some(true), "tombstoned");
    assert_eq!(store.count().total, 0);
    shutdown.stop();
}

#[tokio::test(start_paused = true)]
async fn sweeper_kills_descendants_of_an_idle_parent() {
    let store = Arc::new(store());
    let shutdown = Shutdown::new();
    let _sweeper = worker::spawn(Sweeper::new(store.clone()), &shutdown);
    store
        .put(PutTicket {
            idle_ms: Some(2_000),
            ..put("TGT-1", 60_000)
        })
        .unwrap();
    store.put(child("PGT-1", "TGT-1", 60_000)).unwrap();
    secs(2).await;
    assert!(
        store.get("PGT-1").is_err(),
        "a dead parent hides its children at once"
    );
    secs(2).await;
    assert_eq!(store.count().total, 0, "and the sweeper tombstones them");
    shutdown.stop();
}

#[tokio::test(start_paused = true)]
async fn sweep_works_in_bounded_slices() {
    let store = store();
    for n in 0..1_000 {
        store.put(put(&format!("ST-{n}"), 2_000)).unwrap();
    }
    // Hard deadline plus the skew slack: every copy is past its retention,
    // so they are forgotten, no tombstone needed.
    secs(3).await;
    let report = store.sweep(300, Expiry::Tombstone);
    assert_eq!(report.purged, 300);
    assert!(report.more_due);
    let mut purged = 300;
    loop {
        let report = store.sweep(300, Expiry::Tombstone);
        if report.purged == 0 {
            break;
        }
        purged += report.purged;
    }
    assert_eq!(purged, 1_000);
    assert_eq!(store.count().total, 0);
}

/// A fenced node holds expiry: no tombstone for an expired ticket (it would
/// spread), yet tombstones past retention are still forgotten, and the held
/// keys neither block those nor get lost for when the hold ends.
#[tokio::test(start_paused = true)]
async fn a_held_sweep_tombstones_nothing_and_still_purges() {
    let store = store();
    store.put(put("TGT-gone", 500)).unwrap();
    store.delete("TGT-gone").unwrap();
    for n in 0..10 {
        store
            .put(PutTicket {
                idle_ms: Some(1_000),
                ..put(&format!("TGT-{n}"), 60_000)
            })
            .unwrap();
    }
    secs(2).await;
    assert_eq!(stored_state(&store, "TGT-gone"), Some(true));
    let report = store.sweep(100, Expiry::Hold);
    assert_eq!((report.expired, report.held, report.purged), (0, 10, 1));
    assert!(!report.more_due);
    assert_eq!(stored_state(&store, "TGT-gone"), None);
    assert_eq!(stored_state(&store, "TGT-3"), Some(false), "no tombstone");
    assert!(store.get("TGT-3").is_err(), "yet nothing expired is served");
    let report = store.sweep(100, Expiry::Tombstone);
    assert_eq!((report.expired, report.held), (0, 0));
    assert_eq!(report.idle_dead.len(), 10, "idle deaths, to confirm");
    assert_eq!(store.expire_idle(&report.idle_dead), 10);
    assert_eq!(stored_state(&store, "TGT-3"), Some(true));
}

#[tokio::test(start_paused = true)]
async fn counts_sessions_and_logout_everywhere() {
    let store = store();
    for (id, principal) in [("TGT-1", "Alice"), ("TGT-2", "alice"), ("TGT-3", "bob")] {
        store
            .put(PutTicket {
                principal: Some(principal.into()),
                ..put(id, 60_000)
            })
            .unwrap();
    }
    store.put(child("ST-1", "TGT-1", 10_000)).unwrap();
    let counts = store.count();
    assert_eq!(counts.total, 4);
    assert_eq!(counts.by_kind.get("TGT"), Some(&3));
    assert_eq!(counts.by_kind.get("ST"), Some(&1));
    let sessions = store.sessions_for("ALICE").unwrap();
    let ids: Vec<_> = sessions.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["TGT-1", "TGT-2"]);
    assert_eq!(
        store.delete_for("aLiCe").unwrap().value,
        3,
        "two TGTs and an ST"
    );
    assert!(store.sessions_for("alice").unwrap().is_empty());
    assert_eq!(store.count().total, 1);
}

/// A touch moves a ticket's due time (idle) and nothing else: the sweeper's
/// index holds the ticket once, at its new due time, and the kind and
/// principal indexes still count it once.
#[tokio::test(start_paused = true)]
async fn a_touch_moves_only_the_due_time_in_the_indexes() {
    let store = store();
    store
        .put(PutTicket {
            principal: Some("Alice".into()),
            idle_ms: Some(2_000),
            ..put("TGT-1", 60_000)
        })
        .unwrap();
    let dues = |store: &Store| -> Vec<Millis> {
        let shard = store.lock(store.shard_index("TGT-1"));
        let due = shard.due.iter().filter(|(_, id)| &**id == "TGT-1");
        due.map(|(due, _)| *due).collect()
    };
    assert_eq!(dues(&store), [EPOCH + 2_000 + SKEW]);
    for n in 1..=3 {
        secs(1).await;
        store.touch("TGT-1").unwrap();
        assert_eq!(dues(&store), [EPOCH + n * 1_000 + 2_000 + SKEW]);
    }
    let counts = store.count();
    assert_eq!((counts.total, counts.by_kind.get("TGT")), (1, Some(&1)));
    let sessions = store.sessions_for("alice").unwrap();
    assert_eq!(sessions.len(), 1);
}

/// What a consume or an update is decided on: the same ticket `get` returns,
/// refused alike when it or an ancestor is dead.
#[tokio::test(start_paused = true)]
async fn decide_state_reads_what_get_returns_and_refuses_alike() {
    let store = store();
    store.put(put("TGT-1", 60_000)).unwrap();
    store
        .put(PutTicket {
            max_uses: 2,
            ..child("ST-1", "TGT-1", 10_000)
        })
        .unwrap();
    store.consume("ST-1").unwrap();
    let state = store.decide_state("ST-1").unwrap();
    let view = store.get("ST-1").unwrap();
    assert_eq!((state.uses, state.max_uses), (view.uses, view.max_uses));
    assert_eq!(state.version.to_version(), view.version);
    assert_eq!(state.retain_until_ms, EPOCH + 10_000 + SKEW);
    store.delete("TGT-1").unwrap();
    assert_eq!(
        store.decide_state("ST-1").unwrap_err(),
        StoreError::NotFound
    );
    assert_eq!(
        store.decide_state("ST-9").unwrap_err(),
        StoreError::NotFound
    );
}

#[tokio::test(start_paused = true)]
async fn list_pages_through_everything_with_filters() {
    let store = store();
    for n in 0..1_500 {
        let kind_id = if n % 3 == 0 { "TGT" } else { "ST" };
        store
            .put(PutTicket {
                principal: Some(format!("user{}", n % 10)),
                ..put(&format!("{kind_id}-{n}"), 60_000)
            })
            .unwrap();
    }
    let collect = |filter: ListFilter| {
        let mut all = Vec::new();
        let mut cursor = Some(ListCursor::default());
        while let Some(at) = cursor {
            let (page, next) = store.list_page(&filter, at, 100);
            assert!(page.len() <= 100);
            all.extend(page.into_iter().map(|t| t.id));
            cursor = next;
        }
        all
    };
    let everything = collect(ListFilter::default());
    assert_eq!(everything.len(), 1_500);
    let unique: std::collections::HashSet<_> = everything.iter().collect();
    assert_eq!(unique.len(), 1_500);
    assert_eq!(
        collect(ListFilter {
            kind: Some("TGT".into()),
            ..ListFilter::default()
        })
        .len(),
        500
    );
    assert_eq!(
        collect(ListFilter {
            principal: Some("USER3".into()),
            ..ListFilter::default()
        })
        .len(),
        150
    );
}

#[tokio::test(start_paused = true)]
async fn delete_all_removes_everything() {
    let store = store();
    for n in 0..700 {
        store.put(put(&format!("ST-{n}"), 60_000)).unwrap();
    }
    assert_eq!(store.delete_all().value, 700);
    assert_eq!(store.count().total, 0);
    assert!(store.get("ST-5").is_err());
}

/// A peer's tombstone beats a touch made here; a stale copy cannot resurrect.
#[tokio::test(start_paused = true)]
async fn merged_tombstones_win_and_stale_copies_are_ignored() {
    let store = store();
    let written = store.put(put("TGT-1", 10_000)).unwrap();
    let (_, live_copy) = written.changes[0].clone();
    store.touch("TGT-1").unwrap();
    store.apply("TGT-1", Entry::tombstone(0));
    assert!(store.get("TGT-1").is_err());
    store.apply("TGT-1", live_copy.clone());
    assert!(store.get("TGT-1").is_err(), "remove wins");

    // Past deadline + skew, an incoming copy is ignored altogether.
    secs(12).await;
    store.sweep(100, Expiry::Tombstone);
    assert!(store.apply("TGT-1", live_copy).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_child_arriving_after_its_parent_died_is_deleted_on_arrival() {
    let store = store();
    let other = Store::new(
        StoreConfig::default(),
        HlcClock::new(Clock::starting_at(EPOCH), "node-b".into()),
    );
    other.put(put("TGT-1", 60_000)).unwrap();
    let child_copy = other.put(child("ST-1", "TGT-1", 10_000)).unwrap().changes;
    store.put(put("TGT-1", 60_000)).unwrap();
    store.delete("TGT-1").unwrap();
    for (id, entry) in child_copy {
        let changed = store.apply(&id, entry);
        assert!(matches!(changed[0].1.state, State::Deleted));
    }
    assert!(store.get("ST-1").is_err());
    assert_eq!(store.count().total, 0);
}

/// Two stores that merged the same entries, in any order, have the same digests;
/// the buckets of entries only one holds differ.
#[tokio::test(start_paused = true)]
async fn digests_agree_exactly_when_contents_agree() {
    let a = store();
    let b = Store::new(
        StoreConfig {
            shards: 3,
            ..StoreConfig::default()
        },
        HlcClock::new(Clock::starting_at(EPOCH), "node-b".into()),
    );
    let mut changes = Vec::new();
    for n in 0..300 {
        changes.extend(a.put(put(&format!("ST-{n}"), 60_000)).unwrap().changes);
    }
    changes.extend(a.touch("ST-7").unwrap().changes);
    changes.extend(a.delete("ST-8").unwrap().changes);
    for (id, entry) in changes.iter().rev() {
        b.apply(id, entry.clone());
    }
    assert_eq!(a.digests(), b.digests(), "shard count does not matter");
    a.touch("ST-9").unwrap();
    let differing: Vec<usize> = (0..digest::BUCKETS)
        .filter(|&i| a.digests()[i] != b.digests()[i])
        .collect();
    assert_eq!(differing, [digest::bucket_of("ST-9")]);
    let in_bucket = a.bucket_entries(differing[0], |id, _| id.to_owned());
    assert!(in_bucket.iter().any(|id| id == "ST-9"));
    assert!(
        in_bucket
            .iter()
            .all(|id| digest::bucket_of(id) == differing[0])
    );
}

/// Each bucket's digest is the XOR of a fresh hash of every entry the store
/// holds in it, after every kind of change: a write hashes only the new entry
/// and takes the old one's from what was stored with it, which must never be
/// stale.
#[tokio::test(start_paused = true)]
async fn bucket_digests_are_always_those_of_the_held_entries() {
    let a = store();
    let b = store_with_shards(3);
    let check = |store: &Store, step: &str| {
        for (bucket, held) in store.digests().into_iter().enumerate() {
            let fresh = store
                .bucket_entries(bucket, digest::entry_digest)
                .into_iter()
                .fold(0, |all, one| all ^ one);
            assert_eq!(held, fresh, "bucket {bucket} after {step}");
        }
    };
    for n in 0..40 {
        let tgt = format!("TGT-{n}");
        let written = a.put(PutTicket {
            idle_ms: Some(5_000),
            ..put(&tgt, 20_000)
        });
        for (id, entry) in written.unwrap().changes {
            b.apply(&id, entry);
        }
        a.put(PutTicket {
            max_uses: 2,
            ..child(&format!("ST-{n}"), &tgt, 10_000)
        })
        .unwrap();
    }
    check(&a, "puts");
    for n in 0..40 {
        let changes = match n % 5 {
            0 => a.touch(&format!("TGT-{n}")).unwrap().changes,
            1 => a.consume(&format!("ST-{n}")).unwrap().changes,
            2 => {
                a.consume(&format!("ST-{n}")).unwrap();
                a.consume(&format!("ST-{n}")).unwrap().changes
            }
            3 => {
                let update = UpdateTicket {
                    payload: Some(Bytes::from_static(b"other")),
                    ..UpdateTicket::default()
                };
                a.update(&format!("TGT-{n}"), update).unwrap().changes
            }
            _ => a.delete(&format!("TGT-{n}")).unwrap().changes,
        };
        // The peer merges the newer copies over what it holds.
        for (id, entry) in changes {
            b.apply(&id, entry);
        }
    }
    check(&a, "touches, uses, updates and deletes");
    check(&b, "merges from a peer");
    // A stale copy merged back changes nothing.
    let old = a.put(put("TGT-old", 20_000)).unwrap().changes;
    a.touch("TGT-old").unwrap();
    for (id, entry) in old {
        a.apply(&id, entry);
    }
    check(&a, "a stale copy");
    secs(12).await;
    a.sweep(1_000, Expiry::Tombstone);
    check(&a, "expiry");
    secs(30).await;
    a.sweep(1_000, Expiry::Tombstone);
    check(&a, "forgetting tombstones");
}

/// A bucket's entries are exactly the entries of that bucket, whether a shard
/// holds one bucket (the default), several, or buckets are spread unevenly.
#[tokio::test(start_paused = true)]
async fn bucket_entries_are_the_buckets_whatever_the_shard_count() {
    let ids: Vec<String> = (0..2_000).map(|n| format!("ST-{n}-x")).collect();
    for shards in [1, 3, 32, 255, digest::BUCKETS, 300] {
        let store = store_with_shards(shards);
        for id in &ids {
            store.put(put(id, 60_000)).unwrap();
        }
        let mut seen = 0;
        for bucket in 0..digest::BUCKETS {
            let mut got = store.bucket_entries(bucket, |id, _| id.to_owned());
            got.sort();
            let mut want: Vec<String> = ids
                .iter()
                .filter(|id| digest::bucket_of(id) == bucket)
                .cloned()
                .collect();
            want.sort();
            assert_eq!(got, want, "bucket {bucket} with {shards} shards");
            seen += got.len();
        }
        assert_eq!(seen, ids.len());
    }
    assert_eq!(StoreConfig::default().shards, digest::BUCKETS);
}

/// Pages of a bucket cover it exactly once, in id order, each stopping once
/// its sizes reach the budget (one entry at least), whatever the shard count.
#[tokio::test(start_paused = true)]
async fn bucket_pages_cover_the_bucket_once_within_their_budget() {
    let ids: Vec<String> = (0..4_000).map(|n| format!("ST-{n}-x")).collect();
    for shards in [7, digest::BUCKETS] {
        let store = store_with_shards(shards);
        for id in &ids {
            store.put(put(id, 60_000)).unwrap();
        }
        let bucket = digest::bucket_of(&ids[0]);
        let whole = store.bucket_entries(bucket, |id, _| id.to_owned());
        assert!(whole.len() > 10, "{}", whole.len());
        for budget in [0, 1, 30, 100, usize::MAX] {
            let mut paged = Vec::new();
            let mut after = String::new();
            loop {
                let (page, more) =
                    store.bucket_page(bucket, &after, budget, |id, _| id.to_owned(), |id| id.len());
                assert!(!page.is_empty() || !more, "an empty page never says more");
                let sizes: usize = page.iter().map(String::len).sum();
                let last = page.last().map_or(0, String::len);
                assert!(
                    sizes - last < budget.max(1),
                    "over budget before the last entry"
                );
                paged.extend(page);
                match paged.last() {
                    Some(id) if more => after.clone_from(id),
                    _ => break,
                }
            }
            assert_eq!(paged, whole, "budget {budget}, {shards} shards");
        }
    }
}

/// Everything a store holds, indexes included, in a comparable form.
fn snapshot(store: &Store) -> Vec<String> {
    (0..store.shards.len())
        .map(|index| {
            let shard = store.lock(index);
            let mut children: Vec<_> = shard.children.iter().collect();
            children.sort();
            let mut principals: Vec<_> = shard.by_principal.iter().collect();
            principals.sort();
            let mut kinds: Vec<_> = shard.kinds.iter().collect();
            kinds.sort();
            format!(
                "entries {:?}\ndue {:?}\nchildren {children:?}\nprincipals {principals:?}\nkinds {kinds:?}\ndigests {:?}",
                shard.entries, shard.due, shard.digests
            )
        })
        .collect()
}

/// The records a writer's history produced, as a peer receives them: puts of
/// parents and children (some sharing a shard, some not), touches, consumes,
/// updates and deletes that cascade.
fn history(ops: &[(u8, u8)]) -> Vec<Change> {
    let writer = Store::new(
        StoreConfig {
            shards: 3,
            skew_budget_ms: SKEW,
            limits: Limits::default(),
        },
        HlcClock::new(Clock::starting_at(EPOCH), "node-w".into()),
    );
    let mut changes = Vec::new();
    for &(op, n) in ops {
        let id = format!("ST-{}", n % 12);
        let parent = format!("TGT-{}", n % 4);
        let written = match op % 6 {
            0 => writer
                .put(PutTicket {
                    principal: Some(format!("User{}", n % 3)),
                    ..put(&parent, 60_000)
                })
                .map(|w| w.changes),
            1 => writer
                .put(PutTicket {
                    max_uses: u32::from(n % 3),
                    ..child(&id, &parent, 30_000)
                })
                .map(|w| w.changes),
            2 => writer.touch(&id).map(|w| w.changes),
            3 => writer.consume(&id).map(|w| w.changes),
            4 => writer.delete(&parent).map(|w| w.changes),
            _ => writer.delete(&id).map(|w| w.changes),
        };
        changes.extend(written.unwrap_or_default());
    }
    changes
}

/// A store with `shards` lock shards, the rest as configured by default.
fn store_with_shards(shards: usize) -> Store {
    Store::new(
        StoreConfig {
            shards,
            skew_budget_ms: SKEW,
            limits: Limits::default(),
        },
        HlcClock::new(Clock::starting_at(EPOCH), "node-r".into()),
    )
}

proptest::proptest! {
    /// A bulk merge leaves a store exactly as merging the same records one by
    /// one does: entries, tombstones, deadline, children and principal
    /// indexes, per-kind counters and digests, whatever the order, the shard
    /// count or how the records are split into batches.
    #[test]
    fn apply_many_ends_like_apply_one_by_one(
        ops in proptest::collection::vec((0u8..6, 0u8..24), 1..60),
        order in proptest::collection::vec(0usize..1000, 0..200),
        batch in 1usize..40,
        shards in 1usize..5,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut records = history(&ops);
            if records.is_empty() {
                return Ok(());
            }
            // Peers deliver in any order, with repeats.
            for (i, pick) in order.iter().enumerate() {
                let len = records.len();
                let at = pick % len;
                records.swap(i % len, at);
                if pick % 7 == 0 {
                    records.push(records[at].clone());
                }
            }
            let one_by_one = store_with_shards(shards);
            for (id, entry) in &records {
                one_by_one.apply(id, entry.clone());
            }
            let bulk = store_with_shards(shards);
            for chunk in records.chunks(batch) {
                bulk.apply_many(chunk.iter().cloned());
            }
            proptest::prop_assert_eq!(snapshot(&bulk), snapshot(&one_by_one));
            proptest::prop_assert_eq!(bulk.count(), one_by_one.count());
            Ok(())
        })?;
    }
}

/// A tombstone in a bulk merge wins over a live copy of the same ticket
/// earlier or later in the batch, and takes the ticket's children with it.
#[tokio::test(start_paused = true)]
async fn apply_many_tombstones_win_and_cascade() {
    let records = history(&[(0, 0), (1, 0), (1, 4), (4, 0)]);
    let (tombstones, live): (Vec<Change>, Vec<Change>) =
        records.into_iter().partition(|(_, e)| e.is_deleted());
    assert_eq!(tombstones.len(), 3, "the TGT and its two STs");
    for shards in [1, 3] {
        for order in [
            [tombstones.clone(), live.clone()].concat(),
            [live.clone(), tombstones[..1].to_vec()].concat(),
        ] {
            let store = store_with_shards(shards);
            store.apply_many(order);
            assert_eq!(store.count().total, 0);
            for id in ["TGT-0", "ST-0", "ST-4"] {
                assert_eq!(stored_state(&store, id), Some(true), "{id} deleted");
                assert!(store.get(id).is_err());
            }
        }
    }
}

/// A bulk merge of a big batch holds a shard lock for a page at a time and
/// ends with the same digests and counts as the writer.
#[tokio::test(start_paused = true)]
async fn apply_many_of_a_big_batch_matches_the_writer() {
    let writer = store();
    let mut records = Vec::new();
    for n in 0..2_000 {
        records.extend(
            writer
                .put(put(&format!("TGT-{n}"), 60_000))
                .unwrap()
                .changes,
        );
    }
    records.extend(writer.delete("TGT-7").unwrap().changes);
    let bulk = store();
    bulk.apply_many(records);
    assert_eq!(bulk.digests(), writer.digests());
    assert_eq!(bulk.count(), writer.count());
    assert_eq!(bulk.count().total, 1_999);
    assert_eq!(snapshot(&bulk), snapshot(&writer));
}

/// Review #14 (fifth bullet): the merge path checked and indexed the parent of
/// whichever incarnation won, in the shard locked for the incoming entry's
/// parent (or in the child's own shard): a touch of a child, or a merge that
/// kept the held incarnation, left a children-index entry in a shard that no
/// delete or sweep looks at.
#[tokio::test(start_paused = true)]
async fn the_children_index_lives_only_in_the_parents_shard() {
    let a = store();
    let b = Store::new(
        StoreConfig {
            shards: 8,
            skew_budget_ms: SKEW,
            limits: Limits::default(),
        },
        HlcClock::new(Clock::starting_at(EPOCH), "node-b".into()),
    );
    let shard_of = |id: &str| a.shard_index(id);
    let ids: Vec<String> = (0..).map(|n| format!("TGT-{n}")).take(64).collect();
    let p1 = ids[0].clone();
    let p2 = ids
        .iter()
        .find(|id| shard_of(id) != shard_of(&p1))
        .unwrap()
        .clone();
    let c = (0..)
        .map(|n| format!("PGT-{n}"))
        .find(|id| shard_of(id) != shard_of(&p1) && shard_of(id) != shard_of(&p2))
        .unwrap();
    let indexed_elsewhere = |store: &Store, parent: &str| {
        (0..8)
            .filter(|&shard| shard != store.shard_index(parent))
            .any(|shard| store.lock(shard).children.contains_key(parent))
    };
    for store in [&a, &b] {
        store.put(put(&p1, 60_000)).unwrap();
        store.put(put(&p2, 60_000)).unwrap();
    }
    // Node b: the child under p1, kept 30 s; a touch of it.
    b.put(child(&c, &p1, 30_000)).unwrap();
    b.touch(&c).unwrap();
    assert!(
        !indexed_elsewhere(&b, &p1),
        "a touch indexed the child off its parent's shard"
    );
    // Node a: a newer incarnation under p2, kept 10 s; then b's older one arrives
    // (it loses, but its longer retention changes the merged entry).
    secs(1).await;
    a.put(child(&c, &p2, 10_000)).unwrap();
    a.apply(&c, b.entry(&c).unwrap());
    assert!(
        !indexed_elsewhere(&a, &p2),
        "a merge indexed the winner's parent in the loser's parent's shard"
    );
    assert_eq!(a.get(&c).unwrap().parent.as_deref(), Some(p2.as_str()));
}
