#!/usr/bin/env bash
# Run the side-by-side Hugging Face benchmarks (generation, encoder, beam search, long-sequence
# attention) against two attnlab source trees, one after the other on the same machine, so a
# refactor's effect on the attnlab / HF ratios can be read off: compare_trees.sh OLD_ROOT NEW_ROOT OUT_DIR.
# Each benchmark script runs from its own tree and interleaves attnlab with HF in one process.
set -euo pipefail
old="$1" new="$2" out="$3"
mkdir -p "$out"
export OMP_NUM_THREADS=1 ATTNLAB_DATA="${ATTNLAB_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}"
python="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
run() {  # run NAME ARGS...: the benchmark NAME in both trees, old first
  local name="$1"; shift
  for side in old new; do
    local root; root="$([ "$side" = old ] && echo "$old" || echo "$new")"
    echo "== $name ($side: $(git -C "$root" rev-parse --short HEAD), $(date -u +%H:%M))" | tee -a "$out/$name.txt"
    (cd "$root" && PYTHONPATH=src "$python" "benchmarks/$name.py" "$@") 2>&1 | tee -a "$out/$name.txt"
  done
}
run bench_gpt_generate --new-tokens 256 --rounds 5 --uncached-rounds 1
run bench_encoder --rounds 7
run seq2seq_beam_speed --repeats 11
run bench_long_attention --interleaved --sizes 4096,8192 --repeats 5 --out "$out/long_attention"
