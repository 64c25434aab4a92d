"""CUDA-graph capture of whole training steps: forward, loss, backward and the optimizer update.

At batch 128 the reference model spends far more time launching its few dozen kernels per step than
running them; replaying the steps as one captured graph costs one launch. This follows PyTorch's
"whole network capture" recipe: a few eager warm-up calls on a side stream, then one capture on
that same stream (lazily created cuBLAS workspaces belong to a stream and cannot be allocated
during a capture), then per call: copy the batch into the graph's input buffer and replay. aelight
captures all optimizer steps of one Lightning batch (``steps_per_batch`` of them) in one graph.

A graph is kept per key: the batch's shape and dtype, the optimizer's hyperparameters (a float
learning rate is baked into the captured update, so a scheduler's new rate gets a new graph) and
the autocast state. Each key's first ``warmup_calls`` calls run eagerly; they are real steps.
"""

from collections import OrderedDict
from typing import Callable, Optional

import torch
from torch import Tensor


class GraphedStep:
    """Calls ``step_fn(x)`` through CUDA graphs.

    ``step_fn`` takes optimizer steps on the batch ``x`` and returns ``(names, values)``: the loss
    term names and their values, a tensor (one row per step). The call returns the same, with
    values that the next call does not overwrite. Graph mode needs an optimizer whose step makes
    no host sync (torch's Adam/AdamW with ``capturable``, which is switched on here, or SGD) and no
    host sync in the model's training step; a capture that fails is reported once and the steps
    go on eagerly. ``ready()`` says whether a capture may happen now (DDP needs eager iterations
    first); until it does, calls run eagerly.
    """

    def __init__(
        self,
        step_fn: Callable[[Tensor], tuple[list[str], Tensor]],
        optimizer: torch.optim.Optimizer,
        warmup_calls: int = 3,
        max_graphs: int = 4,
        on_failure: Callable[[str], None] = print,
        ready: Callable[[], bool] = lambda: True,
    ):
        self.step_fn, self.optimizer, self.ready = step_fn, optimizer, ready
        self.warmup_calls, self.max_graphs, self.on_failure = warmup_calls, max_graphs, on_failure
        for group in optimizer.param_groups:
            if "capturable" in group:  # the update reads its step count on the device, no host sync
                group["capturable"] = True
                for p in group["params"]:  # a resumed state keeps its step count on the host
                    step = optimizer.state.get(p, {}).get("step")
                    if isinstance(step, Tensor) and step.device != p.device:
                        optimizer.state[p]["step"] = step.to(p.device)
        # torch warns once that a capturable optimizer stepping outside a graph is slower: the
        # warm-up calls do exactly that, on purpose.
        optimizer._warned_capturable_if_run_uncaptured = True
        self.stream: Optional[torch.cuda.Stream] = None  # made on the first call, on the training device
        self.graphs: OrderedDict = OrderedDict()  # key -> (graph, input buffer, names, output values)
        self.warm: dict = {}  # key -> eager calls so far
        self.failed = False
        self.replays = 0

    def key(self, x: Tensor) -> tuple:
        hyper = tuple(v for g in self.optimizer.param_groups for k, v in g.items() if k != "params")
        try:
            hash(hyper)
        except TypeError:  # a list among the hyperparameters
            hyper = repr(hyper)
        autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        return x.shape, x.dtype, hyper, autocast

    def __call__(self, x: Tensor) -> tuple[list[str], Tensor]:
        main = torch.cuda.current_stream()
        if self.stream is None:
            self.stream = torch.cuda.Stream()
        self.stream.wait_stream(main)  # x was made on the main stream
        with torch.cuda.stream(self.stream):
            names, values = self._step(x)
        main.wait_stream(self.stream)  # later work on the main stream sees the updated weights
        values.record_stream(main)  # made on the side stream, read on the main one
        return names, values

    def _step(self, x: Tensor) -> tuple[list[str], Tensor]:
        key = self.key(x)
        if key in self.graphs:
            self.graphs.move_to_end(key)
            graph, static_x, names, static_values = self.graphs[key]
            static_x.copy_(x)
            graph.replay()
            self.replays += 1
            return names, static_values.clone()
        if self.failed or self.warm.get(key, 0) < self.warmup_calls or not self.ready():
            self.warm[key] = self.warm.get(key, 0) + 1
            return self.step_fn(x)
        return self._capture(key, x)

    def _capture(self, key: tuple, x: Tensor) -> tuple[list[str], Tensor]:
        graph, static_x = torch.cuda.CUDAGraph(), x.clone()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                names, static_values = self.step_fn(static_x)
        except Exception as err:  # e.g. a host sync in the model's step: nothing ran, step eagerly
            self.failed = True
            self.on_failure(f"CUDA graph capture of the training step failed ({err}); training goes on eagerly")
            _end_rng_capture(x.device)
            return self.step_fn(x)
        self.graphs[key] = (graph, static_x, names, static_values)
        if len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        graph.replay()  # capturing recorded the steps without running them
        self.replays += 1
        return names, static_values.clone()


def _end_rng_capture(device: torch.device) -> None:
    """Takes the device's default generator out of capture mode after a failed capture.

    torch ends a generator's capture only when the capture succeeded; after a failed one, every
    random draw outside a graph raises "Offset increment outside graph capture encountered
    unexpectedly". A fresh copy of the generator's state (same seed and offset) is not capturing.
    """
    generator = torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    generator.graphsafe_set_state(generator.clone_state())
