//! Refuses an oversized WebSocket message as soon as its frame header arrives.
//!
//! actix-http's frame parser checks its size limit only once a whole frame is buffered, and
//! actix-ws's `MessageStream` moves every chunk the connection delivers into its own buffer, so
//! on their own they let a peer that declares a huge frame (the header allows 2^63 bytes) make
//! the server buffer everything it sends. This guard sits between the request body and
//! actix-ws: it follows the frame headers in the byte stream (copying nothing) and fails the
//! body when a frame, or the data message its continuations add up to, would pass the limit.
//! The failure reaches the session as `frame_too_large`, exactly like the parser's own limit.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::dev;
use actix_web::error::PayloadError;
use actix_web::{web, FromRequest, HttpRequest};
use bytes::Bytes;
use futures_util::Stream;

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

/// Wraps the request body of `req` so that no message over `max` bytes gets buffered.
pub(crate) async fn guarded(
    req: &HttpRequest,
    body: web::Payload,
    max: usize,
) -> actix_web::Result<web::Payload> {
    let guard: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> =
        Box::pin(FrameGuard::new(body.into_inner(), max));
    let mut payload = dev::Payload::Stream { payload: guard };
    web::Payload::from_request(req, &mut payload).await
}

/// Whether a read error is this guard's refusal (actix-ws wraps it in an `io::Error`).
pub(crate) fn is_overflow(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<PayloadError>())
        .is_some_and(|e| matches!(e, PayloadError::Overflow))
}

/// The body stream, passed through unchanged while it stays within the limit.
struct FrameGuard {
    inner: dev::Payload,
    max: u64,
    header: [u8; MAX_HEADER],
    /// Header bytes seen of the current frame.
    have: usize,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
    /// Payload bytes of the current data message (all its fragments) so far.
    message: u64,
    failed: bool,
}

impl FrameGuard {
    fn new(inner: dev::Payload, max: usize) -> Self {
        FrameGuard {
            inner,
            max: max as u64,
            header: [0; MAX_HEADER],
            have: 0,
            remaining: 0,
            message: 0,
            failed: false,
        }
    }

    /// Length of the current header, once its first two bytes are known.
    fn header_len(&self) -> usize {
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    /// Follows the frames in `chunk`; fails at the first header that passes the limit.
    fn inspect(&mut self, mut chunk: &[u8]) -> Result<(), PayloadError> {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(chunk.len() as u64);
                self.remaining -= skip;
                chunk = &chunk[skip as usize..];
                continue;
            }
            self.header[self.have] = chunk[0];
            self.have += 1;
            chunk = &chunk[1..];
            if self.have < 2 || self.have < self.header_len() {
                continue;
            }
            let h = &self.header;
            let len = match h[1] & 0x7f {
                126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                n => u64::from(n),
            };
            match h[0] & 0x0f {
                // a text or binary frame starts a message
                0x1 | 0x2 => self.message = len,
                // a continuation adds to it
                0x0 => self.message = self.message.saturating_add(len),
                // control frames are capped at 125 bytes by the parser
                _ => {}
            }
            if len > self.max || self.message > self.max {
                return Err(PayloadError::Overflow);
            }
            self.remaining = len;
            self.have = 0;
        }
        Ok(())
    }
}

impl Stream for FrameGuard {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => match this.inspect(&chunk) {
                Ok(()) => Poll::Ready(Some(Ok(chunk))),
                Err(e) => {
                    this.failed = true;
                    Poll::Ready(Some(Err(e)))
                }
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(max: usize) -> FrameGuard {
        FrameGuard::new(dev::Payload::None, max)
    }

    /// A masked client frame header: `opcode`, `fin`, payload length `len`.
    fn header(opcode: u8, fin: bool, len: u64) -> Vec<u8> {
        let mut h = vec![opcode | if fin { 0x80 } else { 0 }];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xffff => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    fn frame(opcode: u8, fin: bool, len: usize) -> Vec<u8> {
        let mut f = header(opcode, fin, len as u64);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn frames_within_the_limit_pass_at_any_split() {
        let mut input = frame(0x1, true, 100);
        input.extend(frame(0x9, true, 4)); // ping
        input.extend(frame(0x1, false, 60)); // fragmented: 60 + 40
        input.extend(frame(0x0, true, 40));
        input.extend(frame(0x2, true, 70_000));
        for cut in [1, 2, 3, 7, 64, 1000] {
            let mut g = guard(70_000);
            for piece in input.chunks(cut) {
                g.inspect(piece).unwrap();
            }
            assert_eq!((g.have, g.remaining), (0, 0), "cut {cut}");
        }
    }

    #[test]
    fn an_oversized_header_fails_before_its_payload() {
        let mut g = guard(1000);
        assert!(g.inspect(&header(0x1, true, 1001)).is_err());
        let mut g = guard(1000);
        assert!(g.inspect(&header(0x2, true, u64::MAX)).is_err());
        // fragments that add up past the limit
        let mut g = guard(1000);
        g.inspect(&frame(0x1, false, 600)).unwrap();
        assert!(g.inspect(&header(0x0, true, 401)).is_err());
        // a new message starts counting again
        let mut g = guard(1000);
        g.inspect(&frame(0x1, true, 600)).unwrap();
        g.inspect(&frame(0x1, true, 600)).unwrap();
    }
}
