//! Any bytes, judged prefix by prefix as a connection delivers them, by
//! the PROXY protocol parser under each `proxy_protocol` setting: an
//! incomplete header is shorter than every complete one it grows into, a
//! verdict never changes once given, and nothing stays incomplete past
//! the bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyinetd::plan::ProxyVersion;
use tinyinetd::proxy_header::{check_prefixes, MAX_HEADER};

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_HEADER + 16)];
    for accept in [ProxyVersion::V1, ProxyVersion::V2, ProxyVersion::Any] {
        if let Err(e) = check_prefixes(data, accept) {
            panic!("{e}");
        }
    }
});
