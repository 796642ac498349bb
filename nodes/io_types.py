"""The pack's custom ComfyUI types: each always carries the same Python object."""

from comfy_api.latest import io

#: NESTED_ADAPTER carries a nodes.adapter_runtime.LoadedAdapter.
NestedAdapterIO = io.Custom("NESTED_ADAPTER")
#: NESTED_SUBJECT carries a nested_core.subject.SubjectTokens.
NestedSubjectIO = io.Custom("NESTED_SUBJECT")

CATEGORY = "nested_attention"
ADAPTER_FOLDER = "nested_adapters"
SUBJECT_FOLDER = "nested_subjects"
