"""Watch a :class:`~labkit.train.loop.JointTrainer` train: a progress bar and live figures (notebooks 03–05).

:class:`LiveTraining` runs ``trainer.fit()`` with a ``tqdm.auto`` progress bar over the steps and a plotly
``FigureWidget`` that grows as it goes: left, the training loss of every precision's pass (Alg. A.1/A.2: one
forward/backward per bit-width per batch); right, each precision's training accuracy on the batches (a moving
average over ``window`` steps) and, at every evaluation, the accuracy on each evaluation set. For SuperNet
training (HASB, Alg. A.3) :class:`LiveSuperNetTraining` adds a heatmap of the bits the sampler drew at the last
step, layer by layer, for each pass. :func:`train_live` picks the right one, shows it and trains.

The numbers come from the trainer itself: the per-pass losses that ``train_step`` returns, the per-step change
of the trainer's running sums (correct / seen images per precision), the epoch rows of ``trainer.history`` and
the sampler's own draws. Everything lives in plain lists (``steps``, ``losses``, ``batch_accuracy``,
``evaluations``, ``sampled_bits``) that the figures are drawn from, so a test checks them without a browser.

The view follows the trainer through its two hooks, ``trainer.on_step(trainer, losses)`` (after each batch) and
``trainer.on_epoch(trainer, row)`` (after each epoch's history row), set only while :meth:`run` runs and put
back afterwards (a hook the caller had set is still called, first). For SuperNet training it also wraps
``trainer.bit_sampler`` (each draw), calling the original and returning what it returns, and puts it back.
"""
from __future__ import annotations

import time

import plotly.graph_objects as go
from plotly.subplots import make_subplots
from tqdm.auto import tqdm

from labkit.convert import quantized_layers
from labkit.errors import LabkitError
from labkit.evaluate import FP32
from labkit.viz import bit_color


def precision_name(bits) -> str:
    """``8`` → ``"8-bit"``, the FP32 key → ``"FP32"``."""
    return "FP32" if int(bits) == FP32 else f"{int(bits)}-bit"


def moving_average(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def discrete_bit_colorscale(bits) -> list:
    """A plotly colorscale with one flat band per bit-width (its switchboard colour) over [min(bits), max(bits)]."""
    values = sorted({int(b) for b in bits})
    if len(values) == 1:
        return [[0.0, bit_color(values[0])], [1.0, bit_color(values[0])]]
    low, span = values[0], values[-1] - values[0]
    edges = [0.0] + [((a + b) / 2 - low) / span for a, b in zip(values, values[1:])] + [1.0]
    scale = []
    for value, start, end in zip(values, edges, edges[1:]):
        scale += [[start, bit_color(value)], [end, bit_color(value)]]
    return scale


class LiveTraining:
    """A progress bar and a live loss / accuracy figure around ``trainer.fit()`` (see the module docstring).

    Args:
        trainer: a :class:`~labkit.train.loop.JointTrainer` (joint multi-precision, SuperNet or FP32).
        window: steps in the moving average of the training accuracy.
        refresh_s: at most one figure update per this many seconds (and always at epoch ends and at the end);
            each update sends the traces' data again, so a long run stays cheap for the browser.
        progress: show the ``tqdm.auto`` bar (the trainer's own per-epoch bars are switched off meanwhile).
        title: the figure's title (default: what is trained, and for how many steps).
    """

    def __init__(self, trainer, *, window: int = 10, refresh_s: float = 0.5, progress: bool = True,
                 title: str | None = None):
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise LabkitError(f"window={window!r} must be a whole number of steps >= 1.")
        self.trainer = trainer
        self.window = window
        self.refresh_s = float(refresh_s)
        self.progress = progress
        self.precisions = tuple(trainer.bits) if trainer.bits else (FP32,)
        self.eval_names = list(trainer.eval_sets)
        self.steps: list[int] = []
        self.losses: dict[int, list[float]] = {b: [] for b in self.precisions}
        self.batch_accuracy: dict[int, list[float]] = {b: [] for b in self.precisions}
        # {eval set: {bits: [(step, accuracy %), ...]}}, from the trainer's epoch rows
        self.evaluations: dict[str, dict[int, list[tuple[int, float]]]] = {
            name: {b: [] for b in self.precisions} for name in self.eval_names}
        self.result: dict | None = None
        self.bar = None
        self._last_draw = float("-inf")
        what = "FP32 training" if trainer.bits is None else \
            "joint training of " + ", ".join(precision_name(b) for b in self.precisions)
        self.title = title or f"{what}: {trainer.total_steps} steps of {trainer.config.batch_size} images"
        self.figure = go.FigureWidget(self._figure())
        self.figure.add_class("labkit-figure")

    # ---------------------------------------------------------------- the figure
    def _figure(self) -> go.Figure:
        evaluated = ", ".join(f"◆ {name} set" for name in self.eval_names)
        figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=(
            "training loss of each pass",
            f"top-1 accuracy: — training batches (mean of {self.window} steps)"
            + (f", {evaluated}" if evaluated else "")))
        for b in self.precisions:
            color, name = bit_color(b) if b != FP32 else "#444444", precision_name(b)
            figure.add_trace(go.Scatter(x=[], y=[], mode="lines", name=name, legendgroup=name,
                                        line=dict(color=color, width=1.5)), row=1, col=1)
            figure.add_trace(go.Scatter(x=[], y=[], mode="lines", name=f"{name} training", legendgroup=name,
                                        showlegend=False, line=dict(color=color, width=1.5)), row=1, col=2)
            for eval_name in self.eval_names:
                figure.add_trace(go.Scatter(x=[], y=[], mode="markers+lines", name=f"{name} {eval_name}",
                                            legendgroup=name, showlegend=False,
                                            line=dict(color=color, dash="dot", width=1),
                                            marker=dict(color=color, size=9, symbol="diamond")), row=1, col=2)
        figure.update_xaxes(title_text="step", rangemode="tozero")
        figure.update_yaxes(title_text="cross-entropy loss", rangemode="tozero", row=1, col=1)
        figure.update_yaxes(title_text="top-1 accuracy (%)", range=[0, 100], row=1, col=2)
        figure.update_layout(title=self.title, template="plotly_white", height=400, width=980,
                             legend=dict(title="precision"), margin=dict(t=90))
        return figure

    def traces(self) -> dict:
        """The data of every trace, by trace name: ``{name: (x, y)}`` (what :meth:`draw` puts in the figure)."""
        data = {}
        for b in self.precisions:
            name = precision_name(b)
            data[name] = (list(self.steps), list(self.losses[b]))
            data[f"{name} training"] = (list(self.steps), moving_average(self.batch_accuracy[b], self.window))
            for eval_name in self.eval_names:
                points = self.evaluations[eval_name][b]
                data[f"{name} {eval_name}"] = ([s for s, _ in points], [a for _, a in points])
        return data

    def draw(self) -> None:
        """Put the numbers collected so far into the figure (one batched message to the browser)."""
        data = self.traces()
        with self.figure.batch_update():
            for trace in self.figure.data:
                trace.x, trace.y = data[trace.name]
        self._last_draw = time.perf_counter()

    def _maybe_draw(self) -> None:
        if time.perf_counter() - self._last_draw >= self.refresh_s:
            self.draw()

    # ---------------------------------------------------------------- hooks into the trainer
    def on_step(self, losses: dict, before: dict, after: dict) -> None:
        """After one batch: ``losses`` as ``train_step`` returned them, the trainer's running sums before/after."""
        step = self.trainer.global_step  # the trainer's on_step hook runs right after it counted the step
        self.steps.append(step)
        for b in self.precisions:
            key = str(b)
            seen = after.get(f"seen_{key}", 0.0) - before.get(f"seen_{key}", 0.0)
            correct = after.get(f"correct_{key}", 0.0) - before.get(f"correct_{key}", 0.0)
            self.losses[b].append(float(losses[b]))
            self.batch_accuracy[b].append(100.0 * correct / seen if seen else float("nan"))
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({f"loss {precision_name(b)}": f"{float(losses[b]):.3f}" for b in self.precisions},
                                 refresh=False)
        self._maybe_draw()

    def on_epoch(self, row: dict) -> None:
        """After each epoch: its row of ``trainer.history`` (evaluations are in it when that epoch evaluated)."""
        step = self.trainer.global_step
        for eval_name in self.eval_names:
            for b in self.precisions:
                value = row.get(f"{eval_name}_acc_{b}")
                if value is not None:
                    self.evaluations[eval_name][b].append((step, float(value)))
        if self.bar is not None:
            shown = {f"{eval_name} {precision_name(b)}": f"{row[f'{eval_name}_acc_{b}']:.1f}%"
                     for eval_name in self.eval_names for b in self.precisions if f"{eval_name}_acc_{b}" in row}
            if shown:
                self.bar.write(f"epoch {row.get('epoch')}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
        self.draw()

    def _attach(self) -> dict:
        trainer = self.trainer
        saved = {"on_step": trainer.on_step, "on_epoch": trainer.on_epoch, "show_progress": trainer.show_progress}
        outer_step, outer_epoch = trainer.on_step, trainer.on_epoch
        sums = [dict(trainer.train_sums)]  # the running sums before the next batch (a resumed epoch's so far)

        def step_hook(trainer_, losses):
            if outer_step is not None:
                outer_step(trainer_, losses)
            self.on_step(losses, sums[0], trainer_.train_sums)
            sums[0] = dict(trainer_.train_sums)

        def epoch_hook(trainer_, row):
            if outer_epoch is not None:
                outer_epoch(trainer_, row)
            self.on_epoch(row)
            sums[0] = {}  # the trainer starts the next epoch's sums from zero

        trainer.on_step, trainer.on_epoch = step_hook, epoch_hook
        if self.progress:
            trainer.show_progress = False
        return saved

    def _detach(self, saved: dict) -> None:
        trainer = self.trainer
        trainer.on_step, trainer.on_epoch = saved["on_step"], saved["on_epoch"]
        trainer.show_progress = saved["show_progress"]

    # ---------------------------------------------------------------- the run
    def show(self) -> "LiveTraining":
        """Display the figure in the notebook (nothing outside IPython)."""
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return self
        if get_ipython() is not None:
            display(self.figure)
        return self

    def run(self, resume: bool = False) -> dict:
        """``trainer.fit(resume)`` with the bar and the figure following it; returns (and keeps in ``result``)
        what ``fit`` returns: the final accuracies per evaluation set and precision."""
        saved = self._attach()
        trainer = self.trainer
        try:
            if self.progress:
                self.bar = tqdm(total=trainer.total_steps, initial=trainer.global_step, unit="step",
                                desc=self.title.split(":")[0], dynamic_ncols=True)
            self.result = trainer.fit(resume=resume)
        finally:
            self._detach(saved)
            if self.bar is not None:
                self.bar.close()
            self.draw()
        return self.result


class LiveSuperNetTraining(LiveTraining):
    """:class:`LiveTraining` for SuperNet steps (HASB, Alg. A.3), with the bits the sampler drew.

    ``bits_figure`` is a heatmap of the last step: one row per pass (the default bit-width b of that pass), one
    column per quantized layer, the bit-width each layer was switched to. ``sampled_bits`` keeps every step's
    draws, ``{step: {default bits: {layer: bits}}}``; ``average_bits`` the mean over layers per pass and step;
    ``sigma`` the replacement rate σ_e of each step's epoch (when the sampler has ``sigma_at``, as
    :class:`labkit.hasb.supernet.BitSampler` does).
    """

    def __init__(self, trainer, **options):
        if trainer.bit_sampler is None:
            raise LabkitError("this trainer has no bit_sampler: it is not SuperNet training; use LiveTraining "
                              "(or train_live, which picks the right view).")
        self.sampler = trainer.bit_sampler
        self.layers = list(quantized_layers(trainer.model))
        self.sampled_bits: dict[int, dict[int, dict[str, int]]] = {}
        self.sigma: dict[int, float] = {}  # σ_e of each step's epoch, when the sampler says (BitSampler.sigma_at)
        self.average_bits: dict[int, list[float]] = {b: [] for b in trainer.bits}
        super().__init__(trainer, **options)
        self.bits_figure = go.FigureWidget(self._bits_figure())
        self.bits_figure.add_class("labkit-figure")

    def _bits_figure(self) -> go.Figure:
        rows = [precision_name(b) + " pass" for b in self.precisions]
        low, high = min(self.precisions), max(self.precisions)
        figure = go.Figure(go.Heatmap(
            z=[[None] * len(self.layers) for _ in rows], x=self.layers, y=rows, zmin=low, zmax=high,
            colorscale=discrete_bit_colorscale(self.precisions), texttemplate="%{z}",
            colorbar=dict(title="bits", tickvals=sorted(self.precisions), len=1.0),
            hovertemplate="%{y}, %{x}: %{z} bits<extra></extra>",
        ))
        figure.update_layout(title="Bits the sampler drew, per layer (waiting for the first step)",
                             template="plotly_white", height=max(260, 150 + 40 * len(rows)), width=980,
                             xaxis=dict(title="quantized layer (execution order)", tickangle=-45),
                             yaxis=dict(title="pass", autorange="reversed"))
        return figure

    def _bits_title(self, step: int) -> str:
        sigma = self.sigma.get(step)
        averages = ", ".join(f"{precision_name(b)} pass → avg {self.average_bits[b][-1]:.2f}"
                             for b in self.precisions if self.average_bits[b])
        rate = f" (σ_e = {sigma:.2f})" if sigma is not None else ""
        return f"Bits drawn at step {step}{rate}: {averages}"

    def draw(self) -> None:
        super().draw()
        if not self.sampled_bits:
            return
        step = max(self.sampled_bits)
        draws = self.sampled_bits[step]
        with self.bits_figure.batch_update():
            self.bits_figure.data[0].z = [[draws.get(b, {}).get(name) for name in self.layers] for b in self.precisions]
            self.bits_figure.layout.title.text = self._bits_title(step)

    def _attach(self) -> dict:
        saved = super()._attach()
        trainer = self.trainer
        sampler = trainer.bit_sampler
        saved["bit_sampler"] = sampler

        def watched_sampler(default_bits, epoch, batch):
            drawn = sampler(default_bits, epoch, batch)
            layer_bits = drawn if isinstance(drawn, dict) else dict.fromkeys(self.layers, int(drawn))
            step = trainer.global_step + 1
            self.sampled_bits.setdefault(step, {})[int(default_bits)] = dict(layer_bits)
            if hasattr(sampler, "sigma_at"):
                self.sigma[step] = float(sampler.sigma_at(epoch))
            self.average_bits[int(default_bits)].append(sum(layer_bits.values()) / max(len(layer_bits), 1))
            return drawn

        trainer.bit_sampler = watched_sampler
        return saved

    def _detach(self, saved: dict) -> None:
        self.trainer.bit_sampler = saved["bit_sampler"]
        super()._detach(saved)

    def show(self) -> "LiveSuperNetTraining":
        super().show()
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return self
        if get_ipython() is not None:
            display(self.bits_figure)
        return self


def train_live(trainer, *, resume: bool = False, show: bool = True, **options) -> LiveTraining:
    """Train ``trainer`` to the end while a progress bar and live figures follow it (notebooks 03–05).

    Uses :class:`LiveSuperNetTraining` when the trainer samples bits (HASB SuperNet), :class:`LiveTraining`
    otherwise; ``options`` go to it (``window``, ``refresh_s``, ``progress``, ``title``). Returns the view:
    ``view.result`` is what ``trainer.fit`` returned, ``view.figure`` (and ``view.bits_figure``) the figures.
    """
    view = (LiveSuperNetTraining if trainer.bit_sampler is not None else LiveTraining)(trainer, **options)
    if show:
        view.show()
    view.run(resume=resume)
    return view
