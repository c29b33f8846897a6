"""One-shot joint multi-precision training (METHOD.md §4–5, paper Alg. A.1 and A.2) and FP32 training.

For each batch, Alg. A.2 (the paper's loop, ``algorithm="a2"``) runs every bit-width from high to low:
forward, loss, backward, and an optimizer **step right away**, the scales at the ALRS learning rate of
that precision (Eq. 6–7) and the weights at λ. Alg. A.1 (``"a1"``, the conventional loop) accumulates the
gradients of all bit-widths and takes one step. There each precision's own parameters (per-bit activation
scales, per-bit BN, per-bit weight scales) are in parameter groups of their own and step at that precision's
ALRS rate; the weight scale shared by every precision can only have each precision's share of its gradient
weighted by η_b, which under Adam changes the step's direction, not its size (see :mod:`labkit.train.alrs`).
Which methods get ALRS at all (the paper's, not the baselines with separate per-bit scales) and what a HASB
SuperNet gets (Alg. A.3: one λ) is decided by :func:`labkit.train.alrs.alrs_rule_for`. With ``bits=None``
the same loop trains an FP32 model, the pretrained starting point.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from labkit.convert import quantized_layers, set_bits
from labkit.data import default_workers, make_loader
from labkit.errors import LabkitError
from labkit.evaluate import FP32, count_correct, fixed_subset
from labkit.quant.lsq import restored_fake_quant_path, select_fake_quant_path
from labkit.train.alrs import AdaptiveScaleLR, alrs_rule_for, per_bit_parameters
from labkit.train.checkpoint import atomic_torch_save, capture_rng, load_training_checkpoint, restore_rng
from labkit.train.config import TrainConfig
from labkit.train.distributed import ProcessGroup, sum_across
from labkit.train.arithmetic import resolve_arithmetic
from labkit.train.kd import ProgressiveSelfDistillation, recursive_targets, soft_cross_entropy
from labkit.train.optim import cosine_lr, make_optimizer, multistep_lr, set_learning_rates

class TrainingDiverged(LabkitError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class WithIndex(Dataset):
    """Item i is ``(image, label, i)``: PS-KD finds a sample's memory by its index."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        return image, label, index


class JointTrainer:
    """Trains ``model`` (already quantized by :func:`labkit.quantize_model`, or FP32) as ``config`` says.

    Two optional hooks let a caller follow :meth:`fit` without touching the loop (e.g.
    :mod:`labkit.live_training`); both are plain attributes, ``None`` by default:

    - ``on_step(trainer, losses)``: after every batch, right after ``global_step`` counted it; ``losses`` is
      what :meth:`train_step` returned (``{bits: loss}``, every pass of the batch); ``trainer.train_sums``
      holds the epoch's running sums including this batch.
    - ``on_epoch(trainer, row)``: after every epoch, right after its ``row`` was appended to ``history`` (with
      the evaluations when that epoch evaluated), before the checkpoint and the log are written.
    """

    def __init__(self, model: torch.nn.Module, config: TrainConfig, train_set: Dataset, eval_sets: dict[str, Dataset],
                 out_dir, num_classes: int, group: ProcessGroup | None = None, show_progress: bool = True,
                 bit_sampler=None, on_step=None, on_epoch=None):
        self.config = config
        self.on_step = on_step
        self.on_epoch = on_epoch
        self.group = group or ProcessGroup()
        self.device = self.group.device
        self.out_dir = Path(out_dir)
        self.num_classes = num_classes
        self.bits = tuple(config.bits) if config.bits is not None else None
        self.show_progress = show_progress and self.group.is_main
        self.model = model.to(self.device)
        if self.group.distributed:
            from labkit.train.sync_bn import convert_sync_batchnorm

            # Batch norm over the global batch, so N processes train exactly like one with the same batch.
            self.model = convert_sync_batchnorm(self.model, self.device)
        # bf16 autocast and channels_last as set, or (None) chosen for the device: labkit.train.arithmetic
        self.amp_bf16, self.channels_last = resolve_arithmetic(config.amp_bf16, config.channels_last, self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_set = WithIndex(train_set)
        self.train_size = min(len(train_set), config.train_subset or len(train_set))
        self.eval_sets = {name: fixed_subset(ds, config.eval_subset, 12345) for name, ds in eval_sets.items()}
        self.steps_per_epoch = self.train_size // config.batch_size
        if self.steps_per_epoch == 0:
            raise LabkitError(f"batch_size={config.batch_size} is larger than the {self.train_size} training "
                             "samples; lower batch_size or raise train_subset.")
        self.total_steps = self.steps_per_epoch * config.epochs
        # SuperNet training (HASB, Alg. A.3): bit_sampler(default_bits, epoch, batch) -> int or {layer: bits}
        self.bit_sampler = bit_sampler
        self.alrs_rule = alrs_rule_for(config.method, config.alrs, config.alrs_scope, bit_sampler is not None,
                                       config.supernet_alrs)
        per_layer = bit_sampler is not None and self.alrs_rule != "none" and config.supernet_alrs == "sampled_bit"
        self.optimizer = make_optimizer(self.model, config.optimizer, config.lr, config.weight_decay, config.momentum,
                                        shared_scales_per_layer=per_layer)
        self.alrs = (AdaptiveScaleLR(self.bits, self.alrs_rule, config.alrs_gradient_term and self.alrs_rule != "none")
                     if self.bits else None)
        self.alrs_roles = ("scales", "no_decay") if config.alrs_targets == "scales_bn_bias" else ("scales",)
        self.layers = quantized_layers(self.model) if self.bits else {}
        self.bit_owner = per_bit_parameters(self.model) if self.bits else {}
        # A.1: the shared parameters under ALRS, whose gradient gets each precision's share weighted by its factor.
        self.reweighted = [(g.get("layer"), p) for g in self.optimizer.param_groups
                           if g["name"] in self.alrs_roles and g.get("bits") is None for p in g["params"]]
        #: Called after every optimizer step of a multi-precision run, with the parameters in their own space
        #: (optimizer post-hooks see ``log s`` with ``weight_scale_update="log"``).
        self.step_callbacks: list = []
        # Opt-in (issue 10 item 10): Adam on log s for the weight scales, so they stay positive.
        self.log_scales = None
        if self.bits and config.weight_scale_update == "log":
            from labkit.train.scale_health import LogScaleUpdate

            self.log_scales = LogScaleUpdate(self.model, config.weight_scale_log_lr)
        # A.1: gradients whose per-pass share is needed (the weight scales for Eq. 6, the reweighted ones).
        self.tracked = {id(p): p for layer in self.layers.values() for p in layer.weight_quantizer.parameters()}
        self.tracked.update((id(p), p) for _, p in self.reweighted)
        self.pskd = (ProgressiveSelfDistillation(len(self.train_set), num_classes, config.epochs, config.kd_alpha)
                     if config.kd == "pskd" else None)
        self.train_model = self.model
        if self.group.distributed:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.bits is not None)
        self.epoch, self.batch, self.global_step = 0, 0, 0
        self.history: list[dict] = []
        self.train_sums: dict[str, float] = {}

    # ---------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def state_dict(self) -> dict:
        return {
            "format": "labkit-train/1",
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "alrs": self.alrs.state_dict() if self.alrs else None,
            "pskd": self.pskd.state_dict() if self.pskd else None,
            "position": {"epoch": self.epoch, "batch": self.batch, "global_step": self.global_step},
            "history": self.history,
            "train_sums": self.train_sums,
            "rng": capture_rng(),
        }

    def save_checkpoint(self) -> None:
        """Write the resumable state; never one with non-finite weights (that stops the run instead)."""
        self._check_parameters_finite()
        if self.group.is_main:
            atomic_torch_save(self.state_dict(), self.checkpoint_path)

    def load_checkpoint(self, path=None) -> None:
        state = load_training_checkpoint(path or self.checkpoint_path)
        saved = TrainConfig.from_dict(state["config"])
        if saved.to_dict() != self.config.to_dict():
            changed = sorted(k for k, v in saved.to_dict().items() if self.config.to_dict()[k] != v)
            raise LabkitError(f"the checkpoint was written with other settings ({changed}); resume with the run's "
                              "own settings (drop the overrides) or start a new --out folder.")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.alrs:
            self.alrs.load_state_dict(state["alrs"])
        if self.pskd:
            self.pskd.load_state_dict(state["pskd"])
        position = state["position"]
        self.epoch, self.batch, self.global_step = position["epoch"], position["batch"], position["global_step"]
        self.history, self.train_sums = state["history"], state["train_sums"]
        restore_rng(state["rng"])

    # ---------------------------------------------------------------- data
    def train_loader(self, epoch: int, start_batch: int) -> DataLoader:
        """This epoch's batches from ``start_batch`` on; each rank gets its share of every global batch."""
        if self.config.batch_size % self.group.world_size:
            raise LabkitError(f"batch_size={self.config.batch_size} must divide evenly over {self.group.world_size} processes.")
        # The underlying data set with ``with_index``: whole-batch tensor augmentation where the data fit in
        # memory (labkit.cifar_memory), batches (images, labels, indices) as WithIndex gives them.
        return make_loader(self.train_set.dataset, self.config.batch_size // self.group.world_size, train=True,
                           with_index=True, seed=self.config.seed, workers=self.config.workers, subset=self.config.train_subset,
                           epoch=epoch, start_batch=start_batch, num_replicas=self.group.world_size,
                           rank=self.group.rank, pin_memory=self.device.type == "cuda")

    def eval_loader(self, dataset: Dataset) -> DataLoader:
        shard = Subset(dataset, list(range(self.group.rank, len(dataset), self.group.world_size)))
        workers = self.config.workers if self.config.workers is not None else default_workers()
        return DataLoader(shard, batch_size=max(self.config.batch_size, 128), shuffle=False, num_workers=workers)

    # ---------------------------------------------------------------- one step
    def _prepare(self, images: torch.Tensor, labels: torch.Tensor):
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.to(memory_format=torch.channels_last)
        return images, labels.to(self.device, non_blocking=True)

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp_bf16):
            return self.train_model(images).float()

    def _loss(self, logits, labels, indices, bits, higher_logits, epoch):
        if self.pskd is not None:
            return soft_cross_entropy(logits, self.pskd.targets(indices, labels, self.num_classes, epoch))
        if self.config.kd == "recursive" and higher_logits is not None:
            return soft_cross_entropy(logits, recursive_targets(higher_logits))
        return F.cross_entropy(logits, labels, label_smoothing=self.config.label_smoothing)

    def _diverged(self, what: str, bits=None) -> TrainingDiverged:
        where = f"epoch {self.epoch + 1}, batch {self.batch + 1}" + (f", {bits}-bit pass" if bits not in (None, FP32) else "")
        kept = (f"its last good checkpoint ({self.checkpoint_path}) is kept; fix the cause, then continue with --resume"
                if self.checkpoint_path.exists() else "no checkpoint had been written yet; fix the cause and start again")
        return TrainingDiverged(f"{what} at {where}; the run stopped and {kept} (e.g. lower lr, check the data).")

    def _check_finite(self, loss: torch.Tensor, bits) -> None:
        if not torch.isfinite(loss):
            raise self._diverged(f"the loss became {loss.item()}", bits)

    def _check_parameters_finite(self) -> None:
        for name, param in self.model.named_parameters():
            if not torch.isfinite(param).all():
                raise self._diverged(f"parameter {name} became NaN or infinite")

    def _record(self, bits, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        sums = self.train_sums
        key = str(bits)
        sums[f"loss_{key}"] = sums.get(f"loss_{key}", 0.0) + float(loss.detach()) * labels.numel()
        sums[f"correct_{key}"] = sums.get(f"correct_{key}", 0.0) + float((logits.argmax(1) == labels).sum())
        sums[f"seen_{key}"] = sums.get(f"seen_{key}", 0.0) + labels.numel()

    def _layer_weight_scale_grads(self, before: dict | None) -> list:
        """Per quantized layer, this pass's gradient of the weight scale(s) it ran with: one tensor per layer
        (Eq. 6's ∇s_b^i). ``before`` (A.1): the gradients accumulated by earlier passes, subtracted."""
        grads = []
        for layer in self.layers.values():
            parts = []
            for param in layer.weight_quantizer.parameters():
                if self.bit_owner.get(id(param), layer.bits) != layer.bits or param.grad is None:
                    continue
                earlier = before.get(id(param)) if before else None
                parts.append((param.grad if earlier is None else param.grad - earlier).flatten())
            grads.append(torch.cat(parts) if parts else None)
        return grads

    def _factor(self, bits: int, correction: float) -> float:
        """λ_b / λ of the scales of precision ``bits``: η_b times this pass's Eq. 6 correction."""
        return self.alrs.factors[bits] * correction

    def _group_factor(self, group: dict, pass_bits: int | None, correction: float, own: dict) -> float:
        """The learning-rate multiplier of one parameter group (A.2: at ``pass_bits``; A.1: ``pass_bits=None``)."""
        if group["name"] not in self.alrs_roles:
            return 1.0
        if group.get("bits") is not None:  # one precision's own parameters
            return own.get(group["bits"], self._factor(group["bits"], 1.0)) if pass_bits is None \
                else self._factor(group["bits"], correction)
        if pass_bits is None:  # A.1: shared parameters had their gradient shares weighted instead
            return 1.0
        if group.get("layer") is not None:  # SuperNet, supernet_alrs=sampled_bit: the layer's sampled bit
            return self._factor(self.layers[group["layer"]].bits, correction)
        return self._factor(pass_bits, correction)

    def _step(self) -> None:
        """One optimizer step (through ``log s`` for the weight scales with ``weight_scale_update="log"``)."""
        if self.log_scales is not None:
            self.log_scales.before()
        self.optimizer.step()
        if self.log_scales is not None:
            self.log_scales.after()
        for callback in self.step_callbacks:
            callback()

    def learning_rate(self, step: int) -> float:
        """λ at optimizer step ``step``: cosine (with warm-up) or, with ``lr_schedule="multistep"``, step decay."""
        if self.config.lr_schedule == "multistep":
            return multistep_lr(self.config.lr, step, self.total_steps)
        return cosine_lr(self.config.lr, step, self.total_steps, self.config.warmup_epochs * self.steps_per_epoch)

    def train_step(self, images, labels, indices, epoch: int) -> dict[int, float]:
        """One batch: FP32, or every bit-width by Alg. A.2 or A.1. Returns the loss of each pass.

        The fake-quant path is the config's (``compile_quant``, :func:`labkit.quant.lsq.path_for`) for the step and
        the caller's again after it, so a notebook's smoke trainer stays eager as ``labkit train`` does."""
        with restored_fake_quant_path():
            select_fake_quant_path(self.config.compile_quant)
            return self._train_step(images, labels, indices, epoch)

    def _train_step(self, images, labels, indices, epoch: int) -> dict[int, float]:
        lr = self.learning_rate(self.global_step)
        losses = {}
        if self.bits is None:
            self.optimizer.zero_grad(set_to_none=True)
            logits = self._forward(images)
            loss = self._loss(logits, labels, indices, FP32, None, epoch)
            self._check_finite(loss, FP32)
            loss.backward()
            set_learning_rates(self.optimizer, lr)
            self.optimizer.step()
            self._record(FP32, loss, logits, labels)
            return {FP32: float(loss.detach())}
        higher_logits = None
        a1 = self.config.algorithm == "a1"
        own_factors: dict[int, float] = {}  # A.1: λ_b/λ of each precision's own parameter groups
        if a1:
            self.optimizer.zero_grad(set_to_none=True)
        for bits in self.bits:  # high → low
            set_bits(self.model, self.bit_sampler(bits, epoch, self.batch) if self.bit_sampler else bits)
            before = None
            if a1:
                before = {key: None if p.grad is None else p.grad.clone() for key, p in self.tracked.items()}
            else:
                self.optimizer.zero_grad(set_to_none=True)
            logits = self._forward(images)
            loss = self._loss(logits, labels, indices, bits, higher_logits, epoch)
            self._check_finite(loss, bits)
            loss.backward()
            # Eq. 6's gradient term (opt-in) is the only reader of the per-layer scale gradients: gathered only for it
            multiplier = self.alrs.multiplier(
                bits, self._layer_weight_scale_grads(before) if self.alrs.use_gradient_term else ())
            correction = multiplier / self.alrs.factors[bits]
            if not a1:
                set_learning_rates(self.optimizer, lr, lambda g: self._group_factor(g, bits, correction, {}))
                self._step()
            else:
                own_factors[bits] = multiplier
                # The shared parameters: this precision's share of the accumulated gradient weighted by its
                # factor, before + w · (now − before) (the layer's sampled bit in a SuperNet with sampled_bit).
                for layer_name, param in self.reweighted:
                    if param.grad is None:
                        continue
                    weight = self._factor(self.layers[layer_name].bits, correction) if layer_name else multiplier
                    earlier = before.get(id(param))
                    if earlier is None:
                        param.grad.mul_(weight)
                    else:
                        param.grad = earlier.add_(param.grad - earlier, alpha=weight)
            if self.pskd is not None and bits == self.bits[0]:
                self.pskd.update(indices, logits)
            higher_logits = logits.detach()
            self._record(bits, loss, logits, labels)
            losses[bits] = float(loss.detach())
        if a1:
            set_learning_rates(self.optimizer, lr, lambda g: self._group_factor(g, None, 1.0, own_factors))
            self._step()
        return losses

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, dataset: Dataset, bits_list=None) -> dict[int, float]:
        """Top-1 accuracy (%) at every bit-width (or FP32), summed over all processes.

        Always in fp32 arithmetic, even when training runs under bf16 autocast: inside a bf16 convolution the
        fake-quantized values are rounded to bf16's 8 significant bits, which moves unsigned 8-bit activation
        codes by up to 0.6 of a step, so a bf16 evaluation would not score the 8-bit model that is stored and
        exported."""
        results = {}
        loader = self.eval_loader(dataset)
        for bits in bits_list or (self.bits or (FP32,)):
            if bits != FP32:
                set_bits(self.model, bits)
            counts = torch.tensor(count_correct(self.model, loader, self.device, False, self.channels_last),
                                  dtype=torch.float64)
            counts = sum_across(counts, self.group)
            results[bits] = round(100.0 * float(counts[0]) / max(float(counts[1]), 1.0), 4)
        return results

    # ---------------------------------------------------------------- the run
    def _epoch_row(self, epoch: int, evaluations: dict) -> dict:
        sums = sum_across(torch.tensor(list(self.train_sums.values()), dtype=torch.float64), self.group).tolist()
        sums = dict(zip(self.train_sums, sums))
        row = {"epoch": epoch + 1, "lr_end": self.learning_rate(self.global_step)}
        for bits in (self.bits or (FP32,)):
            seen = max(sums.get(f"seen_{bits}", 0.0), 1.0)
            row[f"train_loss_{bits}"] = round(sums.get(f"loss_{bits}", 0.0) / seen, 6)
            row[f"train_acc_{bits}"] = round(100.0 * sums.get(f"correct_{bits}", 0.0) / seen, 4)
        for name, accuracies in evaluations.items():
            for bits, value in accuracies.items():
                row[f"{name}_acc_{bits}"] = value
        return row

    def write_log(self) -> None:
        if not self.group.is_main or not self.history:
            return
        columns = list(dict.fromkeys(key for row in self.history for key in row))
        with open(self.out_dir / "log.csv", "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.history)

    def fit(self, resume: bool = False) -> dict:
        """Train to the end (resuming from ``checkpoint.pt`` when asked) and return the final evaluations."""
        if resume and self.checkpoint_path.exists():
            self.load_checkpoint()
        self.model.train()
        while self.epoch < self.config.epochs:
            epoch = self.epoch
            loader = self.train_loader(epoch, self.batch)
            progress = tqdm(loader, total=len(loader), initial=0, disable=not self.show_progress,
                            desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False, dynamic_ncols=True)
            for images, labels, indices in progress:
                images, labels = self._prepare(images, labels)
                losses = self.train_step(images, labels, indices, epoch)
                self.batch += 1
                self.global_step += 1
                if self.on_step is not None:
                    self.on_step(self, losses)
                progress.set_postfix({f"loss{b}": f"{v:.3f}" for b, v in losses.items()}, refresh=False)
                if self.config.checkpoint_every and self.batch % self.config.checkpoint_every == 0 \
                        and self.batch < self.steps_per_epoch:
                    self.save_checkpoint()
            progress.close()
            last = epoch + 1 == self.config.epochs
            evaluations = {}
            if last or (epoch + 1) % max(self.config.eval_every, 1) == 0:
                evaluations = {name: {str(k): v for k, v in self.evaluate(ds).items()} for name, ds in self.eval_sets.items()}
            self.history.append(self._epoch_row(epoch, evaluations))
            if self.on_epoch is not None:
                self.on_epoch(self, self.history[-1])
            self.train_sums = {}
            self.epoch, self.batch = epoch + 1, 0
            self.save_checkpoint()
            self.write_log()
            if self.show_progress:
                summary = ", ".join(f"{name} " + " ".join(f"{b}b={v:.2f}" for b, v in acc.items())
                                    for name, acc in evaluations.items())
                tqdm.write(f"epoch {epoch + 1}/{self.config.epochs}: {summary or 'trained'}")
        final = self.history[-1] if self.history else {}
        return {name: {str(b): final.get(f"{name}_acc_{b}") for b in (self.bits or (FP32,))} for name in self.eval_sets}
