//! Python bindings for cuframes.
