"""Where and how tensors are computed: device, precision and determinism, in one object.

The trainer, the stages, the pipeline and the evaluation ask the ``Runtime`` to place
data, move batches, build metrics, enter autocast and scale fp16 gradients, instead of
deciding it themselves. A strategy over several processes (``distributed.py``) is a
subclass, not a change to every loop: a new device option is one class in one place.
This module knows nothing of that subclass; ``distributed.as_runtime`` picks one of the two.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, ContextManager, Iterator, Protocol, Sequence, TypeVar

import torch
from torch import Tensor

# fp16 trains with loss scaling (a GradScaler); bf16 has fp32's range and needs none
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# what --precision accepts: "auto" is bf16 where the device multiplies bf16 matrices natively, else fp32
PRECISION_CHOICES = ("auto", *PRECISIONS)
DEVICE_HELP = "auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps"
# data sets up to this share of a GPU's memory are copied there once, so a step reads no host memory
DEVICE_DATA_SHARE = 0.25


class Placeable(Protocol):
    """What ``Runtime.place`` asks of a data set's array: a ``Tensor``, or a ``data.MappedImages``
    (this low layer names no type of the data layer above it)."""

    def numel(self) -> int: ...

    def element_size(self) -> int: ...

    def to(self, device: torch.device) -> Tensor: ...


ArrayT = TypeVar("ArrayT", bound=Placeable)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple's MPS, then the CPU; anything else is checked.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use {DEVICE_HELP}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for, but this torch build sees no CUDA GPU; "
                             "use --device cpu (or install a CUDA build of torch)")
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
        elif resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} was asked for, but only {torch.cuda.device_count()} CUDA "
                             f"GPU(s) are visible (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    elif resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} was asked for, but MPS is not available here; use --device cpu")
    elif resolved.type not in ("cpu", "cuda", "mps", "meta"):  # meta: shape-only runs in tests
        raise ValueError(f"device {device!r} is not supported; use {DEVICE_HELP}")
    return resolved


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where there is no such file."""
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def native_bf16(device: str | torch.device) -> str | None:
    """What multiplies bf16 matrices natively on ``device`` (``"AMX"``, ``"AVX512-BF16"``, a
    GPU's name), or None where bf16 would be emulated, and so slower than fp32.

    On a CPU this needs the hardware (Intel AMX or AVX-512 BF16) and kernels allowed to use it:
    ``ATEN_CPU_CAPABILITY`` below AVX-512, or ``ONEDNN_MAX_CPU_ISA`` below AVX512_CORE_BF16,
    hide it. ARM CPUs get None (fp32): their bf16 support is not detected here yet.

    Example:
        >>> native_bf16("meta") is None
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported(including_emulation=False)
        return f"{torch.cuda.get_device_name(device)} bf16" if supported else None
    if device.type != "cpu" or not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return None
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if isa != "ALL" and not any(key in isa for key in ("BF16", "FP16", "AMX", "AVX10")):
        return None
    flags = _cpu_flags()
    if flags is None:  # not Linux: ask torch
        cpu = torch.cpu
        flags = frozenset(name for name, probe in (("amx_bf16", "_is_amx_tile_supported"),
                                           ("avx512_bf16", "_is_avx512_bf16_supported"))
                 if getattr(cpu, probe, lambda: False)())
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


def resolve_precision(precision: str, device: str | torch.device) -> tuple[str, str]:
    """The precision to compute in, and why: ``"auto"`` becomes bf16 where ``native_bf16``
    finds native bf16 matrix math, else fp32; the others are kept as asked.

    Example:
        >>> resolve_precision("fp32", "cpu")
        ('fp32', 'asked for')
        >>> resolve_precision("auto", "meta")
        ('fp32', 'auto: no native bf16 matrix math (meta)')
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISION_CHOICES)}")
    if precision != "auto":
        return precision, "asked for"
    native = native_bf16(device)
    if native is None:
        device = torch.device(device)
        where = f"cpu, {torch.backends.cpu.get_cpu_capability()} kernels" if device.type == "cpu" else device.type
        return "fp32", f"auto: no native bf16 matrix math ({where})"
    return "bf16", f"auto: {native}"


def autocast_to(precision: str, device: str | torch.device) -> ContextManager:
    """Autocast on ``device`` to a resolved precision (``"fp32"``, ``"bf16"``, ``"fp16"``);
    fp32 (and the meta device) computes as written.

    Example:
        >>> with autocast_to("bf16", "cpu"):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    dtype = PRECISIONS[precision]
    device = torch.device(device)
    if dtype is None or device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def add_compute_options(parser: Any, training: bool = False) -> None:
    """A command's ``--device`` and ``--precision`` (and, for ``training``, ``--deterministic``):
    the same words on every command that runs a model."""
    parser.add_argument("--device", default="auto", help=f"where to compute: {DEVICE_HELP} (default auto)")
    what = ("autocast precision of the autoencoder and of the flow's coupling networks (the flow's maps, "
            "log-determinants and densities stay fp32)" if training else
            "what the decoder computes in (the encoder and the flow: fp32, so log-densities are exact)")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help=f"{what}: auto is bf16 where the device multiplies bf16 matrices natively (AMX, "
                             "AVX-512 BF16, a bf16 GPU), else fp32" + ("; fp16 uses loss scaling" if training else "")
                             + " (default auto)")
    if training:
        parser.add_argument("--deterministic", action="store_true",
                            help="deterministic kernels only: the same weights on every run on a GPU, a bit slower")


class Runtime:
    """Device, numeric precision and determinism of a training or inference run.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a ``torch.device``.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``: autocast for the parts of a
            model that allow it (the autoencoder; flow log-determinants and base densities stay
            in fp32). ``"auto"`` is bf16 where the device has native bf16 matrix math (a CPU with
            AMX or AVX-512 BF16, a GPU that supports bf16), else fp32 (``resolve_precision``);
            ``precision`` is then the one chosen and ``precision_reason`` says why. fp16
            scales the loss so small gradients survive (``grad_scaler``).
        deterministic: within ``session()``, only deterministic kernels (cuDNN and CUDA
            scatter-adds otherwise use atomics, so GPU runs differ in the last bits).

    References:
        Micikevicius et al., "Mixed Precision Training", ICLR 2018, arXiv:1710.03740 (loss scaling).

    Example:
        >>> import torch
        >>> runtime = Runtime("cpu")
        >>> images, labels = runtime.move((torch.zeros(2, 3), torch.tensor([0, 1])))
        >>> images.device, runtime.precision
        (device(type='cpu'), 'fp32')
    """

    def __init__(self, device: str | torch.device | None = "auto", precision: str = "fp32",
                 deterministic: bool = False):
        if precision not in PRECISION_CHOICES:
            raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISION_CHOICES)}")
        self.device = resolve_device(device)
        self.requested_precision = precision
        self.precision, self.precision_reason = resolve_precision(precision, self.device)
        self.deterministic = bool(deterministic)
        self.threads: int | None = None  # CPU threads within session() (None: as the process has them)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(device={str(self.device)!r}, precision={self.precision!r}, "
                f"deterministic={self.deterministic})")

    # ------------------------------------------------------------------ processes
    @property
    def is_main_process(self) -> bool:
        """Whether this process writes files and prints (always, in one process)."""
        return True

    @property
    def world_size(self) -> int:
        return 1

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training loop calls (several processes: wrapped to sync gradients)."""
        return model

    def reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Figures averaged over processes (one process: unchanged)."""
        return values

    def barrier(self) -> None:
        """Wait until every process gets here (one process: return)."""

    def main_process_first(self) -> ContextManager:
        """The main process runs the block first (e.g. fills a cache), then the others."""
        return contextlib.nullcontext()

    def shard(self, batches: Any) -> Any:
        """This process's share of each batch (one process: all of it)."""
        return batches

    def sync_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Average gradients over processes (one process: nothing to do)."""

    def all_true(self, flag: Tensor) -> Tensor:
        """Whether a device flag holds in every process."""
        return flag

    def compute(self, metric: Any, sync: bool = True) -> Tensor:
        """A streaming metric's value (``sync``: over every process's updates)."""
        return metric.compute()

    # ------------------------------------------------------------------ tensors
    def move(self, batch: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """The batch's tensors on this device (no copy when they are already there)."""
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def place(self, tensors: Sequence[ArrayT]) -> list[ArrayT | Tensor]:
        """A data set's tensors where batches are cut from: copied to a GPU once when they
        take at most a quarter of its memory (a step then reads no host memory), else left
        where they are (host memory, or a memory-mapped file), each batch moved as it is cut."""
        placed: list[ArrayT | Tensor] = list(tensors)
        if self.device.type == "cpu":
            return placed
        size = sum(t.numel() * t.element_size() for t in tensors)
        if self.device.type == "meta" or size <= DEVICE_DATA_SHARE * self.memory_bytes():
            return [t.to(self.device) for t in tensors]
        return placed

    def memory_bytes(self) -> int:
        """Memory of this device (the CPU: 0, as nothing needs placing there)."""
        if self.device.type == "cuda":
            return torch.cuda.get_device_properties(self.device).total_memory
        if self.device.type == "mps":
            return int(torch.mps.recommended_max_memory())
        return 0

    def tensor(self, value: Any, dtype: torch.dtype | None = None) -> Tensor:
        """A new tensor on this device."""
        return torch.as_tensor(value, dtype=dtype, device=self.device)

    def metric(self, metric: Any) -> Any:
        """A torchmetrics ``Metric`` with its state on this device."""
        return metric.to(self.device)

    @property
    def accumulate_dtype(self) -> torch.dtype:
        """float64 for running sums where the device has it (MPS does not)."""
        return torch.float32 if self.device.type == "mps" else torch.float64

    def generator(self, seed: int) -> torch.Generator:
        """A seeded CPU generator: a seed draws the same noise on every device (it is drawn
        once per call, then moved; per-step randomness uses the device's own generator)."""
        return torch.Generator().manual_seed(seed)

    # ------------------------------------------------------------------ numerics
    def autocast(self, enabled: bool = True) -> ContextManager:
        """Autocast to the chosen precision (a no-op for fp32 or ``enabled=False``)."""
        return autocast_to(self.precision if enabled else "fp32", self.device)

    def grad_scaler(self, enabled: bool = True) -> torch.amp.GradScaler | None:
        """A loss scaler for fp16 training, None otherwise."""
        if self.precision != "fp16" or not enabled:
            return None
        return torch.amp.GradScaler(self.device.type)

    @property
    def syncs_are_free(self) -> bool:
        """On the CPU, reading a value back costs nothing; on a GPU it stalls the queue of kernels."""
        return self.device.type == "cpu"

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Set the process-wide switches this runtime asks for, and restore them after.

        ``deterministic``: deterministic kernels only (``torch.use_deterministic_algorithms``,
        cuDNN without autotuning, cuBLAS with a fixed workspace). Otherwise, on CUDA, cuDNN
        autotunes its convolutions (the shapes of a run do not change) and float32 matrix
        products may use TF32.
        """
        saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                 torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
                 torch.get_float32_matmul_precision(), torch.get_num_threads())
        try:
            if self.threads is not None:  # a CPU reduction's result depends on how many threads split it
                torch.set_num_threads(self.threads)
            if self.deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.use_deterministic_algorithms(True)
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
            elif self.device.type == "cuda":
                torch.backends.cudnn.benchmark = True
                torch.set_float32_matmul_precision("high")
            yield
        finally:
            torch.use_deterministic_algorithms(saved[0])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], saved[2]
            if saved[3] is None:
                os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
            torch.set_float32_matmul_precision(saved[4])
            if torch.get_num_threads() != saved[5]:
                torch.set_num_threads(saved[5])

    def compute_settings(self) -> dict[str, Any]:
        """What decides the bits of a result beyond the data and seed: the precision, the CPU
        threads and the CPU kernels (recorded in ``run.json`` so that a resume can match them)."""
        return {"precision": self.precision, "threads": self.threads or torch.get_num_threads(),
                "kernels": torch.backends.cpu.get_cpu_capability()}

    def match(self, recorded: dict[str, Any]) -> list[str]:
        """Compute as ``recorded`` (``compute_settings`` of the run being resumed) so that the
        resumed run ends with the same weights: its precision, when this runtime's was ``"auto"``,
        and its thread count. Returns what cannot be matched (other CPU kernels), for a warning;
        an explicitly requested other precision raises ``ValueError``."""
        precision = recorded.get("precision")
        if precision and precision != self.precision:
            if self.requested_precision != "auto":
                raise ValueError(f"the run started in {precision} and this resume asks for {self.precision}; "
                                 f"drop --precision (or pass --precision {precision}) to end with the same weights")
            self.precision, self.precision_reason = precision, "as the run started"
        if recorded.get("threads"):
            self.threads = int(recorded["threads"])
        kernels = recorded.get("kernels")
        if kernels and kernels != torch.backends.cpu.get_cpu_capability():
            return [f"the run started with {kernels} CPU kernels and resumes with "
                    f"{torch.backends.cpu.get_cpu_capability()}: its weights will differ in the last bits "
                    "from an uninterrupted run's"]
        return []


@contextlib.contextmanager
def evaluation_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Put modules in eval mode for the block, then give each back the mode it had.

    Example:
        >>> from torch import nn
        >>> layer = nn.Dropout().train()
        >>> with evaluation_mode(layer):
        ...     layer.training
        False
        >>> layer.training
        True
    """
    states = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, training in states:
            module.training = training
