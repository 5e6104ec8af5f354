//! The media service on S3: the conformance cases of common/media.rs
//! (which tests/media.rs runs on the local store) against a bucket on
//! moto's S3-compatible server, multipart uploads and ranged GETs
//! included. moto never acts on lifecycle rules; expiry here is the
//! server's own (GET checks the manifest, the sweeper deletes), which
//! must not depend on S3 acting either.
//!
//! Ignored (and reported so) unless `PARLEY_TEST_MOTO` was set when they
//! were built; under `CI=true` sms_sns.rs's `moto_configured_in_ci` fails
//! when it is missing.

mod common;
#[path = "common/media.rs"]
mod media;
#[path = "common/moto.rs"]
mod moto;

use media::Backend;

macro_rules! on_s3 {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            #[cfg_attr(
                not(parley_moto),
                ignore = "set PARLEY_TEST_MOTO (e.g. moto_server) to run against moto"
            )]
            async fn $case() {
                let moto = moto::Moto::start().await;
                moto.create_bucket("parley-media").await;
                let backend = Backend::S3 {
                    url: moto.url.clone(),
                    bucket: "parley-media".to_owned(),
                };
                media::$case(&backend).await;
            }
        )*
    };
}

on_s3!(
    tus_upload_and_ranged_download,
    one_request_upload,
    over_the_limit_is_refused_and_leaves_nothing,
    unauthenticated_requests_are_refused,
    deleted_media_and_strangers_uploads_are_not_found,
    quotas_answer_429,
    tus_refusals_keep_the_upload_intact,
    upload_resumes_after_a_restart,
    a_cut_off_body_keeps_what_arrived,
    expired_media_and_uploads_are_swept,
    concurrent_uploads_are_bounded,
);

#[tokio::test]
#[cfg_attr(
    not(parley_moto),
    ignore = "set PARLEY_TEST_MOTO (e.g. moto_server) to run against moto"
)]
async fn a_store_that_goes_away_answers_503() {
    let mut moto = moto::Moto::start().await;
    moto.create_bucket("parley-media").await;
    let backend = Backend::S3 {
        url: moto.url.clone(),
        bucket: "parley-media".to_owned(),
    };
    media::a_store_that_goes_away_answers_503(&backend, || moto.stop()).await;
}
