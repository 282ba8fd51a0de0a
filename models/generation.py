"""Decoding shared by text-generation, text2text-generation and chat.

One path for all three: a prepared ``Request`` (prompt token ids and the job's
``GenerationOptions``) goes through ``generate`` and comes back as a
``Completion`` (text, finish reason, token counts). What it guarantees:

- temperature 0 is greedy; otherwise sampling with temperature, top_p and top_k
  (top_k unset means no top-k cut). Every option is passed explicitly, so a
  model's own ``generation_config.json`` cannot change what a job asked for.
- A sampled item runs alone under its own seed (``fork_rng`` + ``manual_seed``),
  so the same seed gives the same text whatever else is in the batch. Greedy items
  with identical options share one left-padded ``generate`` call.
- Stop strings are matched in the generated text only (never across the prompt),
  generation halts when one appears, and the text is cut before it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from jobs.errors import InvalidInput
from jobs.schemas import GenerationOptions
from models.base import StopSignal

STOP_WINDOW_SLACK_TOKENS = 4  # tokens beyond a stop string's byte length decoded to look for it
SEED_BOUND = 2**32  # seeds are uint32, as in the input schema

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Request:
    """One prepared item: the prompt's token ids and how to decode."""

    input_ids: list[int]
    options: GenerationOptions
    num_beams: int = 1
    continues_prompt: bool = False  # text-generation: decode the completion as a continuation of the prompt


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


def use_padding(tokenizer: Any, *, side: str) -> None:
    """Pad on ``side``; a tokenizer without a pad token (GPT-2) pads with its end-of-text token."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = side


def check_fits(model: Any, *, prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse a prompt that leaves no room for ``max_new_tokens`` in the model's context."""
    if prompt_tokens == 0:
        raise InvalidInput("the prompt encodes to no tokens")
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if context is None:  # relative positions (T5): no fixed context
        return
    if model.config.is_encoder_decoder:  # the encoder reads the prompt, the decoder writes after its start token
        if prompt_tokens > context or max_new_tokens >= context:
            raise InvalidInput(
                f"the text is {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}, but this model reads "
                f"at most {context} tokens and writes at most {context - 1}; shorten the text or lower max_new_tokens"
            )
        return
    if prompt_tokens + max_new_tokens > context:
        raise InvalidInput(
            f"the prompt is {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}, but this model reads "
            f"at most {context} tokens in all; shorten the prompt or lower max_new_tokens"
        )


def generate_kwargs(options: GenerationOptions, *, num_beams: int = 1) -> dict[str, Any]:
    """``generate`` arguments for ``options``: greedy at temperature 0, sampling otherwise."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": options.max_new_tokens,
        "num_beams": num_beams,
        "num_return_sequences": 1,
        "repetition_penalty": options.repetition_penalty,
    }
    if options.temperature == 0:
        kwargs["do_sample"] = False
    else:
        kwargs.update(
            do_sample=True,
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=options.top_k or 0,  # 0 turns off the top-k cut (transformers defaults to 50)
        )
    return kwargs


def batch_key(request: Request) -> tuple[Any, ...] | None:
    """Requests with equal keys may share one ``generate`` call; None means run alone.

    Sampling shares one random stream across a batch, so a sampled item runs alone to
    keep its seed meaningful. A repetition penalty would also penalize the left padding
    of the shorter prompts, so those run alone too.
    """
    options = request.options
    if options.temperature != 0 or options.repetition_penalty != 1.0:
        return None
    return (options.max_new_tokens, tuple(options.stop), request.num_beams, request.continues_prompt)


@contextmanager
def seeded(seed: int, *, device: str) -> Iterator[None]:
    """Seed torch for one item without disturbing the process's random state."""
    place = torch.device(device)
    if place.type == "cuda":
        index = place.index if place.index is not None else torch.cuda.current_device()
        forked = torch.random.fork_rng(devices=[index], device_type="cuda")
    else:
        forked = torch.random.fork_rng(devices=[])
    with forked:
        torch.manual_seed(seed)
        yield


def first_stop(text: str, stop: list[str]) -> int | None:
    """Where the earliest stop string in ``text`` begins, if any."""
    found = [at for at in (text.find(s) for s in stop if s) if at >= 0]
    return min(found) if found else None


class StopOnStrings(StoppingCriteria):
    """Halt a row once a stop string appears in its generated tokens (from ``start`` on)."""

    def __init__(self, tokenizer: Any, stop: list[str], *, start: int) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.start = start
        # Every token decodes to at least one byte, so this many tokens cover any stop string.
        self.window = max(len(s.encode("utf-8")) for s in self.stop) + STOP_WINDOW_SLACK_TOKENS

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        begin = max(self.start, input_ids.shape[1] - self.window)
        tails = self.tokenizer.batch_decode(input_ids[:, begin:].tolist(), skip_special_tokens=True)
        hits = [first_stop(tail, self.stop) is not None for tail in tails]
        return torch.tensor(hits, dtype=torch.bool, device=input_ids.device)


class StopOnSignal(StoppingCriteria):
    """Halt every row when the runner asks (soft time limit, cancel): checked after each token."""

    def __init__(self, signal: StopSignal) -> None:
        self.signal = signal

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.signal.is_set(), dtype=torch.bool, device=input_ids.device)


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end a completion: the generation config's, else the tokenizer's."""
    configured = model.generation_config.eos_token_id
    if configured is None:
        configured = tokenizer.eos_token_id
    if configured is None:
        return set()
    return {int(configured)} if isinstance(configured, int) else {int(i) for i in configured}


def decode(tokenizer: Any, token_ids: list[int], *, prefix_ids: list[int] | None) -> str:
    """The text of ``token_ids``; after ``prefix_ids`` when given, so a leading space survives."""
    if not prefix_ids:
        return str(tokenizer.decode(token_ids, skip_special_tokens=True))
    prefix = tokenizer.decode(prefix_ids, skip_special_tokens=True)
    whole = tokenizer.decode(prefix_ids + token_ids, skip_special_tokens=True)
    if whole.startswith(prefix):
        return str(whole[len(prefix) :])
    return str(tokenizer.decode(token_ids, skip_special_tokens=True))


def tokens_through_stop(tokenizer: Any, token_ids: list[int], stop: list[str], *, prefix_ids: list[int] | None) -> int:
    """The fewest leading tokens whose text already contains a stop string (binary search)."""
    low, high = 1, len(token_ids)
    while low < high:
        middle = (low + high) // 2
        if first_stop(decode(tokenizer, token_ids[:middle], prefix_ids=prefix_ids), stop) is None:
            low = middle + 1
        else:
            high = middle
    return high


def finish(
    tokenizer: Any,
    token_ids: list[int],
    *,
    ends: set[int],
    stop: list[str],
    prompt_ids: list[int],
    continues_prompt: bool,
) -> Completion:
    """Text, finish reason and usage of one row of generated tokens (padding after its end ignored)."""
    end = next((i for i, token in enumerate(token_ids) if token in ends), None)
    body = token_ids if end is None else token_ids[:end]
    prefix_ids = prompt_ids if continues_prompt else None
    text = decode(tokenizer, body, prefix_ids=prefix_ids)
    cut = first_stop(text, stop)
    if cut is not None:
        used = tokens_through_stop(tokenizer, body, stop, prefix_ids=prefix_ids)
        return Completion(text[:cut], "stop", len(prompt_ids), used)
    if end is not None:
        return Completion(text, "stop", len(prompt_ids), end + 1)  # the end-of-text token counts as generated
    return Completion(text, "length", len(prompt_ids), len(token_ids))


def generate_group(
    model: Any, tokenizer: Any, requests: list[Request], *, device: str, stop: StopSignal
) -> list[Completion]:
    """One ``generate`` call for requests with the same batch key (or a single request);
    it ends early, raising TimedOut or Cancelled, when ``stop`` is set."""
    options, first = requests[0].options, requests[0]
    encoder_decoder = bool(model.config.is_encoder_decoder)
    encoded = tokenizer.pad(
        {"input_ids": [request.input_ids for request in requests]},
        padding=True,
        padding_side="right" if encoder_decoder else "left",
        return_attention_mask=True,
        return_tensors="pt",
    ).to(device)
    start = 1 if encoder_decoder else encoded["input_ids"].shape[1]  # the decoder starts from one token
    kwargs = generate_kwargs(options, num_beams=first.num_beams)
    kwargs["pad_token_id"] = tokenizer.pad_token_id  # what the rows were padded with (GPT-2: its eos)
    stop_strings = [s for s in options.stop if s]
    criteria: list[StoppingCriteria] = [StopOnSignal(stop)]
    if stop_strings:
        criteria.append(StopOnStrings(tokenizer, stop_strings, start=start))
    kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
    with torch.inference_mode():
        if kwargs["do_sample"]:
            seed = options.seed if options.seed is not None else secrets.randbelow(SEED_BOUND)
            with seeded(seed, device=device):
                sequences = model.generate(**encoded, **kwargs)
        else:
            sequences = model.generate(**encoded, **kwargs)
    stop.check()
    ends = eos_ids(model, tokenizer)
    return [
        finish(
            tokenizer,
            row[start:].tolist(),
            ends=ends,
            stop=stop_strings,
            prompt_ids=request.input_ids,
            continues_prompt=request.continues_prompt,
        )
        for row, request in zip(sequences, requests, strict=True)
    ]


def generate(
    model: Any, tokenizer: Any, requests: list[Request], *, device: str, stop: StopSignal | None = None
) -> list[Completion]:
    """Completions for ``requests``, in order; compatible greedy requests share a call.
    ``stop`` ends the work between tokens (see models.base.StopSignal)."""
    signal = stop or StopSignal()
    groups: dict[tuple[Any, ...], list[int]] = {}
    alone: list[list[int]] = []
    for index, request in enumerate(requests):
        key = batch_key(request)
        if key is None:
            alone.append([index])
        else:
            groups.setdefault(key, []).append(index)
    completions: dict[int, Completion] = {}
    for indices in [*groups.values(), *alone]:
        done = generate_group(model, tokenizer, [requests[i] for i in indices], device=device, stop=signal)
        completions.update(zip(indices, done, strict=True))
    return [completions[index] for index in range(len(requests))]
