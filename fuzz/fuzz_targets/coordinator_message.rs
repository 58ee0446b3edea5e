#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    drove_fuzz::run(drove_exec::fuzz::decode_coordinator_message, data);
});
