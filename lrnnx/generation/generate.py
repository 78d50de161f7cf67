"""Autoregressive decoding for :class:`lrnnx.models.LM`: parallel prefill, recurrent decode.

Every lrnnx layer is a recurrence with a state (attention's is its KV cache), so decoding is

1. prefill: ``logits, state = model(prompt, return_state=True)`` runs the prompt in parallel
   (chunked scans, flash attention) and returns every layer's state;
2. decode: ``logits, state = model.step(token, state)`` once per new token, O(1) per token for
   the LRNN layers (O(cache) for attention).  On CUDA the whole step is replayed from a CUDA
   graph over static buffers (:mod:`lrnnx.generation.cuda_graph`), since at small batch sizes
   the step is bound by kernel-launch overhead rather than by the GPU.

Tokens are chosen by :func:`lrnnx.generation.sampling.sample_logits` (greedy, temperature,
top-k, top-p).

Example::

    lm = lrnnx.build_model("s4d*2 + attn", d_model=64, vocab_size=100).eval()
    prompt = torch.randint(0, 100, (4, 8))
    out = generate(lm, prompt, 32, temperature=0.7, top_p=0.9,
                   generator=torch.Generator().manual_seed(0))          # (4, 40)
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch

from lrnnx.errors import BackendUnavailableError, InputError, InputTypeError

from .cuda_graph import NotGraphable, decoder_for
from .sampling import sample_logits

__all__ = ["generate", "check_generate_args"]

#: with eos_token_id, whether every sequence has finished is checked every this many tokens (the
#: check synchronizes with the GPU, so doing it every token would stall the decode loop)
EOS_CHECK_EVERY = 16


def _int_arg(name: str, value, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"generate: {name} must be an int{' or None' if optional else ''}, "
                             f"got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise InputError(f"generate: {name} must be >= {minimum}, got {value}.")


def check_generate_args(model, input_ids, max_new_tokens, temperature, top_k, top_p,
                        eos_token_id, cuda_graph, generator) -> bool:
    """Validate the arguments of :func:`generate`; returns whether to use a CUDA graph."""
    if not all(hasattr(model, a) for a in ("step", "vocab_size", "embedding", "backbone",
                                           "_check_ids")):
        raise InputTypeError(f"generate: model must be an lrnnx LM (built by "
                             f"lrnnx.build_model(spec, d_model, vocab_size=V)), got "
                             f"{type(model).__name__}.")
    model._check_ids(input_ids, "input_ids", 2)
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise InputError(f"generate: input_ids must hold at least one sequence of at least one "
                         f"token, got shape {tuple(input_ids.shape)}; start each sequence with "
                         f"a BOS token.")
    dev = model.embedding.weight.device
    if input_ids.device != dev:
        raise InputError(f"generate: input_ids are on {input_ids.device} but the model is on "
                         f"{dev}; move them with input_ids.to({str(dev)!r}).")
    _int_arg("max_new_tokens", max_new_tokens, 0)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise InputTypeError(f"generate: temperature must be a number >= 0, got "
                             f"{type(temperature).__name__} {temperature!r}.")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise InputError(f"generate: temperature must be a finite number >= 0 (0 = greedy), "
                         f"got {temperature}.")
    _int_arg("top_k", top_k, 1, optional=True)
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real):
            raise InputTypeError(f"generate: top_p must be a number in (0, 1] or None, got "
                                 f"{type(top_p).__name__} {top_p!r}.")
        if not 0 < top_p <= 1:
            raise InputError(f"generate: top_p must be in (0, 1] (the probability mass kept), "
                             f"got {top_p}; use None to disable nucleus sampling.")
    _int_arg("eos_token_id", eos_token_id, 0, optional=True)
    if eos_token_id is not None and eos_token_id >= model.vocab_size:
        raise InputError(f"generate: eos_token_id must be in [0, vocab_size={model.vocab_size}),"
                         f" got {eos_token_id}.")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise InputTypeError(f"generate: generator must be a torch.Generator or None, got "
                                 f"{type(generator).__name__}.")
        if generator.device.type != dev.type:
            raise InputError(f"generate: generator is on {generator.device} but the model is "
                             f"on {dev}; create it with torch.Generator(device={str(dev)!r}).")
    if not (cuda_graph == "auto" if isinstance(cuda_graph, str) else
            isinstance(cuda_graph, bool)):
        raise InputError(f"generate: cuda_graph must be 'auto', True or False, got "
                         f"{cuda_graph!r}.")
    if cuda_graph is True:
        if dev.type != "cuda":
            raise BackendUnavailableError(
                f"generate: cuda_graph=True needs the model on a CUDA device, but it is on "
                f"{dev}; move the model and prompt with model.cuda() / input_ids.cuda(), or pass "
                f"cuda_graph='auto' (uses a graph only on CUDA) or False.")
        if model.training:
            raise InputError("generate: cuda_graph=True needs the model in eval mode (dropout "
                             "cannot be replayed from a graph); call model.eval() first.")
        return True
    return cuda_graph == "auto" and dev.type == "cuda" and not model.training


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             eos_token_id: int | None = None, cuda_graph: bool | str = "auto",
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend each prompt of ``input_ids`` (B, L) by ``max_new_tokens`` tokens.

    Returns (B, L + max_new_tokens) int64: the prompt, then the new tokens.
    ``temperature``: 0 is greedy (argmax); > 0 divides the logits before sampling.
    ``top_k``: sample among the k most likely tokens; ``top_p``: among the smallest set of most
    likely tokens holding probability mass ``top_p`` (both optional, applied in that order).
    ``eos_token_id``: once a sequence emits it, it keeps emitting it (the length is fixed).
    ``cuda_graph``: "auto" replays the decode step from a CUDA graph when the model is on CUDA
    and in eval mode, falling back to eager steps (with a warning) if the step cannot be
    captured; True requires the graph (errors otherwise); False always steps eagerly.  Greedy
    decoding gives the same tokens either way (up to float ties).
    ``generator``: a ``torch.Generator`` on the model's device, for reproducible sampling.

    Runs under ``torch.no_grad()`` and does not change train/eval mode: call ``model.eval()``
    first (dropout would otherwise be active in the eager path).
    """
    use_graph = check_generate_args(model, input_ids, max_new_tokens, temperature, top_k, top_p,
                                    eos_token_id, cuda_graph, generator)
    B, L = input_ids.shape
    out = torch.empty(B, L + max_new_tokens, dtype=torch.long, device=input_ids.device)
    out[:, :L] = input_ids
    if max_new_tokens == 0:
        return out
    logits, state = model(input_ids, return_state=True)
    logits = logits[:, -1]
    step = _decode_fn(model, state, B, L + max_new_tokens, use_graph, cuda_graph)
    finished = torch.zeros(B, dtype=torch.bool, device=out.device)
    for i in range(max_new_tokens):
        tok = sample_logits(logits, temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            tok = torch.where(finished, eos_token_id, tok)
            finished |= tok == eos_token_id
        out[:, L + i] = tok
        if i == max_new_tokens - 1:
            break
        if eos_token_id is not None and (i + 1) % EOS_CHECK_EVERY == 0 and bool(finished.all()):
            out[:, L + i + 1:] = eos_token_id
            break
        logits = step(tok)
    return out


def _decode_fn(model, state, batch_size: int, n_tokens: int, use_graph: bool, cuda_graph):
    """``step(tokens) -> logits``: graph replay, or eager ``model.step`` on a held state."""
    if use_graph:
        try:
            return decoder_for(model, state, batch_size, n_tokens, graph=True).step
        except (NotGraphable, RuntimeError) as exc:
            if cuda_graph is True:
                raise BackendUnavailableError(
                    f"generate: the decode step of this model cannot be captured in a CUDA "
                    f"graph: {exc}. Use cuda_graph='auto' or False to decode eagerly.") from exc
            warnings.warn(f"generate: decoding eagerly, the CUDA graph capture failed: {exc}",
                          RuntimeWarning, stacklevel=3)
    held = [state]

    def step(tok):
        logits, held[0] = model.step(tok, held[0])
        return logits

    return step
