"""OSUM's tasks: one table (`TASKS` by name, `TASKS_BY_TAG` by tag) that training, infer.py, the server, the web
page and eval.py all read, holding `conf/prompt_config.yaml`'s prompts (`ORIGINAL_TASKS`) and any new task
(`EXTRA_TASKS`), and one parser per output kind.

The model writes everything as text (`transcript<happy>`, `word<0.3, 0.7>`, `question<开始回答>reply`), so every task
is a tag, a prompt and a parser that turns that text into fields. Parsers never raise: whatever does not fit the
expected form stays in the text and is named in `issues`.
"""

import re
from collections import Counter
from dataclasses import asdict, dataclass, field

# Label sets from the prompts (docs/original.md §8); labels are lower-cased by the original's `process_text`.
LABEL_SETS = {
    "emotion": (
        "sad",
        "anger",
        "neutral",
        "happy",
        "surprise",
        "fear",
        "disgust",
        "other",
    ),
    "event": (
        "laugh",
        "cough",
        "cry",
        "screaming",
        "sigh",
        "throat clearing",
        "sneeze",
        "other",
    ),
    "style": (
        "新闻科普",
        "恐怖故事",
        "童话故事",
        "客服",
        "诗歌散文",
        "有声书",
        "日常口语",
        "其他",
    ),
    "gender": ("female", "male"),
    "age": ("child", "adult", "old"),
}


@dataclass(frozen=True)
class Task:
    """One task: its name (what front ends take), its tag (what training data carries), the prompt
    sent at inference, training's paraphrases, the label kinds it appends and the parser of its output."""

    name: str
    tag: str
    prompt: str | None  # None: the first paraphrase
    # kinds of LABEL_SETS, in the order the output appends them
    labels: tuple[str, ...] = ()
    # False for the label-only tasks (`age+gender`, `style+age+gender`)
    transcript: bool = True
    output: str = "text"  # a PARSERS key: "text" transcript then label tags; "srwt" timed words; "sttc" + reply
    # training draws one per sample; (): the prompt alone
    paraphrases: tuple[str, ...] = ()

    def __post_init__(self):
        if self.prompt is None:
            object.__setattr__(self, "prompt", self.paraphrases[0])
        if not self.paraphrases:
            object.__setattr__(self, "paraphrases", (self.prompt,))


# The original's tasks: each tag's five paraphrases verbatim from prompt_config.yaml. Single tasks send the fixed
# prompts of the original's gradio demo (docs/original.md §8); combined tags have none there, so they send their
# first paraphrase.
ORIGINAL_TASKS = (
    Task(
        "asr",
        "<TRANSCRIBE>",
        "执行语音识别任务，将音频转换为文字。",
        paraphrases=(
            "转录如下音频。",
            "转录这段音频中的语音内容为文字。",
            "将音频的语音部分转换为文字形式，谢谢。",
            "将这段音频的语音内容详细记录为文字稿。",
            "执行语音识别任务，将音频转换为文字。",
        ),
    ),
    Task(
        "srwt",
        "<TRANSCRIBE> <ALIGN>",
        "请转录音频内容，并为每个英文词汇及其对应的中文翻译标注出精确到0.1秒的起止时间，时间范围用<>括起来。",
        output="srwt",
        paraphrases=(
            "请将以下音频进行转录，同时标记出每个英文单词及对应中文字符的起始与结束时间，时间单位精确到0.1秒，并用<>来表示这些时间范围。",
            "转录音频内容，并为每个英文词汇及其对应的中文翻译标注出精确到0.1秒的起止时间，时间范围用<>括起来。",
            "将音频转录为文字，同时在每个英文单词和相应中文字符的前后添加时间戳，时间戳格式为<>，且时间单位需精确到0.1秒。",
            "请将音频转化为文字记录，并标记每个英文词及其对应中文的起始时间和结束时间，时间单位至少为0.1秒，使用<>来标注这些时间。",
            "将音频内容进行转录处理，并为其中的每个英文单词及其翻译后的中文标注时间范围，时间精确到0.1秒，并用<>进行包围。",
        ),
    ),
    Task(
        "ved",
        "<TRANSCRIBE> <CAPTION>",
        "请将音频转录为文字记录，并在记录末尾标注<音频事件>标签，音频事件共8种：laugh，cough，cry，screaming，sigh，throat clearing，sneeze，other。",
        ("event",),
        paraphrases=(
            "请将以下音频进行转录，并在结尾处给出<音频事件>标签，音频事件分为8类：laugh，cough，cry，screaming，sigh，throat clearing，sneeze，other。",
            "将音频内容转录成文字，并在文本最后附上<音频事件>标签，标签类型包括：laugh，cough，cry，screaming，sigh，throat clearing，sneeze以及other。",
            "请将音频转录为文字记录，并在记录末尾标注<音频事件>标签，音频事件共8种：laugh，cough，cry，screaming，sigh，throat clearing，sneeze，other。",
            "将音频内容进行文字化处理，并在处理后的文本末尾添加<音频事件>标签，标签种类有8种：laugh，cough，cry，screaming，sigh，throat clearing，sneeze，other。",
            "请将音频转录成文，并在文末给出<音频事件>标签，音频事件分为八大类：laugh，cough，cry，screaming，sigh，throat clearing，sneeze以及其他情况other。",
        ),
    ),
    Task(
        "ser",
        "<TRANSCRIBE> <EMOTION>",
        "请将音频内容转录成文字记录，并在记录末尾标注<情感>标签，情感共8种：sad，anger，neutral，happy，surprise，fear，disgust，和other。",
        ("emotion",),
        paraphrases=(
            "请将以下音频内容进行转录，并在结尾处给出<情感>标签，情感共分为8类：sad，anger，neutral，happy，surprise，fear，disgust，以及other。",
            "将音频转录为文字，并在文本最后附加<情感>标签，标签类型涵盖：sad，anger，neutral，happy，surprise，fear，disgust，还有other。",
            "请将音频内容转录成文字记录，并在记录末尾标注<情感>标签，情感共8种：sad，anger，neutral，happy，surprise，fear，disgust，和other。",
            "将音频进行文字化处理，并在处理后的文本末尾添加<情感>标签，标签种类有8种：sad，anger，neutral，happy，surprise，fear，disgust，以及其他情况other。",
            "请将音频转录成文，并在文末给出<情感>标签，情感分为八大类：sad，anger，neutral，happy，surprise，fear，disgust，以及不属于上述类别的other。",
        ),
    ),
    Task(
        "ssr",
        "<TRANSCRIBE> <STYLE>",
        "请将音频内容进行文字转录，并在最后添加<风格>标签，标签共8种：新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他。",
        ("style",),
        paraphrases=(
            "请将以下音频内容进行转录，并在结尾处给出<风格>标签，风格共分为8类：新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他。",
            "将音频转录为文字，并在文本末尾附加<风格>标签，标签种类包括：新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他。",
            "将音频内容进行文字转录，并在最后添加<风格>标签，标签共8种：新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他。",
            "将音频转录为文字记录，并在记录末尾附上<风格>标签，风格共8类，分别是：新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他。",
            "将音频内容转录成文，并在文末标注<风格>标签，风格分类有8种，即：新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他。",
        ),
    ),
    Task(
        "sgc",
        "<TRANSCRIBE> <GENDER>",
        "请将音频转录为文本，并在文本结尾处标注<性别>标签，性别为female或male。",
        ("gender",),
        paraphrases=(
            "请将这段音频进行转录，并在文本末尾附加<性别>标签。性别分为两种：female，male。",
            "请将音频内容转录成文字，并在最后加上<性别>标签，标明是female还是male。",
            "请将音频转录为文本，并在文本结尾处标注<性别>标签，性别为female或male。",
            "请将音频进行文字转录，并在转录文本的末尾附上<性别>标签，标签内容为female或male。",
            "请将音频内容转换为文字，并在文字末尾添加<性别>标签，以指示是female还是male。",
        ),
    ),
    Task(
        "sap",
        "<TRANSCRIBE> <AGE>",
        "请将音频转录为文本，并在文本结尾处标注<年龄>标签，年龄划分为child、adult和old三种。",
        ("age",),
        paraphrases=(
            "将这段音频进行转录，并在转录完成的文本末尾附加<年龄>标签。年龄类别分为三种：child、adult、old。",
            "请将以下音频内容转录成文字，并在文字的最后加上<年龄>标签，标明是child、adult还是old。",
            "将音频转录为文本，并在文本结尾处标注<年龄>标签，年龄划分为child、adult和old三种。",
            "请将音频进行详细的文字转录，并在转录文本的末尾附上<年龄>标签，标签内容为child、adult或old。",
            "将音频内容转换成文字形式，并在转换后的文字末尾添加<年龄>标签，用以指示是child、adult还是old的年龄阶段。",
        ),
    ),
    Task(
        "sttc",
        "<TRANSCRIBE> <S2TCHAT>",
        "首先将语音转录为文字，然后对语音内容进行回复，转录和文字之间使用<开始回答>分割。",
        output="sttc",
        paraphrases=(
            "首先将语音转录为文字，然后对语音内容进行回复，转录和文字之间使用<开始回答>分割。",
            "首先将语音转换为文本，接着使用<开始回答>作为分隔，最后对语音内容进行回复。",
            "首先把语音变成文本，然后用<开始回答>作分隔，最后对语音内容予以回应。",
            "首先将语音转化为书面语，随后以<开始回答>作分隔，最后对语音内容做出答复。",
            "首先将语音转为文字形式，之后用<开始回答>来分隔，最后对语音内容给予回应。",
        ),
    ),
    Task(
        "asr+age+gender",
        "<TRANSCRIBE> <AGE> <GENDER>",
        None,
        ("age", "gender"),
        paraphrases=(
            '请将这段音频进行转录，并在转录完成的文本末尾附加"<年龄> <性别>"标签。年龄分为child、adult、old三种，性别为female或male。',
            '请将以下音频内容转录成文字，并在文字的最后加上"<年龄> <性别>"标签，标明是child、adult或old，以及female或male。',
            '请将音频转录为文本，并在文本结尾处标注"<年龄> <性别>"标签，年龄划分为child、adult和old，性别分为female和male。',
            '请将音频进行详细的文字转录，并在转录文本的末尾附上"<年龄> <性别>"标签，标签内容为child、adult或old，以及female或male的性别标识。',
            '请将音频内容转换成文字形式，并在转换后的文字末尾添加"<年龄> <性别>"标签，用以指示说话者的年龄阶段（child、adult、old）以及性别（female、male）。',
        ),
    ),
    Task(
        "age+gender",
        "<AGE> <GENDER>",
        None,
        ("age", "gender"),
        transcript=False,
        paraphrases=(
            "请识别以下音频发言者的年龄和性别。年龄分为child、adult、old三种，性别为MALE和FEMALE。",
            "请识别以下音频中的说话者的年龄和性别。年龄分为child、adult、old三种，性别为MALE和FEMALE。",
            "请判断下列音频中的发言者的年龄与性别。年龄层次为child、adult、old，性别为MALE和FEMALE。",
            "请确定以下音频中讲话人的年龄和性别。年龄可分为child、adult、old三个阶段，性别为MALE和FEMALE。",
            "请分析下列音频中的说话人的年龄和性别。年龄划分为child、adult、old三类，性别为MALE和FEMALE。",
        ),
    ),
    Task(
        "asr+style+age+gender",
        "<TRANSCRIBE> <STYLE> <AGE> <GENDER>",
        None,
        ("style", "age", "gender"),
        paraphrases=(
            "请将以下音频内容进行转录，并在转录完成的文本末尾分别附加<风格>、<年龄>、<性别>标签。风格共分为8类：新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他。年龄分为child、adult、old三种，性别为MALE和FEMALE。",
            "请将下列音频内容进行转录，并在转录文本的末尾分别添加<风格>、<年龄>、<性别>标签。风格有8类：新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他。年龄划分为child、adult、old三种，性别分为MALE和FEMALE。",
            "请转录以下音频内容，并在转录后的文本末尾标注<风格>、<年龄>、<性别>标签。风格包括新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他8种类型。年龄分为child、adult、old，性别则为MALE和FEMALE。",
            "请将以下音频内容转录，并在转录完成后，附加<风格>、<年龄>、<性别>三个标签。风格一共有8种，包括新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他。年龄层次分为child、adult、old，性别为MALE和FEMALE。",
            "请对以下音频内容进行转录，并在文本结尾分别添加<风格>、<年龄>、<性别>标签。风格有8种类型：新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他。年龄划分为child、adult、old三个阶段，性别则为MALE和FEMALE。",
        ),
    ),
    Task(
        "style+age+gender",
        "<STYLE> <AGE> <GENDER>",
        None,
        ("style", "age", "gender"),
        transcript=False,
        paraphrases=(
            "请识别如下音频的说话风格、说话者的年龄和性别。其中风格有8种类型：新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他。年龄划分为child、adult、old三个阶段，性别则为MALE和FEMALE。",
            "请分析以下音频的说话风格、说话者的年龄和性别。风格包括8种类型：新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他。年龄划分为child、adult、old三个层次，性别为MALE和FEMALE。",
            "请识别下面音频的说话风格、说话者的年龄和性别。风格分为8种类型：新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他。年龄段分为child、adult、old三类，性别为MALE和FEMALE。",
            "请对以下音频进行分析，识别说话风格、说话者年龄和性别。风格类型有8种，包括新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他。年龄阶段为child、adult、old三种，性别为MALE或FEMALE。",
            "请对下面音频内容识别说话风格、说话者的年龄和性别。风格包括8个类别：新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、日常口语、其他。年龄分为child、adult、old三个阶段，性别为MALE或FEMALE。",
        ),
    ),
)

# Tasks that are not the original's go here: a Task with a new name and tag, its paraphrases, label kinds of
# LABEL_SETS (add a kind there) and an output kind of PARSERS. Training then takes samples with its tag (train.py
# --prompts may replace its paraphrases, and refuses a tag that is in no task), and infer.py --task, the server, the
# web page and eval.py take its name.
EXTRA_TASKS: tuple[Task, ...] = ()


def _by(key: str, tasks) -> dict:
    """The tasks by name or by tag; two tasks with one name or one tag are a mistake in this file."""
    table = {getattr(task, key): task for task in tasks}
    if len(table) != len(tasks):
        raise ValueError(f"osum_min/text/tasks.py: two tasks share a {key}")
    return table


TASKS = _by("name", ORIGINAL_TASKS + EXTRA_TASKS)  # every front end's table
# training's: samples carry tags
TASKS_BY_TAG = _by("tag", ORIGINAL_TASKS + EXTRA_TASKS)


def free_prompt_task(prompt: str) -> Task:
    """`--prompt "..."`: whatever the prompt asks, the whole output is read as the transcript."""
    return Task("prompt", "", prompt)


@dataclass
class Word:
    text: str
    start: float | None  # seconds; None where the model wrote no time
    end: float | None


@dataclass
class Result:
    """Parsed output of one clip. `raw` is always kept; `issues` names everything that did not fit the format."""

    task: str
    raw: str
    transcript: str | None = None
    # kind -> label (as written when outside the label set)
    labels: dict[str, str] = field(default_factory=dict)
    # kinds whose label is not in LABEL_SETS
    unknown_labels: list[str] = field(default_factory=list)
    words: list[Word] | None = None  # SRWT
    reply: str | None = None  # STTC
    issues: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            key: value
            for key, value in asdict(self).items()
            if value not in (None, [], {})
        }

    def to_text(self) -> str:
        """The canonical written form (`transcript<label>`, `word<0.3, 0.7>`, `text<开始回答>reply`)."""
        if self.words is not None:
            body = " ".join(
                w.text
                + (
                    f"<{_seconds(w.start)}, {_seconds(w.end)}>"
                    if w.start is not None or w.end is not None
                    else ""
                )
                for w in self.words
            )
        else:
            body = self.transcript or ""
        if self.reply is not None:
            body += f"<开始回答>{self.reply}"
        return body + "".join(f"<{label}>" for label in self.labels.values())


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


CJK_CHARS = "\u2e80-\u9fff\uf900-\ufaff"  # CJK radicals, kana, ideographs and compatibility ideographs
_SPACE_AT_CJK = re.compile(
    rf"\s+(?=[{CJK_CHARS}\uff00-\uffef])|(?<=[{CJK_CHARS}\uff00-\uffef])\s+"
)


def join_text(parts: list[str]) -> str:
    """Join pieces with spaces, except next to CJK characters (as the original's `process_text` writes them)."""
    return _SPACE_AT_CJK.sub("", " ".join(p.strip() for p in parts if p and p.strip()))


_TRAILING_TAG = re.compile(r"\s*<([^<>]*)>\s*$")


def parse_labelled(task: Task, raw: str) -> Result:
    """`transcript<label>...`: peel off as many trailing tags as the task has label kinds."""
    result, text, tags = Result(task.name, raw), raw.strip(), []
    while len(tags) < len(task.labels) and (match := _TRAILING_TAG.search(text)):
        tags.insert(0, match.group(1))
        text = text[: match.start()]
    _assign_labels(result, tags, task.labels)
    if task.transcript:
        result.transcript = text.strip()
    elif text.strip():
        result.issues.append(f"text before the labels: {text.strip()!r}")
    return result


def _assign_labels(result: Result, tags: list[str], kinds: tuple[str, ...]) -> None:
    """A tag goes to the first open kind whose set holds it (so `<adult>` alone is still an age); tags that fit no
    set fill the remaining kinds in order, kept as written and flagged."""
    found, leftovers = {}, []
    for tag in tags:
        value = " ".join(tag.lower().split())
        kind = next(
            (k for k in kinds if k not in found and value in LABEL_SETS[k]), None
        )
        if kind:
            found[kind] = value
        else:
            leftovers.append(tag.strip())
    open_kinds = [k for k in kinds if k not in found]
    for kind, tag in zip(open_kinds, leftovers):
        found[kind] = tag
        result.unknown_labels.append(kind)
        result.issues.append(
            f"{kind} {tag!r} is not one of: {', '.join(LABEL_SETS[kind])}"
        )
    result.issues += [f"no {kind} label" for kind in open_kinds[len(leftovers) :]]
    result.labels = {kind: found[kind] for kind in kinds if kind in found}


_STTC_SEPARATOR = re.compile(r"<\s*开始回答\s*>")


def parse_chat(task: Task, raw: str) -> Result:
    """STTC: `transcript<开始回答>reply`."""
    parts = _STTC_SEPARATOR.split(raw, maxsplit=1)
    result = Result(task.name, raw, transcript=parts[0].strip())
    if len(parts) == 2:
        result.reply = parts[1].strip()
    else:
        result.issues.append(
            "no <开始回答> separator: the whole output is taken as the transcript"
        )
    return result


_TAG = re.compile(r"<([^<>]*)>")
_NUMBER = r"(\d+(?:\.\d+)?)\s*(?:s|秒)?"
_TIME_TAG = re.compile(
    rf"\s*{_NUMBER}\s*(?:[,，\-–~～]\s*(?:{_NUMBER})?)?\s*|\s*{_NUMBER}\s+{_NUMBER}\s*"
)


def _times(tag: str) -> tuple[float, ...] | None:
    """`0.3, 0.7` / `0.3,0.7` / `0.3-0.7` / `0.3 0.7` -> (0.3, 0.7); `0.3` or `0.3,` -> (0.3,); else None."""
    match = _TIME_TAG.fullmatch(tag)
    return tuple(float(n) for n in match.groups() if n is not None) if match else None


def parse_timed(task: Task, raw: str) -> Result:
    """SRWT. Likely form `word<start, end>` per word (docs/original.md §8); also boundary marks `<t0>word<t1>word<t2>`.
    Drifts are repaired where the meaning is clear: a missing end becomes the next word's start, text without
    times becomes an untimed word. Tags that are not times stay in the text."""
    pieces = _TAG.split(raw)  # text, tag, text, tag, ..., text
    spans = [_times(tag) for tag in pieces[1::2]]
    pairs = any(span is not None and len(span) == 2 for span in spans)
    result, words, text, mark = Result(task.name, raw), [], "", None
    for index, piece in enumerate(pieces):
        span = spans[index // 2] if index % 2 else None
        if index % 2 == 0 or span is None:
            text += piece if index % 2 == 0 else f"<{piece}>"
            continue
        if len(span) == 2:
            start, end = span
        elif pairs:
            # `word<0.3>` among pairs: an end time is missing
            start, end = (
                span[0],
                None,
            )
        else:
            # boundary marks: each ends one word and opens the next
            start, end, mark = (
                mark,
                span[0],
                span[0],
            )
        if text.strip():
            words.append(Word(text.strip(), start, end))
        elif pairs:
            result.issues.append(f"time <{piece}> without text")
        text = ""
    if text.strip():
        words.append(Word(text.strip(), None if pairs else mark, None))
    _repair_times(words, result.issues)
    result.words, result.transcript = words, join_text([w.text for w in words])
    return result


def _repair_times(words: list[Word], issues: list[str]) -> None:
    if words and all(w.start is None and w.end is None for w in words):
        issues.append("no timestamps in the output")
        return
    for word, following in zip(words, words[1:] + [None]):
        if word.end is None and following is not None and following.start is not None:
            word.end = following.start
            issues.append(f"{word.text!r}: no end time, took the next word's start")
        elif word.start is None or word.end is None:
            issues.append(
                f"{word.text!r}: no {'start' if word.start is None else 'end'} time"
            )
        if None not in (word.start, word.end) and word.end < word.start:
            issues.append(f"{word.text!r}: ends before it starts")
        if (
            following is not None
            and None not in (word.end, following.start)
            and following.start < word.end
        ):
            issues.append(f"{following.text!r} overlaps {word.text!r}")


PARSERS = {"text": parse_labelled, "srwt": parse_timed, "sttc": parse_chat}


def parse(task: Task, raw: str) -> Result:
    return PARSERS[task.output](task, raw)


def join_windows(task: Task, results: list[Result], offsets: list[float]) -> Result:
    """Long audio: concatenate the windows' texts, shift SRWT times by each window's start, and take each label
    kind's most frequent value (ties: the earliest window)."""
    if len(results) == 1:
        return results[0]
    joined = Result(task.name, join_text([r.raw for r in results]))
    if task.transcript:
        joined.transcript = join_text([r.transcript or "" for r in results])
    if task.output == "srwt":
        joined.words = [
            Word(
                w.text,
                None if w.start is None else round(w.start + offset, 3),
                None if w.end is None else round(w.end + offset, 3),
            )
            for r, offset in zip(results, offsets)
            for w in r.words or []
        ]
    if task.output == "sttc":
        joined.reply = join_text([r.reply or "" for r in results])
    for kind in task.labels:
        votes = Counter(r.labels[kind] for r in results if kind in r.labels)
        if votes:
            joined.labels[kind] = votes.most_common(1)[0][0]
            if joined.labels[kind] not in LABEL_SETS[kind]:
                joined.unknown_labels.append(kind)
    joined.issues = [
        f"window {i}: {issue}" for i, r in enumerate(results) for issue in r.issues
    ]
    return joined


def parse_windows(
    task: Task, tokenizer, ids: list[list[int]], offsets: list[float]
) -> Result:
    """Decode each window's ids, parse them for the task and join the windows. An id the tokenizer has no text for
    shows as `<|id:N|>` (Tokenizer.decode_bytes), with a note."""
    results = []
    for window_ids in ids:
        result = parse(task, tokenizer.decode(window_ids, placeholders=True))
        if tokenizer.unknown_ids(window_ids):
            result.issues.append(
                "ids outside the tokenizer's vocabulary, shown as <|id:N|>"
            )
        results.append(result)
    return join_windows(task, results, offsets)


def parse_prompt_ids(text: str) -> list[int]:
    """A prompt given as comma-separated token ids (debugging, models without a tokenizer)."""
    try:
        return [int(token) for token in text.replace(" ", "").split(",")]
    except ValueError:
        raise ValueError(
            f"prompt ids {text!r}: expected comma-separated integers"
        ) from None
