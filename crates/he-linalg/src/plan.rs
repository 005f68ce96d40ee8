//! Planning: rotation keys, key switches and depth of operations, known before running them.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::backend::OpCounts;

/// What one operation needs: its rotation steps (Galois keys), key switches and depth.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OpPlan {
    /// Name of the operation.
    pub name: String,
    /// Rotation steps (left rotations modulo the slot count), each needing a Galois key.
    pub rotation_steps: BTreeSet<usize>,
    /// Rotations performed (hoisted or not).
    pub rotations: u64,
    /// Rotations that share a hoisted decomposition (subset of `rotations`).
    pub hoisted_rotations: u64,
    /// Relinearizations performed.
    pub relinearizations: u64,
    /// Levels consumed.
    pub depth: usize,
}

impl OpPlan {
    /// An operation without key switches (plaintext masks, additions) consuming `depth` levels.
    pub fn plaintext(name: &str, depth: usize) -> Self {
        Self {
            name: name.to_string(),
            depth,
            ..Self::default()
        }
    }
    /// The same operation applied to `times` ciphertexts independently (e.g. a polynomial on
    /// every ciphertext of a packed matrix): counts multiply, steps and depth stay.
    pub fn repeated(mut self, times: usize) -> Self {
        let t = times as u64;
        self.rotations *= t;
        self.hoisted_rotations *= t;
        self.relinearizations *= t;
        self.name = format!("{} x{times}", self.name);
        self
    }
    /// Key switches: rotations plus relinearizations.
    pub fn key_switches(&self) -> u64 {
        self.rotations + self.relinearizations
    }
    /// Whether measured counts agree with this plan.
    pub fn matches(&self, counts: &OpCounts) -> bool {
        counts.rotations == self.rotations
            && counts.hoisted_rotations == self.hoisted_rotations
            && counts.relinearizations == self.relinearizations
    }
}

/// The plan of a whole computation: a sequence of stages, each of one or more operations
/// running side by side on the same input level.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    ops: Vec<OpPlan>,
    levels: usize,
}

impl Plan {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends an operation that consumes the previous stage's output.
    pub fn then(&mut self, op: OpPlan) -> &mut Self {
        self.levels += op.depth;
        self.ops.push(op);
        self
    }
    /// Appends operations that run on the same input (e.g. Q, K and V projections); the stage
    /// consumes the largest of their depths.
    pub fn alongside(&mut self, ops: Vec<OpPlan>) -> &mut Self {
        self.levels += ops.iter().map(|o| o.depth).max().unwrap_or(0);
        self.ops.extend(ops);
        self
    }
    /// The operations in order.
    pub fn ops(&self) -> &[OpPlan] {
        &self.ops
    }
    /// The exact set of rotation steps (Galois keys) needed.
    pub fn galois_steps(&self) -> BTreeSet<usize> {
        self.ops
            .iter()
            .flat_map(|o| o.rotation_steps.iter().copied())
            .collect()
    }
    /// Total key switches.
    pub fn key_switches(&self) -> u64 {
        self.ops.iter().map(OpPlan::key_switches).sum()
    }
    /// Total rotations.
    pub fn rotations(&self) -> u64 {
        self.ops.iter().map(|o| o.rotations).sum()
    }
    /// Total relinearizations.
    pub fn relinearizations(&self) -> u64 {
        self.ops.iter().map(|o| o.relinearizations).sum()
    }
    /// Levels consumed along the computation.
    pub fn levels(&self) -> usize {
        self.levels
    }
}
