"""Qwen2's byte-level BPE tokenizer on tiktoken, and OSUM's label-text normalisation.

Qwen2 ships its tokenizer as Hugging Face files (`vocab.json` + `merges.txt`, or `tokenizer.json`); Qwen1 shipped the
very same 151,643-token vocabulary as a tiktoken rank file (`qwen.tiktoken`). We convert either form once into a
rank table and let tiktoken do the work: NFC, then Qwen2's pre-tokenizer regex, then BPE over UTF-8 bytes.

Why the regular vocabulary ids are the tiktoken ranks: Qwen's vocabulary was built by byte-level BPE, so ids 0..255
are the 256 single bytes and merge number i (0-based, in `merges.txt` order) created token id 256 + i. A lower id
is therefore an earlier, higher-priority merge, which is exactly what tiktoken's rank means ("merge the adjacent
pair whose joined bytes have the lowest rank"). `ranks_from_vocab_merges` checks this for every merge and refuses a
vocabulary that breaks it, because for such a vocabulary tiktoken would silently give different ids.

Our rank file (`tokenizer.tiktoken`, written by `Tokenizer.save` and by convert.py next to the weights) is a plain
text file, one entry per line:
    <base64 token bytes> <rank>                 the regular vocabulary, exactly qwen.tiktoken's format
    <base64 UTF-8 text> <id> special|added      added tokens (`special` ones are dropped by decode(skip_special))
A file without added-token lines (such as qwen.tiktoken) gets Qwen2's three special tokens after the last rank.
"""

import base64
import codecs
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path

import tiktoken

from ..files import MAX_CONFIG_BYTES, FileError, read_bytes, read_json, read_text

# Qwen2's pre-tokenizer (tokenizer.json's Split regex; also PAT_STR of Qwen1's tiktoken tokenizer).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# ids 151643, 151644, 151645
QWEN2_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
)
EOD_TOKEN = "<|endoftext|>"
EOD_ID = 151643  # its id: OSUM appends it to every label, fills padded prompt slots with it, stops decoding on it
RANK_FILE_NAME = "tokenizer.tiktoken"


class TokenizerError(ValueError):
    """A tokenizer file or directory is missing, corrupt, or not a Qwen2 byte-level BPE tokenizer."""


@dataclass(frozen=True)
class AddedToken:
    text: str
    id: int
    # special tokens are control tokens: dropped by decode(skip_special=True)
    special: bool


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte (vocab.json/merges.txt spell tokens with them), inverted."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    stand_ins = {byte: byte for byte in printable}
    for byte in range(256):
        if byte not in stand_ins:
            stand_ins[byte] = 256 + len(stand_ins) - len(printable)
    return {chr(char): byte for byte, char in stand_ins.items()}


def ranks_from_vocab_merges(
    vocab: dict[str, int], merges: list[tuple[str, str]], source: str
) -> dict[bytes, int]:
    """Regular vocabulary (GPT-2 byte spelling -> id) to tiktoken ranks, checking that ids follow merge order."""
    if not isinstance(vocab, dict):
        raise TokenizerError(f"{source}: vocabulary is not a token -> id mapping")
    byte_of = _gpt2_byte_decoder()
    try:
        ranks = {
            bytes(byte_of[char] for char in token): token_id
            for token, token_id in vocab.items()
        }
    except KeyError as err:
        raise TokenizerError(
            f"{source}: token spelled with {err.args[0]!r}; not a byte-level BPE vocabulary"
        ) from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(
            f"{source}: vocabulary ids are not the contiguous range 0..{len(ranks) - 1}"
        )
    if len(ranks) != 256 + len(merges):
        raise TokenizerError(
            f"{source}: {len(ranks)} tokens but {len(merges)} merges (byte-level BPE has 256 more)"
        )
    if sorted(len(token) for token, rank in ranks.items() if rank < 256) != [1] * 256:
        raise TokenizerError(f"{source}: ids 0..255 are not the 256 single bytes")
    for index, (left, right) in enumerate(merges):
        if vocab.get(left + right) != 256 + index:
            raise TokenizerError(
                f"{source}: merge {index} ({left!r} {right!r}) does not create id {256 + index}; "
                "ids must follow merge order for tiktoken ranks to equal them"
            )
    return ranks


def _read_json(path: Path) -> dict:
    try:
        return read_json(path, "tokenizer file")
    except FileError as err:
        raise TokenizerError(str(err)) from None


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """merges.txt, one `left right` pair a line; LF or CRLF line endings, optional `#version` header."""
    try:
        lines = read_text(path, "merges file", MAX_CONFIG_BYTES).splitlines()
    except FileError as err:
        raise TokenizerError(str(err)) from None
    merges = []
    for number, line in enumerate(lines, start=1):
        if not line or (number == 1 and line.startswith("#version")):
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise TokenizerError(
                f"{path}:{number}: expected `left right`, got {line!r}"
            )
        merges.append((pair[0], pair[1]))
    return merges


def _added_tokens(entries, source: str) -> list[AddedToken]:
    """tokenizer.json's `added_tokens` list or tokenizer_config.json's `added_tokens_decoder` dict."""
    try:
        if isinstance(entries, dict):
            return [
                AddedToken(
                    entry["content"], int(token_id), bool(entry.get("special", False))
                )
                for token_id, entry in entries.items()
            ]
        return [
            AddedToken(
                entry["content"], int(entry["id"]), bool(entry.get("special", False))
            )
            for entry in entries
        ]
    except (KeyError, TypeError, ValueError) as err:
        raise TokenizerError(f"{source}: malformed added-token entry ({err})") from None


def _check_qwen2_pipeline(data: dict, path: Path) -> None:
    """Refuse a tokenizer.json whose normaliser, pre-tokenizer or model our tiktoken pipeline would not reproduce."""
    model = data.get("model")
    if not isinstance(model, dict) or "vocab" not in model or "merges" not in model:
        raise TokenizerError(f"{path}: not a tokenizer.json (no model vocab/merges)")
    pre = data.get("pre_tokenizer") or {}
    splits = [
        step for step in pre.get("pretokenizers", []) if step.get("type") == "Split"
    ]
    problems = []
    if (data.get("normalizer") or {}).get("type") != "NFC":
        problems.append("normalizer is not NFC")
    if len(splits) != 1 or splits[0].get("pattern", {}).get("Regex") != QWEN2_PATTERN:
        problems.append("pre-tokenizer regex is not Qwen2's")
    if (
        model.get("type") != "BPE"
        or model.get("byte_fallback")
        or model.get("ignore_merges")
        or model.get("dropout")
    ):
        problems.append("model is not plain BPE (byte_fallback/ignore_merges/dropout)")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        problems.append("model uses subword prefixes/suffixes")
    if problems:
        raise TokenizerError(
            f"{path}: not a Qwen2 byte-level BPE tokenizer: {'; '.join(problems)}"
        )


def read_rank_file(path: Path) -> tuple[dict[bytes, int], list[AddedToken] | None]:
    """Our `tokenizer.tiktoken` or Qwen's `qwen.tiktoken` (see the module docstring for the format)."""
    ranks, added = {}, []
    try:
        lines = read_bytes(path, "rank file", MAX_CONFIG_BYTES).splitlines()
    except FileError as err:
        raise TokenizerError(str(err)) from None
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        try:
            if len(fields) == 2:
                ranks[base64.b64decode(fields[0], validate=True)] = int(fields[1])
            elif len(fields) == 3 and fields[2] in (b"special", b"added"):
                text = base64.b64decode(fields[0], validate=True).decode("utf-8")
                added.append(AddedToken(text, int(fields[1]), fields[2] == b"special"))
            elif fields:
                raise ValueError("wrong number of fields")
        # binascii.Error and UnicodeDecodeError are ValueErrors too
        except ValueError as err:
            raise TokenizerError(
                f"{path}:{number}: not a rank-file line ({err}): {line[:60]!r}"
            ) from None
    if len(ranks) < 256 or sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(
            f"{path}: ranks are not a contiguous range 0..n-1 over at least the 256 single bytes"
        )
    if sorted(len(token) for token, rank in ranks.items() if rank < 256) != [1] * 256:
        raise TokenizerError(f"{path}: ranks 0..255 are not the 256 single bytes")
    return ranks, added or None


class StreamDecoder:
    """Turns ids into text one at a time, holding back the bytes of a UTF-8 character split across tokens."""

    def __init__(self, tokenizer: "Tokenizer", skip_special: bool = True):
        self.tokenizer, self.skip_special = tokenizer, skip_special
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Text completed by this token ('' while a character is still incomplete)."""
        return self.utf8.decode(
            self.tokenizer.decode_bytes(
                [token_id], self.skip_special, placeholders=True
            )
        )

    def finish(self) -> str:
        """Flush what is left at the end of the stream (an incomplete character becomes U+FFFD)."""
        return self.utf8.decode(b"", final=True)


class Tokenizer:
    """Qwen2 tokenizer: `encode(text) -> ids`, `decode(ids) -> text`, identical to Hugging Face's Qwen2Tokenizer."""

    def __init__(self, ranks: dict[bytes, int], added: list[AddedToken] | None = None):
        if added is None:
            added = [
                AddedToken(text, len(ranks) + offset, True)
                for offset, text in enumerate(QWEN2_SPECIAL_TOKENS)
            ]
        clashes = [token for token in added if token.id < len(ranks)]
        if clashes:
            raise TokenizerError(
                f"added token {clashes[0].text!r} reuses regular id {clashes[0].id}"
            )
        if EOD_TOKEN not in {token.text for token in added}:
            raise TokenizerError(
                f"no {EOD_TOKEN} among the added tokens; OSUM needs it as end of document"
            )
        self.ranks = ranks
        self.added = sorted(added, key=lambda token: token.id)
        self.added_ids = {token.text: token.id for token in self.added}
        self.special_ids = frozenset(token.id for token in self.added if token.special)
        self.encoding = tiktoken.Encoding(
            "qwen2",
            pat_str=QWEN2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=self.added_ids,
        )
        # regular + added ids
        self.vocab_size = max([len(ranks), *(token.id + 1 for token in self.added)])

    @classmethod
    def from_pretrained(cls, path) -> "Tokenizer":
        """A directory (our rank file, tokenizer.json, vocab.json + merges.txt, or qwen.tiktoken, in that order of
        preference) or a single file (a `.json` tokenizer.json, otherwise a rank file)."""
        path = Path(path)
        if path.is_file():
            return (
                cls.from_tokenizer_json(path)
                if path.suffix == ".json"
                else cls(*read_rank_file(path))
            )
        if not path.is_dir():
            raise TokenizerError(f"{path}: no such tokenizer file or directory")
        if (path / RANK_FILE_NAME).is_file():
            return cls(*read_rank_file(path / RANK_FILE_NAME))
        config = path / "tokenizer_config.json"
        config_added = (
            _added_tokens(
                _read_json(config).get("added_tokens_decoder", {}), str(config)
            )
            if config.is_file()
            else []
        )
        if (path / "tokenizer.json").is_file():
            return cls.from_tokenizer_json(path / "tokenizer.json", config_added)
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            vocab, merges = (
                _read_json(path / "vocab.json"),
                _read_merges(path / "merges.txt"),
            )
            return cls(
                ranks_from_vocab_merges(vocab, merges, str(path / "vocab.json")),
                config_added or None,
            )
        if (path / "qwen.tiktoken").is_file():
            return cls(*read_rank_file(path / "qwen.tiktoken"))
        raise TokenizerError(
            f"{path}: no tokenizer found (looked for {RANK_FILE_NAME}, tokenizer.json, "
            "vocab.json + merges.txt, qwen.tiktoken)"
        )

    @classmethod
    def from_tokenizer_json(
        cls, path: Path, extra_added: list[AddedToken] = ()
    ) -> "Tokenizer":
        data = _read_json(path)
        _check_qwen2_pipeline(data, path)
        merges = [
            tuple(pair) if isinstance(pair, list) else tuple(pair.split(" "))
            for pair in data["model"]["merges"]
        ]
        ranks = ranks_from_vocab_merges(data["model"]["vocab"], merges, str(path))
        added = {token.id: token for token in extra_added}
        added.update(
            (token.id, token)
            for token in _added_tokens(data.get("added_tokens", []), str(path))
        )
        return cls(ranks, list(added.values()) or None)

    def save(self, path) -> Path:
        """Write our rank file (to `path/tokenizer.tiktoken` when `path` is a directory); returns the file written."""
        path = Path(path)
        path = path / RANK_FILE_NAME if path.is_dir() else path
        by_rank = sorted(self.ranks.items(), key=lambda item: item[1])
        lines = [base64.b64encode(token) + b" %d" % rank for token, rank in by_rank]
        lines += [
            base64.b64encode(token.text.encode("utf-8"))
            + b" %d " % token.id
            + (b"special" if token.special else b"added")
            for token in self.added
        ]
        path.write_bytes(b"\n".join(lines) + b"\n")
        return path

    @property
    def eod_id(self) -> int:
        """End of document (`<|endoftext|>`, 151643): OSUM appends it to every label and stops generation on it."""
        return self.added_ids[EOD_TOKEN]

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """NFC, then BPE. Special/added-token text is plain text unless `allow_special` (then all added tokens match,
        as in Hugging Face's tokenizers)."""
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        if allow_special:
            return self.encoding.encode(
                text, allowed_special=set(self.added_ids), disallowed_special=()
            )
        return self.encoding.encode_ordinary(text)

    def unknown_ids(self, ids) -> list[int]:
        """The ids this tokenizer has no text for (a model's vocabulary is often larger: 152064 vs 151646 for
        Qwen2-7B, so a model can generate one)."""
        added_ids = set(self.added_ids.values())
        return [
            int(i)
            for i in ids
            if not 0 <= int(i) < len(self.ranks) and int(i) not in added_ids
        ]

    def decode_bytes(
        self, ids, skip_special: bool = True, placeholders: bool = False
    ) -> bytes:
        """Ids to bytes. An id outside this vocabulary raises TokenizerError, or with `placeholders` becomes the text
        `<|id:N|>`, so the output shows where the model said something the tokenizer cannot spell."""
        ids = [int(token_id) for token_id in ids]
        unknown = self.unknown_ids(ids)
        if unknown and not placeholders:
            raise TokenizerError(
                f"token id {unknown[0]} is outside this vocabulary ({len(self)} ids)"
            )
        if skip_special:
            ids = [token_id for token_id in ids if token_id not in self.special_ids]
        if not unknown:
            return self.encoding.decode_bytes(ids)
        warnings.warn(
            f"token id {unknown[0]} is outside this tokenizer's vocabulary ({len(self)} ids): decoded as "
            f"<|id:{unknown[0]}|>",
            stacklevel=2,
        )
        unknown, pieces, run = set(unknown), [], []
        # runs of known ids decode together, so multi-token characters stay whole
        for token_id in ids + [None]:
            if token_id is None or token_id in unknown:
                pieces.append(self.encoding.decode_bytes(run))
                pieces.append(
                    b"" if token_id is None else f"<|id:{token_id}|>".encode()
                )
                run = []
            else:
                run.append(token_id)
        return b"".join(pieces)

    def decode(self, ids, skip_special: bool = True, placeholders: bool = False) -> str:
        """Ids to text; a UTF-8 character cut by the ends of `ids` becomes U+FFFD (stream with `stream_decoder`)."""
        return self.decode_bytes(ids, skip_special, placeholders).decode(
            "utf-8", errors="replace"
        )

    def stream_decoder(self, skip_special: bool = True) -> StreamDecoder:
        return StreamDecoder(self, skip_special)


# ---- OSUM's label text normalisation (wenet/dataset/processor.py), applied before tokenising training labels ----

_SPACES_AROUND_HANZI = re.compile(r"\s*([\u4e00-\u9fff])\s*")
_SPACES_AROUND_OPEN = re.compile(r"\s*<\s*")
_SPACES_AROUND_CLOSE = re.compile(r"\s*>\s*")


def tokenizer_or_none(directory) -> Tokenizer | None:
    """The tokenizer saved beside converted weights, or None for a model without one (prompt and output as ids)."""
    try:
        return Tokenizer.from_pretrained(directory)
    except TokenizerError:
        return None


def check_fits(tokenizer: Tokenizer, vocab_size: int, name) -> None:
    """A tokenizer with ids past the model's vocabulary would index outside its embeddings: one line, both sizes."""
    if len(tokenizer) > vocab_size:
        raise TokenizerError(
            f"{name}: the tokenizer has {len(tokenizer)} ids, the model's vocabulary {vocab_size}; "
            "use the tokenizer the model was trained with"
        )


def eod_outside_vocabulary(eod_id: int, vocab_size: int, name) -> str | None:
    """Why a model whose end-of-document id it can never produce is unusable with text, or None when it fits."""
    if 0 <= eod_id < vocab_size:
        return None
    return (
        f"{name}: the model's eod_id {eod_id} lies outside its vocabulary of {vocab_size} ids, so decoding never "
        "stops before the token limit and fine-tuning cannot use it as a label"
    )


def process_text(text: str) -> str:
    """OSUM's `process_text`: drop spaces around CJK ideographs (U+4E00..U+9FFF only), lower-case everything, drop
    spaces around `<` and `>`. The order matters and is the original's."""
    text = _SPACES_AROUND_HANZI.sub(r"\1", text)
    text = text.lower()
    text = _SPACES_AROUND_OPEN.sub("<", text)
    return _SPACES_AROUND_CLOSE.sub(">", text)


# OSUM's `global_style_dict`: raw style names in the corpora -> the 8 style classes the model is taught.
STYLE_CLASSES = {
    "朗读": "新闻科普",
    "科普百科": "新闻科普",
    "悬疑恐怖": "恐怖故事",
    "童话故事": "童话故事",
    "客服": "客服",
    "诗歌": "诗歌散文",
    "散文": "诗歌散文",
    "武侠评书": "有声书",
    "小说": "有声书",
    "历史": "有声书",
    "科幻": "有声书",
    "对话": "日常口语",
    "口语": "日常口语",
    "幽默": "其他",
    "其他": "其他",
}
_STYLE_TAG = re.compile("<(" + "|".join(map(re.escape, STYLE_CLASSES)) + ")>")


def map_style_tags(text: str) -> str:
    """Replace each `<raw style>` tag by `<class>`, as OSUM's `replace_keys_in_brackets(text, global_style_dict)`.
    One pass equals the original's key-by-key passes because no class name is another key's raw name."""
    return _STYLE_TAG.sub(lambda match: f"<{STYLE_CLASSES[match.group(1)]}>", text)
