"""The pack's custom ComfyUI types: each always carries the same Python object."""

from comfy_api.latest import io

#: NESTED_ADAPTER carries a nodes.adapter_runtime.LoadedAdapter.
NestedAdapterIO = io.Custom("NESTED_ADAPTER")
#: NESTED_SUBJECT carries a nested_core.subject.SubjectTokens.
NestedSubjectIO = io.Custom("NESTED_SUBJECT")
#: NESTED_RECORDING carries a nodes.recording.Recording.
NestedRecordingIO = io.Custom("NESTED_RECORDING")

CATEGORY = "nested_attention"
