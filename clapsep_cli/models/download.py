"""Downloading the released model from the Hugging Face Hub (or ``HF_ENDPOINT``), checked and resumable."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clapsep_cli.errors import ClapsepError, ModelMissingError, first_line
from clapsep_cli.models import store
from clapsep_cli.models.install import TOKENIZER_FILES, check_free, install, sha256_file
from clapsep_cli.models.store import DEFAULT_MODEL, InstalledModel
from clapsep_cli.network.architecture import RELEASED, ModelConfig

CLAP_REPO, CLAP_FILE = "lukewys/laion_clap", "music_audioset_epoch_15_esc_90.14.pt"
CLAPSEP_REPO, CLAPSEP_FILE = "AisakaMikoto/CLAPSep", "model/best_model.ckpt"
TOKENIZER_REPO = "FacebookAI/roberta-base"


@dataclass(frozen=True)
class HubFile:
    """A file of a Hugging Face Hub repository."""

    repo: str
    path: str
    repo_type: str = "model"

    def __str__(self) -> str:
        return f"{self.repo}/{self.path}"


RELEASE_FILES = {
    "clap": HubFile(CLAP_REPO, CLAP_FILE),
    "clapsep": HubFile(CLAPSEP_REPO, CLAPSEP_FILE, "space"),
    **{name: HubFile(TOKENIZER_REPO, name) for name in TOKENIZER_FILES},
}
HUB_TIMEOUT = 10.0  # seconds to wait for the Hub (or HF_ENDPOINT) to answer before giving up
# The Hub tags a file stored with git LFS (the checkpoints) with its sha256, a plain git file (the
# tokenizer's) with its git blob id: sha1 over "blob <size>\0" and the bytes.
CHECKSUM_LENGTHS = (64, 40)
OFFLINE_FIX = ("to install without network, copy the files onto this machine and run "
               "`clapsep models import --clap FILE --clapsep FILE --tokenizer DIR`")


def _hub_checksum(path: Path, etag: str) -> str:
    """``path``'s checksum in the form of the Hub's ETag ``etag`` (see :data:`CHECKSUM_LENGTHS`)."""
    if len(etag) == 64:
        return sha256_file(path)
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _reason(err: Exception) -> str:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return "downloads are switched off (HF_HUB_OFFLINE is set)"
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        return f"HTTP {status}{' (not found)' if status == 404 else ''}"
    return first_line(err)


def fetch(file: HubFile, folder: Path, log: Callable[[str], None] = lambda _: None) -> Path:
    """Download ``file`` into ``folder`` and check it against the checksum the Hub gives for it.

    The bytes go to ``<checksum>.part`` first, so an interrupted transfer resumes where it stopped
    on the next call; a file whose bytes do not match is deleted and an error raised.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get

    try:
        meta = get_hf_file_metadata(hf_hub_url(file.repo, file.path, repo_type=file.repo_type), timeout=HUB_TIMEOUT)
    except Exception as err:  # noqa: BLE001 - connection, HTTP and offline errors of several libraries
        raise ModelMissingError(
            f"cannot download {file} from {constants.ENDPOINT}: {_reason(err)}; {OFFLINE_FIX}") from None
    if len(meta.etag or "") not in CHECKSUM_LENGTHS:
        raise ModelMissingError(f"cannot download {file} from {constants.ENDPOINT}: no checksum to check it against "
                                f"(ETag {meta.etag!r}); {OFFLINE_FIX}")
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / meta.etag
    if done.is_file():
        return done
    part = done.with_suffix(".part")
    have = part.stat().st_size if part.is_file() else 0
    if meta.size is not None and have > meta.size:
        part.unlink()
        have = 0
    log(f"downloading {file}" + (f" (resuming at {have / 2**20:.1f} MiB)" if have else ""))
    try:
        with open(part, "ab") as out:
            http_get(meta.location, out, resume_size=have, expected_size=meta.size, displayed_filename=file.path,
                     headers={"Accept-Encoding": "identity"})
    except Exception as err:  # noqa: BLE001 - as above
        raise ClapsepError(f"download of {file} stopped: {_reason(err)}; re-run to resume") from None
    if _hub_checksum(part, meta.etag) != meta.etag:
        part.unlink()
        raise ClapsepError(f"{file}: downloaded bytes do not match the checksum the server gives ({meta.etag}); "
                           "nothing installed, re-run to download it again")
    part.rename(done)
    return done


def download(name: str = DEFAULT_MODEL, config: ModelConfig = RELEASED, overwrite: bool = False,
             keep_downloads: bool = False, log: Callable[[str], None] = lambda _: None) -> InstalledModel:
    """Fetch the released CLAP and CLAPSep checkpoints and the tokenizer, check them, then install them."""
    check_free(name, overwrite)
    cache = store.downloads_dir()
    files = {role: fetch(file, cache / file.repo.replace("/", "--"), log) for role, file in RELEASE_FILES.items()}
    with tempfile.TemporaryDirectory() as tmp:
        for name_ in TOKENIZER_FILES:
            shutil.copyfile(files[name_], Path(tmp) / name_)
        model = install(name, files["clap"], files["clapsep"], Path(tmp), config=config, overwrite=overwrite,
                        origin="download", log=log)
    if not keep_downloads:
        shutil.rmtree(cache, ignore_errors=True)
    return model


def ensure_model(name: str = DEFAULT_MODEL, log: Callable[[str], None] = lambda _: None) -> InstalledModel:
    """The installed model ``name``; the default model is downloaded on first use when online."""
    try:
        return store.get_model(name)
    except ModelMissingError:
        from huggingface_hub import constants

        if name != DEFAULT_MODEL or constants.is_offline_mode():
            raise
    log("no model installed yet: downloading the released CLAPSep model (one time, about 2.5 GB)")
    return download(name, log=log)
