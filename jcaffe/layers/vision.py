"""Vision layers: Convolution, Pooling, LRN.

Shapes and window rules follow Caffe exactly (output sizes, Pooling's ceil
rounding and border clipping, AVE's divisor, MAX's tie rule); the arithmetic
is XLA's: convolutions go through ``lax.conv_general_dilated``, window sums
through ``lax.reduce_window``. Every backward is written out: convolution's
data gradient is a transposed convolution, its weight gradient a convolution
of the input with the top diff (on CPU: grouped convolutions as one convolution
per group, and im2col + GEMM where that measured faster, see conv_gemm; the choice
per map is conv_rules'), and
MAX pooling routes diffs back densely: each window's argmax offset is saved,
each kernel offset's share is shifted into its stride phase and the phases are
interleaved (no scatter, so the result does not depend on the order of atomic
adds on a GPU).
"""
import contextlib
import functools
import itertools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import engine, xla_options
from ..blob import shape_count, shape_string
from ..layer import JaxLayer, register
from ..proto import caffe_pb2
from . import conv_blocks, conv_depth, conv_depthwise, conv_gemm
from .conv_rules import CpuRules, _macs
from .common import canonical_axis

log = logging.getLogger("jcaffe")

_POOL = caffe_pb2.PoolingParameter
_LRN = caffe_pb2.LRNParameter
FLT_MAX = float(np.finfo(np.float32).max)  # Caffe's max-pool start value, for float and double


def _zero(x):
    """A scalar 0 of x's dtype (reduce_window wants its init value exactly typed)."""
    return np.zeros((), x.dtype)


def _window_sum(x, window, padding):
    """Sum over each window (stride 1) of x zero-padded by ``padding`` ((lo, hi) per axis)."""
    return lax.reduce_window(x, _zero(x), lax.add, window, (1,) * x.ndim, padding)


@register("Convolution")
class Convolution(CpuRules, JaxLayer):
    """y = W * x + b (cross-correlation, per group), for each bottom with the same W, b.

    dE/dx = W^T * dE/dy (transposed convolution);  dE/dW = x * dE/dy;  dE/db = sum dE/dy.
    """

    min_bottom_blobs = 1
    min_top_blobs = 1
    equal_num_bottom_top_blobs = True

    def _setup_geometry(self, shape):
        """axis, num_spatial, kernel, stride, pad, dilation from convolution_param
        (shared with Deconvolution and Im2col)."""
        self.axis = canonical_axis(self, self.p.axis, shape)
        self.num_spatial = len(shape) - self.axis - 1
        if self.num_spatial < 1:
            self.fail("needs at least one spatial axis after the channel axis %d; "
                      "bottom shape is %s", self.axis, shape_string(shape))
        self.kernel = self._per_axis("kernel", "kernel_size", None)
        self.stride = self._per_axis("stride", "stride", 1)
        self.pad = self._per_axis("pad", "pad", 0)
        self.dilation = self._per_axis(None, "dilation", 1)
        for what, values in (("kernel_size", self.kernel), ("stride", self.stride),
                             ("dilation", self.dilation)):
            if min(values) < 1:
                self.fail("%s must be positive, got %s", what, values)

    def setup(self, bottom_shapes):
        p = self.p
        shape = bottom_shapes[0]
        self._setup_geometry(shape)
        self.channels = shape[self.axis]
        self.num_output = p.num_output
        self.group = p.group
        if self.num_output < 1:
            self.fail("num_output must be positive, got %d", self.num_output)
        if self.group < 1:
            self.fail("group must be positive, got %d", self.group)
        if self.channels % self.group or self.num_output % self.group:
            self.fail("group %d must divide both the input channels (%d) and num_output (%d)",
                      self.group, self.channels, self.num_output)
        specs = [((self.num_output, self.channels // self.group) + tuple(self.kernel),
                  p.weight_filler)]
        if p.bias_term:
            specs.append(((self.num_output,), p.bias_filler))
        self.init_params(specs, self.filler_rng)

    def _per_axis(self, hw, repeated, default):
        """One value per spatial axis: ``repeated`` given once or per axis, or ``<hw>_h/_w``."""
        p, n = self.p, self.num_spatial
        values = list(getattr(p, repeated))
        if hw and (p.HasField(hw + "_h") or p.HasField(hw + "_w")):
            if n != 2:
                self.fail("%s_h & %s_w can only be used for 2-d convolution (%d spatial axes)",
                          hw, hw, n)
            if values:
                self.fail("give either %s or %s_h/%s_w, not both", repeated, hw, hw)
            return [getattr(p, hw + "_h"), getattr(p, hw + "_w")]
        if not values and default is not None:
            return [default] * n
        if len(values) not in (1, n):
            self.fail("%s must be given once, or once per spatial axis (given %d times; %d spatial "
                      "axes)", repeated, len(values), n)
        return values * n if len(values) == 1 else values

    def _check_bottoms(self, bottom_shapes):
        """Caffe's reshape checks: same axes and channels as at setup, all bottoms alike."""
        shape = bottom_shapes[0]
        if len(shape) != self.axis + 1 + self.num_spatial:
            self.fail("bottom num_axes may not change: set up for %d axes, got shape %s",
                      self.axis + 1 + self.num_spatial, shape_string(shape))
        if shape[self.axis] != self.channels:
            self.fail("input size incompatible with convolution kernel: set up for %d "
                      "channels, bottom shape %s has %d",
                      self.channels, shape_string(shape), shape[self.axis])
        for i, other in enumerate(bottom_shapes[1:], 1):
            if tuple(other) != tuple(shape):
                self.fail("shape mismatch - bottom[0]: %s vs. bottom[%d]: %s",
                          shape_string(shape), i, shape_string(other))

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        self._check_bottoms(bottom_shapes)
        self.in_spatial = tuple(shape[self.axis + 1:])
        out = []
        for i, size in enumerate(self.in_spatial):
            extent = self.dilation[i] * (self.kernel[i] - 1) + 1
            o = (size + 2 * self.pad[i] - extent) // self.stride[i] + 1
            if o < 1:
                self.fail("kernel extent %d is larger than the padded input %d "
                          "(size %d + 2 * pad %d) along spatial axis %d",
                          extent, size + 2 * self.pad[i], size, self.pad[i], i)
            out.append(o)
        self.out_spatial = tuple(out)
        top_shape = tuple(shape[:self.axis]) + (self.num_output,) + self.out_spatial
        return [top_shape] * len(bottom_shapes)

    # The leading axes (before ``axis``) are one batch axis for lax.
    def _batched(self, a):
        return a.reshape((shape_count(a.shape, 0, self.axis),) + a.shape[self.axis:])

    def forward(self, params, bottoms, rng):
        w = params[0]
        tops = []
        bias = params[1] if self.p.bias_term else None
        for x in bottoms:
            y = self._forward_map(self._batched(x), w, bias)
            tops.append(y.reshape(x.shape[:self.axis] + y.shape[1:]))
        return tops, None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        w = params[0]
        want_w = self.wants_param_diff(0)
        want_b = self.p.bias_term and self.wants_param_diff(1)
        bottom_diffs, dw, db = [], None, None
        for x, dy, pd in zip(bottoms, top_diffs, propagate_down):
            xb, dyb = self._batched(x), self._batched(dy)
            bottom_diffs.append(self._backward_map(dyb, w).reshape(x.shape) if pd else None)
            if want_w:
                d = self._weight_grad(xb, dyb)
                dw = d if dw is None else dw + d
            if want_b:
                s = jnp.sum(dyb, axis=(0,) + tuple(range(2, dyb.ndim)))
                db = s if db is None else db + s
        return bottom_diffs, ([dw, db] if self.p.bias_term else [dw])

    # The three linear maps forward/backward are written with; Deconvolution (its
    # transpose) swaps the first two and the weight gradient's arguments.
    def _forward_map(self, x, w, bias=None):
        return self._conv_forward(x, w, bias)

    def _backward_map(self, dy, w):
        return self._data_diff(dy, w)

    def _weight_grad(self, x, dy):
        return self._weight_diff(x, dy)

    # -- which tops the engine holds channels-last (CPU) ----------------------------
    # (The formulation each map takes, forward and backward, is conv_rules.CpuRules's.)
    def channels_last_top(self):
        """On CPU a 2-d convolution that runs on XLA's own kernel writes its top as
        (N, H, W, C) in memory (XLA CPU computes convolutions channels-last and transposes
        to Caffe's order after): the engine keeps that order for the ReLUs after it and
        hands the next convolution its bottom without a copy (jcaffe.engine). An
        ungrouped GEMM forward writes its product so where the engine asks
        (forward_top_last); a depthwise or 1x1 map computes so from a bottom held so;
        a grouped map split into XLA's convolutions joins its groups' tops so
        (_groups_on_xla)."""
        if not self._layout_ok():
            return False
        if self.group > 1:
            return self._groups_on_xla()
        weight = self._weight_shape()
        return (not self._forward_on_gemm(self._batch(), weight)
                or self._gemm_top_last(self._batch(), weight) or self._top_last_gemm(self._batch()))

    def channels_last_reader(self):
        """XLA's convolution reads its bottom channels-last (a transpose it cancels), as
        does a GEMM map of one large image (_gemm_top_last: its columns, by rows), and
        a grouped map split into XLA's convolutions (_groups_on_xla: each group's slice
        of the channels); the depthwise and 1x1 maps compute faster so
        (channels_last_ok)."""
        if not self._layout_ok():
            return False
        weight = self._weight_shape()
        return self.channels_last_ok() or self._groups_on_xla() or (self.group == 1 and (
            not self._forward_on_gemm(self._batch(), weight)
            or self._gemm_top_last(self._batch(), weight)))

    # A grouped map split into XLA's convolutions (_split_groups) slices each group's
    # channels off its bottom and joins the groups' tops along the channels. Held
    # channels-last, those are slices and joins along the minor axis, and each group's
    # convolution reads and writes channels-last as XLA's kernel does; in Caffe's order
    # each group's input was transposed in and its output back. So the engine keeps
    # such a map's top, and the layers between it and the next convolution, channels-
    # last: CaffeNet then runs so from conv1 to conv5 (its LRNs and pools with it).
    # CaffeNet's step (benchmarks/ab_step.py, 6 rounds of 8 steps, with LRN's stored
    # bottom diff, below): 0.969 against Caffe's order (interval 0.943-0.996); deploy
    # forward 0.947 (0.933-0.962); ResNeXt-50's step, whose 32-group maps run as
    # blocks of groups, level (1.008, interval 0.971-1.046). (2026-12-05, Intel Xeon.)
    def _groups_on_xla(self):
        """Whether this grouped 2-d map (_layout_ok) runs split into XLA's convolutions:
        not depthwise (conv_depthwise), its forward not on GEMM."""
        if (self.group == 1 or not self._layout_ok() or not self._split_groups()
                or self._depthwise(self.channels // self.group)):
            return False
        return not self._forward_on_gemm(self._batch(), self._weight_shape())

    # -- channels-last runs (CPU) -----------------------------------------------
    # A depthwise map (conv_depthwise) and an ungrouped 1x1 map without padding (one
    # dot, conv_gemm.pointwise_*_last) compute on bottoms held channels-last, and
    # read so: the engine keeps the BatchNorm, Scale and ReLU layers before them
    # channels-last, and a convolution before those writes its top so. MobileNet runs
    # in that order from its first convolution to its global pooling.
    def _layout_ok(self):
        return (type(self) is Convolution and jax.default_backend() == "cpu"
                and self.num_spatial == 2 and self.axis == 1 and bool(self.bottom_shapes))

    def _batch(self):
        return self.bottom_shapes[0][0]

    def _weight_shape(self):
        """(O, C/group, kernel...), from the layer's setup."""
        return (self.num_output, self.channels // self.group) + tuple(self.kernel)

    def _last_form(self):
        """'depthwise' or 'pointwise' where this map computes channels-last, else None."""
        if not self._layout_ok():
            return None
        if self._depthwise(self.channels // self.group):
            return "depthwise"
        if self.group == 1 and conv_gemm.pointwise(self.geometry()):
            return "pointwise"
        return None

    def channels_last_ok(self):
        return self._last_form() is not None

    # XLA's CPU convolution reads its kernel as (kh, kw, C, O). A weight in Caffe's
    # (O, C, kh, kw) was laid out so inside every forward, one transpose per map: in
    # OpenPose's deploy forward 67 of them, 209 MB, 88 of its 1507 busy ms. A deploy
    # forward now takes the weight so from the start (engine.KernelLayout, made once
    # while the weight stays unchanged). Four 512 -> 512 3x3 maps in a row, one image,
    # ms (2026-12-07, AMD EPYC VM): at 46x46 236 -> 210, at 23x23 85 -> 65.
    def kernel_layout(self):
        """(2, 3, 1, 0) where this map's forward runs on XLA's own convolution, on CPU,
        2-d, ungrouped, its kernel not folded (_rows_as_channels); else None."""
        if not self._layout_ok() or self.group != 1 or not xla_options.own_convolutions():
            return None
        weight = self._weight_shape()
        if self._forward_on_gemm(self._batch(), weight) or self._rows_as_channels(weight[1]):
            return None
        return (2, 3, 1, 0)

    # A depthwise weight gradient channels-last sums over the positions with the
    # channels minor, a column reduction, which XLA's CPU loops ran 4-6x slower than
    # the row reductions of Caffe's order (MobileNet's shapes, batch 32, ms, Caffe's
    # order / channels-last: 32 at 112x112 28 / 145, 128 at 56x56 29 / 157, 512 at 14x14
    # 3.8 / 23; nine separate sums, stacked offsets, partial sums by rows, a dot with
    # ones and transposing to Caffe's order measured 74-390 on the first three shapes;
    # 2026-12-04): MobileNet's training step took 1.43x. So where that gradient is
    # computed the map stays in Caffe's order.
    def channels_last_backward_ok(self):
        return self._last_form() != "depthwise" or not self.wants_param_diff(0)

    def forward_channels_last(self, params, bottoms, rng):
        geo, form = self.geometry(), self._last_form()
        w = params[0]
        tops = []
        for x in bottoms:
            y = (conv_depthwise.forward_last(x, w, geo) if form == "depthwise"
                 else conv_gemm.pointwise_forward_last(x, w, geo))
            if self.p.bias_term:
                y = y + params[1]
            tops.append(y)
        return tops, None

    def backward_channels_last(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        geo, form = self.geometry(), self._last_form()
        w = params[0]
        want_w = self.wants_param_diff(0)
        want_b = self.p.bias_term and self.wants_param_diff(1)
        bottom_diffs, dw, db = [], None, None
        for x, dy, pd in zip(bottoms, top_diffs, propagate_down):
            dx = None
            if pd:
                dx = (conv_depthwise.data_diff_last(dy, w, self.group, geo) if form == "depthwise"
                      else conv_gemm.pointwise_data_diff_last(dy, w, geo))
            bottom_diffs.append(dx)
            if want_w:
                d = (conv_depthwise.weight_diff_last(x, dy, geo) if form == "depthwise"
                     else conv_gemm.pointwise_weight_diff_last(x, dy, geo))
                dw = d if dw is None else dw + d
            if want_b:
                s = jnp.sum(dy, axis=(0, 1, 2))
                db = s if db is None else db + s
        return bottom_diffs, ([dw, db] if self.p.bias_term else [dw])

    def forward_top_last(self, params, bottoms, rng):
        if not self._top_last_gemm(self._batch()):
            return self.forward(params, bottoms, rng)
        with self._gemm_last():
            return self.forward(params, bottoms, rng)

    def backward_top_last(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        with self._flag("_top_diff_last"):
            if not self._top_last_gemm(self._batch()):
                return self.backward(params, bottoms, tops, saved, top_diffs, propagate_down)
            with self._gemm_last():
                return self.backward(params, bottoms, tops, saved, top_diffs, propagate_down)

    def _gemm_last(self):
        return self._flag("_force_gemm_last")

    @contextlib.contextmanager
    def _flag(self, name):
        """Sets the class-level False ``name`` True on this layer while tracing under it."""
        setattr(self, name, True)
        try:
            yield
        finally:
            delattr(self, name)

    _force_gemm_last = False

    # -- a 3-d map as a 2-d one (on CPU: CpuRules._folds_depth) ----------------------
    def _depth_twin(self, batch):
        """The 2-d convolution this 3-d map folds into (conv_depth): on (batch * output
        depth, C * kd, H, W), with this map's kernel, stride, pad and dilation along H
        and W, its formulations chosen by the same rules; its results in Caffe's order."""
        twin = object.__new__(Convolution)
        twin.__dict__.update(self.__dict__)
        twin.num_spatial = 2
        for name in ("kernel", "stride", "pad", "dilation"):
            setattr(twin, name, list(getattr(self, name))[1:])
        twin.in_spatial, twin.out_spatial = tuple(self.in_spatial[1:]), tuple(self.out_spatial[1:])
        twin.channels = self.channels * self.kernel[0]
        twin.gemm_top_last = False
        twin.bottom_shapes = [(batch * self.out_spatial[0], twin.channels) + twin.in_spatial]
        return twin

    def _fold(self, x):
        """x (B, C, D, H, W) as the twin's input, its depth taps in the channels."""
        return conv_depth.fold(x, self.kernel[0], self.stride[0], self.pad[0], self.dilation[0],
                               self.out_spatial[0])

    # -- the computations (formulation chosen per backend and shape: CpuRules) ------
    def _conv_forward(self, x, w, bias=None):
        """y = W * x (+ bias) for x (batch, C, spatial...), w (O, C/group, kernel...),
        bias (O,) or None."""
        if self._folds_depth(w.shape[1]):
            y = self._depth_twin(x.shape[0])._conv_forward(self._fold(x), conv_depth.weight_2d(w))
            return conv_gemm.add_bias(conv_depth.from_planes(y, x.shape[0]), bias)
        if self._depthwise(w.shape[1]):
            return conv_gemm.add_bias(conv_depthwise.forward(x, w, self.geometry()), bias)
        if self._forward_on_gemm(x.shape[0], w.shape):
            return conv_gemm.forward(x, w, self.group, self.geometry(),
                                     self._gemm_top_last(x.shape[0], w.shape), bias)
        if self._rows_as_channels(w.shape[1]):
            return conv_gemm.add_bias(_forward_rows_as_channels(x, w, self.geometry()), bias)
        conv = functools.partial(lax.conv_general_dilated, window_strides=self.stride,
                                 padding=[(p, p) for p in self.pad], rhs_dilation=self.dilation)
        if self._split_groups():
            pieces, wb = self._pieces(w)
            xs, ws = jnp.split(x, pieces, axis=1), jnp.split(wb, pieces, axis=0)
            y = _join_channels([conv(xg, wg) for xg, wg in zip(xs, ws)])
        else:
            y = conv(x, w, feature_group_count=self.group)
        return conv_gemm.add_bias(y, bias)

    def _data_diff(self, dy, w):
        """dE/dx: dy convolved with the flipped, group-transposed kernel (full padding);
        strided: per stride phase (_phase_data_diff); or as GEMMs (conv_gemm.data_diff:
        by kernel rows, or the column array and col2im)."""
        if self._folds_depth(w.shape[1]):
            g = self._depth_twin(dy.shape[0])._data_diff(conv_depth.planes(dy),
                                                         conv_depth.weight_2d(w))
            return conv_depth.unfold(g, dy.shape[0], self.kernel[0], self.stride[0],
                                     self.pad[0], self.dilation[0], self.in_spatial[0])
        if self._depthwise(w.shape[1]):
            return conv_depthwise.data_diff(dy, w, self.group, self.geometry())
        rows = conv_gemm.by_rows(dy.shape, w.shape, self.group, self.geometry(),
                                 dy.dtype.itemsize)
        if self._gemm("data", w.shape[1], _macs(dy.shape[0], w.shape, self.out_spatial),
                      by_rows=rows, batch=dy.shape[0]):
            dx = conv_gemm.data_diff(dy, w, self.group, self.geometry())
            if rows or conv_gemm.pointwise(self.geometry()):
                return dx
            # By columns, col2im's sum of the kernel's shifted pieces is elementwise to XLA,
            # which fused it into each reader: FCN-32s's fc6 (49 pieces) was summed again
            # for each position of pool5's 2x2 windows inside relu5_3's backward (108-210
            # ms). Stored once (engine.materialize).
            return engine.materialize(dx)
        n = self.num_spatial
        padding = []
        for size, out, k, s, p, d in zip(self.in_spatial, self.out_spatial, self.kernel,
                                          self.stride, self.pad, self.dilation):
            extent = d * (k - 1) + 1
            padding.append((extent - 1 - p, size - 1 + p - (out - 1) * s))
        spatial = tuple(range(2, 2 + n))

        def transposed(wg, groups):     # (O, C/g, k...) -> (C, O/g, k...), flipped
            o, cg = wg.shape[:2]
            wt = wg.reshape((groups, o // groups, cg) + wg.shape[2:]).swapaxes(1, 2)
            return jnp.flip(wt.reshape((groups * cg, o // groups) + wg.shape[2:]), axis=spatial)

        if any(s > 1 for s in self.stride):
            return self._phase_data_diff(dy, w, transposed)
        conv = functools.partial(lax.conv_general_dilated, window_strides=(1,) * n,
                                 padding=padding, rhs_dilation=self.dilation)
        return self._grouped(conv, dy, w, transposed)

    def _grouped(self, conv, dy, w, transposed):
        """conv(dy, flipped transposed kernel), per group or as one grouped call."""
        g = self.group
        if self._split_groups():
            pieces, wb = self._pieces(w)
            dys, ws = jnp.split(dy, pieces, axis=1), jnp.split(wb, pieces, axis=0)
            return _join_channels([conv(d, transposed(wg, 1)) for d, wg in zip(dys, ws)])
        return conv(dy, transposed(w, g), feature_group_count=g)

    def _phase_data_diff(self, dy, w, transposed):
        """The strided data gradient by stride phases: no dilated dy, no zeros multiplied.

        In padded coordinates t = i + pad, dx[t] = sum over o, j with o*stride + j*dilation
        = t of dy[o] w[j]. Split t by its residue r modulo the stride, t = q*stride + r:
        only the taps j with j*dilation = r (mod stride) reach phase r, at o = q - a_j with
        a_j = (j*dilation - r) / stride, an arithmetic progression of step
        dilation / gcd(dilation, stride). So each phase is a stride-1 convolution of dy
        with that sub-kernel; the phases are interleaved with one transpose and cut to
        the input. (XLA's lhs_dilation form multiplied stride^n - 1 zeros per product,
        and its algebraic simplifier in jaxlib 0.10.2 aborted the process on some of
        those convolutions; the explicitly dilated dy that replaced it ran 100x slower
        on CaffeNet's conv1.)
        """
        n = self.num_spatial
        axes = []       # per axis: Q, then per residue (first tap, tap step, a_0, taps, d')
        for size, out, k, st, p, d in zip(self.in_spatial, self.out_spatial, self.kernel,
                                          self.stride, self.pad, self.dilation):
            step = st // math.gcd(d, st)
            per = []
            for r in range(st):
                first = next((j for j in range(min(k, step)) if (j * d) % st == r), None)
                if first is None:
                    per.append(None)
                    continue
                taps = len(range(first, k, step))
                per.append((first, step, (first * d - r) // st, taps, d // math.gcd(d, st)))
            axes.append((-(-(p + size) // st), per))
        zero = jnp.zeros((), dy.dtype)
        out_shape = (dy.shape[0], w.shape[1] * self.group) + tuple(q for q, _ in axes)
        phases = []
        for residue in itertools.product(*[range(st) for st in self.stride]):
            subs = [axes[a][1][r] for a, r in enumerate(residue)]
            if any(sub is None for sub in subs):
                phases.append(jnp.zeros(out_shape, dy.dtype))
                continue
            index = (slice(None), slice(None)) + tuple(
                slice(first, None, step) for first, step, _, _, _ in subs)
            wsub = w[index]
            padding = []
            for (q, _), size, (first, step, a0, taps, dd) in zip(axes, dy.shape[2:], subs):
                lo = a0 + (taps - 1) * dd       # so out[q] reads dy[q - a0 - m*dd]
                padding.append((lo, q + (taps - 1) * dd - size - lo))
            dyp = lax.pad(dy, zero, [(0, 0, 0), (0, 0, 0)] + [(lo, hi, 0) for lo, hi in padding])
            conv = functools.partial(lax.conv_general_dilated, window_strides=(1,) * n,
                                     padding=[(0, 0)] * n,
                                     rhs_dilation=tuple(sub[4] for sub in subs))
            phases.append(self._grouped(conv, dyp, wsub, transposed))
        full = conv_gemm.interleave_phases(phases, self.stride)
        start = (0, 0) + tuple(self.pad)
        return lax.slice(full, start, tuple(full.shape[:2]) + tuple(
            p + size for p, size in zip(self.pad, self.in_spatial)))

    # The weight diff by rows (jcaffe.engine.RowBlocks): a fused solver step updates a
    # big weight a block of output channels at a time and never holds its whole diff,
    # as InnerProduct's. Offered where the whole diff is one GEMM of one column array
    # (conv_gemm.weight_diff in a single chunk: ungrouped maps of one image, FCN's fc6,
    # 7x7 from 512 to 4096 channels, 411 MB of weight), whose columns XLA builds once
    # for all the blocks; a batch in chunks would build them again for each block.
    # FCN-32s's step (2026-12-06, AMD EPYC VM): XLA's temporaries 502 -> 258 MB, peak
    # RSS 3506 -> 3283-3326 MB, time level (benchmarks/ab_step.py, 2 rounds of 4 pairs,
    # rows / whole 1.007, interval 0.992-1.021).
    @property
    def row_blocked_params(self):
        return (0,) if self._weight_diff_on_columns() else ()

    def _weight_diff_on_columns(self):
        """Whether _weight_diff of this map takes conv_gemm.weight_diff in one chunk:
        ungrouped, not 1x1 (those may run channels-last), on GEMM by _gemm's rule (not
        by rows), its columns one chunk. (Where the engine holds the top channels-last,
        the rows are still computed in Caffe's order: the same numbers.)"""
        if (type(self) is not Convolution or self.group != 1 or not self.bottom_shapes
                or self._folds_depth(self.channels)):
            return False
        geo, batch, weight = self.geometry(), self._batch(), self._weight_shape()
        macs = _macs(batch, weight, self.out_spatial)
        return (not conv_gemm.pointwise(geo)
                and not self._weight_by_rows(batch, self.channels, macs)
                and not self._gemm_top_last(batch, weight)
                and self._gemm("weight", self.channels, macs, batch=batch)
                and conv_gemm.single_chunk(batch, self.channels, geo, self.dtype.itemsize))

    def param_diff_rows(self, params, bottoms, top_diffs, index, start, size):
        """Rows [start, start + size) of the weight diff (output channels): each
        bottom's columns against those channels of its top diff."""
        rows = None
        for x, dy in zip(bottoms, top_diffs):
            d = conv_gemm.weight_diff(x, lax.dynamic_slice_in_dim(dy, start, size, axis=1),
                                      1, self.geometry())
            rows = d if rows is None else rows + d
        return rows

    def _weight_diff(self, x, dy):
        """dE/dW[o, c, j] = sum over n and out of dy[n, o, out] * x[n, c, out*stride + j*dilation].

        A convolution with the batch axis as the summed "feature" axis: x's channels
        play the batch (split into groups), dy is the kernel, the stride becomes
        its dilation and the dilation the window stride.
        """
        if self._folds_depth(x.shape[1] // self.group):
            dw = self._depth_twin(x.shape[0])._weight_diff(self._fold(x), conv_depth.planes(dy))
            return conv_depth.weight_3d(dw, self.kernel[0])
        cg = x.shape[1] // self.group
        if self._depthwise(cg):
            return conv_depthwise.weight_diff(x, dy, self.geometry())
        macs = _macs(x.shape[0], (dy.shape[1], cg) + tuple(self.kernel), self.out_spatial)
        if self._weight_by_rows(x.shape[0], cg, macs):
            if self._weight_shifted():
                return conv_gemm.weight_diff_shifted(x, dy, self.geometry())
            return conv_gemm.weight_diff_by_rows(x, dy, self.geometry())
        if (self._gemm("weight", cg, macs, batch=x.shape[0])
                or self._weight_gemm_in_caffe_order(dy, cg, macs)):
            last = self._gemm_top_last(x.shape[0], (dy.shape[1], cg) + tuple(self.kernel))
            return conv_gemm.weight_diff(x, dy, self.group, self.geometry(), last)
        n = self.num_spatial
        spec = (1, 0) + tuple(range(2, 2 + n))
        padding = [(p, (k - 1) * d + (out - 1) * s + 1 - size - p)
                   for size, out, k, s, p, d in zip(self.in_spatial, self.out_spatial, self.kernel,
                                                     self.stride, self.pad, self.dilation)]
        conv = functools.partial(lax.conv_general_dilated, window_strides=self.dilation,
                                 padding=padding, rhs_dilation=self.stride,
                                 dimension_numbers=lax.ConvDimensionNumbers(spec, spec, spec))
        if self._split_groups():
            blocks = self._groups_per_block()
            pieces = self.group // blocks
            xs, dys = jnp.split(x, pieces, axis=1), jnp.split(dy, pieces, axis=1)
            dw = jnp.concatenate([conv(xg, d) for xg, d in zip(xs, dys)], axis=0)
            return conv_blocks.own_groups(dw, self.group, blocks)
        return conv(x, dy, batch_group_count=self.group)


def _offset_dtype(dtype, count):
    """The dtype of MAX pooling's argmax offsets (0 .. count - 1, -1: none): the data's
    own float dtype where it holds them exactly, else int32. Measured (XLA CPU, AVX2):
    ``where(offset == i, dy, 0)`` on an int32 offset ran 4-7x slower than on a float
    one when the innermost axis had 12-32 elements (LeNet's pool1: 1.1 vs 0.25 ms)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and count < 2 ** jnp.finfo(dtype).nmant:
        return dtype
    return np.dtype(np.int32)


# The groups' maps of a grouped convolution split into XLA's convolutions, joined along
# the channels. XLA's CPU kernel writes each map channels-last; joined along Caffe's
# channel axis, the join's result took Caffe's layout (each map transposed into it), and
# where the engine keeps the top channels-last (Convolution._groups_on_xla) the layers
# after it read it across that layout again. Joined channels-last, the moves are
# bitcasts of the kernel's output, and the one transpose to Caffe's order is the one
# the engine cancels. Steps (benchmarks/ab_step.py, rounds' geometric mean, joined
# channels-last / along Caffe's axis, 2026-12-05, Intel Xeon): CaffeNet 0.951 (6 rounds
# of 8, interval 0.940-0.962), ResNeXt-50 0.910 (4 rounds of 4, 0.867-0.955); CaffeNet's
# deploy forward 0.952 (0.895-1.013).
JOIN_GROUPS_LAST = True


def _forward_rows_as_channels(x, w, geo):
    """The 2-d convolution of x (B, C, H, W) by w (O, C, kh, kw) as one of kh row-shifted
    copies of x, stacked along the channels (row i's copy starts at padded row i *
    dilation, every stride-th row), by the (O, kh * C, 1, kw) kernel: the same sums."""
    (kh, _), (sh, sw), (ph, pw), (dh, dw) = geo.kernel, geo.stride, geo.pad, geo.dilation
    out_h = geo.out_spatial[0]
    xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (0, 0, 0), (ph, ph, 0), (0, 0, 0)])
    rows = [lax.slice_in_dim(xp, i * dh, i * dh + (out_h - 1) * sh + 1, sh, axis=2)
            for i in range(kh)]
    o, c = w.shape[:2]
    wr = jnp.transpose(w, (0, 2, 1, 3)).reshape(o, kh * c, 1, w.shape[3])
    return lax.conv_general_dilated(jnp.concatenate(rows, axis=1), wr, (1, sw),
                                    [(0, 0), (pw, pw)], rhs_dilation=(1, dw))


def _join_channels(maps):
    """concatenate(maps, axis=1), for (N, C_i, spatial...) maps of the split groups."""
    if not JOIN_GROUPS_LAST:
        return jnp.concatenate(maps, axis=1)
    return jnp.moveaxis(jnp.concatenate([jnp.moveaxis(m, 1, -1) for m in maps], axis=-1), -1, 1)


def _computed_once(offset, k):
    """The window offsets (-1 <= o < k) unchanged, through an exact square root: XLA CPU
    counts sqrt as expensive and computes it once for a consumer that reads each element
    more than once, where it would otherwise fuse the forward's whole window scan into
    that consumer and redo it per read (every backward route reads each offset once per
    kernel position it tests). (o + 1)^2 exact in the offsets' dtype makes
    sqrt((o + 1)^2) - 1 == o; integer offsets (non-float data, or kernels too large for
    the float) pass as they are."""
    if offset.dtype.kind != "f" or k * k >= 2 ** (jnp.finfo(offset.dtype).nmant + 1):
        return offset
    one = jnp.ones((), offset.dtype)
    return jnp.sqrt((offset + one) * (offset + one)) - one


def _axis_slice(a, axis, start, count, step):
    """``count`` entries of ``a`` along ``axis``: start, start + step, ..."""
    return lax.slice_in_dim(a, start, start + (count - 1) * step + 1, step, axis)


def _first_max(a, axis, k, stride, count, kind):
    """Along ``axis``, windows o * stride + [0, k) for o < count: each window's maximum
    and the offset of its first maximum (Caffe's strict '>' scan: ties keep the first,
    NaN never wins; a window of -inf or NaN only gives -inf at offset 0)."""
    best = offset = None
    for i in range(k):
        view = _axis_slice(a, axis, i, count, stride)
        if best is None:
            best = jnp.where(jnp.isnan(view), jnp.asarray(-np.inf, a.dtype), view)
            offset = jnp.zeros(view.shape, kind)
            continue
        better = view > best
        best = jnp.where(better, view, best)
        offset = jnp.where(better, np.asarray(i, kind), offset)
    return best, offset


def _tiles(a, axis, k, count):
    """``a``'s first count * k positions along ``axis`` as (count, k) there: the windows
    of a tiling (stride k, or a single window), each on its own axis after ``axis``."""
    a = _axis_slice(a, axis, 0, count * k, 1)
    return a.reshape(a.shape[:axis] + (count, k) + a.shape[axis + 1:])


def _window_views_sum(a, axis, k, stride, count):
    """Along ``axis``, the sum of each window o * stride + [0, k), o < count: k strided
    views added (XLA fuses them into one loop). Windows that tile the axis (stride k, or
    one window: global pooling) are one reduction over the tiles' axis: a global AVE
    pool of a 28x28 map was 28 + 28 views, and its backward 28 x 28 padded pieces
    (SE-BN-Inception's squeeze blocks, benchmarks/NOTES.md, fifty-first session)."""
    if k > 1 and (count == 1 or stride == k):
        return jnp.sum(_tiles(a, axis, k, count), axis=axis + 1)
    total = _axis_slice(a, axis, 0, count, stride)
    for i in range(1, k):
        total = total + _axis_slice(a, axis, i, count, stride)
    return total


def _scatter_windows(pieces, axis, stride, length):
    """The adjoint of taking k strided views along ``axis``: out[o * stride + i] +=
    pieces[i][o], out ``length`` long. Positions split by their residue r modulo the
    stride; view i lands on phase i % stride shifted by i // stride (a pad), and the
    phases are interleaved by one stack and reshape. The same piece k times over windows
    that tile the axis (stride k, or one window) is that piece broadcast over each tile:
    one pass, not k pads and adds (:func:`_window_views_sum`)."""
    count = pieces[0].shape[axis]
    k = len(pieces)
    if k > 1 and (count == 1 or stride == k) and all(p is pieces[0] for p in pieces):
        piece = jnp.expand_dims(pieces[0], axis + 1)
        tiled = jnp.broadcast_to(piece, piece.shape[:axis + 1] + (k,) + piece.shape[axis + 2:])
        tiled = tiled.reshape(piece.shape[:axis] + (count * k,) + piece.shape[axis + 2:])
        config = [(0, 0, 0)] * tiled.ndim
        config[axis] = (0, length - count * k, 0)
        return lax.pad(tiled, jnp.zeros((), tiled.dtype), config)
    span = -(-length // stride)
    zero = jnp.zeros((), pieces[0].dtype)
    phases = []
    for r in range(stride):
        acc = None
        for i in range(r, len(pieces), stride):
            q = i // stride
            config = [(0, 0, 0)] * pieces[i].ndim
            config[axis] = (q, span - count - q, 0)
            piece = lax.pad(pieces[i], zero, config)
            acc = piece if acc is None else acc + piece
        if acc is None:
            shape = list(pieces[0].shape)
            shape[axis] = span
            acc = jnp.zeros(shape, pieces[0].dtype)
        phases.append(acc)
    full = phases[0]
    if stride > 1:
        shape = list(full.shape)
        shape[axis] = span * stride
        full = jnp.stack(phases, axis=axis + 1).reshape(shape)
    return _axis_slice(full, axis, 0, length, 1)


def _pool_windows(size, pooled, k, s, p):
    """Window starts of one axis, in image coordinates (may be negative: padding)."""
    return (np.arange(pooled) * s - p).astype(np.int32)


@register("Pooling")
class Pooling(JaxLayer):
    """MAX: y = max over the in-image part of each window (the first max wins ties);
    AVE: y = sum over the in-image part of each window / pool size.

    MAX: dE/dx routes each dE/dy to its window's argmax (summing where windows overlap);
    AVE: dE/dx = sum over the windows covering x of dE/dy / pool size.
    """

    exact_num_bottom_blobs = 1
    min_top_blobs = 1
    # Methods this class computes; other methods register a subclass in method_classes
    # (STOCHASTIC: pool_stochastic.py) and Pooling(...) builds that subclass instead.
    methods = (_POOL.MAX, _POOL.AVE)
    method_classes = {}
    # MAX (and STOCHASTIC) backward of overlapping windows by kernel rows
    # (_route_back_by_rows); False: by col2im's shares (kept to compare the two).
    ROUTE_BY_ROWS = True
    # Store _route_back_by_rows's dE/dx once, cropped (engine.materialize), rather than let
    # XLA fuse the crop into each reader: in a training step the layers below read it
    # early, but XLA ran the copy into the step's returned diff late, and the padded
    # dE/dx stayed alive until then. GoogLeNet (batch 32, AMD Zen 1 VM): the step's XLA
    # temporaries 725 -> 533 MB, peak RSS 3900 -> 3698 MB, and the step 0.94x the time
    # (ab_step.py, 4 rounds, interval 0.90-0.97); CaffeNet and ResNet-50 level (1.000,
    # 1.002). False: the crop left to XLA (kept to compare the two).
    STORE_ROUTED_DIFF = True
    # MAX, where its backward runs and its forward pads the input: store the window
    # offsets (the residual the backward reads) once, and the top once, its readers
    # each waiting for the offsets (engine.materialize_read_after). Left to XLA, the
    # step's returned offsets were computed late, in the backward, from the -inf-padded
    # input, and the top again in some of its readers (an LRN's forward and backward,
    # the copy to the returned blob), so the padded input stayed alive into the
    # backward (GoogLeNet's pool1: 105 MB). Offsets and top stored with no wait, XLA
    # still computed the offsets late (temporaries 400 MB against 376); the top made
    # to wait for the offsets before it was stored, XLA copied that product into each
    # reader (ResNet-50's temporaries +41 MB). GoogLeNet (batch 32, AMD Zen 1 VM): the
    # step's XLA temporaries 376 -> 211 MB, peak RSS 3450 -> 3264 MB, the step level
    # (ab_step.py --interleave, 2 rounds of 6 pairs: 0.997x, pairs' interval 0.981-1.006);
    # ResNet-50's memory the same, its step 1.002x (0.995-1.030); FCN-32s's temporaries
    # +24 MB, its step 0.994x (0.980-1.008). Only where the forward pads (Caffe's pad,
    # or the last windows' overhang): otherwise its input is a blob the step keeps
    # anyway, and storing only cost (CaffeNet, whose windows fit: temporaries +9 MB, the
    # step 1.020x, pairs' interval 1.005-1.027). The blob the step returns is the stored
    # top itself (engine.ReadAfter), and so are a Split's tops of it: read through the
    # wait, it was a copy XLA made at the step's end, the stored top a temporary until
    # then (GoogLeNet's temporaries 211 -> 166 MB, peak RSS 3175-3177 -> 3120-3129 MB,
    # the step 1.002x, interval 0.998-1.006; FCN-32s's temporaries 525 -> 502 MB).
    # False: left to XLA (to compare the two).
    STORE_MAX_RESULTS = True

    def __new__(cls, layer_param=None, *args, **kwargs):
        sub = None if layer_param is None else \
            Pooling.method_classes.get(layer_param.pooling_param.pool)
        return super().__new__(sub if cls is Pooling and sub is not None else cls)

    @property
    def max_top_blobs(self):
        """MAX pooling may output the argmax mask as a second top."""
        return 2 if self.p.pool == _POOL.MAX else 1

    def setup(self, bottom_shapes):
        p = self.p
        if p.pool not in self.methods:
            self.fail("unknown pooling method %d", p.pool)
        self._check_4d(bottom_shapes[0])
        has_size, has_h, has_w = (p.HasField(f) for f in ("kernel_size", "kernel_h", "kernel_w"))
        if p.global_pooling:
            if has_size or has_h or has_w:
                self.fail("with global_pooling: true the kernel size cannot be specified")
        elif has_size == (has_h and has_w):
            self.fail("kernel size is kernel_size OR kernel_h and kernel_w (both are required "
                      "for non-square kernels); not both")
        else:
            self.kernel = (p.kernel_size,) * 2 if has_size else (p.kernel_h, p.kernel_w)
            if has_size and (has_h or has_w):   # (Caffe's check lets one of them through)
                log.warning("Pooling layer '%s': kernel_size %d is used, its %s is ignored "
                            "(as in Caffe)", self.name, p.kernel_size,
                            "kernel_h %d" % p.kernel_h if has_h else "kernel_w %d" % p.kernel_w)
        self.pad = self._pair("pad")
        self.stride = self._pair("stride")
        if p.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            self.fail("with global_pooling: true only pad = 0 and stride = 1 are allowed, got "
                      "pad %s stride %s", self.pad, self.stride)
        if min(self.stride) < 1:
            self.fail("stride must be positive, got %s", self.stride)

    def _pair(self, name):
        p = self.p
        has_h, has_w = p.HasField(name + "_h"), p.HasField(name + "_w")
        if has_h or has_w:
            if p.HasField(name) or not (has_h and has_w):
                self.fail("%s is %s OR %s_h and %s_w; not both", name, name, name, name)
            return getattr(p, name + "_h"), getattr(p, name + "_w")
        return (getattr(p, name),) * 2

    def _check_4d(self, shape):
        if len(shape) != 4:
            self.fail("input must have 4 axes (num, channels, height, width), got shape %s",
                      shape_string(shape))

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        self._check_4d(shape)
        self.in_hw = tuple(shape[2:])
        if self.p.global_pooling:
            self.kernel = self.in_hw
        for k in self.kernel:
            if k < 1:
                self.fail("kernel size must be positive, got %s", self.kernel)
        if self.pad != (0, 0):
            for k, p in zip(self.kernel, self.pad):
                if p >= k:
                    self.fail("pad %s must be smaller than the kernel %s", self.pad, self.kernel)
        ceil = self.p.round_mode == _POOL.CEIL
        pooled = []
        for size, k, s, p in zip(self.in_hw, self.kernel, self.stride, self.pad):
            span = size + 2 * p - k
            n = (-(-span // s) if ceil else span // s) + 1
            if self.pad != (0, 0) and (n - 1) * s >= size + p:
                n -= 1  # the last window must start inside the image, not in the padding
            if n < 1:
                self.fail("kernel %s is larger than the padded input %s (pad %s)",
                          self.kernel, self.in_hw, self.pad)
            pooled.append(n)
        self.pooled = tuple(pooled)
        return [tuple(shape[:2]) + self.pooled] * self.num_top

    def _axes(self):
        """Per spatial axis: (input size, pooled size, kernel, stride, pad)."""
        return list(zip(self.in_hw, self.pooled, self.kernel, self.stride, self.pad))

    # -- channels-last -----------------------------------------------------------
    # The arrays' H and W axes: Caffe's (N, C, H, W), or (N, H, W, C) where the engine
    # hands the bottom channels-last, as a convolution and its ReLU left it (MAX pooling
    # read across that layout: FCN-32s's pool1 forward 415 ms where it took 16 ms on an
    # array in Caffe's order). Every method below computes in either.
    _hw = (2, 3)

    def channels_last_ok(self):
        # (not the mask top; not col2im's route, kept in Caffe's order to compare)
        return type(self) is Pooling and self.num_top == 1 and self.ROUTE_BY_ROWS

    @contextlib.contextmanager
    def channels_last_context(self):
        self._hw = (1, 2)
        try:
            yield
        finally:
            del self._hw

    def _spatial(self, h, w, rest):
        """A list over the 4 axes: ``h`` and ``w`` at H and W, ``rest`` elsewhere."""
        out = [rest] * 4
        out[self._hw[0]], out[self._hw[1]] = h, w
        return out

    def _split_hw(self, a):
        """``a`` with a unit axis after H and after W (6 axes: H's tiles, H's phase, ...)."""
        h, w = self._hw
        return jnp.expand_dims(a, (h + 1, w + 2))

    def _with_hw(self, shape, h, w):
        """``shape`` (4 axes) with ``h`` and ``w`` in place of its H and W."""
        out = list(shape)
        out[self._hw[0]], out[self._hw[1]] = h, w
        return tuple(out)

    def _six(self, shape, h, w):
        """``shape`` (4 axes) with H split into the pair ``h`` and W into ``w``."""
        out = []
        for axis, d in enumerate(shape):
            out.extend(h if axis == self._hw[0] else w if axis == self._hw[1] else (d,))
        return tuple(out)

    def forward(self, params, bottoms, rng):
        x, = bottoms
        if self.p.pool == _POOL.MAX:
            top, offset = self._max_forward(x)
            if self.num_top > 1:       # Caffe's mask top: the flat index h * W + w
                return [top, self._flat_index(offset).astype(x.dtype)], offset
            return [top], offset
        return [self._ave_forward(x)], None

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None], []
        if self.p.pool == _POOL.MAX:
            return [self._route_back(saved, top_diffs[0])], []
        return [self._ave_backward(top_diffs[0])], []

    def stored_for_backward(self, tops, saved):
        if (self.p.pool != _POOL.MAX or not self.STORE_MAX_RESULTS
                or not any(itertools.chain(*self._pads()))):
            return tops, saved
        saved = engine.materialize(saved)
        return [engine.materialize_read_after(tops[0], saved)] + list(tops[1:]), saved

    # -- MAX -------------------------------------------------------------------
    def _max_forward(self, x):
        """Top and each window's offset i * kw + j of its first maximum in row-major order
        (Caffe's strict '>' scan from -FLT_MAX; -1: no element > -FLT_MAX, no diff goes
        back), found in two separable passes.

        A window's row-major first maximum is, among its rows, the first row whose
        maximum is the largest, at that row's own first maximum. So the first pass
        runs along W over every row of the padded input (``m``: each row's maximum inside
        each column window, ``col``: its offset j), the second along H over ``m`` (the
        window's maximum and its row i). Each pass is kw or kh strided views compared in
        one fused loop. Against one ``reduce_window`` plus the kh*kw views compared with
        its result (batch 32, float32, forward alone): CaffeNet's pool1 (96x55x55, 3x3
        stride 2) 30.5 -> 1.8 ms, GoogLeNet's 3x3 stride 1 pad 1 (192x28x28) 26.6 ->
        3.8 ms; whole deploy forwards, in-process A/Bs: GoogLeNet 0.91, CaffeNet 0.95
        (a method that may have timed one variant twice: benchmarks/NOTES.md,
        fifteenth session; the forwards alone are not in doubt).
        The input is padded with -inf, and NaN never wins a '>' comparison, as in Caffe.
        """
        (H, PH, kh, sh, ph), (W, PW, kw, sw, pw) = self._axes()
        pad_h, pad_w = self._pads()
        xp = jnp.pad(x, self._spatial(pad_h, pad_w, (0, 0)), constant_values=-np.inf)
        kind = _offset_dtype(x.dtype, max(kh, kw) + 1)
        m, col = _first_max(xp, self._hw[1], kw, sw, PW, kind)
        best, row = _first_max(m, self._hw[0], kh, sh, PH, kind)
        found = best > -FLT_MAX                                  # Caffe starts from -FLT_MAX
        floor = max(-FLT_MAX, float(jnp.finfo(x.dtype).min))
        top = jnp.where(found, best, jnp.asarray(floor, x.dtype))
        return top, self._window_offset(jnp.where(found, row, -1), col)

    def _pads(self):
        """The rows and columns the forward pads (before, after) along H and W, with -inf
        (MAX) or zeros (AVE): Caffe's pad, and the last windows' overhang."""
        (H, PH, kh, sh, ph), (W, PW, kw, sw, pw) = self._axes()
        return ((ph, max(0, (PH - 1) * sh + kh - ph - H)),
                (pw, max(0, (PW - 1) * sw + kw - pw - W)))

    def _window_offset(self, row, col):
        """Each window's offset i * kw + j of its maximum (-1: none), from the chosen
        ``row`` (N, C, PH, PW) and each row's chosen column ``col`` (N, C, Hp, PW)."""
        (H, PH, kh, sh, ph), (W, PW, kw, sw, pw) = self._axes()
        at = jnp.zeros(row.shape, col.dtype)
        for i in range(kh):
            at = jnp.where(row == i, _axis_slice(col, self._hw[0], i, PH, sh), at)
        kind = _offset_dtype(row.dtype, kh * kw)
        return jnp.where(row >= 0, row.astype(kind) * kw + at.astype(kind), -1)

    def _flat_index(self, offset):
        """Window offsets -> Caffe's flat bottom index h * W + w (-1 stays -1)."""
        (H, PH, kh, sh, ph), (W, PW, kw, sw, pw) = self._axes()
        hs, ws = (_pool_windows(*a) for a in self._axes())
        offset = offset.astype(jnp.int32)
        h = hs[:, None] + offset // kw
        w = ws[None, :] + offset % kw
        return jnp.where(offset >= 0, h * W + w, -1).astype(jnp.int32)

    def _max_backward(self, index, dy):
        """dE/dx from Caffe's flat argmax index (h * W + w, -1: none) of each window."""
        (H, PH, kh, sh, ph), (W, PW, kw, sw, pw) = self._axes()
        hs, ws = (_pool_windows(*a) for a in self._axes())
        offset = jnp.where(index >= 0,
                           (index // W - hs[:, None]) * kw + (index % W - ws[None, :]), -1)
        return self._route_back(offset, dy)

    def _route_back(self, offset, dy):
        """dE/dx[h, w] = sum of dE/dy over the windows covering (h, w) whose argmax is (h, w),
        from each window's offset i * kw + j (MAX with tiles; STOCHASTIC's samples).

        Dense, no scatter, a fixed summation order: each kernel offset's share of dE/dy
        (the windows whose argmax sits there) goes back where that offset reads. Windows
        that do not overlap: one select per tile. Overlapping ones: a kernel row at a
        time, added in place (or, with ROUTE_BY_ROWS off, conv_gemm.col2im of all the
        shares: stride phases, plain shifts, one interleave).
        """
        k = int(np.prod(self.kernel))
        offset = _computed_once(offset.astype(_offset_dtype(dy.dtype, k)), k)
        geo = conv_gemm.Geometry(tuple(self.kernel), tuple(self.stride), tuple(self.pad),
                                 (1, 1), tuple(self.in_hw), tuple(self.pooled))
        tiles = self._tiles()
        if tiles is not None:
            return self._route_back_tiled(offset, dy, tiles, geo)
        if self.ROUTE_BY_ROWS:
            return self._route_back_by_rows(offset, dy, geo)
        shares = jnp.stack([jnp.where(offset == i, dy, _zero(dy)) for i in range(k)], axis=1)
        return conv_gemm.col2im(shares, geo)                     # (N, K, C, PH, PW) -> (N, C, H, W)

    def _route_back_by_rows(self, offset, dy, geo):
        """_route_back a kernel row at a time: row i's kw shares of dE/dy, each shifted
        to its column, are summed and added in place (dynamic_update_slice) into the
        padded dE/dx. The padded dE/dx is held as (N, C, T_h, s_h, T_w, s_w), position
        t * s + r at (t, r) (row-major, so it is the padded image itself, no interleave):
        kernel offset (i, j) reads, for window (oh, ow), position (oh + i // s_h,
        i % s_h, ow + j // s_w, j % s_w), so a row's shares are plain pads along
        (T_w, s_w) and the row lands at (i // s_h, i % s_h) along H.

        Why not col2im's kh * kw padded shares summed: inside a training step, where the
        input's diff also feeds the other branches' sum and the Concat's slices, XLA CPU
        computes that sum once per consumer, so it materializes every padded share first
        (GoogLeNet's inception pools, 3x3 stride 1 on 256x28x28: nine 30x30 shares of the
        whole batch). Where the forward runs in the same program without its offsets
        among the outputs, XLA also fuses the forward's whole window scan into col2im's
        single output loop and redoes it for each share it reads (3x3 stride 2 on
        64x28x28: 9 ms for a 1 ms forward). An in-place add is computed once, and its
        row updates read offsets that went through ``_computed_once``."""
        (kh, kw), PW, (sh, sw) = self.kernel, self.pooled[1], self.stride
        th, tw = conv_gemm._phase_spans(geo)     # per axis: PH + (kh - 1) // sh
        h, w = self._hw
        zero = _zero(dy)
        dx = jnp.zeros(self._six(dy.shape, (th, sh), (tw, sw)), dy.dtype)
        for i in range(kh):
            qh, rh = divmod(i, sh)
            row = None
            for j in range(kw):
                qw, rw = divmod(j, sw)
                share = self._split_hw(jnp.where(offset == i * kw + j, dy, zero))
                config = [(0, 0, 0)] * 6
                config[w + 1], config[w + 2] = (qw, tw - PW - qw, 0), (rw, sw - 1 - rw, 0)
                share = lax.pad(share, zero, config)
                row = share if row is None else row + share
            at = [0] * 6
            at[h], at[h + 1] = qh, rh
            dx = lax.dynamic_update_slice(dx, lax.dynamic_slice(dx, at, row.shape) + row, at)
        dx = conv_gemm._crop_to_input(dx.reshape(self._with_hw(dy.shape, th * sh, tw * sw)),
                                      geo, h)
        return engine.materialize(dx) if self.STORE_ROUTED_DIFF else dx

    def _tiles(self):
        """Per axis, the rows each window owns when no two windows share an element
        (kernel <= stride, or a single window, as in global pooling): the stride, or
        the kernel for a single window. None when windows overlap."""
        tiles = []
        for size, pooled, k, s, p in self._axes():
            tile = s if pooled > 1 else k
            if k > tile:
                return None
            tiles.append(tile)
        return tiles

    def _route_back_tiled(self, offset, dy, tiles, geo):
        """_route_back for windows that do not overlap: each window's tile of the padded
        input is one block of a (N, C, PH, tile_h, PW, tile_w) array, so dE/dx is a single
        select of dE/dy by offset, reshaped (no per-offset shares, no phases: global MAX
        pooling of a 7x7 map has 49 of them). Tile positions past the kernel (stride >
        kernel) get -2, which no offset equals."""
        (kh, kw), (PH, PW) = self.kernel, self.pooled
        th, tw = tiles
        grid = np.full((th, tw), -2, offset.dtype)
        grid[:kh, :kw] = np.arange(kh * kw).reshape(kh, kw)
        hit = self._split_hw(offset) == grid.reshape(self._six((1,) * 4, (1, th), (1, tw)))
        dx = jnp.where(hit, self._split_hw(dy), _zero(dy))
        dx = dx.reshape(self._with_hw(dy.shape, PH * th, PW * tw))
        return conv_gemm._crop_to_input(dx, geo, self._hw[0])   # padded [0, P * tile)

    # -- AVE -------------------------------------------------------------------
    def _pool_size(self, dtype):
        """Caffe's divisor: the window cut at the padded border (padding counts, overhang not),
        shaped (PH, PW) with a unit axis after W for channels-last arrays."""
        sizes = []
        for size, pooled, k, s, p in self._axes():
            start = _pool_windows(size, pooled, k, s, p)
            sizes.append(np.minimum(start + k, size + p) - start)
        out = np.asarray(np.outer(*sizes), dtype)
        return out.reshape(out.shape + (1,) * (3 - self._hw[1]))

    def _ave_forward(self, x):
        """Window sums of the zero-padded input, one axis at a time (kw strided views along
        W, then kh along H, fused by XLA: LeNet-sized 2x2 pools ran 4x slower as one
        ``reduce_window``), divided by Caffe's pool size."""
        (H, PH, kh, sh, ph), (W, PW, kw, sw, pw) = self._axes()
        h, w = self._hw
        pad_h, pad_w = self._pads()
        xp = jnp.pad(x, self._spatial(pad_h, pad_w, (0, 0)))
        sums = _window_views_sum(_window_views_sum(xp, w, kw, sw, PW), h, kh, sh, PH)
        return sums / self._pool_size(x.dtype)

    def _ave_backward(self, dy):
        """Each bottom element gets the sum of dE/dy / pool size over the windows covering it:
        the forward's two sums in reverse, each window's share spread over its rows, then
        over its columns (``_scatter_windows``), cut to the image."""
        (H, PH, kh, sh, ph), (W, PW, kw, sw, pw) = self._axes()
        h, w = self._hw
        share = dy / self._pool_size(dy.dtype)
        hp, wp = (PH - 1) * sh + kh, (PW - 1) * sw + kw
        dx = _scatter_windows([_scatter_windows([share] * kh, h, sh, hp)] * kw, w, sw, wp)
        dx = jnp.pad(dx, self._spatial((0, max(0, ph + H - hp)), (0, max(0, pw + W - wp)), (0, 0)))
        dx = dx[tuple(self._spatial(slice(ph, ph + H), slice(pw, pw + W), slice(None)))]
        # Cut from a bigger array (Caffe's pad, or the windows' phases running past the
        # image), dE/dx is stored once, as MAX's routed diff is (STORE_ROUTED_DIFF): left
        # to XLA, the cut was fused into each reader and into the copy to the step's
        # returned diff, run late, the uncut array a temporary until then (GoogLeNet's
        # aux classifiers' 5x5 stride 3 pools: 14 MB each, at the step's peak; its
        # temporaries 166 -> 138 MB, the step 0.992x stored, interval 0.976-1.008).
        # (cut where the forward pads, or where the stride's phases overshoot the windows)
        cut = any(itertools.chain(*self._pads())) or hp % sh or wp % sw
        return engine.materialize(dx) if cut and self.STORE_ROUTED_DIFF else dx


@register("LRN")
class LRN(JaxLayer):
    """y = x * scale^-beta, scale = k + alpha/n * (sum of x^2 over a local window of n elements);

    dE/dx = dE/dy * scale^-beta - 2 alpha beta/n * x * (window sum of dE/dy * y / scale).
    ACROSS_CHANNELS: window of local_size channels, n = local_size. WITHIN_CHANNEL: a
    local_size^2 spatial window zero-padded at the border, n = local_size^2, and k = 1
    (Caffe builds it from AVE pooling and a Power layer with shift 1).
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes):
        size = self.p.local_size
        if size % 2 != 1:
            self.fail("local_size must be odd, got %d", size)

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) != 4:
            self.fail("input must have 4 axes (num, channels, height, width), got shape %s",
                      shape_string(shape))
        return [shape]

    # The arrays' channel and spatial axes: Caffe's (N, C, H, W), or (N, H, W, C) where
    # the engine hands the bottom channels-last (jcaffe.engine, "channels-last runs":
    # GoogLeNet's LRNs sit between its first convolutions and its inceptions).
    _c, _hw = 1, (2, 3)

    def channels_last_ok(self):
        return True

    @contextlib.contextmanager
    def channels_last_context(self):
        self._c, self._hw = 3, (1, 2)
        try:
            yield
        finally:
            del self._c, self._hw

    def _window(self):
        """(n, k): the local sum's element count and the constant added to it."""
        size = self.p.local_size
        if self.p.norm_region == _LRN.WITHIN_CHANNEL:
            return size * size, 1.0
        return size, self.p.k

    def _local_sum(self, a):
        """The sum over each element's window: the zero-padded array's shifted slices added
        up, which XLA fuses with what surrounds it into one loop (across channels:
        local_size channel slices; within a channel: rows, then columns).
        ``reduce_window`` ran 1.1-1.5x slower across channels (CaffeNet's and GoogLeNet's
        LRN shapes, with the power below) and about 4x slower within a channel."""
        size = self.p.local_size
        half = (size - 1) // 2
        axes = self._hw if self.p.norm_region == _LRN.WITHIN_CHANNEL else (self._c,)
        ap = jnp.pad(a, [(half, half) if i in axes else (0, 0) for i in range(4)])
        for axis in reversed(axes):     # (within a channel: rows, then columns)
            ap = _window_views_sum(ap, axis, size, 1, a.shape[axis])
        return ap

    # The forward saves nothing: the backward computes the scale again from the bottom,
    # which the net keeps anyway. Saved, the scale (Caffe's scale_, the bottom's size) was
    # one of the residuals a fused step returns, kept from one step to the next. Inside
    # a fused step XLA merges the two computations and keeps the forward's padded squares
    # to the backward, a temporary (computing them again from x / a runtime 1 freed that,
    # but the recomputed arrays then met pool1's padded input at the step's peak: 426 MB
    # of temporaries against 376). GoogLeNet (batch 32, AMD Zen 1 VM): the step's
    # arguments 2631 -> 2529 MB, its XLA temporaries 361 -> 376 MB, peak RSS 3512 ->
    # 3422 MB; CaffeNet 1151 -> 1125 MB. False: the scale saved (to compare the two).
    RECOMPUTE_SCALE = True

    def _scale(self, x):
        n, k = self._window()
        return k + self.p.alpha * (self._local_sum(x * x) / n)

    def forward(self, params, bottoms, rng):
        x, = bottoms
        scale = self._scale(x)
        return [x * _negative_power(scale, self.p.beta)], None if self.RECOMPUTE_SCALE else scale

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        if not propagate_down[0]:
            return [None], []
        (x,), (y,), (dy,), scale = bottoms, tops, top_diffs, saved
        if scale is None:
            scale = engine.materialize(self._scale(x))
        n, _ = self._window()
        alpha, beta = self.p.alpha, self.p.beta
        ratio_sum = self._local_sum(dy * y / scale)
        dx = dy * _negative_power(scale, beta) - (2 * alpha * beta / n) * x * ratio_sum
        # Stored once (engine.materialize). A MAX pooling's backward below reads its top
        # diff in one in-place update per kernel row, and XLA fused this whole expression
        # (the window sum, the powers) into each of them and into the diff returned:
        # CaffeNet's pool1.backward took 29 ms and relu1's 10 with its LRN channels-
        # last, 16 and 2 stored. CaffeNet's step so (Convolution._groups_on_xla) took
        # 1.024x the time of Caffe's order without this, 0.969x with it; with its LRNs
        # in Caffe's order, and on GoogLeNet, storing measured level (0.988 and 0.996;
        # benchmarks/ab_step.py, 4-6 rounds, 2026-12-05).
        return [engine.materialize(dx)], []


def _negative_power(s, beta):
    """s ** -beta for s > 0; beta 0.75 (every zoo net's LRN), 0.5 and 1 by square roots
    and a reciprocal: XLA CPU computes a general power as exp(log), 2-6x slower than
    rsqrt(s) * sqrt(rsqrt(s)) on CaffeNet's and GoogLeNet's LRN inputs (within 3 ulp of
    the power in float32)."""
    if beta == 0.75:
        r = lax.rsqrt(s)
        return r * jnp.sqrt(r)
    if beta == 0.5:
        return lax.rsqrt(s)
    if beta == 1:
        return 1 / s
    return s ** -beta
