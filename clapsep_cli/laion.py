"""Access to laion-clap's model modules without running ``laion_clap/__init__``.

Importing the ``laion_clap`` package (1.1.7) imports its training code, which calls
``from_pretrained`` for three tokenizers at import time: offline that retries for minutes.
Its ``clap_module`` subpackage holds the HTS-AT and Swin modules we build on and needs none of
that, so we load that folder under a private package name. The module objects are laion-clap's
own code, unchanged; only the import path differs.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from functools import cache
from pathlib import Path

from clapsep_cli.errors import ClapsepError

_PACKAGE = "_clapsep_laion_clap_module"

# laion-clap's WindowAttention calls torch.meshgrid without `indexing`, warning on every build.
warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release", category=UserWarning)


@cache
def htsat() -> types.ModuleType:
    """laion-clap's ``clap_module/htsat.py`` (HTS-AT, Swin blocks, patch embedding)."""
    if _PACKAGE not in sys.modules:
        spec = importlib.util.find_spec("laion_clap")
        if spec is None or not spec.submodule_search_locations:
            raise ClapsepError("laion-clap is not installed; reinstall clapsep (pip install clapsep-cli)")
        root = Path(list(spec.submodule_search_locations)[0]) / "clap_module"
        package = types.ModuleType(_PACKAGE)
        package.__path__ = [str(root)]
        sys.modules[_PACKAGE] = package
    return importlib.import_module(f"{_PACKAGE}.htsat")
