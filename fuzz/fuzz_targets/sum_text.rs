//! Any bytes, split at a point taken from the input, through the text sum
//! decoder: bounded memory, one reply per line, the same replies as whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyinetd::handler::sum::{TextDecoder, MAX_LINE};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut) * input.len() / 256;
    let mut d = TextDecoder::new();
    let mut out = Vec::new();
    d.feed(&input[..cut], &mut out);
    assert!(d.buffered() <= MAX_LINE);
    d.feed(&input[cut..], &mut out);
    assert!(d.buffered() <= MAX_LINE);
    d.finish(&mut out);
    let lines = input.iter().filter(|&&b| b == b'\n').count();
    let trailing = usize::from(input.last().is_some_and(|&b| b != b'\n'));
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), lines + trailing);
    let mut whole = TextDecoder::new();
    let mut out2 = Vec::new();
    whole.feed(input, &mut out2);
    whole.finish(&mut out2);
    assert_eq!(out, out2);
});
