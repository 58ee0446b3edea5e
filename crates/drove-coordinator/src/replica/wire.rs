//! Raft's messages in their wire form (the `Raft*` messages of `drove.proto`) and back.
//! A message that lacks a field Raft needs is refused, not guessed at.

use std::collections::{BTreeMap, BTreeSet};

use drove_proto as pb;
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta,
    StoredMembership, Vote,
};

use super::Types;
use crate::durable;

/// A wire message that does not say what Raft needs.
#[derive(Debug, thiserror::Error)]
#[error("a malformed Raft message: {0}")]
pub struct Malformed(pub &'static str);

pub fn log_id(id: &LogId<u64>) -> pb::RaftLogId {
    pb::RaftLogId {
        term: id.leader_id.term,
        index: id.index,
    }
}

pub fn log_id_from(id: &pb::RaftLogId) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(id.term, 0), id.index)
}

pub fn opt_log_id(id: &Option<LogId<u64>>) -> Option<pb::RaftLogId> {
    id.as_ref().map(log_id)
}

pub fn opt_log_id_from(id: &Option<pb::RaftLogId>) -> Option<LogId<u64>> {
    id.as_ref().map(log_id_from)
}

pub fn vote(v: &Vote<u64>) -> pb::RaftVote {
    pb::RaftVote {
        term: v.leader_id.term,
        node: v.leader_id.voted_for.unwrap_or(0),
        committed: v.committed,
    }
}

pub fn vote_from(v: Option<&pb::RaftVote>) -> Result<Vote<u64>, Malformed> {
    let v = v.ok_or(Malformed("no vote"))?;
    let mut vote = match v.committed {
        true => Vote::new_committed(v.term, v.node),
        false => Vote::new(v.term, v.node),
    };
    // Node ids start at 1: 0 is a vote for no one yet.
    if v.node == 0 {
        vote.leader_id.voted_for = None;
    }
    Ok(vote)
}

pub fn membership(m: &Membership<u64, BasicNode>) -> pb::RaftMembership {
    pb::RaftMembership {
        configs: (m.get_joint_config().iter())
            .map(|c| pb::RaftVoters {
                ids: c.iter().copied().collect(),
            })
            .collect(),
        nodes: m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
    }
}

pub fn membership_from(m: &pb::RaftMembership) -> Membership<u64, BasicNode> {
    let configs: Vec<BTreeSet<u64>> = (m.configs.iter())
        .map(|c| c.ids.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<u64, BasicNode> = (m.nodes.iter())
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect();
    Membership::new(configs, nodes)
}

pub fn entry(e: &Entry<Types>) -> pb::RaftEntry {
    use pb::raft_entry::Payload;
    let payload = match &e.payload {
        EntryPayload::Blank => Payload::Blank(pb::RaftBlank {}),
        EntryPayload::Normal(command) => Payload::Command(pb::MetaEntry {
            index: 0,
            command: Some(durable::command_to_proto(command)),
        }),
        EntryPayload::Membership(m) => Payload::Membership(membership(m)),
    };
    pb::RaftEntry {
        log_id: Some(log_id(&e.log_id)),
        payload: Some(payload),
    }
}

pub fn entry_from(e: pb::RaftEntry) -> Result<Entry<Types>, Malformed> {
    use pb::raft_entry::Payload;
    let id = e
        .log_id
        .as_ref()
        .ok_or(Malformed("an entry without its log id"))?;
    let payload = match e.payload.ok_or(Malformed("an entry without a payload"))? {
        Payload::Blank(_) => EntryPayload::Blank,
        Payload::Command(c) => EntryPayload::Normal(
            durable::command_from_proto(c.command)
                .ok_or(Malformed("an entry without its command"))?,
        ),
        Payload::Membership(m) => EntryPayload::Membership(membership_from(&m)),
    };
    Ok(Entry {
        log_id: log_id_from(id),
        payload,
    })
}

pub fn snapshot_meta(m: &SnapshotMeta<u64, BasicNode>) -> pb::RaftSnapshotMeta {
    pb::RaftSnapshotMeta {
        last_log_id: opt_log_id(&m.last_log_id),
        membership_log_id: opt_log_id(m.last_membership.log_id()),
        membership: Some(membership(m.last_membership.membership())),
        snapshot_id: m.snapshot_id.clone(),
    }
}

pub fn snapshot_meta_from(m: &pb::RaftSnapshotMeta) -> SnapshotMeta<u64, BasicNode> {
    SnapshotMeta {
        last_log_id: opt_log_id_from(&m.last_log_id),
        last_membership: StoredMembership::new(
            opt_log_id_from(&m.membership_log_id),
            m.membership
                .as_ref()
                .map(membership_from)
                .unwrap_or_default(),
        ),
        snapshot_id: m.snapshot_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drove_core::meta::MetaCommand;

    #[test]
    fn entries_votes_and_memberships_survive_the_wire() {
        let id = LogId::new(CommittedLeaderId::new(3, 2), 17);
        let members = Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            BTreeMap::from([(1, BasicNode::new("a:1")), (2, BasicNode::new("b:2"))]),
        );
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Normal(MetaCommand::ClusterCreated { cluster_id: 9 }),
            EntryPayload::Membership(members.clone()),
        ] {
            let e = Entry::<Types> {
                log_id: id,
                payload,
            };
            let back = entry_from(entry(&e)).unwrap();
            assert_eq!(format!("{back:?}"), format!("{e:?}"));
        }
        for v in [Vote::new(4, 1), Vote::new_committed(5, 3), Vote::default()] {
            assert_eq!(vote_from(Some(&vote(&v))).unwrap(), v);
        }
        assert!(vote_from(None).is_err());
        assert!(entry_from(pb::RaftEntry::default()).is_err());
    }
}
