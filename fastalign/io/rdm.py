"""Measured human RDMs (dissimilarity matrices) from files, checked on the way in.

A spec is ``FILE`` or ``FILE:VAR``. The text after the *last* colon is a variable
name only when the part before it is an existing file, so a path that contains a
colon, and ``things:KEY`` elsewhere, keep their meaning.

Formats (every RDM ends up as an (S, N, N) float64 stack, S subjects, N stimuli):

- ``.npy``: (N, N) one RDM; (S, N, N) one per subject; (M,) one upper-triangle
  vector; (S, M) one vector per subject. A vector holds the pairs ``i < j`` in
  row-major order (``scipy.spatial.distance.squareform``), so M = N (N - 1) / 2,
  and any other length is refused. A square 2-D array is always one RDM.
- ``.npz``: the array ``VAR``, else the only array, else ``rdms``; the same shapes
  as ``.npy``. An optional string array ``stimuli`` names the N stimuli.
- ``.mat`` (scipy, an optional dependency: ``pip install scipy``): the variable
  ``VAR``, which may be a numeric array (3-D is MATLAB's N x N x S unless only the
  last two sizes agree), a struct array with one RDM per element (the field
  ``RDM``, or its only numeric field; ``name`` names the subject), or a cell
  array. Without ``VAR``: a Meadows export (``rdmutv_P`` vectors with
  ``stimuli_P`` names for each participant P) gives one subject per participant,
  reordered to the first participant's stimulus order; otherwise the file's only
  variable.

Checks (each a one-line error naming the file and subject): the matrix is
square with at least 3 stimuli; symmetric and with a zero diagonal within
``RDM_RTOL`` times the largest absolute entry; finite. NaN entries are refused
unless ``allow_nan=True``, which leaves those pairs out of every comparison (see
``fastalign.eval.human_rdm``); a NaN on the diagonal is always accepted, since the
diagonal is never compared.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "RDM_FORMATS",
    "RDM_RTOL",
    "HumanRDMs",
    "read_human_rdm",
    "read_rdm_items",
    "split_rdm_spec",
    "vector_to_rdm",
]

RDM_FORMATS = (".npy", ".npz", ".mat")
RDM_RTOL = 1e-6  # symmetry and zero-diagonal tolerance, relative to the largest |entry|
_MEADOWS = re.compile(r"^rdmutv_(.+)$")


@dataclass(frozen=True)
class HumanRDMs:
    """Measured RDMs of S subjects over the same N stimuli.

    Attributes:
        rdms: (S, N, N) float64, symmetric, zero diagonal; NaN only where allowed.
        subjects: S subject names (participant ids, struct names, or ``subject_<i>``).
        stimuli: N stimulus names when the file has them, else None.
        source: the spec the RDMs were read from.
    """

    rdms: np.ndarray
    subjects: List[str]
    stimuli: Optional[List[str]]
    source: str

    @property
    def n_subjects(self) -> int:
        return int(self.rdms.shape[0])

    @property
    def n_stimuli(self) -> int:
        return int(self.rdms.shape[1])


def split_rdm_spec(spec: str) -> Tuple[Path, Optional[str]]:
    """``FILE:VAR`` -> (FILE, VAR) when FILE exists; anything else -> (spec, None).

    Args:
        spec: the user's ``--human-rdm`` value.
    """
    spec = str(spec)
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail and Path(head).is_file():
        return Path(head), tail
    return Path(spec), None


def vector_to_rdm(vec: Any, where: str) -> np.ndarray:
    """An (N, N) RDM from its upper triangle in row-major (``squareform``) order.

    Args:
        vec: 1-D array of length N (N - 1) / 2.
        where: names the source in errors.
    """
    v = np.asarray(vec, dtype=np.float64).reshape(-1)
    m = v.size
    n = int(round((1 + math.sqrt(1 + 8 * m)) / 2))
    if m == 0 or n * (n - 1) // 2 != m:
        raise ValueError(f"{where}: an upper-triangle vector must have n(n-1)/2 entries; "
                         f"{m} is not n(n-1)/2 for any n")
    out = np.zeros((n, n), dtype=np.float64)
    iu = np.triu_indices(n, 1)
    out[iu] = v
    out[(iu[1], iu[0])] = v
    return out


def _stack(arr: Any, where: str, matlab: bool = False) -> np.ndarray:
    """Any accepted array shape as an (S, N, N) stack (see the module docstring)."""
    a = np.asarray(arr)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{where}: an RDM must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.ndim == 1 or (a.ndim == 2 and 1 in a.shape and a.shape[0] != a.shape[1]):
        return vector_to_rdm(a, where)[None]
    if a.ndim == 2:
        if a.shape[0] == a.shape[1]:
            return a[None]
        return np.stack([vector_to_rdm(row, f"{where} row {i}") for i, row in enumerate(a)])
    if a.ndim == 3:
        if matlab and a.shape[0] == a.shape[1]:
            return np.ascontiguousarray(a.transpose(2, 0, 1))  # MATLAB stores N x N x S
        if a.shape[1] == a.shape[2]:
            return a
    raise ValueError(f"{where}: expected (N, N), (S, N, N), (M,) or (S, M) RDM data, got shape {a.shape}")


def _check(stack: np.ndarray, subjects: Sequence[str], where: str, allow_nan: bool) -> np.ndarray:
    """Refuse what cannot be an RDM: small, infinite, NaN (unless allowed), asymmetric, non-zero diagonal."""
    n = stack.shape[1]
    if n < 3:
        raise ValueError(f"{where}: an RDM needs at least 3 stimuli (2 pairs) to correlate, got {n}")
    off = ~np.eye(n, dtype=bool)
    for s, name in enumerate(subjects):
        m = stack[s]
        if np.isinf(m).any():
            raise ValueError(f"{where}: subject {name!r} has infinite entries")
        nan = np.isnan(m) & off
        if nan.any() and not allow_nan:
            raise ValueError(f"{where}: subject {name!r} has {int(nan.sum()) // 2} NaN pairs; "
                             "pass --rdm-mask-nan (allow_nan=True) to leave them out of every comparison")
        scale = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 0.0
        tol = RDM_RTOL * scale
        if not np.array_equal(np.isnan(m), np.isnan(m.T)):
            raise ValueError(f"{where}: subject {name!r}: the NaN entries are not symmetric")
        asym = np.nan_to_num(np.abs(m - m.T), nan=0.0).max()
        if asym > tol:
            raise ValueError(f"{where}: subject {name!r} is not symmetric: max |D - D^T| = {asym:.3g} "
                             f"> {tol:.3g} (tolerance {RDM_RTOL:g} x max |D|)")
        diag = np.nan_to_num(np.abs(np.diag(m)), nan=0.0).max()
        if diag > tol:
            raise ValueError(f"{where}: subject {name!r} has a non-zero diagonal: max |D_ii| = {diag:.3g} "
                             f"> {tol:.3g} (tolerance {RDM_RTOL:g} x max |D|)")
    out = stack.copy()
    for s in range(out.shape[0]):
        np.fill_diagonal(out[s], 0.0)  # within tolerance: make it exactly 0
    return out


def _names(arr: Any) -> List[str]:
    return [str(x).strip() for x in np.asarray(arr).reshape(-1)]


def _read_npy(path: Path, var: Optional[str]) -> Tuple[Any, Optional[List[str]], Optional[str]]:
    if var is not None:
        raise ValueError(f"{path}: a .npy file holds one array; FILE:VAR is for .npz and .mat")
    return np.load(path, allow_pickle=False), None, None


def _read_npz(path: Path, var: Optional[str]) -> Tuple[Any, Optional[List[str]], Optional[str]]:
    with np.load(path, allow_pickle=False) as z:
        files = list(z.files)
        stimuli = _names(z["stimuli"]) if "stimuli" in files else None
        arrays = [f for f in files if f != "stimuli"]
        if var is not None:
            if var not in files:
                raise ValueError(f"{path}: no array {var!r} (arrays: {', '.join(files)})")
            key = var
        elif len(arrays) == 1:
            key = arrays[0]
        elif "rdms" in files:
            key = "rdms"
        else:
            raise ValueError(f"{path}: several arrays ({', '.join(files)}); name one as {path}:NAME")
        return z[key], stimuli, key


def _loadmat(path: Path) -> Dict[str, Any]:
    try:
        import scipy.io  # optional dependency: only .mat files need it
    except ImportError:
        raise ImportError(f"{path}: reading .mat files needs scipy: pip install scipy "
                          "(or pip install 'fastalign[io]')") from None
    raw = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=True)
    return {k: v for k, v in raw.items() if not k.startswith("__")}


def _struct_rdms(value: np.ndarray, where: str) -> Tuple[List[np.ndarray], List[str]]:
    """A struct array with one RDM per element: its ``RDM`` field (any case) or its only numeric field."""
    fields = list(value.dtype.names)
    elems = value.reshape(-1)
    by_lower = {f.lower(): f for f in fields}
    field = by_lower.get("rdm")
    if field is None:
        numeric = [f for f in fields if np.asarray(elems[0][f]).dtype.kind in "biuf" and np.asarray(elems[0][f]).size > 1]
        if len(numeric) != 1:
            raise ValueError(f"{where}: a struct array of RDMs needs a field 'RDM' (fields: {', '.join(fields)})")
        field = numeric[0]
    name_field = by_lower.get("name")
    names = [(_names(e[name_field])[0] if name_field and np.asarray(e[name_field]).size else f"subject_{i}")
             for i, e in enumerate(elems)]
    return [np.asarray(e[field]) for e in elems], names


def _mat_variable(value: Any, var: str, where: str) -> Tuple[np.ndarray, List[str]]:
    """One .mat variable as an (S, N, N) stack and subject names."""
    value = np.asarray(value)
    if value.dtype.names:
        parts, names = _struct_rdms(value, where)
    elif value.dtype.kind == "O":
        parts = [np.asarray(c) for c in value.reshape(-1)]
        names = [f"{var}_{i}" for i in range(len(parts))]
    else:
        stack = _stack(value, where, matlab=True)
        return stack, ([var] if stack.shape[0] == 1 else [f"{var}_{i}" for i in range(stack.shape[0])])
    stacks = [_stack(p, f"{where} element {i}", matlab=True) for i, p in enumerate(parts)]
    if len({s.shape[1:] for s in stacks}) != 1:
        raise ValueError(f"{where}: the per-subject RDMs differ in size: {sorted({s.shape[1] for s in stacks})}")
    return np.concatenate(stacks), names


def _meadows(data: Dict[str, Any], where: str) -> Tuple[np.ndarray, List[str], Optional[List[str]]]:
    """A Meadows export: one upper-triangle vector (and stimulus list) per participant."""
    keys = [k for k in data if _MEADOWS.match(k)]
    people = [_MEADOWS.match(k).group(1) for k in keys]
    mats = [vector_to_rdm(data[k], f"{where} {k}") for k in keys]
    stims = [(_names(data[f"stimuli_{p}"]) if f"stimuli_{p}" in data else None) for p in people]
    if any(s is None for s in stims) or len(stims) == 1:
        return np.stack(mats), people, stims[0]
    ref = stims[0]
    for i, s in enumerate(stims[1:], 1):
        if sorted(s) != sorted(ref):
            raise ValueError(f"{where}: participants {people[0]!r} and {people[i]!r} rated different stimuli")
        if s != ref:  # same stimuli in another order: bring them into the first participant's order
            pos = {name: j for j, name in enumerate(s)}
            order = np.asarray([pos[name] for name in ref])
            mats[i] = mats[i][np.ix_(order, order)]
    return np.stack(mats), people, ref


def _read_mat(path: Path, var: Optional[str], where: str) -> Tuple[np.ndarray, List[str], Optional[List[str]]]:
    data = _loadmat(path)
    if var is not None:
        if var not in data:
            raise ValueError(f"{path}: no variable {var!r} (variables: {', '.join(data) or 'none'})")
        match = _MEADOWS.match(var)
        stim_key = f"stimuli_{match.group(1)}" if match else None
        stack, names = _mat_variable(data[var], var, where)
        if match:
            names = [match.group(1)]
        return stack, names, (_names(data[stim_key]) if stim_key in data else None)
    if any(_MEADOWS.match(k) for k in data):
        return _meadows(data, where)
    if len(data) != 1:
        raise ValueError(f"{path}: several variables ({', '.join(data)}); name one as {path}:VAR")
    (key, value), = data.items()
    stack, names = _mat_variable(value, key, where)
    return stack, names, None


def read_human_rdm(spec: str, allow_nan: bool = False) -> HumanRDMs:
    """Read and check measured RDMs (formats and checks in the module docstring).

    Args:
        spec: ``FILE`` or ``FILE:VAR``.
        allow_nan: accept NaN pairs (they are then left out of every comparison).
    """
    path, var = split_rdm_spec(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: human RDM file not found")
    suffix = path.suffix.lower()
    if suffix == ".mat":
        stack, subjects, stimuli = _read_mat(path, var, str(spec))
    elif suffix in (".npy", ".npz"):
        raw, stimuli, key = (_read_npy if suffix == ".npy" else _read_npz)(path, var)
        stack = _stack(raw, str(spec))
        base = key or "subject"
        subjects = [base] if stack.shape[0] == 1 and key else [f"{base}_{i}" for i in range(stack.shape[0])]
    else:
        raise ValueError(f"{path}: unknown human RDM format {suffix!r}; use one of {', '.join(RDM_FORMATS)}")
    if stimuli is not None and len(stimuli) != stack.shape[1]:
        raise ValueError(f"{spec}: {len(stimuli)} stimulus names for an RDM over {stack.shape[1]} stimuli")
    return HumanRDMs(_check(stack, subjects, str(spec), allow_nan), list(subjects), stimuli, str(spec))


def _stem(name: str) -> str:
    return Path(name.replace("\\", "/")).name.split(".")[0]


def _match_names(names: Sequence[str], file_names: Sequence[str], where: str) -> np.ndarray:
    exact: Dict[str, int] = {n: i for i, n in enumerate(file_names)}
    stems: Dict[str, int] = {}
    for i, n in enumerate(file_names):
        stems.setdefault(_stem(n), i)
    rows, missing = [], []
    for name in names:
        row = exact.get(name, stems.get(_stem(name)))
        if row is None:
            missing.append(name)
        rows.append(-1 if row is None else row)
    if missing:
        raise ValueError(f"{where}: {len(missing)} of {len(names)} names are not in --file-names "
                         f"(matched by name, then by file stem), e.g. {', '.join(missing[:3])}")
    return np.asarray(rows, dtype=np.int64)


def read_rdm_items(path: str, n_rows: int, n_features: int,
                   file_names: Optional[Sequence[str]] = None) -> np.ndarray:
    """Which feature row each RDM row is: (n_rows,) int64 indices into the features.

    Args:
        path: text file, one entry per RDM row (blank lines skipped): all integers
            (0-based feature rows) or all names (matched against ``file_names`` by
            exact name, then by file stem).
        n_rows: number of RDM rows (stimuli).
        n_features: number of feature rows; an index outside ``[0, n_features)`` is refused.
        file_names: feature rows' names, needed for names.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: --rdm-items file not found")
    entries = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(entries) != n_rows:
        raise ValueError(f"{p}: --rdm-items lists {len(entries)} entries but the RDM has {n_rows} rows")
    if all(re.fullmatch(r"-?\d+", e) for e in entries):
        rows = np.asarray([int(e) for e in entries], dtype=np.int64)
        bad = np.flatnonzero((rows < 0) | (rows >= n_features))
        if bad.size:
            raise ValueError(f"{p}: --rdm-items line {int(bad[0]) + 1}: index {int(rows[bad[0]])} is out of range "
                             f"[0, {n_features}) of the features")
    else:
        if file_names is None:
            raise ValueError(f"{p}: --rdm-items holds names; give --file-names to match them to feature rows")
        rows = _match_names(entries, file_names, str(p))
    values, counts = np.unique(rows, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{p}: --rdm-items maps several RDM rows to feature row {int(values[counts > 1][0])}")
    return rows
