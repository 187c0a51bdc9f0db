//! clef-agent patch: the owned parts of a request — its target and its header fields — are kept
//! on the thread for its next request instead of being freed and allocated again (every
//! allocation takes the allocator's lock, which a preempted thread holds for all the others).
//! A request gives them back when it is dropped, wiped: a header value may be a bearer token,
//! and a kept buffer must not keep it. With a handler on the reading thread
//! (`Server::from_listener_with_handler`) that is the thread that reads the next request.

use std::cell::RefCell;

use crate::common::Header;

/// A buffer bigger than this (a request with a long target or field) is freed, not kept.
const MAX_KEPT_BYTES: usize = 1024;
/// Header fields kept for the next request at most.
const MAX_KEPT_FIELDS: usize = 32;

#[derive(Default)]
struct Kept {
    path: String,
    headers: Vec<Header>,
    fields: Vec<Header>,
}

thread_local! {
    static KEPT: RefCell<Kept> = RefCell::new(Kept::default());
}

/// An empty string for a request target, with the capacity of an earlier one.
pub(crate) fn path() -> String {
    KEPT.with(|kept| std::mem::take(&mut kept.borrow_mut().path))
}

/// An empty list for a request's header fields, with the capacity of an earlier one.
pub(crate) fn headers() -> Vec<Header> {
    KEPT.with(|kept| std::mem::take(&mut kept.borrow_mut().headers))
}

/// A header field to parse into, with the buffers of an earlier one.
pub(crate) fn field() -> Header {
    KEPT.with(|kept| kept.borrow_mut().fields.pop()).unwrap_or_else(Header::empty)
}

/// Wipes a request's target and header fields and keeps them for the thread's next request
/// (what is too big is dropped, so it is freed — and zeroed by clef-agent's allocator).
pub(crate) fn give_back(path: String, mut headers: Vec<Header>) {
    let mut path = path.into_bytes();
    path.fill(0);
    path.clear();
    for field in headers.iter_mut() {
        field.wipe();
    }
    // `try_with`: a request dropped while its thread ends has nowhere to go
    let _ = KEPT.try_with(|kept| {
        let Ok(mut kept) = kept.try_borrow_mut() else { return };
        for field in headers.drain(..) {
            if kept.fields.len() < MAX_KEPT_FIELDS && field.capacity() <= MAX_KEPT_BYTES {
                kept.fields.push(field);
            }
        }
        if path.capacity() <= MAX_KEPT_BYTES && path.capacity() > kept.path.capacity() {
            kept.path = String::from_utf8(path).unwrap_or_default();
        }
        if headers.capacity() <= MAX_KEPT_FIELDS && headers.capacity() > kept.headers.capacity() {
            kept.headers = headers;
        }
    });
}
