//! Line framing for protocol v1: one JSON object per `\n`-terminated line.
//!
//! The splitting itself is tokio-util's [`AnyDelimiterCodec`] with a hard maximum, so a
//! connection never buffers more than `max_frame` bytes (plus one socket read) while waiting
//! for a newline. This wrapper only strips an optional `\r` and turns the codec's errors into
//! ones the session can answer with the right `bye` reason.
//!
//! The client reads with [`SkippingLineCodec`]: a line from the server over the limit is
//! skipped and reported, not a reason to end the stream, or a server that sends one frame
//! too large would make its clients reconnect (and be replayed the same frame) forever.

#[cfg(feature = "client")]
use bytes::Buf;
use bytes::{Bytes, BytesMut};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder};

/// What a transport read from its peer: the session consumes a stream of these (with
/// [`CodecError`]), whatever the transport.
#[derive(Debug)]
pub enum Incoming {
    /// One protocol frame, without its line ending.
    Frame(Bytes),
    /// A transport-level sign of life that carries no frame (a WebSocket ping or pong): it
    /// proves the peer alive like any frame does.
    Alive,
}

/// Why the input of a connection was not a frame. `Binary` leaves the connection usable; after
/// any other error the transport yields nothing more.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A line (or a WebSocket message) grew past `max_frame` bytes.
    #[error("frame longer than {0} bytes")]
    FrameTooLarge(usize),
    /// A binary WebSocket message: frames are text, so it counts as a bad frame.
    #[error("binary message; frames are JSON text messages")]
    Binary,
    /// The transport's own framing was broken (an RFC 6455 violation on a WebSocket).
    #[error("transport protocol error: {0}")]
    Protocol(String),
    /// The socket failed.
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
}

/// Decodes newline-delimited frames of at most `max_frame` bytes (the `\r\n` ending included
/// leniently: a trailing `\r` is dropped, not counted against the limit).
#[derive(Debug)]
pub struct LineCodec {
    inner: AnyDelimiterCodec,
    max_frame: usize,
}

impl LineCodec {
    /// A codec that rejects lines longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        LineCodec {
            // One extra byte so that a full-length line ended by `\r\n` still fits.
            inner: AnyDelimiterCodec::new_with_max_length(
                b"\n".to_vec(),
                Vec::new(),
                max_frame + 1,
            ),
            max_frame,
        }
    }

    fn finish(&self, line: Bytes) -> Next {
        let line = match line.last() {
            Some(b'\r') => line.slice(..line.len() - 1),
            _ => line,
        };
        if line.len() > self.max_frame {
            return Next::TooLarge { consumed: true };
        }
        Next::Line(line)
    }

    fn next(&mut self, buf: &mut BytesMut) -> Result<Next, std::io::Error> {
        match self.inner.decode(buf) {
            Ok(Some(line)) => Ok(self.finish(line)),
            // The inner limit leaves room for a `\r` before the `\n`; anything else in that
            // extra byte already makes the line too long.
            Ok(None) if buf.len() > self.max_frame && buf[self.max_frame] != b'\r' => {
                Ok(Next::TooLarge { consumed: false })
            }
            Ok(None) => Ok(Next::Pending),
            Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => {
                Ok(Next::TooLarge { consumed: false })
            }
            Err(AnyDelimiterCodecError::Io(e)) => Err(e),
        }
    }
}

/// What the buffer holds next.
enum Next {
    /// A complete line within the limit.
    Line(Bytes),
    /// A line over the limit; `consumed` when it was taken out of the buffer already.
    #[cfg_attr(not(feature = "client"), allow(dead_code))]
    TooLarge { consumed: bool },
    /// Not a whole line yet.
    Pending,
}

impl Decoder for LineCodec {
    type Item = Bytes;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        match self.next(buf)? {
            Next::Line(line) => Ok(Some(line)),
            Next::TooLarge { .. } => Err(CodecError::FrameTooLarge(self.max_frame)),
            Next::Pending => Ok(None),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        // A final line without its newline is an incomplete frame: drop it rather than guess.
        match self.decode(buf)? {
            Some(line) => Ok(Some(line)),
            None => {
                buf.clear();
                Ok(None)
            }
        }
    }
}

/// A line as the client reads it.
#[cfg(feature = "client")]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A frame within the limit.
    Frame(Bytes),
    /// A frame over the limit, skipped.
    TooLarge,
}

/// Like [`LineCodec`], but a line over the limit is skipped and reported as
/// [`Line::TooLarge`] instead of ending the stream.
#[cfg(feature = "client")]
#[derive(Debug)]
pub(crate) struct SkippingLineCodec {
    lines: LineCodec,
    /// The rest of an over-long line is being dropped, up to its newline.
    discarding: bool,
}

#[cfg(feature = "client")]
impl SkippingLineCodec {
    /// A codec that skips lines longer than `max_frame` bytes.
    pub(crate) fn new(max_frame: usize) -> Self {
        SkippingLineCodec {
            lines: LineCodec::new(max_frame),
            discarding: false,
        }
    }
}

#[cfg(feature = "client")]
impl Decoder for SkippingLineCodec {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        if self.discarding {
            match buf.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    buf.advance(end + 1);
                    self.discarding = false;
                }
                None => {
                    buf.clear();
                    return Ok(None);
                }
            }
        }
        match self.lines.next(buf)? {
            Next::Line(line) => Ok(Some(Line::Frame(line))),
            Next::TooLarge { consumed } => {
                // A fresh inner codec: the old one's position refers to bytes about to go.
                self.lines = LineCodec::new(self.lines.max_frame);
                self.discarding = !consumed;
                Ok(Some(Line::TooLarge))
            }
            Next::Pending => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "client")]
    #[test]
    fn the_client_codec_skips_an_oversized_line_and_goes_on() {
        let mut c = SkippingLineCodec::new(8);
        let mut buf = BytesMut::from(&b"ok\n0123456789abcdef"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), Some(Line::Frame("ok".into())));
        assert_eq!(c.decode(&mut buf).unwrap(), Some(Line::TooLarge));
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"ghij\nnext\n123456789\nlast\n");
        assert_eq!(
            c.decode(&mut buf).unwrap(),
            Some(Line::Frame("next".into()))
        );
        assert_eq!(c.decode(&mut buf).unwrap(), Some(Line::TooLarge));
        assert_eq!(
            c.decode(&mut buf).unwrap(),
            Some(Line::Frame("last".into()))
        );
        assert_eq!(c.decode(&mut buf).unwrap(), None);
    }

    fn decode_all(codec: &mut LineCodec, input: &[u8]) -> Vec<Result<Bytes, String>> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(line)) => out.push(Ok(line)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn splits_lines_and_strips_cr() {
        let mut c = LineCodec::new(64);
        let got = decode_all(&mut c, b"{\"a\":1}\n{\"b\":2}\r\n{\"c\"");
        assert_eq!(
            got,
            vec![
                Ok(Bytes::from_static(b"{\"a\":1}")),
                Ok(Bytes::from_static(b"{\"b\":2}"))
            ]
        );
    }

    #[test]
    fn line_of_exactly_max_is_accepted_one_more_is_not() {
        let mut c = LineCodec::new(8);
        assert_eq!(
            decode_all(&mut c, b"12345678\n"),
            vec![Ok(Bytes::from_static(b"12345678"))]
        );
        let mut c = LineCodec::new(8);
        assert_eq!(
            decode_all(&mut c, b"12345678\r\n"),
            vec![Ok(Bytes::from_static(b"12345678"))]
        );
        let mut c = LineCodec::new(8);
        assert!(decode_all(&mut c, b"123456789\n")[0].is_err());
    }

    #[test]
    fn one_byte_over_without_newline_is_too_large_unless_it_is_a_cr() {
        let mut c = LineCodec::new(8);
        let mut buf = BytesMut::from(&b"123456789"[..]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(CodecError::FrameTooLarge(8))
        ));
        let mut c = LineCodec::new(8);
        let mut buf = BytesMut::from(&b"12345678\r"[..]);
        assert!(matches!(c.decode(&mut buf), Ok(None)));
    }

    #[test]
    fn overlong_line_without_newline_errors_before_buffering_more() {
        let mut c = LineCodec::new(8);
        let mut buf = BytesMut::from(&b"1234567890"[..]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(CodecError::FrameTooLarge(8))
        ));
    }

    #[test]
    fn split_at_every_point_gives_same_frames() {
        let input = b"{\"type\":\"ping\",\"seq\":1}\r\n{\"type\":\"pong\"}\n";
        for cut in 0..input.len() {
            let mut c = LineCodec::new(64);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for part in [&input[..cut], &input[cut..]] {
                buf.extend_from_slice(part);
                while let Some(line) = c.decode(&mut buf).unwrap() {
                    out.push(line);
                }
            }
            assert_eq!(out.len(), 2, "cut at {cut}");
            assert_eq!(&out[1][..], b"{\"type\":\"pong\"}");
        }
    }

    use proptest::prelude::*;

    /// Every frame a codec yields from `input` cut into `cuts`, then the final error if any.
    fn run(input: &[u8], cuts: &[usize], max: usize) -> (Vec<Bytes>, bool) {
        let mut codec = LineCodec::new(max);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut start = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.sort_unstable();
        points.push(input.len());
        for end in points {
            buf.extend_from_slice(&input[start..end.max(start)]);
            start = end.max(start);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        assert!(frame.len() <= max);
                        frames.push(frame);
                    }
                    Ok(None) => break,
                    Err(_) => return (frames, true),
                }
            }
            // never buffers more than the limit (plus the `\r` allowance) while waiting
            assert!(buf.len() <= max + 1);
        }
        (frames, false)
    }

    proptest! {
        #[test]
        fn any_bytes_any_split_same_frames_never_panics(
            input in proptest::collection::vec(prop_oneof![any::<u8>(), Just(b'\n'), Just(b'\r')], 0..600),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let whole = run(&input, &[], 64);
            let split = run(&input, &cuts, 64);
            prop_assert_eq!(&whole, &split);
            for frame in &whole.0 {
                // parsing never panics, whatever the bytes
                let _ = crate::protocol::Inbound::parse(frame);
            }
        }
    }
}
