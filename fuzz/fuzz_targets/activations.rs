//! Fuzzes the activation loader of `tlens cka`: any bytes must give layers whose CKA against
//! themselves is a number in [0, 1] or an error of the documented kinds; never a panic, an
//! out-of-bounds read or an allocation larger than the input.
//!
//!     cargo +nightly fuzz run activations fuzz/seeds/activations -- -max_total_time=600
#![no_main]

use libfuzzer_sys::fuzz_target;
use transferlens::cka::{cka_matrix, Estimator};
use transferlens::params::activation_layers;
use transferlens::{Context, Error, ParamSet};

fuzz_target!(|data: &[u8]| {
    let set = match ParamSet::from_bytes(data, "fuzzed") {
        Ok(set) => set,
        Err(Error::Format(_)) => return,
        Err(e) => panic!("a bad file gave {e:?}, not a Format error"),
    };
    let layers = match activation_layers(&set, "fuzzed") {
        Ok(layers) => layers,
        Err(Error::Format(_) | Error::ShapeMismatch(_) | Error::UnsupportedDtype(_) | Error::InvalidArgument(_)) => {
            return
        }
        Err(e) => panic!("activation_layers gave {e:?}"),
    };
    let ctx = Context::cpu();
    for estimator in [Estimator::Biased, Estimator::Debiased] {
        match cka_matrix(&ctx, &layers, &layers, estimator) {
            Ok(values) => {
                assert_eq!(values.len(), layers.len() * layers.len());
                for v in values {
                    assert!(v.is_finite(), "CKA {v} with status OK");
                    // Biased CKA lies in [0, 1]; f32, f16 and bf16 layers are multiplied in f32,
                    // whose rounding can carry CKA(X, X) a few f32 ulps past 1. The tests hold such
                    // input to 2e-5 of the f64 answer (tests/cka.rs), and so does this bound.
                    if estimator == Estimator::Biased {
                        assert!((-2e-5..=1.0 + 2e-5).contains(&v), "biased CKA {v} outside [0, 1] by more than 2e-5");
                    }
                }
            }
            Err(
                Error::ShapeMismatch(_)
                | Error::DegenerateInput(_)
                | Error::NonFinite(_)
                | Error::InvalidArgument(_)
                | Error::UnsupportedDtype(_),
            ) => {}
            Err(e) => panic!("cka_matrix gave {e:?}"),
        }
    }
});
