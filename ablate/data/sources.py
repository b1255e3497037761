"""Where documents come from: the built-in synthetic language, local files, or a Hugging Face
dataset. Each source yields plain-text documents and a key that changes whenever its content can."""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from ablate.config import DataConfig
from ablate.registry import ConfigError, Registry

SYNTHETIC_VERSION = 4  # bump when the generator's output changes, so caches are rebuilt


class Source:
    """Documents plus an identity for caching."""

    def __init__(self, key: str, documents: Callable[[], Iterator[str]]) -> None:
        self.key = key
        self.documents = documents


SOURCES: Registry[Callable[[DataConfig], Source]] = Registry("data source")


def check_data(cfg: DataConfig, prefix: str = "data") -> DataConfig:
    """The data config's named choices against their registry (its numbers: RunConfig.validate)."""
    SOURCES.get(cfg.source, f"{prefix}.source")
    if cfg.holdout not in ("validation", "tuning"):
        raise ConfigError(f"{prefix}.holdout", cfg.holdout, "no such split", valid=["validation", "tuning"])
    return cfg


@SOURCES.register("synthetic")
def synthetic_source(cfg: DataConfig) -> Source:
    from ablate.data.synthetic import documents

    if cfg.synthetic_words < 1000:
        raise ConfigError("data.synthetic_words", cfg.synthetic_words, "must be at least 1000 words")
    key = f"synthetic-v{SYNTHETIC_VERSION}-seed{cfg.synthetic_seed}-words{cfg.synthetic_words}"
    return Source(key, lambda: documents(cfg.synthetic_seed, cfg.synthetic_words))


@SOURCES.register("files")
def file_source(cfg: DataConfig) -> Source:
    """Text (.txt: the whole file is one document per blank-line-separated block), JSON lines
    (.jsonl / .json: `text_field` of each record) or Parquet (.parquet: the `text_field` column)."""
    if not cfg.paths:
        raise ConfigError("data.paths", cfg.paths, "data=files needs one or more paths or globs")
    files: list[Path] = []
    for pattern in cfg.paths:
        matched = sorted(glob.glob(str(Path(pattern).expanduser())))
        if not matched:
            raise ConfigError("data.paths", pattern, "matches no file")
        files += [Path(m) for m in matched]
    for f in files:
        if f.suffix not in _READERS:
            raise ConfigError("data.paths", str(f), "unsupported file type", valid=sorted(_READERS))
    digest = hashlib.sha256(cfg.text_field.encode())
    for f in files:
        with open(f, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)

    def documents() -> Iterator[str]:
        for f in files:
            yield from _READERS[f.suffix](f, cfg.text_field)

    return Source(f"files-{digest.hexdigest()[:16]}", documents)


def _utf8(data: bytes, path: Path, offset: int = 0) -> str:
    """`data` (found at byte `offset` of `path`) as text; ConfigError naming the file and the byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError("data.paths", str(path), f"is not UTF-8 text: byte {offset + err.start} is "
                          f"0x{data[err.start]:02x} ({err.reason}); a binary file, or text in another encoding "
                          "(convert it with iconv)") from None


def _read_text(path: Path, field: str) -> Iterator[str]:
    text = _utf8(path.read_bytes(), path)
    for block in text.split("\n\n"):
        if block.strip():
            yield block


def _read_jsonl(path: Path, field: str) -> Iterator[str]:
    offset = 0
    with open(path, "rb") as handle:
        for n, raw in enumerate(handle, 1):
            line, offset = _utf8(raw, path, offset), offset + len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                raise ConfigError("data.paths", f"{path}:{n}", f"is not a JSON record ({err})") from None
            if not isinstance(record, dict) or field not in record:
                raise ConfigError("data.text_field", field, f"not a field of {path}:{n}",
                                  valid=sorted(record) if isinstance(record, dict) else None)
            yield record[field]


def _read_parquet(path: Path, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if field not in table.column_names:
        raise ConfigError("data.text_field", field, f"not a column of {path}", valid=table.column_names)
    yield from (t for t in table.column(field).to_pylist() if t)


_READERS = {".txt": _read_text, ".jsonl": _read_jsonl, ".json": _read_jsonl, ".parquet": _read_parquet}


@SOURCES.register("hf")
def hf_source(cfg: DataConfig) -> Source:
    """`datasets.load_dataset(name, config_name, split=split, streaming=streaming)`; works offline
    from the local HF cache (HF_DATASETS_OFFLINE=1) once `ablate-prepare` has run where there is network."""
    if not cfg.name:
        raise ConfigError("data.name", cfg.name, "data.source=hf needs a dataset name")
    if cfg.streaming and not cfg.max_documents:
        raise ConfigError("data.max_documents", None, "a streamed dataset needs a document limit")
    spec = f"{cfg.name}|{cfg.config_name}|{cfg.split}|{cfg.max_documents}|{cfg.text_field}"

    def documents() -> Iterator[str]:
        import datasets

        try:
            ds = datasets.load_dataset(cfg.name, cfg.config_name, split=cfg.split, streaming=cfg.streaming)
        except Exception as err:  # datasets raises many types for a missing or unreachable dataset
            raise ConfigError("data.name", cfg.name, f"could not load the dataset ({type(err).__name__}: {err})") \
                from err
        columns = ds.column_names or []
        if columns and cfg.text_field not in columns:
            raise ConfigError("data.text_field", cfg.text_field, f"not a column of {cfg.name}", valid=columns)
        for n, record in enumerate(ds):
            if cfg.max_documents and n >= cfg.max_documents:
                break
            if record[cfg.text_field]:
                yield record[cfg.text_field]

    return Source(f"hf-{hashlib.sha256(spec.encode()).hexdigest()[:16]}", documents)


def build_source(cfg: DataConfig) -> Source:
    return SOURCES.get(cfg.source, "data.source")(cfg)
