"""RNN, LSTM and LSTMUnit: forward vs numpy re-implementations of Caffe's unrolled
nets (one timestep at a time, Caffe's formulas), backward vs jax.vjp (float64),
shapes, param order, cont resets, expose_hidden, static input, errors,
propagate_down, and an LSTM captioning net built from a prototxt."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcaffe
from jcaffe.errors import BackwardError, LayerSetupError
from layer_testing import make_layer

DATA = os.path.join(os.path.dirname(__file__), "data")
FILLERS = ('weight_filler { type: "gaussian" std: 0.5 } '
           'bias_filler { type: "gaussian" std: 0.5 }')


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _tanh(x):
    return 2 * _sigmoid(2 * x) - 1        # Caffe's LSTMUnit writes tanh this way


def _snippet(type_name, H, expose=False):
    return ('type: "%s" recurrent_param { num_output: %d expose_hidden: %s %s }'
            % (type_name, H, "true" if expose else "false", FILLERS))


def _weights(layer):
    return [np.asarray(b.data) for b in layer.blobs]


def _params(layer):
    return [jnp.asarray(b.data) for b in layer.blobs]


def forward(layer, bottoms):
    """(tops, saved) of one jitted forward (eager lax.scan compiles op by op: slow)."""
    fn = jax.jit(lambda params, bottoms: layer.forward(params, bottoms, None)[:2])
    return fn(_params(layer), [jnp.asarray(b) for b in bottoms])


def check_backward(layer, bottoms, propagate_down, rtol, atol, state=None):
    """The hand-written backward == jax.vjp of the forward, in one jitted call
    (tests/layer_testing.check_backward's comparison); ``state``: the carried state
    the forward starts from (Net's), held fixed."""
    top_shapes = layer.top_shapes
    v = [jnp.asarray(np.random.default_rng(1).standard_normal(s)) for s in top_shapes]
    kw = {} if state is None else {"state": tuple(jnp.asarray(a) for a in state)}

    @jax.jit
    def both(params, bottoms, v):
        tops, vjp = jax.vjp(lambda p, b: layer.forward(p, b, None, **kw)[0], params, bottoms)
        saved = layer.forward(params, bottoms, None, **kw)[1]
        return vjp(v), layer.backward(params, bottoms, tops, saved, v, tuple(propagate_down))

    (ref_params, ref_bottoms), (bottom_diffs, param_diffs) = both(
        _params(layer), [jnp.asarray(b) for b in bottoms], v)
    for i, pd in enumerate(propagate_down):
        if pd:
            np.testing.assert_allclose(np.asarray(bottom_diffs[i]), np.asarray(ref_bottoms[i]),
                                       rtol=rtol, atol=atol, err_msg="bottom %d diff" % i)
    for i, ref in enumerate(ref_params):
        np.testing.assert_allclose(np.asarray(param_diffs[i]), np.asarray(ref),
                                   rtol=rtol, atol=atol, err_msg="param %d diff" % i)
    return bottom_diffs, param_diffs


def lstm_reference(x, cont, W_xc, b_c, W_hc, x_static=None, W_xc_static=None, h0=None, c0=None):
    """Caffe's unrolled LSTM net, layer by layer, one timestep at a time."""
    T, N = cont.shape
    H = W_hc.shape[1]
    W_xc_x = x.reshape(T, N, -1) @ W_xc.T + b_c                    # x_transform
    static = 0 if x_static is None else x_static.reshape(N, -1) @ W_xc_static.T
    h = np.zeros((N, H)) if h0 is None else h0[0]
    c = np.zeros((N, H)) if c0 is None else c0[0]
    hs = []
    for t in range(T):
        h_conted = cont[t][:, None] * h                               # Scale layer
        gate_input = h_conted @ W_hc.T + W_xc_x[t] + static           # Eltwise SUM
        i = _sigmoid(gate_input[:, :H])                               # LSTMUnit
        f = np.where(cont[t][:, None] == 0, 0, cont[t][:, None] * _sigmoid(gate_input[:, H:2 * H]))
        o = _sigmoid(gate_input[:, 2 * H:3 * H])
        g = _tanh(gate_input[:, 3 * H:])
        c = f * c + i * g
        h = o * _tanh(c)
        hs.append(h)
    return np.stack(hs), h[None], c[None]


def rnn_reference(x, cont, W_xh, b_h, W_hh, W_ho, b_o, x_static=None, W_xh_static=None, h0=None):
    T, N = cont.shape
    W_xh_x = x.reshape(T, N, -1) @ W_xh.T + b_h
    static = 0 if x_static is None else x_static.reshape(N, -1) @ W_xh_static.T
    h = np.zeros((N, W_hh.shape[0])) if h0 is None else h0[0]
    os_ = []
    for t in range(T):
        h = np.tanh((cont[t][:, None] * h) @ W_hh.T + W_xh_x[t] + static)
        os_.append(np.tanh(h @ W_ho.T + b_o))
    return np.stack(os_), h[None]


def _cont(T, N, rng):
    """Sequence starts at t = 0 and a few restarts later."""
    cont = (rng.random((T, N)) > 0.3).astype(np.float64)
    cont[0] = 0
    return cont


# -- shapes and params ---------------------------------------------------------
@pytest.mark.parametrize("static", [False, True])
def test_lstm_param_order_and_shapes_are_caffes(static):
    shapes = [(5, 2, 3, 2), (5, 2)] + ([(2, 4, 1)] if static else [])
    layer = make_layer(_snippet("LSTM", 7), shapes)
    expected = [(28, 6), (28,)] + ([(28, 4)] if static else []) + [(28, 7)]  # W_xc b_c [W_xc_static] W_hc
    assert [b.shape for b in layer.blobs] == expected
    assert layer.reshape(shapes) == [(5, 2, 7)]


@pytest.mark.parametrize("static", [False, True])
def test_rnn_param_order_and_shapes_are_caffes(static):
    shapes = [(4, 3, 5), (4, 3)] + ([(3, 2)] if static else [])
    layer = make_layer(_snippet("RNN", 6), shapes)
    # W_xh b_h [W_xh_static] W_hh W_ho b_o
    expected = [(6, 5), (6,)] + ([(6, 2)] if static else []) + [(6, 6), (6, 6), (6,)]
    assert [b.shape for b in layer.blobs] == expected
    assert layer.reshape(shapes) == [(4, 3, 6)]


def test_expose_hidden_adds_state_bottoms_and_tops():
    lstm = make_layer(_snippet("LSTM", 3, expose=True), [(4, 2, 5), (4, 2), (1, 2, 3), (1, 2, 3)])
    assert lstm.num_top == 3
    assert lstm.top_shapes == ((4, 2, 3), (1, 2, 3), (1, 2, 3))
    rnn = make_layer(_snippet("RNN", 3, expose=True), [(4, 2, 5), (4, 2), (2, 6), (1, 2, 3)])
    assert rnn.static_input and rnn.top_shapes == ((4, 2, 3), (1, 2, 3))
    assert [b.shape for b in rnn.blobs][2] == (3, 6)       # W_xh_static


def test_fillers_follow_recurrent_param():
    layer = make_layer('type: "LSTM" recurrent_param { num_output: 2 '
                       'weight_filler { type: "constant" value: 0.5 } '
                       'bias_filler { type: "constant" value: -1 } }', [(3, 1, 2), (3, 1)])
    w_xc, b_c, w_hc = _weights(layer)
    assert np.all(w_xc == 0.5) and np.all(w_hc == 0.5) and np.all(b_c == -1)


# -- forward vs Caffe's unrolled nets ---------------------------------------------
@pytest.fixture(params=[False, True], ids=["plain", "weight_first"])
def weight_first(request, monkeypatch):
    """Both forms of the hidden-to-hidden products (jcaffe.layers.common.times_weight_t):
    with its threshold at 0 these small weights take (W h^T)^T on CPU, as big ones do."""
    if request.param:
        from jcaffe.layers import common
        monkeypatch.setattr(common, "WEIGHT_FIRST_MIN_BYTES", 0)
    return request.param


@pytest.mark.parametrize("static", [False, True])
def test_lstm_forward_matches_unrolled_net(x64, rng, static, weight_first):
    T, N = 6, 3
    shapes = [(T, N, 2, 2), (T, N)] + ([(N, 3)] if static else [])
    layer = make_layer(_snippet("LSTM", 4), shapes)
    x, cont = rng.standard_normal(shapes[0]), _cont(T, N, rng)
    bottoms = [x, cont] + ([rng.standard_normal(shapes[2])] if static else [])
    tops, _ = forward(layer, bottoms)
    w = _weights(layer)
    if static:
        ref, _, _ = lstm_reference(x, cont, w[0], w[1], w[3], bottoms[2], w[2])
    else:
        ref, _, _ = lstm_reference(x, cont, *w)
    np.testing.assert_allclose(np.asarray(tops[0]), ref, rtol=1e-12, atol=1e-12)
    assert tops[0].dtype == jnp.float64


@pytest.mark.parametrize("static", [False, True])
def test_rnn_forward_matches_unrolled_net(x64, rng, static, weight_first):
    T, N = 5, 2
    shapes = [(T, N, 3), (T, N)] + ([(N, 2, 2)] if static else [])
    layer = make_layer(_snippet("RNN", 4), shapes)
    x, cont = rng.standard_normal(shapes[0]), _cont(T, N, rng)
    bottoms = [x, cont] + ([rng.standard_normal(shapes[2])] if static else [])
    tops, _ = forward(layer, bottoms)
    w = _weights(layer)
    if static:
        ref, _ = rnn_reference(x, cont, w[0], w[1], w[3], w[4], w[5], bottoms[2], w[2])
    else:
        ref, _ = rnn_reference(x, cont, *w)
    np.testing.assert_allclose(np.asarray(tops[0]), ref, rtol=1e-12, atol=1e-12)


def test_expose_hidden_starts_from_h0_c0_and_returns_final_state(x64, rng):
    T, N, H = 4, 2, 3
    shapes = [(T, N, 2), (T, N), (1, N, H), (1, N, H)]
    layer = make_layer(_snippet("LSTM", H, expose=True), shapes)
    x, h0, c0 = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[2]), \
        rng.standard_normal(shapes[3])
    cont = np.ones((T, N))
    tops, _ = forward(layer, [x, cont, h0, c0])
    ref, h_T, c_T = lstm_reference(x, cont, *_weights(layer), h0=h0, c0=c0)
    for got, want in zip(tops, (ref, h_T, c_T)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)
    # Feeding h_T/c_T back continues the sequence: two halves == the whole.
    first, _ = forward(layer, [x[:2], cont[:2], h0, c0])
    second, _ = forward(layer, [x[2:], cont[2:], first[1], first[2]])
    np.testing.assert_allclose(np.concatenate([first[0], second[0]]), ref, rtol=1e-12)

    rnn = make_layer(_snippet("RNN", H, expose=True), shapes[:3])
    tops, _ = forward(rnn, [x, cont, h0])
    ref, h_T = rnn_reference(x, cont, *_weights(rnn), h0=h0)
    np.testing.assert_allclose(np.asarray(tops[0]), ref, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(tops[1]), h_T, rtol=1e-12)


@pytest.mark.parametrize("type_name", ["LSTM", "RNN"])
def test_cont_zero_starts_a_new_sequence(x64, rng, type_name):
    """Outputs from a cont = 0 step on do not depend on anything before it."""
    T, N = 6, 2
    layer = make_layer(_snippet(type_name, 3), [(T, N, 2), (T, N)])
    x, cont = rng.standard_normal((T, N, 2)), np.ones((T, N))
    cont[0] = 0
    cont[3, 0] = 0                               # stream 0 restarts at t = 3
    full, _ = forward(layer, [x, cont])
    x2 = x.copy()
    x2[:3, 0] = rng.standard_normal((3, 2))      # change stream 0 before the restart
    changed, _ = forward(layer, [x2, cont])
    np.testing.assert_allclose(np.asarray(changed[0])[3:, 0], np.asarray(full[0])[3:, 0],
                               rtol=1e-13)
    assert not np.allclose(np.asarray(changed[0])[:3, 0], np.asarray(full[0])[:3, 0])
    np.testing.assert_allclose(np.asarray(changed[0])[:, 1], np.asarray(full[0])[:, 1])
    # The restarted part equals a fresh run over the suffix.
    fresh = cont[3:].copy()
    fresh[0] = 0
    suffix, _ = forward(layer, [x[3:], fresh])
    np.testing.assert_allclose(np.asarray(suffix[0])[:, 0], np.asarray(full[0])[3:, 0], rtol=1e-12)


def test_lstm_is_a_chain_of_lstm_units(x64, rng):
    """LSTM == InnerProduct gate inputs fed step by step through jcaffe's LSTMUnit."""
    T, N, H = 4, 3, 2
    lstm = make_layer(_snippet("LSTM", H), [(T, N, 5), (T, N)])
    unit = make_layer('type: "LSTMUnit"', [(1, N, H), (1, N, 4 * H), (1, N)])
    x, cont = rng.standard_normal((T, N, 5)), _cont(T, N, rng)
    w_xc, b_c, w_hc = _weights(lstm)
    h, c = np.zeros((1, N, H)), np.zeros((1, N, H))
    whole = np.asarray(forward(lstm, [x, cont])[0][0])
    for t in range(T):
        gates = (cont[t][:, None] * h[0]) @ w_hc.T + x[t] @ w_xc.T + b_c
        (c, h), _ = forward(unit, [c, gates[None], cont[t][None]])
        c, h = np.asarray(c), np.asarray(h)
        np.testing.assert_allclose(whole[t], h[0], rtol=1e-12)


def test_timesteps_and_streams_may_change(x64, rng):
    layer = make_layer(_snippet("LSTM", 3), [(4, 2, 2), (4, 2)])
    assert layer.do_reshape([(7, 5, 2), (7, 5)]) == ((7, 5, 3),)
    x, cont = rng.standard_normal((7, 5, 2)), _cont(7, 5, rng)
    tops, _ = forward(layer, [x, cont])
    np.testing.assert_allclose(np.asarray(tops[0]), lstm_reference(x, cont, *_weights(layer))[0],
                               rtol=1e-12)


def test_float32_keeps_dtype(rng):
    layer = make_layer(_snippet("LSTM", 3), [(3, 2, 4), (3, 2)], dtype=np.float32)
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    cont = np.ones((3, 2), np.float32)
    tops, saved = forward(layer, [x, cont])
    assert tops[0].dtype == jnp.float32
    ref = lstm_reference(x.astype(np.float64), cont, *[w.astype(np.float64) for w in _weights(layer)])
    np.testing.assert_allclose(np.asarray(tops[0]), ref[0], rtol=1e-5, atol=1e-6)
    (dx, _), _ = layer.backward([jnp.asarray(b.data) for b in layer.blobs],
                                [jnp.asarray(x), jnp.asarray(cont)], tops, saved,
                                [jnp.ones_like(tops[0])], (True, False))
    assert dx.dtype == jnp.float32


# -- backward: BPTT vs jax.vjp --------------------------------------------------
@pytest.mark.parametrize("type_name", ["LSTM", "RNN"])
def test_bptt_matches_vjp(x64, rng, type_name, weight_first):
    """Static input, expose_hidden (diffs into h_0/c_0 and from h_T/c_T) and a cont
    that restarts sequences and otherwise scales h_{t-1} by any real value: the
    diffs are exact for any cont (gradcheck's spec draws the usual 0/1 cont)."""
    T, N, H = 5, 3, 4
    shapes = [(T, N, 2, 3), (T, N), (N, 3)] + [(1, N, H)] * (2 if type_name == "LSTM" else 1)
    layer = make_layer(_snippet(type_name, H, expose=True), shapes)
    bottoms = [rng.standard_normal(s) for s in shapes]
    bottoms[1] = rng.uniform(-1.5, 1.5, (T, N)) * _cont(T, N, rng)
    pd = [True] * len(shapes)
    pd[1] = False
    bottom_diffs, param_diffs = check_backward(layer, bottoms, pd, rtol=1e-9, atol=1e-11)
    assert bottom_diffs[1] is None
    assert len(param_diffs) == len(layer.blobs) and all(d is not None for d in param_diffs)


@pytest.mark.parametrize("type_name", ["LSTM", "RNN"])
def test_bptt_from_a_carried_state_matches_vjp(x64, rng, type_name):
    """From the state a net carries in (Caffe's h_0 = last h_T), W_hh/W_hc's diff has
    the t = 0 term cont_0 h_0; no diff goes to the state (truncated BPTT)."""
    T, N, H = 4, 3, 2
    layer = make_layer(_snippet(type_name, H), [(T, N, 2), (T, N)])
    state = [rng.standard_normal((N, H)) for _ in layer.state_shapes()]
    bottoms = [rng.standard_normal((T, N, 2)), rng.uniform(0.5, 1.5, (T, N))]
    _, param_diffs = check_backward(layer, bottoms, [True, False], rtol=1e-9, atol=1e-11,
                                    state=state)
    _, from_zero = check_backward(layer, bottoms, [True, False], rtol=1e-9, atol=1e-11)
    k = layer._w_h_index()
    assert not np.allclose(np.asarray(param_diffs[k]), np.asarray(from_zero[k]))


def test_propagate_down_and_lr_mult_zero(x64, rng):
    shapes = [(3, 2, 4), (3, 2), (2, 5)]
    layer = make_layer(_snippet("LSTM", 2), shapes)
    layer.param_propagate_down = [True, False, True, False]     # as lr_mult: 0 on b_c, W_hc
    bottoms = [rng.standard_normal(s) for s in shapes]
    bottoms[1] = np.ones((3, 2))
    tops, saved = forward(layer, bottoms)
    params = [jnp.asarray(b.data) for b in layer.blobs]
    bottom_diffs, param_diffs = layer.backward(params, [jnp.asarray(b) for b in bottoms], tops,
                                               saved, [jnp.ones_like(tops[0])],
                                               (False, False, True))
    assert bottom_diffs[0] is None and bottom_diffs[1] is None and bottom_diffs[2] is not None
    assert param_diffs[1] is None and param_diffs[3] is None
    assert param_diffs[0] is not None and param_diffs[2] is not None


@pytest.mark.parametrize("type_name", ["LSTM", "RNN"])
def test_backward_does_not_read_the_top(x64, rng, type_name):
    """An in-place layer after RNN/LSTM (Dropout on its top, as in LRCN nets) may
    overwrite the top; BPTT uses its own saved states, as Caffe's unrolled net does."""
    layer = make_layer(_snippet(type_name, 3), [(3, 2, 4), (3, 2)])
    bottoms = [jnp.asarray(rng.standard_normal((3, 2, 4))), jnp.ones((3, 2))]
    tops, saved = forward(layer, bottoms)
    dy = [jnp.asarray(rng.standard_normal(tops[0].shape))]
    backward = jax.jit(lambda tops: layer.backward(_params(layer), bottoms, tops, saved, dy,
                                                   (True, False)))
    (dx, _), dparams = backward(tops)
    (dx2, _), dparams2 = backward([jnp.zeros_like(tops[0])])
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(dx2))
    for a, b in zip(dparams, dparams2):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("type_name,cont_index,snippet_fn", [
    ("LSTM", 1, lambda: _snippet("LSTM", 2)), ("RNN", 1, lambda: _snippet("RNN", 2)),
    ("LSTMUnit", 2, lambda: 'type: "LSTMUnit"')])
def test_no_backward_to_cont(x64, type_name, cont_index, snippet_fn):
    shapes = [(1, 2, 2), (1, 2, 8), (1, 2)] if type_name == "LSTMUnit" else [(3, 2, 2), (3, 2)]
    layer = make_layer(snippet_fn(), shapes)
    assert not layer.allow_force_backward(cont_index)
    assert all(layer.allow_force_backward(i) for i in range(len(shapes)) if i != cont_index)
    bottoms = [jnp.ones(s) for s in shapes]
    tops, saved = forward(layer, bottoms)
    pd = [False] * len(shapes)
    pd[cont_index] = True
    with pytest.raises(BackwardError, match="%s layer '%s'.*sequence continuation.*bottom %d"
                       % (type_name, type_name.lower(), cont_index)):
        layer.backward([jnp.asarray(b.data) for b in layer.blobs], bottoms, tops, saved,
                       [jnp.ones_like(t) for t in tops], tuple(pd))


# -- LSTMUnit --------------------------------------------------------------------
def test_lstm_unit_forward_and_caffes_backward_formulas(x64, rng):
    N, H = 3, 4
    layer = make_layer('type: "LSTMUnit"', [(1, N, H), (1, N, 4 * H), (1, N)])
    assert layer.top_shapes == ((1, N, H), (1, N, H))
    c_prev, X = rng.standard_normal((1, N, H)), rng.standard_normal((1, N, 4 * H))
    cont = np.array([[1.0, 0.0, 1.0]])
    (c, h), saved = forward(layer, [c_prev, X, cont])
    i, f, o, g = (_sigmoid(X[..., :H]), _sigmoid(X[..., H:2 * H]), _sigmoid(X[..., 2 * H:3 * H]),
                  _tanh(X[..., 3 * H:]))
    f = np.where(cont[..., None] == 0, 0, cont[..., None] * f)
    c_ref = f * c_prev + i * g
    np.testing.assert_allclose(np.asarray(c), c_ref, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(h), o * _tanh(c_ref), rtol=1e-12)
    # Caffe's Backward_cpu, written out.
    dc, dh = rng.standard_normal((1, N, H)), rng.standard_normal((1, N, H))
    tanh_c = _tanh(c_ref)
    c_term = dc + dh * o * (1 - tanh_c ** 2)
    ref_dx = np.concatenate([c_term * g * i * (1 - i), c_term * c_prev * f * (1 - f),
                             dh * tanh_c * o * (1 - o), c_term * i * (1 - g * g)], axis=-1)
    (dc_prev, dx, dcont), _ = layer.backward([], [jnp.asarray(a) for a in (c_prev, X, cont)],
                                             [c, h], saved, [jnp.asarray(dc), jnp.asarray(dh)],
                                             (True, True, False))
    np.testing.assert_allclose(np.asarray(dc_prev), c_term * f, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(dx), ref_dx, rtol=1e-12, atol=1e-14)
    assert dcont is None
    check_backward(layer, [c_prev, X, cont], [True, True, False], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shapes,match", [
    ([(1, 2, 3), (1, 2, 10), (1, 2)], "bottom 1 \\(x\\) must have 4 \\* 3 = 12 channels"),
    ([(2, 2, 3), (1, 2, 12), (1, 2)], "bottom 0 \\(c_prev\\) must have 3 axes"),
    ([(1, 2, 3), (1, 3, 12), (1, 2)], "bottom 1 \\(x\\) must have 3 axes .* #streams = 2"),
    ([(1, 2, 3), (1, 2, 12), (1, 2, 1)], "bottom 2 \\(cont\\) must have 2 axes"),
])
def test_lstm_unit_shape_errors(shapes, match):
    with pytest.raises(LayerSetupError, match="LSTMUnit layer 'lstmunit': " + match):
        make_layer('type: "LSTMUnit"', shapes)


# -- errors ------------------------------------------------------------------------
@pytest.mark.parametrize("snippet,shapes,match", [
    ('type: "LSTM" recurrent_param { }', [(3, 2, 4), (3, 2)], "num_output must be positive"),
    (_snippet("LSTM", 2), [(3,), (3, 2)], "bottom 0 \\(x\\) must have at least 3 axes"),
    (_snippet("RNN", 2), [(3, 2), (3, 2)], "at least 3 axes .* got shape 3 2 .*axis 2"),
    (_snippet("LSTM", 2), [(3, 2, 4), (3, 2), (2,)],
     "bottom 2 \\(x_static\\) must have at least 2 axes"),
    (_snippet("RNN", 2), [(3, 2, 4), (3, 3)], "bottom 1 \\(cont\\) must have shape .*= \\(3, 2\\)"),
    (_snippet("RNN", 2), [(3, 2, 4), (3, 2, 1)], "bottom 1 \\(cont\\)"),
    (_snippet("LSTM", 2), [(3, 2, 4), (3, 2), (3, 5)], "bottom 2 \\(x_static\\) must have shape \\(2"),
    (_snippet("LSTM", 2, True), [(3, 2, 4), (3, 2), (1, 2, 2), (1, 2, 3)],
     "bottom 3 \\(c_0\\) must have shape 1 2 2"),
    (_snippet("RNN", 2, True), [(3, 2, 4), (3, 2), (2, 2)], "bottom 2 \\(h_0\\) must have shape"),
])
def test_setup_errors_name_the_layer(snippet, shapes, match):
    with pytest.raises(LayerSetupError, match=match):
        make_layer(snippet, shapes)


@pytest.mark.parametrize("snippet,n_bottoms,match", [
    (_snippet("LSTM", 2), 1, "at least 2 bottom"),
    (_snippet("LSTM", 2), 4, "at most 3 bottom"),
    (_snippet("LSTM", 2, True), 3, "at least 4 bottom"),
    (_snippet("RNN", 2, True), 5, "at most 4 bottom"),
])
def test_bottom_counts(snippet, n_bottoms, match):
    shapes = [(3, 2, 4), (3, 2), (2, 1), (1, 2, 2), (1, 2, 2)][:n_bottoms]
    with pytest.raises(LayerSetupError, match=match):
        make_layer(snippet, shapes)


def test_input_size_change_is_refused():
    layer = make_layer(_snippet("LSTM", 2), [(3, 2, 4), (3, 2)])
    with pytest.raises(LayerSetupError, match="LSTM layer 'lstm'.*5 input features.*set up for 4"):
        layer.do_reshape([(3, 2, 5), (3, 2)])


# -- nets ----------------------------------------------------------------------------
def _fill_captioning(net, rng, onehot):
    T, N, V = 5, 3, 11
    words = rng.integers(0, V, (T, N))
    if onehot:
        net.blobs["input_onehot"].data[...] = np.eye(V)[words]
    else:
        net.blobs["input_sentence"].data[...] = words
    cont = np.ones((T, N))
    cont[0] = 0
    cont[3, 1] = 0                               # stream 1 starts a second caption at t = 3
    net.blobs["cont_sentence"].data[...] = cont
    target = rng.integers(0, V, (T, N)).astype(np.float64)
    target[4, 2] = target[3, 0] = -1              # padding, ignored by the loss
    net.blobs["target_sentence"].data[...] = target
    net.blobs["image_features"].data[...] = rng.standard_normal((N, 6))
    return words, cont, target


def _captioning_loss_reference(net, words, cont, target):
    embed = net.params["embedding"][0].data
    e = embed[words] if embed.shape[0] == 11 else np.eye(11)[words] @ embed.T
    w1 = [b.data.astype(np.float64) for b in net.params["lstm1"]]
    h1, _, _ = lstm_reference(e, cont, w1[0], w1[1], w1[3], net.blobs["image_features"].data,
                              w1[2])
    h2, _, _ = lstm_reference(h1, cont, *[b.data.astype(np.float64) for b in net.params["lstm2"]])
    w, b = (p.data for p in net.params["predict"])
    scores = h2 @ w.T + b
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    valid = target >= 0
    picked = np.take_along_axis(p, np.where(valid, target, 0).astype(int)[..., None], -1)[..., 0]
    return -np.log(picked[valid]).sum() / valid.sum()


def _run_captioning(path, onehot):
    net = jcaffe.Net(path, jcaffe.TRAIN)
    assert [b.shape for b in net.params["lstm1"]] == [(28, 8), (28,), (28, 6), (28, 7)]
    assert [b.shape for b in net.params["lstm2"]] == [(28, 7), (28,), (28, 7)]
    rng = np.random.default_rng(3)
    words, cont, target = _fill_captioning(net, rng, onehot)
    loss = float(net.forward()["cross_entropy_loss"])
    np.testing.assert_allclose(loss, _captioning_loss_reference(net, words, cont, target),
                               rtol=1e-5)
    net.backward()
    for name, blobs in net.params.items():
        for k, blob in enumerate(blobs):
            assert np.isfinite(blob.diff).all() and np.abs(blob.diff).sum() > 0, (name, k)
    # cont is never given a diff, whatever force_backward says.
    assert net.bottom_need_backward["lstm1"] == [True, False, False]
    return net


def test_lstm_captioning_net_with_one_hot_inner_product(tmp_path):
    path = os.path.join(DATA, "lstm_captioning_onehot.prototxt")
    net = _run_captioning(path, onehot=True)
    # Weights go through a .caffemodel in Caffe's param order and come back the same.
    net.save(str(tmp_path / "w.caffemodel"))
    other = jcaffe.Net(path, jcaffe.TEST, weights=str(tmp_path / "w.caffemodel"))
    for name in net.params:
        for a, b in zip(net.params[name], other.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    for blob in ("input_onehot", "cont_sentence", "target_sentence", "image_features"):
        other.blobs[blob].data[...] = net.blobs[blob].data
    np.testing.assert_allclose(other.forward()["cross_entropy_loss"],
                               net.forward()["cross_entropy_loss"], rtol=1e-6)


def test_lstm_captioning_net_with_embed():
    if "Embed" not in jcaffe.layer_type_list():
        pytest.skip("the Embed layer is not registered in this build (it is written separately); "
                    "the one-hot InnerProduct variant of this net runs instead")
    _run_captioning(os.path.join(DATA, "lstm_captioning.prototxt"), onehot=False)


def test_force_backward_never_reaches_cont_and_net_gradients_check(tmp_path):
    from gradcheck.net_check import check_net
    from netutil import write_prototxt
    path = write_prototxt(tmp_path, """
        force_backward: true
        layer { name: "in" type: "Input" top: "x" top: "cont" top: "h0"
                input_param { shape { dim: 3 dim: 2 dim: 3 } shape { dim: 3 dim: 2 }
                              shape { dim: 1 dim: 2 dim: 2 } } }
        layer { name: "targets" type: "Input" top: "o2" top: "h2"
                input_param { shape { dim: 3 dim: 2 dim: 2 } shape { dim: 1 dim: 2 dim: 2 } } }
        layer { name: "rnn" type: "RNN" bottom: "x" bottom: "cont" bottom: "h0"
                top: "o" top: "hT"
                recurrent_param { num_output: 2 expose_hidden: true
                  weight_filler { type: "gaussian" std: 0.5 } } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "o" bottom: "o2" top: "l" }
        layer { name: "hloss" type: "EuclideanLoss" bottom: "hT" bottom: "h2" top: "hl" }
    """)
    cont = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    with jax.enable_x64(True):
        net = jcaffe.Net(path, jcaffe.TRAIN, dtype=np.float64)
        assert net.bottom_need_backward["rnn"] == [True, False, True]
        report = check_net(net, inputs={"cont": cont})
    assert report.ok, str(report)



def test_captioning_net_trains_with_the_fused_solver_step():
    from google.protobuf import text_format
    from jcaffe.proto import caffe_pb2
    param = caffe_pb2.SolverParameter()
    text_format.Parse('base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" random_seed: 1 '
                      'type: "SGD" display: 0', param)
    param.net = os.path.join(DATA, "lstm_captioning_onehot.prototxt")
    solver = jcaffe.get_solver(param)
    assert solver._can_fuse()
    _fill_captioning(solver.net, np.random.default_rng(0), onehot=True)
    first = float(solver.net.forward()["cross_entropy_loss"])
    solver.step(40)
    last = float(solver.net.forward()["cross_entropy_loss"])
    assert last < 0.8 * first, (first, last)


def test_setup_logs_the_streams():
    from netutil import LogLines
    with LogLines() as logs:
        make_layer(_snippet("RNN", 2), [(3, 2, 4), (3, 2)], dtype=np.float32)
    assert logs.lines == ["Initializing recurrent layer: assuming input batch contains 3 "
                          "timesteps of 2 independent streams."]


# -- the state carried from forward to forward (Caffe's h_T copied into h_0) ------------
def _carry_net(tmp_path, type_name, T, N, H, phase=jcaffe.TRAIN):
    from netutil import make_net
    return make_net(tmp_path, """
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: %d dim: %d dim: 2 } } }
        layer { name: "cont" type: "Input" top: "cont" input_param { shape { dim: %d dim: %d } } }
        layer { name: "rec" bottom: "x" bottom: "cont" top: "h" %s }
        """ % (T, N, T, N, _snippet(type_name, H)), phase, dtype=np.float64)


def _reference(layer, x, cont, state=None):
    """(tops, final state) of Caffe's unrolled net from ``state`` (default zeros)."""
    w = _weights(layer)
    if layer.type == "LSTM":
        h0, c0 = (None, None) if state is None else (state[0][None], state[1][None])
        ref, h_T, c_T = lstm_reference(x, cont, *w, h0=h0, c0=c0)
        return ref, (h_T[0], c_T[0])
    ref, h_T = rnn_reference(x, cont, *w, h0=None if state is None else state[0][None])
    return ref, (h_T[0],)


@pytest.mark.parametrize("phase", [jcaffe.TRAIN, jcaffe.TEST])
@pytest.mark.parametrize("type_name", ["LSTM", "RNN"])
def test_net_forwards_carry_the_final_state_as_caffe(x64, rng, tmp_path, type_name, phase):
    """Each forward starts from the last one's h_T (and c_T): three batches of a
    stream continued at t = 0 give what one forward over the whole sequence gives
    (a TEST net's later forwards run slim, returning only what is read outside). No
    warning: nothing differs from Caffe. reset() starts from zero again, as does a new
    number of streams."""
    from netutil import LogLines
    T, N, H = 3, 2, 3
    net = _carry_net(tmp_path, type_name, T, N, H, phase)
    layer = net.layer_dict["rec"]
    x = rng.standard_normal((3 * T, N, 2))
    cont = np.ones((3 * T, N))
    cont[0] = 0
    cont[4, 1] = 0                          # stream 1 restarts inside the second batch
    whole, final = _reference(layer, x, cont)
    with LogLines() as logs:
        for k in range(3):
            part = slice(k * T, (k + 1) * T)
            out = net.forward(x=x[part], cont=cont[part])["h"]
            np.testing.assert_allclose(out, whole[part], rtol=1e-12, atol=1e-12,
                                       err_msg="batch %d" % k)
        jax.effects_barrier()
    assert not [line for line in logs.lines if "cont is nonzero" in line]
    for got, want in zip(layer.hidden_state, final):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)

    layer.reset()
    fresh, _ = _reference(layer, x[T:2 * T], cont[T:2 * T])
    np.testing.assert_allclose(net.forward(x=x[T:2 * T], cont=cont[T:2 * T])["h"], fresh,
                               rtol=1e-12, atol=1e-12)
    assert not np.allclose(fresh, whole[T:2 * T])     # (the state mattered)

    net.blobs["x"].reshape(T, N + 1, 2)
    net.blobs["cont"].reshape(T, N + 1)
    x3, cont3 = rng.standard_normal((T, N + 1, 2)), np.ones((T, N + 1))
    with LogLines() as logs:
        out = net.forward(x=x3, cont=cont3)["h"]
    np.testing.assert_allclose(out, _reference(layer, x3, cont3)[0], rtol=1e-12, atol=1e-12)
    assert ("%s layer 'rec': its carried state has shape %d %d (%d) now, was %d %d (%d): it "
            "starts from zero" % (type_name, N + 1, H, (N + 1) * H, N, H, N * H)) in logs.lines


def test_backward_and_gradcheck_from_a_carried_state(x64, rng, tmp_path):
    """net.backward() after a forward from a carried state: the whole-net gradient check
    (finite differences and jax.grad, each forward from that same state) agrees."""
    from gradcheck import check_net
    T, N = 3, 2
    net = _carry_net(tmp_path, "LSTM", T, N, 2)
    net.force_backward = True
    net.forward(x=rng.standard_normal((T, N, 2)), cont=np.ones((T, N)))
    assert np.any(np.asarray(net.layer_dict["rec"].hidden_state[0]))
    report = check_net(net, inputs={"cont": np.ones((T, N))})
    assert report.ok, str(report)


def test_a_stream_continued_at_t0_warns_once_that_caffe_would_carry_h_T():
    """Caffe continues a stream whose cont is 1 at t = 0 from the previous forward's h_T
    and c_T; a forward given no state (a layer called alone, as Net.to_jax's functions
    call it) starts from zero. The first forward where that
    happens says so (a warning naming the layer and the streams), inside a jitted
    forward too; a forward that starts every stream (cont 0 at t = 0) says nothing."""
    from netutil import LogLines
    layer = make_layer(_snippet("LSTM", 2), [(3, 4, 5), (3, 4)], dtype=np.float32)
    params = _params(layer)
    x = jnp.ones((3, 4, 5), jnp.float32)
    forward = jax.jit(lambda cont: layer.forward(params, [x, cont], None)[0][0])
    fresh = jnp.ones((3, 4), jnp.float32).at[0].set(0)
    with LogLines() as logs:
        forward(fresh).block_until_ready()
        jax.effects_barrier()       # (the host callbacks have run)
        assert not [l for l in logs.lines if "cont is nonzero" in l]
        forward(fresh.at[0, 1:3].set(1)).block_until_ready()
        forward(jnp.ones((3, 4), jnp.float32)).block_until_ready()
        jax.effects_barrier()
    warned = [l for l in logs.lines if "cont is nonzero" in l]
    assert warned == [
        "LSTM layer 'lstm': cont is nonzero at t = 0 in 2 of 4 streams. Caffe continues "
        "such a stream from the previous forward's final state (h_T, c_T); this forward "
        "starts from zero state (a Net.to_jax function given no state=), so from here its "
        "results differ from Caffe's. Start sequences with cont = 0 at t = 0, or use "
        "expose_hidden and feed h_T/c_T back as h_0/c_0 to continue them."]
    exposed = make_layer(_snippet("RNN", 2, expose=True), [(3, 4, 5), (3, 4), (1, 4, 2)],
                         dtype=np.float32)
    with LogLines() as logs:
        exposed.forward(_params(exposed),
                        [x, jnp.ones((3, 4)), jnp.zeros((1, 4, 2))], None)
    assert not [l for l in logs.lines if "cont is nonzero" in l]


@pytest.mark.parametrize("iter_size", [1, 2])
def test_solver_iterations_carry_the_state_pass_to_pass(iter_size):
    """A training iteration carries the state too, from pass to pass (iter_size) and
    from step to step: the fused step (one compiled call, its passes inside) keeps to
    the layer-by-layer path, whose net.forward() carries it (tests above)."""
    from test_solver import text_solver
    T, N, H = 3, 2, 3
    net_text = """
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: %d dim: %d dim: 2 } } }
        layer { name: "cont" type: "Input" top: "cont" input_param { shape { dim: %d dim: %d } } }
        layer { name: "y" type: "Input" top: "y" input_param { shape { dim: %d dim: %d dim: %d } } }
        layer { name: "rec" bottom: "x" bottom: "cont" top: "h" %s }
        layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "y" top: "loss" }
        """ % (T, N, T, N, T, N, H, _snippet("LSTM", H))
    solver_text = ('base_lr: 0.1 momentum: 0.9 lr_policy: "fixed" random_seed: 1 type: "SGD" '
                   'display: 0 iter_size: %d' % iter_size)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((T, N, 2)), rng.standard_normal((T, N, H))
    solvers = []
    for fuse in (True, False):
        solver = text_solver(solver_text, net_text)
        solver.fuse_step = fuse
        assert solver._can_fuse() == fuse
        solver.net.blobs["x"].data[...] = x
        solver.net.blobs["cont"].data[...] = 1
        solver.net.blobs["y"].data[...] = y
        solver.step(3)
        solvers.append(solver)
    fused, plain = (s.net for s in solvers)
    for got, want in zip(fused.layer_dict["rec"].hidden_state,
                         plain.layer_dict["rec"].hidden_state):
        assert np.any(np.asarray(want))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    for got, want in zip(fused.learnable_params, plain.learnable_params):
        np.testing.assert_allclose(got.data, want.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused.blobs["h"].data, plain.blobs["h"].data, rtol=1e-5,
                               atol=1e-6)
