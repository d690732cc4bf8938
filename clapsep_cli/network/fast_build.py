"""Building a module whose weights are about to be loaded, without allocating or drawing them.

Random initialisation of the full-size model takes seconds and a copy of the weights in memory,
all thrown away when the checkpoint is loaded. Inside :class:`weights_on_meta`, ``torch.empty``
(how ``nn.Linear``, ``nn.Conv*``, ``nn.Embedding`` and the norms allocate their parameters)
makes tensors on the meta device: they have shapes but no storage. Initialising fills on meta
tensors, and on any parameter (a few are made with ``torch.zeros`` and then filled, such as
HTSAT's position tables), are skipped: a parameter's initial values are never used, strict
loading replaces every one. Everything else a constructor computes (windows, attention masks,
position ids) is computed on the CPU as usual, so tensors that no checkpoint holds come out
right; HTS-AT's DFT and mel tables, which the checkpoints hold, are not computed on meta at all
(``network/htsat.py``). Loading the checkpoint with ``assign=True`` then puts real tensors in
place of the meta ones; :func:`check_materialised` makes sure none is left over.

It is a torch function mode: it acts only inside the ``with`` block and only on the calling
thread, and changes nothing global.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

# In-place operations that only set values: torch.nn.init's fills and the tensor methods they
# (and libraries' own initialisers) use.
VALUE_FILLS = frozenset({
    "uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
    "xavier_normal_", "orthogonal_", "sparse_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "zero_", "fill_",
    "erfinv_", "mul_", "add_", "clamp_",
})


class weights_on_meta(TorchFunctionMode):  # noqa: N801 - a context manager, like torch's own modes
    """Within the block, parameters are shapes on the meta device, left uninitialised (see the module doc)."""

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = dict(kwargs or {})
        target = args[0] if args else kwargs.get("tensor")
        if getattr(func, "__name__", None) in VALUE_FILLS and isinstance(target, torch.Tensor) and (
                target.is_meta or isinstance(target, nn.Parameter)):
            return target
        if func is torch.empty and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def check_materialised(module: nn.Module) -> None:
    """Raise if a tensor of ``module`` was left on the meta device (one no checkpoint held)."""
    left = [name for name, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"{type(module).__name__} built on the meta device has tensors no checkpoint "
                           f"filled: {', '.join(left[:5])}")
