//! The flags that say how to reach the Compute API: the agent's, and pmctl's for the
//! commands that read GCE (`config import-prevmtable`).

use std::path::PathBuf;
use std::time::Duration;

use pm_gce::error::GceError;
use pm_gce::rest::{Auth, RestCompute, RestConfig, DEFAULT_BASE_URL};

use crate::duration::parse_duration;

/// How to reach GCE.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct GceArgs {
    /// Compute API root (gce-sim: http://HOST:PORT/compute/v1/).
    #[arg(long, env = "PM_GCE_ENDPOINT", default_value = DEFAULT_BASE_URL)]
    pub gce_endpoint: String,
    /// Send no credentials (for gce-sim).
    #[arg(long, env = "PM_NO_AUTH")]
    pub no_auth: bool,
    /// Service-account key file; default: application default credentials or the
    /// metadata server.
    #[arg(long, env = "PM_CREDENTIALS", value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// Timeout of each GCE call.
    #[arg(long, env = "PM_GCE_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub gce_timeout: Duration,
}

impl GceArgs {
    /// Checks what clap cannot: an http(s) endpoint, and credentials given one way.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.gce_endpoint.starts_with("http://") || self.gce_endpoint.starts_with("https://"))
        {
            return Err(format!(
                "--gce-endpoint {:?} is not an http(s) URL",
                self.gce_endpoint
            ));
        }
        if self.no_auth && self.credentials.is_some() {
            return Err("--no-auth and --credentials exclude each other".into());
        }
        Ok(())
    }

    /// The credentials the flags name.
    fn auth(&self) -> Auth {
        if self.no_auth {
            Auth::None
        } else if let Some(file) = &self.credentials {
            Auth::ServiceAccountFile(file.clone())
        } else {
            Auth::ApplicationDefault
        }
    }

    /// The REST client the flags describe (credentials are loaded now).
    pub async fn client(&self) -> Result<RestCompute, GceError> {
        let mut rest = RestConfig::new(self.gce_endpoint.clone(), self.auth())?;
        rest.timeout = self.gce_timeout;
        RestCompute::new(rest).await
    }
}
