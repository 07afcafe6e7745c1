#!/bin/sh
# osum-mini on the CPU (docs/mini.md): a TTS corpus, the parts assembled from packages, the adaptor aligned
# to the LLM's tokens with CTC (align.py: common words whole, the rest letter by letter), then train.py with
# the Whisper base encoder and Qwen2.5-0.5B frozen (adaptor + LoRA + speech bos/eos trained), scores with
# eval.py, the learning curve, and the delta that weights/mini/ ships. Needs the [mini] and [mini-corpus]
# packages, espeak-ng and sox (flite and festival too, for their voices).
# Usage: sh examples/mini/run.sh [DATA_DIR] [RUN_DIR] [STEPS] [UTTERANCES] [ALIGN_STEPS]
set -e
DATA=${1:-data/mini}
RUN=${2:-runs/mini}
STEPS=${3:-360}
UTTERANCES=${4:-6000}
ALIGN_STEPS=${5:-1500}
python examples/mini/make_corpus.py --out "$DATA" --utterances "$UTTERANCES"
python convert.py --mini --no-delta --out "$RUN/init"
python examples/mini/align.py "$RUN/init" "$DATA/train_asr.jsonl" "$DATA/dev_asr.jsonl" "$RUN/aligned" \
    --steps "$ALIGN_STEPS" --cache "$RUN/encoded.pt"
# bf16 frozen weights and autocast: 1.7 samples/s here, against 1.25 in float32; a sort buffer of 32
# mixes the tasks in every stretch of steps (500 brought the SRWT clips in blocks)
python train.py --train-data "$DATA/train.jsonl" --dev-data "$DATA/dev.jsonl" --init "$RUN/aligned" \
    --fire-module link_and_lora --out "$RUN" --max-steps "$STEPS" --lr 2e-4 --warmup-steps 30 --accum-grad 1 \
    --no-augment --batch-frames 2000 --frozen-dtype bf16 --bf16 --num-workers 1 --log-every 10 --sort-buffer 32 \
    --save-every 180 --eval-every 180 --eval-batches 3 --max-bad-steps 5
python examples/mini/curve.py "$RUN"
python -m osum_min.convert.mini delta "$RUN/final" "$RUN/delta"
# every held-out line, scored per task (a --limit would keep the first task's lines only), greedy and batched
python eval.py run wenet "$DATA/test.jsonl" --weights "$RUN/final" --out "$RUN/eval" --beams 1 --batch-size 8
