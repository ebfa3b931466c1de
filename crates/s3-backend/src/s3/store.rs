//! [`S3Store`]: [`ObjectStore`] over aws-sdk-s3.

use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::{ByteStream as SdkByteStream, DateTime};
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart as SdkCompletedPart,
    CreateBucketConfiguration, EncodingType, MetadataDirective,
};
use bytes::Bytes;
use common::store::{ByteStream, PendingUpload};
use common::{
    BucketName, CompletedPart, ETag, ErrorKind, ListPage, ListParams, ListedObject, ObjectMeta,
    ObjectStore, PutResult, StoreError, StoreResult, UploadId, UserMetadata,
};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::config::S3Config;
use super::errors::{map_sdk_error, Request};

/// An [`ObjectStore`] on one bucket of an S3 endpoint. Cheap to clone (the client is shared).
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    endpoint: String,
    /// AWS needs a LocationConstraint outside us-east-1; other servers (Ceph RGW) refuse one.
    location_constraint: Option<String>,
    /// See [`S3Config::signs_payloads`].
    signs_payloads: bool,
    /// See [`S3Config::endpoint_path`].
    endpoint_path: String,
}

impl S3Store {
    /// A store on `bucket` with a new client built from `config`. Does not contact the server.
    pub async fn new(config: &S3Config, bucket: &BucketName) -> StoreResult<Self> {
        Ok(Self::from_client(
            config.build_client().await?,
            config,
            bucket,
        ))
    }

    /// A store on `bucket` sharing an existing client (one connection pool for many volumes).
    pub fn from_client(client: aws_sdk_s3::Client, config: &S3Config, bucket: &BucketName) -> Self {
        let location_constraint = (config.endpoint_url.is_none() && config.region != "us-east-1")
            .then(|| config.region.clone());
        Self {
            client,
            bucket: bucket.to_string(),
            endpoint: config.endpoint_display(),
            location_constraint,
            signs_payloads: config.signs_payloads(),
            endpoint_path: config.endpoint_path(),
        }
    }

    /// The aws-sdk-s3 client, to share with stores on other buckets.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// Check that the endpoint answers, the credentials are accepted and the bucket exists;
    /// with `create`, create a missing bucket. The error says which of these failed.
    pub async fn ensure_bucket(&self, create: bool) -> StoreResult<()> {
        let head = self.client.head_bucket().bucket(&self.bucket).send().await;
        let err = match head {
            Ok(_) => return Ok(()),
            Err(e) => {
                let answered = is_server_answer(&e);
                self.explain_head_error(map_sdk_error(e, self.req("HeadBucket", "")), answered)
                    .await
            }
        };
        // HEAD has no body, so a 404 carries no code: for a bucket it means no such bucket.
        let missing = matches!(err.kind(), ErrorKind::NotFound | ErrorKind::NoSuchBucket);
        if !missing {
            return Err(err);
        }
        if !self.endpoint_path.is_empty() {
            // Most often the bucket pasted along with the server's address.
            return Err(StoreError::new(
                ErrorKind::NoSuchBucket,
                format!(
                    "bucket {:?} not found at {}, whose URL has the path /{}: give the endpoint as the server only, such as http://127.0.0.1:7480 (the bucket is named on its own)",
                    self.bucket, self.endpoint, self.endpoint_path
                ),
            ));
        }
        if !create {
            return Err(StoreError::new(
                ErrorKind::NoSuchBucket,
                format!(
                    "bucket {:?} does not exist on {}; create it first (Docker volumes create it when create_bucket=true)",
                    self.bucket, self.endpoint
                ),
            ));
        }
        let mut request = self.client.create_bucket().bucket(&self.bucket);
        if let Some(region) = &self.location_constraint {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region.as_str()))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = map_sdk_error(e, self.req("CreateBucket", ""));
                // Someone else created it in the meantime: fine.
                if self
                    .client
                    .head_bucket()
                    .bucket(&self.bucket)
                    .send()
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
                Err(err)
            }
        }
    }

    /// HEAD answers have no body, so a 403 does not say whether the key, the secret or a
    /// permission is wrong. Ask once more with a request that has a body (a one-key listing)
    /// and return its more precise error when it fails too. Only on the error path, and only
    /// for a 403 the server sent (`answered`), not for credentials that never loaded.
    async fn explain_head_error(&self, err: StoreError, answered: bool) -> StoreError {
        if !answered || err.kind() != ErrorKind::AccessDenied {
            return err;
        }
        let probe = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .max_keys(1)
            .send()
            .await;
        match probe {
            Err(e) => map_sdk_error(e, self.req("ListObjectsV2", "")),
            Ok(_) => err,
        }
    }

    fn req<'a>(&'a self, op: &'static str, key: &'a str) -> Request<'a> {
        Request {
            op,
            endpoint: &self.endpoint,
            bucket: &self.bucket,
            key,
        }
    }

    /// The `x-amz-copy-source` of `key` in this bucket.
    fn copy_source(&self, key: &str) -> String {
        format!("{}/{}", self.bucket, utf8_percent_encode(key, COPY_SOURCE))
    }
}

/// Whether the server answered (with an error status), as opposed to the request failing
/// before or on the way.
fn is_server_answer<E>(
    err: &aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> bool {
    matches!(err, aws_sdk_s3::error::SdkError::ServiceError(_))
}

fn system_time(t: Option<&DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Keys in listings asked for with `encoding-type=url`.
fn url_decode(value: &str) -> String {
    percent_encoding::percent_decode_str(value)
        .decode_utf8_lossy()
        .into_owned()
}

fn etag(value: Option<&str>) -> ETag {
    ETag::new(value.unwrap_or_default())
}

/// `x-amz-copy-source` is `bucket/key` with the key URL-encoded, slashes kept.
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[async_trait]
impl ObjectStore for S3Store {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let answered = is_server_answer(&e);
                let err = map_sdk_error(e, self.req("HeadObject", key));
                return Err(self.explain_head_error(err, answered).await);
            }
        };
        Ok(ObjectMeta {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: etag(out.e_tag()),
            last_modified: system_time(out.last_modified()),
            user_metadata: out
                .metadata()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    async fn get_stream(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> StoreResult<ByteStream> {
        if range.start >= range.end {
            // HTTP has no empty range: check existence and version with HEAD instead.
            let head = self.head(key).await?;
            if if_match.is_some_and(|e| *e != head.etag) {
                return Err(StoreError::new(
                    ErrorKind::PreconditionFailed,
                    format!("GetObject of {key:?}: the object changed while it was being read"),
                ));
            }
            if range.start > 0 && range.start >= head.size {
                return Err(StoreError::new(
                    ErrorKind::InvalidRange,
                    format!("GetObject of {key:?}: the range starts beyond the end of the object"),
                ));
            }
            return Ok(Box::pin(futures::stream::empty()));
        }
        let mut request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1));
        if let Some(etag) = if_match {
            request = request.if_match(etag.as_str());
        }
        let out = request
            .send()
            .await
            .map_err(|e| map_sdk_error(e, self.req("GetObject", key)))?;
        // A server or proxy that ignores Range answers with the whole object from byte 0;
        // its bytes must not be taken for the range asked for.
        let starts_at = out
            .content_range()
            .and_then(|r| r.strip_prefix("bytes "))
            .and_then(|r| r.split('-').next())
            .and_then(|start| start.parse::<u64>().ok())
            .unwrap_or(0);
        if starts_at != range.start {
            return Err(StoreError::new(
                ErrorKind::Other,
                format!(
                    "{} answered a ranged GET of {key:?} from byte {} with data from byte {starts_at};                      the server or a proxy in between does not support Range requests",
                    self.endpoint, range.start
                ),
            ));
        }
        let (endpoint, key) = (self.endpoint.clone(), key.to_string());
        let body = futures::stream::unfold(Some(out.body), move |body: Option<SdkByteStream>| {
            let (endpoint, key) = (endpoint.clone(), key.clone());
            async move {
                let mut body = body?;
                match body.next().await {
                    None => None,
                    Some(Ok(bytes)) => Some((Ok(bytes), Some(body))),
                    // The SDK's stalled-stream protection turns a body that stops flowing into
                    // an error here, so a reader never hangs on a dead connection.
                    Some(Err(e)) => Some((
                        Err(StoreError::new(
                            ErrorKind::Network,
                            format!("reading {key:?} from {endpoint} failed mid-way: {e}"),
                        )),
                        None,
                    )),
                }
            }
        });
        Ok(Box::pin(body))
    }

    async fn list(&self, params: &ListParams) -> StoreResult<ListPage> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&params.prefix)
            .set_delimiter(params.delimiter.clone())
            .set_continuation_token(params.continuation_token.clone())
            .max_keys(params.max_keys as i32)
            // Keys may hold characters XML cannot carry (control characters); URL encoding
            // makes every key listable.
            .encoding_type(EncodingType::Url)
            .send()
            .await
            .map_err(|e| map_sdk_error(e, self.req("ListObjectsV2", &params.prefix)))?;
        Ok(ListPage {
            objects: out
                .contents()
                .iter()
                .map(|o| ListedObject {
                    key: url_decode(o.key().unwrap_or_default()),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: etag(o.e_tag()),
                    last_modified: system_time(o.last_modified()),
                })
                .collect(),
            common_prefixes: out
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(url_decode))
                .collect(),
            next_continuation_token: if out.is_truncated().unwrap_or(false) {
                out.next_continuation_token().map(str::to_string)
            } else {
                None
            },
        })
    }

    async fn put(&self, key: &str, body: Bytes, metadata: &UserMetadata) -> StoreResult<PutResult> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .set_metadata(Some(metadata.clone().into_iter().collect()))
            .body(SdkByteStream::from(body))
            .customize();
        let out = if self.signs_payloads {
            request
        } else {
            request.disable_payload_signing()
        }
        .send()
        .await
        .map_err(|e| map_sdk_error(e, self.req("PutObject", key)))?;
        Ok(PutResult {
            etag: etag(out.e_tag()),
        })
    }

    async fn create_multipart(&self, key: &str, metadata: &UserMetadata) -> StoreResult<UploadId> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_metadata(Some(metadata.clone().into_iter().collect()))
            .send()
            .await
            .map_err(|e| map_sdk_error(e, self.req("CreateMultipartUpload", key)))?;
        let id = out.upload_id().ok_or_else(|| {
            StoreError::new(
                ErrorKind::Other,
                format!("{} returned no upload ID for {key:?}", self.endpoint),
            )
        })?;
        Ok(UploadId(id.to_string()))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &UploadId,
        part_number: u32,
        body: Bytes,
    ) -> StoreResult<CompletedPart> {
        let request = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&upload_id.0)
            .part_number(part_number as i32)
            .body(SdkByteStream::from(body))
            .customize();
        let out = if self.signs_payloads {
            request
        } else {
            request.disable_payload_signing()
        }
        .send()
        .await
        .map_err(|e| map_sdk_error(e, self.req("UploadPart", key)))?;
        Ok(CompletedPart {
            part_number,
            etag: etag(out.e_tag()),
        })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &UploadId,
        parts: &[CompletedPart],
    ) -> StoreResult<PutResult> {
        let upload = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| {
                        SdkCompletedPart::builder()
                            .part_number(p.part_number as i32)
                            .e_tag(p.etag.as_str())
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&upload_id.0)
            .multipart_upload(upload)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let err = map_sdk_error(e, self.req("CompleteMultipartUpload", key));
                // A retried completion whose first attempt succeeded finds no upload any more:
                // the object is there if HEAD shows a multipart ETag of this many parts.
                if err.kind() == ErrorKind::NotFound {
                    if let Ok(head) = self.head(key).await {
                        if head
                            .etag
                            .as_str()
                            .trim_matches('"')
                            .ends_with(&format!("-{}", parts.len()))
                        {
                            return Ok(PutResult { etag: head.etag });
                        }
                    }
                }
                return Err(err);
            }
        };
        match out.e_tag() {
            Some(tag) if !tag.trim_matches('"').is_empty() => Ok(PutResult {
                etag: etag(Some(tag)),
            }),
            // Ceph RGW 16 answers with an empty <ETag>; HEAD has the right one.
            _ => Ok(PutResult {
                etag: self.head(key).await?.etag,
            }),
        }
    }

    async fn abort_multipart(&self, key: &str, upload_id: &UploadId) -> StoreResult<()> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&upload_id.0)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match map_sdk_error(e, self.req("AbortMultipartUpload", key)) {
                // Already completed or aborted: nothing left to clean up.
                err if err.kind() == ErrorKind::NotFound => Ok(()),
                err => Err(err),
            },
        }
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<PendingUpload>> {
        let mut uploads = Vec::new();
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let out = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| map_sdk_error(e, self.req("ListMultipartUploads", prefix)))?;
            uploads.extend(out.uploads().iter().filter_map(|u| {
                Some(PendingUpload {
                    key: u.key()?.to_string(),
                    upload_id: UploadId(u.upload_id()?.to_string()),
                })
            }));
            if !out.is_truncated().unwrap_or(false) {
                return Ok(uploads);
            }
            key_marker = out.next_key_marker().map(str::to_string);
            id_marker = out.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() {
                return Ok(uploads);
            }
        }
    }

    async fn upload_part_copy(
        &self,
        src: &str,
        range: Range<u64>,
        if_match: Option<&ETag>,
        dst: &str,
        upload_id: &UploadId,
        part_number: u32,
    ) -> StoreResult<CompletedPart> {
        if range.start >= range.end {
            return Err(StoreError::new(
                ErrorKind::InvalidRange,
                format!("cannot copy the empty range {range:?} of {src:?}"),
            ));
        }
        let out = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(dst)
            .upload_id(&upload_id.0)
            .part_number(part_number as i32)
            .copy_source(self.copy_source(src))
            .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
            .set_copy_source_if_match(if_match.map(|etag| etag.as_str().to_string()))
            .customize()
            // The request has no body and the SDK sends no length; Ceph RGW then refuses it
            // with 411 MissingContentLength.
            .mutate_request(|request| {
                request.headers_mut().insert("content-length", "0");
            })
            .send()
            .await
            .map_err(|e| {
                // A 404 is the source (NoSuchKey) or the upload (NoSuchUpload: aborted).
                let missing_source = e.code() == Some("NoSuchKey");
                let err = map_sdk_error(e, self.req("UploadPartCopy", src));
                if missing_source {
                    StoreError::not_found(src)
                } else {
                    err
                }
            })?;
        Ok(CompletedPart {
            part_number,
            etag: etag(out.copy_part_result().and_then(|r| r.e_tag())),
        })
    }

    async fn copy(
        &self,
        src: &str,
        dst: &str,
        metadata: Option<&UserMetadata>,
    ) -> StoreResult<PutResult> {
        let source = self.copy_source(src);
        let mut request = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(dst)
            .copy_source(source);
        if let Some(metadata) = metadata {
            request = request
                .metadata_directive(MetadataDirective::Replace)
                .set_metadata(Some(metadata.clone().into_iter().collect()));
        }
        let out = request.send().await.map_err(|e| {
            let err = map_sdk_error(e, self.req("CopyObject", src));
            if err.kind() == ErrorKind::NotFound {
                StoreError::not_found(src)
            } else {
                err
            }
        })?;
        Ok(PutResult {
            etag: etag(out.copy_object_result().and_then(|r| r.e_tag())),
        })
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| map_sdk_error(e, self.req("DeleteObject", key)))?;
        Ok(())
    }
}
