//! The plans of a device's recent calls with their tables already on the device, so that a call
//! with the geometry of one of them (every step of a training loop, every layer of a model)
//! neither builds nor uploads its tables. Before the first kernel of a call the GPU has nothing
//! to do, so the host's time there is the call's: building and uploading the tables took
//! ~15-25 us of the ~35 us before a forward's first launch at 32K (docs/benchmarks.md, "Stop 25").

use super::device::Device;
use super::error;
use super::plan::{list_rows, seq_table, Plan};
use super::select::DevicePlan;
use crate::{Params, Problem, Result};
use std::sync::{Arc, Mutex};

/// How many recent plans a device keeps (a few distinct geometries: e.g. the training and the
/// evaluation shape, or the prompt and its continuation).
const KEPT: usize = 8;

/// A plan and its tables on the device.
pub(crate) struct Planned {
    pub plan: Plan,
    pub tables: DevicePlan,
}

/// Everything a plan is made from (`Plan::with_list_rows`): equal keys give equal plans.
#[derive(PartialEq, Eq)]
struct PlanKey {
    window: usize,
    causal: bool,
    list_rows: usize,
    seqs: Vec<i32>,
}

impl PlanKey {
    fn new(params: &Params, problem: &Problem, list_rows: usize) -> Result<PlanKey> {
        Ok(PlanKey {
            window: params.window,
            causal: params.causal,
            list_rows,
            seqs: seq_table(problem)?.concat(),
        })
    }
}

/// The recently used plans of one device, with their keys, most recent first.
#[derive(Default)]
pub(crate) struct PlanCache {
    entries: Mutex<Vec<(PlanKey, Arc<Planned>)>>,
}

impl PlanCache {
    /// The plan of a call and its device tables: a recent call's, or made and uploaded now. A
    /// kept plan is shared read-only: its tables are never written after their upload, so a
    /// call may use them while an earlier call's kernels still read them.
    pub(crate) fn planned(
        &self,
        dev: &Device,
        params: &Params,
        problem: &Problem,
    ) -> Result<Arc<Planned>> {
        let list_rows = list_rows()?;
        let key = PlanKey::new(params, problem, list_rows)?;
        if let Some(hit) = self.take(&key)? {
            return Ok(hit);
        }
        let plan = Plan::with_list_rows(params, problem, list_rows)?;
        let tables = DevicePlan::upload(dev, &plan)?;
        let planned = Arc::new(Planned { plan, tables });
        self.put(key, planned.clone())?;
        Ok(planned)
    }

    /// The entry for `key`, moved to the front.
    fn take(&self, key: &PlanKey) -> Result<Option<Arc<Planned>>> {
        let mut entries = error::lock(&self.entries, "plan cache")?;
        let Some(i) = entries.iter().position(|(k, _)| k == key) else {
            return Ok(None);
        };
        let entry = entries.remove(i);
        let planned = entry.1.clone();
        entries.insert(0, entry);
        Ok(Some(planned))
    }

    fn put(&self, key: PlanKey, planned: Arc<Planned>) -> Result<()> {
        let mut entries = error::lock(&self.entries, "plan cache")?;
        entries.insert(0, (key, planned));
        entries.truncate(KEPT);
        Ok(())
    }
}

impl std::fmt::Debug for PlanCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.entries.lock().map_or(0, |e| e.len());
        write!(f, "PlanCache {{ {kept} plans }}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::plan::{BLOCK_M, LIST_M};
    use crate::{Heads, Shape};

    /// Calls whose plans differ have different keys (so a kept plan is never used for another
    /// geometry), over windows, masking, list rows, heads and dense and varlen shapes.
    #[test]
    fn different_plans_have_different_keys() {
        let shapes = [
            Shape::dense(1, 300, 300, Heads::new(4, 2), 64),
            Shape::dense(2, 300, 300, Heads::new(4, 2), 64),
            Shape::dense(1, 300, 500, Heads::new(4, 2), 64),
            Shape::dense(1, 300, 300, Heads::new(4, 4), 64),
            Shape::varlen(vec![0, 100, 700], vec![0, 100, 700], Heads::new(4, 2), 64),
            Shape::varlen(vec![0, 600, 700], vec![0, 600, 700], Heads::new(4, 2), 64),
        ];
        let mut made = Vec::new();
        for shape in &shapes {
            let problem = shape.problem().unwrap();
            for window in [64, 256, 4096] {
                for causal in [false, true] {
                    for rows in [BLOCK_M, LIST_M] {
                        let params = Params::new(window).causal(causal);
                        let plan = Plan::with_list_rows(&params, &problem, rows).unwrap();
                        let key = PlanKey::new(&params, &problem, rows).unwrap();
                        made.push((key, plan));
                    }
                }
            }
        }
        for (i, (key_a, plan_a)) in made.iter().enumerate() {
            for (key_b, plan_b) in &made[..i] {
                if plan_a != plan_b {
                    assert!(
                        key_a != key_b,
                        "two plans under one key: {plan_a:?} and {plan_b:?}"
                    );
                }
            }
        }
    }
}
