"""Write the example workflows in workflows/ (UI format) from the definitions below.

    python -m nested_dev.make_workflows      # needs the dev environment (./dev env)

The files are committed; tests check that they match these definitions and run them on tiny models.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Optional

from .comfy_env import PACK_ROOT, load_pack, prepare_comfyui
from .model_sources import BY_NAME, LOADERS, files_note
from .workflows import UIWorkflow

SDXL = "sd_xl_base_1.0.safetensors"
CLIP_VISION = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
FACES = "nested_attention_faces_sdxl.safetensors"
PETS = "nested_attention_pets_sdxl.safetensors"
IPA_FACE = "ip-adapter-plus-face_sdxl_vit-h.safetensors"
IPA_AS_NESTED_WEIGHT = 0.25  # toy_world/results/results.md, "ipa-as-nested" over the weight
NEGATIVE = "blurry, low quality, deformed, watermark, text"


@dataclass(frozen=True)
class Base:
    """Which loaders, image size and sampler settings a family of workflows uses."""

    checkpoint: tuple[str, dict]
    vision: tuple[str, dict]
    size: int
    steps: int
    cfg: float
    sampler: tuple[str, str]
    negative: str
    files_note: Optional[str]  # None: from nested_dev.model_sources, for the files the workflow names


SDXL_BASE = Base(
    ("CheckpointLoaderSimple", {"ckpt_name": SDXL}),
    ("CLIPVisionLoader", {"clip_name": CLIP_VISION}),
    1024,
    30,
    5.0,
    ("dpmpp_2m", "karras"),
    NEGATIVE,
    None,
)
TOY_BASE = Base(
    ("NestedDevToyCheckpoint", {}),
    ("NestedDevToyCLIPVision", {}),
    64,
    20,
    3.0,
    ("euler", "normal"),
    "",
    "Toy world (toy_world/): the small models this project trained on its own procedural world.",
)
TOY_ADAPTER = "toy_nested.safetensors"
#: The demo's photos (nested_dev/demo.py writes them): held-out objects, a creature and a robot.
TOY_PHOTOS = ("subject_a.png", "subject_b.png")


class Scaffold:
    """A workflow with the usual scaffolding: checkpoint, CLIP vision, prompts, sampler, save."""

    def __init__(
        self,
        positive: str,
        steps: Optional[int] = None,
        cfg: Optional[float] = None,
        seed: int = 42,
        base: Base = SDXL_BASE,
    ):
        self.w = UIWorkflow()
        self.base = base
        self.checkpoint = self.loader(base.checkpoint[0], (20, 60), **base.checkpoint[1])
        self.vision = self.loader(base.vision[0], (20, 260), **base.vision[1])
        self.positive_text, self.seed = positive, seed
        self.steps, self.cfg = steps or base.steps, cfg or base.cfg
        self.model, self.model_slot = self.checkpoint, 0
        self.row = 380
        self.photos: list[dict] = []  # the Load Image node of each subject, in order

    def loader(self, class_type: str, pos: tuple[int, int], **widgets: str) -> dict:
        """A loader node; a model file with a public URL is declared on it for the missing-models dialog."""
        node = self.w.add(class_type, pos, **widgets)
        model = BY_NAME.get(next(iter(widgets.values()), "")) if class_type in LOADERS else None
        if model is not None and model.url:
            self.w.declare_models(node, [model.declaration()])
        return node

    def model_files(self) -> list[str]:
        """The model files the workflow's loaders name, in node order."""
        names = [n["widgets_values"][0] for n in self.w.nodes if n["type"] in LOADERS]
        return list(dict.fromkeys(names))

    def adapter(self, name: str, column: int = 380, row: int = 60) -> dict:
        return self.loader("LoadNestedAdapter", (column, row), adapter_name=name)

    def subject(self, adapter: dict, photo: str, title: str, mask_from_alpha: bool = False) -> dict:
        image = self.w.add("LoadImage", (20, self.row), title=f"{title}: reference photo", image=photo)
        encode = self.w.add("EncodeSubjectQFormer", (380, self.row), title=f"Encode {title}", combine="average")
        self.w.connect(adapter, 0, encode, "adapter")
        self.w.connect(self.vision, 0, encode, "clip_vision")
        self.w.connect(image, 0, encode, "image")
        self.photos.append(image)
        if mask_from_alpha:
            self.w.connect(image, 1, encode, "mask")
        self.row += 360
        return encode

    def half_mask(self, side: str, width: int, height: int) -> dict:
        """Core mask nodes making a mask that is 1 on the ``side`` ("left"/"right") half of the image."""
        column, row = 380, self.row
        canvas = self.w.add("SolidMask", (column, row), title="Empty canvas", value=0.0, width=width, height=height)
        half = self.w.add(
            "SolidMask",
            (column, row + 140),
            title=f"{side.capitalize()} half",
            value=1.0,
            width=width // 2,
            height=height,
        )
        mask = self.w.add(
            "MaskComposite",
            (column, row + 280),
            title=f"Where it may appear: the {side} half",
            x=width // 2 if side == "right" else 0,
            y=0,
            operation="add",
        )
        self.w.connect(canvas, 0, mask, "destination")
        self.w.connect(half, 0, mask, "source")
        self.row += 460
        return mask

    def apply(
        self,
        adapter: dict,
        subject: dict,
        token: str,
        title: str,
        occurrence: int = 0,
        weight: float = 1.0,
        mask: Optional[tuple[dict, int]] = None,
    ) -> dict:
        column = 760 + 340 * sum(1 for n in self.w.nodes if n["type"] == "ApplyNestedAttention")
        node = self.w.add(
            "ApplyNestedAttention",
            (column, 60),
            title=title,
            token=token,
            weight=weight,
            start_at=0.0,
            end_at=1.0,
            occurrence=occurrence,
        )
        self.w.connect(self.model, self.model_slot, node, "model")
        self.w.connect(adapter, 0, node, "adapter")
        self.w.connect(subject, 0, node, "subject")
        if mask is not None:
            self.w.connect(mask[0], mask[1], node, "attn_mask")
        self.model, self.model_slot = node, 0
        return node

    def finish(self, prefix: str, note: str) -> dict:
        x = 760 + 340 * max(1, sum(1 for n in self.w.nodes if n["type"] == "ApplyNestedAttention"))
        positive = self.w.add("NestedTextEncode", (760, 420), title="Positive prompt", text=self.positive_text)
        negative = self.w.add("NestedTextEncode", (760, 700), title="Negative prompt", text=self.base.negative)
        for encoder in (positive, negative):
            self.w.connect(self.checkpoint, 1, encoder, "clip")
        size = self.base.size
        latent = self.w.add("EmptyLatentImage", (x, 420), width=size, height=size, batch_size=1)
        sampler = self.w.add(
            "KSampler",
            (x + 340, 60),
            seed=self.seed,
            steps=self.steps,
            cfg=self.cfg,
            sampler_name=self.base.sampler[0],
            scheduler=self.base.sampler[1],
            denoise=1.0,
        )
        self.w.connect(self.model, self.model_slot, sampler, "model")
        self.w.connect(positive, 0, sampler, "positive")
        self.w.connect(negative, 0, sampler, "negative")
        self.w.connect(latent, 0, sampler, "latent_image")
        decode = self.w.add("VAEDecode", (x + 680, 60))
        self.w.connect(sampler, 0, decode, "samples")
        self.w.connect(self.checkpoint, 2, decode, "vae")
        save = self.w.add("SaveImage", (x + 680, 200), filename_prefix=prefix)
        self.w.connect(decode, 0, save, "images")
        if self.base.files_note is not None:
            self.w.note(note + "\n\n" + self.base.files_note, (20, self.row), (700, 220))
        else:
            self.w.note(note + "\n\n" + files_note(self.model_files()), (20, self.row), (700, 320))
        return self.w.to_json()


def one_subject() -> dict:
    scaffold = Scaffold("a photo of a person as an astronaut on the moon, earth in the sky, cinematic lighting")
    faces = scaffold.adapter(FACES)
    subject = scaffold.subject(faces, "person.png", "Person")
    scaffold.apply(faces, subject, "person", "Bind the person")
    return scaffold.finish(
        "nested_one_subject",
        "ONE SUBJECT. The word 'person' in the prompt becomes the person in "
        "the photo. Keep the word in the prompt; change everything else freely.",
    )


def person_and_dog() -> dict:
    scaffold = Scaffold("a photo of a person hugging a dog in a snowy forest, golden hour, 35mm")
    faces, pets = scaffold.adapter(FACES), scaffold.adapter(PETS, row=200)
    person = scaffold.subject(faces, "person.png", "Person")
    dog = scaffold.subject(pets, "dog.png", "Dog")
    scaffold.apply(faces, person, "person", "Bind the person")
    scaffold.apply(pets, dog, "dog", "Bind the dog")
    return scaffold.finish(
        "nested_person_and_dog",
        "TWO SUBJECTS, TWO DOMAINS. A face adapter binds 'person', a pet "
        "adapter binds 'dog'; each word takes its own subject. Chain one Apply node per subject.",
    )


def two_people() -> dict:
    scaffold = Scaffold("a person shaking hands with another person in a busy office, photo")
    faces = scaffold.adapter(FACES)
    first = scaffold.subject(faces, "person_a.png", "First person")
    second = scaffold.subject(faces, "person_b.png", "Second person")
    scaffold.apply(faces, first, "person", "Bind the 1st 'person'", occurrence=1)
    scaffold.apply(faces, second, "person", "Bind the 2nd 'person'", occurrence=2)
    return scaffold.finish(
        "nested_two_people",
        "TWO PEOPLE, ONE WORD. Both subjects use the word 'person': occurrence "
        "1 binds the first 'person' in the prompt, occurrence 2 the second.",
    )


def region_mask() -> dict:
    scaffold = Scaffold("a photo of a person sitting on a bench in a park, autumn, wide shot")
    faces = scaffold.adapter(FACES)
    subject = scaffold.subject(faces, "person.png", "Person", mask_from_alpha=True)
    mask = scaffold.half_mask("right", 1024, 1024)
    scaffold.apply(faces, subject, "person", "Bind the person (right half)", mask=(mask, 0))
    return scaffold.finish(
        "nested_region_mask",
        "REGION MASK. attn_mask (right half here) limits where the subject "
        "acts; elsewhere 'person' stays a plain word. The reference photo's alpha channel, if it has "
        "one, removes its background before encoding (Encode's mask input).",
    )


def ip_adapter_plus() -> dict:
    scaffold = Scaffold("a watercolor painting of a person reading in a library")
    adapter = scaffold.adapter(IPA_FACE)
    subject = scaffold.subject(adapter, "person.png", "Person")
    # The weight: in the toy world an IP-Adapter-trained file applied as a nested adapter gave its best
    # identity with the prompt kept (within 0.02 of no adapter) at 0.25 (README, "Proof in a toy world").
    scaffold.apply(adapter, subject, "person", "Bind the person", weight=IPA_AS_NESTED_WEIGHT)
    return scaffold.finish(
        "nested_ip_adapter_plus",
        "AN IP-ADAPTER-PLUS FILE AS THE NESTED ADAPTER. Load Nested Adapter "
        "reads ip-adapter-plus(-face) files (SD1.5 or SDXL): their resampler is the Q-Former and their "
        "per-layer K/V projections give the nested keys and values. They were trained for IP-Adapter, "
        "not for nested attention, so expect weaker identity than a nested adapter. The weight starts "
        f"at {IPA_AS_NESTED_WEIGHT}: in the toy world that kept the prompt as well as no adapter with "
        "the identity of weight 1; raise it while the prompt holds.",
    )


def attention_maps(
    base: Base = SDXL_BASE,
    adapter: str = FACES,
    photo_name: str = "person.png",
    word: str = "person",
    text: str = "a photo of a person playing the violin on a stage, spotlight",
    others: tuple[tuple[str, str, str], ...] = (),
) -> dict:
    """Record and show the maps of one subject (adapter, photo, word), or of several: ``others`` adds
    more (adapter, photo, word) subjects, and the maps node then gets one reference photo per subject
    (Batch Images), in the order the subjects are bound."""
    subjects = ((adapter, photo_name, word), *others)
    scaffold = Scaffold(text, steps=25 if base is SDXL_BASE else None, base=base)
    adapters: dict[str, dict] = {}
    for name, _, _ in subjects:
        if name not in adapters:
            adapters[name] = scaffold.adapter(name, row=60 + 140 * len(adapters))
    encoded = [scaffold.subject(adapters[name], photo, bound.capitalize()) for name, photo, bound in subjects]
    photos = list(scaffold.photos)
    for (name, _, bound), subject in zip(subjects, encoded):
        scaffold.apply(adapters[name], subject, bound, f"Bind the {bound}")
    column = 760 + 340 * len(subjects)
    recorder = scaffold.w.add("RecordNestedAttention", (column, 60), grid=32, value_layer="", value_at=0.5)
    scaffold.w.connect(scaffold.model, scaffold.model_slot, recorder, "model")
    scaffold.model, scaffold.model_slot = recorder, 0
    workflow = scaffold.finish(
        "nested_attention_maps",
        "ATTENTION MAPS. Record Nested Attention (after the Apply nodes) "
        "makes the sampler record what the subject does; Nested Attention Maps turns it into "
        "images: where the word acts, which region of the reference photo a point draws from "
        "(click the generated image in the node to move the point), and the per-position values "
        "v*_q beside the word's single plain value.",
    )
    w = scaffold.w
    decode = next(n for n in w.nodes if n["type"] == "VAEDecode")
    maps = w.add(
        "NestedAttentionMaps",
        (decode["pos"][0], 420),
        point_x=0.5,
        point_y=0.35,
        parts="all",
        first_step=0.0,
        last_step=1.0,
    )
    w.connect(recorder, 1, maps, "recording")
    w.connect(decode, 0, maps, "images")
    reference = photos[0]
    for row, photo in enumerate(photos[1:]):
        batch = w.add("ImageBatch", (380, scaffold.row + 340 + 120 * row), title="Reference photos, one per subject")
        w.connect(reference, 0, batch, "image1")
        w.connect(photo, 0, batch, "image2")
        reference = batch
    w.connect(reference, 0, maps, "reference")
    for slot, title in enumerate(("Where the subject acts", "Source region", "Per-query values")):
        preview = w.add("PreviewImage", (decode["pos"][0] + 560, 420 + 300 * slot), title=title)
        w.connect(maps, slot, preview, "images")
    workflow.update(w.to_json())
    return workflow


def toy_one_subject() -> dict:
    scaffold = Scaffold("blue background, at the top left a creature", base=TOY_BASE)
    adapter = scaffold.adapter(TOY_ADAPTER)
    subject = scaffold.subject(adapter, TOY_PHOTOS[0], "Creature")
    scaffold.apply(adapter, subject, "creature", "Bind the creature")
    return scaffold.finish(
        "toy_one_subject",
        "ONE SUBJECT in the toy world: the held-out creature of the photo, drawn where and on what the prompt says.",
    )


def toy_two_subjects() -> dict:
    scaffold = Scaffold("yellow background, on the left a creature and on the right a robot", base=TOY_BASE)
    adapter = scaffold.adapter(TOY_ADAPTER)
    creature = scaffold.subject(adapter, TOY_PHOTOS[0], "Creature")
    robot = scaffold.subject(adapter, TOY_PHOTOS[1], "Robot")
    scaffold.apply(adapter, creature, "creature", "Bind the creature")
    scaffold.apply(adapter, robot, "robot", "Bind the robot")
    return scaffold.finish(
        "toy_two_subjects",
        "TWO SUBJECTS of two classes in the toy world, without masks: each bound to its own word, each drawn "
        "where its word's attention lands (see the README's toy-world section).",
    )


def toy_maps() -> dict:
    return attention_maps(
        TOY_BASE, TOY_ADAPTER, TOY_PHOTOS[0], "creature", "green background, in the center a creature"
    )


TOY_WORKFLOWS = {
    "toy_one_subject.json": toy_one_subject,
    "toy_two_subjects.json": toy_two_subjects,
    "toy_attention_maps.json": toy_maps,
}

WORKFLOWS = {
    "one_subject_sdxl.json": one_subject,
    "two_subjects_person_and_dog.json": person_and_dog,
    "two_people_same_word.json": two_people,
    "subject_with_region_mask.json": region_mask,
    "ip_adapter_plus_as_nested_adapter.json": ip_adapter_plus,
    "attention_maps.json": attention_maps,
}
DEMO_WORKFLOW = "two_subjects_person_and_dog.json"


def main() -> int:
    prepare_comfyui()
    import asyncio

    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    load_pack()
    from .dev_nodes import register

    register()
    for folder, workflows in (
        (PACK_ROOT / "workflows", WORKFLOWS),
        (PACK_ROOT / "toy_world" / "workflows", TOY_WORKFLOWS),
    ):
        folder.mkdir(exist_ok=True)
        for name, build in workflows.items():
            (folder / name).write_text(json.dumps(build(), indent=1) + "\n")
            print(f"wrote {folder.relative_to(PACK_ROOT)}/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
