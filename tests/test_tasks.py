"""The task table against the original's prompt_config.yaml, and the output parsers on hand-written outputs."""

from pathlib import Path

import pytest

from osum_min.text.tasks import (
    EXTRA_TASKS,
    LABEL_SETS,
    ORIGINAL_TASKS,
    PARSERS,
    TASKS,
    TASKS_BY_TAG,
    Result,
    Task,
    Word,
    free_prompt_task,
    join_windows,
    parse,
)

PROMPT_CONFIG = Path(__file__).parent / "fixtures" / "prompt_config.yaml"
# docs/original.md §8: the gradio demo's fixed prompts, our defaults for the single tasks.
FIXED_PROMPTS = {
    "asr": "执行语音识别任务，将音频转换为文字。",
    "srwt": "请转录音频内容，并为每个英文词汇及其对应的中文翻译标注出精确到0.1秒的起止时间，时间范围用<>括起来。",
    "ved": "请将音频转录为文字记录，并在记录末尾标注<音频事件>标签，音频事件共8种：laugh，cough，cry，screaming，sigh，"
    "throat clearing，sneeze，other。",
    "ser": "请将音频内容转录成文字记录，并在记录末尾标注<情感>标签，情感共8种：sad，anger，neutral，happy，surprise，fear，"
    "disgust，和other。",
    "ssr": "请将音频内容进行文字转录，并在最后添加<风格>标签，标签共8种：新闻科普、恐怖故事、童话故事、客服、诗歌散文、有声书、"
    "日常口语、其他。",
    "sgc": "请将音频转录为文本，并在文本结尾处标注<性别>标签，性别为female或male。",
    "sap": "请将音频转录为文本，并在文本结尾处标注<年龄>标签，年龄划分为child、adult和old三种。",
    "sttc": "首先将语音转录为文字，然后对语音内容进行回复，转录和文字之间使用<开始回答>分割。",
}


def test_the_originals_tasks_are_all_in_the_table():
    """Every tag of prompt_config.yaml is one of ORIGINAL_TASKS with its paraphrases verbatim, found by name and
    by tag; EXTRA_TASKS may add more."""
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load(PROMPT_CONFIG.read_text(encoding="utf-8"))
    assert {task.tag: task.paraphrases for task in ORIGINAL_TASKS} == {
        tag: tuple(prompts) for tag, prompts in config.items()
    }
    for task in ORIGINAL_TASKS:
        assert TASKS[task.name] is task and TASKS_BY_TAG[task.tag] is task


def test_default_prompts():
    assert set(FIXED_PROMPTS) <= set(TASKS)
    for task in ORIGINAL_TASKS:
        assert task.prompt == FIXED_PROMPTS.get(task.name, task.paraphrases[0]), (
            task.name
        )


def test_every_task_has_a_name_a_tag_label_sets_and_a_parser():
    """What front ends (by name) and training (by tag) need of a task, original or extra."""
    assert len(TASKS) == len(TASKS_BY_TAG) == len(ORIGINAL_TASKS) + len(EXTRA_TASKS)
    for task in TASKS.values():
        assert TASKS_BY_TAG[task.tag] is task and task.paraphrases and task.prompt
        assert set(task.labels) <= set(LABEL_SETS) and task.output in PARSERS, task.name


def test_a_task_added_to_the_table_reaches_training_and_infer(monkeypatch, capsys):
    """A new task in the table is a tag training takes (--prompts may give it other paraphrases) and a name infer.py
    lists; a tag of no task is refused, naming where tasks are added."""
    import infer
    from osum_min.config_check import ConfigError
    from osum_min.data.dataset import DataConfig

    with pytest.raises(ConfigError, match="'<LID>', no task's tag .*EXTRA_TASKS"):
        DataConfig(prompts={"<LID>": ("哪种语言？",)})
    lid = Task("lid", "<LID>", None, paraphrases=("这段音频是哪种语言？", "识别语种。"))
    monkeypatch.setitem(TASKS, lid.name, lid)
    monkeypatch.setitem(TASKS_BY_TAG, lid.tag, lid)
    assert DataConfig(prompts={"<LID>": ("哪种语言？",)}).prompts["<LID>"] == (
        "哪种语言？",
    )
    assert lid.prompt == "这段音频是哪种语言？"
    assert infer.main(["--list-tasks"]) == 0
    assert any(
        line.split()[:2] == ["lid", "<LID>"]
        for line in capsys.readouterr().out.splitlines()
    )
    with pytest.raises(ConfigError, match="not a list of prompt texts"):
        DataConfig(prompts={"<LID>": ("",)})


def test_label_kinds_follow_the_tag_order():
    assert TASKS["asr+style+age+gender"].labels == ("style", "age", "gender")
    assert (
        TASKS["age+gender"].labels == ("age", "gender")
        and not TASKS["age+gender"].transcript
    )
    assert TASKS["ser"].labels == ("emotion",) and TASKS["ved"].labels == ("event",)
    assert (
        len(LABEL_SETS["emotion"])
        == len(LABEL_SETS["event"])
        == len(LABEL_SETS["style"])
        == 8
    )


@pytest.mark.parametrize(
    "raw, words",
    [
        ("hello<0.3, 0.7>world<0.8, 1.2>", [("hello", 0.3, 0.7), ("world", 0.8, 1.2)]),
        ("hello<0.3,0.7> world <0.8-1.2>", [("hello", 0.3, 0.7), ("world", 0.8, 1.2)]),
        (
            "hello <0.3 , 0.7>world<0.8 ~ 1.2>",
            [("hello", 0.3, 0.7), ("world", 0.8, 1.2)],
        ),
        (
            "我<0.1，0.3>爱<0.3 0.5>你<0.5s, 0.8s>",
            [("我", 0.1, 0.3), ("爱", 0.3, 0.5), ("你", 0.5, 0.8)],
        ),
        # boundary marks
        (
            "<0.0>hello<0.5>world<1.0>",
            [("hello", 0.0, 0.5), ("world", 0.5, 1.0)],
        ),
    ],
)
def test_srwt_accepted_forms(raw, words):
    result = parse(TASKS["srwt"], raw)
    assert [(w.text, w.start, w.end) for w in result.words] == words
    assert result.issues == [] and result.raw == raw


def test_srwt_drifts():
    missing_end = parse(TASKS["srwt"], "hello<0.3>world<0.8, 1.2>")
    assert [(w.start, w.end) for w in missing_end.words] == [(0.3, 0.8), (0.8, 1.2)]
    assert "no end time" in missing_end.issues[0]
    last_missing_end = parse(TASKS["srwt"], "hello<0.3, 0.7>world<0.8>")
    assert (
        last_missing_end.words[1].end is None
        and "no end time" in last_missing_end.issues[0]
    )
    overlap = parse(TASKS["srwt"], "a<0.0, 0.5>b<0.4, 0.9>")
    assert [(w.start, w.end) for w in overlap.words] == [(0.0, 0.5), (0.4, 0.9)]
    assert overlap.issues == ["'b' overlaps 'a'"]
    untimed = parse(TASKS["srwt"], "just some text")
    assert [(w.text, w.start, w.end) for w in untimed.words] == [
        ("just some text", None, None)
    ]
    assert untimed.transcript == "just some text" and untimed.issues == [
        "no timestamps in the output"
    ]
    tail = parse(TASKS["srwt"], "hello<0.3, 0.7> and then")
    assert (
        tail.words[-1] == Word("and then", None, None)
        and tail.transcript == "hello and then"
    )
    other_tag = parse(TASKS["srwt"], "x<abc>y<1.0,2.0>")
    assert other_tag.words == [Word("x<abc>y", 1.0, 2.0)]
    backwards = parse(TASKS["srwt"], "a<0.9, 0.2>")
    assert "ends before it starts" in backwards.issues[0]
    for raw in ["", "<0.1, 0.2>", "<>", "<<>>", "a<1.2.3>", ">0.1<"]:
        assert isinstance(parse(TASKS["srwt"], raw), Result)  # never raises


def test_srwt_mandarin_transcript_has_no_spaces():
    assert (
        parse(TASKS["srwt"], "我<0.1, 0.3>爱<0.3, 0.5>python<0.5, 0.9>").transcript
        == "我爱python"
    )


@pytest.mark.parametrize(
    "task, raw, transcript, labels, unknown",
    [
        ("ser", "今天天气真好<happy>", "今天天气真好", {"emotion": "happy"}, []),
        ("ser", "hi<joy>", "hi", {"emotion": "joy"}, ["emotion"]),
        ("ser", "hi", "hi", {}, []),
        ("ved", "haha <Throat  Clearing>", "haha", {"event": "throat clearing"}, []),
        ("ssr", "从前有座山<童话故事>", "从前有座山", {"style": "童话故事"}, []),
        ("sgc", "hello<FEMALE>", "hello", {"gender": "female"}, []),
        (
            "asr+age+gender",
            "hello <adult> <female>",
            "hello",
            {"age": "adult", "gender": "female"},
            [],
        ),
        # missing age, gender still found
        (
            "asr+age+gender",
            "hello<female>",
            "hello",
            {"gender": "female"},
            [],
        ),
        (
            "asr+age+gender",
            "hello<teen><female>",
            "hello",
            {"age": "teen", "gender": "female"},
            ["age"],
        ),
        ("age+gender", "<child><MALE>", None, {"age": "child", "gender": "male"}, []),
        (
            "style+age+gender",
            "<有声书><old><male>",
            None,
            {"style": "有声书", "age": "old", "gender": "male"},
            [],
        ),
        (
            "asr+style+age+gender",
            "a<b>c<客服><adult><female>",
            "a<b>c",
            {"style": "客服", "age": "adult", "gender": "female"},
            [],
        ),
    ],
)
def test_label_parser(task, raw, transcript, labels, unknown):
    result = parse(TASKS[task], raw)
    assert (result.transcript, result.labels, result.unknown_labels) == (
        transcript,
        labels,
        unknown,
    )
    expected_issues = len(TASKS[task].labels) - len(labels) + len(unknown)
    assert len(result.issues) == expected_issues, result.issues


def test_label_only_task_flags_stray_text():
    result = parse(TASKS["age+gender"], "some words<adult><male>")
    assert result.transcript is None and result.labels == {
        "age": "adult",
        "gender": "male",
    }
    assert "text before the labels" in result.issues[0]


def test_sttc():
    result = parse(TASKS["sttc"], "今天几号<开始回答>今天是五号。")
    assert (result.transcript, result.reply, result.issues) == (
        "今天几号",
        "今天是五号。",
        [],
    )
    spaced = parse(TASKS["sttc"], "hi < 开始回答 > hello<开始回答>again")
    # split at the first separator only
    assert (spaced.transcript, spaced.reply) == (
        "hi",
        "hello<开始回答>again",
    )
    alone = parse(TASKS["sttc"], "no separator")
    assert alone.transcript == "no separator" and alone.reply is None and alone.issues


def test_free_prompt_and_json():
    result = parse(free_prompt_task("描述音频"), " a dog barks ")
    assert result.to_json() == {
        "task": "prompt",
        "raw": " a dog barks ",
        "transcript": "a dog barks",
    }
    timed = parse(TASKS["srwt"], "hi<0.1, 0.4>").to_json()
    assert timed["words"] == [{"text": "hi", "start": 0.1, "end": 0.4}]
    assert parse(TASKS["ser"], "x<sad>").to_text() == "x<sad>"


def test_join_windows_shifts_times_and_votes_labels():
    srwt = TASKS["srwt"]
    joined = join_windows(
        srwt, [parse(srwt, "a<0.0, 0.5>"), parse(srwt, "b<1.0, 1.5>")], [0.0, 27.5]
    )
    assert [(w.text, w.start, w.end) for w in joined.words] == [
        ("a", 0.0, 0.5),
        ("b", 28.5, 29.0),
    ]
    assert joined.transcript == "a b"
    ser = TASKS["ser"]
    windows = [
        parse(ser, "一<sad>"),
        parse(ser, "二<happy>"),
        parse(ser, "三<happy>"),
        parse(ser, "四"),
    ]
    joined = join_windows(ser, windows, [0.0, 30.0, 60.0, 90.0])
    assert joined.transcript == "一二三四" and joined.labels == {"emotion": "happy"}
    assert joined.issues == ["window 3: no emotion label"]
    tie = join_windows(ser, windows[:2], [0.0, 30.0])
    assert tie.labels == {"emotion": "sad"}  # a tie goes to the earliest window
