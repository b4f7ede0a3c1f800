//! Every admin endpoint called in-process over a live in-memory registry.
