"""Attention maps: the quantities against references, and the nodes on recorded sampling runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from graph import Graph, GraphError, run_prompt
from reference_math import nested_attention_reference

from nested_attention.nested_core.attention import TokenPositions
from nested_attention.nested_core.errors import NestedAttentionError
from nested_attention.nested_core.images import center_square
from nested_attention.nested_core.maps import (
    nested_token_weights,
    pca_rgb,
    per_query_values,
    pool_to_grid,
    qformer_patch_maps,
    source_heatmap,
    subject_attention,
)
from nested_attention.nodes.map_images import normalised, overlay
from nested_attention.nodes.maps_render import SOURCE_SIZE, assign_photos, source_at
from nested_attention.nodes.recording import Recording
from nested_dev.dev_nodes import CAPTURED


def test_subject_attention_and_token_weights_match_a_plain_softmax():
    gen = torch.Generator().manual_seed(0)
    q, k, keys = (
        torch.randn(2, 6, 8, generator=gen),
        torch.randn(2, 9, 8, generator=gen),
        torch.randn(1, 3, 8, generator=gen),
    )
    positions = TokenPositions.from_lists([[2, 5], []])
    a = subject_attention(q, k, 2, positions.index, positions.valid)
    full = torch.softmax(q.view(2, 6, 2, 4).transpose(1, 2) @ k.view(2, 9, 2, 4).permute(0, 2, 3, 1) / 2, -1)
    torch.testing.assert_close(a[0], full[0, :, :, 2] + full[0, :, :, 5])
    assert torch.equal(a[1], torch.zeros_like(a[1]))
    weights = nested_token_weights(q, keys, 2)
    nested = torch.softmax(q.view(2, 6, 2, 4).transpose(1, 2) @ keys.view(1, 3, 2, 4).permute(0, 2, 3, 1) / 2, -1)
    torch.testing.assert_close(weights, nested.expand(2, -1, -1, -1))


def test_per_query_values_are_eq_1():
    # With the word as the only context token, Eq. 3 returns v*_q itself: the float64 reference.
    gen = torch.Generator().manual_seed(2)
    q, keys, values = (torch.randn(2, 5, 8, generator=gen) for _ in range(3))
    word = torch.randn(2, 1, 8, generator=gen)
    subject = {"keys": keys, "values": values, "positions": [[0], [0]]}
    expected = nested_attention_reference(q, word, word, 2, [subject])
    torch.testing.assert_close(per_query_values(q, keys, values, 2), expected.float())


def test_pool_to_grid_keeps_the_aspect_ratio_of_wide_and_coarse_layers():
    columns = torch.arange(8.0).repeat(6)  # a 6 x 8 feature map whose value is its column
    pooled = pool_to_grid(columns, 6, 8, (3, 4))
    assert torch.equal(pooled, torch.tensor([0.5, 2.5, 4.5, 6.5]).repeat(3, 1))
    coarse = pool_to_grid(torch.arange(4.0), 2, 2, (4, 4))  # coarser than the cells: repeated
    assert torch.equal(coarse, torch.tensor([[0.0, 0, 1, 1]] * 2 + [[2.0, 2, 3, 3]] * 2))


def test_patch_maps_and_source_heatmap_are_distributions():
    gen = torch.Generator().manual_seed(1)
    layers = [torch.softmax(torch.randn(3, 2, 4, 17 + 4, generator=gen), -1) for _ in range(2)]  # 4x4 patches + CLS
    maps = qformer_patch_maps(layers, num_tokens=4)
    assert maps.shape == (3, 4, 4, 4)
    torch.testing.assert_close(maps.sum((-1, -2)), torch.ones(3, 4))
    # Mass on the class token and on the latents is dropped; patch p lands at (p // 4, p % 4).
    one_hot = torch.zeros(1, 1, 4, 21)
    one_hot[..., 0], one_hot[..., 1 + 6], one_hot[..., 17:] = 0.5, 0.25, 0.0625
    assert torch.equal(qformer_patch_maps([one_hot], 4)[0, :, 1, 2], torch.ones(4))
    heat = source_heatmap(torch.tensor([0.5, 0.25, 0.25, 0.0]), maps[0])
    torch.testing.assert_close(heat.sum(), torch.tensor(1.0))
    colours = pca_rgb(torch.randn(50, 12, generator=gen))
    assert colours.shape == (50, 3) and colours.min() >= 0 and colours.max() <= 1


def maps_graph(mask: bool, record: bool = True) -> Graph:
    g = Graph()
    tiny = g.add("NestedDevTinyCheckpoint", kind="sd15", seed=0)
    vision = g.add("NestedDevTinyCLIPVision", seed=0)
    adapter = g.add("LoadNestedAdapter", adapter_name="sd15_person.safetensors")
    photo = g.add("EmptyImage", width=48, height=48, batch_size=1, color=0x884422)
    subject = g.add("EncodeSubjectQFormer", adapter=adapter[0], clip_vision=vision[0], image=photo[0])
    inputs = dict(
        model=tiny[0], adapter=adapter[0], subject=subject[0], token="person", weight=1.0, start_at=0.0, end_at=1.0
    )
    if mask:
        empty = g.add("SolidMask", value=0.0, width=64, height=64)
        left = g.add("SolidMask", value=1.0, width=32, height=64)
        inputs["attn_mask"] = g.add("MaskComposite", destination=empty[0], source=left[0], x=0, y=0, operation="add")[0]
    model = g.add("ApplyNestedAttention", **inputs)[0]
    recording = None
    if record:
        recorder = g.add("RecordNestedAttention", model=model, grid=8)
        model, recording = recorder[0], recorder[1]
    positive = g.add("NestedTextEncode", clip=tiny[1], text="a photo of a person on a boat")
    negative = g.add("NestedTextEncode", clip=tiny[1], text="blurry")
    latent = g.add("EmptyLatentImage", width=64, height=64, batch_size=2)
    sampled = g.sample(model, positive[0], negative[0], latent[0], seed=3, steps=4, cfg=5.0)
    images = g.add("VAEDecode", samples=sampled[0], vae=tiny[2])
    g.add("NestedDevCapture", value=sampled[0], label="maps:latent")
    if record:
        g.add("NestedDevCapture", value=recording, label="maps:recording")
        maps = g.add(
            "NestedAttentionMaps",
            recording=recording,
            images=images[0],
            reference=photo[0],
            point_x=0.25,
            point_y=0.5,
            parts="all",
            first_step=0.0,
            last_step=1.0,
        )
        for slot, name in enumerate(("subject", "source", "value")):
            g.add("NestedDevCapture", value=maps[slot], label=f"maps:{name}")
    return g


def test_maps_from_a_recorded_run(pack, assets):
    run_prompt(maps_graph(mask=False).prompt)
    recording = CAPTURED["maps:recording"]
    assert recording.steps == 4 and set(recording.traces) == {0}
    averaged = recording.averaged(0, ("input", "middle", "output"), 0, 3)
    assert averaged.shape == (2, 1 + 4, 8, 8)  # 2 images, a_s* + 4 token weights, 8x8 grid
    torch.testing.assert_close(averaged[:, 1:].sum(1), torch.ones(2, 8, 8), rtol=1e-4, atol=1e-4)
    assert 0 < float(averaged[:, 0].max()) <= 1
    assert CAPTURED["maps:subject"].shape == (2, 64, 64, 3)
    assert CAPTURED["maps:source"].shape == (1, 256, 256, 3)
    value = CAPTURED["maps:value"]
    assert value.shape[0] == 1 and value.shape[1] == 256 and value.min() >= 0 and value.max() <= 1
    trace = recording.traces[0]
    assert trace.values.shape[:2] == (2, 64) and trace.class_value.shape == (64,)


def test_recording_changes_nothing_in_the_image_and_costs_nothing_when_absent(pack, assets, monkeypatch):
    calls = []
    recording_cls = Recording
    original = recording_cls.record
    monkeypatch.setattr(recording_cls, "record", lambda self, *a, **k: (calls.append(1), original(self, *a, **k)))
    run_prompt(maps_graph(mask=False, record=False).prompt)
    plain = CAPTURED["maps:latent"]["samples"]
    assert not calls
    run_prompt(maps_graph(mask=False, record=True).prompt)
    assert calls
    torch.testing.assert_close(CAPTURED["maps:latent"]["samples"], plain)


def test_with_a_region_mask_the_recorded_influence_is_zero_outside_it(pack, assets):
    run_prompt(maps_graph(mask=True).prompt)
    averaged = CAPTURED["maps:recording"].averaged(0, ("input", "middle", "output"), 0, 3)
    acting = averaged[:, 0]  # [2, 8, 8]; the mask covers the left half
    assert torch.equal(acting[:, :, 4:], torch.zeros_like(acting[:, :, 4:]))
    assert float(acting[:, :, :4].min()) > 0


def test_source_map_of_the_node_sums_to_one(pack, assets):
    run_prompt(maps_graph(mask=False).prompt)
    recording = CAPTURED["maps:recording"]
    weights = recording.averaged(0, ("input", "middle", "output"), 0, 3)[0, 1:]
    heat, photo = source_at(weights, recording.registry[0], 0.25, 0.5)
    assert photo == 0 and heat.shape == (4, 4)
    torch.testing.assert_close(heat.sum(), torch.tensor(1.0))


def test_reference_photos_are_assigned_to_subjects_by_the_documented_rule():
    # Subjects in binding order; the second was encoded from 3 photos with combine=concat.
    needed, names = [1, 3, 1], ["'person'", "'dog'", "'cat'"]
    assert assign_photos(needed, 1, names) == [[0], [0, 0, 0], [0]]  # one photo shared by all
    assert assign_photos(needed, 3, names) == [[0], [1, 1, 1], [2]]  # one per subject
    assert assign_photos(needed, 5, names) == [[0], [1, 2, 3], [4]]  # every encoded photo, in turn
    with pytest.raises(NestedAttentionError, match=r"reference has 4 photos.*give 1 or 3 or 5 photos.*'dog' x3"):
        assign_photos(needed, 4, names)


def two_subject_maps_graph(photos: list[int], dog_photos: int = 1) -> tuple[Graph, str]:
    """Person and dog (tiny SD1.5 adapters), each encoded from its own solid-colour photo(s); the maps
    node gets the colours ``photos`` (0xRRGGBB) batched as its reference (none if empty). Returns the
    graph and the maps node's id."""
    g = Graph()
    tiny = g.add("NestedDevTinyCheckpoint", kind="sd15", seed=0)
    vision = g.add("NestedDevTinyCLIPVision", seed=0)

    def batch(colours: list[int]):
        images = [g.add("EmptyImage", width=48, height=48, batch_size=1, color=c)[0] for c in colours]
        out = images[0]
        for image in images[1:]:
            out = g.add("ImageBatch", image1=out, image2=image)[0]
        return out

    model = tiny[0]
    for word, colours in (("person", [0xFF0000]), ("dog", [0x0000FF] * dog_photos)):
        adapter = g.add("LoadNestedAdapter", adapter_name=f"sd15_{word}.safetensors")[0]
        combine = "concat" if len(colours) > 1 else "average"
        subject = g.add(
            "EncodeSubjectQFormer", adapter=adapter, clip_vision=vision[0], image=batch(colours), combine=combine
        )
        model = g.add(
            "ApplyNestedAttention",
            model=model,
            adapter=adapter,
            subject=subject[0],
            token=word,
            weight=1.0,
            start_at=0.0,
            end_at=1.0,
        )[0]
    recorder = g.add("RecordNestedAttention", model=model, grid=8)
    positive = g.add("NestedTextEncode", clip=tiny[1], text="a photo of a person and a dog on a boat")
    negative = g.add("NestedTextEncode", clip=tiny[1], text="blurry")
    latent = g.add("EmptyLatentImage", width=64, height=64, batch_size=1)
    sampled = g.sample(recorder[0], positive[0], negative[0], latent[0], seed=3, steps=3, cfg=5.0)
    images = g.add("VAEDecode", samples=sampled[0], vae=tiny[2])
    g.add("NestedDevCapture", value=recorder[1], label="maps:recording")
    reference = {}
    if photos:
        g.add("NestedDevCapture", value=batch(photos), label="maps:reference")
        reference["reference"] = batch(photos)
    maps = g.add(
        "NestedAttentionMaps",
        recording=recorder[1],
        images=images[0],
        point_x=0.25,
        point_y=0.5,
        parts="all",
        first_step=0.0,
        last_step=1.0,
        **reference,
    )
    g.add("NestedDevCapture", value=maps[1], label="maps:source")
    return g, maps.id


def run_with_ui(prompt: dict) -> dict:
    """Run through ComfyUI's executor with a client, so nodes report their UI output; node id -> output."""
    from nested_dev.headless import execute

    executor, log = execute(prompt, "maps-ui", client_id="test")
    errors = [data for event, data in log.events if event == "execution_error"]
    assert executor.success and not errors, errors
    return {data["node"]: data["output"] for event, data in log.events if event == "executed"}


def mean_colour(ref: dict) -> torch.Tensor:
    import folder_paths
    import numpy as np
    from PIL import Image

    path = Path(folder_paths.get_directory_by_type(ref["type"])) / ref["subfolder"] / ref["filename"]
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).mean((0, 1))


def test_each_subject_gets_its_own_reference_photo(pack, assets):
    graph, maps_id = two_subject_maps_graph([0xFF0000, 0x0000FF])  # red for the person, blue for the dog
    outputs = run_with_ui(graph.prompt)
    recording, reference = CAPTURED["maps:recording"], CAPTURED["maps:reference"]
    assert [b.name for b in recording.registry] == ["'person' (every occurrence)", "'dog' (every occurrence)"]
    photos = center_square(reference, SOURCE_SIZE)
    # The source map of each subject is drawn over its own photo (what the node computes, rebuilt here).
    for index, colour in ((0, "red"), (1, "blue")):
        weights = recording.averaged(index, ("input", "middle", "output"), 0, 2)[0, 1:]
        heat, photo = source_at(weights, recording.registry[index], 0.25, 0.5)
        expected = overlay(photos[index][None], normalised(heat)[None])
        torch.testing.assert_close(CAPTURED["maps:source"][index : index + 1], expected, msg=colour)
    # The browser view is given each subject's own photo (saved in ComfyUI's temp folder).
    entries = outputs[maps_id]["nested_maps"]
    assert [e["subject"].split()[0] for e in entries] == ["'person'", "'dog'"]
    assert [e["reference_index"] for e in entries] == [[0], [1]]
    person, dog = (mean_colour(e["reference"][0]) for e in entries)
    assert person[0] > 0.9 and person[2] < 0.1 and dog[2] > 0.9 and dog[0] < 0.1


def test_one_reference_photo_is_shared_and_a_wrong_count_is_refused(pack, assets):
    graph, maps_id = two_subject_maps_graph([0x00FF00])
    entries = run_with_ui(graph.prompt)[maps_id]["nested_maps"]
    assert [e["reference_index"] for e in entries] == [[0], [0]]
    assert all(mean_colour(e["reference"][0])[1] > 0.9 for e in entries)
    graph, _ = two_subject_maps_graph([0xFF0000, 0x0000FF, 0x00FF00])
    with pytest.raises(GraphError, match=r"reference has 3 photos.*give 1 or 2 photos"):
        run_prompt(graph.prompt)
    graph, maps_id = two_subject_maps_graph([])  # no reference: a grey stand-in, and no photo to name
    entries = run_with_ui(graph.prompt)[maps_id]["nested_maps"]
    assert [e["reference_index"] for e in entries] == [None, None]
    assert all(torch.allclose(mean_colour(e["reference"][0]), torch.full((3,), 0.5), atol=0.01) for e in entries)


def test_a_concat_subject_takes_one_reference_photo_per_encoded_photo(pack, assets):
    # The dog is encoded from 2 photos (concat): references red | blue, blue | green.
    graph, maps_id = two_subject_maps_graph([0xFF0000, 0x0000FF, 0x00FF00], dog_photos=2)
    entries = run_with_ui(graph.prompt)[maps_id]["nested_maps"]
    assert [e["reference_index"] for e in entries] == [[0], [1, 2]]
    assert [int(mean_colour(ref).argmax()) for ref in entries[1]["reference"]] == [2, 1]  # blue, then green
