"""Device-agnostic code: every tensor MPEE creates lives on its inputs' device.

No GPU is needed to catch a device-less factory call (``torch.arange(T)``, ``torch.zeros(...)``): with the
default device set to ``meta`` while the model and inputs stay on the CPU, such a call makes a meta tensor,
and the first operation mixing it with a CPU tensor fails.
"""

from __future__ import annotations

import json

import pytest
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
    # random heads put every entropy within 2e-4 of ln 3; F = 1.09852 lies among them: exits at different layers
    for cfg in (MPEEConfig(num_labels=3, prune_layers=(1, 2), threshold=1.09852),
                MPEEConfig.recipe(3, prune_layers=(1, 2), threshold=1.09852),
                MPEEConfig.authors(3, 3, threshold=1.09852, pad_to=12)):
        torch.manual_seed(0)
        model = MPEEModel(BERT, cfg)
        ids, mask = _batch()
        reference = {trace: model.eval().infer({"input_ids": ids, "attention_mask": mask}, trace=trace)
                     for trace in (False, True)}
        with torch.device("meta"):
            out = {trace: model.infer({"input_ids": ids, "attention_mask": mask}, trace=trace)
                   for trace in (False, True)}
            model.train()
            loss = model(ids, mask, labels=torch.tensor([0, 1, 2, 0], device="cpu")).loss.total
            loss.backward()
        model.eval()
        assert out == reference                                  # every field, traces included
        assert len({s.exit_layer for s in out[True].samples}) > 1 and out[True].samples[0].layers[0].positions
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


def test_the_training_loop_and_the_dev_evaluation_create_no_tensor_off_the_models_device(tmp_path):
    """train.py's epoch loop (sampler, collate, forward, loss, clip, AdamW, schedule, finiteness checks, the
    epoch-end evaluation and checkpoint) under a meta default device gives exactly the CPU-default run.
    The optimiser's state is created by one CPU-default step first (AdamW keeps its step counter on the
    host by design)."""
    from mpee_ref.data import get_task
    from mpee_ref.experiments import distributed
    from mpee_ref.experiments.monitor import InterruptFlag
    from mpee_ref.experiments.train import TrainArgs, evaluate_dev, run_epochs, set_up, train_step
    from test_train import make_tiny_encoder, make_tiny_sst2

    enc, data = make_tiny_encoder(tmp_path / "enc"), make_tiny_sst2(tmp_path / "data")
    got = []
    for default in ("cpu", "meta"):
        args = TrainArgs(task="sst-2", data_dir=str(data), out=str(tmp_path / default), model=str(enc), batch_size=4,
                         lr=1e-3, max_train_examples=8, max_eval_examples=6, eval_batch_size=4, max_steps=3,
                         log_every=1, progress=False, deterministic=False)
        run, state = set_up(args, get_task("sst-2"), distributed.setup(torch.device("cpu")), {}, None, InterruptFlag())
        try:
            first = train_step(run, state, next(run.sampler.batches(0)))
            with torch.device(default):
                assert run_epochs(run, state) is None
                res = evaluate_dev(run, state, "test")
        finally:
            run.log.close()
        assert state.step == 3 and state.saved_step == 2 and all(p.device.type == "cpu" for p in run.model.parameters())
        log = [json.loads(line) for line in (tmp_path / default / "log.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in log if r["event"] == "train"]
        got.append((first, losses, res["metrics"], res["rho"], res["exit_layer_counts"], run.model.state_dict()))
    assert got[0][:5] == got[1][:5] and len(got[0][1]) == 2               # steps 2 and 3 logged by the loop
    assert all(torch.equal(got[0][5][k], got[1][5][k]) for k in got[0][5])


def test_evaluate_data_under_a_meta_default_device_matches_the_cpu_default(tmp_path):
    from mpee_ref.data import read_glue
    from mpee_ref.experiments import encode_examples
    from mpee_ref.experiments.evaluate import evaluate_data
    from mpee_ref.mpee import load_mpee
    from test_train import make_tiny_encoder, make_tiny_sst2

    model = load_mpee(make_tiny_encoder(tmp_path / "enc"), threshold=0.68, prune_layers=(1, 2))
    data = encode_examples(model.tokenizer, read_glue("sst-2", make_tiny_sst2(tmp_path / "d"), "dev"), 32)
    results = []
    for default in ("cpu", "meta"):
        with torch.device(default):
            r = evaluate_data(model, data, "sst-2", 4, flops_convention="all", verify_batch1=4, r_ee=0.5)
        results.append({k: r[k] for k in ("metrics", "rho", "exit_layer_counts", "mean_tokens_per_layer",
                                          "authors_flops", "authors_code_flops", "batch_consistency")})
    assert results[0] == results[1]
    assert results[0]["batch_consistency"]["prediction_mismatches"] == 0


def test_fig1_runs_the_encoder_on_the_models_device(monkeypatch):
    from mpee_ref.experiments.figures import fig1_token_similarity

    model = MPEEModel(BERT, MPEEConfig(num_labels=3)).to("meta").eval()    # a model on another device
    seen = []

    class Seen(Exception):
        pass

    def record(*inputs, **kw):
        seen.append({t.device.type for t in inputs})
        raise Seen                                                          # nothing to compute on meta

    monkeypatch.setattr(model.bert, "forward", record)
    data = EncodedDataset(input_ids=((2, 10, 11, 3), (2, 12, 3)), token_type_ids=((0,) * 4, (0,) * 3), labels=(0, 1))
    with pytest.raises(Seen):
        fig1_token_similarity(model, data, batch_size=2)
    assert seen == [{"meta"}]


@pytest.mark.parametrize("method", ["static", "deebert", "fastbert", "pabee", "power_bert"])
def test_baselines_create_no_tensor_off_the_inputs_device(method):
    from mpee_ref.baselines.registry import METHODS
    spec = METHODS[method]
    extra = {"retention": (0.8, 0.6, 0.4)} if method == "power_bert" else {}
    torch.manual_seed(0)
    model = spec.model(BERT, spec.config(num_labels=3, **extra))
    ids, mask = _batch()
    reference = model.eval().infer({"input_ids": ids, "attention_mask": mask})
    with torch.device("meta"):
        out = model.infer({"input_ids": ids, "attention_mask": mask})
        model.train()
        loss = model(ids, mask, labels=torch.tensor([0, 1, 2, 0], device="cpu")).loss
        loss.backward()
    assert [s.exit_layer for s in out.samples] == [s.exit_layer for s in reference.samples]
    assert loss.device.type == "cpu" and torch.isfinite(loss)
