"""Checkpoints: atomic writes, `latest` pointer, resolution and loading for inference.

Run directory layout (evaluation and Hugging Face loading rely on it):
    RUN_DIR/train_config.json
    RUN_DIR/metrics.jsonl
    RUN_DIR/checkpoints/step_00000100/   config.json + model.safetensors (save_pretrained)
                                         tokenizer.json + tokenizer_config.json
                                         training_state.pt (optimizer, step, RNG, data position)
                                         checksums.json (SHA-256 of the weight and state files)
    RUN_DIR/checkpoints/latest           text file naming the newest step directory

A step directory is complete before anyone can see it: it is written under a temporary name in the
same parent, every file is fsynced, and only then renamed into place; `latest` is replaced the same
way afterwards. A crash at any point leaves the previous checkpoint and `latest` valid. Older step
directories are pruned only after the new one is published.

Integrity: parameters are checked finite before a save and after a load (a diverged run must not
leave a checkpoint that evaluates to inf or generates garbage), and the weight and state files are
verified against `checksums.json` when loaded. `SSA_SKIP_CHECKSUMS=1` (or `verify=False`) skips
the hashing for very large checkpoints; a checkpoint without checksums.json (an export, a
conversion, an older run) loads unverified.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ssa.filemode import apply_umask, apply_umask_tree

STATE_FILE = "training_state.pt"
LATEST = "latest"
STEP_PREFIX = "step_"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
CHECKSUMS = "checksums.json"
SKIP_CHECKSUMS_ENV = "SSA_SKIP_CHECKSUMS"


class NonFiniteWeightsError(ValueError):
    """A model holds NaN or inf parameters: it is neither saved nor loaded."""


# ----------------------------------------------------------------------------------------------
# Integrity: finite parameters, checksums, a full disk
# ----------------------------------------------------------------------------------------------
def nonfinite_parameters(model) -> list[str]:
    """Names of the parameters (of a model, or tensors of a state dict) holding a NaN or inf."""
    import torch

    items = model.items() if isinstance(model, dict) else model.named_parameters()
    return [name for name, p in items if not bool(torch.isfinite(p).all())]


def check_finite(model, what: str) -> None:
    bad = nonfinite_parameters(model)
    if bad:
        raise NonFiniteWeightsError(
            f"{what} has non-finite weights (NaN or inf in {len(bad)} tensors, e.g. {bad[0]}): "
            f"the training run diverged before it was saved; use an earlier checkpoint"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checksummed_files(step_dir: Path) -> list[Path]:
    """The files whose corruption would go unnoticed: weights and training state (config and
    tokenizer files are parsed and fail loudly; an export may also rewrite config.json)."""
    return sorted(p for p in step_dir.iterdir() if p.is_file() and (p.suffix == ".safetensors" or p.name == STATE_FILE))


def write_checksums(step_dir: Path) -> None:
    sums = {p.name: _sha256(p) for p in _checksummed_files(step_dir)}
    (step_dir / CHECKSUMS).write_text(json.dumps({"sha256": sums}, indent=1) + "\n", encoding="utf-8")


def skip_checksums_requested() -> bool:
    return os.environ.get(SKIP_CHECKSUMS_ENV, "").strip().lower() not in ("", "0", "false", "no")


def verify_checksums(step_dir: Path, names: list[str] | None = None, *, verify: bool | None = None) -> None:
    """Compare files of `step_dir` (all recorded ones, or `names`) with checksums.json."""
    if verify is None:
        verify = not skip_checksums_requested()
    record = Path(step_dir) / CHECKSUMS
    if not verify or not record.is_file():
        return
    try:
        sums = json.loads(record.read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {step_dir}: {CHECKSUMS} is corrupt ({err})") from None
    for name in (names if names is not None else sorted(sums)):
        if name not in sums or not (Path(step_dir) / name).is_file():
            continue
        if _sha256(Path(step_dir) / name) != sums[name]:
            raise ValueError(
                f"checkpoint {step_dir}: {name} does not match its recorded checksum (the file is corrupt); "
                f"use another checkpoint, or set {SKIP_CHECKSUMS_ENV}=1 to load it anyway"
            )


_DISK_FULL_WORDS = ("No space left", "StorageFull", "os error 28", "unexpected pos", "file write failed")


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch's zip writer ("[enforce fail at inline_container.cc] . unexpected pos") and
    # safetensors report a short write in their own words.
    if isinstance(err, RuntimeError) or type(err).__name__ == "SafetensorError":
        return any(w in str(err) for w in _DISK_FULL_WORDS)
    return False


def disk_full_error(err: BaseException, where: Path, what: str) -> OSError | None:
    """A one-line OSError(ENOSPC) naming `where` when `err` means the disk is full, else None."""
    if not _is_disk_full(err):
        return None
    try:
        free = f"{shutil.disk_usage(where).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    return OSError(errno.ENOSPC, f"disk full while writing {what} to {where} ({free}); "
                                 f"the previous checkpoint is intact: free space, then --resume")




def _quiet_transformers() -> None:
    """transformers draws progress bars when writing/reading shards: noise inside our own bar."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:
        pass


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a fsynced temporary file and os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        apply_umask(tmp)  # mkstemp's 0600 would hide the file from everyone else
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def staging_dir(run_dir: Path, step: int) -> Path:
    """A fresh temporary directory beside the step directory it will become."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".tmp-{step_dir_name(step)}-", dir=ckpt_root))


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, training_state: dict, *, keep: int = 2,
                    staging: Path | None = None, model_state: dict | None = None) -> Path:
    """Write RUN_DIR/checkpoints/step_XXXXXXXX atomically, point `latest` at it, prune to `keep`.

    `staging`: a `staging_dir` that already holds files of this step (sharded state written by
    every rank); `model_state`: the weights to save when `model` holds only a shard of them.
    """
    import torch

    _quiet_transformers()
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / step_dir_name(step)
    # Never publish a diverged model (a sharded one is checked in its gathered `model_state`).
    check_finite(model if model_state is None else model_state, f"the model at step {step}")
    tmp = Path(staging) if staging is not None else staging_dir(run_dir, step)
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=model_state)
        if model_state is not None:  # a sharded model's class is a wrapper: name the model's own
            _set_architectures(tmp, model)
        tokenizer.save_pretrained(tmp)
        torch.save(training_state, tmp / STATE_FILE)
        write_checksums(tmp)
        apply_umask_tree(tmp)  # mkdtemp (0700) and safetensors (0600) would hide it from everyone else
        _fsync_tree(tmp)
        if final.exists():
            # Re-saving a step (e.g. after a resume): move the old copy aside first, drop it after.
            old = ckpt_root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(ckpt_root)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        full = disk_full_error(err, ckpt_root, f"checkpoint {final.name}")
        if full is not None:
            raise full from None
        raise
    try:
        write_text_atomic(ckpt_root / LATEST, final.name + "\n")
    except OSError as err:
        full = disk_full_error(err, ckpt_root, f"the {LATEST} pointer")
        if full is not None:
            raise full from None
        raise
    prune_checkpoints(ckpt_root, keep=keep, protect=final.name)
    return final


def _set_architectures(step_dir: Path, model) -> None:
    from ssa.model import SSAForCausalLM

    cfg = json.loads((step_dir / "config.json").read_text(encoding="utf-8"))
    if isinstance(model, SSAForCausalLM):
        cfg["architectures"] = [SSAForCausalLM.__name__]
    (step_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def list_step_dirs(ckpt_root: Path) -> list[Path]:
    """Published step directories, oldest first (temporary and aside copies are skipped)."""
    if not ckpt_root.is_dir():
        return []
    dirs = [p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)]
    return sorted(dirs, key=lambda p: p.name)


def prune_checkpoints(ckpt_root: Path, *, keep: int, protect: str) -> None:
    dirs = [p for p in list_step_dirs(ckpt_root) if p.name != protect]
    for p in dirs[: max(0, len(dirs) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    # Leftovers of a crashed write are never referenced by `latest`: remove them too.
    for p in ckpt_root.iterdir():
        if p.is_dir() and (p.name.startswith(".tmp-") or p.name.startswith(".old-")):
            shutil.rmtree(p, ignore_errors=True)


def _check_step_dir(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise ValueError(f"checkpoint {path} is incomplete or corrupt: config.json is missing")
    if not any((path / w).is_file() for w in WEIGHT_FILES):
        raise ValueError(f"checkpoint {path} is incomplete or corrupt: model.safetensors is missing")
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint {path} is corrupt: config.json does not parse ({err})") from None
    return path


def resolve_checkpoint(path) -> Path:
    """A run dir (-> its `latest` step), a run's checkpoints/ dir, or a step dir -> the step dir."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.is_file():
        raise ValueError(f"checkpoint {p} is a file; expected a run directory or a checkpoint directory")
    if (p / "config.json").is_file():
        return _check_step_dir(p)
    root = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    latest = root / LATEST
    if not latest.is_file():
        raise FileNotFoundError(
            f"checkpoint {p}: neither a checkpoint directory (config.json) nor a run directory "
            f"with checkpoints/{LATEST}"
        )
    name = latest.read_text(encoding="utf-8").strip()
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"checkpoint pointer {latest} is corrupt (holds {name!r})")
    step = root / name
    if not step.is_dir():
        raise FileNotFoundError(f"checkpoint pointer {latest} names {name}, which does not exist")
    return _check_step_dir(step)


def load_training_state(step_dir: Path, *, verify: bool | None = None) -> dict:
    """The optimizer/RNG/data state saved with a checkpoint; a one-line error when unusable."""
    import torch

    f = Path(step_dir) / STATE_FILE
    if not f.is_file():
        raise FileNotFoundError(f"checkpoint {step_dir} has no {STATE_FILE}: it cannot be resumed")
    verify_checksums(step_dir, [STATE_FILE], verify=verify)
    try:
        state = torch.load(f, map_location="cpu", weights_only=False)
    except Exception as err:  # pickle / zip errors vary by torch version
        raise ValueError(f"checkpoint state {f} is corrupt: {type(err).__name__}: {err}") from None
    missing = [k for k in ("step", "optimizer", "rng", "data") if k not in state]
    if missing:
        raise ValueError(f"checkpoint state {f} is corrupt: missing {missing}")
    return state


def load_model(step_dir: Path, device=None, dtype=None, *, verify: bool | None = None, **config_overrides):
    """SSAForCausalLM from a step dir; `config_overrides` change config attributes at load time.

    The weight files are checked against checksums.json (`verify=False` or SSA_SKIP_CHECKSUMS=1
    skips that) and the loaded parameters must be finite.
    """
    from ssa.model import SSAForCausalLM

    _quiet_transformers()
    verify_checksums(step_dir, [p.name for p in Path(step_dir).glob("*.safetensors")], verify=verify)
    try:
        model = SSAForCausalLM.from_pretrained(step_dir, **config_overrides)
    except (OSError, RuntimeError, KeyError) as err:
        raise ValueError(f"checkpoint {step_dir} could not be loaded: {type(err).__name__}: {err}") from None
    except Exception as err:  # safetensors raises its own error types on truncated files
        if type(err).__name__ in ("SafetensorError", "HeaderTooLarge", "HeaderTooSmall"):
            raise ValueError(f"checkpoint {step_dir} weights are corrupt: {err}") from None
        raise
    check_finite(model, f"checkpoint {step_dir}")  # before a cast: float16 may overflow legitimately large values
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)
    return model


def load_tokenizer(step_dir: Path):
    from transformers import PreTrainedTokenizerFast

    if not (Path(step_dir) / "tokenizer.json").is_file():
        raise FileNotFoundError(f"checkpoint {step_dir} has no tokenizer.json")
    try:
        return PreTrainedTokenizerFast.from_pretrained(step_dir)
    except Exception as err:
        raise ValueError(f"checkpoint {step_dir} tokenizer could not be loaded: {err}") from None


def load_for_inference(path, device=None, dtype=None, *, verify: bool | None = None):
    """(model in eval mode, tokenizer) from a run dir (latest checkpoint) or a checkpoint dir.

    `device` / `dtype` are passed to `model.to`; both may be strings ("cuda", "bfloat16").
    """
    import torch

    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype must be a torch dtype or its name (float32, bfloat16, float16), got {dtype!r}")
        dtype = getattr(torch, dtype)
    step_dir = resolve_checkpoint(path)
    model = load_model(step_dir, device=device, dtype=dtype, verify=verify)
    model.eval()
    return model, load_tokenizer(step_dir)
