//! mixer
