#!/usr/bin/env bash
# Train the bundled demo model from scratch and measure it: the whole recipe of docs/demo-model.md.
#   bash scripts/train_demo_model.sh [RUN_DIR]        (default runs/demo; about 4.5 hours on 2 CPU cores)
# Resumable: a stage whose final/ exists is skipped; rerun after a stop to go on (stages 3-6 checkpoint every
# 500 steps and `pixtral train --resume` picks it up). Needs the package installed in .venv (README).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN=${1:-runs/demo}
BIN=${BIN:-$ROOT/.venv/bin}
export OMP_WAIT_POLICY=PASSIVE  # no busy-waiting OpenMP threads between the small ops of a tiny model
mkdir -p "$RUN"
cp examples/demo-model/stage*.toml "$RUN/"
cd "$RUN"

synth() {  # synth FOLDER ARGS...: skip when already written
  local out=$1; shift
  [ -e "$out/train.jsonl" ] || [ -e "$out/test.parquet" ] || "$BIN/pixtral" synth --out "$out" --max-side 192 --no-progress "$@"
}
synth colour --split train --n 3000 --tasks big_shape_colour
synth warmup --split train --n 12000 --tasks warmup
synth coarse --split train --n 30000 --tasks coarse
synth coarse2 --split train --start 30000 --n 40000 --tasks coarse   # stage 5's fresh data: the next samples
synth warmup2 --split train --start 12000 --n 16000 --tasks warmup
synth coarse3 --split train --start 70000 --n 40000 --tasks coarse   # stage 6's fresh data
synth warmup3 --split train --start 28000 --n 16000 --tasks warmup
synth kind3 --split train --start 100000 --n 8000 --tasks big_shape_kind
synth test-coarse --split test --n 200 --tasks coarse --format parquet
synth test-warmup --split test --n 150 --tasks warmup --format parquet
[ -e mixed.jsonl ] || "$BIN/python" -m pixtral.demo.recipe mix --out mixed.jsonl coarse/train.jsonl warmup/train.jsonl
[ -e mixed2.jsonl ] || "$BIN/python" -m pixtral.demo.recipe mix --out mixed2.jsonl coarse2/train.jsonl warmup2/train.jsonl
[ -e mixed3.jsonl ] || "$BIN/python" -m pixtral.demo.recipe mix --out mixed3.jsonl --seed 3 \
  coarse3/train.jsonl warmup3/train.jsonl kind3/train.jsonl
[ -e init/params.json ] || "$BIN/python" -m pixtral.demo.recipe init --out init

for stage in stage1-colour stage2-warmup stage3-mixed stage4-mixed stage5-grown stage6-fresh; do
  out=${stage%%-*}
  [ -e "$out/final/params.json" ] && continue
  if [ "$out" = stage5 ] && [ ! -e grown/params.json ]; then  # 2 more vision blocks, 1 more decoder block
    "$BIN/python" -m pixtral.demo.recipe grow stage4/final --out grown --vision-layers 2 --text-layers 1
  fi
  resume=()
  [ -d "$out/checkpoints" ] && resume=(--resume)
  "$BIN/pixtral" train --config "$stage.toml" "${resume[@]}"
done

# end to end through HTTP: pixtral serve + pixtral eval (the figures of the README's table)
PORT=${PORT:-8765}
"$BIN/pixtral" serve --model stage6/final --port "$PORT" --threads 2 > serve.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null && break; sleep 1; done
for set in coarse warmup; do
  "$BIN/pixtral" eval run --task synthetic --endpoint "http://127.0.0.1:$PORT/v1" --data-dir "test-$set" \
    --split test --output-dir "eval-$set" --no-progress
done
echo "trained model: $RUN/stage6/final (copy it to src/pixtral/assets/default-model to bundle it)"
