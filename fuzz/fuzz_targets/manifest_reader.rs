//! Fuzzes `Manifest::from_json` (the `<prefix>.ckpt-manifest.json` integrity manifest reader).
//!
//! Properties: reading never panics; whatever reads, written with `to_json` and read again,
//! gives back an equal manifest, and writing that again gives the same bytes.
#![no_main]

use ckpt_manager::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = Manifest::from_json(data) else {
        return;
    };
    let json = manifest.to_json();
    let again = match Manifest::from_json(&json) {
        Ok(again) => again,
        Err(err) => panic!(
            "to_json output does not read back: {err}\nmanifest: {manifest:?}\njson: {}",
            String::from_utf8_lossy(&json)
        ),
    };
    assert_eq!(
        manifest,
        again,
        "round trip changed the manifest\njson: {}",
        String::from_utf8_lossy(&json)
    );
    assert_eq!(json, again.to_json(), "to_json is not stable");
});
