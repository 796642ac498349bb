"""ComfyUI workflow files: building UI-format workflows, checking them, converting them to API format.

The UI format (what the front end saves and Browse Templates opens) stores widget values as a
positional list per node; their order follows the node's input definitions, with one extra value
after an INT that has ``control_after_generate`` and after a COMBO with ``image_upload``. These
helpers read the definitions from ComfyUI's own node table, so they need ComfyUI loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NOTE_TYPES = {"Note", "MarkdownNote"}


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # "INT", "COMBO", "MODEL", ...
    widget: bool
    extra_values: int  # values the UI stores after this widget (seed control, upload button)
    optional: bool
    options: dict


def node_class(class_type: str):
    import nodes

    if class_type not in nodes.NODE_CLASS_MAPPINGS:
        raise KeyError(f"node type '{class_type}' is not installed")
    return nodes.NODE_CLASS_MAPPINGS[class_type]


def input_specs(class_type: str) -> list[InputSpec]:
    """The node's inputs in definition order (required, then optional)."""
    definitions = node_class(class_type).INPUT_TYPES()
    specs = []
    for group in ("required", "optional"):
        for name, definition in definitions.get(group, {}).items():
            kind = definition[0]
            options = definition[1] if len(definition) > 1 and isinstance(definition[1], dict) else {}
            type_name = "COMBO" if isinstance(kind, list) else str(kind)
            widget = type_name in WIDGET_TYPES and not options.get("forceInput", False)
            extra = int(bool(options.get("control_after_generate"))) + int(bool(options.get("image_upload")))
            specs.append(InputSpec(name, type_name, widget, extra if widget else 0, group == "optional", options))
    return specs


def output_specs(class_type: str) -> list[tuple[str, str]]:
    """(name, type) of each output."""
    cls = node_class(class_type)
    if hasattr(cls, "GET_NODE_INFO_V1"):
        info = cls.GET_NODE_INFO_V1()
        return list(zip(info["output_name"], info["output"]))
    types = list(cls.RETURN_TYPES)
    names = list(getattr(cls, "RETURN_NAMES", None) or types)
    return list(zip(names, types))


class UIWorkflow:
    """Builds a UI-format workflow: nodes with positions, links, widget values and notes."""

    def __init__(self):
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, class_type: str, pos: tuple[int, int], title: Optional[str] = None, **widgets: Any) -> dict:
        specs = input_specs(class_type)
        unknown = set(widgets) - {s.name for s in specs if s.widget}
        if unknown:
            raise KeyError(f"{class_type} has no widget(s) {sorted(unknown)}")
        values: list[Any] = []
        for spec in specs:
            if not spec.widget:
                continue
            values.append(widgets.get(spec.name, _default(spec)))
            if spec.extra_values:
                values.append("fixed" if spec.options.get("control_after_generate") else "image")
        node = {
            "id": len(self.nodes) + 1,
            "type": class_type,
            "pos": list(pos),
            "size": [320, 60 + 26 * (len(values) + 2)],
            "flags": {},
            "order": len(self.nodes),
            "mode": 0,
            "inputs": [{"name": s.name, "type": s.type, "link": None} for s in specs if not s.widget],
            "outputs": [
                {"name": name, "type": kind, "links": [], "slot_index": i}
                for i, (name, kind) in enumerate(output_specs(class_type))
            ],
            "properties": {"Node name for S&R": class_type},
            "widgets_values": values,
        }
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def declare_models(self, node: dict, models: list[dict]) -> None:
        """Declare the model files a loader node names ({name, url, directory} each), so the front end's
        missing-models dialog can offer their download (it reads node["properties"]["models"])."""
        node["properties"]["models"] = [dict(model) for model in models]

    def note(self, text: str, pos: tuple[int, int], size: tuple[int, int] = (420, 200)) -> dict:
        node = {
            "id": len(self.nodes) + 1,
            "type": "Note",
            "pos": list(pos),
            "size": list(size),
            "flags": {},
            "order": len(self.nodes),
            "mode": 0,
            "inputs": [],
            "outputs": [],
            "properties": {},
            "widgets_values": [text],
            "color": "#432",
            "bgcolor": "#653",
        }
        self.nodes.append(node)
        return node

    def connect(self, source: dict, slot: int, target: dict, input_name: str) -> None:
        link_id = len(self.links) + 1
        kind = source["outputs"][slot]["type"]
        entry = next(i for i in target["inputs"] if i["name"] == input_name)
        entry["link"] = link_id
        source["outputs"][slot]["links"].append(link_id)
        self.links.append([link_id, source["id"], slot, target["id"], target["inputs"].index(entry), kind])

    def to_json(self) -> dict:
        return {
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
            "version": 0.4,
        }


def _default(spec: InputSpec) -> Any:
    if "default" in spec.options:
        return spec.options["default"]
    if spec.type == "COMBO":
        options = spec.options.get("options") or []
        return options[0] if options else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(spec.type)


def check_workflow(workflow: dict) -> list[str]:
    """Problems a user would hit when opening the workflow: unknown nodes, broken links, wrong widgets."""
    problems = []
    nodes = {node["id"]: node for node in workflow["nodes"]}
    for link in workflow["links"]:
        link_id, source, slot, target, target_slot, kind = link
        if source not in nodes or target not in nodes:
            problems.append(f"link {link_id} joins a missing node")
            continue
        output = nodes[source]["outputs"][slot] if slot < len(nodes[source]["outputs"]) else None
        entry = nodes[target]["inputs"][target_slot] if target_slot < len(nodes[target]["inputs"]) else None
        if output is None or link_id not in (output.get("links") or []):
            problems.append(f"link {link_id}: node {source} output {slot} does not list it")
        if entry is None or entry.get("link") != link_id:
            problems.append(f"link {link_id}: node {target} input {target_slot} does not point back to it")
        elif output is not None and not (output["type"] == kind == entry["type"] or "*" in (entry["type"], kind)):
            problems.append(f"link {link_id}: type {kind} joins {output['type']} to {entry['type']}")
    for node in workflow["nodes"]:
        if node["type"] in NOTE_TYPES:
            continue
        try:
            specs = input_specs(node["type"])
        except KeyError as error:
            problems.append(f"node {node['id']}: {error}")
            continue
        expected = sum(1 + s.extra_values for s in specs if s.widget)
        if len(node.get("widgets_values", [])) != expected:
            problems.append(
                f"node {node['id']} ({node['type']}): {len(node.get('widgets_values', []))} widget values, "
                f"expected {expected}"
            )
        sockets = [s.name for s in specs if not s.widget]
        names = [i["name"] for i in node["inputs"] if "widget" not in i]
        if names != sockets:
            problems.append(f"node {node['id']} ({node['type']}): inputs {names}, expected {sockets}")
        for entry in node["inputs"]:
            if entry["link"] is None and not next((s.optional for s in specs if s.name == entry["name"]), True):
                problems.append(
                    f"node {node['id']} ({node['type']}): required input '{entry['name']}' is not connected"
                )
        problems += [f"node {node['id']} ({node['type']}): {p}" for p in model_declaration_problems(node)]
    return problems


#: Suffixes the front end's missing-models dialog downloads.
DOWNLOADABLE = (".safetensors", ".sft")


def model_declaration_problems(node: dict) -> list[str]:
    """Problems of a node's properties.models that would make the front end drop an entry or refuse
    the workflow: its schema needs name, url and directory; the dialog only lists an entry whose name
    is a widget value of the node, and only downloads https URLs of .safetensors/.sft files."""
    problems = []
    values = {v for v in node.get("widgets_values", []) if isinstance(v, str)}
    for model in node.get("properties", {}).get("models", []):
        if set(model) != {"name", "url", "directory"} or not all(isinstance(v, str) and v for v in model.values()):
            problems.append(f"model entry {model} needs exactly name, url and directory")
            continue
        if model["name"] not in values:
            problems.append(f"declares {model['name']}, which none of its widgets names")
        if not model["url"].startswith("https://") or not model["name"].endswith(DOWNLOADABLE):
            problems.append(f"{model['name']}: the dialog downloads only https URLs of {DOWNLOADABLE} files")
    return problems


def ui_to_api(workflow: dict) -> dict[str, dict]:
    """The API-format prompt of a UI workflow (notes dropped, muted/bypassed nodes not supported)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in NOTE_TYPES:
            continue
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']} is muted or bypassed; not supported here")
        values = iter(node.get("widgets_values", []))
        connected = {entry["name"]: links[entry["link"]] for entry in node["inputs"] if entry.get("link") is not None}
        inputs: dict[str, Any] = {}
        for spec in input_specs(node["type"]):
            if spec.widget:
                value = next(values)
                for _ in range(spec.extra_values):
                    next(values)
                inputs[spec.name] = value
            if spec.name in connected:
                link = connected[spec.name]
                inputs[spec.name] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {
            "class_type": node["type"],
            "inputs": inputs,
            "_meta": {"title": node.get("title", node["type"])},
        }
    return prompt


def remap(prompt: dict[str, dict], class_types: dict[str, str], values: dict[tuple[str, str], Any]) -> dict:
    """A copy of ``prompt`` with node types replaced and widget values (class_type, input) -> value set."""
    out = {}
    for node_id, node in prompt.items():
        class_type = node["class_type"]
        inputs = dict(node["inputs"])
        for (kind, name), value in values.items():
            if kind == class_type and name in inputs and not isinstance(inputs[name], list):
                inputs[name] = value(inputs[name]) if callable(value) else value
        new_type = class_types.get(class_type, class_type)
        if new_type != class_type:
            keep = {s.name for s in input_specs(new_type)}
            inputs = {k: v for k, v in inputs.items() if k in keep}
        out[node_id] = {**node, "class_type": new_type, "inputs": inputs}
    return out


def node_ids_of(prompt: dict[str, dict], class_type: str) -> Iterable[str]:
    return [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]
