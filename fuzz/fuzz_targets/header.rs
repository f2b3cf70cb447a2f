//! Fuzzes the safetensors header parser: any bytes must give a header whose tensors tile the
//! data section exactly, with distinct names, or a Format error; never a panic.
//!
//!     cargo +nightly fuzz run header fuzz/seeds/header -- -max_total_time=600
#![no_main]

use libfuzzer_sys::fuzz_target;
use transferlens::params::parse_header;
use transferlens::Error;

fuzz_target!(|data: &[u8]| {
    match parse_header(data, "fuzzed") {
        Ok(h) => {
            assert!(h.data_start >= 8 && h.data_start <= data.len());
            let mut at = 0;
            for e in &h.entries {
                assert_eq!(e.start, at, "tensor {:?} does not follow the one before", e.name);
                assert!(e.end >= e.start);
                at = e.end;
            }
            assert_eq!(h.data_start + at, data.len(), "the tensors cover the data section");
            let mut names: Vec<&str> = h.entries.iter().map(|e| e.name.as_str()).collect();
            names.sort_unstable();
            assert!(names.windows(2).all(|w| w[0] != w[1]), "a name appears twice");
        }
        Err(Error::Format(m)) => assert!(m.starts_with("fuzzed: "), "{m}"),
        Err(e) => panic!("parse_header gave {e:?}, not a Format error"),
    }
});
