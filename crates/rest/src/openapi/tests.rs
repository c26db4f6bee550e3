use super::*;

#[test]
fn document_covers_every_route() {
    let b = Bridge::from_descriptors(tether_proto::FILE_DESCRIPTOR_SET).unwrap();
    let doc = openapi(&b, "test");
    assert_eq!(doc["openapi"], "3.1.0");
    for r in &b.routes {
        let m = r.http_method.as_str().to_lowercase();
        assert!(doc["paths"][&r.template][&m].is_object(), "{m} {} missing", r.template);
    }
    let node = &doc["components"]["schemas"]["tether.v1.Node"]["properties"];
    assert_eq!(
        node["desiredStateVersion"]["type"],
        json!(["integer", "string", "null"]),
        "uint64: a string in proto3 JSON, read from a number too"
    );
    let re = regex::Regex::new(node["desiredStateVersion"]["pattern"].as_str().unwrap()).unwrap();
    for (s, ok) in [("18446744073709551615", true), ("18446744073709551616", false), ("+007", true), ("-1", false)] {
        assert_eq!(re.is_match(s), ok, "{s}");
    }
    let spec = &doc["components"]["schemas"]["tether.v1.JobSpec"]["properties"];
    let re = regex::Regex::new(spec["priority"]["pattern"].as_str().unwrap()).unwrap();
    for (s, ok) in [("-1000", true), ("-1001", false), ("1000", true), ("+1000", true), ("1001", false), ("-0", true)] {
        assert_eq!(re.is_match(s), ok, "priority {s}");
        assert_eq!(s.parse::<i32>().is_ok_and(|n| (-1000..=1000).contains(&n)), ok, "Rust agrees on {s}");
    }
    // Not required: proto3 JSON's null ("not set") is allowed.
    assert!(node["status"]["enum"].as_array().unwrap().contains(&Value::Null));
    assert_eq!(node["registeredAt"]["format"], "date-time");
    assert!(node["status"]["enum"].as_array().unwrap().iter().any(|v| v == "NODE_STATUS_READY"));
    let sse = &doc["paths"]["/v1/nodes:watch"]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"];
    assert_eq!(sse["type"], "string");
    assert_eq!(sse["contentSchema"]["$ref"], "#/components/schemas/tether.v1.WatchNodesResponse");
    assert!(doc["components"]["schemas"]["tether.v1.WatchNodesResponse"].is_object(), "the event's schema is there");
    // Ids carry their shape: strict in paths, possibly empty in fields.
    let param = &doc["paths"]["/v1/jobs/{job_id}"]["get"]["parameters"][0];
    assert_eq!(param["schema"]["pattern"], "^job-[0-9a-f]{20}$", "{param}");
    assert_eq!(node["nodeId"]["pattern"], "^(nd-[0-9a-f]{20})?$");
    // REQUIRED fields, from the protos' google.api.field_behavior.
    let submit = &doc["paths"]["/v1/jobs"]["post"]["requestBody"];
    assert_eq!(submit["required"], true);
    assert_eq!(submit["content"]["application/json"]["schema"]["required"], json!(["spec"]));
    let exec = &doc["components"]["schemas"]["tether.v1.ExecSpec"];
    assert_eq!(exec["required"], json!(["command"]));
    assert_eq!(exec["properties"]["command"]["minLength"], 1);
    let token = &doc["paths"]["/v1/tokens"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    let roles = token["properties"]["role"]["enum"].as_array().unwrap();
    assert!(!roles.iter().any(|r| r == "ROLE_UNSPECIFIED"), "{roles:?}");
    let join = &doc["paths"]["/v1/join-tokens"]["post"]["requestBody"];
    assert_eq!(join["required"], false, "nothing in it is required: {join}");
    let id = tether_types::NodeId::from_random([0xab; 10]);
    assert!(id.as_str().starts_with("nd-") && id.as_str().len() == 23);
}

#[test]
fn integer_ranges_match_exactly_their_numbers() {
    for hi in [0u64, 1, 5, 9, 10, 11, 64, 99, 100, 101, 999, 1000, 10000, 12345, 20000] {
        for lo in [0u64, 1] {
            if lo > hi {
                continue;
            }
            let re = regex::Regex::new(&format!("^({})$", uint_range(lo, hi))).unwrap();
            for n in 0..=hi * 2 + 20 {
                assert_eq!(re.is_match(&n.to_string()), (lo..=hi).contains(&n), "{n} in {lo}..={hi}");
            }
            assert!(!re.is_match("01") && !re.is_match(""), "no leading zeros, not empty");
        }
    }
    let re = regex::Regex::new(&format!("^({})$", uint_range(0, 67108864))).unwrap();
    for n in [0u64, 7, 67108863, 67108864, 59999999, 60000000, 9999999] {
        assert!(re.is_match(&n.to_string()), "{n}");
    }
    for n in [67108865u64, 67108870, 67109000, 70000000, 99999999, 100000000] {
        assert!(!re.is_match(&n.to_string()), "{n}");
    }
}

#[test]
fn positive_duration_pattern_is_what_the_server_takes() {
    let re = regex::Regex::new(&positive_duration_pattern(31536000)).unwrap();
    for ok in [
        "1s",
        "0.5s",
        "0.000000001s",
        "00.1s",
        "31535999.999s",
        "31536000s",
        "31536000.000000000s",
        "31536000.0000000009s",
        "1.0000000000001s",
        "007s",
    ] {
        assert!(re.is_match(ok), "{ok}");
        let d: prost_types::Duration = ok.parse().unwrap();
        assert!(
            (d.seconds > 0 || d.nanos > 0) && (d.seconds < 31536000 || (d.seconds == 31536000 && d.nanos == 0)),
            "{ok}"
        );
    }
    for bad in
        ["0s", "0.0s", "0.0000000001s", "-1s", "31536000.1s", "31536001s", "1.s", ".5s", "1", "1 s", "0.000000000s"]
    {
        assert!(!re.is_match(bad), "{bad}");
    }
}
