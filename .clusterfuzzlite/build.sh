#!/bin/bash -eu
# ClusterFuzzLite build (the Rust way it documents: `cargo fuzz build -O`,
# then the binaries into $OUT). Only the targets that need no VM: the
# runners have no /dev/kvm, so diff_kvm is built but not shipped (run it
# with `cargo +nightly fuzz run diff_kvm` on a machine with KVM).
cd "$SRC/irqdiff"
cargo fuzz build -O
FUZZ_TARGET_OUTPUT_DIR=fuzz/target/x86_64-unknown-linux-gnu/release
for target in parse model diff_sim; do
    cp "$FUZZ_TARGET_OUTPUT_DIR/$target" "$OUT/"
    # The committed scenarios as the seed corpus: `.irq` text runs as
    # written (see fuzz/seed-corpus.sh for the local equivalent).
    (cd scenarios && find . -name '*.irq' | zip -q -@ "$OUT/${target}_seed_corpus.zip")
done
