//! `noop`: accepts every template and does nothing (checks are OK, quotas fully granted).

use super::Handler;

/// The noop handler.
#[derive(Debug, Clone, Copy)]
pub struct Noop;

impl Handler for Noop {}
