//! What a panic said, for whoever cleans up after it on the same thread.
//!
//! A panic in an actor's handler kills that actor alone: tokio catches it and drops the
//! actor's future on the thread it ran on. The registry's keeper and a session's `stopped`
//! hook run there right after, and want to log the panic's message and count it, but actix
//! gives them no way to learn it. So the server chains a panic hook, once per process, that
//! records the message in a thread-local before calling the hook that was there (the default
//! one prints to stderr as usual, an application's own keeps working).

use std::cell::RefCell;
use std::sync::Once;

thread_local! {
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Chains the recording hook in front of the current one; later calls do nothing.
pub(crate) fn capture() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = match info.payload().downcast_ref::<&str>() {
                Some(text) => (*text).to_owned(),
                None => match info.payload().downcast_ref::<String>() {
                    Some(text) => text.clone(),
                    None => "(no message)".to_owned(),
                },
            };
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            LAST.with(|last| *last.borrow_mut() = Some(format!("{message}{location}")));
            previous(info);
        }));
    });
}

/// The message of the latest panic on this thread, if one happened since the last call.
pub(crate) fn take() -> Option<String> {
    LAST.with(|last| last.borrow_mut().take())
}
