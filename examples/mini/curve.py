"""osum-mini's learning curve from train.py's log (examples/asr_gender/evaluate.py's plot).

python examples/mini/curve.py RUN_DIR     # -> RUN_DIR/learning_curve.png
"""

import importlib.util
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "asr_gender_evaluate",
    Path(__file__).resolve().parents[1] / "asr_gender" / "evaluate.py",
)
evaluate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(evaluate)

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    run = Path(sys.argv[1])
    title = "osum-mini: ASR + gender + SRWT, TTS voices"
    if not evaluate.plot(run / "train_log.jsonl", run / "learning_curve.png", title):
        sys.exit("matplotlib is not installed (pip install '.[plot]')")
    print(f"wrote {run / 'learning_curve.png'}")
