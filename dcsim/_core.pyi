"""Types of the native extension ``dcsim._core`` (csrc/bindings.cpp); call it through :mod:`dcsim.ops`.

Tensors cross as data pointers (int), sizes as int; ``stream`` is a CUDA stream handle (0 on the CPU).
"""

has_cuda: bool
QCFS: int
QFFS: int
MAX_SOFTMAX: int
ENTROPY: int
MARGIN: int

def neuron_step(
    method: int,
    n: int,
    m: int,
    x: int,
    x2: int,
    u: int,
    z: int,
    out: int,
    counts: int,
    th: float,
    zmax: int,
    fanout: int,
    sops: int,
    fresh: bool,
    u0: float,
    cuda: bool,
    stream: int,
    threads: int,
    /,
) -> None: ...
def neuron_steps(
    method: int,
    k: int,
    n: int,
    m: int,
    x: int,
    x_step: int,
    x2: int,
    x2_step: int,
    u: int,
    z: int,
    out: int,
    counts: int,
    counts_out: int,
    th: float,
    zmax: int,
    fanout: int,
    sops: int,
    sops_out: int,
    fresh: bool,
    u0: float,
    threads: int,
    /,
) -> None: ...
def output_step(
    n: int,
    k: int,
    x: int,
    sums: int,
    steps: int,
    max_steps: int,
    readout: int,
    scale: float,
    threshold: float,
    pred: int,
    score: int,
    exited: int,
    cuda: bool,
    stream: int,
    threads: int,
    /,
) -> None: ...
def gather_rows(
    entries: list[tuple[int, int, int]], index: int, n_out: int, cuda: bool, stream: int, threads: int, /
) -> None: ...
def spike_conv(
    n: int,
    h: int,
    w: int,
    cin: int,
    oh: int,
    ow: int,
    cout: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
    x: int,
    weight: int,
    bias: int,
    out: int,
    threads: int,
    simd: bool,
    /,
) -> None: ...
def block_conv(
    n: int,
    cin: int,
    h: int,
    w: int,
    cout: int,
    oh: int,
    ow: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    ph: int,
    pw: int,
    chunk: int,
    bias_first: bool,
    max_density: float,
    group: int,
    x: int,
    weight: int,
    bias: int,
    out: int,
    threads: int,
    simd: bool,
    /,
) -> None: ...
def avg_pool_2x2(planes: int, h: int, w: int, x: int, out: int, threads: int, /) -> None: ...
def global_avg_pool(planes: int, size: int, x: int, out: int, threads: int, /) -> None: ...
def bias_add(rows: int, channels: int, plane: int, x: int, bias: int, threads: int, /) -> None: ...
def linear(rows: int, in_: int, features: int, x: int, weight: int, bias: int, out: int, sgemm: int, /) -> bool: ...

class CallList:
    """CPU kernel calls run in one native call; each pointer a (slot, byte offset) pair, slot -1 for an address."""

    def __init__(self) -> None: ...
    def block_conv(self, *args: object) -> None: ...
    def neuron_steps(self, *args: object) -> None: ...
    def avg_pool_2x2(
        self, planes: int, h: int, w: int, x: tuple[int, int], out: tuple[int, int], threads: int, /
    ) -> None: ...
    def global_avg_pool(
        self, planes: int, size: int, x: tuple[int, int], out: tuple[int, int], threads: int, /
    ) -> None: ...
    def output_step(self, *args: object) -> None: ...
    def linear(
        self,
        rows: int,
        in_: int,
        features: int,
        x: tuple[int, int],
        weight: tuple[int, int],
        bias: tuple[int, int],
        out: tuple[int, int],
        sgemm: int,
        /,
    ) -> None: ...
    def bias_add(
        self, rows: int, channels: int, plane: int, x: tuple[int, int], bias: tuple[int, int], threads: int, /
    ) -> None: ...
    def run(self, table: list[int], /) -> bool: ...
    def run_until(self, table: list[int], max_runs: int, flag: tuple[int, int], /) -> int: ...
    def __len__(self) -> int: ...
