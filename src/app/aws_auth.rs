//! `auth check` for `[aws]`: one read (`ListEngagementInvitations`, the pull's own call) with
//! the credentials §8's order found, and a line that says where they came from and, when AWS
//! refuses, what to fix: the IAM action for `AccessDeniedException`, the key or its secret
//! for a refused signature.

use crate::aws::client::{AwsClient, Operation};
use crate::config::AwsConfig;
use crate::http::ApiError;

/// The signature errors AWS's JSON services answer ([I]: Partner Central's model lists none):
/// the key is unknown, or the signature (the secret) is wrong.
const UNKNOWN_KEY: &[&str] = &["UnrecognizedClientException", "InvalidClientTokenId"];
const BAD_SIGNATURE: &[&str] = &[
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignatureException",
];

/// One `auth check` line for AWS (ending in a newline) and whether the check failed.
pub(crate) async fn check(aws: &AwsConfig) -> (String, bool) {
    let Some(found) = aws.credentials() else {
        return (
            "FAILED  aws: no credentials were read for [aws]\n".into(),
            true,
        );
    };
    let from = format!("access key {} from {}", found.access_key_id, found.source);
    let client = match AwsClient::from_config(aws) {
        Ok(client) => client,
        Err(e) => return (format!("FAILED  aws: {e}\n"), true),
    };
    match client.list_pending_invitations(None).await {
        Ok(page) => (
            format!(
                "ok      aws: {from} can read the invitations of catalog {} ({} pending on the first page)\n",
                aws.catalog(),
                page.items.len()
            ),
            false,
        ),
        Err(e) => (format!("FAILED  aws: {}\n", refused(&e, &from)), true),
    }
}

/// What an operator reads when the one read is refused.
fn refused(e: &ApiError, from: &str) -> String {
    let list = Operation::ListEngagementInvitations;
    let ApiError::Named { name, message, .. } = e else {
        return format!("{from}: {e}");
    };
    let name = name.as_str();
    if name == "AccessDeniedException" {
        let rest: Vec<String> = [
            Operation::GetEngagementInvitation,
            Operation::StartEngagementByAcceptingInvitationTask,
            Operation::ListEngagementByAcceptingInvitationTasks,
            Operation::RejectEngagementInvitation,
        ]
        .iter()
        .map(|op| op.iam_action())
        .collect();
        return format!(
            "{from}: access denied ({message}); the IAM policy of these credentials must allow {} (the daemon also needs {})",
            list.iam_action(),
            rest.join(", "),
        );
    }
    if UNKNOWN_KEY.contains(&name) {
        return format!(
            "{from}: AWS does not know this access key (or its session token is wrong or expired): {name}: {message}"
        );
    }
    if BAD_SIGNATURE.contains(&name) {
        return format!(
            "{from}: AWS refused the request's signature: the secret access key does not belong to this access key (or this machine's clock is more than 5 minutes off): {name}: {message}"
        );
    }
    format!("{from}: {e}")
}
