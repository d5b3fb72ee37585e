//! Fuzzes `CheckpointState::parse` (the TF `checkpoint` state-file reader).
//!
//! Properties: parsing never panics; whatever parses, when written with `to_text` and parsed
//! again, gives back the same state, and writing that again gives the same bytes.
//! Doubles are compared by bit pattern, except that any NaN matches any NaN: the writer prints
//! every NaN as `nan` (as Python does), so the sign and payload of a NaN such as `-nan` are not
//! kept, by design.
#![no_main]

use ckpt_manager::state::CheckpointState;
use libfuzzer_sys::fuzz_target;

fn same_double(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

fn same_state(a: &CheckpointState, b: &CheckpointState) -> bool {
    a.model_checkpoint_path == b.model_checkpoint_path
        && a.all_model_checkpoint_paths == b.all_model_checkpoint_paths
        && a.all_model_checkpoint_timestamps.len() == b.all_model_checkpoint_timestamps.len()
        && a.all_model_checkpoint_timestamps
            .iter()
            .zip(&b.all_model_checkpoint_timestamps)
            .all(|(&x, &y)| same_double(x, y))
        && same_double(a.last_preserved_timestamp, b.last_preserved_timestamp)
}

fuzz_target!(|data: &[u8]| {
    let Ok(state) = CheckpointState::parse(data) else {
        return;
    };
    let text = state.to_text();
    let again = match CheckpointState::parse(&text) {
        Ok(again) => again,
        Err(err) => panic!(
            "to_text output does not parse: {err}\nstate: {state:?}\ntext: {:?}",
            String::from_utf8_lossy(&text)
        ),
    };
    assert!(
        same_state(&state, &again),
        "round trip changed the state\nbefore: {state:?}\nafter:  {again:?}\ntext: {:?}",
        String::from_utf8_lossy(&text)
    );
    let text_again = again.to_text();
    assert!(
        text == text_again,
        "to_text is not stable\nfirst:  {:?}\nsecond: {:?}",
        String::from_utf8_lossy(&text),
        String::from_utf8_lossy(&text_again)
    );
});
