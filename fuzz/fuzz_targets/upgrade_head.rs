//! The WebSocket upgrade request head, as the gateway parses it before any
//! authentication: any bytes must give a request or a refusal, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parley_gateway::fuzzing::parse_upgrade_head(data);
});
