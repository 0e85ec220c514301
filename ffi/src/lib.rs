//! C ABI for cuframes.
