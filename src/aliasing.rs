//! The check that a set written by an operation shares no memory with the sets it reads.
//!
//! Safe Rust cannot hand the same set to `&` and `&mut` at once, but two sets can wrap the same
//! memory ([`ParamSet::wrap`] over one array twice): writing one then changes the other while it
//! is being read. Every operation that writes into a set while it reads others checks this first.

use crate::error::{fail, Result};
use crate::params::ParamSet;

/// Fails with `InvalidArgument` when a tensor of `out` (named `out_name` in the message) shares
/// memory with a tensor of one of `inputs`, each given with its argument name:
/// `live shares memory with checkpoints[1] (tensor "fc1.weight")`.
pub(crate) fn ensure_disjoint(out_name: &str, out: &ParamSet, inputs: &[(&str, &ParamSet)]) -> Result<()> {
    // (device, start, end, name) of out's non-empty tensors, sorted, to search by start address.
    let mut spans: Vec<(i32, usize, usize, &str)> = out
        .tensors()
        .iter()
        .filter(|t| t.nbytes() > 0)
        .map(|t| {
            let (start, end) = t.addr_range();
            (t.device(), start, end, t.name())
        })
        .collect();
    spans.sort_unstable();
    for &(input_name, set) in inputs {
        for t in set.tensors().iter().filter(|t| t.nbytes() > 0) {
            let (start, end) = t.addr_range();
            // Out's tensors do not overlap each other (ParamSet::wrap refuses that), so only the
            // first one on this device that ends after `start` can overlap [start, end).
            let k = spans.partition_point(|s| (s.0, s.2) <= (t.device(), start));
            if let Some(&(device, out_start, _, out_tensor)) = spans.get(k) {
                if device == t.device() && out_start < end {
                    if out_tensor == t.name() {
                        fail!(
                            InvalidArgument,
                            "{out_name} shares memory with {input_name} (tensor {out_tensor:?}); \
                             write into a set of its own"
                        );
                    }
                    fail!(
                        InvalidArgument,
                        "{out_name} shares memory with {input_name} ({out_name}'s tensor {out_tensor:?} overlaps \
                         {input_name}'s {:?}); write into a set of its own",
                        t.name()
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::TensorSpec;
    use crate::DType;

    fn wrap(name: &str, data: &mut [f32]) -> ParamSet {
        let spec = TensorSpec {
            name: name.into(),
            dtype: DType::F32,
            shape: vec![data.len()],
            ptr: data.as_mut_ptr().cast(),
            device: -1,
        };
        // SAFETY: `data` outlives the set in each test, and the tests only read through the sets.
        unsafe { ParamSet::wrap(vec![spec]) }.unwrap()
    }

    #[test]
    fn sets_over_separate_memory_pass() {
        let (mut x, mut y) = (vec![1f32; 8], vec![2f32; 8]);
        let (a, b) = (wrap("w", &mut x), wrap("w", &mut y));
        ensure_disjoint("live", &a, &[("init", &b)]).unwrap();
    }

    #[test]
    fn overlap_names_the_arguments_and_the_tensors() {
        let mut x = vec![0f32; 8];
        let whole = wrap("w", &mut x);
        let tail = wrap("v", &mut x[4..]);
        let e = ensure_disjoint("live", &whole, &[("a", &whole.try_clone().unwrap()), ("b", &tail)]).unwrap_err();
        assert_eq!(e.status(), crate::Status::InvalidArgument);
        let msg = e.to_string();
        assert!(msg.starts_with("live shares memory with b ("), "{msg}");
        assert!(msg.contains("\"w\"") && msg.contains("\"v\""), "{msg}");
        let same = ensure_disjoint("out", &whole, &[("checkpoints[1]", &whole)]).unwrap_err().to_string();
        assert!(same.starts_with("out shares memory with checkpoints[1] (tensor \"w\")"), "{same}");
    }
}
