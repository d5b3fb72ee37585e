//! What the S3 store of issue 13 relies on in `object_store` 0.12.5,
//! checked against a real moto server (and through the fault proxy):
//! each test pins one behaviour recorded in /work/notes/s3-facts.md.

#![cfg(feature = "s3")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    BackoffConfig, Error, ObjectStore, PutMode, PutPayload, RetryConfig, UpdateVersion,
    WriteMultipart,
};
use support::fault_proxy::FaultProxy;
use support::s3::MotoServer;

const MIB: usize = 1024 * 1024;
/// S3's (and moto's) smallest part but the last.
const PART: usize = 5 * MIB;

/// Retries quickly, so a test that exhausts them ends fast.
fn quick_retries(max_retries: usize) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            base: 2.0,
        },
        max_retries,
        retry_timeout: Duration::from_secs(30),
    }
}

/// The configuration the lead's store uses: the environment first, then
/// explicit options (the `ckpt_options_set_storage_option` keys).
fn store(endpoint: &str, bucket: &str, retry: RetryConfig) -> AmazonS3 {
    AmazonS3Builder::from_env()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .with_bucket_name(bucket)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(retry)
        .build()
        .expect("build the S3 store")
}

/// A fresh bucket on the shared server, and a store on it.
fn bucket(name: &str) -> AmazonS3 {
    let server = MotoServer::shared();
    server.create_bucket(name);
    store(&server.endpoint(), name, quick_retries(3))
}

/// A fresh bucket, and a store that reaches it through a fault proxy.
fn bucket_behind_proxy(name: &str, max_retries: usize) -> (AmazonS3, FaultProxy) {
    let server = MotoServer::shared();
    server.create_bucket(name);
    let proxy = FaultProxy::start(server.address());
    let store = store(&proxy.endpoint(), name, quick_retries(max_retries));
    (store, proxy)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn is_quoted_md5(etag: &str) -> bool {
    let inner = etag.strip_prefix('"').and_then(|e| e.strip_suffix('"'));
    inner.is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tokio::test(flavor = "multi_thread")]
async fn put_get_range_list_copy_delete() {
    let store = bucket("basic");
    let data = pattern(100_000, 1);
    let put = store
        .put(&Path::from("run/ckpt-1/a.bin"), data.clone().into())
        .await
        .unwrap();
    store
        .put(
            &Path::from("run/ckpt-1/b/c.bin"),
            PutPayload::from_static(b"c"),
        )
        .await
        .unwrap();
    store
        .put(
            &Path::from("run/checkpoint"),
            PutPayload::from_static(b"state"),
        )
        .await
        .unwrap();

    let got = store.get(&Path::from("run/ckpt-1/a.bin")).await.unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), &data[..]);
    let range = store
        .get_range(&Path::from("run/ckpt-1/a.bin"), 1000..5000)
        .await
        .unwrap();
    assert_eq!(range.as_ref(), &data[1000..5000]);

    // `head` and the put agree on the ETag: the quoted MD5 of the bytes.
    let head = store.head(&Path::from("run/ckpt-1/a.bin")).await.unwrap();
    assert_eq!(head.size, data.len() as u64);
    assert_eq!(head.e_tag, put.e_tag);
    assert!(is_quoted_md5(head.e_tag.as_deref().unwrap()), "{head:?}");

    let listing = store
        .list_with_delimiter(Some(&Path::from("run")))
        .await
        .unwrap();
    let objects: Vec<_> = listing
        .objects
        .iter()
        .map(|o| o.location.as_ref())
        .collect();
    let prefixes: Vec<_> = listing.common_prefixes.iter().map(|p| p.as_ref()).collect();
    assert_eq!(objects, ["run/checkpoint"]);
    assert_eq!(prefixes, ["run/ckpt-1"]);
    let mut everything: Vec<_> = store
        .list(Some(&Path::from("run")))
        .map_ok(|o| o.location.to_string())
        .try_collect()
        .await
        .unwrap();
    everything.sort();
    assert_eq!(
        everything,
        ["run/checkpoint", "run/ckpt-1/a.bin", "run/ckpt-1/b/c.bin"]
    );

    let copy = Path::from("run/ckpt-2/a.bin");
    store
        .copy(&Path::from("run/ckpt-1/a.bin"), &copy)
        .await
        .unwrap();
    assert_eq!(
        store
            .get(&copy)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        &data[..]
    );
    store.delete(&copy).await.unwrap();
    assert!(matches!(
        store.head(&copy).await,
        Err(Error::NotFound { .. })
    ));
    // Deleting what is gone succeeds, as S3 does.
    store.delete(&copy).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_upload_sends_concurrent_parts() {
    let (store, proxy) = bucket_behind_proxy("multipart", 3);
    let location = Path::from("run/ckpt-1/tensors.bin");
    let data = pattern(3 * PART + 12345, 2);
    let upload = store.put_multipart(&location).await.unwrap();
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
    for piece in data.chunks(MIB) {
        writer.wait_for_capacity(4).await.unwrap();
        writer.write(piece);
    }
    let result = writer.finish().await.unwrap();

    // A multipart ETag is not an MD5: it ends in "-<parts>".
    assert!(
        result.e_tag.as_deref().unwrap().ends_with("-4\""),
        "{result:?}"
    );
    let head = store.head(&location).await.unwrap();
    assert_eq!(head.e_tag, result.e_tag);
    let got = store.get(&location).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), &data[..]);
    let parts = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("PUT ") && r.contains("partNumber="))
        .count();
    assert_eq!(parts, 4, "{:?}", proxy.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_puts_detect_conflicts() {
    let store = bucket("conditional");
    let state = Path::from("run/checkpoint");

    let created = store
        .put_opts(
            &state,
            PutPayload::from_static(b"v1"),
            PutMode::Create.into(),
        )
        .await
        .unwrap();
    let again = store
        .put_opts(
            &state,
            PutPayload::from_static(b"v1'"),
            PutMode::Create.into(),
        )
        .await;
    assert!(
        matches!(again, Err(Error::AlreadyExists { .. })),
        "{again:?}"
    );

    let read_version = UpdateVersion::from(created.clone());
    let updated = store
        .put_opts(
            &state,
            PutPayload::from_static(b"v2"),
            PutMode::Update(read_version.clone()).into(),
        )
        .await
        .unwrap();
    assert_ne!(updated.e_tag, created.e_tag);

    // The second writer still holds the version it read: it loses.
    let stale = store
        .put_opts(
            &state,
            PutPayload::from_static(b"v2'"),
            PutMode::Update(read_version).into(),
        )
        .await;
    assert!(
        matches!(stale, Err(Error::Precondition { .. })),
        "{stale:?}"
    );
    let current = store.get(&state).await.unwrap().bytes().await.unwrap();
    assert_eq!(current.as_ref(), b"v2");

    let missing = store
        .put_opts(
            &Path::from("run/no-such-object"),
            PutPayload::from_static(b"x"),
            PutMode::Update(UpdateVersion::from(updated)).into(),
        )
        .await;
    assert!(
        matches!(missing, Err(Error::Precondition { .. })),
        "{missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_ignoring_preconditions_is_detected_by_a_probe() {
    let (store, proxy) = bucket_behind_proxy("no-conditional", 3);
    proxy.strip_request_header("If-Match");
    proxy.strip_request_header("If-None-Match");
    let probe = Path::from("run/.conditional-write-probe");
    store
        .put_opts(
            &probe,
            PutPayload::from_static(b"1"),
            PutMode::Create.into(),
        )
        .await
        .unwrap();

    // Both would fail on a server that honours the headers (test above).
    store
        .put_opts(
            &probe,
            PutPayload::from_static(b"2"),
            PutMode::Create.into(),
        )
        .await
        .expect("Create over an existing object succeeds without If-None-Match");
    let stale = UpdateVersion {
        e_tag: Some("\"00000000000000000000000000000000\"".into()),
        version: None,
    };
    store
        .put_opts(
            &probe,
            PutPayload::from_static(b"3"),
            PutMode::Update(stale).into(),
        )
        .await
        .expect("Update with a stale ETag succeeds without If-Match");
    let current = store.get(&probe).await.unwrap().bytes().await.unwrap();
    assert_eq!(current.as_ref(), b"3");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_put_cut_mid_body_is_retried() {
    let (store, proxy) = bucket_behind_proxy("cut-put", 3);
    let location = Path::from("run/ckpt-1/a.bin");
    let data = pattern(200_000, 3);
    proxy.drop_next_request_body_after(50_000);
    store.put(&location, data.clone().into()).await.unwrap();

    assert_eq!(proxy.connections_dropped(), 1);
    let puts = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("PUT "))
        .count();
    assert_eq!(puts, 2, "{:?}", proxy.requests());
    let got = store.get(&location).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), &data[..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conditional_put_cut_mid_body_is_retried_too() {
    let (store, proxy) = bucket_behind_proxy("cut-conditional", 3);
    let location = Path::from("run/checkpoint");
    let data = pattern(1000, 4);
    proxy.drop_next_request_body_after(10);
    store
        .put_opts(&location, data.clone().into(), PutMode::Create.into())
        .await
        .expect("a connection closed mid-body is retried, idempotent or not");

    assert_eq!(proxy.connections_dropped(), 1);
    let puts = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("PUT "))
        .count();
    assert_eq!(puts, 2, "{:?}", proxy.requests());
    let got = store.get(&location).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), &data[..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_part_cut_mid_body_is_retried() {
    let (store, proxy) = bucket_behind_proxy("cut-part", 3);
    let location = Path::from("run/ckpt-1/tensors.bin");
    let data = pattern(PART + 1000, 5);
    let mut upload = store.put_multipart(&location).await.unwrap();
    proxy.drop_next_request_body_after(MIB);
    let first = upload.put_part(data[..PART].to_vec().into());
    let last = upload.put_part(data[PART..].to_vec().into());
    futures::try_join!(first, last).unwrap();
    upload.complete().await.unwrap();

    assert_eq!(proxy.connections_dropped(), 1);
    let got = store.get(&location).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), &data[..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_put_cut_on_every_attempt_fails_after_the_retries() {
    let (store, proxy) = bucket_behind_proxy("cut-always", 2);
    let location = Path::from("run/ckpt-1/a.bin");
    let data = pattern(100_000, 6);
    proxy.drop_request_bodies_after(1000, usize::MAX);
    let result = store.put(&location, data.into()).await;
    let error = result.expect_err("every attempt was cut");
    assert!(
        matches!(error, Error::Generic { store: "S3", .. }),
        "{error:?}"
    );
    // The first attempt and two retries.
    assert_eq!(proxy.connections_dropped(), 3);
    assert!(matches!(
        store.head(&location).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_get_cut_mid_body_resumes() {
    let (store, proxy) = bucket_behind_proxy("cut-get", 3);
    let location = Path::from("run/ckpt-1/a.bin");
    let data = pattern(3 * MIB, 7);
    store.put(&location, data.clone().into()).await.unwrap();
    proxy.drop_next_response_body_after(MIB);
    let got = store.get(&location).await.unwrap().bytes().await.unwrap();

    assert_eq!(proxy.connections_dropped(), 1);
    assert_eq!(got.as_ref(), &data[..]);
    let gets = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET "))
        .count();
    assert_eq!(gets, 2, "{:?}", proxy.requests());
}

/// Keeps the store type used by the lead's code in view: it is shared
/// across threads behind an `Arc<dyn ObjectStore>`.
#[test]
fn the_store_is_a_shareable_object_store() {
    let store: Arc<dyn ObjectStore> = Arc::new(store("http://127.0.0.1:1", "b", quick_retries(0)));
    assert!(store.to_string().contains("AmazonS3"));
}
