"""Evaluation: odd-one-out accuracy, levels, human uncertainty, calibration, RSA, CKA, few-shot probes,
RSA against measured human RDMs with noise ceilings, and the Levels dataset.

Everything is torch and runs on the device of its inputs; triplet work goes
through the fused ops (``fastalign.odd_one_out_accuracy``,
``triplet_similarities``, ``odd_one_out_probs``). ``evaluate_representation``
runs them all and returns a JSON-serialisable dict.
"""

from .calibration import (
    DEFAULT_BINS,
    Reliability,
    calibration_metrics,
    expected_calibration_error,
    fit_temperature,
    mean_entropy,
    nll,
    plot_reliability,
    reliability,
    triplet_calibration,
)
from .cka import linear_cka
from .correlation import Ranked, count_inversions, kendall_tau_a, pearson, rank_vector, rankdata, spearman
from .few_shot import FewShotOptions, few_shot_accuracy, few_shot_probes, fit_logreg, single_category_labels
from .human_plots import plot_human_rdms, plot_levels_dataset
from .human_rdm import HUMAN_RDM_MEASURES, compare_to_subjects, human_rdm_report, noise_ceiling, pool_rdms
from .levels import LEVELS, accuracy_by_level, encode_levels, load_level_labels, triplet_levels
from .levels_data import LEVELS_DATASET_NAME, LevelsOptions, levels_report
from .odd_one_out import CHANCE, DEFAULT_CEILING, noise_ceiling_normalized, triplet_accuracy
from .plots import category_order, plot_accuracy_by_level, plot_rdm_panel
from .report import EvalOptions, evaluate_representation, evaluate_representations, format_table
from .rsa import METRICS, RDMReference, compare_rdms, rdm, rdm_reference, rdm_upper, rsa, upper_triangle
from .uncertainty import RepeatedTriplets, aggregate_triplets, human_uncertainty

__all__ = [
    "CHANCE",
    "DEFAULT_BINS",
    "DEFAULT_CEILING",
    "EvalOptions",
    "FewShotOptions",
    "HUMAN_RDM_MEASURES",
    "LEVELS",
    "LEVELS_DATASET_NAME",
    "LevelsOptions",
    "METRICS",
    "RDMReference",
    "Ranked",
    "Reliability",
    "RepeatedTriplets",
    "accuracy_by_level",
    "aggregate_triplets",
    "calibration_metrics",
    "category_order",
    "compare_rdms",
    "compare_to_subjects",
    "count_inversions",
    "encode_levels",
    "evaluate_representation",
    "evaluate_representations",
    "expected_calibration_error",
    "few_shot_accuracy",
    "few_shot_probes",
    "fit_logreg",
    "fit_temperature",
    "format_table",
    "human_rdm_report",
    "human_uncertainty",
    "kendall_tau_a",
    "levels_report",
    "linear_cka",
    "load_level_labels",
    "mean_entropy",
    "nll",
    "noise_ceiling",
    "noise_ceiling_normalized",
    "pearson",
    "plot_accuracy_by_level",
    "plot_human_rdms",
    "plot_levels_dataset",
    "plot_rdm_panel",
    "plot_reliability",
    "pool_rdms",
    "rank_vector",
    "rankdata",
    "rdm",
    "rdm_reference",
    "rdm_upper",
    "reliability",
    "rsa",
    "single_category_labels",
    "spearman",
    "triplet_accuracy",
    "triplet_calibration",
    "triplet_levels",
    "upper_triangle",
]
