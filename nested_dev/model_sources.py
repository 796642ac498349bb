"""Where each model file the example workflows name comes from: one list for the README's model table,
the workflows' model declarations (what ComfyUI's missing-models dialog offers to download) and their
notes.

    python -m nested_dev.model_sources      # prints the README table

The front end reads a loader node's ``properties.models``: entries ``{name, url, directory}`` whose
``name`` is one of the node's widget values (front end 1.32: ``getSelectedModelsMetadata`` on loading a
workflow, listing the entries not found in the folder; 1.58: the missing-models scan, which also takes
the entry's ``directory`` as the folder of a loader it does not know, such as Load Nested Adapter). Its
workflow schema requires a URL in every entry, so a file without a known public URL is not declared:
the workflow's note says where to get it.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Optional

HF = "https://huggingface.co"
NESTED_RELEASE = f"{HF}/orpatashnik/NestedAttentionEncoder"


@dataclass(frozen=True)
class ModelFile:
    """One model file: the name the workflows use, its models/ folder and a direct download URL."""

    name: str  # the file name in the folder (the loaders' widget value; the desktop app saves it so)
    folder: str  # the ComfyUI model folder, e.g. "checkpoints" for models/checkpoints
    url: Optional[str]  # a direct download; None where no public file name is known
    what: str  # what it is, for people
    how: str = ""  # anything to do besides downloading it to the folder

    def declaration(self) -> dict:
        """The entry of a loader node's properties.models (only for a file with a URL)."""
        if self.url is None:
            raise ValueError(f"{self.name} has no download URL to declare")
        return {"name": self.name, "url": self.url, "directory": self.folder}


MODELS: tuple[ModelFile, ...] = (
    ModelFile(
        "sd_xl_base_1.0.safetensors",
        "checkpoints",
        f"{HF}/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
        "SDXL base (any SDXL finetune works too)",
    ),
    ModelFile(
        "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
        "clip_vision",
        f"{HF}/h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors",
        "CLIP ViT-H/14 image encoder (the image_encoder of h94/IP-Adapter)",
        "a browser saves it as model.safetensors: rename it",
    ),
    ModelFile(
        "nested_attention_faces_sdxl.safetensors",
        "nested_adapters",
        None,
        "the official nested adapter for faces, SDXL",
        f"from {NESTED_RELEASE} (CC-BY-NC-SA-4.0, non-commercial); its file names could not be checked, "
        "so save the faces adapter under this name (or pick yours in Load Nested Adapter)",
    ),
    ModelFile(
        "nested_attention_pets_sdxl.safetensors",
        "nested_adapters",
        None,
        "the official nested adapter for pets, SDXL",
        f"from {NESTED_RELEASE} (CC-BY-NC-SA-4.0, non-commercial); its file names could not be checked, "
        "so save the pets adapter under this name (or pick yours in Load Nested Adapter)",
    ),
    ModelFile(
        "ip-adapter-plus-face_sdxl_vit-h.safetensors",
        "nested_adapters",
        f"{HF}/h94/IP-Adapter/resolve/main/sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors",
        "IP-Adapter-Plus face, SDXL, loaded as a nested adapter",
    ),
    ModelFile(
        "ip-adapter-plus_sdxl_vit-h.safetensors",
        "nested_adapters",
        f"{HF}/h94/IP-Adapter/resolve/main/sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
        "IP-Adapter-Plus, SDXL, loaded as a nested adapter",
    ),
    ModelFile(
        "ip-adapter-plus-face_sd15.safetensors",
        "nested_adapters",
        f"{HF}/h94/IP-Adapter/resolve/main/models/ip-adapter-plus-face_sd15.safetensors",
        "IP-Adapter-Plus face, SD1.5, loaded as a nested adapter",
    ),
    ModelFile(
        "ip-adapter-plus_sd15.safetensors",
        "nested_adapters",
        f"{HF}/h94/IP-Adapter/resolve/main/models/ip-adapter-plus_sd15.safetensors",
        "IP-Adapter-Plus, SD1.5, loaded as a nested adapter",
    ),
)
BY_NAME = {model.name: model for model in MODELS}

#: The loader nodes whose widget names a model file, and that file's folder.
LOADERS = {
    "CheckpointLoaderSimple": "checkpoints",
    "CLIPVisionLoader": "clip_vision",
    "LoadNestedAdapter": "nested_adapters",
}

TABLE_HEADER = "| file | folder | download |\n|---|---|---|"
_ROW = re.compile(r"^\| `(?P<name>[^`]+)`: (?P<what>.*?) \| `models/(?P<folder>[^`]+)` \| (?P<where>.*) \|$")
_LINK = re.compile(r"^\[[^\]]+\]\((?P<url>https://[^)\s]+)\)")


def link_text(url: str) -> str:
    """'owner/repo: path/in/repo' for a Hugging Face file URL (the URL itself otherwise)."""
    match = re.fullmatch(r"https://huggingface\.co/([^/]+/[^/]+)/resolve/[^/]+/(.+)", url)
    return f"{match[1]}: {match[2]}" if match else url


def table_row(model: ModelFile) -> str:
    """One row of the README table: file and what it is | folder | link (or where to get it), and how."""
    if model.url:
        where = f"[{link_text(model.url)}]({model.url})"
        where += f"; {model.how}" if model.how else ""
    else:
        where = f"no direct link: {model.how}"
    return f"| `{model.name}`: {model.what} | `models/{model.folder}` | {where} |"


def readme_table() -> str:
    """The README's "Models: where each file goes" table."""
    return "\n".join([TABLE_HEADER, *(table_row(model) for model in MODELS)])


def parse_table(markdown: str) -> list[tuple[str, str, Optional[str]]]:
    """(name, folder, url or None) of each row of the table under the README's models heading."""
    heading = "## Models: where each file goes"
    section = markdown.split(heading, 1)[-1].split("\n## ", 1)[0]
    if heading not in markdown or TABLE_HEADER not in section:
        raise ValueError(
            f"README: no table starting with {TABLE_HEADER.splitlines()[0]!r} under {heading!r}; "
            "paste the output of python -m nested_dev.model_sources"
        )
    start = section.index(TABLE_HEADER) + len(TABLE_HEADER)
    rows = []
    for line in section[start:].lstrip("\n").splitlines():
        if not line.startswith("|"):
            break
        match = _ROW.match(line)
        if match is None:
            raise ValueError(f"README model table: row not in the expected form: {line}")
        link = _LINK.match(match["where"])
        rows.append((match["name"], match["folder"], link["url"] if link else None))
    return rows


def files_note(names: list[str]) -> str:
    """The workflow note's part on models: where each file the workflow names goes and how to get it."""
    lines = ["Models (the missing-models dialog offers the ones with a download link):"]
    for name in names:
        model = BY_NAME[name]
        how = "Download link in the workflow" if model.url else "No download link"
        detail = f"; {model.how}" if model.how else ""
        lines.append(f"- {model.name} -> models/{model.folder}: {model.what}. {how}{detail}.")
    lines.append("Reference photos go in ComfyUI/input (a square crop of the face works best for people).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(readme_table() + "\n")
