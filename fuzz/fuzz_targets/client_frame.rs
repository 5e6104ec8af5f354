//! Every frame a phone sends goes through `ClientFrame::decode`: whatever
//! the bytes, it must return (never panic, never allocate without bound),
//! and what it accepts must survive a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parley_proto::v1::ClientFrame;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = ClientFrame::decode(data) {
        let again = ClientFrame::decode(frame.encode_to_vec().as_slice())
            .expect("a decoded frame re-encodes to a decodable one");
        assert_eq!(frame, again);
    }
});
