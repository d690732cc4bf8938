"""A loaded CLAPSep model: the separator, plus CLAP query encoders loaded on first use.

The text encoder (about 500 MB) and the audio encoder are only read from the store when a
query needs them, so a run whose query embeddings are cached starts with the separator alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch

from clapsep_cli.errors import ClapsepError
from clapsep_cli.models.precision import PRECISION_NAMES
from clapsep_cli.models.store import InstalledModel
from clapsep_cli.network.encoders import AudioEncoder, TextEncoder, Tokenizer, fit_query_clip
from clapsep_cli.network.separation import SeparationNet, autocast

PRECISIONS = dict(zip(PRECISION_NAMES, (torch.float32, torch.bfloat16, torch.float16)))
# CPU features that compute bf16 products in hardware: AMX tiles, AVX-512 BF16 dot products.
BF16_CPU_FEATURES = ("amx_bf16", "avx512_bf16")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; explicit choices must be available."""
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ClapsepError(f"unknown device {name!r}: choose auto, cpu, cuda (or cuda:N) or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ClapsepError("device cuda requested but no CUDA GPU is available (try {setting} cpu)", setting="device")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ClapsepError("device mps requested but Metal is not available (try {setting} cpu)", setting="device")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ClapsepError(f"unknown device {name!r}: choose auto, cpu, cuda (or cuda:N) or mps") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ClapsepError(f"device {name} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return device


def cpu_computes_bf16(capabilities: Mapping[str, object] | None = None) -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX-BF16 or AVX512_BF16).

    ``capabilities`` defaults to what PyTorch's cpuinfo detects at run time
    (``torch.cpu.get_capabilities()``, which also checks that the OS enabled the registers).
    Elsewhere PyTorch emulates bf16 arithmetic, slower than fp32.
    """
    caps = torch.cpu.get_capabilities() if capabilities is None else capabilities
    return any(bool(caps.get(feature, False)) for feature in BF16_CPU_FEATURES)


def cuda_computes_bf16(device: torch.device) -> bool:
    """Whether the CUDA device has native bf16 (compute capability 8.0 or newer), not emulation."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run uses: ``auto`` is bf16 where ``device`` computes it natively (CPUs
    with AMX or AVX512_BF16, CUDA GPUs of compute capability 8.0 or newer) and fp32 elsewhere
    (other CPUs, older GPUs, MPS); an explicit choice is checked against the device."""
    if precision == "auto":
        if device.type == "cuda":
            native = cuda_computes_bf16(device)
        else:
            native = device.type == "cpu" and cpu_computes_bf16()
        precision = "bf16" if native else "fp32"
    check_precision(precision, device)
    return precision


def check_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of an explicit precision (``auto`` resolves first, see :func:`resolve_precision`)."""
    if precision == "auto":
        precision = resolve_precision(precision, device)
    if precision not in PRECISIONS:
        raise ClapsepError(f"unknown precision {precision!r}: choose auto, fp32, bf16 or fp16")
    if precision == "fp16" and device.type == "cpu":
        raise ClapsepError("fp16 is not supported on the CPU; use bf16 or fp32")
    return PRECISIONS[precision]


class ClapSep:
    """Separator and query encoders of one installed model on one device.

    ``precision`` is ``auto`` (see :func:`resolve_precision`), fp32 (the reference: the published
    model's output to float precision), bf16 or fp16; :attr:`precision` is the one in use.
    """

    def __init__(self, installed: InstalledModel, device: torch.device, precision: str = "auto"):
        self.installed = installed
        self.cfg = installed.config
        self.device = device
        self.precision = resolve_precision(precision, device)
        self.dtype = PRECISIONS[self.precision]
        self.separator: SeparationNet = installed.load("separator", SeparationNet, device)
        if self.dtype != torch.float32:
            # Autocast would cast each weight on every call; cast the matrix weights once instead
            # (same arithmetic). Norms and statistics stay in float32 under autocast.
            for module in self.separator.modules():
                if isinstance(module, torch.nn.Linear):
                    module.to(self.dtype)
        self._text: TextEncoder | None = None
        self._tokenizer: Tokenizer | None = None
        self._audio: AudioEncoder | None = None

    @property
    def text_encoder_loaded(self) -> bool:
        return self._text is not None

    @torch.inference_mode()
    def masks(self, mixture: torch.Tensor, condition: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
        """Masks (B, 513, frames) for 32 kHz segments (B, samples) with their STFT ``spec``."""
        with autocast(self.device, self.dtype):
            mask = self.separator.mask(mixture, condition, spec)
        return mask.float()

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm CLAP text embeddings (N, 512) on the CPU."""
        if self._text is None:
            self._tokenizer = Tokenizer(self.installed.tokenizer_dir, self.cfg.text.context_length)
            self._text = self.installed.load("text", TextEncoder, self.device)
        assert self._tokenizer is not None
        tokens = {k: v.to(self.device) for k, v in self._tokenizer(texts).items()}
        return self._text(**tokens).float().cpu()

    @torch.inference_mode()
    def embed_audio(self, wave48: torch.Tensor) -> torch.Tensor:
        """Unit-norm CLAP audio embedding (512,) of a mono 48 kHz clip; long clips average 10 s windows."""
        if self._audio is None:
            self._audio = self.installed.load("audio", AudioEncoder, self.device)
        assert self._audio is not None
        clips = fit_query_clip(wave48.float()).to(self.device)
        emb = self._audio(clips).float().cpu().mean(0)
        return torch.nn.functional.normalize(emb, dim=-1)


def load_model(name: str, device: torch.device, precision: str, log: Callable[[str], None] = lambda _: None
               ) -> tuple[ClapSep, float]:
    """Model ``name`` (downloaded first if it is the default model, missing and online) loaded
    on ``device`` at ``precision``, and the seconds that took."""
    from clapsep_cli.models.download import ensure_model

    started = time.perf_counter()
    model = ClapSep(ensure_model(name, log=log), device, precision)
    return model, time.perf_counter() - started
