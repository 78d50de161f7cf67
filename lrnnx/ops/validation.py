"""Input validation of the public scan ops, run before any backend is chosen or kernel is called.

Every error is an :class:`~lrnnx.errors.InputError` (wrong shape / value / device) or
:class:`~lrnnx.errors.InputTypeError` (not a tensor, wrong dtype) whose message reads::

    lrnnx.ops.<op>: <argument> must be <expected>, got <actual>; <remedy>.

so a user never sees a raw ``TORCH_CHECK`` / ``IndexError`` from deep inside a kernel.  Checks that
need tensor *values* (``cu_seqlens`` monotone, starting at 0, ending at L) force a host sync, so
they are skipped while ``torch.compile`` traces or a CUDA graph is being captured.

Dtype rules (shared by all backends):

* every tensor argument is floating point or complex (never integer / bool);
* precisions may differ (autocast mixes fp32 decays with bf16 inputs); the result is promoted;
* a *real* recurrence cannot start from a *complex* state (``h0`` / ``state`` complex while the
  scan is real): that would silently turn the whole output complex, so it is an error;
* ``u``, ``delta``, ``z``, ``D``, ``delta_bias``, ``timesteps`` of the selective scan are real.
"""

from __future__ import annotations

from typing import NoReturn

import torch

from ..errors import InputError, InputTypeError, close_matches

INT_DTYPES = (torch.int32, torch.int64)


def fail(op: str, arg: str, expected: str, actual: str, remedy: str,
         cls: type[Exception] = InputError) -> NoReturn:
    """Raise ``cls`` with the standard ``op: arg must be expected, got actual; remedy.`` text."""
    end = "" if remedy.endswith(("?", ".")) else "."
    raise cls(f"lrnnx.ops.{op}: {arg} must be {expected}, got {actual}; {remedy}{end}")


def values_checkable(t: torch.Tensor) -> bool:
    """False while tracing / capturing, where reading tensor values would break the graph."""
    if torch.compiler.is_compiling():
        return False
    if t.is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    return True


def shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def tensor(op: str, arg: str, t, expected: str, *, optional: bool = False) -> bool:
    """Check ``t`` is a Tensor (or None when ``optional``); return whether it is present."""
    if t is None:
        if optional:
            return False
        fail(op, arg, f"a torch.Tensor of shape {expected}", "None",
             f"pass {arg} (it is required)", InputTypeError)
    if not isinstance(t, torch.Tensor):
        fail(op, arg, f"a torch.Tensor of shape {expected}", type(t).__name__,
             f"convert it with torch.as_tensor({arg})", InputTypeError)
    return True


def float_or_complex(op: str, arg: str, t: torch.Tensor, *, real: bool = False) -> None:
    if real:
        if not t.is_floating_point():
            fail(op, arg, "a real floating-point tensor (float16/bfloat16/float32/float64)",
                 f"dtype {t.dtype}",
                 f"use {arg}.real" if t.is_complex() else f"convert it with {arg}.float()",
                 InputTypeError)
    elif not (t.is_floating_point() or t.is_complex()):
        fail(op, arg, "a floating-point or complex tensor", f"dtype {t.dtype}",
             f"convert it with {arg}.float()", InputTypeError)


def flag(op: str, arg: str, v) -> None:
    if not isinstance(v, bool):
        fail(op, arg, "a bool", f"{type(v).__name__} {v!r}", f"pass {arg}=True or {arg}=False",
             InputTypeError)


def same_device(op: str, ref_arg: str, device: torch.device, arg: str, t: torch.Tensor) -> None:
    if t.device != device:
        fail(op, arg, f"on the same device as {ref_arg} ({device})", f"device {t.device}",
             f"move it with {arg}.to({ref_arg}.device)")


def real_state(op: str, arg: str, t: torch.Tensor, scan_is_complex: bool) -> None:
    if t.is_complex() and not scan_is_complex:
        fail(op, arg, "real because the recurrence is real (every other input is real)",
             f"complex dtype {t.dtype}",
             f"pass {arg}.real, or make the inputs complex if a complex state is intended",
             InputTypeError)


def cu_seqlens(op: str, cu, *, B: int, L: int, device: torch.device) -> int:
    """Validate packed-sequence offsets; return the number of sequences."""
    tensor(op, "cu_seqlens", cu, "(N_seq + 1,)")
    if cu.dtype not in INT_DTYPES:
        fail(op, "cu_seqlens", "an int32/int64 tensor of offsets [0, l1, l1+l2, ..., L]",
             f"dtype {cu.dtype}", "convert it with cu_seqlens.long()", InputTypeError)
    if cu.dim() != 1 or cu.numel() < 2:
        fail(op, "cu_seqlens", "1-D with at least 2 entries [0, ..., L]", f"shape {shape(cu)}",
             "build it as torch.tensor([0, l1, l1 + l2, ..., L])")
    if B != 1:
        fail(op, "b", "of batch size 1 when cu_seqlens is given (sequences packed along L)",
             f"batch size {B}", "pack the sequences with torch.cat(seqs, dim=1)")
    if cu.device != device:
        fail(op, "cu_seqlens", f"on the device of the inputs ({device})", f"device {cu.device}",
             "move it with cu_seqlens.to(b.device)")
    if values_checkable(cu):
        vals = cu.tolist()
        if vals[0] != 0 or vals[-1] != L:
            fail(op, "cu_seqlens", f"offsets starting at 0 and ending at L={L}",
                 f"{vals[0]} ... {vals[-1]}",
                 "the last offset is the total packed length b.shape[1]")
        if any(y < x for x, y in zip(vals, vals[1:])):
            fail(op, "cu_seqlens", "non-decreasing", str(vals),
                 "offsets are cumulative sums of the sequence lengths (lengths >= 0)")
    return cu.numel() - 1


def discretization(op: str, method, methods: tuple[str, ...]) -> None:
    if not isinstance(method, str):
        fail(op, "discretization", f"one of {', '.join(methods)}",
             f"{type(method).__name__} {method!r}", "pass the method name as a string",
             InputTypeError)
    if method not in methods:
        sugg = close_matches(method, methods)
        hint = f"did you mean {', '.join(repr(s) for s in sugg)}?" if sugg else \
            f"choose one of {', '.join(methods)}"
        fail(op, "discretization", f"one of {', '.join(methods)}", repr(method), hint)


def per_channel(op: str, arg: str, t, Dm: int, device: torch.device) -> None:
    """Optional real (Dm,) vector: ``D`` or ``delta_bias``."""
    if not tensor(op, arg, t, f"({Dm},)", optional=True):
        return
    if tuple(t.shape) != (Dm,):
        fail(op, arg, f"of shape ({Dm},) (one value per channel)", f"shape {shape(t)}",
             f"give one value per channel of u (Dm={Dm})")
    float_or_complex(op, arg, t, real=True)
    same_device(op, "u", device, arg, t)


def grouped_bc(op: str, arg: str, t, lead: tuple[int, ...], lead_names: str, Dm: int, N: int,
               device: torch.device) -> int:
    """``B``/``C`` of shape (*lead, N) or grouped (*lead, G, N); returns G."""
    want = f"({lead_names}, N) or ({lead_names}, G, N)"
    tensor(op, arg, t, want)
    k = len(lead)
    if t.dim() not in (k + 1, k + 2) or tuple(t.shape[:k]) != lead:
        fail(op, arg, f"of shape {want} with ({lead_names}) = {lead}", f"shape {shape(t)}",
             f"{arg} is input-dependent: one row per token, matching u's leading dims")
    if t.shape[-1] != N:
        fail(op, arg, f"of state size N={N} in its last dim (A is (Dm, N))",
             f"shape {shape(t)}", f"make A and {arg} agree on d_state")
    G = 1 if t.dim() == k + 1 else t.shape[-2]
    if G < 1 or Dm % G != 0:
        fail(op, arg, f"grouped with a number of groups G dividing Dm={Dm}",
             f"G={G} (shape {shape(t)})",
             f"use G in {[g for g in range(1, Dm + 1) if Dm % g == 0]}")
    float_or_complex(op, arg, t)
    same_device(op, "u", device, arg, t)
    return G


# --------------------------------------------------------------------------- op-level checks
def check_diag(op: str, a, b, h0, *, step: bool, reverse=False, cu=None) -> dict:
    """Validate ``diag_scan`` (``step=False``) or ``diag_step`` inputs.

    Returns the problem description used for backend selection.
    """
    sfx = "_t" if step else ""
    an, bn, hn = f"a{sfx}", f"b{sfx}", "h" if step else "h0"
    want_b = "(B, D)" if step else "(B, L, D)"
    tensor(op, bn, b, want_b)
    tensor(op, an, a, f"{want_b} or {'(1, D)' if step else '(1, L, D)'}")
    rank = 2 if step else 3
    if b.dim() != rank:
        remedy = ("for a whole sequence call lrnnx.ops.diag_scan" if step else
                  "add the batch dim with b[None]; for one token call lrnnx.ops.diag_step")
        fail(op, bn, f"of rank {rank} {want_b}", f"shape {shape(b)}", remedy)
    Bsz, D = b.shape[0], b.shape[-1]
    if a.dim() != rank or a.shape[1:] != b.shape[1:] or a.shape[0] not in (1, Bsz):
        full = tuple(b.shape)
        fail(op, an, f"of shape {full} like {bn}, or {(1, *full[1:])} to share it across the "
             "batch", f"shape {shape(a)}",
             f"{an} holds one decay per {'channel' if step else 'token and channel'}, aligned "
             f"with {bn}")
    float_or_complex(op, an, a)
    float_or_complex(op, bn, b)
    same_device(op, bn, b.device, an, a)
    is_complex = a.is_complex() or b.is_complex()
    L = 1 if step else b.shape[1]
    nseq = Bsz
    if not step:
        flag(op, "reverse", reverse)
        if cu is not None:
            nseq = cu_seqlens(op, cu, B=Bsz, L=L, device=b.device)
    if tensor(op, hn, h0, f"({nseq}, {D})", optional=True):
        if tuple(h0.shape) != (nseq, D):
            per = "one row per packed sequence (N_seq = len(cu_seqlens) - 1)" if cu is not None \
                else "one row per batch element"
            fail(op, hn, f"of shape {(nseq, D)} ({per})", f"shape {shape(h0)}",
                 f"pass the state returned by a previous call, or None for zeros")
        float_or_complex(op, hn, h0)
        same_device(op, bn, b.device, hn, h0)
        real_state(op, hn, h0, is_complex)
    tensors = (a, b, h0)
    return {
        "device": b.device.type,
        "dtype": torch.promote_types(a.dtype, b.dtype),
        "complex": is_complex,
        "varlen": cu is not None,
        "reverse": bool(reverse),
        "requires_grad": torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in tensors),
        "L": L,
        "width": (Bsz if cu is None else cu.numel() - 1) * b.shape[-1],  # parallel channels
        "broadcast_a": a.shape[0] != Bsz,
        "has_h0": h0 is not None,
    }


def check_selective(op: str, *, step: bool, u, delta, A, B, C, D, z, delta_bias,
                    delta_softplus, discretization_, timesteps, h0, methods,
                    return_last_state=False) -> dict:
    """Validate ``selective_scan`` (``step=False``) or ``selective_step`` inputs."""
    sfx = "_t" if step else ""
    un, dn, bn, cn, zn, tn = (f"u{sfx}", f"delta{sfx}", f"B{sfx}", f"C{sfx}", f"z{sfx}",
                              f"timesteps{sfx}")
    hn = "state" if step else "h0"
    lead_names = "Bt" if step else "Bt, L"
    want_u = f"({lead_names}, Dm)"
    tensor(op, un, u, want_u)
    rank = 2 if step else 3
    if u.dim() != rank:
        remedy = ("for a whole sequence call lrnnx.ops.selective_scan" if step else
                  "add the batch dim with u[None]; for one token call lrnnx.ops.selective_step")
        fail(op, un, f"of rank {rank} {want_u}", f"shape {shape(u)}", remedy)
    float_or_complex(op, un, u, real=True)
    dev, lead, Dm = u.device, tuple(u.shape[:-1]), u.shape[-1]
    tensor(op, dn, delta, want_u)
    if delta.shape != u.shape:
        fail(op, dn, f"of the shape of {un} {tuple(u.shape)} (one step size per token and "
             "channel)", f"shape {shape(delta)}", f"broadcast it with {dn}.expand_as({un})")
    float_or_complex(op, dn, delta, real=True)
    same_device(op, un, dev, dn, delta)
    tensor(op, "A", A, "(Dm, N)")
    if A.dim() != 2 or A.shape[0] != Dm:
        fail(op, "A", f"of shape (Dm, N) with Dm={Dm} (the last dim of {un})",
             f"shape {shape(A)}", "A is the continuous diagonal state matrix, one row per channel")
    float_or_complex(op, "A", A)
    same_device(op, un, dev, "A", A)
    N = A.shape[1]
    G = grouped_bc(op, bn, B, lead, lead_names, Dm, N, dev)
    grouped_bc(op, cn, C, lead, lead_names, Dm, N, dev)
    per_channel(op, "D", D, Dm, dev)
    per_channel(op, "delta_bias", delta_bias, Dm, dev)
    if tensor(op, zn, z, want_u, optional=True):
        if z.shape != u.shape:
            fail(op, zn, f"of the shape of {un} {tuple(u.shape)} (the gate)",
                 f"shape {shape(z)}", f"pass one gate value per element of {un}")
        float_or_complex(op, zn, z, real=True)
        same_device(op, un, dev, zn, z)
    flag(op, "delta_softplus", delta_softplus)
    flag(op, "return_last_state", return_last_state)
    discretization(op, discretization_, methods)
    if tensor(op, tn, timesteps, f"{lead}", optional=True):
        if tuple(timesteps.shape) != lead:
            fail(op, tn, f"of shape {lead} (({lead_names}): one time step per token)",
                 f"shape {shape(timesteps)}", "drop the channel dim; time steps are per token")
        float_or_complex(op, tn, timesteps, real=True)
        same_device(op, un, dev, tn, timesteps)
    is_complex = A.is_complex() or B.is_complex()
    if tensor(op, hn, h0, f"({lead[0]}, {Dm}, {N})", optional=True):
        if tuple(h0.shape) != (lead[0], Dm, N):
            fail(op, hn, f"of shape (Bt, Dm, N) = {(lead[0], Dm, N)}", f"shape {shape(h0)}",
                 "pass the state returned by a previous call, or None for zeros")
        float_or_complex(op, hn, h0)
        same_device(op, un, dev, hn, h0)
        real_state(op, hn, h0, is_complex)
    tensors = (u, delta, A, B, C, D, z, delta_bias, h0)
    return {
        "device": dev.type,
        "dtype": u.dtype,
        "complex": is_complex,
        "varlen": False,
        "reverse": False,
        "requires_grad": torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in tensors),
        "L": 1 if step else u.shape[1],
        "width": u.shape[0] * u.shape[-1],  # parallel channels (Bt * Dm)
        "channels": u.shape[-1],  # Dm
        "discretization": discretization_,
        "d_state": N,
        "groups": G,
        "has_z": z is not None,
        "has_D": D is not None,
        "has_h0": h0 is not None,
        "timesteps": timesteps is not None,
        "return_last_state": return_last_state,
    }
