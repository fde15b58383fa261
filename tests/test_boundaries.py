"""Bad input is refused at the boundaries, with one clear line naming what is wrong.

The equation functions of token_exit/, layer_exit/ and losses/ trust their inputs (as encoder/ does);
what they used to check is checked where the values enter: :class:`MPEEConfig` (hyper-parameters,
every switch), ``MPEEModel`` (``BertEncoder.check_inputs`` and the right-padding check: shapes, the
mask), :class:`ExitHead` / :class:`WeightedTeacher` (their input's shape) and :func:`mpee_loss` /
the baselines (labels). Each test names the equation guard it replaces.
"""

from __future__ import annotations

import pytest
import torch

from mpee_ref.baselines import DeeBERT, DeeBERTConfig
from mpee_ref.config import BertConfig
from mpee_ref.losses import WeightedTeacher, mpee_loss
from mpee_ref.mpee import MPEEConfig, MPEEModel

C = 3
BERT = BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                  intermediate_size=37, max_position_embeddings=32)
torch.manual_seed(0)
MODEL = MPEEModel(BERT, MPEEConfig(num_labels=C, prune_layers=(1, 2))).eval()
IDS = torch.randint(5, 99, (2, 6))
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])


@pytest.mark.parametrize("field, values", [
    ("beta", (-0.1, 1.5, float("nan"))),                 # was eq06_attention_memory's guard
    ("r_ee", (-0.5, 1.2, float("nan"))),                  # eq07_num_kept, prune_tokens
    ("r_ee_means", ("exited",)),                          # eq07_num_kept
    ("fusion", ("mean",)),                                # prune_tokens
    ("fused_memory", ("max",)),                           # prune_tokens
    ("token_select", ("middle",)),                        # prune_tokens (select)
    ("memory_alignment", ("keep",)),                      # prune_tokens
    ("lam", (-0.1, 1.5, float("nan"))),                   # eq10_classifier_memory
    ("threshold", (float("nan"), -0.1)),                  # should_exit
    ("tau", (0.0, -1.0, float("inf"))),                   # eq13_kd_loss
    ("kd_direction", ("both",)),                          # eq13_kd_loss
    ("kd_reduction", ("sum",)),                           # eq13_kd_loss
    ("gamma", (1.5, -0.1)),                               # eq14_total_loss
    ("ce_weighting", ("deep",)),                          # ce_exit_weights
    ("pad_to", (1,)),                                     # padded_widths
])
def test_config_refuses_what_the_equations_no_longer_check(field, values):
    for value in values:
        with pytest.raises(ValueError, match=f"MPEEConfig: {field}"):
            MPEEConfig(**{field: value})
        # a per-call override goes through the same check
        with pytest.raises(ValueError, match=f"MPEEConfig: {field}"):
            MODEL.infer({"input_ids": IDS, "attention_mask": MASK}, **{field: value})


def test_prune_layers_beyond_the_model_are_refused():               # was padded_widths' guard
    with pytest.raises(ValueError, match=r"prune_layers \[4\] exceed the model's 3 layers"):
        MPEEModel(BERT, MPEEConfig(num_labels=C, prune_layers=(1, 4)))


def test_model_refuses_bad_shapes_and_masks():
    """The shapes eq05 / prune_tokens used to check all derive from input_ids and attention_mask."""
    with pytest.raises(ValueError, match="attention_mask has shape"):
        MODEL.infer({"input_ids": IDS, "attention_mask": MASK[:, :5]})
    with pytest.raises(ValueError, match=r"attention_mask\[:, 0\] must be 1"):
        MODEL.infer({"input_ids": IDS, "attention_mask": torch.zeros_like(MASK)})
    with pytest.raises(ValueError, match="right-padded"):
        MODEL.infer({"input_ids": IDS, "attention_mask": MASK.flip(1).roll(1, 1)})
    with pytest.raises(ValueError, match="input_ids must be a"):
        MODEL.infer({"input_ids": IDS[0]})


def test_labels_are_checked_by_mpee_loss_and_the_model():           # was eq11_cross_entropy's guard
    memories, teacher = torch.zeros(2, 3, 4), WeightedTeacher(4)
    for labels in (torch.tensor([0, 1, 4]), torch.tensor([0, -1, 2]), torch.tensor([0.0, 1.0, 2.0]),
                   torch.tensor([0, 1])):
        with pytest.raises(ValueError, match="labels"):
            mpee_loss(memories, labels, teacher)
    with pytest.raises(ValueError, match="memories"):
        mpee_loss(torch.zeros(3, 4), torch.tensor([0, 1, 2]), teacher)
    model = MPEEModel(BERT, MPEEConfig(num_labels=C, prune_layers=(1, 2))).train()
    with pytest.raises(ValueError, match="labels must be integer class ids"):
        model(IDS, MASK, labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="labels"):
        model(IDS, MASK, labels=torch.tensor([0, C]))


def test_baselines_check_labels_at_their_forward():
    model = DeeBERT(BERT, DeeBERTConfig(num_labels=C)).train()
    with pytest.raises(ValueError, match="labels must be integer class ids"):
        model(IDS, MASK, labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        model(IDS, MASK, labels=torch.tensor([0, 3]))


def test_modules_check_their_input_shape():                         # eq09 / eq12 guards
    with pytest.raises(ValueError, match=r"h_cls must be \(B, 16\)"):
        MODEL.exits[0](torch.zeros(2, 15))
    with pytest.raises(ValueError, match=r"memories must be a non-empty \(L, B, 3\)"):
        MODEL.teacher(torch.zeros(2, 4, 2))
