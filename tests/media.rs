//! The media service on the local store (the default): the conformance
//! cases of common/media.rs, which tests/media_s3.rs runs on S3.

mod common;
#[path = "common/media.rs"]
mod media;
// common/media.rs reads moto's S3 listing with its plain HTTP client.
#[path = "common/moto.rs"]
mod moto;

use media::Backend;

macro_rules! on_local_store {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                media::$case(&Backend::Local).await;
            }
        )*
    };
}

on_local_store!(
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
