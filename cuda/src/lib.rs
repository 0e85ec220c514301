//! CUDA backend for cuframes.
