#!/usr/bin/env bash
# Seeds every fuzz target's corpus with the scenarios of scenarios/ (the
# targets read .irq text as a scenario, other bytes through the generator).
set -euo pipefail
cd "$(dirname "$0")"
for target in parse model diff_sim diff_kvm; do
    mkdir -p "corpus/$target"
    find ../scenarios -name '*.irq' -exec cp {} "corpus/$target/" \;
done
echo "seeded $(ls corpus/parse | wc -l) scenarios into fuzz/corpus/{parse,model,diff_sim,diff_kvm}"
