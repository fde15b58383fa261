"""``train --distill-from`` (docs/interpretation/layer_exit_and_losses.md, L11): a fine-tuned model's
last layer teaches every exit, Eq. (13)'s KL term with an external teacher. Off in every preset.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mpee_ref.experiments import TrainArgs, train_model
from mpee_ref.experiments.train import distill_loss, distill_targets, load_distill_teacher
from mpee_ref.mpee import load_mpee
from mpee_ref.mpee.model import TrainOutput
from test_train import _args, make_tiny_encoder, make_tiny_sst2  # noqa: F401  (fixtures below)
from test_train import deterministic_calls, one_thread, tiny  # noqa: F401


def _out(memories: torch.Tensor, final: torch.Tensor | None = None) -> TrainOutput:
    return TrainOutput(logits=memories, memories=memories, tokens=torch.zeros(memories.shape[:2]), final_logits=final)


def test_distill_loss_hand_example():
    # one sample, C = 2, tau 1: teacher logits [ln 3, 0] -> p_t = [3/4, 1/4]; a student at [0, 0] -> [1/2, 1/2]
    # KL(p_t || p_s) = 3/4 ln(3/2) + 1/4 ln(1/2)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    students = torch.zeros(2, 1, 2, dtype=torch.float64)                    # (L=2, B=1, C=2)
    target = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)      # (B, C)
    assert float(distill_loss(_out(students), "mpee", target, 1.0, 1.0)) == pytest.approx(2 * kl, rel=1e-12)
    assert float(distill_loss(_out(students), "plain", target, 1.0, 1.0)) == pytest.approx(kl, rel=1e-12)
    assert float(distill_loss(_out(students), "mpee", target, 0.5, 1.0)) == pytest.approx(kl, rel=1e-12)
    # tau 2: tau^2 KL of the softened distributions
    p = torch.softmax(target[0] / 2, -1)
    soft = float((p * (p.log() - math.log(0.5))).sum())
    assert float(distill_loss(_out(students), "plain", target, 1.0, 2.0)) == pytest.approx(4 * soft, rel=1e-12)


def test_distill_loss_is_zero_when_students_match_and_uses_the_final_classifier():
    g = torch.Generator().manual_seed(0)
    mem = torch.randn(3, 4, 2, generator=g, dtype=torch.float64)            # (L, B, C)
    same = mem[-1].expand(3, 4, 2)                                          # every exit = the teacher
    assert float(distill_loss(_out(same), "mpee", mem[-1], 1.0, 3.0)) == pytest.approx(0.0, abs=1e-12)
    final = torch.randn(4, 2, generator=g, dtype=torch.float64)
    with_final = distill_loss(_out(mem, final), "mpee", final, 1.0, 1.0)
    without_last = distill_loss(_out(mem[:-1]), "mpee", final, 1.0, 1.0)
    assert float(with_final) == pytest.approx(float(without_last), rel=1e-12)   # exit L's place: KL 0


@pytest.fixture(scope="module")
def plain_run(tiny, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("plain") / "run"
    with pytest.warns(UserWarning):
        train_model(_args(tiny, out, mode="plain", max_steps=2, deterministic=False))
    return out / "final"


def test_teacher_is_frozen_in_eval_mode_and_its_targets_are_its_predictions(tiny, plain_run):  # noqa: F811
    student = load_mpee(tiny["enc"], seed=1)
    teacher = load_distill_teacher(plain_run, student, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    enc = teacher.tokenizer(["the movie is good", "the film was awful and poor"])
    batch = {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.token_type_ids}
    t = distill_targets(teacher, batch)                                      # (2, C)
    inferred = teacher.infer(batch, layer_exit=False, token_exit=False)
    assert t.shape == (2, 2) and torch.equal(t.argmax(-1), inferred.predictions)


def test_training_with_a_teacher_changes_the_result_and_resumes_bit_identically(tiny, plain_run, tmp_path):  # noqa: F811
    kw = dict(preset="recipe", max_steps=3, deterministic=False)
    train_model(_args(tiny, tmp_path / "none", **kw))
    train_model(_args(tiny, tmp_path / "kd", distill_from=str(plain_run), distill_weight=2.0, **kw))
    part = train_model(_args(tiny, tmp_path / "kd2", distill_from=str(plain_run), distill_weight=2.0,
                             stop_after_steps=1, **kw))
    assert part["stopped"] == "stop_after_steps"
    with pytest.raises(ValueError, match="differing fields.*distill_from"):          # the teacher is part of the run
        train_model(_args(tiny, tmp_path / "kd2", resume=True, **kw))
    with pytest.raises(ValueError, match="differing fields.*distill_weight"):
        train_model(_args(tiny, tmp_path / "kd2", resume=True, distill_from=str(plain_run), **kw))
    train_model(_args(tiny, tmp_path / "kd2", resume=True, distill_from=str(plain_run), distill_weight=2.0, **kw))
    none, kd, kd2 = (load_file(str(tmp_path / d / "final" / "model.safetensors")) for d in ("none", "kd", "kd2"))
    assert not torch.equal(none["exits.0.classifier.weight"], kd["exits.0.classifier.weight"])
    assert kd.keys() == kd2.keys() and all(torch.equal(kd[k], kd2[k]) for k in kd)
    assert (tmp_path / "kd" / "train_summary.json").read_text().count(str(Path(plain_run).resolve())) >= 1


@pytest.mark.parametrize("change, message", [
    (dict(distill_from="/no/such/folder"), "--distill-from: /no/such/folder is not a folder"),
    (dict(distill_weight=0.0), "distill_weight must be > 0"),
    (dict(distill_tau=-1.0), "distill_tau must be > 0"),
    (dict(distill_weight=math.inf), "--distill-weight must be a finite number"),
])
def test_bad_distillation_flags_are_refused_naming_the_flag(tiny, tmp_path, change, message):  # noqa: F811
    with pytest.raises(ValueError, match=message):
        train_model(_args(tiny, tmp_path / "bad", **change))


def test_a_teacher_with_other_classes_tokens_or_a_baseline_is_refused(tiny, plain_run, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="--distill-from: MPEE only; --method deebert"):
        TrainArgs(task="sst-2", data_dir="D", out="O", model="M", method="deebert", distill_from="T")
    three = load_mpee(tiny["enc"], num_labels=3)
    with pytest.raises(ValueError, match=r"--distill-from: .* has 2 classes, the student 3"):
        load_distill_teacher(tiny["enc"], three, torch.device("cpu"))
    other = tmp_path / "other_vocab"
    shutil.copytree(plain_run, other)
    lines = (other / "vocab.txt").read_text().splitlines()
    (other / "vocab.txt").write_text("\n".join(lines[:-2] + lines[-1:] + lines[-2:-1]) + "\n")   # two ids swapped
    with pytest.raises(ValueError, match="another vocab.txt or casing than the student"):
        load_distill_teacher(other, load_mpee(plain_run), torch.device("cpu"))
