//! Any bytes as the inputs file of examples/ttt_linear.ttt, read, bound and run as by
//! `tttc run`. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tttc_fuzz::checks::safetensors_bind(&tttc_fuzz::repository_root(), data)
});
