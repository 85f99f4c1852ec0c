"""Train a pair model (a sequence-pair classifier with one relevance logit) and save it as a cross-encoder.

The output folder loads with ``rerank_backend=cross-encoder`` / ``rerank_model=<folder>`` (sentence-
transformers ``CrossEncoder``; score = sigmoid(logit)) and serves ``POST /similarity``. It holds the
best checkpoint by dev F1, the tokenizer, ``metrics.jsonl`` (one line per epoch), TensorBoard logs
when ``tensorboard`` is installed, and a model card (``README.md`` + ``kbsearch_pair_model.json``).

Recipes: ``lora`` (peft; the reference recipe r=8, alpha=32, dropout 0.1 on the attention q/k/v
projections) for large bases such as Qwen3-Embedding-0.6B/4B loaded as sequence classifiers, or
``full`` fine-tuning for small bases such as the bundled e5-small; ``auto`` picks LoRA above
``lora_above_params`` parameters. AdamW (lr 1e-4 for LoRA, 3e-5 for full fine-tuning unless set), ReduceLROnPlateau on the dev loss, early stopping on dev F1,
a seeded shuffle, mixed precision on CUDA.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import platform
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kbsearch.devices import check_device, check_model_path, quiet_model_loading, resolve_device
from kbsearch.errors import BadInputError, MissingDependencyError
from kbsearch.finetune.pairs import Pair
from kbsearch.rerank.card import CARD

log = logging.getLogger(__name__)

#: q/k/v projection names per architecture family, for LoRA.
LORA_TARGETS = {"bert": ["query", "key", "value"], "xlm-roberta": ["query", "key", "value"],
                "default": ["q_proj", "k_proj", "v_proj"]}
#: Learning rate when the recipe names none: the reference LoRA recipe's 1e-4; 3e-5 for full fine-tuning,
#: where 1e-4 collapsed e5-small on AFQMC to the class prior (4 epochs on an H100) and 3e-5 learned.
DEFAULT_LR = {"lora": 1e-4, "full": 3e-5}


@dataclass
class Recipe:
    """Every training knob; the defaults are the reference recipe (LoRA numbers apply to ``lora``)."""

    base: str
    method: Literal["auto", "lora", "full"] = "auto"
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: list[str] | None = None  # None: q/k/v projections of the base's architecture
    lora_above_params: int = 300_000_000
    freeze_embeddings: bool = True  # full method: keep the (large, multilingual) token embeddings fixed
    max_length: int = 64
    lr: float | None = None  # None: DEFAULT_LR of the method used
    weight_decay: float = 0.01
    batch_size: int = 128
    epochs: int = 15
    plateau_patience: int = 2
    plateau_factor: float = 0.8
    early_stop_patience: int = 3
    seed: int = 42
    device: str = "auto"
    max_train_pairs: int = 0  # 0 = all; else a seeded sample (bounded CPU runs)
    balance: bool = False  # weight positives by negatives/positives in the loss (imbalanced pairs)
    save_half: bool = False  # write the final weights as fp16 (half the disk; loaders upcast on CPU)
    data: list[str] = field(default_factory=list)  # provenance: what the pairs came from

    def check(self) -> None:
        """Raise ``BadInputError`` naming the first bad field."""
        check_device(self.device)
        check_model_path(self.base, "base")
        positive = {"lora_r": self.lora_r, "lora_alpha": self.lora_alpha, "max_length": self.max_length,
                    "batch_size": self.batch_size, "epochs": self.epochs, "early_stop_patience": self.early_stop_patience}
        for name, value in positive.items():
            if value < 1:
                raise BadInputError(f"recipe field {name!r} must be at least 1, got {value}")
        if self.lr is not None and not 0 < self.lr < 1:
            raise BadInputError(f"recipe field 'lr' must be in (0, 1), got {self.lr}")
        if not 0 < self.plateau_factor < 1:
            raise BadInputError(f"recipe field 'plateau_factor' must be in (0, 1), got {self.plateau_factor}")
        if not 0 <= self.lora_dropout < 1:
            raise BadInputError(f"recipe field 'lora_dropout' must be in [0, 1), got {self.lora_dropout}")
        if self.method not in ("auto", "lora", "full"):
            raise BadInputError(f"recipe field 'method' must be auto, lora or full, got {self.method!r}")


@dataclass
class PairMetrics:
    """Dev-set figures at threshold 0.5 on P(match): F1 etc. of the positive class, and macro F1."""

    loss: float
    accuracy: float
    f1: float
    precision: float
    recall: float
    macro_f1: float


@dataclass
class TrainResult:
    """What ``finetune`` produced."""

    out: Path
    method: str
    best_epoch: int
    best: PairMetrics
    epochs_run: int
    seconds: float
    train_pairs: int
    dev_pairs: int
    trainable_params: int
    total_params: int
    history: list[dict[str, Any]]


def pair_metrics(probs: np.ndarray, labels: np.ndarray, loss: float) -> PairMetrics:
    """Accuracy, F1, precision and recall of ``probs >= 0.5`` against 0/1 ``labels``, and macro F1."""
    pred = probs >= 0.5
    gold = labels.astype(bool)

    def prf(p: np.ndarray, g: np.ndarray) -> tuple[float, float, float]:
        tp, fp, fn = int((p & g).sum()), int((p & ~g).sum()), int((~p & g).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        return precision, recall, (2 * precision * recall / (precision + recall) if precision + recall else 0.0)

    precision, recall, f1 = prf(pred, gold)
    f1_negative = prf(~pred, ~gold)[2]
    return PairMetrics(loss=loss, accuracy=float((pred == gold).mean()) if len(gold) else 0.0, f1=f1,
                       precision=precision, recall=recall, macro_f1=(f1 + f1_negative) / 2)


def _load_base(recipe: Recipe) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_model_loading()
    tokenizer = AutoTokenizer.from_pretrained(recipe.base)
    model = AutoModelForSequenceClassification.from_pretrained(recipe.base, num_labels=1)
    if tokenizer.pad_token is None:  # decoder bases (Qwen3) have no pad token
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def _apply_lora(model: Any, recipe: Recipe) -> Any:
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError as exc:
        raise MissingDependencyError("method 'lora' needs peft: pip install 'kbsearch[train]'") from exc
    targets = recipe.lora_targets or LORA_TARGETS.get(model.config.model_type, LORA_TARGETS["default"])
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
                        lora_dropout=recipe.lora_dropout, target_modules=targets)
    return get_peft_model(model, config)


def _batches(pairs: list[Pair], size: int, rng: random.Random | None) -> list[list[Pair]]:
    order = list(range(len(pairs)))
    if rng is not None:
        rng.shuffle(order)
    return [[pairs[i] for i in order[s : s + size]] for s in range(0, len(order), size)]


def finetune(recipe: Recipe, train: list[Pair], dev: list[Pair], out: Path, *,
             progress: bool = True, log_line: Callable[[str], None] | None = None,
             checkpoint_every_s: float = 0.0) -> TrainResult:
    """Train on ``train``, keep the checkpoint with the best dev F1, write it to ``out``.

    With ``checkpoint_every_s`` > 0 the run can be killed and resumed: at least that often, and after
    every epoch, the trainable weights, the optimizer and scheduler, the random states and the position
    (epoch, step) are saved in ``out/checkpoint/``; called again with the same recipe and pairs on that
    folder, training continues where the checkpoint was taken, and ends as the uninterrupted run would
    (same batches, same dropout). The checkpoint is removed when training completes.

    Raises:
        BadInputError: a bad recipe field, no training or dev pairs, only one label in ``train``, or
            ``out`` exists, is not empty and holds no checkpoint of this run.
        MissingDependencyError: LoRA requested without peft.
    """
    import torch

    recipe.check()
    if not train or not dev:
        raise BadInputError("finetune needs training pairs and dev pairs")
    if len({p.label for p in train}) < 2:
        raise BadInputError("training pairs must contain both labels (0 and 1)")
    out = Path(out)
    run_id = _run_id(recipe, train, dev)
    resume = _read_checkpoint(out, run_id) if checkpoint_every_s > 0 else None
    if resume is None and out.exists() and any(out.iterdir()):
        raise BadInputError(f"{out}: output folder exists and is not empty")
    rng = random.Random(recipe.seed)
    if recipe.max_train_pairs and len(train) > recipe.max_train_pairs:
        train = rng.sample(train, recipe.max_train_pairs)
    random.seed(recipe.seed)
    np.random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    device = resolve_device(recipe.device)
    say = log_line or (lambda line: log.info("%s", line))

    tokenizer, model = _load_base(recipe)
    total = sum(p.numel() for p in model.parameters())
    method = recipe.method if recipe.method != "auto" else ("lora" if total > recipe.lora_above_params else "full")
    if recipe.lr is None:
        recipe = dataclasses.replace(recipe, lr=DEFAULT_LR[method])
    if method == "lora":
        model = _apply_lora(model, recipe)
    elif recipe.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=recipe.lr, weight_decay=recipe.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=recipe.plateau_factor,
                                                         patience=recipe.plateau_patience)
    use_amp = device.startswith("cuda")
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    n_pos = sum(p.label for p in train)
    pos_weight = (len(train) - n_pos) / n_pos if recipe.balance else 1.0
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=device))
    writer = _tensorboard(out / "runs")
    out.mkdir(parents=True, exist_ok=True)

    def encode(batch: list[Pair]) -> dict[str, Any]:
        enc = tokenizer([p.a for p in batch], [p.b for p in batch], truncation=True, max_length=recipe.max_length,
                        padding=True, return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items()}

    def logits_of(batch: list[Pair]) -> Any:
        with torch.autocast(device_type="cuda", dtype=amp_dtype, enabled=use_amp):
            return model(**encode(batch)).logits.view(-1).float()

    def evaluate() -> PairMetrics:
        model.eval()
        probs, losses = [], []
        with torch.no_grad():
            for batch in _batches(dev, recipe.batch_size, None):
                logits = logits_of(batch)
                labels = torch.tensor([float(p.label) for p in batch], device=logits.device)
                losses.append(float(loss_fn(logits, labels)) * len(batch))
                probs.append(torch.sigmoid(logits).cpu().numpy())
        labels = np.array([p.label for p in dev])
        return pair_metrics(np.concatenate(probs), labels, sum(losses) / len(dev))

    def summary() -> TrainResult:
        assert best is not None
        return TrainResult(out=out, method=method, best_epoch=best_epoch, best=best, epochs_run=len(history),
                           seconds=round(time.perf_counter() - t0, 1), train_pairs=len(train), dev_pairs=len(dev),
                           trainable_params=n_trainable, total_params=total, history=history)

    t0 = time.perf_counter()
    best: PairMetrics | None = None
    best_epoch, best_state, stale, history = 0, None, 0, []
    steps_per_epoch = math.ceil(len(train) / recipe.batch_size)
    first_epoch, done_steps, running = 1, 0, 0.0
    if resume is not None:  # continue a killed run where its checkpoint was taken
        model.load_state_dict(resume["trainable"], strict=False)
        optimizer.load_state_dict(resume["optimizer"])
        plateau.load_state_dict(resume["plateau"])
        scaler.load_state_dict(resume["scaler"])
        history = resume["history"]
        best = PairMetrics(**resume["best"]) if resume["best"] else None
        best_epoch, stale = resume["best_epoch"], resume["stale"]
        best_state = torch.load(out / CHECKPOINT / "best.pt") if best is not None else None
        first_epoch, done_steps, running = resume["epoch"], resume["step"], resume["running"]
        rng.setstate(resume["epoch_rng"])
        torch.set_rng_state(resume["torch_rng"])  # dropout continues as it would have
        t0 -= resume["elapsed"]
        (out / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history), encoding="utf-8")
        say(f"resuming the interrupted training at epoch {first_epoch}, step {done_steps}/{steps_per_epoch}")
    last_line = last_checkpoint = time.perf_counter()

    def checkpoint(epoch: int, step: int, epoch_rng: object) -> None:
        """Save where training is (``step`` batches of ``epoch`` done), so a killed run resumes here."""
        _write_checkpoint(out, run_id, {
            "epoch": epoch, "step": step, "running": running, "epoch_rng": epoch_rng,
            "torch_rng": torch.get_rng_state(), "trainable": _trainable_state(model),
            "optimizer": optimizer.state_dict(), "plateau": plateau.state_dict(), "scaler": scaler.state_dict(),
            "history": history, "best": asdict(best) if best is not None else None, "best_epoch": best_epoch,
            "stale": stale, "elapsed": time.perf_counter() - t0})

    for epoch in range(first_epoch, recipe.epochs + 1):
        model.train()
        epoch_rng = rng.getstate()
        batches = _batches(train, recipe.batch_size, rng)
        skip, done_steps = done_steps, 0
        if not skip:
            running = 0.0
        bar = _bar(steps_per_epoch, f"epoch {epoch}/{recipe.epochs}", progress)
        bar.update(skip)
        for step, batch in enumerate(batches, start=1):
            if step <= skip:
                continue
            labels = torch.tensor([float(p.label) for p in batch], device=device)
            loss = loss_fn(logits_of(batch), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            running += float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{running / step:.4f}")
            if progress and bar.disable and time.perf_counter() - last_line >= LOG_EVERY_S:  # no bar (a log): a line now and then
                last_line = time.perf_counter()
                say(f"epoch {epoch}, step {step}/{steps_per_epoch}: train loss {running / step:.4f}, "
                    f"{last_line - t0:.0f} s")
            if writer is not None:
                writer.add_scalar("train/loss", float(loss.detach()), (epoch - 1) * steps_per_epoch + step)
            if checkpoint_every_s > 0 and time.perf_counter() - last_checkpoint >= checkpoint_every_s:
                checkpoint(epoch, step, epoch_rng)
                last_checkpoint = time.perf_counter()
        bar.close()
        metrics = evaluate()
        plateau.step(metrics.loss)
        lr = optimizer.param_groups[0]["lr"]
        row = {"epoch": epoch, "train_loss": running / max(1, steps_per_epoch), "lr": lr,
               "seconds": round(time.perf_counter() - t0, 1), **{f"dev_{k}": v for k, v in asdict(metrics).items()}}
        history.append(row)
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if writer is not None:
            for k, v in asdict(metrics).items():
                writer.add_scalar(f"dev/{k}", v, epoch)
            writer.add_scalar("train/lr", lr, epoch)
        say(f"epoch {epoch}: train loss {row['train_loss']:.4f}, dev loss {metrics.loss:.4f}, "
            f"accuracy {metrics.accuracy:.4f}, F1 {metrics.f1:.4f}, macro F1 {metrics.macro_f1:.4f}, lr {lr:.2e}")
        if best is None or metrics.f1 > best.f1:
            best, best_epoch, stale = metrics, epoch, 0
            best_state = _trainable_state(model)  # the frozen weights never change
            if checkpoint_every_s > 0:
                (out / CHECKPOINT).mkdir(exist_ok=True)
                _save_torch(best_state, out / CHECKPOINT / "best.pt")
            # On disk too, so an interrupted run still leaves its best epoch: the model itself (full) or
            # the adapter (LoRA, merged at the end), with a card marked incomplete.
            if method == "lora":
                model.save_pretrained(out / "lora-adapter")
            else:
                model.save_pretrained(out, safe_serialization=True)
                tokenizer.save_pretrained(out)
            write_card(out, recipe, summary(), device, complete=False)
        else:
            stale += 1
        if stale >= recipe.early_stop_patience:
            say(f"early stop: dev F1 has not improved for {stale} epochs (best epoch {best_epoch})")
            break
        if checkpoint_every_s > 0:
            checkpoint(epoch + 1, 0, rng.getstate())
            last_checkpoint = time.perf_counter()
    assert best is not None and best_state is not None
    model.load_state_dict(best_state, strict=False)
    if method == "lora":
        model = model.merge_and_unload()
        shutil.rmtree(out / "lora-adapter", ignore_errors=True)
    model.to("cpu", dtype=torch.float16 if recipe.save_half else torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if writer is not None:
        writer.close()
    result = summary()
    write_card(out, recipe, result, device, complete=True)
    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    return result


CHECKPOINT = "checkpoint"
"""Folder in a training's output holding what a killed run resumes from (``finetune(checkpoint_every_s=)``)."""


def _trainable_state(model: Any) -> dict[str, Any]:
    """A CPU copy of the weights training changes (the frozen ones never do)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def _run_id(recipe: Recipe, train: list[Pair], dev: list[Pair]) -> str:
    """What a checkpoint must match to be resumed: the recipe and the pairs, hashed."""
    h = hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True, default=str).encode("utf-8"))
    for p in train + [Pair("", "", -1)] + dev:
        h.update(json.dumps([p.a, p.b, p.label], ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


def _save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file, fsynced and renamed: a kill leaves the old file or the new one."""
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_checkpoint(out: Path, run_id: str, state: dict[str, Any]) -> None:
    folder = out / CHECKPOINT
    folder.mkdir(parents=True, exist_ok=True)
    _save_torch({"run": run_id, **state}, folder / "state.pt")


def _read_checkpoint(out: Path, run_id: str) -> dict[str, Any] | None:
    """The checkpoint in ``out`` when it belongs to this run and is readable; None otherwise."""
    import torch

    try:
        state = torch.load(out / CHECKPOINT / "state.pt")
    except FileNotFoundError:
        return None
    except Exception as exc:  # a torn or foreign file: start over
        log.warning("ignoring the unreadable training checkpoint in %s: %s", out, exc)
        return None
    if not isinstance(state, dict) or state.get("run") != run_id:
        log.warning("the training checkpoint in %s is from another recipe or other pairs: starting over", out)
        return None
    return state


def write_card(out: Path, recipe: Recipe, result: TrainResult, device: str, *, complete: bool) -> None:
    """The model card: base, data, recipe, dev metrics, date and machine (JSON and a README).

    ``complete`` is False while training runs (the folder then holds the best epoch so far; for LoRA
    only its adapter, in ``lora-adapter/``).
    """
    card = {
        "kind": "kbsearch pair model (sequence-pair classifier, 1 logit; score = sigmoid)",
        "complete": complete,
        "base": recipe.base, "data": recipe.data, "method": result.method,
        "recipe": {k: v for k, v in asdict(recipe).items() if k not in ("base", "data")},
        "train_pairs": result.train_pairs, "dev_pairs": result.dev_pairs,
        "trainable_params": result.trainable_params, "total_params": result.total_params,
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "dev": asdict(result.best),
        "seconds": result.seconds, "device": device,
        "machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
        "date": dt.date.today().isoformat(),
    }
    (out / CARD).write_text(json.dumps(card, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    b = result.best
    (out / "README.md").write_text(
        f"# Pair model trained by `kbsearch finetune`{'' if complete else ' (training still running or interrupted)'}\n\n"
        f"- Base: `{recipe.base}`\n- Data: {', '.join(recipe.data) or 'unspecified'}\n"
        f"- Method: {result.method} ({result.trainable_params:,} of {result.total_params:,} parameters trained)\n"
        f"- Recipe: lr {recipe.lr}, batch {recipe.batch_size}, max_length {recipe.max_length}, up to "
        f"{recipe.epochs} epochs, seed {recipe.seed}\n"
        f"- Dev ({result.dev_pairs} pairs, best epoch {result.best_epoch}): accuracy {b.accuracy:.4f}, "
        f"F1 {b.f1:.4f} (macro F1 {b.macro_f1:.4f}), precision {b.precision:.4f}, recall {b.recall:.4f}\n"
        f"- Trained on {device} in {result.seconds:.0f} s, {card['date']}\n\n"
        "Use: `KBSEARCH_RERANK__BACKEND=cross-encoder KBSEARCH_RERANK__MODEL=<this folder>`.\n",
        encoding="utf-8")


def _tensorboard(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; metrics.jsonl is always written
        return None
    return SummaryWriter(str(path))


#: Off a terminal (no progress bar), training says where it is at most this often.
LOG_EVERY_S = 60.0


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=None if enabled else True, leave=False)  # None: no bar off a TTY (logs)
