//! The S3 edge: one client (the AWS SDK: SigV4, retries off — the uploader backs off itself),
//! and the few calls recordings need. Nothing here decides anything.

use std::{collections::HashMap, os::unix::fs::MetadataExt, path::Path, time::Duration};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::{
    Client,
    config::{
        RequestChecksumCalculation, ResponseChecksumValidation, retry::RetryConfig,
        timeout::TimeoutConfig,
    },
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    primitives::ByteStream,
    types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart},
};
use aws_smithy_http_client::tls;

use crate::{config::StoreConfig, core::upload};

/// Why a store operation failed. Messages say what to check.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("recording.store: {0}")]
    Config(String),
    #[error(
        "recording.store.credentials_file {path}: {why}; make it a regular file owned by root with mode 0600"
    )]
    CredentialsFile { path: String, why: String },
    #[error("{op} s3://{bucket}/{key}: {message}{hint}")]
    S3 {
        op: &'static str,
        bucket: String,
        key: String,
        message: String,
        /// The service's error code (`SignatureDoesNotMatch`, `NoSuchUpload`, …).
        code: Option<String>,
        hint: &'static str,
    },
    #[error(
        "the store has {got} bytes of s3://{bucket}/{key}, the local file {want}; it is uploaded again"
    )]
    Mismatch {
        bucket: String,
        key: String,
        got: i64,
        want: u64,
    },
}

impl StoreError {
    /// The multipart upload is gone (aborted, expired): start it over.
    pub fn upload_gone(&self) -> bool {
        matches!(self, StoreError::S3 { code: Some(c), .. } if c == "NoSuchUpload")
    }

    /// The object does not exist.
    pub fn not_found(&self) -> bool {
        matches!(self, StoreError::S3 { code: Some(c), .. } if c == "NoSuchKey" || c == "NotFound")
    }
}

/// A part the store confirmed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartDone {
    pub number: i32,
    pub etag: String,
    /// Base64 SHA-256 of the part, as the store checked it.
    pub sha256: String,
    /// File offset just after the part.
    pub end: u64,
}

/// What HEAD says about an object.
#[derive(Debug, Clone)]
pub struct ObjectHead {
    pub size: i64,
    pub metadata: HashMap<String, String>,
}

/// The configured store.
#[derive(Debug, Clone)]
pub struct Store {
    s3: Client,
    pub bucket: String,
    pub prefix: String,
    /// This node's name in keys and metadata.
    pub node: String,
}

impl Store {
    /// Builds the client (no request is made: a store that is down does not stop the daemon).
    pub async fn connect(cfg: &StoreConfig) -> Result<Store, StoreError> {
        let url = upload::parse_url(&cfg.url).map_err(StoreError::Config)?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(cfg.region.clone()));
        if !cfg.credentials_file.as_os_str().is_empty() {
            check_private(&cfg.credentials_file).map_err(|why| StoreError::CredentialsFile {
                path: cfg.credentials_file.display().to_string(),
                why,
            })?;
            use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
            let files = EnvConfigFiles::builder()
                .with_file(EnvConfigFileKind::Credentials, &cfg.credentials_file)
                .build();
            loader = loader.credentials_provider(
                aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .profile_files(files)
                    .build(),
            );
        }
        let sdk = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            )
            // We send SHA-256 per part ourselves; S3-compatible stores differ in what else
            // they accept (aws-chunked trailers, CRC defaults).
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if !cfg.endpoint.is_empty() {
            b = b.endpoint_url(&cfg.endpoint).force_path_style(true);
        }
        let node = crate::host::node_name(&cfg.node);
        Ok(Store {
            s3: Client::from_conf(b.build()),
            bucket: url.bucket,
            prefix: url.prefix,
            node,
        })
    }

    fn err<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        op: &'static str,
        key: &str,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StoreError {
        let (code, message) = match &e {
            SdkError::ServiceError(s) => (
                s.err().code().map(str::to_owned),
                format!(
                    "{}: {}",
                    s.err().code().unwrap_or("error"),
                    s.err().message().unwrap_or("(no message)")
                ),
            ),
            _ => (None, DisplayErrorContext(&e).to_string()),
        };
        let hint = match code.as_deref() {
            Some("SignatureDoesNotMatch" | "InvalidAccessKeyId" | "AccessDenied") => {
                " (check recording.store's credentials: credentials_file or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
            }
            Some("NoSuchBucket") => " (create the bucket, or fix recording.store.url)",
            None if matches!(e, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)) => {
                " (is recording.store.endpoint reachable?)"
            }
            _ => "",
        };
        StoreError::S3 {
            op,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            message,
            code,
            hint,
        }
    }

    /// Starts a multipart upload of `key` with `metadata`; returns its upload id.
    pub async fn create(
        &self,
        key: &str,
        metadata: HashMap<String, String>,
    ) -> Result<String, StoreError> {
        let out = self
            .s3
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/x-asciicast")
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .set_metadata(Some(metadata))
            .send()
            .await
            .map_err(|e| self.err("CreateMultipartUpload", key, e))?;
        out.upload_id.ok_or_else(|| StoreError::S3 {
            op: "CreateMultipartUpload",
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            message: "the store returned no upload id".into(),
            code: None,
            hint: "",
        })
    }

    /// Uploads part `number` (with its SHA-256, which the store verifies); returns its ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        data: Vec<u8>,
        sha256: &str,
    ) -> Result<String, StoreError> {
        let out = self
            .s3
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .checksum_sha256(sha256)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.err("UploadPart", key, e))?;
        Ok(out.e_tag.unwrap_or_default())
    }

    /// Completes the object from `parts`.
    pub async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[PartDone],
    ) -> Result<(), StoreError> {
        let parts = parts
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.number)
                    .e_tag(&p.etag)
                    .checksum_sha256(&p.sha256)
                    .build()
            })
            .collect();
        self.s3
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.err("CompleteMultipartUpload", key, e))?;
        Ok(())
    }

    /// Size and metadata of `key`.
    pub async fn head(&self, key: &str) -> Result<ObjectHead, StoreError> {
        let out = self
            .s3
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.err("HeadObject", key, e))?;
        Ok(ObjectHead {
            size: out.content_length.unwrap_or(-1),
            metadata: out.metadata.unwrap_or_default(),
        })
    }

    /// Every object key (with its size) below `prefix` (all nodes).
    pub async fn list(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let prefix = match self.prefix.as_str() {
            "" => String::new(),
            p => format!("{p}/"),
        };
        let mut out = Vec::new();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("ListObjectsV2", &prefix, e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    out.push((k.to_owned(), o.size().unwrap_or(0)));
                }
            }
        }
        Ok(out)
    }

    /// The object's bytes, as a stream of chunks.
    pub async fn get(&self, key: &str) -> Result<ByteStream, StoreError> {
        let out = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.err("GetObject", key, e))?;
        Ok(out.body)
    }
}

/// A credentials file must be root's and private (it holds a secret).
fn check_private(path: &Path) -> Result<(), String> {
    let m = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !m.is_file() {
        return Err("not a regular file".into());
    }
    if m.uid() != 0 {
        return Err(format!("owned by uid {}, not root", m.uid()));
    }
    if m.mode() & 0o077 != 0 {
        return Err(format!("mode {:o} lets others read it", m.mode() & 0o777));
    }
    Ok(())
}
