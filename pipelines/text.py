"""Text pipeline (torch side): a `GenerateJob` -> prompt token ids, `SamplingParams` and a `Presenter`.

Prompts are encoded as they are; chat messages are rendered with the checkpoint's chat template
(generation prompt added). For a reasoning family the prompt decides how the output is read: a
prompt ending in the opening tag (Ring-mini-2.0's template) starts the output inside the reasoning;
`enable_thinking=false` closes such a block right away (when the template itself has no switch),
and `thinking_budget` adds a `ThinkingBudget` logits processor. Sampling options the client left
unset come from the checkpoint's generation_config.json, then the engine's defaults. Every problem a
client can cause raises `RequestError` with a message that names the offending field.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from engine.diffusion.params import DiffusionParams
from engine.engine import LLMEngine
from engine.errors import RequestError
from engine.multimodal import MediaInputs
from engine.passing_thread import in_passing_thread
from engine.sampling_params import LogitsProcessor, SamplingParams
from models.family import Family, ThinkTags, ToolCallTags
from pipelines.media import MediaPipeline
from pipelines.output import Presenter, ReasoningMode
from pipelines.protocol import MAX_SAMPLES, GenerateJob, Sampling
from pipelines.reasoning import ThinkingBudget
from pipelines.structured import AnswerGate, job_grammar, parses_tool_calls, wants_grammar

# Makes a fresh logits processor for one request from the model's tokenizer (worker option).
ProcessorFactory = Callable[[Any], LogitsProcessor]

# generation_config.json keys that act as defaults for unset sampling fields (as vLLM reads them)
_CHECKPOINT_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
_ROLES = frozenset({"system", "user", "assistant", "tool"})
_MEDIA_NAMES = {"image": "an image", "audio": "an audio clip", "video": "a video"}


@dataclass(frozen=True)
class Prepared:
    """What the engine and the emitter need for one job."""

    prompt_ids: list[int]
    params: SamplingParams
    presenter: Presenter
    media: MediaInputs | None = None  # a multimodal prompt's processor tensors


def prepare(
    job: GenerateJob,
    engine: LLMEngine,
    family: Family,
    defaults: Mapping[str, Any],
    default_max_tokens: int = 256,
    processor_factories: Sequence[ProcessorFactory] = (),
    media: MediaPipeline | None = None,
) -> Prepared:
    """The job as engine inputs; raises RequestError naming the field for anything a client got wrong.

    A multimodal family's jobs (`media`: its `MediaPipeline`) get their prompt from the family's
    processor (chat format, media decoding, placeholder expansion) instead of the chat template.
    """
    mode, mm = None, None
    if job.task == "transcribe" and media is None:
        raise RequestError(f"model '{job.model}' does not transcribe audio (it takes text only)")
    if media is not None:
        built = in_passing_thread(media.build, job)  # torch work off the task thread: engine.passing_thread
        ids, mm = built.ids, built.media
    else:
        text = prompt_text(job, engine)
        if family.reasoning is not None:
            text, mode = reasoning_mode(text, family.reasoning, job.enable_thinking)
        ids = engine.encode(text)
    budget = job.thinking_budget
    if budget is not None and mode is None:
        raise RequestError(
            f"reasoning.thinking_budget applies to reasoning models; model '{job.model}' answers directly"
        )
    diffusion = getattr(engine.model, "diffusion", False)
    if diffusion:  # LLaDA2's generate() decodes greedily unless told otherwise
        defaults = {"temperature": 0.0, **defaults}
    params = sampling_params(job.sampling, defaults, engine.max_model_len, len(ids), default_max_tokens)
    if job.diffusion is not None:
        if not diffusion:
            raise RequestError(
                f"diffusion options apply to diffusion models (e.g. llada2); "
                f"model '{job.model}' is autoregressive"
            )
        params.diffusion = diffusion_params(job.diffusion)
    processors = [make(engine.tokenizer) for make in processor_factories]
    if budget is not None:
        processors.append(ThinkingBudget(engine.tokenizer, ids, mode.tags, mode.starts_in_reasoning, budget))
    params.logits_processors = [] if diffusion else processors  # ThinkingBudget last: its forced token wins
    tools = structure_output(job, engine, family, params, ids, mode)
    presenter = Presenter(params.n, mode, engine.tokenizer, ids, tools, params.logprobs)
    return Prepared(ids, params, presenter, mm)


def structure_output(
    job: GenerateJob,
    engine: LLMEngine,
    family: Family,
    params: SamplingParams,
    ids: list[int],
    mode: ReasoningMode | None,
) -> ToolCallTags | None:
    """Hold the output to the job's grammar (if any); returns the call format to read the reply with.

    A reasoning model whose output starts in its think block reasons freely: the grammar starts after
    the block. Replies read for tool calls keep their special tokens (the call tags are special tokens).
    A diffusion model is held to the grammar too, committing its blocks left to right
    (engine/diffusion/constrained.py).
    """
    if parses_tool_calls(job):
        if family.tool_calls is None:
            raise RequestError(f"model '{job.model}' does not take tools")
        params.skip_special_tokens = False
    if wants_grammar(job):
        gate = (
            AnswerGate(engine.tokenizer, ids, mode) if mode is not None and mode.starts_in_reasoning else None
        )
        grammar = job_grammar(job, family, leading_space=gate is not None)
        params.constraint = engine.structured.get().constraint(grammar, gate)
        if job.sampling.min_tokens is None:  # the grammar says where the answer ends, not a default floor
            params.min_tokens = 0
    return family.tool_calls if parses_tool_calls(job) else None


# ---- prompt --------------------------------------------------------------------------------------
def prompt_ids(job: GenerateJob, engine: LLMEngine) -> list[int]:
    """The job's prompt as token ids: `prompt` encoded, or `messages` rendered by the chat template."""
    return engine.encode(prompt_text(job, engine))


def prompt_text(job: GenerateJob, engine: LLMEngine) -> str:
    """The job's prompt as text: `prompt` as it is, or `messages` rendered by the chat template."""
    has_prompt, has_messages = job.prompt is not None, job.messages is not None
    if has_prompt == has_messages:
        raise RequestError("set exactly one of prompt and messages")
    if has_prompt:
        if not isinstance(job.prompt, str):
            raise RequestError(f"prompt must be a string, got {type(job.prompt).__name__}")
        return job.prompt
    return render_chat(job, engine)


def reasoning_mode(text: str, tags: ThinkTags, enable_thinking: bool | None) -> tuple[str, ReasoningMode]:
    """(prompt, how to read the output): a prompt ending in the opening tag starts in the reasoning.

    enable_thinking=False with such a prompt (the template has no switch, e.g. Ring-mini-2.0's):
    the block is closed in the prompt, so the model answers directly.
    """
    opened = text.rstrip().endswith(tags.open)
    if opened and enable_thinking is False:
        return text + tags.forced_close, ReasoningMode(tags, starts_in_reasoning=False)
    return text, ReasoningMode(tags, starts_in_reasoning=opened)


def render_chat(job: GenerateJob, engine: LLMEngine) -> str:
    """The conversation rendered with the checkpoint's chat template, ending in the assistant's turn."""
    if not job.messages:
        raise RequestError("messages must hold at least one message")
    conversation = [_message_dict(job, i) for i in range(len(job.messages))]
    tokenizer = engine.tokenizer
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise RequestError(f"model '{job.model}' has no chat template: send a prompt instead of messages")
    kwargs: dict[str, Any] = {}
    if job.enable_thinking is not None:
        kwargs["enable_thinking"] = bool(job.enable_thinking)
    if job.tools:
        kwargs["tools"] = template_tools(job)
    try:
        return tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True, **kwargs
        )
    except Exception as exc:  # jinja2 TemplateError from raise_exception(), bad content shapes
        raise RequestError(f"cannot render the chat template: {exc}") from None


def template_tools(job: GenerateJob) -> list[dict[str, Any]]:
    """The job's tools as chat templates take them (OpenAI's shape, parameters as a mapping)."""
    tools = []
    for t in job.tools:
        function: dict[str, Any] = {"name": t.name}
        if t.description:
            function["description"] = t.description
        function["parameters"] = json.loads(t.parameters)
        tools.append({"type": "function", "function": function})
    return tools


def _message_dict(job: GenerateJob, i: int) -> dict[str, Any]:
    """messages[i] as the template expects it ({"role", "content"}, text parts joined by newlines, and
    an assistant turn's `tool_calls` / a tool turn's `tool_call_id` in OpenAI's shape with the
    arguments as a mapping, as Hugging Face chat templates take them)."""
    message = job.messages[i]
    if message.role not in _ROLES:
        raise RequestError(f"messages[{i}].role must be one of {sorted(_ROLES)}, got {message.role!r}")
    texts = []
    for j, part in enumerate(message.parts):
        if part.type != "text":
            kind = _MEDIA_NAMES.get(part.type, f"a part of unknown type {part.type!r}")
            raise RequestError(f"model '{job.model}' accepts only text; messages[{i}].content[{j}] is {kind}")
        if not isinstance(part.text, str):
            raise RequestError(f"messages[{i}].content[{j}].text must be a string")
        texts.append(part.text)
    out: dict[str, Any] = {"role": message.role, "content": "\n".join(texts)}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.loads(c.arguments)},
            }
            for c in message.tool_calls
        ]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


# ---- sampling ------------------------------------------------------------------------------------
_DIFFUSION_FIELDS = frozenset(
    ("block_length", "steps", "threshold", "decoder", "low_threshold", "eos_early_stop", "prefix_cache")
)


def diffusion_params(options: Mapping[str, Any]) -> DiffusionParams:
    """The job's diffusion options as engine DiffusionParams (RequestError naming a bad field)."""
    if not isinstance(options, Mapping) or not set(options) <= _DIFFUSION_FIELDS:
        raise RequestError(f"diffusion options must be among {sorted(_DIFFUSION_FIELDS)}, got {options!r}")
    return DiffusionParams(**options)


def sampling_params(
    sampling: Sampling,
    defaults: Mapping[str, Any],
    max_model_len: int,
    prompt_len: int,
    default_max_tokens: int = 256,
) -> SamplingParams:
    """Engine SamplingParams: the client's values, else the checkpoint's `defaults`, else the engine's.

    max_tokens unset -> the checkpoint's max_new_tokens or `default_max_tokens`, capped at what is
    left of the context; set but too large for the context -> RequestError. min_tokens unset -> the
    checkpoint's min_new_tokens (capped at max_tokens), if any.
    """
    n = sampling.n
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SAMPLES:
        raise RequestError(f"sampling.n must be an integer in [1, {MAX_SAMPLES}], got {n!r}")
    room = max_model_len - prompt_len
    if room <= 0:
        raise RequestError(f"prompt has {prompt_len} tokens; the model's context is {max_model_len}")
    max_tokens = _max_tokens(sampling.max_tokens, defaults, max_model_len, prompt_len, default_max_tokens)
    kwargs: dict[str, Any] = {"max_tokens": max_tokens, "n": n}
    for name in _CHECKPOINT_DEFAULTS:
        value = getattr(sampling, name)
        if value is None:
            value = defaults.get(name)
        if value is not None:
            kwargs[name] = value
    floor = defaults.get("min_new_tokens")  # transformers' GenerationConfig field: no EOS before it
    if sampling.min_tokens is None and isinstance(floor, int) and not isinstance(floor, bool) and floor > 0:
        kwargs["min_tokens"] = min(floor, max_tokens)
    for f in fields(Sampling):
        if f.name in kwargs or f.name in _CHECKPOINT_DEFAULTS or f.name in ("n", "max_tokens"):
            continue
        value = getattr(sampling, f.name)
        if value is not None:
            kwargs[f.name] = list(value) if isinstance(value, tuple) else value
    return SamplingParams(**kwargs)


def _max_tokens(
    requested: Any, defaults: Mapping[str, Any], max_model_len: int, prompt_len: int, default_max_tokens: int
) -> int:
    room = max_model_len - prompt_len
    if requested is None:
        fallback = defaults.get("max_new_tokens")
        if isinstance(fallback, bool) or not isinstance(fallback, int) or fallback < 1:
            fallback = default_max_tokens
        return min(fallback, room)
    if isinstance(requested, int) and not isinstance(requested, bool) and requested > room:
        raise RequestError(
            f"max_tokens is {requested}, but the prompt ({prompt_len} tokens) leaves room for only {room} "
            f"new tokens in the model's context of {max_model_len}"
        )
    return requested  # other invalid values are reported by SamplingParams


def import_factory(path: str) -> ProcessorFactory:
    """'module:factory' -> the callable (at startup: a wrong path stops the worker with a clear error)."""
    module, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load the logits processor factory {path!r}: {exc}") from exc
    if not callable(factory):
        raise ValueError(f"logits processor factory {path!r} is not callable")
    return factory
