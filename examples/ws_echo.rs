//! The Autobahn echo server over the WebSocket transport (being written; see issue 12).

fn main() {}
