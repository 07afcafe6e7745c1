"""Qwen2-Audio's scoring protocol: its text clean-up and per-language normalisers, BLEU and label accuracy.

The rules are those of QwenLM/Qwen2-Audio at 595360e82b5839c1507492ec83cae5bda6d5c7d4, `eval_audio/`:
`evaluate_asr.py` (`remove_sp`, `compute_wer`), `evaluate_tokenizer.py`, `cn_tn.py`, `whisper_normalizer/`,
`evaluate_st.py` (BLEU), `evaluate_emotion.py` and `evaluate_vocal_sound.py` (exact match). English goes through
Whisper's EnglishTextNormalizer and then its BasicTextNormalizer (compute_wer's `if en` is followed by an `if zh ...
else basic`), Mandarin through cn_tn's TextNorm, Cantonese through zhconv to simplified and then the basic one, any
other language through the basic one; Mandarin and Cantonese are then counted per character.

Whisper's normalisers come from openai-whisper (the same code as Qwen2-Audio's copy), zhconv and sacrebleu from
PyPI (the `[eval]` extra). cn_tn's TextNorm is on no package index, so the part Qwen2-Audio's settings use is
written here: `normalize_nsw` (dates, money, phone numbers, fractions, percentages and numbers into Chinese words)
and punctuation to spaces.
"""

import functools
import re
import string
import unicodedata

QWEN_PUNCS = "!,.?;:"  # remove_sp glues these to the word before them
CN_PUNCS = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃《》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿"
    "–—‘’‛“”„‟…‧﹏·〈〉-"
)
_PUNCS_TO_SPACE = str.maketrans(
    CN_PUNCS + string.punctuation, " " * len(CN_PUNCS + string.punctuation)
)
_DIGITS = "零一二三四五六七八九"
# cn_tn's units, largest first: the four small ones, then the 'mid' numbering system (亿 = 10^8, 兆 = 10^12, ...).
_UNITS = [((k + 2) * 4, unit) for k, unit in enumerate("亿兆京垓秭穰沟涧正载")][
    ::-1
] + [
    (4, "万"),
    (3, "千"),
    (2, "百"),
    (1, "十"),
]
_UNIT_NAMES = dict(_UNITS)
_CURRENCY_UNITS = "((亿|千万|百万|万|千|百)|(亿|千万|百万|万|千|百|)元|(亿|千万|百万|万|千|百|)块|角|毛|分)"
_QUANTIFIERS = (
    "(匹|张|座|回|场|尾|条|个|首|阙|阵|网|炮|顶|丘|棵|只|支|袭|辆|挑|担|颗|壳|窠|曲|墙|群|腔|砣|座|客|贯|扎|捆|"
    "刀|令|打|手|罗|坡|山|岭|江|溪|钟|队|单|双|对|出|口|头|脚|板|跳|枝|件|贴|针|线|管|名|位|身|堂|课|本|页|"
    "家|户|层|丝|毫|厘|分|钱|两|斤|担|铢|石|钧|锱|忽|(千|毫|微)克|毫|厘|分|寸|尺|丈|里|寻|常|铺|程|"
    "(千|分|厘|毫|微)米|撮|勺|合|升|斗|石|盘|碗|碟|叠|桶|笼|盆|盒|杯|钟|斛|锅|簋|篮|盘|桶|罐|瓶|壶|卮|盏|"
    "箩|箱|煲|啖|袋|钵|年|月|日|季|刻|时|周|天|秒|分|旬|纪|岁|世|更|夜|春|夏|秋|冬|代|伏|辈|丸|泡|粒|颗|"
    "幢|堆|条|根|支|道|面|片|张|颗|块)"
)
_NUMBER = r"(\d+(\.\d+)?)"


def _number_symbols(digits: str) -> list:
    """cn_tn's get_value: a digit string as digits (ints) and units (('u', power)), zeros kept where skipped."""
    stripped = digits.lstrip("0")
    if not stripped:
        return []
    if len(stripped) == 1:
        return [0, int(stripped)] if len(digits) != len(stripped) else [int(stripped)]
    power = next(power for power, _ in _UNITS if power < len(stripped))
    return (
        _number_symbols(digits[:-power])
        + [("u", power)]
        + _number_symbols(stripped[-power:])
    )


def num2chn(number: str, alt_two: bool = True, use_units: bool = True) -> str:
    """cn_tn's num2chn in simplified characters: `1205.5` -> 一千二百零五点五, `2万` style 两 where it applies."""
    whole, _, decimals = number.partition(".")
    if "." in decimals:
        raise ValueError(f"invalid number with more than one dot: {number}")
    symbols = (
        _number_symbols(whole)
        if use_units and len(whole) > 1
        else [int(c) for c in whole]
    )
    if decimals:
        symbols += ["点"] + [int(c) for c in decimals]
    words = []
    for k, symbol in enumerate(symbols):
        after, before = (
            symbols[k + 1] if k + 1 < len(symbols) else None,
            symbols[k - 1] if k else None,
        )
        if isinstance(symbol, tuple):
            words.append(_UNIT_NAMES[symbol[1]])
        elif symbol == "点":
            words.append(symbol)
        elif (
            alt_two
            and symbol == 2
            and isinstance(after, tuple)
            and after[1] != 1
            and (before is None or isinstance(before, tuple) and before[1] != 1)
        ):
            words.append("两")
        else:
            words.append(_DIGITS[symbol])
    text = "".join(words)
    if text.startswith("点"):
        return "零" + text
    return text[1:] if text[:2] == "一十" else text


def _date(date: str) -> str:
    try:
        year, rest = date.strip().split("年", 1)
        year = num2chn(year, alt_two=False, use_units=False) + "年"
    except ValueError:
        year, rest = "", date
    if not rest:
        return year
    try:
        month, day = rest.strip().split("月", 1)
        month = num2chn(month) + "月"
    except ValueError:
        month, day = "", date
    return year + month + (num2chn(day[:-1]) + day[-1] if day else "")


def _phone(number: str, fixed: bool) -> str:
    parts = number.split("-") if fixed else number.strip("+").split()
    return "".join(num2chn(part, alt_two=False, use_units=False) for part in parts)


def _money(money: str) -> str:
    for found in re.findall(_NUMBER, money):
        money = money.replace(found[0], num2chn(found[0]))
    return money


def _fraction(fraction: str) -> str:
    numerator, denominator = fraction.split("/")
    return num2chn(denominator) + "分之" + num2chn(numerator)


# normalize_nsw's rewrites in its order: each match found first, then each replaced at its first occurrence.
_REWRITES = [
    (r"\D+((([089]\d|(19|20)\d{2})年)?(\d{1,2}月(\d{1,2}[日号])?)?)", _date),
    (
        r"\D+((\d+(\.\d+)?)[多余几]?"
        + _CURRENCY_UNITS
        + r"(\d"
        + _CURRENCY_UNITS
        + r"?)?)",
        _money,
    ),
    (
        r"\D((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})\D",
        lambda s: _phone(s, fixed=False),
    ),
    (
        r"\D((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})\D",
        lambda s: _phone(s, fixed=True),
    ),
    (r"(\d+/\d+)", _fraction),
    (r"(\d+(\.\d+)?%)", lambda s: "百分之" + num2chn(s.strip().strip("%"))),
    (_NUMBER + "[多余几]?" + _QUANTIFIERS, num2chn),
    (r"(\d{4,32})", lambda s: num2chn(s, alt_two=False, use_units=False)),
    (_NUMBER, num2chn),
]
_REWRITES = [(re.compile(pattern), convert) for pattern, convert in _REWRITES]
# P2P, B2B... back from P二P
_LETTERS_TWO_LETTERS = re.compile(r"(([a-zA-Z]+)二([a-zA-Z]+))")


def normalize_nsw(text: str) -> str:
    """cn_tn's normalize_nsw: non-standard words (numbers, dates, money, phones) written out in Chinese."""
    text = "^" + text + "$"
    for index, (pattern, convert) in enumerate(_REWRITES):
        if index == 5:
            text = text.replace("％", "%")
        for found in pattern.findall(text):
            found = found if isinstance(found, str) else found[0]
            text = text.replace(found, convert(found), 1)
    for whole, left, right in _LETTERS_TWO_LETTERS.findall(text):
        text = text.replace(whole, left + "2" + right, 1)
    return text.lstrip("^").rstrip("$")


def text_norm(text: str) -> str:
    """cn_tn's TextNorm as evaluate_asr.py builds it (every option off): normalize_nsw, punctuation to spaces."""
    return normalize_nsw(text).translate(_PUNCS_TO_SPACE)


def remove_sp(text: str, language: str) -> str:
    """evaluate_asr.py's remove_sp: special tokens out, spaces squeezed, none before `!,.?;:`; Mandarin none at all."""
    text = re.sub(r"<\|.*?\|>", " ", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(f" ?([{QWEN_PUNCS}])", r"\1", text).lstrip(" ")
    return re.sub(r"\s+", "", text) if language == "zh" else text


@functools.cache
def _whisper_normalizers():
    from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

    return EnglishTextNormalizer(), BasicTextNormalizer()


def normalise(text: str, language: str) -> str:
    english, basic = _whisper_normalizers()
    if language == "yue":
        import zhconv

        text = zhconv.convert(text, "zh-cn")
    if language == "en":
        text = english(text)
    return text_norm(text) if language == "zh" else basic(text)


def units(text: str, language: str) -> list[str]:
    """The items compute_wer counts: evaluate_tokenizer's punctuation-only tokens dropped, lower-cased, split on
    spaces; Mandarin and Cantonese one character each."""
    text = " ".join(
        t
        for t in normalise(remove_sp(text, language), language).split(" ")
        if not all(unicodedata.category(c)[0] == "P" for c in t)
    )
    items = text.lower().split()
    return list("".join(items)) if language in ("zh", "yue") else items


def qwen2_audio_units(
    refs: list[str], hyps: list[str], language: str
) -> tuple[list[list[str]], list[list[str]]]:
    return [units(text, language) for text in refs], [
        units(text, language) for text in hyps
    ]


def bleu(
    refs: list[str], hyps: list[str], language: str | None, tokenize: str | None
) -> dict:
    """evaluate_st.py: sacrebleu's corpus BLEU, tokenised `zh` for a Chinese target and `13a` otherwise."""
    import sacrebleu

    tokenize = tokenize or ("zh" if language == "zh" else "13a")
    return {
        "value": sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize).score,
        "tokenize": tokenize,
        "utterances": len(refs),
    }


def exact_match_accuracy(refs: dict[str, str], hyps: dict[str, str]) -> dict:
    """evaluate_emotion.py / evaluate_vocal_sound.py: the left-stripped answer equals the label exactly; over the
    reference's keys, a missing answer is wrong."""
    correct = sum(hyps.get(key, "").lstrip() == label for key, label in refs.items())
    return {
        "value": 100.0 * correct / len(refs) if refs else 0.0,
        "correct": correct,
        "total": len(refs),
    }
