"""The three pictures of Nested Attention Maps, from a recording: where each subject acted, which
region of the reference photo a point draws from, and the per-query values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..nested_core.errors import NestedAttentionError
from ..nested_core.images import center_square
from ..nested_core.maps import pca_rgb, source_heatmap
from .contract import SubjectBinding
from .map_images import mark_point, normalised, overlay
from .recording import PARTS, Recording

SOURCE_SIZE = 256


@dataclass(frozen=True)
class RenderedMaps:
    subject_maps: Tensor  # [S * B, H, W, 3], the point marked
    source_maps: Tensor  # [S, 256, 256, 3]
    value_maps: Tensor  # [S', 256, W', 3]
    photos: Tensor  # the reference photos as shown, [P, 256, 256, 3]
    payload: list[dict]  # per subject, what the browser view needs to redraw the source map; its
    # "reference_index" lists the places in `photos` of the subject's own photos


def photos_needed(binding: SubjectBinding) -> int:
    """How many reference photos a subject's source map is drawn on: one per photo it was encoded from
    with combine=concat (its tokens remember their photo), else one (averaged tokens)."""
    if binding.token_photo is None or int(binding.token_photo.max()) < 0:
        return 1
    return int(binding.token_photo.max()) + 1


def assign_photos(needed: list[int], count: int, names: list[str]) -> list[list[int]]:
    """Which photos of a reference batch of ``count`` each subject uses, subjects in binding order:

    * one photo: shared by every subject (and every photo of a subject);
    * one photo per subject: each subject's photo, also for all the photos of a concat subject;
    * one photo per encoded photo (the sum of ``needed``): each subject takes its photos in turn.

    NestedAttentionError for any other count, saying which counts fit."""
    if count == 1:
        return [[0] * n for n in needed]
    if count == len(needed):
        return [[s] * n for s, n in enumerate(needed)]
    if count == sum(needed):
        starts = [sum(needed[:s]) for s in range(len(needed))]
        return [list(range(start, start + n)) for start, n in zip(starts, needed)]
    per_photo = ", ".join(f"{name} x{n}" for name, n in zip(names, needed))
    fits = sorted({1, len(needed), sum(needed)})
    raise NestedAttentionError(
        f"Nested Attention Maps: reference has {count} photos, but the recording has {len(needed)} subject(s) "
        f"({', '.join(names)}); give {' or '.join(str(n) for n in fits)} photos: one shared by all, one per "
        f"subject in the order the Apply nodes are chained, or every subject's encoded photos in that order "
        f"({per_photo}). Batch several Load Image nodes with 'Batch Images'."
    )


def render_maps(
    recording: Recording,
    images: Tensor,
    point_x: float,
    point_y: float,
    parts: str,
    first_step: float,
    last_step: float,
    reference: Optional[Tensor] = None,
) -> RenderedMaps:
    """Average the recorded maps of the chosen parts ("all" or one of PARTS) and fraction of the
    steps, and draw them; NestedAttentionError when nothing of that was recorded."""
    if not recording.traces:
        raise NestedAttentionError(
            "Nested Attention Maps: nothing was recorded. Sample with the MODEL output of Record Nested Attention "
            "(after the Apply nodes), with prompts from Nested Text Encode that contain the subjects' words."
        )
    chosen = list(PARTS) if parts == "all" else [parts]
    last = max(recording.steps - 1, 0)
    steps = (round(first_step * last), round(last_step * last))
    photos = (
        center_square(reference, SOURCE_SIZE)
        if reference is not None
        else torch.full((1, SOURCE_SIZE, SOURCE_SIZE, 3), 0.5)
    )
    registry = recording.registry
    assigned = assign_photos(
        [photos_needed(b) for b in registry], photos.shape[0], [b.name for b in registry]
    )  # per bound subject, its photos' places in `photos`
    subject_maps, source_maps, value_maps, payload = [], [], [], []
    for index in sorted(recording.traces):
        trace = recording.traces[index]
        maps = recording.averaged(index, chosen, *steps)
        if maps is None:
            continue
        binding = recording.registry[index]
        acting = normalised(maps[:, 0])  # [B, gh, gw]
        subject_maps.append(overlay(images[: acting.shape[0]], acting))
        weights = maps[0, 1:]  # [T, gh, gw]
        source, photo = source_at(weights, binding, point_x, point_y)
        own = assigned[index]
        base = photos[own[min(max(photo, 0), len(own) - 1)]][None]
        source_maps.append(overlay(base, normalised(source)[None]) if source is not None else base)
        if trace.values is not None:
            value_maps.append(value_image(trace.values[0], trace.class_value))
        payload.append(browser_payload(binding, weights, trace.name) | {"reference_index": own})
    if not subject_maps:
        raise NestedAttentionError(
            f"Nested Attention Maps: no subject was recorded in parts '{parts}' between steps {steps[0]} and {steps[1]}"
        )
    marked = [mark_point(m, point_x, point_y) for m in subject_maps]
    values = torch.cat(value_maps) if value_maps else torch.zeros(1, 64, 128, 3)
    return RenderedMaps(torch.cat(marked), torch.cat(source_maps), values, photos, payload)


def source_at(weights: Tensor, binding: SubjectBinding, x: float, y: float) -> tuple[Optional[Tensor], int]:
    """Heatmap [g, g] over the reference photo for the cell at (x, y), and which photo it is on."""
    if binding.patch_maps is None:
        return None, 0
    gh, gw = weights.shape[1:]
    cell = weights[:, min(int(y * gh), gh - 1), min(int(x * gw), gw - 1)]  # [T]
    photos = binding.token_photo
    photo = 0
    if photos is not None and int(photos.max()) >= 0:
        mass = torch.zeros(int(photos.max()) + 1).index_add_(0, photos.clamp_min(0), cell)
        photo = int(mass.argmax())
        cell = torch.where(photos == photo, cell, torch.zeros_like(cell))
    cell = cell / cell.sum().clamp_min(1e-12)
    return source_heatmap(cell, binding.patch_maps), photo


def value_image(values: Tensor, class_value: Optional[Tensor], height: int = 256) -> Tensor:
    """PCA colours of v*_q over the grid, beside the constant colour of the plain value V_s*."""
    channels, gh, gw = values.shape
    vectors = values.reshape(channels, gh * gw).T  # [cells, inner]
    if class_value is not None:
        vectors = torch.cat([vectors, class_value[None].float()])
    colours = pca_rgb(vectors)
    nested = colours[: gh * gw].T.reshape(3, gh, gw)
    width = max(1, round(height * gw / gh))
    left = torch.nn.functional.interpolate(nested[None], size=(height, width), mode="nearest")[0].permute(1, 2, 0)
    right = colours[-1].expand(height, width, 3) if class_value is not None else torch.zeros(height, width, 3)
    gap = torch.ones(height, 4, 3)
    return torch.cat([left, gap, right], dim=1)[None]


def browser_payload(binding: SubjectBinding, weights: Tensor, name: str) -> dict:
    """What the browser needs to redraw the source map for any clicked cell."""
    entry = {"subject": name, "grid": list(weights.shape[1:]), "tokens": weights.shape[0]}
    if binding.patch_maps is not None:
        entry["weights"] = [round(float(v), 4) for v in weights.permute(1, 2, 0).reshape(-1)]
        entry["patch_grid"] = list(binding.patch_maps.shape[1:])
        entry["patch_maps"] = [round(float(v), 5) for v in binding.patch_maps.reshape(-1)]
        entry["token_photo"] = [int(v) for v in binding.token_photo] if binding.token_photo is not None else None
    return entry
