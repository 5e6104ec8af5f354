//! The S3 lifecycle rule of deploy/s3-lifecycle.json, checked as
//! configuration against what the service writes and its default times
//! (moto, the tests' S3, never acts on lifecycle rules, and the server's
//! own expiry does not depend on S3 acting: GET answers 404 from the
//! manifest, and the sweeper deletes).
//!
//! docs/operations.md "Media" says how to apply it (with a key prefix,
//! each rule's prefix gets it in front).

use std::time::Duration;

use parley_media::MediaConfig;
use serde_json::Value;

const DAY: u64 = 24 * 3600;

fn rules() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/s3-lifecycle.json");
    let text = std::fs::read_to_string(path).expect("deploy/s3-lifecycle.json");
    let doc: Value = serde_json::from_str(&text).expect("the rule is JSON");
    doc["Rules"].as_array().expect("Rules").clone()
}

fn rule<'a>(rules: &'a [Value], key: &str) -> &'a Value {
    rules
        .iter()
        .find(|r| r.get(key).is_some())
        .unwrap_or_else(|| panic!("a rule with {key}"))
}

/// S3 counts whole days from an object's creation, rounded up to the next
/// midnight UTC; a completed multipart object was created when its upload
/// began. So the rule must wait out the upload's time and the media's
/// time, and a day of rounding, before deleting anything a GET may still
/// answer.
#[test]
fn the_rule_deletes_nothing_the_server_still_serves() {
    let config = MediaConfig::default();
    let rules = rules();
    for rule in &rules {
        assert_eq!(rule["Status"], "Enabled", "{rule}");
    }
    let days = |d: Duration| d.as_secs().div_ceil(DAY);
    let media = rules
        .iter()
        .find(|r| r["Filter"]["Prefix"] == "media/" && r.get("Expiration").is_some())
        .expect("a rule expiring media/");
    let media_days = media["Expiration"]["Days"].as_u64().expect("days");
    assert!(
        media_days > days(config.upload_ttl) + days(config.media_ttl),
        "media/ expires after {media_days} days: sooner than an upload's {:?} plus the media's {:?} plus a day",
        config.upload_ttl,
        config.media_ttl
    );
    let uploads = rules
        .iter()
        .find(|r| r["Filter"]["Prefix"] == "uploads/")
        .expect("a rule expiring uploads/");
    let upload_days = uploads["Expiration"]["Days"].as_u64().expect("days");
    assert!(
        upload_days > days(config.upload_ttl),
        "uploads/ after {upload_days} days"
    );
    // Unfinished multipart uploads write to media/<id>: their parts are
    // not objects, so only this rule removes the ones nobody aborted.
    let abort = rule(&rules, "AbortIncompleteMultipartUpload");
    assert_eq!(abort["Filter"]["Prefix"], "media/");
    let abort_days = abort["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
        .as_u64()
        .expect("days");
    assert!(
        abort_days > days(config.upload_ttl),
        "aborts after {abort_days} days"
    );
}
