"""Recurrent layers: RNN, LSTM (Caffe's RecurrentLayer) and LSTMUnit.

Caffe builds RNN and LSTM as an unrolled net of InnerProduct, Scale, Eltwise,
TanH and LSTMUnit layers, one copy per timestep. Here the same math runs as one
``lax.scan`` over time, and backward is a hand-written reverse ``lax.scan``
(backpropagation through time). What a Caffe user sees is kept:

* bottoms ``x`` (T, N, ...), ``cont`` (T, N) and an optional static input
  ``x_static`` (N, ...); with ``expose_hidden`` also ``h_0`` (and ``c_0``), and
  tops ``h_T`` (and ``c_T``), each (1, N, num_output);
* ``cont_t`` scales the previous hidden state before it enters step t
  (``cont_t = 0`` starts a new sequence), and the LSTM forget gate;
* the param blobs in the unrolled net's order and shapes, so .caffemodel weights
  load: LSTM ``W_xc`` (4H, D), ``b_c`` (4H,), [``W_xc_static`` (4H, Ds)],
  ``W_hc`` (4H, H); RNN ``W_xh`` (H, D), ``b_h`` (H,), [``W_xh_static``
  (H, Ds)], ``W_hh`` (H, H), ``W_ho`` (H, H), ``b_o`` (H,); LSTM gates in
  Caffe's order i, f, o, g.

Without ``expose_hidden`` each forward starts from the previous forward's final
state, as Caffe's copies h_T (and c_T) into h_0 (and c_0): a stream whose
``cont`` is 1 at t = 0 goes on where the last batch left it (truncated
backpropagation through time: no diff crosses the batches). The net keeps that
state on the layer (``hidden_state``), per net (a solver's test net has its
own; data-parallel training one per device); it starts at zero,
:meth:`RecurrentLayer.reset` zeroes it (Caffe's ``Reset``), and a new number of
streams starts it at zero again (Caffe's reshaped blob keeps stale values).
``Net.to_jax`` functions given no ``state=`` (and the layer called alone) start
every forward from zero; a forward that so differs from Caffe (``cont`` nonzero
at t = 0) logs a warning, once per layer.

Differences from Caffe, on purpose: with ``expose_hidden`` the diffs of
``h_T``/``c_T`` are backpropagated and ``h_0``/``c_0`` receive their diffs
(Caffe drops both). The number of timesteps may change between forwards.
"""
import logging

import jax
import jax.numpy as jnp
from jax import lax

from ..blob import shape_count, shape_string
from ..errors import BackwardError
from ..layer import JaxLayer, register
from .common import times_weight_t

log = logging.getLogger("jcaffe")


def _no_backward_to_cont(layer, propagate_down, index):
    if propagate_down[index]:
        raise BackwardError("%s layer '%s' cannot backpropagate to the sequence continuation "
                            "indicators (bottom %d, cont); set propagate_down: false for it"
                            % (layer.type, layer.name, index))


class RecurrentLayer(JaxLayer):
    """Caffe's RecurrentLayer: shapes, bottoms/tops and params common to RNN and LSTM."""

    param_field = "recurrent_param"
    hidden_names = ()   # recurrent states exposed by expose_hidden ("h", "c")
    gates = 1           # the hidden pre-activation has gates * num_output channels

    @property
    def carries_state(self):
        return not self.p.expose_hidden

    def state_shapes(self):
        return [(self.N, self.H)] * len(self.hidden_names)

    def reset(self):
        """Zero the carried state (Caffe's RecurrentLayer::Reset): the next forward
        starts every stream from h_0 = c_0 = 0."""
        self.hidden_state = None

    @property
    def _num_exposed(self):
        return len(self.hidden_names) if self.p.expose_hidden else 0

    @property
    def min_bottom_blobs(self):
        return 2 + self._num_exposed

    @property
    def max_bottom_blobs(self):
        return 3 + self._num_exposed

    @property
    def exact_num_top_blobs(self):
        return 1 + self._num_exposed

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    # -- host: shapes and params ------------------------------------------------
    def setup(self, bottom_shapes):
        p = self.p
        if p.num_output <= 0:
            self.fail("recurrent_param.num_output must be positive, got %d", p.num_output)
        self.H = p.num_output
        self.static_input = len(bottom_shapes) > 2 + self._num_exposed
        self.hidden_start = 2 + int(self.static_input)
        x = bottom_shapes[0]
        self._check_x(x)
        self.D = shape_count(x, 2)
        self.Ds = None
        if self.static_input:
            xs = bottom_shapes[2]
            if len(xs) < 2:
                self.fail("bottom 2 (x_static) must have at least 2 axes (#streams, "
                          "features...), got shape %s: Caffe's unrolled net reads its "
                          "features from axis 1 on (an InnerProduct with axis 1)",
                          shape_string(xs))
            self.Ds = shape_count(xs, 1)
        log.info("Initializing recurrent layer: assuming input batch contains %d timesteps of %d "
                 "independent streams.", x[0], x[1])
        self.N = x[1]
        self.init_params(self.param_specs(), self.filler_rng)

    def _check_x(self, x):
        if len(x) < 3:
            self.fail("bottom 0 (x) must have at least 3 axes (#timesteps, #streams, "
                      "features...), got shape %s: Caffe's unrolled net reads the features "
                      "from axis 2 on (an InnerProduct with axis 2); give a (T, N) input a "
                      "third axis of 1 (a Reshape)", shape_string(x))

    def reshape(self, bottom_shapes):
        x, cont = bottom_shapes[0], bottom_shapes[1]
        self._check_x(x)
        T, N = x[0], x[1]
        self.N = N
        if len(cont) != 2 or tuple(cont) != (T, N):
            self.fail("bottom 1 (cont) must have shape (#timesteps, #streams) = (%d, %d) like "
                      "x, got %s", T, N, shape_string(cont))
        if shape_count(x, 2) != self.D:
            self.fail("bottom 0 (x) of shape %s has %d input features per step, the weights "
                      "were set up for %d", shape_string(x), shape_count(x, 2), self.D)
        if self.static_input:
            xs = bottom_shapes[2]
            if len(xs) < 1 or xs[0] != N or shape_count(xs, 1) != self.Ds:
                self.fail("bottom 2 (x_static) must have shape (%d, ...) with %d features, got "
                          "%s", N, self.Ds, shape_string(xs))
        state = (1, N, self.H)
        for j, name in enumerate(self.hidden_names[:self._num_exposed]):
            got = tuple(bottom_shapes[self.hidden_start + j])
            if got != state:
                self.fail("bottom %d (%s_0) must have shape %s, got %s", self.hidden_start + j,
                          name, shape_string(state), shape_string(got))
        return [(T, N, self.H)] + [state] * self._num_exposed

    def _input_specs(self):
        """[W_x (G, D), b (G,), [W_x_static (G, Ds)]] as Caffe's x_transform layers."""
        p, G = self.p, self.gates * self.H
        specs = [((G, self.D), p.weight_filler), ((G,), p.bias_filler)]
        if self.static_input:
            specs.append(((G, self.Ds), p.weight_filler))
        return specs

    # -- compiled: the parts shared by RNN and LSTM -----------------------------------
    def _w_h_index(self):
        return 3 if self.static_input else 2

    def _input_term(self, params, bottoms):
        """W_x x_t + b (+ W_x_static x_static) for every t: (T, N, G)."""
        x, cont = bottoms[0], bottoms[1]
        T, N = cont.shape
        X = x.reshape(T, N, self.D)
        pre = X @ params[0].T + params[1]
        if self.static_input:
            xs = bottoms[2].reshape(N, self.Ds)
            pre = pre + times_weight_t(xs, params[2])[None]
        return X, pre

    def _initial_state(self, bottoms, state, j, N, dtype):
        """h_0 (j = 0) or c_0 (j = 1), (N, H): the exposed bottom, the carried state, or
        zeros where no state is given (warning where Caffe's would not be zero)."""
        if self._num_exposed:
            return bottoms[self.hidden_start + j][0]
        if state is not None:
            return state[j].astype(dtype)
        if j == 0:
            self._warn_if_continued(bottoms[1][0])
        return jnp.zeros((N, self.H), dtype)

    def _warn_if_continued(self, cont_0):
        """Where cont is nonzero at t = 0, Caffe continues the stream from the last
        forward's h_T (and c_T); a forward given no state starts from zero. Say so when
        it happens, once per layer: the host is called only then (a lax.cond, as
        check_indices')."""
        continued, streams = jnp.sum(cont_0 != 0), cont_0.shape[0]

        def warn(n):
            if not getattr(self, "_warned_continued", False):
                self._warned_continued = True
                log.warning(
                    "%s layer '%s': cont is nonzero at t = 0 in %d of %d streams. Caffe "
                    "continues such a stream from the previous forward's final state "
                    "(h_T%s); this forward starts from zero state (a Net.to_jax function "
                    "given no state=), so from here its results differ from Caffe's. Start sequences with cont = 0 at t = 0, or use "
                    "expose_hidden and feed h_T%s back as h_0%s to continue them.",
                    self.type, self.name, int(n), streams,
                    *((", c_T", "/c_T", "/c_0") if len(self.hidden_names) > 1
                      else ("", "", "")))
        lax.cond(continued > 0, lambda: jax.debug.callback(warn, continued), lambda: None)

    def _input_diffs(self, params, bottoms, X, dpre, propagate_down):
        """Diffs of x, x_static and W_x, b, W_x_static from dE/d(pre-activation) (T, N, G)."""
        n_bottom = len(bottoms)
        bottom_diffs = [None] * n_bottom
        param_diffs = [None] * len(params)
        if propagate_down[0]:
            bottom_diffs[0] = (dpre @ params[0]).reshape(bottoms[0].shape)
        if self.wants_param_diff(0):
            param_diffs[0] = jnp.einsum("tng,tnd->gd", dpre, X)
        if self.wants_param_diff(1):
            param_diffs[1] = jnp.sum(dpre, axis=(0, 1))
        if self.static_input:
            dsum = jnp.sum(dpre, axis=0)
            xs = bottoms[2].reshape(dsum.shape[0], self.Ds)
            if propagate_down[2]:
                bottom_diffs[2] = (dsum @ params[2]).reshape(bottoms[2].shape)
            if self.wants_param_diff(2):
                param_diffs[2] = dsum.T @ xs
        return bottom_diffs, param_diffs


def _previous(first, seq):
    """(T, ...) values at t-1: ``first`` then seq[:-1]."""
    return jnp.concatenate([first[None], seq[:-1]], axis=0)


@register("RNN")
class RNN(RecurrentLayer):
    """h_t = tanh(W_xh x_t + b_h [+ W_xh_static x_static] + W_hh (cont_t h_{t-1}));
    o_t = tanh(W_ho h_t + b_o). Top: o (T, N, H) [, h_T].

    Backward: dE/da_t = (dE/dh_t) (1 - h_t^2) with dE/dh_t from o_t and from
    step t+1 (cont_{t+1} W_hh^T dE/da_{t+1}), run backwards in time.
    """

    hidden_names = ("h",)

    def param_specs(self):
        p, H = self.p, self.H
        return self._input_specs() + [((H, H), p.weight_filler), ((H, H), p.weight_filler),
                                      ((H,), p.bias_filler)]

    def forward(self, params, bottoms, rng, state=None):
        k = self._w_h_index()
        w_hh, w_ho, b_o = params[k], params[k + 1], params[k + 2]
        cont = bottoms[1]
        _, pre = self._input_term(params, bottoms)
        h0 = self._initial_state(bottoms, state, 0, cont.shape[1], pre.dtype)

        def step(h_prev, inputs):
            pre_t, cont_t = inputs
            h = jnp.tanh(pre_t + times_weight_t(cont_t[:, None] * h_prev, w_hh))
            return h, h

        h_T, hs = lax.scan(step, h0, (pre, cont))
        o = jnp.tanh(hs @ w_ho.T + b_o)
        tops = [o] + ([h_T[None]] if self._num_exposed else [])
        return tops, (h0, hs, o), (h_T,)

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        _no_backward_to_cont(self, propagate_down, 1)
        k = self._w_h_index()
        w_hh, w_ho = params[k], params[k + 1]
        h0, hs, o = saved
        cont = bottoms[1][..., None]
        X, _ = self._input_term(params, bottoms)
        do_pre = top_diffs[0] * (1 - o * o)
        dh_from_o = do_pre @ w_ho
        dh_T = top_diffs[1][0] if self._num_exposed else jnp.zeros_like(h0)

        def step(dh_next, inputs):
            dh_t, h_t, cont_t = inputs
            da = (dh_t + dh_next) * (1 - h_t * h_t)
            return cont_t * (da @ w_hh), da

        dh0, da = lax.scan(step, dh_T, (dh_from_o, hs, cont), reverse=True)
        bottom_diffs, param_diffs = self._input_diffs(params, bottoms, X, da, propagate_down)
        if self.wants_param_diff(k):
            param_diffs[k] = jnp.einsum("tnh,tnk->hk", da, cont * _previous(h0, hs))
        if self.wants_param_diff(k + 1):
            param_diffs[k + 1] = jnp.einsum("tnh,tnk->hk", do_pre, hs)
        if self.wants_param_diff(k + 2):
            param_diffs[k + 2] = jnp.sum(do_pre, axis=(0, 1))
        if self._num_exposed and propagate_down[self.hidden_start]:
            bottom_diffs[self.hidden_start] = dh0[None]
        return bottom_diffs, param_diffs


def _lstm_act(pre, H):
    """The gates' activations in Caffe's order i, f, o, g, one array: sigmoid over the
    first 3H columns, tanh over the last H, and the gates sliced from it. With a sigmoid
    per gate XLA's CPU loop recomputed them where it fused them into their consumers:
    a step of char-rnn's deploy LSTM (50 streams, 128 units; its product 65 us) took
    154 us, 88 so; its deploy forward 0.687x the time (benchmarks/ab_step.py
    --interleave, 3 rounds of 30), its training step level (1.000, 0.988-1.012: the
    step keeps the activations for the backward, so XLA computed them once already)."""
    return jnp.concatenate([jax.nn.sigmoid(pre[..., :3 * H]), jnp.tanh(pre[..., 3 * H:])],
                           axis=-1)


def _lstm_gates(act, H):
    """(i, f, o, g) of :func:`_lstm_act`'s array."""
    return tuple(act[..., j * H:(j + 1) * H] for j in range(4))


def _lstm_cell(c_prev, gates, cont):
    """c = cont * f * c_prev + i * g;  h = o * tanh(c)  (cont broadcast over channels)."""
    i, f, o, g = gates
    c = cont * f * c_prev + i * g
    return c, o * jnp.tanh(c)


def _lstm_cell_backward(dc, dh, c, c_prev, gates, cont):
    """From dE/dc (from later steps) and dE/dh: dE/d(gate pre-activations), dE/dc_prev."""
    i, f, o, g = gates
    tanh_c = jnp.tanh(c)
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    dpre = jnp.concatenate([dc * g * i * (1 - i), dc * c_prev * cont * f * (1 - f),
                            dh * tanh_c * o * (1 - o), dc * i * (1 - g * g)], axis=-1)
    return dpre, dc * cont * f


@register("LSTM")
class LSTM(RecurrentLayer):
    """gates_t = W_xc x_t + b_c [+ W_xc_static x_static] + W_hc (cont_t h_{t-1}) = (i, f, o, g);
    c_t = cont_t f_t c_{t-1} + i_t g_t;  h_t = o_t tanh(c_t). Top: h (T, N, H) [, h_T, c_T].

    Backward: LSTMUnit's backward at each step, run backwards in time, with
    dE/dh_{t-1} = cont_t W_hc^T dE/dgates_t added to the top diff of h_{t-1}.
    """

    hidden_names = ("h", "c")
    gates = 4

    def param_specs(self):
        return self._input_specs() + [((4 * self.H, self.H), self.p.weight_filler)]

    def forward(self, params, bottoms, rng, state=None):
        H, w_hc = self.H, params[self._w_h_index()]
        cont = bottoms[1]
        _, pre = self._input_term(params, bottoms)
        N = cont.shape[1]
        h0 = self._initial_state(bottoms, state, 0, N, pre.dtype)
        c0 = self._initial_state(bottoms, state, 1, N, pre.dtype)

        def step(state, inputs):
            h_prev, c_prev = state
            pre_t, cont_t = inputs
            cont_t = cont_t[:, None]
            act = _lstm_act(pre_t + times_weight_t(cont_t * h_prev, w_hc), H)
            c, h = _lstm_cell(c_prev, _lstm_gates(act, H), cont_t)
            return (h, c), (h, c, act)

        (h_T, c_T), (hs, cs, acts) = lax.scan(step, (h0, c0), (pre, cont))
        tops = [hs] + ([h_T[None], c_T[None]] if self._num_exposed else [])
        return tops, (h0, c0, hs, cs, acts), (h_T, c_T)

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        _no_backward_to_cont(self, propagate_down, 1)
        H, k = self.H, self._w_h_index()
        w_hc = params[k]
        h0, c0, hs, cs, acts = saved
        cont = bottoms[1][..., None]
        X, _ = self._input_term(params, bottoms)
        if self._num_exposed:
            last = (top_diffs[1][0], top_diffs[2][0])
        else:
            last = (jnp.zeros_like(h0), jnp.zeros_like(c0))

        def step(d_next, inputs):
            dh_next, dc_next = d_next
            dh_t, c_t, c_prev, act_t, cont_t = inputs
            dpre, dc_prev = _lstm_cell_backward(dc_next, dh_t + dh_next, c_t, c_prev,
                                                _lstm_gates(act_t, H), cont_t)
            return (cont_t * (dpre @ w_hc), dc_prev), dpre

        (dh0, dc0), dpre = lax.scan(step, last, (top_diffs[0], cs, _previous(c0, cs), acts, cont),
                                    reverse=True)
        bottom_diffs, param_diffs = self._input_diffs(params, bottoms, X, dpre, propagate_down)
        if self.wants_param_diff(k):
            param_diffs[k] = jnp.einsum("tng,tnh->gh", dpre, cont * _previous(h0, hs))
        if self._num_exposed:
            for j, d0 in enumerate((dh0, dc0)):
                if propagate_down[self.hidden_start + j]:
                    bottom_diffs[self.hidden_start + j] = d0[None]
        return bottom_diffs, param_diffs


@register("LSTMUnit")
class LSTMUnit(JaxLayer):
    """One LSTM step. Bottoms c_prev (1, N, H), x (1, N, 4H) = gate pre-activations
    (i, f, o, g), cont (1, N); tops c (1, N, H), h (1, N, H):
    c = cont f c_prev + i g,  h = o tanh(c), f = sigmoid(x_f) (i, o likewise), g = tanh(x_g).

    Backward to c_prev and x (LSTM's per-step backward); never to cont.
    """

    exact_num_bottom_blobs = 3
    exact_num_top_blobs = 2

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def reshape(self, bottom_shapes):
        c_prev, x, cont = (tuple(s) for s in bottom_shapes)
        names = ("c_prev", "x", "cont")
        for i, (name, shape) in enumerate(zip(names, (c_prev, x, cont))):
            axes = 2 if i == 2 else 3
            if len(shape) != axes or shape[0] != 1 or shape[1] != c_prev[1]:
                self.fail("bottom %d (%s) must have %d axes (1, #streams%s) with #streams = %d, "
                          "got %s", i, name, axes, "" if i == 2 else ", ...",
                          c_prev[1] if len(c_prev) > 1 else -1, shape_string(shape))
        self.H = c_prev[2]
        if x[2] != 4 * self.H:
            self.fail("bottom 1 (x) must have 4 * %d = %d channels (gates i, f, o, g), got %s",
                      self.H, 4 * self.H, shape_string(x))
        return [c_prev, c_prev]

    def forward(self, params, bottoms, rng):
        c_prev, x, cont = bottoms
        c, h = _lstm_cell(c_prev, _lstm_gates(_lstm_act(x, self.H), self.H), cont[..., None])
        return [c, h], c

    def backward(self, params, bottoms, tops, saved, top_diffs, propagate_down):
        _no_backward_to_cont(self, propagate_down, 2)
        if not (propagate_down[0] or propagate_down[1]):
            return [None, None, None], []
        c_prev, x, cont = bottoms
        dc, dh = top_diffs
        dx, dc_prev = _lstm_cell_backward(dc, dh, saved, c_prev,
                                          _lstm_gates(_lstm_act(x, self.H), self.H),
                                          cont[..., None])
        return [dc_prev if propagate_down[0] else None, dx if propagate_down[1] else None,
                None], []
