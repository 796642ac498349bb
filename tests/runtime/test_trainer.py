"""The trainer: it learns, resumes exactly, scales out with DDP, and its adapter works in the nodes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from graph import Graph, run_prompt
from PIL import Image
from train_data import make_dataset

from nested_attention.nested_core import load_adapter_checkpoint
from nested_attention.nested_train.dataset import DatasetError
from nested_attention.nested_train.loop import Trainer
from nested_attention.nodes.tokens import resolve_token, tokenize_prompt
from nested_dev.comfy_env import PACK_ROOT
from nested_dev.comfy_server import free_port
from nested_dev.dev_nodes import CAPTURED
from nested_dev.tiny_models import TinyParts

TINY_PARTS = TinyParts("sd15")

TINY = dict(
    class_word="dog",
    caption_template="a photo of a {word}",
    resolution=64,
    batch_size=4,
    num_tokens=4,
    qformer_dim=32,
    qformer_depth=1,
    qformer_heads=2,
    qformer_head_dim=16,
    lr=3e-3,
    progress=False,
    log_every=1,
    save_every=0,
    device="cpu",
)


def config(tmp_path, **changes):
    from nested_attention.nested_train.config import TrainConfig

    data = tmp_path / "data"
    if not data.exists():
        make_dataset(data)
    return TrainConfig(**(TINY | {"data": str(data), "output": str(tmp_path / "out")} | changes))


def evaluation_loss(trainer) -> float:
    """The loss on a fixed set of examples, noise and timesteps (step id -1), without gradients."""
    saved = trainer.step
    trainer.step = -1
    with torch.no_grad():
        value = sum(float(trainer.loss([i])) for i in range(8)) / 8
    trainer.step = saved
    return value


def test_training_lowers_the_loss_and_writes_logs_checkpoints_and_samples(pack, tmp_path):
    trainer = Trainer(config(tmp_path, steps=40, lr=1e-2, sample_every=40, sample_steps=2), TINY_PARTS)
    before = evaluation_loss(trainer)
    assert evaluation_loss(trainer) == before, "the evaluation must be deterministic"
    adapter = trainer.train()
    after = evaluation_loss(trainer)
    # The UNet is random and frozen, so the adapter can remove only a little of its error; measured:
    # 1.0702 -> 1.0653 after 40 steps on this data.
    assert after < before - 0.003, (before, after)
    out = tmp_path / "out"
    rows = (out / "train_log.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,steps_per_s,examples_per_s" and len(rows) == 41
    assert adapter.is_file() and (out / "checkpoints" / "step_0000040" / "state.pt").is_file()
    samples = sorted((out / "samples").glob("*.png"))
    assert samples and Image.open(samples[0]).size == (64, 64)
    checkpoint = load_adapter_checkpoint(adapter)
    assert checkpoint.config.class_word == "dog" and checkpoint.config.layer_keys is not None


def test_resuming_gives_exactly_the_uninterrupted_run(pack, tmp_path):
    straight = Trainer(config(tmp_path / "a", steps=6), TINY_PARTS)
    straight.train()
    first = Trainer(config(tmp_path / "b", steps=3), TINY_PARTS)
    first.train()
    resumed = Trainer(config(tmp_path / "b", steps=6), TINY_PARTS, resume=True)
    assert resumed.step == 3
    resumed.train()
    for (name, a), (_, b) in zip(straight.adapter.state_dict().items(), resumed.adapter.state_dict().items()):
        assert torch.equal(a, b), name
    states_a, states_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for key in states_a:
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(states_a[key][field], states_b[key][field]), (key, field)
    with pytest.raises(ValueError, match=r"(?s)differ from the checkpoint's.*lr: 0.003 -> 0.001.*seed: 0 -> 1"):
        Trainer(config(tmp_path / "b", steps=9, lr=1e-3, seed=1), TINY_PARTS, resume=True)


def test_accumulating_micro_batches_trains_the_same_adapter(pack, tmp_path):
    whole = Trainer(config(tmp_path / "a", steps=2, batch_size=4), TINY_PARTS)
    whole.train()
    halves = Trainer(config(tmp_path / "b", steps=2, batch_size=4, accumulate=2), TINY_PARTS)
    halves.train()
    for (name, a), (_, b) in zip(whole.adapter.state_dict().items(), halves.adapter.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_two_process_ddp_matches_one_process(pack, tmp_path):
    runs = {}
    for processes in (1, 2):
        settings = dataclasses.asdict(config(tmp_path / str(processes), steps=3, batch_size=4))
        path = tmp_path / f"config_{processes}.json"
        path.write_text(json.dumps(settings))
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            "-m",
            "nested_dev.tiny_train",
            "sd15",
            "--config",
            str(path),
        ]
        result = subprocess.run(
            command,
            cwd=PACK_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs[processes] = load_adapter_checkpoint(tmp_path / str(processes) / "out" / "adapter.safetensors").state_dict
    for name, single in runs[1].items():
        torch.testing.assert_close(runs[2][name], single, rtol=1e-4, atol=1e-6, msg=name)


def test_the_trained_adapter_loads_in_the_node_and_changes_the_image(pack, assets, tmp_path):
    trainer = Trainer(config(tmp_path, steps=2), TINY_PARTS)
    trained = trainer.train()
    target = assets / "nested_adapters" / "trained_dog.safetensors"
    target.write_bytes(trained.read_bytes())
    latents = {}
    for bind in (False, True):
        g = Graph()
        tiny = g.add("NestedDevTinyCheckpoint", kind="sd15", seed=0)
        model = tiny[0]
        if bind:
            adapter = g.add("LoadNestedAdapter", adapter_name="trained_dog.safetensors")
            photo = g.add("LoadImage", image="dog_reference.png")
            subject = g.add(
                "EncodeSubjectQFormer",
                adapter=adapter[0],
                clip_vision=g.add("NestedDevTinyCLIPVision", seed=0)[0],
                image=photo[0],
            )
            model = g.add(
                "ApplyNestedAttention",
                model=model,
                adapter=adapter[0],
                subject=subject[0],
                token="dog",
                weight=1.0,
                start_at=0.0,
                end_at=1.0,
            )[0]
        positive = g.add("NestedTextEncode", clip=tiny[1], text="a photo of a dog")
        negative = g.add("NestedTextEncode", clip=tiny[1], text="")
        latent = g.add("EmptyLatentImage", width=64, height=64, batch_size=1)
        sampled = g.sample(model, positive[0], negative[0], latent[0], seed=2, steps=3, cfg=5.0)
        g.add("NestedDevCapture", value=sampled[0], label=f"trained:{bind}")
        import folder_paths

        Image.open(tmp_path / "data" / "subject_0" / "0.png").save(
            os.path.join(folder_paths.get_input_directory(), "dog_reference.png")
        )
        run_prompt(g.prompt)
        latents[bind] = CAPTURED[f"trained:{bind}"]["samples"]
    assert not torch.allclose(latents[True], latents[False])


def test_starting_from_an_ip_adapter_plus_file(pack, assets, tmp_path):
    start = assets / "nested_adapters" / "sd15_ipa_plus.safetensors"
    trainer = Trainer(config(tmp_path, steps=1, init_adapter=str(start)), TINY_PARTS)
    source = load_adapter_checkpoint(start).state_dict
    for name, value in trainer.adapter.state_dict().items():
        assert torch.equal(value, source[name].float()), name
    trainer.train()


def test_starting_with_the_unets_own_projections(pack, tmp_path):
    """init_from_unet: every layer's nested to_k / to_v start as that layer's attn2 to_k / to_v (as
    IP-Adapter initialises to_k_ip / to_v_ip), so a nested token starts out projected like text."""
    from nested_attention.nested_core.layers import diffusers_order
    from nested_attention.nodes.model_layers import attn2_modules

    trainer = Trainer(config(tmp_path, steps=1, init_from_unet=True), TINY_PARTS)
    modules = attn2_modules(trainer.parts.model)
    keys = tuple(diffusers_order(trainer.parts.sites))
    assert len(keys) == len(trainer.adapter.nested) > 1
    for index, key in enumerate(keys):
        assert torch.equal(trainer.adapter.nested[index].to_k.weight, modules[key].to_k.weight.float()), key
        assert torch.equal(trainer.adapter.nested[index].to_v.weight, modules[key].to_v.weight.float()), key
    scratch = Trainer(config(tmp_path / "scratch", steps=1), TINY_PARTS)
    assert not torch.equal(scratch.adapter.nested[0].to_k.weight, trainer.adapter.nested[0].to_k.weight)
    with pytest.raises(ValueError, match="init_from_unet and init_adapter"):
        config(tmp_path, init_from_unet=True, init_adapter="x.safetensors").validate()


class SpyParts:
    """A frozen-parts loader that notes whether the trainer asked it for the models."""

    def __init__(self, problems=()):
        self.loaded = False
        self._problems = list(problems)

    def problems(self, config):
        return self._problems

    def load(self, config):
        self.loaded = True
        return TINY_PARTS.load(config)


def test_settings_the_loader_cannot_use_are_reported_before_the_data_is_read(pack, tmp_path):
    from nested_attention.nested_train.frozen import CheckpointFiles

    with pytest.raises(ValueError, match=r"(?s)base is not set.*clip_vision: /nowhere/v.safetensors does not exist"):
        Trainer(
            config(tmp_path, data=str(tmp_path / "missing"), clip_vision="/nowhere/v.safetensors"), CheckpointFiles()
        )
    spy = SpyParts(["the tiny model is broken"])
    with pytest.raises(ValueError, match="the tiny model is broken"):
        Trainer(config(tmp_path), spy)
    assert not spy.loaded


def test_bad_data_is_listed_in_full_before_training(pack, tmp_path):
    data = make_dataset(tmp_path / "data", subjects=3)
    (data / "subject_0" / "1.png").write_bytes(b"")
    (data / "subject_0" / "2.png").write_text("not an image")
    Image.new("RGB", (8, 8)).save(data / "subject_1" / "tiny.png")
    Image.new("L", (10, 10)).save(data / "subject_1" / "0.mask.png")
    (data / "subject_1" / "1.txt").write_text("a photo of a cat")
    (data / "subject_2" / "1.txt").write_text("a photo of a dog " + "in a very long garden " * 15)
    empty = data / "subject_3"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    spy = SpyParts()
    with pytest.raises(DatasetError) as error:
        Trainer(config(tmp_path, data=str(data)), spy)
    text = str(error.value)
    for expected in (
        "subject_0/1.png: empty file",
        "subject_0/2.png: unreadable image",
        "subject_1/tiny.png: 8x8 pixels",
        "0.mask.png: mask is 10x10 but its image is 64x64",
        "1.png: its caption does not contain the class word 'dog'",
        "subject_2/1.png: its caption is longer than 75 tokens",
        "subject 'subject_3' has no usable image",
    ):
        assert expected in text, expected
    assert not spy.loaded, "no model may be loaded before the data is checked"
    with pytest.raises(DatasetError, match="class word: token 'ohwx dog' is 2 CLIP tokens"):
        Trainer(config(tmp_path, data=str(data), class_word="ohwx dog"), TINY_PARTS)


def test_subjects_bound_to_words_of_their_own(pack, tmp_path):
    """word.txt in a subject's folder: its captions must contain that word, and training binds it there."""
    data = make_dataset(tmp_path / "data", subjects=2)
    (data / "subject_1" / "word.txt").write_text("cat")
    (data / "subject_1" / "0.txt").write_text("a photo of a dog in a garden")
    with pytest.raises(DatasetError, match="subject_1/0.png: its caption does not contain the class word 'cat'"):
        Trainer(config(tmp_path, data=str(data)), TINY_PARTS)
    (data / "subject_1" / "0.txt").write_text("a photo of a cat in a garden")
    trainer = Trainer(config(tmp_path, data=str(data), steps=1), TINY_PARTS)
    assert {s.name: s.word for s in trainer.dataset.subjects} == {"subject_0": "dog", "subject_1": "cat"}
    examples = [trainer.dataset.example(0, i) for i in range(8)]
    _, _, positions = trainer._captions(examples)
    for example, found in zip(examples, positions):
        ids = tokenize_prompt(example.caption).ids
        assert found and all(ids[p] == resolve_token(example.word) for p in found), (example.caption, example.word)
    assert {e.word for e in examples} == {"dog", "cat"}
    trainer.train()
    assert load_adapter_checkpoint(tmp_path / "out" / "adapter.safetensors").config.class_word == "cat/dog"
