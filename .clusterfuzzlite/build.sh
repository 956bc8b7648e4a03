#!/bin/bash -eu
# ClusterFuzzLite build: the model-only targets (the runners have no /dev/kvm;
# run diff_kvm with `cargo fuzz` on a machine that has one).
cd "$SRC/irqdiff"
cargo fuzz build -O
for target in parse model diff_sim; do
    cp "fuzz/target/x86_64-unknown-linux-gnu/release/$target" "$OUT/"
    (cd scenarios && find . -name '*.irq' | zip -q -@ "$OUT/${target}_seed_corpus.zip")
done
