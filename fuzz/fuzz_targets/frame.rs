//! Fuzzes the path every received byte takes: line splitting with a hard limit, then frame
//! parsing. Run with `cargo +nightly fuzz run frame` from the repository root (see SECURITY.md).
#![no_main]

use bytes::BytesMut;
use heartwire::testing::{parse_frame, LineCodec};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    // The first byte picks where the input is cut in two, as a socket might deliver it.
    let (cut, bytes) = match data.split_first() {
        Some((cut, rest)) => (*cut as usize % (rest.len() + 1), rest),
        None => return,
    };
    let mut codec = LineCodec::new(256);
    let mut buf = BytesMut::new();
    for part in [&bytes[..cut], &bytes[cut..]] {
        buf.extend_from_slice(part);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(line)) => {
                    assert!(line.len() <= 256);
                    let _ = parse_frame(&line);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.len() <= 257);
    }
});
