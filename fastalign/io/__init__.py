"""File I/O: atomic writes, features, triplets, figures, the one resolver of ``things:KEY`` or a file
(``fastalign.io.resolve``), the readers of untrusted files (``fastalign.io.untrusted``) and named fault
points for crash tests (``fastalign.io.faults``). Teacher transforms on disk live with the teacher
(``fastalign.teacher``)."""

from .atomic import (
                     atomic_save_npy,
                     atomic_save_npz,
                     atomic_write,
                     atomic_write_bytes,
                     atomic_write_json,
                     atomic_write_text,
                     fsync_dir,
)
from .features import FEATURE_FORMATS, check_features, load_features, order_rows, read_file_names
from .resolve import (
                     feature_path,
                     is_bundled,
                     resolve_categories,
                     resolve_features,
                     resolve_file_names,
                     resolve_labels,
                     resolve_triplet_table,
                     resolve_triplets,
                     split_spec,
)
from .triplets import (
                     TRIPLET_FORMATS,
                     TripletTable,
                     check_triplets_fit,
                     load_triplets,
                     save_triplets,
                     save_triplets_txt,
)
from .untrusted import (
                     RefusedFileError,
                     UnreadableFileError,
                     load_npy,
                     load_npz,
                     read_safetensors,
                     torch_load,
)

__all__ = [
    "FEATURE_FORMATS",
    "RefusedFileError",
    "UnreadableFileError",
    "TRIPLET_FORMATS",
    "TripletTable",
    "atomic_save_npy",
    "atomic_save_npz",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_features",
    "fsync_dir",
    "check_triplets_fit",
    "feature_path",
    "is_bundled",
    "resolve_categories",
    "resolve_features",
    "resolve_file_names",
    "resolve_labels",
    "resolve_triplet_table",
    "resolve_triplets",
    "split_spec",
    "load_features",
    "load_npy",
    "load_npz",
    "load_triplets",
    "order_rows",
    "read_safetensors",
    "read_file_names",
    "save_triplets",
    "save_triplets_txt",
    "torch_load",
]
