//! The audit: what was acknowledged, stored and shown, against each other.

use super::*;

#[derive(Debug, Default)]
pub(super) struct Audit {
    pub(super) sent: usize,
    pub(super) acknowledged: usize,
    pub(super) refused: usize,
    pub(super) unanswered: usize,
    pub(super) unanswered_stored: usize,
    pub(super) refused_stored: usize,
    pub(super) stored: usize,
    pub(super) receivers: usize,
    /// (acknowledged message, receiver) pairs shown.
    pub(super) delivered: usize,
    /// Acknowledged messages missing from the database, plus (acknowledged message,
    /// receiver) pairs the receiver never showed.
    pub(super) lost: usize,
    /// Each (receiver, seq, tag) of an acknowledged message the receiver never showed.
    pub(super) missed: Vec<(String, i64, String)>,
    /// (stored but unacknowledged message, receiver) pairs never shown.
    pub(super) unseen_unacknowledged: usize,
    /// Repeats on one socket, and messages stored more than once.
    pub(super) duplicated: usize,
    pub(super) out_of_order: usize,
    pub(super) gaps_in_seq: usize,
    pub(super) conflicts: usize,
    pub(super) repairs: usize,
    pub(super) redundant: usize,
    pub(super) reconnects: usize,
}

impl Audit {
    pub(super) fn of(tallies: &[Tally], rows: &[(String, i64, String)]) -> Audit {
        let mut audit = Audit {
            stored: rows.len(),
            receivers: tallies.len(),
            ..Audit::default()
        };
        let by_id: HashMap<&str, &(String, i64, String)> =
            rows.iter().map(|r| (r.0.as_str(), r)).collect();
        // Tag → how many rows carry it.
        let mut copies: HashMap<&str, usize> = HashMap::new();
        for (_, _, body) in rows {
            if let Some(end) = body.find(';') {
                *copies.entry(&body[..=end]).or_default() += 1;
            }
        }
        audit.duplicated += copies.values().map(|c| c - 1).sum::<usize>();
        audit.gaps_in_seq = rows
            .iter()
            .enumerate()
            .filter(|(i, r)| r.1 != *i as i64 + 1)
            .count();
        let mut acknowledged_ids = HashSet::new();
        for t in tallies {
            audit.sent += t.sent.len();
            audit.acknowledged += t.acked.len();
            audit.refused += t.refused.len();
            audit.unanswered += t.unanswered.len();
            audit.unanswered_stored += t
                .unanswered
                .iter()
                .filter(|tag| copies.contains_key(tag.as_str()))
                .count();
            audit.refused_stored += t
                .refused
                .iter()
                .filter(|tag| copies.contains_key(tag.as_str()))
                .count();
            for (tag, id, seq) in &t.acked {
                match by_id.get(id.as_str()) {
                    Some((_, stored_seq, body)) if stored_seq == seq && body.starts_with(tag) => {}
                    _ => audit.lost += 1,
                }
                acknowledged_ids.insert(id.as_str());
            }
            audit.out_of_order += t.acked.windows(2).filter(|w| w[0].2 >= w[1].2).count();
            audit.duplicated += t.duplicated.len();
            audit.conflicts += t.conflicts.len();
            audit.repairs += t.repairs;
            audit.redundant += t.redundant;
            audit.reconnects += t.reconnects;
        }
        for t in tallies {
            for (id, seq, body) in rows {
                let shown = t.shown.get(seq) == Some(id);
                match (acknowledged_ids.contains(id.as_str()), shown) {
                    (true, true) => audit.delivered += 1,
                    (true, false) => {
                        audit.lost += 1;
                        let tag = body.split(';').next().unwrap_or_default();
                        audit.missed.push((t.name.clone(), *seq, tag.to_owned()));
                    }
                    (false, false) => audit.unseen_unacknowledged += 1,
                    (false, true) => {}
                }
            }
        }
        audit
    }

    pub(super) fn assert_clean(&self, name: &str, tallies: &[Tally]) {
        let detail = || {
            tallies
                .iter()
                .map(|t| {
                    format!(
                        "{}: contiguous {}, shown {}, duplicated {:?}, conflicts {:?}, closes {:?}",
                        t.name,
                        t.contiguous(),
                        t.shown.len(),
                        t.duplicated.iter().take(5).collect::<Vec<_>>(),
                        t.conflicts.iter().take(5).collect::<Vec<_>>(),
                        t.closes
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(self.acknowledged > 0, "[{name}] nothing was acknowledged");
        assert_eq!(
            self.lost,
            0,
            "[{name}] lost messages\n{}\nnever shown (receiver, seq, tag): {:?}",
            detail(),
            self.missed.iter().take(40).collect::<Vec<_>>()
        );
        assert_eq!(self.duplicated, 0, "[{name}] duplicates\n{}", detail());
        assert_eq!(
            self.unseen_unacknowledged,
            0,
            "[{name}] stored messages some receivers never showed\n{}",
            detail()
        );
        assert_eq!(
            self.conflicts,
            0,
            "[{name}] two messages at one seq\n{}",
            detail()
        );
        assert_eq!(self.gaps_in_seq, 0, "[{name}] stored seqs are not 1..=n");
        assert_eq!(
            self.out_of_order, 0,
            "[{name}] a sender's messages out of order"
        );
        assert_eq!(
            self.delivered,
            self.acknowledged * self.receivers,
            "[{name}]"
        );
    }
}

impl std::fmt::Display for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, acknowledged {}, refused {} (stored anyway: {}), unanswered {} (stored: {}), \
             stored {}, receivers {}, delivered {}/{}, lost {}, duplicated {}, \
             unacknowledged-but-stored unseen {}, gap catch-ups {} (repeats after them {}), \
             reconnects {}",
            self.sent,
            self.acknowledged,
            self.refused,
            self.refused_stored,
            self.unanswered,
            self.unanswered_stored,
            self.stored,
            self.receivers,
            self.delivered,
            self.acknowledged * self.receivers,
            self.lost,
            self.duplicated,
            self.unseen_unacknowledged,
            self.repairs,
            self.redundant,
            self.reconnects,
        )
    }
}
