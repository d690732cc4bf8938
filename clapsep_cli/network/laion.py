"""Access to laion-clap's model modules without running ``laion_clap/__init__`` or its heavy utils.

Importing the ``laion_clap`` package (1.1.7) imports its training code, which calls
``from_pretrained`` for three tokenizers at import time: offline that retries for minutes.
Its ``clap_module`` subpackage holds the HTS-AT and Swin modules we build on and needs none of
that, so we load that folder under a private package name. The module objects are laion-clap's
own code, unchanged; only the import path differs.

Two more costs are avoided the same way, without changing what any laion-clap code computes:

* ``htsat.py`` takes two small functions (``do_mixup``, ``interpolate``) from
  ``clap_module/utils.py``, whose top level imports torchvision and h5py for its training and
  dataset helpers (about a second of start-up). We give the private package a ``utils``
  module holding exactly the definitions ``htsat.py`` imports, compiled from laion-clap's own
  ``utils.py`` source (same code, same file name and line numbers in tracebacks), plus the
  top-level imports those functions use.
* torchlibrosa's spectrogram and log-mel layers fill their DFT, window and mel tables with
  librosa, whose ``filters`` module imports scipy.signal and numba (about another second).
  Those tables are parameters; when the checkpoint's weights are loaded over them next, their
  values are never used. :func:`placeholder_front_end_tables` lets a build that is about to load
  weights skip computing them.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import sys
import types
import warnings
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from clapsep_cli.errors import ClapsepError

_PACKAGE = "_clapsep_laion_clap_module"

# laion-clap's WindowAttention calls torch.meshgrid without `indexing`, warning on every build.
warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release", category=UserWarning)


def _clap_module_root() -> Path:
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or not spec.submodule_search_locations:
        raise ClapsepError("laion-clap is not installed; reinstall clapsep (pip install clapsep-cli)")
    return Path(list(spec.submodule_search_locations)[0]) / "clap_module"


def _names_imported_from(source: ast.Module, module: str) -> set[str]:
    """Names a module's source imports with ``from .<module> import ...``."""
    return {alias.name for node in ast.walk(source)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module == module
            for alias in node.names}


def utils_subset(root: Path, names: set[str]) -> types.ModuleType:
    """laion-clap's ``utils.py`` reduced to the top-level functions ``names`` and the top-level
    imports they refer to; every statement kept is laion-clap's own, compiled from its file."""
    path = root / "utils.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    missing = names - {f.name for f in functions}
    if missing:
        raise ClapsepError(f"laion-clap's {path} lacks {', '.join(sorted(missing))}; reinstall laion-clap==1.1.7")
    used = {n.id for f in functions for n in ast.walk(f) if isinstance(n, ast.Name)}
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
               and any((alias.asname or alias.name).split(".")[0] in used for alias in node.names)]
    module = types.ModuleType(f"{_PACKAGE}.utils")
    module.__file__ = str(path)
    module.__package__ = _PACKAGE
    code = compile(ast.Module(body=imports + functions, type_ignores=[]), str(path), "exec")
    exec(code, module.__dict__)  # noqa: S102 - laion-clap's own source, see the module docstring
    return module


@cache
def htsat() -> types.ModuleType:
    """laion-clap's ``clap_module/htsat.py`` (HTS-AT, Swin blocks, patch embedding)."""
    if _PACKAGE not in sys.modules:
        root = _clap_module_root()
        package = types.ModuleType(_PACKAGE)
        package.__path__ = [str(root)]
        sys.modules[_PACKAGE] = package
        source = ast.parse((root / "htsat.py").read_text(encoding="utf-8"))
        utils = utils_subset(root, _names_imported_from(source, "utils"))
        sys.modules[utils.__name__] = utils
        package.utils = utils  # type: ignore[attr-defined]
    return importlib.import_module(f"{_PACKAGE}.htsat")


class _PlaceholderLibrosa:
    """The three librosa functions torchlibrosa's layer constructors call, returning arrays of
    the right shapes (zeros) instead of tables that are about to be overwritten."""

    class filters:  # noqa: N801 - mirrors librosa.filters
        @staticmethod
        def get_window(window: Any, win_length: int, fftbins: bool = True) -> np.ndarray:
            return np.zeros(win_length)

        @staticmethod
        def mel(*, sr: float, n_fft: int, n_mels: int = 128, **_: Any) -> np.ndarray:
            return np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)

    class util:  # noqa: N801 - mirrors librosa.util
        @staticmethod
        def pad_center(data: np.ndarray, *, size: int, **_: Any) -> np.ndarray:
            return np.zeros(size, dtype=data.dtype)


@contextlib.contextmanager
def placeholder_front_end_tables() -> Iterator[None]:
    """While building modules whose weights are loaded right after (strictly, so that every
    parameter is replaced): torchlibrosa's STFT and log-mel layers get zero tables of the right
    shapes instead of librosa's, so librosa.filters (scipy.signal, numba) is never imported."""
    import torchlibrosa.stft

    saved = torchlibrosa.stft.librosa
    torchlibrosa.stft.librosa = _PlaceholderLibrosa
    try:
        yield
    finally:
        torchlibrosa.stft.librosa = saved
