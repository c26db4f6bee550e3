//! Label selectors from user input: parsing never panics, is bounded, and
//! a selector that parses matches deterministically; the empty selector
//! matches everything.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_types::{LabelSelector, Labels};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (sel, rest) = s.split_once('\n').unwrap_or((s, ""));
    let Ok(selector) = LabelSelector::parse(sel) else { return };
    let mut labels = Labels::new();
    for line in rest.lines().take(32) {
        if let Some((k, v)) = line.split_once('=') {
            labels.insert(k.to_owned(), v.to_owned());
        }
    }
    let once = selector.matches(&labels);
    assert_eq!(once, selector.matches(&labels));
    if selector.is_empty() {
        assert!(once, "the empty selector matches everything");
    }
    // Parsing again gives the same selector.
    assert_eq!(LabelSelector::parse(sel).ok(), Some(selector));
});
