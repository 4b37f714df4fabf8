//! The kept corpus (`corpus/`, the seeds) and the inputs that once found a fault
//! (`regressions/`), run through every target on a stable toolchain: what the fuzzers check,
//! checked by `cargo test` without libFuzzer.

use std::path::{Path, PathBuf};

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(kind)
        .join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

#[test]
fn every_kept_input_passes_its_target() {
    let mut ran = 0;
    for (target, run) in onehop_fuzz::TARGETS {
        for kind in ["corpus", "regressions"] {
            for file in files(&dir(kind, target)) {
                let data = std::fs::read(&file).unwrap();
                if let Err(e) = std::panic::catch_unwind(|| run(&data)) {
                    let why = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    panic!("{target}: {} fails: {why}", file.display());
                }
                ran += 1;
            }
        }
    }
    println!("replayed {ran} inputs");
    assert!(ran >= onehop_fuzz::seeds::all().len());
}

/// `corpus/` holds the seeds of `src/seeds.rs`, byte for byte (`ONEHOP_WRITE_SEEDS=1` writes
/// them).
#[test]
fn the_corpus_holds_the_seeds() {
    let write = std::env::var_os("ONEHOP_WRITE_SEEDS").is_some();
    for (target, name, bytes) in onehop_fuzz::seeds::all() {
        let path = dir("corpus", target).join(&name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let held = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (ONEHOP_WRITE_SEEDS=1 writes it)", path.display()));
        assert!(
            held == bytes,
            "{} differs from src/seeds.rs",
            path.display()
        );
    }
    for (target, _) in onehop_fuzz::TARGETS {
        assert!(
            !files(&dir("corpus", target)).is_empty(),
            "{target} has no seed"
        );
    }
}
