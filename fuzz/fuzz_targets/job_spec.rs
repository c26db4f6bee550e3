//! A SubmitJobRequest off the wire: the edge's field rules and the spec's
//! validation never panic, and a spec that validates survives a round trip
//! through its own message unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use prost_reflect::DynamicMessage;
use tether_proto::pb;
use tether_types::JobSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = pb::SubmitJobRequest::decode(data) else { return };
    let desc = tether_proto::rules::pool().get_message_by_name("tether.v1.SubmitJobRequest").unwrap();
    if let Ok(dynamic) = DynamicMessage::decode(desc, data) {
        let _ = tether_proto::rules::check(&dynamic);
    }
    let Some(spec) = req.spec else { return };
    let Ok(valid) = JobSpec::try_from(spec) else { return };
    let again = JobSpec::try_from(valid.to_pb()).expect("a valid spec's own message validates");
    assert_eq!(again, valid);
});
