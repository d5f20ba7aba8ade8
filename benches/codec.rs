//! Codec micro-benchmarks: splitting lines, parsing client frames, encoding server frames.
//! These are the per-frame costs under every heartbeat round trip and every delivery.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use heartwire::testing::{encode_ping, parse_frame, LineCodec};
use tokio_util::codec::Decoder;

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    let pong = b"{\"type\":\"pong\",\"seq\":12345}\n";
    let input: Vec<u8> = pong
        .iter()
        .copied()
        .cycle()
        .take(pong.len() * 100)
        .collect();
    group.throughput(Throughput::Elements(100));
    group.bench_function("split 100 pong lines", |b| {
        b.iter_batched(
            || BytesMut::from(&input[..]),
            |mut buf| {
                let mut codec = LineCodec::new(65536);
                let mut n = 0;
                while let Ok(Some(_)) = codec.decode(&mut buf) {
                    n += 1;
                }
                assert_eq!(n, 100);
            },
            BatchSize::SmallInput,
        )
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse pong", |b| {
        b.iter(|| parse_frame(std::hint::black_box(&pong[..pong.len() - 1])))
    });
    let publish =
        br#"{"type":"publish","room":"lobby","id":"m-17","data":{"text":"hello there","n":[1,2,3]}}"#;
    group.bench_function("parse publish", |b| {
        b.iter(|| parse_frame(std::hint::black_box(&publish[..])))
    });
    group.bench_function("encode ping", |b| {
        b.iter(|| encode_ping(std::hint::black_box(12345)))
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
