"""The method registry: every method builds, and every value of its default grid is a valid setting."""

import pytest
import torch

from mpee_ref.baselines.registry import METHODS, geometric_retention, get_method
from mpee_ref.config import BertConfig

TINY = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_grid_value_runs_and_ends_in_the_model(name):
    spec = METHODS[name]
    torch.manual_seed(0)
    model = spec.model(TINY, spec.config(num_labels=3)).eval()
    ids = torch.randint(5, 40, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    rhos = []
    for v in spec.grid or (None,):
        out = model.infer({"input_ids": ids, "attention_mask": mask},
                          **({} if v is None else spec.infer_kwargs(v, TINY.num_hidden_layers)))
        assert len(out.samples) == 3 and all(1 <= s.exit_layer <= 4 for s in out.samples)
        rhos.append(out.rho)
    if spec.knob is None:
        assert spec.grid == () and rhos[0] > 1.5                       # static: half the layers
    else:
        assert len(set(spec.grid)) == len(spec.grid) >= 3


def test_stages_are_the_configs_stages():
    for spec in METHODS.values():
        for stage in spec.stages:
            assert spec.config(num_labels=2, stage=stage).stage == stage


def test_geometric_retention_and_names():
    assert geometric_retention(0.5, 3) == (0.5, 0.25, 0.125)
    assert geometric_retention(1.0, 2) == (1.0, 1.0)
    with pytest.raises(ValueError, match="decay q"):
        geometric_retention(0.0, 3)
    assert get_method("power-bert") is METHODS["power_bert"]
    with pytest.raises(ValueError, match="unknown method 'tr_bert'"):
        get_method("tr_bert")
