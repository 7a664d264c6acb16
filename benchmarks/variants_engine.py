"""Named switches of jcaffe's engine rules, for ``benchmarks/ab_step.py --variants``:

    python benchmarks/ab_step.py --net resnet50 --variants benchmarks/variants_engine.py \\
        default update_at_end --rounds 4

Each name turns one documented rule off (or one option on) before the variant's solver
or net is built; "default" changes nothing. Made for the next session with a lent GPU,
where the CPU's rules were chosen without measurements (benchmarks/NOTES.md,
thirty-first session), but they run anywhere.
"""


def _update_at_end():
    from jcaffe.solver import Solver
    Solver.update_in_backward = False


def _unordered():
    from jcaffe.engine import Segment
    Segment.ordered_backward = False


def _caffe_order():
    from jcaffe.engine import Segment
    Segment.channels_last = False


def _no_row_blocks():
    from jcaffe.solver import Solver
    Solver.row_blocks_min_bytes = None


def _no_materialize():
    from jcaffe import engine
    engine.materialize = lambda x: x


def _no_recycle():
    from jcaffe.solver import Solver
    Solver.recycle_buffers = False


def _wait_all():
    from jcaffe.engine import Segment
    Segment.update_min_bytes = 0


def _pack():
    from jcaffe.solver import Solver
    Solver.history_pack_max_bytes = 1 << 20


def _rows_same_padded():
    from jcaffe.layers.vision import Convolution
    Convolution.SAME_XLA_MIN_CHANNELS = 1 << 62


def _no_shifted():
    from jcaffe.layers.vision import Convolution
    Convolution.SHIFTED_MIN_TAPS = 1 << 62


def _prelu_caffe_order():
    from jcaffe.layers.neuron_extra import PReLU
    PReLU.channels_last_ok = lambda self: False


def _one_image_gemm():
    from jcaffe.layers.vision import Convolution
    Convolution.ONE_IMAGE_XLA_MIN_COLUMN = 1 << 62


def _no_kernel_layout():
    from jcaffe.layers.vision import Convolution
    Convolution.kernel_layout = lambda self: None


def _float32():
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")


VARIANTS = {
    "default": lambda: None,
    "update_at_end": _update_at_end,      # every param updated after the whole backward
    "unordered": _unordered,              # XLA's own order for the backward
    "caffe_order": _caffe_order,          # no channels-last runs (CPU only anyway)
    "no_row_blocks": _no_row_blocks,      # big weight diffs whole (CPU only anyway)
    "no_materialize": _no_materialize,    # no stored Split bottoms (CPU only anyway)
    "no_recycle": _no_recycle,            # no blob buffers donated: fewer arguments, more memory
    "wait_all": _wait_all,                # every update after its layers' data gradients:
                                          # no copies of the params under 1 MB
    "pack": _pack,                        # small params' history in one array
    "float32": _float32,                  # full float32 products (not TF32 on a GPU)
    "rows_same_padded": _rows_same_padded,  # same-padded stride-1 data gradients by
                                            # kernel rows again, as before the
                                            # fifty-sixth session (CPU only anyway)
    "no_shifted": _no_shifted,            # one image's 5x5/7x7 weight gradients by rows
                                          # again, as before the fifty-ninth session
    "prelu_caffe_order": _prelu_caffe_order,  # PReLU in Caffe's order only, as before
                                              # the sixtieth session
    "one_image_gemm": _one_image_gemm,    # one image's short-column stride-1 forwards
                                          # on GEMM again, as before the sixtieth session
    "no_kernel_layout": _no_kernel_layout,  # deploy forwards lay each weight out for
                                            # XLA's kernel in every call again
}


def apply(name):
    if name not in VARIANTS:
        raise SystemExit("variants_engine: no variant %r; the variants are: %s"
                         % (name, ", ".join(VARIANTS)))
    VARIANTS[name]()
