//! citadel
