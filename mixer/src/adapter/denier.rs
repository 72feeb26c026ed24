//! `denier`: answers every check (and quota) with the configured status.
//!
//! Parameters (Istio's): `status: {code, message}` (default FAILED_PRECONDITION),
//! `validDuration` (default 5s), `validUseCount` (default 1000).

use std::time::Duration;

use serde_json::Value;

use super::params::{self, bad};
use super::{
    AdapterError, CheckResult, Handler, InstanceValues, QuotaArgs, QuotaFuture, QuotaResult,
    Status, code,
};

/// The denier handler.
#[derive(Debug, Clone)]
pub struct Denier {
    result: CheckResult,
}

// === impl Denier ===

impl Denier {
    /// Validates parameters and builds the handler.
    pub fn build(p: &Value) -> Result<Self, AdapterError> {
        params::only(p, "", &["status", "validDuration", "validUseCount"])?;
        let mut status = Status::new(code::FAILED_PRECONDITION, "");
        if let Some(s) = params::get(p, "status").filter(|s| !s.is_null()) {
            params::only(s, "status.", &["code", "message", "details"])?;
            if let Some(c) = params::int(s, "code", "status.code")? {
                if !(0..=16).contains(&c) {
                    return Err(bad(
                        "status.code",
                        format!("{c} is not a google.rpc code (0-16)"),
                    ));
                }
                status.code = c as i32;
            }
            status.message = params::string(s, "message", "status.message")?.unwrap_or_default();
        }
        let valid_duration = params::duration(p, "validDuration", "validDuration")?
            .unwrap_or(Duration::from_secs(5));
        let valid_use_count = params::int(p, "validUseCount", "validUseCount")?.unwrap_or(1000);
        if valid_use_count < 0 {
            return Err(bad("validUseCount", "must be >= 0"));
        }
        Ok(Self {
            result: CheckResult {
                status,
                valid_duration,
                valid_use_count: valid_use_count.min(i64::from(i32::MAX)) as i32,
            },
        })
    }
}

impl Handler for Denier {
    fn check(&self, _: &InstanceValues<'_>) -> CheckResult {
        self.result.clone()
    }

    fn quota(&self, _: &InstanceValues<'_>, _: &QuotaArgs<'_>) -> QuotaFuture<'_> {
        QuotaFuture::ready(QuotaResult {
            status: Status::default(),
            amount: 0,
            valid_duration: Duration::ZERO,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_validation() {
        let d = Denier::build(&json!({})).unwrap();
        assert_eq!(d.result.status.code, code::FAILED_PRECONDITION);
        assert_eq!(d.result.valid_duration, Duration::from_secs(5));
        let d = Denier::build(&json!({"status": {"code": 7, "message": "Not allowed"}})).unwrap();
        assert_eq!(d.result.status, Status::new(7, "Not allowed"));
        assert_eq!(d.result.valid_use_count, 1000);
        let e = Denier::build(&json!({"status": {"code": 99}})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.status.code: 99 is not a google.rpc code (0-16)"
        );
        let e = Denier::build(&json!({"validDuration": "soon"})).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("spec.validDuration: invalid duration"),
            "{e}"
        );
        let e = Denier::build(&json!({"stauts": {}})).unwrap_err();
        assert_eq!(e.to_string(), "spec.stauts: unknown field");
    }
}
