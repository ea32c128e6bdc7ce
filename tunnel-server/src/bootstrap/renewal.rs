//! Certificate renewal on a live tunnel: the bootstrap exchange on a stream the client opens, without a
//! token (the tunnel's certificate is the proof), for the certificate's own cluster only. Each new request
//! counts against its cluster's budget (`--renewal-rate` an hour, shared by all the cluster's tunnels, so
//! that opening more tunnels buys no more requests); past it the stream is reset with
//! [`Code::RateLimited`]. Resuming a request files none and is not counted.
use std::sync::Arc;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::Api;
use metrics::counter;
use tether_proto::{BootstrapRequest, BootstrapResponse, Code, BOOTSTRAP_VERSION};
use tether_runtime::transport::code;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{
    check_csr, create_csr, csr_name, read_request, resume, write, Bootstrap, Outcome, Refusal, REQUESTED_VIA_RENEWAL,
    REQUEST_TIMEOUT,
};
use crate::metrics as m;

impl Bootstrap {
    /// Serves one renewal stream of a tunnel whose certificate names `cluster`: the same exchange as a
    /// bootstrap, without a token (the certificate is the proof), on a stream of the tunnel's connection.
    /// Only the stream ends; the tunnel goes on. The certificate request is annotated
    /// `tether.io/requested-via: renewal`, which the controller's policy approves for an accepted cluster.
    pub async fn renew(
        self: Arc<Self>,
        cluster: String,
        connection: quinn::Connection,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        shutdown: CancellationToken,
    ) {
        let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut recv)).await {
            Err(_) => Outcome::Abandoned { outcome: "no_request", reason: "no renewal request".into() },
            Ok(Err(refusal)) => Outcome::Refused(refusal),
            Ok(Ok(request)) => match self.prepare_renewal(&cluster, &request, &connection).await {
                Ok((csrs, name)) => {
                    self.wait_and_answer(&csrs, &name, &cluster, &connection, &mut send, &shutdown).await
                }
                Err(outcome) => outcome,
            },
        };
        let answer = match outcome.logged(Some(&cluster)) {
            Outcome::Issued(certificate_pem) => {
                counter!(m::RENEWALS, "outcome" => "issued").increment(1);
                BootstrapResponse::Issued { certificate_pem }
            }
            Outcome::Refused(refusal) => {
                counter!(m::RENEWALS, "outcome" => refusal.outcome).increment(1);
                BootstrapResponse::Refused { reason: refusal.reason }
            }
            Outcome::Abandoned { outcome, .. } => {
                counter!(m::RENEWALS, "outcome" => outcome).increment(1);
                let _ = send.reset(code(Code::Abandoned));
                return;
            }
            Outcome::RateLimited(_) => {
                counter!(m::RENEWALS, "outcome" => "rate_limited").increment(1);
                let _ = send.reset(code(Code::RateLimited));
                return;
            }
        };
        if write(&mut send, &answer).await.is_ok() {
            let _ = send.finish();
        }
    }

    /// The renewal checks: well-formed, for the certificate's own cluster, no token, a good CSR; then the
    /// certificate request is created (or, with `resume`, found).
    async fn prepare_renewal(
        &self,
        cluster: &str,
        request: &BootstrapRequest,
        connection: &quinn::Connection,
    ) -> Result<(Api<CertificateSigningRequest>, String), Outcome> {
        check_renewal(request, cluster).map_err(Outcome::Refused)?;
        let Some(client) = &self.client else {
            return Err(Outcome::Refused(Refusal::new("unavailable", "renewal not available")));
        };
        let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
        let name = match &request.resume {
            Some(name) => resume(&csrs, name, request, connection).await.map(|()| name.clone())?,
            None => {
                if !self.renewal_allowed(cluster) {
                    let limit = self.settings.renewal_rate;
                    return Err(Outcome::RateLimited(format!(
                        "cluster {cluster} filed {limit} renewal requests within the last hour (--renewal-rate)"
                    )));
                }
                let random_name = || csr_name(cluster, rand::random());
                create_csr(&csrs, random_name, cluster, &request.csr_pem, REQUESTED_VIA_RENEWAL).await.map_err(|e| {
                    warn!(error = %e, "creating the certificate request failed");
                    Outcome::Abandoned { outcome: "error", reason: "creating the certificate request failed".into() }
                })?
            }
        };
        Ok((csrs, name))
    }
}

/// Checks a renewal request against the cluster of the tunnel it came on.
pub fn check_renewal(request: &BootstrapRequest, cluster: &str) -> Result<(), Refusal> {
    if request.version != BOOTSTRAP_VERSION {
        return Err(Refusal::new(
            "malformed",
            format!("renewal protocol version {} is not supported", request.version),
        ));
    }
    if request.cluster != cluster {
        return Err(Refusal::new(
            "wrong_cluster",
            format!("a tunnel of cluster {cluster} cannot renew a certificate for {}", request.cluster),
        ));
    }
    if request.token.is_some() {
        return Err(Refusal::new("malformed", "a renewal carries no token: the tunnel's certificate is the proof"));
    }
    check_csr(&request.csr_pem, cluster)
}
