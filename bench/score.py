"""Scoring speed: `eval.py score`'s engine (osum protocol, compute-wer.py --char=1 rules) on generated sentence pairs.

Half English (8-20 words), half Mandarin (10-30 characters, with numbers and punctuation), each hypothesis with about
10% substituted, deleted and inserted units and some case changes. The whole set goes through `score_texts`; a
subsample goes through the cell-by-cell pure-Python alignment (tests/test_scoring.py's `reference_alignment`, which is
compute-wer.py's recurrence) to give the ratio, and their counts on that subsample must agree.

    python bench/score.py [--pairs 100000] [--reference-pairs 2000] [--seed 0]
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from osum_min.eval.scoring import osum_tokens, score_texts  # noqa: E402
from test_scoring import reference_alignment  # noqa: E402

WORDS = (
    "the of and to in is was he for it with as his on be at by had are but from or have an they which one you "
    "were her all she there would their we him been has when who will more no if out so said what up its about "
    "into than them can only other new some could time these two may then do first any my now such like our "
    "over man me even most made after also did many before must through back years where much your way well "
    "down should because each just those people mister how too little state good very make world still own see "
    "men work long get here between both life being under never day same another know while last might us "
    "great old year off come since against go came right used take three"
).split()
HANZI = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严"


def sentence_pair(rng: random.Random) -> tuple[str, str]:
    english = rng.random() < 0.5
    units = (
        [rng.choice(WORDS) for _ in range(rng.randint(8, 20))]
        if english
        else [rng.choice(HANZI) for _ in range(rng.randint(10, 30))]
    )
    if not english and rng.random() < 0.3:
        units.insert(rng.randrange(len(units)), str(rng.randint(1, 2024)))
    hypothesis = []
    for unit in units:
        roll = rng.random()
        if roll < 0.04:
            hypothesis.append(rng.choice(WORDS) if english else rng.choice(HANZI))
        elif roll >= 0.07:
            hypothesis.append(unit.upper() if english and roll > 0.97 else unit)
        if rng.random() < 0.03:
            hypothesis.append(rng.choice(WORDS) if english else rng.choice(HANZI))
    join = " ".join if english else "".join
    return join(units) + ("." if english else "。"), join(hypothesis)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--reference-pairs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    pairs = [sentence_pair(rng) for _ in range(args.pairs)]
    refs = {f"utt{k:07d}": ref for k, (ref, _) in enumerate(pairs)}
    hyps = {f"utt{k:07d}": hyp for k, (_, hyp) in enumerate(pairs)}
    # builds the Unicode token pattern once, as any run does (not scoring work)
    osum_tokens("warm-up 表")
    start = time.perf_counter()
    result = score_texts(refs, hyps, "osum", "wer")
    engine_s = time.perf_counter() - start

    subsample = list(refs)[: args.reference_pairs]
    start = time.perf_counter()
    counts = {"C": 0, "S": 0, "D": 0, "I": 0}
    for key in subsample:
        for how, _ in reference_alignment(
            osum_tokens(refs[key]), osum_tokens(hyps[key])
        ):
            counts[how] += 1
    reference_s = time.perf_counter() - start
    check = score_texts(
        {k: refs[k] for k in subsample}, {k: hyps[k] for k in subsample}, "osum", "wer"
    )
    agree = all(check[how] == counts[how] for how in counts)
    reference_full_s = reference_s * args.pairs / len(subsample)
    print(
        f"engine: {args.pairs} pairs ({result['N']} reference units) in {engine_s:.2f} s, WER {result['value']:.2f}%"
    )
    print(
        f"pure-Python alignment: {len(subsample)} pairs in {reference_s:.2f} s -> {reference_full_s:.1f} s for "
        f"{args.pairs} ({reference_full_s / engine_s:.1f}x slower); counts agree: {agree}"
    )
    print(
        json.dumps(
            {
                "pairs": args.pairs,
                "engine_s": round(engine_s, 3),
                "under_10_s": engine_s < 10,
                "reference_s_extrapolated": round(reference_full_s, 2),
                "speedup": round(reference_full_s / engine_s, 2),
                "counts_agree": agree,
            }
        )
    )
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
