//! The votes a node has cast for conditional operations.
//!
//! A slot is one use of a ticket (`use:3`) or one payload version it may be
//! replaced from (`version:...`). A node votes for the first proposal it sees
//! for a slot and only that one; a proposal needs votes from a majority of the
//! cluster's expected size, and two majorities always share a node, so two
//! proposals can never both win a slot, whatever the membership views say.

use std::collections::{BTreeSet, HashMap};

use crate::clock::{Millis, Stamp};

type Slot = (String, String);

/// Most votes past retention forgotten by one vote.
const FORGET_PER_VOTE: usize = 16;

/// Votes cast by this node, remembered until the ticket's record may be forgotten.
#[derive(Default)]
pub struct VoteBook {
    votes: HashMap<Slot, (Stamp, Millis)>,
    /// (forget at, slot), for dropping old votes without a scan.
    expiry: BTreeSet<(Millis, Slot)>,
}

/// The answer to a proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ballot {
    Granted,
    /// Already voted for this other proposal.
    Refused(Stamp),
}

impl VoteBook {
    /// Vote for `proposal` on (`id`, `slot`) unless another proposal has the vote.
    pub fn vote(
        &mut self,
        id: &str,
        slot: &str,
        proposal: &Stamp,
        retain_until_ms: Millis,
        now_ms: Millis,
    ) -> Ballot {
        self.forget_until(now_ms);
        let key = (id.to_owned(), slot.to_owned());
        match self.votes.get(&key) {
            Some((voted, _)) if voted != proposal => Ballot::Refused(voted.clone()),
            Some(_) => Ballot::Granted,
            None => {
                self.expiry.insert((retain_until_ms, key.clone()));
                self.votes.insert(key, (proposal.clone(), retain_until_ms));
                Ballot::Granted
            }
        }
    }

    /// Drop votes whose ticket can no longer come back, a few per vote: the
    /// book's lock is on every consume's path. Forgetting 1,000 at a time held
    /// it for ~1 ms per call, and after a lull (no votes while many came due)
    /// consecutive calls held every consume for up to 17 ms (bench, README).
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

    #[test]
    fn one_proposal_per_slot_until_forgotten() {
        let mut book = VoteBook::default();
        let a = stamp(1, "a");
        let b = stamp(2, "b");
        assert_eq!(book.vote("ST-1", "use:1", &a, 100, 0), Ballot::Granted);
        assert_eq!(
            book.vote("ST-1", "use:1", &a, 100, 0),
            Ballot::Granted,
            "retries"
        );
        assert_eq!(
            book.vote("ST-1", "use:1", &b, 100, 0),
            Ballot::Refused(a.clone())
        );
        assert_eq!(book.vote("ST-1", "use:2", &b, 100, 0), Ballot::Granted);
        assert_eq!(book.vote("ST-2", "use:1", &b, 100, 0), Ballot::Granted);
        assert_eq!(book.len(), 3);
        assert_eq!(book.vote("ST-3", "use:1", &b, 500, 100), Ballot::Granted);
        assert_eq!(book.len(), 1, "votes past retention are forgotten");
    }

    #[test]
    fn a_backlog_of_old_votes_is_forgotten_a_few_per_vote() {
        let mut book = VoteBook::default();
        let a = stamp(1, "a");
        for n in 0..100 {
            book.vote(&format!("ST-{n}"), "use:1", &a, 100, 0);
        }
        book.vote("ST-new", "use:1", &a, 500, 200);
        assert_eq!(book.len(), 101 - FORGET_PER_VOTE, "one vote forgets a few");
        for n in 0..10 {
            book.vote(&format!("ST-later-{n}"), "use:1", &a, 500, 200);
        }
        assert_eq!(book.len(), 11, "the backlog is gone after a few votes");
    }
}
