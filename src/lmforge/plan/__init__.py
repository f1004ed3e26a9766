"""Capacity planning before a run: parameters, FLOPs and time for a budget, memory per device
under DDP and FSDP (checked against lmforge's own saved tensors and a measured peak),
communication per step, inference limits and the compute-optimal size. ``predict_peak`` and
``peak_flops`` are what the trainer's report compares its measurements with."""

from lmforge.plan.activations import Activations, Precision, activation_bytes, precision_for
from lmforge.plan.estimate import (
    Communication,
    ComputeOptimal,
    Inference,
    Plan,
    Training,
    make_plan,
)
from lmforge.plan.hardware import (
    CHOICES,
    GPUS,
    Hardware,
    hardware,
    hardware_for,
    measure_cpu,
    peak_flops,
)
from lmforge.plan.inputs import plan_from
from lmforge.plan.memory import HEADROOM, Prediction, largest_micro_batch, predict, predict_peak
from lmforge.plan.params import (
    METHODS,
    Method,
    ParamCount,
    count_parameters,
    training_flops_per_token,
)
from lmforge.plan.render import as_json, render

__all__ = ["CHOICES", "GPUS", "HEADROOM", "METHODS", "Activations", "Communication",
           "ComputeOptimal", "Hardware", "Inference", "Method", "ParamCount", "Plan",
           "Precision", "Prediction", "Training", "activation_bytes", "as_json",
           "count_parameters", "hardware", "hardware_for", "largest_micro_batch", "make_plan",
           "measure_cpu", "peak_flops", "plan_from", "precision_for", "predict", "predict_peak",
           "render", "training_flops_per_token"]
