"""The memory budget: what a model will take before it is loaded, and what is free.

The estimate is the weights (the file, read or mapped whole once the model has
run), the KV cache (context x slots x layers x the key and value widths of the
model's attention, from its GGUF header, at the bytes per element of the config's
`cache_type_k` / `cache_type_v`: f16 unless the config says otherwise),
the engine's working buffers (logits and activations for a micro-batch) and a
fixed cost for the engine process itself. Checked against the measured RSS of
real loads in tests/models/test_memory.py.

What is free is `MEMORY_LIMIT` minus what the loaded models are estimated to
take, and never more than the machine's MemAvailable minus a margin (the
default, with no limit set, is just that).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lokal.engines.base import LoadOptions
from lokal.formats.modelfile import GGUFInfo, ModelFileError, read_gguf
from lokal.units import format_size

MIB = 1 << 20
GIB = 1 << 30
# A worker process with Python, lokal and the engine library, before any model (measured: ~56 MiB
# for llama.cpp with a small model; torch-based engines import far more: a diffusers worker peaked
# at ~550-660 MiB with a tiny pipeline, tests/images/test_engine.py, the most on the CI machine:
# torch's CPU kernels size their scratch by the CPU they find).
PROCESS_OVERHEAD = {"llama-cpp": 56 * MIB, "sentence-transformers": 450 * MIB, "whisper": 200 * MIB,
                    # onnxruntime engines; Kokoro loads OpenJTalk's dictionary for Japanese too
                    "piper": 110 * MIB, "kokoro": 220 * MIB, "silero-vad": 60 * MIB, "onnx": 90 * MIB,
                    "whisper-cpp": 60 * MIB, "diffusers": 640 * MIB, "stablediffusion-ggml": 64 * MIB}
DEFAULT_UBATCH = 512
#: bytes per element of each KV cache type (llama.cpp's block types: 32 elements per block)
CACHE_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
                    "iq4_nl": 18 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32}


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv_cache: int
    buffers: int
    overhead: int
    tokens: int = 0  # KV cache cells (context x slots)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.buffers + self.overhead

    def describe(self) -> str:
        parts = [f"weights {format_size(self.weights)}"]
        if self.kv_cache:
            parts.append(f"KV cache {format_size(self.kv_cache)} for {self.tokens} tokens")
        parts.append(f"engine {format_size(self.buffers + self.overhead)}")
        return ", ".join(parts)


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def _int(value: object, default: int = 0) -> int:
    if isinstance(value, list):  # per-layer values (a few architectures): the widest layer
        values = [v for v in value if isinstance(v, int)]
        return max(values) if values else default
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def estimate(engine: str, options: LoadOptions) -> Estimate:
    """What loading options.model_path with engine will take, in bytes."""
    weights = _size(options.model_path) + (_size(options.voices_path) if options.voices_path else 0)
    overhead = PROCESS_OVERHEAD.get(engine, 128 * MIB) + options.prompt_cache_mb * MIB
    if options.diffusion is not None:
        info = options.diffusion.info
        side = options.diffusion.max_side
        return Estimate(info.weights or weights, 0, image_activations(info, side, side), overhead)
    if engine == "onnx":
        weights = _onnx_weights(options)
    if engine != "llama-cpp":
        # torch, CTranslate2 and onnxruntime hold the weights in memory as stored (no mmap), plus
        # their runtime.
        return Estimate(weights, 0, weights // 4, overhead)
    info = options.gguf
    if info is None:
        try:
            info = read_gguf(options.model_path)
        except ModelFileError:
            return Estimate(weights, 0, 0, overhead)
    return _gguf(info, weights, overhead, options)


def _gguf(info: GGUFInfo, weights: int, overhead: int, options: LoadOptions) -> Estimate:
    layers = _int(info.arch_value("block_count"))
    width = _int(info.arch_value("embedding_length"))
    heads = _int(info.arch_value("attention.head_count"), 1) or 1
    kv_heads = _int(info.arch_value("attention.head_count_kv"), heads) or heads
    key = _int(info.arch_value("attention.key_length"), width // heads)
    value = _int(info.arch_value("attention.value_length"), key)
    vocab = _int(info.arch_value("vocab_size")) or len(info.metadata.get("tokenizer.ggml.tokens") or ())
    default = "f16" if options.f16 is not False else "f32"  # f32 when the config turns f16 off
    key_bytes = CACHE_TYPE_BYTES.get(options.cache_type_k or default, 2.0)
    value_bytes = CACHE_TYPE_BYTES.get(options.cache_type_v or default, 2.0)
    if options.embeddings:
        tokens = options.context_size  # one unified pool; a whole input per micro-batch
        ubatch = options.context_size
    else:
        tokens = options.context_size * options.parallel
        ubatch = min(options.ubatch or DEFAULT_UBATCH, options.batch or DEFAULT_UBATCH, tokens)
    # Encoders (BERT-style) attend without a KV cache.
    kv = 0 if info.is_encoder else round(tokens * layers * kv_heads * (key * key_bytes + value * value_bytes))
    # Activations of one micro-batch and the logits of each slot's last token. (llama.cpp
    # reserves room for a whole micro-batch of logits too, but never touches it unless
    # every token's logits are asked for, so it costs address space, not memory.)
    buffers = ubatch * width * 4 * 8 + vocab * max(1, options.parallel) * 4
    return Estimate(weights, kv, buffers, overhead, tokens=0 if info.is_encoder else tokens)


def image_activations(info: object, width: int, height: int) -> int:
    """What an image model's working tensors take for one width x height image, at the peak.

    Two parts, summed: the denoiser's (classifier-free guidance runs a batch of two; the
    skip connections and block outputs of a UNet at latent resolution, about 40 maps of its
    first block's width) and the VAE decoder's at full resolution (about four maps as wide
    as the level it upsamples from: the input, the upsampled copy, a conv's output and the
    residual). Attention runs through torch's fused kernel, which never holds a whole
    score matrix. Checked against the measured peak of a worker in
    tests/models/test_image_memory.py."""
    factor = int(getattr(info, "vae_factor", 8)) or 8
    latent = (width // factor) * (height // factor)
    denoiser = 2 * 40 * latent * int(getattr(info, "denoiser_channels", 320)) * 4
    decoder = 4 * width * height * int(getattr(info, "vae_channels", 256)) * 4
    return denoiser + decoder


def _onnx_weights(options: LoadOptions) -> int:
    """An ONNX Runtime model holds its graph's weights: the export when there is one, else what
    the export will be (the float weights; a quarter of them in int8)."""
    folder = options.model_path
    name = "model_int8.onnx" if options.quantization == "int8" else "model.onnx"
    export = folder / "onnx" / name
    if export.is_file():
        return _size(export)
    stored = sum(_size(p) for pattern in ("*.safetensors", "pytorch_model*.bin") for p in folder.glob(pattern))
    return stored // 4 if options.quantization == "int8" else stored


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (empty where there is none)."""
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as stream:
            for line in stream:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    values[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return values


class MemoryBudget:
    """How much a new model may take: MEMORY_LIMIT less the loaded models' estimates,
    capped by what the machine has available less a margin."""

    def __init__(self, limit: int | None = None, margin: int | None = None) -> None:
        self.limit = limit
        info = meminfo()
        total = info.get("MemTotal", 0)
        self.margin = margin if margin is not None else max(256 * MIB, min(GIB, total // 20))

    def available(self) -> int | None:
        return meminfo().get("MemAvailable")

    def free(self, used: int) -> tuple[int, str]:
        """Bytes free for one more model, and how that was decided (for messages)."""
        options: list[tuple[int, str]] = []
        if self.limit is not None:
            options.append((self.limit - used, f"MEMORY_LIMIT {format_size(self.limit)}, "
                                               f"{format_size(used)} held by loaded models"))
        available = self.available()
        if available is not None:
            options.append((available - self.margin, f"the machine has {format_size(available)} available, "
                                                     f"less a {format_size(self.margin)} margin"))
        if not options:
            return (1 << 62), "no limit known"
        return min(options)
