"""The values the CLI flags accept, copied from tf_ffjord so that parsing and `--help` import no TensorFlow (tests/training/test_run_folders.py checks each copy)."""

__all__ = ["SOLVERS", "GRADIENTS", "TRACES", "NOISES", "ACTIVATIONS",
           "LAYER_TYPES", "TOY_NAMES", "TABULAR_NAMES", "TABULAR_DIMS",
           "IMAGE_DATASETS", "NETS", "POSTERIORS", "ORIGINALS"]

# tf_ffjord.solvers: ADAPTIVE_SOLVERS + FIXED_SOLVERS
SOLVERS = ("dopri5", "tsit5", "bosh3", "bdf", "rk4", "midpoint", "euler")
GRADIENTS = ("auto", "adjoint", "interpolated", "backprop")
TRACES = ("hutchinson", "exact")
NOISES = ("rademacher", "gaussian")
ACTIVATIONS = ("tanh", "softplus", "elu", "swish", "relu")
LAYER_TYPES = ("concatsquash", "concat", "ignore", "squash", "blend")
TOY_NAMES = ("8gaussians", "checkerboard", "2spirals", "pinwheel", "rings",
             "moons", "circles", "swissroll")
TABULAR_NAMES = ("power", "gas", "hepmass", "miniboone", "bsds300")
TABULAR_DIMS = {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43,
                "bsds300": 63}
IMAGE_DATASETS = ("mnist", "fashion-mnist", "cifar10")
NETS = ("conv", "unet")
POSTERIORS = ("none", "maf", "ffjord")

# Where each copy comes from: name -> (module, expression over it).
ORIGINALS = {
    "SOLVERS": ("tf_ffjord.solvers", "ADAPTIVE_SOLVERS + FIXED_SOLVERS"),
    "GRADIENTS": ("tf_ffjord.solvers", "GRADIENTS"),
    "TRACES": ("tf_ffjord.cnf.trace_estimators", "TRACES"),
    "NOISES": ("tf_ffjord.cnf.trace_estimators", "NOISES"),
    "ACTIVATIONS": ("tf_ffjord.nets.dense", "ACTIVATIONS"),
    "LAYER_TYPES": ("tf_ffjord.nets.dense", "tuple(LAYER_TYPES)"),
    "TOY_NAMES": ("tf_ffjord.datasets.toy", "NAMES"),
    "TABULAR_NAMES": ("tf_ffjord.datasets.tabular", "NAMES"),
    "TABULAR_DIMS": ("tf_ffjord.datasets.tabular", "DIMS"),
    "IMAGE_DATASETS": ("tf_ffjord.datasets.images", "DATASETS"),
    "NETS": ("tf_ffjord.model.builders", "NETS"),
    "POSTERIORS": ("tf_ffjord.model.vae", "POSTERIORS"),
}
