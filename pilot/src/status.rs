//! What Pilot's analysis finds in the config it serves (see [`model::analysis`]), reported to
//! the config store so it is on `/debug/configz` and, on Kubernetes with `--enable-status`,
//! in each object's `status.validationMessages`: a VirtualService routing to a subset no
//! DestinationRule defines, a CUSTOM AuthorizationPolicy whose provider cannot be asked (its
//! workloads deny what it matches), a ServiceRoleBinding whose role is missing.
//!
//! [`model::analysis`]: crate::model::analysis

use std::time::Duration;

use mesh_runtime::Shutdown;
use mesh_runtime::service::FindingsReporter;

use crate::model::analysis;
use crate::xds::XdsServer;

/// How often the generation served is looked at.
const EVERY: Duration = Duration::from_millis(500);

/// Reports the analysis of each new generation `server` serves, until `shutdown`.
pub async fn report_analysis(server: XdsServer, reporter: FindingsReporter, shutdown: Shutdown) {
    let mut reported = None;
    loop {
        let generation = server.current();
        if reported != Some(generation.id()) {
            let messages = analysis::analyze(&generation.ctx);
            reporter.report(analysis::findings(&messages));
            reported = Some(generation.id());
        }
        drop(generation);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}
