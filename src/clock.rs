//! Time: the node's wall clock and its hybrid logical clock (HLC).
//!
//! Every time Tessera stores or compares is milliseconds since the Unix epoch.
//! The wall clock is read as *an anchor taken at start plus tokio's monotonic
//! elapsed time*, corrected towards the system clock once a second (a worker
//! calls [`Clock::resync_with_system`]). Three reasons: tests can pause and
//! advance tokio's clock to drive every expiry decision without sleeping; a
//! node whose system clock NTP corrects follows the correction without a
//! restart, so its clock fence lifts (review #13); and the clock never steps
//! backwards: a correction backwards holds the clock still until true time
//! has caught up with what it already read, so nothing that was expired
//! becomes live again.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tracing::warn;

use crate::worker::{Worker, WorkerState};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// Differences from the system clock below this are jitter, not corrections.
const RESYNC_TOLERANCE_MS: i64 = 10;

/// The node's wall clock, in milliseconds since the Unix epoch.
#[derive(Clone, Debug)]
pub struct Clock {
    anchor_ms: Millis,
    anchor: Instant,
    /// Deliberate offset, for skew tests only (`--clock-offset`).
    offset_ms: i64,
    /// Whether [`Clock::resync_with_system`] reads the system clock (not in
    /// tests, whose clocks start at a chosen epoch).
    follows_system: bool,
    /// Corrections taken since start, shared by every clone.
    correction: Arc<Correction>,
}

#[derive(Debug, Default)]
struct Correction {
    /// Added to the anchored reading.
    shift_ms: AtomicI64,
    /// No reading is below this: the last reading before a backwards correction.
    floor_ms: AtomicU64,
}

impl Clock {
    /// A clock anchored at the system time now, and following it.
    pub fn system() -> Clock {
        Clock {
            follows_system: true,
            ..Clock::starting_at(system_now_ms())
        }
    }

    /// A clock anchored at a chosen time: tests start every node at the same
    /// epoch so their expectations are exact.
    pub fn starting_at(anchor_ms: Millis) -> Clock {
        Clock {
            anchor_ms,
            anchor: Instant::now(),
            offset_ms: 0,
            follows_system: false,
            correction: Arc::default(),
        }
    }

    /// The same clock shifted by `offset_ms` (positive: ahead).
    pub fn with_offset(mut self, offset_ms: i64) -> Clock {
        self.offset_ms = offset_ms;
        self
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> Millis {
        // Shift before floor, as `resync_to` writes floor before shift: a
        // reading that sees the new shift sees the new floor too.
        let shifted = self.shifted_ms();
        shifted.max(self.correction.floor_ms.load(Ordering::SeqCst))
    }

    /// The reading without the floor of a backwards correction.
    fn shifted_ms(&self) -> Millis {
        let shift_ms = self.correction.shift_ms.load(Ordering::SeqCst);
        self.uncorrected_ms().saturating_add_signed(shift_ms)
    }

    fn uncorrected_ms(&self) -> Millis {
        let elapsed = self.anchor.elapsed().as_millis() as Millis;
        self.anchor_ms
            .saturating_add(elapsed)
            .saturating_add_signed(self.offset_ms)
    }

    /// Take the system clock's reading `system_ms` (NTP's view of true time;
    /// with the deliberate offset of a skew test added). Ahead of this clock:
    /// it jumps forward at once. Behind: it stands still until `system_ms`
    /// passes what it read last. Returns the correction, 0 within jitter.
    pub fn resync_to(&self, system_ms: Millis) -> i64 {
        let correction_ms = system_ms as i64 - self.shifted_ms() as i64;
        if correction_ms.abs() <= RESYNC_TOLERANCE_MS {
            return 0;
        }
        self.correction
            .floor_ms
            .fetch_max(self.now_ms(), Ordering::SeqCst);
        let shift_ms = system_ms as i64 - self.uncorrected_ms() as i64;
        self.correction.shift_ms.store(shift_ms, Ordering::SeqCst);
        correction_ms
    }

    /// [`Clock::resync_to`] the system clock, for a clock that follows it.
    pub fn resync_with_system(&self) -> i64 {
        if !self.follows_system {
            return 0;
        }
        self.resync_to(system_now_ms().saturating_add_signed(self.offset_ms))
    }

    /// The tokio instant at which this clock reads `at_ms` (now if passed).
    pub fn instant_at(&self, at_ms: Millis) -> Instant {
        let now_ms = self.now_ms();
        Instant::now() + Duration::from_millis(at_ms.saturating_sub(now_ms))
    }
}

/// The background job that keeps a [`Clock`] following the system clock.
pub struct ClockSync {
    clock: Clock,
}

impl ClockSync {
    /// How often the system clock is read.
    pub const INTERVAL: Duration = Duration::from_secs(1);

    pub fn new(clock: Clock) -> ClockSync {
        ClockSync { clock }
    }
}

impl Worker for ClockSync {
    fn name(&self) -> &'static str {
        "clock-sync"
    }

    async fn work(&mut self) -> WorkerState {
        let correction_ms = self.clock.resync_with_system();
        if correction_ms > 0 {
            warn!(correction_ms, "the system clock moved ahead: following it");
        } else if correction_ms < 0 {
            warn!(
                correction_ms,
                "the system clock moved back: holding this clock still until it catches up"
            );
        }
        WorkerState::Idle
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(Self::INTERVAL).await
    }
}

fn system_now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// A hybrid logical clock reading: physical milliseconds plus a counter that
/// orders events within one millisecond or against a peer whose clock runs ahead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc {
    pub wall_ms: Millis,
    pub logical: u32,
}

/// A globally unique, totally ordered write stamp: the HLC reading and the node
/// that took it. Last-writer-wins registers are keyed by it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub hlc: Hlc,
    pub node: Arc<str>,
}

impl Stamp {
    /// Compact, opaque text form (used as the ticket's `version`):
    /// `{wall_ms:x}.{logical:x}.{node}`. Built by hand, not with `format!`: it
    /// is made for every ticket a call returns, and the formatting machinery
    /// cost more than the rest of a touch.
    pub fn to_version(&self) -> String {
        let mut version = String::with_capacity(16 + 1 + 8 + 1 + self.node.len());
        push_hex(&mut version, self.hlc.wall_ms);
        version.push('.');
        push_hex(&mut version, u64::from(self.hlc.logical));
        version.push('.');
        version.push_str(&self.node);
        version
    }
}

impl Stamp {
    /// The stamp a [`Stamp::to_version`] text names, if it is one.
    pub fn from_version(version: &str) -> Option<Stamp> {
        let mut parts = version.splitn(3, '.');
        let wall_ms = u64::from_str_radix(parts.next()?, 16).ok()?;
        let logical = u32::from_str_radix(parts.next()?, 16).ok()?;
        let node = parts.next()?;
        Some(Stamp {
            hlc: Hlc { wall_ms, logical },
            node: node.into(),
        })
    }
}

/// Lower-case hex digits of `n` without leading zeros (as `{:x}` writes them).
fn push_hex(out: &mut String, n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let nibbles = (64 - n.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..nibbles).rev() {
        out.push(char::from(DIGITS[((n >> (shift * 4)) & 0xf) as usize]));
    }
}

/// The node's HLC: every local write takes a fresh stamp; every stamp seen from
/// a peer is observed so local stamps stay ahead of it.
#[derive(Debug)]
pub struct HlcClock {
    clock: Clock,
    node: Arc<str>,
    last: Mutex<Hlc>,
}

impl HlcClock {
    pub fn new(clock: Clock, node: Arc<str>) -> HlcClock {
        HlcClock {
            clock,
            node,
            last: Mutex::new(Hlc::default()),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    /// A fresh stamp, strictly greater than every stamp taken or observed here.
    pub fn stamp(&self) -> Stamp {
        let physical = self.clock.now_ms();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = if physical > last.wall_ms {
            Hlc {
                wall_ms: physical,
                logical: 0,
            }
        } else {
            advance_logical(*last)
        };
        Stamp {
            hlc: *last,
            node: self.node.clone(),
        }
    }

    /// Take a peer's reading into account (HLC receive rule).
    pub fn observe(&self, remote: Hlc) {
        let physical = self.clock.now_ms();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let wall_ms = physical.max(last.wall_ms).max(remote.wall_ms);
        let logical = if wall_ms == last.wall_ms && wall_ms == remote.wall_ms {
            last.logical.max(remote.logical).saturating_add(1)
        } else if wall_ms == last.wall_ms {
            last.logical.saturating_add(1)
        } else if wall_ms == remote.wall_ms {
            remote.logical.saturating_add(1)
        } else {
            0
        };
        *last = Hlc { wall_ms, logical };
    }
}

/// Next reading within the same millisecond; on counter overflow, borrow the
/// next millisecond rather than repeat a stamp.
fn advance_logical(hlc: Hlc) -> Hlc {
    match hlc.logical.checked_add(1) {
        Some(logical) => Hlc {
            wall_ms: hlc.wall_ms,
            logical,
        },
        None => Hlc {
            wall_ms: hlc.wall_ms + 1,
            logical: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_as_hex_wall_and_counter_then_node() {
        for (wall_ms, logical) in [(0, 0), (1, 15), (0xabc, 0x10), (u64::MAX, u32::MAX)] {
            let stamp = Stamp {
                hlc: Hlc { wall_ms, logical },
                node: "node-a".into(),
            };
            assert_eq!(
                stamp.to_version(),
                format!("{wall_ms:x}.{logical:x}.node-a")
            );
            assert_eq!(Stamp::from_version(&stamp.to_version()), Some(stamp));
        }
        assert_eq!(Stamp::from_version("not a version"), None);
        assert_eq!(Stamp::from_version("zz.0.node"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn paused_clock_drives_wall_time() {
        let clock = Clock::starting_at(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert_eq!(clock.now_ms(), 3_500);
        assert_eq!(clock.clone().with_offset(-500).now_ms(), 3_000);
    }

    #[tokio::test(start_paused = true)]
    async fn corrections_jump_forward_and_hold_still_backwards() {
        let clock = Clock::starting_at(10_000);
        assert_eq!(clock.resync_to(10_005), 0, "jitter is ignored");
        assert_eq!(clock.now_ms(), 10_000);
        assert_eq!(clock.resync_to(12_000), 2_000);
        assert_eq!(clock.clone().now_ms(), 12_000, "clones share corrections");
        assert_eq!(clock.resync_to(9_000), -3_000);
        tokio::time::advance(Duration::from_millis(2_000)).await;
        assert_eq!(clock.now_ms(), 12_000, "held still, not stepped back");
        assert_eq!(clock.resync_to(11_000), 0, "a clock held still is in sync");
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now_ms(), 12_500, "runs again once true time passed");
        assert_eq!(
            clock.resync_with_system(),
            0,
            "a test clock ignores the system"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stamps_strictly_increase_and_follow_peers() {
        let hlc = HlcClock::new(Clock::starting_at(10_000), "a".into());
        let first = hlc.stamp();
        let second = hlc.stamp();
        assert!(second > first, "same millisecond still orders");
        hlc.observe(Hlc {
            wall_ms: 50_000,
            logical: 7,
        });
        let after_peer = hlc.stamp();
        assert!(
            after_peer.hlc
                > Hlc {
                    wall_ms: 50_000,
                    logical: 7
                }
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(hlc.stamp().hlc.wall_ms, 70_000);
    }
}
