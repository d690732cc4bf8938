"""Fine-tuning with the CLAPSep recipe."""

from __future__ import annotations

import copy
import csv
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clapsep_cli.audio import atomic, dsp
from clapsep_cli.errors import ClapsepError
from clapsep_cli.models import store
from clapsep_cli.models.install import write_model
from clapsep_cli.network import lora
from clapsep_cli.network.architecture import ENCODER_RATE, QUERY_SECONDS, SAMPLE_RATE, SEGMENT_SAMPLES, ModelConfig
from clapsep_cli.network.encoders import AudioEncoder, TextEncoder, Tokenizer
from clapsep_cli.network.separation import SeparationNet, autocast, masked_estimate
from clapsep_cli.training import metrics
from clapsep_cli.training.data import load_mono32, mix_at_0db, pad_or_trim
from clapsep_cli.training.distributed import rank, world_size
from clapsep_cli.training.spec_augment import spec_augment


@dataclass(frozen=True)
class TrainSettings:
    data_dir: Path
    captions: Path
    out_name: str
    checkpoint_dir: Path
    epochs: int = 10
    steps_per_epoch: int | None = None
    batch_size: int = 8
    lr: float = 1e-4
    val_fraction: float = 0.1
    seed: int = 0
    workers: int = 0
    audio_queries: bool = True  # mix CLAP audio embeddings into the queries (needs a trained CLAP)
    full_encoder: bool = False  # train the whole encoder copy instead of LoRA (nothing pretrained to adapt)


@dataclass(frozen=True)
class Clip:
    path: Path
    caption: str


def read_captions(data_dir: Path, captions: Path) -> list[Clip]:
    try:
        with open(captions, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, skipinitialspace=True))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ClapsepError(f"{captions}: cannot read ({err})") from None
    key = "file_name" if rows and "file_name" in rows[0] else "file"
    if not rows or key not in rows[0] or "caption" not in rows[0]:
        raise ClapsepError(f"{captions}: needs columns file_name (or file) and caption")
    clips = [Clip(data_dir / r[key], r["caption"].strip()) for r in rows if r.get(key) and r.get("caption", "").strip()]
    missing = [c.path for c in clips if not c.path.is_file()]
    if missing:
        raise ClapsepError(f"{missing[0]}: no such file (listed in {captions})")
    if len(clips) < 4:
        raise ClapsepError(f"{captions}: needs at least 4 captioned clips")
    return clips


class MixtureDataset(torch.utils.data.Dataset):
    """On-the-fly two-source mixtures; ``fixed_noise`` pins each item's partner (validation)."""

    def __init__(self, clips: list[Clip], fixed_noise: list[int] | None = None, speed_perturb: bool = True):
        self.clips, self.fixed_noise, self.speed_perturb = clips, fixed_noise, speed_perturb
        self._to_encoder_rate = dsp.SincResampler(SAMPLE_RATE, ENCODER_RATE)
        self._resamplers: dict[int, dsp.SincResampler] = {}

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.fixed_noise is not None:
            other = self.fixed_noise[index]
        else:
            other = random.choice([i for i in range(len(self.clips)) if i != index])
        target = load_mono32(self.clips[index].path, SEGMENT_SAMPLES)
        noise = load_mono32(self.clips[other].path, SEGMENT_SAMPLES)
        try:
            mixture, target = mix_at_0db(target, noise)
        except ClapsepError:
            mixture = target + noise
        return {"mixture": mixture, "target": target, "pos_caption": self.clips[index].caption,
                "neg_caption": self.clips[other].caption, "pos_audio": self._query_clip(target),
                "neg_audio": self._query_clip(noise)}

    def _query_clip(self, x32: torch.Tensor) -> torch.Tensor:
        """The clip at 48 kHz, speed-perturbed by 0.9 or 1.1 (training), 10 s, peak below 1."""
        factor = random.choice((0.9, 1.1)) if self.speed_perturb else 1.0
        rate = int(round(ENCODER_RATE * factor))
        if rate not in self._resamplers:
            self._resamplers[rate] = dsp.SincResampler(rate, ENCODER_RATE)
        x48 = self._to_encoder_rate(x32)
        clip = pad_or_trim(self._resamplers[rate](x48), ENCODER_RATE * QUERY_SECONDS)
        peak = clip.abs().max()
        return clip * (0.9 / peak) if peak > 1 else clip


class MaskModule(nn.Module):
    """The separator's masking as a module forward (what DistributedDataParallel wraps)."""

    def __init__(self, separator: SeparationNet):
        super().__init__()
        self.separator = separator

    def forward(self, mixture: torch.Tensor, condition: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
        return self.separator.mask(mixture, condition, spec)


def loss_fn(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -0.9 * metrics.snr(estimate, target).mean() - 0.1 * metrics.si_snr(estimate, target).mean()


class Trainer:
    """One training run: frozen CLAP query encoders, a separator with LoRA, data, optimiser."""

    def __init__(self, settings: TrainSettings, cfg: ModelConfig, separator_state: dict[str, torch.Tensor],
                 text_state: dict[str, torch.Tensor], audio_state: dict[str, torch.Tensor], tokenizer_dir: Path,
                 device: torch.device, origin: dict[str, Any], log: Callable[[str], None] = print):
        self.settings, self.cfg, self.device, self.origin, self.log = settings, cfg, device, origin, log
        self.rank, self.world = rank(), world_size()
        torch.manual_seed(settings.seed + self.rank)
        random.seed(settings.seed + self.rank)
        self.text = TextEncoder(cfg)
        self.text.load_state_dict(text_state)
        self.audio = AudioEncoder(cfg)
        self.audio.load_state_dict(audio_state)
        self.text_state, self.audio_state, self.tokenizer_dir = text_state, audio_state, tokenizer_dir
        for module in (self.text, self.audio):
            module.to(device).eval().requires_grad_(False)
        self._spec_augment()
        self.separator = SeparationNet(cfg)
        self.separator.load_state_dict(separator_state)
        self.separator.requires_grad_(False)
        if settings.full_encoder:  # the parts the separator's encoder pass uses (not the tagging head)
            for part in ("bn0", "patch_embed", "layers"):
                getattr(self.separator.audio_branch, part).requires_grad_(True)
        else:
            for p in lora.attach(self.separator.audio_branch, cfg.lora_rank, cfg.lora_alpha):
                p.requires_grad_(True)
        self.separator.decoder_model.requires_grad_(True)
        self.separator.to(device)
        self.net: nn.Module = MaskModule(self.separator)
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None)
        params = [p for p in self.separator.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="max", factor=0.3,
                                                                    patience=5, min_lr=5e-6)
        self.tokenizer = Tokenizer(tokenizer_dir, cfg.text.context_length)
        self._text_cache: dict[str, torch.Tensor] = {}
        self.epoch, self.step, self.best = 0, 0, -math.inf
        clips = read_captions(settings.data_dir, settings.captions)
        rng = random.Random(settings.seed)
        order = list(range(len(clips)))
        rng.shuffle(order)
        n_val = max(2, round(len(clips) * settings.val_fraction))
        val = [clips[i] for i in order[:n_val]]
        self.train_clips = [clips[i] for i in order[n_val:]]
        if len(self.train_clips) < 2:
            raise ClapsepError(f"{len(clips)} clips are too few: training needs 2 besides the {n_val} for validation")
        self.val_set = MixtureDataset(val, fixed_noise=[(i + 1) % n_val for i in range(n_val)], speed_perturb=False)

    def _spec_augment(self) -> None:
        """SpecAugment on the query audio encoder's input, as the official training hooks it."""
        self._augment_enabled = True

        def hook(_module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor:
            if not self._augment_enabled:
                return out
            return spec_augment(out.transpose(1, 3)).transpose(1, 3)

        self.audio.audio_branch.bn0.register_forward_hook(hook)

    @torch.no_grad()
    def text_embedding(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self._text_cache]
        if missing:
            tokens = {k: v.to(self.device) for k, v in self.tokenizer(missing).items()}
            for caption, emb in zip(missing, self.text(**tokens)):
                self._text_cache[caption] = emb
        return torch.stack([self._text_cache[c] for c in captions])

    def _estimate(self, net: nn.Module, mixture: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The separation step through ``net``, its mask computed in bf16 on GPUs (fp32 elsewhere)."""
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32

        def mask_of(spec: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, dtype):
                return net(mixture, cond, spec)

        return masked_estimate(mixture, mask_of)

    def train_step(self, batch: dict[str, Any]) -> float:
        self.separator.audio_branch.eval()
        self.separator.decoder_model.train()
        mixture, target = batch["mixture"].to(self.device), batch["target"].to(self.device)
        with torch.no_grad():
            pos = self.text_embedding(list(batch["pos_caption"]))
            neg = self.text_embedding(list(batch["neg_caption"]))
            if self.settings.audio_queries:
                a = torch.rand(1, device=self.device)
                audio = self.audio(torch.cat([batch["pos_audio"], batch["neg_audio"]]).to(self.device))
                pos_a, neg_a = audio.chunk(2)
                pos, neg = a * pos_a + (1 - a) * pos, a * neg_a + (1 - a) * neg
            mode = random.random()
            if mode < 0.25:
                neg = torch.zeros_like(neg)
            elif mode < 0.5:
                pos = torch.zeros_like(pos)
            cond = F.normalize(torch.cat([pos, neg], dim=-1), dim=-1)
        estimate = self._estimate(self.net, mixture, cond)
        loss = loss_fn(estimate, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([p for p in self.separator.parameters() if p.requires_grad], 5.0)
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def validate(self) -> float:
        """Mean SI-SDRi on the fixed validation mixtures (both captions, raw concatenation)."""
        self.separator.eval()
        values = []
        loader = torch.utils.data.DataLoader(self.val_set, batch_size=self.settings.batch_size)
        for batch in loader:
            mixture, target = batch["mixture"].to(self.device), batch["target"].to(self.device)
            cond = torch.cat([self.text_embedding(list(batch["pos_caption"])),
                              self.text_embedding(list(batch["neg_caption"]))], dim=-1)
            estimate = self._estimate(MaskModule(self.separator), mixture, cond)
            values.append(metrics.improvement("si_sdr", estimate, mixture, target).cpu())
        return float(torch.cat(values).mean())

    def train_loader(self) -> torch.utils.data.DataLoader:
        data = MixtureDataset(self.train_clips)
        sampler = (torch.utils.data.DistributedSampler(data, seed=self.settings.seed) if self.world > 1
                   else torch.utils.data.RandomSampler(data))
        return torch.utils.data.DataLoader(data, batch_size=self.settings.batch_size, sampler=sampler,
                                           num_workers=self.settings.workers,
                                           drop_last=len(data) >= self.settings.batch_size)

    def fit(self, time_limit: float | None = None) -> dict[str, Any]:
        """Train for the remaining epochs, or until the epoch that ends after ``time_limit``
        seconds; returns the history (rank 0 writes checkpoints)."""
        history = []
        loader = self.train_loader()
        deadline = None if time_limit is None else time.monotonic() + time_limit
        while self.epoch < self.settings.epochs and (deadline is None or time.monotonic() < deadline):
            if isinstance(loader.sampler, torch.utils.data.DistributedSampler):
                loader.sampler.set_epoch(self.epoch)
            self._augment_enabled = True
            started, losses = time.perf_counter(), []
            for i, batch in enumerate(loader):
                if self.settings.steps_per_epoch and i >= self.settings.steps_per_epoch:
                    break
                losses.append(self.train_step(batch))
            self._augment_enabled = False
            val = self.validate()
            self.scheduler.step(val)
            self.epoch += 1
            improved = val > self.best
            self.best = max(self.best, val)
            entry = {"epoch": self.epoch, "loss": sum(losses) / max(len(losses), 1), "val_si_sdri": val,
                     "lr": self.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
            history.append(entry)
            if self.rank == 0:
                self.log(f"epoch {self.epoch}: loss {entry['loss']:.3f}, validation SI-SDRi {val:.2f} dB")
                self.save_checkpoint(improved)
        return {"history": history, "best_val_si_sdri": self.best}

    def _checkpoint(self) -> dict[str, Any]:
        return {"separator": self.separator.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "step": self.step, "best": self.best,
                "architecture": self.cfg.to_dict(), "settings": {k: str(v) for k, v in asdict(self.settings).items()},
                "origin": self.origin, "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}

    def save_checkpoint(self, improved: bool) -> None:
        directory = self.settings.checkpoint_dir
        directory.mkdir(parents=True, exist_ok=True)
        state = self._checkpoint()
        _atomic_save(state, directory / "last.pt")
        if improved:
            _atomic_save({"separator": state["separator"], "best": self.best, "epoch": self.epoch},
                         directory / "best.pt")

    def resume(self) -> None:
        path = self.settings.checkpoint_dir / "last.pt"
        if not path.is_file():
            raise ClapsepError(f"nothing to resume: {path} does not exist")
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["architecture"] != self.cfg.to_dict():
            raise ClapsepError(f"{path} was trained with another architecture")
        self.separator.load_state_dict(state["separator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])

    def export(self, overwrite: bool = False) -> store.InstalledModel:
        """The best weights, LoRA merged, as store model ``out_name``."""
        best = self.settings.checkpoint_dir / "best.pt"
        separator = copy.deepcopy(self.separator).cpu()
        if best.is_file():
            separator.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["separator"])
        lora.detach_merged(separator.audio_branch)
        parts = {"separator": separator.state_dict(), "text": self.text_state, "audio": self.audio_state}
        return write_model(self.settings.out_name, parts, self.cfg, self.tokenizer_dir, overwrite,
                           {"origin": "train", "base": self.origin, "best_val_si_sdri": self.best,
                            "epochs": self.epoch})


def _atomic_save(state: dict[str, Any], path: Path) -> None:
    with atomic.writing(path) as tmp:
        torch.save(state, tmp)


RANDOM_TEXT_STD = 0.5


def from_scratch(cfg: ModelConfig, seed: int) -> tuple[dict[str, torch.Tensor], ...]:
    """Random CLAP encoders and a separator whose encoder copy starts as CLAP's audio branch.

    CLAP stays frozen, so its random text encoder must still tell captions apart: with
    RoBERTa's usual initialisation (std 0.02) every caption maps to nearly the same unit vector
    (the pooled first token barely sees the others), so its matrices are drawn wider, making it
    a random-feature encoder whose embeddings differ per caption.
    """
    torch.manual_seed(seed)
    text, audio, separator = TextEncoder(cfg), AudioEncoder(cfg), SeparationNet(cfg)
    for module in text.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=RANDOM_TEXT_STD)
    separator.audio_branch.load_state_dict(audio.audio_branch.state_dict())
    return separator.state_dict(), text.state_dict(), audio.state_dict()


def from_model(name: str) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, torch.Tensor],
                                   dict[str, torch.Tensor], Path]:
    """Weights of an installed model, to fine-tune."""
    model = store.get_model(name)
    if model.manifest.get("tokenizer") is None:
        raise ClapsepError(f"model {name!r} has no tokenizer; training needs text captions")
    parts = [model.read_part(part) for part in store.PARTS]
    return (model.config, *parts, model.tokenizer_dir)
