//! Shared helpers for the ring verification models.
