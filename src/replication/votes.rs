//! The votes a node has cast for conditional operations: the acceptor side of
//! one single-decree consensus per slot.
//!
//! A slot is one use of one incarnation of a ticket (`use:3`) or one payload
//! version it may be replaced from (`version:...`). A proposal needs votes
//! from a majority of the cluster's expected size, and two majorities always
//! share a node, so two proposals can never both win a slot as long as every
//! node keeps this one promise: **having voted for a proposal on a slot, it
//! never votes for another proposal on that slot while any node could still
//! propose it.**
//!
//! An acceptor grants a proposal only when all of these hold (checked in this
//! order by `Replicator::accept`, the book being the last):
//!
//! - **R1, fit to vote.** Its clock is not in doubt (a fence implies doubt),
//!   and it has caught up with its cluster.
//! - **R2, proposal on time.** The proposal's stamp is not more than the skew
//!   budget ahead of its own clock: a proposer's stamps drive when votes are
//!   forgotten (below), so a fast one must not push that forward.
//! - **R3, memory covers the slot.** A node remembers its votes from a
//!   moment on: without a data directory, votes live in memory only, so a
//!   node that restarted (or a new task standing in for a lost one) has
//!   forgotten every vote it cast before; its memory counts from the moment
//!   this run first caught up with its cluster (after its start, and after
//!   its peers could see it). With a data directory every vote is in the
//!   log, synced before it is answered, and the memory counts from the first
//!   catch-up on that directory (kept in `tessera-data.toml`), so a node
//!   restarted on its directory votes on what it voted on before. Either
//!   way it votes only for incarnations created at least twice the skew
//!   budget after that moment: a created stamp is at most one budget off
//!   real time and so is the memory's start, so such an incarnation did not
//!   exist when a forgotten vote could have been cast, nor when a decision
//!   could have been taken by a majority this node was not yet counted in.
//!   Older tickets are decided by the nodes that remember (any majority of the
//!   others); a node that forgot serves them, but does not vote on them. Alone
//!   by design (expected size 1) there is nobody to disagree with, and the
//!   rule does not apply (nor are votes written to the log: the use record
//!   itself is the decision, as durable as the sync policy makes it).
//!   A data directory must therefore never be restored from a backup or
//!   copied to a second node: it would claim votes it no longer holds.
//! - **R4, its copy agrees.** Its own copy does not show the slot taken: a
//!   tombstone, a newer incarnation, the use already counted or a newer
//!   payload version. It then refuses and hands its copy back, so the proposer
//!   merges it and decides again on current state (or finds the ticket gone).
//! - **R5, the fast path (round 0).** It has neither voted nor promised on
//!   the slot (the same proposal again is a retry). Most decisions end here:
//!   one round trip, the arbiter's proposal, a majority of votes.
//! - **R6, phase 1 of ballot (r, p), r >= 1.** It has promised no higher
//!   ballot; it promises this one and reports the ballot and value it
//!   accepted last, if any (a round-0 vote is accepted ballot (0, q), value q).
//! - **R7, phase 2.** It accepts (ballot, value) unless it promised a higher
//!   ballot.
//!
//! Ballots exist so that a slot is never lost (review #14): when the fast
//! path fails because votes split (two proposers, neither with a majority) or
//! because the slot holds the vote of a proposer that died after winning it,
//! the proposer runs Paxos for the slot with rounds 1, 2, ... A value is the
//! proposal that wins; the proposer chooses it from the phase-1 reports of
//! a majority, as Paxos does: the value of the highest accepted ballot of
//! round 1 or more; else, among round-0 votes (several proposals can hold
//! some, since round 0 skips phase 1), the one proposal that could have won
//! round 0 (its reports plus the voters not heard from reach a majority);
//! none such: its own; more than one: it cannot tell, and fails UNAVAILABLE.
//! A slot chosen for another proposal is finished by the proposer: it counts
//! that use (the other proposer's client may have been told it won) and
//! decides its own call on the next slot. So a use is never spent twice and
//! a slot never stays blocked while a majority of voters is reachable. Only
//! use slots recover: a `version:` slot won by a lost update cannot be
//! finished without that update's payload, so it keeps the fast path alone.
//!
//! A vote is forgotten once the slot's ticket cannot be proposed by any node:
//! its retention (hard deadline plus the budget) plus one more budget has
//! passed on the earlier of this node's clock and the latest proposal stamp it
//! accepted. A node whose clock runs fast therefore does not forget early: the
//! honest proposers' stamps hold it back (and R1 stops it voting at all once
//! it hears them). A node whose clock is slow forgets late, which is safe.
//!
//! Why a restarted proposer's use counter cannot start from a stale base: it
//! proposes `use:n` from the uses it holds; if use n was spent, a majority
//! voted for it and one of them is in any majority it asks (R3 and R5 keep
//! them honest across restarts), and that one refuses with its copy (R4) or
//! its vote (R5). So a proposal wins only when the proposer's count is current.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tessera_proto::journal::SlotVotes as VoteRecord;

use crate::clock::{Millis, Stamp};
use crate::replication::wire::{WireError, stamp_from_wire, stamp_to_wire};

/// (ticket id, created stamp of the incarnation when known, slot), shared
/// by the book's map and its expiry index: one allocation per slot instead
/// of a copy of both strings in each.
pub type SlotKey = Arc<(String, Option<Stamp>, String)>;

/// Most votes past retention forgotten by one vote.
const FORGET_PER_VOTE: usize = 16;

/// A ballot: its round, then the stamp of the proposal that runs it (stamps
/// are unique, so two proposers never share a ballot). Round 0 is the fast
/// path, the only one nodes that predate ballots know.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BallotId {
    pub round: u32,
    pub proposal: Stamp,
}

/// What this node has promised and accepted on one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotVotes {
    /// No ballot below this one is accepted any more.
    pub promised: BallotId,
    /// The ballot accepted last, and its value: the proposal it lets win.
    pub accepted: Option<(BallotId, Stamp)>,
}

impl SlotVotes {
    /// The proposal holding the slot here, for a refusal's `voted_for`.
    pub fn holder(&self) -> &Stamp {
        self.accepted
            .as_ref()
            .map_or(&self.promised.proposal, |(_, value)| value)
    }
}

/// Votes cast by this node, remembered until the ticket's record may be
/// forgotten; with a data directory, also in its log (each change, synced
/// before it is answered) so that they outlive a restart.
pub struct VoteBook {
    /// Each slot's votes and when they may be forgotten. Keyed by ids of
    /// stored tickets (chosen by the SSO server, not by its users), so a
    /// fast seeded hash rather than SipHash.
    votes: HashMap<SlotKey, (SlotVotes, Millis), foldhash::fast::RandomState>,
    /// (forget at, slot), for dropping old votes without a scan.
    expiry: BTreeSet<(Millis, SlotKey)>,
    /// The latest wall clock of a proposal this node accepted (R2 bounds it by
    /// its own clock plus the budget).
    latest_proposal_ms: Millis,
    skew_budget_ms: Millis,
}

/// The answer of the book (rules R5 to R7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ballot {
    Granted,
    /// Phase 1: promised, with what this node accepted on the slot before.
    Promised(Option<(BallotId, Stamp)>),
    /// Refused: the slot's votes here as they stand.
    Refused(SlotVotes),
}

impl VoteBook {
    pub fn new(skew_budget_ms: Millis) -> VoteBook {
        VoteBook {
            votes: HashMap::default(),
            expiry: BTreeSet::new(),
            latest_proposal_ms: 0,
            skew_budget_ms,
        }
    }

    /// R5, the fast path (round 0): vote for `proposal` on `slot` unless the
    /// slot holds a promise or a vote already (the same proposal again is a
    /// retry). The caller has checked rules R1 to R4.
    pub fn vote(
        &mut self,
        slot: &SlotKey,
        proposal: &Stamp,
        retain_until_ms: Millis,
        now_ms: Millis,
    ) -> Ballot {
        let fast = BallotId {
            round: 0,
            proposal: proposal.clone(),
        };
        self.note_proposal(proposal, now_ms);
        match self.votes.get(slot) {
            Some((votes, _)) if votes.accepted.as_ref().is_some_and(|(b, _)| *b == fast) => {
                Ballot::Granted
            }
            Some((votes, _)) => Ballot::Refused(votes.clone()),
            None => {
                let accepted = Some((fast.clone(), proposal.clone()));
                self.remember(slot, fast, accepted, retain_until_ms);
                Ballot::Granted
            }
        }
    }

    /// R6, phase 1 of `ballot` (round 1 or more): promise to accept no lower
    /// ballot, unless a higher one was promised, and report what was accepted.
    pub fn prepare(
        &mut self,
        slot: &SlotKey,
        ballot: &BallotId,
        retain_until_ms: Millis,
        now_ms: Millis,
    ) -> Ballot {
        self.note_proposal(&ballot.proposal, now_ms);
        match self.votes.get_mut(slot) {
            Some((votes, _)) if votes.promised > *ballot => Ballot::Refused(votes.clone()),
            Some((votes, _)) => {
                votes.promised = ballot.clone();
                Ballot::Promised(votes.accepted.clone())
            }
            None => {
                self.remember(slot, ballot.clone(), None, retain_until_ms);
                Ballot::Promised(None)
            }
        }
    }

    /// R7, phase 2 of `ballot`: accept `value` unless a higher ballot was
    /// promised.
    pub fn accept(
        &mut self,
        slot: &SlotKey,
        ballot: &BallotId,
        value: &Stamp,
        retain_until_ms: Millis,
        now_ms: Millis,
    ) -> Ballot {
        self.note_proposal(&ballot.proposal, now_ms);
        let accepted = Some((ballot.clone(), value.clone()));
        match self.votes.get_mut(slot) {
            Some((votes, _)) if votes.promised > *ballot => Ballot::Refused(votes.clone()),
            Some((votes, _)) => {
                votes.promised = ballot.clone();
                votes.accepted = accepted;
                Ballot::Granted
            }
            None => {
                self.remember(slot, ballot.clone(), accepted, retain_until_ms);
                Ballot::Granted
            }
        }
    }

    fn note_proposal(&mut self, proposal: &Stamp, now_ms: Millis) {
        self.latest_proposal_ms = self.latest_proposal_ms.max(proposal.hlc.wall_ms);
        self.forget_until(now_ms.min(self.latest_proposal_ms));
    }

    fn remember(
        &mut self,
        slot: &SlotKey,
        promised: BallotId,
        accepted: Option<(BallotId, Stamp)>,
        retain_until_ms: Millis,
    ) {
        let forget_at = retain_until_ms.saturating_add(self.skew_budget_ms);
        self.expiry.insert((forget_at, slot.clone()));
        self.votes
            .insert(slot.clone(), (SlotVotes { promised, accepted }, forget_at));
    }

    /// The record of `slot`'s votes as they stand, for the log.
    pub fn record(&self, slot: &SlotKey) -> Option<VoteRecord> {
        self.votes
            .get(slot)
            .map(|(votes, forget_at)| to_record(slot, votes, *forget_at))
    }

    /// Every slot's votes, for a snapshot.
    pub fn records(&self) -> Vec<VoteRecord> {
        self.votes
            .iter()
            .map(|(slot, (votes, forget_at))| to_record(slot, votes, *forget_at))
            .collect()
    }

    /// Take back a slot's votes read from the log. Votes only grow (a
    /// promise only rises; an accepted ballot only rises, and one ballot has
    /// one value), so the highest of each wins, in whatever order the
    /// records come.
    pub fn restore(&mut self, (slot, votes, forget_at): RestoredVotes) {
        match self.votes.get_mut(&slot) {
            Some((held, _)) => {
                if votes.promised > held.promised {
                    held.promised = votes.promised;
                }
                let newer = match (&votes.accepted, &held.accepted) {
                    (Some((ballot, _)), Some((held_ballot, _))) => ballot > held_ballot,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if newer {
                    held.accepted = votes.accepted;
                }
            }
            None => {
                self.expiry.insert((forget_at, slot.clone()));
                self.votes.insert(slot, (votes, forget_at));
            }
        }
    }

    /// Drop votes whose ticket can no longer come back, a few per vote: the
    /// book's lock is on every consume's path. Forgetting 1,000 at a time held
    /// it for ~1 ms per call, and after a lull (no votes while many came due)
    /// consecutive calls held every consume for up to 17 ms (bench, docs/benchmarks.md).
    /// A few per vote still outpace the votes coming due (each vote comes due
    /// once), so a backlog drains in the traffic that follows it.
    fn forget_until(&mut self, now_ms: Millis) {
        for _ in 0..FORGET_PER_VOTE {
            match self.expiry.first() {
                Some((at, _)) if *at <= now_ms => {
                    if let Some((_, slot)) = self.expiry.pop_first() {
                        self.votes.remove(&slot);
                    }
                }
                _ => break,
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.votes.len()
    }

    /// The nodes whose proposals hold the slots here.
    #[cfg(test)]
    pub fn holders(&self) -> Vec<std::sync::Arc<str>> {
        self.votes
            .values()
            .map(|(votes, _)| votes.holder().node.clone())
            .collect()
    }
}

fn to_record(slot: &SlotKey, votes: &SlotVotes, forget_at_ms: Millis) -> VoteRecord {
    let (id, incarnation, name) = &**slot;
    let (accepted_round, accepted_ballot, accepted_value) = match &votes.accepted {
        Some((ballot, value)) => (
            ballot.round,
            Some(stamp_to_wire(&ballot.proposal)),
            Some(stamp_to_wire(value)),
        ),
        None => (0, None, None),
    };
    VoteRecord {
        id: id.clone(),
        incarnation: incarnation.as_ref().map(stamp_to_wire),
        slot: name.clone(),
        promised_round: votes.promised.round,
        promised_proposal: Some(stamp_to_wire(&votes.promised.proposal)),
        accepted_round,
        accepted_ballot,
        accepted_value,
        forget_at_ms,
    }
}

/// A slot's votes read back from the log: the slot, its votes, and when they
/// may be forgotten.
pub type RestoredVotes = (SlotKey, SlotVotes, Millis);

/// A vote record of the log, checked (the journal calls this where it knows
/// the record's file and offset).
pub fn from_record(record: VoteRecord) -> Result<RestoredVotes, WireError> {
    let incarnation = match record.incarnation {
        Some(stamp) => Some(stamp_from_wire(Some(stamp), "incarnation")?),
        None => None,
    };
    let promised = BallotId {
        round: record.promised_round,
        proposal: stamp_from_wire(record.promised_proposal, "promised_proposal")?,
    };
    let accepted = match (record.accepted_ballot, record.accepted_value) {
        (Some(ballot), Some(value)) => Some((
            BallotId {
                round: record.accepted_round,
                proposal: stamp_from_wire(Some(ballot), "accepted_ballot")?,
            },
            stamp_from_wire(Some(value), "accepted_value")?,
        )),
        (None, None) => None,
        _ => return Err(WireError("an accepted ballot without its value".into())),
    };
    Ok((
        Arc::new((record.id, incarnation, record.slot)),
        SlotVotes { promised, accepted },
        record.forget_at_ms,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Hlc;

    fn stamp(n: u64, node: &str) -> Stamp {
        Stamp {
            hlc: Hlc {
                wall_ms: n,
                logical: 0,
            },
            node: node.into(),
        }
    }

    fn slot(id: &str, slot: &str) -> SlotKey {
        Arc::new((id.to_owned(), Some(stamp(0, "creator")), slot.to_owned()))
    }

    #[test]
    fn one_proposal_per_slot_until_forgotten() {
        let mut book = VoteBook::new(10);
        let a = stamp(1, "a");
        let b = stamp(2, "b");
        assert_eq!(
            book.vote(&slot("ST-1", "use:1"), &a, 100, 0),
            Ballot::Granted
        );
        assert_eq!(
            book.vote(&slot("ST-1", "use:1"), &a, 100, 0),
            Ballot::Granted,
            "retries"
        );
        assert!(matches!(
            book.vote(&slot("ST-1", "use:1"), &b, 100, 0),
            Ballot::Refused(votes) if *votes.holder() == a
        ));
        assert_eq!(
            book.vote(&slot("ST-1", "use:2"), &b, 100, 0),
            Ballot::Granted
        );
        assert_eq!(
            book.vote(&slot("ST-2", "use:1"), &b, 100, 0),
            Ballot::Granted
        );
        assert_eq!(book.len(), 3);
        let later = stamp(120, "b");
        assert_eq!(
            book.vote(&slot("ST-3", "use:1"), &later, 500, 120),
            Ballot::Granted
        );
        assert_eq!(
            book.len(),
            1,
            "votes past retention and budget are forgotten"
        );
    }

    #[test]
    fn a_new_incarnation_has_fresh_slots() {
        let mut book = VoteBook::new(10);
        let first = Arc::new(("ST-1".to_owned(), Some(stamp(1, "x")), "use:1".to_owned()));
        let again = Arc::new(("ST-1".to_owned(), Some(stamp(5, "y")), "use:1".to_owned()));
        assert_eq!(book.vote(&first, &stamp(2, "a"), 100, 2), Ballot::Granted);
        assert_eq!(book.vote(&again, &stamp(6, "b"), 100, 6), Ballot::Granted);
    }

    /// Review #2: a voter whose clock runs far ahead keeps the vote until the
    /// proposers' stamps, not its own clock, pass the retention.
    #[test]
    fn a_fast_clock_alone_forgets_nothing() {
        let mut book = VoteBook::new(10);
        let a = stamp(1, "a");
        assert_eq!(
            book.vote(&slot("ST-1", "use:1"), &a, 100, 0),
            Ballot::Granted
        );
        // Its own clock reads 30 s later; the next proposal is honest.
        let b = stamp(5, "b");
        assert!(matches!(
            book.vote(&slot("ST-1", "use:1"), &b, 100, 30_000),
            Ballot::Refused(votes) if *votes.holder() == a
        ));
    }

    /// Paxos: a higher ballot's promise stops the fast path and lower
    /// ballots; phase 1 reports the value accepted before.
    #[test]
    fn ballots_promise_report_and_supersede() {
        let mut book = VoteBook::new(10);
        let a = stamp(1, "a");
        let key = slot("ST-1", "use:1");
        assert_eq!(book.vote(&key, &a, 100, 0), Ballot::Granted);
        let b1 = BallotId {
            round: 1,
            proposal: stamp(2, "b"),
        };
        let fast_a = BallotId {
            round: 0,
            proposal: a.clone(),
        };
        assert_eq!(
            book.prepare(&key, &b1, 100, 0),
            Ballot::Promised(Some((fast_a, a.clone())))
        );
        assert!(
            matches!(book.vote(&key, &stamp(3, "c"), 100, 0), Ballot::Refused(_)),
            "the fast path is closed once promised"
        );
        let c1 = BallotId {
            round: 1,
            proposal: stamp(3, "c"),
        };
        assert_eq!(
            book.prepare(&key, &c1, 100, 0),
            Ballot::Promised(Some((
                BallotId {
                    round: 0,
                    proposal: a.clone()
                },
                a.clone()
            )))
        );
        assert!(
            matches!(book.accept(&key, &b1, &a, 100, 0), Ballot::Refused(_)),
            "b1 is below the promise to c1"
        );
        assert_eq!(book.accept(&key, &c1, &a, 100, 0), Ballot::Granted);
        assert_eq!(
            book.prepare(
                &key,
                &BallotId {
                    round: 2,
                    proposal: stamp(4, "d")
                },
                100,
                0
            ),
            Ballot::Promised(Some((c1, a)))
        );
    }

    #[test]
    fn a_backlog_of_old_votes_is_forgotten_a_few_per_vote() {
        let mut book = VoteBook::new(0);
        let a = stamp(1, "a");
        for n in 0..100 {
            book.vote(&slot(&format!("ST-{n}"), "use:1"), &a, 100, 0);
        }
        let later = stamp(200, "a");
        book.vote(&slot("ST-new", "use:1"), &later, 500, 200);
        assert_eq!(book.len(), 101 - FORGET_PER_VOTE, "one vote forgets a few");
        for n in 0..10 {
            book.vote(&slot(&format!("ST-later-{n}"), "use:1"), &later, 500, 200);
        }
        assert_eq!(book.len(), 11, "the backlog is gone after a few votes");
    }
}
