"""Samplers by name (lazy imports: the vLLM and OpenAI clients load only when chosen)."""

from selfimprove.registry import Registry
from selfimprove.samplers.base import Sampler, SamplingParams

SAMPLERS: Registry[type[Sampler]] = Registry("sampler")
SAMPLERS.register("transformers", "selfimprove.samplers.hf:TransformersSampler")
SAMPLERS.register("vllm", "selfimprove.samplers.vllm:VllmSampler")
SAMPLERS.register("openai", "selfimprove.samplers.openai:OpenAISampler")
SAMPLERS.register("scripted", "selfimprove.samplers.scripted:ScriptedSampler")  # a fake for orchestration tests

__all__ = ["SAMPLERS", "Sampler", "SamplingParams"]
