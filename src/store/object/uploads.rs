//! Incomplete multipart uploads under a prefix: listed with S3's
//! ListMultipartUploads, the one request `object_store` does not make
//! (signed by its own SigV4 authorizer, sent by its own HTTP client), and
//! aborted with its `MultipartStore`. Listing rather than recording upload
//! ids finds every upload, also one a writer killed between starting it
//! and recording its id would have left.

use std::sync::{Arc, OnceLock};

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::multipart::MultipartStore;
use object_store::path::Path as Key;
use object_store::{ClientConfigKey, ClientOptions};
use serde::Deserialize;

/// How to reach the bucket for the listing, taken from the client's
/// settings as `object_store` would use them.
#[derive(Debug)]
pub(super) struct Uploads {
    s3: Arc<AmazonS3>,
    options: ClientOptions,
    /// Made at the first listing: only a writer's open lists.
    http: OnceLock<HttpClient>,
    /// `https://host/bucket` (path style) or `https://bucket.host`.
    bucket_endpoint: String,
    region: String,
}

/// One page of ListMultipartUploads' answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Page {
    #[serde(default)]
    upload: Vec<Upload>,
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Upload {
    pub key: String,
    pub upload_id: String,
}

fn failed(message: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: message.into(),
    }
}

impl Uploads {
    pub(super) fn new(builder: &AmazonS3Builder, s3: Arc<AmazonS3>) -> Self {
        let setting = |key| builder.get_config_value(&key);
        let mut options = ClientOptions::new();
        for key in [
            ClientConfigKey::AllowHttp,
            ClientConfigKey::AllowInvalidCertificates,
            ClientConfigKey::ConnectTimeout,
            ClientConfigKey::Timeout,
            ClientConfigKey::ProxyUrl,
            ClientConfigKey::ProxyCaCertificate,
            ClientConfigKey::ProxyExcludes,
        ] {
            if let Some(value) = setting(AmazonS3ConfigKey::Client(key)) {
                options = options.with_config(key, value);
            }
        }
        let region = setting(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
        let bucket = setting(AmazonS3ConfigKey::Bucket).unwrap_or_default();
        let virtual_hosted =
            setting(AmazonS3ConfigKey::VirtualHostedStyleRequest).as_deref() == Some("true");
        // As the client builds it: a given endpoint names the bucket itself
        // when requests are virtual-hosted.
        let bucket_endpoint = match (setting(AmazonS3ConfigKey::Endpoint), virtual_hosted) {
            (Some(endpoint), true) => endpoint,
            (Some(endpoint), false) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        Uploads {
            s3,
            options,
            http: OnceLock::new(),
            bucket_endpoint,
            region,
        }
    }

    /// Every incomplete upload whose key starts with `prefix`.
    pub(super) async fn list(&self, prefix: &str) -> object_store::Result<Vec<Upload>> {
        let encode = |text: &str| {
            percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
        };
        let http = match self.http.get() {
            Some(http) => http,
            None => {
                let http = ReqwestConnector::default().connect(&self.options)?;
                self.http.get_or_init(|| http)
            }
        };
        let mut uploads = Vec::new();
        let mut markers = String::new();
        loop {
            let url = format!(
                "{}?uploads=&prefix={}{markers}",
                self.bucket_endpoint,
                encode(prefix)
            );
            let mut request = http::Request::builder()
                .method(http::Method::GET)
                .uri(&url)
                .body(HttpRequestBody::empty())
                .map_err(|err| failed(format!("list uploads: {err}")))?;
            let credential = self.s3.credentials().get_credential().await?;
            AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut request, None);
            let response = http
                .execute(request)
                .await
                .map_err(|err| failed(format!("list uploads: {err}")))?;
            let status = response.status();
            let body = response
                .into_body()
                .bytes()
                .await
                .map_err(|err| failed(format!("list uploads: {err}")))?;
            let text = String::from_utf8_lossy(&body);
            if !status.is_success() {
                return Err(failed(format!("list uploads: {status}: {text}")));
            }
            let page: Page = quick_xml::de::from_str(&text)
                .map_err(|err| failed(format!("list uploads: {err}: {text}")))?;
            uploads.extend(page.upload);
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(key), Some(id)) => {
                    markers = format!(
                        "&key-marker={}&upload-id-marker={}",
                        encode(&key),
                        encode(&id)
                    );
                }
                _ => return Ok(uploads),
            }
        }
    }

    pub(super) async fn abort(&self, upload: &Upload) -> object_store::Result<()> {
        let key = Key::parse(&upload.key).map_err(|err| failed(err.to_string()))?;
        self.s3.abort_multipart(&key, &upload.upload_id).await
    }
}
