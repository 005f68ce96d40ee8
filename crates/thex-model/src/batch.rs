//! Padded batches of token ids and length-bucketed batching.

use candle_core::{Device, Tensor};

use crate::error::{ModelError, Result};

/// A right-padded batch: `input_ids` `[b, n]` u32 and `attention_mask` `[b, n]` f32 (1 for
/// tokens, 0 for padding); token types are all 0.
#[derive(Debug, Clone)]
pub struct Batch {
    input_ids: Tensor,
    attention_mask: Tensor,
    lengths: Vec<usize>,
    max_id: u32,
}

impl Batch {
    /// Pads `seqs` with `pad_id` to the longest one. Every sequence must be non-empty.
    pub fn new(seqs: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Self> {
        let n = seqs
            .iter()
            .map(Vec::len)
            .max()
            .ok_or(ModelError::EmptyBatch)?;
        let mut ids = Vec::with_capacity(seqs.len() * n);
        let mut mask = Vec::with_capacity(seqs.len() * n);
        let mut max_id = 0;
        for s in seqs {
            if s.is_empty() {
                return Err(ModelError::BadSequenceLength { len: 0, max: n });
            }
            for &id in s {
                max_id = max_id.max(id);
            }
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(pad_id, n - s.len()));
            mask.extend(std::iter::repeat_n(1f32, s.len()));
            mask.extend(std::iter::repeat_n(0f32, n - s.len()));
        }
        Ok(Batch {
            input_ids: Tensor::from_vec(ids, (seqs.len(), n), device)?,
            attention_mask: Tensor::from_vec(mask, (seqs.len(), n), device)?,
            lengths: seqs.iter().map(Vec::len).collect(),
            max_id,
        })
    }

    /// `[b, n]` u32 token ids.
    pub fn input_ids(&self) -> &Tensor {
        &self.input_ids
    }

    /// `[b, n]` f32 mask.
    pub fn attention_mask(&self) -> &Tensor {
        &self.attention_mask
    }

    /// Unpadded length of each sequence.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// Always false: a batch holds at least one sequence.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Padded length `n`.
    pub fn seq_len(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0)
    }

    /// Largest token id in the batch (checked against the vocabulary).
    pub fn max_id(&self) -> u32 {
        self.max_id
    }
}

/// Groups sequence indices into batches of similar length: indices sorted by length, then cut
/// so that a batch has at most `max_batch` sequences and at most `max_tokens` padded tokens
/// (a single longer sequence still forms its own batch). Order within the result follows
/// ascending length; shuffle the batches for training.
pub fn length_buckets(lengths: &[usize], max_batch: usize, max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let max_batch = max_batch.max(1);
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending, so the newest sequence is the longest of the batch.
        let padded = (cur.len() + 1) * lengths[i];
        if !cur.is_empty() && (cur.len() == max_batch || padded > max_tokens) {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(i);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_and_masks() {
        let b = Batch::new(&[vec![101, 5, 102], vec![101, 102]], 0, &Device::Cpu).unwrap();
        assert_eq!(
            b.input_ids().to_vec2::<u32>().unwrap(),
            vec![vec![101, 5, 102], vec![101, 102, 0]]
        );
        assert_eq!(
            b.attention_mask().to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 1.0, 1.0], vec![1.0, 1.0, 0.0]]
        );
        assert_eq!((b.len(), b.seq_len(), b.max_id()), (2, 3, 102));
        assert!(matches!(
            Batch::new(&[], 0, &Device::Cpu),
            Err(ModelError::EmptyBatch)
        ));
        assert!(matches!(
            Batch::new(&[vec![1], vec![]], 0, &Device::Cpu),
            Err(ModelError::BadSequenceLength { len: 0, .. })
        ));
    }

    #[test]
    fn buckets_respect_limits_and_cover_everything() {
        let lengths = [5, 40, 7, 6, 41, 5, 100, 8];
        let buckets = length_buckets(&lengths, 3, 90);
        let mut seen: Vec<usize> = buckets.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for b in &buckets {
            let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(b.len() <= 3);
            assert!(b.len() == 1 || b.len() * longest <= 90, "{b:?}");
        }
        // Similar lengths end up together: the two ~40 and the 100 are apart from the short ones.
        assert!(buckets.iter().any(|b| b.contains(&1) && b.contains(&4)));
        assert!(buckets.iter().any(|b| b == &vec![6]));
    }
}
