"""Typed configuration: plain dataclasses that Hydra's YAML is turned into.

`Transformer(ModelConfig(...))` needs no Hydra. `ModelConfig.from_dict` builds one from a (composed)
mapping, rejecting unknown fields and wrong types; `validate()` rejects impossible combinations.
Both raise `ConfigError`, naming the dotted field and the valid values.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar

from ablate.registry import ConfigError

C = TypeVar("C")


@dataclass
class PositionConfig:
    """How token positions enter the model: `kind` names a scheme in `ablate.model.position`."""

    kind: str = "rope"
    theta: float = 10_000.0  # rope: base of the rotation frequencies
    rotary_fraction: float = 1.0  # rope: share of head_dim that is rotated (GPT-NeoX's rotary_pct)


@dataclass
class AttentionConfig:
    """Self-attention.

    MHA, GQA and MQA differ only in `n_kv_heads` (None means n_heads). Query heads are split into
    n_kv_heads consecutive groups, each sharing one key/value head:

        n_heads=8, n_kv_heads=8 (MHA)  q: 0 1 2 3 4 5 6 7    kv: 0 1 2 3 4 5 6 7
        n_heads=8, n_kv_heads=2 (GQA)  q: 0 1 2 3 | 4 5 6 7  kv: 0 | 1
        n_heads=8, n_kv_heads=1 (MQA)  q: 0 1 2 3 4 5 6 7    kv: 0
    """

    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None  # None: dim // n_heads
    # Scores are scaled by query_pre_attn_scalar ** -0.5 (Gemma 2's name); None means head_dim.
    query_pre_attn_scalar: float | None = None
    softcap: float | None = None  # cap * tanh(score / cap) before the softmax (Gemma 2: 50)
    window: int | None = None  # sliding window: a query sees itself and the window - 1 keys before it
    window_pattern: str = "global"  # which layers use the window: global | local | alternating
    qkv_bias: bool = False
    out_bias: bool = False
    backend: str = "auto"  # auto | sdpa | eager | flex (auto: sdpa, or eager where soft-capping needs it)


@dataclass
class NormConfig:
    """Normalisation layers (their placement is ModelConfig.placement)."""

    kind: str = "rmsnorm"  # layernorm | rmsnorm
    eps: float = 1e-6
    unit_offset: bool = False  # scale by (1 + w), w initialised to 0 (Gemma)
    bias: bool = False


@dataclass
class MlpConfig:
    """Feed-forward sublayer: `kind` names an entry of `ablate.model.mlp.MLPS`."""

    kind: str = "swiglu"
    hidden_dim: int | None = None  # None: 4 * dim, or 2/3 of that (rounded up to 8) for gated kinds
    bias: bool = False


@dataclass
class ModelConfig:
    """A decoder-only transformer; every architectural axis of an ablation is a field here."""

    vocab_size: int = 4096
    dim: int = 256
    n_layers: int = 4
    max_seq_len: int = 256  # training context; the size of a learned position table
    position: PositionConfig = field(default_factory=PositionConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    placement: str = "pre"  # pre | post | sandwich
    mlp: MlpConfig = field(default_factory=MlpConfig)
    embedding_norm: bool = False  # LayerNorm-style norm right after the embedding (BLOOM)
    embedding_scale: bool = False  # multiply token embeddings by sqrt(dim) (Gemma)
    tie_embeddings: bool = True
    logit_softcap: float | None = None  # cap * tanh(logits / cap) on the output (Gemma 2: 30)
    match_mha_params: bool = False  # widen the MLP of GQA / MQA back to MHA's parameter count (Llama 2)
    dropout: float = 0.0
    init_std: float = 0.02

    # ---- resolved values -------------------------------------------------------------------
    @property
    def n_heads(self) -> int:
        return self.attention.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.attention.n_kv_heads or self.attention.n_heads

    @property
    def head_dim(self) -> int:
        return self.attention.head_dim or self.dim // self.attention.n_heads

    @property
    def attn_scale(self) -> float:
        """Factor on q.k scores."""
        return (self.attention.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def mlp_hidden_dim(self) -> int:
        from ablate.model.mlp import MLPS

        gated = MLPS.get(self.mlp.kind, "model.mlp.kind").gated
        hidden = self.mlp.hidden_dim
        if hidden is None:
            hidden = 8 * math.ceil(8 * self.dim / 3 / 8) if gated else 4 * self.dim
        if self.match_mha_params and self.n_kv_heads < self.n_heads:
            # the key/value parameters GQA / MQA saves, spent on hidden units of the MLP
            saved = 2 * (self.n_heads - self.n_kv_heads) * self.head_dim * (self.dim + self.attention.qkv_bias)
            per_unit = (3 if gated else 2) * self.dim + ((2 if gated else 1) if self.mlp.bias else 0)
            hidden += round(saved / per_unit)
        return hidden

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of layer `layer`, or None where it attends globally."""
        from ablate.model.attention import WINDOW_PATTERNS

        local = WINDOW_PATTERNS.get(self.attention.window_pattern, "model.attention.window_pattern")
        return self.attention.window if local(layer) else None

    # ---- construction and checks ---------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str = "model") -> "ModelConfig":
        """Build from a mapping (e.g. a composed Hydra node); unknown keys and wrong types raise ConfigError."""
        config = from_dict(cls, data, prefix)
        config.validate(prefix)
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, prefix: str = "model") -> "ModelConfig":
        """Raise ConfigError at the first impossible value; return self when all is well."""
        from ablate.model.attention import BACKENDS, WINDOW_PATTERNS
        from ablate.model.block import PLACEMENTS
        from ablate.model.mlp import MLPS
        from ablate.model.norm import NORMS
        from ablate.model.position import POSITIONS

        def f(name: str) -> str:
            return f"{prefix}.{name}"

        for name in ("vocab_size", "dim", "n_layers", "max_seq_len", "attention.n_heads"):
            value = _get(self, name)
            if value < 1:
                raise ConfigError(f(name), value, "must be a positive integer")
        POSITIONS.get(self.position.kind, f("position.kind"))
        NORMS.get(self.norm.kind, f("norm.kind"))
        PLACEMENTS.get(self.placement, f("placement"))
        MLPS.get(self.mlp.kind, f("mlp.kind"))
        WINDOW_PATTERNS.get(self.attention.window_pattern, f("attention.window_pattern"))
        BACKENDS.get(self.attention.backend, f("attention.backend"))

        a = self.attention
        divisors = [d for d in range(1, a.n_heads + 1) if a.n_heads % d == 0]
        if a.n_kv_heads is not None and a.n_kv_heads not in divisors:
            raise ConfigError(f("attention.n_kv_heads"), a.n_kv_heads,
                              f"must divide n_heads={a.n_heads} (MHA: n_heads, GQA: a divisor, MQA: 1)",
                              valid=divisors)
        if a.head_dim is None and self.dim % a.n_heads:
            raise ConfigError(f("attention.n_heads"), a.n_heads,
                              f"must divide dim={self.dim} unless attention.head_dim is set")
        if a.head_dim is not None and a.head_dim < 1:
            raise ConfigError(f("attention.head_dim"), a.head_dim, "must be a positive integer or null")
        for name in ("attention.softcap", "logit_softcap", "attention.query_pre_attn_scalar"):
            value = _get(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f(name), value, "must be positive or null (off)")
        if a.window is not None and a.window <= 0:
            raise ConfigError(f("attention.window"), a.window, "must be a positive number of tokens or null")
        if a.window_pattern != "global" and a.window is None:
            raise ConfigError(f("attention.window"), None,
                              f"window_pattern={a.window_pattern!r} needs a window size")
        if a.window is not None and a.window_pattern == "global":
            raise ConfigError(f("attention.window_pattern"), "global",
                              f"a window of {a.window} would be unused", valid=WINDOW_PATTERNS.names())
        if a.softcap is not None and a.backend == "sdpa":
            raise ConfigError(f("attention.backend"), "sdpa", "SDPA cannot soft-cap attention logits",
                              valid=[n for n in BACKENDS.names() if n != "sdpa"])
        if self.norm.eps <= 0:
            raise ConfigError(f("norm.eps"), self.norm.eps, "must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f("dropout"), self.dropout, "must be in [0, 1)")
        if self.mlp.hidden_dim is not None and self.mlp.hidden_dim < 1:
            raise ConfigError(f("mlp.hidden_dim"), self.mlp.hidden_dim, "must be a positive integer or null")
        POSITIONS.get(self.position.kind).check(self, prefix)
        return self


@dataclass
class DataConfig:
    """Training text, its tokenizer, the validation split and the batch order."""

    source: str = "synthetic"  # synthetic | files | hf
    synthetic_words: int = 3_000_000  # size of the built-in corpus
    synthetic_seed: int = 0
    name: str | None = None  # hf: dataset name, as for datasets.load_dataset
    config_name: str | None = None  # hf: dataset config
    split: str = "train"  # hf
    streaming: bool = False  # hf: stream instead of downloading everything (needs max_documents)
    max_documents: int | None = None  # stop after this many documents
    paths: list[str] = field(default_factory=list)  # files: paths or globs (.txt, .jsonl, .parquet)
    text_field: str = "text"  # jsonl / parquet / hf: the field holding the text
    tokenizer: str = "bpe"  # bpe (trained here), a tokenizer.json path, or a transformers tokenizer name
    vocab_size: int = 4096  # bpe: target vocabulary; the model's vocab_size is set from the tokenizer
    tokenizer_documents: int = 200_000  # bpe: trained on at most this many documents
    val_tokens: int = 65_536  # held out from the end of the token stream
    seed: int = 0  # batch order: every variant of an experiment sees the same tokens in the same order
    cache_dir: str = ".cache/ablate"  # tokenizers and token files, shared by every run


@dataclass
class OptimConfig:
    """AdamW with linear warmup then decay."""

    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # the schedule ends at lr * min_lr_ratio
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 50
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_norms_and_biases: bool = False
    decay_embeddings: bool = False
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping


@dataclass
class TrainConfig:
    """Budget, batch, precision, and how often to log, evaluate and checkpoint."""

    tokens: int = 1_500_000  # training budget
    batch_tokens: int = 8192  # global batch in tokens (all processes, all accumulation steps)
    micro_batch: int = 8  # sequences per forward pass per process
    seq_len: int | None = None  # null: model.max_seq_len
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch threads per process; null: the cores divided among local processes
    log_every: int = 10  # steps
    eval_every: int = 100  # steps between validation losses; 0: only at the end
    checkpoint_every: int = 100  # steps
    keep_checkpoints: int = 2
    eval_at_end: bool = False  # run the evaluation suites when training ends (or, if it has, when they are missing)
    retry_diverged: bool = False  # train a diverged run again from its last good checkpoint (it stays diverged otherwise)
    progress: str = "auto"  # auto (a bar on a terminal, log lines otherwise) | bar | lines


@dataclass
class SuiteConfig:
    """One evaluation suite: lm-eval tasks (or groups), and / or extrapolation lengths."""

    tasks: list[str] = field(default_factory=list)
    lengths: list[float] = field(default_factory=list)  # multiples of the training sequence length


@dataclass
class EvalConfig:
    """Zero-shot evaluation: which suites, on what data, how."""

    suites: dict[str, SuiteConfig] = field(default_factory=dict)
    limit: int | None = None  # items per task (all when null)
    batch_size: int = 32
    local_data: dict[str, str] = field(default_factory=dict)  # lm-eval task -> a local file to use instead
    samples: bool = False  # also write each request and its answer
    probe_items: int = 500  # items per probe task
    probe_seed: int = 1234  # probes come from another seed than training text
    extrapolation_tokens: int = 65_536  # held-out tokens scored at each length


@dataclass
class CostConfig:
    """What a sweep's plan assumes to turn FLOPs into GPU-hours."""

    gpu_tflops: float = 989.0  # peak dense bf16 TFLOP/s of one GPU (H100 SXM)
    mfu: float = 0.4  # the fraction of peak a run achieves


# Fields that change how a run is executed or reported, not what it computes: a run may resume
# with them changed.
OPERATIONAL = ("train.compile", "train.device", "train.threads", "train.log_every", "train.eval_every",
               "train.checkpoint_every", "train.keep_checkpoints", "train.eval_at_end", "train.progress",
               "train.micro_batch", "train.retry_diverged", "data.cache_dir", "model.attention.backend",
               "results_dir", "eval.", "plan", "cost.")


@dataclass
class RunConfig:
    """Everything one training run needs; what config.yaml in a run directory holds."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0  # initialisation and dropout; the batch order is data.seed
    experiment: str = "default"
    run_name: str = "run"
    results_dir: str = "results"
    plan: bool = False  # with -m: list the jobs and their cost, launch nothing
    cost: CostConfig = field(default_factory=CostConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        config = from_dict(cls, data, "")
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def seq_len(self) -> int:
        return self.train.seq_len or self.model.max_seq_len

    def validate(self) -> "RunConfig":
        self.model.validate("model")
        t, o = self.train, self.optim
        for name in ("tokens", "batch_tokens", "micro_batch", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(t, name) < 1:
                raise ConfigError(f"train.{name}", getattr(t, name), "must be a positive integer")
        if self.seq_len > self.model.max_seq_len and self.model.position.kind == "learned":
            raise ConfigError("train.seq_len", self.seq_len,
                              f"learned positions only cover model.max_seq_len={self.model.max_seq_len}")
        if t.batch_tokens % self.seq_len:
            raise ConfigError("train.batch_tokens", t.batch_tokens, f"must be a multiple of seq_len={self.seq_len}")
        if (t.batch_tokens // self.seq_len) % t.micro_batch:
            raise ConfigError("train.micro_batch", t.micro_batch,
                              f"must divide the global batch of {t.batch_tokens // self.seq_len} sequences")
        if t.tokens < t.batch_tokens:
            raise ConfigError("train.tokens", t.tokens, f"smaller than one batch ({t.batch_tokens} tokens)")
        _choice("train.precision", t.precision, ("auto", "fp32", "bf16"))
        _choice("train.device", t.device, ("auto", "cpu", "cuda"))
        _choice("train.progress", t.progress, ("auto", "bar", "lines"))
        _choice("optim.schedule", o.schedule, ("cosine", "linear", "constant"))
        if o.lr <= 0:
            raise ConfigError("optim.lr", o.lr, "must be positive")
        if not 0 <= o.min_lr_ratio <= 1:
            raise ConfigError("optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]")
        from ablate.data.sources import SOURCES

        SOURCES.get(self.data.source, "data.source")
        if self.data.tokenizer == "bpe" and self.data.vocab_size < 257:
            raise ConfigError("data.vocab_size", self.data.vocab_size,
                              "a byte-level BPE needs at least 257 ids (256 bytes and <|endoftext|>)")
        if self.data.val_tokens < self.seq_len + 1:
            raise ConfigError("data.val_tokens", self.data.val_tokens, f"must hold one sequence ({self.seq_len + 1})")
        return self


def _choice(field_name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(field_name, value, "unknown choice", valid=valid)


# ---- generic dataclass <- mapping ------------------------------------------------------------
def from_dict(cls: type[C], data: Mapping[str, Any], prefix: str) -> C:
    """Build dataclass `cls` from `data`, recursing into nested dataclasses, with typed errors."""
    if not isinstance(data, Mapping):
        raise ConfigError(prefix, data, f"expected a mapping of {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(path, value, f"unknown field of {cls.__name__}", valid=names)
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if typing.get_origin(hint) is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(path, value, "expected a mapping")
        _, item = typing.get_args(hint)
        return {str(k): _coerce(item, v, f"{path}.{k}") for k, v in value.items()}
    if typing.get_origin(hint) is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, "expected a list")
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(path, value, f"must not be null (expected {_type_name(hint)})")
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is int and isinstance(value, float) and value.is_integer() and float not in options:
            return int(value)  # 5e6 and 2e8, as people type budgets, are YAML floats
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)  # YAML reads run_name=1 as a number
    raise ConfigError(path, value, f"expected {_type_name(hint)}")


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if args:
        return " or ".join("null" if a is type(None) else a.__name__ for a in args)
    return getattr(hint, "__name__", str(hint))


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def run_name(choices: Mapping[str, Any], overrides: list[str], seed: int) -> str:
    """A readable run name: the model preset and its axis choices, the data set when not the
    built-in one, the other command-line overrides that change what is computed (last part of the
    key, the last value given), and the seed.
    E.g. default-rope-mha-rmsnorm-pre-swiglu-s0, gpt2-alibi-mqa-layernorm-pre-gelu_tanh-dim=512-s1."""
    axes = ("model/position", "model/attention", "model/norm", "model/placement", "model/mlp")
    extra = sorted(g for g in choices if g.startswith("model/") and g not in axes)  # e.g. model/softcap
    parts = [choices.get(g) for g in ("model", *axes, *extra)]
    if choices.get("data") not in (None, "synthetic"):
        parts.append(choices["data"])
    named: dict[str, str] = {}
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        if key in choices or key in _UNNAMED or key.startswith(("hydra.", *OPERATIONAL)):
            continue
        named[key] = value  # a key given twice keeps its first place and its last value
    parts += [f"{k.rsplit('.', 1)[-1]}={v}".replace("/", "_") for k, v in named.items()]
    return "-".join(str(p) for p in parts if p is not None) + f"-s{seed}"


_UNNAMED = ("seed", "experiment", "results_dir", "run_name", "plan")


def register_configs() -> None:
    """Put every field's default into Hydra's ConfigStore as `model_base`, which each model preset
    extends: any field can then be overridden on the command line (model.attention.head_dim=64)
    without a `+`, and the defaults live only in the dataclasses above. Types are checked by
    ModelConfig.from_dict, not by OmegaConf, so errors name the valid values."""
    from hydra.core.config_store import ConfigStore

    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("ablate_run_name", run_name, replace=True)
    from ablate.sweep import register as register_sweeper

    register_sweeper()
    store = ConfigStore.instance()
    store.store(name="model_base", node=dataclasses.asdict(ModelConfig()))
    store.store(name="data_base", node=dataclasses.asdict(DataConfig()))
    store.store(name="eval_base", node=dataclasses.asdict(EvalConfig()))


def compose_root(overrides: list[str] | None = None, config_dir: str | None = None) -> dict[str, Any]:
    """Compose conf/config.yaml with Hydra's compose API (no app running) and return it as a plain
    dict (the `hydra` node and run_name, which need a running app, left out). An unknown group
    option raises ConfigError listing the options there are."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException
    from omegaconf import OmegaConf

    register_configs()
    conf = Path(config_dir) if config_dir else Path(__file__).resolve().parent.parent / "conf"
    overrides = list(overrides or [])
    try:
        with initialize_config_dir(config_dir=str(conf), version_base=None):
            composed = compose(config_name="config", overrides=overrides)
    except MissingConfigException as err:
        for item in overrides:
            group, _, option = item.lstrip("+~").partition("=")
            options = sorted(p.stem for p in (conf / group).glob("*.yaml")) if (conf / group).is_dir() else []
            if options and option not in options:
                raise ConfigError(group, option, "no such option", valid=options) from None
        raise
    composed = OmegaConf.to_container(composed, resolve=False)
    composed.pop("run_name", None)
    return OmegaConf.to_container(OmegaConf.create(composed), resolve=True)


def compose_model(overrides: list[str] | None = None, config_dir: str | None = None) -> ModelConfig:
    """The validated ModelConfig of conf/ under `overrides` (e.g. ["model=gemma2",
    "model/position=alibi"]); for notebooks and tests, where no Hydra app is running."""
    return ModelConfig.from_dict(compose_root(overrides, config_dir)["model"])
