//! Smooth weighted round robin, as nginx does it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::{Balancer, Endpoint};

/// Spreads picks in proportion to [`Endpoint::weight`], interleaved rather
/// than in bursts: with weights 5, 1, 1 one cycle is `a a b a c a a`.
///
/// Each pick adds every endpoint's weight to its current weight, picks the
/// largest current weight (the first one on ties) and subtracts the total
/// weight from it (nginx's `ngx_http_upstream_get_peer`). Over every run of
/// `total weight` picks from a fresh state, each endpoint gets exactly its
/// weight.
///
/// Weight 0 endpoints are never picked, unless every weight is 0, in which
/// case all count as weight 1.
///
/// **Locking and allocation.** The current weights are mutable state, kept in
/// the balancer keyed by endpoint id behind a small [`Mutex`] held for one
/// O(n) pass per pick; the hot path does not allocate. When the endpoint set
/// changes (ids, order or weights differ from the previous pick) the state is
/// rebuilt, which allocates a new table and a temporary map; endpoints that
/// stay keep their current weight (clamped to ±total), new ones start at 0.
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    slots: Vec<Slot>,
    total: i64,
}

#[derive(Debug)]
struct Slot {
    id: Arc<str>,
    /// The weight as the endpoint reported it, to detect changes.
    reported: u32,
    /// The weight used (all-zero sets count as all ones).
    weight: i64,
    current: i64,
}

impl WeightedRoundRobin {
    /// A weighted round robin with no state yet.
    pub fn new() -> Self {
        WeightedRoundRobin::default()
    }
}

impl State {
    fn matches(&self, endpoints: &[Endpoint]) -> bool {
        self.slots.len() == endpoints.len()
            && self.slots.iter().zip(endpoints).all(|(s, e)| {
                s.reported == e.weight() && (Arc::ptr_eq(&s.id, e.id_arc()) || *s.id == *e.id())
            })
    }

    /// Rebuilds the table for a new endpoint set (allocates).
    fn rebuild(&mut self, endpoints: &[Endpoint]) {
        let all_zero = endpoints.iter().all(|e| e.weight() == 0);
        let weight = |e: &Endpoint| if all_zero { 1 } else { i64::from(e.weight()) };
        let total: i64 = endpoints.iter().map(weight).sum();
        let old: HashMap<&str, i64> = self.slots.iter().map(|s| (&*s.id, s.current)).collect();
        let slots = endpoints
            .iter()
            .map(|e| {
                let weight = weight(e);
                let current = match old.get(e.id()) {
                    Some(&c) if weight > 0 => c.clamp(-total, total),
                    _ => 0,
                };
                Slot {
                    id: e.id_arc().clone(),
                    reported: e.weight(),
                    weight,
                    current,
                }
            })
            .collect();
        *self = State { slots, total };
    }
}

impl Balancer for WeightedRoundRobin {
    fn pick(&self, endpoints: &[Endpoint]) -> Option<usize> {
        match endpoints.len() {
            0 => return None,
            1 => return Some(0),
            _ => {}
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.matches(endpoints) {
            state.rebuild(endpoints);
        }
        // (index, current weight) of the first maximum.
        let mut best: Option<(usize, i64)> = None;
        for (i, slot) in state.slots.iter_mut().enumerate() {
            if slot.weight == 0 {
                continue;
            }
            slot.current += slot.weight;
            if best.is_none_or(|(_, max)| slot.current > max) {
                best = Some((i, slot.current));
            }
        }
        let (best, _) = best?; // never None: some weight is positive
        let total = state.total;
        state.slots[best].current -= total;
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::counts;
    use super::*;

    fn weighted(spec: &[(&str, u32)]) -> Vec<Endpoint> {
        spec.iter().map(|&(id, w)| Endpoint::new(id, w)).collect()
    }

    fn names(b: &WeightedRoundRobin, eps: &[Endpoint], n: usize) -> String {
        (0..n).map(|_| eps[b.pick(eps).unwrap()].id()).collect()
    }

    #[test]
    fn exact_proportions_and_nginx_order() {
        let eps = weighted(&[("a", 5), ("b", 1), ("c", 1)]);
        let wrr = WeightedRoundRobin::new();
        assert_eq!(names(&wrr, &eps, 7), "aabacaa");
        assert_eq!(names(&wrr, &eps, 7), "aabacaa", "every cycle is the same");
        assert_eq!(counts(&wrr, &eps, 700), vec![500, 100, 100]);
    }

    #[test]
    fn exact_proportions_property() {
        // For assorted weight sets, every full cycle from a fresh state gives
        // each endpoint exactly its weight.
        let sets: &[&[u32]] = &[&[1, 1, 1], &[3, 2], &[1, 0, 4], &[7, 3, 2, 1], &[100, 1]];
        for weights in sets {
            let eps: Vec<_> = weights
                .iter()
                .enumerate()
                .map(|(i, &w)| Endpoint::new(format!("e{i}"), w))
                .collect();
            let total: u32 = weights.iter().sum();
            let c = counts(&WeightedRoundRobin::new(), &eps, 3 * total as usize);
            let expected: Vec<usize> = weights.iter().map(|&w| 3 * w as usize).collect();
            assert_eq!(c, expected, "weights {weights:?}");
        }
    }

    #[test]
    fn all_zero_weights_act_as_round_robin() {
        let eps = weighted(&[("a", 0), ("b", 0), ("c", 0)]);
        assert_eq!(
            counts(&WeightedRoundRobin::new(), &eps, 30),
            vec![10, 10, 10]
        );
    }

    #[test]
    fn handles_a_set_change() {
        let wrr = WeightedRoundRobin::new();
        let before = weighted(&[("a", 5), ("b", 1), ("c", 1)]);
        assert_eq!(names(&wrr, &before, 3), "aab");

        // a leaves, d arrives; b and c keep their state.
        let after = weighted(&[("b", 1), ("c", 1), ("d", 2)]);
        let c = counts(&wrr, &after, 400);
        for (got, want) in c.iter().zip([100, 100, 200]) {
            assert!(got.abs_diff(want) <= 1, "{c:?}");
        }

        // Same endpoints in another order: picks follow the ids, not positions.
        let reordered = weighted(&[("d", 2), ("c", 1), ("b", 1)]);
        let c = counts(&wrr, &reordered, 400);
        for (got, want) in c.iter().zip([200, 100, 100]) {
            assert!(got.abs_diff(want) <= 1, "{c:?}");
        }

        // A weight change is a set change too; weight 0 gets nothing.
        let drained = weighted(&[("d", 2), ("c", 0), ("b", 1)]);
        assert_eq!(counts(&wrr, &drained, 300)[1], 0);
        let c = counts(&wrr, &drained, 300);
        assert_eq!(c, vec![200, 0, 100]);
    }
}
