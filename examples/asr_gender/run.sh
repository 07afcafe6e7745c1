#!/bin/sh
# ASR + gender on a synthetic espeak-ng corpus, from scratch on the CPU: corpus, training, scores, learning curve.
# Usage: sh examples/asr_gender/run.sh [DATA_DIR] [RUN_DIR] [STEPS]
set -e
DATA=${1:-data/asr_gender}
RUN=${2:-runs/asr_gender}
STEPS=${3:-800}
python examples/asr_gender/make_corpus.py --out "$DATA" --utterances 3000
python train.py --train-data "$DATA/train.jsonl" --dev-data "$DATA/dev.jsonl" --preset tiny --fire-module all \
    --out "$RUN" --max-steps "$STEPS" --lr 2e-3 --warmup-steps 100 --accum-grad 1 --batch-frames 4000 \
    --num-workers 1 --log-every 10 --save-every 200 --eval-every 400 --eval-batches 10
python examples/asr_gender/evaluate.py --run "$RUN" --data "$DATA"
