#!/bin/bash -eu
# ClusterFuzzLite build (the Rust way it documents: `cargo fuzz build -O`,
# then the binaries into $OUT). Shipped: the targets whose every crash is a
# bug of irqdiff (parse: the parser and printer; model: the model's
# invariants). Built but not shipped: diff_kvm (the runners have no
# /dev/kvm) and diff_sim (sim:hvf-known diverges from the model by design,
# so it would "crash" on every pull request); run those with
# `cargo +nightly fuzz run TARGET`.
cd "$SRC/irqdiff"
cargo fuzz build -O
FUZZ_TARGET_OUTPUT_DIR=fuzz/target/x86_64-unknown-linux-gnu/release
for target in parse model; do
    cp "$FUZZ_TARGET_OUTPUT_DIR/$target" "$OUT/"
    # The committed scenarios as the seed corpus: `.irq` text runs as
    # written (see fuzz/seed-corpus.sh for the local equivalent).
    (cd scenarios && find . -name '*.irq' | zip -q -@ "$OUT/${target}_seed_corpus.zip")
done
