//! The planner's optimizer: choose one encoding per tensor so that the total
//! predicted accuracy loss is least under a byte budget (`--objective
//! accuracy`), or so that the bytes are least under an error ceiling
//! (`--objective cost`). A multiple-choice knapsack, solved by Lagrangian
//! relaxation over each tensor's lower convex hull of (bytes, error) options
//! (equivalently: take hull upgrade steps in order of error removed per byte,
//! skipping a tensor once one of its steps no longer fits), then refined by
//! single-tensor moves that the hull cannot express.
//!
//! What must stay true:
//! - the result never exceeds the budget, and is deterministic: ties are
//!   broken by tensor index and option index, never by hash order or by
//!   floating-point accidents (comparisons use `total_cmp`);
//! - for every budget the result is at least as good as the Lagrangian
//!   solution at that budget (refinement only accepts moves that fit and
//!   lower the total error), and the error of the greedy sequence never rises
//!   as the budget grows (monotone);
//! - errors are whatever additive unit the caller measured (here: predicted
//!   KL divergence, sensitivity x noise-to-signal ratio); this file knows
//!   nothing about tensors beyond their options.

use quant::GgmlType;

/// One way to encode one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub ty: GgmlType,
    pub bytes: u64,
    /// Predicted contribution to the model's accuracy loss (additive).
    pub error: f64,
}

/// A tensor and the ways it may be encoded (at least one).
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub name: String,
    pub choices: Vec<Choice>,
}

/// One choice per tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    /// Index into each tensor's `choices`.
    pub pick: Vec<usize>,
    pub bytes: u64,
    pub error: f64,
}

impl Allocation {
    fn of(tensors: &[Options], pick: Vec<usize>) -> Allocation {
        let bytes = pick
            .iter()
            .zip(tensors)
            .map(|(&p, t)| t.choices[p].bytes)
            .sum();
        let error = pick
            .iter()
            .zip(tensors)
            .map(|(&p, t)| t.choices[p].error)
            .sum();
        Allocation { pick, bytes, error }
    }

    /// The chosen type of each tensor.
    pub fn types<'a>(
        &'a self,
        tensors: &'a [Options],
    ) -> impl Iterator<Item = (&'a str, GgmlType)> {
        self.pick
            .iter()
            .zip(tensors)
            .map(|(&p, t)| (t.name.as_str(), t.choices[p].ty))
    }
}

/// The smallest choice of each tensor (least error among equal sizes).
fn smallest(t: &Options) -> usize {
    (0..t.choices.len())
        .min_by(|&a, &b| {
            let (x, y) = (&t.choices[a], &t.choices[b]);
            x.bytes
                .cmp(&y.bytes)
                .then(x.error.total_cmp(&y.error))
                .then(a.cmp(&b))
        })
        .expect("every tensor has a choice")
}

/// The lower convex hull of a tensor's choices, from the smallest: each
/// next point has more bytes, less error, and a flatter slope.
fn hull(t: &Options) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..t.choices.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (&t.choices[a], &t.choices[b]);
        x.bytes
            .cmp(&y.bytes)
            .then(x.error.total_cmp(&y.error))
            .then(a.cmp(&b))
    });
    let mut h: Vec<usize> = Vec::new();
    for i in idx {
        let c = t.choices[i];
        if let Some(&last) = h.last() {
            let l = t.choices[last];
            // Not an improvement: same or more error for at least as many bytes.
            if c.error.total_cmp(&l.error).is_ge() {
                continue;
            }
            if c.bytes == l.bytes {
                h.pop();
            }
        }
        // Pop points that lie on or above the segment to the new one.
        while h.len() >= 2 {
            let a = t.choices[h[h.len() - 2]];
            let b = t.choices[h[h.len() - 1]];
            let s_ab = (a.error - b.error) / (b.bytes - a.bytes) as f64;
            let s_bc = (b.error - c.error) / (c.bytes - b.bytes) as f64;
            if s_bc >= s_ab {
                h.pop();
            } else {
                break;
            }
        }
        h.push(i);
    }
    h
}

/// An upgrade along a tensor's hull: error removed per byte added.
#[derive(Debug, Clone, Copy)]
struct Step {
    tensor: usize,
    to: usize,
    bytes: u64,
    gain: f64,
}

/// All hull steps, best value first (ties: tensor, then position on the hull).
fn steps(tensors: &[Options]) -> (Vec<usize>, Vec<Step>) {
    let mut start = Vec::with_capacity(tensors.len());
    let mut all = Vec::new();
    for (ti, t) in tensors.iter().enumerate() {
        let h = hull(t);
        start.push(h[0]);
        for w in h.windows(2) {
            let (a, b) = (t.choices[w[0]], t.choices[w[1]]);
            all.push(Step {
                tensor: ti,
                to: w[1],
                bytes: b.bytes - a.bytes,
                gain: (a.error - b.error) / (b.bytes - a.bytes) as f64,
            });
        }
    }
    // Slopes along one hull decrease strictly, so a stable sort by value keeps
    // each tensor's steps in hull order.
    all.sort_by(|x, y| {
        y.gain
            .total_cmp(&x.gain)
            .then(x.tensor.cmp(&y.tensor))
            .then(x.bytes.cmp(&y.bytes))
    });
    (start, all)
}

/// Bytes of the smallest allocation.
pub fn min_bytes(tensors: &[Options]) -> u64 {
    tensors.iter().map(|t| t.choices[smallest(t)].bytes).sum()
}

/// The allocation of least error, each tensor at its least-error choice
/// (fewest bytes among equals).
pub fn best(tensors: &[Options]) -> Allocation {
    let pick = tensors
        .iter()
        .map(|t| {
            (0..t.choices.len())
                .min_by(|&a, &b| {
                    let (x, y) = (&t.choices[a], &t.choices[b]);
                    x.error
                        .total_cmp(&y.error)
                        .then(x.bytes.cmp(&y.bytes))
                        .then(a.cmp(&b))
                })
                .expect("every tensor has a choice")
        })
        .collect();
    Allocation::of(tensors, pick)
}

/// Least total error within `budget` bytes; `None` when even the smallest
/// allocation does not fit. The better of two solutions, each refined: the
/// Lagrangian one (hull steps by value) and a dynamic program over the bytes
/// above the smallest allocation in at most [`DP_UNITS`] units (exact when
/// the spare bytes are that few; otherwise sizes are rounded up, so the
/// answer still fits).
pub fn allocate(tensors: &[Options], budget: u64) -> Option<Allocation> {
    let greedy = lagrangian(tensors, budget)?;
    let dp = knapsack(tensors, budget).map(|a| refine(tensors, a, budget));
    Some(match dp {
        Some(d)
            if d.error
                .total_cmp(&greedy.error)
                .then(d.bytes.cmp(&greedy.bytes))
                .is_lt() =>
        {
            d
        }
        _ => greedy,
    })
}

/// Units of the dynamic program's byte axis, at most.
pub const DP_UNITS: u64 = 1 << 15;

/// Multiple-choice knapsack by dynamic programming over rounded-up sizes.
fn knapsack(tensors: &[Options], budget: u64) -> Option<Allocation> {
    let base = min_bytes(tensors);
    let spare = budget.checked_sub(base)?;
    let unit = spare.div_ceil(DP_UNITS).max(1);
    let cap = (spare / unit) as usize;
    if tensors.iter().any(|t| t.choices.len() > u8::MAX as usize) {
        return None;
    }
    let mut dp = vec![0f64; cap + 1];
    let mut from: Vec<Vec<u8>> = Vec::with_capacity(tensors.len());
    for t in tensors {
        let lo = t.choices[smallest(t)].bytes;
        let w: Vec<usize> = t
            .choices
            .iter()
            .map(|c| (c.bytes - lo).div_ceil(unit).min(cap as u64 + 1) as usize)
            .collect();
        let mut next = vec![f64::INFINITY; cap + 1];
        let mut arg = vec![0u8; cap + 1];
        for (ci, c) in t.choices.iter().enumerate() {
            if w[ci] > cap {
                continue;
            }
            for u in w[ci]..=cap {
                let v = dp[u - w[ci]] + c.error;
                if v < next[u] {
                    next[u] = v;
                    arg[u] = ci as u8;
                }
            }
        }
        dp = next;
        from.push(arg);
    }
    // Walk back from the best end point (dp is not monotone in u only through ties).
    let mut u = (0..=cap).min_by(|&a, &b| dp[a].total_cmp(&dp[b]).then(a.cmp(&b)))?;
    if !dp[u].is_finite() {
        return None;
    }
    let mut pick = vec![0usize; tensors.len()];
    for ti in (0..tensors.len()).rev() {
        let t = &tensors[ti];
        let ci = from[ti][u] as usize;
        pick[ti] = ci;
        let lo = t.choices[smallest(t)].bytes;
        u -= (t.choices[ci].bytes - lo).div_ceil(unit) as usize;
    }
    let a = Allocation::of(tensors, pick);
    (a.bytes <= budget).then_some(a)
}

/// The Lagrangian solution, refined.
fn lagrangian(tensors: &[Options], budget: u64) -> Option<Allocation> {
    if min_bytes(tensors) > budget {
        return None;
    }
    let (mut pick, all) = steps(tensors);
    let mut bytes: u64 = pick
        .iter()
        .zip(tensors)
        .map(|(&p, t)| t.choices[p].bytes)
        .sum();
    let mut blocked = vec![false; tensors.len()];
    for s in &all {
        if blocked[s.tensor] {
            continue;
        }
        if bytes + s.bytes <= budget {
            bytes += s.bytes;
            pick[s.tensor] = s.to;
        } else {
            // Its later steps would skip this one: the hull order is kept.
            blocked[s.tensor] = true;
        }
    }
    Some(refine(tensors, Allocation::of(tensors, pick), budget))
}

/// Single-tensor moves (to any choice, hull or not) that fit and lower the
/// error, best first, until none is left; then pairs of one downgrade and
/// one upgrade that do the same.
fn refine(tensors: &[Options], mut a: Allocation, budget: u64) -> Allocation {
    loop {
        let mut bestmove: Option<(f64, usize, usize)> = None;
        for (ti, t) in tensors.iter().enumerate() {
            let cur = t.choices[a.pick[ti]];
            for (ci, c) in t.choices.iter().enumerate() {
                let nb = a.bytes - cur.bytes + c.bytes;
                let gain = cur.error - c.error;
                if nb <= budget && gain > 0.0 && bestmove.is_none_or(|(g, _, _)| gain > g) {
                    bestmove = Some((gain, ti, ci));
                }
            }
        }
        let Some((_, ti, ci)) = bestmove else { break };
        a.pick[ti] = ci;
        a = Allocation::of(tensors, a.pick);
    }
    // Swaps: free bytes from one tensor at the least error added, spend them
    // on another at the most error removed. Each accepted swap lowers the
    // error strictly; at most `tensors.len()` rounds are tried.
    for _ in 0..tensors.len() {
        let slack = budget - a.bytes;
        // Every downgrade (bytes freed, error added, tensor, choice), by bytes freed.
        let mut downs: Vec<(u64, f64, usize, usize)> = Vec::new();
        for (tj, u) in tensors.iter().enumerate() {
            let cu = u.choices[a.pick[tj]];
            for (cj, d) in u.choices.iter().enumerate() {
                if d.bytes < cu.bytes {
                    downs.push((cu.bytes - d.bytes, d.error - cu.error, tj, cj));
                }
            }
        }
        downs.sort_by(|x, y| {
            x.0.cmp(&y.0)
                .then(x.1.total_cmp(&y.1))
                .then(x.2.cmp(&y.2))
                .then(x.3.cmp(&y.3))
        });
        // Suffix minima of the error added: the best and the best on another tensor.
        type Best = Option<(f64, usize, usize)>;
        let mut suffix: Vec<(Best, Best)> = vec![(None, None); downs.len() + 1];
        for k in (0..downs.len()).rev() {
            let (_, cost, tj, cj) = downs[k];
            let (mut b1, mut b2) = suffix[k + 1];
            let cand = Some((cost, tj, cj));
            if b1.is_none_or(|(c, ..)| cost < c) {
                if b1.is_some_and(|(_, t, _)| t != tj) {
                    b2 = b1;
                }
                b1 = cand;
            } else if tj != b1.map_or(usize::MAX, |(_, t, _)| t)
                && b2.is_none_or(|(c, ..)| cost < c)
            {
                b2 = cand;
            }
            suffix[k] = (b1, b2);
        }
        let mut best_swap: Option<(f64, usize, usize, usize, usize)> = None;
        for (ti, t) in tensors.iter().enumerate() {
            let cur = t.choices[a.pick[ti]];
            for (ci, c) in t.choices.iter().enumerate() {
                if c.bytes <= cur.bytes || c.error >= cur.error {
                    continue;
                }
                let need = (c.bytes - cur.bytes).saturating_sub(slack);
                let k = downs.partition_point(|d| d.0 < need);
                let (b1, b2) = suffix[k];
                let down = match b1 {
                    Some((_, tj, _)) if tj == ti => b2,
                    other => other,
                };
                if let Some((cost, tj, cj)) = down {
                    let net = (cur.error - c.error) - cost;
                    if net > 1e-12 * a.error.abs() && best_swap.is_none_or(|(g, ..)| net > g) {
                        best_swap = Some((net, ti, ci, tj, cj));
                    }
                }
            }
        }
        let Some((_, ti, ci, tj, cj)) = best_swap else {
            break;
        };
        a.pick[ti] = ci;
        a.pick[tj] = cj;
        a = Allocation::of(tensors, a.pick);
    }
    a
}

/// Fewest bytes whose total error is at most `max_error` (walking the hull
/// steps in order of value); `None` when even the least-error allocation
/// exceeds it. The result also respects `budget`.
pub fn cheapest_within(tensors: &[Options], max_error: f64, budget: u64) -> Option<Allocation> {
    if min_bytes(tensors) > budget {
        return None;
    }
    let (mut pick, all) = steps(tensors);
    let mut a = Allocation::of(tensors, pick.clone());
    if a.error <= max_error {
        return Some(a);
    }
    let mut blocked = vec![false; tensors.len()];
    for s in &all {
        if blocked[s.tensor] {
            continue;
        }
        if a.bytes + s.bytes > budget {
            blocked[s.tensor] = true;
            continue;
        }
        pick[s.tensor] = s.to;
        a = Allocation::of(tensors, pick.clone());
        if a.error <= max_error {
            return Some(a);
        }
    }
    None
}

/// Allocations at `n` budgets spread evenly from the smallest to the largest
/// useful size: the trade-off curve (deduplicated, by bytes).
pub fn frontier(tensors: &[Options], n: usize) -> Vec<Allocation> {
    let lo = min_bytes(tensors);
    let hi = best(tensors).bytes.max(lo);
    let mut out: Vec<Allocation> = Vec::new();
    for i in 0..n.max(2) {
        let budget = lo + ((hi - lo) as u128 * i as u128 / (n.max(2) - 1) as u128) as u64;
        if let Some(a) = allocate(tensors, budget) {
            if out.last().is_none_or(|l| l.pick != a.pick) {
                out.push(a);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(ty: GgmlType, bytes: u64, error: f64) -> Choice {
        Choice { ty, bytes, error }
    }

    fn opts(name: &str, cs: &[(u64, f64)]) -> Options {
        let tys = [
            GgmlType::Q2K,
            GgmlType::Q3K,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
            GgmlType::Q8_0,
            GgmlType::F16,
        ];
        Options {
            name: name.into(),
            choices: cs
                .iter()
                .enumerate()
                .map(|(i, &(b, e))| c(tys[i], b, e))
                .collect(),
        }
    }

    /// Exhaustive optimum, for small cases.
    fn brute(tensors: &[Options], budget: u64) -> Option<f64> {
        let mut best: Option<f64> = None;
        let mut pick = vec![0usize; tensors.len()];
        loop {
            let a = Allocation::of(tensors, pick.clone());
            if a.bytes <= budget && best.is_none_or(|b| a.error < b) {
                best = Some(a.error);
            }
            let mut i = 0;
            loop {
                if i == tensors.len() {
                    return best;
                }
                pick[i] += 1;
                if pick[i] < tensors[i].choices.len() {
                    break;
                }
                pick[i] = 0;
                i += 1;
            }
        }
    }

    #[test]
    fn hull_drops_dominated_and_concave_points() {
        // (10, 5) is dominated by (8, 4); (20, 3) lies above the segment (8,4)-(30,0).
        let t = opts("t", &[(4, 10.0), (8, 4.0), (10, 5.0), (20, 3.5), (30, 0.0)]);
        let h = hull(&t);
        assert_eq!(h, vec![0, 1, 4]);
    }

    #[test]
    fn never_exceeds_budget_and_matches_brute_force_on_small_cases() {
        // A deterministic pseudo-random family of small problems.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut worse = 0;
        let mut gap: f64 = 0.0;
        for _case in 0..300 {
            let n = 2 + (next() % 4) as usize;
            let tensors: Vec<Options> = (0..n)
                .map(|i| {
                    let k = 2 + (next() % 4) as usize;
                    let mut cs = Vec::new();
                    let mut b = 1 + next() % 10;
                    let mut e = 1.0 + (next() % 1000) as f64 / 10.0;
                    for _ in 0..k {
                        cs.push((b, e));
                        b += 1 + next() % 20;
                        e *= 0.2 + (next() % 700) as f64 / 1000.0;
                    }
                    opts(&format!("t{i}"), &cs)
                })
                .collect();
            let lo = min_bytes(&tensors);
            let budget = lo + next() % 60;
            let a = allocate(&tensors, budget).unwrap();
            assert!(a.bytes <= budget);
            let opt = brute(&tensors, budget).unwrap();
            assert!(a.error >= opt - 1e-9);
            if a.error > opt * 1.0000001 + 1e-12 {
                worse += 1;
                gap = gap.max(a.error / opt - 1.0);
            }
        }
        // Spare bytes below DP_UNITS: the dynamic program is exact.
        assert!(
            worse == 0,
            "{worse} of 300 cases worse than the optimum, by up to {gap}"
        );
    }

    #[test]
    fn too_small_a_budget_is_none_and_a_large_one_is_the_best() {
        let t = vec![
            opts("a", &[(10, 5.0), (20, 1.0)]),
            opts("b", &[(10, 3.0), (30, 0.5)]),
        ];
        assert!(allocate(&t, 19).is_none());
        assert_eq!(allocate(&t, 1000).unwrap(), best(&t));
        assert_eq!(allocate(&t, 20).unwrap().error, 8.0);
        // 30 bytes: upgrading `a` removes 4 for 10 bytes, `b` 2.5 for 20.
        assert_eq!(allocate(&t, 30).unwrap().pick, vec![1, 0]);
    }

    #[test]
    fn error_does_not_rise_with_budget() {
        let t: Vec<Options> = (0..6)
            .map(|i| {
                let s = 1.0 + i as f64;
                opts(
                    &format!("t{i}"),
                    &[
                        (26, 9.0 * s),
                        (34, 3.0 * s),
                        (45, 1.0 * s),
                        (55, 0.3 * s),
                        (66, 0.1 * s),
                    ],
                )
            })
            .collect();
        let mut last = f64::INFINITY;
        for budget in min_bytes(&t)..=400 {
            let a = allocate(&t, budget).unwrap();
            assert!(a.error <= last + 1e-12, "budget {budget}");
            last = a.error;
        }
    }

    #[test]
    fn cheapest_within_meets_the_ceiling_with_fewer_bytes() {
        let t = vec![
            opts("a", &[(10, 5.0), (20, 1.0), (40, 0.1)]),
            opts("b", &[(10, 3.0), (30, 0.5), (60, 0.0)]),
        ];
        let a = cheapest_within(&t, 4.0, u64::MAX).unwrap();
        assert!(a.error <= 4.0);
        assert_eq!(a.bytes, 30);
        assert!(cheapest_within(&t, -1.0, u64::MAX).is_none());
    }

    #[test]
    fn frontier_is_increasing_in_bytes_and_decreasing_in_error() {
        let t = vec![
            opts("a", &[(10, 5.0), (20, 1.0), (40, 0.1)]),
            opts("b", &[(10, 3.0), (30, 0.5), (60, 0.0)]),
        ];
        let f = frontier(&t, 12);
        assert!(f.len() >= 3);
        for w in f.windows(2) {
            assert!(w[0].bytes <= w[1].bytes);
            assert!(w[0].error >= w[1].error);
        }
    }

    #[test]
    fn ties_are_deterministic() {
        let t: Vec<Options> = (0..5)
            .map(|i| opts(&format!("t{i}"), &[(10, 2.0), (20, 1.0)]))
            .collect();
        let a = allocate(&t, 70).unwrap();
        let b = allocate(&t, 70).unwrap();
        assert_eq!(a, b);
        // Equal value: lower tensor index first.
        assert_eq!(a.pick, vec![1, 1, 0, 0, 0]);
    }
}
