//! Any bytes as a `.ttt` file: compile, print, run the pass pipeline. Never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // Imports in fuzzed programs resolve from the repository, like a user's from theirs.
        std::env::set_current_dir(tttc_fuzz::repository_root()).expect("the repository exists");
    },
    |data: &[u8]| tttc_fuzz::checks::parse_lower(data)
);
