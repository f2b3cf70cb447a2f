//! Fuzzes the safetensors reading path: any bytes must give a parameter set whose every tensor
//! can be read in full, or a Format error; never a panic, an out-of-bounds read or an
//! allocation larger than the input.
//!
//!     cargo +nightly fuzz run safetensors_reader fuzz/seeds/safetensors_reader -- -max_total_time=600
#![no_main]

use libfuzzer_sys::fuzz_target;
use transferlens::{geometry, Context, Error, ParamSet};

fuzz_target!(|data: &[u8]| {
    match ParamSet::from_bytes(data, "fuzzed") {
        Ok(mut set) => {
            let total: usize = set.tensors().iter().map(|t| t.bytes().unwrap().len()).sum();
            assert!(total <= data.len());
            let ctx = Context::cpu();
            match geometry::norms(&ctx, &set) {
                Ok(_) | Err(Error::NonFinite(_)) => {}
                Err(e) => panic!("norms of an accepted set failed: {e}"),
            }
            // Regrouping and a self-interpolation touch every weight once more.
            let _ = set.set_grouping(transferlens::Grouping::Depth(2));
            if let Ok(mut out) = set.try_clone() {
                // Weights holding NaN or Inf give a non-finite result: an error, not Ok.
                match geometry::interpolate(&ctx, &set, &set, 0.5, &mut out) {
                    Ok(()) | Err(Error::NonFinite(_)) => {}
                    Err(e) => panic!("a self-interpolation failed: {e}"),
                }
            }
        }
        Err(Error::Format(_)) => {}
        Err(e) => panic!("a bad file gave {e:?}, not a Format error"),
    }
});
