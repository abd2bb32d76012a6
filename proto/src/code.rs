//! Azure error codes (`x-ms-error-code` and the XML error body's `<Code>`) that the host sends
//! and the SDK and its users act on. The service's full list is longer; these are the ones
//! blobring names on both sides.

/// 403: the SharedKey signature or SAS did not verify.
pub const AUTHENTICATION_FAILED: &str = "AuthenticationFailed";
/// 401: the request carried neither `Authorization` nor a SAS.
pub const NO_AUTHENTICATION_INFORMATION: &str = "NoAuthenticationInformation";
/// 404: no such blob.
pub const BLOB_NOT_FOUND: &str = "BlobNotFound";
/// 404: no such container.
pub const CONTAINER_NOT_FOUND: &str = "ContainerNotFound";
/// 409 (or 412 for a create-only Put): the blob exists.
pub const BLOB_ALREADY_EXISTS: &str = "BlobAlreadyExists";
/// 409: the container exists.
pub const CONTAINER_ALREADY_EXISTS: &str = "ContainerAlreadyExists";
/// 412 (304 on reads): an `If-*` condition failed.
pub const CONDITION_NOT_MET: &str = "ConditionNotMet";
/// 416: the range starts past the end of the blob.
pub const INVALID_RANGE: &str = "InvalidRange";
/// 503: throttled; back off.
pub const SERVER_BUSY: &str = "ServerBusy";
