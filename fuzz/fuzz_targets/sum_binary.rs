//! Any bytes, split at a point taken from the input, through the binary sum
//! decoder: one 9-byte reply per complete 16-byte request, each correct.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyinetd::handler::sum::{BinaryDecoder, REPLY, REQUEST};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut) * input.len() / 256;
    let mut d = BinaryDecoder::new();
    let mut out = Vec::new();
    d.feed(&input[..cut], &mut out);
    d.feed(&input[cut..], &mut out);
    d.finish(&mut out);
    assert_eq!(out.len(), input.len() / REQUEST * REPLY);
    for (q, r) in input.chunks_exact(REQUEST).zip(out.chunks_exact(REPLY)) {
        let a = i64::from_be_bytes(q[..8].try_into().unwrap());
        let b = i64::from_be_bytes(q[8..].try_into().unwrap());
        let sum = i64::from_be_bytes(r[1..].try_into().unwrap());
        match a.checked_add(b) {
            Some(s) => assert_eq!((r[0], sum), (0, s)),
            None => assert_eq!((r[0], sum), (1, 0)),
        }
    }
});
