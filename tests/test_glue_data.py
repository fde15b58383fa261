"""GLUE readers (mpee_ref/data/glue.py): every task's layout on tiny TSVs written in tmp_path, every error
path (file name and 1-based line number in the message), and the real row counts of the GLUE data
(found as tests/conftest.py says; those tests skip without it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mpee_ref.data import (TASKS, Example, get_task, read_glue, read_glue_file, read_glue_with_report,
                           resolve_split_path)


def write(path: Path, lines: list[str], final_newline: bool = True, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + ("\n" if final_newline else "")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def row(*cols: str) -> str:
    return "\t".join(cols)


MNLI_TRAIN_HEADER = row("index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                        "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
                        "sentence2", "label1", "gold_label")
MNLI_DEV_HEADER = row("index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                      "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
                      "sentence2", "label1", "label2", "label3", "label4", "label5", "gold_label")


def mnli_row(i: int, s1: str, s2: str, gold: str, dev: bool) -> str:
    votes = [gold] * (5 if dev else 1)
    return row(str(i), "31193", f"{i}n", "fiction", "( bp )", "( bp )", "(ROOT)", "(ROOT)", s1, s2,
               *votes, gold)


# ----------------------------------------------------------------------------- registry
def test_task_registry_label_maps_and_metrics():
    assert set(TASKS) == {"sst-2", "mrpc", "qqp", "qnli", "mnli", "mnli-mm", "rte", "cola", "sts-b", "wnli"}
    assert get_task("mnli").label_to_id == {"contradiction": 0, "entailment": 1, "neutral": 2}
    assert get_task("qnli").label_to_id == {"entailment": 0, "not_entailment": 1}
    assert get_task("rte").label_to_id == {"entailment": 0, "not_entailment": 1}
    for name in ("sst-2", "mrpc", "qqp", "cola", "wnli"):
        assert get_task(name).label_to_id == {"0": 0, "1": 1}
    assert [get_task(t).metric for t in ("sst-2", "mrpc", "qqp", "qnli", "mnli", "rte", "cola", "sts-b")] == [
        "accuracy", "f1_accuracy", "accuracy", "accuracy", "accuracy", "accuracy", "mcc", "pearson_spearman"]
    stsb = get_task("sts-b")
    assert (stsb.task_type, stsb.num_labels, stsb.label_names) == ("regression", 1, ())
    assert get_task("mnli").splits["dev"] == "dev_matched.tsv"
    assert get_task("mnli-mm").splits["dev"] == "dev_mismatched.tsv"


@pytest.mark.parametrize("alias,name", [("sst2", "sst-2"), ("SST-2", "sst-2"), ("mnli-m", "mnli"),
                                        ("MNLI_MM", "mnli-mm"), ("stsb", "sts-b"), (" RTE ", "rte")])
def test_get_task_aliases(alias, name):
    assert get_task(alias).name == name


def test_get_task_unknown_lists_known_tasks():
    with pytest.raises(ValueError, match=r"unknown GLUE task 'squad'.*'mrpc'.*'sst-2'"):
        get_task("squad")


# ----------------------------------------------------------------------------- layouts
def test_sst2_layout_strips_trailing_space_and_keeps_quotes(tmp_path):
    write(tmp_path / "SST-2" / "dev.tsv", ["sentence\tlabel", 'it \'s a charming journey . \t1',
                                           '" quoted , never closed \t0', "a\x0bb\u2028c \t1"])
    ex = read_glue("sst-2", tmp_path, "dev")
    assert ex == [Example("it 's a charming journey .", None, 1, "sst-2:dev:2"),
                  Example('" quoted , never closed', None, 0, "sst-2:dev:3"),
                  # \x0b and \u2028 are not line breaks for a TSV (str.splitlines would split here)
                  Example("a\x0bb\u2028c", None, 1, "sst-2:dev:4")]


def test_mrpc_bom_header_and_pairs(tmp_path):
    write(tmp_path / "MRPC" / "train.tsv",
          [row("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
           row("1", "702876", "702977", 'Amrozi accused his brother , whom he called " the witness " .',
               '" The witness " , Amrozi said .'),
           row("0", "2108705", "2108831", "Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's .")],
          bom=True)
    ex = read_glue("mrpc", tmp_path, "train")
    assert [(e.label, e.guid) for e in ex] == [(1, "mrpc:train:2"), (0, "mrpc:train:3")]
    assert ex[0].text_a.startswith("Amrozi") and ex[0].text_b == '" The witness " , Amrozi said .'


def test_qqp_layout(tmp_path):
    write(tmp_path / "QQP" / "dev.tsv",
          [row("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
           row("201359", "303345", "303346", "Why are African-Americans so beautiful?",
               "Why are hispanics so beautiful?", "0"),
           row("263843", "69383", "380476", "I want to pursue PhD in CS?", "Can I do a PhD in CS?", "1")])
    ex = read_glue("qqp", tmp_path)
    assert [(e.text_b, e.label) for e in ex] == [("Why are hispanics so beautiful?", 0),
                                                 ("Can I do a PhD in CS?", 1)]


@pytest.mark.parametrize("task,folder,cols", [("qnli", "QNLI", ("index", "question", "sentence", "label")),
                                              ("rte", "RTE", ("index", "sentence1", "sentence2", "label"))])
def test_qnli_rte_layout(tmp_path, task, folder, cols):
    write(tmp_path / folder / "dev.tsv", [row(*cols), row("0", "Q one?", "A one.", "not_entailment"),
                                          row("1", "Q two?", "A two.", "entailment")])
    ex = read_glue(task, tmp_path / folder, "dev")  # the task folder itself
    assert [(e.text_a, e.text_b, e.label) for e in ex] == [("Q one?", "A one.", 1), ("Q two?", "A two.", 0)]


def test_mnli_train_dev_matched_and_mismatched(tmp_path):
    d = tmp_path / "MNLI"
    write(d / "train.tsv", [MNLI_TRAIN_HEADER, mnli_row(0, "p0", "h0", "neutral", dev=False),
                            mnli_row(1, "p1", "h1", "contradiction", dev=False)])
    write(d / "dev_matched.tsv", [MNLI_DEV_HEADER, mnli_row(0, "pm", "hm", "entailment", dev=True)])
    write(d / "dev_mismatched.tsv", [MNLI_DEV_HEADER, mnli_row(0, "px", "hx", "neutral", dev=True),
                                     mnli_row(1, "py", "hy", "contradiction", dev=True)])
    assert [(e.text_a, e.text_b, e.label) for e in read_glue("mnli", tmp_path, "train")] == [
        ("p0", "h0", 2), ("p1", "h1", 0)]
    matched = [(e.text_a, e.label) for e in read_glue("mnli", tmp_path, "dev")]
    assert matched == [("pm", 1)] == [(e.text_a, e.label) for e in read_glue("mnli-m", tmp_path,
                                                                             "dev_matched")]
    mismatched = [(e.text_a, e.label) for e in read_glue("mnli-mm", tmp_path, "dev")]
    assert mismatched == [("px", 2), ("py", 0)]
    assert [e.text_a for e in read_glue("mnli", tmp_path, "dev_mismatched")] == ["px", "py"]


def test_cola_no_header_no_final_newline(tmp_path):
    write(tmp_path / "CoLA" / "dev.tsv", [row("gj04", "1", "", "The sailors rode the breeze."),
                                          row("gj04", "0", "*", "The more books I ask to whom he will.")],
          final_newline=False)
    ex = read_glue("cola", tmp_path)
    assert ex == [Example("The sailors rode the breeze.", None, 1, "cola:dev:1"),
                  Example("The more books I ask to whom he will.", None, 0, "cola:dev:2")]


def test_stsb_keeps_float_score(tmp_path):
    header = row("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
                 "sentence2", "score")
    write(tmp_path / "STS-B" / "dev.tsv",
          [header, row("0", "main-captions", "MSRvid", "2012test", "0000", "none", "none", "A man.",
                       "A guy.", "4.750")])
    (ex,) = read_glue("stsb", tmp_path)
    assert ex.label == 4.75 and isinstance(ex.label, float) and ex.text_b == "A guy."


def test_crlf_line_endings_are_tolerated(tmp_path):
    (tmp_path / "dev.tsv").write_bytes(b"sentence\tlabel\r\ngood .\t1\r\nbad .\t0\r\n")
    assert [(e.text_a, e.label) for e in read_glue("sst-2", tmp_path)] == [("good .", 1), ("bad .", 0)]


# ----------------------------------------------------------------------------- data_dir resolution
def test_resolution_order_root_then_task_folder_then_flat(tmp_path):
    write(tmp_path / "SST-2" / "dev.tsv", ["sentence\tlabel", "from the task folder\t1"])
    write(tmp_path / "dev.tsv", ["sentence\tlabel", "from the root itself\t0"])
    # 1. <root>/SST-2/dev.tsv wins over <root>/dev.tsv
    assert resolve_split_path("sst-2", tmp_path, "dev") == tmp_path / "SST-2" / "dev.tsv"
    assert read_glue("sst-2", tmp_path)[0].text_a == "from the task folder"
    # 2. the task folder itself, and any folder holding dev.tsv directly
    assert read_glue("sst-2", tmp_path / "SST-2")[0].text_a == "from the task folder"
    flat = write(tmp_path / "sst2-sentences" / "dev.tsv", ["sentence\tlabel", "flat\t0"]).parent
    assert read_glue("sst2", flat)[0].text_a == "flat"


def test_wrong_task_folder_is_refused(tmp_path):
    write(tmp_path / "RTE" / "dev.tsv", [row("index", "sentence1", "sentence2", "label")])
    with pytest.raises(ValueError, match=r"data_dir: .*RTE is the GLUE folder of another task"):
        read_glue("sst-2", tmp_path / "RTE")


def test_missing_split_file_lists_paths_looked_for(tmp_path):
    write(tmp_path / "SST-2" / "train.tsv", ["sentence\tlabel", "x\t1"])
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "SST-2" / "dev.tsv"))):
        read_glue("sst-2", tmp_path, "dev")
    with pytest.raises(ValueError) as err:
        read_glue("rte", tmp_path, "dev")
    assert str(tmp_path / "RTE" / "dev.tsv") in str(err.value) and str(tmp_path / "dev.tsv") in str(err.value)


def test_bad_data_dir_and_split(tmp_path):
    with pytest.raises(ValueError, match=r"data_dir: .*nope does not exist"):
        read_glue("rte", tmp_path / "nope")
    f = write(tmp_path / "dev.tsv", ["sentence\tlabel", "x\t1"])
    with pytest.raises(ValueError, match=r"data_dir: .*dev.tsv is a file"):
        read_glue("sst-2", f)
    with pytest.raises(ValueError, match=r"split: unknown split 'test' for task sst-2; known splits: \['dev', 'train'\]"):
        read_glue("sst-2", tmp_path, "test")


# ----------------------------------------------------------------------------- malformed rows
def _sst2(tmp_path: Path, *lines: str) -> Path:
    return write(tmp_path / "SST-2" / "dev.tsv", ["sentence\tlabel", *lines])


def test_wrong_column_count_names_file_and_line(tmp_path):
    path = _sst2(tmp_path, "fine .\t1", "an extra\tcolumn\t0")
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 3: 3 tab-separated columns, expected 2")):
        read_glue("sst-2", tmp_path)


def test_blank_line_is_malformed(tmp_path):
    path = _sst2(tmp_path, "fine .\t1", "", "also fine .\t0")
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 3: 1 tab-separated columns")):
        read_glue("sst-2", tmp_path)


def test_unknown_label_names_file_and_line(tmp_path):
    path = write(tmp_path / "RTE" / "dev.tsv", [row("index", "sentence1", "sentence2", "label"),
                                                row("0", "a", "b", "entailment"),
                                                row("1", "a", "b", "contradiction")])
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 3: unknown label 'contradiction' for task rte")):
        read_glue("rte", tmp_path)


def test_empty_text_names_file_and_line(tmp_path):
    path = write(tmp_path / "QQP" / "dev.tsv", [row("id", "qid1", "qid2", "question1", "question2",
                                                    "is_duplicate"),
                                                row("1", "2", "3", "Why?", "  ", "0")])
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 2: empty text_b")):
        read_glue("qqp", tmp_path)
    path = _sst2(tmp_path, "ok\t1", "ok\t0", " \t1")
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 4: empty text_a")):
        read_glue("sst-2", tmp_path)


def test_bad_score_names_file_and_line(tmp_path):
    header = row("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
                 "sentence2", "score")
    path = write(tmp_path / "STS-B" / "train.tsv", [header, row(*["x"] * 9, "4.0"), row(*["x"] * 9, "high"),
                                                    row(*["x"] * 9, "nan")])
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 3: score 'high' is not a number")):
        read_glue("sts-b", tmp_path, "train")
    write(path, [header, row(*["x"] * 9, "nan")])
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 2: score 'nan' is not finite")):
        read_glue("sts-b", tmp_path, "train")


def test_cola_wrong_columns_and_label_line_numbers(tmp_path):
    path = write(tmp_path / "CoLA" / "train.tsv", [row("gj04", "1", "", "ok ."), row("gj04", "1", "ok .")],
                 final_newline=False)
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 2: 3 tab-separated columns, expected 4")):
        read_glue("cola", tmp_path, "train")
    # an RTE file read as CoLA: no header, so line 1 is data and its label column is "sentence1"
    path = write(tmp_path / "CoLA" / "train.tsv", [row("index", "sentence1", "sentence2", "label")])
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 1: unknown label 'sentence1' for task cola")):
        read_glue("cola", tmp_path, "train")


def test_wrong_header_empty_file_and_header_only(tmp_path):
    path = write(tmp_path / "MRPC" / "dev.tsv", [row("index", "sentence1", "sentence2", "label"),
                                                 row("0", "a", "b", "entailment")])
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 1: header has no column '#1 String'")):
        read_glue("mrpc", tmp_path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(f"{path}: the file is empty")):
        read_glue("mrpc", tmp_path)
    write(path, [row("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")], bom=True)
    with pytest.raises(ValueError, match=re.escape(f"{path}: the file has a header but no rows")):
        read_glue("mrpc", tmp_path)


def test_skip_malformed_counts_and_reports(tmp_path):
    header = row("id", "qid1", "qid2", "question1", "question2", "is_duplicate")
    path = write(tmp_path / "QQP" / "train.tsv",
                 [header, row("1", "1", "2", "A?", "B?", "1"), row("2", "3", "4", "C?", "0"),
                  row("3", "5", "6", "E?", "", "0"), row("4", "7", "8", "F?", "G?", "0")])
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 3:")):
        read_glue("qqp", tmp_path, "train")
    ex, report = read_glue_with_report("qqp", tmp_path, "train", skip_malformed=True)
    assert [e.guid for e in ex] == ["qqp:train:2", "qqp:train:5"]
    assert report.path == path and report.n_examples == 2
    assert report.skipped == ((3, "5 tab-separated columns, expected 6"), (4, "empty text_b"))
    with pytest.warns(UserWarning, match=r"skipped 2 malformed rows, kept 2: line 3 \(5 tab-separated columns, expected 6\), line 4 \(empty text_b\)"):
        assert read_glue("qqp", tmp_path, "train", skip_malformed=True) == ex
    # an unknown label is never skipped
    write(path, [header, row("1", "1", "2", "A?", "B?", "yes")])
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 2: unknown label 'yes'")):
        read_glue_file("qqp", path, "train", skip_malformed=True)


# ----------------------------------------------------------------------------- the real files
@pytest.mark.parametrize("task,split,n,n_label1", [
    ("sst-2", "dev", 872, 444), ("mrpc", "dev", 408, 279), ("rte", "dev", 277, 131),
    ("qnli", "dev", 5463, 2761), ("rte", "train", 2490, 1241), ("mrpc", "train", 3668, 2474),
    ("cola", "dev", 1043, 721), ("sts-b", "dev", 1500, None)])
def test_real_glue_row_counts(glue_dir, task, split, n, n_label1):
    ex = read_glue(task, glue_dir, split)
    assert len(ex) == n
    if n_label1 is not None:
        assert sum(e.label == 1 for e in ex) == n_label1
    assert all(e.text_a and e.text_a == e.text_a.strip() for e in ex)


def test_real_sst2_train_and_sentence_split(glue_dir):
    train = read_glue("sst-2", glue_dir, "train")
    assert len(train) == 67349 and sum(e.label for e in train) == 37569
    sentences = glue_dir.parent / "sst2-sentences"
    if not sentences.exists():
        pytest.skip(f"{sentences} not found")
    small = read_glue("sst2", sentences, "train")
    assert len(small) == 6920 and sum(e.label for e in small) == 3610
    # SOURCES.md: the sentence-level dev split equals GLUE SST-2 dev up to order and the trailing space
    assert ({(e.text_a, e.label) for e in read_glue("sst2", sentences, "dev")}
            == {(e.text_a, e.label) for e in read_glue("sst-2", glue_dir, "dev")})
