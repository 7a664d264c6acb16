"""Convolution's formulation choices on the CPU: which of XLA's convolution, im2col +
GEMM (conv_gemm) and its by-rows and shifted forms, the depthwise loops
(conv_depthwise) and blocks of groups (conv_blocks) each map takes, forward, data
gradient and weight gradient, by backend and shape.

Each threshold sits beside the measurements that set it (alone with
benchmarks/bench_conv.py, whole steps with benchmarks/ab_step.py); the switches in
benchmarks/variants_engine.py turn them off one at a time. ``CpuRules`` is a mixin of
Convolution (jcaffe.layers.vision), whose computations ask it; the thresholds are class
attributes, read and patched as ``Convolution.NAME``.
"""
import jax
import numpy as np

from .. import xla_options
from . import conv_blocks, conv_depthwise, conv_gemm


def _macs(batch, weight_shape, out_spatial):
    """Multiply-adds of one convolution map: batch * output positions * weight count."""
    return batch * int(np.prod(out_spatial)) * int(np.prod(weight_shape))


class CpuRules:
    """The choices, as methods of a Convolution (they read its geometry: kernel,
    stride, pad, dilation, group, channels, num_output, in_spatial, out_spatial)."""

    # XLA's CPU backend runs a grouped convolution (feature_group_count /
    # batch_group_count > 1) far off its fast path: CaffeNet's group-2 conv2 took
    # ~5x longer forward and ~7x longer for the weight gradient than the same work
    # as two ungrouped convolutions (benchmarks/bench_conv.py). So on CPU each group
    # is its own convolution on a channel slice, the results concatenated; elsewhere
    # (cuDNN & co. have native grouped kernels) the grouped call is kept.
    def _split_groups(self):
        return self.group > 1 and jax.default_backend() == "cpu"

    # Narrow groups (ResNeXt's 4 or 8 channels, DPN's 3 to 12) are split into blocks of
    # groups, each one dense convolution with zeros between its groups (conv_blocks), at
    # most SPLIT_BLOCK_CHANNELS channels wide. Forward, 3x3, 32 groups, batch 16 (ms,
    # 2026-12-02, by groups per block 1/2/4/8): 4 channels at 56x56 75/35/28/33,
    # 8 at 28x28 17/11/13/20, 16 at 14x14 7.8/8.1/12/19; data gradients alike (4 at
    # 56x56: 62 -> 21); weight gradients tie up to 16 channels (34 and 13 ms) and
    # lose beyond. In whole nets (benchmarks/ab_step.py --interleave, 2026-12-06, 24
    # wide / 16): DPN-92's blocks of 3, 6 and 12 channels as 24-wide blocks, not 12, step
    # 0.980 (0.949-1.011), deploy forward 0.942 (0.921-0.964), and a quarter fewer
    # convolutions to compile (first step 57 against 75 s). With a limit of 32, ResNeXt-50's
    # 4- and 8-channel groups went in 32-wide blocks: its forward took 1.035
    # (1.016-1.053), its step 1.007 (0.986-1.029). So 24, which leaves ResNeXt's blocks as
    # they were.
    SPLIT_BLOCK_CHANNELS = 24

    def _groups_per_block(self):
        return conv_blocks.groups_per_block(self.group, self.channels // self.group,
                                            self.num_output // self.group,
                                            self.SPLIT_BLOCK_CHANNELS)

    def _pieces(self, w):
        """The split's piece count and ``w`` (O, C/group, k...) as blocks of groups."""
        blocks = self._groups_per_block()
        return self.group // blocks, conv_blocks.block_diagonal(w, self.group, blocks)

    # A 3-d map on CPU runs as a 2-d one with its depth taps folded into the channels
    # (conv_depth), through the 2-d rules here: XLA's CPU convolution of three spatial
    # axes ran far below its 2-d speed. bench_conv3d.py's step (batch 2, a 32x64x64
    # volume, 3x3x3 maps of 16-64 channels, 2x2x2 ones of stride 2 down and up; ms,
    # 2026-12-07, AMD EPYC VM): folded 581, XLA's 3-d maps 2016, pure JAX 3278,
    # PyTorch 286; peak RSS 775 MB folded against 575 (the fold copies each input kd
    # times). One 3x3x3 map alone, 32 -> 32 channels on that volume, pure XLA, forward
    # / with its gradients: 3-d 447 / 1483, folded 316 / 918.
    FOLD_DEPTH = True

    def _folds_depth(self, channels_per_group):
        """Whether this map's three computations fold its depth into the channels
        (conv_depth): on CPU, 3 spatial axes, FOLD_DEPTH, not depthwise (conv_depthwise
        computes any number of spatial axes)."""
        return (self.FOLD_DEPTH and self.num_spatial == 3 and jax.default_backend() == "cpu"
                and not self._depthwise(channels_per_group))

    # A depthwise convolution (one input channel per group, MobileNet's) on CPU is
    # neither: one fused loop of shifted slices per map (conv_depthwise).
    def _depthwise(self, channels_per_group):
        return (self.group > 1 and channels_per_group == 1 and jax.default_backend() == "cpu"
                and int(np.prod(self.kernel)) <= conv_depthwise.MAX_TAPS)

    # On CPU, im2col + GEMM (conv_gemm) beat XLA's convolution, per map and shape
    # (benchmarks/bench_conv.py and the shapes of LeNet, CaffeNet and GoogLeNet):
    # * weight gradient: 1x1 maps (one dot, no columns). Larger kernels: GEMM beat
    #   YNNPACK's convolution on every shape measured (1.3-4.7x), but XLA's own
    #   convolution, where jcaffe's compiles use it (xla_options), tied or won inside
    #   whole steps (interleaved A/Bs, 2026-12-02: GoogLeNet 0.89x twice, CaffeNet 0.98x,
    #   ResNet-50 0.98x and 1.05x, LeNet 1.02x; again with benchmarks/ab_step.py, one
    #   process per variant: GoogLeNet's step with GEMM 1.13x and 0.95x by round,
    #   1.05x over 12 steps), so those go to XLA;
    # * data gradient at stride 1: GEMM beat YNNPACK's convolution on all but one shape
    #   (LeNet's conv1 3x, CaffeNet's grouped conv2/4/5 1.2-1.3x), so it is taken from
    #   GEMM_MIN_MACS_DATA where the compiles leave convolutions to YNNPACK. Against
    #   XLA's own convolution GEMM lost alone on 12 of 13 shapes (CaffeNet's conv2-5:
    #   71/34/29/25 vs 49/28/22/15 ms) and in whole steps (benchmarks/ab_step.py, 4
    #   rounds of 6 steps, 2026-12-02, XLA / GEMM: CaffeNet 0.927, every round
    #   0.92-0.96; GoogLeNet 0.998; ResNet-50 1.004), so there only the kernel-rows form
    #   below takes GEMM;
    # * strided data gradient, from GEMM_MIN_MACS: XLA has no fast strided form left
    #   (_phase_data_diff: CaffeNet's conv1, batch 32, 3728 ms vs 105 ms on GEMM +
    #   col2im; 3x3 stride 2 on 64 channels 89 vs 31 ms);
    # * forward: short columns (C/group * prod(kernel) <= 512: CaffeNet's conv1 2.5x,
    #   LeNet's conv2 2x, against YNNPACK) and 1x1 kernels; long-column 3x3/5x5 forwards
    #   stay on XLA's convolution, which won or tied there. Against XLA's own
    #   convolution, a strided forward with columns of XLA_MIN_STRIDED_COLUMN or more
    #   goes to XLA: alone (Intel Xeon, AVX-512, 2026-12-02, XLA / GEMM) 11x11 stride 4
    #   on 3 channels 0.47-0.78, 11x11 stride 2 0.79, 3x3 stride 2 on 32 channels 0.64;
    #   whole (ab_step, 4 rounds, twice) CaffeNet's conv1: steps 0.972 and 0.986,
    #   deploy forwards 0.919 and 0.912. Shorter strided columns were mixed alone (7x7
    #   stride 2-4 on 3 channels 0.61-1.21, 5x5 0.96-1.29) and lost whole on XLA
    #   (GoogLeNet's and ResNet-50's 7x7 stride 2 conv1: steps 1.067 and 1.079, forwards
    #   1.048 and 1.019), and stride 1 lost too (LeNet's conv2: step 1.080), so they keep
    #   GEMM. (Eigen's convolution contracts a whole patch, C/group * prod(kernel) long,
    #   per product: the longer, the nearer its matmul speed.) A grouped forward goes to
    #   XLA's convolutions, split into blocks of groups (conv_blocks), where those are
    #   jcaffe's: on ResNeXt's 3x3 shapes (32 groups of 4-16 channels, batch 16, ms,
    #   2026-12-02) GEMM / blocks 51/20, 26/13, 13/8 at stride 1, 48/30 at stride 2.
    # Below GEMM_MIN_MACS multiply-adds a map keeps XLA's convolution: one op compiles
    # in a fraction of the time of the columns' slices and loop (tests and gradcheck
    # build thousands of small convolutions). Data gradients at stride 1 need
    # GEMM_MIN_MACS_DATA (and YNNPACK's convolutions), or conv_gemm's kernel-rows form
    # (one kernel row's products for the whole batch fit in conv_gemm.ROW_BYTES). By
    # columns, LeNet's conv2 (102M multiply-adds) lost inside the step: XLA fused
    # col2im's sum into each of its consumers (pool1's backward read it four times), 62
    # vs 19 ms a step; by rows the sum is accumulated in place, and the step (batch 64,
    # interleaved A/B, 2026-12-01) takes 0.79x the time it took with XLA's convolution
    # there (again with benchmarks/ab_step.py, 2026-12-02: XLA's convolution 1.17x over
    # 4 rounds).
    GEMM_MAX_COLUMN = 512
    XLA_MIN_STRIDED_COLUMN = 256
    # A batch's short-column forward at stride 1 keeps GEMM only below
    # XLA_MIN_STRIDE1_MACS multiply-adds; from there XLA's own convolution won inside
    # whole nets (benchmarks/ab_step.py --interleave, 2 rounds of 20-30 steps,
    # 2026-12-06, AMD EPYC Zen 1 VM, XLA / GEMM): CIFAR-10's conv1 (3 -> 32 channels,
    # 5x5 pad 2 on 32x32, batch 100, 246M multiply-adds) step 0.856 (interval
    # 0.831-0.882), deploy forward 0.648; LeNet's conv2 (102M at batch 64) step 1.10
    # (1.07-1.13), at batch 256 (410M) 0.961 (0.925-0.998); LeNet's conv1 (18M at
    # batch 64) 1.10, at batch 256 (74M) 1.004. On CIFAR's conv1 the GEMM product
    # written channels-last (TOP_LAST_MAX_COLUMN) took 23 ms alone against 10.5 for
    # XLA's convolution, and in Caffe's order the step still took 1.15x XLA's. One
    # image (the batch-1 rule above: FCN's conv1_1) keeps GEMM.
    XLA_MIN_STRIDE1_MACS = 1 << 27
    GEMM_MIN_MACS = 1 << 24
    GEMM_MIN_MACS_DATA = 1 << 28

    def _large_stride1_batch(self, batch, macs):
        """A map of more than one image at stride 1 from XLA_MIN_STRIDE1_MACS (above)."""
        return (all(s == 1 for s in self.stride) and batch != 1
                and macs >= self.XLA_MIN_STRIDE1_MACS)

    def geometry(self):
        return conv_gemm.Geometry(*(tuple(int(v) for v in a) for a in (
            self.kernel, self.stride, self.pad, self.dilation, self.in_spatial,
            self.out_spatial)))

    # A strided kernel with more than conv_gemm.COL2IM_MAX_OFFSETS offsets (FCN's 64x64
    # stride-32 upsampling) has its data gradient from GEMM at any size: col2im sums it
    # by whole taps, where _phase_data_diff would compile one convolution per phase
    # (1024 there).
    def _many_phases(self):
        return any(s > 1 for s in self.stride) and conv_gemm.by_taps(self.geometry())

    # One image at a time (FCN trains with batch 1; single-image deploy), XLA's own
    # convolution lost to GEMM on small maps (FCN's fc6, 7x7 512 -> 4096 on 22x22: forward
    # 471 vs 155 ms, weight gradient 494 vs 245, data gradient 836 vs 181 by columns;
    # 2026-12-02/03). On CaffeNet's, GoogLeNet's and ResNet-50's 3x3/5x5 shapes at batch 1
    # GEMM's weight gradient took 0.45-0.75x the time, its forward 0.45-0.75x up to 28x28
    # outputs, its data gradient by columns 0.66-0.86x (7 shapes, 7x7 to 28x28). On larger
    # maps XLA's convolution won, except for the weight gradient of short columns
    # (FCN's conv1_1, 3 channels at 698x698: 72 vs 1268 ms; its conv1_2, 64 channels:
    # GEMM 756 vs 310, conv2_2 351 vs 233, conv3_2 208 vs 187, conv4_2 160 vs 142; forwards
    # 1.05-3.7x). So at batch 1 every map of at most BATCH1_GEMM_MAX_POSITIONS outputs,
    # and weight gradients of columns up to GEMM_MAX_COLUMN, take GEMM.
    BATCH1_GEMM_MAX_POSITIONS = 28 * 28

    # The kernel-rows data gradient (conv_gemm.by_rows) was measured against XLA's own
    # convolution on LeNet's conv2 and GoogLeNet's small maps. Where the forward is
    # "same"-padded (pad = dilation * (k - 1) / 2) XLA's data gradient is a same-padded
    # convolution too, not the full-padded one of a pad-0 forward, and from
    # SAME_XLA_MIN_CHANNELS input channels it ties or wins. Alone (ms, rows / XLA, batch
    # 64, 5x5 on 8x8 out, 2026-12-07, AMD EPYC VM with AVX-512): 32 -> 64 channels, pad 2
    # 3.1-4.4 / 2.9, pad 0 3.3-3.6 / 5.3; 20 -> 50, pad 2 2.9 / 2.7, pad 0 1.8 / 5.2;
    # 16 -> 64 pad 2 1.8-2.0 / 3.5. CIFAR-10's conv3 (32 -> 64 at 8x8, batch 100) 5.2-6.9
    # / 4.2-4.4; GoogLeNet's inception_4e 5x5, 5a and 5b 3x3 8.8-12.8 / 7.6-10.8.
    # Whole steps (benchmarks/ab_step.py --interleave, XLA / rows): CIFAR-10 quick 0.973
    # (interval 0.961-0.986, 3 rounds of 30), CIFAR-10 full 0.964 (0.930-0.999);
    # Inception-v3 1.004 (0.968-1.042), SqueezeNet 0.980 (0.919-1.045), DenseNet-121
    # 1.058 (0.955-1.172; its 16 such maps take 0.5-0.7 ms each), GoogLeNet with every
    # stride-1 data gradient on XLA 1.006 (0.958-1.056): no difference measured there.
    SAME_XLA_MIN_CHANNELS = 32

    def _same_wide(self, channels_per_group):
        """Same-padded, at least SAME_XLA_MIN_CHANNELS input channels a group (above)."""
        return (channels_per_group >= self.SAME_XLA_MIN_CHANNELS
                and all(2 * p == d * (k - 1) for p, k, d in
                        zip(self.pad, self.kernel, self.dilation)))

    def _gemm(self, which, channels_per_group, macs, by_rows=False, batch=None):
        """Whether ``which`` ("forward", "data", "weight") runs as im2col + GEMM;
        ``macs``: the map's multiply-adds (batch * outputs * C/group * prod(kernel));
        ``by_rows``: the data gradient would take conv_gemm's kernel-rows form;
        ``batch``: the images in the map."""
        if jax.default_backend() != "cpu":
            return False
        if which == "data" and self._many_phases():
            return True
        if macs < self.GEMM_MIN_MACS:
            return False
        if conv_gemm.pointwise(self.geometry()):
            return True     # (1x1 without padding: one dot, no columns; see conv_gemm)
        own, strided = xla_options.own_convolutions(), any(s > 1 for s in self.stride)
        k = int(np.prod(self.kernel))
        column = channels_per_group * k
        if batch == 1 and (int(np.prod(self.out_spatial)) <= self.BATCH1_GEMM_MAX_POSITIONS
                           or (which == "weight" and column <= self.GEMM_MAX_COLUMN)):
            return True
        if which == "weight":
            return not own
        if which == "data":
            rows = by_rows and not (own and self._same_wide(channels_per_group))
            return rows or strided or (macs >= self.GEMM_MIN_MACS_DATA and not own)
        if k == 1:
            return True
        if own and self.group > 1:
            return False
        if strided and own and column >= self.XLA_MIN_STRIDED_COLUMN:
            return False
        if own and self._large_stride1_batch(batch, macs):
            return False
        if own and self._one_image_wide_column(batch, column):
            return False
        return column <= self.GEMM_MAX_COLUMN

    # One image's forward at stride 1 on a map of more than BATCH1_GEMM_MAX_POSITIONS
    # outputs, columns of ONE_IMAGE_XLA_MIN_COLUMN or more (still short enough for
    # GEMM_MAX_COLUMN), runs on XLA's convolution: GEMM's product is then a tall, thin
    # matrix (positions x O), and these maps have few outputs. MTCNN's P-Net on a
    # 384x512 image, alone, one jit each (ms, GEMM / XLA, 2026-12-07, AMD EPYC VM):
    # conv2 (10 -> 16) 3.4 / 2.5, conv3 (16 -> 32) 8.4 / 3.5; at 189x253, 16 -> 16 6.1 /
    # 2.5, 32 -> 32 34.6 / 6.2, 32 -> 64 42.2 / 13.0; at 95x127, 16 -> 32 2.2 / 1.5.
    # Three channels tie (27 columns: P-Net's conv1 5.6 / 4.9, 3 -> 64 58 / 56, FCN's
    # conv1_1 185 / 173), and there GEMM writes its top channels-last for the next map
    # (_gemm_top_last), so they keep it.
    ONE_IMAGE_XLA_MIN_COLUMN = 64

    def _one_image_wide_column(self, batch, column):
        """One image at stride 1, more than BATCH1_GEMM_MAX_POSITIONS outputs, columns
        from ONE_IMAGE_XLA_MIN_COLUMN (above)."""
        return (batch == 1 and all(s == 1 for s in self.stride)
                and int(np.prod(self.out_spatial)) > self.BATCH1_GEMM_MAX_POSITIONS
                and column >= self.ONE_IMAGE_XLA_MIN_COLUMN)

    # XLA's weight-gradient convolution reads the top diff as (out..., batch, O), the
    # batch as Eigen's input channels. From a diff in Caffe's order (where the engine does
    # not keep the top channels-last) that is a transposition of the whole diff, which
    # XLA fuses into the diff's producer, each element read across the layout: MobileNet's
    # conv1 (49 MB at 32 x 112 x 112 x 32, from BatchNorm's backward) spent 86 ms of its
    # step there, against 4 ms for the same fusion in Caffe's order. GEMM reads the diff
    # as (O, batch * out...), whole rows of it. Alone, conv1 shapes with their diff from
    # a BatchNorm backward (ms, XLA / GEMM, 2026-12-05, Intel Xeon): MobileNet's 99 / 66,
    # CaffeNet's 140 / 74, ResNet's 120 / 58. Steps (benchmarks/ab_step.py, 4 rounds of 8,
    # GEMM / XLA, two runs): MobileNet 0.970 and 0.979, CaffeNet 0.980 and 0.981 (each
    # interval 0.94-1.03). Taking GEMM where the diff comes channels-last (ResNet-50's and
    # GoogLeNet's conv1, backward_top_last) cost 1.05x and 1.09x, and LeNet's small diffs
    # (3 MB and less, in cache) 1.35x; so this holds for a diff in Caffe's order of
    # WEIGHT_GEMM_MIN_DIFF_BYTES or more, ungrouped, with columns short enough for GEMM's
    # forward (GEMM_MAX_COLUMN). (Deconvolution's "diff" here is its bottom: the virtual
    # convolution's top, always in Caffe's order.) Not for the stride-1 maps whose
    # forward XLA_MIN_STRIDE1_MACS sends to XLA: CIFAR-10's conv1 (batch 100, a 13 MB
    # diff in Caffe's order, forward and weight gradient alone, 2026-12-06, AMD EPYC
    # Zen 1 VM) took 18.2 ms with XLA's weight gradient against 37.6 with GEMM's.
    WEIGHT_GEMM_MIN_DIFF_BYTES = 8 << 20
    _top_diff_last = False

    def _weight_gemm_in_caffe_order(self, dy, channels_per_group, macs):
        """Whether the weight gradient from ``dy``, held in Caffe's order, takes GEMM
        (above): on CPU, ungrouped, from GEMM_MIN_MACS, not a batch's stride-1 map from
        XLA_MIN_STRIDE1_MACS."""
        column = channels_per_group * int(np.prod(self.kernel))
        return (jax.default_backend() == "cpu" and not self._top_diff_last and self.group == 1
                and macs >= self.GEMM_MIN_MACS and column <= self.GEMM_MAX_COLUMN
                and not self._large_stride1_batch(dy.shape[0], macs)
                and dy.size * dy.dtype.itemsize >= self.WEIGHT_GEMM_MIN_DIFF_BYTES)

    # One image's weight gradient on a map above BATCH1_GEMM_MAX_POSITIONS with longer
    # columns runs by output rows (conv_gemm.weight_diff_by_rows), not on XLA's
    # convolution. FCN's VGG shapes, channels-last inputs as in the step (ms, XLA / by
    # rows, 2026-12-03, AMD EPYC VM): conv1_2 557-619 / 384-506, conv2_2 516-544 /
    # 406-497, conv3_2 404 / 338, conv4_2 296 / 271, conv5_2 84 / 78. FCN-32s's step
    # (benchmarks/ab_step.py, 3 rounds each): by rows / XLA 0.957 (rounds of 3 steps
    # 0.89-1.06) and 0.911 (rounds of 4 steps 0.83-0.92). Short columns stay on the
    # whole-column GEMM: conv1_1 (3 * 9) by rows too took 1.020x the step.
    WEIGHT_BY_ROWS_MIN_COLUMN = GEMM_MAX_COLUMN + 1

    def _one_large_image(self, batch):
        """On CPU, one image, ungrouped, not 1x1, more than BATCH1_GEMM_MAX_POSITIONS
        outputs: where _weight_by_rows and _gemm_top_last apply."""
        return (jax.default_backend() == "cpu" and batch == 1 and self.group == 1
                and int(np.prod(self.out_spatial)) > self.BATCH1_GEMM_MAX_POSITIONS
                and not conv_gemm.pointwise(self.geometry()))

    def _weight_by_rows(self, batch, channels_per_group, macs):
        """Whether the weight gradient of ``batch`` images runs as
        conv_gemm.weight_diff_by_rows: _one_large_image, from GEMM_MIN_MACS, with columns
        (C * prod(kernel)) too long for _gemm's batch-1 rule."""
        return (self._one_large_image(batch) and macs >= self.GEMM_MIN_MACS
                and channels_per_group * int(np.prod(self.kernel)) >= self.WEIGHT_BY_ROWS_MIN_COLUMN)

    # Of those one-image weight gradients, a 2-d one at stride 1 with at least
    # SHIFTED_MIN_TAPS kernel offsets runs from shifted copies of x's rows and dy's
    # columns (conv_gemm.weight_diff_shifted: kh + kw copies of the map, not kh * kw).
    # Alone, inputs made in the same jit, batch 1, ms, by rows / shifted (2026-12-07,
    # AMD EPYC VM): OpenPose's 7x7s at 46x46, 128 -> 128 25-30 / 21-24, 185 -> 128
    # 41-56 / 29-37; 5x5 128 -> 128 at 46x46 15 / 11-13; 3x3 either way (shifted / by
    # rows 0.86-1.16: 46x46 to 698x698, FCN's and OpenPose's VGG maps). OpenPose's step
    # (benchmarks/ab_step.py --interleave, 2 rounds of 3): by rows 1.063x (interval
    # 1.001-1.129), its first call 28.5 s against 18.4.
    SHIFTED_MIN_TAPS = 25

    def _weight_shifted(self):
        """Whether a weight gradient _weight_by_rows takes runs as
        conv_gemm.weight_diff_shifted (above)."""
        return (self.num_spatial == 2 and all(s == 1 for s in self.stride)
                and int(np.prod(self.kernel)) >= self.SHIFTED_MIN_TAPS)

    # An ungrouped GEMM forward writes its product position-major, (positions, O), where
    # the engine keeps its top channels-last (forward_top_last): the columns, (K,
    # positions), are then contracted over their major axis, which costs little for the
    # short columns of a first layer (MobileNet's conv1, 3 * 9; ResNet's and GoogLeNet's,
    # 3 * 49), more for long ones. ResNet-50's one-image forward, whose 3x3 maps at 28x28
    # and less run on GEMM, took 1.22x with every GEMM map written so (benchmarks/
    # ab_step.py, 4 rounds; not traced), 1.00x with this bound (6 rounds; 2026-12-04).
    TOP_LAST_MAX_COLUMN = 256

    def _top_last_gemm(self, batch):
        """Whether forward_top_last writes the GEMM product channels-last (an ungrouped
        GEMM forward with columns up to TOP_LAST_MAX_COLUMN that does not already:
        _gemm_top_last)."""
        weight = self._weight_shape()
        return (self.group == 1 and not conv_gemm.pointwise(self.geometry())
                and weight[1] * int(np.prod(self.kernel)) <= self.TOP_LAST_MAX_COLUMN
                and self._forward_on_gemm(batch, weight)
                and not self._gemm_top_last(batch, weight))

    # One image on a large map whose forward runs as GEMM (short columns: FCN's conv1_1,
    # 3 * 9 at 698x698) writes its product channels-last too, and its weight gradient
    # reads dy so, so that the ReLU after it runs channels-last into the next (XLA's)
    # convolution: in Caffe's order its backward wrote relu1_1's diff across the layout
    # (117 ms of FCN-32s's step in the trace) and conv1_2's weight gradient transposed
    # relu1_1's top (156 ms). FCN-32s's step (benchmarks/ab_step.py, 3 rounds of 4
    # steps, 2026-12-03): 0.931 against Caffe's order. Where the engine does not keep
    # the top channels-last (no convolution reads it so: GoogLeNet's conv1 into LRN),
    # the product is transposed back, one copy of the top.
    gemm_top_last = True        # (Deconvolution: its forward is a data gradient)

    def _gemm_top_last(self, batch, weight_shape):
        """Whether the GEMM forward of ``batch`` images writes channels-last (and the
        GEMM weight gradient reads dy so): _one_large_image, 2-d, the forward on GEMM."""
        if self._force_gemm_last:
            return True
        return (self.gemm_top_last and self.num_spatial == 2 and self.axis == 1
                and self._one_large_image(batch) and self._forward_on_gemm(batch, weight_shape))

    # XLA's convolution (Eigen's) of an input of 1-4 channels runs faster with the
    # kernel's rows folded into the channels: kh row-shifted copies of the input (C * kh
    # channels) under a 1 x kw kernel, the same products. Forwards alone (batch 32-100,
    # ms, plain / folded, 2026-12-06, AMD EPYC Zen 1 VM): CIFAR-10's conv1 (3 channels,
    # 5x5 pad 2, 32x32) 9.1 / 6.3, 2 channels 7.6 / 4.5, 4 channels 11.2 / 8.7, 3x3 on 3
    # channels 5.0 / 3.7, LeNet's conv1 shape (1 channel) 2.4 / 1.3, 3 channels at
    # 224x224 254 / 216; 8 channels 10.0 / 10.9 and 16 or more lost. The weight
    # gradient folded so lost (CIFAR's 6.5 / 8.1 ms): it stays on the plain convolution.
    # Whole nets (benchmarks/ab_step.py --interleave, 2 rounds, folded / plain):
    # CIFAR-10 quick's step 0.929 (interval 0.899-0.959), its deploy forward 0.881
    # (0.846-0.918); CaffeNet's conv1 (11x11 at stride 4) step 1.013 (0.994-1.031) and
    # deploy forward 1.052 (1.034-1.070), so strided maps keep the plain convolution.
    ROWS_AS_CHANNELS_MAX = 4

    def _rows_as_channels(self, channels_per_group):
        """Whether the XLA forward folds the kernel rows into the channels (above): on
        CPU with XLA's own convolutions (xla_options), 2-d, ungrouped, at stride 1, at
        most ROWS_AS_CHANNELS_MAX input channels, kh > 1."""
        return (jax.default_backend() == "cpu" and xla_options.own_convolutions()
                and self.num_spatial == 2 and self.group == 1
                and all(s == 1 for s in self.stride)
                and channels_per_group <= self.ROWS_AS_CHANNELS_MAX and self.kernel[0] > 1)

    def _forward_on_gemm(self, batch, weight_shape):
        """Whether _conv_forward of ``batch`` images with a weight of ``weight_shape``
        (O, C/group, k...) runs as im2col + GEMM (_gemm)."""
        return self._gemm("forward", weight_shape[1], _macs(batch, weight_shape, self.out_spatial),
                          batch=batch)
