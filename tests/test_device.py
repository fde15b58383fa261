"""Device-agnostic code: every tensor MPEE creates lives on its inputs' device.

No GPU is needed to catch a device-less factory call (``torch.arange(T)``, ``torch.zeros(...)``): with the
default device set to ``meta`` while the model and inputs stay on the CPU, such a call makes a meta tensor,
and the first operation mixing it with a CPU tensor fails.
"""

from __future__ import annotations

import torch

from mpee_ref.config import BertConfig
from mpee_ref.experiments.batching import EncodedDataset
from mpee_ref.experiments.evaluate import run_inference
from mpee_ref.mpee import MPEEConfig, MPEEModel

BERT = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=64)


def _batch():
    ids = torch.randint(5, 99, (4, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[3, 4:] = 0
    return ids, mask


def test_inference_and_a_training_step_create_no_tensor_off_the_inputs_device():
    for cfg in (MPEEConfig(num_labels=3, prune_layers=(1, 2), threshold=0.9),
                MPEEConfig.recipe(3, prune_layers=(1, 2), threshold=0.9),
                MPEEConfig.authors(3, 3, threshold=0.9, pad_to=12)):
        torch.manual_seed(0)
        model = MPEEModel(BERT, cfg)
        ids, mask = _batch()
        reference = model.eval().infer({"input_ids": ids, "attention_mask": mask})
        with torch.device("meta"):
            out = model.infer({"input_ids": ids, "attention_mask": mask})
            model.train()
            loss = model(ids, mask, labels=torch.tensor([0, 1, 2, 0], device="cpu")).loss.total
            loss.backward()
        model.eval()
        assert [s.exit_layer for s in out.samples] == [s.exit_layer for s in reference.samples]
        assert loss.device.type == "cpu" and torch.isfinite(loss)


def test_run_inference_moves_batches_to_the_models_device(monkeypatch):
    torch.manual_seed(0)
    model = MPEEModel(BERT, MPEEConfig(num_labels=3)).to("meta").eval()    # a model on another device
    seen = []
    monkeypatch.setattr(model, "infer", lambda batch, **kw: seen.append({v.device.type for v in batch.values()})
                        or type("Out", (), {"samples": ()})())
    data = EncodedDataset(input_ids=((2, 10, 11, 3), (2, 12, 3)), token_type_ids=((0,) * 4, (0,) * 3), labels=(0, 1))
    run_inference(model, data, batch_size=1)
    assert seen == [{"meta"}, {"meta"}]
