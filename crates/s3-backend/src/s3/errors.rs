//! The S3 error table: every aws-sdk-s3 failure becomes a [`StoreError`] with a kind and a message
//! that says what to check. Status first, then the S3 error code.
//! Codes: <https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html#ErrorCodeList>.

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::http::Response;
use common::{ErrorKind, StoreError};

/// What was being done, for the message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub op: &'static str,
    pub endpoint: &'a str,
    pub bucket: &'a str,
    pub key: &'a str,
}

impl Request<'_> {
    fn target(&self) -> String {
        if self.key.is_empty() {
            format!("bucket {:?}", self.bucket)
        } else {
            format!("{:?} in bucket {:?}", self.key, self.bucket)
        }
    }
}

pub(crate) fn map_sdk_error<E>(err: SdkError<E, Response>, req: Request<'_>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let Request { op, endpoint, .. } = req;
    let details = DisplayErrorContext(&err).to_string();
    match &err {
        SdkError::ConstructionFailure(_) => StoreError::new(
            ErrorKind::InvalidInput,
            format!("{op} of {} could not be sent: {details}", req.target()),
        ),
        SdkError::TimeoutError(_) => StoreError::new(
            ErrorKind::Timeout,
            format!(
                "{op} of {} timed out: the S3 endpoint {endpoint} did not answer in time",
                req.target()
            ),
        ),
        SdkError::DispatchFailure(_) if missing_credentials(&details).is_some() => {
            let why = missing_credentials(&details).flatten();
            StoreError::new(
                ErrorKind::AccessDenied,
                format!(
                    "no credentials for {endpoint}{}: put keys in a profile of the credentials file \
                     (the plugin's config folder or ~/.aws/credentials; -o profile=NAME or --profile picks one, \
                     [default] otherwise) or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                    why.map(|w| format!(" ({w})")).unwrap_or_default()
                ),
            )
        }
        SdkError::DispatchFailure(failure) => {
            let kind = if failure.is_timeout() {
                ErrorKind::Timeout
            } else if failure.is_user() {
                ErrorKind::InvalidInput
            } else {
                ErrorKind::Network
            };
            let cause = connection_cause(&details);
            // A named cause says it all; otherwise the SDK's chain is the only clue.
            let details = if cause == "connection failed" {
                format!(": {details}")
            } else {
                String::new()
            };
            StoreError::new(
                kind,
                format!(
                    "cannot reach the S3 endpoint {endpoint} ({cause}); check the endpoint URL and that \
                     the server is up ({op} of {}{details})",
                    req.target()
                ),
            )
        }
        SdkError::ResponseError(_) => StoreError::new(
            ErrorKind::Network,
            format!(
                "{op} of {}: the answer from {endpoint} could not be read: {details}",
                req.target()
            ),
        ),
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or_default().to_string();
            let message = service.err().message().unwrap_or_default().to_string();
            // S3 servers name each answer with a request ID; a web server in front of an
            // HTTPS port that got plain HTTP does not.
            let from_s3 = service.raw().headers().contains_key("x-amz-request-id");
            map_service_error(status, &code, &message, from_s3, req)
        }
        _ => StoreError::new(
            ErrorKind::Other,
            format!("{op} of {} failed: {details}", req.target()),
        ),
    }
}

/// `Some` when a request was never sent because no credentials could be loaded, with the
/// named profile's problem when that is the cause (`profile `x` was not defined`).
fn missing_credentials(details: &str) -> Option<Option<String>> {
    let credentials_failed = [
        "no credentials found",
        "CredentialsNotLoaded",
        "while loading credentials",
    ]
    .iter()
    .any(|sign| details.contains(sign));
    if !credentials_failed {
        return None;
    }
    let profile_problem = details
        .split(": ")
        .find(|part| part.starts_with("profile `"))
        .map(|part| part.lines().next().unwrap_or(part).trim().to_string());
    Some(profile_problem)
}

/// A short human cause for a connection failure, from the error chain's text.
fn connection_cause(details: &str) -> &'static str {
    let d = details.to_ascii_lowercase();
    if d.contains("invalid region") {
        // The SDK makes the AWS host name of the region (its message also says "DNS").
        "the region is not valid; use a name such as eu-west-1"
    } else if d.contains("connection refused") {
        "connection refused"
    } else if d.contains("dns") || d.contains("resolve") || d.contains("lookup") {
        "host name not found"
    } else if d.contains("certificate") || d.contains("tls") || d.contains("invalidcertificate") {
        "TLS handshake failed; for a self-signed endpoint set AWS_CA_BUNDLE to its CA certificate"
    } else if d.contains("timed out") || d.contains("timeout") {
        "connection timed out"
    } else if d.contains("reset") || d.contains("broken pipe") || d.contains("closed") {
        "connection closed by the server"
    } else {
        "connection failed"
    }
}

pub(crate) fn map_service_error(
    status: u16,
    code: &str,
    message: &str,
    from_s3: bool,
    req: Request<'_>,
) -> StoreError {
    let Request {
        op,
        endpoint,
        bucket,
        ..
    } = req;
    let target = req.target();
    let server_said = match (code.is_empty(), message.is_empty()) {
        (true, _) => format!("HTTP {status}"),
        (false, true) => format!("HTTP {status} {code}"),
        (false, false) => format!("HTTP {status} {code}: {message}"),
    };
    let (kind, text) = match (status, code) {
        // HEAD answers carry no body, so a 404 there has no code: the object is missing.
        (_, "NoSuchKey") | (404, "") | (404, "NotFound") => {
            (ErrorKind::NotFound, format!("{op}: object {:?} does not exist in bucket {bucket:?}", req.key))
        }
        (_, "NoSuchBucket") => (
            ErrorKind::NoSuchBucket,
            format!("bucket {bucket:?} does not exist on {endpoint}; create it first (Docker volumes create it when create_bucket=true)"),
        ),
        (_, "NoSuchUpload") => (ErrorKind::NotFound, format!("{op} of {target}: the multipart upload does not exist (completed or aborted)")),
        // If-Match did not match: the object changed since its ETag was read.
        (412, _) | (_, "PreconditionFailed") => (
            ErrorKind::PreconditionFailed,
            format!("{op} of {target}: the object changed while it was being read"),
        ),
        (416, _) | (_, "InvalidRange") => (ErrorKind::InvalidRange, format!("{op} of {target}: the range starts beyond the end of the object")),
        (_, "InvalidAccessKeyId") => (
            ErrorKind::AccessDenied,
            format!("the access key ID is not known to {endpoint}; check AWS_ACCESS_KEY_ID or the credentials profile ({server_said})"),
        ),
        (_, "SignatureDoesNotMatch") => (
            ErrorKind::AccessDenied,
            format!("the secret access key was rejected by {endpoint}; check AWS_SECRET_ACCESS_KEY or the credentials profile ({server_said})"),
        ),
        (_, "RequestTimeTooSkewed") => (
            ErrorKind::AccessDenied,
            format!("the clock of this machine differs too much from {endpoint}'s; fix the system time ({server_said})"),
        ),
        (_, "ExpiredToken") | (_, "InvalidToken") => (
            ErrorKind::AccessDenied,
            format!("the session token was rejected by {endpoint}; refresh the credentials ({server_said})"),
        ),
        (403, _) | (_, "AccessDenied") => (
            ErrorKind::AccessDenied,
            format!("access denied: the credentials may not {op} {target} on {endpoint}; check the bucket policy and the key's permissions ({server_said})"),
        ),
        (_, "InvalidBucketName") => (ErrorKind::InvalidInput, format!("bucket name {bucket:?} is not valid on {endpoint} ({server_said})")),
        // Wrong region for the bucket on AWS.
        (301, _) | (_, "PermanentRedirect") | (_, "AuthorizationHeaderMalformed") => (
            ErrorKind::InvalidInput,
            format!("bucket {bucket:?} is in another region than the configured one; set the region (AWS_REGION / -o region) ({server_said})"),
        ),
        (429, _) | (_, "SlowDown") | (_, "Throttling") | (_, "ThrottlingException") | (_, "RequestLimitExceeded") => {
            (ErrorKind::Throttled, format!("{op} of {target} was throttled by {endpoint} ({server_said})"))
        }
        (_, "RequestTimeout") => (ErrorKind::Timeout, format!("{op} of {target}: {endpoint} timed out waiting for the request ({server_said})")),
        (500..=599, _) => (ErrorKind::ServerError, format!("{op} of {target}: {endpoint} failed ({server_said})")),
        // Not even an S3 answer: what web servers (MinIO and Go's server, nginx) answer to
        // plain HTTP sent to their HTTPS port.
        (400, "") if !from_s3 && endpoint.to_ascii_lowercase().starts_with("http://") => (
            ErrorKind::InvalidInput,
            format!("{op} of {target} was refused by {endpoint} (HTTP 400 with no S3 error code: a bad request, or plain HTTP sent to a port that serves HTTPS; if so, use an https:// URL)"),
        ),
        (400..=499, _) => (ErrorKind::InvalidInput, format!("{op} of {target} was refused by {endpoint} ({server_said})")),
        _ => (ErrorKind::Other, format!("{op} of {target}: unexpected answer from {endpoint} ({server_said})")),
    };
    StoreError::new(kind, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Request<'static> {
        Request {
            op: "GetObject",
            endpoint: "http://127.0.0.1:7480",
            bucket: "data",
            key: "a/b",
        }
    }

    #[test]
    fn status_and_code_map_to_kinds_with_actionable_messages() {
        let cases: &[(u16, &str, ErrorKind, &str)] = &[
            (404, "NoSuchKey", ErrorKind::NotFound, "does not exist"),
            (404, "", ErrorKind::NotFound, "does not exist"),
            (
                404,
                "NoSuchBucket",
                ErrorKind::NoSuchBucket,
                "create_bucket",
            ),
            (404, "NoSuchUpload", ErrorKind::NotFound, "multipart"),
            (
                412,
                "PreconditionFailed",
                ErrorKind::PreconditionFailed,
                "changed",
            ),
            (
                416,
                "InvalidRange",
                ErrorKind::InvalidRange,
                "beyond the end",
            ),
            (
                403,
                "InvalidAccessKeyId",
                ErrorKind::AccessDenied,
                "AWS_ACCESS_KEY_ID",
            ),
            (
                403,
                "SignatureDoesNotMatch",
                ErrorKind::AccessDenied,
                "AWS_SECRET_ACCESS_KEY",
            ),
            (403, "AccessDenied", ErrorKind::AccessDenied, "permissions"),
            (
                403,
                "RequestTimeTooSkewed",
                ErrorKind::AccessDenied,
                "clock",
            ),
            (
                400,
                "InvalidBucketName",
                ErrorKind::InvalidInput,
                "not valid",
            ),
            (301, "PermanentRedirect", ErrorKind::InvalidInput, "region"),
            (503, "SlowDown", ErrorKind::Throttled, "throttled"),
            (429, "", ErrorKind::Throttled, "throttled"),
            (500, "InternalError", ErrorKind::ServerError, "failed"),
            (400, "RequestTimeout", ErrorKind::Timeout, "timed out"),
            (400, "MalformedXML", ErrorKind::InvalidInput, "refused"),
            (400, "", ErrorKind::InvalidInput, "use an https:// URL"),
        ];
        for &(status, code, kind, hint) in cases {
            let err = map_service_error(status, code, "", false, req());
            assert_eq!(err.kind(), kind, "{status} {code}: {err}");
            assert!(err.to_string().contains(hint), "{status} {code}: {err}");
        }
        // Over HTTPS already, no such hint.
        let https = Request {
            endpoint: "https://s3.example.com",
            ..req()
        };
        let err = map_service_error(400, "", "", false, https).to_string();
        assert!(
            err.contains("HTTP 400") && !err.contains("use an https"),
            "{err}"
        );
        // An S3 server's own 400 without a code (a HEAD's answer has no body): no hint.
        let err = map_service_error(400, "", "", true, req()).to_string();
        assert!(
            err.contains("HTTP 400") && !err.contains("use an https"),
            "{err}"
        );
    }

    #[test]
    fn missing_credentials_are_told_apart_from_network_failures() {
        let chain = "dispatch failure: other: the credential provider was not enabled: no credentials found in chain. Attempted:\n  \
            Environment: the credential provider was not enabled: environment variable not set\n  \
            Profile: the credential provider was not enabled: profile `nope` was not defined: could not find source profile nope\n";
        assert_eq!(
            missing_credentials(chain),
            Some(Some("profile `nope` was not defined".to_string()))
        );
        assert_eq!(
            missing_credentials(
                "no credentials found in chain. Attempted:\n  Profile: not enabled\n"
            ),
            Some(None)
        );
        assert_eq!(
            missing_credentials("dispatch failure: io error: Connection refused"),
            None
        );
    }

    #[test]
    fn connection_causes_are_named() {
        assert_eq!(
            connection_cause("io error: Connection refused (os error 111)"),
            "connection refused"
        );
        assert_eq!(
            connection_cause("dns error: failed to lookup address"),
            "host name not found"
        );
        assert!(
            connection_cause("invalid peer certificate: UnknownIssuer").contains("AWS_CA_BUNDLE")
        );
    }
}
