"""Typed configuration: plain dataclasses that Hydra's YAML is turned into. A leaf: it knows no
registry, no model and no Hydra.

`Transformer(ModelConfig(...))` needs no Hydra. `from_dict` builds a config from a (composed)
mapping, rejecting unknown fields and wrong types; `validate()` rejects impossible numbers and
combinations. Whether a named choice exists (a position scheme, a norm, a data source) is checked
beside its registry: `ablate.model.check_model`, `ablate.data.sources.check_data`. All raise
`ConfigError`, naming the dotted field and the valid values.

Each field says what it is for in its metadata: `operational` fields change how a run is executed
or reported, never what it computes (a run may resume with them changed, and they are not part of
its config hash); `identity` fields name and place a run; `derived` fields are set by ablate itself;
`replicate` fields (the init and data-order seeds) repeat a run of the same variant.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ablate import parts
from ablate.registry import ConfigError
from ablate.typed import from_dict


def operational(default: Any = None, *, factory: Any = None) -> Any:
    """A field that changes how a run is executed or reported, not what it computes."""
    if factory is not None:
        return field(default_factory=factory, metadata={"operational": True})
    return field(default=default, metadata={"operational": True})


def marked(cls: type, mark: str, prefix: str = "") -> tuple[str, ...]:
    """Dotted names of the fields of dataclass `cls` (nested ones included) whose metadata has
    `mark`; a marked section ends with a dot ("eval."), so that it covers every field inside."""
    hints = typing.get_type_hints(cls)
    names: list[str] = []
    for f in dataclasses.fields(cls):
        if f.metadata.get(mark):
            names.append(f"{prefix}{f.name}" + ("." if dataclasses.is_dataclass(hints[f.name]) else ""))
        elif dataclasses.is_dataclass(hints[f.name]):
            names += marked(hints[f.name], mark, f"{prefix}{f.name}.")
    return tuple(names)


@dataclass
class PositionConfig:
    """How token positions enter the model: `kind` names a scheme in `ablate.model.position`."""

    kind: str = "rope"
    theta: float = 10_000.0  # rope: base of the rotation frequencies
    rotary_fraction: float = 1.0  # rope: share of head_dim that is rotated (GPT-NeoX's rotary_pct)
    nope_every: int = 4  # rope_nope: every k-th layer has no positions (SmolLM3: 4)


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
    # QK-norm, before the rotation: null (none) | head (over each head's head_dim: Qwen 3, Gemma 3,
    # torchtitan, Megatron) | all (over all heads' n_heads x head_dim at once: OLMo 2); model.norm's kind
    qk_norm: str | None = None
    # multi-head latent attention with kv_lora_rank set (ablate.model.latent); head_dim is then the
    # non-rotary part of a query / key head, v_head_dim a value head's (null: head_dim)
    kv_lora_rank: int | None = None
    q_lora_rank: int | None = None
    rope_head_dim: int = 16
    v_head_dim: int | None = None
    backend: str = operational("auto")  # auto | sdpa | eager | flex (auto picks by device and need)


def attention_family(n_heads: int, n_kv_heads: int | None) -> str:
    """mha, mqa, or gqa<K> for K shared key/value heads: one spelling everywhere (summaries, tables)."""
    if n_kv_heads in (None, n_heads):
        return "mha"
    return "mqa" if n_kv_heads == 1 else f"gqa{n_kv_heads}"


PARAMETRIZATIONS = ("sp", "mup")
QK_NORMS = (None, "head", "all")


@dataclass
class NormConfig:
    """Normalisation layers (their placement is ModelConfig.placement)."""

    kind: str = "rmsnorm"  # layernorm | rmsnorm
    eps: float = 1e-6
    unit_offset: bool = False  # scale by (1 + w), w initialised to 0 (Gemma)
    bias: bool = False


@dataclass
class MoeConfig:
    """Mixture of experts in place of the dense MLP (ablate.model.moe), with n_experts > 0: each
    token goes to top_k routed experts (each an MLP of mlp.kind), plus any shared experts."""

    n_experts: int = 0  # 0: the dense MLP
    top_k: int = 2
    expert_hidden_dim: int | None = None  # null: the dense MLP's hidden size (mlp.hidden_dim's rule)
    n_shared_experts: int = 0  # experts every token passes through (Qwen2-MoE, DeepSeek), as one MLP
    shared_hidden_dim: int | None = None  # null: n_shared_experts x expert_hidden_dim
    shared_gate: bool = False  # the shared experts' output scaled by sigmoid(x . w) (Qwen2-MoE)
    # softmax_topk: softmax over every expert, the k largest kept as they are (OLMoE, Qwen2-MoE);
    # topk_softmax: softmax over the k chosen experts' logits (Mixtral; softmax_topk renormalised)
    router: str = "softmax_topk"
    # aux_loss: + aux_loss_weight x E x sum_i f_i P_i (Switch); bias: a per-expert bias on the
    # scores that choose (not on the weights), moved by bias_rate after every step toward equal load
    # (DeepSeek-V3, no auxiliary loss); none
    balance: str = "aux_loss"
    aux_loss_weight: float = 0.01
    bias_rate: float = 0.001


@dataclass
class MlpConfig:
    """Feed-forward sublayer: `kind` names an entry of `ablate.model.mlp.MLPS`."""

    kind: str = "swiglu"
    hidden_dim: int | None = None  # None: 4 * dim, or 2/3 of that (rounded up to 8) for gated kinds
    bias: bool = False
    moe: MoeConfig = field(default_factory=MoeConfig)


@dataclass
class ModelConfig:
    """A decoder-only transformer; every architectural axis of an ablation is a field here."""

    vocab_size: int = field(default=4096, metadata={"derived": True})  # training: the tokenizer's, padded
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
    # sp: init, learning rates and logits as they are at every width; mup: relative to mup_base_dim
    # (hidden matrices Normal(0, init_std / sqrt(m)) and Adam LR / m, logits / m, attention 1/d),
    # m = dim / mup_base_dim, so that an LR tuned at the base width holds at others
    parametrization: str = "sp"
    mup_base_dim: int = 256

    # ---- resolved values -------------------------------------------------------------------
    @property
    def n_heads(self) -> int:
        return self.attention.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.attention.n_kv_heads or self.attention.n_heads

    @property
    def attention_family(self) -> str:
        return attention_family(self.n_heads, self.attention.n_kv_heads)

    @property
    def head_dim(self) -> int:
        return self.attention.head_dim or self.dim // self.attention.n_heads

    @property
    def latent(self) -> bool:
        """Multi-head latent attention (attention.kv_lora_rank set)."""
        return self.attention.kv_lora_rank is not None

    @property
    def qk_head_dim(self) -> int:
        """A query / key head's channels: head_dim, plus the rotary ones under latent attention."""
        return self.head_dim + (self.attention.rope_head_dim if self.latent else 0)

    @property
    def v_head_dim(self) -> int:
        return (self.attention.v_head_dim or self.head_dim) if self.latent else self.head_dim

    @property
    def attn_scale(self) -> float:
        """Factor on q.k scores: 1/sqrt(d) (1/d under muP, d the head size or query_pre_attn_scalar)."""
        d = self.attention.query_pre_attn_scalar or self.qk_head_dim
        return 1.0 / d if self.parametrization == "mup" else d**-0.5

    @property
    def width_mult(self) -> float:
        """m = dim / mup_base_dim under muP, 1 under SP: what init, hidden LRs and logits scale by."""
        return self.dim / self.mup_base_dim if self.parametrization == "mup" else 1.0

    @property
    def matrix_std(self) -> float:
        """The init std of a hidden matrix: init_std, divided by sqrt(m) under muP (variance 1/fan_in)."""
        return self.init_std / self.width_mult**0.5

    # ---- construction and checks ---------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str = "model") -> ModelConfig:
        """Build from a mapping (e.g. a composed Hydra node); unknown keys, wrong types and
        impossible numbers raise ConfigError (unknown choices: ablate.model.check_model)."""
        config = from_dict(cls, data, prefix)
        config.validate(prefix)
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, prefix: str = "model") -> ModelConfig:
        """Raise ConfigError at the first impossible value; return self when all is well. Checks
        that need a registry (which choices exist) are ablate.model.check_model's."""

        def f(name: str) -> str:
            return f"{prefix}.{name}"

        if self.parametrization not in PARAMETRIZATIONS:
            raise ConfigError(f("parametrization"), self.parametrization, "unknown parametrization",
                              valid=PARAMETRIZATIONS)
        for name in ("vocab_size", "dim", "n_layers", "max_seq_len", "attention.n_heads", "position.nope_every",
                     "mup_base_dim"):
            value = _get(self, name)
            if value < 1:
                raise ConfigError(f(name), value, "must be a positive integer")
        self._validate_attention(f)
        if self.norm.eps <= 0:
            raise ConfigError(f("norm.eps"), self.norm.eps, "must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f("dropout"), self.dropout, "must be in [0, 1)")
        if self.mlp.hidden_dim is not None and self.mlp.hidden_dim < 1:
            raise ConfigError(f("mlp.hidden_dim"), self.mlp.hidden_dim, "must be a positive integer or null")
        if self.mlp.moe.n_experts:
            parts.experts(self, f)
        return self

    def _validate_attention(self, f) -> None:
        """Heads, kv heads, head size, soft-caps and windows."""
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
        if a.kv_lora_rank is not None:
            parts.latent(self, f)
        if a.qk_norm not in QK_NORMS:
            raise ConfigError(f("attention.qk_norm"), a.qk_norm, "unknown QK-norm", valid=["null", "head", "all"])
        for name in ("attention.softcap", "logit_softcap", "attention.query_pre_attn_scalar"):
            value = _get(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f(name), value, "must be positive or null (off)")
        if a.window is not None and a.window <= 0:
            raise ConfigError(f("attention.window"), a.window, "must be a positive number of tokens or null")
        if a.window_pattern != "global" and a.window is None:
            raise ConfigError(f("attention.window"), None,
                              f"window_pattern={a.window_pattern!r} needs a window size")


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
    # which held-out split a run is scored on: `validation` (the last val_tokens of the stream: what
    # is reported) or `tuning` (the val_tokens before them, which the run then does not train on:
    # what +tune=lr chooses an LR on, so the reported split never chooses anything)
    holdout: str = "validation"
    # batch order: every variant of an experiment sees the same tokens in the same order; a replicate
    # seed like `seed`: a sweep over it measures data-order noise
    seed: int = field(default=0, metadata={"replicate": True})
    cache_dir: str = operational(".cache/ablate")  # tokenizers and token files, shared by every run


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
class DistillConfig:
    """Distillation from a teacher (ablate.train.distill): the loss is (1 - weight) x next-token
    cross-entropy + weight x temperature^2 x KL(teacher || student) at that temperature, over the
    full vocabulary or the teacher's top_k tokens. weight 0 is plain training (no teacher runs)."""

    teacher: str | None = None  # an ablate run directory (completed) or a local transformers model directory
    weight: float = 0.0
    temperature: float = 1.0
    top_k: int | None = None  # null: the teacher's full distribution


@dataclass
class TrainConfig:
    """Budget, batch, precision, and how often to log, evaluate and checkpoint."""

    tokens: int = 1_500_000  # training budget
    batch_tokens: int = 8192  # global batch in tokens (all processes, all accumulation steps)
    micro_batch: int = operational(8)  # sequences per forward pass per process (the global batch is fixed)
    seq_len: int | None = None  # null: model.max_seq_len
    precision: str = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16, else fp32) | fp32 | bf16
    compile: bool | str = operational("auto")  # auto: each block on CUDA (eager elsewhere) | true | false
    parallel: str = operational("ddp")  # ddp (replicas) | fsdp (each block sharded; torch.distributed.checkpoint)
    device: str = operational("auto")  # auto | cpu | cuda
    peak_tflops: float | None = operational(None)  # one device's peak, for MFU; null: train/devices.py (none on CPU)
    threads: int | None = operational(None)  # torch threads per process; null: the cores divided among local processes
    log_every: int = operational(10)  # steps
    eval_every: int = operational(100)  # steps between validation losses; 0: only at the end
    checkpoint_every: int = operational(100)  # steps
    keep_checkpoints: int = operational(2)
    eval_at_end: bool = operational(False)  # evaluate when training ends (or, if it has, what is missing)
    retry_diverged: bool = operational(False)  # train a diverged run again from its last good checkpoint
    progress: str = operational("auto")  # auto (a bar on a terminal, log lines otherwise) | bar | lines
    distill: DistillConfig = field(default_factory=DistillConfig)
    # where metrics go besides metrics.jsonl (always): tensorboard, wandb, trackio (ablate.train.trackers)
    loggers: list[str] = operational(factory=lambda: ["jsonl"])
    tracker_project: str = operational("ablate")  # W&B / trackio project; the experiment is the group
    wandb_mode: str | None = operational(None)  # online | offline | disabled; null: WANDB_MODE or wandb's default
    eval_every_tokens: int | None = operational(None)  # evaluate eval_suite on the live model this often
    eval_suite: str = operational("probes")  # which eval.suites entry (its tasks) the live evaluation runs


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
    device: str = "auto"  # auto: a GPU when one is visible, else the CPU | cpu | cuda


@dataclass
class CostConfig:
    """What a sweep's plan assumes to turn FLOPs into GPU-hours."""

    gpu_tflops: float = 989.0  # peak dense bf16 TFLOP/s of one GPU (H100 SXM)
    mfu: float = 0.4  # the fraction of peak a run achieves


@dataclass
class FairnessConfig:
    """What the plan's fairness check (ablate.plan.fairness) may take as asked for."""

    axis: list[str] = field(default_factory=list)  # fields the experiment declares part of its axis (or "params")
    param_tolerance: float = 0.01  # a wider spread of non-embedding parameters is a confound


@dataclass
class ReportConfig:
    """What ablate-report reads from an experiment."""

    # the metrics whose tests make the primary family (Holm over exactly these sets the marks and the
    # verdict), e.g. [train|val_loss, ablate_length|acc]; empty: validation loss, each informative
    # task's accuracy and the extrapolation ratio (README: results and statistics)
    primary: list[str] = field(default_factory=list)


@dataclass
class TuneConfig:
    """`+tune=lr`: before the experiment's seeds, each arm trains once at base LR x every
    multiplier; its seeds then run at the LR with the lowest validation loss."""

    lr_multipliers: list[float] = field(default_factory=list)  # empty: no tuning
    tokens: int | None = None  # each tuning run's budget; null: the experiment's train.tokens
    # the tuning runs' init seed and data order: never a reported replicate's (checked at plan time),
    # so that the run that picked an LR is never the run reported at it
    seed: int = 1000
    data_seed: int = 1000
    # a ladder under muP: the LR is tuned at the smallest rung and checked at this one (null: the largest)
    check_size: int | None = None


@dataclass
class LadderConfig:
    """One rung of a ladder of model sizes (ablate.ladder): with `size` set, the model's width,
    depth and heads and the token budget follow from it; null: no ladder."""

    size: int | None = None  # the rung: model.dim
    tokens_per_param: float | None = 20.0  # train.tokens = this x non-embedding parameters; null: train.tokens
    aspect: int = 64  # width per layer: model.n_layers = round(size / aspect), at least min_layers
    min_layers: int = 2
    head_dim: int = 64  # model.attention.n_heads = size / head_dim (at least 1)


def _stays_inside(path: str) -> bool:
    """A non-empty relative path none of whose parts climbs out (no '..', not absolute)."""
    parts = path.replace("\\", "/").split("/")
    return bool(path.strip()) and "\0" not in path and not path.startswith(("/", "~")) and \
        all(p not in ("..", ".") for p in parts) and any(parts)


@dataclass
class RunConfig:
    """Everything one training run needs; what config.yaml in a run directory holds."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = operational(factory=EvalConfig)
    seed: int = field(default=0, metadata={"replicate": True})  # initialisation and dropout (order: data.seed)
    experiment: str = field(default="default", metadata={"identity": True})
    run_name: str = field(default="run", metadata={"identity": True})
    results_dir: str = operational("results")
    plan: bool = operational(False)  # with -m: list the jobs and their cost, launch nothing
    cost: CostConfig = operational(factory=CostConfig)
    fairness: FairnessConfig = operational(factory=FairnessConfig)
    tune: TuneConfig = operational(factory=TuneConfig)
    report: ReportConfig = operational(factory=ReportConfig)
    ladder: LadderConfig = field(default_factory=LadderConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build from a mapping; unknown keys, wrong types and impossible numbers raise ConfigError
        (unknown choices: ablate.run.lifecycle)."""
        config = from_dict(cls, data, "")
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def seq_len(self) -> int:
        return self.train.seq_len or self.model.max_seq_len

    def check_paths(self) -> None:
        """The run directory, results_dir/experiment/run_name, stays inside results_dir/experiment:
        run_name and experiment are names, or relative paths that do not climb out (the LR tuning's
        runs are named tune/<run>)."""
        for field_name, value, inside in (("experiment", self.experiment, f"{self.results_dir}/"),
                                          ("run_name", self.run_name, f"{self.results_dir}/{self.experiment}/")):
            if not _stays_inside(str(value)):
                raise ConfigError(field_name, str(value), f"must be a name (or a relative path without '..') inside "
                                  f"{inside}: the run lives in {self.results_dir}/<experiment>/<run_name>")

    def validate(self) -> RunConfig:
        """Every number and combination of the run, section by section (ConfigError on the first
        wrong one); the named choices are checked beside their registries (ablate.run.lifecycle)."""
        self.check_paths()
        self.model.validate("model")
        self._validate_train()
        self._validate_distill()
        self._validate_optim()
        self._validate_ladder_and_data()
        return self

    def _validate_train(self) -> None:
        t = self.train
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
        _choice("train.parallel", t.parallel, ("ddp", "fsdp"))
        if t.wandb_mode is not None:
            _choice("train.wandb_mode", t.wandb_mode, ("online", "offline", "disabled"))
        if t.eval_every_tokens is not None:
            if t.eval_every_tokens < t.batch_tokens:
                raise ConfigError("train.eval_every_tokens", t.eval_every_tokens,
                                  f"must be at least one batch ({t.batch_tokens} tokens) or null")
            if t.eval_suite not in self.eval.suites or not self.eval.suites[t.eval_suite].tasks:
                raise ConfigError("train.eval_suite", t.eval_suite, "not a suite of eval.suites with tasks",
                                  valid=[n for n, s in self.eval.suites.items() if s.tasks])

    def _validate_distill(self) -> None:
        t, d = self.train, self.train.distill
        if not 0 <= d.weight <= 1:
            raise ConfigError("train.distill.weight", d.weight, "must be in [0, 1] (0: no distillation)")
        if d.weight > 0 and not d.teacher:
            raise ConfigError("train.distill.teacher", d.teacher,
                              "distilling (train.distill.weight > 0) needs a teacher: an ablate run directory or a "
                              "local transformers model directory")
        if d.temperature <= 0:
            raise ConfigError("train.distill.temperature", d.temperature, "must be positive")
        if d.top_k is not None and d.top_k < 1:
            raise ConfigError("train.distill.top_k", d.top_k, "must be a positive integer or null")
        if t.compile not in (True, False, "auto"):
            raise ConfigError("train.compile", t.compile, "unknown choice", valid=("auto", "true", "false"))

    def _validate_optim(self) -> None:
        t, o = self.train, self.optim
        _choice("optim.schedule", o.schedule, ("cosine", "linear", "constant"))
        if o.lr <= 0:
            raise ConfigError("optim.lr", o.lr, "must be positive")
        if not 0 <= o.min_lr_ratio <= 1:
            raise ConfigError("optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]")
        if any(m <= 0 for m in self.tune.lr_multipliers):
            raise ConfigError("tune.lr_multipliers", self.tune.lr_multipliers, "must all be positive")
        if self.tune.tokens is not None and self.tune.tokens < t.batch_tokens:
            raise ConfigError("tune.tokens", self.tune.tokens, f"smaller than one batch ({t.batch_tokens} tokens)")

    def _validate_ladder_and_data(self) -> None:
        lad = self.ladder
        if lad.size is not None and lad.size < 1:
            raise ConfigError("ladder.size", lad.size, "must be a positive width or null")
        if lad.tokens_per_param is not None and lad.tokens_per_param <= 0:
            raise ConfigError("ladder.tokens_per_param", lad.tokens_per_param, "must be positive or null")
        for name in ("aspect", "min_layers", "head_dim"):
            if getattr(lad, name) < 1:
                raise ConfigError(f"ladder.{name}", getattr(lad, name), "must be a positive integer")
        if not 0 <= self.fairness.param_tolerance < 1:
            raise ConfigError("fairness.param_tolerance", self.fairness.param_tolerance, "must be in [0, 1)")
        if self.data.tokenizer == "bpe" and self.data.vocab_size < 257:
            raise ConfigError("data.vocab_size", self.data.vocab_size,
                              "a byte-level BPE needs at least 257 ids (256 bytes and <|endoftext|>)")
        if self.data.val_tokens < self.seq_len + 1:
            raise ConfigError("data.val_tokens", self.data.val_tokens, f"must hold one sequence ({self.seq_len + 1})")


def _choice(field_name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(field_name, value, "unknown choice", valid=valid)


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# What the config says of its own fields (see the module doc).
OPERATIONAL = marked(RunConfig, "operational")
IDENTITY = marked(RunConfig, "identity")
DERIVED = marked(RunConfig, "derived")
REPLICATE = marked(RunConfig, "replicate")
