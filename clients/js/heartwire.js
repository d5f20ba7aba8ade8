// Placeholder: the JavaScript client (issue 12) replaces this file. One ES module, no
// dependencies, for browsers and Node >= 20; served by the WebSocket listener at /heartwire.js.
export {};
