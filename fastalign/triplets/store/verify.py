"""The reader's checks: a store's manifest is verified against the layout before anything is trusted.

The writer enforces the layout (``layout``: shards ``0..S-1`` in order, all
full but the last, counts summing to the total, indices in ``[0, num_items)``);
a manifest edited, damaged or assembled by hand could break any of it and
still parse. ``check_manifest`` re-checks every rule in O(shards), from the
manifest and a directory listing only, and names the store and the rule. The
reader compares the digest (``check_digest``) last, so that a message says
what is wrong where a rule can tell, not only that something is.

Version-1 manifests (written before these checks, ``layout``) are verified as
far as they allow: everything but the digest and the recorded index
statistics (their indices are scanned from the shards when the reader
verifies checksums anyway). Opening one gives a one-time ``LegacyStoreWarning``.

``meta.temperature`` of a store with probabilities records the temperature the
stored probabilities were made with, and distillation reads it as the teacher
temperature. A different value cannot apply to probabilities that are already
stored, and using it would train on targets that contradict them; so a store
whose probabilities disagree with its ``meta.temperature`` is refused
(``check_temperature``), and the way to train at another temperature is the
distill option ``loss.teacher_temperature``, which leaves the store alone.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set

import numpy as np

from .layout import (
    DIGEST_KEY,
    INDEX_LIMIT,
    MANIFEST,
    SHARD_DIR,
    check_header,
    check_sim_dtype,
    manifest_digest,
    row_bytes,
    shard_file,
)

_SHARD_NAME = re.compile(r"shard-(\d{8})\.bin")
_noted: Set[str] = set()


class LegacyStoreWarning(UserWarning):
    """A store written before manifest digests and index statistics (format version 1)."""


def _int_field(mf: Path, where: str, value: Any, lo: int, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{mf}: {where} is {value!r}, expected an integer {bound}")
    return value


def _check_fields(mf: Path, doc: Dict[str, Any]) -> None:
    """Types and ranges of the header fields the checks below rely on."""
    check_sim_dtype(doc.get("sim_dtype"))
    _int_field(mf, "num_items", doc.get("num_items"), 1, INDEX_LIMIT)
    _int_field(mf, "shard_size", doc.get("shard_size"), 1)
    _int_field(mf, "count", doc.get("count"), 0)
    if not isinstance(doc.get("with_probs"), bool) or not isinstance(doc.get("complete"), bool):
        raise ValueError(f"{mf}: with_probs and complete must be true or false")
    if not isinstance(doc.get("shards"), list) or not all(isinstance(e, dict) for e in doc["shards"]):
        raise ValueError(f"{mf}: shards must be a list of shard entries")
    if not isinstance(doc.get("meta", {}), dict):
        raise ValueError(f"{mf}: meta must be an object")


def _check_entry(mf: Path, doc: Dict[str, Any], pos: int, e: Dict[str, Any]) -> None:
    """One entry: its file is its id's, its size follows from its count (and its index statistics)."""
    sid = _int_field(mf, f"entry {pos}: id", e.get("id"), 0)
    count = _int_field(mf, f"entry {pos} (shard {sid}): count", e.get("count"), 1, doc["shard_size"])
    if e.get("file") != shard_file(sid):
        raise ValueError(f"{mf}: entry {pos} (shard {sid}) names file {e.get('file')!r}, but shard {sid} is "
                         f"{shard_file(sid)!r}: entries were edited or swapped")
    want = count * row_bytes(doc["sim_dtype"], doc["with_probs"])
    if e.get("bytes") != want:
        raise ValueError(f"{mf}: entry {pos} (shard {sid}) records {e.get('bytes')!r} bytes, but {count} rows take {want}")
    if not isinstance(e.get("checksum"), str):
        raise ValueError(f"{mf}: entry {pos} (shard {sid}) has no checksum")
    if doc["version"] >= 2:
        lo = _int_field(mf, f"entry {pos} (shard {sid}): index_min", e.get("index_min"), 0)
        _int_field(mf, f"entry {pos} (shard {sid}): index_max", e.get("index_max"), lo)


def _check_order(mf: Path, shards: Sequence[Dict[str, Any]], shard_size: int, complete: bool) -> None:
    """Ids strictly increasing (no duplicate, no swap); a complete store: exactly 0..S-1, all full but the last."""
    first: Dict[int, int] = {}
    for pos, e in enumerate(shards):
        sid = e["id"]
        if sid in first:
            raise ValueError(f"{mf}: shard {sid} is listed twice (entries {first[sid]} and {pos}); "
                             "a duplicated entry would be read twice")
        first[sid] = pos
        if pos and sid < shards[pos - 1]["id"]:
            raise ValueError(f"{mf}: shard entries are out of order (entry {pos} is shard {sid}, after shard "
                             f"{shards[pos - 1]['id']}); swapped entries would reorder the data")
    if not complete:
        return
    top = shards[-1]["id"] + 1 if shards else 0
    missing = sorted(set(range(top)) - set(first))
    if missing:
        raise ValueError(f"{mf}: shards {missing[:10]} are missing from the list (dropped entries)")
    for e in shards[:-1]:
        if e["count"] != shard_size:
            raise ValueError(f"{mf}: shard {e['id']} holds {e['count']} rows, expected {shard_size} (only the last may be short)")


def _check_totals(mf: Path, doc: Dict[str, Any]) -> None:
    """The total against the entries, the generator's ``meta.num``, and the shard files on disk."""
    total = sum(e["count"] for e in doc["shards"])
    if total != doc["count"]:
        raise ValueError(f"{mf}: count is {doc['count']:,} but the shard entries hold {total:,} triplets")
    if not doc["complete"]:
        return
    num = doc.get("meta", {}).get("num")
    if isinstance(num, int) and not isinstance(num, bool) and num != total:
        raise ValueError(f"{mf}: the shards hold {total:,} triplets but meta.num is {num:,} (a dropped or extra shard entry)")
    d = mf.parent / SHARD_DIR
    listed = len(doc["shards"])
    for f in sorted(d.iterdir()) if d.is_dir() else []:
        m = _SHARD_NAME.fullmatch(f.name)
        if m and int(m.group(1)) >= listed:
            raise ValueError(f"{mf}: {f} is on disk but not in the manifest's {listed} shard entries (a dropped entry)")


def _check_index_stats(mf: Path, doc: Dict[str, Any]) -> None:
    """``num_items`` against the largest index the writer recorded (version 2)."""
    if not doc["shards"]:
        return
    top = max(doc["shards"], key=lambda e: e["index_max"])
    if top["index_max"] >= doc["num_items"]:
        raise ValueError(f"{mf}: num_items is {doc['num_items']:,} but shard {top['id']} holds item index "
                         f"{top['index_max']:,}: num_items was changed after writing")


def check_digest(mf: Path, doc: Dict[str, Any]) -> None:
    if doc["version"] < 2:
        return
    stored = doc.get(DIGEST_KEY)
    if not isinstance(stored, str):
        raise ValueError(f"{mf}: has no {DIGEST_KEY} although its format version is {doc['version']}; it was edited")
    if stored != manifest_digest(doc):
        raise ValueError(f"{mf}: manifest digest mismatch: the manifest was changed after it was written "
                         "(an edited field, or a damaged file); refusing to trust it")


def check_manifest(path: Path, doc: Dict[str, Any], allow_incomplete: bool) -> None:
    """Every rule of the layout the writer enforces, checked on a parsed manifest (see the module docstring).

    The digest is not compared here: the reader does that last (``check_digest``),
    after the checks that can say what is wrong, the shards' and the temperature's included.
    """
    mf = path / MANIFEST
    check_header(path, doc)
    _check_fields(mf, doc)
    if not doc["complete"] and not allow_incomplete:
        raise ValueError(f"{path}: the store is incomplete (its writer did not finish); rerun the generator with --resume")
    for pos, e in enumerate(doc["shards"]):
        _check_entry(mf, doc, pos, e)
    _check_order(mf, doc["shards"], doc["shard_size"], doc["complete"])
    _check_totals(mf, doc)
    if doc["version"] >= 2:
        _check_index_stats(mf, doc)


def check_index_data(path: Path, num_items: int, shard_indices: List[np.ndarray]) -> None:
    """Version 1 (no recorded statistics): ``num_items`` against the indices themselves (one pass over them)."""
    for sid, idx in enumerate(shard_indices):
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= num_items):
            raise ValueError(f"{path / MANIFEST}: num_items is {num_items:,} but shard {sid} holds item indices in "
                             f"[{int(idx.min()):,}, {int(idx.max()):,}]: num_items was changed after writing")


def _row_temperatures(sims: np.ndarray, probs: np.ndarray, sim_unit: float, t_meta: float):
    """(T, relative error bound) per usable row: ``T = (s_hi - s_lo) / log(p_hi / p_lo)``.

    The bound adds the storage rounding of the two similarities (``sim_unit``:
    2**-11 for float16) and the float32 rounding of the softmax; rows where a
    probability underflowed or the two similarities are nearly equal are left out.
    """
    s, p = sims.astype(np.float64), probs.astype(np.float64)
    rows = np.arange(s.shape[0])
    hi, lo = s.argmax(1), s.argmin(1)
    d = s[rows, hi] - s[rows, lo]
    p_hi, p_lo = p[rows, hi], p[rows, lo]
    ok = (d > 0) & (p_lo > 1e-30) & (p_hi > p_lo)
    d, p_hi, p_lo = d[ok], p_hi[ok], p_lo[ok]
    mag = np.abs(s[rows, hi][ok]) + np.abs(s[rows, lo][ok])
    log_ratio = np.log(p_hi / p_lo)
    err_d = mag * sim_unit + 2.0 ** -24
    err_l = mag / t_meta * 2.0 ** -22 + 2.0 ** -20
    return d / log_ratio, err_d / d + err_l / log_ratio


def check_temperature(path: Path, doc: Dict[str, Any], sims: np.ndarray, probs: Optional[np.ndarray]) -> None:
    """Refuse a ``meta.temperature`` that the stored probabilities contradict (see the module docstring).

    ``sims``/``probs``: rows of one shard (a few thousand are plenty). Only a clear
    verdict refuses: at least 8 well-conditioned rows must agree on one temperature
    (so probabilities that are no softmax of the similarities, e.g. hard labels,
    are never judged) and that temperature must differ from ``meta.temperature``.
    """
    t_meta = doc.get("meta", {}).get("temperature")
    if probs is None or isinstance(t_meta, bool) or not isinstance(t_meta, (int, float)) or not t_meta > 0:
        return
    unit = 2.0 ** -11 if doc["sim_dtype"] == "float16" else 2.0 ** -24
    temps, bound = _row_temperatures(np.asarray(sims), np.asarray(probs), unit, float(t_meta))
    good = bound < 1e-2
    if good.sum() < 8:
        return
    temps, bound = temps[good], bound[good]
    best = int(np.argmin(bound))
    t_data = float(temps[best])
    if not (np.abs(temps - t_data) <= 4 * (bound + bound[best]) * t_data).all():
        return  # the rows agree on no single temperature: these are not softmax(s / T) probabilities
    if abs(float(t_meta) - t_data) > (4 * float(bound[best]) + 1e-6) * t_data:
        raise ValueError(f"{path / MANIFEST}: meta.temperature is {t_meta!r} but the stored probabilities were made "
                         f"at T = {t_data:.6g}: the temperature was changed after writing, and it cannot apply to "
                         "stored probabilities; refused (to distil at another temperature set loss.teacher_temperature)")


def note_legacy(path: Path, doc: Dict[str, Any], indices_checked: bool) -> None:
    """Once per store and process: a version-1 store is verified only as far as its manifest allows."""
    key = str(path.resolve())
    if doc["version"] >= 2 or key in _noted:
        return
    _noted.add(key)
    scan = "its item indices were scanned" if indices_checked else "its item indices were not checked (verify=False)"
    warnings.warn(f"{path}: written before manifest checks (store format version 1): layout, counts, sizes and "
                  f"checksums are verified and {scan}, but it has no manifest digest, so an edited meta field "
                  "cannot be detected", LegacyStoreWarning, stacklevel=3)
